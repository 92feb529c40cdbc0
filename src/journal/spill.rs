//! The journal's overflow on disk: while the database cannot take a batch, events go to a
//! durable first-in first-out file under the spool instead of waiting in memory (where they
//! were dropped once `buffer` was full: 3,334 events of 3,000 messages lost in an outage), and
//! are written to the database in order when it returns. A restart while the database is down
//! finds them there.
//!
//! Segments `SPOOL/journal-spill/NNNNNNNNNNNNNNNNNNNN.jsonl`, one event per JSON line, appended
//! and fdatasync'd a batch at a time; the writer reads the oldest segment from the offset kept
//! in `head.pos` (rewritten atomically after each batch the database committed, so a crash
//! between the two writes an event twice, never loses one). Bounded by `journal.spill_max_size`:
//! beyond it events are dropped and counted, and the writer says so in the log and `/readyz`.

use super::event::Event;
use std::fs::{self, File, OpenOptions};
use std::io::{self, BufRead, BufReader, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

/// A segment is closed past this size and a new one started, so that a drained one can go.
const SEGMENT_SIZE: u64 = 16 << 20;
/// The longest line read back (an event is well under 4 KiB; a longer line is corrupt).
const MAX_LINE: u64 = 1 << 20;
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
    /// Where the oldest segment's unread events start.
    head_pos: u64,
    /// Bytes of all segments (read parts included: they go when their segment does).
    bytes: u64,
    /// Events waiting (an estimate after a restart: lines counted at open).
    pub events: u64,
    tail: Option<File>,
    tail_size: u64,
}

impl Spill {
    /// Opens (creating) the directory and counts what a previous run left.
    pub fn open(dir: &Path, max_size: u64) -> io::Result<(Spill, Found)> {
        fs::create_dir_all(dir)?;
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
            bytes += e.metadata()?.len();
            segments.push(n);
        }
        segments.sort_unstable();
        let head_pos = fs::read_to_string(dir.join(POS_FILE))
            .ok()
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(0);
        let mut s = Spill {
            dir: dir.to_path_buf(),
            max_size,
            segments,
            head_pos,
            bytes,
            events: 0,
            tail: None,
            tail_size: 0,
        };
        s.events = s.count_lines()?;
        let found = Found {
            events: s.events,
            bytes: s.bytes,
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
            let mut line = Vec::new();
            while r.read_until(b'\n', &mut line)? > 0 {
                n += 1;
                line.clear();
            }
        }
        Ok(n)
    }

    /// Whether events wait here: then new ones must come after them, here too.
    pub fn active(&self) -> bool {
        self.events > 0
    }

    pub fn bytes(&self) -> u64 {
        self.bytes
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
            if self.bytes + buf.len() as u64 > self.max_size {
                buf.truncate(before);
                break;
            }
            kept += 1;
        }
        if kept > 0 {
            if self.tail.is_none() || self.tail_size >= SEGMENT_SIZE {
                let n = self.segments.last().map_or(1, |l| l + 1);
                let f = OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(self.path(n))?;
                self.segments.push(n);
                self.tail_size = 0;
                self.tail = Some(f);
                // The new segment's name must survive a power cut.
                File::open(&self.dir)?.sync_all()?;
            }
            let Some(f) = self.tail.as_mut() else {
                return Err(io::Error::other("no spill segment open"));
            };
            f.write_all(&buf)?;
            f.sync_data()?;
            self.tail_size += buf.len() as u64;
            self.bytes += buf.len() as u64;
            self.events += kept as u64;
        }
        Ok(events.len() - kept)
    }

    /// Up to `n` of the oldest events, and where reading stopped (for [`Spill::consume`]). A
    /// line that does not parse (a torn write before a crash) is skipped and logged.
    pub fn peek(&mut self, n: usize) -> io::Result<(Vec<Event>, Cursor)> {
        let mut out = Vec::with_capacity(n);
        let mut cursor = Cursor {
            segment: 0,
            pos: self.head_pos,
            read: 0,
        };
        while out.len() < n && cursor.segment < self.segments.len() {
            let path = self.path(self.segments[cursor.segment]);
            let mut r = BufReader::new(File::open(&path)?);
            r.seek(SeekFrom::Start(cursor.pos))?;
            let mut line = Vec::new();
            loop {
                if out.len() >= n {
                    break;
                }
                line.clear();
                let got = (&mut r).take(MAX_LINE).read_until(b'\n', &mut line)?;
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
            if out.len() < n {
                cursor.segment += 1;
                cursor.pos = 0;
            }
        }
        Ok((out, cursor))
    }

    /// The events up to `c` are in the database: drained segments go, the offset is kept.
    pub fn consume(&mut self, c: Cursor) -> io::Result<()> {
        let last = self.segments.len().saturating_sub(1);
        for seg in self
            .segments
            .drain(..c.segment.min(last + 1))
            .collect::<Vec<_>>()
        {
            let p = self.path(seg);
            self.bytes = self
                .bytes
                .saturating_sub(fs::metadata(&p).map(|m| m.len()).unwrap_or(0));
            fs::remove_file(&p)?;
        }
        self.head_pos = if c.segment > last { 0 } else { c.pos };
        self.events = self.events.saturating_sub(c.read);
        if self.segments.is_empty() {
            self.tail = None;
            self.tail_size = 0;
            self.events = 0;
        } else if self.events == 0 {
            // Everything read: start afresh rather than keep a fully read tail around.
            for seg in std::mem::take(&mut self.segments) {
                fs::remove_file(self.path(seg))?;
            }
            self.tail = None;
            self.tail_size = 0;
            self.bytes = 0;
            self.head_pos = 0;
        }
        crate::util::fs::write_atomic(
            &self.dir.join(POS_FILE),
            self.head_pos.to_string().as_bytes(),
            crate::util::fs::Mode::KeepOr(0o600),
        )
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
        let (got, c) = s.peek(100).unwrap();
        assert_eq!(
            got.iter().map(|e| e.time).collect::<Vec<_>>(),
            [4, 5, 6, 7, 8, 9, 10]
        );
        s.consume(c).unwrap();
        assert!(!s.active());
        assert_eq!(s.bytes(), 0);
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
