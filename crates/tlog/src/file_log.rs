//! The [`FileLog`] handle: opening a log directory (locking it, recovering it, starting the
//! writer thread), and the [`LogServer`] calls: a push is admitted along the chain and queued
//! for the writer, a pull reads the index (and the disk for payloads no longer cached), a lock
//! stores the epoch, a pop removes whole segments.
//!
//! The other jobs are each in their own file: [`FileLogConfig`] in `config.rs`, the index in
//! `index.rs`, segment files in `segment.rs`, the writer thread in `writer.rs`, the spare
//! segment in `spare.rs`, recovery in `recover.rs`, the manifest and epoch files in `meta.rs`.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use async_trait::async_trait;
use bytes::Bytes;
use strata_core::{
    Epoch, ErrorKind, LogEntry, LogId, LogServer, LogState, Result, Version, buggify,
};
use tokio::sync::{Semaphore, oneshot};

use crate::chain::Chain;
use crate::config::{FileLogConfig, QUEUE_UNIT_BYTES, queue_units};
use crate::error::{corruption, error, io_error, missing_log};
use crate::format::{
    RECORD_HEADER_BYTES, RecordHeader, SEGMENT_HEADER_BYTES, le_u64, record_is_intact,
};
use crate::fs::{Fs, RealFs};
use crate::index::{Index, Placed};
use crate::meta::{read_epoch, write_epoch, write_manifest};
use crate::recover::{Recovered, recover};
use crate::resync;
use crate::segment::Segment;
use crate::writer::{Queue, Running, Sent, Write, Writer};

/// What [`FileLog::open_dir`] does when the directory holds no log yet.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OpenMode {
    /// Create a new log whose first push names this version as its predecessor.
    Create(Version),
    /// Refuse: the log must exist (a missing one is `Corruption`), and hold `committed`, a
    /// version known committed (`Version::ZERO` when none is known). The records past the end
    /// of a log's valid prefix are dropped as a torn write only when the prefix still reaches
    /// `committed`: if dropping them would lose a committed version, they were acknowledged,
    /// so they are damaged, not torn, and the open is `Corruption` with nothing repaired.
    Existing {
        /// A version the log must hold.
        committed: Version,
    },
    /// Read the log that must exist, changing nothing: checked as [`OpenMode::Existing`]
    /// (including `committed`), but what a crash leaves is left as it is — a torn write at the
    /// end is ignored rather than cut off, a segment torn at its creation is skipped rather
    /// than removed, the crash's temporary files stay — the directory's `LOCK` file is not
    /// created (it is locked when there is one), no writer starts, and `push`, `lock` and
    /// `pop` are refused. For tools that look at a cluster at rest.
    ReadOnly {
        /// A version the log must hold.
        committed: Version,
    },
}

impl OpenMode {
    /// The version known committed the log must hold (none for a new log).
    fn committed(self) -> Version {
        match self {
            OpenMode::Create(_) => Version::ZERO,
            OpenMode::Existing { committed } | OpenMode::ReadOnly { committed } => committed,
        }
    }
}

/// What the log's handle, its writer thread and its spare helper share.
#[derive(Debug)]
pub(crate) struct Shared {
    pub(crate) id: LogId,
    pub(crate) dir: PathBuf,
    pub(crate) fs: Arc<dyn Fs>,
    pub(crate) config: FileLogConfig,
    pub(crate) chain: Chain,
    pub(crate) index: Mutex<Index>,
    pub(crate) queue: Arc<Semaphore>,
    /// The segment the manifest must name before the log changes anything, when opening an
    /// existing log found it unnamed (a directory written before manifests existed, or a crash
    /// between a roll's segment and its manifest). Written by the first `lock` or push, not by
    /// the open: a log that is only read (`strata check`, a recovery that then refuses the
    /// directory) is left as it was.
    pub(crate) manifest_pending: Mutex<Option<Version>>,
    /// Opened with [`OpenMode::ReadOnly`]: nothing may change the directory.
    pub(crate) read_only: bool,
    /// Set once a poisoned log's directory was written again and synced at its close.
    pub(crate) resynced: std::sync::atomic::AtomicBool,
}

