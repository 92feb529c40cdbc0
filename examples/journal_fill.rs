//! Fills a journal with synthetic traffic, for `benches/journal.sh`: a year of mail between
//! 20 establishments (100 mailboxes each) and 50 other operators, about 2 events per
//! message (acceptance, 5 % deferred once, 1 % bounced, 3 % refusals at RCPT).
//!
//!     cargo run --release --example journal_fill -- CONFIG EVENTS [--bulk]
//!
//! CONFIG is a passerelle config whose `[journal]` names the database. Without `--bulk` the
//! events go through the gateway's own path (`journal::start`, the channel, the writer
//! thread's batches): the write rate printed is the writer's. With `--bulk` the same batches
//! are written directly with the secondary indexes dropped, then the indexes are rebuilt (a
//! bulk load: the same rows, the same schema, minutes instead of tens of minutes).
//! With `--cost` the batches (`journal.batch_size` events, as the writer makes them at load)
//! are planned and written directly, and the time of each half is printed per event and per
//! message every 100,000 events: what the journal costs the gateway's CPU (issue 17).
//! Prints `sample KEY VALUE` lines naming entries that exist, for the queries to time.

use passerelle::journal::writer::Backend;
use passerelle::journal::{
    self, Accepted, AcceptedRcpt, Attempt, Client, Destination, Event, EventBody, JournalKind,
    Origin, Outcome, Refusal, ReplyInfo, Stage,
};
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

/// The secondary indexes (dropped during a bulk load).
const INDEXES: &[&str] = &[
    "messages_time",
    "messages_day_sender",
    "messages_day_message_id",
    "messages_establishment",
    "messages_status",
    "recipients_day_address",
    "events_message",
    "events_time",
];

/// xorshift64*: deterministic, so the same run makes the same journal.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

struct Traffic {
    rng: Rng,
    t: u64,
    step: u64,
    start: u64,
    msg: u64,
    samples: Vec<(String, String)>,
}

impl Traffic {
    fn new(total: u64) -> Traffic {
        let year: u64 = 365 * 86_400_000;
        let start = passerelle::util::clock::now_ms() - year;
        Traffic {
            rng: Rng(0x9E37_79B9_7F4A_7C15),
            t: start,
            // The mean gap between messages, for the events to span one year up to now
            // (2.02 events per message on average).
            step: (year * 202 / (total.max(1) * 100)).max(1),
            start,
            msg: 0,
            samples: Vec::new(),
        }
    }

    fn local(&mut self) -> (String, String) {
        let (e, u) = (self.rng.below(20), self.rng.below(100));
        (
            format!("user{u}@estab-{e}.mssante.fr"),
            format!("estab-{e}"),
        )
    }

    fn remote(&mut self) -> (String, String) {
        let (o, u) = (self.rng.below(50), self.rng.below(100));
        (
            format!("dr{u}@op-{o}.mssante.fr"),
            format!("CN=mx.op-{o}.fr,O=Operateur {o},C=FR"),
        )
    }

