//! The frame around every page: the menu (only what the user's role may open), who is logged
//! in, the log out button, and the one-time notice left by the last action.

use super::super::access::{decide, Action, Resource, Role, Verdict};
use super::super::{App, Viewer};
use axum::http::header;
use axum::response::{Html, IntoResponse};
use maud::{html, Markup, DOCTYPE};

/// The menu: path, label, and what opening it means for access.
const MENU: [(&str, &str, Resource<'static>); 11] = [
    ("/", "Dashboard", Resource::Gateway),
    ("/queue", "Queue", Resource::Scoped),
    ("/track", "Track", Resource::Scoped),
    ("/indicators", "Indicators", Resource::Scoped),
    ("/route-test", "Route test", Resource::Gateway),
    ("/whitelist", "Whitelist", Resource::Gateway),
    ("/directory", "Directory", Resource::Gateway),
    ("/establishments", "Establishments", Resource::Gateway),
    ("/config", "Configuration", Resource::Gateway),
    ("/users", "Users", Resource::Gateway),
    ("/audit", "Audit trail", Resource::Scoped),
];

/// The menu entries `role` may open, with an establishment user's own page.
pub fn menu(role: &Role) -> Vec<(String, &'static str)> {
    let mut m: Vec<(String, &'static str)> = MENU
        .iter()
        .filter(|(_, _, r)| decide(role, Action::View, *r) == Verdict::Allow)
        .map(|(p, l, _)| (p.to_string(), *l))
        .collect();
    if let Role::Establishment(name) = role {
        m.insert(0, (format!("/establishments/{name}"), "My establishment"));
    }
    m
}

/// The CSRF field every state-changing form carries.
pub fn csrf(v: &Viewer) -> Markup {
    html! { input type="hidden" name="csrf" value=(v.session.csrf); }
}

/// The `<head>` of every page: one stylesheet, one icon, nothing from elsewhere.
pub fn head(title: &str) -> Markup {
    html! {
        head {
            meta charset="utf-8";
            meta name="viewport" content="width=device-width, initial-scale=1";
            title { (title) " — passerelle console" }
            link rel="stylesheet" href="/static/console.css";
            link rel="icon" href="/favicon.svg" type="image/svg+xml";
        }
    }
}

pub fn frame(app: &App, v: &Viewer, current: &str, title: &str, body: Markup) -> Html<String> {
    let host = app.backend.snapshot.load().config.server.hostname.clone();
    let page = html! {
        (DOCTYPE)
        html lang="en" {
            (head(title))
            body {
                a.skip href="#main" { "Skip to the content" }
                header.top {
                    div.brand { strong { "passerelle" } " " span.host { (host) } }
                    nav aria-label="Console" {
                        ul {
                            @for (path, label) in menu(v.role()) {
                                li {
                                    @if path == current {
                                        a href=(path) aria-current="page" { (label) }
                                    } @else {
                                        a href=(path) { (label) }
                                    }
                                }
                            }
                        }
                    }
                    div.who {
                        span { (v.user()) " (" (v.role()) ")" }
                        form method="post" action="/logout" {
                            (csrf(v))
                            button.link type="submit" { "Log out" }
                        }
                    }
                }
                main #main {
                    @if let Some(since) = crate::state::unreachable_since() {
                        p.error #read-only role="alert" {
                            "Read-only: the shared state's database is unreachable since "
                            (crate::journal::read::format_time(since * 1000))
                            ". Mail flows on the state last applied; changes are refused until it returns."
                        }
                    }
                    h1 { (title) }
                    @if let Some(f) = &v.session.flash {
                        p.flash role="status" { (f) }
                    }
                    (body)
                }
            }
        }
    };
    Html(page.into_string())
}

pub async fn css() -> impl IntoResponse {
    (
        [
            (header::CONTENT_TYPE, "text/css; charset=utf-8"),
            (header::CACHE_CONTROL, "max-age=3600"),
        ],
        include_str!("console.css"),
    )
}

pub async fn favicon() -> impl IntoResponse {
    (
        [
            (header::CONTENT_TYPE, "image/svg+xml"),
            (header::CACHE_CONTROL, "max-age=86400"),
        ],
        r##"<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 16 16"><rect width="16" height="16" rx="3" fill="#1d4e89"/><path d="M3 5h10v6H3z" fill="none" stroke="#fff" stroke-width="1.5"/><path d="M3 5l5 4 5-4" fill="none" stroke="#fff" stroke-width="1.5"/></svg>"##,
    )
}
