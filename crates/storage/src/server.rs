//! The storage server: a window of recent versions in memory over a redb database.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use redb::{ReadableDatabase, ReadableTable, TableDefinition};
use strata_core::merge::{Answer, Direction, OlderEntry, merge};
use strata_core::{
    Error, ErrorKind, Key, KeyRange, LogServer, MVCC_WINDOW_VERSIONS, Mutation, RangeRead, Result,
    Stage, StorageServer, TransactionView, Value, Version, printable,
};
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::overlay::ReadOnlyOverlay;
use crate::window::{Flushed, Window};

const DATA: TableDefinition<&[u8], &[u8]> = TableDefinition::new("data");
const META: TableDefinition<&str, u64> = TableDefinition::new("meta");
const DURABLE_VERSION: &str = "durable_version";
/// The key ranges the file holds, written by the first open: a file is never served as
/// another shard (storage files swapped or copied between servers).
const SHARDS: TableDefinition<&str, &[u8]> = TableDefinition::new("shards");
const SHARDS_KEY: &str = "shards";

/// The shards' stored form: for each range, its begin and its end, each as a little-endian
/// `u32` length then the bytes.
fn encode_shards(shards: &[KeyRange]) -> Vec<u8> {
    let mut out = Vec::new();
    for r in shards {
        for k in [r.begin(), r.end()] {
            out.extend_from_slice(&u32::try_from(k.len()).unwrap_or(u32::MAX).to_le_bytes());
            out.extend_from_slice(k);
        }
    }
    out
}

/// A printable form of shards, for errors.
fn shown(shards: &[KeyRange]) -> String {
    shards
        .iter()
        .map(|r| r.to_string())
        .collect::<Vec<_>>()
        .join(", ")
}

/// The shards a file records, decoded for an error message (`None` when unreadable).
fn decode_shards(mut bytes: &[u8]) -> Option<Vec<KeyRange>> {
    let mut take = || -> Option<Bytes> {
        let len = usize::try_from(u32::from_le_bytes(bytes.get(..4)?.try_into().ok()?)).ok()?;
        let key = Bytes::copy_from_slice(bytes.get(4..4 + len)?);
        bytes = &bytes[4 + len..];
        Some(key)
    };
    let mut out = Vec::new();
    while let Some(begin) = take() {
        out.push(KeyRange::new(begin, take()?).ok()?);
    }
    Some(out)
}

/// What a storage file holds, as [`stored_at`] reads it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Stored {
    /// Its durable version (0 for a file never flushed).
    pub durable: Version,
    /// The key ranges it was first opened for; `None` for a file written before they were
    /// recorded.
    pub shards: Option<Vec<KeyRange>>,
}

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
    /// How often the window is checked for versions to make durable.
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
    /// checksums only when checking). On by default; [`durable_version_at`] always checks.
    ///
    /// It reads every live page, so it costs time in proportion to the data. Measured (release
    /// build, ext4, file in the page cache, 100-byte values): about 1 ms for 10k keys (a 1.3 MB
    /// file), 10-15 ms for 100k keys (18 MB), 90-140 ms for 1M keys (143 MB), against about
    /// 1 ms for an open without it: roughly 1 s per GB, more when the file must come from disk.
    /// Worth it even for large files; turn it off only where open latency matters more than
    /// finding damage early (for example a tool that reopens the same file often).
    pub check_integrity: bool,
}

impl Default for StorageConfig {
    fn default() -> StorageConfig {
        StorageConfig {
            window_versions: MVCC_WINDOW_VERSIONS,
            read_wait: Duration::from_secs(1),
            pull_limit: 1_000,
            flush_interval: Duration::from_millis(100),
            pop_log: true,
            check_integrity: true,
        }
    }
}

fn error(kind: ErrorKind) -> Error {
    Error::new(Stage::Storage, kind)
}

/// `Corruption` of the file at `path`, found while `doing` something.
fn corruption(path: &Path, doing: &str, why: impl std::fmt::Display) -> Error {
    error(ErrorKind::Corruption(format!(
        "{}: {doing}: {why}",
        path.display()
    )))
}

