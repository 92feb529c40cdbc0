//! `[[establishment]]` (in the main file) and one `[establishment]` per file of
//! `[server].establishments_dir`: the establishments a regional gateway serves, each with its
//! domains, its MTAs, its mailbox server and its limits. A bottom module: config types and the
//! checks one establishment makes against another (two may not claim one domain without
//! saying which addresses are whose, nor overlapping networks, nor one certificate DN).

use super::source::{self, Problem};
use super::values::{de_from_str, de_list, ClientNet, DomainPattern, HostPort};
use super::TlsPolicy;
use crate::pki::dn::Dn;
use serde::{Deserialize, Deserializer};
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// The default `[server].establishments_dir`, relative to the working directory like the
/// default config file.
pub const DEFAULT_ESTABLISHMENTS_DIR: &str = "config/establishments.d";

/// The name of the built-in route that delivers any establishment's domain to its mailbox.
pub const BUILTIN_ROUTE: &str = "establishments";

/// The prefix of the transport synthesised for each establishment's mailbox
/// (`establishment:chu-a`): a name no `[transport.NAME]` can take by accident (the colon).
pub const TRANSPORT_PREFIX: &str = "establishment:";

/// What the sender check looks at.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
pub enum SenderCheck {
    /// `MAIL FROM` only.
    #[serde(rename = "envelope")]
    Envelope,
    /// `MAIL FROM`, then the `From:` header's addresses after DATA.
    #[default]
    #[serde(rename = "envelope+header")]
    EnvelopeAndHeader,
}

impl SenderCheck {
    pub fn as_str(self) -> &'static str {
        match self {
            SenderCheck::Envelope => "envelope",
            SenderCheck::EnvelopeAndHeader => "envelope+header",
        }
    }
}

/// One establishment.
#[derive(Debug, Clone, Deserialize)]
pub struct EstablishmentConfig {
    /// `[a-z0-9-]+`: logs, metrics, the CLI and the file name in `establishments_dir`.
    pub name: String,
    /// Exact names or `*.suffix`.
    #[serde(deserialize_with = "de_est_domains")]
    pub domains: Vec<DomainPattern>,
    /// Its MTAs by address.
    #[serde(default, deserialize_with = "de_list")]
    pub clients: Vec<ClientNet>,
    /// Its MTAs by client-certificate subject.
    #[serde(default, deserialize_with = "de_list")]
    pub client_dns: Vec<Dn>,
    /// Where mail for its domains is delivered.
    #[serde(deserialize_with = "de_from_str")]
    pub mailbox: HostPort,
    #[serde(default = "default_mailbox_tls")]
    pub mailbox_tls: TlsPolicy,
    #[serde(default)]
    pub sender_check: SenderCheck,
    /// On a shared domain: the directory's structure ids (FINESS, SIRET) whose BALs are its own.
    #[serde(default)]
    pub structures: Vec<String>,
    /// On a shared domain: addresses that are its own.
    #[serde(default, deserialize_with = "de_addresses")]
    pub addresses: Vec<String>,
    /// Recipients at its domains must exist in the directory (as a route's `directory`).
    #[serde(default)]
    pub directory: bool,
    /// Messages per minute accepted from it; beyond, `450 4.7.1`.
    #[serde(default)]
    pub max_message_rate: Option<u32>,
    /// Messages from it in the queue at most; beyond, `452 4.3.1` at MAIL.
    #[serde(default)]
    pub max_queued: Option<usize>,
    /// The file it was read from when it came from `establishments_dir` (not a key).
    #[serde(skip)]
    pub file: Option<PathBuf>,
    /// That file's text, to locate problems in it (not a key).
    #[serde(skip)]
    pub file_text: Option<Arc<str>>,
}

fn default_mailbox_tls() -> TlsPolicy {
    TlsPolicy::Opportunistic
}

fn de_est_domains<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<DomainPattern>, D::Error> {
    let v: Vec<DomainPattern> = de_list(d)?;
    for p in &v {
        if matches!(p, DomainPattern::Any | DomainPattern::Whitelist) {
            return Err(serde::de::Error::custom(format!(
                "{p:?} is not allowed here: an establishment claims exact domains or *.suffix"
            )));
        }
    }
    if v.is_empty() {
        return Err(serde::de::Error::custom("empty: at least one domain"));
    }
    Ok(v)
}

fn de_addresses<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    let v = Vec::<String>::deserialize(d)?;
    v.into_iter()
        .map(|a| {
            let a = a.trim().to_ascii_lowercase();
            match a.rsplit_once('@') {
                Some((l, dom)) if !l.is_empty() && super::values::is_domain(dom) => Ok(a),
                _ => Err(serde::de::Error::custom(format!(
                    "{a:?} is not an address (local@domain)"
                ))),
            }
        })
        .collect()
}

