//! The delivery and read receipt parser (multipart/report, RFC 3464 and RFC 8098): any bytes,
//! never a panic, and what it keeps is bounded and well formed.
#![no_main]

use libfuzzer_sys::fuzz_target;
use passerelle::message::report::{announced, parse};

fuzz_target!(|data: &[u8]| {
    let Some(r) = parse(data) else {
        return;
    };
    assert!(
        announced(data).is_some(),
        "a receipt the header did not announce"
    );
    assert!(!r.items.is_empty());
    for i in &r.items {
        assert!(!i.recipient.is_empty() && i.recipient.len() <= 320);
        assert!(i.status.len() <= 998);
    }
});
