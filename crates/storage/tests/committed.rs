//! Durable only what is known committed: a log that runs ahead of the others (batches that
//! reached it but not every log, so were never committed) is applied in memory but never made
//! durable, so recovery can roll it back; and `close` really lets go of the database.
//!
//! Histories run many times longer than the (shrunken) window, so flushes have work to do.

// Test helpers may unwrap: a panic there is a failed test.
#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use strata_core::{
    AtomicOp, ErrorKind, KeyRange, LogId, LogServer, Mutation, StorageServer, Version,
};
use strata_storage::{RedbStorage, StorageConfig};
use strata_testkit::MemoryLog;

type State = BTreeMap<Bytes, Bytes>;

/// The state after each version, oldest first.
type History = Vec<(Version, State)>;

fn everything() -> KeyRange {
    KeyRange::new("", "\u{7f}").unwrap()
}

/// A small deterministic generator, so a failure reproduces.
struct Lcg(u64);

impl Lcg {
    fn below(&mut self, n: u64) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        (self.0 >> 33) % n
    }

    fn key(&mut self, keys: u64) -> Bytes {
        Bytes::from(format!("k{:03}", self.below(keys)))
    }
}

/// One to three sets, clears, range clears and atomic operations over `keys` keys, with values
/// tagged `tag` so that two histories over the same versions differ.
fn batch(rng: &mut Lcg, keys: u64, tag: &str, version: u64) -> Vec<Mutation> {
    (0..=rng.below(3))
        .map(|i| match rng.below(8) {
            0 => Mutation::Clear { key: rng.key(keys) },
            1 => {
                let (a, b) = (rng.key(keys), rng.key(keys));
                let (lo, hi) = if a <= b { (a, b) } else { (b, a) };
                let hi = Bytes::from([hi.as_ref(), b"\0"].concat());
                Mutation::ClearRange {
                    range: KeyRange::new(lo, hi).unwrap(),
                }
            }
            2 => Mutation::Atomic {
                op: AtomicOp::ALL[rng.below(3) as usize],
                key: rng.key(keys),
                operand: Bytes::from(format!("{tag}{i}")),
            },
            _ => Mutation::Set {
                key: rng.key(keys),
                value: Bytes::from(format!("{tag}{version}.{i}")),
            },
        })
        .collect()
}

async fn push(log: &MemoryLog, previous: Version, version: Version, mutations: &[Mutation]) {
    log.push_mutations(previous, version, mutations)
        .await
        .unwrap();
}

/// Pushes versions after the last one of `history` up to `last`, one batch per version, and
/// records what each leaves.
async fn extend(log: &MemoryLog, history: &mut History, rng: &mut Lcg, tag: &str, last: u64) {
    let (mut version, mut state) = history.last().cloned().unwrap();
    while version.0 < last {
        let next = Version(version.0 + 1);
        let mutations = batch(rng, 40, tag, next.0);
        for m in &mutations {
            strata_testkit::model::apply(&mut state, m);
        }
        push(log, version, next, &mutations).await;
        history.push((next, state.clone()));
        version = next;
    }
}

/// The state at `version`: after the newest batch at or before it.
fn at(history: &History, version: Version) -> State {
    history
        .iter()
        .rev()
        .find(|(v, _)| *v <= version)
        .map(|(_, s)| s.clone())
        .unwrap()
}

/// Reads everything at `version`, by range and key by key, and compares with the model.
async fn assert_reads(storage: &RedbStorage, history: &History, version: Version) {
    let expected = at(history, version);
    let got = storage
        .get_range(everything(), version, usize::MAX, false)
        .await
        .unwrap();
    let want: Vec<(Bytes, Bytes)> = expected.clone().into_iter().collect();
    assert_eq!(got.entries, want, "range at {version}");
    for k in 0..40 {
        let key = Bytes::from(format!("k{k:03}"));
        let got = storage.get(key.clone(), version).await.unwrap();
        assert_eq!(got, expected.get(&key).cloned(), "{key:?} at {version}");
    }
}

