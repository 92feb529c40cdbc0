//! What became of a recipient at a delivery attempt, as data: who answered, what they said,
//! and why an attempt failed. Delivery makes these, the queue stores them, and DSNs, metrics,
//! `queue list` and logs render them; nothing parses its own text back (Postfix keeps DSN
//! fields the same way: status, remote MTA, diagnostic).

use crate::reply::Reply;
use serde::{Deserialize, Serialize};
use std::fmt;
use std::net::SocketAddr;

/// A host delivery talked to: `mx.op.fr[192.0.2.1]:25`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Remote {
    /// The name certificates are checked against: the MX host or next hop.
    pub host: String,
    pub addr: SocketAddr,
}

impl fmt::Display for Remote {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}[{}]:{}", self.host, self.addr.ip(), self.addr.port())
    }
}

/// Why the trust-space TLS step refused a peer (or a peer refused us). The label is the
/// `reason` of the `passerelle_tls_failures_total` metric.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TlsRefusal {
    /// The peer does not offer STARTTLS where TLS is required.
    NoStartTls,
    /// The peer answered STARTTLS with an error.
    StartTlsRefused,
    /// The handshake failed (protocol, suites, the peer refused our certificate, timeout).
    Handshake,
    /// The peer presented no certificate.
    NoCertificate,
    Expired,
    NotYetValid,
    Revoked,
    /// Not issued by a trusted authority (or a look-alike CA whose signature fails).
    Untrusted,
    /// No CRL covers the issuer: revocation cannot be checked, so the peer is refused.
    UnknownRevocation,
    CrlExpired,
    /// The certificate lacks the extended key usage of its role.
    MissingEku,
    /// The certificate could not be read.
    Unreadable,
    /// Valid chain, but its subject DN is not declared in the whitelist for the domain.
    DnNotDeclared,
    /// The recipient domain is not in the whitelist: no DN to expect, nothing is sent.
    DomainNotDeclared,
    /// We have no certificate of our own to present.
    NoLocalCertificate,
}

impl TlsRefusal {
    pub fn label(self) -> &'static str {
        match self {
            TlsRefusal::NoStartTls => "no_starttls",
            TlsRefusal::StartTlsRefused => "starttls_refused",
            TlsRefusal::Handshake => "handshake",
            TlsRefusal::NoCertificate => "no_certificate",
            TlsRefusal::Expired => "expired",
            TlsRefusal::NotYetValid => "not_yet_valid",
            TlsRefusal::Revoked => "revoked",
            TlsRefusal::Untrusted => "untrusted",
            TlsRefusal::UnknownRevocation => "crl",
            TlsRefusal::CrlExpired => "crl_expired",
            TlsRefusal::MissingEku => "eku",
            TlsRefusal::Unreadable => "unreadable",
            TlsRefusal::DnNotDeclared => "dn_not_declared",
            TlsRefusal::DomainNotDeclared => "domain_not_declared",
            TlsRefusal::NoLocalCertificate => "no_local_certificate",
        }
    }
}

/// What kind of failure: the part of delivery that failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FailureKind {
    /// The next hop could not be found (NXDOMAIN and null MX are permanent).
    Dns,
    /// No connection to the host.
    Connect,
    /// The connection broke or timed out mid-dialogue.
    Io,
    /// The TLS step (ours or the peer's) refused to go on.
    Tls(TlsRefusal),
    /// The server said something that is not SMTP.
    Protocol,
    /// The server refused with a reply (see `Failure::reply`).
    Refused,
    /// The message outlived `[queue].lifetime`.
    Expired,
    /// Our side: configuration, storage, a transport that vanished.
    Local,
}

impl FailureKind {
    /// A short label for metrics and the journal.
    pub fn label(self) -> &'static str {
        match self {
            FailureKind::Dns => "dns",
            FailureKind::Connect => "connect",
            FailureKind::Io => "io",
            FailureKind::Tls(_) => "tls",
            FailureKind::Protocol => "protocol",
            FailureKind::Refused => "refused",
            FailureKind::Expired => "expired",
            FailureKind::Local => "local",
        }
    }
}

/// Why a recipient was not delivered at an attempt.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Failure {
    pub kind: FailureKind,
    /// The host that failed or refused, when there was one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub remote: Option<Remote>,
    /// The remote server's reply, for `Refused` (and an expiry after one).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reply: Option<Reply>,
    /// In words, for people: the error, or our reason.
    #[serde(default)]
    pub detail: String,
}

impl Failure {
    pub fn new(kind: FailureKind, detail: impl Into<String>) -> Failure {
        Failure {
            kind,
            remote: None,
            reply: None,
            detail: detail.into(),
        }
    }

    pub fn at(mut self, remote: &Remote) -> Failure {
        self.remote = Some(remote.clone());
        self
    }

