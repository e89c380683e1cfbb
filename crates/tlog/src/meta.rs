//! The log's two small files beside its segments, each replaced whole and atomically: the
//! `manifest` (which segment may hold records) and the `epoch` (the epoch the log is locked
//! with). Their layouts are in the crate docs.

use std::path::Path;

use strata_core::{Epoch, LogId, Result, Version};

use crate::error::{corruption, io_error};
use crate::format::{MANIFEST_BYTES, Manifest, le_u32, le_u64};
use crate::fs::{Fs, remove_if_present};

pub(crate) const EPOCH_FILE: &str = "epoch";
const EPOCH_TMP_FILE: &str = "epoch.tmp";
const EPOCH_MAGIC: [u8; 4] = *b"STEP";
/// Names the newest segment that may hold records; see the crate docs.
pub(crate) const MANIFEST_FILE: &str = "manifest";
/// A manifest before it replaces the old one.
pub(crate) const MANIFEST_TMP_FILE: &str = "manifest.tmp";

/// The base of the segment the manifest names, or `None` when there is no manifest (a new log,
/// or a directory written before the manifest existed).
pub(crate) fn read_manifest(fs: &dyn Fs, dir: &Path, id: LogId) -> Result<Option<Version>> {
    let path = dir.join(MANIFEST_FILE);
    let file = match fs.open(&path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(io_error(e)),
    };
    // At most one byte more than a manifest: enough for a longer file to fail the size check.
    let len = file.len().map_err(io_error)?.min(MANIFEST_BYTES as u64 + 1);
    let mut bytes = vec![0u8; usize::try_from(len).unwrap_or(MANIFEST_BYTES + 1)];
    file.read_exact_at(&mut bytes, 0).map_err(io_error)?;
    let manifest = Manifest::decode(&bytes).map_err(|why| corruption(&path, 0, &why))?;
    if manifest.log_id != id.0 {
        return Err(corruption(
            &path,
            0,
            &format!("manifest belongs to log {}, not {}", manifest.log_id, id.0),
        ));
    }
    Ok(Some(manifest.newest_base))
}

/// Replaces the manifest, durably, with one naming the segment starting after `base`.
pub(crate) fn write_manifest(
    fs: &dyn Fs,
    dir: &Path,
    id: LogId,
    base: Version,
) -> std::io::Result<()> {
    let manifest = Manifest {
        log_id: id.0,
        newest_base: base,
    };
    replace_file(
        fs,
        dir,
        MANIFEST_TMP_FILE,
        MANIFEST_FILE,
        &manifest.encode(),
    )
}

/// Replaces `dir/name` with `bytes` atomically: write a temporary file, sync it, rename it
/// over the old one, sync the directory. A crash leaves the old file or the new one, never a
/// mix, and perhaps the temporary file.
fn replace_file(
    fs: &dyn Fs,
    dir: &Path,
    tmp_name: &str,
    name: &str,
    bytes: &[u8],
) -> std::io::Result<()> {
    let tmp = dir.join(tmp_name);
    remove_if_present(fs, &tmp)?;
    let file = fs.create(&tmp)?;
    file.write_all_at(bytes, 0)?;
    file.sync_data()?;
    fs.rename(&tmp, &dir.join(name))?;
    fs.sync_dir(dir)
}

/// The epoch the log is locked with (0 when there is no epoch file: a log never locked).
///
/// Only bytes read that fail a check (a file shorter than an epoch record, a wrong magic, a
/// CRC mismatch) are `Corruption`; a failed read is the I/O error it is.
pub(crate) fn read_epoch(fs: &dyn Fs, dir: &Path) -> Result<Epoch> {
    let path = dir.join(EPOCH_FILE);
    let file = match fs.open(&path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Epoch(0)),
        Err(e) => return Err(io_error(e)),
    };
    let mut b = [0u8; 16];
    // The length is checked, not inferred from a failed read: any error of the read itself
    // is the disk's, never the file's content.
    if file.len().map_err(io_error)? < b.len() as u64 {
        return Err(corruption(&path, 0, "epoch file is short"));
    }
    file.read_exact_at(&mut b, 0).map_err(io_error)?;
    if b[0..4] != EPOCH_MAGIC || crc32fast::hash(&b[0..12]) != le_u32(&b[12..16]) {
        return Err(corruption(&path, 0, "epoch file fails its check"));
    }
    Ok(Epoch(le_u64(&b[4..12])))
}

/// Replaces the epoch file atomically (see [`replace_file`]).
pub(crate) fn write_epoch(fs: &dyn Fs, dir: &Path, epoch: Epoch) -> Result<()> {
    let mut b = [0u8; 16];
    b[0..4].copy_from_slice(&EPOCH_MAGIC);
    b[4..12].copy_from_slice(&epoch.0.to_le_bytes());
    let crc = crc32fast::hash(&b[0..12]);
    b[12..16].copy_from_slice(&crc.to_le_bytes());
    replace_file(fs, dir, EPOCH_TMP_FILE, EPOCH_FILE, &b).map_err(io_error)
}
