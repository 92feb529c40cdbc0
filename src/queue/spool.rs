//! The durable spool: an append-only log of segment files with group commit.
//!
//! Why a log and not a file per message: the disk does about 3,000 fsync/s, and the target is
//! thousands of messages per second with an fsync before every 250. Two threads pipeline the
//! work: the writer appends every record that arrived (one `write` per batch) and hands the
//! batch to the syncer, which issues one `fdatasync` covering everything written so far and
//! only then acknowledges the stored messages. While it syncs, the writer keeps appending, so
//! many messages share one flush. Updates and removals are acknowledged once written: a written
//! record survives the process being killed, and the next flush of a store (or the kernel's
//! writeback) makes it durable: losing one to a power cut costs a duplicate delivery, never a
//! message, so they do not pay for an fdatasync of their own.
//!
//! Layout: `SPOOL/queue/NNNNNNNNNNNNNNNNNNNN.seg`, each a sequence of records
//! `magic "PSR1" | kind u8 | 3 zero bytes | len u32 LE | crc32 u32 LE | payload`.
//! Kinds: a stored message (envelope, state, body), a state update, a removal. Recovery replays
//! all segments in order. A torn record at the tail of the last segment (a crash mid-write,
//! never acknowledged) is truncated away; a corrupt record anywhere else is copied to
//! `SPOOL/quarantine/` and skipped (the magic lets the scan find the next record).
//!
//! The head segment is filled with zeros a little ahead of its end, and records overwrite
//! them: on ext4 an fdatasync after appending must also commit the block allocation and the
//! file size through the filesystem's journal (and, since 5.6, convert "unwritten" extents in
//! a kernel worker), while one over blocks already written is the data and a cache flush:
//! 0.08 ms against 0.14 ms, and half the CPU, per flush on the reference VM. Recovery reads
//! zeros from where a record should start to the end of a segment, or up to the next record,
//! as unused space; a record cut by zeros is torn or corrupt as before.
//!
//! A segment is deleted once every message stored in it and in all older segments is done,
//! oldest first, so no update record that a live message still needs is ever lost. A full
//! one is recycled instead, up to [`FREE_POOL`] of them: overwritten with zeros, flushed, and
//! kept as `NNN.free` until a rotation renames it to the next head. Freeing 64 MiB and
//! allocating it again costs ext4 block-allocation commits (and, with the `discard` mount
//! option, discards) that the syncer's flushes end up waiting for: measured, the slowest
//! rounds of plain 4 KiB relaying went away with it (`benches/RESULTS.md`). A recycled head
//! is all prepared zeros, blocks already on disk. A message that lives long in the oldest
//! segment is stored again at the head ("relocated") so old segments do not pin the disk.

mod recover;
use crate::message::{Envelope, State};
pub use recover::scan;
use recover::*;
use std::collections::BTreeMap;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Seek, SeekFrom, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{mpsc, Arc};
use tokio::sync::oneshot;

const MAGIC: &[u8; 4] = b"PSR1";
const HEADER: usize = 16;
const KIND_STORE: u8 = 1;
const KIND_UPDATE: u8 = 2;
const KIND_REMOVE: u8 = 3;
/// A new segment is started past this size.
const SEGMENT_TARGET: u64 = 64 * 1024 * 1024;
/// Records larger than this are corrupt by definition (the size limit is far below).
const MAX_RECORD: u32 = 1 << 30;
/// Requests written per fsync at most.
const MAX_BATCH: usize = 4096;
/// Zeros are kept at least this far ahead of the head's end, written a chunk at a time (see
/// [`Writer::prepare_ahead`]): a segment takes at most `ZERO_AHEAD + ZERO_CHUNK` more bytes
/// than its records.
const ZERO_AHEAD: u64 = 1 << 20;
const ZERO_CHUNK: u64 = 1 << 20;
/// Finished full segments kept as zeros for the next heads: two cover a rotation while the
/// previous one is still being zeroed. At most 2 x ~66 MiB of disk held in advance.
const FREE_POOL: usize = 2;
/// A finished segment is recycled only if its size is a normal full one (a small segment
/// left by a restart, or one a huge last batch made much larger, is deleted).
const RECYCLE_MIN: u64 = SEGMENT_TARGET;
const RECYCLE_MAX: u64 = SEGMENT_TARGET + 8 * ZERO_CHUNK;

