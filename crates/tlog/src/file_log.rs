//! The durable log: segment files, one writer thread with group commit, recovery on open.

use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{Receiver, Sender, TryRecvError};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use strata_core::{
    Epoch, Error, ErrorKind, LogEntry, LogId, LogServer, LogState, Result, Stage, Version,
};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, oneshot};

use crate::chain::{Chain, error};
use crate::format::{
    GROUP_END, MANIFEST_BYTES, Manifest, RECORD_HEADER_BYTES, RecordHeader, SEGMENT_FORMAT,
    SEGMENT_HEADER_BYTES, ScanEnd, SegmentFate, SegmentHeader, le_u32, le_u64, record_is_intact,
    scan_segment, segment_fate,
};
use crate::fs::{Fs, FsFile, RealFs};

const SEGMENT_SUFFIX: &str = ".seg";
const EPOCH_FILE: &str = "epoch";
const EPOCH_TMP_FILE: &str = "epoch.tmp";
const EPOCH_MAGIC: [u8; 4] = *b"STEP";
/// Names the newest segment that may hold records; see the crate docs.
const MANIFEST_FILE: &str = "manifest";
const MANIFEST_TMP_FILE: &str = "manifest.tmp";
/// A zero-filled segment being prepared, or ready, for the writer to roll into.
const SPARE_FILE: &str = "spare.zeroed";
/// A new segment's file before it is renamed into place.
const NEW_SEGMENT_FILE: &str = "segment.new";
/// Zeros are written to a spare in pieces of this size, each synced, so that the disk's queue
/// never holds much of it ahead of the log's own syncs.
const SPARE_PIECE_BYTES: usize = 1 << 20;
/// The smallest spare segment (unless `segment_bytes` is smaller).
const SPARE_BYTES_MIN: u64 = 1 << 20;

/// Tuning and limits of a [`FileLog`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FileLogConfig {
    /// A new segment file is started when a record would take the current one past this size.
    /// Zero-filled segments start smaller (four times what the log wrote into the segment
    /// before, at least 1 MiB) and double up to this size.
    pub segment_bytes: u64,
    /// Largest payload a push may carry.
    pub payload_bytes_max: usize,
    /// Largest number of payload bytes queued for the writer; a push waits for room.
    pub queue_bytes_max: usize,
    /// Largest number of bytes one group commit writes before its sync.
    pub group_bytes_max: usize,
    /// Whether the writer, finding fewer pushes queued than its last group held, waits (at
    /// most half a sync) for the rest of that group's pushers before it writes.
    ///
    /// It pays when pushers come back quickly after their answer (in well under the fixed cost
    /// of a sync, about 85 µs on the project's test machine), as a closed loop of direct
    /// pushers does: one sync instead of two. When they take longer (Strata's commit
    /// pipeline: a proxy answers its clients, they begin and commit new transactions, the next
    /// batch is resolved, about 100 µs), waiting only idles the disk; without the wait, the
    /// pushes that arrive during one sync form the next group and the disk stays busy. The
    /// README has both measurements.
    pub gather_stragglers: bool,
    /// How long a push that arrived before its predecessor waits for it.
    pub predecessor_wait: Duration,
    /// How long a push waits for room in a full queue before it is refused as overloaded.
    pub queue_wait: Duration,
    /// How long a pull with nothing to return waits for a new entry.
    pub pull_wait: Duration,
    /// Payload bytes of the newest entries kept in memory, so that followers close behind the
    /// log (storage servers) pull without a disk read or a copy.
    pub pull_cache_bytes: usize,
    /// Whether segments are written full of zeros (by a helper thread, ahead of need) before
    /// records go into them. A sync then only commits data, no file-size change, which on
    /// ext4 takes about half as long. Each log keeps at most one spare segment on disk for it;
    /// spares grow with use, up to `segment_bytes` (see `segment_bytes`). Turn it off on file
    /// systems that never overwrite in place (btrfs, ZFS), where it only costs the zeros.
    pub preallocate: bool,
}

impl Default for FileLogConfig {
    fn default() -> FileLogConfig {
        FileLogConfig {
            segment_bytes: 64 << 20,
            payload_bytes_max: 16 << 20,
            queue_bytes_max: 64 << 20,
            group_bytes_max: 8 << 20,
            gather_stragglers: true,
            predecessor_wait: Duration::from_secs(1),
            queue_wait: Duration::from_secs(5),
            pull_wait: Duration::from_millis(100),
            pull_cache_bytes: 64 << 20,
            preallocate: true,
        }
    }
}

