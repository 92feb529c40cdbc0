//! The journal's overflow on disk: while the database cannot take a batch, events go to a
//! durable first-in first-out file under the spool instead of waiting in memory (where they
//! were dropped once `buffer` was full: 3,334 events of 3,000 messages lost in an outage), and
//! are written to the database in order when it returns. A restart while the database is down
//! finds them there.
//!
//! Segments `SPOOL/journal-spill/NNNNNNNNNNNNNNNNNNNN.jsonl`, one event per JSON line, appended
//! and fdatasync'd a batch at a time; the writer reads the oldest segment from the offset kept
//! in `head.pos` (segment and offset, rewritten atomically after each batch the database
//! committed, before drained segments are removed: a crash between the commit and the
//! rewrite writes a batch twice, never loses one). Segment numbers are never reused. Bounded by `journal.spill_max_size`:
//! beyond it events are dropped and counted, and the writer says so in the log and `/readyz`.

use super::event::Event;
use std::fs::{self, File, OpenOptions};
use std::io::{self, BufRead, BufReader, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

/// A segment is closed past this size (or a quarter of the bound, if smaller) and a new one
/// started, so that a drained one can go.
const SEGMENT_SIZE: u64 = 16 << 20;
/// `head.pos`: "SEGMENT OFFSET", the first unread byte; rewritten before drained segments go.
const POS_FILE: &str = "head.pos";

/// What was found in the directory at start.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Found {
    pub events: u64,
    pub bytes: u64,
}

pub struct Spill {
    dir: PathBuf,
    max_size: u64,
    /// Segment numbers, oldest first.
    segments: Vec<u64>,
    /// The next segment's number: never reused, so an old file can never be appended to.
    next_segment: u64,
    /// Where the oldest segment's unread events start.
    head_pos: u64,
    /// Bytes of all segments, read parts included (they go when their segment does).
    bytes: u64,
    /// Lines waiting (parsed or not).
    pub events: u64,
    tail: Option<File>,
    tail_size: u64,
}

impl Spill {
    /// Opens (creating) the directory and counts what a previous run left.
    pub fn open(dir: &Path, max_size: u64) -> io::Result<(Spill, Found)> {
        fs::create_dir_all(dir)?;
        let (pos_segment, pos_offset) = fs::read_to_string(dir.join(POS_FILE))
            .ok()
            .and_then(|s| {
                let (a, b) = s.trim().split_once(' ')?;
                Some((a.parse::<u64>().ok()?, b.parse::<u64>().ok()?))
            })
            .unwrap_or((0, 0));
        let mut segments = Vec::new();
        let mut bytes = 0;
        for e in fs::read_dir(dir)? {
            let e = e?;
            let name = e.file_name();
            let Some(n) = name
                .to_str()
                .and_then(|n| n.strip_suffix(".jsonl"))
                .and_then(|n| n.parse::<u64>().ok())
            else {
                continue;
            };
            if n < pos_segment {
                // Drained before a crash kept it from going.
                let _ = fs::remove_file(e.path());
                continue;
            }
            bytes += e.metadata()?.len();
            segments.push(n);
        }
        segments.sort_unstable();
        let head_pos = if segments.first() == Some(&pos_segment) {
            pos_offset
        } else {
            0
        };
        let next_segment = segments.last().copied().unwrap_or(0).max(pos_segment) + 1;
        let mut s = Spill {
            dir: dir.to_path_buf(),
            max_size,
            segments,
            next_segment,
            head_pos,
            bytes,
            events: 0,
            tail: None,
            tail_size: 0,
        };
        s.events = s.count_lines()?;
        let found = Found {
            events: s.events,
            bytes: s.waiting_bytes(),
        };
        Ok((s, found))
    }

    fn path(&self, n: u64) -> PathBuf {
        self.dir.join(format!("{n:020}.jsonl"))
    }

    fn count_lines(&self) -> io::Result<u64> {
        let mut n = 0;
        for (i, seg) in self.segments.iter().enumerate() {
            let mut r = BufReader::new(File::open(self.path(*seg))?);
            if i == 0 {
                r.seek(SeekFrom::Start(self.head_pos))?;
            }
            n += r.split(b'\n').count() as u64;
        }
        Ok(n)
    }

    /// Whether events wait here: then new ones must come after them, here too.
    pub fn active(&self) -> bool {
        self.events > 0
    }

    /// Bytes not yet read back.
    pub fn waiting_bytes(&self) -> u64 {
        self.bytes.saturating_sub(self.head_pos)
    }

