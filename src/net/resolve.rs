//! Next-hop resolution: a static `host:port` (relay) or the recipient domain's MX records,
//! falling back to A/AAAA (RFC 5321 §5.1).

use crate::config::{DnsConfig, HostPort};
use hickory_resolver::net::runtime::TokioRuntimeProvider;
use hickory_resolver::proto::rr::RData;
use hickory_resolver::TokioResolver;
use std::net::{IpAddr, SocketAddr};

/// One host to try, with its addresses, in preference order.
#[derive(Debug, Clone)]
pub struct Hop {
    /// The name a certificate is checked against, and what logs show.
    pub name: String,
    pub addrs: Vec<SocketAddr>,
}

#[derive(Debug, Clone, thiserror::Error)]
pub enum ResolveError {
    /// The domain cannot receive mail (NXDOMAIN, null MX): bounce.
    #[error("{0}")]
    Permanent(String),
    /// Try again later.
    #[error("{0}")]
    Temporary(String),
}

pub struct Resolver {
    inner: TokioResolver,
}

impl Resolver {
    pub fn new(cfg: &DnsConfig) -> Result<Resolver, String> {
        use hickory_resolver::config::{ConnectionConfig, NameServerConfig, ResolverConfig};
        let builder = if cfg.nameservers.is_empty() {
            TokioResolver::builder_tokio().map_err(|e| format!("system resolver: {e}"))?
        } else {
            let mut servers = Vec::new();
            for ns in &cfg.nameservers {
                let sa = ns.0;
                let mut udp = ConnectionConfig::udp();
                udp.port = sa.port();
                let mut tcp = ConnectionConfig::tcp();
                tcp.port = sa.port();
                let mut s = NameServerConfig::udp_and_tcp(sa.ip());
                s.connections = vec![udp, tcp];
                servers.push(s);
            }
            TokioResolver::builder_with_config(
                ResolverConfig::from_name_servers(servers),
                TokioRuntimeProvider::default(),
            )
        };
        let inner = builder.build().map_err(|e| format!("resolver: {e}"))?;
        Ok(Resolver { inner })
    }

    /// `host:port`, resolving the host when it is a name.
    pub async fn static_hop(&self, next_hop: &HostPort) -> Result<Vec<Hop>, ResolveError> {
        let (host, port) = (next_hop.host.as_str(), next_hop.port);
        if let Ok(ip) = host.parse::<IpAddr>() {
            return Ok(vec![Hop {
                name: host.to_string(),
                addrs: vec![SocketAddr::new(ip, port)],
            }]);
        }
        let addrs = self.addresses(host, port).await?;
        Ok(vec![Hop {
            name: host.to_string(),
            addrs,
        }])
    }

    /// MX hosts of `domain` by preference, each with its addresses on `port`.
    pub async fn mx_hops(&self, domain: &str, port: u16) -> Result<Vec<Hop>, ResolveError> {
        let fqdn = format!("{}.", domain.trim_end_matches('.'));
        let mut mxs: Vec<(u16, String)> = match self.inner.mx_lookup(fqdn.as_str()).await {
            Ok(l) => l
                .answers()
                .iter()
                .filter_map(|r| match &r.data {
                    RData::MX(mx) => Some((mx.preference, mx.exchange.to_ascii())),
                    _ => None,
                })
                .collect(),
            Err(e) if e.is_nx_domain() => {
                return Err(ResolveError::Permanent(format!(
                    "Host or domain name not found. Name service error for name={domain} type=MX: Host not found"
                )))
            }
            Err(e) if e.is_no_records_found() => Vec::new(),
            Err(e) => return Err(ResolveError::Temporary(format!("MX lookup for {domain}: {e}"))),
        };
        if mxs.is_empty() {
            // No MX: the domain itself is the implicit MX.
            let addrs = self.addresses(domain, port).await?;
            return Ok(vec![Hop {
                name: domain.to_string(),
                addrs,
            }]);
        }
        if mxs.len() == 1 && (mxs[0].1 == "." || mxs[0].1.is_empty()) {
            return Err(ResolveError::Permanent(format!(
                "{domain} does not accept mail (null MX)"
            )));
        }
        mxs.sort_by_key(|(p, _)| *p);
        let mut hops = Vec::new();
        let mut last_err = None;
        for (_, host) in mxs {
            let host = host.trim_end_matches('.').to_string();
            match self.addresses(&host, port).await {
                Ok(addrs) => hops.push(Hop { name: host, addrs }),
                Err(e) => last_err = Some(e),
            }
        }
        if hops.is_empty() {
            return Err(last_err
                .map(|e| ResolveError::Temporary(e.to_string()))
                .unwrap_or_else(|| ResolveError::Temporary(format!("no usable MX for {domain}"))));
        }
        Ok(hops)
    }

    async fn addresses(&self, host: &str, port: u16) -> Result<Vec<SocketAddr>, ResolveError> {
        let fqdn = format!("{}.", host.trim_end_matches('.'));
        match self.inner.lookup_ip(fqdn.as_str()).await {
            Ok(l) => {
                let v: Vec<SocketAddr> = l.iter().map(|ip| SocketAddr::new(ip, port)).collect();
                if v.is_empty() {
                    Err(ResolveError::Temporary(format!("{host}: no address")))
                } else {
                    Ok(v)
                }
            }
            Err(e) if e.is_nx_domain() => Err(ResolveError::Permanent(format!(
                "Host or domain name not found. Name service error for name={host} type=A: Host not found"
            ))),
            Err(e) => Err(ResolveError::Temporary(format!("address lookup for {host}: {e}"))),
        }
    }
}
