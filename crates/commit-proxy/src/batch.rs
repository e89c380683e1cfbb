//! The batcher: forms batches from the queue, takes their version pairs in order, and commits
//! each through the resolvers, every log and the sequencer's report.

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};

use bytes::Bytes;
use strata_core::shard::combine_verdicts;
use strata_core::{
    Error, ErrorKind, Mutation, ResolveBatch, Result, Stage, TransactionConflicts, Verdict,
    Version, VersionPair, wire,
};
use tokio::sync::{Mutex, OwnedMutexGuard, Semaphore, mpsc};
use tokio::task::JoinSet;

use crate::config::ProxyConfig;
use crate::error;
use crate::flight::{InFlight, ON_LOG, ON_RESOLVER, ON_SEQUENCER};
use crate::stages::{Pending, Reply, Stages};

/// What the batcher shares with the proxy's lone commits (see the crate docs, "A lone
/// commit").
pub(crate) struct Order {
    /// Room in the pipeline: a permit per batch in flight.
    pub(crate) in_flight: Arc<Semaphore>,
    /// The pipeline's depth: the permits of `in_flight` when no batch is in flight.
    pub(crate) depth: usize,
    /// Held from the moment a batch starts forming until it has its version pair, by the
    /// batcher or by a lone commit, so that batches take their versions one at a time and in
    /// the order they were listed in flight. It holds the number of the last batch listed.
    pub(crate) forming: Arc<Mutex<u64>>,
    /// Commits that ran as lone commits, for [`crate::BatchingProxy::lone_commits`].
    pub(crate) lone_commits: AtomicU64,
    /// Batches of one transaction in a row, as the batcher formed them, up to
    /// [`SINGLES_TO_GO_ALONE`]: a commit may go alone only once the proxy's load has been
    /// one transaction at a time for that long.
    pub(crate) singles: AtomicU32,
}

/// Batches of one in a row before a commit that finds the proxy idle may go alone. Under load
/// the pipeline still drains now and then (every batch answered at once, every client about
/// to commit again), and the first commit back would find it idle: alone, it would take a
/// batch, a version and often a sync of its own, ahead of the crowd the batcher is about to
/// take in one. With two, 64 clients keep the batcher's batches, and a lone client still goes
/// alone from its third commit on (from its first on a new proxy).
pub(crate) const SINGLES_TO_GO_ALONE: u32 = 2;

impl Order {
    pub(crate) fn new(config: &ProxyConfig) -> Order {
        let depth = config.in_flight_batches_max.max(1);
        Order {
            in_flight: Arc::new(Semaphore::new(depth)),
            depth,
            forming: Arc::new(Mutex::new(0)),
            lone_commits: AtomicU64::new(0),
            singles: AtomicU32::new(SINGLES_TO_GO_ALONE),
        }
    }
}

pub(crate) async fn batch_loop(
    stages: Arc<Stages>,
    config: ProxyConfig,
    order: Arc<Order>,
    mut rx: mpsc::Receiver<Pending>,
) {
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
        // Once failed, drain the queue with the failure, one transaction at a time, without
        // waiting for a batch window.
        if let Some(e) = stages.failure.get() {
            fail(vec![first], e);
            continue;
        }
        // From here until the batch has its versions, a lone commit queues behind it.
        let forming = order.forming.clone().lock_owned().await;
        // Room in the pipeline is taken before the batch is formed, so that what queues while
        // the batches in flight fill it goes into one batch: under load, batches grow with
        // the queue instead of staying one transaction each, and the per-batch work (a
        // version pair, a resolution, a push to every log, a report) is shared. An idle
        // pipeline has room at once, so a lone commit waits for nothing. The wait ends early
        // if the chain breaks meanwhile: the batches in flight may be stuck behind the hole
        // until they are cut.
        let permit = tokio::select! {
            biased;
            permit = order.in_flight.clone().acquire_owned() => match permit {
                Ok(permit) => permit,
                Err(_) => return,
            },
            e = stages.until_failed(|s| s.failure.get().cloned()) => {
                fail(vec![first], &e);
                continue;
            }
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
        if batch.len() == 1 {
            let singles = order.singles.load(Ordering::Relaxed);
            order
                .singles
                .store((singles + 1).min(SINGLES_TO_GO_ALONE), Ordering::Relaxed);
        } else {
            order.singles.store(0, Ordering::Relaxed);
        }
        let Some((flight, pair, batch)) = take_version(&stages, forming, batch).await else {
            continue;
        };
        tokio::spawn(async move {
            commit_batch(&flight, pair, batch).await;
            drop(flight);
            drop(permit);
        });
    }
}

