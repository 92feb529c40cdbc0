//! The admin web console: server-rendered pages on `[console] address` for the operator, the
//! auditors and each establishment's administrators.
//!
//! - Pages are HTML made on the server with `maud` (compile-time checked, escaped by
//!   default); charts are inline SVG; there is no script at all and nothing is fetched from
//!   elsewhere, so a strict Content-Security-Policy holds.
//! - Everything the console needs from the gateway is in [`ConsoleBackend`]; the journal and
//!   the establishments plug in through its two hooks.
//! - Access is one pure function, [`access::decide`]; every page asks it.
//! - One guard in front of every route: the session (cookie `HttpOnly`, `SameSite=Strict`,
//!   `Secure` over HTTPS, idle timeout), the CSRF token of every state-changing request
//!   (403 without it), a same-origin check, and the security headers.
//!
//! Must not import: cli (shared work lives in establishment/ and delivery/check.rs), admin,
//! intake, server.

pub mod access;
mod charts;
pub mod config_edit;
mod hooks;
pub mod journal_hook;
mod listener;
mod pages;
pub mod queue_view;
pub mod redact;
pub mod samples;
mod session;
pub mod totp;
pub mod users;

pub use hooks::{
    AuditEvent, ConsoleBackend, Establishments, GatewayEstablishments, HookError, Journal,
    JournalEvent, NoEstablishments, NoJournal, StatsQuery, StatsTable, TrackQuery, TrackedMessage,
};

