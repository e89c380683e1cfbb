//! The transaction builder against fakes of the stages it talks to: a sequencer with one read
//! version, a commit proxy that keeps what it is sent, and storage servers over a map that
//! answer range reads in pages of a few pairs, so that merges cross page boundaries.

#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::sync::Mutex;

use async_trait::async_trait;
use bytes::Bytes;
use strata_core::{
    Epoch, KEY_BYTES_MAX, TRANSACTION_BYTES_MAX, VALUE_BYTES_MAX, VersionPair, WireError,
};

use super::*;

mod atomic;

const READ_VERSION: Version = Version(100);

/// Hands out one read version, and counts how often it was asked; commits never reach it
/// (the fake proxy answers them).
#[derive(Default)]
struct FixedSequencer {
    asked: AtomicUsize,
}

#[async_trait]
impl Sequencer for FixedSequencer {
    fn epoch(&self) -> Epoch {
        Epoch(1)
    }

    async fn next_commit_version(&self, _epoch: Epoch) -> Result<VersionPair> {
        Err(error(ErrorKind::Unavailable("not in this test".into())))
    }

    async fn report_committed(&self, _epoch: Epoch, _version: Version) -> Result<()> {
        Err(error(ErrorKind::Unavailable("not in this test".into())))
    }

    async fn read_version(&self) -> Result<Version> {
        self.asked.fetch_add(1, Ordering::SeqCst);
        // Another caller may start asking meanwhile (concurrent reads).
        tokio::task::yield_now().await;
        Ok(READ_VERSION)
    }
}

/// Keeps what it is sent and commits it at once.
#[derive(Default)]
struct KeepingProxy {
    sent: Mutex<Vec<Bytes>>,
}

impl KeepingProxy {
    /// The transactions sent so far, decoded.
    fn sent(&self) -> Vec<strata_core::Transaction> {
        self.sent
            .lock()
            .unwrap()
            .iter()
            .map(|b| strata_core::Transaction::decode(b).unwrap())
            .collect()
    }
}

#[async_trait]
impl CommitProxy for KeepingProxy {
    fn epoch(&self) -> Epoch {
        Epoch(1)
    }

    async fn commit(&self, transaction: Bytes) -> Result<Version> {
        self.sent.lock().unwrap().push(transaction);
        Ok(READ_VERSION.saturating_add(1))
    }
}

/// A storage server over a map, for one shard, answering at most `page` pairs per range read
/// (with `more` set), whatever the limit asked. It counts the reads it answers.
struct MapStorage {
    shard: KeyRange,
    data: BTreeMap<Key, Value>,
    page: usize,
    gets: AtomicUsize,
    range_reads: AtomicUsize,
}

impl MapStorage {
    fn new(shard: KeyRange, data: &BTreeMap<Key, Value>, page: usize) -> MapStorage {
        MapStorage {
            data: data
                .iter()
                .filter(|(k, _)| shard.contains(k))
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
            shard,
            page,
            gets: AtomicUsize::new(0),
            range_reads: AtomicUsize::new(0),
        }
    }
}

#[async_trait]
impl StorageServer for MapStorage {
    fn shards(&self) -> Vec<KeyRange> {
        vec![self.shard.clone()]
    }

    async fn get(&self, key: Key, version: Version) -> Result<Option<Value>> {
        assert_eq!(version, READ_VERSION);
        assert!(self.shard.contains(&key), "routed to the wrong shard");
        self.gets.fetch_add(1, Ordering::SeqCst);
        Ok(self.data.get(&key).cloned())
    }

    async fn get_range(
        &self,
        range: KeyRange,
        version: Version,
        limit: usize,
        reverse: bool,
    ) -> Result<RangeRead> {
        assert_eq!(version, READ_VERSION);
        assert!(
            self.shard.begin() <= range.begin() && range.end() <= self.shard.end(),
            "a range read across shards"
        );
        self.range_reads.fetch_add(1, Ordering::SeqCst);
        let mut pairs: Vec<(Key, Value)> = self
            .data
            .range::<[u8], _>((
                Bound::Included(range.begin().as_ref()),
                Bound::Excluded(range.end().as_ref()),
            ))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        if reverse {
            pairs.reverse();
        }
        let take = limit.min(self.page);
        let more = pairs.len() > take;
        pairs.truncate(take);
        Ok(RangeRead {
            entries: pairs,
            more,
        })
    }

