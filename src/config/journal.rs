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
    /// Bytes of events kept on disk under the spool (`journal-spill/`) while the database
    /// cannot take them, written in order when it returns; beyond, events are dropped and
    /// counted, and the log and `/readyz` say so. About 400 bytes an event: the 1 GiB
    /// default holds ~2.5 million events, hours of a region's traffic.
    pub spill_max_size: u64,
    /// Administrators' audit entries are kept this long, whatever `retention` says (the ANS
    /// recommends six months of such traces; at least that).
    #[serde(deserialize_with = "de_duration")]
    pub audit_retention: Duration,
}

/// The shortest `audit_retention` accepted: six months.
pub const MIN_AUDIT_RETENTION: Duration = Duration::from_secs(182 * 86400);

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
            spill_max_size: 1 << 30,
            audit_retention: Duration::from_secs(365 * 86400),
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
                    if let Err(e) = postgres_target(u) {
                        p.push(e);
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
        if self.audit_retention < MIN_AUDIT_RETENTION {
            p.push(format!(
                "journal.audit_retention: at least 6 months (182d), not {}",
                humantime::format_duration(self.audit_retention)
            ));
        }
        if !(1 << 20..=64 << 30).contains(&self.spill_max_size) {
            p.push("journal.spill_max_size: must be between 1 MiB and 64 GiB".into());
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

/// libpq's `sslmode`: tokio-postgres knows `disable`, `prefer` and `require` only, and no CA
/// file, so the two `verify-*` modes and `sslrootcert` are taken out of the URL and honoured
/// here (issue 24 B.8).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SslMode {
    Disable,
    /// libpq's default: TLS when the server offers it, the certificate not checked.
    Prefer,
    /// TLS or nothing; the certificate checked against `sslrootcert` when one is given.
    Require,
    /// TLS, the certificate signed by `sslrootcert`'s CA.
    VerifyCa,
    /// TLS, the certificate signed by `sslrootcert`'s CA and naming the host connected to.
    VerifyFull,
}

impl SslMode {
    pub fn as_str(self) -> &'static str {
        match self {
            SslMode::Disable => "disable",
            SslMode::Prefer => "prefer",
            SslMode::Require => "require",
            SslMode::VerifyCa => "verify-ca",
            SslMode::VerifyFull => "verify-full",
        }
    }

    fn parse(v: &str) -> Result<SslMode, String> {
        Ok(match v {
            "disable" => SslMode::Disable,
            "allow" | "prefer" => SslMode::Prefer,
            "require" => SslMode::Require,
            "verify-ca" => SslMode::VerifyCa,
            "verify-full" => SslMode::VerifyFull,
            other => {
                return Err(format!(
                "journal.url: sslmode={other:?}: disable, prefer, require, verify-ca or verify-full"
            ))
            }
        })
    }
}

/// Where the journal is and how its connection is protected.
pub struct PgTarget {
    pub config: tokio_postgres::Config,
    pub mode: SslMode,
    pub root_cert: Option<std::path::PathBuf>,
}

/// Parses the URL (libpq URL or key=value form) and applies our defaults (connect timeout
/// 5 s, application name).
pub fn postgres_target(url: &str) -> Result<PgTarget, String> {
    let (rest, mode, root) = take_tls_options(url)?;
    let mut c: tokio_postgres::Config = rest.parse().map_err(|e| format!("journal.url: {e}"))?;
    if c.get_connect_timeout().is_none() {
        c.connect_timeout(Duration::from_secs(5));
    }
    if c.get_application_name().is_none() {
        c.application_name("passerelle");
    }
    let mode = mode.unwrap_or(SslMode::Prefer);
    if matches!(mode, SslMode::VerifyCa | SslMode::VerifyFull) && root.is_none() {
        return Err(
            "journal.url: sslmode=verify-ca and verify-full need sslrootcert=FILE (the CA that signed the server's certificate)"
                .into(),
        );
    }
    c.ssl_mode(match mode {
        SslMode::Disable => tokio_postgres::config::SslMode::Disable,
        SslMode::Prefer => tokio_postgres::config::SslMode::Prefer,
        _ => tokio_postgres::config::SslMode::Require,
    });
    Ok(PgTarget {
        config: c,
        mode,
        root_cert: root.map(std::path::PathBuf::from),
    })
}

