//! The SMTP client: one connection to one next hop, any number of transactions on it.
//!
//! Hand-written over tokio rather than mail-send: delivery needs per-recipient replies, RFC 2920
//! pipelining of MAIL/RCPT, DSN parameters passed through, a TLS step whose verifier pins the
//! peer's certificate DN, and the guarantee that bytes a server sends along with its STARTTLS
//! reply are discarded; mail-send 0.6 exposes none of these as a whole.

use crate::message::{
    Delivered, Envelope, Failure, FailureKind, Outcome, Remote, Ret, TlsRefusal, NOTIFY_DELAY,
    NOTIFY_FAILURE, NOTIFY_NEVER, NOTIFY_SUCCESS,
};
use crate::net::{read_line, BoxStream, Line};
use crate::reply::Reply;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::{AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

#[derive(Debug, Default, Clone)]
pub struct Caps {
    pub pipelining: bool,
    pub starttls: bool,
    pub size: Option<u64>,
    pub eightbit: bool,
    pub smtputf8: bool,
    pub dsn: bool,
}

impl Caps {
    fn from_ehlo(r: &Reply) -> Caps {
        let mut c = Caps::default();
        for line in r.text.lines().skip(1) {
            let mut words = line.split_whitespace();
            let kw = words.next().unwrap_or("").to_ascii_uppercase();
            match kw.as_str() {
                "PIPELINING" => c.pipelining = true,
                "STARTTLS" => c.starttls = true,
                "8BITMIME" => c.eightbit = true,
                "SMTPUTF8" => c.smtputf8 = true,
                "DSN" => c.dsn = true,
                "SIZE" => c.size = words.next().and_then(|s| s.parse().ok()).filter(|&n| n > 0),
                _ => {}
            }
        }
        c
    }
}

/// How the TLS step goes for this connection.
#[derive(Clone)]
pub enum TlsMode {
    None,
    /// Use STARTTLS when offered; without it, go on in clear.
    Opportunistic(Arc<rustls::ClientConfig>),
    /// STARTTLS is mandatory; the config's verifier decides whether the peer is acceptable.
    Required(Arc<rustls::ClientConfig>),
    /// The MSSanté trust space: STARTTLS mandatory, our certificate presented, the peer's
    /// chain validated against our anchors and CRLs, and its subject DN one of `allowed`
    /// (the whitelist DNs of `domain`). The DN pin replaces the host name check.
    Mutual {
        config: Arc<rustls::ClientConfig>,
        validator: crate::tls::PeerValidator,
        allowed: Arc<[crate::pki::dn::Dn]>,
        domain: String,
    },
}

pub struct ClientOptions {
    pub helo: String,
    /// The name the certificate is checked against (next hop or MX host).
    pub server_name: String,
    pub tls: TlsMode,
    pub connect_timeout: Duration,
    pub command_timeout: Duration,
}

pub struct Client {
    r: BufReader<BoxStream>,
    pub caps: Caps,
    /// `TLSv1.3 with cipher ...` once encrypted.
    pub tls: Option<String>,
    /// The peer certificate's subject DN, as written, once encrypted.
    pub peer_dn: Option<String>,
    /// The peer DN this connection has proven in mutual TLS: a valid chain (anchors, CRLs,
    /// dates) whose subject was declared for the domain it was opened for. Another domain may
    /// use the connection only if it declares this DN too (`share::may_carry`).
    pub verified_dn: Option<crate::pki::dn::Dn>,
    /// The TLS session was resumed (no certificate sent again): the checks above were still
    /// made, on the chain the original handshake verified (see `check_trust_space_peer`).
    pub resumed: bool,
    /// The host: `host[ip]:port` in logs and DSNs.
    pub remote: Remote,
    pub transactions: usize,
    /// When it was opened: a connection older than `connection_reuse_time` is not reused.
    pub opened: Instant,
    command_timeout: Duration,
    line: Vec<u8>,
}

const REPLY_LINE_MAX: usize = 4096;

impl Client {
    pub async fn connect(addr: SocketAddr, opts: &ClientOptions) -> Result<Client, Failure> {
        let remote = Remote {
            host: opts.server_name.clone(),
            addr,
        };
        let connect_err = |e: String| Failure::new(FailureKind::Connect, e).at(&remote);
        let tcp = tokio::time::timeout(opts.connect_timeout, TcpStream::connect(addr))
            .await
            .map_err(|_| connect_err("timeout".into()))?
            .map_err(|e| connect_err(e.to_string()))?;
        let _ = tcp.set_nodelay(true);
        let mut c = Client {
            r: BufReader::with_capacity(16 * 1024, Box::new(tcp) as BoxStream),
            caps: Caps::default(),
            tls: None,
            peer_dn: None,
            verified_dn: None,
            resumed: false,
            remote,
            transactions: 0,
            opened: Instant::now(),
            command_timeout: opts.command_timeout,
            line: Vec::with_capacity(512),
        };
        let banner = c.read_reply().await?;
        if banner.code != 220 {
            return Err(Failure::refused(&c.remote, banner));
        }
        c.ehlo(&opts.helo).await?;
        let config = match &opts.tls {
            TlsMode::None => None,
            TlsMode::Opportunistic(cfg) => c.caps.starttls.then(|| cfg.clone()),
            TlsMode::Required(cfg) | TlsMode::Mutual { config: cfg, .. } => {
                if !c.caps.starttls {
                    let _ = c.command("QUIT\r\n").await;
                    return Err(c.tls_failure(
                        TlsRefusal::NoStartTls,
                        "STARTTLS not offered; TLS is required, not sending in clear",
                    ));
                }
                Some(cfg.clone())
            }
        };
        if let Some(cfg) = config {
            c = c.starttls(cfg, &opts.server_name, &opts.tls).await?;
            c.ehlo(&opts.helo).await?;
        }
        Ok(c)
    }

    fn tls_failure(&self, reason: TlsRefusal, text: impl Into<String>) -> Failure {
        Failure::new(FailureKind::Tls(reason), text).at(&self.remote)
    }

    fn io_failure(&self, text: impl Into<String>) -> Failure {
        Failure::new(FailureKind::Io, text).at(&self.remote)
    }

    async fn ehlo(&mut self, helo: &str) -> Result<(), Failure> {
        let r = self.command(&format!("EHLO {helo}\r\n")).await?;
        if r.code == 250 {
            self.caps = Caps::from_ehlo(&r);
            return Ok(());
        }
        let r = self.command(&format!("HELO {helo}\r\n")).await?;
        if r.code != 250 {
            return Err(Failure::refused(&self.remote, r));
        }
        self.caps = Caps::default();
        Ok(())
    }

    async fn starttls(
        mut self,
        cfg: Arc<rustls::ClientConfig>,
        name: &str,
        mode: &TlsMode,
    ) -> Result<Client, Failure> {
        let r = self.command("STARTTLS\r\n").await?;
        if r.code != 220 {
            return Err(self.tls_failure(
                TlsRefusal::StartTlsRefused,
                format!("STARTTLS refused: {r}"),
            ));
        }
        // into_inner drops whatever the server sent after its 220: bytes injected before the
        // handshake must never be read as if they came over TLS.
        let remote = self.remote.clone();
        let tls_failure =
            |reason, text: String| Failure::new(FailureKind::Tls(reason), text).at(&remote);
        let stream = self.r.into_inner();
        let server_name =
            rustls::pki_types::ServerName::try_from(name.to_string()).map_err(|e| {
                tls_failure(
                    TlsRefusal::Handshake,
                    format!("bad server name {name:?}: {e}"),
                )
            })?;
        let connector = tokio_rustls::TlsConnector::from(cfg);
        let tls =
            tokio::time::timeout(self.command_timeout, connector.connect(server_name, stream))
                .await
                .map_err(|_| tls_failure(TlsRefusal::Handshake, "handshake timeout".into()))?
                .map_err(|e| tls_failure(TlsRefusal::Handshake, e.to_string()))?;
        let desc = crate::tls::describe(tls.get_ref().1);
        let resumed = tls.get_ref().1.handshake_kind() == Some(rustls::HandshakeKind::Resumed);
        // On a resumed session the server sends no certificate: rustls hands back the chain
        // of the handshake that created the session (kept with the ticket), and the same
        // checks run on it below, with today's CRLs and clock.
        let chain = tls.get_ref().1.peer_certificates().unwrap_or(&[]);
        let peer_dn = chain
            .first()
            .and_then(|c| crate::pki::dn::Dn::from_cert_der(c.as_ref()).ok());
        if let TlsMode::Mutual {
            validator,
            allowed,
            domain,
            ..
        } = mode
        {
            check_trust_space_peer(chain, peer_dn.as_ref(), validator, allowed, domain)
                .map_err(|(reason, why)| tls_failure(reason, why))?;
        }
        let verified_dn = match mode {
            TlsMode::Mutual { .. } => peer_dn.clone(),
            _ => None,
        };
        Ok(Client {
            r: BufReader::with_capacity(16 * 1024, Box::new(tls) as BoxStream),
            caps: Caps::default(),
            tls: Some(desc),
            peer_dn: peer_dn.map(|d| d.to_string()),
            verified_dn,
            resumed,
            ..self
        })
    }

    async fn write(&mut self, data: &[u8]) -> Result<(), Failure> {
        self.write_parts(&[data]).await
    }

    /// Writes `parts` one after the other, gathered (writev: a message and its terminator
    /// leave in one segment, so the peer wakes once), then flushes; one timeout for all.
    async fn write_parts(&mut self, parts: &[&[u8]]) -> Result<(), Failure> {
        let remote = &self.remote;
        let w = self.r.get_mut();
        let mut slices: Vec<std::io::IoSlice<'_>> =
            parts.iter().map(|p| std::io::IoSlice::new(p)).collect();
        tokio::time::timeout(self.command_timeout, async {
            let mut rest = &mut slices[..];
            while !rest.is_empty() {
                let n = w.write_vectored(rest).await?;
                if n == 0 {
                    return Err(std::io::ErrorKind::WriteZero.into());
                }
                std::io::IoSlice::advance_slices(&mut rest, n);
            }
            w.flush().await
        })
        .await
        .map_err(|_| Failure::new(FailureKind::Io, "write timeout").at(remote))?
        .map_err(|e| Failure::new(FailureKind::Io, e.to_string()).at(remote))
    }

    /// One command and its reply (`establishment test` walks MAIL, RCPT, RSET with it).
    pub async fn command(&mut self, cmd: &str) -> Result<Reply, Failure> {
        self.write(cmd.as_bytes()).await?;
        self.read_reply().await
    }

    /// Reads one (possibly multi-line) reply.
    pub async fn read_reply(&mut self) -> Result<Reply, Failure> {
        let mut text = String::new();
        let mut code = 0u16;
        for _ in 0..100 {
            let l = read_line(
                &mut self.r,
                &mut self.line,
                REPLY_LINE_MAX,
                self.command_timeout,
            )
            .await
            .map_err(|e| self.io_failure(e.to_string()))?;
            match l {
                Line::Complete => {}
                Line::TooLong { .. } => {
                    return Err(
                        Failure::new(FailureKind::Protocol, "reply line too long").at(&self.remote)
                    )
                }
                Line::Eof => return Err(self.io_failure("connection closed")),
            }
            let s = String::from_utf8_lossy(&self.line);
            let s = s.trim_end_matches(['\r', '\n']);
            let c: u16 = s
                .get(..3)
                .and_then(|c| c.parse().ok())
                .filter(|c| (200..600).contains(c))
                .ok_or_else(|| {
                    Failure::new(FailureKind::Protocol, format!("malformed reply {s:?}"))
                        .at(&self.remote)
                })?;
            if code != 0 && c != code {
                return Err(
                    Failure::new(FailureKind::Protocol, "inconsistent multi-line reply")
                        .at(&self.remote),
                );
            }
            code = c;
            if !text.is_empty() {
                text.push('\n');
            }
            text.push_str(s.get(4..).unwrap_or(""));
            if s.as_bytes().get(3) != Some(&b'-') {
                return Ok(split_status(code, text));
            }
        }
        Err(Failure::new(FailureKind::Protocol, "reply has too many lines").at(&self.remote))
    }

    /// One transaction. `rcpts` are (index, address, notify, orcpt). Returns one outcome per
    /// recipient, or a session error when nothing could be decided per recipient.
    pub async fn send(
        &mut self,
        env: &Envelope,
        rcpts: &[(usize, &crate::message::Recipient)],
        body: &[u8],
    ) -> Result<Vec<(usize, Outcome)>, Failure> {
        let mut mail = format!("MAIL FROM:<{}>", env.mail_from);
        if self.caps.size.is_some() {
            mail.push_str(&format!(" SIZE={}", body.len()));
        }
        if env.eight_bit && self.caps.eightbit {
            mail.push_str(" BODY=8BITMIME");
        }
        if env.smtputf8 && self.caps.smtputf8 {
            mail.push_str(" SMTPUTF8");
        }
        if self.caps.dsn {
            match env.ret {
                Some(Ret::Full) => mail.push_str(" RET=FULL"),
                Some(Ret::Hdrs) => mail.push_str(" RET=HDRS"),
                None => {}
            }
            // The client's ENVID passes unchanged; without one, ours names the message for the
            // DSNs that come back (journal: receipts).
            match &env.envid {
                Some(id) => mail.push_str(&format!(" ENVID={}", xtext(id))),
                None if !env.id.is_empty() => mail.push_str(&format!(
                    " ENVID={}",
                    xtext(&crate::message::report::our_envid(&env.id))
                )),
                None => {}
            }
        }
        mail.push_str("\r\n");
        let mut cmds = vec![mail];
        for (_, r) in rcpts {
            let mut c = format!("RCPT TO:<{}>", r.address);
            if self.caps.dsn {
                if r.notify != 0 {
                    let mut n = Vec::new();
                    if r.notify & NOTIFY_NEVER != 0 {
                        n.push("NEVER");
                    } else {
                        for (f, w) in [
                            (NOTIFY_SUCCESS, "SUCCESS"),
                            (NOTIFY_FAILURE, "FAILURE"),
                            (NOTIFY_DELAY, "DELAY"),
                        ] {
                            if r.notify & f != 0 {
                                n.push(w);
                            }
                        }
                    }
                    c.push_str(&format!(" NOTIFY={}", n.join(",")));
                }
                if let Some(o) = &r.orcpt {
                    c.push_str(&format!(" ORCPT=rfc822;{}", xtext(o)));
                }
            }
            c.push_str("\r\n");
            cmds.push(c);
        }
        // RFC 2920: MAIL, every RCPT and DATA in one write when the server pipelines (DATA
        // may end a group): one round trip before the content instead of two.
        let mut data_reply = None;
        let replies = if self.caps.pipelining {
            cmds.push("DATA\r\n".into());
            self.write(cmds.concat().as_bytes()).await?;
            let mut v = Vec::with_capacity(cmds.len());
            for _ in 0..cmds.len() {
                v.push(self.read_reply().await?);
            }
            data_reply = v.pop();
            v
        } else {
            let mut v = Vec::with_capacity(cmds.len());
            for (i, c) in cmds.iter().enumerate() {
                let r = self.command(c).await?;
                let stop = i == 0 && !r.is_positive();
                v.push(r);
                if stop {
                    break;
                }
            }
            v
        };
        let mail_reply = &replies[0];
        if !mail_reply.is_positive() {
            self.abandon(data_reply.as_ref()).await;
            return Err(Failure::refused(&self.remote, mail_reply.clone()));
        }
        let mut out = Vec::with_capacity(rcpts.len());
        let mut accepted = Vec::new();
        for (k, (idx, _)) in rcpts.iter().enumerate() {
            let r = &replies[k + 1];
            if r.is_positive() {
                accepted.push(*idx);
            } else {
                out.push((*idx, self.outcome(r)));
            }
        }
        if accepted.is_empty() {
            self.abandon(data_reply.as_ref()).await;
            return Ok(out);
        }
        let r = match data_reply {
            Some(r) => r,
            None => self.command("DATA\r\n").await?,
        };
        if r.code != 354 {
            let _ = self.command("RSET\r\n").await;
            for idx in accepted {
                out.push((idx, self.outcome(&r)));
            }
            return Ok(out);
        }
        if crate::message::plain_lines(body) {
            // Nearly every message: it goes out as stored, without a copy.
            self.write_parts(&[body, b".\r\n"]).await?;
        } else {
            self.write(&dot_stuff(body)).await?;
        }
        let r = self.read_reply().await?;
        self.transactions += 1;
        for idx in accepted {
            out.push((idx, self.outcome(&r)));
        }
        Ok(out)
    }

    /// Ends a transaction that will carry no message. A server that answered a pipelined
    /// DATA with 354 although no recipient was accepted gets an empty content first (RFC
    /// 2920 §3.1); its reply to that is of no use.
    async fn abandon(&mut self, data_reply: Option<&Reply>) {
        if data_reply.is_some_and(|r| r.code == 354) {
            let _ = self.command(".\r\n").await;
        }
        let _ = self.command("RSET\r\n").await;
    }

    fn outcome(&self, r: &Reply) -> Outcome {
        if r.is_positive() {
            Outcome::Delivered(Delivered {
                remote: self.remote.clone(),
                reply: r.clone(),
                dsn_passed: self.caps.dsn,
            })
        } else if r.is_permanent() {
            Outcome::Failed(Failure::refused(&self.remote, r.clone()))
        } else {
            Outcome::Deferred(Failure::refused(&self.remote, r.clone()))
        }
    }

    pub async fn quit(mut self) {
        let _ = tokio::time::timeout(Duration::from_secs(2), self.command("QUIT\r\n")).await;
    }
}

/// The trust-space check of an outbound peer, after the handshake and before any mail: a
/// valid chain, and a subject DN the whitelist declares for `domain`.
fn check_trust_space_peer(
    chain: &[rustls::pki_types::CertificateDer<'_>],
    dn: Option<&crate::pki::dn::Dn>,
    validator: &crate::tls::PeerValidator,
    allowed: &[crate::pki::dn::Dn],
    domain: &str,
) -> Result<(), (TlsRefusal, String)> {
    validator
        .validate(chain, crate::tls::PeerRole::Server)
        .map_err(|r| (r.reason, format!("peer certificate refused: {r}")))?;
    let dn = dn.ok_or((
        TlsRefusal::Unreadable,
        "peer certificate refused: unreadable subject".to_string(),
    ))?;
    if allowed.contains(dn) {
        return Ok(());
    }
    Err((
        TlsRefusal::DnNotDeclared,
        pin_refusal(dn, domain, allowed.len()),
    ))
}

/// Why a peer whose certificate DN is `dn` may not receive `domain`'s mail, which declares
/// `declared` DNs. The DN is quoted as the certificate writes it, not in its comparison form.
pub fn pin_refusal(dn: &crate::pki::dn::Dn, domain: &str, declared: usize) -> String {
    format!(
        "peer certificate DN \"{dn}\" is not declared in the MSSante whitelist for {domain} \
         ({declared} DN(s) declared; see `passerelle whitelist show {domain}`)"
    )
}

fn split_status(code: u16, text: String) -> Reply {
    let first = text.split(' ').next().unwrap_or("");
    let is_status = first.split('.').count() == 3
        && first.starts_with(char::from(b'0' + (code / 100) as u8))
        && first
            .split('.')
            .all(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()));
    if is_status && !text.contains('\n') {
        let rest = text[first.len()..].trim_start().to_string();
        Reply {
            code,
            status: Some(first.to_string()),
            text: rest,
        }
    } else {
        Reply {
            code,
            status: None,
            text,
        }
    }
}

/// RFC 3461 xtext.
pub fn xtext(s: &str) -> String {
    let mut o = String::with_capacity(s.len());
    for b in s.bytes() {
        if (33..=126).contains(&b) && b != b'+' && b != b'=' {
            o.push(b as char);
        } else {
            o.push_str(&format!("+{b:02X}"));
        }
    }
    o
}

/// Dot-stuffs a message and appends the terminator. Line ends are forced to CRLF: a bare CR
/// or LF never leaves this gateway (intake refuses them, so stored mail is already clean and
/// passes through unchanged). `send` skips this copy for a message that
/// `message::plain_lines` accepts, so for those the output must be the message and its
/// terminator: the fuzz target checks it.
pub fn dot_stuff(body: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(body.len() + body.len() / 64 + 8);
    let mut at_line_start = true;
    // Line by line: a clean CRLF line (nearly all of them) is copied whole; only a line with
    // a bare CR or LF goes through the byte-by-byte repair.
    for line in body.split_inclusive(|&b| b == b'\n') {
        let clean = line
            .strip_suffix(b"\r\n")
            .is_some_and(|content| !content.contains(&b'\r'));
        if clean {
            if line[0] == b'.' {
                out.push(b'.');
            }
            out.extend_from_slice(line);
            at_line_start = true;
        } else {
            at_line_start = stuff_bytes(line, &mut out);
        }
    }
    if !at_line_start {
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b".\r\n");
    out
}

/// The slow path of `dot_stuff` for one line holding a bare CR or LF, or the last line
/// without its end: every CR, LF or CRLF becomes CRLF. Returns whether it ended a line.
fn stuff_bytes(line: &[u8], out: &mut Vec<u8>) -> bool {
    let mut at_line_start = true;
    let mut i = 0;
    while i < line.len() {
        let b = line[i];
        if at_line_start && b == b'.' {
            out.push(b'.');
        }
        match b {
            b'\r' => {
                out.extend_from_slice(b"\r\n");
                if line.get(i + 1) == Some(&b'\n') {
                    i += 1;
                }
                at_line_start = true;
            }
            b'\n' => {
                out.extend_from_slice(b"\r\n");
                at_line_start = true;
            }
            _ => {
                out.push(b);
                at_line_start = false;
            }
        }
        i += 1;
    }
    at_line_start
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stuffing() {
        assert_eq!(dot_stuff(b"a\r\n.b\r\n..\r\n"), b"a\r\n..b\r\n...\r\n.\r\n");
        assert_eq!(dot_stuff(b".x"), b"..x\r\n.\r\n");
        assert_eq!(dot_stuff(b"bare\nlf\rcr\r\n"), b"bare\r\nlf\r\ncr\r\n.\r\n");
        assert_eq!(dot_stuff(b""), b".\r\n");
        assert_eq!(dot_stuff(b"a\r\n.\rb\n.c"), b"a\r\n..\r\nb\r\n..c\r\n.\r\n");
        assert_eq!(dot_stuff(b"x\r\r\n"), b"x\r\n\r\n.\r\n");
        // The same as byte by byte on every input: the slow path alone is the reference.
        for input in [
            &b"a\r\nb\r\n"[..],
            b".\r\n.\r\n",
            b"\n\n.",
            b"\r",
            b"a\rb\r\n..\n",
        ] {
            let mut reference = Vec::new();
            if !stuff_bytes(input, &mut reference) {
                reference.extend_from_slice(b"\r\n");
            }
            reference.extend_from_slice(b".\r\n");
            assert_eq!(dot_stuff(input), reference, "{input:?}");
        }
    }

    #[test]
    fn replies() {
        let r = split_status(550, "5.1.1 no such user".into());
        assert_eq!(
            (r.status.as_deref(), r.text.as_str()),
            (Some("5.1.1"), "no such user")
        );
        let r = split_status(
            250,
            "mx.example\nPIPELINING\nSIZE 1000\nSTARTTLS\nDSN".into(),
        );
        let c = Caps::from_ehlo(&r);
        assert!(c.pipelining && c.starttls && c.dsn && c.size == Some(1000) && !c.eightbit);
        assert_eq!(xtext("a+b=c d"), "a+2Bb+3Dc+20d");
    }
}
