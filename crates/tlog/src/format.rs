//! Bytes on disk: the segment header, the record, and the recovery scan of a segment.
//!
//! The layout is documented in the crate docs (`lib.rs`); this module is its only reader and
//! writer.

use strata_core::Version;

/// The four bytes every segment file starts with.
pub(crate) const SEGMENT_MAGIC: [u8; 4] = *b"STLG";
/// The segment format this build writes.
pub(crate) const SEGMENT_FORMAT: u16 = 2;
/// The oldest segment format this build reads (format 1 segments are read, never appended to).
pub(crate) const SEGMENT_FORMAT_OLDEST: u16 = 1;
/// Size of the segment header.
pub(crate) const SEGMENT_HEADER_BYTES: usize = 32;
/// Size of a record's header (length word, CRC, version, previous version).
pub(crate) const RECORD_HEADER_BYTES: usize = 24;
/// Format 2: the bit of a record's length word that marks the last record of a group commit
/// (the writer synced right after it). Payloads are limited to below this bit.
pub(crate) const GROUP_END: u32 = 1 << 31;

/// What a segment header says.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct SegmentHeader {
    pub(crate) log_id: u64,
    /// The version before the segment's first record: its `previous_version`.
    pub(crate) base_version: Version,
    /// The format the segment's records are in.
    pub(crate) format: u16,
}

impl SegmentHeader {
    /// The header of a new segment, in the format this build writes.
    pub(crate) fn new(log_id: u64, base_version: Version) -> SegmentHeader {
        SegmentHeader {
            log_id,
            base_version,
            format: SEGMENT_FORMAT,
        }
    }

    pub(crate) fn encode(&self) -> [u8; SEGMENT_HEADER_BYTES] {
        let mut h = [0u8; SEGMENT_HEADER_BYTES];
        h[0..4].copy_from_slice(&SEGMENT_MAGIC);
        h[4..6].copy_from_slice(&self.format.to_le_bytes());
        h[8..16].copy_from_slice(&self.log_id.to_le_bytes());
        h[16..24].copy_from_slice(&self.base_version.0.to_le_bytes());
        let crc = crc32fast::hash(&h[0..24]);
        h[24..28].copy_from_slice(&crc.to_le_bytes());
        h
    }

    /// Reads a header; the error says what is wrong with it.
    pub(crate) fn decode(bytes: &[u8]) -> Result<SegmentHeader, String> {
        let Some(h) = bytes.get(..SEGMENT_HEADER_BYTES) else {
            return Err(format!("header truncated to {} bytes", bytes.len()));
        };
        if h[0..4] != SEGMENT_MAGIC {
            return Err(format!("bad magic {:02x?}", &h[0..4]));
        }
        if crc32fast::hash(&h[0..24]) != le_u32(&h[24..28]) {
            return Err("bad header CRC".into());
        }
        let format = u16::from_le_bytes([h[4], h[5]]);
        if !(SEGMENT_FORMAT_OLDEST..=SEGMENT_FORMAT).contains(&format) {
            return Err(format!(
                "unsupported segment format {format} (this build reads \
                 {SEGMENT_FORMAT_OLDEST} to {SEGMENT_FORMAT})"
            ));
        }
        Ok(SegmentHeader {
            log_id: le_u64(&h[8..16]),
            base_version: Version(le_u64(&h[16..24])),
            format,
        })
    }
}

/// The four bytes the `manifest` file starts with.
pub(crate) const MANIFEST_MAGIC: [u8; 4] = *b"STMF";
/// The manifest format this build writes and reads.
pub(crate) const MANIFEST_FORMAT: u16 = 1;
/// Size of the manifest file.
pub(crate) const MANIFEST_BYTES: usize = 32;

/// What the `manifest` file says: the base version of the newest segment that may hold records
/// (it is written, durably, before the first record goes into that segment).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Manifest {
    pub(crate) log_id: u64,
    pub(crate) newest_base: Version,
}

impl Manifest {
    pub(crate) fn encode(&self) -> [u8; MANIFEST_BYTES] {
        let mut m = [0u8; MANIFEST_BYTES];
        m[0..4].copy_from_slice(&MANIFEST_MAGIC);
        m[4..6].copy_from_slice(&MANIFEST_FORMAT.to_le_bytes());
        m[8..16].copy_from_slice(&self.log_id.to_le_bytes());
        m[16..24].copy_from_slice(&self.newest_base.0.to_le_bytes());
        let crc = crc32fast::hash(&m[0..24]);
        m[24..28].copy_from_slice(&crc.to_le_bytes());
        m
    }

