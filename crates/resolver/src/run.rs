//! A run: the writes of one or more consecutive batches, as an immutable step function over
//! keys, packed into two flat arrays.
//!
//! A run is a sorted list of boundaries; boundary `i` says that every key in
//! `[key(i), key(i + 1))` was last written at `version(i)` (0 = not written by this run). The
//! last boundary always has version 0. Keys live back to back in one byte arena, so a binary
//! search touches two flat arrays and no pointer per key, and a run's memory is freed in one
//! piece when its versions leave the window.

/// One boundary: where its key lies in the arena, and the version of the interval it starts.
#[derive(Clone, Copy, Debug)]
struct Boundary {
    key_start: u32,
    key_len: u32,
    version: u64,
}

/// The writes of consecutive batches, newest version per interval.
#[derive(Debug, Default)]
pub(crate) struct Run {
    arena: Vec<u8>,
    bounds: Vec<Boundary>,
    /// The newest version of any write in the run.
    max_version: u64,
    /// How many batches were merged into this run.
    batches: u32,
}

/// Builds a run from boundaries given in ascending key order.
pub(crate) struct RunBuilder {
    run: Run,
    last: u64,
}

impl RunBuilder {
    pub(crate) fn new(batches: u32, bounds_hint: usize, arena_hint: usize) -> RunBuilder {
        RunBuilder {
            run: Run {
                arena: Vec::with_capacity(arena_hint),
                bounds: Vec::with_capacity(bounds_hint),
                max_version: 0,
                batches,
            },
            last: 0,
        }
    }

    /// From `key` on (until the next boundary) the newest write is `version` (0 = none).
    /// Keys must ascend strictly. A boundary that does not change the version is dropped.
    pub(crate) fn push(&mut self, key: &[u8], version: u64) {
        debug_assert!(
            self.run.bounds.last().is_none_or(|b| self.run.key_of(b) < key),
            "run boundaries must ascend"
        );
        if version == self.last {
            return;
        }
        self.last = version;
        self.run.max_version = self.run.max_version.max(version);
        // Keys are at most 10,001 bytes and a run holds at most a few million of them, so the
        // arena stays far below 4 GiB; `append_key` checks it anyway.
        let key_start = append_key(&mut self.run.arena, key);
        #[expect(clippy::cast_possible_truncation)] // NOTE: key length is bounded by the wire limits
        self.run.bounds.push(Boundary {
            key_start,
            key_len: key.len() as u32,
            version,
        });
    }

    /// The finished run; `None` when it holds no write at all.
    pub(crate) fn finish(self) -> Option<Run> {
        debug_assert_eq!(self.last, 0, "a run must end with an unwritten interval");
        (!self.run.bounds.is_empty()).then_some(self.run)
    }
}

fn append_key(arena: &mut Vec<u8>, key: &[u8]) -> u32 {
    let start = u32::try_from(arena.len()).unwrap_or_else(|_| {
        // A resolver window holding 4 GiB of key bytes in one run means its limits were
        // configured far beyond anything it was designed for; stop rather than corrupt history.
        panic!("resolver run arena exceeds 4 GiB; lower max_run_batches")
    });
    arena.extend_from_slice(key);
    start
}

impl Run {
    #[inline]
    fn key_of(&self, b: &Boundary) -> &[u8] {
        let start = b.key_start as usize;
        &self.arena[start..start + b.key_len as usize]
    }

    #[cfg(test)]
    fn key(&self, i: usize) -> &[u8] {
        self.key_of(&self.bounds[i])
    }

    pub(crate) fn max_version(&self) -> u64 {
        self.max_version
    }

    pub(crate) fn batches(&self) -> u32 {
        self.batches
    }

    pub(crate) fn boundary_count(&self) -> usize {
        self.bounds.len()
    }

    /// Bytes of memory this run holds (its two arrays, at their capacity).
    pub(crate) fn memory_bytes(&self) -> usize {
        self.arena.capacity() + self.bounds.capacity() * std::mem::size_of::<Boundary>()
    }

