//! One SMTP session (RFC 5321 state machine), one task per connection. The syntax of each
//! command is `command`'s; here is what it means at this point of the dialogue.

use super::admission::{Reason, Ticket};
use super::command::{parse_bdat, parse_line, parse_mail, parse_rcpt, Verb};
use super::data::{check_bdat, count_received, read_data, DataEnd, DataLimits};
use super::ListenerContext;
use crate::config::StartTls;
use crate::journal::Stage;
use crate::message::{
    new_queue_id, now_ms, received_header, Envelope, ReceivedFrom, Recipient, Ret,
};
use crate::net::{read_line, BoxStream, Line, Rewind};
use crate::policy::{parse_path, RcptDecision};
use crate::reply::Reply;
use crate::tls::Refusal;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt, BufReader};

/// An INFO line of this session, unless the session is one of a flood's: unattributed and
/// over its listener's log budget (see `floodlog`).
macro_rules! sinfo {
    ($s:expr, $($t:tt)*) => {
        if $s.loud() {
            tracing::info!($($t)*);
        }
    };
}

/// The transaction being built between MAIL and the end of data.
#[derive(Default)]
struct Transaction {
    mail_from: Option<String>,
    ret: Option<Ret>,
    envid: Option<String>,
    eight_bit: bool,
    smtputf8: bool,
    /// The client's SIZE= estimate, to allocate the message buffer once.
    size: Option<usize>,
    recipients: Vec<Recipient>,
    /// The directory's BAL type of each recipient (for the journal's indicators).
    bal_types: Vec<Option<String>>,
    /// The message being received: our Received header, then the client's bytes (BDAT
    /// chunks so far). One buffer from intake to the spool and the first delivery.
    bdat: Vec<u8>,
    /// Queue id and Received header length, fixed when the content starts.
    started: Option<(String, usize)>,
    bdat_failed: bool,
}

pub struct Session {
    r: BufReader<Rewind<BoxStream>>,
    out: Vec<u8>,
    ctx: Arc<ListenerContext>,
    peer: SocketAddr,
    helo: Option<String>,
    esmtp: bool,
    tls: Option<String>,
    /// Subject DN of the client certificate (for logs and the Received header).
    client_dn: Option<String>,
    /// The client certificate's verdict (its subject when valid): `None` when none was presented.
    client_cert: Option<Result<crate::pki::dn::Dn, Refusal>>,
    /// The client's address is in `listener.clients`; otherwise only a listed certificate relays.
    ip_authorized: bool,
    /// On a listener with `establishments = true`: the establishment this session speaks for
    /// (by address at connect, by certificate at MAIL).
    establishment: Option<String>,
    tx: Transaction,
    errors: u32,
    junk: u32,
    line: Vec<u8>,
    /// The command being answered (`MAIL`, `RCPT`, ...) and its address (the sender at MAIL,
    /// the recipient at RCPT): what a refusal's log line and journal event name.
    current: &'static str,
    current_addr: Option<String>,
    /// The first reply code of the command being answered.
    answered: u16,
    /// Commands seen, and how many were accepted, per verb in order of first use: the
    /// disconnect line (`ehlo=1 mail=1 rcpt=1/2 data=1 quit=1 commands=5/6`).
    counts: Vec<(&'static str, u32, u32)>,
    /// This connection's slot: says when the listener ends the session (shed, or not
    /// attributed in time) and learns when the session shows who it is.
    ticket: Arc<Ticket>,
    /// Logged line by line (see `sinfo!`).
    loud: bool,
    /// Its end was logged with the reason (a limit's 421): no disconnect line follows, so a
    /// session shed under a flood is one line (issue 25 item 5).
    end_logged: bool,
}

enum Flow {
    Continue,
    Close,
}

impl Session {
    pub fn new(
        stream: BoxStream,
        peer: SocketAddr,
        ctx: Arc<ListenerContext>,
        ip_authorized: bool,
        ticket: Arc<Ticket>,
        loud: bool,
    ) -> Session {
        let establishment = if ctx.listener.establishments {
            ctx.policy
                .establishments
                .by_ip(peer.ip())
                .map(|e| e.name.clone())
        } else {
            None
        };
        Session {
            // Small: thousands of idle sessions each hold one; DATA is read around it.
            r: BufReader::with_capacity(4 * 1024, Rewind::new(stream)),
            out: Vec::with_capacity(1024),
            ctx,
            peer,
            helo: None,
            esmtp: false,
            tls: None,
            client_dn: None,
            client_cert: None,
            ip_authorized,
            establishment,
            tx: Transaction::default(),
            errors: 0,
            junk: 0,
            line: Vec::with_capacity(512),
            current: "CONNECT",
            current_addr: None,
            answered: 0,
            counts: Vec::new(),
            ticket,
            loud,
            end_logged: false,
        }
    }

