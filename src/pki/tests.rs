//! Unit tests of `mod.rs` (kept apart so the code reads on its own).

use super::*;
use rustls_pki_types::UnixTime;
use std::process::Command;
use webpki::{
    CertRevocationList, EndEntityCert, KeyUsage, OwnedCertRevocationList, RevocationOptionsBuilder,
};

const HOST: &str = "passerelle.dev.test";

fn generate(dir: &Path) -> DevPkiReport {
    generate_dev_pki(&DevPkiOptions {
        out: dir.to_path_buf(),
        hostname: HOST.to_string(),
        force: false,
    })
    .unwrap()
}

fn pem_certs(path: &Path) -> Vec<CertificateDer<'static>> {
    let bytes = fs::read(path).unwrap();
    CertificateDer::pem_slice_iter(&bytes)
        .collect::<Result<Vec<_>, _>>()
        .unwrap()
}

fn pem_crl(path: &Path) -> Vec<u8> {
    let bytes = fs::read(path).unwrap();
    let crls = rustls_pki_types::CertificateRevocationListDer::pem_slice_iter(&bytes)
        .collect::<Result<Vec<_>, _>>()
        .unwrap();
    assert_eq!(crls.len(), 1, "{}", path.display());
    crls[0].to_vec()
}

/// Verifies the first certificate of `leaf_crt` against root (ca.pem),
/// intermediate.crt and both CRLs, for server and client auth.
fn webpki_verify(dir: &Path, leaf_crt: &Path) -> Result<(), webpki::Error> {
    let roots = pem_certs(&dir.join(CA_FILE));
    assert_eq!(roots.len(), 1);
    let anchors = vec![webpki::anchor_from_trusted_cert(&roots[0])?.to_owned()];
    let intermediates = pem_certs(&dir.join(INTERMEDIATE_CERT_FILE));
    let leaf = pem_certs(leaf_crt).remove(0);
    let ee = EndEntityCert::try_from(&leaf)?;
    let crls = [
        CertRevocationList::Owned(OwnedCertRevocationList::from_der(&pem_crl(
            &dir.join(CRL_FILE),
        ))?),
        CertRevocationList::Owned(OwnedCertRevocationList::from_der(&pem_crl(
            &dir.join(ROOT_CRL_FILE),
        ))?),
    ];
    let crl_refs: Vec<&CertRevocationList<'_>> = crls.iter().collect();
    let revocation = RevocationOptionsBuilder::new(&crl_refs).unwrap().build();
    for usage in [KeyUsage::server_auth(), KeyUsage::client_auth()] {
        ee.verify_for_usage(
            webpki::ALL_VERIFICATION_ALGS,
            &anchors,
            &intermediates,
            UnixTime::now(),
            usage,
            Some(revocation),
            None,
        )?;
    }
    Ok(())
}

fn peer_spec(name: &str, not_before: OffsetDateTime, not_after: OffsetDateTime) -> LeafSpec {
    LeafSpec {
        name: name.to_string(),
        subject: vec![
            (DnAttr::Cn, format!("{name}.peer.test")),
            (DnAttr::Ou, "318310021300028".to_string()),
            (DnAttr::O, "GIP MIPIH".to_string()),
            (DnAttr::St, "Haute-Garonne (31)".to_string()),
            (DnAttr::C, "FR".to_string()),
        ],
        dns_names: vec![format!("{name}.peer.test")],
        ips: vec![],
        not_before,
        not_after,
        server_auth: true,
        client_auth: true,
    }
}

fn load_intermediate(dir: &Path) -> Issuer {
    Issuer::load(
        &dir.join(INTERMEDIATE_CERT_FILE),
        &dir.join(INTERMEDIATE_KEY_FILE),
    )
    .unwrap()
}