impl EstablishmentConfig {
    /// The transport delivery uses for its mailbox.
    pub fn transport_name(&self) -> String {
        format!("{TRANSPORT_PREFIX}{}", self.name)
    }

    /// Whether one of its patterns covers `domain` (lowercase).
    pub fn claims(&self, domain: &str) -> bool {
        self.domains.iter().any(|p| p.matches(domain, &|_| false))
    }

    /// Whether it says which addresses of a shared domain are its own.
    pub fn has_ownership_rule(&self) -> bool {
        !self.structures.is_empty() || !self.addresses.is_empty()
    }

    /// `establishment[2] (chu-a)` in the main file, `establishment` in its own file.
    fn key(&self, index: usize) -> String {
        if self.file.is_some() {
            "establishment".to_string()
        } else {
            format!("establishment[{index}] ({})", self.name)
        }
    }

    /// A problem about `field` of this establishment, located in its own file when it has one.
    fn problem(&self, index: usize, field: &str, message: String) -> Problem {
        let key = format!("{}.{field}", self.key(index));
        let p = Problem::error(key, message);
        match (&self.file, &self.file_text) {
            (Some(f), Some(t)) => p.located(&f.display().to_string(), t),
            _ => p,
        }
    }
}

/// Whether two patterns can match one domain.
fn overlap(a: &DomainPattern, b: &DomainPattern) -> bool {
    use DomainPattern::*;
    match (a, b) {
        (Exact(x), Exact(y)) => x == y,
        (Exact(x), Subdomains(s)) | (Subdomains(s), Exact(x)) => x.ends_with(s.as_str()),
        (Subdomains(s), Subdomains(t)) => s.ends_with(t.as_str()) || t.ends_with(s.as_str()),
        _ => true,
    }
}

/// Whether `name` can name an establishment (a file name, a metric label, a CLI word).
pub fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !name.starts_with('-')
}

/// A file of `establishments_dir`: one `[establishment]` table.
#[derive(Deserialize)]
struct OneFile {
    establishment: EstablishmentConfig,
}

/// Reads one establishment file: the establishment and its warnings (unknown keys), or its
/// problems, each at `FILE:LINE`.
pub fn read_file(path: &Path) -> Result<(EstablishmentConfig, Vec<Problem>), Vec<Problem>> {
    let shown = path.display().to_string();
    let text = std::fs::read_to_string(path)
        .map_err(|e| vec![Problem::error("", format!("cannot read: {e}")).located(&shown, "")])?;
    parse_file(&text, &shown).map(|(mut e, w)| {
        e.file = Some(path.to_path_buf());
        e.file_text = Some(text.into());
        (e, w)
    })
}

/// Parses the text of an establishment file (`shown` names it in messages).
pub fn parse_file(
    text: &str,
    shown: &str,
) -> Result<(EstablishmentConfig, Vec<Problem>), Vec<Problem>> {
    let (f, warnings): (OneFile, _) = source::parse_part(text, shown)?;
    let e = f.establishment;
    let stem = Path::new(shown)
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned());
    let mut problems = Vec::new();
    if let Some(stem) = stem.filter(|s| s != &e.name && shown.ends_with(".toml")) {
        problems.push(
            Problem::warning(
                "establishment.name",
                format!("{:?} differs from the file name {stem:?}.toml", e.name),
            )
            .located(shown, text),
        );
    }
    let mut all = warnings;
    all.extend(problems);
    Ok((e, all))
}

/// The `*.toml` files of `dir` in name order; a missing directory has none.
pub fn dir_files(dir: &Path) -> std::io::Result<Vec<PathBuf>> {
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e),
    };
    let mut files: Vec<PathBuf> = entries
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "toml") && p.is_file())
        .collect();
    files.sort();
    Ok(files)
}

/// A file about to be written (`path`, `text`): read as if it were there already, so that
/// a configuration is checked with it before it is placed (issue 24 B.16).
pub type Candidate<'a> = Option<(&'a Path, &'a str)>;

/// Reads every file of `dir`: the establishments, the warnings, and the errors.
pub fn read_dir(dir: &Path) -> (Vec<EstablishmentConfig>, Vec<Problem>, Vec<Problem>) {
    read_dir_with(dir, None)
}

