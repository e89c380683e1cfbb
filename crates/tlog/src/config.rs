//! [`FileLogConfig`]: the tuning and limits of a [`FileLog`](crate::FileLog), and the unit
//! queue room is counted in.

use std::time::Duration;

use strata_core::{Blocking, ErrorKind, Result};
use tokio::sync::Semaphore;

use crate::error::error;
use crate::format::{GROUP_END, RECORD_HEADER_BYTES, SEGMENT_HEADER_BYTES};

/// Tuning and limits of a [`FileLog`](crate::FileLog).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FileLogConfig {
    /// A new segment file is started when a record would take the current one past this size.
    /// Zero-filled segments start smaller (four times what the log wrote into the segment
    /// before, at least 1 MiB) and double up to this size.
    pub segment_bytes: u64,
    /// Largest payload a push may carry.
    pub payload_bytes_max: usize,
    /// Largest number of payload bytes queued for the writer; a push waits for room.
    pub queue_bytes_max: usize,
    /// Largest number of bytes one group commit writes before its sync.
    pub group_bytes_max: usize,
    /// Whether the writer, finding fewer pushes queued than its last group held, waits (at
    /// most half a sync) for the rest of that group's pushers before it writes.
    ///
    /// It pays when pushers come back quickly after their answer (in well under the fixed cost
    /// of a sync, about 85 µs on the project's test machine), as a closed loop of direct
    /// pushers does: one sync instead of two. When they take longer (Strata's commit
    /// pipeline: a proxy answers its clients, they begin and commit new transactions, the next
    /// batch is resolved, about 100 µs), waiting only idles the disk; without the wait, the
    /// pushes that arrive during one sync form the next group and the disk stays busy. The
    /// README has both measurements.
    pub gather_stragglers: bool,
    /// How long a push that arrived before its predecessor waits for it.
    pub predecessor_wait: Duration,
    /// How long a push waits for room in a full queue before it is refused as overloaded.
    pub queue_wait: Duration,
    /// How long a pull with nothing to return waits for a new entry.
    pub pull_wait: Duration,
    /// Payload bytes of the newest entries kept in memory, so that followers close behind the
    /// log (storage servers) pull without a disk read or a copy.
    pub pull_cache_bytes: usize,
    /// Whether segments are written full of zeros (by a helper thread, ahead of need) before
    /// records go into them. A sync then only commits data, no file-size change, which on
    /// ext4 takes about half as long. Each log keeps at most one spare segment on disk for it;
    /// spares grow with use, up to `segment_bytes` (see `segment_bytes`). Turn it off on file
    /// systems that never overwrite in place (btrfs, ZFS), where it only costs the zeros.
    pub preallocate: bool,
    /// Where the writer and the spare segments run: a thread each (the default), or, for a
    /// simulated disk under a current-thread runtime, a task and the writer itself (see
    /// [`Blocking`]). Either way, closing a log writes what is queued before it returns.
    pub blocking: Blocking,
    /// When a push on an idle log writes and syncs its own record, on the pushing thread,
    /// instead of queuing it for the writer thread (see [`Leaders`]). Only with
    /// [`Blocking::Threads`]: with [`Blocking::Inline`] every push queues.
    pub leaders: Leaders,
    /// Whether the writer writes its records around the operating system's page cache
    /// (`O_DIRECT` on Linux), as whole pages: the partial page before a group rewritten with
    /// it, zeros after it. The sync after it then has no dirty pages to find and write back,
    /// only the disk's cache to flush: on the project's test machine a lone commit's p50 fell
    /// from 64-72 to 54-57 µs, and its CPU from 33-39 to 26-27 µs. Where the file system
    /// refuses direct I/O the log writes the same pages through the page cache. Turn it off to
    /// write only the new bytes, through the page cache.
    pub direct_io: bool,
}

/// When a push leads: writes and syncs its own record on the runtime thread that pushed it,
/// instead of handing it to the log's writer thread and waiting for the answer. A lone push
/// that leads skips two wake-ups across CPUs (the handing over and the answer), but blocks its
/// runtime thread for one sync. Whatever the choice, a push leads only when nothing queued
/// before it is unwritten and no group is being written (chain order), never on a runtime of
/// one thread, and at most one fewer than the runtime's threads lead at once.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Leaders {
    /// When the log is idle (its writer thread's last two groups were lone pushes, with
    /// nothing queued behind them) and another thread of the pusher's runtime is parked, with
    /// nothing to run. A busy runtime is short of CPU, not of wake-ups, and the writer
    /// thread's sync leaves it every thread. The default. (Tokio counts parks only on
    /// targets with 64-bit atomics; on others, `Auto` never leads.)
    #[default]
    Auto,
    /// Whenever the log is idle, whatever the runtime's other threads are doing: for a runtime
    /// that serves little but the log, and for tests that must know which thread writes.
    WhenLogIdle,
    /// Never: every push queues for the writer thread, and no runtime thread ever blocks on
    /// the disk.
    Never,
}

impl Default for FileLogConfig {
    fn default() -> FileLogConfig {
        FileLogConfig {
            segment_bytes: 64 << 20,
            payload_bytes_max: 16 << 20,
            queue_bytes_max: 64 << 20,
            group_bytes_max: 8 << 20,
            gather_stragglers: true,
            predecessor_wait: Duration::from_secs(1),
            queue_wait: Duration::from_secs(5),
            pull_wait: Duration::from_millis(100),
            pull_cache_bytes: 64 << 20,
            preallocate: true,
            blocking: Blocking::Threads,
            leaders: Leaders::Auto,
            direct_io: true,
        }
    }
}

impl FileLogConfig {
    /// Checks the limits against each other; [`FileLog::open`](crate::FileLog::open) refuses a configuration that fails.
    pub fn validate(&self) -> Result<()> {
        let invalid = |what: &str| Err(error(ErrorKind::InvalidRequest(what.into())));
        if self.payload_bytes_max > self.queue_bytes_max {
            return invalid("payload_bytes_max must not exceed queue_bytes_max");
        }
        if self.payload_bytes_max >= GROUP_END as usize {
            return invalid("payload_bytes_max must be below 2 GiB");
        }
        if self.queue_bytes_max / QUEUE_UNIT_BYTES >= Semaphore::MAX_PERMITS {
            return invalid("queue_bytes_max is too large");
        }
        if self.segment_bytes <= SEGMENT_HEADER_BYTES as u64 {
            return invalid("segment_bytes must exceed the segment header");
        }
        if usize::try_from(self.segment_bytes).is_err() {
            return invalid("segment_bytes must fit in memory (recovery reads a segment whole)");
        }
        Ok(())
    }
}

/// Queue room is counted in units of this many bytes.
pub(crate) const QUEUE_UNIT_BYTES: usize = 1024;

/// The queue room a push of `payload_len` bytes takes, in units of [`QUEUE_UNIT_BYTES`].
pub(crate) fn queue_units(payload_len: usize) -> u32 {
    let units = (payload_len + RECORD_HEADER_BYTES).div_ceil(QUEUE_UNIT_BYTES);
    u32::try_from(units).unwrap_or(u32::MAX)
}
