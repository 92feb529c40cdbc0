//! `establishment test` and the console's mailbox test: an establishment's mailbox server
//! checked as delivery would reach it, without sending a message.

use crate::config::{Config, TlsPolicy};
use crate::establishment::store::find;
use anyhow::{anyhow, bail};
use std::time::Instant;

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