impl Shared {
    /// Writes the manifest an open left pending, once.
    pub(crate) fn settle_manifest(&self) -> Result<()> {
        let mut pending = self
            .manifest_pending
            .lock()
            .map_err(|_| error(ErrorKind::Unavailable("log manifest poisoned".into())))?;
        if let Some(base) = *pending {
            write_manifest(self.fs.as_ref(), &self.dir, self.id, base).map_err(io_error)?;
            *pending = None;
        }
        Ok(())
    }

    pub(crate) fn index(&self) -> Result<MutexGuard<'_, Index>> {
        self.index.lock().map_err(|_| {
            error(ErrorKind::Unavailable(
                "log index poisoned by a panic".into(),
            ))
        })
    }
}

/// A durable, group-committed log in segment files: the [`LogServer`] Strata's commit path
/// pushes every batch to.
///
/// One writer thread takes everything queued, appends it to the current segment, syncs once
/// (`fdatasync`) and only then answers every push it wrote: concurrent pushes share syncs.
/// Opening a directory recovers it (see the crate docs for the format and the recovery rules).
///
/// ```
/// use strata_core::{Epoch, LogId, LogServer, Version};
/// use strata_tlog::{FileLog, FileLogConfig};
///
/// # tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap().block_on(async {
/// let dir = tempfile::tempdir().unwrap();
/// let log = FileLog::open(dir.path(), LogId(1), Version(0), FileLogConfig::default())?;
/// log.push(Epoch(1), Version(0), Version(10), "batch at 10".into()).await?; // on disk now
/// drop(log);
///
/// let log = FileLog::open(dir.path(), LogId(1), Version(0), FileLogConfig::default())?;
/// let entries = log.pull(Version(0), 100).await?;
/// assert_eq!(entries[0].payload, "batch at 10");
/// # Ok::<(), strata_core::Error>(())
/// # }).unwrap();
/// ```
#[derive(Debug)]
pub struct FileLog {
    shared: Arc<Shared>,
    to_writer: Mutex<Option<Queue>>,
    writer: Mutex<Option<Running>>,
    /// Held (locked) while the log is open; see [`FileLog::open`].
    dir_lock: Mutex<Option<std::fs::File>>,
}

impl FileLog {
    /// Opens (recovering) or creates the log in `dir` on the real file system. A new log's
    /// first push must name `start` as its predecessor; an existing log ignores `start`.
    ///
    /// The directory is locked (an exclusive lock on its `LOCK` file) for as long as the log
    /// is open: a second `FileLog` on the same directory, in this process or another, is
    /// refused, since two writers would interleave their records.
    pub fn open(dir: &Path, id: LogId, start: Version, config: FileLogConfig) -> Result<FileLog> {
        FileLog::open_dir(Arc::new(RealFs), dir, id, OpenMode::Create(start), config)
    }

    /// Opens (recovering) the log that must already be in `dir`: a missing directory, or one
    /// that holds no segment, is `Corruption` naming it, never a new empty log. Recovery opens
    /// the logs the coordinated state names this way, because a log that is gone held
    /// acknowledged commits. Locks the directory as [`FileLog::open`] does.
    pub fn open_existing(dir: &Path, id: LogId, config: FileLogConfig) -> Result<FileLog> {
        FileLog::open_dir(
            Arc::new(RealFs),
            dir,
            id,
            OpenMode::Existing {
                committed: Version::ZERO,
            },
            config,
        )
    }

