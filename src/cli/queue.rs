//! `passerelle queue ...`: the postqueue/postsuper verbs. While `serve` runs they go through
//! the admin endpoint (with the token from `SPOOL/admin.token`); when it is stopped they work
//! on the spool directly (which is then locked by this command).
//!
//! They answer in sentences (`ID: held`); `list` and `show` also in JSON (`--format json`)
//! for tools. `show --headers/--body` print the stored message like Postfix's `postcat -hq`
//! and `-bq`: a body is health data, so it is printed only on that explicit flag and every
//! read is logged at warn level with the OS user who asked (by the server when it runs).

use super::Format;
use crate::admin::client::online;
use crate::config::Config;
use crate::queue::audit::{log_body_read, os_reader};
use crate::queue::scheduler::{QueueItem, QueueRcpt};
use crate::queue::spool::{read_stored, scan, Spool};
use anyhow::{anyhow, bail};
use clap::Subcommand;
use std::io::Write;
use std::process::ExitCode;

#[derive(Debug, Clone)]
pub enum Verb {
    /// Every message, or those of one establishment.
    List(Option<String>),
    Show(String, Content),
    Retry(Option<String>),
    Hold(String),
    Release(String),
    Delete(String),
}

/// What `queue show` prints of the stored message besides its envelope.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Content {
    /// The header section (`postcat -hq`).
    pub headers: bool,
    /// The body (`postcat -bq`): read only on this flag, and logged.
    pub body: bool,
}

impl Content {
    /// The part of a stored message to print: headers, body, or both (the whole message).
    pub fn select(self, msg: &[u8]) -> &[u8] {
        let head = crate::dsn::header_section(msg).len();
        match (self.headers, self.body) {
            (true, false) => &msg[..head],
            (false, true) => &msg[head..],
            _ => msg,
        }
    }
}

fn age(secs: u64) -> String {
    match secs {
        s if s < 120 => format!("{s}s"),
        s if s < 7200 => format!("{}m", s / 60),
        s if s < 172_800 => format!("{}h", s / 3600),
        s => format!("{}d", s / 86400),
    }
}

pub fn print_item(it: &QueueItem, out: &mut impl Write) -> std::io::Result<()> {
    let now = crate::util::clock::now_ms();
    let next = if it.held {
        "on hold".to_string()
    } else if it.next_attempt <= now {
        "now".to_string()
    } else {
        format!("in {}", age((it.next_attempt - now) / 1000))
    };
    writeln!(
        out,
        "{}  {:>8}  {:>5}  <{}>  attempts {}  next {}{}",
        it.id,
        it.size,
        age((now / 1000).saturating_sub(it.received)),
        it.sender,
        it.attempts,
        next,
        it.establishment
            .as_ref()
            .map(|e| format!("  establishment {e}"))
            .unwrap_or_default()
    )?;
    for QueueRcpt {
        address,
        status,
        last_error,
        ..
    } in &it.recipients
    {
        match last_error {
            Some(e) => writeln!(out, "    {status:<9} <{address}>  ({e})")?,
            None => writeln!(out, "    {status:<9} <{address}>")?,
        }
    }
    Ok(())
}

fn offline_items(cfg: &Config) -> anyhow::Result<Vec<QueueItem>> {
    let (msgs, _) = scan(&cfg.server.spool, false)?;
    let mut items: Vec<QueueItem> = msgs
        .into_iter()
        .map(|r| QueueItem::new(&r.envelope, &r.state, r.body.len))
        .collect();
    items.sort_by(|a, b| a.id.cmp(&b.id));
    Ok(items)
}

/// The stored message of a stopped server, or `None` when there is no such id.
fn offline_message(cfg: &Config, id: &str) -> anyhow::Result<Option<Vec<u8>>> {
    let (msgs, _) = scan(&cfg.server.spool, false)?;
    match msgs.iter().find(|m| m.envelope.id == id) {
        Some(m) => Ok(Some(read_stored(&cfg.server.spool, m.body)?)),
        None => Ok(None),
    }
}

fn print_list(
    items: &[QueueItem],
    json: bool,
    note: &str,
    out: &mut impl Write,
) -> anyhow::Result<()> {
    if json {
        writeln!(out, "{}", serde_json::to_string_pretty(items)?)?;
    } else {
        for it in items {
            print_item(it, out)?;
        }
        writeln!(out, "-- {} message(s) in the queue{note}", items.len())?;
    }
    Ok(())
}

