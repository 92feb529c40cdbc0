//! The shared journal: PostgreSQL, for several gateways writing to one database (one
//! console, one report). Each batch is a handful of statements whatever its size: the rows
//! travel as arrays and are expanded with `UNNEST` (a multi-row insert without building SQL
//! text per batch).
//!
//! The writer thread runs its own single-threaded Tokio runtime for tokio-postgres, so the
//! gateway's runtime never waits on the database. Connection lost or server down: the batch
//! is kept and retried after a reconnection (backoff up to 5 s).

use super::plan::{MsgStatus, Plan};
use super::schema;
use super::writer::{Backend, WriteError};
use std::sync::Arc;
use std::time::Duration;
use tokio_postgres::{Client, Statement};

/// Any lock id: serialises schema creation between gateways starting together.
const SCHEMA_LOCK: i64 = 0x7061_7373_6a72_6e6c; // "passjrnl"

pub use crate::config::{postgres_target as target, PgTarget as Target, SslMode};

/// The rustls side of a target: reads `sslrootcert` (blocking: call it off the runtime's
/// threads, see [`connect`]).
pub(crate) fn tls_connector(
    t: &Target,
) -> Result<tokio_postgres_rustls::MakeRustlsConnect, String> {
    use crate::tls::{anonymous_client_config, provider, AcceptAnyServer};
    let verifier: Arc<dyn rustls::client::danger::ServerCertVerifier> = match &t.root_cert {
        Some(path) => {
            let mut roots = rustls::RootCertStore::empty();
            for c in crate::tls::load_certs("journal.url sslrootcert", path)
                .map_err(|e| e.to_string())?
            {
                roots
                    .add(c)
                    .map_err(|e| format!("journal.url sslrootcert {}: {e}", path.display()))?;
            }
            let full = rustls::client::WebPkiServerVerifier::builder_with_provider(
                Arc::new(roots),
                provider(),
            )
            .build()
            .map_err(|e| e.to_string())?;
            if t.mode == SslMode::VerifyFull {
                full
            } else {
                Arc::new(AnyName(full))
            }
        }
        None => Arc::new(AcceptAnyServer(provider())),
    };
    let cfg = anonymous_client_config(verifier).map_err(|e| e.to_string())?;
    Ok(tokio_postgres_rustls::MakeRustlsConnect::new(
        (*cfg).clone(),
    ))
}

/// `verify-ca`: the chain must lead to the CA, whatever name the certificate carries.
#[derive(Debug)]
struct AnyName(Arc<rustls::client::WebPkiServerVerifier>);

impl rustls::client::danger::ServerCertVerifier for AnyName {
    fn verify_server_cert(
        &self,
        end_entity: &rustls::pki_types::CertificateDer<'_>,
        intermediates: &[rustls::pki_types::CertificateDer<'_>],
        name: &rustls::pki_types::ServerName<'_>,
        ocsp: &[u8],
        now: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        match self
            .0
            .verify_server_cert(end_entity, intermediates, name, ocsp, now)
        {
            Err(rustls::Error::InvalidCertificate(rustls::CertificateError::NotValidForName))
            | Err(rustls::Error::InvalidCertificate(
                rustls::CertificateError::NotValidForNameContext { .. },
            )) => Ok(rustls::client::danger::ServerCertVerified::assertion()),
            other => other,
        }
    }
    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls12_signature(message, cert, dss)
    }
    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls13_signature(message, cert, dss)
    }
    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.supported_verify_schemes()
    }
}

/// An error and its causes (tokio-postgres says "error performing TLS handshake" and keeps
/// which certificate was refused, and why, in its source).
pub(crate) fn with_causes(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        let text = c.to_string();
        if !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        cause = c.source();
    }
    out
}

/// Connects; the connection task runs on the caller's runtime. The CA file is read on a
/// blocking thread.
pub async fn connect(url: &str) -> Result<Client, String> {
    let t = target(url)?;
    let (t, tls) = tokio::task::spawn_blocking(move || {
        let tls = tls_connector(&t);
        (t, tls)
    })
    .await
    .map_err(|e| e.to_string())?;
    let (client, conn) = t
        .config
        .connect(tls?)
        .await
        .map_err(|e| format!("connecting: {}", with_causes(&e)))?;
    tokio::spawn(async move {
        if let Err(e) = conn.await {
            tracing::debug!(error = %e, "journal: PostgreSQL connection closed");
        }
    });
    Ok(client)
}

