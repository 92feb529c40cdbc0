//! DATA and BDAT: the message read, checked, received and queued, then answered.

/// Log lines keep the target they had before this code moved here (operators filter on it).
const LOG_TARGET: &str = "passerelle::intake::session";
use super::super::command::parse_bdat;
use super::super::data::{check_bdat, count_received, read_data, DataEnd, DataLimits};
use super::{Flow, Session, Transaction};
use crate::message::{new_queue_id, received_header, Envelope, ReceivedFrom};
use crate::reply::Reply;
use crate::util::clock::now_ms;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::AsyncReadExt;

impl Session {
    pub(super) fn data_ready(&mut self) -> bool {
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

    pub(super) async fn data(&mut self, arg: &str) -> Flow {
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

    pub(super) async fn bdat(&mut self, arg: &str) -> Flow {
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

    pub(super) async fn discard(&mut self, n: usize) -> std::io::Result<()> {
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
    pub(super) fn begin_content(&self) -> (String, Vec<u8>, usize) {
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
            None => 2 * super::super::data::READ_BLOCK,
        };
        let mut buf = Vec::with_capacity(header.len() + room);
        buf.extend_from_slice(header.as_bytes());
        (id, buf, header.len())
    }

    /// Loop check, durable store, then 250. `msg` is our Received header (`hl` bytes) and
    /// the client's content.
    pub(super) async fn accept_message(&mut self, id: String, mut msg: Vec<u8>, hl: usize) {
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
            crate::journal::accepted(env, msg, hl, client, &tx.bal_types);
        };
        match self
            .ctx
            .queue
            .enqueue_with(env, Arc::new(msg), stored)
            .await
        {
            Ok(()) => {
                tracing::info!(target: LOG_TARGET, queue_id = %id, client = %self.peer, from = %from, nrcpt,
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
                tracing::error!(target: LOG_TARGET, client = %self.peer, error = %e, "spool write failed");
                let r = if e.is_full() {
                    Reply::new(452, "4.3.1", "Insufficient system storage")
                } else {
                    Reply::new(451, "4.3.0", "Error: queue file write error")
                };
                self.reply(&r);
            }
        }
    }

    pub(super) fn received_header(&self, id: &str, tx: &Transaction) -> String {
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
}
