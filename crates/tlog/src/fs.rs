//! The small file-system interface the log does all its disk I/O through.
//!
//! [`RealFs`] is the operating system's. [`SimFs`] is an in-memory file system that remembers
//! what was synced, so tests can simulate a crash (everything not synced is lost, optionally
//! keeping a torn prefix of it), a failing sync and a full disk, without touching a disk.

use std::collections::BTreeMap;
use std::fmt::Debug;
use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

/// The unit of [`FsFile::write_pages_at`]: its offset, its length and its buffer's address
/// are multiples of this. A page of the file systems the log runs on, and a multiple of
/// every disk's logical block.
pub const PAGE_BYTES: usize = 4096;

/// `len` bytes of `fill` inside `buf`, starting on a page boundary, as
/// [`FsFile::write_pages_at`] needs them (`Vec` promises no alignment, so `buf` is given a page
/// to spare; its earlier contents are dropped, its allocation reused).
pub(crate) fn aligned(buf: &mut Vec<u8>, len: usize, fill: u8) -> &mut [u8] {
    buf.clear();
    // Within the capacity reserved here, so the resize below cannot move the buffer.
    buf.reserve(len + PAGE_BYTES);
    let lead = buf.as_ptr().align_offset(PAGE_BYTES);
    buf.resize(lead + len, fill);
    &mut buf[lead..]
}

/// A directory-level file system.
pub trait Fs: Send + Sync + Debug {
    /// Creates `dir` and its parents.
    fn create_dir_all(&self, dir: &Path) -> io::Result<()>;
    /// The names of the files in `dir`.
    fn list(&self, dir: &Path) -> io::Result<Vec<String>>;
    /// Opens an existing file for reading and writing.
    fn open(&self, path: &Path) -> io::Result<Arc<dyn FsFile>>;
    /// Creates a file, empty, for reading and writing; fails if it exists.
    fn create(&self, path: &Path) -> io::Result<Arc<dyn FsFile>>;
    /// Removes a file.
    fn remove(&self, path: &Path) -> io::Result<()>;
    /// Renames a file, replacing `to`.
    fn rename(&self, from: &Path, to: &Path) -> io::Result<()>;
    /// Makes the creations, removals and renames in `dir` durable.
    fn sync_dir(&self, dir: &Path) -> io::Result<()>;
    /// Opens an existing file, as another handle beside those already open, to write whole
    /// pages to with [`FsFile::write_pages_at`]. The operating system's opens it for direct
    /// I/O where the file system allows it; the default is [`Fs::open`].
    fn open_pages(&self, path: &Path) -> io::Result<Arc<dyn FsFile>> {
        self.open(path)
    }
}

/// An open file, shared between the log's writer and its readers.
pub trait FsFile: Send + Sync + Debug {
    /// Current length in bytes.
    fn len(&self) -> io::Result<u64>;
    /// Whether the file is empty.
    fn is_empty(&self) -> io::Result<bool> {
        Ok(self.len()? == 0)
    }
    /// Fills `buf` from `offset`; reading past the end is an `UnexpectedEof` error.
    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()>;
    /// Writes all of `buf` at `offset`.
    fn write_all_at(&self, buf: &[u8], offset: u64) -> io::Result<()>;
    /// Makes the file's data (and the metadata needed to read it) durable: `fdatasync`.
    fn sync_data(&self) -> io::Result<()>;
    /// Truncates or extends the file.
    fn set_len(&self, len: u64) -> io::Result<()>;
    /// Writes all of `pages` at `offset`: whole pages, so `offset`, the length and the
    /// buffer's address must be multiples of [`PAGE_BYTES`] (else `InvalidInput`, nothing
    /// written). A file from [`Fs::open_pages`] on the operating system's file system writes
    /// them around the page cache (`O_DIRECT`) when it can; data written so is durable after
    /// [`FsFile::sync_data`], as any other. The default checks and calls
    /// [`FsFile::write_all_at`].
    fn write_pages_at(&self, pages: &[u8], offset: u64) -> io::Result<()> {
        check_pages(pages, offset)?;
        self.write_all_at(pages, offset)
    }
}

/// Refuses a [`FsFile::write_pages_at`] that is not of whole, aligned pages.
pub fn check_pages(pages: &[u8], offset: u64) -> io::Result<()> {
    let off_page = |n: u64| n % PAGE_BYTES as u64;
    let (len, address) = (pages.len() as u64, pages.as_ptr().addr() as u64);
    if off_page(offset) != 0 || off_page(len) != 0 || off_page(address) != 0 {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!(
                "a write of whole pages got {len} bytes for offset {offset}, from an address \
                 {} bytes into a page (all three must be multiples of {PAGE_BYTES})",
                off_page(address)
            ),
        ));
    }
    Ok(())
}

