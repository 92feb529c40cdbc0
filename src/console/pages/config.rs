//! `/config`: the running configuration, and for the operator an editor of the config file
//! with the check (problems shown at their lines), the diff against the running one, apply
//! (write + reload, the file put back when the reload refuses it) and roll back.

use super::super::access::{Action, Resource};
use super::super::config_edit::{self, Checked, DiffLine};
use super::super::{allow, page as frame, App, PageError, Viewer};
use super::layout::csrf;
use crate::console::redact::redact;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Redirect, Response};
use axum::{Extension, Form};
use maud::{html, Markup};
use std::sync::Arc;

#[derive(serde::Deserialize)]
pub struct EditForm {
    text: String,
    /// Fingerprint of the file the edit started from.
    #[serde(default)]
    base: String,
}

fn diff_markup(lines: &[DiffLine]) -> Markup {
    html! {
        @if lines.is_empty() {
            p { "No difference." }
        } @else {
            pre.diff aria-label="Differences, unified format" {
                @for l in lines {
                    span class=(match l.kind { '+' => "add", '-' => "del", '@' => "hunk", 'h' => "head", _ => "ctx" }) { (l.text) "\n" }
                }
            }
        }
    }
}

fn editor(v: &Viewer, text: &str, base: &str) -> Markup {
    html! {
        form.editor method="post" action="/config/check" {
            (csrf(v))
            input type="hidden" name="base" value=(base);
            p {
                label for="config-text" { "Configuration file" }
                // HTML drops one newline right after <textarea>: give it one to drop.
                textarea #config-text name="text" rows="30" spellcheck="false" autocomplete="off" { "\n" (text) }
            }
            p.buttons {
                button type="submit" formaction="/config/check" { "Check" }
                " "
                button type="submit" formaction="/config/apply" { "Check and apply" }
            }
            p.note { "Apply writes the file and reloads the gateway as SIGHUP does; if the reload refuses it, the file is put back and nothing changes. The version replaced is kept for roll back." }
        }
    }
}

/// The edited text with the secrets the page hid put back from the file on disk.
fn with_secrets(path: &std::path::Path, edited: &str) -> Result<String, String> {
    let stored = std::fs::read_to_string(path).unwrap_or_default();
    crate::console::redact::restore(edited, &stored)
}

pub async fn page(
    State(app): State<Arc<App>>,
    Extension(v): Extension<Viewer>,
) -> Result<Response, PageError> {
    allow(&v, Action::View, Resource::Gateway)?;
    let snap = app.backend.snapshot.load_full();
    let path = snap.config.source.clone();
    // Secrets are never shown: every text below is redacted (the fingerprint is the real
    // file's, and an apply puts the stored secrets back: see `redact::restore`).
    let running = redact(&snap.config.source_text);
    let on_disk_real = std::fs::read_to_string(&path).map_err(|e| e.to_string());
    let base_fp = on_disk_real
        .as_ref()
        .map(|t| config_edit::fingerprint(t))
        .unwrap_or_default();
    let on_disk = on_disk_real.map(|t| redact(&t));
    let previous = std::fs::read_to_string(config_edit::previous_path(&path))
        .ok()
        .map(|t| redact(&t));
    let may_edit = allow(&v, Action::ChangeConfig, Resource::Gateway).is_ok();
    let body = html! {
        p { "File: " code { (path.display()) } ". Environment overrides (PASSERELLE__…) apply on top of it and are not shown." }
        @match &on_disk {
            Err(e) => p.error { "The file cannot be read: " (e) }
            Ok(t) if *t != running => p.warn role="status" { "The file on disk differs from the configuration in force (edited since the last reload):" }
            Ok(_) => {}
        }
        @if let Ok(t) = &on_disk { @if *t != running { (diff_markup(&config_edit::diff(&running, t))) } }
        @if may_edit {
            section aria-labelledby="h-edit" {
                h2 #h-edit { "Edit" }
                @if let Ok(t) = &on_disk { (editor(&v, t, &base_fp)) }
            }
            @if let (Some(prev), Ok(cur)) = (&previous, &on_disk) {
                section aria-labelledby="h-rollback" {
                    h2 #h-rollback { "Roll back" }
                    details {
                        summary { "What rolling back would change" }
                        (diff_markup(&config_edit::diff(cur, prev)))
                    }
                    form method="post" action="/config/rollback" {
                        (csrf(&v))
                        button type="submit" { "Roll back to the previous version and reload" }
                    }
                }
            }
        }
        section aria-labelledby="h-running" {
            h2 #h-running { "In force" }
            (listing(&running, &Checked::default()))
        }
    };
    Ok(frame(&app, &v, "/config", "Configuration", body).into_response())
}

/// The text with line numbers, each problem under its line.
fn listing(text: &str, checked: &Checked) -> Markup {
    html! {
        div.scroll {
            table.listing {
                caption.visually-hidden { "The configuration, line by line" }
                tbody {
                    @for (i, line) in text.lines().enumerate() {
                        @let problems: Vec<_> = checked.at_line(i + 1).collect();
                        tr id=(format!("L{}", i + 1)) class=(if problems.is_empty() { "" } else { "has-problem" }) {
                            th scope="row" { (i + 1) }
                            td { code { (line) } }
                        }
                        @for p in problems {
                            tr.problem {
                                th scope="row" { span.visually-hidden { "problem at line " (i + 1) } }
                                td class=(if p.severity == crate::config::Severity::Error { "error" } else { "warning" }) {
                                    (if p.severity == crate::config::Severity::Error { "error: " } else { "warning: " })
                                    @if !p.key.is_empty() { code { (p.key) } ": " }
                                    (p.message)
                                }
                            }
                        }
                    }
                }
            }
        }
    }
}

