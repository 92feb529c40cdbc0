//! TLS material and rustls configurations, built once per config snapshot.
//!
//! Protocols and suites (ANSSI-compatible, ECDHE + AEAD only): TLS 1.3 with
//! AES-256-GCM, AES-128-GCM, ChaCha20-Poly1305; TLS 1.2 with ECDHE-ECDSA/ECDHE-RSA and
//! AES-256-GCM, AES-128-GCM, ChaCha20-Poly1305. Groups X25519, P-256, P-384. rustls has no
//! RSA key exchange, CBC or TLS < 1.2 at all, so nothing weaker can be negotiated.

use crate::config::TlsConfig;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{ring, CryptoProvider};
use rustls::pki_types::{CertificateDer, CertificateRevocationListDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, RootCertStore, SignatureScheme};
use std::path::Path;
use std::sync::Arc;

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("{key}: {path}: {msg}")]
    File { key: &'static str, path: String, msg: String },
    #[error("tls: {0}")]
    Rustls(String),
}

/// The crypto provider restricted to the suites and groups above.
pub fn provider() -> Arc<CryptoProvider> {
    use ring::cipher_suite as cs;
    use ring::kx_group;
    Arc::new(CryptoProvider {
        cipher_suites: vec![
            cs::TLS13_AES_256_GCM_SHA384,
            cs::TLS13_AES_128_GCM_SHA256,
            cs::TLS13_CHACHA20_POLY1305_SHA256,
            cs::TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384,
            cs::TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256,
            cs::TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256,
            cs::TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384,
            cs::TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256,
            cs::TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256,
        ],
        kx_groups: vec![kx_group::X25519, kx_group::SECP256R1, kx_group::SECP384R1],
        ..ring::default_provider()
    })
}

const VERSIONS: &[&rustls::SupportedProtocolVersion] = &[&rustls::version::TLS13, &rustls::version::TLS12];

/// Our identity, our trust anchors and CRLs, read from the files named in `[tls]`.
#[derive(Clone, Debug)]
pub struct TlsMaterial {
    pub chain: Vec<CertificateDer<'static>>,
    pub key: Arc<PrivateKeyDer<'static>>,
    pub roots: Arc<RootCertStore>,
    pub crls: Vec<CertificateRevocationListDer<'static>>,
}

fn read(key: &'static str, path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|e| TlsError::File { key, path: path.display().to_string(), msg: e.to_string() })
}

fn file_err(key: &'static str, path: &Path, msg: impl ToString) -> TlsError {
    TlsError::File { key, path: path.display().to_string(), msg: msg.to_string() }
}

pub fn load_certs(key: &'static str, path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let data = read(key, path)?;
    let certs: Vec<_> = rustls_pemfile::certs(&mut data.as_slice())
        .collect::<Result<_, _>>()
        .map_err(|e| file_err(key, path, e))?;
    if certs.is_empty() {
        return Err(file_err(key, path, "no PEM certificate found"));
    }
    Ok(certs)
}

/// A CRL file in PEM or DER.
pub fn load_crl(path: &Path) -> Result<Vec<CertificateRevocationListDer<'static>>, TlsError> {
    let data = read("tls.crls", path)?;
    let pem: Vec<_> = rustls_pemfile::crls(&mut data.as_slice())
        .collect::<Result<_, _>>()
        .map_err(|e| file_err("tls.crls", path, e))?;
    let crls = if pem.is_empty() { vec![CertificateRevocationListDer::from(data)] } else { pem };
    // Parse now so a broken file is refused at load, not at the first handshake.
    for c in &crls {
        webpki::OwnedCertRevocationList::from_der(c.as_ref())
            .map_err(|e| file_err("tls.crls", path, format!("not a CRL: {e:?}")))?;
    }
    Ok(crls)
}

