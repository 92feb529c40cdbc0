//! The LDAP end of a sync: connecting (simple bind, StartTLS or ldaps verified by the caller's
//! rustls config), reading what is under the base page by page, and applying the plan over a
//! few connections with many operations in flight on each (ldap3 multiplexes them), since a
//! single synchronous writer spends most of its time waiting for slapd's commits.

use super::delta::{Modify, Plan, Planner};
use super::Progress;
use crate::directory::extract::{Extract, ExtractEntry};
use crate::directory::ldif::{container_ou, map_entry, MAPPED_ATTRIBUTES, OBJECT_CLASSES};
use ldap3::adapters::{Adapter, EntriesOnly, PagedResults};
use ldap3::controls::TxnSpec;
use ldap3::exop::{EndTxn, StartTxn};
use ldap3::{Ldap, LdapError, Mod, Scope, SearchEntry};
use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

/// Entries asked per page when reading the base (paged results, RFC 2696): servers cap
/// unpaged searches (OpenLDAP's default `sizelimit` is 500).
const PAGE_SIZE: i32 = 1000;

/// Operations per batch (one transaction when the server has them). All of a batch is in
/// flight at once on its connection.
pub const BATCH: usize = 500;

/// The Start Transaction extended operation (RFC 5805).
const TXN_START_OID: &str = "1.3.6.1.1.21.1";

/// A run stops after this many refused operations: beyond, the cause is systemic (rights,
/// schema), and a thousand identical errors help nobody.
const MAX_FAILURES: usize = 100;

/// Where and how to write.
#[derive(Clone)]
pub struct Target {
    /// `ldap://host:port` or `ldaps://host:port`.
    pub url: String,
    /// The container the national directory lives in, e.g. `ou=mssante,dc=annuaire,...`.
    pub base: String,
    pub bind_dn: Option<String>,
    pub bind_password: Option<String>,
    /// StartTLS on an `ldap://` URL.
    pub starttls: bool,
    /// Verification for StartTLS/ldaps; required when either is used.
    pub tls: Option<Arc<rustls::ClientConfig>>,
    /// Connect timeout and per-operation timeout.
    pub timeout: Duration,
    /// Connections used to apply the changes.
    pub connections: usize,
    /// Write each batch in one LDAP transaction (RFC 5805) when the server offers them: one
    /// disk sync per batch instead of one per entry (20,000 adds: 3.4 s instead of 72 s on
    /// slapd with its default durability). Off by default: OpenLDAP 2.5.13 (Debian 12)
    /// crashed (segfault) in 2 of 12 syncs killed with a transaction open (0 of 12 without).
    pub transactions: bool,
}

impl std::fmt::Debug for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Target")
            .field("url", &self.url)
            .field("base", &self.base)
            .field("bind_dn", &self.bind_dn)
            .field("starttls", &self.starttls)
            .finish_non_exhaustive()
    }
}

impl Target {
    /// One bound connection.
    pub async fn connect(&self) -> Result<Ldap, String> {
        let bind = self
            .bind_dn
            .as_deref()
            .map(|dn| (dn, self.bind_password.as_deref().unwrap_or("")));
        crate::directory::ldap::connect(
            &self.url,
            self.timeout,
            self.starttls,
            self.tls.clone(),
            bind,
        )
        .await
        .map_err(|e| match e.strip_prefix("connect ") {
            Some(rest) => format!("cannot connect to {rest}"),
            None => format!("{}: {e}", self.url),
        })
    }

    /// Whether the base entry exists (a first sync into a new `ou=` creates it).
    pub async fn base_exists(&self, ldap: &mut Ldap) -> Result<bool, String> {
        let r = ldap
            .with_timeout(self.timeout)
            .search(&self.base, Scope::Base, "(objectClass=*)", vec!["1.1"])
            .await
            .map_err(|e| format!("{}: reading {}: {e}", self.url, self.base))?;
        match r.1.rc {
            0 => Ok(true),
            32 => Ok(false),
            rc => Err(format!(
                "{}: reading {}: result code {rc} {}",
                self.url, self.base, r.1.text
            )),
        }
    }

