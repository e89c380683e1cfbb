//! The conflict history: which key ranges were written at which recent versions.

use std::collections::BTreeMap;
use std::ops::Bound;

use bytes::Bytes;
use strata_core::{MVCC_WINDOW_VERSIONS, TransactionConflicts, Verdict, Version};

use crate::run::{Run, RunBuilder};

/// Tuning of a [`ConflictHistory`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HistoryConfig {
    /// Reads older than the newest batch's version minus this are refused as too old, and
    /// writes older than that are forgotten.
    pub window_versions: u64,
    /// Consecutive batches are merged into runs of at most this many batches. Larger runs mean
    /// fewer runs for an old read to search; smaller runs mean shorter merge pauses and memory
    /// released sooner as the window moves (a run is freed when its newest batch leaves the
    /// window, so up to this many batches beyond the window stay in memory).
    pub max_run_batches: u32,
}

impl Default for HistoryConfig {
    fn default() -> HistoryConfig {
        HistoryConfig {
            window_versions: MVCC_WINDOW_VERSIONS,
            max_run_batches: 256,
        }
    }
}

/// Figures about the memory a history holds.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct HistoryStats {
    /// Runs held.
    pub runs: usize,
    /// Key boundaries held over all runs (about two per distinct write range).
    pub boundaries: usize,
    /// Bytes held by the runs.
    pub memory_bytes: usize,
    /// Reads below this version are too old.
    pub oldest_version: Version,
    /// The newest batch resolved.
    pub newest_version: Version,
}

/// Conflict detection over a window of versions, synchronous and single-threaded: the data
/// structure behind [`crate::WindowResolver`], usable on its own.
///
/// # Structure, and why
///
/// The history is a list of *runs*, oldest first. Each run is an immutable step function over
/// keys (sorted boundaries, each giving the newest version that wrote the interval it starts),
/// packed into one key arena and one boundary array. Every batch becomes one new run; adjacent
/// runs of equal size are merged (like a binary counter) up to
/// [`HistoryConfig::max_run_batches`] batches per run.
///
/// FoundationDB keeps one skip list over all boundaries and removes old versions from it
/// incrementally. Runs do better here for three reasons:
///
/// - versions only grow, so a check with read version `r` looks only at runs whose newest
///   version exceeds `r` and stops at the first run that does not: a typical read, a few
///   milliseconds old, searches the two or three newest (and smallest, so cache-resident) runs;
/// - trimming is free: a run leaves as a whole when its newest version falls out of the window,
///   so memory follows the window without touching single entries;
/// - a run is two flat arrays, not a node per key: a binary search makes no pointer chase per
///   step, and a boundary costs 16 bytes plus its key bytes.
///
/// The cost is that an old read searches every run newer than it (at most about
/// `window batches / max_run_batches + log2(max_run_batches)` binary searches) and that a merge
/// pauses one batch for a time proportional to the runs merged.
///
/// Within a batch, the writes of transactions accepted so far are kept in a small ordered map
/// so that later transactions of the same batch see them; the map becomes the batch's run.
///
/// ```
/// use strata_core::{KeyRange, TransactionConflicts, Verdict, Version};
/// use strata_resolver::ConflictHistory;
///
/// let mut history = ConflictHistory::default();
/// let write = |k: &str| TransactionConflicts {
///     read_version: Some(Version(0)),
///     read_conflicts: vec![],
///     write_conflicts: vec![KeyRange::single(k.to_owned())],
/// };
/// assert_eq!(history.resolve(Version(10), &[write("a")]), vec![Verdict::Committed]);
/// let read_a_at = |v| TransactionConflicts {
///     read_version: Some(Version(v)),
///     read_conflicts: vec![KeyRange::single("a")],
///     write_conflicts: vec![],
/// };
/// // Read before the write committed: conflict. Read after: fine.
/// assert_eq!(
///     history.resolve(Version(20), &[read_a_at(5), read_a_at(10)]),
///     vec![Verdict::Conflict, Verdict::Committed]
/// );
/// ```
#[derive(Debug)]
pub struct ConflictHistory {
    config: HistoryConfig,
    runs: Vec<Run>,
    oldest_version: Version,
    newest_version: Version,
}