#[test]
fn generates_files_and_refuses_overwrite() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("certs/dev");
    assert!(!dev_pki_present(&dir));
    let report = generate(&dir);
    assert_eq!(report.files.len(), 10);
    for f in &report.files {
        assert!(f.is_file(), "{} missing", f.display());
    }
    assert!(dev_pki_present(&dir));

    // Chain file: leaf then intermediate; ca.pem = root only.
    let chain = pem_certs(&dir.join(GATEWAY_CERT_FILE));
    assert_eq!(chain.len(), 2);
    assert_eq!(chain[1], pem_certs(&dir.join(INTERMEDIATE_CERT_FILE))[0]);
    assert_eq!(
        pem_certs(&dir.join(CA_FILE)),
        pem_certs(&dir.join(ROOT_CERT_FILE))
    );
    assert_eq!(
        subject_dn_rfc4514(&pem_certs(&dir.join(CA_FILE))[0]).unwrap(),
        DEV_ROOT_DN
    );
    assert_eq!(subject_dn_rfc4514(&chain[1]).unwrap(), DEV_INTERMEDIATE_DN);

    // Key is PKCS#8 and private.
    let key = fs::read_to_string(dir.join(GATEWAY_KEY_FILE)).unwrap();
    assert!(key.starts_with("-----BEGIN PRIVATE KEY-----"));
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        for k in [GATEWAY_KEY_FILE, ROOT_KEY_FILE, INTERMEDIATE_KEY_FILE] {
            let mode = fs::metadata(dir.join(k)).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600, "{k}");
        }
    }

    // No overwrite without force, and nothing touched.
    let before = fs::read(dir.join(GATEWAY_CERT_FILE)).unwrap();
    let err = generate_dev_pki(&DevPkiOptions {
        out: dir.clone(),
        hostname: HOST.into(),
        force: false,
    })
    .unwrap_err();
    assert!(matches!(err, PkiError::AlreadyExists(_)), "{err}");
    assert_eq!(before, fs::read(dir.join(GATEWAY_CERT_FILE)).unwrap());

    // Force regenerates.
    generate_dev_pki(&DevPkiOptions {
        out: dir.clone(),
        hostname: HOST.into(),
        force: true,
    })
    .unwrap();
    assert_ne!(before, fs::read(dir.join(GATEWAY_CERT_FILE)).unwrap());
    webpki_verify(&dir, &dir.join(GATEWAY_CERT_FILE)).unwrap();

    // Bad host names are refused.
    let err = generate_dev_pki(&DevPkiOptions {
        out: tmp.path().join("bad"),
        hostname: "not a host".into(),
        force: false,
    })
    .unwrap_err();
    assert!(matches!(err, PkiError::Invalid(_)), "{err}");
}

#[test]
fn webpki_accepts_gateway_chain() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    generate(dir);
    webpki_verify(dir, &dir.join(GATEWAY_CERT_FILE)).unwrap();

    let leaf = pem_certs(&dir.join(GATEWAY_CERT_FILE)).remove(0);
    let ee = EndEntityCert::try_from(&leaf).unwrap();
    for name in [HOST, "localhost", "127.0.0.1"] {
        let sn = rustls_pki_types::ServerName::try_from(name).unwrap();
        ee.verify_is_valid_for_subject_name(&sn).unwrap();
    }
    let other = rustls_pki_types::ServerName::try_from("other.test").unwrap();
    assert!(ee.verify_is_valid_for_subject_name(&other).is_err());
}

