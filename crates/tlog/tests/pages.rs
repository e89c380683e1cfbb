//! The writer's whole-page writes: every record of a group commit reaches its segment as
//! whole, aligned pages (the partial page before it rewritten, zeros after it), so that the
//! operating system's file system can write them around its page cache; and what is read back,
//! through a crash or a reopen, is exactly what was acknowledged, whichever way it was written.

// Test helpers may unwrap: a panic there is a failed test.
#![allow(clippy::unwrap_used)]

use std::collections::{BTreeMap, BTreeSet};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use strata_core::{Blocking, Epoch, LogId, LogServer, Version};
use strata_testkit::rng::SplitMix64;
use strata_tlog::fs::{Fs, FsFile, PAGE_BYTES, RealFs, SimFs, writing_group};
use strata_tlog::{FileLog, FileLogConfig};

const EPOCH: Epoch = Epoch(1);
/// Small segments, so that a few hundred pushes roll through several of them.
const SEGMENT: u64 = 24 << 10;

/// A file system that records every write to a segment file made inside a group commit (the
/// log's records: a new segment's header is written before the file gets a segment's name),
/// and the length of each zero-filled segment when it was renamed into place; it passes
/// everything on to the one beneath it.
#[derive(Debug)]
struct Recording {
    inner: Arc<SimFs>,
    log: Arc<Mutex<Recorded>>,
    /// Fail every `open_pages` of a spare, as an open refused for want of file descriptors.
    refuse_spare_pages: bool,
}

#[derive(Debug, Default)]
struct Recorded {
    /// Segment, offset and length of each write.
    writes: Vec<(PathBuf, u64, usize)>,
    /// The length of each segment made from a zero-filled spare, when it was renamed.
    zero_filled: BTreeMap<PathBuf, u64>,
    /// Offset and length of each write of zeros to a spare being prepared, and whether it was
    /// one of whole pages (`write_pages_at`) to a handle from `open_pages`.
    spare_writes: Vec<(u64, usize, bool)>,
}

#[derive(Debug)]
struct RecordingFile {
    inner: Arc<dyn FsFile>,
    /// The file's path, when it was opened under a segment's name.
    segment: Option<PathBuf>,
    /// When it was created as a spare: how many spares had been rolled into before it. Once
    /// that count grows it was rolled into, and the writes to it are records.
    spare: Option<usize>,
    /// Whether it came from `Fs::open_pages` (the handle the operating system's file system
    /// opens for direct I/O).
    pages_handle: bool,
    log: Arc<Mutex<Recorded>>,
}

impl Recording {
    fn new(refuse_spare_pages: bool) -> Recording {
        Recording {
            inner: Arc::new(SimFs::new()),
            log: Arc::default(),
            refuse_spare_pages,
        }
    }

