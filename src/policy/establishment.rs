//! The establishments of a regional gateway, as policy decides with them: who is sending
//! (attribution by client address or certificate), whether a sender address is one of the
//! sending establishment's, who owns a recipient address (a shared regional domain is owned
//! address by address: by the directory's structure id or a listed address), and whether
//! the `From:` header agrees. Pure: the directory's answers are passed in.

pub use crate::config::{EstablishmentConfig as Establishment, SenderCheck};
use crate::pki::dn::Dn;
use crate::reply::Reply;
use std::net::IpAddr;

/// All establishments of one config snapshot.
#[derive(Debug, Clone, Default)]
pub struct Establishments {
    list: Vec<Establishment>,
}

/// Why an establishment owns an address (what `route test` explains).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Why {
    /// The only establishment claiming the domain, by this pattern.
    Domain(String),
    /// Listed in its `addresses`.
    Address,
    /// The directory attributes the BAL to this structure of its `structures`.
    Structure(String),
}

impl std::fmt::Display for Why {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Why::Domain(p) => write!(f, "its domain {p}"),
            Why::Address => f.write_str("the address is in its `addresses`"),
            Why::Structure(s) => write!(f, "the directory attributes the BAL to its structure {s}"),
        }
    }
}

/// Who owns an address.
#[derive(Debug, Clone)]
pub enum Owner<'a> {
    /// No establishment claims the domain: not mail for this gateway's establishments.
    None,
    Owned(&'a Establishment, Why),
    /// A shared domain, and no claimant says the address is its own (`550 5.1.1`).
    Unowned {
        claimants: Vec<&'a str>,
    },
}

impl PartialEq for Owner<'_> {
    /// Establishments are told apart by name (they are unique).
    fn eq(&self, other: &Self) -> bool {
        match (self, other) {
            (Owner::None, Owner::None) => true,
            (Owner::Owned(a, w), Owner::Owned(b, v)) => a.name == b.name && w == v,
            (Owner::Unowned { claimants: a }, Owner::Unowned { claimants: b }) => a == b,
            _ => false,
        }
    }
}

impl Establishments {
    pub fn new(list: Vec<Establishment>) -> Establishments {
        Establishments { list }
    }

    pub fn all(&self) -> &[Establishment] {
        &self.list
    }

    pub fn is_empty(&self) -> bool {
        self.list.is_empty()
    }

    pub fn get(&self, name: &str) -> Option<&Establishment> {
        self.list.iter().find(|e| e.name == name)
    }

    /// The establishment whose `clients` hold `ip`.
    pub fn by_ip(&self, ip: IpAddr) -> Option<&Establishment> {
        self.list
            .iter()
            .find(|e| e.clients.iter().any(|n| n.contains(ip)))
    }

    /// Whether some establishment is recognised by certificate: a client whose address names
    /// none must then be let in to present one.
    pub fn any_by_certificate(&self) -> bool {
        self.list.iter().any(|e| !e.client_dns.is_empty())
    }

    /// Who is sending: the establishment listing the valid client certificate's subject, else
    /// the one whose networks hold the address. A certificate is the stronger proof (an MTA
    /// behind a shared NAT), so it decides when both tell.
    pub fn attribute(&self, ip: IpAddr, dn: Option<&Dn>) -> Option<&Establishment> {
        dn.and_then(|dn| self.list.iter().find(|e| e.client_dns.contains(dn)))
            .or_else(|| self.by_ip(ip))
    }

    /// The establishments claiming `domain` (lowercase).
    pub fn claimants(&self, domain: &str) -> Vec<&Establishment> {
        self.list.iter().filter(|e| e.claims(domain)).collect()
    }

    /// Whether the owner of an address of `domain` depends on the directory's structure ids
    /// (a shared domain where a claimant lists `structures`): the caller asks the directory.
    pub fn needs_structures(&self, domain: &str) -> bool {
        let c = self.claimants(domain);
        c.len() > 1 && c.iter().any(|e| !e.structures.is_empty())
    }

