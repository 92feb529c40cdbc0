//! The command line's verbs that change or read the gateway's state: one file per command
//! group. `main.rs` only parses the arguments and dispatches here. Nothing below the CLI
//! (intake, queue, delivery, console, admin) imports it.

pub mod establishment;
pub mod queue;
