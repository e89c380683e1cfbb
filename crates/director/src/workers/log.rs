//! Log workers (`strata serve --role log`): transaction logs in a process of their own, held
//! across epochs in directories of the worker's data directory, and created, opened and
//! removed by the director's orders ([`LogHost`]).
//!
//! A log worker is unlike the other workers: what it holds is what the next epoch recovers
//! from. So it is never recruited in place of anything; it keeps every log the coordinated
//! state names (the running generation's, and after a recovery the previous one's until the
//! state stops naming it), and serves them all.
//!
//! - **Orders are fenced** (see [`super::orders`]): only the director that claimed the
//!   coordinated state's epoch can give orders, so a process that merely reaches the worker
//!   with the cluster id can neither lock the logs at an epoch of its choosing nor take them.
//!   The logs are served only under the newest epoch's token (and not at all before the first
//!   epoch's order), so only the processes the director of the newest epoch handed the token
//!   can push to, lock, pull from or pop them.
//! - **New logs take no commit until the state names them.** A log created for an epoch
//!   refuses pushes above the epoch's recovery version (`Unavailable`) until the director
//!   says, after its write of the coordinated state, that the state names it
//!   ([`LogHost::admit`]): replay (which pushes at most the recovery version) fills it before,
//!   and no commit can be acknowledged on a log a failed write of the state would leave
//!   unrecorded.
//! - **Only the coordinated state removes a log.** A sweep ([`LogHost::sweep`]) removes the
//!   logs the coordinated state (read by the worker itself, from etcd) does not name and that
//!   an older epoch than the state's created: those of a failed attempt or of a generation
//!   the state replaced. Not a log of the state's own epoch (its recovery may be creating
//!   it), and never a log the state names, whoever asks for the sweep.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use async_trait::async_trait;
use bytes::Bytes;
use strata_core::{
    Epoch, Error, ErrorKind, LogEntry, LogId, LogServer, LogState, Result, Stage, Version,
};
use strata_net::{
    Access, LogHost, NewLog, Recruiter, Recruitment, RemoteLog, RemoteWorker, Role, Stages,
};
use strata_tlog::fs::RealFs;
use strata_tlog::{FileLog, FileLogConfig, OpenMode};
use tokio::sync::{MutexGuard, OnceCell, watch};

use super::Recruited;
use super::orders::{Orders, Taken};
use crate::HeldLog;
use crate::check::{dir_epoch, is_log_place};
use crate::coordinator::{LogPlace, StateStore};
use crate::owner::DirectoryLock;

fn refuse(kind: ErrorKind) -> Error {
    Error::new(Stage::Log, kind)
}

/// A log worker: the logs in its data directory that the director ordered opened or created,
/// served (for its server to serve) under the newest epoch's token.
pub struct LogWorker {
    data_dir: PathBuf,
    config: FileLogConfig,
    /// The logs held, by directory (`logs/<epoch>-<n>`), behind the newest epoch's order.
    /// Orders run one at a time: each changes what is held and published.
    orders: Orders<Held>,
    publish: watch::Sender<Arc<Stages>>,
    _owner: Arc<DirectoryLock>,
}

type Held = BTreeMap<String, Hosted>;

struct Hosted {
    log: Arc<FileLog>,
    /// For a log created here: the pushes it holds back until its epoch's state names it.
    gate: Option<Arc<Gate>>,
}

struct Gate {
    epoch: Epoch,
    above: Version,
    open: AtomicBool,
}

impl LogWorker {
    /// A worker holding logs in `data_dir` (taken for this process: see
    /// [`crate::owner`]), tuned by `config`, sweeping by the coordinated state in `store`, and
    /// publishing the logs it serves on `publish`.
    ///
    /// Errors: the directory in use by another process, or not creatable.
    pub fn new(
        data_dir: &Path,
        config: FileLogConfig,
        store: Arc<dyn StateStore>,
        publish: watch::Sender<Arc<Stages>>,
    ) -> Result<LogWorker> {
        config.validate()?;
        let owner = crate::owner::lock_directory(data_dir, true)?;
        Ok(LogWorker {
            data_dir: data_dir.to_owned(),
            config,
            orders: Orders::new(Stage::Log, store, Held::new()),
            publish,
            _owner: owner,
        })
    }

