//! The MVCC window: every mutation applied above the durable version, in memory.

use std::borrow::Borrow;
use std::cmp::Ordering;
use std::collections::BTreeMap;
use std::ops::Bound;

use smallvec::SmallVec;

use strata_core::merge::Answer;
use strata_core::{Key, KeyRange, Mutation, Result, Value, Version};

use crate::atomic::Bases;

/// When a mutation happened: its commit version, then its place among the mutations of that
/// version (a transaction may clear a range and then set a key inside it, at one version).
pub(crate) type Stamp = (Version, u32);

/// A key as the window's map orders it: its first 16 bytes (zero-padded) as a big-endian
/// number, then the whole key.
///
/// The order is exactly the keys' byte order: a padded head below another's means a smaller
/// key, and equal heads fall back to the bytes. So ranges and lookups by `&[u8]` (through
/// `Borrow`) find what they would in a map of plain keys. The head is for speed: a key's
/// bytes live in the log payload it was decoded from, so comparing two keys follows a pointer
/// into memory that a large window has long evicted from the cache, while the head sits in
/// the map's node and settles most comparisons of a search (every one, for keys that differ
/// within their first 16 bytes).
#[derive(Clone, Debug)]
struct WindowKey {
    head: u128,
    key: Key,
}

impl WindowKey {
    fn new(key: Key) -> WindowKey {
        let mut head = [0u8; 16];
        let n = key.len().min(head.len());
        head[..n].copy_from_slice(&key[..n]);
        WindowKey {
            head: u128::from_be_bytes(head),
            key,
        }
    }
}

impl PartialEq for WindowKey {
    fn eq(&self, other: &WindowKey) -> bool {
        self.head == other.head && self.key == other.key
    }
}

impl Eq for WindowKey {}

impl Ord for WindowKey {
    fn cmp(&self, other: &WindowKey) -> Ordering {
        self.head
            .cmp(&other.head)
            .then_with(|| self.key.cmp(&other.key))
    }
}

impl PartialOrd for WindowKey {
    fn partial_cmp(&self, other: &WindowKey) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

/// Sound because the orders agree (see [`WindowKey`]).
impl Borrow<[u8]> for WindowKey {
    fn borrow(&self) -> &[u8] {
        &self.key
    }
}

/// The writes of one key in the window, oldest first; `None` is a clear. Most keys are
/// written once within a window, so the first write is held inline, in the map's node: a `Vec`
/// would allocate room for four on its first push (192 bytes), for every key.
type History = SmallVec<[(Stamp, Option<Value>); 1]>;

/// The mutations of versions above the durable version.
#[derive(Debug, Default)]
pub(crate) struct Window {
    /// Point writes by key.
    points: BTreeMap<WindowKey, History>,
    /// The keys written at each version, so that making versions durable touches only them
    /// instead of scanning the whole window.
    touched: BTreeMap<Version, Vec<WindowKey>>,
    /// Range clears, oldest first.
    clears: Vec<(KeyRange, Stamp)>,
    /// How many point writes and clears are held.
    len: usize,
}

/// A key's final state at a version, for the durable store.
pub(crate) type Flushed = (Key, Option<Value>);

impl Window {
    pub(crate) fn len(&self) -> usize {
        self.len
    }

    /// Applies one mutation at `stamp`, keeping only the parts inside `shards`. An atomic
    /// operation is applied to the key's value just before it: the window's answer, or where
    /// the window knows nothing of the key, the value `bases` holds for it (see
    /// `atomic.rs`); it is kept as the set of its result.
    pub(crate) fn apply(
        &mut self,
        stamp: Stamp,
        mutation: Mutation,
        shards: &[KeyRange],
        bases: &Bases,
    ) -> Result<()> {
        match mutation {
            Mutation::Set { key, value } => self.point(stamp, key, Some(value), shards),
            Mutation::Clear { key } => self.point(stamp, key, None, shards),
            Mutation::ClearRange { range } => {
                for part in shards.iter().filter_map(|s| s.intersection(&range)) {
                    self.clears.push((part, stamp));
                    self.len += 1;
                }
            }
            Mutation::Atomic { op, key, operand } => {
                if shards.iter().any(|s| s.contains(&key)) {
                    let before = match self.get(&key, stamp.0) {
                        Answer::Value(v) => Some(v),
                        Answer::Deleted => None,
                        Answer::Unknown => bases.before(&key)?,
                    };
                    let value = op.apply(before.as_deref(), &operand);
                    self.point(stamp, key, Some(value), shards);
                }
            }
        }
        Ok(())
    }

