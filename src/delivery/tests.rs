//! Unit tests of `mod.rs` (kept apart so the code reads on its own).

use super::*;

#[tokio::test]
async fn semaphores_follow_their_size() {
    let sem = Arc::new(Semaphore::new(4));
    let mut size = 4;
    let held = sem.clone().acquire_many_owned(3).await.unwrap();
    resize_semaphore(&sem, &mut size, 2);
    // One idle permit forgotten at once; one more is taken back when the holder finishes.
    assert_eq!(sem.available_permits(), 0);
    drop(held);
    // The spawned task takes the third permit back as soon as it runs: wait for that.
    tokio::time::timeout(Duration::from_secs(5), async {
        while sem.available_permits() != 2 {
            tokio::task::yield_now().await;
        }
    })
    .await
    .expect("the released permits settle at the new size");
    assert_eq!(sem.available_permits(), 2);
    resize_semaphore(&sem, &mut size, 5);
    assert_eq!(sem.available_permits(), 5);
}

#[test]
fn domains() {
    assert_eq!(domain_of("Dr.A@CHU.MSSante.fr"), "chu.mssante.fr");
    assert_eq!(domain_of("nodomain"), "");
}

#[test]
fn connections_are_reused_by_postfix_rule() {
    let mut q = QueueConfig::default();
    let s = Duration::from_secs;
    // Default: no count limit, 300 s of age.
    assert!(!reuse_over(1_000_000, s(299), &q));
    assert!(reuse_over(1, s(300), &q));
    // A count limit, when set, closes at that count.
    q.connection_reuse_limit = 100;
    assert!(!reuse_over(99, s(1), &q));
    assert!(reuse_over(100, s(1), &q));
    // An age of 0: never reused.
    q.connection_reuse_time = Duration::ZERO;
    assert!(reuse_over(0, Duration::ZERO, &q));
}