    /// Reads a manifest; the error says what is wrong with it.
    pub(crate) fn decode(bytes: &[u8]) -> Result<Manifest, String> {
        if bytes.len() != MANIFEST_BYTES {
            return Err(format!(
                "manifest is {} bytes, not {MANIFEST_BYTES}",
                bytes.len()
            ));
        }
        if bytes[0..4] != MANIFEST_MAGIC {
            return Err(format!("bad manifest magic {:02x?}", &bytes[0..4]));
        }
        if crc32fast::hash(&bytes[0..24]) != le_u32(&bytes[24..28]) {
            return Err("bad manifest CRC".into());
        }
        let format = u16::from_le_bytes([bytes[4], bytes[5]]);
        if format != MANIFEST_FORMAT {
            return Err(format!(
                "unsupported manifest format {format} (this build reads {MANIFEST_FORMAT})"
            ));
        }
        Ok(Manifest {
            log_id: le_u64(&bytes[8..16]),
            newest_base: Version(le_u64(&bytes[16..24])),
        })
    }
}

/// What recovery does with a segment file, before reading its records.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum SegmentFate {
    /// Read its header (a bad one is corruption) and scan its records.
    Read,
    /// Remove it: a crash cut it short while it was being created, before any record could be
    /// acknowledged in it.
    TornAtCreation,
}

/// Decides what recovery does with the segment starting after `base`, from its length alone
/// (`None`: the file is missing), given the base of the segment the manifest names (`None`:
/// no manifest, a directory written before it existed) and whether no segment follows it.
///
/// A segment is installed (header written and synced, renamed into place, directory synced)
/// and *then* named in the manifest (write-temp, sync, rename, sync-directory), and only then
/// does any record go into it. So the segment the manifest names may hold acknowledged
/// records and must be there, whole; one newer than it was never written to; and with no
/// manifest, the rule of the builds before it stands.
///
/// | the segment                                           | missing    | shorter than its header | header-long or longer |
/// |-------------------------------------------------------|------------|-------------------------|-----------------------|
/// | named by the manifest                                 | corruption | corruption              | read                  |
/// | newer than the named one, and the last                | —          | torn at creation        | read                  |
/// | no manifest (written by an older build), the last     | —          | torn at creation        | read                  |
/// | any other (older than the named one, or not the last) | corruption | corruption              | read                  |
///
/// "—": only a file that is listed is looked at, and only the named one can be missing from
/// the listing. "Read" still refuses a bad header, for every segment: a header is synced
/// before the file gets its name, so no crash leaves one damaged. A segment newer than the
/// named one that does hold records (an older build wrote to a directory this one had
/// opened) is read like any other.
pub(crate) fn segment_fate(
    base: Version,
    len: Option<usize>,
    is_last: bool,
    named: Option<Version>,
) -> Result<SegmentFate, String> {
    let is_named = named == Some(base);
    let Some(len) = len else {
        return Err(if is_named {
            "segment is missing, yet the manifest names it as the newest segment, which may \
             hold acknowledged records"
                .into()
        } else {
            "segment is missing".into()
        });
    };
    if len >= SEGMENT_HEADER_BYTES {
        return Ok(SegmentFate::Read);
    }
    let never_named = named.is_none_or(|n| base > n);
    if is_last && never_named {
        return Ok(SegmentFate::TornAtCreation);
    }
    Err(if is_named {
        format!(
            "segment is {len} bytes, shorter than its {SEGMENT_HEADER_BYTES}-byte header, yet \
             the manifest names it as the newest segment, which may hold acknowledged records"
        )
    } else {
        format!("header truncated to {len} bytes")
    })
}

/// The header of the record `previous -> version` carrying a payload, with its CRC computed
/// both ways: as the last record of a group commit and as any other.
///
/// Pushers compute it before they queue, so that the log's single writer thread only copies
/// (everything done on that thread is done one push at a time), and only the writer knows
/// which record ends a group. The format 2 CRC covers the length word *last*, so both CRCs
/// cost one pass over the payload.
#[derive(Clone, Copy, Debug)]
pub(crate) struct RecordHeader {
    bytes: [u8; RECORD_HEADER_BYTES],
    crc_group_end: u32,
}

impl RecordHeader {
    pub(crate) fn new(version: Version, previous: Version, payload: &[u8]) -> RecordHeader {
        let mut bytes = [0u8; RECORD_HEADER_BYTES];
        // Payload lengths are checked against the configured maximum (< 2 GiB) before a push
        // is accepted, so this cannot truncate or reach the group-end bit.
        #[expect(clippy::cast_possible_truncation)]
        let len = payload.len() as u32;
        bytes[8..16].copy_from_slice(&version.0.to_le_bytes());
        bytes[16..24].copy_from_slice(&previous.0.to_le_bytes());
        let mut body = crc32fast::Hasher::new();
        body.update(&bytes[8..24]);
        body.update(payload);
        let mut ends = body.clone();
        body.update(&len.to_le_bytes());
        ends.update(&(len | GROUP_END).to_le_bytes());
        bytes[0..4].copy_from_slice(&len.to_le_bytes());
        bytes[4..8].copy_from_slice(&body.finalize().to_le_bytes());
        RecordHeader {
            bytes,
            crc_group_end: ends.finalize(),
        }
    }

