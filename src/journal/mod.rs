//! The message journal: every fact about every message (refused, accepted, each delivery
//! attempt, DSN, administrator action) written to a database beside the mail's path, so that
//! `passerelle track` answers "did my letter arrive?" in seconds and `passerelle stats` gives
//! the establishments' activity indicators.
//!
//! - **Off the hot path.** [`record`] is a non-blocking push onto a bounded channel; a writer
//!   thread of its own batches the events (one transaction per `batch_size` events or
//!   `flush_interval`) into SQLite (default, a file beside the spool) or PostgreSQL (shared by
//!   several gateways). The database slow or down: batches it cannot take go to a durable
//!   file under the spool (`spill`) and are written in order when it returns; mail never
//!   waits and is never refused for the journal.
//! - **Not the authority.** The queue is. A crash loses at most the batch in memory.
//! - **No subject, no body**: addresses and the Message-ID only (see [`event`]).
//!
//! The gateway installs one process-wide handle ([`install`]); the emission helpers below are
//! single calls placed where intake, the scheduler and the admin endpoint learn each fact,
//! and are no-ops when no journal is installed (tests, one-shot commands).
//!
//! Must not import: intake, queue, console, cli, admin (it records what they report).

pub mod cli;
pub mod event;
pub mod plan;
pub mod postgres;
pub mod proof;
pub mod read;
pub mod schema;
pub mod spill;
pub mod sqlite;
pub mod stats;
#[cfg(test)]
mod tests;
pub mod writer;

pub use crate::config::{JournalConfig, JournalKind};
pub use event::{
    Accepted, AcceptedRcpt, Admin, AdminAction, Attempt, Client, Destination, DsnQueued, Event,
    EventBody, Origin, Outcome, Refusal, ReplyInfo, Stage,
};
pub use read::{Reader, StatsBy, StatsQuery, TrackFilter};

use crate::message::Envelope;
use crate::reply::Reply;
use arc_swap::ArcSwapOption;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

#[derive(Debug, thiserror::Error)]
pub enum JournalError {
    #[error("journal (SQLite {path}): {source}")]
    Sqlite {
        path: String,
        #[source]
        source: rusqlite::Error,
    },
    #[error("journal (PostgreSQL): {0}")]
    Postgres(String),
    #[error("journal: {0}")]
    Other(String),
}

/// What the journal derives from the configuration: where each listener's mail comes from and
/// where each transport's goes (so that emitters only pass names).
#[derive(Debug, Default, Clone)]
pub struct Topology {
    pub listeners: HashMap<String, Origin>,
    pub transports: HashMap<String, Destination>,
}

impl Topology {
    /// A listener that requires a client certificate faces the trust space; the others face
    /// establishments. A transport with `tls = "mutual"` goes to the trust space; the others
    /// to mailbox servers.
    pub fn from_config(cfg: &crate::config::Config) -> Topology {
        use crate::config::{ClientCert, TlsPolicy};
        Topology {
            listeners: cfg
                .listener
                .iter()
                .map(|l| {
                    let o = if l.client_certificate == ClientCert::Require {
                        Origin::TrustSpace
                    } else {
                        Origin::Establishment
                    };
                    (l.name.clone(), o)
                })
                .collect(),
            transports: cfg
                .all_transports()
                .iter()
                .map(|(n, t)| {
                    let mailbox = n.starts_with(crate::config::establishment::TRANSPORT_PREFIX);
                    let d = if t.tls == TlsPolicy::Mutual && !mailbox {
                        Destination::TrustSpace
                    } else {
                        Destination::Mailbox
                    };
                    (n.clone(), d)
                })
                .collect(),
        }
    }
}

/// Counters shared by [`record`] and the writer thread, published to `/metrics`.
#[derive(Debug, Default)]
pub struct Counters {
    pub recorded: AtomicU64,
    pub dropped: AtomicU64,
    pub written: AtomicU64,
    pub batches: AtomicU64,
    pub errors: AtomicU64,
    /// Events in the channel or promised a place in it ([`reserve_admin`]); the writer takes
    /// one off for each event it receives.
    pub pending: std::sync::atomic::AtomicUsize,
    /// Unix seconds of the last "dropped" log line (one per 10 s at most).
    last_drop_log: AtomicU64,
    /// Events waiting in the spill directory (the database away, or taking them back).
    pub spilled: AtomicU64,
    /// Unix seconds since which events are on disk (when `spilled` > 0).
    pub spill_since: AtomicU64,
    /// The spill reached `journal.spill_max_size`: events are being dropped.
    pub spill_full: std::sync::atomic::AtomicBool,
}