thread_local! {
    static WRITING_GROUP: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// Whether the calling thread is writing a log's group commit right now: its records, and the
/// rolls and manifest writes they cause, whose failure poisons the log. A group is written on
/// the log's writer thread, or on the thread of a push that found the log idle, so a file
/// system under a log that wants to fail only those calls (a test injecting a failed
/// `fdatasync` into the log's own error path) asks this rather than the thread's name. The
/// log's open, its recovery and its spare segments are never inside a group.
pub fn writing_group() -> bool {
    WRITING_GROUP.with(std::cell::Cell::get)
}

/// Marks the calling thread as writing a group commit until dropped ([`writing_group`]).
pub(crate) struct GroupMark(());

impl GroupMark {
    pub(crate) fn set() -> GroupMark {
        WRITING_GROUP.with(|w| w.set(true));
        GroupMark(())
    }
}

impl Drop for GroupMark {
    fn drop(&mut self) {
        WRITING_GROUP.with(|w| w.set(false));
    }
}

/// Removes `path`, if it is there: a missing file is no error.
pub(crate) fn remove_if_present(fs: &dyn Fs, path: &Path) -> io::Result<()> {
    match fs.remove(path) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}

/// The operating system's file system.
#[derive(Clone, Copy, Debug, Default)]
pub struct RealFs;

#[derive(Debug)]
struct RealFile {
    file: File,
    /// A handle opened for direct I/O, for [`FsFile::write_pages_at`] (only from
    /// [`Fs::open_pages`], and only where the file system allows it).
    direct: Option<File>,
    /// Set when the file system refused a direct write its open allowed: from then on this
    /// file's writes go through the page cache (the next segment tries again).
    direct_refused: AtomicBool,
}

impl RealFile {
    fn shared(file: File, direct: Option<File>) -> Arc<dyn FsFile> {
        Arc::new(RealFile {
            file,
            direct,
            direct_refused: AtomicBool::new(false),
        })
    }
}

/// Whether this process has said yet that it writes through the page cache: said once (a log
/// opens a file for direct I/O at every new segment), then only at debug level.
static SAID_NO_DIRECT: AtomicBool = AtomicBool::new(false);

fn say_no_direct(path: Option<&Path>, error: &io::Error) {
    let path = path.map(|p| p.display().to_string()).unwrap_or_default();
    if SAID_NO_DIRECT.swap(true, Ordering::Relaxed) {
        tracing::debug!(%path, %error, "no direct I/O; writing through the page cache");
    } else {
        tracing::warn!(%path, %error, "no direct I/O; writing through the page cache");
    }
}

/// `path` opened to write with direct I/O, or `None` where the file system refuses it (or the
/// platform has no `O_DIRECT`).
#[cfg(target_os = "linux")]
fn open_direct(path: &Path) -> Option<File> {
    use std::os::unix::fs::OpenOptionsExt;
    match OpenOptions::new()
        .write(true)
        .custom_flags(libc::O_DIRECT)
        .open(path)
    {
        Ok(f) => Some(f),
        Err(e) => {
            say_no_direct(Some(path), &e);
            None
        }
    }
}

#[cfg(not(target_os = "linux"))]
fn open_direct(_: &Path) -> Option<File> {
    None
}

impl Fs for RealFs {
    fn create_dir_all(&self, dir: &Path) -> io::Result<()> {
        std::fs::create_dir_all(dir)
    }

    fn list(&self, dir: &Path) -> io::Result<Vec<String>> {
        let mut names = Vec::new();
        for entry in std::fs::read_dir(dir)? {
            if let Ok(name) = entry?.file_name().into_string() {
                names.push(name);
            }
        }
        Ok(names)
    }

    fn open(&self, path: &Path) -> io::Result<Arc<dyn FsFile>> {
        let f = OpenOptions::new().read(true).write(true).open(path)?;
        Ok(RealFile::shared(f, None))
    }

    fn open_pages(&self, path: &Path) -> io::Result<Arc<dyn FsFile>> {
        let f = OpenOptions::new().read(true).write(true).open(path)?;
        Ok(RealFile::shared(f, open_direct(path)))
    }

    fn create(&self, path: &Path) -> io::Result<Arc<dyn FsFile>> {
        let f = OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(path)?;
        Ok(RealFile::shared(f, None))
    }

    fn remove(&self, path: &Path) -> io::Result<()> {
        std::fs::remove_file(path)
    }

    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        std::fs::rename(from, to)
    }

    fn sync_dir(&self, dir: &Path) -> io::Result<()> {
        File::open(dir)?.sync_all()
    }
}

impl FsFile for RealFile {
    fn len(&self) -> io::Result<u64> {
        Ok(self.file.metadata()?.len())
    }

    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        FileExt::read_exact_at(&self.file, buf, offset)
    }

    fn write_all_at(&self, buf: &[u8], offset: u64) -> io::Result<()> {
        FileExt::write_all_at(&self.file, buf, offset)
    }

    fn sync_data(&self) -> io::Result<()> {
        // One inode: this also makes what the direct handle wrote durable.
        self.file.sync_data()
    }

    fn set_len(&self, len: u64) -> io::Result<()> {
        self.file.set_len(len)
    }

    fn write_pages_at(&self, pages: &[u8], offset: u64) -> io::Result<()> {
        check_pages(pages, offset)?;
        if let Some(direct) = &self.direct
            && !self.direct_refused.load(Ordering::Relaxed)
        {
            match FileExt::write_all_at(direct, pages, offset) {
                // A file system that opened the file for direct I/O yet refuses this write
                // (a disk whose logical blocks are larger than a page, say). Written again
                // whole through the page cache below: the same bytes at the same offsets.
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::InvalidInput | io::ErrorKind::Unsupported
                    ) =>
                {
                    say_no_direct(None, &e);
                    self.direct_refused.store(true, Ordering::Relaxed);
                }
                written => return written,
            }
        }
        FileExt::write_all_at(&self.file, pages, offset)
    }
}

