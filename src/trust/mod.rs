//! The trust-space material's state: the ANS whitelist (signature, age, last refusal), the
//! CRLs (nextUpdate), our certificate (expiry) and the downloads that keep them fresh.
//!
//! Why a module of its own: the whitelist and CRLs are loaded at start, on SIGHUP, by the
//! file watcher and by the downloader; `/readyz`, `/metrics` and the log must say the same
//! thing whichever path loaded them. Every loader reports here ([`load_whitelist`],
//! [`record_tls`], [`record_fetch`]); [`readiness`] applies the rules:
//!
//! * a whitelist file that is refused (unsigned, altered, wrong signer, stale) leaves the last
//!   good list in force and is *reported*, never failing readiness: refusing mail to the whole
//!   trust space because a download went wrong would be worse than the list's age;
//! * a list in force older than `whitelist.max_age` is reported, not failing;
//! * a CRL past its nextUpdate by more than `tls.crl_grace`, or our own certificate expired,
//!   fails readiness: peers would refuse us, or we would accept revoked peers.
//!
//! Must not import: policy (policy decides with the trust list), delivery, intake,
//! console, cli, admin.

pub mod fetch;
/// `tls probe`: a peer checked as delivery would (resolution, TLS, the whitelist's DN pin).
pub mod probe;
pub mod whitelist;
pub mod xmldsig;

use crate::config::{TlsConfig, WhitelistConfig};
use crate::trust::whitelist::{Acceptance, Whitelist, WhitelistError};
use crate::trust::xmldsig::{DsigError, SignerTrust};
use crate::util::clock::now_unix;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

/// The acceptance rules `[whitelist]` asks for (reads `signer_anchors`).
pub fn acceptance(w: &WhitelistConfig) -> Result<Acceptance, String> {
    let signers = match &w.signer_anchors {
        Some(a) => {
            let pem = std::fs::read(a)
                .map_err(|e| format!("whitelist.signer_anchors: {}: {e}", a.display()))?;
            let allowed = w.signer_dns.clone();
            Some(Arc::new(SignerTrust::from_pem(&pem, allowed).map_err(
                |e| format!("whitelist.signer_anchors: {}: {e}", a.display()),
            )?))
        }
        None => None,
    };
    Ok(Acceptance {
        require_signature: w.signature_required(),
        signers,
        max_age: w.effective_max_age(),
        max_size: Some(w.max_size),
    })
}

/// Short label of a refusal, for `passerelle_whitelist_refused_total{reason}`.
pub fn refusal_label(e: &WhitelistError) -> &'static str {
    match e {
        WhitelistError::Io { .. } => "unreadable",
        WhitelistError::Xml { .. } => "not_xml",
        WhitelistError::Bounds { .. } => "over_bounds",
        WhitelistError::MissingListeDomaines { .. } | WhitelistError::NoDomains { .. } => {
            "no_domains"
        }
        WhitelistError::Freshness { reason, .. } if reason.starts_with("stale") => "stale",
        WhitelistError::Freshness { .. } => "date",
        WhitelistError::Signature { err, .. } => match err {
            DsigError::Unsigned => "unsigned",
            DsigError::DigestMismatch => "altered",
            DsigError::BadSignature(_) => "bad_signature",
            DsigError::UntrustedSigner { .. } => "untrusted_signer",
            DsigError::SignerNotAllowed(_) => "signer_not_allowed",
            DsigError::SeveralSignatures(_) | DsigError::Unsupported(_) => "unsupported",
            DsigError::Malformed(_) => "malformed",
        },
    }
}

/// Loads `w.file` under the `[whitelist]` rules, logs and records the outcome. With
/// `previous` (the list in force), a file generated before it is refused too: a replayed old
/// list, still validly signed, must not undo a newer declaration.
pub fn load_whitelist(
    w: &WhitelistConfig,
    previous: Option<&Whitelist>,
) -> Result<Whitelist, WhitelistError> {
    let rules = acceptance(w).map_err(|reason| WhitelistError::Signature {
        file: w.file.display().to_string(),
        err: DsigError::Unsupported(reason),
    });
    let result = rules.and_then(|r| check_whitelist_file(&w.file, &r, previous, now_unix()));
    match &result {
        Ok(list) => whitelist_accepted(w, list),
        Err(e) => whitelist_refused(&w.file, e),
    }
    result
}

