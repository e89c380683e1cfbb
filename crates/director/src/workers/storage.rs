//! Storage workers (`strata serve --role storage`): a storage server in a process of its own,
//! its file kept across epochs in the worker's data directory, and opened for each epoch by
//! the director's orders ([`StorageHost`]).
//!
//! Like a log worker, a storage worker holds what outlives an epoch (the storage server's
//! durable versions, which the next recovery replays after), so it is never recruited in
//! place of anything: a storage server stays on the worker that holds its file.
//!
//! - **One storage server per worker.** A worker holds the file of one storage server, in
//!   `DATA_DIR/storage/<index>.redb`, named by its index in the layout: an order for another
//!   index is refused (`InvalidRequest`), so a worker started on another server's directory
//!   cannot serve the wrong shards.
//! - **Orders are fenced** (see [`super::orders`]): only the director that claimed the
//!   coordinated state's epoch can open the server, and the server is served only under that
//!   epoch's token (and not at all before its open).
//! - **Each recovery checks it, and each epoch opens it anew.** The recovery's first look
//!   (an inspection) closes the server of the epoch before (waiting for a flush in progress)
//!   and runs redb's integrity check on the whole file. The open then opens the file again
//!   following the new generation's log (reached with the epoch's token, wherever it is
//!   served), rolls it back to the recovery version, serves it, and answers once it has
//!   re-applied the history up to that version, within the bound the order gives. A server
//!   never outlives the epoch it was opened in, as in the director's own process.
//! - **It learns what is committed from the director** ([`StorageHost::advance`]), which
//!   reads it from the sequencer, and makes durable nothing above it. The director pops the
//!   logs after the oldest durable version of all storage servers; the server never pops.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use async_trait::async_trait;
use strata_core::{
    Epoch, Error, ErrorKind, Key, KeyRange, LogServer, RangeRead, Result, Stage, StorageServer,
    Value, Version,
};
use strata_net::{
    Access, OpenStorage, Recruiter, Recruitment, RemoteLog, RemoteStorage, RemoteWorker, Role,
    Stages, StorageHost, StoredStorage,
};
use strata_storage::{RedbStorage, StorageConfig};
use tokio::sync::watch;

use super::orders::{Orders, Taken};
use crate::HeldStorage;
use crate::coordinator::StateStore;
use crate::owner::DirectoryLock;

fn refuse(kind: ErrorKind) -> Error {
    Error::new(Stage::Storage, kind)
}

/// A storage worker: the storage server whose file its data directory holds, opened for the
/// newest epoch that ordered it and served (for its server to serve) under that epoch's token.
pub struct StorageWorker {
    data_dir: PathBuf,
    config: StorageConfig,
    /// The cluster's id and TLS credentials, to reach the log the server follows.
    access: Access,
    /// The server open now, behind the newest epoch's order.
    orders: Orders<Held>,
    publish: watch::Sender<Arc<Stages>>,
    _owner: Arc<DirectoryLock>,
}

#[derive(Default)]
struct Held {
    hosted: Option<Hosted>,
    /// Whether the file was checked whole (redb's integrity check, by phase 1's inspection)
    /// and not opened since: the open that follows skips the check, as the director's opens
    /// of its own files do after phase 1. The check reads the whole file, and an open runs
    /// within the director's bound on catching up, which a large file would never meet.
    checked: bool,
}

struct Hosted {
    index: u32,
    /// The epoch that opened it.
    epoch: Epoch,
    server: Arc<RedbStorage>,
}

