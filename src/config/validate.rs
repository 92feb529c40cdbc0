//! What one part of the config says about another: names that must exist, sections a setting
//! needs, addresses two listeners cannot share. Values themselves were checked when parsed.

use super::{ClientCert, Config, DirectorySource, Problem, RouteTarget, StartTls, TlsPolicy};

/// Every cross-reference problem (errors) and suspicious setting (warnings), unlocated.
/// A bound on a file from outside: zero would refuse every file (at least 1 KiB), and one past
/// 16 GiB is no bound on a gateway's memory.
fn size_bound(p: &mut Vec<Problem>, key: &str, v: u64) {
    if !(1 << 10..=16 << 30).contains(&v) {
        p.push(Problem::error(
            key,
            format!("{v} bytes: give a size between 1024 and 17179869184 bytes (16 GiB)"),
        ));
    }
}

pub fn validate(c: &Config) -> Vec<Problem> {
    let mut p = Vec::new();
    if c.server.hostname.trim().is_empty() {
        p.push(Problem::error("server.hostname", "must not be empty"));
    }
    if c.listener.is_empty() {
        p.push(Problem::error(
            "listener",
            "at least one [[listener]] is needed",
        ));
    }
    let route_names: Vec<&str> = c.route.iter().map(|r| r.name.as_str()).collect();
    for (i, l) in c.listener.iter().enumerate() {
        let key = format!("listener[{i}] ({})", l.name);
        if l.routes.is_empty() {
            p.push(Problem::error(
                format!("{key}.routes"),
                "empty: every recipient would be refused",
            ));
        }
        for r in &l.routes {
            if r == super::establishment::BUILTIN_ROUTE {
                if c.establishment.is_empty() {
                    p.push(Problem::warning(
                        format!("{key}.routes"),
                        "route \"establishments\" matches nothing: no establishment is declared",
                    ));
                }
                continue;
            }
            if !route_names.contains(&r.as_str()) {
                p.push(Problem::error(
                    format!("{key}.routes"),
                    format!("no [[route]] named {r:?}"),
                ));
            }
        }
        if (l.starttls != StartTls::Off || l.client_certificate != ClientCert::Off)
            && c.tls.is_none()
        {
            p.push(Problem::error(
                format!("{key}.starttls"),
                "needs a [tls] section",
            ));
        }
        if l.client_certificate != ClientCert::Off && l.starttls == StartTls::Off {
            p.push(Problem::error(
                format!("{key}.client_certificate"),
                "needs starttls = \"offer\" or \"require\"",
            ));
        }
        if l.establishments && !l.clients.is_empty() {
            p.push(Problem::warning(
                format!("{key}.clients"),
                "not used with establishments = true: each establishment's clients and client_dns say who may connect",
            ));
        }
        if !l.client_dns.is_empty() && l.client_certificate == ClientCert::Off {
            p.push(Problem::error(
                format!("{key}.client_dns"),
                "needs client_certificate = \"request\" or \"require\"",
            ));
        }
        if let Some(j) = c.listener[..i].iter().position(|o| o.name == l.name) {
            p.push(Problem::error(
                format!("{key}.name"),
                format!("{:?} is already the name of listener[{j}]", l.name),
            ));
        }
        if let Some(j) = c.listener[..i]
            .iter()
            .position(|o| same_socket(o.address, l.address))
        {
            p.push(Problem::error(
                format!("{key}.address"),
                format!(
                    "{} is already the address of listener[{j}] ({}); serve could not bind both",
                    l.address, c.listener[j].name
                ),
            ));
        }
    }
    if let Some(admin) = c.server.admin {
        if let Some(l) = c.listener.iter().find(|l| same_socket(l.address, admin)) {
            p.push(Problem::error(
                "server.admin",
                format!("{admin} is also the address of listener {}", l.name),
            ));
        }
    }
    for (i, r) in c.route.iter().enumerate() {
        let key = format!("route[{i}] ({})", r.name);
        if let RouteTarget::Transport(t) = &r.target {
            if !c.transport.contains_key(t) {
                p.push(Problem::error(
                    format!("{key}.transport"),
                    format!("no [transport.{t}]"),
                ));
            }
        }
        if r.whitelist && c.whitelist.is_none() {
            p.push(Problem::error(
                format!("{key}.whitelist"),
                "needs a [whitelist] section",
            ));
        }
        if r.directory && c.directory.source == DirectorySource::None {
            p.push(Problem::error(
                format!("{key}.directory"),
                "directory.kind is \"none\"; every recipient would be unknown",
            ));
        }
        if r.name == super::establishment::BUILTIN_ROUTE {
            p.push(Problem::error(
                format!("{key}.name"),
                "\"establishments\" is the built-in route of the establishments; choose another name",
            ));
        }
        if route_names[..i].contains(&r.name.as_str()) {
            p.push(Problem::error(
                format!("{key}.name"),
                format!("{:?} is already the name of another route", r.name),
            ));
        }
        if !c.listener.iter().any(|l| l.routes.contains(&r.name)) {
            p.push(Problem::warning(
                format!("{key}.name"),
                format!(
                    "route {:?} is not in any listener's routes: it is never used",
                    r.name
                ),
            ));
        }
    }
    for (name, t) in &c.transport {
        if matches!(t.tls, TlsPolicy::Required | TlsPolicy::Mutual) && c.tls.is_none() {
            p.push(Problem::error(
                format!("transport.{name}.tls"),
                "needs a [tls] section",
            ));
        }
    }
    if c.server.runtime_threads > super::MAX_RUNTIME_THREADS {
        p.push(Problem::error(
            "server.runtime_threads",
            format!("at most {}", super::MAX_RUNTIME_THREADS),
        ));
    }
    let q = &c.queue;
    if q.retry.is_empty() {
        p.push(Problem::error("queue.retry", "at least one interval"));
    }
    if q.retry.iter().any(|d| d.is_zero()) {
        p.push(Problem::error("queue.retry", "intervals must be positive"));
    }
    if q.destination_concurrency == 0 {
        p.push(Problem::error(
            "queue.destination_concurrency",
            "must be at least 1",
        ));
    }
    if q.max_deliveries == 0 {
        p.push(Problem::error("queue.max_deliveries", "must be at least 1"));
    }
    if c.smtp.command_line_limit < 512 {
        p.push(Problem::error(
            "smtp.command_line_limit",
            "RFC 5321 needs at least 512",
        ));
    }
    for (k, v) in [
        ("smtp.unattributed_share", c.smtp.unattributed_share),
        ("smtp.stress_threshold", c.smtp.stress_threshold),
    ] {
        if !(1..=100).contains(&v) {
            p.push(Problem::error(k, "a percentage from 1 to 100"));
        }
    }
    if c.smtp.network_prefix_v4 > 32 {
        p.push(Problem::error("smtp.network_prefix_v4", "at most 32"));
    }
    if c.smtp.network_prefix_v6 > 128 {
        p.push(Problem::error("smtp.network_prefix_v6", "at most 128"));
    }
    if c.smtp.line_length_limit < 1000 {
        p.push(Problem::error(
            "smtp.line_length_limit",
            "RFC 5321 needs at least 1000",
        ));
    }
    if let Some(tls) = c.tls.as_ref().filter(|t| t.pending_dev_pki().is_none()) {
        for (k, f) in [
            ("tls.certificate", Some(&tls.certificate)),
            ("tls.private_key", Some(&tls.private_key)),
            ("tls.trust_anchors", tls.trust_anchors.as_ref()),
        ] {
            if let Some(f) = f {
                if !f.exists() {
                    p.push(Problem::error(k, format!("{} does not exist", f.display())));
                }
            }
        }
    }
    if let Some(w) = &c.whitelist {
        if w.signature_required() && w.signer_anchors.is_none() {
            p.push(Problem::error(
                "whitelist.require_signature",
                "needs whitelist.signer_anchors (the IGC-Santé certificates)",
            ));
        }
        if let Some(a) = w.signer_anchors.as_ref().filter(|a| !a.exists()) {
            p.push(Problem::error(
                "whitelist.signer_anchors",
                format!("{} does not exist", a.display()),
            ));
        }
        if w.url.is_some() && w.refresh.is_zero() {
            p.push(Problem::error("whitelist.refresh", "must be positive"));
        }
        size_bound(&mut p, "whitelist.max_size", w.max_size);
    }
    if let crate::config::DirectorySource::Extract { max_size, .. } = &c.directory.source {
        size_bound(&mut p, "directory.max_size", *max_size);
    }
    if let Some(s) = &c.directory.sync {
        size_bound(&mut p, "directory.sync.max_size", s.max_size);
    }
    if let Some(t) = &c.tls {
        if !t.crl_urls.is_empty() && t.crl_urls.len() != t.crls.len() {
            p.push(Problem::error(
                "tls.crl_urls",
                format!(
                    "{} URLs for {} files in tls.crls; give one URL per file, same order",
                    t.crl_urls.len(),
                    t.crls.len()
                ),
            ));
        }
        if !t.crl_urls.is_empty() && t.crl_refresh.is_zero() {
            p.push(Problem::error("tls.crl_refresh", "must be positive"));
        }
        size_bound(&mut p, "tls.crl_max_size", t.crl_max_size);
    }
    if l_establishments_without_any(c) {
        p.push(Problem::warning(
            "listener",
            "a listener has establishments = true but no establishment is declared: every client would be refused",
        ));
    }
    p.extend(super::establishment::validate(
        &c.establishment,
        c.tls.is_some(),
    ));
    for line in c.state.validate() {
        let (key, msg) = line.split_once(": ").unwrap_or(("state", &line));
        p.push(Problem::error(key, msg));
    }
    for line in c.journal.validate() {
        let (key, msg) = line.split_once(": ").unwrap_or(("journal", &line));
        p.push(Problem::error(key, msg));
    }
    if let Some(sync) = &c.directory.sync {
        let anchors = c.tls.as_ref().is_some_and(|t| t.trust_anchors.is_some());
        for line in sync.validate(anchors) {
            let (key, msg) = line.split_once(": ").unwrap_or(("directory.sync", &line));
            p.push(Problem::error(key, msg));
        }
    }
    if let DirectorySource::Ldap(l) = &c.directory.source {
        if l.uses_tls()
            && c.tls
                .as_ref()
                .and_then(|t| t.trust_anchors.as_ref())
                .is_none()
        {
            p.push(Problem::error(
                "directory.starttls",
                "needs tls.trust_anchors to verify the LDAP server",
            ));
        }
    }
    super::console::validate(c, &mut p);
    p
}

