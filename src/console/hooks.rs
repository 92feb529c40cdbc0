//! Everything the console needs from the rest of the gateway, in one place: the queue, the
//! configuration snapshot in force, the CRLs, a reload trigger, and two hooks for the parts
//! that come later, the journal and the establishments. Until those land, their hooks answer
//! "not available yet" and the pages say so.

use super::access::EstablishmentScope;
use crate::policy::directory::BoxFuture;
use crate::queue::QueueHandle;
use crate::runtime::reload::ReloadHandle;
use crate::runtime::snapshot::Snapshot;
use crate::tls::Crls;
use arc_swap::ArcSwap;
use std::path::PathBuf;
use std::sync::Arc;

/// The console's handles on the running gateway.
#[derive(Clone)]
pub struct ConsoleBackend {
    pub queue: QueueHandle,
    /// The spool's segment directory: a message page reads the header section from there.
    pub queue_dir: PathBuf,
    /// Config, routes, TLS identity and lists in force; replaced by each reload.
    pub snapshot: Arc<ArcSwap<Snapshot>>,
    pub crls: Crls,
    /// Asks `serve` to reload (as SIGHUP does) and waits for the result.
    pub reload: ReloadHandle,
    pub journal: Arc<dyn Journal>,
    pub establishments: Arc<dyn Establishments>,
    /// The administrators' audit trail: every form is one entry, or is refused.
    pub auditor: Arc<crate::audit::Auditor>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HookError {
    /// The part of the gateway behind the hook is not there (yet).
    #[error("{0}")]
    Unavailable(&'static str),
    #[error("{0}")]
    Failed(String),
}

/// One event of a message's life, as `passerelle track` shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JournalEvent {
    /// Unix seconds.
    pub time: u64,
    /// received, queued, deferred, delivered, bounced, held, retried by USER, ...
    pub kind: String,
    pub details: Vec<(String, String)>,
}

/// A message's proof of sending, and the establishment that owns the message.
pub struct ProofPage {
    pub owner: Option<String>,
    pub html: String,
}

/// A message as the journal knows it (the contract's JSON shape of `track`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TrackedMessage {
    pub queue_id: String,
    pub message_id: Option<String>,
    pub from: String,
    pub to: Vec<String>,
    pub establishment: Option<String>,
    pub status: String,
    pub events: Vec<JournalEvent>,
}

/// The options of `passerelle track`; an establishment user's query always carries its own
/// establishment.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Deserialize)]
#[serde(default)]
pub struct TrackQuery {
    pub id: Option<String>,
    pub message_id: Option<String>,
    pub from: Option<String>,
    pub to: Option<String>,
    pub establishment: Option<String>,
    /// RFC 3339 date or date-time.
    pub since: Option<String>,
    pub until: Option<String>,
    pub status: Option<String>,
    pub limit: Option<usize>,
}

/// The options of `passerelle stats`.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Deserialize)]
#[serde(default)]
pub struct StatsQuery {
    /// day, week, month, establishment, domain, mailbox, peer.
    pub by: Option<String>,
    pub since: Option<String>,
    pub until: Option<String>,
    pub establishment: Option<String>,
}

/// An indicators table: the first column is the key (`--by`), the others counts.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StatsTable {
    pub columns: Vec<String>,
    pub rows: Vec<Vec<String>>,
}

/// An administrator's action, for the journal ("every action written with the user").
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditEvent {
    pub user: String,
    pub role: String,
    pub client: String,
    /// retry, hold, release, delete, config apply, config rollback, login, logout, ...
    pub action: String,
    /// A queue id, a file, a user name.
    pub target: String,
    /// "ok" or why not.
    pub outcome: String,
}

/// Writes an action's record in the place kept for it ([`Journal::reserve`]).
pub type AuditRecord = Box<dyn FnOnce(&AuditEvent) + Send>;

