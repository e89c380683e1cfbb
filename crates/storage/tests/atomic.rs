//! Atomic operations at the storage server: each applies to its key's value just before it,
//! whether the window holds that value or only redb does; and replaying the log over the
//! durable state, after a restart or a roll back, gives the same values. The windows are
//! shrunk so that histories are many windows long and most operations find their key's value
//! already flushed to redb.

// Test helpers may unwrap: a panic there is a failed test.
#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use strata_core::{AtomicOp, KeyRange, LogId, Mutation, StorageServer, Version};
use strata_storage::{RedbStorage, StorageConfig};
use strata_testkit::MemoryLog;
use strata_testkit::rng::SplitMix64;

type State = BTreeMap<Bytes, Bytes>;

fn everything() -> KeyRange {
    KeyRange::new("", "\u{7f}").unwrap()
}

fn atomic(op: AtomicOp, key: &str, operand: &[u8]) -> Mutation {
    Mutation::Atomic {
        op,
        key: Bytes::copy_from_slice(key.as_bytes()),
        operand: Bytes::copy_from_slice(operand),
    }
}

fn add(key: &str, n: u64) -> Mutation {
    atomic(AtomicOp::Add, key, &n.to_le_bytes())
}

async fn push(log: &MemoryLog, previous: u64, version: u64, mutations: &[Mutation]) {
    log.push_mutations(Version(previous), Version(version), mutations)
        .await
        .unwrap();
}

async fn open(path: &Path, log: Arc<MemoryLog>, config: StorageConfig) -> RedbStorage {
    RedbStorage::open(path, vec![everything()], log, config)
        .await
        .unwrap()
}

async fn wait_applied(storage: &RedbStorage, version: Version) {
    // A bound only so a broken server fails the test instead of hanging it.
    tokio::time::timeout(Duration::from_secs(60), storage.wait_applied(version))
        .await
        .unwrap()
        .unwrap();
}

/// Everything the server holds at `version`.
async fn read_all(storage: &RedbStorage, version: Version) -> State {
    storage
        .get_range(everything(), version, usize::MAX, false)
        .await
        .unwrap()
        .entries
        .into_iter()
        .collect()
}

