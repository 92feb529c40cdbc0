//! The audit table in the journal's database (SQLite or PostgreSQL), and the one way to add
//! to it: [`Auditor::begin`] takes the chain (every append is serialized: in SQLite by a
//! write transaction, in PostgreSQL by a transaction lock all gateways share) and proves the
//! entry can be written before the action is done; [`Pending::finish`] writes it with the
//! outcome in the same transaction. An action whose `begin` fails is refused.
//!
//! Own connection, not the journal writer's: the writer batches and may drop events under
//! pressure; an audit entry is written at once, durably (`synchronous = FULL`), or the action
//! does not happen.

use super::chain::{Break, Entry, Verified, Walker, GENESIS};
use crate::config::{JournalConfig, JournalKind};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

/// Serialises appends between gateways sharing a PostgreSQL journal ("passaudt").
const CHAIN_LOCK: i64 = 0x7061_7373_6175_6474;

/// A database that does not answer within this is taken as unable to record: the action is
/// refused.
const WAIT: Duration = Duration::from_secs(10);

const DDL: &str = "
CREATE TABLE IF NOT EXISTS audit (
    seq BIGINT PRIMARY KEY, time BIGINT NOT NULL, via TEXT NOT NULL, user_name TEXT NOT NULL,
    origin TEXT NOT NULL, gateway TEXT NOT NULL, action TEXT NOT NULL, target TEXT NOT NULL,
    establishment TEXT, outcome TEXT NOT NULL, reason TEXT, prev TEXT NOT NULL,
    hash TEXT NOT NULL);
CREATE INDEX IF NOT EXISTS audit_time ON audit (time);
CREATE TABLE IF NOT EXISTS audit_meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
";

const COLUMNS: &str = "seq, time, via, user_name, origin, gateway, action, target, \
                       establishment, outcome, reason, prev, hash";

#[derive(Debug, thiserror::Error)]
pub enum AuditError {
    #[error("the audit trail cannot be written: {0}")]
    Unwritable(String),
    #[error("the audit trail cannot be read: {0}")]
    Unreadable(String),
}

/// Who acts, from where.
#[derive(Debug, Clone)]
pub struct Actor {
    pub via: &'static str,
    pub user: String,
    pub origin: String,
}

impl Actor {
    /// The OS user running this command (the CLI's actions).
    pub fn cli() -> Actor {
        Actor {
            via: "cli",
            user: crate::util::os_user(),
            origin: "local".into(),
        }
    }
}

/// What became of the action.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Ok,
    /// Done, with what was done ("held", "password and code").
    OkWith(String),
    Refused(String),
    Failed(String),
}

impl Outcome {
    fn parts(&self) -> (&'static str, Option<String>) {
        match self {
            Outcome::Ok => ("ok", None),
            Outcome::OkWith(d) => ("ok", Some(bounded(d, 500))),
            Outcome::Refused(r) => ("refused", Some(bounded(r, 500))),
            Outcome::Failed(r) => ("failed", Some(bounded(r, 500))),
        }
    }
}

/// At most `n` characters (an entry never grows with what a user typed).
fn bounded(s: &str, n: usize) -> String {
    s.chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .take(n)
        .collect()
}

enum Conn {
    Sqlite(Option<rusqlite::Connection>),
    Postgres(Option<tokio_postgres::Client>),
}

/// Where the trail is.
#[derive(Clone)]
enum Place {
    Sqlite(PathBuf),
    Postgres(String),
}

/// The audit trail of this gateway (or this command).
pub struct Auditor {
    place: Place,
    gateway: String,
    conn: Arc<tokio::sync::Mutex<Conn>>,
}

/// What [`Auditor::list`] returns.
#[derive(Debug, Clone, Default)]
pub struct ListFilter {
    pub since: Option<i64>,
    pub until: Option<i64>,
    pub user: Option<String>,
    pub action: Option<String>,
    pub establishment: Option<String>,
    pub offset: u64,
    pub limit: u64,
}

/// The trail's head: how many entries, the last one's number and hash.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Head {
    pub count: u64,
    pub seq: i64,
    pub hash: String,
}