    /// A refusal by `remote` with `reply`.
    pub fn refused(remote: &Remote, reply: Reply) -> Failure {
        Failure {
            kind: FailureKind::Refused,
            remote: Some(remote.clone()),
            detail: String::new(),
            reply: Some(reply),
        }
    }

    /// The TLS refusal, if this is one.
    pub fn tls(&self) -> Option<TlsRefusal> {
        match self.kind {
            FailureKind::Tls(r) => Some(r),
            _ => None,
        }
    }

    /// Only an explicit 5xx is permanent; network and TLS trouble is always retried.
    pub fn is_permanent(&self) -> bool {
        self.reply.as_ref().is_some_and(Reply::is_permanent) && self.kind == FailureKind::Refused
    }

    /// The RFC 3463 status of a DSN about it: the server's own enhanced code when it gave one,
    /// `4.4.7` for an expiry without one, else `default`.
    pub fn status(&self, default: &str) -> String {
        if let Some(s) = self.reply.as_ref().and_then(|r| r.status.as_ref()) {
            return s.clone();
        }
        match self.kind {
            FailureKind::Expired => "4.4.7".into(),
            _ => default.into(),
        }
    }
}

impl fmt::Display for Failure {
    /// The text of logs, `queue list` and DSN diagnostics.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (&self.kind, &self.remote, &self.reply) {
            (FailureKind::Refused, Some(r), Some(reply)) => {
                write!(f, "host {r} said: {}", reply.to_string().replace('\n', " "))?;
                if !self.detail.is_empty() {
                    write!(f, " ({})", self.detail)?;
                }
                Ok(())
            }
            (FailureKind::Connect, Some(r), _) => write!(f, "connect to {r}: {}", self.detail),
            (FailureKind::Tls(_), Some(r), _) => write!(f, "{r}: TLS: {}", self.detail),
            (FailureKind::Io | FailureKind::Protocol, Some(r), _) => {
                write!(f, "{r}: {}", self.detail)
            }
            _ => f.write_str(&self.detail),
        }
    }
}

/// A recipient taken by a server.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Delivered {
    pub remote: Remote,
    pub reply: Reply,
    /// The server offered DSN and took the recipient's NOTIFY: it reports success itself,
    /// so no "relayed" notification of ours (RFC 3461 §6.2.2: one success report, not two).
    #[serde(default)]
    pub dsn_passed: bool,
}

impl fmt::Display for Delivered {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "host {} said: {}",
            self.remote,
            self.reply.to_string().replace('\n', " ")
        )
    }
}

/// What became of one recipient at one attempt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Delivered(Delivered),
    /// Try again later.
    Deferred(Failure),
    /// Give up: a permanent refusal (bounce).
    Failed(Failure),
    /// Not attempted: the destination rests after failing to answer at all (Postfix's "dead
    /// destination"), until `until_ms`. Not an attempt, not a deferral.
    Postponed {
        until_ms: u64,
        failure: Failure,
    },
}

#[cfg(test)]
mod tests {
    use super::*;

    fn remote() -> Remote {
        Remote {
            host: "mx.op.fr".into(),
            addr: "192.0.2.1:25".parse().unwrap(),
        }
    }

    #[test]
    fn failures_read_as_before() {
        let f = Failure::refused(&remote(), Reply::new(550, "5.1.1", "no such user"));
        assert_eq!(
            f.to_string(),
            "host mx.op.fr[192.0.2.1]:25 said: 550 5.1.1 no such user"
        );
        assert!(f.is_permanent());
        assert_eq!(f.status("5.0.0"), "5.1.1");
        let c = Failure::new(FailureKind::Connect, "Connection refused").at(&remote());
        assert_eq!(
            c.to_string(),
            "connect to mx.op.fr[192.0.2.1]:25: Connection refused"
        );
        assert!(!c.is_permanent());
        assert_eq!(c.status("4.0.0"), "4.0.0");
        let t = Failure::new(FailureKind::Tls(TlsRefusal::Revoked), "certificate revoked")
            .at(&remote());
        assert_eq!(t.tls().map(TlsRefusal::label), Some("revoked"));
        assert_eq!(
            Failure::new(FailureKind::Expired, "x").status("5.0.0"),
            "4.4.7"
        );
    }

    #[test]
    fn stored_as_json_and_read_back() {
        let f =
            Failure::new(FailureKind::Tls(TlsRefusal::DnNotDeclared), "not declared").at(&remote());
        let j = serde_json::to_string(&f).unwrap();
        let back: Failure = serde_json::from_str(&j).unwrap();
        assert_eq!(back, f);
        let d = Delivered {
            remote: remote(),
            reply: Reply::new(250, "2.0.0", "Ok: queued as X"),
            dsn_passed: true,
        };
        let back: Delivered = serde_json::from_str(&serde_json::to_string(&d).unwrap()).unwrap();
        assert_eq!(back, d);
    }
}
