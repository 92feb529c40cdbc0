//! `passerelle queue ...`: the postqueue/postsuper verbs. While `serve` runs they go through
//! the admin endpoint (with the token from `SPOOL/admin.token`); when it is stopped they work
//! on the spool directly (which is then locked by this command).

use crate::config::Config;
use crate::queue::scheduler::{QueueItem, QueueRcpt};
use crate::queue::spool::{scan, Spool};
use anyhow::{anyhow, bail, Context};
use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

#[derive(Debug, Clone)]
pub enum Verb {
    List,
    Show(String),
    Retry(Option<String>),
    Hold(String),
    Release(String),
    Delete(String),
}

/// One request to the running server, or `None` when nothing listens there.
fn online(cfg: &Config, method: &str, path: &str) -> anyhow::Result<Option<(u16, String)>> {
    let Some(addr) = &cfg.server.admin else {
        return Ok(None);
    };
    let Ok(sa) = addr.parse::<std::net::SocketAddr>() else {
        return Ok(None);
    };
    let Ok(mut s) = TcpStream::connect_timeout(&sa, Duration::from_secs(2)) else {
        return Ok(None);
    };
    let token_path = cfg.server.spool.join(crate::admin::TOKEN_FILE);
    let token = std::fs::read_to_string(&token_path).with_context(|| {
        format!(
            "the server runs; reading its token {}",
            token_path.display()
        )
    })?;
    s.set_read_timeout(Some(Duration::from_secs(60)))?;
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nX-Passerelle-Token: {}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
        token.trim()
    )?;
    let mut resp = String::new();
    s.read_to_string(&mut resp)?;
    let (head, body) = resp
        .split_once("\r\n\r\n")
        .ok_or_else(|| anyhow!("malformed answer from {addr}"))?;
    let code: u16 = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    Ok(Some((code, body.to_string())))
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
    let now = crate::message::now_ms();
    let next = if it.held {
        "on hold".to_string()
    } else if it.next_attempt <= now {
        "now".to_string()
    } else {
        format!("in {}", age((it.next_attempt - now) / 1000))
    };
    writeln!(
        out,
        "{}  {:>8}  {:>5}  <{}>  attempts {}  next {}",
        it.id,
        it.size,
        age((now / 1000).saturating_sub(it.received)),
        it.sender,
        it.attempts,
        next
    )?;
    for QueueRcpt {
        address,
        status,
        last_error,
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

/// Changes the stopped server's spool directly (and journals the administrator's action).
async fn offline_change(cfg: &Config, verb: &Verb) -> anyhow::Result<String> {
    let (spool, msgs, _) = Spool::open(&cfg.server.spool)
        .map_err(|e| anyhow!("{e} (is `serve` running without [server].admin?)"))?;
    let done = offline_verb(&spool, &msgs, verb).await?;
    if let Some((id, action)) = journal_action(verb) {
        let ev =
            crate::journal::Event::now(crate::journal::EventBody::Admin(crate::journal::Admin {
                queue_id: id.to_string(),
                action,
                user: "cli".into(),
            }));
        if let Err(e) = crate::journal::write_now(cfg, vec![ev]) {
            eprintln!("warning: {e} (the queue was changed)");
        }
    }
    Ok(done)
}

/// The journal's word for a queue verb on one message.
fn journal_action(verb: &Verb) -> Option<(&str, crate::journal::AdminAction)> {
    use crate::journal::AdminAction;
    match verb {
        Verb::Retry(Some(id)) => Some((id, AdminAction::Retried)),
        Verb::Hold(id) => Some((id, AdminAction::Held)),
        Verb::Release(id) => Some((id, AdminAction::Released)),
        Verb::Delete(id) => Some((id, AdminAction::Deleted)),
        _ => None,
    }
}

async fn offline_verb(
    spool: &Spool,
    msgs: &[crate::queue::spool::Recovered],
    verb: &Verb,
) -> anyhow::Result<String> {
    let pick = |id: &str| {
        msgs.iter()
            .find(|m| m.envelope.id == id)
            .ok_or_else(|| anyhow!("{id}: no such message"))
    };
    match verb {
        Verb::Retry(None) => {
            for m in msgs {
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
            Ok(format!("{id}: done"))
        }
        Verb::Delete(id) => {
            let m = pick(id)?;
            spool.remove(id, m.body).await?;
            Ok(format!("{id}: deleted"))
        }
        Verb::List | Verb::Show(_) => bail!("internal: read-only verb routed as a change"),
    }
}

pub async fn run(cfg: &Config, verb: Verb) -> anyhow::Result<bool> {
    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    let (method, path) = match &verb {
        Verb::List => ("GET", "/queue".to_string()),
        Verb::Show(id) => ("GET", format!("/queue/{id}")),
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
        Some((200, body)) => {
            match &verb {
                Verb::List => {
                    let items: Vec<QueueItem> = serde_json::from_str(&body)?;
                    for it in &items {
                        print_item(it, &mut out)?;
                    }
                    writeln!(out, "-- {} message(s) in the queue", items.len())?;
                }
                Verb::Show(_) => print_item(&serde_json::from_str(&body)?, &mut out)?,
                _ => writeln!(
                    out,
                    "{}: done {}",
                    path.trim_start_matches("/queue/"),
                    body.trim()
                )?,
            }
            Ok(true)
        }
        Some((code, body)) => {
            writeln!(out, "{}", body.trim())?;
            if code == 403 || code == 0 {
                bail!("admin endpoint refused the request ({code})");
            }
            Ok(false)
        }
        None => match &verb {
            Verb::List => {
                let items = offline_items(cfg)?;
                for it in &items {
                    print_item(it, &mut out)?;
                }
                writeln!(
                    out,
                    "-- {} message(s) in the queue (server not running)",
                    items.len()
                )?;
                Ok(true)
            }
            Verb::Show(id) => match offline_items(cfg)?.iter().find(|i| &i.id == id) {
                Some(it) => {
                    print_item(it, &mut out)?;
                    Ok(true)
                }
                None => {
                    writeln!(out, "{id}: no such message")?;
                    Ok(false)
                }
            },
            change => match offline_change(cfg, change).await {
                Ok(msg) => {
                    writeln!(out, "{msg}")?;
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