async fn wait_applied(storage: &RedbStorage, version: Version) {
    // A bound only so a broken server fails the test instead of hanging it.
    tokio::time::timeout(Duration::from_secs(60), storage.wait_applied(version))
        .await
        .unwrap()
        .unwrap();
}

async fn open(path: &Path, log: Arc<MemoryLog>, config: StorageConfig) -> RedbStorage {
    RedbStorage::open(path, vec![everything()], log, config)
        .await
        .unwrap()
}

fn start() -> History {
    vec![(Version::ZERO, State::new())]
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

/// Flushes only when asked, keeps ten versions in memory.
fn manual() -> StorageConfig {
    StorageConfig {
        window_versions: 10,
        flush_interval: Duration::from_secs(3600),
        ..StorageConfig::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn durable_never_passes_the_known_committed_version_while_the_log_runs_ahead() {
    let dir = tempfile::tempdir().unwrap();
    let log = Arc::new(MemoryLog::new(LogId(1), Version(0)));
    let storage = open(&dir.path().join("s.redb"), log.clone(), busy()).await;
    let mut history = start();
    let mut rng = Lcg(1);

    // Committed batches: a one-log user reports each acknowledged push.
    for last in 1..=100 {
        extend(&log, &mut history, &mut rng, "c", last).await;
        storage.advance_committed(Version(last));
    }
    // The log runs ahead: these never reached the other logs, so they are not committed.
    for last in (120..=400).step_by(20) {
        extend(&log, &mut history, &mut rng, "a", last).await;
        let durable = storage.durable_version().await.unwrap();
        assert!(durable <= Version(100), "durable {durable}");
    }
    wait_applied(&storage, Version(400)).await;
    storage.flush().await.unwrap();

    // Everything applied, 390 versions older than the window, yet only the committed 100 are
    // on disk.
    assert_eq!(storage.applied_version().await.unwrap(), Version(400));
    assert_eq!(storage.committed_version(), Version(100));
    assert_eq!(storage.durable_version().await.unwrap(), Version(100));
    // Reads of the versions the log ran ahead with still work, from memory.
    assert_reads(&storage, &history, Version(100)).await;
    assert_reads(&storage, &history, Version(250)).await;
    assert_reads(&storage, &history, Version(400)).await;

    // Once they are known committed, they are flushed as usual, up to the window.
    storage.advance_committed(Version(400));
    storage.flush().await.unwrap();
    assert_eq!(storage.durable_version().await.unwrap(), Version(390));
    assert_reads(&storage, &history, Version(395)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn roll_back_to_the_committed_version_discards_what_the_log_ran_ahead_with() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("s.redb");
    let log = Arc::new(MemoryLog::new(LogId(1), Version(0)));
    let storage = open(&path, log.clone(), busy()).await;
    let mut history = start();
    let mut rng = Lcg(2);
    extend(&log, &mut history, &mut rng, "c", 150).await;
    storage.advance_committed(Version(150));
    extend(&log, &mut history, &mut rng, "a", 500).await;
    wait_applied(&storage, Version(500)).await;
    storage.flush().await.unwrap();

    // Recovery: the other log ends at 150, so 150 is the recovery version.
    storage.roll_back(Version(150)).await.unwrap();
    assert_eq!(storage.applied_version().await.unwrap(), Version(150));
    assert_eq!(storage.committed_version(), Version(150));
    assert_reads(&storage, &history, Version(150)).await;
    storage.close().await;

    // After a restart the durable data holds exactly the committed history.
    history.truncate(151);
    let new_log = Arc::new(MemoryLog::new(LogId(2), Version(150)));
    let storage = open(&path, new_log.clone(), busy()).await;
    storage.roll_back(Version(150)).await.unwrap();
    assert_eq!(storage.durable_version().await.unwrap(), Version(150));
    assert_eq!(storage.committed_version(), Version(150));
    assert_reads(&storage, &history, Version(150)).await;
    let err = storage.get("k000".into(), Version(149)).await.unwrap_err();
    assert!(matches!(err.kind, ErrorKind::TooOld { .. }), "{err}");

    // The new generation writes a different history on top of it.
    extend(&new_log, &mut history, &mut rng, "n", 400).await;
    storage.advance_committed(Version(400));
    wait_applied(&storage, Version(400)).await;
    storage.flush().await.unwrap();
    assert_eq!(storage.durable_version().await.unwrap(), Version(390));
    assert_reads(&storage, &history, Version(390)).await;
    assert_reads(&storage, &history, Version(400)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_known_committed_version_only_rises_except_by_open_and_roll_back() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("s.redb");
    let log = Arc::new(MemoryLog::new(LogId(1), Version(0)));
    let storage = open(&path, log.clone(), manual()).await;
    assert_eq!(storage.committed_version(), Version(0));
    storage.advance_committed(Version(50));
    storage.advance_committed(Version(20));
    assert_eq!(storage.committed_version(), Version(50));

    let mut history = start();
    let mut rng = Lcg(3);
    extend(&log, &mut history, &mut rng, "c", 200).await;
    storage.advance_committed(Version(120));
    // A late report (another proxy, an older poll) must not lower it.
    storage.advance_committed(Version(60));
    assert_eq!(storage.committed_version(), Version(120));
    wait_applied(&storage, Version(200)).await;
    storage.flush().await.unwrap();
    assert_eq!(storage.durable_version().await.unwrap(), Version(120));

    // Known committed beyond what is applied: the window still bounds the flush.
    storage.advance_committed(Version(1_000_000));
    storage.flush().await.unwrap();
    assert_eq!(storage.durable_version().await.unwrap(), Version(190));
    storage.close().await;

    // At open the durable version is all that is known committed.
    let storage = open(&path, log.clone(), manual()).await;
    assert_eq!(storage.committed_version(), Version(190));
    wait_applied(&storage, Version(200)).await;
    storage.flush().await.unwrap();
    assert_eq!(storage.durable_version().await.unwrap(), Version(190));

    // A roll back makes its version committed (recovery chose it), so it can become durable,
    // and nothing the new generation adds above it is, until reported.
    let new_log = Arc::new(MemoryLog::new(LogId(2), Version(195)));
    storage.follow(new_log.clone(), Version(195)).unwrap();
    assert_eq!(storage.committed_version(), Version(195));
    history.truncate(196);
    extend(&new_log, &mut history, &mut rng, "n", 400).await;
    wait_applied(&storage, Version(400)).await;
    storage.flush().await.unwrap();
    assert_eq!(storage.durable_version().await.unwrap(), Version(195));
    assert_reads(&storage, &history, Version(195)).await;
    assert_reads(&storage, &history, Version(400)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_log_is_popped_only_below_what_is_durable_and_committed() {
    let dir = tempfile::tempdir().unwrap();
    let log = Arc::new(MemoryLog::new(LogId(1), Version(0)));
    let storage = open(&dir.path().join("s.redb"), log.clone(), manual()).await;
    let mut history = start();
    let mut rng = Lcg(4);
    extend(&log, &mut history, &mut rng, "c", 100).await;
    storage.advance_committed(Version(100));
    extend(&log, &mut history, &mut rng, "a", 300).await;
    wait_applied(&storage, Version(300)).await;
    storage.flush().await.unwrap();
    assert_eq!(storage.durable_version().await.unwrap(), Version(100));

    // Popped below the durable version, and no further: recovery may need every entry after
    // it, committed or not, to replay or to roll back.
    let err = log.pull(Version(0), 1).await.unwrap_err();
    assert!(matches!(err.kind, ErrorKind::TooOld { .. }), "{err}");
    let kept = log.pull(Version(99), 1_000).await.unwrap();
    assert_eq!(kept.first().map(|e| e.version), Some(Version(100)));
    assert_eq!(kept.len(), 201);

    // With `pop_log` off the server leaves the log to the caller.
    let other = Arc::new(MemoryLog::new(LogId(2), Version(0)));
    let config = StorageConfig {
        pop_log: false,
        ..manual()
    };
    let storage = open(&dir.path().join("t.redb"), other.clone(), config).await;
    let mut history = start();
    extend(&other, &mut history, &mut rng, "c", 100).await;
    storage.advance_committed(Version(100));
    wait_applied(&storage, Version(100)).await;
    storage.flush().await.unwrap();
    assert_eq!(storage.durable_version().await.unwrap(), Version(90));
    assert_eq!(other.pull(Version(0), 1_000).await.unwrap().len(), 100);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn close_waits_for_a_running_flush_so_the_path_reopens_at_once() {
    const ROUNDS: u64 = 30;
    const VERSIONS: u64 = 100;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("s.redb");
    let log = Arc::new(MemoryLog::new(LogId(1), Version(0)));
    let config = StorageConfig {
        window_versions: 2,
        flush_interval: Duration::from_millis(1),
        pop_log: true,
        ..StorageConfig::default()
    };
    let mut history = start();
    let mut rng = Lcg(5);
    let mut storage = Arc::new(open(&path, log.clone(), config).await);
    for round in 0..ROUNDS {
        let base = round * VERSIONS;
        // Each push is acknowledged by the only log, so it is committed at once.
        for last in (base + 5..=base + VERSIONS).step_by(5) {
            extend(&log, &mut history, &mut rng, "c", last).await;
            storage.advance_committed(Version(last));
        }
        let last = Version(base + VERSIONS);
        wait_applied(&storage, last).await;
        // One more flush racing the close, besides the background ones.
        let racing = tokio::spawn({
            let storage = storage.clone();
            async move { storage.flush().await }
        });
        tokio::task::yield_now().await;
        storage.close().await;

        let reopened = RedbStorage::open(&path, vec![everything()], log.clone(), config).await;
        let reopened = match reopened {
            Ok(s) => Arc::new(s),
            Err(e) => panic!("round {round}: reopening right after close failed: {e}"),
        };
        // The racing flush either finished before the close or found the server closed.
        let _ = racing.await.unwrap();
        storage = reopened;
        let durable = storage.durable_version().await.unwrap();
        assert!(durable <= last, "round {round}: durable {durable}");
        assert_eq!(storage.committed_version(), durable);
        storage.advance_committed(last);
        wait_applied(&storage, last).await;
        assert_reads(&storage, &history, last).await;
    }
    // The flushes really happened: most of the history is on disk.
    storage.flush().await.unwrap();
    assert_eq!(
        storage.durable_version().await.unwrap(),
        Version(ROUNDS * VERSIONS - 2)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn overlapping_flushes_never_put_older_values_back() {
    let dir = tempfile::tempdir().unwrap();
    let log = Arc::new(MemoryLog::new(LogId(1), Version(0)));
    // A one-version window and a periodic flush that keeps running, besides the ones asked for
    // below: flushes overlap all the time, each with a newer target than the one before.
    let config = StorageConfig {
        window_versions: 1,
        flush_interval: Duration::from_micros(100),
        pop_log: false,
        ..StorageConfig::default()
    };
    let storage = Arc::new(open(&dir.path().join("s.redb"), log.clone(), config).await);
    let mut history = start();
    let mut rng = Lcg(6);
    let mut flushes = tokio::task::JoinSet::new();
    let mut durable = Version(0);
    for last in 1..=1_000u64 {
        extend(&log, &mut history, &mut rng, "c", last).await;
        storage.advance_committed(Version(last));
        wait_applied(&storage, Version(last)).await;
        flushes.spawn({
            let storage = storage.clone();
            async move { storage.flush().await }
        });
        if last % 4 == 0 {
            while let Some(flushed) = flushes.join_next().await {
                flushed.unwrap().unwrap();
            }
            let now = storage.durable_version().await.unwrap();
            assert!(now >= durable, "durable went back from {durable} to {now}");
            durable = now;
            // Keys last written below the durable version come from redb.
            assert_reads(&storage, &history, Version(last)).await;
        }
    }
    assert!(durable >= Version(990), "durable {durable}");
}
