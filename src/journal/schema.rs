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
//!
//! The lookups by address and Message-ID are indexed by **day first** (`day` = UTC day
//! number of the message): a key such as an address lands anywhere in its index, so on a
//! journal of a year every insert read and wrote a page of its own (three per message: the
//! writer's cost grew with the journal, 0.1-0.16 ms of CPU per message at 3 million events).
//! Prefixed by the day, today's inserts stay in today's small part of each index, which stays
//! in cache; a lookup probes one range per day of the period asked (one per day retained
//! when none is), see [`days`].

/// Indexes earlier versions made and this one no longer keeps (dropped when the journal is
/// opened for writing): `messages_updated` cost a B-tree update at every status change
/// (pruning finds old messages by `time` instead); the three lookups not led by the day
/// (version 1) are replaced by those of [`INDEXES`].
pub const DROPPED: &str = "
DROP INDEX IF EXISTS messages_updated;
DROP INDEX IF EXISTS messages_sender;
DROP INDEX IF EXISTS messages_message_id;
DROP INDEX IF EXISTS recipients_address;
";

/// Bumped when the tables change; a journal written by a newer passerelle is refused.
/// 2: `day` on messages and recipients, the lookups led by it.
pub const VERSION: i64 = 2;

/// Milliseconds in a `day` (UTC days since 1970-01-01).
pub const DAY_MS: i64 = 86_400_000;

/// The `day` of a Unix millisecond time.
pub fn day(time_ms: i64) -> i64 {
    time_ms.div_euclid(DAY_MS)
}

/// The days a lookup probes for a message time range (`since` inclusive, `until` exclusive,
/// Unix ms), with one day of margin each side: a recipient's row takes the day of its
/// message's row, which a lost acceptance makes the first attempt's.
pub fn days(since: i64, until: i64) -> std::ops::RangeInclusive<i64> {
    day(since) - 1..=day(until.max(since)) + 1
}

/// From version 1: the `day` columns, filled from the rows' times (once, when a version 2
/// writer first opens the journal; the new indexes are built after).
pub const UPGRADE_FROM_1: &str = "
ALTER TABLE messages ADD COLUMN day BIGINT;
ALTER TABLE recipients ADD COLUMN day BIGINT;
UPDATE messages SET day = time / 86400000;
UPDATE recipients SET day = (SELECT m.day FROM messages m
                             WHERE m.qid = recipients.qid AND m.gw = recipients.gw);
";

/// The indexes (created after the tables and any upgrade).
pub const INDEXES: &str = "
CREATE INDEX IF NOT EXISTS messages_time ON messages (time);
CREATE INDEX IF NOT EXISTS messages_day_sender ON messages (day, sender, time);
CREATE INDEX IF NOT EXISTS messages_day_message_id ON messages (day, message_id);
CREATE INDEX IF NOT EXISTS messages_establishment ON messages (establishment, time);
CREATE INDEX IF NOT EXISTS messages_status ON messages (status, time);
CREATE INDEX IF NOT EXISTS recipients_day_address ON recipients (day, address);
CREATE INDEX IF NOT EXISTS events_message ON events (qid, gw);
CREATE INDEX IF NOT EXISTS events_time ON events (time);
";

/// What to do for the schema version found in `journal_meta`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Migration {
    /// A new journal: record [`VERSION`].
    New,
    /// Version 1: run [`UPGRADE_FROM_1`], then record [`VERSION`].
    FromV1,
    /// Up to date.
    None,
}

/// The tables, with `{serial}` (gateway ids), `{identity}` (event ids) and `{norowid}` left
/// to each backend (see [`ddl`]).
const TABLES: &str = "
CREATE TABLE IF NOT EXISTS journal_meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS gateways (id {serial} PRIMARY KEY, name TEXT NOT NULL UNIQUE);
CREATE TABLE IF NOT EXISTS messages (
    qid TEXT NOT NULL, gw INTEGER NOT NULL, queued BOOLEAN NOT NULL,
    time BIGINT NOT NULL, updated BIGINT NOT NULL, status TEXT NOT NULL,
    origin TEXT, listener TEXT, establishment TEXT, client_ip TEXT, client_dn TEXT, tls TEXT,
    sender TEXT, message_id TEXT, size BIGINT, nrcpt INTEGER NOT NULL, day BIGINT,
    PRIMARY KEY (qid, gw)) {norowid};
