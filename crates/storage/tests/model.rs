//! The storage server against a model: the full state after every version, as a `BTreeMap`.
//! Random batches of sets, clears, range clears and atomic operations; reports of committed versions lagging the
//! newest batch; flushes to redb at random points; point and range reads (forward, reverse,
//! with limits) at random versions.

// Test helpers may unwrap: a panic there is a failed test.
#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use proptest::prelude::*;
use strata_core::{AtomicOp, ErrorKind, KeyRange, LogId, Mutation, StorageServer, Version};
use strata_storage::{RedbStorage, StorageConfig};
use strata_testkit::MemoryLog;

type State = BTreeMap<Bytes, Bytes>;

#[derive(Clone, Debug)]
enum Step {
    Batch(u64, Vec<Mutation>),
    /// Reports the version this far behind the newest batch as committed.
    Commit(u64),
    Flush,
    Get(Bytes, u64),
    Range(Bytes, Bytes, u64, usize, bool),
}

fn key() -> impl Strategy<Value = Bytes> {
    proptest::collection::vec(prop::sample::select(b"abcd".to_vec()), 1..3).prop_map(Bytes::from)
}

fn mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        4 => (key(), any::<u8>()).prop_map(|(key, v)| Mutation::Set { key, value: Bytes::from(vec![v]) }),
        1 => key().prop_map(|key| Mutation::Clear { key }),
        1 => (key(), key()).prop_filter_map("empty range", |(a, b)| {
            let (lo, hi) = if a <= b { (a, b) } else { (b, a) };
            KeyRange::new(lo, hi).ok().map(|range| Mutation::ClearRange { range })
        }),
        2 => (prop::sample::select(AtomicOp::ALL.to_vec()), key(), proptest::collection::vec(any::<u8>(), 1..3))
            .prop_map(|(op, key, operand)| Mutation::Atomic { op, key, operand: Bytes::from(operand) }),
    ]
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        6 => (1u64..20, proptest::collection::vec(mutation(), 0..6)).prop_map(|(s, m)| Step::Batch(s, m)),
        2 => (0u64..60).prop_map(Step::Commit),
        1 => Just(Step::Flush),
        3 => (key(), 0u64..80).prop_map(|(k, lag)| Step::Get(k, lag)),
        2 => (key(), key(), 0u64..80, 1usize..6, any::<bool>())
            .prop_map(|(a, b, lag, limit, rev)| Step::Range(a, b, lag, limit, rev)),
    ]
}

/// The state at `version`: after the newest batch at or before it.
fn at(history: &[(Version, State)], version: Version) -> State {
    history
        .iter()
        .rev()
        .find(|(v, _)| *v <= version)
        .map(|(_, s)| s.clone())
        .unwrap_or_default()
}

async fn run(steps: Vec<Step>) {
    let dir = tempfile::tempdir().unwrap();
    let log = Arc::new(MemoryLog::new(LogId(1), Version(0)));
    let config = StorageConfig {
        window_versions: 30,
        flush_interval: Duration::from_secs(3600),
        ..StorageConfig::default()
    };
    let all = KeyRange::new("", "\u{7f}").unwrap();
    let storage = RedbStorage::open(&dir.path().join("s.redb"), vec![all], log.clone(), config)
        .await
        .unwrap();
    let mut history: Vec<(Version, State)> = vec![(Version(0), State::new())];
    let mut version = 0u64;
    let mut committed = Version(0);
    for step in steps {
        match step {
            Step::Batch(gap, mutations) => {
                let previous = version;
                version += gap;
                let mut state = history.last().unwrap().1.clone();
                for m in &mutations {
                    strata_testkit::model::apply(&mut state, m);
                }
                log.push_mutations(Version(previous), Version(version), &mutations)
                    .await
                    .unwrap();
                history.push((Version(version), state));
            }
            Step::Commit(lag) => {
                committed = committed.max(Version(version.saturating_sub(lag)));
                storage.advance_committed(Version(version.saturating_sub(lag)));
                assert_eq!(storage.committed_version(), committed);
            }
            Step::Flush => {
                // Wait until everything pushed is applied, so the flush has work to do.
                storage.wait_applied(Version(version)).await.unwrap();
                storage.flush().await.unwrap();
                // Everything older than the window and committed, nothing uncommitted.
                let durable = storage.durable_version().await.unwrap();
                let older_than_window = Version(version.saturating_sub(30));
                assert!(
                    durable <= committed,
                    "durable {durable}, committed {committed}"
                );
                assert!(
                    durable >= committed.min(older_than_window),
                    "durable {durable}, committed {committed}, applied {version}"
                );
            }
            Step::Get(key, lag) => {
                let at_version = Version(version.saturating_sub(lag));
                match storage.get(key.clone(), at_version).await {
                    Ok(got) => assert_eq!(got, at(&history, at_version).get(&key).cloned()),
                    Err(e) => {
                        assert!(matches!(e.kind, ErrorKind::TooOld { .. }), "{e}");
                        assert!(at_version < storage.durable_version().await.unwrap());
                    }
                }
            }
            Step::Range(a, b, lag, limit, reverse) => {
                let (lo, hi) = if a <= b { (a, b) } else { (b, a) };
                let Ok(range) = KeyRange::new(lo, hi) else {
                    continue;
                };
                let at_version = Version(version.saturating_sub(lag));
                match storage
                    .get_range(range.clone(), at_version, limit, reverse)
                    .await
                {
                    Ok(got) => {
                        let state = at(&history, at_version);
                        let mut expected: Vec<(Bytes, Bytes)> = state
                            .into_iter()
                            .filter(|(k, _)| range.contains(k))
                            .collect();
                        if reverse {
                            expected.reverse();
                        }
                        let more = expected.len() > limit;
                        expected.truncate(limit);
                        assert_eq!(got.entries, expected, "{range} at {at_version}");
                        assert_eq!(got.more, more);
                    }
                    Err(e) => {
                        assert!(matches!(e.kind, ErrorKind::TooOld { .. }), "{e}");
                        assert!(at_version < storage.durable_version().await.unwrap());
                    }
                }
            }
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]

    #[test]
    fn reads_match_the_model(steps in proptest::collection::vec(step(), 1..60)) {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        runtime.block_on(run(steps));
    }
}