impl FileLogConfig {
    /// Checks the limits against each other; [`FileLog::open`] refuses a configuration that fails.
    pub fn validate(&self) -> Result<()> {
        let invalid = |what: &str| Err(error(ErrorKind::InvalidRequest(what.into())));
        if self.payload_bytes_max > self.queue_bytes_max {
            return invalid("payload_bytes_max must not exceed queue_bytes_max");
        }
        if self.payload_bytes_max >= GROUP_END as usize {
            return invalid("payload_bytes_max must be below 2 GiB");
        }
        if self.queue_bytes_max / QUEUE_UNIT_BYTES >= Semaphore::MAX_PERMITS {
            return invalid("queue_bytes_max is too large");
        }
        if self.segment_bytes <= SEGMENT_HEADER_BYTES as u64 {
            return invalid("segment_bytes must exceed the segment header");
        }
        if usize::try_from(self.segment_bytes).is_err() {
            return invalid("segment_bytes must fit in memory (recovery reads a segment whole)");
        }
        Ok(())
    }
}

/// Queue room is counted in units of this many bytes.
const QUEUE_UNIT_BYTES: usize = 1024;

fn queue_units(payload_len: usize) -> u32 {
    let units = (payload_len + RECORD_HEADER_BYTES).div_ceil(QUEUE_UNIT_BYTES);
    u32::try_from(units).unwrap_or(u32::MAX)
}

fn io_error(e: std::io::Error) -> Error {
    Error::io(Stage::Log, e)
}

fn corruption(path: &Path, offset: u64, why: &str) -> Error {
    error(ErrorKind::Corruption(format!(
        "{} at offset {offset}: {why}",
        path.display()
    )))
}

fn missing_log(dir: &Path, what: &str) -> Error {
    error(ErrorKind::Corruption(format!(
        "log directory {} {what}: the log it held is lost",
        dir.display()
    )))
}

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
}

/// One segment file.
#[derive(Clone, Debug)]
struct Segment {
    base: Version,
    path: PathBuf,
    file: Arc<dyn FsFile>,
    /// The format its records are in (format 1 segments are only read).
    format: u16,
}

/// Where one durable entry is.
#[derive(Clone, Debug)]
struct Placed {
    version: Version,
    previous: Version,
    offset: u64,
    payload_len: u32,
    /// The payload, while it is among the newest `pull_cache_bytes`.
    cached: Option<Bytes>,
}

/// The durable entries and the segments holding them.
#[derive(Debug)]
struct Index {
    segments: Vec<Segment>,
    entries: VecDeque<Placed>,
    /// How many entries at the front have no cached payload (the cache holds a suffix).
    uncached: usize,
    cached_bytes: usize,
}

impl Index {
    /// Appends durable entries and evicts the oldest cached payloads beyond `limit` bytes.
    fn append(&mut self, placed: Vec<Placed>, limit: usize) {
        for p in placed {
            self.cached_bytes += p.cached.as_ref().map_or(0, Bytes::len);
            self.entries.push_back(p);
        }
        while self.cached_bytes > limit && self.uncached < self.entries.len() {
            if let Some(p) = self.entries.get_mut(self.uncached) {
                self.cached_bytes -= p.cached.take().map_or(0, |b| b.len());
            }
            self.uncached += 1;
        }
    }

    /// Drops entries from the front while `drop` says so.
    fn pop_front_while(&mut self, drop: impl Fn(&Placed) -> bool) {
        while self.entries.front().is_some_and(&drop) {
            if let Some(p) = self.entries.pop_front() {
                self.cached_bytes -= p.cached.map_or(0, |b| b.len());
            }
            self.uncached = self.uncached.saturating_sub(1);
        }
    }

    /// The segment holding `version`.
    fn segment_of(&self, version: Version) -> Option<&Segment> {
        let i = self.segments.partition_point(|s| s.base < version);
        self.segments.get(i.checked_sub(1)?)
    }
}

#[derive(Debug)]
struct Shared {
    id: LogId,
    dir: PathBuf,
    fs: Arc<dyn Fs>,
    config: FileLogConfig,
    chain: Chain,
    index: Mutex<Index>,
    queue: Arc<Semaphore>,
    /// The segment the manifest must name before the log changes anything, when opening an
    /// existing log found it unnamed (a directory written before manifests existed, or a crash
    /// between a roll's segment and its manifest). Written by the first `lock` or push, not by
    /// the open: a log that is only read (`strata check`, a recovery that then refuses the
    /// directory) is left as it was.
    manifest_pending: Mutex<Option<Version>>,
}

