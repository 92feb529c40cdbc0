//! Downloads of the trust-space files the gateway depends on: the ANS whitelist
//! (`[whitelist] url`) and the IGC-Santé CRLs (`[tls] crl_urls`).
//!
//! Why in the gateway and not only in a cron script: a stale CRL or whitelist silently weakens
//! every peer check, so the process that relies on them fetches them on their own periods and
//! reports their freshness (`/readyz`, metrics: see [`crate::trust`]).
//!
//! Every download is a conditional GET (`If-None-Match` with the last ETag, `If-Modified-Since`
//! with the file's mtime, which is set to the server's `Last-Modified`), bounded in time and
//! size, retried with exponential backoff on network errors and 5xx/408/429, and **verified
//! before it replaces the file** (the whitelist: signature, age, no rollback; a CRL: parses,
//! signed by a CA of `tls.trust_anchors`, not older than the file in force). A verified
//! download is written to a temporary file in the same directory, fsync'd, renamed over the
//! old one and the directory fsync'd: readers never see half a file, a crash leaves the old or
//! the new one. Anything that fails leaves the last good file in place.
//!
//! The HTTP client is `ureq` 3 (blocking, rustls on ring, the proxy from `HTTPS_PROXY`/
//! `HTTP_PROXY`): a handful of requests an hour do not justify an async HTTP stack; the
//! gateway runs them on tokio's blocking pool ([`run`]).

use crate::config::Config;
use crate::trust::whitelist::{Acceptance, Whitelist};
use crate::trust::FetchRecord;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

/// Largest download accepted (the whitelist is ~3.6 MB, an IGC-Santé CRL a few hundred KB).
pub const MAX_BYTES: u64 = 64 << 20;

#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    #[error("{0}")]
    Http(String),
    #[error("HTTP status {0}")]
    Status(u16),
    /// The download arrived but failed verification: not installed.
    #[error("download refused: {0}")]
    Refused(String),
    #[error("{}: {err}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        err: std::io::Error,
    },
}

impl FetchError {
    /// Worth another try: network trouble and server-side errors, not a refused file.
    fn transient(&self) -> bool {
        match self {
            FetchError::Http(_) => true,
            FetchError::Status(s) => *s >= 500 || *s == 408 || *s == 429,
            FetchError::Refused(_) | FetchError::Io { .. } => false,
        }
    }
}

/// What a download did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FetchOutcome {
    /// A new version was verified and installed.
    Updated { bytes: usize },
    /// 304 Not Modified.
    NotModified,
    /// 200 with the bytes already in place: nothing written.
    Same,
}

#[derive(Debug, Clone)]
pub struct FetchOptions {
    /// Whole-request bound (connect, headers, body).
    pub timeout: Duration,
    pub connect_timeout: Duration,
    /// Attempts after the first, on transient errors.
    pub retries: u32,
    /// First pause between attempts; doubled each time.
    pub backoff: Duration,
}

impl Default for FetchOptions {
    fn default() -> Self {
        FetchOptions {
            timeout: Duration::from_secs(120),
            connect_timeout: Duration::from_secs(15),
            retries: 3,
            backoff: Duration::from_secs(2),
        }
    }
}

/// An HTTP client that remembers ETags between downloads.
pub struct Fetcher {
    agent: ureq::Agent,
    opts: FetchOptions,
    etags: Mutex<HashMap<String, String>>,
}

impl Fetcher {
    pub fn new(opts: FetchOptions) -> Fetcher {
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .timeout_global(Some(opts.timeout))
            .timeout_connect(Some(opts.connect_timeout))
            .http_status_as_error(false)
            .user_agent(concat!("passerelle/", env!("CARGO_PKG_VERSION")))
            .build()
            .into();
        Fetcher {
            agent,
            opts,
            etags: Mutex::new(HashMap::new()),
        }
    }