/// Lists a formed batch in flight and takes its version pair, then lets the next batch form
/// (`forming` is released). On a failure, recorded now or before, the batch is answered with
/// it and `None` returned.
pub(crate) async fn take_version(
    stages: &Arc<Stages>,
    mut forming: OwnedMutexGuard<u64>,
    batch: Vec<Pending>,
) -> Option<(InFlight, VersionPair, Vec<Pending>)> {
    if let Some(e) = stages.failure.get() {
        fail(batch, e);
        return None;
    }
    *forming += 1;
    let flight = InFlight::begin(stages, *forming);
    let asked = tokio::select! {
        biased;
        pair = stages.sequencer.next_commit_version(stages.epoch) => pair,
        e = stages.until_failed(|s| s.failure.get().cloned()) => {
            fail(batch, &e);
            return None;
        }
    };
    let pair = match asked {
        Ok(pair) => pair,
        Err(e) => {
            // The sequencer's chain can no longer be trusted to have no gap.
            stages.record(None, &e);
            fail(batch, &e);
            return None;
        }
    };
    // A batch that failed while this one was being formed leaves a hole before it.
    if let Some(e) = stages.failure.get() {
        fail(batch, e);
        return None;
    }
    flight.versioned(pair.version);
    Some((flight, pair, batch))
}

pub(crate) fn fail(batch: Vec<Pending>, e: &Error) {
    for p in batch {
        let _ = p.reply.send(Err(e.clone()));
    }
}

/// Commits one batch and answers its clients. A batch behind a hole (one below it failed) stops
/// waiting on its stages at once and answers with the recorded failure.
pub(crate) async fn commit_batch(flight: &InFlight, pair: VersionPair, batch: Vec<Pending>) {
    let stages = &*flight.stages;
    let mut conflicts = Vec::with_capacity(batch.len());
    let mut mutations = Vec::with_capacity(batch.len());
    let mut replies = Vec::with_capacity(batch.len());
    for p in batch {
        conflicts.push(p.conflicts);
        mutations.push(p.mutations);
        replies.push(Some(p.reply));
    }
    // Declared after `replies` so that it drops first: a dropped reply wakes its caller, maybe
    // on another thread, and the caller reads the recorded failure as the reason.
    let mut unfinished = Unfinished {
        stages,
        version: pair.version,
        finished: false,
    };
    let ended = tokio::select! {
        biased;
        done = run_batch(flight, pair, conflicts, mutations, &mut replies) => match done {
            Ok(()) => None,
            Err(e) => {
                tracing::warn!(version = pair.version.0, error = %e, "batch failed");
                stages.record(Some(pair.version), &e);
                // Failing only because an earlier batch did (say, refused as out of order):
                // the earlier batch's error is the cause worth telling.
                Some(stages.behind_hole(pair.version).unwrap_or(e))
            }
        },
        e = stages.until_failed(|s| s.behind_hole(pair.version)) => Some(e),
    };
    if let Some(e) = ended {
        for reply in replies.into_iter().flatten() {
            let _ = reply.send(Err(e.clone()));
        }
    }
    unfinished.finished = true;
}

/// Ends the epoch if the batch of `version` stops before it finished: a stage panicked (a bug)
/// while it ran, or its runtime shut down under it. Either way its version may never reach
/// the logs, and the batches behind it are cut at once, with this cause, instead of each
/// waiting out its stages' wait for a predecessor.
struct Unfinished<'a> {
    stages: &'a Stages,
    version: Version,
    finished: bool,
}

impl Drop for Unfinished<'_> {
    fn drop(&mut self) {
        if !self.finished {
            self.stages.record(
                Some(self.version),
                &error(ErrorKind::Unavailable(format!(
                    "the batch of {} stopped unfinished: a stage panicked (a bug; the panic \
                     message is on standard error) or the runtime shut down",
                    self.version
                ))),
            );
        }
    }
}

/// Resolves, pushes and reports one batch. Conflicting and too-old transactions are answered
/// as soon as the verdicts are in, accepted ones once the version is reported; on an error the
/// replies still in `replies` are the caller's to answer.
pub(crate) async fn run_batch(
    flight: &InFlight,
    pair: VersionPair,
    conflicts: Vec<TransactionConflicts>,
    written: Vec<Vec<Mutation>>,
    replies: &mut [Option<Reply>],
) -> Result<()> {
    let stages = &*flight.stages;
    flight.waits_on(ON_RESOLVER);
    // Each transaction's read version, kept for its error: the conflicts go to the resolvers.
    // One without (it cannot read, so it is never too old) is judged as reading at zero, as
    // the resolvers judge it.
    let read_versions: Vec<Version> = conflicts
        .iter()
        .map(|c| c.read_version.unwrap_or(Version::ZERO))
        .collect();
    let resolve = ResolveBatch {
        epoch: stages.epoch,
        previous_version: pair.previous,
        version: pair.version,
        transactions: conflicts,
    };
    let verdicts = resolve_all(stages, resolve).await?;
    if verdicts.len() != replies.len() {
        return Err(Error::new(
            Stage::Resolver,
            ErrorKind::InvalidRequest(format!(
                "{} verdicts for a batch of {} transactions",
                verdicts.len(),
                replies.len()
            )),
        ));
    }

    let mut mutations = Vec::new();
    let answers = written.into_iter().zip(read_versions).zip(verdicts);
    for (((written, read_version), verdict), reply) in answers.zip(replies.iter_mut()) {
        let refused = match verdict {
            Verdict::Committed => {
                mutations.extend(written);
                continue;
            }
            Verdict::Conflict => Error::new(Stage::Resolver, ErrorKind::Conflict),
            Verdict::TooOld { oldest } => Error::new(
                Stage::Resolver,
                ErrorKind::TooOld {
                    version: read_version,
                    oldest,
                },
            ),
        };
        if let Some(reply) = reply.take() {
            let _ = reply.send(Err(refused));
        }
    }

    // Every batch reaches the logs, even one with nothing accepted: the logs' version chain
    // must not have a gap.
    flight.waits_on(ON_LOG);
    let payload = wire::encode_parts(None, &[], &[], &mutations, Some(pair.version))
        .map_err(|e| error(ErrorKind::Wire(e)))?;
    push_all(stages, pair, payload).await?;
    flight.waits_on(ON_SEQUENCER);
    stages
        .sequencer
        .report_committed(stages.epoch, pair.version)
        .await?;
    for reply in replies.iter_mut().filter_map(Option::take) {
        let _ = reply.send(Ok(pair.version));
    }
    Ok(())
}

