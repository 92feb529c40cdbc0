//! The queue: a durable spool (nothing is acknowledged before it is fsync'd) and a scheduler
//! that hands due messages to delivery and applies retries, expiry and notifications.

pub mod scheduler;
pub mod spool;

pub use scheduler::{Command, DsnRouter, QueueHandle, QueueItem, Scheduler};
pub use spool::{BodyLoc, Recovered, Spool, SpoolError};
