//! `passerelle directory sync`: keeps the establishment's LDAP in step with the national
//! extract by delta. Instead of re-importing half a million entries every day, it reads what
//! is under the base, compares it with the extract through the same mapping as `directory
//! import` ([`crate::directory::ldif::map_entry`]), and writes only the differences.
//!
//! Safe by construction:
//! - the extract must load (zip CRCs, 31-column header) and hold a minimum of entries;
//! - the deletions are bounded ([`delta::deletion_limit`]): a truncated or empty extract is
//!   refused, nothing written, unless forced;
//! - every operation stands alone and the delta is recomputed each run, so a second run
//!   changes nothing and a killed run is finished by the next one.
//!
//! Run from the command line (a systemd timer in `deploy/systemd`) or by the gateway itself
//! with `[directory.sync]` ([`spawn_scheduled`]).

pub mod delta;
mod schedule;
mod settings;
pub mod source;
pub mod target;

pub use schedule::{run_scheduled_once, spawn_scheduled};
pub use settings::{SyncArgs, SyncConfig};

use crate::config::TlsConfig;
use source::Source;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};
use target::Target;

/// Entries shown per kind by `--dry-run`.
const SAMPLES: usize = 5;

/// Everything one run needs, resolved (password read, TLS built).
#[derive(Debug, Clone)]
pub struct SyncOptions {
    pub source: Source,
    pub target: Target,
    pub min_entries: usize,
    /// `max_size`: the extract's bound, checked before it is read.
    pub max_size: u64,
    pub max_delete: f64,
    pub force: bool,
    pub dry_run: bool,
}

impl SyncOptions {
    /// From the settings, the `[tls]` section (its trust anchors and CRLs verify the LDAP
    /// server unless `ca` is set), reading the password file now.
    pub fn new(s: &SyncConfig, tls: Option<&TlsConfig>) -> Result<SyncOptions, SyncError> {
        let source = match (&s.file, &s.url) {
            (Some(f), _) => Source::File(f.clone()),
            (None, Some(u)) => Source::Url(u.clone()),
            (None, None) => {
                return Err(SyncError::Setup(
                    "directory sync: no extract (file or url)".into(),
                ))
            }
        };
        let bind_password = match &s.bind_password_file {
            Some(p) => Some(read_password(p)?),
            None => None,
        };
        let wants_tls = s.starttls || s.ldap.starts_with("ldaps://");
        let tls = if wants_tls {
            Some(ldap_tls(s.ca.as_deref(), tls)?)
        } else {
            None
        };
        Ok(SyncOptions {
            source,
            target: Target {
                url: s.ldap.clone(),
                base: s.base.clone(),
                bind_dn: s.bind_dn.clone(),
                bind_password,
                starttls: s.starttls,
                tls,
                timeout: s.timeout,
                connections: s.connections.max(1),
                transactions: s.transactions,
            },
            min_entries: s.min_entries,
            max_size: s.max_size,
            max_delete: s.max_delete,
            force: false,
            dry_run: false,
        })
    }
}

fn read_password(p: &Path) -> Result<String, SyncError> {
    let text = std::fs::read_to_string(p).map_err(|e| {
        SyncError::Setup(format!(
            "bind password file {}: cannot read: {e}",
            p.display()
        ))
    })?;
    Ok(text.lines().next().unwrap_or("").to_string())
}

/// The rustls client config verifying the LDAP server: against `ca` when given, else against
/// `[tls].trust_anchors` and its CRLs, as the gateway's own LDAP lookups do.
fn ldap_tls(
    ca: Option<&Path>,
    tls: Option<&TlsConfig>,
) -> Result<Arc<rustls::ClientConfig>, SyncError> {
    let setup = |e: String| SyncError::Setup(format!("directory sync TLS: {e}"));
    let verifier: Arc<dyn rustls::client::danger::ServerCertVerifier> = match (ca, tls) {
        (Some(ca), _) => {
            let mut roots = rustls::RootCertStore::empty();
            for c in
                crate::tls::load_certs("directory.sync.ca", ca).map_err(|e| setup(e.to_string()))?
            {
                roots
                    .add(c)
                    .map_err(|e| setup(format!("{}: {e}", ca.display())))?;
            }
            rustls::client::WebPkiServerVerifier::builder_with_provider(
                Arc::new(roots),
                crate::tls::provider(),
            )
            .build()
            .map_err(|e| setup(e.to_string()))?
        }
        (None, Some(t)) => crate::tls::TlsMaterial::load(t)
            .and_then(|m| {
                m.webpki_server_verifier(&crate::tls::CrlSet::load_capped(
                    &t.crls,
                    t.crl_max_size,
                    None,
                )?)
            })
            .map_err(|e| setup(e.to_string()))?,
        (None, None) => {
            return Err(setup(
                "StartTLS/ldaps needs --ca FILE or [tls].trust_anchors to verify the server".into(),
            ))
        }
    };
    crate::directory::ldap::tls_client_config(verifier).map_err(|e| setup(e.to_string()))
}

