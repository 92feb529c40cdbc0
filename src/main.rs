//! The `passerelle` command line: thin wrappers over the library, one clear line per error.

use clap::{Parser, Subcommand, ValueEnum};
use passerelle::config::{Config, DEFAULT_CONFIG};
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Parser)]
#[command(name = "passerelle", version, about = "MSSanté mail gateway")]
struct Cli {
    /// Configuration file.
    #[arg(long, global = true, env = "PASSERELLE_CONFIG", default_value = DEFAULT_CONFIG)]
    config: PathBuf,
    /// Log format on stderr.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[derive(Subcommand)]
enum Command {
    /// Run the gateway in the foreground (SIGTERM/SIGINT stop it, SIGHUP reloads).
    Serve,
    /// Validate the configuration and everything it refers to.
    CheckConfig,
    /// Development PKI.
    Pki {
        #[command(subcommand)]
        what: PkiCommand,
    },
    /// Explain what happens to an address, like `postmap -q`.
    Route {
        #[command(subcommand)]
        what: RouteCommand,
    },
    /// The queue, as postqueue/postsuper do it (works while `serve` runs, or on a stopped spool).
    Queue {
        #[command(subcommand)]
        what: QueueCommand,
    },
    /// The ANS whitelist as loaded.
    Whitelist {
        #[command(subcommand)]
        what: WhitelistCommand,
    },
    /// The recipient directory.
    Directory {
        #[command(subcommand)]
        what: DirectoryCommand,
    },
    /// The admin web console.
    Console {
        #[command(subcommand)]
        what: ConsoleCommand,
    },
}

#[derive(Subcommand)]
enum ConsoleCommand {
    /// Console users ([console] users_file).
    User {
        #[command(subcommand)]
        what: ConsoleUserCommand,
    },
}

#[derive(Subcommand)]
enum ConsoleUserCommand {
    /// Create or replace a user; the password is read from standard input.
    Add {
        name: String,
        /// operator, auditor, or establishment:NAME.
        #[arg(long)]
        role: passerelle::console::access::Role,
        /// Read the password from the first line of standard input (required: never on the
        /// command line, where `ps` shows it).
        #[arg(long)]
        password_stdin: bool,
    },
    /// Every user and its role.
    List,
    Remove {
        name: String,
    },
}

#[derive(Subcommand)]
enum QueueCommand {
    /// Every message: id, size, age, sender, attempts, next attempt; each recipient's status
    /// and last error.
    List,
    Show {
        id: String,
    },
    /// Try now: one message, or all with --all.
    Retry {
        id: Option<String>,
        #[arg(long)]
        all: bool,
    },
    Hold {
        id: String,
    },
    Release {
        id: String,
    },
    Delete {
        id: String,
    },
}

#[derive(Subcommand)]
enum WhitelistCommand {
    /// Whether DOMAIN is declared, and with which operator certificate DNs.
    Show { domain: String },
}

#[derive(Subcommand)]
enum DirectoryCommand {
    /// What the configured directory says of one address.
    Lookup { address: String },
    /// Turn the ANS extract into LDIF for ldapadd/slapadd (one entry per address).
    Import {
        /// Extraction_Correspondance_MSSante_*.txt (or the ANS zip).
        extract: PathBuf,
        /// Output LDIF file ("-" for standard output).
        #[arg(long)]
        ldif: PathBuf,
        /// Where the entries go; an `ou=` base gets its container entry too.
        #[arg(long, default_value = passerelle::policy::ldif::DEFAULT_BASE)]
        base: String,
    },
}

#[derive(Subcommand)]
enum PkiCommand {
    /// Make a development PKI standing for IGC-Santé (never for production).
    Dev {
        #[arg(long, default_value = passerelle::pki::DEFAULT_DEV_DIR)]
        out: PathBuf,
        /// Overwrite existing files.
        #[arg(long)]
        force: bool,
    },
    /// Issue a leaf certificate from a dev PKI's intermediate (test peers, audit cases).
    Issue {
        /// The dev PKI directory (made by `pki dev`).
        #[arg(long, default_value = passerelle::pki::DEFAULT_DEV_DIR)]
        dir: PathBuf,
        /// File stem: writes NAME.crt (leaf + intermediate) and NAME.key into --out.
        #[arg(long)]
        name: String,
        /// Subject in RFC 4514 order, e.g. "CN=mx.op.test,OU=123,O=OP,ST=Rhone (69),C=FR".
        #[arg(long)]
        subject: String,
        #[arg(long)]
        dns: Vec<String>,
        #[arg(long)]
        ip: Vec<std::net::IpAddr>,
        /// Already expired (validity ended yesterday).
        #[arg(long)]
        expired: bool,
        /// Days of validity from now.
        #[arg(long, default_value_t = 365)]
        days: i64,
        /// Output directory (default: --dir).
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// Revoke certificates issued from a dev PKI: re-signs its ca.crl listing them.
    Revoke {
        #[arg(long, default_value = passerelle::pki::DEFAULT_DEV_DIR)]
        dir: PathBuf,
        certificates: Vec<PathBuf>,
    },
}

#[derive(Subcommand)]
enum RouteCommand {
    /// Which route an address takes, and why.
    Test {
        address: String,
        #[arg(long)]
        listener: Option<String>,
        #[arg(long)]
        from: Option<String>,
    },
}

fn init_logging(format: LogFormat, serve: bool) {
    use tracing_subscriber::EnvFilter;
    // The one-shot commands print their own results; their logs are only warnings.
    let default = if serve { "info" } else { "warn" };
    let filter =
        EnvFilter::try_from_env("PASSERELLE_LOG").unwrap_or_else(|_| EnvFilter::new(default));
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let b = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(ansi)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => b.init(),
        LogFormat::Json => b.json().flatten_event(true).init(),
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging(cli.log_format, matches!(cli.command, Command::Serve));
    match run(cli) {
        Ok(code) => code,
        Err(e) => {
            for line in format!("{e:#}").lines() {
                eprintln!("passerelle: {line}");
            }
            ExitCode::from(1)
        }
    }
}

/// Keeps message buffers on the heap. glibc serves blocks of 128 KiB and more with a fresh
/// mmap and unmaps them on free, so every message of ~100 KiB cost page faults, page zeroing
/// and an munmap (13 % of the gateway's CPU at 100 KiB). Freed memory above the thresholds is
/// still returned to the system.
fn tune_allocator() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only sets allocator parameters; it is called before any thread starts.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 32 << 20);
        libc::mallopt(libc::M_TRIM_THRESHOLD, 64 << 20);
    }
}

fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::Serve => {
            tune_allocator();
            let rt = tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()?;
            rt.block_on(passerelle::server::serve(&cli.config))?;
            Ok(ExitCode::SUCCESS)
        }
        Command::CheckConfig => check_config(&cli.config),
        Command::Pki {
            what: PkiCommand::Dev { out, force },
        } => {
            let hostname = Config::load_unvalidated(&cli.config)
                .map(|c| c.server.hostname)
                .unwrap_or_else(|_| "passerelle.localhost".into());
            let report = passerelle::pki::generate_dev_pki(&passerelle::pki::DevPkiOptions {
                out,
                hostname,
                force,
            })?;
            for f in &report.files {
                println!("{}", f.display());
            }
            println!("gateway DN: {}", report.gateway_dn);
            Ok(ExitCode::SUCCESS)
        }
        Command::Pki {
            what:
                PkiCommand::Issue {
                    dir,
                    name,
                    subject,
                    dns,
                    ip,
                    expired,
                    days,
                    out,
                },
        } => {
            use passerelle::pki;
            let now = time::OffsetDateTime::now_utc();
            let (not_before, not_after) = if expired {
                (
                    now - time::Duration::days(30),
                    now - time::Duration::days(1),
                )
            } else {
                (
                    now - time::Duration::days(1),
                    now + time::Duration::days(days),
                )
            };
            let spec = pki::LeafSpec {
                name,
                subject: pki::parse_subject(&subject)?,
                dns_names: dns,
                ips: ip,
                not_before,
                not_after,
                server_auth: true,
                client_auth: true,
            };
            let issuer = pki::Issuer::load(
                &dir.join(pki::INTERMEDIATE_CERT_FILE),
                &dir.join(pki::INTERMEDIATE_KEY_FILE),
            )?;
            let out = out.unwrap_or(dir);
            std::fs::create_dir_all(&out)?;
            let crt = issuer.issue(&spec, &out)?;
            println!("{}", crt.display());
            Ok(ExitCode::SUCCESS)
        }
        Command::Pki {
            what: PkiCommand::Revoke { dir, certificates },
        } => {
            let serials = certificates
                .iter()
                .map(|c| passerelle::pki::serial_of(c))
                .collect::<Result<Vec<_>, _>>()?;
            let n = passerelle::pki::revoke_in_dev_pki(&dir, &serials)?;
            println!(
                "{}: {n} certificate(s) revoked",
                dir.join(passerelle::pki::CRL_FILE).display()
            );
            Ok(ExitCode::SUCCESS)
        }
        Command::Queue { what } => {
            use passerelle::queuectl::Verb;
            let verb = match what {
                QueueCommand::List => Verb::List,
                QueueCommand::Show { id } => Verb::Show(id),
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
            let cfg = Config::load_unvalidated(&cli.config)?;
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            let ok = rt.block_on(passerelle::queuectl::run(&cfg, verb))?;
            Ok(if ok {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(1)
            })
        }
        Command::Whitelist {
            what: WhitelistCommand::Show { domain },
        } => whitelist_show(&cli.config, &domain),
        Command::Directory {
            what:
                DirectoryCommand::Import {
                    extract,
                    ldif,
                    base,
                },
        } => {
            let (x, report) = passerelle::policy::extract::Extract::load(&extract)?;
            for (line, why) in &report.bad_lines {
                eprintln!("{}:{line}: skipped: {why}", extract.display());
            }
            let n = if ldif.as_os_str() == "-" {
                let mut out = std::io::BufWriter::new(std::io::stdout().lock());
                passerelle::policy::ldif::write_ldif(&x, &base, &mut out)?
            } else {
                let tmp = ldif.with_extension("ldif.tmp");
                let mut out = std::io::BufWriter::new(std::fs::File::create(&tmp)?);
                let n = passerelle::policy::ldif::write_ldif(&x, &base, &mut out)?;
                std::io::Write::flush(&mut out)?;
                drop(out);
                std::fs::rename(&tmp, &ldif)?;
                n
            };
            eprintln!(
                "{}: {n} entries from {} lines ({} skipped) under {base}",
                ldif.display(),
                report.lines,
                report.bad_lines.len()
            );
            Ok(ExitCode::SUCCESS)
        }
        Command::Directory {
            what: DirectoryCommand::Lookup { address },
        } => {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            rt.block_on(directory_lookup(&cli.config, &address))
        }
        Command::Console {
            what: ConsoleCommand::User { what },
        } => console_user(&cli.config, what),
        Command::Route {
            what:
                RouteCommand::Test {
                    address,
                    listener,
                    from,
                },
        } => {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            rt.block_on(route_test(
                &cli.config,
                &address,
                listener.as_deref(),
                from.as_deref(),
            ))
        }
    }
}