#[test]
fn revoked_leaf_is_rejected() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    generate(dir);
    let issuer = load_intermediate(dir);
    let now = OffsetDateTime::now_utc();
    let peers = dir.join("peers");
    let good = issuer
        .issue(
            &peer_spec("good", now - Duration::days(1), now + Duration::days(30)),
            &peers,
        )
        .unwrap();
    let bad = issuer
        .issue(
            &peer_spec("revoked", now - Duration::days(1), now + Duration::days(30)),
            &peers,
        )
        .unwrap();
    assert_eq!(pem_certs(&bad).len(), 2, "leaf + intermediate");
    assert!(peers.join("revoked.key").is_file());
    webpki_verify(dir, &bad).unwrap();

    let serial = serial_of(&bad).unwrap();
    assert_ne!(serial, serial_of(&good).unwrap());
    assert_ne!(serial[0], 0);
    // Revoke an unrelated serial as well as the target one.
    write_crl(
        &issuer,
        &[vec![0x12, 0x34], serial],
        &dir.join(CRL_FILE),
        true,
    )
    .unwrap();

    assert_eq!(
        webpki_verify(dir, &bad).unwrap_err(),
        webpki::Error::CertRevoked
    );
    webpki_verify(dir, &good).unwrap();
    webpki_verify(dir, &dir.join(GATEWAY_CERT_FILE)).unwrap();

    // DER output also parses.
    let der_path = dir.join("der.crl");
    write_crl(&issuer, &[], &der_path, false).unwrap();
    OwnedCertRevocationList::from_der(&fs::read(der_path).unwrap()).unwrap();
}

#[test]
fn revoked_intermediate_is_rejected() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    generate(dir);
    let root = Issuer::load(&dir.join(ROOT_CERT_FILE), &dir.join(ROOT_KEY_FILE)).unwrap();
    let int_serial = serial_of(&dir.join(INTERMEDIATE_CERT_FILE)).unwrap();
    write_crl(&root, &[int_serial], &dir.join(ROOT_CRL_FILE), true).unwrap();
    assert_eq!(
        webpki_verify(dir, &dir.join(GATEWAY_CERT_FILE)).unwrap_err(),
        webpki::Error::CertRevoked
    );
}

#[test]
fn expired_leaf_is_rejected() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    generate(dir);
    let issuer = load_intermediate(dir);
    let now = OffsetDateTime::now_utc();
    let crt = issuer
        .issue(
            &peer_spec(
                "expired",
                now - Duration::days(400),
                now - Duration::days(1),
            ),
            dir,
        )
        .unwrap();
    let err = webpki_verify(dir, &crt).unwrap_err();
    assert!(matches!(err, webpki::Error::CertExpired { .. }), "{err:?}");

    let err = issuer
        .issue(&peer_spec("backwards", now, now - Duration::days(1)), dir)
        .unwrap_err();
    assert!(matches!(err, PkiError::Invalid(_)), "{err}");
}

#[test]
fn issuer_load_checks_inputs() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    generate(dir);
    let err =
        Issuer::load(&dir.join(INTERMEDIATE_CERT_FILE), &dir.join(ROOT_KEY_FILE)).unwrap_err();
    assert!(matches!(err, PkiError::KeyMismatch { .. }), "{err}");
    let err = Issuer::load(&dir.join(GATEWAY_CERT_FILE), &dir.join(GATEWAY_KEY_FILE)).unwrap_err();
    assert!(matches!(err, PkiError::X509(_)), "{err}");
    let missing = dir.join("nope.crt");
    let err = Issuer::load(&missing, &dir.join(ROOT_KEY_FILE)).unwrap_err();
    assert!(err.to_string().contains("nope.crt"), "{err}");
    let err = Issuer::load(&dir.join(README_FILE), &dir.join(ROOT_KEY_FILE)).unwrap_err();
    assert!(matches!(err, PkiError::Pem { .. }), "{err}");
    let err = Issuer::load(&dir.join(ROOT_CERT_FILE), &dir.join(ROOT_CERT_FILE)).unwrap_err();
    assert!(matches!(err, PkiError::Pem { .. }), "{err}");

    let issuer = load_intermediate(dir);
    let now = OffsetDateTime::now_utc();
    let mut spec = peer_spec("x", now, now + Duration::days(1));
    spec.name = "../escape".into();
    assert!(matches!(
        issuer.issue(&spec, dir).unwrap_err(),
        PkiError::Invalid(_)
    ));
    spec.name = "dup".into();
    spec.subject.push((DnAttr::Cn, "again".into()));
    assert!(matches!(
        issuer.issue(&spec, dir).unwrap_err(),
        PkiError::Invalid(_)
    ));
}

