//! Segment files: their names, and how a new one is installed (header synced, renamed into
//! place, directory synced) before any record goes into it.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use strata_core::{LogId, Version};

use crate::format::SegmentHeader;
use crate::fs::{Fs, FsFile, remove_if_present};

/// The suffix of a segment file's name, after its base version in 20 digits.
const SEGMENT_SUFFIX: &str = ".seg";
/// A new segment's file before it is renamed into place.
pub(crate) const NEW_SEGMENT_FILE: &str = "segment.new";

/// One segment file.
#[derive(Clone, Debug)]
pub(crate) struct Segment {
    pub(crate) base: Version,
    pub(crate) path: PathBuf,
    pub(crate) file: Arc<dyn FsFile>,
    /// The format its records are in (format 1 segments are only read).
    pub(crate) format: u16,
}

impl Segment {
    /// Creates an empty segment (records are appended to it).
    pub(crate) fn create(
        fs: &dyn Fs,
        dir: &Path,
        id: LogId,
        base: Version,
    ) -> std::io::Result<Segment> {
        let tmp = dir.join(NEW_SEGMENT_FILE);
        remove_if_present(fs, &tmp)?;
        let file = fs.create(&tmp)?;
        Segment::install(fs, dir, id, file, &tmp, base)
    }

    /// Makes `file` (at `tmp`, empty or zero-filled) the segment starting after `base`: its
    /// header is written and synced, then it is renamed into place (atomically replacing an
    /// empty segment of the same base) and the directory synced. A crash before the rename
    /// leaves a temporary file that recovery removes. The caller then names the segment in the
    /// manifest, before any record goes into it.
    pub(crate) fn install(
        fs: &dyn Fs,
        dir: &Path,
        id: LogId,
        file: Arc<dyn FsFile>,
        tmp: &Path,
        base: Version,
    ) -> std::io::Result<Segment> {
        let path = segment_path(dir, base.0);
        let header = SegmentHeader::new(id.0, base);
        file.write_all_at(&header.encode(), 0)?;
        file.sync_data()?;
        fs.rename(tmp, &path)?;
        // The file exists for a later recovery only once its directory entry is durable.
        fs.sync_dir(dir)?;
        Ok(Segment {
            base,
            path,
            file,
            format: header.format,
        })
    }
}

/// The base version a segment file's name carries, or `None` when it is not a segment's name.
pub(crate) fn parse_segment_name(name: &str) -> Option<u64> {
    let digits = name.strip_suffix(SEGMENT_SUFFIX)?;
    if digits.len() != 20 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

/// The path of the segment starting after `base` in `dir`.
pub(crate) fn segment_path(dir: &Path, base: u64) -> PathBuf {
    dir.join(format!("{base:020}{SEGMENT_SUFFIX}"))
}
