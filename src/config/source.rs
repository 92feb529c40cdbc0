//! From a config text to the typed [`Config`]: TOML syntax, environment overrides, typed
//! deserialisation, unknown keys, and the `FILE:LINE` of every problem.
//!
//! Lines come from the TOML parser's own spans (`toml::de::DeTable`), so `[ server ]` with
//! spaces, quoted and dotted keys and keys inside inline tables are all found; key paths come
//! from `serde_path_to_error` (errors) and `serde_ignored` (unknown keys), so the structs are
//! the only list of known keys.

use super::{Config, Parsed};
use std::fmt;
use toml::de::{DeTable, DeValue};
use toml::Spanned;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Severity {
    Error,
    Warning,
}

/// One thing wrong with a config, naming its key (`listener[0].routes`, `transport.t.tls`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    pub severity: Severity,
    pub file: Option<String>,
    pub line: Option<usize>,
    /// The key path; empty for a problem of the whole file (TOML syntax).
    pub key: String,
    pub message: String,
}

impl Problem {
    pub fn error(key: impl Into<String>, message: impl Into<String>) -> Problem {
        Problem {
            severity: Severity::Error,
            file: None,
            line: None,
            key: key.into(),
            message: message.into(),
        }
    }

    pub fn warning(key: impl Into<String>, message: impl Into<String>) -> Problem {
        Problem {
            severity: Severity::Warning,
            ..Problem::error(key, message)
        }
    }

    /// Names the file and finds the key's line in `text`; a problem already located (in an
    /// establishment's own file) keeps its place.
    pub fn located(mut self, file: &str, text: &str) -> Problem {
        if self.file.is_some() {
            return self;
        }
        self.file = Some(file.to_string());
        if self.line.is_none() && !self.key.is_empty() {
            self.line = locate(text, &self.key);
        }
        self
    }
}

impl fmt::Display for Problem {
    /// `FILE:LINE: key: message`, leaving out what is unknown.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (&self.file, self.line) {
            (Some(file), Some(line)) => write!(f, "{file}:{line}: ")?,
            (Some(file), None) => write!(f, "{file}: ")?,
            _ => {}
        }
        if !self.key.is_empty() {
            write!(f, "{}: ", self.key)?;
        }
        f.write_str(&self.message)
    }
}

/// Parses `text` (named `shown` in messages), applying `PASSERELLE__SECTION__KEY` overrides.
pub fn parse(text: &str, shown: &str) -> Result<Parsed, Vec<Problem>> {
    // Syntax first, with the parser's own position.
    if let Err(e) = DeTable::parse(text) {
        let line = e.span().map(|s| line_of(text, s.start));
        return Err(vec![Problem {
            line,
            file: Some(shown.to_string()),
            ..Problem::error("", format!("TOML syntax: {}", e.message().trim()))
        }]);
    }
    let merged = config::Config::builder()
        .add_source(config::File::from_str(text, config::FileFormat::Toml))
        .add_source(
            config::Environment::with_prefix("PASSERELLE")
                .prefix_separator("__")
                .separator("__")
                .try_parsing(true),
        )
        .build()
        .and_then(|c| c.try_deserialize::<serde_json::Value>())
        .map_err(|e| vec![Problem::error("", e.to_string()).located(shown, text)])?;

    let mut unknown = Vec::new();
    let mut track = |path: serde_ignored::Path<'_>| unknown.push(key_path(&path));
    let de = serde_ignored::Deserializer::new(merged, &mut track);
    let parsed: Result<Config, _> = serde_path_to_error::deserialize(de);
    let config = parsed.map_err(|e| {
        let (key, message) = explain(e.path().to_string(), &e.inner().to_string());
        with_typos(key, message, &unknown, shown, text)
    })?;
    let warnings = unknown
        .into_iter()
        .map(|k| Problem::warning(k, "unknown key (typo?), ignored").located(shown, text))
        .collect();
    Ok(Parsed { config, warnings })
}