/// [`Whitelist::load_accepted`] plus the rollback rule of [`load_whitelist`]; pure but for
/// reading the file. Also what the downloader runs on a download before it replaces the file.
pub fn check_whitelist_file(
    path: &Path,
    rules: &Acceptance,
    previous: Option<&Whitelist>,
    now: i64,
) -> Result<Whitelist, WhitelistError> {
    let list = Whitelist::load_accepted(path, rules, now)?;
    not_older(&list, previous, &path.display().to_string())?;
    Ok(list)
}

/// Same as [`check_whitelist_file`] on bytes (a download).
pub fn check_whitelist_bytes(
    data: &[u8],
    source: &str,
    rules: &Acceptance,
    previous: Option<&Whitelist>,
    now: i64,
) -> Result<Whitelist, WhitelistError> {
    let text = std::str::from_utf8(data).map_err(|e| WhitelistError::Xml {
        file: source.to_string(),
        line: 1,
        column: 1,
        message: format!("not UTF-8: {e}"),
    })?;
    let list = Whitelist::parse_accepted(text, source, rules, now)?;
    not_older(&list, previous, source)?;
    Ok(list)
}

fn not_older(
    list: &Whitelist,
    previous: Option<&Whitelist>,
    source: &str,
) -> Result<(), WhitelistError> {
    if let (Some(new), Some(old)) = (
        list.generated_unix(),
        previous.and_then(Whitelist::generated_unix),
    ) {
        if new < old {
            return Err(WhitelistError::Freshness {
                file: source.to_string(),
                reason: format!(
                    "generated {} is older than the list in force ({}): an old list replayed?",
                    list.generated().unwrap_or("?"),
                    previous.and_then(Whitelist::generated).unwrap_or("?")
                ),
            });
        }
    }
    Ok(())
}

fn whitelist_accepted(w: &WhitelistConfig, list: &Whitelist) {
    let path = &w.file;
    for warn in list.warnings().iter().take(20) {
        tracing::warn!(file = %path.display(), "whitelist: {warn}");
    }
    match list.signer() {
        Some(s) => {
            tracing::info!(file = %path.display(), domains = list.domain_count(), entries = list.entry_count(),
            generated = list.generated().unwrap_or("-"), signer = %s, "whitelist loaded, signature verified")
        }
        None => {
            tracing::info!(file = %path.display(), domains = list.domain_count(), entries = list.entry_count(),
            generated = list.generated().unwrap_or("-"), "whitelist loaded (signature not required)")
        }
    }
    crate::metrics::gauge_set(
        "passerelle_whitelist_domains",
        "domains in the loaded ANS whitelist",
        &[],
        list.domain_count() as f64,
    );
    crate::metrics::gauge_set(
        "passerelle_whitelist_loaded_timestamp_seconds",
        "when the whitelist in force was loaded (Unix time)",
        &[],
        now_unix() as f64,
    );
    if let Some(g) = list.generated_unix() {
        crate::metrics::gauge_set(
            "passerelle_whitelist_generated_timestamp_seconds",
            "DateDeGeneration of the whitelist in force (Unix time)",
            &[],
            g as f64,
        );
    }
    crate::metrics::gauge_set(
        "passerelle_whitelist_signature_verified",
        "1 when the whitelist in force had its ANS signature verified",
        &[],
        if list.signer().is_some() { 1.0 } else { 0.0 },
    );
    with(|s| {
        s.whitelist = Some(WhitelistState {
            file: path.clone(),
            domains: list.domain_count(),
            generated: list.generated().map(str::to_string),
            generated_unix: list.generated_unix(),
            signer: list.signer().map(str::to_string),
            max_age: w.effective_max_age(),
            loaded_unix: now_unix(),
        });
        s.whitelist_refused = None;
    });
}

