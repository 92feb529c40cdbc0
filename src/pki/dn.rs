//! Distinguished names compared as RFC 4517 `distinguishedNameMatch` does.
//!
//! Used by the whitelist (DNs written in the ANS file) and by TLS (subject DNs of peer
//! certificates), so it sits beside the pipeline rather than in either stage.
//!
//! * RDN order is significant, and a missing or extra RDN never matches;
//! * attribute types are compared by OID (`CN`, `cn`, `2.5.4.3`, `OID.2.5.4.3`);
//! * values are compared with `caseIgnoreMatch` and insignificant-space handling;
//! * RFC 4514 escapes are resolved before comparison; multi-valued RDNs compare as sets.
//!
//! RFC 4514 strings list the most specific RDN first while a certificate's ASN.1 `Name` lists
//! the least specific first; [`Dn::from_x509_subject`] reverses the sequence so both forms of
//! the same name yield equal [`Dn`] values. Unicode normalisation (NFKC) is not applied.

use std::borrow::Cow;
use std::fmt;
use std::hash::{Hash, Hasher};
use std::sync::Arc;

use x509_parser::x509::{AttributeTypeAndValue, X509Name};

/// Why a distinguished name could not be parsed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DnError {
    #[error("empty distinguished name")]
    Empty,
    #[error("at offset {offset}: {reason}")]
    Syntax { offset: usize, reason: String },
    #[error("unknown attribute type '{0}'")]
    UnknownAttributeType(String),
    #[error("at offset {offset}: value is not valid UTF-8 once unescaped")]
    InvalidUtf8 { offset: usize },
    #[error("at offset {offset}: invalid '#' BER value: {reason}")]
    Ber { offset: usize, reason: String },
    #[error("cannot parse certificate: {0}")]
    Certificate(String),
}
// ---------------------------------------------------------------------------
// Distinguished names
// ---------------------------------------------------------------------------

/// Known attribute types: (OID, display name, accepted names in lowercase).
const ATTR_TYPES: &[(&str, &str, &[&str])] = &[
    ("2.5.4.3", "CN", &["cn", "commonname"]),
    ("2.5.4.4", "SN", &["sn", "surname"]),
    ("2.5.4.5", "SERIALNUMBER", &["serialnumber"]),
    ("2.5.4.6", "C", &["c", "countryname"]),
    ("2.5.4.7", "L", &["l", "localityname"]),
    ("2.5.4.8", "ST", &["st", "s", "stateorprovincename"]),
    ("2.5.4.9", "STREET", &["street", "streetaddress"]),
    ("2.5.4.10", "O", &["o", "organizationname"]),
    ("2.5.4.11", "OU", &["ou", "organizationalunitname"]),
    ("2.5.4.12", "TITLE", &["title"]),
    ("2.5.4.17", "postalCode", &["postalcode"]),
    ("2.5.4.42", "GN", &["gn", "givenname"]),
    ("2.5.4.43", "initials", &["initials"]),
    ("2.5.4.46", "dnQualifier", &["dnqualifier"]),
    ("2.5.4.65", "pseudonym", &["pseudonym"]),
    (
        "2.5.4.97",
        "organizationIdentifier",
        &["organizationidentifier"],
    ),
    (
        "0.9.2342.19200300.100.1.25",
        "DC",
        &["dc", "domaincomponent"],
    ),
    ("0.9.2342.19200300.100.1.1", "UID", &["uid", "userid"]),
    (
        "1.2.840.113549.1.9.1",
        "emailAddress",
        &["e", "email", "emailaddress"],
    ),
];

const OID_CN: &str = "2.5.4.3";

fn display_type(oid: &str) -> &str {
    ATTR_TYPES
        .iter()
        .find(|(o, _, _)| *o == oid)
        .map(|(_, n, _)| *n)
        .unwrap_or(oid)
}

/// A comparable attribute value.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
enum Value {
    /// A string value after RFC 4518-style preparation (case folded,
    /// insignificant spaces removed).
    Str(String),
    /// A non-string value: its DER encoding (canonical length form).
    Ber(Vec<u8>),
}

