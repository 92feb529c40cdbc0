//! The journal end to end on a real SQLite file: the writer's batches, `track`, `stats`,
//! retention, and the writer thread's buffering, retries and drops.

use super::event::*;
use super::plan::plan;
use super::plan::tests::{accepted, attempt, client};
use super::read::{Reader, StatsBy, StatsQuery, TrackFilter};
use super::sqlite::SqliteWriter;
use super::writer::{self, Backend, Settings, WriteError};
use super::{Counters, Journal, JournalConfig};
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// 2026-11-22T10:00:00Z
const DAY1: u64 = 1_795_341_600_000;
const HOUR: u64 = 3_600_000;

fn journal_file() -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("journal.sqlite");
    (dir, path)
}

fn write(path: &Path, events: &[Event]) {
    let mut w = SqliteWriter::new(path.to_path_buf(), "gw1".into());
    w.write(&plan(events)).expect("write");
}

async fn reader(path: &Path) -> Reader {
    let cfg = JournalConfig {
        path: path.to_path_buf(),
        ..JournalConfig::default()
    };
    Reader::open(&cfg, Path::new("/")).await.expect("open")
}

fn refusal(t: u64, to: &str) -> Event {
    Event {
        time: t,
        body: EventBody::Refused(Box::new(Refusal {
            stage: Stage::Rcpt,
            reason: "unknown-recipient".into(),
            reply: ReplyInfo {
                code: 550,
                status: Some("5.1.1".into()),
                text: format!("<{to}>: unknown in the MSSante directory"),
            },
            client: client("etablissement", Origin::Establishment),
            from: Some("sec@chu.fr".into()),
            to: Some(to.into()),
            tls_failure: None,
        })),
    }
}

fn admin(t: u64, qid: &str, action: AdminAction) -> Event {
    Event {
        time: t,
        body: EventBody::Admin(Admin {
            queue_id: qid.into(),
            action,
            user: "cli".into(),
        }),
    }
}

/// A day of traffic: A1 from an establishment to two mailboxes (one deferred once), a refusal
/// at RCPT, B2 held by an administrator, C3 from the trust space, D4 to the trust space with
/// a TLS deferral, E5 bounced with a DSN.
fn traffic() -> Vec<Event> {
    let mut c3 = accepted("C3", DAY1 + 5 * HOUR, "dr.x@op.mssante.fr", &["dr@chu.fr"]);
    if let EventBody::Accepted(a) = &mut c3.body {
        a.client = client("trust-space", Origin::TrustSpace);
        a.client.dn = Some("CN=mx.op,O=OP,C=FR".into());
        a.client.establishment = Some("chu-a".into());
    }
    let mut d4 = attempt(
        "D4",
        DAY1 + 6 * HOUR + 1,
        0,
        "dr.y@op.mssante.fr",
        Outcome::Deferred,
    );
    let mut d4ok = attempt(
        "D4",
        DAY1 + 6 * HOUR + 2,
        0,
        "dr.y@op.mssante.fr",
        Outcome::Delivered,
    );
    for e in [&mut d4, &mut d4ok] {
        if let EventBody::Attempt(a) = &mut e.body {
            a.destination = Some(Destination::TrustSpace);
            a.transport = "trust-space".into();
            a.peer_dn = Some("CN=mx.op,O=OP,C=FR".into());
            if a.outcome == Outcome::Deferred {
                a.tls_failure = Some("dn_not_declared".into());
                a.reply = None;
            }
        }
    }
    vec![
        accepted("A1", DAY1, "Sec@chu.fr", &["dr@chu.fr", "x@chu.fr"]),
        attempt("A1", DAY1 + 1000, 0, "dr@chu.fr", Outcome::Deferred),
        attempt("A1", DAY1 + 2000, 0, "dr@chu.fr", Outcome::Delivered),
        attempt("A1", DAY1 + 2000, 1, "x@chu.fr", Outcome::Delivered),
        refusal(DAY1 + HOUR, "nobody@chu.fr"),
        accepted("B2", DAY1 + 2 * HOUR, "other@chu.fr", &["z@chu.fr"]),
        admin(DAY1 + 2 * HOUR + 5, "B2", AdminAction::Held),
        c3,
        attempt(
            "C3",
            DAY1 + 5 * HOUR + 10,
            0,
            "dr@chu.fr",
            Outcome::Delivered,
        ),
        accepted("D4", DAY1 + 6 * HOUR, "sec@chu.fr", &["dr.y@op.mssante.fr"]),
        d4,
        d4ok,
        accepted("E5", DAY1 + 26 * HOUR, "sec@chu.fr", &["gone@chu.fr"]),
        attempt(
            "E5",
            DAY1 + 26 * HOUR + 1,
            0,
            "gone@chu.fr",
            Outcome::Bounced,
        ),
        Event {
            time: DAY1 + 26 * HOUR + 2,
            body: EventBody::Dsn(Box::new(DsnQueued {
                queue_id: "E5".into(),
                dsn: "failure".into(),
                dsn_id: "F6".into(),
                to: "sec@chu.fr".into(),
                recipients: vec!["gone@chu.fr".into()],
            })),
        },
    ]
}