/// An I/O error on the file at `path`, of the same kind, naming the file.
fn io_error(path: &Path, doing: &str, e: &std::io::Error) -> Error {
    Error::io(
        Stage::Storage,
        std::io::Error::new(e.kind(), format!("{}: {doing}: {e}", path.display())),
    )
}

/// Turns a redb error met on the file at `path` while `doing` something into the crate's
/// error, naming the file. The rule: damage is `Corruption`, a failed read or write of the
/// device is `Io`, never the one for the other.
///
/// Besides `Corrupted`, redb reports some damage in other guises, which are damage here because
/// this crate wrote the file itself, with this redb and always the same tables:
/// - an I/O error of kind `InvalidData`: redb's "not a redb database" (bad magic number, or an
///   empty file, which `create_if_missing` never leaves). The OS never reports that kind.
/// - an I/O error of kind `UnexpectedEof`: a read past the end of the file, which the file's
///   own header or pages asked for. Reading with `pread` never fails so otherwise.
/// - an old file format (the version byte is damaged), or a table whose type or kind differs
///   from the one it was created with.
fn db_error<E: Into<redb::Error>>(path: &Path, doing: &str) -> impl FnOnce(E) -> Error {
    move |e| match e.into() {
        redb::Error::Io(io)
            if matches!(
                io.kind(),
                std::io::ErrorKind::InvalidData | std::io::ErrorKind::UnexpectedEof
            ) =>
        {
            corruption(path, doing, io)
        }
        redb::Error::Io(io) => io_error(path, doing, &io),
        redb::Error::Corrupted(why) => corruption(path, doing, why),
        e @ (redb::Error::UpgradeRequired(_)
        | redb::Error::TableTypeMismatch { .. }
        | redb::Error::TypeDefinitionChanged { .. }
        | redb::Error::TableIsMultimap(_)
        | redb::Error::TableIsNotMultimap(_)) => corruption(path, doing, e),
        other => error(ErrorKind::Unavailable(format!(
            "{}: {doing}: redb: {other}",
            path.display()
        ))),
    }
}

/// Runs `work`, redb work on the file at `path`, so that a panic inside it cannot escape the
/// crate: redb trusts what it reads from the file, and some damage (a zeroed page, a wrong
/// page type byte) makes it panic ("entered unreachable code") instead of returning an error.
/// A panic caught here is `Corruption` naming the file.
///
/// `AssertUnwindSafe` is sound here because everything `work` owns is dropped by the unwind,
/// and whatever it shares (the database handle) is not used again for reads or writes once the
/// caller records the damage (see `State::damaged`): a server that met corruption only drops it.
fn guarded<T>(path: &Path, doing: &str, work: impl FnOnce() -> Result<T>) -> Result<T> {
    match std::panic::catch_unwind(std::panic::AssertUnwindSafe(work)) {
        Ok(result) => result,
        Err(panic) => {
            let message = panic
                .downcast_ref::<&str>()
                .map(|s| (*s).to_owned())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "no message".to_owned());
            tracing::error!(
                path = %path.display(),
                doing,
                panic = %message,
                "redb panicked on a damaged file"
            );
            Err(corruption(
                path,
                doing,
                format!("redb panicked ({message}); the file is damaged"),
            ))
        }
    }
}

/// Opens the database at `path`, an existing file (`create_if_missing` made it whole).
///
/// With `check`, the open runs redb's integrity check (`Builder::set_check_integrity_on_open`,
/// the check and repair of `Database::check_integrity` run by the open itself): it verifies the
/// checksum of every page of the committed trees before trusting any of them, so damage is
/// `Corruption` naming the file, found at open rather than by whichever read first lands on it.
/// Without it, redb trusts a file that was closed cleanly: a damaged page may make the open or
/// a read panic (caught by `guarded`), and since reads do not verify checksums, a read may even
/// return wrong values. A plain open followed by `Database::check_integrity` would check the
/// same, but only after the open had already read unverified pages (in the damage test most
/// damaged files then made redb panic inside the open); this way redb itself reports them.
///
/// That check does not report what it repairs, but for this crate's files no repair can hide
/// damage: every commit is two-phase (see `write_tx`), so a primary commit slot or tree that
/// fails its checksums is an error, never a silent fall back to the previous commit; what is
/// left to repair is redb's allocator state, which it rebuilds from the verified trees anyway.
///
/// Cost: it reads every live page and commits once; see [`StorageConfig::check_integrity`].
fn open_db(path: &Path, check: bool, doing: &str) -> Result<redb::Database> {
    let mut builder = redb::Builder::new();
    builder.set_check_integrity_on_open(check);
    builder.create(path).map_err(db_error(path, doing))
}

