//! The scheduler: keeps every live message in memory ordered by its next attempt, starts
//! deliveries within the global limit, and applies what [`attempt::decide`] says of their
//! outcomes: retry per `[queue].retry`, bounce at `lifetime`, one delay warning at
//! `delay_warning`, notifications as the sender asked.
//!
//! The scheduler task only touches memory. Each delivery task persists its own result (the
//! spool's group commit then batches many results per fsync) before reporting back.

mod job;
use super::spool::{BodyLoc, Spool};
use super::Queue;
use crate::config::QueueConfig;
use crate::delivery::Transport;
use crate::dsn::ReturnPath;
use crate::message::{Envelope, State};
use crate::util::clock::now_ms;
use job::*;
use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, oneshot, Semaphore};

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
    /// The sending establishment (`queue list --establishment`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub establishment: Option<String>,
}

#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct QueueRcpt {
    pub address: String,
    pub status: String,
    pub last_error: Option<String>,
    /// The transport intake chose (`establishment:NAME` for an establishment's mailbox): who
    /// the console shows an inbound message to.
    #[serde(default)]
    pub transport: String,
}

/// Why an administrator's request could not be done.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum QueueError {
    #[error("{0}: no such message")]
    NotFound(String),
    #[error("{0}: delivery in progress, try again")]
    Busy(String),
    #[error("{0}: cannot record the change: {1}")]
    Storage(String, String),
    #[error("the queue manager is not running")]
    Stopped,
}

/// What the scheduler uses of a config snapshot; replaced on reload.
#[derive(Debug, Clone)]
pub struct SchedulerConfig {
    pub queue: QueueConfig,
    /// Our name in DSNs and their Received header.
    pub hostname: String,
}

enum Command {
    /// A message just stored (by intake, or a notification).
    New {
        envelope: Box<Envelope>,
        state: State,
        body: BodyLoc,
        /// The body still in memory, for the first attempt.
        mem: Option<InMemory>,
    },
    List(oneshot::Sender<Vec<QueueItem>>),
    Show(String, oneshot::Sender<Option<QueueItem>>),
    Locate(String, oneshot::Sender<Option<BodyLoc>>),
    Detail(String, oneshot::Sender<Option<MessageDetail>>),
    Stats(oneshot::Sender<QueueStats>),
    /// How many messages of one establishment are queued (its `max_queued`).
    Queued(String, oneshot::Sender<usize>),
    /// Retry now: one id, or all when `None`.
    Retry(Option<String>, oneshot::Sender<Result<usize, QueueError>>),
    Hold(String, bool, oneshot::Sender<Result<(), QueueError>>),
    Delete(String, oneshot::Sender<Result<(), QueueError>>),
    Reconfigure(SchedulerConfig),
    Shutdown(oneshot::Sender<()>),
}

