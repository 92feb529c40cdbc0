//! The shared state in PostgreSQL: the tables, their migration, the reads a gateway applies,
//! and the writes of the CLI and the console. Every write is one transaction that first locks
//! the state's version row: writes are serialized across gateways, each is checked against
//! the whole state as committed (a change that would not validate is refused here, never
//! half-applied on the gateways), and a write made from an out-of-date view is refused rather
//! than silently overwriting the other operator's (the "expected" text's digest).

use super::users_file::UserRecord;
use super::StateError;
use crate::config::StateConfig;
use futures::StreamExt;
use std::time::Duration;
use tokio_postgres::{AsyncMessage, Client};

/// The channel every write notifies, with the new version as payload.
pub const CHANNEL: &str = "passerelle_state";
const SCHEMA_LOCK: i64 = 0x7061_7373_7374_6174; // "passstat"
const SCHEMA_VERSION: i64 = 1;
/// A statement that takes longer than this is treated as the database being away: a stopped
/// server answers at once, a lost one would otherwise hold the console's request.
pub const STATEMENT_TIMEOUT: Duration = Duration::from_secs(3);

const DDL: &str = "
CREATE TABLE IF NOT EXISTS state_meta (key text PRIMARY KEY, value text NOT NULL);
CREATE TABLE IF NOT EXISTS state_version (
    id int PRIMARY KEY CHECK (id = 1), version bigint NOT NULL);
INSERT INTO state_version (id, version) VALUES (1, 0) ON CONFLICT (id) DO NOTHING;
CREATE TABLE IF NOT EXISTS state_establishments (
    name text PRIMARY KEY CHECK (name ~ '^[a-z0-9][a-z0-9-]{0,63}$'), toml text NOT NULL, version bigint NOT NULL,
    updated_at timestamptz NOT NULL DEFAULT now(), updated_by text NOT NULL);
CREATE TABLE IF NOT EXISTS state_users (
    name text PRIMARY KEY CHECK (name ~ '^[A-Za-z0-9._@-]{1,64}$'),
    role text NOT NULL CHECK (role IN ('operator', 'auditor') OR role ~ '^establishment:[a-z0-9-]+$'), password_hash text NOT NULL,
    version bigint NOT NULL, updated_at timestamptz NOT NULL DEFAULT now(),
    updated_by text NOT NULL);
CREATE TABLE IF NOT EXISTS state_changes (
    version bigint PRIMARY KEY, what text NOT NULL, by_whom text NOT NULL,
    at timestamptz NOT NULL DEFAULT now());
CREATE TABLE IF NOT EXISTS state_sessions (
    id_hash bytea PRIMARY KEY, user_name text NOT NULL, role text NOT NULL,
    stamp text NOT NULL, csrf text NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now(),
    last_seen timestamptz NOT NULL DEFAULT now());
ALTER TABLE state_users ADD COLUMN IF NOT EXISTS totp text;
";

/// Creates or replaces an establishment ($1 name, $2 TOML, $3 version, $4 by whom).
const UPSERT_ESTABLISHMENT: &str =
    "INSERT INTO state_establishments (name, toml, version, updated_by) VALUES ($1, $2, $3, $4)
     ON CONFLICT (name) DO UPDATE SET toml = EXCLUDED.toml, version = EXCLUDED.version,
     updated_at = now(), updated_by = EXCLUDED.updated_by";
/// Creates or replaces a user ($1 name, $2 role, $3 hash, $4 version, $5 by whom, $6 the
/// second factor's secret).
const UPSERT_USER: &str =
    "INSERT INTO state_users (name, role, password_hash, version, updated_by, totp) VALUES ($1, $2, $3, $4, $5, $6)
     ON CONFLICT (name) DO UPDATE SET role = EXCLUDED.role, password_hash = EXCLUDED.password_hash, totp = COALESCE(EXCLUDED.totp, state_users.totp),
     version = EXCLUDED.version, updated_at = now(), updated_by = EXCLUDED.updated_by";

/// An error of the server itself (a constraint, a lock timeout) refuses the change; any
/// other (connection lost, refused, TLS) says the database is unreachable.
fn db(e: tokio_postgres::Error) -> StateError {
    match e.as_db_error() {
        Some(d) => StateError::Refused(vec![format!("the database refused it: {}", d.message())]),
        None => StateError::Unreachable(crate::journal::postgres::with_causes(&e)),
    }
}

