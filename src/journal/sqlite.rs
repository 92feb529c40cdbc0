//! The embedded journal: one SQLite file beside the spool (WAL, so `track` and `stats` read
//! while the gateway writes). `synchronous = NORMAL`: a commit is not fsync'd; a power cut
//! may lose the last batches, which the issue allows (the queue is the authority).

use super::plan::{MsgStatus, Plan};
use super::schema;
use super::writer::{Backend, WriteError};
use rusqlite::{params, Connection, ErrorCode, OpenFlags, OptionalExtension};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Opens (creating it when `create`) with the settings every connection uses.
pub fn open(path: &Path, create: bool) -> rusqlite::Result<Connection> {
    let mut flags = OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX;
    if create {
        flags |= OpenFlags::SQLITE_OPEN_CREATE;
    }
    let conn = Connection::open_with_flags(path, flags)?;
    conn.busy_timeout(Duration::from_secs(5))?;
    conn.pragma_update(None, "journal_mode", "WAL")?;
    conn.pragma_update(None, "synchronous", "NORMAL")?;
    // 64 MiB of page cache (the default 2 MiB spilled each batch's dirty index pages to the
    // WAL several times over: 5 page writes per event at 10,000 events per batch).
    conn.pragma_update(None, "cache_size", -65536)?;
    // Checkpoint every 16,384 WAL pages (64 MiB) rather than SQLite's 1,000: index pages
    // written by several batches in a row are copied into the database once instead of once
    // per batch (-20 % of the writer's CPU at 3,000 msg/s, `journal_fill --cost`).
    conn.pragma_update(None, "wal_autocheckpoint", 16384)?;
    conn.set_prepared_statement_cache_capacity(32);
    Ok(conn)
}

/// Creates the tables if needed, upgrades an older journal and checks the schema version
/// (one transaction: an interrupted upgrade is done again whole).
pub fn migrate(conn: &Connection) -> Result<(), String> {
    let run = || -> Result<(), String> {
        conn.execute_batch(&schema::ddl(false))
            .map_err(|e| format!("creating the tables: {e}"))?;
        let v: Option<String> = conn
            .query_row(
                "SELECT value FROM journal_meta WHERE key = 'schema_version'",
                [],
                |r| r.get(0),
            )
            .optional()
            .map_err(|e| e.to_string())?;
        let m = schema::check_version(v.as_deref())?;
        if m == schema::Migration::FromV1 {
            tracing::info!("journal: upgrading the schema from version 1 (day-led lookups)");
            conn.execute_batch(schema::UPGRADE_FROM_1)
                .map_err(|e| format!("upgrading from version 1: {e}"))?;
        }
        conn.execute_batch(schema::DROPPED)
            .map_err(|e| format!("dropping old indexes: {e}"))?;
        conn.execute_batch(schema::INDEXES)
            .map_err(|e| format!("creating the indexes: {e}"))?;
        if m != schema::Migration::None {
            conn.execute(
                "INSERT OR REPLACE INTO journal_meta (key, value) VALUES ('schema_version', ?1)",
                [schema::VERSION.to_string()],
            )
            .map_err(|e| e.to_string())?;
        }
        Ok(())
    };
    // Deferred: an up-to-date journal is only read (a reader may not be allowed to write).
    conn.execute_batch("BEGIN")
        .map_err(|e| format!("opening the schema transaction: {e}"))?;
    match run() {
        Ok(()) => conn
            .execute_batch("COMMIT")
            .map_err(|e| format!("committing the schema: {e}")),
        Err(e) => {
            let _ = conn.execute_batch("ROLLBACK");
            Err(e)
        }
    }
}

/// The id of a gateway name, registered on first use.
pub fn gateway_id(conn: &Connection, name: &str) -> rusqlite::Result<i64> {
    conn.execute("INSERT OR IGNORE INTO gateways (name) VALUES (?1)", [name])?;
    conn.query_row("SELECT id FROM gateways WHERE name = ?1", [name], |r| {
        r.get(0)
    })
}

