//! The DATA reader: strict CRLF, dot-unstuffing, size and line limits.
//!
//! Only `<CRLF>.<CRLF>` ends the data. A bare LF, a bare CR or a NUL anywhere marks the
//! message as refused but reading goes on to the real end, so a smuggled `\n.\n` never
//! splits one message into two (SMTP smuggling).

use crate::net::Rewind;
use std::time::{Duration, Instant};
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncReadExt, BufReader};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DataError {
    BareLf,
    BareCr,
    Nul,
    TooBig,
    LineTooLong,
}

impl DataError {
    pub fn reply(self, max_size: usize, max_line: usize) -> crate::reply::Reply {
        use crate::reply::Reply;
        match self {
            DataError::BareLf => Reply::new(
                550,
                "5.6.0",
                "Message refused: bare LF is not allowed, use CRLF",
            ),
            DataError::BareCr => Reply::new(
                550,
                "5.6.0",
                "Message refused: bare CR is not allowed, use CRLF",
            ),
            DataError::Nul => Reply::new(
                550,
                "5.6.0",
                "Message refused: NUL characters are not allowed",
            ),
            DataError::TooBig => Reply::new(
                552,
                "5.3.4",
                format!("Message size exceeds fixed limit of {max_size} bytes"),
            ),
            DataError::LineTooLong => Reply::new(
                550,
                "5.6.0",
                format!("Message refused: a line is longer than {max_line} octets (RFC 5321)"),
            ),
        }
    }
}

#[derive(Debug)]
pub enum DataEnd {
    Ok,
    Refused(DataError),
    /// The client vanished or timed out in the middle: nothing is queued.
    Lost(String),
}

pub struct DataLimits {
    pub max_size: usize,
    pub max_line: usize,
    pub timeout: Duration,
    /// Bytes per second; the allowance grows with what was received (Postfix smtpd_min_data_rate).
    pub min_rate: usize,
}

/// Checks one complete line for bare CR/LF and NUL. `line` ends with LF.
fn check_line(line: &[u8]) -> Option<DataError> {
    let Some(content) = line.strip_suffix(b"\r\n") else {
        return Some(DataError::BareLf);
    };
    // One pass over the line (NUL first, as before: the more specific reply).
    match memchr::memchr2(0, b'\r', content) {
        None => None,
        Some(_) if content.contains(&0) => Some(DataError::Nul),
        Some(_) => Some(DataError::BareCr),
    }
}

/// Bytes asked of the connection per read during DATA.
pub const READ_BLOCK: usize = 64 * 1024;

/// Reads DATA content after the 354, appending the unstuffed message to `body`.
///
/// Reads go straight into `body` in blocks of up to [`READ_BLOCK`] (not through the
/// session's small line buffer): a 100 KiB message is two or three reads and no copy in user
/// space. Each block is scanned for line ends with memchr; lines are checked where they lie
/// and only moved when a dot was taken off an earlier line. Bytes read past the terminating
/// line (pipelined commands) are given back to the command reader.
pub async fn read_data<S: AsyncRead + Unpin>(
    r: &mut BufReader<Rewind<S>>,
    body: &mut Vec<u8>,
    lim: &DataLimits,
) -> DataEnd {
    let start = Instant::now();
    let mut st = Scan {
        out: body.len(),
        max_size: lim.max_size,
        max_line: lim.max_line,
        error: None,
        after_crlf: true,
        too_long: false,
        last: 0,
        line_start: None,
    };
    // What the command reader already holds comes first.
    let buffered = r.buffer();
    body.extend_from_slice(buffered);
    let mut received = buffered.len();
    r.consume(received);
    loop {
        if let Some((end, used)) = st.scan(body) {
            r.get_mut().push_back(&body[used..]);
            body.truncate(st.out);
            return end;
        }
        // The whole transfer must keep up min_rate beyond the base timeout, and no single
        // line may take longer than the timeout.
        if let Some(secs) = received.checked_div(lim.min_rate) {
            if start.elapsed() > lim.timeout + Duration::from_secs(secs as u64) {
                return DataEnd::Lost("data rate too low".into());
            }
        }
        let wait = match st.line_start {
            Some(t) => match lim.timeout.checked_sub(t.elapsed()) {
                Some(left) => left,
                None => return DataEnd::Lost("timeout".into()),
            },
            None => lim.timeout,
        };
        // Grow only when nearly full: the buffer may already be sized for the declared SIZE.
        if body.capacity() - body.len() < 4096 {
            body.reserve(READ_BLOCK);
        }
        match tokio::time::timeout(wait, r.get_mut().read_buf(body)).await {
            Err(_) => return DataEnd::Lost("timeout".into()),
            Ok(Err(e)) => return DataEnd::Lost(e.to_string()),
            Ok(Ok(0)) => return DataEnd::Lost("connection closed during DATA".into()),
            Ok(Ok(n)) => received += n,
        }
    }
}

