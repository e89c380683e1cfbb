//! Recovery through the persistence phase: the first recovery of an empty directory, the
//! handoff of the configuration to the next epoch through the monolithic key, data surviving a
//! recovery, and a layout change reflected exactly in the decomposed keys.

// Test helpers may unwrap: a panic there is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used, unreachable_pub)]

use std::path::Path;

use bytes::Bytes;
use strata_core::system::{SystemConfig, keys};
use strata_core::{Epoch, Key, Value};
use strata_director::{Database, EmbeddedCluster, EmbeddedConfig, RecoveryReport};

fn config(logs: usize) -> EmbeddedConfig {
    EmbeddedConfig {
        logs,
        storage: 2,
        resolvers: 2,
        proxies: 2,
        ..EmbeddedConfig::default()
    }
}

async fn recover(dir: &Path, logs: usize) -> (EmbeddedCluster, RecoveryReport) {
    EmbeddedCluster::start_with_report(dir, config(logs))
        .await
        .expect("recovery succeeds")
}

/// The system keys as stored: the monolithic value and the decomposed pairs.
async fn stored(db: &Database) -> (SystemConfig, Vec<(Key, Value)>) {
    let tx = db.begin();
    let mono = tx
        .snapshot_get(&keys::config())
        .await
        .unwrap()
        .expect("monolithic key");
    let mut pairs = Vec::new();
    for range in [keys::cluster_range(), keys::layout_range()] {
        pairs.extend(tx.snapshot_get_range(&range, 10_000, false).await.unwrap());
    }
    let last = keys::recovery_last_completed();
    pairs.push((
        last.clone(),
        tx.snapshot_get(&last)
            .await
            .unwrap()
            .expect("last completed"),
    ));
    (SystemConfig::from_monolithic(&mono).unwrap(), pairs)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn first_recovery_writes_every_key_and_both_views_agree() {
    let dir = tempfile::tempdir().unwrap();
    let (cluster, report) = recover(dir.path(), 3).await;
    assert_eq!(report.epoch, Epoch(1));
    assert_eq!(cluster.epoch(), Epoch(1));
    let (mono, pairs) = stored(&cluster.database()).await;
    assert_eq!(mono, report.config);
    assert_eq!(SystemConfig::from_decomposed(pairs.clone()).unwrap(), mono);
    // Exactly the keys the report lists, no more.
    let names: Vec<String> = pairs
        .iter()
        .map(|(k, _)| strata_core::printable(k))
        .collect();
    assert_eq!(names, report.decomposed_keys);
    assert_eq!(mono.layout.logs.len(), 3);
    assert_eq!(mono.last_completed.epoch, Epoch(1));
    assert!(report.system_commit_version > report.recovery_version);
    let phases: Vec<&str> = report.phases.iter().map(|p| p.phase).collect();
    assert_eq!(phases.last(), Some(&"persistence_phase"));
    assert_eq!(phases.first(), Some(&"check_data_directory"));
    assert_eq!(phases.len(), 10);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_next_epoch_takes_the_configuration_from_the_monolithic_key_and_keeps_data() {
    let dir = tempfile::tempdir().unwrap();
    let (cluster, _) = recover(dir.path(), 2).await;
    let db = cluster.database();
    // An operator changes a parameter in the stored configuration, and a user writes data.
    let (mut mono, _) = stored(&db).await;
    mono.cluster
        .parameters
        .insert("commit_batch_ms".into(), "7".into());
    let value = mono.monolithic_value().unwrap();
    db.run(|tx| {
        let value = value.clone();
        async move {
            tx.set(keys::config(), value);
            tx.set("user/1".into(), "kept".into());
            Ok(())
        }
    })
    .await
    .unwrap();
    cluster.stop().await;

    let (cluster, report) = recover(dir.path(), 2).await;
    assert_eq!(report.epoch, Epoch(2));
    let db = cluster.database();
    let (mono, pairs) = stored(&db).await;
    assert_eq!(mono.layout.epoch, Epoch(2));
    assert_eq!(
        mono.cluster
            .parameters
            .get("commit_batch_ms")
            .map(String::as_str),
        Some("7"),
        "the new coordinator read the configuration of epoch 1 from the monolithic key"
    );
    assert_eq!(SystemConfig::from_decomposed(pairs).unwrap(), mono);
    let tx = db.begin();
    assert_eq!(
        tx.snapshot_get(&"user/1".into()).await.unwrap(),
        Some(Bytes::from_static(b"kept"))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_smaller_layout_leaves_no_entry_of_the_larger_one() {
    let dir = tempfile::tempdir().unwrap();
    let (cluster, _) = recover(dir.path(), 3).await;
    cluster.stop().await;
    let (cluster, report) = recover(dir.path(), 2).await;
    let tx = cluster.database().begin();
    let logs = tx
        .snapshot_get_range(
            &strata_core::KeyRange::prefix(Bytes::from_static(b"\xff/system/layout/logs/"))
                .unwrap(),
            100,
            false,
        )
        .await
        .unwrap();
    assert_eq!(logs.len(), 2, "{:?}", report.decomposed_keys);
    assert_eq!(report.config.layout.logs.len(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dump_reads_what_is_stored_without_a_new_epoch() {
    let dir = tempfile::tempdir().unwrap();
    let (cluster, report) = recover(dir.path(), 2).await;
    cluster.stop().await;
    let dump = strata_director::dump(dir.path(), b"\xff/system/")
        .await
        .unwrap();
    assert_eq!(dump.state.epoch, Epoch(1), "dump started no epoch");
    assert!(dump.version >= report.system_commit_version);
    let keys: Vec<&str> = dump.entries.iter().map(|(k, _)| k.as_str()).collect();
    assert!(keys.contains(&"\\xff/system/config"));
    for k in &report.decomposed_keys {
        assert!(keys.contains(&k.as_str()), "{k} missing from the dump");
    }
    // And the next recovery still takes epoch 2.
    let (_, again) = recover(dir.path(), 2).await;
    assert_eq!(again.epoch, Epoch(2));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logs_no_generation_refers_to_are_removed() {
    let dir = tempfile::tempdir().unwrap();
    let (cluster, _) = recover(dir.path(), 2).await;
    cluster.stop().await;
    // As if an attempt of epoch 1 had crashed after recruiting a log, before recording it (an
    // attempt claims its epoch in the coordinated state first, so its logs are never of an
    // epoch newer than the state's).
    let stray = dir.path().join("logs").join("1-7");
    std::fs::create_dir_all(&stray).unwrap();
    std::fs::write(stray.join("00000000000000000000.seg"), b"partial").unwrap();
    let (_, report) = recover(dir.path(), 2).await;
    assert!(!stray.exists());
    let mut left: Vec<String> = std::fs::read_dir(dir.path().join("logs"))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    left.sort();
    assert_eq!(left, vec!["2-0", "2-1"], "{report:?}");
}

/// Storage keeps its last MVCC window in memory only, so a recovery makes it re-apply that
/// history from the new logs. Recovery must wait for it (with its own bound) rather than let
/// the persistence phase's reads give up after a read's short wait.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recovery_waits_for_storage_to_reapply_its_window() {
    let dir = tempfile::tempdir().unwrap();
    let impatient = EmbeddedConfig {
        storage_config: strata_storage_config(),
        ..config(1)
    };
    let (cluster, _) = EmbeddedCluster::start_with_report(dir.path(), impatient)
        .await
        .unwrap();
    let db = cluster.database();
    let writers: Vec<_> = (0..32u64)
        .map(|w| {
            let db = db.clone();
            tokio::spawn(async move {
                for n in 0..100u64 {
                    db.run(|tx| async move {
                        tx.set(
                            Bytes::from(format!("w{w}/{n}")),
                            Bytes::from(vec![1u8; 500]),
                        );
                        Ok(())
                    })
                    .await
                    .unwrap();
                }
            })
        })
        .collect();
    for w in writers {
        w.await.unwrap();
    }
    drop(db);
    cluster.stop().await;

    let (cluster, report) = EmbeddedCluster::start_with_report(dir.path(), impatient)
        .await
        .expect("recovery waits for storage to catch up");
    assert_eq!(report.epoch, Epoch(2));
    let tx = cluster.database().begin();
    assert!(tx.snapshot_get(&"w31/99".into()).await.unwrap().is_some());
}

/// Reads that wait only 1 ms for a version: far less than re-applying a history takes.
fn strata_storage_config() -> strata_storage::StorageConfig {
    strata_storage::StorageConfig {
        read_wait: std::time::Duration::from_millis(1),
        ..strata_storage::StorageConfig::default()
    }
}

/// A store whose first swaps fail as `Unavailable`, as an etcd store's does when etcd changes
/// leader under it or answers late.
struct FirstSwapsUnavailable {
    inner: strata_director::FileStateStore,
    failures: std::sync::atomic::AtomicU32,
}

impl strata_director::StateStore for FirstSwapsUnavailable {
    fn read(&self) -> strata_core::Result<Option<strata_director::CoordinatedState>> {
        self.inner.read()
    }

    fn compare_and_swap(
        &self,
        expected: u64,
        new: strata_director::CoordinatedState,
    ) -> strata_core::Result<strata_director::CoordinatedState> {
        let left = self.failures.load(std::sync::atomic::Ordering::SeqCst);
        if left > 0 {
            self.failures
                .store(left - 1, std::sync::atomic::Ordering::SeqCst);
            return Err(strata_core::Error::new(
                strata_core::Stage::Coordinator,
                strata_core::ErrorKind::Unavailable("no answer within 5 s".into()),
            ));
        }
        self.inner.compare_and_swap(expected, new)
    }
}

/// A swap of the state that fails as unavailable (the store's service busy, not a directory
/// held by another process) fails one attempt; the next epoch's attempt recovers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unavailable_state_store_fails_an_attempt_not_the_recovery() {
    let dir = tempfile::tempdir().unwrap();
    // First at the claim of a new cluster, then at the claim and at the write of the state of
    // an existing one.
    for failures in [1, 1, 2] {
        let store = FirstSwapsUnavailable {
            inner: strata_director::FileStateStore::new(dir.path()),
            failures: std::sync::atomic::AtomicU32::new(failures),
        };
        let (cluster, _) = EmbeddedCluster::start_with_store(dir.path(), config(1), &store)
            .await
            .unwrap();
        cluster.stop().await;
    }
}
