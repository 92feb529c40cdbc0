//! TLS session resumption against a real rustls server with the development PKI: a resumed
//! trust-space connection still carries the verified DN, and the DN pin and the CRLs still
//! apply to it although the server sends no certificate on resumption.

use super::client::{Client, ClientOptions, TlsMode};
use crate::message::{FailureKind, TlsRefusal};
use crate::pki;
use crate::pki::dn::Dn;
use crate::tls::{AcceptAnyServer, CrlSet, PeerValidator, TlsMaterial};
use rustls::HandshakeKind;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};

const PEER_DN: &str =
    "CN=mx.operateur.test,OU=999999999900042,O=OPERATEUR TEST,ST=Gironde (33),C=FR";
const OTHER_DN: &str = "CN=mx.autre.test,OU=999999999900043,O=AUTRE OPERATEUR,ST=Gironde (33),C=FR";

struct Bed {
    dir: tempfile::TempDir,
    material: TlsMaterial,
    crls: crate::tls::Crls,
    peer_crt: PathBuf,
    addr: std::net::SocketAddr,
    /// How each handshake the peer accepted went.
    kinds: Arc<Mutex<Vec<HandshakeKind>>>,
}

fn crl_paths(dir: &Path) -> Vec<PathBuf> {
    vec![dir.join(pki::CRL_FILE), dir.join(pki::ROOT_CRL_FILE)]
}

/// A fresh development PKI (`passerelle pki dev`).
fn dev_pki() -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("tempdir");
    pki::generate_dev_pki(&pki::DevPkiOptions {
        out: dir.path().to_path_buf(),
        hostname: "passerelle.test".into(),
        force: false,
    })
    .expect("dev pki");
    dir
}

/// `[tls]` of a gateway using the dev PKI's own certificate.
fn gateway_tls(dir: &Path, crls: Vec<PathBuf>) -> crate::config::TlsConfig {
    crate::config::TlsConfig {
        certificate: dir.join(pki::GATEWAY_CERT_FILE),
        private_key: dir.join(pki::GATEWAY_KEY_FILE),
        trust_anchors: Some(dir.join(pki::CA_FILE)),
        crls,
        crl_urls: vec![],
        crl_refresh: Duration::from_secs(3600),
        crl_grace: Duration::from_secs(86400),
        crl_max_size: crate::util::fs::DEFAULT_MAX_CRL_BYTES,
    }
}

/// The dev PKI, an operator certificate, and an SMTP peer offering STARTTLS with it (rustls
/// server defaults: stateful session cache, TLS 1.3 tickets).
async fn bed() -> Bed {
    let dir = dev_pki();
    let issuer = pki::Issuer::load(
        &dir.path().join(pki::INTERMEDIATE_CERT_FILE),
        &dir.path().join(pki::INTERMEDIATE_KEY_FILE),
    )
    .expect("issuer");
    let now = time::OffsetDateTime::now_utc();
    let spec = pki::LeafSpec {
        name: "peer".into(),
        subject: pki::parse_subject(PEER_DN).expect("subject"),
        dns_names: vec!["mx.operateur.test".into()],
        ips: vec![],
        not_before: now - time::Duration::days(1),
        not_after: now + time::Duration::days(30),
        server_auth: true,
        client_auth: true,
    };
    let peer_crt = issuer.issue(&spec, dir.path()).expect("issue");
    let tls_cfg = gateway_tls(dir.path(), crl_paths(dir.path()));
    let material = TlsMaterial::load(&tls_cfg).expect("our material");
    let crls: crate::tls::Crls = Arc::new(arc_swap::ArcSwap::from_pointee(
        CrlSet::load(&crl_paths(dir.path()), None).expect("crls"),
    ));
    let peer = TlsMaterial::load(&crate::config::TlsConfig {
        certificate: peer_crt.clone(),
        private_key: dir.path().join("peer.key"),
        ..tls_cfg
    })
    .expect("peer material");
    let server = peer.server_config(None).expect("server config");
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let kinds = Arc::new(Mutex::new(Vec::new()));
    let seen = kinds.clone();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let server = server.clone();
            let seen = seen.clone();
            tokio::spawn(async move { serve(tcp, server, seen).await });
        }
    });
    Bed {
        dir,
        material,
        crls,
        peer_crt,
        addr,
        kinds,
    }
}

/// Just enough SMTP for a connection: banner, EHLO, STARTTLS, EHLO, QUIT.
async fn serve(
    tcp: tokio::net::TcpStream,
    server: Arc<rustls::ServerConfig>,
    seen: Arc<Mutex<Vec<HandshakeKind>>>,
) -> Option<()> {
    let mut r = BufReader::new(tcp);
    r.get_mut().write_all(b"220 peer ESMTP\r\n").await.ok()?;
    let mut line = String::new();
    loop {
        line.clear();
        r.read_line(&mut line).await.ok()?;
        let verb = line.trim().to_ascii_uppercase();
        if verb.starts_with("EHLO") {
            r.get_mut()
                .write_all(b"250-peer\r\n250 STARTTLS\r\n")
                .await
                .ok()?;
        } else if verb == "STARTTLS" {
            r.get_mut().write_all(b"220 go ahead\r\n").await.ok()?;
            break;
        } else {
            return None;
        }
    }
    let tls = tokio_rustls::TlsAcceptor::from(server)
        .accept(r.into_inner())
        .await
        .ok()?;
    if let Some(k) = tls.get_ref().1.handshake_kind() {
        seen.lock().ok()?.push(k);
    }
    let mut r = BufReader::new(tls);
    loop {
        line.clear();
        if r.read_line(&mut line).await.ok()? == 0 {
            return Some(());
        }
        let verb = line.trim().to_ascii_uppercase();
        let reply: &[u8] = if verb.starts_with("EHLO") {
            b"250-peer\r\n250 PIPELINING\r\n"
        } else if verb == "QUIT" {
            b"221 bye\r\n"
        } else {
            b"502 no\r\n"
        };
        r.get_mut().write_all(reply).await.ok()?;
        r.get_mut().flush().await.ok()?;
        if verb == "QUIT" {
            return Some(());
        }
    }
}