/// Records a refused whitelist file (log, metric, `/readyz` detail). Public for the
/// downloader, whose refusals happen before any file is written.
pub fn whitelist_refused(path: &Path, e: &WhitelistError) {
    let label = refusal_label(e);
    crate::metrics::inc(
        "passerelle_whitelist_refused_total",
        "whitelist files refused (the last good list stays in force), by reason",
        &[("reason", label)],
    );
    crate::metrics::gauge_set(
        "passerelle_whitelist_last_refusal_timestamp_seconds",
        "when a whitelist file was last refused (Unix time)",
        &[],
        now_unix() as f64,
    );
    let kept = with(|s| s.whitelist.as_ref().map(|w| w.domains));
    match kept {
        Some(n) => tracing::error!(file = %path.display(), reason = label,
            "whitelist refused: {e}; keeping the last good whitelist ({n} domains)"),
        None => tracing::error!(file = %path.display(), reason = label, "whitelist refused: {e}"),
    }
    with(|s| s.whitelist_refused = Some((now_unix(), e.to_string())));
}

/// Records our certificate's expiry from freshly loaded `[tls]` material, and the CRL grace.
pub fn record_tls(cfg: &TlsConfig, m: &crate::tls::TlsMaterial) {
    let cert_not_after = m.chain.first().and_then(|c| {
        x509_parser::parse_x509_certificate(c.as_ref())
            .ok()
            .map(|(_, x)| x.validity().not_after.timestamp())
    });
    with(|s| {
        s.cert_not_after = cert_not_after;
        s.crl_grace = cfg.crl_grace;
    });
}

/// Records each CRL's nextUpdate from the CRLs now in force.
pub fn record_crls(set: &crate::tls::CrlSet) {
    let mut crls = Vec::new();
    for (path, list) in set.files() {
        let next = list
            .iter()
            .filter_map(|c| crate::tls::crl_next_update(c.as_ref()))
            .min();
        if let Some(n) = next {
            crate::metrics::gauge_set(
                "passerelle_crl_next_update_timestamp_seconds",
                "nextUpdate of each CRL in force (Unix time)",
                &[("file", &path.display().to_string())],
                n as f64,
            );
        }
        crls.push((path.clone(), next));
    }
    with(|s| s.crls = crls);
}

/// Outcome of one download attempt, recorded by the downloader for `/readyz` and metrics.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FetchRecord {
    /// A new version was verified and installed.
    Updated,
    /// The server said 304 Not Modified (or sent the same bytes).
    Unchanged,
    Failed(String),
}

/// Records a download attempt of `url` (`what`: "whitelist" or "crl").
pub fn record_fetch(what: &'static str, url: &str, r: &FetchRecord) {
    let now = now_unix();
    let labels = [("what", what), ("url", url)];
    match r {
        FetchRecord::Updated | FetchRecord::Unchanged => {
            crate::metrics::gauge_set(
                "passerelle_fetch_last_success_timestamp_seconds",
                "last successful download (or 304) of a trust-space file (Unix time)",
                &labels,
                now as f64,
            );
            if *r == FetchRecord::Updated {
                crate::metrics::gauge_set(
                    "passerelle_fetch_last_update_timestamp_seconds",
                    "last time a download replaced a trust-space file (Unix time)",
                    &labels,
                    now as f64,
                );
            }
        }
        FetchRecord::Failed(e) => {
            crate::metrics::inc(
                "passerelle_fetch_failures_total",
                "failed downloads of trust-space files (after retries)",
                &labels,
            );
            tracing::warn!(what, url, "download failed: {e}");
        }
    }
    with(|s| {
        let f = s.fetches.entry(url.to_string()).or_default();
        f.what = what;
        f.last_attempt = now;
        match r {
            FetchRecord::Updated | FetchRecord::Unchanged => {
                f.last_success = Some(now);
                f.last_error = None;
            }
            FetchRecord::Failed(e) => f.last_error = Some(e.clone()),
        }
    });
}

