//! The range merge of a newer layer of writes over an older layer of stored pairs, written
//! once for every reader that layers state: storage (its in-memory MVCC window over the redb
//! snapshot) and the transaction builder (a transaction's own writes over a page read from
//! storage).
//!
//! [`merge`] is a pure function over two key-sorted streams:
//!
//! - the **newer** layer says, per key it names, an [`Answer`]: a value, a deletion, or
//!   [`Answer::Unknown`] ("nothing here, look below");
//! - the **older** layer holds key/value pairs ([`OlderEntry`]); its items are fallible, so a
//!   store can pass its read errors through (the first one ends the merge);
//! - a `cleared` predicate says whether a newer range clear hides an older pair whose key the
//!   newer layer does not answer (names not at all, or as `Unknown`).
//!
//! The rules, per key, in the order of the read:
//!
//! | newer layer      | older layer | answer                                  |
//! |------------------|-------------|-----------------------------------------|
//! | `Value(v)`       | any         | `v` (newer wins a tie)                  |
//! | `Deleted`        | any         | nothing                                 |
//! | `Unknown`/absent | `v`         | `v`, unless `cleared(key)`              |
//! | `Unknown`        | absent      | nothing                                 |
//!
//! At most `limit` pairs are returned; [`RangeRead::more`] is set when a further pair would
//! have been returned, so a `limit` of 0 answers no pairs and `more` says whether the range
//! holds any.
//!
//! Both streams are given ascending, and must be double-ended: a [`Direction::Reverse`] read
//! walks them from their ends, so a caller needs neither a second code path nor a boxed
//! iterator for each direction. An older pair's key and value are made ([`OlderEntry::to_pair`])
//! only when the pair is returned, so a store can hand out borrowed entries and copy only the
//! ones that are used; an entry is never moved once read (a redb entry is two guards of about
//! a hundred bytes each, and moving it through the loop cost a range read 15%).

use std::cmp::Ordering;

use crate::traits::RangeRead;
use crate::types::{Key, Value};

/// What the newer layer says of one key it names.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Answer {
    /// The key has this value.
    Value(Value),
    /// The key was cleared.
    Deleted,
    /// This layer does not know: the older layer has the answer (subject to `cleared`).
    Unknown,
}

/// The order of a range read.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Direction {
    /// Ascending keys, from the beginning of the range.
    Forward,
    /// Descending keys, from the end of the range.
    Reverse,
}

impl Direction {
    /// `Reverse` when `reverse`, else `Forward` (the flag the stage traits take).
    pub fn from_reverse(reverse: bool) -> Direction {
        if reverse {
            Direction::Reverse
        } else {
            Direction::Forward
        }
    }
}

/// One pair of the older layer.
///
/// The merge looks at [`OlderEntry::key`] to place the pair, and calls
/// [`OlderEntry::to_pair`] only for a pair it returns: an entry borrowed from a store (a
/// redb guard, say) is copied only when it is used.
pub trait OlderEntry {
    /// The pair's key.
    fn key(&self) -> &[u8];
    /// The pair, owned, for the answer.
    fn to_pair(&self) -> (Key, Value);
}

impl OlderEntry for (Key, Value) {
    fn key(&self) -> &[u8] {
        &self.0
    }

    fn to_pair(&self) -> (Key, Value) {
        // Two reference counts, no copy of the bytes.
        self.clone()
    }
}

