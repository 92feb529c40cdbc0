//! `passerelle console user add|list|remove`: the console's users file.

use super::Config;
use clap::Subcommand;
use std::process::ExitCode;

#[derive(Subcommand)]
pub enum ConsoleCommand {
    /// Console users ([console] users_file).
    User {
        #[command(subcommand)]
        what: ConsoleUserCommand,
    },
}

#[derive(Subcommand)]
pub enum ConsoleUserCommand {
    /// Create or replace a user; the password is read from standard input.
    Add {
        /// The login name.
        name: String,
        /// operator, auditor, or establishment:NAME.
        #[arg(long)]
        role: crate::console::access::Role,
        /// Read the password from the first line of standard input (required: never on the
        /// command line, where `ps` shows it).
        #[arg(long)]
        password_stdin: bool,
    },
    /// Every user and its role.
    List,
    /// Remove a user; its open console sessions end.
    Remove {
        /// The login name.
        name: String,
    },
}

/// `passerelle console user ...`: edits `[console] users_file` (a running console sees the
/// change at the next request).
pub fn run(config: &std::path::Path, what: ConsoleCommand) -> anyhow::Result<ExitCode> {
    use crate::console::users;
    let ConsoleCommand::User { what } = what;
    if let Some(cfg) = super::state::shared_main(config) {
        return shared(&cfg, what);
    }
    let cfg = Config::load_unvalidated(config)?;
    let file = cfg
        .console
        .map(|c| c.users_file)
        .ok_or_else(|| anyhow::anyhow!("no [console] section in {}", config.display()))?;
    match what {
        ConsoleUserCommand::Add {
            name,
            role,
            password_stdin,
        } => {
            let password = password(password_stdin)?;
            let replaced = users::add(&file, &name, role.clone(), &password)?;
            println!(
                "{}: user {name} ({role}) {}",
                file.display(),
                if replaced { "replaced" } else { "added" }
            );
            tracing::info!(target: "crate::console::audit", user = %name, role = %role, action = "user add", "console user {}", if replaced { "replaced" } else { "added" });
        }
        ConsoleUserCommand::List => {
            let list = users::load(&file)?;
            if list.is_empty() {
                println!("{}: no users", file.display());
            }
            for u in list {
                println!("{}\t{}", u.name, u.role);
            }
        }
        ConsoleUserCommand::Remove { name } => {
            if !users::remove(&file, &name)? {
                println!("{}: no user {name}", file.display());
                return Ok(ExitCode::from(1));
            }
            println!("{}: user {name} removed", file.display());
            tracing::info!(target: "crate::console::audit", user = %name, action = "user remove", "console user removed");
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// The same verbs on the shared state (`[state] kind = "postgres"`).
fn shared(cfg: &Config, what: ConsoleUserCommand) -> anyhow::Result<ExitCode> {
    use crate::console::users;
    match what {
        ConsoleUserCommand::Add {
            name,
            role,
            password_stdin,
        } => {
            if !users::valid_name(&name) {
                return Err(users::UsersError::BadName(name).into());
            }
            let hash = users::hash_password(&password(password_stdin)?)?;
            super::state::user_add(
                cfg,
                crate::state::users_file::UserRecord {
                    name,
                    role: role.to_string(),
                    password_hash: hash,
                },
            )
        }
        ConsoleUserCommand::List => super::state::user_list(cfg),
        ConsoleUserCommand::Remove { name } => super::state::user_remove(cfg, &name),
    }
}

/// The password, from the first line of standard input (never the command line, where `ps`
/// shows it).
fn password(password_stdin: bool) -> anyhow::Result<String> {
    if !password_stdin {
        anyhow::bail!("give the password on standard input with --password-stdin");
    }
    let mut line = String::new();
    std::io::stdin().read_line(&mut line)?;
    Ok(line.trim_end_matches(['\r', '\n']).to_string())
}
