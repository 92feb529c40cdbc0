//! `directory.kind = "ldap"`: recipients checked against the establishment's LDAP, where the
//! national directory was imported (`passerelle directory import`).
//!
//! A few connections (ldap3 multiplexes requests on each), opened lazily and replaced when they
//! fail, so the gateway recovers by itself when LDAP comes back. Every failure or timeout is
//! an error (451 4.4.3 at RCPT), never "unknown". Answers are cached with separate positive
//! and negative TTLs and a size bound.

use crate::config::LdapConfig;
use crate::policy::directory::{BoxFuture, Directory, DirectoryError, Lookup};
use ldap3::{Ldap, LdapConnAsync, LdapConnSettings, Scope, SearchEntry};
use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Where `directory import` and `directory sync` write the extract's `Identification
/// Structure` (see `ldif`): which structure owns a BAL.
const STRUCTURE_ATTRIBUTE: &str = "departmentNumber";

/// `[directory]` with `kind = "ldap"`, and the TLS trust for ldaps/StartTLS (built from
/// `[tls].trust_anchors`).
#[derive(Clone, Debug)]
pub struct LdapOptions {
    pub config: LdapConfig,
    pub tls: Option<Arc<rustls::ClientConfig>>,
}

/// Answers kept for a while; errors are never cached.
pub struct Cache {
    map: Mutex<HashMap<String, (Lookup, Instant)>>,
    positive: Duration,
    negative: Duration,
    max: usize,
}

impl Cache {
    pub fn new(positive: Duration, negative: Duration, max: usize) -> Cache {
        Cache {
            map: Mutex::new(HashMap::new()),
            positive,
            negative,
            max,
        }
    }

    pub fn get(&self, key: &str) -> Option<Lookup> {
        let map = self.map.lock().unwrap_or_else(|p| p.into_inner());
        let (v, at) = map.get(key)?;
        let ttl = match v {
            Lookup::Found { .. } => self.positive,
            Lookup::NotFound => self.negative,
        };
        (at.elapsed() < ttl).then(|| v.clone())
    }

    pub fn put(&self, key: String, v: Lookup) {
        if self.max == 0 {
            return;
        }
        let mut map = self.map.lock().unwrap_or_else(|p| p.into_inner());
        if map.len() >= self.max {
            // Drop the expired ones; if that is not enough, the older half.
            let (pos, neg) = (self.positive, self.negative);
            map.retain(|_, (v, at)| {
                at.elapsed()
                    < match v {
                        Lookup::Found { .. } => pos,
                        Lookup::NotFound => neg,
                    }
            });
            if map.len() >= self.max {
                let mut ages: Vec<Instant> = map.values().map(|(_, at)| *at).collect();
                ages.sort_unstable();
                let cut = ages[ages.len() / 2];
                map.retain(|_, (_, at)| *at > cut);
            }
        }
        map.insert(key, (v, Instant::now()));
    }

