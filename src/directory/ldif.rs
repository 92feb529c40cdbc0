//! `passerelle directory import`: the ANS extract as LDIF for `ldapadd`/`slapadd`, one
//! `inetOrgPerson` entry per address, using only the stock schemas (core, cosine,
//! inetorgperson). When an address appears on several lines (several activities), the
//! multi-valued attributes collect every distinct value.
//!
//! | extract column                    | attribute                      |
//! |-----------------------------------|--------------------------------|
//! | Adresse BAL                       | `mail` (and the RDN)           |
//! | Type de BAL (PER/ORG/APP/...)     | `employeeType`                 |
//! | Identification nationale PP       | `employeeNumber` (RPPS/ADELI)  |
//! | Nom / Prénom d'exercice           | `sn`, `givenName`, `cn`        |
//! | Civilité d'exercice + names       | `displayName`                  |
//! | Libellé Profession                | `title`                        |
//! | Libellé de catégorie profession   | `businessCategory`             |
//! | Raison Sociale structure BAL      | `o`                            |
//! | Service de rattachement           | `ou`                           |
//! | Identification Structure          | `departmentNumber`             |
//! | Code postal                       | `postalCode`                   |
//! | L6 (ligne d'acheminement)         | `l`                            |

use super::extract::{Extract, ExtractEntry, Keep};
use std::io::{self, Write};

pub const DEFAULT_BASE: &str = "ou=mssante,dc=annuaire,dc=mssante,dc=fr";

/// The columns the mapping reads: load the extract with this to import or sync it (the other
/// columns are not kept).
pub const KEEP: Keep = Keep::Columns(&[
    col::NAT_PP,
    col::STRUCT_ID,
    col::SERVICE,
    col::CIVILITE,
    col::NOM,
    col::PRENOM,
    col::CATEGORIE_LIB,
    col::PROFESSION_LIB,
    col::RAISON_SOCIALE,
    col::L6,
    col::CODE_POSTAL,
]);

/// Column indexes in the extract (see `extract::COLUMNS`).
mod col {
    pub const NAT_PP: usize = 4;
    pub const STRUCT_ID: usize = 6;
    pub const SERVICE: usize = 7;
    pub const CIVILITE: usize = 8;
    pub const NOM: usize = 9;
    pub const PRENOM: usize = 10;
    pub const CATEGORIE_LIB: usize = 12;
    pub const PROFESSION_LIB: usize = 14;
    pub const RAISON_SOCIALE: usize = 18;
    pub const L6: usize = 27;
    pub const CODE_POSTAL: usize = 28;
}