fn filter() -> TrackFilter {
    TrackFilter {
        limit: 100,
        ..TrackFilter::default()
    }
}

#[tokio::test]
async fn track_by_each_filter_with_timelines() {
    let (_d, path) = journal_file();
    let mut t = traffic();
    // B2 came in for establishment chu-b's mailbox (the transport intake chose).
    for e in &mut t {
        if let EventBody::Accepted(a) = &mut e.body {
            if a.queue_id == "B2" {
                a.recipients[0].transport = "establishment:chu-b".into();
            }
        }
    }
    // In two batches, as the writer would.
    write(&path, &t[..3]);
    write(&path, &t[3..]);
    let r = reader(&path).await;

    let found = r
        .track(&TrackFilter {
            to: Some("<DR@chu.fr>".into()),
            ..filter()
        })
        .await
        .unwrap();
    let ids: Vec<_> = found.iter().map(|m| m.queue_id.clone()).collect();
    assert_eq!(
        ids,
        [Some("A1".to_string()), Some("C3".to_string())],
        "oldest first"
    );
    let a1 = &found[0];
    assert_eq!(a1.status, "delivered");
    assert_eq!(a1.from.as_deref(), Some("sec@chu.fr"));
    assert_eq!(a1.to, ["dr@chu.fr", "x@chu.fr"]);
    assert_eq!(a1.message_id.as_deref(), Some("A1@test"));
    assert_eq!(a1.gateway, "gw1");
    let kinds: Vec<&str> = a1
        .events
        .iter()
        .map(|e| e["kind"].as_str().unwrap())
        .collect();
    assert_eq!(kinds, ["accepted", "deferred", "delivered", "delivered"]);
    assert_eq!(a1.events[2]["reply"]["code"], 250);
    assert_eq!(a1.events[0]["time"], "2026-11-22T10:00:00.000Z");

    let refused = r
        .track(&TrackFilter {
            to: Some("nobody@chu.fr".into()),
            ..filter()
        })
        .await
        .unwrap();
    assert_eq!(refused.len(), 1);
    assert_eq!(refused[0].queue_id, None);
    assert!(refused[0].refusal_id.is_some());
    assert_eq!(refused[0].status, "refused");
    assert_eq!(refused[0].events[0]["reason"], "unknown-recipient");
    assert_eq!(refused[0].events[0]["reply"]["status"], "5.1.1");

    let one = |f: TrackFilter| {
        let r = &r;
        async move {
            r.track(&f)
                .await
                .unwrap()
                .iter()
                .map(|m| m.queue_id.clone().unwrap_or_default())
                .collect::<Vec<_>>()
        }
    };
    assert_eq!(
        one(TrackFilter {
            id: Some("b2".into()),
            ..filter()
        })
        .await,
        ["B2"]
    );
    assert_eq!(
        one(TrackFilter {
            message_id: Some("<D4@test>".into()),
            ..filter()
        })
        .await,
        ["D4"]
    );
    assert_eq!(
        one(TrackFilter {
            status: Some("held".into()),
            ..filter()
        })
        .await,
        ["B2"]
    );
    assert_eq!(
        one(TrackFilter {
            status: Some("bounced".into()),
            ..filter()
        })
        .await,
        ["E5"]
    );
    assert_eq!(
        one(TrackFilter {
            from: Some("SEC@chu.fr".into()),
            since: Some((DAY1 + HOUR) as i64),
            ..filter()
        })
        .await,
        ["", "D4", "E5"],
        "the refusal at RCPT too"
    );
    assert_eq!(
        one(TrackFilter {
            establishment: Some("chu-a".into()),
            ..filter()
        })
        .await,
        ["C3"]
    );
    assert_eq!(
        one(TrackFilter {
            establishment: Some("chu-b".into()),
            ..filter()
        })
        .await,
        ["B2"],
        "mail routed to its mailbox is an establishment's too"
    );
    assert_eq!(
        one(TrackFilter {
            limit: 1,
            ..filter()
        })
        .await,
        ["E5"],
        "the most recent"
    );
    assert!(one(TrackFilter {
        to: Some("nobody@else.fr".into()),
        ..filter()
    })
    .await
    .is_empty());
    let e5 = r
        .track(&TrackFilter {
            id: Some("E5".into()),
            ..filter()
        })
        .await
        .unwrap();
    assert_eq!(e5[0].events.last().unwrap()["kind"], "dsn");
    let text = super::cli::render_tracked(&e5[0]);
    assert!(
        text.contains("failure notification F6 queued to <sec@chu.fr>"),
        "{text}"
    );
}

