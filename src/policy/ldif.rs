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

use super::extract::{Extract, ExtractEntry};
use std::collections::BTreeMap;
use std::io::{self, Write};

pub const DEFAULT_BASE: &str = "ou=mssante,dc=annuaire,dc=mssante,dc=fr";

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
fn escape_rdn(v: &str) -> String {
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

/// Standard base64 (RFC 4648). Hand-written: a dozen lines do not justify a dependency.
fn base64(data: &[u8]) -> String {
    const T: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut s = String::with_capacity(data.len().div_ceil(3) * 4);
    for chunk in data.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = (b[0] as u32) << 16 | (b[1] as u32) << 8 | b[2] as u32;
        for i in 0..4 {
            if i <= chunk.len() {
                s.push(T[(n >> (18 - 6 * i)) as usize & 63] as char);
            } else {
                s.push('=');
            }
        }
    }
    s
}

fn entry(
    out: &mut impl Write,
    base: &str,
    address: &str,
    lines: &[&ExtractEntry],
) -> io::Result<()> {
    let first = lines[0];
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
        .unwrap_or_else(|| address.to_string());
    let cn = match (prenom.is_empty(), nom.is_empty()) {
        (false, false) => format!("{prenom} {nom}"),
        _ => sn.clone(),
    };
    writeln!(out, "dn: mail={},{base}", escape_rdn(address))?;
    for oc in ["top", "person", "organizationalPerson", "inetOrgPerson"] {
        writeln!(out, "objectClass: {oc}")?;
    }
    attr_line(out, "mail", address)?;
    attr_line(out, "cn", &cn)?;
    attr_line(out, "sn", &sn)?;
    if !prenom.is_empty() {
        attr_line(out, "givenName", &prenom)?;
    }
    attr_line(out, "employeeType", &first.bal_type)?;
    let nat = f(first, col::NAT_PP);
    if !nat.is_empty() {
        attr_line(out, "employeeNumber", &nat)?;
    }
    let civ = f(first, col::CIVILITE);
    if !nom.is_empty() {
        let display = [civ.as_str(), prenom.as_str(), nom.as_str()]
            .iter()
            .filter(|s| !s.is_empty())
            .copied()
            .collect::<Vec<_>>()
            .join(" ");
        attr_line(out, "displayName", &display)?;
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
        for v in collect(i) {
            attr_line(out, attr, &v)?;
        }
    }
    writeln!(out)
}

/// Writes the container (when `base` starts with `ou=`) and one entry per address. Returns the
/// number of address entries written.
pub fn write_ldif(extract: &Extract, base: &str, out: &mut impl Write) -> io::Result<usize> {
    writeln!(out, "version: 1\n")?;
    if let Some(rest) = base.strip_prefix("ou=") {
        let ou = rest.split(',').next().unwrap_or(rest);
        write!(
            out,
            "dn: {base}\nobjectClass: top\nobjectClass: organizationalUnit\nou: {ou}\n\n"
        )?;
    }
    // Group the lines by address, keeping the file's order of first appearance.
    let mut by_addr: BTreeMap<String, Vec<&ExtractEntry>> = BTreeMap::new();
    let mut order: Vec<String> = Vec::new();
    for e in extract.iter() {
        let key = e.address.to_lowercase();
        let v = by_addr.entry(key.clone()).or_default();
        if v.is_empty() {
            order.push(key);
        }
        v.push(e);
    }
    for key in &order {
        let lines = &by_addr[key];
        entry(out, base, &lines[0].address, lines)?;
    }
    Ok(order.len())
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
