//! The chain of audit entries, as pure functions: each entry's hash covers the previous
//! entry's hash and its own content, so that changing, removing or inserting one past entry
//! breaks the chain at that point; [`Walker`] finds the first break.
//!
//! The hash has no key: anyone able to write the table can also rebuild the whole chain. What
//! catches that is the head noted outside the database (the service log at every entry and
//! hourly, `/readyz`): `audit verify --expect-head HASH` checks the trail still holds it.

use serde::Serialize;
use std::fmt;

/// The `prev` of the first entry ever written.
pub const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// One administrative action, as stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Entry {
    /// 1, 2, 3, ... without gaps (pruning removes a prefix and keeps its boundary).
    pub seq: i64,
    /// Milliseconds since the epoch.
    pub time: i64,
    /// How the action came: `console`, `cli` or `admin` (the admin endpoint).
    pub via: String,
    /// Who: the console user, or the OS user of the CLI.
    pub user: String,
    /// From where: the browser's address, `local` for the CLI.
    pub origin: String,
    /// The gateway that wrote the entry.
    pub gateway: String,
    pub action: String,
    /// A queue id, an establishment, a user name, a file; `-` when none.
    pub target: String,
    /// The establishment the action concerns, when there is one (its administrators see it).
    pub establishment: Option<String>,
    /// `ok`, `refused` or `failed`.
    pub outcome: String,
    /// Why, when refused or failed.
    pub reason: Option<String>,
    pub prev: String,
    pub hash: String,
}

impl Entry {
    /// `console:alice`, `cli:root`.
    pub fn actor(&self) -> String {
        format!("{}:{}", self.via, self.user)
    }

    /// SHA-256 over the previous hash and every field, each prefixed by its length (so no two
    /// different entries encode alike), as 64 hex digits.
    pub fn compute_hash(&self) -> String {
        let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
        ctx.update(b"passerelle-audit-1\n");
        let mut field = |b: &[u8]| {
            ctx.update(&(b.len() as u64).to_le_bytes());
            ctx.update(b);
        };
        field(self.prev.as_bytes());
        field(&self.seq.to_le_bytes());
        field(&self.time.to_le_bytes());
        for s in [
            &self.via,
            &self.user,
            &self.origin,
            &self.gateway,
            &self.action,
            &self.target,
            &self.outcome,
        ] {
            field(s.as_bytes());
        }
        for o in [&self.establishment, &self.reason] {
            match o {
                Some(s) => {
                    field(b"1");
                    field(s.as_bytes());
                }
                None => field(b"0"),
            }
        }
        data_encoding::HEXLOWER.encode(ctx.finish().as_ref())
    }

    /// Links a new entry after `prev` (`seq` and `hash` filled in).
    pub fn seal(mut self, prev_seq: i64, prev_hash: &str) -> Entry {
        self.seq = prev_seq + 1;
        self.prev = prev_hash.to_string();
        self.hash = self.compute_hash();
        self
    }
}

/// Where the chain breaks first.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Break {
    /// The entry's content does not give its hash.
    Altered { seq: i64 },
    /// Entries `missing..next` are not there.
    Removed { missing: i64, next: i64 },
    /// The entry does not name the one before it: one was inserted before it, or removed and
    /// the rest renumbered.
    Relinked { seq: i64 },
    /// A head noted earlier is not in the trail.
    HeadMissing { head: String },
}

impl fmt::Display for Break {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Break::Altered { seq } => write!(
                f,
                "entry {seq} does not match its hash: it was altered, or inserted"
            ),
            Break::Removed { missing, next } if next - missing == 1 => write!(
                f,
                "entry {missing} was removed (entry {next} follows entry {})",
                missing - 1
            ),
            Break::Removed { missing, next } => write!(
                f,
                "entries {missing} to {} were removed (entry {next} follows entry {})",
                next - 1,
                missing - 1
            ),
            Break::Relinked { seq } => write!(
                f,
                "entry {seq} does not follow entry {}: an entry was inserted or removed before it",
                seq - 1
            ),
            Break::HeadMissing { head } => write!(
                f,
                "the head noted earlier ({head}) is not in the trail: entries were removed from its end, or it was rewritten"
            ),
        }
    }
}

