//! The storage server's handle, [`RedbStorage`]: its configuration, its shared state (the
//! window, the versions applied and durable, the log followed) and its lifecycle (open, follow,
//! close); the reads are in `read.rs`, the background loops in `background.rs`.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use async_trait::async_trait;
use strata_core::{
    Blocking, Error, ErrorKind, Key, KeyRange, LogServer, MVCC_WINDOW_VERSIONS, RangeRead, Result,
    StorageServer, Value, Version,
};
use tokio::task::JoinHandle;

use crate::blocking;
use crate::errors::error;
use crate::files::{drop_db, open_file};
use crate::window::Window;
use strata_core::merge::Answer;
use strata_core::version_cell::VersionCell;

/// Tuning of a [`RedbStorage`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StorageConfig {
    /// Versions kept in memory above the durable version; older ones are written to redb once
    /// they are known committed (see [`RedbStorage::advance_committed`]).
    pub window_versions: u64,
    /// How long a read at a version not applied yet waits before `FutureVersion`.
    pub read_wait: Duration,
    /// Log entries taken per pull.
    pub pull_limit: usize,
    /// How often the window is checked for versions to make durable. Each flush is one redb
    /// write transaction, which copies every B-tree page it touches and syncs them: keys
    /// written at random touch a page each, so flushes far apart share pages and write less
    /// per key, but each holds the disk longer (the log's syncs wait behind it). The default,
    /// 500 ms, is measured in docs/performance.md ("The storage flush beyond the window").
    pub flush_interval: Duration,
    /// Whether to pop the followed log below the durable version after each flush. That is
    /// right only when this server is the log's one reader and the log is the generation's one
    /// log. With several servers per log, or several logs, turn it off and pop centrally, below
    /// the smallest durable version of all servers: a log may drop an entry only once every
    /// server that needs it made it durable.
    pub pop_log: bool,
    /// Whether [`RedbStorage::open`] runs redb's integrity check on the file, so that damage
    /// is found at open, as `Corruption` naming the file, rather than by an unlucky read later
    /// (without it, reads may even return wrong values from a damaged page: redb verifies
    /// checksums only when checking). On by default; [`durable_version_at`](crate::durable_version_at) always checks.
    ///
    /// It reads every live page, so it costs time in proportion to the data. Measured (release
    /// build, ext4, file in the page cache, 100-byte values): about 1 ms for 10k keys (a 1.3 MB
    /// file), 10-15 ms for 100k keys (18 MB), 90-140 ms for 1M keys (143 MB), against about
    /// 1 ms for an open without it: roughly 1 s per GB, more when the file must come from disk.
    /// Worth it even for large files; turn it off only where open latency matters more than
    /// finding damage early (for example a tool that reopens the same file often).
    pub check_integrity: bool,
    /// Whether the server only reads its file, for tools that look at a cluster at rest
    /// without owning it (`strata get`, `status`, `workload check`): the file is never written
    /// (redb's repair after a crash, the shards record and the close go to memory), a missing
    /// file opens empty, at durable version 0, without being created, and nothing is made
    /// durable or popped, whatever [`RedbStorage::advance_committed`] says. The server still
    /// follows its log and answers reads from memory. Off by default.
    pub read_only: bool,
    /// Where redb's file is read and written: tokio's blocking pool (the default), or, for
    /// the simulation's single thread, the asking task (see [`Blocking`]).
    pub blocking: Blocking,
}

impl Default for StorageConfig {
    fn default() -> StorageConfig {
        StorageConfig {
            window_versions: MVCC_WINDOW_VERSIONS,
            read_wait: Duration::from_secs(1),
            pull_limit: 1_000,
            flush_interval: Duration::from_millis(500),
            pop_log: true,
            check_integrity: true,
            read_only: false,
            blocking: Blocking::Threads,
        }
    }
}

/// What the apply loop, the flushes and the reads change together, under one lock.
#[derive(Debug)]
pub(crate) struct State {
    /// The versions above the durable version.
    pub(crate) window: Window,
    /// The newest version applied to the window.
    pub(crate) applied: Version,
    /// The newest version redb holds, as this server last learned it.
    pub(crate) durable: Version,
    /// Reads below this are too old. Raised before a flush commits, so no read can straddle it.
    pub(crate) oldest_readable: Version,
    /// Bumped by every roll back and every change of log, so an apply loop holding entries
    /// pulled before it drops them.
    pub(crate) generation: u64,
    /// Set when the apply loop met an entry it cannot apply, or a flush failed to write the
    /// file (redb then refuses every later write); every read then fails with it.
    pub(crate) failed: Option<Error>,
    /// Set when redb found the file damaged (or panicked on it) during a read or a flush. Every
    /// read and flush then fails with it without touching the file again, and the apply loop
    /// stops: the server cannot serve what the file holds, so it is of no use until replaced.
    pub(crate) damaged: Option<Error>,
}