    fn point(&mut self, stamp: Stamp, key: Key, value: Option<Value>, shards: &[KeyRange]) {
        if shards.iter().any(|s| s.contains(&key)) {
            let key = WindowKey::new(key);
            self.touched.entry(stamp.0).or_default().push(key.clone());
            self.points.entry(key).or_default().push((stamp, value));
            self.len += 1;
        }
    }

    /// The newest clear covering `key` at or before `version`.
    fn clear_at(&self, key: &[u8], version: Version) -> Option<Stamp> {
        self.clears
            .iter()
            .filter(|(r, s)| s.0 <= version && r.contains(key))
            .map(|(_, s)| *s)
            .max()
    }

    /// What the window says of `key` at `version`: `Unknown` when it holds nothing of it at
    /// that version, and the durable store has the answer.
    pub(crate) fn get(&self, key: &[u8], version: Version) -> Answer {
        self.answer(key, self.points.get(key), version)
    }

    /// What `history`, the window's writes of `key`, and the window's range clears say of
    /// `key` at `version`.
    fn answer(&self, key: &[u8], history: Option<&History>, version: Version) -> Answer {
        let point = history.and_then(|vs| vs.iter().rev().find(|(s, _)| s.0 <= version));
        let clear = self.clear_at(key, version);
        match (point, clear) {
            (Some((ps, _)), Some(cs)) if cs > *ps => Answer::Deleted,
            (Some((_, Some(v))), _) => Answer::Value(v.clone()),
            (Some((_, None)), _) | (None, Some(_)) => Answer::Deleted,
            (None, None) => Answer::Unknown,
        }
    }

    /// What the window says of every key it holds in `range` at `version`, ascending.
    pub(crate) fn scan(&self, range: &KeyRange, version: Version) -> Vec<(Key, Answer)> {
        self.points
            .range::<[u8], _>((
                Bound::Included(range.begin().as_ref()),
                Bound::Excluded(range.end().as_ref()),
            ))
            .map(|(k, history)| (k.key.clone(), self.answer(&k.key, Some(history), version)))
            .collect()
    }

    /// The range clears at or before `version` that touch `range`, for keys the window does
    /// not hold.
    pub(crate) fn clears_in(&self, range: &KeyRange, version: Version) -> Vec<KeyRange> {
        self.clears
            .iter()
            .filter(|(r, s)| s.0 <= version && r.intersects(range))
            .map(|(r, _)| r.clone())
            .collect()
    }

    /// Everything the durable store needs to move to `version`: the range clears at or before
    /// it (to apply first), then the final state of every key written at or before it.
    pub(crate) fn flushable(&self, version: Version) -> (Vec<KeyRange>, Vec<Flushed>) {
        let clears = self
            .clears
            .iter()
            .filter(|(_, s)| s.0 <= version)
            .map(|(r, _)| r.clone())
            .collect();
        let mut keys: Vec<&WindowKey> = self
            .touched
            .range(..=version)
            .flat_map(|(_, ks)| ks.iter())
            .collect();
        keys.sort_unstable();
        keys.dedup();
        let keys = keys
            .into_iter()
            .map(|k| {
                let value = match self.answer(&k.key, self.points.get(k), version) {
                    Answer::Value(v) => Some(v),
                    Answer::Deleted | Answer::Unknown => None,
                };
                (k.key.clone(), value)
            })
            .collect();
        (clears, keys)
    }