/// Takes `sslmode` and `sslrootcert` out of a URL or key=value string: the rest is what
/// tokio-postgres parses.
fn take_tls_options(url: &str) -> Result<(String, Option<SslMode>, Option<String>), String> {
    let (mut mode, mut root) = (None, None);
    let mut take = |k: &str, v: &str| -> Result<bool, String> {
        match k {
            "sslmode" => mode = Some(SslMode::parse(v)?),
            "sslrootcert" => root = Some(v.to_string()),
            _ => return Ok(false),
        }
        Ok(true)
    };
    if url.starts_with("postgres://") || url.starts_with("postgresql://") {
        let Some((base, query)) = url.split_once('?') else {
            return Ok((url.to_string(), None, None));
        };
        let mut kept = Vec::new();
        for pair in query.split('&').filter(|p| !p.is_empty()) {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            if !take(
                k,
                &percent_encoding::percent_decode_str(v).decode_utf8_lossy(),
            )? {
                kept.push(pair);
            }
        }
        let rest = if kept.is_empty() {
            base.to_string()
        } else {
            format!("{base}?{}", kept.join("&"))
        };
        Ok((rest, mode, root))
    } else {
        let mut kept = Vec::new();
        for word in url.split_whitespace() {
            match word.split_once('=') {
                Some((k, v)) if take(k.trim(), v.trim_matches('\''))? => {}
                _ => kept.push(word),
            }
        }
        Ok((kept.join(" "), mode, root))
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
        for bad in [0, (1 << 20) - 1, (64 << 30) + 1] {
            let c = JournalConfig {
                spill_max_size: bad,
                ..JournalConfig::default()
            };
            assert_eq!(
                c.validate(),
                ["journal.spill_max_size: must be between 1 MiB and 64 GiB"]
            );
        }
    }

    #[test]
    fn sslmode_and_sslrootcert_are_ours() {
        let t = postgres_target(
            "postgresql://u@db.example:5433/j?sslmode=verify-full&sslrootcert=/etc/ca%20x.pem&connect_timeout=9",
        )
        .unwrap();
        assert_eq!(t.mode, SslMode::VerifyFull);
        assert_eq!(t.root_cert.as_deref(), Some(Path::new("/etc/ca x.pem")));
        assert_eq!(t.config.get_dbname(), Some("j"));
        assert_eq!(
            t.config.get_connect_timeout(),
            Some(&Duration::from_secs(9))
        );
        assert_eq!(
            t.config.get_ssl_mode(),
            tokio_postgres::config::SslMode::Require
        );
        let t =
            postgres_target("host=db dbname=j sslmode=verify-ca sslrootcert='/ca.pem'").unwrap();
        assert_eq!(t.mode, SslMode::VerifyCa);
        assert_eq!(t.root_cert.as_deref(), Some(Path::new("/ca.pem")));
        assert_eq!(t.config.get_dbname(), Some("j"));
        let t = postgres_target("postgresql://u@db/j").unwrap();
        assert_eq!(t.mode, SslMode::Prefer, "libpq's default");
        assert_eq!(
            postgres_target("postgresql://u@db/j?sslmode=disable")
                .unwrap()
                .config
                .get_ssl_mode(),
            tokio_postgres::config::SslMode::Disable
        );
        for bad in [
            "postgresql://u@db/j?sslmode=verify-full",
            "postgresql://u@db/j?sslmode=sometimes",
            "host=db sslmode=verify-ca",
        ] {
            assert!(postgres_target(bad).is_err(), "{bad}");
        }
    }
}
