//! A data directory that lost or damaged a log, or a layout that can never work: recovery
//! fails at once with an error naming what is wrong, the coordinator does not burn epochs on
//! it, and nothing is read as an empty database.

// Test helpers may unwrap: a panic there is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used, unreachable_pub)]

mod common;

use std::path::Path;
use std::process::Command;

use strata_core::{Epoch, ErrorKind};
use strata_director::{EmbeddedCluster, EmbeddedConfig, FileStateStore, StateStore};

fn strata() -> Command {
    Command::new(env!("CARGO_BIN_EXE_strata"))
}

fn two_logs() -> EmbeddedConfig {
    EmbeddedConfig {
        logs: 2,
        ..EmbeddedConfig::default()
    }
}

/// A directory recovered with two logs, holding 50 committed keys; returns the directory of
/// each log as the coordinated state names it.
async fn with_data(dir: &Path) -> Vec<String> {
    let cluster = EmbeddedCluster::start(dir, two_logs()).await.unwrap();
    let db = cluster.database();
    for i in 0..50 {
        db.run(|tx| async move {
            tx.set(format!("key/{i:03}").into(), "v".into());
            Ok(())
        })
        .await
        .unwrap();
    }
    cluster.stop().await;
    let state = FileStateStore::new(dir).read().unwrap().unwrap();
    state.logs.iter().map(|l| l.dir.clone()).collect()
}

/// Recovery fails with `Corruption` mentioning `needle` at once, leaving every file as it was.
async fn refused(dir: &Path, needle: &str) {
    let before = common::snapshot(dir);
    let err = EmbeddedCluster::start(dir, two_logs())
        .await
        .expect_err("recovery must refuse a directory that lost a log");
    assert!(matches!(err.kind, ErrorKind::Corruption(_)), "{err}");
    assert!(err.to_string().contains(needle), "{needle} not in: {err}");
    common::assert_unchanged(&before, &common::snapshot(dir), needle);

    // The command says so too, on one line, and exits 1.
    let out = strata()
        .args(["recover", "--data-dir", dir.to_str().unwrap()])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains(needle), "{stderr}");
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(
        !String::from_utf8_lossy(&out.stdout).contains("recovered"),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    common::assert_unchanged(&before, &common::snapshot(dir), needle);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_log_directory_is_an_error_not_an_empty_log() {
    let dir = tempfile::tempdir().unwrap();
    let logs = with_data(dir.path()).await;
    std::fs::remove_dir_all(dir.path().join(&logs[1])).unwrap();
    refused(dir.path(), &logs[1]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_log_directory_missing_is_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let logs = with_data(dir.path()).await;
    for l in &logs {
        std::fs::remove_dir_all(dir.path().join(l)).unwrap();
    }
    refused(dir.path(), &logs[0]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_log_directory_without_segments_is_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let logs = with_data(dir.path()).await;
    for entry in std::fs::read_dir(dir.path().join(&logs[0])).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "seg") {
            std::fs::remove_file(path).unwrap();
        }
    }
    refused(dir.path(), "segment is missing").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_damaged_log_segment_is_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let logs = with_data(dir.path()).await;
    let segment = std::fs::read_dir(dir.path().join(&logs[0]))
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.extension().is_some_and(|e| e == "seg"))
        .unwrap();
    // The segment header's magic: damage no torn write can explain.
    let mut bytes = std::fs::read(&segment).unwrap();
    bytes[0] ^= 0xff;
    std::fs::write(&segment, bytes).unwrap();
    refused(dir.path(), segment.file_name().unwrap().to_str().unwrap()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_layout_writes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let fresh = dir.path().join("fresh");
    let too_many = EmbeddedConfig {
        storage: 300,
        ..EmbeddedConfig::default()
    };
    let err = EmbeddedCluster::start(&fresh, too_many).await.unwrap_err();
    assert!(matches!(err.kind, ErrorKind::InvalidRequest(_)), "{err}");
    assert!(!fresh.exists(), "nothing is created for a refused layout");
    // The directory still recovers with a layout that works.
    EmbeddedCluster::start(&fresh, EmbeddedConfig::default())
        .await
        .unwrap()
        .stop()
        .await;

    // Re-sharding an existing directory is refused before the coordinated state is touched.
    let state = std::fs::read(fresh.join("coordinated.json")).unwrap();
    let two_storage = EmbeddedConfig {
        storage: 2,
        ..EmbeddedConfig::default()
    };
    let err = EmbeddedCluster::start(&fresh, two_storage)
        .await
        .unwrap_err();
    assert!(err.to_string().contains("re-sharding"), "{err}");
    assert_eq!(
        std::fs::read(fresh.join("coordinated.json")).unwrap(),
        state
    );
}

#[test]
fn counts_out_of_range_are_usage_errors() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("d");
    let huge = "18446744073709551615";
    for args in [
        &["recover", "--logs", "0"][..],
        &["recover", "--logs", "17"][..],
        &["recover", "--storage", "300"][..],
        &["recover", "--resolvers", "0"][..],
        &["recover", "--resolvers", huge][..],
        &["recover", "--proxies", huge][..],
        &["recover", "--proxies", "100000"][..],
        &["serve", "--logs", huge][..],
        &["bench", "--transactions", huge][..],
        &["bench", "--value-bytes", huge][..],
        &["bench", "--value-bytes", "100001"][..],
        &["bench", "--clients", "0"][..],
        &["bench", "--keys-per-transaction", "0"][..],
        &["workload", "cycle", "--keys", "4294967296"][..],
        &["workload", "cycle", "--clients", "0"][..],
        &["workload", "cycle", "--transactions", huge][..],
    ] {
        let out = strata()
            .args(args)
            .args(["--data-dir", data.to_str().unwrap()])
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(2), "{args:?}");
        let stderr = String::from_utf8_lossy(&out.stderr);
        let flag = args[args.len() - 2];
        assert!(stderr.contains(flag), "{args:?}: {stderr}");
        assert!(!data.exists(), "{args:?} created the directory");
    }
}

