//! The SMTP server side: one session per connection, STARTTLS, DATA and BDAT.

use std::fmt;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use rustls::ServerConfig;
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio_rustls::TlsAcceptor;

use crate::store::{Envelope, EventLog, Store, TlsInfo};

/// Largest message accepted (advertised with SIZE).
pub const MAX_MESSAGE_SIZE: usize = 50 * 1024 * 1024;
/// Longest command line accepted (SMTPUTF8 and DSN parameters included).
const MAX_COMMAND_LINE: u64 = 4096;
/// DATA is read in pieces of at most this size (lines may be longer).
const DATA_PIECE: u64 = 64 * 1024;
const MAX_RECIPIENTS: usize = 1000;
const READ_TIMEOUT: Duration = Duration::from_secs(300);
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(30);

/// An SMTP reply `CODE TEXT` given on the command line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    pub code: u16,
    pub text: String,
}

impl Reply {
    pub fn parse(s: &str) -> Result<Reply, String> {
        let s = s.trim();
        let (code, text) = s.split_once(' ').unwrap_or((s, ""));
        let valid = code.len() == 3
            && code.bytes().all(|b| b.is_ascii_digit())
            && (b'2'..=b'5').contains(&code.as_bytes()[0]);
        if !valid {
            return Err(format!(
                "expected 'CODE TEXT' with a 2xx-5xx code, got {s:?}"
            ));
        }
        if text.chars().any(|c| c.is_control()) {
            return Err("reply text must not contain control characters".into());
        }
        let code = code
            .parse()
            .map_err(|_| format!("bad reply code in {s:?}"))?;
        Ok(Reply {
            code,
            text: text.trim().to_string(),
        })
    }

    pub fn is_positive(&self) -> bool {
        (200..300).contains(&self.code)
    }
}

impl fmt::Display for Reply {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.text.is_empty() {
            write!(f, "{}", self.code)
        } else {
            write!(f, "{} {}", self.code, self.text)
        }
    }
}

/// `--rcpt-reply LOCALPART=CODE TEXT`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RcptReply {
    pub local_part: String,
    pub reply: Reply,
}

impl RcptReply {
    pub fn parse(s: &str) -> Result<RcptReply, String> {
        let (local_part, reply) = s
            .split_once('=')
            .ok_or_else(|| format!("expected 'LOCALPART=CODE TEXT', got {s:?}"))?;
        if local_part.is_empty() {
            return Err(format!("empty local part in {s:?}"));
        }
        Ok(RcptReply {
            local_part: local_part.to_string(),
            reply: Reply::parse(reply)?,
        })
    }
}

/// Local part of an address (`"a b"@x` -> `a b`, `postmaster` -> `postmaster`).
pub fn local_part(address: &str) -> &str {
    let local = address.rsplit_once('@').map_or(address, |(l, _)| l);
    local
        .strip_prefix('"')
        .and_then(|l| l.strip_suffix('"'))
        .unwrap_or(local)
}

/// The configured reply for this recipient, if any (case-insensitive local part).
pub fn rcpt_reply_for<'a>(replies: &'a [RcptReply], address: &str) -> Option<&'a Reply> {
    let local = local_part(address).to_lowercase();
    replies
        .iter()
        .find(|r| r.local_part.to_lowercase() == local)
        .map(|r| &r.reply)
}

/// Parses the argument of MAIL/RCPT: `FROM:<addr> params` -> (addr, params).
/// Tolerates a space after the colon and a missing pair of angle brackets.
pub fn parse_path(arg: &str, keyword: &str) -> Option<(String, String)> {
    let head = arg.get(..keyword.len())?;
    if !head.eq_ignore_ascii_case(keyword) {
        return None;
    }
    let rest = arg[keyword.len()..].trim_start();
    if let Some(inner) = rest.strip_prefix('<') {
        let (mut quoted, mut escaped) = (false, false);
        for (i, b) in inner.bytes().enumerate() {
            match b {
                _ if escaped => escaped = false,
                b'\\' if quoted => escaped = true,
                b'"' => quoted = !quoted,
                b'>' if !quoted => {
                    return Some((inner[..i].to_string(), inner[i + 1..].trim().to_string()))
                }
                _ => {}
            }
        }
        None
    } else {
        let (addr, params) = rest.split_once(' ').unwrap_or((rest, ""));
        (!addr.is_empty()).then(|| (addr.to_string(), params.trim().to_string()))
    }
}

