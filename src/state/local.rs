//! The local copy of the shared state, `SPOOL/state/`: `establishments.d/NAME.toml` (read by
//! the configuration as `establishments_dir` is with files), `users.toml` (the console's
//! users file) and `version` (the version applied and when). A gateway runs on this copy, so
//! it starts on the last state applied when the database is away. Files are written only
//! when their text changes, each atomically; the version last, so a crash in between applies
//! the same version again at the next start.

use super::pg::State;
use super::users_file;
use crate::util::fs::{write_atomic, Mode};
use std::path::{Path, PathBuf};

/// What applying a state changed here.
#[derive(Debug, Default, PartialEq)]
pub struct Applied {
    pub establishments: bool,
    pub users: bool,
}

pub fn establishments_dir(dir: &Path) -> PathBuf {
    dir.join("establishments.d")
}

pub fn users_file(dir: &Path) -> PathBuf {
    dir.join("users.toml")
}

fn version_file(dir: &Path) -> PathBuf {
    dir.join("version")
}

/// Writes `state` under `dir` (blocking: call it off the runtime's threads), and the version
/// applied.
pub fn apply(dir: &Path, state: &State, now_unix: i64) -> std::io::Result<Applied> {
    let applied = write_files(dir, state)?;
    write_atomic(
        &version_file(dir),
        format!("{} {now_unix}\n", state.version).as_bytes(),
        Mode::Set(0o640),
    )?;
    Ok(applied)
}

/// The files of `state` under `dir`: `establishments.d/NAME.toml` and `users.toml` (what
/// `state export` writes, and what the files kind reads).
pub fn write_files(dir: &Path, state: &State) -> std::io::Result<Applied> {
    let mut applied = Applied::default();
    let est = establishments_dir(dir);
    std::fs::create_dir_all(&est)?;
    let mut keep = std::collections::HashSet::new();
    for (name, text) in &state.establishments {
        if !crate::config::establishment::valid_name(name) {
            // The database's CHECK is the writers' validation; a name that is not one is
            // never turned into a path.
            tracing::error!(name = %name, "state: an establishment's name is not valid; skipped");
            continue;
        }
        let path = est.join(format!("{name}.toml"));
        keep.insert(path.clone());
        if std::fs::read_to_string(&path).ok().as_deref() != Some(text.as_str()) {
            write_atomic(&path, text.as_bytes(), Mode::Set(0o640))?;
            applied.establishments = true;
        }
    }
    for f in crate::config::establishment::dir_files(&est)? {
        if !keep.contains(&f) {
            std::fs::remove_file(&f)?;
            applied.establishments = true;
        }
    }
    let users = users_file(dir);
    let text = users_file::text(&state.users).map_err(std::io::Error::other)?;
    if std::fs::read_to_string(&users).ok().as_deref() != Some(text.as_str()) {
        users_file::write(&users, &state.users)?;
        applied.users = true;
    }
    Ok(applied)
}

/// The local copy as a state (the one in force here), when there is one.
pub fn read(dir: &Path) -> Option<State> {
    let (version, _) = applied_version(dir)?;
    let mut establishments = Vec::new();
    for f in crate::config::establishment::dir_files(&establishments_dir(dir)).ok()? {
        let name = f.file_stem()?.to_string_lossy().into_owned();
        establishments.push((name, std::fs::read_to_string(&f).ok()?));
    }
    let users = match std::fs::read_to_string(users_file(dir)) {
        Ok(t) => users_file::parse(&t).ok()?,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
        Err(_) => return None,
    };
    Some(State {
        version,
        establishments,
        users,
    })
}

/// The version applied here and when (Unix seconds), if any.
pub fn applied_version(dir: &Path) -> Option<(i64, i64)> {
    let text = std::fs::read_to_string(version_file(dir)).ok()?;
    let (v, at) = text.trim().split_once(' ')?;
    Some((v.parse().ok()?, at.parse().ok()?))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::users_file::UserRecord;

    #[test]
    fn writes_what_changed_and_removes_what_left() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = State {
            version: 3,
            establishments: vec![
                ("chu-a".into(), "[establishment]\nname = \"chu-a\"\n".into()),
                ("chu-b".into(), "[establishment]\nname = \"chu-b\"\n".into()),
            ],
            users: vec![UserRecord {
                name: "alice".into(),
                role: "operator".into(),
                password_hash: "h".into(),
                totp: None,
            }],
        };
        let a = apply(dir.path(), &s, 100).unwrap();
        assert_eq!(
            a,
            Applied {
                establishments: true,
                users: true
            }
        );
        assert_eq!(applied_version(dir.path()), Some((3, 100)));
        s.version = 4;
        assert_eq!(apply(dir.path(), &s, 101).unwrap(), Applied::default());
        assert_eq!(read(dir.path()), Some(s.clone()), "read back as written");
        s.establishments.remove(0);
        s.establishments.push(("../x".into(), String::new()));
        let a = apply(dir.path(), &s, 102).unwrap();
        assert!(a.establishments && !a.users);
        let files =
            crate::config::establishment::dir_files(&establishments_dir(dir.path())).unwrap();
        assert_eq!(files.len(), 1);
        assert!(files[0].ends_with("chu-b.toml"));
        assert!(!dir.path().join("x.toml").exists());
    }
}
