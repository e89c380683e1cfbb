//! A simulated network between a cluster's roles: decorators of every stage trait that carry
//! each call across a [`Network`] instead of making it directly, so a cluster that runs in one
//! process meets what a cluster of one process per role meets between its processes.
//!
//! What the network does to a call, each drawn from the network's seeded generator in the
//! order calls arrive (a single-threaded runtime makes that order, and so the run, replay from
//! the seed):
//!
//! - **Delay:** the request and the answer each take a time drawn from the network's latency
//!   range (none when it is zero). tokio's timer rounds a sleep up to the next millisecond.
//! - **Loss:** [`Network::lose_requests`] loses the next requests (the stage never sees them)
//!   and [`Network::lose_answers`] the next answers (the stage did the call: a push is durable,
//!   a commit may be committed). Either way the caller gets `Unavailable`, as from a real
//!   connection: it cannot tell the two apart, and must treat the outcome as unknown.
//! - **Partition:** [`Network::partition`] cuts calls to a role off for a while (not the
//!   role's own calls to others). A request waits, as on a silent connection, until the
//!   partition heals (then it goes through) or [`SILENCE_LIMIT`] passes (then it fails
//!   `Unavailable`, as a connection whose pings go unanswered); so does an answer ready while
//!   the role is cut off.
//! - **A process killed:** [`Network::kill`] stops every role of that name that exists now:
//!   each later call to them fails at once (`Unavailable`, a connection refused), and a call
//!   in progress loses its answer (what the stage did stays done: the stages of a cluster in
//!   one process keep their memory). Roles made after the kill (recruited again by the next
//!   epoch, or reached again by a recovery: a process restarted) are alive.
//! - **The stage's side runs to its end:** once delivered, a call runs as a task of its own,
//!   as a server runs a call it received, whatever becomes of the caller: a caller that gives
//!   up (a timeout, a batch abandoned after another call failed) leaves it running, and it may
//!   land after the caller saw an error.
//!
//! Calls of a stage that are not network calls (a log's `id`, a storage server's `shards`,
//! a proxy's `epoch`) pass straight through.
//!
//! ```
//! use std::sync::Arc;
//! use std::time::Duration;
//! use strata_core::{Epoch, ErrorKind, Sequencer, Version};
//! use strata_testkit::StepSequencer;
//! use strata_testkit::network::{NetSequencer, Network};
//!
//! # tokio::runtime::Builder::new_current_thread().enable_time().start_paused(true).build().unwrap().block_on(async {
//! let network = Network::new(7, Duration::ZERO..Duration::from_micros(200));
//! let inner = Arc::new(StepSequencer::new(Epoch(1), Version(0)));
//! let sequencer = NetSequencer::new(inner.clone(), &network, "sequencer");
//! network.lose_answers(1);
//! // The version was handed out, but its answer was lost on the way back.
//! let lost = sequencer.next_commit_version(Epoch(1)).await.unwrap_err();
//! assert!(matches!(lost.kind, ErrorKind::Unavailable(_)));
//! let next = sequencer.next_commit_version(Epoch(1)).await.unwrap();
//! assert_eq!(next.previous, Version(1), "the lost answer's version was handed out");
//! # });
//! ```

use std::collections::{BTreeSet, HashMap, HashSet};
use std::future::Future;
use std::ops::Range;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use strata_core::{
    CommitProxy, Epoch, Error, ErrorKind, Key, KeyRange, LogEntry, LogId, LogServer, LogState,
    RangeRead, ResolveBatch, Resolver, Result, Sequencer, Stage, StorageServer, Value, Verdict,
    Version, VersionPair,
};
use tokio::time::Instant;

use crate::faults::{Fault, FaultPoint, Fired};
use crate::rng::SplitMix64;

/// How long a call to a role that is cut off waits before it fails: the remote client's
/// keep-alive timeout (`strata_net::KEEPALIVE_TIMEOUT`), after which a connection whose peer
/// is silent is dropped.
pub const SILENCE_LIMIT: Duration = Duration::from_secs(5);

/// One role as the network knows it: its name and whether it is still alive.
#[derive(Debug)]
struct Endpoint {
    name: String,
    killed: bool,
    /// Its decorator was dropped: no caller can reach it any more.
    gone: bool,
}

