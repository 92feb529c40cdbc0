//! `passerelle audit list|verify`, and the audit entry of every CLI verb that changes the
//! gateway's state ([`audited`], [`run_audited`]): one entry each, its place kept before the
//! verb runs, so that a verb that cannot be recorded is refused, never done unrecorded.

use super::{Command, Config, Format};
use crate::audit::{Actor, Auditor, ListFilter, Outcome};
use clap::Subcommand;
use std::process::ExitCode;

#[derive(Subcommand)]
pub enum AuditCommand {
    /// The administrative actions, oldest first.
    List {
        /// From this time on (RFC 3339, a date, `now`, or a duration ago: `7d`).
        #[arg(long)]
        since: Option<String>,
        /// Before this time.
        #[arg(long)]
        until: Option<String>,
        /// Only this user's (console user or OS user).
        #[arg(long)]
        user: Option<String>,
        /// Only this action (`login`, `queue hold`, `establishment add`, ...).
        #[arg(long)]
        action: Option<String>,
        /// At most this many entries (the oldest of the selection).
        #[arg(long, default_value_t = 1000, value_parser = clap::value_parser!(u64).range(1..=100_000))]
        limit: u64,
        /// `json`: every field of each entry, with its hash and the previous one's.
        #[arg(long, value_enum, default_value_t)]
        format: Format,
    },
    /// Walks the chain: exit 0 "audit trail intact: N entries, head HASH", or exit 1 naming
    /// the first entry altered, removed or inserted.
    Verify {
        /// A head noted earlier (the service log, `/readyz`): exit 1 too when the trail no
        /// longer holds it (entries removed from its end, or the trail rewritten).
        #[arg(long, value_name = "HASH")]
        expect_head: Option<String>,
    },
}

fn auditor(config: &std::path::Path) -> anyhow::Result<Auditor> {
    let cfg = Config::load_unvalidated(config)?;
    Ok(Auditor::new(&cfg.journal, &cfg.server.spool))
}

