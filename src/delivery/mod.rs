//! Delivery: turns one queued message into SMTP transactions, one per (transport, next hop),
//! each carrying all of its recipients, and reports a typed outcome per recipient.
//! Connections are cached for reuse and limited per destination; a destination that cannot be
//! reached at all rests before the next try (Postfix's dead destination).

// A `Failure` (who, what they said, why: ~150 bytes) is the cold path of every step here;
// boxing it at each `?` would cost more reading than it saves.
#![allow(clippy::result_large_err)]

pub mod client;
pub mod resolve;

pub use client::{Client, ClientOptions, TlsMode};
pub use resolve::{Hop, ResolveError, Resolver};

use crate::config::{Config, NextHop, QueueConfig, TlsPolicy, TransportConfig};
use crate::dn::Dn;
use crate::message::{
    now_ms, Envelope, Failure, FailureKind, Outcome, Recipient, Remote, TlsRefusal,
};
use crate::tls::{AcceptAnyServer, Crls, TlsMaterial};
use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::Semaphore;

pub type BoxFuture<'a, T> = std::pin::Pin<Box<dyn std::future::Future<Output = T> + Send + 'a>>;

/// The operator certificate DNs declared for a recipient domain: the ANS whitelist, asked at
/// delivery time so a refreshed list applies at once.
pub trait TrustList: Send + Sync {
    fn declared_dns(&self, domain: &str) -> Vec<Dn>;
}

/// What the queue needs of delivery; the scheduler is tested with a fake one.
pub trait Transport: Send + Sync {
    /// One attempt at recipients `pending` (indexes into `env.recipients`) of a message.
    fn deliver<'a>(
        &'a self,
        env: &'a Envelope,
        pending: &'a [usize],
        body: &'a [u8],
    ) -> BoxFuture<'a, Vec<Attempt>>;

    /// Ends the rest period of the destinations of `env`'s recipients (all destinations with
    /// `None`): an administrator asked for a retry now, as `postqueue -f`/`-i` do.
    fn revive(&self, env: Option<&Envelope>);
}

/// One transaction (or one try at one) and what it did to each recipient it carried.
#[derive(Debug, Clone)]
pub struct Attempt {
    pub transport: String,
    /// The MX host or next hop that answered last (the one that decided).
    pub remote: Option<Remote>,
    /// `TLSv1.3 with cipher ...` when the session was encrypted.
    pub tls: Option<String>,
    /// The peer certificate's subject DN, as written.
    pub peer_dn: Option<String>,
    pub duration: Duration,
    pub outcomes: Vec<(usize, Outcome)>,
}

/// What delivery needs from a config snapshot; rebuilt on reload.
pub struct DeliveryConfig {
    pub hostname: String,
    pub transports: BTreeMap<String, TransportConfig>,
    pub queue: QueueConfig,
    pub resolver: Resolver,
    /// Encrypt without authenticating (opportunistic), presenting our certificate if we have one.
    pub tls_any: Option<Arc<rustls::ClientConfig>>,
    /// Chain and name verified against our trust anchors and CRLs (required).
    pub tls_verified: Option<Arc<rustls::ClientConfig>>,
    /// Our certificate presented, the peer judged after the handshake (mutual).
    pub tls_mutual: Option<(Arc<rustls::ClientConfig>, crate::tls::PeerValidator)>,
    pub pins: Arc<dyn TrustList>,
}

impl DeliveryConfig {
    pub fn new(
        cfg: &Config,
        tls: Option<&TlsMaterial>,
        crls: &Crls,
        pins: Arc<dyn TrustList>,
    ) -> Result<DeliveryConfig, String> {
        let any_server = || Arc::new(AcceptAnyServer(crate::tls::provider()));
        let (tls_any, tls_verified, tls_mutual) = match tls {
            Some(m) => {
                let any = m.client_config(any_server()).map_err(|e| e.to_string())?;
                let verified = m
                    .client_config(
                        m.webpki_server_verifier(&crls.load())
                            .map_err(|e| e.to_string())?,
                    )
                    .map_err(|e| e.to_string())?;
                let validator = crate::tls::PeerValidator::new(m, crls.clone());
                (Some(any.clone()), Some(verified), Some((any, validator)))
            }
            // Opportunistic TLS still works without our own certificate.
            None => (
                Some(crate::tls::anonymous_client_config(any_server()).map_err(|e| e.to_string())?),
                None,
                None,
            ),
        };
        Ok(DeliveryConfig {
            hostname: cfg.server.hostname.clone(),
            transports: cfg.all_transports(),
            queue: cfg.queue.clone(),
            resolver: Resolver::new(&cfg.dns)?,
            tls_any,
            tls_verified,
            tls_mutual,
            pins,
        })
    }

