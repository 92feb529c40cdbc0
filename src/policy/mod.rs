//! Policy: who may connect, and what happens to each recipient. Decided at RCPT time so the
//! sending MTA gets the refusal and nothing is ever backscattered. No I/O here except through
//! the [`Directory`] trait.
//!
//! Must not import: delivery, directory (its kinds answer the trait), queue, intake,
//! console, cli, admin.

pub mod address;
pub mod directory;
pub mod establishment;
pub mod explain;
pub mod routes;

pub use crate::trust::whitelist::{Dn, Whitelist};
pub use address::{parse_path, Address, AddressError};
pub use directory::{Directory, DirectoryError, Lookup, NoDirectory};
pub use establishment::{Establishment, Establishments, Owner};
pub use routes::{DomainPattern, Route, RouteTable, RouteTarget};

use crate::config::establishment::BUILTIN_ROUTE;
use crate::config::{ClientCert, ListenerConfig};
use crate::reply::Reply;
use crate::tls::Refusal;
use arc_swap::{ArcSwap, ArcSwapOption};
use std::sync::Arc;

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

/// The data policy reads that has a life of its own: the ANS whitelist and the directory.
/// Each cell has one writer (its file watcher); a refresh applies at once, to sessions in
/// flight too, while the routes of a session stay those of its snapshot.
pub struct Lists {
    /// `None` when no `[whitelist]` is configured (or none loaded yet).
    pub whitelist: ArcSwapOption<Whitelist>,
    pub directory: ArcSwap<Box<dyn Directory>>,
}

impl Lists {
    pub fn new(whitelist: Option<Whitelist>, directory: Box<dyn Directory>) -> Lists {
        Lists {
            whitelist: ArcSwapOption::from(whitelist.map(Arc::new)),
            directory: ArcSwap::from_pointee(directory),
        }
    }

    pub fn is_declared(&self, domain: &str) -> bool {
        self.whitelist
            .load()
            .as_ref()
            .is_some_and(|w| w.contains(domain))
    }
}

/// The operator certificate DNs declared for a recipient domain: the ANS whitelist, asked at
/// delivery time so a refreshed list applies at once.
pub trait TrustList: Send + Sync {
    fn declared_dns(&self, domain: &str) -> Vec<crate::pki::dn::Dn>;
}

impl TrustList for Lists {
    fn declared_dns(&self, domain: &str) -> Vec<Dn> {
        self.whitelist
            .load()
            .as_ref()
            .map(|w| {
                w.entries(domain)
                    .iter()
                    .map(|e| e.dn_norm.clone())
                    .collect()
            })
            .unwrap_or_default()
    }
}

/// The routes of one config snapshot, with the live lists.
#[derive(Clone)]
pub struct Policy {
    pub routes: Arc<RouteTable>,
    /// The snapshot's establishments (the built-in route `establishments`).
    pub establishments: Arc<Establishments>,
    pub lists: Arc<Lists>,
}

/// Who is at the other end of a session, as the sender checks need it.
pub struct Client<'a> {
    pub listener: &'a ListenerConfig,
    /// The client certificate's verdict: `None` when none was presented, its subject when
    /// valid, the refusal otherwise.
    pub certificate: Option<&'a Result<Dn, Refusal>>,
    /// The client's address is in `listener.clients`.
    pub ip_authorized: bool,
}

impl Policy {
    pub fn is_declared(&self, domain: &str) -> bool {
        self.lists.is_declared(domain)
    }

    /// At MAIL, before the sender is read: a listener that requires a client certificate
    /// refuses a session without a valid one (530 without, 550 with the reason).
    pub fn check_client(&self, c: &Client<'_>) -> Option<Reply> {
        if c.listener.client_certificate != ClientCert::Require {
            return None;
        }
        match c.certificate {
            None => Some(Reply::new(
                530,
                "5.7.0",
                "Error: a client certificate is required",
            )),
            Some(Err(why)) => Some(Reply::new(
                550,
                "5.7.1",
                format!("Error: client certificate refused: {why}"),
            )),
            Some(Ok(_)) => None,
        }
    }