pub(crate) async fn resolve_all(stages: &Stages, batch: ResolveBatch) -> Result<Vec<Verdict>> {
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

pub(crate) async fn push_all(stages: &Stages, pair: VersionPair, payload: Bytes) -> Result<()> {
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
    while let Some(joined) = set.join_next().await {
        let pushed = joined
            .map_err(|e| error(ErrorKind::Unavailable(format!("log push task: {e}"))))
            .and_then(|r| r);
        if let Err(e) = pushed {
            // The batch can never be on every log now, so it fails at once: waiting for the
            // other pushes would hold the epoch's end behind the slowest log (one waiting on a
            // stalled predecessor waits until the stall detector fires). They run on, detached,
            // to their own end; the next epoch's lock settles what they left.
            set.detach_all();
            return Err(e);
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use std::collections::VecDeque;
    use std::sync::atomic::{AtomicBool, AtomicU64};
    use std::sync::{Mutex, OnceLock};

    use strata_core::shard::ShardMap;
    use strata_core::{Epoch, KeyRange, LogId};
    use strata_testkit::{MemoryLog, ModelResolver, StepSequencer};
    use tokio::sync::{Notify, oneshot};

    use super::*;

    const EPOCH: Epoch = Epoch(1);
    /// Where every stage starts: the resolver knows no write before it.
    const START: Version = Version(1_000);

    fn stages() -> Arc<Stages> {
        Arc::new(Stages {
            epoch: EPOCH,
            sequencer: Arc::new(StepSequencer::new(EPOCH, START)),
            resolvers: vec![Arc::new(ModelResolver::new(EPOCH, START))],
            shards: ShardMap::from_begins(vec![Bytes::new()]),
            logs: vec![Arc::new(MemoryLog::new(LogId(0), START))],
            fenced: AtomicBool::new(false),
            failure: OnceLock::new(),
            hole: AtomicU64::new(u64::MAX),
            broken: Notify::new(),
            flights: Mutex::new(VecDeque::new()),
        })
    }

    /// A transaction reading `k` at `read_version` and writing it.
    fn pending(read_version: Version) -> (Pending, oneshot::Receiver<Result<Version>>) {
        let (reply, answer) = oneshot::channel();
        let pending = Pending {
            conflicts: TransactionConflicts {
                read_version: Some(read_version),
                read_conflicts: vec![KeyRange::single("k")],
                write_conflicts: vec![KeyRange::single("k")],
            },
            mutations: vec![Mutation::Set {
                key: "k".into(),
                value: "v".into(),
            }],
            bytes: 10,
            reply,
        };
        (pending, answer)
    }

    #[tokio::test]
    async fn a_too_old_answer_names_each_transactions_own_read_version_and_the_oldest() {
        let stages = stages();
        // Two too old, each with its own read version, around one that commits.
        let (batch, answers): (Vec<Pending>, Vec<_>) = [Version(5), START, Version(7)]
            .into_iter()
            .map(pending)
            .unzip();
        let pair = stages.sequencer.next_commit_version(EPOCH).await.unwrap();
        commit_batch(&InFlight::begin(&stages, 1), pair, batch).await;

        let mut got = Vec::new();
        for answer in answers {
            got.push(answer.await.unwrap());
        }
        for (i, read_version) in [(0, Version(5)), (2, Version(7))] {
            let e = got[i].as_ref().unwrap_err();
            assert_eq!(e.stage, Stage::Resolver);
            assert!(
                matches!(e.kind, ErrorKind::TooOld { version, oldest }
                    if version == read_version && oldest == START),
                "{e}"
            );
            assert_eq!(
                e.to_string(),
                format!("resolver: too old: {read_version} is below the oldest readable {START}")
            );
        }
        assert_eq!(got[1].as_ref().unwrap(), &pair.version);
    }
}
