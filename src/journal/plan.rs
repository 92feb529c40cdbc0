//! Turns a batch of events into the rows both writers store, in the order they must be
//! applied: messages, recipients, events, recipient statuses, message statuses. Pure, so the
//! SQLite and PostgreSQL writers store exactly the same thing.
//!
//! A delivery or admin event whose message row is missing (its acceptance was dropped while
//! the database was down, or the journal was off) brings a minimal row with it, so the
//! message can still be found by id and recipient.

use super::event::{Destination, Event, EventBody, Origin, Outcome};
use std::collections::{HashMap, HashSet};

#[derive(Debug, Clone, PartialEq)]
pub struct MessageRow {
    pub qid: String,
    /// A real queue id (false: the journal's own reference for a refusal).
    pub queued: bool,
    pub time: i64,
    pub status: &'static str,
    pub origin: Option<String>,
    pub listener: Option<String>,
    pub establishment: Option<String>,
    pub client_ip: Option<String>,
    pub client_dn: Option<String>,
    pub tls: Option<String>,
    pub sender: Option<String>,
    pub message_id: Option<String>,
    pub size: Option<i64>,
    pub nrcpt: i32,
}

#[derive(Debug, Clone, PartialEq)]
pub struct RecipientRow {
    pub qid: String,
    pub idx: i32,
    pub address: String,
    pub route: Option<String>,
    pub transport: Option<String>,
    pub bal_type: Option<String>,
    pub destination: Option<String>,
    pub status: &'static str,
}