impl StorageWorker {
    /// A worker holding a storage server's file in `data_dir` (taken for this process: see
    /// [`crate::owner`]), tuned by `config` (which must not pop its log: the director does),
    /// reaching logs with `access`, checking claims in `store`, and publishing the server it
    /// serves on `publish`.
    ///
    /// Errors: the directory in use by another process, or not creatable; a configuration
    /// that pops the log, or reads only (`InvalidRequest`).
    pub fn new(
        data_dir: &Path,
        config: StorageConfig,
        access: Access,
        store: Arc<dyn StateStore>,
        publish: watch::Sender<Arc<Stages>>,
    ) -> Result<StorageWorker> {
        if config.pop_log || config.read_only {
            return Err(refuse(ErrorKind::InvalidRequest(
                "a storage worker's server neither pops its log (the director does) nor reads \
                 only"
                    .into(),
            )));
        }
        let owner = crate::owner::lock_directory(data_dir, true)?;
        Ok(StorageWorker {
            data_dir: data_dir.to_owned(),
            config,
            access,
            orders: Orders::new(Stage::Storage, store, Held::default()),
            publish,
            _owner: owner,
        })
    }

    /// The file of storage server `index` here; `InvalidRequest` when the directory holds
    /// another server's (one worker holds one server).
    fn path_of(&self, index: u32, held: &Taken<Held>) -> Result<PathBuf> {
        let other = match &held.held.hosted {
            Some(hosted) if hosted.index != index => Some(hosted.index),
            _ => self.files()?.into_iter().find(|i| *i != index),
        };
        if let Some(other) = other {
            return Err(refuse(ErrorKind::InvalidRequest(format!(
                "this worker holds storage server {other}, not {index} (one per worker: \
                 start another worker, on a directory of its own, for each)"
            ))));
        }
        Ok(storage_file(&self.data_dir, index))
    }

    /// The indexes of the storage files in the data directory.
    fn files(&self) -> Result<Vec<u32>> {
        let dir = self.data_dir.join("storage");
        let entries = match std::fs::read_dir(&dir) {
            Ok(entries) => entries,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(Error::io(Stage::Storage, e)),
        };
        let mut found = Vec::new();
        for entry in entries {
            let entry = entry.map_err(|e| Error::io(Stage::Storage, e))?;
            let name = entry.file_name();
            let index = name
                .to_str()
                .and_then(|n| n.strip_suffix(".redb"))
                .and_then(|n| n.parse::<u32>().ok());
            if let Some(index) = index {
                found.push(index);
            }
        }
        Ok(found)
    }

    /// Stops serving the server open now, if there is one, and closes it (waiting for a flush
    /// in progress).
    async fn close_hosted(&self, held: &mut Taken<Held>) {
        if let Some(before) = held.held.hosted.take() {
            self.publish(held);
            before.server.close().await;
        }
    }

    /// Serves the server open now if its epoch is the newest taken: nothing before the first
    /// open, and nothing while a newer epoch has not opened it yet.
    fn publish(&self, held: &Taken<Held>) {
        let served = match (&held.taken, &held.held.hosted) {
            (Some((epoch, token)), Some(hosted)) if hosted.epoch == *epoch => Stages {
                storage: vec![hosted.server.clone() as Arc<dyn StorageServer>],
                token: Some(token.clone()),
                ..Stages::default()
            },
            _ => Stages::default(),
        };
        self.publish.send_replace(Arc::new(served));
    }
}

/// Where storage server `index`'s file is kept under `data_dir`.
fn storage_file(data_dir: &Path, index: u32) -> PathBuf {
    data_dir.join("storage").join(format!("{index}.redb"))
}

#[async_trait]
impl StorageHost for StorageWorker {
    async fn inspect(&self, index: u32) -> Result<StoredStorage> {
        let mut held = self.orders.lock().await;
        let path = self.path_of(index, &held)?;
        // An inspection is a recovery's first look, and the epoch whose server is open here
        // is over: it is closed (waiting for a flush in progress) so the file can be read and
        // checked whole, as the director checks its own files at every recovery. Damage since
        // the last check is found now, never opened and served, nor rewritten by a flush under
        // a fresh checksum. (Whoever sends one ends the epoch: as with the other orders of a
        // worker's port, it is for the cluster's hosts only.)
        self.close_hosted(&mut held).await;
        let stored = tokio::task::spawn_blocking(move || strata_storage::stored_at(&path))
            .await
            .map_err(|e| refuse(ErrorKind::Unavailable(e.to_string())))??;
        held.held.checked = true;
        Ok(StoredStorage {
            durable: stored.durable,
            shards: stored.shards,
        })
    }

