//! A lost newest segment is corruption, never a torn write: the `manifest` file names the
//! newest segment that may hold acknowledged records, and recovery requires it. Crash images at
//! every sync of a roll reopen to the acknowledged records; directories written before the
//! manifest existed still open.

// Test helpers may unwrap: a panic there is a failed test.
#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use strata_core::{Epoch, ErrorKind, LogId, LogServer, Version};
use strata_tlog::fs::{Fs, FsFile, SimFs};
use strata_tlog::{FileLog, FileLogConfig};

const DIR: &str = "/log";
const EPOCH: Epoch = Epoch(1);
/// Tiny segments, so a few dozen pushes span several of them.
const SEGMENT: u64 = 4096;
const MANIFEST: &str = "manifest";

fn config(preallocate: bool) -> FileLogConfig {
    FileLogConfig {
        segment_bytes: SEGMENT,
        preallocate,
        ..FileLogConfig::default()
    }
}

fn open_on(fs: Arc<dyn Fs>, config: FileLogConfig) -> strata_core::Result<FileLog> {
    FileLog::open_with(fs, Path::new(DIR), LogId(9), Version(0), config)
}

fn open_sim(fs: &SimFs, config: FileLogConfig) -> strata_core::Result<FileLog> {
    open_on(Arc::new(fs.clone()), config)
}

fn payload(version: u64) -> Bytes {
    // Sizes vary so records straddle different offsets.
    Bytes::from(vec![
        (version % 251) as u8;
        10 + (version as usize * 37) % 300
    ])
}

type Acked = Vec<(Version, Bytes)>;

async fn everything(log: &FileLog) -> Acked {
    let entries = log.pull(Version(0), usize::MAX).await.unwrap();
    entries
        .into_iter()
        .map(|e| (e.version, e.payload))
        .collect()
}

fn segment_name(base: u64) -> String {
    format!("{base:020}.seg")
}

/// The segment files' bases, ascending.
fn bases(names: &[String]) -> Vec<u64> {
    let mut bases: Vec<u64> = names
        .iter()
        .filter_map(|n| n.strip_suffix(".seg")?.parse().ok())
        .collect();
    bases.sort_unstable();
    bases
}

fn sim_bases(fs: &SimFs) -> Vec<u64> {
    bases(&fs.list(Path::new(DIR)).unwrap())
}

/// Every file of the log directory and its bytes.
fn sim_snapshot(fs: &SimFs) -> BTreeMap<String, Vec<u8>> {
    let mut out = BTreeMap::new();
    for name in fs.list(Path::new(DIR)).unwrap() {
        let f = fs.open(&Path::new(DIR).join(&name)).unwrap();
        let mut bytes = vec![0u8; f.len().unwrap() as usize];
        f.read_exact_at(&mut bytes, 0).unwrap();
        out.insert(name, bytes);
    }
    out
}

fn real_snapshot(dir: &Path) -> BTreeMap<String, Vec<u8>> {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| {
            let e = e.unwrap();
            let name = e.file_name().into_string().unwrap();
            (name, std::fs::read(e.path()).unwrap())
        })
        .collect()
}

/// The base the manifest names, read by its documented layout (bytes 16..24).
fn manifest_base(bytes: &[u8]) -> u64 {
    u64::from_le_bytes(bytes[16..24].try_into().unwrap())
}

/// Pushes from version 1 until the log holds at least `segments` segment files and the newest
/// holds records; returns what was acknowledged.
async fn push_segments(log: &FileLog, segments: usize) -> Acked {
    let mut acked = Vec::new();
    let mut v = 0;
    while log.segment_count().unwrap() < segments || acked.len() < 2 {
        assert!(v < 10_000, "the log never reached {segments} segments");
        v += 1;
        log.push(EPOCH, Version(v - 1), Version(v), payload(v))
            .await
            .unwrap();
        acked.push((Version(v), payload(v)));
    }
    // A few more, so the newest segment certainly holds acknowledged records.
    for _ in 0..3 {
        v += 1;
        log.push(EPOCH, Version(v - 1), Version(v), payload(v))
            .await
            .unwrap();
        acked.push((Version(v), payload(v)));
    }
    acked
}

/// How the newest segment was lost.
#[derive(Clone, Copy, Debug)]
enum Loss {
    Deleted,
    TruncatedTo(u64),
    HeaderZeroed,
}

const LOSSES: [Loss; 4] = [
    Loss::Deleted,
    Loss::TruncatedTo(0),
    Loss::TruncatedTo(10),
    Loss::HeaderZeroed,
];

