//! `passerelle serve`: builds everything from the config, runs until SIGTERM/SIGINT, reloads on
//! SIGHUP.
//!
//! What lives where:
//! - one [`Snapshot`] of everything derived from the config file (listeners' settings, routes,
//!   transports, TLS identity, limits), in one cell; a session takes its listener's context
//!   once, at accept, and a delivery job its settings once, at start;
//! - the data with a life of its own (whitelist, directory, CRLs), each in its own cell with
//!   one writer, its [`watch::Watcher`]; a refresh applies at once, to sessions in flight too.
//!
//! A reload builds a whole new snapshot (and loads the data it names) beside the old one and
//! swaps it in only if every part loaded and every new listener is bound.
//!
//! Must not import: cli (main.rs reaches it through cli::run).

mod data;
mod listeners;
mod watch;

pub use crate::runtime::reload::{ReloadHandle, ReloadRequest};
pub use crate::runtime::snapshot::{ensure_dev_pki, load_config, pending_dev_pki, Snapshot};
pub use data::{build_directory, load_whitelist, DirectorySpec};

use crate::config::Config;
use crate::delivery::{Agent, Transport};
use crate::policy::Lists;
use crate::queue::scheduler::SchedulerConfig;
use crate::queue::{Queue, Scheduler, Spool};
use crate::tls::{CrlSet, Crls};
use anyhow::Context;
use arc_swap::ArcSwap;
use listeners::{bind, Bound};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use tokio::net::TcpListener;
use watch::Watcher;

/// The running gateway: the snapshot in force, the data cells and their watchers, and the
/// long-lived parts (queue, delivery agent, bound listeners).
struct Runtime {
    config_path: PathBuf,
    snapshot: Arc<ArcSwap<Snapshot>>,
    lists: Arc<Lists>,
    crls: Crls,
    whitelist: Watcher<data::WhitelistData>,
    directory: Watcher<data::DirectoryData>,
    crl_files: Watcher<data::CrlData>,
    queue: Queue,
    agent: Arc<Agent>,
    listeners: tokio::sync::Mutex<HashMap<String, Bound>>,
    /// What the download loop fetches (whitelist, CRLs), from the config in force.
    downloads: Arc<ArcSwap<crate::trust::fetch::Plan>>,
    /// `[directory.sync]` in force and its periodic task.
    directory_sync: std::sync::Mutex<Scheduled>,
}

/// The periodic directory sync: restarted when a reload changes `[directory.sync]`.
#[derive(Default)]
struct Scheduled {
    spec: Option<(crate::config::SyncConfig, Option<crate::config::TlsConfig>)>,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl Scheduled {
    fn follow(&mut self, cfg: &Config) {
        let spec = cfg.directory.sync.clone().map(|s| (s, cfg.tls.clone()));
        if spec == self.spec && (spec.is_none() || self.task.is_some()) {
            return;
        }
        if let Some(t) = self.task.take() {
            t.abort();
        }
        self.task = crate::directory::sync::spawn_scheduled(cfg);
        self.spec = spec;
    }
}

/// The return path of notifications: the routes of the snapshot in force.
struct SenderRoutes(Arc<ArcSwap<Snapshot>>);

impl crate::dsn::ReturnPath for SenderRoutes {
    fn route(&self, listener: &str, address: &str) -> Option<(String, String)> {
        let snap = self.0.load();
        let order = snap
            .config
            .listener(listener)
            .map(|l| l.routes.as_slice())
            .unwrap_or(&[]);
        snap.policy.route_for(order, address)
    }

