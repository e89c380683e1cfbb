//! Reopening a log on a real directory, rolling segments, popping them, and the durable lock.

// Test helpers may unwrap: a panic there is a failed test.
#![allow(clippy::unwrap_used)]

use std::path::Path;

use bytes::Bytes;
use strata_core::{Epoch, ErrorKind, LogId, LogServer, Version};
use strata_tlog::{FileLog, FileLogConfig};

fn small_segments() -> FileLogConfig {
    FileLogConfig {
        segment_bytes: 4096,
        ..FileLogConfig::default()
    }
}

fn open(dir: &Path) -> FileLog {
    FileLog::open(dir, LogId(3), Version(0), small_segments()).unwrap()
}

fn payload(n: u64) -> Bytes {
    Bytes::from(format!("entry {n} ").repeat(1 + (n as usize % 40)))
}

fn segment_files(dir: &Path) -> usize {
    std::fs::read_dir(dir)
        .unwrap()
        .filter(|e| {
            e.as_ref()
                .unwrap()
                .file_name()
                .to_string_lossy()
                .ends_with(".seg")
        })
        .count()
}

/// Pushes versions 1 to `last`, each after the one before, all acknowledged.
async fn push_through(log: &FileLog, last: u64) {
    for n in 1..=last {
        log.push(Epoch(1), Version(n - 1), Version(n), payload(n))
            .await
            .unwrap();
    }
}

#[tokio::test]
async fn reopened_log_returns_exactly_what_was_acknowledged_in_order() {
    let dir = tempfile::tempdir().unwrap();
    {
        let log = open(dir.path());
        push_through(&log, 200).await;
        assert!(
            log.segment_count().unwrap() > 5,
            "the test should span segments"
        );
    }
    let log = open(dir.path());
    let mut after = Version(0);
    let mut seen = 0;
    // Pull in small pages, as a storage server would.
    loop {
        let page = log.pull(after, 7).await.unwrap();
        if page.is_empty() {
            break;
        }
        for e in page {
            seen += 1;
            assert_eq!(e.version, Version(seen));
            assert_eq!(e.previous_version, Version(seen - 1));
            assert_eq!(e.payload, payload(seen));
            after = e.version;
        }
    }
    assert_eq!(seen, 200);
    // And it goes on from there.
    log.push(Epoch(1), Version(200), Version(201), payload(201))
        .await
        .unwrap();
}

#[tokio::test]
async fn pop_frees_whole_segments_below_the_version() {
    let dir = tempfile::tempdir().unwrap();
    let log = open(dir.path());
    push_through(&log, 200).await;
    let before = log.segment_count().unwrap();
    assert_eq!(segment_files(dir.path()), before);

    log.pop(Version(150)).await.unwrap();
    let after = log.segment_count().unwrap();
    assert!(after < before, "{after} of {before} segments left");
    assert_eq!(segment_files(dir.path()), after);

    // Everything at or above the pop version is still there; what was popped is too old.
    let kept = log.pull(Version(149), 1000).await.unwrap();
    assert_eq!(kept.first().unwrap().version, Version(150));
    assert_eq!(kept.last().unwrap().version, Version(200));
    let err = log.pull(Version(0), 10).await.unwrap_err();
    assert!(matches!(err.kind, ErrorKind::TooOld { .. }), "{err}");

    // Popping everything keeps the segment being written.
    log.pop(Version(10_000)).await.unwrap();
    assert_eq!(log.segment_count().unwrap(), 1);
    drop(log);

    // A reopened log agrees and goes on.
    let log = open(dir.path());
    assert_eq!(log.segment_count().unwrap(), 1);
    let state = log.lock(Epoch(1)).await.unwrap();
    assert_eq!(state.last_version, Version(200));
    log.push(Epoch(1), Version(200), Version(201), payload(201))
        .await
        .unwrap();
}

#[tokio::test]
async fn the_lock_survives_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    {
        let log = open(dir.path());
        log.push(Epoch(1), Version(0), Version(1), payload(1))
            .await
            .unwrap();
        log.lock(Epoch(7)).await.unwrap();
    }
    let log = open(dir.path());
    let err = log
        .push(Epoch(6), Version(1), Version(2), payload(2))
        .await
        .unwrap_err();
    assert!(err.is_fenced(), "{err}");
    log.push(Epoch(7), Version(1), Version(2), payload(2))
        .await
        .unwrap();
}

#[tokio::test]
async fn a_new_log_starts_at_its_start_version_even_after_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    drop(FileLog::open(dir.path(), LogId(3), Version(5_000), small_segments()).unwrap());
    // Reopened without any entry: the start version was kept in the first segment's header.
    let log = FileLog::open(dir.path(), LogId(3), Version(0), small_segments()).unwrap();
    let state = log.lock(Epoch(1)).await.unwrap();
    assert_eq!(state.last_version, Version(5_000));
    assert_eq!(state.first_version, None);
    log.push(Epoch(1), Version(5_000), Version(5_001), payload(1))
        .await
        .unwrap();
}

#[tokio::test]
async fn pulls_read_the_same_from_the_memory_cache_and_from_disk() {
    let dir = tempfile::tempdir().unwrap();
    let tiny_cache = FileLogConfig {
        pull_cache_bytes: 300,
        ..small_segments()
    };
    let log = FileLog::open(dir.path(), LogId(3), Version(0), tiny_cache).unwrap();
    push_through(&log, 100).await;
    // Most entries were evicted from the cache and come from disk; the newest from memory.
    let all = log.pull(Version(0), 1000).await.unwrap();
    assert_eq!(all.len(), 100);
    for (i, e) in all.iter().enumerate() {
        let n = i as u64 + 1;
        assert_eq!((e.version, &e.payload), (Version(n), &payload(n)));
    }
    log.pop(Version(90)).await.unwrap();
    let rest = log.pull(Version(95), 1000).await.unwrap();
    assert_eq!(rest.first().unwrap().version, Version(96));
    assert_eq!(rest.len(), 5);
}
