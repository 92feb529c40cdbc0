//! Small I/O pieces shared by the SMTP server (intake) and client (delivery).

use std::time::Duration;
use tokio::io::{AsyncBufRead, AsyncBufReadExt, AsyncRead, AsyncWrite};

/// A plain or TLS connection behind one type, so a session can upgrade in place.
pub trait Stream: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Stream for T {}

pub type BoxStream = Box<dyn Stream>;

#[derive(Debug, PartialEq, Eq)]
pub enum Line {
    /// A complete line; the buffer holds it with its terminator.
    Complete,
    /// The line exceeded the limit; the rest of it (up to LF) was consumed and discarded.
    /// `crlf` tells whether it ended with CRLF (rather than a bare LF).
    TooLong { crlf: bool },
    /// The peer closed (a partial line, if any, is in the buffer).
    Eof,
}

/// Reads one LF-terminated line into `buf` (cleared first), at most `max` bytes, within
/// `timeout`. Works on the buffered reader directly so no byte is lost or reordered.
pub async fn read_line<R: AsyncBufRead + Unpin>(
    r: &mut R,
    buf: &mut Vec<u8>,
    max: usize,
    timeout: Duration,
) -> std::io::Result<Line> {
    buf.clear();
    tokio::time::timeout(timeout, read_line_inner(r, buf, max))
        .await
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "timeout"))?
}

async fn read_line_inner<R: AsyncBufRead + Unpin>(
    r: &mut R,
    buf: &mut Vec<u8>,
    max: usize,
) -> std::io::Result<Line> {
    let mut too_long = false;
    let mut last = 0u8;
    loop {
        let avail = r.fill_buf().await?;
        if avail.is_empty() {
            return Ok(Line::Eof);
        }
        let (used, done) = match memchr_lf(avail) {
            Some(i) => (i + 1, true),
            None => (avail.len(), false),
        };
        let prev = if used >= 2 { avail[used - 2] } else { last };
        last = avail[used - 1];
        if !too_long {
            if buf.len() + used > max {
                too_long = true;
                buf.clear();
            } else {
                buf.extend_from_slice(&avail[..used]);
            }
        }
        r.consume(used);
        if done {
            return Ok(if too_long {
                Line::TooLong {
                    crlf: prev == b'\r',
                }
            } else {
                Line::Complete
            });
        }
    }
}

fn memchr_lf(b: &[u8]) -> Option<usize> {
    memchr::memchr(b'\n', b)
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::BufReader;

    #[tokio::test]
    async fn lines_and_limits() {
        let data: &[u8] = b"EHLO x\r\nAAAAAAAAAAAAAAAAAAAA\r\nQUIT\r\npartial";
        let mut r = BufReader::with_capacity(4, data);
        let mut buf = Vec::new();
        let t = Duration::from_secs(1);
        assert_eq!(
            read_line(&mut r, &mut buf, 10, t).await.unwrap(),
            Line::Complete
        );
        assert_eq!(buf, b"EHLO x\r\n");
        assert_eq!(
            read_line(&mut r, &mut buf, 10, t).await.unwrap(),
            Line::TooLong { crlf: true }
        );
        assert_eq!(
            read_line(&mut r, &mut buf, 10, t).await.unwrap(),
            Line::Complete
        );
        assert_eq!(buf, b"QUIT\r\n");
        assert_eq!(read_line(&mut r, &mut buf, 10, t).await.unwrap(), Line::Eof);
        assert_eq!(buf, b"partial");
    }
}