    pub fn tls_mode(&self, t: &TransportConfig, domain: &str) -> Result<TlsMode, Failure> {
        let local = |why: &str| Failure::new(FailureKind::Local, why);
        match t.tls {
            TlsPolicy::Mutual => {
                let (config, validator) = self.tls_mutual.clone().ok_or_else(|| {
                    Failure::new(
                        FailureKind::Tls(TlsRefusal::NoLocalCertificate),
                        "tls = \"mutual\" but no [tls] certificate is loaded",
                    )
                })?;
                let allowed: Arc<[Dn]> = self.pins.declared_dns(domain).into();
                if allowed.is_empty() {
                    return Err(Failure::new(
                        FailureKind::Tls(TlsRefusal::DomainNotDeclared),
                        format!(
                            "{domain} is not declared in the MSSante whitelist: no operator certificate to expect, not sending"
                        ),
                    ));
                }
                Ok(TlsMode::Mutual {
                    config,
                    validator,
                    allowed,
                    domain: domain.to_string(),
                })
            }
            TlsPolicy::None => Ok(TlsMode::None),
            TlsPolicy::Opportunistic => Ok(self
                .tls_any
                .clone()
                .map_or(TlsMode::None, TlsMode::Opportunistic)),
            TlsPolicy::Required => self
                .tls_verified
                .clone()
                .map(TlsMode::Required)
                .ok_or_else(|| local("TLS required but no [tls] material loaded")),
        }
    }
}

/// A group of recipients that share one transaction.
struct Group<'a> {
    transport: String,
    /// next_hop for relay, the recipient domain for mx.
    destination: String,
    /// The recipients' domain when the DN pin depends on it (mutual TLS), else empty.
    domain: String,
    rcpts: Vec<(usize, &'a Recipient)>,
}

impl Group<'_> {
    /// Connections, limits and rest periods are per (transport, destination, pinned domain).
    fn key(&self) -> String {
        format!("{}|{}|{}", self.transport, self.destination, self.domain)
    }
}

/// The simultaneous deliveries allowed to one destination, resized when a reload changes
/// `destination_concurrency`.
struct Limit {
    sem: Arc<Semaphore>,
    size: usize,
}

pub struct Agent {
    config: arc_swap::ArcSwap<DeliveryConfig>,
    pool: Mutex<HashMap<String, Vec<Client>>>,
    limits: Mutex<HashMap<String, Limit>>,
    /// Destinations that could not be reached at all, until when (Unix ms), and why: like
    /// Postfix's "destination marked dead", the messages queued behind a dead host are
    /// postponed at once instead of each opening its own doomed connection.
    dead: Mutex<HashMap<String, (u64, Failure)>>,
}

