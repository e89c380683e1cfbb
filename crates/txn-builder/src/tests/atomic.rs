//! Atomic operations in a transaction: the conflicts they add, and reading them back, against
//! the fakes of `tests.rs` (storage holds `a` to `j`, each `stored-<key>`).

use bytes::Bytes;
use strata_core::AtomicOp;
use strata_testkit::rng::SplitMix64;

use super::*;

/// What a range read of `model` gives: its pairs in `range`, in the read's order, at most
/// `limit`.
fn model_range_read(
    model: &BTreeMap<Key, Value>,
    range: &KeyRange,
    limit: usize,
    reverse: bool,
) -> Vec<(Key, Value)> {
    let mut pairs: Vec<(Key, Value)> = model
        .iter()
        .filter(|(k, _)| range.contains(k))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    if reverse {
        pairs.reverse();
    }
    pairs.truncate(limit);
    pairs
}

fn le(n: u64) -> Value {
    Value::copy_from_slice(&n.to_le_bytes())
}

fn bytes(b: &[u8]) -> Value {
    Value::copy_from_slice(b)
}

#[tokio::test]
async fn an_atomic_operation_adds_a_write_conflict_and_no_read_conflict() {
    let cluster = Cluster::new(&[], 100);
    let tx = cluster.db.begin();
    tx.atomic_add(key("a"), le(1));
    tx.atomic_max(key("b"), bytes(&[1]));
    tx.atomic_min(key("new"), bytes(&[2]));
    tx.atomic_add_i64(key("a"), -3);
    assert_eq!(cluster.gets() + cluster.range_reads(), 0, "nothing is read");
    let sent = cluster.sent(&tx).await;
    assert_eq!(sent.read_conflicts, vec![]);
    assert_eq!(
        sent.write_conflicts,
        ["a", "b", "new", "a", "zz-marker"]
            .map(|k| KeyRange::single(key(k)))
            .to_vec()
    );
    let atomic = |op, k: &str, operand: Value| Mutation::Atomic {
        op,
        key: key(k),
        operand,
    };
    assert_eq!(
        sent.mutations[..4],
        [
            atomic(AtomicOp::Add, "a", le(1)),
            atomic(AtomicOp::Max, "b", bytes(&[1])),
            atomic(AtomicOp::Min, "new", bytes(&[2])),
            atomic(
                AtomicOp::Add,
                "a",
                Value::copy_from_slice(&(-3i64).to_le_bytes())
            ),
        ]
    );
}

#[tokio::test]
async fn after_a_set_or_a_clear_an_atomic_operation_folds_into_the_known_value() {
    let cluster = Cluster::new(&[], 100);
    let tx = cluster.db.begin();
    tx.set(key("a"), le(40));
    tx.atomic_add(key("a"), le(2));
    tx.atomic_max(key("a"), bytes(&[1]));
    // Truncated to the operand's one byte: 42 against 1.
    assert_eq!(tx.get(&key("a")).await.unwrap(), Some(bytes(&[42])));
    // A cleared key and a key in a cleared range have no value: the operand, for a min too.
    tx.clear(key("b"));
    tx.atomic_add(key("b"), le(5));
    tx.clear_range(range("c", "e"));
    tx.atomic_min(key("d"), bytes(&[9, 9]));
    assert_eq!(tx.get(&key("b")).await.unwrap(), Some(le(5)));
    assert_eq!(tx.get(&key("d")).await.unwrap(), Some(bytes(&[9, 9])));
    assert_eq!(cluster.gets(), 0, "the transaction knew every value");

    // Reads it answers add no read conflict; the operations are still sent as made.
    let sent = cluster.sent(&tx).await;
    assert_eq!(sent.read_conflicts, vec![]);
    assert_eq!(sent.mutations.len(), 8);
    assert!(matches!(
        sent.mutations[1],
        Mutation::Atomic {
            op: AtomicOp::Add,
            ..
        }
    ));
}

