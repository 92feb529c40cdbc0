//! The settings of a sync: `[directory.sync]` in the config file, and the command line that
//! overrides it key by key.

use crate::config::Config;
use std::path::PathBuf;

pub use crate::config::SyncConfig;

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
    /// Bind as this DN (with --bind-password-file); anonymous otherwise.
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
            None => SyncConfig::new(
                self.ldap.clone().ok_or_else(|| missing("--ldap"))?,
                self.base.clone().ok_or_else(|| missing("--base"))?,
            ),
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;
    use std::time::Duration;

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
}