/// RFC 4514 escaping of an RDN value.
pub fn escape_rdn(v: &str) -> String {
    let mut out = String::with_capacity(v.len() + 4);
    for (i, c) in v.chars().enumerate() {
        let special = matches!(c, ',' | '+' | '"' | '\\' | '<' | '>' | ';' | '=')
            || (i == 0 && (c == '#' || c == ' '))
            || (i + 1 == v.chars().count() && c == ' ');
        if special {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

/// One `attr: value` line, base64 (`attr:: ...`) when the value is not a LDIF SAFE-STRING.
fn attr_line(out: &mut impl Write, attr: &str, value: &str) -> io::Result<()> {
    let safe = value
        .bytes()
        .all(|b| (0x01..=0x7f).contains(&b) && b != b'\n' && b != b'\r')
        && !value.starts_with([' ', ':', '<'])
        && !value.ends_with(' ');
    if safe {
        writeln!(out, "{attr}: {value}")
    } else {
        writeln!(out, "{attr}:: {}", base64(value.as_bytes()))
    }
}

/// Standard base64 (RFC 4648), as LDIF's `attr:: value` wants it.
fn base64(data: &[u8]) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode(data)
}

/// Object classes of every entry (stock schemas only).
pub const OBJECT_CLASSES: [&str; 4] = ["top", "person", "organizationalPerson", "inetOrgPerson"];

/// Every attribute the mapping may write, in the order it writes them: `directory sync` reads
/// these from the LDAP and owns them (it replaces or removes them); other attributes an
/// administrator adds to an entry are left alone.
pub const MAPPED_ATTRIBUTES: [&str; 14] = [
    "mail",
    "cn",
    "sn",
    "givenName",
    "employeeType",
    "employeeNumber",
    "displayName",
    "title",
    "businessCategory",
    "o",
    "ou",
    "departmentNumber",
    "postalCode",
    "l",
];

/// One address of the extract as an LDAP entry: what `directory import` writes and what
/// `directory sync` makes the LDAP hold. Built by [`map_entry`] only, so both agree.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MappedEntry {
    /// The address as written on its first line (the RDN value and `mail`).
    pub address: String,
    /// Attribute -> values, in [`MAPPED_ATTRIBUTES`] order, only those with values; never
    /// `objectClass` (always [`OBJECT_CLASSES`]).
    pub attrs: Vec<(&'static str, Vec<String>)>,
}

impl MappedEntry {
    /// `mail=<address>,<base>`, the address escaped per RFC 4514.
    pub fn dn(&self, base: &str) -> String {
        format!("mail={},{base}", escape_rdn(&self.address))
    }

    /// The values of one attribute (empty when the mapping writes none).
    pub fn values(&self, attr: &str) -> &[String] {
        self.attrs
            .iter()
            .find(|(a, _)| a.eq_ignore_ascii_case(attr))
            .map(|(_, v)| v.as_slice())
            .unwrap_or(&[])
    }
}

/// The mapping of the module table: one entry from all the lines of one address (first line
/// for the single-valued attributes, every distinct value for the multi-valued ones).
/// `lines` must not be empty: one group of [`Extract::group`].
pub fn map_entry(lines: &[ExtractEntry<'_>]) -> MappedEntry {
    let Some(first) = lines.first() else {
        return MappedEntry {
            address: String::new(),
            attrs: Vec::new(),
        };
    };
    let address = first.address.to_string();
    let f = |e: &ExtractEntry, i: usize| e.field(i).unwrap_or("").trim().to_string();
    let collect = |i: usize| {
        let mut v: Vec<String> = Vec::new();
        for e in lines {
            let x = f(e, i);
            if !x.is_empty() && !v.iter().any(|y| y.eq_ignore_ascii_case(&x)) {
                v.push(x);
            }
        }
        v
    };
    let (nom, prenom) = (f(first, col::NOM), f(first, col::PRENOM));
    let raison = f(first, col::RAISON_SOCIALE);
    let sn = [&nom, &raison]
        .into_iter()
        .find(|s| !s.is_empty())
        .cloned()
        .unwrap_or_else(|| address.clone());
    let cn = match (prenom.is_empty(), nom.is_empty()) {
        (false, false) => format!("{prenom} {nom}"),
        _ => sn.clone(),
    };
    let mut attrs: Vec<(&'static str, Vec<String>)> = vec![
        ("mail", vec![address.clone()]),
        ("cn", vec![cn]),
        ("sn", vec![sn]),
    ];
    let mut one = |attr: &'static str, v: String| {
        if !v.is_empty() {
            attrs.push((attr, vec![v]));
        }
    };
    one("givenName", prenom.clone());
    one("employeeType", first.bal_type.to_string());
    one("employeeNumber", f(first, col::NAT_PP));
    if !nom.is_empty() {
        let civ = f(first, col::CIVILITE);
        let display = [civ.as_str(), prenom.as_str(), nom.as_str()]
            .iter()
            .filter(|s| !s.is_empty())
            .copied()
            .collect::<Vec<_>>()
            .join(" ");
        one("displayName", display);
    }
    for (attr, i) in [
        ("title", col::PROFESSION_LIB),
        ("businessCategory", col::CATEGORIE_LIB),
        ("o", col::RAISON_SOCIALE),
        ("ou", col::SERVICE),
        ("departmentNumber", col::STRUCT_ID),
        ("postalCode", col::CODE_POSTAL),
        ("l", col::L6),
    ] {
        let v = collect(i);
        if !v.is_empty() {
            attrs.push((attr, v));
        }
    }
    MappedEntry { address, attrs }
}

fn write_entry(out: &mut impl Write, base: &str, entry: &MappedEntry) -> io::Result<()> {
    writeln!(out, "dn: {}", entry.dn(base))?;
    for oc in OBJECT_CLASSES {
        writeln!(out, "objectClass: {oc}")?;
    }
    for (attr, values) in &entry.attrs {
        for v in values {
            attr_line(out, attr, v)?;
        }
    }
    writeln!(out)
}

/// The `ou` value of an `ou=` base, whose container entry import and sync create; `None` for
/// another base (its entry must exist already).
pub fn container_ou(base: &str) -> Option<&str> {
    let rest = base.strip_prefix("ou=")?;
    Some(rest.split(',').next().unwrap_or(rest))
}

/// Writes the container (when `base` starts with `ou=`) and one entry per address (without
/// case: LDAP compares `mail=` RDNs so, `Jean@x.fr` and `jean@X.FR` are one entry). Returns the
/// number of address entries written.
pub fn write_ldif(extract: &Extract, base: &str, out: &mut impl Write) -> io::Result<usize> {
    writeln!(out, "version: 1\n")?;
    if let Some(ou) = container_ou(base) {
        write!(
            out,
            "dn: {base}\nobjectClass: top\nobjectClass: organizationalUnit\nou: {ou}\n\n"
        )?;
    }
    let n = extract.group_count();
    for g in 0..n as u32 {
        write_entry(out, base, &map_entry(&extract.group(g)))?;
    }
    Ok(n)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escaping_and_base64() {
        assert_eq!(escape_rdn("a+b@x.fr"), "a\\+b@x.fr");
        assert_eq!(escape_rdn("#x"), "\\#x");
        assert_eq!(base64(b"Man"), "TWFu");
        assert_eq!(base64(b"Ma"), "TWE=");
        assert_eq!(base64("é".as_bytes()), "w6k=");
        let mut v = Vec::new();
        attr_line(&mut v, "sn", "Hélène").unwrap();
        assert_eq!(v, b"sn:: SMOpbMOobmU=\n");
    }

    #[test]
    fn one_entry_per_address() {
        let text = std::fs::read_to_string(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/config/Extraction_Correspondance_MSSante.sample.txt"
        ))
        .unwrap();
        let (x, _) = Extract::parse(text.as_bytes(), "sample").unwrap();
        let mut out = Vec::new();
        let n = write_ldif(&x, DEFAULT_BASE, &mut out).unwrap();
        let s = String::from_utf8(out).unwrap();
        assert_eq!(n, 7, "the sample has 8 lines for 7 addresses");
        assert_eq!(
            s.matches("\ndn: mail=").count() + usize::from(s.starts_with("dn: mail=")),
            7
        );
        assert!(s.contains(
            "dn: mail=dr.martin@chu-exemple.mssante.fr,ou=mssante,dc=annuaire,dc=mssante,dc=fr\n"
        ));
        assert!(s.contains("employeeType: PER\n"));
        assert!(s.contains("employeeNumber: 810001234567\n"));
        // The address on two lines carries both structures.
        assert!(s.contains("o: CABINET LEROY\n"));
    }
}