use access::{Action, Resource, Role, Verdict};
use anyhow::Context;
use axum::body::Body;
use axum::extract::{ConnectInfo, Request, State};
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{Html, IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use axum::Router;
use listener::{ClientAddr, ConsoleListener, TlsSource};
use maud::{html, Markup, DOCTYPE};
use session::{LoginLimiter, Session, Sessions};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;
use users::UsersCache;

/// Largest request body accepted (a config file edit is the largest form).
const MAX_BODY: usize = 2 * 1024 * 1024;

/// The console's state, shared by every request.
pub struct App {
    backend: ConsoleBackend,
    users: UsersCache,
    sessions: Sessions,
    limiter: LoginLimiter,
    /// HTTPS as the browser sees it (the console's own, or `public_url`'s behind a proxy):
    /// cookies get `Secure` and answers HSTS.
    secure: bool,
    /// `console.public_url`'s origin: the one a form may come from behind a proxy.
    public_origin: Option<String>,
    samples: samples::Samples,
    /// Verified against when the user name is unknown, so a login takes as long either way.
    dummy_hash: String,
    /// One configuration change at a time.
    config_lock: tokio::sync::Mutex<()>,
    /// The shared state's database (`[state] kind = "postgres"`): sessions and writes go there.
    state: Option<Arc<crate::state::Shared>>,
    /// This gateway's name, in the shared state's record of who changed what.
    gateway: String,
    /// Logins whose password was right, waiting for their second factor: ticket -> (user,
    /// client address, since, where to go next).
    second_step: std::sync::Mutex<std::collections::HashMap<String, SecondStep>>,
    /// The last TOTP step each user logged in with (a code is good once).
    totp_used: totp::Used,
}

/// A login half done: the password was right, the code is asked.
pub struct SecondStep {
    user: String,
    client: std::net::IpAddr,
    since: Instant,
    next: String,
}

/// A second step not completed within this is forgotten (the password is asked again).
const SECOND_STEP_TTL: std::time::Duration = std::time::Duration::from_secs(300);
/// Half-done logins kept at most (each costs a right password: a bound, not a limit met).
const SECOND_STEP_MAX: usize = 1000;

/// The logged-in user of a request, put there by the guard.
#[derive(Clone)]
pub struct Viewer {
    pub session: Session,
    pub client: SocketAddr,
}

impl Viewer {
    pub fn role(&self) -> &Role {
        &self.session.role
    }
    pub fn user(&self) -> &str {
        &self.session.user
    }
}

/// Starts the console when `[console]` is configured: binds its address (an error stops
/// `serve`, like any listener), then serves until the task is aborted.
pub async fn start(backend: ConsoleBackend) -> anyhow::Result<Option<tokio::task::JoinHandle<()>>> {
    let snap = backend.snapshot.load_full();
    let Some(cc) = snap.config.console.clone() else {
        return Ok(None);
    };
    let transport = cc.transport(snap.config.tls.is_some()).ok_or_else(|| {
        anyhow::anyhow!(
            "console.address: {} needs HTTPS and there is no certificate",
            cc.address
        )
    })?;
    let tls = tls_source(&transport, &backend)?;
    let sock = tokio::net::TcpListener::bind(cc.address)
        .await
        .with_context(|| format!("console.address: bind {}", cc.address))?;
    let dummy_hash =
        tokio::task::spawn_blocking(|| users::hash_password("not a password, only a timing twin"))
            .await
            .context("console: hashing")??;
    let public_origin = cc
        .public_origin()
        .transpose()
        .map_err(|e| anyhow::anyhow!("console.public_url: {e}"))?;
    let users_file = snap
        .config
        .users_read_file()
        .unwrap_or(cc.users_file.clone());
    let users = UsersCache::new(users_file.clone());
    if users.get().await.is_empty() {
        tracing::warn!(users_file = %users_file.display(),
            "console: no users yet; create the first one with `passerelle console user add NAME --role operator --password-stdin`");
    }
    let app = Arc::new(App {
        backend,
        users,
        sessions: Sessions::new(cc.idle_timeout),
        limiter: LoginLimiter::new(),
        secure: tls.is_some()
            || public_origin
                .as_deref()
                .is_some_and(|o| o.starts_with("https://")),
        public_origin,
        samples: samples::Samples::default(),
        dummy_hash,
        config_lock: tokio::sync::Mutex::new(()),
        state: snap
            .config
            .state
            .shared()
            .then(|| crate::state::Shared::new(snap.config.state.clone())),
        gateway: snap.config.journal.gateway_name(),
        second_step: Default::default(),
        totp_used: Default::default(),
    });
    let listener = ConsoleListener::new(sock, tls)?;
    tracing::info!(address = %cc.address, https = app.secure, "console listening");
    let router = router(app.clone());
    Ok(Some(tokio::spawn(async move {
        tokio::select! {
            _ = listener::serve(listener, router) => {},
            _ = app.samples.run() => {}
        }
    })))
}

fn tls_source(
    t: &crate::config::ConsoleTransport,
    backend: &ConsoleBackend,
) -> anyhow::Result<TlsSource> {
    use crate::config::ConsoleTransport as T;
    Ok(match t {
        T::Plain => None,
        T::OwnCertificate { certificate, key } => {
            let m = crate::tls::TlsMaterial::load(&crate::config::TlsConfig {
                certificate: certificate.clone(),
                private_key: key.clone(),
                trust_anchors: None,
                crls: Vec::new(),
                crl_urls: Vec::new(),
                crl_refresh: std::time::Duration::from_secs(3600),
                crl_grace: std::time::Duration::ZERO,
                crl_max_size: crate::util::fs::DEFAULT_MAX_CRL_BYTES,
            })
            .context("console certificate")?;
            let cfg = listener::server_config(&*m.server_config(None)?);
            Some(Arc::new(move || Some(cfg.clone())))
        }
        T::GatewayCertificate => {
            // The gateway's identity in force, rebuilt only when a reload changed the snapshot.
            let snapshot = backend.snapshot.clone();
            let cache: std::sync::Mutex<Option<(usize, Arc<rustls::ServerConfig>)>> =
                Default::default();
            Some(Arc::new(move || {
                let snap = snapshot.load_full();
                let key = Arc::as_ptr(&snap) as usize;
                let mut c = cache.lock().unwrap_or_else(|p| p.into_inner());
                if let Some((k, cfg)) = c.as_ref() {
                    if *k == key {
                        return Some(cfg.clone());
                    }
                }
                let cfg = listener::server_config(&*snap.tls.as_ref()?.server_config(None).ok()?);
                *c = Some((key, cfg.clone()));
                Some(cfg)
            }))
        }
    })
}

pub fn router(app: Arc<App>) -> Router {
    Router::new()
        .route("/login", get(pages::login::form).post(pages::login::submit))
        .route("/logout", post(pages::login::logout))
        .route("/", get(pages::dashboard::page))
        .route("/queue", get(pages::queue::page))
        .route("/queue/confirm", get(pages::queue::confirm))
        .route("/queue/bulk", post(pages::queue::bulk))
        .route("/messages/{id}", get(pages::message::page))
        .route(
            "/messages/{id}/delete",
            get(pages::message::confirm_delete).post(pages::message::act_delete),
        )
        .route("/messages/{id}/{action}", post(pages::message::act))
        .route("/track", get(pages::later::track))
        .route("/track/{id}/proof", get(pages::later::proof))
        .route("/indicators", get(pages::later::indicators))
        .route("/indicators.csv", get(pages::later::indicators_csv))
        .route("/establishments", get(pages::establishments::list))
        .route(
            "/establishments/new",
            get(pages::establishments::new_form).post(pages::establishments::add),
        )
        .route("/establishments/{name}", get(pages::establishments::page))
        .route(
            "/establishments/{name}/edit",
            get(pages::establishments::edit_form).post(pages::establishments::edit),
        )
        .route(
            "/establishments/{name}/test",
            post(pages::establishments::test),
        )
        .route("/route-test", get(pages::lookups::route_test))
        .route("/whitelist", get(pages::lookups::whitelist))
        .route("/directory", get(pages::lookups::directory))
        .route("/config", get(pages::config::page))
        .route("/config/check", post(pages::config::check))
        .route("/config/apply", post(pages::config::apply))
        .route("/config/rollback", post(pages::config::rollback))
        .route("/users", get(pages::users::list))
        .route("/users/new", post(pages::users::add))
        .route("/users/{name}/totp", post(pages::users::reset_totp))
        .route("/users/{name}/remove", post(pages::users::remove))
        .route("/audit", get(pages::audit::page))
        .route("/audit.csv", get(pages::audit::csv))
        .route("/static/console.css", get(pages::layout::css))
        .route("/favicon.svg", get(pages::layout::favicon))
        .route("/favicon.ico", get(pages::layout::favicon))
        .fallback(|| async { PageError::NotFound })
        .layer(axum::middleware::from_fn_with_state(app.clone(), guard))
        .with_state(app)
}

/// A page that could not be shown, as its status and a short page.
#[derive(Debug)]
pub enum PageError {
    NotFound,
    Forbidden(String),
    BadRequest(String),
    Unavailable(String),
}

impl IntoResponse for PageError {
    fn into_response(self) -> Response {
        let (status, title, text) = match self {
            PageError::NotFound => (
                StatusCode::NOT_FOUND,
                "Not found",
                "There is nothing here, or nothing you may see.".to_string(),
            ),
            PageError::Forbidden(t) => (StatusCode::FORBIDDEN, "Not allowed", t),
            PageError::BadRequest(t) => (StatusCode::BAD_REQUEST, "Bad request", t),
            PageError::Unavailable(t) => (StatusCode::SERVICE_UNAVAILABLE, "Unavailable", t),
        };
        let body = html! {
            (DOCTYPE)
            html lang="en" {
                (pages::layout::head(title))
                body {
                    main #main .narrow {
                        h1 { (title) }
                        p { (text) }
                        p { a href="/" { "Back to the console" } }
                    }
                }
            }
        };
        (status, Html(body.into_string())).into_response()
    }
}

