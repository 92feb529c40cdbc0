//! The scheduler: keeps every live message in memory ordered by its next attempt, starts
//! deliveries within the global limit, and applies their outcomes: retry per `[queue].retry`,
//! bounce at `lifetime`, one delay warning at `delay_warning`.
//!
//! The scheduler task only touches memory. Each delivery task persists its own result (the
//! spool's group commit then batches many results per fsync) before reporting back.

use super::spool::{BodyLoc, Spool};
use crate::config::QueueConfig;
use crate::delivery::{Agent, RcptOutcome};
use crate::dsn::{self, DsnKind, DsnRecipient, DsnRequest};
use crate::message::{
    new_queue_id, now_ms, Envelope, RcptStatus, Recipient, State, NOTIFY_DELAY, NOTIFY_FAILURE,
    NOTIFY_SUCCESS,
};
use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, oneshot, Semaphore};

/// Chooses the route and transport for a DSN's recipient (the original sender), using the
/// current routing policy. Returns `None` when no route would accept that address.
pub type DsnRouter = Arc<dyn Fn(&Envelope) -> Option<(String, String)> + Send + Sync>;

/// A row of `queue list`.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct QueueItem {
    pub id: String,
    pub received: u64,
    pub sender: String,
    pub size: u64,
    pub held: bool,
    pub attempts: u32,
    pub next_attempt: u64,
    pub recipients: Vec<QueueRcpt>,
}

#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct QueueRcpt {
    pub address: String,
    pub status: String,
    pub last_error: Option<String>,
}

pub enum Command {
    /// A message just stored by intake (or a DSN).
    New {
        envelope: Box<Envelope>,
        state: State,
        body: BodyLoc,
        /// The body still in memory from intake, for the first attempt.
        mem: Option<InMemory>,
    },
    List(oneshot::Sender<Vec<QueueItem>>),
    Show(String, oneshot::Sender<Option<QueueItem>>),
    Stats(oneshot::Sender<QueueStats>),
    /// Retry now: one id, or all when `None`.
    Retry(Option<String>, oneshot::Sender<Result<usize, String>>),
    Hold(String, oneshot::Sender<Result<(), String>>),
    Release(String, oneshot::Sender<Result<(), String>>),
    Delete(String, oneshot::Sender<Result<(), String>>),
    Shutdown(oneshot::Sender<()>),
}

/// Gauges for /metrics.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct QueueStats {
    pub messages: usize,
    pub held: usize,
    pub in_delivery: usize,
    /// Age in seconds of the oldest message.
    pub oldest_age: u64,
}

/// Handle used by intake and the admin side.
#[derive(Clone)]
pub struct QueueHandle {
    tx: mpsc::UnboundedSender<Command>,
}

impl QueueHandle {
    pub fn submit(
        &self,
        envelope: Envelope,
        state: State,
        body: BodyLoc,
        mem: Option<Arc<Vec<u8>>>,
    ) {
        let _ = self.tx.send(Command::New {
            envelope: Box::new(envelope),
            state,
            body,
            mem: mem.and_then(InMemory::new),
        });
    }
    pub fn send(&self, c: Command) -> bool {
        self.tx.send(c).is_ok()
    }
    pub async fn list(&self) -> Vec<QueueItem> {
        let (tx, rx) = oneshot::channel();
        if !self.send(Command::List(tx)) {
            return Vec::new();
        }
        rx.await.unwrap_or_default()
    }
    pub async fn show(&self, id: &str) -> Option<QueueItem> {
        let (tx, rx) = oneshot::channel();
        self.send(Command::Show(id.to_string(), tx)).then_some(())?;
        rx.await.ok().flatten()
    }
    pub async fn stats(&self) -> QueueStats {
        let (tx, rx) = oneshot::channel();
        if !self.send(Command::Stats(tx)) {
            return QueueStats::default();
        }
        rx.await.unwrap_or_default()
    }
    /// Sends a command built around a reply channel and waits for the answer.
    pub async fn ask<T>(
        &self,
        make: impl FnOnce(oneshot::Sender<Result<T, String>>) -> Command,
    ) -> Result<T, String> {
        let (tx, rx) = oneshot::channel();
        if !self.send(make(tx)) {
            return Err("the queue manager is not running".into());
        }
        rx.await
            .map_err(|_| "the queue manager did not answer".to_string())?
    }
    pub async fn shutdown(&self) {
        let (tx, rx) = oneshot::channel();
        if self.send(Command::Shutdown(tx)) {
            let _ = rx.await;
        }
    }
}

