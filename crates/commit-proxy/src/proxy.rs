//! [`BatchingProxy`]: the handle clients commit through, and what monitoring asks of it.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

use async_trait::async_trait;
use bytes::Bytes;
use strata_core::shard::ShardMap;
use strata_core::{
    CommitProxy, Epoch, Error, ErrorKind, Key, LogServer, Mutation, Resolver, Result, Sequencer,
    Stage, TRANSACTION_BYTES_MAX, Transaction, TransactionConflicts, TransactionView, Version,
    WireError,
};
use tokio::runtime::Handle;
use tokio::sync::{Notify, mpsc, oneshot};
use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::batch::{Order, SINGLES_TO_GO_ALONE, batch_loop, commit_batch, take_version};
use crate::config::{ProxyConfig, commit_section_bytes};
use crate::error;
use crate::finish::{Handoff, Ran};
use crate::flight::{Oldest, WAITED_ON};
use crate::stages::{Pending, Stages};

/// A commit proxy of one epoch. See the crate docs.
pub struct BatchingProxy {
    stages: Arc<Stages>,
    config: ProxyConfig,
    /// The largest client transaction whose batch still fits the wire limit.
    transaction_bytes_max: usize,
    queue: mpsc::Sender<Pending>,
    order: Arc<Order>,
    /// The proxy's runtime: a commit goes alone only from one of its tasks, and a lone batch
    /// that has to wait finishes there.
    runtime: Handle,
    batcher: JoinHandle<()>,
}

impl std::fmt::Debug for BatchingProxy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BatchingProxy")
            .field("epoch", &self.stages.epoch)
            .field("resolvers", &self.stages.resolvers.len())
            .field("logs", &self.stages.logs.len())
            .finish_non_exhaustive()
    }
}

impl Drop for BatchingProxy {
    fn drop(&mut self) {
        self.batcher.abort();
    }
}

impl BatchingProxy {
    /// A proxy for `epoch`. `resolvers` pairs each resolver with the first key of its range,
    /// sorted or not; the first range always starts at the empty key. Must be called inside a
    /// tokio runtime (the batcher is a task).
    ///
    /// Errors: `InvalidRequest` without a resolver or a log, for resolver ranges that do not
    /// start at distinct keys, for a [`ProxyConfig::batch_bytes_max`] that leaves no room for
    /// the commit version section under the wire limit, or a zero
    /// [`ProxyConfig::stall_timeout`].
    pub fn new(
        epoch: Epoch,
        sequencer: Arc<dyn Sequencer>,
        mut resolvers: Vec<(Key, Arc<dyn Resolver>)>,
        logs: Vec<Arc<dyn LogServer>>,
        config: ProxyConfig,
    ) -> Result<BatchingProxy> {
        if resolvers.is_empty() || logs.is_empty() {
            return Err(error(ErrorKind::InvalidRequest(
                "a proxy needs at least one resolver and one log".into(),
            )));
        }
        let transaction_bytes_max = TRANSACTION_BYTES_MAX.saturating_sub(commit_section_bytes()?);
        if config.batch_bytes_max > transaction_bytes_max {
            return Err(error(ErrorKind::InvalidRequest(format!(
                "batch_bytes_max of {} leaves no room for the commit version section: a batch \
                 must fit the wire limit of {TRANSACTION_BYTES_MAX} bytes once stamped, so the \
                 bound is at most {transaction_bytes_max}",
                config.batch_bytes_max
            ))));
        }
        if config.stall_timeout.is_zero() {
            return Err(error(ErrorKind::InvalidRequest(
                "stall_timeout must be above zero, or every batch in flight counts as stalled"
                    .into(),
            )));
        }
        resolvers.sort_by(|a, b| a.0.cmp(&b.0));
        let shards = ShardMap::from_begins(resolvers.iter().map(|(k, _)| k.clone()).collect());
        if shards.len() != resolvers.len() || !resolvers[0].0.is_empty() {
            return Err(error(ErrorKind::InvalidRequest(
                "resolver ranges must start at distinct keys, the first at the empty key".into(),
            )));
        }
        let stages = Arc::new(Stages {
            epoch,
            sequencer,
            resolvers: resolvers.into_iter().map(|(_, r)| r).collect(),
            shards,
            logs,
            fenced: AtomicBool::new(false),
            failure: OnceLock::new(),
            hole: AtomicU64::new(u64::MAX),
            broken: Notify::new(),
            flights: Mutex::new(VecDeque::new()),
        });
        let (queue, rx) = mpsc::channel(config.queue_transactions_max.max(1));
        let order = Arc::new(Order::new(&config));
        let runtime = Handle::current();
        let batcher = runtime.spawn(batch_loop(stages.clone(), config, order.clone(), rx));
        Ok(BatchingProxy {
            stages,
            config,
            transaction_bytes_max,
            queue,
            order,
            runtime,
            batcher,
        })
    }
}