#[test]
fn subject_dn_rfc4514_matches_and_escapes() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let report = generate(dir);
    let leaf = pem_certs(&dir.join(GATEWAY_CERT_FILE)).remove(0);
    assert_eq!(subject_dn_rfc4514(&leaf).unwrap(), report.gateway_dn);
    assert_eq!(
        report.gateway_dn,
        format!("CN={HOST},OU=999999999900001,O=PASSERELLE DEV,ST=Haute-Garonne (31),C=FR")
    );

    let issuer = load_intermediate(dir);
    let now = OffsetDateTime::now_utc();
    let mut spec = peer_spec("escaped", now - Duration::days(1), now + Duration::days(1));
    spec.subject = vec![
        (DnAttr::Cn, " #lead+trail; \"q\" <a>\\ ".into()),
        (DnAttr::Ou, "318310021300028".into()),
        (DnAttr::O, "Clinique Saint-Jean, SA".into()),
        (DnAttr::L, "Toulouse#1 = ok".into()),
        (DnAttr::St, "Haute-Garonne (31)".into()),
        (DnAttr::C, "FR".into()),
    ];
    let crt = issuer.issue(&spec, dir).unwrap();
    let der = pem_certs(&crt).remove(0);
    let expected = "CN=\\ #lead\\+trail\\; \\\"q\\\" \\<a\\>\\\\\\ ,OU=318310021300028,\
                        O=Clinique Saint-Jean\\, SA,L=Toulouse#1 = ok,ST=Haute-Garonne (31),C=FR";
    assert_eq!(subject_dn_rfc4514(&der).unwrap(), expected);
    webpki_verify(dir, &crt).unwrap();

    // Cross-check with OpenSSL's RFC 2253 printer (same escaping for ASCII).
    if let Some(out) = openssl(&[
        "x509",
        "-in",
        crt.to_str().unwrap(),
        "-noout",
        "-subject",
        "-nameopt",
        "RFC2253",
    ]) {
        assert_eq!(out.trim(), format!("subject={expected}"));
    }
    if let Some(out) = openssl(&[
        "x509",
        "-in",
        dir.join(GATEWAY_CERT_FILE).to_str().unwrap(),
        "-noout",
        "-subject",
        "-nameopt",
        "RFC2253",
    ]) {
        assert_eq!(out.trim(), format!("subject={}", report.gateway_dn));
    }
}

#[test]
fn escaping_unit() {
    use crate::pki::dn::escape_value;
    assert_eq!(escape_value("Haute-Garonne (31)"), "Haute-Garonne (31)");
    assert_eq!(escape_value("a,b"), "a\\,b");
    assert_eq!(escape_value("#x#"), "\\#x#");
    assert_eq!(escape_value(" x "), "\\ x\\ ");
    assert_eq!(escape_value(" "), "\\ ");
    assert_eq!(escape_value("a\0b\n"), "a\\00b\\0A");
    assert_eq!(escape_value("Hôpital é"), "Hôpital é");
    assert_eq!(escape_value(""), "");
}

#[test]
fn pem_encoding_reads_back() {
    for len in 0..70 {
        let data: Vec<u8> = (0..len).map(|i| (i * 37 + 11) as u8).collect();
        let pem = pem_encode("CERTIFICATE", &data);
        let parsed = CertificateDer::pem_slice_iter(pem.as_bytes())
            .collect::<Result<Vec<_>, _>>()
            .unwrap();
        if len == 0 {
            continue;
        }
        assert_eq!(parsed.len(), 1);
        assert_eq!(parsed[0].as_ref(), data.as_slice());
    }
}