    /// Creates the base when it is an `ou=` under an existing entry, as `directory import`
    /// writes it.
    pub async fn create_base(&self, ldap: &mut Ldap) -> Result<(), String> {
        let Some(ou) = container_ou(&self.base) else {
            return Err(format!(
                "{}: the base {} does not exist (only an ou= base is created by the sync)",
                self.url, self.base
            ));
        };
        let attrs = vec![
            (
                "objectClass".to_string(),
                HashSet::from(["top".to_string(), "organizationalUnit".to_string()]),
            ),
            ("ou".to_string(), HashSet::from([ou.to_string()])),
        ];
        ldap.with_timeout(self.timeout)
            .add(&self.base, attrs)
            .await
            .and_then(|r| r.success())
            .map(|_| ())
            .map_err(|e| format!("{}: creating {}: {e}", self.url, self.base))
    }

    /// Feeds every entry one level under the base to the planner.
    pub async fn read(
        &self,
        ldap: &mut Ldap,
        planner: &mut Planner<'_>,
        progress: &Progress,
    ) -> Result<(), String> {
        let ctx =
            |e: LdapError| format!("{}: reading the entries under {}: {e}", self.url, self.base);
        let adapters: Vec<Box<dyn Adapter<_, _>>> = vec![
            Box::new(EntriesOnly::new()),
            Box::new(PagedResults::new(PAGE_SIZE)),
        ];
        let mut stream = ldap
            .with_timeout(self.timeout)
            .streaming_search_with(
                adapters,
                &self.base,
                Scope::OneLevel,
                "(objectClass=*)",
                MAPPED_ATTRIBUTES.to_vec(),
            )
            .await
            .map_err(ctx)?;
        while let Some(entry) = stream.next().await.map_err(ctx)? {
            let e = SearchEntry::construct(entry);
            planner.see(&e.dn, &e.attrs);
            progress.inc(1);
        }
        stream.finish().await.success().map_err(ctx)?;
        Ok(())
    }
}

/// One LDAP write.
#[derive(Clone)]
enum Op {
    Add(String, Vec<(String, HashSet<String>)>),
    Modify(String, Vec<Mod<String>>),
    Delete(String),
}

impl Op {
    fn dn(&self) -> &str {
        match self {
            Op::Add(dn, _) | Op::Modify(dn, _) | Op::Delete(dn) => dn,
        }
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    Add,
    Modify,
    Delete,
}

/// What was applied.
#[derive(Debug, Default)]
pub struct Applied {
    pub added: usize,
    pub modified: usize,
    pub deleted: usize,
    /// Operations the server refused: "DN: why", the first [`MAX_FAILURES`].
    pub failures: Vec<String>,
    /// Why the run stopped early (connection lost, too many failures).
    pub aborted: Option<String>,
}

fn add_op(base: &str, lines: &[ExtractEntry<'_>]) -> Op {
    let m = map_entry(lines);
    let mut attrs: Vec<(String, HashSet<String>)> = vec![(
        "objectClass".into(),
        OBJECT_CLASSES.iter().map(|s| s.to_string()).collect(),
    )];
    attrs.extend(
        m.attrs
            .iter()
            .map(|(a, v)| (a.to_string(), v.iter().cloned().collect())),
    );
    Op::Add(m.dn(base), attrs)
}

fn modify_op(m: &Modify) -> Op {
    let mods = m
        .changes
        .iter()
        .map(|(a, v)| Mod::Replace(a.to_string(), v.iter().cloned().collect()))
        .collect();
    Op::Modify(m.dn.clone(), mods)
}

/// The plan's operations in order, made one at a time (an add is mapped only when its turn
/// comes). A named iterator rather than closures: the future must be `Send` for the gateway's
/// `tokio::spawn`, which closures over borrowed items defeat (rustc's higher-ranked lifetime
/// limitation).
struct Ops<'a> {
    plan: &'a Plan,
    extract: &'a Extract,
    base: &'a str,
    next: usize,
}

impl Iterator for Ops<'_> {
    type Item = (Kind, Op);

