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
//! it). The queue is bounded: a full proxy makes callers wait, then refuses them as
//! `Overloaded`.
//!
//! A batch reaches the logs as one encoding of its accepted mutations with the commit version
//! section, so it must fit the wire limit ([`strata_core::TRANSACTION_BYTES_MAX`]) like any
//! transaction. The proxy therefore refuses up front, as `Wire(TransactionTooLarge)`, a client
//! transaction that would not fit once that section (17 bytes) is added, and keeps
//! [`ProxyConfig::batch_bytes_max`] within the same bound: a batch that cannot be encoded
//! would be a hole in the chain (below).
//!
//! # Failed state: no hole in the chain
//!
//! Logs and resolvers accept a batch only after its predecessor, so a batch that took a version
//! pair and then could not be resolved, encoded, pushed to every log or reported leaves a hole
//! no later batch of the epoch can get past: each would wait on the missing link and fail out
//! of order, one bounded wait after another. So the first such error, or an error of the
//! sequencer handing out a version pair, ends the epoch at once: the proxy records it
//! ([`BatchingProxy::failure`]) and answers with it every batch behind the hole, every
//! transaction still queued and every later commit, without touching a stage again. The
//! director then recovers into a new epoch. Batches ahead of the hole are not in its way and
//! finish as usual. A conflict or a too-old read version is an answer to one client, not a
//! failure. A proxy fenced by a newer epoch has failed too; it refuses later commits as
//! unavailable.
//!
//! # Stall detection
//!
//! A stage that hangs instead of failing breaks nothing the proxy can see, so the proxy tracks
//! each batch in flight, from asking the sequencer for its version pair to its answer, with
//! the time it started and the stage it waits on now. [`BatchingProxy::waiting_on`] names the
//! stage the oldest batch waits on; [`BatchingProxy::health`] reports a timeout naming it once
//! that batch has been in flight longer than [`ProxyConfig::stall_timeout`], so monitoring
//! treats a chain that stopped advancing while requests wait as a failure. Tracking costs two
//! short uncontended lock operations per batch (in and out) and an atomic store per stage.
//!
//! [`Stage`]: strata_core::Stage

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, PoisonError};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use bytes::Bytes;
use strata_core::shard::{ShardMap, combine_verdicts};
use strata_core::{
    CommitProxy, Epoch, Error, ErrorKind, Key, LogServer, Mutation, ResolveBatch, Resolver, Result,
    Sequencer, Stage, TRANSACTION_BYTES_MAX, TransactionConflicts, TransactionView, Verdict,
    Version, VersionPair, WireError, wire,
};
use tokio::sync::{Notify, Semaphore, mpsc, oneshot};
use tokio::task::{JoinHandle, JoinSet};

/// Tuning and limits of a [`BatchingProxy`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ProxyConfig {
    /// How long a batch waits for more transactions after its first; zero takes only what is
    /// already queued (pipelining and the logs' group commit do the rest).
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
    pub queue_wait: Duration,
    /// Most batches between version assignment and answer at once.
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
            in_flight_batches_max: 64,
            stall_timeout: Duration::from_secs(10),
        }
    }
}

fn error(kind: ErrorKind) -> Error {
    Error::new(Stage::CommitProxy, kind)
}

/// The bytes the commit version section adds to an encoding, measured with the wire format
/// itself so that it follows the format.
fn commit_section_bytes() -> Result<usize> {
    let encode = |commit_version| {
        wire::encode_parts(None, &[], &[], &[], commit_version)
            .map(|b| b.len())
            .map_err(|e| error(ErrorKind::Wire(e)))
    };
    Ok(encode(Some(Version::ZERO))?.saturating_sub(encode(None)?))
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
    /// The first error that broke the chain (see the crate docs, "Failed state").
    failure: OnceLock<Error>,
    /// The lowest version of a batch that failed, `u64::MAX` while none did: batches above it
    /// can never be accepted, batches below it are not in its way.
    hole: AtomicU64,
    /// Woken whenever a failure is recorded, so batches behind the hole stop waiting on their
    /// stages.
    broken: Notify,
    /// The batches in flight, oldest first.
    flights: Mutex<VecDeque<Arc<Track>>>,
}

