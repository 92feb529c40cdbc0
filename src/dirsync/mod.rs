//! `passerelle directory sync`: keeps the establishment's LDAP in step with the national
//! extract by delta. Instead of re-importing half a million entries every day, it reads what
//! is under the base, compares it with the extract through the same mapping as `directory
//! import` ([`crate::policy::ldif::map_entry`]), and writes only the differences.
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
pub mod source;
pub mod target;

use crate::config::{parse_duration, Config, TlsConfig};
use serde::{Deserialize, Deserializer};
use source::Source;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};
use target::Target;

/// Entries shown per kind by `--dry-run`.
const SAMPLES: usize = 5;

/// `[directory.sync]`: the gateway runs the sync every `every`; the command line reads the
/// same keys as its defaults.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct SyncConfig {
    /// The extract: the ANS zip or `.txt` on disk ...
    #[serde(default)]
    pub file: Option<PathBuf>,
    /// ... or downloaded from here.
    #[serde(default)]
    pub url: Option<String>,
    /// `ldap://host:port` or `ldaps://host:port`.
    pub ldap: String,
    /// Container of the national directory, e.g. `ou=mssante,dc=annuaire,dc=mssante,dc=fr`.
    pub base: String,
    #[serde(default)]
    pub bind_dn: Option<String>,
    /// The bind password, on the file's first line (kept out of the config file).
    #[serde(default)]
    pub bind_password_file: Option<PathBuf>,
    /// StartTLS on an `ldap://` URL.
    #[serde(default)]
    pub starttls: bool,
    /// CA certificates (PEM) for StartTLS/ldaps; default `[tls].trust_anchors`.
    #[serde(default)]
    pub ca: Option<PathBuf>,
    #[serde(default = "default_every", deserialize_with = "de_duration")]
    pub every: Duration,
    /// Percent: refuse a run deleting more (see [`delta::deletion_limit`]).
    #[serde(default = "default_max_delete")]
    pub max_delete: f64,
    /// Refuse an extract with fewer entries (the national one has ≈ 535,000).
    #[serde(default = "default_min_entries")]
    pub min_entries: usize,
    #[serde(default = "default_connections")]
    pub connections: usize,
    /// One LDAP transaction per batch (see [`target::Target::transactions`]).
    #[serde(default)]
    pub transactions: bool,
    /// Connect and per-operation timeout.
    #[serde(default = "default_timeout", deserialize_with = "de_duration")]
    pub timeout: Duration,
}

fn default_every() -> Duration {
    Duration::from_secs(24 * 3600)
}
fn default_max_delete() -> f64 {
    5.0
}
fn default_min_entries() -> usize {
    1000
}
fn default_connections() -> usize {
    4
}
fn default_timeout() -> Duration {
    Duration::from_secs(30)
}

fn de_duration<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    let s = String::deserialize(d)?;
    parse_duration(&s).map_err(serde::de::Error::custom)
}

impl SyncConfig {
    /// Problems, one per line naming the key (`check-config` style).
    pub fn validate(&self, trust_anchors: bool) -> Vec<String> {
        let k = "directory.sync";
        let mut p = Vec::new();
        match (&self.file, &self.url) {
            (None, None) => p.push(format!("{k}: file or url: one is required")),
            (Some(_), Some(_)) => p.push(format!("{k}: file and url: give only one")),
            (_, Some(u)) if !(u.starts_with("https://") || u.starts_with("http://")) => {
                p.push(format!("{k}.url: {u:?} is not an http:// or https:// URL"))
            }
            _ => {}
        }
        let tls_url = self.ldap.starts_with("ldaps://");
        if !(tls_url || self.ldap.starts_with("ldap://")) {
            p.push(format!(
                "{k}.ldap: {:?} is not an ldap:// or ldaps:// URL",
                self.ldap
            ));
        }
        if self.base.trim().is_empty() {
            p.push(format!("{k}.base: must not be empty"));
        }
        if self.bind_dn.is_some() != self.bind_password_file.is_some() {
            p.push(format!(
                "{k}.bind_dn, bind_password_file: give both, or neither (anonymous)"
            ));
        }
        if self.starttls && tls_url {
            p.push(format!("{k}.starttls: not with an ldaps:// URL"));
        }
        if (self.starttls || tls_url) && self.ca.is_none() && !trust_anchors {
            p.push(format!(
                "{k}.ca: needed (or tls.trust_anchors) to verify the LDAP server"
            ));
        }
        if self.every < Duration::from_secs(60) {
            p.push(format!("{k}.every: at least 1m"));
        }
        if !(0.0..=100.0).contains(&self.max_delete) {
            p.push(format!("{k}.max_delete: a percentage, 0 to 100"));
        }
        if !(1..=64).contains(&self.connections) {
            p.push(format!("{k}.connections: 1 to 64"));
        }
        p
    }
}

