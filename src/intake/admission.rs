//! Who gets a connection slot on a listener, and who loses it first.
//!
//! Why: one pool of `max_connections` for everyone let 10,500 slow connections from 210
//! addresses (each under the per-address cap) refuse every legitimate client. So a connection
//! is *unattributed* until it shows who it is (an establishment by its address, or any client
//! by a valid certificate after the handshake). Unattributed connections may hold only
//! `unattributed_share` of the slots, must become attributed within `attribution_timeout`,
//! and when their share is full the oldest of them is shed to make room for the newcomer: a
//! real peer needs milliseconds to finish its handshake, a slowloris needs the slot for
//! minutes. Attributed clients always find room (an unattributed session is shed for them).
//! Above `stress_threshold` of occupancy the listener is *stressed* (Postfix's stress mode):
//! timeouts shrink to `stress_timeout`. Limits per network (/24, /64) stop one network from
//! taking the whole unattributed share.
//!
//! The decisions are pure ([`Table::decide`]); the listener and the sessions call
//! [`Admission`], which holds the table behind one mutex (a few integer updates per accept).

use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::Notify;

/// The limits, from `[smtp]`.
#[derive(Debug, Clone, PartialEq)]
pub struct Settings {
    pub max_connections: usize,
    /// Per address; 0 = no limit.
    pub client_connection_limit: usize,
    /// Percent of `max_connections` unattributed sessions may hold (1-100).
    pub unattributed_share: usize,
    /// Simultaneous unattributed connections per network; 0 = no limit.
    pub network_connection_limit: usize,
    /// New unattributed connections per second per network; 0 = no limit.
    pub network_rate_limit: usize,
    pub network_prefix_v4: u8,
    pub network_prefix_v6: u8,
    /// Percent of `max_connections` in use above which the listener is stressed.
    pub stress_threshold: usize,
}

impl Settings {
    pub fn from_limits(l: &crate::config::SmtpLimits) -> Settings {
        Settings {
            max_connections: l.max_connections,
            client_connection_limit: l.client_connection_limit,
            unattributed_share: l.unattributed_share,
            network_connection_limit: l.network_connection_limit,
            network_rate_limit: l.network_rate_limit,
            network_prefix_v4: l.network_prefix_v4,
            network_prefix_v6: l.network_prefix_v6,
            stress_threshold: l.stress_threshold,
        }
    }

    fn unattributed_max(&self) -> usize {
        (self.max_connections * self.unattributed_share.clamp(1, 100) / 100).max(1)
    }
    fn stress_level(&self) -> usize {
        (self.max_connections * self.stress_threshold.clamp(1, 100) / 100).max(1)
    }
}

/// A network as the per-network limits count it: the address with its host bits cleared.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Net(IpAddr);

impl Net {
    pub fn of(ip: IpAddr, v4: u8, v6: u8) -> Net {
        // An IPv4 client seen through an IPv6 socket is counted as IPv4.
        let ip = match ip {
            IpAddr::V6(a) => a.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(ip),
            v4addr => v4addr,
        };
        Net(match ip {
            IpAddr::V4(a) => {
                let bits = u32::from(a);
                let keep = u32::MAX
                    .checked_shl(32 - u32::from(v4.min(32)))
                    .unwrap_or(0);
                IpAddr::V4((bits & keep).into())
            }
            IpAddr::V6(a) => {
                let bits = u128::from(a);
                let keep = u128::MAX
                    .checked_shl(128 - u32::from(v6.min(128)))
                    .unwrap_or(0);
                IpAddr::V6((bits & keep).into())
            }
        })
    }
}

impl std::fmt::Display for Net {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

/// Why a connection was refused or ended: the `reason` label of
/// `passerelle_connections_refused_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reason {
    MaxConnections,
    PerClient,
    PerNetwork,
    Rate,
    /// Shed to make room (the oldest unattributed session).
    Stress,
    /// Not attributed in time, or idle past its command timeout.
    Timeout,
    /// Outside the listener's `clients`.
    NotAllowed,
}

