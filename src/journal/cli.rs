//! `passerelle track` and `passerelle stats`: arguments, and the text, CSV and JSON renderings.
//! They read the journal directly (the SQLite file or the PostgreSQL URL of the config), so
//! they work whether `serve` runs or not.

use super::read::{parse_time, Reader, StatsBy, StatsQuery, StatsReport, StatsRow};
use super::read::{TrackFilter, Tracked, STATUSES};
use crate::config::Config;
use serde_json::Value as Json;
use std::fmt::Write as _;
use std::io::Write;
use std::path::Path;

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum TrackFormat {
    Text,
    Json,
    /// With `--proof`: a printable page.
    Html,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum StatsFormat {
    Text,
    Csv,
    Json,
}

/// Matching messages with their timelines; all given filters must match.
#[derive(Debug, clap::Args)]
pub struct TrackArgs {
    /// Queue id (or the reference of a refusal).
    #[arg(long)]
    pub id: Option<String>,
    /// Message-ID header (with or without <>).
    #[arg(long)]
    pub message_id: Option<String>,
    /// Envelope sender.
    #[arg(long)]
    pub from: Option<String>,
    /// Envelope recipient.
    #[arg(long)]
    pub to: Option<String>,
    /// Only messages of this establishment.
    #[arg(long)]
    pub establishment: Option<String>,
    /// Received at or after T: RFC 3339 date or date-time, or a duration ago (2h, 7d).
    #[arg(long, value_name = "T")]
    pub since: Option<String>,
    /// Received before T.
    #[arg(long, value_name = "T")]
    pub until: Option<String>,
    /// Only messages in this state.
    #[arg(long, value_parser = clap::builder::PossibleValuesParser::new(STATUSES))]
    pub status: Option<String>,
    /// At most N messages, the most recent.
    #[arg(long, default_value_t = 100, value_name = "N")]
    pub limit: u32,
    /// text: a timeline per message; json: for tools; html: with --proof, a printable page.
    #[arg(long, value_enum, default_value_t = TrackFormat::Text)]
    pub format: TrackFormat,
    /// With --id: a proof of sending (envelope, size and SHA-256 of the message as accepted,
    /// each delivery attempt with the peer's DN and reply, the receipts); never a subject or
    /// a body.
    #[arg(long, requires = "id")]
    pub proof: bool,
}

/// The activity indicators, grouped.
#[derive(Debug, clap::Args)]
pub struct StatsArgs {
    /// One row per day, week, month, establishment, domain, mailbox or peer.
    #[arg(long, value_enum)]
    pub by: StatsBy,
    /// From T (inclusive): RFC 3339 date or date-time, or a duration ago.
    #[arg(long, value_name = "T")]
    pub since: Option<String>,
    /// To T (exclusive).
    #[arg(long, value_name = "T")]
    pub until: Option<String>,
    /// Only messages of this establishment.
    #[arg(long)]
    pub establishment: Option<String>,
    /// text: a table; csv: for a spreadsheet (the monthly report); json: for tools.
    #[arg(long, value_enum, default_value_t = StatsFormat::Text)]
    pub format: StatsFormat,
}

/// The `--since`/`--until` bounds; a bad one is printed (the caller exits 2).
fn times(since: &Option<String>, until: &Option<String>) -> Option<(Option<i64>, Option<i64>)> {
    let now = crate::util::clock::now_ms() as i64;
    let p = |s: &Option<String>| s.as_deref().map(|t| parse_time(t, now)).transpose();
    match (p(since), p(until)) {
        (Ok(a), Ok(b)) => Some((a, b)),
        (Err(e), _) | (_, Err(e)) => {
            eprintln!("passerelle: {e}");
            None
        }
    }
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?)
}

async fn reader(config: &Path) -> anyhow::Result<Reader> {
    let cfg = Config::load_unvalidated(config)?;
    Ok(Reader::open(&cfg.journal, &cfg.server.spool).await?)
}