impl Auditor {
    /// The trail of the journal's database; with `kind = "none"` the SQLite file `path` holds
    /// it all the same (administrators' actions are recorded whatever the journal).
    pub fn new(cfg: &JournalConfig, spool: &Path) -> Auditor {
        let place = match cfg.kind {
            JournalKind::Postgres => Place::Postgres(cfg.url.clone().unwrap_or_default()),
            JournalKind::Sqlite | JournalKind::None => Place::Sqlite(cfg.sqlite_path(spool)),
        };
        let conn = match place {
            Place::Sqlite(_) => Conn::Sqlite(None),
            Place::Postgres(_) => Conn::Postgres(None),
        };
        Auditor {
            place,
            gateway: cfg.gateway_name(),
            conn: Arc::new(tokio::sync::Mutex::new(conn)),
        }
    }

    /// Where it is, for messages.
    pub fn location(&self) -> String {
        match &self.place {
            Place::Sqlite(p) => p.display().to_string(),
            Place::Postgres(_) => "the journal's PostgreSQL database".into(),
        }
    }

    /// Takes the chain and keeps the place of the entry: the action may go ahead. Refused
    /// (the action must be too) when the database cannot be written.
    pub async fn begin(
        &self,
        who: &Actor,
        action: &str,
        target: &str,
        establishment: Option<&str>,
    ) -> Result<Pending, AuditError> {
        let draft = Entry {
            seq: 0,
            time: 0,
            via: who.via.to_string(),
            user: bounded(&who.user, 200),
            origin: bounded(&who.origin, 200),
            gateway: self.gateway.clone(),
            action: bounded(action, 100),
            target: bounded(if target.is_empty() { "-" } else { target }, 300),
            establishment: establishment.map(|e| bounded(e, 200)),
            outcome: String::new(),
            reason: None,
            prev: String::new(),
            hash: String::new(),
        };
        let mut guard = tokio::time::timeout(WAIT, self.conn.clone().lock_owned())
            .await
            .map_err(|_| AuditError::Unwritable("busy for 10 s".into()))?;
        let head = tokio::time::timeout(WAIT, self.open_chain(&mut guard))
            .await
            .map_err(|_| AuditError::Unwritable("no answer within 10 s".into()))
            .and_then(|r| r);
        match head {
            Ok(head) => Ok(Pending {
                guard: Some(guard),
                draft,
                head,
            }),
            Err(e) => {
                rollback(&mut guard).await;
                Err(e)
            }
        }
    }

    /// Whether an entry could be written now (the chain taken, then let go): for a verb that
    /// must not hold the chain while it runs.
    pub async fn probe(&self, who: &Actor) -> Result<(), AuditError> {
        let p = self.begin(who, "probe", "-", None).await?;
        p.abandon().await;
        Ok(())
    }

    /// Begins and finishes at once: an action refused before anything was done (a login
    /// refused, a form that does not parse).
    pub async fn record(
        &self,
        who: &Actor,
        action: &str,
        target: &str,
        establishment: Option<&str>,
        outcome: Outcome,
    ) -> Result<Entry, AuditError> {
        self.begin(who, action, target, establishment)
            .await?
            .finish(outcome)
            .await
    }

    /// Connects if needed, opens the write transaction and reads the head.
    async fn open_chain(&self, conn: &mut Conn) -> Result<(i64, String), AuditError> {
        let err = |e: String| AuditError::Unwritable(e);
        match conn {
            Conn::Sqlite(slot) => {
                if slot.is_none() {
                    *slot = Some(self.sqlite_open(true).await.map_err(err)?);
                }
                on_sqlite(slot, |c| {
                    c.execute_batch("BEGIN IMMEDIATE")?;
                    sqlite_head(c)
                })
                .await
                .map_err(err)?
                .map_err(|e| err(e.to_string()))
            }
            Conn::Postgres(slot) => {
                if slot.as_ref().is_none_or(|c| c.is_closed()) {
                    *slot = Some(self.pg_open().await.map_err(err)?);
                }
                let c = slot.as_ref().ok_or_else(|| err("no connection".into()))?;
                c.batch_execute("BEGIN")
                    .await
                    .map_err(|e| err(e.to_string()))?;
                c.execute("SELECT pg_advisory_xact_lock($1)", &[&CHAIN_LOCK])
                    .await
                    .map_err(|e| err(e.to_string()))?;
                pg_head(c).await.map_err(|e| err(e.to_string()))
            }
        }
    }

