//! The disk's floor: the cost of the cheapest durable write, that commit latency is measured
//! against, in the same run. The log's bench, the pipeline benches and `strata bench` all
//! measure it here.

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// A file in a directory to append 4 KiB blocks to and `fdatasync` after each: the cost of
/// the cheapest durable write on that disk. Removed when dropped.
#[derive(Debug)]
pub struct SyncProbe {
    file: File,
    path: PathBuf,
}

impl SyncProbe {
    /// The block each [`SyncProbe::append_and_sync`] appends.
    pub const BLOCK_BYTES: usize = 4_096;

    /// Creates the probe's file in `dir`.
    pub fn create(dir: &Path) -> io::Result<SyncProbe> {
        let path = dir.join("fsync-floor.tmp");
        let file = OpenOptions::new()
            .create(true)
            .truncate(true)
            .write(true)
            .open(&path)
            .map_err(|e| io_error(&path, e))?;
        Ok(SyncProbe { file, path })
    }

    /// Appends one block and waits until it is on disk.
    pub fn append_and_sync(&mut self) -> io::Result<()> {
        self.file
            .write_all(&[7u8; Self::BLOCK_BYTES])
            .and_then(|()| self.file.sync_data())
            .map_err(|e| io_error(&self.path, e))
    }
}

impl Drop for SyncProbe {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// `e`, naming the probe's file.
fn io_error(path: &Path, e: io::Error) -> io::Error {
    io::Error::new(e.kind(), format!("{}: {e}", path.display()))
}

/// The median time of `samples` appends of 4 KiB, each followed by `fdatasync`, in `dir`.
pub fn fsync_floor(dir: &Path, samples: usize) -> io::Result<Duration> {
    let mut probe = SyncProbe::create(dir)?;
    let mut times = Vec::with_capacity(samples.max(1));
    for _ in 0..samples.max(1) {
        let t = Instant::now();
        probe.append_and_sync()?;
        times.push(t.elapsed());
    }
    times.sort_unstable();
    Ok(times[times.len() / 2])
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn the_floor_is_measured_and_its_file_removed() {
        let dir = tempfile::tempdir().unwrap();
        let floor = fsync_floor(dir.path(), 3).unwrap();
        assert!(floor > Duration::ZERO);
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
        let missing = fsync_floor(&dir.path().join("missing"), 1).unwrap_err();
        assert!(missing.to_string().contains("missing"), "{missing}");
    }
}
