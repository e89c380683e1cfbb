//! A run: the writes of one or more consecutive batches, as an immutable step function over
//! keys, packed into flat arrays.
//!
//! A run is a sorted list of boundaries; boundary `i` says that every key in
//! `[key(i), key(i + 1))` was last written at `version(i)` (0 = not written by this run). The
//! last boundary always has version 0.
//!
//! Layout, chosen from profiles of the resolver bench:
//!
//! - the first eight bytes of every key, big-endian, sit alone in one `u64` array, so a binary
//!   search compares integers over a dense array (eight keys per cache line) and almost never
//!   looks further;
//! - the rest of a key longer than eight bytes lives in a byte arena; keys of eight bytes or
//!   fewer take no arena space and are never copied byte by byte;
//! - a run's memory is freed in one piece when its versions leave the window.

use std::cmp::Ordering;

/// A key split for fast comparison: its first eight bytes as a big-endian integer
/// (zero-padded), its length, and the bytes after the first eight.
#[derive(Clone, Copy, Debug)]
pub(crate) struct KeyParts<'a> {
    prefix: u64,
    len: usize,
    suffix: &'a [u8],
}

impl<'a> KeyParts<'a> {
    #[inline]
    pub(crate) fn of(key: &'a [u8]) -> KeyParts<'a> {
        let mut b = [0u8; 8];
        let n = key.len().min(8);
        b[..n].copy_from_slice(&key[..n]);
        KeyParts {
            prefix: u64::from_be_bytes(b),
            len: key.len(),
            suffix: &key[n..],
        }
    }

    /// Byte-wise key order. Equal prefixes with either key at most eight bytes long mean the
    /// shorter key is a prefix of the longer (the padding zeros match), so lengths decide.
    #[inline]
    pub(crate) fn cmp(&self, other: &KeyParts<'_>) -> Ordering {
        match self.prefix.cmp(&other.prefix) {
            Ordering::Equal if self.len <= 8 || other.len <= 8 => self.len.cmp(&other.len),
            Ordering::Equal => self.suffix.cmp(other.suffix),
            o => o,
        }
    }

    /// The key's bytes, rebuilt (for tests and diagnostics).
    #[cfg(test)]
    pub(crate) fn to_vec(self) -> Vec<u8> {
        let mut k = self.prefix.to_be_bytes()[..self.len.min(8)].to_vec();
        k.extend_from_slice(self.suffix);
        k
    }
}

/// A boundary's key length, where the rest of its key lies in the arena, and the version of
/// the interval it starts.
#[derive(Clone, Copy, Debug)]
struct Meta {
    suffix_start: u32,
    len: u32,
    version: u64,
}

/// The writes of consecutive batches, newest version per interval.
#[derive(Debug, Default)]
pub(crate) struct Run {
    prefixes: Vec<u64>,
    metas: Vec<Meta>,
    arena: Vec<u8>,
    /// The newest version of any write in the run.
    max_version: u64,
    /// How many batches were merged into this run.
    batches: u32,
}

/// Buffers of runs that left the history, kept for the next runs to reuse: merged runs are
/// large and short-lived, and allocating them fresh every time made the kernel zero new pages
/// for each merge. Two buffers of each kind are kept, the largest: at most about twice the
/// largest run's memory, for about 20% more throughput in the resolver bench.
#[derive(Debug, Default)]
pub(crate) struct Pool {
    prefixes: Vec<Vec<u64>>,
    metas: Vec<Vec<Meta>>,
    arenas: Vec<Vec<u8>>,
}

/// Buffers kept per kind.
const POOL_BUFFERS_MAX: usize = 2;

fn take<T>(pool: &mut Vec<Vec<T>>, capacity: usize) -> Vec<T> {
    // The smallest buffer that is large enough, else a fresh one.
    let best = pool
        .iter()
        .enumerate()
        .filter(|(_, b)| b.capacity() >= capacity)
        .min_by_key(|(_, b)| b.capacity())
        .map(|(i, _)| i);
    match best {
        Some(i) => pool.swap_remove(i),
        None => Vec::with_capacity(capacity),
    }
}

fn give<T>(pool: &mut Vec<Vec<T>>, mut buffer: Vec<T>) {
    buffer.clear();
    pool.push(buffer);
    if pool.len() > POOL_BUFFERS_MAX {
        // Drop the smallest: large buffers are the expensive ones to get again.
        if let Some((i, _)) = pool.iter().enumerate().min_by_key(|(_, b)| b.capacity()) {
            pool.swap_remove(i);
        }
    }
}

impl Pool {
    /// Takes back the buffers of a run that left the history.
    pub(crate) fn recycle(&mut self, run: Run) {
        give(&mut self.prefixes, run.prefixes);
        give(&mut self.metas, run.metas);
        give(&mut self.arenas, run.arena);
    }

