//! A fault at each stage during the persistence phase's system transaction: the director
//! fails naming that stage, the next attempt runs under the next epoch and succeeds (the fault
//! fires once), nothing of the failed attempt is readable afterwards, and the proxy of the
//! failed epoch cannot commit.

// Test helpers may unwrap: a panic there is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used, unreachable_pub)]

mod common;

use bytes::Bytes;
use strata_core::system::{SystemConfig, keys};
use strata_core::{Epoch, ErrorKind, KeyRange, Mutation, Stage, Transaction};
use strata_director::EmbeddedConfig;
use strata_director::faults::{Fault, FaultPoint};
use strata_director::recovery::recover;

fn config() -> EmbeddedConfig {
    EmbeddedConfig {
        logs: 2,
        storage: 2,
        resolvers: 2,
        proxies: 1,
        ..EmbeddedConfig::default()
    }
}

async fn fault_at(point: FaultPoint, stage: Stage) {
    let dir = tempfile::tempdir().unwrap();
    let (store, faults, env) = common::with_faults(dir.path());

    let (first, _) = recover(dir.path(), config(), &store, &env).await.unwrap();
    first.stop().await;

    faults.arm(point);
    let err = recover(dir.path(), config(), &store, &env)
        .await
        .expect_err("the armed fault fails the persistence phase");
    assert_eq!(err.stage, stage, "{point:?}: {err}");
    assert!(!faults.is_armed(point), "{point:?} fired");

    let (cluster, report) = recover(dir.path(), config(), &store, &env).await.unwrap();
    assert_eq!(report.epoch, Epoch(3), "{point:?}");

    // Nothing of epoch 2 is readable: every system key is epoch 3's.
    let db = cluster.database();
    let tx = db.begin();
    let mono = tx.snapshot_get(&keys::config()).await.unwrap().unwrap();
    let mono = SystemConfig::from_monolithic(&mono).unwrap();
    assert_eq!(mono.layout.epoch, Epoch(3));
    assert_eq!(mono.last_completed.epoch, Epoch(3));
    let logs = tx
        .snapshot_get_range(
            &KeyRange::prefix(Bytes::from_static(b"\xff/system/layout/logs/")).unwrap(),
            100,
            false,
        )
        .await
        .unwrap();
    assert_eq!(logs.len(), 2);
    assert!(
        logs.iter()
            .all(|(k, _)| k.ends_with(b"/3000") || k.ends_with(b"/3001")),
        "{point:?}: {logs:?}"
    );

    // The proxy of epoch 2 cannot commit. Its logs were locked by epoch 3, so a batch that
    // reaches them is fenced; when epoch 2 failed inside its resolvers, its next batch cannot
    // even be resolved (the failed batch is missing from the version chain).
    // A failing sync also fails the replay into epoch 2's new logs (the log's writer syncs
    // those too), before any proxy of epoch 2 exists; every other fault point is reached only
    // by the system transaction.
    let Some(old) = faults.proxies().into_iter().find(|p| p.epoch() == Epoch(2)) else {
        assert_eq!(point, FaultPoint::LogSync, "the proxy of epoch 2");
        return;
    };
    let write = Transaction {
        read_version: None,
        read_conflicts: vec![],
        write_conflicts: vec![KeyRange::single("stale")],
        mutations: vec![Mutation::Set {
            key: "stale".into(),
            value: "epoch 2".into(),
        }],
    };
    // Refused one way or another: fenced by a log of epoch 3, its chain broken, its proxy
    // failed by the fault, or its logs closed once epoch 3 recorded its own.
    let err = old.commit(write.encode().unwrap()).await.unwrap_err();
    assert!(
        err.is_fenced()
            || matches!(
                err.kind,
                ErrorKind::OutOfOrder { .. } | ErrorKind::Unavailable(_)
            )
            || err.stage == stage,
        "{point:?}: {err}"
    );
    let later = db.begin();
    assert_eq!(later.snapshot_get(&"stale".into()).await.unwrap(), None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resolver_fault() {
    fault_at(FaultPoint::Resolve, Stage::Resolver).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sequencer_fault() {
    fault_at(FaultPoint::CommitVersion, Stage::Sequencer).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn commit_proxy_fault() {
    fault_at(FaultPoint::ProxyCommit, Stage::CommitProxy).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn log_push_fault() {
    fault_at(FaultPoint::LogPush, Stage::Log).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn log_fsync_fault() {
    fault_at(FaultPoint::LogSync, Stage::Log).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn storage_apply_fault() {
    fault_at(FaultPoint::StorageApply, Stage::Storage).await;
}

/// A stage that stops answering during the persistence phase: the phase's deadline ends the
/// epoch with a timeout naming that stage (the one the commit proxy's batch waits on), not the
/// director, and the next epoch recovers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hung_log_times_out_the_persistence_phase_naming_the_log() {
    hung_persistence_phase(FaultPoint::LogStall, Fault::Usual, Stage::Log).await;
}

/// A sequencer whose read version never answers during the persistence phase: the timeout
/// names the sequencer, so that recovery passes over a worker holding it, not the storage
/// servers the phase reads next (the read version is asked for at the first read).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hung_read_version_times_out_the_persistence_phase_naming_the_sequencer() {
    hung_persistence_phase(FaultPoint::ReadVersion, Fault::Hang, Stage::Sequencer).await;
}

/// Recovers once; then, with `fault` armed at `point`, the next recovery's persistence phase
/// must time out naming `stage`; the one after recovers epoch 3.
async fn hung_persistence_phase(point: FaultPoint, fault: Fault, stage: Stage) {
    let dir = tempfile::tempdir().unwrap();
    let (store, faults, env) = common::with_faults(dir.path());
    let impatient = EmbeddedConfig {
        persistence_deadline: std::time::Duration::from_millis(300),
        ..config()
    };
    let (first, _) = recover(dir.path(), impatient, &store, &env).await.unwrap();
    first.stop().await;

    faults.arm_at(point, 1, fault);
    let err = recover(dir.path(), impatient, &store, &env)
        .await
        .expect_err("the persistence phase timed out");
    assert_eq!(err.stage, stage, "{err}");
    assert!(matches!(err.kind, ErrorKind::Timeout { .. }), "{err}");

    let (cluster, report) = recover(dir.path(), impatient, &store, &env).await.unwrap();
    assert_eq!(report.epoch, Epoch(3));
    cluster.stop().await;
}

/// A disk whose sync stalls during the persistence phase, on the embedded default of one log
/// whose idle pushes write and sync on the thread that pushes: the phase's deadline still
/// fires, naming the log, though the system transaction is a lone commit whose sync would run
/// on the director's own task if the director committed it there. The next epoch recovers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_sync_times_out_the_persistence_phase() {
    let dir = tempfile::tempdir().unwrap();
    let (store, faults, env) = common::with_faults(dir.path());
    let mut one_log = EmbeddedConfig {
        persistence_deadline: std::time::Duration::from_millis(300),
        ..EmbeddedConfig::default()
    };
    assert_eq!(one_log.logs, 1);
    // Every idle push leads, whatever the runtime's other thread is doing.
    one_log.log.leaders = strata_tlog::Leaders::WhenLogIdle;

    // A new cluster has no history to replay: the first group the log syncs is the system
    // transaction's, and that sync stalls for far longer than the deadline.
    faults.arm_at(
        FaultPoint::LogSync,
        1,
        Fault::Delay(std::time::Duration::from_secs(2)),
    );
    let err = recover(dir.path(), one_log, &store, &env)
        .await
        .expect_err("the stalled sync times the persistence phase out");
    assert!(matches!(err.kind, ErrorKind::Timeout { .. }), "{err}");
    assert_eq!(err.stage, Stage::Log, "{err}");

    let (cluster, _) = recover(dir.path(), one_log, &store, &env).await.unwrap();
    let db = cluster.database();
    let tx = db.begin();
    tx.set("after".into(), "the stall".into());
    tx.commit().await.unwrap();
    cluster.stop().await;
}

/// A failed attempt cleans up what it created: the new logs of an epoch whose coordinated
/// state was never written are referred to by nothing, and are removed at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_attempt_removes_the_logs_it_created() {
    let dir = tempfile::tempdir().unwrap();
    let (store, faults, env) = common::with_faults(dir.path());
    let (first, _) = recover(dir.path(), config(), &store, &env).await.unwrap();
    first.stop().await;

    // The history of epoch 1 is replayed into epoch 2's new logs; their first sync fails.
    faults.arm(FaultPoint::LogSync);
    let err = recover(dir.path(), config(), &store, &env)
        .await
        .expect_err("the replay's sync fails");
    assert_eq!(err.stage, Stage::Log, "{err}");
    let mut logs: Vec<String> = std::fs::read_dir(dir.path().join("logs"))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    logs.sort();
    assert_eq!(logs, ["1-0", "1-1"], "only the logs the state names remain");

    let (cluster, report) = recover(dir.path(), config(), &store, &env).await.unwrap();
    assert_eq!(report.epoch, Epoch(3));
    cluster.stop().await;
}

/// A failed sync keeps its cause: the commit in its group, every later commit of the epoch and
/// the health check all say what the disk said, not a conflict or a bare "poisoned".
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_sync_is_named_by_every_later_error() {
    let dir = tempfile::tempdir().unwrap();
    let (store, faults, env) = common::with_faults(dir.path());
    let (cluster, _) = recover(dir.path(), config(), &store, &env).await.unwrap();
    let db = cluster.database();
    faults.arm(FaultPoint::LogSync);
    for i in 0..3 {
        let tx = db.begin();
        tx.set(format!("k{i}").into(), "v".into());
        let err = tx.commit().await.expect_err("the log failed");
        assert!(
            err.to_string().contains("injected fdatasync failure"),
            "commit {i}: {err}"
        );
    }
    let unhealthy = cluster.check_health().await.expect_err("a poisoned log");
    assert!(
        unhealthy.to_string().contains("injected fdatasync failure"),
        "{unhealthy}"
    );
    cluster.stop().await;
}

/// A system transaction whose batch failed at the log: the director names the log, not an
/// unknown outcome (whether it committed is the next recovery's to say), and the next
/// recovery goes through.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_system_transaction_is_named_by_the_stage_that_failed_it() {
    let dir = tempfile::tempdir().unwrap();
    let (store, faults, env) = common::with_faults(dir.path());
    // A new cluster has no history to replay: the first sync is the system transaction's.
    faults.arm(FaultPoint::LogSync);
    let err = recover(dir.path(), config(), &store, &env)
        .await
        .expect_err("the system transaction's sync fails");
    assert_eq!(err.stage, Stage::Log, "{err}");
    assert!(!matches!(err.kind, ErrorKind::CommitUnknown(_)), "{err}");
    let (cluster, report) = recover(dir.path(), config(), &store, &env).await.unwrap();
    assert!(report.epoch > Epoch(1), "{report:?}");
    cluster.stop().await;
}