/// The line state of `read_data` between reads. `body[..out]` is the message so far; the
/// bytes after it are not scanned yet (the start of a line whose end has not arrived).
struct Scan {
    out: usize,
    max_size: usize,
    max_line: usize,
    error: Option<DataError>,
    /// The terminating "." counts only right after a CRLF (or first, right after the 354).
    after_crlf: bool,
    /// The current line is already longer than `max_line` (its bytes were dropped).
    too_long: bool,
    /// The last byte seen (to tell CRLF from LF when a dropped line ends with its LF).
    last: u8,
    /// When the current unfinished line started (a line may not take longer than the timeout).
    line_start: Option<Instant>,
}

impl Scan {
    /// Handles the complete lines after `out`. Returns how DATA ends and the index just past
    /// the terminating line, if it arrived. Otherwise the unfinished line is moved to `out`
    /// (or dropped once it is too long), so memory stays bounded whatever the client sends.
    fn scan(&mut self, body: &mut Vec<u8>) -> Option<(DataEnd, usize)> {
        let mut pos = self.out;
        // Fast path: the complete lines of this read are plain (nearly always): they stay
        // where they are, with one vector pass instead of a look at each line.
        if let Some(last) = memchr::memrchr(b'\n', &body[pos..]) {
            let end = pos + last + 1;
            let lines = &body[pos..end];
            if self.error.is_none()
                && !self.too_long
                && end <= self.max_size
                && crate::message::plain_lines(lines)
                && lines_within(lines, self.max_line)
            {
                self.after_crlf = true;
                self.out = end;
                pos = end;
            }
        }
        while let Some(i) = memchr::memchr(b'\n', &body[pos..]) {
            let lf = pos + i;
            let next = lf + 1;
            if std::mem::take(&mut self.too_long) {
                let prev = if i > 0 { body[lf - 1] } else { self.last };
                self.error.get_or_insert(DataError::LineTooLong);
                self.after_crlf = prev == b'\r';
                pos = next;
                continue;
            }
            let line = &body[pos..next];
            let was_after_crlf = std::mem::replace(&mut self.after_crlf, line.ends_with(b"\r\n"));
            if line == b".\r\n" && was_after_crlf {
                let end = match self.error {
                    None => DataEnd::Ok,
                    Some(e) => DataEnd::Refused(e),
                };
                return Some((end, next));
            }
            if line.len() > self.max_line {
                self.error.get_or_insert(DataError::LineTooLong);
            } else if let Some(e) = check_line(line) {
                self.error.get_or_insert(e);
            }
            if self.error.is_none() {
                let from = if line[0] == b'.' { pos + 1 } else { pos };
                let len = next - from;
                if self.out + len > self.max_size {
                    self.error = Some(DataError::TooBig);
                } else {
                    if from != self.out {
                        body.copy_within(from..next, self.out);
                    }
                    self.out += len;
                }
            }
            pos = next;
        }
        let len = body.len();
        if len == pos {
            self.line_start = None;
        } else {
            self.line_start.get_or_insert_with(Instant::now);
            self.last = body[len - 1];
            if self.too_long || len - pos > self.max_line {
                self.too_long = true;
                pos = len;
            }
        }
        if pos != self.out {
            body.copy_within(pos..len, self.out);
        }
        body.truncate(self.out + (len - pos));
        None
    }
}

/// Whether no line of `lines` (complete lines) is longer than `max`, proven cheaply: if every
/// block of max/2 bytes holds a line end, no line can span max bytes. `false` means "maybe";
/// the caller then measures each line.
fn lines_within(lines: &[u8], max: usize) -> bool {
    let block = max / 2;
    block > 0
        && lines
            .chunks(block)
            .all(|c| memchr::memchr(b'\n', c).is_some())
}

/// Checks a complete BDAT message (no dot-stuffing there, same line rules).
pub fn check_bdat(body: &[u8], max_line: usize) -> Result<(), DataError> {
    let mut rest = body;
    while !rest.is_empty() {
        let end = rest
            .iter()
            .position(|&b| b == b'\n')
            .map(|i| i + 1)
            .unwrap_or(rest.len());
        let line = &rest[..end];
        if line.len() > max_line {
            return Err(DataError::LineTooLong);
        }
        if !line.ends_with(b"\n") {
            // The last chunk must end with CRLF like any message.
            return Err(if line.contains(&0) {
                DataError::Nul
            } else if line.contains(&b'\r') {
                DataError::BareCr
            } else {
                DataError::BareLf
            });
        }
        if let Some(e) = check_line(line) {
            return Err(e);
        }
        rest = &rest[end..];
    }
    Ok(())
}

