//! Several resolvers sharing the key space decide like one resolver, for every transaction
//! that commits everywhere, over 1, 2 and 4 shards; and the documented cost of sharding (a
//! phantom write left by a transaction rejected elsewhere) shows up and ages out.

// Test helpers may unwrap: a panic there is a failed test.
#![allow(clippy::unwrap_used)]

use bytes::Bytes;
use proptest::prelude::*;
use strata_core::{Epoch, KeyRange, ResolveBatch, TransactionConflicts, Verdict, Version};
use strata_resolver::{ConflictHistory, HistoryConfig, ShardMap, combine_verdicts};

const KEYS: u8 = 16;

fn key(n: u8) -> Bytes {
    Bytes::from(vec![b'a' + n])
}

fn shard_map(shards: usize) -> ShardMap {
    // Begin keys splitting [a, a + KEYS) evenly.
    let step = KEYS / shards as u8;
    ShardMap::from_begins((1..shards as u8).map(|i| key(i * step)).collect())
}

/// One resolver per shard, fed the clipped batches.
struct Sharded {
    map: ShardMap,
    resolvers: Vec<ConflictHistory>,
}

impl Sharded {
    fn new(shards: usize, config: HistoryConfig) -> Sharded {
        let map = shard_map(shards);
        let resolvers = (0..map.len())
            .map(|_| ConflictHistory::new(config))
            .collect();
        Sharded { map, resolvers }
    }

    /// Per-shard verdicts for each transaction, and the combined ones.
    fn resolve(&mut self, batch: &ResolveBatch) -> (Vec<Vec<Verdict>>, Vec<Verdict>) {
        let per_shard: Vec<Vec<Verdict>> = self
            .map
            .split(batch)
            .iter()
            .zip(&mut self.resolvers)
            .map(|(part, r)| r.resolve(part.version, &part.transactions))
            .collect();
        let combined = combine_verdicts(&per_shard).unwrap();
        (per_shard, combined)
    }
}

fn range(within: Option<(u8, u8)>) -> impl Strategy<Value = KeyRange> {
    let (lo, hi) = within.unwrap_or((0, KEYS));
    (lo..hi, 1u8..4).prop_map(move |(a, w)| {
        KeyRange::new(key(a), key((a + w).min(hi))).unwrap_or_else(|_| KeyRange::single(key(a)))
    })
}

fn transactions(
    within: Option<(u8, u8)>,
) -> impl Strategy<Value = Vec<(u64, Vec<KeyRange>, Vec<KeyRange>)>> {
    proptest::collection::vec(
        (
            0u64..60,
            proptest::collection::vec(range(within), 0..3),
            proptest::collection::vec(range(within), 0..3),
        ),
        0..8,
    )
}

fn batch(version: u64, txs: &[(u64, Vec<KeyRange>, Vec<KeyRange>)]) -> ResolveBatch {
    ResolveBatch {
        epoch: Epoch(1),
        previous_version: Version(version - 10),
        version: Version(version),
        transactions: txs
            .iter()
            .map(|(lag, reads, writes)| TransactionConflicts {
                read_version: Some(Version(version.saturating_sub(*lag))),
                read_conflicts: reads.clone(),
                write_conflicts: writes.clone(),
            })
            .collect(),
    }
}

const CONFIG: HistoryConfig = HistoryConfig {
    window_versions: 50,
    max_run_batches: 4,
    recent_runs: 1,
};