    /// Publishes what is held: nothing before the first epoch's order gave a token.
    fn publish(&self, held: &Taken<Held>) {
        let Some((_, token)) = &held.taken else {
            return;
        };
        let logs = held
            .held
            .values()
            .map(|h| match &h.gate {
                Some(gate) => Arc::new(GatedPushes {
                    log: h.log.clone(),
                    gate: gate.clone(),
                }) as Arc<dyn LogServer>,
                None => h.log.clone() as Arc<dyn LogServer>,
            })
            .collect();
        self.publish.send_replace(Arc::new(Stages {
            logs,
            token: Some(token.clone()),
            ..Stages::default()
        }));
    }

    /// Takes the order of `epoch` with `token` (see [`Orders::take`]): what is held, locked
    /// for the order to run, and served under the token of a newly taken epoch.
    async fn take_order(&self, epoch: Epoch, token: &str) -> Result<MutexGuard<'_, Taken<Held>>> {
        let (held, moved) = self.orders.take(epoch, token).await?;
        if moved {
            self.publish(&held);
        }
        Ok(held)
    }

    fn path_of(&self, dir: &str) -> Result<PathBuf> {
        if !is_log_place(dir) || dir_of_epoch(dir).is_none() {
            return Err(refuse(ErrorKind::InvalidRequest(format!(
                "{dir:?} is not a log's directory (logs/<epoch>-<n>)"
            ))));
        }
        Ok(self.data_dir.join(dir))
    }
}

/// The epoch that created the log in `dir` (`logs/<epoch>-<n>`).
fn dir_of_epoch(dir: &str) -> Option<Epoch> {
    dir.strip_prefix("logs/").and_then(dir_epoch)
}

fn sync_dir(dir: &Path) -> Result<()> {
    super::sync_dir(dir, Stage::Log)
}

#[async_trait]
impl LogHost for LogWorker {
    async fn open(&self, id: LogId, dir: &str, committed: Version) -> Result<Version> {
        let path = self.path_of(dir)?;
        let mut held = self.orders.lock().await;
        if let Some(hosted) = held.held.get(dir) {
            if hosted.log.id() != id {
                return Err(refuse(ErrorKind::InvalidRequest(format!(
                    "{dir} holds log {}, not log {id}",
                    hosted.log.id()
                ))));
            }
            if !hosted.log.is_poisoned() {
                return Ok(hosted.log.last_version());
            }
            tracing::warn!(dir, "reopening a poisoned log from disk");
            // Written again and synced first: the page cache may hold records its failed
            // sync never wrote back (see `FileLog::close_resynced`).
            hosted.log.close_resynced()?;
        }
        let fs = Arc::new(RealFs);
        let mode = OpenMode::Existing { committed };
        let log = Arc::new(FileLog::open_dir(fs, &path, id, mode, self.config)?);
        let last = log.last_version();
        held.held.insert(dir.to_owned(), Hosted { log, gate: None });
        self.publish(&held);
        tracing::info!(dir, log = id.0, last = last.0, "log opened");
        Ok(last)
    }

    async fn take(&self, epoch: Epoch, token: &str) -> Result<()> {
        self.take_order(epoch, token).await.map(drop)
    }

    async fn create(&self, order: NewLog) -> Result<Version> {
        let path = self.path_of(&order.dir)?;
        let mut held = self.take_order(order.epoch, &order.token).await?;
        if dir_of_epoch(&order.dir) != Some(order.epoch) {
            return Err(refuse(ErrorKind::InvalidRequest(format!(
                "epoch {} cannot create {}: a log's directory names the epoch that created it",
                order.epoch.0, order.dir
            ))));
        }
        if path.exists() || held.held.contains_key(&order.dir) {
            // No epoch creates a log twice: this directory was not made by this order.
            return Err(refuse(ErrorKind::Corruption(format!(
                "{} exists, but epoch {} creates it only now",
                path.display(),
                order.epoch.0
            ))));
        }
        let logs_dir = self.data_dir.join("logs");
        std::fs::create_dir_all(&logs_dir).map_err(|e| Error::io(Stage::Log, e))?;
        sync_dir(&self.data_dir)?;
        let fs = Arc::new(RealFs);
        let mode = OpenMode::Create(order.anchor);
        let log = FileLog::open_dir(fs, &path, order.id, mode, self.config)?;
        sync_dir(&logs_dir)?;
        let gate = Arc::new(Gate {
            epoch: order.epoch,
            above: order.admit_above,
            open: AtomicBool::new(false),
        });
        let hosted = Hosted {
            log: Arc::new(log),
            gate: Some(gate),
        };
        held.held.insert(order.dir.clone(), hosted);
        self.publish(&held);
        tracing::info!(
            dir = order.dir,
            log = order.id.0,
            epoch = order.epoch.0,
            "log created"
        );
        Ok(order.anchor)
    }

