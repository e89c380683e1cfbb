//! Recovery: reading a log directory when it is opened, keeping the valid prefix of the log,
//! and repairing only what a crash can leave (a torn tail, a segment torn at its creation,
//! leftover temporary files). The rules are in the crate docs and, in full, on `segment_fate`
//! and `scan_segment` in `format.rs`.

use std::collections::VecDeque;
use std::path::Path;
use std::sync::Arc;

use strata_core::{LogId, Result, Version};

use crate::error::{corruption, io_error};
use crate::format::{
    SEGMENT_HEADER_BYTES, ScanEnd, Scanned, SegmentFate, SegmentHeader, scan_segment, segment_fate,
};
use crate::fs::{Fs, FsFile};
use crate::index::Placed;
use crate::meta::{MANIFEST_TMP_FILE, read_manifest};
use crate::segment::{NEW_SEGMENT_FILE, Segment, parse_segment_name, segment_path};
use crate::spare::SPARE_FILE;

/// What recovery found in a log directory.
pub(crate) struct Recovered {
    pub(crate) segments: Vec<Segment>,
    pub(crate) entries: VecDeque<Placed>,
    pub(crate) last: Option<Version>,
    /// Where the last segment's data ends: the next record goes there.
    pub(crate) data_end: u64,
    /// The base of the segment the manifest names (`None`: there is no manifest).
    pub(crate) named: Option<Version>,
}

impl Recovered {
    /// Takes `segment`, whose valid records the scan found, as the next segment of the log.
    fn keep(&mut self, segment: Segment, scanned: &Scanned) {
        self.data_end = scanned.data_end;
        self.last = Some(scanned.records.last().map_or(segment.base, |r| r.version));
        self.entries.extend(scanned.records.iter().map(|r| Placed {
            version: r.version,
            previous: r.previous,
            offset: r.offset,
            payload_len: r.payload_len,
            cached: None,
        }));
        self.segments.push(segment);
    }
}

/// Reads every segment in version order, keeping the valid prefix of the log.
///
/// Every check comes before any change to the directory (the repairs touch only the last
/// segment, which is read last, and the leftovers are removed at the end), so a damaged or
/// missing segment or manifest is reported with the directory as it was found, for whoever
/// investigates.
/// `committed`: a version the log must hold (see [`OpenMode::Existing`](crate::OpenMode)).
/// Without `repair` ([`OpenMode::ReadOnly`](crate::OpenMode)) nothing is changed: what would
/// be repaired is only left out of what is read.
pub(crate) fn recover(
    fs: &dyn Fs,
    dir: &Path,
    id: LogId,
    payload_bytes_max: usize,
    committed: Version,
    repair: bool,
) -> Result<Recovered> {
    let names = fs.list(dir).map_err(io_error)?;
    let named = read_manifest(fs, dir, id)?;
    let bases = segment_bases(&names, named);
    let mut out = Recovered {
        segments: Vec::new(),
        entries: VecDeque::new(),
        last: None,
        data_end: SEGMENT_HEADER_BYTES as u64,
        named,
    };
    for (i, &base) in bases.iter().enumerate() {
        let is_last = i + 1 == bases.len();
        let path = segment_path(dir, base);
        let Some((file, len)) =
            open_segment(fs, dir, &path, Version(base), is_last, named, repair)?
        else {
            continue;
        };
        let mut bytes = vec![0u8; len];
        file.read_exact_at(&mut bytes, 0).map_err(io_error)?;
        let header = check_header(&path, &bytes, id, Version(base), out.last)?;
        let scanned = scan_segment(&bytes, header, is_last, payload_bytes_max)
            .map_err(|(offset, why)| corruption(&path, offset, &why))?;
        repair_tail(
            file.as_ref(),
            &path,
            len,
            header.base_version,
            &scanned,
            committed,
            repair,
        )?;
        let segment = Segment {
            base: header.base_version,
            path,
            file,
            format: header.format,
        };
        out.keep(segment, &scanned);
    }
    if repair {
        remove_leftovers(fs, dir, &names)?;
    }
    Ok(out)
}

/// The bases of the segments to read, ascending: every segment file in `names`, and the one
/// the manifest names, which is looked at even when it is not there (then it is lost).
fn segment_bases(names: &[String], named: Option<Version>) -> Vec<u64> {
    let mut bases: Vec<u64> = names.iter().filter_map(|n| parse_segment_name(n)).collect();
    bases.extend(named.map(|n| n.0));
    bases.sort_unstable();
    bases.dedup();
    bases
}