/// A write transaction that commits in two phases. With redb's default one-phase commit, a
/// primary commit slot whose checksums fail is taken for a commit a crash interrupted, and redb
/// silently falls back to the previous commit. With two phases the primary slot is only made
/// primary once its data is synced, so a crash never leaves it invalid: one that fails its
/// checksums is damage, which redb then reports (`Corrupted`) instead of repairing by losing
/// the newest commit. (redb's own commit when a database closes is two-phase already; a file
/// left by a crash, though, ends with a flush's commit.) Losing the newest commit would be
/// worse than an error: the file would open at an older durable version, below what the log
/// may already have popped (without this, in the damage test, a crash image whose newest
/// commit was damaged opened at the previous durable version). It costs one more sync per
/// flush; measured, a flush of 100 keys took the same 2-3 ms with or without it (ext4).
fn write_tx(db: &redb::Database, path: &Path) -> Result<redb::WriteTransaction> {
    let mut tx = db
        .begin_write()
        .map_err(db_error(path, "starting a write"))?;
    tx.set_two_phase_commit(true);
    Ok(tx)
}

#[derive(Debug)]
struct State {
    window: Window,
    applied: Version,
    durable: Version,
    /// Reads below this are too old. Raised before a flush commits, so no read can straddle it.
    oldest_readable: Version,
    /// Bumped by every roll back, so an apply loop holding entries pulled before it drops them.
    generation: u64,
    /// Set when the apply loop met an entry it cannot apply; every read then fails with it.
    failed: Option<Error>,
    /// Set when redb found the file damaged (or panicked on it) during a read or a flush. Every
    /// read and flush then fails with it without touching the file again, and the apply loop
    /// stops: the server cannot serve what the file holds, so it is of no use until replaced.
    damaged: Option<Error>,
}

impl State {
    /// Why the server no longer serves reads, if it does not.
    fn broken(&self) -> Result<()> {
        match self.failed.as_ref().or(self.damaged.as_ref()) {
            Some(e) => Err(e.clone()),
            None => Ok(()),
        }
    }