    fn loud(&self) -> bool {
        self.loud || self.ticket.is_attributed()
    }

    /// A 421 of the listener's limits (shed, attribution or command timeout): counted, logged
    /// within the flood budget, sent.
    fn limit_close(&mut self, reason: Reason) {
        crate::metrics::inc(
            "passerelle_connections_refused_total",
            "Connections refused or ended by the listener's limits, by reason",
            &[
                ("listener", self.ctx.listener.name.as_str()),
                ("reason", reason.label()),
            ],
        );
        sinfo!(
            self,
            client = self.peer.to_string(),
            listener = self.ctx.listener.name.as_str(),
            after = self.current,
            reply = reason.reply().trim_end(),
            "end: {} {}",
            reason.log_text(),
            self.summary()
        );
        self.end_logged = true;
        self.raw(reason.reply());
    }

    fn reply(&mut self, r: &Reply) {
        if self.answered == 0 {
            self.answered = r.code;
        }
        if r.code >= 400 {
            self.errors += 1;
            let status = format!("{} {}", r.code, r.status.as_deref().unwrap_or(""));
            let mut labels = vec![
                ("listener", self.ctx.listener.name.as_str()),
                ("reply", status.trim()),
            ];
            if let Some(e) = &self.establishment {
                labels.push(("establishment", e.as_str()));
            }
            crate::metrics::inc(
                "passerelle_smtp_rejected_total",
                "SMTP commands refused, per listener and reply",
                &labels,
            );
            self.refused(r);
        }
        self.out.extend_from_slice(r.to_wire().as_bytes());
    }

    /// A refusal, as Postfix logs it: one line with the command, the client, the reply, and
    /// the sender and recipient when known. Refusals of a message (at MAIL, RCPT and the end
    /// of DATA) also go to the journal; protocol errors (`5.5.x`) do not.
    fn refused(&self, r: &Reply) {
        let (from, to) = match self.current {
            "MAIL" => (self.current_addr.as_deref(), None),
            "RCPT" => (self.tx.mail_from.as_deref(), self.current_addr.as_deref()),
            // At the end of DATA the transaction is over: its sender is kept here.
            _ => (
                self.tx
                    .mail_from
                    .as_deref()
                    .or(self.current_addr.as_deref()),
                None,
            ),
        };
        sinfo!(
            self,
            client = self.peer.to_string(),
            listener = self.ctx.listener.name.as_str(),
            command = self.current,
            reply = r.to_string(),
            from = from.map(|f| format!("<{f}>")),
            to = to.map(|t| format!("<{t}>")),
            helo = self.helo.as_deref(),
            establishment = self.establishment.as_deref(),
            "reject"
        );
        let stage = match self.current {
            "MAIL" => Stage::Mail,
            "RCPT" => Stage::Rcpt,
            "DATA" | "BDAT" => Stage::Data,
            _ => return,
        };
        let protocol = r
            .status
            .as_deref()
            .is_some_and(|s| s.get(1..4) == Some(".5."));
        if protocol || !crate::journal::enabled() {
            return;
        }
        let tls_failure = match &self.client_cert {
            Some(Err(why)) if stage == Stage::Mail => Some(why.reason.label()),
            _ => None,
        };
        crate::journal::refused(stage, r, self.journal_client(), from, to, tls_failure);
    }

    /// Who this session is, for the journal.
    fn journal_client(&self) -> crate::journal::Client {
        crate::journal::Client {
            listener: self.ctx.listener.name.clone(),
            ip: self.peer.ip().to_string(),
            helo: self.helo.clone(),
            dn: self.client_dn.clone(),
            tls: self.tls.clone(),
            establishment: self.establishment.clone(),
            ..crate::journal::Client::default()
        }
    }

    fn raw(&mut self, s: &str) {
        if self.answered == 0 {
            self.answered = s.get(..3).and_then(|c| c.parse().ok()).unwrap_or(0);
        }
        self.out.extend_from_slice(s.as_bytes());
    }

