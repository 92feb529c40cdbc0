//! The console users' file format (`[console] users_file`, and the local copy of a shared
//! state, `SPOOL/state/users.toml`): names, roles and Argon2id hashes, as TOML. The console
//! gives the roles their meaning; here they are text, so that the state can copy users
//! without knowing what a role allows.

use serde::{Deserialize, Serialize};
use std::path::Path;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UserRecord {
    pub name: String,
    pub role: String,
    pub password_hash: String,
    /// The second factor's secret (base32), when the user has one: a secret like the hash,
    /// kept in this 0600 file or the shared state, never logged.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub totp: Option<String>,
}

#[derive(Serialize, Deserialize, Default)]
struct FileFormat {
    #[serde(default, rename = "user")]
    users: Vec<UserRecord>,
}

/// The records of `text` (`shown` names it in the message).
pub fn parse(text: &str) -> Result<Vec<UserRecord>, String> {
    toml::from_str::<FileFormat>(text)
        .map(|f| f.users)
        .map_err(|e| e.to_string())
}

/// The file's text: a comment saying what wrote it, then one `[[user]]` each.
pub fn text(users: &[UserRecord]) -> Result<String, String> {
    let body = toml::to_string(&FileFormat {
        users: users.to_vec(),
    })
    .map_err(|e| e.to_string())?;
    Ok(format!(
        "# passerelle console users: written by `passerelle console user add/remove`.\n{body}"
    ))
}

/// Writes `users` to `path` atomically, readable by its owner only (the hashes are secrets
/// too: an offline guess needs them).
pub fn write(path: &Path, users: &[UserRecord]) -> std::io::Result<()> {
    let data = text(users).map_err(std::io::Error::other)?;
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir)?;
    }
    crate::util::fs::write_atomic(path, data.as_bytes(), crate::util::fs::Mode::Set(0o600))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_reads_back() {
        let u = vec![UserRecord {
            name: "alice".into(),
            role: "operator".into(),
            password_hash: "$argon2id$x".into(),
            totp: Some("GEZDGNBVGY3TQOJQGEZDGNBVGY3TQOJQ".into()),
        }];
        assert_eq!(parse(&text(&u).unwrap()).unwrap(), u);
        assert!(parse("").unwrap().is_empty());
        assert!(parse("[[user]]\nname = 1").is_err());
    }
}