/// One attribute type and value, with the index of its RDN.
#[derive(Debug, Clone)]
struct Ava {
    /// Index of the RDN (RFC 4514 order, most specific first).
    rdn: u32,
    /// Dotted OID (borrowed from [`ATTR_TYPES`] when known).
    oid: Cow<'static, str>,
    norm: Value,
    /// The value as decoded, escapes resolved, case preserved (`#hex` for a non-string value).
    raw: String,
}

impl Ava {
    fn key(&self) -> (u32, &str, &Value) {
        (self.rdn, &self.oid, &self.norm)
    }
}

impl PartialEq for Ava {
    fn eq(&self, other: &Self) -> bool {
        self.key() == other.key()
    }
}
impl Eq for Ava {}
impl Hash for Ava {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.key().hash(state);
    }
}

/// A distinguished name normalised for comparison (RFC 4517
/// `distinguishedNameMatch`), which also remembers how it was written. RDNs are kept in
/// RFC 4514 order, most specific first. Equality and hashing ignore the spelling of attribute
/// types, case and insignificant spaces of values, escaping, and AVA order inside a
/// multi-valued RDN; RDN order is significant. Cloning is cheap.
///
/// It displays as written: the string it was parsed from, or for a certificate its RFC 4514
/// form with the values as the certificate holds them. [`Dn::canonical`] is the form equal
/// DNs share. One decoder serves both, so a certificate is never logged under one reading
/// and compared under another.
#[derive(Debug, Clone)]
pub struct Dn {
    /// AVAs sorted by (rdn, type, value), deduplicated: each RDN is a set.
    avas: Arc<[Ava]>,
    shown: Arc<str>,
}

impl PartialEq for Dn {
    fn eq(&self, other: &Self) -> bool {
        self.avas == other.avas
    }
}
impl Eq for Dn {}
impl Hash for Dn {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.avas.hash(state);
    }
}

impl Dn {
    fn from_avas(mut avas: Vec<Ava>, shown: Option<&str>) -> Dn {
        avas.sort_by(|a, b| a.key().cmp(&b.key()));
        avas.dedup();
        let shown: Arc<str> = match shown {
            Some(s) => s.into(),
            None => written(&avas).into(),
        };
        Dn {
            avas: avas.into(),
            shown,
        }
    }
}

/// `s` without its leading spaces and its trailing unescaped ones (`CN=x\ ` keeps its space).
fn trim_unescaped(s: &str) -> &str {
    let s = s.trim_start_matches(' ');
    let mut end = s.trim_end_matches(' ').len();
    let backslashes = s[..end].bytes().rev().take_while(|&b| b == b'\\').count();
    if backslashes % 2 == 1 && end < s.len() {
        end += 1;
    }
    &s[..end]
}

/// RFC 4514 form from the decoded values: what a certificate's subject says, escaped.
fn written(avas: &[Ava]) -> String {
    rfc4514(avas, |a| match &a.norm {
        Value::Ber(_) => a.raw.clone(),
        Value::Str(_) => escape_value(&a.raw),
    })
}

/// RDNs joined by `,`, AVAs of one RDN by `+`, each `TYPE=value` with `value` as given.
fn rfc4514(avas: &[Ava], value: impl Fn(&Ava) -> String) -> String {
    let mut out = String::new();
    let mut prev: Option<u32> = None;
    for ava in avas {
        match prev {
            None => {}
            Some(r) if r == ava.rdn => out.push('+'),
            Some(_) => out.push(','),
        }
        prev = Some(ava.rdn);
        out.push_str(display_type(&ava.oid));
        out.push('=');
        out.push_str(&value(ava));
    }
    out
}

/// Canonical OID for a dotted string: borrowed when it is a known type.
fn canonical_oid(dotted: String) -> Cow<'static, str> {
    match ATTR_TYPES.iter().find(|(o, _, _)| *o == dotted) {
        Some((o, _, _)) => Cow::Borrowed(*o),
        None => Cow::Owned(dotted),
    }
}

/// RFC 4518 §2.2 "map to nothing" (subset) and other controls.
fn ignorable(c: char) -> bool {
    matches!(c,
        '\u{00AD}' | '\u{034F}' | '\u{1806}' | '\u{180B}'..='\u{180D}'
        | '\u{200B}' | '\u{FE00}'..='\u{FE0F}' | '\u{FEFF}' | '\u{FFFC}')
        || (c.is_control() && !c.is_whitespace())
}

