//! Delivery: turns one queued message into SMTP transactions, one per (transport, next hop),
//! each carrying all of its recipients, and reports a typed outcome per recipient.
//! Connections are cached for reuse and limited per destination; a destination that cannot be
//! reached at all rests before the next try (Postfix's dead destination).
//!
//! Must not import: queue (the queue calls delivery), intake, console, cli, admin.

// A `Failure` (who, what they said, why: ~150 bytes) is the cold path of every step here;
// boxing it at each `?` would cost more reading than it saves.
#![allow(clippy::result_large_err)]

mod batch;
pub mod check;
pub mod client;
mod pool;
pub mod share;

#[cfg(test)]
mod resume_tests;

pub use crate::net::resolve::{Hop, ResolveError, Resolver};
pub use client::{Client, ClientOptions, TlsMode};

use crate::config::{Config, NextHop, QueueConfig, TlsPolicy, TransportConfig};
use crate::message::{Envelope, Failure, FailureKind, Outcome, Remote, TlsRefusal};
use crate::pki::dn::Dn;
use crate::tls::{AcceptAnyServer, Crls, TlsMaterial};
use crate::util::clock::now_ms;
use batch::{Batch, BatchResult};
use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::Semaphore;

pub type BoxFuture<'a, T> = std::pin::Pin<Box<dyn std::future::Future<Output = T> + Send + 'a>>;

/// Defined by policy, which answers it; delivery asks it at each connection.
pub use crate::policy::TrustList;

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
                // Opportunistic and trust-space connections resume TLS sessions, across
                // reloads too (see `tls::peer_judged_client_config` for why it is safe).
                let any = crate::tls::peer_judged_client_config(m).map_err(|e| e.to_string())?;
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

/// A delivery in progress to one destination, counted by the connection pool.
struct Busy<'a> {
    agent: &'a Agent,
    key: &'a str,
}