    /// The events of the next message (or refusal), in time order.
    fn next_message(&mut self, out: &mut Vec<Event>) {
        self.msg += 1;
        self.t += self.step * 3 / 4 + self.rng.below(self.step / 2 + 1);
        let t = self.t;
        let qid = format!("{:016X}", self.start * 1000 + self.msg);
        if self.rng.below(100) < 3 {
            let (from, est) = self.local();
            let (to, _) = self.local();
            out.push(Event {
                time: t,
                body: EventBody::Refused(Box::new(Refusal {
                    stage: Stage::Rcpt,
                    reason: "unknown-recipient".into(),
                    reply: ReplyInfo {
                        code: 550,
                        status: Some("5.1.1".into()),
                        text: format!("<{to}>: unknown in the MSSante directory"),
                    },
                    client: Client {
                        listener: "etablissement".into(),
                        origin: Some(Origin::Establishment),
                        establishment: Some(est),
                        ip: "10.1.0.25".into(),
                        ..Client::default()
                    },
                    from: Some(from),
                    to: Some(to),
                    tls_failure: None,
                })),
            });
            return;
        }
        let outbound = self.rng.below(100) < 60;
        let (from, to, est, peer) = if outbound {
            let (f, e) = self.local();
            let (to, p) = self.remote();
            (f, to, e, p)
        } else {
            let (f, p) = self.remote();
            let (to, e) = self.local();
            (f, to, e, p)
        };
        let (origin, dest, transport) = if outbound {
            (
                Origin::Establishment,
                Destination::TrustSpace,
                "trust-space",
            )
        } else {
            (Origin::TrustSpace, Destination::Mailbox, "etablissement")
        };
        let message_id = format!("{qid}.bench@{}", from.split('@').nth(1).unwrap_or("x"));
        if self.msg.is_multiple_of(100_003) || self.samples.is_empty() {
            self.samples = vec![
                ("id".into(), qid.clone()),
                ("message-id".into(), message_id.clone()),
                ("from".into(), from.clone()),
                ("to".into(), to.clone()),
                ("establishment".into(), est.clone()),
                ("time".into(), t.to_string()),
            ];
        }
        let bal = ["PER", "ORG", "APP"][self.rng.below(3) as usize];
        out.push(Event {
            time: t,
            body: EventBody::Accepted(Box::new(Accepted {
                queue_id: qid.clone(),
                message_id: Some(message_id),
                from,
                recipients: vec![AcceptedRcpt {
                    address: to.clone(),
                    route: if outbound { "mssante" } else { "local" }.into(),
                    transport: transport.into(),
                    destination: Some(dest),
                    bal_type: Some(bal.into()),
                }],
                size: 2000 + self.rng.below(200_000),
                client: Client {
                    listener: if outbound {
                        "etablissement"
                    } else {
                        "trust-space"
                    }
                    .into(),
                    origin: Some(origin),
                    establishment: Some(est),
                    ip: if outbound { "10.1.0.25" } else { "192.0.2.10" }.into(),
                    helo: Some("mta.example".into()),
                    dn: (!outbound).then(|| peer.clone()),
                    tls: Some("TLSv1.3 with cipher TLS13_AES_256_GCM_SHA384".into()),
                },
                // As the gateway writes it: 64 hex digits per message.
                sha256: Some(format!("{:064x}", self.rng.below(u64::MAX))),
            })),
        });
        let attempt = |outcome: Outcome, at: u64, nth: u32, text: &str| {
            let (code, status) = match outcome {
                Outcome::Delivered => (250, "2.0.0"),
                Outcome::Deferred => (451, "4.3.0"),
                _ => (550, "5.1.1"),
            };
            Event {
                time: at,
                body: EventBody::Attempt(Box::new(Attempt {
                    queue_id: qid.clone(),
                    index: 0,
                    to: to.clone(),
                    outcome,
                    transport: transport.into(),
                    destination: Some(dest),
                    next_hop: Some(
                        if outbound {
                            "mx.op.fr:25"
                        } else {
                            "10.1.0.26:25"
                        }
                        .into(),
                    ),
                    mx: outbound.then(|| "mx.op.fr".into()),
                    remote_ip: Some("192.0.2.25".into()),
                    tls_version: Some("TLSv1.3".into()),
                    cipher: Some("TLS13_AES_256_GCM_SHA384".into()),
                    peer_dn: outbound.then(|| peer.clone()),
                    reply: Some(ReplyInfo {
                        code,
                        status: Some(status.into()),
                        text: text.into(),
                    }),
                    diagnostic: String::new(),
                    tls_failure: None,
                    duration_ms: 40 + at % 200,
                    attempt: nth,
                })),
            }
        };
        let mut nth = 1;
        if self.rng.below(100) < 5 {
            out.push(attempt(Outcome::Deferred, t + 50, nth, "try again later"));
            nth += 1;
        }
        if self.rng.below(100) < 1 {
            out.push(attempt(Outcome::Bounced, t + 100, nth, "unknown user"));
        } else {
            out.push(attempt(Outcome::Delivered, t + 100, nth, "Ok queued"));
        }
    }
}

