//! The `passerelle` command line: thin wrappers over the library, one clear line per error.

use clap::{Parser, Subcommand, ValueEnum};
use passerelle::config::{Config, DEFAULT_CONFIG};
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Parser)]
#[command(
    name = "passerelle",
    version,
    about = "MSSanté mail gateway",
    after_help = "Reference: docs/cli.md (installed in /usr/share/doc/passerelle/cli.md)."
)]
struct Cli {
    /// Configuration file (every verb reads the same file as serve).
    #[arg(
        long,
        global = true,
        help_heading = "Global options",
        env = "PASSERELLE_CONFIG",
        hide_env_values = true,
        default_value = DEFAULT_CONFIG
    )]
    config: PathBuf,
    /// Log format on stderr.
    #[arg(
        long,
        global = true,
        help_heading = "Global options",
        value_enum,
        default_value_t = LogFormat::Text
    )]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

/// How a verb prints its answer: sentences for people, JSON for tools.
#[derive(Clone, Copy, Default, PartialEq, Eq, ValueEnum)]
enum Format {
    #[default]
    Text,
    Json,
}

#[derive(Subcommand)]
enum Command {
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
        what: TlsCommand,
    },
    /// Development PKI standing for IGC-Santé (tests, never production).
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
    /// The establishments of a regional gateway: onboard, list, show, test.
    Establishment {
        #[command(subcommand)]
        what: passerelle::cli::establishment::EstablishmentCommand,
    },
    /// Find messages in the journal and show their timelines (exit 1 when none matches).
    Track(passerelle::journal::cli::TrackArgs),
    /// The activity indicators from the journal.
    Stats(passerelle::journal::cli::StatsArgs),
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
        /// The login name.
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
    /// Remove a user; its open console sessions end.
    Remove {
        /// The login name.
        name: String,
    },
}