/// Dot-unstuffing of DATA, fed with successive pieces that each end at a
/// `\n` (or are a prefix of a longer line).
#[derive(Debug)]
pub struct DotDecoder {
    at_line_start: bool,
}

impl DotDecoder {
    pub fn new() -> DotDecoder {
        DotDecoder {
            at_line_start: true,
        }
    }

    /// Appends the unstuffed piece to `out`; true when the piece is the final
    /// `.` line (which is not appended).
    pub fn feed(&mut self, piece: &[u8], out: &mut Vec<u8>) -> bool {
        if self.at_line_start {
            if piece == b".\r\n" {
                return true;
            }
            out.extend_from_slice(piece.strip_prefix(b".").unwrap_or(piece));
        } else {
            out.extend_from_slice(piece);
        }
        self.at_line_start = piece.ends_with(b"\n");
        false
    }
}

/// First word of a command, made safe for the log.
fn log_word(line: &str) -> String {
    let word: String = line
        .split_whitespace()
        .next()
        .unwrap_or("")
        .chars()
        .filter(|c| c.is_ascii_graphic())
        .take(32)
        .collect::<String>()
        .to_ascii_uppercase();
    if word.is_empty() {
        "-".into()
    } else {
        word
    }
}

pub struct Config {
    pub hostname: String,
    pub tls: Option<Arc<ServerConfig>>,
    pub require_tls: bool,
    pub rcpt_replies: Vec<RcptReply>,
    pub data_reply: Option<Reply>,
    pub store: Store,
    pub log: EventLog,
}

pub async fn handle_connection(stream: TcpStream, peer: SocketAddr, config: Arc<Config>) {
    let log = &config.log;
    log.event(&format!("connect {peer}"));
    if let Err(e) = serve(stream, &config).await {
        if e.kind() != io::ErrorKind::UnexpectedEof {
            log.event(&format!("error {e}"));
        }
    }
    log.event("close");
}

async fn serve(stream: TcpStream, config: &Config) -> io::Result<()> {
    let mut conn = Conn::new(stream);
    conn.reply(&format!("220 {} ESMTP mss-peer", config.hostname));
    let outcome = Session::new(config, None).run(&mut conn).await?;
    let (Outcome::StartTls, Some(tls_config)) = (outcome, &config.tls) else {
        return Ok(());
    };
    // into_inner() drops whatever the client pipelined after STARTTLS.
    let tcp = conn.io.into_inner();
    let accept = TlsAcceptor::from(Arc::clone(tls_config)).accept(tcp);
    let tls = match tokio::time::timeout(HANDSHAKE_TIMEOUT, accept).await {
        Ok(Ok(tls)) => tls,
        Ok(Err(e)) => {
            config.log.event(&format!("tls failed {e}"));
            return Ok(());
        }
        Err(_) => {
            config.log.event("tls failed handshake timeout");
            return Ok(());
        }
    };
    let info = crate::tls::session_info(tls.get_ref().1);
    // full or resumed: benches count the handshakes a client costs us.
    let kind = match tls.get_ref().1.handshake_kind() {
        Some(rustls::HandshakeKind::Resumed) => "resumed",
        _ => "full",
    };
    config.log.event(&format!(
        "tls ok {} {} handshake={} client_dn={}",
        info.version,
        info.cipher,
        kind,
        info.client_dn.as_deref().unwrap_or("-")
    ));
    let mut conn = Conn::new(tls);
    Session::new(config, Some(info)).run(&mut conn).await?;
    Ok(())
}

/// Buffered connection: replies are queued and only flushed when the client
/// has no further complete command waiting (PIPELINING).
struct Conn<S> {
    io: BufReader<S>,
    out: Vec<u8>,
}

fn timed_out() -> io::Error {
    io::Error::new(io::ErrorKind::TimedOut, "read timeout")
}

fn eof() -> io::Error {
    io::Error::new(io::ErrorKind::UnexpectedEof, "connection closed by client")
}

