//! Delivery: turns one queued message into SMTP transactions, one per (transport, next hop),
//! each carrying all of its recipients, and reports an outcome per recipient.
//! Connections are cached for reuse and limited per destination.

pub mod client;
pub mod resolve;

pub use client::{Client, ClientOptions, RcptOutcome, SessionError, TlsMode};
pub use resolve::{Hop, ResolveError, Resolver};

use crate::config::{Config, NextHop, QueueConfig, TlsPolicy, TransportConfig};
use crate::message::{Envelope, RcptStatus, Recipient, State};
use crate::tls::{AcceptAnyServer, TlsMaterial};
use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::Semaphore;

/// The operator certificate DNs declared for a recipient domain (the ANS whitelist, read at
/// delivery time so a reloaded list applies at once).
pub type DnPins = Arc<dyn Fn(&str) -> Vec<crate::dn::Dn> + Send + Sync>;

/// What delivery needs from a config snapshot; rebuilt on reload.
pub struct DeliveryConfig {
    pub hostname: String,
    pub transports: BTreeMap<String, TransportConfig>,
    pub queue: QueueConfig,
    /// Encrypt without authenticating (opportunistic), presenting our certificate if we have one.
    pub tls_any: Option<Arc<rustls::ClientConfig>>,
    /// Chain and name verified against our trust anchors and CRLs (required).
    pub tls_verified: Option<Arc<rustls::ClientConfig>>,
    /// Our certificate presented, the peer judged after the handshake (mutual).
    pub tls_mutual: Option<(Arc<rustls::ClientConfig>, crate::tls::PeerValidator)>,
    pub pins: DnPins,
}

impl DeliveryConfig {
    pub fn new(
        cfg: &Config,
        tls: Option<&TlsMaterial>,
        pins: DnPins,
    ) -> Result<DeliveryConfig, String> {
        let tls_mutual = match tls {
            Some(m) => Some((
                m.client_config(Arc::new(AcceptAnyServer(crate::tls::provider())))
                    .map_err(|e| e.to_string())?,
                crate::tls::PeerValidator::new(m).map_err(|e| e.to_string())?,
            )),
            None => None,
        };
        let (tls_any, tls_verified) = match tls {
            Some(m) => {
                let any = m
                    .client_config(Arc::new(AcceptAnyServer(crate::tls::provider())))
                    .map_err(|e| e.to_string())?;
                let verified = m
                    .client_config(m.webpki_server_verifier().map_err(|e| e.to_string())?)
                    .map_err(|e| e.to_string())?;
                (Some(any), Some(verified))
            }
            None => {
                // Opportunistic TLS still works without our own certificate.
                let any = rustls::ClientConfig::builder_with_provider(crate::tls::provider())
                    .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
                    .map_err(|e| e.to_string())?
                    .dangerous()
                    .with_custom_certificate_verifier(Arc::new(AcceptAnyServer(
                        crate::tls::provider(),
                    )))
                    .with_no_client_auth();
                (Some(Arc::new(any)), None)
            }
        };
        Ok(DeliveryConfig {
            hostname: cfg.server.hostname.clone(),
            transports: cfg.transport.clone(),
            queue: cfg.queue.clone(),
            tls_any,
            tls_verified,
            tls_mutual,
            pins,
        })
    }