#[derive(Subcommand)]
enum QueueCommand {
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

#[derive(Subcommand)]
enum TlsCommand {
    /// Check an operator as delivery would: MX, connect, STARTTLS, the peer chain and its DN
    /// against the whitelist, whether our certificate is accepted (MAIL FROM:<>, RCPT TO with
    /// --rcpt, then RSET and QUIT: nothing is sent). Exit 0 only when delivery would succeed.
    Probe {
        /// DOMAIN (its MX hosts) or HOST:PORT.
        target: String,
        /// Whitelist domain for a HOST:PORT target (default: the domain of --rcpt).
        #[arg(long)]
        domain: Option<String>,
        /// A recipient to try with RCPT TO.
        #[arg(long)]
        rcpt: Option<String>,
        /// Port of the MX hosts (default: the port of the transport delivery would use for
        /// DOMAIN, else 25).
        #[arg(long)]
        port: Option<u16>,
        /// Timeout of each network step.
        #[arg(long, default_value = "30s", value_parser = passerelle::config::parse_duration)]
        timeout: std::time::Duration,
        /// text for people, json for tools.
        #[arg(long, value_enum, default_value_t = Format::Text)]
        format: Format,
    },
}

#[derive(Subcommand)]
enum WhitelistCommand {
    /// Whether DOMAIN is declared, and with which operator certificate DNs.
    Show {
        /// Recipient domain, e.g. ch-autre.mssante.fr.
        domain: String,
        /// `json`: the domain, whether declared, and its entries, for tools.
        #[arg(long, value_enum, default_value_t)]
        format: Format,
    },
}

#[derive(Subcommand)]
enum DirectoryCommand {
    /// What the configured directory says of one address.
    Lookup {
        /// Recipient address.
        address: String,
        /// `json`: the address, the directory, whether known and its BAL type, for tools.
        #[arg(long, value_enum, default_value_t)]
        format: Format,
    },
    /// Turn the ANS extract into LDIF for ldapadd/slapadd (one entry per address).
    Import {
        /// Extraction_Correspondance_MSSante_*.txt (or the ANS zip).
        extract: PathBuf,
        /// Output LDIF file ("-" for standard output).
        #[arg(long)]
        ldif: PathBuf,
        /// Where the entries go; an `ou=` base gets its container entry too.
        #[arg(long, default_value = passerelle::directory::ldif::DEFAULT_BASE)]
        base: String,
    },
    /// Bring an LDAP in step with the extract by delta (add, modify, delete), same mapping as
    /// `import`; refuses to delete more than --max-delete percent of the entries.
    Sync(passerelle::directory::sync::SyncArgs),
}

#[derive(Subcommand)]
enum PkiCommand {
    /// Make a development PKI standing for IGC-Santé (never for production).
    Dev {
        /// Output directory.
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
        /// A DNS name in the subjectAltName (repeat for more).
        #[arg(long)]
        dns: Vec<String>,
        /// An IP address in the subjectAltName (repeat for more).
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
    /// A private key and a certificate request (PKCS#10) for the gateway's IGC-Santé server
    /// certificate, with the subject in IGC-Santé's form; prints the DN to declare.
    Csr(passerelle::pki::csr::CsrOptions),
    /// Revoke certificates issued from a dev PKI: re-signs its ca.crl listing them.
    Revoke {
        /// The dev PKI directory (made by `pki dev`).
        #[arg(long, default_value = passerelle::pki::DEFAULT_DEV_DIR)]
        dir: PathBuf,
        /// Certificate files (PEM) to revoke.
        #[arg(required = true)]
        certificates: Vec<PathBuf>,
    },
}

#[derive(Subcommand)]
enum RouteCommand {
    /// Which route an address takes, and why (`postmap -q`); exit 0 accepted, 1 refused.
    Test {
        /// Recipient address.
        address: String,
        /// The listener whose routes apply (default: the first one).
        #[arg(long)]
        listener: Option<String>,
        /// Envelope sender (MAIL FROM) of the test.
        #[arg(long)]
        from: Option<String>,
        /// `json`: each route considered, the transport, the whitelist and the verdict, for
        /// tools.
        #[arg(long, value_enum, default_value_t)]
        format: Format,
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
        Command::CheckConfig { strict } => check_config(&cli.config, strict),
        Command::Fetch { missing } => fetch(&cli.config, missing),
        Command::Tls {
            what:
                TlsCommand::Probe {
                    target,
                    domain,
                    rcpt,
                    port,
                    timeout,
                    format,
                },
        } => {
            let cfg = Config::load_unvalidated(&cli.config)?;
            let host_port = target.parse::<passerelle::config::HostPort>().is_ok();
            if host_port && domain.is_none() && rcpt.is_none() {
                eprintln!("passerelle: tls probe HOST:PORT needs --domain or --rcpt: the peer's DN is checked against that domain's whitelist entries");
                return Ok(ExitCode::from(2));
            }
            // As delivery would (issue 24 C.3): the port of the route's MX transport, or the
            // relay next hop it names.
            let (target, port, domain) = match (host_port, cfg.delivery_hop(&target)) {
                (false, Some((t, passerelle::config::NextHop::Relay(hp)))) if port.is_none() => {
                    eprintln!("tls probe: {target} is delivered through transport {t}: probing its next hop {hp}");
                    (hp.to_string(), 25, domain.or(Some(target)))
                }
                (false, Some((_, passerelle::config::NextHop::Mx { port: p }))) => {
                    (target, port.unwrap_or(p), domain)
                }
                _ => (target, port.unwrap_or(25), domain),
            };
            let opts = passerelle::trust::probe::ProbeOptions {
                target,
                port,
                domain,
                rcpt,
                timeout,
            };
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            let report = rt.block_on(async {
                let ctx = passerelle::trust::probe::ProbeContext::from_config(&cfg)?;
                anyhow::Ok(passerelle::trust::probe::probe(&ctx, &opts).await)
            })?;
            match format {
                Format::Text => print!("{}", report.render_text()),
                Format::Json => println!("{}", serde_json::to_string_pretty(&report)?),
            }
            Ok(if report.ok {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(1)
            })
        }
        Command::Establishment { what } => passerelle::cli::establishment::run(&cli.config, what),
        Command::Track(a) => passerelle::journal::cli::track(&cli.config, &a).map(ExitCode::from),
        Command::Stats(a) => passerelle::journal::cli::stats(&cli.config, &a).map(ExitCode::from),
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
            use passerelle::cli::queue::{Content, Verb};
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
            let cfg = Config::load_unvalidated(&cli.config)?;
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            let ok = rt.block_on(passerelle::cli::queue::run(&cfg, verb, json))?;
            Ok(if ok {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(1)
            })
        }
        Command::Whitelist {
            what: WhitelistCommand::Show { domain, format },
        } => whitelist_show(&cli.config, &domain, format),
        Command::Pki {
            what: PkiCommand::Csr(opts),
        } => {
            let r = passerelle::pki::csr::make_csr(&opts)?;
            for w in &r.warnings {
                eprintln!("warning: {w}");
            }
            println!(
                "private key: {} (mode 0600: keep it there)",
                r.key_file.display()
            );
            println!("request:     {}", r.csr_file.display());
            println!("subject DN (declare it in the ANS whitelist for your domains, exactly so):");
            println!("{}", r.subject);
            println!(
                "check: openssl req -in {} -noout -verify -subject -nameopt RFC2253",
                r.csr_file.display()
            );
            Ok(ExitCode::SUCCESS)
        }
        Command::Directory {
            what:
                DirectoryCommand::Import {
                    extract,
                    ldif,
                    base,
                },
        } => {
            let (x, report) = passerelle::directory::extract::Extract::load_with(
                &extract,
                passerelle::directory::ldif::KEEP,
            )?;
            for (line, why) in &report.bad_lines {
                eprintln!("{}:{line}: skipped: {why}", extract.display());
            }
            let n = if ldif.as_os_str() == "-" {
                let mut out = std::io::BufWriter::new(std::io::stdout().lock());
                passerelle::directory::ldif::write_ldif(&x, &base, &mut out)?
            } else {
                passerelle::util::fs::write_atomic_with(
                    &ldif,
                    passerelle::util::fs::Mode::KeepOr(0o644),
                    None,
                    |mut out| passerelle::directory::ldif::write_ldif(&x, &base, &mut out),
                )?
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
            what: DirectoryCommand::Sync(args),
        } => directory_sync(&cli.config, &args),
        Command::Directory {
            what: DirectoryCommand::Lookup { address, format },
        } => {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            rt.block_on(directory_lookup(&cli.config, &address, format))
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
                    format,
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
                format,
            ))
        }
    }
}

