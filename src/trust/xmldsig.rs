//! Verification of the enveloped XML signature of the ANS whitelist.
//!
//! The ANS signs `listeblanchemssante.xml` with an enveloped XML-DSig signature: one
//! `<Signature>` (namespace `http://www.w3.org/2000/09/xmldsig#`) as the last child of the
//! root, one `<Reference URI="">` with the transforms *enveloped-signature* then *exclusive
//! c14n* and a SHA-256 digest, the `SignedInfo` canonicalised with exclusive c14n and signed
//! with RSA-SHA256 (PKCS#1 v1.5), the signer certificate in `KeyInfo/X509Data`.
//!
//! Why written here rather than bound: no maintained Rust crate verifies XML-DSig, and binding
//! `libxmlsec1` would bring libxml2 and OpenSSL (a second TLS/crypto stack beside rustls/ring,
//! a C XML parser on a file downloaded from the Internet, and a system dependency for every
//! build). The ANS file uses a small, fixed subset, so this module implements exactly that
//! subset over `roxmltree` (which refuses DTDs, hence entities) and refuses everything else:
//!
//! * exactly one `Signature` in the whole document, a direct child of the root element;
//! * `CanonicalizationMethod` = exclusive c14n without comments, no `InclusiveNamespaces`;
//! * `SignatureMethod` = RSA-SHA256; exactly one `Reference`, `URI=""` (the whole document);
//! * `Transforms` = enveloped-signature then exclusive c14n; `DigestMethod` = SHA-256;
//! * the signer certificate first in `KeyInfo/X509Data` (others there are ignored: the chain
//!   is built from the configured anchors only).
//!
//! The canonicaliser follows the W3C Exclusive XML Canonicalization 1.0 rules on the XPath
//! data model that roxmltree gives (line ends normalised, attribute values normalised, entity
//! and character references resolved, CDATA merged into text): comments dropped, namespace
//! declarations rendered only where visibly used and not already in force in the output,
//! namespace declarations sorted by prefix, attributes by (namespace URI, local name), empty
//! elements written as start/end pairs, text and attribute escapes per the spec. The prefix of
//! an element or attribute is read back from the source text, since the data model keeps
//! only the namespace URI. It is checked against the real signed list (its digest must match)
//! and fuzzed (`fuzz/fuzz_targets/xmldsig.rs`).
//!
//! The signer certificate is validated with rustls-webpki against the configured anchors at
//! the time the file says it was generated (`DateDeGeneration`), not now: a list signed while
//! the signer was valid stays verifiable after the signer expires. Revocation of the signer
//! is not checked (the IGC-Santé CRLs are for the peers; a revoked ANS signer is an event the
//! ANS announces). Which subjects may sign is restricted by `whitelist.signer_dns`: every
//! IGC-Santé organisation certificate chains to the same anchors.

use crate::pki::dn::Dn;
use base64::Engine as _;
use roxmltree::{Document, Node, NodeId};
use rustls_pki_types::{CertificateDer, TrustAnchor, UnixTime};
use std::fmt::Write as _;

/// XML-DSig namespace.
pub const DSIG_NS: &str = "http://www.w3.org/2000/09/xmldsig#";
/// Exclusive XML canonicalisation 1.0, without comments.
pub const EXC_C14N: &str = "http://www.w3.org/2001/10/xml-exc-c14n#";
/// RSA PKCS#1 v1.5 with SHA-256.
pub const RSA_SHA256: &str = "http://www.w3.org/2001/04/xmldsig-more#rsa-sha256";
/// SHA-256 digest.
pub const SHA256: &str = "http://www.w3.org/2001/04/xmlenc#sha256";
/// The enveloped-signature transform.
pub const ENVELOPED: &str = "http://www.w3.org/2000/09/xmldsig#enveloped-signature";

/// Deeper documents are refused: the whitelist is 4 levels deep, and a bound keeps the
/// canonicaliser's stack small on hostile input.
const MAX_DEPTH: usize = 64;

