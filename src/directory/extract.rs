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

mod load;
use std::hash::BuildHasher;
use std::path::PathBuf;

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

#[cfg(test)]
#[path = "extract_tests.rs"]
mod tests;