    /// At MAIL, once the sender is read (`None`: the null sender). On a trust-space listener
    /// the client certificate must be declared in the whitelist for the sender's domain (any
    /// domain for `<>`); on any listener, a client outside `clients` relays only with a
    /// certificate listed in `client_dns`.
    pub fn check_sender(&self, c: &Client<'_>, sender_domain: Option<&str>) -> Option<Reply> {
        let valid = match c.certificate {
            Some(Ok(dn)) => Some(dn),
            _ => None,
        };
        if c.listener.client_certificate == ClientCert::Require {
            let dn = valid?;
            let Some(wl) = self.lists.whitelist.load_full() else {
                return Some(Reply::new(
                    451,
                    "4.7.0",
                    "Error: no MSSante whitelist loaded, try again later",
                ));
            };
            let declared = match sender_domain {
                Some(d) => wl.dn_allowed(d, dn),
                None => wl.dn_known(dn),
            };
            if !declared {
                return Some(Reply::new(
                    550,
                    "5.7.1",
                    format!(
                        "Error: certificate \"{dn}\" is not declared in the MSSante whitelist for {}",
                        sender_domain.unwrap_or("any domain")
                    ),
                ));
            }
        }
        if !c.ip_authorized && !valid.is_some_and(|dn| c.listener.client_dns.contains(dn)) {
            return Some(Reply::new(
                554,
                "5.7.1",
                "Error: relay access denied: present a client certificate listed for this listener",
            ));
        }
        None
    }

    /// Where mail to `address` goes when the gateway itself sends it (a DSN to an original
    /// sender): the first transport route of `order` (the receiving listener's routes), then
    /// of every route in config order, whose domains match. Reject routes are skipped and the
    /// directory is not asked.
    pub fn route_for(&self, order: &[String], address: &str) -> Option<(String, String)> {
        let domain = address::domain_of(address);
        let declared = |d: &str| self.is_declared(d);
        let usable = |r: &&Route| {
            matches!(r.target, RouteTarget::Transport(_))
                && r.domains.iter().any(|p| p.matches(&domain, &declared))
        };
        let builtin = || match self.establishments.owner(address, &[]) {
            Owner::Owned(e, _) => Some((BUILTIN_ROUTE.to_string(), e.transport_name())),
            _ => None,
        };
        for name in order {
            if name == BUILTIN_ROUTE {
                if let Some(found) = builtin() {
                    return Some(found);
                }
            } else if let Some(r) = self.routes.get(name).filter(|r| usable(r)) {
                if let RouteTarget::Transport(t) = &r.target {
                    return Some((r.name.clone(), t.clone()));
                }
            }
        }
        if let Some(found) = builtin() {
            return Some(found);
        }
        let route = self.routes.all().iter().find(usable)?;
        match &route.target {
            RouteTarget::Transport(t) => Some((route.name.clone(), t.clone())),
            RouteTarget::Reject(_) => None,
        }
    }

    /// The RCPT decision for `rcpt` on a listener whose routes are `order`; the built-in
    /// route `establishments` is tried where `order` names it.
    pub async fn check_recipient(&self, order: &[String], rcpt: &Address) -> RcptDecision {
        let mut rest = order;
        loop {
            let cut = rest.iter().position(|n| n == BUILTIN_ROUTE);
            let before = cut.map_or(rest, |i| &rest[..i]);
            if let Some(d) = self.check_routes(before, rcpt).await {
                return d;
            }
            let Some(i) = cut else { break };
            if let Some(d) = self.check_establishments(rcpt).await {
                return d;
            }
            rest = &rest[i + 1..];
        }
        RcptDecision::Reject(Reply::new(
            554,
            "5.7.1",
            format!("<{rcpt}>: Relay access denied"),
        ))
    }

