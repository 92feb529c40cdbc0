//! `[directory.sync]`: the gateway keeps an LDAP in step with the national extract (the
//! `directory sync` command reads the same keys as its defaults; see `crate::directory::sync`).

use super::values::de_duration;
use serde::Deserialize;
use std::path::PathBuf;
use std::time::Duration;

/// `[directory.sync]`: the gateway runs the sync every `every`; the command line reads the
/// same keys as its defaults.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct SyncConfig {
    /// The extract: the ANS zip or `.txt` on disk ...
    #[serde(default)]
    pub file: Option<PathBuf>,
    /// ... or downloaded from here.
    #[serde(default)]
    pub url: Option<String>,
    /// `ldap://host:port` or `ldaps://host:port`.
    pub ldap: String,
    /// Container of the national directory, e.g. `ou=mssante,dc=annuaire,dc=mssante,dc=fr`.
    pub base: String,
    #[serde(default)]
    pub bind_dn: Option<String>,
    /// The bind password, on the file's first line (kept out of the config file).
    #[serde(default)]
    pub bind_password_file: Option<PathBuf>,
    /// StartTLS on an `ldap://` URL.
    #[serde(default)]
    pub starttls: bool,
    /// CA certificates (PEM) for StartTLS/ldaps; default `[tls].trust_anchors`.
    #[serde(default)]
    pub ca: Option<PathBuf>,
    #[serde(default = "default_every", deserialize_with = "de_duration")]
    pub every: Duration,
    /// Percent: refuse a run deleting more (see [`delta::deletion_limit`]).
    #[serde(default = "default_max_delete")]
    pub max_delete: f64,
    /// Refuse an extract with fewer entries (the national one has ≈ 535,000).
    #[serde(default = "default_min_entries")]
    pub min_entries: usize,
    #[serde(default = "default_connections")]
    pub connections: usize,
    /// One LDAP transaction per batch (see [`target::Target::transactions`]).
    #[serde(default)]
    pub transactions: bool,
    /// Connect and per-operation timeout.
    #[serde(default = "default_timeout", deserialize_with = "de_duration")]
    pub timeout: Duration,
    /// An extract (its text, or the download) over this many bytes is refused before it is
    /// read; nothing is written.
    #[serde(default = "default_max_size")]
    pub max_size: u64,
}

fn default_max_size() -> u64 {
    crate::util::fs::DEFAULT_MAX_EXTRACT_BYTES
}

fn default_every() -> Duration {
    Duration::from_secs(24 * 3600)
}
fn default_max_delete() -> f64 {
    5.0
}
fn default_min_entries() -> usize {
    1000
}
fn default_connections() -> usize {
    4
}
fn default_timeout() -> Duration {
    Duration::from_secs(30)
}

impl SyncConfig {
    /// The defaults, for a sync given only on the command line.
    pub fn new(ldap: String, base: String) -> SyncConfig {
        SyncConfig {
            file: None,
            url: None,
            ldap,
            base,
            bind_dn: None,
            bind_password_file: None,
            starttls: false,
            ca: None,
            every: default_every(),
            max_delete: default_max_delete(),
            min_entries: default_min_entries(),
            connections: default_connections(),
            transactions: false,
            timeout: default_timeout(),
            max_size: default_max_size(),
        }
    }

    /// Problems, one per line naming the key (`check-config` style).
    pub fn validate(&self, trust_anchors: bool) -> Vec<String> {
        let k = "directory.sync";
        let mut p = Vec::new();
        match (&self.file, &self.url) {
            (None, None) => p.push(format!("{k}: file or url: one is required")),
            (Some(_), Some(_)) => p.push(format!("{k}: file and url: give only one")),
            (_, Some(u)) if !(u.starts_with("https://") || u.starts_with("http://")) => {
                p.push(format!("{k}.url: {u:?} is not an http:// or https:// URL"))
            }
            _ => {}
        }
        let tls_url = self.ldap.starts_with("ldaps://");
        if !(tls_url || self.ldap.starts_with("ldap://")) {
            p.push(format!(
                "{k}.ldap: {:?} is not an ldap:// or ldaps:// URL",
                self.ldap
            ));
        }
        if self.base.trim().is_empty() {
            p.push(format!("{k}.base: must not be empty"));
        }
        if self.bind_dn.is_some() != self.bind_password_file.is_some() {
            p.push(format!(
                "{k}.bind_dn, bind_password_file: give both, or neither (anonymous)"
            ));
        }
        if self.starttls && tls_url {
            p.push(format!("{k}.starttls: not with an ldaps:// URL"));
        }
        if (self.starttls || tls_url) && self.ca.is_none() && !trust_anchors {
            p.push(format!(
                "{k}.ca: needed (or tls.trust_anchors) to verify the LDAP server"
            ));
        }
        if self.every < Duration::from_secs(60) {
            p.push(format!("{k}.every: at least 1m"));
        }
        if !(0.0..=100.0).contains(&self.max_delete) {
            p.push(format!("{k}.max_delete: a percentage, 0 to 100"));
        }
        if !(1..=64).contains(&self.connections) {
            p.push(format!("{k}.connections: 1 to 64"));
        }
        p
    }
}