    async fn applied_version(&self) -> Result<Version> {
        Ok(READ_VERSION)
    }

    async fn durable_version(&self) -> Result<Version> {
        Ok(READ_VERSION)
    }

    async fn roll_back(&self, _version: Version) -> Result<()> {
        Ok(())
    }
}

fn key(k: &str) -> Key {
    Key::copy_from_slice(k.as_bytes())
}

fn range(begin: &str, end: &str) -> KeyRange {
    KeyRange::new(key(begin), key(end)).unwrap()
}

/// The whole key space the fakes serve.
fn everything() -> KeyRange {
    KeyRange::new("", Bytes::from_static(b"\xff")).unwrap()
}

/// `a` to `j`, each holding `stored-<key>`.
fn stored() -> BTreeMap<Key, Value> {
    "abcdefghij"
        .chars()
        .map(|c| (key(&c.to_string()), Value::from(format!("stored-{c}"))))
        .collect()
}

struct Cluster {
    db: Database,
    sequencer: Arc<FixedSequencer>,
    storage: Vec<Arc<MapStorage>>,
    proxy: Arc<KeepingProxy>,
}

impl Cluster {
    /// One storage server per shard, split at `splits`, each answering pages of `page` pairs.
    fn new(splits: &[&str], page: usize) -> Cluster {
        let data = stored();
        let mut bounds: Vec<Key> = vec![Key::new()];
        bounds.extend(splits.iter().map(|s| key(s)));
        bounds.push(Bytes::from_static(b"\xff"));
        let storage: Vec<Arc<MapStorage>> = bounds
            .windows(2)
            .map(|w| {
                let shard = KeyRange::new(w[0].clone(), w[1].clone()).unwrap();
                Arc::new(MapStorage::new(shard, &data, page))
            })
            .collect();
        let proxy = Arc::new(KeepingProxy::default());
        let sequencer = Arc::new(FixedSequencer::default());
        let db = Database::new(
            sequencer.clone(),
            vec![proxy.clone()],
            storage
                .iter()
                .map(|s| s.clone() as Arc<dyn StorageServer>)
                .collect(),
            RetryConfig::default(),
        )
        .unwrap();
        Cluster {
            db,
            sequencer,
            storage,
            proxy,
        }
    }

    /// How often the transactions asked for a read version.
    fn asked(&self) -> usize {
        self.sequencer.asked.load(Ordering::SeqCst)
    }

    fn gets(&self) -> usize {
        self.storage
            .iter()
            .map(|s| s.gets.load(Ordering::SeqCst))
            .sum()
    }

    fn range_reads(&self) -> usize {
        self.storage
            .iter()
            .map(|s| s.range_reads.load(Ordering::SeqCst))
            .sum()
    }

    /// Commits `tx` (with a write, so that it is sent) and returns what the proxy got.
    async fn sent(&self, tx: &Transaction) -> strata_core::Transaction {
        tx.set(key("zz-marker"), Value::from("x"));
        tx.commit().await.unwrap();
        self.proxy.sent().pop().unwrap()
    }
}

fn value(v: &str) -> Option<Value> {
    Some(Value::copy_from_slice(v.as_bytes()))
}

#[tokio::test]
async fn a_transaction_that_only_writes_commits_without_a_read_version() {
    let cluster = Cluster::new(&[], 100);
    let tx = cluster.db.begin();
    tx.set(key("a"), Value::from("mine"));
    tx.clear_range(range("c", "e"));
    tx.atomic_add(key("n"), Value::from_static(&[1]));
    tx.commit().await.unwrap();
    assert_eq!(
        cluster.asked(),
        0,
        "nothing read: no read version asked for"
    );
    let sent = cluster.proxy.sent().pop().unwrap();
    assert_eq!(sent.read_version, None);
    assert!(sent.read_conflicts.is_empty());
    assert_eq!(sent.write_conflicts.len(), 3);
}

