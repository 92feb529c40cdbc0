//! `[journal]`: where message events are written, how long they are kept, and the writer's
//! batching and buffering. A bottom module: config types only, nothing above it imported.

use super::values::de_duration;
use serde::Deserialize;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Which database holds the journal.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum JournalKind {
    /// A file beside the spool: nothing else to run.
    #[default]
    Sqlite,
    /// One database shared by several gateways (one console, one report for all).
    Postgres,
    /// No journal (the Prometheus counters still count).
    None,
}

impl JournalKind {
    pub fn as_str(self) -> &'static str {
        match self {
            JournalKind::Sqlite => "sqlite",
            JournalKind::Postgres => "postgres",
            JournalKind::None => "none",
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(default)]
pub struct JournalConfig {
    pub kind: JournalKind,
    /// The SQLite file; a relative path is relative to `[server].spool`.
    pub path: PathBuf,
    /// `postgresql://user@host:port/db` (libpq URL or key=value form).
    pub url: Option<String>,
    /// Events and messages older than this are pruned in the background; "0" keeps everything.
    #[serde(deserialize_with = "de_duration")]
    pub retention: Duration,
    /// This gateway's name in a shared journal (default: the machine's host name). Queue ids
    /// are unique per host, so two gateways sharing one journal need distinct names.
    pub gateway: Option<String>,
    /// Events written per transaction at most. Under load a batch holds `flush_interval` of
    /// events: each commit writes every page it touched, so fewer, larger commits cost less
    /// (at 3,000 msg/s, 1,000 per commit cost 3-4x the CPU of 10,000).
    pub batch_size: usize,
    /// A batch is written at the latest this long after its first event: a crash loses at
    /// most about this much of the journal (never queue state).
    #[serde(deserialize_with = "de_duration")]
    pub flush_interval: Duration,
    /// Events waiting in memory at most (the database slow or down), besides the batch being
    /// written; beyond, new events are dropped and counted, and mail keeps flowing.
    pub buffer: usize,
    /// How often retention pruning runs.
    #[serde(deserialize_with = "de_duration")]
    pub prune_interval: Duration,
}

impl Default for JournalConfig {
    fn default() -> Self {
        JournalConfig {
            kind: JournalKind::Sqlite,
            path: PathBuf::from("journal.sqlite"),
            url: None,
            retention: Duration::from_secs(365 * 86400),
            gateway: None,
            batch_size: 10_000,
            flush_interval: Duration::from_secs(1),
            buffer: 100_000,
            prune_interval: Duration::from_secs(3600),
        }
    }
}

impl JournalConfig {
    /// The SQLite file for a spool directory.
    pub fn sqlite_path(&self, spool: &Path) -> PathBuf {
        if self.path.is_absolute() {
            self.path.clone()
        } else {
            spool.join(&self.path)
        }
    }

    /// The name this gateway writes under.
    pub fn gateway_name(&self) -> String {
        match self.gateway.as_deref().map(str::trim) {
            Some(g) if !g.is_empty() => g.to_string(),
            _ => host_name(),
        }
    }

    /// Every problem, one line each, naming its key.
    pub fn validate(&self) -> Vec<String> {
        let mut p = Vec::new();
        if self.kind == JournalKind::Postgres {
            match self.url.as_deref() {
                None | Some("") => p.push("journal.url: required for kind = \"postgres\"".into()),
                Some(u) => {
                    if let Err(e) = u.parse::<tokio_postgres::Config>() {
                        p.push(format!("journal.url: {e}"));
                    }
                }
            }
        }
        if self.kind == JournalKind::Sqlite && self.path.as_os_str().is_empty() {
            p.push("journal.path: must not be empty".into());
        }
        if self.batch_size == 0 {
            p.push("journal.batch_size: must be at least 1".into());
        }
        if self.buffer == 0 {
            p.push("journal.buffer: must be at least 1".into());
        }
        if self.flush_interval.is_zero() {
            p.push("journal.flush_interval: must be positive".into());
        }
        if self.prune_interval.is_zero() {
            p.push("journal.prune_interval: must be positive".into());
        }
        p
    }
}

/// The machine's host name (`gethostname`), or "localhost".
fn host_name() -> String {
    let mut buf = [0u8; 256];
    // SAFETY: the buffer is valid for its length; gethostname writes at most that many bytes.
    let rc = unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) };
    if rc != 0 {
        return "localhost".into();
    }
    let n = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
    match std::str::from_utf8(&buf[..n]) {
        Ok(s) if !s.is_empty() => s.to_string(),
        _ => "localhost".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_and_validation() {
        let c = JournalConfig::default();
        assert!(c.validate().is_empty());
        assert_eq!(
            c.sqlite_path(Path::new("var/spool")),
            PathBuf::from("var/spool/journal.sqlite")
        );
        assert!(!c.gateway_name().is_empty());
        let pg = JournalConfig {
            kind: JournalKind::Postgres,
            ..JournalConfig::default()
        };
        assert!(pg.validate()[0].starts_with("journal.url"));
        let pg = JournalConfig {
            kind: JournalKind::Postgres,
            url: Some("postgresql://u@127.0.0.1:5432/db".into()),
            ..JournalConfig::default()
        };
        assert!(pg.validate().is_empty(), "{:?}", pg.validate());
    }
}
