//! `passerelle tls probe DOMAIN|HOST:PORT`: the trust space's `posttls-finger`.
//!
//! Connecting an establishment ends with tests against each operator: can we reach it, does
//! its certificate chain to IGC-Santé, is its DN one the ANS declared for the domain, does it
//! accept our certificate? The probe answers them the way delivery would, one step a line
//! with its timing, and a verdict: MX lookup (or the given host), connect, banner, EHLO,
//! STARTTLS, the handshake presenting our certificate, the peer chain (subjects, issuers,
//! validity, revocation by our CRLs), the same chain validation and whitelist DN pin as
//! `tls = "mutual"` delivery, then `MAIL FROM:<>` (and `RCPT TO` with `--rcpt`), `RSET`,
//! `QUIT`. No DATA is ever sent.
//!
//! A small SMTP client of its own (not `delivery::client`): the probe must report every step
//! and carry on past failures a delivery would stop at (e.g. show the chain of a certificate
//! the peer check refuses).

use crate::net::resolve::{Hop, Resolver};
use crate::pki::dn::Dn;
use crate::tls::{PeerRole, PeerValidator, TlsMaterial};
use crate::trust::whitelist::Whitelist;
use rustls::pki_types::{CertificateDer, ServerName};
use serde::Serialize;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

/// What to probe.
#[derive(Debug, Clone)]
pub struct ProbeOptions {
    /// `DOMAIN` (its MX hosts) or `HOST:PORT`.
    pub target: String,
    /// Port for MX hosts.
    pub port: u16,
    /// Domain whose whitelist DNs the peer must match (default: the target domain, or the
    /// domain of `rcpt`).
    pub domain: Option<String>,
    /// A recipient to try with RCPT TO (then RSET: nothing is sent).
    pub rcpt: Option<String>,
    /// Per network step.
    pub timeout: Duration,
}

/// What the probe uses from the configuration.
pub struct ProbeContext {
    pub hostname: String,
    pub tls: TlsMaterial,
    pub validator: PeerValidator,
    /// The CRLs of `tls.crls`, to show each chain certificate's revocation status.
    pub crls: Arc<crate::tls::CrlSet>,
    pub whitelist: Arc<Whitelist>,
    pub resolver: Resolver,
}

