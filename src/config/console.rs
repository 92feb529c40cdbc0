//! `[console]`: the admin web console's listener, users file and session settings.
//!
//! In its own file so the console's settings and their checks stay beside each other.

use super::values::de_duration;
use super::{Config, Problem};
use serde::Deserialize;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct ConsoleConfig {
    /// HTTPS, or plain HTTP on a loopback address only.
    #[serde(deserialize_with = "super::de_socket")]
    pub address: SocketAddr,
    /// Users with their Argon2id hashes, written by `passerelle console user add`.
    #[serde(default = "default_users_file")]
    pub users_file: PathBuf,
    /// A session unused this long is closed (the user logs in again).
    #[serde(default = "default_idle_timeout", deserialize_with = "de_duration")]
    pub idle_timeout: Duration,
    /// The console's own certificate (PEM chain) and key; `[tls]`'s when absent. On a
    /// loopback address without its own certificate the console speaks plain HTTP.
    #[serde(default)]
    pub certificate: Option<PathBuf>,
    #[serde(default)]
    pub private_key: Option<PathBuf>,
    /// The address browsers use when the console is behind a TLS-terminating reverse proxy
    /// (`https://console.example.fr`): the origin a form must come from, and HTTPS for the
    /// cookies and HSTS although the console itself speaks plain HTTP to the proxy.
    #[serde(default)]
    pub public_url: Option<String>,
    /// Roles that must give a TOTP code (RFC 6238) after their password: `operator`,
    /// `auditor`, `establishment` (every establishment's administrators). A user created
    /// with `--totp` gives one whatever its role.
    #[serde(default)]
    pub second_factor: Vec<String>,
}

impl ConsoleConfig {
    /// `public_url` as an origin (`scheme://host[:port]`, lowercase, no trailing slash), or
    /// why it is not one.
    pub fn public_origin(&self) -> Option<Result<String, String>> {
        let u = self.public_url.as_deref()?.trim();
        let lower = u.to_ascii_lowercase();
        let rest = lower
            .strip_prefix("https://")
            .map(|r| ("https", r))
            .or_else(|| lower.strip_prefix("http://").map(|r| ("http", r)));
        Some(match rest {
            Some((scheme, r)) => {
                let host = r.strip_suffix('/').unwrap_or(r);
                if host.is_empty()
                    || host.contains(['/', '?', '#', '@', ' '])
                    || host.chars().any(|c| c.is_control())
                {
                    Err(format!(
                        "{u:?}: scheme and host only (https://console.example.fr[:port])"
                    ))
                } else {
                    Ok(format!("{scheme}://{host}"))
                }
            }
            None => Err(format!("{u:?}: must begin with https:// (or http://)")),
        })
    }
}

fn default_users_file() -> PathBuf {
    PathBuf::from("config/users.toml")
}

fn default_idle_timeout() -> Duration {
    Duration::from_secs(30 * 60)
}

/// How the console listener speaks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConsoleTransport {
    /// Plain HTTP: loopback only.
    Plain,
    /// HTTPS with the console's own certificate and key.
    OwnCertificate { certificate: PathBuf, key: PathBuf },
    /// HTTPS with the gateway's `[tls]` certificate.
    GatewayCertificate,
}

impl ConsoleConfig {
    /// Plain HTTP on loopback unless the console has its own certificate; HTTPS elsewhere
    /// (with `[tls]` when it has none). `None` when HTTPS is needed and nothing provides it.
    pub fn transport(&self, gateway_tls: bool) -> Option<ConsoleTransport> {
        match (&self.certificate, &self.private_key) {
            (Some(c), Some(k)) => Some(ConsoleTransport::OwnCertificate {
                certificate: c.clone(),
                key: k.clone(),
            }),
            _ if self.address.ip().is_loopback() => Some(ConsoleTransport::Plain),
            _ if gateway_tls => Some(ConsoleTransport::GatewayCertificate),
            _ => None,
        }
    }
}

