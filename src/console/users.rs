//! Console users: `[console] users_file`, a TOML list of names, roles and Argon2id hashes,
//! written by `passerelle console user add/remove` and read by the console (again whenever
//! the file changes, so a user added or removed while `serve` runs takes effect at once).

use super::access::Role;
use crate::state::users_file::{self, UserRecord};
use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::Argon2;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

/// Shorter passwords are refused by `user add`.
pub const MIN_PASSWORD_LEN: usize = 10;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct User {
    pub name: String,
    pub role: Role,
    /// PHC string `$argon2id$v=19$m=...,t=...,p=...$salt$hash`.
    pub hash: String,
    /// The second factor's secret (base32), when enrolled.
    pub totp: Option<String>,
}

impl User {
    /// What a session remembers of the credential it was opened with: a digest of the
    /// password hash, so that a new password (or a new salt) ends the old sessions without
    /// the session table holding the hash itself.
    pub fn stamp(&self) -> String {
        // A new second-factor secret ends the old sessions too.
        let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
        ctx.update(self.hash.as_bytes());
        if let Some(t) = &self.totp {
            ctx.update(b"\0totp\0");
            ctx.update(t.as_bytes());
        }
        data_encoding::HEXLOWER.encode(&ctx.finish().as_ref()[..16])
    }
}

#[derive(Debug, thiserror::Error)]
pub enum UsersError {
    #[error("{path}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: {message}")]
    Invalid { path: String, message: String },
    #[error("{0:?} is not a user name: 1 to 64 of letters, digits, '.', '_', '-', '@'")]
    BadName(String),
    #[error("the password must have at least {MIN_PASSWORD_LEN} characters")]
    ShortPassword,
    #[error("hashing the password: {0}")]
    Hash(String),
}

pub fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-' | b'@'))
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> UsersError + '_ {
    move |source| UsersError::Io {
        path: path.display().to_string(),
        source,
    }
}

/// The users of `path`; none when the file does not exist yet.
pub fn load(path: &Path) -> Result<Vec<User>, UsersError> {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(io_err(path)(e)),
    };
    let invalid = |message: String| UsersError::Invalid {
        path: path.display().to_string(),
        message,
    };
    users_file::parse(&text)
        .map_err(invalid)?
        .into_iter()
        .map(|u| {
            let role = u
                .role
                .parse::<Role>()
                .map_err(|e| invalid(format!("user {}: {e}", u.name)))?;
            if !valid_name(&u.name) {
                return Err(invalid(format!("user {:?}: bad name", u.name)));
            }
            PasswordHash::new(&u.password_hash)
                .map_err(|e| invalid(format!("user {}: password_hash: {e}", u.name)))?;
            if u.totp
                .as_deref()
                .is_some_and(|t| super::totp::secret_bytes(t).is_none())
            {
                return Err(invalid(format!(
                    "user {}: totp: not a base32 secret",
                    u.name
                )));
            }
            Ok(User {
                name: u.name,
                role,
                hash: u.password_hash,
                totp: u.totp,
            })
        })
        .collect()
}

/// Writes `users` to `path` atomically, readable by its owner only (the hashes are secrets
/// too: an offline guess needs them).
pub fn save(path: &Path, users: &[User]) -> Result<(), UsersError> {
    users_file::write(path, &records(users)).map_err(io_err(path))
}

/// The users as the file (and the shared state) keeps them.
pub fn records(users: &[User]) -> Vec<UserRecord> {
    users
        .iter()
        .map(|u| UserRecord {
            name: u.name.clone(),
            role: u.role.to_string(),
            password_hash: u.hash.clone(),
            totp: u.totp.clone(),
        })
        .collect()
}

/// An Argon2id hash with the crate's defaults (19 MiB, 2 passes: OWASP's minimum).
pub fn hash_password(password: &str) -> Result<String, UsersError> {
    if password.chars().count() < MIN_PASSWORD_LEN {
        return Err(UsersError::ShortPassword);
    }
    let mut raw = [0u8; 16];
    getrandom::fill(&mut raw).map_err(|e| UsersError::Hash(e.to_string()))?;
    let salt = SaltString::encode_b64(&raw).map_err(|e| UsersError::Hash(e.to_string()))?;
    Argon2::default()
        .hash_password(password.as_bytes(), &salt)
        .map(|h| h.to_string())
        .map_err(|e| UsersError::Hash(e.to_string()))
}

/// Whether `password` matches `hash` (constant time inside the crate).
pub fn verify_password(hash: &str, password: &str) -> bool {
    PasswordHash::new(hash)
        .and_then(|h| Argon2::default().verify_password(password.as_bytes(), &h))
        .is_ok()
}

/// Creates or replaces `name`; returns true when it replaced one. `totp`: a new second
/// factor's secret; without one, a replaced user keeps its own (a new password does not
/// drop the second factor).
pub fn add(
    path: &Path,
    name: &str,
    role: Role,
    password: &str,
    totp: Option<String>,
) -> Result<bool, UsersError> {
    if !valid_name(name) {
        return Err(UsersError::BadName(name.to_string()));
    }
    let hash = hash_password(password)?;
    let mut users = load(path)?;
    let kept = users
        .iter()
        .find(|u| u.name == name)
        .and_then(|u| u.totp.clone());
    let user = User {
        name: name.to_string(),
        role,
        hash,
        totp: totp.or(kept),
    };
    let replaced = match users.iter_mut().find(|u| u.name == name) {
        Some(u) => {
            *u = user;
            true
        }
        None => {
            users.push(user);
            false
        }
    };
    save(path, &users)?;
    Ok(replaced)
}