/// The message journal: timelines, search, indicators, and the audit trail.
pub trait Journal: Send + Sync {
    fn timeline<'a>(
        &'a self,
        queue_id: &'a str,
    ) -> BoxFuture<'a, Result<Option<TrackedMessage>, HookError>>;
    fn track<'a>(
        &'a self,
        q: &'a TrackQuery,
    ) -> BoxFuture<'a, Result<Vec<TrackedMessage>, HookError>>;
    fn stats<'a>(&'a self, q: &'a StatsQuery) -> BoxFuture<'a, Result<StatsTable, HookError>>;
    /// Keeps a place for the record of an action on a message before it is done (issue 24
    /// B.12); `Err` says why it could not be kept, and the action is then refused. The
    /// console logs every action too, so nothing is lost while no journal is configured.
    fn reserve(&self) -> Result<AuditRecord, HookError>;
    /// The proof of sending of a message (`track --proof`'s printable page) and the
    /// establishment that owns it; `None` when the journal has no such message.
    fn proof<'a>(
        &'a self,
        queue_id: &'a str,
    ) -> BoxFuture<'a, Result<Option<ProofPage>, HookError>> {
        let _ = queue_id;
        Box::pin(async { Err(HookError::Unavailable(NO_JOURNAL)) })
    }
}

/// The journal hook until the journal lands.
pub struct NoJournal;

const NO_JOURNAL: &str =
    "the message journal is not part of this gateway yet: timelines, tracking and indicators arrive with it";

impl Journal for NoJournal {
    fn timeline<'a>(
        &'a self,
        _: &'a str,
    ) -> BoxFuture<'a, Result<Option<TrackedMessage>, HookError>> {
        Box::pin(async { Err(HookError::Unavailable(NO_JOURNAL)) })
    }
    fn track<'a>(
        &'a self,
        _: &'a TrackQuery,
    ) -> BoxFuture<'a, Result<Vec<TrackedMessage>, HookError>> {
        Box::pin(async { Err(HookError::Unavailable(NO_JOURNAL)) })
    }
    fn stats<'a>(&'a self, _: &'a StatsQuery) -> BoxFuture<'a, Result<StatsTable, HookError>> {
        Box::pin(async { Err(HookError::Unavailable(NO_JOURNAL)) })
    }
    fn reserve(&self) -> Result<AuditRecord, HookError> {
        Ok(Box::new(|_| {}))
    }
}

/// The establishments this gateway serves.
pub trait Establishments: Send + Sync {
    /// `Err(Unavailable)` while the gateway has no notion of establishments.
    fn scopes(&self) -> Result<Vec<EstablishmentScope>, HookError>;
    /// The one establishment that owns `address` (`None`: no establishment's, or a shared
    /// domain's address whose owner is not known).
    fn owner_of(&self, address: &str) -> Option<String>;
}

/// The establishments hook until establishments land: none, so an establishment user sees
/// nothing and the establishment pages say why.
pub struct NoEstablishments;

impl Establishments for NoEstablishments {
    fn scopes(&self) -> Result<Vec<EstablishmentScope>, HookError> {
        Err(HookError::Unavailable(
            "establishments are not part of this gateway yet: their pages arrive with them",
        ))
    }
    fn owner_of(&self, _: &str) -> Option<String> {
        None
    }
}

/// The establishments of the configuration in force (a reload that adds one shows it at once).
pub struct GatewayEstablishments(pub Arc<ArcSwap<Snapshot>>);

impl Establishments for GatewayEstablishments {
    fn scopes(&self) -> Result<Vec<EstablishmentScope>, HookError> {
        Ok(self
            .0
            .load()
            .config
            .establishment
            .iter()
            .map(|e| EstablishmentScope {
                name: e.name.clone(),
                domains: e.domains.clone(),
            })
            .collect())
    }
    fn owner_of(&self, address: &str) -> Option<String> {
        match self.0.load().policy.establishments.owner(address, &[]) {
            crate::policy::establishment::Owner::Owned(e, _) => Some(e.name.clone()),
            _ => None,
        }
    }
}
