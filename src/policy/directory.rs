//! The recipient directory behind one trait, so RCPT checks are testable without sockets and
//! the extract, LDAP and "none" kinds are interchangeable. The kinds themselves live in
//! `crate::directory` (which implements this trait; policy never imports it).

use std::future::Future;
use std::pin::Pin;

pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Lookup {
    /// Known; carries the BAL type (PER, ORG, APP, ...) for the log, and the structure ids
    /// (the extract's `Identification Structure`) its BAL belongs to: who owns an address
    /// of a domain several establishments share.
    Found {
        bal_type: String,
        structures: Vec<String>,
    },
    NotFound,
}

#[derive(Debug, Clone, thiserror::Error)]
#[error("directory unavailable: {0}")]
pub struct DirectoryError(pub String);

pub trait Directory: Send + Sync {
    fn lookup<'a>(&'a self, address: &'a str) -> BoxFuture<'a, Result<Lookup, DirectoryError>>;
    /// A short name for replies and logs, e.g. "extract Extraction_...txt" or "ldap://...".
    fn describe(&self) -> String;
}

/// `directory.kind = "none"`: nothing is known. Routes with `directory = true` are refused by
/// config validation, so this only answers `directory lookup`.
pub struct NoDirectory;

impl Directory for NoDirectory {
    fn lookup<'a>(&'a self, _: &'a str) -> BoxFuture<'a, Result<Lookup, DirectoryError>> {
        Box::pin(async { Ok(Lookup::NotFound) })
    }
    fn describe(&self) -> String {
        "none".into()
    }
}
