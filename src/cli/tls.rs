//! `passerelle tls probe`: a peer checked as delivery would (the work is `trust::probe`).

use super::{Config, Format};
use clap::Subcommand;
use std::process::ExitCode;

#[derive(Subcommand)]
pub enum TlsCommand {
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
        #[arg(long, default_value = "30s", value_parser = crate::config::parse_duration)]
        timeout: std::time::Duration,
        /// text for people, json for tools.
        #[arg(long, value_enum, default_value_t = Format::Text)]
        format: Format,
    },
}

pub fn run(config: &std::path::Path, what: TlsCommand) -> anyhow::Result<ExitCode> {
    let TlsCommand::Probe {
        target,
        domain,
        rcpt,
        port,
        timeout,
        format,
    } = what;
    let cfg = Config::load_unvalidated(config)?;
    let host_port = target.parse::<crate::config::HostPort>().is_ok();
    if host_port && domain.is_none() && rcpt.is_none() {
        eprintln!("passerelle: tls probe HOST:PORT needs --domain or --rcpt: the peer's DN is checked against that domain's whitelist entries");
        return Ok(ExitCode::from(2));
    }
    // As delivery would (issue 24 C.3): the port of the route's MX transport, or the
    // relay next hop it names.
    let (target, port, domain) = match (host_port, cfg.delivery_hop(&target)) {
        (false, Some((t, crate::config::NextHop::Relay(hp)))) if port.is_none() => {
            eprintln!(
                "tls probe: {target} is delivered through transport {t}: probing its next hop {hp}"
            );
            (hp.to_string(), 25, domain.or(Some(target)))
        }
        (false, Some((_, crate::config::NextHop::Mx { port: p }))) => {
            (target, port.unwrap_or(p), domain)
        }
        _ => (target, port.unwrap_or(25), domain),
    };
    let opts = crate::trust::probe::ProbeOptions {
        target,
        port,
        domain,
        rcpt,
        timeout,
    };
    let report = super::block_on(async {
        let ctx = crate::trust::probe::ProbeContext::from_config(&cfg)?;
        anyhow::Ok(crate::trust::probe::probe(&ctx, &opts).await)
    })??;
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