    /// Downloads `url` unless unchanged, runs `verify` on the bytes, and only then replaces
    /// `dest` atomically. Retries transient failures with backoff.
    pub fn fetch_if_changed(
        &self,
        url: &str,
        dest: &Path,
        verify: impl Fn(&[u8]) -> Result<(), String>,
    ) -> Result<FetchOutcome, FetchError> {
        self.fetch_capped(url, dest, MAX_BYTES, verify)
    }

    /// [`Fetcher::fetch_if_changed`] refusing a body over `max` bytes (the bound of the file it
    /// replaces: `whitelist.max_size`, `tls.crl_max_size`) before it is verified.
    pub fn fetch_capped(
        &self,
        url: &str,
        dest: &Path,
        max: u64,
        verify: impl Fn(&[u8]) -> Result<(), String>,
    ) -> Result<FetchOutcome, FetchError> {
        let mut pause = self.opts.backoff;
        let mut attempt = 0;
        loop {
            match self.once(url, dest, max, &verify) {
                Err(e) if e.transient() && attempt < self.opts.retries => {
                    tracing::debug!(url, attempt, error = %e, "download failed, retrying");
                    std::thread::sleep(pause);
                    pause = pause.saturating_mul(2);
                    attempt += 1;
                }
                other => return other,
            }
        }
    }

    fn once(
        &self,
        url: &str,
        dest: &Path,
        max: u64,
        verify: &dyn Fn(&[u8]) -> Result<(), String>,
    ) -> Result<FetchOutcome, FetchError> {
        let current = std::fs::metadata(dest).ok();
        let mut req = self.agent.get(url);
        if current.is_some() {
            if let Some(tag) = self.etag(url) {
                req = req.header("If-None-Match", tag);
            }
            if let Some(m) = current.as_ref().and_then(|m| m.modified().ok()) {
                req = req.header("If-Modified-Since", httpdate::fmt_http_date(m));
            }
        }
        let mut resp = req.call().map_err(|e| FetchError::Http(e.to_string()))?;
        let status = resp.status().as_u16();
        if status == 304 && current.is_some() {
            return Ok(FetchOutcome::NotModified);
        }
        if status != 200 {
            return Err(FetchError::Status(status));
        }
        let header = |name: &str| {
            resp.headers()
                .get(name)
                .and_then(|v| v.to_str().ok())
                .map(str::to_string)
        };
        let etag = header("etag");
        let last_modified =
            header("last-modified").and_then(|v| httpdate::parse_http_date(&v).ok());
        let body = resp
            .body_mut()
            .with_config()
            .limit(max)
            .read_to_vec()
            .map_err(|e| FetchError::Http(format!("reading the body: {e}")))?;
        if current.is_some() && std::fs::read(dest).is_ok_and(|old| old == body) {
            self.remember(url, etag);
            return Ok(FetchOutcome::Same);
        }
        verify(&body).map_err(FetchError::Refused)?;
        install(dest, &body, last_modified)?;
        self.remember(url, etag);
        Ok(FetchOutcome::Updated { bytes: body.len() })
    }

    fn etag(&self, url: &str) -> Option<String> {
        self.etags
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(url)
            .cloned()
    }

    fn remember(&self, url: &str, etag: Option<String>) {
        let mut m = self.etags.lock().unwrap_or_else(|p| p.into_inner());
        match etag {
            Some(t) => m.insert(url.to_string(), t),
            None => m.remove(url),
        };
    }
}

/// Temporary file beside `dest`, fsync, rename, fsync of the directory; mtime = `modified`.
pub fn install(dest: &Path, data: &[u8], modified: Option<SystemTime>) -> Result<(), FetchError> {
    crate::util::fs::write_atomic_modified(
        dest,
        data,
        crate::util::fs::Mode::KeepOr(0o644),
        modified,
    )
    .map_err(|err| FetchError::Io {
        path: dest.to_path_buf(),
        err,
    })
}

// ---------------------------------------------------------------------------
// Verification of downloads
// ---------------------------------------------------------------------------

