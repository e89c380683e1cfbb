//! [`MemoryLog`]: the log contract in memory, for the tests and benches of other stages.

use std::collections::VecDeque;
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use strata_core::{Epoch, ErrorKind, LogEntry, LogId, LogServer, LogState, Result, Stage, Version};
use tokio::sync::Notify;

use crate::gate::Gate;

/// A [`LogServer`] in memory: the ordering, fencing and waiting rules of the real log
/// (`strata_tlog::FileLog`), but a push is "durable" as soon as it is accepted and nothing
/// survives the process.
///
/// ```
/// use strata_core::{Epoch, LogServer, LogId, Version};
/// use strata_testkit::MemoryLog;
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
    chain: Gate,
    held: Mutex<Held>,
    arrived: Notify,
    pull_wait: Duration,
}

#[derive(Debug)]
struct Held {
    entries: VecDeque<LogEntry>,
    /// Entries at or below this version were popped.
    popped_through: Version,
}

impl MemoryLog {
    /// An empty log whose first push must name `start` as its predecessor. An early push
    /// waits up to 1 s for its predecessor, an empty pull 100 ms for an entry.
    pub fn new(id: LogId, start: Version) -> MemoryLog {
        MemoryLog {
            id,
            chain: Gate::new(Stage::Log, start, Duration::from_secs(1)),
            held: Mutex::new(Held {
                entries: VecDeque::new(),
                popped_through: start,
            }),
            arrived: Notify::new(),
            pull_wait: Duration::from_millis(100),
        }
    }

    /// Sets how long an early push waits for its predecessor and an empty pull for an entry.
    pub fn with_waits(mut self, predecessor_wait: Duration, pull_wait: Duration) -> MemoryLog {
        self.chain = Gate::new(Stage::Log, self.chain.last(), predecessor_wait);
        self.pull_wait = pull_wait;
        self
    }

    /// Pushes `mutations` as the batch of `version` (epoch 1, after `previous`), encoded as a
    /// commit proxy encodes a batch: how storage tests feed a server an exact history.
    pub async fn push_mutations(
        &self,
        previous: Version,
        version: Version,
        mutations: &[strata_core::Mutation],
    ) -> Result<()> {
        let payload = strata_core::wire::encode_parts(None, &[], &[], mutations, Some(version))
            .map_err(|e| self.chain.error(ErrorKind::Wire(e)))?;
        LogServer::push(self, strata_core::Epoch(1), previous, version, payload).await
    }

    /// Every entry held, oldest first (a test's view of what reached the log).
    pub fn entries(&self) -> Vec<LogEntry> {
        self.held()
            .map(|h| h.entries.iter().cloned().collect())
            .unwrap_or_default()
    }

    fn held(&self) -> Result<MutexGuard<'_, Held>> {
        self.held.lock().map_err(|_| {
            self.chain
                .error(ErrorKind::Unavailable("log poisoned by a panic".into()))
        })
    }

    fn read_after(&self, after: Version, limit: usize) -> Result<Vec<LogEntry>> {
        let held = self.held()?;
        if after < held.popped_through {
            return Err(self.chain.error(ErrorKind::TooOld {
                version: after,
                oldest: held.popped_through,
            }));
        }
        let from = held.entries.partition_point(|e| e.version <= after);
        Ok(held.entries.range(from..).take(limit).cloned().collect())
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
            .admit(epoch, previous_version, version, || {
                self.held()?.entries.push_back(LogEntry {
                    version,
                    previous_version,
                    payload,
                });
                Ok(())
            })
            .await?;
        self.arrived.notify_waiters();
        Ok(())
    }

    async fn pull(&self, after: Version, limit: usize) -> Result<Vec<LogEntry>> {
        let deadline = tokio::time::Instant::now() + self.pull_wait;
        loop {
            // Registered before reading, so a push in between still wakes the wait.
            let mut arrived = std::pin::pin!(self.arrived.notified());
            arrived.as_mut().enable();
            let found = self.read_after(after, limit)?;
            if !found.is_empty() || limit == 0 {
                return Ok(found);
            }
            if tokio::time::timeout_at(deadline, arrived).await.is_err() {
                return Ok(found);
            }
        }
    }

    async fn lock(&self, epoch: Epoch) -> Result<LogState> {
        // The chain first, then the entries: a push takes them in the same order.
        let last_version = self.chain.lock(epoch)?;
        let first_version = self.held()?.entries.front().map(|e| e.version);
        Ok(LogState {
            epoch: self.chain.locked(),
            first_version,
            last_version,
        })
    }

    async fn pop(&self, version: Version) -> Result<()> {
        let mut held = self.held()?;
        while held.entries.front().is_some_and(|e| e.version < version) {
            if let Some(e) = held.entries.pop_front() {
                held.popped_through = held.popped_through.max(e.version);
            }
        }
        Ok(())
    }
}
