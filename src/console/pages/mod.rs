//! The console's pages, one module per area of the menu.

pub mod audit;
pub mod config;
pub mod dashboard;
pub mod establishments;
pub mod later;
pub mod layout;
pub mod login;
pub mod lookups;
pub mod message;
pub mod queue;
pub mod users;

/// A Unix time as `YYYY-MM-DD HH:MM:SS UTC`.
pub fn fmt_time(unix: i64) -> String {
    let f = time::macros::format_description!("[year]-[month]-[day] [hour]:[minute]:[second] UTC");
    time::OffsetDateTime::from_unix_timestamp(unix)
        .ok()
        .and_then(|t| t.format(f).ok())
        .unwrap_or_else(|| unix.to_string())
}

/// A Unix time as `HH:MM` (chart axes).
pub fn fmt_hm(unix: i64) -> String {
    let f = time::macros::format_description!("[hour]:[minute]");
    time::OffsetDateTime::from_unix_timestamp(unix)
        .ok()
        .and_then(|t| t.format(f).ok())
        .unwrap_or_default()
}
