//! `passerelle serve`: builds everything from the config, runs until SIGTERM/SIGINT, reloads on
//! SIGHUP. A reload builds a whole new snapshot beside the old one and swaps it in only if every
//! part loaded; new sessions see it, sessions in flight keep theirs.

use crate::config::{Config, DirectoryKind};
use crate::delivery::{Agent, DeliveryConfig, Resolver};
use crate::intake::{listener, Shared};
use crate::message::Envelope;
use crate::policy::{Directory, NoDirectory, Policy, Route, RouteAction, RouteTable, Whitelist};
use crate::queue::{DsnRouter, QueueHandle, Scheduler, Spool};
use crate::tls::TlsMaterial;
use anyhow::{anyhow, Context};
use arc_swap::ArcSwap;
use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;
use tokio::net::TcpListener;
use tokio::sync::watch;

/// Everything derived from one config file.
pub struct Snapshot {
    pub config: Config,
    pub tls: Option<TlsMaterial>,
    pub policy: Arc<Policy>,
}

/// Generates the development PKI when the config points into a missing `certs/dev`.
pub fn ensure_dev_pki(cfg: &Config) -> anyhow::Result<()> {
    let Some(tls) = &cfg.tls else { return Ok(()) };
    let Some(dir) = tls.certificate.parent() else {
        return Ok(());
    };
    if tls.certificate.exists() || !dir.ends_with("certs/dev") {
        return Ok(());
    }
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

fn ldap_options(cfg: &Config) -> anyhow::Result<crate::policy::ldap::LdapOptions> {
    let d = &cfg.directory;
    let url = d
        .url
        .clone()
        .ok_or_else(|| anyhow!("directory.url: required"))?;
    let wants_tls = d.starttls || url.starts_with("ldaps://");
    let tls = match (&cfg.tls, wants_tls) {
        (Some(t), true) => {
            let m = TlsMaterial::load(t)?;
            let verifier = m.webpki_server_verifier()?;
            let c = rustls::ClientConfig::builder_with_provider(crate::tls::provider())
                .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
                .map_err(|e| anyhow!("directory TLS: {e}"))?
                .dangerous()
                .with_custom_certificate_verifier(verifier)
                .with_no_client_auth();
            Some(Arc::new(c))
        }
        _ => None,
    };
    Ok(crate::policy::ldap::LdapOptions {
        url,
        base: d.base.clone().unwrap_or_default(),
        filter: d.filter.clone(),
        bind_dn: d.bind_dn.clone().filter(|s| !s.is_empty()),
        bind_password: d.bind_password.clone(),
        timeout: d.timeout,
        starttls: d.starttls,
        tls,
        pool_size: d.pool_size,
        cache_ttl: d.cache_ttl,
        negative_ttl: d.negative_ttl,
        cache_size: d.cache_size,
        bal_type_attribute: d.bal_type_attribute.clone(),
    })
}

pub fn build_policy(cfg: &Config) -> anyhow::Result<Policy> {
    build_policy_from(cfg, None)
}

/// With `previous` (a reload), a whitelist file that no longer loads is replaced by the last
/// good list, with an error in the log: a garbage download must not empty the trust space.
pub fn build_policy_from(cfg: &Config, previous: Option<&Policy>) -> anyhow::Result<Policy> {
    let routes = cfg
        .route
        .iter()
        .map(Route::from_config)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| anyhow!(e))?;
    let whitelist = match &cfg.whitelist {
        Some(w) => match (
            load_whitelist(&w.file),
            previous.and_then(|p| p.whitelist.clone()),
        ) {
            (Ok(list), _) => Some(Arc::new(list)),
            (Err(e), Some(last_good)) => {
                tracing::error!(
                    "{e:#}; keeping the last good whitelist ({} domains)",
                    last_good.domain_count()
                );
                Some(last_good)
            }
            (Err(e), None) => return Err(e),
        },
        None => None,
    };
    let directory: Arc<dyn Directory> = match cfg.directory.kind {
        DirectoryKind::None => Arc::new(NoDirectory),
        DirectoryKind::Extract => {
            let file = cfg
                .directory
                .file
                .as_ref()
                .ok_or_else(|| anyhow!("directory.file: required"))?;
            Arc::new(
                crate::policy::directory::ExtractDirectory::load(file)
                    .with_context(|| format!("directory.file {}", file.display()))?,
            )
        }
        DirectoryKind::Ldap => {
            Arc::new(crate::policy::ldap::LdapDirectory::new(ldap_options(cfg)?))
        }
    };
    Ok(Policy {
        routes: RouteTable::new(routes),
        directory,
        whitelist,
    })
}

