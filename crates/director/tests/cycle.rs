//! FoundationDB's Cycle workload (`strata_director::workload`): 100 keys form one ring; 16
//! concurrent clients run 5,000 transactions that each read three links and rewire them.
//! Afterwards the ring must still be one ring of exactly 100 keys, and every transaction
//! acknowledged must have left its acknowledgement key.

// Test helpers may unwrap: a panic there is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used, unreachable_pub)]

mod common;

use strata_director::workload::{check_acks, check_ring, ensure_ring, rewire};

const NODES: u64 = 100;
const CLIENTS: u64 = 16;
const TRANSACTIONS: u64 = 5_000;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cycle_stays_one_ring_under_concurrent_rewiring() {
    let (cluster, _dir) = common::cluster().await;
    let db = cluster.database();
    assert_eq!(ensure_ring(&db, NODES).await.unwrap(), NODES);
    assert_eq!(check_ring(&db).await.unwrap(), NODES);

    let clients: Vec<_> = (0..CLIENTS)
        .map(|c| {
            let db = db.clone();
            tokio::spawn(async move {
                let mut rng = strata_core::rng::SplitMix64(c);
                for n in 0..TRANSACTIONS / CLIENTS {
                    rewire(&db, NODES, &mut rng, c, n).await.unwrap();
                }
            })
        })
        .collect();
    for c in clients {
        c.await.unwrap();
    }
    assert_eq!(check_ring(&db).await.unwrap(), NODES);
    let acked: Vec<(u64, u64)> = (0..CLIENTS)
        .flat_map(|c| (0..TRANSACTIONS / CLIENTS).map(move |n| (c, n)))
        .collect();
    check_acks(&db, &acked).await.unwrap();
}
