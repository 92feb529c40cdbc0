//! Typed configuration: one TOML file (plus `PASSERELLE__SECTION__KEY` environment
//! overrides), deserialised into structs that document the keys, then validated as a whole so
//! that `check-config`, `serve` and a reload all refuse the same mistakes with the same words.

use serde::{Deserialize, Deserializer};
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Default location, relative to the working directory (the repository root in development).
pub const DEFAULT_CONFIG: &str = "config/passerelle.toml";

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{path}: {source}")]
    Load {
        path: String,
        #[source]
        source: config::ConfigError,
    },
    #[error("{path}: cannot read: {source}")]
    Read {
        path: String,
        #[source]
        source: std::io::Error,
    },
    /// Every problem found by validation, one line each, naming the key.
    #[error("{}", .0.join("\n"))]
    Invalid(Vec<String>),
}

#[derive(Debug, Clone, Deserialize)]
pub struct Config {
    pub server: ServerConfig,
    #[serde(default)]
    pub tls: Option<TlsConfig>,
    #[serde(default)]
    pub listener: Vec<ListenerConfig>,
    #[serde(default)]
    pub route: Vec<RouteConfig>,
    #[serde(default)]
    pub transport: BTreeMap<String, TransportConfig>,
    #[serde(default)]
    pub queue: QueueConfig,
    #[serde(default)]
    pub smtp: SmtpLimits,
    #[serde(default)]
    pub dns: DnsConfig,
    #[serde(default)]
    pub whitelist: Option<WhitelistConfig>,
    #[serde(default)]
    pub directory: DirectoryConfig,
    /// The message journal (`track`, `stats`).
    #[serde(default)]
    pub journal: crate::journal::config::JournalConfig,
    /// Where the file was read from (not a key): used in messages.
    #[serde(skip)]
    pub source: PathBuf,
}

#[derive(Debug, Clone, Deserialize)]
pub struct ServerConfig {
    /// Our name: banner, EHLO, Received headers, DSN Reporting-MTA.
    pub hostname: String,
    /// The durable queue directory.
    #[serde(default = "default_spool")]
    pub spool: PathBuf,
    /// HTTP admin endpoint (/metrics, /healthz, /readyz); loopback by default.
    #[serde(default)]
    pub admin: Option<String>,
}

fn default_spool() -> PathBuf {
    PathBuf::from("var/spool")
}