/// What a whole walk found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verified {
    pub count: u64,
    /// The last entry's hash (the boundary's, or [`GENESIS`], when there is none).
    pub head: String,
    pub head_seq: i64,
}

/// Walks the entries in `seq` order, one at a time (a year of entries is never held).
pub struct Walker {
    next_seq: i64,
    prev: String,
    count: u64,
    expect: Option<String>,
    expect_seen: bool,
}

impl Walker {
    /// `boundary`: the last pruned entry (its seq and hash), when entries were pruned;
    /// `expect_head`: a head noted earlier, which must be in the trail.
    pub fn new(boundary: Option<(i64, String)>, expect_head: Option<String>) -> Walker {
        let (seq, prev) = boundary.unwrap_or((0, GENESIS.to_string()));
        let expect_seen = expect_head.as_deref().is_some_and(|h| h == prev);
        Walker {
            next_seq: seq + 1,
            prev,
            count: 0,
            expect: expect_head,
            expect_seen,
        }
    }

    pub fn step(&mut self, e: &Entry) -> Result<(), Break> {
        if e.seq > self.next_seq {
            return Err(Break::Removed {
                missing: self.next_seq,
                next: e.seq,
            });
        }
        if e.seq < self.next_seq || e.compute_hash() != e.hash {
            return Err(Break::Altered { seq: e.seq });
        }
        if e.prev != self.prev {
            return Err(Break::Relinked { seq: e.seq });
        }
        self.prev = e.hash.clone();
        self.next_seq += 1;
        self.count += 1;
        if self.expect.as_deref() == Some(e.hash.as_str()) {
            self.expect_seen = true;
        }
        Ok(())
    }

    pub fn finish(self) -> Result<Verified, Break> {
        match self.expect {
            Some(head) if !self.expect_seen => Err(Break::HeadMissing { head }),
            _ => Ok(Verified {
                count: self.count,
                head: self.prev,
                head_seq: self.next_seq - 1,
            }),
        }
    }
}