impl Shared {
    /// Writes the manifest an open left pending, once.
    fn settle_manifest(&self) -> Result<()> {
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

    fn index(&self) -> Result<MutexGuard<'_, Index>> {
        self.index.lock().map_err(|_| {
            error(ErrorKind::Unavailable(
                "log index poisoned by a panic".into(),
            ))
        })
    }

    /// Creates an empty segment (records are appended to it).
    fn create_segment(&self, base: Version) -> std::io::Result<Segment> {
        let tmp = self.dir.join(NEW_SEGMENT_FILE);
        remove_if_present(self.fs.as_ref(), &tmp)?;
        let file = self.fs.create(&tmp)?;
        self.install_segment(file, &tmp, base)
    }

    /// Makes `file` (at `tmp`, empty or zero-filled) the segment starting after `base`: its
    /// header is written and synced, then it is renamed into place (atomically replacing an
    /// empty segment of the same base) and the directory synced. A crash before the rename
    /// leaves a temporary file that recovery removes. The caller then names the segment in the
    /// manifest, before any record goes into it.
    fn install_segment(
        &self,
        file: Arc<dyn FsFile>,
        tmp: &Path,
        base: Version,
    ) -> std::io::Result<Segment> {
        let path = segment_path(&self.dir, base.0);
        let header = SegmentHeader::new(self.id.0, base);
        file.write_all_at(&header.encode(), 0)?;
        file.sync_data()?;
        self.fs.rename(tmp, &path)?;
        // The file exists for a later recovery only once its directory entry is durable.
        self.fs.sync_dir(&self.dir)?;
        Ok(Segment {
            base,
            path,
            file,
            format: header.format,
        })
    }
}

