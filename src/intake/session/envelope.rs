//! MAIL and RCPT: who is sending (the establishment, its sender authorisation, the From:
//! check's first half) and each recipient's decision.

/// Log lines keep the target they had before this code moved here (operators filter on it).
const LOG_TARGET: &str = "passerelle::intake::session";
use super::super::command::{parse_mail, parse_rcpt};
use super::{Session, Transaction};
use crate::message::Recipient;
use crate::policy::{parse_path, RcptDecision};
use crate::reply::Reply;

impl Session {
    pub(super) async fn mail(&mut self, arg: &str) {
        if self.helo.is_none() {
            self.reply(&Reply::new(503, "5.5.1", "Error: send HELO/EHLO first"));
            return;
        }
        if self.tx.mail_from.is_some() {
            self.reply(&Reply::new(503, "5.5.1", "Error: nested MAIL command"));
            return;
        }
        if let Some(r) = self.ctx.policy.check_client(&self.client()) {
            return self.reply(&r);
        }
        if let Some(r) = self.attribute() {
            return self.reply(&r);
        }
        let m = match parse_mail(arg) {
            Ok(m) => m,
            Err(r) => return self.reply(&r),
        };
        let sender = match parse_path(m.path) {
            Ok(a) => a,
            Err(e) => {
                self.reply(&Reply::new(
                    501,
                    "5.1.7",
                    format!("Bad sender address syntax: {e}"),
                ));
                return;
            }
        };
        self.current_addr = Some(sender.as_ref().map(|a| a.to_string()).unwrap_or_default());
        let domain = sender.as_ref().map(|a| a.domain.as_str());
        if let Some(r) = self.ctx.policy.check_sender(&self.client(), domain) {
            return self.reply(&r);
        }
        if let Some(r) = self.establishment_sender(sender.as_ref()).await {
            return self.reply(&r);
        }
        if m.size
            .is_some_and(|n| n > self.ctx.limits.message_size_limit)
        {
            return self.reply(&Reply::new(
                552,
                "5.3.4",
                "Message size exceeds fixed limit",
            ));
        }
        let tx = Transaction {
            mail_from: Some(sender.map(|a| a.to_string()).unwrap_or_default()),
            ret: m.ret,
            envid: m.envid,
            eight_bit: m.eight_bit,
            smtputf8: m.smtputf8,
            size: m.size,
            ..Transaction::default()
        };
        tracing::debug!(target: LOG_TARGET, client = %self.peer, from = %tx.mail_from.as_deref().unwrap_or(""), "MAIL");
        self.tx = tx;
        self.junk = 0;
        self.reply(&Reply::new(250, "2.1.0", "Ok"));
    }

