//! The one reader of a message's header section (REVIEW B5: the journal, the console and the
//! DSN builder each had a hand-written one, and they disagreed on folding and on LF-only
//! mail). mail-parser splits the fields: folding, bare LF, the blank line that ends the
//! section, a field without a colon. Each field's value is taken raw from its offsets, never
//! decoded further than unfolding, so what is shown or returned is what was sent.
//!
//! Only the header section is ever looked at: health data lives in the body.

use mail_parser::{HeaderName, HeaderValue, MessageParser};

/// One field of the header section: its name as written, its value unfolded and trimmed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Field {
    pub name: String,
    pub value: String,
}

/// The longest Message-ID kept (RFC 5322's line limit).
const MAX_ID: usize = 998;

/// A parser that decodes nothing but the Message-ID: every other field is only split (its
/// raw bytes are read from its offsets), so the cost is one pass over the section.
fn parser() -> MessageParser {
    MessageParser::new()
        .header_id(HeaderName::MessageId)
        .default_header_raw()
}

/// The header section of a message, up to and including the blank line that ends it (the
/// whole message when there is none).
pub fn section(msg: &[u8]) -> &[u8] {
    // The parser stops after the blank line but, told to skip the body, reports no body
    // offset: the section ends after the last field and the blank line that follows it.
    let Some(m) = parser().parse_headers(msg) else {
        return msg;
    };
    let Some(last) = m.headers().last() else {
        return msg;
    };
    let end = (last.offset_end as usize).min(msg.len());
    let rest = &msg[end..];
    let blank = if rest.starts_with(b"\r\n") {
        2
    } else {
        usize::from(rest.starts_with(b"\n"))
    };
    &msg[..end + blank]
}

/// The fields of the header section in order, each unfolded (RFC 5322 2.2.3).
pub fn fields(msg: &[u8]) -> Vec<Field> {
    let Some(m) = parser().parse_headers(msg) else {
        return Vec::new();
    };
    m.headers()
        .iter()
        .map(|h| Field {
            name: raw(msg, h.offset_field, h.offset_start)
                .trim_end_matches(':')
                .trim()
                .to_string(),
            value: unfold(&raw(msg, h.offset_start, h.offset_end)),
        })
        .collect()
}

/// The first Message-ID of the header section, without its angle brackets; `None` when
/// absent or empty. At most 998 bytes, cut on a character boundary.
pub fn message_id(msg: &[u8]) -> Option<String> {
    let m = parser().parse_headers(msg)?;
    let h = m
        .headers()
        .iter()
        .find(|h| h.name == HeaderName::MessageId)?;
    let id = match &h.value {
        HeaderValue::Text(t) => t.trim().to_string(),
        HeaderValue::TextList(l) => l.first()?.trim().to_string(),
        // An unparsable id ("<>", garbage): the raw text, brackets removed, if any remains.
        _ => {
            let v = unfold(&raw(msg, h.offset_start, h.offset_end));
            v.trim_matches(|c: char| c == '<' || c == '>' || c.is_whitespace())
                .to_string()
        }
    };
    if id.is_empty() {
        return None;
    }
    let mut end = id.len().min(MAX_ID);
    while !id.is_char_boundary(end) {
        end -= 1;
    }
    Some(id[..end].to_string())
}

fn raw(msg: &[u8], start: u32, end: u32) -> String {
    msg.get(start as usize..end as usize)
        .map(|b| String::from_utf8_lossy(b).into_owned())
        .unwrap_or_default()
}

/// Joins continuation lines with one space each: a line break followed by white space is
/// folding, not content.
fn unfold(v: &str) -> String {
    v.split('\n')
        .map(|l| l.trim())
        .filter(|l| !l.is_empty())
        .collect::<Vec<_>>()
        .join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pairs(msg: &[u8]) -> Vec<(String, String)> {
        fields(msg).into_iter().map(|f| (f.name, f.value)).collect()
    }

    #[test]
    fn fields_unfolded_and_only_from_the_header_section() {
        let raw = b"Received: from a\r\n\tby b\r\nSubject: Dr X\r\n about Y\r\nX-MSS-Test: yes\r\n\r\nBody: not a header\r\n";
        assert_eq!(
            pairs(raw),
            vec![
                ("Received".into(), "from a by b".into()),
                ("Subject".into(), "Dr X about Y".into()),
                ("X-MSS-Test".into(), "yes".into()),
            ]
        );
        assert_eq!(
            pairs(b"A: 1\n  two\n\nB: 2\n"),
            vec![("A".into(), "1 two".into())]
        );
        assert!(fields(b"").is_empty());
    }

    #[test]
    fn the_section_ends_at_the_blank_line_crlf_or_lf() {
        assert_eq!(
            section(b"A: 1\r\nB: 2\r\n\r\nbody"),
            b"A: 1\r\nB: 2\r\n\r\n"
        );
        assert_eq!(section(b"A: 1\n\nbody\n"), b"A: 1\n\n");
        assert_eq!(section(b"A: 1\r\n"), b"A: 1\r\n");
        assert_eq!(section(b""), b"");
    }

    #[test]
    fn message_id_forms() {
        let m = b"Received: from x\r\n\tby y; date\r\nSubject: secret diagnosis\r\nMessage-ID: <abc.123@chu.fr>\r\n\r\nMessage-ID: <body@x>\r\n";
        assert_eq!(message_id(m).as_deref(), Some("abc.123@chu.fr"));
        let folded = b"message-id:\r\n <long.id@example.org>\r\nX: y\r\n\r\n";
        assert_eq!(message_id(folded).as_deref(), Some("long.id@example.org"));
        assert_eq!(message_id(b"Subject: a\r\n\r\nMessage-ID: <b@c>\r\n"), None);
        assert_eq!(
            message_id(b"Message-Id: bare@id\n\n").as_deref(),
            Some("bare@id")
        );
        assert_eq!(message_id(b"Message-ID: <>\r\n\r\n"), None);
        assert_eq!(message_id(b""), None);
        let long = format!("Message-ID: <{}@x>\r\n\r\n", "é".repeat(600));
        let id = message_id(long.as_bytes()).unwrap_or_default();
        assert!(!id.is_empty() && id.len() <= MAX_ID);
    }
}
