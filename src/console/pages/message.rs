//! `/messages/{id}`: one queued message, its envelope, its header section (never the body;
//! fields that may carry health data hidden), its timeline from the journal, and the actions
//! the user may take on it.

use super::super::access::{self, Action, Resource};
use super::super::hooks::HookError;
use super::super::queue_view::{self, fmt_age};
use super::super::{allow, page as frame, App, PageError, Viewer};
use super::fmt_time;
use super::layout::csrf;
use super::queue::next_attempt;
use crate::queue::{BodyLoc, QueueError};
use crate::util::clock::now_s;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Redirect, Response};
use axum::Extension;
use maud::{html, Markup};
use std::sync::Arc;

/// What may be done to a queued message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QueueAction {
    Retry,
    Hold,
    Release,
    Delete,
}

impl QueueAction {
    pub const ALL: [QueueAction; 4] = [
        QueueAction::Retry,
        QueueAction::Hold,
        QueueAction::Release,
        QueueAction::Delete,
    ];

    pub fn parse(s: &str) -> Option<QueueAction> {
        QueueAction::ALL.into_iter().find(|a| a.as_str() == s)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            QueueAction::Retry => "retry",
            QueueAction::Hold => "hold",
            QueueAction::Release => "release",
            QueueAction::Delete => "delete",
        }
    }

    pub fn label(self) -> &'static str {
        match self {
            QueueAction::Retry => "Retry now",
            QueueAction::Hold => "Hold",
            QueueAction::Release => "Release",
            QueueAction::Delete => "Delete",
        }
    }

    pub fn action(self) -> Action {
        match self {
            QueueAction::Retry => Action::Retry,
            QueueAction::Hold => Action::Hold,
            QueueAction::Release => Action::Release,
            QueueAction::Delete => Action::Delete,
        }
    }
}

/// Does `action` to message `id` (access already checked) and journals it with the user.
pub async fn perform(
    app: &App,
    v: &Viewer,
    action: QueueAction,
    id: &str,
) -> Result<String, String> {
    // Its record's place first: an action that could not be recorded is not done.
    let record = match app.backend.journal.reserve() {
        Ok(r) => r,
        Err(e) => {
            let why = format!("refused: {e}; nothing was done, try again later");
            app.audit(v, action.as_str(), id, &why);
            return Err(why);
        }
    };
    let q = &app.backend.queue;
    let r: Result<String, QueueError> = match action {
        QueueAction::Retry => q.retry(Some(id)).await.map(|n| {
            if n == 0 {
                "not retried: it is held or being delivered".into()
            } else {
                "retry scheduled now".into()
            }
        }),
        QueueAction::Hold => q.hold(id).await.map(|_| "held".into()),
        QueueAction::Release => q
            .release(id)
            .await
            .map(|_| "released for an attempt now".into()),
        QueueAction::Delete => q.delete(id).await.map(|_| "deleted".into()),
    };
    let outcome = match &r {
        Ok(t) => t.clone(),
        Err(e) => e.to_string(),
    };
    record(&app.audit(v, action.as_str(), id, &outcome));
    r.map_err(|e| e.to_string())
}

/// Header fields whose value may carry health data (a subject naming a patient): shown as
/// hidden.
const HIDDEN_FIELDS: [&str; 4] = ["subject", "thread-topic", "keywords", "comments"];
/// The header section is read from the first 256 KiB of the message at most.
const MAX_HEADER: u64 = 256 * 1024;

/// The header fields of a message's beginning, continuation lines unfolded; nothing after the
/// blank line that ends them. Unfolded first, decided after: deciding on the first physical
/// line showed the continuation of a folded Subject (REVIEW B5).
pub fn header_fields(raw: &[u8]) -> Vec<(String, String)> {
    crate::message::header::fields(raw)
        .into_iter()
        .map(|f| {
            if HIDDEN_FIELDS.contains(&f.name.to_ascii_lowercase().as_str()) {
                (f.name, "(hidden: may carry health data)".to_string())
            } else {
                (f.name, f.value)
            }
        })
        .collect()
}