/// Parses a partial file (an establishment's, in `establishments_dir`) the way the main file
/// is, without environment overrides: syntax, typed values, unknown keys, all located.
pub fn parse_part<T: serde::de::DeserializeOwned>(
    text: &str,
    shown: &str,
) -> Result<(T, Vec<Problem>), Vec<Problem>> {
    let value: toml::Value = match toml::from_str(text) {
        Ok(v) => v,
        Err(e) => {
            let line = e.span().map(|s| line_of(text, s.start));
            return Err(vec![Problem {
                line,
                file: Some(shown.to_string()),
                ..Problem::error("", format!("TOML syntax: {}", e.message().trim()))
            }]);
        }
    };
    let mut unknown = Vec::new();
    let mut track = |path: serde_ignored::Path<'_>| unknown.push(key_path(&path));
    let de = serde_ignored::Deserializer::new(value, &mut track);
    let parsed: Result<T, _> = serde_path_to_error::deserialize(de);
    let parsed = parsed.map_err(|e| {
        // toml's errors add the table path on further lines: the key already says it.
        let inner = e.inner().to_string();
        let first = inner.lines().next().unwrap_or_default();
        let (key, message) = explain(e.path().to_string(), first);
        with_typos(key, message, &unknown, shown, text)
    })?;
    let warnings = unknown
        .into_iter()
        .map(|k| Problem::warning(k, "unknown key (typo?), ignored").located(shown, text))
        .collect();
    Ok((parsed, warnings))
}

/// A file that does not deserialize, and the unknown keys met before (issue 24 C.2: a
/// `hostnme = ...` was reported only as `server.hostname: required`). A required key
/// missing beside an unknown key of the same table that is one or two edits away is said to
/// be its probable typo.
fn with_typos(
    key: String,
    message: String,
    unknown: &[String],
    shown: &str,
    text: &str,
) -> Vec<Problem> {
    let (table, name) = key.rsplit_once('.').unwrap_or(("", key.as_str()));
    let typo = (message == "required")
        .then(|| {
            unknown.iter().find(|u| {
                let (t, n) = u.rsplit_once('.').unwrap_or(("", u.as_str()));
                t == table && strsim::levenshtein(n, name) <= 2
            })
        })
        .flatten();
    let message = match typo {
        Some(u) => format!("{message} (is `{u}` a typo of it?)"),
        None => message,
    };
    let mut out = vec![Problem::error(key, message).located(shown, text)];
    out.extend(
        unknown
            .iter()
            .map(|k| Problem::error(k.clone(), "unknown key (typo?)").located(shown, text)),
    );
    out
}

/// `serde_ignored`'s path in our `a[0].b` form (options and newtypes are not keys).
fn key_path(p: &serde_ignored::Path<'_>) -> String {
    use serde_ignored::Path as P;
    match p {
        P::Root => String::new(),
        P::Seq { parent, index } => format!("{}[{index}]", key_path(parent)),
        P::Map { parent, key } => {
            let head = key_path(parent);
            if head.is_empty() {
                key.clone()
            } else {
                format!("{head}.{key}")
            }
        }
        P::Some { parent } | P::NewtypeStruct { parent } | P::NewtypeVariant { parent } => {
            key_path(parent)
        }
    }
}

/// serde's wording turned into an administrator's: the key that is missing, the values an
/// enumeration takes.
fn explain(path: String, msg: &str) -> (String, String) {
    let path = if path == "." { String::new() } else { path };
    let join = |k: &str| {
        if path.is_empty() {
            k.to_string()
        } else {
            format!("{path}.{k}")
        }
    };
    if let Some(field) = msg
        .strip_prefix("missing field `")
        .and_then(|r| r.strip_suffix('`'))
    {
        return (join(field), "required".into());
    }
    if let Some(rest) = msg.strip_prefix("unknown variant `") {
        if let Some((value, expected)) = rest.split_once("`, expected ") {
            let values: Vec<&str> = expected
                .trim_start_matches("one of ")
                .split([',', ' '])
                .map(|v| v.trim_matches('`'))
                .filter(|v| !v.is_empty() && *v != "or")
                .collect();
            return (
                path,
                format!("{value:?} is not one of {}", values.join(", ")),
            );
        }
    }
    if let Some(rest) = msg.strip_prefix("invalid type: ") {
        if let Some((found, expected)) = rest.split_once(", expected ") {
            return (path, format!("expected {expected}, found {found}"));
        }
    }
    if msg.starts_with("data did not match any variant of untagged enum") {
        return (path, "expected a string or a list of strings".into());
    }
    (path, msg.to_string())
}

/// 1-based line of a byte offset.
fn line_of(text: &str, offset: usize) -> usize {
    text.as_bytes()[..offset.min(text.len())]
        .iter()
        .filter(|&&b| b == b'\n')
        .count()
        + 1
}

enum Segment<'a> {
    Key(&'a str),
    Index(usize),
}

