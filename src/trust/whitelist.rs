//! The ANS whitelist of MSSanté domains ("liste blanche MSSanté").
//!
//! The Agence du Numérique en Santé publishes `listeblanchemssante.xml`
//! (namespace `https://listeblanche.mssante.fr/schema`): one `<Domaine>`
//! element per (domain, operator certificate) pair. A domain appears once per
//! certificate subject DN its operator may present, and names outside
//! `mssante.fr` exist (`medecin.fr`, `ap-hm.fr`, ...).
//!
//! Why this module exists: the gateway may only exchange mail with a domain
//! of the trust space, and only over a TLS session whose peer certificate
//! subject is one of the DNs listed for that domain. The ANS audits this
//! check, so DN comparison follows RFC 4517 `distinguishedNameMatch` rather
//! than string equality or a CN-only comparison:
//!
//! * RDN order is significant, and a missing or extra RDN never matches;
//! * attribute types are compared by OID (`CN`, `cn`, `2.5.4.3` and
//!   `OID.2.5.4.3` are the same type);
//! * values are compared with `caseIgnoreMatch` and insignificant-space
//!   handling (leading/trailing spaces dropped, inner runs collapsed);
//! * RFC 4514 escapes (`\,`, `\+`, `\XX` hex pairs incl. UTF-8 sequences, ...)
//!   are resolved before comparison; multi-valued RDNs compare as sets.
//!
//! RFC 4514 strings list the most specific RDN first (`CN=...,O=...,C=FR`)
//! while a certificate's ASN.1 `Name` lists the least specific first;
//! [`Dn::from_x509_subject`] reverses the sequence so that both forms of the
//! same name yield equal [`Dn`] values.
//!
//! Parsing is pure (no network). A malformed entry is skipped and reported
//! through [`Whitelist::warnings`] (with its line number); a file that is not
//! XML, has no `<ListeDomaines>` or no usable domain is an error, so that the
//! caller can keep its last good list.
//!
//! Known limits: Unicode normalisation (NFKC, RFC 4518 §2.3) is not applied
//! (precomposed and decomposed accents differ); case folding uses Rust's
//! `to_lowercase`.

use std::borrow::Cow;
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

pub use crate::pki::dn::{Dn, DnError};

/// XML namespace of the ANS whitelist.
pub const NAMESPACE: &str = "https://listeblanche.mssante.fr/schema";

// ---------------------------------------------------------------------------
// Errors
// ---------------------------------------------------------------------------

/// Why a whitelist file could not be used at all.
#[derive(Debug, thiserror::Error)]
pub enum WhitelistError {
    /// The file could not be read (missing, unreadable, not UTF-8).
    #[error("{}: cannot read whitelist: {err}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        err: std::io::Error,
    },
    /// The file is not well-formed XML.
    #[error("{file}:{line}:{column}: not well-formed XML: {message}")]
    Xml {
        file: String,
        line: u32,
        column: u32,
        message: String,
    },
    /// No `<ListeDomaines>` element in the expected namespace.
    #[error(
        "{file}: no <ListeDomaines> element (namespace https://listeblanche.mssante.fr/schema)"
    )]
    MissingListeDomaines { file: String },
    /// The signature is missing or does not verify (see [`crate::trust::xmldsig`]).
    #[error("{file}: refused: {err}")]
    Signature {
        file: String,
        #[source]
        err: crate::trust::xmldsig::DsigError,
    },
    /// The file's `DateDeGeneration` is missing, unreadable, too old or in the future.
    #[error("{file}: refused: {reason}")]
    Freshness { file: String, reason: String },
    /// The file is over a bound checked before it is parsed (size, nesting, CDATA sections).
    #[error("{file}: refused before parsing: {reason}")]
    Bounds { file: String, reason: String },
    /// `<ListeDomaines>` exists but no `<Domaine>` could be used.
    #[error("{file}: <ListeDomaines> holds no usable <Domaine> ({skipped} skipped){}", first_warning.as_deref().map(|w| format!("; first problem: {w}")).unwrap_or_default())]
    NoDomains {
        file: String,
        skipped: usize,
        first_warning: Option<String>,
    },
}

// ---------------------------------------------------------------------------
// Whitelist
// ---------------------------------------------------------------------------