#[tokio::test]
async fn stats_by_day_establishment_mailbox_and_peer() {
    let (_d, path) = journal_file();
    write(&path, &traffic());
    let r = reader(&path).await;
    let q = |by| StatsQuery {
        by,
        since: None,
        until: None,
        establishment: None,
    };
    let days = r.stats(&q(StatsBy::Day)).await.unwrap();
    let keys: Vec<&str> = days.rows.iter().map(|x| x.key.as_str()).collect();
    assert_eq!(keys, ["2026-11-22", "2026-11-23"]);
    let d1 = &days.rows[0];
    assert_eq!(d1.received_from_establishments, 3, "A1, B2, D4");
    assert_eq!(d1.received_from_trust_space, 1, "C3");
    assert_eq!(d1.delivered_to_mailboxes, 3, "A1 x2, C3");
    assert_eq!(d1.sent_to_trust_space, 1, "D4");
    assert_eq!(d1.deferred, 2);
    assert_eq!(d1.refused, 1);
    assert_eq!(d1.refused_by_reason["unknown-recipient"], 1);
    assert_eq!(d1.tls_failures_by_reason["dn_not_declared"], 1);
    assert_eq!(
        d1.bal_types["PER"], 4,
        "BAL types of the delivered recipients"
    );
    // sec (sent A1, D4), other (B2), dr and x (received).
    assert_eq!(d1.active_mailboxes, 4);
    let d2 = &days.rows[1];
    assert_eq!((d2.bounced, d2.dsn), (1, 1));
    assert_eq!(days.total.received_from_establishments, 4);
    assert_eq!(days.total.active_mailboxes, 4);

    let est = r.stats(&q(StatsBy::Establishment)).await.unwrap();
    let chu_a = est.rows.iter().find(|x| x.key == "chu-a").unwrap();
    assert_eq!(chu_a.received_from_trust_space, 1);
    assert_eq!(
        chu_a.delivered_to_mailboxes, 1,
        "C3's delivery inherits its establishment"
    );

    let mb = r.stats(&q(StatsBy::Mailbox)).await.unwrap();
    let sec = mb.rows.iter().find(|x| x.key == "sec@chu.fr").unwrap();
    assert_eq!(
        sec.received_from_establishments, 3,
        "A1, D4, E5 sent by sec"
    );
    assert_eq!(sec.sent_to_trust_space, 1);
    let dr = mb.rows.iter().find(|x| x.key == "dr@chu.fr").unwrap();
    assert_eq!(dr.delivered_to_mailboxes, 2);

    let peers = r.stats(&q(StatsBy::Peer)).await.unwrap();
    let op = peers
        .rows
        .iter()
        .find(|x| x.key == "CN=mx.op,O=OP,C=FR")
        .unwrap();
    assert_eq!(
        (op.received_from_trust_space, op.sent_to_trust_space),
        (1, 1)
    );

    let week = r.stats(&q(StatsBy::Week)).await.unwrap();
    assert_eq!(week.rows[0].key, "2026-W47");
    let month = r
        .stats(&StatsQuery {
            since: Some((DAY1 + 24 * HOUR) as i64),
            ..q(StatsBy::Month)
        })
        .await
        .unwrap();
    assert_eq!(month.rows.len(), 1);
    assert_eq!(month.rows[0].key, "2026-11");
    assert_eq!(month.rows[0].received_from_establishments, 1, "E5 only");

    let domain = r.stats(&q(StatsBy::Domain)).await.unwrap();
    assert!(domain.rows.iter().any(|x| x.key == "chu.fr"));

    let csv = super::cli::render_csv(&days);
    let mut lines = csv.lines();
    let head = lines.next().unwrap();
    assert!(
        head.starts_with("day,received_from_establishments,sent_to_trust_space,"),
        "{head}"
    );
    assert!(head.contains("refused:unknown-recipient") && head.contains("bal_type:PER"));
    assert!(
        csv.lines().last().unwrap().starts_with("total,4,1,1,"),
        "{csv}"
    );
    let text = super::cli::render_stats(&days);
    assert!(text.contains("refused: unknown-recipient 1"), "{text}");
}

