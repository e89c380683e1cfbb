//! The spare segment: a zero-filled segment a helper thread writes and syncs ahead of need,
//! for the writer to roll into, so that its syncs commit only data, never a change of file
//! size. The state machine (none, preparing, ready, failed) and when a spare is asked for, and
//! how large, are here; the writer only takes a ready one at a roll.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{Receiver, TryRecvError};
use std::thread::JoinHandle;

use strata_core::Blocking;

use crate::file_log::Shared;
use crate::fs::{Fs, FsFile, PAGE_BYTES, aligned, remove_if_present};

/// A zero-filled segment being prepared, or ready, for the writer to roll into.
pub(crate) const SPARE_FILE: &str = "spare.zeroed";
/// Zeros are written to a spare in pieces of this size, each synced, so that the disk's queue
/// never holds much of it ahead of the log's own syncs.
const SPARE_PIECE_BYTES: usize = 1 << 20;
/// The smallest spare segment (unless `segment_bytes` is smaller).
const SPARE_BYTES_MIN: u64 = 1 << 20;
/// How far an appended segment is written before a spare is asked for (unless a quarter of
/// `segment_bytes` is less). Small, because every sync of an appended record also commits the
/// file's new size, which on ext4 costs about as much again as the data (a lone commit paid
/// 15% more latency while the first MiB of a new log was appended); large enough that a log
/// which only ever takes a recovery's system transaction (about 3.5 KiB with 8 storage servers)
/// writes no zeros.
const APPENDED_BYTES_MAX: u64 = 64 << 10;

/// The zero-filled segment the writer rolls into next.
pub(crate) enum Spare {
    /// None asked for yet.
    None,
    /// A helper thread is writing it.
    Preparing {
        done: Receiver<std::io::Result<Arc<dyn FsFile>>>,
        stop: Arc<AtomicBool>,
        thread: JoinHandle<()>,
    },
    /// Written and synced, waiting under its temporary name.
    Ready(Arc<dyn FsFile>),
    /// Preparing it failed (a full disk, say): not asked for again before the next roll, which
    /// creates an empty segment instead.
    Failed,
}

impl Spare {
    /// Whether a spare is ready to roll into.
    pub(crate) fn is_ready(&self) -> bool {
        matches!(self, Spare::Ready(_))
    }

    /// Takes the ready spare, if there is one. A failed one is forgotten, so that a spare is
    /// asked for again in the segment the caller now creates instead; one being prepared is
    /// left to finish.
    pub(crate) fn take_ready(&mut self) -> Option<Arc<dyn FsFile>> {
        match self {
            Spare::Ready(file) => {
                let file = file.clone();
                *self = Spare::None;
                Some(file)
            }
            Spare::Failed => {
                *self = Spare::None;
                None
            }
            Spare::None | Spare::Preparing { .. } => None,
        }
    }

    /// Takes a finished spare, and asks for one when the active segment is far enough along:
    /// half full for a zero-filled segment, a quarter (at most [`APPENDED_BYTES_MAX`]) for an
    /// appended one, so a log that has written less than that never writes a spare.
    pub(crate) fn tend(&mut self, shared: &Shared, write_at: u64, room_end: u64) {
        if let Spare::Preparing { done, .. } = &*self {
            let outcome = match done.try_recv() {
                Ok(outcome) => outcome,
                Err(TryRecvError::Empty) => return,
                Err(TryRecvError::Disconnected) => {
                    Err(std::io::Error::other("spare segment helper stopped"))
                }
            };
            if let Spare::Preparing { thread, .. } = std::mem::replace(self, Spare::None) {
                let _ = thread.join();
            }
            *self = prepared_as(shared, outcome);
        }
        let config = &shared.config;
        let smallest_spare = SPARE_BYTES_MIN.min(config.segment_bytes);
        // A segment at least as long as the smallest spare was one (or is an appended one past
        // the point of asking anyway); a shorter one, perhaps with a zeroed torn tail, is an
        // appended one.
        let due = if room_end >= smallest_spare {
            room_end / 2
        } else {
            (config.segment_bytes / 4).min(APPENDED_BYTES_MAX)
        };
        if config.preallocate && matches!(self, Spare::None) && write_at >= due {
            // Four times what this segment took so far, at least the smallest spare: a new
            // log's first spare is the smallest, and each next one doubles (asked for at half
            // of the one before), up to the segment size. A little-used log writes, and its
            // recovery reads, few zeros. Whole pages: the writer's whole-page writes
            // (`FileLogConfig::direct_io`) must end within the zeros, never grow the file.
            let bytes = write_at
                .saturating_mul(4)
                .max(smallest_spare)
                .min(config.segment_bytes)
                .next_multiple_of(PAGE_BYTES as u64);
            *self = start_spare(shared, bytes);
        }
    }

