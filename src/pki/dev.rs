//! The development PKI standing for IGC-Santé (`pki dev`, `serve`'s first start): a root, an
//! intermediate, the gateway's certificate and CRLs; and revocation in it (`pki revoke`).

use super::*;
use rcgen::{BasicConstraints, KeyPair, PKCS_ECDSA_P256_SHA256};
use std::fs;
use std::io;
use std::net::{IpAddr, Ipv4Addr};
use std::path::Path;
use time::Duration;

/// `true` when `dir` holds all of passerelle.crt, passerelle.key, ca.pem and
/// ca.crl.
pub fn dev_pki_present(dir: &Path) -> bool {
    [GATEWAY_CERT_FILE, GATEWAY_KEY_FILE, CA_FILE, CRL_FILE]
        .iter()
        .all(|f| dir.join(f).is_file())
}

/// Generates the development PKI into `opts.out` (see the module docs and
/// `README.txt`):
///
/// - `root.crt`/`root.key`: self-signed root [`DEV_ROOT_DN`], 10 years,
///   basicConstraints CA:true (critical), keyUsage keyCertSign+cRLSign;
/// - `intermediate.crt`/`intermediate.key`: [`DEV_INTERMEDIATE_DN`] signed by
///   the root, CA pathlen 0, 8 years;
/// - `passerelle.crt` (leaf then intermediate) / `passerelle.key` (PKCS#8,
///   0600): `CN=<hostname>,OU=999999999900001,O=PASSERELLE DEV,ST=Haute-Garonne (31),C=FR`,
///   SAN DNS:<hostname>, DNS:localhost, IP:127.0.0.1, EKU serverAuth +
///   clientAuth, 2 years from now - 1 day;
/// - `ca.pem`: trust anchors = the root only;
/// - `ca.crl`: empty CRL signed by the intermediate (covers the leaves);
/// - `root.crl`: empty CRL signed by the root (covers the intermediate), so
///   that a full-chain revocation check finds a CRL for both levels;
/// - `README.txt`.
///
/// Without `force`, fails with [`PkiError::AlreadyExists`] before writing
/// anything if any of these files exists.
pub fn generate_dev_pki(opts: &DevPkiOptions) -> Result<DevPkiReport, PkiError> {
    let hostname = opts.hostname.trim();
    let host_ip = hostname.parse::<IpAddr>().ok();
    if host_ip.is_none() {
        rustls_pki_types::DnsName::try_from(hostname)
            .map_err(|_| PkiError::Invalid(format!("invalid host name {hostname:?}")))?;
    }

    let out = opts.out.as_path();
    let target = |name: &str| out.join(name);
    if !opts.force {
        for name in [
            ROOT_CERT_FILE,
            ROOT_KEY_FILE,
            INTERMEDIATE_CERT_FILE,
            INTERMEDIATE_KEY_FILE,
            GATEWAY_CERT_FILE,
            GATEWAY_KEY_FILE,
            CA_FILE,
            CRL_FILE,
            ROOT_CRL_FILE,
            README_FILE,
        ] {
            let path = target(name);
            if fs::symlink_metadata(&path).is_ok() {
                return Err(PkiError::AlreadyExists(path));
            }
        }
    }
    create_dir(out)?;

    let now = now_utc();
    let not_before = now - Duration::days(1);

    // Root.
    let root_key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)?;
    let mut root_params = ca_params(ROOT_CN, BasicConstraints::Unconstrained)?;
    root_params.not_before = not_before;
    root_params.not_after = now + Duration::days(ROOT_VALIDITY_DAYS);
    let root_cert = root_params.self_signed(&root_key)?;
    let root = Issuer {
        der: root_cert.der().clone(),
        key_id: root_params.key_identifier_method.clone(),
        signer: rcgen::Issuer::new(root_params, root_key),
        self_signed: true,
    };

    // Intermediate.
    let int_key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)?;
    let mut int_params = ca_params(INTERMEDIATE_CN, BasicConstraints::Constrained(0))?;
    int_params.not_before = not_before;
    int_params.not_after = now + Duration::days(INTERMEDIATE_VALIDITY_DAYS);
    int_params.use_authority_key_identifier_extension = true;
    let int_cert = int_params.signed_by(&int_key, &root.signer)?;
    let intermediate = Issuer {
        der: int_cert.der().clone(),
        key_id: int_params.key_identifier_method.clone(),
        signer: rcgen::Issuer::new(int_params, int_key),
        self_signed: false,
    };

    let mut files = Vec::new();
    let root_pem = root.cert_pem();
    write_file(&target(ROOT_CERT_FILE), root_pem.as_bytes(), false)?;
    files.push(target(ROOT_CERT_FILE));
    write_file(
        &target(ROOT_KEY_FILE),
        root.signer.key().serialize_pem().as_bytes(),
        true,
    )?;
    files.push(target(ROOT_KEY_FILE));
    write_file(
        &target(INTERMEDIATE_CERT_FILE),
        intermediate.cert_pem().as_bytes(),
        false,
    )?;
    files.push(target(INTERMEDIATE_CERT_FILE));
    write_file(
        &target(INTERMEDIATE_KEY_FILE),
        intermediate.signer.key().serialize_pem().as_bytes(),
        true,
    )?;
    files.push(target(INTERMEDIATE_KEY_FILE));

    // Gateway leaf: passerelle.crt (leaf + intermediate) and passerelle.key.
    let mut dns_names = Vec::new();
    let mut ips = Vec::new();
    match host_ip {
        Some(ip) => ips.push(ip),
        None => dns_names.push(hostname.to_string()),
    }
    if !dns_names
        .iter()
        .any(|d| d.eq_ignore_ascii_case("localhost"))
    {
        dns_names.push("localhost".to_string());
    }
    let loopback = IpAddr::V4(Ipv4Addr::LOCALHOST);
    if !ips.contains(&loopback) {
        ips.push(loopback);
    }
    let spec = LeafSpec {
        name: "passerelle".to_string(), // -> passerelle.crt / passerelle.key
        subject: vec![
            (DnAttr::Cn, hostname.to_string()),
            (DnAttr::Ou, DEV_GATEWAY_OU.to_string()),
            (DnAttr::O, DEV_GATEWAY_O.to_string()),
            (DnAttr::St, DEV_GATEWAY_ST.to_string()),
            (DnAttr::C, "FR".to_string()),
        ],
        dns_names,
        ips,
        not_before,
        not_after: now + Duration::days(GATEWAY_VALIDITY_DAYS),
        server_auth: true,
        client_auth: true,
    };
    let (gw_crt, gw_der) = intermediate.issue_inner(&spec, out)?;
    files.push(gw_crt);
    files.push(target(GATEWAY_KEY_FILE));

    write_file(&target(CA_FILE), root_pem.as_bytes(), false)?;
    files.push(target(CA_FILE));
    write_crl(&intermediate, &[], &target(CRL_FILE), true)?;
    files.push(target(CRL_FILE));
    write_crl(&root, &[], &target(ROOT_CRL_FILE), true)?;
    files.push(target(ROOT_CRL_FILE));
    write_file(&target(README_FILE), README_TEXT.as_bytes(), false)?;
    files.push(target(README_FILE));

    Ok(DevPkiReport {
        files,
        gateway_dn: subject_dn_rfc4514(&gw_der)?,
    })
}

