//! [`ProxyConfig`]: the proxy's tuning and limits, and the room a batch leaves for its commit
//! version.

use std::time::Duration;

use strata_core::{ErrorKind, Result, Version, wire};

#[cfg(doc)]
use crate::BatchingProxy;

use crate::error;

/// Tuning and limits of a [`BatchingProxy`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ProxyConfig {
    /// How long a batch waits for more transactions after its first; zero takes only what is
    /// already queued (pipelining and the logs' group commit do the rest). The batch waits
    /// with its room in the pipeline already taken (see `in_flight_batches_max`), so a window
    /// overlaps one batch fewer in flight.
    pub batch_window: Duration,
    /// Most transactions in one batch.
    pub batch_transactions_max: usize,
    /// Most encoded bytes in one batch, counted as the sum of its transactions' encodings (a
    /// single larger transaction makes a batch of its own). The batch's payload to the logs
    /// carries each accepted transaction's mutations once, without read versions or conflicts,
    /// under one header, plus the commit version section: never more than that sum plus the
    /// section. So [`BatchingProxy::new`] refuses a bound above the wire limit less the
    /// section (10,000,000 - 17 bytes): a batch too large to encode would be a hole in the
    /// chain.
    pub batch_bytes_max: usize,
    /// Most transactions waiting for a batch.
    pub queue_transactions_max: usize,
    /// How long a commit waits for room in a full queue before it is refused as overloaded.
    /// The transactions of one [`strata_core::CommitProxy::commit_all`] wait this long in all,
    /// not each.
    pub queue_wait: Duration,
    /// Most batches between version assignment and answer at once: the pipeline's depth.
    /// Room is taken before a batch is formed, so while the pipeline is full, commits gather
    /// in the queue and the next batch takes them all; the smaller this bound, the larger the
    /// batches under load (and the less per-batch work per commit), the larger, the more
    /// batches overlap. Default 8: on the reference machine, 64 clients of one-key commits
    /// on the default cluster, bounds of 2, 3, 4, 8 and 64 cost 16.1, 17.1, 15.6, 14.5 and
    /// 20.5 µs of CPU per commit (medians of five runs; docs/performance.md). 0 counts as 1.
    pub in_flight_batches_max: usize,
    /// How long the oldest batch may stay in flight (from asking the sequencer for its version
    /// pair to its answer) before [`BatchingProxy::health`] reports the stage it waits on as
    /// timed out. Default 10 s: a healthy batch takes milliseconds (a resolution and one log
    /// sync), and every wait of the stages themselves is bounded well below that (a log or
    /// resolver waits 1 s for a missing predecessor, a full log queue 5 s), so a batch in
    /// flight for longer waits on a stage that stopped answering. A stall is only reported:
    /// the batch is not cut and the proxy does not fail, since ending the epoch is the
    /// director's call. Must be above zero.
    pub stall_timeout: Duration,
}

impl Default for ProxyConfig {
    fn default() -> ProxyConfig {
        ProxyConfig {
            batch_window: Duration::ZERO,
            batch_transactions_max: 1_000,
            batch_bytes_max: 8 << 20,
            queue_transactions_max: 10_000,
            queue_wait: Duration::from_secs(5),
            in_flight_batches_max: 8,
            stall_timeout: Duration::from_secs(10),
        }
    }
}

/// The bytes the commit version section adds to an encoding, measured with the wire format
/// itself so that it follows the format.
pub(crate) fn commit_section_bytes() -> Result<usize> {
    let encode = |commit_version| {
        wire::encode_parts(None, &[], &[], &[], commit_version)
            .map(|b| b.len())
            .map_err(|e| error(ErrorKind::Wire(e)))
    };
    Ok(encode(Some(Version::ZERO))?.saturating_sub(encode(None)?))
}