/// An in-memory file system that tracks what was synced, for crash and fault tests.
///
/// - A file's data is durable up to its last [`FsFile::sync_data`]; a directory's entries
///   (creations, removals, renames) are durable after [`Fs::sync_dir`].
/// - A sync that fails leaves its writes as Linux does after a failed writeback: reads still
///   see them, but no later sync makes them durable (the pages count as clean). Only writing
///   them again, then syncing, does; until then a crash may keep a torn part of them.
/// - [`SimFs::crash_image`] returns the file system a machine would find after losing power
///   while writes were in flight: only durable state, plus, if asked, a torn prefix of each
///   file's unsynced writes, in the order they were made.
/// - [`SimFs::crash_image_sectors`] does the same for a disk that writes back the sectors of
///   unsynced writes in any order: it keeps the sectors the caller picks, and loses the rest.
/// - [`SimFs::fail_syncs`] makes every sync fail, [`SimFs::fail_syncs_after`] every one after
///   the next few; [`SimFs::set_sync_latency`] makes them slow; [`SimFs::set_capacity`] makes
///   writes that would grow the total size past a limit fail with `StorageFull`.
///
/// ```
/// use std::path::Path;
/// use strata_tlog::fs::{Fs, SimFs};
/// let fs = SimFs::new();
/// fs.create_dir_all(Path::new("/log"))?;
/// let f = fs.create(Path::new("/log/a"))?;
/// fs.sync_dir(Path::new("/log"))?;
/// f.write_all_at(b"durable", 0)?;
/// f.sync_data()?;
/// f.write_all_at(b" lost", 7)?;
/// let after = fs.crash_image(0);
/// let mut buf = vec![0; 7];
/// after.open(Path::new("/log/a"))?.read_exact_at(&mut buf, 0)?;
/// assert_eq!(buf, b"durable");
/// # Ok::<(), std::io::Error>(())
/// ```
#[derive(Clone, Debug, Default)]
pub struct SimFs {
    inner: Arc<SimInner>,
}

#[derive(Debug, Default)]
struct SimInner {
    state: Mutex<SimState>,
    fail_syncs: AtomicBool,
    /// How many more syncs may succeed before they all fail.
    syncs_left: AtomicU64,
    /// How long each sync takes, in nanoseconds.
    sync_latency_ns: AtomicU64,
    capacity: AtomicU64,
    syncs: AtomicU64,
}

impl SimInner {
    /// Sleeps the sync latency, then says whether this sync fails.
    fn sync_fails(&self) -> bool {
        let latency = self.sync_latency_ns.load(Ordering::SeqCst);
        if latency > 0 {
            std::thread::sleep(std::time::Duration::from_nanos(latency));
        }
        let budget_spent = self
            .syncs_left
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
            .is_err();
        self.fail_syncs.load(Ordering::SeqCst) || budget_spent
    }
}

#[derive(Debug, Default)]
struct SimState {
    /// Directory entries as they are now: path to file.
    live: BTreeMap<PathBuf, Arc<SimFile>>,
    /// Directory entries as they would be found after a crash.
    durable: BTreeMap<PathBuf, Arc<SimFile>>,
}

#[derive(Debug, Default)]
struct SimFile {
    data: Mutex<SimData>,
    fs: std::sync::Weak<SimInner>,
}

#[derive(Clone, Debug, Default)]
struct SimData {
    current: Vec<u8>,
    synced: Vec<u8>,
    /// The writes since the last sync, in order: offset and bytes.
    pending: Vec<(usize, Vec<u8>)>,
    /// How many of the first `pending` writes a failed sync took: the next sync that succeeds
    /// drops them without making them durable.
    failed: usize,
    /// The shortest length a truncation since the last sync left.
    shrunk_to: Option<usize>,
}

