//! Everything derived from one config file, built whole beside the one in force and swapped in
//! only when every part of it loaded: the config, our TLS identity, the routes, each
//! listener's session context, and delivery's settings.

use crate::config::{ClientCert, Config, ListenerConfig, StartTls};
use crate::delivery::DeliveryConfig;
use crate::intake::ListenerContext;
use crate::policy::{Establishments, Lists, Policy, RouteTable};
use crate::queue::Queue;
use crate::tls::{Crls, TlsMaterial};
use anyhow::{anyhow, Context};
use std::path::Path;
use std::sync::Arc;

pub struct Snapshot {
    pub config: Config,
    pub tls: Option<TlsMaterial>,
    pub policy: Policy,
}

/// The `certs/dev` directory the config points into when it is still missing: `serve`
/// generates the development PKI there.
pub fn pending_dev_pki(cfg: &Config) -> Option<&Path> {
    cfg.tls.as_ref()?.pending_dev_pki()
}

/// Generates the development PKI when the config points into a missing `certs/dev`.
pub fn ensure_dev_pki(cfg: &Config) -> anyhow::Result<()> {
    let Some(dir) = pending_dev_pki(cfg) else {
        return Ok(());
    };
    let report = crate::pki::generate_dev_pki(&crate::pki::DevPkiOptions {
        out: dir.to_path_buf(),
        hostname: cfg.server.hostname.clone(),
        force: false,
    })
    .with_context(|| format!("generating the development PKI in {}", dir.display()))?;
    tracing::warn!(dir = %dir.display(), dn = %report.gateway_dn,
        "generated a DEVELOPMENT PKI (never use it in production)");
    Ok(())
}

/// Reads the config as `serve` does, once: parsed, then the development PKI made when the
/// config points into a missing `certs/dev`, then validated (warnings logged).
pub fn load_config(path: &Path) -> anyhow::Result<Config> {
    let parsed = Config::read_unvalidated(path)?;
    ensure_dev_pki(&parsed.config)?;
    let parsed = Config::validated(parsed)?;
    for w in &parsed.warnings {
        tracing::warn!("{w}");
    }
    Ok(parsed.config)
}

impl Snapshot {
    /// A snapshot of `config` over the live `lists`.
    pub fn build(config: Config, lists: Arc<Lists>) -> anyhow::Result<Snapshot> {
        let tls = config.tls.as_ref().map(TlsMaterial::load).transpose()?;
        if let (Some(m), Some(t)) = (&tls, &config.tls) {
            crate::trust::record_tls(t, m);
        }
        if let Some(m) = &tls {
            if let Ok((_, cert)) = x509_parser::parse_x509_certificate(m.chain[0].as_ref()) {
                crate::metrics::gauge_set(
                    "passerelle_certificate_expiry_timestamp_seconds",
                    "when our [tls] certificate expires (Unix time)",
                    &[],
                    cert.validity().not_after.timestamp() as f64,
                );
            }
        }
        let policy = Policy {
            routes: Arc::new(RouteTable::new(config.route.clone())),
            establishments: Arc::new(Establishments::new(config.establishment.clone())),
            lists,
        };
        Ok(Snapshot {
            config,
            tls,
            policy,
        })
    }

    /// The session context of listener `l` of this snapshot.
    pub fn listener_context(
        &self,
        l: &ListenerConfig,
        crls: &Crls,
        queue: &Queue,
    ) -> anyhow::Result<ListenerContext> {
        let validator = match &self.tls {
            Some(m) if l.client_certificate != ClientCert::Off => {
                Some(crate::tls::PeerValidator::new(m, crls.clone()))
            }
            _ => None,
        };
        Ok(ListenerContext {
            listener: l.clone(),
            hostname: self.config.server.hostname.clone(),
            limits: self.config.smtp.clone(),
            policy: self.policy.clone(),
            tls: self.server_tls(l)?,
            validator,
            queue: queue.clone(),
        })
    }

    pub fn delivery(&self, crls: &Crls) -> anyhow::Result<DeliveryConfig> {
        let pins: Arc<dyn crate::delivery::TrustList> = self.policy.lists.clone();
        DeliveryConfig::new(&self.config, self.tls.as_ref(), crls, pins).map_err(|e| anyhow!(e))
    }

    fn server_tls(&self, l: &ListenerConfig) -> anyhow::Result<Option<Arc<rustls::ServerConfig>>> {
        let Some(m) = &self.tls else { return Ok(None) };
        if l.starttls == StartTls::Off {
            return Ok(None);
        }
        let verifier = match l.client_certificate {
            ClientCert::Off => None,
            // Any certificate gets through the handshake; the SMTP layer judges it and answers
            // with a proper reply (PeerValidator), so nothing is ever queued from a bad one.
            ClientCert::Request | ClientCert::Require => {
                let v: Arc<dyn rustls::server::danger::ClientCertVerifier> =
                    Arc::new(crate::tls::DeferredClientVerifier::new(m));
                Some(v)
            }
        };
        Ok(Some(m.server_config(verifier)?))
    }
}