pub async fn page(
    State(app): State<Arc<App>>,
    Extension(v): Extension<Viewer>,
    Path(id): Path<String>,
) -> Response {
    let Some(d) = app.backend.queue.detail(&id).await else {
        return match allow(&v, Action::View, Resource::Scoped) {
            Ok(()) => frame_gone(&app, &v, &id),
            Err(e) => e.into_response(),
        };
    };
    let owners = app.owners(&d.item);
    if let Err(e) = allow(&v, Action::View, Resource::Message(&owners)) {
        return unseen(&app, &v, &id, e);
    }
    let dir = app.backend.queue_dir.clone();
    let loc = BodyLoc {
        len: d.body.len.min(MAX_HEADER),
        ..d.body
    };
    let headers = tokio::task::spawn_blocking(move || crate::queue::spool::read_body(&dir, loc))
        .await
        .map_err(|e| e.to_string())
        .and_then(|r| r.map_err(|e| e.to_string()))
        .map(|raw| header_fields(&raw));
    let timeline = app.backend.journal.timeline(&id).await;
    let now = now_s();
    let env = &d.envelope;
    let it = &d.item;
    let actions: Vec<QueueAction> = QueueAction::ALL
        .into_iter()
        .filter(|a| {
            access::decide(v.role(), a.action(), Resource::Message(&owners))
                == access::Verdict::Allow
        })
        .filter(|a| match a {
            QueueAction::Hold => !it.held,
            QueueAction::Release => it.held,
            _ => true,
        })
        .collect();
    let body = html! {
        @if !actions.is_empty() {
            div.actions role="group" aria-label="Actions on this message" {
                @for a in &actions {
                    @if *a == QueueAction::Delete {
                        a.button.danger href=(format!("/messages/{id}/delete")) { "Delete…" }
                    } @else {
                        form method="post" action=(format!("/messages/{id}/{}", a.as_str())) {
                            (csrf(&v))
                            button type="submit" { (a.label()) }
                        }
                    }
                }
            }
        }
        div.columns {
            section aria-labelledby="h-env" {
                h2 #h-env { "Envelope" }
                table.kv {
                    tbody {
                        tr { th scope="row" { "Queue id" } td.mono { (it.id) } }
                        tr { th scope="row" { "Status" } td { span class=(format!("status {}", queue_view::status(it))) { (queue_view::status(it)) } } }
                        tr { th scope="row" { "Received" } td { (fmt_time(it.received as i64)) " (" (fmt_age(queue_view::age(it, now))) " ago)" } }
                        tr { th scope="row" { "Listener" } td { (env.listener) } }
                        tr { th scope="row" { "Client" } td { (env.client) " (HELO " (env.helo) ")" } }
                        tr { th scope="row" { "Sender" } td { (if it.sender.is_empty() { "<>" } else { &it.sender }) } }
                        tr { th scope="row" { "Size" } td { (it.size) " bytes" } }
                        tr { th scope="row" { "Attempts" } td { (it.attempts) } }
                        tr { th scope="row" { "Next attempt" } td { (next_attempt(it, now)) } }
                        @if let Some(e) = &env.envid { tr { th scope="row" { "ENVID" } td { (e) } } }
                        @if let Some(r) = &env.ret { tr { th scope="row" { "RET" } td { (format!("{r:?}").to_uppercase()) } } }
                        @if !owners.is_empty() { tr { th scope="row" { "Establishment" } td { (owners.join(", ")) } } }
                    }
                }
            }
            section aria-labelledby="h-rcpt" {
                h2 #h-rcpt { "Recipients" }
                table {
                    thead { tr { th scope="col" { "Address" } th scope="col" { "Route · transport" } th scope="col" { "Status" } th scope="col" { "Last error" } } }
                    tbody {
                        @for (r, s) in env.recipients.iter().zip(&it.recipients) {
                            tr {
                                td { (r.address) @if let Some(o) = &r.orcpt { br; small { "ORCPT " (o) } } }
                                td { (r.route) " · " (r.transport) }
                                td { span class=(format!("rcpt {}", s.status)) { (s.status) } }
                                td { @if let Some(e) = &s.last_error { (e) } }
                            }
                        }
                    }
                }
            }
        }
        section aria-labelledby="h-headers" {
            h2 #h-headers { "Header section" }
            p.note { "The body is never shown. Fields that may carry health data (Subject and the like) are hidden." }
            @match &headers {
                Ok(fields) => {
                    table.headers {
                        caption.visually-hidden { "Header fields, in order" }
                        tbody { @for (n, val) in fields { tr { th scope="row" { (n) } td { (val) } } } }
                    }
                }
                Err(e) => p.error { "The message's content could not be read: " (e) " (it may have just been delivered: reload)." }
            }
        }
        section aria-labelledby="h-timeline" {
            h2 #h-timeline { "Timeline" }
            (timeline_markup(&timeline))
        }
    };
    frame(&app, &v, "/queue", &format!("Message {id}"), body).into_response()
}

/// A message the viewer may not see answers exactly as one that does not exist (REVIEW B5:
/// two different 404s told another establishment's queue ids apart from missing ones).
fn unseen(app: &App, v: &Viewer, id: &str, e: PageError) -> Response {
    match e {
        PageError::NotFound => frame_gone(app, v, id),
        other => other.into_response(),
    }
}

fn frame_gone(app: &App, v: &Viewer, id: &str) -> Response {
    let body = html! {
        p { "There is no message " code { (id) } " in the queue: it was delivered, bounced or deleted, or never existed." }
        p { a href="/queue" { "Back to the queue" } }
    };
    (
        StatusCode::NOT_FOUND,
        frame(app, v, "/queue", "Not in the queue", body),
    )
        .into_response()
}

