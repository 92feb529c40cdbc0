//! The data with a life of its own, each behind its watcher: the ANS whitelist, the directory
//! (the extract file, or an LDAP handle), and the CRLs.

use super::watch::Watched;
use crate::config::{DirectorySource, TlsConfig, WhitelistConfig};
use crate::policy::{Directory, Lists, NoDirectory, Whitelist};
use crate::tls::{CrlSet, Crls, TlsMaterial};
use anyhow::Context;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

/// Loads the ANS whitelist and logs what it found, warnings included.
pub fn load_whitelist(path: &Path) -> anyhow::Result<Whitelist> {
    let list =
        Whitelist::load(path).with_context(|| format!("whitelist.file {}", path.display()))?;
    for w in list.warnings().iter().take(20) {
        tracing::warn!(file = %path.display(), "whitelist: {w}");
    }
    tracing::info!(file = %path.display(), domains = list.domain_count(), entries = list.entry_count(),
        generated = list.generated().unwrap_or("-"), "whitelist loaded");
    crate::metrics::gauge_set(
        "passerelle_whitelist_domains",
        "domains in the loaded ANS whitelist",
        &[],
        list.domain_count() as f64,
    );
    crate::metrics::gauge_set(
        "passerelle_whitelist_loaded_timestamp_seconds",
        "when the whitelist in force was loaded (Unix time)",
        &[],
        crate::message::now_ms() as f64 / 1000.0,
    );
    Ok(list)
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
        spec.as_ref()
            .map(|w| load_whitelist(&w.file).map_err(|e| format!("{e:#}")))
            .transpose()
    }
    fn store(&self, value: Self::Value) {
        self.0.whitelist.store(value.map(Arc::new));
    }
    fn kept(&self, error: &str) -> String {
        let kept = self
            .0
            .whitelist
            .load()
            .as_ref()
            .map_or(0, |w| w.domain_count());
        format!("{error}; keeping the last good whitelist ({kept} domains)")
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
            DirectorySource::Extract { file } => vec![file.clone()],
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
    fn kept(&self, error: &str) -> String {
        format!("directory not reloaded, keeping the current one: {error}")
    }
}

pub fn build_directory(spec: &DirectorySpec, crls: &Crls) -> anyhow::Result<Box<dyn Directory>> {
    Ok(match &spec.source {
        DirectorySource::None => Box::new(NoDirectory),
        DirectorySource::Extract { file } => Box::new(
            crate::policy::directory::ExtractDirectory::load(file)
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
            Box::new(crate::policy::ldap::LdapDirectory::new(
                crate::policy::ldap::LdapOptions {
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

impl Watched for CrlData {
    type Spec = Vec<PathBuf>;
    type Value = CrlSet;
    fn name(&self) -> &'static str {
        "CRLs"
    }
    fn files(&self, spec: &Self::Spec) -> Vec<PathBuf> {
        spec.clone()
    }
    fn period(&self, _: &Self::Spec) -> Duration {
        Duration::from_secs(30)
    }
    fn load(&self, spec: &Self::Spec) -> Result<Self::Value, String> {
        let set = CrlSet::load(spec, Some(&self.0.load())).map_err(|e| e.to_string())?;
        if let Some(next) = set.next_update() {
            crate::metrics::gauge_set(
                "passerelle_crl_next_update_timestamp_seconds",
                "the earliest nextUpdate of the CRLs in force (Unix time)",
                &[],
                next as f64,
            );
        }
        Ok(set)
    }
    fn store(&self, value: Self::Value) {
        self.0.store(Arc::new(value));
    }
}