impl Drop for Busy<'_> {
    fn drop(&mut self) {
        self.agent
            .pool
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .end(self.key);
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
    pool: Mutex<pool::Pool<Client>>,
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
            pool: Mutex::new(pool::Pool::default()),
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
        let mut out = Vec::new();
        let mut batches = self.batches(&cfg, env, pending, &mut out).await;
        // At most two rounds: a split batch comes back as single-domain batches, which never
        // split again.
        for _ in 0..2 {
            let results = futures::future::join_all(
                batches
                    .iter()
                    .map(|b| self.deliver_batch(&cfg, env, b, body)),
            )
            .await;
            let mut again = Vec::new();
            for (b, r) in batches.into_iter().zip(results) {
                match r {
                    BatchResult::Done(a) => out.push(a),
                    BatchResult::Split => again.extend(b.parts.into_iter().map(|p| Batch {
                        transport: b.transport.clone(),
                        destination: p.domain.clone(),
                        key: b.key.clone(),
                        pinned: true,
                        hops: b.hops.clone(),
                        parts: vec![p],
                    })),
                }
            }
            batches = again;
            if batches.is_empty() {
                break;
            }
        }
        out
    }

    async fn deliver_batch(
        &self,
        cfg: &DeliveryConfig,
        env: &Envelope,
        b: &Batch<'_>,
        body: &[u8],
    ) -> BatchResult {
        let started = Instant::now();
        let mut attempt = Attempt::local(&b.transport, Vec::new());
        let all = |o: Outcome| -> Vec<(usize, Outcome)> {
            b.rcpts().map(|(i, _)| (*i, o.clone())).collect()
        };
        let done_with = |mut a: Attempt, o| {
            a.outcomes = o;
            BatchResult::Done(a)
        };
        let Some(t) = cfg.transports.get(&b.transport) else {
            let f = Failure::new(FailureKind::Local, "transport vanished");
            return done_with(attempt, all(Outcome::Deferred(f)));
        };
        let first_domain = b.parts.first().map_or("", |p| p.domain.as_str());
        let tls = match cfg.tls_mode(t, first_domain) {
            // A batch's connection must show a DN declared by one of its domains before
            // anything more is said; each domain is then held to its own list.
            Ok(TlsMode::Mutual {
                config,
                validator,
                domain,
                ..
            }) => TlsMode::Mutual {
                config,
                validator,
                allowed: share::union_of(&b.declared()).into(),
                domain,
            },
            Ok(m) => m,
            Err(f) => return done_with(attempt, all(Outcome::Deferred(f))),
        };
        if !b.pinned {
            if let Some((until_ms, failure)) = self.resting(&b.key) {
                return done_with(attempt, all(Outcome::Postponed { until_ms, failure }));
            }
        }
        let sem = self.limit(&b.key, cfg.queue.destination_concurrency);
        let Ok(_permit) = sem.acquire_owned().await else {
            let f = Failure::new(FailureKind::Local, "shutting down");
            return done_with(attempt, all(Outcome::Deferred(f)));
        };
        let _busy = self.busy(&b.key);
        let finish = |mut a: Attempt, c: &Client, outcomes| {
            a.remote = Some(c.remote.clone());
            a.tls = c.tls.clone();
            a.peer_dn = c.peer_dn.clone();
            a.outcomes = outcomes;
            a.duration = started.elapsed();
            BatchResult::Done(a)
        };

        // A cached connection first, one that has proven a DN every domain of the batch
        // declares; a dead one is replaced by a fresh one, once.
        let declared = b.declared();
        let fits = |c: &Client| {
            !b.pinned
                || declared
                    .iter()
                    .all(|d| share::may_carry(c.verified_dn.as_ref(), d))
        };
        if let Some(mut c) = self.take_pooled(&b.key, cfg, fits) {
            let rcpts: Vec<_> = b.rcpts().copied().collect();
            match c.send(env, &rcpts, body).await {
                Ok(res) => {
                    let a = finish(attempt, &c, res);
                    self.give_back(b.key.clone(), c, cfg);
                    return a;
                }
                Err(e) => tracing::debug!(error = %e, "cached connection failed; reconnecting"),
            }
        }
        let hops = match (&b.hops, &t.hop) {
            (Some(h), _) => Ok(h.clone()),
            (None, NextHop::Relay(hp)) => cfg.resolver.static_hop(hp).await,
            (None, NextHop::Mx { port }) => cfg.resolver.mx_hops(&b.destination, *port).await,
        };
        let hops = match hops {
            Ok(h) => h,
            Err(ResolveError::Permanent(e)) => {
                return done_with(
                    attempt,
                    all(Outcome::Failed(Failure::new(FailureKind::Dns, e))),
                )
            }
            Err(ResolveError::Temporary(e)) => {
                let f = Failure::new(FailureKind::Dns, e);
                return done_with(attempt, all(Outcome::Deferred(f)));
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
                        if b.parts.len() > 1
                            && e.kind == FailureKind::Tls(TlsRefusal::DnNotDeclared)
                        {
                            return BatchResult::Split;
                        }
                        tracing::info!(queue_id = %env.id, error = %e, "next hop unusable");
                        attempt.remote = e.remote.clone();
                        last = Some(e);
                        continue;
                    }
                };
                // The pin, domain by domain, against the DN this connection has proven.
                let (carried, refused) = if b.pinned {
                    share::split_by_pin(c.verified_dn.as_ref(), &declared)
                } else {
                    ((0..b.parts.len()).collect(), Vec::new())
                };
                let mut outcomes = Vec::new();
                for &k in &refused {
                    let p = &b.parts[k];
                    let why = match &c.verified_dn {
                        Some(dn) => client::pin_refusal(dn, &p.domain, p.declared.len()),
                        None => "peer certificate refused: unreadable subject".to_string(),
                    };
                    let f = Failure::new(FailureKind::Tls(TlsRefusal::DnNotDeclared), why)
                        .at(&c.remote);
                    outcomes.extend(
                        p.rcpts
                            .iter()
                            .map(|(i, _)| (*i, Outcome::Deferred(f.clone()))),
                    );
                }
                let rcpts: Vec<_> = carried
                    .iter()
                    .flat_map(|&k| b.parts[k].rcpts.iter().copied())
                    .collect();
                match c.send(env, &rcpts, body).await {
                    Ok(res) => {
                        outcomes.extend(res);
                        let a = finish(attempt, &c, outcomes);
                        self.give_back(b.key.clone(), c, cfg);
                        return a;
                    }
                    Err(e) if e.is_permanent() => {
                        outcomes
                            .extend(rcpts.iter().map(|(i, _)| (*i, Outcome::Failed(e.clone()))));
                        let a = finish(attempt, &c, outcomes);
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
            for p in &b.parts {
                dead.insert(p.dead_key.clone(), (until, failure.clone()));
            }
        }
        attempt.outcomes = all(Outcome::Deferred(failure));
        attempt.duration = started.elapsed();
        BatchResult::Done(attempt)
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

    /// A delivery to `key` runs until the guard drops: the pool keeps as many connections as
    /// ran at once.
    fn busy<'a>(&'a self, key: &'a str) -> Busy<'a> {
        self.pool
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .begin(key, Instant::now());
        Busy { agent: self, key }
    }

    /// The most recently used cached connection under `key` that `fits` and is not worn out.
    fn take_pooled(
        &self,
        key: &str,
        cfg: &DeliveryConfig,
        fits: impl Fn(&Client) -> bool,
    ) -> Option<Client> {
        let mut pool = self.pool.lock().unwrap_or_else(|p| p.into_inner());
        pool.take(key, |c| {
            fits(c) && !reuse_over(c.transactions, c.opened.elapsed(), &cfg.queue)
        })
    }

    fn give_back(&self, key: String, c: Client, cfg: &DeliveryConfig) {
        let q = &cfg.queue;
        if reuse_over(c.transactions, c.opened.elapsed(), q) || q.connection_cache_time.is_zero() {
            tokio::spawn(c.quit());
            return;
        }
        let mut pool = self.pool.lock().unwrap_or_else(|p| p.into_inner());
        pool.put(&key, c, Instant::now());
    }

    /// Closes idle connections past their cache time that the destination's recent peak
    /// does not keep (see [`pool`]) or too old to reuse, and forgets the limits of
    /// destinations nobody is delivering to (the map would otherwise grow with every domain
    /// ever seen).
    async fn sweep(&self) {
        let cfg = self.config.load();
        let q = &cfg.queue;
        let expired: Vec<Client> = {
            let mut pool = self.pool.lock().unwrap_or_else(|p| p.into_inner());
            pool.expire(Instant::now(), q.connection_cache_time, |c| {
                reuse_over(c.transactions, c.opened.elapsed(), q)
            })
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
            pool.drain()
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

/// A pinned route's name: its MX hosts in preference order. Domains whose MX records name the
/// same hosts are served by the same machines, so their connections are interchangeable once
/// the pin allows it.
fn route_of(hops: &[Hop]) -> String {
    let names: Vec<&str> = hops.iter().map(|h| h.name.as_str()).collect();
    format!("mx:{}", names.join(","))
}

pub use crate::policy::address::domain_of;

/// Whether a connection has carried its share and must not be reused: `transactions` past
/// a non-zero count limit, or older than the reuse age (Postfix's rule: by default no count
/// limit, 300 s of age).
fn reuse_over(transactions: usize, age: Duration, q: &QueueConfig) -> bool {
    (q.connection_reuse_limit > 0 && transactions >= q.connection_reuse_limit)
        || age >= q.connection_reuse_time
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
mod tests;
