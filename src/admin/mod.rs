//! The admin endpoint on `[server].admin` (loopback by default): `/metrics` (Prometheus),
//! `/healthz`, `/readyz`, and the queue verbs used by `passerelle queue` while `serve` runs.
//!
//! The queue verbs need the token that `serve` writes to `SPOOL/admin.token` (mode 0600), so
//! only who can read the spool can act on the queue. Health and metrics are open, for probes.
//! `GET /queue/ID/headers` and `/queue/ID/message` return a stored message (`queue show
//! --headers/--body`); each message read is logged here with the reader the CLI names.
//!
//! Served by axum on the console's bounded server (`net::http`: a connection cap, a header
//! deadline, a lifetime); one handler keeps the routes' match so every path, method and answer
//! stays as it was when this server was written by hand (issue 26: one HTTP server stack).
//!
//! Must not import: cli (the CLI is its client), console, intake.

pub mod client;

use crate::journal::{self, AdminAction};
use crate::net::http::ClientAddr;
use crate::queue::{QueueError, QueueHandle};
use axum::body::Body;
use axum::extract::{ConnectInfo, State};
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;

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
    /// Every action and every stored message read is one audit entry, or is refused.
    pub auditor: Arc<crate::audit::Auditor>,
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

/// What a handler sees: the state, and the endpoint's own address (for [`socket_uid`]).
#[derive(Clone)]
struct Served {
    st: Arc<AdminState>,
    local: Option<SocketAddr>,
}

pub async fn run(listener: TcpListener, state: Arc<AdminState>) {
    let served = Served {
        st: state,
        local: listener.local_addr().ok(),
    };
    let router = axum::Router::new().fallback(dispatch).with_state(served);
    let bounds = crate::net::http::Bounds {
        name: "admin",
        max_connections: MAX_CONNECTIONS,
        header_timeout: Duration::from_secs(10),
        // A stored message read by `queue show --body` is the longest answer.
        lifetime: Duration::from_secs(60),
        refused_metric: (
            "passerelle_admin_connections_refused_total",
            "Admin connections closed at once: too many open",
        ),
    };
    crate::net::http::serve(listener, router, bounds).await
}

/// One request, as the CLI sends it.
struct Request {
    method: Method,
    path: String,
    token: Option<String>,
    /// `X-Passerelle-Reader`: the OS user of `passerelle queue show --body`.
    reader: Option<String>,
    /// `/reload?part_of=VERB`: a reload asked by a CLI verb that records the action itself
    /// (`establishment add`), so that one action is one audit entry.
    part_of: bool,
    /// The client's address and the endpoint's, for the body-read log.
    peer: SocketAddr,
    local: Option<SocketAddr>,
}

const TEXT: &str = "text/plain; charset=utf-8";

fn respond(code: u16, ctype: &'static str, body: impl Into<Body>) -> Response {
    let status = StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    (
        status,
        [(header::CONTENT_TYPE, HeaderValue::from_static(ctype))],
        body.into(),
    )
        .into_response()
}

