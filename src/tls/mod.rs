//! TLS material and rustls configurations, built once per config snapshot.
//!
//! Protocols and suites (ANSSI-compatible, ECDHE + AEAD only): TLS 1.3 with
//! AES-256-GCM, AES-128-GCM, ChaCha20-Poly1305; TLS 1.2 with ECDHE-ECDSA/ECDHE-RSA and
//! AES-256-GCM, AES-128-GCM, ChaCha20-Poly1305. Groups X25519, P-256, P-384. rustls has no
//! RSA key exchange, CBC or TLS < 1.2 at all, so nothing weaker can be negotiated.
//!
//! Must not import: trust (the trust state reads tls), policy, delivery, intake.

use crate::config::TlsConfig;
use crate::message::TlsRefusal;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{ring, CryptoProvider};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{
    CertificateDer, CertificateRevocationListDer, PrivateKeyDer, ServerName, UnixTime,
};
use rustls::{DigitallySignedStruct, RootCertStore, SignatureScheme};
use std::path::{Path, PathBuf};
use std::sync::Arc;

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("{key}: {path}: {msg}")]
    File {
        key: &'static str,
        path: String,
        msg: String,
    },
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

const VERSIONS: &[&rustls::SupportedProtocolVersion] =
    &[&rustls::version::TLS13, &rustls::version::TLS12];

/// Our identity and our trust anchors, read from the files named in `[tls]`. The CRLs have a
/// life of their own (they are refreshed by the file watcher): see [`CrlSet`].
#[derive(Clone, Debug)]
pub struct TlsMaterial {
    pub chain: Vec<CertificateDer<'static>>,
    pub key: Arc<PrivateKeyDer<'static>>,
    pub roots: Arc<RootCertStore>,
}

/// The CRLs in force: every file of `tls.crls`, parsed. Replaced whole when a file changes;
/// a file that no longer parses keeps its last good copy.
#[derive(Debug, Default)]
pub struct CrlSet {
    files: Vec<(PathBuf, Vec<CertificateRevocationListDer<'static>>)>,
    parsed: Vec<webpki::CertRevocationList<'static>>,
}

/// Shared by every validator; one writer (the CRL watcher, or a reload through it).
pub type Crls = Arc<arc_swap::ArcSwap<CrlSet>>;

impl CrlSet {
    /// Loads `paths`. With `previous`, a file that does not load keeps its last good copy
    /// (with a warning): a botched CRL download must not stop the trust space.
    pub fn load(paths: &[PathBuf], previous: Option<&CrlSet>) -> Result<CrlSet, TlsError> {
        Self::load_capped(paths, crate::util::fs::DEFAULT_MAX_CRL_BYTES, previous)
    }

    /// [`CrlSet::load`] refusing a file over `max_size` bytes before reading it whole
    /// (`tls.crl_max_size`): a CRL comes from outside, and a huge one must cost nothing.
    pub fn load_capped(
        paths: &[PathBuf],
        max_size: u64,
        previous: Option<&CrlSet>,
    ) -> Result<CrlSet, TlsError> {
        let mut files = Vec::new();
        for path in paths {
            let loaded = match (load_crl(path, max_size), previous) {
                (Ok(c), _) => c,
                (Err(e), Some(prev)) => match prev.files.iter().find(|(p, _)| p == path) {
                    Some((_, last_good)) => {
                        tracing::warn!(file = %path.display(), error = %e, "CRL unusable; keeping the last good copy");
                        last_good.clone()
                    }
                    None => return Err(e),
                },
                (Err(e), None) => return Err(e),
            };
            files.push((path.clone(), loaded));
        }
        let parsed = files
            .iter()
            .flat_map(|(_, c)| c.iter())
            .map(|c| {
                webpki::OwnedCertRevocationList::from_der(c.as_ref())
                    .map(webpki::CertRevocationList::from)
                    .map_err(|e| TlsError::Rustls(format!("CRL: {e:?}")))
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(CrlSet { files, parsed })
    }

    /// Each file of `tls.crls` with the CRLs it holds.
    pub fn files(&self) -> &[(PathBuf, Vec<CertificateRevocationListDer<'static>>)] {
        &self.files
    }

    pub fn der(&self) -> Vec<CertificateRevocationListDer<'static>> {
        self.files
            .iter()
            .flat_map(|(_, c)| c.iter().cloned())
            .collect()
    }

    /// The earliest `nextUpdate` (Unix time) of the CRLs in force (the console's health table).
    pub fn next_update(&self) -> Option<i64> {
        self.files
            .iter()
            .flat_map(|(_, c)| c.iter())
            .filter_map(|der| crl_next_update(der.as_ref()))
            .min()
    }

    pub fn is_empty(&self) -> bool {
        self.parsed.is_empty()
    }
}

fn read(key: &'static str, path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|e| TlsError::File {
        key,
        path: path.display().to_string(),
        msg: e.to_string(),
    })
}

fn file_err(key: &'static str, path: &Path, msg: impl ToString) -> TlsError {
    TlsError::File {
        key,
        path: path.display().to_string(),
        msg: msg.to_string(),
    }
}

pub fn load_certs(
    key: &'static str,
    path: &Path,
) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let data = read(key, path)?;
    let certs: Vec<_> = CertificateDer::pem_slice_iter(&data)
        .collect::<Result<_, _>>()
        .map_err(|e| file_err(key, path, e))?;
    if certs.is_empty() {
        return Err(file_err(key, path, "no PEM certificate found"));
    }
    Ok(certs)
}

