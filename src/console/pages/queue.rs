//! `/queue`: the messages in the queue with filters (establishment, sender, recipient,
//! domain, status, age), the domain x age table (qshape), and bulk retry, hold, release or
//! delete of the filtered set after a confirmation page.

use super::super::access::{self, Action, Resource, Role, Verdict};
use super::super::queue_view::{self, fmt_age, QueueFilter, AGES, STATUSES};
use super::super::{allow, page as frame, App, PageError, Viewer};
use super::layout::csrf;
use super::message::{perform, QueueAction};
use crate::queue::QueueItem;
use crate::util::clock::now_s;
use axum::extract::{Query, State};
use axum::response::{Html, IntoResponse, Redirect, Response};
use axum::{Extension, Form};
use maud::{html, Markup};
use std::sync::Arc;

/// Rows listed at most on one page (the counts and the table of domains cover them all).
const MAX_ROWS: usize = 500;

/// The messages `v` may see that pass `f`, oldest first.
async fn matching(app: &App, v: &Viewer, f: &QueueFilter) -> Vec<(QueueItem, Vec<String>)> {
    let now = now_s();
    let mut rows: Vec<(QueueItem, Vec<String>)> = app
        .backend
        .queue
        .list()
        .await
        .into_iter()
        .map(|it| {
            let owners = app.owners(&it);
            (it, owners)
        })
        .filter(|(it, owners)| {
            access::decide(v.role(), Action::View, Resource::Message(owners)) == Verdict::Allow
                && f.keeps(it, owners, now)
        })
        .collect();
    rows.sort_by(|a, b| {
        a.0.received
            .cmp(&b.0.received)
            .then_with(|| a.0.id.cmp(&b.0.id))
    });
    rows
}

/// The bulk actions a role may ever do on messages it sees.
fn bulk_actions(role: &Role) -> Vec<QueueAction> {
    let probe = match role {
        Role::Establishment(n) => vec![n.clone()],
        _ => Vec::new(),
    };
    QueueAction::ALL
        .into_iter()
        .filter(|a| access::decide(role, a.action(), Resource::Message(&probe)) == Verdict::Allow)
        .collect()
}

/// An establishment user's filter always names its establishment.
fn scoped(v: &Viewer, mut f: QueueFilter) -> QueueFilter {
    if let Some(own) = access::confined_to(v.role()) {
        f.establishment = own.to_string();
    }
    f
}

fn filter_form(app: &App, v: &Viewer, f: &QueueFilter) -> Markup {
    let establishments = app.backend.establishments.scopes();
    html! {
        form.filters method="get" action="/queue" aria-label="Filter the queue" {
            p {
                label for="f-est" { "Establishment" }
                @match (&establishments, access::confined_to(v.role())) {
                    (_, Some(own)) => { input #f-est name="establishment" value=(own) readonly; }
                    (Ok(list), None) => {
                        select #f-est name="establishment" {
                            option value="" { "any" }
                            @for e in list {
                                option value=(e.name) selected[f.establishment == e.name] { (e.name) }
                            }
                        }
                    }
                    (Err(_), None) => { select #f-est name="establishment" disabled title="no establishments yet" { option value="" { "any" } } }
                }
            }
            p { label for="f-sender" { "Sender" } input #f-sender name="sender" value=(f.sender) placeholder="part of the address"; }
            p { label for="f-rcpt" { "Recipient" } input #f-rcpt name="recipient" value=(f.recipient) placeholder="part of the address"; }
            p { label for="f-domain" { "Recipient domain" } input #f-domain name="domain" value=(f.domain) placeholder="example.mssante.fr"; }
            p {
                label for="f-status" { "Status" }
                select #f-status name="status" {
                    option value="" { "any" }
                    @for s in STATUSES { option value=(s) selected[f.status == s] { (s) } }
                }
            }
            p {
                label for="f-age" { "Older than" }
                select #f-age name="age" {
                    option value="" { "any age" }
                    @for a in AGES { option value=(a) selected[f.age == a] { (a) } }
                }
            }
            p.buttons { button type="submit" { "Filter" } " " a href="/queue" { "Clear" } }
        }
    }
}

pub async fn page(
    State(app): State<Arc<App>>,
    Extension(v): Extension<Viewer>,
    Query(f): Query<QueueFilter>,
) -> Result<Html<String>, PageError> {
    allow(&v, Action::View, Resource::Scoped)?;
    let f = scoped(&v, f);
    let rows = matching(&app, &v, &f).await;
    let now = now_s();
    let refs: Vec<&QueueItem> = rows.iter().map(|r| &r.0).collect();
    let shape = queue_view::qshape(&refs, now, 20);
    let actions = bulk_actions(v.role());
    let body = html! {
        (filter_form(&app, &v, &f))
        @for p in f.problems() { p.error role="alert" { (p) } }
        p #count {
            strong { (rows.len()) } " message(s)"
            @if !f.is_empty() { " match the filter" }
            @if rows.len() > MAX_ROWS { "; the oldest " (MAX_ROWS) " are listed" }
            "."
        }
        @if !rows.is_empty() && !actions.is_empty() {
            form.bulk method="get" action="/queue/confirm" aria-label="Act on the filtered messages" {
                (hidden_filter(&f))
                label for="bulk-action" { "With these " (rows.len()) " messages:" }
                select #bulk-action name="action" {
                    @for a in &actions { option value=(a.as_str()) { (a.label()) } }
                }
                button type="submit" { "Continue…" }
            }
        }
        section aria-labelledby="h-shape" {
            h2 #h-shape { "Pending recipients by domain and age" }
            (shape_table(&shape))
        }
        section aria-labelledby="h-list" {
            h2 #h-list { "Messages" }
            (message_table(&rows, now))
        }
    };
    Ok(frame(&app, &v, "/queue", "Queue", body))
}