/// A downloaded whitelist is accepted under `rules` (signature, age) and must not be older
/// than the list in force.
pub fn verify_whitelist(
    data: &[u8],
    source: &str,
    rules: &Acceptance,
    previous: Option<&Whitelist>,
) -> Result<(), String> {
    crate::trust::check_whitelist_bytes(
        data,
        source,
        rules,
        previous,
        crate::util::clock::now_unix(),
    )
    .map(|_| ())
    .map_err(|e| e.to_string())
}

/// A downloaded CRL (PEM or DER) must parse, be signed by one of `issuers` (the certificates
/// of `tls.trust_anchors` and `tls.certificate`: over plain HTTP, anyone on the path could otherwise replace it and
/// have every peer refused) and not be older (thisUpdate) than `current`, the file in force.
pub fn verify_crl(data: &[u8], issuers: &[Vec<u8>], current: Option<&[u8]>) -> Result<(), String> {
    let der = crl_der(data)?;
    let (_, crl) = x509_parser::parse_x509_crl(&der).map_err(|e| format!("not a CRL: {e}"))?;
    webpki::OwnedCertRevocationList::from_der(&der).map_err(|e| format!("not a CRL: {e:?}"))?;
    let issuer_name = crl.issuer().as_raw();
    let alg = crl_algorithm(&crl.signature_algorithm.algorithm.to_id_string())?;
    let tbs = crl.tbs_cert_list.as_ref();
    let sig = crl.signature_value.data.as_ref();
    let mut issuer_found = false;
    let mut verified = false;
    for c in issuers {
        let Ok((_, cert)) = x509_parser::parse_x509_certificate(c) else {
            continue;
        };
        if cert.subject().as_raw() != issuer_name {
            continue;
        }
        issuer_found = true;
        let der = rustls_pki_types::CertificateDer::from(c.as_slice());
        if let Ok(ee) = webpki::EndEntityCert::try_from(&der) {
            if ee.verify_signature(alg, tbs, sig).is_ok() {
                verified = true;
                break;
            }
        }
    }
    if !issuer_found {
        return Err(format!(
            "CRL issuer {} is not in tls.trust_anchors or tls.certificate",
            crl.issuer()
        ));
    }
    if !verified {
        return Err(format!(
            "CRL signature does not verify with {}",
            crl.issuer()
        ));
    }
    if let Some(cur) = current.and_then(|c| crl_der(c).ok()) {
        if let Ok((_, old)) = x509_parser::parse_x509_crl(&cur) {
            if old.issuer().as_raw() == issuer_name
                && crl.last_update().timestamp() < old.last_update().timestamp()
            {
                return Err(format!(
                    "CRL thisUpdate {} is older than the one in force ({})",
                    crl.last_update(),
                    old.last_update()
                ));
            }
        }
    }
    Ok(())
}

fn crl_der(data: &[u8]) -> Result<Vec<u8>, String> {
    use rustls_pki_types::pem::PemObject;
    if data.starts_with(b"-----") || data.iter().take(64).all(|b| b.is_ascii()) {
        if let Ok(c) = rustls_pki_types::CertificateRevocationListDer::from_pem_slice(data) {
            return Ok(c.as_ref().to_vec());
        }
    }
    Ok(data.to_vec())
}

fn crl_algorithm(
    oid: &str,
) -> Result<&'static dyn rustls_pki_types::SignatureVerificationAlgorithm, String> {
    use webpki::ring as r;
    Ok(match oid {
        "1.2.840.113549.1.1.11" => r::RSA_PKCS1_2048_8192_SHA256,
        "1.2.840.113549.1.1.12" => r::RSA_PKCS1_2048_8192_SHA384,
        "1.2.840.113549.1.1.13" => r::RSA_PKCS1_2048_8192_SHA512,
        "1.2.840.10045.4.3.2" => r::ECDSA_P256_SHA256,
        "1.2.840.10045.4.3.3" => r::ECDSA_P384_SHA384,
        other => return Err(format!("CRL signature algorithm {other} not supported")),
    })
}