/// A CRL file in PEM or DER.
pub fn load_crl(
    path: &Path,
    max_size: u64,
) -> Result<Vec<CertificateRevocationListDer<'static>>, TlsError> {
    let data =
        crate::util::fs::read_capped(path, max_size).map_err(|e| file_err("tls.crls", path, e))?;
    let pem: Vec<_> = CertificateRevocationListDer::pem_slice_iter(&data)
        .collect::<Result<_, _>>()
        .map_err(|e| file_err("tls.crls", path, e))?;
    let crls = if pem.is_empty() {
        vec![CertificateRevocationListDer::from(data)]
    } else {
        pem
    };
    // Parse now so a broken file is refused at load, not at the first handshake.
    for c in &crls {
        webpki::OwnedCertRevocationList::from_der(c.as_ref())
            .map_err(|e| file_err("tls.crls", path, format!("not a CRL: {e:?}")))?;
    }
    Ok(crls)
}

impl TlsMaterial {
    /// Loads our certificate, key and trust anchors; certificate and key must match.
    pub fn load(cfg: &TlsConfig) -> Result<TlsMaterial, TlsError> {
        let chain = load_certs("tls.certificate", &cfg.certificate)?;
        let kdata = read("tls.private_key", &cfg.private_key)?;
        let key = PrivateKeyDer::from_pem_slice(&kdata).map_err(|e| {
            file_err(
                "tls.private_key",
                &cfg.private_key,
                format!("no usable PEM private key: {e}"),
            )
        })?;
        let mut roots = RootCertStore::empty();
        if let Some(ta) = &cfg.trust_anchors {
            for c in load_certs("tls.trust_anchors", ta)? {
                roots
                    .add(c)
                    .map_err(|e| file_err("tls.trust_anchors", ta, e))?;
            }
        }
        let m = TlsMaterial {
            chain,
            key: Arc::new(key),
            roots: Arc::new(roots),
        };
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
        let with_ccert = client_verifier.is_some();
        let b = match client_verifier {
            Some(v) => b.with_client_cert_verifier(v),
            None => b.with_no_client_auth(),
        };
        let mut cfg = b
            .with_single_cert(self.chain.clone(), self.key.clone_key())
            .map_err(|e| TlsError::Rustls(format!("certificate/key: {e}")))?;
        // Inbound resumption (TLS 1.2 session IDs, TLS 1.3 tickets naming a cache entry): one
        // store per kind of listener, kept across reloads, so a reload does not cost every
        // peer a full handshake. A listener that asks for client certificates has its own, so
        // a session opened without a certificate elsewhere is never resumed there; and its
        // certificate checks (chain, CRLs, DN) run on every session, resumed or not, on the
        // chain rustls keeps with the session.
        cfg.session_storage = if with_ccert {
            server_sessions(&CCERT_SERVER_SESSIONS)
        } else {
            server_sessions(&PLAIN_SERVER_SESSIONS)
        };
        Ok(Arc::new(cfg))
    }