impl SimData {
    /// The synced contents with the unsynced bytes `keep(offset)` picks written over them.
    /// Keeping a byte past the synced length extends the file (with zeros up to it).
    fn after_crash(&self, keep: impl Fn(usize) -> bool) -> Vec<u8> {
        let mut out = self.synced.clone();
        for (offset, bytes) in &self.pending {
            for (i, &b) in bytes.iter().enumerate() {
                let at = offset + i;
                if keep(at) {
                    if out.len() <= at {
                        out.resize(at + 1, 0);
                    }
                    out[at] = b;
                }
            }
        }
        out
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic in another test thread must not hide this one's result.
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn not_found(path: &Path) -> io::Error {
    io::Error::new(io::ErrorKind::NotFound, format!("{}", path.display()))
}

impl SimFs {
    /// An empty file system with no capacity limit.
    pub fn new() -> SimFs {
        let fs = SimFs::default();
        fs.inner.capacity.store(u64::MAX, Ordering::SeqCst);
        fs.inner.syncs_left.store(u64::MAX, Ordering::SeqCst);
        fs
    }

    /// Makes every later sync fail (`true`) or succeed again (`false`).
    pub fn fail_syncs(&self, fail: bool) {
        self.inner.fail_syncs.store(fail, Ordering::SeqCst);
    }

    /// Lets the next `n` syncs (of files and directories) succeed and makes every one after
    /// them fail.
    pub fn fail_syncs_after(&self, n: u64) {
        self.inner.syncs_left.store(n, Ordering::SeqCst);
    }

    /// Makes every sync take `latency` (a slow disk), so that work queues up behind it.
    pub fn set_sync_latency(&self, latency: std::time::Duration) {
        let ns = u64::try_from(latency.as_nanos()).unwrap_or(u64::MAX);
        self.inner.sync_latency_ns.store(ns, Ordering::SeqCst);
    }

    /// Limits the total size of all files; a write past it fails with `StorageFull`.
    pub fn set_capacity(&self, bytes: u64) {
        self.inner.capacity.store(bytes, Ordering::SeqCst);
    }

    /// How many file syncs succeeded so far.
    pub fn sync_count(&self) -> u64 {
        self.inner.syncs.load(Ordering::SeqCst)
    }

    /// The file system as found after a power loss now: the durable directory entries, each
    /// file's synced bytes, and the first `torn_bytes` bytes of its writes since its last sync,
    /// taken in the order they were written (a torn write keeps a prefix of what was in
    /// flight).
    pub fn crash_image(&self, torn_bytes: usize) -> SimFs {
        self.image(|_, d| {
            let mut out = d.synced.clone();
            let mut left = torn_bytes;
            for (offset, bytes) in &d.pending {
                let n = left.min(bytes.len());
                if n == 0 {
                    break;
                }
                if out.len() < offset + n {
                    out.resize(offset + n, 0);
                }
                out[*offset..offset + n].copy_from_slice(&bytes[..n]);
                left -= n;
            }
            out
        })
    }

    /// The file system as found after a power loss on a disk that writes back dirty sectors
    /// in any order: each file's synced bytes, and of its unsynced writes only the sectors
    /// (`sector_bytes` long, aligned) for which `keep(path, sector index)` is true.
    pub fn crash_image_sectors(
        &self,
        sector_bytes: usize,
        keep: impl Fn(&Path, usize) -> bool,
    ) -> SimFs {
        self.image(|path, d| d.after_crash(|at| keep(path, at / sector_bytes)))
    }

    /// The indexes of the `sector_bytes`-long sectors of `path` that unsynced writes touch,
    /// ascending.
    pub fn unsynced_sectors(&self, path: &Path, sector_bytes: usize) -> Vec<usize> {
        let state = lock(&self.inner.state);
        let Some(f) = state.live.get(path) else {
            return Vec::new();
        };
        let d = lock(&f.data);
        let mut sectors: Vec<usize> = d
            .pending
            .iter()
            .filter(|(_, b)| !b.is_empty())
            .flat_map(|(offset, b)| offset / sector_bytes..=(offset + b.len() - 1) / sector_bytes)
            .collect();
        sectors.sort_unstable();
        sectors.dedup();
        sectors
    }

    fn image(&self, contents: impl Fn(&Path, &SimData) -> Vec<u8>) -> SimFs {
        let image = SimFs::new();
        let state = lock(&self.inner.state);
        let mut out = lock(&image.inner.state);
        for (path, file) in &state.durable {
            let kept = contents(path, &lock(&file.data));
            let f = Arc::new(SimFile {
                data: Mutex::new(SimData {
                    current: kept.clone(),
                    synced: kept,
                    pending: Vec::new(),
                    failed: 0,
                    shrunk_to: None,
                }),
                fs: Arc::downgrade(&image.inner),
            });
            out.live.insert(path.clone(), f.clone());
            out.durable.insert(path.clone(), f);
        }
        drop(out);
        image
    }

    /// Bytes written to `path` since its last sync (0 when the file is unknown).
    pub fn unsynced_len(&self, path: &Path) -> usize {
        let state = lock(&self.inner.state);
        state.live.get(path).map_or(0, |f| {
            lock(&f.data).pending.iter().map(|(_, b)| b.len()).sum()
        })
    }

    /// Flips `mask` into the byte at `offset` of `path`, in its current and synced contents:
    /// damage done by the disk, not by a write.
    pub fn corrupt(&self, path: &Path, offset: usize, mask: u8) -> io::Result<()> {
        let state = lock(&self.inner.state);
        let f = state.live.get(path).ok_or_else(|| not_found(path))?;
        let mut guard = lock(&f.data);
        let d = &mut *guard;
        for buf in [&mut d.current, &mut d.synced] {
            if let Some(b) = buf.get_mut(offset) {
                *b ^= mask;
            }
        }
        Ok(())
    }

    fn total_len(&self) -> u64 {
        let state = lock(&self.inner.state);
        state
            .live
            .values()
            .map(|f| lock(&f.data).current.len() as u64)
            .sum()
    }
}

impl Fs for SimFs {
    fn create_dir_all(&self, _dir: &Path) -> io::Result<()> {
        Ok(())
    }

    fn list(&self, dir: &Path) -> io::Result<Vec<String>> {
        let state = lock(&self.inner.state);
        Ok(state
            .live
            .keys()
            .filter(|p| p.parent() == Some(dir))
            .filter_map(|p| p.file_name()?.to_str().map(str::to_owned))
            .collect())
    }

    fn open(&self, path: &Path) -> io::Result<Arc<dyn FsFile>> {
        let state = lock(&self.inner.state);
        let f = state.live.get(path).ok_or_else(|| not_found(path))?;
        Ok(f.clone())
    }

    fn create(&self, path: &Path) -> io::Result<Arc<dyn FsFile>> {
        let mut state = lock(&self.inner.state);
        if state.live.contains_key(path) {
            return Err(io::Error::new(
                io::ErrorKind::AlreadyExists,
                format!("{}", path.display()),
            ));
        }
        let f = Arc::new(SimFile {
            data: Mutex::default(),
            fs: Arc::downgrade(&self.inner),
        });
        state.live.insert(path.to_owned(), f.clone());
        Ok(f)
    }

    fn remove(&self, path: &Path) -> io::Result<()> {
        let mut state = lock(&self.inner.state);
        state.live.remove(path).ok_or_else(|| not_found(path))?;
        Ok(())
    }

    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        let mut state = lock(&self.inner.state);
        let f = state.live.remove(from).ok_or_else(|| not_found(from))?;
        state.live.insert(to.to_owned(), f);
        Ok(())
    }

    fn sync_dir(&self, dir: &Path) -> io::Result<()> {
        if self.inner.sync_fails() {
            return Err(io::Error::other("simulated sync failure"));
        }
        let mut state = lock(&self.inner.state);
        let in_dir = |p: &PathBuf| p.parent() == Some(dir);
        state.durable.retain(|p, _| !in_dir(p));
        let live: Vec<(PathBuf, Arc<SimFile>)> = state
            .live
            .iter()
            .filter(|(p, _)| in_dir(p))
            .map(|(p, f)| (p.clone(), f.clone()))
            .collect();
        state.durable.extend(live);
        Ok(())
    }
}

impl FsFile for SimFile {
    fn len(&self) -> io::Result<u64> {
        Ok(lock(&self.data).current.len() as u64)
    }

    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        let d = lock(&self.data);
        let start = usize::try_from(offset).map_err(io::Error::other)?;
        let src = d
            .current
            .get(start..start + buf.len())
            .ok_or_else(|| io::Error::from(io::ErrorKind::UnexpectedEof))?;
        buf.copy_from_slice(src);
        Ok(())
    }

