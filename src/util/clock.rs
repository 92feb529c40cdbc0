//! The wall clock, in the units the gateway stores: milliseconds in the spool and the journal,
//! seconds in trust-state checks and pages. One place, so a clock before 1970 (a broken RTC)
//! reads as 0 everywhere instead of panicking somewhere.

use std::time::{SystemTime, UNIX_EPOCH};

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// Seconds since the Unix epoch.
pub fn now_s() -> u64 {
    now_ms() / 1000
}

/// Seconds since the Unix epoch, signed (the type x509 and `time` dates compare with).
pub fn now_unix() -> i64 {
    now_s() as i64
}