impl State {
    /// Why the server no longer serves reads, if it does not.
    pub(crate) fn broken(&self) -> Result<()> {
        match self.failed.as_ref().or(self.damaged.as_ref()) {
            Some(e) => Err(e.clone()),
            None => Ok(()),
        }
    }

    /// Records `result`'s error if it is damage, so that later reads fail with it too.
    pub(crate) fn note<T>(&mut self, result: Result<T>) -> Result<T> {
        if let Err(e) = &result
            && matches!(e.kind, ErrorKind::Corruption(_))
            && self.damaged.is_none()
        {
            tracing::error!(error = %e, "storage file damaged; the server stops serving it");
            self.damaged = Some(e.clone());
        }
        result
    }
}

/// Guards writes to redb. A flush's blocking closure holds it for its whole run, database
/// handle included: aborting a flush's task does not stop that closure, so `close` takes this
/// lock (after setting `closed`) to know that no write holds the database any more and that
/// none will start.
#[derive(Debug)]
pub(crate) struct Writer {
    /// Set by `close`; a flush that finds it set writes nothing.
    pub(crate) closed: bool,
    /// The durable version redb holds. Two flushes may overlap (the periodic one and one asked
    /// for); each chose its target and gathered its keys before either wrote, and their
    /// writes may run in either order. The one with the older target must then not write, or it
    /// would put older values back over newer ones and lower the durable version.
    pub(crate) durable: Version,
}

/// What the handle, its reads and its background loops share.
pub(crate) struct Inner {
    /// The database file, named by every error about it.
    pub(crate) path: PathBuf,
    /// The key ranges served.
    pub(crate) shards: Vec<KeyRange>,
    /// `None` once the server is closed.
    pub(crate) db: Mutex<Option<Arc<redb::Database>>>,
    /// Taken before `db` by whoever takes both.
    pub(crate) writer: Mutex<Writer>,
    /// The log followed; [`RedbStorage::follow`] replaces it.
    pub(crate) log: Mutex<Arc<dyn LogServer>>,
    pub(crate) config: StorageConfig,
    pub(crate) state: Mutex<State>,
    /// The applied version, for reads waiting on one.
    pub(crate) applied: VersionCell,
    /// The newest version known committed (held durably by every log of the generation, with
    /// every earlier version): the most a flush may make durable. Raised by
    /// [`RedbStorage::advance_committed`], set by a roll back.
    pub(crate) committed: AtomicU64,
}

impl Inner {
    /// The state, locked.
    pub(crate) fn state(&self) -> Result<MutexGuard<'_, State>> {
        self.state.lock().map_err(|_| {
            error(ErrorKind::Unavailable(
                "storage state poisoned by a panic".into(),
            ))
        })
    }

    /// [`StorageServer::roll_back`] to `version` under the state lock `st`: drops what is
    /// applied above it and bumps the generation, so an apply in flight drops its entries.
    pub(crate) fn roll_back_locked(&self, st: &mut State, version: Version) -> Result<()> {
        if version < st.oldest_readable {
            return Err(error(ErrorKind::InvalidRequest(format!(
                "cannot roll back to {version}: versions up to {} are durable",
                st.oldest_readable
            ))));
        }
        st.window.forget_after(version);
        st.applied = st.applied.min(version);
        // The recovery version is committed by definition, and everything above it is gone:
        // a known committed version above it would speak of versions that no longer exist.
        // Set under the state lock, so no flush chooses its target in between.
        self.committed.store(version.0, Ordering::Release);
        st.generation += 1;
        self.applied.set(st.applied);
        tracing::info!(version = version.0, "storage rolled back");
        Ok(())
    }

    /// The database; `Unavailable` once closed.
    pub(crate) fn db(&self) -> Result<Arc<redb::Database>> {
        self.db
            .lock()
            .map_err(|_| error(ErrorKind::Unavailable("storage poisoned by a panic".into())))?
            .clone()
            .ok_or_else(|| error(ErrorKind::Unavailable("storage server closed".into())))
    }

    /// The log followed now.
    pub(crate) fn log(&self) -> Result<Arc<dyn LogServer>> {
        self.log.lock().map(|l| l.clone()).map_err(|_| {
            error(ErrorKind::Unavailable(
                "storage log poisoned by a panic".into(),
            ))
        })
    }

    /// Records `result`'s error if it is damage (see [`State::note`]).
    pub(crate) fn note<T>(&self, result: Result<T>) -> Result<T> {
        match self.state() {
            Ok(mut st) => st.note(result),
            Err(_) => result,
        }
    }

    /// Closes the database once no flush is writing to it, and keeps any later flush from
    /// writing. Blocking: it may wait for a write, and dropping the database syncs it.
    fn close_db(&self) {
        // A poisoned lock means a flush panicked mid-write; its transaction was dropped
        // uncommitted, so closing is still right.
        let mut writer = self.writer.lock().unwrap_or_else(PoisonError::into_inner);
        writer.closed = true;
        let db = self
            .db
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        // The last handle, unless a read still holds a snapshot: the file is closed here.
        drop_db(&self.path, db);
    }
}