/// A push on its way to the writer.
struct Write {
    version: Version,
    previous: Version,
    /// The record's header, CRCs included, computed by the pusher.
    header: RecordHeader,
    payload: Bytes,
    ack: oneshot::Sender<Result<()>>,
    /// Room in the queue, given back when the push is answered.
    _room: OwnedSemaphorePermit,
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
    to_writer: Mutex<Option<Sender<Write>>>,
    writer: Mutex<Option<JoinHandle<()>>>,
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
            OpenMode::Existing { .. } => match std::fs::metadata(dir) {
                Ok(m) if m.is_dir() => {}
                Ok(_) => return Err(missing_log(dir, "is not a directory")),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                    return Err(missing_log(dir, "is missing"));
                }
                Err(e) => return Err(io_error(e)),
            },
        }
        let lock = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(dir.join("LOCK"))
            .map_err(io_error)?;
        match lock.try_lock() {
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
            *held = Some(lock);
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
        let epoch = read_epoch(fs.as_ref(), dir)?;
        let committed = match mode {
            OpenMode::Existing { committed } => committed,
            OpenMode::Create(_) => Version::ZERO,
        };
        let recovered = recover(fs.as_ref(), dir, id, config.payload_bytes_max, committed)?;
        let start = match mode {
            OpenMode::Create(start) => start,
            OpenMode::Existing { .. } if recovered.segments.is_empty() => {
                return Err(missing_log(dir, "holds no segment"));
            }
            OpenMode::Existing { .. } => Version::ZERO,
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
        });
        shared.chain.set_durable(last);
        let (active, write_at) = {
            let mut index = shared.index()?;
            match index.segments.last() {
                Some(s) => (s.clone(), recovered.data_end),
                None => {
                    let s = shared.create_segment(start).map_err(io_error)?;
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
            }
        }
        // Zeros written ahead of the data (a zero-filled segment, or a torn group zeroed by
        // recovery) are room to overwrite.
        let room_end = active.file.len().map_err(io_error)?.max(write_at);
        tracing::info!(log = id.0, dir = %dir.display(), last = last.0, "log opened");

        let (tx, rx) = std::sync::mpsc::channel();
        let writer = Writer {
            shared: shared.clone(),
            active,
            write_at,
            has_records: write_at > SEGMENT_HEADER_BYTES as u64,
            room_end,
            spare: Spare::None,
            buf: Vec::new(),
        };
        let handle = std::thread::Builder::new()
            .name(format!("strata-tlog-{}", id.0))
            .spawn(move || writer.run(rx))
            .map_err(io_error)?;
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

    fn sender(&self) -> Result<Sender<Write>> {
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
    pub fn close(&self) {
        // Closing the queue lets the writer finish what it holds and stop.
        if let Ok(mut tx) = self.to_writer.lock() {
            tx.take();
        }
        if let Some(handle) = self.writer.lock().ok().and_then(|mut h| h.take()) {
            let _ = handle.join();
        }
        if let Ok(mut lock) = self.dir_lock.lock() {
            lock.take();
        }
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
        self.shared
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
            .await?;
        answer
            .await
            .map_err(|_| error(ErrorKind::Unavailable("log writer stopped".into())))?
    }

    async fn pull(&self, after: Version, limit: usize) -> Result<Vec<LogEntry>> {
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

/// The writer thread's state: the segment being written, and the spare to roll into.
struct Writer {
    shared: Arc<Shared>,
    active: Segment,
    /// Where the next record goes in the active segment.
    write_at: u64,
    has_records: bool,
    /// The end of the zeros written ahead of the data in the active segment: writes before it
    /// overwrite (their syncs commit no size change), writes past it append.
    room_end: u64,
    spare: Spare,
    buf: Vec<u8>,
}

/// The zero-filled segment the writer rolls into next.
enum Spare {
    /// None asked for yet.
    None,
    /// A helper thread is writing it.
    Preparing {
        done: Receiver<std::io::Result<Arc<dyn FsFile>>>,
        stop: Arc<AtomicBool>,
        thread: JoinHandle<()>,
    },
    /// Written and synced, waiting under its temporary name.
    Ready(Arc<dyn FsFile>),
    /// Preparing it failed (a full disk, say): not asked for again before the next roll, which
    /// creates an empty segment instead.
    Failed,
}

impl Writer {
    fn run(mut self, rx: Receiver<Write>) {
        // Size of the last group and how long its sync took: the gathering heuristic below.
        let mut last_group = 1;
        let mut last_sync = Duration::ZERO;
        while let Ok(first) = rx.recv() {
            let mut bytes = first.payload.len() + RECORD_HEADER_BYTES;
            let mut group = vec![first];
            // Take what is queued. When the last group was larger than what is here now, its
            // pushers are likely on their way back (they were all answered at once): if told
            // to (`gather_stragglers`), wait a little for them, at most half a sync, rather
            // than paying a whole sync for a partial group and another for the rest. A lone
            // pusher never waits.
            let gather_until = std::time::Instant::now() + last_sync / 2;
            while bytes < self.shared.config.group_bytes_max {
                let next = match rx.try_recv() {
                    Ok(w) => Some(w),
                    Err(TryRecvError::Disconnected) => None,
                    Err(TryRecvError::Empty)
                        if self.shared.config.gather_stragglers && group.len() < last_group =>
                    {
                        let left =
                            gather_until.saturating_duration_since(std::time::Instant::now());
                        rx.recv_timeout(left).ok()
                    }
                    Err(TryRecvError::Empty) => None,
                };
                let Some(w) = next else { break };
                bytes += w.payload.len() + RECORD_HEADER_BYTES;
                group.push(w);
            }
            last_group = group.len();
            if let Some(poisoned) = self.shared.chain.poisoned_error() {
                for w in group {
                    let _ = w.ack.send(Err(poisoned.clone()));
                }
                continue;
            }
            let started = std::time::Instant::now();
            let written = self.write_group(&group);
            last_sync = started.elapsed().min(Duration::from_millis(2));
            match written {
                Ok(placed) => {
                    let last = placed.last().map(|p| p.version);
                    if let Ok(mut index) = self.shared.index() {
                        index.append(placed, self.shared.config.pull_cache_bytes);
                    }
                    if let Some(v) = last {
                        self.shared.chain.set_durable(v);
                    }
                    for w in group {
                        let _ = w.ack.send(Ok(()));
                    }
                }
                Err(e) => {
                    // After a failed write or sync the page cache and the file may disagree
                    // with what we think is on disk: refuse everything from now on. Recovery
                    // on the next open finds the truth. The error is kept, so that a refusal
                    // long after it still says what went wrong.
                    self.shared.chain.poison(format!("i/o: {e} ({})", e.kind()));
                    tracing::error!(log = self.shared.id.0, error = %e, "log write failed; log poisoned");
                    let err = io_error(e);
                    for w in group {
                        let _ = w.ack.send(Err(err.clone()));
                    }
                }
            }
        }
        self.retire_spare();
    }

    /// Appends the group, rolling to new segments as needed, and syncs. Returns where each
    /// entry landed; nothing of it is visible before this returns.
    fn write_group(&mut self, group: &[Write]) -> std::io::Result<Vec<Placed>> {
        self.tend_spare();
        if let Some(first) = group.first()
            && self.active.format != SEGMENT_FORMAT
        {
            // A format 1 segment is only read, never appended to.
            self.roll(first.previous)?;
        }
        let mut placed = Vec::with_capacity(group.len());
        self.buf.clear();
        for (i, w) in group.iter().enumerate() {
            let record_len = (RECORD_HEADER_BYTES + w.payload.len()) as u64;
            let end = self.write_at + self.buf.len() as u64 + record_len;
            // Roll when the segment is full, or as soon as a record would append while a
            // zero-filled segment is ready.
            let spare_ready = matches!(self.spare, Spare::Ready(_));
            if self.has_records
                && (end > self.shared.config.segment_bytes || (end > self.room_end && spare_ready))
            {
                self.flush()?;
                self.active.file.sync_data()?;
                self.roll(w.previous)?;
            }
            let offset = self.write_at + self.buf.len() as u64;
            // The group's last record is marked: recovery's evidence that the group was
            // complete when a later one follows it.
            self.buf
                .extend_from_slice(&w.header.encode(i + 1 == group.len()));
            self.buf.extend_from_slice(&w.payload);
            self.has_records = true;
            #[expect(clippy::cast_possible_truncation)] // NOTE: checked against payload_bytes_max
            placed.push(Placed {
                version: w.version,
                previous: w.previous,
                offset,
                payload_len: w.payload.len() as u32,
                cached: Some(w.payload.clone()),
            });
        }
        self.flush()?;
        self.active.file.sync_data()?;
        Ok(placed)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        if !self.buf.is_empty() {
            self.active.file.write_all_at(&self.buf, self.write_at)?;
            self.write_at += self.buf.len() as u64;
            self.buf.clear();
        }
        Ok(())
    }

    /// Starts the next segment after `base`: the spare when it is ready, else an empty file;
    /// either is made durable and then named in the manifest before this returns.
    fn roll(&mut self, base: Version) -> std::io::Result<()> {
        let segment = if let Spare::Ready(file) = &self.spare {
            let file = file.clone();
            self.spare = Spare::None;
            let tmp = self.shared.dir.join(SPARE_FILE);
            self.shared.install_segment(file, &tmp, base)?
        } else {
            if matches!(self.spare, Spare::Failed) {
                self.spare = Spare::None;
            }
            self.shared.create_segment(base)?
        };
        // Named durably before any record goes into it: from now on recovery requires this
        // segment, so losing it is corruption, never a torn write. (An empty format 1 segment
        // replaced in place keeps its base, which the manifest already names.)
        if segment.base != self.active.base {
            write_manifest(
                self.shared.fs.as_ref(),
                &self.shared.dir,
                self.shared.id,
                base,
            )?;
        }
        let len = segment.file.len()?;
        let zero_filled = len > SEGMENT_HEADER_BYTES as u64;
        // An empty format 1 segment is replaced in place (same base, same name).
        let replaces = segment.path == self.active.path;
        if let Ok(mut index) = self.shared.index() {
            if replaces {
                index.segments.pop();
            }
            index.segments.push(segment.clone());
        }
        tracing::debug!(
            log = self.shared.id.0,
            base = base.0,
            zero_filled,
            "new segment"
        );
        self.active = segment;
        self.write_at = SEGMENT_HEADER_BYTES as u64;
        self.has_records = false;
        self.room_end = len.max(SEGMENT_HEADER_BYTES as u64);
        Ok(())
    }

    /// Takes a finished spare, and asks for one when the active segment is far enough along:
    /// half full for a zero-filled segment, a quarter (at most 1 MiB) for an appended one, so
    /// a log that is barely used never writes a spare.
    fn tend_spare(&mut self) {
        if let Spare::Preparing { done, .. } = &self.spare {
            let outcome = match done.try_recv() {
                Ok(outcome) => outcome,
                Err(TryRecvError::Empty) => return,
                Err(TryRecvError::Disconnected) => {
                    Err(std::io::Error::other("spare segment helper stopped"))
                }
            };
            if let Spare::Preparing { thread, .. } = std::mem::replace(&mut self.spare, Spare::None)
            {
                let _ = thread.join();
            }
            self.spare = match outcome {
                Ok(file) => Spare::Ready(file),
                Err(e) => {
                    tracing::warn!(log = self.shared.id.0, error = %e, "could not prepare a zero-filled segment; the next one is appended to");
                    Spare::Failed
                }
            };
        }
        let config = &self.shared.config;
        let smallest_spare = SPARE_BYTES_MIN.min(config.segment_bytes);
        // A segment at least as long as the smallest spare was one (or is an appended one past
        // the point of asking anyway); a shorter one, perhaps with a zeroed torn tail, is an
        // appended one.
        let due = if self.room_end >= smallest_spare {
            self.room_end / 2
        } else {
            (config.segment_bytes / 4).min(SPARE_BYTES_MIN)
        };
        if config.preallocate && matches!(self.spare, Spare::None) && self.write_at >= due {
            // Four times what this segment took so far: the first spare of a log is small,
            // and each next one doubles (asked for at half of the one before), up to the
            // segment size. A little-used log writes, and its recovery reads, few zeros.
            let bytes = self
                .write_at
                .saturating_mul(4)
                .max(smallest_spare)
                .min(config.segment_bytes);
            self.spare = start_spare(&self.shared, bytes);
        }
    }

    /// Stops a spare being prepared and removes the spare file: the log is closing.
    fn retire_spare(&mut self) {
        if let Spare::Preparing { stop, thread, .. } =
            std::mem::replace(&mut self.spare, Spare::None)
        {
            stop.store(true, Ordering::Relaxed);
            let _ = thread.join();
        }
        let path = self.shared.dir.join(SPARE_FILE);
        if let Err(e) = remove_if_present(self.shared.fs.as_ref(), &path) {
            tracing::warn!(path = %path.display(), error = %e, "could not remove the spare segment");
        }
    }
}

/// Starts a helper thread that writes a spare segment of `bytes`.
fn start_spare(shared: &Arc<Shared>, bytes: u64) -> Spare {
    let stop = Arc::new(AtomicBool::new(false));
    let (tx, done) = std::sync::mpsc::channel();
    let fs = shared.fs.clone();
    let path = shared.dir.join(SPARE_FILE);
    let stopping = stop.clone();
    let spawned = std::thread::Builder::new()
        .name(format!("strata-tlog-{}-spare", shared.id.0))
        .spawn(move || {
            let _ = tx.send(prepare_spare(fs.as_ref(), &path, bytes, &stopping));
        });
    match spawned {
        Ok(thread) => Spare::Preparing { done, stop, thread },
        Err(e) => {
            tracing::warn!(log = shared.id.0, error = %e, "could not start the spare segment helper");
            Spare::Failed
        }
    }
}

/// Writes `bytes` zeros to a new file at `path`, syncing piece by piece. On failure (or when
/// `stop` is set) the file is removed, so a full disk gets its space back.
fn prepare_spare(
    fs: &dyn Fs,
    path: &Path,
    bytes: u64,
    stop: &AtomicBool,
) -> std::io::Result<Arc<dyn FsFile>> {
    remove_if_present(fs, path)?;
    let file = fs.create(path)?;
    let zeros = vec![0u8; SPARE_PIECE_BYTES];
    let mut at = 0u64;
    let filled = loop {
        if at >= bytes {
            break Ok(());
        }
        if stop.load(Ordering::Relaxed) {
            break Err(std::io::Error::new(
                std::io::ErrorKind::Interrupted,
                "log closed",
            ));
        }
        let n = (bytes - at).min(SPARE_PIECE_BYTES as u64);
        #[expect(clippy::cast_possible_truncation)] // NOTE: at most SPARE_PIECE_BYTES
        let piece = &zeros[..n as usize];
        if let Err(e) = file.write_all_at(piece, at).and_then(|()| file.sync_data()) {
            break Err(e);
        }
        at += n;
    };
    match filled {
        Ok(()) => Ok(file),
        Err(e) => {
            let _ = fs.remove(path);
            Err(e)
        }
    }
}

fn remove_if_present(fs: &dyn Fs, path: &Path) -> std::io::Result<()> {
    match fs.remove(path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}

/// What recovery found in a log directory.
struct Recovered {
    segments: Vec<Segment>,
    entries: VecDeque<Placed>,
    last: Option<Version>,
    /// Where the last segment's data ends: the next record goes there.
    data_end: u64,
    /// The base of the segment the manifest names (`None`: there is no manifest).
    named: Option<Version>,
}

fn parse_segment_name(name: &str) -> Option<u64> {
    let digits = name.strip_suffix(SEGMENT_SUFFIX)?;
    if digits.len() != 20 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

fn segment_path(dir: &Path, base: u64) -> PathBuf {
    dir.join(format!("{base:020}{SEGMENT_SUFFIX}"))
}

/// Reads every segment in version order, keeping the valid prefix of the log.
///
/// Every check comes before any change to the directory (the repairs touch only the last
/// segment, which is read last, and the leftovers are removed at the end), so a damaged or
/// missing segment or manifest is reported with the directory as it was found, for whoever
/// investigates.
/// `committed`: a version the log must hold (see [`OpenMode::Existing`]).
fn recover(
    fs: &dyn Fs,
    dir: &Path,
    id: LogId,
    payload_bytes_max: usize,
    committed: Version,
) -> Result<Recovered> {
    let names = fs.list(dir).map_err(io_error)?;
    let named = read_manifest(fs, dir, id)?;
    let mut bases: Vec<u64> = names.iter().filter_map(|n| parse_segment_name(n)).collect();
    // The named segment is looked at even when it is not there: then it is lost.
    bases.extend(named.map(|n| n.0));
    bases.sort_unstable();
    bases.dedup();
    let mut out = Recovered {
        segments: Vec::new(),
        entries: VecDeque::new(),
        last: None,
        data_end: SEGMENT_HEADER_BYTES as u64,
        named,
    };
    for (i, &base) in bases.iter().enumerate() {
        let is_last = i + 1 == bases.len();
        let path = segment_path(dir, base);
        let file = match fs.open(&path) {
            Ok(f) => Some(f),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
            Err(e) => return Err(io_error(e)),
        };
        let len = match &file {
            Some(f) => Some(
                usize::try_from(f.len().map_err(io_error)?)
                    .map_err(|_| corruption(&path, 0, "segment larger than memory"))?,
            ),
            None => None,
        };
        let fate = segment_fate(Version(base), len, is_last, named)
            .map_err(|why| corruption(&path, 0, &why))?;
        let (Some(file), Some(len)) = (file, len) else {
            // segment_fate refuses a missing segment.
            return Err(corruption(&path, 0, "segment is missing"));
        };
        if fate == SegmentFate::TornAtCreation {
            // A crash while the segment was being created: it never held a record.
            tracing::warn!(path = %path.display(), "removing a segment torn at creation");
            fs.remove(&path).map_err(io_error)?;
            fs.sync_dir(dir).map_err(io_error)?;
            continue;
        }
        let mut bytes = vec![0u8; len];
        file.read_exact_at(&mut bytes, 0).map_err(io_error)?;
        let header = SegmentHeader::decode(&bytes).map_err(|why| corruption(&path, 0, &why))?;
        if header.log_id != id.0 {
            return Err(corruption(
                &path,
                0,
                &format!("segment belongs to log {}, not {}", header.log_id, id.0),
            ));
        }
        if header.base_version.0 != base {
            return Err(corruption(
                &path,
                0,
                "segment header and file name disagree",
            ));
        }
        if let Some(last) = out.last
            && header.base_version != last
        {
            return Err(corruption(
                &path,
                0,
                &format!(
                    "segment starts after {} but the previous segment ends at {last}",
                    header.base_version
                ),
            ));
        }
        let scanned = scan_segment(&bytes, header, is_last, payload_bytes_max)
            .map_err(|(offset, why)| corruption(&path, offset, &why))?;
        let (records, data_end) = (scanned.records, scanned.data_end);
        let ends_at = records.last().map_or(header.base_version, |r| r.version);
        if scanned.end != ScanEnd::Clean && ends_at < committed {
            // What looks like a torn write holds a version known committed: an acknowledged
            // record, damaged. Repairing it would destroy the only copy.
            return Err(corruption(
                &path,
                data_end,
                &format!(
                    "the records after {ends_at} are damaged, not torn: {committed} is known \
                     committed"
                ),
            ));
        }
        match scanned.end {
            ScanEnd::Clean => {}
            ScanEnd::TornTail => {
                tracing::warn!(
                    path = %path.display(),
                    offset = data_end,
                    dropped_bytes = len as u64 - data_end,
                    "truncating a torn write at the end of the log"
                );
                file.set_len(data_end).map_err(io_error)?;
                file.sync_data().map_err(io_error)?;
            }
            ScanEnd::TornGroup { garbage_end } => {
                // Zeroed, not truncated: the segment keeps its preallocated size, and no
                // piece of the torn group can be read as a record by a later recovery.
                tracing::warn!(
                    path = %path.display(),
                    offset = data_end,
                    dropped_bytes = garbage_end - data_end,
                    "zeroing a torn group commit at the end of the log"
                );
                let span = usize::try_from(garbage_end - data_end).unwrap_or(usize::MAX);
                file.write_all_at(&vec![0u8; span], data_end)
                    .map_err(io_error)?;
                file.sync_data().map_err(io_error)?;
            }
        }
        out.data_end = data_end;
        out.last = Some(records.last().map_or(header.base_version, |r| r.version));
        out.entries.extend(records.iter().map(|r| Placed {
            version: r.version,
            previous: r.previous,
            offset: r.offset,
            payload_len: r.payload_len,
            cached: None,
        }));
        out.segments.push(Segment {
            base: header.base_version,
            path,
            file,
            format: header.format,
        });
    }
    // A spare being prepared, a segment not yet renamed into place, or a manifest not yet
    // renamed over the old one, at the crash: none of them ever held a record or named one.
    for leftover in [SPARE_FILE, NEW_SEGMENT_FILE, MANIFEST_TMP_FILE] {
        if names.iter().any(|n| n == leftover) {
            fs.remove(&dir.join(leftover)).map_err(io_error)?;
        }
    }
    Ok(out)
}

/// The base of the segment the manifest names, or `None` when there is no manifest (a new log,
/// or a directory written before the manifest existed).
fn read_manifest(fs: &dyn Fs, dir: &Path, id: LogId) -> Result<Option<Version>> {
    let path = dir.join(MANIFEST_FILE);
    let file = match fs.open(&path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(io_error(e)),
    };
    // At most one byte more than a manifest: enough for a longer file to fail the size check.
    let len = file.len().map_err(io_error)?.min(MANIFEST_BYTES as u64 + 1);
    let mut bytes = vec![0u8; usize::try_from(len).unwrap_or(MANIFEST_BYTES + 1)];
    file.read_exact_at(&mut bytes, 0).map_err(io_error)?;
    let manifest = Manifest::decode(&bytes).map_err(|why| corruption(&path, 0, &why))?;
    if manifest.log_id != id.0 {
        return Err(corruption(
            &path,
            0,
            &format!("manifest belongs to log {}, not {}", manifest.log_id, id.0),
        ));
    }
    Ok(Some(manifest.newest_base))
}

/// Replaces the manifest, durably, with one naming the segment starting after `base`.
fn write_manifest(fs: &dyn Fs, dir: &Path, id: LogId, base: Version) -> std::io::Result<()> {
    let manifest = Manifest {
        log_id: id.0,
        newest_base: base,
    };
    replace_file(
        fs,
        dir,
        MANIFEST_TMP_FILE,
        MANIFEST_FILE,
        &manifest.encode(),
    )
}

/// Replaces `dir/name` with `bytes` atomically: write a temporary file, sync it, rename it
/// over the old one, sync the directory. A crash leaves the old file or the new one, never a
/// mix, and perhaps the temporary file.
fn replace_file(
    fs: &dyn Fs,
    dir: &Path,
    tmp_name: &str,
    name: &str,
    bytes: &[u8],
) -> std::io::Result<()> {
    let tmp = dir.join(tmp_name);
    remove_if_present(fs, &tmp)?;
    let file = fs.create(&tmp)?;
    file.write_all_at(bytes, 0)?;
    file.sync_data()?;
    fs.rename(&tmp, &dir.join(name))?;
    fs.sync_dir(dir)
}

/// The epoch the log is locked with (0 when there is no epoch file: a log never locked).
///
/// Only bytes read that fail a check (a file shorter than an epoch record, a wrong magic, a
/// CRC mismatch) are `Corruption`; a failed read is the I/O error it is.
fn read_epoch(fs: &dyn Fs, dir: &Path) -> Result<Epoch> {
    let path = dir.join(EPOCH_FILE);
    let file = match fs.open(&path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Epoch(0)),
        Err(e) => return Err(io_error(e)),
    };
    let mut b = [0u8; 16];
    // The length is checked, not inferred from a failed read: any error of the read itself
    // is the disk's, never the file's content.
    if file.len().map_err(io_error)? < b.len() as u64 {
        return Err(corruption(&path, 0, "epoch file is short"));
    }
    file.read_exact_at(&mut b, 0).map_err(io_error)?;
    if b[0..4] != EPOCH_MAGIC || crc32fast::hash(&b[0..12]) != le_u32(&b[12..16]) {
        return Err(corruption(&path, 0, "epoch file fails its check"));
    }
    Ok(Epoch(le_u64(&b[4..12])))
}

/// Replaces the epoch file atomically (see [`replace_file`]).
fn write_epoch(fs: &dyn Fs, dir: &Path, epoch: Epoch) -> Result<()> {
    let mut b = [0u8; 16];
    b[0..4].copy_from_slice(&EPOCH_MAGIC);
    b[4..12].copy_from_slice(&epoch.0.to_le_bytes());
    let crc = crc32fast::hash(&b[0..12]);
    b[12..16].copy_from_slice(&crc.to_le_bytes());
    replace_file(fs, dir, EPOCH_TMP_FILE, EPOCH_FILE, &b).map_err(io_error)
}