    fn write_all_at(&self, buf: &[u8], offset: u64) -> io::Result<()> {
        let start = usize::try_from(offset).map_err(io::Error::other)?;
        let end = start + buf.len();
        if let Some(fs) = self.fs.upgrade() {
            let grows = (end as u64).saturating_sub(self.len()?);
            let total = SimFs { inner: fs.clone() }.total_len();
            if total + grows > fs.capacity.load(Ordering::SeqCst) {
                return Err(io::Error::new(
                    io::ErrorKind::StorageFull,
                    "simulated full disk",
                ));
            }
        }
        let mut d = lock(&self.data);
        if d.current.len() < end {
            d.current.resize(end, 0);
        }
        d.current[start..end].copy_from_slice(buf);
        d.pending.push((start, buf.to_vec()));
        Ok(())
    }

    fn sync_data(&self) -> io::Result<()> {
        if let Some(fs) = self.fs.upgrade() {
            if fs.sync_fails() {
                let mut d = lock(&self.data);
                d.failed = d.pending.len();
                return Err(io::Error::other("simulated sync failure"));
            }
            fs.syncs.fetch_add(1, Ordering::SeqCst);
        }
        let mut guard = lock(&self.data);
        let d = &mut *guard;
        let failed = std::mem::take(&mut d.failed);
        // Only what changed is copied: preallocated files are large.
        let len = d.current.len();
        if let Some(shrunk) = d.shrunk_to.take() {
            d.synced.truncate(shrunk);
        }
        d.synced.resize(len, 0);
        for (offset, bytes) in d.pending.drain(..).skip(failed) {
            let end = (offset + bytes.len()).min(len);
            if offset < end {
                d.synced[offset..end].copy_from_slice(&d.current[offset..end]);
            }
        }
        Ok(())
    }

