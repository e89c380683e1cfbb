//! Under the default `Leaders::Auto`, a push leads only while another thread of its runtime
//! has nothing to do. When every other thread is busy, the runtime is short of CPU, not of
//! wake-ups: a leader would block one of its threads for a whole sync, so the push queues
//! for the log's writer thread instead. Under `Leaders::Never` no push leads.
//!
//! Apart from `lead.rs`: leaders are counted over the whole process. (The test of `Never`
//! beside this one takes no leader's turn.)

// Test helpers may unwrap: a panic there is a failed test.
#![allow(clippy::unwrap_used)]

mod watched;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use strata_core::{Blocking, LogId};
use strata_tlog::{FileLog, Leaders};
use watched::{config, names_after, open_armed, payload, pull_all, push_one_at_a_time};

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
    let (log, threads, _) = open_armed(dir.path(), Blocking::Threads, Leaders::Auto);

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
    // lone groups in a row: most of them (the other thread is awake now and then, as when
    // tokio wakes it for the pusher's own wake-up).
    drop(release);
    hog.await.unwrap();
    let opened = threads.lock().unwrap().len();
    push_one_at_a_time(&log, 301, 600).await;
    let on_runtime = threads.lock().unwrap()[opened..]
        .iter()
        .filter(|t| t.1.as_deref() == Some("tokio-rt-worker"))
        .count();
    assert!(
        on_runtime >= 300,
        "{on_runtime} of the writes and syncs of 300 lone pushes ran on a runtime thread"
    );

    // Reopened, the log holds every push in order.
    log.close();
    drop(log);
    let log = FileLog::open_existing(dir.path(), LogId(1), config(Blocking::Threads)).unwrap();
    assert_eq!(
        pull_all(&log, 0, 600).await,
        (1..=600).map(|v| (v, payload(v))).collect::<Vec<_>>()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn under_never_no_push_leads() {
    let dir = tempfile::tempdir().unwrap();
    let (log, threads, _) = open_armed(dir.path(), Blocking::Threads, Leaders::Never);
    let opened = threads.lock().unwrap().len();
    push_one_at_a_time(&log, 1, 300).await;
    let names = names_after(&threads, opened);
    assert!(names.contains(&"strata-tlog-1".to_owned()), "{names:?}");
    assert!(!names.contains(&"tokio-rt-worker".to_owned()), "{names:?}");
    assert_eq!(
        pull_all(&log, 0, 300).await,
        (1..=300).map(|v| (v, payload(v))).collect::<Vec<_>>()
    );
}
