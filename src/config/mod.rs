//! Typed configuration: one TOML file (plus `PASSERELLE__SECTION__KEY` environment overrides),
//! parsed once into the values the gateway uses (addresses, networks, domain patterns,
//! durations, replies, DNs, tagged transports and directories), so nothing downstream parses a
//! string again and impossible combinations cannot be represented. [`validate`] then checks
//! only what one section says about another (a route naming a transport, a listener naming a
//! route). `check-config`, `serve` and a reload refuse the same mistakes with the same words,
//! each located at its `FILE:LINE`.
//!
//! This is the bottom of the house: it imports only the value types of `reply` and `dn`.

mod console;
mod dirsync;
pub mod establishment;
mod journal;
#[cfg(test)]
mod reference;
mod source;
mod validate;
pub use validate::trust_warnings;
pub mod values;

pub use console::{ConsoleConfig, ConsoleTransport};
pub use dirsync::SyncConfig;
pub use establishment::{EstablishmentConfig, SenderCheck};
pub use journal::{postgres_target, JournalConfig, JournalKind, PgTarget, SslMode};
pub use source::{locate, Problem, Severity};
pub use values::{parse_duration, ClientNet, DomainPattern, HostPort};

use crate::pki::dn::Dn;
use crate::reply::Reply;
use serde::{Deserialize, Deserializer};
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;
use values::{de_duration, de_durations, de_from_str, de_list};

/// Default location, relative to the working directory (the repository root in development).
pub const DEFAULT_CONFIG: &str = "config/passerelle.toml";

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{path}: cannot read: {source}")]
    Read {
        path: String,
        #[source]
        source: std::io::Error,
    },
    /// Every problem found, one per line, as `FILE:LINE: key: message`.
    #[error("{}", .0.iter().map(|p| p.to_string()).collect::<Vec<_>>().join("\n"))]
    Invalid(Vec<Problem>),
}

impl ConfigError {
    /// The problems on one line (for a log line: one error is one line).
    pub fn one_line(&self) -> String {
        match self {
            ConfigError::Invalid(p) => p
                .iter()
                .map(|p| p.to_string())
                .collect::<Vec<_>>()
                .join("; "),
            other => other.to_string(),
        }
    }
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
    /// The message journal (`track`, `stats`, the console's timelines and indicators).
    #[serde(default)]
    pub journal: JournalConfig,
    /// The admin web console; none when absent.
    #[serde(default)]
    pub console: Option<ConsoleConfig>,
    /// The establishments of a regional gateway (those of `establishments_dir` added when read).
    #[serde(default)]
    pub establishment: Vec<EstablishmentConfig>,
    /// Where the file was read from (not a key): used in messages.
    #[serde(skip)]
    pub source: PathBuf,
    /// The file's text as read (not a key): the console shows the running configuration and
    /// diffs an edit against it.
    #[serde(skip)]
    pub source_text: String,
}

#[derive(Debug, Clone, Deserialize)]
pub struct ServerConfig {
    /// Our name: banner, EHLO, Received headers, DSN Reporting-MTA.
    pub hostname: String,
    /// The durable queue directory.
    #[serde(default = "default_spool")]
    pub spool: PathBuf,
    /// HTTP admin endpoint (/metrics, /healthz, /readyz, queue verbs); loopback by default.
    #[serde(default, deserialize_with = "de_opt_socket")]
    pub admin: Option<SocketAddr>,
    /// One `*.toml` per establishment (`passerelle establishment add` writes there).
    #[serde(default = "default_establishments_dir")]
    pub establishments_dir: PathBuf,
}

fn default_establishments_dir() -> PathBuf {
    PathBuf::from(establishment::DEFAULT_ESTABLISHMENTS_DIR)
}

fn default_spool() -> PathBuf {
    PathBuf::from("var/spool")
}

pub(crate) fn de_socket<'de, D: Deserializer<'de>>(d: D) -> Result<SocketAddr, D::Error> {
    let s = String::deserialize(d)?;
    s.trim()
        .parse()
        .map_err(|_| serde::de::Error::custom(format!("{s:?} is not ip:port")))
}

