//! `passerelle establishment add|remove|list|show|test`: onboarding an establishment of a
//! regional gateway in minutes (with `[state] kind = "postgres"`, `add` and `remove` write to
//! the shared state instead: see `cli/state.rs`). `add` writes `establishments_dir/NAME.toml`, validates the
//! whole configuration with it (as `check-config` does; nothing is left behind when it is
//! refused) and asks a running server to reload through its admin endpoint; `show` prints
//! what the establishment's administrator pastes (Postfix, Exchange) and what is declared to
//! DNS and to the ANS whitelist; `test` checks its mailbox server as delivery would.

use crate::config::Config;
use crate::delivery::check::mailbox_test;
use crate::establishment::onboarding::{joined, our_dn, render_show};
use crate::establishment::store::{file_text, find, write_checked, FileSpec};
use anyhow::{bail, Context};
use clap::Subcommand;
use std::path::Path;
use std::process::ExitCode;

/// One value per process run: the size of its biggest variant costs nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Subcommand, Debug)]
pub enum EstablishmentCommand {
    /// Each establishment: name, domains, clients, mailbox.
    List {
        /// `json`: an array of establishments, for tools.
        #[arg(long, default_value = "text", value_parser = ["text", "json"])]
        format: String,
    },
    /// Its settings, and ready-to-paste configuration for its side (Postfix transport_maps
    /// and master.cf, Exchange send connector), plus the DNS and whitelist declarations.
    Show {
        /// The establishment's name.
        name: String,
    },
    /// Writes establishments_dir/NAME.toml, validates the whole configuration with it, and
    /// asks a running server to reload (exit 1 with the reason when invalid; nothing written).
    Add {
        /// Its name: lowercase letters, digits and '-'.
        name: String,
        /// One of its domains (repeat for several): exact, or *.suffix.
        #[arg(long = "domain", required = true, num_args = 1..)]
        domains: Vec<String>,
        /// Networks of its MTAs (CIDR or address; repeat for several).
        #[arg(long, num_args = 1..)]
        clients: Vec<String>,
        /// Client-certificate subject DN of its MTAs (RFC 4514; repeat for several).
        #[arg(long = "client-dn", num_args = 1..)]
        client_dns: Vec<String>,
        /// Its mailbox server, HOST:PORT: mail for its domains is delivered there.
        #[arg(long)]
        mailbox: String,
        /// TLS towards the mailbox: none, opportunistic, required or mutual.
        #[arg(long = "mailbox-tls", default_value = "opportunistic")]
        mailbox_tls: String,
        /// envelope, or envelope+header (the From: header checked too).
        #[arg(long = "sender-check", default_value = "envelope+header")]
        sender_check: String,
        /// On a shared domain: a directory structure id (FINESS/SIRET) whose BALs are its own.
        #[arg(long = "structure", num_args = 1..)]
        structures: Vec<String>,
        /// On a shared domain: an address that is its own.
        #[arg(long = "address", num_args = 1..)]
        addresses: Vec<String>,
        /// Messages per minute accepted from it (450 4.7.1 beyond).
        #[arg(long = "max-message-rate")]
        max_message_rate: Option<u32>,
        /// Its messages in the queue at most (452 4.3.1 at MAIL beyond).
        #[arg(long = "max-queued")]
        max_queued: Option<usize>,
    },
    /// Removes establishments_dir/NAME.toml and asks a running server to reload.
    Remove {
        /// The establishment's name.
        name: String,
    },
    /// Checks its mailbox server as delivery would: connect, EHLO, STARTTLS per its
    /// mailbox_tls, RCPT TO:<postmaster@DOMAIN>, RSET, QUIT (no message is sent).
    Test {
        /// The establishment's name.
        name: String,
    },
}

/// Runs one verb against the configuration at `config`.
pub fn run(config: &Path, cmd: EstablishmentCommand) -> anyhow::Result<ExitCode> {
    match cmd {
        EstablishmentCommand::List { format } => list(config, format == "json"),
        EstablishmentCommand::Show { name } => show(config, &name),
        EstablishmentCommand::Add {
            name,
            domains,
            clients,
            client_dns,
            mailbox,
            mailbox_tls,
            sender_check,
            structures,
            addresses,
            max_message_rate,
            max_queued,
        } => {
            let text = file_text(&FileSpec {
                name: &name,
                domains: &domains,
                clients: &clients,
                client_dns: &client_dns,
                mailbox: &mailbox,
                mailbox_tls: &mailbox_tls,
                sender_check: &sender_check,
                structures: &structures,
                addresses: &addresses,
                max_message_rate,
                max_queued,
            });
            add(config, &name, &text)
        }
        EstablishmentCommand::Remove { name } => remove(config, &name),
        EstablishmentCommand::Test { name } => super::block_on(test(config, &name))?,
    }
}

