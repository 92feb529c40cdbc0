//! Turns a batch of events into the rows both writers store, in the order they must be
//! applied: messages, recipients, events, recipient statuses, message statuses. Pure, so the
//! SQLite and PostgreSQL writers store exactly the same thing.
//!
//! A delivery or admin event whose message row is missing (its acceptance was dropped while
//! the database was down, or the journal was off) brings a minimal row with it, so the
//! message can still be found by id and recipient.

use super::event::{
    Accepted, AcceptedRcpt, Attempt, Client, Destination, Event, EventBody, Origin, Outcome,
    ReplyInfo,
};
use super::schema::day;
use serde_json::Value;
use std::collections::{HashMap, HashSet};

#[derive(Debug, Clone, PartialEq)]
pub struct MessageRow {
    pub qid: String,
    /// A real queue id (false: the journal's own reference for a refusal).
    pub queued: bool,
    pub time: i64,
    /// Time of the last event that changed the status (pruning keeps what is recent).
    pub updated: i64,
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
    /// `schema::day(time)`: leads the lookups by sender and Message-ID.
    pub day: i64,
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
    /// Its message row's `day`: leads the lookup by address.
    pub day: i64,
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
    /// Every column is final (its message row is in the same batch): no join needed.
    pub resolved: bool,
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
    /// Receipts to join to the message they answer (by its Message-ID, in the writer).
    pub receipts: Vec<ReceiptRow>,
}

/// One recipient's line of a receipt, for the message whose Message-ID is `message_id`
/// (looked up among the messages of the last [`RECEIPT_DAYS`] days).
#[derive(Debug, Clone, PartialEq)]
pub struct ReceiptRow {
    /// Which notification of the batch it came from (for counting matched notifications).
    pub report: usize,
    /// `dsn` or `mdn`.
    pub kind_of_report: &'static str,
    /// The original's queue id, from our ENVID (then `message_id` is not needed).
    pub queue_id: Option<String>,
    pub message_id: String,
    pub time: i64,
    pub kind: &'static str,
    pub rcpt: String,
    pub details: String,
    /// The days probed: the receipt's day and the [`RECEIPT_DAYS`] before.
    pub days: Vec<i64>,
}

/// How far back a receipt looks for its message: read receipts come days, sometimes weeks,
/// after the message; one probe per day of the (day, message_id) index.
pub const RECEIPT_DAYS: i64 = 60;

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
    details_value(v).to_string()
}

fn details_value<T: serde::Serialize>(v: &T) -> Value {
    let mut j = serde_json::to_value(v).unwrap_or_default();
    if let Some(o) = j.as_object_mut() {
        o.remove("queue_id");
        o.remove("outcome");
        if o.get("reply").is_some_and(|r| !r.is_null()) {
            o.remove("diagnostic");
        }
    }
    j
}

/// An acceptance's details as its message row and recipient rows alone tell them (all but the
/// HELO): `track` lays the stored rest over this, so the writer stores only that rest, not a
/// second copy of the rows (440 of the ~1,400 bytes a message cost the journal).
pub fn implied_accepted(m: &MessageRow, rcpts: &[RecipientRow]) -> Value {
    fn parse<T: serde::de::DeserializeOwned>(s: &Option<String>) -> Option<T> {
        serde_json::from_value(Value::String(s.clone()?)).ok()
    }
    let a = Accepted {
        queue_id: String::new(),
        message_id: m.message_id.clone(),
        from: m.sender.clone().unwrap_or_default(),
        recipients: rcpts
            .iter()
            .map(|r| AcceptedRcpt {
                address: r.address.clone(),
                route: r.route.clone().unwrap_or_default(),
                transport: r.transport.clone().unwrap_or_default(),
                destination: parse(&r.destination),
                bal_type: r.bal_type.clone(),
            })
            .collect(),
        size: m.size.unwrap_or(0).max(0) as u64,
        client: Client {
            listener: m.listener.clone().unwrap_or_default(),
            origin: parse(&m.origin),
            establishment: m.establishment.clone(),
            ip: m.client_ip.clone().unwrap_or_default(),
            helo: None,
            dn: m.client_dn.clone(),
            tls: m.tls.clone(),
        },
        sha256: None,
    };
    details_value(&a)
}

