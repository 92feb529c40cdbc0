//! Establishment files: their text (`establishment add`, the console's form) and their
//! validated writes. A file is placed in `establishments_dir` only once the whole configuration
//! with it passes `check-config`; used by the CLI and the console alike.

use crate::config::establishment::{self};
use crate::config::{Config, EstablishmentConfig};
use anyhow::{anyhow, Context};
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

pub fn find<'a>(cfg: &'a Config, name: &str) -> anyhow::Result<&'a EstablishmentConfig> {
    cfg.establishment
        .iter()
        .find(|e| e.name == name)
        .ok_or_else(|| anyhow!("no establishment named {name:?}"))
}

/// What `add` writes.
pub struct FileSpec<'a> {
    pub name: &'a str,
    pub domains: &'a [String],
    pub clients: &'a [String],
    pub client_dns: &'a [String],
    pub mailbox: &'a str,
    pub mailbox_tls: &'a str,
    pub sender_check: &'a str,
    pub structures: &'a [String],
    pub addresses: &'a [String],
    pub max_message_rate: Option<u32>,
    pub max_queued: Option<usize>,
}

/// A TOML string (basic string, escaped).
fn quoted(s: &str) -> String {
    toml::Value::String(s.to_string()).to_string()
}

fn array(v: &[String]) -> String {
    format!(
        "[{}]",
        v.iter().map(|s| quoted(s)).collect::<Vec<_>>().join(", ")
    )
}

/// The text of `establishments_dir/NAME.toml`.
pub fn file_text(s: &FileSpec<'_>) -> String {
    let mut t = String::new();
    let _ = writeln!(
        t,
        "# Written by `passerelle establishment add`; the keys are those of [[establishment]]."
    );
    let _ = writeln!(t, "[establishment]");
    let _ = writeln!(t, "name = {}", quoted(s.name));
    let _ = writeln!(t, "domains = {}", array(s.domains));
    if !s.clients.is_empty() {
        let _ = writeln!(t, "clients = {}", array(s.clients));
    }
    if !s.client_dns.is_empty() {
        let _ = writeln!(t, "client_dns = {}", array(s.client_dns));
    }
    let _ = writeln!(t, "mailbox = {}", quoted(s.mailbox));
    let _ = writeln!(t, "mailbox_tls = {}", quoted(s.mailbox_tls));
    let _ = writeln!(t, "sender_check = {}", quoted(s.sender_check));
    if !s.structures.is_empty() {
        let _ = writeln!(t, "structures = {}", array(s.structures));
    }
    if !s.addresses.is_empty() {
        let _ = writeln!(t, "addresses = {}", array(s.addresses));
    }
    if let Some(n) = s.max_message_rate {
        let _ = writeln!(t, "max_message_rate = {n}");
    }
    if let Some(n) = s.max_queued {
        let _ = writeln!(t, "max_queued = {n}");
    }
    t
}

/// The establishments directory of the config at `config` (read without validation: the
/// directory may hold the very file being fixed).
pub fn establishments_dir(config: &Path) -> anyhow::Result<PathBuf> {
    let text = std::fs::read_to_string(config)
        .with_context(|| format!("{}: cannot read", config.display()))?;
    let parsed = Config::from_toml_str(&text, &config.display().to_string())?;
    Ok(parsed.config.server.establishments_dir)
}

/// `establishment add` without the reload (the console reloads through its own handle):
/// writes `establishments_dir/NAME.toml` when the whole configuration with it passes
/// `check-config`; otherwise nothing is left and the problems say why. Ok: the file and the
/// warnings.
pub fn write_checked(
    config: &Path,
    name: &str,
    text: &str,
) -> Result<(PathBuf, Vec<String>), Vec<String>> {
    let one = |e: String| vec![e];
    if !establishment::valid_name(name) {
        return Err(one(format!(
            "{name:?}: an establishment's name is lowercase letters, digits and '-'"
        )));
    }
    let dir = establishments_dir(config).map_err(|e| one(format!("{e:#}")))?;
    let path = dir.join(format!("{name}.toml"));
    if path.exists() {
        return Err(one(format!(
            "{}: establishment {name:?} exists; remove it first",
            path.display()
        )));
    }
    // Checked on its own first: its own mistakes are named in its own words.
    if let Err(p) = establishment::parse_file(text, &path.display().to_string()) {
        return Err(p.iter().map(|p| p.to_string()).collect());
    }
    std::fs::create_dir_all(&dir).map_err(|e| one(format!("creating {}: {e}", dir.display())))?;
    let warnings = install_checked(config, &path, text)?;
    Ok((path, warnings))
}

