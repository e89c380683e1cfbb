//! Fault injection at stage level: decorators that implement each stage trait, delegate to the
//! real stage, and fail a chosen call when armed. Stage code does not change for them.
//!
//! A fault is armed on a shared [`Faults`] switchboard and fires once, on the next call that
//! reaches its point; then it is spent. The recovery tests arm one before a recovery, watch the
//! director fail naming that stage, and see the next epoch succeed.

use std::collections::HashSet;
use std::io;
use std::path::Path;
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use bytes::Bytes;
use strata_core::{
    CommitProxy, Epoch, Error, ErrorKind, Key, KeyRange, LogEntry, LogId, LogServer, LogState,
    RangeRead, ResolveBatch, Resolver, Result, Sequencer, Stage, StorageServer, Value, Verdict,
    Version, VersionPair,
};
use strata_tlog::fs::{Fs, FsFile, RealFs};

/// Where a fault can be injected.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum FaultPoint {
    /// A resolver refuses a batch.
    Resolve,
    /// The sequencer refuses to hand out a commit version.
    CommitVersion,
    /// The sequencer refuses to hand out a read version (what the director's monitoring
    /// probes).
    ReadVersion,
    /// A commit proxy refuses a transaction.
    ProxyCommit,
    /// A log refuses a push.
    LogPush,
    /// A log's push hangs for 10 s before it goes through: a stage that stops answering.
    LogStall,
    /// A log's next `fdatasync` of a segment really fails (through [`FaultyFs`], under the
    /// real log): the pushes of that group get the I/O error and the log is poisoned.
    LogSync,
    /// A storage server does not apply in time: reads wait out their bound.
    StorageApply,
    /// A storage server stops: asked for its applied version (as monitoring does), it fails.
    StorageStop,
}

/// The switchboard of armed faults, shared by every decorator of a cluster.
#[derive(Default)]
pub struct Faults {
    armed: Mutex<HashSet<FaultPoint>>,
    proxies: Mutex<Vec<Arc<dyn CommitProxy>>>,
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

    /// Fails the next call that reaches `point`, once.
    pub fn arm(&self, point: FaultPoint) {
        if let Ok(mut armed) = self.armed.lock() {
            armed.insert(point);
        }
    }

    /// Whether `point` is still armed (its call has not come yet).
    pub fn is_armed(&self, point: FaultPoint) -> bool {
        self.armed.lock().is_ok_and(|a| a.contains(&point))
    }

    /// Takes the fault at `point` if armed: `true` means "fail this call".
    fn fire(&self, point: FaultPoint) -> bool {
        self.armed.lock().is_ok_and(|mut a| a.remove(&point))
    }

    /// Every commit proxy decorated so far, oldest first: tests use the proxy of a failed
    /// epoch to check that it is fenced.
    pub fn proxies(&self) -> Vec<Arc<dyn CommitProxy>> {
        self.proxies.lock().map(|p| p.clone()).unwrap_or_default()
    }

    fn injected(stage: Stage, point: FaultPoint) -> Error {
        Error::new(
            stage,
            ErrorKind::Unavailable(format!("injected fault at {point:?}")),
        )
    }
}

/// A [`Sequencer`] that fails [`FaultPoint::CommitVersion`].
pub struct FaultySequencer(pub Arc<dyn Sequencer>, pub Arc<Faults>);

#[async_trait]
impl Sequencer for FaultySequencer {
    fn epoch(&self) -> Epoch {
        self.0.epoch()
    }

    async fn next_commit_version(&self, epoch: Epoch) -> Result<VersionPair> {
        if self.1.fire(FaultPoint::CommitVersion) {
            return Err(Faults::injected(
                Stage::Sequencer,
                FaultPoint::CommitVersion,
            ));
        }
        self.0.next_commit_version(epoch).await
    }

    async fn report_committed(&self, epoch: Epoch, version: Version) -> Result<()> {
        self.0.report_committed(epoch, version).await
    }

    async fn read_version(&self) -> Result<Version> {
        if self.1.fire(FaultPoint::ReadVersion) {
            return Err(Faults::injected(Stage::Sequencer, FaultPoint::ReadVersion));
        }
        self.0.read_version().await
    }
}

/// A [`Resolver`] that fails [`FaultPoint::Resolve`].
pub struct FaultyResolver(pub Arc<dyn Resolver>, pub Arc<Faults>);

#[async_trait]
impl Resolver for FaultyResolver {
    async fn resolve(&self, batch: ResolveBatch) -> Result<Vec<Verdict>> {
        if self.1.fire(FaultPoint::Resolve) {
            return Err(Faults::injected(Stage::Resolver, FaultPoint::Resolve));
        }
        self.0.resolve(batch).await
    }
}