/// Every problem on its own line as `FILE:LINE: key: message`, warnings as
/// `warning: FILE:LINE: ...`, and what was found (certificate subject and expiry) as plain
/// information. Exit 1 when there is any problem (warnings alone exit 0).
fn check_config(path: &std::path::Path) -> anyhow::Result<ExitCode> {
    use passerelle::config::ConfigError;
    let shown = path.display().to_string();
    if let Ok(cfg) = Config::load_unvalidated(path) {
        // serve would generate it; its absence is not a problem of this config.
        passerelle::server::ensure_dev_pki(&cfg)?;
    }
    let parsed = match Config::check(path) {
        Ok(p) => p,
        Err(ConfigError::Invalid(problems)) => {
            for p in &problems {
                println!("{p}");
            }
            return Ok(ExitCode::from(1));
        }
        Err(e) => {
            println!("{e}");
            return Ok(ExitCode::from(1));
        }
    };
    for w in &parsed.warnings {
        println!("warning: {w}");
    }
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let at = |key: &str, msg: String| {
        passerelle::config::Problem::error(key, msg).located(&shown, &text)
    };
    let mut problems = Vec::new();
    let cfg = parsed.config;
    if let Some(tls) = &cfg.tls {
        if let Ok(chain) = passerelle::tls::load_certs("tls.certificate", &tls.certificate) {
            if let Ok((_, cert)) = x509_parser::parse_x509_certificate(chain[0].as_ref()) {
                let not_after = cert.validity().not_after;
                let left = not_after.timestamp() - time::OffsetDateTime::now_utc().unix_timestamp();
                let days = left / 86400;
                let dn = passerelle::dn::Dn::from_cert_der(chain[0].as_ref())
                    .map(|d| d.to_string())
                    .unwrap_or_default();
                if left <= 0 {
                    problems.push(at(
                        "tls.certificate",
                        format!("{dn}: EXPIRED on {not_after}"),
                    ));
                } else {
                    println!("tls.certificate: {dn}: expires {not_after} ({days} days)");
                    if days < 30 {
                        println!(
                            "warning: {}",
                            at("tls.certificate", format!("{dn}: expires in {days} days"))
                        );
                    }
                }
            }
        }
    }
    // Everything serve would load: certificates, CRLs, whitelist, directory.
    if problems.is_empty() {
        if let Err(e) = passerelle::server::offline_snapshot(cfg) {
            for line in format!("{e:#}").lines() {
                problems.push(at("", line.to_string()));
            }
        }
    }
    if problems.is_empty() {
        println!("{shown}: ok");
        Ok(ExitCode::SUCCESS)
    } else {
        for p in &problems {
            println!("{p}");
        }
        Ok(ExitCode::from(1))
    }
}