    async fn open(&self, order: OpenStorage) -> Result<()> {
        let (mut held, _moved) = self.orders.take(order.epoch, &order.token).await?;
        let path = self.path_of(order.index, &held)?;
        // Closed before its file is opened again.
        self.close_hosted(&mut held).await;
        let storage_dir = self.data_dir.join("storage");
        if !storage_dir.exists() {
            std::fs::create_dir_all(&storage_dir).map_err(|e| Error::io(Stage::Storage, e))?;
            super::sync_dir(&self.data_dir, Stage::Storage)?;
        }
        let access = self.access.clone().with_token(order.token.clone());
        // A log not served where the order says is a log whose worker restarted since the
        // recovery created it (it serves nothing until the next recovery opens it again), or
        // whose worker moved on to a newer epoch: the attempt fails (`Unavailable`), and the
        // next one gets there. Never a request nobody can serve, which would stop recovery.
        let log = RemoteLog::connect(&order.log_at, access, order.log)
            .await
            .map_err(|e| {
                let log = format!("log {} at {}", order.log, order.log_at);
                super::log::not_served_now(e, &log)
            })?;
        let log: Arc<dyn LogServer> = Arc::new(log);
        let config = StorageConfig {
            check_integrity: self.config.check_integrity && !held.held.checked,
            ..self.config
        };
        // Opened, the file is written again: the next open checks it unless an inspection
        // checks it first.
        held.held.checked = false;
        let server = RedbStorage::open(&path, order.shards.clone(), log, config).await?;
        let server = Arc::new(server);
        if let Err(e) = server.roll_back(order.recovery_version).await {
            server.close().await;
            return Err(e);
        }
        held.held.hosted = Some(Hosted {
            index: order.index,
            epoch: order.epoch,
            server: server.clone(),
        });
        self.publish(&held);
        tracing::info!(
            index = order.index,
            epoch = order.epoch.0,
            log = order.log.0,
            log_at = order.log_at,
            "storage server opened"
        );
        // Other orders need not wait for the history to come back: a later open closes this
        // server, which ends the wait. The order's bound ends it too, so the call ends (a
        // worker stops only once its calls have).
        drop(held);
        let caught_up = server.wait_applied(order.recovery_version);
        match tokio::time::timeout(order.catch_up, caught_up).await {
            Ok(applied) => applied,
            Err(_) => Err(refuse(ErrorKind::Timeout {
                what: format!(
                    "storage server {} to re-apply history up to {}",
                    order.index, order.recovery_version
                ),
                after_ms: u64::try_from(order.catch_up.as_millis()).unwrap_or(u64::MAX),
            })),
        }
    }

    async fn advance(&self, epoch: Epoch, token: &str, committed: Version) -> Result<()> {
        let (held, _moved) = self.orders.take(epoch, token).await?;
        match &held.held.hosted {
            Some(hosted) if hosted.epoch == epoch => {
                hosted.server.advance_committed(committed);
                Ok(())
            }
            _ => Err(refuse(ErrorKind::InvalidRequest(format!(
                "no storage server was opened here for epoch {}",
                epoch.0
            )))),
        }
    }
}

#[async_trait]
impl Recruiter for StorageWorker {
    fn role(&self) -> Role {
        Role::Storage
    }

    async fn recruit(&self, _recruitment: Recruitment) -> Result<u32> {
        Err(refuse(ErrorKind::InvalidRequest(
            "a storage worker is given orders for its storage server, never recruited".into(),
        )))
    }

    fn epoch(&self) -> Option<Epoch> {
        self.orders.epoch()
    }

    fn storage_host(self: Arc<Self>) -> Option<Arc<dyn StorageHost>> {
        Some(self)
    }
}