    /// The 24 header bytes, marked as the last record of its group commit or not.
    pub(crate) fn encode(&self, group_end: bool) -> [u8; RECORD_HEADER_BYTES] {
        let mut h = self.bytes;
        if group_end {
            let len = le_u32(&h[0..4]) | GROUP_END;
            h[0..4].copy_from_slice(&len.to_le_bytes());
            h[4..8].copy_from_slice(&self.crc_group_end.to_le_bytes());
        }
        h
    }
}

/// The CRC a whole record (header and payload) should carry in `format`.
fn record_crc(record: &[u8], format: u16) -> u32 {
    let mut h = crc32fast::Hasher::new();
    if format == 1 {
        h.update(&record[0..4]);
        h.update(&record[8..]);
    } else {
        h.update(&record[8..]);
        h.update(&record[0..4]);
    }
    h.finalize()
}

/// Checks a record read back whole (header and payload): its CRC must match.
pub(crate) fn record_is_intact(record: &[u8], format: u16) -> bool {
    record.len() >= RECORD_HEADER_BYTES && record_crc(record, format) == le_u32(&record[4..8])
}

/// The payload length a record's length word gives, without the format 2 group-end mark.
fn payload_len(word: u32, format: u16) -> usize {
    if format == 1 {
        word as usize
    } else {
        (word & !GROUP_END) as usize
    }
}

/// A record found by the scan.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct ScannedRecord {
    pub(crate) version: Version,
    pub(crate) previous: Version,
    /// Offset of the record in the segment file.
    pub(crate) offset: u64,
    /// Length of the payload.
    pub(crate) payload_len: u32,
}

/// What the scan of a segment found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Scanned {
    /// The valid records, in order.
    pub(crate) records: Vec<ScannedRecord>,
    /// Where the segment's data ends: the next record is written here.
    pub(crate) data_end: u64,
    /// What, if anything, follows the data.
    pub(crate) end: ScanEnd,
}

/// How the scan of a segment ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum ScanEnd {
    /// Nothing follows the data: the end of the file, or (format 2) zeros.
    Clean,
    /// Format 1: the last segment ends with a torn record; the file must be truncated to the
    /// end of the data.
    TornTail,
    /// Format 2: the last segment holds part of an unacknowledged group commit after its
    /// data; the bytes up to `garbage_end` must be zeroed before anything is written there.
    TornGroup { garbage_end: u64 },
}

/// Why the walk along the records stopped.
enum Stop {
    /// No byte left.
    End,
    /// The bytes at the stop are not a valid record, for the reason given.
    Invalid(String),
}

/// Where the walk along a segment's valid records got to.
struct Walked {
    records: Vec<ScannedRecord>,
    /// The version of the last valid record (the base when there is none).
    last: Version,
    /// The offset just past the last valid record.
    at: usize,
    stop: Stop,
}

/// Walks the valid, chaining records of a segment from its header on. Errors are the damage
/// no crash can cause in either format: a length over the limit, an intact record that breaks
/// the chain.
fn walk(
    bytes: &[u8],
    header: SegmentHeader,
    payload_bytes_max: usize,
) -> Result<Walked, (u64, String)> {
    let mut records = Vec::new();
    let mut last = header.base_version;
    let mut at = SEGMENT_HEADER_BYTES;
    let stop = loop {
        let rest = &bytes[at..];
        if rest.is_empty() {
            break Stop::End;
        }
        if rest.len() < RECORD_HEADER_BYTES {
            break Stop::Invalid(format!("partial record header of {} bytes", rest.len()));
        }
        let len = payload_len(le_u32(&rest[0..4]), header.format);
        if len > payload_bytes_max {
            // No push this large was ever accepted, and a crash leaves a length word whole or
            // zeroed: this length was not written by the log.
            return Err((
                at as u64,
                format!("record payload of {len} bytes is over the limit of {payload_bytes_max}"),
            ));
        }
        let whole = RECORD_HEADER_BYTES + len;
        if whole > rest.len() {
            break Stop::Invalid(format!("record of {len} payload bytes runs past the end"));
        }
        if !record_is_intact(&rest[..whole], header.format) {
            break Stop::Invalid("bad record CRC".into());
        }
        let version = Version(le_u64(&rest[8..16]));
        let previous = Version(le_u64(&rest[16..24]));
        if previous != last || version <= previous {
            return Err((
                at as u64,
                format!(
                    "record {version} after {previous} breaks the version chain (expected previous {last})"
                ),
            ));
        }
        #[expect(clippy::cast_possible_truncation)] // NOTE: bounded by payload_bytes_max above
        records.push(ScannedRecord {
            version,
            previous,
            offset: at as u64,
            payload_len: len as u32,
        });
        last = version;
        at += whole;
    };
    Ok(Walked {
        records,
        last,
        at,
        stop,
    })
}