    fn next(&mut self) -> Option<(Kind, Op)> {
        let p = self.plan;
        loop {
            let i = self.next;
            self.next += 1;
            let (a, m) = (p.adds.len(), p.modifies.len());
            if i < a {
                let lines = self.extract.group(p.adds[i]);
                if lines.is_empty() {
                    continue;
                }
                return Some((Kind::Add, add_op(self.base, &lines)));
            }
            if i < a + m {
                return Some((Kind::Modify, modify_op(&p.modifies[i - a])));
            }
            return p
                .deletes
                .get(i - a - m)
                .map(|dn| (Kind::Delete, Op::Delete(dn.clone())));
        }
    }
}

/// Whether the server offers LDAP transactions (RFC 5805), read from the root DSE.
async fn supports_transactions(ldap: &mut Ldap, timeout: Duration) -> bool {
    let r = ldap
        .with_timeout(timeout)
        .search(
            "",
            Scope::Base,
            "(objectClass=*)",
            vec!["supportedExtension"],
        )
        .await
        .and_then(|r| r.success());
    match r {
        Ok((entries, _)) => entries.into_iter().any(|e| {
            SearchEntry::construct(e)
                .attrs
                .values()
                .flatten()
                .any(|oid| oid == TXN_START_OID)
        }),
        Err(_) => false,
    }
}

/// One operation's outcome: the server's result code and text, or a transport error.
type Outcome = Result<(u32, String), String>;

async fn send(ldap: &mut Ldap, op: Op, timeout: Duration, txn: Option<&str>) -> Outcome {
    let ldap = match txn {
        Some(id) => ldap.with_controls(TxnSpec { txn_id: id }),
        None => ldap,
    };
    let ldap = ldap.with_timeout(timeout);
    let r = match op {
        Op::Add(dn, attrs) => ldap.add(&dn, attrs).await,
        Op::Modify(dn, mods) => ldap.modify(&dn, mods).await,
        Op::Delete(dn) => ldap.delete(&dn).await,
    };
    r.map(|r| (r.rc, r.text)).map_err(|e| e.to_string())
}

/// A batch in one transaction: every operation sent at once, then one commit, so the server
/// syncs its disk once per batch instead of once per entry (slapd with its default
/// durability spends ≈ 3.6 ms per single add on a VM disk: 32 minutes for 535,000 adds).
/// `None` when the transaction did not commit (nothing of it was applied).
async fn send_in_transaction(
    ldap: &mut Ldap,
    batch: &[(Kind, Op)],
    timeout: Duration,
) -> Result<Option<Vec<Outcome>>, String> {
    let ldap3::result::ExopResult(exop, res) = ldap
        .with_timeout(timeout)
        .extended(StartTxn)
        .await
        .map_err(|e| e.to_string())?;
    if res.rc != 0 {
        return Ok(None);
    }
    let Some(id) = exop.val.and_then(|v| String::from_utf8(v).ok()) else {
        return Ok(None);
    };
    let mut queued = Vec::with_capacity(batch.len());
    for (_, op) in batch {
        let mut l = ldap.clone();
        let (op, id) = (op.clone(), id.as_str());
        queued.push(async move { send(&mut l, op, timeout, Some(id)).await });
    }
    let outcomes = futures::future::join_all(queued).await;
    let all_queued = outcomes.iter().all(|o| matches!(o, Ok((0, _))));
    let commit = all_queued;
    let ldap3::result::ExopResult(_, end) = ldap
        .with_timeout(timeout)
        .extended(EndTxn {
            txn_id: &id,
            commit,
        })
        .await
        .map_err(|e| e.to_string())?;
    if commit && end.rc == 0 {
        Ok(Some(outcomes))
    } else {
        Ok(None)
    }
}

/// A batch operation by operation (all in flight at once on the connection).
async fn send_each(ldap: &Ldap, batch: Vec<(Kind, Op)>, timeout: Duration) -> Vec<Outcome> {
    let mut sent = Vec::with_capacity(batch.len());
    for (_, op) in batch {
        let mut l = ldap.clone();
        sent.push(async move { send(&mut l, op, timeout, None).await });
    }
    futures::future::join_all(sent).await
}

/// Shared state of the writers.
struct Writers<'a> {
    ops: std::sync::Mutex<Ops<'a>>,
    done: std::sync::Mutex<Applied>,
    refused: std::sync::atomic::AtomicUsize,
    stop: std::sync::atomic::AtomicBool,
}