#[derive(Debug, Clone, Deserialize)]
pub struct TlsConfig {
    /// PEM chain, leaf first: presented as server and as client certificate.
    pub certificate: PathBuf,
    pub private_key: PathBuf,
    /// PEM roots accepted for peers (IGC-Santé in production).
    #[serde(default)]
    pub trust_anchors: Option<PathBuf>,
    /// CRLs, PEM or DER.
    #[serde(default)]
    pub crls: Vec<PathBuf>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum StartTls {
    Off,
    Offer,
    Require,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ClientCert {
    Off,
    Request,
    Require,
}

#[derive(Debug, Clone, Deserialize)]
pub struct ListenerConfig {
    pub name: String,
    pub address: String,
    /// CIDRs allowed to connect; empty means everyone (a trust-space listener).
    #[serde(default)]
    pub clients: Vec<String>,
    #[serde(default = "default_starttls")]
    pub starttls: StartTls,
    #[serde(default = "default_client_cert")]
    pub client_certificate: ClientCert,
    /// Ordered route names: the first whose domains match a recipient wins.
    #[serde(default)]
    pub routes: Vec<String>,
    /// Subject DNs (RFC 4514) of client certificates that may relay from outside `clients`
    /// (with `client_certificate = "request"` or `"require"`): an establishment MTA
    /// authenticated by its certificate instead of its address.
    #[serde(default)]
    pub client_dns: Vec<String>,
}

fn default_starttls() -> StartTls {
    StartTls::Offer
}
fn default_client_cert() -> ClientCert {
    ClientCert::Off
}

#[derive(Debug, Clone, Deserialize)]
pub struct RouteConfig {
    pub name: String,
    /// Patterns: `exact.domain`, `*.suffix` (strict subdomains), `*`, `@whitelist`.
    pub domains: Vec<String>,
    #[serde(default)]
    pub transport: Option<String>,
    /// A refusal route: `"550 5.7.1 text"`, answered at RCPT.
    #[serde(default)]
    pub reject: Option<String>,
    /// The recipient domain must be declared in the ANS whitelist.
    #[serde(default)]
    pub whitelist: bool,
    /// The recipient must exist in the directory.
    #[serde(default)]
    pub directory: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TransportKind {
    Relay,
    Mx,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TlsPolicy {
    None,
    Opportunistic,
    Required,
    Mutual,
}

impl TlsPolicy {
    pub fn as_str(self) -> &'static str {
        match self {
            TlsPolicy::None => "none",
            TlsPolicy::Opportunistic => "opportunistic",
            TlsPolicy::Required => "required",
            TlsPolicy::Mutual => "mutual",
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
pub struct TransportConfig {
    pub kind: TransportKind,
    /// `host:port` for `relay`.
    #[serde(default)]
    pub next_hop: Option<String>,
    /// Port for `mx` deliveries.
    #[serde(default = "default_port")]
    pub port: u16,
    #[serde(default = "default_tls_policy")]
    pub tls: TlsPolicy,
}

fn default_port() -> u16 {
    25
}
fn default_tls_policy() -> TlsPolicy {
    TlsPolicy::Opportunistic
}

#[derive(Debug, Clone, Deserialize)]
#[serde(default)]
pub struct QueueConfig {
    /// Successive retry intervals; the last one repeats.
    #[serde(deserialize_with = "de_durations")]
    pub retry: Vec<Duration>,
    /// After this, undelivered recipients bounce.
    #[serde(deserialize_with = "de_duration")]
    pub lifetime: Duration,
    /// One delay DSN after this; zero disables.
    #[serde(deserialize_with = "de_duration")]
    pub delay_warning: Duration,
    /// Simultaneous deliveries to one destination (Postfix: default_destination_concurrency_limit).
    pub destination_concurrency: usize,
    /// Simultaneous deliveries in all.
    pub max_deliveries: usize,
    #[serde(deserialize_with = "de_duration")]
    pub connect_timeout: Duration,
    /// Per SMTP command on the client side.
    #[serde(deserialize_with = "de_duration")]
    pub command_timeout: Duration,
    /// How long an idle outbound connection is kept for reuse.
    #[serde(deserialize_with = "de_duration")]
    pub connection_cache_time: Duration,
    /// Messages per reused connection before a new one is opened.
    pub connection_reuse_limit: usize,
}

impl Default for QueueConfig {
    fn default() -> Self {
        let m = |n: u64| Duration::from_secs(60 * n);
        QueueConfig {
            retry: vec![m(1), m(5), m(15), m(30), m(60), m(120), m(240)],
            lifetime: m(5 * 24 * 60),
            delay_warning: m(240),
            destination_concurrency: 20,
            max_deliveries: 200,
            connect_timeout: Duration::from_secs(30),
            command_timeout: Duration::from_secs(300),
            connection_cache_time: Duration::from_secs(2),
            connection_reuse_limit: 100,
        }
    }
}

impl QueueConfig {
    /// The wait after `attempts` failed attempts (1-based).
    pub fn retry_after(&self, attempts: u32) -> Duration {
        let i = (attempts.max(1) as usize - 1).min(self.retry.len().saturating_sub(1));
        self.retry
            .get(i)
            .copied()
            .unwrap_or(Duration::from_secs(300))
    }
}

/// SMTP server limits, with Postfix-like names and defaults.
#[derive(Debug, Clone, Deserialize)]
#[serde(default)]
pub struct SmtpLimits {
    /// Postfix message_size_limit (bytes).
    pub message_size_limit: usize,
    /// Postfix smtpd_recipient_limit.
    pub recipient_limit: usize,
    /// Longest command line, CRLF included (RFC 5321 asks at least 512).
    pub command_line_limit: usize,
    /// Longest text line in DATA, CRLF included (RFC 5321: 1000).
    pub line_length_limit: usize,
    /// Idle time allowed per read (Postfix smtpd_timeout).
    #[serde(deserialize_with = "de_duration")]
    pub timeout: Duration,
    /// Bytes per second a client must sustain during DATA (Postfix smtpd_min_data_rate).
    pub min_data_rate: usize,
    /// Errors before disconnection (Postfix smtpd_hard_error_limit).
    pub hard_error_limit: u32,
    /// NOOP/RSET/VRFY/HELP/EHLO allowed per session (Postfix smtpd_junk_command_limit).
    pub junk_command_limit: u32,
    /// Simultaneous connections from one IP (Postfix smtpd_client_connection_count_limit).
    pub client_connection_limit: usize,
    /// Simultaneous sessions in all, per listener.
    pub max_connections: usize,
    /// Received headers at which a message is a loop (Postfix hopcount_limit).
    pub hop_count_limit: usize,
}

impl Default for SmtpLimits {
    fn default() -> Self {
        SmtpLimits {
            message_size_limit: 25 * 1024 * 1024,
            recipient_limit: 1000,
            command_line_limit: 2048,
            line_length_limit: 1000,
            timeout: Duration::from_secs(300),
            min_data_rate: 500,
            hard_error_limit: 20,
            junk_command_limit: 100,
            client_connection_limit: 50,
            max_connections: 10_000,
            hop_count_limit: 50,
        }
    }
}

#[derive(Debug, Clone, Default, Deserialize)]
pub struct DnsConfig {
    /// `ip:port` resolvers; the system resolver when empty.
    #[serde(default)]
    pub nameservers: Vec<String>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct WhitelistConfig {
    pub file: PathBuf,
    #[serde(default = "default_whitelist_reload", deserialize_with = "de_duration")]
    pub reload: Duration,
}

fn default_whitelist_reload() -> Duration {
    Duration::from_secs(3600)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum DirectoryKind {
    Extract,
    Ldap,
    #[default]
    None,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(default)]
pub struct DirectoryConfig {
    pub kind: DirectoryKind,
    pub file: Option<PathBuf>,
    pub url: Option<String>,
    pub base: Option<String>,
    pub filter: String,
    pub bind_dn: Option<String>,
    pub bind_password: Option<String>,
    #[serde(deserialize_with = "de_duration")]
    pub cache_ttl: Duration,
    #[serde(deserialize_with = "de_duration")]
    pub negative_ttl: Duration,
    /// Cached answers at most.
    pub cache_size: usize,
    /// Connect and per-request timeout.
    #[serde(deserialize_with = "de_duration")]
    pub timeout: Duration,
    /// Connections to the LDAP server.
    pub pool_size: usize,
    /// StartTLS on an `ldap://` URL, verified against `[tls].trust_anchors`.
    pub starttls: bool,
    /// Attribute holding the BAL type (written by `directory import`).
    pub bal_type_attribute: String,
}

impl Default for DirectoryConfig {
    fn default() -> Self {
        DirectoryConfig {
            kind: DirectoryKind::None,
            file: None,
            url: None,
            base: None,
            filter: "(mail={address})".into(),
            bind_dn: None,
            bind_password: None,
            cache_ttl: Duration::from_secs(600),
            negative_ttl: Duration::from_secs(60),
            cache_size: 100_000,
            timeout: Duration::from_secs(5),
            pool_size: 4,
            starttls: false,
            bal_type_attribute: "employeeType".into(),
        }
    }
}

/// Parses `"90s"`, `"5m"`, `"4h"`, `"5d"`, and `"0"`.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let t = s.trim();
    if t == "0" {
        return Ok(Duration::ZERO);
    }
    humantime::parse_duration(t).map_err(|e| format!("invalid duration {s:?}: {e}"))
}

/// Accepts a string duration or a bare number of seconds (handy from environment overrides).
#[derive(Deserialize)]
#[serde(untagged)]
enum RawDuration {
    Text(String),
    Secs(u64),
}

fn de_duration<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    match RawDuration::deserialize(d)? {
        RawDuration::Text(s) => parse_duration(&s).map_err(serde::de::Error::custom),
        RawDuration::Secs(n) => Ok(Duration::from_secs(n)),
    }
}

fn de_durations<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<Duration>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum OneOrMany {
        Many(Vec<String>),
        /// From the environment: `PASSERELLE__QUEUE__RETRY="1s,5s"`.
        One(String),
    }
    let items = match OneOrMany::deserialize(d)? {
        OneOrMany::Many(v) => v,
        OneOrMany::One(s) => s.split(',').map(|x| x.trim().to_string()).collect(),
    };
    items
        .iter()
        .map(|s| parse_duration(s).map_err(serde::de::Error::custom))
        .collect()
}

impl Config {
    /// Reads, overrides from the environment, deserialises and validates.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let cfg = Self::load_unvalidated(path)?;
        let problems = cfg.validate();
        if problems.is_empty() {
            Ok(cfg)
        } else {
            Err(ConfigError::Invalid(problems))
        }
    }

    pub fn load_unvalidated(path: &Path) -> Result<Config, ConfigError> {
        let shown = path.display().to_string();
        // Read ourselves first so a missing file is a clear one-line error.
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: shown.clone(),
            source,
        })?;
        Self::from_toml_str(&text, &shown).map(|mut c| {
            c.source = path.to_path_buf();
            c
        })
    }

    pub fn from_toml_str(text: &str, shown: &str) -> Result<Config, ConfigError> {
        let load = |source| ConfigError::Load {
            path: shown.to_string(),
            source,
        };
        let built = config::Config::builder()
            .add_source(config::File::from_str(text, config::FileFormat::Toml))
            .add_source(
                config::Environment::with_prefix("PASSERELLE")
                    .prefix_separator("__")
                    .separator("__")
                    .try_parsing(true),
            )
            .build()
            .map_err(load)?;
        built.try_deserialize::<Config>().map_err(load)
    }

    /// Every problem, one line each, naming its key. Empty when the config is usable.
    pub fn validate(&self) -> Vec<String> {
        let mut p = Vec::new();
        if self.server.hostname.trim().is_empty() {
            p.push("server.hostname: must not be empty".into());
        }
        if let Some(a) = &self.server.admin {
            if a.parse::<SocketAddr>().is_err() {
                p.push(format!("server.admin: {a:?} is not ip:port"));
            }
        }
        if self.listener.is_empty() {
            p.push("listener: at least one [[listener]] is needed".into());
        }
        let route_names: Vec<&str> = self.route.iter().map(|r| r.name.as_str()).collect();
        for (i, l) in self.listener.iter().enumerate() {
            let key = format!("listener[{i}] ({})", l.name);
            if l.address.parse::<SocketAddr>().is_err() {
                p.push(format!("{key}.address: {:?} is not ip:port", l.address));
            }
            for c in &l.clients {
                if crate::policy::parse_cidr(c).is_none() {
                    p.push(format!("{key}.clients: {c:?} is not a CIDR or IP address"));
                }
            }
            for r in &l.routes {
                if !route_names.contains(&r.as_str()) {
                    p.push(format!("{key}.routes: no [[route]] named {r:?}"));
                }
            }
            if l.routes.is_empty() {
                p.push(format!(
                    "{key}.routes: empty, every recipient would be refused"
                ));
            }
            if (l.starttls != StartTls::Off || l.client_certificate != ClientCert::Off)
                && self.tls.is_none()
            {
                p.push(format!("{key}.starttls: needs a [tls] section"));
            }
            if l.client_certificate != ClientCert::Off && l.starttls == StartTls::Off {
                p.push(format!(
                    "{key}.client_certificate: needs starttls = \"offer\" or \"require\""
                ));
            }
            for dn in &l.client_dns {
                if let Err(e) = crate::dn::Dn::parse_rfc4514(dn) {
                    p.push(format!("{key}.client_dns: {dn:?}: {e}"));
                }
            }
            if !l.client_dns.is_empty() && l.client_certificate == ClientCert::Off {
                p.push(format!(
                    "{key}.client_dns: needs client_certificate = \"request\" or \"require\""
                ));
            }
            if self.listener[..i].iter().any(|o| o.name == l.name) {
                p.push(format!("{key}.name: duplicate listener name"));
            }
        }
        for (i, r) in self.route.iter().enumerate() {
            let key = format!("route[{i}] ({})", r.name);
            if r.domains.is_empty() {
                p.push(format!("{key}.domains: empty"));
            }
            for d in &r.domains {
                if let Err(e) = crate::policy::DomainPattern::parse(d) {
                    p.push(format!("{key}.domains: {e}"));
                }
            }
            match (&r.transport, &r.reject) {
                (Some(_), Some(_)) => {
                    p.push(format!("{key}: has both transport and reject; keep one"))
                }
                (None, None) => p.push(format!("{key}: needs a transport or a reject reply")),
                (Some(t), None) if !self.transport.contains_key(t) => {
                    p.push(format!("{key}.transport: no [transport.{t}]"))
                }
                (None, Some(rej)) => {
                    if let Err(e) = crate::policy::parse_reply(rej) {
                        p.push(format!("{key}.reject: {e}"));
                    }
                }
                _ => {}
            }
            if r.whitelist && self.whitelist.is_none() {
                p.push(format!("{key}.whitelist: needs a [whitelist] section"));
            }
            if r.directory && self.directory.kind == DirectoryKind::None {
                p.push(format!(
                    "{key}.directory: directory.kind is \"none\"; every recipient would be unknown"
                ));
            }
            if route_names[..i].contains(&r.name.as_str()) {
                p.push(format!("{key}.name: duplicate route name"));
            }
        }
        for (name, t) in &self.transport {
            let key = format!("transport.{name}");
            match t.kind {
                TransportKind::Relay => match &t.next_hop {
                    None => p.push(format!("{key}.next_hop: required for kind = \"relay\"")),
                    Some(h) if crate::delivery::split_host_port(h).is_none() => {
                        p.push(format!("{key}.next_hop: {h:?} is not host:port"))
                    }
                    _ => {}
                },
                TransportKind::Mx => {}
            }
            if matches!(t.tls, TlsPolicy::Required | TlsPolicy::Mutual) && self.tls.is_none() {
                p.push(format!("{key}.tls: needs a [tls] section"));
            }
        }
        if self.queue.retry.is_empty() {
            p.push("queue.retry: at least one interval".into());
        }
        if self.queue.retry.iter().any(|d| d.is_zero()) {
            p.push("queue.retry: intervals must be positive".into());
        }
        if self.queue.destination_concurrency == 0 || self.queue.max_deliveries == 0 {
            p.push("queue.destination_concurrency/max_deliveries: must be at least 1".into());
        }
        if self.smtp.command_line_limit < 512 {
            p.push("smtp.command_line_limit: RFC 5321 needs at least 512".into());
        }
        if self.smtp.line_length_limit < 1000 {
            p.push("smtp.line_length_limit: RFC 5321 needs at least 1000".into());
        }
        for (i, ns) in self.dns.nameservers.iter().enumerate() {
            if ns.parse::<SocketAddr>().is_err() && ns.parse::<std::net::IpAddr>().is_err() {
                p.push(format!("dns.nameservers[{i}]: {ns:?} is not ip or ip:port"));
            }
        }
        if let Some(tls) = &self.tls {
            for (k, f) in [
                ("tls.certificate", Some(&tls.certificate)),
                ("tls.private_key", Some(&tls.private_key)),
                ("tls.trust_anchors", tls.trust_anchors.as_ref()),
            ] {
                if let Some(f) = f {
                    if !f.exists() {
                        p.push(format!("{k}: {} does not exist", f.display()));
                    }
                }
            }
        }
        p.extend(self.journal.validate());
        match self.directory.kind {
            DirectoryKind::Extract if self.directory.file.is_none() => {
                p.push("directory.file: required for kind = \"extract\"".into())
            }
            DirectoryKind::Ldap => {
                match &self.directory.url {
                    None => p.push("directory.url: required for kind = \"ldap\"".into()),
                    Some(u)
                        if !(u.starts_with("ldap://")
                            || u.starts_with("ldaps://")
                            || u.starts_with("ldapi://")) =>
                    {
                        p.push(format!(
                            "directory.url: {u:?} is not an ldap://, ldaps:// or ldapi:// URL"
                        ))
                    }
                    _ => {}
                }
                if self.directory.base.is_none() {
                    p.push("directory.base: required for kind = \"ldap\"".into());
                }
                if !self.directory.filter.contains("{address}") {
                    p.push("directory.filter: must contain {address}".into());
                }
                let tls_url = self
                    .directory
                    .url
                    .as_deref()
                    .is_some_and(|u| u.starts_with("ldaps://"));
                if (self.directory.starttls || tls_url)
                    && self
                        .tls
                        .as_ref()
                        .and_then(|t| t.trust_anchors.as_ref())
                        .is_none()
                {
                    p.push(
                        "directory.starttls: needs tls.trust_anchors to verify the LDAP server"
                            .into(),
                    );
                }
            }
            _ => {}
        }
        p
    }

    pub fn listener(&self, name: &str) -> Option<&ListenerConfig> {
        self.listener.iter().find(|l| l.name == name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIN: &str = r#"
[server]
hostname = "gw.test"
spool = "/tmp/x"
[[listener]]
name = "etab"
address = "127.0.0.1:2525"
clients = ["127.0.0.0/8"]
starttls = "off"
routes = ["a", "others"]
[[route]]
name = "a"
domains = ["*.mssante.fr"]
transport = "t"
[[route]]
name = "others"
domains = ["*"]
reject = "550 5.7.1 no"
[transport.t]
kind = "relay"
next_hop = "127.0.0.1:10026"
tls = "none"
[queue]
retry = ["1s", "5m"]
lifetime = "5d"
delay_warning = "0"
"#;

    #[test]
    fn parses_minimal() {
        let c = Config::from_toml_str(MIN, "t").unwrap();
        assert!(c.validate().is_empty(), "{:?}", c.validate());
        assert_eq!(c.queue.retry_after(1), Duration::from_secs(1));
        assert_eq!(c.queue.retry_after(9), Duration::from_secs(300));
        assert_eq!(c.queue.delay_warning, Duration::ZERO);
        assert_eq!(c.smtp.recipient_limit, 1000);
    }

    #[test]
    fn reports_dangling_references() {
        let bad = MIN.replace("transport = \"t\"", "transport = \"nope\"");
        let c = Config::from_toml_str(&bad, "t").unwrap();
        let p = c.validate();
        assert!(p.iter().any(|l| l.contains("no [transport.nope]")), "{p:?}");
    }

    #[test]
    fn bad_duration_is_an_error() {
        let bad = MIN.replace("lifetime = \"5d\"", "lifetime = \"five days\"");
        assert!(Config::from_toml_str(&bad, "t").is_err());
    }
}

/// Keys each section accepts; anything else is reported as a probable typo.
const KNOWN: &[(&str, &[&str])] = &[
    (
        "",
        &[
            "server",
            "tls",
            "listener",
            "route",
            "transport",
            "queue",
            "smtp",
            "dns",
            "whitelist",
            "directory",
            "journal",
        ],
    ),
    ("journal", crate::journal::config::KNOWN_KEYS),
    ("server", &["hostname", "spool", "admin"]),
    (
        "tls",
        &["certificate", "private_key", "trust_anchors", "crls"],
    ),
    (
        "listener",
        &[
            "name",
            "address",
            "clients",
            "starttls",
            "client_certificate",
            "routes",
            "client_dns",
        ],
    ),
    (
        "route",
        &[
            "name",
            "domains",
            "transport",
            "reject",
            "whitelist",
            "directory",
        ],
    ),
    ("transport.*", &["kind", "next_hop", "port", "tls"]),
    (
        "queue",
        &[
            "retry",
            "lifetime",
            "delay_warning",
            "destination_concurrency",
            "max_deliveries",
            "connect_timeout",
            "command_timeout",
            "connection_cache_time",
            "connection_reuse_limit",
        ],
    ),
    (
        "smtp",
        &[
            "message_size_limit",
            "recipient_limit",
            "command_line_limit",
            "line_length_limit",
            "timeout",
            "min_data_rate",
            "hard_error_limit",
            "junk_command_limit",
            "client_connection_limit",
            "max_connections",
            "hop_count_limit",
        ],
    ),
    ("dns", &["nameservers"]),
    ("whitelist", &["file", "reload"]),
    (
        "directory",
        &[
            "kind",
            "file",
            "url",
            "base",
            "filter",
            "bind_dn",
            "bind_password",
            "cache_ttl",
            "negative_ttl",
            "cache_size",
            "timeout",
            "pool_size",
            "starttls",
            "bal_type_attribute",
        ],
    ),
];

/// Warnings for keys the gateway does not know (usually typos), each naming its key path.
pub fn unknown_keys(text: &str) -> Vec<String> {
    let Ok(root) = text.parse::<toml::Table>() else {
        return Vec::new();
    };
    let known = |section: &str| KNOWN.iter().find(|(s, _)| *s == section).map(|(_, k)| *k);
    let mut out = Vec::new();
    let mut check = |section: &str, shown: &str, t: &toml::Table| {
        if let Some(keys) = known(section) {
            for k in t.keys() {
                if !keys.contains(&k.as_str()) {
                    out.push(format!("{shown}{k}: unknown key (typo?), ignored"));
                }
            }
        }
    };
    check("", "", &root);
    for (name, v) in &root {
        match (name.as_str(), v) {
            ("transport", toml::Value::Table(ts)) => {
                for (tn, tv) in ts {
                    if let toml::Value::Table(t) = tv {
                        check("transport.*", &format!("transport.{tn}."), t);
                    }
                }
            }
            (_, toml::Value::Table(t)) => check(name, &format!("{name}."), t),
            (_, toml::Value::Array(items)) => {
                for (i, it) in items.iter().enumerate() {
                    if let toml::Value::Table(t) = it {
                        check(name, &format!("{name}[{i}]."), t);
                    }
                }
            }
            _ => {}
        }
    }
    out
}

/// The line (1-based) where a problem's key is written: `"route[1] (x).transport: ..."`,
/// `"transport.t.next_hop: ..."`, `"queue.retry: ..."`. Best effort, for messages.
pub fn locate(text: &str, problem: &str) -> Option<usize> {
    let head = problem.split(": ").next()?;
    // "route[1] (name).key" -> "route[1].key"
    let key_path = match (head.find(" ("), head.find(')')) {
        (Some(a), Some(b)) if b > a => format!("{}{}", &head[..a], &head[b + 1..]),
        _ => head.split(' ').next()?.to_string(),
    };
    let mut parts: Vec<&str> = key_path.split('.').collect();
    // "route[1]" -> table "route", index 1
    let first = parts.remove(0);
    let (table, index) = match first.split_once('[') {
        Some((t, i)) => (t, i.trim_end_matches(']').parse::<usize>().ok()),
        None => (first, None),
    };
    let (header, key): (String, Option<&str>) = match (table, index) {
        (t, Some(_)) => (
            format!("[[{t}]]"),
            parts.last().copied().filter(|_| !parts.is_empty()),
        ),
        ("transport", None) if parts.len() >= 2 => {
            (format!("[transport.{}]", parts[0]), Some(parts[1]))
        }
        ("transport", None) if parts.len() == 1 => (format!("[transport.{}]", parts[0]), None),
        (t, None) => (format!("[{t}]"), parts.first().copied()),
    };
    let lines: Vec<&str> = text.lines().collect();
    let mut seen = 0usize;
    let mut start = None;
    for (n, l) in lines.iter().enumerate() {
        if l.trim() == header {
            if index.is_none_or(|i| i == seen) {
                start = Some(n);
                break;
            }
            seen += 1;
        }
    }
    let start = start?;
    let Some(key) = key else {
        return Some(start + 1);
    };
    for (n, l) in lines.iter().enumerate().skip(start + 1) {
        let t = l.trim_start();
        if t.starts_with('[') {
            break;
        }
        if t.split(['=', ' ']).next() == Some(key) {
            return Some(n + 1);
        }
    }
    Some(start + 1)
}

#[cfg(test)]
mod lint_tests {
    use super::*;

    #[test]
    fn unknown_keys_and_locations() {
        let text = "[server]\nhostname = \"x\"\nhostnme = \"y\"\n[[route]]\nname = \"a\"\n[[route]]\nname = \"b\"\ntransprt = \"t\"\n[transport.t]\nkind = \"relay\"\nnext_hop = \"h\"\n";
        let w = unknown_keys(text);
        assert!(
            w.contains(&"server.hostnme: unknown key (typo?), ignored".to_string()),
            "{w:?}"
        );
        assert!(
            w.contains(&"route[1].transprt: unknown key (typo?), ignored".to_string()),
            "{w:?}"
        );
        assert_eq!(locate(text, "route[1] (b).transprt: x"), Some(8));
        assert_eq!(locate(text, "transport.t.next_hop: bad"), Some(11));
        assert_eq!(locate(text, "server.hostnme: unknown"), Some(3));
    }
}