// ---------------------------------------------------------------------------
// What to download, and the loop
// ---------------------------------------------------------------------------

/// Which file a download replaces.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum What {
    Whitelist,
    /// Index in `tls.crls`.
    Crl(usize),
}

/// One download the config asks for.
#[derive(Debug, Clone)]
pub struct Job {
    pub what: What,
    pub url: String,
    pub dest: PathBuf,
    pub every: Duration,
    /// The bound of the file it replaces; a larger body is refused.
    pub max_size: u64,
}

/// Everything a download pass needs from one config snapshot.
#[derive(Debug, Clone, Default)]
pub struct Plan {
    pub jobs: Vec<Job>,
    pub whitelist_rules: Acceptance,
    /// DER certificates of `tls.trust_anchors`, to check CRL signatures.
    pub crl_issuers: Vec<Vec<u8>>,
}

impl Plan {
    /// The downloads `cfg` asks for. Errors name the key (unreadable anchors).
    pub fn from_config(cfg: &Config) -> Result<Plan, String> {
        let mut plan = Plan::default();
        if let Some(w) = &cfg.whitelist {
            if let Some(url) = &w.url {
                plan.whitelist_rules = crate::trust::acceptance(w)?;
                plan.jobs.push(Job {
                    what: What::Whitelist,
                    url: url.clone(),
                    dest: w.file.clone(),
                    every: w.refresh,
                    max_size: w.max_size,
                });
            }
        }
        if let Some(t) = &cfg.tls {
            for (i, (url, dest)) in t.crl_urls.iter().zip(&t.crls).enumerate() {
                plan.jobs.push(Job {
                    what: What::Crl(i),
                    url: url.clone(),
                    dest: dest.clone(),
                    every: t.crl_refresh,
                    max_size: t.crl_max_size,
                });
            }
            if !t.crl_urls.is_empty() {
                // CRL signers: the anchors, and our own chain (it holds the intermediate that
                // signs the CRL of the peers' certificates).
                let files = [
                    ("tls.trust_anchors", t.trust_anchors.as_ref()),
                    ("tls.certificate", Some(&t.certificate)),
                ];
                for (key, file) in files {
                    if let Some(f) = file {
                        let certs = crate::tls::load_certs(key, f).map_err(|e| e.to_string())?;
                        plan.crl_issuers
                            .extend(certs.iter().map(|c| c.as_ref().to_vec()));
                    }
                }
            }
        }
        Ok(plan)
    }

    /// [`Plan::from_config`], or no downloads with the reason logged (the anchors were readable
    /// when the config was validated; this covers a file removed since).
    pub fn from_config_or_log(cfg: &Config) -> Plan {
        Plan::from_config(cfg).unwrap_or_else(|e| {
            tracing::error!("downloads disabled: {e}");
            Plan::default()
        })
    }

    /// Runs one job: download, verify, install; records the outcome for `/readyz` and
    /// metrics. `previous`: the whitelist in force (rollback check).
    pub fn run_job(
        &self,
        fetcher: &Fetcher,
        job: &Job,
        previous: Option<&Whitelist>,
    ) -> Result<FetchOutcome, FetchError> {
        let (label, r) = match job.what {
            What::Whitelist => (
                "whitelist",
                fetcher.fetch_capped(&job.url, &job.dest, job.max_size, |data| {
                    verify_whitelist(data, &job.url, &self.whitelist_rules, previous)
                }),
            ),
            What::Crl(_) => {
                let current = std::fs::read(&job.dest).ok();
                (
                    "crl",
                    fetcher.fetch_capped(&job.url, &job.dest, job.max_size, |data| {
                        verify_crl(data, &self.crl_issuers, current.as_deref())
                    }),
                )
            }
        };
        let record = match &r {
            Ok(FetchOutcome::Updated { bytes }) => {
                tracing::info!(what = label, url = %job.url, file = %job.dest.display(), bytes,
                    "downloaded, verified and installed");
                FetchRecord::Updated
            }
            Ok(_) => FetchRecord::Unchanged,
            Err(FetchError::Refused(why)) => {
                if job.what == What::Whitelist {
                    crate::metrics::inc(
                        "passerelle_whitelist_refused_total",
                        "whitelist files refused (the last good list stays in force), by reason",
                        &[("reason", "download")],
                    );
                }
                FetchRecord::Failed(format!("download refused, last good file kept: {why}"))
            }
            Err(e) => FetchRecord::Failed(e.to_string()),
        };
        crate::trust::record_fetch(label, &job.url, &record);
        r
    }