impl Stages {
    /// Records that the chain broke: at the batch of `version`, or before any version was
    /// taken (`None`). The first error is kept; a later one only lowers the hole.
    fn record(&self, version: Option<Version>, e: &Error) {
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
    fn behind_hole(&self, version: Version) -> Option<Error> {
        if self.hole.load(Ordering::SeqCst) < version.0 {
            self.failure.get().cloned()
        } else {
            None
        }
    }

    fn flights(&self) -> MutexGuard<'_, VecDeque<Arc<Track>>> {
        // The list stays consistent even if a holder panicked: every change is one push or
        // one remove.
        self.flights.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Waits until `check` finds a failure that concerns the waiter, and returns it.
    async fn until_failed(&self, check: impl Fn(&Stages) -> Option<Error>) -> Error {
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

/// The stages a batch in flight can wait on, as kept in [`Track::waiting`].
const WAITED_ON: [Stage; 3] = [Stage::Sequencer, Stage::Resolver, Stage::Log];
const ON_SEQUENCER: u8 = 0;
const ON_RESOLVER: u8 = 1;
const ON_LOG: u8 = 2;

/// One batch between asking for its version pair and its answer (see the crate docs, "Stall
/// detection").
struct Track {
    /// Given by the batcher in increasing order, so the list of tracks stays sorted by it.
    seq: u64,
    started: Instant,
    /// The stage the batch waits on now: an index into [`WAITED_ON`].
    waiting: AtomicU8,
    /// The batch's commit version; zero until the sequencer handed it out.
    version: AtomicU64,
}

/// A batch's place in the in-flight list, for as long as this lives: dropping it (however the
/// batch ends) takes the batch off the list.
struct InFlight {
    stages: Arc<Stages>,
    track: Arc<Track>,
}

impl InFlight {
    /// Lists a batch that is about to ask the sequencer for its version pair.
    fn begin(stages: &Arc<Stages>, seq: u64) -> InFlight {
        let track = Arc::new(Track {
            seq,
            started: Instant::now(),
            waiting: AtomicU8::new(ON_SEQUENCER),
            version: AtomicU64::new(0),
        });
        stages.flights().push_back(track.clone());
        InFlight {
            stages: stages.clone(),
            track,
        }
    }

    fn versioned(&self, version: Version) {
        self.track.version.store(version.0, Ordering::Relaxed);
    }

    fn waits_on(&self, stage: u8) {
        self.track.waiting.store(stage, Ordering::Relaxed);
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        let mut flights = self.stages.flights();
        // Batches usually end in order, so this is almost always the front.
        if let Ok(i) = flights.binary_search_by_key(&self.track.seq, |t| t.seq) {
            flights.remove(i);
        }
    }
}

/// A commit proxy of one epoch. See the crate docs.
pub struct BatchingProxy {
    stages: Arc<Stages>,
    config: ProxyConfig,
    /// The largest client transaction whose batch still fits the wire limit.
    transaction_bytes_max: usize,
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
        let batcher = tokio::spawn(batch_loop(stages.clone(), config, rx));
        Ok(BatchingProxy {
            stages,
            config,
            transaction_bytes_max,
            queue,
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
    /// otherwise a `Timeout` error of the stage the oldest batch in flight waits on, once that
    /// batch has been in flight longer than [`ProxyConfig::stall_timeout`] (the chain stopped
    /// advancing while requests wait); otherwise `Ok`. An idle proxy is healthy.
    pub fn health(&self) -> Result<()> {
        if let Some(e) = self.failure() {
            return Err(e);
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

/// What [`BatchingProxy::health`] reports of the oldest batch in flight.
struct Oldest {
    started: Instant,
    stage: Stage,
    version: Version,
    in_flight: usize,
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
        // The epoch is over: no batch could get past the hole, so do not queue one.
        if let Some(e) = self.stages.failure.get() {
            return Err(e.clone());
        }
        let bytes = transaction.len();
        let view = TransactionView::parse(transaction).map_err(|e| error(ErrorKind::Wire(e)))?;
        // Within the wire limit, but its batch would not be once stamped with the commit
        // version: refused here, before it takes a version its batch could not be pushed with.
        if bytes > self.transaction_bytes_max {
            return Err(error(ErrorKind::Wire(WireError::TransactionTooLarge {
                len: bytes,
                max: self.transaction_bytes_max,
            })));
        }
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
    let mut seq = 0;
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
        // Wait for room in the pipeline, unless the chain breaks meanwhile: the batches in flight
        // may be stuck behind the hole until they are cut.
        let permit = tokio::select! {
            biased;
            permit = in_flight.clone().acquire_owned() => match permit {
                Ok(permit) => permit,
                Err(_) => return,
            },
            e = stages.until_failed(|s| s.failure.get().cloned()) => {
                fail(batch, &e);
                continue;
            }
        };
        // Versions are taken here, one batch at a time, so they follow the queue's order.
        seq += 1;
        let flight = InFlight::begin(&stages, seq);
        let asked = tokio::select! {
            biased;
            pair = stages.sequencer.next_commit_version(stages.epoch) => pair,
            e = stages.until_failed(|s| s.failure.get().cloned()) => {
                fail(batch, &e);
                continue;
            }
        };
        let pair = match asked {
            Ok(pair) => pair,
            Err(e) => {
                // The sequencer's chain can no longer be trusted to have no gap.
                stages.record(None, &e);
                fail(batch, &e);
                continue;
            }
        };
        // A batch that failed while this one was being formed leaves a hole before it.
        if let Some(e) = stages.failure.get() {
            fail(batch, e);
            continue;
        }
        flight.versioned(pair.version);
        tokio::spawn(async move {
            commit_batch(&flight, pair, batch).await;
            drop(flight);
            drop(permit);
        });
    }
}

fn fail(batch: Vec<Pending>, e: &Error) {
    for p in batch {
        let _ = p.reply.send(Err(e.clone()));
    }
}

/// Commits one batch and answers its clients. A batch behind a hole (one below it failed) stops
/// waiting on its stages at once and answers with the recorded failure.
async fn commit_batch(flight: &InFlight, pair: VersionPair, batch: Vec<Pending>) {
    let stages = &*flight.stages;
    let mut conflicts = Vec::with_capacity(batch.len());
    let mut mutations = Vec::with_capacity(batch.len());
    let mut replies = Vec::with_capacity(batch.len());
    for p in batch {
        conflicts.push(p.conflicts);
        mutations.push(p.mutations);
        replies.push(Some(p.reply));
    }
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
}

/// Resolves, pushes and reports one batch. Conflicting and too-old transactions are answered
/// as soon as the verdicts are in, accepted ones once the version is reported; on an error the
/// replies still in `replies` are the caller's to answer.
async fn run_batch(
    flight: &InFlight,
    pair: VersionPair,
    conflicts: Vec<TransactionConflicts>,
    written: Vec<Vec<Mutation>>,
    replies: &mut [Option<Reply>],
) -> Result<()> {
    let stages = &*flight.stages;
    flight.waits_on(ON_RESOLVER);
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
    for ((written, reply), verdict) in written.into_iter().zip(replies.iter_mut()).zip(verdicts) {
        let refused = match verdict {
            Verdict::Committed => {
                mutations.extend(written);
                continue;
            }
            Verdict::Conflict => Error::new(Stage::Resolver, ErrorKind::Conflict),
            Verdict::TooOld => Error::new(
                Stage::Resolver,
                ErrorKind::TooOld {
                    version: Version::ZERO,
                    oldest: pair
                        .version
                        .saturating_sub(strata_core::MVCC_WINDOW_VERSIONS),
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
