//! The `LogServer` contract, run against both logs: ordering along the version chain,
//! duplicates, forks and gaps, epoch fencing, and pulls that wait.

// Test helpers may unwrap: a panic there is a failed test.
#![allow(clippy::unwrap_used)]

use std::sync::Arc;
use std::time::Duration;

use strata_core::{Epoch, ErrorKind, LogId, LogServer, Version};
use strata_testkit::MemoryLog;
use strata_tlog::{FileLog, FileLogConfig};

const WAIT: Duration = Duration::from_millis(150);

/// Both logs, each starting at version 100, with short waits.
fn logs() -> Vec<(&'static str, Arc<dyn LogServer>, Option<tempfile::TempDir>)> {
    let dir = tempfile::tempdir().unwrap();
    let config = FileLogConfig {
        predecessor_wait: WAIT,
        pull_wait: WAIT,
        ..FileLogConfig::default()
    };
    let file = FileLog::open(dir.path(), LogId(1), Version(100), config).unwrap();
    let memory = MemoryLog::new(LogId(2), Version(100)).with_waits(WAIT, WAIT);
    vec![
        ("file", Arc::new(file), Some(dir)),
        ("memory", Arc::new(memory), None),
    ]
}

fn v(n: u64) -> Version {
    Version(n)
}

#[tokio::test]
async fn duplicates_forks_gaps_and_bad_versions_are_refused_with_their_own_errors() {
    for (name, log, _dir) in logs() {
        log.push(Epoch(1), v(100), v(110), "a".into())
            .await
            .unwrap();

        let dup = log
            .push(Epoch(1), v(100), v(110), "a".into())
            .await
            .unwrap_err();
        assert!(
            matches!(dup.kind, ErrorKind::Duplicate { version, last } if version == v(110) && last == v(110)),
            "{name}: {dup}"
        );
        let fork = log
            .push(Epoch(1), v(105), v(120), "b".into())
            .await
            .unwrap_err();
        assert!(
            matches!(fork.kind, ErrorKind::OutOfOrder { .. }),
            "{name}: {fork}"
        );
        let gap = log
            .push(Epoch(1), v(115), v(120), "b".into())
            .await
            .unwrap_err();
        assert!(
            matches!(gap.kind, ErrorKind::OutOfOrder { previous, last } if previous == v(115) && last == v(110)),
            "{name}: {gap}"
        );
        let backwards = log
            .push(Epoch(1), v(110), v(110), "b".into())
            .await
            .unwrap_err();
        assert!(
            matches!(backwards.kind, ErrorKind::InvalidRequest(_)),
            "{name}: {backwards}"
        );

        // None of the refused pushes left anything behind.
        let held = log.pull(v(100), 10).await.unwrap();
        assert_eq!(held.len(), 1, "{name}");
        assert_eq!(held[0].version, v(110));
        assert_eq!(held[0].previous_version, v(100));
    }
}

#[tokio::test]
async fn an_early_push_waits_for_its_predecessor() {
    for (name, log, _dir) in logs() {
        let early = tokio::spawn({
            let log = log.clone();
            async move { log.push(Epoch(1), v(110), v(120), "second".into()).await }
        });
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(!early.is_finished(), "{name}");
        log.push(Epoch(1), v(100), v(110), "first".into())
            .await
            .unwrap();
        early.await.unwrap().unwrap();
        let versions: Vec<Version> = log
            .pull(v(100), 10)
            .await
            .unwrap()
            .iter()
            .map(|e| e.version)
            .collect();
        assert_eq!(versions, vec![v(110), v(120)], "{name}");
    }
}

