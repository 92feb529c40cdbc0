//! `/establishments`: the list, one establishment's page (settings, indicators, queue, the
//! ready-to-paste configuration of its side, the mailbox test) and the form that adds or edits
//! one with the same validation as `passerelle establishment add`, applied by a reload (a
//! refused change leaves the file as it was).

use super::super::access::{self, Action, Resource};
use super::super::hooks::StatsQuery;
use super::super::{allow, page as frame, App, PageError, Viewer};
use super::layout::csrf;
use crate::config::EstablishmentConfig;
use crate::establishment::onboarding::joined;
use crate::establishment::store::FileSpec;
use crate::establishment::{onboarding, store};
use crate::state::pg::{EstablishmentChange, Expect};
use crate::state::StateError;
use axum::extract::{Path, State};
use axum::response::{Html, IntoResponse, Redirect, Response};
use axum::{Extension, Form};
use maud::{html, Markup};
use std::sync::Arc;

/// The establishment `name` of the configuration in force.
fn find(app: &App, name: &str) -> Result<EstablishmentConfig, PageError> {
    app.backend
        .snapshot
        .load()
        .config
        .establishment
        .iter()
        .find(|e| e.name == name)
        .cloned()
        .ok_or(PageError::NotFound)
}

/// Establishments shown per page of the list (a region has thousands).
const PER_PAGE: usize = 50;
/// A longer search is refused (400): nothing a name, a domain or an address needs.
const MAX_SEARCH: usize = 200;

/// `/establishments?q=TEXT&page=N`: the search (part of a name, a domain, an MTA address or
/// DN, the mailbox) and the page, from 1.
#[derive(Debug, Default, serde::Deserialize)]
#[serde(default)]
pub struct ListQuery {
    q: String,
    page: String,
}

/// Whether `e` matches the lowercased search `q`.
fn matches(e: &EstablishmentConfig, q: &str) -> bool {
    q.is_empty()
        || e.name.contains(q)
        || e.domains.iter().any(|d| d.to_string().contains(q))
        || e.clients.iter().any(|c| c.to_string().contains(q))
        || e.client_dns
            .iter()
            .any(|d| d.to_string().to_lowercase().contains(q))
        || e.mailbox.to_string().to_lowercase().contains(q)
}

pub async fn list(
    State(app): State<Arc<App>>,
    Extension(v): Extension<Viewer>,
    axum::extract::Query(lq): axum::extract::Query<ListQuery>,
) -> Result<Html<String>, PageError> {
    allow(&v, Action::View, Resource::Gateway)?;
    if lq.q.len() > MAX_SEARCH {
        return Err(PageError::BadRequest(format!(
            "the search is {MAX_SEARCH} characters at most"
        )));
    }
    let page: usize = match lq.page.trim() {
        "" => 1,
        p => p
            .parse()
            .ok()
            .filter(|n| (1..=1_000_000).contains(n))
            .ok_or_else(|| PageError::BadRequest(format!("page {p:?}: a number from 1")))?,
    };
    let q = lq.q.trim().to_lowercase();
    let snap = app.backend.snapshot.load_full();
    let all = &snap.config.establishment;
    let found: Vec<&EstablishmentConfig> = all.iter().filter(|e| matches(e, &q)).collect();
    let pages = found.len().div_ceil(PER_PAGE).max(1);
    let page = page.min(pages);
    let shown = found.iter().skip((page - 1) * PER_PAGE).take(PER_PAGE);
    let link = |p: usize| {
        let query = serde_urlencoded::to_string([("q", q.as_str()), ("page", &p.to_string())])
            .unwrap_or_default();
        format!("/establishments?{query}")
    };
    let may_add = access::decide(v.role(), Action::EditEstablishment, Resource::Gateway)
        == access::Verdict::Allow;
    let body = html! {
        @if may_add {
            p { a.button href="/establishments/new" { "Add an establishment" } }
        }
        form.search method="get" action="/establishments" role="search" {
            label for="q" { "Search" }
            input #q type="search" name="q" value=(q) maxlength=(MAX_SEARCH) placeholder="name, domain, address or DN";
            button type="submit" { "Search" }
        }
        @if all.is_empty() {
            p { "No establishment is declared. Add one with the button above or `passerelle establishment add`." }
        } @else if found.is_empty() {
            p #count { "No establishment matches." }
        } @else {
            p #count { (found.len()) " of " (all.len()) " establishment(s); page " (page) " of " (pages) }
            div.scroll {
                table.establishments {
                    thead { tr {
                        th scope="col" { "Establishment" } th scope="col" { "Domains" }
                        th scope="col" { "MTAs" } th scope="col" { "Mailbox" } th scope="col" { "Queue" }
                    } }
                    tbody {
                        @for e in shown {
                            tr {
                                th scope="row" { a href=(format!("/establishments/{}", e.name)) { (e.name) } }
                                td { (joined(&e.domains)) }
                                td { (joined(&e.clients)) @if !e.client_dns.is_empty() { br; (joined(&e.client_dns)) } }
                                td { (e.mailbox) " (tls " (e.mailbox_tls.as_str()) ")" }
                                td { a href=(format!("/queue?establishment={}", e.name)) { "its messages" } }
                            }
                        }
                    }
                }
            }
            @if pages > 1 {
                nav.pages aria-label="Pages" {
                    @if page > 1 { a rel="prev" href=(link(page - 1)) { "Previous" } " " }
                    @if page < pages { a rel="next" href=(link(page + 1)) { "Next" } }
                }
            }
        }
    };
    Ok(frame(&app, &v, "/establishments", "Establishments", body))
}

