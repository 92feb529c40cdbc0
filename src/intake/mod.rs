//! Intake: the SMTP server side. `listener` accepts and screens connections; `session` runs the
//! RFC 5321 dialogue; `data` reads message content. Intake decides nothing itself: it asks
//! policy at MAIL and RCPT, and hands accepted messages to the queue only once they are on
//! disk.
//!
//! Must not import: delivery (intake only queues), console, cli, admin.

pub mod admission;
pub mod command;
pub mod data;
pub mod floodlog;
pub mod listener;
pub mod rate;
pub mod session;

use crate::config::{ListenerConfig, SmtpLimits};
use crate::policy::Policy;
use crate::queue::Queue;
use std::sync::Arc;

/// What every session of one listener needs, from one config snapshot: a session takes it
/// once, at accept, and keeps it to the end; a reload makes a new one for new sessions.
pub struct ListenerContext {
    pub listener: ListenerConfig,
    pub hostname: String,
    pub limits: SmtpLimits,
    /// The snapshot's routes, with the live whitelist and directory.
    pub policy: Policy,
    /// Present when this listener can do STARTTLS.
    pub tls: Option<Arc<rustls::ServerConfig>>,
    /// Judges client certificates after the handshake (listeners that ask for one).
    pub validator: Option<crate::tls::PeerValidator>,
    pub queue: Queue,
}

impl ListenerContext {
    /// Whether a client at `ip` may relay by its address: in `clients`, or on a listener of
    /// establishments, an MTA of one of them.
    pub fn admits(&self, ip: std::net::IpAddr) -> bool {
        if self.listener.establishments {
            self.policy.establishments.by_ip(ip).is_some()
        } else {
            self.listener.admits(ip)
        }
    }

    /// Whether a client its address does not admit may still come in to prove itself with
    /// a certificate (checked at MAIL).
    pub fn certificate_may_admit(&self) -> bool {
        !self.listener.client_dns.is_empty()
            || (self.listener.establishments && self.policy.establishments.any_by_certificate())
    }
}