/// Why a signature was refused. The text is what the log and `/readyz` show.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DsigError {
    #[error("unsigned: no XML signature (ds:Signature) in the file")]
    Unsigned,
    #[error("{0} ds:Signature elements; exactly one is accepted")]
    SeveralSignatures(usize),
    #[error("signature form not supported: {0}")]
    Unsupported(String),
    #[error("malformed signature: {0}")]
    Malformed(String),
    #[error("content altered after signing: the SHA-256 digest of the document does not match the signed one")]
    DigestMismatch,
    #[error("signature value does not verify with the signer certificate {0}")]
    BadSignature(String),
    #[error("signer certificate {subject} not trusted: {why}")]
    UntrustedSigner { subject: String, why: String },
    #[error("signer {0} is not one of whitelist.signer_dns")]
    SignerNotAllowed(String),
}

fn unsupported(s: impl Into<String>) -> DsigError {
    DsigError::Unsupported(s.into())
}
fn malformed(s: impl Into<String>) -> DsigError {
    DsigError::Malformed(s.into())
}

/// Who may sign: anchors (every certificate of `whitelist.signer_anchors` is an anchor, so the
/// IGC-Santé root and its intermediate may both be listed) and, optionally, the subject DNs
/// allowed to sign.
#[derive(Debug, Clone)]
pub struct SignerTrust {
    anchors: Vec<TrustAnchor<'static>>,
    allowed: Vec<Dn>,
}

impl SignerTrust {
    /// From DER certificates. An empty `allowed` accepts any subject that chains.
    pub fn new(certs: &[CertificateDer<'_>], allowed: Vec<Dn>) -> Result<SignerTrust, String> {
        let anchors = certs
            .iter()
            .map(|c| {
                webpki::anchor_from_trusted_cert(c)
                    .map(|a| a.to_owned())
                    .map_err(|e| format!("not a usable CA certificate: {e:?}"))
            })
            .collect::<Result<Vec<_>, _>>()?;
        if anchors.is_empty() {
            return Err("no certificate".into());
        }
        Ok(SignerTrust { anchors, allowed })
    }

    /// From a PEM file.
    pub fn from_pem(pem: &[u8], allowed: Vec<Dn>) -> Result<SignerTrust, String> {
        use rustls_pki_types::pem::PemObject;
        let certs = CertificateDer::pem_slice_iter(pem)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| format!("not PEM certificates: {e}"))?;
        Self::new(&certs, allowed)
    }
}

/// What a successful verification established.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verified {
    /// The signer certificate's subject, RFC 4514.
    pub signer: String,
    /// Its validity end (Unix seconds), for the log.
    pub signer_not_after: i64,
}

/// Accepts any extended key usage: the ANS signer carries emailProtection today, and who may
/// sign is decided by the anchors and `signer_dns`, not by an EKU.
struct AnyEku;

impl webpki::ExtendedKeyUsageValidator for AnyEku {
    fn validate(&self, iter: webpki::KeyPurposeIdIter<'_, '_>) -> Result<(), webpki::Error> {
        for k in iter {
            k?;
        }
        Ok(())
    }
}

fn is_dsig(n: Node<'_, '_>, local: &str) -> bool {
    n.is_element() && n.tag_name().name() == local && n.tag_name().namespace() == Some(DSIG_NS)
}

/// The one dsig child `local` of `n`.
fn child<'a, 'i>(n: Node<'a, 'i>, local: &str) -> Result<Node<'a, 'i>, DsigError> {
    let mut it = n.children().filter(|c| is_dsig(*c, local));
    match (it.next(), it.next()) {
        (Some(c), None) => Ok(c),
        (None, _) => Err(malformed(format!("{} has no {local}", n.tag_name().name()))),
        (Some(_), Some(_)) => Err(unsupported(format!(
            "several {local} in {}",
            n.tag_name().name()
        ))),
    }
}

/// The element children of `n`; any non-whitespace text or foreign element is refused.
fn element_children<'a, 'i>(n: Node<'a, 'i>) -> Result<Vec<Node<'a, 'i>>, DsigError> {
    let mut out = Vec::new();
    for c in n.children() {
        if c.is_element() {
            if c.tag_name().namespace() != Some(DSIG_NS) {
                return Err(unsupported(format!(
                    "foreign element {} in {}",
                    c.tag_name().name(),
                    n.tag_name().name()
                )));
            }
            out.push(c);
        } else if c.is_text() && !c.text().unwrap_or("").trim().is_empty() {
            return Err(malformed(format!("text in {}", n.tag_name().name())));
        }
    }
    Ok(out)
}