    async fn sqlite_open(&self, create: bool) -> Result<rusqlite::Connection, String> {
        let Place::Sqlite(path) = self.place.clone() else {
            return Err("not SQLite".into());
        };
        blocking(move || {
            if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
                if create {
                    std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
                }
            }
            if !create && !path.exists() {
                return Err(format!("no journal at {}", path.display()));
            }
            let c = crate::journal::sqlite::open(&path, create)
                .map_err(|e| format!("{}: {e}", path.display()))?;
            // Each entry on disk before the action's answer (the journal's own connection
            // keeps NORMAL: its events may lose the last second, the trail may not).
            c.pragma_update(None, "synchronous", "FULL")
                .map_err(|e| e.to_string())?;
            c.busy_timeout(WAIT).map_err(|e| e.to_string())?;
            if create {
                c.execute_batch(DDL)
                    .map_err(|e| format!("{}: creating the audit table: {e}", path.display()))?;
            }
            give_to_directory_owner(&path);
            Ok(c)
        })
        .await?
    }

    async fn pg_open(&self) -> Result<tokio_postgres::Client, String> {
        let Place::Postgres(url) = &self.place else {
            return Err("not PostgreSQL".into());
        };
        let c = crate::journal::postgres::connect(url).await?;
        // Gateways starting together: one creates the tables, the others wait.
        c.batch_execute(&format!(
            "BEGIN; SELECT pg_advisory_xact_lock({CHAIN_LOCK}); SET LOCAL client_min_messages = warning; {DDL} COMMIT;"
        ))
        .await
        .map_err(|e| format!("creating the audit table: {e}"))?;
        Ok(c)
    }

    /// Runs `f` on the connection (opened for reading when needed).
    async fn with_conn<T: Send + 'static>(
        &self,
        sqlite: impl FnOnce(&rusqlite::Connection) -> rusqlite::Result<T> + Send + 'static,
        pg: impl AsyncFnOnce(&tokio_postgres::Client) -> Result<T, tokio_postgres::Error>,
    ) -> Result<T, AuditError> {
        let err = |e: String| AuditError::Unreadable(e);
        let mut guard = tokio::time::timeout(WAIT, self.conn.lock())
            .await
            .map_err(|_| err("busy for 10 s".into()))?;
        match &mut *guard {
            Conn::Sqlite(slot) => {
                if slot.is_none() {
                    *slot = Some(self.sqlite_open(false).await.map_err(err)?);
                }
                on_sqlite(slot, sqlite)
                    .await
                    .map_err(err)?
                    .map_err(|e| err(e.to_string()))
            }
            Conn::Postgres(slot) => {
                if slot.as_ref().is_none_or(|c| c.is_closed()) {
                    *slot = Some(self.pg_open().await.map_err(err)?);
                }
                let c = slot.as_ref().ok_or_else(|| err("no connection".into()))?;
                pg(c).await.map_err(|e| err(e.to_string()))
            }
        }
    }

    /// The head: count, last number and hash.
    pub async fn head(&self) -> Result<Head, AuditError> {
        let h = self
            .with_conn(
                |c| {
                    let (seq, hash) = sqlite_head(c)?;
                    let n: i64 = c.query_row("SELECT count(*) FROM audit", [], |r| r.get(0))?;
                    Ok((n, seq, hash))
                },
                async |c| {
                    let (seq, hash) = pg_head(c).await?;
                    let n: i64 = c.query_one("SELECT count(*) FROM audit", &[]).await?.get(0);
                    Ok((n, seq, hash))
                },
            )
            .await?;
        Ok(Head {
            count: h.0.max(0) as u64,
            seq: h.1,
            hash: h.2,
        })
    }

    /// Walks the whole trail; `Ok(Err(b))` names the first break.
    pub async fn verify(
        &self,
        expect_head: Option<String>,
    ) -> Result<Result<Verified, Break>, AuditError> {
        let exp = expect_head.clone();
        self.with_conn(
            move |c| {
                let mut w = Walker::new(sqlite_boundary(c)?, exp);
                let mut st = c.prepare(&format!("SELECT {COLUMNS} FROM audit ORDER BY seq"))?;
                let mut rows = st.query([])?;
                while let Some(r) = rows.next()? {
                    if let Err(b) = w.step(&sqlite_entry(r)?) {
                        return Ok(Err(b));
                    }
                }
                Ok(w.finish())
            },
            async move |c| {
                use futures::TryStreamExt;
                let mut w = Walker::new(pg_boundary(c).await?, expect_head);
                let none: [&str; 0] = [];
                let stream = c
                    .query_raw(
                        &format!("SELECT {COLUMNS} FROM audit ORDER BY seq"),
                        none.iter(),
                    )
                    .await?;
                futures::pin_mut!(stream);
                while let Some(r) = stream.try_next().await? {
                    if let Err(b) = w.step(&pg_entry(&r)) {
                        return Ok(Err(b));
                    }
                }
                Ok(w.finish())
            },
        )
        .await
    }

    /// The entries the filter selects, oldest first, and how many there are in all.
    pub async fn list(&self, f: &ListFilter) -> Result<(Vec<Entry>, u64), AuditError> {
        let (cond, params) = where_clause(f);
        let limit = f.limit.clamp(1, 100_000) as i64;
        let offset = f.offset.min(i64::MAX as u64) as i64;
        let sql = format!(
            "SELECT {COLUMNS} FROM audit WHERE {cond} ORDER BY seq LIMIT {limit} OFFSET {offset}"
        );
        let count_sql = format!("SELECT count(*) FROM audit WHERE {cond}");
        let (sp, pp) = (params.clone(), params);
        let (sql2, count2) = (sql.clone(), count_sql.clone());
        self.with_conn(
            move |c| {
                let sq = crate::journal::read::sqlite_placeholders(&sql);
                let mut st = c.prepare(&sq)?;
                let mut rows = st.query(rusqlite::params_from_iter(sp.iter()))?;
                let mut out = Vec::new();
                while let Some(r) = rows.next()? {
                    out.push(sqlite_entry(r)?);
                }
                let sc = crate::journal::read::sqlite_placeholders(&count_sql);
                let n: i64 =
                    c.query_row(&sc, rusqlite::params_from_iter(sp.iter()), |r| r.get(0))?;
                Ok((out, n.max(0) as u64))
            },
            async move |c| {
                let refs: Vec<&(dyn tokio_postgres::types::ToSql + Sync)> = pp
                    .iter()
                    .map(|p| p as &(dyn tokio_postgres::types::ToSql + Sync))
                    .collect();
                let rows = c.query(&sql2, &refs).await?;
                let n: i64 = c.query_one(&count2, &refs).await?.get(0);
                Ok((rows.iter().map(pg_entry).collect(), n.max(0) as u64))
            },
        )
        .await
    }

    /// Removes the entries older than `before` (ms), keeping the last removed one's number
    /// and hash as the boundary the rest follows: the chain stays whole.
    pub async fn prune(&self, before: i64) -> Result<u64, AuditError> {
        let who = Actor {
            via: "gateway",
            user: "retention".into(),
            origin: "local".into(),
        };
        // Under the chain's lock, in its transaction; not an entry of its own (the boundary
        // says what went), so the pending draft is dropped (rolled back) after the work.
        let mut p = self
            .begin(&who, "prune", "-", None)
            .await
            .map_err(|e| AuditError::Unwritable(e.to_string()))?;
        let mut guard = p
            .guard
            .take()
            .ok_or_else(|| AuditError::Unwritable("no chain".into()))?;
        let r = match &mut *guard {
            Conn::Sqlite(slot) => on_sqlite(slot, move |c| sqlite_prune(c, before))
                .await
                .map_err(AuditError::Unwritable)?
                .map_err(|e| AuditError::Unwritable(e.to_string())),
            Conn::Postgres(Some(c)) => pg_prune(c, before)
                .await
                .map_err(|e| AuditError::Unwritable(e.to_string())),
            Conn::Postgres(None) => Err(AuditError::Unwritable("no connection".into())),
        };
        if r.is_err() {
            rollback(&mut guard).await;
        }
        r
    }
}

