//! Splitting conflict resolution over several resolvers by key range: plain data logic that
//! the commit proxy (which clips batches) and the resolver crate (which documents the cost)
//! share, so it lives here rather than in either stage.
//!
//! Each resolver owns a contiguous shard of the key space. The commit proxy clips every batch
//! to each shard ([`ShardMap::split`]), sends each resolver its part, and commits a transaction
//! only if every resolver accepts it ([`combine_verdicts`]).
//!
//! # What sharding costs
//!
//! A resolver decides on the part of a transaction it sees, without knowing what the others
//! decide. When a transaction is accepted by resolver A but rejected by resolver B, A has
//! already recorded its writes: the transaction did not commit, yet A will report conflicts
//! against those writes (false conflicts) to later readers of them. FoundationDB accepts the
//! same cost. It is bounded in two ways: only transactions that span shards *and* are rejected
//! somewhere leave such phantom writes, and a phantom write is forgotten like any other once it
//! falls out of the MVCC window (5,000,000 versions, about five seconds). It never causes a
//! missed conflict, so serializability holds.

use crate::traits::{ResolveBatch, Verdict};
use crate::types::{Key, KeyRange, TransactionConflicts};

/// A contiguous part of the key space: `[begin, end)`, or `[begin, ∞)` for the last shard.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Shard {
    /// The first key of the shard.
    pub begin: Key,
    /// The first key after the shard; `None` for the last shard.
    pub end: Option<Key>,
}

impl Shard {
    /// The part of `range` inside the shard, if any.
    pub fn clip(&self, range: &KeyRange) -> Option<KeyRange> {
        let begin = if range.begin() >= &self.begin {
            range.begin().clone()
        } else {
            self.begin.clone()
        };
        let end = match &self.end {
            Some(end) if end < range.end() => end.clone(),
            _ => range.end().clone(),
        };
        KeyRange::new(begin, end).ok()
    }
}

/// The shards of the whole key space, one per resolver, given by their begin keys.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ShardMap {
    shards: Vec<Shard>,
}

impl ShardMap {
    /// Shards starting at each of `begins` (sorted here, duplicates dropped); the first shard
    /// always starts at the empty key so that every key has a shard.
    ///
    /// ```
    /// use strata_core::shard::ShardMap;
    /// let map = ShardMap::from_begins(vec!["m".into()]);
    /// assert_eq!(map.len(), 2); // ["", m) and [m, ∞)
    /// ```
    pub fn from_begins(mut begins: Vec<Key>) -> ShardMap {
        begins.push(Key::new());
        begins.sort();
        begins.dedup();
        let shards = begins
            .iter()
            .enumerate()
            .map(|(i, begin)| Shard {
                begin: begin.clone(),
                end: begins.get(i + 1).cloned(),
            })
            .collect();
        ShardMap { shards }
    }

    /// The shards, in key order.
    pub fn shards(&self) -> &[Shard] {
        &self.shards
    }

    /// How many shards there are.
    pub fn len(&self) -> usize {
        self.shards.len()
    }

    /// Always false: a map has at least one shard.
    pub fn is_empty(&self) -> bool {
        self.shards.is_empty()
    }

    /// The batch clipped to each shard, in shard order. Every part keeps every transaction (so
    /// verdicts line up by index); a transaction whose ranges miss a shard appears there with no
    /// ranges and is accepted by that resolver.
    pub fn split(&self, batch: &ResolveBatch) -> Vec<ResolveBatch> {
        self.shards
            .iter()
            .map(|shard| ResolveBatch {
                epoch: batch.epoch,
                previous_version: batch.previous_version,
                version: batch.version,
                transactions: batch
                    .transactions
                    .iter()
                    .map(|tx| clip_transaction(tx, shard))
                    .collect(),
            })
            .collect()
    }
}

fn clip_transaction(tx: &TransactionConflicts, shard: &Shard) -> TransactionConflicts {
    let clip = |ranges: &[KeyRange]| ranges.iter().filter_map(|r| shard.clip(r)).collect();
    TransactionConflicts {
        read_version: tx.read_version,
        read_conflicts: clip(&tx.read_conflicts),
        write_conflicts: clip(&tx.write_conflicts),
    }
}

/// One verdict per transaction from the verdicts of every shard: committed only if every
/// resolver accepted it; too old if any resolver found it too old; a conflict otherwise.
/// `None` when the lists differ in length (the resolvers did not answer the same batch).
pub fn combine_verdicts(per_shard: &[Vec<Verdict>]) -> Option<Vec<Verdict>> {
    let n = per_shard.first().map_or(0, Vec::len);
    if per_shard.iter().any(|v| v.len() != n) {
        return None;
    }
    let rank = |v: &Verdict| match v {
        Verdict::Committed => 0,
        Verdict::Conflict => 1,
        Verdict::TooOld { .. } => 2,
    };
    Some(
        (0..n)
            .map(|i| {
                per_shard
                    .iter()
                    .map(|v| v[i])
                    .max_by(|a, b| rank(a).cmp(&rank(b)))
                    .unwrap_or(Verdict::Committed)
            })
            .collect(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::types::Version;

    #[test]
    fn shards_cover_everything_once() {
        let map = ShardMap::from_begins(vec!["m".into(), "c".into(), "m".into()]);
        let begins: Vec<&[u8]> = map.shards().iter().map(|s| s.begin.as_ref()).collect();
        assert_eq!(begins, vec![&b""[..], b"c", b"m"]);
        assert_eq!(map.shards()[2].end, None);
        let r = KeyRange::new("b", "n").unwrap();
        let parts: Vec<Option<KeyRange>> = map.shards().iter().map(|s| s.clip(&r)).collect();
        assert_eq!(
            parts,
            vec![
                Some(KeyRange::new("b", "c").unwrap()),
                Some(KeyRange::new("c", "m").unwrap()),
                Some(KeyRange::new("m", "n").unwrap()),
            ]
        );
        assert_eq!(
            map.shards()[0].clip(&KeyRange::new("x", "z").unwrap()),
            None
        );
    }

    #[test]
    fn combined_verdict_needs_everyone() {
        use Verdict::*;
        let got = combine_verdicts(&[
            vec![
                Committed,
                Committed,
                Conflict,
                TooOld { oldest: Version(7) },
            ],
            vec![Committed, Conflict, Committed, Conflict],
        ]);
        assert_eq!(
            got,
            Some(vec![
                Committed,
                Conflict,
                Conflict,
                TooOld { oldest: Version(7) }
            ])
        );
        assert_eq!(combine_verdicts(&[vec![Committed], vec![]]), None);
    }
}