#[tokio::test]
async fn retention_prunes_old_messages_and_events() {
    let (_d, path) = journal_file();
    write(&path, &traffic());
    let mut w = SqliteWriter::new(path.clone(), "gw1".into());
    // Everything before day 2: A1..D4 go, E5 stays.
    let mut removed = 0;
    loop {
        let n = w.prune((DAY1 + 24 * HOUR) as i64, 3).unwrap();
        removed += n;
        if n == 0 {
            break;
        }
    }
    assert!(removed > 10, "{removed}");
    let r = reader(&path).await;
    let left = r.track(&filter()).await.unwrap();
    let ids: Vec<_> = left
        .iter()
        .map(|m| m.queue_id.clone().unwrap_or_default())
        .collect();
    assert_eq!(ids, ["E5"]);
    assert_eq!(left[0].events.len(), 3);
}

#[tokio::test]
async fn stub_rows_when_the_acceptance_was_lost() {
    let (_d, path) = journal_file();
    write(
        &path,
        &[attempt("Z9", DAY1, 0, "dr@chu.fr", Outcome::Delivered)],
    );
    let r = reader(&path).await;
    let f = r
        .track(&TrackFilter {
            to: Some("dr@chu.fr".into()),
            ..filter()
        })
        .await
        .unwrap();
    assert_eq!(f.len(), 1);
    assert_eq!(f[0].status, "delivered");
    // Its acceptance arriving late (a replayed batch) fills the row in.
    write(
        &path,
        &[accepted("Z9", DAY1 - 5, "a@chu.fr", &["dr@chu.fr"])],
    );
    let f = r
        .track(&TrackFilter {
            id: Some("Z9".into()),
            ..filter()
        })
        .await
        .unwrap();
    assert_eq!(f[0].events.len(), 2);
}

fn test_journal(buffer: usize) -> (Journal, std::sync::mpsc::Receiver<Event>) {
    let (tx, rx) = std::sync::mpsc::sync_channel(buffer + super::ADMIN_HEADROOM);
    (
        Journal {
            tx,
            buffer,
            counters: Arc::new(Counters::default()),
            writer: Mutex::new(None),
        },
        rx,
    )
}

fn settings(batch_size: usize) -> Settings {
    Settings {
        batch_size,
        flush_interval: Duration::from_millis(50),
        retention: Duration::ZERO,
        prune_interval: Duration::from_secs(3600),
        spill: None,
    }
}

#[test]
fn writer_thread_batches_and_flushes_on_close() {
    let (_d, path) = journal_file();
    let (j, rx) = test_journal(10_000);
    let backend = Box::new(SqliteWriter::new(path.clone(), "gw1".into()));
    let thread = writer::spawn(backend, rx, settings(1000), j.counters.clone());
    for i in 0..2500u64 {
        j.push(accepted(
            &format!("{i:016X}"),
            DAY1 + i,
            "a@chu.fr",
            &["b@chu.fr"],
        ));
    }
    let c = j.counters.clone();
    drop(j);
    assert!(thread.join(Duration::from_secs(30)));
    assert_eq!(c.written.load(Ordering::Relaxed), 2500);
    assert!(c.batches.load(Ordering::Relaxed) >= 3);
    assert_eq!(c.dropped.load(Ordering::Relaxed), 0);
    let conn = super::sqlite::open(&path, false).unwrap();
    let n: i64 = conn
        .query_row("SELECT COUNT(*) FROM events", [], |r| r.get(0))
        .unwrap();
    assert_eq!(n, 2500);
}

#[test]
fn full_buffer_drops_and_counts_without_blocking() {
    let (j, _rx) = test_journal(3);
    let t = std::time::Instant::now();
    for i in 0..5 {
        j.push(accepted(&format!("{i}"), DAY1, "a@b", &["c@d"]));
    }
    assert!(t.elapsed() < Duration::from_secs(1));
    assert_eq!(j.counters.recorded.load(Ordering::Relaxed), 5);
    assert_eq!(j.counters.dropped.load(Ordering::Relaxed), 2);
}