/// A storage server on a storage worker, as the director holds it for one epoch: opened by
/// [`open_on_worker`], read through the worker's port under the epoch's token.
pub(crate) struct WorkerStorage {
    at: String,
    epoch: Epoch,
    token: String,
    worker: RemoteWorker,
    remote: RemoteStorage,
    /// The newest version the director told it is committed.
    committed: AtomicU64,
}

impl std::fmt::Debug for WorkerStorage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WorkerStorage")
            .field("at", &self.at)
            .field("epoch", &self.epoch)
            .finish_non_exhaustive()
    }
}

/// How often [`HeldStorage::wait_applied`] asks a storage worker how far its server applied.
const APPLIED_POLL: std::time::Duration = std::time::Duration::from_millis(10);

/// Phase 6's open of storage server `order.index` on the storage worker at `at`: the worker
/// opens it for the order's epoch, following the order's log, and answers once it re-applied
/// the history up to the recovery version (the caller bounds the wait). Reached with
/// `access` (the cluster's id and TLS credentials).
pub(crate) async fn open_on_worker(
    at: &str,
    access: &Access,
    order: OpenStorage,
) -> Result<WorkerStorage> {
    let worker = RemoteWorker::connect(at, access.clone()).await?;
    let (epoch, token, recovery_version) =
        (order.epoch, order.token.clone(), order.recovery_version);
    worker.open_storage(order).await?;
    let remote = RemoteStorage::connect(at, access.clone().with_token(token.clone()), 0).await?;
    Ok(WorkerStorage {
        at: at.to_owned(),
        epoch,
        token,
        worker,
        remote,
        committed: AtomicU64::new(recovery_version.0),
    })
}

#[async_trait]
impl StorageServer for WorkerStorage {
    fn shards(&self) -> Vec<KeyRange> {
        self.remote.shards()
    }

    async fn get(&self, key: Key, version: Version) -> Result<Option<Value>> {
        self.remote.get(key, version).await
    }

    async fn get_range(
        &self,
        range: KeyRange,
        version: Version,
        limit: usize,
        reverse: bool,
    ) -> Result<RangeRead> {
        self.remote.get_range(range, version, limit, reverse).await
    }

    async fn applied_version(&self) -> Result<Version> {
        self.remote.applied_version().await
    }

    async fn durable_version(&self) -> Result<Version> {
        self.remote.durable_version().await
    }

    async fn roll_back(&self, version: Version) -> Result<()> {
        self.remote.roll_back(version).await
    }
}

#[async_trait]
impl HeldStorage for WorkerStorage {
    async fn advance_committed(&self, committed: Version) -> Result<()> {
        self.worker
            .advance_committed(self.epoch, &self.token, committed)
            .await?;
        self.committed.fetch_max(committed.0, Ordering::AcqRel);
        Ok(())
    }

    fn committed_version(&self) -> Version {
        Version(self.committed.load(Ordering::Acquire))
    }

    async fn wait_applied(&self, version: Version) -> Result<()> {
        while self.remote.applied_version().await? < version {
            tokio::time::sleep(APPLIED_POLL).await;
        }
        Ok(())
    }

    async fn close(&self) {}