/// Serials revoked so far in a dev PKI directory (one hex serial per line in `revoked.txt`),
/// plus `new`, written back; then `ca.crl` is re-signed by the intermediate listing them all.
pub fn revoke_in_dev_pki(dir: &Path, new: &[Vec<u8>]) -> Result<usize, PkiError> {
    let list = dir.join("revoked.txt");
    let mut serials: Vec<Vec<u8>> = match std::fs::read_to_string(&list) {
        Ok(t) => t
            .lines()
            .filter_map(|l| {
                let l = l.trim();
                (0..l.len())
                    .step_by(2)
                    .map(|i| l.get(i..i + 2).and_then(|h| u8::from_str_radix(h, 16).ok()))
                    .collect::<Option<Vec<u8>>>()
            })
            .filter(|v| !v.is_empty())
            .collect(),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Vec::new(),
        Err(source) => {
            return Err(PkiError::Io {
                op: "read",
                path: list,
                source,
            })
        }
    };
    for s in new {
        if !serials.contains(s) {
            serials.push(s.clone());
        }
    }
    let text: String = serials
        .iter()
        .map(|s| s.iter().map(|b| format!("{b:02x}")).collect::<String>() + "\n")
        .collect();
    std::fs::write(&list, text).map_err(|source| PkiError::Io {
        op: "write",
        path: list.clone(),
        source,
    })?;
    let issuer = Issuer::load(
        &dir.join(INTERMEDIATE_CERT_FILE),
        &dir.join(INTERMEDIATE_KEY_FILE),
    )?;
    write_crl(&issuer, &serials, &dir.join(CRL_FILE), true)?;
    Ok(serials.len())
}