struct State {
    rng: SplitMix64,
    latency: Range<Duration>,
    lose_requests: u64,
    lose_answers: u64,
    /// Role name → the end of its partition.
    partitions: HashMap<String, Instant>,
    /// Every role made so far, by incarnation (its index).
    endpoints: Vec<Endpoint>,
    /// How many calls were lost, and how many delayed by a partition.
    lost: u64,
    held: u64,
    /// Told of each call of a commit batch the network fails (see [`Network::watch`]).
    watcher: Option<Watcher>,
}

/// Told of each call of a commit batch the network fails.
type Watcher = Arc<dyn Fn(&Fired) + Send + Sync>;

/// The call of a commit batch a network call is, as a fault point and its epoch, if it is one.
type Batch = Option<(FaultPoint, Epoch)>;

/// The network between a cluster's roles (see the module docs). Shared by every decorator of
/// one cluster; cheap to clone as an `Arc`.
pub struct Network {
    state: Mutex<State>,
}

impl std::fmt::Debug for Network {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let (lost, held) = self.counts();
        f.debug_struct("Network")
            .field("lost", &lost)
            .field("held", &held)
            .finish_non_exhaustive()
    }
}

/// What happens to a call's request.
enum Passage {
    /// Goes through after this delay.
    After(Duration),
    /// Lost, or refused: the caller gets this error.
    Fails(Error),
    /// The role is cut off until this instant.
    CutOff(Instant),
}