pub fn run(config: &std::path::Path, what: AuditCommand) -> anyhow::Result<ExitCode> {
    match what {
        AuditCommand::List {
            since,
            until,
            user,
            action,
            limit,
            format,
        } => {
            let now = crate::util::clock::now_ms() as i64;
            let time = |s: &Option<String>, what: &str| {
                s.as_deref()
                    .map(|t| crate::journal::read::parse_time(t, now))
                    .transpose()
                    .map_err(|e| anyhow::anyhow!("--{what}: {e}"))
            };
            let f = ListFilter {
                since: time(&since, "since")?,
                until: time(&until, "until")?,
                user,
                action,
                establishment: None,
                offset: 0,
                limit,
            };
            let a = auditor(config)?;
            let (entries, total) = super::block_on(async { a.list(&f).await })??;
            match format {
                Format::Json => super::print_json(&serde_json::to_value(&entries)?)?,
                Format::Text => {
                    for e in &entries {
                        println!("{}", line(e));
                    }
                    if total > entries.len() as u64 {
                        eprintln!(
                            "({} of {total} entries shown: narrow with --since, --user, --action or raise --limit)",
                            entries.len()
                        );
                    }
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        AuditCommand::Verify { expect_head } => {
            if let Some(h) = expect_head.as_deref() {
                if !crate::audit::chain::is_hash(h) {
                    eprintln!("passerelle: --expect-head: 64 lowercase hex digits, as `audit verify` prints the head");
                    return Ok(ExitCode::from(2));
                }
            }
            let a = auditor(config)?;
            match super::block_on(async { a.verify(expect_head).await })?? {
                Ok(v) => {
                    println!("audit trail intact: {} entries, head {}", v.count, v.head);
                    Ok(ExitCode::SUCCESS)
                }
                Err(b) => {
                    println!("audit trail broken: {b}");
                    Ok(ExitCode::from(1))
                }
            }
        }
    }
}

/// One entry on one line.
pub fn line(e: &crate::audit::Entry) -> String {
    format!(
        "{}  #{}  {}  from {}  on {}  {}  {}{}  {}{}",
        crate::journal::read::format_time(e.time),
        e.seq,
        e.actor(),
        e.origin,
        e.gateway,
        e.action,
        e.target,
        e.establishment
            .as_deref()
            .map(|x| format!(" [{x}]"))
            .unwrap_or_default(),
        e.outcome,
        e.reason
            .as_deref()
            .map(|r| format!(": {r}"))
            .unwrap_or_default()
    )
}

/// What a CLI verb that changes the gateway's state records: (action, target,
/// establishment). `None`: the verb only reads, or makes files at paths given to it (the
/// development PKI, an LDIF), or records for itself (the queue verbs: the admin endpoint
/// records what `serve` does, the verb what it does to a stopped spool).
pub fn audited(cmd: &Command) -> Option<(String, String, Option<String>)> {
    use super::console_user::{ConsoleCommand, ConsoleUserCommand};
    use super::directory::DirectoryCommand;
    use super::establishment::EstablishmentCommand;
    use super::state::StateCommand;
    let est_of_role = |r: &crate::console::access::Role| match r {
        crate::console::access::Role::Establishment(e) => Some(e.clone()),
        _ => None,
    };
    Some(match cmd {
        Command::Fetch { .. } => ("fetch".into(), "whitelist and CRLs".into(), None),
        Command::Establishment {
            what: EstablishmentCommand::Add { name, .. },
        } => ("establishment add".into(), name.clone(), Some(name.clone())),
        Command::Establishment {
            what: EstablishmentCommand::Remove { name },
        } => (
            "establishment remove".into(),
            name.clone(),
            Some(name.clone()),
        ),
        Command::Console {
            what: ConsoleCommand::User { what },
        } => match what {
            ConsoleUserCommand::Add { name, role, .. } => {
                ("console user add".into(), name.clone(), est_of_role(role))
            }
            ConsoleUserCommand::Remove { name } => {
                ("console user remove".into(), name.clone(), None)
            }
            ConsoleUserCommand::Totp { name, .. } => {
                ("console user totp reset".into(), name.clone(), None)
            }
            ConsoleUserCommand::List => return None,
        },
        Command::State {
            what: StateCommand::Import,
        } => ("state import".into(), "-".into(), None),
        Command::State {
            what: StateCommand::Export { dir },
        } => ("state export".into(), dir.display().to_string(), None),
        Command::Directory {
            what: DirectoryCommand::Sync(_),
        } => ("directory sync".into(), "-".into(), None),
        _ => return None,
    })
}

/// Runs a verb that changes state as one audit entry: refused (exit 1, nothing done) when
/// the entry's place cannot be kept; the outcome written after.
pub fn run_audited(
    config: &std::path::Path,
    (action, target, establishment): (String, String, Option<String>),
    verb: impl FnOnce() -> anyhow::Result<ExitCode>,
) -> anyhow::Result<ExitCode> {
    let a = auditor(config)?;
    let who = Actor::cli();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    // The place is checked, not held: the verb may ask the running server to reload, which
    // records its own entry in the same database (holding the write lock would block it).
    if let Err(e) = rt.block_on(a.probe(&who)) {
        eprintln!("passerelle: {action} refused: {e}; nothing was done");
        return Ok(ExitCode::from(1));
    }
    let result = verb();
    let outcome = match &result {
        Ok(c) if *c == ExitCode::SUCCESS => Outcome::Ok,
        Ok(_) => Outcome::Failed("exit status not 0".into()),
        Err(e) => Outcome::Failed(format!("{e:#}")),
    };
    let recorded = rt.block_on(a.record(&who, &action, &target, establishment.as_deref(), outcome));
    if let Err(e) = recorded {
        // Writable a moment ago: only a database lost in between gets here.
        eprintln!("passerelle: {action}: done, but its audit entry could not be written: {e}");
        return Ok(ExitCode::from(1));
    }
    result
}
