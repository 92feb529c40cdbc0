//! The writer thread: takes events off the channel, batches them (`batch_size` events, or
//! `flush_interval` after the first), writes each batch in one transaction, prunes past the
//! retention, and publishes its health to /metrics. While the database cannot take a batch,
//! batches go to the spill file under the spool (`spill.rs`) and so do all later events until
//! the database has taken back every one, in order; without a spill directory the batch is
//! retried in memory (the channel fills up to `buffer`, then [`super::record`] drops).
//!
//! A thread of its own, not a task on the gateway's runtime: SQLite calls block, and neither
//! backend's work should ever compete with SMTP sessions for the runtime's workers.

use super::event::Event;
use super::plan::{plan, Plan};
use super::spill::Spill;
use super::Counters;
use std::path::PathBuf;
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
    /// The spill directory and its bound in bytes; `None`: events wait in memory only.
    pub spill: Option<(PathBuf, u64)>,
}

impl From<&super::JournalConfig> for Settings {
    fn from(c: &super::JournalConfig) -> Self {
        Settings {
            batch_size: c.batch_size.max(1),
            flush_interval: c.flush_interval,
            retention: c.retention,
            prune_interval: c.prune_interval,
            spill: None,
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
        crate::metrics::gauge_set(
            "passerelle_journal_spilled_events",
            "journal events kept on disk under the spool until the database takes them",
            &[],
            c.spilled.load(Ordering::Relaxed) as f64,
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
    set_up(true);
    let mut spill = s
        .spill
        .as_ref()
        .and_then(|(dir, max)| open_spill(dir, *max, &c));
    let mut batch: Vec<Event> = Vec::with_capacity(s.batch_size);
    let mut closed = false;
    let mut next_prune = Instant::now();
    let mut errors = ErrorLog::default();
    // While events are on disk: when to ask the database again, and the wait after that.
    let mut retry_at = Instant::now();
    let mut backoff = FIRST_BACKOFF;
    let idle = Duration::from_secs(1);
    while !(closed && batch.is_empty()) {
        let spilling = spill.as_ref().is_some_and(Spill::active);
        // Draining what is on disk: take what the channel has and go on at once.
        let draining = spilling && Instant::now() >= retry_at;
        if !closed {
            let first_wait = if spilling {
                retry_at.saturating_duration_since(Instant::now()).min(idle)
            } else {
                idle
            };
            match rx.recv_timeout(first_wait) {
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
            let deadline = if draining {
                Instant::now()
            } else {
                Instant::now() + s.flush_interval
            };
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
        if let Some(sp) = spill.as_mut().filter(|sp| sp.active()) {
            // Events wait on disk: new ones go after them, and the oldest are offered to the
            // database when it is time.
            if !batch.is_empty() {
                to_spill(sp, &batch, &c);
                batch.clear();
            }
            if !closed && Instant::now() >= retry_at {
                match drain(sp, backend.as_mut(), s.batch_size, &c, &mut errors) {
                    Drained::Some(l) => {
                        lag = Some(l);
                        backoff = FIRST_BACKOFF;
                        retry_at = Instant::now();
                        if !sp.active() {
                            tracing::info!(
                                "journal: every event kept on disk is in the database; writing directly again"
                            );
                        }
                    }
                    Drained::Failed => {
                        retry_at = Instant::now() + backoff;
                        backoff = (backoff * 2).min(MAX_BACKOFF);
                    }
                }
            }
            c.spilled.store(sp.events, Ordering::Relaxed);
        } else if !batch.is_empty() {
            let p = plan(&batch);
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
                        lag = Some(written(&batch, &c, &mut errors));
                        backoff = FIRST_BACKOFF;
                        break;
                    }
                    Err(e) => {
                        tries += 1;
                        c.errors.fetch_add(1, Ordering::Relaxed);
                        set_up(false);
                        if let (true, Some(sp)) = (e.retryable, spill.as_mut()) {
                            // Kept on disk rather than in memory: the channel stays free, and
                            // a restart meanwhile loses nothing.
                            errors.log(&e, batch.len(), "kept on disk under the spool", false);
                            to_spill(sp, &batch, &c);
                            c.spilled.store(sp.events, Ordering::Relaxed);
                            retry_at = Instant::now() + FIRST_BACKOFF;
                            backoff = FIRST_BACKOFF * 2;
                            break;
                        }
                        // Shutting down with the database away: give up after a few tries
                        // rather than hold the process (the caller's wait is bounded anyway).
                        let give_up = !e.retryable || (closed && tries >= 3);
                        errors.log(&e, batch.len(), "retrying", give_up);
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
                        backoff = (backoff * 2).min(MAX_BACKOFF);
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

const FIRST_BACKOFF: Duration = Duration::from_millis(250);
const MAX_BACKOFF: Duration = Duration::from_secs(5);

fn set_up(up: bool) {
    crate::metrics::gauge_set(
        "passerelle_journal_up",
        "1 when the last journal write succeeded",
        &[],
        if up { 1.0 } else { 0.0 },
    );
}

/// Write failures are logged once per 30 s while they last, and once more when they end.
#[derive(Default)]
struct ErrorLog {
    last: Option<Instant>,
}

impl ErrorLog {
    fn log(&mut self, e: &WriteError, events: usize, what: &str, always: bool) {
        if always
            || self
                .last
                .is_none_or(|t| t.elapsed() >= Duration::from_secs(30))
        {
            tracing::error!(error = %e, events, "journal write failed ({what}); mail is not affected");
            self.last = Some(Instant::now());
        }
    }

    fn ended(&mut self) {
        if self.last.take().is_some() {
            tracing::info!("journal: writing again");
        }
    }
}

/// A batch committed: counters, health, and the age of its oldest event.
fn written(batch: &[Event], c: &Counters, errors: &mut ErrorLog) -> Duration {
    let oldest = batch.iter().map(|e| e.time).min().unwrap_or(0);
    c.written.fetch_add(batch.len() as u64, Ordering::Relaxed);
    c.batches.fetch_add(1, Ordering::Relaxed);
    errors.ended();
    set_up(true);
    Duration::from_millis(crate::util::clock::now_ms().saturating_sub(oldest))
}

/// Opens the spill directory (a blocking scan: this runs on the writer's own thread).
fn open_spill(dir: &std::path::Path, max: u64, c: &Counters) -> Option<Spill> {
    match Spill::open(dir, max) {
        Ok((sp, found)) => {
            if found.events > 0 {
                tracing::warn!(dir = %dir.display(), events = found.events, bytes = found.bytes,
                    "journal: events kept on disk by a previous run; written when the database takes them");
                c.spilled.store(found.events, Ordering::Relaxed);
                c.spill_since
                    .store(crate::util::clock::now_s(), Ordering::Relaxed);
            }
            Some(sp)
        }
        Err(e) => {
            tracing::error!(dir = %dir.display(), error = %e,
                "journal: the spill directory cannot be used; while the database is away, events wait in memory only");
            None
        }
    }
}

/// Appends a batch to the spill; what does not fit (its bound, or a disk error) is dropped,
/// counted and said.
fn to_spill(sp: &mut Spill, batch: &[Event], c: &Counters) {
    if !sp.active() {
        c.spill_since
            .store(crate::util::clock::now_s(), Ordering::Relaxed);
    }
    let refused = match sp.append(batch) {
        Ok(n) => n,
        Err(e) => {
            tracing::error!(error = %e, events = batch.len(),
                "journal: cannot write to the spill directory; events dropped (mail is not affected)");
            batch.len()
        }
    };
    if refused > 0 {
        c.dropped.fetch_add(refused as u64, Ordering::Relaxed);
        let was_full = c.spill_full.swap(true, Ordering::Relaxed);
        let now = crate::util::clock::now_s();
        let last = c.last_drop_log.load(Ordering::Relaxed);
        if !was_full || now >= last + 30 {
            c.last_drop_log.store(now, Ordering::Relaxed);
            tracing::error!(bytes = sp.waiting_bytes(), dropped = refused,
                "journal: the spill is at journal.spill_max_size; events dropped until the database takes them back (mail is not affected)");
        }
    } else {
        c.spill_full.store(false, Ordering::Relaxed);
    }
    c.spilled.store(sp.events, Ordering::Relaxed);
}

enum Drained {
    /// Some were written; the lag of the oldest.
    Some(Duration),
    Failed,
}

/// Offers the oldest events on disk to the database, one batch.
fn drain(
    sp: &mut Spill,
    backend: &mut dyn Backend,
    batch_size: usize,
    c: &Counters,
    errors: &mut ErrorLog,
) -> Drained {
    let (events, cursor) = match sp.peek(batch_size) {
        Ok(x) => x,
        Err(e) => {
            tracing::error!(error = %e, "journal: cannot read the spill directory; will try again");
            return Drained::Failed;
        }
    };
    // Lines that did not parse (torn by a crash) are dropped, and counted so.
    let unreadable = cursor.lines().saturating_sub(events.len() as u64);
    if events.is_empty() {
        c.dropped.fetch_add(unreadable, Ordering::Relaxed);
        return match sp.consume(cursor) {
            Ok(()) => Drained::Some(Duration::ZERO),
            Err(_) => Drained::Failed,
        };
    }
    match backend.write(&plan(&events)) {
        Ok(()) => {
            c.dropped.fetch_add(unreadable, Ordering::Relaxed);
            let lag = written(&events, c, errors);
            if let Err(e) = sp.consume(cursor) {
                // Written but still on disk: they will be written again (twice, never lost).
                tracing::error!(error = %e, "journal: cannot update the spill directory");
                return Drained::Failed;
            }
            if !sp.active() {
                c.spill_full.store(false, Ordering::Relaxed);
            }
            Drained::Some(lag)
        }
        Err(e) if e.retryable => {
            c.errors.fetch_add(1, Ordering::Relaxed);
            set_up(false);
            errors.log(&e, events.len(), "kept on disk under the spool", false);
            Drained::Failed
        }
        Err(e) => {
            // The data itself refused: those events are dropped, as a direct batch would be.
            c.errors.fetch_add(1, Ordering::Relaxed);
            c.dropped.fetch_add(events.len() as u64, Ordering::Relaxed);
            errors.log(&e, events.len(), "dropped", true);
            match sp.consume(cursor) {
                Ok(()) => Drained::Some(Duration::ZERO),
                Err(_) => Drained::Failed,
            }
        }
    }
}