    async fn admit(&self, epoch: Epoch, token: &str) -> Result<()> {
        let held = self.take_order(epoch, token).await?;
        for hosted in held.held.values() {
            if let Some(gate) = hosted.gate.as_ref().filter(|g| g.epoch == epoch) {
                gate.open.store(true, Ordering::Release);
            }
        }
        Ok(())
    }

    async fn sweep(&self) -> Result<Vec<String>> {
        let Some(state) = self.orders.read_state().await? else {
            return Ok(Vec::new());
        };
        let mut held = self.orders.lock().await;
        let named = |dir: &str| state.logs.iter().any(|p| p.dir == dir);
        let logs_dir = self.data_dir.join("logs");
        let mut unnamed = Vec::new();
        for entry in std::fs::read_dir(&logs_dir).into_iter().flatten().flatten() {
            let Ok(name) = entry.file_name().into_string() else {
                continue;
            };
            let dir = format!("logs/{name}");
            let Some(created) = dir_epoch(&name) else {
                continue;
            };
            if !named(&dir) && created < state.epoch {
                unnamed.push((dir, entry.path()));
            }
        }
        // No longer served before anything is removed, whatever the removals do.
        let mut served = false;
        for (dir, _) in &unnamed {
            if let Some(hosted) = held.held.remove(dir) {
                hosted.log.close();
                served = true;
            }
        }
        if served {
            self.publish(&held);
        }
        let mut removed = Vec::new();
        let mut failed = None;
        for (dir, path) in unnamed {
            match std::fs::remove_dir_all(&path) {
                Ok(()) => {
                    tracing::info!(dir, "removed a log the coordinated state no longer names");
                    removed.push(dir);
                }
                Err(e) => {
                    tracing::warn!(dir, error = %e, "cannot remove a log the coordinated state no longer names");
                    failed.get_or_insert(Error::io(Stage::Log, e));
                }
            }
        }
        if !removed.is_empty() {
            sync_dir(&logs_dir)?;
        }
        failed.map_or(Ok(removed), Err)
    }
}

#[async_trait]
impl Recruiter for LogWorker {
    fn role(&self) -> Role {
        Role::Log
    }

    async fn recruit(&self, _recruitment: Recruitment) -> Result<u32> {
        Err(refuse(ErrorKind::InvalidRequest(
            "a log worker is given orders for its logs, never recruited".into(),
        )))
    }

    fn epoch(&self) -> Option<Epoch> {
        self.orders.epoch()
    }

    fn failure(&self) -> Option<String> {
        let held = self.orders.try_lock()?;
        held.held.iter().find_map(|(dir, h)| {
            h.log
                .poisoned_by()
                .map(|cause| format!("the log in {dir} failed: {cause}"))
        })
    }

    fn log_host(self: Arc<Self>) -> Option<Arc<dyn LogHost>> {
        Some(self)
    }
}

/// A log created on this worker as its server serves it: pushes above the epoch's recovery
/// version wait (refused, `Unavailable`) until the state names the log (see the module docs).
struct GatedPushes {
    log: Arc<FileLog>,
    gate: Arc<Gate>,
}

#[async_trait]
impl LogServer for GatedPushes {
    fn id(&self) -> LogId {
        self.log.id()
    }

    async fn push(
        &self,
        epoch: Epoch,
        previous_version: Version,
        version: Version,
        payload: Bytes,
    ) -> Result<()> {
        if version > self.gate.above && !self.gate.open.load(Ordering::Acquire) {
            return Err(refuse(ErrorKind::Unavailable(format!(
                "log {} takes commits (above {}) only once the coordinated state names it",
                self.log.id(),
                self.gate.above
            ))));
        }
        self.log
            .push(epoch, previous_version, version, payload)
            .await
    }

    async fn pull(&self, after: Version, limit: usize) -> Result<Vec<LogEntry>> {
        self.log.pull(after, limit).await
    }

