//! The value types a config file holds, each parsed once when the file is read: a `host:port`,
//! a client network, a domain pattern, a duration. They sit at the bottom of the crate (they
//! import nothing above `reply` and `dn`) so that config, policy and delivery share them.

use serde::{Deserialize, Deserializer};
use std::fmt;
use std::net::IpAddr;
use std::str::FromStr;
use std::time::Duration;

/// `host:port` with a mandatory port; `[v6]:port` accepted. A next hop, a mailbox server.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct HostPort {
    pub host: String,
    pub port: u16,
}

impl FromStr for HostPort {
    type Err = String;
    fn from_str(s: &str) -> Result<HostPort, String> {
        let bad = || format!("{s:?} is not host:port");
        let (h, p) = s.trim().rsplit_once(':').ok_or_else(bad)?;
        let port: u16 = p.parse().ok().filter(|&p| p > 0).ok_or_else(bad)?;
        let h = h
            .strip_prefix('[')
            .and_then(|x| x.strip_suffix(']'))
            .unwrap_or(h);
        if h.is_empty() || h.contains(char::is_whitespace) {
            return Err(bad());
        }
        Ok(HostPort {
            host: h.to_string(),
            port,
        })
    }
}

impl fmt::Display for HostPort {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.host.contains(':') {
            write!(f, "[{}]:{}", self.host, self.port)
        } else {
            write!(f, "{}:{}", self.host, self.port)
        }
    }
}

/// A client network: `"10.1.0.0/24"` or a bare address.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ClientNet(pub ipnet::IpNet);

impl ClientNet {
    /// Whether `ip` is inside; an IPv4-mapped IPv6 client counts as its IPv4 address.
    pub fn contains(&self, ip: IpAddr) -> bool {
        self.0.contains(&unmap(ip))
    }

    /// Whether two networks share an address.
    pub fn overlaps(&self, other: &ClientNet) -> bool {
        self.0.contains(&other.0.network()) || other.0.contains(&self.0.network())
    }
}

/// `::ffff:a.b.c.d` is the IPv4 client `a.b.c.d`.
pub fn unmap(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(ip),
        v4 => v4,
    }
}

impl FromStr for ClientNet {
    type Err = String;
    fn from_str(s: &str) -> Result<ClientNet, String> {
        let t = s.trim();
        t.parse::<ipnet::IpNet>()
            .ok()
            .or_else(|| t.parse::<IpAddr>().ok().map(ipnet::IpNet::from))
            .map(|n| ClientNet(n.trunc()))
            .ok_or_else(|| format!("{s:?} is not a CIDR (10.1.0.0/24) or an address"))
    }
}

impl fmt::Display for ClientNet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// The recipient domains a route (or an establishment) covers.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum DomainPattern {
    /// `chu-exemple.mssante.fr`
    Exact(String),
    /// `*.mssante.fr`: strict subdomains; holds `.mssante.fr`.
    Subdomains(String),
    /// `*`
    Any,
    /// `@whitelist`: any domain declared in the ANS whitelist.
    Whitelist,
}

impl DomainPattern {
    pub fn parse(s: &str) -> Result<DomainPattern, String> {
        let lower = s.trim().to_ascii_lowercase();
        // One trailing dot (an absolute name) is allowed on a real domain, not on "*.".
        let t = match lower.strip_suffix('.') {
            Some(x) if !x.ends_with('*') && !x.is_empty() => x,
            _ => lower.as_str(),
        };
        match t {
            "*" => Ok(DomainPattern::Any),
            "@whitelist" => Ok(DomainPattern::Whitelist),
            _ => {
                if let Some(suffix) = t.strip_prefix("*.") {
                    if is_domain(suffix) {
                        return Ok(DomainPattern::Subdomains(format!(".{suffix}")));
                    }
                } else if is_domain(t) {
                    return Ok(DomainPattern::Exact(t.to_string()));
                }
                Err(format!(
                    "{s:?} is not a domain pattern (exact.domain, *.suffix, * or @whitelist)"
                ))
            }
        }
    }

    /// `domain` must already be lowercased.
    pub fn matches(&self, domain: &str, is_declared: &dyn Fn(&str) -> bool) -> bool {
        match self {
            DomainPattern::Exact(d) => d == domain,
            DomainPattern::Subdomains(suffix) => domain.ends_with(suffix.as_str()),
            DomainPattern::Any => true,
            DomainPattern::Whitelist => is_declared(domain),
        }
    }
}

/// Dot-separated labels of letters, digits and hyphens (IDNs written in UTF-8 allowed).
pub fn is_domain(d: &str) -> bool {
    !d.is_empty()
        && d.split('.')
            .all(|l| !l.is_empty() && l.chars().all(|c| c.is_alphanumeric() || c == '-'))
}

impl FromStr for DomainPattern {
    type Err = String;
    fn from_str(s: &str) -> Result<DomainPattern, String> {
        DomainPattern::parse(s)
    }
}

impl fmt::Display for DomainPattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DomainPattern::Exact(d) => f.write_str(d),
            DomainPattern::Subdomains(s) => write!(f, "*{s}"),
            DomainPattern::Any => f.write_str("*"),
            DomainPattern::Whitelist => f.write_str("@whitelist"),
        }
    }
}

