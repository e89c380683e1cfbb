//! A file the log cannot read is an I/O error, never corruption: only bytes that were read and
//! fail a check (magic, CRC, length) are damage. Taking an I/O error for damage would send an
//! operator hunting for a damaged file when the disk only failed a read, and would make a
//! transient fault look permanent.

// Test helpers may unwrap: a panic there is a failed test.
#![allow(clippy::unwrap_used)]

use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use strata_core::{Epoch, ErrorKind, LogId, LogServer, Version};
use strata_tlog::fs::{Fs, FsFile, SimFs};
use strata_tlog::{FileLog, FileLogConfig};

const DIR: &str = "/log";

/// `EIO` on Linux: what a failing disk returns for a read.
const EIO: i32 = 5;

/// A [`SimFs`] whose reads of one file fail with `EIO`, as a failing disk's would, while
/// `failing` is set.
#[derive(Debug)]
struct FailingReads {
    inner: SimFs,
    path: PathBuf,
    failing: Arc<AtomicBool>,
}

impl FailingReads {
    fn new(inner: &SimFs, path: &Path) -> FailingReads {
        FailingReads {
            inner: inner.clone(),
            path: path.to_owned(),
            failing: Arc::new(AtomicBool::new(true)),
        }
    }
}

#[derive(Debug)]
struct FailingFile {
    file: Arc<dyn FsFile>,
    failing: Arc<AtomicBool>,
}

