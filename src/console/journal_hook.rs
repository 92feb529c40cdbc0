//! The console's [`Journal`] hook on the real message journal: timelines, `track` and `stats`
//! read through [`crate::journal::read::Reader`], the same queries as the CLI, so a page and
//! `passerelle track` never disagree. Actions on messages are journaled with the console user.

use super::hooks::{
    AuditEvent, AuditRecord, HookError, Journal, JournalEvent, StatsQuery, StatsTable, TrackQuery,
    TrackedMessage,
};
use crate::config::{JournalConfig, JournalKind};
use crate::journal::event::AdminAction;
use crate::journal::read::{parse_time, Reader, StatsBy, TrackFilter, Tracked};
use crate::policy::directory::BoxFuture;
use crate::runtime::snapshot::Snapshot;
use arc_swap::ArcSwap;
use std::path::PathBuf;
use std::sync::Arc;

/// At most this many messages on a `/track` page: the CLI's default.
const TRACK_LIMIT: usize = 100;

/// Reads the journal named by the configuration in force (a reload may change it).
pub struct JournalHook {
    snapshot: Arc<ArcSwap<Snapshot>>,
    /// The open reader and what it was opened for; reopened when the config changes or a
    /// query failed (PostgreSQL restarted).
    open: tokio::sync::Mutex<Option<(String, Arc<Reader>)>>,
}

impl JournalHook {
    pub fn new(snapshot: Arc<ArcSwap<Snapshot>>) -> JournalHook {
        JournalHook {
            snapshot,
            open: tokio::sync::Mutex::new(None),
        }
    }

    fn target(&self) -> (JournalConfig, PathBuf) {
        let snap = self.snapshot.load_full();
        (
            snap.config.journal.clone(),
            snap.config.server.spool.clone(),
        )
    }

    async fn reader(&self) -> Result<Arc<Reader>, HookError> {
        let (cfg, spool) = self.target();
        if cfg.kind == JournalKind::None {
            return Err(HookError::Unavailable(
                "the journal is off ([journal] kind = \"none\"): no timelines, tracking or indicators",
            ));
        }
        let key = format!(
            "{:?} {} {}",
            cfg.kind,
            cfg.sqlite_path(&spool).display(),
            cfg.url.as_deref().unwrap_or("")
        );
        let mut open = self.open.lock().await;
        if let Some((k, r)) = open.as_ref() {
            if *k == key {
                return Ok(r.clone());
            }
        }
        let r = Arc::new(
            Reader::open(&cfg, &spool)
                .await
                .map_err(|e| HookError::Failed(e.to_string()))?,
        );
        *open = Some((key, r.clone()));
        Ok(r)
    }

    /// A failed query drops the reader: the next one reconnects.
    async fn forget(&self) {
        *self.open.lock().await = None;
    }

    async fn track_filter(&self, f: TrackFilter) -> Result<Vec<TrackedMessage>, HookError> {
        let reader = self.reader().await?;
        match reader.track(&f).await {
            Ok(found) => Ok(found.iter().map(tracked).collect()),
            Err(e) => {
                self.forget().await;
                Err(HookError::Failed(e.to_string()))
            }
        }
    }
}

/// Unix ms from the page's "since"/"until" field (the CLI's forms: a date, a date-time, `2h`).
fn time_field(v: &Option<String>) -> Result<Option<i64>, HookError> {
    let now = crate::util::clock::now_ms() as i64;
    v.as_deref()
        .map(|t| parse_time(t, now))
        .transpose()
        .map_err(HookError::Failed)
}

fn tracked(m: &Tracked) -> TrackedMessage {
    TrackedMessage {
        queue_id: m
            .queue_id
            .clone()
            .or_else(|| m.refusal_id.clone())
            .unwrap_or_else(|| "-".into()),
        message_id: m.message_id.clone(),
        from: m.from.clone().unwrap_or_default(),
        to: m.to.clone(),
        establishment: m.establishment.clone(),
        status: m.status.clone(),
        events: m
            .events
            .iter()
            .map(|e| {
                let time = e
                    .get("time")
                    .and_then(|t| t.as_str())
                    .and_then(|t| parse_time(t, 0).ok())
                    .map_or(0, |ms| (ms / 1000).max(0) as u64);
                let kind = e
                    .get("kind")
                    .and_then(|k| k.as_str())
                    .unwrap_or("?")
                    .to_string();
                JournalEvent {
                    time,
                    kind,
                    details: vec![(String::new(), crate::journal::cli::event_details(e))],
                }
            })
            .collect(),
    }
}