    /// Counts a command for the disconnect line, accepted when its first reply was positive.
    fn count(&mut self, verb: &'static str) {
        let ok = (200..400).contains(&self.answered);
        match self.counts.iter_mut().find(|(v, _, _)| *v == verb) {
            Some((_, n, good)) => {
                *n += 1;
                *good += u32::from(ok);
            }
            None => self.counts.push((verb, 1, u32::from(ok))),
        }
    }

    /// `ehlo=1 mail=1 rcpt=1/2 data=1 quit=1 commands=5/6`, as Postfix's smtpd says it.
    fn summary(&self) -> String {
        let mut out = String::new();
        let (mut all, mut good) = (0, 0);
        for (verb, n, ok) in &self.counts {
            all += n;
            good += ok;
            let v = verb.to_ascii_lowercase();
            if n == ok {
                out.push_str(&format!("{v}={n} "));
            } else {
                out.push_str(&format!("{v}={ok}/{n} "));
            }
        }
        if all == good {
            out.push_str(&format!("commands={all}"));
        } else {
            out.push_str(&format!("commands={good}/{all}"));
        }
        out
    }

    async fn flush(&mut self) -> std::io::Result<()> {
        if self.out.is_empty() {
            return Ok(());
        }
        let w = self.r.get_mut();
        let res = tokio::time::timeout(self.ctx.limits.timeout, async {
            w.write_all(&self.out).await?;
            w.flush().await
        })
        .await;
        self.out.clear();
        match res {
            Ok(r) => r,
            Err(_) => Err(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                "write timeout",
            )),
        }
    }

    pub async fn run(self, shutdown: tokio::sync::watch::Receiver<bool>) {
        let listener = self.ctx.listener.name.clone();
        let l = [("listener", listener.as_str())];
        crate::metrics::inc("passerelle_sessions_total", "SMTP sessions started", &l);
        crate::metrics::gauge_add(
            "passerelle_sessions_active",
            "SMTP sessions in progress",
            &l,
            1.0,
        );
        let mut this = self;
        // A client not yet known (it may be one of a flood's) has its one line at the end:
        // the disconnect line says who it was and what it did.
        if this.ticket.is_attributed() {
            tracing::info!(
                client = this.peer.to_string(),
                listener = listener.as_str(),
                "connect"
            );
        }
        this.dialogue(shutdown).await;
        if this.end_logged {
            // Its `end:` line said it.
        } else {
            sinfo!(
                this,
                client = this.peer.to_string(),
                listener = listener.as_str(),
                helo = this.helo.as_deref(),
                tls = this.tls.as_deref(),
                "disconnect {}",
                this.summary()
            );
        }
        crate::metrics::gauge_add(
            "passerelle_sessions_active",
            "SMTP sessions in progress",
            &l,
            -1.0,
        );
    }

    async fn dialogue(&mut self, mut shutdown: tokio::sync::watch::Receiver<bool>) {
        let banner = format!("220 {} ESMTP passerelle\r\n", self.ctx.hostname);
        self.raw(&banner);
        loop {
            // Replies to pipelined commands go out together, once the client's batch is read.
            if self.r.buffer().is_empty() {
                if let Err(e) = self.flush().await {
                    tracing::debug!(client = %self.peer, error = %e, "write failed");
                    return;
                }
            }
            let limit = self.ctx.limits.command_line_limit;
            let timeout = self.ticket.command_timeout(self.ctx.limits.timeout);
            let ticket = self.ticket.clone();
            let read = tokio::select! {
                r = read_line(&mut self.r, &mut self.line, limit, timeout) => r,
                reason = ticket.ended() => {
                    self.limit_close(reason);
                    let _ = self.flush().await;
                    return;
                }
                _ = shutdown.changed() => {
                    sinfo!(self, client = self.peer.to_string(), "421 shutting down");
                    self.raw("421 4.3.2 Service shutting down, closing connection\r\n");
                    let _ = self.flush().await;
                    return;
                }
            };
            let flow = match read {
                Err(e) if e.kind() == std::io::ErrorKind::TimedOut => {
                    self.limit_close(Reason::Timeout);
                    Flow::Close
                }
                Err(_) | Ok(Line::Eof) => {
                    tracing::debug!(client = %self.peer, "client disconnected");
                    return;
                }
                Ok(Line::TooLong { .. }) => {
                    self.reply(&Reply::new(500, "5.5.2", "Error: line too long"));
                    Flow::Continue
                }
                Ok(Line::Complete) => {
                    let line = std::mem::take(&mut self.line);
                    let f = self.command(&line).await;
                    self.line = line;
                    f
                }
            };
            if matches!(flow, Flow::Close) {
                let _ = self.flush().await;
                return;
            }
            if self.errors > self.ctx.limits.hard_error_limit {
                self.raw("421 4.7.0 Error: too many errors\r\n");
                let _ = self.flush().await;
                sinfo!(
                    self,
                    client = self.peer.to_string(),
                    errors = self.errors,
                    reply = "421 4.7.0 Error: too many errors",
                    "reject: hard_error_limit reached"
                );
                return;
            }
            if self.junk > self.ctx.limits.junk_command_limit {
                sinfo!(
                    self,
                    client = self.peer.to_string(),
                    reply = "421 4.7.0 Error: too many commands without mail",
                    "reject: junk_command_limit reached"
                );
                self.raw("421 4.7.0 Error: too many commands without mail\r\n");
                let _ = self.flush().await;
                return;
            }
        }
    }