/// The check page: the verdict, the problems at their lines, the diff, the editor again.
fn check_page(
    app: &App,
    v: &Viewer,
    text: &str,
    base: &str,
    checked: &Checked,
    outcome: Option<&str>,
) -> Response {
    let running = redact(&app.backend.snapshot.load().config.source_text);
    let text = &redact(text);
    let errors = checked.errors.len();
    let body = html! {
        @if let Some(o) = outcome { p.error role="alert" { (o) } }
        @if errors == 0 {
            p.ok role="status" #check-verdict { "✓ No error" @if !checked.warnings.is_empty() { " (" (checked.warnings.len()) " warning(s))" } ". The files it names are loaded when it is applied." }
        } @else {
            p.error role="alert" #check-verdict { "✗ " (errors) " error(s): nothing can be applied until they are fixed." }
        }
        @let unlocated: Vec<_> = checked.unlocated().collect();
        @if !unlocated.is_empty() { ul.problems { @for p in unlocated { li { (p) } } } }
        section aria-labelledby="h-diff" {
            h2 #h-diff { "Changes against the configuration in force" }
            (diff_markup(&config_edit::diff(&running, text)))
        }
        section aria-labelledby="h-lines" {
            h2 #h-lines { "Checked text" }
            (listing(text, checked))
        }
        section aria-labelledby="h-edit" {
            h2 #h-edit { "Edit" }
            (editor(v, text, base))
        }
    };
    let status = if errors == 0 && outcome.is_none() {
        StatusCode::OK
    } else {
        StatusCode::UNPROCESSABLE_ENTITY
    };
    (
        status,
        frame(app, v, "/config", "Configuration check", body),
    )
        .into_response()
}

pub async fn check(
    State(app): State<Arc<App>>,
    Extension(v): Extension<Viewer>,
    Form(f): Form<EditForm>,
) -> Result<Response, PageError> {
    allow(&v, Action::ChangeConfig, Resource::Gateway)?;
    let path = app.backend.snapshot.load().config.source.clone();
    let shown = path.display().to_string();
    let edited = config_edit::normalize(&f.text);
    let text = match with_secrets(&path, &edited) {
        Ok(t) => t,
        Err(e) => {
            let checked = config_edit::check(&edited, &shown);
            return Ok(check_page(&app, &v, &edited, &f.base, &checked, Some(&e)));
        }
    };
    let checked = config_edit::check(&text, &shown);
    Ok(check_page(&app, &v, &text, &f.base, &checked, None))
}

pub async fn apply(
    State(app): State<Arc<App>>,
    Extension(v): Extension<Viewer>,
    Form(f): Form<EditForm>,
) -> Result<Response, PageError> {
    allow(&v, Action::ChangeConfig, Resource::Gateway)?;
    let _one_at_a_time = app.config_lock.lock().await;
    let edited = config_edit::normalize(&f.text);
    let path = app.backend.snapshot.load().config.source.clone();
    let shown = path.display().to_string();
    let text = match with_secrets(&path, &edited) {
        Ok(t) => t,
        Err(e) => {
            app.audit(&v, "config apply", &shown, &format!("refused: {e}"));
            let checked = config_edit::check(&edited, &shown);
            return Ok(check_page(&app, &v, &edited, &f.base, &checked, Some(&e)));
        }
    };
    let checked = config_edit::check(&text, &shown);
    if !checked.errors.is_empty() {
        app.audit(
            &v,
            "config apply",
            &shown,
            "refused: the check found errors",
        );
        return Ok(check_page(&app, &v, &text, &f.base, &checked, None));
    }
    let base = (!f.base.is_empty()).then_some(f.base.as_str());
    let reload = app.backend.reload.clone();
    match config_edit::apply(&path, &text, base, || async move { reload.reload().await }).await {
        Ok(()) => {
            app.audit(&v, "config apply", &shown, "ok: written and reloaded");
            app.sessions.set_flash(
                &v.session.id,
                "The new configuration is written and in force.",
            );
            Ok(Redirect::to("/config").into_response())
        }
        Err(e) => {
            app.audit(&v, "config apply", &shown, &format!("refused: {e}"));
            Ok(check_page(
                &app,
                &v,
                &text,
                &f.base,
                &checked,
                Some(&e.to_string()),
            ))
        }
    }
}

pub async fn rollback(
    State(app): State<Arc<App>>,
    Extension(v): Extension<Viewer>,
) -> Result<Response, PageError> {
    allow(&v, Action::ChangeConfig, Resource::Gateway)?;
    let _one_at_a_time = app.config_lock.lock().await;
    let path = app.backend.snapshot.load().config.source.clone();
    let shown = path.display().to_string();
    let reload = app.backend.reload.clone();
    let text = match config_edit::rollback(&path, || async move { reload.reload().await }).await {
        Ok(()) => {
            app.audit(
                &v,
                "config rollback",
                &shown,
                "ok: previous version in force",
            );
            "The previous configuration is back in force.".to_string()
        }
        Err(e) => {
            app.audit(&v, "config rollback", &shown, &format!("refused: {e}"));
            format!("Roll back failed: {e}")
        }
    };
    app.sessions.set_flash(&v.session.id, text);
    Ok(Redirect::to("/config").into_response())
}