/// Checks the whole configuration as if `text` were at `path`, and only then places it
/// (written under a name the config does not read, then renamed): the live directory never
/// holds a file a reload would refuse, not even for a moment (issue 24 B.16). Ok: the
/// warnings.
fn install_checked(config: &Path, path: &Path, text: &str) -> Result<Vec<String>, Vec<String>> {
    let one = |e: String| vec![e];
    let warnings = match Config::check_with(config, Some((path, text))) {
        Ok(parsed) => parsed.warnings.iter().map(|w| w.to_string()).collect(),
        Err(e) => return Err(e.to_string().lines().map(String::from).collect()),
    };
    crate::util::fs::write_atomic(path, text.as_bytes(), crate::util::fs::Mode::KeepOr(0o640))
        .map_err(|e| one(format!("writing {}: {e}", path.display())))?;
    Ok(warnings)
}

/// The console's edit: replaces the file of establishment `name` with `text` when the whole
/// configuration with it passes `check-config`; otherwise the old file is put back and the
/// problems say why. Ok: the file, its previous text (to put back if the reload refuses it),
/// and the warnings.
pub fn replace_checked(
    config: &Path,
    name: &str,
    text: &str,
) -> Result<(PathBuf, String, Vec<String>), Vec<String>> {
    let one = |e: String| vec![e];
    let cfg = Config::load_unvalidated(config).map_err(|e| one(format!("{e:#}")))?;
    let e = find(&cfg, name).map_err(|e| one(format!("{e:#}")))?;
    let Some(path) = e.file.clone() else {
        return Err(one(format!(
            "establishment {name:?} is declared in {} ([[establishment]]): edit it there (Configuration)",
            config.display()
        )));
    };
    let parsed = establishment::parse_file(text, &path.display().to_string())
        .map_err(|p| p.iter().map(|p| p.to_string()).collect::<Vec<_>>())?;
    if parsed.0.name != name {
        return Err(one(format!(
            "the name cannot change ({name:?} -> {:?}): add a new establishment and remove this one",
            parsed.0.name
        )));
    }
    let old = std::fs::read_to_string(&path)
        .map_err(|e| one(format!("reading {}: {e}", path.display())))?;
    let warnings = install_checked(config, &path, text)?;
    Ok((path, old, warnings))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn add_writes_a_file_the_config_reads() {
        let text = file_text(&FileSpec {
            name: "chu-c",
            domains: &["chu-c.mssante.fr".into()],
            clients: &["127.0.0.40".into()],
            client_dns: &["CN=mta.chu-c.fr,O=CHU \"C\",C=FR".into()],
            mailbox: "127.0.0.1:2605",
            mailbox_tls: "none",
            sender_check: "envelope",
            structures: &[],
            addresses: &[],
            max_message_rate: Some(60),
            max_queued: None,
        });
        let (e, w) = establishment::parse_file(&text, "d/chu-c.toml").unwrap();
        assert!(w.is_empty(), "{w:?}");
        assert_eq!(e.name, "chu-c");
        assert_eq!(e.max_message_rate, Some(60));
        assert_eq!(
            e.client_dns[0].to_string(),
            "CN=mta.chu-c.fr,O=CHU \"C\",C=FR"
        );
    }

    /// Issue 24 B.16: the configuration is checked with the new file before it is placed; a
    /// refused one never enters the live directory.

    #[test]
    fn a_file_is_checked_before_it_is_placed() {
        let dir = tempfile::tempdir().unwrap();
        let est_dir = dir.path().join("est.d");
        let main = std::fs::read_to_string(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/config/passerelle.toml"
        ))
        .unwrap()
        .replacen(
            "[server]\n",
            &format!(
                "[server]\nestablishments_dir = {:?}\n",
                est_dir.display().to_string()
            ),
            1,
        );
        let config = dir.path().join("p.toml");
        std::fs::write(&config, main).unwrap();
        let spec = |name: &'static str, domain: &'static [String]| FileSpec {
            name,
            domains: domain,
            clients: &[],
            client_dns: &[],
            mailbox: "127.0.0.1:2605",
            mailbox_tls: "none",
            sender_check: "envelope",
            structures: &[],
            addresses: &[],
            max_message_rate: None,
            max_queued: None,
        };
        static C: std::sync::LazyLock<Vec<String>> =
            std::sync::LazyLock::new(|| vec!["chu-c.mssante.fr".into()]);
        let mut c = spec("chu-c", &C);
        let clients = ["127.0.0.40".to_string()];
        c.clients = &clients;
        let (path, _) = write_checked(&config, "chu-c", &file_text(&c)).expect("chu-c placed");
        assert!(path.exists());
        let mut d = spec("chu-d", &C);
        let clients = ["127.0.0.41".to_string()];
        d.clients = &clients;
        let e = write_checked(&config, "chu-d", &file_text(&d)).unwrap_err();
        assert!(e.join("\n").contains("chu-c.mssante.fr"), "{e:?}");
        let names: Vec<_> = std::fs::read_dir(&est_dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        assert_eq!(names, ["chu-c.toml"], "nothing else was ever placed there");
    }
}