/// The command line: each option overrides the `[directory.sync]` key of the same meaning.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct SyncArgs {
    /// The extract: the ANS zip or Extraction_Correspondance_MSSante_*.txt.
    #[arg(long, conflicts_with = "url")]
    pub file: Option<PathBuf>,
    /// Download the extract from here (checked before use).
    #[arg(long)]
    pub url: Option<String>,
    /// ldap://host:port or ldaps://host:port.
    #[arg(long)]
    pub ldap: Option<String>,
    /// The container of the national directory (as given to `directory import --base`).
    #[arg(long)]
    pub base: Option<String>,
    #[arg(long)]
    pub bind_dn: Option<String>,
    /// File whose first line is the bind password.
    #[arg(long)]
    pub bind_password_file: Option<PathBuf>,
    /// StartTLS on an ldap:// URL (verified, like ldaps://).
    #[arg(long)]
    pub starttls: bool,
    /// CA certificates (PEM) to verify the LDAP server (default: [tls].trust_anchors).
    #[arg(long)]
    pub ca: Option<PathBuf>,
    /// Print the counts and a sample of each change; write nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Refuse when more than PERCENT of the entries would be deleted (default 5).
    #[arg(long, value_name = "PERCENT")]
    pub max_delete: Option<f64>,
    /// Apply even beyond --max-delete.
    #[arg(long)]
    pub force: bool,
    /// Refuse an extract with fewer entries (default 1000).
    #[arg(long)]
    pub min_entries: Option<usize>,
    /// LDAP connections used to write (default 4).
    #[arg(long)]
    pub connections: Option<usize>,
    /// One LDAP transaction per batch of 500 (RFC 5805): ~20x faster on a server that syncs
    /// every write, but OpenLDAP 2.5.13 crashed in 2 of 12 such runs killed mid-way.
    #[arg(long)]
    pub transactions: bool,
}

impl SyncArgs {
    /// The settings: `[directory.sync]` of `config` (when there is one) overridden by the
    /// options given. Errors name what is missing or wrong.
    pub fn resolve(&self, config: Option<&Config>) -> Result<SyncConfig, String> {
        let from_file = config.and_then(|c| c.directory.sync.clone());
        let missing = |what: &str| {
            format!("directory sync: {what} is required (or [directory.sync] in the config)")
        };
        let mut s = match from_file {
            Some(s) => s,
            None => SyncConfig {
                file: None,
                url: None,
                ldap: self.ldap.clone().ok_or_else(|| missing("--ldap"))?,
                base: self.base.clone().ok_or_else(|| missing("--base"))?,
                bind_dn: None,
                bind_password_file: None,
                starttls: false,
                ca: None,
                every: default_every(),
                max_delete: default_max_delete(),
                min_entries: default_min_entries(),
                connections: default_connections(),
                transactions: false,
                timeout: default_timeout(),
            },
        };
        if self.file.is_some() || self.url.is_some() {
            s.file = self.file.clone();
            s.url = self.url.clone();
        }
        if let Some(v) = &self.ldap {
            s.ldap = v.clone();
        }
        if let Some(v) = &self.base {
            s.base = v.clone();
        }
        if self.bind_dn.is_some() || self.bind_password_file.is_some() {
            s.bind_dn = self.bind_dn.clone();
            s.bind_password_file = self.bind_password_file.clone();
        }
        s.starttls |= self.starttls;
        if self.ca.is_some() {
            s.ca = self.ca.clone();
        }
        if let Some(v) = self.max_delete {
            s.max_delete = v;
        }
        if let Some(v) = self.min_entries {
            s.min_entries = v;
        }
        if let Some(v) = self.connections {
            s.connections = v;
        }
        s.transactions |= self.transactions;
        if s.file.is_none() && s.url.is_none() {
            return Err(missing("--file or --url"));
        }
        let trust = config
            .and_then(|c| c.tls.as_ref())
            .is_some_and(|t| t.trust_anchors.is_some());
        let problems: Vec<String> = s
            .validate(trust)
            .into_iter()
            // `every` only matters to the gateway.
            .filter(|p| !p.starts_with("directory.sync.every"))
            .collect();
        if !problems.is_empty() {
            return Err(problems.join("\n"));
        }
        Ok(s)
    }
}

/// Everything one run needs, resolved (password read, TLS built).
#[derive(Debug, Clone)]
pub struct SyncOptions {
    pub source: Source,
    pub target: Target,
    pub min_entries: usize,
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
            .and_then(|m| m.webpki_server_verifier())
            .map_err(|e| setup(e.to_string()))?,
        (None, None) => {
            return Err(setup(
                "StartTLS/ldaps needs --ca FILE or [tls].trust_anchors to verify the server".into(),
            ))
        }
    };
    crate::policy::ldap::tls_client_config(verifier).map_err(|e| setup(e.to_string()))
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
    let (src, min) = (opts.source.clone(), opts.min_entries);
    let loaded = tokio::task::spawn_blocking(move || source::load(&src, min))
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
    extract: &crate::policy::extract::Extract,
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
            let m = crate::policy::ldif::map_entry(&lines);
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