    fn set_len(&self, len: u64) -> io::Result<()> {
        let len = usize::try_from(len).map_err(io::Error::other)?;
        let mut d = lock(&self.data);
        let was = d.current.len();
        if len < was {
            d.shrunk_to = Some(d.shrunk_to.map_or(len, |s| s.min(len)));
        }
        d.current.resize(len, 0);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    //! What [`SimFs`] promises, each asserted directly: the crash tests of the log are only as
    //! good as the simulation they run on.

    use super::*;

    const DIR: &str = "/d";

    fn path(name: &str) -> PathBuf {
        Path::new(DIR).join(name)
    }

    /// A file in `fs` that is durable (its directory entry synced), empty.
    fn durable_file(fs: &SimFs, name: &str) -> Arc<dyn FsFile> {
        let f = fs.create(&path(name)).unwrap();
        fs.sync_dir(Path::new(DIR)).unwrap();
        f
    }

    fn contents(fs: &SimFs, name: &str) -> Vec<u8> {
        let f = fs.open(&path(name)).unwrap();
        let mut buf = vec![0; usize::try_from(f.len().unwrap()).unwrap()];
        f.read_exact_at(&mut buf, 0).unwrap();
        buf
    }

    fn names(fs: &SimFs) -> Vec<String> {
        let mut names = fs.list(Path::new(DIR)).unwrap();
        names.sort();
        names
    }

    #[test]
    fn unsynced_writes_are_lost_at_a_crash_and_synced_ones_kept() {
        let fs = SimFs::new();
        let f = durable_file(&fs, "a");
        f.write_all_at(b"kept", 0).unwrap();
        f.sync_data().unwrap();
        f.write_all_at(b"-lost", 4).unwrap();
        // An overwrite of synced bytes is lost too: the synced bytes come back.
        f.write_all_at(b"K", 0).unwrap();
        assert_eq!(contents(&fs, "a"), b"Kept-lost");
        assert_eq!(fs.unsynced_len(&path("a")), 6);
        let after = fs.crash_image(0);
        assert_eq!(contents(&after, "a"), b"kept");
        // The image is itself durable: a second crash loses nothing more.
        assert_eq!(contents(&after.crash_image(0), "a"), b"kept");
        // A sync makes everything so far durable.
        f.sync_data().unwrap();
        assert_eq!(fs.unsynced_len(&path("a")), 0);
        assert_eq!(contents(&fs.crash_image(0), "a"), b"Kept-lost");
    }

    #[test]
    fn a_torn_write_keeps_a_prefix_of_the_unsynced_writes_in_write_order() {
        let fs = SimFs::new();
        let f = durable_file(&fs, "a");
        f.write_all_at(b"0123", 0).unwrap();
        f.sync_data().unwrap();
        f.write_all_at(b"abc", 4).unwrap();
        f.write_all_at(b"XY", 1).unwrap();
        // 3 bytes: the whole first write, nothing of the second.
        assert_eq!(contents(&fs.crash_image(3), "a"), b"0123abc");
        // 4 bytes: the first write and the first byte of the second.
        assert_eq!(contents(&fs.crash_image(4), "a"), b"0X23abc");
        // 2 bytes: a prefix of the first write only; the file ends where that prefix does.
        assert_eq!(contents(&fs.crash_image(2), "a"), b"0123ab");
        // More than was written: all of it.
        assert_eq!(contents(&fs.crash_image(100), "a"), b"0XY3abc");
    }

    #[test]
    fn a_sector_crash_keeps_exactly_the_sectors_picked() {
        let fs = SimFs::new();
        let f = durable_file(&fs, "a");
        f.write_all_at(&[1; 4], 0).unwrap();
        f.sync_data().unwrap();
        // Touches sectors 1 and 3 (4-byte sectors), leaving a hole in sector 2.
        f.write_all_at(&[2; 4], 4).unwrap();
        f.write_all_at(&[3; 4], 12).unwrap();
        assert_eq!(fs.unsynced_sectors(&path("a"), 4), vec![1, 3]);
        assert!(fs.unsynced_sectors(&path("missing"), 4).is_empty());
        let keep_3 = fs.crash_image_sectors(4, |p, s| p == path("a") && s == 3);
        // Sector 1 is lost, sector 3 kept: the file reaches it, zeros in between.
        assert_eq!(
            contents(&keep_3, "a"),
            [[1; 4], [0; 4], [0; 4], [3; 4]].concat()
        );
        let keep_1 = fs.crash_image_sectors(4, |_, s| s == 1);
        assert_eq!(contents(&keep_1, "a"), [[1; 4], [2; 4]].concat());
        let keep_none = fs.crash_image_sectors(4, |_, _| false);
        assert_eq!(contents(&keep_none, "a"), [1; 4]);
    }

    #[test]
    fn a_truncation_is_durable_only_after_a_sync() {
        let fs = SimFs::new();
        let f = durable_file(&fs, "a");
        f.write_all_at(b"0123456789", 0).unwrap();
        f.sync_data().unwrap();
        f.set_len(4).unwrap();
        assert_eq!(contents(&fs, "a"), b"0123");
        assert_eq!(contents(&fs.crash_image(0), "a"), b"0123456789");
        // Shrunk and then grown again before the sync: the bytes past the cut are zeros.
        f.set_len(6).unwrap();
        f.write_all_at(b"x", 7).unwrap();
        f.sync_data().unwrap();
        assert_eq!(contents(&fs.crash_image(0), "a"), b"0123\0\0\0x");
    }

    #[test]
    fn failing_syncs_fail_and_make_nothing_durable() {
        let fs = SimFs::new();
        let f = durable_file(&fs, "a");
        let synced = fs.sync_count();
        fs.fail_syncs(true);
        f.write_all_at(b"data", 0).unwrap();
        assert!(f.sync_data().is_err());
        assert!(fs.sync_dir(Path::new(DIR)).is_err());
        assert_eq!(fs.sync_count(), synced, "a failed sync is not counted");
        assert!(contents(&fs.crash_image(0), "a").is_empty());
        // A file created while directory syncs fail is not durable either.
        fs.create(&path("b")).unwrap();
        assert!(fs.sync_dir(Path::new(DIR)).is_err());
        assert_eq!(names(&fs.crash_image(0)), ["a"]);
        fs.fail_syncs(false);
        f.sync_data().unwrap();
        assert_eq!(fs.sync_count(), synced + 1);
        // As on Linux after a failed writeback: reads see the write, but the sync that
        // succeeds later does not make it durable. Writing it again does.
        assert_eq!(contents(&fs, "a"), b"data");
        let kept = contents(&fs.crash_image(0), "a");
        assert!(kept.iter().all(|&b| b == 0), "{kept:?}");
        f.write_all_at(b"data", 0).unwrap();
        f.sync_data().unwrap();
        assert_eq!(contents(&fs.crash_image(0), "a"), b"data");
    }

    #[test]
    fn syncs_fail_after_the_budget_is_spent_file_and_directory_alike() {
        let fs = SimFs::new();
        let f = durable_file(&fs, "a");
        fs.fail_syncs_after(2);
        f.sync_data().unwrap();
        fs.sync_dir(Path::new(DIR)).unwrap();
        assert!(f.sync_data().is_err());
        assert!(fs.sync_dir(Path::new(DIR)).is_err());
        // Turning the switch off does not refill the budget.
        fs.fail_syncs(false);
        assert!(f.sync_data().is_err());
        fs.fail_syncs_after(u64::MAX);
        f.sync_data().unwrap();
    }

    #[test]
    fn a_full_disk_refuses_growth_but_not_overwrites() {
        let fs = SimFs::new();
        fs.set_capacity(10);
        let a = durable_file(&fs, "a");
        let b = durable_file(&fs, "b");
        a.write_all_at(&[1; 6], 0).unwrap();
        // The limit is on all files together: b may grow by 4, not 5.
        let err = b.write_all_at(&[2; 5], 0).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::StorageFull);
        assert_eq!(b.len().unwrap(), 0, "a refused write changes nothing");
        b.write_all_at(&[2; 4], 0).unwrap();
        // Full now, but overwriting in place takes no room.
        a.write_all_at(&[3; 6], 0).unwrap();
        assert_eq!(
            a.write_all_at(&[3], 6).unwrap_err().kind(),
            io::ErrorKind::StorageFull
        );
        // Removing a file gives its room back.
        fs.remove(&path("b")).unwrap();
        a.write_all_at(&[3; 4], 6).unwrap();
        assert_eq!(a.len().unwrap(), 10);
    }