    /// Client side, presenting our certificate, with the given server verifier.
    pub fn client_config(
        &self,
        verifier: Arc<dyn ServerCertVerifier>,
    ) -> Result<Arc<rustls::ClientConfig>, TlsError> {
        let cfg = rustls::ClientConfig::builder_with_provider(provider())
            .with_protocol_versions(VERSIONS)
            .map_err(|e| TlsError::Rustls(e.to_string()))?
            .dangerous()
            .with_custom_certificate_verifier(verifier)
            .with_client_auth_cert(self.chain.clone(), self.key.clone_key())
            .map_err(|e| TlsError::Rustls(format!("client certificate/key: {e}")))?;
        Ok(Arc::new(cfg))
    }

    /// Chain + name verification against our trust anchors and the CRLs in force when it is
    /// built (`tls = "required"`, LDAP over TLS; rebuilt at each reload).
    pub fn webpki_server_verifier(
        &self,
        crls: &CrlSet,
    ) -> Result<Arc<dyn ServerCertVerifier>, TlsError> {
        let mut b = rustls::client::WebPkiServerVerifier::builder_with_provider(
            self.roots.clone(),
            provider(),
        );
        let der = crls.der();
        if !der.is_empty() {
            b = b.with_crls(der);
        }
        let v = b.build().map_err(|e| TlsError::Rustls(e.to_string()))?;
        Ok(v)
    }
}

/// TLS sessions remembered per server name for outbound resumption. 1,024 names: the trust
/// space has ~390 operator DNs, most with one or two MX hosts.
const CLIENT_SESSION_NAMES: usize = 1024;
/// Inbound sessions remembered per kind of listener.
const SERVER_SESSIONS: usize = 4096;

type SharedClientConfigs =
    std::sync::Mutex<Vec<(Vec<CertificateDer<'static>>, Arc<rustls::ClientConfig>)>>;
static PEER_JUDGED_CLIENTS: SharedClientConfigs = std::sync::Mutex::new(Vec::new());
static CCERT_SERVER_SESSIONS: std::sync::OnceLock<Arc<rustls::server::ServerSessionMemoryCache>> =
    std::sync::OnceLock::new();
static PLAIN_SERVER_SESSIONS: std::sync::OnceLock<Arc<rustls::server::ServerSessionMemoryCache>> =
    std::sync::OnceLock::new();

fn server_sessions(
    cell: &std::sync::OnceLock<Arc<rustls::server::ServerSessionMemoryCache>>,
) -> Arc<dyn rustls::server::StoresServerSessions> {
    cell.get_or_init(|| rustls::server::ServerSessionMemoryCache::new(SERVER_SESSIONS))
        .clone()
}

/// The client config of the connections whose peer is judged after the handshake
/// (opportunistic and mutual TLS), presenting our certificate: the same one for as long as
/// our certificate is the same, reloads included, with a session cache of 1,024 server names.
///
/// The same object, because rustls resumes a session only with the very verifier and client
/// certificate objects that created it (pointer equality): a config rebuilt at each reload
/// would make every peer pay a full handshake again.
///
/// Why resuming is safe here: rustls does not call the verifier on a resumed session (in TLS
/// 1.3 the server does not even send its certificate again), but `peer_certificates()` gives
/// back the chain of the full handshake that created the session, whose signature over that
/// handshake was checked. The trust-space checks are not in the verifier: they run after
/// every handshake, resumed or not, on that chain, with the CRLs and the clock of now
/// (`PeerValidator`), then the DN pin of the domain. A certificate revoked or expired since
/// is refused on resumption as on a full handshake, and the pin is the same; a session never
/// makes a peer more trusted than its certificate is today. The `tls = "required"` config
/// verifies inside the handshake instead, so it keeps rustls's per-config cache: it is
/// rebuilt with the CRLs at each reload and no session outlives the CRLs it was checked with.
pub fn peer_judged_client_config(m: &TlsMaterial) -> Result<Arc<rustls::ClientConfig>, TlsError> {
    let mut cache = PEER_JUDGED_CLIENTS
        .lock()
        .unwrap_or_else(|p| p.into_inner());
    if let Some((_, c)) = cache.iter().find(|(chain, _)| *chain == m.chain) {
        return Ok(c.clone());
    }
    let built = m.client_config(Arc::new(AcceptAnyServer(provider())))?;
    let mut c = (*built).clone();
    c.resumption = rustls::client::Resumption::in_memory_sessions(CLIENT_SESSION_NAMES);
    let c = Arc::new(c);
    // A few identities at most (a certificate renewal); the oldest goes.
    if cache.len() >= 4 {
        cache.remove(0);
    }
    cache.push((m.chain.clone(), c.clone()));
    Ok(c)
}

/// A client without a certificate of its own (opportunistic TLS with no `[tls]`, LDAP over
/// TLS), with our versions and suites.
pub fn anonymous_client_config(
    verifier: Arc<dyn ServerCertVerifier>,
) -> Result<Arc<rustls::ClientConfig>, TlsError> {
    let c = rustls::ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(VERSIONS)
        .map_err(|e| TlsError::Rustls(e.to_string()))?
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_no_client_auth();
    Ok(Arc::new(c))
}

/// The handshake-signature half of a verifier: proof that the peer holds the key of the
/// certificate it showed. Shared by both verifiers below, which leave judging the certificate
/// itself to [`PeerValidator`] (or to nobody, for opportunistic TLS).
macro_rules! handshake_signatures {
    ($provider:tt) => {
        fn verify_tls12_signature(
            &self,
            message: &[u8],
            cert: &CertificateDer<'_>,
            dss: &DigitallySignedStruct,
        ) -> Result<HandshakeSignatureValid, rustls::Error> {
            rustls::crypto::verify_tls12_signature(
                message,
                cert,
                dss,
                &self.$provider.signature_verification_algorithms,
            )
        }
        fn verify_tls13_signature(
            &self,
            message: &[u8],
            cert: &CertificateDer<'_>,
            dss: &DigitallySignedStruct,
        ) -> Result<HandshakeSignatureValid, rustls::Error> {
            rustls::crypto::verify_tls13_signature(
                message,
                cert,
                dss,
                &self.$provider.signature_verification_algorithms,
            )
        }
        fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
            self.$provider
                .signature_verification_algorithms
                .supported_schemes()
        }
    };
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
    handshake_signatures!(0);
}

