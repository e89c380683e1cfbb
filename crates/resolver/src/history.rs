//! The conflict history: which key ranges were written at which recent versions.

use strata_core::{MVCC_WINDOW_VERSIONS, TransactionConflicts, Verdict, Version};

use crate::run::{KeyParts, Pool, Run, RunBuilder};

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
    /// The newest runs (one per batch) kept apart from merging, so that reads a few batches
    /// old search only small, cache-resident runs and never a large one just merged.
    pub recent_runs: usize,
}

impl Default for HistoryConfig {
    fn default() -> HistoryConfig {
        HistoryConfig {
            window_versions: MVCC_WINDOW_VERSIONS,
            max_run_batches: 256,
            recent_runs: 8,
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
/// Within a batch, the transactions that pass the history are checked in order against the
/// writes accepted before them, over the sorted keys of the batch (see `BatchRanks`); those
/// writes become the batch's run.
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
    pool: Pool,
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
            pool: Pool::default(),
            oldest_version: Version::ZERO,
            newest_version: Version::ZERO,
        }
    }

    /// An empty history that knows nothing of the writes before `start`: reads older than it
    /// are too old. A resolver recruited by a recovery starts so, at the recovery version.
    pub fn starting_at(config: HistoryConfig, start: Version) -> ConflictHistory {
        let mut history = ConflictHistory::new(config);
        history.oldest_version = start;
        history.newest_version = start;
        history
    }

    /// Resolves one batch at `version`, returning a verdict per transaction, in order.
    ///
    /// The caller guarantees that versions passed here increase (the async resolver checks the
    /// `previous_version` chain); a version that does not is resolved anyway, but the window
    /// does not move back.
    pub fn resolve(
        &mut self,
        version: Version,
        transactions: &[TransactionConflicts],
    ) -> Vec<Verdict> {
        self.newest_version = self.newest_version.max(version);
        self.oldest_version = self.oldest_version.max(
            self.newest_version
                .saturating_sub(self.config.window_versions),
        );
        self.trim();

        // First every transaction against the history, then, in order, against the writes
        // accepted earlier in the batch (as FoundationDB does): the second pass needs only the
        // transactions that survived the first.
        let mut verdicts: Vec<Verdict> = transactions
            .iter()
            .map(|tx| self.history_verdict(tx))
            .collect();
        let batch = BatchRanks::new(version, transactions, &verdicts);
        let run = batch.resolve(&mut self.pool, version, transactions, &mut verdicts);
        if let Some(run) = run {
            self.runs.push(run);
            self.merge_tail();
        }
        verdicts
    }

    /// The verdict of `tx` against the history alone.
    fn history_verdict(&self, tx: &TransactionConflicts) -> Verdict {
        if tx.read_conflicts.is_empty() {
            return Verdict::Committed;
        }
        // Reads without a read version cannot come off the wire; taken as reads at version 0,
        // they are refused rather than trusted.
        let read_version = tx.read_version.unwrap_or(Version::ZERO);
        if read_version < self.oldest_version {
            return Verdict::TooOld {
                oldest: self.oldest_version,
            };
        }
        let conflicts = tx.read_conflicts.iter().any(|r| {
            self.written_after(
                &KeyParts::of(r.begin()),
                &KeyParts::of(r.end()),
                read_version.0,
            )
        });
        if conflicts {
            Verdict::Conflict
        } else {
            Verdict::Committed
        }
    }

    fn written_after(&self, begin: &KeyParts<'_>, end: &KeyParts<'_>, read_version: u64) -> bool {
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
        for run in self.runs.drain(..gone) {
            self.pool.recycle(run);
        }
    }

