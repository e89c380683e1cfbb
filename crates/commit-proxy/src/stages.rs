//! The stages a proxy commits through, and the failed state they share: the first error that
//! broke the chain, and the hole below which batches still finish.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, PoisonError};

use strata_core::shard::ShardMap;
use strata_core::{
    Epoch, Error, LogServer, Mutation, Resolver, Result, Sequencer, TransactionConflicts, Version,
};
use tokio::sync::{Notify, oneshot};

use crate::flight::Track;

/// Where a client's answer goes.
pub(crate) type Reply = oneshot::Sender<Result<Version>>;

/// One client transaction waiting for its batch.
pub(crate) struct Pending {
    pub(crate) conflicts: TransactionConflicts,
    pub(crate) mutations: Vec<Mutation>,
    pub(crate) bytes: usize,
    pub(crate) reply: Reply,
}

/// The stages a proxy commits through.
pub(crate) struct Stages {
    pub(crate) epoch: Epoch,
    pub(crate) sequencer: Arc<dyn Sequencer>,
    /// Resolvers in key order, with the map of their key ranges.
    pub(crate) resolvers: Vec<Arc<dyn Resolver>>,
    pub(crate) shards: ShardMap,
    pub(crate) logs: Vec<Arc<dyn LogServer>>,
    pub(crate) fenced: AtomicBool,
    /// The first error that broke the chain (see the crate docs, "Failed state").
    pub(crate) failure: OnceLock<Error>,
    /// The lowest version of a batch that failed, `u64::MAX` while none did: batches above it
    /// can never be accepted, batches below it are not in its way.
    pub(crate) hole: AtomicU64,
    /// Woken whenever a failure is recorded, so batches behind the hole stop waiting on their
    /// stages.
    pub(crate) broken: Notify,
    /// The batches in flight, oldest first.
    pub(crate) flights: Mutex<VecDeque<Arc<Track>>>,
}

impl Stages {
    /// Records that the chain broke: at the batch of `version`, or before any version was
    /// taken (`None`). The first error is kept; a later one only lowers the hole.
    pub(crate) fn record(&self, version: Option<Version>, e: &Error) {
        if e.is_fenced() {
            self.fenced.store(true, Ordering::SeqCst);
        }
        // The failure is set before the hole is lowered, so whoever sees the hole finds it.
        if self.failure.set(e.clone()).is_ok() {
            tracing::error!(
                epoch = %self.epoch,
                version = version.map(|v| v.0),
                error = %e,
                "commit chain broken; the proxy answers every later commit with this error"
            );
        }
        if let Some(v) = version {
            self.hole.fetch_min(v.0, Ordering::SeqCst);
        }
        self.broken.notify_waiters();
    }

    /// The recorded failure once a batch below `version` failed: the batch of `version` can
    /// then never be accepted.
    pub(crate) fn behind_hole(&self, version: Version) -> Option<Error> {
        if self.hole.load(Ordering::SeqCst) < version.0 {
            self.failure.get().cloned()
        } else {
            None
        }
    }

    pub(crate) fn flights(&self) -> MutexGuard<'_, VecDeque<Arc<Track>>> {
        // The list stays consistent even if a holder panicked: every change is one push or
        // one remove.
        self.flights.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Waits until `check` finds a failure that concerns the waiter, and returns it.
    pub(crate) async fn until_failed(&self, check: impl Fn(&Stages) -> Option<Error>) -> Error {
        loop {
            // Registered before checking, so a failure recorded in between still wakes us.
            let mut woken = std::pin::pin!(self.broken.notified());
            woken.as_mut().enable();
            if let Some(e) = check(self) {
                return e;
            }
            woken.await;
        }
    }
}