/// Connects (the CA and the password files read on a blocking thread). `notify`: where the
/// notifications of [`CHANNEL`] go once the connection LISTENs.
pub async fn connect(
    sc: &StateConfig,
    notify: Option<tokio::sync::mpsc::UnboundedSender<i64>>,
) -> Result<Client, StateError> {
    let url = sc.url.clone().unwrap_or_default();
    let password = sc.password_file.clone();
    let prepared = tokio::task::spawn_blocking(move || -> Result<_, String> {
        let mut t = crate::journal::postgres::target(&url)
            .map_err(|e| e.replacen("journal.url", "state.url", 1))?;
        if let Some(f) = password {
            let text = std::fs::read_to_string(&f)
                .map_err(|e| format!("state.password_file {}: {e}", f.display()))?;
            t.config
                .password(text.lines().next().unwrap_or("").trim_end());
        }
        t.config.connect_timeout(Duration::from_secs(2));
        let tls = crate::journal::postgres::tls_connector(&t)?;
        Ok((t, tls))
    })
    .await
    .map_err(|e| StateError::Unreachable(e.to_string()))?;
    let (t, tls) = prepared.map_err(StateError::Config)?;
    let (client, mut conn) = t.config.connect(tls).await.map_err(db)?;
    tokio::spawn(async move {
        // Polling for messages also drives the connection's requests.
        let mut messages = futures::stream::poll_fn(move |cx| conn.poll_message(cx));
        while let Some(m) = messages.next().await {
            match m {
                Ok(AsyncMessage::Notification(n)) => {
                    if let Some(tx) = &notify {
                        let _ = tx.send(n.payload().parse().unwrap_or(-1));
                    }
                }
                Ok(_) => {}
                Err(e) => {
                    tracing::debug!(error = %e, "state: PostgreSQL connection closed");
                    break;
                }
            }
        }
    });
    Ok(client)
}

/// A URL as it may be shown: `user@host:port/database`, never its password.
pub fn target_of(url: &str) -> Result<String, String> {
    let t = crate::journal::postgres::target(url)?;
    let c = &t.config;
    let host = c
        .get_hosts()
        .first()
        .map(|h| match h {
            tokio_postgres::config::Host::Tcp(h) => h.clone(),
            tokio_postgres::config::Host::Unix(p) => p.display().to_string(),
        })
        .unwrap_or_default();
    let port = c.get_ports().first().copied().unwrap_or(5432);
    Ok(format!(
        "{}@{host}:{port}/{}",
        c.get_user().unwrap_or("-"),
        c.get_dbname().unwrap_or("-")
    ))
}

/// Creates the tables when needed (one gateway at a time) and checks the schema's version:
/// a database written by a newer passerelle is refused rather than misread.
pub async fn migrate(client: &mut Client) -> Result<(), StateError> {
    let tx = client.transaction().await.map_err(db)?;
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&SCHEMA_LOCK])
        .await
        .map_err(db)?;
    tx.batch_execute("SET LOCAL client_min_messages = warning")
        .await
        .map_err(db)?;
    tx.batch_execute(DDL).await.map_err(db)?;
    let v: Option<String> = tx
        .query_opt(
            "SELECT value FROM state_meta WHERE key = 'schema_version'",
            &[],
        )
        .await
        .map_err(db)?
        .map(|r| r.get(0));
    match v.as_deref().map(str::parse::<i64>) {
        None => {
            tx.execute(
                "INSERT INTO state_meta (key, value) VALUES ('schema_version', $1)",
                &[&SCHEMA_VERSION.to_string()],
            )
            .await
            .map_err(db)?;
        }
        Some(Ok(SCHEMA_VERSION)) => {}
        Some(other) => {
            return Err(StateError::Config(format!(
                "the shared state's schema is version {other:?}; this passerelle knows {SCHEMA_VERSION}: upgrade it"
            )))
        }
    }
    tx.commit().await.map_err(db)
}

/// The whole state at one version.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct State {
    pub version: i64,
    /// (name, TOML), by name.
    pub establishments: Vec<(String, String)>,
    pub users: Vec<UserRecord>,
}

pub async fn version(client: &Client) -> Result<i64, StateError> {
    let r = client
        .query_one("SELECT version FROM state_version WHERE id = 1", &[])
        .await
        .map_err(db)?;
    Ok(r.get(0))
}

