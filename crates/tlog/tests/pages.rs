//! The writer's whole-page writes: every record of a group commit reaches its segment as
//! whole, aligned pages (the partial page before it rewritten, zeros after it), so that the
//! operating system's file system can write them around its page cache; and what is read back,
//! through a crash or a reopen, is exactly what was acknowledged, whichever way it was written.

// Test helpers may unwrap: a panic there is a failed test.
#![allow(clippy::unwrap_used)]

use std::io;
use std::path::Path;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use strata_core::{Epoch, LogId, LogServer, Version};
use strata_testkit::rng::SplitMix64;
use strata_tlog::fs::{Fs, FsFile, PAGE_BYTES, RealFs, SimFs, writing_group};
use strata_tlog::{FileLog, FileLogConfig};

const EPOCH: Epoch = Epoch(1);
/// Small segments, so that a few hundred pushes roll through several of them.
const SEGMENT: u64 = 24 << 10;

/// A file system that records the offset and length of every write to a segment file made
/// inside a group commit (the log's records: a new segment's header is written before the file
/// gets a segment's name), and passes everything on to the one beneath it.
#[derive(Debug)]
struct Recording {
    inner: Arc<dyn Fs>,
    writes: Arc<Mutex<Vec<(u64, usize)>>>,
}

#[derive(Debug)]
struct RecordingFile {
    inner: Arc<dyn FsFile>,
    /// Whether the file was opened under a segment's name.
    segment: bool,
    writes: Arc<Mutex<Vec<(u64, usize)>>>,
}

impl Recording {
    fn wrap(&self, path: &Path, inner: Arc<dyn FsFile>) -> Arc<dyn FsFile> {
        Arc::new(RecordingFile {
            inner,
            segment: path.extension().is_some_and(|e| e == "seg"),
            writes: self.writes.clone(),
        })
    }
}

impl Fs for Recording {
    fn create_dir_all(&self, dir: &Path) -> io::Result<()> {
        self.inner.create_dir_all(dir)
    }
    fn list(&self, dir: &Path) -> io::Result<Vec<String>> {
        self.inner.list(dir)
    }
    fn open(&self, path: &Path) -> io::Result<Arc<dyn FsFile>> {
        Ok(self.wrap(path, self.inner.open(path)?))
    }
    fn create(&self, path: &Path) -> io::Result<Arc<dyn FsFile>> {
        Ok(self.wrap(path, self.inner.create(path)?))
    }
    fn remove(&self, path: &Path) -> io::Result<()> {
        self.inner.remove(path)
    }
    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        self.inner.rename(from, to)
    }
    fn sync_dir(&self, dir: &Path) -> io::Result<()> {
        self.inner.sync_dir(dir)
    }
}

impl FsFile for RecordingFile {
    fn len(&self) -> io::Result<u64> {
        self.inner.len()
    }
    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        self.inner.read_exact_at(buf, offset)
    }
    fn write_all_at(&self, buf: &[u8], offset: u64) -> io::Result<()> {
        if self.segment && writing_group() {
            self.writes.lock().unwrap().push((offset, buf.len()));
        }
        self.inner.write_all_at(buf, offset)
    }
    fn sync_data(&self) -> io::Result<()> {
        self.inner.sync_data()
    }
    fn set_len(&self, len: u64) -> io::Result<()> {
        self.inner.set_len(len)
    }
}

fn config(direct_io: bool) -> FileLogConfig {
    FileLogConfig {
        segment_bytes: SEGMENT,
        direct_io,
        ..FileLogConfig::default()
    }
}

fn open(fs: Arc<dyn Fs>, dir: &Path, direct_io: bool) -> FileLog {
    FileLog::open_with(fs, dir, LogId(4), Version(0), config(direct_io)).unwrap()
}

/// Payloads of 0 to 5,000 bytes, so that records start and end anywhere in a page, some span
/// two pages or more, and some segments end with a partial page.
fn payload(rng: &mut SplitMix64, version: u64) -> Bytes {
    let len = usize::try_from(rng.below(5_001)).unwrap();
    Bytes::from(vec![(version % 251) as u8; len])
}

/// Pushes `n` entries after `from`, one at a time (each its own group commit); what was
/// acknowledged.
async fn push_each(log: &FileLog, rng: &mut SplitMix64, from: u64, n: u64) -> Vec<(u64, Bytes)> {
    let mut acked = Vec::new();
    for v in from + 1..=from + n {
        let p = payload(rng, v);
        log.push(EPOCH, Version(v - 1), Version(v), p.clone())
            .await
            .unwrap();
        acked.push((v, p));
    }
    acked
}