impl BatchingProxy {
    /// Whether a stage (usually a log) refused this proxy's epoch as fenced by a newer one: it
    /// will commit nothing more, and [`BatchingProxy::failure`] holds the fencing error.
    pub fn is_fenced(&self) -> bool {
        self.stages.fenced.load(Ordering::SeqCst)
    }

    /// Whether the batcher still runs (it stops only if its task panicked or was aborted).
    ///
    /// A proxy that failed still runs: it answers every commit with its failure, at once. So
    /// "running" does not mean "committing"; ask [`BatchingProxy::failure`] for that.
    pub fn is_running(&self) -> bool {
        !self.batcher.is_finished()
    }

    /// The error that ended this proxy's epoch, if one did: the first batch that failed after
    /// taking its version pair (in resolution, encoding, a push to any log, or the report), or
    /// the sequencer failing to hand out a pair. From then on every commit is answered with it
    /// (see the crate docs, "Failed state"); the director should recover into a new epoch.
    /// A fenced proxy has failed with the fencing error.
    pub fn failure(&self) -> Option<Error> {
        self.stages.failure.get().cloned()
    }

    /// Monitoring's probe: `Err` with [`BatchingProxy::failure`] once the proxy failed;
    /// otherwise `Unavailable` once its batcher stopped (see [`BatchingProxy::is_running`]);
    /// otherwise a `Timeout` error of the stage the oldest batch in flight waits on, once that
    /// batch has been in flight longer than [`ProxyConfig::stall_timeout`] (the chain stopped
    /// advancing while requests wait); otherwise `Ok`. An idle proxy is healthy.
    pub fn health(&self) -> Result<()> {
        if let Some(e) = self.failure() {
            return Err(e);
        }
        if !self.is_running() {
            return Err(error(ErrorKind::Unavailable(
                "a commit proxy stopped".into(),
            )));
        }
        let Some(oldest) = self.oldest() else {
            return Ok(());
        };
        let waited = oldest.started.elapsed();
        if waited <= self.config.stall_timeout {
            return Ok(());
        }
        let what = match oldest.version {
            Version(0) => format!(
                "the {} to hand out a commit version, for the oldest of {} batches in flight",
                oldest.stage, oldest.in_flight
            ),
            v => format!(
                "the {} on the batch of {v}, the oldest of {} in flight",
                oldest.stage, oldest.in_flight
            ),
        };
        Err(Error::new(
            oldest.stage,
            ErrorKind::Timeout {
                what,
                after_ms: u64::try_from(waited.as_millis()).unwrap_or(u64::MAX),
            },
        ))
    }

    /// The stage the oldest batch in flight waits on right now: [`Stage::Sequencer`] while it
    /// asks for its version pair or reports it committed, [`Stage::Resolver`] while it is
    /// resolved, [`Stage::Log`] while it is pushed. `None` when no batch is in flight. A
    /// director whose own wait on the proxy times out uses it to name the stage that hung.
    pub fn waiting_on(&self) -> Option<Stage> {
        self.oldest().map(|o| o.stage)
    }