/// One event row. `None` columns are filled by the writer from the message and recipient rows
/// (origin, establishment, the mailbox the event counts for, BAL type).
#[derive(Debug, Clone, PartialEq)]
pub struct EventRow {
    pub qid: String,
    pub time: i64,
    pub kind: &'static str,
    pub rcpt: Option<String>,
    pub idx: Option<i32>,
    pub origin: Option<String>,
    pub destination: Option<String>,
    pub establishment: Option<String>,
    pub mailbox: Option<String>,
    pub peer: Option<String>,
    pub reason: Option<String>,
    pub tls_failure: Option<String>,
    pub bal_type: Option<String>,
    /// The event's details as a JSON object.
    pub details: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MsgStatus {
    /// From the recipients' statuses (see `schema::RECOMPUTE_STATUS`).
    Recompute,
    Set(&'static str),
}

#[derive(Debug, Default)]
pub struct Plan {
    pub messages: Vec<MessageRow>,
    pub recipients: Vec<RecipientRow>,
    pub events: Vec<EventRow>,
    /// Last status of each touched recipient (one row per recipient).
    pub rcpt_status: Vec<(String, i32, &'static str)>,
    /// Last directive for each touched message, with the time of the event.
    pub msg_status: Vec<(String, MsgStatus, i64)>,
}

/// Text as stored: PostgreSQL refuses NUL in text, and nobody needs one.
fn clean(s: &str) -> String {
    if s.contains('\0') {
        s.replace('\0', "")
    } else {
        s.to_string()
    }
}

fn opt(s: Option<&str>) -> Option<String> {
    s.filter(|v| !v.is_empty()).map(clean)
}

fn lower(s: &str) -> String {
    clean(&s.to_ascii_lowercase())
}

/// The event's details as stored: what the row's columns already say (the queue id, the
/// outcome) is left out, and an attempt's diagnostic when the reply says the same.
fn details<T: serde::Serialize>(v: &T) -> String {
    let mut j = serde_json::to_value(v).unwrap_or_default();
    if let Some(o) = j.as_object_mut() {
        o.remove("queue_id");
        o.remove("outcome");
        if o.get("reply").is_some_and(|r| !r.is_null()) {
            o.remove("diagnostic");
        }
    }
    j.to_string()
}

pub fn plan(batch: &[Event]) -> Plan {
    let mut p = Plan::default();
    let mut real: HashSet<&str> = HashSet::new();
    let mut stubs: Vec<MessageRow> = Vec::new();
    let mut stub_seen: HashSet<String> = HashSet::new();
    let mut stub_rcpts: Vec<RecipientRow> = Vec::new();
    let mut rcpt_status: HashMap<(String, i32), (usize, &'static str)> = HashMap::new();
    let mut msg_status: HashMap<String, (usize, MsgStatus, i64)> = HashMap::new();
    let mut seq = 0usize;
    let mut stub = |qid: &str, time: i64, p_real: &HashSet<&str>| {
        if !p_real.contains(qid) && stub_seen.insert(qid.to_string()) {
            stubs.push(MessageRow {
                qid: qid.to_string(),
                queued: true,
                time,
                status: "queued",
                origin: None,
                listener: None,
                establishment: None,
                client_ip: None,
                client_dn: None,
                tls: None,
                sender: None,
                message_id: None,
                size: None,
                nrcpt: 0,
            });
        }
    };
    for ev in batch {
        let t = ev.time as i64;
        seq += 1;
        match &ev.body {
            EventBody::Accepted(a) => {
                let origin = a.client.origin;
                let sender = lower(&a.from);
                real.insert(a.queue_id.as_str());
                p.messages.push(MessageRow {
                    qid: clean(&a.queue_id),
                    queued: true,
                    time: t,
                    status: "queued",
                    origin: origin.map(|o| o.as_str().to_string()),
                    listener: opt(Some(&a.client.listener)),
                    establishment: opt(a.client.establishment.as_deref()),
                    client_ip: opt(Some(&a.client.ip)),
                    client_dn: opt(a.client.dn.as_deref()),
                    tls: opt(a.client.tls.as_deref()),
                    sender: Some(sender.clone()),
                    message_id: opt(a.message_id.as_deref()),
                    size: Some(a.size as i64),
                    nrcpt: a.recipients.len() as i32,
                });
                for (i, r) in a.recipients.iter().enumerate() {
                    p.recipients.push(RecipientRow {
                        qid: clean(&a.queue_id),
                        idx: i as i32,
                        address: lower(&r.address),
                        route: opt(Some(&r.route)),
                        transport: opt(Some(&r.transport)),
                        bal_type: opt(r.bal_type.as_deref()),
                        destination: r.destination.map(|d| d.as_str().to_string()),
                        status: "queued",
                    });
                }
                let mailbox = (origin == Some(Origin::Establishment) && !sender.is_empty())
                    .then(|| sender.clone());
                let peer = (origin == Some(Origin::TrustSpace))
                    .then(|| opt(a.client.dn.as_deref()).or_else(|| opt(Some(&a.client.ip))))
                    .flatten();
                p.events.push(EventRow {
                    qid: clean(&a.queue_id),
                    time: t,
                    kind: "accepted",
                    rcpt: None,
                    idx: None,
                    origin: origin.map(|o| o.as_str().to_string()),
                    destination: None,
                    establishment: opt(a.client.establishment.as_deref()),
                    mailbox,
                    peer,
                    reason: None,
                    tls_failure: None,
                    bal_type: None,
                    details: details(a),
                });
            }
            EventBody::Refused(r) => {
                // A refusal is its own entry, under a journal reference in the queue id space.
                let qid = crate::message::new_queue_id();
                let origin = r.client.origin;
                let from = r.from.as_deref().map(lower);
                let to = r.to.as_deref().map(lower);
                p.messages.push(MessageRow {
                    qid: qid.clone(),
                    queued: false,
                    time: t,
                    status: "refused",
                    origin: origin.map(|o| o.as_str().to_string()),
                    listener: opt(Some(&r.client.listener)),
                    establishment: opt(r.client.establishment.as_deref()),
                    client_ip: opt(Some(&r.client.ip)),
                    client_dn: opt(r.client.dn.as_deref()),
                    tls: opt(r.client.tls.as_deref()),
                    sender: from.clone(),
                    message_id: None,
                    size: None,
                    nrcpt: i32::from(to.is_some()),
                });
                if let Some(to) = &to {
                    p.recipients.push(RecipientRow {
                        qid: qid.clone(),
                        idx: 0,
                        address: to.clone(),
                        route: None,
                        transport: None,
                        bal_type: None,
                        destination: None,
                        status: "refused",
                    });
                }
                let mailbox = match origin {
                    Some(Origin::TrustSpace) => to.clone(),
                    _ => from.clone().filter(|f| !f.is_empty()),
                };
                let peer = (origin == Some(Origin::TrustSpace))
                    .then(|| opt(r.client.dn.as_deref()).or_else(|| opt(Some(&r.client.ip))))
                    .flatten();
                p.events.push(EventRow {
                    qid,
                    time: t,
                    kind: "refused",
                    rcpt: to,
                    idx: None,
                    origin: origin.map(|o| o.as_str().to_string()),
                    destination: None,
                    establishment: opt(r.client.establishment.as_deref()),
                    mailbox,
                    peer,
                    reason: Some(clean(&r.reason)),
                    tls_failure: opt(r.tls_failure.as_deref()),
                    bal_type: None,
                    details: details(r),
                });
            }
            EventBody::Attempt(a) => {
                let qid = clean(&a.queue_id);
                let idx = a.index as i32;
                stub(&qid, t, &real);
                stub_rcpts.push(RecipientRow {
                    qid: qid.clone(),
                    idx,
                    address: lower(&a.to),
                    route: None,
                    transport: opt(Some(&a.transport)),
                    bal_type: None,
                    destination: a.destination.map(|d| d.as_str().to_string()),
                    status: "queued",
                });
                let status = match a.outcome {
                    Outcome::Delivered => "delivered",
                    Outcome::Deferred => "deferred",
                    Outcome::Bounced | Outcome::Expired => "bounced",
                };
                rcpt_status.insert((qid.clone(), idx), (seq, status));
                msg_status.insert(qid.clone(), (seq, MsgStatus::Recompute, t));
                let peer = (a.destination == Some(Destination::TrustSpace))
                    .then(|| {
                        opt(a.peer_dn.as_deref())
                            .or_else(|| opt(a.mx.as_deref()))
                            .or_else(|| opt(a.next_hop.as_deref()))
                    })
                    .flatten();
                p.events.push(EventRow {
                    qid,
                    time: t,
                    kind: a.outcome.as_str(),
                    rcpt: Some(lower(&a.to)),
                    idx: Some(idx),
                    origin: None,
                    destination: a.destination.map(|d| d.as_str().to_string()),
                    establishment: None,
                    mailbox: None,
                    peer,
                    reason: None,
                    tls_failure: opt(a.tls_failure.as_deref()),
                    bal_type: None,
                    details: details(a),
                });
            }
            EventBody::Dsn(d) => {
                let qid = clean(&d.queue_id);
                stub(&qid, t, &real);
                p.events.push(EventRow {
                    qid,
                    time: t,
                    kind: "dsn",
                    rcpt: opt(Some(&d.to)).map(|s| s.to_ascii_lowercase()),
                    idx: None,
                    origin: None,
                    destination: None,
                    establishment: None,
                    mailbox: None,
                    peer: None,
                    reason: None,
                    tls_failure: None,
                    bal_type: None,
                    details: details(d),
                });
            }
            EventBody::Admin(a) => {
                let qid = clean(&a.queue_id);
                stub(&qid, t, &real);
                let directive = match a.action {
                    super::AdminAction::Held => Some(MsgStatus::Set("held")),
                    super::AdminAction::Released => Some(MsgStatus::Recompute),
                    super::AdminAction::Deleted => Some(MsgStatus::Set("deleted")),
                    super::AdminAction::Retried => None,
                };
                if let Some(d) = directive {
                    msg_status.insert(qid.clone(), (seq, d, t));
                }
                p.events.push(EventRow {
                    qid,
                    time: t,
                    kind: a.action.as_str(),
                    rcpt: None,
                    idx: None,
                    origin: None,
                    destination: None,
                    establishment: None,
                    mailbox: None,
                    peer: None,
                    reason: None,
                    tls_failure: None,
                    bal_type: None,
                    details: details(a),
                });
            }
        }
    }
    // Stubs after the real rows: they only land where no row exists (insert-or-ignore).
    p.messages
        .extend(stubs.into_iter().filter(|s| !real.contains(s.qid.as_str())));
    let mut seen_rcpt = HashSet::new();
    p.recipients.extend(
        stub_rcpts
            .into_iter()
            .filter(|r| seen_rcpt.insert((r.qid.clone(), r.idx))),
    );
    let mut rs: Vec<_> = rcpt_status.into_iter().collect();
    rs.sort_by_key(|(_, (seq, _))| *seq);
    p.rcpt_status = rs.into_iter().map(|((q, i), (_, s))| (q, i, s)).collect();
    let mut ms: Vec<_> = msg_status.into_iter().collect();
    ms.sort_by_key(|(_, (seq, _, _))| *seq);
    p.msg_status = ms.into_iter().map(|(q, (_, d, t))| (q, d, t)).collect();
    p
}

#[cfg(test)]
pub(crate) mod tests {
    use super::super::event::*;
    use super::*;

    pub fn client(listener: &str, origin: Origin) -> Client {
        Client {
            listener: listener.into(),
            origin: Some(origin),
            ip: "127.0.0.1".into(),
            ..Client::default()
        }
    }

    pub fn accepted(qid: &str, t: u64, from: &str, to: &[&str]) -> Event {
        Event {
            time: t,
            body: EventBody::Accepted(Box::new(Accepted {
                queue_id: qid.into(),
                message_id: Some(format!("{qid}@test")),
                from: from.into(),
                recipients: to
                    .iter()
                    .map(|a| AcceptedRcpt {
                        address: a.to_string(),
                        route: "local".into(),
                        transport: "etablissement".into(),
                        destination: Some(Destination::Mailbox),
                        bal_type: Some("PER".into()),
                    })
                    .collect(),
                size: 1234,
                client: client("etablissement", Origin::Establishment),
            })),
        }
    }

    pub fn attempt(qid: &str, t: u64, idx: u32, to: &str, outcome: Outcome) -> Event {
        Event {
            time: t,
            body: EventBody::Attempt(Box::new(Attempt {
                queue_id: qid.into(),
                index: idx,
                to: to.into(),
                outcome,
                transport: "etablissement".into(),
                destination: Some(Destination::Mailbox),
                next_hop: Some("127.0.0.1:10026".into()),
                mx: None,
                remote_ip: Some("127.0.0.1".into()),
                tls_version: None,
                cipher: None,
                peer_dn: None,
                reply: Some(ReplyInfo {
                    code: 250,
                    status: Some("2.0.0".into()),
                    text: "Ok".into(),
                }),
                diagnostic: "host 127.0.0.1[127.0.0.1]:10026 said: 250 2.0.0 Ok".into(),
                tls_failure: None,
                duration_ms: 12,
                attempt: 1,
            })),
        }
    }

    #[test]
    fn rows_in_order_with_stubs_and_last_status() {
        let batch = vec![
            accepted("A1", 1000, "Sec@Chu.fr", &["dr@chu.fr", "x@chu.fr"]),
            attempt("A1", 1100, 0, "dr@chu.fr", Outcome::Deferred),
            attempt("A1", 1200, 0, "dr@chu.fr", Outcome::Delivered),
            attempt("B2", 1300, 1, "y@chu.fr", Outcome::Bounced),
            Event {
                time: 1400,
                body: EventBody::Admin(Admin {
                    queue_id: "C3".into(),
                    action: AdminAction::Held,
                    user: "cli".into(),
                }),
            },
        ];
        let p = plan(&batch);
        let qids: Vec<&str> = p.messages.iter().map(|m| m.qid.as_str()).collect();
        assert_eq!(
            qids,
            ["A1", "B2", "C3"],
            "real row first, stubs after, no stub for A1"
        );
        assert_eq!(p.messages[0].sender.as_deref(), Some("sec@chu.fr"));
        assert_eq!(p.events.len(), 5);
        assert_eq!(p.events[0].mailbox.as_deref(), Some("sec@chu.fr"));
        assert_eq!(
            p.rcpt_status,
            vec![
                ("A1".to_string(), 0, "delivered"),
                ("B2".to_string(), 1, "bounced")
            ]
        );
        assert_eq!(
            p.msg_status,
            vec![
                ("A1".to_string(), MsgStatus::Recompute, 1200),
                ("B2".to_string(), MsgStatus::Recompute, 1300),
                ("C3".to_string(), MsgStatus::Set("held"), 1400),
            ]
        );
        // Accepted recipients, then one stub per (message, index) of the attempts.
        let r: Vec<(&str, i32)> = p
            .recipients
            .iter()
            .map(|r| (r.qid.as_str(), r.idx))
            .collect();
        assert_eq!(r, [("A1", 0), ("A1", 1), ("A1", 0), ("B2", 1)]);
        assert!(!p.events[0].details.contains("body"));
    }

    #[test]
    fn refusal_is_its_own_entry() {
        let ev = Event {
            time: 5,
            body: EventBody::Refused(Box::new(Refusal {
                stage: Stage::Rcpt,
                reason: "unknown-recipient".into(),
                reply: ReplyInfo {
                    code: 550,
                    status: Some("5.1.1".into()),
                    text: "unknown".into(),
                },
                client: client("trust-space", Origin::TrustSpace),
                from: Some("a@op.fr".into()),
                to: Some("Nobody@chu.fr".into()),
                tls_failure: None,
            })),
        };
        let p = plan(&[ev]);
        assert_eq!(p.messages.len(), 1);
        assert!(!p.messages[0].queued);
        assert_eq!(p.messages[0].status, "refused");
        assert_eq!(p.recipients[0].address, "nobody@chu.fr");
        assert_eq!(p.events[0].mailbox.as_deref(), Some("nobody@chu.fr"));
        assert_eq!(p.events[0].peer.as_deref(), Some("127.0.0.1"));
        assert_eq!(p.events[0].reason.as_deref(), Some("unknown-recipient"));
    }
}
