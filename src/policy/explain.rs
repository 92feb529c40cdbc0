//! `passerelle route test` and the console's route test page: the RCPT decision for one
//! address, with every step that led to it. One explanation, two renderings (text lines for
//! the CLI, a page for the console), so both show what the server does.

use super::{parse_path, Address, Owner, Policy, RcptDecision, RouteTarget};
use crate::config::establishment::BUILTIN_ROUTE;
use crate::config::{Config, NextHop, TlsPolicy};
use std::fmt;

/// One step of an explanation. `Display` is the CLI's line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// The address cannot be a recipient (open-relay guard, syntax).
    Refused(String),
    NoMatch {
        route: String,
        domain: String,
    },
    Matched {
        route: String,
        pattern: String,
    },
    Transport {
        name: String,
        /// "relay to HOST:PORT" or "MX of DOMAIN on port N".
        hop: String,
        /// The same in the JSON's short form: "HOST:PORT" or "MX of DOMAIN:N".
        next_hop: String,
        tls: TlsPolicy,
    },
    /// The transport authenticates the peer by the whitelist DNs below.
    MutualTls,
    NotDeclared {
        domain: String,
    },
    Declared {
        domain: String,
        dn: String,
    },
    Accepted {
        route: String,
        transport: String,
        bal_type: Option<String>,
    },
    Rejected(String),
    /// The built-in route `establishments`: who owns the address, and why.
    Owner(String),
    /// With `--from`: what the sender checks and the notifications route say of the sender.
    Sender(String),
}

impl fmt::Display for Step {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Step::Refused(why) => write!(f, "refused: {why}"),
            Step::NoMatch { route, domain } => write!(f, "route {route}: no pattern matches {domain}"),
            Step::Matched { route, pattern } => write!(f, "route {route}: matched by pattern {pattern}"),
            Step::Transport { name, hop, tls, .. } => write!(f, "transport: {name} ({hop}), tls {}", tls.as_str()),
            Step::MutualTls => f.write_str("tls: the peer must show a valid, unrevoked certificate chaining to tls.trust_anchors whose subject DN is one of the whitelist DNs below"),
            Step::NotDeclared { domain } => write!(f, "whitelist: {domain} is not declared"),
            Step::Declared { domain, dn } => write!(f, "whitelist: {domain} declared with DN {dn}"),
            Step::Accepted { route, transport, bal_type } => write!(
                f,
                "verdict: accepted (route {route}, transport {transport}{})",
                bal_type.as_ref().map(|b| format!(", directory BAL type {b}")).unwrap_or_default()
            ),
            Step::Rejected(reply) => write!(f, "verdict: refused: {reply}"),
            Step::Owner(line) => f.write_str(line),
            Step::Sender(line) => write!(f, "sender: {line}"),
        }
    }
}

/// The explanation of one address on one listener.
#[derive(Debug, Clone)]
pub struct Explanation {
    pub listener: String,
    pub listener_address: String,
    pub steps: Vec<Step>,
    pub accepted: bool,
}

