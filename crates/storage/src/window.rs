//! The MVCC window: every mutation applied above the durable version, in memory.

use std::collections::VecDeque;

use smallvec::SmallVec;

use strata_core::merge::Answer;
use strata_core::{Key, KeyRange, Mutation, Result, Value, Version};

use crate::atomic::Bases;
use crate::keymap::KeyMap;

/// When a mutation happened: its commit version, then its place among the mutations of that
/// version (a transaction may clear a range and then set a key inside it, at one version).
pub(crate) type Stamp = (Version, u32);

/// The writes of one key in the window, oldest first; `None` is a clear. Most keys are
/// written once within a window, so the first write is held inline, in the key's bucket: a
/// `Vec` would allocate room for four on its first push (192 bytes), for every key.
type History = SmallVec<[(Stamp, Option<Value>); 1]>;

/// Spare places of the touched keys' queue that are never given back.
const TOUCHED_SLACK: usize = 4096;

/// The mutations of versions above the durable version.
#[derive(Debug, Default)]
pub(crate) struct Window {
    /// Point writes by key.
    points: KeyMap<History>,
    /// The key of every point write, with its version, in version order (mutations apply in
    /// version order), so that making versions durable touches only their keys instead of
    /// scanning the whole window.
    touched: VecDeque<(Version, Key)>,
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
            self.touch(stamp.0, key.clone());
            self.points.get_or_default(key).push((stamp, value));
            self.len += 1;
        }
    }

    /// Lists `key` among the keys written at `version`, in version order: at the end, unless
    /// the window was handed an earlier version than its last (which the server never does).
    fn touch(&mut self, version: Version, key: Key) {
        if self.touched.back().is_some_and(|(v, _)| *v > version) {
            let at = self.touched.partition_point(|(v, _)| *v <= version);
            self.touched.insert(at, (version, key));
        } else {
            self.touched.push_back((version, key));
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
            .range(range.begin(), range.end())
            .map(|(k, history)| (k.clone(), self.answer(k, Some(history), version)))
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
        let mut keys: Vec<&Key> = self
            .touched
            .iter()
            .take_while(|(v, _)| *v <= version)
            .map(|(_, k)| k)
            .collect();
        keys.sort_unstable();
        keys.dedup();
        let keys = keys
            .into_iter()
            .map(|k| {
                let value = match self.answer(k, self.points.get(k), version) {
                    Answer::Value(v) => Some(v),
                    Answer::Deleted | Answer::Unknown => None,
                };
                (k.clone(), value)
            })
            .collect();
        (clears, keys)
    }

    /// Forgets everything at or before `version` (now durable elsewhere), touching only the
    /// keys written at those versions.
    pub(crate) fn forget_through(&mut self, version: Version) {
        let done = self.touched.partition_point(|(v, _)| *v <= version);
        for (_, key) in self.touched.drain(..done) {
            self.points.edit(&key, |vs| {
                let before = vs.len();
                vs.retain(|(s, _)| s.0 > version);
                self.len -= before - vs.len();
                !vs.is_empty()
            });
        }
        // Give back what a spike left (a window that could not flush for a while), with room
        // to spare so that steady use does not shrink and grow it in turn.
        if self.touched.capacity() > TOUCHED_SLACK.max(4 * self.touched.len()) {
            self.touched.shrink_to(2 * self.touched.len());
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
        self.touched.retain(|(v, _)| keep(&(*v, 0)));
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
        fn a_window_of_near_keys_answers_as_a_map_of_plain_keys(
            writes in proptest::collection::vec((near_keys(), 0u8..4), 1..60),
            probes in proptest::collection::vec(near_keys(), 1..20),
        ) {
            // Every generated key is below 41 bytes of 0xff.
            let everything = KeyRange::new("", vec![0xffu8; 41]).unwrap();
            let mut w = Window::default();
            let mut model = std::collections::BTreeMap::<Vec<u8>, u8>::new();
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

    proptest::proptest! {
        /// Writes over many versions, with the window flushed and moved forward and rolled
        /// back between them, against a model of every write: what a flush takes, what stays
        /// and what reads see all agree with it.
        #[test]
        fn a_moving_window_keeps_exactly_the_writes_above_its_durable_version(
            steps in proptest::collection::vec((near_keys(), 0u8..8, 0u8..10), 1..120),
        ) {
            let everything = KeyRange::new("", vec![0xffu8; 41]).unwrap();
            let shards = [everything.clone()];
            let mut w = Window::default();
            // (version, key, value) of every write the window should still hold.
            let mut model: Vec<(u64, Vec<u8>, u8)> = Vec::new();
            let (mut version, mut at) = (1u64, 0u32);
            for (key, value, action) in steps {
                match action {
                    // Flush and forget everything up to two versions back.
                    0 => {
                        let through = version.saturating_sub(2);
                        let (_, flushed) = w.flushable(Version(through));
                        let mut want: Vec<(Vec<u8>, u8)> = Vec::new();
                        for (v, k, x) in &model {
                            if *v <= through {
                                want.retain(|(wk, _)| wk != k);
                                want.push((k.clone(), *x));
                            }
                        }
                        want.sort();
                        let got: Vec<(Vec<u8>, u8)> = flushed
                            .into_iter()
                            .map(|(k, v)| (k.to_vec(), v.map_or(0, |v| v[0])))
                            .collect();
                        proptest::prop_assert_eq!(got, want);
                        w.forget_through(Version(through));
                        model.retain(|(v, _, _)| *v > through);
                    }
                    // Roll back the newest version.
                    1 => {
                        version = version.saturating_sub(1).max(1);
                        w.forget_after(Version(version));
                        model.retain(|(v, _, _)| *v <= version);
                    }
                    // A write, at the current version or the next.
                    _ => {
                        version += u64::from(action % 2);
                        let m = Mutation::Set { key: key.clone().into(), value: vec![value].into() };
                        at += 1;
                        w.apply((Version(version), at), m, &shards, &Bases::default()).unwrap();
                        model.push((version, key, value));
                    }
                }
                proptest::prop_assert_eq!(w.len(), model.len());
                let mut newest = std::collections::BTreeMap::<Vec<u8>, u8>::new();
                for (_, k, x) in &model {
                    newest.insert(k.clone(), *x);
                }
                let scanned: Vec<(Vec<u8>, Answer)> = w
                    .scan(&everything, Version(version))
                    .into_iter()
                    .map(|(k, a)| (k.to_vec(), a))
                    .collect();
                let want: Vec<(Vec<u8>, Answer)> = newest
                    .iter()
                    .map(|(k, x)| (k.clone(), Answer::Value(vec![*x].into())))
                    .collect();
                proptest::prop_assert_eq!(scanned, want);
            }
        }
    }

    #[test]
    fn a_write_handed_in_below_the_newest_version_is_still_forgotten_with_its_version() {
        let mut w = Window::default();
        put(&mut w, (Version(5), 0), set("b", "5"), &all());
        put(&mut w, (Version(3), 0), set("a", "3"), &all());
        put(&mut w, (Version(6), 0), set("c", "6"), &all());
        let (_, flushed) = w.flushable(Version(4));
        assert_eq!(flushed, vec![(Key::from("a"), Some(Value::from("3")))]);
        w.forget_through(Version(4));
        assert_eq!(w.get(b"a", Version(6)), Answer::Unknown);
        assert_eq!(w.get(b"b", Version(6)), Answer::Value("5".into()));
        assert_eq!(w.len(), 2);
    }

    /// A window that grew and then drained gives its queue of touched keys back, as it gives
    /// back its keys (`KeyMap` packs its places).
    #[test]
    fn a_drained_window_gives_its_memory_back() {
        let mut w = Window::default();
        for v in 1..=20_000u32 {
            let m = Mutation::Set {
                key: format!("k{v}").into(),
                value: "v".into(),
            };
            put(&mut w, (Version(u64::from(v)), 0), m, &all());
        }
        w.forget_through(Version(20_000));
        assert_eq!(w.len(), 0);
        assert!(
            w.touched.capacity() <= TOUCHED_SLACK,
            "{}",
            w.touched.capacity()
        );
        assert_eq!(w.get(b"k7", Version(20_000)), Answer::Unknown);
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
