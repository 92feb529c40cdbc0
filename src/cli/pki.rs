//! `passerelle pki dev|issue|csr|revoke`: the development PKI standing for IGC-Santé, and the
//! gateway's real key and certificate request.

use super::Config;
use clap::Subcommand;
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Subcommand)]
pub enum PkiCommand {
    /// Make a development PKI standing for IGC-Santé (never for production).
    Dev {
        /// Output directory.
        #[arg(long, default_value = crate::pki::DEFAULT_DEV_DIR)]
        out: PathBuf,
        /// Overwrite existing files.
        #[arg(long)]
        force: bool,
    },
    /// Issue a leaf certificate from a dev PKI's intermediate (test peers, audit cases).
    Issue {
        /// The dev PKI directory (made by `pki dev`).
        #[arg(long, default_value = crate::pki::DEFAULT_DEV_DIR)]
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
    Csr(crate::pki::csr::CsrOptions),
    /// Revoke certificates issued from a dev PKI: re-signs its ca.crl listing them.
    Revoke {
        /// The dev PKI directory (made by `pki dev`).
        #[arg(long, default_value = crate::pki::DEFAULT_DEV_DIR)]
        dir: PathBuf,
        /// Certificate files (PEM) to revoke.
        #[arg(required = true)]
        certificates: Vec<PathBuf>,
    },
}

pub fn run(config: &std::path::Path, what: PkiCommand) -> anyhow::Result<ExitCode> {
    match what {
        PkiCommand::Dev { out, force } => {
            let hostname = Config::load_unvalidated(config)
                .map(|c| c.server.hostname)
                .unwrap_or_else(|_| "passerelle.localhost".into());
            let report = crate::pki::generate_dev_pki(&crate::pki::DevPkiOptions {
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
        PkiCommand::Issue {
            dir,
            name,
            subject,
            dns,
            ip,
            expired,
            days,
            out,
        } => {
            use crate::pki;
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
        PkiCommand::Revoke { dir, certificates } => {
            let serials = certificates
                .iter()
                .map(|c| crate::pki::serial_of(c))
                .collect::<Result<Vec<_>, _>>()?;
            let n = crate::pki::revoke_in_dev_pki(&dir, &serials)?;
            println!(
                "{}: {n} certificate(s) revoked",
                dir.join(crate::pki::CRL_FILE).display()
            );
            Ok(ExitCode::SUCCESS)
        }
        PkiCommand::Csr(opts) => {
            let r = crate::pki::csr::make_csr(&opts)?;
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
    }
}
