//! Fault injection at stage level: decorators that implement each stage trait, delegate to the
//! stage they wrap, and misbehave on a chosen call. Stage code does not change for them.
//!
//! A fault is armed on a shared [`Faults`] switchboard at a [`FaultPoint`], for the next call
//! that reaches the point or the `n`-th from now, and fires once; then it is spent. Each
//! point counts the calls that reached it ([`Faults::calls`]), so a test can wait for a call
//! or check that none came. A harness that must know when a fault fired (the simulation checks
//! that a failed batch ends its epoch in time) registers a watcher ([`Faults::watch`]).
//!
//! ```
//! use std::sync::Arc;
//! use strata_core::{Epoch, Sequencer, Version};
//! use strata_testkit::StepSequencer;
//! use strata_testkit::faults::{FaultPoint, FaultySequencer, Faults};
//!
//! # tokio::runtime::Builder::new_current_thread().enable_time().build().unwrap().block_on(async {
//! let faults = Faults::new();
//! let sequencer = FaultySequencer(Arc::new(StepSequencer::new(Epoch(1), Version(0))), faults.clone());
//! faults.arm(FaultPoint::CommitVersion);
//! assert!(sequencer.next_commit_version(Epoch(1)).await.is_err());
//! assert!(sequencer.next_commit_version(Epoch(1)).await.is_ok(), "a fault fires once");
//! assert_eq!(faults.calls(FaultPoint::CommitVersion), 2);
//! # });
//! ```

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use strata_core::{
    CommitProxy, Epoch, Error, ErrorKind, Key, KeyRange, LogEntry, LogId, LogServer, LogState,
    RangeRead, ResolveBatch, Resolver, Result, Sequencer, Stage, StorageServer, Value, Verdict,
    Version, VersionPair,
};
use tokio::sync::Notify;

/// Where a fault can be injected.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum FaultPoint {
    /// A resolver's `resolve`.
    Resolve,
    /// The sequencer's `next_commit_version`.
    CommitVersion,
    /// The sequencer's `report_committed`.
    ReportCommitted,
    /// The sequencer's `read_version` (what the director's monitoring probes).
    ReadVersion,
    /// A commit proxy's `commit`.
    ProxyCommit,
    /// A log's `push`.
    LogPush,
    /// A log's `push`, delayed 10 s before it goes through by default: a stage that stops
    /// answering.
    LogStall,
    /// A log's next `fdatasync` of a segment. No decorator here fires it: it belongs to a
    /// file system under the real log (the director's `FaultyFs`), so the log's own error path
    /// runs. [`Fault::Delay`] blocks the syncing thread instead (a disk that stalls).
    LogSync,
    /// A storage server's reads, failing by default as a version not applied in time.
    StorageApply,
    /// A storage server's `applied_version` (as monitoring asks it): the server stopped.
    StorageStop,
}

/// What an armed point does to its call.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub enum Fault {
    /// The point's usual failure: `Unavailable("injected fault at <point>")` of the stage,
    /// a 10 s delay for [`FaultPoint::LogStall`], a `FutureVersion` for
    /// [`FaultPoint::StorageApply`].
    Usual,
    /// Fails with this error.
    FailWith(Error),
    /// Never returns.
    Hang,
    /// Waits this long, then goes through.
    Delay(Duration),
    /// Waits until the gate is notified, then fails with the error.
    FailWhenOpened(Arc<Notify>, Error),
}

#[derive(Debug)]
struct Armed {
    /// Calls still to pass before the one that fails.
    passes: usize,
    fault: Fault,
}

/// A fault as it fires: where, on a call for which epoch, and what it does to the call.
#[derive(Clone, Debug)]
pub struct Fired {
    /// The point it fired at.
    pub point: FaultPoint,
    /// The epoch the call was made for, when the call names one (a push, a resolution, a
    /// commit version or report, a proxy's commit, the sequencer's read version); `None` for a
    /// storage server's calls and a file system's.
    pub epoch: Option<Epoch>,
    /// What the call gets.
    pub fault: Fault,
}