#[test]
fn every_command_uses_the_layout_the_directory_was_recovered_with() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().to_str().unwrap();
    let run = |args: &[&str]| {
        let out = strata()
            .args(args)
            .args(["--data-dir", data])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    run(&[
        "recover",
        "--logs",
        "2",
        "--storage",
        "2",
        "--resolvers",
        "2",
    ]);
    run(&["workload", "cycle", "--keys", "20", "--transactions", "200"]);
    run(&["workload", "check"]);
    run(&["bench", "--transactions", "200", "--clients", "4"]);
    let dumped = run(&["dump"]);
    assert!(dumped.contains("2 log(s), 2 storage server(s)"), "{dumped}");
    let recovered = run(&["recover", "--json"]);
    assert!(recovered.contains("\"epoch\""), "{recovered}");
    let state = FileStateStore::new(dir.path()).read().unwrap().unwrap();
    assert_eq!((state.logs.len(), state.storage), (2, 2));
    assert_eq!((state.resolvers, state.proxies), (Some(2), Some(1)));
}

/// A coordinated-state store that lets another coordinator win right after this one read
/// the state: the winner records a newer epoch and removes the logs it replaced.
struct OvertakenAfterRead {
    inner: FileStateStore,
    dir: std::path::PathBuf,
    overtaken: std::sync::atomic::AtomicBool,
}

impl StateStore for OvertakenAfterRead {
    fn read(&self) -> strata_core::Result<Option<strata_director::CoordinatedState>> {
        let read = self.inner.read()?;
        if let Some(state) = &read
            && !self
                .overtaken
                .swap(true, std::sync::atomic::Ordering::SeqCst)
        {
            for log in &state.logs {
                std::fs::remove_dir_all(self.dir.join(&log.dir)).unwrap();
            }
            let winner = strata_director::CoordinatedState {
                epoch: Epoch(state.epoch.0 + 1),
                logs: Vec::new(),
                ..state.clone()
            };
            self.inner
                .compare_and_swap(state.generation, winner)
                .unwrap();
        }
        Ok(read)
    }

    fn compare_and_swap(
        &self,
        expected: u64,
        new: strata_director::CoordinatedState,
    ) -> strata_core::Result<strata_director::CoordinatedState> {
        self.inner.compare_and_swap(expected, new)
    }
}

/// Logs removed by a coordinator that took over are not damage: the attempt is fenced, and
/// the coordinator goes on to the next epoch instead of stopping with a false corruption.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logs_removed_by_a_newer_coordinator_fence_the_attempt() {
    let dir = tempfile::tempdir().unwrap();
    with_data(dir.path()).await;
    let store = OvertakenAfterRead {
        inner: FileStateStore::new(dir.path()),
        dir: dir.path().to_owned(),
        overtaken: std::sync::atomic::AtomicBool::new(false),
    };
    let env = strata_director::RecoveryEnv::default();
    let err = strata_director::recovery::recover(dir.path(), two_logs(), &store, &env)
        .await
        .expect_err("the logs are gone");
    assert!(!err.is_unrecoverable(), "{err}");
    assert!(err.is_fenced(), "{err}");
}

/// The newest segment of a log emptied (a lost file, not a torn write: the log's manifest named
/// it before any record went in): an error naming it, not a log that silently ends earlier.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_emptied_newest_segment_is_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let logs = with_data(dir.path()).await;
    let newest = std::fs::read_dir(dir.path().join(&logs[1]))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "seg"))
        .max()
        .unwrap();
    std::fs::write(&newest, b"").unwrap();
    refused(dir.path(), newest.file_name().unwrap().to_str().unwrap()).await;
}
