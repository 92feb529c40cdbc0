//! What the journal records: one [`Event`] per fact about a message (refused, accepted, each
//! delivery attempt per recipient, DSN queued, administrator actions), with the addresses and
//! the Message-ID only. **Never a subject or a body** (health data).
//!
//! Also the small pure helpers that turn a [`Reply`] into the fields the journal stores.

use crate::reply::Reply;
use serde::{Deserialize, Serialize};

/// Where a message came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Origin {
    /// An establishment's MTA (the smart-host side).
    Establishment,
    /// Another MSSanté operator.
    TrustSpace,
    /// Made here (a DSN).
    Local,
}

impl Origin {
    pub fn as_str(self) -> &'static str {
        match self {
            Origin::Establishment => "establishment",
            Origin::TrustSpace => "trust-space",
            Origin::Local => "local",
        }
    }
}

/// Where a recipient's delivery goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Destination {
    /// Another operator, over mutual TLS.
    TrustSpace,
    /// A mailbox server (an establishment's, or a relay).
    Mailbox,
}

impl Destination {
    pub fn as_str(self) -> &'static str {
        match self {
            Destination::TrustSpace => "trust-space",
            Destination::Mailbox => "mailbox",
        }
    }
}

/// The SMTP stage at which a session or transaction was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Stage {
    Connect,
    Mail,
    Rcpt,
    Data,
}

impl Stage {
    pub fn as_str(self) -> &'static str {
        match self {
            Stage::Connect => "connect",
            Stage::Mail => "mail",
            Stage::Rcpt => "rcpt",
            Stage::Data => "data",
        }
    }
}

/// An SMTP reply as stored: code, enhanced status, text.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct ReplyInfo {
    pub code: u16,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<String>,
    pub text: String,
}

impl From<&Reply> for ReplyInfo {
    fn from(r: &Reply) -> Self {
        ReplyInfo {
            code: r.code,
            status: r.status.clone().filter(|s| !s.is_empty()),
            text: r.text.replace('\n', " "),
        }
    }
}

impl std::fmt::Display for ReplyInfo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.status {
            Some(s) => write!(f, "{} {} {}", self.code, s, self.text),
            None => write!(f, "{} {}", self.code, self.text),
        }
    }
}

/// Who connected, on which listener, with what TLS: shared by refusals and acceptances.
#[derive(Debug, Clone, Serialize, Deserialize, Default)]
pub struct Client {
    pub listener: String,
    /// Derived from the listener when `None` (see [`super::Topology`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub origin: Option<Origin>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub establishment: Option<String>,
    pub ip: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub helo: Option<String>,
    /// Subject DN of the client certificate.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dn: Option<String>,
    /// "TLSv1.3 with cipher ...".
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Refusal {
    pub stage: Stage,
    /// A stable label for counting: `relay-denied`, `unknown-recipient`, ... (see [`reason_of`]).
    pub reason: String,
    pub reply: ReplyInfo,
    pub client: Client,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub to: Option<String>,
    /// The TLS failure label when a certificate was the cause.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls_failure: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AcceptedRcpt {
    pub address: String,
    pub route: String,
    pub transport: String,
    /// Derived from the transport (see [`super::Topology`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub destination: Option<Destination>,
    /// PER/ORG/APP/... when the directory said it at RCPT.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bal_type: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Accepted {
    pub queue_id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message_id: Option<String>,
    pub from: String,
    pub recipients: Vec<AcceptedRcpt>,
    pub size: u64,
    pub client: Client,
    /// SHA-256 (hex) of the message as the client sent it (without our Received header): the
    /// proof of sending names it; the message itself is never stored in the journal.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sha256: Option<String>,
}

/// How one delivery attempt ended for one recipient.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Outcome {
    Delivered,
    Deferred,
    Bounced,
    /// Failed at the end of the queue lifetime.
    Expired,
}