/// Deserialises any `FromStr` type from a string, with the parser's own message.
pub fn de_from_str<'de, D, T>(d: D) -> Result<T, D::Error>
where
    D: Deserializer<'de>,
    T: FromStr<Err: fmt::Display>,
{
    let s = String::deserialize(d)?;
    s.parse().map_err(serde::de::Error::custom)
}

/// A list of `FromStr` values; each bad element is reported with its own text.
pub fn de_list<'de, D, T>(d: D) -> Result<Vec<T>, D::Error>
where
    D: Deserializer<'de>,
    T: FromStr<Err: fmt::Display>,
{
    let items = OneOrMany::deserialize(d)?.into_vec();
    items
        .iter()
        .map(|s| s.parse().map_err(serde::de::Error::custom))
        .collect()
}

/// A list written as a TOML array, or (from an environment override) one comma-separated
/// string: `PASSERELLE__QUEUE__RETRY="1s,5s"`.
#[derive(Deserialize)]
#[serde(untagged)]
enum OneOrMany {
    Many(Vec<String>),
    One(String),
}

impl OneOrMany {
    fn into_vec(self) -> Vec<String> {
        match self {
            OneOrMany::Many(v) => v,
            OneOrMany::One(s) if s.trim().is_empty() => Vec::new(),
            OneOrMany::One(s) => s.split(',').map(|x| x.trim().to_string()).collect(),
        }
    }
}

/// Parses `"90s"`, `"5m"`, `"4h"`, `"5d"`, and `"0"`.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let t = s.trim();
    if t == "0" {
        return Ok(Duration::ZERO);
    }
    humantime::parse_duration(t).map_err(|_| {
        format!("{s:?} is not a duration (a number and a unit: \"90s\", \"5m\", \"4h\", \"5d\")")
    })
}

/// A string duration, or a bare number of seconds (handy from environment overrides).
pub fn de_duration<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Raw {
        Text(String),
        Secs(u64),
    }
    match Raw::deserialize(d).map_err(|_| {
        serde::de::Error::custom("expected a duration such as \"90s\", \"5m\", \"4h\", \"5d\"")
    })? {
        Raw::Text(s) => parse_duration(&s).map_err(serde::de::Error::custom),
        Raw::Secs(n) => Ok(Duration::from_secs(n)),
    }
}

pub fn de_opt_duration<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
    de_duration(d).map(Some)
}

pub fn de_durations<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<Duration>, D::Error> {
    let items = OneOrMany::deserialize(d)?.into_vec();
    items
        .iter()
        .map(|s| parse_duration(s).map_err(serde::de::Error::custom))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_port() {
        let hp = |s: &str| s.parse::<HostPort>().map(|h| (h.host, h.port));
        assert_eq!(hp("127.0.0.1:25"), Ok(("127.0.0.1".into(), 25)));
        assert_eq!(hp("mx.example.fr:2525"), Ok(("mx.example.fr".into(), 2525)));
        assert_eq!(hp("[::1]:25"), Ok(("::1".into(), 25)));
        assert!(hp("nohost").is_err());
        assert!(hp("h:0").is_err());
        assert!(hp(":25").is_err());
        assert_eq!(
            "[::1]:25".parse::<HostPort>().unwrap().to_string(),
            "[::1]:25"
        );
    }

    #[test]
    fn client_nets() {
        let n: ClientNet = "127.0.0.0/8".parse().unwrap();
        assert!(n.contains("127.0.0.9".parse().unwrap()));
        assert!(n.contains("::ffff:127.0.0.1".parse().unwrap()));
        let one: ClientNet = "10.1.2.3".parse().unwrap();
        assert!(one.contains("10.1.2.3".parse().unwrap()));
        assert!(!one.contains("10.1.2.4".parse().unwrap()));
        assert!("10.1.0.0/16".parse::<ClientNet>().unwrap().overlaps(&one));
        assert!(!"10.2.0.0/16".parse::<ClientNet>().unwrap().overlaps(&one));
        assert!("10.1.2.3/33".parse::<ClientNet>().is_err());
        // Host bits are cleared: 10.1.2.3/24 is the network 10.1.2.0/24.
        assert_eq!(
            "10.1.2.3/24".parse::<ClientNet>().unwrap().to_string(),
            "10.1.2.0/24"
        );
    }

    #[test]
    fn patterns() {
        let none = |_: &str| false;
        let sub = DomainPattern::parse("*.MSSante.fr").unwrap();
        assert!(sub.matches("chu.mssante.fr", &none));
        assert!(sub.matches("a.b.mssante.fr", &none));
        assert!(!sub.matches("mssante.fr", &none));
        assert!(!sub.matches("evilmssante.fr", &none));
        let ex = DomainPattern::parse("chu.mssante.fr.").unwrap();
        assert!(ex.matches("chu.mssante.fr", &none));
        assert!(!ex.matches("x.chu.mssante.fr", &none));
        let wl = DomainPattern::parse("@whitelist").unwrap();
        assert!(wl.matches("medecin.fr", &|d| d == "medecin.fr"));
        assert!(DomainPattern::parse("*.").is_err());
        assert!(DomainPattern::parse("a b").is_err());
        assert_eq!(sub.to_string(), "*.mssante.fr");
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("0"), Ok(Duration::ZERO));
        assert_eq!(parse_duration("90s"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_duration("5d"), Ok(Duration::from_secs(5 * 86400)));
        let e = parse_duration("five days").unwrap_err();
        assert!(e.contains("is not a duration"), "{e}");
    }
}
