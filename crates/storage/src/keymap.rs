//! An ordered map from keys to values whose searches compare 16-byte numbers, not key bytes.

use std::collections::BTreeMap;
use std::collections::btree_map::Entry;
use std::ops::Bound;

use strata_core::Key;

/// A key's first 16 bytes, zero-padded, as a big-endian number.
///
/// Heads never order against their keys: `a <= b` gives `head(a) <= head(b)`, since the first
/// byte where the padded heads differ is either a byte where the keys differ or a byte past the
/// end of the shorter key, which a longer key's byte can only exceed. So the keys of a range
/// `[begin, end)` have heads in `[head(begin), head(end)]`, and keys whose heads differ order
/// as their heads do; only keys equal in their first 16 bytes (up to trailing zeros) share one.
fn head(key: &[u8]) -> u128 {
    let mut head = [0u8; 16];
    let n = key.len().min(head.len());
    head[..n].copy_from_slice(&key[..n]);
    u128::from_be_bytes(head)
}

#[cfg(test)]
thread_local! {
    /// Keys a range read stepped over on this thread, for tests of its cost.
    static VISITED: std::cell::Cell<usize> = const { std::cell::Cell::new(0) };
}

/// Counts a key a range read stepped over (in tests; nothing otherwise).
fn visited() {
    #[cfg(test)]
    VISITED.with(|v| v.set(v.get() + 1));
}

/// Whether `a` is `b`, given that their heads are equal: then they are equal in their first
/// 16 bytes up to trailing zeros, so equal lengths settle keys of 16 bytes or fewer without
/// reading their bytes (which, for a key long in the map, means a cache miss into the payload
/// it came from), and longer ones need only their tails compared.
fn same_as_head(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.get(16..) == b.get(16..)
}

/// The keys of one head: nearly always one; a map of them for keys that share their first 16
/// bytes (long common prefixes), which then compare by their bytes as in a plain map. An empty
/// map is a free place.
#[derive(Debug)]
enum Bucket<V> {
    One(Key, V),
    Many(BTreeMap<Key, V>),
}

impl<V: Default> Bucket<V> {
    fn get_or_default(&mut self, key: Key) -> &mut V {
        if self.is_empty() {
            *self = Bucket::One(key.clone(), V::default());
        } else if matches!(self, Bucket::One(k, _) if !same_as_head(k, &key)) {
            let mut many = BTreeMap::new();
            if let Bucket::One(k, v) = std::mem::replace(self, Bucket::Many(BTreeMap::new())) {
                many.insert(k, v);
            }
            *self = Bucket::Many(many);
        }
        match self {
            Bucket::One(_, v) => v,
            Bucket::Many(m) => m.entry(key).or_default(),
        }
    }
}

impl<V> Bucket<V> {
    fn get(&self, key: &[u8]) -> Option<&V> {
        match self {
            Bucket::One(k, v) => same_as_head(k, key).then_some(v),
            Bucket::Many(m) => m.get(key),
        }
    }

    /// Its keys from `begin` on (all of them for `None`), in order, without allocating. A
    /// bound inside a bucket of many keys is found by a search, not by stepping over the keys
    /// before it (a bucket may hold every key of a long common prefix).
    fn iter_from<'a>(&'a self, begin: Option<&'a [u8]>) -> impl Iterator<Item = (&'a Key, &'a V)> {
        let (one, many) = match self {
            Bucket::One(k, v) => (
                begin.is_none_or(|b| k.as_ref() >= b).then_some((k, v)),
                None,
            ),
            Bucket::Many(m) => {
                let from = begin.map_or(Bound::Unbounded, Bound::Included);
                (None, Some(m.range::<[u8], _>((from, Bound::Unbounded))))
            }
        };
        one.into_iter().chain(many.into_iter().flatten())
    }

    fn is_empty(&self) -> bool {
        matches!(self, Bucket::Many(m) if m.is_empty())
    }
}

/// Free places at which, once they are half of all places, the buckets are packed again, so
/// that the vector follows the map down instead of keeping its peak size.
const PACK_FREE_MIN: usize = 1024;

/// A place in the vector of buckets, as the heads' map holds it.
fn place_of(index: usize) -> u32 {
    u32::try_from(index).unwrap_or_else(|_| panic!("a window of over 2^32 keys"))
}

