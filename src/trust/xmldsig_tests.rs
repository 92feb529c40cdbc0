//! Unit tests of `xmldsig.rs` (kept apart so the code reads on its own); `real_file` and
//! `tampering` run on the real signed whitelist.

use super::*;

fn c14n(xml: &str) -> String {
    let doc = Document::parse(xml).unwrap();
    let mut out = Vec::new();
    canonicalize(doc.root(), None, &mut out).unwrap();
    String::from_utf8(out).unwrap()
}

#[test]
fn canonical_form_basics() {
    // Empty elements expanded, attributes sorted, declarations only where used,
    // comments dropped, XML declaration dropped, escapes.
    assert_eq!(
            c14n("<?xml version=\"1.0\"?>\n<a xmlns=\"urn:a\" xmlns:u=\"urn:unused\" z=\"1\" b='x&amp;&quot;&#9;'><!-- c --><b/>t&lt;&gt;&#13;</a>"),
            "<a xmlns=\"urn:a\" b=\"x&amp;&quot;&#x9;\" z=\"1\"><b></b>t&lt;&gt;&#xD;</a>"
        );
    // A prefix declared on the root but used below is rendered where used, and again in
    // a sibling subtree.
    assert_eq!(
        c14n("<r xmlns:p=\"urn:p\"><p:x><p:y/></p:x><p:z/></r>"),
        "<r><p:x xmlns:p=\"urn:p\"><p:y></p:y></p:x><p:z xmlns:p=\"urn:p\"></p:z></r>"
    );
    // Attributes in namespaces: sorted by URI then name, unqualified first.
    assert_eq!(
        c14n("<r xmlns:b=\"urn:b\" xmlns:a=\"urn:a\" b:k=\"1\" a:k=\"2\" k=\"3\"/>"),
        "<r xmlns:a=\"urn:a\" xmlns:b=\"urn:b\" k=\"3\" a:k=\"2\" b:k=\"1\"></r>"
    );
    // Undeclaring the default namespace where an ancestor rendered one.
    assert_eq!(
        c14n("<r xmlns=\"urn:r\"><x xmlns=\"\"/></r>"),
        "<r xmlns=\"urn:r\"><x xmlns=\"\"></x></r>"
    );
    // xml: attributes need no declaration; PIs are kept; CDATA becomes text.
    assert_eq!(
        c14n("<?pi  a?><r xml:lang=\"fr\"><?t  v ?><![CDATA[<&>]]></r>"),
        "<?pi a?>\n<r xml:lang=\"fr\"><?t v ?>&lt;&amp;&gt;</r>"
    );
    // A PI named like the XML declaration (found by the fuzzer) is refused.
    let doc = Document::parse("<?xml; version=\"1.0\"?><r/>").unwrap();
    assert!(canonicalize(doc.root(), None, &mut Vec::new()).is_err());
    // Line ends normalised by the parser.
    assert_eq!(c14n("<r>a\r\nb\rc</r>"), "<r>a\nb\nc</r>");
}

#[test]
fn subset_rendering_pulls_ancestor_declarations() {
    let xml = "<r xmlns=\"urn:r\"><s xmlns=\"urn:s\" xmlns:q=\"urn:q\"><i q:a=\"1\"/></s></r>";
    let doc = Document::parse(xml).unwrap();
    let i = doc
        .descendants()
        .find(|n| n.tag_name().name() == "i")
        .unwrap();
    let mut out = Vec::new();
    canonicalize(i, None, &mut out).unwrap();
    assert_eq!(
        String::from_utf8(out).unwrap(),
        "<i xmlns=\"urn:s\" xmlns:q=\"urn:q\" q:a=\"1\"></i>"
    );
}

#[test]
fn depth_is_bounded() {
    let deep = "<a>".repeat(100) + &"</a>".repeat(100);
    let doc = Document::parse(&deep).unwrap();
    let mut out = Vec::new();
    assert!(matches!(
        canonicalize(doc.root(), None, &mut out),
        Err(DsigError::Unsupported(_))
    ));
}

mod real_file {
    use super::*;

    pub(crate) fn path(rel: &str) -> std::path::PathBuf {
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(rel)
    }

