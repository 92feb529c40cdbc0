//! The ANS whitelist parser (listeblanchemssante.xml): any text, never a panic, and a list
//! that answers consistently for every domain it holds.
#![no_main]

use libfuzzer_sys::fuzz_target;
use passerelle::policy::Whitelist;

fuzz_target!(|data: &[u8]| {
    let Ok(xml) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(wl) = Whitelist::parse(xml, "fuzz") else {
        return;
    };
    let domains: Vec<String> = wl.domains().map(str::to_string).collect();
    assert_eq!(domains.len(), wl.domain_count());
    let mut entries = 0;
    for d in &domains {
        assert!(wl.contains(d), "{d:?} listed but not found");
        assert!(wl.contains(&d.to_ascii_uppercase()), "{d:?}: case matters");
        let e = wl.entries(d);
        assert!(!e.is_empty());
        entries += e.len();
        for entry in e {
            assert!(wl.dn_allowed(d, &entry.dn_norm));
            assert!(wl.dn_known(&entry.dn_norm));
        }
    }
    assert_eq!(entries, wl.entry_count());
});
