//! What a mutation does, as a map: the reference semantics tests hold a stage's state against
//! (storage servers, the transaction builder's own writes). Kept beside the fakes so that every
//! test compares with the same model rather than one of its own.

use std::collections::BTreeMap;

use strata_core::{Key, Mutation, Value};

/// The state of the key space: every key with its value.
pub type State = BTreeMap<Key, Value>;

/// Applies `mutation` to `state` as a storage server must: a set, a clear, a range clear, or
/// an atomic operation on the value before it ([`strata_core::AtomicOp::apply`]).
///
/// ```
/// use strata_core::{AtomicOp, Mutation};
/// let mut state = strata_testkit::model::State::new();
/// let add = Mutation::Atomic { op: AtomicOp::Add, key: "n".into(), operand: vec![2].into() };
/// strata_testkit::model::apply(&mut state, &add);
/// strata_testkit::model::apply(&mut state, &add);
/// assert_eq!(state[&bytes::Bytes::from("n")], bytes::Bytes::from(vec![4]));
/// ```
pub fn apply(state: &mut State, mutation: &Mutation) {
    match mutation {
        Mutation::Set { key, value } => {
            state.insert(key.clone(), value.clone());
        }
        Mutation::Clear { key } => {
            state.remove(key);
        }
        Mutation::ClearRange { range } => state.retain(|k, _| !range.contains(k)),
        Mutation::Atomic { op, key, operand } => {
            let value = op.apply(state.get(key).map(AsRef::as_ref), operand);
            state.insert(key.clone(), value);
        }
    }
}