    async fn command(&mut self, line: &[u8]) -> Flow {
        self.answered = 0;
        self.current_addr = None;
        let cmd = match parse_line(line) {
            Ok(c) => c,
            Err(r) => {
                self.current = "unknown";
                self.reply(&r);
                self.count("unknown");
                return Flow::Continue;
            }
        };
        let name = verb_name(cmd.verb);
        self.current = name;
        let flow = self.dispatch(cmd.verb, cmd.arg, cmd.word).await;
        self.count(name);
        flow
    }

    async fn dispatch(&mut self, verb: Verb, arg: &str, word: &str) -> Flow {
        let needs_tls = self.ctx.listener.starttls == StartTls::Require && self.tls.is_none();
        match verb {
            Verb::Ehlo | Verb::Helo => self.helo(verb == Verb::Ehlo, arg),
            Verb::Mail | Verb::Rcpt | Verb::Data | Verb::Bdat if needs_tls => {
                if verb == Verb::Bdat {
                    if let Some((n, _)) = parse_bdat(arg) {
                        if self.discard(n).await.is_err() {
                            return Flow::Close;
                        }
                    }
                }
                self.reply(&Reply::new(
                    530,
                    "5.7.0",
                    "Must issue a STARTTLS command first",
                ));
            }
            Verb::Mail => self.mail(arg).await,
            Verb::Rcpt => self.rcpt(arg).await,
            Verb::Data => return self.data(arg).await,
            Verb::Bdat => return self.bdat(arg).await,
            Verb::Rset => {
                self.junk += 1;
                self.tx = Transaction::default();
                self.reply(&Reply::new(250, "2.0.0", "Ok"));
            }
            Verb::Noop => {
                self.junk += 1;
                self.reply(&Reply::new(250, "2.0.0", "Ok"));
            }
            Verb::Vrfy if !self.ctx.limits.vrfy => {
                self.junk += 1;
                self.reply(&Reply::new(502, "5.5.1", "VRFY command is disabled"));
            }
            Verb::Vrfy => {
                self.junk += 1;
                self.reply(&Reply::new(
                    252,
                    "2.5.2",
                    "Cannot VRFY user, but will accept message and attempt delivery",
                ));
            }
            Verb::Help => {
                self.junk += 1;
                self.reply(&Reply::new(
                    214,
                    "2.0.0",
                    "Commands: EHLO HELO MAIL RCPT DATA BDAT RSET NOOP VRFY HELP QUIT STARTTLS",
                ));
            }
            Verb::Quit => {
                self.reply(&Reply::new(221, "2.0.0", "Bye"));
                return Flow::Close;
            }
            Verb::StartTls => return self.starttls(arg).await,
            Verb::Unknown => {
                self.current = "unknown";
                tracing::debug!(client = %self.peer, verb = %word.chars().take(16).collect::<String>(), "unknown command");
                self.reply(&Reply::new(500, "5.5.2", "Error: command not recognized"));
            }
        }
        Flow::Continue
    }