    async fn lock(&self, epoch: Epoch) -> Result<LogState> {
        self.log.lock(epoch).await
    }

    async fn pop(&self, version: Version) -> Result<()> {
        self.log.pop(version).await
    }
}

/// A log on a log worker, as the director holds it: reached with the epoch's token once the
/// worker took the epoch ([`HeldLog::take`]).
pub(crate) struct WorkerLog {
    place: LogPlace,
    worker: Recruited,
    access: Access,
    probe_timeout: std::time::Duration,
    /// The version known committed that the log must hold when its worker opens it.
    committed: Version,
    remote: OnceCell<RemoteLog>,
    last: AtomicU64,
}

impl std::fmt::Debug for WorkerLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WorkerLog")
            .field("place", &self.place)
            .field("last", &self.last.load(Ordering::Relaxed))
            .finish_non_exhaustive()
    }
}

impl WorkerLog {
    /// `place` on the worker `worker`, holding up to `last` and at least `committed`, reached
    /// with `access` (which carries the epoch's token).
    pub(crate) fn new(
        place: LogPlace,
        worker: Recruited,
        access: Access,
        probe_timeout: std::time::Duration,
        committed: Version,
        last: Version,
    ) -> WorkerLog {
        WorkerLog {
            place,
            worker,
            access,
            probe_timeout,
            committed,
            remote: OnceCell::new(),
            last: AtomicU64::new(last.0),
        }
    }

    /// Where the log lives.
    pub(crate) fn place(&self) -> &LogPlace {
        &self.place
    }

    async fn remote(&self) -> Result<&RemoteLog> {
        self.remote
            .get_or_try_init(|| async {
                RemoteLog::connect(
                    &self.worker.place.address,
                    self.access.clone(),
                    self.place.id,
                )
                .await
            })
            .await
            .map_err(|e| self.not_served_now(e))
    }

    fn not_served_now(&self, e: Error) -> Error {
        not_served_now(e, &self.place.name())
    }
}

#[async_trait]
impl LogServer for WorkerLog {
    fn id(&self) -> LogId {
        self.place.id
    }

    async fn push(
        &self,
        epoch: Epoch,
        previous_version: Version,
        version: Version,
        payload: Bytes,
    ) -> Result<()> {
        self.remote()
            .await?
            .push(epoch, previous_version, version, payload)
            .await
            .map_err(|e| self.not_served_now(e))
    }

    async fn pull(&self, after: Version, limit: usize) -> Result<Vec<LogEntry>> {
        let pulled = self.remote().await?.pull(after, limit).await;
        pulled.map_err(|e| self.not_served_now(e))
    }

    async fn lock(&self, epoch: Epoch) -> Result<LogState> {
        let locked = self.remote().await?.lock(epoch).await;
        let state = locked.map_err(|e| self.not_served_now(e))?;
        self.last.store(state.last_version.0, Ordering::Release);
        Ok(state)
    }

    async fn pop(&self, version: Version) -> Result<()> {
        let popped = self.remote().await?.pop(version).await;
        popped.map_err(|e| self.not_served_now(e))
    }
}

#[async_trait]
impl HeldLog for WorkerLog {
    fn last_version(&self) -> Version {
        Version(self.last.load(Ordering::Acquire))
    }

    async fn probe(&self, epoch: Epoch) -> Result<()> {
        self.worker.heartbeat(epoch, self.probe_timeout).await
    }

    async fn take(&self, epoch: Epoch) -> Result<()> {
        let token = self.access.token().unwrap_or_default();
        self.worker.worker.take_logs(epoch, token).await?;
        // A worker restarted since phase 1 opened the log holds it no more (it holds what it
        // was ordered to open since it started): opened again here, a no-op on a worker that
        // still holds it. Phase 1 read what the log had synced, which no kill undoes: a log
        // that holds less now lost synced records (a disk that lied about its cache, a
        // directory replaced), perhaps acknowledged commits. That is damage, never retried:
        // the next attempt would read the shorter log as it is and recover without them.
        let worker = &self.worker.worker;
        let holds = worker
            .open_log(self.place.id, &self.place.dir, self.committed)
            .await?;
        let read = self.last_version();
        if holds < read {
            return Err(refuse(ErrorKind::Corruption(format!(
                "{} holds up to {holds} since its worker restarted, less than the {read} it \
                 had synced when this recovery read it: synced records were lost",
                self.place.name()
            ))));
        }
        self.last.store(holds.0, Ordering::Release);
        Ok(())
    }