pub async fn page(
    State(app): State<Arc<App>>,
    Extension(v): Extension<Viewer>,
    Path(name): Path<String>,
) -> Result<Html<String>, PageError> {
    allow(&v, Action::View, Resource::Establishment(&name))?;
    let e = find(&app, &name)?;
    Ok(frame(
        &app,
        &v,
        &format!("/establishments/{name}"),
        &format!("Establishment {name}"),
        establishment_body(&app, &v, &e, None).await,
    ))
}

async fn establishment_body(
    app: &App,
    v: &Viewer,
    e: &EstablishmentConfig,
    test: Option<&(bool, Vec<String>)>,
) -> Markup {
    let name = &e.name;
    let queued = app.backend.queue.queued_for(name).await;
    let stats = app
        .backend
        .journal
        .stats(&StatsQuery {
            by: Some("day".into()),
            since: Some("30d".into()),
            until: None,
            establishment: Some(name.clone()),
        })
        .await;
    let snap = app.backend.snapshot.load_full();
    let paste =
        onboarding::render_show(&snap.config, e, onboarding::our_dn(&snap.config).as_deref());
    let may_edit = access::decide(v.role(), Action::EditEstablishment, Resource::Gateway)
        == access::Verdict::Allow;
    html! {
        section aria-labelledby="h-settings" {
            h2 #h-settings { "Settings" }
            @if may_edit { p { a.button href=(format!("/establishments/{name}/edit")) { "Edit" } } }
            table.kv { tbody {
                tr { th scope="row" { "Domains" } td { (joined(&e.domains)) } }
                tr { th scope="row" { "MTAs by address" } td { (joined(&e.clients)) } }
                tr { th scope="row" { "MTAs by certificate" } td { (joined(&e.client_dns)) } }
                tr { th scope="row" { "Mailbox" } td { (e.mailbox) " (tls " (e.mailbox_tls.as_str()) ")" } }
                tr { th scope="row" { "Sender check" } td { (e.sender_check.as_str()) } }
                @if !e.structures.is_empty() { tr { th scope="row" { "Structures" } td { (joined(&e.structures)) } } }
                @if !e.addresses.is_empty() { tr { th scope="row" { "Addresses" } td { (joined(&e.addresses)) } } }
                tr { th scope="row" { "Limits" } td {
                    "messages per minute: " (e.max_message_rate.map_or("unlimited".to_string(), |n| n.to_string()))
                    "; queued at most: " (e.max_queued.map_or("unlimited".to_string(), |n| n.to_string()))
                } }
                tr { th scope="row" { "Declared in" } td { (e.file.as_ref().map_or(snap.config.source.display().to_string(), |f| f.display().to_string())) } }
                tr { th scope="row" { "Queued messages" } td { a href=(format!("/queue?establishment={name}")) { (queued) } } }
            } }
        }
        section aria-labelledby="h-indicators" {
            h2 #h-indicators { "Indicators (last 30 days)" }
            @match &stats {
                Err(err) => p { (err.to_string()) }
                Ok(t) => {
                    div.scroll { table.stats {
                        thead { tr { @for c in &t.columns { th scope="col" { (c) } } } }
                        tbody { @for r in &t.rows { tr { @for (i, c) in r.iter().enumerate() { @if i == 0 { th scope="row" { (c) } } @else { td.num { (c) } } } } } }
                    } }
                    p { a href=(format!("/indicators?by=mailbox&establishment={name}")) { "Per mailbox" } " · " a href=(format!("/track?establishment={name}")) { "Its messages in the journal" } }
                }
            }
        }
        section aria-labelledby="h-test" {
            h2 #h-test { "Mailbox test" }
            p { "Checks the mailbox server as delivery would: connect, EHLO, STARTTLS per its policy, MAIL FROM:<>, RCPT TO:<postmaster@its domain>, RSET. No message is sent." }
            form.inline method="post" action=(format!("/establishments/{name}/test")) {
                (csrf(v))
                button type="submit" { "Test the mailbox" }
            }
            @if let Some((ok, lines)) = test {
                p.flash { @if *ok { "Mailbox ready." } @else { "Mailbox NOT ready." } }
                pre #mailbox-test { (lines.join("\n")) }
            }
        }
        section aria-labelledby="h-paste" {
            h2 #h-paste { "Its side, ready to paste" }
            p { "The establishment's MTA (Postfix or Exchange) and the declarations to make (the domain's MX, the DN in the whitelist)." }
            pre #paste { (paste) }
        }
    }
}

