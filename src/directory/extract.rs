//! The national directory extract of MSSanté mailboxes ("extraction des BAL
//! MSSanté" of the Annuaire Santé).
//!
//! The ANS publishes `Extraction_Correspondance_MSSante_AAAAMMJJhhmm.txt`
//! (usually inside a zip of the same name): UTF-8, `|`-separated, one header
//! line, 31 columns (see [`COLUMNS`]), one line per mailbox (BAL) and, for a
//! few addresses, several lines.
//!
//! Why this module exists: the gateway checks that an MSSanté recipient (or
//! sender) address is a mailbox published in the national directory, and
//! reads its type (`PER` personal, `ORG` organisational, `APP` applicative,
//! ...). Only columns 1 (`Type de BAL`) and 2 (`Adresse BAL`) drive that
//! decision; the others are personal or descriptive data kept by index for
//! callers that need them and should not be logged.
//!
//! The file is large (≈ 90 MB, ≈ 540,000 lines), so it is read as a stream of
//! byte lines. A malformed data line (wrong field count, invalid UTF-8,
//! invalid address) is recorded in [`ExtractReport::bad_lines`] with its
//! 1-based line number and skipped; only an unreadable file or a wrong header
//! is an error, so the caller can keep its last good extract.
//!
//! Parsing is pure (no network).
//!
//! Memory: the kept fields of every line go into one string (the arena), each
//! line is a 12-byte record pointing into it, and the index maps a 64-bit hash
//! of each address (checked against the address on every hit) to its group:
//! a handful of large allocations instead of millions of small ones. What is
//! kept besides the address and the BAL type is the caller's choice ([`Keep`]):
//! the gateway's directory keeps the few columns a RCPT check and `directory
//! lookup` use (535,000 lines: 300 MB with whole rows, see benches/RESULTS.md).

use std::collections::HashMap;
use std::fs::File;
use std::hash::BuildHasher;
use std::io::{BufRead, BufReader, Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

/// Column names of the extract, in file order (31 columns).
pub const COLUMNS: [&str; 31] = [
    "Type de BAL",
    "Adresse BAL",
    "Type Identifiant PP",
    "Identifiant PP",
    "Identification nationale PP",
    "Type identifiant structure",
    "Identification Structure",
    "Service de rattachement",
    "Civilité d'exercice",
    "Nom d'exercice",
    "Prénom d'exercice",
    "Catégorie profession",
    "Libellé de catégorie profession",
    "Code Profession",
    "Libellé Profession",
    "Code savoir-faire",
    "Libellé savoir-faire",
    "Dématérialisation",
    "Raison Sociale structure BAL",
    "Enseigne commerciale structure BAL",
    "L2COMPLEMENTLOCALISATION",
    "L3COMPLEMENTDISTRIBUTION",
    "L4NUMEROVOIE",
    "L4COMPLEMENTNUMEROVOIE",
    "NL4TYPEVOIE",
    "L4LIBELLEVOIE",
    "L5LIEUDITMENTION",
    "L6LIGNEACHEMINEMENT",
    "Code postal",
    "Département",
    "Pays",
];

/// Number of columns of the extract.
pub const COLUMN_COUNT: usize = COLUMNS.len();

/// Index of `Type de BAL` in [`COLUMNS`].
pub const COL_BAL_TYPE: usize = 0;
/// Index of `Adresse BAL` in [`COLUMNS`].
pub const COL_ADDRESS: usize = 1;

/// Longest header excerpt quoted in an error.
const HEADER_EXCERPT: usize = 200;

/// Longest line accepted (real lines are 100-400 bytes); a longer one is a
/// bad line, so that a corrupt file cannot make us buffer it whole.
const MAX_LINE: usize = 64 * 1024;

/// Why an extract could not be used at all.
#[derive(Debug, thiserror::Error)]
pub enum ExtractError {
    #[error("{}: cannot open directory extract: {err}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        err: std::io::Error,
    },
    #[error("{file}:{line}: read error: {err}")]
    Read {
        file: String,
        line: usize,
        #[source]
        err: std::io::Error,
    },
    #[error(
        "{file}: larger than the limit of {limit} (directory.max_size); refused before reading"
    )]
    TooLarge { file: String, limit: String },
    #[error("{file}: empty file, no header line")]
    Empty { file: String },
    #[error("{file}:1: header is not valid UTF-8")]
    HeaderEncoding { file: String },
    #[error("{file}:1: header has {found} columns, expected 31 (found: {header:?})")]
    HeaderColumns {
        file: String,
        found: usize,
        header: String,
    },
    #[error("{file}:1: header has no column \"{column}\" (found: {header:?})")]
    MissingColumn {
        file: String,
        column: &'static str,
        header: String,
    },
    #[error("{}: not a readable zip archive: {err}", path.display())]
    Zip {
        path: PathBuf,
        #[source]
        err: zip::result::ZipError,
    },
    #[error("{}: zip archive holds {found} Extraction_Correspondance_MSSante_*.txt members, expected exactly one{}", path.display(), if names.is_empty() { String::new() } else { format!(" ({names})") })]
    ZipMembers {
        path: PathBuf,
        found: usize,
        names: String,
    },
}

