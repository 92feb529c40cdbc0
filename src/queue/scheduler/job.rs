//! One delivery attempt of one message (a job), and what its outcome is reported as: metrics,
//! the journal and the log.

/// Log lines keep the target they had before this code moved here (operators filter on it).
const LOG_TARGET: &str = "passerelle::queue::scheduler";
use super::super::attempt::{self, Decision, Event};
use super::super::spool::{BodyLoc, Spool};
use super::super::Queue;
use super::*;
use crate::delivery::{Attempt, Transport};
use crate::dsn::{self, DsnKind, ReturnPath};
use crate::message::{Envelope, Outcome, RcptStatus, State};
use crate::util::clock::now_ms;
use std::sync::Arc;
use std::time::Duration;

/// One delivery attempt of one message, with everything it needs.
pub(super) struct Job {
    pub(super) env: Arc<Envelope>,
    pub(super) state: State,
    pub(super) body: BodyLoc,
    pub(super) mem: Option<InMemory>,
    pub(super) spool: Spool,
    pub(super) queue: Queue,
    pub(super) transport: Arc<dyn Transport>,
    pub(super) return_path: Arc<dyn ReturnPath>,
    pub(super) config: Arc<SchedulerConfig>,
}

impl Job {
    pub(super) async fn run(mut self) -> Finished {
        let spool = self.spool.clone();
        let loc = self.body;
        let body: Arc<Vec<u8>> = match self.mem.take() {
            Some(m) => m.0.clone(),
            None => match tokio::task::spawn_blocking(move || spool.read_body(loc)).await {
                Ok(Ok(b)) => Arc::new(b),
                Ok(Err(e)) => return self.retry_later(format!("cannot read message: {e}")),
                Err(e) => return self.retry_later(format!("reader task failed: {e}")),
            },
        };
        let pending = self.state.pending();
        let attempts = self.transport.deliver(&self.env, &pending, &body).await;
        let outcomes: Vec<(usize, Outcome)> = attempts
            .iter()
            .flat_map(|a| a.outcomes.iter().cloned())
            .collect();
        let now = now_ms();
        let d = attempt::decide(&self.env, &self.state, &outcomes, now, &self.config.queue);
        metrics(&self.env, &attempts, &d, now);
        journal(&self.env, &attempts, &d);
        self.notify(&d, &body, now / 1000).await;
        self.state = d.state.clone();

        // Outcome lines are logged only once the spool knows them: a `status=sent` line must
        // never be followed by a second delivery after a crash (kill -9 cannot undo a write).
        if d.done {
            let removed = self.spool.remove(&self.env.id, self.body).await;
            log_outcomes(&self.env, &attempts, &d);
            let id = self.env.id.clone();
            if let Err(e) = removed {
                // The message stays in the spool and will be seen again after a restart; the
                // recipients are final in memory, so nothing is sent twice meanwhile.
                tracing::error!(target: LOG_TARGET, queue_id = %id, error = %e, "cannot record completion");
            } else {
                tracing::info!(target: LOG_TARGET, queue_id = %id, "removed");
            }
            return Finished {
                id,
                state: None,
                body: self.body,
            };
        }
        let env = self.env.clone();
        let finished = self.persist(body).await;
        log_outcomes(&env, &attempts, &d);
        finished
    }

    /// Queues the notifications the decision asks for (never to the null sender).
    pub(super) async fn notify(&self, d: &Decision, original: &[u8], now: u64) {
        let by = dsn::Reporter {
            hostname: &self.config.hostname,
            return_path: self.return_path.as_ref(),
            now,
        };
        for (kind, rcpts) in [
            (DsnKind::Failure, &d.notify_failure),
            (DsnKind::Success, &d.notify_success),
            (DsnKind::Delay, &d.notify_delay),
        ] {
            let Some(n) = dsn::notification(&by, kind, &self.env, &d.state, rcpts, original) else {
                continue;
            };
            let dsn_id = n.envelope.id.clone();
            let (env, word) = (&self.env, format!("{kind:?}"));
            let stored = |dsn: &Envelope, msg: &[u8]| {
                crate::journal::dsn_queued(env, rcpts, dsn, &word, msg);
            };
            match self
                .queue
                .enqueue_with(n.envelope, Arc::new(n.message), stored)
                .await
            {
                Ok(()) => {
                    tracing::info!(target: LOG_TARGET, queue_id = %self.env.id, dsn_id = %dsn_id,
                    to = %self.env.mail_from, "sender notification ({kind:?}) queued")
                }
                Err(e) => tracing::error!(target: LOG_TARGET, queue_id = %self.env.id, error = %e,
                    "cannot queue {kind:?} notification"),
            }
        }
    }

    /// Saves the deferred state; relocates the message if it pins the oldest segment.
    pub(super) async fn persist(self, body: Arc<Vec<u8>>) -> Finished {
        let id = self.env.id.clone();
        if self.spool.should_relocate(self.body) {
            match self
                .spool
                .relocate(&self.env, &self.state, body, self.body)
                .await
            {
                Ok(loc) => {
                    return Finished {
                        id,
                        state: Some(self.state),
                        body: loc,
                    }
                }
                Err(e) => {
                    tracing::warn!(target: LOG_TARGET, queue_id = %id, error = %e, "relocation failed; updating in place")
                }
            }
        }
        if let Err(e) = self.spool.update(&id, &self.state).await {
            tracing::error!(target: LOG_TARGET, queue_id = %id, error = %e, "cannot record delivery state");
        }
        Finished {
            id,
            state: Some(self.state),
            body: self.body,
        }
    }