fn classify(e: rusqlite::Error) -> WriteError {
    let retryable = match &e {
        rusqlite::Error::SqliteFailure(f, _) => matches!(
            f.code,
            ErrorCode::DatabaseBusy
                | ErrorCode::DatabaseLocked
                | ErrorCode::DiskFull
                | ErrorCode::SystemIoFailure
                | ErrorCode::CannotOpen
                | ErrorCode::ReadOnly
                | ErrorCode::OutOfMemory
                | ErrorCode::FileLockingProtocolFailed
                | ErrorCode::DatabaseCorrupt
                | ErrorCode::NotADatabase
        ),
        _ => false,
    };
    WriteError {
        message: e.to_string(),
        retryable,
    }
}

pub struct SqliteWriter {
    path: PathBuf,
    gateway: String,
    conn: Option<(Connection, i64)>,
}

impl SqliteWriter {
    pub fn new(path: PathBuf, gateway: String) -> SqliteWriter {
        SqliteWriter {
            path,
            gateway,
            conn: None,
        }
    }

    fn connect(&mut self) -> Result<(), WriteError> {
        if self.conn.is_some() {
            return Ok(());
        }
        let at = |e: String| WriteError {
            message: format!("{}: {e}", self.path.display()),
            retryable: true,
        };
        let conn = open(&self.path, true).map_err(|e| at(e.to_string()))?;
        migrate(&conn).map_err(at)?;
        let gw = gateway_id(&conn, &self.gateway).map_err(|e| at(e.to_string()))?;
        self.conn = Some((conn, gw));
        Ok(())
    }

    /// Runs `f` on the connection; a failure that may be the connection's drops it, so the
    /// next try reopens the file (after a disk-full or a deleted file).
    fn with<T>(
        &mut self,
        f: impl FnOnce(&mut Connection, i64) -> rusqlite::Result<T>,
    ) -> Result<T, WriteError> {
        self.connect()?;
        let Some((conn, gw)) = self.conn.as_mut() else {
            return Err(WriteError {
                message: "not connected".into(),
                retryable: true,
            });
        };
        f(conn, *gw).map_err(|e| {
            let e = classify(e);
            if e.retryable {
                self.conn = None;
            }
            WriteError {
                message: format!("{}: {}", self.path.display(), e.message),
                ..e
            }
        })
    }
}

/// The insert shared by every event: columns the event leaves empty come from its message
/// and recipient rows (see [`super::plan::EventRow`]).
const INSERT_EVENT: &str = "
INSERT INTO events (qid, gw, time, kind, rcpt, origin, destination, establishment, mailbox,
                    peer, reason, tls_failure, bal_type, details)
SELECT ?1, ?2, ?3, ?4, ?5, COALESCE(?6, m.origin), COALESCE(?7, r.destination),
       COALESCE(?8, m.establishment),
       COALESCE(?9, CASE COALESCE(?7, r.destination)
                    WHEN 'mailbox' THEN ?5
                    WHEN 'trust-space' THEN NULLIF(m.sender, '') END),
       ?10, ?11, ?12, COALESCE(?13, r.bal_type), ?14
FROM (SELECT 1) AS one
LEFT JOIN messages m ON m.qid = ?1 AND m.gw = ?2
LEFT JOIN recipients r ON r.qid = ?1 AND r.gw = ?2 AND r.idx = ?15";

/// The insert of an event whose columns the plan filled (its message is in the batch).
const INSERT_RESOLVED_EVENT: &str = "
INSERT INTO events (qid, gw, time, kind, rcpt, origin, destination, establishment, mailbox,
                    peer, reason, tls_failure, bal_type, details)
VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14)";