fn stats_by(by: Option<&str>) -> Result<StatsBy, HookError> {
    Ok(match by.unwrap_or("day") {
        "day" => StatsBy::Day,
        "week" => StatsBy::Week,
        "month" => StatsBy::Month,
        "establishment" => StatsBy::Establishment,
        "domain" => StatsBy::Domain,
        "mailbox" => StatsBy::Mailbox,
        "peer" => StatsBy::Peer,
        other => {
            return Err(HookError::Failed(format!(
            "no indicators by {other:?}: day, week, month, establishment, domain, mailbox or peer"
        )))
        }
    })
}

impl Journal for JournalHook {
    fn timeline<'a>(
        &'a self,
        queue_id: &'a str,
    ) -> BoxFuture<'a, Result<Option<TrackedMessage>, HookError>> {
        Box::pin(async move {
            let found = self
                .track_filter(TrackFilter {
                    id: Some(queue_id.to_string()),
                    limit: 1,
                    ..TrackFilter::default()
                })
                .await?;
            Ok(found.into_iter().next())
        })
    }

    fn track<'a>(
        &'a self,
        q: &'a TrackQuery,
    ) -> BoxFuture<'a, Result<Vec<TrackedMessage>, HookError>> {
        Box::pin(async move {
            let f = TrackFilter {
                id: q.id.clone(),
                message_id: q.message_id.clone(),
                from: q.from.clone(),
                to: q.to.clone(),
                establishment: q.establishment.clone(),
                since: time_field(&q.since)?,
                until: time_field(&q.until)?,
                status: q.status.clone(),
                limit: q.limit.unwrap_or(TRACK_LIMIT).clamp(1, 1000) as u32,
            };
            self.track_filter(f).await
        })
    }

    fn stats<'a>(&'a self, q: &'a StatsQuery) -> BoxFuture<'a, Result<StatsTable, HookError>> {
        Box::pin(async move {
            let query = crate::journal::read::StatsQuery {
                by: stats_by(q.by.as_deref())?,
                since: time_field(&q.since)?,
                until: time_field(&q.until)?,
                establishment: q.establishment.clone(),
            };
            let reader = self.reader().await?;
            match reader.stats(&query).await {
                Ok(report) => {
                    let (columns, rows) = crate::journal::cli::stats_table(&report);
                    Ok(StatsTable { columns, rows })
                }
                Err(e) => {
                    self.forget().await;
                    Err(HookError::Failed(e.to_string()))
                }
            }
        })
    }

    /// Actions on a message go into its timeline, with the console user; the others (config,
    /// users, logins) have the console's audit log line (target `passerelle::console::audit`).
    fn proof<'a>(
        &'a self,
        queue_id: &'a str,
    ) -> BoxFuture<'a, Result<Option<super::hooks::ProofPage>, HookError>> {
        Box::pin(async move {
            let reader = self.reader().await?;
            let f = TrackFilter {
                id: Some(queue_id.to_string()),
                limit: 1,
                ..TrackFilter::default()
            };
            match reader.track(&f).await {
                Ok(found) => Ok(found.iter().find(|m| m.queue_id.is_some()).map(|m| {
                    super::hooks::ProofPage {
                        owner: m.establishment.clone(),
                        html: crate::journal::proof::html(m),
                    }
                })),
                Err(e) => {
                    self.forget().await;
                    Err(HookError::Failed(e.to_string()))
                }
            }
        })
    }

    fn reserve(&self) -> Result<AuditRecord, HookError> {
        let slot = crate::journal::reserve_admin().map_err(|e| HookError::Failed(e.to_string()))?;
        Ok(Box::new(move |event: &AuditEvent| {
            let action = match event.action.as_str() {
                "retry" => AdminAction::Retried,
                "hold" => AdminAction::Held,
                "release" => AdminAction::Released,
                "delete" => AdminAction::Deleted,
                _ => return,
            };
            // The outcomes `message::perform` gives when the queue did it; errors are not facts.
            let done = matches!(
                event.outcome.as_str(),
                "retry scheduled now" | "held" | "released for an attempt now" | "deleted"
            );
            if done && !event.target.is_empty() {
                slot.admin(&event.target, action, &format!("console:{}", event.user));
            }
        }))
    }
}
