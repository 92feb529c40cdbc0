//! One SMTP session (RFC 5321 state machine), one task per connection. The syntax of each
//! command is `command`'s; here is what it means at this point of the dialogue.

use super::admission::{Reason, Ticket};
use super::command::{parse_bdat, parse_line, Verb};
use super::ListenerContext;
use crate::config::StartTls;
use crate::journal::Stage;
use crate::message::{Recipient, Ret};
use crate::net::{read_line, BoxStream, Line, Rewind};
use crate::reply::Reply;
use crate::tls::Refusal;
use std::net::SocketAddr;
use std::sync::Arc;
use tokio::io::{AsyncWriteExt, BufReader};

/// An INFO line of this session, unless the session is one of a flood's: unattributed and
/// over its listener's log budget (see `floodlog`).
macro_rules! sinfo {
    ($s:expr, $($t:tt)*) => {
        if $s.loud() {
            tracing::info!(target: "passerelle::intake::session", $($t)*);
        }
    };
}

mod content;
mod envelope;
mod starttls;

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