fn de_opt_socket<'de, D: Deserializer<'de>>(d: D) -> Result<Option<SocketAddr>, D::Error> {
    de_socket(d).map(Some)
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
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
    /// Where the gateway downloads each CRL of `crls` (same order), every `crl_refresh`.
    #[serde(default, deserialize_with = "de_urls")]
    pub crl_urls: Vec<String>,
    #[serde(default = "default_crl_refresh", deserialize_with = "de_duration")]
    pub crl_refresh: Duration,
    /// `/readyz` fails when a CRL is past its nextUpdate by more than this.
    #[serde(default = "default_crl_grace", deserialize_with = "de_duration")]
    pub crl_grace: Duration,
    /// A CRL file larger than this (bytes) is refused before it is parsed; the last good copy
    /// stays in force (IGC-Santé's largest CRLs are a few MiB).
    #[serde(default = "default_crl_max_size")]
    pub crl_max_size: u64,
}

impl TlsConfig {
    /// The `certs/dev` directory its certificate is in while it is still missing: `serve`
    /// generates the development PKI there, so the missing files are no problem yet.
    pub fn pending_dev_pki(&self) -> Option<&Path> {
        let dir = self.certificate.parent()?;
        (!self.certificate.exists() && dir.ends_with("certs/dev")).then_some(dir)
    }

    /// Every file it names inside `from`, named inside `to` instead (check-config's
    /// throw-away development PKI).
    pub fn moved(&self, from: &Path, to: &Path) -> TlsConfig {
        let mv = |p: &PathBuf| match p.strip_prefix(from) {
            Ok(rest) => to.join(rest),
            Err(_) => p.clone(),
        };
        TlsConfig {
            certificate: mv(&self.certificate),
            private_key: mv(&self.private_key),
            trust_anchors: self.trust_anchors.as_ref().map(mv),
            crls: self.crls.iter().map(mv).collect(),
            ..self.clone()
        }
    }
}

fn default_crl_refresh() -> Duration {
    Duration::from_secs(3600)
}
fn default_crl_max_size() -> u64 {
    crate::util::fs::DEFAULT_MAX_CRL_BYTES
}

fn default_crl_grace() -> Duration {
    Duration::from_secs(86400)
}

/// An `http://` or `https://` URL (downloads).
fn check_url(u: &str) -> Result<String, String> {
    if u.starts_with("http://") || u.starts_with("https://") {
        Ok(u.to_string())
    } else {
        Err(format!("{u:?} is not an http:// or https:// URL"))
    }
}

fn de_urls<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    Vec::<String>::deserialize(d)?
        .iter()
        .map(|u| check_url(u).map_err(serde::de::Error::custom))
        .collect()
}

fn de_opt_url<'de, D: Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    let u = String::deserialize(d)?;
    check_url(&u).map(Some).map_err(serde::de::Error::custom)
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
    #[serde(deserialize_with = "de_socket")]
    pub address: SocketAddr,
    /// Networks allowed to connect; empty means everyone (a trust-space listener).
    #[serde(default, deserialize_with = "de_list")]
    pub clients: Vec<ClientNet>,
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
    #[serde(default, deserialize_with = "de_list")]
    pub client_dns: Vec<Dn>,
    /// Sessions are attributed to the establishment whose `clients`/`client_dns` match; any
    /// other client gets `554 5.7.1`, and each is held to its own sender domains.
    #[serde(default)]
    pub establishments: bool,
}

fn default_starttls() -> StartTls {
    StartTls::Offer
}
fn default_client_cert() -> ClientCert {
    ClientCert::Off
}

impl ListenerConfig {
    /// Whether a client at `ip` may connect (an empty list lets everyone in).
    pub fn admits(&self, ip: std::net::IpAddr) -> bool {
        self.clients.is_empty() || self.clients.iter().any(|n| n.contains(ip))
    }
}

/// What a route does with the recipients it matches.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RouteTarget {
    /// Accept and deliver through this `[transport.NAME]`.
    Transport(String),
    /// Refuse at RCPT with this reply (4xx or 5xx).
    Reject(Reply),
}

