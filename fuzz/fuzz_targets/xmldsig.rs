//! The whitelist signature verifier and its exclusive canonicaliser: any text, never a panic;
//! canonical output re-parses and is its own canonical form; nothing the fuzzer writes
//! verifies against the real IGC-Santé anchors (it would need the signer's key).
#![no_main]

use libfuzzer_sys::fuzz_target;
use passerelle::trust::xmldsig::{canonicalize, verify_enveloped, SignerTrust};
use std::sync::OnceLock;

fn trust() -> &'static SignerTrust {
    static T: OnceLock<SignerTrust> = OnceLock::new();
    T.get_or_init(|| {
        let mut pem = include_bytes!("../../config/igc-sante/ACR-EL.pem").to_vec();
        pem.extend_from_slice(include_bytes!("../../config/igc-sante/ACI-EL-ORG.pem"));
        SignerTrust::from_pem(&pem, Vec::new()).expect("anchors")
    })
}

fuzz_target!(|data: &[u8]| {
    let Ok(xml) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(doc) = roxmltree::Document::parse(xml) else {
        return;
    };
    let mut once = Vec::new();
    if canonicalize(doc.root(), None, &mut once).is_ok() {
        let text = std::str::from_utf8(&once).expect("canonical form is UTF-8");
        let again = roxmltree::Document::parse(text)
            .unwrap_or_else(|e| panic!("canonical form does not parse: {e}\n{text}"));
        let mut twice = Vec::new();
        canonicalize(again.root(), None, &mut twice).expect("canonical form canonicalises");
        assert_eq!(
            once,
            twice,
            "not idempotent:\n{text}\n{}",
            String::from_utf8_lossy(&twice)
        );
    }
    // 2025-03-01: inside the real signer's validity.
    let at =
        rustls_pki_types::UnixTime::since_unix_epoch(std::time::Duration::from_secs(1_740_800_000));
    assert!(verify_enveloped(&doc, trust(), at).is_err());
});
