//! Strata's commit proxy: takes client transactions, batches them, and commits each batch
//! through the sequencer, the resolvers and every log.
//!
//! For each batch, in order: a version pair from the sequencer; resolution (the batch clipped
//! to each resolver's key range, a transaction committing only if every resolver accepts it);
//! the accepted mutations, encoded as one transaction with the commit version, pushed to
//! **every** log in parallel; once all logs hold it, the version reported committed to the
//! sequencer; then each client's answer: its commit version, or a conflict, or too old.
//!
//! Batching is opportunistic: a batch takes what is queued (up to [`ProxyConfig`]'s count and
//! byte bounds), optionally waiting [`ProxyConfig::batch_window`] for more. Batches are
//! pipelined (up to [`ProxyConfig::in_flight_batches_max`] at once): versions are taken in
//! order, and resolvers and logs apply batches along the version chain, so while one batch
//! waits for its logs the next is already being resolved. The logs' group commit then makes
//! concurrent batches share a sync.
//!
//! A failure of any stage fails the whole batch with that stage's error (its [`Stage`] names
//! it). A proxy whose epoch was fenced by a log refuses every later commit. The queue is
//! bounded: a full proxy makes callers wait, then refuses them as `Overloaded`.
//!
//! [`Stage`]: strata_core::Stage

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use strata_core::shard::{ShardMap, combine_verdicts};
use strata_core::{
    CommitProxy, Epoch, Error, ErrorKind, Key, LogServer, Mutation, ResolveBatch, Resolver, Result,
    Sequencer, Stage, TransactionConflicts, TransactionView, Verdict, Version, VersionPair, wire,
};
use tokio::sync::{Semaphore, mpsc, oneshot};
use tokio::task::{JoinHandle, JoinSet};

/// Tuning and limits of a [`BatchingProxy`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ProxyConfig {
    /// How long a batch waits for more transactions after its first; zero takes only what is
    /// already queued (pipelining and the logs' group commit do the rest).
    pub batch_window: Duration,
    /// Most transactions in one batch.
    pub batch_transactions_max: usize,
    /// Most encoded bytes in one batch (a single larger transaction, up to the wire limit of
    /// 10,000,000 bytes, makes a batch of its own).
    pub batch_bytes_max: usize,
    /// Most transactions waiting for a batch.
    pub queue_transactions_max: usize,
    /// How long a commit waits for room in a full queue before it is refused as overloaded.
    pub queue_wait: Duration,
    /// Most batches between version assignment and answer at once.
    pub in_flight_batches_max: usize,
}

impl Default for ProxyConfig {
    fn default() -> ProxyConfig {
        ProxyConfig {
            batch_window: Duration::ZERO,
            batch_transactions_max: 1_000,
            batch_bytes_max: 8 << 20,
            queue_transactions_max: 10_000,
            queue_wait: Duration::from_secs(5),
            in_flight_batches_max: 64,
        }
    }
}

fn error(kind: ErrorKind) -> Error {
    Error::new(Stage::CommitProxy, kind)
}

/// Where a client's answer goes.
type Reply = oneshot::Sender<Result<Version>>;

/// One client transaction waiting for its batch.
struct Pending {
    conflicts: TransactionConflicts,
    mutations: Vec<Mutation>,
    bytes: usize,
    reply: Reply,
}

/// The stages a proxy commits through.
struct Stages {
    epoch: Epoch,
    sequencer: Arc<dyn Sequencer>,
    /// Resolvers in key order, with the map of their key ranges.
    resolvers: Vec<Arc<dyn Resolver>>,
    shards: ShardMap,
    logs: Vec<Arc<dyn LogServer>>,
    fenced: AtomicBool,
}

/// A commit proxy of one epoch. See the crate docs.
pub struct BatchingProxy {
    stages: Arc<Stages>,
    config: ProxyConfig,
    queue: mpsc::Sender<Pending>,
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
        });
        let (queue, rx) = mpsc::channel(config.queue_transactions_max.max(1));
        let batcher = tokio::spawn(batch_loop(stages.clone(), config, rx));
        Ok(BatchingProxy {
            stages,
            config,
            queue,
            batcher,
        })
    }
}

impl BatchingProxy {
    /// Whether a log fenced this proxy's epoch: it will commit nothing more.
    pub fn is_fenced(&self) -> bool {
        self.stages.fenced.load(Ordering::SeqCst)
    }

