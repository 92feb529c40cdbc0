//! Unit tests of `mod.rs` (kept apart so the code reads on its own).

use super::*;

pub(crate) const MIN: &str = r#"
[server]
hostname = "gw.test"
spool = "/tmp/x"
[[listener]]
name = "etab"
address = "127.0.0.1:2525"
clients = ["127.0.0.0/8"]
starttls = "off"
routes = ["a", "others"]
[[route]]
name = "a"
domains = ["*.mssante.fr"]
transport = "t"
[[route]]
name = "others"
domains = ["*"]
reject = "550 5.7.1 no"
[transport.t]
kind = "relay"
next_hop = "127.0.0.1:10026"
tls = "none"
[queue]
retry = ["1s", "5m"]
lifetime = "5d"
delay_warning = "0"
"#;

fn parse(text: &str) -> Result<Config, Vec<String>> {
    match Config::from_toml_str(text, "t.toml") {
        Ok(p) => Ok(p.config),
        Err(ConfigError::Invalid(ps)) => Err(ps.iter().map(|p| p.to_string()).collect()),
        Err(e) => Err(vec![e.to_string()]),
    }
}

fn errors(c: &Config) -> Vec<String> {
    c.validate()
        .iter()
        .filter(|p| p.severity == Severity::Error)
        .map(|p| p.to_string())
        .collect()
}

#[test]
fn parses_minimal() {
    let c = parse(MIN).unwrap();
    assert!(errors(&c).is_empty(), "{:?}", errors(&c));
    assert_eq!(c.queue.retry_after(1), Duration::from_secs(1));
    assert_eq!(c.queue.retry_after(9), Duration::from_secs(300));
    assert_eq!(c.queue.delay_warning, Duration::ZERO);
    assert_eq!(c.smtp.recipient_limit, 1000);
    assert_eq!(
        c.transport["t"].hop,
        NextHop::Relay("127.0.0.1:10026".parse().unwrap())
    );
    assert_eq!(
        c.route[1].target,
        RouteTarget::Reject(Reply::new(550, "5.7.1", "no"))
    );
    assert!(c.listener[0].admits("127.0.0.2".parse().unwrap()));
    assert!(!c.listener[0].admits("10.0.0.1".parse().unwrap()));
}

#[test]
fn reports_dangling_references() {
    let bad = MIN.replace("transport = \"t\"", "transport = \"nope\"");
    let c = parse(&bad).unwrap();
    let p = errors(&c);
    assert!(p.iter().any(|l| l.contains("no [transport.nope]")), "{p:?}");
}

#[test]
fn bad_values_name_their_key_and_line() {
    let bad = MIN.replace("lifetime = \"5d\"", "lifetime = \"five days\"");
    let e = parse(&bad).unwrap_err();
    assert_eq!(e.len(), 1, "{e:?}");
    assert!(
        e[0].starts_with("t.toml:25: queue.lifetime: \"five days\" is not a duration"),
        "{e:?}"
    );
    let bad = MIN.replace("tls = \"none\"", "tls = \"mutal\"");
    let e = parse(&bad).unwrap_err();
    assert_eq!(
            e,
            vec![
                "t.toml:22: transport.t.tls: \"mutal\" is not one of none, opportunistic, required, mutual"
            ]
        );
    let bad = MIN.replace("reject = \"550 5.7.1 no\"", "reject = \"250 2.0.0 ok\"");
    let e = parse(&bad).unwrap_err();
    assert!(e[0].starts_with("t.toml:18: route[1].reject: "), "{e:?}");
    assert!(e[0].contains("4xx or 5xx"), "{e:?}");
    let bad = MIN.replace("127.0.0.0/8", "127.0.0.0/99");
    let e = parse(&bad).unwrap_err();
    assert!(e[0].starts_with("t.toml:8: listener[0].clients: "), "{e:?}");
    let bad = MIN.replace("next_hop = \"127.0.0.1:10026\"\n", "");
    let e = parse(&bad).unwrap_err();
    assert_eq!(
        e,
        vec!["t.toml:19: transport.t: next_hop: required for kind = \"relay\""]
    );
    let bad = MIN.replace("hostname = \"gw.test\"\n", "");
    let e = parse(&bad).unwrap_err();
    assert_eq!(e, vec!["t.toml:2: server.hostname: required"]);
}

#[test]
fn unknown_keys_are_warnings_with_lines() {
    let text = MIN.replace("spool = \"/tmp/x\"", "spool = \"/tmp/x\"\nhostnme = \"y\"")
        + "[ smtp ]\ntimeout = \"1m\"\ntimout = \"2m\"\n";
    let p = Config::from_toml_str(&text, "t.toml");
    let w: Vec<String> = match p {
        Ok(p) => p.warnings.iter().map(|w| w.to_string()).collect(),
        Err(e) => panic!("{e}"),
    };
    assert!(
        w.contains(&"t.toml:5: server.hostnme: unknown key (typo?), ignored".to_string()),
        "{w:?}"
    );
    assert!(
        w.contains(&"t.toml:30: smtp.timout: unknown key (typo?), ignored".to_string()),
        "{w:?}"
    );
}

#[test]
fn directory_kinds_are_checked_when_read() {
    let text = format!("{MIN}[directory]\nkind = \"ldap\"\nurl = \"http://x\"\nbase = \"dc=x\"\n");
    let e = parse(&text).unwrap_err();
    assert!(
        e[0].contains("directory: url: \"http://x\" is not an ldap://"),
        "{e:?}"
    );
    let text = format!("{MIN}[directory]\nkind = \"extract\"\nfile = \"x.txt\"\n");
    let c = parse(&text).unwrap();
    assert_eq!(
        c.directory.source,
        DirectorySource::Extract {
            file: "x.txt".into(),
            max_size: crate::util::fs::DEFAULT_MAX_EXTRACT_BYTES,
        }
    );
}

#[test]
fn runtime_threads_are_one_per_core_unless_set() {
    use super::{runtime_threads, MAX_RUNTIME_THREADS};
    assert_eq!(runtime_threads(0, 0), 1);
    assert_eq!(runtime_threads(0, 2), 2);
    assert_eq!(runtime_threads(0, 8), 8);
    assert_eq!(runtime_threads(1, 2), 1);
    assert_eq!(runtime_threads(3, 2), 3, "the setting wins");
    assert_eq!(runtime_threads(5000, 2), MAX_RUNTIME_THREADS);
    let c = parse(MIN).unwrap();
    assert_eq!(c.server.runtime_threads, 0, "default: from the cores");
    let text = MIN.replacen("[server]\n", "[server]\nruntime_threads = 2000\n", 1);
    let c = parse(&text).unwrap();
    assert!(
        c.validate().iter().any(|p| p
            .to_string()
            .contains("server.runtime_threads: at most 1024")),
        "{:?}",
        c.validate()
    );
    let text = MIN.replacen("[server]\n", "[server]\nruntime_threads = -1\n", 1);
    assert!(parse(&text).is_err(), "negative refused");
}
