//! Delivery and read receipts: a DSN (RFC 3464, `multipart/report; report-type=
//! delivery-status`) or an MDN (RFC 8098, `report-type=disposition-notification`) read for
//! what the journal joins to the message it answers. mail-parser finds the MIME parts; the
//! report part's fields are parsed here, strictly (a report that does not parse is only
//! relayed), bounded in count and length. Nothing of the returned message is kept but its
//! Message-ID.

use super::header;
use mail_parser::{MessageParser, MimeHeaders, PartType};

/// What a receipt says of one recipient, as the journal's event kinds name it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ReceiptKind {
    RemoteDelivered,
    RemoteDelayed,
    RemoteFailed,
    Displayed,
    Deleted,
    Dispatched,
    Processed,
}

impl ReceiptKind {
    pub fn as_str(self) -> &'static str {
        match self {
            ReceiptKind::RemoteDelivered => "remote-delivered",
            ReceiptKind::RemoteDelayed => "remote-delayed",
            ReceiptKind::RemoteFailed => "remote-failed",
            ReceiptKind::Displayed => "displayed",
            ReceiptKind::Deleted => "deleted",
            ReceiptKind::Dispatched => "dispatched",
            ReceiptKind::Processed => "processed",
        }
    }
}

/// One recipient's line of a report.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ReceiptItem {
    pub kind: ReceiptKind,
    /// The recipient the report is about (Original-Recipient, else Final-Recipient), without
    /// its address type.
    pub recipient: String,
    /// The DSN's Status (`2.0.0`) or the MDN's disposition as written.
    pub status: String,
    /// Who reported: the DSN's Reporting-MTA, the MDN's Reporting-UA (may be empty).
    pub reporter: String,
}

/// A parsed receipt.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Receipt {
    /// `dsn` or `mdn`.
    pub report: String,
    /// The Message-ID of the message it answers (MDN: Original-Message-ID; DSN: the returned
    /// header section's), without brackets.
    pub original_message_id: Option<String>,
    /// The DSN's Original-Envelope-Id.
    pub envid: Option<String>,
    pub items: Vec<ReceiptItem>,
}

/// The ENVID the gateway gives a message whose client gave none (RFC 3461 lets an MTA that
/// offers DSN set it), so that a DSN coming back names the message exactly, even one without
/// a Message-ID: `passerelle-` and the queue id.
pub fn our_envid(queue_id: &str) -> String {
    format!("{ENVID_PREFIX}{queue_id}")
}

const ENVID_PREFIX: &str = "passerelle-";

/// The queue id of an ENVID the gateway set ([`our_envid`]).
pub fn queue_id_of_envid(envid: &str) -> Option<&str> {
    envid
        .strip_prefix(ENVID_PREFIX)
        .filter(|q| !q.is_empty() && q.len() <= 64 && q.bytes().all(|b| b.is_ascii_alphanumeric()))
}

/// Fields per block and blocks per report at most: a real DSN has a few recipients.
const MAX_FIELDS: usize = 64;
const MAX_BLOCKS: usize = 1000;
const MAX_VALUE: usize = 998;
/// A report part longer than this is not read.
const MAX_PART: usize = 256 * 1024;

/// Which report a message's header section announces, if any: only the top-level
/// Content-Type is read, so that an ordinary message costs one header pass.
pub fn announced(msg: &[u8]) -> Option<&'static str> {
    if !mentions_report(msg) {
        return None;
    }
    let ct = header::fields(msg)
        .into_iter()
        .find(|f| f.name.eq_ignore_ascii_case("content-type"))?
        .value
        .to_ascii_lowercase();
    if !ct.trim_start().starts_with("multipart/report") {
        return None;
    }
    let rt = ct
        .split(';')
        .filter_map(|p| p.split_once('='))
        .find(|(k, _)| k.trim() == "report-type")
        .map(|(_, v)| v.trim().trim_matches('"').to_string())?;
    match rt.as_str() {
        "delivery-status" => Some("dsn"),
        "disposition-notification" => Some("mdn"),
        _ => None,
    }
}

