//! Restarts, waits for future versions, roll backs, shards, and memory while versions stream.

// Test helpers may unwrap: a panic there is a failed test.
#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use strata_core::{
    Blocking, ErrorKind, KeyRange, LogId, LogServer, MVCC_WINDOW_VERSIONS, Mutation, StorageServer,
    Version,
};
use strata_storage::{RedbStorage, StorageConfig};
use strata_testkit::MemoryLog;

fn everything() -> Vec<KeyRange> {
    vec![KeyRange::new("", "\u{7f}").unwrap()]
}

fn set(key: String, value: String) -> Mutation {
    Mutation::Set {
        key: key.into(),
        value: value.into(),
    }
}

async fn push(log: &MemoryLog, previous: u64, version: u64, mutations: &[Mutation]) {
    log.push_mutations(Version(previous), Version(version), mutations)
        .await
        .unwrap();
}

async fn open(path: &Path, log: Arc<MemoryLog>, config: StorageConfig) -> RedbStorage {
    RedbStorage::open(path, everything(), log, config)
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restart_mid_stream_recovers_durable_data_and_repulls_the_rest() {
    restart_mid_stream(Blocking::Threads).await;
}

/// The same with redb's file read and written on the asking task, as the simulation runs it
/// on its one thread: opening, flushing, closing and reading all work there.
#[tokio::test(flavor = "current_thread")]
async fn restart_mid_stream_with_inline_disk_work() {
    restart_mid_stream(Blocking::Inline).await;
}

async fn restart_mid_stream(blocking: Blocking) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("s.redb");
    let log = Arc::new(MemoryLog::new(LogId(1), Version(0)));
    let config = StorageConfig {
        window_versions: 100,
        flush_interval: Duration::from_secs(3600),
        blocking,
        ..StorageConfig::default()
    };
    let mut model = BTreeMap::new();
    let storage = open(&path, log.clone(), config).await;
    for n in 1..=100u64 {
        let m = set(format!("k{}", n % 17), format!("v{n}"));
        push(&log, (n - 1) * 10, n * 10, &[m]).await;
        // The only log acknowledged it: committed.
        storage.advance_committed(Version(n * 10));
        model.insert(format!("k{}", n % 17), format!("v{n}"));
    }
    storage.get("k1".into(), Version(1000)).await.unwrap();
    storage.flush().await.unwrap();
    let durable = storage.durable_version().await.unwrap();
    assert_eq!(durable, Version(900));
    storage.close().await;

    // More commits arrive while the server is down.
    for n in 101..=150u64 {
        let m = set(format!("k{}", n % 17), format!("v{n}"));
        push(&log, (n - 1) * 10, n * 10, &[m]).await;
        model.insert(format!("k{}", n % 17), format!("v{n}"));
    }
    let storage = open(&path, log.clone(), config).await;
    assert_eq!(storage.durable_version().await.unwrap(), durable);
    let got = storage
        .get_range(KeyRange::new("k", "l").unwrap(), Version(1500), 100, false)
        .await
        .unwrap();
    let expected: Vec<(Bytes, Bytes)> = model
        .into_iter()
        .map(|(k, v)| (Bytes::from(k), Bytes::from(v)))
        .collect();
    assert_eq!(got.entries, expected);
    // The log was popped below the durable version: the server did not need it.
    let err = log.pull(Version(0), 1).await.unwrap_err();
    assert!(matches!(err.kind, ErrorKind::TooOld { .. }), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reads_of_future_versions_wait_then_fail_after_their_bound() {
    let dir = tempfile::tempdir().unwrap();
    let log = Arc::new(MemoryLog::new(LogId(1), Version(0)));
    let config = StorageConfig {
        read_wait: Duration::from_millis(200),
        ..StorageConfig::default()
    };
    let storage = Arc::new(open(&dir.path().join("s.redb"), log.clone(), config).await);

    let waiting = tokio::spawn({
        let storage = storage.clone();
        async move { storage.get("k".into(), Version(10)).await }
    });
    tokio::time::sleep(Duration::from_millis(30)).await;
    assert!(!waiting.is_finished());
    push(&log, 0, 10, &[set("k".into(), "v".into())]).await;
    assert_eq!(waiting.await.unwrap().unwrap(), Some("v".into()));

    let err = storage.get("k".into(), Version(11)).await.unwrap_err();
    assert!(
        matches!(err.kind, ErrorKind::FutureVersion { version, newest } if version == Version(11) && newest == Version(10)),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn roll_back_then_a_different_history_gives_the_new_values() {
    let dir = tempfile::tempdir().unwrap();
    let old_log = Arc::new(MemoryLog::new(LogId(1), Version(0)));
    let storage = open(
        &dir.path().join("s.redb"),
        old_log.clone(),
        StorageConfig::default(),
    )
    .await;
    for n in 1..=10u64 {
        push(&old_log, n - 1, n, &[set("k".into(), format!("old{n}"))]).await;
    }
    assert_eq!(
        storage.get("k".into(), Version(10)).await.unwrap(),
        Some("old10".into())
    );

    // Recovery: versions above 6 were never acknowledged; the new epoch's log goes on from 6.
    let new_log = Arc::new(MemoryLog::new(LogId(2), Version(6)));
    storage.follow(new_log.clone(), Version(6)).unwrap();
    push(
        &new_log,
        6,
        20,
        &[set("k".into(), "new20".into()), set("j".into(), "x".into())],
    )
    .await;

    assert_eq!(
        storage.get("k".into(), Version(6)).await.unwrap(),
        Some("old6".into())
    );
    assert_eq!(
        storage.get("k".into(), Version(19)).await.unwrap(),
        Some("old6".into())
    );
    assert_eq!(
        storage.get("k".into(), Version(20)).await.unwrap(),
        Some("new20".into())
    );
    assert_eq!(
        storage.get("j".into(), Version(20)).await.unwrap(),
        Some("x".into())
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn roll_back_below_the_durable_version_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let log = Arc::new(MemoryLog::new(LogId(1), Version(0)));
    let config = StorageConfig {
        window_versions: 5,
        flush_interval: Duration::from_secs(3600),
        ..StorageConfig::default()
    };
    let storage = open(&dir.path().join("s.redb"), log.clone(), config).await;
    for n in 1..=20u64 {
        push(&log, n - 1, n, &[set("k".into(), n.to_string())]).await;
    }
    storage.advance_committed(Version(20));
    storage.get("k".into(), Version(20)).await.unwrap();
    storage.flush().await.unwrap();
    let err = storage.roll_back(Version(10)).await.unwrap_err();
    assert!(matches!(err.kind, ErrorKind::InvalidRequest(_)), "{err}");
    let err = storage.get("k".into(), Version(10)).await.unwrap_err();
    assert!(matches!(err.kind, ErrorKind::TooOld { .. }), "{err}");
    // Reads inside the window still work, from redb and memory alike.
    assert_eq!(
        storage.get("k".into(), Version(15)).await.unwrap(),
        Some("15".into())
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_keeps_only_its_shards() {
    let dir = tempfile::tempdir().unwrap();
    let log = Arc::new(MemoryLog::new(LogId(1), Version(0)));
    let shard = KeyRange::new("m", "n").unwrap();
    let storage = RedbStorage::open(
        &dir.path().join("s.redb"),
        vec![shard.clone()],
        log.clone(),
        StorageConfig::default(),
    )
    .await
    .unwrap();
    push(
        &log,
        0,
        1,
        &[set("a".into(), "1".into()), set("m1".into(), "2".into())],
    )
    .await;
    assert_eq!(
        storage.get("m1".into(), Version(1)).await.unwrap(),
        Some("2".into())
    );
    assert_eq!(storage.window_len().unwrap(), 1);
    let err = storage.get("a".into(), Version(1)).await.unwrap_err();
    assert!(matches!(err.kind, ErrorKind::WrongShard { .. }), "{err}");
    let err = storage
        .get_range(KeyRange::new("l", "m5").unwrap(), Version(1), 10, false)
        .await
        .unwrap_err();
    assert!(matches!(err.kind, ErrorKind::WrongShard { .. }), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_stays_bounded_while_ten_million_versions_stream_through() {
    const STEP: u64 = 1_000;
    const KEYS_PER_BATCH: u64 = 3;
    const FLUSH_EVERY: u64 = 100;
    let dir = tempfile::tempdir().unwrap();
    let log = Arc::new(MemoryLog::new(LogId(1), Version(0)));
    let config = StorageConfig {
        flush_interval: Duration::from_secs(3600),
        ..StorageConfig::default()
    };
    let storage = open(&dir.path().join("s.redb"), log.clone(), config).await;
    let bound = ((MVCC_WINDOW_VERSIONS / STEP + FLUSH_EVERY) * KEYS_PER_BATCH) as usize;
    let mut peak = 0;
    let mut version = 0;
    let mut n = 0u64;
    while version < 10_000_000 {
        let mutations: Vec<Mutation> = (0..KEYS_PER_BATCH)
            .map(|i| set(format!("key{:08}", n * KEYS_PER_BATCH + i), "v".into()))
            .collect();
        push(&log, version, version + STEP, &mutations).await;
        version += STEP;
        storage.advance_committed(Version(version));
        n += 1;
        if n.is_multiple_of(FLUSH_EVERY) {
            storage.get("key".into(), Version(version)).await.unwrap();
            storage.flush().await.unwrap();
            let held = storage.window_len().unwrap();
            assert!(
                held <= bound,
                "{held} mutations held at {version}, bound {bound}"
            );
            peak = peak.max(held);
        }
    }
    let streamed = (n * KEYS_PER_BATCH) as usize;
    assert!(peak < streamed / 2 + 1, "peak {peak} of {streamed}");
    assert_eq!(
        storage.durable_version().await.unwrap(),
        Version(10_000_000 - MVCC_WINDOW_VERSIONS)
    );
    // Whatever left memory is in redb.
    let first = storage
        .get("key00000000".into(), Version(version))
        .await
        .unwrap();
    assert_eq!(first, Some("v".into()));
}

/// Found by review: rolled back, a server still following the old log pulls the versions it
/// dropped again before it is told to follow the new one, and then applies the new history
/// over them. Moving to a new log is one step: `follow(log, from)`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn moving_to_a_new_log_never_brings_back_what_was_rolled_back() {
    let dir = tempfile::tempdir().unwrap();
    let old_log = Arc::new(MemoryLog::new(LogId(1), Version(0)));
    let storage = open(
        &dir.path().join("s.redb"),
        old_log.clone(),
        StorageConfig::default(),
    )
    .await;
    for n in 1..=10u64 {
        push(&old_log, n - 1, n, &[set("k".into(), format!("old{n}"))]).await;
    }
    storage.wait_applied(Version(10)).await.unwrap();
    let new_log = Arc::new(MemoryLog::new(LogId(2), Version(6)));
    storage.follow(new_log.clone(), Version(6)).unwrap();
    push(&new_log, 6, 20, &[set("j".into(), "new20".into())]).await;
    storage.wait_applied(Version(20)).await.unwrap();
    // Nothing of the old log above 6 survives, at any version.
    for v in [6, 10, 19, 20] {
        assert_eq!(
            storage.get("k".into(), Version(v)).await.unwrap(),
            Some("old6".into()),
            "k at {v}"
        );
    }
    assert_eq!(
        storage.get("j".into(), Version(20)).await.unwrap(),
        Some("new20".into())
    );
}
