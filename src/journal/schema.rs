//! The journal's tables, for SQLite and PostgreSQL, and the SQL both writers share.
//!
//! - `messages`: one row per accepted message (key: queue id + gateway) and one per refusal
//!   (a journal reference in the queue id space, `queued` false); its `status` follows the
//!   recipients (queued, deferred, delivered, bounced, partial) or an administrator (held,
//!   deleted).
//! - `recipients`: one row per envelope recipient (or refused recipient), for `track --to`.
//! - `events`: the timelines, one row per event, with the columns `stats` groups by
//!   (origin, destination, establishment, mailbox, peer, reasons, BAL type) filled at write
//!   time so that the indicators are one scan of a time range, with no join.
//!
//! Times are Unix milliseconds (BIGINT). Queue ids are per host, hence the `gw` (gateway)
//! column in every key: several gateways can share one PostgreSQL journal.

/// Bumped when the tables change; a journal written by a newer passerelle is refused.
pub const VERSION: i64 = 1;

/// The tables, with `{serial}` (gateway ids), `{identity}` (event ids) and `{norowid}` left
/// to each backend (see [`ddl`]).
const TABLES: &str = "
CREATE TABLE IF NOT EXISTS journal_meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS gateways (id {serial} PRIMARY KEY, name TEXT NOT NULL UNIQUE);
CREATE TABLE IF NOT EXISTS messages (
    qid TEXT NOT NULL, gw INTEGER NOT NULL, queued BOOLEAN NOT NULL,
    time BIGINT NOT NULL, updated BIGINT NOT NULL, status TEXT NOT NULL,
    origin TEXT, listener TEXT, establishment TEXT, client_ip TEXT, client_dn TEXT, tls TEXT,
    sender TEXT, message_id TEXT, size BIGINT, nrcpt INTEGER NOT NULL,
    PRIMARY KEY (qid, gw)) {norowid};
CREATE INDEX IF NOT EXISTS messages_time ON messages (time);
CREATE INDEX IF NOT EXISTS messages_updated ON messages (updated);
CREATE INDEX IF NOT EXISTS messages_sender ON messages (sender, time);
CREATE INDEX IF NOT EXISTS messages_message_id ON messages (message_id);
CREATE INDEX IF NOT EXISTS messages_establishment ON messages (establishment, time);
CREATE INDEX IF NOT EXISTS messages_status ON messages (status, time);
CREATE TABLE IF NOT EXISTS recipients (
    qid TEXT NOT NULL, gw INTEGER NOT NULL, idx INTEGER NOT NULL, address TEXT NOT NULL,
    route TEXT, transport TEXT, bal_type TEXT, destination TEXT, status TEXT NOT NULL,
    PRIMARY KEY (qid, gw, idx)) {norowid};
CREATE INDEX IF NOT EXISTS recipients_address ON recipients (address);
CREATE TABLE IF NOT EXISTS events (
    id {identity} PRIMARY KEY, qid TEXT NOT NULL, gw INTEGER NOT NULL,
    time BIGINT NOT NULL, kind TEXT NOT NULL, rcpt TEXT, origin TEXT, destination TEXT,
    establishment TEXT, mailbox TEXT, peer TEXT, reason TEXT, tls_failure TEXT, bal_type TEXT,
    details TEXT NOT NULL);
CREATE INDEX IF NOT EXISTS events_message ON events (qid, gw);
CREATE INDEX IF NOT EXISTS events_time ON events (time);
";

/// The schema for SQLite (`INTEGER PRIMARY KEY` is the row id; the keyed tables are stored
/// in their key's order, `WITHOUT ROWID`) or PostgreSQL.
pub fn ddl(postgres: bool) -> String {
    let (serial, identity, norowid) = if postgres {
        ("SERIAL", "BIGINT GENERATED ALWAYS AS IDENTITY", "")
    } else {
        ("INTEGER", "INTEGER", "WITHOUT ROWID")
    };
    TABLES
        .replace("{serial}", serial)
        .replace("{identity}", identity)
        .replace("{norowid}", norowid)
}

/// What to do with the schema version found in `journal_meta`: `Ok(true)` when it must be
/// written (a new journal), an error when the journal is newer than this program.
pub fn check_version(found: Option<&str>) -> Result<bool, String> {
    match found.and_then(|v| v.parse::<i64>().ok()) {
        None => Ok(true),
        Some(v) if v > VERSION => Err(format!(
            "journal schema version {v} is newer than this passerelle's ({VERSION})"
        )),
        Some(_) => Ok(false),
    }
}

/// A message's status from its recipients' (the message row aliased `m`): any still to
/// deliver -> deferred (after an attempt) or queued; all alike -> that; a mix of delivered and
/// bounced -> partial. NULL when the message has no recipient rows.
pub const STATUS_FROM_RECIPIENTS: &str = "(
    SELECT CASE
        WHEN SUM(CASE WHEN r.status = 'deferred' THEN 1 ELSE 0 END) > 0 THEN 'deferred'
        WHEN SUM(CASE WHEN r.status = 'queued' THEN 1 ELSE 0 END) > 0 THEN 'queued'
        WHEN MIN(r.status) = MAX(r.status) THEN MIN(r.status)
        ELSE 'partial' END
    FROM recipients r WHERE r.qid = m.qid AND r.gw = m.gw)";
