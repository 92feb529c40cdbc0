//! The `passerelle` command line: the clap definitions and one file per command group, each
//! a thin layer over the library that prints one clear line per error. `main.rs` only parses
//! and calls [`run`].
//!
//! `track` and `stats` live in `journal/cli.rs`: the console renders the journal with the
//! same functions, and the console never imports this module.
//!
//! Must not be imported by anything but `main.rs` (checked by `src/layout.rs`); it may
//! import every other folder.

pub mod audit;
pub mod check;
pub mod console_user;
pub mod directory;
#[cfg(test)]
mod doc;
pub mod establishment;
mod logsink;
pub mod pki;
pub mod queue;
pub mod state;
pub mod tls;
pub mod whitelist;

use crate::config::{Config, DEFAULT_CONFIG};
use clap::{Parser, Subcommand, ValueEnum};
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Parser)]
#[command(
    name = "passerelle",
    version,
    about = "MSSanté mail gateway",
    after_help = "Reference: docs/cli.md (installed in /usr/share/doc/passerelle/cli.md)."
)]
pub struct Cli {
    /// Configuration file (every verb reads the same file as serve).
    #[arg(
        long,
        global = true,
        help_heading = "Global options",
        env = "PASSERELLE_CONFIG",
        hide_env_values = true,
        default_value = DEFAULT_CONFIG
    )]
    pub config: PathBuf,
    /// Log format on stderr.
    #[arg(
        long,
        global = true,
        help_heading = "Global options",
        value_enum,
        default_value_t = LogFormat::Text
    )]
    pub log_format: LogFormat,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Clone, Copy, ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

/// How a verb prints its answer: sentences for people, JSON for tools.
#[derive(Clone, Copy, Default, PartialEq, Eq, ValueEnum)]
pub enum Format {
    #[default]
    Text,
    Json,
}

#[derive(Subcommand)]
pub enum Command {
    /// Run the gateway in the foreground (SIGTERM/SIGINT stop it, SIGHUP reloads).
    Serve,
    /// Validate the configuration and everything it refers to (`postfix check`).
    CheckConfig {
        /// Warnings are problems too (exit 1): for a production configuration, where an
        /// unsigned whitelist or any IGC-Santé signer must not pass unnoticed.
        #[arg(long)]
        strict: bool,
    },
    /// Download now what `[whitelist] url` and `[tls] crl_urls` name, verify each file and
    /// install it (what `serve` does on its own periods); exit 1 when one failed.
    Fetch {
        /// Only the files that do not exist yet.
        #[arg(long)]
        missing: bool,
    },
    /// Trust-space TLS checks.
    Tls {
        #[command(subcommand)]
        what: tls::TlsCommand,
    },
    /// Development PKI standing for IGC-Santé (tests, never production).
    Pki {
        #[command(subcommand)]
        what: pki::PkiCommand,
    },
    /// Explain what happens to an address, like `postmap -q`.
    Route {
        #[command(subcommand)]
        what: check::RouteCommand,
    },
    /// The queue, as postqueue/postsuper do it (works while `serve` runs, or on a stopped spool).
    Queue {
        #[command(subcommand)]
        what: queue::QueueCommand,
    },
    /// The ANS whitelist as loaded.
    Whitelist {
        #[command(subcommand)]
        what: whitelist::WhitelistCommand,
    },
    /// The recipient directory.
    Directory {
        #[command(subcommand)]
        what: directory::DirectoryCommand,
    },
    /// The establishments of a regional gateway: onboard, list, show, test.
    Establishment {
        #[command(subcommand)]
        what: establishment::EstablishmentCommand,
    },
    /// Find messages in the journal and show their timelines (exit 1 when none matches).
    Track(crate::journal::cli::TrackArgs),
    /// The activity indicators from the journal.
    Stats(crate::journal::cli::StatsArgs),
    /// The admin web console.
    Console {
        #[command(subcommand)]
        what: console_user::ConsoleCommand,
    },
    /// The state several gateways share in PostgreSQL ([state] kind = "postgres").
    State {
        #[command(subcommand)]
        what: state::StateCommand,
    },
    /// The administrators' audit trail: every action of the console, the CLI and the admin
    /// endpoint, chained so that an altered, removed or inserted entry is found.
    Audit {
        #[command(subcommand)]
        what: audit::AuditCommand,
    },
}

impl Cli {
    /// `serve` logs at info level; the one-shot commands print their own results.
    pub fn serves(&self) -> bool {
        matches!(self.command, Command::Serve)
    }
}