    /// Whether the batcher still runs (it stops only if its task panicked or was aborted).
    pub fn is_running(&self) -> bool {
        !self.batcher.is_finished()
    }
}

#[async_trait]
impl CommitProxy for BatchingProxy {
    fn epoch(&self) -> Epoch {
        self.stages.epoch
    }

    async fn commit(&self, transaction: Bytes) -> Result<Version> {
        if self.stages.fenced.load(Ordering::SeqCst) {
            return Err(error(ErrorKind::Unavailable(format!(
                "the proxy of {} was fenced by a newer epoch",
                self.stages.epoch
            ))));
        }
        let bytes = transaction.len();
        let view = TransactionView::parse(transaction).map_err(|e| error(ErrorKind::Wire(e)))?;
        let conflicts = view.conflicts().map_err(|e| error(ErrorKind::Wire(e)))?;
        let mutations = view.mutations().map_err(|e| error(ErrorKind::Wire(e)))?;
        let (reply, answer) = oneshot::channel();
        let pending = Pending {
            conflicts,
            mutations,
            bytes,
            reply,
        };
        // Room is usually there: queue without arming a timer.
        let pending = match self.queue.try_send(pending) {
            Ok(()) => None,
            Err(mpsc::error::TrySendError::Full(p)) => Some(p),
            Err(mpsc::error::TrySendError::Closed(_)) => {
                return Err(error(ErrorKind::Unavailable("proxy stopped".into())));
            }
        };
        if let Some(pending) = pending {
            match tokio::time::timeout(self.config.queue_wait, self.queue.send(pending)).await {
                Ok(Ok(())) => {}
                Ok(Err(_)) => return Err(error(ErrorKind::Unavailable("proxy stopped".into()))),
                Err(_) => {
                    return Err(error(ErrorKind::Overloaded(format!(
                        "the proxy's queue stayed full for {} ms",
                        self.config.queue_wait.as_millis()
                    ))));
                }
            }
        }
        answer
            .await
            .map_err(|_| error(ErrorKind::Unavailable("proxy stopped".into())))?
    }
}

async fn batch_loop(stages: Arc<Stages>, config: ProxyConfig, mut rx: mpsc::Receiver<Pending>) {
    let in_flight = Arc::new(Semaphore::new(config.in_flight_batches_max.max(1)));
    // A transaction that would take a batch past its byte bound opens the next batch instead.
    let mut carry: Option<Pending> = None;
    loop {
        let first = match carry.take() {
            Some(p) => p,
            None => match rx.recv().await {
                Some(p) => p,
                None => return,
            },
        };
        let mut bytes = first.bytes;
        let mut batch = vec![first];
        let deadline = tokio::time::Instant::now() + config.batch_window;
        while batch.len() < config.batch_transactions_max {
            let next = match rx.try_recv() {
                Ok(p) => Some(p),
                Err(_) if !config.batch_window.is_zero() => {
                    tokio::time::timeout_at(deadline, rx.recv())
                        .await
                        .ok()
                        .flatten()
                }
                Err(_) => None,
            };
            let Some(p) = next else { break };
            if bytes + p.bytes > config.batch_bytes_max {
                carry = Some(p);
                break;
            }
            bytes += p.bytes;
            batch.push(p);
        }
        let Ok(permit) = in_flight.clone().acquire_owned().await else {
            return;
        };
        // Versions are taken here, one batch at a time, so they follow the queue's order.
        let pair = match stages.sequencer.next_commit_version(stages.epoch).await {
            Ok(pair) => pair,
            Err(e) => {
                fail(batch, &e);
                continue;
            }
        };
        let stages = stages.clone();
        tokio::spawn(async move {
            commit_batch(&stages, pair, batch).await;
            drop(permit);
        });
    }
}

fn fail(batch: Vec<Pending>, e: &Error) {
    for p in batch {
        let _ = p.reply.send(Err(e.clone()));
    }
}