fn list(config: &Path, json: bool) -> anyhow::Result<ExitCode> {
    let cfg = Config::load_unvalidated(config)?;
    if json {
        let v: Vec<serde_json::Value> = cfg
            .establishment
            .iter()
            .map(|e| {
                serde_json::json!({
                    "name": e.name,
                    "domains": e.domains.iter().map(|d| d.to_string()).collect::<Vec<_>>(),
                    "clients": e.clients.iter().map(|d| d.to_string()).collect::<Vec<_>>(),
                    "client_dns": e.client_dns.iter().map(|d| d.to_string()).collect::<Vec<_>>(),
                    "mailbox": e.mailbox.to_string(),
                    "mailbox_tls": e.mailbox_tls.as_str(),
                    "file": e.file.as_ref().map(|f| f.display().to_string()),
                })
            })
            .collect();
        println!("{}", serde_json::to_string_pretty(&v)?);
        return Ok(ExitCode::SUCCESS);
    }
    for e in &cfg.establishment {
        println!(
            "{}  domains {}  clients {}  client_dns {}  mailbox {} (tls {})",
            e.name,
            joined(&e.domains),
            joined(&e.clients),
            joined(&e.client_dns),
            e.mailbox,
            e.mailbox_tls.as_str()
        );
    }
    println!("-- {} establishment(s)", cfg.establishment.len());
    Ok(ExitCode::SUCCESS)
}

fn add(config: &Path, name: &str, text: &str) -> anyhow::Result<ExitCode> {
    if let Some(cfg) = super::state::shared_main(config) {
        return super::state::establishment(config, &cfg, name, Some(text.to_string()));
    }
    match write_checked(config, name, text) {
        Ok((path, warnings)) => {
            for w in warnings {
                eprintln!("warning: {w}");
            }
            println!("establishment {name}: written to {}", path.display());
            reload(config)
        }
        Err(problems) => {
            for p in problems {
                eprintln!("{p}");
            }
            eprintln!("establishment {name}: refused, nothing written");
            Ok(ExitCode::from(1))
        }
    }
}

fn remove(config: &Path, name: &str) -> anyhow::Result<ExitCode> {
    let cfg = Config::load_unvalidated(config)?;
    if super::state::shared(&cfg).is_some() {
        if cfg
            .establishment
            .iter()
            .any(|e| e.name == name && e.file.is_none())
        {
            bail!(
                "establishment {name:?} is declared in {} ([[establishment]]); remove it there",
                config.display()
            );
        }
        return super::state::establishment(config, &cfg, name, None);
    }
    let cfg = Config::load_unvalidated(config)?;
    let e = find(&cfg, name)?;
    let Some(file) = &e.file else {
        bail!(
            "establishment {name:?} is declared in {} ([[establishment]]); remove it there",
            config.display()
        );
    };
    std::fs::remove_file(file).with_context(|| format!("removing {}", file.display()))?;
    println!("establishment {name}: removed {}", file.display());
    reload(config)
}

/// Asks a running server to reload; says so when none runs.
fn reload(config: &Path) -> anyhow::Result<ExitCode> {
    let cfg = Config::load_unvalidated(config)?;
    match crate::admin::client::admin_request(&cfg, "POST", "/reload?part_of=establishment")? {
        None => {
            println!(
                "no running server answers on server.admin: the change applies at its next start or reload"
            );
            Ok(ExitCode::SUCCESS)
        }
        Some((200, _)) => {
            println!("running server reloaded");
            Ok(ExitCode::SUCCESS)
        }
        Some((code, body)) => {
            eprintln!(
                "the running server refused the reload ({code}): {}",
                body.trim()
            );
            Ok(ExitCode::from(1))
        }
    }
}

fn show(config: &Path, name: &str) -> anyhow::Result<ExitCode> {
    let cfg = Config::load_unvalidated(config)?;
    let e = find(&cfg, name)?;
    print!("{}", render_show(&cfg, e, our_dn(&cfg).as_deref()));
    Ok(ExitCode::SUCCESS)
}

async fn test(config: &Path, name: &str) -> anyhow::Result<ExitCode> {
    let cfg = Config::load_unvalidated(config)?;
    let (ok, lines) = mailbox_test(&cfg, name).await?;
    for l in lines {
        println!("{l}");
    }
    Ok(if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}