/// A short description of a finished handshake, for logs and Received headers.
pub fn describe(conn: &rustls::CommonState) -> String {
    let v = conn
        .protocol_version()
        .map(|v| format!("{v:?}"))
        .unwrap_or_default();
    let s = conn
        .negotiated_cipher_suite()
        .map(|s| format!("{:?}", s.suite()))
        .unwrap_or_default();
    format!("{} with cipher {}", v.replace("TLSv1_", "TLSv1."), s)
}

/// Which end of the connection the certificate belongs to (the EKU it must carry).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PeerRole {
    Server,
    Client,
}

/// Why a peer's certificate was refused: the reason for metrics and the words for people.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    pub reason: TlsRefusal,
    pub text: String,
}

impl Refusal {
    pub fn new(reason: TlsRefusal, text: impl Into<String>) -> Refusal {
        Refusal {
            reason,
            text: text.into(),
        }
    }
}

impl std::fmt::Display for Refusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.text)
    }
}

/// Validates a peer's chain against our trust anchors, the CRLs in force and the clock.
///
/// Done at the SMTP layer rather than inside the handshake: an inbound peer with an expired,
/// revoked or foreign certificate then gets an SMTP reply saying so (the ANS audits this), and
/// an outbound peer is checked before a single byte of mail is sent to it.
#[derive(Clone)]
pub struct PeerValidator {
    roots: Arc<RootCertStore>,
    crls: Crls,
}

impl std::fmt::Debug for PeerValidator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "PeerValidator({} anchors, {} CRLs)",
            self.roots.len(),
            self.crls.load().parsed.len()
        )
    }
}

impl PeerValidator {
    pub fn new(m: &TlsMaterial, crls: Crls) -> PeerValidator {
        PeerValidator {
            roots: m.roots.clone(),
            crls,
        }
    }