/// Creates the tables if needed (one gateway at a time) and checks the schema version.
pub async fn migrate(client: &mut Client) -> Result<(), String> {
    let tx = client.transaction().await.map_err(|e| e.to_string())?;
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&SCHEMA_LOCK])
        .await
        .map_err(|e| e.to_string())?;
    // Without the server's NOTICE for each IF [NOT] EXISTS that skips (a log line each, at
    // every start).
    tx.batch_execute("SET LOCAL client_min_messages = warning")
        .await
        .map_err(|e| e.to_string())?;
    tx.batch_execute(&schema::ddl(true))
        .await
        .map_err(|e| format!("creating the tables: {e}"))?;
    let v: Option<String> = tx
        .query_opt(
            "SELECT value FROM journal_meta WHERE key = 'schema_version'",
            &[],
        )
        .await
        .map_err(|e| e.to_string())?
        .map(|r| r.get(0));
    let m = schema::check_version(v.as_deref())?;
    if m == schema::Migration::FromV1 {
        tracing::info!("journal: upgrading the schema from version 1 (day-led lookups)");
        tx.batch_execute(schema::UPGRADE_FROM_1)
            .await
            .map_err(|e| format!("upgrading from version 1: {e}"))?;
    }
    tx.batch_execute(schema::DROPPED)
        .await
        .map_err(|e| format!("dropping old indexes: {e}"))?;
    tx.batch_execute(schema::INDEXES)
        .await
        .map_err(|e| format!("creating the indexes: {e}"))?;
    if m != schema::Migration::None {
        tx.execute(
            "INSERT INTO journal_meta (key, value) VALUES ('schema_version', $1)
             ON CONFLICT (key) DO UPDATE SET value = EXCLUDED.value",
            &[&schema::VERSION.to_string()],
        )
        .await
        .map_err(|e| e.to_string())?;
    }
    tx.commit().await.map_err(|e| e.to_string())
}

pub async fn gateway_id(client: &Client, name: &str) -> Result<i32, String> {
    client
        .execute(
            "INSERT INTO gateways (name) VALUES ($1) ON CONFLICT (name) DO NOTHING",
            &[&name],
        )
        .await
        .map_err(|e| e.to_string())?;
    let row = client
        .query_one("SELECT id FROM gateways WHERE name = $1", &[&name])
        .await
        .map_err(|e| e.to_string())?;
    Ok(row.get(0))
}

fn classify(e: &tokio_postgres::Error) -> bool {
    if e.is_closed() {
        return true;
    }
    match e.code() {
        // No server code: an I/O error, the connection is gone.
        None => true,
        Some(c) => {
            let c = c.code();
            // connection exception, operator intervention (shutdown), insufficient
            // resources (disk full), transaction rollback (deadlock), lock not available
            c.starts_with("08")
                || c.starts_with("57")
                || c.starts_with("53")
                || c.starts_with("40")
                || c == "55P03"
        }
    }
}

struct Prepared {
    messages: Statement,
    recipients: Statement,
    events: Statement,
    rcpt_status: Statement,
    msg_set: Statement,
    msg_recompute: Statement,
}