    pub fn len(&self) -> usize {
        self.map.lock().unwrap_or_else(|p| p.into_inner()).len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

pub struct LdapDirectory {
    opts: LdapOptions,
    slots: Vec<tokio::sync::Mutex<Option<Ldap>>>,
    next: AtomicUsize,
    pub cache: Cache,
}

/// Cache key: the address with its domain lowercased.
fn cache_key(address: &str) -> String {
    match address.rsplit_once('@') {
        Some((l, d)) => format!("{l}@{}", d.to_ascii_lowercase()),
        None => address.to_string(),
    }
}

/// The search filter for one address, escaped per RFC 4515 so `*`, `(`, `)`, `\` and NUL in
/// an address are literal characters, never filter syntax.
pub fn build_filter(template: &str, address: &str) -> String {
    template.replace("{address}", &ldap3::ldap_escape(address))
}

/// One connection, its driver spawned, bound when `bind` (DN, password) is given. Shared by
/// the RCPT lookups and `directory sync`.
pub async fn connect(
    url: &str,
    timeout: Duration,
    starttls: bool,
    tls: Option<Arc<rustls::ClientConfig>>,
    bind: Option<(&str, &str)>,
) -> Result<Ldap, String> {
    let mut settings = LdapConnSettings::new()
        .set_conn_timeout(timeout)
        .set_starttls(starttls);
    if let Some(cfg) = tls {
        settings = settings.set_config(cfg);
    }
    let (conn, mut ldap) = LdapConnAsync::with_settings(settings, url)
        .await
        .map_err(|e| format!("connect {url}: {e}"))?;
    tokio::spawn(async move {
        if let Err(e) = conn.drive().await {
            tracing::debug!(error = %e, "LDAP connection ended");
        }
    });
    if let Some((dn, pw)) = bind {
        ldap.with_timeout(timeout)
            .simple_bind(dn, pw)
            .await
            .and_then(|r| r.success())
            .map_err(|e| format!("bind as {dn}: {e}"))?;
    }
    Ok(ldap)
}

/// The rustls client config for ldaps/StartTLS: TLS 1.2/1.3 with our provider, the server
/// checked by `verifier` (built from `[tls].trust_anchors`, or a CA file).
pub fn tls_client_config(
    verifier: Arc<dyn rustls::client::danger::ServerCertVerifier>,
) -> Result<Arc<rustls::ClientConfig>, crate::tls::TlsError> {
    crate::tls::anonymous_client_config(verifier)
}

impl LdapDirectory {
    pub fn new(opts: LdapOptions) -> LdapDirectory {
        let c = &opts.config;
        let n = c.pool_size.max(1);
        LdapDirectory {
            cache: Cache::new(c.cache_ttl, c.negative_ttl, c.cache_size),
            slots: (0..n).map(|_| tokio::sync::Mutex::new(None)).collect(),
            next: AtomicUsize::new(0),
            opts,
        }
    }

    async fn connect(&self) -> Result<Ldap, String> {
        let (o, c) = (&self.opts, &self.opts.config);
        let bind = c
            .bind_dn
            .as_deref()
            .map(|dn| (dn, c.bind_password.as_deref().unwrap_or("")));
        connect(&c.url, c.timeout, c.starttls, o.tls.clone(), bind).await
    }

    /// A live connection from the pool, opening it if needed.
    async fn handle(&self) -> Result<(usize, Ldap), String> {
        let i = self.next.fetch_add(1, Ordering::Relaxed) % self.slots.len();
        let mut slot = self.slots[i].lock().await;
        if let Some(l) = slot.as_mut() {
            if !l.is_closed() {
                return Ok((i, l.clone()));
            }
        }
        let l = self.connect().await?;
        *slot = Some(l.clone());
        Ok((i, l))
    }

    async fn search(&self, address: &str) -> Result<Lookup, String> {
        let (slot, mut ldap) = self.handle().await?;
        let filter = build_filter(&self.opts.config.filter, address);
        let attr = self.opts.config.bal_type_attribute.as_str();
        let result = ldap
            .with_timeout(self.opts.config.timeout)
            .search(
                &self.opts.config.base,
                Scope::Subtree,
                &filter,
                vec![attr, STRUCTURE_ATTRIBUTE],
            )
            .await
            .and_then(|r| r.success());
        match result {
            Ok((entries, _)) => Ok(match entries.into_iter().next() {
                Some(e) => {
                    let e = SearchEntry::construct(e);
                    let bal_type = e
                        .attrs
                        .iter()
                        .find(|(k, _)| k.eq_ignore_ascii_case(attr))
                        .and_then(|(_, v)| v.first().cloned())
                        .unwrap_or_default();
                    let structures = e
                        .attrs
                        .iter()
                        .find(|(k, _)| k.eq_ignore_ascii_case(STRUCTURE_ATTRIBUTE))
                        .map(|(_, v)| v.clone())
                        .unwrap_or_default();
                    Lookup::Found {
                        bal_type,
                        structures,
                    }
                }
                None => Lookup::NotFound,
            }),
            Err(e) => {
                // Drop the connection: the next request opens a fresh one.
                *self.slots[slot].lock().await = None;
                Err(format!("search in {}: {e}", self.opts.config.url))
            }
        }
    }
}

impl Directory for LdapDirectory {
    fn lookup<'a>(&'a self, address: &'a str) -> BoxFuture<'a, Result<Lookup, DirectoryError>> {
        Box::pin(async move {
            let key = cache_key(address);
            if let Some(hit) = self.cache.get(&key) {
                crate::metrics::inc(
                    "passerelle_directory_cache_hits_total",
                    "LDAP answers served from the cache",
                    &[],
                );
                return Ok(hit);
            }
            let r = self.search(address).await.map_err(DirectoryError)?;
            self.cache.put(key, r.clone());
            Ok(r)
        })
    }

    fn describe(&self) -> String {
        self.opts.config.url.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filters_are_escaped() {
        let t = "(&(objectClass=inetOrgPerson)(mail={address}))";
        assert_eq!(
            build_filter(t, "a*b@x.fr"),
            "(&(objectClass=inetOrgPerson)(mail=a\\2ab@x.fr))"
        );
        assert_eq!(
            build_filter("(mail={address})", "*)(uid=*"),
            "(mail=\\2a\\29\\28uid=\\2a)"
        );
        assert_eq!(
            build_filter("(mail={address})", "a\\b@x"),
            "(mail=a\\5cb@x)"
        );
    }

    #[test]
    fn cache_ttls_and_bound() {
        let c = Cache::new(Duration::from_secs(60), Duration::ZERO, 4);
        c.put(
            "a@x".into(),
            Lookup::Found {
                bal_type: "PER".into(),
                structures: vec![],
            },
        );
        c.put("b@x".into(), Lookup::NotFound);
        assert!(c.get("a@x").is_some());
        assert!(c.get("b@x").is_none(), "negative TTL 0 means not cached");
        for i in 0..20 {
            c.put(
                format!("{i}@x"),
                Lookup::Found {
                    bal_type: "ORG".into(),
                    structures: vec![],
                },
            );
        }
        assert!(c.len() <= 4);
        assert_eq!(cache_key("Dr.A@CHU.MSSante.fr"), "Dr.A@chu.mssante.fr");
    }

    #[tokio::test]
    async fn unreachable_directory_is_an_error_not_unknown() {
        let d = LdapDirectory::new(LdapOptions {
            config: LdapConfig {
                url: "ldap://127.0.0.1:1".into(),
                base: "dc=x".into(),
                filter: "(mail={address})".into(),
                bind_dn: None,
                bind_password: None,
                timeout: Duration::from_secs(2),
                starttls: false,
                pool_size: 2,
                cache_ttl: Duration::from_secs(60),
                negative_ttl: Duration::from_secs(60),
                cache_size: 100,
                bal_type_attribute: "employeeType".into(),
            },
            tls: None,
        });
        assert!(d.lookup("a@b.fr").await.is_err());
        assert!(d.cache.is_empty(), "errors are not cached");
    }
}
