//! Log in (`/login`, form fields `username` and `password`) and log out.

use super::super::listener::ClientAddr;
use super::super::{users, App, Viewer};
use axum::extract::{Query, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{Html, IntoResponse, Redirect, Response};
use axum::{Extension, Form};
use maud::{html, DOCTYPE};
use std::sync::Arc;
use std::time::Instant;

#[derive(serde::Deserialize, Default)]
#[serde(default)]
pub struct Next {
    next: String,
}

#[derive(serde::Deserialize)]
pub struct Credentials {
    #[serde(default)]
    username: String,
    #[serde(default)]
    password: String,
    #[serde(default)]
    next: String,
    /// The second step: the ticket of the first, and the TOTP code.
    #[serde(default)]
    ticket: String,
    #[serde(default)]
    code: String,
}

/// The second step's form: the field `code` (6 digits).
fn code_page(status: StatusCode, ticket: &str, message: Option<&str>) -> Response {
    let body = html! {
        (DOCTYPE)
        html lang="en" {
            (super::layout::head("Second factor"))
            body {
                main #main .narrow {
                    h1 { "passerelle console" }
                    @if let Some(m) = message {
                        p.error role="alert" { (m) }
                    }
                    form.login method="post" action="/login" {
                        input type="hidden" name="ticket" value=(ticket);
                        p {
                            label for="code" { "Code from your authenticator application (6 digits)" }
                            input #code name="code" type="text" inputmode="numeric" pattern="[0-9]{6}" maxlength="6" autocomplete="one-time-code" required autofocus;
                        }
                        p { button type="submit" { "Log in" } }
                    }
                }
            }
        }
    };
    (status, Html(body.into_string())).into_response()
}

/// Only a path of this console: never an absolute URL (no open redirect).
/// Where to go after the login: only a path of this site. One leading `/` (not `//`, a
/// host), no backslash (browsers read `/\\host` as `//host`), no control character (a TAB
/// or newline is dropped by browsers, so `/\t/evil.example` became `//evil.example`).
fn safe_next(next: &str) -> &str {
    if next.starts_with('/')
        && !next.starts_with("//")
        && !next.contains('\\')
        && !next.chars().any(|c| c.is_control())
    {
        next
    } else {
        "/"
    }
}

fn login_page(status: StatusCode, next: &str, message: Option<&str>) -> Response {
    let body = html! {
        (DOCTYPE)
        html lang="en" {
            (super::layout::head("Log in"))
            body {
                main #main .narrow {
                    h1 { "passerelle console" }
                    @if let Some(m) = message {
                        p.error role="alert" { (m) }
                    }
                    form.login method="post" action="/login" {
                        input type="hidden" name="next" value=(safe_next(next));
                        p {
                            label for="username" { "User name" }
                            input #username name="username" type="text" autocomplete="username" required autofocus;
                        }
                        p {
                            label for="password" { "Password" }
                            input #password name="password" type="password" autocomplete="current-password" required;
                        }
                        p { button type="submit" { "Log in" } }
                    }
                }
            }
        }
    };
    (status, Html(body.into_string())).into_response()
}

pub async fn form(Query(q): Query<Next>) -> Response {
    login_page(StatusCode::OK, &q.next, None)
}

/// Password verifications running at once (one per CPU of the small machines we run on).
static HASHING: tokio::sync::Semaphore = tokio::sync::Semaphore::const_new(2);

pub async fn submit(
    State(app): State<Arc<App>>,
    Extension(ClientAddr(client)): Extension<ClientAddr>,
    Form(c): Form<Credentials>,
) -> Response {
    let now = Instant::now();
    if !c.ticket.is_empty() {
        return second_step(&app, client, c, now).await;
    }
    let name = c.username.trim().to_string();
    let refused = |why: &str| app.audit_as(&name, "-", client, "login", &name, why);
    if let Err(wait) = app.limiter.attempt(client.ip(), &name, now) {
        refused("refused: too many failed attempts");
        let minutes = wait.as_secs().div_ceil(60);
        return login_page(
            StatusCode::TOO_MANY_REQUESTS,
            &c.next,
            Some(&format!(
                "Too many failed attempts: try again in {minutes} minute(s)."
            )),
        );
    }
    let user = app.users.find(&name).await;
    let hash = user
        .as_ref()
        .map(|u| u.hash.clone())
        .unwrap_or_else(|| app.dummy_hash.clone());
    let password = c.password;
    // Argon2 takes tens of milliseconds of CPU and 19 MiB: off the async threads, and at most
    // as many at once as there are CPUs; beyond, an immediate 429 rather than a queue of
    // hashes (memory) that answers nobody in time.
    let Ok(permit) = HASHING.try_acquire() else {
        refused("refused: too many logins at once");
        let mut r = login_page(
            StatusCode::TOO_MANY_REQUESTS,
            &c.next,
            Some("Too many logins at once: try again in a moment."),
        );
        r.headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        return r;
    };
    let good = tokio::task::spawn_blocking(move || users::verify_password(&hash, &password))
        .await
        .unwrap_or(false);
    drop(permit);
    let Some(user) = user.filter(|_| good) else {
        refused("refused: wrong user name or password");
        return login_page(
            StatusCode::UNAUTHORIZED,
            &c.next,
            Some("Wrong user name or password."),
        );
    };
    // The second factor: a user enrolled, or whose role `[console] second_factor` lists.
    let required = app
        .backend
        .snapshot
        .load()
        .config
        .console
        .as_ref()
        .is_some_and(|k| k.second_factor.iter().any(|r| r == user.role.kind()));
    if user.totp.is_some() || required {
        if user.totp.is_none() {
            refused("refused: a second factor is required and none is enrolled");
            return login_page(
                StatusCode::FORBIDDEN,
                &c.next,
                Some("Your role needs a second factor and you have none yet: ask an operator to enrol you (passerelle console user totp NAME --reset)."),
            );
        }
        let Ok(ticket) = super::super::session::random_token() else {
            return login_page(
                StatusCode::SERVICE_UNAVAILABLE,
                &c.next,
                Some("No randomness: try again."),
            );
        };
        {
            let mut m = app.second_step.lock().unwrap_or_else(|p| p.into_inner());
            m.retain(|_, s| now.duration_since(s.since) < super::super::SECOND_STEP_TTL);
            if m.len() >= super::super::SECOND_STEP_MAX {
                drop(m);
                refused("refused: too many logins waiting for their code");
                return login_page(
                    StatusCode::TOO_MANY_REQUESTS,
                    &c.next,
                    Some("Too many logins at once: try again in a moment."),
                );
            }
            m.insert(
                ticket.clone(),
                super::super::SecondStep {
                    user: user.name.clone(),
                    client: client.ip(),
                    since: now,
                    next: c.next.clone(),
                },
            );
        }
        app.audit_as(
            &user.name,
            &user.role.to_string(),
            client,
            "login",
            &user.name,
            "ok: password right, code asked",
        );
        return code_page(StatusCode::OK, &ticket, None);
    }
    open_session(&app, &user, client, &c.next, now, "ok").await
}