impl<S> Conn<S> {
    fn reply(&mut self, line: &str) {
        self.out.extend_from_slice(line.as_bytes());
        self.out.extend_from_slice(b"\r\n");
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> Conn<S> {
    fn new(stream: S) -> Conn<S> {
        Conn {
            io: BufReader::new(stream),
            out: Vec::new(),
        }
    }

    async fn flush(&mut self) -> io::Result<()> {
        if !self.out.is_empty() {
            self.io.get_mut().write_all(&self.out).await?;
            self.io.get_mut().flush().await?;
            self.out.clear();
        }
        Ok(())
    }

    /// Reads up to and including `\n`, at most `limit` bytes; empty at EOF.
    async fn read_piece(&mut self, limit: u64) -> io::Result<Vec<u8>> {
        if !self.io.buffer().contains(&b'\n') {
            self.flush().await?;
        }
        let mut piece = Vec::new();
        let mut limited = (&mut self.io).take(limit);
        tokio::time::timeout(READ_TIMEOUT, limited.read_until(b'\n', &mut piece))
            .await
            .map_err(|_| timed_out())??;
        Ok(piece)
    }

    /// Reads one command line (without CRLF); None at EOF, Some(Err) if too long.
    async fn read_command(&mut self) -> io::Result<Option<Result<String, ()>>> {
        let mut line = self.read_piece(MAX_COMMAND_LINE).await?;
        if line.is_empty() {
            return Ok(None);
        }
        if !line.ends_with(b"\n") {
            if (line.len() as u64) < MAX_COMMAND_LINE {
                return Ok(None); // EOF in the middle of a line
            }
            // Too long: skip to the end of the line.
            loop {
                let rest = self.read_piece(MAX_COMMAND_LINE).await?;
                if rest.is_empty() {
                    return Ok(None);
                }
                if rest.ends_with(b"\n") {
                    return Ok(Some(Err(())));
                }
            }
        }
        while line.last().is_some_and(|b| *b == b'\n' || *b == b'\r') {
            line.pop();
        }
        Ok(Some(Ok(String::from_utf8_lossy(&line).into_owned())))
    }

    /// DATA body up to `CRLF.CRLF`, dot-unstuffed. Returns (body, its size);
    /// body is None when larger than MAX_MESSAGE_SIZE.
    ///
    /// Lines are cut out of the read buffer in place (a line split between reads is carried
    /// over), so a long message costs a few reads rather than an allocation and a timer per
    /// line: the peer is a benchmark sink too, and must not be the slowest party.
    async fn read_data(&mut self) -> io::Result<(Option<Vec<u8>>, usize)> {
        let mut decoder = DotDecoder::new();
        let mut body = Vec::new();
        let mut carry: Vec<u8> = Vec::new();
        let (mut total, mut too_big) = (0usize, false);
        self.flush().await?;
        loop {
            let buf = tokio::time::timeout(READ_TIMEOUT, self.io.fill_buf())
                .await
                .map_err(|_| timed_out())??;
            if buf.is_empty() {
                return Err(eof());
            }
            let mut used = 0;
            let mut done = false;
            while used < buf.len() {
                let Some(i) = memchr::memchr(b'\n', &buf[used..]) else {
                    // A line continued in the next read; very long ones go in pieces.
                    carry.extend_from_slice(&buf[used..]);
                    used = buf.len();
                    if carry.len() as u64 >= DATA_PIECE {
                        let piece = std::mem::take(&mut carry);
                        Self::feed(&mut decoder, &piece, &mut body, &mut total, &mut too_big);
                    }
                    break;
                };
                let end = used + i + 1;
                let finished = if carry.is_empty() {
                    Self::feed(
                        &mut decoder,
                        &buf[used..end],
                        &mut body,
                        &mut total,
                        &mut too_big,
                    )
                } else {
                    carry.extend_from_slice(&buf[used..end]);
                    let piece = std::mem::take(&mut carry);
                    Self::feed(&mut decoder, &piece, &mut body, &mut total, &mut too_big)
                };
                used = end;
                if finished {
                    done = true;
                    break;
                }
            }
            self.io.consume(used);
            if done {
                return Ok(((!too_big).then_some(body), total));
            }
        }
    }

    /// One piece of DATA through the decoder; true at the final `.` line.
    fn feed(
        decoder: &mut DotDecoder,
        piece: &[u8],
        body: &mut Vec<u8>,
        total: &mut usize,
        too_big: &mut bool,
    ) -> bool {
        let before = body.len();
        if decoder.feed(piece, body) {
            return true;
        }
        *total += body.len() - before;
        if body.len() > MAX_MESSAGE_SIZE {
            *too_big = true;
            *body = Vec::new();
        }
        false
    }

    /// Reads a BDAT chunk of `size` bytes; stored in `into` only if `keep`.
    async fn read_chunk(&mut self, size: u64, into: &mut Vec<u8>, keep: bool) -> io::Result<()> {
        self.flush().await?;
        let mut chunk = (&mut self.io).take(size);
        let read = async {
            if keep {
                chunk.read_to_end(into).await
            } else {
                tokio::io::copy(&mut chunk, &mut tokio::io::sink())
                    .await
                    .map(|n| n as usize)
            }
        };
        tokio::time::timeout(READ_TIMEOUT, read)
            .await
            .map_err(|_| timed_out())??;
        if chunk.limit() > 0 {
            return Err(eof());
        }
        Ok(())
    }

    async fn shutdown(&mut self) -> io::Result<()> {
        self.flush().await?;
        self.io.get_mut().shutdown().await
    }
}

enum Outcome {
    Closed,
    StartTls,
}

#[derive(Default)]
struct Transaction {
    mail_from: String,
    mail_params: String,
    rcpts: Vec<(String, String)>,
    /// BDAT chunks received so far.
    bdat: Vec<u8>,
}

struct Session<'a> {
    config: &'a Config,
    tls: Option<TlsInfo>,
    helo: String,
    txn: Option<Transaction>,
}

impl<'a> Session<'a> {
    fn new(config: &'a Config, tls: Option<TlsInfo>) -> Session<'a> {
        Session {
            config,
            tls,
            helo: String::new(),
            txn: None,
        }
    }

    fn must_starttls(&self) -> bool {
        self.config.require_tls && self.tls.is_none()
    }

    async fn run<S: AsyncRead + AsyncWrite + Unpin>(
        &mut self,
        conn: &mut Conn<S>,
    ) -> io::Result<Outcome> {
        loop {
            let line = match conn.read_command().await? {
                None => return Ok(Outcome::Closed),
                Some(Err(())) => {
                    self.config.log.event("cmd -");
                    conn.reply("500 5.5.2 Error: line too long");
                    continue;
                }
                Some(Ok(line)) => line,
            };
            self.config.log.event(&format!("cmd {}", log_word(&line)));
            let (verb, arg) = line.split_once(' ').unwrap_or((&line, ""));
            let arg = arg.trim();
            match verb.to_ascii_uppercase().as_str() {
                "EHLO" | "HELO" if arg.is_empty() => conn.reply(&format!(
                    "501 5.5.4 Syntax: {} hostname",
                    verb.to_ascii_uppercase()
                )),
                "EHLO" => {
                    self.helo = arg.to_string();
                    self.txn = None;
                    let mut lines = vec![
                        self.config.hostname.clone(),
                        "PIPELINING".into(),
                        format!("SIZE {MAX_MESSAGE_SIZE}"),
                        "8BITMIME".into(),
                        "ENHANCEDSTATUSCODES".into(),
                        "SMTPUTF8".into(),
                        "CHUNKING".into(),
                        "DSN".into(),
                    ];
                    if self.config.tls.is_some() && self.tls.is_none() {
                        lines.push("STARTTLS".into());
                    }
                    let last = lines.len() - 1;
                    for (i, l) in lines.iter().enumerate() {
                        conn.reply(&format!("250{}{l}", if i == last { ' ' } else { '-' }));
                    }
                }
                "HELO" => {
                    self.helo = arg.to_string();
                    self.txn = None;
                    conn.reply(&format!("250 {}", self.config.hostname));
                }
                "STARTTLS" => {
                    if self.tls.is_some() {
                        conn.reply("503 5.5.1 Error: TLS already active");
                    } else if self.config.tls.is_none() {
                        conn.reply("502 5.5.1 Error: command not implemented");
                    } else if !arg.is_empty() {
                        conn.reply("501 5.5.4 Syntax: STARTTLS");
                    } else {
                        conn.reply("220 2.0.0 Ready to start TLS");
                        conn.flush().await?;
                        return Ok(Outcome::StartTls);
                    }
                }
                "MAIL" => self.mail(conn, arg),
                "RCPT" => self.rcpt(conn, arg),
                "DATA" => self.data(conn, arg).await?,
                "BDAT" => self.bdat(conn, arg).await?,
                "RSET" => {
                    self.txn = None;
                    conn.reply("250 2.0.0 Ok");
                }
                "NOOP" => conn.reply("250 2.0.0 Ok"),
                "QUIT" => {
                    conn.reply("221 2.0.0 Bye");
                    conn.shutdown().await?;
                    return Ok(Outcome::Closed);
                }
                _ => conn.reply("500 5.5.2 Error: command not recognized"),
            }
        }
    }

    fn mail<S>(&mut self, conn: &mut Conn<S>, arg: &str) {
        if self.must_starttls() {
            return conn.reply("530 5.7.0 Must issue a STARTTLS command first");
        }
        if self.txn.is_some() {
            return conn.reply("503 5.5.1 Error: nested MAIL command");
        }
        let Some((from, params)) = parse_path(arg, "FROM:") else {
            return conn.reply("501 5.5.4 Syntax: MAIL FROM:<address>");
        };
        let size = params
            .split_whitespace()
            .find_map(|p| {
                p.get(..5)
                    .filter(|k| k.eq_ignore_ascii_case("SIZE="))
                    .map(|_| &p[5..])
            })
            .and_then(|v| v.parse::<u64>().ok());
        if size.is_some_and(|s| s > MAX_MESSAGE_SIZE as u64) {
            return conn.reply("552 5.3.4 Message size exceeds fixed limit");
        }
        self.txn = Some(Transaction {
            mail_from: from,
            mail_params: params,
            ..Transaction::default()
        });
        conn.reply("250 2.1.0 Ok");
    }

    fn rcpt<S>(&mut self, conn: &mut Conn<S>, arg: &str) {
        if self.must_starttls() {
            return conn.reply("530 5.7.0 Must issue a STARTTLS command first");
        }
        let Some(txn) = &mut self.txn else {
            return conn.reply("503 5.5.1 Error: need MAIL command");
        };
        let Some((to, params)) = parse_path(arg, "TO:") else {
            return conn.reply("501 5.5.4 Syntax: RCPT TO:<address>");
        };
        if to.is_empty() {
            return conn.reply("501 5.1.3 Bad recipient address syntax");
        }
        if txn.rcpts.len() >= MAX_RECIPIENTS {
            return conn.reply("452 4.5.3 Error: too many recipients");
        }
        match rcpt_reply_for(&self.config.rcpt_replies, &to) {
            Some(reply) => {
                conn.reply(&reply.to_string());
                if reply.is_positive() {
                    txn.rcpts.push((to, params));
                }
            }
            None => {
                conn.reply("250 2.1.5 Ok");
                txn.rcpts.push((to, params));
            }
        }
    }

    /// Checks common to DATA and BDAT; the error reply if the transaction
    /// cannot receive a message.
    fn data_refusal(&self) -> Option<&'static str> {
        if self.must_starttls() {
            return Some("530 5.7.0 Must issue a STARTTLS command first");
        }
        match &self.txn {
            None => Some("503 5.5.1 Error: need MAIL command"),
            Some(t) if t.rcpts.is_empty() => Some("554 5.5.1 Error: no valid recipients"),
            Some(_) => None,
        }
    }

