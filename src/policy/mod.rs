//! Policy: who may connect, and what happens to each recipient. Decided at RCPT time so the
//! sending MTA gets the refusal and nothing is ever backscattered. No I/O here except through
//! the [`Directory`] trait.

pub mod address;
pub mod directory;
pub mod extract;
pub mod ldap;
pub mod ldif;
pub mod routes;
pub mod whitelist;
pub mod xmldsig;

pub use address::{parse_path, Address, AddressError};
pub use directory::{Directory, DirectoryError, Lookup, NoDirectory};
pub use routes::{DomainPattern, Route, RouteAction, RouteTable};
pub use whitelist::{Dn, Whitelist};

use crate::reply::Reply;
use ipnet::IpNet;
use std::net::IpAddr;
use std::sync::Arc;

/// `"127.0.0.0/8"` or a bare address.
pub fn parse_cidr(s: &str) -> Option<IpNet> {
    let s = s.trim();
    s.parse::<IpNet>()
        .ok()
        .or_else(|| s.parse::<IpAddr>().ok().map(IpNet::from))
}

pub fn parse_reply(s: &str) -> Result<Reply, String> {
    Reply::parse(s)
}

/// CIDR list of a listener; empty allows everyone.
#[derive(Debug, Clone, Default)]
pub struct ClientAccess {
    nets: Vec<IpNet>,
}

impl ClientAccess {
    pub fn new(cidrs: &[String]) -> ClientAccess {
        ClientAccess {
            nets: cidrs.iter().filter_map(|c| parse_cidr(c)).collect(),
        }
    }
    pub fn allows(&self, ip: IpAddr) -> bool {
        let ip = match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(ip),
            v4 => v4,
        };
        self.nets.is_empty() || self.nets.iter().any(|n| n.contains(&ip))
    }
}

/// What RCPT answers, and for an accepted recipient, where it goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RcptDecision {
    Accept {
        route: String,
        transport: String,
        /// BAL type from the directory when the route checked it.
        bal_type: Option<String>,
    },
    Reject(Reply),
}

/// The routing part of a config snapshot, plus the whitelist and directory handles.
pub struct Policy {
    pub routes: RouteTable,
    pub directory: Arc<dyn Directory>,
    /// The ANS whitelist; `None` when no `[whitelist]` is configured.
    pub whitelist: Option<Arc<Whitelist>>,
}

impl Policy {
    pub fn is_declared(&self, domain: &str) -> bool {
        self.whitelist.as_ref().is_some_and(|w| w.contains(domain))
    }

    /// The same routes and whitelist with another directory (extract file reload).
    pub fn with_directory(&self, directory: Arc<dyn Directory>) -> Policy {
        Policy {
            routes: self.routes.clone(),
            directory,
            whitelist: self.whitelist.clone(),
        }
    }

    /// The same routes and directory with another whitelist (periodic whitelist reload).
    pub fn with_whitelist(&self, whitelist: Arc<Whitelist>) -> Policy {
        Policy {
            routes: self.routes.clone(),
            directory: self.directory.clone(),
            whitelist: Some(whitelist),
        }
    }

