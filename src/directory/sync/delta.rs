//! The delta between the extract and what the LDAP holds under the base: which entries to add,
//! which attributes to replace, which entries to delete, and whether the deletions stay within
//! the safety bound. Pure: fed the entries read from the LDAP one by one, so it is tested
//! without a server and never holds the whole LDAP in memory (only the extract, already
//! loaded, and the list of changes).

use crate::directory::extract::Extract;
use crate::directory::ldif::{map_entry, MappedEntry, MAPPED_ATTRIBUTES};
use std::collections::HashMap;

/// One attribute to set on an existing entry: its new values (none: remove the attribute).
pub type AttrChange = (&'static str, Vec<String>);

/// An existing entry whose mapped attributes differ from the extract.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Modify {
    pub dn: String,
    pub changes: Vec<AttrChange>,
}

/// Everything the sync would do. Adds are groups of the extract (mapped when applied, so a first sync of 535,000 entries does not hold them all mapped at once).
#[derive(Debug, Default)]
pub struct Plan {
    pub adds: Vec<u32>,
    pub modifies: Vec<Modify>,
    /// DNs as the LDAP returned them.
    pub deletes: Vec<String>,
    pub unchanged: usize,
    /// Entries read under the base that the sync manages (`mail=` RDN, one `mail` value).
    pub existing: usize,
    /// Entries under the base it leaves alone (another RDN, or not exactly one `mail`).
    pub foreign: usize,
    /// Distinct addresses in the extract.
    pub desired: usize,
}

impl Plan {
    pub fn is_empty(&self) -> bool {
        self.adds.is_empty() && self.modifies.is_empty() && self.deletes.is_empty()
    }
}

/// The extract, and which of its entries the LDAP already has.
pub struct Planner<'a> {
    extract: &'a Extract,
    seen: Vec<bool>,
    plan: Plan,
}

impl<'a> Planner<'a> {
    /// The extract loaded with at least the columns of [`crate::directory::ldif::KEEP`].
    pub fn new(extract: &'a Extract) -> Planner<'a> {
        let n = extract.group_count();
        Planner {
            extract,
            seen: vec![false; n],
            plan: Plan {
                desired: n,
                ..Plan::default()
            },
        }
    }

    /// One entry read from the LDAP (one level under the base), with its mapped attributes.
    pub fn see(&mut self, dn: &str, attrs: &HashMap<String, Vec<String>>) {
        let Some(mail) = managed_mail(dn, attrs) else {
            self.plan.foreign += 1;
            return;
        };
        self.plan.existing += 1;
        let group = self.extract.find_group(mail);
        match group.filter(|&g| self.seen.get(g as usize) == Some(&false)) {
            Some(g) => {
                self.seen[g as usize] = true;
                let want = map_entry(&self.extract.group(g));
                let changes = attribute_changes(&want, attrs);
                if changes.is_empty() {
                    self.plan.unchanged += 1;
                } else {
                    self.plan.modifies.push(Modify {
                        dn: dn.to_string(),
                        changes,
                    });
                }
            }
            // Not in the extract, or a second entry for an address already matched (two
            // DNs naming one address: only possible if written by something else).
            _ => self.plan.deletes.push(dn.to_string()),
        }
    }

    /// The plan: every extract entry the LDAP did not have is an add.
    pub fn finish(mut self) -> Plan {
        self.plan.adds = self
            .seen
            .iter()
            .enumerate()
            .filter(|(_, s)| !**s)
            .map(|(i, _)| i as u32)
            .collect();
        self.plan
    }
}

/// The entry's address if the sync manages it: its RDN is `mail=...` and it has exactly one
/// `mail` value. Anything else under the base (an administrator's own entries, a
/// sub-container) is left alone.
pub fn managed_mail<'m>(dn: &str, attrs: &'m HashMap<String, Vec<String>>) -> Option<&'m str> {
    let rdn_type = dn.split_once('=')?.0.trim();
    if !rdn_type.eq_ignore_ascii_case("mail") {
        return None;
    }
    match values(attrs, "mail") {
        [one] => Some(one.as_str()),
        _ => None,
    }
}

fn values<'m>(attrs: &'m HashMap<String, Vec<String>>, name: &str) -> &'m [String] {
    attrs
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.as_slice())
        .unwrap_or(&[])
}

