//! STARTTLS: the upgrade of the session in place, and what is kept of the client's
//! certificate.

use super::super::admission::Reason;
use super::{Flow, Session, Transaction};
use crate::config::StartTls;
use crate::net::{BoxStream, Rewind};
use crate::reply::Reply;
use crate::tls::Refusal;
use tokio::io::BufReader;

impl Session {
    pub(super) async fn starttls(&mut self, arg: &str) -> Flow {
        let Some(cfg) = self.ctx.tls.clone() else {
            self.reply(&Reply::new(502, "5.5.1", "Error: command not implemented"));
            return Flow::Continue;
        };
        if self.ctx.listener.starttls == StartTls::Off {
            self.reply(&Reply::new(502, "5.5.1", "Error: command not implemented"));
            return Flow::Continue;
        }
        if self.tls.is_some() {
            self.reply(&Reply::new(503, "5.5.1", "Error: TLS already active"));
            return Flow::Continue;
        }
        if !arg.is_empty() {
            self.reply(&Reply::new(501, "5.5.4", "Syntax: STARTTLS"));
            return Flow::Continue;
        }
        self.raw("220 2.0.0 Ready to start TLS\r\n");
        if self.flush().await.is_err() {
            return Flow::Close;
        }
        // into_inner drops any command pipelined after STARTTLS (RFC 3207 §4.2, CVE-2011-0411).
        let r = std::mem::replace(
            &mut self.r,
            BufReader::new(Rewind::new(Box::new(tokio::io::empty()) as BoxStream)),
        );
        let plain = r.into_inner().into_inner();
        let acceptor = tokio_rustls::TlsAcceptor::from(cfg);
        let timeout = self.ticket.command_timeout(self.ctx.limits.timeout);
        let ticket = self.ticket.clone();
        let handshake = tokio::select! {
            r = tokio::time::timeout(timeout, acceptor.accept(plain)) => r.map_err(|_| "timeout"),
            reason = ticket.ended() => Err(match reason {
                Reason::Stress => "shed",
                _ => "timeout",
            }),
        };
        let failed = |s: &Self, reason: &str| {
            crate::metrics::inc(
                "passerelle_tls_handshake_failures_total",
                "TLS handshakes of clients that failed or were abandoned, by reason",
                &[
                    ("listener", s.ctx.listener.name.as_str()),
                    ("reason", reason),
                ],
            );
        };
        let tls = match handshake {
            Ok(Ok(s)) => s,
            Ok(Err(e)) => {
                failed(self, "error");
                sinfo!(self, client = %self.peer, error = %e, "TLS handshake failed");
                return Flow::Close;
            }
            Err(why) => {
                failed(self, why);
                sinfo!(self, client = %self.peer, why, "TLS handshake not completed");
                return Flow::Close;
            }
        };
        let conn = tls.get_ref().1;
        let desc = crate::tls::describe(conn);
        if let Some(chain) = conn.peer_certificates().filter(|c| !c.is_empty()) {
            self.client_dn = crate::pki::dn::Dn::from_cert_der(chain[0].as_ref())
                .ok()
                .map(|d| d.to_string());
            let verdict = match &self.ctx.validator {
                Some(v) => v
                    .validate(chain, crate::tls::PeerRole::Client)
                    .and_then(|_| {
                        crate::pki::dn::Dn::from_cert_der(chain[0].as_ref()).map_err(|e| {
                            Refusal::new(
                                crate::message::TlsRefusal::Unreadable,
                                format!("unreadable subject: {e}"),
                            )
                        })
                    }),
                None => Err(Refusal::new(
                    crate::message::TlsRefusal::Untrusted,
                    "no trust anchors configured",
                )),
            };
            if let Err(why) = &verdict {
                crate::metrics::inc(
                    "passerelle_tls_failures_total",
                    "TLS peers refused, by direction and reason",
                    &[("direction", "inbound"), ("reason", why.reason.label())],
                );
                sinfo!(self, client = %self.peer, dn = self.client_dn.as_deref().unwrap_or("-"), why = %why, "client certificate not valid");
            }
            // A valid certificate says who the client is: it no longer competes for the
            // unattributed share.
            if verdict.is_ok() {
                self.ticket.attribute();
            }
            self.client_cert = Some(verdict);
        }
        sinfo!(self, client = %self.peer, tls = %desc, client_dn = self.client_dn.as_deref().unwrap_or("-"), "TLS established");
        self.tls = Some(desc);
        self.r = BufReader::with_capacity(4 * 1024, Rewind::new(Box::new(tls) as BoxStream));
        self.helo = None;
        self.esmtp = false;
        self.tx = Transaction::default();
        Flow::Continue
    }
}