    /// Merges runs like a binary counter (two adjacent runs of equal size become one), up to
    /// `max_run_batches`, leaving the `recent_runs` newest runs alone.
    fn merge_tail(&mut self) {
        let recent = self.config.recent_runs;
        while self.runs.len() >= recent + 2 {
            let newer_at = self.runs.len() - recent - 1;
            let (older, newer) = (&self.runs[newer_at - 1], &self.runs[newer_at]);
            if older.batches() > newer.batches()
                || older.batches() + newer.batches() > self.config.max_run_batches
            {
                break;
            }
            let merged = Run::merge(&mut self.pool, older, newer);
            let older = std::mem::replace(&mut self.runs[newer_at - 1], merged);
            let newer = self.runs.remove(newer_at);
            self.pool.recycle(older);
            self.pool.recycle(newer);
        }
    }

    /// Memory and window figures.
    pub fn stats(&self) -> HistoryStats {
        HistoryStats {
            runs: self.runs.len(),
            boundaries: self.runs.iter().map(Run::boundary_count).sum(),
            memory_bytes: self.runs.iter().map(Run::memory_bytes).sum::<usize>()
                + self.pool.memory_bytes(),
            oldest_version: self.oldest_version,
            newest_version: self.newest_version,
        }
    }
}

/// The second pass of a batch: conflicts between its own transactions.
///
/// Every range endpoint of the transactions still in play is sorted once and replaced by its
/// rank among the distinct keys; an interval between two consecutive keys is then one bit.
/// Checking a read is testing a few bits and accepting a write is setting a few, so the pass
/// costs one sort of the batch's keys instead of an ordered-map update per transaction.
struct BatchRanks<'a> {
    /// The distinct keys, ascending.
    keys: Vec<KeyParts<'a>>,
    /// Rank of each endpoint, in the order `new` visited them.
    ranks: Vec<u32>,
}

impl<'a> BatchRanks<'a> {
    /// Whether the second pass checks the reads of `tx`: it has reads, survived the history,
    /// and read before this batch's version (otherwise no write of the batch is newer).
    fn checks_reads(version: Version, tx: &TransactionConflicts, verdict: Verdict) -> bool {
        verdict == Verdict::Committed
            && !tx.read_conflicts.is_empty()
            && tx.read_version.is_some_and(|rv| rv < version)
    }

    fn new(
        version: Version,
        transactions: &'a [TransactionConflicts],
        verdicts: &[Verdict],
    ) -> BatchRanks<'a> {
        let mut endpoints: Vec<(KeyParts<'a>, u32)> = Vec::new();
        let mut push = |r: &'a strata_core::KeyRange| {
            for key in [r.begin(), r.end()] {
                #[expect(clippy::cast_possible_truncation)] // NOTE: batches are far below 2^32 keys
                let slot = endpoints.len() as u32;
                endpoints.push((KeyParts::of(key), slot));
            }
        };
        for (tx, &verdict) in transactions.iter().zip(verdicts) {
            if verdict != Verdict::Committed {
                continue;
            }
            if Self::checks_reads(version, tx, verdict) {
                tx.read_conflicts.iter().for_each(&mut push);
            }
            tx.write_conflicts.iter().for_each(&mut push);
        }
        endpoints.sort_unstable_by(|a, b| a.0.cmp(&b.0));

        let mut keys: Vec<KeyParts<'a>> = Vec::with_capacity(endpoints.len());
        let mut ranks = vec![0u32; endpoints.len()];
        for (key, slot) in endpoints {
            if keys.last().is_none_or(|last| last.cmp(&key).is_ne()) {
                keys.push(key);
            }
            #[expect(clippy::cast_possible_truncation)] // NOTE: as above
            let rank = (keys.len() - 1) as u32;
            ranks[slot as usize] = rank;
        }
        BatchRanks { keys, ranks }
    }

    /// Runs the second pass over `verdicts`, visiting endpoints in the order `new` did, and
    /// returns the batch's accepted writes as a run at `version`.
    fn resolve(
        &self,
        pool: &mut Pool,
        version: Version,
        transactions: &[TransactionConflicts],
        verdicts: &mut [Verdict],
    ) -> Option<Run> {
        let mut written = Bits::new(self.keys.len());
        let mut next = self.ranks.iter().copied();
        let mut range = || -> (usize, usize) {
            let begin = next.next().unwrap_or_default() as usize;
            let end = next.next().unwrap_or_default() as usize;
            (begin, end)
        };
        for (tx, verdict) in transactions.iter().zip(verdicts.iter_mut()) {
            if *verdict != Verdict::Committed {
                continue;
            }
            if Self::checks_reads(version, tx, *verdict) {
                // Take every read's ranks even after a hit, to stay in step with `new`.
                let mut conflict = false;
                for _ in &tx.read_conflicts {
                    let (b, e) = range();
                    conflict |= written.any(b, e);
                }
                if conflict {
                    *verdict = Verdict::Conflict;
                    for _ in &tx.write_conflicts {
                        range();
                    }
                    continue;
                }
            }
            for _ in &tx.write_conflicts {
                let (b, e) = range();
                written.set(b, e);
            }
        }

        let mut run = RunBuilder::new(pool, 1, self.keys.len(), 0);
        for (rank, key) in self.keys.iter().enumerate() {
            run.push(*key, if written.get(rank) { version.0 } else { 0 });
        }
        run.finish()
    }
}