impl Network {
    /// A network whose delays are drawn from `latency` (an empty range, such as
    /// `Duration::ZERO..Duration::ZERO`, adds none) by a generator seeded with `seed`.
    pub fn new(seed: u64, latency: Range<Duration>) -> Arc<Network> {
        Arc::new(Network {
            state: Mutex::new(State {
                rng: SplitMix64(seed),
                latency,
                lose_requests: 0,
                lose_answers: 0,
                partitions: HashMap::new(),
                endpoints: Vec::new(),
                lost: 0,
                held: 0,
                watcher: None,
            }),
        })
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Loses the next `n` requests, whichever roles they are for: the stages never see them.
    pub fn lose_requests(&self, n: u64) {
        self.state().lose_requests += n;
    }

    /// Loses the answers of the next `n` calls, whichever roles they are for: the stages did
    /// the calls.
    pub fn lose_answers(&self, n: u64) {
        self.state().lose_answers += n;
    }

    /// Cuts every role named `role` off for `lasting` from now (a later partition of the same
    /// role extends it, never shortens it).
    pub fn partition(&self, role: &str, lasting: Duration) {
        let until = Instant::now() + lasting;
        let mut state = self.state();
        let end = state.partitions.entry(role.to_owned()).or_insert(until);
        *end = (*end).max(until);
    }

    /// Kills every role named `role` that exists now (see the module docs). Returns how many.
    pub fn kill(&self, role: &str) -> usize {
        let mut state = self.state();
        let mut killed = 0;
        for endpoint in state
            .endpoints
            .iter_mut()
            .filter(|e| e.name == role && !e.gone)
        {
            if !endpoint.killed {
                endpoint.killed = true;
                killed += 1;
            }
        }
        killed
    }

    /// The names of the roles alive now, in order: what a harness picks from to partition or
    /// kill one.
    pub fn roles(&self) -> Vec<String> {
        let state = self.state();
        let alive: BTreeSet<&str> = state
            .endpoints
            .iter()
            .filter(|e| !e.killed && !e.gone)
            .map(|e| e.name.as_str())
            .collect();
        alive.into_iter().map(str::to_owned).collect()
    }

    /// The names of the roles that have at least one incarnation killed.
    pub fn killed(&self) -> HashSet<String> {
        self.state()
            .endpoints
            .iter()
            .filter(|e| e.killed)
            .map(|e| e.name.clone())
            .collect()
    }

    /// How many calls the network lost (requests, answers and calls to roles killed or cut
    /// off for too long) and how many a partition held up.
    pub fn counts(&self) -> (u64, u64) {
        let state = self.state();
        (state.lost, state.held)
    }

    /// A new role named `name`: its incarnation.
    fn join(&self, name: &str) -> usize {
        let mut state = self.state();
        state.endpoints.push(Endpoint {
            name: name.to_owned(),
            killed: false,
            gone: false,
        });
        state.endpoints.len() - 1
    }

    /// The role of `incarnation` is no longer reachable (its decorator was dropped).
    fn leave(&self, incarnation: usize) {
        if let Some(endpoint) = self.state().endpoints.get_mut(incarnation) {
            endpoint.gone = true;
        }
    }

    /// Whether the role of `incarnation` is cut off now, and until when.
    fn cut_off(&self, incarnation: usize) -> Option<Instant> {
        let state = self.state();
        let name = &state.endpoints[incarnation].name;
        state
            .partitions
            .get(name)
            .copied()
            .filter(|&until| until > Instant::now())
    }

    fn delay(state: &mut State) -> Duration {
        let Range { start, end } = state.latency;
        if end <= start {
            return start;
        }
        let span = u64::try_from((end - start).as_nanos()).unwrap_or(u64::MAX);
        start + Duration::from_nanos(state.rng.below(span))
    }

    fn request(&self, incarnation: usize, stage: Stage) -> Passage {
        let mut state = self.state();
        let endpoint = &state.endpoints[incarnation];
        let name = endpoint.name.clone();
        if endpoint.killed {
            state.lost += 1;
            return Passage::Fails(unavailable(stage, format!("{name}: connection refused")));
        }
        if let Some(&until) = state.partitions.get(&name)
            && until > Instant::now()
        {
            state.held += 1;
            return Passage::CutOff(until);
        }
        if state.lose_requests > 0 {
            state.lose_requests -= 1;
            state.lost += 1;
            return Passage::Fails(unavailable(stage, lost(&name)));
        }
        Passage::After(Network::delay(&mut state))
    }

    /// The answer's way back: its delay, or the error that replaces it.
    fn answer(&self, incarnation: usize, stage: Stage) -> std::result::Result<Duration, Error> {
        let mut state = self.state();
        let endpoint = &state.endpoints[incarnation];
        let name = endpoint.name.clone();
        let killed = endpoint.killed;
        if killed || state.lose_answers > 0 {
            if !killed {
                state.lose_answers -= 1;
            }
            state.lost += 1;
            return Err(unavailable(stage, lost(&name)));
        }
        Ok(Network::delay(&mut state))
    }

    /// Carries a call to the role of `incarnation` and its answer back. `call` makes the
    /// stage's side of it, and is only called once the request is delivered; it then runs as
    /// a task of its own, as a server runs a call it received, to its end whatever becomes of
    /// the caller (one that gives up, a timeout, a batch abandoned, leaves it running, and it
    /// may land after the caller saw an error). Its answer crosses back unless it is lost; an
    /// answer ready while the role is cut off waits for the partition to heal, and is lost
    /// when that takes longer than [`SILENCE_LIMIT`].
    async fn cross<T, F>(
        &self,
        incarnation: usize,
        stage: Stage,
        batch: Batch,
        call: impl FnOnce() -> F,
    ) -> Result<T>
    where
        T: Send + 'static,
        F: Future<Output = Result<T>> + Send + 'static,
    {
        let started = Instant::now();
        loop {
            match self.request(incarnation, stage) {
                Passage::After(delay) => {
                    sleep(delay).await;
                    break;
                }
                Passage::Fails(e) => {
                    self.heard(batch);
                    return Err(e);
                }
                Passage::CutOff(until) => {
                    self.hold(started, until, stage).await?;
                }
            }
        }
        // Killed while the request was on its way: it finds no one.
        if self.state().endpoints[incarnation].killed {
            self.state().lost += 1;
            self.heard(batch);
            return Err(unavailable(stage, "connection reset".into()));
        }
        let answer = match tokio::spawn(call()).await {
            Ok(answer) => answer,
            // A stage that panics fails its caller's task as it did in process: a harness
            // watching for panics must see it, not an error a network could give.
            Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
            // Cancelled: only when the runtime shuts down (a simulated crash).
            Err(e) => Err(unavailable(stage, format!("the stage's call ended: {e}"))),
        };
        let answered = Instant::now();
        while let Some(until) = self.cut_off(incarnation) {
            self.hold(answered, until, stage).await?;
        }
        let delay = self
            .answer(incarnation, stage)
            .inspect_err(|_| self.heard(batch))?;
        sleep(delay).await;
        answer
    }

    /// Calls `watcher` with each call of a commit batch (a commit version, a report, a
    /// resolution, a push) that the network fails at once: a request or an answer lost, a
    /// process killed. Its batch fails, and so must its epoch (a harness times that). Not for
    /// a call that waited out a partition: the batch's stall is what ends the epoch then.
    pub fn watch(&self, watcher: impl Fn(&Fired) + Send + Sync + 'static) {
        self.state().watcher = Some(Arc::new(watcher));
    }

    /// Drops the watcher: it may hold what holds the stages, whose decorators hold this
    /// network, a cycle that would keep every file they hold open. A harness that runs cluster
    /// after cluster in one process calls this when one is gone (as `Faults::release`).
    pub fn release(&self) {
        let watcher = self.state().watcher.take();
        drop(watcher);
    }

    fn heard(&self, batch: Batch) {
        let Some((point, epoch)) = batch else { return };
        // Cloned out, so the watcher may call the network without deadlocking.
        let watcher = self.state().watcher.clone();
        if let Some(watcher) = watcher {
            watcher(&Fired {
                point,
                epoch: Some(epoch),
                fault: Fault::Usual,
            });
        }
    }

    /// Waits, from `since`, for a partition that ends at `until`: until it heals, or fails
    /// `Unavailable` once [`SILENCE_LIMIT`] passed, as a connection whose peer is silent.
    async fn hold(&self, since: Instant, until: Instant, stage: Stage) -> Result<()> {
        let limit = since + SILENCE_LIMIT;
        if until >= limit {
            tokio::time::sleep_until(limit).await;
            self.state().lost += 1;
            return Err(unavailable(
                stage,
                format!(
                    "no answer in {} s: connection dropped",
                    SILENCE_LIMIT.as_secs()
                ),
            ));
        }
        tokio::time::sleep_until(until).await;
        Ok(())
    }
}

async fn sleep(delay: Duration) {
    if !delay.is_zero() {
        tokio::time::sleep(delay).await;
    }
}

/// What a caller hears of a lost request and of a lost answer alike: it cannot tell them
/// apart.
fn lost(name: &str) -> String {
    format!("{name}: no answer; the call may or may not have taken effect")
}

fn unavailable(stage: Stage, why: String) -> Error {
    Error::new(stage, ErrorKind::Unavailable(format!("network: {why}")))
}

/// A role's place on the network: the network, and which incarnation of which role.
#[derive(Debug)]
struct Place {
    network: Arc<Network>,
    incarnation: usize,
}

impl Place {
    fn new(network: &Arc<Network>, role: &str) -> Place {
        Place {
            network: network.clone(),
            incarnation: network.join(role),
        }
    }

