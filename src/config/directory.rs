//! `[directory]`: where RCPT checks that a recipient exists (none, the ANS extract, an LDAP),
//! and `[directory.sync]`.

use super::values::de_duration;
use super::*;
use serde::Deserialize;
use std::path::PathBuf;
use std::time::Duration;

/// `[directory]`: where RCPT checks that a recipient exists.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(try_from = "RawDirectory")]
pub struct DirectoryConfig {
    pub source: DirectorySource,
    /// `[directory.sync]`: the gateway keeps an LDAP in step with the extract.
    pub sync: Option<SyncConfig>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum DirectorySource {
    /// `kind = "none"`: nothing is known; routes cannot ask for the directory.
    #[default]
    None,
    /// `kind = "extract"`: the ANS extract, held in memory, re-read when the file changes;
    /// one over `max_size` bytes (its text) is refused before it is read.
    Extract { file: PathBuf, max_size: u64 },
    /// `kind = "ldap"`: the establishment's LDAP where the national directory is integrated.
    Ldap(LdapConfig),
}

impl DirectorySource {
    pub fn kind(&self) -> &'static str {
        match self {
            DirectorySource::None => "none",
            DirectorySource::Extract { .. } => "extract",
            DirectorySource::Ldap(_) => "ldap",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LdapConfig {
    /// `ldap://host:port`, `ldaps://host:port` or `ldapi://`.
    pub url: String,
    pub base: String,
    /// With `{address}` replaced by the RFC 4515-escaped recipient.
    pub filter: String,
    pub bind_dn: Option<String>,
    pub bind_password: Option<String>,
    pub cache_ttl: Duration,
    pub negative_ttl: Duration,
    /// Cached answers at most.
    pub cache_size: usize,
    /// Connect and per-request timeout.
    pub timeout: Duration,
    /// Connections to the LDAP server.
    pub pool_size: usize,
    /// StartTLS on an `ldap://` URL, verified against `[tls].trust_anchors`.
    pub starttls: bool,
    /// Attribute holding the BAL type (written by `directory import`).
    pub bal_type_attribute: String,
}

impl LdapConfig {
    /// Whether the connection is encrypted (ldaps, or StartTLS), hence needs trust anchors.
    pub fn uses_tls(&self) -> bool {
        self.starttls || self.url.starts_with("ldaps://")
    }
}

#[derive(Deserialize)]
#[serde(rename_all = "lowercase")]
enum DirectoryKind {
    None,
    Extract,
    Ldap,
}

#[derive(Deserialize)]
#[serde(default)]
struct RawDirectory {
    kind: DirectoryKind,
    file: Option<PathBuf>,
    url: Option<String>,
    base: Option<String>,
    filter: String,
    bind_dn: Option<String>,
    bind_password: Option<String>,
    #[serde(deserialize_with = "de_duration")]
    cache_ttl: Duration,
    #[serde(deserialize_with = "de_duration")]
    negative_ttl: Duration,
    cache_size: usize,
    #[serde(deserialize_with = "de_duration")]
    timeout: Duration,
    pool_size: usize,
    starttls: bool,
    bal_type_attribute: String,
    max_size: u64,
    sync: Option<SyncConfig>,
}

impl Default for RawDirectory {
    fn default() -> Self {
        RawDirectory {
            kind: DirectoryKind::None,
            file: None,
            url: None,
            base: None,
            filter: "(mail={address})".into(),
            bind_dn: None,
            bind_password: None,
            cache_ttl: Duration::from_secs(600),
            negative_ttl: Duration::from_secs(60),
            cache_size: 100_000,
            timeout: Duration::from_secs(5),
            pool_size: 4,
            starttls: false,
            bal_type_attribute: "employeeType".into(),
            max_size: crate::util::fs::DEFAULT_MAX_EXTRACT_BYTES,
            sync: None,
        }
    }
}

impl TryFrom<RawDirectory> for DirectoryConfig {
    type Error = String;
    fn try_from(d: RawDirectory) -> Result<DirectoryConfig, String> {
        let source = match d.kind {
            DirectoryKind::None => DirectorySource::None,
            DirectoryKind::Extract => DirectorySource::Extract {
                file: d.file.ok_or("file: required for kind = \"extract\"")?,
                max_size: d.max_size,
            },
            DirectoryKind::Ldap => {
                let url = d.url.ok_or("url: required for kind = \"ldap\"")?;
                if !["ldap://", "ldaps://", "ldapi://"]
                    .iter()
                    .any(|s| url.starts_with(s))
                {
                    return Err(format!(
                        "url: {url:?} is not an ldap://, ldaps:// or ldapi:// URL"
                    ));
                }
                if !d.filter.contains("{address}") {
                    return Err("filter: must contain {address}".into());
                }
                DirectorySource::Ldap(LdapConfig {
                    url,
                    base: d.base.ok_or("base: required for kind = \"ldap\"")?,
                    filter: d.filter,
                    bind_dn: d.bind_dn.filter(|s| !s.is_empty()),
                    bind_password: d.bind_password,
                    cache_ttl: d.cache_ttl,
                    negative_ttl: d.negative_ttl,
                    cache_size: d.cache_size,
                    timeout: d.timeout,
                    pool_size: d.pool_size.max(1),
                    starttls: d.starttls,
                    bal_type_attribute: d.bal_type_attribute,
                })
            }
        };
        Ok(DirectoryConfig {
            source,
            sync: d.sync,
        })
    }
}