/// The state as one consistent read.
pub async fn read(client: &mut Client) -> Result<State, StateError> {
    let tx = client
        .build_transaction()
        .isolation_level(tokio_postgres::IsolationLevel::RepeatableRead)
        .read_only(true)
        .start()
        .await
        .map_err(db)?;
    let version: i64 = tx
        .query_one("SELECT version FROM state_version WHERE id = 1", &[])
        .await
        .map_err(db)?
        .get(0);
    let establishments = establishment_rows(&tx).await?;
    let users = tx
        .query(
            "SELECT name, role, password_hash, totp FROM state_users ORDER BY name",
            &[],
        )
        .await
        .map_err(db)?
        .iter()
        .map(|r| UserRecord {
            name: r.get(0),
            role: r.get(1),
            password_hash: r.get(2),
            totp: r.get(3),
        })
        .collect();
    tx.commit().await.map_err(db)?;
    Ok(State {
        version,
        establishments,
        users,
    })
}

/// Every establishment (name, TOML), by name.
async fn establishment_rows(
    tx: &tokio_postgres::Transaction<'_>,
) -> Result<Vec<(String, String)>, StateError> {
    Ok(tx
        .query(
            "SELECT name, toml FROM state_establishments ORDER BY name",
            &[],
        )
        .await
        .map_err(db)?
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect())
}

/// The changes after `version`, oldest first: (version, what, by whom).
pub async fn changes_since(
    client: &Client,
    version: i64,
) -> Result<Vec<(i64, String, String)>, StateError> {
    Ok(client
        .query(
            "SELECT version, what, by_whom FROM state_changes WHERE version > $1 ORDER BY version LIMIT 1000",
            &[&version],
        )
        .await
        .map_err(db)?
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2)))
        .collect())
}

/// What a writer saw of an establishment when it decided to change it.
#[derive(Debug, Clone, PartialEq)]
pub enum Expect {
    /// `add`: there must be none of this name.
    Absent,
    /// `remove` from the CLI: it must exist.
    Present,
    /// The console's form: its text must be the one the form was opened on (its digest).
    Text(String),
}

/// A change of one establishment: `text` `None` removes it.
pub struct EstablishmentChange {
    pub name: String,
    pub text: Option<String>,
    pub expect: Expect,
}

/// Checks the whole state with a change in it (the configuration with these establishments);
/// Ok: the warnings. Runs on a blocking thread.
pub type Check = Box<dyn FnOnce(Vec<(String, String)>) -> Result<Vec<String>, Vec<String>> + Send>;

/// Locks the version row (serializing writers across gateways) and returns the next version.
async fn lock(tx: &tokio_postgres::Transaction<'_>) -> Result<i64, StateError> {
    let v: i64 = tx
        .query_one(
            "SELECT version FROM state_version WHERE id = 1 FOR UPDATE",
            &[],
        )
        .await
        .map_err(db)?
        .get(0);
    Ok(v + 1)
}

/// Records version `next` (`what`, `by`) and tells every gateway.
async fn bump(
    tx: &tokio_postgres::Transaction<'_>,
    next: i64,
    what: &str,
    by: &str,
) -> Result<(), StateError> {
    tx.execute(
        "UPDATE state_version SET version = $1 WHERE id = 1",
        &[&next],
    )
    .await
    .map_err(db)?;
    tx.execute(
        "INSERT INTO state_changes (version, what, by_whom) VALUES ($1, $2, $3)",
        &[&next, &what, &by],
    )
    .await
    .map_err(db)?;
    tx.execute("SELECT pg_notify($1, $2)", &[&CHANNEL, &next.to_string()])
        .await
        .map_err(db)?;
    Ok(())
}