    /// [`FileLog::open`] or [`FileLog::open_existing`] (by `mode`) with disk I/O through `fs`,
    /// which must be a file system over the real disk (the directory lock is a real file):
    /// tests wrap [`RealFs`] to fail a sync of a real log.
    pub fn open_dir(
        fs: Arc<dyn Fs>,
        dir: &Path,
        id: LogId,
        mode: OpenMode,
        config: FileLogConfig,
    ) -> Result<FileLog> {
        match mode {
            OpenMode::Create(_) => std::fs::create_dir_all(dir).map_err(io_error)?,
            OpenMode::Existing { .. } | OpenMode::ReadOnly { .. } => match std::fs::metadata(dir) {
                Ok(m) if m.is_dir() => {}
                Ok(_) => return Err(missing_log(dir, "is not a directory")),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                    return Err(missing_log(dir, "is missing"));
                }
                Err(e) => return Err(io_error(e)),
            },
        }
        let read_only = matches!(mode, OpenMode::ReadOnly { .. });
        let lock = match std::fs::OpenOptions::new()
            .create(!read_only)
            .truncate(false)
            .write(!read_only)
            .read(read_only)
            .open(dir.join("LOCK"))
        {
            Ok(lock) => Some(lock),
            // A reader creates nothing; with no LOCK file there is no other log to exclude
            // that this process's directory lock does not exclude already.
            Err(e) if read_only && e.kind() == std::io::ErrorKind::NotFound => None,
            Err(e) => return Err(io_error(e)),
        };
        match lock.as_ref().map_or(Ok(()), std::fs::File::try_lock) {
            Ok(()) => {}
            Err(std::fs::TryLockError::WouldBlock) => {
                return Err(error(ErrorKind::Unavailable(format!(
                    "log directory {} is in use by another log",
                    dir.display()
                ))));
            }
            Err(std::fs::TryLockError::Error(e)) => return Err(io_error(e)),
        }
        let log = FileLog::open_mode(fs, dir, id, mode, config)?;
        if let Ok(mut held) = log.dir_lock.lock() {
            *held = lock;
        }
        Ok(log)
    }

    /// [`FileLog::open`] on the given file system, without the directory lock (for
    /// [`crate::fs::SimFs`], whose paths are not on the disk).
    pub fn open_with(
        fs: Arc<dyn Fs>,
        dir: &Path,
        id: LogId,
        start: Version,
        config: FileLogConfig,
    ) -> Result<FileLog> {
        FileLog::open_mode(fs, dir, id, OpenMode::Create(start), config)
    }

    fn open_mode(
        fs: Arc<dyn Fs>,
        dir: &Path,
        id: LogId,
        mode: OpenMode,
        config: FileLogConfig,
    ) -> Result<FileLog> {
        config.validate()?;
        if let OpenMode::Create(_) = mode {
            fs.create_dir_all(dir).map_err(io_error)?;
        }
        let read_only = matches!(mode, OpenMode::ReadOnly { .. });
        if read_only {
            if resync::is_marked(&fs.list(dir).map_err(io_error)?) {
                tracing::warn!(log = id.0, dir = %dir.display(), "reading a log whose last sync failed: what it holds past that sync may not be on disk");
            }
        } else if resync::resync_if_marked(fs.as_ref(), dir).map_err(io_error)? {
            tracing::info!(log = id.0, dir = %dir.display(), "log written again and synced after a failed sync");
        }
        let epoch = read_epoch(fs.as_ref(), dir)?;
        let recovered = recover_to_serve(fs.as_ref(), dir, id, &config, mode, read_only)?;
        let start = match mode {
            OpenMode::Create(start) => start,
            OpenMode::Existing { .. } | OpenMode::ReadOnly { .. }
                if recovered.segments.is_empty() =>
            {
                return Err(missing_log(dir, "holds no segment"));
            }
            OpenMode::Existing { .. } | OpenMode::ReadOnly { .. } => Version::ZERO,
        };
        let last = recovered.last.unwrap_or(start);
        let queue_units_max = config.queue_bytes_max / QUEUE_UNIT_BYTES;
        let shared = Arc::new(Shared {
            id,
            dir: dir.to_owned(),
            fs,
            config,
            chain: Chain::new(epoch, last),
            index: Mutex::new(Index {
                uncached: recovered.entries.len(),
                segments: recovered.segments,
                entries: recovered.entries,
                cached_bytes: 0,
            }),
            queue: Arc::new(Semaphore::new(queue_units_max)),
            manifest_pending: Mutex::new(None),
            read_only,
            resynced: std::sync::atomic::AtomicBool::new(false),
        });
        shared.chain.set_durable(last);
        let (active, write_at) = {
            let mut index = shared.index()?;
            match index.segments.last() {
                Some(s) => (s.clone(), recovered.data_end),
                None => {
                    let s =
                        Segment::create(shared.fs.as_ref(), dir, id, start).map_err(io_error)?;
                    index.segments.push(s.clone());
                    (s, SEGMENT_HEADER_BYTES as u64)
                }
            }
        };
        // The manifest must name the segment the writer starts in before a record goes there.
        // It already does unless this is a new log, a directory written before the manifest
        // existed, or a crash came between a roll's new segment and its manifest.
        if recovered.named != Some(active.base) {
            match mode {
                OpenMode::Create(_) => {
                    write_manifest(shared.fs.as_ref(), dir, id, active.base).map_err(io_error)?;
                }
                OpenMode::Existing { .. } => {
                    if let Ok(mut pending) = shared.manifest_pending.lock() {
                        *pending = Some(active.base);
                    }
                }
                // Nothing will be written, so nothing needs naming.
                OpenMode::ReadOnly { .. } => {}
            }
        }
        if read_only {
            tracing::info!(log = id.0, dir = %dir.display(), last = last.0, "log opened to read");
            return Ok(FileLog {
                shared,
                to_writer: Mutex::new(None),
                writer: Mutex::new(None),
                dir_lock: Mutex::new(None),
            });
        }
        // Zeros written ahead of the data (a zero-filled segment, or a torn group zeroed by
        // recovery) are room to overwrite.
        let room_end = active.file.len().map_err(io_error)?.max(write_at);
        tracing::info!(log = id.0, dir = %dir.display(), last = last.0, "log opened");

        let (tx, handle) =
            Writer::start(shared.clone(), last, active, write_at, room_end).map_err(io_error)?;
        Ok(FileLog {
            shared,
            to_writer: Mutex::new(Some(tx)),
            writer: Mutex::new(Some(handle)),
            dir_lock: Mutex::new(None),
        })
    }

    /// The epoch the log is locked with (stored durably; 0 for a log never locked).
    pub fn locked_epoch(&self) -> Result<Epoch> {
        self.shared.chain.locked()
    }

    /// The newest durable version the log holds.
    pub fn last_version(&self) -> Version {
        self.shared.chain.durable()
    }

    /// The number of segment files the log holds.
    pub fn segment_count(&self) -> Result<usize> {
        Ok(self.shared.index()?.segments.len())
    }

    /// Whether a failed write or sync poisoned the log.
    pub fn is_poisoned(&self) -> bool {
        self.shared.chain.is_poisoned()
    }

    /// What poisoned the log, if it is: the first failed write or sync, as the text that every
    /// later `Poisoned` error of this log carries.
    pub fn poisoned_by(&self) -> Option<String> {
        self.shared.chain.poisoned_by()
    }

    /// `Unavailable` for a log opened read-only, before `what` changes anything.
    fn writable(&self, what: &str) -> Result<()> {
        if self.shared.read_only {
            return Err(error(ErrorKind::Unavailable(format!(
                "log {} is open to read only: no {what}",
                self.shared.dir.display()
            ))));
        }
        Ok(())
    }

    fn sender(&self) -> Result<Queue> {
        self.to_writer
            .lock()
            .ok()
            .and_then(|tx| tx.clone())
            .ok_or_else(|| error(ErrorKind::Unavailable("log closed".into())))
    }

    fn read_entries(&self, after: Version, limit: usize) -> Result<Vec<LogEntry>> {
        let wanted: Vec<(Placed, Segment)> = {
            let index = self.shared.index()?;
            let oldest = index.segments.first().map_or(Version::ZERO, |s| s.base);
            if after < oldest {
                return Err(error(ErrorKind::TooOld {
                    version: after,
                    oldest,
                }));
            }
            let from = index.entries.partition_point(|e| e.version <= after);
            index
                .entries
                .range(from..)
                .take(limit)
                .filter_map(|e| Some((e.clone(), index.segment_of(e.version)?.clone())))
                .collect()
        };
        wanted
            .into_iter()
            .map(|(e, segment)| {
                if let Some(payload) = e.cached {
                    return Ok(LogEntry {
                        version: e.version,
                        previous_version: e.previous,
                        payload,
                    });
                }
                let mut record = vec![0u8; RECORD_HEADER_BYTES + e.payload_len as usize];
                segment
                    .file
                    .read_exact_at(&mut record, e.offset)
                    .map_err(io_error)?;
                // Recovery checked this record, but the disk may have damaged it since.
                if !record_is_intact(&record, segment.format)
                    || le_u64(&record[8..16]) != e.version.0
                {
                    return Err(corruption(
                        &segment.path,
                        e.offset,
                        "record changed on disk",
                    ));
                }
                Ok(LogEntry {
                    version: e.version,
                    previous_version: e.previous,
                    payload: Bytes::from(record).slice(RECORD_HEADER_BYTES..),
                })
            })
            .collect()
    }
}