struct Entry {
    env: Arc<Envelope>,
    state: State,
    body: BodyLoc,
    mem: Option<InMemory>,
    running: bool,
}

/// Bytes of message bodies held in memory for their first attempt, across the process.
static IN_MEMORY: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
/// Above this, new messages are read back from the spool instead (a slow next hop must not
/// pile bodies up in RAM).
const IN_MEMORY_MAX: usize = 256 * 1024 * 1024;

/// A body kept from intake so the first delivery need not read it back from disk.
pub struct InMemory(Arc<Vec<u8>>);

impl InMemory {
    fn new(body: Arc<Vec<u8>>) -> Option<InMemory> {
        use std::sync::atomic::Ordering;
        let n = body.len();
        let prev = IN_MEMORY.fetch_add(n, Ordering::Relaxed);
        if prev + n > IN_MEMORY_MAX {
            IN_MEMORY.fetch_sub(n, Ordering::Relaxed);
            return None;
        }
        Some(InMemory(body))
    }
}

impl Drop for InMemory {
    fn drop(&mut self) {
        IN_MEMORY.fetch_sub(self.0.len(), std::sync::atomic::Ordering::Relaxed);
    }
}

/// Result of one delivery task.
struct Finished {
    id: String,
    /// `None` when the message is gone (all recipients final).
    state: Option<State>,
    body: BodyLoc,
}

pub struct Scheduler {
    entries: HashMap<String, Entry>,
    heap: BinaryHeap<Reverse<(u64, String)>>,
    spool: Spool,
    agent: Arc<Agent>,
    config: Arc<arc_swap::ArcSwap<QueueConfig>>,
    hostname: String,
    router: DsnRouter,
    permits: Arc<Semaphore>,
    tx: mpsc::UnboundedSender<Command>,
}

impl Scheduler {
    pub fn start(
        spool: Spool,
        agent: Arc<Agent>,
        config: Arc<arc_swap::ArcSwap<QueueConfig>>,
        hostname: String,
        router: DsnRouter,
        recovered: Vec<super::spool::Recovered>,
    ) -> QueueHandle {
        let (tx, rx) = mpsc::unbounded_channel();
        let max = config.load().max_deliveries;
        let mut s = Scheduler {
            entries: HashMap::with_capacity(recovered.len()),
            heap: BinaryHeap::with_capacity(recovered.len()),
            spool,
            agent,
            config,
            hostname,
            router,
            permits: Arc::new(Semaphore::new(max)),
            tx: tx.clone(),
        };
        for r in recovered {
            s.insert(r.envelope, r.state, r.body, None);
        }
        tokio::spawn(s.run(rx));
        QueueHandle { tx }
    }

    fn insert(&mut self, env: Envelope, state: State, body: BodyLoc, mem: Option<InMemory>) {
        let id = env.id.clone();
        if !state.held {
            self.heap.push(Reverse((state.next_attempt, id.clone())));
        }
        self.entries.insert(
            id,
            Entry {
                env: Arc::new(env),
                state,
                body,
                mem,
                running: false,
            },
        );
    }

    async fn run(mut self, mut rx: mpsc::UnboundedReceiver<Command>) {
        let (done_tx, mut done_rx) = mpsc::unbounded_channel::<Finished>();
        let mut shutdown: Option<oneshot::Sender<()>> = None;
        loop {
            let next_due = self.heap.peek().map(|Reverse((t, _))| *t);
            let can_start = shutdown.is_none() && self.permits.available_permits() > 0;
            let sleep = match next_due {
                Some(t) => Duration::from_millis(t.saturating_sub(now_ms())),
                None => Duration::from_secs(3600),
            };
            tokio::select! {
                cmd = rx.recv() => match cmd {
                    Some(Command::Shutdown(ack)) => {
                        shutdown = Some(ack);
                    }
                    Some(c) => self.command(c),
                    None => break,
                },
                Some(f) = done_rx.recv() => self.finished(f),
                _ = tokio::time::sleep(sleep), if can_start && next_due.is_some() => {
                    self.dispatch(&done_tx);
                }
            }
            if let Some(ack) = shutdown.take() {
                if self.entries.values().all(|e| !e.running) {
                    let _ = ack.send(());
                    break;
                }
                shutdown = Some(ack);
            }
        }
    }

