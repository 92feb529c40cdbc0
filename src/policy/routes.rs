//! Ordered routes: the first route (in the listener's order) whose domain patterns match a
//! recipient decides its fate. `explain` serves both the RCPT check and `passerelle route test`,
//! so what the admin sees is what the server does.

use crate::config::RouteConfig;
use crate::reply::Reply;
use std::fmt;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DomainPattern {
    /// `chu-exemple.mssante.fr`
    Exact(String),
    /// `*.mssante.fr`: strict subdomains; holds `.mssante.fr`.
    Subdomains(String),
    /// `*`
    Any,
    /// `@whitelist`: any domain declared in the ANS whitelist.
    Whitelist,
}

impl DomainPattern {
    pub fn parse(s: &str) -> Result<DomainPattern, String> {
        let lower = s.trim().to_ascii_lowercase();
        // One trailing dot (an absolute name) is allowed on a real domain, not on "*.".
        let t = match lower.strip_suffix('.') {
            Some(x) if !x.ends_with('*') && !x.is_empty() => x,
            _ => lower.as_str(),
        };
        let valid = |d: &str| {
            !d.is_empty()
                && d.split('.')
                    .all(|l| !l.is_empty() && l.chars().all(|c| c.is_alphanumeric() || c == '-'))
        };
        match t {
            "*" => Ok(DomainPattern::Any),
            "@whitelist" => Ok(DomainPattern::Whitelist),
            _ => {
                if let Some(suffix) = t.strip_prefix("*.") {
                    if valid(suffix) {
                        return Ok(DomainPattern::Subdomains(format!(".{suffix}")));
                    }
                } else if valid(t) {
                    return Ok(DomainPattern::Exact(t.to_string()));
                }
                Err(format!(
                    "{s:?} is not a domain pattern (exact.domain, *.suffix, * or @whitelist)"
                ))
            }
        }
    }

    /// `domain` must already be lowercased.
    pub fn matches(&self, domain: &str, is_declared: &dyn Fn(&str) -> bool) -> bool {
        match self {
            DomainPattern::Exact(d) => d == domain,
            DomainPattern::Subdomains(suffix) => domain.ends_with(suffix.as_str()),
            DomainPattern::Any => true,
            DomainPattern::Whitelist => is_declared(domain),
        }
    }
}

impl fmt::Display for DomainPattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DomainPattern::Exact(d) => f.write_str(d),
            DomainPattern::Subdomains(s) => write!(f, "*{s}"),
            DomainPattern::Any => f.write_str("*"),
            DomainPattern::Whitelist => f.write_str("@whitelist"),
        }
    }
}

#[derive(Debug, Clone)]
pub enum RouteAction {
    Transport(String),
    Reject(Reply),
}

#[derive(Debug, Clone)]
pub struct Route {
    pub name: String,
    pub patterns: Vec<DomainPattern>,
    pub action: RouteAction,
    pub whitelist: bool,
    pub directory: bool,
}

impl Route {
    pub fn from_config(c: &RouteConfig) -> Result<Route, String> {
        let patterns = c
            .domains
            .iter()
            .map(|d| DomainPattern::parse(d))
            .collect::<Result<Vec<_>, _>>()?;
        let action = match (&c.transport, &c.reject) {
            (Some(t), None) => RouteAction::Transport(t.clone()),
            (None, Some(r)) => RouteAction::Reject(Reply::parse(r)?),
            _ => {
                return Err(format!(
                    "route {}: needs exactly one of transport/reject",
                    c.name
                ))
            }
        };
        Ok(Route {
            name: c.name.clone(),
            patterns,
            action,
            whitelist: c.whitelist,
            directory: c.directory,
        })
    }
}

/// One step of the explanation: a route looked at, and the pattern that matched if any.
#[derive(Debug, Clone)]
pub struct Considered<'a> {
    pub route: &'a Route,
    pub matched: Option<&'a DomainPattern>,
}

#[derive(Debug, Clone, Default)]
pub struct RouteTable {
    routes: Vec<Route>,
}

impl RouteTable {
    pub fn new(routes: Vec<Route>) -> RouteTable {
        RouteTable { routes }
    }

    pub fn get(&self, name: &str) -> Option<&Route> {
        self.routes.iter().find(|r| r.name == name)
    }

    pub fn all(&self) -> &[Route] {
        &self.routes
    }

    /// Walks `order` (route names) and stops at the first match; returns every route looked at.
    pub fn explain<'a>(
        &'a self,
        order: &[String],
        domain: &str,
        is_declared: &dyn Fn(&str) -> bool,
    ) -> Vec<Considered<'a>> {
        let mut steps = Vec::new();
        for name in order {
            let Some(route) = self.get(name) else {
                continue;
            };
            let matched = route
                .patterns
                .iter()
                .find(|p| p.matches(domain, is_declared));
            steps.push(Considered { route, matched });
            if matched.is_some() {
                break;
            }
        }
        steps
    }

    /// The deciding route, if any.
    pub fn select<'a>(
        &'a self,
        order: &[String],
        domain: &str,
        is_declared: &dyn Fn(&str) -> bool,
    ) -> Option<(&'a Route, &'a DomainPattern)> {
        self.explain(order, domain, is_declared)
            .last()
            .and_then(|c| c.matched.map(|m| (c.route, m)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn route(name: &str, domains: &[&str], transport: Option<&str>) -> Route {
        Route::from_config(&RouteConfig {
            name: name.into(),
            domains: domains.iter().map(|s| s.to_string()).collect(),
            transport: transport.map(str::to_string),
            reject: transport.is_none().then(|| "550 5.7.1 no".to_string()),
            whitelist: false,
            directory: false,
        })
        .unwrap()
    }

    #[test]
    fn patterns() {
        let none = |_: &str| false;
        let sub = DomainPattern::parse("*.MSSante.fr").unwrap();
        assert!(sub.matches("chu.mssante.fr", &none));
        assert!(sub.matches("a.b.mssante.fr", &none));
        assert!(!sub.matches("mssante.fr", &none));
        assert!(!sub.matches("evilmssante.fr", &none));
        let ex = DomainPattern::parse("chu.mssante.fr").unwrap();
        assert!(ex.matches("chu.mssante.fr", &none));
        assert!(!ex.matches("x.chu.mssante.fr", &none));
        let wl = DomainPattern::parse("@whitelist").unwrap();
        assert!(wl.matches("medecin.fr", &|d| d == "medecin.fr"));
        assert!(DomainPattern::parse("*.").is_err());
        assert!(DomainPattern::parse("a b").is_err());
        assert_eq!(sub.to_string(), "*.mssante.fr");
    }

    #[test]
    fn first_match_wins_in_listener_order() {
        let t = RouteTable::new(vec![
            route("local", &["chu.mssante.fr"], Some("etab")),
            route("mss", &["*.mssante.fr"], Some("trust")),
            route("others", &["*"], None),
        ]);
        let order: Vec<String> = ["local", "mss", "others"].map(String::from).to_vec();
        let none = |_: &str| false;
        assert_eq!(
            t.select(&order, "chu.mssante.fr", &none).unwrap().0.name,
            "local"
        );
        assert_eq!(
            t.select(&order, "autre.mssante.fr", &none).unwrap().0.name,
            "mss"
        );
        assert_eq!(
            t.select(&order, "gmail.com", &none).unwrap().0.name,
            "others"
        );
        let only_local = vec!["local".to_string()];
        assert!(t.select(&only_local, "autre.mssante.fr", &none).is_none());
        assert_eq!(t.explain(&order, "gmail.com", &none).len(), 3);
    }
}