async fn prepare(c: &Client) -> Result<Prepared, tokio_postgres::Error> {
    Ok(Prepared {
        messages: c
            .prepare(
                "INSERT INTO messages (qid, gw, queued, time, updated, status, origin, listener,
                    establishment, client_ip, client_dn, tls, sender, message_id, size, nrcpt, day)
                 SELECT u.qid, $1, u.queued, u.time, u.updated, u.status, u.origin, u.listener,
                    u.establishment, u.client_ip, u.client_dn, u.tls, u.sender, u.message_id,
                    u.size, u.nrcpt, u.day
                 FROM UNNEST($2::text[], $3::bool[], $4::bigint[], $5::text[], $6::text[],
                    $7::text[], $8::text[], $9::text[], $10::text[], $11::text[], $12::text[],
                    $13::text[], $14::bigint[], $15::int[], $16::bigint[], $17::bigint[])
                    AS u(qid, queued, time, status, origin, listener, establishment, client_ip,
                         client_dn, tls, sender, message_id, size, nrcpt, updated, day)
                 ON CONFLICT (qid, gw) DO NOTHING",
            )
            .await?,
        recipients: c
            .prepare(
                "INSERT INTO recipients (qid, gw, idx, address, route, transport, bal_type,
                    destination, status, day)
                 SELECT u.qid, $1, u.idx, u.address, u.route, u.transport, u.bal_type,
                    u.destination, u.status, u.day
                 FROM UNNEST($2::text[], $3::int[], $4::text[], $5::text[], $6::text[],
                    $7::text[], $8::text[], $9::text[], $10::bigint[])
                    AS u(qid, idx, address, route, transport, bal_type, destination, status, day)
                 ON CONFLICT (qid, gw, idx) DO NOTHING",
            )
            .await?,
        events: c
            .prepare(
                "INSERT INTO events (qid, gw, time, kind, rcpt, origin, destination,
                    establishment, mailbox, peer, reason, tls_failure, bal_type, details)
                 SELECT u.qid, $1, u.time, u.kind, u.rcpt, COALESCE(u.origin, m.origin),
                    COALESCE(u.destination, r.destination),
                    COALESCE(u.establishment, m.establishment),
                    COALESCE(u.mailbox, CASE COALESCE(u.destination, r.destination)
                        WHEN 'mailbox' THEN u.rcpt
                        WHEN 'trust-space' THEN NULLIF(m.sender, '') END),
                    u.peer, u.reason, u.tls_failure, COALESCE(u.bal_type, r.bal_type), u.details
                 FROM UNNEST($2::text[], $3::bigint[], $4::text[], $5::text[], $6::int[],
                    $7::text[], $8::text[], $9::text[], $10::text[], $11::text[], $12::text[],
                    $13::text[], $14::text[], $15::text[]) WITH ORDINALITY
                    AS u(qid, time, kind, rcpt, idx, origin, destination, establishment,
                         mailbox, peer, reason, tls_failure, bal_type, details, ord)
                 LEFT JOIN messages m ON m.qid = u.qid AND m.gw = $1
                 LEFT JOIN recipients r ON r.qid = u.qid AND r.gw = $1 AND r.idx = u.idx
                 ORDER BY u.ord",
            )
            .await?,
        rcpt_status: c
            .prepare(
                "UPDATE recipients r SET status = u.status
                 FROM UNNEST($2::text[], $3::int[], $4::text[]) AS u(qid, idx, status)
                 WHERE r.gw = $1 AND r.qid = u.qid AND r.idx = u.idx",
            )
            .await?,
        msg_set: c
            .prepare(
                "UPDATE messages m SET status = u.status, updated = u.t
                 FROM UNNEST($2::text[], $3::text[], $4::bigint[]) AS u(qid, status, t)
                 WHERE m.gw = $1 AND m.qid = u.qid",
            )
            .await?,
        msg_recompute: c
            .prepare(&format!(
                "UPDATE messages m SET updated = u.t, status = COALESCE({}, m.status)
                 FROM UNNEST($2::text[], $3::bigint[]) AS u(qid, t)
                 WHERE m.gw = $1 AND m.qid = u.qid",
                schema::STATUS_FROM_RECIPIENTS
            ))
            .await?,
    })
}