    pub(crate) fn igc_trust(allowed: Vec<Dn>) -> SignerTrust {
        let mut pem = std::fs::read(path("config/igc-sante/ACR-EL.pem")).unwrap();
        pem.extend(std::fs::read(path("config/igc-sante/ACI-EL-ORG.pem")).unwrap());
        SignerTrust::from_pem(&pem, allowed).unwrap()
    }

    /// 2025-02-28T15:42:07Z, the list's DateDeGeneration.
    pub(crate) const GENERATED: u64 = 1_740_757_327;

    #[test]
    fn the_real_ans_list_verifies() {
        let xml =
            std::fs::read_to_string(path("tests/data/listeblanchemssante-2025-02-28-signed.xml"))
                .unwrap();
        let doc = Document::parse(&xml).unwrap();
        let t = std::time::Instant::now();
        let v = verify_enveloped(
            &doc,
            &igc_trust(vec![]),
            UnixTime::since_unix_epoch(std::time::Duration::from_secs(GENERATED)),
        )
        .unwrap();
        println!("verified {} KiB in {:?}", xml.len() / 1024, t.elapsed());
        assert_eq!(
            v.signer,
            "CN=alb.mssante.fr,OU=347976684200724,O=CAPGEMINI TECHNOLOGY SERVICES,ST=Hauts-de-Seine (92),C=FR"
        );
        // Now (after 2026-08-23) the signer has expired: checked at generation time only.
        let later = UnixTime::since_unix_epoch(std::time::Duration::from_secs(1_800_000_000));
        assert!(matches!(
            verify_enveloped(&doc, &igc_trust(vec![]), later),
            Err(DsigError::UntrustedSigner { .. })
        ));
    }
}

/// The refusal vectors, built from the real list: one DN changed, the signature
/// removed, re-signed by a key outside IGC-Santé, stale, a signer not in `signer_dns`.
mod tampering {
    use super::real_file::{igc_trust, path, GENERATED};
    use super::*;
    use crate::trust::whitelist::{Acceptance, Whitelist, WhitelistError};
    use std::sync::Arc;

    fn real() -> String {
        std::fs::read_to_string(path("tests/data/listeblanchemssante-2025-02-28-signed.xml"))
            .unwrap()
    }

    fn rules(trust: SignerTrust, max_age: Option<u64>) -> Acceptance {
        Acceptance {
            require_signature: true,
            signers: Some(Arc::new(trust)),
            max_age: max_age.map(std::time::Duration::from_secs),
            max_size: None,
        }
    }

    fn accept(xml: &str, r: &Acceptance) -> Result<Whitelist, WhitelistError> {
        Whitelist::parse_accepted(xml, "wl.xml", r, GENERATED as i64 + 3600)
    }

    fn text_of(xml: &str, element: &str) -> (usize, usize) {
        let open = format!("<{element}>");
        let start = xml.find(&open).unwrap() + open.len();
        let end = start + xml[start..].find(&format!("</{element}>")).unwrap();
        (start, end)
    }

    fn replace_text(xml: &str, element: &str, new: &str) -> String {
        let (a, b) = text_of(xml, element);
        format!("{}{new}{}", &xml[..a], &xml[b..])
    }

    /// An RSA key made by openssl and a certificate for it made by rcgen, with the real
    /// signer's subject and a validity covering the list's date: only the issuer differs.
    fn rogue_signer() -> (ring::signature::RsaKeyPair, String) {
        let dir = tempfile::tempdir().unwrap();
        let key = dir.path().join("k.pem");
        let st = std::process::Command::new("openssl")
            .args([
                "genpkey",
                "-algorithm",
                "RSA",
                "-pkeyopt",
                "rsa_keygen_bits:2048",
                "-out",
            ])
            .arg(&key)
            .status()
            .expect("openssl");
        assert!(st.success());
        let pem = std::fs::read_to_string(&key).unwrap();
        let kp = rcgen::KeyPair::from_pem(&pem).unwrap();
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        let mut dn = rcgen::DistinguishedName::new();
        dn.push(rcgen::DnType::CountryName, "FR");
        dn.push(rcgen::DnType::StateOrProvinceName, "Hauts-de-Seine (92)");
        dn.push(
            rcgen::DnType::OrganizationName,
            "CAPGEMINI TECHNOLOGY SERVICES",
        );
        dn.push(rcgen::DnType::OrganizationalUnitName, "347976684200724");
        dn.push(rcgen::DnType::CommonName, "alb.mssante.fr");
        params.distinguished_name = dn;
        params.not_before = time::macros::datetime!(2024-01-01 0:00 UTC);
        params.not_after = time::macros::datetime!(2030-01-01 0:00 UTC);
        let cert = params.self_signed(&kp).unwrap();
        let b64 = base64::engine::general_purpose::STANDARD.encode(cert.der());
        let der = kp.serialize_der();
        (ring::signature::RsaKeyPair::from_pkcs8(&der).unwrap(), b64)
    }