#[tokio::test]
async fn without_a_known_value_a_read_asks_storage_and_applies_the_operations_in_order() {
    let cluster = Cluster::new(&["e"], 100);
    let tx = cluster.db.begin();
    // Storage holds "stored-a": "s" is 0x73, "t" 0x74.
    tx.atomic_add(key("a"), bytes(&[1, 1]));
    tx.atomic_max(key("a"), bytes(&[0x10, 0x74]));
    tx.atomic_min(key("a"), bytes(&[0xff, 0x74]));
    // A key storage does not hold: from zero for an add, the operand for a min.
    tx.atomic_add(key("new"), le(7));
    tx.atomic_min(key("new2"), bytes(&[3]));
    // "st" + [1, 1] = [0x74, 0x75]; max with [0x10, 0x74] keeps it; min with [0xff, 0x74]
    // (0x74ff, smaller than 0x7574) takes the operand.
    assert_eq!(tx.get(&key("a")).await.unwrap(), Some(bytes(&[0xff, 0x74])));
    assert_eq!(tx.get(&key("new")).await.unwrap(), Some(le(7)));
    assert_eq!(tx.get(&key("new2")).await.unwrap(), Some(bytes(&[3])));
    assert_eq!(cluster.gets(), 3);
    // A snapshot read sees storage alone.
    assert_eq!(tx.snapshot_get(&key("a")).await.unwrap(), value("stored-a"));
    // Operations after the read apply on top, at the next read.
    tx.atomic_add(key("new"), le(1));
    assert_eq!(tx.get(&key("new")).await.unwrap(), Some(le(8)));

    // The reads that went to storage are read conflicts, as any read; the operations are not.
    let sent = cluster.sent(&tx).await;
    assert_eq!(
        sent.read_conflicts,
        ["a", "new", "new2", "new"]
            .map(|k| KeyRange::single(key(k)))
            .to_vec()
    );
}

#[tokio::test]
async fn a_set_or_clear_after_pending_operations_discards_them() {
    let cluster = Cluster::new(&[], 100);
    let tx = cluster.db.begin();
    for k in ["a", "b", "c", "d", "new"] {
        tx.atomic_add(key(k), le(1));
    }
    tx.set(key("a"), value("mine").unwrap());
    tx.clear(key("b"));
    tx.clear_range(range("c", "e"));
    assert_eq!(tx.get(&key("a")).await.unwrap(), value("mine"));
    for k in ["b", "c", "d"] {
        assert_eq!(tx.get(&key(k)).await.unwrap(), None, "{k}");
    }
    assert_eq!(cluster.gets(), 0);
    // The operation on `new` is still pending, and a range read shows none of the others.
    assert_eq!(
        tx.get_range(&range("a", "f"), 10, false).await.unwrap(),
        vec![
            (key("a"), value("mine").unwrap()),
            (key("e"), value("stored-e").unwrap()),
        ]
    );
    assert_eq!(tx.get(&key("new")).await.unwrap(), Some(le(1)));
    // An operation after the clear starts from no value.
    tx.atomic_add(key("c"), le(4));
    assert_eq!(tx.get(&key("c")).await.unwrap(), Some(le(4)));
}

/// Operations on stored keys, on a key storage does not hold, and after own writes, for the
/// range tests; with what they read as.
fn write_atomics(tx: &Transaction) -> BTreeMap<Key, Value> {
    tx.atomic_add(key("b"), bytes(&[1]));
    tx.atomic_add(key("b"), bytes(&[1]));
    tx.atomic_max(key("cc"), bytes(&[5, 0]));
    tx.set(key("d"), bytes(&[7]));
    tx.atomic_min(key("d"), bytes(&[3, 1]));
    tx.clear(key("e"));
    tx.atomic_add(key("h"), bytes(&[0xff; 3]));
    tx.atomic_min(key("j"), bytes(&[0]));
    let mut m = stored();
    let apply = |m: &mut BTreeMap<Key, Value>, k: &str, op: AtomicOp, operand: &[u8]| {
        let v = op.apply(m.get(&key(k)).map(|v| v.as_ref()), operand);
        m.insert(key(k), v);
    };
    apply(&mut m, "b", AtomicOp::Add, &[1]);
    apply(&mut m, "b", AtomicOp::Add, &[1]);
    apply(&mut m, "cc", AtomicOp::Max, &[5, 0]);
    m.insert(key("d"), bytes(&[7]));
    apply(&mut m, "d", AtomicOp::Min, &[3, 1]);
    m.remove(&key("e"));
    apply(&mut m, "h", AtomicOp::Add, &[0xff; 3]);
    apply(&mut m, "j", AtomicOp::Min, &[0]);
    m
}