/// One `<Domaine>` element: an operator certificate DN allowed for a domain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WhitelistEntry {
    pub description: String,
    /// `DNCertificatOperateur` as written in the file (trimmed).
    pub dn: String,
    /// The same DN, normalised for comparison.
    pub dn_norm: Dn,
    pub responsable_contact: String,
    pub support_contact: String,
    pub date_maj: String,
    /// 1-based line of the `<Domaine>` element in the source file.
    pub line: u32,
}

/// The parsed ANS whitelist: domain (lowercased, trailing dot stripped) →
/// the operator certificate DNs listed for it.
#[derive(Debug, Clone, Default)]
pub struct Whitelist {
    domains: BTreeMap<String, Vec<WhitelistEntry>>,
    entry_count: usize,
    generated: Option<String>,
    warnings: Vec<String>,
    /// Subject of the certificate whose signature was verified (None: not checked).
    signer: Option<String>,
}

/// What a whitelist file must prove before it replaces the list in force.
#[derive(Debug, Clone, Default)]
pub struct Acceptance {
    /// Refuse a file whose enveloped signature is missing or does not verify against `signers`.
    pub require_signature: bool,
    pub signers: Option<std::sync::Arc<crate::trust::xmldsig::SignerTrust>>,
    /// Refuse a file generated longer ago than this (`DateDeGeneration`); `None`: no limit.
    pub max_age: Option<std::time::Duration>,
    /// Refuse a file over this many bytes before parsing it (`whitelist.max_size`); `None`:
    /// [`MAX_FILE_BYTES`].
    pub max_size: Option<u64>,
}

/// Clock skew tolerated on `DateDeGeneration` before a list counts as "from the future".
const FUTURE_SKEW: std::time::Duration = std::time::Duration::from_secs(3600);

/// An age for messages: whole days past two days, hours past two hours, else minutes.
pub fn human_age(secs: i64) -> String {
    let (n, unit) = match secs {
        s if s >= 2 * 86400 => (s / 86400, "day"),
        s if s >= 7200 => (s / 3600, "hour"),
        s => (s.max(0) / 60, "minute"),
    };
    format!("{n} {unit}{}", if n == 1 { "" } else { "s" })
}

/// `DateDeGeneration` as Unix seconds: RFC 3339 (`2025-02-28T15:42:07Z`, `+01:00` offsets), or
/// without zone (UTC assumed, as in the ANS samples).
pub fn parse_generated(s: &str) -> Option<i64> {
    let s = s.trim();
    let (base, offset) = match s
        .len()
        .checked_sub(6)
        .and_then(|i| s.get(i..).map(|t| (i, t)))
    {
        Some((i, t))
            if (t.starts_with('+') || t.starts_with('-')) && t.as_bytes().get(3) == Some(&b':') =>
        {
            let h: i64 = t.get(1..3)?.parse().ok()?;
            let m: i64 = t.get(4..6)?.parse().ok()?;
            let sign = if t.starts_with('-') { -1 } else { 1 };
            (s.get(..i)?, sign * (h * 3600 + m * 60))
        }
        _ => (s, 0),
    };
    let t = humantime::parse_rfc3339_weak(base).ok()?;
    let secs = match t.duration_since(std::time::UNIX_EPOCH) {
        Ok(d) => i64::try_from(d.as_secs()).ok()?,
        Err(e) => -i64::try_from(e.duration().as_secs()).ok()?,
    };
    Some(secs - offset)
}

/// Lowercase, trim and drop one trailing dot.
fn normalize_domain(d: &str) -> String {
    let d = d.trim();
    let d = d.strip_suffix('.').unwrap_or(d);
    d.to_lowercase()
}

/// Is `d` (already normalised) plausible as a domain name?
fn plausible_domain(d: &str) -> bool {
    !d.is_empty()
        && d.len() <= 253
        && !d.contains(|c: char| c.is_whitespace() || c.is_control() || c == '@' || c == '/')
        && d.split('.')
            .all(|label| !label.is_empty() && label.len() <= 63)
}

/// 1-based line of a byte offset, computed incrementally for increasing
/// offsets.
#[derive(Default)]
struct LineCounter {
    pos: usize,
    newlines: usize,
}