fn hidden_filter(f: &QueueFilter) -> Markup {
    html! {
        input type="hidden" name="establishment" value=(f.establishment);
        input type="hidden" name="sender" value=(f.sender);
        input type="hidden" name="recipient" value=(f.recipient);
        input type="hidden" name="domain" value=(f.domain);
        input type="hidden" name="status" value=(f.status);
        input type="hidden" name="age" value=(f.age);
    }
}

fn shape_table(shape: &[queue_view::ShapeRow]) -> Markup {
    html! {
        div.scroll {
            table.shape {
                caption.visually-hidden { "Pending recipients per domain, by the age of their message (qshape)" }
                thead {
                    tr {
                        th scope="col" { "Domain" }
                        th scope="col" { "Total" }
                        @for c in queue_view::shape_columns() { th scope="col" { (c) } }
                    }
                }
                tbody {
                    @for r in shape {
                        tr {
                            th scope="row" {
                                @if r.domain == "TOTAL" || r.domain.starts_with('(') { (r.domain) }
                                @else { a href=(format!("/queue?{}", QueueFilter { domain: r.domain.clone(), ..Default::default() }.query())) { (r.domain) } }
                            }
                            td.num { (r.total) }
                            @for n in &r.by_age { td.num { @if *n > 0 { (n) } } }
                        }
                    }
                }
            }
        }
    }
}

fn message_table(rows: &[(QueueItem, Vec<String>)], now: u64) -> Markup {
    html! {
        @if rows.is_empty() {
            p { "No message." }
        } @else {
            div.scroll {
                table.messages {
                    caption.visually-hidden { "Queued messages, oldest first" }
                    thead {
                        tr {
                            th scope="col" { "Queue id" }
                            th scope="col" { "Age" }
                            th scope="col" { "Status" }
                            th scope="col" { "Sender" }
                            th scope="col" { "Recipients" }
                            th scope="col" { "Attempts" }
                            th scope="col" { "Next attempt" }
                            th scope="col" { "Size" }
                        }
                    }
                    tbody {
                        @for (it, _) in rows.iter().take(MAX_ROWS) {
                            tr {
                                td { a.mono href=(format!("/messages/{}", it.id)) { (it.id) } }
                                td { (fmt_age(queue_view::age(it, now))) }
                                td { span class=(format!("status {}", queue_view::status(it))) { (queue_view::status(it)) } }
                                td { (if it.sender.is_empty() { "<>" } else { &it.sender }) }
                                td {
                                    ul.plain {
                                        @for r in &it.recipients {
                                            li {
                                                (r.address) " "
                                                span class=(format!("rcpt {}", r.status)) { (r.status) }
                                                @if let Some(e) = &r.last_error { br; small { (e) } }
                                            }
                                        }
                                    }
                                }
                                td.num { (it.attempts) }
                                td { (next_attempt(it, now)) }
                                td.num { (it.size) }
                            }
                        }
                    }
                }
            }
        }
    }
}