/// The mapped attributes whose values differ, compared as sets (LDAP keeps no value order):
/// exactly, except `mail`, which names the entry and which LDAP compares without case.
pub fn attribute_changes(
    want: &MappedEntry,
    have: &HashMap<String, Vec<String>>,
) -> Vec<AttrChange> {
    let mut out = Vec::new();
    for attr in MAPPED_ATTRIBUTES {
        let w = want.values(attr);
        let h = values(have, attr);
        let same = if attr == "mail" {
            same_set(w, h, |s| s.to_lowercase())
        } else {
            same_set(w, h, |s| s.to_string())
        };
        if !same {
            out.push((attr, w.to_vec()));
        }
    }
    out
}

fn same_set(a: &[String], b: &[String], norm: impl Fn(&str) -> String) -> bool {
    if a.len() != b.len() {
        return false;
    }
    // Most attributes hold one value: compare without allocating when they are equal.
    if a == b {
        return true;
    }
    let mut a: Vec<String> = a.iter().map(|s| norm(s)).collect();
    let mut b: Vec<String> = b.iter().map(|s| norm(s)).collect();
    a.sort_unstable();
    b.sort_unstable();
    a == b
}

/// How many deletions the bound allows: `percent` of the larger of the managed entries in the
/// LDAP and the addresses in the extract. Of the LDAP alone, a first sync into a base holding
/// a few stray entries would be refused (3 deletions of 3 entries is 100 %); a truncated or
/// empty extract deletes a large share of both, and is refused either way.
pub fn deletion_limit(existing: usize, desired: usize, percent: f64) -> usize {
    let of = existing.max(desired) as f64;
    (of * percent.max(0.0) / 100.0).floor() as usize
}

#[cfg(test)]
mod tests {
    use super::*;

    const HEADER: &str = include_str!("../../../tests/data/extraction-header-31-columns.txt");

    fn line(t: &str, addr: &str, nom: &str, title: &str, org: &str) -> String {
        let mut f = vec![String::new(); 31];
        f[0] = t.into();
        f[1] = addr.into();
        f[9] = nom.into();
        f[10] = "Anne".into();
        f[14] = title.into();
        f[18] = org.into();
        f.join("|")
    }

    fn extract(lines: &[String]) -> Extract {
        let text = format!("{}\n{}\n", HEADER.trim_end(), lines.join("\n"));
        Extract::parse(text.as_bytes(), "t").unwrap().0
    }

    /// What the LDAP would hold after importing `e`: (dn, attrs) per entry.
    fn ldap_of(e: &Extract) -> Vec<(String, HashMap<String, Vec<String>>)> {
        (0..e.group_count() as u32)
            .map(|g| {
                let m = map_entry(&e.group(g));
                let attrs = m
                    .attrs
                    .iter()
                    .map(|(a, v)| (a.to_string(), v.clone()))
                    .collect();
                (m.dn("ou=x"), attrs)
            })
            .collect()
    }

    #[test]
    fn identical_is_all_unchanged() {
        let e = extract(&[
            line("PER", "a@x.fr", "A", "Médecin", "CHU"),
            line("ORG", "b@x.fr", "", "", "CHU"),
        ]);
        let mut p = Planner::new(&e);
        for (dn, attrs) in ldap_of(&e) {
            p.see(&dn, &attrs);
        }
        let plan = p.finish();
        assert!(plan.is_empty(), "{plan:?}");
        assert_eq!((plan.unchanged, plan.existing, plan.desired), (2, 2, 2));
    }

