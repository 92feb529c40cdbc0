//! Recovery at start: every segment replayed in order, torn tails cut, corrupt records
//! quarantined, and the queue rebuilt in queue-id order; also `scan`, the read-only walk of
//! `queue` verbs on a stopped spool.

/// Log lines keep the target they had before this code moved here (operators filter on it).
const LOG_TARGET: &str = "passerelle::queue::spool";
use super::*;
use crate::message::{Envelope, State};
use std::collections::{BTreeMap, HashMap};
use std::fs::{self, OpenOptions};
use std::io;
use std::path::Path;
use std::sync::atomic::Ordering;
use std::sync::mpsc;

#[derive(serde::Serialize, serde::Deserialize)]
pub(super) struct UpdateRec {
    pub(super) id: String,
    pub(super) state: State,
}

/// The messages of a spool as recovery finds them, without opening it for writing.
/// Used by `serve` at start and by the `queue` verbs when the server is stopped.
pub fn scan(
    spool_dir: &Path,
    repair: bool,
) -> Result<(Vec<Recovered>, RecoveryReport), SpoolError> {
    let (msgs, report, _) = recover(spool_dir, repair)?;
    Ok((msgs, report))
}

/// One record of a segment, decoded. Short-lived (one per record during recovery, moved
/// into the table at once): the size difference of its variants costs nothing worth a box.
#[allow(clippy::large_enum_variant)]
pub(super) enum Event {
    Store(Recovered),
    Update(UpdateRec),
    Remove(String),
}

/// What one segment holds, decoded, and what was wrong with it.
pub(super) struct SegmentScan {
    pub(super) events: Vec<Event>,
    pub(super) stores: usize,
    pub(super) truncated_bytes: u64,
    pub(super) quarantined: usize,
    /// Zeros skipped between records (a power cut's gap in prepared space).
    pub(super) skipped_zero_bytes: u64,
}

/// The replay of the log: messages in the order their latest copy was stored, and where each
/// live id is in that list. Slots of removed or relocated messages are emptied, not shifted.
#[derive(Default)]
pub(super) struct Replay {
    pub(super) slots: Vec<Option<(Recovered, u64)>>,
    pub(super) index: HashMap<String, usize>,
}

impl Replay {
    pub(super) fn apply(&mut self, ev: Event, seg: u64) {
        match ev {
            Event::Store(r) => {
                let slot = self.slots.len();
                if let Some(old) = self.index.insert(r.envelope.id.clone(), slot) {
                    // Relocated: the newer copy wins.
                    self.slots[old] = None;
                }
                self.slots.push(Some((r, seg)));
            }
            Event::Update(u) => {
                if let Some(&i) = self.index.get(&u.id) {
                    if let Some((r, _)) = &mut self.slots[i] {
                        r.state = u.state;
                    }
                }
            }
            Event::Remove(id) => {
                if let Some(i) = self.index.remove(&id) {
                    self.slots[i] = None;
                }
            }
        }
    }
}

/// Live messages in id order, what recovery found, and live messages per segment.
pub(super) type Recovery = (Vec<Recovered>, RecoveryReport, BTreeMap<u64, usize>);

/// Replays every segment in order; returns the live messages in id (arrival) order, and
/// how many live messages each segment holds.
///
/// Reading, checking and decoding a segment (the costly part: CRCs and JSON) runs on all
/// cores, one segment per thread at a time; the replay stays in segment order on this thread
/// and only moves decoded records into a list. With 1M messages queued this is what bounds
/// the restart time.
pub(super) fn recover(spool_dir: &Path, repair: bool) -> Result<Recovery, SpoolError> {
    let qdir = spool_dir.join("queue");
    let mut report = RecoveryReport::default();
    let segs = match list_segments(&qdir) {
        Ok(s) => s,
        Err(e) if e.kind() == io::ErrorKind::NotFound => Vec::new(),
        Err(e) => return Err(io_err(&qdir)(e)),
    };
    report.segments = segs.len();
    let workers = std::thread::available_parallelism()
        .map_or(2, |n| n.get())
        .min(segs.len())
        .max(1);
    let next = std::sync::atomic::AtomicUsize::new(0);
    let failed = std::sync::atomic::AtomicBool::new(false);
    let (tx, rx) = mpsc::channel::<(usize, Result<SegmentScan, SpoolError>)>();
    let mut outcome: Result<(), SpoolError> = Ok(());
    let mut replay = Replay::default();
    std::thread::scope(|scope| {
        for _ in 0..workers {
            let tx = tx.clone();
            let (next, failed, segs, qdir) = (&next, &failed, &segs, &qdir);
            scope.spawn(move || loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= segs.len() || failed.load(Ordering::Relaxed) {
                    break;
                }
                let last = i + 1 == segs.len();
                let r = scan_segment(spool_dir, qdir, segs[i], last, repair);
                if r.is_err() {
                    failed.store(true, Ordering::Relaxed);
                }
                if tx.send((i, r)).is_err() {
                    break;
                }
            });
        }
        drop(tx);
        // Apply in segment order as results come in; hold the early finishers meanwhile.
        let mut pending: BTreeMap<usize, SegmentScan> = BTreeMap::new();
        let mut want = 0usize;
        for (i, r) in rx {
            match r {
                Ok(scan) => {
                    pending.insert(i, scan);
                }
                Err(e) => {
                    if outcome.is_ok() {
                        outcome = Err(e);
                    }
                    continue;
                }
            }
            while let Some(scan) = pending.remove(&want) {
                report.truncated_bytes += scan.truncated_bytes;
                report.quarantined += scan.quarantined;
                report.skipped_zero_bytes += scan.skipped_zero_bytes;
                replay.slots.reserve(scan.stores);
                replay.index.reserve(scan.stores);
                for ev in scan.events {
                    replay.apply(ev, segs[want]);
                }
                want += 1;
            }
        }
    });
    outcome?;
    let mut counts: BTreeMap<u64, usize> = segs.iter().map(|&s| (s, 0)).collect();
    for (_, home) in replay.slots.iter().flatten() {
        *counts.entry(*home).or_default() += 1;
    }
    drop(replay.index);
    let msgs = in_id_order(replay.slots);
    report.messages = msgs.len();
    Ok((msgs, report, counts))
}