    /// Records `result`'s error if it is damage, so that later reads fail with it too.
    fn note<T>(&mut self, result: Result<T>) -> Result<T> {
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
struct Writer {
    /// Set by `close`; a flush that finds it set writes nothing.
    closed: bool,
    /// The durable version redb holds. Two flushes may overlap (the periodic one and one asked
    /// for); each chose its target and gathered its keys before either wrote, and their
    /// writes may run in either order. The one with the older target must then not write, or it
    /// would put older values back over newer ones and lower the durable version.
    durable: Version,
}

struct Inner {
    /// The database file, named by every error about it.
    path: PathBuf,
    shards: Vec<KeyRange>,
    /// `None` once the server is closed.
    db: Mutex<Option<Arc<redb::Database>>>,
    /// Taken before `db` by whoever takes both.
    writer: Mutex<Writer>,
    /// The log followed; recovery replaces it after a roll back.
    log: Mutex<Arc<dyn LogServer>>,
    config: StorageConfig,
    state: Mutex<State>,
    applied: watch::Sender<Version>,
    /// The newest version known committed (held durably by every log of the generation, with
    /// every earlier version): the most a flush may make durable. Raised by
    /// [`RedbStorage::advance_committed`], set by a roll back.
    committed: AtomicU64,
}

impl Inner {
    fn state(&self) -> Result<MutexGuard<'_, State>> {
        self.state.lock().map_err(|_| {
            error(ErrorKind::Unavailable(
                "storage state poisoned by a panic".into(),
            ))
        })
    }

    fn db(&self) -> Result<Arc<redb::Database>> {
        self.db
            .lock()
            .map_err(|_| error(ErrorKind::Unavailable("storage poisoned by a panic".into())))?
            .clone()
            .ok_or_else(|| error(ErrorKind::Unavailable("storage server closed".into())))
    }

    fn log(&self) -> Result<Arc<dyn LogServer>> {
        self.log.lock().map(|l| l.clone()).map_err(|_| {
            error(ErrorKind::Unavailable(
                "storage log poisoned by a panic".into(),
            ))
        })
    }

    /// Records `result`'s error if it is damage (see [`State::note`]).
    fn note<T>(&self, result: Result<T>) -> Result<T> {
        match self.state() {
            Ok(mut st) => st.note(result),
            Err(_) => result,
        }
    }

    /// A redb snapshot, for a read that holds the state lock `st`: taken under it, so that no
    /// flush commits between the read's check of the window and the snapshot. Guarded, because
    /// redb may panic on a damaged file even here; the panic is caught before it could unwind
    /// through the lock (and poison it) or through the caller's task. Damage is recorded in `st`.
    fn begin_read(&self, st: &mut State) -> Result<redb::ReadTransaction> {
        let db = self.db()?;
        let doing = "starting a read";
        st.note(guarded(&self.path, doing, || {
            db.begin_read().map_err(db_error(&self.path, doing))
        }))
    }

    fn check_key(&self, key: &[u8]) -> Result<()> {
        if self.shards.iter().any(|s| s.contains(key)) {
            Ok(())
        } else {
            Err(error(ErrorKind::WrongShard {
                key: printable(key),
            }))
        }
    }

    /// Waits (bounded) until `version` is applied; then checks it is not too old.
    async fn readable(&self, version: Version) -> Result<()> {
        if *self.applied.borrow() >= version {
            return Ok(());
        }
        let mut rx = self.applied.subscribe();
        let reached = tokio::time::timeout(self.config.read_wait, rx.wait_for(|&v| v >= version));
        if reached.await.is_err() {
            return Err(error(ErrorKind::FutureVersion {
                version,
                newest: *self.applied.borrow(),
            }));
        }
        Ok(())
    }

    /// The state, once `version` is applied (bounded wait) and if it is still readable: what
    /// every read starts from.
    async fn state_at(&self, version: Version) -> Result<MutexGuard<'_, State>> {
        self.readable(version).await?;
        let st = self.state()?;
        st.broken()?;
        if version < st.oldest_readable {
            return Err(error(ErrorKind::TooOld {
                version,
                oldest: st.oldest_readable,
            }));
        }
        Ok(st)
    }

    /// Applies pulled entries, in order, unless a roll back happened since they were pulled.
    fn apply(&self, generation: u64, entries: Vec<(Version, Vec<Mutation>)>) -> Result<()> {
        let mut st = self.state()?;
        if st.generation != generation {
            return Ok(());
        }
        for (version, mutations) in entries {
            if version <= st.applied {
                continue;
            }
            for (seq, m) in (0u32..).zip(mutations) {
                st.window.apply((version, seq), m, &self.shards);
            }
            st.applied = version;
        }
        self.applied.send_replace(st.applied);
        Ok(())
    }

