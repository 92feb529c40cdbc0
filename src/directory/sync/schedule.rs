//! The gateway's own schedule for the sync (`[directory.sync]`), with its metrics.

use super::{run, Progress, Summary, SyncConfig, SyncOptions};
use crate::config::{Config, TlsConfig};
use std::time::Instant;

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
                crate::util::clock::now_ms() as f64 / 1000.0,
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
