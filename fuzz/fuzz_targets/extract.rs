//! The national directory extract parser (Extraction_Correspondance_MSSante_*.txt): any
//! bytes, never a panic, and every address it keeps can be looked up.
#![no_main]

use libfuzzer_sys::fuzz_target;
use passerelle::directory::extract::Extract;

fuzz_target!(|data: &[u8]| {
    let Ok((extract, _report)) = Extract::parse(data, "fuzz") else {
        return;
    };
    let mut n = 0;
    for e in extract.iter() {
        n += 1;
        // The address column is found by its name in the header, not by position.
        let address = e.address;
        assert!(
            extract.lookup(address).is_some_and(|v| !v.is_empty()),
            "{address:?} kept but not found"
        );
        assert!(extract.lookup(&address.to_uppercase()).is_some() || !address.is_ascii());
        assert_eq!(e.fields().len(), 31);
        assert!(
            extract.find_group(address).is_some(),
            "{address:?} has no group"
        );
    }
    assert_eq!(n, extract.entry_count());
});
