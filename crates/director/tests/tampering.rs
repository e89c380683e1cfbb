//! Found in review: ways a changed or failing directory once lost acknowledged data, wedged a
//! healthy directory, recovered "successfully" over a changed directory, or had a refused
//! recovery or `strata check` change the directory. Each test states the behaviour the design
//! promises, and failed before its fix: a storage count edited down and swapped storage files
//! (each file now records its shard, and stray files are findings), a refused recovery
//! rewriting storage files (they are read through a read-only overlay), a failed directory sync
//! after the state was written deleting the logs it names (cleanup asks the store), and a
//! damaged last record "repaired" away (a log must hold what storage has made durable).

// Test helpers may unwrap: a panic there is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used, unreachable_pub)]

mod common;

use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use strata_core::{Error, ErrorKind, Result, Stage};
use strata_director::{
    CoordinatedState, EmbeddedCluster, EmbeddedConfig, FileStateStore, StateStore,
};

/// Four storage servers (split at 0x40, 0x80, 0xc0: the ring's keys, `ring/...` = 0x72..,
/// live on storage server 1), one log, small windows so that storage is durable and the log
/// popped within milliseconds. Runs the Cycle workload for `secs` and returns the acks.
async fn four_storage_with_data(dir: &Path, secs: f64) -> (EmbeddedConfig, Vec<(u64, u64)>) {
    let config = common::small_windows(1, 4, 1);
    let cluster = EmbeddedCluster::start(dir, config).await.unwrap();
    let acked =
        common::cycle_for(&cluster.database(), 20, 4, 0, Duration::from_secs_f64(secs)).await;
    // Let storage become durable and the log be popped past the start of the run.
    tokio::time::sleep(Duration::from_millis(300)).await;
    cluster.stop().await;
    (config, acked)
}

use common::edit_state;
use strata_director::workload::cycle as workload;

/// Recovery either refuses (Corruption) or recovers with the ring whole and every
/// acknowledged transaction present; `strata check` must not call the directory consistent
/// when recovery would lose data.
async fn refused_or_everything_kept(dir: &Path, config: EmbeddedConfig, acked: &[(u64, u64)]) {
    let report = strata_director::verify(dir).await.unwrap();
    match EmbeddedCluster::start(dir, config).await {
        Err(e) => {
            assert!(matches!(e.kind, ErrorKind::Corruption(_)), "{e}");
        }
        Ok(cluster) => {
            let db = cluster.database();
            let ring = workload::check_ring(&db).await;
            let acks = workload::check_acks(&db, acked).await;
            cluster.stop().await;
            assert!(
                ring.is_ok() && acks.is_ok(),
                "recovered over a changed directory and lost data: ring {ring:?}, acks {acks:?}; \
                 `strata check` findings: {:?}",
                report.findings
            );
        }
    }
}

/// (A) `"storage": 4` edited to 2 in coordinated.json: nothing cross-checks the storage count
/// against the storage files present, so storage/2.redb and 3.redb are ignored, 0.redb is
/// served as the shard [0x00, 0x80), and the ring (durable only in 1.redb) is gone. `strata
/// check` says "consistent" and `strata recover` exits 0.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn storage_count_edited_down_is_not_recovered_without_the_data() {
    let dir = tempfile::tempdir().unwrap();
    let (config, acked) = four_storage_with_data(dir.path(), 1.5).await;
    edit_state(dir.path(), |s| s["storage"] = 2.into());
    let config = EmbeddedConfig {
        storage: 2,
        ..config
    };
    refused_or_everything_kept(dir.path(), config, &acked).await;
}

