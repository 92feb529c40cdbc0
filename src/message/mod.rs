//! What the queue keeps about a message: the envelope (fixed at intake) and the delivery state
//! (changes with each attempt, with the typed outcome of each recipient). Both are persisted
//! as JSON inside spool records. The bottom of the house: nothing here imports the stages.
//!
//! Must not import: anything but reply and util.

pub mod header;
mod outcome;
mod received;
pub mod report;
mod wire;

pub use outcome::{Delivered, Failure, FailureKind, Outcome, Remote, TlsRefusal};
pub use received::{received_header, rfc5322_date, ReceivedFrom};
pub use wire::plain_lines;

use serde::{Deserialize, Serialize};
use std::time::{SystemTime, UNIX_EPOCH};

/// RFC 3461 NOTIFY flags.
pub const NOTIFY_SUCCESS: u8 = 1;
pub const NOTIFY_FAILURE: u8 = 2;
pub const NOTIFY_DELAY: u8 = 4;
pub const NOTIFY_NEVER: u8 = 8;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Ret {
    Full,
    Hdrs,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Recipient {
    pub address: String,
    /// RFC 3461 ORCPT, as received (`rfc822;addr`, xtext decoded).
    #[serde(default)]
    pub orcpt: Option<String>,
    /// NOTIFY flags; 0 = not given (failure and delay by default).
    #[serde(default)]
    pub notify: u8,
    pub route: String,
    pub transport: String,
}

impl Recipient {
    pub fn wants(&self, flag: u8) -> bool {
        if self.notify & NOTIFY_NEVER != 0 {
            return false;
        }
        if self.notify == 0 {
            return flag != NOTIFY_SUCCESS;
        }
        self.notify & flag != 0
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Envelope {
    pub id: String,
    /// Unix seconds at acceptance.
    pub received: u64,
    pub listener: String,
    pub client: String,
    pub helo: String,
    /// Empty for the null sender `<>`.
    pub mail_from: String,
    #[serde(default)]
    pub ret: Option<Ret>,
    #[serde(default)]
    pub envid: Option<String>,
    #[serde(default)]
    pub eight_bit: bool,
    #[serde(default)]
    pub smtputf8: bool,
    pub recipients: Vec<Recipient>,
    /// The establishment that sent it (a listener with `establishments = true`): its limits,
    /// `queue list --establishment`, and where its bounces go.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub establishment: Option<String>,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum RcptStatus {
    #[default]
    Pending,
    Delivered,
    Failed,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(from = "RawRcptState")]
pub struct RcptState {
    pub status: RcptStatus,
    /// Why the last attempt did not deliver (the DSN's `Diagnostic-Code` and `Remote-MTA`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last: Option<Failure>,
    /// Who took it, and what they said (for a success DSN).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delivered: Option<Delivered>,
}

/// A recipient state as stored, today's fields or those of spools written before outcomes
/// were typed (`last_error` and `remote` texts), so an upgrade keeps its queue.
#[derive(Deserialize)]
struct RawRcptState {
    status: RcptStatus,
    #[serde(default)]
    last: Option<Failure>,
    #[serde(default)]
    delivered: Option<Delivered>,
    #[serde(default)]
    last_error: Option<String>,
}

impl From<RawRcptState> for RcptState {
    fn from(r: RawRcptState) -> RcptState {
        RcptState {
            status: r.status,
            last: r
                .last
                .or_else(|| r.last_error.map(|t| Failure::new(FailureKind::Local, t))),
            delivered: r.delivered,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct State {
    pub rcpts: Vec<RcptState>,
    pub attempts: u32,
    /// Unix milliseconds of the next attempt.
    pub next_attempt: u64,
    #[serde(default)]
    pub delay_warned: bool,
    #[serde(default)]
    pub held: bool,
}

impl State {
    pub fn new(n: usize) -> State {
        State {
            rcpts: vec![RcptState::default(); n],
            attempts: 0,
            next_attempt: 0,
            delay_warned: false,
            held: false,
        }
    }
    pub fn is_done(&self) -> bool {
        self.rcpts.iter().all(|r| r.status != RcptStatus::Pending)
    }

    /// Indexes of the recipients still to deliver.
    pub fn pending(&self) -> Vec<usize> {
        (0..self.rcpts.len())
            .filter(|&i| self.rcpts[i].status == RcptStatus::Pending)
            .collect()
    }
}

/// Queue ids: 16 upper-case hex digits, time-ordered (microseconds) plus a counter, unique
/// across restarts on one host, and safe in file names and log lines.
pub fn new_queue_id() -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static LAST: AtomicU64 = AtomicU64::new(0);
    let micros = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_micros() as u64)
        .unwrap_or(0);
    // Strictly increasing even when two sessions ask in the same microsecond.
    let mut prev = LAST.load(Ordering::Relaxed);
    loop {
        let next = micros.max(prev + 1);
        match LAST.compare_exchange_weak(prev, next, Ordering::Relaxed, Ordering::Relaxed) {
            Ok(_) => return format!("{next:016X}"),
            Err(p) => prev = p,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_unique_and_ordered() {
        let a = new_queue_id();
        let b = new_queue_id();
        assert!(b > a);
        assert_eq!(a.len(), 16);
    }

    #[test]
    fn states_of_older_spools_still_load() {
        let old = r#"{"rcpts":[{"status":"Pending","last_error":"host x said: 451 4.3.0 later","remote":null},{"status":"Delivered","last_error":null,"remote":"host y said: 250 ok"}],"attempts":2,"next_attempt":5}"#;
        let s: State = serde_json::from_str(old).unwrap();
        assert_eq!(s.attempts, 2);
        assert_eq!(s.pending(), vec![0]);
        let last = s.rcpts[0].last.as_ref().unwrap();
        assert_eq!(last.to_string(), "host x said: 451 4.3.0 later");
        // And today's form round-trips.
        let again: State = serde_json::from_str(&serde_json::to_string(&s).unwrap()).unwrap();
        assert_eq!(again.rcpts[0].last, s.rcpts[0].last);
    }

    #[test]
    fn notify_defaults() {
        let mut r = Recipient {
            address: "a@b".into(),
            orcpt: None,
            notify: 0,
            route: "r".into(),
            transport: "t".into(),
        };
        assert!(r.wants(NOTIFY_FAILURE) && r.wants(NOTIFY_DELAY) && !r.wants(NOTIFY_SUCCESS));
        r.notify = NOTIFY_NEVER;
        assert!(!r.wants(NOTIFY_FAILURE));
        r.notify = NOTIFY_SUCCESS;
        assert!(r.wants(NOTIFY_SUCCESS) && !r.wants(NOTIFY_FAILURE));
    }
}