/// What `/readyz` says: `ready` false only for the failing rules; `lines` explain each part.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Readiness {
    pub ready: bool,
    /// Failing conditions, one line each.
    pub problems: Vec<String>,
    /// Reported conditions (stale or refused whitelist, failing downloads) and plain state.
    pub notes: Vec<String>,
}

impl Readiness {
    /// The body `/readyz` returns after its own first line.
    pub fn render(&self) -> String {
        let mut out = String::new();
        for p in &self.problems {
            out.push_str("not ready: ");
            out.push_str(p);
            out.push('\n');
        }
        for n in &self.notes {
            out.push_str(n);
            out.push('\n');
        }
        out
    }
}

/// Applies the readiness rules at `now` (Unix seconds) and refreshes the age gauges.
pub fn readiness(now: i64) -> Readiness {
    let st = with(|s| s.clone());
    evaluate(&st, now)
}

fn evaluate(st: &State, now: i64) -> Readiness {
    let mut r = Readiness {
        ready: true,
        problems: Vec::new(),
        notes: Vec::new(),
    };
    if let Some(na) = st.cert_not_after {
        if na <= now {
            r.ready = false;
            r.problems.push(format!(
                "our certificate (tls.certificate) expired {} ago",
                crate::trust::whitelist::human_age(now - na)
            ));
        } else {
            r.notes.push(format!(
                "certificate: expires in {}",
                crate::trust::whitelist::human_age(na - now)
            ));
        }
    }
    let grace = st.crl_grace.as_secs() as i64;
    for (path, next) in &st.crls {
        match next {
            Some(n) if now > n + grace => {
                r.ready = false;
                r.problems.push(format!(
                    "CRL {} is past its nextUpdate by {} (grace tls.crl_grace {})",
                    path.display(),
                    crate::trust::whitelist::human_age(now - n),
                    humantime::format_duration(st.crl_grace)
                ));
            }
            Some(n) if now > *n => r.notes.push(format!(
                "crl {}: past its nextUpdate by {}, within tls.crl_grace",
                path.display(),
                crate::trust::whitelist::human_age(now - n)
            )),
            Some(n) => r.notes.push(format!(
                "crl {}: next update in {}",
                path.display(),
                crate::trust::whitelist::human_age(n - now)
            )),
            None => r
                .notes
                .push(format!("crl {}: no nextUpdate", path.display())),
        }
    }
    if let Some(w) = &st.whitelist {
        let age = w.generated_unix.map(|g| now - g);
        if let Some(a) = age {
            crate::metrics::gauge_set(
                "passerelle_whitelist_age_seconds",
                "age of the whitelist in force, from its DateDeGeneration",
                &[],
                a as f64,
            );
        }
        let signed = match &w.signer {
            Some(s) => format!("signed by {s}"),
            None => "signature not checked".into(),
        };
        let stale = matches!((age, w.max_age), (Some(a), Some(m)) if a > m.as_secs() as i64);
        r.notes.push(format!(
            "whitelist{}: {} domains from {}, generated {}{}, {signed}, loaded {} ago",
            if stale { " STALE" } else { "" },
            w.domains,
            w.file.display(),
            w.generated.as_deref().unwrap_or("?"),
            age.map(|a| format!(" ({} ago)", crate::trust::whitelist::human_age(a)))
                .unwrap_or_default(),
            crate::trust::whitelist::human_age(now - w.loaded_unix),
        ));
    }
    if let Some((at, why)) = &st.whitelist_refused {
        r.notes.push(format!(
            "whitelist REFUSED {} ago, last good list kept: {why}",
            crate::trust::whitelist::human_age(now - at)
        ));
    }
    for (url, f) in &st.fetches {
        if let Some(ok) = f.last_success {
            crate::metrics::gauge_set(
                "passerelle_fetch_age_seconds",
                "time since the last successful download (or 304) of a trust-space file",
                &[("what", f.what), ("url", url)],
                (now - ok) as f64,
            );
        }
        match (&f.last_error, f.last_success) {
            (Some(e), Some(ok)) => r.notes.push(format!(
                "fetch {} {url}: FAILING ({e}); last success {} ago",
                f.what,
                crate::trust::whitelist::human_age(now - ok)
            )),
            (Some(e), None) => r.notes.push(format!(
                "fetch {} {url}: FAILING ({e}); never succeeded",
                f.what
            )),
            (None, Some(ok)) => r.notes.push(format!(
                "fetch {} {url}: ok {} ago",
                f.what,
                crate::trust::whitelist::human_age(now - ok)
            )),
            (None, None) => {}
        }
    }
    r
}