#[tokio::test]
async fn a_range_read_shows_pending_operations_in_both_directions_at_every_limit() {
    // Pages of two pairs and two shards: every read crosses page and shard boundaries.
    let cluster = Cluster::new(&["e"], 2);
    let tx = cluster.db.begin();
    let model = write_atomics(&tx);
    // The operations' results, not the stored values: "stored-b" truncated to the operand's
    // one byte, plus 2.
    assert_eq!(model[&key("b")], bytes(b"u"));
    assert_eq!(model[&key("cc")], bytes(&[5, 0]));
    for r in [
        everything(),
        range("b", "h"),
        range("c", "d"),
        range("h", "k"),
    ] {
        for reverse in [false, true] {
            for limit in 1..=13 {
                let expected = model_range_read(&model, &r, limit, reverse);
                assert_eq!(
                    tx.get_range(&r, limit, reverse).await.unwrap(),
                    expected,
                    "{r} limit {limit} reverse {reverse}"
                );
            }
        }
    }
    // A created key the limit leaves out is not in the answer, and the conflict ends before it.
    let tx = cluster.db.begin();
    tx.atomic_add(key("cc"), bytes(&[1]));
    let first = tx.get_range(&range("b", "d"), 2, false).await.unwrap();
    assert_eq!(
        first.iter().map(|(k, _)| k.clone()).collect::<Vec<_>>(),
        [key("b"), key("c")]
    );
    let created = tx.get_range(&range("b", "d"), 3, false).await.unwrap();
    assert_eq!(created[2], (key("cc"), bytes(&[1])));
    let sent = cluster.sent(&tx).await;
    assert_eq!(
        sent.read_conflicts,
        vec![
            KeyRange::new(key("b"), KeyRange::single(key("c")).end().clone()).unwrap(),
            KeyRange::new(key("b"), KeyRange::single(key("cc")).end().clone()).unwrap(),
        ]
    );
}

#[tokio::test]
async fn an_empty_or_oversized_operand_is_refused_at_commit_with_its_typed_error() {
    let cluster = Cluster::new(&[], 100);
    let tx = cluster.db.begin();
    tx.atomic_add(key("a"), Value::new());
    assert_eq!(
        refused(&cluster, &tx).await,
        WireError::EmptyOperand { index: 0 }
    );

    let tx = cluster.db.begin();
    tx.set(key("a"), value("x").unwrap());
    tx.atomic_max(key("a"), Value::from(vec![1; VALUE_BYTES_MAX + 1]));
    assert_eq!(
        refused(&cluster, &tx).await,
        WireError::OperandTooLarge {
            index: 1,
            len: VALUE_BYTES_MAX + 1,
            max: VALUE_BYTES_MAX
        }
    );
}

#[tokio::test]
async fn an_atomic_operation_on_a_committed_transaction_is_dropped() {
    let cluster = Cluster::new(&[], 100);
    let tx = cluster.db.begin();
    tx.atomic_add(key("a"), le(1));
    tx.commit().await.unwrap();
    tx.atomic_add(key("a"), le(1));
    let sent = cluster.proxy.sent();
    assert_eq!(sent.len(), 1);
    assert_eq!(sent[0].mutations.len(), 1);
}

/// A storage server over [`stored`] whose point reads wait until released, so a test can act
/// on the transaction while a read is at storage.
struct GatedStorage {
    data: BTreeMap<Key, Value>,
    entered: tokio::sync::Notify,
    release: tokio::sync::Semaphore,
}

