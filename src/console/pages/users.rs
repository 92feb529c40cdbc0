//! `/users`: the console's users (what `passerelle console user` does): operators add one,
//! reset its second factor, remove it; the secret of a new second factor is shown once, as
//! its `otpauth://` URI and a QR code drawn here (no service elsewhere sees it).

use super::super::access::{Action, Resource, Role};
use super::super::{allow, page as frame, totp, users, App, PageError, Viewer};
use super::layout::csrf;
use axum::extract::{Path, State};
use axum::response::{IntoResponse, Response};
use axum::{Extension, Form};
use maud::{html, Markup, PreEscaped};
use std::sync::Arc;

#[derive(serde::Deserialize, Default)]
#[serde(default)]
pub struct AddForm {
    name: String,
    role: String,
    password: String,
    totp: String,
}

/// The QR code of `uri`, as inline SVG (black modules on white, scannable from a screen).
fn qr(uri: &str) -> Markup {
    match qrcode::QrCode::new(uri.as_bytes()) {
        Ok(code) => {
            let svg = code
                .render::<qrcode::render::svg::Color>()
                .min_dimensions(240, 240)
                .build();
            // The XML declaration is for a file; inside HTML the <svg> element alone.
            let start = svg.find("<svg").unwrap_or(0);
            PreEscaped(svg[start..].to_string())
        }
        Err(e) => html! { p.error { "No QR code (" (e.to_string()) "): type the URI below." } },
    }
}

/// The page that shows a new secret, this once.
fn enrolment(app: &App, v: &Viewer, name: &str, secret: &str) -> Response {
    let uri = totp::uri("passerelle", name, secret);
    let body = html! {
        p { "Scan this code with " strong { (name) } "'s authenticator application now: it is shown once, and its secret is kept nowhere you can read it again. From the next login the application's 6-digit code is asked after the password." }
        div.qr role="img" aria-label="QR code of the second factor's secret" { (qr(&uri)) }
        p { "Or type this into the application:" }
        p { code.uri { (uri) } }
        p { a href="/users" { "Back to the users" } }
    };
    frame(app, v, "/users", &format!("Second factor for {name}"), body).into_response()
}

