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
        /// A second factor (TOTP) at login: the `otpauth://` URI of its new secret is printed
        /// once. Implied for a role listed in `[console] second_factor`.
        #[arg(long)]
        totp: bool,
    },
    /// A new second-factor secret for a user (a lost phone): its URI printed once; the old
    /// codes stop working and the user's sessions end.
    Totp {
        /// The login name.
        name: String,
        /// Required: says that the old secret is replaced.
        #[arg(long)]
        reset: bool,
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
    let second = second_factor_roles(&cfg);
    let file = cfg
        .console
        .map(|c| c.users_file)
        .ok_or_else(|| anyhow::anyhow!("no [console] section in {}", config.display()))?;
    match what {
        ConsoleUserCommand::Add {
            name,
            role,
            password_stdin,
            totp,
        } => {
            let password = password(password_stdin)?;
            let secret = new_secret(totp || second.contains(&role.kind().to_string()))?;
            let replaced = users::add(&file, &name, role.clone(), &password, secret.clone())?;
            println!(
                "{}: user {name} ({role}) {}",
                file.display(),
                if replaced { "replaced" } else { "added" }
            );
            print_enrolment(&name, secret.as_deref());
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
        ConsoleUserCommand::Totp { name, reset } => {
            let secret = reset_secret(reset)?;
            if !users::set_totp(&file, &name, &secret)? {
                println!("{}: no user {name}", file.display());
                return Ok(ExitCode::from(1));
            }
            println!("{}: user {name}: new second-factor secret", file.display());
            print_enrolment(&name, Some(&secret));
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
            totp,
        } => {
            if !users::valid_name(&name) {
                return Err(users::UsersError::BadName(name).into());
            }
            let hash = users::hash_password(&password(password_stdin)?)?;
            let secret =
                new_secret(totp || second_factor_roles(cfg).contains(&role.kind().to_string()))?;
            let code = super::state::user_add(
                cfg,
                crate::state::users_file::UserRecord {
                    name: name.clone(),
                    role: role.to_string(),
                    password_hash: hash,
                    totp: secret.clone(),
                },
            )?;
            if code == ExitCode::SUCCESS {
                print_enrolment(&name, secret.as_deref());
            }
            Ok(code)
        }
        ConsoleUserCommand::Totp { name, reset } => {
            let secret = reset_secret(reset)?;
            let code = super::state::user_totp(cfg, &name, &secret)?;
            if code == ExitCode::SUCCESS {
                print_enrolment(&name, Some(&secret));
            }
            Ok(code)
        }
        ConsoleUserCommand::List => super::state::user_list(cfg),
        ConsoleUserCommand::Remove { name } => super::state::user_remove(cfg, &name),
    }
}

/// The roles `[console] second_factor` lists (`operator`, `auditor`, `establishment`).
fn second_factor_roles(cfg: &Config) -> Vec<String> {
    cfg.console
        .as_ref()
        .map(|c| c.second_factor.clone())
        .unwrap_or_default()
}

fn new_secret(wanted: bool) -> anyhow::Result<Option<String>> {
    if !wanted {
        return Ok(None);
    }
    crate::console::totp::new_secret()
        .map(Some)
        .map_err(anyhow::Error::msg)
}

fn reset_secret(reset: bool) -> anyhow::Result<String> {
    if !reset {
        anyhow::bail!("say --reset: the user's current second factor stops working");
    }
    crate::console::totp::new_secret().map_err(anyhow::Error::msg)
}

/// The secret's URI, printed this once (on standard output only: never logged).
fn print_enrolment(name: &str, secret: Option<&str>) {
    if let Some(s) = secret {
        println!(
            "second factor: add this to an authenticator application (shown once):\n{}",
            crate::console::totp::uri("passerelle", name, s)
        );
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
