//! `[state]`: where the establishments, the console users and the console sessions live. One
//! gateway keeps them in files (`establishments_dir`, `[console] users_file`); several gateways
//! of a region share them in PostgreSQL, each applying a copy kept under its spool. A bottom
//! module: config types only.

use serde::Deserialize;
use std::path::{Path, PathBuf};

/// Which store holds the shared state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum StateKind {
    /// `establishments_dir` and `[console] users_file`: one gateway, nothing else to run.
    #[default]
    Files,
    /// One PostgreSQL database for every gateway of a region.
    Postgres,
}

impl StateKind {
    pub fn as_str(self) -> &'static str {
        match self {
            StateKind::Files => "files",
            StateKind::Postgres => "postgres",
        }
    }
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct StateConfig {
    pub kind: StateKind,
    /// `postgresql://user@host:port/db` (libpq URL or key=value form, TLS options as
    /// `[journal] url`); may name the journal's database (the tables are `state_*`).
    pub url: Option<String>,
    /// A file holding the database password (first line), kept out of the main file so the
    /// configuration can be shown and shared without it.
    pub password_file: Option<PathBuf>,
}

/// The local copy of the shared state under the spool: what a gateway runs on, and starts
/// from when the database is away.
pub const LOCAL_DIR: &str = "state";

impl StateConfig {
    pub fn shared(&self) -> bool {
        self.kind == StateKind::Postgres
    }

    /// `SPOOL/state`: the local copy of the shared state.
    pub fn local_dir(&self, spool: &Path) -> PathBuf {
        spool.join(LOCAL_DIR)
    }

    /// Every problem, one line each, naming its key.
    pub fn validate(&self) -> Vec<String> {
        let mut p = Vec::new();
        if self.kind == StateKind::Postgres {
            match self.url.as_deref() {
                None | Some("") => p.push("state.url: required for kind = \"postgres\"".into()),
                Some(u) => {
                    if let Err(e) = super::postgres_target(u) {
                        p.push(e.replacen("journal.url", "state.url", 1));
                    }
                }
            }
        } else if self.url.is_some() || self.password_file.is_some() {
            p.push("state.url: only with kind = \"postgres\"".into());
        }
        p
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn postgres_needs_a_url_and_files_none() {
        let mut s = StateConfig::default();
        assert!(s.validate().is_empty());
        s.kind = StateKind::Postgres;
        assert!(s.validate()[0].starts_with("state.url: required"));
        s.url = Some("postgresql://p@127.0.0.1:5432/db?sslmode=bogus".into());
        assert!(
            s.validate()[0].starts_with("state.url"),
            "{:?}",
            s.validate()
        );
        s.url = Some("postgresql://p@127.0.0.1:5432/db".into());
        assert!(s.validate().is_empty());
        s.kind = StateKind::Files;
        assert!(s.validate()[0].contains("only with kind"));
    }
}