/// `stored` laid over `implied`, key by key and one level into objects (the client).
pub fn merge_details(mut implied: Value, stored: &Value) -> Value {
    let (Some(i), Some(s)) = (implied.as_object_mut(), stored.as_object()) else {
        return stored.clone();
    };
    for (k, v) in s {
        match (i.get_mut(k), v) {
            (Some(Value::Object(io)), Value::Object(so)) => {
                io.extend(so.iter().map(|(a, b)| (a.clone(), b.clone())));
            }
            _ => {
                i.insert(k.clone(), v.clone());
            }
        }
    }
    implied
}

/// What an acceptance's details say beyond `implied`: the keys (and client keys) with another
/// value or none there. Laid over `implied` ([`merge_details`]) that gives the details back:
/// the rows are made from the same acceptance, so they say nothing it does not.
fn accepted_details(full: &Value, implied: &Value) -> String {
    let (Some(f), Some(i)) = (full.as_object(), implied.as_object()) else {
        return full.to_string();
    };
    let mut rest = serde_json::Map::new();
    for (k, v) in f {
        match (v, i.get(k)) {
            (v, Some(iv)) if v == iv => {}
            (Value::Object(fo), Some(Value::Object(io))) => {
                let sub: serde_json::Map<String, Value> = fo
                    .iter()
                    .filter(|(sk, sv)| io.get(*sk) != Some(*sv))
                    .map(|(a, b)| (a.clone(), b.clone()))
                    .collect();
                if !sub.is_empty() {
                    rest.insert(k.clone(), Value::Object(sub));
                }
            }
            _ => {
                rest.insert(k.clone(), v.clone());
            }
        }
    }
    Value::Object(rest).to_string()
}

/// An attempt's details exactly as [`details`] makes them (the same keys, in `Value`'s sorted
/// order, the same omissions), written straight from the event: attempts are half of the
/// journal's events, and the round trip through a `serde_json::Value` (a map built, keys
/// removed, then printed) was most of the planning's cost. With [`accepted_details_direct`],
/// planning fell from 2.6 to 0.6 µs per event (`journal_fill --cost`). The destructuring
/// names every field, so a field added to [`Attempt`] does not compile until it is placed
/// here; the tests compare both ways byte for byte.
fn attempt_details(a: &Attempt) -> String {
    #[derive(serde::Serialize)]
    struct View<'a> {
        attempt: u32,
        #[serde(skip_serializing_if = "Option::is_none")]
        cipher: Option<&'a str>,
        #[serde(skip_serializing_if = "Option::is_none")]
        destination: Option<Destination>,
        #[serde(skip_serializing_if = "Option::is_none")]
        diagnostic: Option<&'a str>,
        duration_ms: u64,
        index: u32,
        #[serde(skip_serializing_if = "Option::is_none")]
        mx: Option<&'a str>,
        #[serde(skip_serializing_if = "Option::is_none")]
        next_hop: Option<&'a str>,
        #[serde(skip_serializing_if = "Option::is_none")]
        peer_dn: Option<&'a str>,
        #[serde(skip_serializing_if = "Option::is_none")]
        remote_ip: Option<&'a str>,
        #[serde(skip_serializing_if = "Option::is_none")]
        reply: Option<&'a ReplyInfo>,
        #[serde(skip_serializing_if = "Option::is_none")]
        tls_failure: Option<&'a str>,
        #[serde(skip_serializing_if = "Option::is_none")]
        tls_version: Option<&'a str>,
        to: &'a str,
        transport: &'a str,
    }
    let Attempt {
        queue_id: _,
        index,
        to,
        outcome: _,
        transport,
        destination,
        next_hop,
        mx,
        remote_ip,
        tls_version,
        cipher,
        peer_dn,
        reply,
        diagnostic,
        tls_failure,
        duration_ms,
        attempt,
    } = a;
    let v = View {
        attempt: *attempt,
        cipher: cipher.as_deref(),
        destination: *destination,
        // The reply says it already (see `details_value`).
        diagnostic: reply.is_none().then_some(diagnostic.as_str()),
        duration_ms: *duration_ms,
        index: *index,
        mx: mx.as_deref(),
        next_hop: next_hop.as_deref(),
        peer_dn: peer_dn.as_deref(),
        remote_ip: remote_ip.as_deref(),
        reply: reply.as_ref(),
        tls_failure: tls_failure.as_deref(),
        tls_version: tls_version.as_deref(),
        to,
        transport,
    };
    serde_json::to_string(&v).unwrap_or_else(|_| details(a))
}