/// Issue 24 B.12: mail events fill the buffer, an administrator's action still finds its
/// place; when even that headroom is full the action is refused (never done unrecorded), and
/// a place kept but unused is given back.
#[test]
fn administrators_actions_are_recorded_or_refused_never_dropped() {
    let (j, rx) = test_journal(3);
    let j = Arc::new(j);
    for i in 0..10 {
        j.push(accepted(&format!("{i}"), DAY1, "a@b", &["c@d"]));
    }
    assert_eq!(j.counters.dropped.load(Ordering::Relaxed), 7);
    let mut kept = Vec::new();
    for _ in 0..super::ADMIN_HEADROOM {
        kept.push(j.reserve_admin().expect("headroom for administrators"));
    }
    assert!(j.reserve_admin().is_err(), "full: the action is refused");
    drop(kept.pop());
    let slot = j.reserve_admin().expect("an unused place was given back");
    slot.admin("Q1", AdminAction::Held, "console:admin");
    drop(kept);
    let got: Vec<Event> = rx.try_iter().collect();
    assert_eq!(got.len(), 4, "three mail events and the action");
    assert!(matches!(&got[3].body, EventBody::Admin(a) if a.queue_id == "Q1"));
    assert_eq!(
        j.counters.dropped.load(Ordering::Relaxed),
        7,
        "the action was not dropped"
    );
}

/// Fails its first `fail` writes, then stores the event counts it was given.
struct Flaky {
    fail: usize,
    retryable: bool,
    seen: Arc<Mutex<Vec<usize>>>,
}

impl Backend for Flaky {
    fn describe(&self) -> String {
        "flaky".into()
    }
    fn write(&mut self, p: &super::plan::Plan) -> Result<(), WriteError> {
        if self.fail > 0 {
            self.fail -= 1;
            return Err(WriteError {
                message: "database down".into(),
                retryable: self.retryable,
            });
        }
        self.seen.lock().unwrap().push(p.events.len());
        Ok(())
    }
    fn prune(&mut self, _: i64, _: i64) -> Result<u64, WriteError> {
        Ok(0)
    }
}

#[test]
fn an_unreachable_database_keeps_the_batch_and_resumes() {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let (j, rx) = test_journal(100);
    let backend = Box::new(Flaky {
        fail: 2,
        retryable: true,
        seen: seen.clone(),
    });
    let thread = writer::spawn(backend, rx, settings(10), j.counters.clone());
    for i in 0..5 {
        j.push(accepted(&format!("{i}"), DAY1, "a@b", &["c@d"]));
    }
    std::thread::sleep(Duration::from_millis(1200)); // two retries: 250 + 500 ms
    let c = j.counters.clone();
    drop(j);
    assert!(thread.join(Duration::from_secs(10)));
    assert_eq!(
        seen.lock().unwrap().iter().sum::<usize>(),
        5,
        "nothing lost, nothing twice"
    );
    assert_eq!(c.errors.load(Ordering::Relaxed), 2);
    assert_eq!(c.written.load(Ordering::Relaxed), 5);
}

#[test]
fn a_batch_the_database_refuses_is_dropped_and_counted() {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let (j, rx) = test_journal(100);
    let backend = Box::new(Flaky {
        fail: 1,
        retryable: false,
        seen: seen.clone(),
    });
    let thread = writer::spawn(backend, rx, settings(10), j.counters.clone());
    j.push(accepted("1", DAY1, "a@b", &["c@d"]));
    std::thread::sleep(Duration::from_millis(300));
    j.push(accepted("2", DAY1, "a@b", &["c@d"]));
    let c = j.counters.clone();
    drop(j);
    assert!(thread.join(Duration::from_secs(10)));
    assert_eq!(c.dropped.load(Ordering::Relaxed), 1);
    assert_eq!(c.written.load(Ordering::Relaxed), 1);
}

