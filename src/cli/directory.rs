//! `passerelle directory lookup|import|sync`: the recipient directory as configured, the
//! extract turned into LDIF, and an LDAP kept in step with the extract.

use super::{print_json, Config, Format};
use clap::Subcommand;
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Subcommand)]
pub enum DirectoryCommand {
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
        #[arg(long, default_value = crate::directory::ldif::DEFAULT_BASE)]
        base: String,
    },
    /// Bring an LDAP in step with the extract by delta (add, modify, delete), same mapping as
    /// `import`; refuses to delete more than --max-delete percent of the entries.
    Sync(crate::directory::sync::SyncArgs),
}

pub fn run(config: &std::path::Path, what: DirectoryCommand) -> anyhow::Result<ExitCode> {
    match what {
        DirectoryCommand::Import {
            extract,
            ldif,
            base,
        } => {
            let (x, report) = crate::directory::extract::Extract::load_with(
                &extract,
                crate::directory::ldif::KEEP,
            )?;
            for (line, why) in &report.bad_lines {
                eprintln!("{}:{line}: skipped: {why}", extract.display());
            }
            let n = if ldif.as_os_str() == "-" {
                let mut out = std::io::BufWriter::new(std::io::stdout().lock());
                crate::directory::ldif::write_ldif(&x, &base, &mut out)?
            } else {
                crate::util::fs::write_atomic_with(
                    &ldif,
                    crate::util::fs::Mode::KeepOr(0o644),
                    None,
                    |mut out| crate::directory::ldif::write_ldif(&x, &base, &mut out),
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
        DirectoryCommand::Sync(args) => sync(config, &args),
        DirectoryCommand::Lookup { address, format } => {
            super::block_on(lookup(config, &address, format))?
        }
    }
}

/// `passerelle directory sync`: the summary on stdout, refusals and errors on stderr, exit 1
/// when refused or incomplete (a timer's failure).
fn sync(
    config: &std::path::Path,
    args: &crate::directory::sync::SyncArgs,
) -> anyhow::Result<ExitCode> {
    use crate::directory::sync::{run, Progress, SyncOptions};
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
    let result = super::block_on(run(&opts, &Progress::on_terminal()))?;
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

async fn lookup(
    config: &std::path::Path,
    address: &str,
    format: Format,
) -> anyhow::Result<ExitCode> {
    use crate::policy::Lookup;
    let cfg = Config::load_unvalidated(config)?;
    let spec = crate::server::DirectorySpec {
        source: cfg.directory.source.clone(),
        tls: cfg.tls.clone(),
    };
    let crls = std::sync::Arc::new(arc_swap::ArcSwap::from_pointee(match &cfg.tls {
        Some(t) => crate::tls::CrlSet::load_capped(&t.crls, t.crl_max_size, None)?,
        None => crate::tls::CrlSet::load(&[], None)?,
    }));
    let directory = crate::server::build_directory(&spec, &crls)?;
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