async fn commit_batch(stages: &Stages, pair: VersionPair, batch: Vec<Pending>) {
    // The conflicts go to the resolvers; the rest waits for their verdicts.
    let (conflicts, rest): (Vec<TransactionConflicts>, Vec<(Vec<Mutation>, Reply)>) = batch
        .into_iter()
        .map(|p| (p.conflicts, (p.mutations, p.reply)))
        .unzip();
    let resolve = ResolveBatch {
        epoch: stages.epoch,
        previous_version: pair.previous,
        version: pair.version,
        transactions: conflicts,
    };
    let verdicts = match resolve_all(stages, resolve).await {
        Ok(v) => v,
        Err(e) => {
            tracing::warn!(version = pair.version.0, error = %e, "batch failed in resolution");
            for (_, reply) in rest {
                let _ = reply.send(Err(e.clone()));
            }
            return;
        }
    };

    let mut mutations = Vec::new();
    let mut accepted = Vec::new();
    for ((written, reply), verdict) in rest.into_iter().zip(verdicts) {
        match verdict {
            Verdict::Committed => {
                mutations.extend(written);
                accepted.push(reply);
            }
            Verdict::Conflict => {
                let _ = reply.send(Err(Error::new(Stage::Resolver, ErrorKind::Conflict)));
            }
            Verdict::TooOld => {
                let oldest = pair
                    .version
                    .saturating_sub(strata_core::MVCC_WINDOW_VERSIONS);
                let _ = reply.send(Err(Error::new(
                    Stage::Resolver,
                    ErrorKind::TooOld {
                        version: Version::ZERO,
                        oldest,
                    },
                )));
            }
        }
    }

    // Every batch reaches the logs, even one with nothing accepted: the logs' version chain
    // must not have a gap.
    let pushed = match wire::encode_parts(None, &[], &[], &mutations, Some(pair.version)) {
        Ok(payload) => push_all(stages, pair, payload).await,
        Err(e) => Err(error(ErrorKind::Wire(e))),
    };
    let committed = match pushed {
        Ok(()) => {
            stages
                .sequencer
                .report_committed(stages.epoch, pair.version)
                .await
        }
        Err(e) => Err(e),
    };
    match committed {
        Ok(()) => {
            for reply in accepted {
                let _ = reply.send(Ok(pair.version));
            }
        }
        Err(e) => {
            if e.is_fenced() {
                stages.fenced.store(true, Ordering::SeqCst);
            }
            tracing::warn!(version = pair.version.0, error = %e, "batch failed");
            for reply in accepted {
                let _ = reply.send(Err(e.clone()));
            }
        }
    }
}

async fn resolve_all(stages: &Stages, batch: ResolveBatch) -> Result<Vec<Verdict>> {
    if stages.resolvers.len() == 1 {
        return stages.resolvers[0].resolve(batch).await;
    }
    let parts = stages.shards.split(&batch);
    let mut set = JoinSet::new();
    for (i, (part, resolver)) in parts.into_iter().zip(&stages.resolvers).enumerate() {
        let resolver = resolver.clone();
        set.spawn(async move { (i, resolver.resolve(part).await) });
    }
    let mut per_shard = vec![Vec::new(); stages.resolvers.len()];
    while let Some(joined) = set.join_next().await {
        let (i, verdicts) =
            joined.map_err(|e| error(ErrorKind::Unavailable(format!("resolver task: {e}"))))?;
        per_shard[i] = verdicts?;
    }
    combine_verdicts(&per_shard).ok_or_else(|| {
        Error::new(
            Stage::Resolver,
            ErrorKind::InvalidRequest("resolvers answered different batch sizes".into()),
        )
    })
}

async fn push_all(stages: &Stages, pair: VersionPair, payload: Bytes) -> Result<()> {
    // One log (the embedded default): push from this task; a spawned task would cost a
    // schedule and a wake-up per batch and run nothing in parallel.
    if let [log] = stages.logs.as_slice() {
        return log
            .push(stages.epoch, pair.previous, pair.version, payload)
            .await;
    }
    let mut set = JoinSet::new();
    for log in &stages.logs {
        let (log, payload, epoch) = (log.clone(), payload.clone(), stages.epoch);
        set.spawn(async move { log.push(epoch, pair.previous, pair.version, payload).await });
    }
    let mut result = Ok(());
    while let Some(joined) = set.join_next().await {
        let pushed = joined
            .map_err(|e| error(ErrorKind::Unavailable(format!("log push task: {e}"))))
            .and_then(|r| r);
        if result.is_ok() {
            result = pushed;
        }
    }
    result
}
