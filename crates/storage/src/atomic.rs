//! Atomic operations at the storage server. Each is applied, in version order, to the value
//! its key holds just before it, and stored in the window as the set of the result: reads,
//! flushes, roll backs and restarts then treat it as any other set.
//!
//! The value before an operation is the window's answer when it has one; otherwise redb's,
//! which a read must fetch on a blocking thread, not under the state lock that the apply
//! holds. So the apply loop works in two steps for a run of pulled entries that holds atomic
//! operations:
//!
//! 1. [`Inner::atomic_bases`]: under the state lock, the value every key of an atomic operation
//!    holds at the applied version, from the window, and for the keys the window does not
//!    know, a redb snapshot taken under the same lock (as reads take theirs), read afterwards
//!    on a blocking thread;
//! 2. the apply (`background.rs`): under the lock again, each operation is applied to the
//!    window's answer at that point, or, where the window knows nothing of the key, to the
//!    value step 1 found ([`Bases::before`]).
//!
//! Between the steps only a flush can run (the apply loop is the one writer of the window, and
//! a roll back or a change of log bumps the generation, which makes the apply drop the
//! entries). A flush moves versions from the window to redb without changing any key's value,
//! so what step 1 found is still each key's value when step 2 starts, wherever it now lives.
//! Replaying the same entries over the same durable state, after a restart or a roll back,
//! therefore gives the same values.
//!
//! A run of entries without atomic operations takes none of this: the scan for them is all it
//! costs.

use std::collections::BTreeMap;
use std::sync::Arc;

use bytes::Bytes;
use strata_core::merge::Answer;
use strata_core::{ErrorKind, Key, Mutation, Result, Value, Version, printable};

use crate::blocking;
use crate::codec::DATA;
use crate::errors::{db_error, error, guarded};
use crate::server::Inner;

/// The value each key of the atomic operations of a run of entries held before the run.
#[derive(Debug, Default)]
pub(crate) struct Bases {
    /// The applied version the values are of; `None` when the run holds no atomic operation.
    pub(crate) applied: Option<Version>,
    /// Per key, its value (`None`: no value).
    values: BTreeMap<Key, Option<Value>>,
}

impl Bases {
    /// The value `key` held before the run, for an atomic operation on it that the window
    /// cannot answer. Every key of an atomic operation in the server's shards has one; the
    /// error is for a run applied with the bases of another, which would be a bug.
    pub(crate) fn before(&self, key: &Key) -> Result<Option<Value>> {
        self.values.get(key).cloned().ok_or_else(|| {
            error(ErrorKind::InvalidRequest(format!(
                "atomic operation on {} applied without the value before it",
                printable(key)
            )))
        })
    }
}

#[cfg(test)]
impl Bases {
    /// Bases of `applied` holding `values`, for tests.
    pub(crate) fn with(
        applied: Version,
        values: impl IntoIterator<Item = (Key, Option<Value>)>,
    ) -> Bases {
        Bases {
            applied: Some(applied),
            values: values.into_iter().collect(),
        }
    }
}

/// The keys of the atomic operations after `applied` in `entries` that `owned` says are the
/// server's, each once.
fn atomic_keys(
    entries: &[(Version, Vec<Mutation>)],
    applied: Version,
    owned: impl Fn(&[u8]) -> bool,
) -> Vec<&Key> {
    let mut keys: Vec<&Key> = entries
        .iter()
        .filter(|(version, _)| *version > applied)
        .flat_map(|(_, mutations)| mutations)
        .filter_map(|m| match m {
            Mutation::Atomic { key, .. } if owned(key) => Some(key),
            _ => None,
        })
        .collect();
    keys.sort_unstable();
    keys.dedup();
    keys
}

impl Inner {
    /// Step 1 (see the module docs): the value before `entries` of every key they apply an
    /// atomic operation to. Empty at once when they hold none.
    pub(crate) async fn atomic_bases(
        self: &Arc<Self>,
        entries: &[(Version, Vec<Mutation>)],
    ) -> Result<Bases> {
        let any = entries
            .iter()
            .any(|(_, ms)| ms.iter().any(|m| matches!(m, Mutation::Atomic { .. })));
        if !any {
            return Ok(Bases::default());
        }
        let owned = |key: &[u8]| self.shards.iter().any(|s| s.contains(key));
        let (applied, mut values, unknown, snapshot) = {
            let mut st = self.state()?;
            let applied = st.applied;
            let mut values = BTreeMap::new();
            let mut unknown: Vec<Key> = Vec::new();
            for key in atomic_keys(entries, applied, owned) {
                match st.window.get(key, applied) {
                    Answer::Value(v) => {
                        values.insert(key.clone(), Some(v));
                    }
                    Answer::Deleted => {
                        values.insert(key.clone(), None);
                    }
                    Answer::Unknown => unknown.push(key.clone()),
                }
            }
            // Taken under the lock, so it holds what the window does not (see `begin_read`).
            let snapshot = if unknown.is_empty() {
                None
            } else {
                Some(self.begin_read(&mut st)?)
            };
            (applied, values, unknown, snapshot)
        };
        if let Some(snapshot) = snapshot {
            values.extend(self.clone().read_durable(unknown, snapshot).await?);
        }
        Ok(Bases {
            applied: Some(applied),
            values,
        })
    }

    /// The values of `keys` in `snapshot`, on a blocking thread.
    async fn read_durable(
        self: Arc<Self>,
        keys: Vec<Key>,
        snapshot: redb::ReadTransaction,
    ) -> Result<Vec<(Key, Option<Value>)>> {
        let inner = self.clone();
        let read = blocking::run(self.config.blocking, "read", move || {
            let path = &inner.path;
            let doing = "reading the values atomic operations apply to";
            // The snapshot moves in, so a panic drops it inside the guard.
            guarded(path, doing, move || {
                let table = snapshot.open_table(DATA).map_err(db_error(path, doing))?;
                keys.into_iter()
                    .map(|key| {
                        let value = table.get(key.as_ref()).map_err(db_error(path, doing))?;
                        let value = value.map(|v| Bytes::copy_from_slice(v.value()));
                        Ok((key, value))
                    })
                    .collect()
            })
        })
        .await?;
        self.note(read)
    }
}

#[cfg(test)]
mod tests {
    use strata_core::{AtomicOp, KeyRange};

    use super::*;

    fn atomic(key: &'static str) -> Mutation {
        Mutation::Atomic {
            op: AtomicOp::Add,
            key: key.into(),
            operand: Bytes::from_static(&[1]),
        }
    }

    #[test]
    fn the_keys_are_those_of_atomic_operations_after_the_applied_version_in_the_shards() {
        let shard = KeyRange::new("b", "y").unwrap();
        let entries = vec![
            (Version(3), vec![atomic("old")]),
            (
                Version(5),
                vec![
                    atomic("k"),
                    Mutation::Set {
                        key: "s".into(),
                        value: "v".into(),
                    },
                    atomic("a-outside"),
                ],
            ),
            (
                Version(6),
                vec![atomic("k"), atomic("z-outside"), atomic("m")],
            ),
        ];
        let keys = atomic_keys(&entries, Version(3), |k| shard.contains(k));
        assert_eq!(keys, [&Key::from("k"), &Key::from("m")]);
    }

    #[test]
    fn a_key_without_a_base_is_an_error_not_a_guess() {
        let bases = Bases::default();
        let e = bases.before(&Key::from("k")).unwrap_err();
        assert!(matches!(e.kind, ErrorKind::InvalidRequest(_)), "{e}");
    }
}