/// Every problem on its own line as `FILE:LINE: key: message`, warnings as
/// `warning: FILE:LINE: ...`, and what was found (certificate subject and expiry) as plain
/// information. Exit 1 when there is any problem (warnings alone exit 0).
fn check_config(path: &std::path::Path, strict: bool) -> anyhow::Result<ExitCode> {
    use passerelle::config::ConfigError;
    let shown = path.display().to_string();
    // Read-only (issue 24 C.1): a development PKI that `serve` would generate is not made
    // here; the rest is checked against a throw-away one.
    let pending = Config::load_unvalidated(path).ok().and_then(|c| {
        passerelle::server::pending_dev_pki(&c)
            .map(|d| (d.to_path_buf(), c.server.hostname.clone()))
    });
    let scratch = match &pending {
        Some((dir, hostname)) => {
            println!(
                "tls: {}: no development PKI yet; `passerelle serve` generates it (checked here against a temporary one)",
                dir.display()
            );
            let tmp = tempfile::tempdir()?;
            passerelle::pki::generate_dev_pki(&passerelle::pki::DevPkiOptions {
                out: tmp.path().to_path_buf(),
                hostname: hostname.clone(),
                force: false,
            })?;
            Some((dir.clone(), tmp))
        }
        None => None,
    };
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
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let mut warnings = parsed.warnings.clone();
    warnings.extend(
        passerelle::config::trust_warnings(&parsed.config)
            .into_iter()
            .map(|w| w.located(&shown, &text)),
    );
    for w in &warnings {
        println!("warning: {w}");
    }
    if strict && !warnings.is_empty() {
        println!(
            "{shown}: {} warning(s), refused under --strict",
            warnings.len()
        );
        return Ok(ExitCode::from(1));
    }
    let at = |key: &str, msg: String| {
        passerelle::config::Problem::error(key, msg).located(&shown, &text)
    };
    let mut problems = Vec::new();
    let mut cfg = parsed.config;
    if let (Some((dev, tmp)), Some(tls)) = (&scratch, &cfg.tls) {
        cfg.tls = Some(tls.moved(dev, tmp.path()));
    }
    if let Some(tls) = cfg.tls.as_ref().filter(|_| scratch.is_none()) {
        if let Ok(chain) = passerelle::tls::load_certs("tls.certificate", &tls.certificate) {
            if let Ok((_, cert)) = x509_parser::parse_x509_certificate(chain[0].as_ref()) {
                let not_after = cert.validity().not_after;
                let left = not_after.timestamp() - time::OffsetDateTime::now_utc().unix_timestamp();
                let days = left / 86400;
                let dn = passerelle::pki::dn::Dn::from_cert_der(chain[0].as_ref())
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

fn fetch(config: &std::path::Path, missing: bool) -> anyhow::Result<ExitCode> {
    use passerelle::trust::fetch::{FetchOptions, FetchOutcome, Fetcher, Plan};
    let cfg = Config::load_unvalidated(config)?;
    let plan = Plan::from_config(&cfg).map_err(|e| anyhow::anyhow!(e))?;
    if plan.jobs.is_empty() {
        println!("nothing to download: no [whitelist] url, no [tls] crl_urls");
        return Ok(ExitCode::SUCCESS);
    }
    let mut failed = false;
    for (job, r) in plan.run_all(&Fetcher::new(FetchOptions::default()), missing) {
        let what = match r {
            Ok(FetchOutcome::Updated { bytes }) => format!("updated ({bytes} bytes, verified)"),
            Ok(FetchOutcome::NotModified) => "not modified".into(),
            Ok(FetchOutcome::Same) => "unchanged".into(),
            Err(e) => {
                failed = true;
                format!("FAILED: {e}")
            }
        };
        println!("{} -> {}: {what}", job.url, job.dest.display());
    }
    Ok(if failed {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    })
}

/// Prints `value` as indented JSON (the `--format json` of the read-only verbs).
fn print_json(value: &serde_json::Value) -> anyhow::Result<()> {
    println!("{}", serde_json::to_string_pretty(value)?);
    Ok(())
}

fn whitelist_show(
    config: &std::path::Path,
    domain: &str,
    format: Format,
) -> anyhow::Result<ExitCode> {
    let cfg = Config::load_unvalidated(config)?;
    let w = cfg
        .whitelist
        .as_ref()
        .ok_or_else(|| anyhow::anyhow!("no [whitelist] section in {}", config.display()))?;
    let list = passerelle::server::load_whitelist(w, None)?;
    let domain = domain.trim().trim_end_matches('.').to_ascii_lowercase();
    let entries = list.entries(&domain);
    let code = if entries.is_empty() {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    };
    if format == Format::Json {
        print_json(&serde_json::json!({
            "domain": domain,
            "declared": !entries.is_empty(),
            "entries": entries.iter().map(|e| serde_json::json!({
                "dn": e.dn,
                "description": e.description,
                "updated": e.date_maj,
            })).collect::<Vec<_>>(),
            "file": w.file,
            "domains": list.domain_count(),
            "generated": list.generated(),
            "signer": list.signer(),
        }))?;
        return Ok(code);
    }
    match list.signer() {
        Some(s) => println!("{}: signature verified, signed by {s}", w.file.display()),
        None => println!("{}: signature not checked", w.file.display()),
    }
    if entries.is_empty() {
        println!(
            "{domain}: not declared in {} ({} domains, generated {})",
            w.file.display(),
            list.domain_count(),
            list.generated().unwrap_or("?")
        );
        return Ok(code);
    }
    println!(
        "{domain}: declared, {} operator certificate DN(s):",
        entries.len()
    );
    for e in entries {
        println!("  {}", e.dn);
        println!("    description: {}; updated {}", e.description, e.date_maj);
    }
    Ok(code)
}

/// `passerelle directory sync`: the summary on stdout, refusals and errors on stderr, exit 1
/// when refused or incomplete (a timer's failure).
fn directory_sync(
    config: &std::path::Path,
    args: &passerelle::directory::sync::SyncArgs,
) -> anyhow::Result<ExitCode> {
    use passerelle::directory::sync::{run, Progress, SyncOptions};
    // The config file gives defaults and the trust anchors; the command also runs without one.
    let cfg = match Config::load_unvalidated(config) {
        Ok(c) => Some(c),
        Err(_) if !config.exists() => None,
        Err(e) => return Err(e.into()),
    };
    let settings = match args.resolve(cfg.as_ref()) {
        Ok(s) => s,
        Err(e) => {
            for line in e.lines() {
                eprintln!("passerelle: {line}");
            }
            return Ok(ExitCode::from(2));
        }
    };
    let mut opts = SyncOptions::new(&settings, cfg.as_ref().and_then(|c| c.tls.as_ref()))?;
    opts.dry_run = args.dry_run;
    opts.force = args.force;
    // One thread: the client is not the limit (a no-op run of 535,000 entries spends ~10 s
    // of CPU in ~27 s waiting on slapd; two threads measured the same).
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let result = rt.block_on(run(&opts, &Progress::on_terminal()));
    let summary = match &result {
        Ok(s) => Some(s),
        Err(e) => e.summary(),
    };
    if let Some(s) = summary {
        if s.bad_lines > 0 {
            eprintln!("{}: {} malformed lines skipped", opts.source, s.bad_lines);
        }
        if s.foreign > 0 {
            eprintln!(
                "{}: {} entries are not mail= entries and were left alone",
                settings.base, s.foreign
            );
        }
        for d in &s.details {
            println!("  {d}");
        }
        println!("{s}");
    }
    match result {
        Ok(_) => Ok(ExitCode::SUCCESS),
        Err(e) => {
            eprintln!("passerelle: directory sync: {e}");
            Ok(ExitCode::from(1))
        }
    }
}

async fn directory_lookup(
    config: &std::path::Path,
    address: &str,
    format: Format,
) -> anyhow::Result<ExitCode> {
    use passerelle::policy::Lookup;
    let cfg = Config::load_unvalidated(config)?;
    let spec = passerelle::server::DirectorySpec {
        source: cfg.directory.source.clone(),
        tls: cfg.tls.clone(),
    };
    let crls = std::sync::Arc::new(arc_swap::ArcSwap::from_pointee(match &cfg.tls {
        Some(t) => passerelle::tls::CrlSet::load_capped(&t.crls, t.crl_max_size, None)?,
        None => passerelle::tls::CrlSet::load(&[], None)?,
    }));
    let directory = passerelle::server::build_directory(&spec, &crls)?;
    let address = address.trim().trim_matches(['<', '>']);
    let (known, bal_type) = match directory.lookup(address).await {
        Ok(Lookup::Found { bal_type, .. }) => (true, Some(bal_type)),
        Ok(Lookup::NotFound) => (false, None),
        Err(e) => return Err(anyhow::anyhow!("{address}: {e}")),
    };
    if format == Format::Json {
        print_json(&serde_json::json!({
            "address": address,
            "directory": directory.describe(),
            "known": known,
            "bal_type": bal_type,
        }))?;
    } else if let Some(b) = &bal_type {
        println!(
            "{address}: known to {} (BAL type {b})",
            directory.describe()
        );
    } else {
        println!("{address}: unknown to {}", directory.describe());
    }
    Ok(if known {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
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
    from: Option<&str>,
    format: Format,
) -> anyhow::Result<ExitCode> {
    let snap = passerelle::server::offline_snapshot(passerelle::server::load_config(config)?)?;
    let e =
        passerelle::policy::explain::explain(&snap.config, &snap.policy, listener, address, from)
            .await?;
    if format == Format::Json {
        print_json(&e.to_json(address))?;
    } else {
        println!("listener: {} ({})", e.listener, e.listener_address);
        for step in &e.steps {
            println!("{step}");
        }
    }
    Ok(if e.accepted {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

#[cfg(test)]
mod cli_doc;