#[derive(Debug, thiserror::Error)]
pub enum SpoolError {
    #[error("spool {path}: {source}")]
    Io {
        path: String,
        #[source]
        source: io::Error,
    },
    #[error("spool {0} is locked by another passerelle process")]
    Locked(String),
    #[error("spool write failed: {0}")]
    Write(String),
    #[error("spool writer stopped")]
    Stopped,
}

impl SpoolError {
    /// ENOSPC/EDQUOT are "insufficient storage" (452); the rest are local errors (451).
    pub fn is_full(&self) -> bool {
        match self {
            SpoolError::Write(s) => s.contains("No space") || s.contains("quota"),
            SpoolError::Io { source, .. } => {
                matches!(
                    source.raw_os_error(),
                    Some(libc::ENOSPC) | Some(libc::EDQUOT)
                )
            }
            _ => false,
        }
    }
}

fn io_err(path: &Path) -> impl Fn(io::Error) -> SpoolError + '_ {
    move |source| SpoolError::Io {
        path: path.display().to_string(),
        source,
    }
}

/// Where a message's body lives.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BodyLoc {
    pub segment: u64,
    pub offset: u64,
    pub len: u64,
}

/// A message found by recovery.
#[derive(Debug, Clone)]
pub struct Recovered {
    pub envelope: Envelope,
    pub state: State,
    pub body: BodyLoc,
}

#[derive(Debug, Default)]
pub struct RecoveryReport {
    pub segments: usize,
    pub messages: usize,
    pub quarantined: usize,
    pub truncated_bytes: u64,
    /// Zeros skipped between records: prepared space a power cut left unwritten before
    /// records that were written. Nothing in it was acknowledged; shown so it is not silent.
    pub skipped_zero_bytes: u64,
}

enum Op {
    Store {
        envelope: Vec<u8>,
        state: Vec<u8>,
        body: Arc<Vec<u8>>,
        /// The previous home when relocating.
        replaces: Option<u64>,
        done: oneshot::Sender<Result<BodyLoc, String>>,
    },
    Update {
        state: Vec<u8>,
        done: oneshot::Sender<Result<(), String>>,
    },
    Remove {
        id: String,
        home: u64,
        done: oneshot::Sender<Result<(), String>>,
    },
}

/// Handle to the spool; cheap to clone.
#[derive(Clone)]
pub struct Spool {
    tx: mpsc::Sender<Op>,
    queue_dir: PathBuf,
    /// Oldest segment still on disk, kept by the writer (relocation decisions).
    oldest: Arc<AtomicU64>,
    head: Arc<AtomicU64>,
}

fn segment_path(dir: &Path, n: u64) -> PathBuf {
    dir.join(format!("{n:020}.seg"))
}

fn list_segments(dir: &Path) -> io::Result<Vec<u64>> {
    let mut v = Vec::new();
    for e in fs::read_dir(dir)? {
        let name = e?.file_name();
        let name = name.to_string_lossy();
        if let Some(n) = name
            .strip_suffix(".seg")
            .and_then(|s| s.parse::<u64>().ok())
        {
            v.push(n);
        }
    }
    v.sort_unstable();
    Ok(v)
}

/// When run as root on a spool owned by another user (a queue verb on a stopped server),
/// files we create are given to the spool's owner so `serve` can still write them.
fn match_owner(dir: &Path, file: &File) {
    use std::os::unix::fs::MetadataExt;
    use std::os::unix::io::AsRawFd;
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return;
    }
    if let Ok(m) = fs::metadata(dir) {
        if m.uid() != 0 {
            // SAFETY: the descriptor is open for the duration of the call.
            let _ = unsafe { libc::fchown(file.as_raw_fd(), m.uid(), m.gid()) };
        }
    }
}

