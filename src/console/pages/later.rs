//! The pages that read the journal: `/track` and `/indicators` (and its CSV), with the same
//! queries as `passerelle track` and `passerelle stats`; an establishment's user sees its own.

use super::super::access::{self, Action, Resource};
use super::super::charts::{bars, line_chart, Line};
use super::super::hooks::{HookError, StatsQuery, StatsTable, TrackQuery};
use super::super::{allow, page as frame, App, PageError, Viewer};
use super::message::timeline_markup;
use axum::extract::{Query, State};
use axum::http::{header, StatusCode};
use axum::response::{Html, IntoResponse, Response};
use axum::Extension;
use maud::{html, Markup};
use std::sync::Arc;

fn unavailable(e: &HookError) -> Markup {
    match e {
        HookError::Unavailable(why) => {
            html! { p.note role="status" { "Not available yet: " (why) "." } }
        }
        HookError::Failed(why) => html! { p.error role="alert" { (why) } },
    }
}

fn field(id: &str, label: &str, value: &Option<String>, placeholder: &str) -> Markup {
    html! {
        p {
            label for=(id) { (label) }
            input id=(id) name=(id) type="text" value=(value.clone().unwrap_or_default()) placeholder=(placeholder);
        }
    }
}

/// The period's fields, checked before any lookup: a bad or absurd one is a 400 naming it
/// (the journal also bounds what it is given; this gives the reason to the user).
fn check_period(since: &Option<String>, until: &Option<String>) -> Result<(), PageError> {
    let now = crate::util::clock::now_ms() as i64;
    for (name, v) in [("since", since), ("until", until)] {
        if let Some(t) = v.as_deref() {
            crate::journal::read::parse_time(t, now)
                .map_err(|e| PageError::BadRequest(format!("{name}: {e}")))?;
        }
    }
    Ok(())
}

/// Empty form fields mean "no filter".
fn clean(s: &mut Option<String>) {
    if s.as_deref().is_some_and(|t| t.trim().is_empty()) {
        *s = None;
    }
}

/// `/track/QID/proof`: the printable proof of sending of a message, for whoever may see it
/// (an establishment's administrator: its own messages only, 404 otherwise).
pub async fn proof(
    State(app): State<Arc<App>>,
    Extension(v): Extension<Viewer>,
    axum::extract::Path(id): axum::extract::Path<String>,
) -> Result<Html<String>, PageError> {
    allow(&v, Action::View, Resource::Scoped)?;
    if id.len() > 64 || !id.bytes().all(|b| b.is_ascii_alphanumeric()) {
        return Err(PageError::NotFound);
    }
    let found = app
        .backend
        .journal
        .proof(&id)
        .await
        .map_err(|e| PageError::Unavailable(e.to_string()))?;
    let Some(page) = found else {
        return Err(PageError::NotFound);
    };
    if let Some(own) = access::confined_to(v.role()) {
        if page.owner.as_deref() != Some(own) {
            return Err(PageError::NotFound);
        }
    }
    Ok(Html(page.html))
}

pub async fn track(
    State(app): State<Arc<App>>,
    Extension(v): Extension<Viewer>,
    Query(mut q): Query<TrackQuery>,
) -> Result<Html<String>, PageError> {
    allow(&v, Action::View, Resource::Scoped)?;
    for f in [
        &mut q.id,
        &mut q.message_id,
        &mut q.from,
        &mut q.to,
        &mut q.establishment,
        &mut q.since,
        &mut q.until,
        &mut q.status,
    ] {
        clean(f);
    }
    check_period(&q.since, &q.until)?;
    if let Some(own) = access::confined_to(v.role()) {
        q.establishment = Some(own.to_string());
    }
    // Without a search, the latest messages.
    q.limit = Some(q.limit.unwrap_or(50).min(1000));
    let result = app.backend.journal.track(&q).await;
    let body = html! {
        form.filters method="get" action="/track" aria-label="Search the journal" {
            (field("id", "Queue id", &q.id, ""))
            (field("message_id", "Message-ID", &q.message_id, ""))
            (field("from", "From", &q.from, "sender address"))
            (field("to", "To", &q.to, "recipient address"))
            (field("since", "Since", &q.since, "2026-01-31 or RFC 3339"))
            (field("until", "Until", &q.until, ""))
            (field("status", "Status", &q.status, "delivered, bounced, deferred…"))
            p.buttons { button type="submit" { "Search" } }
        }
        @match &result {
            Err(e) => (unavailable(e)),
            Ok(found) if found.is_empty() => p { "No message matches." }
            Ok(found) => {
                p { (found.len()) " message(s)." }
                @for m in found {
                    article.tracked {
                        h2 { a.mono href=(format!("/messages/{}", m.queue_id)) { (m.queue_id) } " — " (m.status) }
                        p { "From " (m.from) " to " (m.to.join(", ")) @if let Some(e) = &m.establishment { " · " (e) } @if let Some(id) = &m.message_id { " · " code { (id) } } }
                        @if m.queue_id != "-" { p.proof { a href=(format!("/track/{}/proof", m.queue_id)) { "Proof of sending" } } }
                        (timeline_markup(&Ok(Some(m.clone()))))
                    }
                }
            }
        }
    };
    Ok(frame(&app, &v, "/track", "Track", body))
}