/// Gives `name` a new second-factor secret; false when there is no such user.
pub fn set_totp(path: &Path, name: &str, secret: &str) -> Result<bool, UsersError> {
    let mut users = load(path)?;
    let Some(u) = users.iter_mut().find(|u| u.name == name) else {
        return Ok(false);
    };
    u.totp = Some(secret.to_string());
    save(path, &users)?;
    Ok(true)
}

/// Removes `name`; returns false when there was no such user.
pub fn remove(path: &Path, name: &str) -> Result<bool, UsersError> {
    let mut users = load(path)?;
    let before = users.len();
    users.retain(|u| u.name != name);
    if users.len() == before {
        return Ok(false);
    }
    save(path, &users)?;
    Ok(true)
}

/// Modification time and size: what tells that the file changed.
type FileStamp = (SystemTime, u64);

/// The users file as the running console sees it: read again when its modification time or
/// size changes; a file that no longer loads keeps the last good list (and says why).
pub struct UsersCache {
    path: PathBuf,
    state: Mutex<(Option<FileStamp>, Arc<Vec<User>>)>,
}

impl UsersCache {
    pub fn new(path: PathBuf) -> UsersCache {
        UsersCache {
            path,
            state: Mutex::new((None, Arc::new(Vec::new()))),
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The users as the file says now. The file is looked at (a `stat`, and a read when it
    /// changed) on a blocking thread, never the runtime's (issue 24 B.13: it was a `stat` on
    /// the runtime per request).
    pub async fn get(&self) -> Arc<Vec<User>> {
        let path = self.path.clone();
        let known = self.lock().0;
        let fresh = tokio::task::spawn_blocking(move || {
            let stamp = stamp_of(&path);
            if stamp.is_some() && stamp == known {
                return None;
            }
            Some((stamp, load(&path)))
        })
        .await
        .ok()
        .flatten();
        let mut st = self.lock();
        if let Some((stamp, loaded)) = fresh {
            match loaded {
                Ok(users) => *st = (stamp, Arc::new(users)),
                Err(e) => {
                    tracing::error!("console users file unusable, keeping the last good list: {e}");
                    st.0 = stamp;
                }
            }
        }
        st.1.clone()
    }

    pub async fn find(&self, name: &str) -> Option<User> {
        self.get().await.iter().find(|u| u.name == name).cloned()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, (Option<FileStamp>, Arc<Vec<User>>)> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

fn stamp_of(path: &Path) -> Option<FileStamp> {
    std::fs::metadata(path)
        .ok()
        .map(|m| (m.modified().unwrap_or(SystemTime::UNIX_EPOCH), m.len()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn add_replace_list_remove() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub/users.toml");
        assert!(load(&path).unwrap().is_empty(), "missing file: no users");
        assert!(!add(
            &path,
            "alice",
            Role::Operator,
            "correct horse battery",
            None
        )
        .unwrap());
        assert!(!add(
            &path,
            "bob",
            "establishment:chu-a".parse().unwrap(),
            "0123456789",
            None
        )
        .unwrap());
        assert!(add(&path, "alice", Role::Auditor, "another password", None).unwrap());
        let users = load(&path).unwrap();
        assert_eq!(users.len(), 2);
        assert_eq!(users[0].role, Role::Auditor);
        assert!(users[0].hash.starts_with("$argon2id$"), "{}", users[0].hash);
        assert!(verify_password(&users[0].hash, "another password"));
        assert!(!verify_password(&users[0].hash, "correct horse battery"));
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(
            std::fs::metadata(&path).unwrap().permissions().mode() & 0o777,
            0o600
        );
        assert!(remove(&path, "alice").unwrap());
        assert!(!remove(&path, "alice").unwrap());
        assert_eq!(load(&path).unwrap().len(), 1);
    }

    #[test]
    fn refuses_bad_input() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("users.toml");
        assert!(matches!(
            add(&path, "a b", Role::Operator, "0123456789", None),
            Err(UsersError::BadName(_))
        ));
        assert!(matches!(
            add(&path, "a", Role::Operator, "short", None),
            Err(UsersError::ShortPassword)
        ));
        assert!(!verify_password("not a hash", "x"));
        std::fs::write(
            &path,
            "[[user]]\nname = \"x\"\nrole = \"root\"\npassword_hash = \"$argon2id$v=19$m=19456,t=2,p=1$c2FsdHNhbHQ$aGFzaA\"\n",
        )
        .unwrap();
        let e = load(&path).unwrap_err().to_string();
        assert!(e.contains("user x: \"root\" is not a role"), "{e}");
    }

    #[tokio::test]
    async fn the_cache_follows_the_file_and_keeps_the_last_good_list() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("users.toml");
        let cache = UsersCache::new(path.clone());
        assert!(cache.get().await.is_empty());
        add(&path, "alice", Role::Operator, "0123456789", None).unwrap();
        assert!(cache.find("alice").await.is_some());
        std::fs::write(&path, "this is [ not toml").unwrap();
        assert!(cache.find("alice").await.is_some(), "last good list kept");
        std::fs::write(&path, "").unwrap();
        assert!(cache.find("alice").await.is_none());
    }
}