async fn dispatch(
    State(served): State<Served>,
    ConnectInfo(ClientAddr(peer)): ConnectInfo<ClientAddr>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
) -> Response {
    let value = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(|v| v.trim().to_string())
    };
    let req = Request {
        method,
        path: uri.path().to_string(),
        part_of: uri
            .query()
            .is_some_and(|q| q.split('&').any(|kv| kv.starts_with("part_of="))),
        token: value("x-passerelle-token"),
        reader: value("x-passerelle-reader"),
        peer,
        local: served.local,
    };
    serve_one(req, served.st).await
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
async fn stored_message(st: &AdminState, req: &Request, id: &str, whole: bool) -> Response {
    let Some(loc) = st.queue.locate(id).await else {
        return respond(404, TEXT, format!("{id}: no such message\n"));
    };
    let spool = st.spool.clone();
    let read = tokio::task::spawn_blocking(move || crate::queue::spool::read_stored(&spool, loc))
        .await
        .map_err(|e| e.to_string())
        .and_then(|r| r.map_err(|e| e.to_string()));
    let msg = match read {
        Ok(m) => m,
        // Moved by a relocation in between: the next try finds it.
        Err(e) => return respond(409, TEXT, format!("{id}: {e}, try again\n")),
    };
    let part = if whole {
        let (peer, local) = (req.peer, req.local);
        // A read of /proc: on a blocking thread, as every file read of this endpoint.
        let uid = tokio::task::spawn_blocking(move || local.and_then(|l| socket_uid(peer, l)))
            .await
            .ok()
            .flatten();
        let via = match uid {
            Some(uid) => format!("admin {peer}, socket of uid {uid}"),
            None => format!("admin {peer}"),
        };
        let reader = req.reader.as_deref().unwrap_or("unnamed");
        crate::queue::audit::log_body_read(id, reader, &via);
        msg
    } else {
        crate::dsn::header_section(&msg).to_vec()
    };
    respond(200, "message/rfc822", part)
}

fn json<T: serde::Serialize>(v: &T) -> String {
    serde_json::to_string(v).unwrap_or_else(|e| format!("{{\"error\":\"{e}\"}}"))
}

/// What an audited request of the endpoint is (action, target); `None`: not audited (the
/// probes, metrics, the queue's envelopes).
fn audited(method: &str, path: &str) -> Option<(String, String)> {
    let path = path.trim_end_matches('/');
    let parts: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    Some(match (method, parts.as_slice()) {
        ("POST", ["reload"]) => ("reload".into(), "-".into()),
        ("POST", ["queue", "retry-all"]) => ("queue retry --all".into(), "-".into()),
        ("POST", ["queue", id, verb]) => (format!("queue {verb}"), id.to_string()),
        ("GET", ["queue", id, "headers"]) => ("queue show --headers".into(), id.to_string()),
        ("GET", ["queue", id, "message"]) => ("queue show --body".into(), id.to_string()),
        ("POST", _) => (format!("POST {path}"), "-".into()),
        _ => return None,
    })
}

/// One audit entry per audited request: its place kept first (refused, 503, when it cannot
/// be), the outcome written after.
async fn serve_one(req: Request, st: Arc<AdminState>) -> Response {
    let Some((action, target)) = audited(req.method.as_str(), &req.path) else {
        return serve_inner(req, st).await;
    };
    if req.part_of && action == "reload" {
        // The verb's own entry says it reloaded (its outcome), whoever holds the token could
        // reload by SIGHUP as well: applying what is on disk is not a change of its own.
        return serve_inner(req, st).await;
    }
    let (peer, local) = (req.peer, req.local);
    // A read of /proc: on a blocking thread.
    let uid = tokio::task::spawn_blocking(move || local.and_then(|l| socket_uid(peer, l)))
        .await
        .ok()
        .flatten();
    let user = match uid {
        Some(u) => crate::util::uid_name_or_number(u),
        None => "unknown (not a local socket)".into(),
    };
    let who = crate::audit::Actor {
        via: "admin",
        user,
        origin: peer.ip().to_string(),
    };
    let pending = match st.auditor.begin(&who, &action, &target, None).await {
        Ok(p) => p,
        Err(e) => {
            tracing::error!(target: "passerelle::audit", action, target, "refused: {e}");
            return respond(
                503,
                TEXT,
                format!("refused: {e}; nothing was done, try again later\n"),
            );
        }
    };
    let r = serve_inner(req, st).await;
    let status = r.status().as_u16();
    // The reason of a refusal is the answer's first line (error answers are short text; a
    // stored message is never read back here).
    let (r, why) = if r.status().is_success() {
        (r, String::new())
    } else {
        let (parts, body) = r.into_parts();
        let bytes = axum::body::to_bytes(body, 64 * 1024)
            .await
            .unwrap_or_default();
        let why = String::from_utf8_lossy(&bytes)
            .lines()
            .next()
            .unwrap_or("")
            .to_string();
        (Response::from_parts(parts, Body::from(bytes)), why)
    };
    let outcome = match status {
        200..=399 => crate::audit::Outcome::Ok,
        400..=499 => crate::audit::Outcome::Refused(format!("{status}: {why}")),
        _ => crate::audit::Outcome::Failed(format!("{status}: {why}")),
    };
    match pending.finish(outcome).await {
        Ok(_) => r,
        // A stored message is not handed out unrecorded; an action already done is said.
        Err(e) if action.starts_with("queue show") => respond(
            503,
            TEXT,
            format!("refused: {e}; nothing was read, try again later\n"),
        ),
        Err(e) => respond(
            500,
            TEXT,
            format!("done, but its audit entry could not be written: {e}\n"),
        ),
    }
}