/// caseIgnoreMatch preparation: map, fold case, insignificant spaces.
fn prepare(s: &str) -> String {
    if s.is_ascii() {
        let mut out = Vec::with_capacity(s.len());
        let mut pending_space = false;
        for &b in s.as_bytes() {
            if b.is_ascii_whitespace() || b == 0x0b {
                pending_space = !out.is_empty();
                continue;
            }
            if b.is_ascii_control() {
                continue;
            }
            if pending_space {
                out.push(b' ');
                pending_space = false;
            }
            out.push(b.to_ascii_lowercase());
        }
        // Only ASCII bytes were pushed.
        return String::from_utf8(out).unwrap_or_default();
    }
    let mut out = String::with_capacity(s.len());
    let mut pending_space = false;
    for c in s.chars() {
        if ignorable(c) {
            continue;
        }
        if c.is_whitespace() {
            pending_space = !out.is_empty();
            continue;
        }
        if pending_space {
            out.push(' ');
            pending_space = false;
        }
        out.extend(c.to_lowercase());
    }
    out
}

/// Decode a universal, primitive string type. `None` if not a string type or
/// not decodable.
fn decode_string(tag: u32, data: &[u8]) -> Option<String> {
    match tag {
        // UTF8String, NumericString, PrintableString, IA5String, VisibleString
        12 | 18 | 19 | 22 | 26 => std::str::from_utf8(data).ok().map(str::to_owned),
        // TeletexString: treated as Latin-1 unless it is valid UTF-8.
        20 => Some(match std::str::from_utf8(data) {
            Ok(s) => s.to_owned(),
            Err(_) => data.iter().map(|&b| char::from(b)).collect(),
        }),
        // BMPString: UTF-16BE
        30 => {
            if !data.len().is_multiple_of(2) {
                return None;
            }
            let units = data
                .chunks_exact(2)
                .map(|c| u16::from_be_bytes([c[0], c[1]]));
            char::decode_utf16(units)
                .collect::<Result<String, _>>()
                .ok()
        }
        // UniversalString: UTF-32BE
        28 => {
            if !data.len().is_multiple_of(4) {
                return None;
            }
            data.chunks_exact(4)
                .map(|c| char::from_u32(u32::from_be_bytes([c[0], c[1], c[2], c[3]])))
                .collect()
        }
        _ => None,
    }
}

/// DER-encode a TLV (low or high tag number form, definite length).
fn encode_tlv(class: u8, constructed: bool, tag: u32, data: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(data.len() + 8);
    let first = (class << 6) | if constructed { 0x20 } else { 0 };
    if tag < 31 {
        out.push(first | tag as u8);
    } else {
        out.push(first | 0x1f);
        let mut groups = Vec::new();
        let mut t = tag;
        loop {
            groups.push((t & 0x7f) as u8);
            t >>= 7;
            if t == 0 {
                break;
            }
        }
        for (i, g) in groups.iter().enumerate().rev() {
            out.push(if i == 0 { *g } else { g | 0x80 });
        }
    }
    let len = data.len();
    if len < 0x80 {
        out.push(len as u8);
    } else {
        let bytes = len.to_be_bytes();
        let skip = bytes.iter().take_while(|&&b| b == 0).count();
        out.push(0x80 | (bytes.len() - skip) as u8);
        out.extend_from_slice(&bytes[skip..]);
    }
    out.extend_from_slice(data);
    out
}

/// Build (norm, raw) from a decoded BER TLV.
fn value_from_tlv(class: u8, constructed: bool, tag: u32, data: &[u8]) -> (Value, String) {
    if class == 0 && !constructed {
        if let Some(s) = decode_string(tag, data) {
            let norm = Value::Str(prepare(&s));
            return (norm, s);
        }
    }
    let der = encode_tlv(class, constructed, tag, data);
    let raw = format!("#{}", hex(&der));
    (Value::Ber(der), raw)
}

fn hex(b: &[u8]) -> String {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(b.len() * 2);
    for &x in b {
        s.push(char::from(HEX[usize::from(x >> 4)]));
        s.push(char::from(HEX[usize::from(x & 15)]));
    }
    s
}

