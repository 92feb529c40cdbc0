//! The admin endpoint on `[server].admin` (loopback by default): `/metrics` (Prometheus),
//! `/healthz`, `/readyz`, and the queue verbs used by `passerelle queue` while `serve` runs.
//!
//! The queue verbs need the token that `serve` writes to `SPOOL/admin.token` (mode 0600), so
//! only who can read the spool can act on the queue. Health and metrics are open, for probes.
//! `GET /queue/ID/headers` and `/queue/ID/message` return a stored message (`queue show
//! --headers/--body`); each message read is logged here with the reader the CLI names.
//!
//! A minimal HTTP/1.1 server written by hand: a handful of GET/POST routes with
//! `Connection: close` do not justify hyper's dependency tree in a security gateway.

pub mod client;

use crate::journal::{self, AdminAction};
use crate::queue::{QueueError, QueueHandle};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

pub const TOKEN_FILE: &str = "admin.token";

const WRONG_TOKEN: &str = "missing or wrong X-Passerelle-Token (see SPOOL/admin.token)\n";

/// The admin token check of every state-changing route, in constant time.
fn token_ok(given: Option<&str>, token: &str) -> bool {
    use subtle::ConstantTimeEq;
    bool::from(given.unwrap_or("").as_bytes().ct_eq(token.as_bytes()))
}

pub struct AdminState {
    pub queue: QueueHandle,
    /// Asks the server to reload its configuration (as SIGHUP); the answer is its verdict.
    pub reload: Option<crate::runtime::reload::ReloadHandle>,
    pub spool: PathBuf,
    pub token: String,
}

/// Creates (or replaces) the token file, readable by the spool's owner only.
pub fn write_token(spool: &Path) -> std::io::Result<String> {
    let mut raw = [0u8; 24];
    getrandom::fill(&mut raw).map_err(std::io::Error::other)?;
    let token = data_encoding::HEXLOWER.encode(&raw);
    crate::util::fs::write_atomic(
        &spool.join(TOKEN_FILE),
        token.as_bytes(),
        crate::util::fs::Mode::Set(0o600),
    )?;
    Ok(token)
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

/// [`spool_writable`], its answer kept for 2 s.
fn spool_probe(spool: &Path) -> Result<(), String> {
    type Probe = Option<(std::time::Instant, Result<(), String>)>;
    static LAST: std::sync::Mutex<Probe> = std::sync::Mutex::new(None);
    let mut last = LAST.lock().unwrap_or_else(|p| p.into_inner());
    if let Some((at, r)) = last.as_ref() {
        if at.elapsed() < Duration::from_secs(2) {
            return r.clone();
        }
    }
    let r = spool_writable(spool);
    *last = Some((std::time::Instant::now(), r.clone()));
    r
}

/// Admin connections served at once (issue 24 B.14: there was no cap); beyond, closed at once.
/// The CLI, the monitoring's scrapes and probes need a handful.
const MAX_CONNECTIONS: usize = 64;

pub async fn run(listener: TcpListener, state: Arc<AdminState>) {
    let permits = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        };
        let Ok(permit) = permits.clone().try_acquire_owned() else {
            crate::metrics::inc(
                "passerelle_admin_connections_refused_total",
                "Admin connections closed at once: too many open",
                &[],
            );
            continue;
        };
        let st = state.clone();
        // The whole exchange, headers included, within 30 s (the request is read by hand).
        tokio::spawn(async move {
            let _permit = permit;
            let _ = tokio::time::timeout(Duration::from_secs(30), serve_one(stream, st)).await;
        });
    }
}

struct Request {
    method: String,
    path: String,
    token: Option<String>,
    /// `X-Passerelle-Reader`: the OS user of `passerelle queue show --body`.
    reader: Option<String>,
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
    let mut reader = None;
    for l in lines {
        if let Some((k, v)) = l.split_once(':') {
            if k.trim().eq_ignore_ascii_case("x-passerelle-token") {
                token = Some(v.trim().to_string());
            } else if k.trim().eq_ignore_ascii_case("x-passerelle-reader") {
                reader = Some(v.trim().to_string());
            }
        }
    }
    Some(Request {
        method,
        path,
        token,
        reader,
    })
}

async fn respond(stream: &mut TcpStream, code: u16, ctype: &str, body: &str) {
    respond_bytes(stream, code, ctype, body.as_bytes()).await
}

