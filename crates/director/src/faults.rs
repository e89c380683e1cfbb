//! Fault injection for the embedded cluster's tests: the test kit's stage decorators
//! (re-exported from [`strata_testkit::faults`]), and [`FaultyFs`], a file system under the
//! real log whose `fdatasync` fails when [`FaultPoint::LogSync`] is armed.
//!
//! A fault is armed on a shared [`Faults`] switchboard and fires once, on the next call that
//! reaches its point; then it is spent. The recovery tests arm one before a recovery, watch the
//! director fail naming that stage, and see the next epoch succeed.

use std::io;
use std::path::Path;
use std::sync::Arc;

pub use strata_testkit::faults::{
    Fault, FaultPoint, Faults, FaultyLog, FaultyProxy, FaultyResolver, FaultySequencer,
    FaultyStorage,
};
use strata_tlog::fs::{Fs, FsFile, RealFs, writing_group};

/// The real file system under a log, whose next `fdatasync` inside a group commit fails when
/// [`FaultPoint::LogSync`] is armed: the log's own error path runs (the group's pushes fail,
/// the log is poisoned), not a decorator's imitation of it. Armed with [`Fault::Delay`], the
/// sync instead blocks its thread that long and then goes through: a disk that stalls. Syncs
/// outside a group (a log's open and recovery, its spare segments) fall back or fail
/// differently, so the fault leaves them alone (see [`writing_group`]).
#[derive(Debug)]
pub struct FaultyFs(pub Arc<Faults>);

#[derive(Debug)]
struct FaultyFile {
    file: Arc<dyn FsFile>,
    faults: Arc<Faults>,
}

impl FaultyFs {
    fn wrap(&self, file: Arc<dyn FsFile>) -> Arc<dyn FsFile> {
        Arc::new(FaultyFile {
            file,
            faults: self.0.clone(),
        })
    }
}

impl Fs for FaultyFs {
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

    fn open_pages(&self, path: &Path) -> io::Result<Arc<dyn FsFile>> {
        Ok(self.wrap(RealFs.open_pages(path)?))
    }
}

impl FsFile for FaultyFile {
    fn len(&self) -> io::Result<u64> {
        self.file.len()
    }

    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        self.file.read_exact_at(buf, offset)
    }

    fn write_all_at(&self, buf: &[u8], offset: u64) -> io::Result<()> {
        self.file.write_all_at(buf, offset)
    }

    fn sync_data(&self) -> io::Result<()> {
        if writing_group() {
            match self.faults.fire(FaultPoint::LogSync) {
                // A disk that stalls: the sync blocks its thread that long, then goes through.
                Some(Fault::Delay(stall)) => std::thread::sleep(stall),
                Some(_) => return Err(io::Error::other("injected fdatasync failure")),
                None => {}
            }
        }
        self.file.sync_data()
    }

    fn set_len(&self, len: u64) -> io::Result<()> {
        self.file.set_len(len)
    }

    fn write_pages_at(&self, pages: &[u8], offset: u64) -> io::Result<()> {
        self.file.write_pages_at(pages, offset)
    }
}