pub async fn test(
    State(app): State<Arc<App>>,
    Extension(v): Extension<Viewer>,
    Path(name): Path<String>,
) -> Result<Html<String>, PageError> {
    allow(&v, Action::View, Resource::Establishment(&name))?;
    let e = find(&app, &name)?;
    let cfg = app.backend.snapshot.load().config.clone();
    // One test at a time for the whole console (issue 24 B.13): each reads the TLS material
    // and the CRLs and opens a connection, and any establishment user may ask for one.
    static RUNNING: tokio::sync::Semaphore = tokio::sync::Semaphore::const_new(1);
    let result = match RUNNING.try_acquire() {
        Err(_) => (
            false,
            vec!["another mailbox test is running: try again in a few seconds".to_string()],
        ),
        Ok(_one) => match crate::delivery::check::mailbox_test(&cfg, &name).await {
            Ok(r) => r,
            Err(err) => (false, vec![format!("{err:#}")]),
        },
    };
    app.audit(
        &v,
        "mailbox test",
        &name,
        if result.0 { "ready" } else { "not ready" },
    );
    Ok(frame(
        &app,
        &v,
        &format!("/establishments/{name}"),
        &format!("Establishment {name}"),
        establishment_body(&app, &v, &e, Some(&result)).await,
    ))
}

/// The add form's fields, as `establishment add`'s options (lists one per line or comma).
#[derive(Debug, Default, serde::Deserialize)]
#[serde(default)]
pub struct AddForm {
    name: String,
    domains: String,
    clients: String,
    client_dns: String,
    mailbox: String,
    mailbox_tls: String,
    sender_check: String,
    structures: String,
    max_message_rate: String,
    max_queued: String,
    /// The digest of the establishment's text when the edit form was opened: a save over a
    /// change made meanwhile by someone else is refused, never a silent overwrite.
    was: String,
}

/// Items of a list field: one per line; commas also separate, except in DNs (which contain
/// them), so `client_dns` is one per line only.
fn items(s: &str, commas: bool) -> Vec<String> {
    s.lines()
        .flat_map(|l| {
            if commas {
                l.split(',').map(str::to_string).collect::<Vec<_>>()
            } else {
                vec![l.to_string()]
            }
        })
        .map(|x| x.trim().to_string())
        .filter(|x| !x.is_empty())
        .collect()
}

fn form_markup(v: &Viewer, f: &AddForm, problems: &[String]) -> Markup {
    form_markup_at(
        v,
        f,
        problems,
        "/establishments/new",
        "Check and add",
        false,
    )
}

