//! `durable_version_at` reads a storage file without writing it, even one a crash left in need
//! of repair: recovery looks at every storage file before it decides anything, and a
//! directory it then refuses must be left as it was.

// Test helpers may unwrap: a panic there is a failed test.
#![allow(clippy::unwrap_used)]

use std::sync::Arc;
use std::time::Duration;

use strata_core::{KeyRange, LogId, Mutation, StorageServer, Version};
use strata_storage::{RedbStorage, StorageConfig, durable_version_at};
use strata_testkit::MemoryLog;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reading_the_durable_version_never_writes_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("s.redb");
    let log = Arc::new(MemoryLog::new(LogId(1), Version(0)));
    let config = StorageConfig {
        window_versions: 0,
        flush_interval: Duration::from_secs(3600),
        ..StorageConfig::default()
    };
    let storage = RedbStorage::open(
        &path,
        vec![KeyRange::new("", "\u{7f}").unwrap()],
        log.clone(),
        config,
    )
    .await
    .unwrap();
    push_sets(&log, 1, 50).await;
    storage.advance_committed(Version(50));
    storage.wait_applied(Version(50)).await.unwrap();
    storage.flush().await.unwrap();

    // A crash image: the file as it is while the server still has it open.
    let crashed = dir.path().join("crashed.redb");
    std::fs::copy(&path, &crashed).unwrap();
    storage.close().await;

    for file in [&path, &crashed] {
        let before = std::fs::read(file).unwrap();
        assert_eq!(durable_version_at(file).unwrap(), Version(50));
        assert_eq!(durable_version_at(file).unwrap(), Version(50));
        assert!(
            std::fs::read(file).unwrap() == before,
            "{} was written",
            file.display()
        );
    }
}

/// Pushes versions `from..=to` to `log`, each setting `k<v % 7>` to `v<v>`.
async fn push_sets(log: &MemoryLog, from: u64, to: u64) {
    for v in from..=to {
        let set = Mutation::Set {
            key: format!("k{}", v % 7).into(),
            value: format!("v{v}").into(),
        };
        log.push_mutations(Version(v - 1), Version(v), &[set])
            .await
            .unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_read_only_server_follows_its_log_and_never_writes_its_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("s.redb");
    let shard = KeyRange::new("", "\u{7f}").unwrap();
    let log = Arc::new(MemoryLog::new(LogId(1), Version(0)));
    // The log keeps everything, so that a server with no file can replay it all.
    let flushing = StorageConfig {
        window_versions: 0,
        flush_interval: Duration::from_secs(3600),
        pop_log: false,
        ..StorageConfig::default()
    };
    let storage = RedbStorage::open(&path, vec![shard.clone()], log.clone(), flushing)
        .await
        .unwrap();
    push_sets(&log, 1, 20).await;
    storage.advance_committed(Version(20));
    storage.wait_applied(Version(20)).await.unwrap();
    storage.flush().await.unwrap();
    // A crash image: the file as it is while the server still has it open (redb must
    // repair it at open, which a read-only open does in memory).
    let crashed = dir.path().join("crashed.redb");
    std::fs::copy(&path, &crashed).unwrap();
    storage.close().await;
    // History the file does not hold yet.
    push_sets(&log, 21, 40).await;

    let read_only = StorageConfig {
        read_only: true,
        ..flushing
    };
    for file in [&path, &crashed] {
        let before = std::fs::read(file).unwrap();
        let server = RedbStorage::open(file, vec![shard.clone()], log.clone(), read_only)
            .await
            .unwrap();
        server.wait_applied(Version(40)).await.unwrap();
        // Durable from the file, the rest replayed from the log, at every version.
        assert_eq!(server.durable_version().await.unwrap(), Version(20));
        assert_eq!(
            server.get("k5".into(), Version(40)).await.unwrap(),
            Some("v40".into())
        );
        assert_eq!(
            server.get("k4".into(), Version(25)).await.unwrap(),
            Some("v25".into())
        );
        // Told everything is committed, it still makes nothing durable.
        server.advance_committed(Version(40));
        server.flush().await.unwrap();
        assert_eq!(server.durable_version().await.unwrap(), Version(20));
        server.close().await;
        assert!(
            std::fs::read(file).unwrap() == before,
            "{} was written",
            file.display()
        );
    }

    // A missing file opens empty, at 0, replays the whole log, and is not created.
    let missing = dir.path().join("missing.redb");
    let server = RedbStorage::open(&missing, vec![shard], log.clone(), read_only)
        .await
        .unwrap();
    server.wait_applied(Version(40)).await.unwrap();
    assert_eq!(server.durable_version().await.unwrap(), Version(0));
    assert_eq!(
        server.get("k6".into(), Version(34)).await.unwrap(),
        Some("v34".into())
    );
    server.close().await;
    assert!(!missing.exists());
}
