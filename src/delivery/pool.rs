//! The idle connections kept per destination, and how many of them to keep.
//!
//! Postfix closes an idle connection after `smtp_connection_cache_time` (2 s) whatever the
//! load: a destination whose deliveries overlap three at a time now and then keeps opening
//! a third connection and closing it 2 s later (in the trust-space bench, ~45 new mutual-TLS
//! sessions per operator per minute at a steady load). Here a destination keeps, past that
//! time, as many idle connections as it had deliveries at once in the current or the previous
//! minute: at a steady load nothing is reopened, and once its load stops a destination is
//! back to no connection within two minutes and the cache time. The pool is pure (no I/O, no
//! clock of its own) so that this rule is unit-tested; closing is the caller's.

use std::collections::HashMap;
use std::time::{Duration, Instant};

/// The length of one window of the peak: the peak kept is the larger of the current
/// window's and the previous one's.
const WINDOW: Duration = Duration::from_secs(60);

pub struct Pool<C> {
    dests: HashMap<String, Dest<C>>,
}

struct Dest<C> {
    /// Idle connections with the time each was given back, oldest first.
    idle: Vec<(Instant, C)>,
    /// Deliveries running now.
    busy: usize,
    /// The most deliveries at once in the current window, and in the previous one.
    peak: usize,
    prev_peak: usize,
    since: Instant,
}

impl<C> Dest<C> {
    fn new(now: Instant) -> Self {
        Dest {
            idle: Vec::new(),
            busy: 0,
            peak: 0,
            prev_peak: 0,
            since: now,
        }
    }

    fn roll(&mut self, now: Instant) {
        let age = now.saturating_duration_since(self.since);
        if age >= WINDOW {
            self.prev_peak = if age >= 2 * WINDOW { 0 } else { self.peak };
            self.peak = self.busy;
            self.since = now;
        }
    }

    fn keep(&self) -> usize {
        self.peak.max(self.prev_peak)
    }
}

impl<C> Default for Pool<C> {
    fn default() -> Self {
        Pool {
            dests: HashMap::new(),
        }
    }
}

impl<C> Pool<C> {
    /// A delivery to `key` starts (whether it takes a cached connection or opens one).
    pub fn begin(&mut self, key: &str, now: Instant) {
        let d = self.dest(key, now);
        d.roll(now);
        d.busy += 1;
        d.peak = d.peak.max(d.busy);
    }

    /// A delivery to `key` ended.
    pub fn end(&mut self, key: &str) {
        if let Some(d) = self.dests.get_mut(key) {
            d.busy = d.busy.saturating_sub(1);
        }
    }

    /// The most recently given back idle connection under `key` that `fits`.
    pub fn take(&mut self, key: &str, fits: impl Fn(&C) -> bool) -> Option<C> {
        let d = self.dests.get_mut(key)?;
        let at = d.idle.iter().rposition(|(_, c)| fits(c))?;
        Some(d.idle.remove(at).1)
    }

    /// An idle connection, given back at `now`.
    pub fn put(&mut self, key: &str, c: C, now: Instant) {
        self.dest(key, now).idle.push((now, c));
    }

    /// The destination's entry, made when first seen (the key copied only then).
    fn dest(&mut self, key: &str, now: Instant) -> &mut Dest<C> {
        if !self.dests.contains_key(key) {
            self.dests.insert(key.to_string(), Dest::new(now));
        }
        match self.dests.get_mut(key) {
            Some(d) => d,
            None => unreachable!("inserted above"),
        }
    }

    /// What to close now: idle connections `worn` out, and those idle for `ttl` or more
    /// beyond the number the destination's recent peak keeps (the longest idle first).
    /// Destinations with nothing left to remember are forgotten.
    pub fn expire(&mut self, now: Instant, ttl: Duration, worn: impl Fn(&C) -> bool) -> Vec<C> {
        let mut out = Vec::new();
        for d in self.dests.values_mut() {
            d.roll(now);
            let keep = d.keep();
            let mut i = 0;
            while i < d.idle.len() {
                let (t, c) = &d.idle[i];
                let stale = now.saturating_duration_since(*t) >= ttl && d.idle.len() > keep;
                if worn(c) || stale {
                    out.push(d.idle.remove(i).1);
                } else {
                    i += 1;
                }
            }
        }
        self.dests
            .retain(|_, d| !d.idle.is_empty() || d.busy > 0 || d.keep() > 0);
        out
    }

    /// Every idle connection (shutdown).
    pub fn drain(&mut self) -> Vec<C> {
        self.dests
            .drain()
            .flat_map(|(_, d)| d.idle.into_iter().map(|(_, c)| c))
            .collect()
    }

    #[cfg(test)]
    fn idle(&self, key: &str) -> usize {
        self.dests.get(key).map_or(0, |d| d.idle.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TTL: Duration = Duration::from_secs(2);
    fn never(_: &u32) -> bool {
        false
    }

    #[test]
    fn a_steady_destination_keeps_its_peak() {
        let t0 = Instant::now();
        let s = |n: u64| t0 + Duration::from_secs(n);
        let mut p: Pool<u32> = Pool::default();
        // Three deliveries at once, then each gives its connection back.
        for _ in 0..3 {
            p.begin("op", t0);
        }
        for c in 0..3 {
            p.end("op");
            p.put("op", c, t0);
        }
        // One at a time afterwards, on the most recent connection: the two others idle past
        // the cache time but are kept, the peak of this minute being three.
        for n in 1..50 {
            p.begin("op", s(n));
            let c = p.take("op", |_| true).expect("a cached connection");
            assert_eq!(c, 2, "the most recently used first");
            p.end("op");
            p.put("op", c, s(n));
            assert!(p.expire(s(n), TTL, never).is_empty());
        }
        assert_eq!(p.idle("op"), 3);
        // The next minute remembers the previous one's peak; the one after forgets it, and the
        // connections idle past the cache time go.
        assert!(p.expire(s(100), TTL, never).is_empty());
        let closed = p.expire(s(181), TTL, never);
        assert_eq!(
            closed.len(),
            3,
            "the load stopped: all idle past the cache time"
        );
        assert_eq!(p.idle("op"), 0);
        assert!(p.dests.is_empty(), "nothing left to remember");
    }

    #[test]
    fn surplus_and_worn_connections_close() {
        let t0 = Instant::now();
        let mut p: Pool<u32> = Pool::default();
        p.begin("op", t0);
        p.end("op");
        for c in 0..3 {
            p.put("op", c, t0);
        }
        // Peak 1: two surplus idle connections close after the cache time, the oldest first.
        assert!(p.expire(t0 + Duration::from_secs(1), TTL, never).is_empty());
        let closed = p.expire(t0 + TTL, TTL, never);
        assert_eq!(closed, vec![0, 1]);
        // Worn (too old to reuse) closes at once, kept or not.
        assert_eq!(p.expire(t0 + TTL, TTL, |c| *c == 2), vec![2]);
        // A connection that does not fit is left for another batch.
        p.put("op", 7, t0);
        assert_eq!(p.take("op", |c| *c != 7), None);
        assert_eq!(p.take("op", |_| true), Some(7));
        assert_eq!(p.drain(), Vec::<u32>::new());
    }
}
