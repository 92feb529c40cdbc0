//! The writer thread: takes events off the channel, batches them (`batch_size` events, or
//! `flush_interval` after the first), writes each batch in one transaction, retries while the
//! database is unreachable (the batch is kept; the channel fills up to `buffer`, then
//! [`super::record`] drops), prunes past the retention, and publishes its health to /metrics.
//!
//! A thread of its own, not a task on the gateway's runtime: SQLite calls block, and neither
//! backend's work should ever compete with SMTP sessions for the runtime's workers.

use super::event::Event;
use super::plan::{plan, Plan};
use super::Counters;
use std::sync::atomic::Ordering;
use std::sync::mpsc::{Receiver, RecvTimeoutError, TryRecvError};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Why a write failed, and whether trying the same batch again can help.
#[derive(Debug)]
pub struct WriteError {
    pub message: String,
    /// Connection lost, database down, disk full, locked: keep the batch and retry.
    /// Otherwise (the data itself refused) the batch is dropped and counted.
    pub retryable: bool,
}

impl std::fmt::Display for WriteError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

/// A database the writer can store batches in.
pub trait Backend: Send {
    /// For the start-up log line.
    fn describe(&self) -> String;
    /// Stores one batch in one transaction (connecting and creating the schema first if
    /// needed).
    fn write(&mut self, plan: &Plan) -> Result<(), WriteError>;
    /// Deletes at most about `limit` rows older than `before` (Unix ms) per table, so that a
    /// large backlog is pruned in steps between batches; returns the rows removed.
    fn prune(&mut self, before: i64, limit: i64) -> Result<u64, WriteError>;
}

/// Rows deleted per table and pruning round (~0.1-0.5 s of work in SQLite).
const PRUNE_STEP: i64 = 20_000;

pub struct Settings {
    pub batch_size: usize,
    pub flush_interval: Duration,
    pub retention: Duration,
    pub prune_interval: Duration,
}

impl From<&super::JournalConfig> for Settings {
    fn from(c: &super::JournalConfig) -> Self {
        Settings {
            batch_size: c.batch_size.max(1),
            flush_interval: c.flush_interval,
            retention: c.retention,
            prune_interval: c.prune_interval,
        }
    }
}

pub struct WriterThread {
    done: Receiver<()>,
    handle: std::thread::JoinHandle<()>,
}

impl WriterThread {
    /// Waits for the writer to finish (its channel closed); false when it did not in time.
    pub fn join(self, wait: Duration) -> bool {
        match self.done.recv_timeout(wait) {
            Ok(()) | Err(RecvTimeoutError::Disconnected) => {
                let _ = self.handle.join();
                true
            }
            Err(RecvTimeoutError::Timeout) => false,
        }
    }
}

pub fn spawn(
    backend: Box<dyn Backend>,
    rx: Receiver<Event>,
    settings: Settings,
    counters: Arc<Counters>,
) -> WriterThread {
    let (done_tx, done) = std::sync::mpsc::sync_channel(1);
    let handle = std::thread::Builder::new()
        .name("journal".into())
        .spawn(move || {
            run(backend, rx, settings, counters);
            let _ = done_tx.send(());
        })
        .unwrap_or_else(|e| panic!("cannot start the journal thread: {e}"));
    WriterThread { done, handle }
}

/// Publishes counter deltas to the Prometheus registry.
struct Published {
    written: u64,
    batches: u64,
    errors: u64,
    dropped: u64,
}

impl Published {
    fn publish(&mut self, c: &Counters, lag: Option<Duration>) {
        let pairs = [
            (
                "passerelle_journal_events_written_total",
                "journal events stored in the database",
                c.written.load(Ordering::Relaxed),
                &mut self.written,
            ),
            (
                "passerelle_journal_batches_total",
                "journal transactions committed",
                c.batches.load(Ordering::Relaxed),
                &mut self.batches,
            ),
            (
                "passerelle_journal_write_errors_total",
                "journal writes that failed (retried while the database is unreachable)",
                c.errors.load(Ordering::Relaxed),
                &mut self.errors,
            ),
            (
                "passerelle_journal_events_dropped_total",
                "journal events dropped: buffer full while the database was slow or down",
                c.dropped.load(Ordering::Relaxed),
                &mut self.dropped,
            ),
        ];
        for (name, help, now, seen) in pairs {
            // Registered at zero too, so the series exist from the start.
            if now > *seen || *seen == 0 {
                crate::metrics::add(name, help, &[], now - *seen);
                *seen = now;
            }
        }
        let pending = c
            .recorded
            .load(Ordering::Relaxed)
            .saturating_sub(c.written.load(Ordering::Relaxed))
            .saturating_sub(c.dropped.load(Ordering::Relaxed));
        crate::metrics::gauge_set(
            "passerelle_journal_pending_events",
            "journal events recorded and not yet written (or being retried)",
            &[],
            pending as f64,
        );
        if let Some(lag) = lag {
            crate::metrics::gauge_set(
                "passerelle_journal_lag_seconds",
                "age of the oldest event of the last batch when it was committed",
                &[],
                lag.as_secs_f64(),
            );
        }
    }
}

/// How often a gathering batch drains the channel: at 4,000 events/s, 80 events a slice,
/// 50 wake-ups a second at most.
const GATHER_SLICE: Duration = Duration::from_millis(20);