/// A map from keys to values, in key order, for maps too large for the cache.
///
/// A `BTreeMap<Key, V>` follows each key's pointer to its bytes at every comparison of a
/// search, and its nodes hold the keys' 32-byte handles and the values themselves; in a map of
/// hundreds of thousands of keys whose bytes live in long-evicted log payloads, a search is a
/// cache miss or two at every level. This map searches a `BTreeMap` from 16-byte heads
/// ([`head`]) to 4-byte places in a vector of buckets: numbers compared in registers, in nodes
/// a quarter the size (the upper levels stay in the cache), then key bytes compared once, in
/// the one bucket found.
#[derive(Debug)]
pub(crate) struct KeyMap<V> {
    heads: BTreeMap<u128, u32>,
    buckets: Vec<Bucket<V>>,
    /// Places in `buckets` that hold no key, for reuse.
    free: Vec<u32>,
}

impl<V> Default for KeyMap<V> {
    fn default() -> KeyMap<V> {
        KeyMap {
            heads: BTreeMap::new(),
            buckets: Vec::new(),
            free: Vec::new(),
        }
    }
}

impl<V: Default> KeyMap<V> {
    /// The value of `key`, made with `V::default()` if the map has none.
    pub(crate) fn get_or_default(&mut self, key: Key) -> &mut V {
        let place = match self.heads.entry(head(&key)) {
            Entry::Occupied(e) => *e.get(),
            Entry::Vacant(e) => {
                let place = match self.free.pop() {
                    Some(place) => place,
                    None => {
                        self.buckets.push(Bucket::Many(BTreeMap::new()));
                        place_of(self.buckets.len() - 1)
                    }
                };
                *e.insert(place)
            }
        };
        self.buckets[place as usize].get_or_default(key)
    }
}

impl<V> KeyMap<V> {
    pub(crate) fn get(&self, key: &[u8]) -> Option<&V> {
        let place = *self.heads.get(&head(key))?;
        self.buckets[place as usize].get(key)
    }

    /// Lets `edit` change the value of `key`, if the map has one, and removes the key when
    /// `edit` returns false: one search where a lookup and a removal would take two.
    pub(crate) fn edit(&mut self, key: &[u8], edit: impl FnOnce(&mut V) -> bool) {
        let Entry::Occupied(e) = self.heads.entry(head(key)) else {
            return;
        };
        let place = *e.get();
        let bucket = &mut self.buckets[place as usize];
        match bucket {
            Bucket::One(k, v) => {
                if same_as_head(k, key) && !edit(v) {
                    *bucket = Bucket::Many(BTreeMap::new());
                }
            }
            Bucket::Many(m) => {
                if m.get_mut(key).is_some_and(|v| !edit(v)) {
                    m.remove(key);
                }
            }
        }
        if bucket.is_empty() {
            e.remove();
            self.free.push(place);
            self.pack_if_sparse();
        }
    }

