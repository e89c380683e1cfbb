//! Memory follows the window, not the age of the cluster: 10,000,000 versions of writes stream
//! through a 5,000,000-version window, and the history never holds more than the window's
//! worth (plus one run still partly inside it).

use bytes::Bytes;
use strata_core::{KeyRange, MVCC_WINDOW_VERSIONS, TransactionConflicts, Version};
use strata_resolver::{ConflictHistory, HistoryConfig};

const VERSIONS_PER_BATCH: u64 = 1_000;
const WRITES_PER_BATCH: u64 = 10;
const STREAMED_VERSIONS: u64 = 10_000_000;

#[test]
fn history_stays_bounded_while_versions_stream_through() {
    let config = HistoryConfig::default();
    let mut history = ConflictHistory::new(config);
    // Every write is a distinct key, so nothing merges away: only trimming keeps memory down.
    let mut next_key = 0u64;
    let mut version = 0u64;
    let window_batches = MVCC_WINDOW_VERSIONS / VERSIONS_PER_BATCH;
    // A run is dropped once its newest batch leaves the window, so at most one run's worth of
    // batches beyond the window stays; each write adds two boundaries.
    let held_batches_max =
        window_batches + u64::from(config.max_run_batches) + config.recent_runs as u64 + 1;
    let boundaries_max = (held_batches_max * WRITES_PER_BATCH * 2) as usize;
    let mut peak = 0;
    while version < STREAMED_VERSIONS {
        version += VERSIONS_PER_BATCH;
        let txs: Vec<TransactionConflicts> = (0..WRITES_PER_BATCH)
            .map(|_| {
                next_key += 2;
                TransactionConflicts {
                    read_version: None,
                    read_conflicts: vec![],
                    write_conflicts: vec![KeyRange::single(Bytes::from(
                        next_key.to_be_bytes().to_vec(),
                    ))],
                }
            })
            .collect();
        history.resolve(Version(version), &txs);
        let stats = history.stats();
        assert!(
            stats.boundaries <= boundaries_max,
            "at {version}: {stats:?} holds more than {boundaries_max} boundaries"
        );
        peak = peak.max(stats.boundaries);
    }
    let streamed = (STREAMED_VERSIONS / VERSIONS_PER_BATCH * WRITES_PER_BATCH * 2) as usize;
    // Half of everything streamed left the window and must have been freed.
    assert!(
        peak < streamed * 6 / 10,
        "peak {peak} of {streamed} streamed"
    );
    let stats = history.stats();
    assert_eq!(
        stats.oldest_version,
        Version(STREAMED_VERSIONS - MVCC_WINDOW_VERSIONS)
    );
    // Bytes follow boundaries: the arrays hold 24 bytes per boundary (8-byte keys need no
    // arena), with room for capacity slack.
    assert!(
        stats.memory_bytes <= stats.boundaries * 48,
        "{} bytes for {} boundaries",
        stats.memory_bytes,
        stats.boundaries
    );
}
