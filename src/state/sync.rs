//! Following the shared state: a task per gateway that LISTENs for the writers' notifications
//! and, every second, reads the state's version (a notification lost with a connection is
//! caught there). A new version is written to the local copy and applied through the reload
//! path, so the whole configuration is validated as for SIGHUP; one log line per change. A
//! version the reload refuses is taken back out of the local copy (the copy and the running
//! configuration never disagree, and a restart starts on what ran).

use super::{local, mark_applied, mark_reachable, now_unix, pg, StateError, HEALTH};
use crate::config::{Config, StateConfig};
use std::future::Future;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::time::Duration;

/// Asks the running server to reload (the reload handle, given by the server).
pub type Reload =
    Box<dyn Fn() -> Pin<Box<dyn Future<Output = Result<(), String>> + Send>> + Send + Sync>;

/// How often the version is read besides the notifications.
const POLL: Duration = Duration::from_secs(1);
/// Sessions older than this are deleted from the database (the console's own limit, 12 h).
const SESSION_MAX_AGE: Duration = Duration::from_secs(12 * 3600);

/// The local copy as it is on disk (blocking work, on a blocking thread).
async fn read_local(dir: &Path) -> Option<pg::State> {
    let dir = dir.to_path_buf();
    tokio::task::spawn_blocking(move || local::read(&dir))
        .await
        .ok()
        .flatten()
}

/// Before the first configuration is read: the state from the database into the local copy
/// (within a few seconds), so a gateway starts on what the region has now, once the whole
/// configuration (`config`, the main file) is checked with it. The database away, or its
/// state refused here: it starts on its local copy, and says so.
pub async fn initial(sc: &StateConfig, local_dir: &Path, config: &Path) {
    HEALTH.shared.store(true, Ordering::Relaxed);
    let dir = local_dir.to_path_buf();
    if let Some((v, at)) = tokio::task::spawn_blocking(move || local::applied_version(&dir))
        .await
        .ok()
        .flatten()
    {
        mark_applied(v, at);
    }
    let fetched = tokio::time::timeout(Duration::from_secs(5), async {
        let mut c = pg::connect(sc, None).await?;
        pg::migrate(&mut c).await?;
        pg::read(&mut c).await
    })
    .await
    .unwrap_or_else(|_| Err(StateError::Unreachable("no answer within 5 s".into())));
    let state = match fetched {
        Ok(state) => state,
        Err(e) => {
            mark_reachable(false);
            return on_local_copy(local_dir, &e.to_string());
        }
    };
    mark_reachable(true);
    let (path, texts) = (config.to_path_buf(), state.establishments.clone());
    let checked = tokio::task::spawn_blocking(move || Config::check_with_texts(&path, &texts))
        .await
        .map_err(|e| e.to_string())
        .and_then(|r| r.map_err(|e| e.one_line()));
    if let Err(why) = checked {
        tracing::error!("state: the shared state's version {} does not validate with this gateway's configuration: {why}", state.version);
        return on_local_copy(local_dir, "refused");
    }
    match write_local(local_dir.to_path_buf(), state.clone()).await {
        Ok(_) => {
            mark_applied(state.version, now_unix());
            tracing::info!(
                version = state.version,
                establishments = state.establishments.len(),
                users = state.users.len(),
                "state: shared state version {} loaded",
                state.version
            );
        }
        Err(e) => tracing::error!("state: writing the local copy {}: {e}", local_dir.display()),
    }
}

fn on_local_copy(local_dir: &Path, why: &str) {
    match HEALTH.version.load(Ordering::Relaxed) {
        v if v >= 0 => tracing::warn!(
            "state: {why}; starting on the local copy, version {v} ({})",
            local_dir.display()
        ),
        _ => tracing::warn!(
            "state: {why}; no local copy yet ({}): no establishment until it is reachable",
            local_dir.display()
        ),
    }
}

async fn write_local(dir: PathBuf, state: pg::State) -> std::io::Result<local::Applied> {
    let at = now_unix();
    tokio::task::spawn_blocking(move || local::apply(&dir, &state, at))
        .await
        .map_err(std::io::Error::other)?
}

/// What the follower knows between checks.
struct Follower {
    /// The version last handled (applied, or refused by the reload).
    applied: i64,
    /// The state in force: put back when a reload refuses a new one.
    in_force: Option<pg::State>,
    /// The local copy changed but no reload has taken it yet (a write that failed halfway).
    reload_pending: bool,
}

