//! `passerelle pki csr`: the private key and PKCS#10 request an administrator sends to
//! IGC-Santé for the gateway's server certificate.
//!
//! Why: the subject of that certificate is what the ANS whitelist declares for the
//! establishment's domains, and peers compare it RDN by RDN (RFC 4517). A request whose
//! subject has the wrong order, string types or form gives a certificate that matches no
//! declaration. IGC-Santé server certificates carry, in ASN.1 order, `C=FR` (PrintableString),
//! `ST=<Département> (nn)`, `O=<raison sociale>`, `OU=<identifiant national de structure>`,
//! `CN=<host>` (UTF8String), which the whitelist writes most specific first:
//! `CN=host,OU=...,O=...,ST=... (nn),C=FR`.
//!
//! The OU is the national structure identifier: `1` + FINESS (9 digits) or `3` + SIRET
//! (14 digits), as in every real whitelist DN (`OU=1750048886`, `OU=318310021300028`). A bare
//! FINESS or SIRET is given its prefix.
//!
//! RSA keys are generated with the RustCrypto `rsa` crate (ring signs with RSA keys but cannot
//! make them); the request is then signed by rcgen/ring. P-256 keys come from rcgen/ring.

use std::io::Write;
use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum CsrError {
    #[error("--{0}: {1}")]
    Invalid(&'static str, String),
    #[error("{}: exists (use --force to replace it)", .0.display())]
    Exists(PathBuf),
    #[error("{}: {err}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        err: std::io::Error,
    },
    #[error("key generation: {0}")]
    Key(String),
    #[error("request: {0}")]
    Request(String),
}

/// Key algorithm of the request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum KeyKind {
    Rsa2048,
    Rsa3072,
    P256,
}

/// The request's inputs; also the arguments of `passerelle pki csr`.
#[derive(Debug, Clone, clap::Args)]
pub struct CsrOptions {
    /// The gateway's host name (CN, first subjectAltName).
    #[arg(long)]
    pub cn: String,
    /// FINESS (9 digits) or SIRET (14), or the structure identifier (1+FINESS, 3+SIRET).
    #[arg(long)]
    pub ou: String,
    /// Raison sociale.
    #[arg(long)]
    pub o: String,
    /// Département, as "Hauts-de-Seine (92)".
    #[arg(long)]
    pub st: String,
    /// More names for the subjectAltName (other MX names).
    #[arg(long)]
    pub dns: Vec<String>,
    /// The key to make: RSA 2048 or 3072 bits, or ECDSA P-256.
    #[arg(long, value_enum, default_value = "rsa2048")]
    pub key: KeyKind,
    /// Output directory: CN.key (mode 0600) and CN.csr.
    #[arg(long)]
    pub out: PathBuf,
    /// Replace existing files.
    #[arg(long)]
    pub force: bool,
}

/// What was written.
#[derive(Debug, Clone)]
pub struct CsrReport {
    pub key_file: PathBuf,
    pub csr_file: PathBuf,
    /// The subject as the whitelist declaration will write it (RFC 4514).
    pub subject: String,
    pub warnings: Vec<String>,
}

/// The structure identifier IGC-Santé puts in OU: `1`+FINESS or `3`+SIRET.
pub fn structure_id(ou: &str) -> Result<String, String> {
    let ou = ou.trim().replace(' ', "");
    if ou.is_empty() || !ou.bytes().all(|b| b.is_ascii_digit()) {
        return Err(format!(
            "{ou:?}: digits only (FINESS, SIRET or structure identifier)"
        ));
    }
    match ou.len() {
        9 => Ok(format!("1{ou}")),
        14 => Ok(format!("3{ou}")),
        10 if ou.starts_with('1') => Ok(ou),
        15 if ou.starts_with('3') => Ok(ou),
        n => Err(format!(
            "{ou:?}: {n} digits; a FINESS has 9, a SIRET 14 (or with their prefix: 1+FINESS, 3+SIRET)"
        )),
    }
}

fn plausible_host(h: &str) -> bool {
    !h.is_empty()
        && h.len() <= 253
        && h.contains('.')
        && h.split('.').all(|l| {
            !l.is_empty()
                && l.len() <= 63
                && !l.starts_with('-')
                && !l.ends_with('-')
                && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
        })
}

/// `Hauts-de-Seine (92)`, `Corse-du-Sud (2A)`, `Guadeloupe (971)`.
fn departement_form(st: &str) -> bool {
    let Some(open) = st.rfind(" (") else {
        return false;
    };
    let Some(code) = st[open + 2..].strip_suffix(')') else {
        return false;
    };
    open > 0
        && (matches!(code, "2A" | "2B")
            || ((2..=3).contains(&code.len()) && code.bytes().all(|b| b.is_ascii_digit())))
}