#[derive(Debug, thiserror::Error)]
pub enum SyncError {
    #[error("{0}")]
    Setup(String),
    #[error(transparent)]
    Source(#[from] source::SourceError),
    #[error("{0}; nothing was written")]
    Unreachable(String),
    #[error("refused: it would delete {deletes} of {existing} entries, more than {percent}% (at most {limit}): is the extract truncated? nothing was written (--force to apply anyway)")]
    Refused {
        deletes: usize,
        existing: usize,
        limit: usize,
        percent: f64,
        summary: Box<Summary>,
    },
    #[error("stopped: {why} ({} operations refused); run it again once fixed", summary.failed)]
    Incomplete { why: String, summary: Box<Summary> },
}

impl SyncError {
    /// The counts so far, when the run got as far as computing them.
    pub fn summary(&self) -> Option<&Summary> {
        match self {
            SyncError::Refused { summary, .. } | SyncError::Incomplete { summary, .. } => {
                Some(summary)
            }
            _ => None,
        }
    }

    fn metric_result(&self) -> &'static str {
        match self {
            SyncError::Refused { .. } => "refused",
            _ => "failed",
        }
    }
}

/// What a run did (or, dry, would do).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Summary {
    pub added: usize,
    pub modified: usize,
    pub deleted: usize,
    pub unchanged: usize,
    /// Operations the server refused.
    pub failed: usize,
    /// Entries under the base left alone (not `mail=` entries).
    pub foreign: usize,
    /// Lines of the extract skipped as malformed.
    pub bad_lines: usize,
    pub dry_run: bool,
    /// Refused by the bound: the counts are what the run would have done.
    pub refused: bool,
    pub duration: Duration,
    /// `--dry-run`: a few entries of each kind, one line each; otherwise the first refusals.
    pub details: Vec<String>,
}

impl std::fmt::Display for Summary {
    /// `added N, modified N, deleted N, unchanged N` (the contract's words), then the rest.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "added {}, modified {}, deleted {}, unchanged {}",
            self.added, self.modified, self.deleted, self.unchanged
        )?;
        if self.failed > 0 {
            write!(f, ", failed {}", self.failed)?;
        }
        write!(f, " in {:.1}s", self.duration.as_secs_f64())?;
        if self.refused {
            write!(f, " (refused: nothing written)")?;
        } else if self.dry_run {
            write!(f, " (dry run: nothing written)")?;
        }
        Ok(())
    }
}

/// A progress bar on a terminal; nothing otherwise (logs, timers, the gateway).
pub struct Progress {
    bar: Option<indicatif::ProgressBar>,
}

impl Progress {
    pub fn hidden() -> Progress {
        Progress { bar: None }
    }

    /// A bar on stderr when it is a terminal.
    pub fn on_terminal() -> Progress {
        if !std::io::IsTerminal::is_terminal(&std::io::stderr()) {
            return Progress::hidden();
        }
        Progress {
            bar: Some(indicatif::ProgressBar::new_spinner()),
        }
    }

    fn phase(&self, what: &str, total: Option<u64>) {
        let Some(b) = &self.bar else { return };
        b.reset();
        let style = match total {
            Some(n) => {
                b.set_length(n);
                indicatif::ProgressStyle::with_template(
                    "{msg:24} [{bar:40}] {pos}/{len} {per_sec} eta {eta}",
                )
            }
            None => {
                b.unset_length();
                indicatif::ProgressStyle::with_template("{spinner} {msg:24} {pos} {per_sec}")
            }
        };
        if let Ok(s) = style {
            b.set_style(s.progress_chars("=> "));
        }
        b.set_message(what.to_string());
        b.enable_steady_tick(Duration::from_millis(200));
    }

    fn inc(&self, n: u64) {
        if let Some(b) = &self.bar {
            b.inc(n);
        }
    }

    fn clear(&self) {
        if let Some(b) = &self.bar {
            b.finish_and_clear();
        }
    }
}

/// One sync: load and check the extract, read the LDAP, plan, bound, apply.
pub async fn run(opts: &SyncOptions, progress: &Progress) -> Result<Summary, SyncError> {
    let r = run_inner(opts, progress).await;
    progress.clear();
    r
}