    /// The directory's answer for `rcpt`, counted; `Err` is the reply to give.
    async fn lookup(&self, rcpt: &Address) -> Result<Lookup, Reply> {
        let addr = rcpt.to_string();
        let directory = self.lists.directory.load_full();
        let answer = directory.lookup(&addr).await;
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
        answer.map_err(|e| {
            tracing::warn!(rcpt = %addr, error = %e, "directory lookup failed");
            Reply::new(
                451,
                "4.4.3",
                format!("<{rcpt}>: directory temporarily unavailable, try again later"),
            )
        })
    }

    /// The directory's structure ids of `address` when its owner depends on them (a shared
    /// domain whose claimants list `structures`); empty otherwise.
    pub async fn structures_of(&self, address: &Address) -> Result<Vec<String>, Reply> {
        if !self.establishments.needs_structures(&address.domain) {
            return Ok(Vec::new());
        }
        match self.lookup(address).await? {
            Lookup::Found { structures, .. } => Ok(structures),
            Lookup::NotFound => Ok(Vec::new()),
        }
    }

    /// The built-in route: `None` when no establishment claims the domain (the next route
    /// decides), else the owner's mailbox, or `550 5.1.1` for an address of a shared domain
    /// that none owns.
    pub async fn check_establishments(&self, rcpt: &Address) -> Option<RcptDecision> {
        let claimants = self.establishments.claimants(&rcpt.domain);
        if claimants.is_empty() {
            return None;
        }
        let wants_directory = claimants.iter().any(|e| e.directory)
            || self.establishments.needs_structures(&rcpt.domain);
        let found = if wants_directory {
            match self.lookup(rcpt).await {
                Ok(l) => Some(l),
                Err(r) => return Some(RcptDecision::Reject(r)),
            }
        } else {
            None
        };
        let (structures, bal_type) = match &found {
            Some(Lookup::Found {
                structures,
                bal_type,
            }) => (structures.as_slice(), Some(bal_type.clone())),
            _ => (&[][..], None),
        };
        let unknown = || {
            RcptDecision::Reject(Reply::new(
                550,
                "5.1.1",
                format!(
                    "<{rcpt}>: Recipient address rejected: unknown in the MSSante directory ({})",
                    self.lists.directory.load().describe()
                ),
            ))
        };
        Some(match self.establishments.owner(&rcpt.to_string(), structures) {
            Owner::Owned(e, _) if e.directory && found == Some(Lookup::NotFound) => unknown(),
            Owner::Owned(e, _) => RcptDecision::Accept {
                route: BUILTIN_ROUTE.to_string(),
                transport: e.transport_name(),
                bal_type,
            },
            Owner::Unowned { .. } | Owner::None => RcptDecision::Reject(Reply::new(
                550,
                "5.1.1",
                format!(
                    "<{rcpt}>: Recipient address rejected: no establishment of this gateway owns this address of the shared domain {}",
                    rcpt.domain
                ),
            )),
        })
    }

    /// The configured routes of `order`: `None` when none matches.
    async fn check_routes(&self, order: &[String], rcpt: &Address) -> Option<RcptDecision> {
        let declared = |d: &str| self.is_declared(d);
        let (route, _) = self.routes.select(order, &rcpt.domain, &declared)?;
        Some(self.check_route(route, rcpt).await)
    }

