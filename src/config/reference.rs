//! Keeps `docs/configuration.md` true: the reference a user has is checked against the
//! structs that read the file, so neither can change without the other.
//!
//! How the keys the program accepts are known without a second hand-kept list: serde's
//! derive passes the names of a struct's fields to `Deserializer::deserialize_struct`. A
//! probe deserializer ([`fields_of`]) records them and stops, so `fields_of::<ListenerConfig>()`
//! is exactly the keys a `[[listener]]` accepts (for `try_from` types, those of the raw form
//! as written). The top-level `Config` gives the section names the same way. Then:
//!
//! - every section of the program has a `## [section]` in the doc and the reverse, and each
//!   section's table lists exactly its struct's keys (a field added without its line fails);
//! - a default written as a TOML value is the program's default: a base config with the key
//!   absent and the same config with `key = <documented default>` parse to equal configs;
//! - a key marked *required* is refused when removed from the base config;
//! - every ```toml block of the doc loads without a warning (no unknown key), and complete
//!   ones (with `[server]`) also pass the cross-reference checks;
//! - the shipped configurations (config/, deploy/host/, the Kubernetes ConfigMap) load
//!   without a warning, and the ConfigMap is the host config with the admin endpoint moved.
//!
//! A new section needs a line in [`section_fields`] (the test says so).

use super::*;
use serde::de::{self, Visitor};
use std::collections::BTreeSet;

/// A deserializer that only records the field names a struct asks for.
struct Probe<'a>(&'a mut Vec<&'static str>);

impl<'de> de::Deserializer<'de> for Probe<'_> {
    type Error = de::value::Error;

    fn deserialize_any<V: Visitor<'de>>(self, _: V) -> Result<V::Value, Self::Error> {
        Err(de::Error::custom("not a struct"))
    }

    fn deserialize_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        fields: &'static [&'static str],
        _: V,
    ) -> Result<V::Value, Self::Error> {
        self.0.extend_from_slice(fields);
        Err(de::Error::custom("probed"))
    }

    serde::forward_to_deserialize_any! {
        bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string bytes byte_buf
        option unit unit_struct newtype_struct seq tuple tuple_struct map enum identifier
        ignored_any
    }
}

/// The keys a config struct accepts, in declaration order.
fn fields_of<T: for<'de> Deserialize<'de>>() -> Vec<&'static str> {
    let mut names = Vec::new();
    let _ = T::deserialize(Probe(&mut names));
    names
}

/// The keys of each section, by the name the doc gives it (`transport.NAME` for the map).
fn section_fields(section: &str) -> Option<Vec<&'static str>> {
    Some(match section {
        "server" => fields_of::<ServerConfig>(),
        "tls" => fields_of::<TlsConfig>(),
        "listener" => fields_of::<ListenerConfig>(),
        "route" => fields_of::<RouteConfig>(),
        "transport.NAME" => fields_of::<TransportConfig>(),
        "queue" => fields_of::<QueueConfig>(),
        "smtp" => fields_of::<SmtpLimits>(),
        "dns" => fields_of::<DnsConfig>(),
        "whitelist" => fields_of::<WhitelistConfig>(),
        "directory" => fields_of::<DirectoryConfig>(),
        "directory.sync" => fields_of::<super::SyncConfig>(),
        "journal" => fields_of::<super::JournalConfig>(),
        "state" => fields_of::<super::StateConfig>(),
        "console" => fields_of::<super::ConsoleConfig>(),
        "establishment" => fields_of::<super::EstablishmentConfig>(),
        _ => return None,
    })
}

/// One row of a section's table.
#[derive(Debug)]
struct Row {
    key: String,
    default: String,
}

/// `## [section]` or `## [[section]]` headings and the key rows of the table under each.
fn doc_sections(doc: &str) -> Vec<(String, Vec<Row>)> {
    let mut out: Vec<(String, Vec<Row>)> = Vec::new();
    for line in doc.lines() {
        if let Some(h) = line.strip_prefix("## [") {
            let name = h.trim_start_matches('[').trim_end_matches(']').to_string();
            out.push((name, Vec::new()));
            continue;
        }
        if line.starts_with("## ") {
            // A heading that is not a section ends the previous one's table.
            out.push((String::new(), Vec::new()));
            continue;
        }
        let cells: Vec<&str> = line.split('|').map(str::trim).collect();
        // | `key` | type | default | meaning |
        if cells.len() >= 6 && cells[1].starts_with('`') {
            if let Some((name, rows)) = out.last_mut() {
                if !name.is_empty() {
                    rows.push(Row {
                        key: cells[1].trim_matches('`').to_string(),
                        default: cells[3].to_string(),
                    });
                }
            }
        }
    }
    out.retain(|(n, _)| !n.is_empty());
    out
}