/// Follows the state until the server stops.
pub async fn run(sc: StateConfig, local_dir: PathBuf, reload: Reload) {
    HEALTH.shared.store(true, Ordering::Relaxed);
    let in_force = read_local(&local_dir).await;
    let mut f = Follower {
        applied: in_force.as_ref().map_or(-1, |s| s.version),
        in_force,
        reload_pending: false,
    };
    loop {
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        let connected = async {
            let mut c = pg::connect(&sc, Some(tx)).await?;
            pg::migrate(&mut c).await?;
            c.batch_execute(&format!("LISTEN {}", pg::CHANNEL))
                .await
                .map_err(|e| StateError::Unreachable(e.to_string()))?;
            Ok::<_, StateError>(c)
        };
        let mut client = match tokio::time::timeout(Duration::from_secs(5), connected).await {
            Ok(Ok(c)) => c,
            Ok(Err(e)) => {
                down(&e.to_string());
                tokio::time::sleep(POLL).await;
                continue;
            }
            Err(_) => {
                down("no answer within 5 s");
                continue;
            }
        };
        if unreachable_now() {
            tracing::info!("state: database reachable again; changes are accepted");
        }
        mark_reachable(true);
        let mut pruned = std::time::Instant::now() - Duration::from_secs(3600);
        loop {
            let r = timed(fetch(&mut client, f.applied)).await;
            match r {
                Ok(None) => {}
                Ok(Some((state, changes))) => {
                    apply(&local_dir, state, changes, &mut f, &reload).await
                }
                Err(e) => {
                    down(&e);
                    break;
                }
            }
            if pruned.elapsed() > Duration::from_secs(600) {
                pruned = std::time::Instant::now();
                match timed(pg::sessions_prune(&client, SESSION_MAX_AGE)).await {
                    Ok(n) => tracing::debug!(sessions = n, "state: expired sessions removed"),
                    Err(e) => {
                        down(&e);
                        break;
                    }
                }
            }
            tokio::select! {
                _ = rx.recv() => {}
                _ = tokio::time::sleep(POLL) => {}
            }
        }
        tokio::time::sleep(POLL).await;
    }
}

/// A statement within [`pg::STATEMENT_TIMEOUT`]; its error as a line.
async fn timed<T>(f: impl Future<Output = Result<T, StateError>>) -> Result<T, String> {
    match tokio::time::timeout(pg::STATEMENT_TIMEOUT, f).await {
        Ok(r) => r.map_err(|e| e.to_string()),
        Err(_) => Err("no answer within 3 s".into()),
    }
}

fn unreachable_now() -> bool {
    !HEALTH.reachable.load(Ordering::Relaxed)
}

fn down(why: &str) {
    if !unreachable_now() {
        tracing::warn!("state: database unreachable ({why}): the state last applied stays in force, changes are refused");
    }
    mark_reachable(false);
}

type Changes = Vec<(i64, String, String)>;

/// One check: a version other than the one handled, read whole, with its changes.
async fn fetch(
    client: &mut tokio_postgres::Client,
    applied: i64,
) -> Result<Option<(pg::State, Changes)>, StateError> {
    let v = pg::version(client).await?;
    if v == applied {
        return Ok(None);
    }
    let state = pg::read(client).await?;
    let changes = pg::changes_since(client, applied).await?;
    Ok(Some((state, changes)))
}

/// Writes a state to the local copy and applies it (a reload when establishments changed);
/// a reload that refuses it gets the state in force put back.
async fn apply(
    local_dir: &Path,
    state: pg::State,
    changes: Changes,
    f: &mut Follower,
    reload: &Reload,
) {
    let done = match write_local(local_dir.to_path_buf(), state.clone()).await {
        Ok(d) => d,
        Err(e) => {
            // Part of it may be written: the next check writes the rest and reloads.
            f.reload_pending = true;
            tracing::error!("state: writing the local copy {}: {e}", local_dir.display());
            return;
        }
    };
    let outcome = if done.establishments || f.reload_pending {
        reload().await
    } else {
        Ok(())
    };
    let listed = changes.iter().filter(|(cv, _, _)| *cv <= state.version);
    match &outcome {
        Ok(()) => {
            for (cv, what, by) in listed {
                tracing::info!(version = cv, "state: version {cv} applied: {what} by {by}");
            }
            if changes.is_empty() {
                tracing::info!(
                    version = state.version,
                    "state: version {} applied",
                    state.version
                );
            }
            f.reload_pending = false;
            mark_applied(state.version, now_unix());
            f.in_force = Some(state.clone());
        }
        Err(why) => {
            for (cv, what, by) in listed {
                tracing::error!(version = cv,
                    "state: version {cv} ({what} by {by}) NOT applied, the configuration in force stays: {why}");
            }
            if let Some(old) = f.in_force.clone() {
                if let Err(e) = write_local(local_dir.to_path_buf(), old).await {
                    tracing::error!(
                        "state: putting back the local copy {}: {e}",
                        local_dir.display()
                    );
                }
            }
        }
    }
    // Handled either way: a refused version is not tried again every second (the next
    // change is).
    f.applied = state.version;
}