/// Which columns an [`Extract`] keeps, besides the address and the BAL type
/// (always kept).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Keep {
    /// All 31.
    All,
    /// These columns (indexes in [`COLUMNS`], i.e. file order); the others read
    /// as absent ([`ExtractEntry::field`] gives `None`).
    Columns(&'static [usize]),
}

/// What the gateway's directory keeps: `Identification Structure` (which
/// establishment a mailbox belongs to). Names stay out of memory: with the
/// structure's name too, 535,000 lines took 11 MB more, twice during a reload.
pub const DIRECTORY_COLUMNS: &[usize] = &[6];

/// A record's slot for a column that is not kept.
const NOT_KEPT: u8 = u8::MAX;

/// One data line of the extract, as kept: a view into the [`Extract`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ExtractEntry<'a> {
    /// `Adresse BAL`, trimmed, as written.
    pub address: &'a str,
    /// `Type de BAL`, trimmed: `PER`, `ORG`, `APP`, `CAB`, ...
    pub bal_type: &'a str,
    /// 1-based line number in the file (the header is line 1).
    pub line: usize,
    /// The kept fields: address, type, then the other kept columns, `|`-joined.
    stored: &'a str,
    /// File column -> position in `stored` ([`NOT_KEPT`] if not kept).
    slots: &'a [u8; COLUMN_COUNT],
}

impl<'a> ExtractEntry<'a> {
    /// All 31 fields in file order, as in the file (the address and the type
    /// trimmed); `""` for a column not kept.
    pub fn fields(&self) -> [&'a str; COLUMN_COUNT] {
        let kept: Vec<&'a str> = self.stored.split('|').collect();
        let mut out = [""; COLUMN_COUNT];
        for (slot, &pos) in out.iter_mut().zip(self.slots.iter()) {
            if let Some(f) = kept.get(pos as usize) {
                *slot = f;
            }
        }
        out
    }

    /// Field by index (file order), as in [`ExtractEntry::fields`]; `None` if
    /// out of range or not kept.
    pub fn field(&self, index: usize) -> Option<&'a str> {
        let pos = *self.slots.get(index)?;
        if pos == NOT_KEPT {
            return None;
        }
        self.stored.split('|').nth(pos as usize)
    }
}

/// One kept line: where its fields are in the arena, and its line number.
#[derive(Debug, Clone, Copy)]
struct Rec {
    start: u32,
    len: u32,
    line: u32,
}

/// What a parse went through.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ExtractReport {
    /// Data lines read after the header (blank lines at the end of the file
    /// not counted).
    pub lines: usize,
    /// Entries kept.
    pub entries: usize,
    /// Distinct addresses kept.
    pub addresses: usize,
    /// Skipped lines: (1-based line number, reason).
    pub bad_lines: Vec<(usize, String)>,
}

/// The parsed extract. Lines are grouped by address without case (one group
/// per LDAP entry, see `ldif`), groups in order of first appearance; inside a
/// group, the lines of each exact address (domain without case) together.
#[derive(Debug, Clone)]
pub struct Extract {
    /// The kept fields of every line (see [`ExtractEntry`]), in file order.
    text: String,
    /// Every kept line, grouped (see above).
    recs: Vec<Rec>,
    /// Group `g` is `recs[groups[g]..groups[g + 1]]`.
    groups: Vec<u32>,
    /// (32-bit hash of the folded address, group), sorted: 8 bytes an
    /// address. Every hit is checked against the group's address, so equal
    /// hashes only cost a comparison.
    index: Vec<(u32, u32)>,
    hasher: std::collections::hash_map::RandomState,
    slots: [u8; COLUMN_COUNT],
    /// Distinct addresses (exact local part, domain without case).
    addresses: usize,
    /// Header names as found in the file.
    header: Vec<String>,
}

impl Default for Extract {
    fn default() -> Extract {
        Extract {
            text: String::new(),
            recs: Vec::new(),
            groups: vec![0],
            index: Vec::new(),
            hasher: Default::default(),
            slots: [NOT_KEPT; COLUMN_COUNT],
            addresses: 0,
            header: Vec::new(),
        }
    }
}

/// The state of a parse: the extract being built and the temporary tables
/// that only grouping needs.
struct Builder {
    ex: Extract,
    /// Kept columns other than the address and the type, in file order.
    others: Vec<usize>,
    /// hash(folded address) -> group, while parsing (32-bit keys: half the
    /// table of 64-bit ones; the few equal hashes go to `collisions`).
    map: HashMap<u32, u32, std::hash::BuildHasherDefault<Spread>>,
    /// Folded address -> group, for the rare address whose hash another one
    /// already has.
    collisions: HashMap<String, u32>,
    /// First record of each group.
    first: Vec<u32>,
    /// The folded address of the line being added (reused).
    folded: String,
    /// Group of each record.
    group_of: Vec<u32>,
}