/// An acceptance's details when its rows give every other value back unchanged, the common
/// case (addresses already in lower case, no empty optional value, no NUL): then only the
/// HELO and the SHA-256 are left, written directly instead of comparing two `Value` trees
/// ([`accepted_details`] over [`implied_accepted`]). `None` when a value would come back
/// from the rows otherwise: the general comparison then finds which. Every field is named,
/// as in [`attempt_details`]; the tests compare both ways byte for byte.
fn accepted_details_direct(a: &Accepted) -> Option<String> {
    /// Comes back the same through `opt(Some(s))` and `unwrap_or_default` (empty included).
    fn kept(s: &str) -> bool {
        !s.contains('\0')
    }
    /// Comes back the same through `opt(s)`: `None`, or not empty.
    fn kept_opt(s: &Option<String>) -> bool {
        s.as_deref().is_none_or(|v| !v.is_empty() && kept(v))
    }
    /// Comes back the same through `lower`.
    fn kept_lower(s: &str) -> bool {
        kept(s) && !s.bytes().any(|b| b.is_ascii_uppercase())
    }
    let Accepted {
        queue_id: _,
        message_id,
        from,
        recipients,
        size,
        client,
        sha256,
    } = a;
    let Client {
        listener,
        origin: _,
        establishment,
        ip,
        helo,
        dn,
        tls,
    } = client;
    let rcpts_kept = recipients.iter().all(|r| {
        let AcceptedRcpt {
            address,
            route,
            transport,
            destination: _,
            bal_type,
        } = r;
        kept_lower(address) && kept(route) && kept(transport) && kept_opt(bal_type)
    });
    let all_kept = rcpts_kept
        && kept_opt(message_id)
        && kept_lower(from)
        && i64::try_from(*size).is_ok()
        && kept(listener)
        && kept_opt(establishment)
        && kept(ip)
        && kept_opt(dn)
        && kept_opt(tls);
    if !all_kept {
        return None;
    }
    #[derive(serde::Serialize)]
    struct Helo<'a> {
        helo: &'a str,
    }
    #[derive(serde::Serialize)]
    struct Rest<'a> {
        #[serde(skip_serializing_if = "Option::is_none")]
        client: Option<Helo<'a>>,
        #[serde(skip_serializing_if = "Option::is_none")]
        sha256: Option<&'a str>,
    }
    let rest = Rest {
        client: helo.as_deref().map(|helo| Helo { helo }),
        sha256: sha256.as_deref(),
    };
    serde_json::to_string(&rest).ok()
}

/// A message whose row this batch inserts: the row and its recipients' rows (contiguous in
/// [`Plan::recipients`]). Events about it are applied to these rows in memory.
#[derive(Clone, Copy)]
struct Here {
    msg: usize,
    first: usize,
    n: usize,
}

/// A message's status from its recipients' statuses, as `schema::STATUS_FROM_RECIPIENTS`
/// computes it in SQL: any to retry -> deferred; any not tried -> queued; all alike -> that;
/// a mix of delivered and bounced -> partial. `None` without recipients.
fn status_from(rows: &[RecipientRow]) -> Option<&'static str> {
    let first = rows.first()?.status;
    Some(if rows.iter().any(|r| r.status == "deferred") {
        "deferred"
    } else if rows.iter().any(|r| r.status == "queued") {
        "queued"
    } else if rows.iter().all(|r| r.status == first) {
        first
    } else {
        "partial"
    })
}

