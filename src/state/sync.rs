//! Following the shared state: a task per gateway that LISTENs for the writers' notifications
//! and, every second, reads the state's version (a notification lost with a connection is
//! caught there). A new version is written to the local copy and applied through the reload
//! path, so the whole configuration is validated as for SIGHUP; one log line per change.

use super::{local, mark_applied, mark_reachable, now_unix, pg, StateError, HEALTH};
use crate::config::StateConfig;
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

/// Before the first configuration is read: the state from the database into the local copy
/// (within a few seconds), so a gateway starts on what the region has now. The database away:
/// it starts on its local copy, and says so.
pub async fn initial(sc: &StateConfig, local_dir: &Path) {
    HEALTH.shared.store(true, Ordering::Relaxed);
    if let Some((v, at)) = local::applied_version(local_dir) {
        mark_applied(v, at);
    }
    let fetched = tokio::time::timeout(Duration::from_secs(5), async {
        let mut c = pg::connect(sc, None).await?;
        pg::migrate(&mut c).await?;
        pg::read(&mut c).await
    })
    .await
    .unwrap_or_else(|_| Err(StateError::Unreachable("no answer within 5 s".into())));
    match fetched {
        Ok(state) => match write_local(local_dir.to_path_buf(), state.clone()).await {
            Ok(_) => {
                mark_reachable(true);
                tracing::info!(
                    version = state.version,
                    establishments = state.establishments.len(),
                    users = state.users.len(),
                    "state: shared state version {} loaded",
                    state.version
                );
            }
            Err(e) => tracing::error!("state: writing the local copy {}: {e}", local_dir.display()),
        },
        Err(e) => {
            mark_reachable(false);
            match local::applied_version(local_dir) {
                Some((v, _)) => tracing::warn!(
                    "state: {e}; starting on the local copy, version {v} ({})",
                    local_dir.display()
                ),
                None => tracing::warn!(
                    "state: {e}; no local copy yet ({}): no establishment until it is reachable",
                    local_dir.display()
                ),
            }
        }
    }
}

async fn write_local(dir: PathBuf, state: pg::State) -> std::io::Result<local::Applied> {
    let at = now_unix();
    let v = state.version;
    let applied = tokio::task::spawn_blocking(move || local::apply(&dir, &state, at))
        .await
        .map_err(std::io::Error::other)??;
    mark_applied(v, at);
    Ok(applied)
}

/// Follows the state until the server stops.
pub async fn run(sc: StateConfig, local_dir: PathBuf, reload: Reload) {
    HEALTH.shared.store(true, Ordering::Relaxed);
    let mut applied = local::applied_version(&local_dir).map_or(-1, |(v, _)| v);
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
            let r = tokio::time::timeout(pg::STATEMENT_TIMEOUT, fetch(&mut client, applied)).await;
            match r {
                Ok(Ok(None)) => {}
                Ok(Ok(Some((state, changes)))) => {
                    if let Err(e) = apply(&local_dir, state, changes, &mut applied, &reload).await {
                        tracing::error!("state: {e}");
                    }
                }
                Ok(Err(e)) => {
                    down(&e.to_string());
                    break;
                }
                Err(_) => {
                    down("no answer within 3 s");
                    break;
                }
            }
            if pruned.elapsed() > Duration::from_secs(600) {
                pruned = std::time::Instant::now();
                if let Ok(n) = pg::sessions_prune(&client, SESSION_MAX_AGE).await {
                    tracing::debug!(sessions = n, "state: expired sessions removed");
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

/// One check: a version other than the one applied, read whole, with its changes.
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

/// Writes a state to the local copy and applies it (a reload when establishments changed).
async fn apply(
    local_dir: &Path,
    state: pg::State,
    changes: Changes,
    applied: &mut i64,
    reload: &Reload,
) -> Result<(), StateError> {
    let done = write_local(local_dir.to_path_buf(), state.clone())
        .await
        .map_err(|e| {
            StateError::Config(format!(
                "writing the local copy {}: {e}",
                local_dir.display()
            ))
        })?;
    let outcome = if done.establishments {
        reload().await
    } else {
        Ok(())
    };
    for (cv, what, by) in changes.iter().filter(|(cv, _, _)| *cv <= state.version) {
        match &outcome {
            Ok(()) => tracing::info!(version = cv, "state: version {cv} applied: {what} by {by}"),
            Err(why) => tracing::error!(version = cv,
                "state: version {cv} ({what} by {by}) NOT applied, the configuration in force stays: {why}"),
        }
    }
    if changes.is_empty() {
        tracing::info!(
            version = state.version,
            "state: version {} applied",
            state.version
        );
    }
    *applied = state.version;
    Ok(())
}
