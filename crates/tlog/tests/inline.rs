//! A log with `Blocking::Inline`, as the simulation runs it: the writer is a task and the spare
//! segments are written by the writer itself, so every disk call happens on the runtime's one
//! thread; the log behaves as with its threads.

// Test helpers may unwrap: a panic there is a failed test.
#![allow(clippy::unwrap_used)]

use std::io;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::thread::ThreadId;

use bytes::Bytes;
use strata_core::{Blocking, Epoch, LogId, LogServer, Version};
use strata_tlog::fs::{Fs, FsFile, RealFs};
use strata_tlog::{FileLog, FileLogConfig, OpenMode};

/// The real disk, noting the thread of every write and sync.
#[derive(Debug, Default)]
struct Watched {
    threads: Arc<Mutex<Vec<ThreadId>>>,
}

#[derive(Debug)]
struct WatchedFile {
    file: Arc<dyn FsFile>,
    threads: Arc<Mutex<Vec<ThreadId>>>,
}

impl WatchedFile {
    fn note(&self) {
        self.threads
            .lock()
            .unwrap()
            .push(std::thread::current().id());
    }
}

impl Watched {
    fn wrap(&self, file: Arc<dyn FsFile>) -> Arc<dyn FsFile> {
        Arc::new(WatchedFile {
            file,
            threads: self.threads.clone(),
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

fn config(blocking: Blocking) -> FileLogConfig {
    FileLogConfig {
        // Small segments and a small first spare: many rolls, into spares and appended ones.
        segment_bytes: 64 << 10,
        blocking,
        ..FileLogConfig::default()
    }
}

fn payload(v: u64) -> Bytes {
    Bytes::from(format!("entry {v} ").repeat(1 + (v as usize % 50)))
}

/// Pushes versions 1..=last from concurrent tasks in reverse order (each waits for its
/// predecessor), pops half, and reads back the rest.
async fn exercise(log: Arc<FileLog>, last: u64) -> Vec<(u64, Bytes)> {
    let pushes: Vec<_> = (1..=last)
        .rev()
        .map(|v| {
            let log = log.clone();
            tokio::spawn(async move {
                log.push(Epoch(0), Version(v - 1), Version(v), payload(v))
                    .await
            })
        })
        .collect();
    for p in pushes {
        p.await.unwrap().unwrap();
    }
    log.pop(Version(last / 2)).await.unwrap();
    pull_all(&log, last / 2, last).await
}

/// Every entry after `after` through `last`, pulled a page at a time.
async fn pull_all(log: &FileLog, after: u64, last: u64) -> Vec<(u64, Bytes)> {
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

type Threads = Arc<Mutex<Vec<ThreadId>>>;

/// A new log in `dir` on the watched disk, and the threads its writes and syncs ran on.
fn open_watched(dir: &Path, blocking: Blocking) -> (Arc<FileLog>, Threads) {
    let watched = Watched::default();
    let threads = watched.threads.clone();
    let log = FileLog::open_dir(
        Arc::new(watched),
        dir,
        LogId(1),
        OpenMode::Create(Version(0)),
        config(blocking),
    )
    .unwrap();
    (Arc::new(log), threads)
}

fn expected(last: u64) -> Vec<(u64, Bytes)> {
    (last / 2 + 1..=last).map(|v| (v, payload(v))).collect()
}

#[tokio::test(flavor = "current_thread")]
async fn an_inline_log_writes_on_the_runtime_thread_and_reads_back_after_a_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let (log, threads) = open_watched(dir.path(), Blocking::Inline);
    assert_eq!(exercise(log.clone(), 2_000).await, expected(2_000));
    log.close();
    drop(log);

    let here = std::thread::current().id();
    let seen = threads.lock().unwrap().clone();
    assert!(seen.len() > 100, "{} writes and syncs", seen.len());
    assert!(
        seen.iter().all(|t| *t == here),
        "a write or sync ran on another thread"
    );

    // What it wrote is a log like any other: reopened with its threads, it holds the same.
    let log = FileLog::open_existing(dir.path(), LogId(1), config(Blocking::Threads)).unwrap();
    assert_eq!(pull_all(&log, 1_000, 2_000).await, expected(2_000));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_threaded_log_writes_on_its_own_threads() {
    // The control: the same run with threads does its writes elsewhere, so the test above
    // would notice a writer that still ran on a thread.
    let dir = tempfile::tempdir().unwrap();
    let (log, threads) = open_watched(dir.path(), Blocking::Threads);
    assert_eq!(exercise(log.clone(), 500).await, expected(500));
    log.close();
    let writer = threads.lock().unwrap().last().copied().unwrap();
    assert_ne!(writer, std::thread::current().id());
}
