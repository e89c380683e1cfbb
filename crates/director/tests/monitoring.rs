//! Monitoring: while a cluster is served, a failing stage ends the epoch and the coordinator
//! recovers under the next one, and clients carry on against the new epoch.

// Test helpers may unwrap: a panic there is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used, unreachable_pub)]

mod common;

use std::time::Duration;

use strata_core::Epoch;
use strata_director::faults::{Fault, FaultPoint, Faults};
use strata_director::{EmbeddedConfig, Serving};
use tokio::sync::watch;

/// Waits (bounded) until `serving` shows an epoch at least `epoch`.
async fn wait_for(
    serving: &mut watch::Receiver<Serving>,
    epoch: Epoch,
) -> strata_director::Database {
    let seen = tokio::time::timeout(
        Duration::from_secs(10),
        serving.wait_for(|s| s.as_ref().is_some_and(|(e, _)| *e >= epoch)),
    )
    .await
    .expect("the epoch came in time")
    .unwrap();
    seen.as_ref().unwrap().1.clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_stage_ends_the_epoch_and_the_next_one_serves() {
    let dir = tempfile::tempdir().unwrap();
    let faults = Faults::new();
    let config = EmbeddedConfig {
        monitor_interval: Duration::from_millis(20),
        ..EmbeddedConfig::default()
    };
    let (mut watching, stop, server) = common::served(dir.path(), config, faults.clone());

    let db = wait_for(&mut watching, Epoch(1)).await;
    db.run(|tx| async move {
        tx.set("before".into(), "1".into());
        Ok(())
    })
    .await
    .unwrap();

    // The sequencer fails the next probe: the director must end epoch 1.
    faults.arm(FaultPoint::ReadVersion);
    let db = wait_for(&mut watching, Epoch(2)).await;
    let tx = db.begin();
    assert_eq!(tx.get(&"before".into()).await.unwrap(), Some("1".into()));
    db.run(|tx| async move {
        tx.set("after".into(), "2".into());
        Ok(())
    })
    .await
    .unwrap();

    stop.send(()).unwrap();
    server.await.unwrap().unwrap();
}

/// A probe that never answers is a failed stage too: monitoring gives each probe a bound
/// ([`EmbeddedConfig::probe_timeout`]), so a hung sequencer or storage server ends the epoch
/// instead of wedging monitoring for good (found by review of the simulation, whose hangs
/// went unnoticed until the next crash).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_probe_that_never_answers_ends_the_epoch() {
    for point in [FaultPoint::ReadVersion, FaultPoint::StorageStop] {
        let dir = tempfile::tempdir().unwrap();
        let faults = Faults::new();
        let config = EmbeddedConfig {
            monitor_interval: Duration::from_millis(20),
            ..EmbeddedConfig::default()
        };
        let (mut watching, stop, server) = common::served(dir.path(), config, faults.clone());
        wait_for(&mut watching, Epoch(1)).await;
        faults.arm_at(point, 1, Fault::Hang);
        wait_for(&mut watching, Epoch(2)).await;
        stop.send(()).unwrap();
        server.await.unwrap().unwrap();
    }
}