pub fn init_logging(format: LogFormat, serve: bool) {
    use tracing_subscriber::EnvFilter;
    // The one-shot commands print their own results; their logs are only warnings.
    let default = if serve { "info" } else { "warn" };
    let filter =
        EnvFilter::try_from_env("PASSERELLE_LOG").unwrap_or_else(|_| EnvFilter::new(default));
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let b = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(ansi);
    // `serve` writes its lines in batches (one syscall per few milliseconds, see logsink);
    // the one-shot commands' rare warnings go straight to stderr.
    match (format, serve.then(logsink::stderr_sink).flatten()) {
        (LogFormat::Text, Some(sink)) => b.with_writer(sink).init(),
        (LogFormat::Json, Some(sink)) => b.with_writer(sink).json().flatten_event(true).init(),
        (LogFormat::Text, None) => b.with_writer(std::io::stderr).init(),
        (LogFormat::Json, None) => b
            .with_writer(std::io::stderr)
            .json()
            .flatten_event(true)
            .init(),
    }
}

/// Writes the log lines still gathering (`main` calls it before the process ends).
pub fn flush_logs() {
    logsink::flush_stderr();
}

/// Keeps message buffers on the heap. glibc serves blocks of 128 KiB and more with a fresh
/// mmap and unmaps them on free, so every message of ~100 KiB cost page faults, page zeroing
/// and an munmap (13 % of the gateway's CPU at 100 KiB). Freed memory above the thresholds is
/// still returned to the system.
pub fn tune_allocator() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only sets allocator parameters; it is called before any thread starts.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 32 << 20);
        libc::mallopt(libc::M_TRIM_THRESHOLD, 64 << 20);
    }
}

/// Runs the command; `Err` is printed by main.rs, one `passerelle: ` line per cause.
pub fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    let config = cli.config.as_path();
    // A verb that changes the gateway's state is one audit entry, or is refused.
    // `directory sync` without a gateway's configuration is the extract's tool for an LDAP
    // of its own (a timer on the directory's host): no gateway, no trail of one to write.
    let standalone = matches!(
        cli.command,
        Command::Directory {
            what: directory::DirectoryCommand::Sync(_)
        }
    ) && !config.exists();
    if let Some(what) = audit::audited(&cli.command).filter(|_| !standalone) {
        let command = cli.command;
        return audit::run_audited(config, what, move || dispatch(config, command));
    }
    dispatch(config, cli.command)
}

fn dispatch(config: &std::path::Path, command: Command) -> anyhow::Result<ExitCode> {
    match command {
        Command::Serve => {
            tune_allocator();
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(runtime_threads(config))
                .enable_all()
                .build()?;
            rt.block_on(crate::server::serve(config))?;
            Ok(ExitCode::SUCCESS)
        }
        Command::CheckConfig { strict } => check::check_config(config, strict),
        Command::Route { what } => check::route(config, what),
        Command::Fetch { missing } => whitelist::fetch(config, missing),
        Command::Whitelist { what } => whitelist::run(config, what),
        Command::Tls { what } => tls::run(config, what),
        Command::Pki { what } => pki::run(config, what),
        Command::Queue { what } => queue::command(config, what),
        Command::Directory { what } => directory::run(config, what),
        Command::Establishment { what } => establishment::run(config, what),
        Command::Console { what } => console_user::run(config, what),
        Command::State { what } => state::run(config, what),
        Command::Track(a) => crate::journal::cli::track(config, &a).map(ExitCode::from),
        Command::Stats(a) => crate::journal::cli::stats(config, &a).map(ExitCode::from),
        Command::Audit { what } => audit::run(config, what),
    }
}

/// `server.runtime_threads` from the main file alone, read before the runtime exists. A file
/// that does not parse counts as unset here: `serve` then reports its error itself.
fn runtime_threads(config: &std::path::Path) -> usize {
    let setting = std::fs::read_to_string(config)
        .ok()
        .and_then(|text| Config::from_toml_str(&text, &config.display().to_string()).ok())
        .map_or(0, |p| p.config.server.runtime_threads);
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    crate::config::runtime_threads(setting, cores)
}

/// A one-thread runtime for the verbs that talk to the network once.
fn block_on<F: std::future::Future>(f: F) -> anyhow::Result<F::Output> {
    Ok(tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?
        .block_on(f))
}

/// Prints `value` as indented JSON (the `--format json` of the read-only verbs).
pub fn print_json(value: &serde_json::Value) -> anyhow::Result<()> {
    println!("{}", serde_json::to_string_pretty(value)?);
    Ok(())
}