#[derive(Debug, Clone, Deserialize)]
#[serde(try_from = "RawRoute")]
pub struct RouteConfig {
    pub name: String,
    /// Patterns: `exact.domain`, `*.suffix` (strict subdomains), `*`, `@whitelist`.
    pub domains: Vec<DomainPattern>,
    pub target: RouteTarget,
    /// The recipient domain must be declared in the ANS whitelist.
    pub whitelist: bool,
    /// The recipient must exist in the directory.
    pub directory: bool,
}

/// A `[[route]]` as written: `transport` and `reject` are exclusive.
#[derive(Deserialize)]
struct RawRoute {
    name: String,
    #[serde(deserialize_with = "de_list")]
    domains: Vec<DomainPattern>,
    #[serde(default)]
    transport: Option<String>,
    #[serde(default, deserialize_with = "de_reject")]
    reject: Option<Reply>,
    #[serde(default)]
    whitelist: bool,
    #[serde(default)]
    directory: bool,
}

impl TryFrom<RawRoute> for RouteConfig {
    type Error = String;
    fn try_from(r: RawRoute) -> Result<RouteConfig, String> {
        let target = match (r.transport, r.reject) {
            (Some(t), None) => RouteTarget::Transport(t),
            (None, Some(reply)) => RouteTarget::Reject(reply),
            (Some(_), Some(_)) => return Err("has both transport and reject; keep one".into()),
            (None, None) => return Err("needs a transport or a reject reply".into()),
        };
        if r.domains.is_empty() {
            return Err("domains: empty".into());
        }
        Ok(RouteConfig {
            name: r.name,
            domains: r.domains,
            target,
            whitelist: r.whitelist,
            directory: r.directory,
        })
    }
}

/// A refusal reply: `"550 5.7.1 text"`. Only 4xx and 5xx refuse; a 2xx here would accept the
/// recipient at RCPT and then have nowhere to deliver it.
fn de_reject<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Reply>, D::Error> {
    let s = String::deserialize(d)?;
    let r = Reply::parse(&s).map_err(serde::de::Error::custom)?;
    if r.code < 400 {
        return Err(serde::de::Error::custom(format!(
            "{s:?}: a refusal needs a 4xx or 5xx code (e.g. \"550 5.7.1 text\")"
        )));
    }
    Ok(Some(r))
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

/// Where a transport sends: one fixed next hop, or the recipient domain's MX.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NextHop {
    /// `kind = "relay"`: `next_hop = "host:port"`, no MX lookup.
    Relay(HostPort),
    /// `kind = "mx"`: the MX hosts of the recipient domain (A/AAAA fallback) on `port`.
    Mx { port: u16 },
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(try_from = "RawTransport")]
pub struct TransportConfig {
    pub hop: NextHop,
    pub tls: TlsPolicy,
}

#[derive(Deserialize)]
#[serde(rename_all = "lowercase")]
enum TransportKind {
    Relay,
    Mx,
}

#[derive(Deserialize)]
struct RawTransport {
    kind: TransportKind,
    #[serde(default, deserialize_with = "de_opt_host_port")]
    next_hop: Option<HostPort>,
    #[serde(default)]
    port: Option<u16>,
    #[serde(default = "default_tls_policy")]
    tls: TlsPolicy,
}

fn de_opt_host_port<'de, D: Deserializer<'de>>(d: D) -> Result<Option<HostPort>, D::Error> {
    de_from_str(d).map(Some)
}

fn default_tls_policy() -> TlsPolicy {
    TlsPolicy::Opportunistic
}