fn print_show(it: &QueueItem, json: bool, out: &mut impl Write) -> anyhow::Result<()> {
    if json {
        writeln!(out, "{}", serde_json::to_string_pretty(it)?)?;
    } else {
        print_item(it, out)?;
    }
    Ok(())
}

/// What the running server's endpoint would call the verb, for the audit entry.
fn offline_action(v: &Verb) -> String {
    match v {
        Verb::Retry(None) => "queue retry --all".into(),
        Verb::Retry(Some(_)) => "queue retry".into(),
        Verb::Hold(_) => "queue hold".into(),
        Verb::Release(_) => "queue release".into(),
        Verb::Delete(_) => "queue delete".into(),
        Verb::List(_) | Verb::Show(..) => "queue".into(),
    }
}

fn offline_target(v: &Verb) -> String {
    match v {
        Verb::Retry(Some(id)) | Verb::Hold(id) | Verb::Release(id) | Verb::Delete(id) => id.clone(),
        _ => "-".into(),
    }
}

/// A verb on a stopped server's spool is one audit entry of the CLI (the running server's
/// endpoint records its own): refused, nothing done, when the entry cannot be written.
async fn offline_audited<T>(
    cfg: &Config,
    action: &str,
    target: &str,
    work: impl std::future::Future<Output = anyhow::Result<T>>,
) -> anyhow::Result<T> {
    use crate::audit::{Actor, Auditor, Outcome};
    let a = Auditor::new(&cfg.journal, &cfg.server.spool);
    let who = Actor::cli();
    a.probe(&who)
        .await
        .map_err(|e| anyhow!("{target}: refused: {e}; nothing was done"))?;
    let r = work.await;
    let outcome = match &r {
        Ok(_) => Outcome::Ok,
        Err(e) => Outcome::Failed(e.to_string()),
    };
    a.record(&who, action, target, None, outcome)
        .await
        .map_err(|e| anyhow!("{target}: done, but its audit entry could not be written: {e}"))?;
    r
}

/// Records an action on one message of a stopped server's spool in the journal, before the
/// spool is changed: one that cannot be recorded is refused, never done unrecorded (issue 24
/// B.12, as the running server's reservation does).
fn record_first(cfg: &Config, id: &str, verb: &Verb) -> anyhow::Result<()> {
    use crate::journal::AdminAction;
    let action = match verb {
        Verb::Hold(_) => AdminAction::Held,
        Verb::Release(_) => AdminAction::Released,
        Verb::Delete(_) => AdminAction::Deleted,
        _ => AdminAction::Retried,
    };
    let ev = crate::journal::Event::now(crate::journal::EventBody::Admin(crate::journal::Admin {
        queue_id: id.to_string(),
        action,
        user: "cli".into(),
    }));
    crate::journal::write_now(cfg, vec![ev])
        .map_err(|e| anyhow!("{id}: refused: the journal cannot record it ({e}); nothing was done"))
}

/// Changes the stopped server's spool directly: the message is found, the action recorded,
/// then done.
async fn offline_change(cfg: &Config, verb: &Verb) -> anyhow::Result<String> {
    let (spool, msgs, _) = Spool::open(&cfg.server.spool)
        .map_err(|e| anyhow!("{e} (is `serve` running without [server].admin?)"))?;
    let pick = |id: &str| {
        let m = msgs
            .iter()
            .find(|m| m.envelope.id == id)
            .ok_or_else(|| anyhow!("{id}: no such message"))?;
        record_first(cfg, id, verb)?;
        Ok::<_, anyhow::Error>(m)
    };
    match verb {
        Verb::Retry(None) => {
            for m in &msgs {
                let mut st = m.state.clone();
                st.next_attempt = 0;
                spool.update(&m.envelope.id, &st).await?;
            }
            Ok(format!(
                "{} message(s) will be retried at the next start",
                msgs.len()
            ))
        }
        Verb::Retry(Some(id)) | Verb::Hold(id) | Verb::Release(id) => {
            let m = pick(id)?;
            let mut st = m.state.clone();
            match verb {
                Verb::Hold(_) => st.held = true,
                Verb::Release(_) => st.held = false,
                _ => {}
            }
            st.next_attempt = 0;
            spool.update(id, &st).await?;
            Ok(match verb {
                Verb::Hold(_) => format!("{id}: held"),
                Verb::Release(_) => format!("{id}: released, attempt at the next start"),
                _ => format!("{id}: attempt at the next start"),
            })
        }
        Verb::Delete(id) => {
            let m = pick(id)?;
            spool.remove(id, m.body).await?;
            Ok(format!("{id}: deleted"))
        }
        Verb::List(_) | Verb::Show(..) => bail!("internal: read-only verb routed as a change"),
    }
}