    /// Runs every job once, now (start-up with missing files, `passerelle fetch`).
    /// `only_missing`: skip files that exist.
    pub fn run_all(
        &self,
        fetcher: &Fetcher,
        only_missing: bool,
    ) -> Vec<(Job, Result<FetchOutcome, FetchError>)> {
        let mut previous = None;
        let mut out = Vec::new();
        for job in &self.jobs {
            if only_missing && job.dest.exists() {
                continue;
            }
            if job.what == What::Whitelist && job.dest.exists() {
                previous = Whitelist::load(&job.dest).ok();
            }
            let r = self.run_job(fetcher, job, previous.as_ref());
            out.push((job.clone(), r));
        }
        out
    }
}

/// At start-up, before the config's files are loaded: downloads the files that do not exist
/// yet (a first start needs the CRLs and the whitelist before it can load them). Blocking.
pub fn prime(cfg: &Config) {
    let plan = match Plan::from_config(cfg) {
        Ok(p) => p,
        Err(e) => return tracing::warn!("downloads not attempted: {e}"),
    };
    for (job, r) in plan.run_all(&Fetcher::new(FetchOptions::default()), true) {
        if let Err(e) = r {
            tracing::error!(url = %job.url, file = %job.dest.display(), "first download failed: {e}");
        }
    }
}