/// [`read_dir`], with `candidate` in place of (or beside) the file of its path.
pub fn read_dir_with(
    dir: &Path,
    candidate: Candidate<'_>,
) -> (Vec<EstablishmentConfig>, Vec<Problem>, Vec<Problem>) {
    let (mut list, mut warnings, mut errors) = (Vec::new(), Vec::new(), Vec::new());
    let files = match dir_files(dir).map(|mut f| {
        if let Some((path, _)) = candidate {
            if !f.iter().any(|p| p == path) {
                f.push(path.to_path_buf());
                f.sort();
            }
        }
        f
    }) {
        Ok(f) => f,
        Err(e) => {
            errors.push(Problem::error(
                "server.establishments_dir",
                format!("{}: cannot read: {e}", dir.display()),
            ));
            return (list, warnings, errors);
        }
    };
    for f in files {
        let read = match candidate {
            Some((path, text)) if path == f => {
                parse_file(text, &f.display().to_string()).map(|(mut e, w)| {
                    e.file = Some(f.clone());
                    e.file_text = Some(text.into());
                    (e, w)
                })
            }
            _ => read_file(&f),
        };
        match read {
            Ok((e, w)) => {
                warnings.extend(w);
                list.push(e);
            }
            Err(p) => errors.extend(p),
        }
    }
    (list, warnings, errors)
}

/// The establishments `texts` (name, TOML), as if each were `dir/NAME.toml`: the shared
/// state's rows, checked before a write is committed.
pub fn read_texts(
    dir: &Path,
    texts: &[(String, String)],
) -> (Vec<EstablishmentConfig>, Vec<Problem>, Vec<Problem>) {
    let (mut list, mut warnings, mut errors) = (Vec::new(), Vec::new(), Vec::new());
    for (name, text) in texts {
        let f = dir.join(format!("{name}.toml"));
        match parse_file(text, &f.display().to_string()) {
            Ok((mut e, w)) => {
                e.file = Some(f);
                e.file_text = Some(text.as_str().into());
                warnings.extend(w);
                list.push(e);
            }
            Err(p) => errors.extend(p),
        }
    }
    (list, warnings, errors)
}

/// What establishments say about each other and about the rest of the config.
pub fn validate(list: &[EstablishmentConfig], has_tls: bool) -> Vec<Problem> {
    let mut p = Vec::new();
    for (i, e) in list.iter().enumerate() {
        if !valid_name(&e.name) {
            p.push(e.problem(
                i,
                "name",
                format!("{:?}: use lowercase letters, digits and '-' only", e.name),
            ));
        }
        if let Some(j) = list[..i].iter().position(|o| o.name == e.name) {
            p.push(e.problem(
                i,
                "name",
                format!(
                    "{:?} is already the name of {}",
                    e.name,
                    origin(&list[j], j)
                ),
            ));
        }
        if e.clients.is_empty() && e.client_dns.is_empty() {
            p.push(e.problem(
                i,
                "clients",
                "no clients and no client_dns: its MTAs could never be recognised".into(),
            ));
        }
        if matches!(e.mailbox_tls, TlsPolicy::Required | TlsPolicy::Mutual) && !has_tls {
            p.push(e.problem(i, "mailbox_tls", "needs a [tls] section".into()));
        }
        if e.max_message_rate == Some(0) {
            p.push(e.problem(i, "max_message_rate", "must be at least 1".into()));
        }
        if e.max_queued == Some(0) {
            p.push(e.problem(i, "max_queued", "must be at least 1".into()));
        }
        for a in &e.addresses {
            let dom = a.rsplit_once('@').map_or("", |(_, d)| d);
            if !e.claims(dom) {
                p.push(e.problem(i, "addresses", format!("{a}: not in one of its domains")));
            }
        }
        for (j, o) in list[..i].iter().enumerate() {
            for d in &e.domains {
                if let Some(od) = o.domains.iter().find(|od| overlap(d, od)) {
                    if !(e.has_ownership_rule() && o.has_ownership_rule()) {
                        p.push(e.problem(
                            i,
                            "domains",
                            format!(
                                "{d} is also claimed by {} ({od}): a shared domain needs \
                                 `structures` or `addresses` on each establishment claiming it",
                                origin(o, j)
                            ),
                        ));
                    }
                }
            }
            for n in &e.clients {
                if let Some(on) = o.clients.iter().find(|on| n.overlaps(on)) {
                    p.push(e.problem(
                        i,
                        "clients",
                        format!(
                            "{n} overlaps {on} of {}: a client must name one establishment",
                            origin(o, j)
                        ),
                    ));
                }
            }
            for dn in &e.client_dns {
                if o.client_dns.contains(dn) {
                    p.push(e.problem(
                        i,
                        "client_dns",
                        format!("\"{dn}\" is also a client DN of {}", origin(o, j)),
                    ));
                }
            }
            for a in &e.addresses {
                if o.addresses.contains(a) {
                    p.push(e.problem(
                        i,
                        "addresses",
                        format!("{a} is also claimed by {}", origin(o, j)),
                    ));
                }
            }
            for s in &e.structures {
                if o.structures.contains(s) {
                    p.push(e.problem(
                        i,
                        "structures",
                        format!("{s} is also claimed by {}", origin(o, j)),
                    ));
                }
            }
        }
    }
    p
}

