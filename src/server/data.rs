//! The data with a life of its own, each behind its watcher: the ANS whitelist, the directory
//! (the extract file, or an LDAP handle), and the CRLs.

use super::watch::Watched;
use crate::config::{DirectorySource, TlsConfig, WhitelistConfig};
use crate::policy::{Directory, Lists, NoDirectory, Whitelist};
use crate::tls::{CrlSet, Crls, TlsMaterial};
use anyhow::Context;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

/// Loads the ANS whitelist under the `[whitelist]` rules (signature, age, no rollback before
/// `previous`, the list in force); the outcome is logged and recorded by
/// [`crate::trust::load_whitelist`] (metrics, `/readyz`).
pub fn load_whitelist(
    w: &WhitelistConfig,
    previous: Option<&Whitelist>,
) -> anyhow::Result<Whitelist> {
    crate::trust::load_whitelist(w, previous)
        .with_context(|| format!("whitelist.file {}", w.file.display()))
}

/// `[whitelist]`, re-read every `reload` when the file changed.
pub struct WhitelistData(pub Arc<Lists>);

impl Watched for WhitelistData {
    type Spec = Option<WhitelistConfig>;
    type Value = Option<Whitelist>;
    fn name(&self) -> &'static str {
        "whitelist"
    }
    fn files(&self, spec: &Self::Spec) -> Vec<PathBuf> {
        spec.iter().map(|w| w.file.clone()).collect()
    }
    fn period(&self, spec: &Self::Spec) -> Duration {
        spec.as_ref().map_or(Duration::from_secs(60), |w| w.reload)
    }
    fn load(&self, spec: &Self::Spec) -> Result<Self::Value, String> {
        let previous = self.0.whitelist.load_full();
        spec.as_ref()
            .map(|w| load_whitelist(w, previous.as_deref()).map_err(|e| format!("{e:#}")))
            .transpose()
    }
    fn store(&self, value: Self::Value) {
        self.0.whitelist.store(value.map(Arc::new));
    }
    fn kept(&self, _: &str) -> Option<String> {
        None // said by trust::load_whitelist, with the reason and its metric
    }
}

/// `[directory]`: the extract re-read when its file changes (checked every 5 s); an LDAP
/// directory is a connection pool, rebuilt when its settings change.
pub struct DirectoryData {
    pub lists: Arc<Lists>,
    pub crls: Crls,
}

#[derive(Clone, PartialEq)]
pub struct DirectorySpec {
    pub source: DirectorySource,
    /// For ldaps/StartTLS: the trust anchors to verify the LDAP server with.
    pub tls: Option<TlsConfig>,
}

impl Watched for DirectoryData {
    type Spec = DirectorySpec;
    type Value = Box<dyn Directory>;
    fn name(&self) -> &'static str {
        "directory"
    }
    fn files(&self, spec: &Self::Spec) -> Vec<PathBuf> {
        match &spec.source {
            DirectorySource::Extract { file, .. } => vec![file.clone()],
            _ => Vec::new(),
        }
    }
    fn period(&self, _: &Self::Spec) -> Duration {
        Duration::from_secs(5)
    }
    fn load(&self, spec: &Self::Spec) -> Result<Self::Value, String> {
        build_directory(spec, &self.crls).map_err(|e| format!("{e:#}"))
    }
    fn store(&self, value: Self::Value) {
        self.lists.directory.store(Arc::new(value));
    }
    fn kept(&self, error: &str) -> Option<String> {
        Some(format!(
            "directory not reloaded, keeping the current one: {error}"
        ))
    }
}

pub fn build_directory(spec: &DirectorySpec, crls: &Crls) -> anyhow::Result<Box<dyn Directory>> {
    Ok(match &spec.source {
        DirectorySource::None => Box::new(NoDirectory),
        DirectorySource::Extract { file, max_size } => Box::new(
            crate::directory::lookup::ExtractDirectory::load(file, *max_size)
                .with_context(|| format!("directory.file {}", file.display()))?,
        ),
        DirectorySource::Ldap(d) => {
            let tls = match (&spec.tls, d.uses_tls()) {
                (Some(t), true) => {
                    let m = TlsMaterial::load(t)?;
                    Some(crate::tls::anonymous_client_config(
                        m.webpki_server_verifier(&crls.load())?,
                    )?)
                }
                _ => None,
            };
            Box::new(crate::directory::ldap::LdapDirectory::new(
                crate::directory::ldap::LdapOptions {
                    config: d.clone(),
                    tls,
                },
            ))
        }
    })
}

/// `[tls].crls`: re-read when a file changes (checked every 30 s); a file that no longer
/// parses keeps its last good copy.
pub struct CrlData(pub Crls);

/// The CRL files and `tls.crl_max_size`.
pub type CrlSpec = (Vec<PathBuf>, u64);

impl Watched for CrlData {
    type Spec = CrlSpec;
    type Value = CrlSet;
    fn name(&self) -> &'static str {
        "CRLs"
    }
    fn files(&self, spec: &Self::Spec) -> Vec<PathBuf> {
        spec.0.clone()
    }
    fn period(&self, _: &Self::Spec) -> Duration {
        Duration::from_secs(30)
    }
    fn load(&self, spec: &Self::Spec) -> Result<Self::Value, String> {
        CrlSet::load_capped(&spec.0, spec.1, Some(&self.0.load())).map_err(|e| e.to_string())
    }
    fn store(&self, value: Self::Value) {
        crate::trust::record_crls(&value);
        tracing::info!(files = value.files().len(), "CRLs in force reloaded");
        self.0.store(Arc::new(value));
    }
}