/// The live messages sorted by queue id (arrival order).
///
/// Our ids are 16 upper-case hex digits of a strictly increasing clock, so their value sorts
/// like the string: sorting (value, slot) pairs and then moving each message once is several
/// times faster with a million messages than sorting the messages themselves (each a few
/// hundred bytes moved per step, and a string compare per step).
pub(super) fn in_id_order(mut slots: Vec<Option<(Recovered, u64)>>) -> Vec<Recovered> {
    let keys: Option<Vec<(u64, u32)>> = slots
        .iter()
        .enumerate()
        .filter_map(|(i, s)| s.as_ref().map(|(r, _)| (i, &r.envelope.id)))
        .map(|(i, id)| {
            let hex = id.len() == 16 && id.bytes().all(|b| matches!(b, b'0'..=b'9' | b'A'..=b'F'));
            let slot = u32::try_from(i).ok()?;
            hex.then(|| u64::from_str_radix(id, 16).ok())
                .flatten()
                .map(|k| (k, slot))
        })
        .collect();
    match keys {
        Some(mut keys) => {
            keys.sort_unstable();
            keys.iter()
                .filter_map(|&(_, i)| slots[i as usize].take().map(|(r, _)| r))
                .collect()
        }
        None => {
            // Ids from elsewhere (hand-made spool, another generator): sort the strings.
            let mut msgs: Vec<Recovered> = slots.into_iter().flatten().map(|(r, _)| r).collect();
            msgs.sort_by(|a, b| a.envelope.id.cmp(&b.envelope.id));
            msgs
        }
    }
}

/// Reads one segment and decodes its records, repairing a torn tail (`last` segment only)
/// and quarantining corrupt records when `repair` is set. Zeros from where a record should
/// start to the end, or up to the next valid record, are the writer's prepared space: skipped,
/// not repaired or quarantined.
pub(super) fn scan_segment(
    spool_dir: &Path,
    qdir: &Path,
    seg: u64,
    last: bool,
    repair: bool,
) -> Result<SegmentScan, SpoolError> {
    let path = segment_path(qdir, seg);
    let data = fs::read(&path).map_err(io_err(&path))?;
    let mut out = SegmentScan {
        events: Vec::new(),
        stores: 0,
        truncated_bytes: 0,
        quarantined: 0,
        skipped_zero_bytes: 0,
    };
    let mut pos = 0usize;
    while pos < data.len() {
        match parse_record(&data, pos) {
            Ok((kind, payload, next)) => {
                if let Some(ev) = decode(kind, payload, seg, (pos + HEADER) as u64) {
                    out.stores += usize::from(matches!(ev, Event::Store(_)));
                    out.events.push(ev);
                }
                pos = next;
            }
            Err(()) if data[pos..].iter().all(|&b| b == 0) => {
                // The zeros the writer prepares ahead of the head's end: unused space.
                pos = data.len();
            }
            Err(()) => {
                // Find the next plausible record.
                match find_next_valid(&data, pos + 1) {
                    None if last => {
                        // Torn tail: a write that never got its fsync, never acknowledged.
                        out.truncated_bytes += (data.len() - pos) as u64;
                        if repair {
                            let f = OpenOptions::new()
                                .write(true)
                                .open(&path)
                                .map_err(io_err(&path))?;
                            f.set_len(pos as u64).map_err(io_err(&path))?;
                            f.sync_all().map_err(io_err(&path))?;
                        }
                        tracing::warn!(target: LOG_TARGET, segment = %path.display(), offset = pos, "spool: truncated torn tail");
                        pos = data.len();
                    }
                    Some(end) if data[pos..end].iter().all(|&b| b == 0) => {
                        // Zeros, then records: prepared space whose record never reached the
                        // disk while later ones did (a power cut: page writeback has no order).
                        // Nothing there was acknowledged (a store's 250 follows an fdatasync
                        // of the whole file); there is nothing to keep in quarantine.
                        tracing::warn!(target: LOG_TARGET, segment = %path.display(), offset = pos, bytes = end - pos,
                            "spool: skipped a run of zeros between records");
                        out.skipped_zero_bytes += (end - pos) as u64;
                        pos = end;
                    }
                    other => {
                        let end = other.unwrap_or(data.len());
                        out.quarantined += 1;
                        if repair {
                            quarantine(spool_dir, seg, pos, &data[pos..end]);
                        }
                        tracing::error!(target: LOG_TARGET, segment = %path.display(), offset = pos, bytes = end - pos,
                            "spool: corrupt record quarantined");
                        pos = end;
                    }
                }
            }
        }
    }
    Ok(out)
}