impl Bed {
    /// Trust-space options pinning `allowed`. rustls resumes only with the config object that
    /// made the session: the gateway keeps one (`tls::peer_judged_client_config`); each test
    /// builds its own, so tests running at once do not share sessions.
    fn options(&self, config: &Arc<rustls::ClientConfig>, allowed: &str) -> ClientOptions {
        let config = config.clone();
        ClientOptions {
            helo: "passerelle.test".into(),
            server_name: "mx.operateur.test".into(),
            tls: TlsMode::Mutual {
                config,
                validator: PeerValidator::new(&self.material, self.crls.clone()),
                allowed: vec![Dn::parse_rfc4514(allowed).expect("dn")].into(),
                domain: "ch.mssante.test".into(),
            },
            connect_timeout: Duration::from_secs(5),
            command_timeout: Duration::from_secs(5),
        }
    }

    async fn kinds(&self, n: usize) -> Vec<HandshakeKind> {
        for _ in 0..200 {
            let k = self.kinds.lock().map(|k| k.clone()).unwrap_or_default();
            if k.len() >= n {
                return k;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        self.kinds.lock().map(|k| k.clone()).unwrap_or_default()
    }
}

impl Bed {
    fn client_config(&self) -> Arc<rustls::ClientConfig> {
        let any = Arc::new(AcceptAnyServer(crate::tls::provider()));
        self.material.client_config(any).expect("client config")
    }
}

#[test]
fn the_trust_space_config_outlives_a_reload() {
    let dir = dev_pki();
    let load = || TlsMaterial::load(&gateway_tls(dir.path(), vec![])).expect("material");
    // Two loads of the same files (a reload): the same config, so sessions resume.
    let a = crate::tls::peer_judged_client_config(&load()).expect("config");
    let b = crate::tls::peer_judged_client_config(&load()).expect("config");
    assert!(Arc::ptr_eq(&a, &b));
}

#[tokio::test]
async fn resumed_session_keeps_the_verified_dn_and_the_pin() {
    let bed = bed().await;
    let store = bed.client_config();
    let peer = Dn::parse_rfc4514(PEER_DN).expect("dn");

    let first = Client::connect(bed.addr, &bed.options(&store, PEER_DN))
        .await
        .expect("full handshake");
    assert!(!first.resumed);
    assert_eq!(first.verified_dn.as_ref(), Some(&peer));
    first.quit().await;

    let second = Client::connect(bed.addr, &bed.options(&store, PEER_DN))
        .await
        .expect("resumed handshake");
    assert!(
        second.resumed,
        "the second connection should resume the session"
    );
    assert_eq!(
        second.verified_dn.as_ref(),
        Some(&peer),
        "a resumed connection carries the DN verified by the original handshake"
    );
    assert_eq!(second.peer_dn.as_deref(), Some(PEER_DN));
    second.quit().await;

    // Same session store, a domain that declares another DN: refused, although resumed.
    let Err(refused) = Client::connect(bed.addr, &bed.options(&store, OTHER_DN)).await else {
        panic!("a DN-pin mismatch must be refused on resumption");
    };
    assert_eq!(refused.kind, FailureKind::Tls(TlsRefusal::DnNotDeclared));
    assert!(refused
        .detail
        .contains("is not declared in the MSSante whitelist for ch.mssante.test"));
    assert_eq!(
        bed.kinds(3).await,
        vec![
            HandshakeKind::Full,
            HandshakeKind::Resumed,
            HandshakeKind::Resumed
        ]
    );
}

#[tokio::test]
async fn certificate_revoked_since_the_session_is_refused_on_resumption() {
    let bed = bed().await;
    let store = bed.client_config();
    let first = Client::connect(bed.addr, &bed.options(&store, PEER_DN))
        .await
        .expect("full handshake");
    first.quit().await;

    // The CRL now lists the operator's certificate (as the CRL watcher would load it).
    let serial = pki::serial_of(&bed.peer_crt).expect("serial");
    pki::revoke_in_dev_pki(bed.dir.path(), &[serial]).expect("revoke");
    let previous = bed.crls.load_full();
    let fresh = CrlSet::load(&crl_paths(bed.dir.path()), Some(&previous)).expect("new crl");
    bed.crls.store(Arc::new(fresh));

    let Err(refused) = Client::connect(bed.addr, &bed.options(&store, PEER_DN)).await else {
        panic!("a revoked certificate must be refused on resumption");
    };
    assert_eq!(refused.kind, FailureKind::Tls(TlsRefusal::Revoked));
    assert_eq!(
        bed.kinds(2).await,
        vec![HandshakeKind::Full, HandshakeKind::Resumed],
        "the refused connection was a resumed one"
    );
}
