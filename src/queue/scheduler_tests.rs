//! Unit tests of `scheduler.rs` (kept apart so the code reads on its own).

use super::*;
use crate::delivery::Attempt;
use crate::delivery::BoxFuture;
use crate::message::Outcome;
use crate::message::{Delivered, Failure, FailureKind, Recipient, Remote};
use crate::reply::Reply;
use std::sync::Mutex;

/// A transport that answers from a script and records what it was asked.
#[derive(Default)]
struct Fake {
    /// Outcome per call, per recipient index; the last entry repeats.
    script: Mutex<Vec<Outcome>>,
    calls: Mutex<Vec<Vec<usize>>>,
    /// The envelope of each call: sender and recipients.
    envelopes: Mutex<Vec<(String, Vec<String>)>>,
    revived: Mutex<Vec<Option<String>>>,
}

impl Transport for Fake {
    fn deliver<'a>(
        &'a self,
        env: &'a Envelope,
        pending: &'a [usize],
        _: &'a [u8],
    ) -> BoxFuture<'a, Vec<Attempt>> {
        let mut s = self.script.lock().unwrap();
        let o = if s.len() > 1 {
            s.remove(0)
        } else {
            s[0].clone()
        };
        self.calls.lock().unwrap().push(pending.to_vec());
        self.envelopes.lock().unwrap().push((
            env.mail_from.clone(),
            env.recipients.iter().map(|r| r.address.clone()).collect(),
        ));
        let attempt = Attempt {
            transport: "t".into(),
            remote: None,
            tls: None,
            peer_dn: None,
            duration: Duration::ZERO,
            outcomes: pending.iter().map(|&i| (i, o.clone())).collect(),
        };
        Box::pin(async move { vec![attempt] })
    }
    fn revive(&self, env: Option<&Envelope>) {
        self.revived.lock().unwrap().push(env.map(|e| e.id.clone()));
    }
}

struct ToSender;
impl ReturnPath for ToSender {
    fn route(&self, _: &str, _: &str) -> Option<(String, String)> {
        Some(("r".into(), "t".into()))
    }
}

fn remote() -> Remote {
    Remote {
        host: "mx".into(),
        addr: "127.0.0.1:25".parse().unwrap(),
    }
}

fn env(id: &str) -> Envelope {
    Envelope {
        establishment: None,
        id: id.into(),
        received: now_ms() / 1000,
        listener: "l".into(),
        client: "127.0.0.1".into(),
        helo: "h".into(),
        mail_from: "s@a.fr".into(),
        ret: None,
        envid: None,
        eight_bit: false,
        smtputf8: false,
        recipients: vec![Recipient {
            address: "r@b.fr".into(),
            orcpt: None,
            notify: 0,
            route: "r".into(),
            transport: "t".into(),
        }],
    }
}

fn config(retry: u64) -> SchedulerConfig {
    SchedulerConfig {
        queue: QueueConfig {
            retry: vec![Duration::from_secs(retry)],
            ..QueueConfig::default()
        },
        hostname: "gw.test".into(),
    }
}