async fn write_plan(
    c: &mut Client,
    st: &Prepared,
    gw: i32,
    p: &Plan,
) -> Result<(), tokio_postgres::Error> {
    let tx = c.transaction().await?;
    if !p.messages.is_empty() {
        let m = &p.messages;
        let col = |f: fn(&super::plan::MessageRow) -> Option<String>| -> Vec<Option<String>> {
            m.iter().map(f).collect()
        };
        tx.execute(
            &st.messages,
            &[
                &gw,
                &m.iter().map(|r| r.qid.clone()).collect::<Vec<_>>(),
                &m.iter().map(|r| r.queued).collect::<Vec<_>>(),
                &m.iter().map(|r| r.time).collect::<Vec<_>>(),
                &m.iter().map(|r| r.status).collect::<Vec<_>>(),
                &col(|r| r.origin.clone()),
                &col(|r| r.listener.clone()),
                &col(|r| r.establishment.clone()),
                &col(|r| r.client_ip.clone()),
                &col(|r| r.client_dn.clone()),
                &col(|r| r.tls.clone()),
                &col(|r| r.sender.clone()),
                &col(|r| r.message_id.clone()),
                &m.iter().map(|r| r.size).collect::<Vec<_>>(),
                &m.iter().map(|r| r.nrcpt).collect::<Vec<_>>(),
                &m.iter().map(|r| r.updated).collect::<Vec<_>>(),
                &m.iter().map(|r| r.day).collect::<Vec<_>>(),
            ],
        )
        .await?;
    }
    if !p.recipients.is_empty() {
        let r = &p.recipients;
        let col = |f: fn(&super::plan::RecipientRow) -> Option<String>| -> Vec<Option<String>> {
            r.iter().map(f).collect()
        };
        tx.execute(
            &st.recipients,
            &[
                &gw,
                &r.iter().map(|x| x.qid.clone()).collect::<Vec<_>>(),
                &r.iter().map(|x| x.idx).collect::<Vec<_>>(),
                &r.iter().map(|x| x.address.clone()).collect::<Vec<_>>(),
                &col(|x| x.route.clone()),
                &col(|x| x.transport.clone()),
                &col(|x| x.bal_type.clone()),
                &col(|x| x.destination.clone()),
                &r.iter().map(|x| x.status).collect::<Vec<_>>(),
                &r.iter().map(|x| x.day).collect::<Vec<_>>(),
            ],
        )
        .await?;
    }
    if !p.events.is_empty() {
        let e = &p.events;
        let col = |f: fn(&super::plan::EventRow) -> Option<String>| -> Vec<Option<String>> {
            e.iter().map(f).collect()
        };
        tx.execute(
            &st.events,
            &[
                &gw,
                &e.iter().map(|x| x.qid.clone()).collect::<Vec<_>>(),
                &e.iter().map(|x| x.time).collect::<Vec<_>>(),
                &e.iter().map(|x| x.kind).collect::<Vec<_>>(),
                &col(|x| x.rcpt.clone()),
                &e.iter().map(|x| x.idx).collect::<Vec<_>>(),
                &col(|x| x.origin.clone()),
                &col(|x| x.destination.clone()),
                &col(|x| x.establishment.clone()),
                &col(|x| x.mailbox.clone()),
                &col(|x| x.peer.clone()),
                &col(|x| x.reason.clone()),
                &col(|x| x.tls_failure.clone()),
                &col(|x| x.bal_type.clone()),
                &e.iter().map(|x| x.details.clone()).collect::<Vec<_>>(),
            ],
        )
        .await?;
    }
    if !p.rcpt_status.is_empty() {
        let s = &p.rcpt_status;
        tx.execute(
            &st.rcpt_status,
            &[
                &gw,
                &s.iter().map(|x| x.0.clone()).collect::<Vec<_>>(),
                &s.iter().map(|x| x.1).collect::<Vec<_>>(),
                &s.iter().map(|x| x.2).collect::<Vec<_>>(),
            ],
        )
        .await?;
    }
    let (mut set, mut recompute) = (Vec::new(), Vec::new());
    for (qid, d, t) in &p.msg_status {
        match d {
            MsgStatus::Set(s) => set.push((qid.clone(), *s, *t)),
            MsgStatus::Recompute => recompute.push((qid.clone(), *t)),
        }
    }
    if !set.is_empty() {
        tx.execute(
            &st.msg_set,
            &[
                &gw,
                &set.iter().map(|x| x.0.clone()).collect::<Vec<_>>(),
                &set.iter().map(|x| x.1).collect::<Vec<_>>(),
                &set.iter().map(|x| x.2).collect::<Vec<_>>(),
            ],
        )
        .await?;
    }
    if !recompute.is_empty() {
        tx.execute(
            &st.msg_recompute,
            &[
                &gw,
                &recompute.iter().map(|x| x.0.clone()).collect::<Vec<_>>(),
                &recompute.iter().map(|x| x.1).collect::<Vec<_>>(),
            ],
        )
        .await?;
    }
    let mut matched = std::collections::HashSet::new();
    for r in &p.receipts {
        let (sql, key) = match &r.queue_id {
            Some(q) => (schema::insert_receipt_by_qid('$'), q),
            None => (schema::insert_receipt(&r.days, '$'), &r.message_id),
        };
        let n = tx
            .execute(&sql, &[&r.time, &r.kind, &r.rcpt, &r.details, key])
            .await?;
        if n > 0 {
            matched.insert(r.report);
        }
    }
    tx.commit().await?;
    schema::count_receipts(&p.receipts, &matched);
    Ok(())
}

/// Deletes up to `limit` events and messages (with their recipients) older than `before`.
pub async fn prune(c: &Client, before: i64, limit: i64) -> Result<u64, tokio_postgres::Error> {
    let mut n = c
        .execute(
            "DELETE FROM events WHERE id IN
                (SELECT id FROM events WHERE time < $1 ORDER BY time LIMIT $2)",
            &[&before, &limit],
        )
        .await?;
    n += c
        .execute(
            "WITH old AS (SELECT qid, gw FROM messages WHERE time < $1 AND updated < $1
                          ORDER BY time LIMIT $2),
                  gone AS (DELETE FROM recipients r USING old
                           WHERE r.qid = old.qid AND r.gw = old.gw)
             DELETE FROM messages m USING old WHERE m.qid = old.qid AND m.gw = old.gw",
            &[&before, &limit],
        )
        .await?;
    Ok(n)
}