proptest! {
    #![proptest_config(ProptestConfig::with_cases(200))]

    /// Transactions confined to one shard each are decided by exactly one resolver, so the
    /// sharded verdicts equal the single resolver's, conflicts included, forever.
    #[test]
    fn single_shard_transactions_decide_like_one_resolver(
        shards in prop::sample::select(vec![1usize, 2, 4]),
        batches in proptest::collection::vec(
            (0usize..4).prop_flat_map(|s| transactions(Some(((s as u8) * 4, (s as u8) * 4 + 4)))),
            1..30,
        ),
    ) {
        let mut single = ConflictHistory::new(CONFIG);
        let mut sharded = Sharded::new(shards, CONFIG);
        for (i, txs) in batches.iter().enumerate() {
            let b = batch(100 + 10 * i as u64, txs);
            let expected = single.resolve(b.version, &b.transactions);
            let (_, combined) = sharded.resolve(&b);
            prop_assert_eq!(combined, expected);
        }
    }

    /// With transactions spanning shards, the verdicts agree for as long as every transaction
    /// is accepted everywhere or rejected everywhere. The first one accepted by some resolvers
    /// and rejected by others leaves a phantom write (see `ShardMap`), after which the two
    /// histories may rightly differ; the comparison stops there.
    #[test]
    fn spanning_transactions_decide_like_one_resolver_until_a_split_verdict(
        shards in prop::sample::select(vec![1usize, 2, 4]),
        batches in proptest::collection::vec(transactions(None), 1..30),
    ) {
        let mut single = ConflictHistory::new(CONFIG);
        let mut sharded = Sharded::new(shards, CONFIG);
        'batches: for (i, txs) in batches.iter().enumerate() {
            let b = batch(100 + 10 * i as u64, txs);
            let expected = single.resolve(b.version, &b.transactions);
            let (per_shard, combined) = sharded.resolve(&b);
            for t in 0..expected.len() {
                prop_assert_eq!(combined[t], expected[t], "batch {} transaction {}", i, t);
                let accepted = per_shard.iter().filter(|v| v[t] == Verdict::Committed).count();
                if accepted != 0 && accepted != per_shard.len() {
                    break 'batches;
                }
            }
        }
    }
}

#[test]
fn one_shard_is_one_resolver() {
    assert_eq!(shard_map(1).len(), 1);
    assert_eq!(shard_map(4).len(), 4);
}

/// The cost the crate documents: a transaction rejected by one resolver has still added its
/// writes at another, which then reports a false conflict until the window moves past it.
#[test]
fn phantom_write_of_a_split_verdict_ages_out_of_the_window() {
    let mut sharded = Sharded::new(2, CONFIG);
    let a = KeyRange::single(key(1)); // shard 0
    let x = KeyRange::single(key(12)); // shard 1
    let t = |rv: u64, reads: Vec<KeyRange>, writes: Vec<KeyRange>| (rv, reads, writes);
    let run = |s: &mut Sharded, version: u64, txs: Vec<(u64, Vec<KeyRange>, Vec<KeyRange>)>| {
        let b = ResolveBatch {
            epoch: Epoch(1),
            previous_version: Version(version - 10),
            version: Version(version),
            transactions: txs
                .into_iter()
                .map(|(rv, r, w)| TransactionConflicts {
                    read_version: Some(Version(rv)),
                    read_conflicts: r,
                    write_conflicts: w,
                })
                .collect(),
        };
        s.resolve(&b)
    };
    // Someone writes a at 110.
    run(&mut sharded, 110, vec![t(100, vec![], vec![a.clone()])]);
    // T read a at 100 (stale) and writes a and x: shard 0 rejects, shard 1 accepts.
    let (per_shard, combined) = run(
        &mut sharded,
        120,
        vec![t(100, vec![a.clone()], vec![a.clone(), x.clone()])],
    );
    assert_eq!(
        per_shard,
        vec![vec![Verdict::Conflict], vec![Verdict::Committed]]
    );
    assert_eq!(combined, vec![Verdict::Conflict]);
    // T did not commit, yet a reader of x at 115 sees a (false) conflict at shard 1.
    let (_, combined) = run(&mut sharded, 130, vec![t(115, vec![x.clone()], vec![])]);
    assert_eq!(combined, vec![Verdict::Conflict]);
    // Once the window (50 versions) has moved past 120, the phantom is gone.
    run(&mut sharded, 180, vec![]);
    let (_, combined) = run(&mut sharded, 190, vec![t(140, vec![x], vec![])]);
    assert_eq!(combined, vec![Verdict::Committed]);
}