/// Called with each fault as it fires.
type Watcher = Arc<dyn Fn(&Fired) + Send + Sync>;

/// The switchboard of armed faults, shared by every decorator of a cluster.
#[derive(Default)]
pub struct Faults {
    armed: Mutex<HashMap<FaultPoint, Armed>>,
    calls: Mutex<HashMap<FaultPoint, usize>>,
    proxies: Mutex<Vec<Arc<dyn CommitProxy>>>,
    watcher: Mutex<Option<Watcher>>,
}

impl std::fmt::Debug for Faults {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Faults")
            .field("armed", &self.armed)
            .finish_non_exhaustive()
    }
}

impl Faults {
    /// An empty switchboard.
    pub fn new() -> Arc<Faults> {
        Arc::new(Faults::default())
    }

    /// The next call that reaches `point` fails the usual way, once.
    pub fn arm(&self, point: FaultPoint) {
        self.arm_at(point, 1, Fault::Usual);
    }

    /// The `nth` call from now (counting from 1) that reaches `point` gets `fault`; the
    /// calls before it pass. Arming a point again replaces what was armed there.
    pub fn arm_at(&self, point: FaultPoint, nth: usize, fault: Fault) {
        if let Ok(mut armed) = self.armed.lock() {
            let passes = nth.saturating_sub(1);
            armed.insert(point, Armed { passes, fault });
        }
    }

    /// Whether `point` is still armed (its call has not come yet).
    pub fn is_armed(&self, point: FaultPoint) -> bool {
        self.armed.lock().is_ok_and(|a| a.contains_key(&point))
    }

    /// How many calls reached `point` so far.
    pub fn calls(&self, point: FaultPoint) -> usize {
        self.calls
            .lock()
            .map_or(0, |c| c.get(&point).copied().unwrap_or(0))
    }

    /// Calls `watcher` with every fault as it fires, on the task of the call it fires on,
    /// before the fault acts. Replaces the watcher registered before, if any.
    pub fn watch(&self, watcher: impl Fn(&Fired) + Send + Sync + 'static) {
        if let Ok(mut w) = self.watcher.lock() {
            *w = Some(Arc::new(watcher));
        }
    }

    /// Counts a call at `point` and takes its fault if this is the call armed: `Some` means
    /// "misbehave this way". For decorators outside this crate (a file system, say).
    pub fn fire(&self, point: FaultPoint) -> Option<Fault> {
        self.fire_for(point, None)
    }

    /// [`Faults::fire`] for a call made for `epoch`, which the watcher is told.
    pub fn fire_for(&self, point: FaultPoint, epoch: Option<Epoch>) -> Option<Fault> {
        if let Ok(mut calls) = self.calls.lock() {
            *calls.entry(point).or_default() += 1;
        }
        let fault = {
            let mut armed = self.armed.lock().ok()?;
            let entry = armed.get_mut(&point)?;
            if entry.passes > 0 {
                entry.passes -= 1;
                return None;
            }
            armed.remove(&point)?.fault
        };
        // Cloned out, so a watcher may arm faults itself without deadlocking.
        let watcher = self.watcher.lock().ok().and_then(|w| w.clone());
        if let Some(watcher) = watcher {
            watcher(&Fired {
                point,
                epoch,
                fault: fault.clone(),
            });
        }
        Some(fault)
    }

    /// Every commit proxy decorated so far, oldest first: tests use the proxy of a failed
    /// epoch to check that it is fenced.
    pub fn proxies(&self) -> Vec<Arc<dyn CommitProxy>> {
        self.proxies.lock().map(|p| p.clone()).unwrap_or_default()
    }