pub(super) fn quarantine(spool_dir: &Path, seg: u64, pos: usize, bytes: &[u8]) {
    let qdir = spool_dir.join("quarantine");
    let path = qdir.join(format!("{seg:020}-{pos}.bad"));
    let r = fs::create_dir_all(&qdir).and_then(|_| fs::write(&path, bytes));
    if let Err(e) = r {
        tracing::error!(target: LOG_TARGET, path = %path.display(), error = %e, "cannot write quarantine file");
    }
}

pub(super) fn parse_record(data: &[u8], pos: usize) -> Result<(u8, &[u8], usize), ()> {
    let h = data.get(pos..pos + HEADER).ok_or(())?;
    if &h[0..4] != MAGIC {
        return Err(());
    }
    let kind = h[4];
    let len = u32::from_le_bytes([h[8], h[9], h[10], h[11]]);
    let crc = u32::from_le_bytes([h[12], h[13], h[14], h[15]]);
    if len > MAX_RECORD || !(KIND_STORE..=KIND_REMOVE).contains(&kind) {
        return Err(());
    }
    let end = pos + HEADER + len as usize;
    let payload = data.get(pos + HEADER..end).ok_or(())?;
    if crc32fast::hash(payload) != crc {
        return Err(());
    }
    Ok((kind, payload, end))
}

pub(super) fn find_next_valid(data: &[u8], from: usize) -> Option<usize> {
    let mut i = from;
    while i + HEADER <= data.len() {
        let rel = data[i..].windows(4).position(|w| w == MAGIC)?;
        i += rel;
        if parse_record(data, i).is_ok() {
            return Some(i);
        }
        i += 1;
    }
    None
}

/// Decodes one record (a record that passed its CRC but does not decode is logged and skipped).
pub(super) fn decode(kind: u8, payload: &[u8], seg: u64, payload_off: u64) -> Option<Event> {
    match kind {
        KIND_STORE => {
            let Some((envelope, state, body_off)) = split_store(payload) else {
                tracing::error!(target: LOG_TARGET, segment = seg, "spool: undecodable message record skipped");
                return None;
            };
            let body = BodyLoc {
                segment: seg,
                offset: payload_off + body_off as u64,
                len: (payload.len() - body_off) as u64,
            };
            Some(Event::Store(Recovered {
                envelope,
                state,
                body,
            }))
        }
        KIND_UPDATE => match serde_json::from_slice::<UpdateRec>(payload) {
            Ok(u) => Some(Event::Update(u)),
            Err(e) => {
                tracing::error!(target: LOG_TARGET, segment = seg, error = %e, "spool: undecodable update skipped");
                None
            }
        },
        KIND_REMOVE => std::str::from_utf8(payload)
            .ok()
            .map(|id| Event::Remove(id.to_string())),
        _ => None,
    }
}

pub(super) fn split_store(p: &[u8]) -> Option<(Envelope, State, usize)> {
    let el = u32::from_le_bytes(p.get(0..4)?.try_into().ok()?) as usize;
    let env: Envelope = serde_json::from_slice(p.get(4..4 + el)?).ok()?;
    let s0 = 4 + el;
    let sl = u32::from_le_bytes(p.get(s0..s0 + 4)?.try_into().ok()?) as usize;
    let state: State = serde_json::from_slice(p.get(s0 + 4..s0 + 4 + sl)?).ok()?;
    Some((env, state, s0 + 4 + sl))
}
