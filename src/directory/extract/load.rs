//! Reading the extract: a file or the ANS zip, line by line within bounds, into the compact
//! table of `Extract` (the builder), with a report of what was skipped.

/// Log lines keep the target they had before this code moved here (operators filter on it).
const LOG_TARGET: &str = "passerelle::directory::extract";
use super::*;
use std::collections::HashMap;
use std::fs::File;
use std::io::{BufRead, BufReader, Read, Seek, SeekFrom};
use std::path::Path;

/// The state of a parse: the extract being built and the temporary tables
/// that only grouping needs.
pub(super) struct Builder {
    pub(super) ex: Extract,
    /// Kept columns other than the address and the type, in file order.
    pub(super) others: Vec<usize>,
    /// hash(folded address) -> group, while parsing (32-bit keys: half the
    /// table of 64-bit ones; the few equal hashes go to `collisions`).
    pub(super) map: HashMap<u32, u32, std::hash::BuildHasherDefault<Spread>>,
    /// Folded address -> group, for the rare address whose hash another one
    /// already has.
    pub(super) collisions: HashMap<String, u32>,
    /// First record of each group.
    pub(super) first: Vec<u32>,
    /// The folded address of the line being added (reused).
    pub(super) folded: String,
    /// Group of each record.
    pub(super) group_of: Vec<u32>,
}

impl Builder {
    pub(super) fn new(
        header: Vec<String>,
        (idx_addr, idx_type): (usize, usize),
        keep: Keep,
        expect: usize,
        text_hint: usize,
    ) -> Builder {
        let mut slots = [NOT_KEPT; COLUMN_COUNT];
        slots[idx_addr] = 0;
        slots[idx_type] = 1;
        let wanted = |c: usize| match keep {
            Keep::All => true,
            Keep::Columns(cols) => cols.contains(&c),
        };
        let others: Vec<usize> = (0..COLUMN_COUNT)
            .filter(|&c| c != idx_addr && c != idx_type && wanted(c))
            .collect();
        for (i, &c) in others.iter().enumerate() {
            slots[c] = (i + 2) as u8;
        }
        Builder {
            ex: Extract {
                // Capacity never written costs address space, not memory:
                // reserving up front avoids the copies (and the peak) of growing.
                text: String::with_capacity(text_hint),
                recs: Vec::with_capacity(expect),
                slots,
                header,
                ..Extract::default()
            },
            others,
            map: HashMap::with_capacity_and_hasher(expect, Default::default()),
            folded: String::new(),
            collisions: HashMap::new(),
            first: Vec::with_capacity(expect),
            group_of: Vec::with_capacity(expect),
        }
    }

    /// Adds a line; `false` when the arena is full (4 GiB: not an extract).
    pub(super) fn push(
        &mut self,
        line: usize,
        fields: &[&str],
        address: &str,
        bal_type: &str,
    ) -> bool {
        let start = self.ex.text.len();
        let size: usize = address.len()
            + 1
            + bal_type.len()
            + self
                .others
                .iter()
                .map(|&c| 1 + fields.get(c).map_or(0, |f| f.len()))
                .sum::<usize>();
        let (Ok(start32), Ok(len32), Ok(line32)) = (
            u32::try_from(start),
            u32::try_from(size),
            u32::try_from(line),
        ) else {
            return false;
        };
        if start + size > u32::MAX as usize || self.ex.recs.len() >= u32::MAX as usize - 1 {
            return false;
        }
        let t = &mut self.ex.text;
        t.push_str(address);
        t.push('|');
        t.push_str(bal_type);
        for &c in &self.others {
            t.push('|');
            t.push_str(fields.get(c).copied().unwrap_or(""));
        }
        let rec = self.ex.recs.len() as u32;
        self.ex.recs.push(Rec {
            start: start32,
            len: len32,
            line: line32,
        });
        let mut folded = std::mem::take(&mut self.folded);
        fold_into(address, &mut folded);
        let h = self.ex.hash(&folded);
        let next = self.first.len() as u32;
        let g = match self.map.get(&h).copied() {
            Some(g) if self.same_folded(g, &folded) => g,
            Some(_) => *self.collisions.entry(folded.clone()).or_insert(next),
            None => {
                self.map.insert(h, next);
                next
            }
        };
        if g == next {
            self.first.push(rec);
        }
        self.folded = folded;
        self.group_of.push(g);
        true
    }

