//! The real disk, watched: which thread each write and sync ran on, and a switch that makes
//! the next write panic. Shared by the tests of where a log's disk calls run.

use std::io;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::ThreadId;

use bytes::Bytes;
use strata_core::{Blocking, Epoch, ErrorKind, LogId, LogServer, Version};
use strata_tlog::fs::{Fs, FsFile, RealFs};
use strata_tlog::{FileLog, FileLogConfig, Leaders, OpenMode};

/// The threads disk calls ran on, in order: each one's id and name.
pub(crate) type Threads = Arc<Mutex<Vec<(ThreadId, Option<String>)>>>;

/// The real disk, noting the thread of every write and sync; armed, its next write panics.
#[derive(Debug, Default)]
struct Watched {
    threads: Threads,
    panic_on_write: Arc<AtomicBool>,
}

#[derive(Debug)]
struct WatchedFile {
    file: Arc<dyn FsFile>,
    threads: Threads,
    panic_on_write: Arc<AtomicBool>,
}

impl WatchedFile {
    fn note(&self) {
        let here = std::thread::current();
        self.threads
            .lock()
            .unwrap()
            .push((here.id(), here.name().map(str::to_owned)));
    }
}

impl Watched {
    fn wrap(&self, file: Arc<dyn FsFile>) -> Arc<dyn FsFile> {
        Arc::new(WatchedFile {
            file,
            threads: self.threads.clone(),
            panic_on_write: self.panic_on_write.clone(),
        })
    }
}

impl Fs for Watched {
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

impl FsFile for WatchedFile {
    fn len(&self) -> io::Result<u64> {
        self.file.len()
    }
    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        self.file.read_exact_at(buf, offset)
    }
    fn write_all_at(&self, buf: &[u8], offset: u64) -> io::Result<()> {
        self.note();
        assert!(
            !self.panic_on_write.swap(false, Ordering::SeqCst),
            "a write panicked"
        );
        self.file.write_all_at(buf, offset)
    }
    fn sync_data(&self) -> io::Result<()> {
        self.note();
        self.file.sync_data()
    }
    fn set_len(&self, len: u64) -> io::Result<()> {
        self.file.set_len(len)
    }
}

pub(crate) fn config(blocking: Blocking) -> FileLogConfig {
    FileLogConfig {
        // Small segments and a small first spare: many rolls, into spares and appended ones.
        segment_bytes: 64 << 10,
        blocking,
        // The tests push thousands of versions in reverse order, each waiting for its
        // predecessor: on a slow or busy disk the chain takes longer than the default second
        // to land, and these tests are not about that wait (contract.rs is).
        predecessor_wait: std::time::Duration::from_secs(60),
        ..FileLogConfig::default()
    }
}

pub(crate) fn payload(v: u64) -> Bytes {
    Bytes::from(format!("entry {v} ").repeat(1 + (v as usize % 50)))
}

/// Every entry after `after` through `last`, pulled a page at a time.
pub(crate) async fn pull_all(log: &FileLog, after: u64, last: u64) -> Vec<(u64, Bytes)> {
    let mut out = Vec::new();
    let mut after = Version(after);
    while after.0 < last {
        for e in log.pull(after, 100).await.unwrap() {
            after = e.version;
            out.push((e.version.0, e.payload));
        }
    }
    out
}

/// Pushes `from..=to` one at a time from a task of the runtime, each answered before the next.
#[allow(dead_code)] // not every test binary sharing this module pushes this way
pub(crate) async fn push_one_at_a_time(log: &Arc<FileLog>, from: u64, to: u64) {
    let log = log.clone();
    tokio::spawn(async move {
        for v in from..=to {
            log.push(Epoch(0), Version(v - 1), Version(v), payload(v))
                .await
                .unwrap();
        }
    })
    .await
    .unwrap();
}

/// The names of the threads the disk calls after the first `from` ran on, each once.
#[allow(dead_code)] // not every test binary sharing this module asks where calls ran
pub(crate) fn names_after(threads: &Threads, from: usize) -> Vec<String> {
    let mut names: Vec<String> = threads.lock().unwrap()[from..]
        .iter()
        .map(|t| t.1.clone().unwrap_or_default())
        .collect();
    names.sort();
    names.dedup();
    names
}

/// Checks that `log` was poisoned by a panic in a group commit: `lock` (recovery's first call)
/// fails at once naming the panic, instead of waiting for the group to become durable, and a
/// later push is refused as poisoned.
#[allow(dead_code)] // not every test binary sharing this module makes a group commit panic
pub(crate) async fn assert_poisoned_by_a_panic(log: &FileLog) {
    assert!(log.is_poisoned());
    let err = log.lock(Epoch(1)).await.unwrap_err();
    assert!(matches!(err.kind, ErrorKind::Poisoned(_)), "{err}");
    assert!(err.to_string().contains("panic"), "{err}");
    let err = log
        .push(Epoch(1), Version(1), Version(2), payload(2))
        .await
        .unwrap_err();
    assert!(matches!(err.kind, ErrorKind::Poisoned(_)), "{err}");
}

/// A new log in `dir` on the watched disk, the threads its writes and syncs ran on, and the
/// switch that makes the disk's next write panic.
pub(crate) fn open_armed(
    dir: &Path,
    blocking: Blocking,
    leaders: Leaders,
) -> (Arc<FileLog>, Threads, Arc<AtomicBool>) {
    let watched = Watched::default();
    let threads = watched.threads.clone();
    let armed = watched.panic_on_write.clone();
    let log = FileLog::open_dir(
        Arc::new(watched),
        dir,
        LogId(1),
        OpenMode::Create(Version(0)),
        FileLogConfig {
            queue_wait: std::time::Duration::from_secs(2),
            leaders,
            ..config(blocking)
        },
    )
    .unwrap();
    (Arc::new(log), threads, armed)
}
