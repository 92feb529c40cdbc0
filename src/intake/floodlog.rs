//! Log lines that a flood cannot multiply.
//!
//! Why: a 30-second flood of 129,394 sessions wrote 388,182 log lines (connect, EHLO,
//! disconnect, each refusal), enough to fill a disk or drown what matters. Each listener has a
//! budget of individually logged unattributed sessions and refusals per 10-second window;
//! beyond it they are counted, and one summary line per window says how many and from how
//! many networks. Sessions that have shown who they are (establishments, peers with a valid
//! certificate) are always logged in full.

use super::admission::Net;
use std::collections::HashSet;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// The window of the budget and of the summary lines.
pub const WINDOW: Duration = Duration::from_secs(10);
/// Sessions or refusals logged one by one per window (about 3 lines each: at most ~1,500
/// lines per window however large the flood).
pub const BUDGET: usize = 500;
/// Networks remembered for the summary's count (bounded memory under a spoofed-looking flood).
const MAX_NETS: usize = 100_000;

#[derive(Debug)]
struct Window {
    start: Instant,
    logged: usize,
    quiet_sessions: usize,
    quiet_refusals: usize,
    nets: HashSet<Net>,
}

impl Window {
    fn new(start: Instant) -> Window {
        Window {
            start,
            logged: 0,
            quiet_sessions: 0,
            quiet_refusals: 0,
            nets: HashSet::new(),
        }
    }
}

/// One listener's log budget.
pub struct FloodLog {
    listener: String,
    w: Mutex<Window>,
}

/// What a window ending had to say, if anything was left unsaid.
#[derive(Debug, PartialEq, Eq)]
pub struct Summary {
    pub sessions: usize,
    pub refusals: usize,
    pub networks: usize,
}

impl FloodLog {
    pub fn new(listener: &str) -> FloodLog {
        FloodLog {
            listener: listener.to_string(),
            w: Mutex::new(Window::new(Instant::now())),
        }
    }

    /// Whether a new unattributed session from `net` is logged line by line.
    pub fn session(&self, net: Net) -> bool {
        self.take(net, false, Instant::now())
    }

    /// Whether a refusal of a connection from `net` gets its own line.
    pub fn refusal(&self, net: Net) -> bool {
        self.take(net, true, Instant::now())
    }

    fn take(&self, net: Net, refusal: bool, now: Instant) -> bool {
        let mut w = self.w.lock().unwrap_or_else(|p| p.into_inner());
        if now.duration_since(w.start) >= WINDOW {
            let done = std::mem::replace(&mut *w, Window::new(now));
            drop(w);
            self.say(done);
            w = self.w.lock().unwrap_or_else(|p| p.into_inner());
        }
        if w.logged < BUDGET {
            w.logged += 1;
            return true;
        }
        if refusal {
            w.quiet_refusals += 1;
        } else {
            w.quiet_sessions += 1;
        }
        if w.nets.len() < MAX_NETS {
            w.nets.insert(net);
        }
        false
    }

    /// Called every few seconds by the listener: closes a finished window (so the summary of
    /// a flood that stopped is still written).
    pub fn tick(&self) -> Option<Summary> {
        self.tick_at(Instant::now())
    }

    fn tick_at(&self, now: Instant) -> Option<Summary> {
        let mut w = self.w.lock().unwrap_or_else(|p| p.into_inner());
        if now.duration_since(w.start) < WINDOW {
            return None;
        }
        let done = std::mem::replace(&mut *w, Window::new(now));
        drop(w);
        self.say(done)
    }

    fn say(&self, w: Window) -> Option<Summary> {
        if w.quiet_sessions == 0 && w.quiet_refusals == 0 {
            return None;
        }
        let s = Summary {
            sessions: w.quiet_sessions,
            refusals: w.quiet_refusals,
            networks: w.nets.len(),
        };
        tracing::warn!(listener = %self.listener, sessions = s.sessions, refused = s.refusals, networks = s.networks,
            "flood: {} sessions refused and {} sessions not logged one by one, from {} networks in {} s",
            s.refusals, s.sessions, s.networks, w.start.elapsed().as_secs().max(WINDOW.as_secs()));
        Some(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn net(i: usize) -> Net {
        Net::of(
            std::net::IpAddr::V4(std::net::Ipv4Addr::new(
                10,
                (i / 256) as u8,
                (i % 256) as u8,
                1,
            )),
            24,
            64,
        )
    }

    #[test]
    fn a_flood_is_summarised_after_the_budget() {
        let f = FloodLog::new("test");
        let t0 = Instant::now();
        let mut logged = 0;
        for i in 0..(BUDGET + 300) {
            if f.take(net(i % 7), i % 2 == 0, t0) {
                logged += 1;
            }
        }
        assert_eq!(logged, BUDGET);
        // Nothing to say before the window ends...
        assert_eq!(f.tick_at(t0 + Duration::from_secs(1)), None);
        // ...then one summary of what was not logged.
        let s = f.tick_at(t0 + WINDOW).expect("a summary");
        assert_eq!(s.sessions + s.refusals, 300);
        assert_eq!(s.networks, 7);
        // A new window has a new budget and nothing to summarise.
        assert!(f.take(net(1), true, t0 + WINDOW));
        assert_eq!(f.tick_at(t0 + WINDOW * 2), None);
    }
}
