//! The resolver stage: a [`ConflictHistory`] behind the [`Resolver`] trait, with version-chain
//! ordering and epoch fencing.

use std::sync::Mutex;
use std::time::Duration;

use async_trait::async_trait;
use std::sync::atomic::{AtomicU64, Ordering};
use strata_core::chain::{self, Admission};
use strata_core::{
    Epoch, Error, ErrorKind, ResolveBatch, Resolver, Result, Stage, Verdict, Version,
};

use tokio::sync::Notify;

use crate::history::{ConflictHistory, HistoryConfig, HistoryStats};

/// Tuning of a [`WindowResolver`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ResolverConfig {
    /// The history's window and run sizes.
    pub history: HistoryConfig,
    /// How long a batch that arrived before its predecessor waits for it before it is refused
    /// as out of order.
    pub predecessor_wait: Duration,
    /// Largest batch accepted, in transactions. Resolution runs on the calling task, so this
    /// bounds how long one batch holds it (about 0.5 ms per 1,000 transactions here).
    pub batch_transactions_max: usize,
}

impl Default for ResolverConfig {
    fn default() -> ResolverConfig {
        ResolverConfig {
            history: HistoryConfig::default(),
            predecessor_wait: Duration::from_secs(1),
            batch_transactions_max: 100_000,
        }
    }
}

/// The resolver of one epoch.
///
/// Batches are resolved strictly along the `previous_version` chain that starts at the
/// version the resolver was created with (the recovery version). A batch arriving early waits
/// for its predecessor, at most [`ResolverConfig::predecessor_wait`].
///
/// ```
/// use strata_core::{Epoch, KeyRange, ResolveBatch, Resolver, TransactionConflicts, Verdict, Version};
/// use strata_resolver::{ResolverConfig, WindowResolver};
///
/// # tokio::runtime::Builder::new_current_thread().enable_time().build().unwrap().block_on(async {
/// let resolver = WindowResolver::new(Epoch(1), Version(100), ResolverConfig::default());
/// let tx = TransactionConflicts {
///     read_version: Some(Version(100)),
///     read_conflicts: vec![KeyRange::single("k")],
///     write_conflicts: vec![KeyRange::single("k")],
/// };
/// let batch = ResolveBatch {
///     epoch: Epoch(1),
///     previous_version: Version(100),
///     version: Version(150),
///     transactions: vec![tx.clone(), tx],
/// };
/// // The second transaction read "k", which the first (same batch, accepted) wrote.
/// assert_eq!(resolver.resolve(batch).await?, vec![Verdict::Committed, Verdict::Conflict]);
/// # Ok::<(), strata_core::Error>(())
/// # }).unwrap();
/// ```
#[derive(Debug)]
pub struct WindowResolver {
    epoch: Epoch,
    config: ResolverConfig,
    history: Mutex<ConflictHistory>,
    /// The last version resolved (written under the history's lock).
    last: AtomicU64,
    /// Wakes the batches waiting for their predecessor when `last` moves. (Not a tokio
    /// `watch`: its receivers wait on one of eight queues picked at random, so a seeded
    /// simulation would not wake them in one order every run.)
    advanced: Notify,
}

impl WindowResolver {
    /// A resolver for `epoch` whose first batch must name `start_version` as its predecessor.
    /// It knows no write before `start_version`, so it refuses older reads as too old.
    pub fn new(epoch: Epoch, start_version: Version, config: ResolverConfig) -> WindowResolver {
        WindowResolver {
            epoch,
            config,
            history: Mutex::new(ConflictHistory::starting_at(config.history, start_version)),
            last: AtomicU64::new(start_version.0),
            advanced: Notify::new(),
        }
    }

    /// The epoch this resolver serves.
    pub fn epoch(&self) -> Epoch {
        self.epoch
    }

    /// The last version resolved.
    pub fn last_version(&self) -> Version {
        Version(self.last.load(Ordering::SeqCst))
    }

    /// Memory and window figures of the history.
    pub fn stats(&self) -> Result<HistoryStats> {
        Ok(self.lock()?.stats())
    }

    fn lock(&self) -> Result<std::sync::MutexGuard<'_, ConflictHistory>> {
        self.history.lock().map_err(|_| {
            error(ErrorKind::Unavailable(
                "resolver history poisoned by a panic during resolution".into(),
            ))
        })
    }

    /// Checks `batch` against the last version resolved: `Ok(true)` when it is next,
    /// `Ok(false)` when its predecessor has not arrived yet; a duplicate or a fork is refused
    /// (the rule is [`strata_core::chain::admit`]'s).
    fn is_next(batch: &ResolveBatch, last: Version) -> Result<bool> {
        let admission = chain::admit(batch.previous_version, batch.version, last)
            .map_err(|refusal| error(refusal.into()))?;
        Ok(admission == Admission::Next)
    }

    async fn wait_for_predecessor(&self, batch: &ResolveBatch) -> Result<()> {
        let wait = async {
            loop {
                // Listening before looking: a move between the two still wakes this one.
                let moved = self.advanced.notified();
                tokio::pin!(moved);
                moved.as_mut().enable();
                if Self::is_next(batch, self.last_version())? {
                    return Ok::<(), Error>(());
                }
                moved.await;
            }
        };
        match tokio::time::timeout(self.config.predecessor_wait, wait).await {
            Ok(result) => result,
            Err(_) => Err(error(ErrorKind::OutOfOrder {
                previous: batch.previous_version,
                last: self.last_version(),
            })),
        }
    }
}