    fn dispatch(&mut self, done: &mpsc::UnboundedSender<Finished>) {
        let now = now_ms();
        while let Some(Reverse((due, _))) = self.heap.peek() {
            if *due > now {
                break;
            }
            let Ok(permit) = self.permits.clone().try_acquire_owned() else {
                break;
            };
            let Some(Reverse((due, id))) = self.heap.pop() else {
                break;
            };
            let Some(e) = self.entries.get_mut(&id) else {
                continue;
            };
            // Stale heap items (rescheduled, held, or already running) are skipped.
            if e.running || e.state.held || e.state.next_attempt != due {
                continue;
            }
            e.running = true;
            let job = Job {
                env: e.env.clone(),
                state: e.state.clone(),
                body: e.body,
                mem: e.mem.take(),
                spool: self.spool.clone(),
                agent: self.agent.clone(),
                config: self.config.load_full(),
                hostname: self.hostname.clone(),
                router: self.router.clone(),
                queue: QueueHandle {
                    tx: self.tx.clone(),
                },
            };
            let done = done.clone();
            tokio::spawn(async move {
                let f = job.run().await;
                drop(permit);
                let _ = done.send(f);
            });
        }
    }

    fn finished(&mut self, f: Finished) {
        match f.state {
            None => {
                self.entries.remove(&f.id);
            }
            Some(state) => {
                if let Some(e) = self.entries.get_mut(&f.id) {
                    e.running = false;
                    e.body = f.body;
                    if !state.held {
                        self.heap.push(Reverse((state.next_attempt, f.id.clone())));
                    }
                    e.state = state;
                }
            }
        }
    }

    fn command(&mut self, c: Command) {
        match c {
            Command::New {
                envelope,
                state,
                body,
                mem,
            } => self.insert(*envelope, state, body, mem),
            Command::List(reply) => {
                let mut items: Vec<QueueItem> = self.entries.values().map(item).collect();
                items.sort_by(|a, b| a.id.cmp(&b.id));
                let _ = reply.send(items);
            }
            Command::Show(id, reply) => {
                let _ = reply.send(self.entries.get(&id).map(item));
            }
            Command::Stats(reply) => {
                let now = now_ms() / 1000;
                let oldest = self
                    .entries
                    .values()
                    .map(|e| e.env.received)
                    .min()
                    .unwrap_or(now);
                let _ = reply.send(QueueStats {
                    messages: self.entries.len(),
                    held: self.entries.values().filter(|e| e.state.held).count(),
                    in_delivery: self.entries.values().filter(|e| e.running).count(),
                    oldest_age: now.saturating_sub(oldest),
                });
            }
            Command::Retry(id, reply) => {
                let now = now_ms();
                let ids: Vec<String> = match id {
                    Some(id) if self.entries.contains_key(&id) => vec![id],
                    Some(id) => {
                        let _ = reply.send(Err(format!("{id}: no such message")));
                        return;
                    }
                    None => self.entries.keys().cloned().collect(),
                };
                let mut n = 0;
                for id in ids {
                    if let Some(e) = self.entries.get_mut(&id) {
                        if !e.running && !e.state.held {
                            e.state.next_attempt = now;
                            self.heap.push(Reverse((now, id)));
                            n += 1;
                        }
                    }
                }
                let _ = reply.send(Ok(n));
            }
            Command::Hold(id, reply) => self.set_held(id, true, reply),
            Command::Release(id, reply) => self.set_held(id, false, reply),
            Command::Delete(id, reply) => {
                let r = match self.entries.get(&id) {
                    None => Err(format!("{id}: no such message")),
                    Some(e) if e.running => Err(format!("{id}: delivery in progress, try again")),
                    Some(_) => {
                        let e = self.entries.remove(&id).map(|e| e.body);
                        if let Some(body) = e {
                            let spool = self.spool.clone();
                            tokio::spawn(async move {
                                if let Err(err) = spool.remove(&id, body).await {
                                    tracing::error!(queue_id = %id, error = %err, "delete: spool write failed");
                                } else {
                                    tracing::info!(queue_id = %id, "deleted by administrator");
                                }
                            });
                        }
                        Ok(())
                    }
                };
                let _ = reply.send(r);
            }
            Command::Shutdown(_) => {}
        }
    }