impl Explanation {
    /// The `--format json` form of `route test`: `address`, `listener`, `routes` (each route
    /// tried and the pattern that matched), `transport`, `whitelist`, `verdict` and `route`,
    /// `bal_type` or `reply`.
    pub fn to_json(&self, address: &str) -> serde_json::Value {
        use serde_json::{json, Map, Value};
        let mut m = Map::new();
        m.insert("address".into(), json!(address));
        m.insert(
            "listener".into(),
            json!({"name": self.listener, "address": self.listener_address}),
        );
        let mut routes = Vec::new();
        let mut dns: Vec<&str> = Vec::new();
        let mut wl_domain = None;
        let (mut owner, mut sender) = (Vec::new(), Vec::new());
        for step in &self.steps {
            match step {
                Step::Refused(why) | Step::Rejected(why) => {
                    m.insert("verdict".into(), json!("refused"));
                    m.insert("reply".into(), json!(why));
                }
                Step::NoMatch { route, .. } => {
                    routes.push(json!({"route": route, "matched": null}))
                }
                Step::Matched { route, pattern } => {
                    routes.push(json!({"route": route, "matched": pattern}))
                }
                Step::Transport {
                    name,
                    next_hop,
                    tls,
                    ..
                } => {
                    m.insert(
                        "transport".into(),
                        json!({"name": name, "next_hop": next_hop, "tls": tls.as_str()}),
                    );
                }
                Step::MutualTls => {}
                Step::Owner(line) => owner.push(line.as_str()),
                Step::Sender(line) => sender.push(line.as_str()),
                Step::NotDeclared { domain } => wl_domain = Some(domain),
                Step::Declared { domain, dn } => {
                    wl_domain = Some(domain);
                    dns.push(dn);
                }
                Step::Accepted {
                    route, bal_type, ..
                } => {
                    m.insert("verdict".into(), json!("accepted"));
                    m.insert("route".into(), json!(route));
                    m.insert("bal_type".into(), json!(bal_type));
                }
            }
        }
        if !routes.is_empty() {
            m.insert("routes".into(), Value::Array(routes));
        }
        if !owner.is_empty() {
            m.insert("establishment".into(), json!(owner));
        }
        if !sender.is_empty() {
            m.insert("sender".into(), json!(sender));
        }
        if let Some(d) = wl_domain {
            m.insert(
                "whitelist".into(),
                json!({"domain": d, "declared": !dns.is_empty(), "dns": dns}),
            );
        }
        Value::Object(m)
    }
}

/// The built-in route's view of `addr`: the establishments claiming its domain, the one that
/// owns the address and why (domain, structure, address), or why none does.
async fn owner_steps(policy: &Policy, addr: &Address) -> Vec<String> {
    let table = &policy.establishments;
    let structures = match policy.structures_of(addr).await {
        Ok(s) => s,
        Err(r) => return vec![format!("route {BUILTIN_ROUTE}: directory: {r}")],
    };
    let claimants: Vec<&str> = table
        .claimants(&addr.domain)
        .iter()
        .map(|e| e.name.as_str())
        .collect();
    let mut out = Vec::new();
    if claimants.len() > 1 {
        out.push(format!(
            "route {BUILTIN_ROUTE}: {} is shared by establishments {}; the directory gives structure(s) {}",
            addr.domain,
            claimants.join(", "),
            if structures.is_empty() {
                "none".to_string()
            } else {
                structures.join(", ")
            }
        ));
    }
    out.push(match table.owner(&addr.to_string(), &structures) {
        Owner::None => format!(
            "route {BUILTIN_ROUTE}: no establishment claims {}",
            addr.domain
        ),
        Owner::Owned(e, why) => format!(
            "route {BUILTIN_ROUTE}: establishment {} owns <{addr}> ({why}): its mailbox {} (tls {})",
            e.name,
            e.mailbox,
            e.mailbox_tls.as_str()
        ),
        Owner::Unowned { .. } => {
            format!("route {BUILTIN_ROUTE}: no establishment owns <{addr}> (550 5.1.1)")
        }
    });
    out
}