async fn run_inner(opts: &SyncOptions, progress: &Progress) -> Result<Summary, SyncError> {
    let started = Instant::now();
    progress.phase("reading the extract", None);
    let (src, min, max) = (opts.source.clone(), opts.min_entries, opts.max_size);
    let loaded = tokio::task::spawn_blocking(move || source::load(&src, min, max))
        .await
        .map_err(|e| SyncError::Setup(format!("loading the extract: {e}")))??;
    for (line, why) in loaded.report.bad_lines.iter().take(20) {
        tracing::warn!(source = %opts.source, line, "directory sync: extract line skipped: {why}");
    }
    let extract = &loaded.extract;
    tracing::debug!(entries = extract.group_count(), elapsed = ?started.elapsed(), "directory sync: extract loaded");

    let t = &opts.target;
    let mut ldap = t.connect().await.map_err(SyncError::Unreachable)?;
    let exists = t
        .base_exists(&mut ldap)
        .await
        .map_err(SyncError::Unreachable)?;
    let mut planner = delta::Planner::new(extract);
    if exists {
        progress.phase("reading the LDAP", None);
        t.read(&mut ldap, &mut planner, progress)
            .await
            .map_err(SyncError::Unreachable)?;
    }
    let plan = planner.finish();
    tracing::debug!(existing = plan.existing, elapsed = ?started.elapsed(), "directory sync: LDAP read");
    let mut summary = Summary {
        added: plan.adds.len(),
        modified: plan.modifies.len(),
        deleted: plan.deletes.len(),
        unchanged: plan.unchanged,
        foreign: plan.foreign,
        bad_lines: loaded.report.bad_lines.len(),
        dry_run: opts.dry_run,
        ..Summary::default()
    };
    if opts.dry_run {
        summary.details = samples(&plan, extract, &t.base, exists);
    }
    let limit = delta::deletion_limit(plan.existing, plan.desired, opts.max_delete);
    if plan.deletes.len() > limit && !opts.force {
        summary.duration = started.elapsed();
        summary.refused = true;
        return Err(SyncError::Refused {
            deletes: plan.deletes.len(),
            existing: plan.existing,
            limit,
            percent: opts.max_delete,
            summary: Box::new(summary),
        });
    }
    if opts.dry_run || plan.is_empty() {
        summary.duration = started.elapsed();
        return Ok(summary);
    }

    if !exists {
        t.create_base(&mut ldap)
            .await
            .map_err(SyncError::Unreachable)?;
    }
    let mut conns = vec![ldap];
    while conns.len() < t.connections {
        match t.connect().await {
            Ok(c) => conns.push(c),
            Err(e) => {
                tracing::warn!("directory sync: one connection fewer: {e}");
                break;
            }
        }
    }
    let total = plan.adds.len() + plan.modifies.len() + plan.deletes.len();
    progress.phase("writing to the LDAP", Some(total as u64));
    let applied = target::apply(t, &conns, &plan, extract, progress).await;
    for mut c in conns {
        let _ = c.unbind().await;
    }
    summary.added = applied.added;
    summary.modified = applied.modified;
    summary.deleted = applied.deleted;
    summary.failed = applied.failures.len();
    summary.details = applied.failures;
    summary.duration = started.elapsed();
    match applied.aborted {
        Some(why) => Err(SyncError::Incomplete {
            why,
            summary: Box::new(summary),
        }),
        None if summary.failed > 0 => Err(SyncError::Incomplete {
            why: "some operations were refused".into(),
            summary: Box::new(summary),
        }),
        None => Ok(summary),
    }
}

/// `--dry-run` lines: a few entries of each kind.
fn samples(
    plan: &delta::Plan,
    extract: &crate::directory::extract::Extract,
    base: &str,
    base_exists: bool,
) -> Vec<String> {
    let mut out = Vec::new();
    if !base_exists {
        out.push(format!("would create {base}"));
    }
    for &i in plan.adds.iter().take(SAMPLES) {
        let lines = extract.group(i);
        if !lines.is_empty() {
            let m = crate::directory::ldif::map_entry(&lines);
            out.push(format!("add {}", m.dn(base)));
        }
    }
    for m in plan.modifies.iter().take(SAMPLES) {
        let attrs: Vec<&str> = m.changes.iter().map(|(a, _)| *a).collect();
        out.push(format!("modify {} ({})", m.dn, attrs.join(", ")));
    }
    for dn in plan.deletes.iter().take(SAMPLES) {
        out.push(format!("delete {dn}"));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn summary_line() {
        let s = Summary {
            added: 1,
            modified: 2,
            deleted: 3,
            unchanged: 4,
            duration: Duration::from_millis(1500),
            ..Summary::default()
        };
        assert_eq!(
            s.to_string(),
            "added 1, modified 2, deleted 3, unchanged 4 in 1.5s"
        );
    }
}