    /// The RCPT decision for `rcpt` on a listener whose routes are `order`.
    pub async fn check_recipient(&self, order: &[String], rcpt: &Address) -> RcptDecision {
        let declared = |d: &str| self.is_declared(d);
        let Some((route, _)) = self.routes.select(order, &rcpt.domain, &declared) else {
            return RcptDecision::Reject(Reply::new(
                554,
                "5.7.1",
                format!("<{rcpt}>: Relay access denied"),
            ));
        };
        let transport = match &route.action {
            RouteAction::Reject(reply) => return RcptDecision::Reject(reply.clone()),
            RouteAction::Transport(t) => t.clone(),
        };
        if route.whitelist && !self.is_declared(&rcpt.domain) {
            return RcptDecision::Reject(Reply::new(
                550,
                "5.7.1",
                format!(
                    "<{rcpt}>: domain {} is not declared in the MSSante whitelist",
                    rcpt.domain
                ),
            ));
        }
        let mut bal_type = None;
        if route.directory {
            let addr = rcpt.to_string();
            let answer = self.directory.lookup(&addr).await;
            let result = match &answer {
                Ok(Lookup::Found { .. }) => "found",
                Ok(Lookup::NotFound) => "unknown",
                Err(_) => "error",
            };
            crate::metrics::inc(
                "passerelle_directory_lookups_total",
                "directory lookups at RCPT, by result",
                &[("result", result)],
            );
            match answer {
                Ok(Lookup::Found { bal_type: t }) => bal_type = Some(t),
                Ok(Lookup::NotFound) => {
                    return RcptDecision::Reject(Reply::new(
                        550,
                        "5.1.1",
                        format!(
                            "<{rcpt}>: Recipient address rejected: unknown in the MSSante directory ({})",
                            self.directory.describe()
                        ),
                    ))
                }
                Err(e) => {
                    tracing::warn!(rcpt = %addr, error = %e, "directory lookup failed");
                    return RcptDecision::Reject(Reply::new(
                        451,
                        "4.4.3",
                        format!("<{rcpt}>: directory temporarily unavailable, try again later"),
                    ));
                }
            }
        }
        RcptDecision::Accept {
            route: route.name.clone(),
            transport,
            bal_type,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::RouteConfig;
    use directory::BoxFuture;

    struct Fixed(Result<Lookup, DirectoryError>);
    impl Directory for Fixed {
        fn lookup<'a>(&'a self, _: &'a str) -> BoxFuture<'a, Result<Lookup, DirectoryError>> {
            let r = self.0.clone();
            Box::pin(async move { r })
        }
        fn describe(&self) -> String {
            "fixed".into()
        }
    }

    fn policy(dir: Result<Lookup, DirectoryError>) -> Policy {
        let r = |name: &str, d: &str, t: Option<&str>, wl: bool| {
            Route::from_config(&RouteConfig {
                name: name.into(),
                domains: vec![d.into()],
                transport: t.map(String::from),
                reject: t.is_none().then(|| "550 5.7.1 only MSSante".into()),
                whitelist: wl,
                directory: t.is_some(),
            })
            .unwrap()
        };
        Policy {
            routes: RouteTable::new(vec![
                r("mss", "*.mssante.fr", Some("trust"), true),
                r("others", "*", None, false),
            ]),
            directory: Arc::new(Fixed(dir)),
            whitelist: Some(Arc::new(
                Whitelist::parse(
                    r#"<ListeBlancheMSSante xmlns="https://listeblanche.mssante.fr/schema"><ListeDomaines>
                    <Domaine><Nom>ok.mssante.fr</Nom><DNCertificatOperateur>CN=op,O=Op,C=FR</DNCertificatOperateur></Domaine>
                    </ListeDomaines></ListeBlancheMSSante>"#,
                    "test",
                )
                .unwrap(),
            )),
        }
    }

    fn addr(s: &str) -> Address {
        parse_path(s).unwrap().unwrap()
    }

    #[tokio::test]
    async fn decisions() {
        let order = vec!["mss".to_string(), "others".to_string()];
        let found = Ok(Lookup::Found {
            bal_type: "PER".into(),
        });
        let p = policy(found);
        assert_eq!(
            p.check_recipient(&order, &addr("a@ok.mssante.fr")).await,
            RcptDecision::Accept {
                route: "mss".into(),
                transport: "trust".into(),
                bal_type: Some("PER".into())
            }
        );
        let RcptDecision::Reject(r) = p.check_recipient(&order, &addr("a@no.mssante.fr")).await
        else {
            panic!()
        };
        assert_eq!((r.code, r.status.as_deref()), (550, Some("5.7.1")));
        let RcptDecision::Reject(r) = p.check_recipient(&order, &addr("a@gmail.com")).await else {
            panic!()
        };
        assert_eq!(r.text, "only MSSante");

        let p = policy(Ok(Lookup::NotFound));
        let RcptDecision::Reject(r) = p.check_recipient(&order, &addr("a@ok.mssante.fr")).await
        else {
            panic!()
        };
        assert_eq!((r.code, r.status.as_deref()), (550, Some("5.1.1")));

        let p = policy(Err(DirectoryError("down".into())));
        let RcptDecision::Reject(r) = p.check_recipient(&order, &addr("a@ok.mssante.fr")).await
        else {
            panic!()
        };
        assert_eq!((r.code, r.status.as_deref()), (451, Some("4.4.3")));
    }

    #[test]
    fn client_access() {
        let a = ClientAccess::new(&["127.0.0.0/8".into(), "10.1.2.3".into()]);
        assert!(a.allows("127.0.0.9".parse().unwrap()));
        assert!(a.allows("10.1.2.3".parse().unwrap()));
        assert!(!a.allows("10.1.2.4".parse().unwrap()));
        assert!(a.allows("::ffff:127.0.0.1".parse().unwrap()));
        assert!(ClientAccess::new(&[]).allows("192.0.2.1".parse().unwrap()));
    }
}
