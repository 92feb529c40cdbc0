//! TLS server configuration and session introspection.

use std::fs::File;
use std::io::BufReader;
use std::path::Path;
use std::sync::Arc;

use rustls::server::WebPkiClientVerifier;
use rustls::{RootCertStore, ServerConfig, ServerConnection};
use rustls_pki_types::CertificateDer;
use x509_parser::der_parser::asn1_rs::ToDer;
use x509_parser::prelude::{FromDer, X509Certificate, X509Name};

use crate::store::TlsInfo;

fn load_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, String> {
    let file = File::open(path).map_err(|e| format!("cannot open {}: {e}", path.display()))?;
    let certs = rustls_pemfile::certs(&mut BufReader::new(file))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("cannot read certificates from {}: {e}", path.display()))?;
    if certs.is_empty() {
        return Err(format!("no PEM certificate in {}", path.display()));
    }
    Ok(certs)
}

/// Builds the STARTTLS configuration (TLS 1.2 and 1.3). With `client_ca`,
/// a client certificate is requested and verified against those CAs; it is
/// mandatory only with `require_client_cert`.
pub fn server_config(
    cert: &Path,
    key: &Path,
    client_ca: Option<&Path>,
    require_client_cert: bool,
) -> Result<Arc<ServerConfig>, String> {
    let chain = load_certs(cert)?;
    let key_file = File::open(key).map_err(|e| format!("cannot open {}: {e}", key.display()))?;
    let key_der = rustls_pemfile::private_key(&mut BufReader::new(key_file))
        .map_err(|e| format!("cannot read the key in {}: {e}", key.display()))?
        .ok_or_else(|| format!("no PEM private key in {}", key.display()))?;

    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = ServerConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(|e| format!("TLS configuration: {e}"))?;

    let builder = match client_ca {
        None => builder.with_no_client_auth(),
        Some(ca_path) => {
            let mut roots = RootCertStore::empty();
            for ca in load_certs(ca_path)? {
                roots
                    .add(ca)
                    .map_err(|e| format!("bad CA certificate in {}: {e}", ca_path.display()))?;
            }
            let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider);
            let verifier = if require_client_cert {
                verifier
            } else {
                verifier.allow_unauthenticated()
            };
            let verifier = verifier
                .build()
                .map_err(|e| format!("client certificate verifier: {e}"))?;
            builder.with_client_cert_verifier(verifier)
        }
    };
    let config = builder
        .with_single_cert(chain, key_der)
        .map_err(|e| format!("certificate/key {} {}: {e}", cert.display(), key.display()))?;
    Ok(Arc::new(config))
}

/// Version, cipher suite and client certificate subject of an established session.
pub fn session_info(conn: &ServerConnection) -> TlsInfo {
    let version = conn
        .protocol_version()
        .map(|v| format!("{v:?}"))
        .unwrap_or_else(|| "unknown".into());
    let cipher = conn
        .negotiated_cipher_suite()
        .map(|s| format!("{:?}", s.suite()))
        .unwrap_or_else(|| "unknown".into());
    let client_dn = conn
        .peer_certificates()
        .and_then(|certs| certs.first())
        .and_then(|der| X509Certificate::from_der(der.as_ref()).ok())
        .map(|(_, cert)| rfc4514(cert.subject()));
    TlsInfo {
        version,
        cipher,
        client_dn,
    }
}

/// Attribute type names: the RFC 4514 table, plus a few common extras
/// (as printed by OpenSSL) so that test DNs stay readable.
fn attribute_name(oid: &str) -> Option<&'static str> {
    Some(match oid {
        "2.5.4.3" => "CN",
        "2.5.4.7" => "L",
        "2.5.4.8" => "ST",
        "2.5.4.10" => "O",
        "2.5.4.11" => "OU",
        "2.5.4.6" => "C",
        "2.5.4.9" => "STREET",
        "0.9.2342.19200300.100.1.25" => "DC",
        "0.9.2342.19200300.100.1.1" => "UID",
        "2.5.4.4" => "SN",
        "2.5.4.5" => "serialNumber",
        "2.5.4.12" => "title",
        "2.5.4.42" => "GN",
        "2.5.4.97" => "organizationIdentifier",
        "1.2.840.113549.1.9.1" => "emailAddress",
        _ => return None,
    })
}

