//! Typed configuration: one TOML file (plus `PASSERELLE__SECTION__KEY` environment overrides),
//! parsed once into the values the gateway uses (addresses, networks, domain patterns,
//! durations, replies, DNs, tagged transports and directories), so nothing downstream parses a
//! string again and impossible combinations cannot be represented. [`validate`] then checks
//! only what one section says about another (a route naming a transport, a listener naming a
//! route). `check-config`, `serve` and a reload refuse the same mistakes with the same words,
//! each located at its `FILE:LINE`.
//!
//! This is the bottom of the house: it imports only the value types of `reply` and `dn`.
//! Must not import: anything but pki, reply and util.

mod console;
mod directory;
mod dirsync;
pub mod establishment;
mod journal;
#[cfg(test)]
mod reference;
mod source;
mod state;
mod trust;
mod validate;
pub use validate::trust_warnings;
pub mod values;

pub use console::{ConsoleConfig, ConsoleTransport};
pub use directory::{DirectoryConfig, DirectorySource, LdapConfig};
pub use dirsync::SyncConfig;
pub use establishment::{EstablishmentConfig, SenderCheck};
pub use journal::{postgres_target, JournalConfig, JournalKind, PgTarget, SslMode};
pub use source::{locate, Problem, Severity};
pub use state::{StateConfig, StateKind};
pub use trust::{TlsConfig, WhitelistConfig};
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
    /// Where establishments, console users and sessions live: files, or PostgreSQL shared by
    /// several gateways.
    #[serde(default)]
    pub state: StateConfig,
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
    /// Threads running the sessions and deliveries; 0: see [`runtime_threads`]. Read when
    /// `serve` starts (the runtime cannot grow or shrink under a reload).
    #[serde(default)]
    pub runtime_threads: usize,
}

/// The most `server.runtime_threads` accepts: a thread is ~2 MiB of reserved stack, and past
/// the cores more threads only take turns.
pub const MAX_RUNTIME_THREADS: usize = 1024;

/// The async runtime's worker threads: `setting` when given, else one per core (tokio's own
/// default). Why a setting: on 2 cores one worker fewer than the cores left a core to the
/// spool's and the journal's threads and gave 15-20 % less CPU per message on plain relaying,
/// but under a flood of 10,000 slow connections only 91-95 % of the legitimate trust-space
/// sessions got through (p99 0.5-0.7 s) against 100 % (p99 0.09 s) with two: the default
/// keeps the resilience, a gateway that is never flooded may trade it (benches/RESULTS.md,
/// issue 30).
pub fn runtime_threads(setting: usize, cores: usize) -> usize {
    if setting > 0 {
        setting.min(MAX_RUNTIME_THREADS)
    } else {
        cores.max(1)
    }
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
    /// How long a surplus idle outbound connection is kept for reuse: past it, a destination
    /// keeps as many as its recent peak of deliveries at once (`delivery::pool`).
    #[serde(deserialize_with = "de_duration")]
    pub connection_cache_time: Duration,
    /// Messages per reused connection before a new one is opened; 0: no limit (Postfix's
    /// smtp_connection_reuse_count_limit, whose default is also 0). A count limit closes the
    /// busiest operator's connections most often: at 1,000 msg/s a limit of 100 is ten new
    /// mutual-TLS sessions a second.
    pub connection_reuse_limit: usize,
    /// Age after which a connection is no longer reused (Postfix's
    /// smtp_connection_reuse_time_limit, 300s): the bound that lets a peer's new certificate,
    /// address or configuration take effect, however busy the connection.
    #[serde(deserialize_with = "de_duration")]
    pub connection_reuse_time: Duration,
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
            connection_reuse_limit: 0,
            connection_reuse_time: Duration::from_secs(300),
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
        let (parsed, _) = Self::read_with(path, candidate, None)?;
        Self::validated(parsed)
    }

    /// The cross-reference checks of [`Config::check`] on a config already read (by
    /// [`Config::read_unvalidated`]): `serve` acts between the two (it makes the development
    /// PKI the config points to), and the file is read and parsed once per start or reload.
    pub fn validated(parsed: Parsed) -> Result<Parsed, ConfigError> {
        let shown = parsed.config.source.display().to_string();
        let text = &parsed.config.source_text;
        let mut errors = Vec::new();
        let mut warnings = parsed.warnings;
        for p in validate::validate(&parsed.config) {
            let p = p.located(&shown, text);
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

    /// Reads and parses, with the establishments' files and the parser's warnings, without
    /// the cross-reference checks: give it to [`Config::validated`].
    pub fn read_unvalidated(path: &Path) -> Result<Parsed, ConfigError> {
        Self::read(path).map(|(p, _)| p)
    }

    /// Reads and parses without cross-reference checks (the offline CLI verbs need only a
    /// few sections of a config that may be half written).
    pub fn load_unvalidated(path: &Path) -> Result<Config, ConfigError> {
        Self::read(path).map(|(p, _)| p.config)
    }

    fn read(path: &Path) -> Result<(Parsed, String), ConfigError> {
        Self::read_with(path, None, None)
    }

    /// [`Config::check`] with the establishments `texts` (name, TOML) in place of the files
    /// of the establishments directory: a write to the shared state is checked against the
    /// whole state as the database holds it, before it is committed.
    pub fn check_with_texts(
        path: &Path,
        texts: &[(String, String)],
    ) -> Result<Parsed, ConfigError> {
        let (parsed, _) = Self::read_with(path, None, Some(texts))?;
        Self::validated(parsed)
    }

    /// Where the establishments' files are read from: `establishments_dir`, or with a shared
    /// state its local copy under the spool (`SPOOL/state/establishments.d`).
    pub fn establishments_read_dir(&self) -> PathBuf {
        if self.state.shared() {
            self.state
                .local_dir(&self.server.spool)
                .join("establishments.d")
        } else {
            self.server.establishments_dir.clone()
        }
    }

    /// The console's users file: `[console] users_file`, or with a shared state its local
    /// copy (`SPOOL/state/users.toml`). `None` without a console.
    pub fn users_read_file(&self) -> Option<PathBuf> {
        let c = self.console.as_ref()?;
        Some(if self.state.shared() {
            self.state.local_dir(&self.server.spool).join("users.toml")
        } else {
            c.users_file.clone()
        })
    }

    fn read_with(
        path: &Path,
        candidate: establishment::Candidate<'_>,
        texts: Option<&[(String, String)]>,
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
        let dir = parsed.config.establishments_read_dir();
        let (list, warnings, errors) = match texts {
            None => establishment::read_dir_with(&dir, candidate),
            Some(texts) => establishment::read_texts(&dir, texts),
        };
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
mod tests;