/// Maps a verdict to the page's outcome.
pub fn allow(v: &Viewer, action: Action, resource: Resource<'_>) -> Result<(), PageError> {
    match access::decide(v.role(), action, resource) {
        Verdict::Allow => Ok(()),
        Verdict::NotFound => Err(PageError::NotFound),
        Verdict::Forbidden => Err(PageError::Forbidden(format!(
            "Your role ({}) may not {} here.",
            v.role(),
            action.as_str()
        ))),
    }
}

impl App {
    /// Logs an administrator's action (target `passerelle::console::audit`). Actions on a
    /// message are journalled too, in a place kept before they are done ([`hooks::Journal::reserve`]).
    /// The live session `id`: with a shared state, as the database says (a session opened on
    /// another gateway, or ended there); the database away, as this gateway last saw it.
    async fn session_touch(&self, id: &str, now: Instant) -> Option<Session> {
        let Some(shared) = &self.state else {
            return self.sessions.touch(id, now);
        };
        // The database known to be away: no request waits for it (the follower says when it
        // is back); the sessions seen here keep working.
        if crate::state::unreachable_since().is_some() {
            return self.sessions.touch(id, now);
        }
        let (idle, max_age) = (self.sessions.idle(), session::MAX_AGE);
        let found = shared
            .bounded(async {
                let c = shared.client().await?;
                crate::state::pg::session_touch(&c, id, idle, max_age).await
            })
            .await;
        match found {
            Ok(Some(row)) => {
                let role = row.role.parse::<Role>().ok()?;
                let age = std::time::Duration::from_secs_f64(row.age.clamp(0.0, 1e9));
                Some(self.sessions.remember(Session {
                    id: id.to_string(),
                    user: row.user,
                    role,
                    stamp: row.stamp,
                    csrf: row.csrf,
                    created: now.checked_sub(age).unwrap_or(now),
                    last_seen: now,
                    flash: None,
                }))
            }
            Ok(None) => {
                self.sessions.remove(id);
                None
            }
            Err(_) => self.sessions.touch(id, now),
        }
    }

