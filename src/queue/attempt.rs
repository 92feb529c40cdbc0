//! What the queue decides after a delivery attempt, as a pure function of the message, its
//! state, the outcomes, the clock and `[queue]`: which recipients are done, who is notified
//! (failure, success, delay), when to try again, and whether the message leaves the queue.
//! Postfix's qmgr makes the same decisions from its per-recipient status records.

use crate::config::QueueConfig;
use crate::message::{
    Envelope, Failure, FailureKind, Outcome, RcptStatus, State, NOTIFY_DELAY, NOTIFY_FAILURE,
    NOTIFY_SUCCESS,
};
use std::time::Duration;

/// What happened to one recipient, for the log line and the metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Event {
    Sent,
    Deferred,
    Bounced,
    /// Pending at the end of `lifetime`: failed now.
    Expired,
    /// Not attempted (its destination rests).
    Postponed,
}

impl Event {
    pub fn as_str(self) -> &'static str {
        match self {
            Event::Sent => "sent",
            Event::Deferred => "deferred",
            Event::Bounced => "bounced",
            Event::Expired => "expired",
            Event::Postponed => "postponed",
        }
    }
}

#[derive(Debug, Clone)]
pub struct Decision {
    /// The new state, to persist (or drop when `done`).
    pub state: State,
    /// Per recipient index touched by this attempt.
    pub events: Vec<(usize, Event)>,
    /// Recipients to report in a failure DSN, a success DSN, a delay DSN.
    pub notify_failure: Vec<usize>,
    pub notify_success: Vec<usize>,
    pub notify_delay: Vec<usize>,
    /// Every recipient is final: the message leaves the queue.
    pub done: bool,
    /// Whether this was an attempt at all (not when every recipient was postponed).
    pub counted: bool,
}

