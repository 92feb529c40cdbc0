//! `passerelle state import|export|status`, and the shared-state side of `establishment
//! add|remove` and `console user add|list|remove` (`[state] kind = "postgres"`): each write is
//! checked against the whole state the database holds and applied by every gateway within
//! 2 seconds; nothing is written on this machine.

use crate::config::{Config, StateConfig};
use crate::state::pg::{self, Check, EstablishmentChange, Expect};
use crate::state::users_file::UserRecord;
use crate::state::StateError;
use anyhow::Context;
use clap::Subcommand;
use std::path::Path;
use std::process::ExitCode;

#[derive(Subcommand, Debug)]
pub enum StateCommand {
    /// Copies establishments_dir and [console] users_file into the database (idempotent:
    /// what is already there unchanged is left alone), the whole state checked first.
    Import,
    /// Writes the database's state as files: DIR/establishments.d/*.toml and DIR/users.toml.
    Export {
        /// Where to write (created when missing).
        dir: std::path::PathBuf,
    },
    /// The database, the version applied here and when, whether it is reachable (exit 1
    /// when it is not).
    Status,
}

/// `[state]` when it is shared, from a configuration read without validation.
pub fn shared(cfg: &Config) -> Option<&StateConfig> {
    cfg.state.shared().then_some(&cfg.state)
}

/// The main file alone, when its `[state]` is shared (the establishments' files are not
/// read: with a shared state they are the local copy, and with files the verbs read them as
/// before). `None` with files, or when the file does not parse (the verb says why).
pub fn shared_main(config: &Path) -> Option<Config> {
    let text = std::fs::read_to_string(config).ok()?;
    let parsed = Config::from_toml_str(&text, &config.display().to_string()).ok()?;
    parsed.config.state.shared().then_some(parsed.config)
}

/// Who acts from the command line: `cli:USER on GATEWAY`.
fn author(cfg: &Config) -> String {
    let user = std::env::var("USER")
        .ok()
        .filter(|u| !u.is_empty())
        // SAFETY: getuid has no preconditions and cannot fail.
        .unwrap_or_else(|| format!("uid {}", unsafe { libc::getuid() }));
    crate::state::author(&format!("cli:{user}"), &cfg.journal.gateway_name())
}

/// The check of a write: the configuration at `config` with these establishments.
fn check(config: &Path) -> Check {
    let config = config.to_path_buf();
    Box::new(move |list| match Config::check_with_texts(&config, &list) {
        Ok(p) => Ok(p.warnings.iter().map(|w| w.to_string()).collect()),
        Err(e) => Err(e.to_string().lines().map(String::from).collect()),
    })
}

async fn client(sc: &StateConfig) -> Result<tokio_postgres::Client, StateError> {
    let shared = crate::state::Shared::new(sc.clone());
    shared.own_client().await
}

/// A refusal printed, exit 1.
fn refused(what: &str, e: StateError) -> ExitCode {
    match e {
        StateError::Refused(lines) => {
            for l in lines {
                eprintln!("{l}");
            }
            eprintln!("{what}: refused, nothing written");
        }
        other => eprintln!("{what}: {other}; nothing changed"),
    }
    ExitCode::from(1)
}

/// `establishment add` (`text` Some) or `remove` on the shared state.
pub fn establishment(
    config: &Path,
    cfg: &Config,
    name: &str,
    text: Option<String>,
) -> anyhow::Result<ExitCode> {
    let sc = cfg.state.clone();
    let adding = text.is_some();
    let change = EstablishmentChange {
        name: name.to_string(),
        expect: if adding {
            Expect::Absent
        } else {
            Expect::Present
        },
        text,
    };
    let by = author(cfg);
    let check = check(config);
    let r = super::block_on(async move {
        let mut c = client(&sc).await?;
        pg::change_establishment(&mut c, change, &by, check).await
    })?;
    Ok(match r {
        Ok((version, warnings)) => {
            for w in warnings {
                eprintln!("warning: {w}");
            }
            println!(
                "establishment {name}: {} the shared state (version {version}); every gateway applies it within 2 s",
                if adding { "written to" } else { "removed from" }
            );
            ExitCode::SUCCESS
        }
        Err(e) => refused(&format!("establishment {name}"), e),
    })
}

/// `console user add` on the shared state. Ok: whether it replaced one.
pub fn user_add(cfg: &Config, u: UserRecord) -> anyhow::Result<ExitCode> {
    let sc = cfg.state.clone();
    let by = author(cfg);
    let name = u.name.clone();
    let role = u.role.clone();
    let r = super::block_on(async move {
        let mut c = client(&sc).await?;
        pg::put_user(&mut c, &u, &by).await
    })?;
    Ok(match r {
        Ok((version, replaced)) => {
            println!(
                "shared state: user {name} ({role}) {} (version {version}); every gateway applies it within 2 s",
                if replaced { "replaced" } else { "added" }
            );
            ExitCode::SUCCESS
        }
        Err(e) => refused(&format!("user {name}"), e),
    })
}

/// A new second-factor secret for `name` in the shared state.
pub fn user_totp(cfg: &Config, name: &str, secret: &str) -> anyhow::Result<ExitCode> {
    let sc = cfg.state.clone();
    let by = author(cfg);
    let (n, secret) = (name.to_string(), secret.to_string());
    let r = super::block_on(async move {
        let mut c = client(&sc).await?;
        let state = pg::read(&mut c).await?;
        let Some(mut u) = state.users.into_iter().find(|u| u.name == n) else {
            return Ok(None);
        };
        u.totp = Some(secret);
        pg::put_user(&mut c, &u, &by).await.map(Some)
    })?;
    Ok(match r {
        Ok(Some((version, _))) => {
            println!("shared state: user {name}: new second-factor secret (version {version}); their sessions end on every gateway");
            ExitCode::SUCCESS
        }
        Ok(None) => {
            println!("shared state: no user {name}");
            ExitCode::from(1)
        }
        Err(e) => refused(&format!("user {name}"), e),
    })
}

