//! The disk's floor: the cost of the cheapest durable write, that commit latency is measured
//! against, in the same run. The log's bench, the pipeline benches and `strata bench` all
//! measure it here.
//!
//! Two floors, because a disk charges differently for them: an *append* (the file grows, so
//! `fdatasync` also writes the file's size) and an *overwrite* of a block inside a file
//! written full of zeros beforehand (only the data changes: what a log with preallocated
//! segments pays once its segments exist).

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// A file in a directory to append 4 KiB blocks to and `fdatasync` after each: the cost of
/// the cheapest durable write on that disk. Removed when dropped.
#[derive(Debug)]
pub struct SyncProbe {
    file: File,
    path: PathBuf,
}

/// A file written full of zeros, in which 4 KiB blocks are overwritten in turn (wrapping at
/// its end), each followed by `fdatasync`: the floor of a durable write that does not grow its
/// file. Removed when dropped.
#[derive(Debug)]
pub struct OverwriteProbe {
    file: File,
    path: PathBuf,
    len: u64,
    at: u64,
}

impl OverwriteProbe {
    /// Creates the probe's file in `dir`, `bytes` long (rounded up to a whole block, at least
    /// one), written with zeros and synced.
    pub fn create(dir: &Path, bytes: u64) -> io::Result<OverwriteProbe> {
        let block = SyncProbe::BLOCK_BYTES as u64;
        let len = bytes.div_ceil(block).max(1) * block;
        let path = dir.join("fsync-floor-overwrite.tmp");
        let mut file = OpenOptions::new()
            .create(true)
            .truncate(true)
            .write(true)
            .open(&path)
            .map_err(|e| io_error(&path, e))?;
        let zeros = vec![0u8; 1 << 20];
        let mut written = 0;
        while written < len {
            let n =
                usize::try_from(len - written).map_or(zeros.len(), |left| left.min(zeros.len()));
            file.write_all(&zeros[..n])
                .map_err(|e| io_error(&path, e))?;
            written += n as u64;
        }
        file.sync_all().map_err(|e| io_error(&path, e))?;
        Ok(OverwriteProbe {
            file,
            path,
            len,
            at: 0,
        })
    }

    /// Overwrites the next block and waits until it is on disk.
    pub fn overwrite_and_sync(&mut self) -> io::Result<()> {
        self.file
            .write_all_at(&[7u8; SyncProbe::BLOCK_BYTES], self.at)
            .and_then(|()| self.file.sync_data())
            .map_err(|e| io_error(&self.path, e))?;
        self.at = (self.at + SyncProbe::BLOCK_BYTES as u64) % self.len;
        Ok(())
    }
}

impl Drop for OverwriteProbe {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
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
    median_of(samples, || probe.append_and_sync())
}

/// The median time of `samples` overwrites of 4 KiB inside a file of zeros, each followed by
/// `fdatasync`, in `dir`: the floor once a file's blocks exist ([`OverwriteProbe`]). The file
/// is 4 MiB, large enough that the samples do not rewrite one block back to back.
pub fn fsync_floor_prealloc(dir: &Path, samples: usize) -> io::Result<Duration> {
    let mut probe = OverwriteProbe::create(dir, 4 << 20)?;
    median_of(samples, || probe.overwrite_and_sync())
}

/// The median time of `samples` (at least one) calls of `write`.
fn median_of(samples: usize, mut write: impl FnMut() -> io::Result<()>) -> io::Result<Duration> {
    let mut times = Vec::with_capacity(samples.max(1));
    for _ in 0..samples.max(1) {
        let t = Instant::now();
        write()?;
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

    #[test]
    fn the_overwrite_probe_writes_inside_its_file_and_wraps() {
        let dir = tempfile::tempdir().unwrap();
        // Three blocks, asked for as two and a bit: rounded up.
        let mut probe = OverwriteProbe::create(dir.path(), 2 * 4_096 + 1).unwrap();
        let path = dir.path().join("fsync-floor-overwrite.tmp");
        assert_eq!(std::fs::read(&path).unwrap(), vec![0u8; 3 * 4_096]);
        for _ in 0..4 {
            probe.overwrite_and_sync().unwrap();
        }
        // Four overwrites of three blocks: every block written, the file never grown.
        assert_eq!(std::fs::read(&path).unwrap(), vec![7u8; 3 * 4_096]);
        drop(probe);
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);

        let floor = fsync_floor_prealloc(dir.path(), 3).unwrap();
        assert!(floor > Duration::ZERO);
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
        let missing = fsync_floor_prealloc(&dir.path().join("missing"), 1).unwrap_err();
        assert!(missing.to_string().contains("missing"), "{missing}");
    }
}