    async fn cross<T, F>(&self, stage: Stage, batch: Batch, call: impl FnOnce() -> F) -> Result<T>
    where
        T: Send + 'static,
        F: Future<Output = Result<T>> + Send + 'static,
    {
        self.network
            .cross(self.incarnation, stage, batch, call)
            .await
    }
}

impl Drop for Place {
    fn drop(&mut self) {
        self.network.leave(self.incarnation);
    }
}

/// A stage reached across a [`Network`]: `inner`, as one role on the network. One type for
/// every stage trait; [`NetSequencer`], [`NetResolver`], [`NetProxy`], [`NetLog`] and
/// [`NetStorage`] name it for each.
pub struct Net<S: ?Sized> {
    inner: Arc<S>,
    place: Place,
}

impl<S: ?Sized> Net<S> {
    /// `inner`, as the role `role` on `network`.
    pub fn new(inner: Arc<S>, network: &Arc<Network>, role: &str) -> Net<S> {
        Net {
            inner,
            place: Place::new(network, role),
        }
    }
}

/// A [`Sequencer`] reached across a [`Network`].
pub type NetSequencer = Net<dyn Sequencer>;

#[async_trait]
impl Sequencer for Net<dyn Sequencer> {
    fn epoch(&self) -> Epoch {
        self.inner.epoch()
    }

    async fn next_commit_version(&self, epoch: Epoch) -> Result<VersionPair> {
        let inner = self.inner.clone();
        let call = move || async move { inner.next_commit_version(epoch).await };
        let batch = Some((FaultPoint::CommitVersion, epoch));
        self.place.cross(Stage::Sequencer, batch, call).await
    }