/// One message as the console's message page shows it: its row, its whole envelope (client,
/// HELO, listener, each recipient's route and transport) and where its content is in the spool
/// (the console reads the header section only).
#[derive(Debug, Clone)]
pub struct MessageDetail {
    pub item: QueueItem,
    pub envelope: Arc<Envelope>,
    pub body: BodyLoc,
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

/// Handle used by intake, the admin side and the CLI.
#[derive(Clone)]
pub struct QueueHandle {
    tx: mpsc::UnboundedSender<Command>,
}

impl QueueHandle {
    pub(super) fn submit(
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

    async fn ask<T>(
        &self,
        make: impl FnOnce(oneshot::Sender<T>) -> Command,
    ) -> Result<T, QueueError> {
        let (tx, rx) = oneshot::channel();
        self.tx.send(make(tx)).map_err(|_| QueueError::Stopped)?;
        rx.await.map_err(|_| QueueError::Stopped)
    }

    pub async fn list(&self) -> Vec<QueueItem> {
        self.ask(Command::List).await.unwrap_or_default()
    }
    pub async fn show(&self, id: &str) -> Option<QueueItem> {
        self.ask(|tx| Command::Show(id.to_string(), tx))
            .await
            .ok()
            .flatten()
    }
    /// Where a message's bytes are in the spool (`queue show --headers/--body`).
    pub async fn locate(&self, id: &str) -> Option<BodyLoc> {
        self.ask(|tx| Command::Locate(id.to_string(), tx))
            .await
            .ok()
            .flatten()
    }
    /// One message with its envelope, for the console's message page.
    pub async fn detail(&self, id: &str) -> Option<MessageDetail> {
        self.ask(|tx| Command::Detail(id.to_string(), tx))
            .await
            .ok()
            .flatten()
    }
    /// Messages of establishment `name` in the queue (0 when the queue manager is stopped).
    pub async fn queued_for(&self, name: &str) -> usize {
        self.ask(|tx| Command::Queued(name.to_string(), tx))
            .await
            .unwrap_or_default()
    }

    pub async fn stats(&self) -> QueueStats {
        self.ask(Command::Stats).await.unwrap_or_default()
    }
    /// Attempts now (one message, or all with `None`), ending the rest period of their
    /// destinations; returns how many messages were scheduled.
    pub async fn retry(&self, id: Option<&str>) -> Result<usize, QueueError> {
        self.ask(|tx| Command::Retry(id.map(String::from), tx))
            .await?
    }
    pub async fn hold(&self, id: &str) -> Result<(), QueueError> {
        self.ask(|tx| Command::Hold(id.to_string(), true, tx))
            .await?
    }
    /// Releases a held message for an attempt now.
    pub async fn release(&self, id: &str) -> Result<(), QueueError> {
        self.ask(|tx| Command::Hold(id.to_string(), false, tx))
            .await?
    }
    pub async fn delete(&self, id: &str) -> Result<(), QueueError> {
        self.ask(|tx| Command::Delete(id.to_string(), tx)).await?
    }
    /// A reload's queue settings: the global delivery limit is resized at once.
    pub fn reconfigure(&self, cfg: SchedulerConfig) {
        let _ = self.tx.send(Command::Reconfigure(cfg));
    }
    /// Stops starting deliveries and waits for those in flight.
    pub async fn shutdown(&self) {
        let _ = self.ask(Command::Shutdown).await;
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
struct InMemory(Arc<Vec<u8>>);

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
    queue: Queue,
    spool: Spool,
    transport: Arc<dyn Transport>,
    return_path: Arc<dyn ReturnPath>,
    config: Arc<SchedulerConfig>,
    /// Messages per sending establishment, kept with `entries` (a `max_queued` check at
    /// every MAIL must not walk the queue).
    per_establishment: HashMap<String, usize>,
    permits: Arc<Semaphore>,
    permits_size: usize,
}

impl Scheduler {
    /// Starts the scheduler task over the `recovered` messages; returns the queue (the way
    /// in) and its handle.
    pub fn start(
        spool: Spool,
        transport: Arc<dyn Transport>,
        return_path: Arc<dyn ReturnPath>,
        config: SchedulerConfig,
        recovered: Vec<super::spool::Recovered>,
    ) -> Queue {
        let (tx, rx) = mpsc::unbounded_channel();
        let handle = QueueHandle { tx };
        let max = config.queue.max_deliveries;
        let mut s = Scheduler {
            entries: HashMap::with_capacity(recovered.len()),
            heap: BinaryHeap::with_capacity(recovered.len()),
            queue: Queue::new(spool.clone(), handle.clone()),
            spool,
            transport,
            return_path,
            config: Arc::new(config),
            per_establishment: HashMap::new(),
            permits: Arc::new(Semaphore::new(max)),
            permits_size: max,
        };
        for r in recovered {
            s.insert(r.envelope, r.state, r.body, None);
        }
        let queue = s.queue.clone();
        tokio::spawn(s.run(rx));
        queue
    }

    fn insert(&mut self, env: Envelope, state: State, body: BodyLoc, mem: Option<InMemory>) {
        let id = env.id.clone();
        if let Some(e) = &env.establishment {
            *self.per_establishment.entry(e.clone()).or_default() += 1;
        }
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
                // A permit freed by a finished delivery also wakes this loop (done_rx).
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
                queue: self.queue.clone(),
                transport: self.transport.clone(),
                return_path: self.return_path.clone(),
                config: self.config.clone(),
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
                self.remove(&f.id);
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
            Command::Locate(id, reply) => {
                let _ = reply.send(self.entries.get(&id).map(|e| e.body));
            }
            Command::Detail(id, reply) => {
                let _ = reply.send(self.entries.get(&id).map(|e| MessageDetail {
                    item: item(e),
                    envelope: e.env.clone(),
                    body: e.body,
                }));
            }
            Command::Queued(name, reply) => {
                let _ = reply.send(self.per_establishment.get(&name).copied().unwrap_or(0));
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
                let _ = reply.send(self.retry(id));
            }
            Command::Hold(id, held, reply) => self.set_held(id, held, reply),
            Command::Delete(id, reply) => {
                let r = match self.entries.get(&id) {
                    None => Err(QueueError::NotFound(id)),
                    Some(e) if e.running => Err(QueueError::Busy(id)),
                    Some(_) => {
                        let e = self.remove(&id).map(|e| e.body);
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
            Command::Reconfigure(cfg) => {
                let want = cfg.queue.max_deliveries;
                crate::delivery::resize_semaphore(&self.permits, &mut self.permits_size, want);
                self.config = Arc::new(cfg);
            }
            Command::Shutdown(_) => {}
        }
    }

    /// Takes a message out of the table, and out of its establishment's count.
    fn remove(&mut self, id: &str) -> Option<Entry> {
        let e = self.entries.remove(id)?;
        if let Some(name) = &e.env.establishment {
            if let Some(n) = self.per_establishment.get_mut(name) {
                *n = n.saturating_sub(1);
                if *n == 0 {
                    self.per_establishment.remove(name);
                }
            }
        }
        Some(e)
    }

    /// Postfix's `postqueue -f` / `-i`: due now, and their destinations no longer resting.
    fn retry(&mut self, id: Option<String>) -> Result<usize, QueueError> {
        let now = now_ms();
        let ids: Vec<String> = match id {
            Some(id) if self.entries.contains_key(&id) => vec![id],
            Some(id) => return Err(QueueError::NotFound(id)),
            None => {
                self.transport.revive(None);
                self.entries.keys().cloned().collect()
            }
        };
        let mut n = 0;
        for id in ids {
            let Some(e) = self.entries.get_mut(&id) else {
                continue;
            };
            if e.running || e.state.held {
                continue;
            }
            self.transport.revive(Some(&e.env));
            e.state.next_attempt = now;
            self.heap.push(Reverse((now, id)));
            n += 1;
        }
        Ok(n)
    }

    fn set_held(&mut self, id: String, held: bool, reply: oneshot::Sender<Result<(), QueueError>>) {
        let Some(e) = self.entries.get_mut(&id) else {
            let _ = reply.send(Err(QueueError::NotFound(id)));
            return;
        };
        if e.running {
            let _ = reply.send(Err(QueueError::Busy(id)));
            return;
        }
        e.state.held = held;
        if !held {
            self.transport.revive(Some(&e.env));
            e.state.next_attempt = now_ms();
            self.heap.push(Reverse((e.state.next_attempt, id.clone())));
        }
        let (spool, state) = (self.spool.clone(), e.state.clone());
        tokio::spawn(async move {
            let r = spool
                .update(&id, &state)
                .await
                .map_err(|e| QueueError::Storage(id.clone(), e.to_string()));
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
            establishment: env.establishment.clone(),
            recipients: env
                .recipients
                .iter()
                .zip(&state.rcpts)
                .map(|(r, s)| QueueRcpt {
                    address: r.address.clone(),
                    status: format!("{:?}", s.status).to_lowercase(),
                    last_error: s.last.as_ref().map(|f| f.to_string()),
                    transport: r.transport.clone(),
                })
                .collect(),
        }
    }
}

#[cfg(test)]
#[path = "scheduler_tests.rs"]
mod tests;