impl Builder {
    fn new(
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
    fn push(&mut self, line: usize, fields: &[&str], address: &str, bal_type: &str) -> bool {
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

    fn same_folded(&self, g: u32, folded: &str) -> bool {
        self.first
            .get(g as usize)
            .and_then(|&r| self.ex.recs.get(r as usize))
            .is_some_and(|r| folded_key(self.ex.rec_address(r)) == folded)
    }

    /// Groups the records and builds the lookup index.
    fn finish(self) -> Extract {
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

/// Normalise a header name: no BOM, trimmed, lowercase, French accents and
/// apostrophe variants folded, inner spaces collapsed.
fn header_key(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut space = false;
    for c in s.trim_start_matches('\u{feff}').trim().chars() {
        let c = match c {
            'à' | 'â' | 'ä' | 'À' | 'Â' | 'Ä' => 'a',
            'é' | 'è' | 'ê' | 'ë' | 'É' | 'È' | 'Ê' | 'Ë' => 'e',
            'î' | 'ï' | 'Î' | 'Ï' => 'i',
            'ô' | 'ö' | 'Ô' | 'Ö' => 'o',
            'ù' | 'û' | 'ü' | 'Ù' | 'Û' | 'Ü' => 'u',
            'ç' | 'Ç' => 'c',
            '’' | '`' => '\'',
            '_' => ' ',
            c => c,
        };
        if c.is_whitespace() {
            space = !out.is_empty();
            continue;
        }
        if space {
            out.push(' ');
            space = false;
        }
        out.extend(c.to_lowercase());
    }
    out
}

/// Split an address into (local, domain) if it has exactly one `@`, both
/// parts non-empty, and no whitespace or control character.
fn split_address(a: &str) -> Option<(&str, &str)> {
    if a.contains(|c: char| c.is_whitespace() || c.is_control()) {
        return None;
    }
    let (local, domain) = a.split_once('@')?;
    if local.is_empty() || domain.is_empty() || domain.contains('@') {
        return None;
    }
    Some((local, domain))
}

/// [`folded_key`] into a reused buffer.
fn fold_into(address: &str, out: &mut String) {
    out.clear();
    if address.is_ascii() {
        out.extend(address.chars().map(|c| c.to_ascii_lowercase()));
    } else {
        out.push_str(&address.to_lowercase());
    }
}

/// The map's hasher: its keys are hashes already; only spread them over the
/// 64 bits the table reads (it takes buckets from the low bits and tags from
/// the top ones).
#[derive(Default)]
struct Spread(u64);

impl std::hash::Hasher for Spread {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = (self.0.rotate_left(8) ^ u64::from(b)).wrapping_mul(0x9E37_79B9_7F4A_7C15);
        }
    }
    fn write_u32(&mut self, n: u32) {
        self.0 = u64::from(n).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    }
}

fn folded_key(address: &str) -> String {
    if address.is_ascii() {
        address.to_ascii_lowercase()
    } else {
        address.to_lowercase()
    }
}

/// Same mailbox: the local parts equal, the domains equal without case.
fn same_exact(a: &str, b: &str) -> bool {
    match (split_address(a), split_address(b)) {
        (Some((la, da)), Some((lb, db))) => {
            la == lb
                && (da.eq_ignore_ascii_case(db)
                    || (!da.is_ascii() && da.to_lowercase() == db.to_lowercase()))
        }
        _ => a == b,
    }
}

fn excerpt(s: &str) -> String {
    match s.char_indices().nth(HEADER_EXCERPT) {
        Some((i, _)) => format!("{}…", &s[..i]),
        None => s.to_string(),
    }
}

/// Does a zip member name look like the extract?
fn is_extract_member(name: &str) -> bool {
    let base = name.rsplit(['/', '\\']).next().unwrap_or(name);
    let lower = base.to_ascii_lowercase();
    lower.starts_with("extraction_correspondance_mssante") && lower.ends_with(".txt")
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
    fn parse_sized<R: BufRead>(
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
                tracing::debug!(
                    source,
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
        tracing::debug!(
            source,
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

    /// 32 bits of a keyed hash: every hit is checked against the address,
    /// so a few equal hashes among 535,000 addresses cost only a comparison.
    fn hash(&self, folded: &str) -> u32 {
        #[cfg(test)]
        if let Some(h) = tests::FORCE_HASH.with(|f| f.get()) {
            return h;
        }
        (self.hasher.hash_one(folded) >> 32) as u32
    }

    fn rec_address(&self, r: &Rec) -> &str {
        self.rec_text(r).split('|').next().unwrap_or("")
    }

    fn rec_text(&self, r: &Rec) -> &str {
        let (a, b) = (r.start as usize, r.start as usize + r.len as usize);
        self.text.get(a..b).unwrap_or("")
    }

    fn view(&self, r: &Rec) -> ExtractEntry<'_> {
        let stored = self.rec_text(r);
        let mut it = stored.splitn(3, '|');
        let address = it.next().unwrap_or("");
        let bal_type = it.next().unwrap_or("");
        ExtractEntry {
            address,
            bal_type,
            line: r.line as usize,
            stored,
            slots: &self.slots,
        }
    }

    /// Puts the lines of each exact address of one group together, in order
    /// of first appearance (stable); returns how many exact addresses it has.
    fn order_exact(&self, group: &mut [Rec]) -> usize {
        if group.len() < 2 {
            return group.len();
        }
        let mut reps: Vec<&str> = Vec::new();
        let mut rank = Vec::with_capacity(group.len());
        for r in group.iter() {
            let a = self.rec_address(r);
            let k = match reps.iter().position(|x| same_exact(x, a)) {
                Some(k) => k,
                None => {
                    reps.push(a);
                    reps.len() - 1
                }
            };
            rank.push(k);
        }
        let n = reps.len();
        if n > 1 {
            let mut pairs: Vec<(usize, Rec)> =
                rank.into_iter().zip(group.iter().copied()).collect();
            pairs.sort_by_key(|(k, _)| *k);
            for (slot, (_, r)) in group.iter_mut().zip(pairs) {
                *slot = r;
            }
        }
        n
    }

    /// The group of an address, without case (the LDAP entry it maps to).
    pub fn find_group(&self, address: &str) -> Option<u32> {
        let folded = folded_key(address.trim());
        let h = self.hash(&folded);
        let i = self.index.partition_point(|(k, _)| *k < h);
        self.index
            .get(i..)?
            .iter()
            .take_while(|(k, _)| *k == h)
            .map(|&(_, g)| g)
            .find(|&g| self.group_address(g).map(folded_key).as_deref() == Some(&folded))
    }

    fn group_address(&self, g: u32) -> Option<&str> {
        let &start = self.groups.get(g as usize)?;
        self.recs.get(start as usize).map(|r| self.rec_address(r))
    }

    /// Groups: addresses without case, one per LDAP entry.
    pub fn group_count(&self) -> usize {
        self.groups.len().saturating_sub(1)
    }

    /// The lines of group `g` (empty if out of range).
    pub fn group(&self, g: u32) -> Vec<ExtractEntry<'_>> {
        let g = g as usize;
        match (self.groups.get(g), self.groups.get(g + 1)) {
            (Some(&a), Some(&b)) => self
                .recs
                .get(a as usize..b as usize)
                .unwrap_or(&[])
                .iter()
                .map(|r| self.view(r))
                .collect(),
            _ => Vec::new(),
        }
    }

    /// Entries for `address`: the domain part is case-insensitive; the local
    /// part matches exactly first, then case-insensitively (the first address
    /// in file order with that folding).
    pub fn lookup(&self, address: &str) -> Option<Vec<ExtractEntry<'_>>> {
        let address = address.trim();
        split_address(address)?;
        let all = self.group(self.find_group(address)?);
        let first = all.first()?.address;
        let pick = all
            .iter()
            .find(|e| same_exact(e.address, address))
            .map_or(first, |e| e.address);
        Some(
            all.into_iter()
                .filter(|e| same_exact(e.address, pick))
                .collect(),
        )
    }

    /// Number of distinct addresses.
    pub fn len(&self) -> usize {
        self.addresses
    }

    /// True if no address was kept.
    pub fn is_empty(&self) -> bool {
        self.recs.is_empty()
    }

    /// Number of entries (lines kept).
    pub fn entry_count(&self) -> usize {
        self.recs.len()
    }

    /// All entries, grouped by address, addresses in order of first
    /// appearance.
    pub fn iter(&self) -> impl Iterator<Item = ExtractEntry<'_>> {
        self.recs.iter().map(|r| self.view(r))
    }

    /// Header names as found in the file.
    pub fn header(&self) -> &[String] {
        &self.header
    }

    /// Index of a column by name (case, accents, spaces and BOM ignored).
    pub fn column_index(&self, name: &str) -> Option<usize> {
        let key = header_key(name);
        self.header.iter().position(|h| header_key(h) == key)
    }
}

/// Read one line (with its `\n`) into `buf`, at most [`MAX_LINE`] + 1 bytes
/// of it; the rest of a longer line is skipped. Returns the line's length,
/// 0 at end of input.
fn read_line<R: BufRead>(r: &mut R, buf: &mut Vec<u8>) -> std::io::Result<usize> {
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
fn trim_eol(b: &[u8]) -> &[u8] {
    let b = b.strip_suffix(b"\n").unwrap_or(b);
    let mut end = b.len();
    while end > 0 && b[end - 1] == b'\r' {
        end -= 1;
    }
    &b[..end]
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Cursor, Write};
    use std::time::Instant;

    /// Test data generators.
    mod gen {
        use super::super::COLUMNS;

        pub fn header() -> String {
            COLUMNS.join("|")
        }

        /// A data line with the given type and address; other fields
        /// plausible and distinct per `i`.
        pub fn line(i: usize, bal_type: &str, address: &str) -> String {
            let mut f: Vec<String> = (0..COLUMNS.len()).map(|c| format!("v{i}_{c}")).collect();
            f[0] = bal_type.to_string();
            f[1] = address.to_string();
            f[2] = "8".into();
            f[3] = format!("{:011}", 10_000_000_000u64 + i as u64);
            f[4] = format!("8{:011}", 10_000_000_000u64 + i as u64);
            f[9] = format!("NOM{i}");
            f[10] = "Prénom".into();
            f[28] = "31000".into();
            f[29] = "Haute-Garonne".into();
            f[30] = "France".into();
            f.join("|")
        }

        /// A whole file of `n` data lines, `eol` line ends.
        pub fn file(n: usize, eol: &str) -> String {
            let mut s = String::with_capacity(n * 260);
            s.push_str(&header());
            s.push_str(eol);
            for i in 0..n {
                let t = if i % 5 == 0 { "ORG" } else { "PER" };
                let addr = format!("prenom.nom{i}@etab-{}.mssante.fr", i % 997);
                s.push_str(&line(i, t, &addr));
                s.push_str(eol);
            }
            s
        }
    }

    fn parse(s: &str) -> (Extract, ExtractReport) {
        Extract::parse(Cursor::new(s.as_bytes()), "test.txt").unwrap()
    }

    thread_local! {
        /// Every address hashes to this: the collision path does all the work.
        pub(super) static FORCE_HASH: std::cell::Cell<Option<u32>> = const { std::cell::Cell::new(None) };
    }

    #[test]
    fn colliding_hashes_still_find_each_address() {
        let s = format!(
            "{}\n{}\n{}\n{}\n{}\n",
            gen::header(),
            gen::line(1, "PER", "Jean@x.fr"),
            gen::line(2, "ORG", "paul@x.fr"),
            gen::line(3, "APP", "jean@X.FR"),
            gen::line(4, "CAB", "PAUL@x.fr"),
        );
        let check = |ex: &Extract| {
            assert_eq!((ex.len(), ex.group_count(), ex.entry_count()), (4, 2, 4));
            let t = |a: &str| ex.lookup(a).unwrap()[0].bal_type;
            assert_eq!(
                [
                    t("Jean@x.fr"),
                    t("jean@x.fr"),
                    t("JEAN@x.fr"),
                    t("Paul@x.fr")
                ],
                ["PER", "APP", "PER", "ORG"]
            );
            assert!(ex.lookup("pierre@x.fr").is_none());
            assert_eq!(ex.find_group("PAUL@X.FR"), Some(1));
            let lines: Vec<usize> = ex.group(0).iter().map(|e| e.line).collect();
            assert_eq!(lines, [2, 4]);
        };
        check(&parse(&s).0);
        // The hash is the same while parsing and looking up.
        FORCE_HASH.with(|f| f.set(Some(7)));
        let forced = parse(&s).0;
        assert!(forced.index.iter().all(|(h, _)| *h == 7));
        check(&forced);
        FORCE_HASH.with(|f| f.set(None));
    }

    #[test]
    fn only_the_kept_columns() {
        let s = format!("{}\n{}\n", gen::header(), gen::line(1, "PER", "a@x.fr"));
        let (ex, _) = Extract::parse_with(
            Cursor::new(s.as_bytes()),
            "k.txt",
            Keep::Columns(DIRECTORY_COLUMNS),
        )
        .unwrap();
        let e = ex.lookup("a@x.fr").unwrap()[0];
        assert_eq!((e.address, e.bal_type), ("a@x.fr", "PER"));
        assert_eq!(e.field(6), Some("v1_6"));
        assert_eq!(e.field(18), None);
        assert_eq!(e.field(9), None);
        assert_eq!(e.field(4), None, "not kept");
        assert_eq!(e.field(1), Some("a@x.fr"));
        let f = e.fields();
        assert_eq!(
            (f[0], f[1], f[4], f[6], f[30]),
            ("PER", "a@x.fr", "", "v1_6", "")
        );
    }

    #[test]
    fn columns_are_31() {
        assert_eq!(COLUMNS.len(), 31);
        assert_eq!(COLUMNS[COL_BAL_TYPE], "Type de BAL");
        assert_eq!(COLUMNS[COL_ADDRESS], "Adresse BAL");
    }

    #[test]
    fn basic_parse_and_lookup() {
        let s = format!(
            "{}\n{}\n{}\n{}\n",
            gen::header(),
            gen::line(1, "PER", "jean.dupont@ch-exemple.mssante.fr"),
            gen::line(2, "ORG", "Secretariat.Cardio@CH-Exemple.MSSante.fr"),
            gen::line(3, "APP", "app@medecin.mssante.fr"),
        );
        let (ex, rep) = parse(&s);
        assert_eq!(
            rep,
            ExtractReport {
                lines: 3,
                entries: 3,
                addresses: 3,
                bad_lines: vec![]
            }
        );
        assert_eq!(ex.len(), 3);
        assert!(!ex.is_empty());
        assert_eq!(ex.entry_count(), 3);
        let e = ex.lookup("jean.dupont@ch-exemple.mssante.fr").unwrap();
        assert_eq!(e.len(), 1);
        assert_eq!(e[0].bal_type, "PER");
        assert_eq!(e[0].line, 2);
        assert_eq!(e[0].fields().len(), 31);
        assert_eq!(e[0].fields()[9], "NOM1");
        assert_eq!(e[0].field(9), Some("NOM1"));
        assert_eq!(e[0].field(30), Some("France"));
        assert_eq!(e[0].field(31), None);
        assert_eq!(
            e[0].fields().join("|"),
            gen::line(1, "PER", "jean.dupont@ch-exemple.mssante.fr")
        );
        // Domain case-insensitive.
        assert!(ex.lookup("jean.dupont@CH-EXEMPLE.mssante.FR").is_some());
        // Local part: exact, then case-insensitive.
        assert!(ex.lookup("JEAN.DUPONT@ch-exemple.mssante.fr").is_some());
        let e = ex
            .lookup("secretariat.cardio@ch-exemple.mssante.fr")
            .unwrap();
        assert_eq!(e[0].address, "Secretariat.Cardio@CH-Exemple.MSSante.fr");
        assert_eq!(e[0].bal_type, "ORG");
        assert!(ex.lookup(" app@medecin.mssante.fr ").is_some());
        assert!(ex.lookup("nobody@ch-exemple.mssante.fr").is_none());
        assert!(ex.lookup("not-an-address").is_none());
        assert!(ex.lookup("a@b@c").is_none());
        let order: Vec<&str> = ex.iter().map(|e| e.bal_type).collect();
        assert_eq!(order, ["PER", "ORG", "APP"]);
        assert_eq!(ex.column_index("adresse bal"), Some(1));
        assert_eq!(ex.column_index("DEPARTEMENT"), Some(29));
        assert_eq!(ex.header()[10], "Prénom d'exercice");
    }

    #[test]
    fn exact_local_part_preferred() {
        let s = format!(
            "{}\n{}\n{}\n",
            gen::header(),
            gen::line(1, "PER", "Jean@x.fr"),
            gen::line(2, "ORG", "jean@X.FR"),
        );
        let (ex, rep) = parse(&s);
        assert_eq!(rep.addresses, 2);
        assert_eq!(ex.lookup("jean@x.fr").unwrap()[0].bal_type, "ORG");
        assert_eq!(ex.lookup("Jean@x.fr").unwrap()[0].bal_type, "PER");
        // Neither exact: first in file order.
        assert_eq!(ex.lookup("JEAN@x.fr").unwrap()[0].bal_type, "PER");
    }

    #[test]
    fn duplicates_are_all_kept() {
        let s = format!(
            "{}\n{}\n{}\n{}\n",
            gen::header(),
            gen::line(1, "PER", "dup@x.mssante.fr"),
            gen::line(2, "PER", "other@x.mssante.fr"),
            gen::line(3, "ORG", "dup@X.mssante.fr"),
        );
        let (ex, rep) = parse(&s);
        assert_eq!(rep.entries, 3);
        assert_eq!(rep.addresses, 2);
        assert_eq!(ex.len(), 2);
        let e = ex.lookup("dup@x.mssante.fr").unwrap();
        assert_eq!(e.len(), 2);
        assert_eq!((e[0].line, e[1].line), (2, 4));
        assert_eq!(e[1].bal_type, "ORG");
        let lines: Vec<usize> = ex.iter().map(|e| e.line).collect();
        assert_eq!(lines, [2, 4, 3]);
    }

    #[test]
    fn bad_lines_are_reported_with_numbers() {
        let mut s = format!("{}\n", gen::header()).into_bytes();
        let mut push = |l: &[u8]| {
            s.extend_from_slice(l);
            s.push(b'\n');
        };
        push(gen::line(1, "PER", "ok1@x.fr").as_bytes()); // 2
        push(b"PER|short@x.fr|only|four"); // 3
        push(gen::line(3, "PER", "").as_bytes()); // 4
        push(gen::line(4, "PER", "no-at-sign").as_bytes()); // 5
        push(gen::line(5, "PER", "two@@x.fr").as_bytes()); // 6
        push(gen::line(6, "PER", "sp ace@x.fr").as_bytes()); // 7
        push(gen::line(7, "PER", "@x.fr").as_bytes()); // 8
        push(gen::line(8, "PER", "a@").as_bytes()); // 9
        let mut bad = gen::line(9, "PER", "bad-utf8@x.fr").into_bytes(); // 10
        bad[20] = 0xff;
        push(&bad);
        push(b""); // 11: blank line in the middle
        push(format!("{}|extra", gen::line(10, "PER", "extra@x.fr")).as_bytes()); // 12
        push(gen::line(11, "ORG", "ok2@x.fr").as_bytes()); // 13
        push(&vec![b'x'; 200_000]); // 14: too long
        push(gen::line(12, "ORG", "ok3@x.fr").as_bytes()); // 15
        push(b""); // 16: trailing blank line, ignored
        let (ex, rep) = Extract::parse(Cursor::new(s), "bad.txt").unwrap();
        assert_eq!(ex.len(), 3);
        assert_eq!(rep.entries, 3);
        assert_eq!(rep.lines, 14);
        let nums: Vec<usize> = rep.bad_lines.iter().map(|(n, _)| *n).collect();
        assert_eq!(
            nums,
            [3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 14],
            "{:?}",
            rep.bad_lines
        );
        assert_eq!(rep.bad_lines[0].1, "4 fields, expected 31");
        assert_eq!(rep.bad_lines[1].1, "empty address");
        assert!(rep.bad_lines[2].1.contains("invalid address"));
        assert!(rep.bad_lines[7].1.starts_with("invalid UTF-8"));
        assert_eq!(rep.bad_lines[8].1, "empty line");
        assert_eq!(rep.bad_lines[9].1, "32 fields, expected 31");
        assert_eq!(rep.bad_lines[10].1, "line longer than 65536 bytes");
        assert_eq!(ex.lookup("ok2@x.fr").unwrap()[0].line, 13);
        assert_eq!(ex.lookup("ok3@x.fr").unwrap()[0].line, 15);
    }

    #[test]
    fn random_lines_never_panic_and_are_accounted_for() {
        const PIECES: &[&[u8]] = &[
            b"|",
            b"||||||||||",
            b"a",
            b"@",
            b"x@y.fr",
            b"\r",
            b"\n",
            b"\xff",
            b" ",
            "é".as_bytes(),
            b"\xc3",
            b"PER",
            b"\xef\xbb\xbf",
            b"\r\n",
        ];
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut next = |m: usize| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x % m as u64) as usize
        };
        let mut s = format!("{}\n", gen::header()).into_bytes();
        for i in 0..5_000 {
            if i % 3 == 0 {
                s.extend_from_slice(gen::line(i, "PER", &format!("u{i}@x.fr")).as_bytes());
            } else {
                for _ in 0..next(40) {
                    s.extend_from_slice(PIECES[next(PIECES.len())]);
                }
            }
            s.push(b'\n');
        }
        let (ex, rep) = Extract::parse(Cursor::new(s), "random.txt").unwrap();
        assert!(rep.entries >= 1_667, "{}", rep.entries);
        assert_eq!(rep.entries, ex.entry_count());
        assert_eq!(rep.entries + rep.bad_lines.len(), rep.lines);
        assert!(rep.bad_lines.windows(2).all(|w| w[0].0 < w[1].0));
    }

    #[test]
    fn address_column_found_by_name() {
        // A header with the first two columns' names moved (as the fuzzer wrote it): the
        // address is read from the column named "Adresse BAL", wherever it is.
        let mut cols = COLUMNS.map(str::to_string);
        cols.swap(1, 2);
        let mut line: Vec<String> = (0..COLUMNS.len()).map(|c| format!("v{c}")).collect();
        line[0] = "PER".into();
        line[2] = "dr.moved@chu.mssante.fr".into();
        let text = format!("{}\n{}\n", cols.join("|"), line.join("|"));
        let (ex, report) = Extract::parse(Cursor::new(text), "m.txt").unwrap();
        assert!(report.bad_lines.is_empty(), "{:?}", report.bad_lines);
        let e = &ex.lookup("dr.moved@chu.mssante.fr").unwrap()[0];
        assert_eq!(e.address, "dr.moved@chu.mssante.fr");
        assert_eq!(e.field(2), Some("dr.moved@chu.mssante.fr"));
    }

    #[test]
    fn header_checks() {
        // Wrong column count.
        let e = Extract::parse(Cursor::new("Type de BAL|Adresse BAL|X\na|b@c|d\n"), "h.txt")
            .unwrap_err();
        assert!(
            matches!(e, ExtractError::HeaderColumns { found: 3, .. }),
            "{e}"
        );
        let msg = e.to_string();
        assert!(
            msg.starts_with("h.txt:1: header has 3 columns, expected 31"),
            "{msg}"
        );
        assert!(msg.contains("Adresse BAL"), "{msg}");

        // Right count, address column missing.
        let mut cols = COLUMNS.map(str::to_string);
        cols[1] = "Courriel".into();
        let e = Extract::parse(Cursor::new(cols.join("|")), "h2.txt").unwrap_err();
        assert!(
            matches!(
                e,
                ExtractError::MissingColumn {
                    column: "Adresse BAL",
                    ..
                }
            ),
            "{e}"
        );

        // Empty file, blank header.
        let e = Extract::parse(Cursor::new(""), "e.txt").unwrap_err();
        assert!(matches!(e, ExtractError::Empty { .. }), "{e}");
        assert!(e.to_string().contains("e.txt"));
        assert!(matches!(
            Extract::parse(Cursor::new("\r\n"), "e.txt"),
            Err(ExtractError::Empty { .. })
        ));
        // Non-UTF-8 header.
        assert!(matches!(
            Extract::parse(Cursor::new(b"\xff\xfe|x\n".to_vec()), "u.txt"),
            Err(ExtractError::HeaderEncoding { .. })
        ));

        // Tolerant naming: case, accents, BOM, spaces; columns located by
        // name, not position.
        let mut cols = COLUMNS.map(str::to_string);
        cols.swap(0, 1);
        cols[0] = "  ADRESSE  bal ".into();
        cols[1] = "\u{feff}type DE bal".into();
        let s = format!(
            "\u{feff}{}\n{}\n",
            cols.join("|"),
            gen::line(1, "x@y.fr", "PER")
        );
        let (ex, rep) = parse(&s);
        assert!(rep.bad_lines.is_empty(), "{:?}", rep.bad_lines);
        let e = ex.lookup("x@y.fr").unwrap();
        assert_eq!(e[0].bal_type, "PER");
        assert_eq!(e[0].fields()[0], "x@y.fr");

        // Header with a trailing separator, lines too.
        let s = format!(
            "{}|\n{}|\n{}\n",
            gen::header(),
            gen::line(1, "PER", "t@x.fr"),
            gen::line(2, "PER", "u@x.fr")
        );
        let (ex, rep) = parse(&s);
        assert!(rep.bad_lines.is_empty(), "{:?}", rep.bad_lines);
        assert_eq!(ex.len(), 2);
        let t = &ex.lookup("t@x.fr").unwrap()[0];
        assert_eq!(t.fields()[30], "France");
        assert_eq!(
            t.fields().len(),
            31,
            "the trailing separator is not a 32nd field"
        );
    }

    #[test]
    fn bom_crlf_and_no_final_newline() {
        let s = format!(
            "\u{feff}{}\r\n{}\r\n{}",
            gen::header(),
            gen::line(1, "PER", "a@x.fr"),
            gen::line(2, "ORG", "b@x.fr"),
        );
        let (ex, rep) = parse(&s);
        assert_eq!(rep.lines, 2);
        assert!(rep.bad_lines.is_empty(), "{:?}", rep.bad_lines);
        let b = ex.lookup("b@x.fr").unwrap();
        assert_eq!(b[0].fields()[30], "France", "no CR left in the last field");
        assert_eq!(b[0].bal_type, "ORG");

        let s = format!(
            "{}\r\n{}\r\n\r\n\r\n",
            gen::header(),
            gen::line(1, "PER", "a@x.fr")
        );
        let (ex, rep) = parse(&s);
        assert_eq!((ex.len(), rep.lines), (1, 1));
        assert!(rep.bad_lines.is_empty());

        // Header only: valid, empty.
        let (ex, rep) = parse(&format!("{}\n", gen::header()));
        assert!(ex.is_empty());
        assert_eq!(rep, ExtractReport::default());
    }

    fn write_zip(path: &Path, members: &[(&str, &str)]) {
        let f = File::create(path).unwrap();
        let mut z = zip::ZipWriter::new(f);
        let opts = zip::write::SimpleFileOptions::default()
            .compression_method(zip::CompressionMethod::Deflated);
        for (name, body) in members {
            z.start_file(*name, opts).unwrap();
            z.write_all(body.as_bytes()).unwrap();
        }
        z.finish().unwrap();
    }

    #[test]
    fn load_txt_and_zip() {
        let dir = tempfile::tempdir().unwrap();
        let body = gen::file(1000, "\r\n");

        let txt = dir
            .path()
            .join("Extraction_Correspondance_MSSante_202611210300.txt");
        std::fs::write(&txt, &body).unwrap();
        let (ex, rep) = Extract::load(&txt).unwrap();
        assert_eq!((ex.len(), rep.entries), (1000, 1000));

        let zp = dir
            .path()
            .join("Extraction_Correspondance_MSSante_202611210300.zip");
        write_zip(
            &zp,
            &[
                ("LISEZMOI.txt", "readme"),
                ("Extraction_Correspondance_MSSante_202611210300.txt", &body),
            ],
        );
        let (zex, zrep) = Extract::load(&zp).unwrap();
        assert_eq!(zrep, rep);
        assert_eq!(zex.len(), 1000);
        assert!(zex.lookup("PRENOM.NOM7@etab-7.mssante.fr").is_some());

        // A zip under any name is recognised by content; a member in a folder
        // is fine.
        let zp2 = dir.path().join("download.bin");
        write_zip(
            &zp2,
            &[("out/Extraction_Correspondance_MSSante_1.txt", &body)],
        );
        assert_eq!(Extract::load(&zp2).unwrap().0.len(), 1000);

        // Zero or two candidate members.
        let z0 = dir.path().join("zero.zip");
        write_zip(&z0, &[("other.txt", &body)]);
        let e = Extract::load(&z0).unwrap_err();
        assert!(
            matches!(e, ExtractError::ZipMembers { found: 0, .. }),
            "{e}"
        );
        assert!(e.to_string().contains("zero.zip"), "{e}");
        let z2 = dir.path().join("two.zip");
        write_zip(
            &z2,
            &[
                ("Extraction_Correspondance_MSSante_1.txt", &body),
                ("Extraction_Correspondance_MSSante_2.txt", &body),
            ],
        );
        assert!(matches!(
            Extract::load(&z2),
            Err(ExtractError::ZipMembers { found: 2, .. })
        ));

        // Bad header inside a zip names the archive and the member.
        let zb = dir.path().join("badhdr.zip");
        write_zip(&zb, &[("Extraction_Correspondance_MSSante_1.txt", "a|b\n")]);
        let e = Extract::load(&zb).unwrap_err();
        assert!(
            e.to_string()
                .contains("badhdr.zip!Extraction_Correspondance_MSSante_1.txt:1:"),
            "{e}"
        );

        // Truncated zip.
        let zt = dir.path().join("trunc.zip");
        let full = std::fs::read(&zp).unwrap();
        std::fs::write(&zt, &full[..full.len() / 2]).unwrap();
        assert!(Extract::load(&zt).is_err());

        // Missing file.
        let e = Extract::load(&dir.path().join("absent.txt")).unwrap_err();
        assert!(matches!(e, ExtractError::Io { .. }));
        assert!(e.to_string().contains("absent.txt"));
    }

    #[test]
    fn perf_200k_lines() {
        let body = gen::file(200_000, "\r\n");
        let dir = tempfile::tempdir().unwrap();
        let p = dir
            .path()
            .join("Extraction_Correspondance_MSSante_202611210300.txt");
        std::fs::write(&p, &body).unwrap();
        let t = Instant::now();
        let (ex, rep) = Extract::load(&p).unwrap();
        let el = t.elapsed();
        println!(
            "extract: loaded {} lines ({} MiB) into {} addresses in {:?}",
            rep.lines,
            body.len() >> 20,
            ex.len(),
            el
        );
        assert_eq!(rep.entries, 200_000);
        assert!(rep.bad_lines.is_empty());
        let t = Instant::now();
        for i in 0..10_000 {
            let a = format!("Prenom.Nom{i}@ETAB-{}.mssante.fr", i % 997);
            assert!(ex.lookup(&a).is_some(), "{a}");
        }
        println!("extract: 10000 case-folded lookups in {:?}", t.elapsed());
        // A measurement, not a timed test: asserted only by benches/parsers.sh.
        println!("extract: 200,000 lines loaded in {el:?} (target < 2 s)");
        if std::env::var_os("PASSERELLE_PERF_ASSERT").is_some() {
            assert!(el.as_millis() < 2000, "too slow: {el:?}");
        }
    }
}
