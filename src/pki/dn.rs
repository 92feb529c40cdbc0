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

mod text;
use std::borrow::Cow;
use std::fmt;
use std::hash::{Hash, Hasher};
use std::sync::Arc;
use text::*;

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
#[path = "dn_tests.rs"]
mod tests;
