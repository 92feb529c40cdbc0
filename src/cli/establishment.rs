//! `passerelle establishment add|remove|list|show|test`: onboarding an establishment of a
//! regional gateway in minutes. `add` writes `establishments_dir/NAME.toml`, validates the
//! whole configuration with it (as `check-config` does; nothing is left behind when it is
//! refused) and asks a running server to reload through its admin endpoint; `show` prints
//! what the establishment's administrator pastes (Postfix, Exchange) and what is declared to
//! DNS and to the ANS whitelist; `test` checks its mailbox server as delivery would.

use crate::config::establishment::{self, BUILTIN_ROUTE};
use crate::config::{ClientCert, Config, EstablishmentConfig, StartTls, TlsPolicy};
use anyhow::{anyhow, bail, Context};
use clap::Subcommand;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Instant;

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
        EstablishmentCommand::Test { name } => {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            rt.block_on(test(config, &name))
        }
    }
}

fn find<'a>(cfg: &'a Config, name: &str) -> anyhow::Result<&'a EstablishmentConfig> {
    cfg.establishment
        .iter()
        .find(|e| e.name == name)
        .ok_or_else(|| anyhow!("no establishment named {name:?}"))
}

/// A list for a human: `a, b`, or `-` when empty.
pub fn joined<T: std::fmt::Display>(v: &[T]) -> String {
    if v.is_empty() {
        "-".into()
    } else {
        v.iter()
            .map(|x| x.to_string())
            .collect::<Vec<_>>()
            .join(", ")
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

/// What `add` writes.
pub struct FileSpec<'a> {
    pub name: &'a str,
    pub domains: &'a [String],
    pub clients: &'a [String],
    pub client_dns: &'a [String],
    pub mailbox: &'a str,
    pub mailbox_tls: &'a str,
    pub sender_check: &'a str,
    pub structures: &'a [String],
    pub addresses: &'a [String],
    pub max_message_rate: Option<u32>,
    pub max_queued: Option<usize>,
}

/// A TOML string (basic string, escaped).
fn quoted(s: &str) -> String {
    toml::Value::String(s.to_string()).to_string()
}

fn array(v: &[String]) -> String {
    format!(
        "[{}]",
        v.iter().map(|s| quoted(s)).collect::<Vec<_>>().join(", ")
    )
}

/// The text of `establishments_dir/NAME.toml`.
pub fn file_text(s: &FileSpec<'_>) -> String {
    let mut t = String::new();
    let _ = writeln!(
        t,
        "# Written by `passerelle establishment add`; the keys are those of [[establishment]]."
    );
    let _ = writeln!(t, "[establishment]");
    let _ = writeln!(t, "name = {}", quoted(s.name));
    let _ = writeln!(t, "domains = {}", array(s.domains));
    if !s.clients.is_empty() {
        let _ = writeln!(t, "clients = {}", array(s.clients));
    }
    if !s.client_dns.is_empty() {
        let _ = writeln!(t, "client_dns = {}", array(s.client_dns));
    }
    let _ = writeln!(t, "mailbox = {}", quoted(s.mailbox));
    let _ = writeln!(t, "mailbox_tls = {}", quoted(s.mailbox_tls));
    let _ = writeln!(t, "sender_check = {}", quoted(s.sender_check));
    if !s.structures.is_empty() {
        let _ = writeln!(t, "structures = {}", array(s.structures));
    }
    if !s.addresses.is_empty() {
        let _ = writeln!(t, "addresses = {}", array(s.addresses));
    }
    if let Some(n) = s.max_message_rate {
        let _ = writeln!(t, "max_message_rate = {n}");
    }
    if let Some(n) = s.max_queued {
        let _ = writeln!(t, "max_queued = {n}");
    }
    t
}

/// The establishments directory of the config at `config` (read without validation: the
/// directory may hold the very file being fixed).
fn establishments_dir(config: &Path) -> anyhow::Result<PathBuf> {
    let text = std::fs::read_to_string(config)
        .with_context(|| format!("{}: cannot read", config.display()))?;
    let parsed = Config::from_toml_str(&text, &config.display().to_string())?;
    Ok(parsed.config.server.establishments_dir)
}

fn add(config: &Path, name: &str, text: &str) -> anyhow::Result<ExitCode> {
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

/// `establishment add` without the reload (the console reloads through its own handle):
/// writes `establishments_dir/NAME.toml` when the whole configuration with it passes
/// `check-config`; otherwise nothing is left and the problems say why. Ok: the file and the
/// warnings.
pub fn write_checked(
    config: &Path,
    name: &str,
    text: &str,
) -> Result<(PathBuf, Vec<String>), Vec<String>> {
    let one = |e: String| vec![e];
    if !establishment::valid_name(name) {
        return Err(one(format!(
            "{name:?}: an establishment's name is lowercase letters, digits and '-'"
        )));
    }
    let dir = establishments_dir(config).map_err(|e| one(format!("{e:#}")))?;
    let path = dir.join(format!("{name}.toml"));
    if path.exists() {
        return Err(one(format!(
            "{}: establishment {name:?} exists; remove it first",
            path.display()
        )));
    }
    // Checked on its own first: its own mistakes are named in its own words.
    if let Err(p) = establishment::parse_file(text, &path.display().to_string()) {
        return Err(p.iter().map(|p| p.to_string()).collect());
    }
    std::fs::create_dir_all(&dir).map_err(|e| one(format!("creating {}: {e}", dir.display())))?;
    let warnings = install_checked(config, &path, text)?;
    Ok((path, warnings))
}

/// Checks the whole configuration as if `text` were at `path`, and only then places it
/// (written under a name the config does not read, then renamed): the live directory never
/// holds a file a reload would refuse, not even for a moment (issue 24 B.16). Ok: the
/// warnings.
fn install_checked(config: &Path, path: &Path, text: &str) -> Result<Vec<String>, Vec<String>> {
    let one = |e: String| vec![e];
    let warnings = match Config::check_with(config, Some((path, text))) {
        Ok(parsed) => parsed.warnings.iter().map(|w| w.to_string()).collect(),
        Err(e) => return Err(e.to_string().lines().map(String::from).collect()),
    };
    crate::util::fs::write_atomic(path, text.as_bytes(), crate::util::fs::Mode::KeepOr(0o640))
        .map_err(|e| one(format!("writing {}: {e}", path.display())))?;
    Ok(warnings)
}

/// The console's edit: replaces the file of establishment `name` with `text` when the whole
/// configuration with it passes `check-config`; otherwise the old file is put back and the
/// problems say why. Ok: the file, its previous text (to put back if the reload refuses it),
/// and the warnings.
pub fn replace_checked(
    config: &Path,
    name: &str,
    text: &str,
) -> Result<(PathBuf, String, Vec<String>), Vec<String>> {
    let one = |e: String| vec![e];
    let cfg = Config::load_unvalidated(config).map_err(|e| one(format!("{e:#}")))?;
    let e = find(&cfg, name).map_err(|e| one(format!("{e:#}")))?;
    let Some(path) = e.file.clone() else {
        return Err(one(format!(
            "establishment {name:?} is declared in {} ([[establishment]]): edit it there (Configuration)",
            config.display()
        )));
    };
    let parsed = establishment::parse_file(text, &path.display().to_string())
        .map_err(|p| p.iter().map(|p| p.to_string()).collect::<Vec<_>>())?;
    if parsed.0.name != name {
        return Err(one(format!(
            "the name cannot change ({name:?} -> {:?}): add a new establishment and remove this one",
            parsed.0.name
        )));
    }
    let old = std::fs::read_to_string(&path)
        .map_err(|e| one(format!("reading {}: {e}", path.display())))?;
    let warnings = install_checked(config, &path, text)?;
    Ok((path, old, warnings))
}

fn remove(config: &Path, name: &str) -> anyhow::Result<ExitCode> {
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
    match crate::queuectl::admin_request(&cfg, "POST", "/reload")? {
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

/// The listener of the establishments (`establishments = true`), and the trust-space one.
fn listeners(
    cfg: &Config,
) -> (
    Option<&crate::config::ListenerConfig>,
    Option<&crate::config::ListenerConfig>,
) {
    let est = cfg.listener.iter().find(|l| l.establishments);
    let trust = cfg.listener.iter().find(|l| {
        l.client_certificate == ClientCert::Require && l.routes.iter().any(|r| r == BUILTIN_ROUTE)
    });
    (est, trust)
}

/// The subject DN of our `[tls]` certificate (what the whitelist declares for its domains).
pub fn our_dn(cfg: &Config) -> Option<String> {
    use rustls::pki_types::pem::PemObject;
    let t = cfg.tls.as_ref()?;
    let der = rustls::pki_types::CertificateDer::pem_file_iter(&t.certificate)
        .ok()?
        .next()?
        .ok()?;
    crate::dn::Dn::from_cert_der(der.as_ref())
        .ok()
        .map(|d| d.to_string())
}

fn show(config: &Path, name: &str) -> anyhow::Result<ExitCode> {
    let cfg = Config::load_unvalidated(config)?;
    let e = find(&cfg, name)?;
    print!("{}", render_show(&cfg, e, our_dn(&cfg).as_deref()));
    Ok(ExitCode::SUCCESS)
}

/// `establishment show`: settings, the establishment's side, and the declarations.
pub fn render_show(cfg: &Config, e: &EstablishmentConfig, dn: Option<&str>) -> String {
    let host = &cfg.server.hostname;
    let (est_l, trust_l) = listeners(cfg);
    let mut o = String::new();
    let _ = writeln!(o, "establishment {}", e.name);
    if let Some(f) = &e.file {
        let _ = writeln!(o, "  file:         {}", f.display());
    }
    let _ = writeln!(o, "  domains:      {}", joined(&e.domains));
    let _ = writeln!(o, "  clients:      {}", joined(&e.clients));
    let _ = writeln!(o, "  client_dns:   {}", joined(&e.client_dns));
    let _ = writeln!(
        o,
        "  mailbox:      {} (tls {})",
        e.mailbox,
        e.mailbox_tls.as_str()
    );
    let _ = writeln!(o, "  sender_check: {}", e.sender_check.as_str());
    if !e.structures.is_empty() || !e.addresses.is_empty() {
        let _ = writeln!(o, "  structures:   {}", joined(&e.structures));
        let _ = writeln!(o, "  addresses:    {}", joined(&e.addresses));
    }
    let limit = |v: Option<String>| v.unwrap_or_else(|| "none".into());
    let _ = writeln!(
        o,
        "  limits:       max_message_rate {} per minute, max_queued {}",
        limit(e.max_message_rate.map(|n| n.to_string())),
        limit(e.max_queued.map(|n| n.to_string()))
    );
    let Some(l) = est_l else {
        let _ = writeln!(
            o,
            "\nno listener has establishments = true: add one before connecting its MTAs"
        );
        return o;
    };
    // The address the establishment's MTA connects to: the listener's, or our name when it
    // listens on every address.
    let gw_host = if l.address.ip().is_unspecified() {
        host.clone()
    } else {
        l.address.ip().to_string()
    };
    let port = l.address.port();
    let bracket = if gw_host.contains(':') {
        format!("[{gw_host}]")
    } else {
        gw_host.clone()
    };
    let with_cert = !e.client_dns.is_empty();
    let level = match l.starttls {
        StartTls::Require => "encrypt",
        StartTls::Offer => "may",
        StartTls::Off => "none",
    };
    let domains: Vec<String> = e.domains.iter().map(|d| d.to_string()).collect();
    let _ = writeln!(o, "\n# --- Postfix (the establishment's MTA) ---");
    let _ = writeln!(o, "# main.cf:");
    let _ = writeln!(
        o,
        "#   transport_maps = hash:/etc/postfix/transport_mssante"
    );
    let _ = writeln!(
        o,
        "# /etc/postfix/transport_mssante (then `postmap` it): MSSante mail goes to the gateway"
    );
    let _ = writeln!(
        o,
        "# its own domains first: they stay on its usual delivery (else mail to its own users loops)"
    );
    for d in &domains {
        let _ = writeln!(o, "{:<16} :", d.trim_start_matches('*'));
    }
    let _ = writeln!(o, ".mssante.fr      mssante:[{bracket}]:{port}");
    let _ = writeln!(o, "mssante.fr       mssante:[{bracket}]:{port}");
    let _ = writeln!(o, "# master.cf:");
    let _ = writeln!(
        o,
        "mssante   unix  -       -       n       -       -       smtp"
    );
    let _ = writeln!(o, "  -o smtp_tls_security_level={level}");
    let _ = writeln!(o, "  -o smtp_helo_name=$myhostname");
    if with_cert {
        let _ = writeln!(o, "  -o smtp_tls_cert_file=/etc/postfix/mssante-client.pem");
        let _ = writeln!(o, "  -o smtp_tls_key_file=/etc/postfix/mssante-client.key");
        let _ = writeln!(
            o,
            "#   the certificate's subject must be one of: {}",
            joined(&e.client_dns)
        );
    }
    let _ = writeln!(
        o,
        "\n# --- Exchange (PowerShell, Exchange Management Shell) ---"
    );
    let tls_args = match l.starttls {
        StartTls::Require => " -RequireTLS $true",
        _ => "",
    };
    let cert_args = if with_cert {
        " -TlsCertificateName \"<I>CN=issuer<S>CN=subject\""
    } else {
        ""
    };
    let _ = writeln!(
        o,
        "New-SendConnector -Name \"passerelle MSSante ({host})\" -Usage Custom -AddressSpaces \"SMTP:*.mssante.fr;10\",\"SMTP:mssante.fr;10\" -SmartHosts \"{gw_host}\" -Port {port} -SmartHostAuthMechanism None -DNSRoutingEnabled $false{tls_args}{cert_args}"
    );
    let _ = writeln!(o, "\n# --- DNS and ANS whitelist (the operator's side) ---");
    let mx_target = trust_l
        .map(|t| {
            if t.address.port() != 25 {
                format!("{host}.   (the trust-space listener is on port {}: publish port 25 in front of it)", t.address.port())
            } else {
                format!("{host}.")
            }
        })
        .unwrap_or_else(|| format!("{host}.   (no trust-space listener routes \"establishments\" yet)"));
    for d in &domains {
        let _ = writeln!(o, "{d}.   IN MX 10 {mx_target}");
    }
    match dn {
        Some(dn) => {
            let _ = writeln!(
                o,
                "whitelist: declare {} with the operator certificate DN \"{dn}\"",
                joined(&domains)
            );
        }
        None => {
            let _ = writeln!(
                o,
                "whitelist: declare {} with the DN of this gateway's [tls] certificate (none readable here)",
                joined(&domains)
            );
        }
    }
    let _ = writeln!(
        o,
        "mailbox: mail for {} is delivered to {} (tls {})",
        joined(&domains),
        e.mailbox,
        e.mailbox_tls.as_str()
    );
    o
}

/// One step of `establishment test`.
fn step(lines: &mut Vec<String>, name: &str, started: Instant, ok: bool, detail: &str) -> bool {
    lines.push(format!(
        "{:<10} {:>6.1} ms  {}  {detail}",
        name,
        started.elapsed().as_secs_f64() * 1000.0,
        if ok { "ok  " } else { "FAIL" }
    ));
    ok
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

/// `establishment test` (and the console's mailbox test): the mailbox server checked as
/// delivery would (connect, EHLO, STARTTLS per policy, MAIL FROM:<>, RCPT TO:<postmaster@>,
/// RSET, QUIT; no message sent), one timed line per step and a verdict.
pub async fn mailbox_test(cfg: &Config, name: &str) -> anyhow::Result<(bool, Vec<String>)> {
    use crate::delivery::client::{Client, ClientOptions};
    let mut lines = Vec::new();
    let e = find(cfg, name)?.clone();
    let domain = match e.domains.iter().find_map(|d| match d {
        crate::config::DomainPattern::Exact(d) => Some(d.clone()),
        crate::config::DomainPattern::Subdomains(s) => Some(s.trim_start_matches('.').to_string()),
        _ => None,
    }) {
        Some(d) => d,
        None => bail!("establishment {name} has no domain"),
    };
    lines.push(format!(
        "establishment {name}: mailbox {} (tls {}), RCPT TO:<postmaster@{domain}>",
        e.mailbox,
        e.mailbox_tls.as_str()
    ));
    let t0 = Instant::now();
    let addr = match tokio::net::lookup_host((e.mailbox.host.as_str(), e.mailbox.port))
        .await
        .ok()
        .and_then(|mut a| a.next())
    {
        Some(a) => {
            step(&mut lines, "resolve", t0, true, &a.to_string());
            a
        }
        None => {
            step(
                &mut lines,
                "resolve",
                t0,
                false,
                &format!("{} does not resolve", e.mailbox.host),
            );
            return Ok((false, lines));
        }
    };
    // Files and CRL parsing: on a blocking thread, never the runtime's (issue 24 B.13).
    let tls_cfg = cfg.tls.clone();
    let (tls, crls) = tokio::task::spawn_blocking(move || -> anyhow::Result<_> {
        let tls = tls_cfg
            .as_ref()
            .map(crate::tls::TlsMaterial::load)
            .transpose()?;
        let crls = match &tls_cfg {
            Some(t) => crate::tls::CrlSet::load_capped(&t.crls, t.crl_max_size, None)?,
            None => crate::tls::CrlSet::load(&[], None)?,
        };
        Ok((tls, crls))
    })
    .await??;
    let crls = std::sync::Arc::new(arc_swap::ArcSwap::from_pointee(crls));
    let pins: std::sync::Arc<dyn crate::delivery::TrustList> = std::sync::Arc::new(
        crate::policy::Lists::new(None, Box::new(crate::policy::NoDirectory)),
    );
    let delivery = crate::delivery::DeliveryConfig::new(cfg, tls.as_ref(), &crls, pins)
        .map_err(|e| anyhow!(e))?;
    let transport = crate::config::TransportConfig {
        hop: crate::config::NextHop::Relay(e.mailbox.clone()),
        tls: e.mailbox_tls,
    };
    let mode = match delivery.tls_mode(&transport, &domain) {
        Ok(m) => m,
        Err(f) => {
            step(&mut lines, "tls", t0, false, &f.to_string());
            return Ok((false, lines));
        }
    };
    let opts = ClientOptions {
        helo: cfg.server.hostname.clone(),
        server_name: e.mailbox.host.clone(),
        tls: mode,
        connect_timeout: cfg.queue.connect_timeout,
        command_timeout: std::time::Duration::from_secs(30),
    };
    let t = Instant::now();
    let mut c = match Client::connect(addr, &opts).await {
        Ok(c) => c,
        Err(f) => {
            step(
                &mut lines,
                "connect",
                t,
                false,
                &format!("connect, banner, EHLO, STARTTLS: {f}"),
            );
            return Ok((false, lines));
        }
    };
    let tls_said = match (&c.tls, e.mailbox_tls) {
        (Some(t), _) => format!("STARTTLS: {t}"),
        (None, TlsPolicy::None) => "no TLS (mailbox_tls = none)".into(),
        (None, _) => "STARTTLS not offered: in clear (opportunistic)".into(),
    };
    step(
        &mut lines,
        "connect",
        t,
        true,
        &format!("{addr}: banner, EHLO, {tls_said}"),
    );
    let mut ok = true;
    for (label, cmd, want) in [
        ("MAIL", "MAIL FROM:<>\r\n".to_string(), 250u16),
        ("RCPT", format!("RCPT TO:<postmaster@{domain}>\r\n"), 250),
        ("RSET", "RSET\r\n".to_string(), 250),
    ] {
        let t = Instant::now();
        match c.command(&cmd).await {
            Ok(r) => {
                let good = r.code == want || (label == "RCPT" && r.code == 251);
                ok &= step(&mut lines, label, t, good, &r.to_string());
                if !good && label != "RSET" {
                    break;
                }
            }
            Err(f) => {
                step(&mut lines, label, t, false, &f.to_string());
                return Ok((false, lines));
            }
        }
    }
    let t = Instant::now();
    c.quit().await;
    step(&mut lines, "QUIT", t, true, "");
    lines.push(format!(
        "verdict: {}",
        if ok {
            "mailbox ready"
        } else {
            "mailbox NOT ready"
        }
    ));
    Ok((ok, lines))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn add_writes_a_file_the_config_reads() {
        let text = file_text(&FileSpec {
            name: "chu-c",
            domains: &["chu-c.mssante.fr".into()],
            clients: &["127.0.0.40".into()],
            client_dns: &["CN=mta.chu-c.fr,O=CHU \"C\",C=FR".into()],
            mailbox: "127.0.0.1:2605",
            mailbox_tls: "none",
            sender_check: "envelope",
            structures: &[],
            addresses: &[],
            max_message_rate: Some(60),
            max_queued: None,
        });
        let (e, w) = establishment::parse_file(&text, "d/chu-c.toml").unwrap();
        assert!(w.is_empty(), "{w:?}");
        assert_eq!(e.name, "chu-c");
        assert_eq!(e.max_message_rate, Some(60));
        assert_eq!(
            e.client_dns[0].to_string(),
            "CN=mta.chu-c.fr,O=CHU \"C\",C=FR"
        );
    }

    /// Issue 24 B.16: the configuration is checked with the new file before it is placed; a
    /// refused one never enters the live directory.
    #[test]
    fn a_file_is_checked_before_it_is_placed() {
        let dir = tempfile::tempdir().unwrap();
        let est_dir = dir.path().join("est.d");
        let main = std::fs::read_to_string(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/config/passerelle.toml"
        ))
        .unwrap()
        .replacen(
            "[server]\n",
            &format!(
                "[server]\nestablishments_dir = {:?}\n",
                est_dir.display().to_string()
            ),
            1,
        );
        let config = dir.path().join("p.toml");
        std::fs::write(&config, main).unwrap();
        let spec = |name: &'static str, domain: &'static [String]| FileSpec {
            name,
            domains: domain,
            clients: &[],
            client_dns: &[],
            mailbox: "127.0.0.1:2605",
            mailbox_tls: "none",
            sender_check: "envelope",
            structures: &[],
            addresses: &[],
            max_message_rate: None,
            max_queued: None,
        };
        static C: std::sync::LazyLock<Vec<String>> =
            std::sync::LazyLock::new(|| vec!["chu-c.mssante.fr".into()]);
        let mut c = spec("chu-c", &C);
        let clients = ["127.0.0.40".to_string()];
        c.clients = &clients;
        let (path, _) = write_checked(&config, "chu-c", &file_text(&c)).expect("chu-c placed");
        assert!(path.exists());
        let mut d = spec("chu-d", &C);
        let clients = ["127.0.0.41".to_string()];
        d.clients = &clients;
        let e = write_checked(&config, "chu-d", &file_text(&d)).unwrap_err();
        assert!(e.join("\n").contains("chu-c.mssante.fr"), "{e:?}");
        let names: Vec<_> = std::fs::read_dir(&est_dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        assert_eq!(names, ["chu-c.toml"], "nothing else was ever placed there");
    }

    #[test]
    fn show_prints_both_sides() {
        let text = std::fs::read_to_string(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/examples/regional.toml"
        ))
        .unwrap();
        let cfg = Config::from_toml_str(&text, "regional.toml")
            .unwrap()
            .config;
        let e = &cfg.establishment[0];
        let out = render_show(&cfg, e, Some("CN=gw,O=Op,C=FR"));
        assert!(
            out.contains("transport_maps = hash:/etc/postfix/transport_mssante"),
            "{out}"
        );
        assert!(
            out.contains("mssante   unix  -       -       n       -       -       smtp"),
            "{out}"
        );
        assert!(out.contains("New-SendConnector"), "{out}");
        assert!(out.contains("IN MX 10"), "{out}");
        assert!(out.contains("\"CN=gw,O=Op,C=FR\""), "{out}");
    }
}