    /// Who owns `address` (`local@domain`); `structures` are the directory's structure ids
    /// for it (empty when unknown or not asked).
    pub fn owner(&self, address: &str, structures: &[String]) -> Owner<'_> {
        let lower = address.to_ascii_lowercase();
        let domain = lower.rsplit_once('@').map_or(lower.as_str(), |(_, d)| d);
        let claimants = self.claimants(domain);
        match claimants.as_slice() {
            [] => Owner::None,
            [one] => {
                let p = one
                    .domains
                    .iter()
                    .find(|p| p.matches(domain, &|_| false))
                    .map(|p| p.to_string())
                    .unwrap_or_default();
                Owner::Owned(one, Why::Domain(p))
            }
            many => {
                if let Some(e) = many.iter().find(|e| e.addresses.contains(&lower)) {
                    return Owner::Owned(e, Why::Address);
                }
                for e in many {
                    if let Some(s) = e.structures.iter().find(|s| structures.contains(s)) {
                        return Owner::Owned(e, Why::Structure(s.clone()));
                    }
                }
                Owner::Unowned {
                    claimants: many.iter().map(|e| e.name.as_str()).collect(),
                }
            }
        }
    }

    /// Whether `address` is one of `est`'s: in its domains, and on a shared domain one of its
    /// BALs. `Err` says why not, for the reply.
    pub fn is_own(
        &self,
        est: &Establishment,
        address: &str,
        structures: &[String],
    ) -> Result<(), String> {
        let lower = address.to_ascii_lowercase();
        let domain = lower.rsplit_once('@').map_or("", |(_, d)| d);
        if !est.claims(domain) {
            return Err(format!("not a domain of establishment {}", est.name));
        }
        match self.owner(&lower, structures) {
            Owner::Owned(e, _) if e.name == est.name => Ok(()),
            Owner::Owned(e, why) => Err(format!(
                "{domain} is shared; this address is establishment {}'s ({why})",
                e.name
            )),
            _ => Err(format!(
                "{domain} is shared; this address is not a BAL of establishment {}",
                est.name
            )),
        }
    }

    /// The `MAIL FROM` check (`None`: the null sender, always allowed: bounces and MDNs).
    pub fn check_sender(
        &self,
        est: &Establishment,
        sender: Option<&str>,
        structures: &[String],
    ) -> Option<Reply> {
        let sender = sender?;
        self.is_own(est, sender, structures).err().map(|why| {
            Reply::new(
                550,
                "5.7.1",
                format!("<{sender}>: Sender address rejected: {why}"),
            )
        })
    }

    /// The `From:` check after DATA. With a sender, every address of every `From:` must be
    /// the establishment's. With the null sender, an MDN (RFC 8098) carries its reader's
    /// address (the establishment's), and its MTA's own bounce `MAILER-DAEMON@` (or
    /// `postmaster@`) a host name: accepted unless that host is another establishment's
    /// domain (which would let one speak for the other). No `From:`, an empty group or an
    /// unparseable address: refused, nothing can vouch for it.
    pub fn check_header(
        &self,
        est: &Establishment,
        null_sender: bool,
        from: &FromHeader,
        structures_of: &dyn Fn(&str) -> Vec<String>,
    ) -> Option<Reply> {
        if est.sender_check == SenderCheck::Envelope {
            return None;
        }
        let refuse = |text: String| Some(Reply::new(550, "5.7.1", text));
        let addrs = match from {
            FromHeader::Missing => {
                return refuse(format!(
                    "Error: message without a From: header; establishment {} must write one of its addresses there",
                    est.name
                ))
            }
            FromHeader::Unreadable(raw) => {
                return refuse(format!(
                    "Error: From: header {raw:?} holds no readable address"
                ))
            }
            FromHeader::Addresses(a) => a,
        };
        for a in addrs {
            if null_sender && is_mailer_daemon(a) {
                let host = a.rsplit_once('@').map_or("", |(_, h)| h);
                match self
                    .claimants(host)
                    .into_iter()
                    .find(|o| o.name != est.name)
                {
                    Some(o) => {
                        return refuse(format!(
                            "Error: From: <{a}>: {host} is establishment {}'s domain, not {}'s",
                            o.name, est.name
                        ))
                    }
                    None => continue,
                }
            }
            if let Err(why) = self.is_own(est, a, &structures_of(a)) {
                return refuse(format!("Error: From: header <{a}>: {why}"));
            }
        }
        None
    }
}