/// A listener attributes sessions to establishments, and there are none.
/// Weak trust defaults, said by `check-config` (and refused under `--strict`): allowed for a
/// test bed or a first hour, never silent. Not part of [`validate`]: every CLI verb would
/// repeat them.
pub fn trust_warnings(c: &Config) -> Vec<Problem> {
    let mut p = Vec::new();
    if let Some(w) = &c.whitelist {
        if !w.signature_required() {
            p.push(Problem::warning(
                "whitelist.signer_anchors",
                "unset: the list's signature is not checked, whoever can replace the file decides the trust space",
            ));
        } else if w.signer_dns.is_empty() {
            p.push(Problem::warning(
                "whitelist.signer_dns",
                "empty: any certificate chaining to signer_anchors may sign the list; name the ANS signer",
            ));
        }
    }
    p
}

fn l_establishments_without_any(c: &Config) -> bool {
    c.establishment.is_empty() && c.listener.iter().any(|l| l.establishments)
}

/// Two addresses that one bind would make collide (0.0.0.0 covers every IPv4 address).
pub(super) fn same_socket(a: std::net::SocketAddr, b: std::net::SocketAddr) -> bool {
    a.port() == b.port()
        && (a.ip() == b.ip()
            || (a.is_ipv4() == b.is_ipv4() && (a.ip().is_unspecified() || b.ip().is_unspecified())))
}