impl FileLog {
    /// Stops the log: the writer finishes what it holds, later pushes are `Unavailable`, and
    /// the directory is unlocked for the next opener, even while handles to this log remain.
    /// Blocks until the writer has stopped.
    ///
    /// A log poisoned by a failed write or sync has its directory written again and synced
    /// before it is unlocked (see [`FileLog::close_resynced`]); a failure there is logged, and
    /// the `resync` marker the writer left makes the next open try again.
    pub fn close(&self) {
        if let Err(e) = self.close_resynced() {
            tracing::error!(log = self.shared.id.0, error = %e, "could not write a poisoned log again at its close");
        }
    }

    /// [`FileLog::close`], returning the error of making a poisoned log's directory durable
    /// again, if that failed (it is tried again at each call, and the directory stays locked
    /// meanwhile). Linux counts the pages a failed sync could not write back clean: the page
    /// cache may hold records the disk never got, and no later sync would write them, so the
    /// next open would serve them though a power loss can take them. The segments, `manifest`
    /// and `epoch` are written again from what reads return and synced, then the directory.
    /// The writer's `resync` marker does the same at the next open, but making it may have
    /// failed on the same disk: a caller that reopens a poisoned log calls this first.
    ///
    /// ```
    /// use std::path::Path;
    /// use std::sync::Arc;
    /// use strata_core::{LogId, Version};
    /// use strata_tlog::fs::SimFs;
    /// use strata_tlog::{FileLog, FileLogConfig};
    ///
    /// let fs = Arc::new(SimFs::new());
    /// let log = FileLog::open_with(fs, Path::new("/log"), LogId(1), Version(0), FileLogConfig::default())?;
    /// log.close_resynced()?; // a log that was not poisoned closes as `close` does
    /// # Ok::<(), strata_core::Error>(())
    /// ```
    pub fn close_resynced(&self) -> Result<()> {
        // Closing the queue lets the writer finish what it holds and stop.
        if let Ok(mut tx) = self.to_writer.lock() {
            tx.take();
        }
        // Held to the end, so that a second close at the same time waits for this one: it
        // must not unlock the directory before the writer stopped and the rewrite is done.
        let mut writer = self.writer.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(running) = writer.take() {
            running.stop();
        }
        let resynced = &self.shared.resynced;
        if !self.shared.read_only
            && self.shared.chain.is_poisoned()
            && !resynced.load(std::sync::atomic::Ordering::Acquire)
        {
            resync::resync(self.shared.fs.as_ref(), &self.shared.dir).map_err(io_error)?;
            resynced.store(true, std::sync::atomic::Ordering::Release);
        }
        if let Ok(mut lock) = self.dir_lock.lock() {
            lock.take();
        }
        drop(writer);
        Ok(())
    }
}