    /// Who is at the other end, as the sender checks see it. An establishment's MTA, once
    /// recognised, relays as a listed client does.
    pub(super) fn client(&self) -> crate::policy::Client<'_> {
        crate::policy::Client {
            listener: &self.ctx.listener,
            certificate: self.client_cert.as_ref(),
            ip_authorized: self.ip_authorized || self.establishment.is_some(),
        }
    }

    /// On a listener of establishments, at MAIL: the establishment whose certificate DN (or
    /// else address) this client shows; `554 5.7.1` when none.
    pub(super) fn attribute(&mut self) -> Option<Reply> {
        if !self.ctx.listener.establishments {
            return None;
        }
        let dn = match &self.client_cert {
            Some(Ok(dn)) => Some(dn),
            _ => None,
        };
        let table = &self.ctx.policy.establishments;
        match table.attribute(self.peer.ip(), dn) {
            Some(e) => {
                if self.establishment.as_deref() != Some(e.name.as_str()) {
                    sinfo!(self, client = %self.peer, establishment = %e.name,
                        client_dn = self.client_dn.as_deref().unwrap_or("-"), "establishment recognised");
                }
                self.establishment = Some(e.name.clone());
                self.ticket.attribute();
                None
            }
            None => {
                self.establishment = None;
                Some(Reply::new(
                    554,
                    "5.7.1",
                    format!(
                        "Error: relay access denied: {} is no establishment's MTA{}",
                        self.peer.ip(),
                        match &self.client_dn {
                            Some(dn) => format!(" (certificate \"{dn}\" is not listed either)"),
                            None => String::new(),
                        }
                    ),
                ))
            }
        }
    }

    /// The sending establishment's checks at MAIL: the sender is one of its addresses, then
    /// its rate and queue limits.
    pub(super) async fn establishment_sender(
        &mut self,
        sender: Option<&crate::policy::Address>,
    ) -> Option<Reply> {
        let name = self.establishment.clone()?;
        let policy = self.ctx.policy.clone();
        let est = policy.establishments.get(&name)?;
        let structures = match sender {
            Some(a) => match policy.structures_of(a).await {
                Ok(s) => s,
                Err(r) => return Some(r),
            },
            None => Vec::new(),
        };
        let text = sender.map(|a| a.to_string());
        if let Some(r) = policy
            .establishments
            .check_sender(est, text.as_deref(), &structures)
        {
            return Some(r);
        }
        if let Some(max) = est.max_queued {
            let queued = self.ctx.queue.handle().queued_for(&name).await;
            if queued >= max {
                return Some(Reply::new(
                    452,
                    "4.3.1",
                    format!("Error: establishment {name} has {queued} messages queued (max_queued {max}), try again later"),
                ));
            }
        }
        if let Some(rate) = est.max_message_rate {
            if !super::super::rate::admit(&name, rate) {
                return Some(Reply::new(
                    450,
                    "4.7.1",
                    format!("Error: establishment {name} exceeds its message rate ({rate} per minute), try again later"),
                ));
            }
        }
        None
    }

    /// After DATA, with `sender_check = "envelope+header"`: every `From:` address is one of
    /// the sending establishment's (`content` is the client's bytes).
    pub(super) async fn establishment_header(
        &mut self,
        null_sender: bool,
        content: &[u8],
    ) -> Option<Reply> {
        let name = self.establishment.as_deref()?;
        let policy = &self.ctx.policy;
        let est = policy.establishments.get(name)?;
        if est.sender_check == crate::config::SenderCheck::Envelope {
            return None;
        }
        let from = crate::policy::establishment::from_header(content);
        let mut known: Vec<(String, Vec<String>)> = Vec::new();
        if let crate::policy::establishment::FromHeader::Addresses(list) = &from {
            for a in list {
                let Ok(Some(addr)) = crate::policy::parse_path(a) else {
                    continue;
                };
                match policy.structures_of(&addr).await {
                    Ok(s) => known.push((a.clone(), s)),
                    Err(r) => return Some(r),
                }
            }
        }
        let structures_of = |a: &str| {
            known
                .iter()
                .find(|(k, _)| k == a)
                .map(|(_, s)| s.clone())
                .unwrap_or_default()
        };
        policy
            .establishments
            .check_header(est, null_sender, &from, &structures_of)
    }

    pub(super) async fn rcpt(&mut self, arg: &str) {
        if self.tx.mail_from.is_none() {
            self.reply(&Reply::new(503, "5.5.1", "Error: need MAIL command"));
            return;
        }
        let args = match parse_rcpt(arg) {
            Ok(a) => a,
            Err(r) => return self.reply(&r),
        };
        let path = args.path;
        self.current_addr = Some(path.to_string());
        if self.tx.recipients.len() >= self.ctx.limits.recipient_limit {
            self.reply(&Reply::new(452, "4.5.3", "Error: too many recipients"));
            return;
        }
        let addr = match parse_path(path) {
            Ok(Some(a)) => a,
            Ok(None) => {
                self.reply(&Reply::new(501, "5.1.3", "Bad recipient address syntax"));
                return;
            }
            Err(e) => {
                let r = if e.is_relay_attempt() {
                    Reply::new(554, "5.7.1", format!("<{path}>: Relay access denied: {e}"))
                } else {
                    Reply::new(501, "5.1.3", format!("Bad recipient address syntax: {e}"))
                };
                self.reply(&r);
                return;
            }
        };
        let (notify, orcpt) = (args.notify, args.orcpt);
        let decision = self
            .ctx
            .policy
            .check_recipient(&self.ctx.listener.routes, &addr)
            .await;
        match decision {
            RcptDecision::Accept {
                route,
                transport,
                bal_type,
            } => {
                sinfo!(self, client = %self.peer, from = %self.tx.mail_from.as_deref().unwrap_or(""),
                    to = %addr, route = %route, transport = %transport, bal_type = bal_type.as_deref().unwrap_or("-"),
                    "recipient accepted");
                self.tx.bal_types.push(bal_type);
                self.tx.recipients.push(Recipient {
                    address: addr.to_string(),
                    orcpt,
                    notify,
                    route,
                    transport,
                });
                self.reply(&Reply::new(250, "2.1.5", "Ok"));
            }
            RcptDecision::Reject(r) => self.reply(&r),
        }
    }
}