fn hex_val(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

/// Parse one BER TLV that must span all of `b`: (class, constructed, tag, data).
fn parse_tlv(b: &[u8]) -> Result<(u8, bool, u32, &[u8]), String> {
    let first = *b.first().ok_or("empty")?;
    let class = first >> 6;
    let constructed = first & 0x20 != 0;
    let mut i = 1;
    let mut tag = u32::from(first & 0x1f);
    if tag == 0x1f {
        tag = 0;
        loop {
            let x = *b.get(i).ok_or("truncated tag")?;
            i += 1;
            if tag > (u32::MAX >> 7) {
                return Err("tag number too large".into());
            }
            tag = (tag << 7) | u32::from(x & 0x7f);
            if x & 0x80 == 0 {
                break;
            }
        }
    }
    let l0 = *b.get(i).ok_or("truncated length")?;
    i += 1;
    let len = if l0 < 0x80 {
        usize::from(l0)
    } else if l0 == 0x80 {
        return Err("indefinite length not supported".into());
    } else {
        let n = usize::from(l0 & 0x7f);
        if n > 4 {
            return Err("length too large".into());
        }
        let mut len = 0usize;
        for _ in 0..n {
            let x = *b.get(i).ok_or("truncated length")?;
            i += 1;
            len = (len << 8) | usize::from(x);
        }
        len
    };
    let data = b.get(i..).ok_or("truncated")?;
    if data.len() != len {
        return Err(format!(
            "length {len} does not match the {} content bytes",
            data.len()
        ));
    }
    Ok((class, constructed, tag, data))
}

fn is_special(b: u8) -> bool {
    matches!(b, b',' | b'+' | b';')
}

struct DnParser<'a> {
    s: &'a [u8],
    i: usize,
}

impl<'a> DnParser<'a> {
    fn peek(&self) -> Option<u8> {
        self.s.get(self.i).copied()
    }
    fn skip_spaces(&mut self) {
        while self.peek() == Some(b' ') {
            self.i += 1;
        }
    }
    fn err(&self, reason: impl Into<String>) -> DnError {
        DnError::Syntax {
            offset: self.i,
            reason: reason.into(),
        }
    }