fn algorithm<'a>(n: Node<'a, '_>, want: &[&str]) -> Result<&'a str, DsigError> {
    let a = n
        .attribute("Algorithm")
        .ok_or_else(|| malformed(format!("{} without Algorithm", n.tag_name().name())))?;
    if !want.contains(&a) {
        return Err(unsupported(format!("{} {a}", n.tag_name().name())));
    }
    // InclusiveNamespaces (a PrefixList) or any parameter is outside the subset.
    if !element_children(n)?.is_empty() {
        return Err(unsupported(format!(
            "parameters in {} {a}",
            n.tag_name().name()
        )));
    }
    Ok(a)
}

/// Base64 with the line breaks and `&#13;` the ANS tools insert.
fn base64_text(n: Node<'_, '_>) -> Result<Vec<u8>, DsigError> {
    let text: String = n
        .children()
        .filter(|c| c.is_text())
        .flat_map(|c| c.text().unwrap_or("").chars())
        .filter(|c| !c.is_ascii_whitespace())
        .collect();
    base64::engine::general_purpose::STANDARD
        .decode(text.as_bytes())
        .map_err(|e| malformed(format!("{}: bad base64: {e}", n.tag_name().name())))
}

/// Verifies the document's enveloped signature: its form, the digest of the document without
/// the signature, the RSA-SHA256 signature of the canonical `SignedInfo`, and the signer's
/// chain to `trust` at time `at` (the file's `DateDeGeneration`).
pub fn verify_enveloped(
    doc: &Document<'_>,
    trust: &SignerTrust,
    at: UnixTime,
) -> Result<Verified, DsigError> {
    let sigs: Vec<Node<'_, '_>> = doc
        .descendants()
        .filter(|n| is_dsig(*n, "Signature"))
        .collect();
    let sig = match sigs.as_slice() {
        [] => return Err(DsigError::Unsigned),
        [one] => *one,
        more => return Err(DsigError::SeveralSignatures(more.len())),
    };
    if sig.parent() != Some(doc.root_element()) {
        return Err(unsupported(
            "the signature is not a child of the root element",
        ));
    }
    let parts = element_children(sig)?;
    for p in &parts {
        let name = p.tag_name().name();
        if !matches!(name, "SignedInfo" | "SignatureValue" | "KeyInfo") {
            return Err(unsupported(format!("{name} in Signature")));
        }
    }
    let signed_info = child(sig, "SignedInfo")?;
    let signature_value = base64_text(child(sig, "SignatureValue")?)?;
    let key_info = child(sig, "KeyInfo")?;

    // SignedInfo: the algorithms of the subset, one Reference to the whole document.
    let si = element_children(signed_info)?;
    let names: Vec<&str> = si.iter().map(|n| n.tag_name().name()).collect();
    if names.len() < 3
        || names[0] != "CanonicalizationMethod"
        || names[1] != "SignatureMethod"
        || names[2..].iter().any(|n| *n != "Reference")
    {
        return Err(malformed(format!("SignedInfo holds {names:?}")));
    }
    if si.len() != 3 {
        return Err(unsupported(format!("{} References", si.len() - 2)));
    }
    algorithm(si[0], &[EXC_C14N])?;
    algorithm(si[1], &[RSA_SHA256])?;
    let reference = si[2];
    match reference.attribute("URI") {
        Some("") => {}
        Some(u) => {
            return Err(unsupported(format!(
                "Reference URI {u:?} (only the whole document, URI=\"\")"
            )))
        }
        None => return Err(unsupported("Reference without URI")),
    }
    let rparts = element_children(reference)?;
    let rnames: Vec<&str> = rparts.iter().map(|n| n.tag_name().name()).collect();
    if rnames != ["Transforms", "DigestMethod", "DigestValue"] {
        return Err(malformed(format!("Reference holds {rnames:?}")));
    }
    let transforms = element_children(rparts[0])?;
    let talgs = transforms
        .iter()
        .map(|t| {
            if t.tag_name().name() != "Transform" {
                return Err(malformed("Transforms holds something else than Transform"));
            }
            algorithm(*t, &[ENVELOPED, EXC_C14N])
        })
        .collect::<Result<Vec<_>, _>>()?;
    if talgs != [ENVELOPED, EXC_C14N] {
        return Err(unsupported(format!(
            "transforms {talgs:?} (enveloped-signature then exclusive c14n expected)"
        )));
    }
    algorithm(rparts[1], &[SHA256])?;
    let digest_value = base64_text(rparts[2])?;

    // The signer certificate: the first X509Certificate of the first X509Data.
    let x509 = key_info
        .children()
        .find(|n| is_dsig(*n, "X509Data"))
        .and_then(|d| d.children().find(|n| is_dsig(*n, "X509Certificate")))
        .ok_or_else(|| unsupported("no X509Certificate in KeyInfo"))?;
    let cert_der = CertificateDer::from(base64_text(x509)?);
    // Parsed once for its subject and expiry (webpki parses it again, its own way, to check
    // the signature and the chain).
    let (_, parsed) = x509_parser::parse_x509_certificate(cert_der.as_ref())
        .map_err(|e| malformed(format!("signer certificate: {e}")))?;
    let signer_dn = Dn::from_x509_subject(parsed.subject());
    let subject = signer_dn.to_string();
    let not_after = parsed.validity().not_after.timestamp();

    // 1. The document, without the signature, has the signed digest.
    let mut canon = Vec::with_capacity(doc.input_text().len());
    canonicalize(doc.root(), Some(sig.id()), &mut canon)?;
    let digest = ring::digest::digest(&ring::digest::SHA256, &canon);
    if digest.as_ref() != digest_value.as_slice() {
        return Err(DsigError::DigestMismatch);
    }

    // 2. The canonical SignedInfo is signed by the certificate's key.
    let mut si_canon = Vec::with_capacity(1024);
    canonicalize(signed_info, None, &mut si_canon)?;
    let ee = webpki::EndEntityCert::try_from(&cert_der)
        .map_err(|e| malformed(format!("signer certificate {subject}: {e:?}")))?;
    ee.verify_signature(
        webpki::ring::RSA_PKCS1_2048_8192_SHA256,
        &si_canon,
        &signature_value,
    )
    .map_err(|_| DsigError::BadSignature(subject.clone()))?;

    // 3. The certificate chains to the anchors and was valid when the list was generated.
    ee.verify_for_usage(
        webpki::ALL_VERIFICATION_ALGS,
        &trust.anchors,
        &[],
        at,
        AnyEku,
        None,
        None,
    )
    .map_err(|e| DsigError::UntrustedSigner {
        subject: subject.clone(),
        why: describe_chain_error(&e),
    })?;
    if !trust.allowed.is_empty() && !trust.allowed.contains(&signer_dn) {
        return Err(DsigError::SignerNotAllowed(subject));
    }
    Ok(Verified {
        signer: subject,
        signer_not_after: not_after,
    })
}

