//! Making a log directory durable again after a failed sync.
//!
//! When a sync fails, Linux marks the pages it could not write back clean: reads still see the
//! writes, but no later sync writes them back, and a power loss loses them. A log poisoned by a
//! failed sync and opened again on the same machine would read those records from the page
//! cache and serve them as if they were on disk; recovery may then take one of them for
//! committed (every log seems to hold it), the storage servers make it durable, and after a
//! power loss the storage servers hold a version no log holds.
//!
//! Records written with direct I/O (the default) bypass the page cache, but a failed sync
//! still leaves them in the disk's volatile cache, readable until a power loss, and the
//! segment's header, the manifest and `epoch` go through the page cache: the same rewrite
//! covers both.
//!
//! So the writer that poisons the log leaves a marker file, [`RESYNC_FILE`], in its directory,
//! and the next open that may write finds it and, before reading anything, writes the log's
//! files (its segments, `manifest` and `epoch`) again from what reads return (dirtying the
//! pages anew), syncs each, syncs the directory, and only then removes the marker. The marker
//! itself is never synced: it only has to last as long as the page cache it warns about, and a
//! power loss that takes it also takes the writes it stood for. A crash in the middle leaves it
//! for the next open to start again. The poisoned log does the same when it is closed (or
//! dropped), while its directory is still locked, so that the marker is only needed when that
//! fails or the process dies first ([`FileLog::close_resynced`](crate::FileLog::close_resynced)). What is left uncovered: a
//! marker that could not be made, then a rewrite at the close that failed too, then an open
//! of the same directory by a process whose disk works again before the page cache is gone.

use std::io;
use std::path::Path;

use crate::fs::{Fs, remove_if_present};
use crate::meta::{EPOCH_FILE, MANIFEST_FILE};
use crate::segment::parse_segment_name;

/// The marker a poisoned log leaves in its directory; see the module's documentation.
pub(crate) const RESYNC_FILE: &str = "resync";

/// How much of a file is read and written again at a time.
const CHUNK_BYTES: u64 = 1 << 20;

/// Leaves the marker in `dir` (see the module's documentation); not synced, on purpose.
pub(crate) fn mark(fs: &dyn Fs, dir: &Path) -> io::Result<()> {
    match fs.create(&dir.join(RESYNC_FILE)) {
        Err(e) if e.kind() != io::ErrorKind::AlreadyExists => Err(e),
        _ => Ok(()),
    }
}

/// Whether `names` (a directory's listing) holds the marker.
pub(crate) fn is_marked(names: &[String]) -> bool {
    names.iter().any(|n| n == RESYNC_FILE)
}

/// If `dir` holds the marker, [`resync`]s it. Returns whether it did.
pub(crate) fn resync_if_marked(fs: &dyn Fs, dir: &Path) -> io::Result<bool> {
    let names = fs.list(dir)?;
    if !is_marked(&names) {
        return Ok(false);
    }
    resync_listed(fs, dir, names)?;
    Ok(true)
}

/// Writes every file of the log in `dir` (its segments, `manifest` and `epoch`) again and
/// syncs it, syncs the directory, then removes the marker if there is one. Other names are
/// left alone: the temporary files recovery removes or ignores, the lock, and whatever else
/// someone put there.
pub(crate) fn resync(fs: &dyn Fs, dir: &Path) -> io::Result<()> {
    resync_listed(fs, dir, fs.list(dir)?)
}

/// [`resync`] of `dir`, whose listing is `names`.
fn resync_listed(fs: &dyn Fs, dir: &Path, mut names: Vec<String>) -> io::Result<()> {
    names.sort();
    for name in names.iter().filter(|n| {
        parse_segment_name(n).is_some() || [MANIFEST_FILE, EPOCH_FILE].contains(&n.as_str())
    }) {
        rewrite(fs, &dir.join(name))?;
    }
    fs.sync_dir(dir)?;
    if is_marked(&names) {
        remove_if_present(fs, &dir.join(RESYNC_FILE))?;
        fs.sync_dir(dir)?;
    }
    Ok(())
}

/// Writes the file at `path` again with what reads return, then syncs it.
fn rewrite(fs: &dyn Fs, path: &Path) -> io::Result<()> {
    let file = fs.open(path)?;
    let len = file.len()?;
    let mut buf = Vec::new();
    let mut at = 0;
    while at < len {
        let n = (len - at).min(CHUNK_BYTES);
        buf.resize(usize::try_from(n).map_err(io::Error::other)?, 0);
        file.read_exact_at(&mut buf, at)?;
        file.write_all_at(&buf, at)?;
        at += n;
    }
    file.sync_data()
}