    pub(super) fn same_folded(&self, g: u32, folded: &str) -> bool {
        self.first
            .get(g as usize)
            .and_then(|&r| self.ex.recs.get(r as usize))
            .is_some_and(|r| folded_key(self.ex.rec_address(r)) == folded)
    }

    /// Groups the records and builds the lookup index.
    pub(super) fn finish(self) -> Extract {
        let Builder {
            mut ex,
            map,
            collisions,
            first,
            group_of,
            ..
        } = self;
        drop(first);
        let mut index: Vec<(u32, u32)> = map
            .into_iter()
            .chain(collisions.into_iter().map(|(k, g)| (ex.hash(&k), g)))
            .collect();
        index.sort_unstable();
        // Groups are numbered in order of first appearance: a stable sort by
        // group keeps file order inside each.
        let mut order: Vec<u32> = (0..ex.recs.len() as u32).collect();
        order.sort_by_key(|&i| group_of.get(i as usize).copied().unwrap_or(u32::MAX));
        let mut recs: Vec<Rec> = order
            .iter()
            .filter_map(|&i| ex.recs.get(i as usize).copied())
            .collect();
        let group_at = |i: usize| {
            order
                .get(i)
                .and_then(|&o| group_of.get(o as usize))
                .copied()
        };
        let mut groups: Vec<u32> = Vec::with_capacity(index.len() + 1);
        let mut addresses = 0usize;
        let mut i = 0usize;
        while i < recs.len() {
            let g = group_at(i);
            let mut j = i + 1;
            while j < recs.len() && group_at(j) == g {
                j += 1;
            }
            groups.push(i as u32);
            addresses += ex.order_exact(&mut recs[i..j]);
            i = j;
        }
        groups.push(recs.len() as u32);
        drop(order);
        drop(group_of);
        ex.recs = recs;
        ex.groups = groups;
        ex.index = index;
        ex.addresses = addresses;
        ex.text.shrink_to_fit();
        ex
    }
}

impl Extract {
    /// Parse an extract from a reader, keeping every column. `source` names
    /// the file in messages.
    pub fn parse<R: BufRead>(r: R, source: &str) -> Result<(Extract, ExtractReport), ExtractError> {
        Extract::parse_sized(r, source, 0, Keep::All)
    }

    /// [`Extract::parse`] keeping only some columns.
    pub fn parse_with<R: BufRead>(
        r: R,
        source: &str,
        keep: Keep,
    ) -> Result<(Extract, ExtractReport), ExtractError> {
        Extract::parse_sized(r, source, 0, keep)
    }

    /// [`Extract::parse_with`] with the expected size of the text in bytes, to
    /// pre-size the tables.
    pub(super) fn parse_sized<R: BufRead>(
        mut r: R,
        source: &str,
        size_hint: u64,
        keep: Keep,
    ) -> Result<(Extract, ExtractReport), ExtractError> {
        let mut buf: Vec<u8> = Vec::with_capacity(1024);
        let read_err = |line: usize, err: std::io::Error| ExtractError::Read {
            file: source.to_string(),
            line,
            err,
        };

        // Header.
        let n = read_line(&mut r, &mut buf).map_err(|e| read_err(1, e))?;
        if n == 0 {
            return Err(ExtractError::Empty {
                file: source.to_string(),
            });
        }
        let mut hdr: &[u8] = trim_eol(&buf);
        if let Some(rest) = hdr.strip_prefix(b"\xef\xbb\xbf") {
            hdr = rest;
        }
        let hdr = std::str::from_utf8(hdr).map_err(|_| ExtractError::HeaderEncoding {
            file: source.to_string(),
        })?;
        if hdr.trim().is_empty() {
            return Err(ExtractError::Empty {
                file: source.to_string(),
            });
        }
        let mut header: Vec<String> = hdr.split('|').map(|s| s.trim().to_string()).collect();
        // Tolerate a trailing separator ("a|b|...|Pays|"), as in other ANS
        // extracts: 32 fields whose last one is empty.
        let trailing_sep =
            header.len() == COLUMN_COUNT + 1 && header.last().is_some_and(|s| s.is_empty());
        if trailing_sep {
            header.pop();
        }
        if header.len() != COLUMN_COUNT {
            return Err(ExtractError::HeaderColumns {
                file: source.to_string(),
                found: header.len(),
                header: excerpt(hdr),
            });
        }
        let find = |name: &'static str| {
            let key = header_key(name);
            header
                .iter()
                .position(|h| header_key(h) == key)
                .ok_or_else(|| ExtractError::MissingColumn {
                    file: source.to_string(),
                    column: name,
                    header: excerpt(hdr),
                })
        };
        let idx_type = find(COLUMNS[COL_BAL_TYPE])?;
        let idx_addr = find(COLUMNS[COL_ADDRESS])?;
        for (i, (found, expected)) in header.iter().zip(COLUMNS.iter()).enumerate() {
            // The published header names columns 21-31 "... structure BAL".
            let (found_key, expected_key) = (header_key(found), header_key(expected));
            if found_key != expected_key && found_key != format!("{expected_key} structure bal") {
                tracing::debug!(target: LOG_TARGET, source,
                    column = i + 1,
                    found = found.as_str(),
                    expected,
                    "directory extract: unexpected column name"
                );
            }
        }