#[test]
fn times_parse_as_documented() {
    use super::read::{format_time, parse_time};
    let now = DAY1 as i64;
    assert_eq!(
        parse_time("2026-11-22", now).unwrap(),
        (DAY1 - 10 * HOUR) as i64
    );
    assert_eq!(
        parse_time("2026-11-22T10:00:00Z", now).unwrap(),
        DAY1 as i64
    );
    assert_eq!(
        parse_time("2026-11-22T11:00:00+01:00", now).unwrap(),
        DAY1 as i64
    );
    assert_eq!(parse_time("2026-11-22 10:00", now).unwrap(), DAY1 as i64);
    assert_eq!(parse_time("2h", now).unwrap(), (DAY1 - 2 * HOUR) as i64);
    assert_eq!(parse_time("now", now).unwrap(), now);
    assert!(parse_time("yesterday", now).is_err());
    // Absurd periods are refused with a reason, never wrapped around (issue 24 B.1).
    let e = parse_time("99999999999d", now).unwrap_err();
    assert!(e.contains("at most 100 years"), "{e}");
    assert!(parse_time("36500d", now).is_ok());
    assert!(parse_time("1969-12-31", now)
        .unwrap_err()
        .contains("before 1970"));
    assert_eq!(parse_time("1000d", 0).unwrap(), 0);
    assert_eq!(format_time(DAY1 as i64 + 7), "2026-11-22T10:00:00.007Z");
}

#[test]
fn connect_refusals_are_journaled_once_a_minute_per_client() {
    let ip: std::net::IpAddr = "192.0.2.77".parse().unwrap();
    assert!(super::connect_due(ip, 554, 1_000_000));
    assert!(!super::connect_due(ip, 554, 1_030_000));
    assert!(
        super::connect_due(ip, 421, 1_030_000),
        "another reply counts apart"
    );
    assert!(super::connect_due(ip, 554, 1_061_000));
}

/// Every table's rows, in key order, for comparing two journals (event ids left out).
fn dump(path: &Path) -> Vec<String> {
    let c = rusqlite::Connection::open(path).expect("open");
    let mut out = Vec::new();
    for sql in [
        "SELECT qid, queued, time, updated, status, origin, listener, establishment, client_ip,
                client_dn, tls, sender, message_id, size, nrcpt, day
         FROM messages WHERE queued ORDER BY qid",
        "SELECT r.qid, idx, address, route, transport, bal_type, destination, r.status, r.day
         FROM recipients r JOIN messages m ON m.qid = r.qid AND m.gw = r.gw
         WHERE m.queued ORDER BY r.qid, idx",
        "SELECT e.qid, e.time, kind, rcpt, e.origin, destination, e.establishment, mailbox, peer,
                reason, tls_failure, bal_type, details
         FROM events e JOIN messages m ON m.qid = e.qid AND m.gw = e.gw
         WHERE m.queued ORDER BY e.id",
    ] {
        let mut st = c.prepare(sql).expect("prepare");
        let n = st.column_count();
        let rows = st
            .query_map([], |r| {
                Ok((0..n)
                    .map(|i| format!("{:?}", r.get_ref(i).expect("col")))
                    .collect::<Vec<_>>()
                    .join("|"))
            })
            .expect("query");
        out.extend(rows.map(|r| r.expect("row")));
    }
    out
}

#[test]
fn one_batch_and_one_event_per_batch_store_the_same_rows() {
    // The plan applies the events of a message accepted in the same batch in memory (final
    // statuses, event columns filled); the writer's updates and joins do it across batches.
    // Both must store the same thing (refusals left out: their references are random).
    let mut t: Vec<Event> = traffic()
        .into_iter()
        .filter(|e| !matches!(e.body, EventBody::Refused(_)))
        .collect();
    t.push(admin(DAY1 + 30 * HOUR, "A1", AdminAction::Held));
    t.push(admin(DAY1 + 31 * HOUR, "A1", AdminAction::Released));
    let (_d1, whole) = journal_file();
    write(&whole, &t);
    let (_d2, split) = journal_file();
    for e in &t {
        write(&split, std::slice::from_ref(e));
    }
    let (a, b) = (dump(&whole), dump(&split));
    assert!(a.len() > 10, "{a:?}");
    assert_eq!(a, b);
    // And the fast path was taken: in one batch, nothing is left to the updates.
    let p = plan(&t);
    assert!(p.rcpt_status.is_empty() && p.msg_status.is_empty(), "{p:?}");
    assert!(p.events.iter().all(|e| e.resolved));
}