impl TryFrom<RawTransport> for TransportConfig {
    type Error = String;
    fn try_from(t: RawTransport) -> Result<TransportConfig, String> {
        let hop = match (t.kind, t.next_hop, t.port) {
            (TransportKind::Relay, Some(h), None) => NextHop::Relay(h),
            (TransportKind::Relay, None, _) => {
                return Err("next_hop: required for kind = \"relay\"".into())
            }
            (TransportKind::Relay, Some(_), Some(_)) => {
                return Err("port: only for kind = \"mx\"; a relay's port is in next_hop".into())
            }
            (TransportKind::Mx, None, port) => NextHop::Mx {
                port: port.unwrap_or(25),
            },
            (TransportKind::Mx, Some(_), _) => {
                return Err("next_hop: only for kind = \"relay\"".into())
            }
        };
        Ok(TransportConfig { hop, tls: t.tls })
    }
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
    /// Time a client has, from connect, to show who it is (an establishment by its address or
    /// certificate, any client by a valid certificate after STARTTLS) before it is closed with
    /// 421: an unknown client cannot hold a slot for minutes.
    #[serde(deserialize_with = "de_duration")]
    pub attribution_timeout: Duration,
    /// Percent of `max_connections` that clients not yet attributed may hold; when it is full
    /// the oldest of them is closed to make room, and attributed clients always find room.
    pub unattributed_share: usize,
    /// Simultaneous unattributed connections from one network (/24, /64); 0 = no limit.
    pub network_connection_limit: usize,
    /// New unattributed connections per second from one network; 0 = no limit.
    pub network_rate_limit: usize,
    /// Prefix length of an IPv4 network for the per-network limits.
    pub network_prefix_v4: u8,
    /// Prefix length of an IPv6 network for the per-network limits.
    pub network_prefix_v6: u8,
    /// Percent of `max_connections` in use above which the listener is in stress mode (as
    /// Postfix's): timeouts shrink to `stress_timeout`, DATA's rate is enforced sooner.
    pub stress_threshold: usize,
    /// Per-command, attribution and DATA grace time while in stress mode.
    #[serde(deserialize_with = "de_duration")]
    pub stress_timeout: Duration,
    /// Received headers at which a message is a loop (Postfix hopcount_limit).
    pub hop_count_limit: usize,
    /// Answer VRFY (252, never a real answer) and advertise it; off by default, as Postfix's
    /// `disable_vrfy_command = yes` advises (VRFY then answers 502).
    pub vrfy: bool,
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
            attribution_timeout: Duration::from_secs(30),
            unattributed_share: 50,
            network_connection_limit: 500,
            network_rate_limit: 500,
            network_prefix_v4: 24,
            network_prefix_v6: 64,
            stress_threshold: 75,
            stress_timeout: Duration::from_secs(10),
            hop_count_limit: 50,
            vrfy: false,
        }
    }
}

#[derive(Debug, Clone, Default, Deserialize)]
pub struct DnsConfig {
    /// `ip` or `ip:port` resolvers (port 53 by default); the system resolver when empty.
    #[serde(default, deserialize_with = "de_list")]
    pub nameservers: Vec<NameServer>,
}

/// A DNS server address.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NameServer(pub SocketAddr);

impl std::str::FromStr for NameServer {
    type Err = String;
    fn from_str(s: &str) -> Result<NameServer, String> {
        let t = s.trim();
        t.parse::<SocketAddr>()
            .or_else(|_| {
                t.parse::<std::net::IpAddr>()
                    .map(|ip| SocketAddr::new(ip, 53))
            })
            .map(NameServer)
            .map_err(|_| format!("{s:?} is not ip or ip:port"))
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct WhitelistConfig {
    pub file: PathBuf,
    /// How often the file is checked for a change.
    #[serde(default = "default_whitelist_reload", deserialize_with = "de_duration")]
    pub reload: Duration,
    /// Refuse a file whose ANS signature is missing or wrong; default: true when
    /// `signer_anchors` is set (see `policy::xmldsig`).
    #[serde(default)]
    pub require_signature: Option<bool>,
    /// PEM certificates the signer must chain to (IGC-Santé).
    #[serde(default)]
    pub signer_anchors: Option<PathBuf>,
    /// Subject DNs allowed to sign (RFC 4514); empty: any certificate chaining to the anchors.
    #[serde(default, deserialize_with = "de_list")]
    pub signer_dns: Vec<Dn>,
    /// Refuse a file generated longer ago; default 7 days with a signature, none without;
    /// `"0"` disables (test vectors).
    #[serde(default, deserialize_with = "values::de_opt_duration")]
    pub max_age: Option<Duration>,
    /// Where the gateway downloads the list (verified before it replaces `file`).
    #[serde(default, deserialize_with = "de_opt_url")]
    pub url: Option<String>,
    /// How often it is downloaded (conditional GET).
    #[serde(
        default = "default_whitelist_refresh",
        deserialize_with = "de_duration"
    )]
    pub refresh: Duration,
    /// A file (or a download) larger than this many bytes is refused before it is parsed; the
    /// list in force stays. The real signed list is 3.6 MB.
    #[serde(default = "default_whitelist_max_size")]
    pub max_size: u64,
}

