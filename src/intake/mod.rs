//! Intake: the SMTP server side. `listener` accepts and screens connections; `session` runs the
//! RFC 5321 dialogue; `data` reads message content. Intake decides nothing itself: it asks
//! policy at RCPT, and hands accepted messages to the queue only once they are on disk.

pub mod command;
pub mod data;
pub mod listener;
pub mod session;

use crate::config::{ListenerConfig, SmtpLimits};
use crate::policy::Policy;
use crate::queue::{QueueHandle, Spool};
use arc_swap::ArcSwap;
use std::sync::Arc;

/// What every session of one listener needs; a reload swaps in a new one for new sessions.
pub struct Shared {
    pub listener: ListenerConfig,
    pub hostname: String,
    pub limits: SmtpLimits,
    pub policy: Arc<ArcSwap<Policy>>,
    /// Present when this listener can do STARTTLS.
    pub tls: Option<Arc<rustls::ServerConfig>>,
    /// Judges client certificates after the handshake (listeners that ask for one).
    pub validator: Option<crate::tls::PeerValidator>,
    /// Certificate subjects allowed to relay from outside `listener.clients`.
    pub client_dns: Vec<crate::dn::Dn>,
    pub spool: Spool,
    pub queue: QueueHandle,
}
