//! The read side: `track` (messages and their timelines; `stats`, the activity indicators,
//! in stats.rs), the same SQL on SQLite and PostgreSQL. Used by the CLI, and by the console.

use super::plan::{MessageRow, RecipientRow};
use super::{JournalConfig, JournalError, JournalKind};
use serde::Serialize;
use std::path::Path;
use std::sync::{Arc, Mutex};

/// A query parameter (the journal only compares integers and text).
#[derive(Debug, Clone)]
pub enum Param {
    Int(i64),
    Text(String),
}

/// A column value as read.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    Null,
    Int(i64),
    Text(String),
}

impl Value {
    pub fn text(&self) -> Option<String> {
        match self {
            Value::Text(s) => Some(s.clone()),
            Value::Int(i) => Some(i.to_string()),
            Value::Null => None,
        }
    }
    pub fn int(&self) -> i64 {
        match self {
            Value::Int(i) => *i,
            Value::Text(s) => s.parse().unwrap_or(0),
            Value::Null => 0,
        }
    }
}

impl rusqlite::ToSql for Param {
    fn to_sql(&self) -> rusqlite::Result<rusqlite::types::ToSqlOutput<'_>> {
        match self {
            Param::Int(i) => i.to_sql(),
            Param::Text(s) => s.to_sql(),
        }
    }
}

impl tokio_postgres::types::ToSql for Param {
    fn to_sql(
        &self,
        ty: &tokio_postgres::types::Type,
        out: &mut tokio_postgres::types::private::BytesMut,
    ) -> Result<tokio_postgres::types::IsNull, Box<dyn std::error::Error + Sync + Send>> {
        use tokio_postgres::types::Type;
        match self {
            Param::Int(i) if *ty == Type::INT4 => i32::try_from(*i)?.to_sql(ty, out),
            Param::Int(i) => i.to_sql(ty, out),
            Param::Text(s) => s.to_sql(ty, out),
        }
    }
    fn accepts(_: &tokio_postgres::types::Type) -> bool {
        true
    }
    tokio_postgres::types::to_sql_checked!();
}

/// An open journal, for queries.
pub enum Reader {
    Sqlite(Arc<Mutex<rusqlite::Connection>>),
    Postgres(tokio_postgres::Client),
}

impl Reader {
    /// Opens the journal the config names (needs a Tokio runtime for PostgreSQL).
    pub async fn open(cfg: &JournalConfig, spool: &Path) -> Result<Reader, JournalError> {
        match cfg.kind {
            JournalKind::None => Err(JournalError::Other(
                "journal.kind is \"none\": no journal to read".into(),
            )),
            JournalKind::Sqlite => {
                let path = cfg.sqlite_path(spool);
                if !path.exists() {
                    return Err(JournalError::Other(format!(
                        "no journal at {} (it is created by `passerelle serve`)",
                        path.display()
                    )));
                }
                // Opening and migrating touch the file: on a blocking thread, never the
                // runtime's (issue 24 B.13).
                let conn = tokio::task::spawn_blocking(move || {
                    let conn = super::sqlite::open(&path, false).map_err(|source| {
                        JournalError::Sqlite {
                            path: path.display().to_string(),
                            source,
                        }
                    })?;
                    super::sqlite::migrate(&conn).map_err(JournalError::Other)?;
                    Ok::<_, JournalError>(conn)
                })
                .await
                .map_err(|e| JournalError::Other(e.to_string()))??;
                Ok(Reader::Sqlite(Arc::new(Mutex::new(conn))))
            }
            JournalKind::Postgres => {
                let url = cfg.url.as_deref().unwrap_or_default();
                let mut client = super::postgres::connect(url)
                    .await
                    .map_err(JournalError::Postgres)?;
                super::postgres::migrate(&mut client)
                    .await
                    .map_err(JournalError::Postgres)?;
                Ok(Reader::Postgres(client))
            }
        }
    }