/// `passerelle track`: exit 0 when something matched, 1 when nothing did, 2 on a bad time.
pub fn track(config: &Path, a: &TrackArgs) -> anyhow::Result<u8> {
    let Some((since, until)) = times(&a.since, &a.until) else {
        return Ok(2);
    };
    let filter = TrackFilter {
        id: a.id.clone(),
        message_id: a.message_id.clone(),
        from: a.from.clone(),
        to: a.to.clone(),
        establishment: a.establishment.clone(),
        since,
        until,
        status: a.status.clone(),
        limit: a.limit,
    };
    let found = runtime()?.block_on(async {
        reader(config)
            .await?
            .track(&filter)
            .await
            .map_err(anyhow::Error::from)
    })?;
    let mut out = std::io::stdout().lock();
    if a.proof {
        let Some(m) = found.iter().find(|m| m.queue_id.is_some()) else {
            eprintln!("no message with queue id {}", a.id.as_deref().unwrap_or(""));
            return Ok(1);
        };
        let text = match a.format {
            TrackFormat::Text => super::proof::text(m),
            TrackFormat::Json => serde_json::to_string_pretty(&super::proof::json(m))? + "\n",
            TrackFormat::Html => super::proof::html(m),
        };
        out.write_all(text.as_bytes())?;
        return Ok(0);
    }
    match a.format {
        TrackFormat::Html => {
            eprintln!("--format html is for --proof");
            return Ok(2);
        }
        TrackFormat::Json => writeln!(out, "{}", serde_json::to_string_pretty(&found)?)?,
        TrackFormat::Text => {
            for m in &found {
                out.write_all(render_tracked(m).as_bytes())?;
            }
            if found.is_empty() {
                eprintln!("no message matches");
            }
        }
    }
    Ok(if found.is_empty() { 1 } else { 0 })
}

/// `passerelle stats`.
pub fn stats(config: &Path, a: &StatsArgs) -> anyhow::Result<u8> {
    let Some((since, until)) = times(&a.since, &a.until) else {
        return Ok(2);
    };
    let q = StatsQuery {
        by: a.by,
        since,
        until,
        establishment: a.establishment.clone(),
    };
    let report = runtime()?.block_on(async {
        reader(config)
            .await?
            .stats(&q)
            .await
            .map_err(anyhow::Error::from)
    })?;
    let text = match a.format {
        StatsFormat::Json => serde_json::to_string_pretty(&report)? + "\n",
        StatsFormat::Csv => render_csv(&report),
        StatsFormat::Text => render_stats(&report),
    };
    std::io::stdout().lock().write_all(text.as_bytes())?;
    Ok(0)
}

pub(crate) fn s<'a>(v: &'a Json, k: &str) -> Option<&'a str> {
    v.get(k).and_then(Json::as_str).filter(|s| !s.is_empty())
}

fn n(v: &Json, k: &str) -> Option<u64> {
    v.get(k).and_then(Json::as_u64)
}

fn reply_text(v: &Json) -> Option<String> {
    let r = v.get("reply")?;
    let code = n(r, "code")?;
    Some(match s(r, "status") {
        Some(st) => format!("{code} {st} {}", s(r, "text").unwrap_or("")),
        None => format!("{code} {}", s(r, "text").unwrap_or("")),
    })
}

/// One line of a timeline.
pub fn describe_event(e: &Json) -> String {
    let kind = s(e, "kind").unwrap_or("?");
    format!(
        "  {}  {:<9} {}\n",
        s(e, "time").unwrap_or("?"),
        kind,
        event_details(e)
    )
}