    #[test]
    fn directory_changes_are_durable_only_after_the_directory_is_synced() {
        let fs = SimFs::new();
        let f = fs.create(&path("new")).unwrap();
        f.write_all_at(b"data", 0).unwrap();
        f.sync_data().unwrap();
        // Synced data, but no durable directory entry: the file is gone after a crash.
        assert!(names(&fs.crash_image(0)).is_empty());
        fs.sync_dir(Path::new(DIR)).unwrap();
        assert_eq!(names(&fs.crash_image(0)), ["new"]);

        // A rename is durable only after the directory sync; until then the old name holds.
        durable_file(&fs, "old");
        fs.rename(&path("new"), &path("old")).unwrap();
        assert_eq!(names(&fs), ["old"]);
        assert_eq!(
            contents(&fs, "old"),
            b"data",
            "the rename replaced the old file"
        );
        let before = fs.crash_image(0);
        assert_eq!(names(&before), ["new", "old"]);
        assert!(contents(&before, "old").is_empty());
        fs.sync_dir(Path::new(DIR)).unwrap();
        let after = fs.crash_image(0);
        assert_eq!(names(&after), ["old"]);
        assert_eq!(contents(&after, "old"), b"data");

        // A removal too.
        fs.remove(&path("old")).unwrap();
        assert_eq!(names(&fs.crash_image(0)), ["old"]);
        fs.sync_dir(Path::new(DIR)).unwrap();
        assert!(names(&fs.crash_image(0)).is_empty());
    }

    #[test]
    fn a_directory_sync_covers_only_that_directory() {
        let fs = SimFs::new();
        fs.create(Path::new("/d/a")).unwrap();
        fs.create(Path::new("/e/b")).unwrap();
        fs.create(Path::new("/d/sub/c")).unwrap();
        fs.sync_dir(Path::new(DIR)).unwrap();
        let after = fs.crash_image(0);
        assert_eq!(names(&after), ["a"]);
        assert!(after.list(Path::new("/e")).unwrap().is_empty());
        assert!(after.list(Path::new("/d/sub")).unwrap().is_empty());
        // Listing shows only the directory's own files, not those of a subdirectory.
        assert_eq!(names(&fs), ["a"]);
    }