    /// Re-signs `xml` (digest recomputed over its content) with `key`, `cert` in KeyInfo.
    fn resign(xml: &str, key: &ring::signature::RsaKeyPair, cert_b64: &str) -> String {
        let b64 = base64::engine::general_purpose::STANDARD;
        let doc = Document::parse(xml).unwrap();
        let sig = doc
            .descendants()
            .find(|n| is_dsig(*n, "Signature"))
            .unwrap();
        let mut canon = Vec::new();
        canonicalize(doc.root(), Some(sig.id()), &mut canon).unwrap();
        let digest = b64.encode(ring::digest::digest(&ring::digest::SHA256, &canon));
        let xml = replace_text(xml, "DigestValue", &digest);
        let doc = Document::parse(&xml).unwrap();
        let si = doc
            .descendants()
            .find(|n| is_dsig(*n, "SignedInfo"))
            .unwrap();
        let mut si_canon = Vec::new();
        canonicalize(si, None, &mut si_canon).unwrap();
        let mut sig = vec![0; key.public().modulus_len()];
        key.sign(
            &ring::signature::RSA_PKCS1_SHA256,
            &ring::rand::SystemRandom::new(),
            &si_canon,
            &mut sig,
        )
        .unwrap();
        let xml = replace_text(&xml, "SignatureValue", &b64.encode(sig));
        replace_text(&xml, "X509Certificate", cert_b64)
    }

    const MIPIH: &str =
        "CN=medimail-asip.mipih.fr,OU=318310021300028,O=GIP MIPIH,ST=Haute-Garonne (31),C=FR";