CREATE TABLE IF NOT EXISTS recipients (
    qid TEXT NOT NULL, gw INTEGER NOT NULL, idx INTEGER NOT NULL, address TEXT NOT NULL,
    route TEXT, transport TEXT, bal_type TEXT, destination TEXT, status TEXT NOT NULL,
    day BIGINT,
    PRIMARY KEY (qid, gw, idx)) {norowid};
CREATE TABLE IF NOT EXISTS events (
    id {identity} PRIMARY KEY, qid TEXT NOT NULL, gw INTEGER NOT NULL,
    time BIGINT NOT NULL, kind TEXT NOT NULL, rcpt TEXT, origin TEXT, destination TEXT,
    establishment TEXT, mailbox TEXT, peer TEXT, reason TEXT, tls_failure TEXT, bal_type TEXT,
    details TEXT NOT NULL);
";

/// The tables (not the indexes: see [`INDEXES`]) for SQLite (`INTEGER PRIMARY KEY` is the row id; the keyed tables are stored
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

/// What to do with the schema version found in `journal_meta`; an error when the journal is
/// newer than this program.
pub fn check_version(found: Option<&str>) -> Result<Migration, String> {
    match found.and_then(|v| v.parse::<i64>().ok()) {
        None => Ok(Migration::New),
        Some(v) if v > VERSION => Err(format!(
            "journal schema version {v} is newer than this passerelle's ({VERSION})"
        )),
        Some(1) => Ok(Migration::FromV1),
        Some(_) => Ok(Migration::None),
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

/// A receipt joined to the message it answers: the most recent queued message with that
/// Message-ID among `days` (one probe each of the (day, message_id) index), which the event
/// row takes its key, origin and establishment from (so only its owner sees it). `{days}`:
/// the integers of [`super::plan::ReceiptRow::days`]; `{p}`: the placeholder prefix (`?` for
/// SQLite, `$` for PostgreSQL). Parameters: time, kind, rcpt, details, Message-ID.
pub fn insert_receipt(days: &[i64], p: char) -> String {
    let days: Vec<String> = days.iter().map(i64::to_string).collect();
    format!(
        "INSERT INTO events (qid, gw, time, kind, rcpt, origin, establishment, details)
         SELECT m.qid, m.gw, {p}1, {p}2, {p}3, m.origin, m.establishment, {p}4
         FROM messages m WHERE m.day IN ({}) AND m.message_id = {p}5 AND m.queued
         ORDER BY m.time DESC LIMIT 1",
        days.join(", ")
    )
}

/// A receipt joined to the message our ENVID names (its queue id, parameter 5; the most
/// recent of that id when several gateways share the journal). Parameters as
/// [`insert_receipt`].
pub fn insert_receipt_by_qid(p: char) -> String {
    format!(
        "INSERT INTO events (qid, gw, time, kind, rcpt, origin, establishment, details)
         SELECT m.qid, m.gw, {p}1, {p}2, {p}3, m.origin, m.establishment, {p}4
         FROM messages m WHERE m.qid = {p}5 AND m.queued
         ORDER BY m.time DESC LIMIT 1"
    )
}

/// Counts the receipts seen, matched to a message or not (`passerelle_receipts_total`).
pub fn count_receipts(
    rows: &[super::plan::ReceiptRow],
    matched: &std::collections::HashSet<usize>,
) {
    let mut seen = std::collections::HashSet::new();
    for r in rows {
        if seen.insert(r.report) {
            let m = if matched.contains(&r.report) {
                "true"
            } else {
                "false"
            };
            crate::metrics::inc(
                "passerelle_receipts_total",
                "delivery (dsn) and read (mdn) notifications seen, joined to their message or not",
                &[("type", r.kind_of_report), ("matched", m)],
            );
        }
    }
}