impl Default for ConflictHistory {
    fn default() -> ConflictHistory {
        ConflictHistory::new(HistoryConfig::default())
    }
}

impl ConflictHistory {
    /// An empty history.
    pub fn new(config: HistoryConfig) -> ConflictHistory {
        ConflictHistory {
            config: HistoryConfig {
                max_run_batches: config.max_run_batches.max(1),
                ..config
            },
            runs: Vec::new(),
            oldest_version: Version::ZERO,
            newest_version: Version::ZERO,
        }
    }

    /// Resolves one batch at `version`, returning a verdict per transaction, in order.
    ///
    /// The caller guarantees that versions passed here increase (the async resolver checks the
    /// `previous_version` chain); a version that does not is resolved anyway, but the window
    /// does not move back.
    pub fn resolve(&mut self, version: Version, transactions: &[TransactionConflicts]) -> Vec<Verdict> {
        self.newest_version = self.newest_version.max(version);
        self.oldest_version = self
            .oldest_version
            .max(self.newest_version.saturating_sub(self.config.window_versions));
        self.trim();

        let mut batch = BatchWrites::default();
        let verdicts = transactions
            .iter()
            .map(|tx| {
                let verdict = self.verdict(tx, version, &batch);
                if verdict == Verdict::Committed {
                    for w in &tx.write_conflicts {
                        batch.insert(w.begin(), w.end());
                    }
                }
                verdict
            })
            .collect();

        if let Some(run) = batch.into_run(version) {
            self.runs.push(run);
            self.merge_tail();
        }
        verdicts
    }

    fn verdict(&self, tx: &TransactionConflicts, version: Version, batch: &BatchWrites) -> Verdict {
        if tx.read_conflicts.is_empty() {
            return Verdict::Committed;
        }
        // Reads without a read version cannot come off the wire; taken as reads at version 0,
        // they are refused rather than trusted.
        let read_version = tx.read_version.unwrap_or(Version::ZERO);
        if read_version < self.oldest_version {
            return Verdict::TooOld;
        }
        let batch_is_newer = version > read_version;
        let conflicts = tx.read_conflicts.iter().any(|r| {
            (batch_is_newer && batch.intersects(r.begin(), r.end()))
                || self.written_after(r.begin(), r.end(), read_version.0)
        });
        if conflicts {
            Verdict::Conflict
        } else {
            Verdict::Committed
        }
    }

    fn written_after(&self, begin: &[u8], end: &[u8], read_version: u64) -> bool {
        for run in self.runs.iter().rev() {
            // Runs are in version order: once one holds nothing newer than the read, no older
            // run can either.
            if run.max_version() <= read_version {
                return false;
            }
            if run.written_after(begin, end, read_version) {
                return true;
            }
        }
        false
    }

    /// Drops the runs that no read inside the window can conflict with: a read at or above
    /// `oldest_version` conflicts only with writes newer than it.
    fn trim(&mut self) {
        let oldest = self.oldest_version.0;
        let gone = self.runs.partition_point(|r| r.max_version() <= oldest);
        if gone > 0 {
            self.runs.drain(..gone);
        }
    }

    fn merge_tail(&mut self) {
        while let [.., older, newer] = self.runs.as_slice() {
            if older.batches() > newer.batches()
                || older.batches() + newer.batches() > self.config.max_run_batches
            {
                break;
            }
            let merged = Run::merge(older, newer);
            let n = self.runs.len();
            self.runs.truncate(n - 2);
            self.runs.push(merged);
        }
    }

    /// Memory and window figures.
    pub fn stats(&self) -> HistoryStats {
        HistoryStats {
            runs: self.runs.len(),
            boundaries: self.runs.iter().map(Run::boundary_count).sum(),
            memory_bytes: self.runs.iter().map(Run::memory_bytes).sum(),
            oldest_version: self.oldest_version,
            newest_version: self.newest_version,
        }
    }
}