impl Agent {
    pub fn new(config: DeliveryConfig) -> Arc<Agent> {
        let agent = Arc::new(Agent {
            config: arc_swap::ArcSwap::from_pointee(config),
            pool: Mutex::new(HashMap::new()),
            limits: Mutex::new(HashMap::new()),
            dead: Mutex::new(HashMap::new()),
        });
        let weak = Arc::downgrade(&agent);
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(Duration::from_millis(500)).await;
                let Some(a) = weak.upgrade() else { break };
                a.sweep().await;
            }
        });
        agent
    }

    /// A new snapshot's settings; per-destination limits take the new concurrency at once.
    pub fn reconfigure(&self, config: DeliveryConfig) {
        let size = config.queue.destination_concurrency;
        self.config.store(Arc::new(config));
        let mut limits = self.limits.lock().unwrap_or_else(|p| p.into_inner());
        for l in limits.values_mut() {
            resize_semaphore(&l.sem, &mut l.size, size);
        }
    }

    async fn deliver_all(&self, env: &Envelope, pending: &[usize], body: &[u8]) -> Vec<Attempt> {
        // One settings snapshot for the whole job.
        let cfg = self.config.load_full();
        let mut groups: Vec<Group> = Vec::new();
        let mut out = Vec::new();
        for &i in pending {
            let Some(r) = env.recipients.get(i) else {
                continue;
            };
            let Some(t) = cfg.transports.get(&r.transport) else {
                out.push(Attempt::local(
                    &r.transport,
                    vec![(
                        i,
                        Outcome::Deferred(Failure::new(
                            FailureKind::Local,
                            format!("transport {:?} is not configured", r.transport),
                        )),
                    )],
                ));
                continue;
            };
            let rcpt_domain = domain_of(&r.address);
            let destination = match &t.hop {
                NextHop::Relay(hp) => hp.to_string(),
                NextHop::Mx { .. } => rcpt_domain.clone(),
            };
            // Mutual TLS pins the peer per recipient domain: never mix domains in one session.
            let domain = if t.tls == TlsPolicy::Mutual {
                rcpt_domain
            } else {
                String::new()
            };
            match groups.iter_mut().find(|g| {
                g.transport == r.transport && g.destination == destination && g.domain == domain
            }) {
                Some(g) => g.rcpts.push((i, r)),
                None => groups.push(Group {
                    transport: r.transport.clone(),
                    destination,
                    domain,
                    rcpts: vec![(i, r)],
                }),
            }
        }
        let futs = groups
            .iter()
            .map(|g| self.deliver_group(&cfg, env, g, body));
        out.extend(futures::future::join_all(futs).await);
        out
    }

    async fn deliver_group(
        &self,
        cfg: &DeliveryConfig,
        env: &Envelope,
        g: &Group<'_>,
        body: &[u8],
    ) -> Attempt {
        let started = Instant::now();
        let mut attempt = Attempt::local(&g.transport, Vec::new());
        let all = |o: Outcome| g.rcpts.iter().map(|(i, _)| (*i, o.clone())).collect();
        let Some(t) = cfg.transports.get(&g.transport) else {
            attempt.outcomes = all(Outcome::Deferred(Failure::new(
                FailureKind::Local,
                "transport vanished",
            )));
            return attempt;
        };
        let tls = match cfg.tls_mode(t, &g.domain) {
            Ok(m) => m,
            Err(f) => {
                attempt.outcomes = all(Outcome::Deferred(f));
                return attempt;
            }
        };
        let key = g.key();
        if let Some((until_ms, failure)) = self.resting(&key) {
            attempt.outcomes = all(Outcome::Postponed { until_ms, failure });
            return attempt;
        }
        let sem = self.limit(&key, cfg.queue.destination_concurrency);
        let Ok(_permit) = sem.acquire_owned().await else {
            attempt.outcomes = all(Outcome::Deferred(Failure::new(
                FailureKind::Local,
                "shutting down",
            )));
            return attempt;
        };
        let done = |mut a: Attempt, c: &Client, outcomes| {
            a.remote = Some(c.remote.clone());
            a.tls = c.tls.clone();
            a.peer_dn = c.peer_dn.clone();
            a.outcomes = outcomes;
            a.duration = started.elapsed();
            a
        };

        // A cached connection first; a dead one is replaced by a fresh one, once.
        if let Some(mut c) = self.take_pooled(&key, cfg) {
            match c.send(env, &g.rcpts, body).await {
                Ok(res) => {
                    let a = done(attempt, &c, res);
                    self.give_back(key, c, cfg);
                    return a;
                }
                Err(e) => tracing::debug!(error = %e, "cached connection failed; reconnecting"),
            }
        }
        let hops = match &t.hop {
            NextHop::Relay(hp) => cfg.resolver.static_hop(hp).await,
            NextHop::Mx { port } => cfg.resolver.mx_hops(&g.destination, *port).await,
        };
        let hops = match hops {
            Ok(h) => h,
            Err(ResolveError::Permanent(e)) => {
                attempt.outcomes = all(Outcome::Failed(Failure::new(FailureKind::Dns, e)));
                return attempt;
            }
            Err(ResolveError::Temporary(e)) => {
                attempt.outcomes = all(Outcome::Deferred(Failure::new(FailureKind::Dns, e)));
                return attempt;
            }
        };
        let mut last: Option<Failure> = None;
        for hop in &hops {
            for addr in &hop.addrs {
                let opts = ClientOptions {
                    helo: cfg.hostname.clone(),
                    server_name: hop.name.clone(),
                    tls: tls.clone(),
                    connect_timeout: cfg.queue.connect_timeout,
                    command_timeout: cfg.queue.command_timeout,
                };
                let mut c = match Client::connect(*addr, &opts).await {
                    Ok(c) => c,
                    Err(e) => {
                        tracing::info!(queue_id = %env.id, error = %e, "next hop unusable");
                        attempt.remote = e.remote.clone();
                        last = Some(e);
                        continue;
                    }
                };
                match c.send(env, &g.rcpts, body).await {
                    Ok(res) => {
                        let a = done(attempt, &c, res);
                        self.give_back(key, c, cfg);
                        return a;
                    }
                    Err(e) if e.is_permanent() => {
                        let a = done(attempt, &c, all(Outcome::Failed(e)));
                        c.quit().await;
                        return a;
                    }
                    Err(e) => {
                        tracing::info!(queue_id = %env.id, error = %e, "transaction failed");
                        attempt.remote = Some(c.remote.clone());
                        attempt.tls = c.tls.clone();
                        attempt.peer_dn = c.peer_dn.clone();
                        last = Some(e);
                    }
                }
            }
        }
        let failure = last.unwrap_or_else(|| Failure::new(FailureKind::Dns, "no next hop"));
        if failure.kind == FailureKind::Connect {
            // Every address refused or timed out the connection: rest it for the first retry
            // interval (1m by default), so the rest of its queue is not tried one by one.
            let until = now_ms() + cfg.queue.retry_after(1).as_millis() as u64;
            let mut dead = self.dead.lock().unwrap_or_else(|p| p.into_inner());
            dead.insert(key, (until, failure.clone()));
        }
        attempt.outcomes = all(Outcome::Deferred(failure));
        attempt.duration = started.elapsed();
        attempt
    }

    /// The end of a destination's rest period and its reason, if it rests.
    fn resting(&self, key: &str) -> Option<(u64, Failure)> {
        let mut dead = self.dead.lock().unwrap_or_else(|p| p.into_inner());
        match dead.get(key) {
            Some((until, why)) if now_ms() < *until => Some((*until, why.clone())),
            Some(_) => {
                dead.remove(key);
                None
            }
            None => None,
        }
    }

    fn limit(&self, key: &str, size: usize) -> Arc<Semaphore> {
        let mut limits = self.limits.lock().unwrap_or_else(|p| p.into_inner());
        limits
            .entry(key.to_string())
            .or_insert_with(|| Limit {
                sem: Arc::new(Semaphore::new(size)),
                size,
            })
            .sem
            .clone()
    }

    fn take_pooled(&self, key: &str, cfg: &DeliveryConfig) -> Option<Client> {
        let mut pool = self.pool.lock().unwrap_or_else(|p| p.into_inner());
        let v = pool.get_mut(key)?;
        while let Some(c) = v.pop() {
            if c.last_used.elapsed() < cfg.queue.connection_cache_time {
                return Some(c);
            }
            tokio::spawn(c.quit());
        }
        None
    }

    fn give_back(&self, key: String, c: Client, cfg: &DeliveryConfig) {
        if c.transactions >= cfg.queue.connection_reuse_limit
            || cfg.queue.connection_cache_time.is_zero()
        {
            tokio::spawn(c.quit());
            return;
        }
        let mut pool = self.pool.lock().unwrap_or_else(|p| p.into_inner());
        pool.entry(key).or_default().push(c);
    }

    /// Closes idle connections past their cache time, and forgets the limits of destinations
    /// nobody is delivering to (the map would otherwise grow with every domain ever seen).
    async fn sweep(&self) {
        let ttl = self.config.load().queue.connection_cache_time;
        let expired: Vec<Client> = {
            let mut pool = self.pool.lock().unwrap_or_else(|p| p.into_inner());
            let mut out = Vec::new();
            for v in pool.values_mut() {
                let (keep, old): (Vec<_>, Vec<_>) =
                    v.drain(..).partition(|c| c.last_used.elapsed() < ttl);
                *v = keep;
                out.extend(old);
            }
            pool.retain(|_, v| !v.is_empty());
            out
        };
        {
            // Only the map holds an idle limit: clones are taken under this same lock.
            let mut limits = self.limits.lock().unwrap_or_else(|p| p.into_inner());
            limits.retain(|_, l| Arc::strong_count(&l.sem) > 1);
        }
        for c in expired {
            c.quit().await;
        }
    }

    /// Closes every cached connection (shutdown).
    pub async fn close_all(&self) {
        let all: Vec<Client> = {
            let mut pool = self.pool.lock().unwrap_or_else(|p| p.into_inner());
            pool.drain().flat_map(|(_, v)| v).collect()
        };
        for c in all {
            c.quit().await;
        }
    }

    /// Destinations currently resting (for tests and the admin view).
    pub fn resting_count(&self) -> usize {
        self.dead.lock().unwrap_or_else(|p| p.into_inner()).len()
    }
}