    fn tls_mode(&self, t: &TransportConfig, domain: &str) -> Result<TlsMode, String> {
        match t.tls {
            TlsPolicy::Mutual => {
                let (config, validator) = self.tls_mutual.clone().ok_or_else(|| {
                    "tls = \"mutual\" but no [tls] certificate is loaded".to_string()
                })?;
                let allowed: Arc<[crate::dn::Dn]> = (self.pins)(domain).into();
                if allowed.is_empty() {
                    return Err(format!(
                        "{domain} is not declared in the MSSante whitelist: no operator certificate to expect, not sending"
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
                .ok_or_else(|| "TLS required but no [tls] material loaded".to_string()),
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

pub struct Agent {
    config: arc_swap::ArcSwap<DeliveryConfig>,
    resolver: Resolver,
    pool: Mutex<HashMap<String, Vec<Client>>>,
    limits: Mutex<HashMap<String, Arc<Semaphore>>>,
    /// Destinations that could not be reached at all, until when, and why: like Postfix's
    /// "destination marked dead", the messages queued behind a dead host are deferred at once
    /// instead of each opening its own doomed connection.
    dead: Mutex<HashMap<String, (std::time::Instant, String)>>,
}

impl Agent {
    pub fn new(config: DeliveryConfig, resolver: Resolver) -> Arc<Agent> {
        let agent = Arc::new(Agent {
            config: arc_swap::ArcSwap::from_pointee(config),
            resolver,
            pool: Mutex::new(HashMap::new()),
            limits: Mutex::new(HashMap::new()),
            dead: Mutex::new(HashMap::new()),
        });
        let weak = Arc::downgrade(&agent);
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(Duration::from_millis(500)).await;
                let Some(a) = weak.upgrade() else { break };
                a.sweep_pool().await;
            }
        });
        agent
    }

    pub fn reconfigure(&self, config: DeliveryConfig) {
        self.config.store(Arc::new(config));
    }

    /// One attempt at every pending recipient of the message.
    pub async fn deliver(
        &self,
        env: &Envelope,
        state: &State,
        body: &[u8],
    ) -> Vec<(usize, RcptOutcome)> {
        let cfg = self.config.load_full();
        let mut groups: Vec<Group> = Vec::new();
        let mut out = Vec::new();
        for (i, r) in env.recipients.iter().enumerate() {
            if state.rcpts.get(i).map(|s| s.status) != Some(RcptStatus::Pending) {
                continue;
            }
            let Some(t) = cfg.transports.get(&r.transport) else {
                out.push((
                    i,
                    RcptOutcome::Deferred(format!("transport {:?} is not configured", r.transport)),
                ));
                continue;
            };
            let rcpt_domain = r
                .address
                .rsplit_once('@')
                .map(|(_, d)| d.to_ascii_lowercase())
                .unwrap_or_default();
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
        for results in futures::future::join_all(futs).await {
            out.extend(results);
        }
        out
    }

    async fn deliver_group(
        &self,
        cfg: &DeliveryConfig,
        env: &Envelope,
        g: &Group<'_>,
        body: &[u8],
    ) -> Vec<(usize, RcptOutcome)> {
        let all = |o: &dyn Fn() -> RcptOutcome| {
            g.rcpts.iter().map(|(i, _)| (*i, o())).collect::<Vec<_>>()
        };
        let Some(t) = cfg.transports.get(&g.transport) else {
            return all(&|| RcptOutcome::Deferred("transport vanished".into()));
        };
        let tls = match cfg.tls_mode(t, &g.domain) {
            Ok(m) => m,
            Err(e) => return all(&|| RcptOutcome::Deferred(e.clone())),
        };
        let key = format!("{}|{}|{}", g.transport, g.destination, g.domain);
        if let Some(why) = self.still_dead(&key) {
            return all(&|| RcptOutcome::Deferred(why.clone()));
        }
        let sem = {
            let mut l = self.limits.lock().unwrap_or_else(|p| p.into_inner());
            l.entry(key.clone())
                .or_insert_with(|| Arc::new(Semaphore::new(cfg.queue.destination_concurrency)))
                .clone()
        };
        let Ok(_permit) = sem.acquire_owned().await else {
            return all(&|| RcptOutcome::Deferred("shutting down".into()));
        };

        // A cached connection first; a dead one is replaced by a fresh one, once.
        if let Some(mut c) = self.take_pooled(&key, cfg) {
            match c.send(env, &g.rcpts, body).await {
                Ok(res) => {
                    self.give_back(key, c, cfg);
                    return res;
                }
                Err(e) => tracing::debug!(error = %e, "cached connection failed; reconnecting"),
            }
        }
        let hops = match &t.hop {
            NextHop::Relay(hp) => self.resolver.static_hop(hp).await,
            NextHop::Mx { port } => self.resolver.mx_hops(&g.destination, *port).await,
        };
        let hops = match hops {
            Ok(h) => h,
            Err(ResolveError::Permanent(e)) => return all(&|| RcptOutcome::Failed(e.clone())),
            Err(ResolveError::Temporary(e)) => return all(&|| RcptOutcome::Deferred(e.clone())),
        };
        let mut last: Option<SessionError> = None;
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
                        last = Some(e);
                        continue;
                    }
                };
                match c.send(env, &g.rcpts, body).await {
                    Ok(res) => {
                        self.give_back(key, c, cfg);
                        return res;
                    }
                    Err(e) if e.is_permanent() => {
                        let msg = e.to_string();
                        c.quit().await;
                        return all(&|| RcptOutcome::Failed(msg.clone()));
                    }
                    Err(e) => {
                        tracing::info!(queue_id = %env.id, error = %e, "transaction failed");
                        last = Some(e);
                    }
                }
            }
        }
        let unreachable = matches!(last, Some(SessionError::Connect(..)));
        let msg = last
            .map(|e| e.to_string())
            .unwrap_or_else(|| "no next hop".into());
        if unreachable {
            // Every address refused or timed out the connection: rest it for the first retry
            // interval (1m by default), so the rest of its queue is not tried one by one.
            let until = std::time::Instant::now() + cfg.queue.retry_after(1);
            let mut dead = self.dead.lock().unwrap_or_else(|p| p.into_inner());
            dead.insert(key.clone(), (until, msg.clone()));
        }
        all(&|| RcptOutcome::Deferred(msg.clone()))
    }

    /// The reason a destination is still resting, if it is.
    fn still_dead(&self, key: &str) -> Option<String> {
        let mut dead = self.dead.lock().unwrap_or_else(|p| p.into_inner());
        match dead.get(key) {
            Some((until, why)) if std::time::Instant::now() < *until => Some(format!(
                "{why} (destination not retried until its rest period ends)"
            )),
            Some(_) => {
                dead.remove(key);
                None
            }
            None => None,
        }
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

    async fn sweep_pool(&self) {
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
}