    /// Bytes held by the pooled buffers.
    pub(crate) fn memory_bytes(&self) -> usize {
        self.prefixes
            .iter()
            .map(|b| b.capacity() * 8)
            .sum::<usize>()
            + self
                .metas
                .iter()
                .map(|b| b.capacity() * std::mem::size_of::<Meta>())
                .sum::<usize>()
            + self.arenas.iter().map(Vec::capacity).sum::<usize>()
    }
}

/// Builds a run from boundaries given in ascending key order.
pub(crate) struct RunBuilder {
    run: Run,
    last: u64,
}

impl RunBuilder {
    pub(crate) fn new(
        pool: &mut Pool,
        batches: u32,
        bounds_hint: usize,
        arena_hint: usize,
    ) -> RunBuilder {
        RunBuilder {
            run: Run {
                prefixes: take(&mut pool.prefixes, bounds_hint),
                metas: take(&mut pool.metas, bounds_hint),
                arena: take(&mut pool.arenas, arena_hint),
                max_version: 0,
                batches,
            },
            last: 0,
        }
    }

    /// From `key` on (until the next boundary) the newest write is `version` (0 = none).
    /// Keys must ascend strictly. A boundary that does not change the version is dropped.
    pub(crate) fn push(&mut self, key: KeyParts<'_>, version: u64) {
        debug_assert!(
            self.run.prefixes.is_empty()
                || self
                    .run
                    .parts(self.run.prefixes.len() - 1)
                    .cmp(&key)
                    .is_lt(),
            "run boundaries must ascend"
        );
        if version == self.last {
            return;
        }
        self.last = version;
        self.run.max_version = self.run.max_version.max(version);
        let suffix_start = u32::try_from(self.run.arena.len()).unwrap_or_else(|_| {
            // Only keys longer than eight bytes use the arena, and a run holds at most
            // `max_run_batches` batches of them; 4 GiB means the limits were configured far
            // beyond their design. Stop rather than corrupt the history.
            panic!("resolver run arena exceeds 4 GiB; lower max_run_batches")
        });
        self.run.arena.extend_from_slice(key.suffix);
        self.run.prefixes.push(key.prefix);
        #[expect(clippy::cast_possible_truncation)] // NOTE: keys are at most 10,001 bytes
        self.run.metas.push(Meta {
            suffix_start,
            len: key.len as u32,
            version,
        });
    }

    /// The finished run; `None` when it holds no write at all.
    pub(crate) fn finish(self) -> Option<Run> {
        debug_assert_eq!(self.last, 0, "a run must end with an unwritten interval");
        (!self.run.prefixes.is_empty()).then_some(self.run)
    }
}

impl Run {
    #[inline]
    fn parts(&self, i: usize) -> KeyParts<'_> {
        let m = &self.metas[i];
        let start = m.suffix_start as usize;
        let len = m.len as usize;
        KeyParts {
            prefix: self.prefixes[i],
            len,
            suffix: &self.arena[start..start + len.saturating_sub(8)],
        }
    }

    pub(crate) fn max_version(&self) -> u64 {
        self.max_version
    }

    pub(crate) fn batches(&self) -> u32 {
        self.batches
    }

    pub(crate) fn boundary_count(&self) -> usize {
        self.prefixes.len()
    }

    /// Bytes of memory this run holds (its arrays, at their capacity).
    pub(crate) fn memory_bytes(&self) -> usize {
        self.prefixes.capacity() * std::mem::size_of::<u64>()
            + self.metas.capacity() * std::mem::size_of::<Meta>()
            + self.arena.capacity()
    }

    /// Whether any key of `[begin, end)` was written at a version newer than `read_version`.
    pub(crate) fn written_after(
        &self,
        begin: &KeyParts<'_>,
        end: &KeyParts<'_>,
        read_version: u64,
    ) -> bool {
        // Find the first boundary after `begin`; the interval holding `begin` starts just
        // before it. Search the dense prefix array with plain integer compares (branch-free in
        // std's binary search), then settle the few boundaries whose prefix equals begin's with
        // a full compare.
        let prefixes = &self.prefixes;
        let mut lo = prefixes.partition_point(|&p| p < begin.prefix);
        if prefixes.get(lo) == Some(&begin.prefix) {
            let same = prefixes[lo..].partition_point(|&p| p == begin.prefix);
            let mut hi = lo + same;
            while lo < hi {
                let mid = lo + (hi - lo) / 2;
                if self.parts(mid).cmp(begin).is_le() {
                    lo = mid + 1;
                } else {
                    hi = mid;
                }
            }
        }
        let first_after = lo;
        // When no boundary is <= begin, `begin` lies in the unwritten space before the first
        // one and the scan starts at boundary 0, which is then checked against `end` like any
        // boundary after `begin`.
        let mut i = first_after.saturating_sub(1);
        while i < self.prefixes.len() {
            if i >= first_after && !self.before(i, end) {
                break;
            }
            if self.metas[i].version > read_version {
                return true;
            }
            i += 1;
        }
        false
    }