impl Transport for Agent {
    fn deliver<'a>(
        &'a self,
        env: &'a Envelope,
        pending: &'a [usize],
        body: &'a [u8],
    ) -> BoxFuture<'a, Vec<Attempt>> {
        Box::pin(self.deliver_all(env, pending, body))
    }

    fn revive(&self, env: Option<&Envelope>) {
        let mut dead = self.dead.lock().unwrap_or_else(|p| p.into_inner());
        match env {
            None => dead.clear(),
            Some(env) => {
                // The destination part of a key is the next hop or the recipient domain; a
                // message's recipients name both, so any key that ends with one of their
                // domains or transports' next hops goes.
                let cfg = self.config.load();
                for r in &env.recipients {
                    let domain = domain_of(&r.address);
                    let hop = cfg.transports.get(&r.transport).map(|t| match &t.hop {
                        NextHop::Relay(hp) => hp.to_string(),
                        NextHop::Mx { .. } => domain.clone(),
                    });
                    dead.retain(|k, _| {
                        let mut parts = k.splitn(3, '|');
                        let (t, dest) = (parts.next(), parts.next());
                        !(t == Some(r.transport.as_str()) && dest == hop.as_deref())
                    });
                }
            }
        }
    }
}

impl Attempt {
    fn local(transport: &str, outcomes: Vec<(usize, Outcome)>) -> Attempt {
        Attempt {
            transport: transport.to_string(),
            remote: None,
            tls: None,
            peer_dn: None,
            duration: Duration::ZERO,
            outcomes,
        }
    }
}

