//! The queue: a durable spool (nothing is acknowledged before it is fsync'd) and a scheduler
//! that hands due messages to delivery and applies retries, expiry and notifications.
//!
//! [`Queue::enqueue`] is the one way in, for messages received by SMTP and for the
//! notifications the queue makes itself (Postfix's cleanup).
//!
//! Must not import: intake, console, cli, admin.

pub mod attempt;
pub mod audit;
pub mod scheduler;
pub mod spool;

pub use scheduler::{
    MessageDetail, QueueError, QueueHandle, QueueItem, QueueRcpt, QueueStats, Scheduler,
};
pub use spool::{BodyLoc, Recovered, Spool, SpoolError};

use crate::message::{Envelope, State};
use crate::util::clock::now_ms;
use std::sync::Arc;

/// The spool and its scheduler, as the rest of the gateway sees them.
#[derive(Clone)]
pub struct Queue {
    spool: Spool,
    handle: QueueHandle,
}

impl Queue {
    pub fn new(spool: Spool, handle: QueueHandle) -> Queue {
        Queue { spool, handle }
    }

    /// Stores a new message durably, then hands it to the scheduler for an attempt now. When
    /// this returns `Ok`, the message is on stable storage: only then may intake answer 250.
    pub async fn enqueue(&self, env: Envelope, body: Arc<Vec<u8>>) -> Result<(), SpoolError> {
        self.enqueue_with(env, body, |_, _| {}).await
    }

    /// [`Queue::enqueue`], calling `stored` once the message is on disk and before the
    /// scheduler has it (the journal's "accepted" then precedes every attempt).
    pub async fn enqueue_with(
        &self,
        env: Envelope,
        body: Arc<Vec<u8>>,
        stored: impl FnOnce(&Envelope, &[u8]),
    ) -> Result<(), SpoolError> {
        let mut state = State::new(env.recipients.len());
        state.next_attempt = now_ms();
        let loc = self.spool.store(&env, &state, body.clone()).await?;
        stored(&env, &body);
        self.handle.submit(env, state, loc, Some(body));
        Ok(())
    }

    pub fn handle(&self) -> &QueueHandle {
        &self.handle
    }
}