    /// A new session; with a shared state it is valid on every gateway, and refused while the
    /// database is away (it could not be).
    async fn session_create(&self, user: &users::User, now: Instant) -> Result<Session, PageError> {
        let s = self
            .sessions
            .create(&user.name, user.role.clone(), user.stamp(), now)
            .map_err(|e| PageError::Unavailable(format!("no randomness for a session: {e}")))?;
        let Some(shared) = &self.state else {
            return Ok(s);
        };
        let refused = || {
            PageError::Unavailable(
                "The shared state's database is unreachable: logins are refused until it returns; sessions already open keep working."
                    .into(),
            )
        };
        if crate::state::unreachable_since().is_some() {
            self.sessions.remove(&s.id);
            return Err(refused());
        }
        let row = crate::state::pg::SessionRow {
            user: s.user.clone(),
            role: s.role.to_string(),
            stamp: s.stamp.clone(),
            csrf: s.csrf.clone(),
            age: 0.0,
        };
        let stored = shared
            .bounded(async {
                let c = shared.client().await?;
                crate::state::pg::session_create(&c, &s.id, &row).await
            })
            .await;
        match stored {
            Ok(()) => Ok(s),
            Err(e) => {
                // The details (host, user, TLS) for the log only: the login page is public.
                tracing::warn!(target: "crate::console::audit", "login refused: {e}");
                self.sessions.remove(&s.id);
                Err(refused())
            }
        }
    }

    /// Ends a session here and, with a shared state, on every gateway.
    async fn session_end(&self, id: &str) {
        self.sessions.remove(id);
        if let Some(shared) = self
            .state
            .as_ref()
            .filter(|_| crate::state::unreachable_since().is_none())
        {
            let ended = shared
                .bounded(async {
                    let c = shared.client().await?;
                    crate::state::pg::session_remove(&c, id).await
                })
                .await;
            if let Err(e) = ended {
                tracing::warn!(target: "crate::console::audit", "logout: the session ends on this gateway only: {e}");
            }
        }
    }