/// Scans the records of one segment (`bytes` is the whole file), checking each record's CRC
/// and the version chain from `header.base_version`, and decides what follows the valid
/// records: nothing, a torn write to repair, or damage (an error naming the offset).
///
/// Both formats first walk the valid, chaining records; an intact record that breaks the chain
/// and a length over `payload_bytes_max` are corruption wherever they are. What the first
/// invalid spot means depends on the format:
///
/// **Format 1** (append-only segments): the log syncs before acknowledging and only appends,
/// so a crash can damage only the end of the last segment, and a tear leaves the last record
/// cut short.
///
/// | what is found at the first invalid spot                     | last segment | other segment |
/// |-------------------------------------------------------------|--------------|---------------|
/// | fewer bytes than a record header                            | torn tail*   | corruption    |
/// | a header whose payload runs past the end of the file        | torn tail*   | corruption    |
/// | a whole record with a bad CRC, and nothing after it         | torn tail*   | corruption    |
/// | a whole record with a bad CRC, and more bytes after it      | corruption   | corruption    |
///
/// \* unless an intact record of a newer version starts somewhere after it: then it is
/// corruption (damage in place, with acknowledged records after it).
///
/// **Format 2** (segments written full of zeros beforehand, records overwriting them): the
/// pages of the one group commit in flight at a crash can reach the disk in any order, so an
/// intact record may follow a hole. What a crash can leave after the acknowledged records is
/// the part of one group commit that made it, and zeros; the last record of every group carries
/// the group-end mark, and no other does. So, at the first invalid spot:
///
/// - only zeros follow (or nothing): the data ends there (clean).
/// - in a segment other than the last (synced whole before the next one was created):
///   corruption.
/// - in the last segment, corruption when a later group commit proves the damaged one was
///   acknowledged (a group is only written after the one before it was synced):
///   (a) the length word at the spot carries the group-end mark, yet an intact record newer
///   than the chain starts after it; or (b) an intact record newer than the chain, carrying
///   the group-end mark, is directly followed by an intact record that chains from it.
/// - otherwise it is a torn group commit: the data ends at the spot, and the bytes after it
///   must be zeroed.
///
/// The blind spot: damage to the records of the last group commit (or to the group-end mark of
/// the one before it) looks exactly like a torn write, and those records are dropped. A second
/// one, in principle: a payload that itself holds the bytes of two valid, chaining records
/// could be read as evidence of a later group.
pub(crate) fn scan_segment(
    bytes: &[u8],
    header: SegmentHeader,
    is_last: bool,
    payload_bytes_max: usize,
) -> Result<Scanned, (u64, String)> {
    let Walked {
        records,
        last,
        at,
        stop,
    } = walk(bytes, header, payload_bytes_max)?;
    let end = match stop {
        Stop::End => ScanEnd::Clean,
        Stop::Invalid(why) if header.format == 1 => {
            torn_tail_v1(bytes, at, last, is_last, payload_bytes_max, why)?
        }
        Stop::Invalid(why) => torn_group_v2(bytes, at, last, is_last, payload_bytes_max, why)?,
    };
    Ok(Scanned {
        records,
        data_end: at as u64,
        end,
    })
}

fn torn_tail_v1(
    bytes: &[u8],
    at: usize,
    last: Version,
    is_last: bool,
    payload_bytes_max: usize,
    why: String,
) -> Result<ScanEnd, (u64, String)> {
    if !is_last {
        return Err((at as u64, why));
    }
    let rest = &bytes[at..];
    if rest.len() >= RECORD_HEADER_BYTES {
        let whole = RECORD_HEADER_BYTES + payload_len(le_u32(&rest[0..4]), 1);
        if whole < rest.len() {
            // A whole record with a bad CRC and more after it: damage, not a tear.
            return Err((at as u64, why));
        }
    }
    // A torn write is the last thing in the log. If an intact record of a newer version
    // starts anywhere after this one, this one was damaged in place (a flipped length, say)
    // and acknowledged records follow it: that is corruption, not a tear.
    if let Some(found) = next_intact_record(bytes, at + 1, last, payload_bytes_max, 1) {
        return Err((
            at as u64,
            format!(
                "{why}, yet an intact later record starts at offset {}",
                found.offset
            ),
        ));
    }
    Ok(ScanEnd::TornTail)
}