/// Writes `<out>/<cn>.key` (mode 0600) and `<out>/<cn>.csr`.
pub fn make_csr(o: &CsrOptions) -> Result<CsrReport, CsrError> {
    let cn = o.cn.trim().trim_end_matches('.').to_ascii_lowercase();
    if !plausible_host(&cn) {
        return Err(CsrError::Invalid(
            "cn",
            format!("{:?} is not a host name", o.cn),
        ));
    }
    let ou = structure_id(&o.ou).map_err(|e| CsrError::Invalid("ou", e))?;
    let org = o.o.trim();
    if org.is_empty() {
        return Err(CsrError::Invalid("o", "empty".into()));
    }
    let st = o.st.trim();
    if st.is_empty() {
        return Err(CsrError::Invalid("st", "empty".into()));
    }
    let mut warnings = Vec::new();
    if !departement_form(st) {
        warnings.push(format!(
            "--st {st:?}: IGC-Santé writes the département as \"Name (nn)\", e.g. \"Hauts-de-Seine (92)\""
        ));
    }
    if o.ou.trim().len() == 9 || o.ou.trim().len() == 14 {
        warnings.push(format!("--ou: written as the structure identifier {ou}"));
    }
    let mut dns = vec![cn.clone()];
    for d in &o.dns {
        let d = d.trim().trim_end_matches('.').to_ascii_lowercase();
        if !plausible_host(&d) {
            return Err(CsrError::Invalid(
                "dns",
                format!("{d:?} is not a host name"),
            ));
        }
        if !dns.contains(&d) {
            dns.push(d);
        }
    }

    let key = generate_key(o.key)?;
    let mut params =
        rcgen::CertificateParams::new(dns).map_err(|e| CsrError::Request(e.to_string()))?;
    let mut name = rcgen::DistinguishedName::new();
    let printable = rcgen::string::PrintableString::try_from("FR")
        .map_err(|e| CsrError::Request(e.to_string()))?;
    name.push(
        rcgen::DnType::CountryName,
        rcgen::DnValue::PrintableString(printable),
    );
    name.push(rcgen::DnType::StateOrProvinceName, utf8(st));
    name.push(rcgen::DnType::OrganizationName, utf8(org));
    name.push(rcgen::DnType::OrganizationalUnitName, utf8(&ou));
    name.push(rcgen::DnType::CommonName, utf8(&cn));
    params.distinguished_name = name;
    params.key_usages = match o.key {
        KeyKind::P256 => vec![rcgen::KeyUsagePurpose::DigitalSignature],
        _ => vec![
            rcgen::KeyUsagePurpose::DigitalSignature,
            rcgen::KeyUsagePurpose::KeyEncipherment,
        ],
    };
    params.extended_key_usages = vec![
        rcgen::ExtendedKeyUsagePurpose::ServerAuth,
        rcgen::ExtendedKeyUsagePurpose::ClientAuth,
    ];
    let csr = params
        .serialize_request(&key)
        .map_err(|e| CsrError::Request(e.to_string()))?;
    let csr_pem = csr.pem().map_err(|e| CsrError::Request(e.to_string()))?;
    let subject = request_subject(csr.der()).map_err(CsrError::Request)?;

    std::fs::create_dir_all(&o.out).map_err(|err| CsrError::Io {
        path: o.out.clone(),
        err,
    })?;
    let key_file = o.out.join(format!("{cn}.key"));
    let csr_file = o.out.join(format!("{cn}.csr"));
    for f in [&key_file, &csr_file] {
        if f.exists() && !o.force {
            return Err(CsrError::Exists(f.clone()));
        }
    }
    write_file(&key_file, key.serialize_pem().as_bytes(), 0o600)?;
    write_file(&csr_file, csr_pem.as_bytes(), 0o644)?;
    Ok(CsrReport {
        key_file,
        csr_file,
        subject,
        warnings,
    })
}

fn utf8(s: &str) -> rcgen::DnValue {
    rcgen::DnValue::Utf8String(s.to_string())
}

fn generate_key(kind: KeyKind) -> Result<rcgen::KeyPair, CsrError> {
    let bits = match kind {
        KeyKind::P256 => {
            return rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)
                .map_err(|e| CsrError::Key(e.to_string()))
        }
        KeyKind::Rsa2048 => 2048,
        KeyKind::Rsa3072 => 3072,
    };
    use rsa::pkcs8::EncodePrivateKey;
    let mut rng = rsa::rand_core::OsRng;
    let private =
        rsa::RsaPrivateKey::new(&mut rng, bits).map_err(|e| CsrError::Key(e.to_string()))?;
    let der = private
        .to_pkcs8_der()
        .map_err(|e| CsrError::Key(e.to_string()))?;
    let der = rustls_pki_types::PrivatePkcs8KeyDer::from(der.as_bytes().to_vec());
    rcgen::KeyPair::from_pkcs8_der_and_sign_algo(&der, &rcgen::PKCS_RSA_SHA256)
        .map_err(|e| CsrError::Key(e.to_string()))
}