/// The end of a good login, after the password alone or after the code: the limiter forgets
/// the failures, a session opens, the entry is noted and the browser goes where it was going.
async fn open_session(
    app: &App,
    user: &users::User,
    client: std::net::SocketAddr,
    next: &str,
    now: Instant,
    outcome: &str,
) -> Response {
    app.limiter.succeeded(client.ip(), &user.name);
    let s = match app.session_create(user, now).await {
        Ok(s) => s,
        Err(e) => {
            app.audit_as(
                &user.name,
                "-",
                client,
                "login",
                &user.name,
                "refused: no session could be opened (see the service log)",
            );
            return e.into_response();
        }
    };
    app.audit_as(
        &user.name,
        &user.role.to_string(),
        client,
        "login",
        &user.name,
        outcome,
    );
    let mut r = Redirect::to(safe_next(next)).into_response();
    r.headers_mut()
        .insert(header::SET_COOKIE, app.session_cookie(&s.id, None));
    r
}

/// The code of a login whose password was right.
async fn second_step(
    app: &App,
    client: std::net::SocketAddr,
    c: Credentials,
    now: Instant,
) -> Response {
    let step = {
        let mut m = app.second_step.lock().unwrap_or_else(|p| p.into_inner());
        m.retain(|_, s| now.duration_since(s.since) < super::super::SECOND_STEP_TTL);
        match m.get(&c.ticket) {
            Some(s) if s.client == client.ip() => Some((s.user.clone(), s.next.clone())),
            _ => None,
        }
    };
    let Some((name, next)) = step else {
        app.audit_as(
            "-",
            "-",
            client,
            "login",
            "-",
            "refused: second step unknown or expired",
        );
        return login_page(
            StatusCode::UNAUTHORIZED,
            "/",
            Some("This login took too long: give your password again."),
        );
    };
    let refused = |why: &str| app.audit_as(&name, "-", client, "login", &name, why);
    if let Err(wait) = app.limiter.attempt(client.ip(), &name, now) {
        app.second_step
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&c.ticket);
        refused("refused: too many failed attempts");
        let minutes = wait.as_secs().div_ceil(60);
        return login_page(
            StatusCode::TOO_MANY_REQUESTS,
            &next,
            Some(&format!(
                "Too many failed attempts: try again in {minutes} minute(s)."
            )),
        );
    }
    let user = app.users.find(&name).await;
    let secret = user
        .as_ref()
        .and_then(|u| u.totp.as_deref())
        .and_then(super::super::totp::secret_bytes);
    let (Some(user), Some(secret)) = (user, secret) else {
        refused("refused: the user or its second factor is gone");
        return login_page(
            StatusCode::UNAUTHORIZED,
            &next,
            Some("Wrong user name or password."),
        );
    };
    let now_unix = crate::util::clock::now_unix().max(0) as u64;
    let Some(step) = super::super::totp::matching_step(&secret, &c.code, now_unix) else {
        refused("refused: wrong code");
        return code_page(
            StatusCode::UNAUTHORIZED,
            &c.ticket,
            Some("Wrong code: give the one your application shows now."),
        );
    };
    if !app.totp_used.take(&name, step) {
        refused("refused: code already used");
        return code_page(
            StatusCode::UNAUTHORIZED,
            &c.ticket,
            Some("This code was already used: wait for the next one."),
        );
    }
    app.second_step
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .remove(&c.ticket);
    open_session(app, &user, client, &next, now, "ok: password and code").await
}

pub async fn logout(State(app): State<Arc<App>>, Extension(v): Extension<Viewer>) -> Response {
    app.session_end(&v.session.id).await;
    app.audit(&v, "logout", v.user(), "ok");
    let mut r = Redirect::to("/login").into_response();
    r.headers_mut().insert(
        header::SET_COOKIE,
        app.session_cookie("", Some(cookie::time::Duration::ZERO)),
    );
    r
}

#[cfg(test)]
mod tests {
    #[test]
    fn next_stays_on_this_site() {
        assert_eq!(super::safe_next("/queue?x=1"), "/queue?x=1");
        for bad in [
            "https://evil.example/",
            "//evil.example",
            "/\\evil",
            "",
            "/\t/evil.example",
            "/\n/evil.example",
            "/\r/evil",
            "/x\u{7f}",
        ] {
            assert_eq!(super::safe_next(bad), "/", "{bad}");
        }
    }
}