    /// `Ok(())` when the leaf chains to an anchor, is in its validity period, carries the
    /// right EKU and is not revoked by any configured CRL.
    pub fn validate(&self, chain: &[CertificateDer<'_>], role: PeerRole) -> Result<(), Refusal> {
        let (leaf, intermediates) = chain
            .split_first()
            .ok_or_else(|| Refusal::new(TlsRefusal::NoCertificate, "no certificate presented"))?;
        let ee = webpki::EndEntityCert::try_from(leaf).map_err(|e| {
            Refusal::new(
                TlsRefusal::Unreadable,
                format!("unreadable certificate: {e:?}"),
            )
        })?;
        let crls = self.crls.load();
        let crl_refs: Vec<&webpki::CertRevocationList<'_>> = crls.parsed.iter().collect();
        let revocation = if crl_refs.is_empty() {
            None
        } else {
            webpki::RevocationOptionsBuilder::new(&crl_refs)
                .ok()
                .map(|b| {
                    b.with_depth(webpki::RevocationCheckDepth::Chain)
                        .with_status_policy(webpki::UnknownStatusPolicy::Deny)
                        .build()
                })
        };
        let usage = match role {
            PeerRole::Server => webpki::KeyUsage::server_auth(),
            PeerRole::Client => webpki::KeyUsage::client_auth(),
        };
        ee.verify_for_usage(
            webpki::ALL_VERIFICATION_ALGS,
            &self.roots.roots,
            intermediates,
            UnixTime::now(),
            usage,
            revocation,
            None,
        )
        .map(|_| ())
        .map_err(|e| describe_webpki_error(&e))
    }
}

fn describe_webpki_error(e: &webpki::Error) -> Refusal {
    use webpki::Error as E;
    let (reason, text) = match e {
        E::CertExpired { .. } => (TlsRefusal::Expired, "certificate expired".into()),
        E::CertNotValidYet { .. } => (TlsRefusal::NotYetValid, "certificate not yet valid".into()),
        E::CertRevoked => (TlsRefusal::Revoked, "certificate revoked".into()),
        E::UnknownIssuer => (
            TlsRefusal::Untrusted,
            "certificate not issued by a trusted authority".into(),
        ),
        // An issuer with a trusted CA's name but another key: a look-alike CA.
        E::InvalidSignatureForPublicKey
        | E::UnsupportedSignatureAlgorithmContext(_)
        | E::UnsupportedSignatureAlgorithmForPublicKeyContext(_) => (
            TlsRefusal::Untrusted,
            "certificate not issued by a trusted authority (its signature does not verify)".into(),
        ),
        E::UnknownRevocationStatus => (
            TlsRefusal::UnknownRevocation,
            "no CRL covers this certificate's issuer".into(),
        ),
        E::CrlExpired { .. } => (
            TlsRefusal::CrlExpired,
            "the issuer's CRL has expired".into(),
        ),
        E::RequiredEkuNotFoundContext(_) => (
            TlsRefusal::MissingEku,
            "certificate lacks the required extended key usage".into(),
        ),
        other => (
            TlsRefusal::Untrusted,
            format!("certificate rejected: {other:?}"),
        ),
    };
    Refusal { reason, text }
}

/// Handshake-level verifiers that ask for (client) or accept (server) any certificate, checking
/// only the handshake signature; the chain is judged afterwards by [`PeerValidator`].
#[derive(Debug)]
pub struct DeferredClientVerifier {
    provider: Arc<CryptoProvider>,
    hints: Vec<rustls::DistinguishedName>,
}

impl DeferredClientVerifier {
    pub fn new(m: &TlsMaterial) -> DeferredClientVerifier {
        DeferredClientVerifier {
            provider: provider(),
            hints: m.roots.subjects(),
        }
    }
}

impl rustls::server::danger::ClientCertVerifier for DeferredClientVerifier {
    fn offer_client_auth(&self) -> bool {
        true
    }
    fn client_auth_mandatory(&self) -> bool {
        false
    }
    fn root_hint_subjects(&self) -> &[rustls::DistinguishedName] {
        &self.hints
    }
    fn verify_client_cert(
        &self,
        _: &CertificateDer<'_>,
        _: &[CertificateDer<'_>],
        _: UnixTime,
    ) -> Result<rustls::server::danger::ClientCertVerified, rustls::Error> {
        Ok(rustls::server::danger::ClientCertVerified::assertion())
    }
    handshake_signatures!(provider);
}

/// nextUpdate of a DER CRL (Unix seconds), `None` when absent or unreadable.
pub fn crl_next_update(der: &[u8]) -> Option<i64> {
    let (_, crl) = x509_parser::parse_x509_crl(der).ok()?;
    crl.next_update().map(|t| t.timestamp())
}
