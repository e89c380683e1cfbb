//! `durable_version_at` reads a storage file without writing it, even one a crash left in need
//! of repair: recovery looks at every storage file before it decides anything, and a
//! directory it then refuses must be left as it was.

// Test helpers may unwrap: a panic there is a failed test.
#![allow(clippy::unwrap_used)]

use std::sync::Arc;
use std::time::Duration;

use strata_core::{Epoch, KeyRange, LogId, LogServer, Mutation, Version, wire};
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
    for v in 1..=50u64 {
        let set = Mutation::Set {
            key: format!("k{}", v % 7).into(),
            value: format!("v{v}").into(),
        };
        let payload = wire::encode_parts(None, &[], &[], &[set], Some(Version(v))).unwrap();
        log.push(Epoch(1), Version(v - 1), Version(v), payload)
            .await
            .unwrap();
        storage.advance_committed(Version(v));
    }
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
