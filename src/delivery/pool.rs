//! The idle connections kept per destination, and how many of them to keep.
//!
//! Postfix closes an idle connection after `smtp_connection_cache_time` (2 s) whatever the
//! load: a destination whose deliveries overlap three at a time now and then keeps opening
//! a third connection and closing it 2 s later (in the trust-space bench, ~45 new mutual-TLS
//! sessions per operator per minute at a steady load). Here a destination keeps, past that
//! time, as many connections (busy and idle) as it had deliveries at once in the last five
//! minutes: at a steady load nothing is reopened, and once its load stops a destination is
//! back to no connection within five minutes and the cache time.
//!
//! Why five one-minute windows: a steady load's deliveries at once vary, and a pool sized to
//! the last minute or two closed a connection whenever a quieter minute followed a busier one,
//! then opened one at the next burst (at 2,000 msg/s over 20 operators, one new connection
//! per operator per minute beyond the 300 s renewals). Five minutes is `connection_reuse_time`'s
//! default: a kept connection is renewed by age about when it would be forgotten anyway.
//! Why busy ones count: idle connections kept up to the peak while others were busy let the
//! pool exceed the peak, and every connection kept is one more renewal every 300 s.
//!
//! The pool is pure (no I/O, no clock of its own) so that this rule is unit-tested; closing is
//! the caller's.

use std::collections::HashMap;
use std::time::{Duration, Instant};

/// The length of one window of the peak.
const WINDOW: Duration = Duration::from_secs(60);
/// Windows remembered, the current one first: the peak kept is the largest of theirs.
const WINDOWS: usize = 5;

pub struct Pool<C> {
    dests: HashMap<String, Dest<C>>,
}

struct Dest<C> {
    /// Idle connections with the time each was given back, oldest first.
    idle: Vec<(Instant, C)>,
    /// Deliveries running now.
    busy: usize,
    /// The most deliveries at once in the current window (`[0]`, begun at `since`) and in
    /// each of the previous ones.
    peaks: [usize; WINDOWS],
    since: Instant,
}

impl<C> Dest<C> {
    fn new(now: Instant) -> Self {
        Dest {
            idle: Vec::new(),
            busy: 0,
            peaks: [0; WINDOWS],
            since: now,
        }
    }

    /// Starts a new window when the current one is over; windows that saw no call (no
    /// delivery began, nothing expired) had no deliveries at once beyond those still running.
    fn roll(&mut self, now: Instant) {
        let age = now.saturating_duration_since(self.since);
        if age >= WINDOW {
            let gone = ((age.as_secs() / WINDOW.as_secs()) as usize).min(WINDOWS);
            self.peaks.rotate_right(gone);
            self.peaks[..gone].fill(self.busy);
            self.since = now;
        }
    }

    fn keep(&self) -> usize {
        self.peaks.iter().copied().max().unwrap_or(0)
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
        d.peaks[0] = d.peaks[0].max(d.busy);
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
    /// while the destination has more connections, busy and idle, than its recent peak of
    /// deliveries at once (the longest idle first).
    /// Destinations with nothing left to remember are forgotten.
    pub fn expire(&mut self, now: Instant, ttl: Duration, worn: impl Fn(&C) -> bool) -> Vec<C> {
        let mut out = Vec::new();
        for d in self.dests.values_mut() {
            d.roll(now);
            let keep = d.keep();
            let mut i = 0;
            while i < d.idle.len() {
                let (t, c) = &d.idle[i];
                let stale =
                    now.saturating_duration_since(*t) >= ttl && d.idle.len() + d.busy > keep;
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

    /// `n` deliveries at once at `t0`, then each gives its connection (0..n) back.
    fn after_a_peak_of(n: u32, t0: Instant) -> Pool<u32> {
        let mut p = Pool::default();
        for _ in 0..n {
            p.begin("op", t0);
        }
        for c in 0..n {
            p.end("op");
            p.put("op", c, t0);
        }
        p
    }

    #[test]
    fn a_steady_destination_keeps_its_peak() {
        let t0 = Instant::now();
        let s = |n: u64| t0 + Duration::from_secs(n);
        let mut p = after_a_peak_of(3, t0);
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
        // The next four windows remember that peak (each begins at the first call after the
        // previous one ended); the fifth after it forgets it, and the connections idle past
        // the cache time go.
        for n in [100, 160, 220, 280, 339] {
            assert!(p.expire(s(n), TTL, never).is_empty(), "at {n} s");
        }
        let closed = p.expire(s(340), TTL, never);
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

    #[test]
    fn busy_connections_count_against_the_peak() {
        let t0 = Instant::now();
        let mut p = after_a_peak_of(3, t0);
        // Two deliveries running now on connections of their own (being opened, say): the
        // peak of three allows one idle connection more, not three.
        p.begin("op", t0);
        p.begin("op", t0);
        assert_eq!(p.expire(t0 + TTL, TTL, never), vec![0, 1]);
        assert_eq!(p.idle("op"), 1);
    }

    #[test]
    fn a_window_without_calls_remembers_the_deliveries_still_running() {
        let t0 = Instant::now();
        let s = |n: u64| t0 + Duration::from_secs(n);
        let mut p: Pool<u32> = Pool::default();
        for _ in 0..4 {
            p.begin("op", t0);
        }
        // Two minutes without a call, one delivery still running: the windows skipped keep
        // the old peak in their history and note one running in the new ones.
        for _ in 0..3 {
            p.end("op");
        }
        p.put("op", 9, t0);
        p.put("op", 8, t0);
        assert!(p.expire(s(130), TTL, never).is_empty(), "peak 4 remembered");
        // Five windows past, only the one still running counts: it needs no idle connection.
        assert_eq!(p.expire(s(330), TTL, never), vec![9, 8]);
        assert_eq!(p.idle("op"), 0);
    }
}