impl Writers<'_> {
    fn next_batch(&self, size: usize) -> Vec<(Kind, Op)> {
        if self.stop.load(std::sync::atomic::Ordering::Relaxed) {
            return Vec::new();
        }
        let mut ops = self.ops.lock().unwrap_or_else(|p| p.into_inner());
        ops.by_ref().take(size).collect()
    }

    fn record(&self, batch: &[(Kind, Op)], outcomes: Vec<Outcome>, url: &str) {
        use std::sync::atomic::Ordering;
        let mut done = self.done.lock().unwrap_or_else(|p| p.into_inner());
        for ((kind, op), outcome) in batch.iter().zip(outcomes) {
            match outcome {
                Ok((rc, _)) if rc == 0 || (*kind == Kind::Delete && rc == 32) => match kind {
                    Kind::Add => done.added += 1,
                    Kind::Modify => done.modified += 1,
                    Kind::Delete => done.deleted += 1,
                },
                Ok((rc, text)) => {
                    let n = self.refused.fetch_add(1, Ordering::Relaxed) + 1;
                    if done.failures.len() < MAX_FAILURES {
                        let text = if text.is_empty() {
                            String::new()
                        } else {
                            format!(" ({text})")
                        };
                        done.failures
                            .push(format!("{}: result code {rc}{text}", op.dn()));
                    }
                    if n >= MAX_FAILURES && done.aborted.is_none() {
                        done.aborted = Some(format!("{n} operations refused by the server"));
                        self.stop.store(true, Ordering::Relaxed);
                    }
                }
                Err(e) => {
                    if done.aborted.is_none() {
                        done.aborted = Some(format!("{url}: {}: {e}", op.dn()));
                    }
                    self.stop.store(true, Ordering::Relaxed);
                }
            }
        }
    }
}

/// One connection's writer: takes the next batch until none is left.
async fn writer(
    w: &Writers<'_>,
    ldap: Ldap,
    txn: bool,
    timeout: Duration,
    url: &str,
    progress: &Progress,
) {
    let mut ldap = ldap;
    let mut txn = txn;
    loop {
        let batch = w.next_batch(BATCH);
        if batch.is_empty() {
            return;
        }
        let outcomes = if txn {
            match send_in_transaction(&mut ldap, &batch, timeout).await {
                Ok(Some(o)) => o,
                // Not committed (an operation refused, or transactions refused after all):
                // nothing of it was applied; one by one, so the others go through and the
                // refused one is reported.
                Ok(None) => {
                    txn = false;
                    send_each(&ldap, batch.clone(), timeout).await
                }
                Err(e) => batch.iter().map(|_| Err(e.clone())).collect(),
            }
        } else {
            send_each(&ldap, batch.clone(), timeout).await
        };
        progress.inc(batch.len() as u64);
        w.record(&batch, outcomes, url);
    }
}

/// Applies the plan: adds, then modifications, then deletions (so a run cut short leaves
/// recipients known rather than unknown), in batches of [`BATCH`] over the connections, each
/// batch in one transaction when asked and the server offers them. Each batch stands alone, so a killed
/// run leaves a consistent LDAP and the next run's delta finishes the job.
pub async fn apply(
    target: &Target,
    conns: &[Ldap],
    plan: &Plan,
    extract: &Extract,
    progress: &Progress,
) -> Applied {
    let Some(first) = conns.first() else {
        return Applied {
            aborted: Some("no LDAP connection".into()),
            ..Applied::default()
        };
    };
    let txn =
        target.transactions && supports_transactions(&mut first.clone(), target.timeout).await;
    tracing::debug!(transactions = txn, "directory sync: writing");
    let w = Writers {
        ops: std::sync::Mutex::new(Ops {
            plan,
            extract,
            base: &target.base,
            next: 0,
        }),
        done: std::sync::Mutex::new(Applied::default()),
        refused: Default::default(),
        stop: Default::default(),
    };
    let mut writers = Vec::with_capacity(conns.len());
    for c in conns {
        writers.push(writer(
            &w,
            c.clone(),
            txn,
            target.timeout,
            &target.url,
            progress,
        ));
    }
    futures::future::join_all(writers).await;
    w.done.into_inner().unwrap_or_else(|p| p.into_inner())
}