    async fn apply_loop(self: Arc<Self>) {
        loop {
            let (after, generation) = match self.state() {
                Ok(st) if st.broken().is_ok() => (st.applied, st.generation),
                _ => return,
            };
            let log = match self.log() {
                Ok(log) => log,
                Err(_) => return,
            };
            let entries = match log.pull(after, self.config.pull_limit).await {
                Ok(entries) => entries,
                Err(e) => {
                    tracing::warn!(error = %e, "storage could not pull from its log; retrying");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            };
            let decoded: Result<Vec<(Version, Vec<Mutation>)>> = entries
                .into_iter()
                .map(|e| decode_entry(e.version, e.payload))
                .collect();
            let result = decoded.and_then(|entries| self.apply(generation, entries));
            if let Err(e) = result {
                tracing::error!(error = %e, "storage stopped applying");
                if let Ok(mut st) = self.state() {
                    st.failed = Some(e);
                }
                return;
            }
        }
    }

    async fn flush_loop(self: Arc<Self>) {
        loop {
            tokio::time::sleep(self.config.flush_interval).await;
            if let Err(e) = self.flush().await {
                // A damaged file is never written again: retrying would only repeat the error.
                if self.state().is_ok_and(|st| st.damaged.is_some()) {
                    tracing::error!(error = %e, "storage file damaged; flushes stop");
                    return;
                }
                tracing::error!(error = %e, "storage flush failed; retrying");
            }
        }
    }

    /// Writes every version older than the window *and known committed* to redb, with the new
    /// durable version, in one write transaction; then forgets them in memory and lets the log
    /// pop them.
    ///
    /// The rule: only versions known committed (held durably by every log of the generation)
    /// may become durable. With several logs, the followed log may hold a batch the others
    /// never received; recovery then chooses a version below it and rolls it back, which it
    /// could not do had the batch reached redb. Such batches are applied and readable in memory,
    /// but stay there until [`RedbStorage::advance_committed`] covers them or a roll back drops
    /// them. So the durable version never passes what recovery will choose.
    async fn flush(self: &Arc<Self>) -> Result<()> {
        let (target, clears, keys) = {
            let mut st = self.state()?;
            // A damaged file is not written to again.
            if let Some(e) = &st.damaged {
                return Err(e.clone());
            }
            // Read under the state lock, so a roll back cannot slip in between choosing the
            // target and raising `oldest_readable`. `applied - window <= applied`, so the
            // target is never above what is applied, however far `committed` is.
            let committed = Version(self.committed.load(Ordering::Acquire));
            let target = st
                .applied
                .saturating_sub(self.config.window_versions)
                .min(committed);
            if target <= st.durable {
                return Ok(());
            }
            // From now on no read may need the state between the old durable version and
            // target, which redb is about to lose.
            st.oldest_readable = st.oldest_readable.max(target);
            let (clears, keys) = st.window.flushable(target);
            (target, clears, keys)
        };
        let inner = self.clone();
        let wrote = tokio::task::spawn_blocking(move || inner.write(target, &clears, &keys))
            .await
            .map_err(|e| error(ErrorKind::Unavailable(format!("flush task: {e}"))))?;
        let wrote = self.note(wrote)?;
        {
            // Whether this flush wrote or an overlapping one with a newer target wrote first
            // (redb holds `target` or newer either way), everything up to `target` is durable
            // now: a caller of `flush` that then reads the durable version must see it, even
            // before the other flush updates memory.
            let mut st = self.state()?;
            // `max`: an overlapping flush with a newer target may have got here first.
            st.durable = st.durable.max(target);
            st.window.forget_through(target);
        }
        if !wrote {
            // The flush that wrote pops the log itself.
            return Ok(());
        }
        tracing::debug!(durable = target.0, "storage flushed");
        if self.config.pop_log {
            self.log()?.pop(target).await?;
        }
        Ok(())
    }

    /// Writes `clears`, then `keys`, and `target` as the durable version, in one redb write
    /// transaction, unless redb already holds `target` or newer. Blocking. Returns whether it
    /// wrote.
    fn write(&self, target: Version, clears: &[KeyRange], keys: &[Flushed]) -> Result<bool> {
        // Declared before `db`, so dropped after it, on every path: as long as `close` cannot
        // take the lock, a write may still hold the database.
        let mut writer = self
            .writer
            .lock()
            .map_err(|_| error(ErrorKind::Unavailable("storage poisoned by a panic".into())))?;
        if writer.closed {
            return Err(error(ErrorKind::Unavailable(
                "storage server closed".into(),
            )));
        }
        if target <= writer.durable {
            return Ok(false);
        }
        let db = self.db()?;
        let path = &self.path;
        let doing = "flushing";
        // Guarded inside the writer lock, so a panic in redb does not poison it.
        guarded(path, doing, || {
            let tx = write_tx(&db, path)?;
            {
                let mut data = tx.open_table(DATA).map_err(db_error(path, doing))?;
                for r in clears {
                    data.retain_in::<&[u8], _>(r.begin().as_ref()..r.end().as_ref(), |_, _| false)
                        .map_err(db_error(path, doing))?;
                }
                for (k, v) in keys {
                    match v {
                        Some(v) => {
                            data.insert(k.as_ref(), v.as_ref())
                                .map_err(db_error(path, doing))?;
                        }
                        None => {
                            data.remove(k.as_ref()).map_err(db_error(path, doing))?;
                        }
                    }
                }
                let mut meta = tx.open_table(META).map_err(db_error(path, doing))?;
                meta.insert(DURABLE_VERSION, target.0)
                    .map_err(db_error(path, doing))?;
            }
            // Immediate durability: committed means synced.
            tx.commit().map_err(db_error(path, doing))
        })?;
        writer.durable = target;
        Ok(true)
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

/// Drops a database handle, guarded: closing the last one writes redb's allocator state to the
/// file, which reads the file's system tree, so a damaged file may panic even here.
fn drop_db(path: &Path, db: Option<Arc<redb::Database>>) {
    if let Err(e) = guarded(path, "closing", move || {
        drop(db);
        Ok(())
    }) {
        tracing::error!(error = %e, "storage file damaged; closing it failed");
    }
}

fn decode_entry(version: Version, payload: Bytes) -> Result<(Version, Vec<Mutation>)> {
    let view = TransactionView::parse(payload).map_err(|e| error(ErrorKind::Wire(e)))?;
    let commit = view
        .commit_version()
        .map_err(|e| error(ErrorKind::Wire(e)))?;
    if let Some(commit) = commit
        && commit != version
    {
        return Err(error(ErrorKind::Corruption(format!(
            "log entry {version} carries commit version {commit}"
        ))));
    }
    let mutations = view.mutations().map_err(|e| error(ErrorKind::Wire(e)))?;
    Ok((version, mutations))
}

/// The name a storage file has while it is being created.
fn creating_path(path: &Path) -> std::path::PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(".creating");
    std::path::PathBuf::from(name)
}

/// Creates an empty database at `path` unless one is there, so that it appears complete or
/// not at all. redb creates a file in place, in steps (the file, its length, a header, then
/// its magic number): a crash in between would leave an empty or zero-filled file that every
/// later open refuses. So the database is made under a temporary name, with its tables
/// committed (synced), then renamed into place and the directory synced. A temporary file
/// left by a crash never held anything and is removed.
fn create_if_missing(path: &Path) -> Result<()> {
    if exists(path)? {
        return Ok(());
    }
    let creating = creating_path(path);
    let doing = "creating";
    match std::fs::remove_file(&creating) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            return Err(io_error(&creating, doing, &e));
        }
        _ => {}
    }
    {
        let db = redb::Database::create(&creating).map_err(db_error(&creating, doing))?;
        let tx = write_tx(&db, &creating)?;
        tx.open_table(DATA).map_err(db_error(&creating, doing))?;
        tx.open_table(META).map_err(db_error(&creating, doing))?;
        tx.commit().map_err(db_error(&creating, doing))?;
    }
    std::fs::rename(&creating, path).map_err(|e| io_error(path, doing, &e))?;
    let dir = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| io_error(dir, "syncing the directory", &e))
}