/// The gateway's download loop: each job on its own period (after a failure, sooner: 1 min
/// doubling up to the period). `plan` gives the current config's plan (it changes on reload);
/// `whitelist` the list in force; `changed` is told which file a download replaced (a CRL:
/// reload the TLS material; the whitelist: the file watcher also sees it). Never returns.
pub async fn run(
    plan: impl Fn() -> Arc<Plan> + Send + 'static,
    whitelist: impl Fn() -> Option<Arc<Whitelist>> + Send + 'static,
    changed: tokio::sync::mpsc::UnboundedSender<What>,
) {
    let fetcher = Arc::new(Fetcher::new(FetchOptions::default()));
    // url -> (next attempt, pause after a failure)
    let mut due: HashMap<String, (Instant, Option<Duration>)> = HashMap::new();
    loop {
        let p = plan();
        let now = Instant::now();
        for job in p.jobs.clone() {
            let (next, fail_pause) = *due.entry(job.url.clone()).or_insert((now, None));
            if next > now {
                continue;
            }
            let (f, pl, prev) = (fetcher.clone(), p.clone(), whitelist());
            let j = job.clone();
            let r = tokio::task::spawn_blocking(move || pl.run_job(&f, &j, prev.as_deref())).await;
            let ok = match r {
                Ok(Ok(FetchOutcome::Updated { .. })) => {
                    let _ = changed.send(job.what.clone());
                    true
                }
                Ok(Ok(_)) => true,
                Ok(Err(_)) => false,
                Err(e) => {
                    tracing::error!(url = %job.url, "download task failed: {e}");
                    false
                }
            };
            let entry = if ok {
                (Instant::now() + job.every, None)
            } else {
                let pause = fail_pause
                    .map(|d| d.saturating_mul(2))
                    .unwrap_or(Duration::from_secs(60))
                    .min(job.every);
                (Instant::now() + pause, Some(pause))
            };
            due.insert(job.url.clone(), entry);
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{BufRead, BufReader, Write};
    use std::net::TcpListener;
    use std::sync::atomic::{AtomicUsize, Ordering};

    /// A tiny HTTP/1.1 server: `respond(request_head)` gives (status, headers, body) for each
    /// request; it records the heads it saw.
    struct Server {
        url: String,
        seen: Arc<Mutex<Vec<String>>>,
    }

    type Responder = dyn Fn(&str, usize) -> (u16, Vec<(String, String)>, Vec<u8>) + Send + Sync;

    fn server(respond: Arc<Responder>) -> Server {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}/file", l.local_addr().unwrap());
        let seen = Arc::new(Mutex::new(Vec::new()));
        let seen2 = seen.clone();
        let n = Arc::new(AtomicUsize::new(0));
        std::thread::spawn(move || {
            for s in l.incoming() {
                let Ok(mut s) = s else { continue };
                let mut head = String::new();
                let mut r = BufReader::new(s.try_clone().unwrap());
                loop {
                    let mut line = String::new();
                    if r.read_line(&mut line).unwrap_or(0) == 0 || line == "\r\n" {
                        break;
                    }
                    head.push_str(&line);
                }
                seen2.lock().unwrap().push(head.clone());
                let (status, headers, body) = respond(&head, n.fetch_add(1, Ordering::SeqCst));
                let mut out = format!(
                    "HTTP/1.1 {status} X\r\nContent-Length: {}\r\nConnection: close\r\n",
                    body.len()
                );
                for (k, v) in headers {
                    out.push_str(&format!("{k}: {v}\r\n"));
                }
                out.push_str("\r\n");
                let _ = s.write_all(out.as_bytes());
                let _ = s.write_all(&body);
            }
        });
        Server { url, seen }
    }

    fn fast() -> Fetcher {
        Fetcher::new(FetchOptions {
            timeout: Duration::from_secs(5),
            connect_timeout: Duration::from_secs(2),
            retries: 2,
            backoff: Duration::from_millis(10),
        })
    }

    #[test]
    fn conditional_get_verify_and_atomic_replace() {
        let lm = "Wed, 21 Oct 2026 07:28:00 GMT";
        let srv = server(Arc::new(move |head: &str, _| {
            if head.to_ascii_lowercase().contains("if-none-match: \"v1\"") {
                return (304, vec![], vec![]);
            }
            (
                200,
                vec![
                    ("ETag".into(), "\"v1\"".into()),
                    ("Last-Modified".into(), lm.into()),
                ],
                b"good content".to_vec(),
            )
        }));
        let dir = tempfile::tempdir().unwrap();
        let dest = dir.path().join("sub/file.xml");
        let f = fast();
        let ok = |d: &[u8]| {
            if d.starts_with(b"good") {
                Ok(())
            } else {
                Err("bad".to_string())
            }
        };
        assert_eq!(
            f.fetch_if_changed(&srv.url, &dest, ok).unwrap(),
            FetchOutcome::Updated { bytes: 12 }
        );
        assert_eq!(std::fs::read(&dest).unwrap(), b"good content");
        // mtime is the server's Last-Modified, so If-Modified-Since is exact after a restart.
        let m = std::fs::metadata(&dest).unwrap().modified().unwrap();
        assert_eq!(httpdate::fmt_http_date(m), lm);
        assert_eq!(
            f.fetch_if_changed(&srv.url, &dest, ok).unwrap(),
            FetchOutcome::NotModified
        );
        let heads = srv.seen.lock().unwrap().clone();
        assert!(!heads[0].to_ascii_lowercase().contains("if-none-match"));
        assert!(
            heads[1].contains(&format!("if-modified-since: {lm}")),
            "{}",
            heads[1]
        );
        // A new fetcher (a restart) without the ETag: a 200 with the same bytes writes nothing.
        assert_eq!(
            fast().fetch_if_changed(&srv.url, &dest, ok).unwrap(),
            FetchOutcome::Same
        );
        // No temporary file left behind.
        let names: Vec<_> = std::fs::read_dir(dest.parent().unwrap())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names.len(), 1, "{names:?}");
    }

    #[test]
    fn refused_download_keeps_the_last_good_file_and_errors_are_retried() {
        let srv = server(Arc::new(|_: &str, n| match n {
            0 => (500, vec![], b"oops".to_vec()),
            1 => (200, vec![], b"garbage".to_vec()),
            2 => (404, vec![], vec![]),
            _ => (503, vec![], vec![]),
        }));
        let dir = tempfile::tempdir().unwrap();
        let dest = dir.path().join("file.xml");
        std::fs::write(&dest, b"last good").unwrap();
        let f = fast();
        let verify = |d: &[u8]| {
            if d == b"garbage" {
                Err("not a whitelist".to_string())
            } else {
                Ok(())
            }
        };
        // 500, retried, then 200 with a file that fails verification.
        match f.fetch_if_changed(&srv.url, &dest, verify) {
            Err(FetchError::Refused(why)) => assert_eq!(why, "not a whitelist"),
            other => panic!("{other:?}"),
        }
        assert_eq!(std::fs::read(&dest).unwrap(), b"last good");
        // 404 is not retried.
        assert!(matches!(
            f.fetch_if_changed(&srv.url, &dest, verify),
            Err(FetchError::Status(404))
        ));
        // 503 three times (1 + 2 retries).
        assert!(matches!(
            f.fetch_if_changed(&srv.url, &dest, verify),
            Err(FetchError::Status(503))
        ));
        assert_eq!(srv.seen.lock().unwrap().len(), 6);
        // Nobody listening.
        let closed = TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}/x", closed.local_addr().unwrap());
        drop(closed);
        assert!(matches!(
            f.fetch_if_changed(&url, &dest, verify),
            Err(FetchError::Http(_))
        ));
        assert_eq!(std::fs::read(&dest).unwrap(), b"last good");
    }

    #[test]
    fn crl_checks() {
        let dir = tempfile::tempdir().unwrap();
        crate::pki::generate_dev_pki(&crate::pki::DevPkiOptions {
            out: dir.path().to_path_buf(),
            hostname: "gw.test".into(),
            force: false,
        })
        .unwrap();
        // The anchors and our own chain (which holds the intermediate), as Plan does.
        let issuers: Vec<Vec<u8>> = [crate::pki::CA_FILE, crate::pki::GATEWAY_CERT_FILE]
            .iter()
            .flat_map(|f| crate::tls::load_certs("t", &dir.path().join(f)).unwrap())
            .map(|c| c.as_ref().to_vec())
            .collect();
        let crl = std::fs::read(dir.path().join(crate::pki::CRL_FILE)).unwrap();
        let root_crl = std::fs::read(dir.path().join(crate::pki::ROOT_CRL_FILE)).unwrap();
        verify_crl(&crl, &issuers, None).unwrap();
        verify_crl(&root_crl, &issuers, Some(&root_crl)).unwrap();
        // Another PKI's CRL: issuer unknown (or a look-alike: signature fails).
        let other = tempfile::tempdir().unwrap();
        crate::pki::generate_dev_pki(&crate::pki::DevPkiOptions {
            out: other.path().to_path_buf(),
            hostname: "gw.test".into(),
            force: false,
        })
        .unwrap();
        let foreign = std::fs::read(other.path().join(crate::pki::CRL_FILE)).unwrap();
        let e = verify_crl(&foreign, &issuers, None).unwrap_err();
        assert!(
            e.contains("signature does not verify") || e.contains("not in tls.trust_anchors"),
            "{e}"
        );
        assert!(verify_crl(b"garbage", &issuers, None)
            .unwrap_err()
            .starts_with("not a CRL"));
        // One byte changed in the signed part.
        let mut der = crl_der(&crl).unwrap();
        let i = der.len() / 2;
        der[i] ^= 1;
        assert!(verify_crl(&der, &issuers, None).is_err());
    }
}