pub fn next_attempt(it: &QueueItem, now: u64) -> String {
    let next = it.next_attempt / 1000;
    if it.held {
        "on hold".into()
    } else if next <= now {
        "now".into()
    } else {
        format!("in {}", fmt_age(next - now))
    }
}

#[derive(serde::Deserialize)]
pub struct BulkForm {
    #[serde(flatten)]
    filter: QueueFilter,
    action: String,
}

/// The confirmation page of a bulk action: what will be done to which messages.
pub async fn confirm(
    State(app): State<Arc<App>>,
    Extension(v): Extension<Viewer>,
    Query(form): Query<BulkForm>,
) -> Result<Html<String>, PageError> {
    allow(&v, Action::View, Resource::Scoped)?;
    let action = QueueAction::parse(&form.action)
        .ok_or_else(|| PageError::BadRequest(format!("{:?} is not an action", form.action)))?;
    if !bulk_actions(v.role()).contains(&action) {
        return Err(PageError::Forbidden(format!(
            "Your role ({}) may not {} messages.",
            v.role(),
            action.as_str()
        )));
    }
    let f = scoped(&v, form.filter);
    let rows = matching(&app, &v, &f).await;
    let back = format!("/queue?{}", f.query());
    let body = html! {
        @if rows.is_empty() {
            p { "No message matches the filter any more." }
            p { a href=(back) { "Back to the queue" } }
        } @else {
            p.confirm {
                (action.label()) " " strong { (rows.len()) " message(s)" } "?"
                @if action == QueueAction::Delete { " Deleted messages are gone for good: no bounce is sent." }
            }
            ul.plain.ids {
                @for (it, _) in rows.iter().take(50) { li.mono { (it.id) " — " (if it.sender.is_empty() { "<>" } else { &it.sender }) } }
                @if rows.len() > 50 { li { "… and " (rows.len() - 50) " more" } }
            }
            p.note { "The filter is applied again when you confirm: messages that arrived or left meanwhile are counted in the result." }
            form method="post" action="/queue/bulk" {
                (csrf(&v))
                (hidden_filter(&f))
                input type="hidden" name="action" value=(action.as_str());
                button type="submit" class=(if action == QueueAction::Delete { "danger" } else { "" }) {
                    "Yes, " (action.as_str()) " " (rows.len()) " message(s)"
                }
                " "
                a href=(back) { "Cancel" }
            }
        }
    };
    Ok(frame(
        &app,
        &v,
        "/queue",
        &format!("Confirm: {}", action.label()),
        body,
    ))
}

/// The bulk action itself, on the filtered set as it is now; each message checked and
/// journaled on its own.
pub async fn bulk(
    State(app): State<Arc<App>>,
    Extension(v): Extension<Viewer>,
    Form(form): Form<BulkForm>,
) -> Response {
    if let Err(e) = allow(&v, Action::View, Resource::Scoped) {
        return e.into_response();
    }
    let Some(action) = QueueAction::parse(&form.action) else {
        return PageError::BadRequest(format!("{:?} is not an action", form.action))
            .into_response();
    };
    if !bulk_actions(v.role()).contains(&action) {
        return PageError::Forbidden(format!(
            "Your role ({}) may not {} messages.",
            v.role(),
            action.as_str()
        ))
        .into_response();
    }
    let f = scoped(&v, form.filter);
    let rows = matching(&app, &v, &f).await;
    let (mut done, mut failed) = (0usize, Vec::new());
    for (it, owners) in &rows {
        if access::decide(v.role(), action.action(), Resource::Message(owners)) != Verdict::Allow {
            failed.push(format!("{}: not allowed", it.id));
            continue;
        }
        match perform(&app, &v, action, &it.id).await {
            Ok(_) => done += 1,
            Err(e) => failed.push(e),
        }
    }
    let mut text = format!(
        "{}: {done} of {} message(s) done.",
        action.label(),
        rows.len()
    );
    if !failed.is_empty() {
        text.push_str(&format!(
            " Not done: {}",
            failed
                .iter()
                .take(10)
                .cloned()
                .collect::<Vec<_>>()
                .join("; ")
        ));
        if failed.len() > 10 {
            text.push_str(&format!(" (and {} more)", failed.len() - 10));
        }
    }
    app.sessions.set_flash(&v.session.id, text);
    Redirect::to(&format!("/queue?{}", f.query())).into_response()
}