/// `MAILER-DAEMON@host` or `postmaster@host`: a mail system's own bounce.
fn is_mailer_daemon(a: &str) -> bool {
    a.rsplit_once('@').is_some_and(|(l, _)| {
        l.eq_ignore_ascii_case("mailer-daemon") || l.eq_ignore_ascii_case("postmaster")
    })
}

/// What the `From:` header(s) of a message say.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FromHeader {
    Missing,
    /// Every address of every `From:` (groups flattened), lowercase.
    Addresses(Vec<String>),
    /// A `From:` with no address in it (an empty group, a bare name): its raw text, cut.
    Unreadable(String),
}

/// Reads the `From:` headers of `message` (its header section suffices) with mail-parser:
/// folding, RFC 2047 encoded names, groups and lists are its business.
pub fn from_header(message: &[u8]) -> FromHeader {
    use mail_parser::{HeaderName, HeaderValue, MessageParser};
    let Some(m) = MessageParser::new().parse_headers(message) else {
        return FromHeader::Missing;
    };
    let mut out = Vec::new();
    let mut seen = false;
    for h in m.headers().iter().filter(|h| h.name == HeaderName::From) {
        seen = true;
        let mut here = Vec::new();
        if let HeaderValue::Address(a) = &h.value {
            for addr in a.iter() {
                match addr.address.as_deref() {
                    Some(x) if x.contains('@') => here.push(x.trim().to_ascii_lowercase()),
                    _ => {
                        here.clear();
                        break;
                    }
                }
            }
        }
        if here.is_empty() {
            let raw = message
                .get(h.offset_start as usize..h.offset_end as usize)
                .map(|b| String::from_utf8_lossy(b).trim().chars().take(80).collect())
                .unwrap_or_default();
            return FromHeader::Unreadable(raw);
        }
        out.extend(here);
    }
    if seen {
        FromHeader::Addresses(out)
    } else {
        FromHeader::Missing
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::establishment::parse_file;

    fn est(text: &str) -> Establishment {
        match parse_file(&format!("[establishment]\n{text}"), "x") {
            Ok((e, _)) => e,
            Err(p) => panic!("{p:?}"),
        }
    }

    fn table() -> Establishments {
        Establishments::new(vec![
            est("name = \"chu-a\"\ndomains = [\"chu-a.mssante.fr\", \"*.chu-a.mssante.fr\"]\nclients = [\"127.0.0.10\"]\nclient_dns = [\"CN=mta.chu-a.fr,O=CHU A,C=FR\"]\nmailbox = \"127.0.0.1:2601\"\n"),
            est("name = \"chu-b\"\ndomains = [\"chu-b.mssante.fr\"]\nclients = [\"127.0.0.20/31\"]\nmailbox = \"127.0.0.1:2602\"\n"),
            est("name = \"ehpad-1\"\ndomains = [\"ehpad.oc.mssante.fr\"]\nclients = [\"127.0.0.30\"]\nmailbox = \"127.0.0.1:2603\"\nstructures = [\"310000001\"]\n"),
            est("name = \"ehpad-2\"\ndomains = [\"ehpad.oc.mssante.fr\"]\nclients = [\"127.0.0.31\"]\nmailbox = \"127.0.0.1:2604\"\nstructures = [\"310000002\"]\naddresses = [\"accueil@ehpad.oc.mssante.fr\"]\n"),
        ])
    }

    fn name(e: Option<&Establishment>) -> Option<&str> {
        e.map(|e| e.name.as_str())
    }

    #[test]
    fn attribution_by_address_and_certificate() {
        let t = table();
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        assert_eq!(name(t.attribute(ip("127.0.0.10"), None)), Some("chu-a"));
        assert_eq!(name(t.attribute(ip("127.0.0.21"), None)), Some("chu-b"));
        assert_eq!(
            name(t.attribute(ip("::ffff:127.0.0.21"), None)),
            Some("chu-b")
        );
        assert_eq!(name(t.attribute(ip("127.0.0.99"), None)), None);
        let dn = Dn::parse_rfc4514("cn=MTA.chu-a.fr, o=CHU A, c=FR").unwrap();
        assert_eq!(
            name(t.attribute(ip("127.0.0.99"), Some(&dn))),
            Some("chu-a")
        );
        // The certificate wins over the address.
        assert_eq!(
            name(t.attribute(ip("127.0.0.20"), Some(&dn))),
            Some("chu-a")
        );
        assert!(t.any_by_certificate());
    }

    #[test]
    fn envelope_sender() {
        let t = table();
        let a = t.get("chu-a").unwrap();
        assert_eq!(t.check_sender(a, Some("dr@chu-a.mssante.fr"), &[]), None);
        assert_eq!(
            t.check_sender(a, Some("dr@Service.CHU-A.mssante.fr"), &[]),
            None
        );
        assert_eq!(t.check_sender(a, None, &[]), None, "the null sender passes");
        let r = t.check_sender(a, Some("dr@chu-b.mssante.fr"), &[]).unwrap();
        assert_eq!(r.to_string(), "550 5.7.1 <dr@chu-b.mssante.fr>: Sender address rejected: not a domain of establishment chu-a");
        // A shared domain: per BAL.
        let e1 = t.get("ehpad-1").unwrap();
        let s1 = vec!["310000001".to_string()];
        let s2 = vec!["310000002".to_string()];
        assert_eq!(t.check_sender(e1, Some("x@ehpad.oc.mssante.fr"), &s1), None);
        let r = t
            .check_sender(e1, Some("x@ehpad.oc.mssante.fr"), &s2)
            .unwrap();
        assert!(
            r.text.contains("this address is establishment ehpad-2's"),
            "{r}"
        );
        let r = t
            .check_sender(e1, Some("accueil@ehpad.oc.mssante.fr"), &s1)
            .unwrap();
        assert!(
            r.text
                .contains("ehpad-2's (the address is in its `addresses`)"),
            "{r}"
        );
        let r = t
            .check_sender(e1, Some("nobody@ehpad.oc.mssante.fr"), &[])
            .unwrap();
        assert!(r.text.contains("not a BAL of establishment ehpad-1"), "{r}");
    }

    #[test]
    fn owners() {
        let t = table();
        assert_eq!(t.owner("x@gmail.com", &[]), Owner::None);
        match t.owner("x@chu-b.mssante.fr", &[]) {
            Owner::Owned(e, Why::Domain(p)) => {
                assert_eq!((e.name.as_str(), p.as_str()), ("chu-b", "chu-b.mssante.fr"))
            }
            o => panic!("{o:?}"),
        }
        match t.owner("y@ehpad.oc.mssante.fr", &["999".into(), "310000002".into()]) {
            Owner::Owned(e, why) => {
                assert_eq!(e.name, "ehpad-2");
                assert_eq!(
                    why.to_string(),
                    "the directory attributes the BAL to its structure 310000002"
                );
            }
            o => panic!("{o:?}"),
        }
        assert_eq!(
            t.owner("z@ehpad.oc.mssante.fr", &[]),
            Owner::Unowned {
                claimants: vec!["ehpad-1", "ehpad-2"]
            }
        );
        assert!(t.needs_structures("ehpad.oc.mssante.fr"));
        assert!(!t.needs_structures("chu-a.mssante.fr"));
    }

    fn header(text: &str) -> FromHeader {
        from_header(format!("{text}\r\nSubject: x\r\n\r\nbody\r\n").as_bytes())
    }

    #[test]
    fn from_header_forms() {
        assert_eq!(
            header("From: Dr A <dr@CHU-A.mssante.fr>"),
            FromHeader::Addresses(vec!["dr@chu-a.mssante.fr".into()])
        );
        // Folded, RFC 2047 encoded name.
        assert_eq!(
            header("From: =?UTF-8?Q?Dr_=C3=89lise?=\r\n <elise@chu-a.mssante.fr>"),
            FromHeader::Addresses(vec!["elise@chu-a.mssante.fr".into()])
        );
        // Several addresses, and a group.
        assert_eq!(
            header("From: a@chu-a.mssante.fr, b@chu-b.mssante.fr"),
            FromHeader::Addresses(vec![
                "a@chu-a.mssante.fr".into(),
                "b@chu-b.mssante.fr".into()
            ])
        );
        assert_eq!(
            header("From: Service: a@chu-a.mssante.fr, c@chu-a.mssante.fr;"),
            FromHeader::Addresses(vec![
                "a@chu-a.mssante.fr".into(),
                "c@chu-a.mssante.fr".into()
            ])
        );
        assert!(matches!(
            header("From: undisclosed:;"),
            FromHeader::Unreadable(_)
        ));
        assert!(matches!(
            header("From: just a name"),
            FromHeader::Unreadable(_)
        ));
        assert_eq!(header("To: x@y.fr"), FromHeader::Missing);
        // Two From: headers: both count.
        assert_eq!(
            header("From: a@chu-a.mssante.fr\r\nFrom: b@chu-b.mssante.fr"),
            FromHeader::Addresses(vec![
                "a@chu-a.mssante.fr".into(),
                "b@chu-b.mssante.fr".into()
            ])
        );
    }

    #[test]
    fn header_check() {
        let t = table();
        let a = t.get("chu-a").unwrap();
        let none = |_: &str| Vec::new();
        let check = |null: bool, h: &str| {
            t.check_header(a, null, &header(h), &none)
                .map(|r| r.to_string())
        };
        assert_eq!(check(false, "From: Dr A <dr@chu-a.mssante.fr>"), None);
        let r = check(false, "From: a@chu-a.mssante.fr, b@chu-b.mssante.fr").unwrap();
        assert_eq!(r, "550 5.7.1 Error: From: header <b@chu-b.mssante.fr>: not a domain of establishment chu-a");
        assert!(check(false, "To: x@y.fr")
            .unwrap()
            .contains("without a From: header"));
        assert!(check(false, "From: undisclosed:;")
            .unwrap()
            .contains("no readable address"));
        // MDN: null sender, From the reader (one of its addresses).
        assert_eq!(check(true, "From: lecteur@chu-a.mssante.fr"), None);
        assert!(check(true, "From: lecteur@chu-b.mssante.fr").is_some());
        // DSN of its own MTA.
        assert_eq!(
            check(
                true,
                "From: Mail Delivery System <MAILER-DAEMON@mta.chu-a.fr>"
            ),
            None
        );
        let r = check(true, "From: MAILER-DAEMON@chu-b.mssante.fr").unwrap();
        assert!(r.contains("establishment chu-b's domain"), "{r}");
        // MAILER-DAEMON with a real sender is no bounce.
        assert!(check(false, "From: MAILER-DAEMON@mta.chu-a.fr").is_some());
        // sender_check = "envelope": the header is not looked at.
        let mut env_only = a.clone();
        env_only.sender_check = SenderCheck::Envelope;
        assert_eq!(
            t.check_header(&env_only, false, &FromHeader::Missing, &none),
            None
        );
    }
}