    /// A lone commit's batch, for the committing task to start itself, or the transaction back
    /// if it must go through the queue. A commit is lone when no batch is in flight or forming
    /// and nothing is queued, no batch window is set, and the last batches held one transaction
    /// each ([`SINGLES_TO_GO_ALONE`]): the batcher would then make it a batch of one at once
    /// anyway, only through two hand-offs between tasks and a spawned one. While batches are in
    /// flight, or just after batches of several, commits still queue, so that they gather into
    /// shared batches. A commit from outside the proxy's runtime (a task of another runtime, a
    /// thread blocking on a runtime of its own) is never lone: the tasks its batch spawns (a
    /// push to each of several logs) would belong to a runtime that may stop being driven, or
    /// be dropped, while they carry a version. See the crate docs, "A lone commit".
    fn lone(&self, pending: Pending) -> std::result::Result<Handoff, Pending> {
        let order = &self.order;
        // Cheapest first: under load the first two fail. An empty queue is one whose every
        // place is free (a sender waiting for room holds none).
        if order.in_flight.available_permits() != order.depth
            || self.queue.capacity() != self.queue.max_capacity()
            || order.singles.load(Ordering::Relaxed) < SINGLES_TO_GO_ALONE
            || !self.config.batch_window.is_zero()
            || self.batcher.is_finished()
            || !Handle::try_current().is_ok_and(|h| h.id() == self.runtime.id())
        {
            return Err(pending);
        }
        let Ok(permit) = order.in_flight.clone().try_acquire_owned() else {
            return Err(pending);
        };
        let Ok(forming) = order.forming.clone().try_lock_owned() else {
            return Err(pending);
        };
        order.lone_commits.fetch_add(1, Ordering::Relaxed);
        let stages = self.stages.clone();
        Ok(Handoff::new(self.runtime.clone(), async move {
            if let Some((flight, pair, batch)) = take_version(&stages, forming, vec![pending]).await
            {
                commit_batch(&flight, pair, batch).await;
            }
            drop(permit);
        }))
    }

    /// How many commits ran as lone commits: their batch of one started on the committing
    /// task instead of going through the batcher (see the crate docs, "A lone commit"). For
    /// monitoring and tests: under steady load few commits find the proxy idle.
    pub fn lone_commits(&self) -> u64 {
        self.order.lone_commits.load(Ordering::Relaxed)
    }

    fn oldest(&self) -> Option<Oldest> {
        let flights = self.stages.flights();
        let track = flights.front()?;
        Some(Oldest {
            started: track.started,
            stage: WAITED_ON[usize::from(track.waiting.load(Ordering::Relaxed))],
            version: Version(track.version.load(Ordering::Relaxed)),
            in_flight: flights.len(),
        })
    }
}

#[async_trait]
impl CommitProxy for BatchingProxy {
    fn epoch(&self) -> Epoch {
        self.stages.epoch
    }

    async fn commit(&self, transaction: Bytes) -> Result<Version> {
        self.admit()?;
        let bytes = transaction.len();
        let view = TransactionView::parse(transaction).map_err(|e| error(ErrorKind::Wire(e)))?;
        self.check_len(bytes)?;
        let conflicts = view.conflicts().map_err(|e| error(ErrorKind::Wire(e)))?;
        let mutations = view.mutations().map_err(|e| error(ErrorKind::Wire(e)))?;
        self.submit(conflicts, mutations, bytes).await
    }

    /// The transaction as it is, measured and checked as its encoding would be
    /// ([`Transaction::encoded_len`]: the same errors), without encoding or parsing it.
    async fn commit_transaction(&self, transaction: Transaction) -> Result<Version> {
        let (conflicts, mutations, bytes) = self.checked(transaction)?;
        self.submit(conflicts, mutations, bytes).await
    }

    /// Each transaction checked as [`CommitProxy::commit_transaction`] checks it, then queued
    /// for the batcher, all before the first answer is awaited. None goes alone (unless it is
    /// the only one): a lone commit's batch can finish on the caller's task before the next
    /// transaction is looked at, which would leave the proxy idle for the next to go alone
    /// too, each in a batch and a sync of its own.
    async fn commit_all(&self, transactions: Vec<Transaction>) -> Vec<Result<Version>> {
        let mut transactions = transactions;
        if transactions.len() == 1
            && let Some(only) = transactions.pop()
        {
            return vec![self.commit_transaction(only).await];
        }
        let mut answers = Vec::with_capacity(transactions.len());
        let mut deadline = None;
        for transaction in transactions {
            let queued = match self.checked(transaction) {
                Ok((conflicts, mutations, bytes)) => {
                    let (reply, answer) = oneshot::channel();
                    let pending = Pending {
                        conflicts,
                        mutations,
                        bytes,
                        reply,
                    };
                    self.queue_up(pending, &mut deadline).await.map(|()| answer)
                }
                Err(e) => Err(e),
            };
            answers.push(queued);
        }
        let mut outcomes = Vec::with_capacity(answers.len());
        for answer in answers {
            outcomes.push(match answer {
                Ok(answer) => self.answered(answer).await,
                Err(e) => Err(e),
            });
        }
        outcomes
    }
}

