//! `passerelle check-config` (`postfix check`) and `passerelle route test` (`postmap -q`):
//! the configuration and the routing decisions, checked without running the gateway.

use super::{print_json, Config, Format};
use clap::Subcommand;
use std::process::ExitCode;

#[derive(Subcommand)]
pub enum RouteCommand {
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

pub fn route(config: &std::path::Path, what: RouteCommand) -> anyhow::Result<ExitCode> {
    let RouteCommand::Test {
        address,
        listener,
        from,
        format,
    } = what;
    super::block_on(route_test(
        config,
        &address,
        listener.as_deref(),
        from.as_deref(),
        format,
    ))?
}

/// Every problem on its own line as `FILE:LINE: key: message`, warnings as
/// `warning: FILE:LINE: ...`, and what was found (certificate subject and expiry) as plain
/// information. Exit 1 when there is any problem (warnings alone exit 0).
pub fn check_config(path: &std::path::Path, strict: bool) -> anyhow::Result<ExitCode> {
    use crate::config::ConfigError;
    let shown = path.display().to_string();
    // Read-only (issue 24 C.1): a development PKI that `serve` would generate is not made
    // here; the rest is checked against a throw-away one.
    let pending = Config::load_unvalidated(path).ok().and_then(|c| {
        crate::server::pending_dev_pki(&c).map(|d| (d.to_path_buf(), c.server.hostname.clone()))
    });
    let scratch = match &pending {
        Some((dir, hostname)) => {
            println!(
                "tls: {}: no development PKI yet; `passerelle serve` generates it (checked here against a temporary one)",
                dir.display()
            );
            let tmp = tempfile::tempdir()?;
            crate::pki::generate_dev_pki(&crate::pki::DevPkiOptions {
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
        crate::config::trust_warnings(&parsed.config)
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
    let at =
        |key: &str, msg: String| crate::config::Problem::error(key, msg).located(&shown, &text);
    let mut problems = Vec::new();
    let mut cfg = parsed.config;
    if let (Some((dev, tmp)), Some(tls)) = (&scratch, &cfg.tls) {
        cfg.tls = Some(tls.moved(dev, tmp.path()));
    }
    if let Some(tls) = cfg.tls.as_ref().filter(|_| scratch.is_none()) {
        if let Ok(chain) = crate::tls::load_certs("tls.certificate", &tls.certificate) {
            if let Ok((_, cert)) = x509_parser::parse_x509_certificate(chain[0].as_ref()) {
                let not_after = cert.validity().not_after;
                let left = not_after.timestamp() - time::OffsetDateTime::now_utc().unix_timestamp();
                let days = left / 86400;
                let dn = crate::pki::dn::Dn::from_cert_der(chain[0].as_ref())
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
        if let Err(e) = crate::server::offline_snapshot(cfg) {
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

/// `passerelle route test`: the same decision RCPT makes, explained (the console's route
/// test page shows the same explanation).
async fn route_test(
    config: &std::path::Path,
    address: &str,
    listener: Option<&str>,
    from: Option<&str>,
    format: Format,
) -> anyhow::Result<ExitCode> {
    let snap = crate::server::offline_snapshot(crate::server::load_config(config)?)?;
    let e = crate::policy::explain::explain(&snap.config, &snap.policy, listener, address, from)
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