    /// Appends `events` durably; those beyond `max_size` are not written: their number is
    /// returned (the caller counts them as dropped).
    pub fn append(&mut self, events: &[Event]) -> io::Result<usize> {
        let mut buf = Vec::with_capacity(events.len() * 512);
        let mut kept = 0;
        for e in events {
            let before = buf.len();
            serde_json::to_writer(&mut buf, e).map_err(io::Error::other)?;
            buf.push(b'\n');
            if self.waiting_bytes() + buf.len() as u64 > self.max_size {
                buf.truncate(before);
                break;
            }
            kept += 1;
        }
        if kept == 0 {
            return Ok(events.len());
        }
        let rotate_at = SEGMENT_SIZE.min(self.max_size / 4).max(1);
        if self.tail.is_none() || self.tail_size >= rotate_at {
            let n = self.next_segment;
            let f = OpenOptions::new()
                .create_new(true)
                .append(true)
                .open(self.path(n))?;
            self.next_segment += 1;
            self.segments.push(n);
            self.tail_size = 0;
            self.tail = Some(f);
            // The new segment's name must survive a power cut.
            File::open(&self.dir)?.sync_all()?;
        }
        let Some(f) = self.tail.as_mut() else {
            return Err(io::Error::other("no spill segment open"));
        };
        if let Err(e) = f.write_all(&buf).and_then(|()| f.sync_data()) {
            // Nothing of this batch may stay half written: cut it off, or start the next
            // append in a fresh segment (a torn line is skipped when read back).
            if f.set_len(self.tail_size).is_err() {
                self.tail = None;
            }
            return Err(e);
        }
        self.tail_size += buf.len() as u64;
        self.bytes += buf.len() as u64;
        self.events += kept as u64;
        Ok(events.len() - kept)
    }

    /// Up to `n` of the oldest events, and where reading stopped (for [`Spill::consume`]). A
    /// line that does not parse (a torn write before a crash) is skipped and logged; lines
    /// are bounded by the segment they are in (written here, at most a segment and a batch).
    pub fn peek(&mut self, n: usize) -> io::Result<(Vec<Event>, Cursor)> {
        let mut out = Vec::with_capacity(n);
        let mut cursor = Cursor {
            segment: 0,
            pos: self.head_pos,
            read: 0,
        };
        while cursor.read < n as u64 && cursor.segment < self.segments.len() {
            let path = self.path(self.segments[cursor.segment]);
            let mut r = BufReader::new(File::open(&path)?);
            r.seek(SeekFrom::Start(cursor.pos))?;
            let mut line = Vec::new();
            while cursor.read < n as u64 {
                line.clear();
                let got = r.read_until(b'\n', &mut line)?;
                if got == 0 {
                    break;
                }
                cursor.pos += got as u64;
                cursor.read += 1;
                match serde_json::from_slice::<Event>(&line) {
                    Ok(e) => out.push(e),
                    Err(e) => tracing::warn!(file = %path.display(), offset = cursor.pos,
                        error = %e, "journal spill: unreadable line skipped"),
                }
            }
            if cursor.read < n as u64 {
                cursor.segment += 1;
                cursor.pos = 0;
            }
        }
        Ok((out, cursor))
    }

    /// The events up to `c` are in the database. The new head is recorded first, then the
    /// drained segments go (a crash in between: they are removed at the next open).
    pub fn consume(&mut self, c: Cursor) -> io::Result<()> {
        // Read to the end of the last segment (a peek that stopped exactly there) is all read.
        let at_end = |seg: u64| fs::metadata(self.path(seg)).is_ok_and(|m| c.pos >= m.len());
        let all_read = c.segment >= self.segments.len()
            || (c.segment + 1 == self.segments.len() && at_end(self.segments[c.segment]));
        let drained: Vec<u64> = if all_read {
            std::mem::take(&mut self.segments)
        } else {
            self.segments.drain(..c.segment).collect()
        };
        self.head_pos = if all_read { 0 } else { c.pos };
        self.events = if all_read {
            0
        } else {
            self.events.saturating_sub(c.read)
        };
        if all_read {
            self.tail = None;
            self.tail_size = 0;
            self.bytes = 0;
        }
        let head = self.segments.first().copied().unwrap_or(self.next_segment);
        let written = crate::util::fs::write_atomic(
            &self.dir.join(POS_FILE),
            format!("{head} {}", self.head_pos).as_bytes(),
            crate::util::fs::Mode::KeepOr(0o600),
        );
        for seg in drained {
            let p = self.path(seg);
            self.bytes = self
                .bytes
                .saturating_sub(fs::metadata(&p).map(|m| m.len()).unwrap_or(0));
            if let Err(e) = fs::remove_file(&p) {
                tracing::warn!(file = %p.display(), error = %e, "journal spill: a drained segment could not be removed");
            }
        }
        written
    }
}

/// Where a [`Spill::peek`] stopped.
#[derive(Debug, Clone, Copy)]
pub struct Cursor {
    /// Index into the segments (the oldest is 0); past the last when all were read.
    segment: usize,
    pos: u64,
    /// Lines read, parsed or not.
    read: u64,
}