/// Whether `path` exists. Unlike `Path::exists`, which answers `false` whenever it cannot
/// tell, an I/O error (a parent that is not a directory, a directory that cannot be searched)
/// is returned as such: otherwise recovery would take an unreadable file for a missing one,
/// durable at version 0.
fn exists(path: &Path) -> Result<bool> {
    path.try_exists()
        .map_err(|e| io_error(path, "looking for the file", &e))
}

/// The durable version stored in the redb database at `path` (0 when there is none yet),
/// read without starting a server: recovery needs it to know how much history to replay.
/// Blocking; the database must not be open elsewhere.
///
/// The file is only read, never written: redb's writes at open (a repair after a crash, the
/// integrity check's bookkeeping) go to memory ([`ReadOnlyOverlay`]), so recovery can look
/// before it decides anything, and a directory it then refuses is left as it was.
///
/// It runs redb's integrity check first (as [`RedbStorage::open`] does by default), since
/// recovery looks here before anything else: a damaged file is `Corruption` naming the file,
/// found now rather than by a read after recovery chose its plan. No panic escapes: one inside
/// redb is `Corruption` too. A genuine I/O error is `Io`, naming the file.
/// The check reads the whole file: see [`StorageConfig::check_integrity`] for its cost.
pub fn durable_version_at(path: &Path) -> Result<Version> {
    Ok(stored_at(path)?.durable)
}