impl Drop for FileLog {
    fn drop(&mut self) {
        self.close();
    }
}

#[async_trait]
impl LogServer for FileLog {
    fn id(&self) -> LogId {
        self.shared.id
    }

    async fn push(
        &self,
        epoch: Epoch,
        previous_version: Version,
        version: Version,
        payload: Bytes,
    ) -> Result<()> {
        self.writable("push")?;
        let config = &self.shared.config;
        if payload.len() > config.payload_bytes_max {
            return Err(error(ErrorKind::InvalidRequest(format!(
                "payload of {} bytes is over the limit of {}",
                payload.len(),
                config.payload_bytes_max
            ))));
        }
        let units = queue_units(payload.len());
        // Room is usually there: take it without arming a timer.
        let room = match self.shared.queue.clone().try_acquire_many_owned(units) {
            Ok(room) => room,
            Err(_) => tokio::time::timeout(
                config.queue_wait,
                self.shared.queue.clone().acquire_many_owned(units),
            )
            .await
            .map_err(|_| {
                error(ErrorKind::Overloaded(format!(
                    "the log's queue stayed full for {} ms",
                    config.queue_wait.as_millis()
                )))
            })?
            .map_err(|_| error(ErrorKind::Unavailable("log closed".into())))?,
        };

        if self
            .shared
            .manifest_pending
            .lock()
            .is_ok_and(|p| p.is_some())
        {
            self.shared.settle_manifest()?;
        }
        let tx = self.sender()?;
        let header = RecordHeader::new(version, previous_version, &payload);
        let (ack, answer) = oneshot::channel();
        // A log found idle hands the push back: it writes and syncs itself, blocking this
        // thread for one sync instead of waking the writer's and waiting to be woken back
        // (see `writer.rs`). The writer is released before anything else is awaited.
        if let Sent::Lead(led) = self
            .shared
            .chain
            .admit(
                epoch,
                previous_version,
                version,
                config.predecessor_wait,
                || {
                    tx.send(Write {
                        version,
                        previous: previous_version,
                        header,
                        payload,
                        ack,
                        _room: room,
                    })
                    .map_err(|_| error(ErrorKind::Unavailable("log writer stopped".into())))
                },
            )
            .await?
        {
            led.write();
        }
        answer
            .await
            .map_err(|_| error(ErrorKind::Unavailable("log writer stopped".into())))?
    }

