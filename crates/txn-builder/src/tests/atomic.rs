//! Atomic operations in a transaction: the conflicts they add, and reading them back, against
//! the fakes of `tests.rs` (storage holds `a` to `j`, each `stored-<key>`).

use strata_core::AtomicOp;

use super::*;

fn le(n: u64) -> Value {
    Value::copy_from_slice(&n.to_le_bytes())
}

fn bytes(b: &[u8]) -> Value {
    Value::copy_from_slice(b)
}

#[tokio::test]
async fn an_atomic_operation_adds_a_write_conflict_and_no_read_conflict() {
    let cluster = Cluster::new(&[], 100);
    let tx = cluster.db.begin().await.unwrap();
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
    let tx = cluster.db.begin().await.unwrap();
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
    let tx = cluster.db.begin().await.unwrap();
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
    let tx = cluster.db.begin().await.unwrap();
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
    let tx = cluster.db.begin().await.unwrap();
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
                let mut expected: Vec<(Key, Value)> = model
                    .iter()
                    .filter(|(k, _)| r.contains(k))
                    .map(|(k, v)| (k.clone(), v.clone()))
                    .collect();
                if reverse {
                    expected.reverse();
                }
                expected.truncate(limit);
                assert_eq!(
                    tx.get_range(&r, limit, reverse).await.unwrap(),
                    expected,
                    "{r} limit {limit} reverse {reverse}"
                );
            }
        }
    }
    // A created key the limit leaves out is not in the answer, and the conflict ends before it.
    let tx = cluster.db.begin().await.unwrap();
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
    let tx = cluster.db.begin().await.unwrap();
    tx.atomic_add(key("a"), Value::new());
    assert_eq!(
        refused(&cluster, &tx).await,
        WireError::EmptyOperand { index: 0 }
    );

    let tx = cluster.db.begin().await.unwrap();
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
    let tx = cluster.db.begin().await.unwrap();
    tx.atomic_add(key("a"), le(1));
    tx.commit().await.unwrap();
    tx.atomic_add(key("a"), le(1));
    let sent = cluster.proxy.sent();
    assert_eq!(sent.len(), 1);
    assert_eq!(sent[0].mutations.len(), 1);
}