fn lose_sim(fs: &SimFs, path: &Path, loss: Loss) {
    match loss {
        Loss::Deleted => {
            fs.remove(path).unwrap();
            fs.sync_dir(Path::new(DIR)).unwrap();
        }
        Loss::TruncatedTo(len) => {
            let f = fs.open(path).unwrap();
            f.set_len(len).unwrap();
            f.sync_data().unwrap();
        }
        Loss::HeaderZeroed => {
            let f = fs.open(path).unwrap();
            f.write_all_at(&[0u8; 32], 0).unwrap();
            f.sync_data().unwrap();
        }
    }
}

fn lose_real(path: &Path, loss: Loss) {
    match loss {
        Loss::Deleted => std::fs::remove_file(path).unwrap(),
        Loss::TruncatedTo(len) => {
            let f = std::fs::OpenOptions::new().write(true).open(path).unwrap();
            f.set_len(len).unwrap();
        }
        Loss::HeaderZeroed => {
            let mut bytes = std::fs::read(path).unwrap();
            bytes[..32].fill(0);
            std::fs::write(path, bytes).unwrap();
        }
    }
}

fn assert_corruption_naming(opened: strata_core::Result<FileLog>, path: &Path, context: &str) {
    let err = match opened {
        Ok(_) => panic!("{context}: the log opened without its newest segment"),
        Err(err) => err,
    };
    let ErrorKind::Corruption(why) = &err.kind else {
        panic!("{context}: {err}");
    };
    assert!(
        why.contains(&path.display().to_string()),
        "{context}: {why}"
    );
}

#[tokio::test]
async fn lost_newest_segment_is_corruption_naming_it_and_the_open_changes_nothing_sim() {
    for preallocate in [false, true] {
        for loss in LOSSES {
            let context = format!("{loss:?}, preallocate {preallocate}");
            let fs = SimFs::new();
            let log = open_sim(&fs, config(preallocate)).unwrap();
            let acked = push_segments(&log, 4).await;
            drop(log);
            let newest = *sim_bases(&fs).last().unwrap();
            assert!(newest > 0, "{context}: the log rolled");
            // The newest segment holds acknowledged records.
            assert!(acked.iter().any(|(v, _)| v.0 > newest), "{context}");
            let path = Path::new(DIR).join(segment_name(newest));
            lose_sim(&fs, &path, loss);

            let before = sim_snapshot(&fs);
            assert_corruption_naming(open_sim(&fs, config(preallocate)), &path, &context);
            // Nothing was truncated, zeroed, removed or written by the failed open.
            assert_eq!(sim_snapshot(&fs), before, "{context}");
            // And the durable state is the same too: a second open fails the same way.
            assert_corruption_naming(
                open_sim(&fs.crash_image(0), config(preallocate)),
                &path,
                &context,
            );
        }
    }
}

#[tokio::test]
async fn lost_newest_segment_is_corruption_naming_it_and_the_open_changes_nothing_real_dir() {
    for loss in LOSSES {
        let context = format!("{loss:?}");
        let dir = tempfile::tempdir().unwrap();
        let open = || FileLog::open(dir.path(), LogId(9), Version(0), config(true));
        let log = open().unwrap();
        let acked = push_segments(&log, 4).await;
        drop(log);
        let names: Vec<String> = real_snapshot(dir.path()).into_keys().collect();
        let newest = *bases(&names).last().unwrap();
        assert!(acked.iter().any(|(v, _)| v.0 > newest), "{context}");
        let path = dir.path().join(segment_name(newest));
        lose_real(&path, loss);

        let before = real_snapshot(dir.path());
        assert_corruption_naming(open(), &path, &context);
        assert_eq!(real_snapshot(dir.path()), before, "{context}");
        // `open_existing` (what recovery uses) refuses it the same way.
        assert_corruption_naming(
            FileLog::open_existing(dir.path(), LogId(9), config(true)),
            &path,
            &context,
        );
        assert_eq!(real_snapshot(dir.path()), before, "{context}");
    }
}

#[tokio::test]
async fn log_whose_only_segment_was_deleted_is_not_recreated_empty() {
    let fs = SimFs::new();
    let log = open_sim(&fs, config(false)).unwrap();
    log.push(EPOCH, Version(0), Version(1), payload(1))
        .await
        .unwrap();
    drop(log);
    let path = Path::new(DIR).join(segment_name(0));
    lose_sim(&fs, &path, Loss::Deleted);
    let before = sim_snapshot(&fs);
    assert_corruption_naming(open_sim(&fs, config(false)), &path, "only segment");
    assert_eq!(sim_snapshot(&fs), before);
}

/// A file system that takes crash images of the `SimFs` beneath it just before every sync (of
/// a file or the directory): the state a power loss at that instant leaves, with none and with
/// all of the unsynced writes of each file kept.
#[derive(Clone, Debug)]
struct Snapshotting(Arc<SnapshotState>);