/// Runs openssl; `None` (test part skipped) when openssl is not installed.
fn openssl(args: &[&str]) -> Option<String> {
    let out = match Command::new("openssl").args(args).output() {
        Ok(out) => out,
        Err(e) => {
            eprintln!("openssl unavailable ({e}); skipping openssl checks");
            return None;
        }
    };
    assert!(
        out.status.success(),
        "openssl {args:?} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    Some(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn openssl_status(args: &[&str]) -> Option<(bool, String)> {
    let out = Command::new("openssl").args(args).output().ok()?;
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    Some((out.status.success(), text))
}

#[test]
fn openssl_accepts_chain_and_crls() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    generate(dir);
    let p = |f: &str| dir.join(f).to_str().unwrap().to_string();
    let leaf_pem = dir.join("leaf.pem");
    let leaf = pem_certs(&dir.join(GATEWAY_CERT_FILE)).remove(0);
    fs::write(&leaf_pem, pem_encode("CERTIFICATE", &leaf)).unwrap();
    let leaf_s = leaf_pem.to_str().unwrap();

    let Some(out) = openssl(&[
        "verify",
        "-CAfile",
        &p(ROOT_CERT_FILE),
        "-untrusted",
        &p(INTERMEDIATE_CERT_FILE),
        leaf_s,
    ]) else {
        return;
    };
    assert!(out.contains(": OK"), "{out}");

    let out = openssl(&[
        "verify",
        "-x509_strict",
        "-purpose",
        "sslserver",
        "-crl_check_all",
        "-CRLfile",
        &p(CRL_FILE),
        "-CRLfile",
        &p(ROOT_CRL_FILE),
        "-CAfile",
        &p(CA_FILE),
        "-untrusted",
        &p(INTERMEDIATE_CERT_FILE),
        leaf_s,
    ])
    .unwrap();
    assert!(out.contains(": OK"), "{out}");

    for crl in [CRL_FILE, ROOT_CRL_FILE] {
        let out = openssl(&["crl", "-in", &p(crl), "-noout", "-text"]).unwrap();
        assert!(out.contains("Certificate Revocation List"), "{out}");
        assert!(out.contains("No Revoked Certificates"), "{out}");
    }
    // `-CAfile` makes openssl check the CRL signature.
    let (ok, text) = openssl_status(&[
        "crl",
        "-in",
        &p(CRL_FILE),
        "-noout",
        "-CAfile",
        &p(INTERMEDIATE_CERT_FILE),
    ])
    .unwrap();
    assert!(ok && text.contains("verify OK"), "{text}");

    // A revoked leaf is refused by openssl too.
    let issuer = load_intermediate(dir);
    let now = OffsetDateTime::now_utc();
    let crt = issuer
        .issue(
            &peer_spec("rev", now - Duration::days(1), now + Duration::days(9)),
            dir,
        )
        .unwrap();
    write_crl(
        &issuer,
        &[serial_of(&crt).unwrap()],
        &dir.join(CRL_FILE),
        true,
    )
    .unwrap();
    let rev_leaf = dir.join("rev-leaf.pem");
    fs::write(&rev_leaf, pem_encode("CERTIFICATE", &pem_certs(&crt)[0])).unwrap();
    let (ok, text) = openssl_status(&[
        "verify",
        "-crl_check_all",
        "-CRLfile",
        &p(CRL_FILE),
        "-CRLfile",
        &p(ROOT_CRL_FILE),
        "-CAfile",
        &p(CA_FILE),
        "-untrusted",
        &p(INTERMEDIATE_CERT_FILE),
        rev_leaf.to_str().unwrap(),
    ])
    .unwrap();
    assert!(!ok && text.contains("revoked"), "{text}");
    let out = openssl(&["crl", "-in", &p(CRL_FILE), "-noout", "-text"]).unwrap();
    let serial_hex: String = serial_of(&crt)
        .unwrap()
        .iter()
        .map(|b| format!("{b:02X}"))
        .collect();
    assert!(out.contains(&serial_hex), "{out}");
}