    fn attr_type(&mut self) -> Result<Cow<'static, str>, DnError> {
        let start = self.i;
        while let Some(b) = self.peek() {
            if b == b'=' || is_special(b) {
                break;
            }
            self.i += 1;
        }
        if self.peek() != Some(b'=') {
            return Err(self.err("expected '=' after attribute type"));
        }
        let raw = std::str::from_utf8(&self.s[start..self.i])
            .map_err(|_| DnError::InvalidUtf8 { offset: start })?
            .trim();
        self.i += 1; // '='
        if raw.is_empty() {
            return Err(DnError::Syntax {
                offset: start,
                reason: "empty attribute type".into(),
            });
        }
        let numeric = match raw.get(..4) {
            Some(p) if p.eq_ignore_ascii_case("oid.") => &raw[4..],
            _ => raw,
        };
        if numeric.bytes().next().is_some_and(|b| b.is_ascii_digit()) {
            let arcs: Vec<&str> = numeric.split('.').collect();
            if arcs.len() < 2
                || arcs
                    .iter()
                    .any(|a| a.is_empty() || !a.bytes().all(|b| b.is_ascii_digit()))
            {
                return Err(DnError::UnknownAttributeType(raw.to_string()));
            }
            // Canonical form: no leading zeros.
            let canon: Vec<&str> = arcs
                .iter()
                .map(|a| {
                    let t = a.trim_start_matches('0');
                    if t.is_empty() {
                        "0"
                    } else {
                        t
                    }
                })
                .collect();
            return Ok(canonical_oid(canon.join(".")));
        }
        ATTR_TYPES
            .iter()
            .find(|(_, _, names)| names.iter().any(|n| n.eq_ignore_ascii_case(raw)))
            .map(|(oid, _, _)| Cow::Borrowed(*oid))
            .ok_or_else(|| DnError::UnknownAttributeType(raw.to_string()))
    }

    /// Resolve a backslash escape at `self.i` (pointing at the `\`).
    fn escape(&mut self, out: &mut Vec<u8>) -> Result<(), DnError> {
        let at = self.i;
        self.i += 1;
        let Some(b) = self.peek() else {
            return Err(DnError::Syntax {
                offset: at,
                reason: "dangling '\\' at end".into(),
            });
        };
        if let Some(h) = hex_val(b) {
            let l = self.s.get(self.i + 1).copied().and_then(hex_val);
            match l {
                Some(l) => {
                    out.push((h << 4) | l);
                    self.i += 2;
                    Ok(())
                }
                None => Err(DnError::Syntax {
                    offset: at,
                    reason: "'\\' followed by a single hex digit".into(),
                }),
            }
        } else if b.is_ascii_punctuation() || b == b' ' {
            out.push(b);
            self.i += 1;
            Ok(())
        } else {
            Err(DnError::Syntax {
                offset: at,
                reason: format!("invalid escape '\\{}'", char::from(b)),
            })
        }
    }

    /// Parse a value: its comparison form and its decoded text.
    fn value(&mut self) -> Result<(Value, String), DnError> {
        self.skip_spaces();
        let start = self.i;
        match self.peek() {
            Some(b'#') => {
                self.i += 1;
                let hs = self.i;
                while self.peek().is_some_and(|b| b.is_ascii_hexdigit()) {
                    self.i += 1;
                }
                let digits = &self.s[hs..self.i];
                self.skip_spaces();
                if !matches!(self.peek(), None | Some(b',' | b'+' | b';')) {
                    return Err(self.err("unexpected character in '#' hex value"));
                }
                if digits.is_empty() || !digits.len().is_multiple_of(2) {
                    return Err(DnError::Ber {
                        offset: start,
                        reason: "odd or empty hex string".into(),
                    });
                }
                let bytes: Vec<u8> = digits
                    .chunks_exact(2)
                    .map(|p| (hex_val(p[0]).unwrap_or(0) << 4) | hex_val(p[1]).unwrap_or(0))
                    .collect();
                let (class, constructed, tag, data) =
                    parse_tlv(&bytes).map_err(|reason| DnError::Ber {
                        offset: start,
                        reason,
                    })?;
                Ok(value_from_tlv(class, constructed, tag, data))
            }
            Some(b'"') => {
                // RFC 2253/1779 quoted value, accepted for leniency.
                self.i += 1;
                let mut out = Vec::new();
                loop {
                    match self.peek() {
                        None => {
                            return Err(DnError::Syntax {
                                offset: start,
                                reason: "unterminated quoted value".into(),
                            })
                        }
                        Some(b'"') => {
                            self.i += 1;
                            break;
                        }
                        Some(b'\\') => self.escape(&mut out)?,
                        Some(0) => return Err(self.err("NUL character in value")),
                        Some(b) => {
                            out.push(b);
                            self.i += 1;
                        }
                    }
                }
                self.skip_spaces();
                if !matches!(self.peek(), None | Some(b',' | b'+' | b';')) {
                    return Err(self.err("unexpected character after quoted value"));
                }
                let s =
                    String::from_utf8(out).map_err(|_| DnError::InvalidUtf8 { offset: start })?;
                Ok((Value::Str(prepare(&s)), s))
            }
            _ => {
                // Fast path: no escape in the value.
                let mut end = self.i;
                while let Some(&b) = self.s.get(end) {
                    if matches!(b, b',' | b'+' | b';' | b'\\' | 0) {
                        break;
                    }
                    end += 1;
                }
                if !matches!(self.s.get(end), Some(b'\\' | 0)) {
                    let mut vend = end;
                    while vend > start && self.s[vend - 1] == b' ' {
                        vend -= 1;
                    }
                    let v = std::str::from_utf8(&self.s[start..vend])
                        .map_err(|_| DnError::InvalidUtf8 { offset: start })?;
                    self.i = end;
                    return Ok((Value::Str(prepare(v)), v.to_owned()));
                }
                let mut out = Vec::with_capacity(end - start + 16);
                // Length of `out` up to the last escaped or non-space byte:
                // unescaped trailing spaces are dropped.
                let mut keep = 0;
                while let Some(b) = self.peek() {
                    match b {
                        b',' | b'+' | b';' => break,
                        b'\\' => {
                            self.escape(&mut out)?;
                            keep = out.len();
                        }
                        0 => return Err(self.err("NUL character in value")),
                        _ => {
                            out.push(b);
                            self.i += 1;
                            if b != b' ' {
                                keep = out.len();
                            }
                        }
                    }
                }
                out.truncate(keep);
                let s =
                    String::from_utf8(out).map_err(|_| DnError::InvalidUtf8 { offset: start })?;
                Ok((Value::Str(prepare(&s)), s))
            }
        }
    }
}