fn error(kind: ErrorKind) -> Error {
    Error::new(Stage::Resolver, kind)
}

#[async_trait]
impl Resolver for WindowResolver {
    async fn resolve(&self, batch: ResolveBatch) -> Result<Vec<Verdict>> {
        if batch.epoch < self.epoch {
            return Err(error(ErrorKind::Fenced {
                request: batch.epoch,
                current: self.epoch,
            }));
        }
        if batch.epoch > self.epoch {
            return Err(error(ErrorKind::InvalidRequest(format!(
                "batch of {} sent to the resolver of {}",
                batch.epoch, self.epoch
            ))));
        }
        // A malformed batch is refused before it can wait for a predecessor.
        chain::follows(batch.previous_version, batch.version)
            .map_err(|refusal| error(refusal.into()))?;
        if batch.transactions.len() > self.config.batch_transactions_max {
            return Err(error(ErrorKind::InvalidRequest(format!(
                "batch of {} transactions is over the limit of {}",
                batch.transactions.len(),
                self.config.batch_transactions_max
            ))));
        }
        self.wait_for_predecessor(&batch).await?;

        let verdicts = {
            let mut history = self.lock()?;
            // Two copies of the same batch may both have seen their predecessor; only the one
            // that takes the lock first is resolved.
            if !Self::is_next(&batch, self.last_version())? {
                return Err(error(ErrorKind::OutOfOrder {
                    previous: batch.previous_version,
                    last: self.last_version(),
                }));
            }
            let verdicts = history.resolve(batch.version, &batch.transactions);
            self.last.store(batch.version.0, Ordering::SeqCst);
            self.advanced.notify_waiters();
            verdicts
        };
        tracing::trace!(
            version = batch.version.0,
            transactions = verdicts.len(),
            "resolved"
        );
        Ok(verdicts)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use strata_core::{KeyRange, TransactionConflicts};

    use super::*;

    fn batch(epoch: u64, previous: u64, version: u64) -> ResolveBatch {
        ResolveBatch {
            epoch: Epoch(epoch),
            previous_version: Version(previous),
            version: Version(version),
            transactions: vec![TransactionConflicts {
                read_version: Some(Version(previous)),
                read_conflicts: vec![KeyRange::single("k")],
                write_conflicts: vec![KeyRange::single("k")],
            }],
        }
    }

    fn resolver() -> Arc<WindowResolver> {
        let config = ResolverConfig {
            predecessor_wait: Duration::from_millis(200),
            ..ResolverConfig::default()
        };
        Arc::new(WindowResolver::new(Epoch(3), Version(10), config))
    }

    #[tokio::test(start_paused = true)]
    async fn early_batch_waits_for_its_predecessor() {
        let r = resolver();
        let early = tokio::spawn({
            let r = r.clone();
            async move { r.resolve(batch(3, 20, 30)).await }
        });
        tokio::task::yield_now().await;
        assert!(!early.is_finished());
        assert_eq!(
            r.resolve(batch(3, 10, 20)).await.unwrap(),
            vec![Verdict::Committed]
        );
        assert_eq!(early.await.unwrap().unwrap(), vec![Verdict::Committed]);
        assert_eq!(r.last_version(), Version(30));
    }

    #[tokio::test(start_paused = true)]
    async fn gap_after_the_wait_is_out_of_order() {
        let r = resolver();
        let e = r.resolve(batch(3, 20, 30)).await.unwrap_err();
        assert!(matches!(
            e.kind,
            ErrorKind::OutOfOrder {
                previous: Version(20),
                last: Version(10)
            }
        ));
        assert_eq!(e.stage, Stage::Resolver);
        // Nothing was resolved: the real predecessor still goes through.
        assert!(r.resolve(batch(3, 10, 20)).await.is_ok());
    }

    #[tokio::test(start_paused = true)]
    async fn duplicates_forks_and_old_epochs_are_refused() {
        let r = resolver();
        r.resolve(batch(3, 10, 20)).await.unwrap();
        let dup = r.resolve(batch(3, 10, 20)).await.unwrap_err();
        assert!(matches!(
            dup.kind,
            ErrorKind::Duplicate {
                version: Version(20),
                ..
            }
        ));
        let fork = r.resolve(batch(3, 15, 25)).await.unwrap_err();
        assert!(matches!(fork.kind, ErrorKind::OutOfOrder { .. }));
        let old = r.resolve(batch(2, 20, 30)).await.unwrap_err();
        assert!(old.is_fenced());
        let newer = r.resolve(batch(4, 20, 30)).await.unwrap_err();
        assert!(matches!(newer.kind, ErrorKind::InvalidRequest(_)));
        let backwards = r.resolve(batch(3, 20, 20)).await.unwrap_err();
        assert!(matches!(backwards.kind, ErrorKind::InvalidRequest(_)));
        // None of the refused batches moved the chain.
        assert_eq!(r.last_version(), Version(20));
    }

    #[tokio::test(start_paused = true)]
    async fn oversized_batch_is_refused() {
        let config = ResolverConfig {
            batch_transactions_max: 1,
            ..ResolverConfig::default()
        };
        let r = WindowResolver::new(Epoch(1), Version(0), config);
        let mut b = batch(1, 0, 5);
        b.transactions.push(b.transactions[0].clone());
        assert!(matches!(
            r.resolve(b).await.unwrap_err().kind,
            ErrorKind::InvalidRequest(_)
        ));
    }
}