        // Real lines are 150-250 bytes; cap the guess to stay cheap on a
        // wrong hint.
        let expect = usize::try_from(size_hint / 160).unwrap_or(0).min(1_000_000);
        let text_hint = usize::try_from(size_hint).unwrap_or(0).min(1 << 31);
        let mut b = Builder::new(header, (idx_addr, idx_type), keep, expect, text_hint);
        let mut report = ExtractReport::default();
        let mut cuts: Vec<usize> = Vec::with_capacity(COLUMN_COUNT + 1);
        let mut line_no = 1usize;
        let mut blank_run: Vec<usize> = Vec::new();

        loop {
            let n = read_line(&mut r, &mut buf).map_err(|e| read_err(line_no + 1, e))?;
            if n == 0 {
                break;
            }
            line_no += 1;
            if n > MAX_LINE {
                for l in blank_run.drain(..) {
                    report.bad_lines.push((l, "empty line".to_string()));
                }
                report
                    .bad_lines
                    .push((line_no, format!("line longer than {MAX_LINE} bytes")));
                continue;
            }
            let raw = trim_eol(&buf);
            if raw.iter().all(|b| b.is_ascii_whitespace()) {
                blank_run.push(line_no);
                continue;
            }
            // Blank lines followed by data are not "trailing": report them.
            for l in blank_run.drain(..) {
                report.bad_lines.push((l, "empty line".to_string()));
            }
            let line = match std::str::from_utf8(raw) {
                Ok(l) => l,
                Err(e) => {
                    report.bad_lines.push((
                        line_no,
                        format!("invalid UTF-8 at byte {}", e.valid_up_to() + 1),
                    ));
                    continue;
                }
            };
            cuts.clear();
            cuts.extend(memchr::memchr_iter(b'|', line.as_bytes()));
            let nfields = cuts.len() + 1;
            let ok_count = nfields == COLUMN_COUNT
                || (trailing_sep && nfields == COLUMN_COUNT + 1 && line.ends_with('|'));
            if !ok_count {
                report.bad_lines.push((
                    line_no,
                    format!("{nfields} fields, expected {COLUMN_COUNT}"),
                ));
                continue;
            }
            // The fields, without allocating (a trailing separator ends the last one).
            let mut fields = [""; COLUMN_COUNT];
            let mut start = 0;
            for (i, slot) in fields.iter_mut().enumerate() {
                let end = cuts.get(i).copied().unwrap_or(line.len());
                *slot = line.get(start..end).unwrap_or("");
                start = end + 1;
            }
            let field = |i: usize| fields.get(i).copied().unwrap_or("").trim();
            let address = field(idx_addr);
            if split_address(address).is_none() {
                let reason = if address.is_empty() {
                    "empty address".to_string()
                } else {
                    format!("invalid address {address:?}")
                };
                report.bad_lines.push((line_no, reason));
                continue;
            }
            if !b.push(line_no, &fields, address, field(idx_type)) {
                report
                    .bad_lines
                    .push((line_no, "too many entries, line ignored".to_string()));
            }
        }
        let ex = b.finish();