fn default_whitelist_max_size() -> u64 {
    crate::util::fs::DEFAULT_MAX_WHITELIST_BYTES
}

impl WhitelistConfig {
    pub fn signature_required(&self) -> bool {
        self.require_signature
            .unwrap_or(self.signer_anchors.is_some())
    }

    /// The age limit in force (`max_age = "0"` gives none).
    pub fn effective_max_age(&self) -> Option<Duration> {
        match self.max_age {
            Some(d) if d.is_zero() => None,
            Some(d) => Some(d),
            None if self.signature_required() => Some(Duration::from_secs(7 * 86400)),
            None => None,
        }
    }
}

fn default_whitelist_refresh() -> Duration {
    Duration::from_secs(6 * 3600)
}

fn default_whitelist_reload() -> Duration {
    Duration::from_secs(3600)
}

/// `[directory]`: where RCPT checks that a recipient exists.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(try_from = "RawDirectory")]
pub struct DirectoryConfig {
    pub source: DirectorySource,
    /// `[directory.sync]`: the gateway keeps an LDAP in step with the extract.
    pub sync: Option<SyncConfig>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum DirectorySource {
    /// `kind = "none"`: nothing is known; routes cannot ask for the directory.
    #[default]
    None,
    /// `kind = "extract"`: the ANS extract, held in memory, re-read when the file changes;
    /// one over `max_size` bytes (its text) is refused before it is read.
    Extract { file: PathBuf, max_size: u64 },
    /// `kind = "ldap"`: the establishment's LDAP where the national directory is integrated.
    Ldap(LdapConfig),
}

impl DirectorySource {
    pub fn kind(&self) -> &'static str {
        match self {
            DirectorySource::None => "none",
            DirectorySource::Extract { .. } => "extract",
            DirectorySource::Ldap(_) => "ldap",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LdapConfig {
    /// `ldap://host:port`, `ldaps://host:port` or `ldapi://`.
    pub url: String,
    pub base: String,
    /// With `{address}` replaced by the RFC 4515-escaped recipient.
    pub filter: String,
    pub bind_dn: Option<String>,
    pub bind_password: Option<String>,
    pub cache_ttl: Duration,
    pub negative_ttl: Duration,
    /// Cached answers at most.
    pub cache_size: usize,
    /// Connect and per-request timeout.
    pub timeout: Duration,
    /// Connections to the LDAP server.
    pub pool_size: usize,
    /// StartTLS on an `ldap://` URL, verified against `[tls].trust_anchors`.
    pub starttls: bool,
    /// Attribute holding the BAL type (written by `directory import`).
    pub bal_type_attribute: String,
}

impl LdapConfig {
    /// Whether the connection is encrypted (ldaps, or StartTLS), hence needs trust anchors.
    pub fn uses_tls(&self) -> bool {
        self.starttls || self.url.starts_with("ldaps://")
    }
}

#[derive(Deserialize)]
#[serde(rename_all = "lowercase")]
enum DirectoryKind {
    None,
    Extract,
    Ldap,
}

#[derive(Deserialize)]
#[serde(default)]
struct RawDirectory {
    kind: DirectoryKind,
    file: Option<PathBuf>,
    url: Option<String>,
    base: Option<String>,
    filter: String,
    bind_dn: Option<String>,
    bind_password: Option<String>,
    #[serde(deserialize_with = "de_duration")]
    cache_ttl: Duration,
    #[serde(deserialize_with = "de_duration")]
    negative_ttl: Duration,
    cache_size: usize,
    #[serde(deserialize_with = "de_duration")]
    timeout: Duration,
    pool_size: usize,
    starttls: bool,
    bal_type_attribute: String,
    max_size: u64,
    sync: Option<SyncConfig>,
}

impl Default for RawDirectory {
    fn default() -> Self {
        RawDirectory {
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
            max_size: crate::util::fs::DEFAULT_MAX_EXTRACT_BYTES,
            sync: None,
        }
    }
}

impl TryFrom<RawDirectory> for DirectoryConfig {
    type Error = String;
    fn try_from(d: RawDirectory) -> Result<DirectoryConfig, String> {
        let source = match d.kind {
            DirectoryKind::None => DirectorySource::None,
            DirectoryKind::Extract => DirectorySource::Extract {
                file: d.file.ok_or("file: required for kind = \"extract\"")?,
                max_size: d.max_size,
            },
            DirectoryKind::Ldap => {
                let url = d.url.ok_or("url: required for kind = \"ldap\"")?;
                if !["ldap://", "ldaps://", "ldapi://"]
                    .iter()
                    .any(|s| url.starts_with(s))
                {
                    return Err(format!(
                        "url: {url:?} is not an ldap://, ldaps:// or ldapi:// URL"
                    ));
                }
                if !d.filter.contains("{address}") {
                    return Err("filter: must contain {address}".into());
                }
                DirectorySource::Ldap(LdapConfig {
                    url,
                    base: d.base.ok_or("base: required for kind = \"ldap\"")?,
                    filter: d.filter,
                    bind_dn: d.bind_dn.filter(|s| !s.is_empty()),
                    bind_password: d.bind_password,
                    cache_ttl: d.cache_ttl,
                    negative_ttl: d.negative_ttl,
                    cache_size: d.cache_size,
                    timeout: d.timeout,
                    pool_size: d.pool_size.max(1),
                    starttls: d.starttls,
                    bal_type_attribute: d.bal_type_attribute,
                })
            }
        };
        Ok(DirectoryConfig {
            source,
            sync: d.sync,
        })
    }
}

/// A config file as read: the typed config and what looked wrong without stopping it.
pub struct Parsed {
    pub config: Config,
    /// Unknown keys (typos) and other warnings, located.
    pub warnings: Vec<Problem>,
}

impl Config {
    /// Reads, overrides from the environment, parses and validates: what `serve` and a reload
    /// use. Warnings are logged.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let parsed = Self::check(path)?;
        for w in &parsed.warnings {
            tracing::warn!("{w}");
        }
        Ok(parsed.config)
    }

    /// Like [`Config::load`], returning the warnings instead of logging them.
    pub fn check(path: &Path) -> Result<Parsed, ConfigError> {
        Self::check_with(path, None)
    }

    /// [`Config::check`] as if `candidate`, an establishment file about to be written, were
    /// in `establishments_dir` already: nothing is placed before it is checked.
    pub fn check_with(
        path: &Path,
        candidate: establishment::Candidate<'_>,
    ) -> Result<Parsed, ConfigError> {
        let (parsed, text) = Self::read_with(path, candidate)?;
        let shown = path.display().to_string();
        let mut errors = Vec::new();
        let mut warnings = parsed.warnings;
        for p in validate::validate(&parsed.config) {
            let p = p.located(&shown, &text);
            match p.severity {
                Severity::Error => errors.push(p),
                Severity::Warning => warnings.push(p),
            }
        }
        if errors.is_empty() {
            Ok(Parsed {
                config: parsed.config,
                warnings,
            })
        } else {
            Err(ConfigError::Invalid(errors))
        }
    }

    /// Reads and parses without cross-reference checks (the offline CLI verbs need only a
    /// few sections of a config that may be half written).
    pub fn load_unvalidated(path: &Path) -> Result<Config, ConfigError> {
        Self::read(path).map(|(p, _)| p.config)
    }

    fn read(path: &Path) -> Result<(Parsed, String), ConfigError> {
        Self::read_with(path, None)
    }

    fn read_with(
        path: &Path,
        candidate: establishment::Candidate<'_>,
    ) -> Result<(Parsed, String), ConfigError> {
        let shown = path.display().to_string();
        // Read ourselves first so a missing file is a clear one-line error.
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: shown.clone(),
            source,
        })?;
        let mut parsed = Self::from_toml_str(&text, &shown)?;
        parsed.config.source = path.to_path_buf();
        parsed.config.source_text = text.clone();
        // The establishments' own files: one that does not load fails the whole read (a
        // reload then keeps the config in force).
        let (list, warnings, errors) =
            establishment::read_dir_with(&parsed.config.server.establishments_dir, candidate);
        if !errors.is_empty() {
            return Err(ConfigError::Invalid(errors));
        }
        parsed.config.establishment.extend(list);
        parsed.warnings.extend(warnings);
        Ok((parsed, text))
    }