/// Stores one batch in one transaction.
pub fn write_plan(conn: &mut Connection, gw: i64, p: &Plan) -> rusqlite::Result<()> {
    let tx = conn.transaction()?;
    {
        let mut st = tx.prepare_cached(
            "INSERT OR IGNORE INTO messages (qid, gw, queued, time, updated, status, origin,
                listener, establishment, client_ip, client_dn, tls, sender, message_id, size,
                nrcpt, day)
             VALUES (?1, ?2, ?3, ?4, ?16, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?17)",
        )?;
        for m in &p.messages {
            st.execute(params![
                m.qid,
                gw,
                m.queued,
                m.time,
                m.status,
                m.origin,
                m.listener,
                m.establishment,
                m.client_ip,
                m.client_dn,
                m.tls,
                m.sender,
                m.message_id,
                m.size,
                m.nrcpt,
                m.updated,
                m.day
            ])?;
        }
        let mut st = tx.prepare_cached(
            "INSERT OR IGNORE INTO recipients (qid, gw, idx, address, route, transport,
                bal_type, destination, status, day)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)",
        )?;
        for r in &p.recipients {
            st.execute(params![
                r.qid,
                gw,
                r.idx,
                r.address,
                r.route,
                r.transport,
                r.bal_type,
                r.destination,
                r.status,
                r.day
            ])?;
        }
        let mut join = tx.prepare_cached(INSERT_EVENT)?;
        let mut plain = tx.prepare_cached(INSERT_RESOLVED_EVENT)?;
        for e in &p.events {
            let v: [&dyn rusqlite::ToSql; 15] = [
                &e.qid,
                &gw,
                &e.time,
                &e.kind,
                &e.rcpt,
                &e.origin,
                &e.destination,
                &e.establishment,
                &e.mailbox,
                &e.peer,
                &e.reason,
                &e.tls_failure,
                &e.bal_type,
                &e.details,
                &e.idx,
            ];
            if e.resolved {
                plain.execute(&v[..14])?;
            } else {
                join.execute(&v[..])?;
            }
        }
        let mut st = tx.prepare_cached(
            "UPDATE recipients SET status = ?3 WHERE qid = ?1 AND gw = ?4 AND idx = ?2",
        )?;
        for (qid, idx, status) in &p.rcpt_status {
            st.execute(params![qid, idx, status, gw])?;
        }
        let recompute = format!(
            "UPDATE messages AS m SET updated = ?2,
                status = COALESCE({}, m.status)
             WHERE m.qid = ?1 AND m.gw = ?3",
            schema::STATUS_FROM_RECIPIENTS
        );
        let mut recompute = tx.prepare_cached(&recompute)?;
        let mut set = tx.prepare_cached(
            "UPDATE messages SET status = ?2, updated = ?3 WHERE qid = ?1 AND gw = ?4",
        )?;
        for (qid, d, t) in &p.msg_status {
            match d {
                MsgStatus::Recompute => recompute.execute(params![qid, t, gw])?,
                MsgStatus::Set(s) => set.execute(params![qid, s, t, gw])?,
            };
        }
    }
    let mut matched = std::collections::HashSet::new();
    for r in &p.receipts {
        let (sql, key) = match &r.queue_id {
            Some(q) => (schema::insert_receipt_by_qid('?'), q),
            None => (schema::insert_receipt(&r.days, '?'), &r.message_id),
        };
        let mut st = tx.prepare_cached(&sql)?;
        if st.execute(params![r.time, r.kind, r.rcpt, r.details, key])? > 0 {
            matched.insert(r.report);
        }
    }
    tx.commit()?;
    schema::count_receipts(&p.receipts, &matched);
    Ok(())
}

/// Deletes up to `limit` events and messages (with their recipients) older than `before`.
pub fn prune(conn: &mut Connection, before: i64, limit: i64) -> rusqlite::Result<u64> {
    let tx = conn.transaction()?;
    let mut n = tx.execute(
        "DELETE FROM events WHERE id IN
            (SELECT id FROM events WHERE time < ?1 ORDER BY time LIMIT ?2)",
        params![before, limit],
    )?;
    // By `time` (indexed; `updated` is never before it), keeping what changed since.
    let old = "SELECT qid, gw FROM messages WHERE time < ?1 AND updated < ?1
               ORDER BY time LIMIT ?2";
    n += tx.execute(
        &format!("DELETE FROM recipients WHERE (qid, gw) IN ({old})"),
        params![before, limit],
    )?;
    n += tx.execute(
        &format!("DELETE FROM messages WHERE (qid, gw) IN ({old})"),
        params![before, limit],
    )?;
    tx.commit()?;
    // Keeps the planner's statistics current (cheap when nothing changed much).
    conn.execute_batch("PRAGMA optimize=0x10002")?;
    Ok(n as u64)
}

impl Backend for SqliteWriter {
    fn describe(&self) -> String {
        format!("SQLite {}", self.path.display())
    }

    fn write(&mut self, p: &Plan) -> Result<(), WriteError> {
        self.with(|conn, gw| write_plan(conn, gw, p))
    }

    fn prune(&mut self, before: i64, limit: i64) -> Result<u64, WriteError> {
        self.with(|conn, _| prune(conn, before, limit))
    }
}