impl Outcome {
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Delivered => "delivered",
            Outcome::Deferred => "deferred",
            Outcome::Bounced => "bounced",
            Outcome::Expired => "expired",
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Attempt {
    pub queue_id: String,
    /// The recipient's index in the envelope.
    pub index: u32,
    pub to: String,
    pub outcome: Outcome,
    pub transport: String,
    /// Derived from the transport when `None` (see [`super::Topology`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub destination: Option<Destination>,
    /// `host:port` or the MX host name the session went to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_hop: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mx: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub remote_ip: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls_version: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cipher: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub peer_dn: Option<String>,
    /// The remote server's reply, when there was one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reply: Option<ReplyInfo>,
    /// What the queue says of the attempt (the reply or the local reason, e.g. a TLS failure).
    pub diagnostic: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls_failure: Option<String>,
    pub duration_ms: u64,
    /// 1 for the first attempt.
    pub attempt: u32,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DsnQueued {
    pub queue_id: String,
    /// `failure`, `delay` or `success`.
    pub dsn: String,
    pub dsn_id: String,
    pub to: String,
    pub recipients: Vec<String>,
}

/// A delivery or read receipt that came in as message `queue_id` (itself journaled as any
/// message), about another message: joined to it by the writer through its Message-ID.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ReceiptSeen {
    pub queue_id: String,
    pub receipt: crate::message::report::Receipt,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AdminAction {
    Held,
    Released,
    Deleted,
    Retried,
}

impl AdminAction {
    pub fn as_str(self) -> &'static str {
        match self {
            AdminAction::Held => "held",
            AdminAction::Released => "released",
            AdminAction::Deleted => "deleted",
            AdminAction::Retried => "retried",
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Admin {
    pub queue_id: String,
    pub action: AdminAction,
    /// `cli` for the local CLI (admin token); the console's user name later.
    pub user: String,
}

/// One fact, stamped with its time (Unix milliseconds). Serialised only into the spill file
/// under the spool (`spill.rs`), read back by the same version of the gateway.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Event {
    pub time: u64,
    pub body: EventBody,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum EventBody {
    Refused(Box<Refusal>),
    Accepted(Box<Accepted>),
    Attempt(Box<Attempt>),
    Dsn(Box<DsnQueued>),
    Admin(Admin),
    Receipt(Box<ReceiptSeen>),
}

impl Event {
    pub fn now(body: EventBody) -> Event {
        Event {
            time: crate::util::clock::now_ms(),
            body,
        }
    }

    /// The event's kind as stored and shown.
    pub fn kind(&self) -> &'static str {
        match &self.body {
            EventBody::Refused(_) => "refused",
            EventBody::Accepted(_) => "accepted",
            EventBody::Attempt(a) => a.outcome.as_str(),
            EventBody::Dsn(_) => "dsn",
            EventBody::Admin(a) => a.action.as_str(),
            EventBody::Receipt(_) => "receipt",
        }
    }
}

/// The Message-ID of a message, from its header section only (the body is never looked at):
/// the message module's one header reader.
pub fn message_id(message: &[u8]) -> Option<String> {
    crate::message::header::message_id(message)
}

/// Normalises a Message-ID given on the command line: angle brackets and spaces removed.
pub fn normalize_message_id(s: &str) -> String {
    s.trim()
        .trim_start_matches('<')
        .trim_end_matches('>')
        .trim()
        .to_string()
}

/// A stable label for a refusal, from its stage and reply, for counting by reason. The words
/// follow today's reply texts; a caller that knows the reason passes it instead.
pub fn reason_of(stage: Stage, r: &Reply) -> &'static str {
    let t = r.text.to_ascii_lowercase();
    let st = r.status.as_deref().unwrap_or("");
    let has = |w: &str| t.contains(w);
    match stage {
        Stage::Connect if has("too many connections") => "too-many-connections",
        Stage::Connect if has("access denied") => "client-not-allowed",
        _ if has("too many hops") || st == "5.4.0" => "loop",
        _ if r.code == 552 || st == "5.3.4" => "size",
        _ if has("not declared in the mssante whitelist") => "not-in-whitelist",
        _ if has("relay access denied") => "relay-denied",
        _ if has("starttls") => "tls-required",
        _ if has("certificate") => "certificate",
        _ if st == "5.1.1" || has("unknown in the mssante directory") => "unknown-recipient",
        _ if st == "4.4.3" || (has("directory") && r.code < 500) => "directory-unavailable",
        _ if st == "4.5.3" || has("too many recipients") => "too-many-recipients",
        _ if has("whitelist") => "whitelist-unavailable",
        _ if st == "5.6.0" || has("bare") => "syntax",
        Stage::Data if r.code == 451 || r.code == 452 => "storage",
        Stage::Mail if has("sender") || st == "5.7.1" => "sender-not-allowed",
        Stage::Rcpt if r.code >= 500 => "route-reject",
        _ => "other",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn message_ids_given_by_hand_are_normalised() {
        assert_eq!(
            message_id(b"Message-ID: <a@b>\r\n\r\n").as_deref(),
            Some("a@b")
        );
        assert_eq!(normalize_message_id(" <a@b> "), "a@b");
    }

    #[test]
    fn refusal_reasons() {
        let r = |code, st: &str, t: &str| Reply::new(code, st, t);
        let cases = [
            (Stage::Rcpt, r(550, "5.1.1", "<a@b>: Recipient address rejected: unknown in the MSSante directory (x)"), "unknown-recipient"),
            (Stage::Rcpt, r(451, "4.4.3", "directory unavailable, try again later"), "directory-unavailable"),
            (Stage::Rcpt, r(554, "5.7.1", "<a@gmail.com>: Relay access denied"), "relay-denied"),
            (Stage::Rcpt, r(550, "5.7.1", "<a@x.fr>: domain x.fr is not declared in the MSSante whitelist"), "not-in-whitelist"),
            (Stage::Rcpt, r(550, "5.7.1", "only MSSante destinations are relayed here"), "route-reject"),
            (Stage::Rcpt, r(452, "4.5.3", "Error: too many recipients"), "too-many-recipients"),
            (Stage::Mail, r(530, "5.7.0", "Error: a client certificate is required"), "certificate"),
            (Stage::Mail, r(550, "5.7.1", "Error: client certificate refused: certificate expired"), "certificate"),
            (Stage::Mail, r(550, "5.7.1", "Error: certificate \"CN=x\" is not declared in the MSSante whitelist for a.fr"), "not-in-whitelist"),
            (Stage::Mail, r(530, "5.7.0", "Must issue a STARTTLS command first"), "tls-required"),
            (Stage::Mail, r(552, "5.3.4", "Message size exceeds fixed limit"), "size"),
            (Stage::Data, r(554, "5.4.0", "Error: too many hops (51 Received headers): mail loop?"), "loop"),
            (Stage::Data, r(451, "4.3.0", "Error: queue file write error"), "storage"),
            (Stage::Connect, r(554, "5.7.1", "gw ESMTP access denied for 10.0.0.1"), "client-not-allowed"),
            (Stage::Mail, r(554, "5.7.1", "Error: relay access denied: present a client certificate listed for this listener"), "relay-denied"),
        ];
        for (stage, reply, want) in cases {
            assert_eq!(reason_of(stage, &reply), want, "{reply}");
        }
    }
}