/// The running journal: the sending end of the writer's channel, and the writer thread.
pub struct Journal {
    tx: std::sync::mpsc::SyncSender<Event>,
    /// `journal.buffer`: ordinary events beyond it are dropped; the channel holds
    /// [`ADMIN_HEADROOM`] more, for administrators' actions only.
    buffer: usize,
    pub counters: Arc<Counters>,
    writer: std::sync::Mutex<Option<writer::WriterThread>>,
}

static HANDLE: ArcSwapOption<Journal> = ArcSwapOption::const_empty();
static TOPOLOGY: ArcSwapOption<Topology> = ArcSwapOption::const_empty();

/// Starts the writer for `cfg.journal` (`None` for `kind = "none"`). Never fails on the
/// database itself: an unreachable one is retried in the background while mail flows.
pub fn start(cfg: &crate::config::Config) -> Option<Arc<Journal>> {
    let jc = &cfg.journal;
    if jc.kind == JournalKind::None {
        tracing::info!("journal disabled (journal.kind = \"none\")");
        return None;
    }
    let backend = backend(cfg)?;
    let (tx, rx) = std::sync::mpsc::sync_channel(jc.buffer + ADMIN_HEADROOM);
    let counters = Arc::new(Counters::default());
    tracing::info!(kind = jc.kind.as_str(), gateway = %jc.gateway_name(), "journal: {}", backend.describe());
    let mut settings = writer::Settings::from(jc);
    settings.spill = Some((cfg.server.spool.join(SPILL_DIR), jc.spill_max_size));
    let thread = writer::spawn(backend, rx, settings, counters.clone());
    Some(Arc::new(Journal {
        tx,
        buffer: jc.buffer,
        counters,
        writer: std::sync::Mutex::new(Some(thread)),
    }))
}

/// Under the spool: the events the database could not take yet (`spill.rs`).
pub const SPILL_DIR: &str = "journal-spill";

/// The journal's line of `/readyz` when there is something to say: events waiting on disk
/// (since when), or the spill at its bound (an alert: events are being dropped).
pub fn readiness() -> Option<String> {
    let j = HANDLE.load();
    let c = &j.as_ref()?.counters;
    let n = c.spilled.load(Ordering::Relaxed);
    if c.spill_full.load(Ordering::Relaxed) {
        return Some(format!(
            "journal: ALERT: spill full (journal.spill_max_size), events dropped: {}; {n} events wait on disk\n",
            c.dropped.load(Ordering::Relaxed)
        ));
    }
    (n > 0).then(|| {
        let since = c.spill_since.load(Ordering::Relaxed) as i64;
        let at = read::format_time(since * 1000);
        format!("journal: database away or catching up: {n} events kept on disk since {at}\n")
    })
}

/// The writer's backend for a config (`None` for `kind = "none"`).
fn backend(cfg: &crate::config::Config) -> Option<Box<dyn writer::Backend>> {
    let jc = &cfg.journal;
    match jc.kind {
        JournalKind::Sqlite => Some(Box::new(sqlite::SqliteWriter::new(
            jc.sqlite_path(&cfg.server.spool),
            jc.gateway_name(),
        ))),
        JournalKind::Postgres => Some(Box::new(postgres::PgWriter::new(
            jc.url.clone().unwrap_or_default(),
            jc.gateway_name(),
        ))),
        JournalKind::None => None,
    }
}

/// Writes events at once, without the writer thread: for the one-shot commands (a queue verb
/// on a stopped server). On a thread of its own, as the PostgreSQL writer runs its own
/// runtime.
pub fn write_now(cfg: &crate::config::Config, events: Vec<Event>) -> Result<(), JournalError> {
    let Some(mut b) = backend(cfg) else {
        return Ok(());
    };
    std::thread::spawn(move || b.write(&plan::plan(&events)))
        .join()
        .map_err(|_| JournalError::Other("the journal writer panicked".into()))?
        .map_err(|e| JournalError::Other(e.message))
}

/// Makes `journal` the process-wide one that [`record`] feeds, and learns the topology.
pub fn install(journal: Option<Arc<Journal>>, cfg: &crate::config::Config) {
    reconfigure(cfg);
    HANDLE.store(journal);
}

/// After a reload: listeners and transports may have changed.
pub fn reconfigure(cfg: &crate::config::Config) {
    TOPOLOGY.store(Some(Arc::new(Topology::from_config(cfg))));
}