#[async_trait]
impl StorageServer for GatedStorage {
    fn shards(&self) -> Vec<KeyRange> {
        vec![everything()]
    }
    async fn get(&self, key: Key, _version: Version) -> Result<Option<Value>> {
        self.entered.notify_one();
        self.release.acquire().await.unwrap().forget();
        Ok(self.data.get(&key).cloned())
    }
    async fn get_range(
        &self,
        _range: KeyRange,
        _version: Version,
        _limit: usize,
        _reverse: bool,
    ) -> Result<RangeRead> {
        Err(Error::new(
            Stage::Storage,
            ErrorKind::InvalidRequest("this fake answers point reads only".into()),
        ))
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

/// Found by review: a get that started while `k` had a pending add answered storage's value
/// without the add when a `set` of `k` (from another handle of the transaction) came while
/// the read was at storage — a state the transaction never was in.
#[tokio::test]
async fn a_get_answers_the_pending_operations_it_started_with() {
    let mut data = BTreeMap::new();
    data.insert(key("k"), bytes(&[5]));
    let storage = Arc::new(GatedStorage {
        data,
        entered: tokio::sync::Notify::new(),
        release: tokio::sync::Semaphore::new(0),
    });
    let db = Database::new(
        Arc::new(FixedSequencer::default()),
        vec![Arc::new(KeepingProxy::default())],
        vec![storage.clone()],
        RetryConfig::default(),
    )
    .unwrap();
    let tx = db.begin();
    tx.atomic_add(key("k"), bytes(&[1]));
    let reader = tx.clone();
    let entered = storage.entered.notified();
    let read = tokio::spawn(async move { reader.get(&key("k")).await.unwrap() });
    entered.await;
    tx.set(key("k"), bytes(&[100]));
    storage.release.add_permits(1);
    assert_eq!(read.await.unwrap(), Some(bytes(&[6])));
    assert_eq!(tx.get(&key("k")).await.unwrap(), Some(bytes(&[100])));
}

/// Found by review: a range read of limit `usize::MAX` ("everything") after a write overflowed
/// the page size (a panic in debug builds; in release, no stored pair and an add applied to
/// nothing).
#[tokio::test]
async fn a_range_read_without_a_limit_sees_storage_and_own_writes() {
    let cluster = Cluster::new(&["c"], 3);
    let tx = cluster.db.begin();
    tx.atomic_add(key("a"), bytes(&[1]));
    tx.set(key("zz"), bytes(b"x"));
    let got = tx
        .get_range(&everything(), usize::MAX, false)
        .await
        .unwrap();
    assert_eq!(got.len(), 11, "{got:?}");
    // `stored-a` with 1 added to its first byte ('s' + 1).
    assert_eq!(got[0], (key("a"), bytes(b"t")));
    assert_eq!(got[10], (key("zz"), bytes(b"x")));
}

const MODEL_KEYS: &[&str] = &["a", "aa", "b", "bb", "c", "cc", "d", "j", "k", "z"];

fn model_key(rng: &mut SplitMix64) -> Key {
    key(MODEL_KEYS[rng.below(MODEL_KEYS.len() as u64) as usize])
}

fn model_range(rng: &mut SplitMix64) -> KeyRange {
    loop {
        let a = model_key(rng);
        let b = if rng.below(4) == 0 {
            Bytes::from_static(b"\xff")
        } else {
            model_key(rng)
        };
        if let Ok(r) = KeyRange::new(a.clone().min(b.clone()), a.max(b)) {
            return r;
        }
    }
}

/// Random transactions of sets, clears, range clears and atomic operations, each read checked
/// against a model of what the transaction should see (storage's pairs with its own writes
/// applied in order), over one to three shards read in pages of one to three pairs, with
/// limits from 1 to unbounded, both directions.
#[tokio::test]
async fn random_transactions_read_what_a_model_of_their_writes_says() {
    for seed in 0..1_000u64 {
        let mut rng = SplitMix64(seed);
        let splits: &[&str] = match seed % 3 {
            0 => &[],
            1 => &["c"],
            _ => &["b", "d"],
        };
        let cluster = Cluster::new(splits, 1 + rng.below(3) as usize);
        let tx = cluster.db.begin();
        let mut model = stored();
        let mut done = Vec::new();
        for _ in 0..1 + rng.below(14) {
            let mutation = match rng.below(9) {
                0 => Mutation::Set {
                    key: model_key(&mut rng),
                    value: le(rng.next_u64()),
                },
                1 => Mutation::Clear {
                    key: model_key(&mut rng),
                },
                2 => Mutation::ClearRange {
                    range: model_range(&mut rng),
                },
                3..=5 => {
                    let width = 1 + rng.below(3) as usize;
                    Mutation::Atomic {
                        op: AtomicOp::ALL[rng.below(3) as usize],
                        key: model_key(&mut rng),
                        operand: Value::copy_from_slice(&rng.next_u64().to_le_bytes()[..width]),
                    }
                }
                6 => {
                    let k = model_key(&mut rng);
                    let got = tx.get(&k).await.unwrap();
                    assert_eq!(
                        got,
                        model.get(&k).cloned(),
                        "seed {seed}: get {k:?} after {done:?}"
                    );
                    continue;
                }
                _ => {
                    let r = model_range(&mut rng);
                    let limit = match rng.below(4) {
                        0 => usize::MAX,
                        _ => 1 + rng.below(8) as usize,
                    };
                    let reverse = rng.below(2) == 0;
                    let expected = model_range_read(&model, &r, limit, reverse);
                    let got = tx.get_range(&r, limit, reverse).await.unwrap();
                    assert_eq!(
                        got, expected,
                        "seed {seed}: range {r} {limit} {reverse} after {done:?}"
                    );
                    continue;
                }
            };
            match &mutation {
                Mutation::Set { key, value } => tx.set(key.clone(), value.clone()),
                Mutation::Clear { key } => tx.clear(key.clone()),
                Mutation::ClearRange { range } => tx.clear_range(range.clone()),
                Mutation::Atomic { op, key, operand } => {
                    tx.atomic(*op, key.clone(), operand.clone())
                }
            }
            strata_testkit::model::apply(&mut model, &mutation);
            done.push(mutation);
        }
    }
}