    fn wrap(&self, path: &Path, inner: Arc<dyn FsFile>, pages_handle: bool) -> Arc<dyn FsFile> {
        Arc::new(RecordingFile {
            inner,
            segment: Some(path.to_owned()).filter(|p| p.extension().is_some_and(|e| e == "seg")),
            spare: path
                .file_name()
                .is_some_and(|n| n == "spare.zeroed")
                .then(|| self.log.lock().unwrap().zero_filled.len()),
            pages_handle,
            log: self.log.clone(),
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
        Ok(self.wrap(path, self.inner.open(path)?, false))
    }
    fn create(&self, path: &Path) -> io::Result<Arc<dyn FsFile>> {
        Ok(self.wrap(path, self.inner.create(path)?, false))
    }
    fn open_pages(&self, path: &Path) -> io::Result<Arc<dyn FsFile>> {
        if self.refuse_spare_pages && path.file_name().is_some_and(|n| n == "spare.zeroed") {
            return Err(io::Error::other("too many open files"));
        }
        Ok(self.wrap(path, self.inner.open_pages(path)?, true))
    }
    fn remove(&self, path: &Path) -> io::Result<()> {
        self.inner.remove(path)
    }
    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        self.inner.rename(from, to)?;
        if from.file_name().is_some_and(|n| n == "spare.zeroed") {
            let len = self.inner.open(to)?.len()?;
            self.log
                .lock()
                .unwrap()
                .zero_filled
                .insert(to.to_owned(), len);
        }
        Ok(())
    }
    fn sync_dir(&self, dir: &Path) -> io::Result<()> {
        self.inner.sync_dir(dir)
    }
}

impl RecordingFile {
    /// Records a write of `buf` at `offset`: the zeros of a spare being prepared (inside a
    /// group too: the simulation's logs write them inline; the header written to it before it
    /// is rolled into is no zeros), or a group's to a segment.
    fn record(&self, buf: &[u8], offset: u64, pages: bool) {
        let len = buf.len();
        let mut log = self.log.lock().unwrap();
        if self.spare == Some(log.zero_filled.len()) && buf.iter().all(|b| *b == 0) {
            log.spare_writes.push((offset, len, pages));
        } else if let Some(path) = &self.segment
            && writing_group()
        {
            log.writes.push((path.clone(), offset, len));
        }
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
        self.record(buf, offset, false);
        self.inner.write_all_at(buf, offset)
    }
    fn write_pages_at(&self, pages: &[u8], offset: u64) -> io::Result<()> {
        self.record(pages, offset, self.pages_handle);
        self.inner.write_pages_at(pages, offset)
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

fn recording() -> (Arc<Recording>, Arc<Mutex<Recorded>>) {
    let fs = Arc::new(Recording::new(false));
    let log = fs.log.clone();
    (fs, log)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn records_are_written_as_whole_aligned_pages() {
    let (fs, recorded) = recording();
    let log = Arc::new(open(fs, Path::new("/log"), true));
    let mut rng = SplitMix64(7);
    let mut acked = push_each(&log, &mut rng, 0, 150).await;
    acked.extend(push_together(&log, &mut rng, 150, 150).await);
    assert_eq!(everything(&log).await, acked);

    let writes = &recorded.lock().unwrap().writes;
    assert!(writes.len() >= 150, "{} group writes", writes.len());
    let page = PAGE_BYTES as u64;
    for (path, offset, len) in writes {
        assert!(
            offset.is_multiple_of(page) && (*len as u64).is_multiple_of(page),
            "a group wrote {len} bytes at offset {offset} of {}",
            path.display()
        );
    }
}

/// The zeros after a group's last record fill its page, and stay within the zeros written ahead
/// of it: a zero-filled segment's records never grow its file (a sync that commits a new size
/// costs what preallocation saves, and a full disk would refuse it), even with a segment size
/// that is no whole number of pages. The spares are written inline, as the simulation writes
/// them, so that every roll finds one ready: a helper thread on a busy machine may not have
/// finished one in time, and the log then appends a segment of its own (which it may grow).
#[tokio::test]
async fn whole_pages_never_grow_a_zero_filled_segment() {
    let (fs, recorded) = recording();
    let config = FileLogConfig {
        segment_bytes: 65_000,
        blocking: Blocking::Inline,
        ..config(true)
    };
    let log = FileLog::open_with(fs, Path::new("/log"), LogId(4), Version(0), config).unwrap();
    let mut rng = SplitMix64(5);
    let acked = push_each(&log, &mut rng, 0, 600).await;
    assert_eq!(everything(&log).await, acked);

    let recorded = recorded.lock().unwrap();
    // Every segment but the log's first (appended, as a new log's are until it has written a
    // spare's worth) was a zero-filled spare.
    let segments: BTreeSet<&PathBuf> = recorded.writes.iter().map(|(path, ..)| path).collect();
    assert!(segments.len() >= 10, "{} segments", segments.len());
    assert_eq!(
        recorded.zero_filled.len() + 1,
        segments.len(),
        "{:?}",
        recorded.zero_filled
    );
    for (path, offset, len) in &recorded.writes {
        if let Some(&zeros_end) = recorded.zero_filled.get(path) {
            assert!(
                offset + *len as u64 <= zeros_end,
                "{} bytes at {offset} grew {} past its {zeros_end} zero-filled bytes",
                len,
                path.display()
            );
        }
    }
}

/// A spare's zeros are written as whole, aligned pages through a handle opened for them when the
/// log writes its records so (the operating system's file system then writes them around its
/// page cache: copying a segment of zeros into the cache took a tenth of the CPU of 64 clients'
/// commits), and through `write_all_at` otherwise. Either way each spare is written from its
/// start to its end in pieces of 1 MiB, the last one shorter, and fills it to the length it is
/// rolled in at, never past the segment size: with small segments (one piece each) and with
/// segments of 2.5 MiB (spares of 1 MiB, then about 2, then 2.5).
#[tokio::test]
async fn a_spare_is_written_as_whole_pages_when_records_are() {
    const PIECE: usize = 1 << 20;
    for (direct_io, segment_bytes, pushes) in [
        (true, SEGMENT, 300),
        (false, SEGMENT, 300),
        (true, 5 << 19, 2_000),
        (false, 5 << 19, 2_000),
    ] {
        let (fs, recorded) = recording();
        let config = FileLogConfig {
            segment_bytes,
            blocking: Blocking::Inline,
            ..config(direct_io)
        };
        let log = FileLog::open_with(fs, Path::new("/log"), LogId(4), Version(0), config).unwrap();
        let mut rng = SplitMix64(11);
        let acked = push_each(&log, &mut rng, 0, pushes).await;
        assert_eq!(everything(&log).await, acked);

        let recorded = recorded.lock().unwrap();
        assert!(
            recorded.zero_filled.len() >= 3,
            "{:?}",
            recorded.zero_filled
        );
        let page = PAGE_BYTES as u64;
        for &(offset, len, pages) in &recorded.spare_writes {
            assert_eq!(
                pages, direct_io,
                "{len} zeros at {offset}, direct I/O {direct_io}"
            );
            assert!(
                offset.is_multiple_of(page) && (len as u64).is_multiple_of(page) && len <= PIECE,
                "{len} zeros at {offset}"
            );
        }
        // Piece after piece, each whole but a spare's last.
        let mut spares: Vec<u64> = Vec::new();
        let mut short = false;
        for &(offset, len, _) in &recorded.spare_writes {
            if offset == 0 {
                spares.push(0);
                short = false;
            }
            assert!(!short, "a piece after a short one, at {offset}");
            let end = spares.last_mut().unwrap();
            assert_eq!(offset, *end, "a gap before {offset}");
            *end += len as u64;
            short = len < PIECE;
        }
        let rolled: Vec<u64> = recorded.zero_filled.values().copied().collect();
        assert!(
            spares.starts_with(&rolled),
            "spares written {spares:?}, rolled into {rolled:?}"
        );
        assert!(spares.iter().all(|&s| s <= segment_bytes), "{spares:?}");
        if segment_bytes > PIECE as u64 {
            assert!(spares.iter().any(|&s| s > 2 * PIECE as u64), "{spares:?}");
        }
    }
}

/// A spare whose handle for whole pages cannot be opened (no file descriptor left, say) is a
/// failed spare like any other: its file is removed, and the log appends its next segment
/// instead, losing nothing.
#[tokio::test]
async fn a_spare_that_cannot_be_opened_for_pages_is_removed() {
    let fs = Arc::new(Recording::new(true));
    let config = FileLogConfig {
        blocking: Blocking::Inline,
        ..config(true)
    };
    let log =
        FileLog::open_with(fs.clone(), Path::new("/log"), LogId(4), Version(0), config).unwrap();
    let mut rng = SplitMix64(3);
    let mut acked = Vec::new();
    for round in 0..40 {
        acked.extend(push_each(&log, &mut rng, round * 10, 10).await);
        let names = fs.list(Path::new("/log")).unwrap();
        assert!(
            !names.iter().any(|n| n == "spare.zeroed"),
            "a failed spare left behind: {names:?}"
        );
    }
    assert!(fs.log.lock().unwrap().zero_filled.is_empty());
    assert_eq!(everything(&log).await, acked);
}

/// A crash while a group commit is in flight keeps every acknowledged record, with the log
/// written either way: the group's record spans several pages, its first page rewrites
/// acknowledged records, and what reaches the disk is a prefix torn at any byte, or any subset
/// of its sectors. The log reopened after the crash (a torn group zeroed) goes on from there.
/// One segment, appended to, so that no roll (whose first sync would fail) comes before the
/// write; the zero-filled segments' torn groups are in `preallocated.rs`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crash_during_a_group_keeps_every_acknowledged_record_either_way() {
    const SECTOR: usize = 512;
    for direct_io in [true, false] {
        let fs = SimFs::new();
        let dir = Path::new("/log");
        let config = FileLogConfig {
            segment_bytes: 1 << 20,
            preallocate: false,
            ..config(direct_io)
        };
        let open = |fs: &SimFs| {
            FileLog::open_with(Arc::new(fs.clone()), dir, LogId(4), Version(0), config).unwrap()
        };
        let log = Arc::new(open(&fs));
        let mut rng = SplitMix64(11);
        let mut acked = push_each(&log, &mut rng, 0, 40).await;
        acked.extend(push_together(&log, &mut rng, 40, 40).await);
        // The next record is written, but its sync fails: it is never acknowledged.
        fs.fail_syncs(true);
        let lost = Bytes::from(vec![0xAB; 9_000]);
        let failed = log
            .push(EPOCH, Version(80), Version(81), lost.clone())
            .await;
        assert!(failed.is_err());
        let mut names = fs.list(dir).unwrap();
        names.retain(|n| n.ends_with(".seg"));
        assert_eq!(names.len(), 1);
        let in_flight = fs.unsynced_sectors(&dir.join(&names[0]), SECTOR);
        assert!(in_flight.len() >= 9_000 / SECTOR, "{in_flight:?}");
        // The power loss comes now, before the poisoned log is dropped: its close would write
        // the directory again and sync it (and the syncs still fail, so it cannot).
        let mut pick = SplitMix64(u64::from(direct_io));
        let images: Vec<SimFs> = (0..30)
            .map(
                |round| match [0, 1, 700, PAGE_BYTES + 3, 9_000, usize::MAX].get(round) {
                    Some(&torn) => fs.crash_image(torn),
                    None => {
                        let kept: Vec<usize> = in_flight
                            .iter()
                            .copied()
                            .filter(|_| pick.below(2) == 0)
                            .collect();
                        fs.crash_image_sectors(SECTOR, |_, s| kept.contains(&s))
                    }
                },
            )
            .collect();
        drop(log);

        let mut lost_whole = 0;
        for (round, image) in images.iter().enumerate() {
            let context = format!("direct {direct_io}, round {round}");
            let reopened = Arc::new(open(image));
            let mut found = everything(&reopened).await;
            // The record in flight may have made it whole (kept, never promised), never in part.
            if found.len() == acked.len() + 1 {
                assert_eq!(found.pop(), Some((81, lost.clone())), "{context}");
            } else {
                lost_whole += 1;
            }
            assert_eq!(found, acked, "{context}");
            // The reopened log appends after what it kept, into its partial last page.
            let last = everything(&reopened).await.last().unwrap().0;
            let mut more = everything(&reopened).await;
            more.extend(push_each(&reopened, &mut rng, last, 20).await);
            assert_eq!(everything(&reopened).await, more, "{context}");
            reopened.close();
        }
        // Most images hold only part of the record: the tears were real.
        assert!(
            lost_whole >= 20,
            "direct {direct_io}: {lost_whole} of 30 lost it"
        );
    }
}

/// On the operating system's file system (direct I/O where it allows it): records of every
/// size and alignment, across segment rolls, read back after a close and a reopen, and after
/// appending again to the reopened log.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_real_file_system_reads_back_what_was_written() {
    for direct_io in [true, false] {
        // The target directory: on a disk, where direct I/O is allowed (a temporary
        // directory may be in memory).
        let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
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