    /// Parses a config text (`shown` names it in messages), with environment overrides.
    pub fn from_toml_str(text: &str, shown: &str) -> Result<Parsed, ConfigError> {
        source::parse(text, shown).map_err(ConfigError::Invalid)
    }

    /// Cross-reference problems (errors and warnings), without locations.
    pub fn validate(&self) -> Vec<Problem> {
        validate::validate(self)
    }

    /// The `[transport.NAME]`s and one `establishment:NAME` per establishment (its mailbox
    /// with its `mailbox_tls`): what delivery can deliver through.
    pub fn all_transports(&self) -> BTreeMap<String, TransportConfig> {
        let mut all = self.transport.clone();
        for e in &self.establishment {
            all.insert(
                e.transport_name(),
                TransportConfig {
                    hop: NextHop::Relay(e.mailbox.clone()),
                    tls: e.mailbox_tls,
                },
            );
        }
        all
    }

    /// Where delivery would take mail for `domain` (`tls probe DOMAIN`, issue 24 C.3): the
    /// first route in order whose patterns cover it and that delivers (`@whitelist` counted as
    /// covering: a probed domain is a trust-space one), and its transport's next hop. `None`
    /// when no route delivers there.
    pub fn delivery_hop(&self, domain: &str) -> Option<(String, NextHop)> {
        let domain = domain.trim_end_matches('.').to_ascii_lowercase();
        let transports = self.all_transports();
        self.route.iter().find_map(|r| match &r.target {
            RouteTarget::Transport(t)
                if r.domains.iter().any(|p| p.matches(&domain, &|_| true)) =>
            {
                transports.get(t).map(|tc| (t.clone(), tc.hop.clone()))
            }
            _ => None,
        })
    }

