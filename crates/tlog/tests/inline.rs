//! Where a log's writes and syncs run. With `Blocking::Inline`, as the simulation runs it, the
//! writer is a task and the spare segments are written by the writer itself, so every disk call
//! happens on the runtime's one thread; the log behaves as with its threads. With threads,
//! concurrent pushers share syncs on any runtime, and a panic on the writer thread poisons the
//! log. (A lone push writing itself is `lead.rs`: alone in its test binary.)

// Test helpers may unwrap: a panic there is a failed test.
#![allow(clippy::unwrap_used)]

mod watched;

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use bytes::Bytes;
use strata_core::{Blocking, Epoch, ErrorKind, LogId, LogServer, Version};
use strata_tlog::fs::SimFs;
use strata_tlog::{FileLog, FileLogConfig, Leaders};
use watched::{Threads, assert_poisoned_by_a_panic, config, open_armed, payload, pull_all};

/// Pushes versions 1..=last from concurrent tasks in reverse order (each waits for its
/// predecessor), pops half, and reads back the rest.
async fn exercise(log: Arc<FileLog>, last: u64) -> Vec<(u64, Bytes)> {
    let pushes: Vec<_> = (1..=last)
        .rev()
        .map(|v| {
            let log = log.clone();
            tokio::spawn(async move {
                log.push(Epoch(0), Version(v - 1), Version(v), payload(v))
                    .await
            })
        })
        .collect();
    for p in pushes {
        p.await.unwrap().unwrap();
    }
    log.pop(Version(last / 2)).await.unwrap();
    pull_all(&log, last / 2, last).await
}

/// A new log in `dir` on the watched disk, and the threads its writes and syncs ran on.
fn open_watched(dir: &Path, blocking: Blocking) -> (Arc<FileLog>, Threads) {
    let (log, threads, _) = open_armed(dir, blocking, Leaders::Auto);
    (log, threads)
}

fn expected(last: u64) -> Vec<(u64, Bytes)> {
    (last / 2 + 1..=last).map(|v| (v, payload(v))).collect()
}

#[tokio::test(flavor = "current_thread")]
async fn an_inline_log_writes_on_the_runtime_thread_and_reads_back_after_a_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let (log, threads) = open_watched(dir.path(), Blocking::Inline);
    assert_eq!(exercise(log.clone(), 2_000).await, expected(2_000));
    log.close();
    drop(log);

    let here = std::thread::current().id();
    let seen = threads.lock().unwrap().clone();
    assert!(seen.len() > 100, "{} writes and syncs", seen.len());
    assert!(
        seen.iter().all(|t| t.0 == here),
        "a write or sync ran on another thread"
    );

    // What it wrote is a log like any other: reopened with its threads, it holds the same.
    let log = FileLog::open_existing(dir.path(), LogId(1), config(Blocking::Threads)).unwrap();
    assert_eq!(pull_all(&log, 1_000, 2_000).await, expected(2_000));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_threaded_log_writes_on_its_own_threads() {
    // The control: the same run with threads does its writes elsewhere, so the test above
    // would notice a writer that still ran on a thread.
    let dir = tempfile::tempdir().unwrap();
    let (log, threads) = open_watched(dir.path(), Blocking::Threads);
    assert_eq!(exercise(log.clone(), 500).await, expected(500));
    log.close();
    let writer = threads.lock().unwrap().last().cloned().unwrap();
    assert_ne!(writer.0, std::thread::current().id());
}

/// Syncs of a log on a slow simulated disk that 64 concurrent pushers push 20 entries each to.
async fn syncs_for_64_pushers() -> u64 {
    let fs = Arc::new(SimFs::new());
    fs.set_sync_latency(std::time::Duration::from_millis(1));
    let log = Arc::new(
        FileLog::open_with(
            fs.clone(),
            Path::new("/log"),
            LogId(1),
            Version(0),
            FileLogConfig::default(),
        )
        .unwrap(),
    );
    let opened = fs.sync_count();
    let next = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let mut pushers = tokio::task::JoinSet::new();
    for _ in 0..64 {
        let (log, next) = (log.clone(), next.clone());
        pushers.spawn(async move {
            for _ in 0..20 {
                // Versions in the order pushes take them; a push waits for its predecessor.
                let v = next.fetch_add(1, std::sync::atomic::Ordering::SeqCst) + 1;
                log.push(Epoch(0), Version(v - 1), Version(v), payload(v))
                    .await
                    .unwrap();
            }
        });
    }
    while let Some(pushed) = pushers.join_next().await {
        pushed.unwrap();
    }
    assert_eq!(log.last_version(), Version(64 * 20));
    fs.sync_count() - opened
}

// Concurrent pushers share syncs whatever runtime runs them. On a runtime of one thread a push
// that wrote itself would block every other pusher for its sync, so that none could queue
// behind it: each would lead in turn, one sync per push (1,280 here).

#[tokio::test(flavor = "current_thread")]
async fn concurrent_pushers_share_syncs_on_a_current_thread_runtime() {
    let syncs = syncs_for_64_pushers().await;
    assert!(syncs < 1_280 / 4, "{syncs} syncs for 1,280 pushes");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_pushers_share_syncs_on_a_multi_thread_runtime() {
    let syncs = syncs_for_64_pushers().await;
    assert!(syncs < 1_280 / 4, "{syncs} syncs for 1,280 pushes");
}

/// A panic on the writer thread poisons the log: the group's pushes were admitted, so a `lock`
/// waiting for them to become durable would otherwise wait out its whole `queue_wait` and fail
/// as a timeout, at every recovery attempt on this handle, and every later push would be told
/// only that the writer stopped. (A current-thread runtime never leads: the push is the
/// thread's.)
#[tokio::test(flavor = "current_thread")]
async fn a_panic_on_the_writer_thread_poisons_the_log() {
    let dir = tempfile::tempdir().unwrap();
    let (log, _, armed) = open_armed(dir.path(), Blocking::Threads, Leaders::Auto);
    log.push(Epoch(0), Version(0), Version(1), payload(1))
        .await
        .unwrap();
    armed.store(true, Ordering::SeqCst);
    let err = log
        .push(Epoch(0), Version(1), Version(2), payload(2))
        .await
        .unwrap_err();
    assert!(matches!(err.kind, ErrorKind::Unavailable(_)), "{err}");
    assert_poisoned_by_a_panic(&log).await;
}