/// Number of `Received:` fields in the header section (loop detection).
pub fn count_received(msg: &[u8]) -> usize {
    let mut n = 0;
    for line in msg.split(|&b| b == b'\n') {
        if line == b"\r" || line.is_empty() {
            break;
        }
        if line.len() >= 9 && line[..9].eq_ignore_ascii_case(b"received:") {
            n += 1;
        }
    }
    n
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lim() -> DataLimits {
        DataLimits {
            max_size: 1000,
            max_line: 100,
            timeout: Duration::from_secs(5),
            min_rate: 0,
        }
    }

    async fn run(input: &[u8]) -> (DataEnd, Vec<u8>, Vec<u8>) {
        let mut results = Vec::new();
        // Whole input in one read, and lines cut across tiny reads (some of them already in
        // the command reader's buffer): the same result.
        for (capacity, step) in [(8192, 1 << 20), (1, 1), (2, 3), (3, 2), (7, 7), (5, 8192)] {
            let trickle = crate::net::Trickle { data: input, step };
            let mut r = BufReader::with_capacity(capacity, Rewind::new(trickle));
            // What a command reader would have read ahead before DATA began.
            r.fill_buf().await.unwrap();
            let mut body = Vec::new();
            let end = read_data(&mut r, &mut body, &lim()).await;
            let mut rest = Vec::new();
            tokio::io::AsyncReadExt::read_to_end(&mut r, &mut rest)
                .await
                .unwrap();
            results.push((end, body, rest));
        }
        let first = format!("{:?}", results[0]);
        for r in &results[1..] {
            assert_eq!(format!("{r:?}"), first);
        }
        results.swap_remove(0)
    }

    #[tokio::test]
    async fn unstuffs_and_stops_at_crlf_dot_crlf() {
        let (end, body, rest) = run(b"Subject: x\r\n\r\n..leading\r\n.\r\nQUIT\r\n").await;
        assert!(matches!(end, DataEnd::Ok));
        assert_eq!(body, b"Subject: x\r\n\r\n.leading\r\n");
        assert_eq!(rest, b"QUIT\r\n");
    }

    #[tokio::test]
    async fn smuggling_variants_do_not_end_data() {
        for sep in [
            &b"\n.\n"[..],
            b"\n.\r\n",
            b"\r.\r\n",
            b"\r\n.\n",
            b"\r\n.\r\r\n",
            b"\r\n\x00.\r\n",
        ] {
            let mut input = b"Subject: a\r\n\r\nbody".to_vec();
            input.extend_from_slice(sep);
            input.extend_from_slice(
                b"MAIL FROM:<evil@x>\r\nRCPT TO:<v@y>\r\nDATA\r\nsmuggled\r\n.\r\nQUIT\r\n",
            );
            let (end, _, rest) = run(&input).await;
            assert!(
                matches!(end, DataEnd::Refused(_)),
                "{:?}: {end:?}",
                String::from_utf8_lossy(sep)
            );
            // Everything up to the real CRLF.CRLF was swallowed as one (refused) message.
            assert_eq!(rest, b"QUIT\r\n", "{:?}", String::from_utf8_lossy(sep));
        }
    }

    #[tokio::test]
    async fn limits() {
        let big = format!("{}\r\n.\r\n", "a".repeat(200));
        assert!(matches!(
            run(big.as_bytes()).await.0,
            DataEnd::Refused(DataError::LineTooLong)
        ));
        let many = format!(
            "{}.\r\n",
            "0123456789012345678901234567890123456789\r\n".repeat(30)
        );
        assert!(matches!(
            run(many.as_bytes()).await.0,
            DataEnd::Refused(DataError::TooBig)
        ));
        assert!(matches!(run(b"partial\r\n").await.0, DataEnd::Lost(_)));
    }

    #[test]
    fn bdat_and_hops() {
        assert!(check_bdat(b"a\r\nb\r\n", 100).is_ok());
        assert_eq!(check_bdat(b"a\nb\r\n", 100), Err(DataError::BareLf));
        assert_eq!(check_bdat(b"a\rb\r\n", 100), Err(DataError::BareCr));
        assert_eq!(check_bdat(b"a\r\nno end", 100), Err(DataError::BareLf));
        let msg =
            b"Received: a\r\nreceived: b\r\n\tcont\r\nSubject: s\r\n\r\nReceived: in body\r\n";
        assert_eq!(count_received(msg), 2);
    }
}