        report.lines = line_no - 1 - blank_run.len();
        report.entries = ex.recs.len();
        report.addresses = ex.addresses;
        tracing::debug!(target: LOG_TARGET, source,
            lines = report.lines,
            entries = report.entries,
            addresses = report.addresses,
            bad_lines = report.bad_lines.len(),
            "directory extract parsed"
        );
        Ok((ex, report))
    }

    /// Load an extract file: the `.txt` itself, or a `.zip` holding exactly
    /// one `Extraction_Correspondance_MSSante_*.txt` (detected by content,
    /// not by name).
    pub fn load(path: &Path) -> Result<(Extract, ExtractReport), ExtractError> {
        Extract::load_with(path, Keep::All)
    }

    /// [`Extract::load`] keeping only some columns.
    pub fn load_with(path: &Path, keep: Keep) -> Result<(Extract, ExtractReport), ExtractError> {
        Extract::load_capped(path, keep, crate::util::fs::DEFAULT_MAX_EXTRACT_BYTES)
    }

    /// [`Extract::load_with`] refusing text over `max` bytes (`directory.max_size`): the file's
    /// size, or a zip member's declared size, is checked before parsing, and the bytes read are
    /// counted as they come (a zip member may lie about its size).
    pub fn load_capped(
        path: &Path,
        keep: Keep,
        max: u64,
    ) -> Result<(Extract, ExtractReport), ExtractError> {
        let too_large = |file: String| ExtractError::TooLarge {
            file,
            limit: crate::util::fs::human_size(max),
        };
        let io_err = |err| ExtractError::Io {
            path: path.to_path_buf(),
            err,
        };
        let mut file = File::open(path).map_err(io_err)?;
        let mut magic = [0u8; 4];
        let mut got = 0;
        while got < magic.len() {
            match file.read(&mut magic[got..]) {
                Ok(0) => break,
                Ok(n) => got += n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => return Err(io_err(e)),
            }
        }
        file.seek(SeekFrom::Start(0)).map_err(io_err)?;
        let display = path.display().to_string();

        if got == 4 && &magic == b"PK\x03\x04" {
            let zip_err = |err| ExtractError::Zip {
                path: path.to_path_buf(),
                err,
            };
            let mut archive = zip::ZipArchive::new(file).map_err(zip_err)?;
            let members: Vec<String> = archive
                .file_names()
                .filter(|n| !n.ends_with('/') && is_extract_member(n))
                .map(str::to_owned)
                .collect();
            if members.len() != 1 {
                return Err(ExtractError::ZipMembers {
                    path: path.to_path_buf(),
                    found: members.len(),
                    names: members.join(", "),
                });
            }
            let member = archive.by_name(&members[0]).map_err(zip_err)?;
            let size = member.size();
            let source = format!("{display}!{}", members[0]);
            if size > max {
                return Err(too_large(source));
            }
            Extract::parse_sized(
                BufReader::with_capacity(1 << 18, crate::util::fs::Capped::new(member, max)),
                &source,
                size,
                keep,
            )
        } else {
            let size = file.metadata().map(|m| m.len()).unwrap_or(0);
            if size > max {
                return Err(too_large(display));
            }
            Extract::parse_sized(
                BufReader::with_capacity(1 << 18, crate::util::fs::Capped::new(file, max)),
                &display,
                size,
                keep,
            )
        }
    }
}

/// Read one line (with its `\n`) into `buf`, at most [`MAX_LINE`] + 1 bytes
/// of it; the rest of a longer line is skipped. Returns the line's length,
/// 0 at end of input.
pub(super) fn read_line<R: BufRead>(r: &mut R, buf: &mut Vec<u8>) -> std::io::Result<usize> {
    buf.clear();
    let n = r
        .by_ref()
        .take(MAX_LINE as u64 + 1)
        .read_until(b'\n', buf)?;
    if n > MAX_LINE && buf.last() != Some(&b'\n') {
        let rest = r.skip_until(b'\n')?;
        return Ok(n + rest);
    }
    Ok(n)
}

/// Strip a trailing `\n` and `\r` (any number of `\r`).
pub(super) fn trim_eol(b: &[u8]) -> &[u8] {
    let b = b.strip_suffix(b"\n").unwrap_or(b);
    let mut end = b.len();
    while end > 0 && b[end - 1] == b'\r' {
        end -= 1;
    }
    &b[..end]
}