/// Through the gateway's path: the channel and the writer thread.
fn through_writer(
    cfg: &passerelle::config::Config,
    total: u64,
    traffic: &mut Traffic,
) -> Result<String, String> {
    let j = journal::start(cfg).ok_or("journal.kind is none")?;
    journal::install(Some(j.clone()), cfg);
    let limit = cfg.journal.buffer as u64 * 8 / 10;
    let began = Instant::now();
    let mut n = 0u64;
    let mut evs = Vec::new();
    while n < total {
        traffic.next_message(&mut evs);
        for ev in evs.drain(..) {
            // Pace on the writer: never drop.
            loop {
                let c = &j.counters;
                let pending = c.recorded.load(Ordering::Relaxed)
                    - c.written.load(Ordering::Relaxed)
                    - c.dropped.load(Ordering::Relaxed);
                if pending < limit {
                    break;
                }
                std::thread::sleep(Duration::from_millis(2));
            }
            j.push(ev);
            n += 1;
        }
    }
    let c = j.counters.clone();
    drop(j);
    journal::shutdown(Duration::from_secs(3600));
    let took = began.elapsed().as_secs_f64();
    let written = c.written.load(Ordering::Relaxed);
    Ok(format!(
        "through the writer: {written} events ({} messages) in {took:.1} s: {:.0} events/s, {} batches, {} dropped",
        traffic.msg,
        written as f64 / took,
        c.batches.load(Ordering::Relaxed),
        c.dropped.load(Ordering::Relaxed)
    ))
}

/// The config's journal, written to directly (without the writer thread).
fn backend(cfg: &passerelle::config::Config) -> Result<Box<dyn Backend>, String> {
    let jc = &cfg.journal;
    Ok(match jc.kind {
        JournalKind::Sqlite => Box::new(journal::sqlite::SqliteWriter::new(
            jc.sqlite_path(&cfg.server.spool),
            jc.gateway_name(),
        )),
        JournalKind::Postgres => Box::new(journal::postgres::PgWriter::new(
            jc.url.clone().unwrap_or_default(),
            jc.gateway_name(),
        )),
        JournalKind::None => return Err("journal.kind is none".into()),
    })
}

/// Bulk: the writer's batches written directly, secondary indexes dropped then rebuilt.
fn bulk(
    cfg: &passerelle::config::Config,
    total: u64,
    traffic: &mut Traffic,
) -> Result<String, String> {
    let jc = &cfg.journal;
    let mut backend = backend(cfg)?;
    backend
        .write(&journal::plan::plan(&[]))
        .map_err(|e| e.to_string())?; // schema
    let drops: Vec<String> = INDEXES
        .iter()
        .map(|i| format!("DROP INDEX IF EXISTS {i}"))
        .collect();
    let sql = |stmts: &[String]| -> Result<(), String> {
        match jc.kind {
            JournalKind::Sqlite => {
                let c = journal::sqlite::open(&jc.sqlite_path(&cfg.server.spool), false)
                    .map_err(|e| e.to_string())?;
                for s in stmts {
                    c.execute_batch(s).map_err(|e| format!("{s}: {e}"))?;
                }
                Ok(())
            }
            _ => {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .map_err(|e| e.to_string())?;
                rt.block_on(async {
                    let c =
                        journal::postgres::connect(jc.url.as_deref().unwrap_or_default()).await?;
                    for s in stmts {
                        c.batch_execute(s).await.map_err(|e| format!("{s}: {e}"))?;
                    }
                    Ok(())
                })
            }
        }
    };
    sql(&drops)?;
    let began = Instant::now();
    let mut n = 0u64;
    let mut batch = Vec::with_capacity(50_100);
    while n < total {
        while batch.len() < 50_000 && n + (batch.len() as u64) < total {
            traffic.next_message(&mut batch);
        }
        n += batch.len() as u64;
        backend
            .write(&journal::plan::plan(&batch))
            .map_err(|e| e.to_string())?;
        batch.clear();
        if n % 1_000_000 < 50_000 {
            eprintln!("{n} events, {:.0} s", began.elapsed().as_secs_f64());
        }
    }
    let loaded = began.elapsed().as_secs_f64();
    // What the writer's pruning round runs on SQLite; autovacuum does it on PostgreSQL.
    let analyze = if jc.kind == JournalKind::Sqlite {
        "PRAGMA optimize=0x10002"
    } else {
        "ANALYZE"
    };
    sql(&[
        journal::schema::ddl(jc.kind == JournalKind::Postgres),
        journal::schema::INDEXES.to_string(),
        analyze.to_string(),
    ])?;
    Ok(format!(
        "bulk: {n} events ({} messages) loaded in {loaded:.1} s, indexes rebuilt in {:.1} s",
        traffic.msg,
        began.elapsed().as_secs_f64() - loaded
    ))
}

