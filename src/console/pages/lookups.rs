//! `/route-test`, `/whitelist`, `/directory`: what `passerelle route test`, `whitelist show`
//! and `directory lookup` print, against the configuration and lists in force.

use super::super::access::{Action, Resource};
use super::super::{allow, page as frame, App, PageError, Viewer};
use crate::policy::explain::{explain, Step};
use axum::extract::{Query, State};
use axum::response::Html;
use axum::Extension;
use maud::html;
use std::sync::Arc;
use std::time::Duration;

#[derive(serde::Deserialize, Default)]
#[serde(default)]
pub struct RouteQuery {
    address: String,
    listener: String,
}

pub async fn route_test(
    State(app): State<Arc<App>>,
    Extension(v): Extension<Viewer>,
    Query(q): Query<RouteQuery>,
) -> Result<Html<String>, PageError> {
    allow(&v, Action::View, Resource::Gateway)?;
    let snap = app.backend.snapshot.load_full();
    let listeners: Vec<String> = snap
        .config
        .listener
        .iter()
        .map(|l| l.name.clone())
        .collect();
    let address = q.address.trim();
    let result = if address.is_empty() {
        None
    } else {
        let listener = (!q.listener.is_empty()).then_some(q.listener.as_str());
        // The directory may be an LDAP server that is slow to answer.
        Some(
            tokio::time::timeout(
                Duration::from_secs(30),
                explain(&snap.config, &snap.policy, listener, address, None),
            )
            .await
            .map_err(|_| "no answer within 30 s".to_string())
            .and_then(|r| r.map_err(|e| e.to_string())),
        )
    };
    let body = html! {
        form.inline method="get" action="/route-test" {
            p {
                label for="address" { "Recipient address" }
                input #address name="address" type="text" value=(address) required placeholder="dr.martin@chu-exemple.mssante.fr";
            }
            p {
                label for="listener" { "Listener" }
                select #listener name="listener" {
                    @for l in &listeners { option value=(l) selected[q.listener == *l] { (l) } }
                }
            }
            p.buttons { button type="submit" { "Test" } }
        }
        @match &result {
            None => p.note { "What RCPT TO would answer for an address on a listener, and why: each route considered, the transport, the TLS policy, the whitelist and the directory (as " code { "passerelle route test" } ")." }
            Some(Err(e)) => p.error role="alert" { (e) }
            Some(Ok(e)) => {
                section #route-result aria-labelledby="h-result" {
                    h2 #h-result {
                        @if e.accepted { span.ok { "Accepted" } } @else { span.warn { "Refused" } }
                    }
                    p { "Listener " strong { (e.listener) } " (" (e.listener_address) ")" }
                    ol.steps {
                        @for s in &e.steps {
                            li class=(step_class(s)) { (s) }
                        }
                    }
                }
            }
        }
    };
    Ok(frame(&app, &v, "/route-test", "Route test", body))
}

fn step_class(s: &Step) -> &'static str {
    match s {
        Step::Accepted { .. } => "verdict ok",
        Step::Rejected(_) | Step::Refused(_) => "verdict warn",
        Step::Matched { .. } => "matched",
        Step::NoMatch { .. } => "dim",
        _ => "",
    }
}

#[derive(serde::Deserialize, Default)]
#[serde(default)]
pub struct DomainQuery {
    domain: String,
}

pub async fn whitelist(
    State(app): State<Arc<App>>,
    Extension(v): Extension<Viewer>,
    Query(q): Query<DomainQuery>,
) -> Result<Html<String>, PageError> {
    allow(&v, Action::View, Resource::Gateway)?;
    let snap = app.backend.snapshot.load_full();
    let list = snap.policy.lists.whitelist.load_full();
    let domain = q
        .domain
        .trim()
        .trim_start_matches('@')
        .trim_end_matches('.')
        .to_ascii_lowercase();
    let file = snap
        .config
        .whitelist
        .as_ref()
        .map(|w| w.file.display().to_string());
    let body = html! {
        @match (&list, &file) {
            (Some(w), Some(f)) => p { "In force: " code { (f) } ", " (w.domain_count()) " domains, " (w.entry_count()) " entries, generated " (w.generated().unwrap_or("?")) "." }
            _ => p.warn { "No ANS whitelist is loaded ([whitelist] file)." }
        }
        form.inline method="get" action="/whitelist" {
            p {
                label for="domain" { "Domain" }
                input #domain name="domain" type="text" value=(domain) required placeholder="ch-exemple.mssante.fr";
            }
            p.buttons { button type="submit" { "Look up" } }
        }
        @if let (false, Some(w)) = (domain.is_empty(), &list) {
            section #whitelist-result {
                @let entries = w.entries(&domain);
                @if entries.is_empty() {
                    h2 { span.warn { (domain) " is not declared" } }
                    p { "Mail to this domain through a route with whitelist = true is refused at RCPT." }
                } @else {
                    h2 { span.ok { (domain) " is declared" } }
                    p { (entries.len()) " operator certificate DN(s): the peer's certificate subject must be one of them." }
                    table {
                        thead { tr { th scope="col" { "Operator certificate DN" } th scope="col" { "Description" } th scope="col" { "Updated" } } }
                        tbody { @for e in entries { tr { td.mono { (e.dn) } td { (e.description) } td { (e.date_maj) } } } }
                    }
                }
            }
        }
    };
    Ok(frame(&app, &v, "/whitelist", "Whitelist", body))
}

#[derive(serde::Deserialize, Default)]
#[serde(default)]
pub struct AddressQuery {
    address: String,
}

pub async fn directory(
    State(app): State<Arc<App>>,
    Extension(v): Extension<Viewer>,
    Query(q): Query<AddressQuery>,
) -> Result<Html<String>, PageError> {
    use crate::policy::Lookup;
    allow(&v, Action::View, Resource::Gateway)?;
    let snap = app.backend.snapshot.load_full();
    let dir = snap.policy.lists.directory.load_full();
    let address = q.address.trim().trim_matches(['<', '>']).to_string();
    let answer = if address.is_empty() {
        None
    } else {
        Some(
            tokio::time::timeout(Duration::from_secs(30), dir.lookup(&address))
                .await
                .map_err(|_| "no answer within 30 s".to_string())
                .and_then(|r| r.map_err(|e| e.to_string())),
        )
    };
    let body = html! {
        p { "Directory in force: " code { (dir.describe()) } "." }
        form.inline method="get" action="/directory" {
            p {
                label for="address" { "Address" }
                input #address name="address" type="text" value=(address) required placeholder="dr.martin@chu-exemple.mssante.fr";
            }
            p.buttons { button type="submit" { "Look up" } }
        }
        @if let Some(a) = &answer {
            section #directory-result {
                @match a {
                    Ok(Lookup::Found { bal_type, .. }) => {
                        h2 { span.ok { (address) " is known" } }
                        p { "BAL type " strong { (bal_type) } "." }
                    }
                    Ok(Lookup::NotFound) => {
                        h2 { span.warn { (address) " is unknown" } }
                        p { "RCPT through a route with directory = true answers 550 5.1.1." }
                    }
                    Err(e) => {
                        h2 { span.warn { "The directory did not answer" } }
                        p { (e) " (RCPT answers 451 4.4.3 meanwhile)." }
                    }
                }
            }
        }
    };
    Ok(frame(&app, &v, "/directory", "Directory lookup", body))
}