/// The decision after `outcomes` at `now_ms` (Unix milliseconds).
pub fn decide(
    env: &Envelope,
    prior: &State,
    outcomes: &[(usize, Outcome)],
    now_ms: u64,
    cfg: &QueueConfig,
) -> Decision {
    let mut state = prior.clone();
    let mut events = Vec::new();
    let mut failed = Vec::new();
    let mut succeeded = Vec::new();
    let mut rest_until: Option<u64> = None;
    let counted = outcomes
        .iter()
        .any(|(_, o)| !matches!(o, Outcome::Postponed { .. }));
    if counted {
        state.attempts += 1;
    }
    for (i, o) in outcomes {
        let Some(rs) = state.rcpts.get_mut(*i) else {
            continue;
        };
        if rs.status != RcptStatus::Pending {
            continue;
        }
        match o {
            Outcome::Delivered(d) => {
                rs.status = RcptStatus::Delivered;
                rs.delivered = Some(d.clone());
                rs.last = None;
                events.push((*i, Event::Sent));
                succeeded.push(*i);
            }
            Outcome::Failed(f) => {
                rs.status = RcptStatus::Failed;
                rs.last = Some(f.clone());
                events.push((*i, Event::Bounced));
                failed.push(*i);
            }
            Outcome::Deferred(f) => {
                rs.last = Some(f.clone());
                events.push((*i, Event::Deferred));
            }
            Outcome::Postponed { until_ms, failure } => {
                if rs.last.is_none() {
                    rs.last = Some(failure.clone());
                }
                rest_until = Some(rest_until.map_or(*until_ms, |u| u.min(*until_ms)));
                events.push((*i, Event::Postponed));
            }
        }
    }

    // Expiry: recipients still pending past the lifetime fail now, with the last reason.
    let age = Duration::from_millis(now_ms.saturating_sub(env.received * 1000));
    if !state.is_done() && age >= cfg.lifetime {
        for (i, rs) in state.rcpts.iter_mut().enumerate() {
            if rs.status != RcptStatus::Pending {
                continue;
            }
            let last = rs.last.take();
            let why = last
                .as_ref()
                .map(|f| f.to_string())
                .unwrap_or_else(|| "no attempt succeeded".into());
            rs.status = RcptStatus::Failed;
            rs.last = Some(Failure {
                kind: FailureKind::Expired,
                remote: last.as_ref().and_then(|f| f.remote.clone()),
                reply: last.and_then(|f| f.reply),
                detail: format!(
                    "message expired after {}: last error: {why}",
                    humantime::format_duration(cfg.lifetime)
                ),
            });
            events.retain(|(j, _)| *j != i);
            events.push((i, Event::Expired));
            failed.push(i);
        }
    }

    let done = state.is_done();
    let notify = |list: Vec<usize>, flag: u8| -> Vec<usize> {
        // The null sender is never notified (RFC 5321 §4.5.5: no bounce of a bounce).
        if env.mail_from.is_empty() {
            return Vec::new();
        }
        list.into_iter()
            .filter(|&i| env.recipients.get(i).is_some_and(|r| r.wants(flag)))
            .collect()
    };
    let notify_failure = notify(failed, NOTIFY_FAILURE);
    // A server that took the DSN request reports success itself (RFC 3461 §6.2.2).
    succeeded.retain(|&i| {
        !state
            .rcpts
            .get(i)
            .and_then(|r| r.delivered.as_ref())
            .is_some_and(|d| d.dsn_passed)
    });
    let notify_success = notify(succeeded, NOTIFY_SUCCESS);
    let mut notify_delay = Vec::new();
    if !done && !cfg.delay_warning.is_zero() && !state.delay_warned && age >= cfg.delay_warning {
        state.delay_warned = true;
        notify_delay = notify(state.pending(), NOTIFY_DELAY);
    }
    if !done {
        let lifetime_end = env.received * 1000 + cfg.lifetime.as_millis() as u64;
        let next = match (counted, rest_until) {
            (true, _) | (false, None) => {
                now_ms + cfg.retry_after(state.attempts.max(1)).as_millis() as u64
            }
            // A resting destination: come back when its rest ends, not a retry interval later.
            (false, Some(until)) => until.max(now_ms + 1000),
        };
        // Never wait past the lifetime: the bounce goes out on time.
        state.next_attempt = next.min(lifetime_end.max(now_ms + 1000));
    }
    Decision {
        state,
        events,
        notify_failure,
        notify_success,
        notify_delay,
        done,
        counted,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::message::{Delivered, Recipient, Remote, NOTIFY_NEVER};
    use crate::reply::Reply;

    const T0: u64 = 1_700_000_000;

    fn env(n: usize, notify: u8) -> Envelope {
        Envelope {
            establishment: None,
            id: "ID".into(),
            received: T0,
            listener: "etab".into(),
            client: "127.0.0.1".into(),
            helo: "h".into(),
            mail_from: "s@chu.mssante.fr".into(),
            ret: None,
            envid: None,
            eight_bit: false,
            smtputf8: false,
            recipients: (0..n)
                .map(|i| Recipient {
                    address: format!("r{i}@x.mssante.fr"),
                    orcpt: None,
                    notify,
                    route: "r".into(),
                    transport: "t".into(),
                })
                .collect(),
        }
    }

    fn cfg() -> QueueConfig {
        QueueConfig {
            retry: vec![Duration::from_secs(60), Duration::from_secs(300)],
            lifetime: Duration::from_secs(3600),
            delay_warning: Duration::from_secs(600),
            ..QueueConfig::default()
        }
    }

    fn remote() -> Remote {
        Remote {
            host: "mx".into(),
            addr: "192.0.2.1:25".parse().unwrap(),
        }
    }

    fn sent() -> Outcome {
        Outcome::Delivered(Delivered {
            remote: remote(),
            reply: Reply::new(250, "2.0.0", "ok"),
            dsn_passed: false,
        })
    }
    fn deferred() -> Outcome {
        Outcome::Deferred(Failure::refused(
            &remote(),
            Reply::new(451, "4.3.0", "later"),
        ))
    }
    fn bounced() -> Outcome {
        Outcome::Failed(Failure::refused(
            &remote(),
            Reply::new(550, "5.1.1", "unknown"),
        ))
    }
    fn at(secs: u64) -> u64 {
        (T0 + secs) * 1000
    }

    #[test]
    fn the_retry_table_then_its_last_interval() {
        let (e, c) = (env(1, 0), cfg());
        let mut s = State::new(1);
        let mut nexts = Vec::new();
        for k in 0..4 {
            let now = at(10 + k);
            let d = decide(&e, &s, &[(0, deferred())], now, &c);
            assert!(d.counted && !d.done);
            assert_eq!(d.events, vec![(0, Event::Deferred)]);
            nexts.push((d.state.next_attempt - now) / 1000);
            s = d.state;
        }
        assert_eq!(nexts, vec![60, 300, 300, 300]);
        assert_eq!(s.attempts, 4);
        assert_eq!(
            s.rcpts[0].last.as_ref().map(|f| f.status("4.0.0")),
            Some("4.3.0".into())
        );
    }

    #[test]
    fn delivered_and_bounced_recipients_are_final() {
        let e = env(3, 0);
        let d = decide(
            &e,
            &State::new(3),
            &[(0, sent()), (1, bounced()), (2, deferred())],
            at(1),
            &cfg(),
        );
        assert!(!d.done);
        assert_eq!(d.state.pending(), vec![2]);
        assert_eq!(d.notify_failure, vec![1]);
        assert!(
            d.notify_success.is_empty(),
            "SUCCESS is not asked by default"
        );
        let d2 = decide(&e, &d.state, &[(2, sent())], at(61), &cfg());
        assert!(d2.done);
        assert_eq!(d2.state.attempts, 2);
    }

    #[test]
    fn notify_flags_are_honoured_and_the_null_sender_never_notified() {
        let e = env(2, NOTIFY_SUCCESS);
        let d = decide(
            &e,
            &State::new(2),
            &[(0, sent()), (1, bounced())],
            at(1),
            &cfg(),
        );
        assert_eq!(d.notify_success, vec![0]);
        assert!(d.notify_failure.is_empty(), "NOTIFY=SUCCESS only");
        let e = env(1, NOTIFY_NEVER);
        let d = decide(&e, &State::new(1), &[(0, bounced())], at(1), &cfg());
        assert!(d.notify_failure.is_empty());
        let mut e = env(1, 0);
        e.mail_from = String::new();
        let d = decide(&e, &State::new(1), &[(0, bounced())], at(1), &cfg());
        assert!(d.done && d.notify_failure.is_empty());
    }

    #[test]
    fn a_server_that_took_the_dsn_request_reports_success_itself() {
        let e = env(1, NOTIFY_SUCCESS);
        let passed = Outcome::Delivered(Delivered {
            remote: remote(),
            reply: Reply::new(250, "2.0.0", "ok"),
            dsn_passed: true,
        });
        let d = decide(&e, &State::new(1), &[(0, passed)], at(1), &cfg());
        assert!(
            d.done && d.notify_success.is_empty(),
            "no 'relayed' of ours"
        );
    }

    #[test]
    fn lifetime_expires_pending_recipients_with_4_4_7_or_their_last_code() {
        let e = env(2, 0);
        let mut s = State::new(2);
        s.rcpts[1].last = Some(Failure::new(FailureKind::Connect, "refused").at(&remote()));
        let d = decide(&e, &s, &[(0, deferred())], at(3600), &cfg());
        assert!(d.done);
        assert_eq!(d.notify_failure, vec![0, 1]);
        assert_eq!(d.events, vec![(0, Event::Expired), (1, Event::Expired)]);
        let f0 = d.state.rcpts[0].last.as_ref().unwrap();
        assert_eq!(f0.kind, FailureKind::Expired);
        assert_eq!(
            f0.status("5.0.0"),
            "4.3.0",
            "the server's last code is kept"
        );
        let f1 = d.state.rcpts[1].last.as_ref().unwrap();
        assert_eq!(f1.status("5.0.0"), "4.4.7");
        assert!(f1
            .detail
            .starts_with("message expired after 1h: last error: connect to mx"));
    }

    #[test]
    fn retries_never_wait_past_the_lifetime() {
        let e = env(1, 0);
        let mut c = cfg();
        c.retry = vec![Duration::from_secs(7200)];
        let d = decide(&e, &State::new(1), &[(0, deferred())], at(100), &c);
        assert_eq!(d.state.next_attempt, at(3600));
    }

    #[test]
    fn one_delay_warning_after_delay_warning() {
        let e = env(2, 0);
        let d = decide(
            &e,
            &State::new(2),
            &[(0, deferred()), (1, sent())],
            at(599),
            &cfg(),
        );
        assert!(d.notify_delay.is_empty());
        let d = decide(&e, &d.state, &[(0, deferred())], at(600), &cfg());
        assert_eq!(d.notify_delay, vec![0]);
        assert!(d.state.delay_warned);
        let d = decide(&e, &d.state, &[(0, deferred())], at(900), &cfg());
        assert!(d.notify_delay.is_empty(), "only once");
    }

    #[test]
    fn a_postponed_attempt_is_not_an_attempt() {
        let e = env(2, 0);
        let rest = Outcome::Postponed {
            until_ms: at(40),
            failure: Failure::new(FailureKind::Connect, "refused").at(&remote()),
        };
        let d = decide(
            &e,
            &State::new(2),
            &[(0, rest.clone()), (1, rest)],
            at(10),
            &cfg(),
        );
        assert!(!d.counted);
        assert_eq!(d.state.attempts, 0);
        assert_eq!(d.state.next_attempt, at(40), "back when the rest ends");
        assert_eq!(d.events, vec![(0, Event::Postponed), (1, Event::Postponed)]);
        assert!(d.state.rcpts[0].last.is_some());
    }
}