    /// Lets go of what the switchboard holds of a cluster: the proxies recorded so far, and
    /// the watcher ([`Faults::watch`]). Proxies hold their stages, whose decorators hold this
    /// switchboard, and a watcher may hold a cluster too (the simulation's holds the epoch
    /// being served): while the switchboard keeps them, none of those stages (nor the files
    /// they hold open) is ever dropped. A harness that runs cluster after cluster in one
    /// process (the simulation, where a crash drops a cluster in place) calls this when one is
    /// gone.
    pub fn release(&self) {
        let proxies = self.proxies.lock().map(|mut p| std::mem::take(&mut *p));
        let watcher = self.watcher.lock().map(|mut w| w.take());
        drop((proxies, watcher));
    }

    /// Counts a call at `point`, made for `epoch`, and misbehaves if armed, failing
    /// [`Fault::Usual`] with `usual()`.
    async fn pass(
        &self,
        point: FaultPoint,
        epoch: Option<Epoch>,
        usual: impl FnOnce() -> Error,
    ) -> Result<()> {
        match self.fire_for(point, epoch) {
            None => Ok(()),
            Some(fault) => act(fault, usual()).await,
        }
    }
}

/// The error of [`Fault::Usual`] at most points.
pub fn injected(stage: Stage, point: FaultPoint) -> Error {
    Error::new(
        stage,
        ErrorKind::Unavailable(format!("injected fault at {point:?}")),
    )
}

/// Carries out `fault`, failing [`Fault::Usual`] with `usual`.
async fn act(fault: Fault, usual: Error) -> Result<()> {
    match fault {
        Fault::Usual => Err(usual),
        Fault::FailWith(e) => Err(e),
        Fault::Hang => std::future::pending().await,
        Fault::Delay(d) => {
            tokio::time::sleep(d).await;
            Ok(())
        }
        Fault::FailWhenOpened(gate, e) => {
            gate.notified().await;
            Err(e)
        }
    }
}

/// A [`Sequencer`] with [`FaultPoint::CommitVersion`], [`FaultPoint::ReportCommitted`] and
/// [`FaultPoint::ReadVersion`].
pub struct FaultySequencer(pub Arc<dyn Sequencer>, pub Arc<Faults>);

#[async_trait]
impl Sequencer for FaultySequencer {
    fn epoch(&self) -> Epoch {
        self.0.epoch()
    }

    async fn next_commit_version(&self, epoch: Epoch) -> Result<VersionPair> {
        let point = FaultPoint::CommitVersion;
        self.1
            .pass(point, Some(epoch), || injected(Stage::Sequencer, point))
            .await?;
        self.0.next_commit_version(epoch).await
    }

    async fn report_committed(&self, epoch: Epoch, version: Version) -> Result<()> {
        let point = FaultPoint::ReportCommitted;
        self.1
            .pass(point, Some(epoch), || injected(Stage::Sequencer, point))
            .await?;
        self.0.report_committed(epoch, version).await
    }

    async fn read_version(&self) -> Result<Version> {
        let point = FaultPoint::ReadVersion;
        self.1
            .pass(point, Some(self.0.epoch()), || {
                injected(Stage::Sequencer, point)
            })
            .await?;
        self.0.read_version().await
    }
}

/// A [`Resolver`] with [`FaultPoint::Resolve`].
pub struct FaultyResolver(pub Arc<dyn Resolver>, pub Arc<Faults>);

#[async_trait]
impl Resolver for FaultyResolver {
    async fn resolve(&self, batch: ResolveBatch) -> Result<Vec<Verdict>> {
        let point = FaultPoint::Resolve;
        self.1
            .pass(point, Some(batch.epoch), || {
                injected(Stage::Resolver, point)
            })
            .await?;
        self.0.resolve(batch).await
    }
}

/// A [`LogServer`] with [`FaultPoint::LogPush`] and [`FaultPoint::LogStall`] (checked in that
/// order).
pub struct FaultyLog(pub Arc<dyn LogServer>, pub Arc<Faults>);

#[async_trait]
impl LogServer for FaultyLog {
    fn id(&self) -> LogId {
        self.0.id()
    }