impl Reason {
    pub fn label(self) -> &'static str {
        match self {
            Reason::MaxConnections => "max_connections",
            Reason::PerClient => "per_client",
            Reason::PerNetwork => "per_network",
            Reason::Rate => "rate",
            Reason::Stress => "stress",
            Reason::Timeout => "timeout",
            Reason::NotAllowed => "not_allowed",
        }
    }

    /// What the log line of a refusal says (the texts operators already grep for).
    pub fn log_text(self) -> &'static str {
        match self {
            Reason::MaxConnections => "max_connections reached",
            Reason::PerClient => "client_connection_limit reached",
            Reason::PerNetwork => "network_connection_limit reached",
            Reason::Rate => "network_rate_limit reached",
            Reason::Stress => "shed under stress (oldest unattributed session)",
            Reason::Timeout => "not attributed within attribution_timeout",
            Reason::NotAllowed => "client not in listener.clients",
        }
    }

    /// The reply a refused connection gets before it is closed.
    pub fn reply(self) -> &'static str {
        match self {
            Reason::MaxConnections | Reason::Stress => {
                "421 4.7.0 Too many connections, try again later\r\n"
            }
            Reason::PerClient => "421 4.7.0 Too many connections from your address\r\n",
            Reason::PerNetwork => "421 4.7.0 Too many connections from your network\r\n",
            Reason::Rate => "421 4.7.0 Too many new connections from your network\r\n",
            Reason::Timeout => "421 4.4.2 Error: timeout exceeded\r\n",
            Reason::NotAllowed => "554 5.7.1 Access denied\r\n",
        }
    }
}

/// What to do with a new connection.
#[derive(Debug, PartialEq, Eq)]
pub enum Decision {
    Admit,
    /// Admit, after shedding this (oldest unattributed) session.
    AdmitShedding(u64),
    Refuse(Reason),
}

/// Counts of one listener; pure bookkeeping, no I/O and no clock of its own.
#[derive(Default, Debug)]
pub struct Table {
    total: usize,
    /// Unattributed sessions by sequence number, oldest first.
    unattributed: BTreeMap<u64, Net>,
    per_ip: HashMap<IpAddr, usize>,
    /// Unattributed sessions per network.
    per_net: HashMap<Net, usize>,
    /// New unattributed connections per network in the current second.
    rate: HashMap<Net, usize>,
    rate_second: u64,
    next_seq: u64,
}

impl Table {
    /// The decision for a connection from `ip` (in `net`), attributed at once or not, at
    /// second `now_s`. Pure: [`Table::admit`] applies it.
    pub fn decide(
        &mut self,
        s: &Settings,
        ip: IpAddr,
        net: Net,
        attributed: bool,
        now_s: u64,
    ) -> Decision {
        if now_s != self.rate_second {
            self.rate.clear();
            self.rate_second = now_s;
        }
        let on_ip = self.per_ip.get(&ip).copied().unwrap_or(0);
        if s.client_connection_limit > 0 && on_ip >= s.client_connection_limit {
            return Decision::Refuse(Reason::PerClient);
        }
        let oldest = self.unattributed.keys().next().copied();
        if attributed {
            if self.total < s.max_connections {
                return Decision::Admit;
            }
            return match oldest {
                Some(seq) => Decision::AdmitShedding(seq),
                None => Decision::Refuse(Reason::MaxConnections),
            };
        }
        if s.network_rate_limit > 0
            && self.rate.get(&net).copied().unwrap_or(0) >= s.network_rate_limit
        {
            return Decision::Refuse(Reason::Rate);
        }
        if s.network_connection_limit > 0
            && self.per_net.get(&net).copied().unwrap_or(0) >= s.network_connection_limit
        {
            return Decision::Refuse(Reason::PerNetwork);
        }
        if self.unattributed.len() >= s.unattributed_max() || self.total >= s.max_connections {
            return match oldest {
                Some(seq) => Decision::AdmitShedding(seq),
                None => Decision::Refuse(Reason::MaxConnections),
            };
        }
        Decision::Admit
    }

    /// Records an admitted connection; returns its sequence number.
    pub fn admit(&mut self, ip: IpAddr, net: Net, attributed: bool) -> u64 {
        let seq = self.next_seq;
        self.next_seq += 1;
        self.total += 1;
        *self.per_ip.entry(ip).or_insert(0) += 1;
        if !attributed {
            self.unattributed.insert(seq, net);
            *self.per_net.entry(net).or_insert(0) += 1;
            *self.rate.entry(net).or_insert(0) += 1;
        }
        seq
    }