/// Where an establishment was declared, for messages about another one.
fn origin(e: &EstablishmentConfig, index: usize) -> String {
    match &e.file {
        Some(f) => format!("establishment {:?} ({})", e.name, f.display()),
        None => format!("establishment[{index}] ({})", e.name),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn est(text: &str) -> EstablishmentConfig {
        match parse_file(&format!("[establishment]\n{text}"), "x.toml") {
            Ok((e, _)) => e,
            Err(p) => panic!("{p:?}"),
        }
    }

    const A: &str = "name = \"chu-a\"\ndomains = [\"chu-a.mssante.fr\"]\nclients = [\"10.1.0.0/24\"]\nmailbox = \"10.1.0.25:25\"\n";

    #[test]
    fn parses_with_defaults() {
        let e = est(A);
        assert_eq!(e.mailbox_tls, TlsPolicy::Opportunistic);
        assert_eq!(e.sender_check, SenderCheck::EnvelopeAndHeader);
        assert_eq!(e.transport_name(), "establishment:chu-a");
        assert!(e.claims("chu-a.mssante.fr"));
        assert!(!e.claims("chu-b.mssante.fr"));
    }

    #[test]
    fn file_problems_have_path_and_line() {
        let e = parse_file(
            "[establishment]\nname = \"chu-a\"\ndomains = [\"*\"]\nmailbox = \"h:25\"\n",
            "d/chu-a.toml",
        )
        .err()
        .unwrap();
        assert!(
            e[0].to_string()
                .starts_with("d/chu-a.toml:3: establishment.domains: "),
            "{e:?}"
        );
        let e = parse_file("[establishment]\nname = \"chu-a\"\n", "d/chu-a.toml")
            .err()
            .unwrap();
        assert_eq!(
            e[0].to_string(),
            "d/chu-a.toml:1: establishment.domains: required"
        );
        let e = parse_file("[establishment\n", "d/x.toml").err().unwrap();
        assert!(
            e[0].to_string().starts_with("d/x.toml:1: TOML syntax"),
            "{e:?}"
        );
        let (_, w) = parse_file(
            &format!("[establishment]\n{A}mailbx = \"x\"\n"),
            "d/chu-a.toml",
        )
        .unwrap();
        assert_eq!(
            w[0].to_string(),
            "d/chu-a.toml:6: establishment.mailbx: unknown key (typo?), ignored"
        );
    }

    #[test]
    fn overlaps_and_duplicates_are_refused() {
        let a = est(A);
        let b = est("name = \"chu-b\"\ndomains = [\"*.mssante.fr\"]\nclients = [\"10.1.0.7\"]\nclient_dns = []\nmailbox = \"h:25\"\n");
        let p: Vec<String> = validate(&[a.clone(), b], false)
            .iter()
            .map(|p| p.to_string())
            .collect();
        assert!(
            p.iter()
                .any(|l| l.contains("domains: *.mssante.fr is also claimed")),
            "{p:?}"
        );
        assert!(
            p.iter()
                .any(|l| l.contains("clients: 10.1.0.7/32 overlaps 10.1.0.0/24")),
            "{p:?}"
        );
        let p = validate(&[a.clone(), a.clone()], false);
        assert!(
            p.iter().any(|l| l.message.contains("already the name")),
            "{p:?}"
        );
        let mut bad = a.clone();
        bad.name = "CHU A".into();
        bad.mailbox_tls = TlsPolicy::Mutual;
        let p: Vec<String> = validate(&[bad], false)
            .iter()
            .map(|p| p.to_string())
            .collect();
        assert_eq!(p.len(), 2, "{p:?}");
    }

    #[test]
    fn a_shared_domain_needs_a_rule_on_each_side() {
        let s1 = est("name = \"ehpad-1\"\ndomains = [\"ehpad.oc.mssante.fr\"]\nclients = [\"10.2.0.1\"]\nmailbox = \"h:25\"\nstructures = [\"310000001\"]\n");
        let s2 = est("name = \"ehpad-2\"\ndomains = [\"ehpad.oc.mssante.fr\"]\nclients = [\"10.2.0.2\"]\nmailbox = \"h:25\"\naddresses = [\"Accueil@ehpad.oc.mssante.fr\"]\n");
        assert!(validate(&[s1.clone(), s2.clone()], false).is_empty());
        assert_eq!(s2.addresses, vec!["accueil@ehpad.oc.mssante.fr"]);
        let mut bare = s2.clone();
        bare.addresses.clear();
        let p = validate(&[s1, bare], false);
        assert_eq!(p.len(), 1, "{p:?}");
        assert!(p[0].message.contains("shared domain needs"), "{p:?}");
        let mut wrong = s2;
        wrong.addresses = vec!["x@elsewhere.fr".into()];
        assert!(validate(&[wrong], false)[0]
            .message
            .contains("not in one of its domains"));
    }
}
