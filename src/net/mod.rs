//! Small I/O pieces shared by the SMTP server (intake) and client (delivery), and the DNS
//! resolution of next hops (delivery, and the trust space's probe), and the bounded HTTP
//! serving of the console and the admin endpoint.
//!
//! Must not import: anything but config and metrics (it sits under intake, delivery, trust,
//! the console and the admin endpoint).

pub mod http;
pub mod resolve;

use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncBufRead, AsyncBufReadExt, AsyncRead, AsyncWrite, ReadBuf};

/// A plain or TLS connection behind one type, so a session can upgrade in place.
pub trait Stream: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Stream for T {}

pub type BoxStream = Box<dyn Stream>;

/// A stream that can be given back bytes it already produced.
///
/// The DATA reader reads large blocks straight into the message buffer instead of through the
/// session's small line buffer (one copy and a few system calls per 64 KiB instead of one
/// per 4 KiB). A block may run past the end of the data into pipelined commands; those bytes
/// are handed back here and are read again, first, by the command reader. tokio's `BufReader`
/// cannot take bytes back, hence this small wrapper.
pub struct Rewind<S> {
    inner: S,
    /// Bytes given back, served before the inner stream from `pos` on.
    back: Vec<u8>,
    pos: usize,
}

impl<S> Rewind<S> {
    pub fn new(inner: S) -> Self {
        Rewind {
            inner,
            back: Vec::new(),
            pos: 0,
        }
    }

    /// Puts `bytes` in front of whatever is still to be read.
    pub fn push_back(&mut self, bytes: &[u8]) {
        if bytes.is_empty() {
            return;
        }
        let rest = &self.back[self.pos..];
        let mut v = Vec::with_capacity(bytes.len() + rest.len());
        v.extend_from_slice(bytes);
        v.extend_from_slice(rest);
        self.back = v;
        self.pos = 0;
    }

    /// Bytes given back and not read again yet.
    pub fn pending(&self) -> &[u8] {
        &self.back[self.pos..]
    }

    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    /// The inner stream; bytes given back and not yet read are dropped (STARTTLS drops what
    /// was pipelined after it).
    pub fn into_inner(self) -> S {
        self.inner
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Rewind<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let this = &mut *self;
        if this.pos < this.back.len() {
            let n = buf.remaining().min(this.back.len() - this.pos);
            buf.put_slice(&this.back[this.pos..this.pos + n]);
            this.pos += n;
            if this.pos == this.back.len() {
                this.back = Vec::new();
                this.pos = 0;
            }
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut this.inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Rewind<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// A reader that hands out at most `step` bytes per read: lines cut anywhere, for tests and
/// the fuzz targets.
#[cfg(any(test, feature = "fuzzing"))]
pub struct Trickle<'a> {
    pub data: &'a [u8],
    pub step: usize,
}

#[cfg(any(test, feature = "fuzzing"))]
impl AsyncRead for Trickle<'_> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let n = self.step.max(1).min(self.data.len()).min(buf.remaining());
        buf.put_slice(&self.data[..n]);
        self.data = &self.data[n..];
        Poll::Ready(Ok(()))
    }
}

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
    async fn rewind_serves_given_back_bytes_first() {
        use tokio::io::AsyncReadExt;
        let data: &[u8] = b"CD";
        let mut r = Rewind::new(data);
        r.push_back(b"B");
        r.push_back(b"A");
        let mut one = [0u8; 1];
        r.read_exact(&mut one).await.unwrap();
        assert_eq!(&one, b"A");
        r.push_back(b"a");
        let mut rest = Vec::new();
        r.read_to_end(&mut rest).await.unwrap();
        assert_eq!(rest, b"aBCD");
        assert!(r.pending().is_empty());
    }

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
