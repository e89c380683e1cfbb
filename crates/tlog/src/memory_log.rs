//! A log held in memory: the [`LogServer`] contract without durability, for tests and benches
//! of other stages.

use std::collections::VecDeque;
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use strata_core::{Epoch, ErrorKind, LogEntry, LogId, LogServer, LogState, Result, Version};

use crate::chain::Chain;
use crate::error::error;

/// A [`LogServer`] in memory: same ordering, fencing and waiting rules as
/// [`crate::FileLog`], but a push is "durable" as soon as it is accepted and nothing survives
/// the process.
///
/// ```
/// use strata_core::{Epoch, LogServer, LogId, Version};
/// use strata_tlog::MemoryLog;
///
/// # tokio::runtime::Builder::new_current_thread().enable_time().build().unwrap().block_on(async {
/// let log = MemoryLog::new(LogId(1), Version(0));
/// log.push(Epoch(1), Version(0), Version(5), "batch".into()).await?;
/// let entries = log.pull(Version(0), 10).await?;
/// assert_eq!(entries[0].version, Version(5));
/// # Ok::<(), strata_core::Error>(())
/// # }).unwrap();
/// ```
#[derive(Debug)]
pub struct MemoryLog {
    id: LogId,
    chain: Chain,
    entries: Mutex<VecDeque<LogEntry>>,
    /// Entries at or below this version were popped.
    popped_through: Mutex<Version>,
    predecessor_wait: Duration,
    pull_wait: Duration,
}

impl MemoryLog {
    /// An empty log whose first push must name `start` as its predecessor.
    pub fn new(id: LogId, start: Version) -> MemoryLog {
        MemoryLog {
            id,
            chain: Chain::new(Epoch(0), start),
            entries: Mutex::new(VecDeque::new()),
            popped_through: Mutex::new(start),
            predecessor_wait: Duration::from_secs(1),
            pull_wait: Duration::from_millis(100),
        }
    }

    /// Sets how long an early push waits for its predecessor and an empty pull for an entry.
    pub fn with_waits(mut self, predecessor_wait: Duration, pull_wait: Duration) -> MemoryLog {
        self.predecessor_wait = predecessor_wait;
        self.pull_wait = pull_wait;
        self
    }

    fn entries(&self) -> Result<MutexGuard<'_, VecDeque<LogEntry>>> {
        self.entries
            .lock()
            .map_err(|_| error(ErrorKind::Unavailable("log poisoned by a panic".into())))
    }

    fn popped_through(&self) -> Result<MutexGuard<'_, Version>> {
        self.popped_through
            .lock()
            .map_err(|_| error(ErrorKind::Unavailable("log poisoned by a panic".into())))
    }

    fn read_after(&self, after: Version, limit: usize) -> Result<Vec<LogEntry>> {
        let oldest = *self.popped_through()?;
        if after < oldest {
            return Err(error(ErrorKind::TooOld {
                version: after,
                oldest,
            }));
        }
        let entries = self.entries()?;
        let from = entries.partition_point(|e| e.version <= after);
        Ok(entries.range(from..).take(limit).cloned().collect())
    }
}

#[async_trait]
impl LogServer for MemoryLog {
    fn id(&self) -> LogId {
        self.id
    }

    async fn push(
        &self,
        epoch: Epoch,
        previous_version: Version,
        version: Version,
        payload: Bytes,
    ) -> Result<()> {
        self.chain
            .admit(
                epoch,
                previous_version,
                version,
                self.predecessor_wait,
                || {
                    self.entries()?.push_back(LogEntry {
                        version,
                        previous_version,
                        payload,
                    });
                    Ok(())
                },
            )
            .await?;
        self.chain.set_durable(version);
        Ok(())
    }

    async fn pull(&self, after: Version, limit: usize) -> Result<Vec<LogEntry>> {
        let found = self.read_after(after, limit)?;
        if !found.is_empty() || limit == 0 {
            return Ok(found);
        }
        self.chain.wait_durable_after(after, self.pull_wait).await;
        self.read_after(after, limit)
    }

    async fn lock(&self, epoch: Epoch) -> Result<LogState> {
        self.chain.lock(epoch)?;
        let entries = self.entries()?;
        Ok(LogState {
            epoch: self.chain.locked()?,
            first_version: entries.front().map(|e| e.version),
            last_version: self.chain.last_accepted()?,
        })
    }

    async fn pop(&self, version: Version) -> Result<()> {
        let mut entries = self.entries()?;
        let mut popped = self.popped_through()?;
        while entries.front().is_some_and(|e| e.version < version) {
            if let Some(e) = entries.pop_front() {
                *popped = (*popped).max(e.version);
            }
        }
        Ok(())
    }
}