    fn worker(&self) -> Option<&str> {
        Some(&self.at)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::coordinator::FileStateStore;
    use crate::workers::orders::tests::claim;
    use std::time::Duration;
    use strata_core::{Key, KeyRange, LogId, Mutation};
    use strata_net::{ClusterId, Exposure, RemoteStorage, RemoteWorker};
    use strata_testkit::MemoryLog;
    use tokio::net::TcpListener;
    use tokio::sync::oneshot;
    use tokio::task::JoinHandle;

    fn access() -> Access {
        Access::new(ClusterId::new("storage-worker").unwrap(), None)
    }

    fn config() -> StorageConfig {
        StorageConfig {
            window_versions: 0,
            flush_interval: Duration::from_millis(10),
            pop_log: false,
            ..StorageConfig::default()
        }
    }

    fn everything() -> Vec<KeyRange> {
        vec![KeyRange::new("", "\u{7f}").unwrap()]
    }

    /// A process serving `what` until its sender fires.
    struct Running {
        address: String,
        stop: oneshot::Sender<()>,
        served: JoinHandle<Result<()>>,
    }

    impl Running {
        async fn stop(self) {
            self.stop.send(()).unwrap();
            self.served.await.unwrap().unwrap();
        }
    }

    async fn listener(at: Option<&str>) -> (TcpListener, String) {
        let listener = TcpListener::bind(at.unwrap_or("127.0.0.1:0"))
            .await
            .unwrap();
        let address = listener.local_addr().unwrap().to_string();
        (listener, address)
    }

    /// A generation's log holding a `Set` of `k<v>` to `v<v>` at each version of `versions`,
    /// served (as the director's peer port serves logs) under `token`.
    async fn log_of(id: u64, versions: std::ops::RangeInclusive<u64>, token: &str) -> Running {
        let log = Arc::new(MemoryLog::new(LogId(id), Version(versions.start() - 1)));
        for v in versions {
            let set = Mutation::Set {
                key: format!("k{v}").into(),
                value: format!("v{v}").into(),
            };
            log.push_mutations(Version(v - 1), Version(v), &[set])
                .await
                .unwrap();
        }
        let stages = Stages {
            logs: vec![log],
            token: Some(token.to_owned()),
            ..Stages::default()
        };
        let (_publish, published) = watch::channel(Arc::new(stages));
        let (listener, address) = listener(None).await;
        let (stop, stopped) = oneshot::channel();
        let served = tokio::spawn(strata_net::serve(
            access(),
            Exposure::Everything,
            published,
            listener,
            async {
                let _ = stopped.await;
            },
        ));
        Running {
            address,
            stop,
            served,
        }
    }

    /// A storage worker on `dir`, served at `at` (any free port when `None`).
    async fn worker(dir: &Path, store: Arc<FileStateStore>, at: Option<&str>) -> Running {
        let (publish, published) = watch::channel(Arc::new(Stages::default()));
        let worker = StorageWorker::new(dir, config(), access(), store, publish).unwrap();
        let (listener, address) = listener(at).await;
        let (stop, stopped) = oneshot::channel();
        let served = tokio::spawn(strata_net::serve_worker(
            access(),
            Arc::new(worker),
            published,
            listener,
            async {
                let _ = stopped.await;
            },
        ));
        Running {
            address,
            stop,
            served,
        }
    }

    /// A storage worker on a directory of its own (`data`), served, reading the coordinated
    /// state from `store` (kept in the first directory), and a director's client of it.
    async fn started() -> (
        tempfile::TempDir,
        Arc<FileStateStore>,
        tempfile::TempDir,
        Running,
        RemoteWorker,
    ) {
        let state_dir = tempfile::tempdir().unwrap();
        let store = Arc::new(FileStateStore::new(state_dir.path()));
        let data = tempfile::tempdir().unwrap();
        let running = worker(data.path(), store.clone(), None).await;
        let remote = RemoteWorker::connect(&running.address, access())
            .await
            .unwrap();
        (state_dir, store, data, running, remote)
    }

    fn order(epoch: u64, token: &str, log: &Running, id: u64, recovery: u64) -> OpenStorage {
        OpenStorage {
            epoch: Epoch(epoch),
            token: token.to_owned(),
            index: 0,
            shards: everything(),
            log: LogId(id),
            log_at: log.address.clone(),
            recovery_version: Version(recovery),
            catch_up: Duration::from_millis(500),
        }
    }

    async fn read(at: &str, token: &str, key: &str, version: u64) -> Result<Option<String>> {
        let storage = RemoteStorage::connect(at, access().with_token(token.to_owned()), 0).await?;
        let value = storage
            .get(Key::copy_from_slice(key.as_bytes()), Version(version))
            .await?;
        Ok(value.map(|v| String::from_utf8(v.to_vec()).unwrap()))
    }

    fn kind_of<T: std::fmt::Debug>(r: Result<T>) -> ErrorKind {
        r.unwrap_err().kind
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_storage_server_follows_each_epochs_log_and_keeps_its_file_across_restarts() {
        let (_state, store, data, running, remote) = started().await;

        // A worker that never held a server holds nothing, and serves nothing.
        let stored = remote.inspect_storage(0).await.unwrap();
        assert_eq!((stored.durable, stored.shards), (Version::ZERO, None));
        assert!(read(&running.address, "one", "k1", 1).await.is_err());

        // Epoch 1 (recovered at 4) opens it on its log: it re-applies the history up to the
        // recovery version before the order is answered, goes on with the epoch's commits,
        // and serves it under the epoch's token only.
        claim(&store, 1, "one");
        let first = log_of(1, 1..=10, "one").await;
        remote
            .open_storage(order(1, "one", &first, 1, 4))
            .await
            .unwrap();
        let at = running.address.clone();
        assert_eq!(
            read(&at, "one", "k5", 10).await.unwrap().as_deref(),
            Some("v5")
        );
        assert!(read(&at, "forged", "k5", 10).await.is_err());

        // It makes durable what the director says is committed (the recovery version is),
        // and nothing above.
        assert!(matches!(
            kind_of(
                remote
                    .advance_committed(Epoch(1), "forged", Version(10))
                    .await
            ),
            ErrorKind::InvalidRequest(_)
        ));
        remote
            .advance_committed(Epoch(1), "one", Version(7))
            .await
            .unwrap();
        wait_durable(&at, "one", Version(7)).await;
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert_eq!(wait_durable(&at, "one", Version(7)).await, Version(7));
        // One server per worker: another index is refused, whatever the order.
        assert!(matches!(
            kind_of(remote.inspect_storage(1).await),
            ErrorKind::InvalidRequest(m) if m.contains("holds storage server 0")
        ));

        // Restarted, the worker serves nothing until an epoch opens the server again, and
        // reads the durable version from the file.
        running.stop().await;
        first.stop().await;
        let running = worker(data.path(), store.clone(), Some(&at)).await;
        let remote = RemoteWorker::connect(&running.address, access())
            .await
            .unwrap();
        let stored = remote.inspect_storage(0).await.unwrap();
        assert_eq!(
            (stored.durable, stored.shards),
            (Version(7), Some(everything()))
        );
        assert!(read(&at, "one", "k5", 10).await.is_err());

        // Epoch 2 recovered at 12 (its log replays 8..=12 after the oldest durable version):
        // the server rolls back to 12 and follows the new log.
        claim(&store, 2, "two");
        let second = log_of(2, 8..=12, "two").await;
        assert!(matches!(
            kind_of(remote.open_storage(order(1, "one", &second, 2, 12)).await),
            ErrorKind::Fenced { .. }
        ));
        // Epoch 1's advance is no order any more, nor epoch 2's before its open.
        assert!(matches!(
            kind_of(remote.advance_committed(Epoch(2), "two", Version(12)).await),
            ErrorKind::InvalidRequest(m) if m.contains("opened here for epoch 2")
        ));
        remote
            .open_storage(order(2, "two", &second, 2, 12))
            .await
            .unwrap();
        assert_eq!(
            read(&at, "two", "k12", 12).await.unwrap().as_deref(),
            Some("v12")
        );
        assert_eq!(
            read(&at, "two", "k3", 12).await.unwrap().as_deref(),
            Some("v3")
        );
        assert!(read(&at, "one", "k3", 12).await.is_err(), "epoch 1's token");
        assert!(matches!(
            kind_of(remote.advance_committed(Epoch(1), "one", Version(12)).await),
            ErrorKind::Fenced { .. }
        ));
        remote
            .advance_committed(Epoch(2), "two", Version(12))
            .await
            .unwrap();
        wait_durable(&at, "two", Version(12)).await;
        running.stop().await;
        second.stop().await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn an_open_whose_log_is_not_served_now_fails_as_unavailable() {
        let (_state, store, _data, running, remote) = started().await;
        claim(&store, 1, "one");
        // The log's worker restarted since the recovery created the log: it serves nothing
        // until the next recovery opens the log again. Not a request nobody can serve (which
        // would stop recovery): the attempt fails, and the next one gets there.
        let (_publish, published) = watch::channel(Arc::new(Stages::default()));
        let (listener, log_at) = listener(None).await;
        tokio::spawn(strata_net::serve(
            access(),
            Exposure::Everything,
            published,
            listener,
            std::future::pending::<()>(),
        ));
        let mut open = order(1, "one", &running, 1, 4);
        open.log_at = log_at;
        let e = remote.open_storage(open).await.unwrap_err();
        assert!(matches!(e.kind, ErrorKind::Unavailable(_)), "{e}");
        assert!(e.to_string().contains("log 1"), "{e}");
        running.stop().await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn each_recoverys_inspection_checks_the_file_so_damage_since_the_last_is_refused() {
        let (_state, store, data, running, remote) = started().await;
        remote.inspect_storage(0).await.unwrap();
        claim(&store, 1, "one");
        let log = log_of(1, 1..=50, "one").await;
        remote
            .open_storage(order(1, "one", &log, 1, 50))
            .await
            .unwrap();
        wait_durable(&running.address, "one", Version(50)).await;

        // A value goes bad on disk while epoch 1 runs (nothing of the server notices).
        let file = data.path().join("storage/0.redb");
        let mut bytes = std::fs::read(&file).unwrap();
        let mut flipped = 0;
        for i in 0..bytes.len().saturating_sub(3) {
            if &bytes[i..i + 3] == b"v17" {
                bytes[i] = b'x';
                flipped += 1;
            }
        }
        assert!(flipped > 0, "the value is in the file");
        std::fs::write(&file, &bytes).unwrap();

        // The next recovery's inspection finds it, as the director's phase 1 does its own
        // files' damage: never opened and served, nor rewritten by a flush with a fresh
        // checksum.
        claim(&store, 2, "two");
        let e = remote.inspect_storage(0).await.unwrap_err();
        assert!(matches!(e.kind, ErrorKind::Corruption(_)), "{e}");
        running.stop().await;
        log.stop().await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn an_open_that_cannot_catch_up_ends_within_its_bound_and_lets_the_worker_stop() {
        let (_state, store, _data, running, remote) = started().await;
        claim(&store, 1, "one");
        // The log holds up to 3; the order says the epoch recovered at 10.
        let log = log_of(1, 1..=3, "one").await;
        let stuck = order(1, "one", &log, 1, 10);
        let e = tokio::time::timeout(Duration::from_secs(20), remote.open_storage(stuck))
            .await
            .expect("the open ended within its bound")
            .unwrap_err();
        assert!(matches!(e.kind, ErrorKind::Timeout { .. }), "{e}");
        // Nothing of it keeps the worker from stopping.
        tokio::time::timeout(Duration::from_secs(20), running.stop())
            .await
            .expect("the worker stopped");
        log.stop().await;
    }

    /// Waits (at most 10 s) until the server served at `at` under `token` made `version`
    /// durable; returns its durable version then.
    async fn wait_durable(at: &str, token: &str, version: Version) -> Version {
        let access = access().with_token(token.to_owned());
        let storage = RemoteStorage::connect(at, access, 0).await.unwrap();
        for _ in 0..1000 {
            let durable = storage.durable_version().await.unwrap();
            if durable >= version {
                return durable;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("never durable at {version}");
    }

    #[tokio::test]
    async fn a_worker_refuses_a_configuration_that_pops_its_log() {
        let state_dir = tempfile::tempdir().unwrap();
        let store = Arc::new(FileStateStore::new(state_dir.path()));
        let data = tempfile::tempdir().unwrap();
        let (publish, _published) = watch::channel(Arc::new(Stages::default()));
        let pops = StorageConfig {
            pop_log: true,
            ..config()
        };
        let refused = StorageWorker::new(data.path(), pops, access(), store, publish);
        assert!(matches!(
            refused.map(drop).unwrap_err().kind,
            ErrorKind::InvalidRequest(_)
        ));
    }
}