/// The request's subject, RFC 4514 (most specific first), as the whitelist writes it.
pub fn request_subject(der: &[u8]) -> Result<String, String> {
    use x509_parser::prelude::FromDer;
    let (_, req) = x509_parser::certification_request::X509CertificationRequest::from_der(der)
        .map_err(|e| e.to_string())?;
    Ok(crate::pki::dn::Dn::from_x509_subject(&req.certification_request_info.subject).to_string())
}

/// Creates `path` with `mode` (a key is never readable by others, not even for a moment).
fn write_file(path: &Path, data: &[u8], mode: u32) -> Result<(), CsrError> {
    use std::os::unix::fs::OpenOptionsExt;
    let io = |err| CsrError::Io {
        path: path.to_path_buf(),
        err,
    };
    let _ = std::fs::remove_file(path);
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(path)
        .map_err(io)?;
    f.write_all(data).map_err(io)?;
    f.sync_all().map_err(io)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn opts(dir: &Path, key: KeyKind) -> CsrOptions {
        CsrOptions {
            cn: "passerelle.chu-exemple.mssante.fr".into(),
            ou: "750048886".into(),
            o: "CENTRE HOSPITALIER D'EXEMPLE, SITE NORD".into(),
            st: "Hauts-de-Seine (92)".into(),
            dns: vec!["mx2.chu-exemple.mssante.fr".into()],
            key,
            out: dir.to_path_buf(),
            force: false,
        }
    }

    fn openssl(args: &[&str]) -> (bool, String) {
        let out = std::process::Command::new("openssl")
            .args(args)
            .output()
            .expect("openssl");
        (
            out.status.success(),
            format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ),
        )
    }

    #[test]
    fn requests_verify_with_openssl_and_have_the_igc_subject() {
        let dir = tempfile::tempdir().unwrap();
        for (i, kind) in [KeyKind::P256, KeyKind::Rsa2048].into_iter().enumerate() {
            let out = dir.path().join(format!("{i}"));
            let r = make_csr(&opts(&out, kind)).unwrap();
            assert_eq!(
                r.subject,
                "CN=passerelle.chu-exemple.mssante.fr,OU=1750048886,O=CENTRE HOSPITALIER D'EXEMPLE\\, SITE NORD,ST=Hauts-de-Seine (92),C=FR"
            );
            let mode = std::fs::metadata(&r.key_file).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
            let csr = r.csr_file.to_str().unwrap();
            let (ok, text) = openssl(&["req", "-verify", "-noout", "-in", csr]);
            assert!(ok, "{text}");
            // ASN.1 order C, ST, O, OU, CN, as openssl prints it by default.
            let (_, text) = openssl(&["req", "-noout", "-subject", "-in", csr]);
            assert_eq!(
                text.trim(),
                "subject=C = FR, ST = Hauts-de-Seine (92), O = \"CENTRE HOSPITALIER D'EXEMPLE, SITE NORD\", OU = 1750048886, CN = passerelle.chu-exemple.mssante.fr"
            );
            let (_, text) = openssl(&["req", "-noout", "-text", "-in", csr]);
            assert!(
                text.contains(
                    "DNS:passerelle.chu-exemple.mssante.fr, DNS:mx2.chu-exemple.mssante.fr"
                ),
                "{text}"
            );
            assert!(
                text.contains("TLS Web Server Authentication, TLS Web Client Authentication"),
                "{text}"
            );
            // The key is the request's.
            let key = r.key_file.to_str().unwrap();
            let (_, a) = openssl(&["pkey", "-in", key, "-pubout"]);
            let (_, b) = openssl(&["req", "-in", csr, "-noout", "-pubkey"]);
            assert_eq!(a, b);
            // The subject parses as the whitelist parser reads it.
            assert_eq!(
                crate::pki::dn::Dn::parse_rfc4514(&r.subject).unwrap(),
                crate::pki::dn::Dn::parse_rfc4514(&r.subject.to_lowercase()).unwrap()
            );
            // Not overwritten without --force.
            assert!(matches!(
                make_csr(&opts(&out, kind)),
                Err(CsrError::Exists(_))
            ));
        }
    }

    #[test]
    fn input_checks() {
        assert_eq!(structure_id("750048886").unwrap(), "1750048886");
        assert_eq!(structure_id("18310021300028").unwrap(), "318310021300028");
        assert_eq!(structure_id("318310021300028").unwrap(), "318310021300028");
        assert!(structure_id("12345").is_err());
        assert!(structure_id("75004888X").is_err());
        assert!(departement_form("Corse-du-Sud (2A)"));
        assert!(departement_form("Guadeloupe (971)"));
        assert!(!departement_form("Paris"));
        let dir = tempfile::tempdir().unwrap();
        let mut o = opts(dir.path(), KeyKind::P256);
        o.cn = "not a host".into();
        assert!(matches!(make_csr(&o), Err(CsrError::Invalid("cn", _))));
        let mut o = opts(dir.path(), KeyKind::P256);
        o.st = "Paris".into();
        let r = make_csr(&o).unwrap();
        assert!(
            r.warnings.iter().any(|w| w.contains("Name (nn)")),
            "{:?}",
            r.warnings
        );
    }
}