    fn establishment(&self, name: &str) -> Option<(String, String)> {
        let snap = self.0.load();
        let e = snap.policy.establishments.get(name)?;
        Some((
            crate::config::establishment::BUILTIN_ROUTE.to_string(),
            e.transport_name(),
        ))
    }
}

fn directory_spec(cfg: &Config) -> DirectorySpec {
    DirectorySpec {
        source: cfg.directory.source.clone(),
        tls: cfg.tls.clone(),
    }
}

/// The CRL files `cfg` names and the bound each must stay under.
fn crl_paths(cfg: &Config) -> data::CrlSpec {
    match &cfg.tls {
        Some(t) => (t.crls.clone(), t.crl_max_size),
        None => (Vec::new(), crate::util::fs::DEFAULT_MAX_CRL_BYTES),
    }
}

fn scheduler_config(cfg: &Config) -> SchedulerConfig {
    SchedulerConfig {
        queue: cfg.queue.clone(),
        hostname: cfg.server.hostname.clone(),
    }
}

/// With `[state] kind = "postgres"`: the state's settings and its local copy, brought up to
/// date from the database when it answers.
async fn shared_state(config_path: &Path) -> Option<(crate::config::StateConfig, PathBuf)> {
    let path = config_path.to_path_buf();
    let main = tokio::task::spawn_blocking(move || {
        let text = std::fs::read_to_string(&path).ok()?;
        Config::from_toml_str(&text, &path.display().to_string()).ok()
    })
    .await
    .ok()
    .flatten()?;
    let c = main.config;
    if !c.state.shared() || !c.state.validate().is_empty() {
        return None;
    }
    let dir = c.state.local_dir(&c.server.spool);
    crate::state::sync::initial(&c.state, &dir, config_path).await;
    Some((c.state, dir))
}

pub async fn serve(config_path: &Path) -> anyhow::Result<()> {
    // Signals first: a SIGHUP that lands while the listeners bind (a supervisor reloading
    // right after start) must be taken as a reload, never by the default action, which exits.
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    let mut hup = signal(SignalKind::hangup())?;
    // A shared state: its local copy brought up to date before the configuration reads it
    // (only `[state]` and the spool are needed: the main file's text, parsed alone).
    let shared_state = shared_state(config_path).await;
    let cfg = load_config(config_path)?;
    // Files with a download URL that do not exist yet are fetched before they are loaded.
    {
        let c = cfg.clone();
        let _ = tokio::task::spawn_blocking(move || crate::trust::fetch::prime(&c)).await;
    }
    let lists = Arc::new(load_lists(&cfg)?);
    let crls = lists_crls(&cfg)?;
    let snapshot = Arc::new(ArcSwap::from_pointee(Snapshot::build(cfg, lists.clone())?));
    let snap = snapshot.load_full();
    let cfg = &snap.config;

    let (spool, recovered, report) = Spool::open(&cfg.server.spool)?;
    let queue_dir = spool.queue_dir().to_path_buf();
    let (reloader, mut reload_requests) = ReloadHandle::channel();
    tracing::info!(spool = %cfg.server.spool.display(), messages = report.messages, segments = report.segments,
        quarantined = report.quarantined, truncated_bytes = report.truncated_bytes,
        skipped_zero_bytes = report.skipped_zero_bytes, "queue recovered");
    crate::journal::install(crate::journal::start(cfg), cfg);
    let agent = Agent::new(snap.delivery(&crls)?);
    let transport: Arc<dyn Transport> = agent.clone();
    let queue = Scheduler::start(
        spool,
        transport,
        Arc::new(SenderRoutes(snapshot.clone())),
        scheduler_config(cfg),
        recovered,
    );

    let mut bound = HashMap::new();
    for l in &cfg.listener {
        let sock = bind(l).await?;
        let ctx = snap.listener_context(l, &crls, &queue)?;
        bound.insert(l.name.clone(), Bound::start(sock, l, ctx));
    }
    // One audit trail for the console and the admin endpoint; its hourly pruning and head.
    let auditor = Arc::new(crate::audit::Auditor::new(&cfg.journal, &cfg.server.spool));
    tokio::spawn(crate::audit::hourly(
        auditor.clone(),
        cfg.journal.audit_retention,
    ));
    let admin = match &cfg.server.admin {
        Some(addr) => {
            let sock = TcpListener::bind(*addr)
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
                // `POST /reload` (`establishment add`): a reload as SIGHUP's.
                reload: Some(reloader.clone()),
                queue: queue.handle().clone(),
                spool: cfg.server.spool.clone(),
                token,
                auditor: auditor.clone(),
            });
            tracing::info!(address = %addr, "admin endpoint: /metrics /healthz /readyz /queue");
            Some(tokio::spawn(crate::admin::run(sock, state)))
        }
        None => None,
    };
    let downloads = Arc::new(ArcSwap::from_pointee(
        crate::trust::fetch::Plan::from_config_or_log(cfg),
    ));
    let mut directory_sync = Scheduled::default();
    directory_sync.follow(cfg);
    let rt = Runtime {
        directory_sync: std::sync::Mutex::new(directory_sync),
        downloads: downloads.clone(),
        config_path: config_path.to_path_buf(),
        whitelist: Watcher::start(data::WhitelistData(lists.clone()), cfg.whitelist.clone()),
        directory: Watcher::start(
            data::DirectoryData {
                lists: lists.clone(),
                crls: crls.clone(),
            },
            directory_spec(cfg),
        ),
        crl_files: Watcher::start(data::CrlData(crls.clone()), crl_paths(cfg)),
        snapshot,
        lists,
        crls,
        queue: queue.clone(),
        agent: agent.clone(),
        listeners: tokio::sync::Mutex::new(bound),
    };
    // The snapshot cell is the one holder of the snapshot in force: a reload's swap frees it.
    drop(snap);

    // Whitelist and CRL downloads; the watcher of a replaced file looks at it at once.
    let (changed_tx, mut changed) = tokio::sync::mpsc::unbounded_channel();
    let downloader = {
        let lists = rt.lists.clone();
        tokio::spawn(crate::trust::fetch::run(
            move || downloads.load_full(),
            move || lists.whitelist.load_full(),
            changed_tx,
        ))
    };

    if let Some((sc, dir)) = shared_state {
        let handle = reloader.clone();
        let reload: crate::state::sync::Reload = Box::new(move || {
            let h = handle.clone();
            Box::pin(async move { h.reload().await })
        });
        tokio::spawn(crate::state::sync::run(sc, dir, reload));
    }
    let console = crate::console::start(crate::console::ConsoleBackend {
        queue: queue.handle().clone(),
        queue_dir,
        snapshot: rt.snapshot.clone(),
        crls: rt.crls.clone(),
        reload: reloader,
        journal: Arc::new(crate::console::journal_hook::JournalHook::new(
            rt.snapshot.clone(),
        )),
        establishments: Arc::new(crate::console::GatewayEstablishments(rt.snapshot.clone())),
        auditor: auditor.clone(),
    })
    .await?;

    loop {
        tokio::select! {
            _ = term.recv() => break,
            _ = int.recv() => break,
            Some(what) = changed.recv() => match what {
                crate::trust::fetch::What::Crl(_) => rt.crl_files.check_now(),
                crate::trust::fetch::What::Whitelist => rt.whitelist.check_now(),
            },
            _ = hup.recv() => {
                // A reload by signal (`systemctl reload`) is an administrator's action too:
                // one audit entry, or not done.
                let who = crate::audit::Actor {
                    via: "signal",
                    user: "SIGHUP".into(),
                    origin: "local".into(),
                };
                match auditor.begin(&who, "reload", "-", None).await {
                    Ok(p) => {
                        let r = rt.reload_logged().await;
                        let _ = p
                            .finish(match r {
                                Ok(()) => crate::audit::Outcome::Ok,
                                Err(e) => crate::audit::Outcome::Refused(e),
                            })
                            .await;
                    }
                    Err(e) => tracing::error!(target: "passerelle::audit", "SIGHUP: reload refused: {e}"),
                }
            }
            Some(done) = reload_requests.recv() => {
                let _ = done.send(rt.reload_logged().await);
            }
        }
    }
    tracing::info!("shutting down: no new connections, finishing sessions in flight");
    downloader.abort();
    if let Some(t) = rt
        .directory_sync
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .task
        .take()
    {
        t.abort();
    }
    if let Some(a) = admin {
        a.abort();
    }
    if let Some(c) = console {
        c.abort();
    }
    let bound: Vec<Bound> = rt.listeners.lock().await.drain().map(|(_, b)| b).collect();
    futures::future::join_all(bound.into_iter().map(Bound::close)).await;
    queue.handle().shutdown().await;
    agent.close_all().await;
    crate::journal::shutdown(std::time::Duration::from_secs(5));
    tracing::info!("stopped; the queue is safe on disk");
    Ok(())
}

