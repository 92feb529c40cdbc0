//! Who may see and do what in the console: pure decisions with unit tests, so every page asks
//! the same question the same way.
//!
//! Three roles: `operator` (everything), `auditor` (everything, read-only) and
//! `establishment:NAME` (its own establishment's pages, messages and queue rows; retry and hold
//! of its own messages). For an establishment user, anything outside its establishment does
//! not exist: the answer is 404, never 403, so a guessed URL tells nothing.

use crate::config::DomainPattern;
use std::fmt;
use std::str::FromStr;

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Role {
    Operator,
    Auditor,
    Establishment(String),
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0:?} is not a role: operator, auditor or establishment:NAME (NAME in [a-z0-9-])")]
pub struct BadRole(pub String);

/// An establishment's name as the contract writes it: `[a-z0-9-]+`.
pub fn valid_establishment_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
}

impl Role {
    /// The role without its establishment: what `[console] second_factor` lists.
    pub fn kind(&self) -> &'static str {
        match self {
            Role::Operator => "operator",
            Role::Auditor => "auditor",
            Role::Establishment(_) => "establishment",
        }
    }
}

impl FromStr for Role {
    type Err = BadRole;
    fn from_str(s: &str) -> Result<Role, BadRole> {
        match s.trim() {
            "operator" => Ok(Role::Operator),
            "auditor" => Ok(Role::Auditor),
            other => match other.strip_prefix("establishment:") {
                Some(name) if valid_establishment_name(name) => {
                    Ok(Role::Establishment(name.to_string()))
                }
                _ => Err(BadRole(s.to_string())),
            },
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Role::Operator => f.write_str("operator"),
            Role::Auditor => f.write_str("auditor"),
            Role::Establishment(n) => write!(f, "establishment:{n}"),
        }
    }
}

/// What is asked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    View,
    Retry,
    Hold,
    Release,
    Delete,
    /// Configuration edit, apply, roll back.
    ChangeConfig,
    /// Add or edit an establishment.
    EditEstablishment,
}

impl Action {
    pub fn as_str(self) -> &'static str {
        match self {
            Action::View => "view",
            Action::Retry => "retry",
            Action::Hold => "hold",
            Action::Release => "release",
            Action::Delete => "delete",
            Action::ChangeConfig => "change configuration",
            Action::EditEstablishment => "edit establishment",
        }
    }
}

