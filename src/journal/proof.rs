//! A proof of sending (`passerelle track --id QID --proof`, the console's message page): what
//! the journal holds of one message, laid out for an establishment to keep or print. The
//! queue id, Message-ID, envelope, size and SHA-256 of the message as the client sent it,
//! when and from where it was accepted, each delivery attempt with the peer's certificate
//! DN and reply, and the receipts that came back. Never a subject or a body: the journal has
//! neither.

use super::cli::{event_details, s};
use super::read::Tracked;
use serde_json::{json, Value as Json};
use std::fmt::Write as _;

/// The events that make the proof: acceptance, attempts, notifications and receipts.
fn relevant(e: &Json) -> bool {
    !matches!(
        s(e, "kind"),
        Some("held" | "released" | "deleted" | "retried") | None
    )
}

fn accepted(m: &Tracked) -> Option<&Json> {
    m.events.iter().find(|e| s(e, "kind") == Some("accepted"))
}

/// The proof as data (`--format json`).
pub fn json(m: &Tracked) -> Json {
    let acc = accepted(m);
    json!({
        "queue_id": m.queue_id,
        "gateway": m.gateway,
        "message_id": m.message_id,
        "from": m.from,
        "to": m.to,
        "size": m.size,
        "sha256": acc.and_then(|a| s(a, "sha256")),
        "accepted_at": acc.and_then(|a| s(a, "time")),
        "establishment": m.establishment,
        "client": m.client,
        "client_dn": m.client_dn,
        "listener": m.listener,
        "tls": m.tls,
        "events": m.events.iter().filter(|e| relevant(e)).cloned().collect::<Vec<_>>(),
        "note": NOTE,
    })
}

const NOTE: &str =
    "Built from the gateway's journal. The gateway never keeps a subject or a body; \
the SHA-256 identifies the message as the sender's server handed it over (before the gateway's \
Received header): computing it on a kept copy shows it is that message.";

/// The proof as text (`--format text`).
pub fn text(m: &Tracked) -> String {
    let mut o = String::new();
    let acc = accepted(m);
    let _ = writeln!(o, "Proof of sending");
    let _ = writeln!(
        o,
        "  queue id        {} (gateway {})",
        m.queue_id.as_deref().unwrap_or("-"),
        m.gateway
    );
    let _ = writeln!(
        o,
        "  message-id      <{}>",
        m.message_id.as_deref().unwrap_or("")
    );
    let _ = writeln!(o, "  from            <{}>", m.from.as_deref().unwrap_or(""));
    for t in &m.to {
        let _ = writeln!(o, "  to              <{t}>");
    }
    let _ = writeln!(o, "  size            {} bytes", m.size.unwrap_or(0));
    let _ = writeln!(
        o,
        "  sha-256         {}",
        acc.and_then(|a| s(a, "sha256")).unwrap_or("(not recorded)")
    );
    let _ = writeln!(
        o,
        "  accepted        {} from {} on {}{}{}",
        acc.and_then(|a| s(a, "time")).unwrap_or(&m.time),
        m.client.as_deref().unwrap_or("?"),
        m.listener.as_deref().unwrap_or("?"),
        m.establishment
            .as_deref()
            .map(|e| format!(", establishment {e}"))
            .unwrap_or_default(),
        m.tls
            .as_deref()
            .map(|t| format!(", {t}"))
            .unwrap_or_default()
    );
    let _ = writeln!(o, "Delivery and receipts");
    for e in m
        .events
        .iter()
        .filter(|e| relevant(e) && s(e, "kind") != Some("accepted"))
    {
        let _ = writeln!(
            o,
            "  {}  {:<16} {}",
            s(e, "time").unwrap_or("?"),
            s(e, "kind").unwrap_or("?"),
            event_details(e)
        );
    }
    let _ = writeln!(o, "{NOTE}");
    o
}

/// The proof as a printable HTML page (`--format html`, the console's "Proof of sending").
pub fn html(m: &Tracked) -> String {
    let acc = accepted(m);
    let rows: Vec<(&str, String)> = vec![
        (
            "Queue id",
            format!(
                "{} (gateway {})",
                m.queue_id.as_deref().unwrap_or("-"),
                m.gateway
            ),
        ),
        (
            "Message-ID",
            format!("<{}>", m.message_id.as_deref().unwrap_or("")),
        ),
        ("From", format!("<{}>", m.from.as_deref().unwrap_or(""))),
        (
            "To",
            m.to.iter()
                .map(|t| format!("<{t}>"))
                .collect::<Vec<_>>()
                .join(", "),
        ),
        ("Size", format!("{} bytes", m.size.unwrap_or(0))),
        (
            "SHA-256",
            acc.and_then(|a| s(a, "sha256"))
                .unwrap_or("(not recorded)")
                .to_string(),
        ),
        (
            "Accepted",
            format!(
                "{} from {} on {}",
                acc.and_then(|a| s(a, "time")).unwrap_or(&m.time),
                m.client.as_deref().unwrap_or("?"),
                m.listener.as_deref().unwrap_or("?")
            ),
        ),
        (
            "Establishment",
            m.establishment.clone().unwrap_or_else(|| "-".into()),
        ),
    ];
    let events: Vec<&Json> = m
        .events
        .iter()
        .filter(|e| relevant(e) && s(e, "kind") != Some("accepted"))
        .collect();
    maud::html! {
        (maud::DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                title { "Proof of sending " (m.queue_id.as_deref().unwrap_or("")) }
                style { "body{font-family:sans-serif;margin:2em}th{text-align:left;padding-right:1em;vertical-align:top}td,th{border-bottom:1px solid #ccc;padding:.3em}table{border-collapse:collapse}code{word-break:break-all}" }
            }
            body {
                h1 { "Proof of sending" }
                table.proof { tbody {
                    @for (k, v) in &rows { tr { th scope="row" { (k) } td { code { (v) } } } }
                } }
                h2 { "Delivery and receipts" }
                table.timeline {
                    thead { tr { th { "Time" } th { "Event" } th { "Details" } } }
                    tbody {
                        @for e in &events {
                            tr { td { (s(e, "time").unwrap_or("?")) } td { (s(e, "kind").unwrap_or("?")) } td { (event_details(e)) } }
                        }
                    }
                }
                p.note { (NOTE) }
            }
        }
    }
    .into_string()
}