    #[test]
    fn files_behave_like_files() {
        let fs = SimFs::new();
        let f = durable_file(&fs, "a");
        assert!(f.is_empty().unwrap());
        assert_eq!(
            fs.create(&path("a")).unwrap_err().kind(),
            io::ErrorKind::AlreadyExists
        );
        assert_eq!(
            fs.open(&path("b")).unwrap_err().kind(),
            io::ErrorKind::NotFound
        );
        assert_eq!(
            fs.remove(&path("b")).unwrap_err().kind(),
            io::ErrorKind::NotFound
        );
        assert_eq!(
            fs.rename(&path("b"), &path("c")).unwrap_err().kind(),
            io::ErrorKind::NotFound
        );
        remove_if_present(&fs, &path("b")).unwrap();
        // A write past the end extends the file with zeros.
        f.write_all_at(b"z", 3).unwrap();
        assert_eq!(contents(&fs, "a"), b"\0\0\0z");
        let mut buf = [0; 2];
        assert_eq!(
            f.read_exact_at(&mut buf, 3).unwrap_err().kind(),
            io::ErrorKind::UnexpectedEof
        );
        // Another handle to the same file sees the same bytes.
        assert_eq!(contents(&fs, "a"), b"\0\0\0z");
        remove_if_present(&fs, &path("a")).unwrap();
        assert!(names(&fs).is_empty());
    }

    #[test]
    fn corruption_is_damage_on_the_disk_and_survives_a_crash() {
        let fs = SimFs::new();
        let f = durable_file(&fs, "a");
        f.write_all_at(&[0b1010], 0).unwrap();
        f.sync_data().unwrap();
        fs.corrupt(&path("a"), 0, 0b0001).unwrap();
        assert_eq!(contents(&fs, "a"), [0b1011]);
        assert_eq!(contents(&fs.crash_image(0), "a"), [0b1011]);
        assert_eq!(
            fs.corrupt(&path("b"), 0, 1).unwrap_err().kind(),
            io::ErrorKind::NotFound
        );
    }

    #[test]
    fn sync_latency_slows_every_sync() {
        let fs = SimFs::new();
        let f = durable_file(&fs, "a");
        fs.set_sync_latency(std::time::Duration::from_millis(20));
        let started = std::time::Instant::now();
        f.sync_data().unwrap();
        fs.sync_dir(Path::new(DIR)).unwrap();
        assert!(started.elapsed() >= std::time::Duration::from_millis(40));
    }

    #[test]
    fn whole_page_writes_outside_pages_are_refused_and_write_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let real = dir.path().join("f");
        RealFs.create(&real).unwrap();
        let sim = SimFs::new();
        sim.create(&path("f")).unwrap();
        let mut buf = Vec::new();
        let page = aligned(&mut buf, 2 * PAGE_BYTES, 9);
        for f in [
            RealFs.open_pages(&real).unwrap(),
            sim.open_pages(&path("f")).unwrap(),
        ] {
            for (pages, offset) in [
                (&page[..PAGE_BYTES], 512),
                (&page[..PAGE_BYTES - 1], 0),
                (&page[1..=PAGE_BYTES], 0),
            ] {
                let err = f.write_pages_at(pages, offset).unwrap_err();
                assert_eq!(err.kind(), io::ErrorKind::InvalidInput, "{err}");
                assert_eq!(f.len().unwrap(), 0);
            }
        }
    }

    /// What one handle writes as whole pages (around the page cache where the file system
    /// allows it) the file's other handles read, before and after a sync, rewrites included.
    #[test]
    fn whole_pages_written_directly_are_read_through_the_other_handles() {
        // On a disk (Linux keeps /var/tmp on one), where direct I/O is allowed; the system's
        // temporary directory may be in memory.
        let dir = tempfile::tempdir_in("/var/tmp")
            .or_else(|_| tempfile::tempdir())
            .unwrap();
        let at = dir.path().join("seg");
        let reader = RealFs.create(&at).unwrap();
        reader.write_all_at(b"header", 0).unwrap();
        reader.sync_data().unwrap();
        let mut before = vec![0; 6];
        reader.read_exact_at(&mut before, 0).unwrap();
        let file = RealFile {
            file: OpenOptions::new().read(true).write(true).open(&at).unwrap(),
            direct: open_direct(&at),
            direct_refused: AtomicBool::new(false),
        };
        let mut buf = Vec::new();
        for (round, fill) in [(0u64, 1u8), (1, 2), (0, 3)] {
            let pages = aligned(&mut buf, 2 * PAGE_BYTES, fill);
            file.write_pages_at(pages, round * PAGE_BYTES as u64)
                .unwrap();
            let mut read = vec![0; 2 * PAGE_BYTES];
            reader
                .read_exact_at(&mut read, round * PAGE_BYTES as u64)
                .unwrap();
            assert!(read.iter().all(|&b| b == fill), "round {round}");
            file.sync_data().unwrap();
        }
        if cfg!(target_os = "linux") && file.direct.is_none() {
            eprintln!(
                "no direct I/O in {}: only the page cache was tested",
                dir.path().display()
            );
        }
        // A file system that took the direct handle took its writes too.
        assert!(!file.direct_refused.load(Ordering::Relaxed));
        assert_eq!(reader.len().unwrap(), 3 * PAGE_BYTES as u64);
    }
}