/// The pairs of `newer` layered over `older`, in `direction`, at most `limit` of them. See the
/// module docs for the rules.
///
/// Both streams must be ascending by key, each key at most once; `newer` need name only the
/// keys it knows of. An error from `older` ends the merge and is returned.
///
/// ```
/// use std::convert::Infallible;
/// use strata_core::merge::{Answer, Direction, merge};
/// use strata_core::{Key, Value};
///
/// let newer = vec![
///     (Key::from("b"), Answer::Value("new".into())),
///     (Key::from("c"), Answer::Deleted),
/// ];
/// let older: Vec<Result<(Key, Value), Infallible>> = ["a", "c", "d", "e"]
///     .into_iter()
///     .map(|k| Ok((Key::from(k), Value::from("old"))))
///     .collect();
/// // A newer range clear hides `d`.
/// let cleared = |key: &[u8]| key == b"d";
///
/// let Ok(read) = merge(newer.clone(), older.clone(), cleared, Direction::Forward, 10);
/// let keys: Vec<&[u8]> = read.entries.iter().map(|(k, _)| k.as_ref()).collect();
/// assert_eq!(keys, [&b"a"[..], b"b", b"e"]);
/// assert_eq!(read.entries[1].1, Value::from("new"));
/// assert!(!read.more);
///
/// // From the end, two at most: `e`, `b`, and more remain.
/// let Ok(read) = merge(newer, older, cleared, Direction::Reverse, 2);
/// let keys: Vec<&[u8]> = read.entries.iter().map(|(k, _)| k.as_ref()).collect();
/// assert_eq!(keys, [&b"e"[..], b"b"]);
/// assert!(read.more);
/// ```
pub fn merge<N, O, T, E>(
    newer: N,
    older: O,
    cleared: impl Fn(&[u8]) -> bool,
    direction: Direction,
    limit: usize,
) -> Result<RangeRead, E>
where
    N: IntoIterator<Item = (Key, Answer)>,
    N::IntoIter: DoubleEndedIterator,
    O: IntoIterator<Item = Result<T, E>>,
    O::IntoIter: DoubleEndedIterator,
    T: OlderEntry,
{
    match direction {
        Direction::Forward => merge_in_order(
            newer.into_iter(),
            older.into_iter(),
            cleared,
            Ordering::Less,
            limit,
        ),
        Direction::Reverse => merge_in_order(
            newer.into_iter().rev(),
            older.into_iter().rev(),
            cleared,
            Ordering::Greater,
            limit,
        ),
    }
}

/// A pair the merge found for the answer.
/// Which layer answers a key.
enum Pick {
    Newer(Key, Value),
    /// The older entry at hand, still where it was read.
    Older,
}

