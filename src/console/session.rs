//! Console sessions (in memory: a restart logs everyone out), their CSRF tokens, and the
//! login rate limit. Time is passed in so the rules are unit-tested without sleeping.

use super::access::Role;
use std::collections::{HashMap, VecDeque};
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Name of the session cookie.
pub const COOKIE: &str = "passerelle_session";
/// A session ends this long after login even when used (the user logs in again).
pub const MAX_AGE: Duration = Duration::from_secs(12 * 3600);
/// More live sessions than this: the least recently used goes first.
const MAX_SESSIONS: usize = 10_000;

/// 32 random bytes, hex: session ids and CSRF tokens.
pub fn random_token() -> Result<String, getrandom::Error> {
    let mut raw = [0u8; 32];
    getrandom::fill(&mut raw)?;
    Ok(data_encoding::HEXLOWER.encode(&raw))
}

/// Constant-time equality of two tokens.
pub fn same_token(a: &str, b: &str) -> bool {
    use subtle::ConstantTimeEq;
    !a.is_empty() && bool::from(a.as_bytes().ct_eq(b.as_bytes()))
}

#[derive(Debug, Clone)]
pub struct Session {
    pub id: String,
    pub user: String,
    pub role: Role,
    /// The user's credential at login ([`super::users::User::stamp`]): a new password ends
    /// the sessions opened with the old one.
    pub stamp: String,
    /// Every state-changing form carries it; see the console's guard.
    pub csrf: String,
    pub created: Instant,
    pub last_seen: Instant,
    /// One message shown on the next page (the result of an action).
    pub flash: Option<String>,
}

pub struct Sessions {
    idle: Duration,
    map: Mutex<HashMap<String, Session>>,
}

impl Sessions {
    pub fn new(idle: Duration) -> Sessions {
        Sessions {
            idle,
            map: Mutex::new(HashMap::new()),
        }
    }

    fn live(&self, s: &Session, now: Instant) -> bool {
        now.duration_since(s.last_seen) < self.idle && now.duration_since(s.created) < MAX_AGE
    }

    pub fn create(
        &self,
        user: &str,
        role: Role,
        stamp: String,
        now: Instant,
    ) -> Result<Session, getrandom::Error> {
        let s = Session {
            id: random_token()?,
            user: user.to_string(),
            role,
            stamp,
            csrf: random_token()?,
            created: now,
            last_seen: now,
            flash: None,
        };
        let mut map = self.map.lock().unwrap_or_else(|p| p.into_inner());
        if map.len() >= MAX_SESSIONS {
            map.retain(|_, s| self.live(s, now));
            if map.len() >= MAX_SESSIONS {
                if let Some(oldest) = map
                    .values()
                    .min_by_key(|s| s.last_seen)
                    .map(|s| s.id.clone())
                {
                    map.remove(&oldest);
                }
            }
        }
        map.insert(s.id.clone(), s.clone());
        Ok(s)
    }

    pub fn idle(&self) -> Duration {
        self.idle
    }

    /// A session the shared state vouches for, kept here too (for its flash message, and for
    /// when the database is away); returned with its flash message taken.
    pub fn remember(&self, mut s: Session) -> Session {
        let mut map = self.map.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(known) = map.get_mut(&s.id) {
            s.flash = known.flash.take();
            *known = Session {
                flash: None,
                ..s.clone()
            };
        } else if map.len() < MAX_SESSIONS {
            map.insert(s.id.clone(), s.clone());
        }
        s
    }

    /// The live session `id` (its idle clock restarted), its flash message taken.
    pub fn touch(&self, id: &str, now: Instant) -> Option<Session> {
        let mut map = self.map.lock().unwrap_or_else(|p| p.into_inner());
        let live = map.get(id).is_some_and(|s| self.live(s, now));
        if !live {
            map.remove(id);
            return None;
        }
        let s = map.get_mut(id)?;
        s.last_seen = now;
        let out = s.clone();
        s.flash = None;
        Some(out)
    }

    pub fn set_flash(&self, id: &str, text: impl Into<String>) {
        if let Some(s) = self
            .map
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get_mut(id)
        {
            s.flash = Some(text.into());
        }
    }

    pub fn remove(&self, id: &str) {
        self.map
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(id);
    }
}

/// Login attempts: after `PER_USER` failures for one (address, user name) or `PER_ADDRESS`
/// failures from one address within `WINDOW`, further attempts are refused until the oldest
/// failure leaves the window. Per pair rather than per name alone, so nobody can lock the
/// operator out from elsewhere; per address too, so one client cannot try many names.
pub struct LoginLimiter {
    failures: Mutex<HashMap<LimitKey, VecDeque<Instant>>>,
}

/// An address with a user name, or the address alone.
type LimitKey = (IpAddr, Option<String>);

pub const PER_USER: usize = 5;
/// Per address, all users together: high enough that colleagues behind one proxy or tunnel
/// are not all locked out by one of them (or by an attacker among them) too soon.
pub const PER_ADDRESS: usize = 60;
pub const WINDOW: Duration = Duration::from_secs(15 * 60);

impl Default for LoginLimiter {
    fn default() -> Self {
        Self::new()
    }
}

impl LoginLimiter {
    pub fn new() -> LoginLimiter {
        LoginLimiter {
            failures: Mutex::new(HashMap::new()),
        }
    }

