//! `/audit`: the administrators' audit trail (`passerelle audit list`), paginated, and its
//! CSV. Operators and auditors see every entry; an establishment's administrators the
//! entries about their establishment.

use super::super::access::Role;
use super::super::{page as frame, App, PageError, Viewer};
use crate::audit::{Entry, ListFilter};
use axum::extract::{Query, State};
use axum::http::header;
use axum::response::{IntoResponse, Response};
use axum::Extension;
use maud::html;
use std::sync::Arc;

const PAGE: u64 = 100;
/// The most a CSV holds (narrow the period for more).
const CSV_MAX: u64 = 100_000;

#[derive(serde::Deserialize, Default)]
#[serde(default)]
pub struct AuditQuery {
    since: Option<String>,
    until: Option<String>,
    user: Option<String>,
    action: Option<String>,
    page: Option<String>,
}

/// The filter the query and the viewer's role give; a bad value is a 400 naming it.
fn filter(v: &Viewer, q: &AuditQuery, limit: u64) -> Result<ListFilter, PageError> {
    let now = crate::util::clock::now_ms() as i64;
    let text = |s: &Option<String>, name: &str| -> Result<Option<String>, PageError> {
        match s.as_deref().map(str::trim) {
            None | Some("") => Ok(None),
            Some(t) if t.chars().count() > 200 => Err(PageError::BadRequest(format!(
                "{name}: at most 200 characters"
            ))),
            Some(t) => Ok(Some(t.to_string())),
        }
    };
    let time = |s: &Option<String>, name: &str| -> Result<Option<i64>, PageError> {
        text(s, name)?
            .map(|t| {
                crate::journal::read::parse_time(&t, now)
                    .map_err(|e| PageError::BadRequest(format!("{name}: {e}")))
            })
            .transpose()
    };
    let page = match text(&q.page, "page")? {
        None => 1,
        Some(p) => p
            .parse::<u64>()
            .ok()
            .filter(|p| (1..=1_000_000).contains(p))
            .ok_or_else(|| PageError::BadRequest("page: a number from 1".into()))?,
    };
    Ok(ListFilter {
        since: time(&q.since, "since")?,
        until: time(&q.until, "until")?,
        user: text(&q.user, "user")?,
        action: text(&q.action, "action")?,
        establishment: match v.role() {
            Role::Establishment(e) => Some(e.clone()),
            _ => None,
        },
        offset: (page - 1) * limit,
        limit,
    })
}

fn when(ms: i64) -> String {
    crate::journal::read::format_time(ms)
}

pub async fn page(
    State(app): State<Arc<App>>,
    Extension(v): Extension<Viewer>,
    Query(q): Query<AuditQuery>,
) -> Result<Response, PageError> {
    let f = filter(&v, &q, PAGE)?;
    let page_no = f.offset / PAGE + 1;
    let listed = app.backend.auditor.list(&f).await;
    let csv_query = serde_urlencoded::to_string([
        ("since", q.since.clone().unwrap_or_default()),
        ("until", q.until.clone().unwrap_or_default()),
        ("user", q.user.clone().unwrap_or_default()),
        ("action", q.action.clone().unwrap_or_default()),
    ])
    .unwrap_or_default();
    let value = |s: &Option<String>| s.clone().unwrap_or_default();
    let body = html! {
        p.note { "Every administrative action of the console, the CLI and the admin endpoint, oldest first, chained by SHA-256: " code { "passerelle audit verify" } " checks that none was altered, removed or inserted." }
        form.filters method="get" action="/audit" {
            p { label for="since" { "Since" } input #since name="since" type="text" value=(value(&q.since)) placeholder="7d, 2026-12-01"; }
            p { label for="until" { "Until" } input #until name="until" type="text" value=(value(&q.until)) placeholder="now"; }
            p { label for="user" { "User" } input #user name="user" type="text" value=(value(&q.user)); }
            p { label for="action" { "Action" } input #action name="action" type="text" value=(value(&q.action)) placeholder="login, queue hold, ..."; }
            p { button type="submit" { "Show" } }
        }
        @match &listed {
            Err(e) => p.error role="alert" { (e.to_string()) },
            Ok((entries, total)) => {
                p { (total) " entries. " a href=(format!("/audit.csv?{csv_query}")) { "Download as CSV" } }
                (table(entries))
                nav.pages aria-label="Pages" {
                    @if page_no > 1 {
                        a href=(format!("/audit?{csv_query}&page={}", page_no - 1)) { "Previous" } " "
                    }
                    @if page_no * PAGE < *total {
                        a href=(format!("/audit?{csv_query}&page={}", page_no + 1)) { "Next" }
                    }
                }
            }
        }
    };
    Ok(frame(&app, &v, "/audit", "Audit trail", body).into_response())
}

fn table(entries: &[Entry]) -> maud::Markup {
    html! {
        div.scroll {
            table.audit {
                thead { tr { th scope="col" { "#" } th scope="col" { "Time" } th scope="col" { "Who" } th scope="col" { "From" } th scope="col" { "Action" } th scope="col" { "Target" } th scope="col" { "Outcome" } } }
                tbody {
                    @for e in entries {
                        tr {
                            td.num { (e.seq) }
                            td { (when(e.time)) }
                            td { (e.actor()) }
                            td { (e.origin) " (" (e.gateway) ")" }
                            td { (e.action) }
                            td { (e.target) @if let Some(x) = &e.establishment { " [" (x) "]" } }
                            td { (e.outcome) @if let Some(r) = &e.reason { ": " (r) } }
                        }
                    }
                }
            }
        }
    }
}

pub async fn csv(
    State(app): State<Arc<App>>,
    Extension(v): Extension<Viewer>,
    Query(q): Query<AuditQuery>,
) -> Result<Response, PageError> {
    let f = filter(&v, &q, CSV_MAX)?;
    let (entries, _) = app
        .backend
        .auditor
        .list(&f)
        .await
        .map_err(|e| PageError::Unavailable(e.to_string()))?;
    let mut out = crate::util::csv::row([
        "seq",
        "time",
        "via",
        "user",
        "origin",
        "gateway",
        "action",
        "target",
        "establishment",
        "outcome",
        "reason",
        "prev",
        "hash",
    ]);
    for e in &entries {
        let (seq, time) = (e.seq.to_string(), when(e.time));
        out.push_str(&crate::util::csv::row([
            seq.as_str(),
            time.as_str(),
            &e.via,
            &e.user,
            &e.origin,
            &e.gateway,
            &e.action,
            &e.target,
            e.establishment.as_deref().unwrap_or(""),
            &e.outcome,
            e.reason.as_deref().unwrap_or(""),
            &e.prev,
            &e.hash,
        ]));
    }
    Ok((
        [
            (header::CONTENT_TYPE, "text/csv; charset=utf-8"),
            (
                header::CONTENT_DISPOSITION,
                "attachment; filename=\"passerelle-audit.csv\"",
            ),
        ],
        out,
    )
        .into_response())
}