impl LineCounter {
    fn line_at(&mut self, text: &str, pos: usize) -> u32 {
        let pos = pos.min(text.len());
        if pos < self.pos {
            *self = LineCounter::default();
        }
        let bytes = text.as_bytes().get(self.pos..pos).unwrap_or(&[]);
        // Per-chunk u8 sums vectorise well (a chunk of 128 cannot overflow).
        self.newlines += bytes
            .chunks(128)
            .map(|c| usize::from(c.iter().map(|&b| u8::from(b == b'\n')).sum::<u8>()))
            .sum::<usize>();
        self.pos = pos;
        u32::try_from(self.newlines + 1).unwrap_or(u32::MAX)
    }
}

fn is_ans_element(node: roxmltree::Node<'_, '_>, local: &str) -> bool {
    node.is_element()
        && node.tag_name().name() == local
        && matches!(node.tag_name().namespace(), None | Some(NAMESPACE))
}

/// All text below `node` as XML reads it: the text and CDATA pieces of an element
/// concatenated as they are, comments contributing nothing, then trimmed. Why: exclusive c14n drops a comment and
/// keeps the text around it as one string, so `1001-<!--x-->services.fr` is signed as
/// `1001-services.fr`; joining pieces with a space (as before) read another value than the
/// one signed, and a comment could drop a domain or change a DN while the signature held.
/// Borrowed from the document in the usual single-text-child case.
fn element_text<'a>(node: roxmltree::Node<'a, '_>) -> Cow<'a, str> {
    let mut children = node.children();
    match (children.next(), children.next()) {
        (None, _) => return Cow::Borrowed(""),
        (Some(c), None) if c.is_text() => return Cow::Borrowed(c.text().unwrap_or("").trim()),
        _ => {}
    }
    // Text pieces of one element (split only by comments or CDATA) are one value; the
    // values of different child elements (a contact's name and mail) are joined by a space.
    let mut out = String::new();
    let mut piece = String::new();
    let mut parent = None;
    for t in node.descendants().filter(|n| n.is_text()) {
        let p = t.parent().map(|p| p.id());
        if p != parent {
            push_piece(&mut out, &piece);
            piece.clear();
            parent = p;
        }
        piece.push_str(t.text().unwrap_or(""));
    }
    push_piece(&mut out, &piece);
    Cow::Owned(out)
}

fn push_piece(out: &mut String, piece: &str) {
    let piece = piece.trim();
    if !piece.is_empty() {
        if !out.is_empty() {
            out.push(' ');
        }
        out.push_str(piece);
    }
}

/// Largest whitelist file read (the real one is 3.6 MB; the same cap as a download's).
pub const MAX_FILE_BYTES: u64 = crate::util::fs::DEFAULT_MAX_WHITELIST_BYTES;
/// Deepest element nesting accepted (the real list is 5 deep, its signature 6).
pub const MAX_NESTING: usize = 64;
/// Most CDATA sections in a file (the real list has none): the XML parser copies the text
/// gathered so far at each CDATA boundary, so 400,000 alternations took 22 s of CPU.
pub const MAX_CDATA: usize = 1000;

/// A linear scan of the raw text before the XML parser runs. Why: the parser recurses once
/// per nesting level, so a file 4,000 elements deep overflowed the reload thread's stack and
/// killed the gateway before any depth or signature check; and its CDATA handling is
/// quadratic. This scan knows just enough XML (comments, CDATA, processing instructions,
/// quoted attribute values) to count depth and CDATA sections; the parser judges the rest.
pub fn check_shape(xml: &str) -> Result<(), String> {
    let b = xml.as_bytes();
    let find = |from: usize, pat: &[u8]| -> Option<usize> {
        b.get(from..)?
            .windows(pat.len())
            .position(|w| w == pat)
            .map(|p| from + p)
    };
    let (mut i, mut depth, mut cdata) = (0usize, 0usize, 0usize);
    while let Some(p) = memchr::memchr(b'<', &b[i..]) {
        let at = i + p;
        let rest = &b[at..];
        if rest.starts_with(b"<!--") {
            i = find(at + 4, b"-->").map_or(b.len(), |e| e + 3);
        } else if rest.starts_with(b"<![CDATA[") {
            cdata += 1;
            if cdata > MAX_CDATA {
                return Err(format!("more than {MAX_CDATA} CDATA sections"));
            }
            i = find(at + 9, b"]]>").map_or(b.len(), |e| e + 3);
        } else if rest.starts_with(b"<?") {
            i = find(at + 2, b"?>").map_or(b.len(), |e| e + 2);
        } else if rest.starts_with(b"</") {
            depth = depth.saturating_sub(1);
            i = at + 2;
        } else if rest.starts_with(b"<!") {
            // A DTD: the parser refuses it; nothing to count.
            i = at + 2;
        } else {
            // A start tag: to its '>' outside quoted attribute values.
            let mut j = at + 1;
            let mut quote = None;
            while j < b.len() {
                match (quote, b[j]) {
                    (None, b'"') | (None, b'\'') => quote = Some(b[j]),
                    (Some(q), c) if c == q => quote = None,
                    (None, b'>') => break,
                    _ => {}
                }
                j += 1;
            }
            if j > at + 1 && b.get(j - 1) != Some(&b'/') {
                depth += 1;
                if depth > MAX_NESTING {
                    return Err(format!("elements nested deeper than {MAX_NESTING}"));
                }
            }
            i = j + 1;
        }
        if i >= b.len() {
            break;
        }
    }
    Ok(())
}

