//! How the proxy forms batches: up to its count and byte bounds, each batch one entry on every
//! log. Every commit is queued at once and the batch window is long, so the batches are
//! decided by the bounds alone.

// Test helpers may unwrap: a panic there is a failed test.
#![allow(clippy::unwrap_used)]

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use strata_commit_proxy::{BatchingProxy, ProxyConfig};
use strata_core::{
    CommitProxy, Epoch, KeyRange, LogId, LogServer, Mutation, Resolver, Transaction,
    TransactionView, Version,
};
use strata_testkit::faults::{Fault, FaultPoint, Faults, FaultyLog};
use strata_testkit::{MemoryLog, ModelResolver, StepSequencer};

const EPOCH: Epoch = Epoch(1);

fn blind(key: String, value_bytes: usize) -> Bytes {
    Transaction {
        write_conflicts: vec![KeyRange::single(Bytes::from(key.clone()))],
        mutations: vec![Mutation::Set {
            key: Bytes::from(key),
            value: Bytes::from(vec![b'v'; value_bytes]),
        }],
        ..Transaction::default()
    }
    .encode()
    .unwrap()
}

/// A proxy over the test kit's step sequencer and model resolver, and `log`.
fn proxy_over(log: Arc<dyn LogServer>, config: ProxyConfig) -> Arc<BatchingProxy> {
    let resolver: Arc<dyn Resolver> = Arc::new(ModelResolver::new(EPOCH, Version(0)));
    Arc::new(
        BatchingProxy::new(
            EPOCH,
            Arc::new(StepSequencer::new(EPOCH, Version(0))),
            vec![(Bytes::new(), resolver)],
            vec![log],
            config,
        )
        .unwrap(),
    )
}

/// The keys each entry of `log` holds, in log order.
fn logged_keys(log: &MemoryLog) -> Vec<Vec<String>> {
    log.entries()
        .iter()
        .map(|e| {
            TransactionView::parse(e.payload.clone())
                .unwrap()
                .mutations()
                .unwrap()
                .into_iter()
                .map(|m| match m {
                    Mutation::Set { key, .. } => String::from_utf8(key.to_vec()).unwrap(),
                    other => panic!("unexpected {other:?}"),
                })
                .collect()
        })
        .collect()
}

/// Commits `count` blind writes of `value_bytes` each under `config` and returns the keys each
/// log entry holds, in log order.
async fn batches(count: usize, value_bytes: usize, config: ProxyConfig) -> Vec<Vec<String>> {
    let log = Arc::new(MemoryLog::new(LogId(0), Version(0)));
    let proxy = proxy_over(
        log.clone(),
        ProxyConfig {
            // Far longer than queueing every commit takes.
            batch_window: Duration::from_millis(500),
            ..config
        },
    );
    let mut tasks = Vec::new();
    for i in 0..count {
        let proxy = proxy.clone();
        tasks.push(tokio::spawn(async move {
            proxy.commit(blind(format!("k{i:03}"), value_bytes)).await
        }));
    }
    for t in tasks {
        t.await.unwrap().unwrap();
    }
    logged_keys(&log)
}

fn sizes(batches: &[Vec<String>]) -> Vec<usize> {
    batches.iter().map(Vec::len).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_takes_at_most_its_count_bound() {
    let got = batches(
        11,
        10,
        ProxyConfig {
            batch_transactions_max: 4,
            ..ProxyConfig::default()
        },
    )
    .await;
    assert_eq!(sizes(&got), [4, 4, 3]);
    let mut keys: Vec<String> = got.concat();
    keys.sort();
    let expected: Vec<String> = (0..11).map(|i| format!("k{i:03}")).collect();
    assert_eq!(keys, expected, "every transaction committed once");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_takes_at_most_its_byte_bound() {
    let one = blind("k000".into(), 1_000).len();
    let got = batches(
        10,
        1_000,
        ProxyConfig {
            batch_bytes_max: one * 5 / 2,
            ..ProxyConfig::default()
        },
    )
    .await;
    assert_eq!(sizes(&got), [2, 2, 2, 2, 2]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_transaction_larger_than_the_byte_bound_still_commits_alone() {
    let got = batches(
        4,
        5_000,
        ProxyConfig {
            batch_bytes_max: 1_000,
            ..ProxyConfig::default()
        },
    )
    .await;
    assert_eq!(sizes(&got), [1, 1, 1, 1]);
}

/// The pipeline's room is taken before a batch is formed: a transaction that arrives while
/// every batch in flight is waiting on a stage waits in the queue, and the next batch takes it
/// with everything else queued by then. (Formed first and then held for room, a batch would
/// hold only what was queued when the room ran out, and under steady load every batch would
/// be a single transaction.)
#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn transactions_that_wait_for_room_in_the_pipeline_share_one_batch() {
    let log = Arc::new(MemoryLog::new(LogId(0), Version(0)));
    let faults = Faults::new();
    // The first batch's push waits 100 ms (of the paused clock) before it reaches the log.
    faults.arm_at(
        FaultPoint::LogPush,
        1,
        Fault::Delay(Duration::from_millis(100)),
    );
    let proxy = proxy_over(
        Arc::new(FaultyLog(log.clone(), faults)),
        ProxyConfig {
            in_flight_batches_max: 1,
            ..ProxyConfig::default()
        },
    );
    let commit = |i: usize| {
        let proxy = proxy.clone();
        tokio::spawn(async move { proxy.commit(blind(format!("k{i:03}"), 10)).await })
    };
    // Each step runs every task until all wait on the clock: the first batch is then held at
    // the log, and the second transaction is with the batcher, which waits for room.
    let mut tasks = vec![commit(0)];
    tokio::time::sleep(Duration::from_millis(1)).await;
    tasks.push(commit(1));
    tokio::time::sleep(Duration::from_millis(1)).await;
    for i in 2..6 {
        tasks.push(commit(i));
    }
    for t in tasks {
        t.await.unwrap().unwrap();
    }
    assert_eq!(sizes(&logged_keys(&log)), [1, 5]);
}