/// The ```toml blocks of a markdown text.
fn toml_blocks(doc: &str) -> Vec<String> {
    let mut blocks = Vec::new();
    let mut cur: Option<String> = None;
    for line in doc.lines() {
        match (&mut cur, line.trim_end()) {
            (None, "```toml") => cur = Some(String::new()),
            (Some(b), "```") => {
                blocks.push(std::mem::take(b));
                cur = None;
            }
            (Some(b), l) => {
                b.push_str(l);
                b.push('\n');
            }
            (None, _) => {}
        }
    }
    blocks
}

/// Every section with its required keys and nothing else; the directory is an LDAP one so
/// that its defaults show.
const BASE: &str = r#"[server]
hostname = "gw.test"
[tls]
certificate = "c.pem"
private_key = "k.pem"
[[listener]]
name = "l"
address = "127.0.0.1:2525"
[[route]]
name = "r"
domains = ["*"]
transport = "t"
[transport.t]
kind = "mx"
[transport.relay]
kind = "relay"
next_hop = "127.0.0.1:2526"
[queue]
[smtp]
[dns]
[whitelist]
file = "w.xml"
[directory]
kind = "ldap"
url = "ldap://127.0.0.1"
base = "dc=x"
[console]
address = "127.0.0.1:8026"
[[establishment]]
name = "e"
domains = ["e.mssante.fr"]
mailbox = "127.0.0.1:25"
"#;

/// The header line of a doc section in [`BASE`].
fn header_matches(section: &str, line: &str) -> bool {
    let l = line.trim();
    match section {
        "transport.NAME" => l.starts_with("[transport."),
        s => l == format!("[{s}]") || l == format!("[[{s}]]"),
    }
}

/// `text` without the lines setting `key` in `section`; whether one was there.
fn without_key(text: &str, section: &str, key: &str) -> (String, bool) {
    let mut inside = false;
    let mut removed = false;
    let mut out = String::new();
    for line in text.lines() {
        if line.starts_with('[') {
            inside = header_matches(section, line);
        } else if inside && line.split('=').next().map(str::trim) == Some(key) {
            removed = true;
            continue;
        }
        out.push_str(line);
        out.push('\n');
    }
    (out, removed)
}

/// `text` with `line` added under the first header of `section`.
fn with_line(text: &str, section: &str, line: &str) -> String {
    let mut out = String::new();
    let mut done = false;
    for l in text.lines() {
        out.push_str(l);
        out.push('\n');
        if !done && header_matches(section, l) {
            out.push_str(line);
            out.push('\n');
            done = true;
        }
    }
    out
}

fn parse_quiet(text: &str, what: &str) -> Result<Config, String> {
    match Config::from_toml_str(text, what) {
        Ok(p) if p.warnings.is_empty() => Ok(p.config),
        Ok(p) => Err(p
            .warnings
            .iter()
            .map(|w| w.to_string())
            .collect::<Vec<_>>()
            .join("; ")),
        Err(e) => Err(e.one_line()),
    }
}

fn read(rel: &str) -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join(rel);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn doc() -> String {
    read("docs/configuration.md")
}

#[test]
fn every_section_and_key_is_documented_and_nothing_else() {
    let doc = doc();
    let sections = doc_sections(&doc);
    let mut problems = Vec::new();
    let documented: BTreeSet<String> = sections
        .iter()
        .map(|(s, _)| s.split('.').next().unwrap_or(s).to_string())
        .collect();
    let program: BTreeSet<String> = fields_of::<Config>()
        .into_iter()
        .map(String::from)
        .collect();
    for s in program.difference(&documented) {
        problems.push(format!("section [{s}] is not documented"));
    }
    for s in documented.difference(&program) {
        problems.push(format!(
            "section [{s}] is documented but the program has none"
        ));
    }
    for (section, rows) in &sections {
        let Some(fields) = section_fields(section) else {
            problems.push(format!(
                "[{section}]: add it to section_fields() in src/config/reference.rs"
            ));
            continue;
        };
        let doc_keys: BTreeSet<&str> = rows.iter().map(|r| r.key.as_str()).collect();
        let keys: BTreeSet<&str> = fields.into_iter().collect();
        for k in keys.difference(&doc_keys) {
            problems.push(format!("[{section}] {k}: accepted but not documented"));
        }
        for k in doc_keys.difference(&keys) {
            problems.push(format!("[{section}] {k}: documented but not accepted"));
        }
        if doc_keys.len() != rows.len() {
            problems.push(format!("[{section}]: a key is listed twice"));
        }
    }
    assert!(
        problems.is_empty(),
        "docs/configuration.md:\n{}",
        problems.join("\n")
    );
}