#[tokio::test]
async fn a_version_1_journal_is_upgraded_and_still_found() {
    let (_d, path) = journal_file();
    {
        // The version 1 tables, as the first release wrote them.
        let c = rusqlite::Connection::open(&path).expect("open");
        c.execute_batch(
            "CREATE TABLE journal_meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
             INSERT INTO journal_meta VALUES ('schema_version', '1');
             CREATE TABLE gateways (id INTEGER PRIMARY KEY, name TEXT NOT NULL UNIQUE);
             INSERT INTO gateways VALUES (1, 'gw1');
             CREATE TABLE messages (
                qid TEXT NOT NULL, gw INTEGER NOT NULL, queued BOOLEAN NOT NULL,
                time BIGINT NOT NULL, updated BIGINT NOT NULL, status TEXT NOT NULL,
                origin TEXT, listener TEXT, establishment TEXT, client_ip TEXT, client_dn TEXT,
                tls TEXT, sender TEXT, message_id TEXT, size BIGINT, nrcpt INTEGER NOT NULL,
                PRIMARY KEY (qid, gw)) WITHOUT ROWID;
             CREATE INDEX messages_updated ON messages (updated);
             CREATE INDEX messages_sender ON messages (sender, time);
             CREATE INDEX messages_message_id ON messages (message_id);
             CREATE TABLE recipients (
                qid TEXT NOT NULL, gw INTEGER NOT NULL, idx INTEGER NOT NULL,
                address TEXT NOT NULL, route TEXT, transport TEXT, bal_type TEXT,
                destination TEXT, status TEXT NOT NULL,
                PRIMARY KEY (qid, gw, idx)) WITHOUT ROWID;
             CREATE INDEX recipients_address ON recipients (address);
             CREATE TABLE events (
                id INTEGER PRIMARY KEY, qid TEXT NOT NULL, gw INTEGER NOT NULL,
                time BIGINT NOT NULL, kind TEXT NOT NULL, rcpt TEXT, origin TEXT,
                destination TEXT, establishment TEXT, mailbox TEXT, peer TEXT, reason TEXT,
                tls_failure TEXT, bal_type TEXT, details TEXT NOT NULL);
             INSERT INTO messages VALUES ('OLD1', 1, 1, 1795341600000, 1795341600000,
                'delivered', 'establishment', 'etablissement', NULL, '127.0.0.1', NULL, NULL,
                'sec@chu.fr', 'old1@chu.fr', 100, 1);
             INSERT INTO recipients VALUES ('OLD1', 1, 0, 'dr@op.fr', 'mssante', 'trust',
                NULL, 'trust-space', 'delivered');
             INSERT INTO events (qid, gw, time, kind, details)
                VALUES ('OLD1', 1, 1795341600000, 'accepted', '{}');",
        )
        .expect("v1 schema");
    }
    // The writer upgrades it, then writes version 2 rows beside the old ones.
    write(
        &path,
        &[accepted("NEW2", DAY1 + HOUR, "sec@chu.fr", &["dr@op.fr"])],
    );
    let c = rusqlite::Connection::open(&path).expect("open");
    let v: String = c
        .query_row(
            "SELECT value FROM journal_meta WHERE key = 'schema_version'",
            [],
            |r| r.get(0),
        )
        .expect("version");
    assert_eq!(v, super::schema::VERSION.to_string());
    let idx: Vec<String> = c
        .prepare("SELECT name FROM sqlite_master WHERE type = 'index' AND name NOT LIKE 'sqlite_%' ORDER BY name")
        .expect("prepare")
        .query_map([], |r| r.get(0))
        .expect("query")
        .map(|r| r.expect("row"))
        .collect();
    assert!(
        idx.contains(&"recipients_day_address".to_string()),
        "{idx:?}"
    );
    assert!(!idx
        .iter()
        .any(|i| i == "recipients_address" || i == "messages_updated"));
    let day: i64 = c
        .query_row("SELECT day FROM recipients WHERE qid = 'OLD1'", [], |r| {
            r.get(0)
        })
        .expect("day");
    assert_eq!(day, super::schema::day(1_795_341_600_000));
    let r = reader(&path).await;
    for f in [
        TrackFilter {
            to: Some("dr@op.fr".into()),
            ..filter()
        },
        TrackFilter {
            from: Some("sec@chu.fr".into()),
            ..filter()
        },
    ] {
        let ids: Vec<_> = r
            .track(&f)
            .await
            .expect("track")
            .into_iter()
            .filter_map(|m| m.queue_id)
            .collect();
        assert_eq!(ids, ["OLD1", "NEW2"], "{f:?}");
    }
    let f = TrackFilter {
        message_id: Some("<old1@chu.fr>".into()),
        ..filter()
    };
    assert_eq!(r.track(&f).await.expect("track").len(), 1);
}