#[tokio::test]
async fn concurrent_first_reads_share_one_read_version_which_the_commit_sends() {
    let cluster = Cluster::new(&["e"], 100);
    let tx = cluster.db.begin();
    let (ka, kf) = (key("a"), key("f"));
    let (a, f) = tokio::join!(tx.get(&ka), tx.snapshot_get(&kf));
    assert_eq!(a.unwrap(), value("stored-a"));
    assert_eq!(f.unwrap(), value("stored-f"));
    tx.get_range(&range("b", "d"), 10, false).await.unwrap();
    assert_eq!(cluster.asked(), 1, "one read version for every read");
    let sent = cluster.sent(&tx).await;
    assert_eq!(sent.read_version, Some(READ_VERSION));
    assert_eq!(cluster.asked(), 1);
}

#[tokio::test]
async fn a_get_sees_the_transactions_own_sets_and_clears_without_asking_storage() {
    let cluster = Cluster::new(&[], 100);
    let tx = cluster.db.begin();
    assert_eq!(tx.read_version().await.unwrap(), READ_VERSION);

    tx.set(key("a"), Value::from("mine"));
    tx.set(key("new"), Value::from("fresh"));
    tx.clear(key("b"));
    tx.clear_range(range("c", "e"));
    assert_eq!(tx.get(&key("a")).await.unwrap(), value("mine"));
    assert_eq!(tx.get(&key("new")).await.unwrap(), value("fresh"));
    assert_eq!(tx.get(&key("b")).await.unwrap(), None);
    assert_eq!(tx.get(&key("c")).await.unwrap(), None);
    assert_eq!(tx.get(&key("d")).await.unwrap(), None);
    assert_eq!(cluster.gets(), 0, "own writes answer without storage");

    // Outside every own write: storage answers.
    assert_eq!(tx.get(&key("e")).await.unwrap(), value("stored-e"));
    assert_eq!(cluster.gets(), 1);

    // A set after a range clear shows through it; a clear after a set wins.
    tx.set(key("c"), Value::from("again"));
    assert_eq!(tx.get(&key("c")).await.unwrap(), value("again"));
    tx.clear(key("a"));
    assert_eq!(tx.get(&key("a")).await.unwrap(), None);
    // A range clear drops earlier sets inside it.
    tx.clear_range(range("a", "z"));
    assert_eq!(tx.get(&key("new")).await.unwrap(), None);
    assert_eq!(tx.get(&key("c")).await.unwrap(), None);

    // Snapshot reads ignore the transaction's writes.
    assert_eq!(tx.snapshot_get(&key("a")).await.unwrap(), value("stored-a"));
    assert_eq!(cluster.gets(), 2);
}

#[tokio::test]
async fn reads_add_read_conflicts_writes_add_write_conflicts_and_snapshot_reads_add_none() {
    let cluster = Cluster::new(&["e"], 100);
    let tx = cluster.db.begin();
    tx.get(&key("a")).await.unwrap();
    tx.get(&key("missing")).await.unwrap();
    tx.snapshot_get(&key("b")).await.unwrap();
    tx.snapshot_get_range(&range("c", "d"), 10, false)
        .await
        .unwrap();
    // Answered by its own write: nothing read, no conflict.
    tx.set(key("f"), Value::from("mine"));
    tx.get(&key("f")).await.unwrap();
    tx.clear(key("g"));
    tx.clear_range(range("h", "i"));
    // All of a range that held fewer pairs than the limit.
    tx.get_range(&range("i", "k"), 10, false).await.unwrap();

    let sent = cluster.sent(&tx).await;
    assert_eq!(sent.read_version, Some(READ_VERSION));
    assert_eq!(
        sent.read_conflicts,
        vec![
            KeyRange::single(key("a")),
            KeyRange::single(key("missing")),
            range("i", "k"),
        ]
    );
    assert_eq!(
        sent.write_conflicts,
        vec![
            KeyRange::single(key("f")),
            KeyRange::single(key("g")),
            range("h", "i"),
            KeyRange::single(key("zz-marker")),
        ]
    );
    assert_eq!(
        sent.mutations,
        vec![
            Mutation::Set {
                key: key("f"),
                value: Value::from("mine"),
            },
            Mutation::Clear { key: key("g") },
            Mutation::ClearRange {
                range: range("h", "i"),
            },
            Mutation::Set {
                key: key("zz-marker"),
                value: Value::from("x"),
            },
        ]
    );
}

