//! Unit tests of `dn.rs` (kept apart so the code reads on its own).

use super::*;

const MIPIH: &str =
    "CN=medimail-asip.mipih.fr,OU=318310021300028,O=GIP MIPIH,ST=Haute-Garonne (31),C=FR";

fn dn(s: &str) -> Dn {
    Dn::parse_rfc4514(s).unwrap_or_else(|e| panic!("{s}: {e}"))
}

#[test]
fn dn_parsing_details() {
    assert_eq!(dn("CN=a+O=b,C=FR"), dn("O=B + CN=A,C=fr"));
    assert_eq!(dn("CN=caf\\C3\\A9"), dn("CN=CAFÉ"));
    assert_eq!(dn("CN=a\\ b"), dn("CN=a b"));
    assert_eq!(dn("CN=  a   b  "), dn("CN=a b"));
    assert_eq!(dn("CN=a\tb"), dn("CN=a b"));
    assert_eq!(dn("CN=\"x, y\""), dn("CN=x\\, y"));
    assert_eq!(
        dn("CN=a\\=b\\<\\>\\;\\\"\\\\\\+"),
        dn("CN=A=b\\3C\\3E\\3B\\22\\5C\\2B")
    );
    assert_eq!(dn("emailAddress=x@y.fr"), dn("E=X@Y.FR"));
    assert_eq!(dn("1.2.840.113549.1.9.1=x@y.fr"), dn("E=X@Y.FR"));
    assert_eq!(
        dn("UID=u,DC=example,DC=fr"),
        dn("userid=U,dc=EXAMPLE,domainComponent=FR")
    );
    assert_eq!(dn("SERIALNUMBER=123"), dn("2.5.4.5=123"));
    // '#' BER: a UTF8String "abc" equals the string value.
    assert_eq!(dn("CN=#0c03616263"), dn("CN=abc"));
    assert_eq!(dn("CN=#130141"), dn("CN=a"));
    // Non-string BER value is kept as bytes.
    let ber = dn("1.2.3.4=#020105");
    assert_eq!(ber.canonical(), "1.2.3.4=#020105");
    assert_ne!(ber, dn("1.2.3.4=#020106"));
    assert_eq!(dn(" CN=x , O=y ").canonical(), "CN=x,O=y");
    assert_eq!(dn(" CN=x , O=y ").to_string(), "CN=x , O=y");
    assert_eq!(
        dn("CN=  Medimail-ASIP.mipih.fr ,O=GIP\\, MIPIH,C=FR").canonical(),
        "CN=medimail-asip.mipih.fr,O=gip\\, mipih,C=fr"
    );
    assert_eq!(dn("CN=\\#x\\ ").canonical(), "CN=\\#x");
    assert_eq!(dn("O=GIP\\, MIPIH").cn(), None);
    assert_eq!(dn("CN=Caf\\C3\\A9 X,CN=other").cn(), Some("Café X"));
    assert_eq!(dn(MIPIH).len(), 5);
    let bad = [
        "",
        "   ",
        "CN",
        "CN=a,",
        "=a",
        "XX=a",
        "CN=a\\",
        "CN=a\\4",
        "CN=a\\zz",
        "CN=\\FF",
        "CN=#zz",
        "CN=#0c0461",
        "CN=#0c",
        "CN=#",
        "CN=\"abc",
        "CN=\"a\"b",
        "1.=x",
        "CN=a,,O=b",
    ];
    for b in bad {
        assert!(Dn::parse_rfc4514(b).is_err(), "{b:?} should fail");
    }
    assert_eq!(Dn::parse_rfc4514(""), Err(DnError::Empty));
    assert!(matches!(
        Dn::parse_rfc4514("businessCategory=x"),
        Err(DnError::UnknownAttributeType(_))
    ));
    // Equality implies equal hashes (used as map keys).
    let mut set = std::collections::HashSet::new();
    set.insert(dn(MIPIH));
    assert!(set.contains(&dn(&MIPIH.to_lowercase())));
    // Both forms read back as the same DN.
    for s in [MIPIH, "CN=a\\,b+O=\\#c,C=FR", "CN=\\ x\\ ", "1.2.3=#020105"] {
        let d = dn(s);
        assert_eq!(dn(&d.canonical()), d, "{s}");
        assert_eq!(dn(&d.to_string()), d, "{s}");
        assert_eq!(d.to_string(), s);
    }
}

#[test]
fn dn_parser_never_panics() {
    // Deterministic pseudo-random DN-like strings, rich in special
    // characters: parsing may fail but must not panic, and a successful
    // parse must round-trip through Display.
    const TYPES: &[&str] = &[
        "CN",
        "o",
        "OU",
        "C",
        "2.5.4.3",
        "OID.2.5.4.10",
        "E",
        "",
        "X",
    ];
    const VALUES: &[&str] = &[
        "a",
        "Z z",
        " ",
        "=",
        "#",
        "#0c03616263",
        "\"q,\"",
        "\\",
        "\\,",
        "\\C3\\A9",
        "\\C3",
        "é",
        "\t",
        "<>",
        "\u{0}",
        "\u{a0}",
        "\\ ",
        "\\#",
        "+",
        "\\2b",
    ];
    const SEPS: &[&str] = &[",", "+", ";", " , ", ",,", ""];
    let mut x: u64 = 0x2545_f491_4f6c_dd1d;
    let mut next = |m: usize| {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        (x % m as u64) as usize
    };
    let (mut ok, mut err) = (0, 0);
    for _ in 0..20_000 {
        let mut s = String::new();
        for i in 0..1 + next(5) {
            if i > 0 {
                s.push_str(SEPS[next(SEPS.len())]);
            }
            s.push_str(TYPES[next(TYPES.len())]);
            s.push('=');
            for _ in 0..next(4) {
                s.push_str(VALUES[next(VALUES.len())]);
            }
        }
        match Dn::parse_rfc4514(&s) {
            Ok(d) => {
                ok += 1;
                let canonical = d.canonical();
                let again = Dn::parse_rfc4514(&canonical)
                    .unwrap_or_else(|e| panic!("{s:?} -> {canonical} does not reparse: {e}"));
                assert_eq!(again, d, "{s:?} -> {canonical}");
                assert_eq!(again.canonical(), canonical);
            }
            Err(_) => err += 1,
        }
    }
    assert!(ok > 2_000 && err > 2_000, "ok {ok}, err {err}");
}