    #[test]
    fn real_list_accepted_and_tampered_ones_refused() {
        let xml = real();
        let r = rules(igc_trust(vec![]), None);
        let wl = accept(&xml, &r).unwrap();
        assert_eq!(wl.domain_count(), 4944);
        assert!(wl.signer().unwrap().starts_with("CN=alb.mssante.fr,"));

        // One DN changed: the digest no longer matches.
        let evil = xml.replacen(MIPIH, &MIPIH.replace("GIP MIPIH", "GIP MIPIX"), 1);
        assert_ne!(evil, xml);
        let e = accept(&evil, &r).unwrap_err();
        assert!(
            matches!(
                e,
                WhitelistError::Signature {
                    err: DsigError::DigestMismatch,
                    ..
                }
            ),
            "{e}"
        );
        assert_eq!(
            e.to_string(),
            "wl.xml: refused: content altered after signing: the SHA-256 digest of the document does not match the signed one"
        );

        // One byte of the signature value changed.
        let (a, _) = text_of(&xml, "SignatureValue");
        let mut bytes = xml.clone().into_bytes();
        bytes[a + 10] = if bytes[a + 10] == b'A' { b'B' } else { b'A' };
        let e = accept(&String::from_utf8(bytes).unwrap(), &r).unwrap_err();
        assert!(
            matches!(
                e,
                WhitelistError::Signature {
                    err: DsigError::BadSignature(_),
                    ..
                }
            ),
            "{e}"
        );

        // Signature removed.
        let start = xml.find("<Signature ").unwrap();
        let end = xml.find("</Signature>").unwrap() + "</Signature>".len();
        let unsigned = format!("{}{}", &xml[..start], &xml[end..]);
        let e = accept(&unsigned, &r).unwrap_err();
        assert!(
            matches!(
                e,
                WhitelistError::Signature {
                    err: DsigError::Unsigned,
                    ..
                }
            ),
            "{e}"
        );
        // ... while the same file loads when no signature is required (dev sample case).
        assert!(Whitelist::parse_accepted(&unsigned, "u.xml", &Acceptance::default(), 0).is_ok());

        // Re-signed by a key outside IGC-Santé: the unchanged list, then a changed one.
        let (key, cert) = rogue_signer();
        for doc in [&xml, &evil] {
            let resigned = resign(doc, &key, &cert);
            let e = accept(&resigned, &r).unwrap_err();
            match &e {
                WhitelistError::Signature {
                    err: DsigError::UntrustedSigner { why, .. },
                    ..
                } => assert_eq!(why, "not issued by whitelist.signer_anchors"),
                other => panic!("{other}"),
            }
            // The re-signing itself is sound: it verifies against its own certificate.
            let own = SignerTrust::new(
                &[CertificateDer::from(
                    base64::engine::general_purpose::STANDARD
                        .decode(&cert)
                        .unwrap(),
                )],
                vec![],
            )
            .unwrap();
            assert!(accept(&resigned, &rules(own, None)).is_ok());
        }

        // Stale: a week-old limit, checked a year later.
        let later = GENERATED as i64 + 365 * 86400;
        let e = Whitelist::parse_accepted(
            &xml,
            "wl.xml",
            &rules(igc_trust(vec![]), Some(7 * 86400)),
            later,
        )
        .unwrap_err();
        assert!(e.to_string().contains("stale: generated 2025-02-28T15:42:07Z, 365 days ago, older than whitelist.max_age 7days"), "{e}");
        // From the future.
        let e =
            Whitelist::parse_accepted(&xml, "wl.xml", &r, GENERATED as i64 - 86400).unwrap_err();
        assert!(e.to_string().contains("in the future"), "{e}");

        // A valid IGC-Santé signer that is not the one configured.
        let other = Dn::parse_rfc4514(MIPIH).unwrap();
        let e = accept(&xml, &rules(igc_trust(vec![other]), None)).unwrap_err();
        assert!(
            matches!(
                e,
                WhitelistError::Signature {
                    err: DsigError::SignerNotAllowed(_),
                    ..
                }
            ),
            "{e}"
        );
        let ans = Dn::parse_rfc4514(
            "CN=alb.mssante.fr,OU=347976684200724,O=CAPGEMINI TECHNOLOGY SERVICES,ST=Hauts-de-Seine (92),C=FR",
        )
        .unwrap();
        assert!(accept(&xml, &rules(igc_trust(vec![ans]), None)).is_ok());
    }

    #[test]
    fn forms_outside_the_subset_are_refused() {
        let xml = real();
        let r = rules(igc_trust(vec![]), None);
        let swap = |from: &str, to: &str| {
            let x = xml.replacen(from, to, 1);
            assert_ne!(x, xml, "{from}");
            accept(&x, &r).unwrap_err().to_string()
        };
        assert!(swap("<Reference URI=\"\">", "<Reference URI=\"#x\">").contains("Reference URI"));
        assert!(
            swap("xmldsig-more#rsa-sha256", "xmldsig-more#rsa-sha512").contains("not supported")
        );
        assert!(swap(
            "<Transform Algorithm=\"http://www.w3.org/2001/10/xml-exc-c14n#\"/>",
            ""
        )
        .contains("transforms"));
        // A second signature (wrapping attacks) anywhere.
        assert!(swap(
            "</ListeDomaines>",
            "</ListeDomaines><x><Signature xmlns=\"http://www.w3.org/2000/09/xmldsig#\"/></x>"
        )
        .contains("2 ds:Signature"));
        // Comments are outside the signed content (c14n without comments): adding one keeps
        // the signature valid, as the standard says.
        let commented = xml.replacen("<ListeDomaines>", "<ListeDomaines><!-- x -->", 1);
        assert!(accept(&commented, &r).is_ok());
    }
}