    /// Runs a query written with `$1`-style placeholders.
    pub async fn rows(
        &self,
        sql: &str,
        params: Vec<Param>,
    ) -> Result<Vec<Vec<Value>>, JournalError> {
        match self {
            Reader::Sqlite(conn) => {
                let conn = conn.clone();
                let sql = sqlite_placeholders(sql);
                tokio::task::spawn_blocking(move || {
                    let c = conn.lock().unwrap_or_else(|p| p.into_inner());
                    sqlite_rows(&c, &sql, &params)
                })
                .await
                .map_err(|e| JournalError::Other(e.to_string()))?
                .map_err(|source| JournalError::Sqlite {
                    path: "journal".into(),
                    source,
                })
            }
            Reader::Postgres(client) => {
                let refs: Vec<&(dyn tokio_postgres::types::ToSql + Sync)> = params
                    .iter()
                    .map(|p| p as &(dyn tokio_postgres::types::ToSql + Sync))
                    .collect();
                let rows = client
                    .query(sql, &refs)
                    .await
                    .map_err(|e| JournalError::Postgres(e.to_string()))?;
                Ok(rows.iter().map(pg_row).collect())
            }
        }
    }
}

/// `$1` -> `?1` (SQLite's numbered parameters).
pub(crate) fn sqlite_placeholders(sql: &str) -> String {
    let mut out = String::with_capacity(sql.len());
    let mut chars = sql.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '$' && chars.peek().is_some_and(|d| d.is_ascii_digit()) {
            out.push('?');
        } else {
            out.push(c);
        }
    }
    out
}

fn sqlite_rows(
    c: &rusqlite::Connection,
    sql: &str,
    params: &[Param],
) -> rusqlite::Result<Vec<Vec<Value>>> {
    let mut st = c.prepare_cached(sql)?;
    let n = st.column_count();
    let mut rows = st.query(rusqlite::params_from_iter(params.iter()))?;
    let mut out = Vec::new();
    while let Some(r) = rows.next()? {
        let mut row = Vec::with_capacity(n);
        for i in 0..n {
            use rusqlite::types::ValueRef;
            row.push(match r.get_ref(i)? {
                ValueRef::Null => Value::Null,
                ValueRef::Integer(v) => Value::Int(v),
                ValueRef::Real(v) => Value::Int(v as i64),
                ValueRef::Text(t) | ValueRef::Blob(t) => {
                    Value::Text(String::from_utf8_lossy(t).into_owned())
                }
            });
        }
        out.push(row);
    }
    Ok(out)
}

fn pg_row(r: &tokio_postgres::Row) -> Vec<Value> {
    use tokio_postgres::types::Type;
    (0..r.len())
        .map(|i| {
            let ty = r.columns()[i].type_();
            let v = if *ty == Type::INT8 {
                r.try_get::<_, Option<i64>>(i)
                    .ok()
                    .flatten()
                    .map(Value::Int)
            } else if *ty == Type::INT4 {
                r.try_get::<_, Option<i32>>(i)
                    .ok()
                    .flatten()
                    .map(|v| Value::Int(v.into()))
            } else if *ty == Type::INT2 {
                r.try_get::<_, Option<i16>>(i)
                    .ok()
                    .flatten()
                    .map(|v| Value::Int(v.into()))
            } else if *ty == Type::BOOL {
                r.try_get::<_, Option<bool>>(i)
                    .ok()
                    .flatten()
                    .map(|v| Value::Int(v.into()))
            } else {
                r.try_get::<_, Option<String>>(i)
                    .ok()
                    .flatten()
                    .map(Value::Text)
            };
            v.unwrap_or(Value::Null)
        })
        .collect()
}

// ----------------------------------------------------------------------------------------
// Times

/// Unix ms -> `2026-11-22T10:15:02.123Z`.
pub fn format_time(ms: i64) -> String {
    let t = time::OffsetDateTime::from_unix_timestamp_nanos(ms as i128 * 1_000_000)
        .unwrap_or(time::OffsetDateTime::UNIX_EPOCH);
    let f = time::macros::format_description!(
        "[year]-[month]-[day]T[hour]:[minute]:[second].[subsecond digits:3]Z"
    );
    t.format(&f).unwrap_or_default()
}