#[derive(Debug, Clone)]
struct WhitelistState {
    file: PathBuf,
    domains: usize,
    generated: Option<String>,
    generated_unix: Option<i64>,
    signer: Option<String>,
    max_age: Option<Duration>,
    loaded_unix: i64,
}

#[derive(Debug, Clone, Default)]
struct FetchState {
    what: &'static str,
    last_attempt: i64,
    last_success: Option<i64>,
    last_error: Option<String>,
}

#[derive(Debug, Clone, Default)]
struct State {
    whitelist: Option<WhitelistState>,
    whitelist_refused: Option<(i64, String)>,
    cert_not_after: Option<i64>,
    crls: Vec<(PathBuf, Option<i64>)>,
    crl_grace: Duration,
    fetches: BTreeMap<String, FetchState>,
}

fn with<R>(f: impl FnOnce(&mut State) -> R) -> R {
    static S: OnceLock<Mutex<State>> = OnceLock::new();
    let m = S.get_or_init(|| Mutex::new(State::default()));
    let mut g = m.lock().unwrap_or_else(|p| p.into_inner());
    f(&mut g)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn state() -> State {
        State {
            whitelist: Some(WhitelistState {
                file: PathBuf::from("wl.xml"),
                domains: 4944,
                generated: Some("2025-02-28T15:42:07Z".into()),
                generated_unix: Some(1_000_000),
                signer: Some("CN=alb.mssante.fr".into()),
                max_age: Some(Duration::from_secs(7 * 86400)),
                loaded_unix: 1_000_000,
            }),
            cert_not_after: Some(2_000_000),
            crls: vec![(PathBuf::from("a.crl"), Some(1_500_000))],
            crl_grace: Duration::from_secs(86400),
            ..State::default()
        }
    }

    #[test]
    fn readiness_rules() {
        // Everything fresh.
        let r = evaluate(&state(), 1_000_100);
        assert!(r.ready, "{r:?}");
        assert!(
            r.notes
                .iter()
                .any(|n| n.starts_with("whitelist: 4944 domains")),
            "{r:?}"
        );

        // Stale whitelist and a refused file: reported, still ready.
        let mut s = state();
        s.crls.clear();
        s.whitelist_refused = Some((1_000_000 + 8 * 86400, "wl.xml: refused: unsigned".into()));
        let r = evaluate(&s, 1_000_000 + 8 * 86400 + 60);
        assert!(r.ready, "{r:?}");
        let text = r.render();
        assert!(text.contains("whitelist STALE: 4944 domains"), "{text}");
        assert!(
            text.contains(
                "whitelist REFUSED 1 minute ago, last good list kept: wl.xml: refused: unsigned"
            ),
            "{text}"
        );

        // A CRL past nextUpdate: within the grace, reported; beyond, not ready.
        let r = evaluate(&state(), 1_500_000 + 3600);
        assert!(r.ready, "{r:?}");
        let r = evaluate(&state(), 1_500_000 + 86400 + 1);
        assert!(!r.ready);
        assert!(
            r.problems[0].starts_with("CRL a.crl is past its nextUpdate by 24 hours"),
            "{r:?}"
        );

        // Our certificate expired.
        let mut s = state();
        s.crls.clear();
        let r = evaluate(&s, 2_000_001);
        assert!(!r.ready);
        assert!(
            r.render()
                .starts_with("not ready: our certificate (tls.certificate) expired"),
            "{}",
            r.render()
        );
    }
}