impl Cursor {
    /// Lines read, parsed or not: those that did not parse are dropped.
    pub fn lines(&self) -> u64 {
        self.read
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::journal::event::{Admin, AdminAction, EventBody};

    fn ev(n: u64) -> Event {
        Event {
            time: n,
            body: EventBody::Admin(Admin {
                queue_id: format!("{n:016X}"),
                action: AdminAction::Held,
                user: "cli".into(),
            }),
        }
    }

    #[test]
    fn events_come_back_in_order_across_segments_and_restarts() {
        let dir = tempfile::tempdir().unwrap();
        let (mut s, found) = Spill::open(dir.path(), 1 << 30).unwrap();
        assert_eq!(found, Found::default());
        assert!(!s.active());
        let batch: Vec<Event> = (0..10).map(ev).collect();
        assert_eq!(s.append(&batch).unwrap(), 0);
        assert_eq!(s.events, 10);
        let (got, c) = s.peek(4).unwrap();
        assert_eq!(got.iter().map(|e| e.time).collect::<Vec<_>>(), [0, 1, 2, 3]);
        s.consume(c).unwrap();
        drop(s);
        // A restart: the offset and the rest are found again.
        let (mut s, found) = Spill::open(dir.path(), 1 << 30).unwrap();
        assert_eq!(found.events, 6);
        s.append(&[ev(10)]).unwrap();
        // Exactly what waits: the peek stops at the end of the last segment.
        let (got, c) = s.peek(7).unwrap();
        assert_eq!(
            got.iter().map(|e| e.time).collect::<Vec<_>>(),
            [4, 5, 6, 7, 8, 9, 10]
        );
        s.consume(c).unwrap();
        assert!(!s.active());
        assert_eq!(s.waiting_bytes(), 0);
        let left: Vec<_> = fs::read_dir(dir.path())
            .unwrap()
            .filter_map(|e| e.ok())
            .filter(|e| e.file_name().to_string_lossy().ends_with(".jsonl"))
            .collect();
        assert!(left.is_empty(), "{left:?}");
    }

    #[test]
    fn beyond_its_bound_events_are_refused_and_counted() {
        let dir = tempfile::tempdir().unwrap();
        let one = serde_json::to_vec(&ev(1)).unwrap().len() as u64 + 1;
        let (mut s, _) = Spill::open(dir.path(), one * 3).unwrap();
        let batch: Vec<Event> = (1..=5).map(ev).collect();
        assert_eq!(s.append(&batch).unwrap(), 2);
        assert_eq!(s.events, 3);
    }

    #[test]
    fn segments_drained_before_a_crash_are_not_read_again_and_numbers_are_not_reused() {
        let dir = tempfile::tempdir().unwrap();
        // A small bound: segments rotate at a quarter of it (one or two events each).
        let (mut s, _) = Spill::open(dir.path(), 1024).unwrap();
        for n in 0..4 {
            assert_eq!(s.append(&[ev(n)]).unwrap(), 0);
        }
        assert!(s.segments.len() >= 2, "{:?}", s.segments);
        let second = s.segments[1];
        drop(s);
        // The offset was recorded (segment 2, its start) but the crash came before the first
        // segment was removed.
        fs::write(dir.path().join(POS_FILE), format!("{second} 0")).unwrap();
        let (mut s, found) = Spill::open(dir.path(), 1024).unwrap();
        let (got, c) = s.peek(100).unwrap();
        assert_eq!(found.events, got.len() as u64);
        assert!(got.first().is_some_and(|e| e.time > 0), "{got:?}");
        assert_eq!(got.last().map(|e| e.time), Some(3));
        s.consume(c).unwrap();
        assert!(!s.active());
        let next = s.next_segment;
        assert!(next > second);
        s.append(&[ev(9)]).unwrap();
        assert_eq!(s.segments, [next]);
    }

    #[test]
    fn a_torn_last_line_is_skipped() {
        let dir = tempfile::tempdir().unwrap();
        let (mut s, _) = Spill::open(dir.path(), 1 << 30).unwrap();
        s.append(&[ev(1), ev(2)]).unwrap();
        drop(s);
        let seg = dir.path().join(format!("{:020}.jsonl", 1));
        let mut f = OpenOptions::new().append(true).open(&seg).unwrap();
        f.write_all(b"{\"time\":3,\"ki").unwrap();
        let (mut s, found) = Spill::open(dir.path(), 1 << 30).unwrap();
        assert_eq!(found.events, 3);
        let (got, c) = s.peek(10).unwrap();
        assert_eq!(got.len(), 2);
        s.consume(c).unwrap();
        assert!(!s.active());
    }
}