/// The gateway's periodic sync, if `[directory.sync]` is configured: a first run at start,
/// then one every `every`. Each run's outcome goes to the log and to the metrics
/// `passerelle_directory_sync_*`; a refused or failed run changes nothing else and the next
/// one tries again. Abort the handle to stop it (shutdown, or a reload that changes the
/// section: spawn a new one).
pub fn spawn_scheduled(cfg: &Config) -> Option<tokio::task::JoinHandle<()>> {
    let sc = cfg.directory.sync.clone()?;
    let tls = cfg.tls.clone();
    tracing::info!(ldap = %sc.ldap, base = %sc.base, every = ?sc.every, "directory sync scheduled");
    Some(tokio::spawn(async move {
        loop {
            run_scheduled_once(&sc, tls.as_ref()).await;
            tokio::time::sleep(sc.every).await;
        }
    }))
}

/// One scheduled run, reported to the log and the metrics.
pub async fn run_scheduled_once(sc: &SyncConfig, tls: Option<&TlsConfig>) -> bool {
    use crate::metrics::{gauge_set, inc};
    let started = Instant::now();
    let result = match SyncOptions::new(sc, tls) {
        Ok(opts) => run(&opts, &Progress::hidden()).await,
        Err(e) => Err(e),
    };
    gauge_set(
        "passerelle_directory_sync_duration_seconds",
        "duration of the last directory sync run",
        &[],
        started.elapsed().as_secs_f64(),
    );
    let counts = |s: &Summary| {
        for (change, n) in [
            ("added", s.added),
            ("modified", s.modified),
            ("deleted", s.deleted),
            ("unchanged", s.unchanged),
        ] {
            gauge_set(
                "passerelle_directory_sync_entries",
                "entries of the last directory sync run, by change",
                &[("change", change)],
                n as f64,
            );
        }
    };
    match result {
        Ok(s) => {
            inc(
                "passerelle_directory_sync_runs_total",
                "directory sync runs, by result (ok, refused, failed)",
                &[("result", "ok")],
            );
            gauge_set(
                "passerelle_directory_sync_last_success_timestamp_seconds",
                "when the last successful directory sync ended (Unix time)",
                &[],
                crate::message::now_ms() as f64 / 1000.0,
            );
            counts(&s);
            tracing::info!(
                added = s.added,
                modified = s.modified,
                deleted = s.deleted,
                unchanged = s.unchanged,
                ignored = s.foreign,
                bad_lines = s.bad_lines,
                "directory sync: {s}"
            );
            true
        }
        Err(e) => {
            inc(
                "passerelle_directory_sync_runs_total",
                "directory sync runs, by result (ok, refused, failed)",
                &[("result", e.metric_result())],
            );
            if let Some(s) = e.summary() {
                counts(s);
            }
            tracing::error!(ldap = %sc.ldap, base = %sc.base, "directory sync: {e}");
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(extra: &str) -> SyncConfig {
        let text = format!("ldap = \"ldap://127.0.0.1:389\"\nbase = \"ou=mssante,dc=x\"\n{extra}");
        toml::from_str(&text).unwrap()
    }

    #[test]
    fn config_defaults_and_checks() {
        let c = cfg("file = \"x.zip\"");
        assert_eq!(c.every, Duration::from_secs(86400));
        assert_eq!((c.max_delete, c.min_entries, c.connections), (5.0, 1000, 4));
        assert!(c.validate(false).is_empty());
        let c = cfg("url = \"ftp://x\"\nstarttls = true\nevery = \"10s\"\nmax_delete = 150.0\nbind_dn = \"cn=a\"");
        let p = c.validate(false).join("\n");
        for k in [
            ".url:",
            ".ca:",
            ".every:",
            ".max_delete:",
            "bind_password_file",
        ] {
            assert!(p.contains(k), "{k} in {p}");
        }
        assert!(cfg("").validate(true)[0].contains("file or url"));
        let e = toml::from_str::<SyncConfig>("ldap = \"ldap://x\"\nbase = \"o=x\"\nfiel = \"x\"");
        assert!(e.is_err(), "a typo is an error, not silence");
    }

    #[test]
    fn command_line_overrides_config() {
        let args = SyncArgs {
            file: Some("new.txt".into()),
            ldap: Some("ldap://127.0.0.1:1389".into()),
            max_delete: Some(10.0),
            ..SyncArgs::default()
        };
        let s = args.resolve(None).unwrap_err();
        assert!(s.contains("--base"), "{s}");
        let args = SyncArgs {
            base: Some("ou=m,dc=x".into()),
            ..args
        };
        let s = args.resolve(None).unwrap();
        assert_eq!(s.file.as_deref(), Some(Path::new("new.txt")));
        assert_eq!((s.max_delete, s.min_entries), (10.0, 1000));
        let none = SyncArgs::default().resolve(None).unwrap_err();
        assert!(none.contains("--ldap"), "{none}");
    }

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