fn stats_query(v: &Viewer, mut q: StatsQuery) -> StatsQuery {
    for f in [&mut q.by, &mut q.since, &mut q.until, &mut q.establishment] {
        clean(f);
    }
    if let Some(own) = access::confined_to(v.role()) {
        q.establishment = Some(own.to_string());
    }
    q
}

pub async fn indicators(
    State(app): State<Arc<App>>,
    Extension(v): Extension<Viewer>,
    Query(q): Query<StatsQuery>,
) -> Result<Html<String>, PageError> {
    allow(&v, Action::View, Resource::Scoped)?;
    let q = stats_query(&v, q);
    check_period(&q.since, &q.until)?;
    let by = q.by.clone().unwrap_or_else(|| "day".into());
    let result = app.backend.journal.stats(&q).await;
    let month = last_30_days(&app, &q).await;
    let csv = format!(
        "/indicators.csv?{}",
        serde_urlencoded::to_string([
            ("by", by.as_str()),
            ("since", q.since.as_deref().unwrap_or("")),
            ("until", q.until.as_deref().unwrap_or("")),
            ("establishment", q.establishment.as_deref().unwrap_or(""))
        ])
        .unwrap_or_default()
    );
    let body = html! {
        form.filters method="get" action="/indicators" aria-label="Indicators" {
            p {
                label for="by" { "By" }
                select #by name="by" {
                    @for b in ["day", "week", "month", "establishment", "domain", "mailbox", "peer"] {
                        option value=(b) selected[by == b] { (b) }
                    }
                }
            }
            @if access::confined_to(v.role()).is_none() {
                p {
                    label for="est" { "Establishment" }
                    select #est name="establishment" {
                        option value="" { "all" }
                        @for e in app.scopes() {
                            option value=(e.name) selected[q.establishment.as_deref() == Some(e.name.as_str())] { (e.name) }
                        }
                    }
                }
            }
            (field("since", "Since", &q.since, "2026-01-01"))
            (field("until", "Until", &q.until, ""))
            p.buttons { button type="submit" { "Show" } }
        }
        @match &result {
            Err(e) => (unavailable(e)),
            Ok(t) => {
                @if let Some(c) = &month { (c) }
                p { a href=(csv) download { "Download as CSV" } }
                (stats_table(t))
                @if t.columns.len() > 1 {
                    (bars(&format!("{} by {}", label(&t.columns[1]), label(&by).to_lowercase()), &t.rows.iter().filter(|r| r.first().is_some_and(|k| k != "total")).map(|r| (r.first().cloned().unwrap_or_default(), r.get(1).and_then(|x| x.parse().ok()).unwrap_or(0.0))).collect::<Vec<_>>()))
                }
            }
        }
    };
    Ok(frame(&app, &v, "/indicators", "Indicators", body))
}