/// Escapes an attribute value per RFC 4514 section 2.4.
pub fn escape_value(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    let last = value.chars().count().saturating_sub(1);
    for (i, c) in value.chars().enumerate() {
        match c {
            '"' | '+' | ',' | ';' | '<' | '>' | '\\' => {
                out.push('\\');
                out.push(c);
            }
            '#' if i == 0 => out.push_str("\\#"),
            ' ' if i == 0 || i == last => out.push_str("\\ "),
            '\0' => out.push_str("\\00"),
            _ => out.push(c),
        }
    }
    out
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// RFC 4514 string form of a name: RDNs in reverse order, `,` between RDNs,
/// `+` inside multi-valued RDNs. Unknown types and non-string values use the
/// dotted OID / `#hex` DER forms.
pub fn rfc4514(name: &X509Name) -> String {
    let rdns: Vec<String> = name
        .iter()
        .map(|rdn| {
            rdn.iter()
                .map(|atv| {
                    let oid = atv.attr_type().to_id_string();
                    // Printable/UTF8/IA5/Numeric strings; others (BMPString...) go hex.
                    let value = atv.as_str().ok();
                    match (attribute_name(&oid), value) {
                        (Some(name), Some(v)) => format!("{name}={}", escape_value(v)),
                        (name, _) => {
                            let der = atv.attr_value().to_der_vec().unwrap_or_default();
                            format!("{}=#{}", name.unwrap_or(&oid), hex(&der))
                        }
                    }
                })
                .collect::<Vec<_>>()
                .join("+")
        })
        .collect();
    rdns.into_iter().rev().collect::<Vec<_>>().join(",")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escaping() {
        assert_eq!(escape_value("plain"), "plain");
        assert_eq!(escape_value("a,b+c"), "a\\,b\\+c");
        assert_eq!(escape_value("#x"), "\\#x");
        assert_eq!(escape_value("x#"), "x#");
        assert_eq!(escape_value(" x "), "\\ x\\ ");
        assert_eq!(escape_value("q\"<>;\\"), "q\\\"\\<\\>\\;\\\\");
        assert_eq!(escape_value("Hôpital"), "Hôpital");
    }

    #[test]
    fn dn_order_and_format() {
        // SEQUENCE { SET { C=FR }, SET { O=Hopital, X }, SET { CN=a+b } }
        fn atv(oid: &[u8], tag: u8, v: &[u8]) -> Vec<u8> {
            let mut inner = vec![0x06, oid.len() as u8];
            inner.extend_from_slice(oid);
            inner.extend_from_slice(&[tag, v.len() as u8]);
            inner.extend_from_slice(v);
            let mut seq = vec![0x30, inner.len() as u8];
            seq.extend(inner);
            seq
        }
        fn set(items: &[Vec<u8>]) -> Vec<u8> {
            let inner: Vec<u8> = items.concat();
            let mut s = vec![0x31, inner.len() as u8];
            s.extend(inner);
            s
        }
        let c = set(&[atv(&[0x55, 4, 6], 0x13, b"FR")]);
        let o = set(&[atv(&[0x55, 4, 10], 0x0c, b"Hopital, X")]);
        let cn = set(&[atv(&[0x55, 4, 3], 0x0c, b"a+b")]);
        let unknown = set(&[atv(&[0x55, 4, 99], 0x04, b"\x01")]);
        let inner = [c, o, cn, unknown].concat();
        let mut der = vec![0x30, inner.len() as u8];
        der.extend(inner);
        let (_, name) = X509Name::from_der(&der).unwrap();
        assert_eq!(
            rfc4514(&name),
            "2.5.4.99=#040101,CN=a\\+b,O=Hopital\\, X,C=FR"
        );
    }
}