#[tokio::test]
async fn lock_fences_older_epochs_and_reports_what_is_held() {
    for (name, log, _dir) in logs() {
        let empty = log.lock(Epoch(2)).await.unwrap();
        assert_eq!(empty.first_version, None, "{name}");
        assert_eq!(empty.last_version, v(100), "{name}");

        log.push(Epoch(2), v(100), v(110), "a".into())
            .await
            .unwrap();
        log.push(Epoch(3), v(110), v(120), "b".into())
            .await
            .unwrap();
        let state = log.lock(Epoch(5)).await.unwrap();
        assert_eq!(state.epoch, Epoch(5));
        assert_eq!(state.first_version, Some(v(110)), "{name}");
        assert_eq!(state.last_version, v(120), "{name}");

        let old = log
            .push(Epoch(4), v(120), v(130), "c".into())
            .await
            .unwrap_err();
        assert!(
            matches!(old.kind, ErrorKind::Fenced { request, current } if request == Epoch(4) && current == Epoch(5)),
            "{name}: {old}"
        );
        let relock = log.lock(Epoch(3)).await.unwrap_err();
        assert!(relock.is_fenced(), "{name}");
        // The same epoch again is fine, and so is a newer one.
        log.lock(Epoch(5)).await.unwrap();
        log.push(Epoch(6), v(120), v(130), "c".into())
            .await
            .unwrap();
    }
}

#[tokio::test]
async fn a_push_waiting_for_its_predecessor_is_fenced_by_a_lock() {
    for (name, log, _dir) in logs() {
        let waiting = tokio::spawn({
            let log = log.clone();
            async move { log.push(Epoch(1), v(110), v(120), "x".into()).await }
        });
        tokio::time::sleep(Duration::from_millis(10)).await;
        log.lock(Epoch(2)).await.unwrap();
        let err = waiting.await.unwrap().unwrap_err();
        assert!(err.is_fenced(), "{name}: {err}");
    }
}

#[tokio::test]
async fn pull_waits_for_a_new_entry_and_gives_up_after_its_bound() {
    for (name, log, _dir) in logs() {
        let started = std::time::Instant::now();
        assert!(log.pull(v(100), 10).await.unwrap().is_empty(), "{name}");
        assert!(
            started.elapsed() >= WAIT - Duration::from_millis(5),
            "{name}"
        );

        let puller = tokio::spawn({
            let log = log.clone();
            async move { log.pull(v(100), 10).await }
        });
        tokio::time::sleep(Duration::from_millis(10)).await;
        log.push(Epoch(1), v(100), v(110), "new".into())
            .await
            .unwrap();
        let got = puller.await.unwrap().unwrap();
        assert_eq!(got.len(), 1, "{name}");
        assert_eq!(got[0].payload, "new");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_pushers_keep_one_ordered_history() {
    for (name, log, _dir) in logs() {
        let next = Arc::new(std::sync::atomic::AtomicU64::new(100));
        let tasks: Vec<_> = (0..16)
            .map(|_| {
                let (log, next) = (log.clone(), next.clone());
                tokio::spawn(async move {
                    for _ in 0..20 {
                        let n = next.fetch_add(1, std::sync::atomic::Ordering::SeqCst) + 1;
                        let payload = bytes::Bytes::from(n.to_string());
                        log.push(Epoch(1), v(n - 1), v(n), payload).await.unwrap();
                    }
                })
            })
            .collect();
        for t in tasks {
            t.await.unwrap();
        }
        let all = log.pull(v(100), 1000).await.unwrap();
        assert_eq!(all.len(), 320, "{name}");
        for (i, e) in all.iter().enumerate() {
            let n = 101 + i as u64;
            assert_eq!(e.version, v(n), "{name}");
            assert_eq!(e.previous_version, v(n - 1), "{name}");
            assert_eq!(e.payload, n.to_string(), "{name}");
        }
    }
}

#[tokio::test]
async fn oversized_payload_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let config = FileLogConfig {
        payload_bytes_max: 1024,
        ..FileLogConfig::default()
    };
    let log = FileLog::open(dir.path(), LogId(1), Version(0), config).unwrap();
    let err = log
        .push(Epoch(1), v(0), v(1), bytes::Bytes::from(vec![0; 1025]))
        .await
        .unwrap_err();
    assert!(matches!(err.kind, ErrorKind::InvalidRequest(_)), "{err}");
    log.push(Epoch(1), v(0), v(1), bytes::Bytes::from(vec![0; 1024]))
        .await
        .unwrap();
}
