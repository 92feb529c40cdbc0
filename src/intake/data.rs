//! The DATA reader: strict CRLF, dot-unstuffing, size and line limits.
//!
//! Only `<CRLF>.<CRLF>` ends the data. A bare LF, a bare CR or a NUL anywhere marks the
//! message as refused but reading goes on to the real end, so a smuggled `\n.\n` never
//! splits one message into two (SMTP smuggling).

use std::time::{Duration, Instant};
use tokio::io::{AsyncBufRead, AsyncBufReadExt};

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

/// Reads DATA content after the 354, appending the unstuffed message to `body`.
///
/// Works on whole buffers: each read is scanned for line ends with memchr and the complete
/// lines in it are handled in place, with one timer per read rather than per line (a 100 KiB
/// message is thousands of lines). Nothing past the terminating line is consumed: pipelined
/// commands after it stay in the reader.
pub async fn read_data<R: AsyncBufRead + Unpin>(
    r: &mut R,
    body: &mut Vec<u8>,
    lim: &DataLimits,
) -> DataEnd {
    let start = Instant::now();
    let mut st = Lines {
        body,
        max_size: lim.max_size,
        max_line: lim.max_line,
        error: None,
        received: 0,
        after_crlf: true,
        partial: Vec::new(),
        too_long: false,
        last: 0,
        line_start: None,
    };
    loop {
        // The whole transfer must keep up min_rate beyond the base timeout, and no single
        // line may take longer than the timeout.
        if let Some(secs) = st.received.checked_div(lim.min_rate) {
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
        let avail = match tokio::time::timeout(wait, r.fill_buf()).await {
            Err(_) => return DataEnd::Lost("timeout".into()),
            Ok(Err(e)) => return DataEnd::Lost(e.to_string()),
            Ok(Ok(a)) => a,
        };
        if avail.is_empty() {
            return DataEnd::Lost("connection closed during DATA".into());
        }
        let mut used = 0;
        let mut end = None;
        for lf in memchr::memchr_iter(b'\n', avail) {
            let piece = &avail[used..=lf];
            used = lf + 1;
            if let Some(e) = st.line_end(piece) {
                end = Some(e);
                break;
            }
        }
        if end.is_none() && used < avail.len() {
            st.line_part(&avail[used..]);
            used = avail.len();
        }
        r.consume(used);
        if let Some(e) = end {
            return e;
        }
    }
}

/// The line state of `read_data` between reads.
struct Lines<'a> {
    body: &'a mut Vec<u8>,
    max_size: usize,
    max_line: usize,
    error: Option<DataError>,
    /// Bytes received so far (for the data rate).
    received: usize,
    /// The terminating "." counts only right after a CRLF (or first, right after the 354).
    after_crlf: bool,
    /// The start of a line whose end has not arrived yet.
    partial: Vec<u8>,
    /// The current line is already longer than `max_line` (its bytes are dropped).
    too_long: bool,
    /// The last byte seen (to tell CRLF from LF when a read ends between CR and LF).
    last: u8,
    line_start: Option<Instant>,
}

impl Lines<'_> {
    /// The start or middle of a line (no LF).
    fn line_part(&mut self, bytes: &[u8]) {
        self.line_start.get_or_insert_with(Instant::now);
        if !self.too_long {
            if self.partial.len() + bytes.len() > self.max_line {
                self.too_long = true;
                self.partial.clear();
            } else {
                self.partial.extend_from_slice(bytes);
            }
        }
        self.last = bytes[bytes.len() - 1];
    }

    /// The rest of a line, ending with its LF. Returns how DATA ends if this was the end.
    fn line_end(&mut self, bytes: &[u8]) -> Option<DataEnd> {
        let prev = if bytes.len() >= 2 {
            bytes[bytes.len() - 2]
        } else {
            self.last
        };
        self.last = b'\n';
        self.line_start = None;
        if self.too_long || self.partial.len() + bytes.len() > self.max_line {
            self.too_long = false;
            self.partial.clear();
            self.received += self.max_line;
            self.error.get_or_insert(DataError::LineTooLong);
            self.after_crlf = prev == b'\r';
            return None;
        }
        if self.partial.is_empty() {
            return self.line(bytes);
        }
        let mut whole = std::mem::take(&mut self.partial);
        whole.extend_from_slice(bytes);
        let end = self.line(&whole);
        whole.clear();
        self.partial = whole;
        end
    }

    /// One complete line, with its LF.
    fn line(&mut self, line: &[u8]) -> Option<DataEnd> {
        self.received += line.len();
        let was_after_crlf = std::mem::replace(&mut self.after_crlf, line.ends_with(b"\r\n"));
        if line == b".\r\n" && was_after_crlf {
            return Some(match self.error {
                None => DataEnd::Ok,
                Some(e) => DataEnd::Refused(e),
            });
        }
        if let Some(e) = check_line(line) {
            self.error.get_or_insert(e);
        }
        if self.error.is_some() {
            return None;
        }
        let content: &[u8] = line.strip_prefix(b".").unwrap_or(line);
        if self.body.len() + content.len() > self.max_size {
            self.error = Some(DataError::TooBig);
            return None;
        }
        self.body.extend_from_slice(content);
        None
    }
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
    use tokio::io::BufReader;

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
        // Whole input in one read, and lines cut across tiny reads: the same result.
        for capacity in [8192, 1, 2, 3, 7] {
            let mut r = BufReader::with_capacity(capacity, input);
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
