//! A push leads only while another thread of its runtime has nothing to do. When every other
//! thread is busy, the runtime is short of CPU, not of wake-ups: a leader would block one of
//! its threads for a whole sync, so the push queues for the log's writer thread instead.
//!
//! Alone in its binary, as `lead.rs` is: leaders are counted over the whole process.

// Test helpers may unwrap: a panic there is a failed test.
#![allow(clippy::unwrap_used)]

mod watched;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use strata_core::{Blocking, Epoch, LogServer, Version};
use strata_tlog::FileLog;
use watched::{names_after, open_armed, payload, pull_all};

/// Pushes `from..=to` one at a time from a task of the runtime, each answered before the next.
async fn push_one_at_a_time(log: &Arc<FileLog>, from: u64, to: u64) {
    let log = log.clone();
    tokio::spawn(async move {
        for v in from..=to {
            log.push(Epoch(0), Version(v - 1), Version(v), payload(v))
                .await
                .unwrap();
        }
    })
    .await
    .unwrap();
}

/// Lets the busy task go when dropped: by the test, or by its unwinding on a failed assertion
/// (the runtime's shutdown would otherwise wait forever for a task that never yields).
struct Release(Arc<AtomicBool>);

impl Drop for Release {
    fn drop(&mut self) {
        self.0.store(false, Ordering::SeqCst);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_push_does_not_lead_while_every_other_runtime_thread_is_busy() {
    let dir = tempfile::tempdir().unwrap();
    let (log, threads, _) = open_armed(dir.path(), Blocking::Threads);

    // One of the two runtime threads runs a task that never yields until told to stop: the
    // pushes run on the other one, and no runtime thread is ever idle meanwhile.
    let busy = Arc::new(AtomicBool::new(true));
    let release = Release(busy.clone());
    let started = Arc::new(AtomicBool::new(false));
    let hog = {
        let (busy, started) = (busy.clone(), started.clone());
        tokio::spawn(async move {
            started.store(true, Ordering::SeqCst);
            while busy.load(Ordering::SeqCst) {
                std::thread::sleep(Duration::from_micros(100));
            }
        })
    };
    while !started.load(Ordering::SeqCst) {
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    let opened = threads.lock().unwrap().len();
    push_one_at_a_time(&log, 1, 300).await;
    let names = names_after(&threads, opened);
    assert!(names.contains(&"strata-tlog-1".to_owned()), "{names:?}");
    assert!(
        !names.contains(&"tokio-rt-worker".to_owned()),
        "a push led while the runtime's other thread was busy: {names:?}"
    );

    // The other thread idle again, lone pushes lead once the writer thread has written two
    // lone groups in a row; the log holds every push in order.
    drop(release);
    hog.await.unwrap();
    let opened = threads.lock().unwrap().len();
    push_one_at_a_time(&log, 301, 600).await;
    let names = names_after(&threads, opened);
    assert!(names.contains(&"tokio-rt-worker".to_owned()), "{names:?}");
    assert_eq!(
        pull_all(&log, 0, 600).await,
        (1..=600).map(|v| (v, payload(v))).collect::<Vec<_>>()
    );
}