#[derive(Debug)]
struct SnapshotState {
    fs: SimFs,
    /// The newest version the test saw acknowledged.
    acked: AtomicU64,
    /// Each image, with what was acknowledged before it was taken.
    images: Mutex<Vec<(u64, SimFs)>>,
    /// Renames of the spare into place: rolls into a zero-filled segment.
    spare_rolls: AtomicUsize,
}

impl Snapshotting {
    fn take(&self) {
        let acked = self.0.acked.load(Ordering::SeqCst);
        let lost = self.0.fs.crash_image(0);
        let kept = self.0.fs.crash_image(usize::MAX);
        let mut images = self.0.images.lock().unwrap();
        images.push((acked, lost));
        images.push((acked, kept));
    }
}

#[derive(Debug)]
struct SnapshottingFile {
    file: Arc<dyn FsFile>,
    fs: Snapshotting,
}

impl Fs for Snapshotting {
    fn create_dir_all(&self, dir: &Path) -> std::io::Result<()> {
        self.0.fs.create_dir_all(dir)
    }
    fn list(&self, dir: &Path) -> std::io::Result<Vec<String>> {
        self.0.fs.list(dir)
    }
    fn open(&self, path: &Path) -> std::io::Result<Arc<dyn FsFile>> {
        let file = self.0.fs.open(path)?;
        Ok(Arc::new(SnapshottingFile {
            file,
            fs: self.clone(),
        }))
    }
    fn create(&self, path: &Path) -> std::io::Result<Arc<dyn FsFile>> {
        let file = self.0.fs.create(path)?;
        Ok(Arc::new(SnapshottingFile {
            file,
            fs: self.clone(),
        }))
    }
    fn remove(&self, path: &Path) -> std::io::Result<()> {
        self.0.fs.remove(path)
    }
    fn rename(&self, from: &Path, to: &Path) -> std::io::Result<()> {
        if from.file_name().is_some_and(|n| n == "spare.zeroed") {
            self.0.spare_rolls.fetch_add(1, Ordering::SeqCst);
        }
        self.0.fs.rename(from, to)
    }
    fn sync_dir(&self, dir: &Path) -> std::io::Result<()> {
        self.take();
        self.0.fs.sync_dir(dir)
    }
}

impl FsFile for SnapshottingFile {
    fn len(&self) -> std::io::Result<u64> {
        self.file.len()
    }
    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> std::io::Result<()> {
        self.file.read_exact_at(buf, offset)
    }
    fn write_all_at(&self, buf: &[u8], offset: u64) -> std::io::Result<()> {
        self.file.write_all_at(buf, offset)
    }
    fn sync_data(&self) -> std::io::Result<()> {
        self.fs.take();
        self.file.sync_data()
    }
    fn set_len(&self, len: u64) -> std::io::Result<()> {
        self.file.set_len(len)
    }
}

/// A crash at any sync of the log's life (its creation, every group commit, every roll into a
/// new segment: the segment's header, its rename, the manifest's write and rename, the first
/// record after it) reopens to every acknowledged record, in order, and perhaps the push in
/// flight; never to `Corruption`. The images include the two states a roll passes through: a
/// new segment durable but not yet named by the manifest, and a segment named but still
/// without a record.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crash_at_every_sync_of_a_roll_reopens_to_the_acknowledged_records() {
    for preallocate in [false, true] {
        let snap = Snapshotting(Arc::new(SnapshotState {
            fs: SimFs::new(),
            acked: AtomicU64::new(0),
            images: Mutex::new(Vec::new()),
            spare_rolls: AtomicUsize::new(0),
        }));
        let log = open_on(Arc::new(snap.clone()), config(preallocate)).unwrap();
        let mut pushed: Acked = Vec::new();
        let mut v = 0;
        // Enough rolls of each kind: with preallocation, the spare is written by a helper
        // thread, so rolls into it depend on its pace; pushes pause a little to leave it room.
        while log.segment_count().unwrap() < 5
            || (preallocate && snap.0.spare_rolls.load(Ordering::SeqCst) < 2)
        {
            assert!(v < 3_000, "too few rolls, preallocate {preallocate}");
            v += 1;
            pushed.push((Version(v), payload(v)));
            log.push(EPOCH, Version(v - 1), Version(v), payload(v))
                .await
                .unwrap();
            snap.0.acked.store(v, Ordering::SeqCst);
            if preallocate {
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
        }
        drop(log);
        let images = std::mem::take(&mut *snap.0.images.lock().unwrap());

        let (mut unnamed, mut named_empty) = (0, 0);
        for (i, (acked, image)) in images.iter().enumerate() {
            let context = format!("image {i}, acked {acked}, preallocate {preallocate}");
            let names = image.list(Path::new(DIR)).unwrap();
            let newest = bases(&names).last().copied();
            let named = sim_snapshot(image).get(MANIFEST).map(|m| manifest_base(m));

            let log =
                open_sim(image, config(preallocate)).unwrap_or_else(|e| panic!("{context}: {e}"));
            let found = everything(&log).await;
            assert!(found.len() as u64 >= *acked, "{context}: {}", found.len());
            assert_eq!(found[..], pushed[..found.len()], "{context}");
            let top = found.last().map_or(0, |e| e.0.0);
            if let (Some(newest), Some(named)) = (newest, named)
                && newest > 0
            {
                if newest > named {
                    unnamed += 1;
                } else if newest == named && top == newest {
                    named_empty += 1;
                }
            }
            // The log goes on from what it found, and what it wrote at the open (the manifest
            // naming the newest segment) holds through another crash.
            log.push(EPOCH, Version(top), Version(top + 1), payload(top + 1))
                .await
                .unwrap();
            drop(log);
            let again = open_sim(&image.crash_image(0), config(preallocate))
                .unwrap_or_else(|e| panic!("{context}, reopened: {e}"));
            let after = everything(&again).await;
            assert_eq!(after.len(), found.len() + 1, "{context}");
            assert_eq!(after[..found.len()], found[..], "{context}");
        }
        assert!(
            unnamed > 0,
            "no image between a segment's creation and its manifest (preallocate {preallocate})"
        );
        assert!(
            named_empty > 0,
            "no image between the manifest and a segment's first record (preallocate {preallocate})"
        );
    }
}