/// The console's cross-section checks.
pub(super) fn validate(c: &Config, p: &mut Vec<Problem>) {
    let Some(k) = &c.console else { return };
    match (&k.certificate, &k.private_key) {
        (Some(_), None) => p.push(Problem::error(
            "console.private_key",
            "needed with console.certificate",
        )),
        (None, Some(_)) => p.push(Problem::error(
            "console.certificate",
            "needed with console.private_key",
        )),
        _ => {}
    }
    if let Some(Err(e)) = k.public_origin() {
        p.push(Problem::error("console.public_url", e));
    }
    if k.transport(c.tls.is_some()).is_none() {
        p.push(Problem::error(
            "console.address",
            format!(
                "{} is not a loopback address: the console needs HTTPS (a [tls] section or console.certificate)",
                k.address
            ),
        ));
    }
    for r in &k.second_factor {
        if !matches!(r.as_str(), "operator" | "auditor" | "establishment") {
            p.push(Problem::error(
                "console.second_factor",
                format!("{r:?} is not a role: operator, auditor or establishment"),
            ));
        }
    }
    if k.idle_timeout < Duration::from_secs(60) {
        p.push(Problem::error("console.idle_timeout", "at least 1m"));
    }
    if let Some(admin) = c.server.admin {
        if super::validate::same_socket(admin, k.address) {
            p.push(Problem::error(
                "console.address",
                format!("{} is also the address of server.admin", k.address),
            ));
        }
    }
    if let Some(l) = c
        .listener
        .iter()
        .find(|l| super::validate::same_socket(l.address, k.address))
    {
        p.push(Problem::error(
            "console.address",
            format!("{} is also the address of listener {}", k.address, l.name),
        ));
    }
}

#[cfg(test)]
mod tests {
    use super::super::tests::MIN;
    use super::super::{Config, Severity};
    use super::*;

    fn errors(text: &str) -> Vec<String> {
        let c = match Config::from_toml_str(text, "t.toml") {
            Ok(p) => p.config,
            Err(e) => panic!("{e}"),
        };
        c.validate()
            .into_iter()
            .filter(|p| p.severity == Severity::Error)
            .map(|p| format!("{}: {}", p.key, p.message))
            .collect()
    }

    #[test]
    fn plain_http_only_on_loopback() {
        let ok = format!("{MIN}[console]\naddress = \"127.0.0.1:8026\"\n");
        assert!(errors(&ok).is_empty(), "{:?}", errors(&ok));
        let c = Config::from_toml_str(&ok, "t").unwrap().config;
        let k = c.console.unwrap();
        assert_eq!(k.users_file, PathBuf::from("config/users.toml"));
        assert_eq!(k.idle_timeout, Duration::from_secs(1800));
        assert_eq!(k.transport(false), Some(ConsoleTransport::Plain));
        assert_eq!(
            k.transport(true),
            Some(ConsoleTransport::Plain),
            "loopback stays plain"
        );

        let outside = format!("{MIN}[console]\naddress = \"192.0.2.1:8026\"\n");
        let e = errors(&outside);
        assert_eq!(e.len(), 1, "{e:?}");
        assert!(e[0].starts_with("console.address: 192.0.2.1:8026 is not a loopback"));
        let c = Config::from_toml_str(&outside, "t").unwrap().config;
        assert_eq!(
            c.console.unwrap().transport(true),
            Some(ConsoleTransport::GatewayCertificate)
        );
    }

    #[test]
    fn own_certificate_needs_both_files_and_addresses_do_not_collide() {
        let half = format!(
            "{MIN}[console]\naddress = \"127.0.0.1:8026\"\ncertificate = \"c.pem\"\nidle_timeout = \"10s\"\n"
        );
        let e = errors(&half);
        assert!(
            e.contains(&"console.private_key: needed with console.certificate".to_string()),
            "{e:?}"
        );
        assert!(
            e.contains(&"console.idle_timeout: at least 1m".to_string()),
            "{e:?}"
        );
        let clash = format!("{MIN}[console]\naddress = \"127.0.0.1:2525\"\n");
        let e = errors(&clash);
        assert_eq!(
            e,
            vec!["console.address: 127.0.0.1:2525 is also the address of listener etab"]
        );
    }
}