/// Pushes `n` entries after `from` all at once, so that they form groups of several records.
async fn push_together(
    log: &Arc<FileLog>,
    rng: &mut SplitMix64,
    from: u64,
    n: u64,
) -> Vec<(u64, Bytes)> {
    let entries: Vec<(u64, Bytes)> = (from + 1..=from + n)
        .map(|v| (v, payload(rng, v)))
        .collect();
    let pushes: Vec<_> = entries
        .iter()
        .map(|(v, p)| {
            let (log, v, p) = (log.clone(), *v, p.clone());
            tokio::spawn(async move { log.push(EPOCH, Version(v - 1), Version(v), p).await })
        })
        .collect();
    for p in pushes {
        p.await.unwrap().unwrap();
    }
    entries
}

async fn everything(log: &FileLog) -> Vec<(u64, Bytes)> {
    log.pull(Version(0), usize::MAX)
        .await
        .unwrap()
        .into_iter()
        .map(|e| (e.version.0, e.payload))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn records_are_written_as_whole_aligned_pages() {
    let writes = Arc::new(Mutex::new(Vec::new()));
    let fs = Arc::new(Recording {
        inner: Arc::new(SimFs::new()),
        writes: writes.clone(),
    });
    let log = Arc::new(open(fs, Path::new("/log"), true));
    let mut rng = SplitMix64(7);
    let mut acked = push_each(&log, &mut rng, 0, 150).await;
    acked.extend(push_together(&log, &mut rng, 150, 150).await);
    assert_eq!(everything(&log).await, acked);

    let writes = writes.lock().unwrap().clone();
    assert!(writes.len() >= 150, "{} group writes", writes.len());
    let page = PAGE_BYTES as u64;
    for (offset, len) in &writes {
        assert!(
            offset.is_multiple_of(page) && (*len as u64).is_multiple_of(page),
            "a group wrote {len} bytes at offset {offset}"
        );
    }
}

/// A crash loses nothing acknowledged, with each push its own group or many in one, and the
/// log written either way; the log reopened after the crash goes on from where it was.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crash_keeps_every_acknowledged_record_either_way() {
    for direct_io in [true, false] {
        let fs = SimFs::new();
        let dir = Path::new("/log");
        let log = Arc::new(open(Arc::new(fs.clone()), dir, direct_io));
        let mut rng = SplitMix64(11);
        let mut acked = push_each(&log, &mut rng, 0, 120).await;
        acked.extend(push_together(&log, &mut rng, 120, 120).await);

        // Every torn prefix of what was in flight gives the same acknowledged records.
        for torn in [0, 1, 700, PAGE_BYTES + 3] {
            let after = fs.crash_image(torn);
            let reopened = Arc::new(open(Arc::new(after), dir, direct_io));
            assert_eq!(
                everything(&reopened).await,
                acked,
                "direct {direct_io}, torn {torn}"
            );
            // The reopened log appends after its last record, into its partial last page.
            let mut more = acked.clone();
            more.extend(push_each(&reopened, &mut rng, 240, 40).await);
            assert_eq!(
                everything(&reopened).await,
                more,
                "direct {direct_io}, torn {torn}"
            );
            reopened.close();
        }
        log.close();
    }
}

/// On the operating system's file system (direct I/O where it allows it): records of every
/// size and alignment, across segment rolls, read back after a close and a reopen, and after
/// appending again to the reopened log.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_real_file_system_reads_back_what_was_written() {
    for direct_io in [true, false] {
        let dir = tempfile::tempdir().unwrap();
        let mut rng = SplitMix64(3);
        let log = Arc::new(open(Arc::new(RealFs), dir.path(), direct_io));
        let mut acked = push_each(&log, &mut rng, 0, 100).await;
        acked.extend(push_together(&log, &mut rng, 100, 100).await);
        assert_eq!(everything(&log).await, acked, "direct {direct_io}");
        log.close();
        drop(log);

        let log = Arc::new(open(Arc::new(RealFs), dir.path(), direct_io));
        assert_eq!(
            everything(&log).await,
            acked,
            "direct {direct_io}, reopened"
        );
        acked.extend(push_each(&log, &mut rng, 200, 60).await);
        log.close();
        drop(log);

        let log = open(Arc::new(RealFs), dir.path(), !direct_io);
        assert_eq!(
            everything(&log).await,
            acked,
            "direct {direct_io}, twice reopened"
        );
        log.close();
    }
}