/// Messages per day over the last 30 days (of the establishment chosen, or the own one of
/// an establishment's user), as a chart above the table (issue 24 C.4).
async fn last_30_days(app: &App, q: &StatsQuery) -> Option<Markup> {
    let per_day = StatsQuery {
        by: Some("day".into()),
        since: Some("30d".into()),
        until: None,
        establishment: q.establishment.clone(),
    };
    let t = app.backend.journal.stats(&per_day).await.ok()?;
    let today = time::OffsetDateTime::now_utc().date();
    let days: Vec<String> = (0..30i64)
        .rev()
        .map(|d| (today - time::Duration::days(d)).to_string())
        .collect();
    let column = |name: &str| -> Vec<Option<f64>> {
        let Some(i) = t.columns.iter().position(|c| c == name) else {
            return vec![None; days.len()];
        };
        days.iter()
            .map(|d| {
                let row = t.rows.iter().find(|r| r.first() == Some(d));
                Some(row.and_then(|r| r.get(i)?.parse().ok()).unwrap_or(0.0))
            })
            .collect()
    };
    let whose = q.establishment.as_deref().unwrap_or("all establishments");
    Some(line_chart(
        &format!("Messages per day, last 30 days ({whose})"),
        &[
            Line {
                label: "from establishments",
                class: "s-accepted",
                points: column("received_from_establishments"),
            },
            Line {
                label: "from the trust space",
                class: "s-sent",
                points: column("received_from_trust_space"),
            },
            Line {
                label: "deferred",
                class: "s-failed",
                points: column("deferred"),
            },
        ],
        [&days[0], &days[15], &days[29]],
    ))
}

/// What a column of the indicators means, in words (the raw name stays in the CSV and in
/// the header's tooltip).
fn label(column: &str) -> String {
    let fixed = match column {
        "day" => "Day",
        "week" => "Week",
        "month" => "Month",
        "establishment" => "Establishment",
        "domain" => "Domain",
        "mailbox" => "Mailbox",
        "peer" => "Operator (peer)",
        "received_from_establishments" => "From establishments",
        "sent_to_trust_space" => "To the trust space",
        "received_from_trust_space" => "From the trust space",
        "delivered_to_mailboxes" => "To mailboxes",
        "deferred" => "Deferred",
        "bounced" => "Bounced",
        "refused" => "Refused",
        "tls_failures" => "TLS failures",
        "dsn" => "Notifications (DSN)",
        "remote_delivered" => "Delivered (operator's DSN)",
        "displayed" => "Read (MDN)",
        "read_within_24h" => "Read within 24 h",
        "read_within_24h_pct" => "Read within 24 h (% of sent)",
        "active_mailboxes" => "Active mailboxes",
        _ => "",
    };
    if !fixed.is_empty() {
        return fixed.to_string();
    }
    let words = |v: &str| v.replace('_', " ");
    match column.split_once(':') {
        Some(("refused", r)) => format!("Refused: {}", words(r)),
        Some(("tls_failure", r)) => format!("TLS failure: {}", words(r)),
        Some(("bal_type", b)) => format!("BAL {b}"),
        _ => words(column),
    }
}

fn stats_table(t: &StatsTable) -> Markup {
    html! {
        div.scroll {
            table.indicators {
                thead { tr { @for c in &t.columns { th scope="col" title=(c) { (label(c)) } } } }
                tbody { @for r in &t.rows { tr { @for (i, c) in r.iter().enumerate() { @if i == 0 { th scope="row" { (c) } } @else { td.num { (c) } } } } } }
            }
        }
    }
}

/// The table as CSV, through the project's one cell writer (formulas neutralised).
pub fn csv(t: &StatsTable) -> String {
    std::iter::once(&t.columns)
        .chain(&t.rows)
        .map(|row| crate::util::csv::row(row.iter().map(String::as_str)))
        .collect()
}

pub async fn indicators_csv(
    State(app): State<Arc<App>>,
    Extension(v): Extension<Viewer>,
    Query(q): Query<StatsQuery>,
) -> Response {
    if let Err(e) = allow(&v, Action::View, Resource::Scoped) {
        return e.into_response();
    }
    let q = stats_query(&v, q);
    if let Err(e) = check_period(&q.since, &q.until) {
        return e.into_response();
    }
    match app.backend.journal.stats(&q).await {
        Ok(t) => (
            [
                (header::CONTENT_TYPE, "text/csv; charset=utf-8"),
                (
                    header::CONTENT_DISPOSITION,
                    "attachment; filename=\"passerelle-indicators.csv\"",
                ),
            ],
            csv(&t),
        )
            .into_response(),
        Err(e) => (StatusCode::SERVICE_UNAVAILABLE, format!("{e}\n")).into_response(),
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn csv_quotes_what_needs_it() {
        let t = super::StatsTable {
            columns: vec!["day".into(), "sent".into()],
            rows: vec![
                vec!["2026-01-01".into(), "3".into()],
                vec!["a,\"b\"".into(), "1".into()],
            ],
        };
        assert_eq!(
            super::csv(&t),
            "day,sent\r\n2026-01-01,3\r\n\"a,\"\"b\"\"\",1\r\n"
        );
    }
}
