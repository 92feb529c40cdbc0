//! `[tls]` and `[whitelist]`: the trust space's material (our certificate, CAs, CRLs and their
//! downloads; the ANS whitelist, its signers and its downloads).

use super::values::{de_duration, de_list};
use super::*;
use crate::pki::dn::Dn;
use serde::{Deserialize, Deserializer};
use std::path::{Path, PathBuf};
use std::time::Duration;

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct TlsConfig {
    /// PEM chain, leaf first: presented as server and as client certificate.
    pub certificate: PathBuf,
    pub private_key: PathBuf,
    /// PEM roots accepted for peers (IGC-Santé in production).
    #[serde(default)]
    pub trust_anchors: Option<PathBuf>,
    /// CRLs, PEM or DER.
    #[serde(default)]
    pub crls: Vec<PathBuf>,
    /// Where the gateway downloads each CRL of `crls` (same order), every `crl_refresh`.
    #[serde(default, deserialize_with = "de_urls")]
    pub crl_urls: Vec<String>,
    #[serde(default = "default_crl_refresh", deserialize_with = "de_duration")]
    pub crl_refresh: Duration,
    /// `/readyz` fails when a CRL is past its nextUpdate by more than this.
    #[serde(default = "default_crl_grace", deserialize_with = "de_duration")]
    pub crl_grace: Duration,
    /// A CRL file larger than this (bytes) is refused before it is parsed; the last good copy
    /// stays in force (IGC-Santé's largest CRLs are a few MiB).
    #[serde(default = "default_crl_max_size")]
    pub crl_max_size: u64,
}

impl TlsConfig {
    /// The `certs/dev` directory its certificate is in while it is still missing: `serve`
    /// generates the development PKI there, so the missing files are no problem yet.
    pub fn pending_dev_pki(&self) -> Option<&Path> {
        let dir = self.certificate.parent()?;
        (!self.certificate.exists() && dir.ends_with("certs/dev")).then_some(dir)
    }

    /// Every file it names inside `from`, named inside `to` instead (check-config's
    /// throw-away development PKI).
    pub fn moved(&self, from: &Path, to: &Path) -> TlsConfig {
        let mv = |p: &PathBuf| match p.strip_prefix(from) {
            Ok(rest) => to.join(rest),
            Err(_) => p.clone(),
        };
        TlsConfig {
            certificate: mv(&self.certificate),
            private_key: mv(&self.private_key),
            trust_anchors: self.trust_anchors.as_ref().map(mv),
            crls: self.crls.iter().map(mv).collect(),
            ..self.clone()
        }
    }
}

fn default_crl_refresh() -> Duration {
    Duration::from_secs(3600)
}
fn default_crl_max_size() -> u64 {
    crate::util::fs::DEFAULT_MAX_CRL_BYTES
}

fn default_crl_grace() -> Duration {
    Duration::from_secs(86400)
}

/// An `http://` or `https://` URL (downloads).
fn check_url(u: &str) -> Result<String, String> {
    if u.starts_with("http://") || u.starts_with("https://") {
        Ok(u.to_string())
    } else {
        Err(format!("{u:?} is not an http:// or https:// URL"))
    }
}

fn de_urls<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    Vec::<String>::deserialize(d)?
        .iter()
        .map(|u| check_url(u).map_err(serde::de::Error::custom))
        .collect()
}

fn de_opt_url<'de, D: Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    let u = String::deserialize(d)?;
    check_url(&u).map(Some).map_err(serde::de::Error::custom)
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct WhitelistConfig {
    pub file: PathBuf,
    /// How often the file is checked for a change.
    #[serde(default = "default_whitelist_reload", deserialize_with = "de_duration")]
    pub reload: Duration,
    /// Refuse a file whose ANS signature is missing or wrong; default: true when
    /// `signer_anchors` is set (see `policy::xmldsig`).
    #[serde(default)]
    pub require_signature: Option<bool>,
    /// PEM certificates the signer must chain to (IGC-Santé).
    #[serde(default)]
    pub signer_anchors: Option<PathBuf>,
    /// Subject DNs allowed to sign (RFC 4514); empty: any certificate chaining to the anchors.
    #[serde(default, deserialize_with = "de_list")]
    pub signer_dns: Vec<Dn>,
    /// Refuse a file generated longer ago; default 7 days with a signature, none without;
    /// `"0"` disables (test vectors).
    #[serde(default, deserialize_with = "values::de_opt_duration")]
    pub max_age: Option<Duration>,
    /// Where the gateway downloads the list (verified before it replaces `file`).
    #[serde(default, deserialize_with = "de_opt_url")]
    pub url: Option<String>,
    /// How often it is downloaded (conditional GET).
    #[serde(
        default = "default_whitelist_refresh",
        deserialize_with = "de_duration"
    )]
    pub refresh: Duration,
    /// A file (or a download) larger than this many bytes is refused before it is parsed; the
    /// list in force stays. The real signed list is 3.6 MB.
    #[serde(default = "default_whitelist_max_size")]
    pub max_size: u64,
}

fn default_whitelist_max_size() -> u64 {
    crate::util::fs::DEFAULT_MAX_WHITELIST_BYTES
}

impl WhitelistConfig {
    pub fn signature_required(&self) -> bool {
        self.require_signature
            .unwrap_or(self.signer_anchors.is_some())
    }

    /// The age limit in force (`max_age = "0"` gives none).
    pub fn effective_max_age(&self) -> Option<Duration> {
        match self.max_age {
            Some(d) if d.is_zero() => None,
            Some(d) => Some(d),
            None if self.signature_required() => Some(Duration::from_secs(7 * 86400)),
            None => None,
        }
    }
}

fn default_whitelist_refresh() -> Duration {
    Duration::from_secs(6 * 3600)
}

fn default_whitelist_reload() -> Duration {
    Duration::from_secs(3600)
}
