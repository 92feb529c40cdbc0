//! Ordered routes: the first route (in the listener's order) whose domain patterns match a
//! recipient decides its fate. `explain` serves both the RCPT check and `passerelle route test`,
//! so what the admin sees is what the server does.

pub use crate::config::{DomainPattern, RouteConfig as Route, RouteTarget};

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
                .domains
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
    use crate::reply::Reply;

    fn route(name: &str, domains: &[&str], transport: Option<&str>) -> Route {
        Route {
            name: name.into(),
            domains: domains
                .iter()
                .map(|s| DomainPattern::parse(s).unwrap())
                .collect(),
            target: match transport {
                Some(t) => RouteTarget::Transport(t.into()),
                None => RouteTarget::Reject(Reply::new(550, "5.7.1", "no")),
            },
            whitelist: false,
            directory: false,
        }
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