    fn helo(&mut self, extended: bool, arg: &str) {
        let verb = if extended { "EHLO" } else { "HELO" };
        self.junk += 1;
        if arg.is_empty() || arg.contains(char::is_whitespace) {
            self.reply(&Reply::new(
                501,
                "5.5.4",
                format!("Syntax: {verb} hostname"),
            ));
            return;
        }
        self.helo = Some(arg.to_string());
        self.esmtp = extended;
        self.tx = Transaction::default();
        if !self.esmtp {
            let r = format!("250 {}\r\n", self.ctx.hostname);
            self.raw(&r);
            return;
        }
        sinfo!(self, client = self.peer.to_string(), helo = arg, "EHLO");
        let mut caps = vec![
            self.ctx.hostname.clone(),
            "PIPELINING".into(),
            format!("SIZE {}", self.ctx.limits.message_size_limit),
        ];
        // Postfix's disable_vrfy_command: not advertised unless `[smtp] vrfy = true`.
        if self.ctx.limits.vrfy {
            caps.push("VRFY".into());
        }
        if self.tls.is_none()
            && self.ctx.tls.is_some()
            && self.ctx.listener.starttls != StartTls::Off
        {
            caps.push("STARTTLS".into());
        }
        caps.extend(
            [
                "ENHANCEDSTATUSCODES",
                "8BITMIME",
                "DSN",
                "SMTPUTF8",
                "CHUNKING",
            ]
            .map(String::from),
        );
        self.reply(&Reply::new(250, "", caps.join("\n")));
    }

    async fn mail(&mut self, arg: &str) {
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
        tracing::debug!(client = %self.peer, from = %tx.mail_from.as_deref().unwrap_or(""), "MAIL");
        self.tx = tx;
        self.junk = 0;
        self.reply(&Reply::new(250, "2.1.0", "Ok"));
    }

