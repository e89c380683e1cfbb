//! The load generator behind `strata bench`: transactions of random reads and blind writes
//! over a key space of a million keys, and the disk's fsync floor that commit latency is
//! measured against.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use bytes::Bytes;
use strata_core::{Error, Result, Stage};
use strata_testkit::rng::SplitMix64;
use strata_txn_builder::Database;

use super::{Workload, run_counted};

/// Keys the load spreads over.
pub const KEY_SPACE: u64 = 1_000_000;

/// Transactions of `keys_per_transaction` operations on random keys `bench/<n>`, each a read
/// with probability `read_fraction` and otherwise a write of `value`.
#[derive(Clone, Debug)]
pub struct Load {
    /// Operations per transaction.
    pub keys_per_transaction: u64,
    /// The value every write stores.
    pub value: Bytes,
    /// The share of operations that are reads, from 0 to 1.
    pub read_fraction: f64,
}

impl Workload for Load {
    async fn transaction(
        &self,
        db: &Database,
        rng: &mut SplitMix64,
        _client: u64,
        _n: u64,
    ) -> Result<u64> {
        // Chosen once, so retries repeat the same transaction.
        let ops: Vec<(Bytes, bool)> = (0..self.keys_per_transaction)
            .map(|_| {
                let key = Bytes::from(format!("bench/{:08}", rng.below(KEY_SPACE)));
                (key, rng.unit() < self.read_fraction)
            })
            .collect();
        let ops = &ops;
        let ((), _, aborted) = run_counted(db, |tx| async move {
            for (key, read) in ops {
                if *read {
                    tx.get(key).await?;
                } else {
                    tx.set(key.clone(), self.value.clone());
                }
            }
            Ok(())
        })
        .await?;
        Ok(aborted)
    }
}

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
    pub fn create(dir: &Path) -> Result<SyncProbe> {
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
    pub fn append_and_sync(&mut self) -> Result<()> {
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

fn io_error(path: &Path, e: std::io::Error) -> Error {
    Error::io(
        Stage::Director,
        std::io::Error::new(e.kind(), format!("{}: {e}", path.display())),
    )
}

/// The median time of `samples` appends of 4 KiB, each followed by `fdatasync`, in `dir`.
pub fn fsync_floor(dir: &Path, samples: usize) -> Result<Duration> {
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