impl Runtime {
    /// A reload (SIGHUP or [`ReloadHandle`]) with its log line and metric; the refusal as
    /// one line.
    async fn reload_logged(&self) -> Result<(), String> {
        let config = self.config_path.display();
        match self.reload().await {
            Ok(()) => {
                crate::metrics::inc(
                    "passerelle_reloads_total",
                    "SIGHUP reloads, by result",
                    &[("result", "ok")],
                );
                tracing::info!(%config, "configuration reloaded");
                Ok(())
            }
            Err(e) => {
                crate::metrics::inc(
                    "passerelle_reloads_total",
                    "SIGHUP reloads, by result",
                    &[("result", "refused")],
                );
                // One error, one line.
                let why = format!("{e:#}").replace('\n', "; ");
                tracing::error!(%config, "reload refused, keeping the running configuration: {why}");
                Err(why)
            }
        }
    }

    /// SIGHUP: a whole new snapshot, and every file it names re-read; swapped in only when all
    /// of it loaded and every new listener is bound. Removed listeners stop accepting and
    /// drain their sessions.
    async fn reload(&self) -> anyhow::Result<()> {
        // Reading the files (and generating a missing development PKI, RSA keys) on a
        // blocking thread, never the runtime's (issue 24 B.13).
        let path = self.config_path.clone();
        let cfg = tokio::task::spawn_blocking(move || load_config(&path)).await??;
        // The shared state's follower and the console's connection are made at start.
        let running = &self.snapshot.load().config.state;
        if (running.kind, &running.url, &running.password_file)
            != (cfg.state.kind, &cfg.state.url, &cfg.state.password_file)
        {
            anyhow::bail!("[state] changed: restart the gateway to apply it");
        }
        // Data first: the CRLs (the directory's TLS may need them), then the lists.
        let crl_spec = crl_paths(&cfg);
        let crls = self
            .crl_files
            .prepare(&crl_spec)
            .await
            .map_err(anyhow::Error::msg)?;
        let whitelist = self
            .whitelist
            .prepare(&cfg.whitelist)
            .await
            .map_err(anyhow::Error::msg)?;
        let dir_spec = directory_spec(&cfg);
        let directory = self
            .directory
            .prepare(&dir_spec)
            .await
            .map_err(anyhow::Error::msg)?;
        let lists = self.lists.clone();
        let snap = tokio::task::spawn_blocking(move || Snapshot::build(cfg, lists)).await??;
        let delivery = snap.delivery(&self.crls)?;
        let mut listeners = self.listeners.lock().await;
        let mut keep = Vec::new();
        let mut fresh = Vec::new();
        for l in &snap.config.listener {
            let ctx = snap.listener_context(l, &self.crls, &self.queue)?;
            match listeners.get(&l.name) {
                Some(b) if b.address == l.address => keep.push((l.name.clone(), ctx)),
                _ => fresh.push((l.clone(), bind(l).await?, ctx)),
            }
        }

        // Everything is ready: the data through its watchers, then the snapshot.
        self.crl_files.apply(crl_spec, crls).await;
        self.whitelist
            .apply(snap.config.whitelist.clone(), whitelist)
            .await;
        self.directory.apply(dir_spec, directory).await;
        self.agent.reconfigure(delivery);
        crate::journal::reconfigure(&snap.config);
        self.queue
            .handle()
            .reconfigure(scheduler_config(&snap.config));
        for (name, ctx) in keep {
            if let Some(b) = listeners.get(&name) {
                b.context.store(Arc::new(ctx));
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
        for (l, sock, ctx) in fresh {
            listeners.insert(l.name.clone(), Bound::start(sock, &l, ctx));
        }
        self.downloads
            .store(Arc::new(crate::trust::fetch::Plan::from_config_or_log(
                &snap.config,
            )));
        self.snapshot.store(Arc::new(snap));
        Ok(())
    }
}

/// The CRLs `cfg` names, loaded (the start fails when one does not load).
fn lists_crls(cfg: &Config) -> anyhow::Result<Crls> {
    let (paths, max) = crl_paths(cfg);
    let set = CrlSet::load_capped(&paths, max, None)?;
    crate::trust::record_crls(&set);
    Ok(Arc::new(ArcSwap::from_pointee(set)))
}

/// The whitelist and directory `cfg` names, loaded (the start fails when one does not load).
fn load_lists(cfg: &Config) -> anyhow::Result<Lists> {
    let crls = lists_crls(cfg)?;
    let whitelist = cfg
        .whitelist
        .as_ref()
        .map(|w| load_whitelist(w, None))
        .transpose()?;
    let directory = data::build_directory(&directory_spec(cfg), &crls)?;
    Ok(Lists::new(whitelist, directory))
}

/// For the offline verbs (`route test`, `directory lookup`, `check-config`): a snapshot with
/// its data loaded once, as `serve` would.
pub fn offline_snapshot(cfg: Config) -> anyhow::Result<Snapshot> {
    let lists = Arc::new(load_lists(&cfg)?);
    Snapshot::build(cfg, lists)
}