    /// Who is at the other end, as the sender checks see it. An establishment's MTA, once
    /// recognised, relays as a listed client does.
    fn client(&self) -> crate::policy::Client<'_> {
        crate::policy::Client {
            listener: &self.ctx.listener,
            certificate: self.client_cert.as_ref(),
            ip_authorized: self.ip_authorized || self.establishment.is_some(),
        }
    }

    /// On a listener of establishments, at MAIL: the establishment whose certificate DN (or
    /// else address) this client shows; `554 5.7.1` when none.
    fn attribute(&mut self) -> Option<Reply> {
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
    async fn establishment_sender(
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
            if !super::rate::admit(&name, rate) {
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
    async fn establishment_header(&mut self, null_sender: bool, content: &[u8]) -> Option<Reply> {
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

    async fn rcpt(&mut self, arg: &str) {
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

    fn data_ready(&mut self) -> bool {
        if self.tx.mail_from.is_none() {
            self.reply(&Reply::new(503, "5.5.1", "Error: need MAIL command"));
            false
        } else if self.tx.recipients.is_empty() {
            self.reply(&Reply::new(554, "5.5.1", "Error: no valid recipients"));
            false
        } else {
            true
        }
    }

    async fn data(&mut self, arg: &str) -> Flow {
        if !arg.is_empty() {
            self.reply(&Reply::new(501, "5.5.4", "Syntax: DATA"));
            return Flow::Continue;
        }
        if !self.data_ready() {
            return Flow::Continue;
        }
        self.raw("354 End data with <CR><LF>.<CR><LF>\r\n");
        if self.flush().await.is_err() {
            return Flow::Close;
        }
        let lim = DataLimits {
            max_size: self.ctx.limits.message_size_limit,
            max_line: self.ctx.limits.line_length_limit,
            // In stress mode both the per-line timeout and the grace before min_data_rate
            // applies shrink to stress_timeout.
            timeout: self.ticket.command_timeout(self.ctx.limits.timeout),
            min_rate: self.ctx.limits.min_data_rate,
        };
        let (id, mut body, hl) = self.begin_content();
        let lim = DataLimits {
            max_size: lim.max_size + hl,
            ..lim
        };
        match read_data(&mut self.r, &mut body, &lim).await {
            DataEnd::Ok => {
                self.accept_message(id, body, hl).await;
                Flow::Continue
            }
            DataEnd::Refused(e) => {
                let r = e.reply(lim.max_size - hl, lim.max_line);
                self.reply(&r);
                self.tx = Transaction::default();
                Flow::Continue
            }
            DataEnd::Lost(why) => {
                sinfo!(self, client = %self.peer, why = %why, "connection lost during DATA; nothing queued");
                if why.contains("timeout") || why.contains("rate") {
                    self.raw("421 4.4.2 Error: timeout exceeded\r\n");
                }
                Flow::Close
            }
        }
    }

    async fn bdat(&mut self, arg: &str) -> Flow {
        let Some((size, last)) = parse_bdat(arg) else {
            self.reply(&Reply::new(501, "5.5.4", "Syntax: BDAT size [LAST]"));
            return Flow::Close;
        };
        if !self.data_ready() {
            // The chunk still has to be read off the wire to stay in sync.
            return if self.discard(size).await.is_ok() {
                Flow::Continue
            } else {
                Flow::Close
            };
        }
        let max = self.ctx.limits.message_size_limit;
        if self.tx.started.is_none() {
            let (id, buf, hl) = self.begin_content();
            self.tx.bdat = buf;
            self.tx.started = Some((id, hl));
        }
        let hl = self.tx.started.as_ref().map_or(0, |(_, hl)| *hl);
        // saturating: `size` is the client's number, up to usize::MAX.
        let too_big = (self.tx.bdat.len() - hl).saturating_add(size) > max;
        if too_big || self.tx.bdat_failed {
            if self.discard(size).await.is_err() {
                return Flow::Close;
            }
            self.tx.bdat_failed = true;
            self.tx.bdat.truncate(hl);
            if last || too_big {
                self.reply(&Reply::new(
                    552,
                    "5.3.4",
                    format!("Message size exceeds fixed limit of {max} bytes"),
                ));
                self.tx = Transaction::default();
            } else {
                self.reply(&Reply::new(250, "2.0.0", format!("{size} octets received")));
            }
            return Flow::Continue;
        }
        let start = self.tx.bdat.len();
        self.tx.bdat.resize(start + size, 0);
        let read = tokio::time::timeout(
            self.ctx.limits.timeout
                + Duration::from_secs((size / self.ctx.limits.min_data_rate.max(1)) as u64),
            self.r.read_exact(&mut self.tx.bdat[start..]),
        )
        .await;
        if !matches!(read, Ok(Ok(_))) {
            sinfo!(self, client = %self.peer, "connection lost during BDAT; nothing queued");
            return Flow::Close;
        }
        if !last {
            self.reply(&Reply::new(250, "2.0.0", format!("{size} octets received")));
            return Flow::Continue;
        }
        let body = std::mem::take(&mut self.tx.bdat);
        let id = self.tx.started.take().map(|(id, _)| id).unwrap_or_default();
        if let Err(e) = check_bdat(&body[hl..], self.ctx.limits.line_length_limit) {
            let r = e.reply(max, self.ctx.limits.line_length_limit);
            self.reply(&r);
            self.tx = Transaction::default();
            return Flow::Continue;
        }
        self.accept_message(id, body, hl).await;
        Flow::Continue
    }

    async fn discard(&mut self, n: usize) -> std::io::Result<()> {
        let mut left = n as u64;
        let mut sink = tokio::io::sink();
        let mut take = (&mut self.r).take(left);
        let copied = tokio::time::timeout(
            self.ctx.limits.timeout,
            tokio::io::copy(&mut take, &mut sink),
        )
        .await
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "timeout"))??;
        left -= copied;
        if left > 0 {
            return Err(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                "short chunk",
            ));
        }
        Ok(())
    }

    /// The queue id and a buffer that starts with our Received header, when content begins.
    fn begin_content(&self) -> (String, Vec<u8>, usize) {
        let id = new_queue_id();
        let header = self.received_header(&id, &self.tx);
        // Room for the declared size (a little over: it is an estimate), or for two DATA
        // reads (see read_data: most messages then never move); accept_message gives back
        // what is left. A declared size counts up to 1 MiB only: it is the client's word, and
        // nothing is received yet.
        let room = match self.tx.size {
            Some(n) => {
                let n = n.min(1 << 20);
                (n + n / 16).max(4096)
            }
            None => 2 * super::data::READ_BLOCK,
        };
        let mut buf = Vec::with_capacity(header.len() + room);
        buf.extend_from_slice(header.as_bytes());
        (id, buf, header.len())
    }

    /// Loop check, durable store, then 250. `msg` is our Received header (`hl` bytes) and
    /// the client's content.
    async fn accept_message(&mut self, id: String, mut msg: Vec<u8>, hl: usize) {
        let started = std::time::Instant::now();
        // The message stays in memory until its first delivery: not with a read block's slack.
        if msg.capacity() - msg.len() > 4096 {
            msg.shrink_to_fit();
        }
        let tx = std::mem::take(&mut self.tx);
        self.current_addr = tx.mail_from.clone();
        let hops = count_received(&msg[hl..]);
        if hops >= self.ctx.limits.hop_count_limit {
            let r = Reply::new(
                554,
                "5.4.0",
                format!("Error: too many hops ({hops} Received headers): mail loop?"),
            );
            self.reply(&r);
            return;
        }
        let null_sender = tx.mail_from.as_deref().is_none_or(str::is_empty);
        if let Some(r) = self.establishment_header(null_sender, &msg[hl..]).await {
            self.reply(&r);
            return;
        }
        let now = now_ms();
        let env = Envelope {
            id: id.clone(),
            received: now / 1000,
            listener: self.ctx.listener.name.clone(),
            client: self.peer.ip().to_string(),
            helo: self.helo.clone().unwrap_or_default(),
            mail_from: tx.mail_from.clone().unwrap_or_default(),
            ret: tx.ret,
            envid: tx.envid.clone(),
            eight_bit: tx.eight_bit,
            smtputf8: tx.smtputf8,
            recipients: tx.recipients,
            establishment: self.establishment.clone(),
        };
        let size = msg.len();
        let (from, nrcpt) = (env.mail_from.clone(), env.recipients.len());
        // Journaled once stored and before the scheduler has it, so the journal sees the
        // acceptance before any delivery attempt.
        let client = self.journal_client();
        let stored = |env: &Envelope, msg: &[u8]| {
            crate::journal::accepted(env, msg, client, &tx.bal_types);
        };
        match self
            .ctx
            .queue
            .enqueue_with(env, Arc::new(msg), stored)
            .await
        {
            Ok(()) => {
                tracing::info!(queue_id = %id, client = %self.peer, from = %from, nrcpt,
                    size, tls = self.tls.as_deref().unwrap_or("-"),
                    establishment = self.establishment.as_deref(), "queued");
                self.reply(&Reply::new(250, "2.0.0", format!("Ok: queued as {id}")));
                let l = [("listener", self.ctx.listener.name.as_str())];
                let mut by = l.to_vec();
                if let Some(e) = &self.establishment {
                    by.push(("establishment", e.as_str()));
                }
                crate::metrics::inc(
                    "passerelle_messages_accepted_total",
                    "messages queued (250 after fsync)",
                    &by,
                );
                crate::metrics::observe(
                    "passerelle_accept_seconds",
                    "end of data to 250: loop check, Received header, fsync",
                    &l,
                    started.elapsed(),
                );
            }
            Err(e) => {
                tracing::error!(client = %self.peer, error = %e, "spool write failed");
                let r = if e.is_full() {
                    Reply::new(452, "4.3.1", "Insufficient system storage")
                } else {
                    Reply::new(451, "4.3.0", "Error: queue file write error")
                };
                self.reply(&r);
            }
        }
    }

    fn received_header(&self, id: &str, tx: &Transaction) -> String {
        let proto = match (self.esmtp, self.tls.is_some()) {
            (false, _) => "SMTP",
            (true, false) => "ESMTP",
            (true, true) => "ESMTPS",
        };
        let proto = if tx.smtputf8 {
            format!("UTF8{proto}")
        } else {
            proto.to_string()
        };
        let from = ReceivedFrom {
            helo: self.helo.as_deref().unwrap_or("unknown"),
            ip: self.peer.ip(),
            tls: self.tls.as_deref(),
            client_dn: self.client_dn.as_deref(),
            protocol: &proto,
        };
        let rcpt = (tx.recipients.len() == 1).then(|| tx.recipients[0].address.as_str());
        received_header(Some(&from), &self.ctx.hostname, id, rcpt, now_ms() / 1000)
    }

    async fn starttls(&mut self, arg: &str) -> Flow {
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

/// The command's name in log lines and the disconnect summary.
fn verb_name(v: Verb) -> &'static str {
    match v {
        Verb::Ehlo => "EHLO",
        Verb::Helo => "HELO",
        Verb::Mail => "MAIL",
        Verb::Rcpt => "RCPT",
        Verb::Data => "DATA",
        Verb::Bdat => "BDAT",
        Verb::Rset => "RSET",
        Verb::Noop => "NOOP",
        Verb::Vrfy => "VRFY",
        Verb::Help => "HELP",
        Verb::Quit => "QUIT",
        Verb::StartTls => "STARTTLS",
        Verb::Unknown => "unknown",
    }
}