/// What a timeline line says after the time and the kind (the console shows the same words).
pub fn event_details(e: &Json) -> String {
    let kind = s(e, "kind").unwrap_or("?");
    let mut d = String::new();
    match kind {
        "accepted" => {
            let rcpts = e
                .get("recipients")
                .and_then(Json::as_array)
                .map_or(0, Vec::len);
            let c = e.get("client").cloned().unwrap_or(Json::Null);
            let _ = write!(
                d,
                "{} recipient(s), {} bytes, from {} on {}",
                rcpts,
                n(e, "size").unwrap_or(0),
                s(&c, "ip").unwrap_or("?"),
                s(&c, "listener").unwrap_or("?")
            );
            if let Some(o) = s(&c, "origin") {
                let _ = write!(d, " ({o})");
            }
            if let Some(t) = s(&c, "tls") {
                let _ = write!(d, ", {t}");
            }
            if let Some(dn) = s(&c, "dn") {
                let _ = write!(d, ", client certificate {dn}");
            }
        }
        "refused" => {
            let _ = write!(
                d,
                "at {}: {} [{}]",
                s(e, "stage").unwrap_or("?"),
                reply_text(e).unwrap_or_default(),
                s(e, "reason").unwrap_or("?")
            );
        }
        "delivered" | "deferred" | "bounced" | "expired" => {
            let _ = write!(d, "<{}>", s(e, "to").unwrap_or("?"));
            if let Some(t) = s(e, "transport") {
                let _ = write!(d, " via {t}");
            }
            if let Some(h) = s(e, "next_hop") {
                let _ = write!(d, " to {h}");
            }
            if let Some(ip) = s(e, "remote_ip") {
                let _ = write!(d, " [{ip}]");
            }
            if let Some(v) = s(e, "tls_version") {
                let _ = write!(d, ", {v} {}", s(e, "cipher").unwrap_or(""));
            }
            if let Some(dn) = s(e, "peer_dn") {
                let _ = write!(d, ", peer {dn}");
            }
            let said = if kind == "delivered" || e.get("reply").is_some() && kind != "expired" {
                reply_text(e)
            } else {
                None
            };
            let _ = write!(
                d,
                ": {}",
                said.unwrap_or_else(|| s(e, "diagnostic").unwrap_or("").to_string())
            );
            let _ = write!(
                d,
                " ({} ms, attempt {})",
                n(e, "duration_ms").unwrap_or(0),
                n(e, "attempt").unwrap_or(0)
            );
        }
        "remote-delivered" | "remote-delayed" | "remote-failed" => {
            let _ = write!(
                d,
                "<{}> reported by {}: {} ({}, notification {})",
                s(e, "to").unwrap_or("?"),
                s(e, "reporter").unwrap_or("?"),
                s(e, "status").unwrap_or("?"),
                s(e, "report").unwrap_or("dsn"),
                s(e, "notification").unwrap_or("?")
            );
        }
        "displayed" | "deleted" | "dispatched" | "processed" => {
            let verb = match kind {
                "displayed" => "read",
                "deleted" => "deleted unread",
                "dispatched" => "dispatched",
                _ => "processed",
            };
            let _ = write!(
                d,
                "{verb} by <{}>{} (notification {})",
                s(e, "to").unwrap_or("?"),
                s(e, "reporter")
                    .map(|r| format!(" with {r}"))
                    .unwrap_or_default(),
                s(e, "notification").unwrap_or("?")
            );
        }
        "dsn" => {
            let _ = write!(
                d,
                "{} notification {} queued to <{}>",
                s(e, "dsn").unwrap_or("?"),
                s(e, "dsn_id").unwrap_or("?"),
                s(e, "to").unwrap_or("")
            );
        }
        _ => {
            if let Some(u) = s(e, "user") {
                let _ = write!(d, "by {u}");
            }
        }
    }
    d
}

/// A message and its timeline, as `track` prints it.
pub fn render_tracked(m: &Tracked) -> String {
    let mut o = String::new();
    let id = match (&m.queue_id, &m.refusal_id) {
        (Some(q), _) => q.clone(),
        (None, Some(r)) => format!("(refused, reference {r})"),
        _ => "?".into(),
    };
    let _ = writeln!(o, "{id}  {}  {}  gateway {}", m.status, m.time, m.gateway);
    let to: Vec<String> = m.to.iter().map(|t| format!("<{t}>")).collect();
    let _ = writeln!(
        o,
        "  from <{}> to {}",
        m.from.as_deref().unwrap_or(""),
        if to.is_empty() {
            "-".into()
        } else {
            to.join(", ")
        }
    );
    let mut facts = Vec::new();
    if let Some(mid) = &m.message_id {
        facts.push(format!("message-id <{mid}>"));
    }
    if let Some(sz) = m.size {
        facts.push(format!("{sz} bytes"));
    }
    facts.push(format!(
        "establishment {}",
        m.establishment.as_deref().unwrap_or("-")
    ));
    if let Some(c) = &m.client {
        facts.push(format!(
            "client {c} on {} ({})",
            m.listener.as_deref().unwrap_or("?"),
            m.origin.as_deref().unwrap_or("?")
        ));
    }
    let _ = writeln!(o, "  {}", facts.join(", "));
    for e in &m.events {
        o.push_str(&describe_event(e));
    }
    o.push('\n');
    o
}

/// The fixed columns of `stats`, in order: (CSV/JSON name, text heading, value).
fn columns(r: &StatsRow) -> [(&'static str, &'static str, u64); 14] {
    [
        (
            "received_from_establishments",
            "from-estab",
            r.received_from_establishments,
        ),
        ("sent_to_trust_space", "to-trust", r.sent_to_trust_space),
        (
            "received_from_trust_space",
            "from-trust",
            r.received_from_trust_space,
        ),
        (
            "delivered_to_mailboxes",
            "to-mailbox",
            r.delivered_to_mailboxes,
        ),
        ("deferred", "deferred", r.deferred),
        ("bounced", "bounced", r.bounced),
        ("refused", "refused", r.refused),
        ("tls_failures", "tls-fail", r.tls_failures),
        ("dsn", "dsn", r.dsn),
        ("remote_delivered", "remote-dlv", r.remote_delivered),
        ("displayed", "read", r.displayed),
        ("read_within_24h", "read-24h", r.read_within_24h),
        ("read_within_24h_pct", "read-24h-%", r.read_within_24h_pct),
        ("active_mailboxes", "mailboxes", r.active_mailboxes),
    ]
}