    /// The keys in `[begin, end)` with their values, ascending.
    pub(crate) fn range<'a>(
        &'a self,
        begin: &'a [u8],
        end: &'a [u8],
    ) -> impl Iterator<Item = (&'a Key, &'a V)> {
        // Only the first and the last head can hold keys outside the range (see `head`): the
        // first is entered at `begin`, and the keys come in order, so stopping settles the last.
        let first = head(begin);
        self.heads
            .range(first..=head(end).max(first))
            .flat_map(move |(&h, &place)| {
                let from = (h == first).then_some(begin);
                self.buckets[place as usize].iter_from(from)
            })
            .inspect(|_| visited())
            .take_while(move |(k, _)| k.as_ref() < end)
    }

    /// Keeps only the keys for which `keep` says so; it may change the values it keeps.
    pub(crate) fn retain(&mut self, mut keep: impl FnMut(&Key, &mut V) -> bool) {
        let (buckets, free) = (&mut self.buckets, &mut self.free);
        self.heads.retain(|_, &mut place| {
            let bucket = &mut buckets[place as usize];
            match bucket {
                Bucket::One(k, v) => {
                    if !keep(k, v) {
                        *bucket = Bucket::Many(BTreeMap::new());
                    }
                }
                Bucket::Many(m) => m.retain(|k, v| keep(k, v)),
            }
            let kept = !bucket.is_empty();
            if !kept {
                free.push(place);
            }
            kept
        });
        self.pack_if_sparse();
    }

    /// Moves the buckets in use to a new vector of their own size, in key order, once half
    /// the places are free (and at least [`PACK_FREE_MIN`]): each pack moves at most as many
    /// buckets as were freed since the last, so it costs a constant per removal.
    fn pack_if_sparse(&mut self) {
        if self.free.len() < PACK_FREE_MIN || self.free.len() * 2 < self.buckets.len() {
            return;
        }
        let mut packed = Vec::with_capacity(self.buckets.len() - self.free.len());
        for place in self.heads.values_mut() {
            let empty = Bucket::Many(BTreeMap::new());
            packed.push(std::mem::replace(&mut self.buckets[*place as usize], empty));
            *place = place_of(packed.len() - 1);
        }
        self.buckets = packed;
        self.free = Vec::new();
    }

    /// Every key with its value, ascending.
    #[cfg(test)]
    fn iter(&self) -> impl Iterator<Item = (&Key, &V)> {
        self.heads
            .values()
            .flat_map(|&place| self.buckets[place as usize].iter_from(None))
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

    #[derive(Clone, Debug)]
    enum Op {
        Add(Vec<u8>, u8),
        Remove(Vec<u8>),
        /// Keep the keys whose value is odd, and bump each kept value.
        KeepOdd,
    }

    fn ops() -> impl proptest::strategy::Strategy<Value = Vec<Op>> {
        use proptest::prelude::*;
        let op = prop_oneof![
            6 => (near_keys(), any::<u8>()).prop_map(|(k, v)| Op::Add(k, v)),
            3 => near_keys().prop_map(Op::Remove),
            1 => Just(Op::KeepOdd),
        ];
        proptest::collection::vec(op, 1..80)
    }

    proptest::proptest! {
        #[test]
        fn heads_never_order_against_their_keys(a in near_keys(), b in near_keys()) {
            if a <= b {
                proptest::prop_assert!(head(&a) <= head(&b));
            }
        }

        #[test]
        fn a_key_map_answers_as_a_map_of_plain_keys(
            ops in ops(),
            probes in proptest::collection::vec(near_keys(), 1..20),
            bounds in (near_keys(), near_keys()),
        ) {
            let mut map = KeyMap::<Vec<u8>>::default();
            let mut model = BTreeMap::<Vec<u8>, Vec<u8>>::new();
            for op in &ops {
                match op {
                    Op::Add(k, v) => {
                        map.get_or_default(Key::from(k.clone())).push(*v);
                        model.entry(k.clone()).or_default().push(*v);
                    }
                    Op::Remove(k) => {
                        let mut seen = None;
                        map.edit(k, |v| {
                            seen = Some(v.clone());
                            false
                        });
                        proptest::prop_assert_eq!(seen, model.remove(k));
                    }
                    Op::KeepOdd => {
                        let keep = |v: &mut Vec<u8>| {
                            let odd = v.last().is_some_and(|x| x % 2 == 1);
                            v.push(0);
                            odd
                        };
                        map.retain(|_, v| keep(v));
                        model.retain(|_, v| keep(v));
                    }
                }
            }
            for p in probes.iter().chain(model.keys()) {
                proptest::prop_assert_eq!(map.get(p), model.get(p));
            }
            let all: Vec<(Vec<u8>, Vec<u8>)> =
                map.iter().map(|(k, v)| (k.to_vec(), v.clone())).collect();
            let want: Vec<(Vec<u8>, Vec<u8>)> = model.clone().into_iter().collect();
            proptest::prop_assert_eq!(all, want);
            let (begin, end) = bounds;
            let got: Vec<Vec<u8>> = map.range(&begin, &end).map(|(k, _)| k.to_vec()).collect();
            let want: Vec<Vec<u8>> = if begin < end {
                model.range(begin.clone()..end.clone()).map(|(k, _)| k.clone()).collect()
            } else {
                Vec::new()
            };
            proptest::prop_assert_eq!(got, want);
        }
    }

    /// A one-key range read deep inside a head that thousands of keys share (a long common
    /// prefix) finds its key by a search: it steps over no key before it.
    #[test]
    fn a_range_inside_a_shared_head_steps_over_no_key_before_it() {
        let mut map = KeyMap::<u32>::default();
        let key = |i: u32| Key::from(format!("tenant/users/0000/{i:07}"));
        for i in 0..10_000 {
            *map.get_or_default(key(i)) = i;
        }
        assert_eq!(map.heads.len(), 1);
        VISITED.with(|v| v.set(0));
        let (begin, end) = (key(9_990), key(9_991));
        let found: Vec<u32> = map.range(&begin, &end).map(|(_, v)| *v).collect();
        assert_eq!(found, vec![9_990]);
        let visited = VISITED.with(std::cell::Cell::get);
        assert!(visited <= 2, "stepped over {visited} keys");
    }

    /// Removing most keys packs the vector of buckets down to the keys left, and the map
    /// goes on answering as a plain map, through packs, reuses of free places and growth.
    #[test]
    fn freed_places_are_packed_and_the_map_still_answers() {
        let mut map = KeyMap::<u64>::default();
        let key = |i: u64| Key::from(format!("k{i:06}"));
        for i in 0..4_000 {
            *map.get_or_default(key(i)) = i;
        }
        for i in 0..3_000 {
            map.edit(&key(i), |_| false);
        }
        // Packed when 2,000 of the 4,000 places were free; the 1,000 freed since are fewer
        // than PACK_FREE_MIN.
        assert_eq!(
            map.buckets.len(),
            2_000,
            "packed once half the places were free"
        );
        assert_eq!(map.free.len(), 1_000);
        assert_eq!(map.get(&key(3_500)), Some(&3_500));
        assert_eq!(map.get(&key(10)), None);

        // Then at random against a model, long enough to pack many times.
        let mut rng = strata_testkit::rng::SplitMix64(0x6b6d);
        let mut model: BTreeMap<Vec<u8>, u64> =
            (3_000..4_000).map(|i| (key(i).to_vec(), i)).collect();
        for step in 0..60_000u64 {
            let k = key(rng.below(5_000));
            match rng.below(10) {
                0..=3 => {
                    *map.get_or_default(k.clone()) = step;
                    model.insert(k.to_vec(), step);
                }
                4..=8 => {
                    map.edit(&k, |_| false);
                    model.remove(k.as_ref());
                }
                _ => {
                    map.retain(|_, v| *v % 7 != step % 7);
                    model.retain(|_, v| *v % 7 != step % 7);
                }
            }
        }
        let all: Vec<(Vec<u8>, u64)> = map.iter().map(|(k, v)| (k.to_vec(), *v)).collect();
        assert_eq!(all, model.into_iter().collect::<Vec<_>>());
        assert!(map.buckets.len() - map.free.len() == map.heads.len());
        assert!(map.buckets.len() < 2 * map.heads.len() + PACK_FREE_MIN);
    }

    #[test]
    fn keys_that_share_a_head_keep_their_own_values_and_order() {
        let mut map = KeyMap::<u32>::default();
        let long = |tail: &str| Key::from(format!("a-prefix-of-16-bytes/{tail}"));
        for (i, tail) in ["c", "a", "b", ""].into_iter().enumerate() {
            *map.get_or_default(long(tail)) = u32::try_from(i).unwrap();
        }
        // Keys equal up to trailing zeros share a head too.
        *map.get_or_default(Key::from_static(b"k")) = 10;
        *map.get_or_default(Key::from_static(b"k\0")) = 11;
        assert_eq!(map.heads.len(), 2);
        let keys: Vec<Key> = map.iter().map(|(k, _)| k.clone()).collect();
        let mut sorted = keys.clone();
        sorted.sort();
        assert_eq!(keys, sorted);
        assert_eq!(map.get(&long("b")), Some(&2));
        assert_eq!(map.get(b"k\0"), Some(&11));
        let remove = |map: &mut KeyMap<u32>, key: &[u8]| {
            let mut seen = None;
            map.edit(key, |v| {
                seen = Some(*v);
                false
            });
            seen
        };
        assert_eq!(remove(&mut map, &long("a")), Some(1));
        assert_eq!(remove(&mut map, &long("a")), None);
        assert_eq!(map.get(&long("c")), Some(&0));
        map.edit(&long("c"), |v| {
            *v = 5;
            true
        });
        assert_eq!(
            map.get(&long("c")),
            Some(&5),
            "an edit that keeps the key keeps its change"
        );
        assert_eq!(remove(&mut map, b"k"), Some(10));
        assert_eq!(remove(&mut map, b"k\0"), Some(11));
        assert_eq!(map.heads.len(), 1, "an emptied head is gone");
        assert_eq!(map.free.len(), 1, "and its place is free");
        *map.get_or_default(Key::from_static(b"new")) = 12;
        assert!(map.free.is_empty(), "a new key takes a free place");
        assert_eq!(map.buckets.len(), 2);
        assert_eq!(map.get(b"new"), Some(&12));
    }
}