fn torn_group_v2(
    bytes: &[u8],
    at: usize,
    last: Version,
    is_last: bool,
    payload_bytes_max: usize,
    why: String,
) -> Result<ScanEnd, (u64, String)> {
    let Some(nonzero) = bytes[at..].iter().rposition(|&b| b != 0) else {
        return Ok(ScanEnd::Clean);
    };
    if !is_last {
        return Err((at as u64, why));
    }
    let garbage_end = at + nonzero + 1;
    let marked_end = bytes
        .get(at..at + 4)
        .is_some_and(|w| le_u32(w) & GROUP_END != 0);
    let mut from = at + 1;
    while let Some(found) = next_intact_record(bytes, from, last, payload_bytes_max, 2) {
        if marked_end {
            return Err((
                at as u64,
                format!(
                    "{why}; it is marked as the end of a group commit, yet an intact later \
                     record starts at offset {}",
                    found.offset
                ),
            ));
        }
        if found.group_end
            && let Some(next) = record_at(bytes, found.end, last, payload_bytes_max, 2)
            && next.previous == found.version
        {
            return Err((
                at as u64,
                format!(
                    "{why}; the group commit ending at offset {} is followed by more records, so \
                     it and everything before it were acknowledged",
                    found.offset
                ),
            ));
        }
        from = found.end;
    }
    Ok(ScanEnd::TornGroup {
        garbage_end: garbage_end as u64,
    })
}

/// An intact record found at an arbitrary offset.
struct Found {
    offset: usize,
    /// Offset just past it.
    end: usize,
    version: Version,
    previous: Version,
    group_end: bool,
}

/// The first intact record at or after `from` whose version is newer than `last`, if any.
/// Every offset is tried; the cheap checks (length within bounds, versions advancing) come
/// before the CRC, so this costs little more than one pass over the bytes.
fn next_intact_record(
    bytes: &[u8],
    from: usize,
    last: Version,
    payload_bytes_max: usize,
    format: u16,
) -> Option<Found> {
    (from..bytes.len()).find_map(|p| record_at(bytes, p, last, payload_bytes_max, format))
}

/// The intact record starting exactly at `p` whose version is newer than `last`, if any.
fn record_at(
    bytes: &[u8],
    p: usize,
    last: Version,
    payload_bytes_max: usize,
    format: u16,
) -> Option<Found> {
    let h = bytes.get(p..p + RECORD_HEADER_BYTES)?;
    let word = le_u32(&h[0..4]);
    let len = payload_len(word, format);
    let version = le_u64(&h[8..16]);
    let previous = le_u64(&h[16..24]);
    let end = p + RECORD_HEADER_BYTES + len;
    let plausible =
        len <= payload_bytes_max && end <= bytes.len() && previous >= last.0 && version > previous;
    (plausible && record_is_intact(&bytes[p..end], format)).then_some(Found {
        offset: p,
        end,
        version: Version(version),
        previous: Version(previous),
        group_end: format != 1 && word & GROUP_END != 0,
    })
}

pub(crate) fn le_u32(b: &[u8]) -> u32 {
    let mut a = [0; 4];
    a.copy_from_slice(&b[..4]);
    u32::from_le_bytes(a)
}