/// The establishment form, posted to `action`; when `editing`, the name is fixed.
fn form_markup_at(
    v: &Viewer,
    f: &AddForm,
    problems: &[String],
    action: &str,
    submit: &str,
    editing: bool,
) -> Markup {
    let opt = |cur: &str, val: &str, default: bool| (cur == val) || (cur.is_empty() && default);
    html! {
        @if !problems.is_empty() {
            div.error role="alert" {
                p { "Refused, nothing written:" }
                ul #problems { @for p in problems { li { (p) } } }
            }
        }
        form.establishment method="post" action=(action) {
            (csrf(v))
            @if !f.was.is_empty() { input type="hidden" name="was" value=(f.was); }
            p { label for="name" { "Name" } input #name name="name" required value=(f.name) placeholder="chu-a" pattern="[a-z0-9-]+" readonly[editing]; span.hint { "lowercase letters, digits and -" } }
            p { label for="domains" { "Domains" } textarea #domains name="domains" rows="2" required placeholder="chu-a.mssante.fr" { (f.domains) } span.hint { "one per line: exact names or *.suffix" } }
            p { label for="clients" { "MTAs by address" } textarea #clients name="clients" rows="2" placeholder="10.1.0.0/24" { (f.clients) } }
            p { label for="client_dns" { "MTAs by certificate subject" } textarea #client_dns name="client_dns" rows="2" placeholder="CN=mta.chu-a.fr,O=CHU A,C=FR" { (f.client_dns) } span.hint { "one DN per line" } }
            p { label for="mailbox" { "Mailbox server" } input #mailbox name="mailbox" required value=(f.mailbox) placeholder="10.1.0.25:25"; }
            p { label for="mailbox_tls" { "Mailbox TLS" } select #mailbox_tls name="mailbox_tls" {
                @for (val, default) in [("none", false), ("opportunistic", true), ("required", false), ("mutual", false)] {
                    option value=(val) selected[opt(&f.mailbox_tls, val, default)] { (val) }
                }
            } }
            p { label for="sender_check" { "Sender check" } select #sender_check name="sender_check" {
                @for (val, default) in [("envelope+header", true), ("envelope", false)] {
                    option value=(val) selected[opt(&f.sender_check, val, default)] { (val) }
                }
            } }
            p { label for="structures" { "Structures (shared domain)" } input #structures name="structures" value=(f.structures) placeholder="FINESS or SIRET, comma separated"; }
            p { label for="max_message_rate" { "Messages per minute at most" } input #max_message_rate name="max_message_rate" inputmode="numeric" value=(f.max_message_rate); }
            p { label for="max_queued" { "Queued messages at most" } input #max_queued name="max_queued" inputmode="numeric" value=(f.max_queued); }
            p.buttons { button type="submit" { (submit) } a href="/establishments" { "Cancel" } }
        }
    }
}

pub async fn new_form(
    State(app): State<Arc<App>>,
    Extension(v): Extension<Viewer>,
) -> Result<Html<String>, PageError> {
    allow(&v, Action::EditEstablishment, Resource::Gateway)?;
    Ok(frame(
        &app,
        &v,
        "/establishments",
        "Add an establishment",
        form_markup(&v, &AddForm::default(), &[]),
    ))
}

fn number<T: std::str::FromStr>(s: &str, what: &str) -> Result<Option<T>, String> {
    let s = s.trim();
    if s.is_empty() {
        return Ok(None);
    }
    s.parse()
        .map(Some)
        .map_err(|_| format!("{what}: {s:?} is not a whole number"))
}

/// The file text of a submitted form, or the problem with its numbers.
fn form_text(f: &AddForm) -> Result<(String, String), String> {
    let name = f.name.trim().to_string();
    let rate = number::<u32>(&f.max_message_rate, "messages per minute")?;
    let queued = number::<usize>(&f.max_queued, "queued messages")?;
    let (domains, clients, client_dns, structures) = (
        items(&f.domains, true),
        items(&f.clients, true),
        items(&f.client_dns, false),
        items(&f.structures, true),
    );
    let or = |s: &str, d: &'static str| {
        if s.trim().is_empty() {
            d.to_string()
        } else {
            s.trim().to_string()
        }
    };
    let (tls, check) = (
        or(&f.mailbox_tls, "opportunistic"),
        or(&f.sender_check, "envelope+header"),
    );
    let text = store::file_text(&FileSpec {
        name: &name,
        domains: &domains,
        clients: &clients,
        client_dns: &client_dns,
        mailbox: f.mailbox.trim(),
        mailbox_tls: &tls,
        sender_check: &check,
        structures: &structures,
        addresses: &[],
        max_message_rate: rate,
        max_queued: queued,
    });
    Ok((name, text))
}

/// The form filled with an establishment's settings (`addresses` are kept by the file only:
/// the form does not show them, and an edit of one that has some is refused).
fn form_of(e: &EstablishmentConfig) -> AddForm {
    let lines = |v: Vec<String>| v.join("\n");
    AddForm {
        name: e.name.clone(),
        domains: lines(e.domains.iter().map(|d| d.to_string()).collect()),
        clients: lines(e.clients.iter().map(|c| c.to_string()).collect()),
        client_dns: lines(e.client_dns.iter().map(|d| d.to_string()).collect()),
        mailbox: e.mailbox.to_string(),
        mailbox_tls: e.mailbox_tls.as_str().to_string(),
        sender_check: e.sender_check.as_str().to_string(),
        structures: e.structures.join(", "),
        max_message_rate: e
            .max_message_rate
            .map(|n| n.to_string())
            .unwrap_or_default(),
        max_queued: e.max_queued.map(|n| n.to_string()).unwrap_or_default(),
        was: e
            .file_text
            .as_deref()
            .map(|t| crate::util::sha256_hex(t.as_bytes()))
            .unwrap_or_default(),
    }
}

pub async fn edit_form(
    State(app): State<Arc<App>>,
    Extension(v): Extension<Viewer>,
    Path(name): Path<String>,
) -> Result<Html<String>, PageError> {
    allow(&v, Action::EditEstablishment, Resource::Gateway)?;
    let e = find(&app, &name)?;
    let problems: Vec<String> = match (&e.file, e.addresses.is_empty()) {
        (None, _) => vec![format!(
            "{name} is declared in the main configuration file ([[establishment]]): edit it on the Configuration page"
        )],
        (_, false) => vec![format!(
            "{name} lists addresses of a shared domain, which this form does not show: edit its file"
        )],
        _ => Vec::new(),
    };
    let action = format!("/establishments/{name}/edit");
    Ok(frame(
        &app,
        &v,
        "/establishments",
        &format!("Edit establishment {name}"),
        form_markup_at(&v, &form_of(&e), &problems, &action, "Check and save", true),
    ))
}

pub async fn edit(
    State(app): State<Arc<App>>,
    Extension(v): Extension<Viewer>,
    Path(name): Path<String>,
    Form(f): Form<AddForm>,
) -> Result<Response, PageError> {
    allow(&v, Action::EditEstablishment, Resource::Gateway)?;
    // Locked first: a save that waited for another compares with what that one wrote.
    let _one_at_a_time = app.config_lock.lock().await;
    let e = find(&app, &name)?;
    let action = format!("/establishments/{name}/edit");
    let title = format!("Edit establishment {name}");
    let refuse = |problems: Vec<String>| {
        app.audit(&v, "establishment edit", &name, "refused");
        Ok(frame(
            &app,
            &v,
            "/establishments",
            &title,
            form_markup_at(&v, &f, &problems, &action, "Check and save", true),
        )
        .into_response())
    };
    if !e.addresses.is_empty() {
        return refuse(vec![format!(
            "{name} lists addresses of a shared domain, which this form does not show: edit its file"
        )]);
    }
    let (new_name, text) = match form_text(&f) {
        Ok(t) => t,
        Err(why) => return refuse(vec![why]),
    };
    if new_name != name {
        return refuse(vec![format!(
            "the name cannot change ({name} -> {new_name}): add a new establishment and remove this one"
        )]);
    }
    if let Some(shared) = app.state.clone() {
        // A form without the digest of what it was opened on cannot show it overwrites
        // nobody: it is compared as if opened on nothing.
        let expect = Expect::Text(f.was.clone());
        return shared_write(&app, &v, &shared, &name, Some(text), expect, "changed")
            .await
            .or_else(refuse);
    }
    // The file as it is on disk now (it may have been edited since the last reload).
    let on_disk = match e.file.clone() {
        Some(path) => tokio::task::spawn_blocking(move || std::fs::read_to_string(path).ok())
            .await
            .ok()
            .flatten(),
        None => None,
    };
    let now = on_disk
        .as_deref()
        .map(|t| crate::util::sha256_hex(t.as_bytes()));
    if e.file.is_some() && (f.was.is_empty() || now.as_deref() != Some(f.was.as_str())) {
        return refuse(vec![format!(
            "establishment {name:?} was changed by someone else since you opened it: nothing written; reload it and apply your change again"
        )]);
    }
    let config = app.backend.snapshot.load().config.source.clone();
    let (path, old) = match store::replace_checked(&config, &name, &text) {
        Ok((path, old, _warnings)) => (path, old),
        Err(problems) => return refuse(problems),
    };
    applied(&app, &v, &name, &path, Some(old), "changed")
        .await
        .or_else(|why| refuse(vec![why]))
}

pub async fn add(
    State(app): State<Arc<App>>,
    Extension(v): Extension<Viewer>,
    Form(f): Form<AddForm>,
) -> Result<Response, PageError> {
    allow(&v, Action::EditEstablishment, Resource::Gateway)?;
    let _one_at_a_time = app.config_lock.lock().await;
    let name = f.name.trim().to_string();
    let refuse = |problems: Vec<String>| {
        app.audit(&v, "establishment add", &name, "refused");
        Ok(frame(
            &app,
            &v,
            "/establishments",
            "Add an establishment",
            form_markup(&v, &f, &problems),
        )
        .into_response())
    };
    let text = match form_text(&f) {
        Ok((_, t)) => t,
        Err(why) => return refuse(vec![why]),
    };
    if let Some(shared) = app.state.clone() {
        return shared_write(
            &app,
            &v,
            &shared,
            &name,
            Some(text),
            Expect::Absent,
            "added",
        )
        .await
        .or_else(refuse);
    }
    let config = app.backend.snapshot.load().config.source.clone();
    let path = match store::write_checked(&config, &name, &text) {
        Ok((path, _warnings)) => path,
        Err(problems) => return refuse(problems),
    };
    applied(&app, &v, &name, &path, None, "added")
        .await
        .or_else(|why| refuse(vec![why]))
}

/// A change written to the shared state (`[state] kind = "postgres"`): checked there against
/// the whole state, then applied by every gateway (this one waited for, up to 3 s).
async fn shared_write(
    app: &App,
    v: &Viewer,
    shared: &crate::state::Shared,
    name: &str,
    text: Option<String>,
    expect: Expect,
    done: &str,
) -> Result<Response, Vec<String>> {
    let config = app.backend.snapshot.load().config.source.clone();
    let check: crate::state::pg::Check =
        Box::new(
            move |list| match crate::config::Config::check_with_texts(&config, &list) {
                Ok(p) => Ok(p.warnings.iter().map(|w| w.to_string()).collect()),
                Err(e) => Err(e.to_string().lines().map(String::from).collect()),
            },
        );
    let by = crate::state::author(&format!("console:{}", v.user()), &app.gateway);
    let change = EstablishmentChange {
        name: name.to_string(),
        text,
        expect,
    };
    let written = shared
        .bounded_for(std::time::Duration::from_secs(15), async {
            let mut c = shared.own_client().await?;
            crate::state::pg::change_establishment(&mut c, change, &by, check).await
        })
        .await;
    let version = match written {
        Ok((version, _warnings)) => version,
        Err(StateError::Refused(p)) => return Err(p),
        Err(e) => return Err(vec![format!("{e}: nothing changed")]),
    };
    let here = crate::state::wait_applied(version, std::time::Duration::from_secs(3)).await;
    let verb = if done == "added" { "add" } else { "edit" };
    app.audit(
        v,
        &format!("establishment {verb}"),
        name,
        &format!("ok: written to the shared state, version {version}"),
    );
    app.sessions.set_flash(
        &v.session.id,
        format!(
            "Establishment {name} is {done} (shared state version {version}){}",
            if here {
                " and in force here; every gateway applies it within 2 s."
            } else {
                "; every gateway applies it within 2 s."
            }
        ),
    );
    Ok(Redirect::to(&format!("/establishments/{name}")).into_response())
}

/// Reloads after an establishment's file was written; when the reload refuses it, the file is
/// put back (`previous`, or removed): the file and the running configuration never disagree.
async fn applied(
    app: &App,
    v: &Viewer,
    name: &str,
    path: &std::path::Path,
    previous: Option<String>,
    done: &str,
) -> Result<Response, String> {
    match app.backend.reload.reload().await {
        Ok(()) => {
            let verb = if previous.is_some() { "edit" } else { "add" };
            app.audit(
                v,
                &format!("establishment {verb}"),
                name,
                "ok: written and reloaded",
            );
            app.sessions.set_flash(
                &v.session.id,
                format!(
                    "Establishment {name} is {done} ({}) and in force.",
                    path.display()
                ),
            );
            Ok(Redirect::to(&format!("/establishments/{name}")).into_response())
        }
        Err(why) => {
            let _ = match previous {
                Some(old) => std::fs::write(path, old),
                None => std::fs::remove_file(path),
            };
            Err(format!("the reload refused it: {why}"))
        }
    }
}