#[tokio::test]
async fn a_range_read_cut_by_its_limit_conflicts_only_up_to_its_last_key() {
    let cluster = Cluster::new(&["e"], 2);
    let tx = cluster.db.begin();
    let forward = tx.get_range(&range("b", "h"), 3, false).await.unwrap();
    assert_eq!(forward.last().unwrap().0, key("d"));
    let reverse = tx.get_range(&range("b", "h"), 3, true).await.unwrap();
    assert_eq!(reverse.last().unwrap().0, key("e"));
    let sent = cluster.sent(&tx).await;
    assert_eq!(
        sent.read_conflicts,
        vec![
            // Up to and including `d`.
            KeyRange::new(key("b"), KeyRange::single(key("d")).end().clone()).unwrap(),
            // From `e` to the end.
            range("e", "h"),
        ]
    );
}

/// The transaction's writes used by the range tests: an overwrite, a new key, a point clear, a
/// range clear with a set inside it, and a clear of a key storage never had.
fn write_some(tx: &Transaction) {
    tx.set(key("b"), Value::from("mine-b"));
    tx.set(key("cc"), Value::from("mine-cc"));
    tx.clear(key("d"));
    tx.clear_range(range("f", "i"));
    tx.set(key("g"), Value::from("mine-g"));
    tx.clear(key("zzz"));
}

/// What `write_some` over `stored` reads as.
fn model() -> BTreeMap<Key, Value> {
    let mut m = stored();
    m.insert(key("b"), Value::from("mine-b"));
    m.insert(key("cc"), Value::from("mine-cc"));
    m.remove(&key("d"));
    m.retain(|k, _| !range("f", "i").contains(k));
    m.insert(key("g"), Value::from("mine-g"));
    m
}

/// The pairs of `model` in `r`, in order, at most `limit`.
fn expected(r: &KeyRange, limit: usize, reverse: bool) -> Vec<(Key, Value)> {
    let mut pairs: Vec<(Key, Value)> = model().into_iter().filter(|(k, _)| r.contains(k)).collect();
    if reverse {
        pairs.reverse();
    }
    pairs.truncate(limit);
    pairs
}

#[tokio::test]
async fn a_range_read_merges_own_writes_over_storage_pages_in_both_directions_at_every_limit() {
    // Pages of two pairs and two shards: every read crosses page and shard boundaries.
    let cluster = Cluster::new(&["e"], 2);
    let tx = cluster.db.begin();
    write_some(&tx);
    for r in [
        everything(),
        range("b", "h"),
        range("c", "g"),
        range("f", "i"),
    ] {
        for reverse in [false, true] {
            for limit in 1..=13 {
                assert_eq!(
                    tx.get_range(&r, limit, reverse).await.unwrap(),
                    expected(&r, limit, reverse),
                    "{r} limit {limit} reverse {reverse}"
                );
            }
        }
    }
    // Snapshot range reads see storage alone, across the same pages.
    let stored: Vec<(Key, Value)> = stored().into_iter().rev().collect();
    assert_eq!(
        tx.snapshot_get_range(&everything(), 100, true)
            .await
            .unwrap(),
        stored
    );
}