    async fn data<S: AsyncRead + AsyncWrite + Unpin>(
        &mut self,
        conn: &mut Conn<S>,
        arg: &str,
    ) -> io::Result<()> {
        if !arg.is_empty() {
            conn.reply("501 5.5.4 Syntax: DATA");
            return Ok(());
        }
        if let Some(refusal) = self.data_refusal() {
            conn.reply(refusal);
            return Ok(());
        }
        if self.txn.as_ref().is_some_and(|t| !t.bdat.is_empty()) {
            conn.reply("503 5.5.1 Error: DATA after BDAT");
            return Ok(());
        }
        conn.reply("354 End data with <CR><LF>.<CR><LF>");
        let (body, received) = conn.read_data().await?;
        self.config.log.event(&format!("data {received}"));
        self.finish(conn, body).await;
        Ok(())
    }

    async fn bdat<S: AsyncRead + AsyncWrite + Unpin>(
        &mut self,
        conn: &mut Conn<S>,
        arg: &str,
    ) -> io::Result<()> {
        let mut words = arg.split_whitespace();
        let size = words.next().and_then(|s| s.parse::<u64>().ok());
        let last = match words.next() {
            None => Some(false),
            Some(w) if w.eq_ignore_ascii_case("LAST") => Some(true),
            Some(_) => None,
        };
        let (Some(size), Some(last), None) = (size, last, words.next()) else {
            conn.reply("501 5.5.4 Syntax: BDAT size [LAST]");
            return Ok(());
        };
        let refusal = self.data_refusal();
        let held = self.txn.as_ref().map_or(0, |t| t.bdat.len() as u64);
        let too_big = held.saturating_add(size) > MAX_MESSAGE_SIZE as u64;
        // The chunk follows the command unconditionally: always consume it.
        let mut scratch = Vec::new();
        let keep = refusal.is_none() && !too_big;
        let into = match (&mut self.txn, keep) {
            (Some(txn), true) => &mut txn.bdat,
            _ => &mut scratch,
        };
        conn.read_chunk(size, into, keep).await?;
        if let Some(refusal) = refusal {
            conn.reply(refusal);
        } else if too_big {
            self.config.log.event(&format!("data {}", held + size));
            self.txn = None;
            conn.reply("552 5.3.4 Message size exceeds fixed limit");
        } else if last {
            let body = self.txn.as_mut().map(|t| std::mem::take(&mut t.bdat));
            self.config
                .log
                .event(&format!("data {}", body.as_ref().map_or(0, Vec::len)));
            self.finish(conn, body).await;
        } else {
            conn.reply(&format!("250 2.0.0 Ok: {size} octets received"));
        }
        Ok(())
    }