/// The place of one entry, the chain held: [`Pending::finish`] writes it. Dropped without
/// finishing (the handler gone), the transaction is rolled back: nothing was recorded, and
/// the action must not have been done either.
pub struct Pending {
    guard: Option<tokio::sync::OwnedMutexGuard<Conn>>,
    draft: Entry,
    head: (i64, String),
}

impl Pending {
    /// What became known while the action ran: who (a login's user name), what and on what.
    pub fn amend(
        &mut self,
        user: Option<&str>,
        action: Option<&str>,
        target: Option<&str>,
        establishment: Option<&str>,
    ) {
        if let Some(u) = user {
            self.draft.user = bounded(u, 200);
        }
        if let Some(a) = action {
            self.draft.action = bounded(a, 100);
        }
        if let Some(t) = target {
            self.draft.target = bounded(t, 300);
        }
        if let Some(e) = establishment {
            self.draft.establishment = Some(bounded(e, 200));
        }
    }

    /// Writes the entry with the action's outcome; the head is logged (the service log keeps
    /// it out of the database's reach: `audit verify --expect-head`).
    pub async fn finish(mut self, outcome: Outcome) -> Result<Entry, AuditError> {
        let (o, reason) = outcome.parts();
        let mut e = self.draft.clone();
        e.outcome = o.to_string();
        e.reason = reason;
        e.time = crate::util::clock::now_ms() as i64;
        let e = e.seal(self.head.0, &self.head.1);
        let mut guard = self
            .guard
            .take()
            .ok_or_else(|| AuditError::Unwritable("no chain".into()))?;
        let written = tokio::time::timeout(WAIT, insert(&mut guard, e.clone()))
            .await
            .map_err(|_| AuditError::Unwritable("no answer within 10 s".into()))
            .and_then(|r| r);
        if let Err(err) = written {
            rollback(&mut guard).await;
            tracing::error!(target: "passerelle::audit", seq = e.seq, actor = %e.actor(),
                action = %e.action, target = %e.target, outcome = %e.outcome, "{err}");
            return Err(err);
        }
        note_head(|h| {
            h.count += 1;
            h.seq = e.seq;
            h.hash = e.hash.clone();
        });
        tracing::info!(target: "passerelle::audit", seq = e.seq, head = %e.hash,
            actor = %e.actor(), origin = %e.origin, action = %e.action, target = %e.target,
            outcome = %e.outcome, reason = e.reason.as_deref().unwrap_or("-"), "audit entry");
        Ok(e)
    }
}