#[cfg(test)]
mod tests {
    use super::super::tests::MIN;
    use super::super::{Config, Severity};

    fn problems(text: &str) -> Vec<(Severity, String)> {
        let c = match Config::from_toml_str(text, "t.toml") {
            Ok(p) => p.config,
            Err(e) => panic!("{e}"),
        };
        c.validate()
            .into_iter()
            .map(|p| (p.severity, format!("{}: {}", p.key, p.message)))
            .collect()
    }

    #[test]
    fn two_listeners_on_one_address() {
        let text = format!(
            "{MIN}[[listener]]\nname = \"two\"\naddress = \"0.0.0.0:2525\"\nroutes = [\"a\"]\nstarttls = \"off\"\n"
        );
        let p = problems(&text);
        assert!(
            p.iter().any(|(s, m)| *s == Severity::Error
                && m.starts_with(
                    "listener[1] (two).address: 0.0.0.0:2525 is already the address of listener[0]"
                )),
            "{p:?}"
        );
    }

    #[test]
    fn the_builtin_route_needs_no_route_table_and_cannot_be_redefined() {
        let est = "[[establishment]]\nname = \"chu-a\"\ndomains = [\"chu-a.mssante.fr\"]\nclients = [\"10.1.0.0/24\"]\nmailbox = \"10.1.0.25:25\"\n";
        let text = MIN.replace(
            "routes = [\"a\", \"others\"]",
            "routes = [\"establishments\", \"a\", \"others\"]\nestablishments = true",
        ) + est;
        let p = problems(&text);
        assert_eq!(
            p,
            vec![(
                Severity::Warning,
                "listener[0] (etab).clients: not used with establishments = true: each establishment's clients and client_dns say who may connect".to_string()
            )]
        );
        let text = format!(
            "{text}[[route]]\nname = \"establishments\"\ndomains = [\"x.fr\"]\ntransport = \"t\"\n"
        );
        let p = problems(&text);
        assert!(
            p.iter()
                .any(|(s, m)| *s == Severity::Error && m.contains("is the built-in route")),
            "{p:?}"
        );
    }