#[tokio::test]
async fn a_range_clear_over_a_whole_page_does_not_end_the_read_early() {
    // Pages of two pairs; the first six keys are cleared locally, so the first pages add
    // nothing and the read must go on to the pages after them.
    let cluster = Cluster::new(&[], 2);
    let tx = cluster.db.begin();
    tx.clear_range(range("a", "g"));
    assert_eq!(
        tx.get_range(&everything(), 2, false).await.unwrap(),
        vec![
            (key("g"), Value::from("stored-g")),
            (key("h"), Value::from("stored-h")),
        ]
    );
    assert_eq!(
        tx.get_range(&everything(), 1, true).await.unwrap(),
        vec![(key("j"), Value::from("stored-j"))]
    );
    assert!(cluster.range_reads() >= 4, "the read went past the page");
}

#[tokio::test]
async fn a_range_read_of_limit_zero_is_empty_reads_nothing_and_conflicts_with_nothing() {
    let cluster = Cluster::new(&[], 100);
    let tx = cluster.db.begin();
    // A write inside the range: read-your-writes must not sneak it into an empty answer.
    tx.set(key("b0"), Value::from("mine"));
    for reverse in [false, true] {
        assert_eq!(
            tx.get_range(&everything(), 0, reverse).await.unwrap(),
            vec![]
        );
        assert_eq!(
            tx.snapshot_get_range(&everything(), 0, reverse)
                .await
                .unwrap(),
            vec![]
        );
    }
    assert_eq!(cluster.range_reads(), 0);
    // Nothing was read, so nothing the transaction read can have changed.
    let sent = cluster.sent(&tx).await;
    assert_eq!(sent.read_conflicts, vec![]);

    // The same reads with a limit of one do read, through the transaction's own writes.
    let tx = cluster.db.begin();
    tx.set(key("0"), Value::from("mine"));
    let first = |k: &str, v: &str| vec![(key(k), Value::copy_from_slice(v.as_bytes()))];
    assert_eq!(
        tx.get_range(&everything(), 1, false).await.unwrap(),
        first("0", "mine")
    );
    assert_eq!(
        tx.get_range(&everything(), 1, true).await.unwrap(),
        first("j", "stored-j")
    );
}

/// The typed error a commit of `tx` fails with; the proxy must get nothing.
async fn refused(cluster: &Cluster, tx: &Transaction) -> WireError {
    let e = tx.commit().await.unwrap_err();
    assert_eq!(e.stage, Stage::TxnBuilder);
    assert!(cluster.proxy.sent.lock().unwrap().is_empty());
    match e.kind {
        ErrorKind::Wire(w) => w,
        other => panic!("not a wire error: {other}"),
    }
}

#[tokio::test]
async fn an_oversized_key_value_or_transaction_is_refused_with_its_typed_error() {
    let cluster = Cluster::new(&[], 100);

    let tx = cluster.db.begin();
    tx.set(Key::from(vec![b'k'; KEY_BYTES_MAX + 1]), Value::from("v"));
    assert!(matches!(
        refused(&cluster, &tx).await,
        WireError::KeyTooLarge { len, max, .. } if len == KEY_BYTES_MAX + 1 && max == KEY_BYTES_MAX
    ));

    let tx = cluster.db.begin();
    tx.set(key("k"), Value::from(vec![0; VALUE_BYTES_MAX + 1]));
    assert!(matches!(
        refused(&cluster, &tx).await,
        WireError::ValueTooLarge { len, max, .. }
            if len == VALUE_BYTES_MAX + 1 && max == VALUE_BYTES_MAX
    ));

    // Each value within its limit, all of them together over the transaction's.
    let tx = cluster.db.begin();
    for i in 0..=TRANSACTION_BYTES_MAX / VALUE_BYTES_MAX {
        tx.set(
            key(&format!("k{i:04}")),
            Value::from(vec![0; VALUE_BYTES_MAX]),
        );
    }
    assert!(matches!(
        refused(&cluster, &tx).await,
        WireError::TransactionTooLarge { max, .. } if max == TRANSACTION_BYTES_MAX
    ));

    // At the limits exactly, a transaction goes through.
    let tx = cluster.db.begin();
    tx.set(
        Key::from(vec![b'k'; KEY_BYTES_MAX]),
        Value::from(vec![0; VALUE_BYTES_MAX]),
    );
    tx.commit().await.unwrap();
    assert_eq!(cluster.proxy.sent().len(), 1);
}