/// Fills the columns the writer would otherwise take from the stored message and recipient
/// rows (the joins of the event insert), for an event whose message row is in this batch.
fn resolve(e: &mut EventRow, m: &MessageRow, r: Option<&RecipientRow>) {
    if e.origin.is_none() {
        e.origin = m.origin.clone();
    }
    if e.destination.is_none() {
        e.destination = r.and_then(|r| r.destination.clone());
    }
    if e.establishment.is_none() {
        e.establishment = m.establishment.clone();
    }
    if e.mailbox.is_none() {
        e.mailbox = match e.destination.as_deref() {
            Some("mailbox") => e.rcpt.clone(),
            Some("trust-space") => m.sender.clone().filter(|s| !s.is_empty()),
            _ => None,
        };
    }
    if e.bal_type.is_none() {
        e.bal_type = r.and_then(|r| r.bal_type.clone());
    }
    e.resolved = true;
}

/// Minimal message rows for the events whose acceptance is not in the batch, one per message.
#[derive(Default)]
struct Stubs {
    seen: HashSet<String>,
    rows: Vec<MessageRow>,
}

impl Stubs {
    fn add(&mut self, qid: &str, time: i64) {
        if self.seen.insert(qid.to_string()) {
            self.rows.push(MessageRow {
                qid: qid.to_string(),
                queued: true,
                time,
                updated: time,
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
                day: day(time),
            });
        }
    }
}