impl Pending {
    /// Lets the chain go without an entry (the action was not done).
    pub async fn abandon(mut self) {
        if let Some(mut guard) = self.guard.take() {
            rollback(&mut guard).await;
        }
    }
}

impl Drop for Pending {
    fn drop(&mut self) {
        if let Some(mut guard) = self.guard.take() {
            if let Ok(rt) = tokio::runtime::Handle::try_current() {
                rt.spawn(async move { rollback(&mut guard).await });
            }
        }
    }
}

/// The head this process last saw (its appends, and the hourly reading), for `/readyz`.
static LAST_HEAD: std::sync::Mutex<Option<Head>> = std::sync::Mutex::new(None);

fn note_head(f: impl FnOnce(&mut Head)) {
    let mut g = LAST_HEAD.lock().unwrap_or_else(|p| p.into_inner());
    if let Some(h) = g.as_mut() {
        f(h);
    }
}

/// `/readyz`'s line: the head to note for `audit verify --expect-head`.
pub fn readiness() -> Option<String> {
    let g = LAST_HEAD.lock().unwrap_or_else(|p| p.into_inner());
    g.as_ref().map(|h| {
        format!(
            "audit: {} entries, head {} (entry {})\n",
            h.count, h.hash, h.seq
        )
    })
}

/// `serve`'s hourly work on the trail: prune what is older than `retention` (keeping the
/// boundary), then log the head and count (the copy of the head outside the database that
/// `audit verify --expect-head` checks against).
pub async fn hourly(a: Arc<Auditor>, retention: Duration) {
    loop {
        let before = crate::util::clock::now_ms() as i64 - retention.as_millis() as i64;
        match a.prune(before).await {
            Ok(0) => {}
            Ok(n) => {
                tracing::info!(target: "passerelle::audit", pruned = n, "audit: entries past audit_retention removed, the chain's boundary kept")
            }
            Err(e) => tracing::warn!(target: "passerelle::audit", "audit: pruning: {e}"),
        }
        match a.head().await {
            Ok(h) => {
                tracing::info!(target: "passerelle::audit", entries = h.count, head = %h.hash, seq = h.seq, "audit head");
                *LAST_HEAD.lock().unwrap_or_else(|p| p.into_inner()) = Some(h);
            }
            Err(e) => tracing::warn!(target: "passerelle::audit", "audit: reading the head: {e}"),
        }
        tokio::time::sleep(Duration::from_secs(3600)).await;
    }
}

