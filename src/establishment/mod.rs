//! Establishments as administrators handle them: their files (`store`: text and validated
//! writes) and what their administrators are told (`onboarding`). Used by the CLI and the
//! console alike, so that neither imports the other. The runtime table that attributes a
//! session and owns an address is `policy::establishment`.
//!
//! Must not import: console, cli, admin, server (the CLI and the console both use it).

pub mod onboarding;
pub mod store;