    async fn report_committed(&self, epoch: Epoch, version: Version) -> Result<()> {
        let inner = self.inner.clone();
        let call = move || async move { inner.report_committed(epoch, version).await };
        let batch = Some((FaultPoint::ReportCommitted, epoch));
        self.place.cross(Stage::Sequencer, batch, call).await
    }

    async fn read_version(&self) -> Result<Version> {
        let inner = self.inner.clone();
        let call = move || async move { inner.read_version().await };
        self.place.cross(Stage::Sequencer, None, call).await
    }
}

/// A [`Resolver`] reached across a [`Network`].
pub type NetResolver = Net<dyn Resolver>;

#[async_trait]
impl Resolver for Net<dyn Resolver> {
    async fn resolve(&self, batch: ResolveBatch) -> Result<Vec<Verdict>> {
        let inner = self.inner.clone();
        let of = Some((FaultPoint::Resolve, batch.epoch));
        let call = move || async move { inner.resolve(batch).await };
        self.place.cross(Stage::Resolver, of, call).await
    }
}

/// A [`CommitProxy`] reached across a [`Network`].
pub type NetProxy = Net<dyn CommitProxy>;

#[async_trait]
impl CommitProxy for Net<dyn CommitProxy> {
    fn epoch(&self) -> Epoch {
        self.inner.epoch()
    }

    async fn commit(&self, transaction: Bytes) -> Result<Version> {
        let inner = self.inner.clone();
        let call = move || async move { inner.commit(transaction).await };
        self.place.cross(Stage::CommitProxy, None, call).await
    }
}

/// A [`LogServer`] reached across a [`Network`].
pub type NetLog = Net<dyn LogServer>;

#[async_trait]
impl LogServer for Net<dyn LogServer> {
    fn id(&self) -> LogId {
        self.inner.id()
    }

    async fn push(
        &self,
        epoch: Epoch,
        previous_version: Version,
        version: Version,
        payload: Bytes,
    ) -> Result<()> {
        let inner = self.inner.clone();
        let call =
            move || async move { inner.push(epoch, previous_version, version, payload).await };
        let batch = Some((FaultPoint::LogPush, epoch));
        self.place.cross(Stage::Log, batch, call).await
    }

    async fn pull(&self, after: Version, limit: usize) -> Result<Vec<LogEntry>> {
        let inner = self.inner.clone();
        let call = move || async move { inner.pull(after, limit).await };
        self.place.cross(Stage::Log, None, call).await
    }

    async fn lock(&self, epoch: Epoch) -> Result<LogState> {
        let inner = self.inner.clone();
        let call = move || async move { inner.lock(epoch).await };
        self.place.cross(Stage::Log, None, call).await
    }

    async fn pop(&self, version: Version) -> Result<()> {
        let inner = self.inner.clone();
        let call = move || async move { inner.pop(version).await };
        self.place.cross(Stage::Log, None, call).await
    }
}

/// A [`StorageServer`] reached across a [`Network`].
pub type NetStorage = Net<dyn StorageServer>;

#[async_trait]
impl StorageServer for Net<dyn StorageServer> {
    fn shards(&self) -> Vec<KeyRange> {
        self.inner.shards()
    }

    async fn get(&self, key: Key, version: Version) -> Result<Option<Value>> {
        let inner = self.inner.clone();
        let call = move || async move { inner.get(key, version).await };
        self.place.cross(Stage::Storage, None, call).await
    }

    async fn get_range(
        &self,
        range: KeyRange,
        version: Version,
        limit: usize,
        reverse: bool,
    ) -> Result<RangeRead> {
        let inner = self.inner.clone();
        let call = move || async move { inner.get_range(range, version, limit, reverse).await };
        self.place.cross(Stage::Storage, None, call).await
    }

    async fn applied_version(&self) -> Result<Version> {
        let inner = self.inner.clone();
        let call = move || async move { inner.applied_version().await };
        self.place.cross(Stage::Storage, None, call).await
    }

    async fn durable_version(&self) -> Result<Version> {
        let inner = self.inner.clone();
        let call = move || async move { inner.durable_version().await };
        self.place.cross(Stage::Storage, None, call).await
    }

    async fn roll_back(&self, version: Version) -> Result<()> {
        let inner = self.inner.clone();
        let call = move || async move { inner.roll_back(version).await };
        self.place.cross(Stage::Storage, None, call).await
    }
}
