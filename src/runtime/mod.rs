//! The gateway's state as its surfaces share it: the configuration snapshot in force
//! (`snapshot`) and the handle that asks for a reload (`reload`). `server/` builds and swaps
//! them; the console and the admin endpoint read them, so they depend on the gateway's state,
//! not on the code that starts it.
//!
//! Must not import: server, console, admin, cli.

pub mod reload;
pub mod snapshot;