/// The sentence for a change the running server made.
fn done(verb: &Verb, body: &str) -> String {
    let retried = || {
        serde_json::from_str::<serde_json::Value>(body)
            .ok()
            .and_then(|v| v["retried"].as_u64())
            .unwrap_or(0)
    };
    match verb {
        Verb::Hold(id) => format!("{id}: held"),
        Verb::Release(id) => format!("{id}: released, attempt now"),
        Verb::Delete(id) => format!("{id}: deleted"),
        Verb::Retry(Some(id)) => format!("{id}: attempt now"),
        Verb::Retry(None) => format!("{} message(s) scheduled for an attempt now", retried()),
        Verb::List(_) | Verb::Show(..) => String::new(),
    }
}

/// Runs one verb; `json` prints `list` and `show` as JSON. Returns false for "no such
/// message" and other refusals (exit status 1).
pub async fn run(cfg: &Config, verb: Verb, json: bool) -> anyhow::Result<bool> {
    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    let (method, path) = match &verb {
        Verb::List(_) => ("GET", "/queue".to_string()),
        Verb::Show(id, c) if c.body => ("GET", format!("/queue/{id}/message")),
        Verb::Show(id, c) if c.headers => ("GET", format!("/queue/{id}/headers")),
        Verb::Show(id, _) => ("GET", format!("/queue/{id}")),
        Verb::Retry(None) => ("POST", "/queue/retry-all".to_string()),
        Verb::Retry(Some(id)) => ("POST", format!("/queue/{id}/retry")),
        Verb::Hold(id) => ("POST", format!("/queue/{id}/hold")),
        Verb::Release(id) => ("POST", format!("/queue/{id}/release")),
        Verb::Delete(id) => ("POST", format!("/queue/{id}/delete")),
    };
    let answer = {
        let cfg = cfg.clone();
        let path = path.clone();
        tokio::task::spawn_blocking(move || online(&cfg, method, &path)).await??
    };
    match answer {
        Some(a) if a.code == 200 => {
            match &verb {
                Verb::List(only) => {
                    let mut items: Vec<QueueItem> = serde_json::from_slice(&a.body)?;
                    items.retain(|i| only.is_none() || i.establishment == *only);
                    print_list(&items, json, "", &mut out)?
                }
                Verb::Show(_, c) if c.headers || c.body => out.write_all(c.select(&a.body))?,
                Verb::Show(..) => print_show(&serde_json::from_slice(&a.body)?, json, &mut out)?,
                change => writeln!(out, "{}", done(change, &a.text()))?,
            }
            Ok(true)
        }
        Some(a) => {
            writeln!(out, "{}", a.text().trim())?;
            if a.code == 403 || a.code == 0 {
                bail!("admin endpoint refused the request ({})", a.code);
            }
            Ok(false)
        }
        None => match &verb {
            Verb::List(only) => {
                let mut items = offline_items(cfg)?;
                items.retain(|i| only.is_none() || i.establishment == *only);
                print_list(&items, json, " (server not running)", &mut out)?;
                Ok(true)
            }
            Verb::Show(id, c) if c.headers || c.body => {
                let action = if c.body {
                    "queue show --body"
                } else {
                    "queue show --headers"
                };
                let Some(msg) =
                    offline_audited(cfg, action, id, async { offline_message(cfg, id) }).await?
                else {
                    writeln!(out, "{id}: no such message")?;
                    return Ok(false);
                };
                if c.body {
                    log_body_read(id, &os_reader(), "spool");
                }
                out.write_all(c.select(&msg))?;
                Ok(true)
            }
            Verb::Show(id, _) => match offline_items(cfg)?.iter().find(|i| &i.id == id) {
                Some(it) => {
                    print_show(it, json, &mut out)?;
                    Ok(true)
                }
                None => {
                    writeln!(out, "{id}: no such message")?;
                    Ok(false)
                }
            },
            change => match offline_audited(
                cfg,
                &offline_action(change),
                &offline_target(change),
                offline_change(cfg, change),
            )
            .await
            {
                Ok(msg) => {
                    writeln!(out, "{msg} (server not running)")?;
                    Ok(true)
                }
                Err(e) if e.to_string().contains("no such message") => {
                    writeln!(out, "{e}")?;
                    Ok(false)
                }
                Err(e) => Err(e),
            },
        },
    }
}

