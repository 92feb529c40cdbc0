//! The admin endpoint on `[server].admin` (loopback by default): `/metrics` (Prometheus),
//! `/healthz`, `/readyz`, and the queue verbs used by `passerelle queue` while `serve` runs.
//!
//! The queue verbs need the token that `serve` writes to `SPOOL/admin.token` (mode 0600), so
//! only who can read the spool can act on the queue. Health and metrics are open, for probes.
//!
//! A minimal HTTP/1.1 server written by hand: a handful of GET/POST routes with
//! `Connection: close` do not justify hyper's dependency tree in a security gateway.

use crate::journal::{self, AdminAction};
use crate::queue::{Command, QueueHandle};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

pub const TOKEN_FILE: &str = "admin.token";

pub struct AdminState {
    pub queue: QueueHandle,
    pub spool: PathBuf,
    pub token: String,
    /// Set once every listener is bound.
    pub listening: AtomicBool,
}

/// Creates (or replaces) the token file, readable by the spool's owner only.
pub fn write_token(spool: &Path) -> std::io::Result<String> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut raw = [0u8; 24];
    std::fs::File::open("/dev/urandom")?.read_exact_sync(&mut raw)?;
    let token: String = raw.iter().map(|b| format!("{b:02x}")).collect();
    let path = spool.join(TOKEN_FILE);
    let tmp = spool.join(".admin.token.tmp");
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)?;
    f.write_all(token.as_bytes())?;
    f.sync_all()?;
    std::fs::rename(&tmp, &path)?;
    Ok(token)
}

trait ReadExactSync {
    fn read_exact_sync(&mut self, buf: &mut [u8]) -> std::io::Result<()>;
}
impl ReadExactSync for std::fs::File {
    fn read_exact_sync(&mut self, buf: &mut [u8]) -> std::io::Result<()> {
        std::io::Read::read_exact(self, buf)
    }
}

/// Writable spool: a small file is written, fsync'd and removed.
fn spool_writable(spool: &Path) -> Result<(), String> {
    use std::io::Write;
    let p = spool.join(".ready-probe");
    let r = std::fs::File::create(&p).and_then(|mut f| {
        f.write_all(b"ok")?;
        f.sync_all()
    });
    let _ = std::fs::remove_file(&p);
    r.map_err(|e| e.to_string())
}

pub async fn run(listener: TcpListener, state: Arc<AdminState>) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        };
        let st = state.clone();
        tokio::spawn(async move {
            let _ = tokio::time::timeout(Duration::from_secs(30), serve_one(stream, st)).await;
        });
    }
}

struct Request {
    method: String,
    path: String,
    token: Option<String>,
}

async fn read_request(stream: &mut TcpStream) -> Option<Request> {
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 1024];
    while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = stream.read(&mut chunk).await.ok()?;
        if n == 0 || buf.len() > 16 * 1024 {
            return None;
        }
        buf.extend_from_slice(&chunk[..n]);
    }
    let head = String::from_utf8_lossy(&buf);
    let mut lines = head.split("\r\n");
    let mut first = lines.next()?.split_whitespace();
    let method = first.next()?.to_string();
    let path = first.next()?.to_string();
    let mut token = None;
    for l in lines {
        if let Some((k, v)) = l.split_once(':') {
            if k.trim().eq_ignore_ascii_case("x-passerelle-token") {
                token = Some(v.trim().to_string());
            }
        }
    }
    Some(Request {
        method,
        path,
        token,
    })
}