async fn respond_bytes(stream: &mut TcpStream, code: u16, ctype: &str, body: &[u8]) {
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
    let _ = stream.write_all(body).await;
    let _ = stream.shutdown().await;
}

/// The uid owning the client end (`peer`) of a loopback connection to `local`, from the
/// kernel's socket table: unlike the reader name the CLI sends, the client cannot choose it.
/// `/proc/self/net` stays readable under systemd's `ProcSubset=pid`.
fn socket_uid(peer: std::net::SocketAddr, local: std::net::SocketAddr) -> Option<u32> {
    use std::net::IpAddr;
    // The table writes each address as the kernel's in-memory words, in hex.
    fn hex(a: std::net::SocketAddr) -> String {
        let ip = match a.ip() {
            IpAddr::V4(v4) => format!("{:08X}", u32::from_ne_bytes(v4.octets())),
            IpAddr::V6(v6) => v6
                .octets()
                .chunks(4)
                .map(|w| format!("{:08X}", u32::from_ne_bytes([w[0], w[1], w[2], w[3]])))
                .collect(),
        };
        format!("{ip}:{:04X}", a.port())
    }
    let table = if peer.is_ipv4() { "tcp" } else { "tcp6" };
    let text = std::fs::read_to_string(format!("/proc/self/net/{table}")).ok()?;
    let (want_local, want_remote) = (hex(peer), hex(local));
    text.lines().skip(1).find_map(|line| {
        let f: Vec<&str> = line.split_whitespace().collect();
        (f.len() > 7 && f[1] == want_local && f[2] == want_remote)
            .then(|| f[7].parse().ok())
            .flatten()
    })
}