    /// Whether any key of `[begin, end)` was written at a version newer than `read_version`.
    pub(crate) fn written_after(&self, begin: &[u8], end: &[u8], read_version: u64) -> bool {
        // The interval holding `begin` starts at the last boundary <= begin.
        let first_after = self.bounds.partition_point(|b| self.key_of(b) <= begin);
        // When no boundary is <= begin, `begin` lies in the unwritten space before the first
        // one and the scan starts at boundary 0, which is then checked against `end` like any
        // boundary after `begin`.
        let mut i = first_after.saturating_sub(1);
        while i < self.bounds.len() {
            let b = &self.bounds[i];
            if i >= first_after && self.key_of(b) >= end {
                break;
            }
            if b.version > read_version {
                return true;
            }
            i += 1;
        }
        false
    }

    /// The step function `max(older, newer)`: for every key, the newest version either run
    /// wrote it at.
    pub(crate) fn merge(older: &Run, newer: &Run) -> Run {
        let mut out = RunBuilder::new(
            older.batches + newer.batches,
            older.bounds.len() + newer.bounds.len(),
            older.arena.len() + newer.arena.len(),
        );
        let (mut i, mut j) = (0, 0);
        let (mut vo, mut vn) = (0, 0);
        loop {
            let key = match (older.bounds.get(i), newer.bounds.get(j)) {
                (Some(a), Some(b)) => {
                    let (ka, kb) = (older.key_of(a), newer.key_of(b));
                    match ka.cmp(kb) {
                        std::cmp::Ordering::Less => {
                            vo = a.version;
                            i += 1;
                            ka
                        }
                        std::cmp::Ordering::Greater => {
                            vn = b.version;
                            j += 1;
                            kb
                        }
                        std::cmp::Ordering::Equal => {
                            vo = a.version;
                            vn = b.version;
                            i += 1;
                            j += 1;
                            ka
                        }
                    }
                }
                (Some(a), None) => {
                    vo = a.version;
                    i += 1;
                    older.key_of(a)
                }
                (None, Some(b)) => {
                    vn = b.version;
                    j += 1;
                    newer.key_of(b)
                }
                (None, None) => break,
            };
            out.push(key, vo.max(vn));
        }
        // Both inputs end unwritten, so the output does too; `finish` only fails when empty,
        // which two non-empty inputs cannot produce.
        out.finish().unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(steps: &[(&str, u64)]) -> Run {
        let mut b = RunBuilder::new(1, steps.len(), 64);
        for (k, v) in steps {
            b.push(k.as_bytes(), *v);
        }
        b.finish().unwrap()
    }

    #[test]
    fn query_sees_only_intersecting_newer_intervals() {
        // [b, d) at 5, [f, g) at 7.
        let r = run(&[("b", 5), ("d", 0), ("f", 7), ("g", 0)]);
        assert!(r.written_after(b"a", b"c", 4));
        assert!(!r.written_after(b"a", b"c", 5));
        assert!(!r.written_after(b"a", b"b", 0), "end is exclusive");
        assert!(!r.written_after(b"d", b"f", 0), "gap between writes");
        assert!(r.written_after(b"c", b"z", 6), "spans into [f, g)");
        assert!(!r.written_after(b"g", b"z", 0));
        assert!(r.written_after(b"f\0", b"f\x01", 6), "inside an interval");
    }

    #[test]
    fn merge_takes_the_newest_version_per_key() {
        let older = run(&[("a", 3), ("m", 0)]);
        let newer = run(&[("c", 9), ("e", 0), ("m", 8), ("p", 0)]);
        let m = Run::merge(&older, &newer);
        let steps: Vec<(Vec<u8>, u64)> = (0..m.bounds.len())
            .map(|i| (m.key(i).to_vec(), m.bounds[i].version))
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
