//! Atomic operations in a transaction: [`Transaction::atomic`] and its conveniences, and how
//! the transaction reads its own atomic operations.
//!
//! An operation is sent as [`Mutation::Atomic`] and applied by the storage servers to the value
//! the key holds at the commit version, so it adds a write conflict on its key and no read
//! conflict: concurrent operations on one key all commit. Reading the key back within the
//! transaction needs the value the operation applies to:
//!
//! - when the transaction's own writes know it (the key was set, cleared, or lies in a cleared
//!   range), the operation is folded into the transaction's view of the key at once, as a set
//!   of its result would be, and reads never ask storage for it;
//! - otherwise the operation is kept *pending* ([`Pending`]), in order with the key's other
//!   pending operations. A read of the key reads storage (adding the read conflict any read
//!   adds) and applies them to what it finds; a range read does the same for each such key in
//!   the range, including keys storage does not hold, which the operations create. A later
//!   `set`, `clear` or `clear_range` of the key discards them.
//!
//! Either way the mutation itself is sent as written, so the storage servers apply exactly the
//! operations the transaction made, in order with its other writes.

use std::collections::BTreeMap;
use std::ops::Bound;

use strata_core::merge::Answer;
use strata_core::{AtomicOp, Key, KeyRange, Mutation, Value};

use crate::{Transaction, TxState};

/// `value` with `ops` applied to it in order.
pub(crate) fn fold(ops: &[(AtomicOp, Value)], value: Option<Value>) -> Option<Value> {
    ops.iter().fold(value, |before, (op, operand)| {
        Some(op.apply(before.as_deref(), operand))
    })
}

/// Atomic operations on keys whose value the transaction's own writes do not know, by key, each
/// key's in the order they were made. A key here is never in the transaction's point writes nor
/// in a range it cleared: those make the value known.
#[derive(Debug, Default)]
pub(crate) struct Pending(BTreeMap<Key, Vec<(AtomicOp, Value)>>);

impl Pending {
    /// `value`, read from storage for `key`, with the key's pending operations applied.
    pub(crate) fn fold(&self, key: &[u8], value: Option<Value>) -> Option<Value> {
        match self.0.get(key) {
            Some(ops) => fold(ops, value),
            None => value,
        }
    }

    /// The pending operations of `key`, in order (none when it has none).
    pub(crate) fn of(&self, key: &[u8]) -> Vec<(AtomicOp, Value)> {
        self.0.get(key).cloned().unwrap_or_default()
    }

    /// Forgets the pending operations of `key` (it was set or cleared).
    pub(crate) fn discard(&mut self, key: &[u8]) {
        self.0.remove(key);
    }

    /// Forgets the pending operations of every key in `range` (it was cleared).
    pub(crate) fn discard_range(&mut self, range: &KeyRange) {
        let inside: Vec<Key> = self
            .0
            .range::<[u8], _>(bounds(range))
            .map(|(k, _)| k.clone())
            .collect();
        for k in inside {
            self.0.remove(&k);
        }
    }
}

fn bounds(range: &KeyRange) -> (Bound<&[u8]>, Bound<&[u8]>) {
    (
        Bound::Included(range.begin().as_ref()),
        Bound::Excluded(range.end().as_ref()),
    )
}

impl TxState {
    /// The newer layer of a range merge over `covered`, ascending: the transaction's point
    /// writes, and each key with pending operations as their result over its value in `page`
    /// (a storage page that holds every pair of `covered`, in the order of the read).
    pub(crate) fn newer_layer(
        &self,
        covered: &KeyRange,
        page: &[(Key, Value)],
        reverse: bool,
    ) -> Vec<(Key, Answer)> {
        let writes = self.writes.range::<[u8], _>(bounds(covered)).map(|(k, v)| {
            let answer = match v {
                Some(v) => Answer::Value(v.clone()),
                None => Answer::Deleted,
            };
            (k.clone(), answer)
        });
        let mut layer: Vec<(Key, Answer)> = writes.collect();
        let written = layer.len();
        for (key, _) in self.pending.0.range::<[u8], _>(bounds(covered)) {
            let stored = page
                .binary_search_by(|(k, _)| {
                    let order = k.as_ref().cmp(key.as_ref());
                    if reverse { order.reverse() } else { order }
                })
                .ok()
                .map(|i| page[i].1.clone());
            if let Some(value) = self.pending.fold(key, stored) {
                layer.push((key.clone(), Answer::Value(value)));
            }
        }
        if layer.len() > written {
            // The two sets of keys are disjoint (see `Pending`); one sort puts them in order.
            layer.sort_by(|a, b| a.0.cmp(&b.0));
        }
        layer
    }
}

impl Transaction {
    /// Applies `op` with `operand` to `key` at the commit version, in order with the
    /// transaction's other writes; see [`AtomicOp`] for what each operation does. Adds a write
    /// conflict on `key` and no read conflict, so concurrent atomic operations on one key never
    /// conflict.
    ///
    /// The transaction reads its own operations: after a `set`, `clear` or `clear_range` that
    /// covers `key` at once, else by reading `key` from storage when it is read (which adds a
    /// read conflict, as every read does). A later `set`, `clear` or `clear_range` of the key
    /// replaces the operation.
    ///
    /// The operand must hold 1 to [`strata_core::VALUE_BYTES_MAX`] bytes: the commit fails with
    /// [`strata_core::WireError::EmptyOperand`] or
    /// [`strata_core::WireError::OperandTooLarge`] otherwise, and sends nothing.
    pub fn atomic(&self, op: AtomicOp, key: Key, operand: Value) {
        self.write(|st| {
            st.write_conflicts.push(KeyRange::single(key.clone()));
            match st.local(&key) {
                Answer::Value(before) => {
                    let value = op.apply(Some(&before), &operand);
                    st.writes.insert(key.clone(), Some(value));
                }
                Answer::Deleted => {
                    st.writes
                        .insert(key.clone(), Some(op.apply(None, &operand)));
                }
                Answer::Unknown => {
                    let ops = st.pending.0.entry(key.clone()).or_default();
                    ops.push((op, operand.clone()));
                }
            }
            st.mutations.push(Mutation::Atomic { op, key, operand });
        });
    }

    /// Adds `operand`, a little-endian integer, to the value of `key` ([`AtomicOp::Add`]).
    pub fn atomic_add(&self, key: Key, operand: Value) {
        self.atomic(AtomicOp::Add, key, operand);
    }

    /// Keeps the larger of the value of `key` and `operand`, compared as little-endian
    /// unsigned integers ([`AtomicOp::Max`]).
    pub fn atomic_max(&self, key: Key, operand: Value) {
        self.atomic(AtomicOp::Max, key, operand);
    }

    /// Keeps the smaller of the value of `key` and `operand`, compared as little-endian
    /// unsigned integers; a missing value gives `operand` ([`AtomicOp::Min`]).
    pub fn atomic_min(&self, key: Key, operand: Value) {
        self.atomic(AtomicOp::Min, key, operand);
    }

    /// Adds `delta` to the 8-byte little-endian counter at `key`; a negative `delta`
    /// subtracts, wrapping around as two's complement does. Read the counter back with
    /// [`strata_core::atomic::le_u64`] (and cast to `i64` for a signed one).
    pub fn atomic_add_i64(&self, key: Key, delta: i64) {
        self.atomic_add(key, Value::copy_from_slice(&delta.to_le_bytes()));
    }
}