    /// Stops a spare being prepared and removes the spare file: the log is closing.
    pub(crate) fn retire(&mut self, shared: &Shared) {
        if let Spare::Preparing { stop, thread, .. } = std::mem::replace(self, Spare::None) {
            stop.store(true, Ordering::Relaxed);
            let _ = thread.join();
        }
        let path = shared.dir.join(SPARE_FILE);
        if let Err(e) = remove_if_present(shared.fs.as_ref(), &path) {
            tracing::warn!(path = %path.display(), error = %e, "could not remove the spare segment");
        }
    }
}

/// The spare a finished preparation leaves: ready, or failed (and said so).
fn prepared_as(shared: &Shared, prepared: std::io::Result<Arc<dyn FsFile>>) -> Spare {
    match prepared {
        Ok(file) => Spare::Ready(file),
        Err(e) => {
            tracing::warn!(log = shared.id.0, error = %e, "could not prepare a zero-filled segment; the next one is appended to");
            Spare::Failed
        }
    }
}

/// Starts a helper thread that writes a spare segment of `bytes`; with [`Blocking::Inline`]
/// (the simulation's disk, where writing costs nothing) the writer writes it itself, now.
fn start_spare(shared: &Shared, bytes: u64) -> Spare {
    if shared.config.blocking == Blocking::Inline {
        let path = shared.dir.join(SPARE_FILE);
        let prepared = prepare_spare(
            shared.fs.as_ref(),
            &path,
            bytes,
            shared.config.direct_io,
            &AtomicBool::new(false),
        );
        return prepared_as(shared, prepared);
    }
    let stop = Arc::new(AtomicBool::new(false));
    let (tx, done) = std::sync::mpsc::channel();
    let fs = shared.fs.clone();
    let path = shared.dir.join(SPARE_FILE);
    let stopping = stop.clone();
    let direct = shared.config.direct_io;
    let spawned = std::thread::Builder::new()
        .name(format!("strata-tlog-{}-spare", shared.id.0))
        .spawn(move || {
            let _ = tx.send(prepare_spare(fs.as_ref(), &path, bytes, direct, &stopping));
        });
    match spawned {
        Ok(thread) => Spare::Preparing { done, stop, thread },
        Err(e) => {
            tracing::warn!(log = shared.id.0, error = %e, "could not start the spare segment helper");
            Spare::Failed
        }
    }
}

/// Writes `bytes` zeros (whole pages) to a new file at `path`, syncing piece by piece. With
/// `direct` (the log's [`FileLogConfig::direct_io`](crate::FileLogConfig::direct_io)) they are
/// written as whole pages ([`FsFile::write_pages_at`]), around the page cache where the file
/// system allows it: copying them into the cache, for the kernel to write back later, took a
/// tenth of the process's CPU under 64 clients' commits (docs/performance.md, "CPU per
/// commit"). On failure (or when `stop` is set) the file is removed, so a full disk
/// gets its space back.
fn prepare_spare(
    fs: &dyn Fs,
    path: &Path,
    bytes: u64,
    direct: bool,
    stop: &AtomicBool,
) -> std::io::Result<Arc<dyn FsFile>> {
    remove_if_present(fs, path)?;
    let file = fs.create(path)?;
    let filled = fill_with_zeros(fs, path, file.as_ref(), bytes, direct, stop);
    match filled {
        Ok(()) => Ok(file),
        Err(e) => {
            let _ = fs.remove(path);
            Err(e)
        }
    }
}

/// Writes `bytes` zeros to `file`, created at `path`, piece by piece, each synced (see
/// [`prepare_spare`]).
fn fill_with_zeros(
    fs: &dyn Fs,
    path: &Path,
    file: &dyn FsFile,
    bytes: u64,
    direct: bool,
    stop: &AtomicBool,
) -> std::io::Result<()> {
    let pages = if direct {
        Some(fs.open_pages(path)?)
    } else {
        None
    };
    let mut buffer = Vec::new();
    let zeros: &[u8] = aligned(&mut buffer, SPARE_PIECE_BYTES, 0);
    let mut at = 0u64;
    while at < bytes {
        if stop.load(Ordering::Relaxed) {
            return Err(std::io::Error::new(
                std::io::ErrorKind::Interrupted,
                "log closed",
            ));
        }
        let n = (bytes - at).min(SPARE_PIECE_BYTES as u64);
        #[expect(clippy::cast_possible_truncation)] // NOTE: at most SPARE_PIECE_BYTES
        let piece = &zeros[..n as usize];
        match &pages {
            Some(pages) => pages.write_pages_at(piece, at)?,
            None => file.write_all_at(piece, at)?,
        }
        file.sync_data()?;
        at += n;
    }
    Ok(())
}