/// Stops feeding the journal and lets the writer flush what it holds (at most `wait`).
pub fn shutdown(wait: Duration) {
    let Some(j) = HANDLE.swap(None) else { return };
    let thread = j.writer.lock().unwrap_or_else(|p| p.into_inner()).take();
    // The writer ends when every sender is gone: ours, and any `record` call in flight.
    drop(j);
    if let Some(t) = thread {
        if !t.join(wait) {
            tracing::warn!("journal: writer still busy at shutdown; its last events are lost");
        }
    }
}

/// Whether a journal is installed (lets callers skip building an event).
pub fn enabled() -> bool {
    HANDLE.load().is_some()
}

/// Queues one event for the writer. Never blocks: when the buffer is full the event is
/// dropped, counted (`passerelle_journal_events_dropped_total`) and logged (rate-limited).
pub fn record(ev: Event) {
    if let Some(j) = HANDLE.load().as_ref() {
        j.push(ev);
    }
}

impl Journal {
    /// See [`record`].
    pub fn push(&self, ev: Event) {
        let c = &self.counters;
        c.recorded.fetch_add(1, Ordering::Relaxed);
        if self.take_place(self.buffer) {
            if self.tx.try_send(ev).is_ok() {
                return;
            }
            self.give_back();
        }
        let n = c.dropped.fetch_add(1, Ordering::Relaxed) + 1;
        let now = crate::util::clock::now_ms() / 1000;
        let last = c.last_drop_log.load(Ordering::Relaxed);
        if now >= last + 10
            && c.last_drop_log
                .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            tracing::warn!(
                dropped_total = n,
                "journal buffer full (database slow or down): events dropped; mail is not affected"
            );
        }
    }

    /// Counts one more pending event if fewer than `limit` are: the count never exceeds the
    /// channel's capacity, so a place taken is a `try_send` that succeeds.
    fn take_place(&self, limit: usize) -> bool {
        self.counters
            .pending
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < limit).then_some(n + 1)
            })
            .is_ok()
    }

    /// See [`reserve_admin`].
    pub fn reserve_admin(self: &Arc<Journal>) -> Result<AdminSlot, JournalFull> {
        // The spill at its bound drops what reaches it: an action would go unrecorded.
        if self.counters.spill_full.load(Ordering::Relaxed) {
            return Err(JournalFull);
        }
        if self.take_place(self.buffer + ADMIN_HEADROOM) {
            Ok(AdminSlot {
                journal: Some(self.clone()),
            })
        } else {
            Err(JournalFull)
        }
    }

    fn give_back(&self) {
        self.counters.pending.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Places kept in the journal's channel beyond `journal.buffer` for administrators' actions:
/// a flood of mail events fills the buffer, never these.
pub const ADMIN_HEADROOM: usize = 256;

/// Why an administrator's action cannot be recorded now.
#[derive(Debug, Clone, thiserror::Error)]
#[error("the journal cannot record it now: its buffer or spill is full (database slow or down)")]
pub struct JournalFull;

/// A place in the journal kept for the record of one administrator's action, taken before
/// the action is done (issue 24 B.12): an action whose record would be dropped is refused,
/// never done unrecorded. Dropped unused, the place is given back.
pub struct AdminSlot {
    journal: Option<Arc<Journal>>,
}

/// Keeps a place for an action's record (`Err` when even the administrators' headroom is
/// full). Without a journal the action's log line is its record.
pub fn reserve_admin() -> Result<AdminSlot, JournalFull> {
    match HANDLE.load_full() {
        Some(j) => j.reserve_admin(),
        None => Ok(AdminSlot { journal: None }),
    }
}

impl AdminSlot {
    /// Records the action done on message `queue_id` in the place kept for it.
    pub fn admin(mut self, queue_id: &str, action: AdminAction, user: &str) {
        let Some(j) = self.journal.take() else { return };
        j.counters.recorded.fetch_add(1, Ordering::Relaxed);
        let ev = Event::now(EventBody::Admin(Admin {
            queue_id: queue_id.to_string(),
            action,
            user: user.to_string(),
        }));
        if j.tx.try_send(ev).is_err() {
            // Only when the writer is gone (shutdown): nothing is left to record it.
            j.give_back();
            j.counters.dropped.fetch_add(1, Ordering::Relaxed);
            tracing::error!(
                queue_id,
                user,
                "journal: writer gone, an administrator's action is not recorded"
            );
        }
    }
}

impl Drop for AdminSlot {
    fn drop(&mut self) {
        if let Some(j) = self.journal.take() {
            j.give_back();
        }
    }
}

fn origin_of(listener: &str) -> Option<Origin> {
    TOPOLOGY
        .load()
        .as_ref()
        .and_then(|t| t.listeners.get(listener).copied())
}

fn destination_of(transport: &str) -> Option<Destination> {
    TOPOLOGY
        .load()
        .as_ref()
        .and_then(|t| t.transports.get(transport).copied())
}

// ----------------------------------------------------------------------------------------
// Emission helpers: one call at each place that learns a fact.

/// A message is on disk and about to get its 250. `message` is what was stored (our
/// Received header, `hl` bytes, and the client's content); its Message-ID is read and the
/// client's content digested (SHA-256, the proof of sending), nothing else. `bal_types`
/// follows the envelope's recipients (empty when unknown).
pub fn accepted(
    env: &Envelope,
    message: &[u8],
    hl: usize,
    mut client: Client,
    bal_types: &[Option<String>],
) {
    if !enabled() {
        return;
    }
    if client.origin.is_none() {
        client.origin = origin_of(&client.listener);
    }
    record(Event::now(EventBody::Accepted(Box::new(Accepted {
        queue_id: env.id.clone(),
        message_id: event::message_id(message),
        from: env.mail_from.clone(),
        recipients: env
            .recipients
            .iter()
            .enumerate()
            .map(|(i, r)| AcceptedRcpt {
                address: r.address.clone(),
                route: r.route.clone(),
                transport: r.transport.clone(),
                destination: destination_of(&r.transport),
                bal_type: bal_types.get(i).cloned().flatten(),
            })
            .collect(),
        size: message.len() as u64,
        client,
        sha256: message.get(hl..).map(crate::util::sha256_hex),
    }))));
    receipt(&env.id, message.get(hl..).unwrap_or_default());
}

/// The most of a notification that is parsed: its report part comes first, the returned
/// message (possibly large) after it.
const RECEIPT_READ: usize = 256 * 1024;

/// A message that is a delivery or read receipt (its top-level Content-Type says so): the
/// receipt, for the writer to join to the message it answers. The notification itself goes
/// on as any message, byte for byte; one that does not parse is only relayed.
fn receipt(queue_id: &str, message: &[u8]) {
    let head = &message[..message.len().min(RECEIPT_READ)];
    let Some(report) = crate::message::report::announced(head) else {
        return;
    };
    match crate::message::report::parse(head) {
        Some(r) => record(Event::now(EventBody::Receipt(Box::new(
            event::ReceiptSeen {
                queue_id: queue_id.to_string(),
                receipt: r,
            },
        )))),
        None => {
            tracing::info!(
                queue_id,
                report,
                "journal: a notification that does not parse: relayed, not joined"
            );
            crate::metrics::inc(
                "passerelle_receipts_total",
                "delivery (dsn) and read (mdn) notifications seen, joined to their message or not",
                &[("type", report), ("matched", "false")],
            );
        }
    }
}

/// A session, a sender, a recipient or a message was refused with `reply`.
/// `tls_failure`: the TLS refusal label when a client certificate was the cause.
pub fn refused(
    stage: Stage,
    reply: &Reply,
    mut client: Client,
    from: Option<&str>,
    to: Option<&str>,
    tls_failure: Option<&str>,
) {
    if !enabled() {
        return;
    }
    if client.origin.is_none() {
        client.origin = origin_of(&client.listener);
    }
    let reason = event::reason_of(stage, reply);
    let tls_failure = tls_failure
        .map(str::to_string)
        .or_else(|| (reason == "tls-required").then(|| "no_starttls".to_string()));
    record(Event::now(EventBody::Refused(Box::new(Refusal {
        stage,
        reason: reason.to_string(),
        reply: ReplyInfo::from(reply),
        client,
        from: from.map(str::to_string),
        to: to.map(str::to_string),
        tls_failure,
    }))));
}

/// A connection refused before any dialogue (`reply` as sent, e.g. `554 5.7.1 ...`).
///
/// At most one per client address and reply every [`CONNECT_QUIET`]: anyone can open
/// connections, and a flood of them must not fill the buffer that the mail's events share.
pub fn refused_connect(listener: &str, peer: std::net::SocketAddr, reply: &str) {
    if !enabled() {
        return;
    }
    let r =
        Reply::parse(reply.trim_end()).unwrap_or_else(|_| Reply::new(554, "", reply.trim_end()));
    if !connect_due(peer.ip(), r.code, crate::util::clock::now_ms()) {
        return;
    }
    let client = Client {
        listener: listener.to_string(),
        ip: peer.ip().to_string(),
        ..Client::default()
    };
    refused(Stage::Connect, &r, client, None, None, None);
}

/// See [`refused_connect`].
pub const CONNECT_QUIET: Duration = Duration::from_secs(60);

/// Whether a connect refusal of `ip` with `code` is due for the journal at `now` (ms).
fn connect_due(ip: std::net::IpAddr, code: u16, now: u64) -> bool {
    static LAST: std::sync::Mutex<Option<HashMap<(std::net::IpAddr, u16), u64>>> =
        std::sync::Mutex::new(None);
    let mut guard = LAST.lock().unwrap_or_else(|p| p.into_inner());
    let last = guard.get_or_insert_with(HashMap::new);
    let quiet = CONNECT_QUIET.as_millis() as u64;
    if last.len() > 10_000 {
        last.retain(|_, t| now.saturating_sub(*t) < quiet);
    }
    match last.get(&(ip, code)) {
        Some(t) if now.saturating_sub(*t) < quiet => false,
        _ => {
            last.insert((ip, code), now);
            true
        }
    }
}

/// One recipient's outcome of a delivery attempt: what delivery reported (`a`: the remote
/// host, TLS, peer DN, duration) and what the queue made of it (`state`: the reply or the
/// failure). `attempt` counts from 1.
pub fn attempt(
    env: &Envelope,
    index: usize,
    outcome: Outcome,
    a: &crate::delivery::Attempt,
    state: &crate::message::RcptState,
    attempt: u32,
) {
    if !enabled() {
        return;
    }
    let Some(rcpt) = env.recipients.get(index) else {
        return;
    };
    let (reply, diagnostic, tls_failure) = match (&state.delivered, &state.last) {
        (Some(d), _) if outcome == Outcome::Delivered => {
            (Some(ReplyInfo::from(&d.reply)), d.to_string(), None)
        }
        (_, Some(f)) => (
            f.reply.as_ref().map(ReplyInfo::from),
            f.to_string(),
            f.tls().map(|r| r.label().to_string()),
        ),
        _ => (None, String::new(), None),
    };
    // "TLSv1.3 with cipher TLS13_AES_256_GCM_SHA384"
    let (tls_version, cipher) = match a.tls.as_deref().and_then(|t| t.split_once(" with cipher ")) {
        Some((v, c)) => (Some(v.to_string()), Some(c.to_string())),
        None => (a.tls.clone(), None),
    };
    record(Event::now(EventBody::Attempt(Box::new(Attempt {
        queue_id: env.id.clone(),
        index: index as u32,
        to: rcpt.address.clone(),
        outcome,
        transport: rcpt.transport.clone(),
        destination: destination_of(&rcpt.transport),
        // "host:port"; the address it resolved to is `remote_ip`.
        next_hop: a
            .remote
            .as_ref()
            .map(|r| format!("{}:{}", r.host, r.addr.port())),
        mx: a.remote.as_ref().map(|r| r.host.clone()),
        remote_ip: a.remote.as_ref().map(|r| r.addr.ip().to_string()),
        tls_version,
        cipher,
        peer_dn: a.peer_dn.clone(),
        reply,
        diagnostic,
        tls_failure,
        duration_ms: a.duration.as_millis() as u64,
        attempt,
    }))));
}

/// A DSN about the recipients `about` (indexes) of `original` was queued as the message
/// `dsn` (`kind`: Failure, Delay, Success): the original's timeline says so, and the DSN is
/// journaled as a message of local origin.
pub fn dsn_queued(
    original: &Envelope,
    about: &[usize],
    dsn: &Envelope,
    kind: &str,
    message: &[u8],
) {
    if !enabled() {
        return;
    }
    record(Event::now(EventBody::Dsn(Box::new(DsnQueued {
        queue_id: original.id.clone(),
        dsn: kind.to_ascii_lowercase(),
        dsn_id: dsn.id.clone(),
        to: dsn
            .recipients
            .first()
            .map(|r| r.address.clone())
            .unwrap_or_default(),
        recipients: about
            .iter()
            .filter_map(|&i| original.recipients.get(i).map(|r| r.address.clone()))
            .collect(),
    }))));
    let client = Client {
        listener: dsn.listener.clone(),
        origin: Some(Origin::Local),
        ip: dsn.client.clone(),
        helo: Some(dsn.helo.clone()),
        ..Client::default()
    };
    accepted(dsn, message, 0, client, &[]);
}

/// An administrator acted on a message (`user`: `cli` for the admin token).
pub fn admin(queue_id: &str, action: AdminAction, user: &str) {
    record(Event::now(EventBody::Admin(Admin {
        queue_id: queue_id.to_string(),
        action,
        user: user.to_string(),
    })));
}
