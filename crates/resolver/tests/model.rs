//! The resolver against the test kit's brute-force model: a plain list of (range, version)
//! writes.
//!
//! Keys come from a small alphabet so that ranges collide often, and include keys longer than
//! eight bytes that share their first eight (the path where a run compares key suffixes).
//! Windows and run sizes are tiny so that trimming and merging happen many times per case.

// Test helpers may unwrap: a panic there is a failed test.
#![allow(clippy::unwrap_used)]

use bytes::Bytes;
use proptest::prelude::*;
use strata_core::{KeyRange, TransactionConflicts, Version};
use strata_resolver::{ConflictHistory, HistoryConfig};
use strata_testkit::ConflictModel as Model;

fn key() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        3 => proptest::collection::vec(prop::sample::select(b"abcde".to_vec()), 0..3),
        1 => proptest::collection::vec(prop::sample::select(b"ab".to_vec()), 0..3)
            .prop_map(|tail| [b"prefix00".as_slice(), &tail].concat()),
    ]
}

fn range() -> impl Strategy<Value = KeyRange> {
    (key(), key(), any::<bool>()).prop_map(|(a, b, point)| {
        let (lo, hi) = if a <= b { (a, b) } else { (b, a) };
        if point || lo == hi {
            KeyRange::single(Bytes::from(lo))
        } else {
            KeyRange::new(Bytes::from(lo), Bytes::from(hi)).unwrap()
        }
    })
}

/// A transaction whose read version is `lag` versions before the batch (negative lags read
/// "from the future", which the resolver must handle like any other version).
fn transaction() -> impl Strategy<Value = (i64, TransactionConflicts)> {
    (
        -3i64..160,
        proptest::collection::vec(range(), 0..3),
        proptest::collection::vec(range(), 0..3),
    )
        .prop_map(|(lag, reads, writes)| {
            (
                lag,
                TransactionConflicts {
                    read_version: None,
                    read_conflicts: reads,
                    write_conflicts: writes,
                },
            )
        })
}

fn batches() -> impl Strategy<Value = Vec<(u64, Vec<(i64, TransactionConflicts)>)>> {
    proptest::collection::vec(
        (1u64..40, proptest::collection::vec(transaction(), 0..8)),
        1..40,
    )
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(400))]

    #[test]
    fn verdicts_match_the_brute_force_model(
        window in 20u64..200,
        max_run_batches in 1u32..6,
        recent_runs in 0usize..4,
        batches in batches(),
    ) {
        let mut history = ConflictHistory::new(HistoryConfig {
            window_versions: window,
            max_run_batches,
            recent_runs,
        });
        let mut model = Model::default();
        let mut version = 1_000u64;
        for (step, txs) in batches {
            version += step;
            let txs: Vec<TransactionConflicts> = txs
                .into_iter()
                .map(|(lag, mut tx)| {
                    tx.read_version = Some(Version(version.saturating_add_signed(-lag)));
                    tx
                })
                .collect();
            let expected = model.resolve(Version(version), window, &txs);
            let got = history.resolve(Version(version), &txs);
            prop_assert_eq!(got, expected, "batch at version {}", version);
        }
    }
}