/// Deletes a finished segment, shrinking it a few MiB at a time first. Freeing 64 MiB in
/// one unlink took ext4 ~95 ms (more with online discard), and the syncer's fdatasync waited
/// for all of it: every 250 stalled. In steps, a flush waits for one step at most.
///
/// The segment is first renamed out of the queue's sight (`.del`): a crash in the middle
/// must not leave a cut `.seg` that recovery would take for corruption. Leftover `.del` files
/// are deleted at the next start.
fn remove_segment(path: &Path) {
    const STEP: u64 = 2 << 20;
    let mut path = path.to_path_buf();
    if path.extension().is_none_or(|e| e != "del") {
        let doomed = path.with_extension("del");
        match fs::rename(&path, &doomed) {
            Ok(()) => path = doomed,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return,
            Err(_) => {} // delete it where it is
        }
    }
    let path = path.as_path();
    if let Ok(f) = OpenOptions::new().write(true).open(path) {
        let mut len = f.metadata().map(|m| m.len()).unwrap_or(0);
        while len > STEP {
            len -= STEP;
            if f.set_len(len).is_err() {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
    }
    match fs::remove_file(path) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => {
            tracing::warn!(path = %path.display(), error = %e, "spool: cannot delete segment")
        }
    }
}

/// Zeroed segments waiting to be the next head (paths of `NNN.free` files).
type FreePool = Arc<std::sync::Mutex<Vec<PathBuf>>>;

fn pool(free: &FreePool) -> std::sync::MutexGuard<'_, Vec<PathBuf>> {
    free.lock().unwrap_or_else(|p| p.into_inner())
}

/// Recycles a finished segment as zeros when it is a full one and the pool has room, else
/// deletes it ([`remove_segment`]). Runs on the reaper thread.
fn recycle_or_remove(path: &Path, free: &FreePool) {
    let full = fs::metadata(path).is_ok_and(|m| (RECYCLE_MIN..=RECYCLE_MAX).contains(&m.len()));
    if full && pool(free).len() < FREE_POOL {
        match zero_segment(path) {
            Ok(p) => {
                pool(free).push(p);
                return;
            }
            Err(e) => {
                tracing::warn!(path = %path.display(), error = %e, "spool: cannot recycle a segment; deleted")
            }
        }
    }
    // A recycling that failed half-way left the segment as `.del`.
    match path.exists() {
        true => remove_segment(path),
        false => remove_segment(&path.with_extension("del")),
    }
}

/// Overwrites a finished segment with zeros and names it `NNN.free`. Order matters for a
/// power cut: the segment leaves the queue's sight (`.del`, directory flushed) before the
/// first zero is written, since a half-zeroed `.seg` would let recovery replay the stores
/// whose removals were zeroed; it is named `.free` only once the zeros are flushed, so a head
/// taken from the pool never shows an old record. A cut in between leaves a `.del`, which
/// the next start recycles or deletes. The zeros go out 1 MiB at a time, each flushed with a
/// pause after it, so a flush of the syncer waits behind 1 MiB of writeback at most (8 MiB
/// steps measured a little worse at p99 and p99.9: `benches/RESULTS.md`).
fn zero_segment(path: &Path) -> io::Result<PathBuf> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let doomed = path.with_extension("del");
    if path != doomed {
        fs::rename(path, &doomed)?;
    }
    fsync_dir(dir)?;
    let f = OpenOptions::new().write(true).open(&doomed)?;
    let len = f.metadata()?.len();
    static ZEROS: [u8; ZERO_CHUNK as usize] = [0; ZERO_CHUNK as usize];
    let mut at = 0u64;
    while at < len {
        let n = (len - at).min(ZERO_CHUNK);
        f.write_all_at(&ZEROS[..n as usize], at)?;
        at += n;
        f.sync_data()?;
        if at < len {
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
    }
    let free = doomed.with_extension("free");
    fs::rename(&doomed, &free)?;
    Ok(free)
}

fn fsync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

fn encode(kind: u8, payload_parts: &[&[u8]], out: &mut Vec<u8>) {
    encode_header(kind, payload_parts, out);
    for p in payload_parts {
        out.extend_from_slice(p);
    }
}