/// Flushes every millisecond, keeps ten versions in memory and leaves the log alone.
fn busy() -> StorageConfig {
    StorageConfig {
        window_versions: 10,
        flush_interval: Duration::from_millis(1),
        pop_log: false,
        ..StorageConfig::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_atomic_operation_applies_to_the_value_in_redb_when_the_window_has_none() {
    let dir = tempfile::tempdir().unwrap();
    let log = Arc::new(MemoryLog::new(LogId(1), Version(0)));
    let config = StorageConfig {
        window_versions: 0,
        flush_interval: Duration::from_secs(3600),
        ..StorageConfig::default()
    };
    let storage = open(&dir.path().join("s.redb"), log.clone(), config).await;
    let set = |k: &str, v: &[u8]| Mutation::Set {
        key: Bytes::copy_from_slice(k.as_bytes()),
        value: Bytes::copy_from_slice(v),
    };
    push(
        &log,
        0,
        10,
        &[
            set("c", &40u64.to_le_bytes()),
            set("m", &[7]),
            set("x", &[9]),
        ],
    )
    .await;
    storage.advance_committed(Version(10));
    wait_applied(&storage, Version(10)).await;
    storage.flush().await.unwrap();
    assert_eq!(storage.durable_version().await.unwrap(), Version(10));
    assert_eq!(
        storage.window_len().unwrap(),
        0,
        "every value is in redb only"
    );

    push(
        &log,
        10,
        20,
        &[
            // From redb: 40 + 2, then 42 + 1 from the window, within one version.
            add("c", 2),
            add("c", 1),
            // Max and min against redb's value, the operand's length setting the result's.
            atomic(AtomicOp::Max, "m", &[5, 0]),
            atomic(AtomicOp::Min, "x", &[3]),
            // A key nobody wrote: zero for an add, the operand for a min.
            add("new", 5),
            atomic(AtomicOp::Min, "newmin", &[6]),
            // A clear earlier in the version: the value is missing.
            Mutation::Clear { key: "x".into() },
            atomic(AtomicOp::Max, "x", &[1]),
        ],
    )
    .await;
    wait_applied(&storage, Version(20)).await;
    let got = read_all(&storage, Version(20)).await;
    let expected: State = [
        ("c", 43u64.to_le_bytes().to_vec()),
        ("m", vec![7, 0]),
        ("new", 5u64.to_le_bytes().to_vec()),
        ("newmin", vec![6]),
        ("x", vec![1]),
    ]
    .into_iter()
    .map(|(k, v)| (Bytes::copy_from_slice(k.as_bytes()), Bytes::from(v)))
    .collect();
    assert_eq!(got, expected);
    // The old version still reads the old values: the results are ordinary sets at 20.
    assert_eq!(
        storage.get("c".into(), Version(10)).await.unwrap(),
        Some(Bytes::copy_from_slice(&40u64.to_le_bytes()))
    );

    // Once flushed, the results are what redb holds.
    storage.advance_committed(Version(20));
    storage.flush().await.unwrap();
    assert_eq!(storage.window_len().unwrap(), 0);
    assert_eq!(read_all(&storage, Version(20)).await, expected);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_applies_only_the_atomic_operations_of_its_shards() {
    let dir = tempfile::tempdir().unwrap();
    let log = Arc::new(MemoryLog::new(LogId(1), Version(0)));
    let shard = KeyRange::new("m", "n").unwrap();
    let storage = RedbStorage::open(
        &dir.path().join("s.redb"),
        vec![shard.clone()],
        log.clone(),
        busy(),
    )
    .await
    .unwrap();
    push(&log, 0, 1, &[add("a", 1), add("m1", 1), add("z", 1)]).await;
    push(&log, 1, 2, &[add("a", 1), add("m1", 1)]).await;
    wait_applied(&storage, Version(2)).await;
    let got = storage
        .get_range(shard, Version(2), 10, false)
        .await
        .unwrap()
        .entries;
    assert_eq!(
        got,
        vec![(
            Bytes::from("m1"),
            Bytes::copy_from_slice(&2u64.to_le_bytes())
        )]
    );
    assert_eq!(storage.window_len().unwrap(), 2);
}

/// A batch for `version`: mostly atomic operations on a few counters, now and then a set, a
/// clear or a range clear of them.
fn batch(rng: &mut SplitMix64, version: u64) -> Vec<Mutation> {
    let key = |rng: &mut SplitMix64| format!("k{}", rng.below(6));
    (0..=rng.below(4))
        .map(|_| match rng.below(12) {
            0 => Mutation::Set {
                key: key(rng).into(),
                value: Bytes::from(version.to_le_bytes()[..1 + rng.below(3) as usize].to_vec()),
            },
            1 => Mutation::Clear {
                key: key(rng).into(),
            },
            2 => Mutation::ClearRange {
                range: KeyRange::new("k2", "k4").unwrap(),
            },
            3 | 4 => {
                let operand = rng.next_u64().to_le_bytes();
                atomic(
                    AtomicOp::Max,
                    &key(rng),
                    &operand[..1 + rng.below(4) as usize],
                )
            }
            5 | 6 => {
                let operand = rng.next_u64().to_le_bytes();
                atomic(
                    AtomicOp::Min,
                    &key(rng),
                    &operand[..1 + rng.below(4) as usize],
                )
            }
            _ => add(&key(rng), 1 + rng.below(1_000)),
        })
        .collect()
}

/// Pushes versions `first..=last`, one batch each, applying them to `state`.
async fn extend(log: &MemoryLog, state: &mut State, rng: &mut SplitMix64, first: u64, last: u64) {
    for v in first..=last {
        let mutations = batch(rng, v);
        for m in &mutations {
            strata_testkit::model::apply(state, m);
        }
        push(log, v - 1, v, &mutations).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replay_after_a_restart_recomputes_the_same_values_from_the_durable_state() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("s.redb");
    let log = Arc::new(MemoryLog::new(LogId(1), Version(0)));
    let mut rng = SplitMix64(11);
    let mut model = State::new();
    let mut at_300 = State::new();

    // 400 versions, forty windows, flushed as they go up to the committed version 300.
    let storage = open(&path, log.clone(), busy()).await;
    for last in (20..=400).step_by(20) {
        extend(&log, &mut model, &mut rng, last - 19, last).await;
        if last == 300 {
            at_300 = model.clone();
        }
        if last <= 300 {
            storage.advance_committed(Version(last));
        }
        wait_applied(&storage, Version(last)).await;
        // Each step reads what the model says, whether its keys were in the window or not.
        assert_eq!(read_all(&storage, Version(last)).await, model, "at {last}");
    }
    storage.flush().await.unwrap();
    let durable = storage.durable_version().await.unwrap();
    assert_eq!(durable, Version(300));
    let before = read_all(&storage, Version(400)).await;
    assert_eq!(before, model);
    storage.close().await;

    // The restart replays 301..=400 from the log over what redb holds at 300.
    let storage = open(&path, log.clone(), busy()).await;
    assert_eq!(storage.durable_version().await.unwrap(), Version(300));
    assert_eq!(read_all(&storage, Version(300)).await, at_300);
    wait_applied(&storage, Version(400)).await;
    assert_eq!(read_all(&storage, Version(400)).await, before);

    // So does a roll back of what was applied in memory only, from the same log.
    storage.roll_back(Version(350)).await.unwrap();
    wait_applied(&storage, Version(400)).await;
    assert_eq!(read_all(&storage, Version(400)).await, before);

    // And the history goes on from there, committed and flushed this time.
    extend(&log, &mut model, &mut rng, 401, 600).await;
    storage.advance_committed(Version(600));
    wait_applied(&storage, Version(600)).await;
    storage.flush().await.unwrap();
    assert_eq!(
        storage.durable_version().await.unwrap(),
        Version(590),
        "flushed up to the window"
    );
    assert_eq!(read_all(&storage, Version(600)).await, model);
    storage.close().await;
    let storage = open(&path, log, busy()).await;
    wait_applied(&storage, Version(600)).await;
    assert_eq!(read_all(&storage, Version(600)).await, model);
}