    pub(super) fn retry_later(mut self, why: String) -> Finished {
        tracing::error!(target: LOG_TARGET, queue_id = %self.env.id, error = %why, "delivery postponed");
        self.state.next_attempt = now_ms() + 60_000;
        Finished {
            id: self.env.id.clone(),
            state: Some(self.state),
            body: self.body,
        }
    }
}

/// Counters per recipient outcome. A postponed recipient (its destination rests) was not
/// attempted: it counts neither as an attempt nor as a deferral.
pub(super) fn metrics(env: &Envelope, attempts: &[Attempt], d: &Decision, now: u64) {
    for a in attempts {
        for (_, o) in &a.outcomes {
            let result = match o {
                Outcome::Delivered(_) => "sent",
                Outcome::Failed(_) => "bounced",
                Outcome::Deferred(_) => "deferred",
                Outcome::Postponed { .. } => continue,
            };
            crate::metrics::inc(
                "passerelle_deliveries_total",
                "delivery attempts per recipient, by transport and result",
                &[("transport", &a.transport), ("result", result)],
            );
            // The sending establishment's own count (its dashboard row), beside the global one
            // whose labels tools already read.
            if let Some(est) = &env.establishment {
                crate::metrics::inc(
                    "passerelle_establishment_deliveries_total",
                    "delivery attempts per recipient of an establishment's messages, by result",
                    &[("establishment", est), ("result", result)],
                );
            }
            match o {
                Outcome::Delivered(_) => crate::metrics::observe(
                    "passerelle_delivery_seconds",
                    "acceptance to delivery, per transport",
                    &[("transport", &a.transport)],
                    Duration::from_millis(now.saturating_sub(env.received * 1000)),
                ),
                Outcome::Deferred(f) | Outcome::Failed(f) => {
                    if let Some(reason) = f.tls() {
                        crate::metrics::inc(
                            "passerelle_tls_failures_total",
                            "TLS peers refused, by direction and reason",
                            &[("direction", "outbound"), ("reason", reason.label())],
                        );
                    }
                }
                Outcome::Postponed { .. } => {}
            }
        }
    }
    for (_, ev) in &d.events {
        if *ev == Event::Expired {
            crate::metrics::inc(
                "passerelle_deliveries_total",
                "delivery attempts per recipient, by transport and result",
                &[("transport", "-"), ("result", "expired")],
            );
        }
    }
}

/// The journal's record of each recipient attempted (a postponed one was not).
pub(super) fn journal(env: &Envelope, attempts: &[Attempt], d: &Decision) {
    use crate::journal::Outcome as J;
    for (i, ev) in &d.events {
        let outcome = match ev {
            Event::Sent => J::Delivered,
            Event::Deferred => J::Deferred,
            Event::Bounced => J::Bounced,
            Event::Expired => J::Expired,
            Event::Postponed => continue,
        };
        let Some(state) = d.state.rcpts.get(*i) else {
            continue;
        };
        // An expired recipient may not have been attempted this time: no remote, no TLS.
        let none = Attempt {
            transport: String::new(),
            remote: None,
            tls: None,
            peer_dn: None,
            duration: Duration::ZERO,
            outcomes: Vec::new(),
        };
        let a = attempts
            .iter()
            .find(|a| a.outcomes.iter().any(|(j, _)| j == i))
            .unwrap_or(&none);
        crate::journal::attempt(env, *i, outcome, a, state, d.state.attempts);
    }
}

/// One line per recipient of an attempt: who answered, over what, and what became of it.
pub(super) fn log_outcomes(env: &Envelope, attempts: &[Attempt], d: &Decision) {
    for (i, ev) in &d.events {
        let Some(rcpt) = env.recipients.get(*i) else {
            continue;
        };
        let a = attempts
            .iter()
            .find(|a| a.outcomes.iter().any(|(j, _)| j == i));
        let rs = d.state.rcpts.get(*i);
        let text = match (ev, rs) {
            (Event::Sent, Some(s)) => s.delivered.as_ref().map(|d| d.to_string()),
            (Event::Postponed, Some(s)) => s
                .last
                .as_ref()
                .map(|f| format!("destination resting after: {f}")),
            (_, Some(s)) => s.last.as_ref().map(|f| f.to_string()),
            _ => None,
        }
        .unwrap_or_default();
        let delay = Duration::from_millis(now_ms().saturating_sub(env.received * 1000));
        tracing::info!(target: LOG_TARGET, queue_id = %env.id, to = %rcpt.address, relay = %rcpt.transport,
            establishment = env.establishment.as_deref().unwrap_or("-"),
            tls = a.and_then(|a| a.tls.as_deref()).unwrap_or("-"),
            peer_dn = a.and_then(|a| a.peer_dn.as_deref()).unwrap_or("-"),
            delay = %format!("{:.1}s", delay.as_secs_f64()),
            status = ev.as_str(), "{text}");
        debug_assert!(*ev != Event::Sent || rs.is_some_and(|s| s.status == RcptStatus::Delivered));
    }
}