    async fn admit(&self, epoch: Epoch) -> Result<()> {
        let token = self.access.token().unwrap_or_default();
        self.worker.worker.admit_pushes(epoch, token).await
    }

    async fn sweep(&self) {
        match self.worker.worker.sweep_logs().await {
            Ok(removed) if !removed.is_empty() => {
                tracing::info!(worker = %self.worker.place.address, ?removed, "old logs removed");
            }
            Ok(_) => {}
            Err(e) => {
                tracing::warn!(worker = %self.worker.place.address, error = %e, "a log worker could not remove old logs");
            }
        }
    }

    fn close(&self) {}
}

/// A call to `log`, a log on a log worker, refused: a log worker serves only the logs it was
/// ordered to open or create since it started, so after a restart its server refuses calls to
/// a log it held before (`InvalidRequest`, as a server does for a log it does not have). The
/// log is not lost: the next recovery's phase 1 opens it again. So the refusal is
/// `Unavailable`: the call fails as one that found the log unreachable would (a recovery
/// attempt, say), not as a request nobody can ever serve (which stops recovery).
pub(super) fn not_served_now(e: Error, log: &str) -> Error {
    match e.kind {
        ErrorKind::InvalidRequest(why) => refuse(ErrorKind::Unavailable(format!(
            "{log} is not served by its worker now (restarted since it was opened?): {why}"
        ))),
        _ => e,
    }
}

/// Phase 1's open of the log `place` names on its worker (`place.at`): the worker opens it
/// (it must exist and hold `committed`) and says what it holds. The log is reached with
/// `access`, whose token the worker learns when recovery takes the log.
pub(crate) async fn open_on_worker(
    place: &LogPlace,
    access: &Access,
    passed_over: &Arc<super::PassedOver>,
    probe_timeout: std::time::Duration,
    committed: Version,
) -> Result<WorkerLog> {
    let Some(address) = &place.at else {
        return Err(refuse(ErrorKind::InvalidRequest(format!(
            "{} is not on a worker",
            place.dir
        ))));
    };
    let worker = RemoteWorker::connect(address, access.clone()).await?;
    let last = worker.open_log(place.id, &place.dir, committed).await?;
    let worker = Recruited {
        place: super::WorkerPlace {
            role: Role::Log.name().to_owned(),
            address: address.clone(),
            registered: 0,
        },
        index: 0,
        worker,
        passed_over: passed_over.clone(),
    };
    Ok(WorkerLog::new(
        place.clone(),
        worker,
        access.clone(),
        probe_timeout,
        committed,
        last,
    ))
}