impl Snapshot {
    pub fn load(path: &Path) -> anyhow::Result<Snapshot> {
        Self::reload(path, None)
    }

    /// A new snapshot; with `previous`, unusable CRL and whitelist files fall back to their
    /// last good copies (see [`TlsMaterial::reload`], [`build_policy_from`]).
    pub fn reload(
        path: &Path,
        previous: Option<(&Policy, Option<&TlsMaterial>)>,
    ) -> anyhow::Result<Snapshot> {
        let config = Config::load_unvalidated(path)?;
        ensure_dev_pki(&config)?;
        let problems = config.validate();
        if !problems.is_empty() {
            return Err(anyhow!("{}", problems.join("\n")));
        }
        let prev_tls = previous.and_then(|(_, t)| t);
        let tls = config
            .tls
            .as_ref()
            .map(|t| TlsMaterial::reload(t, prev_tls))
            .transpose()?;
        let policy = Arc::new(build_policy_from(&config, previous.map(|(p, _)| p))?);
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
        Ok(Snapshot {
            config,
            tls,
            policy,
        })
    }

    fn server_tls(
        &self,
        l: &crate::config::ListenerConfig,
    ) -> anyhow::Result<Option<Arc<rustls::ServerConfig>>> {
        use crate::config::{ClientCert, StartTls};
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

/// Where a DSN to the original sender goes: the receiving listener's routes first, then every
/// route in config order; reject routes are skipped, the directory is not consulted.
fn dsn_router(
    policy: Arc<ArcSwap<Policy>>,
    listeners: Arc<ArcSwap<HashMap<String, Vec<String>>>>,
) -> DsnRouter {
    Arc::new(move |env: &Envelope| {
        let p = policy.load();
        let to = env.recipients.first()?;
        let domain = to.address.rsplit_once('@')?.1.to_ascii_lowercase();
        let declared = |d: &str| p.is_declared(d);
        let usable = |r: &Route| {
            matches!(r.action, RouteAction::Transport(_))
                && r.patterns.iter().any(|pat| pat.matches(&domain, &declared))
        };
        let own = listeners
            .load()
            .get(&env.listener)
            .cloned()
            .unwrap_or_default();
        let from_listener = own
            .iter()
            .filter_map(|n| p.routes.get(n))
            .find(|r| usable(r));
        let route = from_listener.or_else(|| p.routes.all().iter().find(|r| usable(r)))?;
        match &route.action {
            RouteAction::Transport(t) => Some((route.name.clone(), t.clone())),
            RouteAction::Reject(_) => None,
        }
    })
}

/// The whitelist DNs of a domain, from whichever whitelist is current when delivery asks.
fn dn_pins(policy: &Arc<ArcSwap<Policy>>) -> crate::delivery::DnPins {
    let policy = policy.clone();
    Arc::new(move |domain: &str| {
        policy
            .load()
            .whitelist
            .as_ref()
            .map(|w| {
                w.entries(domain)
                    .iter()
                    .map(|e| e.dn_norm.clone())
                    .collect()
            })
            .unwrap_or_default()
    })
}

/// The handles a running server swaps on reload.
struct Running {
    config_path: std::path::PathBuf,
    listeners: tokio::sync::Mutex<HashMap<String, Bound>>,
    policy: Arc<ArcSwap<Policy>>,
    spool: Spool,
    queue: QueueHandle,
    agent: Arc<Agent>,
    queue_cfg: Arc<ArcSwap<crate::config::QueueConfig>>,
    listener_routes: Arc<ArcSwap<HashMap<String, Vec<String>>>>,
    /// The TLS material in force (last good CRLs come from here).
    tls: std::sync::Mutex<Option<TlsMaterial>>,
    whitelist: ArcSwap<Option<crate::config::WhitelistConfig>>,
    directory: ArcSwap<crate::config::DirectoryConfig>,
}

/// A bound listener: its settings slot, its own stop signal, its accept task.
struct Bound {
    address: String,
    shared: Arc<ArcSwap<Shared>>,
    stop: watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
}

impl Bound {
    fn start(sock: TcpListener, l: &crate::config::ListenerConfig, shared: Shared) -> Bound {
        let shared = Arc::new(ArcSwap::from_pointee(shared));
        let (stop, rx) = watch::channel(false);
        tracing::info!(listener = %l.name, address = %l.address, "listening");
        Bound {
            address: l.address.clone(),
            task: tokio::spawn(listener::run(sock, shared.clone(), rx)),
            shared,
            stop,
        }
    }

    /// Stops accepting; sessions in flight finish (bounded by the listener's drain time).
    async fn close(self) {
        let _ = self.stop.send(true);
        let _ = self.task.await;
    }
}

/// Binds with a large accept backlog (the default 128 overflows under reconnect bursts).
async fn bind(l: &crate::config::ListenerConfig) -> anyhow::Result<TcpListener> {
    let ctx = || format!("listener {}: bind {}", l.name, l.address);
    let addr: std::net::SocketAddr = l.address.parse().with_context(ctx)?;
    let sock = match addr {
        std::net::SocketAddr::V4(_) => tokio::net::TcpSocket::new_v4(),
        std::net::SocketAddr::V6(_) => tokio::net::TcpSocket::new_v6(),
    }
    .with_context(ctx)?;
    sock.set_reuseaddr(true).with_context(ctx)?;
    sock.bind(addr).with_context(ctx)?;
    sock.listen(4096).with_context(ctx)
}

/// What identifies a version of a file: modification time and size.
fn file_stamp(p: &Path) -> Option<(Option<std::time::SystemTime>, u64)> {
    std::fs::metadata(p)
        .ok()
        .map(|m| (m.modified().ok(), m.len()))
}

fn routes_by_listener(cfg: &Config) -> HashMap<String, Vec<String>> {
    cfg.listener
        .iter()
        .map(|l| (l.name.clone(), l.routes.clone()))
        .collect()
}

pub async fn serve(config_path: &Path) -> anyhow::Result<()> {
    let snap = Snapshot::load(config_path)?;
    let cfg = &snap.config;
    let (spool, recovered, report) = Spool::open(&cfg.server.spool)?;
    tracing::info!(spool = %cfg.server.spool.display(), messages = report.messages, segments = report.segments,
        quarantined = report.quarantined, "queue recovered");
    crate::journal::install(crate::journal::start(cfg), cfg);
    let resolver = Resolver::new(&cfg.dns).map_err(|e| anyhow!(e))?;
    let policy = Arc::new(ArcSwap::new(snap.policy.clone()));
    let agent = Agent::new(
        DeliveryConfig::new(cfg, snap.tls.as_ref(), dn_pins(&policy)).map_err(|e| anyhow!(e))?,
        resolver,
    );
    let listener_routes = Arc::new(ArcSwap::from_pointee(routes_by_listener(cfg)));
    let queue_cfg = Arc::new(ArcSwap::from_pointee(cfg.queue.clone()));
    let queue = Scheduler::start(
        spool.clone(),
        agent.clone(),
        queue_cfg.clone(),
        cfg.server.hostname.clone(),
        dsn_router(policy.clone(), listener_routes.clone()),
        recovered,
    );

    let mut listeners: HashMap<String, Bound> = HashMap::new();
    for l in &cfg.listener {
        let sock = bind(l).await?;
        let shared = shared_for(&snap, l, &policy, &spool, &queue)?;
        listeners.insert(l.name.clone(), Bound::start(sock, l, shared));
    }
    let admin = match &cfg.server.admin {
        Some(addr) => {
            let sock = TcpListener::bind(addr)
                .await
                .with_context(|| format!("server.admin: bind {addr}"))?;
            let token = crate::admin::write_token(&cfg.server.spool).with_context(|| {
                format!(
                    "writing {}/{}",
                    cfg.server.spool.display(),
                    crate::admin::TOKEN_FILE
                )
            })?;
            let state = Arc::new(crate::admin::AdminState {
                queue: queue.clone(),
                spool: cfg.server.spool.clone(),
                token,
                listening: std::sync::atomic::AtomicBool::new(true),
            });
            tracing::info!(address = %addr, "admin endpoint: /metrics /healthz /readyz /queue");
            Some(tokio::spawn(crate::admin::run(sock, state)))
        }
        None => None,
    };
    let running = Arc::new(Running {
        config_path: config_path.to_path_buf(),
        listeners: tokio::sync::Mutex::new(listeners),
        policy,
        spool,
        queue: queue.clone(),
        agent: agent.clone(),
        queue_cfg,
        listener_routes,
        whitelist: ArcSwap::from_pointee(cfg.whitelist.clone()),
        directory: ArcSwap::from_pointee(cfg.directory.clone()),
        tls: std::sync::Mutex::new(snap.tls),
    });
    let refresher = tokio::spawn(running.clone().refresh_whitelist());
    let extract_refresher = tokio::spawn(running.clone().refresh_extract());

    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    let mut hup = signal(SignalKind::hangup())?;
    loop {
        tokio::select! {
            _ = term.recv() => break,
            _ = int.recv() => break,
            _ = hup.recv() => match running.reload().await {
                Ok(()) => {
                    crate::metrics::inc("passerelle_reloads_total", "SIGHUP reloads, by result", &[("result", "ok")]);
                    tracing::info!(config = %config_path.display(), "configuration reloaded")
                }
                Err(e) => {
                    crate::metrics::inc("passerelle_reloads_total", "SIGHUP reloads, by result", &[("result", "refused")]);
                    tracing::error!(config = %config_path.display(), "reload refused, keeping the running configuration: {e:#}")
                }
            },
        }
    }
    tracing::info!("shutting down: no new connections, finishing sessions in flight");
    refresher.abort();
    if let Some(a) = admin {
        a.abort();
    }
    extract_refresher.abort();
    let bound: Vec<Bound> = running
        .listeners
        .lock()
        .await
        .drain()
        .map(|(_, b)| b)
        .collect();
    futures::future::join_all(bound.into_iter().map(Bound::close)).await;
    queue.shutdown().await;
    agent.close_all().await;
    crate::journal::shutdown(std::time::Duration::from_secs(5));
    tracing::info!("stopped; the queue is safe on disk");
    Ok(())
}

fn shared_for(
    snap: &Snapshot,
    l: &crate::config::ListenerConfig,
    policy: &Arc<ArcSwap<Policy>>,
    spool: &Spool,
    queue: &QueueHandle,
) -> anyhow::Result<Shared> {
    Ok(Shared {
        listener: l.clone(),
        hostname: snap.config.server.hostname.clone(),
        limits: snap.config.smtp.clone(),
        policy: policy.clone(),
        tls: snap.server_tls(l)?,
        client_dns: l
            .client_dns
            .iter()
            .filter_map(|d| crate::dn::Dn::parse_rfc4514(d).ok())
            .collect(),
        validator: match &snap.tls {
            Some(m) if l.client_certificate != crate::config::ClientCert::Off => {
                Some(crate::tls::PeerValidator::new(m)?)
            }
            _ => None,
        },
        spool: spool.clone(),
        queue: queue.clone(),
    })
}

impl Running {
    /// SIGHUP: a whole new snapshot, swapped in only when every part of it loaded and every
    /// new listener is bound. Removed listeners stop accepting and drain their sessions.
    async fn reload(&self) -> anyhow::Result<()> {
        let previous_tls = self.tls.lock().unwrap_or_else(|p| p.into_inner()).clone();
        let current = self.policy.load_full();
        let snap = Snapshot::reload(&self.config_path, Some((&current, previous_tls.as_ref())))?;
        let delivery = DeliveryConfig::new(&snap.config, snap.tls.as_ref(), dn_pins(&self.policy))
            .map_err(|e| anyhow!(e))?;
        let mut listeners = self.listeners.lock().await;
        let mut keep = Vec::new();
        let mut fresh = Vec::new();
        for l in &snap.config.listener {
            let shared = shared_for(&snap, l, &self.policy, &self.spool, &self.queue)?;
            match listeners.get(&l.name) {
                Some(b) if b.address == l.address => keep.push((l.name.clone(), shared)),
                _ => fresh.push((l.clone(), bind(l).await?, shared)),
            }
        }
        // Everything is ready: swap.
        self.policy.store(snap.policy.clone());
        for (name, shared) in keep {
            if let Some(b) = listeners.get(&name) {
                b.shared.store(Arc::new(shared));
            }
        }
        let wanted: Vec<&str> = snap
            .config
            .listener
            .iter()
            .map(|l| l.name.as_str())
            .collect();
        let fresh_names: Vec<String> = fresh.iter().map(|(l, _, _)| l.name.clone()).collect();
        let gone: Vec<String> = listeners
            .keys()
            .filter(|n| !wanted.contains(&n.as_str()) || fresh_names.contains(n))
            .cloned()
            .collect();
        for name in gone {
            if let Some(b) = listeners.remove(&name) {
                tracing::info!(listener = %name, address = %b.address, "listener closed by reload");
                tokio::spawn(b.close());
            }
        }
        for (l, sock, shared) in fresh {
            listeners.insert(l.name.clone(), Bound::start(sock, &l, shared));
        }
        self.agent.reconfigure(delivery);
        crate::journal::reconfigure(&snap.config);
        self.queue_cfg.store(Arc::new(snap.config.queue.clone()));
        self.listener_routes
            .store(Arc::new(routes_by_listener(&snap.config)));
        self.whitelist
            .store(Arc::new(snap.config.whitelist.clone()));
        self.directory
            .store(Arc::new(snap.config.directory.clone()));
        *self.tls.lock().unwrap_or_else(|p| p.into_inner()) = snap.tls;
        Ok(())
    }

    /// With `directory.kind = "extract"`, re-reads the extract when the file changes (checked
    /// every 5 s). A file that does not load keeps the directory in force.
    async fn refresh_extract(self: Arc<Self>) {
        let current_file = |r: &Running| {
            let d = r.directory.load();
            (d.kind == DirectoryKind::Extract)
                .then(|| d.file.clone())
                .flatten()
        };
        let mut seen = current_file(&self).map(|f| file_stamp(&f));
        loop {
            tokio::time::sleep(std::time::Duration::from_secs(5)).await;
            let Some(file) = current_file(&self) else {
                continue;
            };
            let now = Some(file_stamp(&file));
            if now == seen {
                continue;
            }
            seen = now;
            let path = file.clone();
            let loaded = tokio::task::spawn_blocking(move || {
                crate::policy::directory::ExtractDirectory::load(&path)
            })
            .await;
            match loaded {
                Ok(Ok(dir)) => {
                    let current = self.policy.load_full();
                    self.policy
                        .store(Arc::new(current.with_directory(Arc::new(dir))));
                }
                Ok(Err(e)) => {
                    tracing::error!(file = %file.display(), "directory extract not reloaded, keeping the current one: {e}")
                }
                Err(e) => {
                    tracing::error!(file = %file.display(), "directory extract reload failed: {e}")
                }
            }
        }
    }

    async fn refresh_whitelist(self: Arc<Self>) {
        let stamp = file_stamp;
        let mut seen = self
            .whitelist
            .load()
            .as_ref()
            .as_ref()
            .map(|w| stamp(&w.file));
        loop {
            let period = self.whitelist.load().as_ref().as_ref().map(|w| w.reload);
            tokio::time::sleep(
                period
                    .unwrap_or(std::time::Duration::from_secs(60))
                    .max(std::time::Duration::from_millis(200)),
            )
            .await;
            let Some(w) = self.whitelist.load().as_ref().clone() else {
                continue;
            };
            let now = Some(stamp(&w.file));
            if now == seen {
                continue;
            }
            seen = now;
            match load_whitelist(&w.file) {
                Ok(list) => {
                    let current = self.policy.load_full();
                    self.policy
                        .store(Arc::new(current.with_whitelist(Arc::new(list))));
                }
                Err(e) => {
                    let kept = self
                        .policy
                        .load()
                        .whitelist
                        .as_ref()
                        .map_or(0, |l| l.domain_count());
                    tracing::error!("{e:#}; keeping the last good whitelist ({kept} domains)");
                }
            }
        }
    }
}
