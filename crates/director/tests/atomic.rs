//! Atomic operations through the whole pipeline on a real embedded cluster: 64 clients add to
//! the same counters at once, and none of their transactions ever conflicts, because an atomic
//! operation reads nothing; the counters end at the number of acknowledged transactions, max
//! and min at the largest and smallest operand acknowledged; and all of it survives stops and
//! recoveries, with windows shrunk so that the counters' histories are many storage windows
//! long and the servers re-apply what they held in memory over what they had flushed.

// Test helpers may unwrap: a panic there is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used, unreachable_pub)]

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use bytes::Bytes;
use strata_core::atomic::le_u64;
use strata_core::{AtomicOp, Key, Value};
use strata_director::{Database, EmbeddedCluster, EmbeddedConfig};

/// The counters, one on each side of the storage split at `0x80`.
const LOW: &[u8] = b"\x10counter";
const HIGH: &[u8] = b"\x90counter";
const MAX: &[u8] = b"\x20max";
const MIN: &[u8] = b"\xa0min";

const CLIENTS: u64 = 64;

fn le(n: u64) -> Value {
    Value::copy_from_slice(&n.to_le_bytes())
}

/// What a run of clients did: the operand of every acknowledged transaction, and how many
/// times the transactions' bodies ran (more than once only for a retried transaction).
struct Run {
    acked: Vec<u64>,
    attempts: u64,
}

/// `CLIENTS` clients, each running `per_client` transactions through [`Database::run`]: each
/// adds 1 to both counters and offers its own operand `n` (unique, from `first` up) to the
/// max and the min. Every result is counted: an `Ok` is an acknowledged transaction.
async fn add_concurrently(db: &Database, per_client: u64, first: u64) -> Run {
    let attempts = Arc::new(AtomicU64::new(0));
    let mut clients = tokio::task::JoinSet::new();
    for client in 0..CLIENTS {
        let (db, attempts) = (db.clone(), attempts.clone());
        clients.spawn(async move {
            let mut acked = Vec::new();
            for i in 0..per_client {
                let n = first + client * per_client + i;
                let result = db
                    .run(|tx| {
                        attempts.fetch_add(1, Ordering::SeqCst);
                        tx.atomic_add(Key::from_static(LOW), le(1));
                        tx.atomic_add_i64(Key::from_static(HIGH), 1);
                        tx.atomic_max(Key::from_static(MAX), le(n));
                        tx.atomic_min(Key::from_static(MIN), le(n));
                        async { Ok(()) }
                    })
                    .await;
                match result {
                    Ok(_) => acked.push(n),
                    Err(e) => panic!("client {client}: transaction {i} failed: {e}"),
                }
            }
            acked
        });
    }
    let mut acked = Vec::new();
    while let Some(done) = clients.join_next().await {
        acked.extend(done.unwrap());
    }
    Run {
        acked,
        attempts: attempts.load(Ordering::SeqCst),
    }
}

/// The four values, read in one transaction.
async fn read(db: &Database) -> [Option<Bytes>; 4] {
    let tx = db.begin();
    let mut out: [Option<Bytes>; 4] = Default::default();
    for (slot, k) in out.iter_mut().zip([LOW, HIGH, MAX, MIN]) {
        *slot = tx.get(&Key::from_static(k)).await.unwrap();
    }
    out
}

/// Checks the four values against every operand acknowledged so far.
async fn assert_totals(db: &Database, acked: &[u64], what: &str) {
    let [low, high, max, min] = read(db).await;
    let count = acked.len() as u64;
    assert_eq!(le_u64(low.as_deref()), count, "{what}: low counter");
    assert_eq!(le_u64(high.as_deref()), count, "{what}: high counter");
    assert_eq!(max, acked.iter().max().map(|&n| le(n)), "{what}: max");
    assert_eq!(min, acked.iter().min().map(|&n| le(n)), "{what}: min");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sixty_four_clients_add_to_one_counter_without_a_single_conflict() {
    // Two logs, two storage servers, two resolvers, two proxies.
    let (cluster, _dir) = common::cluster().await;
    let db = cluster.database();
    let run = add_concurrently(&db, 40, 1_000).await;
    assert_eq!(run.acked.len() as u64, CLIENTS * 40);
    // Every body ran once: no transaction was retried, so none conflicted.
    assert_eq!(
        run.attempts,
        CLIENTS * 40,
        "atomic operations never conflict"
    );
    assert_totals(&db, &run.acked, "after the run").await;
    assert_eq!(le_u64(read(&db).await[0].as_deref()), 2_560);

    // A transaction reads its own operations over what storage holds.
    let tx = db.begin();
    tx.atomic_add_i64(Key::from_static(LOW), -1_560);
    tx.atomic(AtomicOp::Max, Key::from_static(MAX), le(u64::MAX));
    tx.atomic_min(Key::from_static(MIN), le(0));
    tx.atomic_min(Key::from_static(b"\x30new"), le(9));
    let low = tx.get(&Key::from_static(LOW)).await.unwrap();
    assert_eq!(le_u64(low.as_deref()), 1_000);
    let range = strata_core::KeyRange::new(Key::from_static(b"\x20"), Key::from_static(b"\x31"));
    let seen = tx.get_range(&range.unwrap(), 10, false).await.unwrap();
    assert_eq!(
        seen,
        vec![
            (Key::from_static(MAX), le(u64::MAX)),
            (Key::from_static(b"\x30new"), le(9)),
        ]
    );
    tx.commit().await.unwrap();
    let [low, _, max, min] = read(&db).await;
    assert_eq!(le_u64(low.as_deref()), 1_000);
    assert_eq!(max, Some(le(u64::MAX)));
    assert_eq!(min, Some(le(0)));
    cluster.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_counters_survive_stops_and_recoveries_with_the_same_values() {
    let dir = tempfile::tempdir().unwrap();
    // Windows of 50 ms: each run's history spans many of them, so most operations find their
    // key's value flushed to redb, and recovery re-applies what was only in memory.
    let layouts: [EmbeddedConfig; 3] = [
        common::small_windows(2, 2, 2),
        common::small_windows(2, 2, 1),
        common::small_windows(1, 2, 2),
    ];
    let mut acked: Vec<u64> = Vec::new();
    for (run, config) in (0u64..).zip(layouts) {
        let cluster = EmbeddedCluster::start(dir.path(), config).await.unwrap();
        let db = cluster.database();
        assert_totals(&db, &acked, &format!("run {run}: after recovery")).await;
        let done = add_concurrently(&db, 16, run * 1_000_000).await;
        acked.extend(done.acked);
        assert_totals(&db, &acked, &format!("run {run}: before the stop")).await;
        cluster.stop().await;
    }
    let cluster = EmbeddedCluster::start(dir.path(), common::small_windows(2, 2, 2))
        .await
        .unwrap();
    let db = cluster.database();
    assert_totals(&db, &acked, "after the last recovery").await;
    assert_eq!(acked.len() as u64, 3 * CLIENTS * 16);
    cluster.stop().await;
}