/// The writes accepted so far in the batch being resolved, as a step function: each key maps
/// to whether the interval it starts was written.
#[derive(Default)]
struct BatchWrites {
    steps: BTreeMap<Bytes, bool>,
}

impl BatchWrites {
    fn written_at(&self, key: &[u8]) -> bool {
        self.steps
            .range::<[u8], _>((Bound::Unbounded, Bound::Included(key)))
            .next_back()
            .is_some_and(|(_, &w)| w)
    }

    fn intersects(&self, begin: &[u8], end: &[u8]) -> bool {
        self.written_at(begin)
            || self
                .steps
                .range::<[u8], _>((Bound::Excluded(begin), Bound::Excluded(end)))
                .any(|(_, &w)| w)
    }

    fn insert(&mut self, begin: &Bytes, end: &Bytes) {
        let after = self.written_at(end);
        loop {
            let inner = self
                .steps
                .range::<[u8], _>((Bound::Excluded(begin.as_ref()), Bound::Excluded(end.as_ref())))
                .next()
                .map(|(k, _)| k.clone());
            match inner {
                Some(k) => {
                    self.steps.remove(&k);
                }
                None => break,
            }
        }
        self.steps.insert(begin.clone(), true);
        self.steps.insert(end.clone(), after);
    }

    fn into_run(self, version: Version) -> Option<Run> {
        let key_bytes = self.steps.keys().map(Bytes::len).sum();
        let mut run = RunBuilder::new(1, self.steps.len(), key_bytes);
        for (key, written) in &self.steps {
            run.push(key, if *written { version.0 } else { 0 });
        }
        run.finish()
    }
}

#[cfg(test)]
mod tests {
    use strata_core::KeyRange;

    use super::*;

    fn tx(rv: u64, reads: &[(&str, &str)], writes: &[(&str, &str)]) -> TransactionConflicts {
        let ranges = |rs: &[(&str, &str)]| {
            rs.iter()
                .map(|(b, e)| KeyRange::new(b.to_string(), e.to_string()).unwrap())
                .collect()
        };
        TransactionConflicts {
            read_version: Some(Version(rv)),
            read_conflicts: ranges(reads),
            write_conflicts: ranges(writes),
        }
    }

    #[test]
    fn earlier_accepted_writes_of_the_batch_count() {
        let mut h = ConflictHistory::default();
        let v = h.resolve(
            Version(10),
            &[
                tx(5, &[], &[("b", "d")]),
                tx(5, &[("c", "e")], &[("x", "y")]),
                // The second transaction conflicted, so its write of x must not count.
                tx(5, &[("x", "y")], &[]),
            ],
        );
        assert_eq!(v, vec![Verdict::Committed, Verdict::Conflict, Verdict::Committed]);
    }

    #[test]
    fn too_old_reads_are_refused_and_blind_writes_pass() {
        let mut h = ConflictHistory::new(HistoryConfig {
            window_versions: 100,
            max_run_batches: 4,
        });
        h.resolve(Version(1_000), &[]);
        let v = h.resolve(
            Version(1_001),
            &[tx(900, &[("a", "b")], &[]), tx(901, &[("a", "b")], &[]), tx(0, &[], &[("a", "b")])],
        );
        assert_eq!(v, vec![Verdict::TooOld, Verdict::Committed, Verdict::Committed]);
    }

    #[test]
    fn runs_leave_with_the_window() {
        let mut h = ConflictHistory::new(HistoryConfig {
            window_versions: 10,
            max_run_batches: 2,
        });
        for v in 1..=100u64 {
            h.resolve(Version(v), &[tx(v - 1, &[], &[("k", "l")])]);
        }
        let s = h.stats();
        assert!(s.runs <= 7, "{s:?}");
        assert_eq!(s.oldest_version, Version(90));
        // A write at 95 is still seen by a read at 94.
        assert_eq!(h.resolve(Version(101), &[tx(94, &[("k", "l")], &[])]), vec![Verdict::Conflict]);
    }
}