/// Applies one establishment change when the whole state with it passes `check`. Ok: the new
/// version and the warnings.
pub async fn change_establishment(
    client: &mut Client,
    change: EstablishmentChange,
    by: &str,
    check: Check,
) -> Result<(i64, Vec<String>), StateError> {
    if !crate::config::establishment::valid_name(&change.name) {
        return Err(StateError::Refused(vec![format!(
            "{:?}: an establishment's name is lowercase letters, digits and '-'",
            change.name
        )]));
    }
    let tx = client.transaction().await.map_err(db)?;
    let next = lock(&tx).await?;
    let mut all = establishment_rows(&tx).await?;
    let name = &change.name;
    let at = all.iter().position(|(n, _)| n == name);
    match (&change.expect, at.map(|i| &all[i].1)) {
        (Expect::Absent, Some(_)) => {
            return Err(StateError::Refused(vec![format!(
                "establishment {name:?} exists; remove it first"
            )]))
        }
        (Expect::Present | Expect::Text(_), None) => {
            return Err(StateError::Refused(vec![format!(
                "no establishment named {name:?} in the shared state"
            )]))
        }
        (Expect::Text(d), Some(now)) if &crate::util::sha256_hex(now.as_bytes()) != d => {
            return Err(StateError::Conflict(format!(
                "establishment {name:?} was changed by someone else since you opened it: nothing written; reload it and apply your change again"
            )))
        }
        _ => {}
    }
    let what = match (&change.text, at) {
        (Some(t), Some(i)) => {
            all[i].1 = t.clone();
            format!("establishment {name} changed")
        }
        (Some(t), None) => {
            all.push((name.clone(), t.clone()));
            all.sort();
            format!("establishment {name} added")
        }
        (None, Some(i)) => {
            all.remove(i);
            format!("establishment {name} removed")
        }
        (None, None) => {
            return Err(StateError::Refused(vec![format!(
                "no establishment named {name:?} in the shared state"
            )]))
        }
    };
    let warnings = tokio::task::spawn_blocking(move || check(all))
        .await
        .map_err(|e| StateError::Unreachable(e.to_string()))?
        .map_err(StateError::Refused)?;
    match &change.text {
        Some(t) => tx
            .execute(UPSERT_ESTABLISHMENT, &[name, t, &next, &by])
            .await
            .map_err(db)?,
        None => tx
            .execute("DELETE FROM state_establishments WHERE name = $1", &[name])
            .await
            .map_err(db)?,
    };
    bump(&tx, next, &what, by).await?;
    tx.commit().await.map_err(db)?;
    Ok((next, warnings))
}

/// Creates or replaces a user. Ok: the new version and whether it replaced one.
pub async fn put_user(
    client: &mut Client,
    u: &UserRecord,
    by: &str,
) -> Result<(i64, bool), StateError> {
    let tx = client.transaction().await.map_err(db)?;
    let next = lock(&tx).await?;
    let replaced = tx
        .query_opt("SELECT 1 FROM state_users WHERE name = $1", &[&u.name])
        .await
        .map_err(db)?
        .is_some();
    tx.execute(
        UPSERT_USER,
        &[&u.name, &u.role, &u.password_hash, &next, &by, &u.totp],
    )
    .await
    .map_err(db)?;
    // A new password or role ends the user's sessions on every gateway.
    tx.execute(
        "DELETE FROM state_sessions WHERE user_name = $1",
        &[&u.name],
    )
    .await
    .map_err(db)?;
    let what = format!(
        "console user {} {} ({})",
        u.name,
        if replaced { "replaced" } else { "added" },
        u.role
    );
    bump(&tx, next, &what, by).await?;
    tx.commit().await.map_err(db)?;
    Ok((next, replaced))
}

/// Removes a user and its sessions. Ok: the new version, or `None` when there was none.
pub async fn remove_user(
    client: &mut Client,
    name: &str,
    by: &str,
) -> Result<Option<i64>, StateError> {
    let tx = client.transaction().await.map_err(db)?;
    let next = lock(&tx).await?;
    let n = tx
        .execute("DELETE FROM state_users WHERE name = $1", &[&name])
        .await
        .map_err(db)?;
    if n == 0 {
        return Ok(None);
    }
    tx.execute("DELETE FROM state_sessions WHERE user_name = $1", &[&name])
        .await
        .map_err(db)?;
    bump(&tx, next, &format!("console user {name} removed"), by).await?;
    tx.commit().await.map_err(db)?;
    Ok(Some(next))
}