/// `GET /queue/ID/headers` (the header section) or `/queue/ID/message` (the whole message,
/// logged with its reader: it is health data).
async fn stored_message(
    stream: &mut TcpStream,
    st: &AdminState,
    id: &str,
    whole: bool,
    reader: Option<&str>,
) {
    let text = "text/plain; charset=utf-8";
    let Some(loc) = st.queue.locate(id).await else {
        return respond(stream, 404, text, &format!("{id}: no such message\n")).await;
    };
    let spool = st.spool.clone();
    let read = tokio::task::spawn_blocking(move || crate::queue::spool::read_stored(&spool, loc))
        .await
        .map_err(|e| e.to_string())
        .and_then(|r| r.map_err(|e| e.to_string()));
    let msg = match read {
        Ok(m) => m,
        // Moved by a relocation in between: the next try finds it.
        Err(e) => return respond(stream, 409, text, &format!("{id}: {e}, try again\n")).await,
    };
    let part = if whole {
        let via = match (stream.peer_addr(), stream.local_addr()) {
            (Ok(peer), Ok(local)) => match socket_uid(peer, local) {
                Some(uid) => format!("admin {peer}, socket of uid {uid}"),
                None => format!("admin {peer}"),
            },
            _ => "admin".into(),
        };
        crate::queue::audit::log_body_read(id, reader.unwrap_or("unnamed"), &via);
        &msg[..]
    } else {
        crate::dsn::header_section(&msg)
    };
    respond_bytes(stream, 200, "message/rfc822", part).await
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
        // The listeners are bound before this endpoint starts. The spool can fail, and so can
        // the trust-space material: an expired certificate or a CRL past its grace; a stale or
        // refused whitelist and failing downloads are reported without failing (crate::trust).
        ("GET", "/readyz") => {
            let trust = crate::trust::readiness(crate::trust::now_unix());
            let detail = trust.render();
            // Create + fsync: on a blocking thread, and at most once per 2 s whoever asks
            // (issue 24 B.13: it ran on the runtime at every request).
            let spool = st.spool.clone();
            let writable = tokio::task::spawn_blocking(move || spool_probe(&spool))
                .await
                .unwrap_or_else(|e| Err(e.to_string()));
            match writable {
                Ok(()) if trust.ready => {
                    respond(&mut stream, 200, text, &format!("ready\n{detail}")).await
                }
                Ok(()) => respond(&mut stream, 503, text, &detail).await,
                Err(e) => {
                    respond(
                        &mut stream,
                        503,
                        text,
                        &format!("not ready: spool not writable: {e}\n{detail}"),
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
                crate::metrics::CONTENT_TYPE,
                &crate::metrics::render(),
            )
            .await
        }
        ("POST", "/reload") => {
            if !token_ok(req.token.as_deref(), &st.token) {
                return respond(&mut stream, 403, text, WRONG_TOKEN).await;
            }
            let verdict = match &st.reload {
                Some(r) => Some(r.reload().await),
                None => None,
            };
            match verdict {
                Some(Ok(())) => respond(&mut stream, 200, text, "reloaded\n").await,
                Some(Err(why)) => {
                    respond(
                        &mut stream,
                        409,
                        text,
                        &format!("reload refused, keeping the running configuration: {why}\n"),
                    )
                    .await
                }
                _ => respond(&mut stream, 503, text, "reload unavailable\n").await,
            }
        }
        (_, p) if p == "/queue" || p.starts_with("/queue/") => {
            if !token_ok(req.token.as_deref(), &st.token) {
                return respond(&mut stream, 403, text, WRONG_TOKEN).await;
            }
            let parts: Vec<&str> = p
                .trim_start_matches("/queue")
                .trim_start_matches('/')
                .split('/')
                .collect();
            if let ("GET", [id, what @ ("headers" | "message")]) =
                (req.method.as_str(), parts.as_slice())
            {
                let whole = *what == "message";
                return stored_message(&mut stream, &st, id, whole, req.reader.as_deref()).await;
            }
            let q = &st.queue;
            // An action on one message keeps its record's place in the journal first: one
            // that could not be recorded is refused, never done unrecorded (issue 24 B.12).
            let slot = match (req.method.as_str(), parts.as_slice()) {
                ("POST", [_, "retry" | "hold" | "release" | "delete"]) => {
                    match journal::reserve_admin() {
                        Ok(s) => Some(s),
                        Err(e) => {
                            let msg = format!("refused: {e}; nothing was done, try again later\n");
                            return respond(&mut stream, 503, text, &msg).await;
                        }
                    }
                }
                _ => None,
            };
            let record = |id: &str, action: AdminAction| {
                if let Some(s) = slot {
                    s.admin(id, action, "cli");
                }
            };
            let r: Result<String, QueueError> = match (req.method.as_str(), parts.as_slice()) {
                ("GET", [""]) => Ok(json(&q.list().await)),
                ("GET", [id]) => q
                    .show(id)
                    .await
                    .map(|i| json(&i))
                    .ok_or_else(|| QueueError::NotFound(id.to_string())),
                ("POST", ["retry-all"]) => {
                    q.retry(None).await.map(|n| format!("{{\"retried\":{n}}}"))
                }
                ("POST", [id, "retry"]) => q
                    .retry(Some(id))
                    .await
                    .inspect(|_| record(id, AdminAction::Retried))
                    .map(|n| format!("{{\"retried\":{n}}}")),
                ("POST", [id, "hold"]) => q
                    .hold(id)
                    .await
                    .inspect(|_| record(id, AdminAction::Held))
                    .map(|_| "{}".into()),
                ("POST", [id, "release"]) => q
                    .release(id)
                    .await
                    .inspect(|_| record(id, AdminAction::Released))
                    .map(|_| "{}".into()),
                ("POST", [id, "delete"]) => q
                    .delete(id)
                    .await
                    .inspect(|_| record(id, AdminAction::Deleted))
                    .map(|_| "{}".into()),
                _ => return respond(&mut stream, 404, text, "no such route\n").await,
            };
            match r {
                Ok(body) => respond(&mut stream, 200, "application/json", &body).await,
                Err(e @ QueueError::NotFound(_)) => {
                    respond(&mut stream, 404, text, &format!("{e}\n")).await
                }
                Err(e) => respond(&mut stream, 409, text, &format!("{e}\n")).await,
            }
        }
        _ => respond(&mut stream, 404, text, "no such route\n").await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn socket_uid_finds_the_client_of_a_loopback_connection() {
        let server = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let client = std::net::TcpStream::connect(server.local_addr().unwrap()).unwrap();
        let (accepted, peer) = server.accept().unwrap();
        assert_eq!(peer, client.local_addr().unwrap());
        // SAFETY: getuid has no preconditions.
        let me = unsafe { libc::getuid() };
        assert_eq!(socket_uid(peer, accepted.local_addr().unwrap()), Some(me));
        let nowhere = "127.0.0.1:1".parse().unwrap();
        assert_eq!(socket_uid(peer, nowhere), None);
    }
}