pub fn timeline_markup(t: &Result<Option<super::super::TrackedMessage>, HookError>) -> Markup {
    html! {
        @match t {
            Err(HookError::Unavailable(why)) => p.note { "Not available yet: " (why) "." }
            Err(HookError::Failed(why)) => p.error { "The journal did not answer: " (why) }
            Ok(None) => p { "The journal has nothing on this message yet." }
            Ok(Some(m)) => {
                ol.timeline {
                    @for e in &m.events {
                        li {
                            time { (fmt_time(e.time as i64)) } " " strong { (e.kind) }
                            @for (k, val) in &e.details { " · " @if !k.is_empty() { (k) ": " } (val) }
                        }
                    }
                }
            }
        }
    }
}

/// The message and its owners, or the page that answers instead (404 outside the user's
/// establishment or when it left the queue).
async fn checked(
    app: &App,
    v: &Viewer,
    id: &str,
    action: Action,
) -> Result<crate::queue::QueueItem, Response> {
    let Some(it) = app.backend.queue.show(id).await else {
        return Err(match allow(v, Action::View, Resource::Scoped) {
            Ok(()) => frame_gone(app, v, id),
            Err(e) => e.into_response(),
        });
    };
    let owners = app.owners(&it);
    allow(v, Action::View, Resource::Message(&owners)).map_err(|e| unseen(app, v, id, e))?;
    allow(v, action, Resource::Message(&owners)).map_err(IntoResponse::into_response)?;
    Ok(it)
}

pub async fn confirm_delete(
    State(app): State<Arc<App>>,
    Extension(v): Extension<Viewer>,
    Path(id): Path<String>,
) -> Response {
    let it = match checked(&app, &v, &id, Action::Delete).await {
        Ok(it) => it,
        Err(r) => return r,
    };
    let body = html! {
        p.confirm {
            "Delete message " code { (it.id) } " from " (if it.sender.is_empty() { "<>" } else { &it.sender })
            " to " (it.recipients.len()) " recipient(s)? It is gone for good: no bounce is sent."
        }
        form method="post" action=(format!("/messages/{id}/delete")) {
            (csrf(&v))
            button.danger type="submit" { "Yes, delete it" }
            " "
            a href=(format!("/messages/{id}")) { "Cancel" }
        }
    };
    frame(&app, &v, "/queue", "Delete a message", body).into_response()
}

/// `POST /messages/ID/delete`: its own route, because the confirmation page's GET on the same
/// path made the router answer 405 to the POST, and delete never worked (REVIEW F1).
pub async fn act_delete(
    State(app): State<Arc<App>>,
    Extension(v): Extension<Viewer>,
    Path(id): Path<String>,
) -> Response {
    act(State(app), Extension(v), Path((id, "delete".to_string()))).await
}

pub async fn act(
    State(app): State<Arc<App>>,
    Extension(v): Extension<Viewer>,
    Path((id, action)): Path<(String, String)>,
) -> Response {
    let Some(a) = QueueAction::parse(&action) else {
        return PageError::NotFound.into_response();
    };
    if let Err(r) = checked(&app, &v, &id, a.action()).await {
        return r;
    }
    let text = match perform(&app, &v, a, &id).await {
        Ok(t) => format!("{id}: {t}."),
        Err(e) => format!("{e}."),
    };
    app.sessions.set_flash(&v.session.id, text);
    if a == QueueAction::Delete {
        return Redirect::to("/queue").into_response();
    }
    Redirect::to(&format!("/messages/{id}")).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_folded_subject_is_hidden_whole() {
        let raw = b"Subject: a\r\n tail about patient Y\r\n\tmore\r\nX-MSS-Test: yes\r\n\r\nbody";
        let f = header_fields(raw);
        assert_eq!(f[0].1, "(hidden: may carry health data)");
        assert!(!format!("{f:?}").contains("patient"), "{f:?}");
        let raw = b"X-A: 1\n  two\nsubject: folded\n continued\n\n";
        let f = header_fields(raw);
        assert_eq!(f[0], ("X-A".to_string(), "1 two".to_string()));
        assert!(!format!("{f:?}").contains("continued"), "{f:?}");
    }

    #[test]
    fn header_section_only_with_sensitive_fields_hidden() {
        let raw = b"Received: from a\r\n\tby b\r\nSubject: Dr X about patient Y\r\nX-MSS-Test: yes\r\nFrom: a@b.fr\r\n\r\nBody: not a header\r\n";
        let f = header_fields(raw);
        assert_eq!(f.len(), 4, "{f:?}");
        assert_eq!(f[0], ("Received".into(), "from a by b".into()));
        assert_eq!(f[1].1, "(hidden: may carry health data)");
        assert!(!f
            .iter()
            .any(|(n, v)| n.contains("Body") || v.contains("patient")));
        let lf = header_fields(b"A: 1\n\nB: 2\n");
        assert_eq!(lf, vec![("A".to_string(), "1".to_string())]);
        assert_eq!(QueueAction::parse("hold"), Some(QueueAction::Hold));
        assert_eq!(QueueAction::parse("nuke"), None);
    }
}