impl Drop for Inner {
    fn drop(&mut self) {
        // A server dropped without `close` closes its file here, wherever the last handle goes.
        let db = match self.db.get_mut() {
            Ok(db) => db.take(),
            Err(poisoned) => poisoned.into_inner().take(),
        };
        drop_db(&self.path, db);
    }
}

/// A storage server: follows a log, keeps the MVCC window in memory and everything older in
/// redb. See the crate docs.
pub struct RedbStorage {
    inner: Arc<Inner>,
    tasks: Mutex<Vec<JoinHandle<()>>>,
}

impl std::fmt::Debug for RedbStorage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedbStorage")
            .field("shards", &self.inner.shards)
            .finish_non_exhaustive()
    }
}

impl Drop for RedbStorage {
    fn drop(&mut self) {
        if let Ok(tasks) = self.tasks.lock() {
            for t in tasks.iter() {
                t.abort();
            }
        }
    }
}

impl RedbStorage {
    /// Opens (or creates, complete or not at all) the redb database at `path`, owning `shards`, and starts following
    /// `log` after the durable version stored there. Must be called inside a tokio runtime.
    pub async fn open(
        path: &Path,
        shards: Vec<KeyRange>,
        log: Arc<dyn LogServer>,
        config: StorageConfig,
    ) -> Result<RedbStorage> {
        let path = path.to_owned();
        let (opening, asked) = (path.clone(), shards.clone());
        let (db, durable) = blocking::run(config.blocking, "open", move || {
            open_file(&opening, &asked, config.check_integrity, config.read_only)
        })
        .await??;
        tracing::info!(
            durable = durable.0,
            shards = shards.len(),
            path = %path.display(),
            "storage opened"
        );
        let inner = Arc::new(Inner {
            path,
            shards,
            db: Mutex::new(Some(Arc::new(db))),
            writer: Mutex::new(Writer {
                closed: false,
                durable,
            }),
            log: Mutex::new(log),
            config,
            state: Mutex::new(State {
                window: Window::default(),
                applied: durable,
                durable,
                oldest_readable: durable,
                generation: 0,
                failed: None,
                damaged: None,
            }),
            applied: VersionCell::new(durable),
            // What is durable was committed when it was flushed; nothing newer is known yet.
            committed: AtomicU64::new(durable.0),
        });
        let tasks = vec![
            tokio::spawn(inner.clone().apply_loop()),
            tokio::spawn(inner.clone().flush_loop()),
        ];
        Ok(RedbStorage {
            inner,
            tasks: Mutex::new(tasks),
        })
    }

    /// Follows `log` from `from` on, in one step: the server rolls back to `from` (as
    /// [`StorageServer::roll_back`] does), drops the entries it pulled from the previous log and
    /// has not applied, and pulls after `from` from `log`, which must hold the entries after it
    /// (a popped one answers `TooOld`, and the server retries).
    ///
    /// One step, because two would let the server pull again from the old log, between a roll
    /// back and a change of log, the very versions the roll back dropped, and then apply the
    /// new history over them. It moves a running server to another log without closing its
    /// file: to the log of a new generation going on from `from`, or to another log of the same
    /// history (with `from` its applied version). The director's recovery does not call it: it
    /// opens its storage servers anew on the new epoch's logs and rolls them back, so a server
    /// never outlives the epoch it was opened in.
    pub fn follow(&self, log: Arc<dyn LogServer>, from: Version) -> Result<()> {
        let mut st = self.inner.state()?;
        self.inner.roll_back_locked(&mut st, from)?;
        *self.inner.log.lock().map_err(|_| {
            error(ErrorKind::Unavailable(
                "storage log poisoned by a panic".into(),
            ))
        })? = log;
        Ok(())
    }