/// `state import`: the files' establishments and users into the database, the whole state
/// checked first; rows whose text is already the same are left alone, so importing twice
/// changes nothing. Ok: the counts written (establishments, users) and the version.
pub async fn import(
    client: &mut Client,
    establishments: Vec<(String, String)>,
    users: Vec<UserRecord>,
    by: &str,
    check: Check,
) -> Result<(usize, usize, i64), StateError> {
    let tx = client.transaction().await.map_err(db)?;
    let next = lock(&tx).await?;
    let mut all: std::collections::BTreeMap<String, String> =
        establishment_rows(&tx).await?.into_iter().collect();
    let new_est: Vec<(String, String)> = establishments
        .into_iter()
        .filter(|(n, t)| all.get(n) != Some(t))
        .collect();
    for (n, t) in &new_est {
        all.insert(n.clone(), t.clone());
    }
    type Kept = (String, String, Option<String>);
    let existing_users: std::collections::BTreeMap<String, Kept> = tx
        .query(
            "SELECT name, role, password_hash, totp FROM state_users",
            &[],
        )
        .await
        .map_err(db)?
        .iter()
        .map(|r| (r.get(0), (r.get(1), r.get(2), r.get(3))))
        .collect();
    let new_users: Vec<UserRecord> = users
        .into_iter()
        .filter(|u| {
            existing_users.get(&u.name)
                != Some(&(u.role.clone(), u.password_hash.clone(), u.totp.clone()))
        })
        .collect();
    if new_est.is_empty() && new_users.is_empty() {
        let v = next - 1;
        tx.commit().await.map_err(db)?;
        return Ok((0, 0, v));
    }
    let list: Vec<(String, String)> = all.into_iter().collect();
    tokio::task::spawn_blocking(move || check(list))
        .await
        .map_err(|e| StateError::Unreachable(e.to_string()))?
        .map_err(StateError::Refused)?;
    for (n, t) in &new_est {
        tx.execute(UPSERT_ESTABLISHMENT, &[n, t, &next, &by])
            .await
            .map_err(db)?;
    }
    for u in &new_users {
        tx.execute(
            UPSERT_USER,
            &[&u.name, &u.role, &u.password_hash, &next, &by, &u.totp],
        )
        .await
        .map_err(db)?;
    }
    let what = format!(
        "import: {} establishments, {} users",
        new_est.len(),
        new_users.len()
    );
    bump(&tx, next, &what, by).await?;
    tx.commit().await.map_err(db)?;
    Ok((new_est.len(), new_users.len(), next))
}

/// A console session as the database keeps it (the id only as its SHA-256).
pub struct SessionRow {
    pub user: String,
    pub role: String,
    pub stamp: String,
    pub csrf: String,
    /// Seconds since it was opened.
    pub age: f64,
}

fn id_hash(id: &str) -> Vec<u8> {
    ring::digest::digest(&ring::digest::SHA256, id.as_bytes())
        .as_ref()
        .to_vec()
}

pub async fn session_create(client: &Client, id: &str, s: &SessionRow) -> Result<(), StateError> {
    client
        .execute(
            "INSERT INTO state_sessions (id_hash, user_name, role, stamp, csrf) VALUES ($1, $2, $3, $4, $5)",
            &[&id_hash(id), &s.user, &s.role, &s.stamp, &s.csrf],
        )
        .await
        .map_err(db)?;
    Ok(())
}

/// The live session `id` (idle less than `idle`, opened less than `max_age` ago), its idle
/// clock restarted.
pub async fn session_touch(
    client: &Client,
    id: &str,
    idle: Duration,
    max_age: Duration,
) -> Result<Option<SessionRow>, StateError> {
    let row = client
        .query_opt(
            "UPDATE state_sessions SET last_seen = now()
             WHERE id_hash = $1 AND last_seen > now() - make_interval(secs => $2)
               AND created_at > now() - make_interval(secs => $3)
             RETURNING user_name, role, stamp, csrf, extract(epoch FROM now() - created_at)::float8",
            &[&id_hash(id), &idle.as_secs_f64(), &max_age.as_secs_f64()],
        )
        .await
        .map_err(db)?;
    Ok(row.map(|r| SessionRow {
        user: r.get(0),
        role: r.get(1),
        stamp: r.get(2),
        csrf: r.get(3),
        age: r.get(4),
    }))
}

pub async fn session_remove(client: &Client, id: &str) -> Result<(), StateError> {
    client
        .execute(
            "DELETE FROM state_sessions WHERE id_hash = $1",
            &[&id_hash(id)],
        )
        .await
        .map_err(db)?;
    Ok(())
}

/// Forgets sessions no gateway would accept any more (older than `max_age`).
pub async fn sessions_prune(client: &Client, max_age: Duration) -> Result<u64, StateError> {
    client
        .execute(
            "DELETE FROM state_sessions WHERE created_at < now() - make_interval(secs => $1)",
            &[&max_age.as_secs_f64()],
        )
        .await
        .map_err(db)
}
