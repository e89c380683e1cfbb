//! Faults in the middle of an epoch, at every stage, while Cycle runs: the director notices
//! (a commit proxy with a hole in its version chain, a poisoned log, a failed probe), ends the
//! epoch, and the next epoch serves; the ring holds and every acknowledged commit is there.
//! Also two faults in a row, the second in the epoch the first one started. (A failed
//! monitoring probe of the sequencer is `monitoring.rs`: with clients running, they would take
//! the armed read-version fault first.)
//!
//! Before, a batch that failed after taking its version left a hole in the chain: every later
//! commit of the epoch failed out of order while the health check kept answering Ok.

// Test helpers may unwrap: a panic there is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used, unreachable_pub)]

mod common;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use strata_core::Epoch;
use strata_director::EmbeddedConfig;
use strata_director::faults::{FaultPoint, Faults};
use strata_director::workload::cycle::{check_acks, check_ring, ensure_ring};
use tokio::sync::watch;

const NODES: u64 = 30;
const CLIENTS: u64 = 4;

async fn faults_mid_epoch(points: &[FaultPoint], layout: (usize, usize, usize)) {
    let dir = tempfile::tempdir().unwrap();
    let faults = Faults::new();
    let config = EmbeddedConfig {
        monitor_interval: Duration::from_millis(20),
        ..common::small_windows(layout.0, layout.1, layout.2)
    };
    let (mut watching, shutdown, server) = common::served(dir.path(), config, faults.clone());
    let mut epoch = common::next_epoch(&mut watching, Epoch(0)).await;
    {
        let db = watching.borrow().as_ref().unwrap().1.clone();
        ensure_ring(&db, NODES).await.unwrap();
    }
    let acked = Arc::new(Mutex::new(Vec::new()));
    let (stop_clients, clients_stop) = watch::channel(false);
    let tasks = common::serving_clients(&watching, &clients_stop, &acked, (NODES, CLIENTS));

    for &point in points {
        // Several storage windows of history in this epoch before the fault.
        tokio::time::sleep(Duration::from_millis(300)).await;
        faults.arm(point);
        let next = common::next_epoch(&mut watching, epoch).await;
        assert!(!faults.is_armed(point), "{point:?} fired");
        epoch = next;
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    stop_clients.send(true).unwrap();
    for t in tasks {
        t.await.unwrap();
    }

    let db = watching.borrow().as_ref().unwrap().1.clone();
    check_ring(&db).await.unwrap();
    let acked = acked.lock().unwrap().clone();
    assert!(!acked.is_empty());
    check_acks(&db, &acked).await.unwrap();
    shutdown.send(()).unwrap();
    server.await.unwrap().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resolver_failing_a_batch_ends_the_epoch() {
    faults_mid_epoch(&[FaultPoint::Resolve], (2, 2, 2)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_sequencer_failing_a_commit_version_ends_the_epoch() {
    faults_mid_epoch(&[FaultPoint::CommitVersion], (1, 2, 1)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_log_refusing_a_push_ends_the_epoch() {
    faults_mid_epoch(&[FaultPoint::LogPush], (3, 2, 1)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_fsync_poisons_the_log_and_ends_the_epoch() {
    faults_mid_epoch(&[FaultPoint::LogSync], (2, 3, 2)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopped_storage_server_ends_the_epoch() {
    faults_mid_epoch(&[FaultPoint::StorageStop], (1, 3, 1)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_faults_in_a_row() {
    faults_mid_epoch(
        &[
            FaultPoint::LogSync,
            FaultPoint::LogSync,
            FaultPoint::Resolve,
        ],
        (2, 2, 1),
    )
    .await;
}