/// `route[1] (name).transport` -> `route`, `1`, `transport` (the name is for the reader).
fn segments(path: &str) -> Vec<Segment<'_>> {
    let mut out = Vec::new();
    for part in path.split('.') {
        let part = match part.find(" (") {
            Some(i) if part.ends_with(')') => &part[..i],
            _ => part,
        };
        let (key, mut rest) = match part.find('[') {
            Some(i) => (&part[..i], &part[i..]),
            None => (part, ""),
        };
        if !key.is_empty() {
            out.push(Segment::Key(key));
        }
        while let Some(r) = rest.strip_prefix('[') {
            let Some((n, after)) = r.split_once(']') else {
                break;
            };
            if let Ok(i) = n.parse() {
                out.push(Segment::Index(i));
            }
            rest = after;
        }
    }
    out
}

/// The line (1-based) where `key_path` (`route[1].transport`, `transport.t.next_hop`) is
/// written in `text`; for a key that is absent (a missing field), the line of the deepest
/// table that is there.
pub fn locate(text: &str, key_path: &str) -> Option<usize> {
    let root = DeTable::parse(text).ok()?;
    let mut table: Option<&DeTable<'_>> = Some(root.get_ref());
    let mut value: Option<&Spanned<DeValue<'_>>> = None;
    let mut best: Option<usize> = None;
    for seg in segments(key_path) {
        match seg {
            Segment::Key(k) => {
                let t = table?;
                let Some((key, v)) = t.get_key_value(k) else {
                    // Dotted map keys (a transport named "a.b") are not split back: stop here.
                    break;
                };
                best = Some(key.span().start);
                value = Some(v);
            }
            Segment::Index(i) => {
                let Some(DeValue::Array(items)) = value.map(|v| v.get_ref()) else {
                    break;
                };
                let Some(item) = items.get(i) else { break };
                best = Some(item.span().start);
                value = Some(item);
            }
        }
        table = match value.map(|v| v.get_ref()) {
            Some(DeValue::Table(t)) => Some(t),
            _ => None,
        };
    }
    best.map(|o| line_of(text, o))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn locates_keys_by_spans() {
        let text = "[ server ]\nhostname = \"x\"\n\n[[route]]\nname = \"a\"\n[[route]]\nname = \"b\"\ntransport = \"t\"\n[transport.\"t\"]\nkind = \"relay\"\nnext_hop = \"h\"\n[x]\ny = { z = 1, w = 2 }\n";
        assert_eq!(locate(text, "server.hostname"), Some(2));
        assert_eq!(locate(text, "route[1].transport"), Some(8));
        assert_eq!(locate(text, "route[1] (b).transport"), Some(8));
        assert_eq!(locate(text, "route[1].name"), Some(7));
        assert_eq!(locate(text, "transport.t.next_hop"), Some(11));
        assert_eq!(locate(text, "x.y.w"), Some(13));
        // Absent key: the deepest table that exists.
        assert_eq!(locate(text, "server.spool"), Some(1));
        assert_eq!(locate(text, "nothing.here"), None);
    }

    #[test]
    fn a_missing_key_names_its_probable_typo() {
        assert_eq!(strsim::levenshtein("hostnme", "hostname"), 1);
        assert_eq!(strsim::levenshtein("spool", "hostname"), 7);
        let text = "[server]\nhostnme = \"x\"\nspool = \"s\"\n";
        let p = with_typos(
            "server.hostname".into(),
            "required".into(),
            &["server.hostnme".to_string()],
            "t.toml",
            text,
        );
        assert_eq!(
            p[0].to_string(),
            "t.toml:1: server.hostname: required (is `server.hostnme` a typo of it?)"
        );
        assert_eq!(
            p[1].to_string(),
            "t.toml:2: server.hostnme: unknown key (typo?)"
        );
    }

    #[test]
    fn explains_serde_messages() {
        assert_eq!(
            explain("server".into(), "missing field `hostname`"),
            ("server.hostname".into(), "required".into())
        );
        assert_eq!(
            explain(
                "listener[0].starttls".into(),
                "unknown variant `requir`, expected one of `off`, `offer`, `require`"
            )
            .1,
            "\"requir\" is not one of off, offer, require"
        );
        assert_eq!(
            explain("x".into(), "unknown variant `a`, expected `relay` or `mx`").1,
            "\"a\" is not one of relay, mx"
        );
    }

    #[test]
    fn syntax_errors_have_a_line() {
        let e = match parse("[server]\nhostname = \"x\"\nbad line\n", "f.toml") {
            Err(e) => e,
            Ok(_) => panic!("accepted"),
        };
        assert_eq!(e.len(), 1);
        assert!(
            e[0].to_string().starts_with("f.toml:3: TOML syntax: "),
            "{}",
            e[0]
        );
    }
}
