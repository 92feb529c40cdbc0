//! The administrators' audit trail (issue 29): every administrative action of the console,
//! the CLI and the admin endpoint is one entry (who, from where, what, on what, outcome) in
//! the journal's database, table `audit`, chained by SHA-256 ([`chain`]) so that a change to
//! any past entry is found by `audit verify`. An action whose entry cannot be written is
//! refused ([`store::Auditor::begin`] before the action, [`store::Pending::finish`] after).
//!
//! Must not import: console, admin, cli, intake, queue, delivery, server.

pub mod chain;
pub mod store;

pub use chain::{Break, Entry, Verified, GENESIS};
pub use store::{
    hourly, readiness, Actor, AuditError, Auditor, Head, ListFilter, Outcome, Pending,
};