    async fn pull(&self, after: Version, limit: usize) -> Result<Vec<LogEntry>> {
        let limit = if buggify::fires("tlog.pull.short") {
            limit.min(1)
        } else {
            limit
        };
        let found = self.read_entries(after, limit)?;
        if !found.is_empty() || limit == 0 {
            return Ok(found);
        }
        self.shared
            .chain
            .wait_durable_after(after, self.shared.config.pull_wait)
            .await;
        self.read_entries(after, limit)
    }

    async fn lock(&self, epoch: Epoch) -> Result<LogState> {
        self.writable("lock")?;
        self.shared.settle_manifest()?;
        let previous = self.shared.chain.locked()?;
        self.shared.chain.lock(epoch)?;
        if epoch != previous {
            write_epoch(self.shared.fs.as_ref(), &self.shared.dir, epoch)?;
        }
        // Pushes accepted before the lock still land; report what the log holds once they did.
        self.shared
            .chain
            .wait_drained(self.shared.config.queue_wait)
            .await?;
        let index = self.shared.index()?;
        Ok(LogState {
            epoch,
            first_version: index.entries.front().map(|e| e.version),
            last_version: self.shared.chain.durable(),
        })
    }

    async fn pop(&self, version: Version) -> Result<()> {
        self.writable("pop")?;
        let removed: Vec<Segment> = {
            let mut index = self.shared.index()?;
            // Segment i holds versions up to the next one's base; the last is never removed.
            let keep_from = match index.segments.get(1..) {
                Some(later) => later.partition_point(|next| next.base < version),
                None => 0,
            };
            let removed: Vec<Segment> = index.segments.drain(..keep_from).collect();
            if let Some(first) = index.segments.first() {
                let base = first.base;
                index.pop_front_while(|e| e.version <= base);
            }
            removed
        };
        if removed.is_empty() {
            return Ok(());
        }
        for s in &removed {
            self.shared.fs.remove(&s.path).map_err(io_error)?;
        }
        self.shared
            .fs
            .sync_dir(&self.shared.dir)
            .map_err(io_error)?;
        tracing::debug!(
            log = self.shared.id.0,
            segments = removed.len(),
            below = version.0,
            "popped"
        );
        Ok(())
    }
}

/// [`recover`]s the log in `dir` for an open in `mode`; when the open may write, then makes the
/// newest segment durable before anything is served from it, and leaves the resync marker when
/// a sync on the way failed.
fn recover_to_serve(
    fs: &dyn Fs,
    dir: &Path,
    id: LogId,
    config: &FileLogConfig,
    mode: OpenMode,
    read_only: bool,
) -> Result<Recovered> {
    let recovered = recover(
        fs,
        dir,
        id,
        config.payload_bytes_max,
        mode.committed(),
        !read_only,
    )
    .and_then(|recovered| {
        if !read_only && let Some(newest) = recovered.segments.last() {
            // What a process wrote and never synced before it died is read like the rest
            // (from the page cache, or the disk's cache), and the log is about to serve it as
            // held: make it durable first, so that a power loss cannot take what recovery
            // counted. Only the newest segment can hold any: a roll syncs the one before.
            newest.file.sync_data().map_err(io_error)?;
        }
        Ok(recovered)
    });
    match recovered {
        // A sync that failed here (this one, or a repair's) leaves its pages clean but not on
        // disk, where the next open would read them and sync nothing: leave the marker that
        // makes it write the directory again first, as a failed group commit does.
        Err(e) if !read_only && matches!(e.kind, ErrorKind::Io(_)) => {
            if let Err(m) = resync::mark(fs, dir) {
                tracing::error!(log = id.0, error = %m, "could not mark the log for a resync");
            }
            Err(e)
        }
        recovered => recovered,
    }
}