/// The longest period a user may ask for ("36500d").
const MAX_AGO: std::time::Duration = std::time::Duration::from_secs(100 * 366 * 86_400);
/// Periods of up to this many days are looked up day by day (an `IN` list: point lookups in
/// the day-led indexes); longer ones as one range of days.
const MAX_DAY_LIST: i64 = 400;

/// An RFC 3339 date (`2026-11-01`, midnight UTC) or date-time (`2026-11-01T08:00:00+01:00`;
/// without an offset: UTC), `now`, or a duration ago (`2h`, `7d`). Unix ms.
pub fn parse_time(s: &str, now_ms: i64) -> Result<i64, String> {
    use time::format_description::well_known::Rfc3339;
    use time::macros::format_description;
    let s = s.trim();
    if s.eq_ignore_ascii_case("now") {
        return Ok(now_ms);
    }
    // Dates before 1970 are refused rather than turned into negative times.
    let in_range = |ms: i64| {
        if ms < 0 {
            Err(format!("{s:?}: before 1970"))
        } else {
            Ok(ms)
        }
    };
    let ms = |t: time::OffsetDateTime| (t.unix_timestamp_nanos() / 1_000_000) as i64;
    if let Ok(t) = time::OffsetDateTime::parse(s, &Rfc3339) {
        return in_range(ms(t));
    }
    let spaced = s.replacen(' ', "T", 1);
    if let Ok(t) = time::OffsetDateTime::parse(&spaced, &Rfc3339) {
        return in_range(ms(t));
    }
    for f in [
        format_description!("[year]-[month]-[day]T[hour]:[minute]:[second]"),
        format_description!("[year]-[month]-[day]T[hour]:[minute]"),
    ] {
        if let Ok(t) = time::PrimitiveDateTime::parse(&spaced, &f) {
            return in_range(ms(t.assume_utc()));
        }
    }
    if let Ok(d) = time::Date::parse(s, &format_description!("[year]-[month]-[day]")) {
        return in_range(ms(d.midnight().assume_utc()));
    }
    if let Ok(d) = crate::config::parse_duration(s) {
        // Bounded: an absurd period ("99999999999d") once wrapped around and made a lookup
        // list of 876 GB that aborted the gateway.
        if d > MAX_AGO {
            return Err(format!(
                "{s:?}: a period of at most 100 years (the journal holds nothing older)"
            ));
        }
        return Ok(now_ms.saturating_sub(d.as_millis() as i64).max(0));
    }
    Err(format!(
        "{s:?}: expected an RFC 3339 date or date-time (2026-11-01, 2026-11-01T08:00:00Z), \"now\", or a duration ago (2h, 7d)"
    ))
}

// ----------------------------------------------------------------------------------------
// track

/// `passerelle track` filters; all given ones must match.
#[derive(Debug, Clone, Default)]
pub struct TrackFilter {
    pub id: Option<String>,
    pub message_id: Option<String>,
    pub from: Option<String>,
    pub to: Option<String>,
    pub establishment: Option<String>,
    /// Acceptance (or refusal) time, Unix ms: since inclusive, until exclusive.
    pub since: Option<i64>,
    pub until: Option<i64>,
    pub status: Option<String>,
    pub limit: u32,
}

/// A message (or a refusal) with its timeline, as `track --format json` prints it.
#[derive(Debug, Clone, Serialize)]
pub struct Tracked {
    /// `null` for a refusal (nothing was queued).
    pub queue_id: Option<String>,
    /// The journal's reference for a refusal.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub refusal_id: Option<String>,
    pub gateway: String,
    pub time: String,
    pub status: String,
    pub message_id: Option<String>,
    pub from: Option<String>,
    pub to: Vec<String>,
    pub establishment: Option<String>,
    pub origin: Option<String>,
    pub listener: Option<String>,
    pub client: Option<String>,
    pub client_dn: Option<String>,
    pub tls: Option<String>,
    pub size: Option<i64>,
    pub events: Vec<serde_json::Value>,
}