    pub fn audit(&self, v: &Viewer, action: &str, target: &str, outcome: &str) -> AuditEvent {
        self.audit_as(
            v.user(),
            &v.role().to_string(),
            v.client,
            action,
            target,
            outcome,
        )
    }

    fn audit_as(
        &self,
        user: &str,
        role: &str,
        client: SocketAddr,
        action: &str,
        target: &str,
        outcome: &str,
    ) -> AuditEvent {
        tracing::info!(target: "passerelle::console::audit", user, role, client = %client.ip(),
            action, target, outcome, "console action");
        let ev = AuditEvent {
            user: user.to_string(),
            role: role.to_string(),
            client: client.ip().to_string(),
            action: action.to_string(),
            target: target.to_string(),
            outcome: outcome.to_string(),
        };
        // The request's audit entry (written by the guard) takes what the handler said.
        let _ = NOTES.try_with(|n| n.borrow_mut().push(ev.clone()));
        ev
    }

    /// The establishments a message belongs to, as intake attributed it ([`access::owners`]).
    pub fn owners(&self, it: &crate::queue::QueueItem) -> Vec<String> {
        let ests = &*self.backend.establishments;
        access::owners(
            it.establishment.as_deref(),
            it.recipients
                .iter()
                .map(|r| (r.address.as_str(), r.transport.as_str())),
            &|a| ests.owner_of(a),
        )
    }

    /// The establishments in force, for pages that attribute many messages at once.
    pub fn scopes(&self) -> Vec<access::EstablishmentScope> {
        self.backend.establishments.scopes().unwrap_or_default()
    }

    fn session_cookie(&self, value: &str, max_age: Option<cookie::time::Duration>) -> HeaderValue {
        let mut c = cookie::Cookie::build((session::COOKIE, value.to_string()))
            .path("/")
            .http_only(true)
            .same_site(cookie::SameSite::Strict)
            .secure(self.secure)
            .build();
        if let Some(m) = max_age {
            c.set_max_age(m);
        }
        HeaderValue::from_str(&c.to_string()).unwrap_or_else(|_| HeaderValue::from_static(""))
    }
}

fn cookie_value(headers: &HeaderMap, name: &str) -> Option<String> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(cookie::Cookie::split_parse)
        .filter_map(Result::ok)
        .find(|c| c.name() == name)
        .map(|c| c.value().to_string())
}

/// A browser says where a request comes from; a state change from another site is refused
/// even before its (missing) token is looked at.
fn same_origin(app: &App, headers: &HeaderMap) -> bool {
    if headers
        .get("sec-fetch-site")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|s| s == "cross-site" || s == "same-site")
    {
        return false;
    }
    let Some(origin) = headers.get(header::ORIGIN).and_then(|v| v.to_str().ok()) else {
        return true;
    };
    if let Some(public) = &app.public_origin {
        // Behind a reverse proxy the Host header is the proxy's business: the browser's
        // origin is the public address.
        return origin.eq_ignore_ascii_case(public);
    }
    let host = headers
        .get(header::HOST)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let scheme = if app.secure { "https" } else { "http" };
    origin == format!("{scheme}://{host}")
}

/// The `csrf` field of a urlencoded form.
fn form_token(body: &[u8]) -> Option<String> {
    serde_urlencoded::from_bytes::<Vec<(String, String)>>(body)
        .ok()?
        .into_iter()
        .find(|(k, _)| k == "csrf")
        .map(|(_, v)| v)
}

fn security_headers(r: &mut Response, https: bool) {
    let h = r.headers_mut();
    if https {
        // A browser that once reached the console over HTTPS never tries it in clear again.
        h.insert(
            header::STRICT_TRANSPORT_SECURITY,
            HeaderValue::from_static("max-age=31536000"),
        );
    }
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(
            "default-src 'none'; style-src 'self'; img-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
        ),
    );
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("same-origin"),
    );
    if !h.contains_key(header::CACHE_CONTROL) {
        h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    }
}

