//! What `establishment show` (and the console's establishment page) tells the establishment's
//! administrator: the settings, what to paste into Postfix or Exchange, and what to declare to
//! DNS and to the ANS whitelist.

use crate::config::establishment::BUILTIN_ROUTE;
use crate::config::{ClientCert, Config, EstablishmentConfig, StartTls};
use std::fmt::Write as _;

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
    crate::pki::dn::Dn::from_cert_der(der.as_ref())
        .ok()
        .map(|d| d.to_string())
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

#[cfg(test)]
mod tests {
    use super::*;

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
