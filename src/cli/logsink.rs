//! The log lines of `serve`, written to stderr a few milliseconds late, in batches.
//!
//! Why: `tracing-subscriber` writes each event with its own `write(2)`, and `serve` logs about
//! six lines per message (Postfix's shape: connect, queued, sent, removed...), so at 5,000
//! messages a second that was 30,000 syscalls a second on a 2-core machine. Here the lines are
//! appended to a buffer and one thread writes what gathered every [`GATHER`]: one syscall for
//! a whole batch. Why by hand: `tracing-appender`'s non-blocking writer hands every line to
//! its worker through a channel, which wakes the worker for each line when it is idle, the
//! cost we remove here. Nothing is dropped: past [`HIGH_WATER`] the logging thread writes the
//! batch itself, so memory stays bounded and a slow disk slows the log, never loses it.
//! What `kill -9` takes is at most the last [`GATHER`] of lines (the journal and the spool
//! are what must survive a crash, and do).

use std::io::{self, Write};
use std::sync::{Condvar, Mutex, MutexGuard, OnceLock};
use std::time::Duration;

/// How long the writer waits after the first line of a batch: short enough that an
/// administrator's `tail -f` sees no delay, long enough to gather a busy moment's lines.
pub const GATHER: Duration = Duration::from_millis(5);
/// A batch this large is written at once, by the thread that logs.
pub const HIGH_WATER: usize = 1 << 20;

pub struct LogSink {
    /// Lines not yet written.
    pending: Mutex<Vec<u8>>,
    ready: Condvar,
    /// The output and a spare buffer; held while writing so that batches keep their order.
    out: Mutex<(Box<dyn Write + Send>, Vec<u8>)>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while holding the lock leaves plain bytes behind: still good to write.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl LogSink {
    pub fn new(out: Box<dyn Write + Send>) -> LogSink {
        LogSink {
            pending: Mutex::new(Vec::with_capacity(64 << 10)),
            ready: Condvar::new(),
            out: Mutex::new((out, Vec::with_capacity(64 << 10))),
        }
    }

    /// Appends one formatted event (tracing writes each event with one `write_all`).
    fn append(&self, line: &[u8]) {
        let (first, len) = {
            let mut p = lock(&self.pending);
            let first = p.is_empty();
            p.extend_from_slice(line);
            (first, p.len())
        };
        if first {
            self.ready.notify_one();
        }
        if len >= HIGH_WATER {
            self.flush();
        }
    }

    /// Writes whatever is pending, in order with every batch written before.
    pub fn flush(&self) {
        let mut out = lock(&self.out);
        let (w, spare) = &mut *out;
        std::mem::swap(&mut *lock(&self.pending), spare);
        if !spare.is_empty() {
            // Nowhere to report a failing stderr; the next batch tries again.
            let _ = w.write_all(spare);
            let _ = w.flush();
            spare.clear();
        }
    }

    /// The writer thread's loop: wait for a first line, let the batch gather, write it.
    fn run(&self) -> ! {
        loop {
            {
                let mut p = lock(&self.pending);
                while p.is_empty() {
                    p = self.ready.wait(p).unwrap_or_else(|e| e.into_inner());
                }
            }
            std::thread::sleep(GATHER);
            self.flush();
        }
    }
}

/// What `tracing-subscriber` writes an event through.
pub struct SinkWriter(&'static LogSink);

impl Write for SinkWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0.append(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for &'static LogSink {
    type Writer = SinkWriter;
    fn make_writer(&'a self) -> SinkWriter {
        SinkWriter(self)
    }
}

static STDERR_SINK: OnceLock<LogSink> = OnceLock::new();

/// The stderr sink with its writer thread, or `None` if no thread could be started (the
/// caller then writes to stderr directly, as before).
pub fn stderr_sink() -> Option<&'static LogSink> {
    let sink = STDERR_SINK.get_or_init(|| LogSink::new(Box::new(io::stderr())));
    std::thread::Builder::new()
        .name("log-writer".into())
        .spawn(move || sink.run())
        .ok()?;
    // A panic's message goes to stderr directly: the lines before it go first.
    let previous = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        sink.flush();
        previous(info);
    }));
    Some(sink)
}

/// Writes the pending lines (at exit: `main` calls it after the command returns).
pub fn flush_stderr() {
    if let Some(sink) = STDERR_SINK.get() {
        sink.flush();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    /// An output the test can read back.
    #[derive(Clone, Default)]
    struct Shared(Arc<Mutex<Vec<u8>>>);
    impl Write for Shared {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            lock(&self.0).extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    fn leaked(out: &Shared) -> &'static LogSink {
        Box::leak(Box::new(LogSink::new(Box::new(out.clone()))))
    }

    #[test]
    fn lines_wait_for_the_flush_and_keep_their_order() {
        let out = Shared::default();
        let sink = leaked(&out);
        let mut w = SinkWriter(sink);
        w.write_all(b"one\n").unwrap();
        w.write_all(b"two\n").unwrap();
        assert!(lock(&out.0).is_empty(), "nothing written before the flush");
        sink.flush();
        w.write_all(b"three\n").unwrap();
        sink.flush();
        sink.flush();
        assert_eq!(&*lock(&out.0), b"one\ntwo\nthree\n");
    }

    #[test]
    fn the_writer_thread_writes_within_a_deadline() {
        let out = Shared::default();
        let sink = leaked(&out);
        std::thread::spawn(move || sink.run());
        SinkWriter(sink).write_all(b"hello\n").unwrap();
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while lock(&out.0).is_empty() {
            assert!(std::time::Instant::now() < deadline, "never written");
            std::thread::sleep(Duration::from_millis(1));
        }
        assert_eq!(&*lock(&out.0), b"hello\n");
    }

    #[test]
    fn a_large_batch_is_written_by_the_logging_thread() {
        let out = Shared::default();
        let sink = leaked(&out);
        let line = vec![b'x'; 4096];
        for _ in 0..(HIGH_WATER / line.len()) {
            SinkWriter(sink).write_all(&line).unwrap();
        }
        // No writer thread runs here: the high-water mark alone wrote it.
        assert_eq!(lock(&out.0).len(), HIGH_WATER);
        assert!(lock(&sink.pending).capacity() <= 2 * HIGH_WATER);
    }

    #[test]
    fn threads_never_interleave_inside_a_line() {
        let out = Shared::default();
        let sink = leaked(&out);
        let handles: Vec<_> = (0..4u8)
            .map(|t| {
                std::thread::spawn(move || {
                    for i in 0..500 {
                        let line = format!("thread {t} line {i:04} {}\n", "y".repeat(100));
                        SinkWriter(sink).write_all(line.as_bytes()).unwrap();
                    }
                })
            })
            .collect();
        for h in handles {
            h.join().unwrap();
        }
        sink.flush();
        let all = String::from_utf8(lock(&out.0).clone()).unwrap();
        assert_eq!(all.lines().count(), 2000);
        assert!(all
            .lines()
            .all(|l| l.starts_with("thread ") && l.len() == 119));
    }
}
