//! FoundationDB's Increment workload: each transaction adds 1 to a key in the lower half and 1
//! to a key in the upper half of the key space (which live on different storage servers and
//! resolvers). Read at any version, the two halves always sum equal.

// Test helpers may unwrap: a panic there is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used, unreachable_pub)]

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use bytes::Bytes;
use strata_core::{Key, KeyRange, Version};
use strata_director::{Database, Transaction};

const KEYS: u64 = 10;
const CLIENTS: u64 = 8;
const TRANSACTIONS: u64 = 400;

fn lower(i: u64) -> Key {
    Bytes::from([&[0x10u8][..], format!("inc/{i}").as_bytes()].concat())
}

fn upper(i: u64) -> Key {
    Bytes::from([&[0x90u8][..], format!("inc/{i}").as_bytes()].concat())
}

fn number(v: Option<Bytes>) -> u64 {
    v.map_or(0, |b| u64::from_le_bytes(b.as_ref().try_into().unwrap()))
}

async fn add_one(tx: &Transaction, key: Key) -> strata_core::Result<()> {
    let n = number(tx.get(&key).await?);
    tx.set(key, Bytes::copy_from_slice(&(n + 1).to_le_bytes()));
    Ok(())
}

/// The sums of both halves in one snapshot at `version`.
async fn sums(db: &Database) -> (u64, u64, Version) {
    let tx = db.begin().await.unwrap();
    let half = |prefix: &'static [u8]| KeyRange::prefix(Bytes::from_static(prefix)).unwrap();
    let mut totals = [0u64; 2];
    for (i, range) in [half(b"\x10inc/"), half(b"\x90inc/")].iter().enumerate() {
        let entries = tx.snapshot_get_range(range, 1_000, false).await.unwrap();
        totals[i] = entries.into_iter().map(|(_, v)| number(Some(v))).sum();
    }
    (totals[0], totals[1], tx.read_version())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn both_halves_always_sum_equal() {
    let (cluster, _dir) = common::cluster().await;
    let db = cluster.database();
    let done = Arc::new(AtomicBool::new(false));

    let checker = tokio::spawn({
        let (db, done) = (db.clone(), done.clone());
        async move {
            let mut checks = 0;
            while !done.load(Ordering::SeqCst) {
                let (a, b, at) = sums(&db).await;
                assert_eq!(a, b, "halves differ at {at}");
                checks += 1;
            }
            checks
        }
    });
    let clients: Vec<_> = (0..CLIENTS)
        .map(|c| {
            let db = db.clone();
            tokio::spawn(async move {
                let mut rng = strata_core::rng::SplitMix64(c + 100);
                for _ in 0..TRANSACTIONS / CLIENTS {
                    let (x, y) = (rng.below(KEYS), rng.below(KEYS));
                    db.run(|tx| async move {
                        add_one(&tx, lower(x)).await?;
                        add_one(&tx, upper(y)).await
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
    done.store(true, Ordering::SeqCst);
    let checks = checker.await.unwrap();
    assert!(checks > 0);
    let (a, b, _) = sums(&db).await;
    assert_eq!(
        (a, b),
        (TRANSACTIONS, TRANSACTIONS),
        "every increment landed once"
    );
}