/// What the storage file at `path` holds: its durable version and the shards it was opened
/// for (both `0`/`None` when there is no file yet). Reads only, as [`durable_version_at`]
/// does, with the same integrity check.
pub fn stored_at(path: &Path) -> Result<Stored> {
    if !exists(path)? {
        return Ok(Stored {
            durable: Version::ZERO,
            shards: None,
        });
    }
    guarded(path, "reading the durable version", || {
        let doing = "reading the durable version";
        let file = std::fs::File::open(path).map_err(|e| io_error(path, doing, &e))?;
        let backend = ReadOnlyOverlay::new(file).map_err(|e| io_error(path, doing, &e))?;
        let mut builder = redb::Builder::new();
        builder.set_check_integrity_on_open(true);
        // An existing file is opened, never initialized: it is not empty (it was created
        // whole, see `create_if_missing`), and an empty one is refused below.
        let db = builder
            .create_with_backend(backend)
            .map_err(db_error(path, doing))?;
        let tx = db.begin_read().map_err(db_error(path, doing))?;
        let durable = match tx.open_table(META) {
            Ok(meta) => {
                let durable = meta.get(DURABLE_VERSION).map_err(db_error(path, doing))?;
                Version(durable.map_or(0, |v| v.value()))
            }
            Err(redb::TableError::TableDoesNotExist(_)) => Version::ZERO,
            Err(e) => return Err(db_error(path, doing)(e)),
        };
        let shards =
            match tx.open_table(SHARDS) {
                Ok(table) => match table.get(SHARDS_KEY).map_err(db_error(path, doing))? {
                    Some(v) => Some(decode_shards(v.value()).ok_or_else(|| {
                        corruption(path, doing, "its shards record cannot be read")
                    })?),
                    None => None,
                },
                Err(redb::TableError::TableDoesNotExist(_)) => None,
                Err(e) => return Err(db_error(path, doing)(e)),
            };
        Ok(Stored { durable, shards })
    })
}

/// A pair read from a redb snapshot, borrowed: copied only if a range read returns it.
struct DurablePair<'a>(
    redb::AccessGuard<'a, &'static [u8]>,
    redb::AccessGuard<'a, &'static [u8]>,
);