/// The domain of an address, lowercased (the part that routes and pins).
pub fn domain_of(address: &str) -> String {
    address
        .rsplit_once('@')
        .map(|(_, d)| d.to_ascii_lowercase())
        .unwrap_or_default()
}

/// Grows or shrinks a semaphore to `want` permits. Shrinking forgets idle permits now and
/// takes the rest back as deliveries in flight finish.
pub fn resize_semaphore(sem: &Arc<Semaphore>, size: &mut usize, want: usize) {
    if want > *size {
        sem.add_permits(want - *size);
    } else if want < *size {
        let owed = *size - want;
        let forgotten = sem.forget_permits(owed);
        if forgotten < owed {
            let sem = sem.clone();
            let rest = (owed - forgotten) as u32;
            tokio::spawn(async move {
                if let Ok(p) = sem.acquire_many_owned(rest).await {
                    p.forget();
                }
            });
        }
    }
    *size = want;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn semaphores_follow_their_size() {
        let sem = Arc::new(Semaphore::new(4));
        let mut size = 4;
        let held = sem.clone().acquire_many_owned(3).await.unwrap();
        resize_semaphore(&sem, &mut size, 2);
        // One idle permit forgotten at once; one more is taken back when the holder finishes.
        assert_eq!(sem.available_permits(), 0);
        drop(held);
        tokio::task::yield_now().await;
        tokio::time::sleep(Duration::from_millis(10)).await;
        assert_eq!(sem.available_permits(), 2);
        resize_semaphore(&sem, &mut size, 5);
        assert_eq!(sem.available_permits(), 5);
    }

    #[test]
    fn domains() {
        assert_eq!(domain_of("Dr.A@CHU.MSSante.fr"), "chu.mssante.fr");
        assert_eq!(domain_of("nodomain"), "");
    }
}