/// In front of every route: session, CSRF, origin, headers.
async fn guard(
    State(app): State<Arc<App>>,
    ConnectInfo(ClientAddr(client)): ConnectInfo<ClientAddr>,
    mut req: Request,
    next: Next,
) -> Response {
    let path = req.uri().path().to_string();
    let reading = matches!(*req.method(), Method::GET | Method::HEAD);
    let public = path == "/login" || path.starts_with("/static/") || path.starts_with("/favicon");
    let mut resp = if !reading && !same_origin(&app, req.headers()) {
        PageError::Forbidden("Cross-site request refused.".into()).into_response()
    } else if public {
        req.extensions_mut().insert(ClientAddr(client));
        if audited(req.method(), &path) {
            let who = crate::audit::Actor {
                via: "console",
                user: "-".into(),
                origin: client.ip().to_string(),
            };
            audited_run(&app, who, req, next).await
        } else {
            next.run(req).await
        }
    } else {
        guarded(&app, client, req, next, reading).await
    };
    security_headers(&mut resp, app.secure);
    resp
}

async fn guarded(
    app: &App,
    client: SocketAddr,
    req: Request,
    next: Next,
    reading: bool,
) -> Response {
    let now = Instant::now();
    let mut session = match cookie_value(req.headers(), session::COOKIE) {
        Some(id) => app.session_touch(&id, now).await,
        None => None,
    };
    // A user removed from the file, or whose role or password changed, is logged out at once
    // (REVIEW B4: a password reset used to keep the old sessions).
    if let Some(s) = &session {
        let still = app.users.find(&s.user).await;
        if !still.is_some_and(|u| u.role == s.role && u.stamp() == s.stamp) {
            session = None;
        }
    }
    let Some(session) = session else {
        if reading {
            let target = req
                .uri()
                .path_and_query()
                .map(|p| p.as_str().to_string())
                .unwrap_or_else(|| "/".into());
            let q = serde_urlencoded::to_string([("next", target)]).unwrap_or_default();
            return Redirect::to(&format!("/login?{q}")).into_response();
        }
        return PageError::Forbidden("Your session has ended: log in again.".into())
            .into_response();
    };
    let mut req = req;
    if !reading {
        let (parts, body) = req.into_parts();
        let Ok(bytes) = axum::body::to_bytes(body, MAX_BODY).await else {
            return (StatusCode::PAYLOAD_TOO_LARGE, "request too large").into_response();
        };
        let ok = form_token(&bytes).is_some_and(|t| session::same_token(&t, &session.csrf));
        if !ok {
            app.audit_as(
                &session.user,
                &session.role.to_string(),
                client,
                "refused request",
                parts.uri.path(),
                "missing or wrong CSRF token",
            );
            let who = crate::audit::Actor {
                via: "console",
                user: session.user.clone(),
                origin: client.ip().to_string(),
            };
            let _ = app
                .backend
                .auditor
                .record(
                    &who,
                    "refused request",
                    parts.uri.path(),
                    None,
                    crate::audit::Outcome::Refused("missing or wrong CSRF token".into()),
                )
                .await;
            return PageError::Forbidden(
                "This form's security token is missing or out of date. Go back, reload the page and try again."
                    .into(),
            )
            .into_response();
        }
        req = Request::from_parts(parts, Body::from(bytes));
    }
    let who = crate::audit::Actor {
        via: "console",
        user: session.user.clone(),
        origin: client.ip().to_string(),
    };
    req.extensions_mut().insert(Viewer { session, client });
    if audited(req.method(), req.uri().path()) {
        return audited_run(app, who, req, next).await;
    }
    next.run(req).await
}

tokio::task_local! {
    /// What the handler of an audited request said it did ([`App::audit_as`]).
    static NOTES: std::cell::RefCell<Vec<AuditEvent>>;
}