/// Whether the header section says `multipart/report` anywhere (any case): a scan for `/`
/// with no allocation, so that the ordinary message, on every intake, skips the header
/// parse of [`announced`].
fn mentions_report(msg: &[u8]) -> bool {
    let end = memchr::memmem::find(msg, b"\n\r\n")
        .or_else(|| memchr::memmem::find(msg, b"\n\n"))
        .unwrap_or(msg.len());
    let h = &msg[..end];
    memchr::memchr_iter(b'/', h).any(|i| {
        i >= 9
            && h[i - 9..i].eq_ignore_ascii_case(b"multipart")
            && h.get(i + 1..i + 7)
                .is_some_and(|r| r.eq_ignore_ascii_case(b"report"))
    })
}

/// The receipt a message carries, when it is one that parses.
pub fn parse(msg: &[u8]) -> Option<Receipt> {
    let report = announced(msg)?;
    let m = MessageParser::default().parse(msg)?;
    let (want, sub) = if report == "dsn" {
        ("delivery-status", "global-delivery-status")
    } else {
        (
            "disposition-notification",
            "global-disposition-notification",
        )
    };
    let mut fields = None;
    let mut returned_id = None;
    for p in m.parts.iter().skip(1) {
        let Some(ct) = p.content_type() else { continue };
        let (t, s) = (
            ct.ctype().to_ascii_lowercase(),
            ct.subtype().unwrap_or("").to_ascii_lowercase(),
        );
        if t == "message" && (s == want || s == sub) && fields.is_none() {
            let body = part_body(msg, p)?;
            fields = Some(blocks(&body)?);
        } else if ((t == "text" && s == "rfc822-headers") || (t == "message" && s == "rfc822"))
            && returned_id.is_none()
        {
            returned_id = match &p.body {
                PartType::Message(inner) => header::message_id(inner.raw_message()),
                _ => part_body(msg, p).and_then(|b| header::message_id(&b)),
            };
        }
    }
    let blocks = fields?;
    if report == "dsn" {
        dsn(&blocks, returned_id)
    } else {
        mdn(&blocks, returned_id)
    }
}

/// A part's body as sent (7bit, as reports are), or decoded when it was encoded.
fn part_body(msg: &[u8], p: &mail_parser::MessagePart<'_>) -> Option<Vec<u8>> {
    let raw = msg.get(p.offset_body as usize..p.offset_end as usize)?;
    if raw.len() > MAX_PART {
        return None;
    }
    Some(match p.encoding {
        mail_parser::Encoding::None => raw.to_vec(),
        _ => p.contents().to_vec(),
    })
}

type Block = Vec<(String, String)>;

/// `Name: value` fields (continuation lines folded), blocks separated by blank lines. A line
/// that is neither a field nor a continuation makes the whole report unreadable.
fn blocks(body: &[u8]) -> Option<Vec<Block>> {
    let text = std::str::from_utf8(body).ok()?;
    let mut out: Vec<Block> = Vec::new();
    let mut cur: Block = Vec::new();
    for line in text.split('\n') {
        let line = line.strip_suffix('\r').unwrap_or(line);
        if line.trim().is_empty() {
            if !cur.is_empty() {
                out.push(std::mem::take(&mut cur));
                if out.len() > MAX_BLOCKS {
                    return None;
                }
            }
            continue;
        }
        if line.starts_with([' ', '\t']) {
            let (_, v) = cur.last_mut()?;
            if v.len() + line.len() > MAX_VALUE {
                return None;
            }
            v.push(' ');
            v.push_str(line.trim());
            continue;
        }
        let (name, value) = line.split_once(':')?;
        let name = name.trim();
        if name.is_empty()
            || !name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
            || value.len() > MAX_VALUE
            || cur.len() >= MAX_FIELDS
        {
            return None;
        }
        cur.push((name.to_ascii_lowercase(), value.trim().to_string()));
    }
    if !cur.is_empty() {
        out.push(cur);
    }
    (!out.is_empty()).then_some(out)
}

fn get<'a>(b: &'a Block, name: &str) -> Option<&'a str> {
    b.iter().find(|(n, _)| n == name).map(|(_, v)| v.as_str())
}

/// `rfc822; addr` -> `addr` (lowercased: the journal's recipients are). `None` when empty.
fn address(v: &str) -> Option<String> {
    let a = v.split_once(';').map_or(v, |(_, a)| a).trim();
    let a = a.trim_matches(|c| c == '<' || c == '>');
    (!a.is_empty() && a.len() <= 320).then(|| a.to_ascii_lowercase())
}

/// `dns; host` -> `host`.
fn typed(v: &str) -> String {
    v.split_once(';').map_or(v, |(_, h)| h).trim().to_string()
}