pub(crate) fn le_u64(b: &[u8]) -> u64 {
    let mut a = [0; 8];
    a.copy_from_slice(&b[..8]);
    u64::from_le_bytes(a)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A record as format 1 wrote it: the CRC covers the length word first.
    fn record_v1(version: u64, previous: u64, payload: &[u8]) -> Vec<u8> {
        let mut r = vec![0u8; RECORD_HEADER_BYTES];
        r[0..4].copy_from_slice(&(payload.len() as u32).to_le_bytes());
        r[8..16].copy_from_slice(&version.to_le_bytes());
        r[16..24].copy_from_slice(&previous.to_le_bytes());
        r.extend_from_slice(payload);
        let crc = record_crc(&r, 1);
        r[4..8].copy_from_slice(&crc.to_le_bytes());
        r
    }

    fn record_v2(version: u64, previous: u64, payload: &[u8], group_end: bool) -> Vec<u8> {
        let h = RecordHeader::new(Version(version), Version(previous), payload);
        let mut r = h.encode(group_end).to_vec();
        r.extend_from_slice(payload);
        r
    }

    fn header_bytes(format: u16, base: u64) -> Vec<u8> {
        SegmentHeader {
            log_id: 7,
            base_version: Version(base),
            format,
        }
        .encode()
        .to_vec()
    }

    /// A format 1 segment holding `(version, previous, payload)` records.
    fn segment(records: &[(u64, u64, &[u8])]) -> Vec<u8> {
        let mut out = header_bytes(1, records.first().map_or(0, |r| r.1));
        for (v, p, payload) in records {
            out.extend_from_slice(&record_v1(*v, *p, payload));
        }
        out
    }

    fn header(bytes: &[u8]) -> SegmentHeader {
        SegmentHeader::decode(bytes).unwrap()
    }

    fn scan(bytes: &[u8], is_last: bool, max: usize) -> Result<Scanned, (u64, String)> {
        scan_segment(bytes, header(bytes), is_last, max)
    }

    #[test]
    fn both_crcs_of_a_record_header_are_the_ones_the_scan_checks() {
        let payload = b"some payload";
        for group_end in [false, true] {
            let record = record_v2(9, 4, payload, group_end);
            assert!(record_is_intact(&record, 2));
            assert_eq!(le_u32(&record[0..4]) & GROUP_END != 0, group_end);
            assert_eq!(payload_len(le_u32(&record[0..4]), 2), payload.len());
            for i in 0..record.len() {
                for bit in 0..8 {
                    let mut bad = record.clone();
                    bad[i] ^= 1 << bit;
                    assert!(!record_is_intact(&bad, 2), "flip at {i}.{bit}");
                }
            }
        }
        assert!(record_is_intact(&record_v1(9, 4, payload), 1));
        assert!(!record_is_intact(&record_v1(9, 4, payload), 2));
    }

    #[test]
    fn clean_segment_scans_whole() {
        let s = segment(&[(10, 5, b"a"), (20, 10, b"bb")]);
        let scanned = scan(&s, true, 100).unwrap();
        assert_eq!(scanned.end, ScanEnd::Clean);
        assert_eq!(scanned.data_end, s.len() as u64);
        assert_eq!(scanned.records.len(), 2);
        assert_eq!(
            scanned.records[1].offset,
            (SEGMENT_HEADER_BYTES + RECORD_HEADER_BYTES + 1) as u64
        );
    }

    #[test]
    fn cut_inside_the_last_record_is_a_torn_tail_only_in_the_last_segment() {
        let s = segment(&[(10, 5, b"a"), (20, 10, b"bb")]);
        let second = SEGMENT_HEADER_BYTES + RECORD_HEADER_BYTES + 1;
        for cut in second + 1..s.len() {
            let scanned = scan(&s[..cut], true, 100).unwrap();
            assert_eq!(scanned.records.len(), 1);
            assert_eq!(scanned.end, ScanEnd::TornTail);
            assert_eq!(scanned.data_end, second as u64);
            assert!(scan(&s[..cut], false, 100).is_err());
        }
    }

    #[test]
    fn damage_before_more_records_is_corruption() {
        let mut s = segment(&[(10, 5, b"a"), (20, 10, b"bb")]);
        s[SEGMENT_HEADER_BYTES + RECORD_HEADER_BYTES] ^= 1; // payload of the first record
        let err = scan(&s, true, 100).unwrap_err();
        assert_eq!(err.0, SEGMENT_HEADER_BYTES as u64);
    }

    #[test]
    fn flipped_length_of_an_earlier_record_is_corruption_not_a_tear() {
        let s = segment(&[(10, 5, b"a"), (20, 10, b"bb"), (30, 20, b"ccc")]);
        for bit in 0..32 {
            let mut bad = s.clone();
            bad[SEGMENT_HEADER_BYTES + bit / 8] ^= 1 << (bit % 8);
            let err = scan(&bad, true, 1 << 20).unwrap_err();
            assert_eq!(err.0, SEGMENT_HEADER_BYTES as u64, "bit {bit}: {}", err.1);
        }
    }

    #[test]
    fn broken_chain_is_corruption() {
        let s = segment(&[(10, 5, b"a"), (20, 11, b"bb")]);
        assert!(scan(&s, true, 100).is_err());
        let mut v2 = header_bytes(2, 5);
        v2.extend(record_v2(10, 5, b"a", true));
        v2.extend(record_v2(20, 11, b"bb", true));
        v2.resize(v2.len() + 100, 0);
        assert!(scan(&v2, true, 100).is_err());
    }

    #[test]
    fn header_damage_is_named() {
        let s = segment(&[(10, 5, b"a")]);
        let mut bad = s.clone();
        bad[0] = b'X';
        assert!(SegmentHeader::decode(&bad).unwrap_err().contains("magic"));
        let mut bad = s.clone();
        bad[17] ^= 1;
        assert!(SegmentHeader::decode(&bad).unwrap_err().contains("CRC"));
        assert!(
            SegmentHeader::decode(&s[..10])
                .unwrap_err()
                .contains("truncated")
        );
        let future = SegmentHeader {
            format: SEGMENT_FORMAT + 1,
            ..header(&s)
        };
        assert!(
            SegmentHeader::decode(&future.encode())
                .unwrap_err()
                .contains("unsupported segment format 3")
        );
    }

    /// Group commits as a format 2 writer lays them out: each group's records chain, the last
    /// one carries the group-end mark. Versions are 1, 2, 3, ... from base 0.
    struct Groups {
        bytes: Vec<u8>,
        /// Offset of each record, and the group it belongs to.
        records: Vec<(usize, usize)>,
    }

    fn groups(sizes: &[usize], zeros_after: usize) -> Groups {
        let mut bytes = header_bytes(2, 0);
        let mut records = Vec::new();
        let mut v = 0u64;
        for (g, &n) in sizes.iter().enumerate() {
            for i in 0..n {
                records.push((bytes.len(), g));
                // Sizes vary, so records straddle the crash units differently.
                let payload = vec![v as u8 ^ 0x5a; 3 + (v as usize * 7) % 19];
                bytes.extend(record_v2(v + 1, v, &payload, i + 1 == n));
                v += 1;
            }
        }
        bytes.resize(bytes.len() + zeros_after, 0);
        Groups { bytes, records }
    }

    #[test]
    fn format_2_data_followed_by_zeros_is_clean_and_ends_before_them() {
        let g = groups(&[1, 2, 1], 4096);
        let scanned = scan(&g.bytes, true, 100).unwrap();
        assert_eq!(scanned.end, ScanEnd::Clean);
        assert_eq!(scanned.records.len(), 4);
        assert_eq!(scanned.data_end as usize, g.bytes.len() - 4096);
        // A fresh segment: nothing but zeros after the header.
        let fresh = groups(&[], 4096);
        let scanned = scan(&fresh.bytes, true, 100).unwrap();
        assert_eq!(
            (scanned.records.len(), scanned.data_end),
            (0, SEGMENT_HEADER_BYTES as u64)
        );
    }

    /// Every subset of 8-byte units of the last group reaching the disk (an 8-byte unit is
    /// harsher than any real sector) recovers to the acknowledged groups plus an intact prefix
    /// of the last one, never to an error, and reports exactly the bytes to zero.
    #[test]
    fn format_2_any_subset_of_a_torn_groups_units_is_a_tear_never_corruption() {
        const UNIT: usize = 8;
        let full = groups(&[1, 2, 3], 64);
        let torn_from = full.records.iter().find(|r| r.1 == 2).unwrap().0;
        let torn_to = full.bytes.len() - 64;
        let acked = full.records.iter().filter(|r| r.1 < 2).count();
        let first_unit = torn_from / UNIT;
        let units = torn_to.div_ceil(UNIT) - first_unit;
        assert!(
            (12..=16).contains(&units),
            "{units} units: resize the groups"
        );
        for mask in 0u32..1 << units {
            let mut image = full.bytes[..torn_from].to_vec();
            image.resize(full.bytes.len(), 0);
            for u in (0..units).filter(|u| mask >> u & 1 == 1) {
                let from = ((first_unit + u) * UNIT).max(torn_from);
                let to = ((first_unit + u + 1) * UNIT).min(torn_to);
                image[from..to].copy_from_slice(&full.bytes[from..to]);
            }
            let scanned =
                scan(&image, true, 100).unwrap_or_else(|e| panic!("mask {mask:b}: {e:?}"));
            assert!(scanned.records.len() >= acked, "mask {mask:b}");
            let expect_end = full
                .records
                .get(scanned.records.len())
                .map_or(torn_to, |r| r.0);
            assert_eq!(scanned.data_end as usize, expect_end, "mask {mask:b}");
            match scanned.end {
                ScanEnd::Clean => assert!(image[expect_end..].iter().all(|&b| b == 0)),
                ScanEnd::TornGroup { garbage_end } => {
                    let g = garbage_end as usize;
                    assert!(g > expect_end && image[g - 1] != 0, "mask {mask:b}");
                    assert!(image[g..].iter().all(|&b| b == 0), "mask {mask:b}");
                }
                ScanEnd::TornTail => panic!("format 2 never truncates"),
            }
        }
    }

    /// Damage to any bit of any record of a group commit that a later group follows is
    /// corruption at that record, except the one blind spot the docs name: the group-end mark
    /// of the group just before the last.
    #[test]
    fn format_2_damage_to_an_acknowledged_group_with_a_later_group_is_corruption() {
        let g = groups(&[1, 2, 2, 1, 2], 256);
        let last_group = 4;
        for (n, &(offset, group)) in g.records.iter().enumerate() {
            if group == last_group {
                continue;
            }
            let end = g.records.get(n + 1).map_or(g.bytes.len(), |r| r.0);
            for byte in offset..end {
                for bit in 0..8 {
                    if group + 1 == last_group && byte == offset + 3 && bit == 7 {
                        continue; // the blind spot
                    }
                    let mut bad = g.bytes.clone();
                    bad[byte] ^= 1 << bit;
                    let err = scan(&bad, true, 100).unwrap_err();
                    assert_eq!(
                        err.0 as usize, offset,
                        "record {n}, byte {byte}.{bit}: {}",
                        err.1
                    );
                }
            }
        }
    }

    #[test]
    fn format_2_damage_to_the_last_group_is_a_tear_and_a_non_last_segment_refuses_it() {
        let g = groups(&[1, 2], 64);
        let last_record = g.records[2].0;
        let mut bad = g.bytes.clone();
        bad[last_record + RECORD_HEADER_BYTES] ^= 1;
        let scanned = scan(&bad, true, 100).unwrap();
        assert_eq!(scanned.records.len(), 2);
        assert!(matches!(scanned.end, ScanEnd::TornGroup { .. }));
        // A segment other than the last was synced whole: anything but zeros after its
        // records is damage.
        let err = scan(&bad, false, 100).unwrap_err();
        assert_eq!(err.0 as usize, last_record);
        let mut stray = g.bytes.clone();
        let len = stray.len();
        stray[len - 1] = 1;
        assert_eq!(scan(&stray, false, 100).unwrap_err().0 as usize, len - 64);
    }

    #[test]
    fn format_2_length_over_the_limit_is_corruption_even_at_the_end() {
        let g = groups(&[1], 64);
        let mut bad = g.bytes.clone();
        let at = g.bytes.len() - 64;
        bad[at..at + 4].copy_from_slice(&1000u32.to_le_bytes());
        assert_eq!(scan(&bad, true, 100).unwrap_err().0 as usize, at);
    }

    #[test]
    fn manifest_round_trips_and_damage_is_named() {
        let m = Manifest {
            log_id: 7,
            newest_base: Version(1234),
        };
        let bytes = m.encode();
        assert_eq!(Manifest::decode(&bytes), Ok(m));
        assert!(
            Manifest::decode(&bytes[..31])
                .unwrap_err()
                .contains("31 bytes")
        );
        for i in 0..28 {
            let mut bad = bytes;
            bad[i] ^= 1;
            assert!(Manifest::decode(&bad).is_err(), "flip at {i}");
        }
    }

    const NAMED: Option<Version> = Some(Version(50));

    fn fate(
        base: u64,
        len: Option<usize>,
        is_last: bool,
        named: Option<Version>,
    ) -> Result<SegmentFate, String> {
        segment_fate(Version(base), len, is_last, named)
    }

    #[test]
    fn segment_named_by_the_manifest_must_be_there_whole() {
        for is_last in [true, false] {
            let missing = fate(50, None, is_last, NAMED).unwrap_err();
            assert!(
                missing.contains("missing") && missing.contains("manifest"),
                "{missing}"
            );
            for len in [0, 10, SEGMENT_HEADER_BYTES - 1] {
                let short = fate(50, Some(len), is_last, NAMED).unwrap_err();
                assert!(short.contains(&format!("{len} bytes")), "{short}");
                assert!(short.contains("manifest"), "{short}");
            }
            assert_eq!(
                fate(50, Some(SEGMENT_HEADER_BYTES), is_last, NAMED),
                Ok(SegmentFate::Read)
            );
        }
    }

    #[test]
    fn segment_newer_than_the_named_one_may_be_torn_at_creation_only_when_last() {
        for len in [0, 10, SEGMENT_HEADER_BYTES - 1] {
            assert_eq!(
                fate(60, Some(len), true, NAMED),
                Ok(SegmentFate::TornAtCreation)
            );
            assert!(fate(60, Some(len), false, NAMED).is_err());
        }
        assert_eq!(fate(60, Some(4096), true, NAMED), Ok(SegmentFate::Read));
    }

    #[test]
    fn without_a_manifest_the_last_segment_may_be_torn_at_creation() {
        for len in [0, 10, SEGMENT_HEADER_BYTES - 1] {
            assert_eq!(
                fate(60, Some(len), true, None),
                Ok(SegmentFate::TornAtCreation)
            );
            assert!(
                fate(60, Some(len), false, None)
                    .unwrap_err()
                    .contains("truncated")
            );
        }
        assert_eq!(
            fate(60, Some(SEGMENT_HEADER_BYTES), true, None),
            Ok(SegmentFate::Read)
        );
    }

    #[test]
    fn segment_older_than_the_named_one_must_be_whole() {
        for is_last in [true, false] {
            assert!(fate(40, Some(10), is_last, NAMED).is_err());
            assert!(fate(40, None, is_last, NAMED).is_err());
            assert_eq!(fate(40, Some(100), is_last, NAMED), Ok(SegmentFate::Read));
        }
    }
}