impl Dn {
    /// Parse an RFC 4514 string (most specific RDN first). Also accepts the
    /// common lenient forms: spaces around separators, `;` as RDN separator,
    /// quoted values, `OID.` prefixes and `#` hex BER values.
    pub fn parse_rfc4514(s: &str) -> Result<Dn, DnError> {
        let mut p = DnParser {
            s: s.as_bytes(),
            i: 0,
        };
        p.skip_spaces();
        if p.peek().is_none() {
            return Err(DnError::Empty);
        }
        let mut avas = Vec::with_capacity(8);
        let mut rdn = 0u32;
        loop {
            loop {
                p.skip_spaces();
                let oid = p.attr_type()?;
                let (norm, raw) = p.value()?;
                avas.push(Ava {
                    rdn,
                    oid,
                    norm,
                    raw,
                });
                if p.peek() == Some(b'+') {
                    p.i += 1;
                    continue;
                }
                break;
            }
            rdn = rdn.checked_add(1).ok_or_else(|| p.err("too many RDNs"))?;
            match p.peek() {
                None => break,
                Some(b',' | b';') => {
                    p.i += 1;
                    p.skip_spaces();
                    if p.peek().is_none() {
                        return Err(p.err("trailing RDN separator"));
                    }
                }
                Some(_) => return Err(p.err("expected ',' or '+'")),
            }
        }
        Ok(Dn::from_avas(avas, Some(trim_unescaped(s))))
    }

    /// Build from a certificate `Name` (ASN.1 order: least specific first);
    /// the result is in RFC 4514 order, equal to parsing the RFC 4514 string
    /// of the same name. Non-string values are kept as DER.
    pub fn from_x509_subject(name: &X509Name<'_>) -> Dn {
        let n = name.iter().count();
        let avas = name
            .iter()
            .enumerate()
            .flat_map(|(i, rdn)| {
                // ASN.1 order is least specific first: reverse the indices.
                let idx = u32::try_from(n - 1 - i).unwrap_or(u32::MAX);
                rdn.iter().map(move |attr| ava_from_x509(idx, attr))
            })
            .collect();
        Dn::from_avas(avas, None)
    }

    /// Subject DN of a DER certificate.
    pub fn from_cert_der(der: &[u8]) -> Result<Dn, DnError> {
        let (_, cert) = x509_parser::parse_x509_certificate(der)
            .map_err(|e| DnError::Certificate(e.to_string()))?;
        Ok(Dn::from_x509_subject(cert.subject()))
    }

    /// The value of the first CN found (most specific RDN first), as decoded.
    pub fn cn(&self) -> Option<&str> {
        self.avas
            .iter()
            .find(|a| a.oid == OID_CN)
            .map(|a| a.raw.as_str())
    }

    /// Number of RDNs.
    pub fn len(&self) -> usize {
        self.avas.last().map_or(0, |a| a.rdn as usize + 1)
    }

    /// True for the empty DN (only possible from an empty certificate name).
    pub fn is_empty(&self) -> bool {
        self.avas.is_empty()
    }

    /// How close `other` is: the number of attribute values equal at the same RDN position, and
    /// the attribute types (`CN`, `O`, ...) that differ or are missing on either side. Used to
    /// show an administrator which declared DN a refused certificate nearly matches.
    pub fn closeness(&self, other: &Dn) -> (usize, Vec<String>) {
        let same = |a: &Ava, b: &Ava| a.rdn == b.rdn && a.oid == b.oid && a.norm == b.norm;
        let mut equal = 0;
        let mut differ: Vec<String> = Vec::new();
        for a in self.avas.iter() {
            if other.avas.iter().any(|b| same(a, b)) {
                equal += 1;
            } else {
                differ.push(display_type(&a.oid).to_string());
            }
        }
        for b in other.avas.iter() {
            let t = display_type(&b.oid).to_string();
            if !self.avas.iter().any(|a| same(a, b)) && !differ.contains(&t) {
                differ.push(t);
            }
        }
        (equal, differ)
    }
}