/// The rows for a batch of events.
///
/// Most messages are accepted and delivered within one batch (a batch spans up to
/// `flush_interval`, deliveries take milliseconds): their rows are inserted once with their
/// final statuses and their events with every column filled, so the database does no update
/// and no lookup for them. Only events about messages of earlier batches are left to the
/// writer's updates and joins (`rcpt_status`, `msg_status`, unresolved events).
pub fn plan(batch: &[Event]) -> Plan {
    let mut p = Plan::default();
    let mut here: HashMap<String, Here> = HashMap::new();
    let mut stubs = Stubs::default();
    let mut stub_rcpts: Vec<RecipientRow> = Vec::new();
    let mut rcpt_status: HashMap<(String, i32), (usize, &'static str)> = HashMap::new();
    let mut msg_status: HashMap<String, (usize, MsgStatus, i64)> = HashMap::new();
    let mut seq = 0usize;
    for ev in batch {
        let t = ev.time as i64;
        seq += 1;
        match &ev.body {
            EventBody::Accepted(a) => {
                let qid = clean(&a.queue_id);
                let origin = a.client.origin;
                let sender = lower(&a.from);
                // Applied in memory only when nothing about this message came before it in
                // the batch (it never does: the acceptance is journaled before the queue
                // hands the message to delivery); otherwise the writer's updates do it.
                if !stubs.seen.contains(&qid) && !here.contains_key(&qid) {
                    here.insert(
                        qid.clone(),
                        Here {
                            msg: p.messages.len(),
                            first: p.recipients.len(),
                            n: a.recipients.len(),
                        },
                    );
                }
                p.messages.push(MessageRow {
                    qid: qid.clone(),
                    queued: true,
                    time: t,
                    updated: t,
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
                    day: day(t),
                });
                for (i, r) in a.recipients.iter().enumerate() {
                    p.recipients.push(RecipientRow {
                        qid: qid.clone(),
                        idx: i as i32,
                        address: lower(&r.address),
                        route: opt(Some(&r.route)),
                        transport: opt(Some(&r.transport)),
                        bal_type: opt(r.bal_type.as_deref()),
                        destination: r.destination.map(|d| d.as_str().to_string()),
                        status: "queued",
                        day: day(t),
                    });
                }
                let mailbox = (origin == Some(Origin::Establishment) && !sender.is_empty())
                    .then(|| sender.clone());
                let peer = (origin == Some(Origin::TrustSpace))
                    .then(|| opt(a.client.dn.as_deref()).or_else(|| opt(Some(&a.client.ip))))
                    .flatten();
                let (mi, first) = (
                    p.messages.len() - 1,
                    p.recipients.len() - a.recipients.len(),
                );
                let mut e = EventRow {
                    qid,
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
                    details: accepted_details_direct(a).unwrap_or_else(|| {
                        let implied = implied_accepted(&p.messages[mi], &p.recipients[first..]);
                        accepted_details(&details_value(a), &implied)
                    }),
                    resolved: false,
                };
                if let Some(h) = here.get(&e.qid) {
                    resolve(&mut e, &p.messages[h.msg], None);
                }
                p.events.push(e);
            }
            EventBody::Refused(r) => {
                // A refusal is its own entry, under a journal reference in the queue id space.
                let qid = crate::message::new_queue_id();
                let origin = r.client.origin;
                let from = r.from.as_deref().map(lower);
                let to = r.to.as_deref().map(lower);
                let row = MessageRow {
                    qid: qid.clone(),
                    queued: false,
                    time: t,
                    updated: t,
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
                    day: day(t),
                };
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
                        day: day(t),
                    });
                }
                let mailbox = match origin {
                    Some(Origin::TrustSpace) => to.clone(),
                    _ => from.clone().filter(|f| !f.is_empty()),
                };
                let peer = (origin == Some(Origin::TrustSpace))
                    .then(|| opt(r.client.dn.as_deref()).or_else(|| opt(Some(&r.client.ip))))
                    .flatten();
                let mut e = EventRow {
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
                    resolved: false,
                };
                resolve(&mut e, &row, None);
                p.messages.push(row);
                p.events.push(e);
            }
            EventBody::Attempt(a) => {
                let qid = clean(&a.queue_id);
                let idx = a.index as i32;
                let status = match a.outcome {
                    Outcome::Delivered => "delivered",
                    Outcome::Deferred => "deferred",
                    Outcome::Bounced | Outcome::Expired => "bounced",
                };
                let peer = (a.destination == Some(Destination::TrustSpace))
                    .then(|| {
                        opt(a.peer_dn.as_deref())
                            .or_else(|| opt(a.mx.as_deref()))
                            .or_else(|| opt(a.next_hop.as_deref()))
                    })
                    .flatten();
                let mut e = EventRow {
                    qid: qid.clone(),
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
                    details: attempt_details(a),
                    resolved: false,
                };
                match here.get(&qid).filter(|h| (idx as usize) < h.n).copied() {
                    Some(h) => {
                        let rows = &mut p.recipients[h.first..h.first + h.n];
                        rows[idx as usize].status = status;
                        let m = &mut p.messages[h.msg];
                        m.status = status_from(rows).unwrap_or(m.status);
                        m.updated = t;
                        resolve(&mut e, m, Some(&rows[idx as usize]));
                    }
                    None => {
                        stubs.add(&qid, t);
                        stub_rcpts.push(RecipientRow {
                            qid: qid.clone(),
                            idx,
                            address: lower(&a.to),
                            route: None,
                            transport: opt(Some(&a.transport)),
                            bal_type: None,
                            destination: a.destination.map(|d| d.as_str().to_string()),
                            status: "queued",
                            day: day(t),
                        });
                        rcpt_status.insert((qid.clone(), idx), (seq, status));
                        msg_status.insert(qid, (seq, MsgStatus::Recompute, t));
                    }
                }
                p.events.push(e);
            }
            EventBody::Dsn(d) => {
                let qid = clean(&d.queue_id);
                let mut e = EventRow {
                    qid: qid.clone(),
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
                    resolved: false,
                };
                match here.get(&qid) {
                    Some(h) => resolve(&mut e, &p.messages[h.msg], None),
                    None => {
                        stubs.add(&qid, t);
                    }
                }
                p.events.push(e);
            }
            EventBody::Receipt(r) => {
                // By our ENVID when the DSN names it (exact), else by the Message-ID.
                let by_qid = r
                    .receipt
                    .envid
                    .as_deref()
                    .and_then(crate::message::report::queue_id_of_envid)
                    .map(clean);
                let mid = r
                    .receipt
                    .original_message_id
                    .as_deref()
                    .filter(|m| !m.is_empty())
                    .map(clean);
                if by_qid.is_none() && mid.is_none() {
                    continue;
                }
                let report = if r.receipt.report == "dsn" {
                    "dsn"
                } else {
                    "mdn"
                };
                let d = day(t);
                for item in &r.receipt.items {
                    p.receipts.push(ReceiptRow {
                        report: seq,
                        kind_of_report: report,
                        queue_id: by_qid.clone(),
                        message_id: mid.clone().unwrap_or_default(),
                        time: t,
                        kind: item.kind.as_str(),
                        rcpt: lower(&item.recipient),
                        details: details(&serde_json::json!({
                            "to": item.recipient,
                            "status": item.status,
                            "reporter": item.reporter,
                            "report": report,
                            "notification": r.queue_id,
                        })),
                        days: (d - RECEIPT_DAYS..=d + 1).collect(),
                    });
                }
            }
            EventBody::Admin(a) => {
                let qid = clean(&a.queue_id);
                let directive = match a.action {
                    super::AdminAction::Held => Some(MsgStatus::Set("held")),
                    super::AdminAction::Released => Some(MsgStatus::Recompute),
                    super::AdminAction::Deleted => Some(MsgStatus::Set("deleted")),
                    super::AdminAction::Retried => None,
                };
                let mut e = EventRow {
                    qid: qid.clone(),
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
                    resolved: false,
                };
                match here.get(&qid).copied() {
                    Some(h) => {
                        let m = &mut p.messages[h.msg];
                        match directive {
                            Some(MsgStatus::Set(s)) => m.status = s,
                            Some(MsgStatus::Recompute) => {
                                let rows = &p.recipients[h.first..h.first + h.n];
                                m.status = status_from(rows).unwrap_or(m.status);
                            }
                            None => {}
                        }
                        if directive.is_some() {
                            m.updated = t;
                        }
                        resolve(&mut e, m, None);
                    }
                    None => {
                        stubs.add(&qid, t);
                        if let Some(d) = directive {
                            msg_status.insert(qid, (seq, d, t));
                        }
                    }
                }
                p.events.push(e);
            }
        }
    }
    // Stubs after the real rows: they only land where no row exists (insert-or-ignore).
    p.messages.extend(
        stubs
            .rows
            .into_iter()
            .filter(|s| !here.contains_key(&s.qid)),
    );
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
                sha256: None,
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
        // A1 was accepted in this batch: its rows carry the final statuses, nothing is left
        // to the writer's updates; B2 and C3 are rows of earlier batches.
        assert_eq!(p.messages[0].status, "queued", "A1: x@chu.fr not tried yet");
        assert_eq!(p.messages[0].updated, 1200);
        assert_eq!(p.recipients[0].status, "delivered");
        assert_eq!(p.recipients[1].status, "queued");
        assert!(p.events[..3].iter().all(|e| e.resolved));
        assert!(!p.events[3].resolved && !p.events[4].resolved);
        assert_eq!(p.events[2].bal_type.as_deref(), Some("PER"));
        assert_eq!(p.events[2].mailbox.as_deref(), Some("dr@chu.fr"));
        assert_eq!(p.rcpt_status, vec![("B2".to_string(), 1, "bounced")]);
        assert_eq!(
            p.msg_status,
            vec![
                ("B2".to_string(), MsgStatus::Recompute, 1300),
                ("C3".to_string(), MsgStatus::Set("held"), 1400),
            ]
        );
        // Accepted recipients, then one stub per (message, index) of the other attempts.
        let r: Vec<(&str, i32)> = p
            .recipients
            .iter()
            .map(|r| (r.qid.as_str(), r.idx))
            .collect();
        assert_eq!(r, [("A1", 0), ("A1", 1), ("B2", 1)]);
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

    /// The direct details against the general ones, byte for byte, over values that do and do
    /// not come back unchanged from the rows (case, empty, NUL, absent, a huge size).
    #[test]
    fn details_written_directly_are_the_general_ones() {
        let general = |a: &Accepted| {
            let p = plan(&[Event {
                time: 7,
                body: EventBody::Accepted(Box::new(a.clone())),
            }]);
            let implied = implied_accepted(&p.messages[0], &p.recipients);
            accepted_details(&details_value(a), &implied)
        };
        let base = match accepted("Q1", 5, "sec@chu.fr", &["dr@chu.fr", "x@chu.fr"]).body {
            EventBody::Accepted(a) => *a,
            _ => unreachable!(),
        };
        let mut cases: Vec<Accepted> = Vec::new();
        for i in 0..16 {
            let mut a = base.clone();
            a.client.helo = (i & 1 == 0).then(|| "client.chu.fr".to_string());
            a.sha256 = (i & 2 == 0).then(|| "ab".repeat(32));
            a.client.tls = (i & 4 == 0).then(|| "TLSv1.3".to_string());
            a.recipients[1].bal_type = (i & 8 == 0).then(|| "ORG".to_string());
            a.recipients[1].destination = (i & 8 != 0).then_some(Destination::TrustSpace);
            cases.push(a);
        }
        let variants: Vec<fn(&mut Accepted)> = vec![
            |a| a.from = "Sec@Chu.fr".into(),
            |a| a.from = String::new(),
            |a| a.from = "sec\0@chu.fr".into(),
            |a| a.message_id = None,
            |a| a.message_id = Some(String::new()),
            |a| a.message_id = Some("a\0b@x".into()),
            |a| a.recipients[0].address = "Dr@chu.fr".into(),
            |a| a.recipients[0].route = String::new(),
            |a| a.recipients[0].transport = "t\0".into(),
            |a| a.recipients[0].bal_type = Some(String::new()),
            |a| a.recipients.clear(),
            |a| a.size = u64::MAX,
            |a| a.client.listener = String::new(),
            |a| a.client.ip = "1.2.3.4\0".into(),
            |a| a.client.establishment = Some("chu-a".into()),
            |a| a.client.establishment = Some(String::new()),
            |a| a.client.dn = Some("CN=x, O=\"y\"".into()),
            |a| a.client.dn = Some(String::new()),
            |a| a.client.helo = Some("h\"\\é\u{1}".into()),
            |a| a.client.origin = None,
        ];
        for v in &variants {
            let mut a = base.clone();
            a.client.helo = Some("helo".into());
            a.sha256 = Some("cd".repeat(32));
            v(&mut a);
            cases.push(a);
        }
        let mut direct = 0;
        for a in &cases {
            let want = general(a);
            if let Some(got) = accepted_details_direct(a) {
                assert_eq!(got, want, "{a:?}");
                direct += 1;
            }
        }
        assert!(
            direct >= 20,
            "the common shapes are written directly ({direct})"
        );
        assert!(
            direct < cases.len(),
            "and the others are left to the comparison"
        );

        let base = match attempt("Q1", 5, 1, "dr@chu.fr", Outcome::Delivered).body {
            EventBody::Attempt(a) => *a,
            _ => unreachable!(),
        };
        for i in 0..64u32 {
            let mut a = base.clone();
            let on = |bit: u32| i & (1 << bit) != 0;
            a.reply = on(0).then(|| ReplyInfo {
                code: 451,
                status: on(1).then(|| "4.3.0".into()),
                text: "try \"later\"\n".into(),
            });
            a.mx = on(2).then(|| "mx.op.fr".into());
            a.peer_dn = on(3).then(|| "CN=mx.op.fr,O=Op".into());
            a.tls_version = on(4).then(|| "TLSv1.3".into());
            a.cipher = on(4).then(|| "TLS13_AES_256_GCM_SHA384".into());
            a.tls_failure = on(5).then(|| "dn-not-whitelisted".into());
            a.destination = (!on(5)).then_some(Destination::TrustSpace);
            a.next_hop = (!on(3)).then(|| "10.0.0.1:25".into());
            a.remote_ip = None;
            a.outcome = if on(0) {
                Outcome::Deferred
            } else {
                Outcome::Expired
            };
            assert_eq!(attempt_details(&a), details(&a), "{a:?}");
        }
        assert_eq!(attempt_details(&base), details(&base));
    }

    #[test]
    fn accepted_details_keep_only_what_the_rows_do_not_say() {
        use serde_json::json;
        let implied =
            json!({"client": {"ip": "1.2.3.4", "listener": "l"}, "from": "a@b", "size": 5});
        let full = json!({"client": {"ip": "1.2.3.4", "listener": "l", "helo": "h"}, "from": "A@b", "size": 5});
        let rest = accepted_details(&full, &implied);
        assert_eq!(
            serde_json::from_str::<Value>(&rest).unwrap(),
            json!({"client": {"helo": "h"}, "from": "A@b"})
        );
        assert_eq!(
            merge_details(
                implied.clone(),
                &json!({"client": {"helo": "h"}, "from": "A@b"})
            ),
            full
        );
    }
}