fn describe_chain_error(e: &webpki::Error) -> String {
    use webpki::Error as E;
    match e {
        E::UnknownIssuer => "not issued by whitelist.signer_anchors".into(),
        E::CertExpired { .. } => "expired at the list's DateDeGeneration".into(),
        E::CertNotValidYet { .. } => "not yet valid at the list's DateDeGeneration".into(),
        E::InvalidSignatureForPublicKey => {
            "its issuer's signature does not verify (a look-alike CA)".into()
        }
        other => format!("{other:?}"),
    }
}

// ---------------------------------------------------------------------------
// Exclusive canonicalisation
// ---------------------------------------------------------------------------

/// The qualified name's prefix as written in the source (`""` when none).
fn source_prefix(qname: &str) -> &str {
    qname.split_once(':').map(|(p, _)| p).unwrap_or("")
}

/// The element's qualified name as written: the start tag begins with `<` at `range().start`.
fn element_qname<'i>(n: Node<'_, 'i>) -> Result<&'i str, DsigError> {
    let text = n.document().input_text();
    let rest = text
        .get(n.range().start + 1..)
        .ok_or_else(|| malformed("element position"))?;
    let end = rest
        .find(|c: char| c.is_whitespace() || c == '/' || c == '>')
        .unwrap_or(rest.len());
    let q = &rest[..end];
    if q.is_empty() || !q.ends_with(n.tag_name().name()) {
        return Err(malformed(format!("cannot read back the name of {q:?}")));
    }
    Ok(q)
}

