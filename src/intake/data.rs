//! The DATA reader: strict CRLF, dot-unstuffing, size and line limits.
//!
//! Only `<CRLF>.<CRLF>` ends the data. A bare LF, a bare CR or a NUL anywhere marks the
//! message as refused but reading goes on to the real end, so a smuggled `\n.\n` never
//! splits one message into two (SMTP smuggling).

use crate::net::{read_line, Line};
use std::time::{Duration, Instant};
use tokio::io::AsyncBufRead;

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
    if content.contains(&0) {
        return Some(DataError::Nul);
    }
    if content.contains(&b'\r') {
        return Some(DataError::BareCr);
    }
    None
}

/// Reads DATA content after the 354, appending the unstuffed message to `body`.
pub async fn read_data<R: AsyncBufRead + Unpin>(
    r: &mut R,
    body: &mut Vec<u8>,
    lim: &DataLimits,
) -> DataEnd {
    let start = Instant::now();
    let mut line = Vec::with_capacity(1024);
    let mut error: Option<DataError> = None;
    let mut received = 0usize;
    // The terminating "." counts only right after a CRLF (or first, right after the 354).
    let mut after_crlf = true;
    loop {
        // The whole transfer must keep up min_rate beyond the base timeout.
        if let Some(secs) = received.checked_div(lim.min_rate) {
            if start.elapsed() > lim.timeout + Duration::from_secs(secs as u64) {
                return DataEnd::Lost("data rate too low".into());
            }
        }
        match read_line(r, &mut line, lim.max_line, lim.timeout).await {
            Err(e) => return DataEnd::Lost(e.to_string()),
            Ok(Line::Eof) => return DataEnd::Lost("connection closed during DATA".into()),
            Ok(Line::TooLong { crlf }) => {
                received += lim.max_line;
                error.get_or_insert(DataError::LineTooLong);
                after_crlf = crlf;
                continue;
            }
            Ok(Line::Complete) => {}
        }
        received += line.len();
        let was_after_crlf = std::mem::replace(&mut after_crlf, line.ends_with(b"\r\n"));
        if line == b".\r\n" && was_after_crlf {
            return match error {
                None => DataEnd::Ok,
                Some(e) => DataEnd::Refused(e),
            };
        }
        if let Some(e) = check_line(&line) {
            error.get_or_insert(e);
        }
        if error.is_some() {
            continue;
        }
        let content: &[u8] = if line.first() == Some(&b'.') {
            &line[1..]
        } else {
            &line
        };
        if body.len() + content.len() > lim.max_size {
            error = Some(DataError::TooBig);
            continue;
        }
        body.extend_from_slice(content);
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
        let mut r = BufReader::new(input);
        let mut body = Vec::new();
        let end = read_data(&mut r, &mut body, &lim()).await;
        let mut rest = Vec::new();
        tokio::io::AsyncReadExt::read_to_end(&mut r, &mut rest)
            .await
            .unwrap();
        (end, body, rest)
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
