//! The dashboard: the queue's gauges, throughput of the last hour and day, deliveries by
//! result, TLS failures by reason, certificate, CRL, whitelist and directory health.

use super::super::access::{Action, Resource};
use super::super::charts::{bars, fmt_count, line_chart, Line};
use super::super::queue_view::fmt_age;
use super::super::samples::{self, Bucket};
use super::super::{allow, page as frame, App, PageError, Viewer};
use super::{fmt_hm, fmt_time};
use crate::util::clock::now_s;
use axum::extract::State;
use axum::response::{IntoResponse, Redirect, Response};
use axum::Extension;
use maud::{html, Markup};
use std::collections::BTreeMap;
use std::sync::Arc;

async fn body(app: &App, v: &Viewer) -> Result<Markup, PageError> {
    allow(v, Action::View, Resource::Gateway)?;
    let stats = app.backend.queue.stats().await;
    let series = crate::metrics::series();
    let now = now_s();
    let hour = app.samples.buckets(now, 60, 60);
    let day = app.samples.buckets(now, 1800, 48);
    let since = app.samples.first_time();
    let by_result = group(&series, "passerelle_deliveries_total", &["result"]);
    let by_transport = group(
        &series,
        "passerelle_deliveries_total",
        &["transport", "result"],
    );
    let tls = group(
        &series,
        "passerelle_tls_failures_total",
        &["direction", "reason"],
    );
    let rejected = group(
        &series,
        "passerelle_smtp_rejected_total",
        &["listener", "reply"],
    );
    Ok(html! {
        section aria-labelledby="h-queue" {
            h2 #h-queue { "Queue" }
            dl.cards {
                div { dt { "Messages" } dd { a href="/queue" { (stats.messages) } } }
                div { dt { "Held" } dd { a href="/queue?status=held" { (stats.held) } } }
                div { dt { "Being delivered" } dd { (stats.in_delivery) } }
                div { dt { "Oldest" } dd { @if stats.messages > 0 { (fmt_age(stats.oldest_age)) } @else { "—" } } }
            }
        }
        section aria-labelledby="h-throughput" {
            h2 #h-throughput { "Throughput" }
            p.note {
                @match since {
                    Some(t) => { "Counted by this console since " (fmt_time(t as i64)) " (every 10 s); longer history comes from the journal." }
                    None => { "The first sample is taken within 10 seconds." }
                }
            }
            div.charts {
                (chart("Last hour, per minute", &hour))
                (chart("Last 24 hours, per 30 minutes", &day))
            }
        }
        div.columns {
            section aria-labelledby="h-deliveries" {
                h2 #h-deliveries { "Deliveries by result" }
                (bars("Delivery attempts per recipient since start", &by_result))
                @if !by_transport.is_empty() {
                    (bars("By transport and result", &by_transport))
                }
            }
            section aria-labelledby="h-tls" {
                h2 #h-tls { "TLS failures by reason" }
                (bars("Refused handshakes and certificates since start", &tls))
                h2 { "SMTP refusals" }
                (bars("Replies refusing a command, by listener", &rejected))
            }
        }
        section aria-labelledby="h-health" {
            h2 #h-health { "Certificates, lists and directory" }
            (health(app, &series, now).await)
        }
        section aria-labelledby="h-est" {
            h2 #h-est { "Establishments" }
            @match app.backend.establishments.scopes() {
                Err(e) => p.note { (e) },
                Ok(list) => p { (list.len()) " establishments: see " a href="/establishments" { "Establishments" } "." },
            }
        }
    })
}

/// `/`: the dashboard; an establishment user lands on its establishment's page.
pub async fn page(State(app): State<Arc<App>>, Extension(v): Extension<Viewer>) -> Response {
    if let Some(name) = super::super::access::confined_to(v.role()) {
        return Redirect::to(&format!("/establishments/{name}")).into_response();
    }
    match body(&app, &v).await {
        Ok(b) => frame(&app, &v, "/", "Dashboard", b).into_response(),
        Err(e) => e.into_response(),
    }
}

/// Sums of a counter grouped by some of its labels, largest first.
fn group(series: &[samples::Series], name: &str, by: &[&str]) -> Vec<(String, f64)> {
    let mut m: BTreeMap<String, f64> = BTreeMap::new();
    for s in series.iter().filter(|s| s.name == name) {
        let key = by
            .iter()
            .map(|k| s.label(k).unwrap_or("-"))
            .collect::<Vec<_>>()
            .join(" · ");
        *m.entry(key).or_default() += s.value;
    }
    let mut v: Vec<(String, f64)> = m.into_iter().filter(|(_, n)| *n > 0.0).collect();
    v.sort_by(|a, b| b.1.total_cmp(&a.1));
    v
}

