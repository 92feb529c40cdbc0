//! Delivery status notifications (RFC 3464): multipart/report with a human part, a
//! message/delivery-status part and the original headers (or the whole message with RET=FULL).
//!
//! Built by hand rather than with mail-builder: message/delivery-status must stay a plain
//! 7-bit block of fields and the returned message must be passed byte for byte, while
//! mail-builder re-encodes parts it considers non-ASCII or long.

use crate::message::{
    new_queue_id, received_header, rfc5322_date, Envelope, Recipient, Ret, State,
};
use std::fmt::Write as _;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DsnKind {
    Failure,
    Delay,
    Success,
}

/// One recipient's line in the report.
#[derive(Debug, Clone)]
pub struct DsnRecipient {
    pub address: String,
    pub orcpt: Option<String>,
    /// RFC 3463 code, e.g. "5.1.1" or "4.4.1".
    pub status: String,
    /// What the remote server said, or our own reason.
    pub diagnostic: String,
    pub remote_mta: Option<String>,
}

pub struct DsnRequest<'a> {
    pub reporting_mta: &'a str,
    pub kind: DsnKind,
    pub envelope: &'a Envelope,
    pub recipients: Vec<DsnRecipient>,
    /// The queued message as stored (our Received header first).
    pub original: &'a [u8],
    /// Unix seconds, for Date and Arrival-Date.
    pub now: u64,
    pub id: &'a str,
}

/// Which route and transport take mail to an address: for a DSN to the original sender,
/// asked of the routing policy in force when the notification is made.
pub trait ReturnPath: Send + Sync {
    /// `listener` is where the original message came in (its routes are tried first).
    fn route(&self, listener: &str, address: &str) -> Option<(String, String)>;
    /// The route and transport to establishment `name`'s mailbox, while it exists: the
    /// bounces of its senders go there (on a shared domain the sender's domain alone could
    /// not tell whose mailbox).
    fn establishment(&self, _name: &str) -> Option<(String, String)> {
        None
    }
}

/// A notification ready to queue.
pub struct Notification {
    pub envelope: Envelope,
    pub message: Vec<u8>,
}

/// Who writes a notification, how it finds its way, and when.
pub struct Reporter<'a> {
    /// Our name: `Reporting-MTA`, `From: MAILER-DAEMON@`, the Received header.
    pub hostname: &'a str,
    pub return_path: &'a dyn ReturnPath,
    /// Unix seconds.
    pub now: u64,
}

/// The DSN of `kind` about recipients `rcpts` of `env` (indexes into its recipients), to the
/// envelope sender; built from the stored outcomes. `None` for the null sender (never
/// notified) or when no route serves the sender's domain (logged).
pub fn notification(
    by: &Reporter<'_>,
    kind: DsnKind,
    env: &Envelope,
    state: &State,
    rcpts: &[usize],
    original: &[u8],
) -> Option<Notification> {
    let (hostname, now) = (by.hostname, by.now);
    if rcpts.is_empty() || env.mail_from.is_empty() {
        return None;
    }
    let found = env
        .establishment
        .as_deref()
        .and_then(|e| by.return_path.establishment(e))
        .or_else(|| by.return_path.route(&env.listener, &env.mail_from));
    let Some((route, transport)) = found else {
        tracing::warn!(queue_id = %env.id, to = %env.mail_from,
            "no route for the sender's domain: {kind:?} notification not sent");
        return None;
    };
    let default = match kind {
        DsnKind::Failure => "5.0.0",
        DsnKind::Delay => "4.0.0",
        DsnKind::Success => "2.0.0",
    };
    let recipients = rcpts
        .iter()
        .filter_map(|&i| Some((env.recipients.get(i)?, state.rcpts.get(i)?)))
        .map(|(r, s)| {
            let (status, diagnostic, remote_mta) = match (kind, &s.delivered, &s.last) {
                (DsnKind::Success, Some(d), _) => (
                    d.reply
                        .status
                        .clone()
                        .filter(|st| st.starts_with('2'))
                        .unwrap_or_else(|| default.into()),
                    d.to_string(),
                    Some(d.remote.host.clone()),
                ),
                (_, _, Some(f)) => (
                    f.status(default),
                    f.to_string(),
                    f.remote.as_ref().map(|r| r.host.clone()),
                ),
                _ => (default.into(), String::new(), None),
            };
            DsnRecipient {
                address: r.address.clone(),
                orcpt: r.orcpt.clone(),
                status,
                diagnostic,
                remote_mta,
            }
        })
        .collect();
    let id = new_queue_id();
    let body = build(&DsnRequest {
        reporting_mta: hostname,
        kind,
        envelope: env,
        recipients,
        original,
        now,
        id: &id,
    });
    let mut message = received_header(None, hostname, &id, None, now).into_bytes();
    message.extend_from_slice(&body);
    Some(Notification {
        envelope: Envelope {
            establishment: None,
            id,
            received: now,
            listener: env.listener.clone(),
            client: "localhost".into(),
            helo: hostname.to_string(),
            mail_from: String::new(),
            ret: None,
            envid: None,
            eight_bit: false,
            smtputf8: false,
            recipients: vec![Recipient {
                address: env.mail_from.clone(),
                orcpt: None,
                notify: 0,
                route,
                transport,
            }],
        },
        message,
    })
}

