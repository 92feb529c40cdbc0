//! One file watcher for every refreshed list (whitelist, directory extract, CRLs): the sole
//! writer of its cell. It polls the files it was told about, loads a changed one off the
//! runtime threads, and keeps the last good value when a new one does not load. A reload
//! does not write the cell itself: it hands the watcher the new spec (and the value it
//! already loaded, when the files changed) and waits for it to be applied, so a refresh can
//! never put back data of an older config.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime};
use tokio::sync::{mpsc, oneshot};

/// What identifies a version of a file: modification time and size.
type Stamp = Option<(Option<SystemTime>, u64)>;

fn stamp(p: &std::path::Path) -> Stamp {
    std::fs::metadata(p)
        .ok()
        .map(|m| (m.modified().ok(), m.len()))
}

/// How one kind of data is watched and loaded.
pub trait Watched: Send + Sync + 'static {
    /// What the config says about it (file names, period).
    type Spec: Clone + PartialEq + Send + Sync + 'static;
    type Value: Send + Sync + 'static;

    fn name(&self) -> &'static str;
    fn files(&self, spec: &Self::Spec) -> Vec<PathBuf>;
    fn period(&self, spec: &Self::Spec) -> Duration;
    /// Loads the data of `spec` (blocking: run off the runtime threads).
    fn load(&self, spec: &Self::Spec) -> Result<Self::Value, String>;
    /// Puts a loaded value in force.
    fn store(&self, value: Self::Value);
    /// The log line when a changed file does not load (the last good data stays).
    fn kept(&self, error: &str) -> Option<String> {
        Some(format!(
            "{} not reloaded, keeping the one in force: {error}",
            self.name()
        ))
    }
}

enum Msg<W: Watched> {
    Reconfigure {
        spec: W::Spec,
        loaded: Option<W::Value>,
        ack: oneshot::Sender<()>,
    },
    /// Look at the files now (a download just replaced one).
    Check,
}

/// The handle a reload uses to change what is watched.
pub struct Watcher<W: Watched> {
    tx: mpsc::UnboundedSender<Msg<W>>,
    kind: Arc<W>,
    spec: std::sync::Mutex<W::Spec>,
}

impl<W: Watched> Watcher<W> {
    /// Starts watching `spec`, whose data is already in force.
    pub fn start(kind: W, spec: W::Spec) -> Watcher<W> {
        let kind = Arc::new(kind);
        let (tx, rx) = mpsc::unbounded_channel();
        tokio::spawn(run(kind.clone(), spec.clone(), rx));
        Watcher {
            tx,
            kind,
            spec: std::sync::Mutex::new(spec),
        }
    }

    /// For a reload, which re-reads every file: the data of `spec`, loaded now. When it does
    /// not load, a reload that names other files than those in force is refused; one that
    /// names the same keeps the last good data (`None`), as a refresh would.
    pub async fn prepare(&self, spec: &W::Spec) -> Result<Option<W::Value>, String> {
        let same = *self.spec.lock().unwrap_or_else(|p| p.into_inner()) == *spec;
        let (kind, s) = (self.kind.clone(), spec.clone());
        let loaded = tokio::task::spawn_blocking(move || kind.load(&s))
            .await
            .map_err(|e| e.to_string())?;
        match loaded {
            Ok(v) => Ok(Some(v)),
            Err(e) if same => {
                tracing::error!(
                    "{} not reloaded, keeping the one in force: {e}",
                    self.kind.name()
                );
                Ok(None)
            }
            Err(e) => Err(e),
        }
    }

    /// Makes the watcher look at its files now rather than at the end of its period.
    pub fn check_now(&self) {
        let _ = self.tx.send(Msg::Check);
    }

    /// Puts `spec` (and its prepared data) in force, through the watcher task.
    pub async fn apply(&self, spec: W::Spec, loaded: Option<W::Value>) {
        *self.spec.lock().unwrap_or_else(|p| p.into_inner()) = spec.clone();
        let (ack, done) = oneshot::channel();
        if self.tx.send(Msg::Reconfigure { spec, loaded, ack }).is_ok() {
            let _ = done.await;
        }
    }
}

async fn run<W: Watched>(kind: Arc<W>, mut spec: W::Spec, mut rx: mpsc::UnboundedReceiver<Msg<W>>) {
    let stamps = |s: &W::Spec| -> Vec<Stamp> { kind.files(s).iter().map(|f| stamp(f)).collect() };
    let mut seen = stamps(&spec);
    loop {
        let period = kind.period(&spec).max(Duration::from_millis(200));
        tokio::select! {
            msg = rx.recv() => match msg {
                Some(Msg::Reconfigure { spec: s, loaded, ack }) => {
                    spec = s;
                    seen = stamps(&spec);
                    if let Some(v) = loaded {
                        kind.store(v);
                    }
                    let _ = ack.send(());
                    continue;
                }
                Some(Msg::Check) => {}
                None => return,
            },
            _ = tokio::time::sleep(period) => {}
        }
        let now = stamps(&spec);
        if now.is_empty() || now == seen {
            continue;
        }
        seen = now;
        let (k, s) = (kind.clone(), spec.clone());
        match tokio::task::spawn_blocking(move || k.load(&s)).await {
            Ok(Ok(v)) => kind.store(v),
            Ok(Err(e)) => {
                if let Some(line) = kind.kept(&e) {
                    tracing::error!("{line}");
                }
            }
            Err(e) => tracing::error!("{} reload failed: {e}", kind.name()),
        }
    }
}
