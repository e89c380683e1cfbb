//! FoundationDB's Cycle workload: 100 keys form one ring; 16 concurrent clients run 5,000
//! transactions that each read three links and rewire them. Afterwards the ring must still be
//! one ring of exactly 100 keys.

// Test helpers may unwrap: a panic there is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used, unreachable_pub)]

mod common;

use bytes::Bytes;
use strata_core::Key;
use strata_director::Database;

const NODES: u64 = 100;
const CLIENTS: u64 = 16;
const TRANSACTIONS: u64 = 5_000;

fn node(i: u64) -> Key {
    Bytes::from(format!("cycle/{i:03}"))
}

fn link(v: &[u8]) -> u64 {
    std::str::from_utf8(v).unwrap().parse().unwrap()
}

/// Follows the ring from node 0 at the newest version; panics unless it is one ring of all.
async fn check_ring(db: &Database) {
    let tx = db.begin().await.unwrap();
    let mut seen = vec![false; NODES as usize];
    let mut at = 0;
    for _ in 0..NODES {
        assert!(
            !seen[at as usize],
            "node {at} visited twice: the ring split"
        );
        seen[at as usize] = true;
        let next = tx
            .snapshot_get(&node(at))
            .await
            .unwrap()
            .expect("every node has a link");
        at = link(&next);
    }
    assert_eq!(at, 0, "the walk did not come back to the start");
    assert!(seen.iter().all(|s| *s));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cycle_stays_one_ring_under_concurrent_rewiring() {
    let (cluster, _dir) = common::cluster().await;
    let db = cluster.database();
    db.run(|tx| async move {
        for i in 0..NODES {
            tx.set(node(i), Bytes::from(((i + 1) % NODES).to_string()));
        }
        Ok(())
    })
    .await
    .unwrap();
    check_ring(&db).await;

    let clients: Vec<_> = (0..CLIENTS)
        .map(|c| {
            let db = db.clone();
            tokio::spawn(async move {
                let mut rng = strata_core::rng::SplitMix64(c);
                for _ in 0..TRANSACTIONS / CLIENTS {
                    let a = rng.below(NODES);
                    db.run(|tx| async move {
                        // a -> b -> c -> d becomes a -> c -> b -> d.
                        let b = link(&tx.get(&node(a)).await?.unwrap());
                        let c = link(&tx.get(&node(b)).await?.unwrap());
                        let d = link(&tx.get(&node(c)).await?.unwrap());
                        tx.set(node(a), Bytes::from(c.to_string()));
                        tx.set(node(c), Bytes::from(b.to_string()));
                        tx.set(node(b), Bytes::from(d.to_string()));
                        Ok(())
                    })
                    .await
                    .unwrap();
                }
            })
        })
        .collect();
    for c in clients {
        c.await.unwrap();
    }
    check_ring(&db).await;
}