    /// Forgets everything at or before `version` (now durable elsewhere), touching only the
    /// keys written at those versions.
    pub(crate) fn forget_through(&mut self, version: Version) {
        let later = self
            .touched
            .split_off(&Version(version.0.saturating_add(1)));
        let done = std::mem::replace(&mut self.touched, later);
        for key in done.into_values().flatten() {
            if let Some(vs) = self.points.get_mut(&key) {
                let before = vs.len();
                vs.retain(|(s, _)| s.0 > version);
                self.len -= before - vs.len();
                if vs.is_empty() {
                    self.points.remove(&key);
                }
            }
        }
        let gone = self.clears.partition_point(|(_, s)| s.0 <= version);
        self.clears.drain(..gone);
        self.len -= gone;
    }

    /// Forgets everything after `version` (a roll back).
    pub(crate) fn forget_after(&mut self, version: Version) {
        self.retain(|s| s.0 <= version);
    }

    fn retain(&mut self, keep: impl Fn(&Stamp) -> bool) {
        self.touched.retain(|v, _| keep(&(*v, 0)));
        let mut len = 0;
        self.points.retain(|_, vs| {
            vs.retain(|(s, _)| keep(s));
            len += vs.len();
            !vs.is_empty()
        });
        self.clears.retain(|(_, s)| keep(s));
        self.len = len + self.clears.len();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Keys over a small alphabet (zero among it) and lengths around the 16-byte head, so
    /// that generated keys share long prefixes, differ only in trailing zeros, and differ
    /// only past the head: the cases where the head alone cannot decide.
    fn near_keys() -> impl proptest::strategy::Strategy<Value = Vec<u8>> {
        proptest::collection::vec(proptest::sample::select(vec![0u8, 1, b'a', 0xff]), 0..40)
    }

    proptest::proptest! {
        #[test]
        fn window_keys_order_as_their_bytes(a in near_keys(), b in near_keys()) {
            let (ka, kb) = (WindowKey::new(a.clone().into()), WindowKey::new(b.clone().into()));
            proptest::prop_assert_eq!(ka.cmp(&kb), a.cmp(&b));
            proptest::prop_assert_eq!(ka == kb, a == b);
        }

        #[test]
        fn a_window_of_near_keys_answers_as_a_map_of_plain_keys(
            writes in proptest::collection::vec((near_keys(), 0u8..4), 1..60),
            probes in proptest::collection::vec(near_keys(), 1..20),
        ) {
            // Every generated key is below 41 bytes of 0xff.
            let everything = KeyRange::new("", vec![0xffu8; 41]).unwrap();
            let mut w = Window::default();
            let mut model = BTreeMap::<Vec<u8>, u8>::new();
            for (i, (k, v)) in writes.iter().enumerate() {
                let m = Mutation::Set { key: k.clone().into(), value: vec![*v].into() };
                let shards = [everything.clone()];
                w.apply((Version(1), i as u32), m, &shards, &Bases::default()).unwrap();
                model.insert(k.clone(), *v);
            }
            for p in probes.iter().chain(model.keys()) {
                let want = model.get(p).map_or(Answer::Unknown, |v| Answer::Value(vec![*v].into()));
                proptest::prop_assert_eq!(w.get(p, Version(1)), want);
            }
            let scanned: Vec<Vec<u8>> =
                w.scan(&everything, Version(1)).into_iter().map(|(k, _)| k.to_vec()).collect();
            let expected: Vec<Vec<u8>> = model.keys().cloned().collect();
            proptest::prop_assert_eq!(scanned, expected);
        }
    }

    fn all() -> Vec<KeyRange> {
        vec![KeyRange::new("", "\u{7f}").unwrap()]
    }

    fn put(w: &mut Window, stamp: Stamp, m: Mutation, shards: &[KeyRange]) {
        w.apply(stamp, m, shards, &Bases::default()).unwrap();
    }

    fn set(k: &'static str, v: &'static str) -> Mutation {
        Mutation::Set {
            key: k.into(),
            value: v.into(),
        }
    }

    #[test]
    fn clear_then_set_in_one_version_keeps_the_set() {
        let mut w = Window::default();
        put(&mut w, (Version(5), 0), set("a", "old"), &all());
        put(
            &mut w,
            (Version(9), 0),
            Mutation::ClearRange {
                range: KeyRange::new("a", "z").unwrap(),
            },
            &all(),
        );
        put(&mut w, (Version(9), 1), set("b", "new"), &all());
        assert_eq!(w.get(b"a", Version(8)), Answer::Value("old".into()));
        assert_eq!(w.get(b"a", Version(9)), Answer::Deleted);
        assert_eq!(w.get(b"b", Version(9)), Answer::Value("new".into()));
        assert_eq!(w.get(b"c", Version(9)), Answer::Deleted);
        assert_eq!(w.get(b"c", Version(8)), Answer::Unknown);
    }

    #[test]
    fn mutations_outside_the_shards_are_dropped() {
        let mut w = Window::default();
        let shards = vec![KeyRange::new("m", "n").unwrap()];
        put(&mut w, (Version(1), 0), set("a", "x"), &shards);
        put(&mut w, (Version(1), 1), set("m1", "x"), &shards);
        put(
            &mut w,
            (Version(1), 2),
            Mutation::ClearRange {
                range: KeyRange::new("a", "z").unwrap(),
            },
            &shards,
        );
        assert_eq!(w.len(), 2);
        assert_eq!(
            w.clears_in(&KeyRange::new("a", "z").unwrap(), Version(1)),
            shards
        );
    }

    #[test]
    fn forgetting_moves_the_window() {
        let mut w = Window::default();
        for v in 1..=10 {
            put(&mut w, (Version(v), 0), set("k", "v"), &all());
        }
        w.forget_through(Version(7));
        assert_eq!(w.len(), 3);
        w.forget_after(Version(8));
        assert_eq!(w.len(), 1);
        assert_eq!(w.get(b"k", Version(7)), Answer::Unknown);
    }

    fn add(k: &'static str, n: u8) -> Mutation {
        Mutation::Atomic {
            op: strata_core::AtomicOp::Add,
            key: k.into(),
            operand: Value::from(vec![n]),
        }
    }

    #[test]
    fn an_atomic_operation_applies_to_the_newest_state_before_it_and_is_kept_as_a_set() {
        let mut w = Window::default();
        put(&mut w, (Version(1), 0), set("a", "\x05"), &all());
        put(&mut w, (Version(2), 0), add("a", 1), &all());
        // Within one version, in order: after a clear the value is missing, so the operand.
        put(
            &mut w,
            (Version(3), 0),
            Mutation::ClearRange {
                range: KeyRange::new("a", "b").unwrap(),
            },
            &all(),
        );
        put(&mut w, (Version(3), 1), add("a", 7), &all());
        put(&mut w, (Version(3), 2), add("a", 1), &all());
        assert_eq!(w.get(b"a", Version(1)), Answer::Value("\x05".into()));
        assert_eq!(w.get(b"a", Version(2)), Answer::Value("\x06".into()));
        assert_eq!(w.get(b"a", Version(3)), Answer::Value("\x08".into()));
        assert_eq!(w.len(), 5);
    }

    #[test]
    fn a_key_the_window_does_not_know_takes_its_value_from_the_bases_or_fails() {
        let mut w = Window::default();
        // No base for `k`: the apply refuses rather than guess that the key is missing.
        let no_base = w.apply((Version(1), 0), add("k", 1), &all(), &Bases::default());
        assert!(no_base.is_err());
        assert_eq!(w.len(), 0);
        // Outside the shards an operation needs no base: it is dropped.
        let shards = vec![KeyRange::new("m", "n").unwrap()];
        w.apply((Version(1), 0), add("k", 1), &shards, &Bases::default())
            .unwrap();
        assert_eq!(w.len(), 0);

        let bases = Bases::with(Version(0), [(Key::from("k"), Some(Value::from("\x09")))]);
        w.apply((Version(1), 0), add("k", 1), &all(), &bases)
            .unwrap();
        // The second one applies to the first one's result in the window, not to the base.
        w.apply((Version(1), 1), add("k", 1), &all(), &bases)
            .unwrap();
        assert_eq!(w.get(b"k", Version(1)), Answer::Value("\x0b".into()));
    }
}