    /// Whether boundary `i` sorts strictly before `key`.
    #[inline]
    fn before(&self, i: usize, key: &KeyParts<'_>) -> bool {
        match self.prefixes[i].cmp(&key.prefix) {
            Ordering::Less => true,
            Ordering::Greater => false,
            Ordering::Equal => self.parts(i).cmp(key).is_lt(),
        }
    }

    /// The step function `max(older, newer)`: for every key, the newest version either run
    /// wrote it at.
    pub(crate) fn merge(pool: &mut Pool, older: &Run, newer: &Run) -> Run {
        let mut out = RunBuilder::new(
            pool,
            older.batches + newer.batches,
            older.prefixes.len() + newer.prefixes.len(),
            older.arena.len() + newer.arena.len(),
        );
        let (mut i, mut j) = (0, 0);
        let (mut vo, mut vn) = (0, 0);
        let (no, nn) = (older.prefixes.len(), newer.prefixes.len());
        loop {
            let key = if i < no && j < nn {
                let (ka, kb) = (older.parts(i), newer.parts(j));
                match ka.cmp(&kb) {
                    Ordering::Less => {
                        vo = older.metas[i].version;
                        i += 1;
                        ka
                    }
                    Ordering::Greater => {
                        vn = newer.metas[j].version;
                        j += 1;
                        kb
                    }
                    Ordering::Equal => {
                        vo = older.metas[i].version;
                        vn = newer.metas[j].version;
                        i += 1;
                        j += 1;
                        ka
                    }
                }
            } else if i < no {
                vo = older.metas[i].version;
                i += 1;
                older.parts(i - 1)
            } else if j < nn {
                vn = newer.metas[j].version;
                j += 1;
                newer.parts(j - 1)
            } else {
                break;
            };
            out.push(key, vo.max(vn));
        }
        // Both inputs end unwritten, so the output does too and is not empty.
        out.finish().unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(steps: &[(&[u8], u64)]) -> Run {
        let mut b = RunBuilder::new(&mut Pool::default(), 1, steps.len(), 64);
        for (k, v) in steps {
            b.push(KeyParts::of(k), *v);
        }
        b.finish().unwrap()
    }

    fn after(r: &Run, begin: &[u8], end: &[u8], rv: u64) -> bool {
        r.written_after(&KeyParts::of(begin), &KeyParts::of(end), rv)
    }

    #[test]
    fn key_parts_order_like_bytes() {
        let keys: [&[u8]; 9] = [
            b"",
            b"\0",
            b"a",
            b"a\0",
            b"abcdefgh",
            b"abcdefgh\0",
            b"abcdefghij",
            b"abcdefgi",
            b"\xff\xff\xff\xff\xff\xff\xff\xff\xff",
        ];
        for a in keys {
            for b in keys {
                assert_eq!(
                    KeyParts::of(a).cmp(&KeyParts::of(b)),
                    a.cmp(b),
                    "{a:?} {b:?}"
                );
            }
            assert_eq!(KeyParts::of(a).to_vec(), a);
        }
    }

    #[test]
    fn query_sees_only_intersecting_newer_intervals() {
        // [b, d) at 5, [f, g) at 7.
        let r = run(&[(b"b", 5), (b"d", 0), (b"f", 7), (b"g", 0)]);
        assert!(after(&r, b"a", b"c", 4));
        assert!(!after(&r, b"a", b"c", 5));
        assert!(!after(&r, b"a", b"b", 0), "end is exclusive");
        assert!(!after(&r, b"d", b"f", 0), "gap between writes");
        assert!(after(&r, b"c", b"z", 6), "spans into [f, g)");
        assert!(!after(&r, b"g", b"z", 0));
        assert!(after(&r, b"f\0", b"f\x01", 6), "inside an interval");
    }

    #[test]
    fn long_keys_compare_by_their_suffix() {
        let r = run(&[(b"prefix00-m", 5), (b"prefix00-n", 0)]);
        assert!(after(&r, b"prefix00-a", b"prefix00-m\0", 0));
        assert!(!after(&r, b"prefix00-a", b"prefix00-m", 0));
        assert!(!after(&r, b"prefix00-n", b"prefix00-z", 0));
    }

    #[test]
    fn merge_takes_the_newest_version_per_key() {
        let older = run(&[(b"a", 3), (b"m", 0)]);
        let newer = run(&[(b"c", 9), (b"e", 0), (b"m", 8), (b"p", 0)]);
        let m = Run::merge(&mut Pool::default(), &older, &newer);
        let steps: Vec<(Vec<u8>, u64)> = (0..m.boundary_count())
            .map(|i| (m.parts(i).to_vec(), m.metas[i].version))
            .collect();
        let expected: Vec<(Vec<u8>, u64)> = [("a", 3), ("c", 9), ("e", 3), ("m", 8), ("p", 0)]
            .iter()
            .map(|(k, v)| (k.as_bytes().to_vec(), *v))
            .collect();
        assert_eq!(steps, expected);
        assert_eq!(m.max_version(), 9);
        assert_eq!(m.batches(), 2);
    }
}