fn ava_from_x509(rdn: u32, attr: &AttributeTypeAndValue<'_>) -> Ava {
    let oid = canonical_oid(attr.attr_type().to_id_string());
    let any = attr.attr_value();
    let (norm, raw) = value_from_tlv(
        any.class() as u8,
        any.header.is_constructed(),
        any.tag().0,
        any.data,
    );
    Ava {
        rdn,
        oid,
        norm,
        raw,
    }
}

/// RFC 4514 §2.4 escaping of an attribute value: a backslash before `" + , ; < >` and
/// backslash, before a leading `#` or space and a trailing space; control characters as hex
/// pairs.
pub fn escape_value(s: &str) -> String {
    let n = s.chars().count();
    let mut out = String::with_capacity(s.len() + 4);
    for (i, c) in s.chars().enumerate() {
        match c {
            '"' | '+' | ',' | ';' | '<' | '>' | '\\' => {
                out.push('\\');
                out.push(c);
            }
            '#' if i == 0 => out.push_str("\\#"),
            ' ' if i == 0 || i + 1 == n => out.push_str("\\ "),
            c if c.is_ascii_control() => out.push_str(&format!("\\{:02X}", c as u32)),
            c => out.push(c),
        }
    }
    out
}

impl Dn {
    /// The form every equal DN shares: normalised values (case folded, spaces collapsed),
    /// canonical type names, AVAs of an RDN sorted.
    pub fn canonical(&self) -> String {
        rfc4514(&self.avas, |a| match &a.norm {
            Value::Str(s) => escape_value(s),
            Value::Ber(b) => format!("#{}", hex(b)),
        })
    }

    /// `(type, value)` pairs in RFC 4514 order, values as written (escapes resolved).
    pub fn attributes(&self) -> impl Iterator<Item = (&str, &str)> {
        self.avas
            .iter()
            .map(|a| (display_type(&a.oid), a.raw.as_str()))
    }
}

impl fmt::Display for Dn {
    /// As written (see [`Dn`]).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.shown)
    }
}