    async fn check_route(&self, route: &Route, rcpt: &Address) -> RcptDecision {
        let transport = match &route.target {
            RouteTarget::Reject(reply) => return RcptDecision::Reject(reply.clone()),
            RouteTarget::Transport(t) => t.clone(),
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
            let directory = self.lists.directory.load_full();
            match self.lookup(rcpt).await {
                Ok(Lookup::Found { bal_type: t, .. }) => bal_type = Some(t),
                Ok(Lookup::NotFound) => {
                    return RcptDecision::Reject(Reply::new(
                        550,
                        "5.1.1",
                        format!(
                            "<{rcpt}>: Recipient address rejected: unknown in the MSSante directory ({})",
                            directory.describe()
                        ),
                    ))
                }
                Err(r) => return RcptDecision::Reject(r),
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
        let r = |name: &str, d: &str, t: Option<&str>, wl: bool| Route {
            name: name.into(),
            domains: vec![DomainPattern::parse(d).unwrap()],
            target: match t {
                Some(t) => RouteTarget::Transport(t.into()),
                None => RouteTarget::Reject(Reply::new(550, "5.7.1", "only MSSante")),
            },
            whitelist: wl,
            directory: t.is_some(),
        };
        let whitelist = Whitelist::parse(
            r#"<ListeBlancheMSSante xmlns="https://listeblanche.mssante.fr/schema"><ListeDomaines>
            <Domaine><Nom>ok.mssante.fr</Nom><DNCertificatOperateur>CN=op,O=Op,C=FR</DNCertificatOperateur></Domaine>
            </ListeDomaines></ListeBlancheMSSante>"#,
            "test",
        )
        .unwrap();
        Policy {
            routes: Arc::new(RouteTable::new(vec![
                r("local", "chu.mssante.fr", Some("etab"), false),
                r("mss", "*.mssante.fr", Some("trust"), true),
                r("others", "*", None, false),
            ])),
            establishments: Arc::default(),
            lists: Arc::new(Lists::new(Some(whitelist), Box::new(Fixed(dir)))),
        }
    }

    fn listener(text: &str) -> ListenerConfig {
        let base = "name = \"l\"\naddress = \"127.0.0.1:2525\"\nroutes = [\"mss\"]\n";
        toml::from_str(&format!("{base}{text}")).unwrap()
    }

    fn cert(dn: &str) -> Result<Dn, Refusal> {
        Ok(Dn::parse_rfc4514(dn).unwrap())
    }

    #[test]
    fn trust_space_senders_need_a_declared_certificate() {
        let p = policy(Ok(Lookup::NotFound));
        let l = listener("starttls = \"require\"\nclient_certificate = \"require\"\n");
        let client = |c: Option<&Result<Dn, Refusal>>| -> Option<(u16, String)> {
            let c = Client {
                listener: &l,
                certificate: c,
                ip_authorized: true,
            };
            p.check_client(&c)
                .or_else(|| p.check_sender(&c, Some("ok.mssante.fr")))
                .map(|r| (r.code, r.text))
        };
        assert_eq!(client(None).map(|r| r.0), Some(530));
        let bad = Err(Refusal::new(
            crate::message::TlsRefusal::Revoked,
            "certificate revoked",
        ));
        assert_eq!(
            client(Some(&bad)),
            Some((
                550,
                "Error: client certificate refused: certificate revoked".into()
            ))
        );
        assert_eq!(client(Some(&cert("CN=op,O=Op,C=FR"))), None);
        let (code, text) = client(Some(&cert("CN=op,O=Other,C=FR"))).unwrap();
        assert_eq!(code, 550);
        assert!(
            text.contains("\"CN=op,O=Other,C=FR\" is not declared"),
            "{text}"
        );
        // The null sender: any declared operator.
        let c = Client {
            listener: &l,
            certificate: Some(&cert("CN=op,O=Op,C=FR")),
            ip_authorized: true,
        };
        assert_eq!(p.check_sender(&c, None), None);
    }

    #[test]
    fn a_client_outside_the_networks_relays_only_with_a_listed_certificate() {
        let p = policy(Ok(Lookup::NotFound));
        let l = listener(
            "starttls = \"offer\"\nclient_certificate = \"request\"\nclient_dns = [\"CN=mta,O=CHU,C=FR\"]\n",
        );
        let check = |c: Option<&Result<Dn, Refusal>>, ip: bool| {
            let c = Client {
                listener: &l,
                certificate: c,
                ip_authorized: ip,
            };
            p.check_client(&c)
                .or_else(|| p.check_sender(&c, Some("chu.mssante.fr")))
                .map(|r| r.code)
        };
        assert_eq!(check(None, true), None);
        assert_eq!(check(None, false), Some(554));
        assert_eq!(check(Some(&cert("cn=MTA, o=chu, c=fr")), false), None);
        assert_eq!(check(Some(&cert("CN=other,O=CHU,C=FR")), false), Some(554));
    }

    #[test]
    fn notifications_take_the_first_transport_route_for_the_sender() {
        let p = policy(Ok(Lookup::NotFound));
        let own = vec!["local".to_string()];
        assert_eq!(
            p.route_for(&own, "dr@chu.mssante.fr"),
            Some(("local".into(), "etab".into()))
        );
        assert_eq!(
            p.route_for(&[], "x@ok.mssante.fr"),
            Some(("mss".into(), "trust".into()))
        );
        assert_eq!(
            p.route_for(&own, "someone@gmail.com"),
            None,
            "reject routes never"
        );
    }

    fn addr(s: &str) -> Address {
        parse_path(s).unwrap().unwrap()
    }

    #[tokio::test]
    async fn decisions() {
        let order = vec!["mss".to_string(), "others".to_string()];
        let found = Ok(Lookup::Found {
            bal_type: "PER".into(),
            structures: vec![],
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

    #[tokio::test]
    async fn the_builtin_route_delivers_to_the_owner() {
        use crate::config::establishment::parse_file;
        let est = |t: &str| parse_file(&format!("[establishment]\n{t}"), "x").unwrap().0;
        let mut p = policy(Ok(Lookup::Found {
            bal_type: "PER".into(),
            structures: vec!["310000002".into()],
        }));
        p.establishments = Arc::new(Establishments::new(vec![
            est("name = \"chu-a\"\ndomains = [\"chu-a.mssante.fr\"]\nclients = [\"127.0.0.10\"]\nmailbox = \"127.0.0.1:2601\"\n"),
            est("name = \"e1\"\ndomains = [\"ehpad.oc.mssante.fr\"]\nclients = [\"127.0.0.30\"]\nmailbox = \"127.0.0.1:2603\"\nstructures = [\"310000001\"]\n"),
            est("name = \"e2\"\ndomains = [\"ehpad.oc.mssante.fr\"]\nclients = [\"127.0.0.31\"]\nmailbox = \"127.0.0.1:2604\"\nstructures = [\"310000002\"]\n"),
        ]));
        let order: Vec<String> = ["establishments", "mss", "others"]
            .map(String::from)
            .to_vec();
        let accept = |t: &str| RcptDecision::Accept {
            route: "establishments".into(),
            transport: t.into(),
            bal_type: None,
        };
        // A domain of an establishment: its mailbox, before the trust space route.
        assert_eq!(
            p.check_recipient(&order, &addr("dr@chu-a.mssante.fr"))
                .await,
            accept("establishment:chu-a")
        );
        // A shared domain: the directory's structure says whose.
        let RcptDecision::Accept { transport, .. } = p
            .check_recipient(&order, &addr("x@ehpad.oc.mssante.fr"))
            .await
        else {
            panic!()
        };
        assert_eq!(transport, "establishment:e2");
        // Not an establishment's: the next routes decide.
        let RcptDecision::Accept { route, .. } =
            p.check_recipient(&order, &addr("a@ok.mssante.fr")).await
        else {
            panic!()
        };
        assert_eq!(route, "mss");
        // Without the built-in route in the listener's order, nothing changes.
        let plain = vec!["mss".to_string()];
        let RcptDecision::Reject(r) = p
            .check_recipient(&plain, &addr("dr@chu-a.mssante.fr"))
            .await
        else {
            panic!()
        };
        assert_eq!(r.code, 550, "not in the whitelist: {r}");
        // A shared domain's address nobody owns.
        let mut q = policy(Ok(Lookup::NotFound));
        q.establishments = p.establishments.clone();
        let RcptDecision::Reject(r) = q
            .check_recipient(&order, &addr("z@ehpad.oc.mssante.fr"))
            .await
        else {
            panic!()
        };
        assert_eq!((r.code, r.status.as_deref()), (550, Some("5.1.1")), "{r}");
        // Bounces to an establishment's sender go to its mailbox.
        assert_eq!(
            p.route_for(&[], "dr@chu-a.mssante.fr"),
            Some(("establishments".into(), "establishment:chu-a".into()))
        );
    }
}