pub fn user_remove(cfg: &Config, name: &str) -> anyhow::Result<ExitCode> {
    let sc = cfg.state.clone();
    let by = author(cfg);
    let n = name.to_string();
    let r = super::block_on(async move {
        let mut c = client(&sc).await?;
        pg::remove_user(&mut c, &n, &by).await
    })?;
    Ok(match r {
        Ok(Some(version)) => {
            println!("shared state: user {name} removed (version {version}); their sessions end on every gateway");
            ExitCode::SUCCESS
        }
        Ok(None) => {
            println!("shared state: no user {name}");
            ExitCode::from(1)
        }
        Err(e) => refused(&format!("user {name}"), e),
    })
}

pub fn user_list(cfg: &Config) -> anyhow::Result<ExitCode> {
    let sc = cfg.state.clone();
    let r = super::block_on(async move {
        let mut c = client(&sc).await?;
        pg::read(&mut c).await
    })?;
    Ok(match r {
        Ok(state) => {
            if state.users.is_empty() {
                println!("shared state: no users");
            }
            for u in state.users {
                println!("{}\t{}", u.name, u.role);
            }
            ExitCode::SUCCESS
        }
        Err(e) => refused("users", e),
    })
}

pub fn run(config: &Path, what: StateCommand) -> anyhow::Result<ExitCode> {
    let cfg = Config::load_unvalidated(config)?;
    match what {
        StateCommand::Status => status(&cfg),
        StateCommand::Import => {
            let Some(sc) = shared(&cfg).cloned() else {
                anyhow::bail!(
                    "[state] kind is \"files\" in {}: set kind = \"postgres\" and url first",
                    config.display()
                );
            };
            import(config, &cfg, sc)
        }
        StateCommand::Export { dir } => {
            let Some(sc) = shared(&cfg).cloned() else {
                anyhow::bail!(
                    "[state] kind is \"files\" in {}: the state is already files",
                    config.display()
                );
            };
            let state = super::block_on(async move {
                let mut c = client(&sc).await?;
                pg::read(&mut c).await
            })??;
            crate::state::local::write_files(&dir, &state)
                .with_context(|| format!("writing {}", dir.display()))?;
            println!(
                "exported {} establishments, {} users (version {}) to {}",
                state.establishments.len(),
                state.users.len(),
                state.version,
                dir.display()
            );
            Ok(ExitCode::SUCCESS)
        }
    }
}

fn import(config: &Path, cfg: &Config, sc: StateConfig) -> anyhow::Result<ExitCode> {
    let dir = &cfg.server.establishments_dir;
    let mut establishments = Vec::new();
    for f in crate::config::establishment::dir_files(dir)
        .with_context(|| format!("reading {}", dir.display()))?
    {
        let (e, _) = crate::config::establishment::read_file(&f).map_err(|p| {
            anyhow::anyhow!(p
                .iter()
                .map(|p| p.to_string())
                .collect::<Vec<_>>()
                .join("\n"))
        })?;
        let text = e.file_text.as_deref().unwrap_or_default().to_string();
        establishments.push((e.name, text));
    }
    // Checked as the console reads them (names, roles, hashes): a user no gateway would load
    // never enters the database.
    let users = match &cfg.console {
        Some(c) => crate::console::users::records(&crate::console::users::load(&c.users_file)?),
        None => Vec::new(),
    };
    let (ne, nu) = (establishments.len(), users.len());
    let by = author(cfg);
    let check = check(config);
    let r = super::block_on(async move {
        let mut c = client(&sc).await?;
        pg::import(&mut c, establishments, users, &by, check).await
    })?;
    Ok(match r {
        Ok((ce, cu, version)) => {
            println!("imported {ne} establishments, {nu} users ({ce} and {cu} changed; shared state version {version})");
            ExitCode::SUCCESS
        }
        Err(e) => refused("import", e),
    })
}

/// The URL as shown: user, host, port and database, never a password.
fn shown_url(sc: &StateConfig) -> String {
    sc.url
        .as_deref()
        .and_then(|u| pg::target_of(u).ok())
        .unwrap_or_else(|| "(no url)".into())
}

fn status(cfg: &Config) -> anyhow::Result<ExitCode> {
    let Some(sc) = shared(cfg).cloned() else {
        println!(
            "state: files (establishments_dir {}, users_file {})",
            cfg.server.establishments_dir.display(),
            cfg.console
                .as_ref()
                .map(|c| c.users_file.display().to_string())
                .unwrap_or_else(|| "-".into())
        );
        return Ok(ExitCode::SUCCESS);
    };
    println!("state: postgres, {}", shown_url(&sc));
    let local = sc.local_dir(&cfg.server.spool);
    match crate::state::local::applied_version(&local) {
        Some((v, at)) => println!(
            "here: version {v} applied {} ({})",
            crate::journal::read::format_time(at * 1000),
            local.display()
        ),
        None => println!("here: nothing applied yet ({})", local.display()),
    }
    let r = super::block_on(async move {
        let mut c = client(&sc).await?;
        pg::read(&mut c).await
    })?;
    Ok(match r {
        Ok(s) => {
            println!(
                "database: reachable, version {} ({} establishments, {} users)",
                s.version,
                s.establishments.len(),
                s.users.len()
            );
            ExitCode::SUCCESS
        }
        Err(e) => {
            println!("database: {e}");
            ExitCode::from(1)
        }
    })
}