impl std::str::FromStr for Dn {
    type Err = DnError;
    fn from_str(s: &str) -> Result<Dn, DnError> {
        Dn::parse_rfc4514(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIPIH: &str =
        "CN=medimail-asip.mipih.fr,OU=318310021300028,O=GIP MIPIH,ST=Haute-Garonne (31),C=FR";

    fn dn(s: &str) -> Dn {
        Dn::parse_rfc4514(s).unwrap_or_else(|e| panic!("{s}: {e}"))
    }

    #[test]
    fn dn_parsing_details() {
        assert_eq!(dn("CN=a+O=b,C=FR"), dn("O=B + CN=A,C=fr"));
        assert_eq!(dn("CN=caf\\C3\\A9"), dn("CN=CAFÉ"));
        assert_eq!(dn("CN=a\\ b"), dn("CN=a b"));
        assert_eq!(dn("CN=  a   b  "), dn("CN=a b"));
        assert_eq!(dn("CN=a\tb"), dn("CN=a b"));
        assert_eq!(dn("CN=\"x, y\""), dn("CN=x\\, y"));
        assert_eq!(
            dn("CN=a\\=b\\<\\>\\;\\\"\\\\\\+"),
            dn("CN=A=b\\3C\\3E\\3B\\22\\5C\\2B")
        );
        assert_eq!(dn("emailAddress=x@y.fr"), dn("E=X@Y.FR"));
        assert_eq!(dn("1.2.840.113549.1.9.1=x@y.fr"), dn("E=X@Y.FR"));
        assert_eq!(
            dn("UID=u,DC=example,DC=fr"),
            dn("userid=U,dc=EXAMPLE,domainComponent=FR")
        );
        assert_eq!(dn("SERIALNUMBER=123"), dn("2.5.4.5=123"));
        // '#' BER: a UTF8String "abc" equals the string value.
        assert_eq!(dn("CN=#0c03616263"), dn("CN=abc"));
        assert_eq!(dn("CN=#130141"), dn("CN=a"));
        // Non-string BER value is kept as bytes.
        let ber = dn("1.2.3.4=#020105");
        assert_eq!(ber.canonical(), "1.2.3.4=#020105");
        assert_ne!(ber, dn("1.2.3.4=#020106"));
        assert_eq!(dn(" CN=x , O=y ").canonical(), "CN=x,O=y");
        assert_eq!(dn(" CN=x , O=y ").to_string(), "CN=x , O=y");
        assert_eq!(
            dn("CN=  Medimail-ASIP.mipih.fr ,O=GIP\\, MIPIH,C=FR").canonical(),
            "CN=medimail-asip.mipih.fr,O=gip\\, mipih,C=fr"
        );
        assert_eq!(dn("CN=\\#x\\ ").canonical(), "CN=\\#x");
        assert_eq!(dn("O=GIP\\, MIPIH").cn(), None);
        assert_eq!(dn("CN=Caf\\C3\\A9 X,CN=other").cn(), Some("Café X"));
        assert_eq!(dn(MIPIH).len(), 5);
        let bad = [
            "",
            "   ",
            "CN",
            "CN=a,",
            "=a",
            "XX=a",
            "CN=a\\",
            "CN=a\\4",
            "CN=a\\zz",
            "CN=\\FF",
            "CN=#zz",
            "CN=#0c0461",
            "CN=#0c",
            "CN=#",
            "CN=\"abc",
            "CN=\"a\"b",
            "1.=x",
            "CN=a,,O=b",
        ];
        for b in bad {
            assert!(Dn::parse_rfc4514(b).is_err(), "{b:?} should fail");
        }
        assert_eq!(Dn::parse_rfc4514(""), Err(DnError::Empty));
        assert!(matches!(
            Dn::parse_rfc4514("businessCategory=x"),
            Err(DnError::UnknownAttributeType(_))
        ));
        // Equality implies equal hashes (used as map keys).
        let mut set = std::collections::HashSet::new();
        set.insert(dn(MIPIH));
        assert!(set.contains(&dn(&MIPIH.to_lowercase())));
        // Both forms read back as the same DN.
        for s in [MIPIH, "CN=a\\,b+O=\\#c,C=FR", "CN=\\ x\\ ", "1.2.3=#020105"] {
            let d = dn(s);
            assert_eq!(dn(&d.canonical()), d, "{s}");
            assert_eq!(dn(&d.to_string()), d, "{s}");
            assert_eq!(d.to_string(), s);
        }
    }

    #[test]
    fn dn_parser_never_panics() {
        // Deterministic pseudo-random DN-like strings, rich in special
        // characters: parsing may fail but must not panic, and a successful
        // parse must round-trip through Display.
        const TYPES: &[&str] = &[
            "CN",
            "o",
            "OU",
            "C",
            "2.5.4.3",
            "OID.2.5.4.10",
            "E",
            "",
            "X",
        ];
        const VALUES: &[&str] = &[
            "a",
            "Z z",
            " ",
            "=",
            "#",
            "#0c03616263",
            "\"q,\"",
            "\\",
            "\\,",
            "\\C3\\A9",
            "\\C3",
            "é",
            "\t",
            "<>",
            "\u{0}",
            "\u{a0}",
            "\\ ",
            "\\#",
            "+",
            "\\2b",
        ];
        const SEPS: &[&str] = &[",", "+", ";", " , ", ",,", ""];
        let mut x: u64 = 0x2545_f491_4f6c_dd1d;
        let mut next = |m: usize| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x % m as u64) as usize
        };
        let (mut ok, mut err) = (0, 0);
        for _ in 0..20_000 {
            let mut s = String::new();
            for i in 0..1 + next(5) {
                if i > 0 {
                    s.push_str(SEPS[next(SEPS.len())]);
                }
                s.push_str(TYPES[next(TYPES.len())]);
                s.push('=');
                for _ in 0..next(4) {
                    s.push_str(VALUES[next(VALUES.len())]);
                }
            }
            match Dn::parse_rfc4514(&s) {
                Ok(d) => {
                    ok += 1;
                    let canonical = d.canonical();
                    let again = Dn::parse_rfc4514(&canonical)
                        .unwrap_or_else(|e| panic!("{s:?} -> {canonical} does not reparse: {e}"));
                    assert_eq!(again, d, "{s:?} -> {canonical}");
                    assert_eq!(again.canonical(), canonical);
                }
                Err(_) => err += 1,
            }
        }
        assert!(ok > 2_000 && err > 2_000, "ok {ok}, err {err}");
    }
}