impl TlsMaterial {
    pub fn load(cfg: &TlsConfig) -> Result<TlsMaterial, TlsError> {
        let chain = load_certs("tls.certificate", &cfg.certificate)?;
        let kdata = read("tls.private_key", &cfg.private_key)?;
        let key = rustls_pemfile::private_key(&mut kdata.as_slice())
            .map_err(|e| file_err("tls.private_key", &cfg.private_key, e))?
            .ok_or_else(|| file_err("tls.private_key", &cfg.private_key, "no PEM private key found"))?;
        let mut roots = RootCertStore::empty();
        if let Some(ta) = &cfg.trust_anchors {
            for c in load_certs("tls.trust_anchors", ta)? {
                roots.add(c).map_err(|e| file_err("tls.trust_anchors", ta, e))?;
            }
        }
        let mut crls = Vec::new();
        for path in &cfg.crls {
            crls.extend(load_crl(path)?);
        }
        let m = TlsMaterial { chain, key: Arc::new(key), roots: Arc::new(roots), crls };
        // Prove that key and certificate belong together.
        m.server_config(None)?;
        Ok(m)
    }

    /// Server side. `client_verifier` asks for client certificates (trust-space listener).
    pub fn server_config(
        &self,
        client_verifier: Option<Arc<dyn rustls::server::danger::ClientCertVerifier>>,
    ) -> Result<Arc<rustls::ServerConfig>, TlsError> {
        let b = rustls::ServerConfig::builder_with_provider(provider())
            .with_protocol_versions(VERSIONS)
            .map_err(|e| TlsError::Rustls(e.to_string()))?;
        let b = match client_verifier {
            Some(v) => b.with_client_cert_verifier(v),
            None => b.with_no_client_auth(),
        };
        let cfg = b
            .with_single_cert(self.chain.clone(), self.key.clone_key())
            .map_err(|e| TlsError::Rustls(format!("certificate/key: {e}")))?;
        Ok(Arc::new(cfg))
    }

    /// Client side, presenting our certificate, with the given server verifier.
    pub fn client_config(&self, verifier: Arc<dyn ServerCertVerifier>) -> Result<Arc<rustls::ClientConfig>, TlsError> {
        let cfg = rustls::ClientConfig::builder_with_provider(provider())
            .with_protocol_versions(VERSIONS)
            .map_err(|e| TlsError::Rustls(e.to_string()))?
            .dangerous()
            .with_custom_certificate_verifier(verifier)
            .with_client_auth_cert(self.chain.clone(), self.key.clone_key())
            .map_err(|e| TlsError::Rustls(format!("client certificate/key: {e}")))?;
        Ok(Arc::new(cfg))
    }

    /// Chain + name verification against our trust anchors and CRLs (`tls = "required"`).
    pub fn webpki_server_verifier(&self) -> Result<Arc<dyn ServerCertVerifier>, TlsError> {
        let mut b = rustls::client::WebPkiServerVerifier::builder_with_provider(self.roots.clone(), provider());
        if !self.crls.is_empty() {
            b = b.with_crls(self.crls.clone());
        }
        let v = b.build().map_err(|e| TlsError::Rustls(e.to_string()))?;
        Ok(v)
    }
}

/// Opportunistic TLS, as Postfix's `may`: encrypt, do not authenticate the server. The
/// handshake signature is still checked so the session key is bound to the offered key.
#[derive(Debug)]
pub struct AcceptAnyServer(pub Arc<CryptoProvider>);

impl ServerCertVerifier for AcceptAnyServer {
    fn verify_server_cert(
        &self,
        _: &CertificateDer<'_>,
        _: &[CertificateDer<'_>],
        _: &ServerName<'_>,
        _: &[u8],
        _: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }
    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.0.signature_verification_algorithms)
    }
    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.0.signature_verification_algorithms)
    }
    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// A short description of a finished handshake, for logs and Received headers.
pub fn describe(conn: &rustls::CommonState) -> String {
    let v = conn.protocol_version().map(|v| format!("{v:?}")).unwrap_or_default();
    let s = conn.negotiated_cipher_suite().map(|s| format!("{:?}", s.suite())).unwrap_or_default();
    format!("{} with cipher {}", v.replace("TLSv1_", "TLSv1."), s)
}