impl ProbeContext {
    /// From the configuration `serve` reads: `[tls]`, `[whitelist]` (under its signature and
    /// age rules), `[dns]`.
    pub fn from_config(cfg: &crate::config::Config) -> anyhow::Result<ProbeContext> {
        use anyhow::Context;
        let t = cfg
            .tls
            .as_ref()
            .context("no [tls] section: the probe presents our certificate")?;
        let tls = TlsMaterial::load(t)?;
        let crls = Arc::new(crate::tls::CrlSet::load_capped(
            &t.crls,
            t.crl_max_size,
            None,
        )?);
        let validator = PeerValidator::new(&tls, Arc::new(arc_swap::ArcSwap::new(crls.clone())));
        let w = cfg
            .whitelist
            .as_ref()
            .context("no [whitelist] section: the probe checks the peer's DN against it")?;
        let whitelist = Arc::new(
            crate::trust::load_whitelist(w, None)
                .with_context(|| format!("whitelist.file {}", w.file.display()))?,
        );
        let resolver = Resolver::new(&cfg.dns).map_err(|e| anyhow::anyhow!(e))?;
        Ok(ProbeContext {
            hostname: cfg.server.hostname.clone(),
            tls,
            validator,
            crls,
            whitelist,
            resolver,
        })
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct Step {
    pub step: String,
    pub ok: bool,
    /// Milliseconds since the probe started.
    pub ms: u64,
    pub detail: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct CertInfo {
    pub subject: String,
    pub issuer: String,
    pub not_before: String,
    pub not_after: String,
    /// "not revoked (CRL of ...)", "REVOKED", "no CRL for its issuer".
    pub revocation: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct DnCheck {
    pub domain: String,
    pub subject: String,
    pub declared: bool,
    /// Every DN the whitelist lists for the domain.
    pub declared_dns: Vec<String>,
    /// When not declared: the nearest declared DN and the attributes that differ.
    pub closest: Option<String>,
    pub differs_in: Vec<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub target: String,
    pub domain: Option<String>,
    pub peer: Option<String>,
    pub tls_version: Option<String>,
    pub cipher: Option<String>,
    pub chain: Vec<CertInfo>,
    pub dn: Option<DnCheck>,
    /// Our client certificate: accepted (MAIL answered 250), refused, or unknown.
    pub client_certificate: Option<String>,
    pub steps: Vec<Step>,
    pub ok: bool,
    pub verdict: String,
}

impl Report {
    /// One line per step with its timing, the chain, then the verdict.
    pub fn render_text(&self) -> String {
        let mut out = format!(
            "probe {}{}\n",
            self.target,
            self.domain
                .as_deref()
                .map(|d| format!(" (whitelist domain {d})"))
                .unwrap_or_default()
        );
        for s in &self.steps {
            out.push_str(&format!(
                "[{:>5} ms] {:<11} {} {}\n",
                s.ms,
                s.step,
                if s.ok { "ok  " } else { "FAIL" },
                s.detail
            ));
        }
        out.push_str(&format!(
            "verdict: {} {}\n",
            if self.ok { "OK" } else { "REFUSED" },
            self.verdict
        ));
        out
    }
}

/// The target's hosts: MX (A fallback) of a domain, or one `host:port`.
fn host_port(t: &str) -> Option<crate::config::HostPort> {
    t.parse().ok()
}

struct Probe {
    start: Instant,
    report: Report,
}

impl Probe {
    fn step(&mut self, step: &str, ok: bool, detail: impl Into<String>) {
        self.report.steps.push(Step {
            step: step.to_string(),
            ok,
            ms: self.start.elapsed().as_millis() as u64,
            detail: detail.into(),
        });
    }

    /// Records the failing step and the verdict; returns the report.
    fn fail(mut self, step: &str, detail: impl Into<String>, verdict: impl Into<String>) -> Report {
        self.step(step, false, detail);
        self.report.ok = false;
        self.report.verdict = verdict.into();
        self.report
    }
}

/// Runs the probe; never panics on what the peer sends; the verdict says whether delivery
/// would succeed.
pub async fn probe(ctx: &ProbeContext, o: &ProbeOptions) -> Report {
    let domain = o
        .domain
        .clone()
        .or_else(|| host_port(&o.target).is_none().then(|| o.target.clone()))
        .or_else(|| {
            o.rcpt
                .as_deref()
                .and_then(|r| r.rsplit_once('@'))
                .map(|(_, d)| d.to_string())
        })
        .map(|d| d.trim().trim_end_matches('.').to_ascii_lowercase());
    let mut p = Probe {
        start: Instant::now(),
        report: Report {
            target: o.target.clone(),
            domain: domain.clone(),
            peer: None,
            tls_version: None,
            cipher: None,
            chain: Vec::new(),
            dn: None,
            client_certificate: None,
            steps: Vec::new(),
            ok: false,
            verdict: String::new(),
        },
    };

    // 1. Where to connect.
    let hops: Vec<Hop> = if let Some(hp) = host_port(&o.target) {
        match ctx.resolver.static_hop(&hp).await {
            Ok(h) => h,
            Err(e) => {
                return p.fail(
                    "resolve",
                    e.to_string(),
                    format!("cannot resolve {}: {e}", o.target),
                )
            }
        }
    } else {
        match ctx.resolver.mx_hops(&o.target, o.port).await {
            Ok(h) => {
                let list: Vec<String> = h
                    .iter()
                    .map(|h| {
                        let a: Vec<String> = h.addrs.iter().map(|a| a.to_string()).collect();
                        format!("{} ({})", h.name, a.join(", "))
                    })
                    .collect();
                p.step("mx", true, list.join("; "));
                h
            }
            Err(e) => {
                return p.fail(
                    "mx",
                    e.to_string(),
                    format!("no route to {}: {e}", o.target),
                )
            }
        }
    };

    // 2. Connect to the first address that answers, in preference order.
    let mut conn = None;
    for hop in &hops {
        for addr in &hop.addrs {
            match tokio::time::timeout(o.timeout, TcpStream::connect(addr)).await {
                Ok(Ok(s)) => {
                    p.step("connect", true, format!("{} [{addr}]", hop.name));
                    conn = Some((hop.name.clone(), *addr, s));
                    break;
                }
                Ok(Err(e)) => p.step("connect", false, format!("{} [{addr}]: {e}", hop.name)),
                Err(_) => p.step(
                    "connect",
                    false,
                    format!("{} [{addr}]: timed out", hop.name),
                ),
            }
        }
        if conn.is_some() {
            break;
        }
    }
    let Some((host, addr, tcp)) = conn else {
        p.report.ok = false;
        p.report.verdict = "no host could be reached (delivery would be deferred)".into();
        return p.report;
    };
    p.report.peer = Some(format!("{host} [{addr}]"));
    smtp_and_tls(p, ctx, o, domain, host, addr, tcp).await
}

async fn smtp_and_tls(
    mut p: Probe,
    ctx: &ProbeContext,
    o: &ProbeOptions,
    domain: Option<String>,
    host: String,
    _addr: SocketAddr,
    tcp: TcpStream,
) -> Report {
    let t = o.timeout;
    let mut plain = BufReader::new(tcp);
    match read_reply(&mut plain, t).await {
        Ok((220, text)) => p.step("banner", true, format!("220 {}", first_line(&text))),
        Ok((code, text)) => {
            return p.fail(
                "banner",
                format!("{code} {}", first_line(&text)),
                format!("the peer refuses connections: {code} {}", first_line(&text)),
            )
        }
        Err(e) => return p.fail("banner", e.clone(), format!("no SMTP greeting: {e}")),
    }
    let ehlo = format!("EHLO {}", ctx.hostname);
    let caps = match command(&mut plain, &ehlo, t).await {
        Ok((250, text)) => text,
        Ok((code, text)) => {
            return p.fail(
                "ehlo",
                format!("{code} {}", first_line(&text)),
                "EHLO refused",
            )
        }
        Err(e) => return p.fail("ehlo", e.clone(), format!("EHLO: {e}")),
    };
    let keywords: Vec<&str> = caps
        .lines()
        .skip(1)
        .map(|l| l.split_whitespace().next().unwrap_or(""))
        .collect();
    p.step("ehlo", true, keywords.join(" "));
    if !keywords.iter().any(|k| k.eq_ignore_ascii_case("STARTTLS")) {
        let _ = command(&mut plain, "QUIT", t).await;
        return p.fail(
            "starttls",
            "not offered",
            "STARTTLS not offered; TLS is required, not sending in clear",
        );
    }
    match command(&mut plain, "STARTTLS", t).await {
        Ok((220, text)) => p.step("starttls", true, format!("220 {}", first_line(&text))),
        Ok((code, text)) => {
            return p.fail(
                "starttls",
                format!("{code} {}", first_line(&text)),
                "STARTTLS refused; TLS is required, not sending in clear",
            )
        }
        Err(e) => return p.fail("starttls", e.clone(), format!("STARTTLS: {e}")),
    }
    if !plain.buffer().is_empty() {
        return p.fail(
            "starttls",
            "the peer sent data after its 220 (STARTTLS response injection)",
            "STARTTLS response injection: not trusting this session",
        );
    }

    // 3. Handshake, presenting our certificate; the chain is judged afterwards (as delivery).
    let verifier = Arc::new(crate::tls::AcceptAnyServer(crate::tls::provider()));
    let config = match ctx.tls.client_config(verifier) {
        Ok(c) => c,
        Err(e) => return p.fail("tls", e.to_string(), format!("our TLS material: {e}")),
    };
    let name = ServerName::try_from(host.clone())
        .unwrap_or_else(|_| ServerName::try_from("localhost".to_string()).expect("static name"));
    let connector = tokio_rustls::TlsConnector::from(config);
    let tls = match tokio::time::timeout(t, connector.connect(name, plain.into_inner())).await {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => {
            let why = e.to_string();
            let ours = why.contains("alert") && client_cert_alert(&why);
            if ours {
                p.report.client_certificate = Some(format!("refused by the peer ({why})"));
            }
            return p.fail(
                "tls",
                format!("handshake failed: {why}"),
                if ours {
                    format!("the peer refused our client certificate: {why}")
                } else {
                    format!("TLS handshake failed: {why}")
                },
            );
        }
        Err(_) => return p.fail("tls", "handshake timed out", "TLS handshake timed out"),
    };
    let (version, cipher, chain) = {
        let c = tls.get_ref().1;
        let d = crate::tls::describe(c);
        let (v, s) = d.split_once(" with cipher ").unwrap_or((d.as_str(), ""));
        (
            v.to_string(),
            s.to_string(),
            c.peer_certificates()
                .map(|c| c.iter().map(|x| x.clone().into_owned()).collect::<Vec<_>>())
                .unwrap_or_default(),
        )
    };
    p.step("tls", true, format!("{version}, cipher {cipher}"));
    p.report.tls_version = Some(version);
    p.report.cipher = Some(cipher);

    // 4. The chain, each certificate with its revocation status under our CRLs.
    for (i, c) in chain.iter().enumerate() {
        let info = cert_info(c, &ctx.crls);
        p.step(
            &format!("chain[{i}]"),
            !info.revocation.starts_with("REVOKED"),
            format!(
                "{} (issuer {}; valid {} to {}; {})",
                info.subject, info.issuer, info.not_before, info.not_after, info.revocation
            ),
        );
        p.report.chain.push(info);
    }
    let mut verdict: Option<String> = None;
    match ctx.validator.validate(&chain, PeerRole::Server) {
        Ok(()) => p.step(
            "certificate",
            true,
            "valid: chains to tls.trust_anchors, in its validity period, serverAuth, not revoked",
        ),
        Err(why) => {
            p.step("certificate", false, why.to_string());
            verdict = Some(format!("peer certificate refused: {why}"));
        }
    }

    // 5. The DN pin.
    if let (Some(d), Some(leaf)) = (&domain, chain.first()) {
        let check = dn_check(&ctx.whitelist, d, leaf.as_ref());
        let detail = if check.declared {
            format!("{} is declared for {d}", check.subject)
        } else if check.declared_dns.is_empty() {
            format!("{d} is not declared in the whitelist at all")
        } else {
            format!(
                "{} is not declared for {d}; closest declared DN {} (differs in {})",
                check.subject,
                check.closest.as_deref().unwrap_or("?"),
                check.differs_in.join(", ")
            )
        };
        p.step("whitelist", check.declared, detail);
        if !check.declared && verdict.is_none() {
            verdict = Some(if check.declared_dns.is_empty() {
                format!("{d} is not declared in the MSSante whitelist")
            } else {
                format!(
                    "peer certificate DN \"{}\" is not declared in the MSSante whitelist for {d}",
                    check.subject
                )
            });
        }
        p.report.dn = Some(check);
    }

    // 6. Does the peer accept us? EHLO again, MAIL FROM:<>, RCPT TO, then RSET and QUIT.
    let mut s = BufReader::new(tls);
    let session = smtp_after_tls(&mut p, &mut s, ctx, o).await;
    let _ = command(&mut s, "QUIT", t).await;
    let _ = s.get_mut().shutdown().await;
    if let Err(why) = session {
        if verdict.is_none() {
            verdict = Some(why);
        }
    }
    p.report.ok = verdict.is_none();
    p.report.verdict = verdict.unwrap_or_else(|| {
        format!(
            "delivery{} via {host} would succeed",
            domain
                .as_deref()
                .map(|d| format!(" to {d}"))
                .unwrap_or_default()
        )
    });
    p.report
}

async fn smtp_after_tls<S: AsyncRead + AsyncWrite + Unpin>(
    p: &mut Probe,
    s: &mut BufReader<S>,
    ctx: &ProbeContext,
    o: &ProbeOptions,
) -> Result<(), String> {
    let t = o.timeout;
    let ehlo = format!("EHLO {}", ctx.hostname);
    match command(s, &ehlo, t).await {
        Ok((250, _)) => p.step("ehlo", true, "250 (after TLS)"),
        Ok((code, text)) => {
            let reply = format!("{code} {}", first_line(&text));
            p.step("ehlo", false, reply.clone());
            return Err(refusal(p, "EHLO after TLS", &reply));
        }
        Err(e) => {
            p.step("ehlo", false, e.clone());
            let why = if client_cert_alert(&e) {
                p.report.client_certificate = Some(format!("refused by the peer ({e})"));
                format!("the peer refused our client certificate: {e}")
            } else {
                format!("the peer closed the session after TLS: {e}")
            };
            return Err(why);
        }
    }
    match command(s, "MAIL FROM:<>", t).await {
        Ok((250, text)) => {
            p.report.client_certificate = Some("accepted (MAIL FROM answered 250)".into());
            p.step("mail", true, format!("250 {}", first_line(&text)));
        }
        Ok((code, text)) => {
            let reply = format!("{code} {}", first_line(&text));
            p.step("mail", false, reply.clone());
            return Err(refusal(p, "MAIL FROM:<>", &reply));
        }
        Err(e) => {
            p.step("mail", false, e.clone());
            return Err(format!("MAIL FROM: {e}"));
        }
    }
    if let Some(r) = &o.rcpt {
        let cmd = format!("RCPT TO:<{}>", r.trim().trim_matches(['<', '>']));
        match command(s, &cmd, t).await {
            Ok((c, text)) if c == 250 || c == 251 => {
                p.step("rcpt", true, format!("{c} {}", first_line(&text)))
            }
            Ok((code, text)) => {
                p.step("rcpt", false, format!("{code} {}", first_line(&text)));
                let _ = command(s, "RSET", t).await;
                return Err(format!(
                    "the peer refused RCPT TO:<{r}>: {code} {}",
                    first_line(&text)
                ));
            }
            Err(e) => {
                p.step("rcpt", false, e.clone());
                return Err(format!("RCPT TO: {e}"));
            }
        }
    }
    match command(s, "RSET", t).await {
        Ok((250, _)) => p.step("rset", true, "250, nothing sent"),
        Ok((code, text)) => p.step("rset", false, format!("{code} {}", first_line(&text))),
        Err(e) => p.step("rset", false, e),
    }
    Ok(())
}

/// The verdict for a refusal after TLS: a reply that names a certificate (Postfix's `421 4.7.1
/// Client certificate not trusted`, passerelle's `550 5.7.1 ... client certificate refused`)
/// is our certificate refused; anything else is the command refused.
fn refusal(p: &mut Probe, what: &str, reply: &str) -> String {
    if reply.to_ascii_lowercase().contains("certificate") {
        p.report.client_certificate = Some(format!("refused by the peer: {reply}"));
        format!("the peer refused our client certificate: {reply}")
    } else {
        format!("the peer refused {what}: {reply}")
    }
}

/// A TLS alert that says the peer did not like our certificate.
fn client_cert_alert(e: &str) -> bool {
    let e = e.to_ascii_lowercase();
    [
        "certificaterequired",
        "badcertificate",
        "unknownca",
        "certificateunknown",
        "unsupportedcertificate",
        "certificateexpired",
        "certificaterevoked",
        "accessdenied",
        "handshakefailure",
    ]
    .iter()
    .any(|a| e.replace(['_', ' '], "").contains(a))
}

fn first_line(s: &str) -> &str {
    s.lines().next().unwrap_or("")
}

/// Writes a command, reads its reply.
async fn command<S: AsyncRead + AsyncWrite + Unpin>(
    s: &mut BufReader<S>,
    line: &str,
    t: Duration,
) -> Result<(u16, String), String> {
    let w = async {
        s.get_mut()
            .write_all(format!("{line}\r\n").as_bytes())
            .await?;
        s.get_mut().flush().await
    };
    match tokio::time::timeout(t, w).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => return Err(e.to_string()),
        Err(_) => return Err("timed out writing".into()),
    }
    read_reply(s, t).await
}

/// One SMTP reply: its code and its lines' texts joined by `\n`. Bounded (100 lines of 4 KiB).
async fn read_reply<S: AsyncRead + Unpin>(
    s: &mut BufReader<S>,
    t: Duration,
) -> Result<(u16, String), String> {
    let mut text = String::new();
    for _ in 0..100 {
        let mut line = Vec::new();
        let n = match tokio::time::timeout(t, (&mut *s).take(4096).read_until(b'\n', &mut line))
            .await
        {
            Ok(Ok(n)) => n,
            Ok(Err(e)) => return Err(e.to_string()),
            Err(_) => return Err("timed out waiting for a reply".into()),
        };
        if n == 0 {
            return Err("connection closed by the peer".into());
        }
        let l = String::from_utf8_lossy(&line);
        let l = l.trim_end_matches(['\r', '\n']);
        let code = l
            .get(..3)
            .and_then(|c| c.parse::<u16>().ok())
            .ok_or_else(|| format!("not an SMTP reply: {l:?}"))?;
        if !text.is_empty() {
            text.push('\n');
        }
        text.push_str(l.get(4..).unwrap_or(""));
        match l.as_bytes().get(3) {
            Some(b'-') => continue,
            _ => return Ok((code, text)),
        }
    }
    Err("reply longer than 100 lines".into())
}

/// Subject, issuer, validity and revocation status (by our CRLs) of one certificate.
fn cert_info(c: &CertificateDer<'_>, crls: &crate::tls::CrlSet) -> CertInfo {
    let Ok((_, x)) = x509_parser::parse_x509_certificate(c.as_ref()) else {
        return CertInfo {
            subject: "(unreadable certificate)".into(),
            issuer: String::new(),
            not_before: String::new(),
            not_after: String::new(),
            revocation: "unknown".into(),
        };
    };
    let name =
        |n: &x509_parser::x509::X509Name<'_>| crate::pki::dn::Dn::from_x509_subject(n).to_string();
    let mut revocation = "no CRL for its issuer".to_string();
    for crl in crls.der() {
        let Ok((_, l)) = x509_parser::parse_x509_crl(crl.as_ref()) else {
            continue;
        };
        if l.issuer().as_raw() != x.issuer().as_raw() {
            continue;
        }
        let serial = x.raw_serial();
        revocation = if l
            .iter_revoked_certificates()
            .any(|r| r.raw_serial() == serial)
        {
            format!("REVOKED (CRL of {})", name(l.issuer()))
        } else {
            format!(
                "not revoked (CRL of {}, next update {})",
                name(l.issuer()),
                l.next_update().map(|t| t.to_string()).unwrap_or("-".into())
            )
        };
        break;
    }
    CertInfo {
        subject: name(x.subject()),
        issuer: name(x.issuer()),
        not_before: x.validity().not_before.to_string(),
        not_after: x.validity().not_after.to_string(),
        revocation,
    }
}

/// The leaf's DN against the whitelist entries of `domain`, with the closest declared DN.
pub fn dn_check(wl: &Whitelist, domain: &str, leaf_der: &[u8]) -> DnCheck {
    let subject = crate::pki::subject_dn_rfc4514(leaf_der).unwrap_or_default();
    let entries = wl.entries(domain);
    let peer = Dn::from_cert_der(leaf_der).ok();
    let declared = peer.as_ref().is_some_and(|d| wl.dn_allowed(domain, d));
    let mut closest = None;
    let mut differs_in = Vec::new();
    if !declared {
        if let Some(peer) = &peer {
            if let Some((e, (_, diff))) = entries
                .iter()
                .map(|e| (e, e.dn_norm.closeness(peer)))
                .max_by_key(|(_, (score, _))| *score)
            {
                closest = Some(e.dn.clone());
                differs_in = diff;
            }
        }
    }
    DnCheck {
        domain: domain.to_string(),
        subject,
        declared,
        declared_dns: entries.iter().map(|e| e.dn.clone()).collect(),
        closest,
        differs_in,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn replies_are_read_bounded() {
        let data: &[u8] = b"250-first\r\n250-PIPELINING\r\n250 STARTTLS\r\n554 no\r\nxyz\r\n";
        let mut r = BufReader::new(data);
        let t = Duration::from_secs(1);
        let (c, text) = read_reply(&mut r, t).await.unwrap();
        assert_eq!(c, 250);
        assert_eq!(text, "first\nPIPELINING\nSTARTTLS");
        assert_eq!(read_reply(&mut r, t).await.unwrap(), (554, "no".into()));
        assert!(read_reply(&mut r, t)
            .await
            .unwrap_err()
            .starts_with("not an SMTP reply"));
        assert_eq!(
            read_reply(&mut r, t).await.unwrap_err(),
            "connection closed by the peer"
        );
        let long = "250-x\r\n".repeat(200);
        let mut r = BufReader::new(long.as_bytes());
        assert!(read_reply(&mut r, t).await.is_err());
    }

    #[test]
    fn closest_dn() {
        let xml = r#"<ListeBlancheMSSante xmlns="https://listeblanche.mssante.fr/schema"><ListeDomaines>
<Domaine><Nom>d.mssante.fr</Nom><DNCertificatOperateur>CN=mx.op.fr,OU=1,O=OP,ST=Paris (75),C=FR</DNCertificatOperateur></Domaine>
<Domaine><Nom>d.mssante.fr</Nom><DNCertificatOperateur>CN=other.fr,OU=9,O=X,C=FR</DNCertificatOperateur></Domaine>
</ListeDomaines></ListeBlancheMSSante>"#;
        let wl = Whitelist::parse(xml, "t").unwrap();
        let a = Dn::parse_rfc4514("CN=mx.op.fr,OU=2,O=EVIL,ST=Paris (75),C=FR").unwrap();
        let declared = Dn::parse_rfc4514("CN=mx.op.fr,OU=1,O=OP,ST=Paris (75),C=FR").unwrap();
        let (score, diff) = declared.closeness(&a);
        assert_eq!(score, 3);
        assert_eq!(diff, vec!["OU".to_string(), "O".to_string()]);
        let (score, diff) = declared.closeness(&declared);
        assert_eq!((score, diff.len()), (5, 0));
        assert!(!wl.dn_allowed("d.mssante.fr", &a));
    }
}
