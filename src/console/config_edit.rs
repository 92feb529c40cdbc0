//! The configuration page's work: check an edited config text as `check-config` and a reload
//! would (problems at their lines), diff it against the running one, and apply or roll back
//! (write the file, reload through the server's reload path, and put the file back as it was
//! when the reload refuses it, so the file on disk and the configuration in force never
//! disagree after an apply).

use crate::config::{Config, ConfigError, Problem, Severity};
use std::path::{Path, PathBuf};

/// What a check found.
#[derive(Debug, Clone, Default)]
pub struct Checked {
    pub errors: Vec<Problem>,
    pub warnings: Vec<Problem>,
}

impl Checked {
    /// Problems (errors, then warnings) attached to `line` (1-based).
    pub fn at_line(&self, line: usize) -> impl Iterator<Item = &Problem> {
        self.errors
            .iter()
            .chain(&self.warnings)
            .filter(move |p| p.line == Some(line))
    }

    /// Problems with no line (a whole-file problem), shown above the listing.
    pub fn unlocated(&self) -> impl Iterator<Item = &Problem> {
        self.errors
            .iter()
            .chain(&self.warnings)
            .filter(|p| p.line.is_none())
    }
}

/// Parses and validates `text` as the config file `shown`: the same messages as
/// `check-config` (without loading the files it names: the reload does that).
pub fn check(text: &str, shown: &str) -> Checked {
    match Config::from_toml_str(text, shown) {
        Err(ConfigError::Invalid(errors)) => Checked {
            errors,
            warnings: Vec::new(),
        },
        Err(e) => Checked {
            errors: vec![Problem::error("", e.to_string())],
            warnings: Vec::new(),
        },
        Ok(parsed) => {
            let mut c = Checked {
                errors: Vec::new(),
                warnings: parsed.warnings,
            };
            for p in parsed.config.validate() {
                let p = p.located(shown, text);
                match p.severity {
                    Severity::Error => c.errors.push(p),
                    Severity::Warning => c.warnings.push(p),
                }
            }
            c
        }
    }
}

/// One line of a unified diff, with its kind for colouring.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DiffLine {
    /// ' ', '+', '-', '@' (hunk header) or 'h' (file header).
    pub kind: char,
    pub text: String,
}

/// The unified diff from `running` to `edited` (3 lines of context); empty when equal.
pub fn diff(running: &str, edited: &str) -> Vec<DiffLine> {
    if running == edited {
        return Vec::new();
    }
    let d = similar::TextDiff::from_lines(running, edited);
    let text = d
        .unified_diff()
        .context_radius(3)
        .header("running", "edited")
        .to_string();
    text.lines()
        .map(|l| {
            let kind = if l.starts_with("+++") || l.starts_with("---") {
                'h'
            } else {
                l.chars().next().unwrap_or(' ')
            };
            DiffLine {
                kind,
                text: l.to_string(),
            }
        })
        .collect()
}

/// Line endings as a browser's textarea sends them (CRLF) back to the file's LF.
pub fn normalize(text: &str) -> String {
    let t = text.replace("\r\n", "\n");
    if t.ends_with('\n') || t.is_empty() {
        t
    } else {
        t + "\n"
    }
}

/// A short fingerprint of a file's text: an edit names the version it started from, so an
/// apply over a file changed meanwhile (by another operator, or by hand) is refused.
pub fn fingerprint(text: &str) -> String {
    format!("{:08x}-{}", crc32fast::hash(text.as_bytes()), text.len())
}

/// Where the version replaced by the last apply is kept, for roll back.
pub fn previous_path(config: &Path) -> PathBuf {
    let mut name = config.file_name().unwrap_or_default().to_os_string();
    name.push(".previous");
    config.with_file_name(name)
}

#[derive(Debug, thiserror::Error)]
pub enum ApplyError {
    #[error("{0}")]
    Io(String),
    #[error("the file changed on disk since this edit started; reload the page to edit the current version")]
    Changed,
    #[error("no previous version to roll back to ({0} does not exist)")]
    NoPrevious(String),
    #[error("the running server refused the new configuration and the file was put back: {0}")]
    Refused(String),
    #[error("the running server refused the new configuration ({0}) and the old file could not be put back: {1}")]
    NotRestored(String, String),
}

/// Writes `text` to `path` atomically, keeping its mode (0640 for a new file: the
/// configuration may hold secrets, and the `.previous` copy holds the same).
pub fn write_atomic(path: &Path, text: &str) -> std::io::Result<()> {
    crate::util::fs::write_atomic(path, text.as_bytes(), crate::util::fs::Mode::KeepOr(0o640))
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> ApplyError + '_ {
    move |e| ApplyError::Io(format!("{}: {e}", path.display()))
}

