//! A recovery killed while it creates a storage server's file must not wedge the directory.
//!
//! redb creates a database in place, in steps (the file, its length, a header, then the magic
//! number), so a SIGKILL in between left an empty or zero-filled `storage/<n>.redb` that every
//! later recovery refused as an I/O error, burning its epochs (found by review with strace
//! killing `strata recover` at each system call). A storage file is now created under a
//! temporary name and renamed into place once complete: a kill leaves only the temporary file,
//! which the next open removes.

// Test helpers may unwrap: a panic there is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used, unreachable_pub)]

use std::path::Path;

use strata_core::{Epoch, Version};
use strata_director::{
    CoordinatedState, EmbeddedCluster, EmbeddedConfig, FileStateStore, StateStore,
};

/// The directory as a first recovery leaves it when killed while creating its storage file:
/// the epoch claimed (no logs yet), `storage/` created, and the file being created holding
/// `contents`.
fn killed_while_creating_storage(dir: &Path, contents: &[u8]) {
    FileStateStore::new(dir)
        .compare_and_swap(
            0,
            CoordinatedState {
                format: 1,
                generation: 0,
                epoch: Epoch(1),
                logs: Vec::new(),
                storage: 1,
                recovery_version: Version::ZERO,
                resolvers: None,
                proxies: None,
                served_at: None,
                home: None,
                token_digest: None,
                storage_at: Vec::new(),
            },
        )
        .unwrap();
    std::fs::create_dir_all(dir.join("storage")).unwrap();
    std::fs::write(dir.join("storage").join("0.redb.creating"), contents).unwrap();
}

async fn recovers(dir: &Path) {
    let cluster = EmbeddedCluster::start(dir, EmbeddedConfig::default())
        .await
        .unwrap_or_else(|e| panic!("the directory is wedged: {e}"));
    let db = cluster.database();
    db.run(|tx| async move {
        tx.set("k".into(), "v".into());
        Ok(())
    })
    .await
    .unwrap();
    cluster.stop().await;
    assert!(!dir.join("storage").join("0.redb.creating").exists());
    // And the next recovery finds what was committed.
    let cluster = EmbeddedCluster::start(dir, EmbeddedConfig::default())
        .await
        .unwrap();
    let tx = cluster.database().begin();
    assert_eq!(tx.get(&"k".into()).await.unwrap(), Some("v".into()));
    cluster.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_empty_storage_file_left_by_a_killed_first_recovery_does_not_wedge_recovery() {
    let dir = tempfile::tempdir().unwrap();
    killed_while_creating_storage(dir.path(), &[]);
    recovers(dir.path()).await;
}

/// Killed after redb set the file's length, before its header with the magic number: zeros.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_zero_filled_storage_file_left_by_a_killed_first_recovery_does_not_wedge_recovery() {
    let dir = tempfile::tempdir().unwrap();
    killed_while_creating_storage(dir.path(), &vec![0u8; 73_728]);
    recovers(dir.path()).await;
}

/// A storage file is never seen half made: after a recovery only complete files are in place.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn storage_files_appear_complete_or_not_at_all() {
    let dir = tempfile::tempdir().unwrap();
    let config = EmbeddedConfig {
        storage: 3,
        ..EmbeddedConfig::default()
    };
    EmbeddedCluster::start(dir.path(), config)
        .await
        .unwrap()
        .stop()
        .await;
    let mut names: Vec<String> = std::fs::read_dir(dir.path().join("storage"))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    names.sort();
    assert_eq!(names, ["0.redb", "1.redb", "2.redb"]);
    for n in &names {
        let path = dir.path().join("storage").join(n);
        assert_eq!(
            strata_storage::durable_version_at(&path).unwrap(),
            Version::ZERO
        );
    }
}