async fn wait_for(what: &str, mut f: impl FnMut() -> bool) {
    for _ in 0..200 {
        if f() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("timed out waiting for {what}");
}

fn start(fake: &Arc<Fake>, dir: &std::path::Path) -> Queue {
    let (spool, recovered, _) = Spool::open(dir).unwrap();
    let t: Arc<dyn Transport> = fake.clone();
    Scheduler::start(spool, t, Arc::new(ToSender), config(3600), recovered)
}

#[tokio::test]
async fn admin_retry_attempts_at_once_and_ends_the_rest_period() {
    let tmp = tempfile::tempdir().unwrap();
    let fake = Arc::new(Fake::default());
    *fake.script.lock().unwrap() = vec![
        Outcome::Deferred(Failure::new(FailureKind::Connect, "refused").at(&remote())),
        Outcome::Delivered(Delivered {
            remote: remote(),
            reply: Reply::new(250, "2.0.0", "ok"),
            dsn_passed: false,
        }),
    ];
    let q = start(&fake, tmp.path());
    q.enqueue(env("A1"), Arc::new(b"x\r\n".to_vec()))
        .await
        .unwrap();
    wait_for("first attempt", || fake.calls.lock().unwrap().len() == 1).await;
    let item = q.handle().show("A1").await.unwrap();
    assert_eq!(item.attempts, 1);
    assert!(item.next_attempt > now_ms() + 3_000_000, "retry in an hour");
    assert_eq!(q.handle().retry(Some("A1")).await, Ok(1));
    wait_for("delivery after retry", || {
        fake.calls.lock().unwrap().len() == 2
    })
    .await;
    assert_eq!(*fake.revived.lock().unwrap(), vec![Some("A1".to_string())]);
    for _ in 0..200 {
        if q.handle().show("A1").await.is_none() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(
        q.handle().show("A1").await.is_none(),
        "removed once delivered"
    );
    assert_eq!(
        q.handle().retry(Some("nope")).await,
        Err(QueueError::NotFound("nope".into()))
    );
    assert_eq!(q.handle().retry(None).await, Ok(0));
    assert_eq!(fake.revived.lock().unwrap().last(), Some(&None));
}

#[tokio::test]
async fn hold_and_release() {
    let tmp = tempfile::tempdir().unwrap();
    let fake = Arc::new(Fake::default());
    *fake.script.lock().unwrap() = vec![Outcome::Deferred(Failure::refused(
        &remote(),
        Reply::new(451, "4.3.0", "later"),
    ))];
    let q = start(&fake, tmp.path());
    q.enqueue(env("H1"), Arc::new(b"x\r\n".to_vec()))
        .await
        .unwrap();
    wait_for("first attempt", || fake.calls.lock().unwrap().len() == 1).await;
    q.handle().hold("H1").await.unwrap();
    assert!(q.handle().show("H1").await.unwrap().held);
    // Held: a retry does not start it.
    assert_eq!(q.handle().retry(Some("H1")).await, Ok(0));
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert_eq!(fake.calls.lock().unwrap().len(), 1);
    q.handle().release("H1").await.unwrap();
    wait_for("attempt after release", || {
        fake.calls.lock().unwrap().len() == 2
    })
    .await;
    assert_eq!(
        q.handle().hold("zz").await,
        Err(QueueError::NotFound("zz".into()))
    );
    q.handle().delete("H1").await.unwrap();
    assert!(q.handle().show("H1").await.is_none());
}

#[tokio::test]
async fn a_bounce_notifies_the_sender_through_the_same_enqueue() {
    let tmp = tempfile::tempdir().unwrap();
    let fake = Arc::new(Fake::default());
    *fake.script.lock().unwrap() = vec![
        Outcome::Failed(Failure::refused(
            &remote(),
            Reply::new(550, "5.1.1", "unknown"),
        )),
        // The DSN itself is then delivered.
        Outcome::Delivered(Delivered {
            remote: remote(),
            reply: Reply::new(250, "2.0.0", "ok"),
            dsn_passed: false,
        }),
    ];
    let q = start(&fake, tmp.path());
    q.enqueue(env("B1"), Arc::new(b"Subject: x\r\n\r\nbody\r\n".to_vec()))
        .await
        .unwrap();
    wait_for("bounce delivered", || fake.calls.lock().unwrap().len() == 2).await;
    for _ in 0..200 {
        if q.handle().list().await.is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(
        q.handle().list().await.is_empty(),
        "message and bounce both gone"
    );
    // The report goes from the null sender to the original sender, and only to it.
    let envelopes = fake.envelopes.lock().unwrap().clone();
    assert_eq!(
        envelopes[0],
        ("s@a.fr".to_string(), vec!["r@b.fr".to_string()])
    );
    assert_eq!(envelopes[1], (String::new(), vec!["s@a.fr".to_string()]));
}
