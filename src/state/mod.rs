//! The state an operator edits: establishments, console users, console sessions. With
//! `[state] kind = "files"` they are `establishments_dir` and `users_file` (one gateway, as
//! before); with `kind = "postgres"` they live in one database shared by every gateway of a
//! region (`pg`), each gateway following it (`sync`: LISTEN/NOTIFY and a version check every
//! second) into a local copy under its spool (`local`), which the configuration reads as it
//! reads files. PostgreSQL is the distributed engine; there is no replication of our own.
//!
//! Must not import: intake, queue, delivery, console, cli, admin, server, runtime.

pub mod local;
pub mod pg;
pub mod sync;
pub mod users_file;

use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::Arc;

#[derive(Debug, thiserror::Error)]
pub enum StateError {
    /// The database cannot be reached or failed: nothing was changed.
    #[error("the shared state's database is unreachable: {0}")]
    Unreachable(String),
    /// `[state]` itself is wrong (the URL, the password file, the schema's version).
    #[error("{0}")]
    Config(String),
    /// The change would leave a configuration that does not validate, or names what is not
    /// there: nothing was changed.
    #[error("{}", .0.join("\n"))]
    Refused(Vec<String>),
    /// Someone else changed it since the writer looked.
    #[error("{0}")]
    Conflict(String),
}

/// Whether the gateway can reach the shared state, and what it applied: `/readyz`, the
/// console's read-only banner and `state status` read it. Set by [`sync`].
struct Health {
    shared: AtomicBool,
    reachable: AtomicBool,
    /// Unix seconds: since when the database is unreachable.
    since: AtomicI64,
    version: AtomicI64,
    applied_at: AtomicI64,
}

static HEALTH: Health = Health {
    shared: AtomicBool::new(false),
    reachable: AtomicBool::new(false),
    since: AtomicI64::new(0),
    version: AtomicI64::new(-1),
    applied_at: AtomicI64::new(0),
};

fn now_unix() -> i64 {
    crate::util::clock::now_unix()
}

fn mark_reachable(yes: bool) {
    let was = HEALTH.reachable.swap(yes, Ordering::Relaxed);
    if !yes && (was || HEALTH.since.load(Ordering::Relaxed) == 0) {
        HEALTH.since.store(now_unix(), Ordering::Relaxed);
    }
}

fn mark_applied(version: i64, at: i64) {
    HEALTH.version.store(version, Ordering::Relaxed);
    HEALTH.applied_at.store(at, Ordering::Relaxed);
}

/// With a shared state whose database is unreachable: since when (Unix seconds). The console
/// is then read-only.
pub fn unreachable_since() -> Option<i64> {
    (HEALTH.shared.load(Ordering::Relaxed) && !HEALTH.reachable.load(Ordering::Relaxed))
        .then(|| HEALTH.since.load(Ordering::Relaxed))
}

/// The `/readyz` line of a shared state (none with files). The gateway stays ready when the
/// database is away: mail flows on the state last applied.
pub fn readiness(format_time: impl Fn(i64) -> String) -> Option<String> {
    if !HEALTH.shared.load(Ordering::Relaxed) {
        return None;
    }
    let v = HEALTH.version.load(Ordering::Relaxed);
    let at = format_time(HEALTH.applied_at.load(Ordering::Relaxed) * 1000);
    Some(match unreachable_since() {
        Some(since) => format!(
            "state: database unreachable since {}; version {v} (applied {at}) stays in force, changes are refused\n",
            format_time(since * 1000)
        ),
        None => format!("state: shared (postgres), version {v} applied {at}\n"),
    })
}

/// Waits, up to `deadline`, until this gateway has applied `version` (a writer's redirect
/// then shows what it wrote). False at the deadline.
pub async fn wait_applied(version: i64, deadline: std::time::Duration) -> bool {
    let end = tokio::time::Instant::now() + deadline;
    while HEALTH.version.load(Ordering::Relaxed) < version {
        if tokio::time::Instant::now() >= end {
            return false;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    true
}

/// The database as the console uses it (sessions, and its writes): one connection, made again
/// when it was lost, each statement bounded by [`pg::STATEMENT_TIMEOUT`].
pub struct Shared {
    config: crate::config::StateConfig,
    client: tokio::sync::Mutex<Option<Arc<tokio_postgres::Client>>>,
}

impl Shared {
    pub fn new(config: crate::config::StateConfig) -> Arc<Shared> {
        Arc::new(Shared {
            config,
            client: tokio::sync::Mutex::new(None),
        })
    }

    /// The shared connection (sessions: one statement each).
    pub async fn client(&self) -> Result<Arc<tokio_postgres::Client>, StateError> {
        let mut c = self.client.lock().await;
        if let Some(client) = c.as_ref().filter(|c| !c.is_closed()) {
            return Ok(client.clone());
        }
        // Not through `bounded`, which takes this lock to forget a lost connection.
        let client = match tokio::time::timeout(
            pg::STATEMENT_TIMEOUT,
            pg::connect(&self.config, None),
        )
        .await
        {
            Ok(c) => Arc::new(c?),
            Err(_) => return Err(StateError::Unreachable("no answer to connect".into())),
        };
        *c = Some(client.clone());
        Ok(client)
    }

    /// A connection of its own (a write: one transaction).
    pub async fn own_client(&self) -> Result<tokio_postgres::Client, StateError> {
        let mut c = self.bounded(pg::connect(&self.config, None)).await?;
        self.bounded(pg::migrate(&mut c)).await?;
        Ok(c)
    }

    /// `f` within [`pg::STATEMENT_TIMEOUT`]; a lost connection is forgotten.
    pub async fn bounded<T>(
        &self,
        f: impl std::future::Future<Output = Result<T, StateError>>,
    ) -> Result<T, StateError> {
        self.bounded_for(pg::STATEMENT_TIMEOUT, f).await
    }

    /// `f` within `limit` (a write: connecting, waiting for the other writers, checking the
    /// whole configuration); a lost connection is forgotten.
    pub async fn bounded_for<T>(
        &self,
        limit: std::time::Duration,
        f: impl std::future::Future<Output = Result<T, StateError>>,
    ) -> Result<T, StateError> {
        let out = match tokio::time::timeout(limit, f).await {
            Ok(r) => r,
            Err(_) => Err(StateError::Unreachable(format!(
                "no answer within {} s",
                limit.as_secs()
            ))),
        };
        if let Err(StateError::Unreachable(_)) = &out {
            *self.client.lock().await = None;
        }
        out
    }
}

/// Who made a change, as `state_changes` records it: the console user or the OS user, and the
/// gateway.
pub fn author(who: &str, gateway: &str) -> String {
    format!("{who} on {gateway}")
}
