//! passerelle: a mail gateway between an establishment's MTA and the MSSanté trust space.
//!
//! The modules follow the mail's path: [`intake`] (SMTP server) -> [`policy`] (who may relay,
//! where each recipient goes) -> [`queue`] (durable spool, scheduler) -> [`delivery`] (SMTP
//! client, DNS, TLS) -> [`dsn`] (reports to the sender). Beside the path: [`journal`] (every
//! message event, for `track` and `stats`), [`console`] (the admin web console, reading what
//! the path reports), [`config`], [`tls`], [`pki`], and [`server`], which wires them together.

pub mod admin;
pub mod audit;
pub mod cli;
pub mod config;
pub mod console;
pub mod delivery;
pub mod directory;
pub mod dsn;
pub mod establishment;
pub mod intake;
pub mod journal;
#[cfg(test)]
mod layout;
pub mod message;
pub mod metrics;
pub mod net;
pub mod pki;
pub mod policy;
pub mod queue;
pub mod reply;
pub mod runtime;
pub mod server;
pub mod state;
pub mod tls;
pub mod trust;
pub mod util;