fn is_status(s: &str) -> bool {
    let p: Vec<&str> = s.split('.').collect();
    p.len() == 3
        && matches!(p[0], "2" | "4" | "5")
        && p[1..]
            .iter()
            .all(|n| !n.is_empty() && n.len() <= 3 && n.bytes().all(|b| b.is_ascii_digit()))
}

fn dsn(blocks: &[Block], returned_id: Option<String>) -> Option<Receipt> {
    let (per_message, recipients) = blocks.split_first()?;
    let reporter = get(per_message, "reporting-mta").map(typed)?;
    let mut items = Vec::new();
    for r in recipients {
        let action = get(r, "action")?.to_ascii_lowercase();
        let status = get(r, "status")?.split_whitespace().next()?.to_string();
        if !is_status(&status) {
            return None;
        }
        let recipient = get(r, "original-recipient")
            .and_then(address)
            .or_else(|| get(r, "final-recipient").and_then(address))?;
        let kind = match action.as_str() {
            "delivered" | "relayed" | "expanded" => ReceiptKind::RemoteDelivered,
            "delayed" => ReceiptKind::RemoteDelayed,
            "failed" => ReceiptKind::RemoteFailed,
            _ => return None,
        };
        items.push(ReceiptItem {
            kind,
            recipient,
            status,
            reporter: reporter.clone(),
        });
    }
    (!items.is_empty()).then(|| Receipt {
        report: "dsn".into(),
        original_message_id: returned_id,
        envid: get(per_message, "original-envelope-id").map(str::to_string),
        items,
    })
}