/// Opens the segment at `path` and decides its fate: the file and its length to read, `None`
/// when it was torn at its creation (it never held a record, and is removed), or `Corruption`
/// when it is missing or too short to be what the manifest says it is.
fn open_segment(
    fs: &dyn Fs,
    dir: &Path,
    path: &Path,
    base: Version,
    is_last: bool,
    named: Option<Version>,
    repair: bool,
) -> Result<Option<(Arc<dyn FsFile>, usize)>> {
    let file = match fs.open(path) {
        Ok(f) => Some(f),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
        Err(e) => return Err(io_error(e)),
    };
    let len = match &file {
        Some(f) => Some(
            usize::try_from(f.len().map_err(io_error)?)
                .map_err(|_| corruption(path, 0, "segment larger than memory"))?,
        ),
        None => None,
    };
    let fate = segment_fate(base, len, is_last, named).map_err(|why| corruption(path, 0, &why))?;
    let (Some(file), Some(len)) = (file, len) else {
        // segment_fate refuses a missing segment.
        return Err(corruption(path, 0, "segment is missing"));
    };
    if fate == SegmentFate::TornAtCreation {
        // A crash while the segment was being created: it never held a record.
        if repair {
            tracing::warn!(path = %path.display(), "removing a segment torn at creation");
            fs.remove(path).map_err(io_error)?;
            fs.sync_dir(dir).map_err(io_error)?;
        }
        return Ok(None);
    }
    Ok(Some((file, len)))
}

/// Decodes the header of the segment at `path` (its contents `bytes`) and checks that it
/// belongs to log `id`, agrees with the file's name (`base`), and starts where the segment
/// before it ends (`previous_end`, `None` for the first).
fn check_header(
    path: &Path,
    bytes: &[u8],
    id: LogId,
    base: Version,
    previous_end: Option<Version>,
) -> Result<SegmentHeader> {
    let header = SegmentHeader::decode(bytes).map_err(|why| corruption(path, 0, &why))?;
    if header.log_id != id.0 {
        return Err(corruption(
            path,
            0,
            &format!("segment belongs to log {}, not {}", header.log_id, id.0),
        ));
    }
    if header.base_version != base {
        return Err(corruption(path, 0, "segment header and file name disagree"));
    }
    if let Some(last) = previous_end
        && header.base_version != last
    {
        return Err(corruption(
            path,
            0,
            &format!(
                "segment starts after {} but the previous segment ends at {last}",
                header.base_version
            ),
        ));
    }
    Ok(header)
}

/// Repairs what the scan of the segment at `path` (`len` bytes, starting after `base`) found
/// after its data: a torn record is truncated, a torn group zeroed, each synced. Refused, as
/// `Corruption` with nothing changed, when the records to drop would lose `committed`: then
/// they were acknowledged, and are damaged, not torn. Without `repair`, only that check: the
/// torn bytes stay, past the end of what is read.
fn repair_tail(
    file: &dyn FsFile,
    path: &Path,
    len: usize,
    base: Version,
    scanned: &Scanned,
    committed: Version,
    repair: bool,
) -> Result<()> {
    let data_end = scanned.data_end;
    let ends_at = scanned.records.last().map_or(base, |r| r.version);
    if scanned.end != ScanEnd::Clean && ends_at < committed {
        // What looks like a torn write holds a version known committed: an acknowledged
        // record, damaged. Repairing it would destroy the only copy.
        return Err(corruption(
            path,
            data_end,
            &format!(
                "the records after {ends_at} are damaged, not torn: {committed} is known \
                 committed"
            ),
        ));
    }
    if !repair {
        return Ok(());
    }
    match scanned.end {
        ScanEnd::Clean => {}
        ScanEnd::TornTail => {
            tracing::warn!(
                path = %path.display(),
                offset = data_end,
                dropped_bytes = len as u64 - data_end,
                "truncating a torn write at the end of the log"
            );
            file.set_len(data_end).map_err(io_error)?;
            file.sync_data().map_err(io_error)?;
        }
        ScanEnd::TornGroup { garbage_end } => {
            // Zeroed, not truncated: the segment keeps its preallocated size, and no
            // piece of the torn group can be read as a record by a later recovery.
            tracing::warn!(
                path = %path.display(),
                offset = data_end,
                dropped_bytes = garbage_end - data_end,
                "zeroing a torn group commit at the end of the log"
            );
            let span = usize::try_from(garbage_end - data_end).unwrap_or(usize::MAX);
            file.write_all_at(&vec![0u8; span], data_end)
                .map_err(io_error)?;
            file.sync_data().map_err(io_error)?;
        }
    }
    Ok(())
}

/// Removes a spare being prepared, a segment not yet renamed into place, or a manifest not yet
/// renamed over the old one, at the crash: none of them ever held a record or named one.
fn remove_leftovers(fs: &dyn Fs, dir: &Path, names: &[String]) -> Result<()> {
    for leftover in [SPARE_FILE, NEW_SEGMENT_FILE, MANIFEST_TMP_FILE] {
        if names.iter().any(|n| n == leftover) {
            fs.remove(&dir.join(leftover)).map_err(io_error)?;
        }
    }
    Ok(())
}