impl OlderEntry for DurablePair<'_> {
    fn key(&self) -> &[u8] {
        self.0.value()
    }

    fn into_pair(self) -> (Key, Value) {
        (
            Bytes::copy_from_slice(self.0.value()),
            Bytes::copy_from_slice(self.1.value()),
        )
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
        let opening = path.clone();
        let asked = shards.clone();
        let (db, durable) = tokio::task::spawn_blocking(move || {
            let path = opening;
            let doing = "opening";
            guarded(&path, doing, || {
                create_if_missing(&path)?;
                let db = open_db(&path, config.check_integrity, doing)?;
                let tx = write_tx(&db, &path)?;
                let durable = {
                    tx.open_table(DATA).map_err(db_error(&path, doing))?;
                    let meta = tx.open_table(META).map_err(db_error(&path, doing))?;
                    let durable = meta.get(DURABLE_VERSION).map_err(db_error(&path, doing))?;
                    // The file holds the shards it was first opened for, and no others.
                    let mut table = tx.open_table(SHARDS).map_err(db_error(&path, doing))?;
                    let wanted = encode_shards(&asked);
                    let stored = table
                        .get(SHARDS_KEY)
                        .map_err(db_error(&path, doing))?
                        .map(|v| v.value().to_vec());
                    match stored {
                        Some(stored) if stored != wanted => {
                            return Err(corruption(
                                &path,
                                doing,
                                format!(
                                    "it holds shards {}, not {}: a storage file of another \
                                     server",
                                    decode_shards(&stored)
                                        .map_or_else(|| "(unreadable)".into(), |s| shown(&s)),
                                    shown(&asked)
                                ),
                            ));
                        }
                        Some(_) => {}
                        None => {
                            table
                                .insert(SHARDS_KEY, wanted.as_slice())
                                .map_err(db_error(&path, doing))?;
                        }
                    }
                    Version(durable.map_or(0, |v| v.value()))
                };
                tx.commit().map_err(db_error(&path, doing))?;
                Ok((db, durable))
            })
        })
        .await
        .map_err(|e| error(ErrorKind::Unavailable(format!("open task: {e}"))))??;
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
            applied: watch::Sender::new(durable),
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

    /// Follows `log` from now on, after the applied version. Recovery calls this after
    /// [`StorageServer::roll_back`] to move the server to the logs of the new epoch; entries
    /// already pulled from the old log are dropped.
    pub fn follow(&self, log: Arc<dyn LogServer>) -> Result<()> {
        let mut st = self.inner.state()?;
        *self.inner.log.lock().map_err(|_| {
            error(ErrorKind::Unavailable(
                "storage log poisoned by a panic".into(),
            ))
        })? = log;
        st.generation += 1;
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
        if let Err(e) = tokio::task::spawn_blocking(move || inner.close_db()).await {
            tracing::error!(error = %e, "storage close task failed");
        }
    }

    /// Waits until `version` is applied, however long that takes (bound it with a timeout).
    /// Fails if the server stopped applying.
    pub async fn wait_applied(&self, version: Version) -> Result<()> {
        let mut rx = self.inner.applied.subscribe();
        loop {
            if *rx.borrow_and_update() >= version {
                return Ok(());
            }
            self.inner.state()?.broken()?;
            // A stopped apply loop ends with `failed` set or the server closed; poll for those
            // now and then instead of waiting forever on a version that will not come.
            let _ = tokio::time::timeout(Duration::from_millis(50), rx.changed()).await;
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
        self.inner.check_key(&key)?;
        let snapshot = {
            let mut st = self.inner.state_at(version).await?;
            match st.window.get(&key, version) {
                Answer::Value(v) => return Ok(Some(v)),
                Answer::Deleted => return Ok(None),
                // The snapshot is taken under the lock: a flush cannot commit in between.
                Answer::Unknown => self.inner.begin_read(&mut st)?,
            }
        };
        let inner = self.inner.clone();
        let read = tokio::task::spawn_blocking(move || {
            let path = &inner.path;
            let doing = &format!("reading {}", printable(&key));
            // The snapshot moves in, so a panic drops it inside the guard.
            guarded(path, doing, move || {
                let table = snapshot.open_table(DATA).map_err(db_error(path, doing))?;
                let value = table.get(key.as_ref()).map_err(db_error(path, doing))?;
                Ok(value.map(|v| Bytes::copy_from_slice(v.value())))
            })
        })
        .await
        .map_err(|e| error(ErrorKind::Unavailable(format!("read task: {e}"))))?;
        self.inner.note(read)
    }

    async fn get_range(
        &self,
        range: KeyRange,
        version: Version,
        limit: usize,
        reverse: bool,
    ) -> Result<RangeRead> {
        if !self
            .inner
            .shards
            .iter()
            .any(|s| s.begin() <= range.begin() && range.end() <= s.end())
        {
            return Err(error(ErrorKind::WrongShard {
                key: format!("{range}"),
            }));
        }
        let (window, clears, snapshot) = {
            let mut st = self.inner.state_at(version).await?;
            let window = st.window.scan(&range, version);
            let clears = st.window.clears_in(&range, version);
            (window, clears, self.inner.begin_read(&mut st)?)
        };
        let inner = self.inner.clone();
        let read = tokio::task::spawn_blocking(move || {
            let path = &inner.path;
            let doing = &format!("reading {range}");
            // The snapshot moves in, so a panic drops it inside the guard.
            guarded(path, doing, move || -> Result<RangeRead> {
                let table = snapshot.open_table(DATA).map_err(db_error(path, doing))?;
                let durable = table
                    .range::<&[u8]>(range.begin().as_ref()..range.end().as_ref())
                    .map_err(db_error(path, doing))?
                    .map(|item| item.map(|(key, value)| DurablePair(key, value)));
                // The window is newer than redb, and its range clears hide what redb holds.
                merge(
                    window,
                    durable,
                    |key: &[u8]| clears.iter().any(|c| c.contains(key)),
                    Direction::from_reverse(reverse),
                    limit,
                )
                .map_err(db_error(path, doing))
            })
        })
        .await
        .map_err(|e| error(ErrorKind::Unavailable(format!("read task: {e}"))))?;
        self.inner.note(read)
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
        self.inner.committed.store(version.0, Ordering::Release);
        st.generation += 1;
        self.inner.applied.send_replace(st.applied);
        tracing::info!(version = version.0, "storage rolled back");
        Ok(())
    }
}