/// A directory written before the manifest existed (the same segments, no `manifest`) opens
/// as before, a segment torn at creation included; the open writes the manifest, so from then
/// on a lost newest segment is caught.
#[tokio::test]
async fn directory_without_a_manifest_opens_and_gets_one() {
    let fs = SimFs::new();
    let log = open_sim(&fs, config(false)).unwrap();
    let acked = push_segments(&log, 3).await;
    drop(log);
    let dir = Path::new(DIR);
    // What the previous build left: no manifest, and a segment torn at its creation.
    let _ = fs.remove(&dir.join(MANIFEST));
    let last = acked.last().unwrap().0.0;
    let torn = fs.create(&dir.join(segment_name(last))).unwrap();
    torn.write_all_at(b"STLG\x02", 0).unwrap();
    torn.sync_data().unwrap();
    fs.sync_dir(dir).unwrap();
    assert!(!sim_snapshot(&fs).contains_key(MANIFEST));

    let log = open_sim(&fs, config(false)).unwrap();
    assert_eq!(everything(&log).await, acked);
    drop(log);
    // The torn segment is gone and the durable manifest names the newest segment left.
    let image = fs.crash_image(0);
    let files = sim_snapshot(&image);
    assert!(
        !files.contains_key(&segment_name(last)),
        "{:?}",
        files.keys()
    );
    let newest = *sim_bases(&image).last().unwrap();
    assert!(files.contains_key(MANIFEST), "the open wrote no manifest");
    assert_eq!(manifest_base(&files[MANIFEST]), newest);

    // From now on the newest segment is required.
    let path = dir.join(segment_name(newest));
    lose_sim(&image, &path, Loss::TruncatedTo(0));
    assert_corruption_naming(open_sim(&image, config(false)), &path, "after upgrade");
}

#[tokio::test]
async fn real_directory_without_a_manifest_opens() {
    let dir = tempfile::tempdir().unwrap();
    let open = || FileLog::open(dir.path(), LogId(9), Version(0), config(true));
    let log = open().unwrap();
    let acked = push_segments(&log, 3).await;
    drop(log);
    std::fs::remove_file(dir.path().join(MANIFEST)).unwrap();
    let log = open().unwrap();
    assert_eq!(everything(&log).await, acked);
    drop(log);
    assert!(dir.path().join(MANIFEST).exists());
}

/// The segment the manifest names is never popped, however far the pop goes.
#[tokio::test]
async fn pop_never_removes_the_named_segment() {
    let fs = SimFs::new();
    let log = open_sim(&fs, config(false)).unwrap();
    let acked = push_segments(&log, 4).await;
    log.pop(Version(u64::MAX)).await.unwrap();
    drop(log);
    let image = fs.crash_image(0);
    let files = sim_snapshot(&image);
    let named = manifest_base(files.get(MANIFEST).unwrap());
    assert_eq!(sim_bases(&image), [named]);
    let log = open_sim(&image, config(false)).unwrap();
    let state = log.lock(EPOCH).await.unwrap();
    assert_eq!(state.last_version, acked.last().unwrap().0);
}