    /// End of a message: reply (--data-reply or 250), store it when positive.
    async fn finish<S>(&mut self, conn: &mut Conn<S>, body: Option<Vec<u8>>) {
        let txn = self.txn.take().unwrap_or_default();
        let Some(body) = body else {
            return conn.reply("552 5.3.4 Message size exceeds fixed limit");
        };
        if let Some(reply) = self.config.data_reply.as_ref().filter(|r| !r.is_positive()) {
            return conn.reply(&reply.to_string());
        }
        let envelope = Envelope {
            mail_from: &txn.mail_from,
            rcpt_to: txn.rcpts.iter().map(|(a, _)| a.as_str()).collect(),
            helo: &self.helo,
            tls: self.tls.as_ref(),
            mail_params: &txn.mail_params,
            rcpt_params: txn.rcpts.iter().map(|(_, p)| p.as_str()).collect(),
        };
        match self.config.store.save(&body, &envelope).await {
            Ok(n) => {
                self.config.log.event(&format!("stored {n}"));
                match &self.config.data_reply {
                    Some(reply) => conn.reply(&reply.to_string()),
                    None => conn.reply(&format!("250 2.0.0 Ok: queued as {n}")),
                }
            }
            Err(e) => {
                self.config.log.event(&format!("store failed {e}"));
                eprintln!("mss-peer: cannot store a message: {e}");
                conn.reply("451 4.3.0 Error: local storage failure");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn unstuff(raw: &[u8]) -> (Vec<u8>, bool) {
        let mut decoder = DotDecoder::new();
        let mut out = Vec::new();
        for piece in raw.split_inclusive(|b| *b == b'\n') {
            if decoder.feed(piece, &mut out) {
                return (out, true);
            }
        }
        (out, false)
    }

    #[test]
    fn dot_unstuffing() {
        let (body, end) = unstuff(b"Subject: x\r\n\r\n..dot\r\n.\r\n");
        assert!(end);
        assert_eq!(body, b"Subject: x\r\n\r\n.dot\r\n");
        // Only a lone "." line ends the data; ". " and ".." do not.
        let (body, end) = unstuff(b"a\r\n. \r\n..\r\nb.\r\n.\r\nafter\r\n");
        assert!(end);
        assert_eq!(body, b"a\r\n \r\n.\r\nb.\r\n");
        let (body, end) = unstuff(b".\r\n");
        assert!(end && body.is_empty());
        let (_, end) = unstuff(b"no end\r\n");
        assert!(!end);
        // Bytes are kept as is (bare LF, 8-bit).
        let (body, _) = unstuff(b"x\ny\r\n\xc3\xa9\r\n.\r\n");
        assert_eq!(body, b"x\ny\r\n\xc3\xa9\r\n");
    }

    #[test]
    fn dot_unstuffing_split_lines() {
        // A long line delivered in two pieces: the second one is not a line start.
        let mut decoder = DotDecoder::new();
        let mut out = Vec::new();
        assert!(!decoder.feed(b"..abc", &mut out));
        assert!(!decoder.feed(b".def\r\n", &mut out));
        assert!(decoder.feed(b".\r\n", &mut out));
        assert_eq!(out, b".abc.def\r\n");
    }

    #[test]
    fn reply_parsing() {
        assert_eq!(
            Reply::parse("550 5.1.1 no such user"),
            Ok(Reply {
                code: 550,
                text: "5.1.1 no such user".into()
            })
        );
        assert_eq!(Reply::parse("451").map(|r| r.to_string()), Ok("451".into()));
        assert!(Reply::parse("250 ok").unwrap().is_positive());
        assert!(!Reply::parse("451 4.3.0 later").unwrap().is_positive());
        assert!(Reply::parse("").is_err());
        assert!(Reply::parse("55 x").is_err());
        assert!(Reply::parse("650 x").is_err());
        assert!(Reply::parse("abc x").is_err());
        assert!(Reply::parse("250 a\r\nb").is_err());
        assert!(Reply::parse("5é0 x").is_err());
    }

    #[test]
    fn rcpt_reply_matching() {
        let replies = vec![
            RcptReply::parse("bad=550 5.1.1 no such user").unwrap(),
            RcptReply::parse("Later=451 4.3.0 try later").unwrap(),
        ];
        assert_eq!(
            rcpt_reply_for(&replies, "bad@example.org").unwrap().code,
            550
        );
        assert_eq!(
            rcpt_reply_for(&replies, "BAD@example.org").unwrap().code,
            550
        );
        assert_eq!(rcpt_reply_for(&replies, "later@x").unwrap().code, 451);
        assert_eq!(rcpt_reply_for(&replies, "\"bad\"@x").unwrap().code, 550);
        assert!(rcpt_reply_for(&replies, "badder@x").is_none());
        assert!(rcpt_reply_for(&replies, "good@bad").is_none());
        assert!(RcptReply::parse("nolocal").is_err());
        assert!(RcptReply::parse("=550 x").is_err());
        assert!(RcptReply::parse("x=hello").is_err());
    }

    #[test]
    fn path_parsing() {
        let p = |a: &str, k: &str| parse_path(a, k);
        assert_eq!(
            p("FROM:<a@b.fr> SIZE=10 BODY=8BITMIME", "FROM:"),
            Some(("a@b.fr".into(), "SIZE=10 BODY=8BITMIME".into()))
        );
        assert_eq!(p("from:<>", "FROM:"), Some(("".into(), "".into())));
        assert_eq!(p("To: <c@d>", "TO:"), Some(("c@d".into(), "".into())));
        assert_eq!(
            p("TO:<\"a>b\"@d> NOTIFY=NEVER", "TO:"),
            Some(("\"a>b\"@d".into(), "NOTIFY=NEVER".into()))
        );
        assert_eq!(
            p("TO:c@d ORCPT=rfc822;c@d", "TO:"),
            Some(("c@d".into(), "ORCPT=rfc822;c@d".into()))
        );
        assert_eq!(p("TO:<c@d", "TO:"), None);
        assert_eq!(p("FROM:<a>", "TO:"), None);
        assert_eq!(p("T", "TO:"), None);
        assert_eq!(p("é", "TO:"), None);
        assert_eq!(p("TO:", "TO:"), None);
    }

    #[test]
    fn log_words() {
        assert_eq!(log_word("ehlo client.test"), "EHLO");
        assert_eq!(log_word("MAIL FROM:<a@b>"), "MAIL");
        assert_eq!(log_word(""), "-");
        assert_eq!(log_word("\u{1}\u{2}"), "-");
    }
}