fn run(mut backend: Box<dyn Backend>, rx: Receiver<Event>, s: Settings, c: Arc<Counters>) {
    let mut published = Published {
        written: 0,
        batches: 0,
        errors: 0,
        dropped: 0,
    };
    published.publish(&c, None);
    crate::metrics::gauge_set(
        "passerelle_journal_up",
        "1 when the last journal write succeeded",
        &[],
        1.0,
    );
    let mut batch: Vec<Event> = Vec::with_capacity(s.batch_size);
    let mut closed = false;
    let mut next_prune = Instant::now();
    let mut last_error_log: Option<Instant> = None;
    let idle = Duration::from_secs(1);
    while !(closed && batch.is_empty()) {
        // Gather: wait for a first event, then up to flush_interval for more.
        if !closed {
            match rx.recv_timeout(idle) {
                Ok(e) => {
                    c.pending.fetch_sub(1, Ordering::AcqRel);
                    batch.push(e)
                }
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => closed = true,
            }
            // Then let the batch fill by draining what is there every GATHER_SLICE, rather
            // than waking for each event: a receiver blocked in `recv` makes every sender
            // wake it (a futex call per event: ~3 % of the senders' samples at 2k msg/s),
            // while a receiver that sleeps costs them nothing.
            let deadline = Instant::now() + s.flush_interval;
            while !closed && !batch.is_empty() && batch.len() < s.batch_size {
                loop {
                    match rx.try_recv() {
                        Ok(e) => {
                            c.pending.fetch_sub(1, Ordering::AcqRel);
                            batch.push(e);
                            if batch.len() >= s.batch_size {
                                break;
                            }
                        }
                        Err(TryRecvError::Empty) => break,
                        Err(TryRecvError::Disconnected) => {
                            closed = true;
                            break;
                        }
                    }
                }
                let left = deadline.saturating_duration_since(Instant::now());
                if closed || left.is_zero() || batch.len() >= s.batch_size {
                    break;
                }
                std::thread::sleep(left.min(GATHER_SLICE));
            }
        }
        let mut lag = None;
        if !batch.is_empty() {
            let p = plan(&batch);
            let mut backoff = Duration::from_millis(250);
            let mut tries = 0u32;
            loop {
                let t0 = Instant::now();
                match backend.write(&p) {
                    Ok(()) => {
                        tracing::debug!(
                            events = batch.len(),
                            ms = t0.elapsed().as_millis() as u64,
                            "journal batch written"
                        );
                        let oldest = batch.iter().map(|e| e.time).min().unwrap_or(0);
                        lag = Some(Duration::from_millis(
                            crate::util::clock::now_ms().saturating_sub(oldest),
                        ));
                        c.written.fetch_add(batch.len() as u64, Ordering::Relaxed);
                        c.batches.fetch_add(1, Ordering::Relaxed);
                        if last_error_log.take().is_some() {
                            tracing::info!("journal: writing again");
                        }
                        crate::metrics::gauge_set(
                            "passerelle_journal_up",
                            "1 when the last journal write succeeded",
                            &[],
                            1.0,
                        );
                        break;
                    }
                    Err(e) => {
                        tries += 1;
                        c.errors.fetch_add(1, Ordering::Relaxed);
                        crate::metrics::gauge_set(
                            "passerelle_journal_up",
                            "1 when the last journal write succeeded",
                            &[],
                            0.0,
                        );
                        // Shutting down with the database away: give up after a few tries
                        // rather than hold the process (the caller's wait is bounded anyway).
                        let give_up = !e.retryable || (closed && tries >= 3);
                        if last_error_log.is_none_or(|t| t.elapsed() >= Duration::from_secs(30))
                            || give_up
                        {
                            tracing::error!(error = %e, events = batch.len(), retrying = !give_up,
                                "journal write failed; mail is not affected");
                            last_error_log = Some(Instant::now());
                        }
                        if give_up {
                            c.dropped.fetch_add(batch.len() as u64, Ordering::Relaxed);
                            break;
                        }
                        // Waits in slices, so /metrics shows the drops as they happen.
                        let until = Instant::now() + backoff;
                        loop {
                            published.publish(&c, None);
                            let left = until.saturating_duration_since(Instant::now());
                            if left.is_zero() {
                                break;
                            }
                            std::thread::sleep(left.min(Duration::from_millis(250)));
                        }
                        backoff = (backoff * 2).min(Duration::from_secs(5));
                    }
                }
            }
            batch.clear();
        }
        if !closed && !s.retention.is_zero() && Instant::now() >= next_prune {
            next_prune = Instant::now() + s.prune_interval;
            let before = crate::util::clock::now_ms() as i64 - s.retention.as_millis() as i64;
            match backend.prune(before, PRUNE_STEP) {
                Ok(0) => {}
                Ok(n) => {
                    tracing::info!(rows = n, "journal: pruned entries past the retention");
                    if n >= PRUNE_STEP as u64 {
                        next_prune = Instant::now(); // more to do: next round, between batches
                    }
                }
                Err(e) => tracing::warn!(error = %e, "journal: pruning failed; will try again"),
            }
        }
        published.publish(&c, lag);
    }
}