/// A fixed-size bit set with range operations; bit `r` stands for the interval from the key of
/// rank `r` to the next.
struct Bits {
    words: Vec<u64>,
}

impl Bits {
    fn new(len: usize) -> Bits {
        Bits {
            words: vec![0; len.div_ceil(64)],
        }
    }

    fn get(&self, i: usize) -> bool {
        self.words[i / 64] & (1 << (i % 64)) != 0
    }

    /// The mask of bits `[lo, hi)` within word `w`.
    fn mask(w: usize, lo: usize, hi: usize) -> u64 {
        let from = lo.saturating_sub(w * 64).min(64);
        let to = hi.saturating_sub(w * 64).min(64);
        let upto = |n: usize| if n == 64 { u64::MAX } else { (1u64 << n) - 1 };
        upto(to) & !upto(from)
    }

    /// Whether any bit of `[lo, hi)` is set.
    fn any(&self, lo: usize, hi: usize) -> bool {
        if lo >= hi {
            return false;
        }
        (lo / 64..=(hi - 1) / 64).any(|w| self.words[w] & Self::mask(w, lo, hi) != 0)
    }

    /// Sets bits `[lo, hi)`.
    fn set(&mut self, lo: usize, hi: usize) {
        if lo >= hi {
            return;
        }
        for w in lo / 64..=(hi - 1) / 64 {
            self.words[w] |= Self::mask(w, lo, hi);
        }
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
        assert_eq!(
            v,
            vec![Verdict::Committed, Verdict::Conflict, Verdict::Committed]
        );
    }

    #[test]
    fn too_old_reads_are_refused_and_blind_writes_pass() {
        let mut h = ConflictHistory::new(HistoryConfig {
            window_versions: 100,
            max_run_batches: 4,
            recent_runs: 0,
        });
        h.resolve(Version(1_000), &[]);
        let v = h.resolve(
            Version(1_001),
            &[
                tx(900, &[("a", "b")], &[]),
                tx(901, &[("a", "b")], &[]),
                tx(0, &[], &[("a", "b")]),
            ],
        );
        assert_eq!(
            v,
            vec![
                Verdict::TooOld {
                    oldest: Version(901)
                },
                Verdict::Committed,
                Verdict::Committed
            ]
        );
    }

    #[test]
    fn runs_leave_with_the_window() {
        let mut h = ConflictHistory::new(HistoryConfig {
            window_versions: 10,
            max_run_batches: 2,
            recent_runs: 1,
        });
        for v in 1..=100u64 {
            h.resolve(Version(v), &[tx(v - 1, &[], &[("k", "l")])]);
        }
        let s = h.stats();
        assert!(s.runs <= 7, "{s:?}");
        assert_eq!(s.oldest_version, Version(90));
        // A write at 95 is still seen by a read at 94.
        assert_eq!(
            h.resolve(Version(101), &[tx(94, &[("k", "l")], &[])]),
            vec![Verdict::Conflict]
        );
    }
}