struct Connected {
    client: Client,
    gw: i32,
    st: Prepared,
}

pub struct PgWriter {
    url: String,
    gateway: String,
    rt: Option<tokio::runtime::Runtime>,
    conn: Option<Connected>,
}

impl PgWriter {
    pub fn new(url: String, gateway: String) -> PgWriter {
        PgWriter {
            url,
            gateway,
            rt: None,
            conn: None,
        }
    }

    fn runtime(&mut self) -> Result<&tokio::runtime::Runtime, WriteError> {
        if self.rt.is_none() {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map_err(|e| WriteError {
                    message: format!("journal runtime: {e}"),
                    retryable: true,
                })?;
            self.rt = Some(rt);
        }
        self.rt.as_ref().ok_or_else(|| WriteError {
            message: "journal runtime missing".into(),
            retryable: true,
        })
    }

    /// Connects (and creates the schema) when not connected.
    fn connect(&mut self) -> Result<(), WriteError> {
        if self.conn.is_some() {
            return Ok(());
        }
        let (url, gateway) = (self.url.clone(), self.gateway.clone());
        let made = self.runtime()?.block_on(async move {
            let made = async {
                let mut client = connect(&url).await?;
                migrate(&mut client).await?;
                let gw = gateway_id(&client, &gateway).await?;
                let st = prepare(&client).await.map_err(|e| e.to_string())?;
                Ok::<_, String>(Connected { client, gw, st })
            };
            tokio::time::timeout(Duration::from_secs(30), made)
                .await
                .unwrap_or_else(|_| Err("connecting: timed out".into()))
        });
        match made {
            Ok(c) => {
                self.conn = Some(c);
                Ok(())
            }
            Err(message) => Err(WriteError {
                message,
                retryable: true,
            }),
        }
    }

    /// What a statement's result means for the connection: a failure that may be the
    /// connection's drops it, so the next try reconnects.
    fn settle<T>(
        &mut self,
        r: Result<Result<T, tokio_postgres::Error>, tokio::time::error::Elapsed>,
    ) -> Result<T, WriteError> {
        let e = match r {
            Ok(Ok(v)) => return Ok(v),
            Ok(Err(e)) => e,
            Err(_) => {
                self.conn = None;
                return Err(WriteError {
                    message: "timed out".into(),
                    retryable: true,
                });
            }
        };
        let retryable = classify(&e);
        if retryable || self.conn.as_ref().is_some_and(|c| c.client.is_closed()) {
            self.conn = None;
        }
        Err(WriteError {
            message: e.to_string(),
            retryable,
        })
    }
}

/// Per batch or pruning round: past this the connection is presumed dead.
const STATEMENT_LIMIT: Duration = Duration::from_secs(60);

impl Backend for PgWriter {
    fn describe(&self) -> String {
        match target(&self.url) {
            Ok(t) => format!(
                "PostgreSQL {:?} database {}, sslmode {}",
                t.config.get_hosts(),
                t.config.get_dbname().unwrap_or("-"),
                t.mode.as_str()
            ),
            Err(e) => e,
        }
    }

    fn write(&mut self, p: &Plan) -> Result<(), WriteError> {
        self.connect()?;
        let (Some(rt), Some(c)) = (self.rt.as_ref(), self.conn.as_mut()) else {
            return Err(WriteError {
                message: "not connected".into(),
                retryable: true,
            });
        };
        // The timer is made inside the runtime (a Sleep needs its reactor).
        let r = rt.block_on(async {
            tokio::time::timeout(STATEMENT_LIMIT, write_plan(&mut c.client, &c.st, c.gw, p)).await
        });
        self.settle(r)
    }

    fn prune(&mut self, before: i64, limit: i64) -> Result<u64, WriteError> {
        self.connect()?;
        let (Some(rt), Some(c)) = (self.rt.as_ref(), self.conn.as_ref()) else {
            return Err(WriteError {
                message: "not connected".into(),
                retryable: true,
            });
        };
        let r = rt.block_on(async {
            tokio::time::timeout(STATEMENT_LIMIT, prune(&c.client, before, limit)).await
        });
        self.settle(r)
    }
}