    /// The session `seq` showed who it is: it no longer counts as unattributed.
    pub fn attribute(&mut self, seq: u64) {
        if let Some(net) = self.unattributed.remove(&seq) {
            self.forget_net(net);
        }
    }

    /// Stops counting `seq` as unattributed (it is being shed), without releasing its slot.
    fn unlist(&mut self, seq: u64) {
        self.attribute(seq);
    }

    pub fn release(&mut self, seq: u64, ip: IpAddr) {
        self.total = self.total.saturating_sub(1);
        if let Some(n) = self.per_ip.get_mut(&ip) {
            *n -= 1;
            if *n == 0 {
                self.per_ip.remove(&ip);
            }
        }
        self.attribute(seq);
    }

    fn forget_net(&mut self, net: Net) {
        if let Some(n) = self.per_net.get_mut(&net) {
            *n -= 1;
            if *n == 0 {
                self.per_net.remove(&net);
            }
        }
    }

    pub fn total(&self) -> usize {
        self.total
    }

    pub fn unattributed(&self) -> usize {
        self.unattributed.len()
    }
}

/// One connection's ticket: the session asks it whether to go on, and says when it has
/// shown who it is.
pub struct Ticket {
    seq: u64,
    ip: IpAddr,
    attributed: AtomicBool,
    shed: AtomicBool,
    notify: Notify,
    accepted: Instant,
    admission: Arc<Admission>,
}

impl Ticket {
    pub fn is_attributed(&self) -> bool {
        self.attributed.load(Ordering::Relaxed)
    }

    /// The session has shown who it is (an establishment, a valid client certificate).
    pub fn attribute(&self) {
        if !self.attributed.swap(true, Ordering::Relaxed) {
            self.admission.lock().attribute(self.seq);
        }
    }

    /// Resolves when the session must end: it was shed, or, while unattributed, its
    /// attribution deadline passed. Cancel-safe (used in `select!`).
    pub async fn ended(&self) -> Reason {
        loop {
            if self.shed.load(Ordering::Relaxed) {
                return Reason::Stress;
            }
            if self.is_attributed() {
                // Only shedding can end an attributed session, and it never is shed.
                self.notify.notified().await;
                continue;
            }
            let deadline = self.accepted + self.admission.attribution_timeout();
            tokio::select! {
                _ = self.notify.notified() => {}
                _ = tokio::time::sleep_until(deadline.into()) => {
                    if !self.is_attributed() {
                        return Reason::Timeout;
                    }
                }
            }
        }
    }

    /// The per-command timeout now: `timeout`, or `stress_timeout` while stressed.
    pub fn command_timeout(&self, normal: Duration) -> Duration {
        if self.admission.stressed() {
            normal.min(self.admission.stress_timeout)
        } else {
            normal
        }
    }

    pub fn stressed(&self) -> bool {
        self.admission.stressed()
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        self.admission.release(self.seq, self.ip);
    }
}

/// A listener's admission: the table, the tickets that may be shed, and stress mode.
pub struct Admission {
    listener: String,
    table: Mutex<Table>,
    settings: Mutex<Settings>,
    /// Unattributed tickets by sequence number, to shed them.
    sheddable: Mutex<HashMap<u64, std::sync::Weak<Ticket>>>,
    stressed: AtomicBool,
    /// Most connections at once since memory was last given back (see `drained`).
    peak: std::sync::atomic::AtomicUsize,
    /// A crowd (1,000 connections or more) came and has not yet gone entirely.
    crowd: AtomicBool,
    attribution_timeout: Mutex<Duration>,
    stress_timeout: Duration,
}

impl Admission {
    pub fn new(
        listener: &str,
        settings: Settings,
        attribution_timeout: Duration,
        stress_timeout: Duration,
    ) -> Arc<Admission> {
        Arc::new(Admission {
            listener: listener.to_string(),
            table: Mutex::new(Table::default()),
            settings: Mutex::new(settings),
            sheddable: Mutex::new(HashMap::new()),
            stressed: AtomicBool::new(false),
            peak: std::sync::atomic::AtomicUsize::new(0),
            crowd: AtomicBool::new(false),
            attribution_timeout: Mutex::new(attribution_timeout),
            stress_timeout,
        })
    }

