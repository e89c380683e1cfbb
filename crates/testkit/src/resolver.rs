//! [`ModelResolver`]: conflict detection by brute force, as a fake resolver and as the model
//! the real one is checked against.

use std::sync::Mutex;
use std::time::Duration;

use async_trait::async_trait;
use strata_core::{
    Epoch, ErrorKind, KeyRange, MVCC_WINDOW_VERSIONS, ResolveBatch, Resolver, Result, Stage,
    TransactionConflicts, Verdict, Version,
};

use crate::gate::Gate;

/// The resolver contract written the plainest way: every accepted write range is kept in a
/// list with its version, and a read conflicts with any newer write it intersects. Slow and
/// obviously right.
///
/// ```
/// use strata_core::{KeyRange, TransactionConflicts, Verdict, Version};
/// use strata_testkit::ConflictModel;
///
/// let mut model = ConflictModel::default();
/// let write = TransactionConflicts {
///     read_version: None,
///     read_conflicts: vec![],
///     write_conflicts: vec![KeyRange::single("k")],
/// };
/// let read = TransactionConflicts {
///     read_version: Some(Version(1)),
///     read_conflicts: vec![KeyRange::single("k")],
///     write_conflicts: vec![],
/// };
/// assert_eq!(model.resolve(Version(2), u64::MAX, &[write, read]), [Verdict::Committed, Verdict::Conflict]);
/// ```
#[derive(Clone, Debug, Default)]
pub struct ConflictModel {
    writes: Vec<(KeyRange, Version)>,
    oldest: Version,
}

impl ConflictModel {
    /// A model that refuses read versions below `oldest` as too old.
    pub fn starting_at(oldest: Version) -> ConflictModel {
        ConflictModel {
            writes: Vec::new(),
            oldest,
        }
    }

    /// The verdicts of the batch at `version`, recording the writes of the transactions it
    /// accepts; read versions more than `window` below `version` are too old.
    pub fn resolve(
        &mut self,
        version: Version,
        window: u64,
        transactions: &[TransactionConflicts],
    ) -> Vec<Verdict> {
        self.oldest = self.oldest.max(version.saturating_sub(window));
        transactions
            .iter()
            .map(|tx| {
                if tx.read_conflicts.is_empty() {
                    self.accept(tx, version);
                    return Verdict::Committed;
                }
                let read_version = tx.read_version.unwrap_or(Version::ZERO);
                if read_version < self.oldest {
                    return Verdict::TooOld {
                        oldest: self.oldest,
                    };
                }
                let conflict = tx.read_conflicts.iter().any(|r| {
                    self.writes
                        .iter()
                        .any(|(w, v)| *v > read_version && w.intersects(r))
                });
                if conflict {
                    Verdict::Conflict
                } else {
                    self.accept(tx, version);
                    Verdict::Committed
                }
            })
            .collect()
    }

    fn accept(&mut self, tx: &TransactionConflicts, version: Version) {
        for w in &tx.write_conflicts {
            self.writes.push((w.clone(), version));
        }
    }
}

/// A [`Resolver`] over a [`ConflictModel`]: the real contract (chain order, the epoch checks,
/// the MVCC window), none of the speed. It has no limit on a batch's size (the real resolver
/// refuses more than its `batch_transactions_max`).
#[derive(Debug)]
pub struct ModelResolver {
    epoch: Epoch,
    chain: Gate,
    model: Mutex<ConflictModel>,
}

impl ModelResolver {
    /// A resolver of `epoch` whose first batch must name `start` as its predecessor; it knows
    /// no write before `start`, so older reads are too old.
    pub fn new(epoch: Epoch, start: Version) -> ModelResolver {
        ModelResolver {
            epoch,
            chain: Gate::new(Stage::Resolver, start, Duration::from_secs(1)),
            model: Mutex::new(ConflictModel::starting_at(start)),
        }
    }
}

#[async_trait]
impl Resolver for ModelResolver {
    async fn resolve(&self, batch: ResolveBatch) -> Result<Vec<Verdict>> {
        if batch.epoch < self.epoch {
            return Err(self.chain.error(ErrorKind::Fenced {
                request: batch.epoch,
                current: self.epoch,
            }));
        }
        if batch.epoch > self.epoch {
            return Err(self.chain.error(ErrorKind::InvalidRequest(format!(
                "batch of {} sent to the resolver of {}",
                batch.epoch, self.epoch
            ))));
        }
        self.chain
            .admit(batch.epoch, batch.previous_version, batch.version, || {
                let mut model = self.model.lock().map_err(|_| {
                    self.chain
                        .error(ErrorKind::Unavailable("resolver poisoned".into()))
                })?;
                Ok(model.resolve(batch.version, MVCC_WINDOW_VERSIONS, &batch.transactions))
            })
            .await
    }
}