/// The header section of a message (up to and including the blank line).
pub fn header_section(msg: &[u8]) -> &[u8] {
    crate::message::header::section(msg)
}

/// Builds the whole DSN message (headers and body), CRLF line ends throughout.
pub fn build(req: &DsnRequest) -> Vec<u8> {
    let boundary = format!("{}/{}", req.id, req.reporting_mta);
    let env = req.envelope;
    let (subject, intro) = match req.kind {
        DsnKind::Failure => (
            "Undelivered Mail Returned to Sender",
            "I'm sorry to have to inform you that your message could not\r\nbe delivered to one or more recipients. It's attached below.",
        ),
        DsnKind::Delay => (
            "Delayed Mail (still being retried)",
            "This is a warning only; you do not need to resend your message.\r\nDelivery to the following recipients has been delayed; delivery\r\nwill be retried until the message expires.",
        ),
        DsnKind::Success => (
            "Successful Mail Delivery Report",
            "Your message was successfully delivered to the destination(s)\r\nlisted below, or relayed to a system that does not report delivery.",
        ),
    };
    let mut m = String::with_capacity(2048);
    let _ = write!(
        m,
        "From: MAILER-DAEMON@{mta} (Mail Delivery System)\r\n\
         To: <{to}>\r\n\
         Subject: {subject}\r\n\
         Date: {date}\r\n\
         Message-ID: <{id}@{mta}>\r\n\
         Auto-Submitted: auto-replied\r\n\
         MIME-Version: 1.0\r\n\
         Content-Type: multipart/report; report-type=delivery-status;\r\n\tboundary=\"{boundary}\"\r\n\
         Content-Transfer-Encoding: 7bit\r\n\
         \r\n\
         This is a MIME-encapsulated message.\r\n\
         \r\n\
         --{boundary}\r\n\
         Content-Description: Notification\r\n\
         Content-Type: text/plain; charset=us-ascii\r\n\
         \r\n\
         This is the mail system at host {mta}.\r\n\
         \r\n\
         {intro}\r\n\
         \r\n",
        mta = req.reporting_mta,
        to = env.mail_from,
        date = rfc5322_date(req.now),
        id = req.id,
    );
    for r in &req.recipients {
        let _ = write!(m, "<{}>: {}\r\n", r.address, ascii_line(&r.diagnostic));
    }
    let _ = write!(
        m,
        "\r\n--{boundary}\r\n\
         Content-Description: Delivery report\r\n\
         Content-Type: message/delivery-status\r\n\
         \r\n\
         Reporting-MTA: dns; {mta}\r\n\
         X-Passerelle-Queue-ID: {qid}\r\n\
         Arrival-Date: {arrival}\r\n",
        mta = req.reporting_mta,
        qid = env.id,
        arrival = rfc5322_date(env.received),
    );
    if let Some(envid) = &env.envid {
        let _ = write!(m, "Original-Envelope-Id: {}\r\n", ascii_line(envid));
    }
    for r in &req.recipients {
        let action = match req.kind {
            DsnKind::Failure => "failed",
            DsnKind::Delay => "delayed",
            DsnKind::Success => "relayed",
        };
        m.push_str("\r\n");
        if let Some(o) = &r.orcpt {
            let _ = write!(m, "Original-Recipient: rfc822;{}\r\n", ascii_line(o));
        }
        let _ = write!(
            m,
            "Final-Recipient: rfc822; {}\r\nAction: {}\r\nStatus: {}\r\n",
            ascii_line(&r.address),
            action,
            r.status
        );
        if let Some(mta) = &r.remote_mta {
            let _ = write!(m, "Remote-MTA: dns; {}\r\n", ascii_line(mta));
        }
        let _ = write!(
            m,
            "Diagnostic-Code: smtp; {}\r\n",
            ascii_line(&r.diagnostic)
        );
    }
    let full = env.ret == Some(Ret::Full) && req.kind == DsnKind::Failure;
    let _ = write!(
        m,
        "\r\n--{boundary}\r\n\
         Content-Description: {}\r\n\
         Content-Type: {}\r\n\
         \r\n",
        if full {
            "Undelivered Message"
        } else {
            "Undelivered Message Headers"
        },
        if full {
            "message/rfc822"
        } else {
            "text/rfc822-headers"
        },
    );
    let mut out = m.into_bytes();
    let part: &[u8] = if full {
        req.original
    } else {
        header_section(req.original)
    };
    out.extend_from_slice(part);
    if !out.ends_with(b"\r\n") {
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(format!("\r\n--{boundary}--\r\n").as_bytes());
    out
}

/// DSN fields are 7-bit single lines.
fn ascii_line(s: &str) -> String {
    s.chars()
        .map(|c| {
            if c.is_ascii() && !c.is_ascii_control() {
                c
            } else {
                '?'
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::message::Recipient;

    fn env() -> Envelope {
        Envelope {
            establishment: None,
            id: "00000000000000AB".into(),
            received: 1_700_000_000,
            listener: "etab".into(),
            client: "127.0.0.1".into(),
            helo: "h".into(),
            mail_from: "sender@chu.mssante.fr".into(),
            ret: None,
            envid: Some("ENV1".into()),
            eight_bit: false,
            smtputf8: false,
            recipients: vec![Recipient {
                address: "dr@autre.mssante.fr".into(),
                orcpt: None,
                notify: 0,
                route: "r".into(),
                transport: "t".into(),
            }],
        }
    }

    #[test]
    fn failure_report_has_the_three_parts() {
        let e = env();
        let original = b"Received: x\r\nSubject: hello\r\nX-MSS-Id: 1\r\n\r\nsecret body\r\n";
        let dsn = build(&DsnRequest {
            reporting_mta: "gw.test",
            kind: DsnKind::Failure,
            envelope: &e,
            recipients: vec![DsnRecipient {
                address: "dr@autre.mssante.fr".into(),
                orcpt: None,
                status: "5.1.1".into(),
                diagnostic: "host x said: 550 5.1.1 unknown".into(),
                remote_mta: Some("x".into()),
            }],
            original,
            now: 1_700_000_100,
            id: "DSN1",
        });
        let s = String::from_utf8(dsn).unwrap();
        assert!(s.contains("Content-Type: multipart/report; report-type=delivery-status;"));
        assert!(s.contains("Content-Type: message/delivery-status"));
        assert!(s.contains(
            "Final-Recipient: rfc822; dr@autre.mssante.fr\r\nAction: failed\r\nStatus: 5.1.1"
        ));
        assert!(s.contains("Original-Envelope-Id: ENV1"));
        assert!(s.contains("Content-Type: text/rfc822-headers\r\n\r\nReceived: x\r\nSubject: hello\r\nX-MSS-Id: 1\r\n\r\n"));
        assert!(
            !s.contains("secret body"),
            "RET=HDRS by default: headers only"
        );
        assert!(!s.replace("\r\n", "").contains('\n'), "CRLF only");
        assert!(s.starts_with("From: MAILER-DAEMON@gw.test"));
        assert!(s.contains("To: <sender@chu.mssante.fr>"));
    }
}