impl BatchingProxy {
    /// Refuses a commit of a fenced or failed epoch before anything else is done for it.
    fn admit(&self) -> Result<()> {
        if self.stages.fenced.load(Ordering::SeqCst) {
            return Err(error(ErrorKind::Unavailable(format!(
                "the proxy of {} was fenced by a newer epoch",
                self.stages.epoch
            ))));
        }
        // The epoch is over: no batch could get past the hole, so do not queue one.
        match self.stages.failure.get() {
            Some(e) => Err(e.clone()),
            None => Ok(()),
        }
    }

    /// Within the wire limit, but its batch would not be once stamped with the commit
    /// version: refused here, before it takes a version its batch could not be pushed with.
    fn check_len(&self, bytes: usize) -> Result<()> {
        if bytes > self.transaction_bytes_max {
            return Err(error(ErrorKind::Wire(WireError::TransactionTooLarge {
                len: bytes,
                max: self.transaction_bytes_max,
            })));
        }
        Ok(())
    }

    /// A transaction's parts for a batch, and its encoded length, once checked as its encoding
    /// would be.
    fn checked(
        &self,
        transaction: Transaction,
    ) -> Result<(TransactionConflicts, Vec<Mutation>, usize)> {
        self.admit()?;
        let bytes = transaction
            .encoded_len()
            .map_err(|e| error(ErrorKind::Wire(e)))?;
        self.check_len(bytes)?;
        let Transaction {
            read_version,
            read_conflicts,
            write_conflicts,
            mutations,
        } = transaction;
        let conflicts = TransactionConflicts {
            read_version,
            read_conflicts,
            write_conflicts,
        };
        Ok((conflicts, mutations, bytes))
    }

    /// Commits a checked transaction of `bytes` encoded bytes: alone, or through the queue.
    async fn submit(
        &self,
        conflicts: TransactionConflicts,
        mutations: Vec<Mutation>,
        bytes: usize,
    ) -> Result<Version> {
        let (reply, mut answer) = oneshot::channel();
        let pending = Pending {
            conflicts,
            mutations,
            bytes,
            reply,
        };
        match self.lone(pending) {
            Ok(batch) => {
                if batch.await == Ran::Panicked {
                    // The batch may hold a version that will never reach the logs: the chain
                    // is broken, as far as anyone can tell, so the epoch ends now, with the
                    // cause (the batch recorded its own if it had a version).
                    let e = error(ErrorKind::Unavailable(
                        "a lone commit's batch panicked (a bug; the panic message is on \
                         standard error)"
                            .into(),
                    ));
                    self.stages.record(None, &e);
                    let e = self.failure().unwrap_or(e);
                    // A refusal (a conflict, too old) is answered before the push: it stands.
                    return answer.try_recv().unwrap_or(Err(e));
                }
                // Every other path of the batch answers its transaction before it ends.
            }
            Err(pending) => self.queue_up(pending, &mut None).await?,
        }
        self.answered(answer).await
    }

    /// Queues `pending` for the batcher, waiting for room until `deadline`, which the first
    /// wait sets to [`ProxyConfig::queue_wait`] from then: the transactions of one
    /// [`CommitProxy::commit_all`] share one deadline, so that a full queue holds the call up
    /// for one wait, not one per transaction.
    ///
    /// Errors: `Overloaded` when the queue stayed full that long; `Unavailable` once the
    /// batcher stopped.
    async fn queue_up(&self, pending: Pending, deadline: &mut Option<Instant>) -> Result<()> {
        // Room is usually there: queue without arming a timer.
        let pending = match self.queue.try_send(pending) {
            Ok(()) => return Ok(()),
            Err(mpsc::error::TrySendError::Full(p)) => p,
            Err(mpsc::error::TrySendError::Closed(_)) => return Err(stopped()),
        };
        let deadline = *deadline.get_or_insert_with(|| Instant::now() + self.config.queue_wait);
        let sent = self.queue.send(pending);
        match tokio::time::timeout_at(deadline, sent).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(_)) => Err(stopped()),
            Err(_) => Err(error(ErrorKind::Overloaded(format!(
                "the proxy's queue stayed full for {} ms",
                self.config.queue_wait.as_millis()
            )))),
        }
    }

    /// The answer a queued or lone transaction's batch gives it. Unanswered, the batch stopped
    /// unfinished and recorded why, or the proxy stopped.
    async fn answered(&self, answer: oneshot::Receiver<Result<Version>>) -> Result<Version> {
        answer
            .await
            .map_err(|_| self.failure().unwrap_or_else(stopped))?
    }
}

/// The error of a commit the proxy stopped before it was answered.
fn stopped() -> Error {
    error(ErrorKind::Unavailable("proxy stopped".into()))
}