fn by_name(b: StatsBy) -> &'static str {
    match b {
        StatsBy::Day => "day",
        StatsBy::Week => "week",
        StatsBy::Month => "month",
        StatsBy::Establishment => "establishment",
        StatsBy::Domain => "domain",
        StatsBy::Mailbox => "mailbox",
        StatsBy::Peer => "peer",
    }
}

fn breakdown(label: &str, m: &std::collections::BTreeMap<String, u64>) -> Option<String> {
    (!m.is_empty()).then(|| {
        let parts: Vec<String> = m.iter().map(|(k, v)| format!("{k} {v}")).collect();
        format!("    {label}: {}\n", parts.join(", "))
    })
}

pub fn render_stats(r: &StatsReport) -> String {
    let mut o = String::new();
    let range = format!(
        "{} to {}",
        r.since.as_deref().unwrap_or("the beginning"),
        r.until.as_deref().unwrap_or("now")
    );
    let _ = writeln!(
        o,
        "# by {}, {range}{}",
        by_name(r.by),
        r.establishment
            .as_deref()
            .map(|e| format!(", establishment {e}"))
            .unwrap_or_default()
    );
    let width = r
        .rows
        .iter()
        .map(|x| x.key.chars().count())
        .max()
        .unwrap_or(0)
        .max(10);
    let _ = write!(o, "{:<width$}", by_name(r.by));
    for (_, h, _) in columns(&r.total) {
        let _ = write!(o, " {h:>10}");
    }
    o.push('\n');
    for row in r.rows.iter().chain(std::iter::once(&r.total)) {
        let _ = write!(o, "{:<width$}", row.key);
        for (_, _, v) in columns(row) {
            let _ = write!(o, " {v:>10}");
        }
        o.push('\n');
        for (label, m) in [
            ("refused", &row.refused_by_reason),
            ("tls failures", &row.tls_failures_by_reason),
            ("BAL types delivered", &row.bal_types),
        ] {
            if let Some(line) = breakdown(label, m) {
                o.push_str(&line);
            }
        }
    }
    o
}

fn csv_field(s: &str) -> String {
    crate::util::csv::cell(s).into_owned()
}

/// The indicators as a table: a header row, one row per group and a `total` row; the reasons
/// and BAL types found become columns (`refused:<reason>`, `tls_failure:<reason>`,
/// `bal_type:<type>`). The CSV of `stats` and the console's tables are this.
pub fn stats_table(r: &StatsReport) -> (Vec<String>, Vec<Vec<String>>) {
    use std::collections::BTreeSet;
    let all = || r.rows.iter().chain(std::iter::once(&r.total));
    let keys = |f: fn(&StatsRow) -> &std::collections::BTreeMap<String, u64>| {
        all()
            .flat_map(|x| f(x).keys().cloned())
            .collect::<BTreeSet<String>>()
    };
    let refused = keys(|x| &x.refused_by_reason);
    let tls = keys(|x| &x.tls_failures_by_reason);
    let bal = keys(|x| &x.bal_types);
    let mut head = vec![by_name(r.by).to_string()];
    head.extend(columns(&r.total).iter().map(|(c, _, _)| c.to_string()));
    head.extend(refused.iter().map(|k| format!("refused:{k}")));
    head.extend(tls.iter().map(|k| format!("tls_failure:{k}")));
    head.extend(bal.iter().map(|k| format!("bal_type:{k}")));
    let rows = all()
        .map(|row| {
            let mut f = vec![row.key.clone()];
            f.extend(columns(row).iter().map(|(_, _, v)| v.to_string()));
            let get = |m: &std::collections::BTreeMap<String, u64>, k: &String| {
                m.get(k).copied().unwrap_or(0).to_string()
            };
            f.extend(refused.iter().map(|k| get(&row.refused_by_reason, k)));
            f.extend(tls.iter().map(|k| get(&row.tls_failures_by_reason, k)));
            f.extend(bal.iter().map(|k| get(&row.bal_types, k)));
            f
        })
        .collect();
    (head, rows)
}

/// [`stats_table`] as CSV (RFC 4180 quoting).
pub fn render_csv(r: &StatsReport) -> String {
    let (head, rows) = stats_table(r);
    let mut o = String::new();
    for row in std::iter::once(&head).chain(&rows) {
        o.push_str(
            &row.iter()
                .map(|h| csv_field(h))
                .collect::<Vec<_>>()
                .join(","),
        );
        o.push('\n');
    }
    o
}