/// Replaces the config file with `text` (when it still is `expected`, by fingerprint) and
/// reloads. Success keeps the replaced text as the previous version; a refused reload puts
/// the file back.
pub async fn apply<F, Fut>(
    path: &Path,
    text: &str,
    expected: Option<&str>,
    reload: F,
) -> Result<(), ApplyError>
where
    F: FnOnce() -> Fut,
    Fut: std::future::Future<Output = Result<(), String>>,
{
    let old = std::fs::read_to_string(path).map_err(io(path))?;
    if expected.is_some_and(|e| e != fingerprint(&old)) {
        return Err(ApplyError::Changed);
    }
    write_atomic(path, text).map_err(io(path))?;
    match reload().await {
        Ok(()) => {
            let prev = previous_path(path);
            write_atomic(&prev, &old).map_err(io(&prev))?;
            Ok(())
        }
        Err(why) => match write_atomic(path, &old) {
            Ok(()) => Err(ApplyError::Refused(why)),
            Err(e) => Err(ApplyError::NotRestored(why, e.to_string())),
        },
    }
}

/// Puts the previous version back (the current one becomes the previous) and reloads.
pub async fn rollback<F, Fut>(path: &Path, reload: F) -> Result<(), ApplyError>
where
    F: FnOnce() -> Fut,
    Fut: std::future::Future<Output = Result<(), String>>,
{
    let prev = previous_path(path);
    let text = match std::fs::read_to_string(&prev) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(ApplyError::NoPrevious(prev.display().to_string()))
        }
        Err(e) => return Err(io(&prev)(e)),
    };
    apply(path, &text, None, reload).await
}

#[cfg(test)]
mod tests {
    use super::*;

    const OK: &str = "[server]\nhostname = \"gw.test\"\n[[listener]]\nname = \"l\"\naddress = \"127.0.0.1:2525\"\nstarttls = \"off\"\nroutes = [\"r\"]\n[[route]]\nname = \"r\"\ndomains = [\"*\"]\nreject = \"550 5.7.1 no\"\n";

    #[test]
    fn problems_come_with_their_lines() {
        let c = check(OK, "p.toml");
        assert!(c.errors.is_empty(), "{:?}", c.errors);
        let bad = OK.replace("routes = [\"r\"]", "routes = [\"nope\"]\ntypo = 1");
        let c = check(&bad, "p.toml");
        assert_eq!(c.errors.len(), 1, "{:#?}", c.errors);
        assert_eq!(c.errors[0].line, Some(7));
        assert!(c.errors[0]
            .to_string()
            .contains("no [[route]] named \"nope\""));
        assert_eq!(c.warnings.len(), 2, "the typo, and route r unused");
        assert_eq!(c.at_line(8).count(), 1, "the unknown key's warning");
        let c = check("[server\n", "p.toml");
        assert_eq!(c.errors[0].line, Some(1));
        assert!(c.errors[0].message.starts_with("TOML syntax"));
    }

    #[test]
    fn diff_marks_changes() {
        assert!(diff(OK, OK).is_empty());
        let d = diff(OK, &OK.replace("gw.test", "gw2.test"));
        assert!(d
            .iter()
            .any(|l| l.kind == '-' && l.text.contains("gw.test")));
        assert!(d
            .iter()
            .any(|l| l.kind == '+' && l.text.contains("gw2.test")));
        assert_eq!(d[0].kind, 'h');
        assert_eq!(normalize("a\r\nb"), "a\nb\n");
    }

    #[tokio::test]
    async fn apply_keeps_the_previous_version_and_puts_the_file_back_when_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("p.toml");
        std::fs::write(&path, "one\n").unwrap();
        let fp = fingerprint("one\n");
        apply(&path, "two\n", Some(&fp), || async { Ok(()) })
            .await
            .unwrap();
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "two\n");
        assert_eq!(
            std::fs::read_to_string(previous_path(&path)).unwrap(),
            "one\n"
        );
        // Started from "one": the file is "two" now.
        assert!(matches!(
            apply(&path, "three\n", Some(&fp), || async { Ok(()) }).await,
            Err(ApplyError::Changed)
        ));
        let r = apply(&path, "bad\n", None, || async { Err("no way".to_string()) }).await;
        assert!(
            matches!(r, Err(ApplyError::Refused(ref w)) if w == "no way"),
            "{r:?}"
        );
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "two\n", "put back");
        rollback(&path, || async { Ok(()) }).await.unwrap();
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "one\n");
        assert_eq!(
            std::fs::read_to_string(previous_path(&path)).unwrap(),
            "two\n"
        );
        let other = dir.path().join("q.toml");
        std::fs::write(&other, "x\n").unwrap();
        assert!(matches!(
            rollback(&other, || async { Ok(()) }).await,
            Err(ApplyError::NoPrevious(_))
        ));
    }
}