/// Requests that are one audit entry each: every form (POST), and the reads of a stored
/// message's header section.
fn audited(method: &Method, path: &str) -> bool {
    *method == Method::POST || (path.starts_with("/messages/") && path.matches('/').count() == 2)
}

/// The entry's outcome from what the handler said (several notes: a bulk form) and the
/// answer's status.
fn entry_outcome(
    notes: &[AuditEvent],
    status: StatusCode,
) -> (crate::audit::Outcome, Option<String>, Option<String>) {
    use crate::audit::Outcome;
    let refused = |o: &str| o.starts_with("refused") || o.starts_with("missing");
    let action = notes.first().map(|n| {
        if notes.len() > 1 {
            format!("{} ({} messages)", n.action, notes.len())
        } else {
            n.action.clone()
        }
    });
    let target = (!notes.is_empty()).then(|| {
        notes
            .iter()
            .map(|n| n.target.as_str())
            .collect::<Vec<_>>()
            .join(" ")
    });
    let outcome = if let Some(n) = notes.iter().find(|n| refused(&n.outcome)) {
        Outcome::Refused(n.outcome.clone())
    } else if status.is_server_error() {
        Outcome::Failed(status.to_string())
    } else if status.is_client_error() {
        Outcome::Refused(status.to_string())
    } else {
        // What the handler said it did, when it said more than "ok".
        let said: Vec<&str> = notes
            .iter()
            .map(|n| {
                n.outcome
                    .trim_start_matches("ok: ")
                    .trim_start_matches("ok")
            })
            .filter(|o| !o.is_empty())
            .collect();
        if said.is_empty() {
            Outcome::Ok
        } else {
            Outcome::OkWith(said.join("; "))
        }
    };
    (outcome, action, target)
}

/// Runs an audited request as one audit entry: its place kept first (a 503, nothing done,
/// when it cannot be), the handler's account and the answer's status written after.
async fn audited_run(app: &App, who: crate::audit::Actor, req: Request, next: Next) -> Response {
    let path = req.uri().path().to_string();
    let action = format!("{} {path}", req.method());
    let est = match req.extensions().get::<Viewer>().map(|v| v.role().clone()) {
        Some(Role::Establishment(e)) => Some(e),
        _ => None,
    };
    let mut pending = match app
        .backend
        .auditor
        .begin(&who, &action, &path, est.as_deref())
        .await
    {
        Ok(p) => p,
        Err(e) => {
            tracing::error!(target: "passerelle::console::audit", user = %who.user, action, "refused: {e}");
            return PageError::Unavailable(format!(
                "This action cannot be recorded in the audit trail ({e}): it was not done. Try again later."
            ))
            .into_response();
        }
    };
    let (resp, notes) = NOTES
        .scope(std::cell::RefCell::new(Vec::new()), async {
            let r = next.run(req).await;
            (r, NOTES.with(|n| n.take()))
        })
        .await;
    let (outcome, act, target) = entry_outcome(&notes, resp.status());
    let user = notes
        .iter()
        .map(|n| n.user.as_str())
        .find(|u| !u.is_empty() && *u != "-");
    let est_of_target = act
        .as_deref()
        .filter(|a| a.starts_with("establishment"))
        .and(target.as_deref());
    pending.amend(user, act.as_deref(), target.as_deref(), est_of_target);
    match pending.finish(outcome).await {
        Ok(_) => resp,
        Err(e) if path.starts_with("/messages/") && !path.ends_with("/delete") => {
            PageError::Unavailable(format!(
                "This read cannot be recorded in the audit trail ({e}): nothing is shown."
            ))
            .into_response()
        }
        Err(e) => {
            tracing::error!(target: "passerelle::console::audit", "done, but its audit entry could not be written: {e}");
            resp
        }
    }
}

/// A page in the console's frame.
pub fn page(app: &App, v: &Viewer, current: &str, title: &str, body: Markup) -> Html<String> {
    pages::layout::frame(app, v, current, title, body)
}