fn whitelist_show(config: &std::path::Path, domain: &str) -> anyhow::Result<ExitCode> {
    let cfg = Config::load_unvalidated(config)?;
    let w = cfg
        .whitelist
        .as_ref()
        .ok_or_else(|| anyhow::anyhow!("no [whitelist] section in {}", config.display()))?;
    let list = passerelle::server::load_whitelist(&w.file)?;
    let domain = domain.trim().trim_end_matches('.').to_ascii_lowercase();
    let entries = list.entries(&domain);
    if entries.is_empty() {
        println!(
            "{domain}: not declared in {} ({} domains, generated {})",
            w.file.display(),
            list.domain_count(),
            list.generated().unwrap_or("?")
        );
        return Ok(ExitCode::from(1));
    }
    println!(
        "{domain}: declared, {} operator certificate DN(s):",
        entries.len()
    );
    for e in entries {
        println!("  {}", e.dn);
        println!("    description: {}; updated {}", e.description, e.date_maj);
    }
    Ok(ExitCode::SUCCESS)
}

async fn directory_lookup(config: &std::path::Path, address: &str) -> anyhow::Result<ExitCode> {
    use passerelle::policy::Lookup;
    let cfg = Config::load_unvalidated(config)?;
    let spec = passerelle::server::DirectorySpec {
        source: cfg.directory.source.clone(),
        tls: cfg.tls.clone(),
    };
    let crls = std::sync::Arc::new(arc_swap::ArcSwap::from_pointee(
        passerelle::tls::CrlSet::load(
            &cfg.tls.as_ref().map(|t| t.crls.clone()).unwrap_or_default(),
            None,
        )?,
    ));
    let directory = passerelle::server::build_directory(&spec, &crls)?;
    let address = address.trim().trim_matches(['<', '>']);
    match directory.lookup(address).await {
        Ok(Lookup::Found { bal_type }) => {
            println!(
                "{address}: known to {} (BAL type {bal_type})",
                directory.describe()
            );
            Ok(ExitCode::SUCCESS)
        }
        Ok(Lookup::NotFound) => {
            println!("{address}: unknown to {}", directory.describe());
            Ok(ExitCode::from(1))
        }
        Err(e) => Err(anyhow::anyhow!("{address}: {e}")),
    }
}

/// `passerelle console user ...`: edits `[console] users_file` (a running console sees the
/// change at the next request).
fn console_user(config: &std::path::Path, what: ConsoleUserCommand) -> anyhow::Result<ExitCode> {
    use passerelle::console::users;
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
            if !password_stdin {
                anyhow::bail!("give the password on standard input with --password-stdin");
            }
            let mut line = String::new();
            std::io::stdin().read_line(&mut line)?;
            let password = line.trim_end_matches(['\r', '\n']);
            let replaced = users::add(&file, &name, role.clone(), password)?;
            println!(
                "{}: user {name} ({role}) {}",
                file.display(),
                if replaced { "replaced" } else { "added" }
            );
            tracing::info!(target: "passerelle::console::audit", user = %name, role = %role, action = "user add", "console user {}", if replaced { "replaced" } else { "added" });
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
            tracing::info!(target: "passerelle::console::audit", user = %name, action = "user remove", "console user removed");
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// `passerelle route test`: the same decision RCPT makes, explained (the console's route
/// test page shows the same explanation).
async fn route_test(
    config: &std::path::Path,
    address: &str,
    listener: Option<&str>,
    _from: Option<&str>,
) -> anyhow::Result<ExitCode> {
    let snap = passerelle::server::offline_snapshot(passerelle::server::load_config(config)?)?;
    let e =
        passerelle::policy::explain::explain(&snap.config, &snap.policy, listener, address).await?;
    println!("listener: {} ({})", e.listener, e.listener_address);
    for step in &e.steps {
        println!("{step}");
    }
    Ok(if e.accepted {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}