/// Whether `r` is an `InvalidRequest`.
fn invalid<T>(r: Result<T>) -> bool {
    matches!(r, Err(e) if matches!(e.kind, ErrorKind::InvalidRequest(_)))
}

#[tokio::test]
async fn a_committed_transaction_refuses_reads_and_a_second_commit_and_drops_writes() {
    let cluster = Cluster::new(&[], 100);
    let tx = cluster.db.begin();
    tx.set(key("a"), Value::from("mine"));
    assert_eq!(tx.commit().await.unwrap(), READ_VERSION.saturating_add(1));
    assert!(invalid(tx.get(&key("a")).await));
    assert!(invalid(tx.get_range(&everything(), 0, false).await));
    assert!(invalid(tx.commit().await));
    tx.set(key("b"), Value::from("late"));
    assert_eq!(cluster.proxy.sent().len(), 1);

    // A transaction that wrote nothing commits at its read version without the proxy.
    let tx = cluster.db.begin();
    tx.get(&key("a")).await.unwrap();
    assert_eq!(tx.commit().await.unwrap(), READ_VERSION);
    assert_eq!(cluster.proxy.sent().len(), 1);
}

#[tokio::test]
async fn reads_outside_every_shard_are_wrong_shard() {
    let cluster = Cluster::new(&[], 100);
    let tx = cluster.db.begin();
    let outside = Key::from_static(b"\xff\x01");
    let e = tx.get(&outside).await.unwrap_err();
    assert!(matches!(e.kind, ErrorKind::WrongShard { .. }), "{e}");
}

/// Fails every commit with its error, counting the commits it gets.
struct FailingProxy(Error, AtomicUsize);

#[async_trait]
impl CommitProxy for FailingProxy {
    fn epoch(&self) -> Epoch {
        Epoch(1)
    }

    async fn commit(&self, _transaction: Bytes) -> Result<Version> {
        self.1.fetch_add(1, Ordering::SeqCst);
        Err(self.0.clone())
    }
}

/// A database bound to its stages (embedded use) says, as one that follows recoveries does,
/// when a failed commit may have committed: a batch that failed at a log or the sequencer may
/// be on every log, so its commit is `CommitUnknown` with that failure as its cause, and `run`
/// does not run it again. A refusal stays the refusal it is.
#[tokio::test]
async fn a_bound_database_reports_a_commit_that_may_have_committed_as_unknown() {
    let io = |stage| Error::new(stage, ErrorKind::Unavailable("the disk went away".into()));
    let cases = [
        (io(Stage::Log), true),
        (io(Stage::Sequencer), true),
        (
            Error::new(Stage::Log, ErrorKind::Poisoned("a failed sync".into())),
            true,
        ),
        (Error::new(Stage::Resolver, ErrorKind::Conflict), false),
        (
            Error::new(Stage::CommitProxy, ErrorKind::Overloaded("full".into())),
            false,
        ),
    ];
    for (failure, unknown) in cases {
        let proxy = Arc::new(FailingProxy(failure.clone(), AtomicUsize::new(0)));
        let db = Database::new(
            Arc::new(FixedSequencer::default()),
            vec![proxy.clone()],
            vec![Arc::new(MapStorage::new(everything(), &stored(), 10)) as Arc<dyn StorageServer>],
            RetryConfig {
                attempts_max: 3,
                ..RetryConfig::default()
            },
        )
        .unwrap();
        let e = db
            .run(|tx| async move {
                tx.set(key("a"), Value::from("v"));
                Ok(())
            })
            .await
            .unwrap_err();
        if unknown {
            match &e.kind {
                ErrorKind::CommitUnknown(cause) => {
                    assert_eq!(cause.to_string(), failure.to_string());
                }
                other => panic!("{failure}: {other}"),
            }
            assert_eq!(proxy.1.load(Ordering::SeqCst), 1, "{failure}: run again");
        } else {
            assert_eq!(e.to_string(), failure.to_string());
        }
    }
}