/// The record header for a payload made of `payload_parts` (their length and CRC).
fn encode_header(kind: u8, payload_parts: &[&[u8]], out: &mut Vec<u8>) {
    let len: usize = payload_parts.iter().map(|p| p.len()).sum();
    let mut crc = crc32fast::Hasher::new();
    for p in payload_parts {
        crc.update(p);
    }
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&[kind, 0, 0, 0]);
    out.extend_from_slice(&(len as u32).to_le_bytes());
    out.extend_from_slice(&crc.finalize().to_le_bytes());
}

/// Writes `bufs` whole with writev, IOV_MAX slices at a time (std's `write_all_vectored`
/// is not stable yet).
fn write_all_vectored(mut f: &File, mut bufs: &mut [io::IoSlice<'_>]) -> io::Result<()> {
    const IOV_MAX: usize = 1024;
    while !bufs.is_empty() {
        let n = bufs.len().min(IOV_MAX);
        match f.write_vectored(&bufs[..n]) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(written) => io::IoSlice::advance_slices(&mut bufs, written),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

impl Spool {
    /// Locks the spool, recovers it (repairing torn tails, quarantining corrupt records) and
    /// starts the writer thread. Returns the live messages in id (arrival) order.
    pub fn open(spool_dir: &Path) -> Result<(Spool, Vec<Recovered>, RecoveryReport), SpoolError> {
        let qdir = spool_dir.join("queue");
        fs::create_dir_all(&qdir).map_err(io_err(&qdir))?;
        let lock_path = spool_dir.join("lock");
        let lock = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .map_err(io_err(&lock_path))?;
        match_owner(spool_dir, &lock);
        if lock.try_lock().is_err() {
            return Err(SpoolError::Locked(spool_dir.display().to_string()));
        }
        let (msgs, report, counts) = recover(spool_dir, true)?;

        // Always start a fresh head segment: never append after a repaired tail.
        let head = counts.keys().next_back().map_or(1, |n| n + 1);
        let oldest = Arc::new(AtomicU64::new(head));
        let head_n = Arc::new(AtomicU64::new(head));
        let writer = Writer::new(
            qdir.clone(),
            head,
            counts,
            lock,
            oldest.clone(),
            head_n.clone(),
        )?;
        // Finished segments left from before are deleted by the writer's reaper once it runs,
        // not here: startup (and the listeners) need not wait for them.
        let (tx, rx) = mpsc::channel();
        std::thread::Builder::new()
            .name("spool-writer".into())
            .spawn(move || writer.run(rx))
            .map_err(io_err(spool_dir))?;
        Ok((
            Spool {
                tx,
                queue_dir: qdir,
                oldest,
                head: head_n,
            },
            msgs,
            report,
        ))
    }

    /// Stores a new message durably; returns once it is fsync'd. The body buffer is shared,
    /// not copied, so the scheduler can deliver it without reading it back.
    pub async fn store(
        &self,
        env: &Envelope,
        state: &State,
        body: Arc<Vec<u8>>,
    ) -> Result<BodyLoc, SpoolError> {
        self.store_inner(env, state, body, None).await
    }

    /// Stores a message again at the head so its old segment can be reclaimed.
    pub async fn relocate(
        &self,
        env: &Envelope,
        state: &State,
        body: Arc<Vec<u8>>,
        old: BodyLoc,
    ) -> Result<BodyLoc, SpoolError> {
        self.store_inner(env, state, body, Some(old.segment)).await
    }

    async fn store_inner(
        &self,
        env: &Envelope,
        state: &State,
        body: Arc<Vec<u8>>,
        replaces: Option<u64>,
    ) -> Result<BodyLoc, SpoolError> {
        let envelope = serde_json::to_vec(env).map_err(|e| SpoolError::Write(e.to_string()))?;
        let state = serde_json::to_vec(state).map_err(|e| SpoolError::Write(e.to_string()))?;
        let (done, rx) = oneshot::channel();
        self.tx
            .send(Op::Store {
                envelope,
                state,
                body,
                replaces,
                done,
            })
            .map_err(|_| SpoolError::Stopped)?;
        rx.await
            .map_err(|_| SpoolError::Stopped)?
            .map_err(SpoolError::Write)
    }

    pub async fn update(&self, id: &str, state: &State) -> Result<(), SpoolError> {
        let rec = UpdateRec {
            id: id.to_string(),
            state: state.clone(),
        };
        let state = serde_json::to_vec(&rec).map_err(|e| SpoolError::Write(e.to_string()))?;
        let (done, rx) = oneshot::channel();
        self.tx
            .send(Op::Update { state, done })
            .map_err(|_| SpoolError::Stopped)?;
        rx.await
            .map_err(|_| SpoolError::Stopped)?
            .map_err(SpoolError::Write)
    }

    pub async fn remove(&self, id: &str, home: BodyLoc) -> Result<(), SpoolError> {
        let (done, rx) = oneshot::channel();
        self.tx
            .send(Op::Remove {
                id: id.to_string(),
                home: home.segment,
                done,
            })
            .map_err(|_| SpoolError::Stopped)?;
        rx.await
            .map_err(|_| SpoolError::Stopped)?
            .map_err(SpoolError::Write)
    }

    /// Reads a body (blocking: call from `spawn_blocking`).
    pub fn read_body(&self, loc: BodyLoc) -> Result<Vec<u8>, SpoolError> {
        read_body(&self.queue_dir, loc)
    }

    pub fn queue_dir(&self) -> &Path {
        &self.queue_dir
    }

    /// True when a message stored at `loc` pins the oldest segment (and is not at the head):
    /// storing it again lets that segment go.
    pub fn should_relocate(&self, loc: BodyLoc) -> bool {
        loc.segment == self.oldest.load(Ordering::Relaxed)
            && loc.segment != self.head.load(Ordering::Relaxed)
    }
}

/// Reads a stored message given the spool directory (what [`scan`] and `serve` are given).
pub fn read_stored(spool_dir: &Path, loc: BodyLoc) -> Result<Vec<u8>, SpoolError> {
    read_body(&spool_dir.join("queue"), loc)
}

pub fn read_body(queue_dir: &Path, loc: BodyLoc) -> Result<Vec<u8>, SpoolError> {
    let path = segment_path(queue_dir, loc.segment);
    let f = File::open(&path).map_err(io_err(&path))?;
    let mut buf = vec![0u8; loc.len as usize];
    f.read_exact_at(&mut buf, loc.offset)
        .map_err(io_err(&path))?;
    Ok(buf)
}

/// Stored messages waiting for the flush that makes them durable.
struct SyncJob {
    file: Arc<File>,
    stores: Vec<(oneshot::Sender<Result<BodyLoc, String>>, BodyLoc)>,
}

/// The syncer: flushes what the writer wrote, then acknowledges the messages it covers.
fn syncer(rx: mpsc::Receiver<SyncJob>) {
    while let Ok(first) = rx.recv() {
        let mut jobs = vec![first];
        while let Ok(j) = rx.try_recv() {
            jobs.push(j);
        }
        // One flush per distinct file (a rotation may have happened in between).
        let mut flushed: Vec<(*const File, Result<(), String>)> = Vec::new();
        for job in jobs {
            let key = Arc::as_ptr(&job.file);
            let result = match flushed.iter().find(|(k, _)| *k == key) {
                Some((_, r)) => r.clone(),
                None => {
                    let r = job.file.sync_data().map_err(|e| e.to_string());
                    if let Err(e) = &r {
                        tracing::error!(error = %e, "spool: fsync failed; messages refused");
                    }
                    flushed.push((key, r.clone()));
                    r
                }
            };
            for (done, loc) in job.stores {
                let _ = done.send(result.clone().map(|_| loc));
            }
        }
    }
}

/// The single writer: owns the head segment and the per-segment live counts.
struct Writer {
    dir: PathBuf,
    head: u64,
    file: Arc<File>,
    size: u64,
    /// The head holds zeros written up to here (past `size`; on disk once the next flush ran).
    prepared: u64,
    /// After a failed zero fill (a full disk), not tried again before the head reaches this.
    zero_retry_at: u64,
    /// Live messages whose latest copy is in each segment.
    counts: BTreeMap<u64, usize>,
    _lock: File,
    oldest: Arc<AtomicU64>,
    head_shared: Arc<AtomicU64>,
    /// Deletes finished segments in the background once `run` starts: unlinking a 64 MiB
    /// file takes ext4 ~90 ms, and on this thread it stalled every write (and every 250).
    reaper: Option<mpsc::Sender<PathBuf>>,
    /// Zeroed segments for the next rotations, filled by the reaper.
    free: FreePool,
}

impl Writer {
    fn new(
        dir: PathBuf,
        head: u64,
        mut counts: BTreeMap<u64, usize>,
        lock: File,
        oldest: Arc<AtomicU64>,
        head_shared: Arc<AtomicU64>,
    ) -> Result<Writer, SpoolError> {
        let path = segment_path(&dir, head);
        // Not O_APPEND: records are written at the writer's own offset, over prepared zeros.
        let file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(io_err(&path))?;
        match_owner(&dir, &file);
        fsync_dir(&dir).map_err(io_err(&dir))?;
        counts.insert(head, 0);
        Ok(Writer {
            dir,
            head,
            file: Arc::new(file),
            size: 0,
            prepared: 0,
            zero_retry_at: 0,
            counts,
            _lock: lock,
            oldest,
            head_shared,
            reaper: None,
            free: FreePool::default(),
        })
    }

    fn run(mut self, rx: mpsc::Receiver<Op>) {
        let mut buf = Vec::with_capacity(1 << 20);
        let (sync_tx, sync_rx) = mpsc::channel();
        let sync_thread = std::thread::Builder::new()
            .name("spool-sync".into())
            .spawn(move || syncer(sync_rx));
        if let Err(e) = &sync_thread {
            tracing::error!(error = %e, "spool: cannot start the sync thread");
        }
        let (reap_tx, reap_rx) = mpsc::channel::<PathBuf>();
        let free = self.free.clone();
        let reaper = std::thread::Builder::new()
            .name("spool-reaper".into())
            .spawn(move || {
                for path in reap_rx {
                    recycle_or_remove(&path, &free);
                }
            });
        match &reaper {
            Ok(_) => self.reaper = Some(reap_tx),
            Err(e) => {
                tracing::warn!(error = %e, "spool: no reaper thread; segments deleted inline")
            }
        }
        // Segments whose deletion or recycling a crash interrupted; zeroed ones from before
        // (flushed before they were named `.free`) go back to the pool, the surplus is deleted.
        if let Ok(dir) = fs::read_dir(&self.dir) {
            let mut found: Vec<PathBuf> = dir.flatten().map(|e| e.path()).collect();
            found.sort();
            for p in found {
                if p.extension().is_some_and(|x| x == "del") {
                    self.reap(p);
                } else if p.extension().is_some_and(|x| x == "free") {
                    let mut free = pool(&self.free);
                    if free.len() < FREE_POOL {
                        free.push(p);
                    } else {
                        drop(free);
                        remove_segment(&p);
                    }
                }
            }
        }
        self.collect_garbage();
        while let Ok(first) = rx.recv() {
            let mut batch = vec![first];
            while batch.len() < MAX_BATCH {
                match rx.try_recv() {
                    Ok(op) => batch.push(op),
                    Err(_) => break,
                }
            }
            self.write_batch(batch, &mut buf, &sync_tx);
            if self.size >= SEGMENT_TARGET {
                if let Err(e) = self.rotate() {
                    tracing::error!(error = %e, "spool: cannot start a new segment");
                }
            }
            self.collect_garbage();
        }
        // Let the syncer acknowledge what is pending before the lock is released, and make
        // the last updates and removals durable too.
        drop(sync_tx);
        if let Ok(t) = sync_thread {
            let _ = t.join();
        }
        let _ = self.file.sync_data();
        self.reaper = None;
        if let Ok(t) = reaper {
            let _ = t.join();
        }
    }

    fn write_batch(&mut self, batch: Vec<Op>, buf: &mut Vec<u8>, sync: &mpsc::Sender<SyncJob>) {
        buf.clear();
        let start = self.size;
        let mut locs = Vec::with_capacity(batch.len());
        // Bodies are written from where they lie (writev), not copied into `buf`: each is
        // preceded by the part of `buf` up to its mark.
        let mut bodies: Vec<(usize, &[u8])> = Vec::new();
        let mut written = 0u64;
        for op in &batch {
            match op {
                Op::Store {
                    envelope,
                    state,
                    body,
                    ..
                } => {
                    let el = (envelope.len() as u32).to_le_bytes();
                    let sl = (state.len() as u32).to_le_bytes();
                    let parts: [&[u8]; 5] = [&el, envelope, &sl, state, body.as_slice()];
                    let rec_start = start + buf.len() as u64 + written;
                    encode_header(KIND_STORE, &parts, buf);
                    for p in &parts[..4] {
                        buf.extend_from_slice(p);
                    }
                    bodies.push((buf.len(), body.as_slice()));
                    written += body.len() as u64;
                    let body_len = body.len();
                    let body_off = rec_start + (HEADER + 8 + envelope.len() + state.len()) as u64;
                    locs.push(Some(BodyLoc {
                        segment: self.head,
                        offset: body_off,
                        len: body_len as u64,
                    }));
                }
                Op::Update { state, .. } => {
                    encode(KIND_UPDATE, &[state], buf);
                    locs.push(None);
                }
                Op::Remove { id, .. } => {
                    encode(KIND_REMOVE, &[id.as_bytes()], buf);
                    locs.push(None);
                }
            }
        }
        let mut slices = Vec::with_capacity(2 * bodies.len() + 1);
        let mut from = 0;
        for (mark, body) in &bodies {
            slices.push(io::IoSlice::new(&buf[from..*mark]));
            slices.push(io::IoSlice::new(body));
            from = *mark;
        }
        slices.push(io::IoSlice::new(&buf[from..]));
        slices.retain(|s| !s.is_empty());
        let result = write_all_vectored(&self.file, &mut slices).map_err(|e| e.to_string());
        drop(slices);
        drop(bodies);
        if let Err(e) = &result {
            tracing::error!(error = %e, "spool: write failed; batch refused");
            // Drop whatever part of the batch reached the file: it was never acknowledged.
            let _ = self.file.set_len(start);
            let _ = (&*self.file).seek(SeekFrom::Start(start));
            self.prepared = self.prepared.min(start);
        } else {
            self.size += buf.len() as u64 + written;
        }
        let mut job = SyncJob {
            file: self.file.clone(),
            stores: Vec::new(),
        };
        for (op, loc) in batch.into_iter().zip(locs) {
            match (op, &result) {
                (Op::Store { done, replaces, .. }, Ok(())) => {
                    *self.counts.entry(self.head).or_default() += 1;
                    if let Some(old) = replaces {
                        self.decrement(old);
                    }
                    let loc = loc.unwrap_or(BodyLoc {
                        segment: 0,
                        offset: 0,
                        len: 0,
                    });
                    job.stores.push((done, loc));
                }
                (Op::Store { done, .. }, Err(e)) => {
                    let _ = done.send(Err(e.clone()));
                }
                (Op::Update { done, .. }, r) => {
                    let _ = done.send(r.clone());
                }
                (Op::Remove { done, home, .. }, r) => {
                    if r.is_ok() {
                        self.decrement(home);
                    }
                    let _ = done.send(r.clone());
                }
            }
        }
        // Only stores wait for a flush. A batch of updates and removals alone is not flushed
        // for its own sake (that was one fdatasync per delivered message under load): the
        // next store's flush, or the kernel's writeback, makes it durable.
        let stores = !job.stores.is_empty();
        if result.is_ok() && stores {
            if let Err(mpsc::SendError(job)) = sync.send(job) {
                for (done, _) in job.stores {
                    let _ = done.send(Err("spool sync thread stopped".into()));
                }
            }
        }
        // After the batch went to the syncer: the zeros are for the stores to come, and that
        // flush writes them (one flush per chunk pays for the blocks). Not after a batch of
        // updates and removals alone: an offline queue verb would leave a segment of zeros.
        if result.is_ok() && stores {
            self.prepare_ahead();
        }
    }

    /// Keeps `ZERO_AHEAD` bytes of zeros written past the head's end, so that the records to
    /// come overwrite blocks the filesystem already allocated. Written with positional writes:
    /// the file's offset stays where the next record goes. A failure (a full disk) is not an
    /// error: records are then appended as before, and the fill is tried again a chunk later.
    fn prepare_ahead(&mut self) {
        if self.size >= SEGMENT_TARGET || self.size < self.zero_retry_at {
            return;
        }
        self.prepared = self.prepared.max(self.size);
        if self.prepared >= self.size + ZERO_AHEAD {
            return;
        }
        static ZEROS: [u8; ZERO_CHUNK as usize] = [0; ZERO_CHUNK as usize];
        match self.file.write_all_at(&ZEROS, self.prepared) {
            Ok(()) => self.prepared += ZERO_CHUNK,
            Err(e) => {
                tracing::warn!(error = %e, "spool: cannot prepare the head segment ahead (disk full?)");
                self.zero_retry_at = self.size + ZERO_CHUNK;
                // The space held for later heads is given back to the file system.
                for p in std::mem::take(&mut *pool(&self.free)) {
                    remove_segment(&p);
                }
            }
        }
    }

    fn decrement(&mut self, seg: u64) {
        if let Some(c) = self.counts.get_mut(&seg) {
            *c = c.saturating_sub(1);
        }
    }

    fn rotate(&mut self) -> io::Result<()> {
        // The old head is flushed before the writer leaves it: `collect_garbage` flushes only
        // the head it knows, and a relocated copy written here must be durable before the
        // segment it came from may go. Once per segment, so nothing under load.
        self.file.sync_data()?;
        let next = self.head + 1;
        let path = segment_path(&self.dir, next);
        // A recycled segment when there is one: zeros already on disk, nothing to allocate.
        let recycled = pool(&self.free)
            .pop()
            .and_then(|free| match fs::rename(&free, &path) {
                Ok(()) => Some(()),
                Err(e) => {
                    tracing::warn!(path = %free.display(), error = %e, "spool: cannot reuse a recycled segment");
                    remove_segment(&free);
                    None
                }
            })
            .is_some();
        let file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)?;
        match_owner(&self.dir, &file);
        fsync_dir(&self.dir)?;
        let prepared = if recycled { file.metadata()?.len() } else { 0 };
        self.file = Arc::new(file);
        self.head = next;
        self.head_shared.store(next, Ordering::Relaxed);
        self.size = 0;
        self.prepared = prepared;
        self.zero_retry_at = 0;
        self.counts.insert(next, 0);
        Ok(())
    }

    /// Has a finished segment deleted: by the reaper thread, or here if there is none.
    fn reap(&self, path: PathBuf) {
        match &self.reaper {
            Some(r) => {
                if let Err(mpsc::SendError(path)) = r.send(path) {
                    remove_segment(&path);
                }
            }
            None => remove_segment(&path),
        }
    }

    /// Deletes empty segments from the oldest, stopping at the first one still in use.
    ///
    /// The head is flushed first: a segment's count falls when a relocated copy of its
    /// message is *written* at the head, and the syncer may not have flushed that copy yet.
    /// Deleting the old segment before then could lose an acknowledged message to a power cut.
    /// Copies written to an earlier head were flushed by `rotate`. One flush per call that
    /// deletes (every 64 MiB or so) costs nothing.
    fn collect_garbage(&mut self) {
        let mut flushed = false;
        while let Some((&seg, &count)) = self.counts.iter().next() {
            if seg == self.head || count > 0 {
                break;
            }
            if !flushed {
                if let Err(e) = self.file.sync_data() {
                    tracing::error!(error = %e, "spool: cannot flush the head; old segments kept");
                    break;
                }
                flushed = true;
            }
            let path = segment_path(&self.dir, seg);
            // A segment left behind (crash, error) holds only finished messages: recovery
            // replays it harmlessly and it is deleted again then.
            self.reap(path);
            self.counts.remove(&seg);
        }
        if let Some(&first) = self.counts.keys().next() {
            self.oldest.store(first, Ordering::Relaxed);
        }
    }
}

#[cfg(test)]
#[path = "spool_tests.rs"]
mod tests;