    /// Stops following the log and closes the database, waiting until both are done, a flush
    /// in progress included, so the same path can be opened again at once, even while handles
    /// to this server remain (their reads and flushes then fail as unavailable). A read still
    /// running when `close` is called may keep the file open until it ends. Dropping the server
    /// stops it too, but without waiting.
    pub async fn close(&self) {
        let tasks: Vec<JoinHandle<()>> = match self.tasks.lock() {
            Ok(mut tasks) => tasks.drain(..).collect(),
            Err(_) => Vec::new(),
        };
        for t in &tasks {
            t.abort();
        }
        for t in tasks {
            let _ = t.await;
        }
        // An aborted flush task leaves its redb write running on a blocking thread, holding
        // the database; wait for it on a blocking thread too.
        let inner = self.inner.clone();
        if let Err(e) = blocking::run(self.inner.config.blocking, "close", move || {
            inner.close_db()
        })
        .await
        {
            tracing::error!(error = %e, "storage close task failed");
        }
    }

    /// Waits until `version` is applied, however long that takes (bound it with a timeout).
    /// Fails if the server stopped applying.
    pub async fn wait_applied(&self, version: Version) -> Result<()> {
        loop {
            if self.inner.applied.get() >= version {
                return Ok(());
            }
            self.inner.state()?.broken()?;
            // A stopped apply loop ends with `failed` set or the server closed; poll for those
            // now and then instead of waiting forever on a version that will not come.
            let reached = self.inner.applied.wait_for(|v| v >= version);
            let _ = tokio::time::timeout(Duration::from_millis(50), reached).await;
        }
    }

    /// How many mutations the in-memory window holds.
    pub fn window_len(&self) -> Result<usize> {
        Ok(self.inner.state()?.window.len())
    }

    /// Tells the server that every version up to `version` is committed: held durably by every
    /// log of the generation. Flushes may then make versions up to it durable. Never lowers the
    /// known committed version, so reports may arrive late or out of order.
    ///
    /// Until it is called the server makes nothing new durable: it applies and serves versions
    /// from memory, the window grows and (with [`StorageConfig::pop_log`]) the log is not
    /// popped. A cluster passes the sequencer's committed version now and then; a standalone
    /// user with a single log can pass each version once its push is acknowledged. After a
    /// [`StorageServer::roll_back`], report only versions committed by the new generation.
    pub fn advance_committed(&self, version: Version) {
        self.inner.committed.fetch_max(version.0, Ordering::AcqRel);
    }

    /// The newest version known committed: the durable version at open, then raised by
    /// [`RedbStorage::advance_committed`] and set by [`StorageServer::roll_back`]. The durable
    /// version never passes it.
    pub fn committed_version(&self) -> Version {
        Version(self.inner.committed.load(Ordering::Acquire))
    }

    /// Makes every version older than the window and known committed durable now, instead of
    /// at the next tick.
    pub async fn flush(&self) -> Result<()> {
        self.inner.flush().await
    }
}

#[async_trait]
impl StorageServer for RedbStorage {
    fn shards(&self) -> Vec<KeyRange> {
        self.inner.shards.clone()
    }

    async fn get(&self, key: Key, version: Version) -> Result<Option<Value>> {
        // The window's answer is given here, not in a nested `async fn` of `read.rs`: a point
        // read from the window takes about 260 ns, and awaiting one more future state machine
        // cost it 5% (`storage/get_window`).
        self.inner.check_key(&key)?;
        let snapshot = {
            let mut st = self.inner.state_at(version).await?;
            match st.window.get(&key, version) {
                Answer::Value(v) => return Ok(Some(v)),
                Answer::Deleted => return Ok(None),
                Answer::Unknown => self.inner.begin_read(&mut st)?,
            }
        };
        self.inner.clone().get_durable(key, snapshot).await
    }

    async fn get_range(
        &self,
        range: KeyRange,
        version: Version,
        limit: usize,
        reverse: bool,
    ) -> Result<RangeRead> {
        self.inner.get_range(range, version, limit, reverse).await
    }

    async fn applied_version(&self) -> Result<Version> {
        let st = self.inner.state()?;
        st.broken()?;
        Ok(st.applied)
    }

    async fn durable_version(&self) -> Result<Version> {
        Ok(self.inner.state()?.durable)
    }

    async fn roll_back(&self, version: Version) -> Result<()> {
        let mut st = self.inner.state()?;
        self.inner.roll_back_locked(&mut st, version)
    }
}