/// Whether `s` is a head as `audit verify` prints it (64 lowercase hex digits).
pub fn is_hash(s: &str) -> bool {
    s.len() == 64 && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn draft(i: i64) -> Entry {
        Entry {
            seq: 0,
            time: 1_700_000_000_000 + i,
            via: "console".into(),
            user: "alice".into(),
            origin: "127.0.0.1".into(),
            gateway: "gw".into(),
            action: "queue hold".into(),
            target: format!("Q{i}"),
            establishment: (i % 2 == 0).then(|| "chu-a".to_string()),
            outcome: "ok".into(),
            reason: None,
            prev: String::new(),
            hash: String::new(),
        }
    }

    fn chain(n: i64) -> Vec<Entry> {
        let mut out: Vec<Entry> = Vec::new();
        for i in 1..=n {
            let (s, h) = out
                .last()
                .map(|e| (e.seq, e.hash.clone()))
                .unwrap_or((0, GENESIS.into()));
            out.push(draft(i).seal(s, &h));
        }
        out
    }

    fn walk(
        es: &[Entry],
        boundary: Option<(i64, String)>,
        head: Option<&str>,
    ) -> Result<Verified, Break> {
        let mut w = Walker::new(boundary, head.map(str::to_string));
        for e in es {
            w.step(e)?;
        }
        w.finish()
    }

    #[test]
    fn an_intact_chain_verifies_and_gives_its_head() {
        let c = chain(5);
        let v = walk(&c, None, None).unwrap();
        assert_eq!(
            (v.count, v.head_seq, v.head.as_str()),
            (5, 5, c[4].hash.as_str())
        );
        assert!(is_hash(&v.head));
        assert_eq!(walk(&[], None, None).unwrap().head, GENESIS);
        // Every noted head of the chain is found.
        for e in &c {
            assert!(walk(&c, None, Some(&e.hash)).is_ok());
        }
    }

    #[test]
    fn any_field_changed_is_found_at_that_entry() {
        let c = chain(5);
        for f in 0..8 {
            let mut bad = c.clone();
            let e = &mut bad[2];
            match f {
                0 => e.time += 1,
                1 => e.user.push('x'),
                2 => e.origin = "10.0.0.1".into(),
                3 => e.action = "queue release".into(),
                4 => e.target.clear(),
                5 => e.establishment = Some("chu-z".into()),
                6 => e.outcome = "refused".into(),
                _ => e.reason = Some("x".into()),
            }
            assert_eq!(
                walk(&bad, None, None),
                Err(Break::Altered { seq: 3 }),
                "field {f}"
            );
        }
    }

    #[test]
    fn removed_inserted_and_truncated_entries_are_named() {
        let c = chain(6);
        let mut gone = c.clone();
        gone.remove(2);
        assert_eq!(
            walk(&gone, None, None),
            Err(Break::Removed {
                missing: 3,
                next: 4
            })
        );
        let e = walk(&gone, None, None).unwrap_err().to_string();
        assert!(e.contains("entry 3 was removed"), "{e}");
        // Removed and the rest renumbered and rehashed by someone without the head: found
        // where the renumbered entry no longer names its predecessor... or by its hash.
        let mut renum = gone.clone();
        for e in renum.iter_mut().skip(2) {
            e.seq -= 1;
        }
        assert_eq!(walk(&renum, None, None), Err(Break::Altered { seq: 3 }));
        // Inserted with a made-up hash.
        let mut ins = c.clone();
        let mut forged = draft(99).seal(3, &c[2].hash);
        forged.hash = "f".repeat(64);
        ins.insert(3, forged);
        for e in ins.iter_mut().skip(4) {
            e.seq += 1;
        }
        assert_eq!(walk(&ins, None, None), Err(Break::Altered { seq: 4 }));
        // Inserted with a correct hash: the next one does not follow it.
        let mut ins = c.clone();
        ins.insert(3, draft(99).seal(3, &c[2].hash));
        for e in ins.iter_mut().skip(4) {
            e.seq += 1;
        }
        assert!(walk(&ins, None, None).is_err());
        // The tail cut: intact in itself, found against a head noted earlier.
        let cut = &c[..4];
        assert!(walk(cut, None, None).is_ok());
        let e = walk(cut, None, Some(&c[5].hash)).unwrap_err();
        assert!(matches!(e, Break::HeadMissing { .. }), "{e}");
        // The first entry gone without a boundary.
        assert_eq!(
            walk(&c[1..], None, None),
            Err(Break::Removed {
                missing: 1,
                next: 2
            })
        );
    }

    #[test]
    fn a_pruned_prefix_keeps_its_boundary() {
        let c = chain(6);
        let boundary = Some((2, c[1].hash.clone()));
        let v = walk(&c[2..], boundary.clone(), None).unwrap();
        assert_eq!((v.count, v.head_seq), (4, 6));
        // The head noted before pruning is the boundary: still found.
        assert!(walk(&c[2..], boundary.clone(), Some(&c[1].hash)).is_ok());
        // The boundary lies about what was pruned: the first kept entry does not follow it.
        let wrong = Some((2, c[0].hash.clone()));
        assert_eq!(walk(&c[2..], wrong, None), Err(Break::Relinked { seq: 3 }));
        // An empty trail after pruning everything: its head is the boundary.
        let v = walk(&[], Some((6, c[5].hash.clone())), None).unwrap();
        assert_eq!((v.count, v.head_seq, v.head), (0, 6, c[5].hash.clone()));
    }
}