    #[test]
    fn adds_modifies_deletes_and_foreign() {
        let old = extract(&[
            line("PER", "a@x.fr", "A", "Médecin", "CHU"),
            line("PER", "gone@x.fr", "G", "", ""),
            line("PER", "c@x.fr", "C", "Infirmier", "CHU"),
        ]);
        let new = extract(&[
            line("PER", "A@X.FR", "A", "Médecin", "CHU"), // same entry: mail compared without case
            line("PER", "c@x.fr", "C", "Cadre", ""),      // title changed, o removed
            line("ORG", "new@x.fr", "", "", "CHU"),
        ]);
        let mut p = Planner::new(&new);
        for (dn, attrs) in ldap_of(&old) {
            p.see(&dn, &attrs);
        }
        let admin: HashMap<String, Vec<String>> =
            [("cn".to_string(), vec!["admin".to_string()])].into();
        p.see("cn=admin,ou=x", &admin);
        let plan = p.finish();
        assert_eq!(plan.foreign, 1);
        assert_eq!(plan.existing, 3);
        assert_eq!(plan.unchanged, 1);
        assert_eq!(plan.deletes, ["mail=gone@x.fr,ou=x"]);
        assert_eq!(plan.adds, [2]);
        assert_eq!(plan.modifies.len(), 1);
        let m = &plan.modifies[0];
        assert_eq!(m.dn, "mail=c@x.fr,ou=x");
        assert_eq!(
            m.changes,
            [("title", vec!["Cadre".to_string()]), ("o", vec![])]
        );
    }

    #[test]
    fn value_order_does_not_matter_and_values_do() {
        let e = extract(&[
            line("PER", "m@x.fr", "M", "", "ONE"),
            line("PER", "m@x.fr", "M", "", "TWO"),
        ]);
        let want = map_entry(&e.group(0));
        let mut have: HashMap<String, Vec<String>> = want
            .attrs
            .iter()
            .map(|(a, v)| (a.to_ascii_lowercase(), v.clone()))
            .collect();
        have.insert("o".into(), vec!["TWO".into(), "ONE".into()]);
        assert!(attribute_changes(&want, &have).is_empty());
        have.insert("o".into(), vec!["TWO".into(), "one".into()]);
        assert_eq!(
            attribute_changes(&want, &have),
            [("o", vec!["ONE".to_string(), "TWO".to_string()])]
        );
        // An attribute the mapping does not write is not ours: left alone.
        have.insert("o".into(), vec!["TWO".into(), "ONE".into()]);
        have.insert("telephoneNumber".into(), vec!["0102".into()]);
        assert!(attribute_changes(&want, &have).is_empty());
    }

    #[test]
    fn duplicate_ldap_entries_for_one_address_keep_one() {
        let e = extract(&[line("PER", "a@x.fr", "A", "", "")]);
        let mut p = Planner::new(&e);
        let (dn, attrs) = ldap_of(&e).remove(0);
        p.see(&dn, &attrs);
        p.see("mail=A@x.fr,ou=x", &attrs);
        let plan = p.finish();
        assert_eq!(plan.unchanged, 1);
        assert_eq!(plan.deletes, ["mail=A@x.fr,ou=x"]);
    }

    #[test]
    fn managed_keys() {
        let m = |v: &[&str]| -> HashMap<String, Vec<String>> {
            [(
                "mail".to_string(),
                v.iter().map(|s| s.to_string()).collect(),
            )]
            .into()
        };
        assert_eq!(
            managed_mail("mail=A@X.fr,ou=x", &m(&["A@X.fr"])),
            Some("A@X.fr")
        );
        assert_eq!(managed_mail("MAIL = a@x,ou=x", &m(&["a@x"])), Some("a@x"));
        assert_eq!(managed_mail("uid=a,ou=x", &m(&["a@x"])), None);
        assert_eq!(managed_mail("mail=a@x,ou=x", &m(&[])), None);
        assert_eq!(managed_mail("mail=a@x,ou=x", &m(&["a@x", "b@x"])), None);
    }

    #[test]
    fn the_bound() {
        // Empty LDAP (first sync): nothing to delete, nothing refused.
        assert_eq!(deletion_limit(0, 535_000, 5.0), 26_750);
        // A few stray entries in front of a full extract: allowed.
        assert!(3 <= deletion_limit(3, 535_000, 5.0));
        // A truncated extract (10 % of the lines): 90 % deleted, over the limit.
        assert!(481_500 > deletion_limit(535_000, 53_500, 5.0));
        // An empty extract.
        assert_eq!(deletion_limit(535_000, 0, 5.0), 26_750);
        assert_eq!(deletion_limit(10, 10, 5.0), 0);
        assert_eq!(deletion_limit(100, 0, 100.0), 100);
        assert_eq!(deletion_limit(100, 0, -1.0), 0);
    }
}