/// Reads a whitelist file, refusing one over `max` bytes without reading it whole.
fn read_bounded(path: &Path, max: u64) -> Result<String, WhitelistError> {
    let io = |err| WhitelistError::Io {
        path: path.to_path_buf(),
        err,
    };
    let buf = crate::util::fs::read_capped(path, max).map_err(|e| {
        if e.kind() == std::io::ErrorKind::InvalidData {
            WhitelistError::Bounds {
                file: path.display().to_string(),
                reason: e.to_string(),
            }
        } else {
            io(e)
        }
    })?;
    String::from_utf8(buf).map_err(|e| io(std::io::Error::new(std::io::ErrorKind::InvalidData, e)))
}

impl Whitelist {
    /// Parse the XML text of `listeblanchemssante.xml`. `source` names the
    /// file in messages.
    pub fn parse(xml: &str, source: &str) -> Result<Whitelist, WhitelistError> {
        let doc = Self::document(xml, source, MAX_FILE_BYTES)?;
        Self::from_document(&doc, source)
    }

    /// Parse, then apply `rules` (signature, age) at time `now` (Unix seconds) before the
    /// entries are read: a refused file is never half-used.
    pub fn parse_accepted(
        xml: &str,
        source: &str,
        rules: &Acceptance,
        now: i64,
    ) -> Result<Whitelist, WhitelistError> {
        let doc = Self::document(xml, source, rules.max_size.unwrap_or(MAX_FILE_BYTES))?;
        let generated = doc
            .root_element()
            .children()
            .find(|n| is_ans_element(*n, "DateDeGeneration"))
            .map(|n| element_text(n).into_owned());
        let refuse = |reason: String| WhitelistError::Freshness {
            file: source.to_string(),
            reason,
        };
        let needs_date = rules.require_signature || rules.max_age.is_some();
        let generated_at = match (&generated, needs_date) {
            (_, false) => None,
            (None, true) => return Err(refuse("no DateDeGeneration".into())),
            (Some(g), true) => Some(
                parse_generated(g)
                    .ok_or_else(|| refuse(format!("unreadable DateDeGeneration {g:?}")))?,
            ),
        };
        if let Some(at) = generated_at {
            let g = generated.as_deref().unwrap_or("");
            if at > now + FUTURE_SKEW.as_secs() as i64 {
                return Err(refuse(format!("DateDeGeneration {g} is in the future")));
            }
            if let Some(max) = rules.max_age {
                let age = now.saturating_sub(at);
                if age > max.as_secs() as i64 {
                    return Err(refuse(format!(
                        "stale: generated {g}, {} ago, older than whitelist.max_age {}",
                        human_age(age),
                        humantime::format_duration(max)
                    )));
                }
            }
        }
        let mut signer = None;
        if rules.require_signature {
            let trust = rules
                .signers
                .as_ref()
                .ok_or_else(|| WhitelistError::Signature {
                    file: source.to_string(),
                    err: crate::trust::xmldsig::DsigError::Unsupported(
                        "whitelist.require_signature without whitelist.signer_anchors".into(),
                    ),
                })?;
            let at = rustls_pki_types::UnixTime::since_unix_epoch(std::time::Duration::from_secs(
                generated_at.unwrap_or(0).max(0) as u64,
            ));
            let v = crate::trust::xmldsig::verify_enveloped(&doc, trust, at).map_err(|err| {
                WhitelistError::Signature {
                    file: source.to_string(),
                    err,
                }
            })?;
            signer = Some(v.signer);
        }
        let mut wl = Self::from_document(&doc, source)?;
        wl.signer = signer;
        Ok(wl)
    }