/// (C) storage/1.redb and storage/2.redb swapped (renamed): a storage file records neither
/// the shard it holds nor the cluster it belongs to, so each is served as the other's shard;
/// the ring is lost and recovery exits 0. (A storage file copied in from another data
/// directory is accepted the same way whenever its durable version falls within the range the
/// logs still hold.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn swapped_storage_files_are_not_recovered_without_the_data() {
    let dir = tempfile::tempdir().unwrap();
    let (config, acked) = four_storage_with_data(dir.path(), 1.5).await;
    let storage = dir.path().join("storage");
    std::fs::rename(storage.join("1.redb"), storage.join("x")).unwrap();
    std::fs::rename(storage.join("2.redb"), storage.join("1.redb")).unwrap();
    std::fs::rename(storage.join("x"), storage.join("2.redb")).unwrap();
    refused_or_everything_kept(dir.path(), config, &acked).await;
}

/// (B) A refused recovery changes files: phase 1 reads each storage file's durable version
/// with `durable_version_at` on the real file, which opens it read-write with redb's
/// integrity check (and its commit); storage/0..2.redb are rewritten before 3.redb is found
/// damaged and the recovery refused. (`strata check` copies the files first, for exactly this
/// reason; recovery does not.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_recovery_refused_for_a_damaged_storage_file_changes_no_other_file() {
    let dir = tempfile::tempdir().unwrap();
    let (config, _) = four_storage_with_data(dir.path(), 0.5).await;
    let path = dir.path().join("storage").join("3.redb");
    let mut bytes = std::fs::read(&path).unwrap();
    // Damage every page but the first (the header): the newest commit's tree is somewhere.
    for page in 1..bytes.len() / 4096 {
        for b in &mut bytes[page * 4096 + 100..page * 4096 + 164] {
            *b ^= 0xff;
        }
    }
    std::fs::write(&path, &bytes).unwrap();
    let before = common::snapshot(dir.path());
    let err = EmbeddedCluster::start(dir.path(), config)
        .await
        .expect_err("a damaged storage file is refused");
    assert!(matches!(err.kind, ErrorKind::Corruption(_)), "{err}");
    assert!(err.to_string().contains("3.redb"), "{err}");
    common::assert_unchanged(&before, &common::snapshot(dir.path()), "refused recovery");
}

/// A coordinated state store that behaves like `FileStateStore` whose directory fsync fails
/// after the rename on its `fail_on`-th compare-and-swap: the new state is in place (and
/// read back by everyone), yet the call returns an I/O error.
struct DirSyncFails {
    inner: FileStateStore,
    calls: AtomicUsize,
    fail_on: usize,
}

impl StateStore for DirSyncFails {
    fn read(&self) -> Result<Option<CoordinatedState>> {
        self.inner.read()
    }

    fn compare_and_swap(&self, expected: u64, new: CoordinatedState) -> Result<CoordinatedState> {
        let written = self.inner.compare_and_swap(expected, new)?;
        if self.calls.fetch_add(1, Ordering::SeqCst) + 1 == self.fail_on {
            return Err(Error::io(
                Stage::Coordinator,
                std::io::Error::other("fsync of the data directory failed (injected)"),
            ));
        }
        Ok(written)
    }
}

/// (D) WEDGE: `write_coordinated_state` gets an error from the compare-and-swap after the new
/// state was renamed into place (a failed directory fsync). `recorded` is still false, so
/// `recover` calls `remove_unrecorded`, which deletes the new logs that coordinated.json now
/// names. Every later recovery fails: "log directory logs/N-0 is missing". (With the fsync of
/// `logs/` failing instead, after `write_state` deleted the old logs, both generations are
/// deleted and the history above the storage durable version is gone: see the report's
/// strace reproduction.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_directory_sync_after_the_state_is_written_does_not_delete_its_logs() {
    let dir = tempfile::tempdir().unwrap();
    let config = common::small_windows(1, 1, 1);
    let cluster = EmbeddedCluster::start(dir.path(), config).await.unwrap();
    let acked = common::cycle_for(&cluster.database(), 20, 4, 0, Duration::from_millis(500)).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    cluster.stop().await;

    // claim_epoch is the first compare-and-swap, write_state the second.
    let store = DirSyncFails {
        inner: FileStateStore::new(dir.path()),
        calls: AtomicUsize::new(0),
        fail_on: 2,
    };
    let first = EmbeddedCluster::start_with_store(dir.path(), config, &store).await;
    if let Ok((cluster, _)) = first {
        cluster.stop().await;
    }
    // The disk is healthy again: the directory must recover with everything in it.
    let cluster = EmbeddedCluster::start(dir.path(), config)
        .await
        .expect("a healthy directory recovers after a failed fsync");
    let db = cluster.database();
    workload::check_ring(&db).await.unwrap();
    workload::check_acks(&db, &acked).await.unwrap();
    cluster.stop().await;
}