async fn respond(stream: &mut TcpStream, code: u16, ctype: &str, body: &str) {
    let reason = match code {
        200 => "OK",
        400 => "Bad Request",
        403 => "Forbidden",
        404 => "Not Found",
        409 => "Conflict",
        503 => "Service Unavailable",
        _ => "Error",
    };
    let head = format!(
        "HTTP/1.1 {code} {reason}\r\nContent-Type: {ctype}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    let _ = stream.write_all(head.as_bytes()).await;
    let _ = stream.write_all(body.as_bytes()).await;
    let _ = stream.shutdown().await;
}

fn json<T: serde::Serialize>(v: &T) -> String {
    serde_json::to_string(v).unwrap_or_else(|e| format!("{{\"error\":\"{e}\"}}"))
}

async fn serve_one(mut stream: TcpStream, st: Arc<AdminState>) {
    let Some(req) = read_request(&mut stream).await else {
        return;
    };
    let text = "text/plain; charset=utf-8";
    let path = req.path.trim_end_matches('/');
    match (req.method.as_str(), path) {
        ("GET", "/healthz") => respond(&mut stream, 200, text, "ok\n").await,
        ("GET", "/readyz") => {
            let listening = st.listening.load(Ordering::Relaxed);
            let spool = spool_writable(&st.spool);
            match (listening, spool) {
                (true, Ok(())) => respond(&mut stream, 200, text, "ready\n").await,
                (false, _) => {
                    respond(&mut stream, 503, text, "not ready: listeners not bound\n").await
                }
                (_, Err(e)) => {
                    respond(
                        &mut stream,
                        503,
                        text,
                        &format!("not ready: spool not writable: {e}\n"),
                    )
                    .await
                }
            }
        }
        ("GET", "/metrics") => {
            let s = st.queue.stats().await;
            crate::metrics::gauge_set(
                "passerelle_queue_messages",
                "messages in the queue",
                &[],
                s.messages as f64,
            );
            crate::metrics::gauge_set(
                "passerelle_queue_held",
                "messages on hold",
                &[],
                s.held as f64,
            );
            crate::metrics::gauge_set(
                "passerelle_queue_in_delivery",
                "messages being delivered",
                &[],
                s.in_delivery as f64,
            );
            crate::metrics::gauge_set(
                "passerelle_queue_oldest_age_seconds",
                "age of the oldest queued message",
                &[],
                s.oldest_age as f64,
            );
            respond(
                &mut stream,
                200,
                "text/plain; version=0.0.4",
                &crate::metrics::render(),
            )
            .await
        }
        (_, p) if p == "/queue" || p.starts_with("/queue/") => {
            if req.token.as_deref() != Some(st.token.as_str()) {
                return respond(
                    &mut stream,
                    403,
                    text,
                    "missing or wrong X-Passerelle-Token (see SPOOL/admin.token)\n",
                )
                .await;
            }
            let parts: Vec<&str> = p
                .trim_start_matches("/queue")
                .trim_start_matches('/')
                .split('/')
                .collect();
            let q = &st.queue;
            let r: Result<String, String> = match (req.method.as_str(), parts.as_slice()) {
                ("GET", [""]) => Ok(json(&q.list().await)),
                ("GET", [id]) => q
                    .show(id)
                    .await
                    .map(|i| json(&i))
                    .ok_or_else(|| format!("{id}: no such message")),
                ("POST", ["retry-all"]) => q
                    .ask(|tx| Command::Retry(None, tx))
                    .await
                    .map(|n| format!("{{\"retried\":{n}}}")),
                ("POST", [id, "retry"]) => q
                    .ask(|tx| Command::Retry(Some(id.to_string()), tx))
                    .await
                    .inspect(|_| journal::admin(id, AdminAction::Retried, "cli"))
                    .map(|n| format!("{{\"retried\":{n}}}")),
                ("POST", [id, "hold"]) => q
                    .ask(|tx| Command::Hold(id.to_string(), tx))
                    .await
                    .inspect(|_| journal::admin(id, AdminAction::Held, "cli"))
                    .map(|_| "{}".into()),
                ("POST", [id, "release"]) => q
                    .ask(|tx| Command::Release(id.to_string(), tx))
                    .await
                    .inspect(|_| journal::admin(id, AdminAction::Released, "cli"))
                    .map(|_| "{}".into()),
                ("POST", [id, "delete"]) => q
                    .ask(|tx| Command::Delete(id.to_string(), tx))
                    .await
                    .inspect(|_| journal::admin(id, AdminAction::Deleted, "cli"))
                    .map(|_| "{}".into()),
                _ => return respond(&mut stream, 404, text, "no such route\n").await,
            };
            match r {
                Ok(body) => respond(&mut stream, 200, "application/json", &body).await,
                Err(e) if e.contains("no such message") => {
                    respond(&mut stream, 404, text, &format!("{e}\n")).await
                }
                Err(e) => respond(&mut stream, 409, text, &format!("{e}\n")).await,
            }
        }
        _ => respond(&mut stream, 404, text, "no such route\n").await,
    }
}