/// A [`LogServer`] that fails [`FaultPoint::LogPush`] and stalls [`FaultPoint::LogStall`].
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
        if self.1.fire(FaultPoint::LogPush) {
            return Err(Faults::injected(Stage::Log, FaultPoint::LogPush));
        }
        if self.1.fire(FaultPoint::LogStall) {
            tokio::time::sleep(std::time::Duration::from_secs(10)).await;
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

/// A [`StorageServer`] whose reads fail [`FaultPoint::StorageApply`] as a version not reached.
pub struct FaultyStorage(pub Arc<dyn StorageServer>, pub Arc<Faults>);

impl FaultyStorage {
    async fn not_applied(&self, version: Version) -> Error {
        let newest = self.0.applied_version().await.unwrap_or(Version::ZERO);
        Error::new(
            Stage::Storage,
            ErrorKind::FutureVersion {
                version,
                newest: newest.min(version.saturating_sub(1)),
            },
        )
    }
}

#[async_trait]
impl StorageServer for FaultyStorage {
    fn shards(&self) -> Vec<KeyRange> {
        self.0.shards()
    }

    async fn get(&self, key: Key, version: Version) -> Result<Option<Value>> {
        if self.1.fire(FaultPoint::StorageApply) {
            return Err(self.not_applied(version).await);
        }
        self.0.get(key, version).await
    }

    async fn get_range(
        &self,
        range: KeyRange,
        version: Version,
        limit: usize,
        reverse: bool,
    ) -> Result<RangeRead> {
        if self.1.fire(FaultPoint::StorageApply) {
            return Err(self.not_applied(version).await);
        }
        self.0.get_range(range, version, limit, reverse).await
    }

    async fn applied_version(&self) -> Result<Version> {
        if self.1.fire(FaultPoint::StorageStop) {
            return Err(Faults::injected(Stage::Storage, FaultPoint::StorageStop));
        }
        self.0.applied_version().await
    }

    async fn durable_version(&self) -> Result<Version> {
        self.0.durable_version().await
    }

    async fn roll_back(&self, version: Version) -> Result<()> {
        self.0.roll_back(version).await
    }
}

/// A [`CommitProxy`] that fails [`FaultPoint::ProxyCommit`].
pub struct FaultyProxy(pub Arc<dyn CommitProxy>, pub Arc<Faults>);

impl FaultyProxy {
    /// Wraps `proxy` and records it on the switchboard.
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
        if self.1.fire(FaultPoint::ProxyCommit) {
            return Err(Faults::injected(
                Stage::CommitProxy,
                FaultPoint::ProxyCommit,
            ));
        }
        self.0.commit(transaction).await
    }
}

/// The real file system under a log, whose next `fdatasync` by a log's writer thread fails
/// when [`FaultPoint::LogSync`] is armed: the log's own error path runs (the group's pushes
/// fail, the log is poisoned), not a decorator's imitation of it.
#[derive(Debug)]
pub struct FaultyFs(pub Arc<Faults>);

#[derive(Debug)]
struct FaultyFile {
    file: Arc<dyn FsFile>,
    faults: Arc<Faults>,
}

impl FaultyFs {
    fn wrap(&self, file: Arc<dyn FsFile>) -> Arc<dyn FsFile> {
        Arc::new(FaultyFile {
            file,
            faults: self.0.clone(),
        })
    }
}

/// Whether the calling thread is a log's writer (named `strata-tlog-<id>`), the one thread
/// that syncs acknowledged records. Its spare-segment helper (`strata-tlog-<id>-spare`) and
/// recovery's syncs on open fall back or fail differently, so the fault leaves them alone.
fn on_log_writer() -> bool {
    std::thread::current().name().is_some_and(|n| {
        n.strip_prefix("strata-tlog-")
            .is_some_and(|id| id.bytes().all(|b| b.is_ascii_digit()))
    })
}

impl Fs for FaultyFs {
    fn create_dir_all(&self, dir: &Path) -> io::Result<()> {
        RealFs.create_dir_all(dir)
    }

    fn list(&self, dir: &Path) -> io::Result<Vec<String>> {
        RealFs.list(dir)
    }

    fn open(&self, path: &Path) -> io::Result<Arc<dyn FsFile>> {
        Ok(self.wrap(RealFs.open(path)?))
    }

    fn create(&self, path: &Path) -> io::Result<Arc<dyn FsFile>> {
        Ok(self.wrap(RealFs.create(path)?))
    }

    fn remove(&self, path: &Path) -> io::Result<()> {
        RealFs.remove(path)
    }

    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        RealFs.rename(from, to)
    }

    fn sync_dir(&self, dir: &Path) -> io::Result<()> {
        RealFs.sync_dir(dir)
    }
}

impl FsFile for FaultyFile {
    fn len(&self) -> io::Result<u64> {
        self.file.len()
    }

    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        self.file.read_exact_at(buf, offset)
    }

    fn write_all_at(&self, buf: &[u8], offset: u64) -> io::Result<()> {
        self.file.write_all_at(buf, offset)
    }

    fn sync_data(&self) -> io::Result<()> {
        if on_log_writer() && self.faults.fire(FaultPoint::LogSync) {
            return Err(io::Error::other("injected fdatasync failure"));
        }
        self.file.sync_data()
    }

    fn set_len(&self, len: u64) -> io::Result<()> {
        self.file.set_len(len)
    }
}