#[derive(Subcommand)]
pub enum QueueCommand {
    /// Every message: id, size, age, sender, attempts, next attempt; each recipient's status
    /// and last error (`postqueue -p`).
    List {
        /// `json`: an array of messages, for tools.
        #[arg(long, value_enum, default_value_t)]
        format: Format,
        /// Only the messages sent by this establishment.
        #[arg(long)]
        establishment: Option<String>,
    },
    /// One message's envelope and recipients; its stored headers or body on request
    /// (`postcat -q`).
    Show {
        /// Queue ID (as in `250 ... queued as ID` and the logs).
        id: String,
        /// Print the stored message's header section (`postcat -hq`).
        #[arg(long)]
        headers: bool,
        /// Print the stored message's body (`postcat -bq`; with --headers: the whole message).
        /// Health data: each read is logged with the OS user who asked.
        #[arg(long)]
        body: bool,
        /// `json`: the envelope as a JSON object, for tools (not with --headers/--body).
        #[arg(long, value_enum, default_value_t, conflicts_with_all = ["headers", "body"])]
        format: Format,
    },
    /// Attempt delivery now: one message, or every one with --all (`postqueue -i` / `-f`).
    Retry {
        /// Queue ID.
        #[arg(required_unless_present = "all", conflicts_with = "all")]
        id: Option<String>,
        /// Every message in the queue (not those on hold).
        #[arg(long)]
        all: bool,
    },
    /// Stop attempting a message; it stays queued (`postsuper -h`).
    Hold {
        /// Queue ID.
        id: String,
    },
    /// Resume a held message, attempted now (`postsuper -H`).
    Release {
        /// Queue ID.
        id: String,
    },
    /// Remove a message; nobody is notified (`postsuper -d`).
    Delete {
        /// Queue ID.
        id: String,
    },
}

/// `passerelle queue ...` from the command line: the verb, then [`run`] on a small runtime.
pub fn command(config: &std::path::Path, what: QueueCommand) -> anyhow::Result<ExitCode> {
    use crate::cli::queue::{Content, Verb};
    let json = matches!(
        what,
        QueueCommand::List {
            format: Format::Json,
            ..
        } | QueueCommand::Show {
            format: Format::Json,
            ..
        }
    );
    let verb = match what {
        QueueCommand::List { establishment, .. } => Verb::List(establishment),
        QueueCommand::Show {
            id, headers, body, ..
        } => Verb::Show(id, Content { headers, body }),
        QueueCommand::Retry {
            id: None,
            all: true,
        } => Verb::Retry(None),
        QueueCommand::Retry {
            id: Some(id),
            all: false,
        } => Verb::Retry(Some(id)),
        QueueCommand::Retry { .. } => {
            eprintln!("passerelle: queue retry takes an ID or --all");
            return Ok(ExitCode::from(2));
        }
        QueueCommand::Hold { id } => Verb::Hold(id),
        QueueCommand::Release { id } => Verb::Release(id),
        QueueCommand::Delete { id } => Verb::Delete(id),
    };
    let cfg = Config::load_unvalidated(config)?;
    let ok = super::block_on(crate::cli::queue::run(&cfg, verb, json))??;
    Ok(if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn content_selects_headers_body_or_both() {
        let msg = b"Subject: x\r\nFrom: a@b\r\n\r\nline 1\r\n\r\nline 2\r\n";
        let c = |headers, body| Content { headers, body };
        assert_eq!(
            c(true, false).select(msg),
            b"Subject: x\r\nFrom: a@b\r\n\r\n"
        );
        assert_eq!(c(false, true).select(msg), b"line 1\r\n\r\nline 2\r\n");
        assert_eq!(c(true, true).select(msg), msg);
        // No blank line: all headers, no body.
        assert_eq!(c(false, true).select(b"Subject: x\r\n"), b"");
    }

    #[test]
    fn sentences_for_changes() {
        assert_eq!(done(&Verb::Hold("A".into()), "{}"), "A: held");
        assert_eq!(
            done(&Verb::Release("A".into()), "{}"),
            "A: released, attempt now"
        );
        assert_eq!(done(&Verb::Delete("A".into()), "{}"), "A: deleted");
        assert_eq!(
            done(&Verb::Retry(None), r#"{"retried":3}"#),
            "3 message(s) scheduled for an attempt now"
        );
    }

    #[test]
    fn reader_names_the_uid() {
        let r = os_reader();
        assert!(r.contains("(uid ") || r.contains(", uid "), "{r}");
    }
}