fn merge_in_order<T, E>(
    mut newer: impl Iterator<Item = (Key, Answer)>,
    mut older: impl Iterator<Item = Result<T, E>>,
    cleared: impl Fn(&[u8]) -> bool,
    first: Ordering,
    limit: usize,
) -> Result<RangeRead, E>
where
    T: OlderEntry,
{
    let mut out = RangeRead::default();
    let mut next_newer = newer.next();
    let mut next_older = older.next().transpose()?;
    loop {
        let (take_newer, take_older) = match (&next_newer, &next_older) {
            (None, None) => break,
            (Some(_), None) => (true, false),
            (None, Some(_)) => (false, true),
            (Some((key, _)), Some(entry)) => match key.as_ref().cmp(entry.key()) {
                Ordering::Equal => (true, true),
                order => (order == first, order != first),
            },
        };
        // The pair this key contributes, if any. An older entry is copied here, in place, and
        // only once the limit allows it.
        let pair = if take_newer {
            let Some((key, answer)) = next_newer.take() else {
                break;
            };
            next_newer = newer.next();
            match answer {
                Answer::Value(value) => Some(Pick::Newer(key, value)),
                Answer::Deleted => None,
                Answer::Unknown => (take_older && !cleared(&key)).then_some(Pick::Older),
            }
        } else {
            next_older
                .as_ref()
                .filter(|entry| !cleared(entry.key()))
                .map(|_| Pick::Older)
        };
        if let Some(pick) = pair {
            if out.entries.len() == limit {
                out.more = true;
                break;
            }
            out.entries.push(match (pick, &next_older) {
                (Pick::Newer(key, value), _) => (key, value),
                (Pick::Older, Some(entry)) => entry.to_pair(),
                // `Older` is only picked while an older entry is there.
                (Pick::Older, None) => break,
            });
        }
        if take_older {
            next_older = older.next().transpose()?;
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use std::collections::BTreeMap;
    use std::convert::Infallible;

    use proptest::prelude::*;

    use super::*;

    type Older = Vec<Result<(Key, Value), Infallible>>;

    fn older(pairs: &[(&'static str, &'static str)]) -> Older {
        pairs
            .iter()
            .map(|&(k, v)| Ok((Key::from(k), Value::from(v))))
            .collect()
    }

    fn newer(answers: &[(&'static str, Answer)]) -> Vec<(Key, Answer)> {
        answers
            .iter()
            .map(|(k, a)| (Key::from(*k), a.clone()))
            .collect()
    }

    fn value(v: &'static str) -> Answer {
        Answer::Value(Value::from(v))
    }

    fn nothing_cleared(_: &[u8]) -> bool {
        false
    }

    /// The merge's pairs as strings, and its `more`.
    fn run(
        n: &[(&'static str, Answer)],
        o: &[(&'static str, &'static str)],
        cleared: impl Fn(&[u8]) -> bool,
        direction: Direction,
        limit: usize,
    ) -> (Vec<(String, String)>, bool) {
        let Ok(read) = merge(newer(n), older(o), cleared, direction, limit);
        let pairs = read
            .entries
            .iter()
            .map(|(k, v)| {
                (
                    String::from_utf8(k.to_vec()).unwrap(),
                    String::from_utf8(v.to_vec()).unwrap(),
                )
            })
            .collect();
        (pairs, read.more)
    }

    fn pairs(ps: &[(&str, &str)]) -> Vec<(String, String)> {
        ps.iter()
            .map(|&(k, v)| (k.to_owned(), v.to_owned()))
            .collect()
    }

    #[test]
    fn the_newer_value_wins_a_tie() {
        let got = run(
            &[("k", value("new"))],
            &[("k", "old")],
            nothing_cleared,
            Direction::Forward,
            10,
        );
        assert_eq!(got, (pairs(&[("k", "new")]), false));
    }

    #[test]
    fn a_newer_deletion_hides_the_older_pair() {
        let got = run(
            &[("k", Answer::Deleted)],
            &[("j", "old"), ("k", "old")],
            nothing_cleared,
            Direction::Forward,
            10,
        );
        assert_eq!(got, (pairs(&[("j", "old")]), false));
    }

    #[test]
    fn unknown_looks_below_and_a_clear_hides_what_it_finds() {
        let o = [("a", "old"), ("b", "old")];
        let n = [
            ("a", Answer::Unknown),
            ("b", Answer::Unknown),
            ("c", Answer::Unknown),
        ];
        let got = run(&n, &o, nothing_cleared, Direction::Forward, 10);
        assert_eq!(got, (pairs(&[("a", "old"), ("b", "old")]), false));
        let got = run(&n, &o, |k| k == b"b", Direction::Forward, 10);
        assert_eq!(got, (pairs(&[("a", "old")]), false));
    }

    #[test]
    fn a_clear_hides_older_pairs_the_newer_layer_does_not_name_but_not_newer_values() {
        let got = run(
            &[("b", value("new"))],
            &[("a", "old"), ("b", "old"), ("c", "old")],
            |_| true,
            Direction::Forward,
            10,
        );
        assert_eq!(got, (pairs(&[("b", "new")]), false));
    }

    #[test]
    fn newer_values_alone_are_returned_and_deletions_alone_are_not() {
        let got = run(
            &[("a", value("1")), ("b", Answer::Deleted), ("c", value("3"))],
            &[],
            nothing_cleared,
            Direction::Forward,
            10,
        );
        assert_eq!(got, (pairs(&[("a", "1"), ("c", "3")]), false));
    }

    #[test]
    fn reverse_walks_both_layers_from_their_ends() {
        let got = run(
            &[("b", value("new")), ("d", Answer::Deleted)],
            &[("a", "old"), ("c", "old"), ("d", "old"), ("e", "old")],
            nothing_cleared,
            Direction::Reverse,
            10,
        );
        assert_eq!(
            got,
            (
                pairs(&[("e", "old"), ("c", "old"), ("b", "new"), ("a", "old")]),
                false
            )
        );
    }

    #[test]
    fn the_limit_counts_returned_pairs_and_more_says_one_was_left() {
        let n = [("a", Answer::Deleted), ("b", value("new"))];
        let o = [("a", "old"), ("c", "old")];
        let forward = |limit| run(&n, &o, nothing_cleared, Direction::Forward, limit);
        assert_eq!(forward(1), (pairs(&[("b", "new")]), true));
        assert_eq!(forward(2), (pairs(&[("b", "new"), ("c", "old")]), false));
        // Hidden pairs after the limit do not count as more.
        let hidden = run(
            &[("a", value("new")), ("b", Answer::Deleted)],
            &[("c", "old")],
            |k| k == b"c",
            Direction::Forward,
            1,
        );
        assert_eq!(hidden, (pairs(&[("a", "new")]), false));
    }

    #[test]
    fn a_limit_of_zero_returns_nothing_and_says_whether_anything_is_there() {
        let visible = run(&[], &[("a", "old")], nothing_cleared, Direction::Forward, 0);
        assert_eq!(visible, (vec![], true));
        let hidden = run(
            &[("a", Answer::Deleted)],
            &[("a", "old"), ("b", "old")],
            |k| k == b"b",
            Direction::Reverse,
            0,
        );
        assert_eq!(hidden, (vec![], false));
        let empty = run(&[], &[], nothing_cleared, Direction::Forward, 0);
        assert_eq!(empty, (vec![], false));
    }

    #[test]
    fn an_older_error_ends_the_merge() {
        let older: Vec<std::result::Result<(Key, Value), &str>> = vec![
            Ok((Key::from("a"), Value::from("old"))),
            Err("broken page"),
            Ok((Key::from("c"), Value::from("old"))),
        ];
        let got = merge(Vec::new(), older, nothing_cleared, Direction::Forward, 10);
        assert_eq!(got, Err("broken page"));
    }

    /// An older entry that counts how often it is made into a pair.
    struct Counted<'a>(&'a [u8], &'a std::cell::Cell<usize>);

    impl OlderEntry for Counted<'_> {
        fn key(&self) -> &[u8] {
            self.0
        }

        fn to_pair(&self) -> (Key, Value) {
            self.1.set(self.1.get() + 1);
            (Key::copy_from_slice(self.0), Value::from_static(b"v"))
        }
    }

    #[test]
    fn only_returned_older_pairs_are_made() {
        let made = std::cell::Cell::new(0);
        let older: Vec<Result<Counted<'_>, Infallible>> = [&b"a"[..], b"b", b"c", b"d", b"e"]
            .into_iter()
            .map(|k| Ok(Counted(k, &made)))
            .collect();
        // `a` is shadowed, `b` deleted, `c` cleared, `d` returned; `e` is past the limit.
        let n = newer(&[("a", value("new")), ("b", Answer::Deleted)]);
        let Ok(read) = merge(n, older, |k| k == b"c", Direction::Forward, 2);
        assert_eq!(read.entries.len(), 2);
        assert!(read.more);
        assert_eq!(made.get(), 1);
    }

    /// What the newer layer of the model holds of a key.
    fn answer_strategy() -> impl Strategy<Value = Answer> {
        prop_oneof![
            (0u8..4).prop_map(|v| Answer::Value(Value::from(vec![b'n', v]))),
            Just(Answer::Deleted),
            Just(Answer::Unknown),
        ]
    }

    proptest! {
        /// The merge against a model: the older layer as a map, overlaid key by key by the
        /// newer one, filtered, ordered and cut at the limit.
        #[test]
        fn merge_matches_a_map_model(
            older_map in prop::collection::btree_map(0u8..24, 0u8..4, 0..16),
            newer_map in prop::collection::btree_map(0u8..24, answer_strategy(), 0..16),
            cleared_keys in prop::collection::btree_set(0u8..24, 0..8),
            reverse in any::<bool>(),
            limit in 0usize..20,
        ) {
            let key = |k: u8| Key::from(vec![k]);
            let is_cleared = |k: &[u8]| k.len() == 1 && cleared_keys.contains(&k[0]);

            let mut model: BTreeMap<Key, Value> = older_map
                .iter()
                .filter(|(k, _)| !cleared_keys.contains(k))
                .map(|(&k, &v)| (key(k), Value::from(vec![b'o', v])))
                .collect();
            for (&k, answer) in &newer_map {
                match answer {
                    Answer::Value(v) => {
                        model.insert(key(k), v.clone());
                    }
                    Answer::Deleted => {
                        model.remove(&key(k));
                    }
                    Answer::Unknown => {}
                }
            }
            let mut expected: Vec<(Key, Value)> = model.into_iter().collect();
            if reverse {
                expected.reverse();
            }
            let more = expected.len() > limit;
            expected.truncate(limit);

            let newer: Vec<(Key, Answer)> =
                newer_map.iter().map(|(&k, a)| (key(k), a.clone())).collect();
            let older: Older = older_map
                .iter()
                .map(|(&k, &v)| Ok((key(k), Value::from(vec![b'o', v]))))
                .collect();
            let Ok(read) = merge(newer, older, is_cleared, Direction::from_reverse(reverse), limit);
            prop_assert_eq!(read.entries, expected);
            prop_assert_eq!(read.more, more);
        }
    }

    #[test]
    fn direction_from_the_flag() {
        assert_eq!(Direction::from_reverse(true), Direction::Reverse);
        assert_eq!(Direction::from_reverse(false), Direction::Forward);
    }

    #[test]
    fn keys_are_placed_by_their_bytes_not_their_length() {
        let got = run(
            &[("ab", value("new"))],
            &[("a", "old"), ("b", "old")],
            nothing_cleared,
            Direction::Reverse,
            3,
        );
        assert_eq!(
            got,
            (pairs(&[("b", "old"), ("ab", "new"), ("a", "old")]), false)
        );
    }
}