/// (E) A refused recovery, and `strata check`, change a log: phase 1 opens the logs (which
/// truncates or zeroes whatever looks like a torn last group commit) *before* it compares the
/// storage durable versions with them. When a storage file is durable above what the log
/// holds after that "repair", the repair was not of a torn write: the storage file proves the
/// version was committed, i.e. the log's last group was damaged, not torn. The refusal then
/// names the storage file as holding "versions that were never committed", and the log's only
/// copy of that acknowledged commit has been destroyed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn damage_to_the_last_record_is_not_repaired_by_a_refused_recovery_or_check() {
    let dir = tempfile::tempdir().unwrap();
    let config = common::small_windows(1, 1, 1);
    let cluster = EmbeddedCluster::start(dir.path(), config).await.unwrap();
    let db = cluster.database();
    // Idle for many windows, then one commit alone in its group, then idle again so that
    // storage makes durable a version between the previous commit and it.
    tokio::time::sleep(Duration::from_millis(300)).await;
    db.run(|tx| async move {
        tx.set("last".into(), "acknowledged".into());
        Ok(())
    })
    .await
    .unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let log_dir = common::first_log_dir(dir.path());
    cluster.stop().await;

    // Flip the last non-zero byte of the newest segment: inside the last record.
    let mut segments: Vec<_> = std::fs::read_dir(&log_dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "seg"))
        .collect();
    segments.sort();
    let newest = segments.last().unwrap();
    let mut bytes = std::fs::read(newest).unwrap();
    let at = bytes.iter().rposition(|&b| b != 0).unwrap();
    bytes[at] ^= 0x01;
    std::fs::write(newest, &bytes).unwrap();

    let before = common::snapshot(dir.path());
    let report = strata_director::verify(dir.path()).await.unwrap();
    let after_check = common::snapshot(dir.path());
    eprintln!("strata check findings: {:?}", report.findings);
    let recovered = EmbeddedCluster::start(dir.path(), config).await;
    let after_recover = common::snapshot(dir.path());
    let refused = match recovered {
        Ok(cluster) => {
            cluster.stop().await;
            false
        }
        Err(e) => {
            eprintln!("recovery refused: {e}");
            true
        }
    };
    assert!(
        !report.findings.is_empty() && refused,
        "expected a refusal: {:?}",
        report.findings
    );
    common::assert_unchanged(&before, &after_check, "strata check");
    common::assert_unchanged(&before, &after_recover, "refused recovery");
}

/// `strata check` and a refused recovery read a log without writing it: a lost `manifest` is
/// not recreated by opening the log (only the first lock or push writes it), so the directory
/// is left exactly as it was found.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_does_not_recreate_a_lost_manifest() {
    let dir = tempfile::tempdir().unwrap();
    let config = common::small_windows(1, 1, 1);
    let cluster = EmbeddedCluster::start(dir.path(), config).await.unwrap();
    common::cycle_for(&cluster.database(), 20, 2, 0, Duration::from_millis(200)).await;
    let log_dir = common::first_log_dir(dir.path());
    cluster.stop().await;
    std::fs::remove_file(log_dir.join("manifest")).unwrap();
    let before = common::snapshot(dir.path());
    strata_director::verify(dir.path()).await.unwrap();
    common::assert_unchanged(&before, &common::snapshot(dir.path()), "strata check");
    // A recovery then goes ahead (a directory without a manifest is one written before
    // manifests existed) and the first lock writes it.
    EmbeddedCluster::start(dir.path(), config)
        .await
        .unwrap()
        .stop()
        .await;
}
