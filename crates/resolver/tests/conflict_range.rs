//! FoundationDB's ConflictRange workload, on the resolver alone: two transactions read at the
//! same version; the first writes keys and commits, the second reads a range. The second must
//! conflict exactly when its range holds a key the first wrote: no missed conflict, no false
//! one. Run with both transactions in consecutive batches and in the same batch.

// Test helpers may unwrap: a panic there is a failed test.
#![allow(clippy::unwrap_used)]

use bytes::Bytes;
use proptest::prelude::*;
use strata_core::{KeyRange, TransactionConflicts, Verdict, Version};
use strata_resolver::ConflictHistory;

fn key(n: u16) -> Bytes {
    Bytes::from(format!("key/{n:05}"))
}

fn writer(
    read_version: Version,
    written: &[u16],
    cleared: Option<(u16, u16)>,
) -> TransactionConflicts {
    let mut writes: Vec<KeyRange> = written.iter().map(|&n| KeyRange::single(key(n))).collect();
    if let Some((a, b)) = cleared {
        writes.push(KeyRange::new(key(a), key(b)).unwrap());
    }
    TransactionConflicts {
        read_version: Some(read_version),
        read_conflicts: vec![KeyRange::single(Bytes::from_static(b"unrelated"))],
        write_conflicts: writes,
    }
}

fn reader(read_version: Version, begin: u16, end: u16) -> TransactionConflicts {
    TransactionConflicts {
        read_version: Some(read_version),
        read_conflicts: vec![KeyRange::new(key(begin), key(end)).unwrap()],
        write_conflicts: vec![KeyRange::single(Bytes::from_static(b"reader/own"))],
    }
}

/// Whether the reader's `[begin, end)` holds a key the writer wrote: the brute-force answer.
fn overlaps(written: &[u16], cleared: Option<(u16, u16)>, begin: u16, end: u16) -> bool {
    written.iter().any(|&n| begin <= n && n < end)
        || cleared.is_some_and(|(a, b)| a < end && begin < b)
}

fn case() -> impl Strategy<Value = (Vec<u16>, Option<(u16, u16)>, u16, u16)> {
    (
        proptest::collection::vec(0u16..200, 0..6),
        proptest::option::of((0u16..200, 1u16..20).prop_map(|(a, w)| (a, a + w))),
        0u16..200,
        1u16..30,
    )
        .prop_map(|(written, cleared, begin, width)| (written, cleared, begin, begin + width))
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(500))]

    #[test]
    fn consecutive_batches((written, cleared, begin, end) in case()) {
        let mut h = ConflictHistory::default();
        let rv = Version(100);
        h.resolve(rv, &[]);
        let w = h.resolve(Version(200), &[writer(rv, &written, cleared)]);
        prop_assert_eq!(w, vec![Verdict::Committed]);
        let r = h.resolve(Version(300), &[reader(rv, begin, end)]);
        let expected = if overlaps(&written, cleared, begin, end) {
            Verdict::Conflict
        } else {
            Verdict::Committed
        };
        prop_assert_eq!(r, vec![expected]);
    }

    #[test]
    fn same_batch((written, cleared, begin, end) in case()) {
        let mut h = ConflictHistory::default();
        let rv = Version(100);
        h.resolve(rv, &[]);
        let v = h.resolve(
            Version(200),
            &[writer(rv, &written, cleared), reader(rv, begin, end)],
        );
        let expected = if overlaps(&written, cleared, begin, end) {
            Verdict::Conflict
        } else {
            Verdict::Committed
        };
        prop_assert_eq!(v, vec![Verdict::Committed, expected]);
    }

    #[test]
    fn a_read_after_the_commit_never_conflicts((written, cleared, begin, end) in case()) {
        let mut h = ConflictHistory::default();
        h.resolve(Version(100), &[writer(Version(100), &written, cleared)]);
        // The reader took its read version after the writer committed at 100.
        let r = h.resolve(Version(200), &[reader(Version(100), begin, end)]);
        prop_assert_eq!(r, vec![Verdict::Committed]);
    }
}