/// The statuses a message can have (for `--status`).
pub const STATUSES: &[&str] = &[
    "queued",
    "deferred",
    "delivered",
    "bounced",
    "partial",
    "held",
    "deleted",
    "refused",
];

impl Reader {
    pub async fn track(&self, f: &TrackFilter) -> Result<Vec<Tracked>, JournalError> {
        // The lookups by address and Message-ID are led by the day (see `schema`): the days
        // of the period asked, or of the whole journal.
        let days = if f.to.is_some() || f.from.is_some() || f.message_id.is_some() {
            let since = match f.since {
                Some(s) => s,
                None => match self
                    .rows("SELECT MIN(time) FROM messages", Vec::new())
                    .await?
                    .first()
                    .and_then(|r| r.first())
                {
                    Some(Value::Null) | None => return Ok(Vec::new()), // an empty journal
                    Some(v) => v.int(),
                },
            };
            let now = crate::util::clock::now_ms() as i64;
            // Never past tomorrow: the journal holds nothing later.
            let until = f.until.unwrap_or(now).min(now + 86_400_000);
            let days = super::schema::days(since, until);
            if days.end() - days.start() > MAX_DAY_LIST {
                format!("BETWEEN {} AND {}", days.start(), days.end())
            } else {
                format!(
                    "IN ({})",
                    days.map(|d| d.to_string()).collect::<Vec<_>>().join(",")
                )
            }
        } else {
            String::new()
        };
        let mut conds: Vec<String> = Vec::new();
        let mut params: Vec<Param> = Vec::new();
        let mut add = |cond: &str, p: Param| {
            params.push(p);
            conds.push(cond.replace('#', &format!("${}", params.len())));
        };
        if let Some(id) = &f.id {
            add("m.qid = #", Param::Text(id.trim().to_ascii_uppercase()));
        }
        if let Some(mid) = &f.message_id {
            add(
                &format!("m.day {days} AND m.message_id = #"),
                Param::Text(super::event::normalize_message_id(mid)),
            );
        }
        if let Some(from) = &f.from {
            add(
                &format!("m.day {days} AND m.sender = #"),
                Param::Text(address(from)),
            );
        }
        if let Some(to) = &f.to {
            add(
                &format!(
                    "(m.qid, m.gw) IN (SELECT r.qid, r.gw FROM recipients r
                                      WHERE r.day {days} AND r.address = #)"
                ),
                Param::Text(address(to)),
            );
        }
        if let Some(e) = &f.establishment {
            // Its mail as intake attributed it (issue 24 B.7): what its servers sent, and what
            // was routed to its mailbox; never a domain guessed from an address.
            add(
                "(m.establishment = # OR EXISTS (SELECT 1 FROM recipients r
                    WHERE r.qid = m.qid AND r.gw = m.gw
                      AND r.transport = 'establishment:' || CAST(# AS TEXT)))",
                Param::Text(e.clone()),
            );
        }
        if let Some(s) = f.since {
            add("m.time >= #", Param::Int(s));
        }
        if let Some(u) = f.until {
            add("m.time < #", Param::Int(u));
        }
        if let Some(s) = &f.status {
            add("m.status = #", Param::Text(s.to_ascii_lowercase()));
        }
        params.push(Param::Int(f.limit.max(1) as i64));
        let where_ = if conds.is_empty() {
            "1 = 1".to_string()
        } else {
            conds.join(" AND ")
        };
        let sql = format!(
            "SELECT m.qid, m.gw, g.name, m.queued, m.time, m.status, m.message_id, m.sender,
                    m.establishment, m.origin, m.listener, m.client_ip, m.client_dn, m.tls,
                    m.size, m.nrcpt
             FROM messages m JOIN gateways g ON g.id = m.gw
             WHERE {where_}
             ORDER BY m.time DESC, m.qid DESC LIMIT ${}",
            params.len()
        );
        let rows = self.rows(&sql, params).await?;
        let mut out = Vec::with_capacity(rows.len());
        for r in rows.iter().rev() {
            let (qid, gw) = (r[0].text().unwrap_or_default(), r[1].int());
            let key = vec![Param::Text(qid.clone()), Param::Int(gw)];
            let rcpts: Vec<RecipientRow> = self
                .rows(
                    "SELECT address, route, transport, destination, bal_type, idx
                     FROM recipients WHERE qid = $1 AND gw = $2 ORDER BY idx",
                    key.clone(),
                )
                .await?
                .into_iter()
                .map(|x| RecipientRow {
                    qid: String::new(),
                    idx: x[5].int() as i32,
                    address: x[0].text().unwrap_or_default(),
                    route: x[1].text(),
                    transport: x[2].text(),
                    destination: x[3].text(),
                    bal_type: x[4].text(),
                    status: "",
                    day: 0,
                })
                .collect();
            // What the acceptance's stored details leave to the rows (see `plan`).
            let nrcpt = r[15].int();
            let implied = || {
                super::plan::implied_accepted(
                    &MessageRow {
                        qid: String::new(),
                        queued: true,
                        time: 0,
                        updated: 0,
                        status: "",
                        origin: r[9].text(),
                        listener: r[10].text(),
                        establishment: r[8].text(),
                        client_ip: r[11].text(),
                        client_dn: r[12].text(),
                        tls: r[13].text(),
                        sender: r[7].text(),
                        message_id: r[6].text(),
                        size: Some(r[14].int()),
                        nrcpt: nrcpt as i32,
                        day: 0,
                    },
                    &rcpts
                        .iter()
                        .filter(|x| i64::from(x.idx) < nrcpt)
                        .cloned()
                        .collect::<Vec<_>>(),
                )
            };
            let to = rcpts.iter().map(|x| x.address.clone()).collect();
            let events = self
                .rows(
                    "SELECT time, kind, details FROM events WHERE qid = $1 AND gw = $2
                     ORDER BY time, id",
                    key,
                )
                .await?
                .into_iter()
                .map(|e| {
                    let kind = e[1].text().unwrap_or_default();
                    let mut j = event_json(e[0].int(), &kind, &e[2]);
                    if kind == "accepted" {
                        j = super::plan::merge_details(implied(), &j);
                    }
                    j
                })
                .collect();
            let queued = r[3].int() != 0;
            out.push(Tracked {
                queue_id: queued.then(|| qid.clone()),
                refusal_id: (!queued).then_some(qid),
                gateway: r[2].text().unwrap_or_default(),
                time: format_time(r[4].int()),
                status: r[5].text().unwrap_or_default(),
                message_id: r[6].text(),
                from: r[7].text(),
                to,
                establishment: r[8].text(),
                origin: r[9].text(),
                listener: r[10].text(),
                client: r[11].text(),
                client_dn: r[12].text(),
                tls: r[13].text(),
                size: match r[14] {
                    Value::Null => None,
                    ref v => Some(v.int()),
                },
                events,
            });
        }
        Ok(out)
    }
}

fn address(s: &str) -> String {
    s.trim()
        .trim_start_matches('<')
        .trim_end_matches('>')
        .to_ascii_lowercase()
}

/// `{"time": ..., "kind": ..., <details>}`.
fn event_json(time: i64, kind: &str, details: &Value) -> serde_json::Value {
    let mut m = serde_json::Map::new();
    m.insert("time".into(), format_time(time).into());
    m.insert("kind".into(), kind.into());
    if let Some(d) = details.text() {
        if let Ok(serde_json::Value::Object(o)) = serde_json::from_str(&d) {
            m.extend(o);
        }
    }
    serde_json::Value::Object(m)
}

pub use super::stats::{EventFacts, StatsBy, StatsQuery, StatsReport, StatsRow};