/// The writer's work per event, without the channel: plan, then write, timed apart.
fn cost(
    cfg: &passerelle::config::Config,
    total: u64,
    traffic: &mut Traffic,
) -> Result<String, String> {
    let jc = &cfg.journal;
    let mut backend = backend(cfg)?;
    let size = jc.batch_size.max(1);
    let (mut n, mut msgs0) = (0u64, traffic.msg);
    let (mut plan_t, mut write_t, mut window) = (0f64, 0f64, 0u64);
    let (mut plan_all, mut write_all) = (0f64, 0f64);
    let mut batch = Vec::with_capacity(size + 10);
    while n < total {
        while batch.len() < size {
            traffic.next_message(&mut batch);
        }
        let t0 = Instant::now();
        let p = journal::plan::plan(&batch);
        let t1 = Instant::now();
        backend.write(&p).map_err(|e| e.to_string())?;
        let (dp, dw) = ((t1 - t0).as_secs_f64(), t1.elapsed().as_secs_f64());
        plan_t += dp;
        write_t += dw;
        plan_all += dp;
        write_all += dw;
        n += batch.len() as u64;
        window += batch.len() as u64;
        batch.clear();
        if window >= 100_000 || n >= total {
            let m = (traffic.msg - msgs0).max(1) as f64;
            eprintln!(
                "{n} events: plan {:.1} us/event, write {:.1} us/event, {:.1} us/message",
                plan_t * 1e6 / window as f64,
                write_t * 1e6 / window as f64,
                (plan_t + write_t) * 1e6 / m
            );
            (plan_t, write_t, window, msgs0) = (0.0, 0.0, 0, traffic.msg);
        }
    }
    Ok(format!(
        "cost: {n} events ({} messages), batches of {size}: plan {:.1} us/event, write {:.1} us/event, {:.1} us/message",
        traffic.msg,
        plan_all * 1e6 / n as f64,
        write_all * 1e6 / n as f64,
        (plan_all + write_all) * 1e6 / traffic.msg.max(1) as f64
    ))
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    let (Some(config), Some(total)) = (args.get(1), args.get(2)) else {
        eprintln!("usage: journal_fill CONFIG EVENTS [--bulk|--cost]");
        std::process::exit(2);
    };
    let total: u64 = total.parse()?;
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_env("PASSERELLE_LOG"))
        .with_writer(std::io::stderr)
        .init();
    let cfg = passerelle::config::Config::load_unvalidated(std::path::Path::new(config))?;
    let mut traffic = Traffic::new(total);
    let report = if args.iter().any(|a| a == "--bulk") {
        bulk(&cfg, total, &mut traffic)?
    } else if args.iter().any(|a| a == "--cost") {
        cost(&cfg, total, &mut traffic)?
    } else {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let _guard = rt.enter();
        through_writer(&cfg, total, &mut traffic)?
    };
    println!("{report}");
    for (k, v) in &traffic.samples {
        println!("sample {k} {v}");
    }
    Ok(())
}