async fn insert(conn: &mut Conn, e: Entry) -> Result<(), AuditError> {
    let err = |e: String| AuditError::Unwritable(e);
    match conn {
        Conn::Sqlite(slot) => on_sqlite(slot, move |c| {
            c.execute(
                        &format!(
                            "INSERT INTO audit ({COLUMNS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13)"
                        ),
                        rusqlite::params![
                            e.seq, e.time, e.via, e.user, e.origin, e.gateway, e.action,
                            e.target, e.establishment, e.outcome, e.reason, e.prev, e.hash
                        ],
                    )?;
            c.execute_batch("COMMIT")
        })
        .await
        .map_err(err)?
        .map_err(|e| err(e.to_string())),
        Conn::Postgres(slot) => {
            let c = slot.as_ref().ok_or_else(|| err("no connection".into()))?;
            c.execute(
                &format!(
                    "INSERT INTO audit ({COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13)"
                ),
                &[
                    &e.seq, &e.time, &e.via, &e.user, &e.origin, &e.gateway, &e.action,
                    &e.target, &e.establishment, &e.outcome, &e.reason, &e.prev, &e.hash,
                ],
            )
            .await
            .map_err(|x| err(x.to_string()))?;
            c.batch_execute("COMMIT")
                .await
                .map_err(|x| err(x.to_string()))
        }
    }
}

/// Ends an open transaction, if any (a connection in doubt is dropped and reopened).
async fn rollback(conn: &mut Conn) {
    match conn {
        Conn::Sqlite(slot) => {
            if let Some(c) = slot.take() {
                if let Ok((c, ok)) = blocking(move || {
                    let ok = c.is_autocommit() || c.execute_batch("ROLLBACK").is_ok();
                    (c, ok)
                })
                .await
                {
                    if ok {
                        *slot = Some(c);
                    }
                }
            }
        }
        Conn::Postgres(slot) => {
            let ok = match slot.as_ref() {
                Some(c) => c.batch_execute("ROLLBACK").await.is_ok(),
                None => true,
            };
            if !ok {
                *slot = None;
            }
        }
    }
}

/// Run as root (`sudo passerelle establishment add`) on a journal beside a spool owned by the
/// service's user: the database and its WAL files we may have created are given to that user,
/// or `serve` could no longer write its own journal.
fn give_to_directory_owner(path: &Path) {
    use std::os::unix::fs::MetadataExt;
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return;
    }
    let Some(dir) = path.parent().and_then(|d| std::fs::metadata(d).ok()) else {
        return;
    };
    if dir.uid() == 0 {
        return;
    }
    let name = path.as_os_str().to_owned();
    for suffix in ["", "-wal", "-shm"] {
        let mut f = name.clone();
        f.push(suffix);
        let f = PathBuf::from(f);
        if std::fs::metadata(&f).is_ok_and(|m| m.uid() == 0) {
            let _ = std::os::unix::fs::chown(&f, Some(dir.uid()), Some(dir.gid()));
        }
    }
}

/// Runs `f` on the SQLite connection on a blocking thread, then puts the connection back: it
/// is moved to the thread and returned with the result (a panic there loses it, and the next
/// call opens another).
async fn on_sqlite<T: Send + 'static>(
    slot: &mut Option<rusqlite::Connection>,
    f: impl FnOnce(&rusqlite::Connection) -> rusqlite::Result<T> + Send + 'static,
) -> Result<rusqlite::Result<T>, String> {
    let c = slot.take().ok_or_else(|| "no connection".to_string())?;
    let (c, r) = blocking(move || {
        let r = f(&c);
        (c, r)
    })
    .await?;
    *slot = Some(c);
    Ok(r)
}

/// File and database work off the runtime's threads.
async fn blocking<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> Result<T, String> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| format!("audit worker: {e}"))
}

fn where_clause(f: &ListFilter) -> (String, Vec<crate::journal::read::Param>) {
    use crate::journal::read::Param;
    let mut cond = vec!["TRUE".to_string()];
    let mut params = Vec::new();
    let mut add = |sql: &str, p: Param| {
        params.push(p);
        cond.push(sql.replace('?', &format!("${}", params.len())));
    };
    if let Some(t) = f.since {
        add("time >= ?", Param::Int(t));
    }
    if let Some(t) = f.until {
        add("time < ?", Param::Int(t));
    }
    if let Some(u) = &f.user {
        add("user_name = ?", Param::Text(u.clone()));
    }
    if let Some(a) = &f.action {
        add("action = ?", Param::Text(a.clone()));
    }
    if let Some(e) = &f.establishment {
        add("establishment = ?", Param::Text(e.clone()));
    }
    (cond.join(" AND "), params)
}

