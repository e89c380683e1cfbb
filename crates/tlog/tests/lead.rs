//! A push that finds its log idle writes and syncs itself, on its own thread (it leads); pushes
//! that queue behind another are written by the log's writer thread; the two never write the
//! log out of chain order; a panic in a leader poisons the log.
//!
//! The logs here lead whenever they are idle (`Leaders::WhenLogIdle`), so that which thread
//! writes does not depend on what the runtime's other thread is doing; `lead_busy.rs` tests
//! the default's runtime check.
//!
//! One test, alone in this binary: at most one runtime thread of a process leads at a time on a
//! two-thread runtime, so tests running beside it in one process would take some of its turns.

// Test helpers may unwrap: a panic there is a failed test.
#![allow(clippy::unwrap_used)]

mod watched;

use std::sync::atomic::Ordering;

use strata_core::{Blocking, Epoch, LogId, LogServer, Version};
use strata_tlog::{FileLog, Leaders};
use watched::{
    assert_poisoned_by_a_panic, config, names_after, open_armed, payload, pull_all,
    push_one_at_a_time,
};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lone_pushes_lead_queued_ones_go_to_the_writer_and_a_panic_in_a_leader_poisons() {
    let dir = tempfile::tempdir().unwrap();
    let (log, threads, _) = open_armed(dir.path(), Blocking::Threads, Leaders::WhenLogIdle);
    // Pushes one at a time, each answered before the next: the log is idle at every push.
    // Enough of them to roll through several segments, appended and zero-filled.
    let opened = threads.lock().unwrap().len();
    push_one_at_a_time(&log, 1, 1_000).await;
    assert!(log.segment_count().unwrap() > 3, "the log rolled");
    // Each push wrote and synced on the runtime thread that ran it, never on the writer
    // thread (`strata-tlog-1`); the spare segments' zeros are written by their helper.
    assert_eq!(
        names_after(&threads, opened),
        ["strata-tlog-1-spare", "tokio-rt-worker"]
    );

    // Pushes that arrive while another holds the writer are queued for the writer thread.
    let opened = threads.lock().unwrap().len();
    let mut pushes = tokio::task::JoinSet::new();
    for v in (1_001..=2_500).rev() {
        let log = log.clone();
        pushes.spawn(async move {
            log.push(Epoch(0), Version(v - 1), Version(v), payload(v))
                .await
        });
    }
    while let Some(pushed) = pushes.join_next().await {
        pushed.unwrap().unwrap();
    }
    let names = names_after(&threads, opened);
    assert!(names.contains(&"strata-tlog-1".to_owned()), "{names:?}");
    assert_eq!(
        pull_all(&log, 0, 2_500).await,
        (1..=2_500).map(|v| (v, payload(v))).collect::<Vec<_>>()
    );
    log.close();
    drop(log);

    // Reopened, the log holds every push in order: the leaders and the thread never
    // interleaved their records out of chain order.
    let log = FileLog::open_existing(dir.path(), LogId(1), config(Blocking::Threads)).unwrap();
    assert_eq!(
        pull_all(&log, 0, 2_500).await,
        (1..=2_500).map(|v| (v, payload(v))).collect::<Vec<_>>()
    );

    // A panic while a leader writes (here its record's write) poisons the log: the push was
    // admitted, so a `lock` waiting for it to become durable would otherwise wait out its whole
    // `queue_wait` and fail as a timeout, at every recovery attempt on this handle.
    drop(log);
    let dir = tempfile::tempdir().unwrap();
    let (log, threads, armed) = open_armed(dir.path(), Blocking::Threads, Leaders::WhenLogIdle);
    log.push(Epoch(0), Version(0), Version(1), payload(1))
        .await
        .unwrap();
    armed.store(true, Ordering::SeqCst);
    let pusher = {
        let log = log.clone();
        tokio::spawn(async move { log.push(Epoch(0), Version(1), Version(2), payload(2)).await })
    };
    assert!(pusher.await.unwrap_err().is_panic(), "the leader panicked");
    assert_eq!(
        threads.lock().unwrap().last().unwrap().1.as_deref(),
        Some("tokio-rt-worker")
    );
    assert_poisoned_by_a_panic(&log).await;
}