fn list_markup(v: &Viewer, list: &[users::User], problems: &[String]) -> Markup {
    let operator = matches!(v.role(), Role::Operator);
    html! {
        @for p in problems { p.error role="alert" { (p) } }
        table.users {
            thead { tr { th scope="col" { "User" } th scope="col" { "Role" } th scope="col" { "Second factor" } @if operator { th scope="col" { "Actions" } } } }
            tbody {
                @for u in list {
                    tr {
                        td { (u.name) }
                        td { (u.role.to_string()) }
                        td { @if u.totp.is_some() { "enrolled" } @else { "none" } }
                        @if operator {
                            td {
                                form.inline method="post" action=(format!("/users/{}/totp", u.name)) {
                                    (csrf(v))
                                    button type="submit" { "New second factor" }
                                }
                                " "
                                form.inline method="post" action=(format!("/users/{}/remove", u.name)) {
                                    (csrf(v))
                                    button type="submit" { "Remove" }
                                }
                            }
                        }
                    }
                }
            }
        }
        @if operator {
            h2 { "Add a user" }
            form.add method="post" action="/users/new" {
                (csrf(v))
                p { label for="name" { "User name" } input #name name="name" type="text" required maxlength="64"; }
                p { label for="role" { "Role" } input #role name="role" type="text" required placeholder="operator, auditor or establishment:NAME"; }
                p { label for="password" { "Password (at least 10 characters)" } input #password name="password" type="password" required autocomplete="new-password"; }
                p { label { input name="totp" type="checkbox" value="on"; " Second factor (TOTP)" } }
                p { button type="submit" { "Add" } }
            }
        }
    }
}

pub async fn list(
    State(app): State<Arc<App>>,
    Extension(v): Extension<Viewer>,
) -> Result<Response, PageError> {
    allow(&v, Action::View, Resource::Gateway)?;
    let all = app.users.get().await;
    Ok(frame(
        &app,
        &v,
        "/users",
        "Console users",
        list_markup(&v, &all, &[]),
    )
    .into_response())
}

/// Writes the users, in the shared state or the file; `Err` is why not.
async fn save_user(app: &App, v: &Viewer, u: users::User) -> Result<(), String> {
    if let Some(shared) = app.state.clone() {
        let by = crate::state::author(&format!("console:{}", v.user()), &app.gateway);
        let rec = users::records(std::slice::from_ref(&u)).remove(0);
        return shared
            .bounded(async {
                let mut c = shared.own_client().await?;
                crate::state::pg::put_user(&mut c, &rec, &by).await
            })
            .await
            .map(|_| ())
            .map_err(|e| e.to_string());
    }
    let path = app.users.path().to_path_buf();
    tokio::task::spawn_blocking(move || {
        let mut all = users::load(&path)?;
        match all.iter_mut().find(|x| x.name == u.name) {
            Some(x) => *x = u,
            None => all.push(u),
        }
        users::save(&path, &all)
    })
    .await
    .map_err(|e| e.to_string())?
    .map_err(|e| e.to_string())
}

fn second_factor_for(app: &App, role: &Role) -> bool {
    app.backend
        .snapshot
        .load()
        .config
        .console
        .as_ref()
        .is_some_and(|k| k.second_factor.iter().any(|r| r == role.kind()))
}

pub async fn add(
    State(app): State<Arc<App>>,
    Extension(v): Extension<Viewer>,
    Form(f): Form<AddForm>,
) -> Result<Response, PageError> {
    allow(&v, Action::ChangeConfig, Resource::Gateway)?;
    let name = f.name.trim().to_string();
    let refuse = |why: String| {
        app.audit(&v, "console user add", &name, &format!("refused: {why}"));
        PageError::BadRequest(why)
    };
    if !users::valid_name(&name) {
        return Err(refuse(users::UsersError::BadName(name.clone()).to_string()));
    }
    let role: Role = f
        .role
        .parse()
        .map_err(|e: super::super::access::BadRole| refuse(e.to_string()))?;
    if f.password.chars().count() > 1024 {
        return Err(refuse(
            "the password is too long (1024 characters at most)".into(),
        ));
    }
    let secret = if f.totp == "on" || second_factor_for(&app, &role) {
        Some(totp::new_secret().map_err(&refuse)?)
    } else {
        None
    };
    let password = f.password.clone();
    let hash = tokio::task::spawn_blocking(move || users::hash_password(&password))
        .await
        .map_err(|e| refuse(e.to_string()))?
        .map_err(|e| refuse(e.to_string()))?;
    let u = users::User {
        name: name.clone(),
        role: role.clone(),
        hash,
        totp: secret.clone(),
    };
    save_user(&app, &v, u).await.map_err(&refuse)?;
    app.audit(&v, "console user add", &name, "ok");
    Ok(match secret {
        Some(s) => enrolment(&app, &v, &name, &s),
        None => axum::response::Redirect::to("/users").into_response(),
    })
}

pub async fn reset_totp(
    State(app): State<Arc<App>>,
    Extension(v): Extension<Viewer>,
    Path(name): Path<String>,
) -> Result<Response, PageError> {
    allow(&v, Action::ChangeConfig, Resource::Gateway)?;
    let refuse = |why: String| {
        app.audit(
            &v,
            "console user totp reset",
            &name,
            &format!("refused: {why}"),
        );
        PageError::BadRequest(why)
    };
    let Some(mut u) = app.users.find(&name).await else {
        app.audit(
            &v,
            "console user totp reset",
            &name,
            "refused: no such user",
        );
        return Err(PageError::NotFound);
    };
    let secret = totp::new_secret().map_err(&refuse)?;
    u.totp = Some(secret.clone());
    save_user(&app, &v, u).await.map_err(&refuse)?;
    app.audit(&v, "console user totp reset", &name, "ok");
    Ok(enrolment(&app, &v, &name, &secret))
}

pub async fn remove(
    State(app): State<Arc<App>>,
    Extension(v): Extension<Viewer>,
    Path(name): Path<String>,
) -> Result<Response, PageError> {
    allow(&v, Action::ChangeConfig, Resource::Gateway)?;
    if name == v.user() {
        app.audit(&v, "console user remove", &name, "refused: one's own user");
        return Err(PageError::BadRequest("You cannot remove yourself.".into()));
    }
    let removed = if let Some(shared) = app.state.clone() {
        let by = crate::state::author(&format!("console:{}", v.user()), &app.gateway);
        let n = name.clone();
        shared
            .bounded(async {
                let mut c = shared.own_client().await?;
                crate::state::pg::remove_user(&mut c, &n, &by).await
            })
            .await
            .map(|v| v.is_some())
            .map_err(|e| e.to_string())
    } else {
        let path = app.users.path().to_path_buf();
        let n = name.clone();
        tokio::task::spawn_blocking(move || users::remove(&path, &n))
            .await
            .map_err(|e| e.to_string())
            .and_then(|r| r.map_err(|e| e.to_string()))
    };
    match removed {
        Ok(true) => {
            app.audit(&v, "console user remove", &name, "ok");
            Ok(axum::response::Redirect::to("/users").into_response())
        }
        Ok(false) => {
            app.audit(&v, "console user remove", &name, "refused: no such user");
            Err(PageError::NotFound)
        }
        Err(e) => {
            app.audit(&v, "console user remove", &name, &format!("refused: {e}"));
            Err(PageError::Unavailable(e))
        }
    }
}