    async fn push(
        &self,
        epoch: Epoch,
        previous_version: Version,
        version: Version,
        payload: Bytes,
    ) -> Result<()> {
        let point = FaultPoint::LogPush;
        self.1
            .pass(point, Some(epoch), || injected(Stage::Log, point))
            .await?;
        if let Some(fault) = self.1.fire_for(FaultPoint::LogStall, Some(epoch)) {
            let fault = match fault {
                Fault::Usual => Fault::Delay(Duration::from_secs(10)),
                other => other,
            };
            act(fault, injected(Stage::Log, FaultPoint::LogStall)).await?;
        }
        self.0.push(epoch, previous_version, version, payload).await
    }

    async fn pull(&self, after: Version, limit: usize) -> Result<Vec<LogEntry>> {
        self.0.pull(after, limit).await
    }

    async fn lock(&self, epoch: Epoch) -> Result<LogState> {
        self.0.lock(epoch).await
    }

    async fn pop(&self, version: Version) -> Result<()> {
        self.0.pop(version).await
    }
}

/// A [`StorageServer`] with [`FaultPoint::StorageApply`] on reads and
/// [`FaultPoint::StorageStop`] on `applied_version`.
pub struct FaultyStorage(pub Arc<dyn StorageServer>, pub Arc<Faults>);

impl FaultyStorage {
    async fn reading(&self, version: Version) -> Result<()> {
        let Some(fault) = self.1.fire(FaultPoint::StorageApply) else {
            return Ok(());
        };
        let newest = self.0.applied_version().await.unwrap_or(Version::ZERO);
        let not_applied = Error::new(
            Stage::Storage,
            ErrorKind::FutureVersion {
                version,
                newest: newest.min(version.saturating_sub(1)),
            },
        );
        act(fault, not_applied).await
    }
}

#[async_trait]
impl StorageServer for FaultyStorage {
    fn shards(&self) -> Vec<KeyRange> {
        self.0.shards()
    }

    async fn get(&self, key: Key, version: Version) -> Result<Option<Value>> {
        self.reading(version).await?;
        self.0.get(key, version).await
    }

    async fn get_range(
        &self,
        range: KeyRange,
        version: Version,
        limit: usize,
        reverse: bool,
    ) -> Result<RangeRead> {
        self.reading(version).await?;
        self.0.get_range(range, version, limit, reverse).await
    }

    async fn applied_version(&self) -> Result<Version> {
        let point = FaultPoint::StorageStop;
        self.1
            .pass(point, None, || injected(Stage::Storage, point))
            .await?;
        self.0.applied_version().await
    }

    async fn durable_version(&self) -> Result<Version> {
        self.0.durable_version().await
    }

    async fn roll_back(&self, version: Version) -> Result<()> {
        self.0.roll_back(version).await
    }
}

/// A [`CommitProxy`] with [`FaultPoint::ProxyCommit`].
pub struct FaultyProxy(pub Arc<dyn CommitProxy>, pub Arc<Faults>);

impl FaultyProxy {
    /// Wraps `proxy` and records it on the switchboard ([`Faults::proxies`]).
    pub fn wrap(proxy: Arc<dyn CommitProxy>, faults: &Arc<Faults>) -> Arc<dyn CommitProxy> {
        if let Ok(mut p) = faults.proxies.lock() {
            p.push(proxy.clone());
        }
        Arc::new(FaultyProxy(proxy, faults.clone()))
    }
}

#[async_trait]
impl CommitProxy for FaultyProxy {
    fn epoch(&self) -> Epoch {
        self.0.epoch()
    }

    async fn commit(&self, transaction: Bytes) -> Result<Version> {
        let point = FaultPoint::ProxyCommit;
        self.1
            .pass(point, Some(self.0.epoch()), || {
                injected(Stage::CommitProxy, point)
            })
            .await?;
        self.0.commit(transaction).await
    }
}