/// What it is asked of.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Resource<'a> {
    /// Gateway-wide pages: dashboard, route test, whitelist, directory, configuration, the
    /// list of establishments.
    Gateway,
    /// Pages whose rows an establishment user sees filtered to its own: queue, track,
    /// indicators.
    Scoped,
    /// One establishment's page.
    Establishment(&'a str),
    /// A message, with the establishments it belongs to (see [`owners`]).
    Message(&'a [String]),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Allow,
    /// 403: the resource is visible but the action is not the user's to do.
    Forbidden,
    /// 404: the resource is outside the user's establishment.
    NotFound,
}

/// The one access rule of the console.
pub fn decide(role: &Role, action: Action, resource: Resource<'_>) -> Verdict {
    match role {
        Role::Operator => Verdict::Allow,
        Role::Auditor => match action {
            Action::View => Verdict::Allow,
            _ => Verdict::Forbidden,
        },
        Role::Establishment(own) => {
            let mine = match resource {
                Resource::Gateway => false,
                Resource::Scoped => true,
                Resource::Establishment(name) => name == own,
                Resource::Message(owners) => owners.iter().any(|o| o == own),
            };
            if !mine {
                return Verdict::NotFound;
            }
            match (action, resource) {
                (Action::View, _) => Verdict::Allow,
                (Action::Retry | Action::Hold, Resource::Message(_)) => Verdict::Allow,
                _ => Verdict::Forbidden,
            }
        }
    }
}

/// The establishment a user is confined to, if any.
pub fn confined_to(role: &Role) -> Option<&str> {
    match role {
        Role::Establishment(n) => Some(n),
        _ => None,
    }
}

/// An establishment as the console scopes by it: its name and its domains (exact names or
/// `*.suffix`, as `[[establishment]] domains` writes them).
#[derive(Debug, Clone)]
pub struct EstablishmentScope {
    pub name: String,
    pub domains: Vec<DomainPattern>,
}

impl EstablishmentScope {
    /// Patterns that do not parse are left out (config validation reports them).
    pub fn new(name: &str, domains: &[&str]) -> EstablishmentScope {
        EstablishmentScope {
            name: name.to_string(),
            domains: domains
                .iter()
                .filter_map(|d| DomainPattern::parse(d).ok())
                .collect(),
        }
    }
}

/// The establishments a message belongs to, as intake attributed it (issue 24 B.7): the one
/// that sent it (recorded in the envelope when its server was recognised, never guessed from
/// the sender address, which any client writes), the one whose mailbox each recipient was
/// routed to (`establishment:NAME` transport), and otherwise the owner of each recipient
/// address (`owner_of`: one establishment, or none on a shared domain whose owner is not
/// known). A domain claimed by two establishments thus shows each only its own mail.
pub fn owners<'a>(
    sent_by: Option<&str>,
    recipients: impl IntoIterator<Item = (&'a str, &'a str)>,
    owner_of: &dyn Fn(&str) -> Option<String>,
) -> Vec<String> {
    let mut out: Vec<String> = sent_by.map(str::to_string).into_iter().collect();
    for (address, transport) in recipients {
        let owner = match transport.strip_prefix(crate::config::establishment::TRANSPORT_PREFIX) {
            Some(name) => Some(name.to_string()),
            None => owner_of(address),
        };
        if let Some(o) = owner {
            if !out.contains(&o) {
                out.push(o);
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn est(n: &str) -> Role {
        Role::Establishment(n.into())
    }

    #[test]
    fn roles_parse_and_print() {
        for s in ["operator", "auditor", "establishment:chu-a"] {
            assert_eq!(s.parse::<Role>().unwrap().to_string(), s);
        }
        for bad in [
            "root",
            "establishment:",
            "establishment:CHU A",
            "Operator",
            "",
        ] {
            assert!(bad.parse::<Role>().is_err(), "{bad}");
        }
    }

    #[test]
    fn operator_does_everything() {
        let owners = vec!["chu-a".to_string()];
        for a in [
            Action::View,
            Action::Retry,
            Action::Delete,
            Action::ChangeConfig,
            Action::EditEstablishment,
        ] {
            assert_eq!(
                decide(&Role::Operator, a, Resource::Gateway),
                Verdict::Allow
            );
            assert_eq!(
                decide(&Role::Operator, a, Resource::Message(&owners)),
                Verdict::Allow
            );
        }
    }

    #[test]
    fn auditor_sees_everything_and_changes_nothing() {
        let owners: Vec<String> = vec![];
        assert_eq!(
            decide(&Role::Auditor, Action::View, Resource::Gateway),
            Verdict::Allow
        );
        assert_eq!(
            decide(&Role::Auditor, Action::View, Resource::Establishment("x")),
            Verdict::Allow
        );
        for a in [
            Action::Retry,
            Action::Hold,
            Action::Release,
            Action::Delete,
            Action::ChangeConfig,
            Action::EditEstablishment,
        ] {
            assert_eq!(
                decide(&Role::Auditor, a, Resource::Message(&owners)),
                Verdict::Forbidden,
                "{a:?}"
            );
            assert_eq!(
                decide(&Role::Auditor, a, Resource::Gateway),
                Verdict::Forbidden
            );
        }
    }

    #[test]
    fn establishment_user_sees_only_its_own_and_the_rest_does_not_exist() {
        let a = est("chu-a");
        let mine = vec!["chu-a".to_string()];
        let shared = vec!["chu-b".to_string(), "chu-a".to_string()];
        let theirs = vec!["chu-b".to_string()];
        let nobody: Vec<String> = vec![];
        assert_eq!(
            decide(&a, Action::View, Resource::Message(&mine)),
            Verdict::Allow
        );
        assert_eq!(
            decide(&a, Action::View, Resource::Message(&shared)),
            Verdict::Allow
        );
        assert_eq!(
            decide(&a, Action::Retry, Resource::Message(&mine)),
            Verdict::Allow
        );
        assert_eq!(
            decide(&a, Action::Hold, Resource::Message(&mine)),
            Verdict::Allow
        );
        assert_eq!(
            decide(&a, Action::Release, Resource::Message(&mine)),
            Verdict::Forbidden
        );
        assert_eq!(
            decide(&a, Action::Delete, Resource::Message(&mine)),
            Verdict::Forbidden
        );
        for act in [Action::View, Action::Retry, Action::Delete] {
            assert_eq!(
                decide(&a, act, Resource::Message(&theirs)),
                Verdict::NotFound
            );
            assert_eq!(
                decide(&a, act, Resource::Message(&nobody)),
                Verdict::NotFound
            );
        }
        assert_eq!(
            decide(&a, Action::View, Resource::Gateway),
            Verdict::NotFound
        );
        assert_eq!(
            decide(&a, Action::ChangeConfig, Resource::Gateway),
            Verdict::NotFound
        );
        assert_eq!(decide(&a, Action::View, Resource::Scoped), Verdict::Allow);
        assert_eq!(
            decide(&a, Action::Retry, Resource::Scoped),
            Verdict::Forbidden
        );
        assert_eq!(
            decide(&a, Action::View, Resource::Establishment("chu-a")),
            Verdict::Allow
        );
        assert_eq!(
            decide(
                &a,
                Action::EditEstablishment,
                Resource::Establishment("chu-a")
            ),
            Verdict::Forbidden
        );
        assert_eq!(
            decide(&a, Action::View, Resource::Establishment("chu-b")),
            Verdict::NotFound
        );
        assert_eq!(confined_to(&a), Some("chu-a"));
        assert_eq!(confined_to(&Role::Auditor), None);
    }

    #[test]
    fn a_message_belongs_to_the_establishments_intake_named() {
        // chu-a and chu-b share ght.mssante.fr; chu-a alone owns chu-a.mssante.fr.
        let owner_of = |a: &str| match a {
            "x@chu-a.mssante.fr" | "a1@ght.mssante.fr" => Some("chu-a".to_string()),
            "b1@ght.mssante.fr" => Some("chu-b".to_string()),
            _ => None,
        };
        let o = |by: Option<&str>, to: &[(&str, &str)]| owners(by, to.iter().copied(), &owner_of);
        assert_eq!(
            o(Some("chu-a"), &[("y@op.mssante.fr", "trust-space")]),
            vec!["chu-a"],
            "sent by chu-a"
        );
        assert!(
            o(None, &[("y@op.mssante.fr", "trust-space")]).is_empty(),
            "a sender address of chu-a is not chu-a's mail: it is written by the client"
        );
        assert_eq!(
            o(None, &[("b1@ght.mssante.fr", "establishment:chu-b")]),
            vec!["chu-b"],
            "inbound, routed to chu-b's mailbox"
        );
        assert_eq!(
            o(None, &[("any@ght.mssante.fr", "establishment:chu-b")]),
            vec!["chu-b"],
            "the transport intake chose decides, the shared domain does not"
        );
        assert_eq!(
            o(
                Some("chu-b"),
                &[
                    ("a1@ght.mssante.fr", "relay"),
                    ("b1@ght.mssante.fr", "relay")
                ]
            ),
            vec!["chu-b", "chu-a"],
            "explicit route: the owner of each address"
        );
        assert!(
            o(None, &[("z@ght.mssante.fr", "relay")]).is_empty(),
            "a shared domain's unknown address belongs to no establishment"
        );
    }
}