fn sqlite_boundary(c: &rusqlite::Connection) -> rusqlite::Result<Option<(i64, String)>> {
    use rusqlite::OptionalExtension;
    let get = |k: &str| -> rusqlite::Result<Option<String>> {
        c.query_row("SELECT value FROM audit_meta WHERE key = ?1", [k], |r| {
            r.get(0)
        })
        .optional()
    };
    Ok(match (get("boundary_seq")?, get("boundary_hash")?) {
        (Some(s), Some(h)) => s.parse().ok().map(|s| (s, h)),
        _ => None,
    })
}

fn sqlite_head(c: &rusqlite::Connection) -> rusqlite::Result<(i64, String)> {
    use rusqlite::OptionalExtension;
    let last = c
        .query_row(
            "SELECT seq, hash FROM audit ORDER BY seq DESC LIMIT 1",
            [],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .optional()?;
    Ok(match last {
        Some(h) => h,
        None => sqlite_boundary(c)?.unwrap_or((0, GENESIS.to_string())),
    })
}

fn sqlite_entry(r: &rusqlite::Row) -> rusqlite::Result<Entry> {
    Ok(Entry {
        seq: r.get(0)?,
        time: r.get(1)?,
        via: r.get(2)?,
        user: r.get(3)?,
        origin: r.get(4)?,
        gateway: r.get(5)?,
        action: r.get(6)?,
        target: r.get(7)?,
        establishment: r.get(8)?,
        outcome: r.get(9)?,
        reason: r.get(10)?,
        prev: r.get(11)?,
        hash: r.get(12)?,
    })
}

fn sqlite_prune(c: &rusqlite::Connection, before: i64) -> rusqlite::Result<u64> {
    use rusqlite::OptionalExtension;
    let last: Option<(i64, String)> = c
        .query_row(
            "SELECT seq, hash FROM audit WHERE time < ?1 ORDER BY seq DESC LIMIT 1",
            [before],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .optional()?;
    let Some((seq, hash)) = last else {
        c.execute_batch("COMMIT")?;
        return Ok(0);
    };
    // Never the head itself: the chain keeps at least its last entry.
    let head: i64 = c.query_row("SELECT max(seq) FROM audit", [], |r| r.get(0))?;
    let (seq, hash) = if seq >= head {
        match c
            .query_row(
                "SELECT seq, hash FROM audit WHERE seq < ?1 ORDER BY seq DESC LIMIT 1",
                [head],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .optional()?
        {
            Some(x) => x,
            None => {
                c.execute_batch("COMMIT")?;
                return Ok(0);
            }
        }
    } else {
        (seq, hash)
    };
    let n = c.execute("DELETE FROM audit WHERE seq <= ?1", [seq])?;
    c.execute(
        "INSERT OR REPLACE INTO audit_meta (key, value) VALUES ('boundary_seq', ?1), ('boundary_hash', ?2)",
        rusqlite::params![seq.to_string(), hash],
    )?;
    c.execute_batch("COMMIT")?;
    Ok(n as u64)
}

async fn pg_boundary(
    c: &tokio_postgres::Client,
) -> Result<Option<(i64, String)>, tokio_postgres::Error> {
    let rows = c
        .query(
            "SELECT key, value FROM audit_meta WHERE key IN ('boundary_seq', 'boundary_hash')",
            &[],
        )
        .await?;
    let get = |k: &str| {
        rows.iter()
            .find(|r| r.get::<_, String>(0) == k)
            .map(|r| r.get::<_, String>(1))
    };
    Ok(match (get("boundary_seq"), get("boundary_hash")) {
        (Some(s), Some(h)) => s.parse().ok().map(|s| (s, h)),
        _ => None,
    })
}

async fn pg_head(c: &tokio_postgres::Client) -> Result<(i64, String), tokio_postgres::Error> {
    match c
        .query_opt("SELECT seq, hash FROM audit ORDER BY seq DESC LIMIT 1", &[])
        .await?
    {
        Some(r) => Ok((r.get(0), r.get(1))),
        None => Ok(pg_boundary(c).await?.unwrap_or((0, GENESIS.to_string()))),
    }
}

fn pg_entry(r: &tokio_postgres::Row) -> Entry {
    Entry {
        seq: r.get(0),
        time: r.get(1),
        via: r.get(2),
        user: r.get(3),
        origin: r.get(4),
        gateway: r.get(5),
        action: r.get(6),
        target: r.get(7),
        establishment: r.get(8),
        outcome: r.get(9),
        reason: r.get(10),
        prev: r.get(11),
        hash: r.get(12),
    }
}

async fn pg_prune(c: &tokio_postgres::Client, before: i64) -> Result<u64, tokio_postgres::Error> {
    let head: Option<i64> = c.query_one("SELECT max(seq) FROM audit", &[]).await?.get(0);
    let last = c
        .query_opt(
            "SELECT seq, hash FROM audit WHERE time < $1 AND seq < $2 ORDER BY seq DESC LIMIT 1",
            &[&before, &head.unwrap_or(0)],
        )
        .await?;
    let Some(r) = last else {
        c.batch_execute("COMMIT").await?;
        return Ok(0);
    };
    let (seq, hash): (i64, String) = (r.get(0), r.get(1));
    let n = c
        .execute("DELETE FROM audit WHERE seq <= $1", &[&seq])
        .await?;
    c.execute(
        "INSERT INTO audit_meta (key, value) VALUES ('boundary_seq', $1), ('boundary_hash', $2)
         ON CONFLICT (key) DO UPDATE SET value = EXCLUDED.value",
        &[&seq.to_string(), &hash],
    )
    .await?;
    c.batch_execute("COMMIT").await?;
    Ok(n)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn auditor(dir: &Path) -> Auditor {
        let cfg = JournalConfig {
            path: dir.join("journal.sqlite"),
            gateway: Some("gw-test".into()),
            ..JournalConfig::default()
        };
        Auditor::new(&cfg, dir)
    }

    fn who(user: &str) -> Actor {
        Actor {
            via: "console",
            user: user.into(),
            origin: "127.0.0.1".into(),
        }
    }

    #[tokio::test]
    async fn entries_chain_list_and_prune_with_their_boundary() {
        let dir = tempfile::tempdir().unwrap();
        let a = auditor(dir.path());
        let e1 = a
            .record(&who("alice"), "login", "alice", None, Outcome::Ok)
            .await
            .unwrap();
        let mut p = a
            .begin(&who("-"), "POST /login", "/login", None)
            .await
            .unwrap();
        p.amend(Some("bob"), Some("login"), Some("bob"), None);
        let e2 = p
            .finish(Outcome::Refused("wrong password\nand a second line".into()))
            .await
            .unwrap();
        assert_eq!((e1.seq, e2.seq, e2.prev.as_str()), (1, 2, e1.hash.as_str()));
        assert_eq!(
            e2.reason.as_deref(),
            Some("wrong password and a second line")
        );
        // A pending entry dropped (the action not done) writes nothing and lets the chain go.
        drop(
            a.begin(&who("carol"), "hold", "Q1", Some("chu-a"))
                .await
                .unwrap(),
        );
        let e3 = a
            .record(&who("carol"), "hold", "Q1", Some("chu-a"), Outcome::Ok)
            .await
            .unwrap();
        assert_eq!(e3.seq, 3);
        let v = a.verify(None).await.unwrap().unwrap();
        assert_eq!((v.count, v.head.as_str()), (3, e3.hash.as_str()));
        let f = ListFilter {
            user: Some("bob".into()),
            limit: 10,
            ..ListFilter::default()
        };
        let (l, n) = a.list(&f).await.unwrap();
        assert_eq!(
            (n, l[0].action.as_str(), l[0].outcome.as_str()),
            (1, "login", "refused")
        );
        let f = ListFilter {
            establishment: Some("chu-a".into()),
            limit: 10,
            ..ListFilter::default()
        };
        assert_eq!(a.list(&f).await.unwrap().0, vec![e3.clone()]);
        // Pruning everything but the head keeps the chain verifiable from its boundary.
        assert_eq!(a.prune(e3.time + 1).await.unwrap(), 2);
        let v = a.verify(Some(e1.hash.clone())).await.unwrap();
        assert!(matches!(v, Err(Break::HeadMissing { .. })), "{v:?}");
        let v = a.verify(Some(e2.hash.clone())).await.unwrap().unwrap();
        assert_eq!((v.count, v.head_seq), (1, 3));
        let e4 = a
            .record(&who("alice"), "logout", "alice", None, Outcome::Ok)
            .await
            .unwrap();
        assert_eq!((e4.seq, e4.prev.as_str()), (4, e3.hash.as_str()));
        assert_eq!(a.head().await.unwrap().count, 2);
    }
}
