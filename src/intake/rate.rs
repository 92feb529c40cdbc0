//! Per-establishment message rates (`max_message_rate`, messages per minute): one sliding
//! minute per establishment, shared by every listener and kept across reloads (a reload must
//! not hand a runaway establishment a fresh minute).

use std::collections::{HashMap, VecDeque};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

const MINUTE: Duration = Duration::from_secs(60);

/// The MAIL commands admitted in the last minute.
#[derive(Debug, Default)]
pub struct Window {
    times: VecDeque<Instant>,
}

impl Window {
    /// Admits one more at `now` when fewer than `limit` were admitted in the minute before.
    pub fn admit(&mut self, now: Instant, limit: u32) -> bool {
        while self
            .times
            .front()
            .is_some_and(|t| now.duration_since(*t) >= MINUTE)
        {
            self.times.pop_front();
        }
        if self.times.len() >= limit as usize {
            return false;
        }
        self.times.push_back(now);
        true
    }
}

fn windows() -> &'static Mutex<HashMap<String, Window>> {
    static W: OnceLock<Mutex<HashMap<String, Window>>> = OnceLock::new();
    W.get_or_init(Default::default)
}

/// Whether establishment `name` may start one more message now under `limit` per minute.
pub fn admit(name: &str, limit: u32) -> bool {
    let mut w = windows().lock().unwrap_or_else(|p| p.into_inner());
    w.entry(name.to_string())
        .or_default()
        .admit(Instant::now(), limit)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_sliding_minute() {
        let mut w = Window::default();
        let t0 = Instant::now();
        assert!(w.admit(t0, 2));
        assert!(w.admit(t0 + Duration::from_secs(10), 2));
        assert!(!w.admit(t0 + Duration::from_secs(20), 2));
        assert!(
            w.admit(t0 + Duration::from_secs(60), 2),
            "the first has left the minute"
        );
        assert!(!w.admit(t0 + Duration::from_secs(61), 2));
    }
}