/// Phase 5's creation of a new log on a log worker that answered the probe, within
/// [`super::RECRUIT_TIMEOUT`]; a worker that fails it is passed over for a while.
pub(crate) async fn create_on_worker(
    (place, worker): (super::WorkerPlace, RemoteWorker),
    order: NewLog,
    access: &Access,
    passed_over: &Arc<super::PassedOver>,
    probe_timeout: std::time::Duration,
) -> Result<WorkerLog> {
    let log_place = LogPlace {
        id: order.id,
        dir: order.dir.clone(),
        at: Some(place.address.clone()),
    };
    let created = tokio::time::timeout(super::RECRUIT_TIMEOUT, worker.create_log(order))
        .await
        .unwrap_or_else(|_| {
            Err(refuse(ErrorKind::Unavailable(format!(
                "the log worker at {} created no log within {} s",
                place.address,
                super::RECRUIT_TIMEOUT.as_secs()
            ))))
        });
    let anchor = match created {
        Ok(anchor) => anchor,
        Err(e) => {
            passed_over.mark(&place);
            return Err(e);
        }
    };
    let worker = Recruited {
        place,
        index: 0,
        worker,
        passed_over: passed_over.clone(),
    };
    Ok(WorkerLog::new(
        log_place,
        worker,
        access.clone(),
        probe_timeout,
        anchor,
        anchor,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::coordinator::tests::state;
    use crate::coordinator::{CoordinatedState, FileStateStore};
    use crate::workers::orders::tests::claim;
    use std::time::Duration;

    /// A log worker in a directory of its own, reading the coordinated state from `store`.
    fn worker(dir: &Path, store: Arc<FileStateStore>) -> (LogWorker, watch::Receiver<Arc<Stages>>) {
        let (publish, published) = watch::channel(Arc::new(Stages::default()));
        let logs = LogWorker::new(dir, FileLogConfig::default(), store, publish).unwrap();
        (logs, published)
    }

    fn new_log(epoch: u64, token: &str) -> NewLog {
        NewLog {
            epoch: Epoch(epoch),
            token: token.to_owned(),
            id: LogId(0),
            dir: format!("logs/{epoch}-0"),
            anchor: Version(10),
            admit_above: Version(10),
        }
    }

    fn is_invalid(r: Result<()>) -> bool {
        matches!(r, Err(e) if matches!(e.kind, ErrorKind::InvalidRequest(_)))
    }

    #[tokio::test]
    async fn an_order_is_taken_only_for_the_claimed_epoch_with_its_token() {
        let state_dir = tempfile::tempdir().unwrap();
        let store = Arc::new(FileStateStore::new(state_dir.path()));
        let data = tempfile::tempdir().unwrap();
        let (logs, published) = worker(data.path(), store.clone());

        // Before any claim there is no epoch to take.
        assert!(is_invalid(logs.take(Epoch(1), "a1").await));
        claim(&store, 3, "good");
        // Not an epoch the state claimed, neither ahead of it (the wedge: a lock at the
        // highest epoch would fence every later director) nor behind it.
        for epoch in [4, 5, u64::MAX] {
            assert!(is_invalid(logs.take(Epoch(epoch), "good").await));
        }
        assert!(matches!(
            logs.take(Epoch(2), "good").await,
            Err(e) if matches!(e.kind, ErrorKind::Fenced { current: Epoch(3), .. })
        ));
        // The claimed epoch, but not its token.
        assert!(is_invalid(logs.take(Epoch(3), "forged").await));
        assert!(logs.create(new_log(3, "forged")).await.is_err());
        assert!(logs.admit(Epoch(3), "forged").await.is_err());
        assert!(!data.path().join("logs/3-0").exists());
        assert_eq!(logs.epoch(), None);
        assert_eq!(
            published.borrow().token,
            None,
            "nothing served before a true order"
        );

        // The claiming director's orders are taken.
        logs.take(Epoch(3), "good").await.unwrap();
        assert_eq!(logs.epoch(), Some(Epoch(3)));
        assert_eq!(published.borrow().token.as_deref(), Some("good"));
        assert_eq!(logs.create(new_log(3, "good")).await.unwrap(), Version(10));
        logs.admit(Epoch(3), "good").await.unwrap();
        // And still no other token at that epoch, nor a later epoch nobody claimed.
        assert!(is_invalid(logs.take(Epoch(3), "forged").await));
        assert!(is_invalid(logs.take(Epoch(4), "good").await));
        assert!(logs.create(new_log(9, "good")).await.is_err());
        assert!(!data.path().join("logs/9-0").exists());

        // A newer claim moves the worker on: the old token is fenced.
        claim(&store, 4, "next");
        assert!(is_invalid(logs.take(Epoch(4), "good").await));
        logs.take(Epoch(4), "next").await.unwrap();
        assert_eq!(published.borrow().token.as_deref(), Some("next"));
        assert!(matches!(
            logs.admit(Epoch(3), "good").await,
            Err(e) if matches!(e.kind, ErrorKind::Fenced { current: Epoch(4), .. })
        ));
    }

    /// A store whose reads wait while `stall` is held (an etcd that does not answer).
    struct Stalling {
        store: FileStateStore,
        stall: Arc<std::sync::Mutex<()>>,
    }

    impl StateStore for Stalling {
        fn read(&self) -> Result<Option<CoordinatedState>> {
            let _waited = self.stall.lock().unwrap();
            self.store.read()
        }

        fn compare_and_swap(
            &self,
            expected: u64,
            new: CoordinatedState,
        ) -> Result<CoordinatedState> {
            self.store.compare_and_swap(expected, new)
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    // The guard is the stall: held across the awaits on purpose, on the test's own thread
    // while the store's read waits for it on a blocking one.
    #[allow(clippy::await_holding_lock)]
    async fn an_order_nobody_claimed_does_not_hold_up_the_directors_while_the_store_stalls() {
        let state_dir = tempfile::tempdir().unwrap();
        let stall = Arc::new(std::sync::Mutex::new(()));
        let store = Arc::new(Stalling {
            store: FileStateStore::new(state_dir.path()),
            stall: stall.clone(),
        });
        let data = tempfile::tempdir().unwrap();
        let (publish, _published) = watch::channel(Arc::new(Stages::default()));
        let logs = Arc::new(
            LogWorker::new(
                data.path(),
                FileLogConfig::default(),
                store.clone(),
                publish,
            )
            .unwrap(),
        );
        claim(&store.store, 3, "good");
        logs.take(Epoch(3), "good").await.unwrap();

        let stalled = stall.lock().unwrap();
        let forged = tokio::spawn({
            let logs = logs.clone();
            async move { logs.take(Epoch(4), "forged").await }
        });
        // The forged order is waiting for the store; the director's orders of its epoch go
        // through meanwhile.
        tokio::time::sleep(Duration::from_millis(50)).await;
        let own = async {
            logs.create(new_log(3, "good")).await.unwrap();
            logs.admit(Epoch(3), "good").await.unwrap();
        };
        tokio::time::timeout(Duration::from_secs(30), own)
            .await
            .expect("the director's orders waited for a read of the store");
        assert!(!forged.is_finished());
        drop(stalled);
        assert!(is_invalid(forged.await.unwrap()));
        assert_eq!(logs.epoch(), Some(Epoch(3)));
    }

    #[tokio::test]
    async fn a_sweep_that_fails_on_one_log_still_stops_serving_the_others() {
        let state_dir = tempfile::tempdir().unwrap();
        let store = Arc::new(FileStateStore::new(state_dir.path()));
        let data = tempfile::tempdir().unwrap();
        let (logs, published) = worker(data.path(), store.clone());
        claim(&store, 1, "one");
        logs.create(new_log(1, "one")).await.unwrap();
        assert_eq!(published.borrow().logs.len(), 1);
        // Not a directory: its removal fails.
        std::fs::write(data.path().join("logs/1-1"), b"not a log").unwrap();
        claim(&store, 3, "three");

        let e = logs.sweep().await.unwrap_err();
        assert!(matches!(e.kind, ErrorKind::Io(_)), "{e}");
        assert!(
            !data.path().join("logs/1-0").exists(),
            "the other log is removed"
        );
        assert!(
            published.borrow().logs.is_empty(),
            "a removed log is no longer served"
        );
    }

    /// Serves `logs` at `bind` until the returned sender fires: where, and the server's task.
    async fn serve(
        logs: LogWorker,
        published: watch::Receiver<Arc<Stages>>,
        bind: &str,
    ) -> (
        String,
        tokio::sync::oneshot::Sender<()>,
        tokio::task::JoinHandle<Result<()>>,
    ) {
        let listener = tokio::net::TcpListener::bind(bind).await.unwrap();
        let address = listener.local_addr().unwrap().to_string();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let served = tokio::spawn(strata_net::serve_worker(
            Access::new(strata_net::ClusterId::new("take").unwrap(), None),
            Arc::new(logs),
            published,
            listener,
            async {
                let _ = stopped.await;
            },
        ));
        (address, stop, served)
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_log_that_lost_synced_records_since_phase_1_is_damage_not_a_retry() {
        let state_dir = tempfile::tempdir().unwrap();
        let store = Arc::new(FileStateStore::new(state_dir.path()));
        let data = tempfile::tempdir().unwrap();
        let (logs, published) = worker(data.path(), store.clone());
        claim(&store, 1, "one");
        logs.create(new_log(1, "one")).await.unwrap();
        logs.admit(Epoch(1), "one").await.unwrap();
        let log = published.borrow().logs[0].clone();
        for v in 11..=20 {
            if v == 16 {
                // What the disk will hold after it loses what was synced since.
                let copy = std::process::Command::new("cp")
                    .args(["-a", "logs/1-0", "older"])
                    .current_dir(data.path())
                    .status()
                    .unwrap();
                assert!(copy.success());
            }
            let payload = Bytes::from_static(b"x");
            log.push(Epoch(1), Version(v - 1), Version(v), payload)
                .await
                .unwrap();
        }
        drop(log);
        let (address, stop, served) = serve(logs, published, "127.0.0.1:0").await;

        // Phase 1 of epoch 2 opens it on the worker: it holds up to 20.
        claim(&store, 2, "two");
        let place = LogPlace {
            id: LogId(0),
            dir: "logs/1-0".into(),
            at: Some(address.clone()),
        };
        let access = Access::new(strata_net::ClusterId::new("take").unwrap(), None)
            .with_token("two".to_owned());
        let opened = open_on_worker(
            &place,
            &access,
            &Arc::new(crate::workers::PassedOver::default()),
            Duration::from_secs(1),
            Version(10),
        )
        .await
        .unwrap();
        assert_eq!(opened.last_version(), Version(20));

        // The worker restarts on a disk that lost the records synced after 15.
        stop.send(()).unwrap();
        served.await.unwrap().unwrap();
        std::fs::remove_dir_all(data.path().join("logs/1-0")).unwrap();
        std::fs::rename(data.path().join("older"), data.path().join("logs/1-0")).unwrap();
        std::fs::remove_file(data.path().join("logs/1-0/LOCK")).ok();
        let (logs, published) = worker(data.path(), store.clone());
        let (_, stop, served) = serve(logs, published, &address).await;

        let e = opened.take(Epoch(2)).await.unwrap_err();
        assert!(matches!(e.kind, ErrorKind::Corruption(_)), "{e}");
        assert!(e.to_string().contains("logs/1-0"), "{e}");
        stop.send(()).unwrap();
        served.await.unwrap().unwrap();
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_log_its_restarted_worker_no_longer_serves_fails_the_attempt_only() {
        let state_dir = tempfile::tempdir().unwrap();
        let store = Arc::new(FileStateStore::new(state_dir.path()));
        let data = tempfile::tempdir().unwrap();
        let (logs, published) = worker(data.path(), store.clone());
        claim(&store, 1, "one");
        logs.create(new_log(1, "one")).await.unwrap();
        let (address, stop, served) = serve(logs, published, "127.0.0.1:0").await;

        // Epoch 2's recovery opens and takes the old log on the worker.
        claim(&store, 2, "two");
        let place = LogPlace {
            id: LogId(0),
            dir: "logs/1-0".into(),
            at: Some(address.clone()),
        };
        let access = Access::new(strata_net::ClusterId::new("take").unwrap(), None)
            .with_token("two".to_owned());
        let passed_over = Arc::new(crate::workers::PassedOver::default());
        let old = open_on_worker(
            &place,
            &access,
            &passed_over,
            Duration::from_secs(1),
            Version(10),
        )
        .await
        .unwrap();
        old.take(Epoch(2)).await.unwrap();

        // The worker restarts, and the same recovery creates its new log there: the worker
        // now serves that one only, until a later recovery opens the old log again.
        stop.send(()).unwrap();
        served.await.unwrap().unwrap();
        let (logs, published) = worker(data.path(), store.clone());
        let (_, stop, served) = serve(logs, published, &address).await;
        let remote = RemoteWorker::connect(&address, access.clone())
            .await
            .unwrap();
        let mut order = new_log(2, "two");
        order.id = LogId(2_000);
        remote.create_log(order).await.unwrap();

        // Replay's pull from the old log: the log is not lost, only not served now, so the
        // attempt fails (`Unavailable`) and the next one opens it again. `InvalidRequest`
        // would stop the director, as a request nobody can ever serve.
        let e = old.pull(Version(10), 1 << 20).await.unwrap_err();
        assert!(matches!(e.kind, ErrorKind::Unavailable(_)), "{e}");
        assert!(e.to_string().contains("logs/1-0"), "{e}");
        let e = old.lock(Epoch(2)).await.unwrap_err();
        assert!(matches!(e.kind, ErrorKind::Unavailable(_)), "{e}");
        stop.send(()).unwrap();
        served.await.unwrap().unwrap();
    }

    #[tokio::test]
    async fn a_state_without_a_token_digest_takes_no_order() {
        let state_dir = tempfile::tempdir().unwrap();
        let store = Arc::new(FileStateStore::new(state_dir.path()));
        let data = tempfile::tempdir().unwrap();
        let (logs, _published) = worker(data.path(), store.clone());
        let mut old = state(2);
        old.logs.clear();
        store.compare_and_swap(0, old).unwrap();
        assert!(is_invalid(logs.take(Epoch(2), "any").await));
        assert_eq!(logs.epoch(), None);
    }
}