    /// Checks and counts an attempt in one step, before the password is verified. Why: the
    /// limit was checked before and counted after Argon2, so 200 parallel wrong passwords all
    /// passed the check and ran Argon2 (19 MiB each): RSS grew by gigabytes. A success then
    /// forgets the pair's attempts ([`LoginLimiter::succeeded`]).
    pub fn attempt(&self, ip: IpAddr, user: &str, now: Instant) -> Result<(), Duration> {
        let mut f = self.failures.lock().unwrap_or_else(|p| p.into_inner());
        let wait = Self::wait_locked(&mut f, ip, user, now);
        if !wait.is_zero() {
            return Err(wait);
        }
        Self::record_locked(&mut f, ip, user, now);
        Ok(())
    }

    fn wait_locked(
        f: &mut HashMap<LimitKey, VecDeque<Instant>>,
        ip: IpAddr,
        user: &str,
        now: Instant,
    ) -> Duration {
        let mut wait = Duration::ZERO;
        for (key, max) in [
            ((ip, Some(user.to_string())), PER_USER),
            ((ip, None), PER_ADDRESS),
        ] {
            if let Some(q) = f.get_mut(&key) {
                while q.front().is_some_and(|t| now.duration_since(*t) >= WINDOW) {
                    q.pop_front();
                }
                if q.len() >= max {
                    if let Some(first) = q.front() {
                        wait = wait.max(WINDOW - now.duration_since(*first));
                    }
                }
            }
        }
        wait
    }

    fn record_locked(
        f: &mut HashMap<LimitKey, VecDeque<Instant>>,
        ip: IpAddr,
        user: &str,
        now: Instant,
    ) {
        if f.len() > 100_000 {
            f.retain(|_, q| q.back().is_some_and(|t| now.duration_since(*t) < WINDOW));
        }
        for key in [(ip, Some(user.to_string())), (ip, None)] {
            let q = f.entry(key).or_default();
            q.push_back(now);
            if q.len() > PER_ADDRESS {
                q.pop_front();
            }
        }
    }

    /// A success forgets the pair's attempts, and its own attempt on the address (its
    /// earlier failures there stay counted).
    pub fn succeeded(&self, ip: IpAddr, user: &str) {
        let mut f = self.failures.lock().unwrap_or_else(|p| p.into_inner());
        f.remove(&(ip, Some(user.to_string())));
        if let Some(q) = f.get_mut(&(ip, None)) {
            q.pop_back();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sessions_expire_when_idle_and_after_max_age() {
        let s = Sessions::new(Duration::from_secs(600));
        let t0 = Instant::now();
        let a = s
            .create("alice", Role::Operator, String::new(), t0)
            .unwrap();
        assert_ne!(a.id, a.csrf);
        assert_eq!(a.id.len(), 64);
        let later = t0 + Duration::from_secs(599);
        assert!(s.touch(&a.id, later).is_some());
        // Used at 599 s: alive until 1199 s.
        assert!(s.touch(&a.id, t0 + Duration::from_secs(1190)).is_some());
        assert!(s.touch(&a.id, t0 + Duration::from_secs(1800)).is_none());
        assert!(s.touch(&a.id, t0).is_none(), "removed once expired");
        let b = s.create("bob", Role::Auditor, String::new(), t0).unwrap();
        let mut t = t0;
        while t < t0 + MAX_AGE - Duration::from_secs(300) {
            t += Duration::from_secs(300);
            assert!(s.touch(&b.id, t).is_some());
        }
        assert!(s.touch(&b.id, t0 + MAX_AGE).is_none(), "max age");
        assert!(s.touch("nope", t0).is_none());
    }

    #[test]
    fn flash_is_shown_once() {
        let s = Sessions::new(Duration::from_secs(600));
        let t0 = Instant::now();
        let a = s
            .create("alice", Role::Operator, String::new(), t0)
            .unwrap();
        s.set_flash(&a.id, "retried");
        assert_eq!(
            s.touch(&a.id, t0).unwrap().flash.as_deref(),
            Some("retried")
        );
        assert_eq!(s.touch(&a.id, t0).unwrap().flash, None);
        s.remove(&a.id);
        assert!(s.touch(&a.id, t0).is_none());
    }

    #[test]
    fn login_limit_per_pair_and_per_address() {
        let l = LoginLimiter::new();
        let ip: IpAddr = "127.0.0.1".parse().unwrap();
        let other: IpAddr = "127.0.0.2".parse().unwrap();
        let t0 = Instant::now();
        for _ in 0..PER_USER {
            assert!(l.attempt(ip, "alice", t0).is_ok());
        }
        // Counted before the password is checked: the next one is refused at once.
        let wait = l.attempt(ip, "alice", t0).unwrap_err();
        assert_eq!(wait, WINDOW);
        assert!(
            l.attempt(other, "alice", t0).is_ok(),
            "another address is not locked out"
        );
        assert!(
            l.attempt(ip, "bob", t0).is_ok(),
            "another name is not locked out"
        );
        assert!(
            l.attempt(ip, "alice", t0 + WINDOW).is_ok(),
            "the window passes"
        );
        for i in 1..PER_ADDRESS {
            assert!(l.attempt(other, &format!("u{i}"), t0).is_ok());
        }
        assert!(
            l.attempt(other, "fresh", t0).is_err(),
            "too many names from one address"
        );
        let l = LoginLimiter::new();
        for _ in 0..PER_USER - 1 {
            l.attempt(ip, "alice", t0).unwrap();
        }
        l.succeeded(ip, "alice");
        for _ in 0..PER_USER {
            assert!(
                l.attempt(ip, "alice", t0).is_ok(),
                "a success forgets the pair"
            );
        }
    }

    #[test]
    fn tokens_compare_in_constant_time_and_never_empty() {
        let t = random_token().unwrap();
        assert!(same_token(&t, &t.clone()));
        assert!(!same_token(&t, &random_token().unwrap()));
        assert!(!same_token("", ""));
    }
}