    /// A reload's new limits apply to the next connection.
    pub fn reconfigure(&self, settings: Settings, attribution_timeout: Duration) {
        *self.settings.lock().unwrap_or_else(|p| p.into_inner()) = settings;
        *self
            .attribution_timeout
            .lock()
            .unwrap_or_else(|p| p.into_inner()) = attribution_timeout;
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Table> {
        self.table.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn attribution_timeout(&self) -> Duration {
        let t = *self
            .attribution_timeout
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        if self.stressed() {
            t.min(self.stress_timeout)
        } else {
            t
        }
    }

    pub fn stressed(&self) -> bool {
        self.stressed.load(Ordering::Relaxed)
    }

    /// Screens a new connection: a ticket, or the reason to refuse it.
    pub fn enter(self: &Arc<Self>, ip: IpAddr, attributed: bool) -> Result<Arc<Ticket>, Reason> {
        let s = self
            .settings
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        let net = Net::of(ip, s.network_prefix_v4, s.network_prefix_v6);
        let now_s = crate::util::clock::now_ms() / 1000;
        let (seq, shed, total) = {
            let mut t = self.lock();
            let shed = match t.decide(&s, ip, net, attributed, now_s) {
                Decision::Refuse(r) => return Err(r),
                Decision::Admit => None,
                Decision::AdmitShedding(old) => {
                    t.unlist(old);
                    Some(old)
                }
            };
            (t.admit(ip, net, attributed), shed, t.total())
        };
        if let Some(old) = shed {
            let victim = self
                .sheddable
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .remove(&old)
                .and_then(|w| w.upgrade());
            if let Some(v) = victim {
                v.shed.store(true, Ordering::Relaxed);
                v.notify.notify_one();
            }
        }
        let ticket = Arc::new(Ticket {
            seq,
            ip,
            attributed: AtomicBool::new(attributed),
            shed: AtomicBool::new(false),
            notify: Notify::new(),
            accepted: Instant::now(),
            admission: self.clone(),
        });
        if !attributed {
            self.sheddable
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .insert(seq, Arc::downgrade(&ticket));
        }
        self.peak.fetch_max(total, Ordering::Relaxed);
        self.update_stress(total, &s);
        Ok(ticket)
    }

    fn release(&self, seq: u64, ip: IpAddr) {
        let total = {
            let mut t = self.lock();
            t.release(seq, ip);
            t.total()
        };
        self.sheddable
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&seq);
        let s = self
            .settings
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        self.update_stress(total, &s);
    }

    /// Whether a crowd of connections (1,000 or more) has since shrunk to under a quarter of
    /// the most seen since the last time: then the memory its sessions used can be given back
    /// to the system. Asked on every tick, it says yes at each quartering down to the last
    /// sessions (once was not enough: the last quarter of a 5,000-session crowd kept 30 MiB).
    pub fn drained(&self) -> bool {
        let total = self.lock().total();
        let peak = self.peak.load(Ordering::Relaxed);
        if peak >= 1000 {
            self.crowd.store(true, Ordering::Relaxed);
        }
        if !self.crowd.load(Ordering::Relaxed) || total * 4 >= peak {
            return false;
        }
        self.peak.store(total, Ordering::Relaxed);
        if total < 10 {
            self.crowd.store(false, Ordering::Relaxed);
        }
        true
    }

    /// Enters stress above the threshold, leaves it below 80% of it (hysteresis: a listener at
    /// the edge does not flap), logging and counting each change once.
    fn update_stress(&self, total: usize, s: &Settings) {
        let level = s.stress_level();
        let was = self.stressed();
        let now = if was {
            total * 5 >= level * 4
        } else {
            total >= level
        };
        if now != was
            && self
                .stressed
                .compare_exchange(was, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            let l = [("listener", self.listener.as_str())];
            crate::metrics::gauge_set(
                "passerelle_listener_stressed",
                "1 while the listener is in stress mode (occupancy above stress_threshold)",
                &l,
                if now { 1.0 } else { 0.0 },
            );
            if now {
                crate::metrics::inc(
                    "passerelle_listener_stress_total",
                    "Times a listener entered stress mode",
                    &l,
                );
                tracing::warn!(listener = %self.listener, connections = total, threshold = level,
                    "stress: entering stress mode (shorter timeouts, unattributed sessions shed first)");
            } else {
                tracing::warn!(listener = %self.listener, connections = total, "stress: leaving stress mode");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings() -> Settings {
        Settings {
            max_connections: 10,
            client_connection_limit: 3,
            unattributed_share: 50,
            network_connection_limit: 4,
            network_rate_limit: 0,
            network_prefix_v4: 24,
            network_prefix_v6: 64,
            stress_threshold: 75,
        }
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn net(s: &str) -> Net {
        Net::of(ip(s), 24, 64)
    }

    /// Memory is given back at each quartering of a crowd, down to its last sessions.
    #[test]
    fn a_crowd_is_trimmed_down_to_its_end() {
        let s = Settings {
            max_connections: 4000,
            client_connection_limit: 10,
            network_connection_limit: 4000,
            ..settings()
        };
        let a = Admission::new("t", s, Duration::from_secs(30), Duration::from_secs(10));
        let mut tickets: Vec<_> = (0..1200u32)
            .map(|i| {
                let ip = IpAddr::from([10, (i / 250) as u8, (i % 250) as u8, 1]);
                a.enter(ip, true).expect("room")
            })
            .collect();
        assert!(!a.drained(), "a crowd still there");
        let mut trims = 0;
        while !tickets.is_empty() {
            tickets.truncate(tickets.len() * 9 / 10);
            if a.drained() {
                trims += 1;
            }
        }
        assert!(trims >= 4, "{trims} trims: each quarter down to the end");
        assert!(!a.drained(), "gone, and given back: nothing more to do");
    }

    #[test]
    fn networks_are_slash_24_and_slash_64() {
        assert_eq!(net("192.0.2.7"), net("192.0.2.250"));
        assert_ne!(net("192.0.2.7"), net("192.0.3.7"));
        assert_eq!(net("192.0.2.7").to_string(), "192.0.2.0");
        assert_eq!(net("2001:db8:1:2::1"), net("2001:db8:1:2:ffff::9"));
        assert_ne!(net("2001:db8:1:2::1"), net("2001:db8:1:3::1"));
        assert_eq!(net("2001:db8:1:2:3:4:5:6").to_string(), "2001:db8:1:2::");
        // An IPv4 client on a dual-stack socket counts in its /24.
        assert_eq!(net("::ffff:192.0.2.9"), net("192.0.2.1"));
        // Prefixes at the edges do not overflow a shift.
        assert_eq!(Net::of(ip("192.0.2.7"), 0, 0).to_string(), "0.0.0.0");
        assert_eq!(Net::of(ip("192.0.2.7"), 32, 128).to_string(), "192.0.2.7");
        assert_eq!(Net::of(ip("::1"), 32, 200).to_string(), "::1");
    }

    #[test]
    fn unattributed_share_full_sheds_the_oldest() {
        let s = settings();
        let mut t = Table::default();
        let mut seqs = Vec::new();
        for i in 0..5 {
            let a = ip(&format!("10.0.{i}.1"));
            assert_eq!(
                t.decide(&s, a, net(&a.to_string()), false, 0),
                Decision::Admit
            );
            seqs.push(t.admit(a, net(&a.to_string()), false));
        }
        // Share of 10 at 50% = 5: the sixth sheds the first.
        let a = ip("10.0.9.1");
        assert_eq!(
            t.decide(&s, a, net("10.0.9.1"), false, 0),
            Decision::AdmitShedding(seqs[0])
        );
    }

    #[test]
    fn attributed_clients_always_find_room() {
        let s = settings();
        let mut t = Table::default();
        let mut first = None;
        for i in 0..5 {
            let a = ip(&format!("10.0.{i}.1"));
            let seq = t.admit(a, net(&a.to_string()), false);
            first.get_or_insert(seq);
        }
        for i in 0..5 {
            let a = ip(&format!("10.1.{i}.1"));
            assert_eq!(
                t.decide(&s, a, net(&a.to_string()), true, 0),
                Decision::Admit
            );
            t.admit(a, net(&a.to_string()), true);
        }
        // Full (10): an attributed client sheds the oldest unattributed session...
        let a = ip("10.2.0.1");
        assert_eq!(
            t.decide(&s, a, net("10.2.0.1"), true, 0),
            Decision::AdmitShedding(first.unwrap())
        );
        // ...and with none left to shed, it is refused.
        let mut t = Table::default();
        for i in 0..10 {
            let a = ip(&format!("10.1.{i}.1"));
            t.admit(a, net(&a.to_string()), true);
        }
        assert_eq!(
            t.decide(&s, a, net("10.2.0.1"), true, 0),
            Decision::Refuse(Reason::MaxConnections)
        );
    }

    #[test]
    fn per_client_and_per_network_limits() {
        let s = settings();
        let mut t = Table::default();
        let a = ip("10.0.0.1");
        for _ in 0..3 {
            assert_eq!(t.decide(&s, a, net("10.0.0.1"), false, 0), Decision::Admit);
            t.admit(a, net("10.0.0.1"), false);
        }
        assert_eq!(
            t.decide(&s, a, net("10.0.0.1"), false, 0),
            Decision::Refuse(Reason::PerClient)
        );
        let b = ip("10.0.0.2");
        assert_eq!(t.decide(&s, b, net("10.0.0.2"), false, 0), Decision::Admit);
        t.admit(b, net("10.0.0.2"), false);
        // Four unattributed from 10.0.0.0/24: the network is full.
        let c = ip("10.0.0.3");
        assert_eq!(
            t.decide(&s, c, net("10.0.0.3"), false, 0),
            Decision::Refuse(Reason::PerNetwork)
        );
        // An attributed client of that network still comes in.
        assert_eq!(t.decide(&s, c, net("10.0.0.3"), true, 0), Decision::Admit);
    }

    #[test]
    fn attribution_and_release_free_the_counts() {
        let s = settings();
        let mut t = Table::default();
        let a = ip("10.0.0.1");
        let n = net("10.0.0.1");
        let x = t.admit(a, n, false);
        let y = t.admit(a, n, false);
        assert_eq!(t.unattributed(), 2);
        t.attribute(x);
        assert_eq!(t.unattributed(), 1);
        assert_eq!(t.total(), 2);
        t.release(x, a);
        t.release(y, a);
        assert_eq!((t.total(), t.unattributed()), (0, 0));
        assert!(t.per_ip.is_empty() && t.per_net.is_empty());
        assert_eq!(t.decide(&s, a, n, false, 0), Decision::Admit);
    }

    #[test]
    fn new_connections_per_second_per_network() {
        let s = Settings {
            network_rate_limit: 2,
            network_connection_limit: 0,
            client_connection_limit: 0,
            ..settings()
        };
        let mut t = Table::default();
        let n = net("10.0.0.1");
        for i in 1..=2 {
            let a = ip(&format!("10.0.0.{i}"));
            assert_eq!(t.decide(&s, a, n, false, 7), Decision::Admit);
            let seq = t.admit(a, n, false);
            t.release(seq, a);
        }
        assert_eq!(
            t.decide(&s, ip("10.0.0.3"), n, false, 7),
            Decision::Refuse(Reason::Rate)
        );
        // Another network, or the next second, is not held back.
        assert_eq!(
            t.decide(&s, ip("10.0.1.3"), net("10.0.1.3"), false, 7),
            Decision::Admit
        );
        assert_eq!(t.decide(&s, ip("10.0.0.3"), n, false, 8), Decision::Admit);
    }

    #[tokio::test]
    async fn tickets_end_unattributed_sessions_and_shed_the_oldest() {
        let adm = Admission::new(
            "test",
            Settings {
                max_connections: 4,
                unattributed_share: 50,
                ..settings()
            },
            Duration::from_millis(300),
            Duration::from_millis(100),
        );
        let a = adm.enter(ip("10.0.0.1"), false).unwrap();
        let b = adm.enter(ip("10.0.1.1"), false).unwrap();
        b.attribute();
        let c = adm.enter(ip("10.0.2.1"), false).unwrap();
        // The share (2) is full with a and c: the next one sheds a, the oldest.
        let d = adm.enter(ip("10.0.3.1"), false).unwrap();
        assert_eq!(a.ended().await, Reason::Stress);
        // c is not attributed in time (stressed at 4 of 4: the shorter stress timeout).
        assert!(adm.stressed());
        let t0 = Instant::now();
        assert_eq!(c.ended().await, Reason::Timeout);
        assert!(t0.elapsed() < Duration::from_millis(250));
        // b is attributed: it does not end by itself.
        let waited = tokio::time::timeout(Duration::from_millis(500), b.ended()).await;
        assert!(waited.is_err());
        drop((a, c, d));
        drop(b);
        assert_eq!(adm.lock().total(), 0);
        assert!(!adm.stressed());
    }
}