/// `route test --from`: which establishment may send as `from` (what MAIL FROM answers on a
/// listener with `establishments = true`), and where a notification to `from` would go.
async fn sender_steps(
    policy: &Policy,
    attributed: bool,
    order: &[String],
    from: &str,
) -> Vec<String> {
    let from = from.trim().trim_matches(['<', '>']);
    let mut out = Vec::new();
    let addr = match parse_path(from) {
        Ok(Some(a)) => a,
        Ok(None) => {
            out.push("<> (the null sender: notifications and MDNs) passes the envelope check; the From: header is checked after DATA".into());
            return out;
        }
        Err(e) => {
            out.push(format!("<{from}> is refused at MAIL: {e}"));
            return out;
        }
    };
    let table = &policy.establishments;
    if !table.is_empty() {
        let structures = policy.structures_of(&addr).await.unwrap_or_default();
        let own: Vec<&str> = table
            .all()
            .iter()
            .filter(|e| table.is_own(e, &addr.to_string(), &structures).is_ok())
            .map(|e| e.name.as_str())
            .collect();
        out.push(match (own.as_slice(), attributed) {
            ([], true) => format!(
                "<{addr}> is no establishment's: MAIL FROM is refused on this listener (550 5.7.1) whoever sends it"
            ),
            ([], false) => format!("<{addr}> is no establishment's (this listener does not attribute sessions)"),
            (names, true) => format!(
                "<{addr}> may be sent only by establishment {} (any other gets 550 5.7.1 at MAIL)",
                names.join(", ")
            ),
            (names, false) => format!(
                "<{addr}> is establishment {}'s (this listener does not attribute sessions)",
                names.join(", ")
            ),
        });
    }
    out.push(match policy.route_for(order, &addr.to_string()) {
        Some((route, transport)) => {
            format!("notifications to <{addr}> go by route {route}, transport {transport}")
        }
        None => format!("no route delivers notifications to <{addr}>: they would be dropped"),
    });
    out
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ExplainError {
    #[error("no listener named {0:?}")]
    NoSuchListener(String),
    #[error("no listener configured")]
    NoListener,
    #[error("the null address cannot be a recipient")]
    NullAddress,
}

/// What RCPT would answer for `address` on `listener` (the first listener when `None`), and
/// why. Asks the directory when the deciding route does, as RCPT does.
pub async fn explain(
    cfg: &Config,
    policy: &Policy,
    listener: Option<&str>,
    address: &str,
    from: Option<&str>,
) -> Result<Explanation, ExplainError> {
    let l = match listener {
        Some(n) => cfg
            .listener(n)
            .ok_or_else(|| ExplainError::NoSuchListener(n.to_string()))?,
        None => cfg.listener.first().ok_or(ExplainError::NoListener)?,
    };
    let mut out = Explanation {
        listener: l.name.clone(),
        listener_address: l.address.to_string(),
        steps: Vec::new(),
        accepted: false,
    };
    let addr = match parse_path(address.trim().trim_matches(['<', '>'])) {
        Ok(Some(a)) => a,
        Ok(None) => return Err(ExplainError::NullAddress),
        Err(e) => {
            out.steps.push(Step::Refused(e.to_string()));
            return Ok(out);
        }
    };
    let declared = |d: &str| policy.is_declared(d);
    for step in policy.routes.explain(&l.routes, &addr.domain, &declared) {
        let Some(pat) = step.matched else {
            out.steps.push(Step::NoMatch {
                route: step.route.name.clone(),
                domain: addr.domain.clone(),
            });
            continue;
        };
        out.steps.push(Step::Matched {
            route: step.route.name.clone(),
            pattern: pat.to_string(),
        });
        let RouteTarget::Transport(t) = &step.route.target else {
            continue;
        };
        if let Some(tc) = cfg.transport.get(t) {
            let (hop, next_hop) = match &tc.hop {
                NextHop::Relay(hp) => (format!("relay to {hp}"), hp.to_string()),
                NextHop::Mx { port } => (
                    format!("MX of {} on port {port}", addr.domain),
                    format!("MX of {}:{port}", addr.domain),
                ),
            };
            out.steps.push(Step::Transport {
                name: t.clone(),
                hop,
                next_hop,
                tls: tc.tls,
            });
            if tc.tls == TlsPolicy::Mutual {
                out.steps.push(Step::MutualTls);
            }
        }
        let list = policy.lists.whitelist.load_full();
        let entries = list
            .as_ref()
            .map(|w| w.entries(&addr.domain))
            .unwrap_or(&[]);
        if step.route.whitelist && entries.is_empty() {
            out.steps.push(Step::NotDeclared {
                domain: addr.domain.clone(),
            });
        }
        for e in entries {
            out.steps.push(Step::Declared {
                domain: addr.domain.clone(),
                dn: e.dn.to_string(),
            });
        }
    }
    if l.routes.iter().any(|r| r == BUILTIN_ROUTE) {
        out.steps.extend(
            owner_steps(policy, &addr)
                .await
                .into_iter()
                .map(Step::Owner),
        );
    }
    if let Some(from) = from {
        out.steps.extend(
            sender_steps(policy, l.establishments, &l.routes, from)
                .await
                .into_iter()
                .map(Step::Sender),
        );
    }
    match policy.check_recipient(&l.routes, &addr).await {
        RcptDecision::Accept {
            route,
            transport,
            bal_type,
        } => {
            out.accepted = true;
            out.steps.push(Step::Accepted {
                route,
                transport,
                bal_type,
            });
        }
        RcptDecision::Reject(r) => out.steps.push(Step::Rejected(r.to_string())),
    }
    Ok(out)
}