    fn set_held(&mut self, id: String, held: bool, reply: oneshot::Sender<Result<(), String>>) {
        let Some(e) = self.entries.get_mut(&id) else {
            let _ = reply.send(Err(format!("{id}: no such message")));
            return;
        };
        if e.running {
            let _ = reply.send(Err(format!("{id}: delivery in progress, try again")));
            return;
        }
        e.state.held = held;
        if !held {
            e.state.next_attempt = now_ms();
            self.heap.push(Reverse((e.state.next_attempt, id.clone())));
        }
        let (spool, state) = (self.spool.clone(), e.state.clone());
        tokio::spawn(async move {
            let r = spool.update(&id, &state).await.map_err(|e| e.to_string());
            if r.is_ok() {
                tracing::info!(queue_id = %id, held, "hold state changed by administrator");
            }
            let _ = reply.send(r);
        });
    }
}

fn item(e: &Entry) -> QueueItem {
    QueueItem::new(&e.env, &e.state, e.body.len)
}

impl QueueItem {
    /// The row for a message, whether from the running scheduler or a stopped spool.
    pub fn new(env: &Envelope, state: &State, size: u64) -> QueueItem {
        QueueItem {
            id: env.id.clone(),
            received: env.received,
            sender: env.mail_from.clone(),
            size,
            held: state.held,
            attempts: state.attempts,
            next_attempt: state.next_attempt,
            recipients: env
                .recipients
                .iter()
                .zip(&state.rcpts)
                .map(|(r, s)| QueueRcpt {
                    address: r.address.clone(),
                    status: format!("{:?}", s.status).to_lowercase(),
                    last_error: s.last_error.clone(),
                })
                .collect(),
        }
    }
}