    #[test]
    fn unused_route_is_a_warning() {
        let text =
            format!("{MIN}[[route]]\nname = \"lost\"\ndomains = [\"x.fr\"]\ntransport = \"t\"\n");
        let p = problems(&text);
        assert_eq!(
            p,
            vec![(
                Severity::Warning,
                "route[2] (lost).name: route \"lost\" is not in any listener's routes: it is never used"
                    .to_string()
            )]
        );
    }

    #[test]
    fn download_keys() {
        let text = std::fs::read_to_string(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/config/passerelle.toml"
        ))
        .unwrap();
        let mut c = Config::from_toml_str(&text, "t").unwrap().config;
        if let Some(t) = c.tls.as_mut() {
            t.crl_urls = vec!["http://x/a.crl".into()];
        }
        if let Some(w) = c.whitelist.as_mut() {
            w.require_signature = Some(true);
            w.url = Some("https://example.test/l.xml".into());
        }
        let p: Vec<String> = c.validate().iter().map(|p| p.to_string()).collect();
        assert!(
            p.iter()
                .any(|l| l.starts_with("whitelist.require_signature: needs")),
            "{p:?}"
        );
        assert!(
            p.iter()
                .any(|l| l.starts_with("tls.crl_urls: 1 URLs for 2 files")),
            "{p:?}"
        );
        let bad = text.replace("[whitelist]", "[whitelist]\nurl = \"ftp://x/l.xml\"");
        let e = Config::from_toml_str(&bad, "t")
            .err()
            .map(|e| e.to_string());
        assert!(
            e.as_deref()
                .is_some_and(|e| e.contains("whitelist.url: \"ftp://x/l.xml\" is not an http")),
            "{e:?}"
        );
    }
}