/// Writes `s` with the bytes `rep` maps replaced (c14n escapes; all ASCII, so UTF-8
/// sequences pass through untouched).
fn escape(s: &str, out: &mut Vec<u8>, rep: fn(u8) -> Option<&'static [u8]>) {
    let mut last = 0;
    for (i, b) in s.bytes().enumerate() {
        if let Some(r) = rep(b) {
            out.extend_from_slice(&s.as_bytes()[last..i]);
            out.extend_from_slice(r);
            last = i + 1;
        }
    }
    out.extend_from_slice(&s.as_bytes()[last..]);
}

fn escape_text(s: &str, out: &mut Vec<u8>) {
    escape(s, out, |b| match b {
        b'&' => Some(b"&amp;"),
        b'<' => Some(b"&lt;"),
        b'>' => Some(b"&gt;"),
        b'\r' => Some(b"&#xD;"),
        _ => None,
    })
}

fn escape_attr(s: &str, out: &mut Vec<u8>) {
    escape(s, out, |b| match b {
        b'&' => Some(b"&amp;"),
        b'<' => Some(b"&lt;"),
        b'"' => Some(b"&quot;"),
        b'\t' => Some(b"&#x9;"),
        b'\n' => Some(b"&#xA;"),
        b'\r' => Some(b"&#xD;"),
        _ => None,
    })
}

/// Namespace declarations in force in the output, innermost last: (prefix, URI, depth).
struct Rendered(Vec<(String, String, usize)>);

impl Rendered {
    fn current(&self, prefix: &str) -> &str {
        self.0
            .iter()
            .rev()
            .find(|(p, _, _)| p == prefix)
            .map(|(_, u, _)| u.as_str())
            .unwrap_or("")
    }
    fn pop_depth(&mut self, depth: usize) {
        while self.0.last().is_some_and(|(_, _, d)| *d >= depth) {
            self.0.pop();
        }
    }
}

/// Exclusive c14n (without comments) of `node` and its subtree into `out`. `node` is the
/// document root (the whole document) or an element (a document subset, as for
/// `SignedInfo`). `skip` is left out with its subtree (the enveloped signature).
pub fn canonicalize(
    node: Node<'_, '_>,
    skip: Option<NodeId>,
    out: &mut Vec<u8>,
) -> Result<(), DsigError> {
    let mut rendered = Rendered(Vec::new());
    if node.is_root() {
        let mut seen_element = false;
        for c in node.children() {
            if c.is_element() {
                element(c, skip, &mut rendered, 0, out)?;
                seen_element = true;
            } else if let Some(pi) = c.pi() {
                check_pi(pi)?;
                // Outside the document element, a PI is separated by a line break.
                if seen_element {
                    out.push(b'\n');
                }
                write_pi(pi, out);
                if !seen_element {
                    out.push(b'\n');
                }
            }
        }
        Ok(())
    } else if node.is_element() {
        element(node, skip, &mut rendered, 0, out)
    } else {
        Err(malformed(
            "canonicalisation of something else than an element",
        ))
    }
}

/// A PI target `xml` (any case) is reserved (XML 1.0 §2.6); roxmltree lets `<?xml;...?>`
/// through as a PI, which would canonicalise into a broken declaration.
fn check_pi(pi: roxmltree::PI<'_>) -> Result<(), DsigError> {
    if pi.target.eq_ignore_ascii_case("xml") {
        return Err(malformed("processing instruction named xml"));
    }
    Ok(())
}