/// Logs one line per recipient outcome of an attempt.
///
/// Called after the attempt's spool record (update or removal) is written, so a crash cannot
/// come between a logged `status=sent` and the record that stops a second delivery: the log
/// reader can trust that a logged `sent` is final.
fn log_outcomes(env: &Envelope, lines: &[(usize, &'static str, String)]) {
    for (i, status, text) in lines {
        let Some(rcpt) = env.recipients.get(*i) else {
            continue;
        };
        tracing::info!(queue_id = %env.id, to = %rcpt.address, relay = %rcpt.transport, status = *status, "{text}");
    }
}

/// One delivery attempt of one message, with everything it needs.
struct Job {
    env: Arc<Envelope>,
    state: State,
    body: BodyLoc,
    mem: Option<InMemory>,
    spool: Spool,
    agent: Arc<Agent>,
    config: Arc<QueueConfig>,
    hostname: String,
    router: DsnRouter,
    queue: QueueHandle,
}

impl Job {
    async fn run(mut self) -> Finished {
        let id = self.env.id.clone();
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
        let started = std::time::Instant::now();
        let outcomes = self.agent.deliver(&self.env, &self.state, &body).await;
        let took = started.elapsed();
        let now = now_ms();
        self.state.attempts += 1;
        let mut failed = Vec::new();
        let mut relayed = Vec::new();
        // Outcome lines are logged only once the spool knows them: a `status=sent` line must
        // never be followed by a second delivery after a crash (see `log_outcomes`).
        let mut lines: Vec<(usize, &'static str, String)> = Vec::new();
        for (i, o) in outcomes {
            let Some(rs) = self.state.rcpts.get_mut(i) else {
                continue;
            };
            let rcpt = &self.env.recipients[i];
            match o {
                RcptOutcome::Delivered(text) => {
                    metric_delivery(&rcpt.transport, "sent");
                    crate::metrics::observe(
                        "passerelle_delivery_seconds",
                        "acceptance to delivery, per transport",
                        &[("transport", &rcpt.transport)],
                        Duration::from_millis(now.saturating_sub(self.env.received * 1000)),
                    );
                    lines.push((i, "sent", text.clone()));
                    rs.status = RcptStatus::Delivered;
                    rs.last_error = None;
                    rs.remote = Some(text);
                    if rcpt.wants(NOTIFY_SUCCESS) {
                        relayed.push(i);
                    }
                }
                RcptOutcome::Failed(text) => {
                    metric_delivery(&rcpt.transport, "bounced");
                    lines.push((i, "bounced", text.clone()));
                    rs.status = RcptStatus::Failed;
                    rs.last_error = Some(text);
                    failed.push(i);
                }
                RcptOutcome::Deferred(text) => {
                    metric_delivery(&rcpt.transport, "deferred");
                    if text.contains("TLS") {
                        crate::metrics::inc(
                            "passerelle_tls_failures_total",
                            "TLS peers refused, by direction and reason",
                            &[
                                ("direction", "outbound"),
                                ("reason", crate::tls::failure_reason(&text)),
                            ],
                        );
                    }
                    lines.push((i, "deferred", text.clone()));
                    rs.last_error = Some(text);
                }
            }
        }
        // Expiry: pending recipients past the lifetime fail now.
        let age = Duration::from_millis(now.saturating_sub(self.env.received * 1000));
        if !self.state.is_done() && age >= self.config.lifetime {
            for (i, rs) in self.state.rcpts.iter_mut().enumerate() {
                if rs.status == RcptStatus::Pending {
                    let why = rs
                        .last_error
                        .clone()
                        .unwrap_or_else(|| "no attempt succeeded".into());
                    lines.push((i, "expired", why.clone()));
                    rs.status = RcptStatus::Failed;
                    rs.last_error = Some(format!(
                        "message expired after {}: last error: {why}",
                        humantime::format_duration(self.config.lifetime)
                    ));
                    failed.push(i);
                }
            }
        }
        for (i, status, text) in &lines {
            crate::journal::attempt(&self.env, *i, status, text, self.state.attempts, took);
        }
        let fail_dsn: Vec<usize> = failed
            .into_iter()
            .filter(|&i| self.env.recipients[i].wants(NOTIFY_FAILURE))
            .collect();
        self.notify(DsnKind::Failure, &fail_dsn, &body).await;
        self.notify(DsnKind::Success, &relayed, &body).await;

        if self.state.is_done() {
            let removed = self.spool.remove(&id, self.body).await;
            log_outcomes(&self.env, &lines);
            if let Err(e) = removed {
                // The message stays in the spool and will be seen again after a restart; the
                // recipients are final in memory, so nothing is sent twice meanwhile.
                tracing::error!(queue_id = %id, error = %e, "cannot record completion");
            } else {
                tracing::info!(queue_id = %id, "removed");
            }
            return Finished {
                id,
                state: None,
                body: self.body,
            };
        }

        let warn = !self.config.delay_warning.is_zero()
            && !self.state.delay_warned
            && age >= self.config.delay_warning;
        if warn {
            self.state.delay_warned = true;
            let delayed: Vec<usize> = (0..self.env.recipients.len())
                .filter(|&i| {
                    self.state.rcpts[i].status == RcptStatus::Pending
                        && self.env.recipients[i].wants(NOTIFY_DELAY)
                })
                .collect();
            self.notify(DsnKind::Delay, &delayed, &body).await;
        }
        let wait = self.config.retry_after(self.state.attempts);
        let lifetime_end = self.env.received * 1000 + self.config.lifetime.as_millis() as u64;
        // Never wait past the lifetime: the bounce goes out on time.
        self.state.next_attempt = (now + wait.as_millis() as u64).min(lifetime_end.max(now + 1000));
        let env = self.env.clone();
        let finished = self.persist(body).await;
        log_outcomes(&env, &lines);
        finished
    }

    /// Saves the deferred state; relocates the message if it pins the oldest segment.
    async fn persist(self, body: Arc<Vec<u8>>) -> Finished {
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
                    tracing::warn!(queue_id = %id, error = %e, "relocation failed; updating in place")
                }
            }
        }
        if let Err(e) = self.spool.update(&id, &self.state).await {
            tracing::error!(queue_id = %id, error = %e, "cannot record delivery state");
        }
        Finished {
            id,
            state: Some(self.state),
            body: self.body,
        }
    }

    fn retry_later(mut self, why: String) -> Finished {
        tracing::error!(queue_id = %self.env.id, error = %why, "delivery postponed");
        self.state.next_attempt = now_ms() + 60_000;
        Finished {
            id: self.env.id.clone(),
            state: Some(self.state),
            body: self.body,
        }
    }

    /// Sends a DSN about `rcpts` to the envelope sender (never for the null sender).
    async fn notify(&self, kind: DsnKind, rcpts: &[usize], original: &[u8]) {
        if rcpts.is_empty() || self.env.mail_from.is_empty() {
            return;
        }
        let now = now_ms() / 1000;
        let default_status = match kind {
            // Expired after temporary failures (RFC 3463 4.4.7, like Postfix's 4.x.x + failed).
            DsnKind::Failure
                if self.state.attempts > 0
                    && rcpts.iter().any(|&i| {
                        self.state.rcpts[i]
                            .last_error
                            .as_deref()
                            .is_some_and(|e| e.starts_with("message expired"))
                    }) =>
            {
                "4.4.7"
            }
            DsnKind::Failure => "5.0.0",
            DsnKind::Delay => "4.0.0",
            DsnKind::Success => "2.0.0",
        };
        let recipients = rcpts
            .iter()
            .map(|&i| {
                let r = &self.env.recipients[i];
                let s = &self.state.rcpts[i];
                let diag = match kind {
                    DsnKind::Success => s.remote.clone().unwrap_or_default(),
                    _ => s.last_error.clone().unwrap_or_default(),
                };
                DsnRecipient {
                    address: r.address.clone(),
                    orcpt: r.orcpt.clone(),
                    status: dsn::status_from_text(&diag, default_status),
                    remote_mta: remote_host(&diag),
                    diagnostic: diag,
                }
            })
            .collect();
        let dsn_id = new_queue_id();
        let msg = dsn::build(&DsnRequest {
            reporting_mta: &self.hostname,
            kind,
            envelope: &self.env,
            recipients,
            original,
            now,
            id: &dsn_id,
        });
        let mut env = Envelope {
            id: dsn_id.clone(),
            received: now,
            listener: self.env.listener.clone(),
            client: "localhost".into(),
            helo: self.hostname.clone(),
            mail_from: String::new(),
            ret: None,
            envid: None,
            eight_bit: false,
            smtputf8: false,
            recipients: vec![Recipient {
                address: self.env.mail_from.clone(),
                orcpt: None,
                notify: 0,
                route: String::new(),
                transport: String::new(),
            }],
        };
        let Some((route, transport)) = (self.router)(&env) else {
            tracing::warn!(queue_id = %self.env.id, to = %self.env.mail_from,
                "no route for the sender's domain: {kind:?} notification not sent");
            return;
        };
        env.recipients[0].route = route;
        env.recipients[0].transport = transport;
        let mut state = State::new(1);
        state.next_attempt = now_ms();
        let received = format!(
            "Received: by {} (passerelle) id {}; {}\r\n",
            self.hostname,
            dsn_id,
            dsn::rfc5322_date(now)
        );
        let mut full = received.into_bytes();
        full.extend_from_slice(&msg);
        let full = Arc::new(full);
        match self.spool.store(&env, &state, full.clone()).await {
            Ok(loc) => {
                tracing::info!(queue_id = %self.env.id, dsn_id = %dsn_id, to = %self.env.mail_from, "sender notification ({kind:?}) queued");
                crate::journal::dsn_queued(&self.env, rcpts, &env, &format!("{kind:?}"), &full);
                self.queue.submit(env, state, loc, Some(full));
            }
            Err(e) => {
                tracing::error!(queue_id = %self.env.id, error = %e, "cannot queue {kind:?} notification")
            }
        }
    }
}

fn metric_delivery(transport: &str, result: &str) {
    crate::metrics::inc(
        "passerelle_deliveries_total",
        "delivery attempts per recipient, by transport and result",
        &[("transport", transport), ("result", result)],
    );
}

/// "host NAME[ip]:port said: ..." -> NAME
fn remote_host(diag: &str) -> Option<String> {
    let rest = diag.strip_prefix("host ")?;
    let name = rest.split(['[', ' ']).next()?;
    (!name.is_empty()).then(|| name.to_string())
}
