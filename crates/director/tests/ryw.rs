//! Read-your-writes against a model: random sequences of sets, clears, range clears, point
//! reads and range reads (forward and reverse, with limits) in one transaction, over data
//! committed before and spread across both storage servers. Every read must equal the
//! committed state with the transaction's own writes applied.

// Test helpers may unwrap: a panic there is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used, unreachable_pub)]

mod common;

use std::collections::BTreeMap;

use bytes::Bytes;
use strata_core::{Key, KeyRange};
use strata_testkit::rng::SplitMix64 as Rng;

/// Keys on both sides of the storage split at 0x80.
fn key(rng: &mut Rng) -> Key {
    let first = [0x20u8, 0x41, 0x7f, 0x80, 0x81, 0xc0][rng.below(6) as usize];
    Bytes::from(vec![first, b'a' + rng.below(6) as u8])
}

fn range(rng: &mut Rng) -> KeyRange {
    let (a, b) = (key(rng), key(rng));
    let (lo, hi) = if a <= b { (a, b) } else { (b, a) };
    KeyRange::new(lo.clone(), hi).unwrap_or_else(|_| KeyRange::single(lo))
}

fn expected_range(
    model: &BTreeMap<Key, Bytes>,
    r: &KeyRange,
    limit: usize,
    reverse: bool,
) -> Vec<(Key, Bytes)> {
    let mut all: Vec<(Key, Bytes)> = model
        .iter()
        .filter(|(k, _)| r.contains(k))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    if reverse {
        all.reverse();
    }
    all.truncate(limit);
    all
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reads_see_the_transactions_own_writes_like_the_model() {
    let (cluster, _dir) = common::cluster().await;
    let db = cluster.database();
    let mut rng = Rng(7);

    // Committed state: half of the key space written.
    let mut base = BTreeMap::new();
    let setup = db.begin();
    for _ in 0..20 {
        let k = key(&mut rng);
        let v = Bytes::from(format!("base{}", rng.below(100)));
        setup.set(k.clone(), v.clone());
        base.insert(k, v);
    }
    setup.commit().await.unwrap();

    for round in 0..150 {
        let tx = db.begin();
        let mut model = base.clone();
        for step in 0..25 {
            let what = format!("round {round} step {step}");
            match rng.below(6) {
                0 => {
                    let (k, v) = (key(&mut rng), Bytes::from(format!("r{round}s{step}")));
                    tx.set(k.clone(), v.clone());
                    model.insert(k, v);
                }
                1 => {
                    let k = key(&mut rng);
                    tx.clear(k.clone());
                    model.remove(&k);
                }
                2 => {
                    let r = range(&mut rng);
                    tx.clear_range(r.clone());
                    model.retain(|k, _| !r.contains(k));
                }
                3 => {
                    let k = key(&mut rng);
                    assert_eq!(tx.get(&k).await.unwrap(), model.get(&k).cloned(), "{what}");
                }
                _ => {
                    let r = range(&mut rng);
                    let limit = 1 + rng.below(8) as usize;
                    let reverse = rng.below(2) == 0;
                    let got = tx.get_range(&r, limit, reverse).await.unwrap();
                    let expected = expected_range(&model, &r, limit, reverse);
                    assert_eq!(got, expected, "{what}: {r} limit {limit} reverse {reverse}");
                }
            }
        }
        // Never committed: the next round starts from the same base.
    }
}