async fn serve_inner(req: Request, st: Arc<AdminState>) -> Response {
    let text = TEXT;
    let path = req.path.trim_end_matches('/');
    match (req.method.as_str(), path) {
        ("GET", "/healthz") => respond(200, text, "ok\n"),
        // The listeners are bound before this endpoint starts. The spool can fail, and so can
        // the trust-space material: an expired certificate or a CRL past its grace; a stale or
        // refused whitelist and failing downloads are reported without failing (crate::trust).
        ("GET", "/readyz") => {
            let trust = crate::trust::readiness(crate::util::clock::now_unix());
            let mut detail = trust.render();
            // Events kept on disk while the journal's database is away: said, never failing
            // readiness (mail flows; the journal catches up).
            if let Some(j) = crate::journal::readiness() {
                detail.push_str(&j);
            }
            // The shared state's database away: said, with since when; mail flows on the
            // state last applied.
            if let Some(s) = crate::state::readiness(crate::journal::read::format_time) {
                detail.push_str(&s);
            }
            // The audit trail's head, to note for `audit verify --expect-head`.
            if let Some(a) = crate::audit::readiness() {
                detail.push_str(&a);
            }
            // Create + fsync: on a blocking thread, and at most once per 2 s whoever asks
            // (issue 24 B.13: it ran on the runtime at every request).
            let spool = st.spool.clone();
            let writable = tokio::task::spawn_blocking(move || spool_probe(&spool))
                .await
                .unwrap_or_else(|e| Err(e.to_string()));
            match writable {
                Ok(()) if trust.ready => respond(200, text, format!("ready\n{detail}")),
                Ok(()) => respond(503, text, detail),
                Err(e) => respond(
                    503,
                    text,
                    format!("not ready: spool not writable: {e}\n{detail}"),
                ),
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
            respond(200, crate::metrics::CONTENT_TYPE, crate::metrics::render())
        }
        ("POST", "/reload") => {
            if !token_ok(req.token.as_deref(), &st.token) {
                return respond(403, text, WRONG_TOKEN);
            }
            let verdict = match &st.reload {
                Some(r) => Some(r.reload().await),
                None => None,
            };
            match verdict {
                Some(Ok(())) => respond(200, text, "reloaded\n"),
                Some(Err(why)) => respond(
                    409,
                    text,
                    format!("reload refused, keeping the running configuration: {why}\n"),
                ),
                _ => respond(503, text, "reload unavailable\n"),
            }
        }
        (_, p) if p == "/queue" || p.starts_with("/queue/") => {
            if !token_ok(req.token.as_deref(), &st.token) {
                return respond(403, text, WRONG_TOKEN);
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
                return stored_message(&st, &req, id, whole).await;
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
                            return respond(503, text, msg);
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
                _ => return respond(404, text, "no such route\n"),
            };
            match r {
                Ok(body) => respond(200, "application/json", body),
                Err(e @ QueueError::NotFound(_)) => respond(404, text, format!("{e}\n")),
                Err(e) => respond(409, text, format!("{e}\n")),
            }
        }
        _ => respond(404, text, "no such route\n"),
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
