//! `passerelle whitelist show` and `passerelle fetch`: the ANS whitelist as loaded, and the
//! downloads of the whitelist and CRLs run by hand.

use super::{print_json, Config, Format};
use clap::Subcommand;
use std::process::ExitCode;

#[derive(Subcommand)]
pub enum WhitelistCommand {
    /// Whether DOMAIN is declared, and with which operator certificate DNs.
    Show {
        /// Recipient domain, e.g. ch-autre.mssante.fr.
        domain: String,
        /// `json`: the domain, whether declared, and its entries, for tools.
        #[arg(long, value_enum, default_value_t)]
        format: Format,
    },
}

pub fn run(config: &std::path::Path, what: WhitelistCommand) -> anyhow::Result<ExitCode> {
    match what {
        WhitelistCommand::Show { domain, format } => show(config, &domain, format),
    }
}

pub fn fetch(config: &std::path::Path, missing: bool) -> anyhow::Result<ExitCode> {
    use crate::trust::fetch::{FetchOptions, FetchOutcome, Fetcher, Plan};
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

fn show(config: &std::path::Path, domain: &str, format: Format) -> anyhow::Result<ExitCode> {
    let cfg = Config::load_unvalidated(config)?;
    let w = cfg
        .whitelist
        .as_ref()
        .ok_or_else(|| anyhow::anyhow!("no [whitelist] section in {}", config.display()))?;
    let list = crate::server::load_whitelist(w, None)?;
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