    /// Read a file and apply `rules` (see [`Whitelist::parse_accepted`]).
    pub fn load_accepted(
        path: &Path,
        rules: &Acceptance,
        now: i64,
    ) -> Result<Whitelist, WhitelistError> {
        let xml = read_bounded(path, rules.max_size.unwrap_or(MAX_FILE_BYTES))?;
        Whitelist::parse_accepted(&xml, &path.display().to_string(), rules, now)
    }

    /// Subject of the verified signer, when the signature was checked.
    pub fn signer(&self) -> Option<&str> {
        self.signer.as_deref()
    }

    /// `DateDeGeneration` in Unix seconds, when readable.
    pub fn generated_unix(&self) -> Option<i64> {
        self.generated.as_deref().and_then(parse_generated)
    }

    fn document<'x>(
        xml: &'x str,
        source: &str,
        max: u64,
    ) -> Result<roxmltree::Document<'x>, WhitelistError> {
        let xml = xml.strip_prefix('\u{feff}').unwrap_or(xml);
        if xml.len() as u64 > max {
            return Err(WhitelistError::Bounds {
                file: source.to_string(),
                reason: crate::util::fs::too_large(max).to_string(),
            });
        }
        check_shape(xml).map_err(|reason| WhitelistError::Bounds {
            file: source.to_string(),
            reason,
        })?;
        roxmltree::Document::parse(xml).map_err(|e| {
            let pos = e.pos();
            WhitelistError::Xml {
                file: source.to_string(),
                line: pos.row,
                column: pos.col,
                message: e.to_string(),
            }
        })
    }

    fn from_document(
        doc: &roxmltree::Document<'_>,
        source: &str,
    ) -> Result<Whitelist, WhitelistError> {
        let xml = doc.input_text();
        let root = doc.root_element();

        let mut wl = Whitelist {
            generated: root
                .children()
                .find(|n| is_ans_element(*n, "DateDeGeneration"))
                .map(|n| element_text(n).into_owned())
                .filter(|s| !s.is_empty()),
            ..Whitelist::default()
        };

        // A direct child of the root, per the schema (scanning all
        // descendants would walk the whole tree once more).
        let lists: Vec<_> = root
            .children()
            .filter(|n| is_ans_element(*n, "ListeDomaines"))
            .collect();
        if lists.is_empty() {
            return Err(WhitelistError::MissingListeDomaines {
                file: source.to_string(),
            });
        }

        let mut skipped = 0usize;
        // Operators list the same certificate DN for many domains: parse
        // each distinct string once (`Dn` clones are cheap).
        let mut dn_cache: HashMap<Cow<'_, str>, Result<Dn, DnError>> = HashMap::new();
        // Nodes are visited in document order: count lines incrementally
        // (roxmltree's `text_pos_at` rescans from the start on every call).
        let mut lines = LineCounter::default();
        let mut line_of = |n: roxmltree::Node<'_, '_>| lines.line_at(xml, n.range().start);

        for list in lists {
            for dom in list.children().filter(|n| is_ans_element(*n, "Domaine")) {
                let mut nom = None;
                let mut dn = None;
                let mut description = Cow::Borrowed("");
                let mut responsable_contact = Cow::Borrowed("");
                let mut support_contact = Cow::Borrowed("");
                let mut date_maj = Cow::Borrowed("");
                for child in dom.children().filter(|n| n.is_element()) {
                    if !matches!(child.tag_name().namespace(), None | Some(NAMESPACE)) {
                        continue;
                    }
                    match child.tag_name().name() {
                        "Nom" => nom = Some(element_text(child)),
                        "DNCertificatOperateur" => dn = Some((element_text(child), child)),
                        "Description" => description = element_text(child),
                        "ResponsableContact" => responsable_contact = element_text(child),
                        "SupportContact" => support_contact = element_text(child),
                        "DateMAJ" => date_maj = element_text(child),
                        _ => {}
                    }
                }
                let line = line_of(dom);
                let nom = match nom {
                    Some(n) if !n.is_empty() => n,
                    _ => {
                        skipped += 1;
                        wl.warnings.push(format!(
                            "{source}:{line}: <Domaine> without <Nom>, entry skipped"
                        ));
                        continue;
                    }
                };
                let domain = normalize_domain(&nom);
                if !plausible_domain(&domain) {
                    skipped += 1;
                    wl.warnings.push(format!(
                        "{source}:{line}: invalid domain name {nom:?}, entry skipped"
                    ));
                    continue;
                }
                let (dn_text, dn_node) = match dn {
                    Some((t, n)) if !t.is_empty() => (t, n),
                    _ => {
                        skipped += 1;
                        wl.warnings.push(format!(
                            "{source}:{line}: domain {domain}: no <DNCertificatOperateur>, entry skipped"
                        ));
                        continue;
                    }
                };
                let parsed = match dn_cache.get(dn_text.as_ref()) {
                    Some(r) => r.clone(),
                    None => {
                        let r = Dn::parse_rfc4514(&dn_text);
                        dn_cache.insert(dn_text.clone(), r.clone());
                        r
                    }
                };
                let dn_norm = match parsed {
                    Ok(d) => d,
                    Err(e) => {
                        skipped += 1;
                        wl.warnings.push(format!(
                            "{source}:{}: domain {domain}: malformed DNCertificatOperateur {dn_text:?} ({e}), entry skipped",
                            line_of(dn_node)
                        ));
                        continue;
                    }
                };
                let entries = wl.domains.entry(domain).or_default();
                if entries.iter().any(|e| e.dn_norm == dn_norm) {
                    // Same (domain, DN) listed twice: keep the first.
                    continue;
                }
                entries.push(WhitelistEntry {
                    description: description.into_owned(),
                    dn: dn_text.into_owned(),
                    dn_norm,
                    responsable_contact: responsable_contact.into_owned(),
                    support_contact: support_contact.into_owned(),
                    date_maj: date_maj.into_owned(),
                    line,
                });
                wl.entry_count += 1;
            }
        }

        if wl.domains.is_empty() {
            return Err(WhitelistError::NoDomains {
                file: source.to_string(),
                skipped,
                first_warning: wl.warnings.first().cloned(),
            });
        }
        tracing::debug!(
            source,
            domains = wl.domains.len(),
            entries = wl.entry_count,
            warnings = wl.warnings.len(),
            "MSSanté whitelist parsed"
        );
        Ok(wl)
    }

    /// Read and parse a whitelist file.
    pub fn load(path: &Path) -> Result<Whitelist, WhitelistError> {
        let xml = read_bounded(path, MAX_FILE_BYTES)?;
        Whitelist::parse(&xml, &path.display().to_string())
    }

    /// Is `domain` listed? Case-insensitive, trailing dot ignored.
    pub fn contains(&self, domain: &str) -> bool {
        self.domains.contains_key(&normalize_domain(domain))
    }

    /// Entries listed for `domain` (empty if not listed).
    pub fn entries(&self, domain: &str) -> &[WhitelistEntry] {
        self.domains
            .get(&normalize_domain(domain))
            .map(Vec::as_slice)
            .unwrap_or(&[])
    }

    /// Is `peer` (a certificate subject) one of the DNs listed for `domain`?
    pub fn dn_allowed(&self, domain: &str, peer: &Dn) -> bool {
        self.entries(domain).iter().any(|e| &e.dn_norm == peer)
    }

    /// Whether `peer` is listed for any domain: an operator of the trust space. Used for the
    /// null sender (bounces, MDNs), which has no domain to check against.
    pub fn dn_known(&self, peer: &Dn) -> bool {
        self.domains.values().flatten().any(|e| &e.dn_norm == peer)
    }

    /// Number of distinct domains.
    pub fn domain_count(&self) -> usize {
        self.domains.len()
    }

    /// Number of (domain, DN) entries kept.
    pub fn entry_count(&self) -> usize {
        self.entry_count
    }

    /// `DateDeGeneration`, as written.
    pub fn generated(&self) -> Option<&str> {
        self.generated.as_deref()
    }

    /// Listed domains (normalised), in lexical order.
    pub fn domains(&self) -> impl Iterator<Item = &str> {
        self.domains.keys().map(String::as_str)
    }

    /// Problems found in entries that were skipped, `file:line: ...`.
    pub fn warnings(&self) -> &[String] {
        &self.warnings
    }
}

#[cfg(test)]
#[path = "whitelist_tests.rs"]
mod tests;