    pub fn listener(&self, name: &str) -> Option<&ListenerConfig> {
        self.listener.iter().find(|l| l.name == name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(crate) const MIN: &str = r#"
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

    fn parse(text: &str) -> Result<Config, Vec<String>> {
        match Config::from_toml_str(text, "t.toml") {
            Ok(p) => Ok(p.config),
            Err(ConfigError::Invalid(ps)) => Err(ps.iter().map(|p| p.to_string()).collect()),
            Err(e) => Err(vec![e.to_string()]),
        }
    }

    fn errors(c: &Config) -> Vec<String> {
        c.validate()
            .iter()
            .filter(|p| p.severity == Severity::Error)
            .map(|p| p.to_string())
            .collect()
    }

    #[test]
    fn parses_minimal() {
        let c = parse(MIN).unwrap();
        assert!(errors(&c).is_empty(), "{:?}", errors(&c));
        assert_eq!(c.queue.retry_after(1), Duration::from_secs(1));
        assert_eq!(c.queue.retry_after(9), Duration::from_secs(300));
        assert_eq!(c.queue.delay_warning, Duration::ZERO);
        assert_eq!(c.smtp.recipient_limit, 1000);
        assert_eq!(
            c.transport["t"].hop,
            NextHop::Relay("127.0.0.1:10026".parse().unwrap())
        );
        assert_eq!(
            c.route[1].target,
            RouteTarget::Reject(Reply::new(550, "5.7.1", "no"))
        );
        assert!(c.listener[0].admits("127.0.0.2".parse().unwrap()));
        assert!(!c.listener[0].admits("10.0.0.1".parse().unwrap()));
    }

    #[test]
    fn reports_dangling_references() {
        let bad = MIN.replace("transport = \"t\"", "transport = \"nope\"");
        let c = parse(&bad).unwrap();
        let p = errors(&c);
        assert!(p.iter().any(|l| l.contains("no [transport.nope]")), "{p:?}");
    }

    #[test]
    fn bad_values_name_their_key_and_line() {
        let bad = MIN.replace("lifetime = \"5d\"", "lifetime = \"five days\"");
        let e = parse(&bad).unwrap_err();
        assert_eq!(e.len(), 1, "{e:?}");
        assert!(
            e[0].starts_with("t.toml:25: queue.lifetime: \"five days\" is not a duration"),
            "{e:?}"
        );
        let bad = MIN.replace("tls = \"none\"", "tls = \"mutal\"");
        let e = parse(&bad).unwrap_err();
        assert_eq!(
            e,
            vec![
                "t.toml:22: transport.t.tls: \"mutal\" is not one of none, opportunistic, required, mutual"
            ]
        );
        let bad = MIN.replace("reject = \"550 5.7.1 no\"", "reject = \"250 2.0.0 ok\"");
        let e = parse(&bad).unwrap_err();
        assert!(e[0].starts_with("t.toml:18: route[1].reject: "), "{e:?}");
        assert!(e[0].contains("4xx or 5xx"), "{e:?}");
        let bad = MIN.replace("127.0.0.0/8", "127.0.0.0/99");
        let e = parse(&bad).unwrap_err();
        assert!(e[0].starts_with("t.toml:8: listener[0].clients: "), "{e:?}");
        let bad = MIN.replace("next_hop = \"127.0.0.1:10026\"\n", "");
        let e = parse(&bad).unwrap_err();
        assert_eq!(
            e,
            vec!["t.toml:19: transport.t: next_hop: required for kind = \"relay\""]
        );
        let bad = MIN.replace("hostname = \"gw.test\"\n", "");
        let e = parse(&bad).unwrap_err();
        assert_eq!(e, vec!["t.toml:2: server.hostname: required"]);
    }

    #[test]
    fn unknown_keys_are_warnings_with_lines() {
        let text = MIN.replace("spool = \"/tmp/x\"", "spool = \"/tmp/x\"\nhostnme = \"y\"")
            + "[ smtp ]\ntimeout = \"1m\"\ntimout = \"2m\"\n";
        let p = Config::from_toml_str(&text, "t.toml");
        let w: Vec<String> = match p {
            Ok(p) => p.warnings.iter().map(|w| w.to_string()).collect(),
            Err(e) => panic!("{e}"),
        };
        assert!(
            w.contains(&"t.toml:5: server.hostnme: unknown key (typo?), ignored".to_string()),
            "{w:?}"
        );
        assert!(
            w.contains(&"t.toml:30: smtp.timout: unknown key (typo?), ignored".to_string()),
            "{w:?}"
        );
    }

    #[test]
    fn directory_kinds_are_checked_when_read() {
        let text =
            format!("{MIN}[directory]\nkind = \"ldap\"\nurl = \"http://x\"\nbase = \"dc=x\"\n");
        let e = parse(&text).unwrap_err();
        assert!(
            e[0].contains("directory: url: \"http://x\" is not an ldap://"),
            "{e:?}"
        );
        let text = format!("{MIN}[directory]\nkind = \"extract\"\nfile = \"x.txt\"\n");
        let c = parse(&text).unwrap();
        assert_eq!(
            c.directory.source,
            DirectorySource::Extract {
                file: "x.txt".into(),
                max_size: crate::util::fs::DEFAULT_MAX_EXTRACT_BYTES,
            }
        );
    }
}
