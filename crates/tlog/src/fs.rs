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
struct RealFile(File);

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
        Ok(Arc::new(RealFile(f)))
    }

    fn create(&self, path: &Path) -> io::Result<Arc<dyn FsFile>> {
        let f = OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(path)?;
        Ok(Arc::new(RealFile(f)))
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
        Ok(self.0.metadata()?.len())
    }

    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        FileExt::read_exact_at(&self.0, buf, offset)
    }

    fn write_all_at(&self, buf: &[u8], offset: u64) -> io::Result<()> {
        FileExt::write_all_at(&self.0, buf, offset)
    }

    fn sync_data(&self) -> io::Result<()> {
        self.0.sync_data()
    }

    fn set_len(&self, len: u64) -> io::Result<()> {
        self.0.set_len(len)
    }
}

/// An in-memory file system that tracks what was synced, for crash and fault tests.
///
/// - A file's data is durable up to its last [`FsFile::sync_data`]; a directory's entries
///   (creations, removals, renames) are durable after [`Fs::sync_dir`].
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
                return Err(io::Error::other("simulated sync failure"));
            }
            fs.syncs.fetch_add(1, Ordering::SeqCst);
        }
        let mut guard = lock(&self.data);
        let d = &mut *guard;
        // Only what changed is copied: preallocated files are large.
        let len = d.current.len();
        if let Some(shrunk) = d.shrunk_to.take() {
            d.synced.truncate(shrunk);
        }
        d.synced.resize(len, 0);
        for (offset, bytes) in d.pending.drain(..) {
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