#[test]
fn documented_defaults_and_required_keys_are_the_programs() {
    let base = parse_quiet(BASE, "base").expect("the test's base config loads");
    assert!(
        format!("{base:?}").contains("Ldap"),
        "the base directory is LDAP"
    );
    let mut problems = Vec::new();
    let mut checked = 0;
    for (section, rows) in doc_sections(&doc()) {
        for row in rows {
            let key = &row.key;
            let default = row.default.as_str();
            if default.starts_with("required") {
                let (text, present) = without_key(BASE, &section, key);
                if !present {
                    // Conditional ones ("required with kind = ...") are checked where the
                    // base has that kind.
                    if default == "required" {
                        problems.push(format!("[{section}] {key}: required, but not in BASE"));
                    }
                    continue;
                }
                checked += 1;
                if Config::from_toml_str(&text, "t.toml").is_ok() {
                    problems.push(format!(
                        "[{section}] {key}: documented as required, but a config without it loads"
                    ));
                }
            } else if let Some(value) = default.strip_prefix('`').and_then(|d| d.strip_suffix('`'))
            {
                checked += 1;
                let (absent, _) = without_key(BASE, &section, key);
                let set = with_line(&absent, &section, &format!("{key} = {value}"));
                match (parse_quiet(&absent, "absent"), parse_quiet(&set, "set")) {
                    (Ok(a), Ok(s)) if format!("{a:?}") == format!("{s:?}") => {}
                    (Ok(_), Ok(_)) => problems.push(format!(
                        "[{section}] {key}: the documented default {value} is not the program's"
                    )),
                    (a, s) => problems.push(format!(
                        "[{section}] {key} = {value}: does not load: {:?} {:?}",
                        a.err(),
                        s.err()
                    )),
                }
            } else if default != "unset" {
                problems.push(format!(
                    "[{section}] {key}: default {default:?} is neither `a TOML value`, \
                     required... nor unset"
                ));
            }
        }
    }
    assert!(
        problems.is_empty(),
        "docs/configuration.md:\n{}",
        problems.join("\n")
    );
    assert!(checked > 40, "only {checked} defaults checked");
}

#[test]
fn doc_examples_load_without_warnings() {
    let blocks = toml_blocks(&doc());
    assert!(blocks.len() >= 4, "{} examples", blocks.len());
    for (i, b) in blocks.iter().enumerate() {
        let complete = b.contains("[server]");
        let text = if complete {
            b.clone()
        } else {
            format!("[server]\nhostname = \"gw.test\"\n{b}")
        };
        let c = parse_quiet(&text, &format!("docs/configuration.md example {}", i + 1))
            .unwrap_or_else(|e| panic!("{e}\n{b}"));
        if complete {
            let errors: Vec<String> = c
                .validate()
                .iter()
                .filter(|p| p.severity == Severity::Error)
                // The example's files are the production paths, absent here.
                .filter(|p| !p.message.ends_with("does not exist"))
                .map(|p| p.to_string())
                .collect();
            assert!(errors.is_empty(), "example {}: {errors:?}", i + 1);
        }
    }
}

/// The ConfigMap embeds the configuration as a YAML block scalar under `passerelle.toml: |`.
fn configmap_config() -> String {
    let yaml = read("deploy/kubernetes/configmap.yaml");
    let mut out = String::new();
    let mut inside = false;
    for line in yaml.lines() {
        if inside {
            if line == "---" {
                break;
            }
            out.push_str(line.strip_prefix("    ").unwrap_or(line.trim()));
            out.push('\n');
        } else if line.trim() == "passerelle.toml: |" {
            inside = true;
        }
    }
    out
}

#[test]
fn shipped_configs_load_without_warnings_and_agree() {
    for rel in [
        "config/passerelle.toml",
        "deploy/host/passerelle.toml",
        "examples/regional.toml",
    ] {
        parse_quiet(&read(rel), rel).unwrap_or_else(|e| panic!("{e}"));
    }
    let host =
        parse_quiet(&read("deploy/host/passerelle.toml"), "host").unwrap_or_else(|e| panic!("{e}"));
    let k8s = parse_quiet(&configmap_config(), "configmap.yaml").unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        host.server.admin,
        "127.0.0.1:8025".parse().ok(),
        "the host config keeps the admin endpoint on loopback"
    );
    assert_eq!(k8s.server.admin, "0.0.0.0:8025".parse().ok());
    let mut moved = k8s.clone();
    moved.server.admin = host.server.admin;
    assert_eq!(
        format!("{host:?}"),
        format!("{moved:?}"),
        "deploy/kubernetes/configmap.yaml differs from deploy/host/passerelle.toml \
         (other than server.admin)"
    );
}

#[test]
fn the_probe_sees_every_struct() {
    assert_eq!(fields_of::<DnsConfig>(), vec!["nameservers"]);
    // try_from types: the keys of the form written in the file.
    assert!(fields_of::<RouteConfig>().contains(&"reject"));
    assert!(fields_of::<DirectoryConfig>().contains(&"bind_password"));
    assert!(fields_of::<Config>().contains(&"listener"));
    assert!(
        !fields_of::<Config>().contains(&"source"),
        "skipped fields are no keys"
    );
}