fn mdn(blocks: &[Block], returned_id: Option<String>) -> Option<Receipt> {
    let b = blocks.first()?;
    let disposition = get(b, "disposition")?;
    // `action-mode/sending-mode; type[/modifier]`
    let (_, kind) = disposition.split_once(';')?;
    let kind = kind.trim().split(['/', ' ']).next()?.to_ascii_lowercase();
    let kind = match kind.as_str() {
        "displayed" => ReceiptKind::Displayed,
        "deleted" => ReceiptKind::Deleted,
        "dispatched" => ReceiptKind::Dispatched,
        "processed" => ReceiptKind::Processed,
        _ => return None,
    };
    let recipient = get(b, "original-recipient")
        .and_then(address)
        .or_else(|| get(b, "final-recipient").and_then(address))?;
    let original = get(b, "original-message-id")
        .map(|v| v.trim().trim_matches(|c| c == '<' || c == '>').to_string())
        .filter(|v| !v.is_empty() && v.len() <= MAX_VALUE)
        .or(returned_id);
    Some(Receipt {
        report: "mdn".into(),
        original_message_id: original,
        envid: None,
        items: vec![ReceiptItem {
            kind,
            recipient,
            status: disposition.to_string(),
            // `ua-name [; ua-product]`
            reporter: get(b, "reporting-ua")
                .map(|v| v.split(';').next().unwrap_or("").trim().to_string())
                .unwrap_or_default(),
        }],
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const DSN: &str = "From: MAILER-DAEMON@op.test\r\nTo: dr.x@chu-a.mssante.fr\r\nMessage-ID: <dsn1@op.test>\r\n\
MIME-Version: 1.0\r\nContent-Type: multipart/report; report-type=delivery-status;\r\n\tboundary=\"B1\"\r\n\r\n\
--B1\r\nContent-Type: text/plain\r\n\r\nYour message was delivered.\r\n\r\n\
--B1\r\nContent-Type: message/delivery-status\r\n\r\n\
Reporting-MTA: dns; mx.op.test\r\nOriginal-Envelope-Id: ENV-1\r\nArrival-Date: Thu, 3 Dec 2026 09:00:00 +0100\r\n\r\n\
Final-Recipient: rfc822; Dr.Y@autre.mssante.fr\r\nOriginal-Recipient: rfc822;dr.y@autre.mssante.fr\r\nAction: delivered\r\nStatus: 2.0.0\r\n\
Remote-MTA: dns; mailbox.op.test\r\nDiagnostic-Code: smtp; 250 2.0.0 Ok:\r\n queued as 123\r\n\r\n\
--B1\r\nContent-Type: text/rfc822-headers\r\n\r\nFrom: dr.x@chu-a.mssante.fr\r\nMessage-ID: <orig-1@chu-a.mssante.fr>\r\nSubject: secret\r\n\r\n\
--B1--\r\n";

    const MDN: &str = "From: dr.y@autre.mssante.fr\r\nTo: dr.x@chu-a.mssante.fr\r\n\
Content-Type: multipart/report; report-type=\"disposition-notification\"; boundary=b2\r\n\r\n\
--b2\r\nContent-Type: text/plain\r\n\r\nRead.\r\n--b2\r\nContent-Type: message/disposition-notification\r\n\r\n\
Reporting-UA: webmail.op.test; Webmail\r\nFinal-Recipient: rfc822; dr.y@autre.mssante.fr\r\n\
Original-Message-ID: <orig-1@chu-a.mssante.fr>\r\nDisposition: manual-action/MDN-sent-manually; displayed\r\n\r\n--b2--\r\n";

    #[test]
    fn a_dsn_and_an_mdn() {
        let d = parse(DSN.as_bytes()).expect("dsn");
        assert_eq!(d.report, "dsn");
        assert_eq!(d.envid.as_deref(), Some("ENV-1"));
        assert_eq!(
            d.original_message_id.as_deref(),
            Some("orig-1@chu-a.mssante.fr")
        );
        assert_eq!(
            d.items,
            vec![ReceiptItem {
                kind: ReceiptKind::RemoteDelivered,
                recipient: "dr.y@autre.mssante.fr".into(),
                status: "2.0.0".into(),
                reporter: "mx.op.test".into(),
            }]
        );
        let m = parse(MDN.as_bytes()).expect("mdn");
        assert_eq!(m.report, "mdn");
        assert_eq!(m.items[0].kind, ReceiptKind::Displayed);
        assert_eq!(m.items[0].reporter, "webmail.op.test");
        assert_eq!(
            m.original_message_id.as_deref(),
            Some("orig-1@chu-a.mssante.fr")
        );
    }

    #[test]
    fn ordinary_and_malformed_messages_are_not_receipts() {
        assert_eq!(announced(b"Subject: x\r\n\r\nbody\r\n"), None);
        // The scan reads the header section only, in any case, folded or not.
        assert_eq!(
            announced(b"Subject: x\r\n\r\nContent-Type: multipart/report; report-type=delivery-status\r\n"),
            None
        );
        assert_eq!(
            announced(b"Content-Type: Multipart/Report;\r\n\treport-type=\"disposition-notification\"\r\n\r\nx"),
            Some("mdn")
        );
        assert_eq!(
            announced(b"Content-Type: MULTIPART/REPORT; report-type=delivery-status\n\nx"),
            Some("dsn")
        );
        assert_eq!(parse(b"Content-Type: text/plain\r\n\r\nx"), None);
        let failed = DSN
            .replace("Action: delivered", "Action: failed")
            .replace("Status: 2.0.0", "Status: 5.1.1");
        assert_eq!(
            parse(failed.as_bytes()).unwrap().items[0].kind,
            ReceiptKind::RemoteFailed
        );
        for (from, to) in [
            ("Action: delivered", "Action: sent"),
            ("Status: 2.0.0", "Status: 2.0"),
            ("Reporting-MTA: dns; mx.op.test\r\n", ""),
            ("Status: 2.0.0\r\n", "Status 2.0.0\r\n"),
        ] {
            assert_eq!(parse(DSN.replace(from, to).as_bytes()), None, "{to}");
        }
        assert_eq!(
            parse(MDN.replace("; displayed", "; shown").as_bytes()),
            None
        );
        let long = DSN.replace("ENV-1", &"x".repeat(2000));
        assert_eq!(parse(long.as_bytes()), None);
    }

    #[test]
    fn our_envid_names_the_queue_id() {
        assert_eq!(
            queue_id_of_envid(&our_envid("000661CE6FAFD884")),
            Some("000661CE6FAFD884")
        );
        assert_eq!(queue_id_of_envid("ENV-1"), None);
        assert_eq!(queue_id_of_envid("passerelle-"), None);
        assert_eq!(queue_id_of_envid("passerelle-a b"), None);
    }

    /// Every prefix of a report, and a report with bytes changed, parse or not without a panic.
    #[test]
    fn every_prefix_and_flipped_byte() {
        for s in [DSN, MDN] {
            let b = s.as_bytes();
            for i in 0..b.len() {
                let _ = parse(&b[..i]);
                let mut c = b.to_vec();
                c[i] ^= 0x20;
                let _ = parse(&c);
            }
        }
    }
}