fn chart(title: &str, b: &[Bucket]) -> Markup {
    let first = b.first().map(|x| x.start as i64).unwrap_or(0);
    let last = b.last().map(|x| x.start as i64).unwrap_or(0);
    let mid = (first + last) / 2;
    let (f, m, l) = (fmt_hm(first), fmt_hm(mid), "now".to_string());
    html! {
        (line_chart(title, &[
            Line { label: "accepted", class: "s-accepted", points: b.iter().map(|x| x.accepted).collect() },
            Line { label: "delivered", class: "s-sent", points: b.iter().map(|x| x.sent).collect() },
            Line { label: "deferred or bounced", class: "s-failed", points: b.iter().map(|x| x.failed).collect() },
        ], [&f, &m, &l]))
    }
}

/// Our certificate, the CRLs, the whitelist and the directory, each with a verdict.
async fn health(app: &App, series: &[samples::Series], now: u64) -> Markup {
    let snap = app.backend.snapshot.load_full();
    let now = now as i64;
    let days = |t: i64| (t - now) / 86400;
    let cert = snap.tls.as_ref().and_then(|m| {
        let der = m.chain.first()?;
        let (_, c) = x509_parser::parse_x509_certificate(der.as_ref()).ok()?;
        let dn = crate::pki::dn::Dn::from_cert_der(der.as_ref())
            .map(|d| d.to_string())
            .unwrap_or_default();
        Some((dn, c.validity().not_after.timestamp()))
    });
    let crl_next = app.backend.crls.load().next_update();
    let wl = snap.policy.lists.whitelist.load_full();
    let wl_loaded = samples::sum(series, "passerelle_whitelist_loaded_timestamp_seconds", &[]);
    let directory = snap.policy.lists.directory.load_full().describe();
    let lookups: Vec<(String, f64)> =
        group(series, "passerelle_directory_lookups_total", &["result"]);
    let lookups_text = if lookups.is_empty() {
        "no lookups yet".to_string()
    } else {
        lookups
            .iter()
            .map(|(k, n)| format!("{k}: {}", fmt_count(*n)))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let errors = lookups
        .iter()
        .find(|(k, _)| k == "error")
        .map(|x| x.1)
        .unwrap_or(0.0);
    html! {
        table.health {
            caption.visually-hidden { "Health of the gateway's certificate, CRLs, whitelist and directory" }
            thead { tr { th scope="col" { "What" } th scope="col" { "State" } th scope="col" { "Details" } } }
            tbody {
                tr {
                    th scope="row" { "Our certificate" }
                    @match &cert {
                        Some((dn, until)) => {
                            (verdict(days(*until) >= 30, if days(*until) < 0 { "EXPIRED" } else if days(*until) < 30 { "expires soon" } else { "valid" }))
                            td { (dn) br; "expires " (fmt_time(*until)) " (" (days(*until)) " days)" }
                        }
                        None => { (verdict(false, "none")) td { "no [tls] section: no STARTTLS, no trust space" } }
                    }
                }
                tr {
                    th scope="row" { "CRLs" }
                    @match crl_next {
                        Some(t) => {
                            (verdict(t > now, if t > now { "fresh" } else { "overdue" }))
                            td { "next update by " (fmt_time(t)) }
                        }
                        None => { (verdict(false, "none")) td { "no CRL configured (tls.crls)" } }
                    }
                }
                tr {
                    th scope="row" { "ANS whitelist" }
                    @match &wl {
                        Some(w) => {
                            (verdict(true, "loaded"))
                            td {
                                (fmt_count(w.domain_count() as f64)) " domains, "
                                (fmt_count(w.entry_count() as f64)) " entries, generated "
                                (w.generated().unwrap_or("?"))
                                @if wl_loaded > 0.0 { "; loaded " (fmt_time(wl_loaded as i64)) }
                            }
                        }
                        None => { (verdict(false, "none")) td { "no whitelist loaded" } }
                    }
                }
                tr {
                    th scope="row" { "Directory" }
                    (verdict(errors == 0.0, if errors == 0.0 { "answering" } else { "errors seen" }))
                    td { (directory) "; lookups at RCPT since start: " (lookups_text) }
                }
            }
        }
    }
}

fn verdict(good: bool, text: &str) -> Markup {
    html! {
        td class=(if good { "ok" } else { "warn" }) { (if good { "✓ " } else { "⚠ " }) (text) }
    }
}