impl Fs for FailingReads {
    fn create_dir_all(&self, dir: &Path) -> io::Result<()> {
        self.inner.create_dir_all(dir)
    }
    fn list(&self, dir: &Path) -> io::Result<Vec<String>> {
        self.inner.list(dir)
    }
    fn open(&self, path: &Path) -> io::Result<Arc<dyn FsFile>> {
        let file = self.inner.open(path)?;
        if path == self.path {
            return Ok(Arc::new(FailingFile {
                file,
                failing: self.failing.clone(),
            }));
        }
        Ok(file)
    }
    fn create(&self, path: &Path) -> io::Result<Arc<dyn FsFile>> {
        self.inner.create(path)
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

impl FsFile for FailingFile {
    fn len(&self) -> io::Result<u64> {
        self.file.len()
    }
    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        if self.failing.load(Ordering::SeqCst) {
            return Err(io::Error::from_raw_os_error(EIO));
        }
        self.file.read_exact_at(buf, offset)
    }
    fn write_all_at(&self, buf: &[u8], offset: u64) -> io::Result<()> {
        self.file.write_all_at(buf, offset)
    }
    fn sync_data(&self) -> io::Result<()> {
        self.file.sync_data()
    }
    fn set_len(&self, len: u64) -> io::Result<()> {
        self.file.set_len(len)
    }
}

fn open(fs: Arc<dyn Fs>) -> strata_core::Result<FileLog> {
    FileLog::open_with(
        fs,
        Path::new(DIR),
        LogId(4),
        Version(0),
        FileLogConfig::default(),
    )
}

/// A log holding a few records, locked with epoch 3, so it has an epoch file, a manifest and
/// one segment. Returns the segment's path.
async fn written_log(fs: &SimFs) -> PathBuf {
    let log = open(Arc::new(fs.clone())).unwrap();
    log.lock(Epoch(3)).await.unwrap();
    for v in 1..=3 {
        log.push(Epoch(3), Version(v - 1), Version(v), "entry".into())
            .await
            .unwrap();
    }
    drop(log);
    let mut names = fs.list(Path::new(DIR)).unwrap();
    names.retain(|n| n.ends_with(".seg"));
    assert_eq!(names.len(), 1, "{names:?}");
    Path::new(DIR).join(&names[0])
}

/// Opens the log of `fs` with the reads of `path` failing, and asserts the open is an I/O
/// error carrying `EIO`.
fn assert_open_is_io_error(fs: &SimFs, path: &Path) {
    let err = match open(Arc::new(FailingReads::new(fs, path))) {
        Ok(_) => panic!(
            "the log opened although {} could not be read",
            path.display()
        ),
        Err(err) => err,
    };
    match &err.kind {
        ErrorKind::Io(io) => assert_eq!(io.raw_os_error(), Some(EIO), "{err}"),
        _ => panic!("a failed read of {} surfaced as {err}", path.display()),
    }
}

#[tokio::test]
async fn unreadable_epoch_file_is_an_io_error() {
    let fs = SimFs::new();
    written_log(&fs).await;
    assert_open_is_io_error(&fs, &Path::new(DIR).join("epoch"));
    // The same directory, read without the fault, is intact: nothing was repaired or lost.
    let log = open(Arc::new(fs.clone())).unwrap();
    assert_eq!(log.locked_epoch().unwrap(), Epoch(3));
    assert_eq!(log.last_version(), Version(3));
}

#[tokio::test]
async fn short_epoch_file_is_corruption() {
    let fs = SimFs::new();
    written_log(&fs).await;
    let path = Path::new(DIR).join("epoch");
    fs.open(&path).unwrap().set_len(10).unwrap();
    let err = open(Arc::new(fs.clone())).map(|_| ()).unwrap_err();
    let ErrorKind::Corruption(why) = &err.kind else {
        panic!("a short epoch file surfaced as {err}");
    };
    assert!(why.contains("epoch"), "{why}");
}

#[tokio::test]
async fn damaged_epoch_file_is_corruption() {
    let fs = SimFs::new();
    written_log(&fs).await;
    // A bit of the stored epoch flips: the CRC no longer matches.
    fs.corrupt(&Path::new(DIR).join("epoch"), 5, 0x01).unwrap();
    let err = open(Arc::new(fs.clone())).map(|_| ()).unwrap_err();
    assert!(
        matches!(err.kind, ErrorKind::Corruption(_)),
        "a damaged epoch file surfaced as {err}"
    );
}

#[tokio::test]
async fn unreadable_manifest_is_an_io_error() {
    let fs = SimFs::new();
    written_log(&fs).await;
    assert_open_is_io_error(&fs, &Path::new(DIR).join("manifest"));
}

#[tokio::test]
async fn short_manifest_is_corruption() {
    let fs = SimFs::new();
    written_log(&fs).await;
    fs.open(&Path::new(DIR).join("manifest"))
        .unwrap()
        .set_len(20)
        .unwrap();
    let err = open(Arc::new(fs.clone())).map(|_| ()).unwrap_err();
    assert!(
        matches!(err.kind, ErrorKind::Corruption(_)),
        "a short manifest surfaced as {err}"
    );
}

#[tokio::test]
async fn unreadable_segment_is_an_io_error() {
    let fs = SimFs::new();
    let segment = written_log(&fs).await;
    assert_open_is_io_error(&fs, &segment);
    // Nothing was taken for a torn write and cut off.
    let log = open(Arc::new(fs.clone())).unwrap();
    assert_eq!(log.last_version(), Version(3));
}

#[tokio::test]
async fn unreadable_record_on_pull_is_an_io_error() {
    let fs = SimFs::new();
    let segment = written_log(&fs).await;
    // Recovery reads the segment before the fault; after it, a pull of a record recovered
    // (so not cached in memory) reads the disk and fails.
    let failing = FailingReads::new(&fs, &segment);
    failing.failing.store(false, Ordering::SeqCst);
    let switch = failing.failing.clone();
    let log = open(Arc::new(failing)).unwrap();
    switch.store(true, Ordering::SeqCst);
    let err = log.pull(Version(0), 10).await.unwrap_err();
    match &err.kind {
        ErrorKind::Io(io) => assert_eq!(io.raw_os_error(), Some(EIO), "{err}"),
        _ => panic!("a failed read of a record surfaced as {err}"),
    }
    // With the disk reading again, the records are all there.
    switch.store(false, Ordering::SeqCst);
    assert_eq!(log.pull(Version(0), 10).await.unwrap().len(), 3);
}