#[tokio::test]
async fn lookups_probe_each_day_of_the_period() {
    // Messages on days far apart, found by address with and without a period; an empty
    // journal answers nothing.
    let (_d, path) = journal_file();
    let day = super::schema::DAY_MS as u64;
    let d1 = DAY1 - 40 * day;
    write(&path, &[accepted("D1", d1, "a@chu.fr", &["dr@op.fr"])]);
    write(&path, &[accepted("D2", DAY1, "a@chu.fr", &["dr@op.fr"])]);
    let r = reader(&path).await;
    let to = |since: Option<u64>, until: Option<u64>| TrackFilter {
        to: Some("dr@op.fr".into()),
        since: since.map(|s| s as i64),
        until: until.map(|u| u as i64),
        ..filter()
    };
    let ids = |v: Vec<super::read::Tracked>| -> Vec<String> {
        v.into_iter().filter_map(|m| m.queue_id).collect()
    };
    assert_eq!(
        ids(r.track(&to(None, None)).await.expect("all")),
        ["D1", "D2"]
    );
    assert_eq!(
        ids(r.track(&to(Some(d1 + day), None)).await.expect("since")),
        ["D2"]
    );
    assert_eq!(
        ids(r.track(&to(None, Some(d1 + day))).await.expect("until")),
        ["D1"]
    );
    let (_e, empty) = journal_file();
    write(&empty, &[]);
    let r = reader(&empty).await;
    assert!(r.track(&to(None, None)).await.expect("empty").is_empty());
}

#[test]
fn days_cover_the_period_with_a_margin() {
    use super::schema::{day, days, DAY_MS};
    assert_eq!(day(0), 0);
    assert_eq!(day(DAY_MS - 1), 0);
    assert_eq!(day(DAY_MS), 1);
    assert_eq!(days(DAY_MS * 10 + 5, DAY_MS * 12), 9..=13);
    // until before since: still the day of since
    assert_eq!(days(DAY_MS * 10, 0), 9..=11);
}

#[tokio::test]
async fn an_acceptance_is_stored_once_and_tracked_whole() {
    // The acceptance's details repeat the message and recipient rows: only the rest is stored
    // (the HELO and the SHA-256; with addresses in mixed case, also the sender's and a
    // recipient's case, found by the general comparison rather than written directly), and
    // `track` gives back the whole, as it was recorded.
    let (_d, path) = journal_file();
    for (qid, from, to, sha256) in [
        ("AB12", "Sec@Chu.fr", "Dr.X@Op.fr", None),
        ("AB13", "sec@chu.fr", "dr.x@op.fr", Some("ab".repeat(32))),
    ] {
        let mut ev = accepted(qid, DAY1, from, &["dr@op.fr", to]);
        let EventBody::Accepted(a) = &mut ev.body else {
            unreachable!()
        };
        a.client.helo = Some("mta.chu.fr".into());
        a.client.tls = Some("TLSv1.3 with cipher TLS13_AES_256_GCM_SHA384".into());
        a.client.establishment = Some("chu".into());
        a.sha256 = sha256.clone();
        let mut whole = serde_json::to_value(&**a).expect("json");
        whole.as_object_mut().expect("object").remove("queue_id");
        write(&path, std::slice::from_ref(&ev));
        let c = rusqlite::Connection::open(&path).expect("open");
        let stored: String = c
            .query_row("SELECT details FROM events WHERE qid = ?1", [qid], |r| {
                r.get(0)
            })
            .expect("details");
        let stored: serde_json::Value = serde_json::from_str(&stored).expect("json");
        match &sha256 {
            None => {
                assert_eq!(stored["client"], serde_json::json!({"helo": "mta.chu.fr"}));
                assert_eq!(stored["from"], "Sec@Chu.fr");
                assert!(stored.get("size").is_none() && stored.get("message_id").is_none());
            }
            Some(h) => assert_eq!(
                stored,
                serde_json::json!({"client": {"helo": "mta.chu.fr"}, "sha256": h})
            ),
        }
        let found = reader(&path)
            .await
            .track(&TrackFilter {
                id: Some(qid.into()),
                ..filter()
            })
            .await
            .expect("track");
        let mut got = found[0].events[0].clone();
        let o = got.as_object_mut().expect("object");
        assert_eq!(o.remove("kind"), Some("accepted".into()));
        assert!(o.remove("time").is_some());
        assert_eq!(got, whole, "{qid}");
    }
}