fn write_pi(pi: roxmltree::PI<'_>, out: &mut Vec<u8>) {
    out.extend_from_slice(b"<?");
    out.extend_from_slice(pi.target.as_bytes());
    if let Some(v) = pi.value.filter(|v| !v.is_empty()) {
        out.push(b' ');
        out.extend_from_slice(v.as_bytes());
    }
    out.extend_from_slice(b"?>");
}

fn element(
    n: Node<'_, '_>,
    skip: Option<NodeId>,
    rendered: &mut Rendered,
    depth: usize,
    out: &mut Vec<u8>,
) -> Result<(), DsigError> {
    if Some(n.id()) == skip {
        return Ok(());
    }
    if depth > MAX_DEPTH {
        return Err(unsupported(format!("nesting deeper than {MAX_DEPTH}")));
    }
    let qname = element_qname(n)?;
    let prefix = source_prefix(qname);
    let uri = n.tag_name().namespace().unwrap_or("");
    if prefix == "xml" || prefix == "xmlns" {
        return Err(unsupported(format!("element {qname}")));
    }
    if !prefix.is_empty() && uri.is_empty() {
        return Err(malformed(format!("undeclared prefix in {qname}")));
    }

    // Visibly used namespaces: the element's, then its prefixed attributes'.
    let mut used: Vec<(&str, &str)> = vec![(prefix, uri)];
    let text = n.document().input_text();
    let mut attrs: Vec<(&str, &str, String, &str)> = Vec::new(); // (uri, local, qname, value)
    for a in n.attributes() {
        let aqname = text
            .get(a.range_qname())
            .ok_or_else(|| malformed("attribute position"))?;
        let auri = a.namespace().unwrap_or("");
        let aprefix = source_prefix(aqname);
        if auri.is_empty() != aprefix.is_empty() {
            return Err(malformed(format!("attribute {aqname}")));
        }
        if !aprefix.is_empty() && aprefix != "xml" {
            used.push((aprefix, auri));
        }
        let shown = if aprefix.is_empty() {
            a.name().to_string()
        } else {
            format!("{aprefix}:{}", a.name())
        };
        attrs.push((auri, a.name(), shown, a.value()));
    }
    used.sort();
    used.dedup();
    let mut decls: Vec<(&str, &str)> = Vec::new();
    for (p, u) in used {
        if decls.iter().any(|(dp, du)| *dp == p && *du != u) {
            return Err(malformed(format!("prefix {p:?} bound twice in {qname}")));
        }
        if rendered.current(p) != u {
            decls.push((p, u));
        }
    }
    attrs.sort_by(|a, b| (a.0, a.1).cmp(&(b.0, b.1)));

    out.push(b'<');
    out.extend_from_slice(qname.as_bytes());
    for (p, u) in &decls {
        if p.is_empty() {
            out.extend_from_slice(b" xmlns=\"");
        } else {
            let _ = write!(Sink(out), " xmlns:{p}=\"");
        }
        escape_attr(u, out);
        out.push(b'"');
        rendered.0.push((p.to_string(), u.to_string(), depth));
    }
    for (_, _, shown, value) in &attrs {
        out.push(b' ');
        out.extend_from_slice(shown.as_bytes());
        out.extend_from_slice(b"=\"");
        escape_attr(value, out);
        out.push(b'"');
    }
    out.push(b'>');
    for c in n.children() {
        if c.is_element() {
            element(c, skip, rendered, depth + 1, out)?;
        } else if c.is_text() {
            escape_text(c.text().unwrap_or(""), out);
        } else if let Some(pi) = c.pi() {
            check_pi(pi)?;
            write_pi(pi, out);
        }
        // Comments are dropped (c14n without comments).
    }
    out.extend_from_slice(b"</");
    out.extend_from_slice(qname.as_bytes());
    out.push(b'>');
    rendered.pop_depth(depth);
    Ok(())
}

/// `write!` into a byte vector.
struct Sink<'a>(&'a mut Vec<u8>);

impl std::fmt::Write for Sink<'_> {
    fn write_str(&mut self, s: &str) -> std::fmt::Result {
        self.0.extend_from_slice(s.as_bytes());
        Ok(())
    }
}

#[cfg(test)]
#[path = "xmldsig_tests.rs"]
mod tests;
