//! Bytes on disk: the segment header, the record, and the recovery scan of a segment.
//!
//! The layout is documented in the crate docs (`lib.rs`); this module is its only reader and
//! writer.

use strata_core::Version;

/// The four bytes every segment file starts with.
pub(crate) const SEGMENT_MAGIC: [u8; 4] = *b"STLG";
/// The segment format this build writes and reads.
pub(crate) const SEGMENT_FORMAT: u16 = 1;
/// Size of the segment header.
pub(crate) const SEGMENT_HEADER_BYTES: usize = 32;
/// Size of a record's header (length, CRC, version, previous version).
pub(crate) const RECORD_HEADER_BYTES: usize = 24;

/// What a segment header says.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct SegmentHeader {
    pub(crate) log_id: u64,
    /// The version before the segment's first record: its `previous_version`.
    pub(crate) base_version: Version,
}

impl SegmentHeader {
    pub(crate) fn encode(&self) -> [u8; SEGMENT_HEADER_BYTES] {
        let mut h = [0u8; SEGMENT_HEADER_BYTES];
        h[0..4].copy_from_slice(&SEGMENT_MAGIC);
        h[4..6].copy_from_slice(&SEGMENT_FORMAT.to_le_bytes());
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
        if format != SEGMENT_FORMAT {
            return Err(format!(
                "unsupported segment format {format} (this build reads {SEGMENT_FORMAT})"
            ));
        }
        Ok(SegmentHeader {
            log_id: le_u64(&h[8..16]),
            base_version: Version(le_u64(&h[16..24])),
        })
    }
}

/// The header of the record `previous -> version` carrying `payload`, CRC included.
///
/// Pushers compute it before they queue, so that the log's single writer thread only copies:
/// everything done on that thread is done one push at a time.
pub(crate) fn record_header(
    version: Version,
    previous: Version,
    payload: &[u8],
) -> [u8; RECORD_HEADER_BYTES] {
    let mut h = [0u8; RECORD_HEADER_BYTES];
    // Payload lengths are checked against the configured maximum (< 4 GiB) before a push is
    // accepted, so this cannot truncate.
    #[expect(clippy::cast_possible_truncation)]
    h[0..4].copy_from_slice(&(payload.len() as u32).to_le_bytes());
    h[8..16].copy_from_slice(&version.0.to_le_bytes());
    h[16..24].copy_from_slice(&previous.0.to_le_bytes());
    let mut crc = crc32fast::Hasher::new();
    crc.update(&h[0..4]);
    crc.update(&h[8..24]);
    crc.update(payload);
    h[4..8].copy_from_slice(&crc.finalize().to_le_bytes());
    h
}

/// The CRC of a whole record: its length, version, previous version and payload.
fn record_crc(record: &[u8]) -> u32 {
    let mut h = crc32fast::Hasher::new();
    h.update(&record[0..4]);
    h.update(&record[8..]);
    h.finalize()
}

/// Checks a record read back whole (header and payload): its CRC must match.
pub(crate) fn record_is_intact(record: &[u8]) -> bool {
    record.len() >= RECORD_HEADER_BYTES && record_crc(record) == le_u32(&record[4..8])
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

/// How the scan of a segment ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum ScanEnd {
    /// Every byte after the header belongs to a valid record.
    Clean,
    /// The segment is the last one and ends with a torn record at `offset`: the file must be
    /// truncated there.
    TornTail { offset: u64 },
}

/// Scans the records of one segment (`bytes` is the whole file), checking each record's CRC
/// and the version chain from `header.base_version`.
///
/// The decision table, for the first record at `offset` that is not a valid, chaining record:
///
/// | what is found at `offset`                                   | last segment | other segment |
/// |-------------------------------------------------------------|--------------|---------------|
/// | fewer bytes than a record header                            | torn tail*   | corruption    |
/// | a payload length over `payload_bytes_max`                   | corruption   | corruption    |
/// | a header whose payload runs past the end of the file        | torn tail*   | corruption    |
/// | a whole record with a bad CRC, and nothing after it         | torn tail*   | corruption    |
/// | a whole record with a bad CRC, and more bytes after it      | corruption   | corruption    |
/// | an intact record that does not chain, or whose version does not advance | corruption | corruption |
///
/// \* unless an intact record of a newer version starts somewhere after `offset`: then it is
/// corruption.
///
/// Why: the log only ever appends and syncs before acknowledging, so a crash can damage only
/// the bytes after the last sync, at the end of the last segment, and a tear leaves the last
/// record cut short. A bad record followed by more bytes, or by an intact newer record, is the
/// disk's damage: skipping it would lose or reorder acknowledged commits. The one blind spot:
/// damage to the very last record of the last segment looks exactly like a torn write, and that
/// record is dropped.
pub(crate) fn scan_segment(
    bytes: &[u8],
    header: SegmentHeader,
    is_last: bool,
    payload_bytes_max: usize,
) -> Result<(Vec<ScannedRecord>, ScanEnd), (u64, String)> {
    let mut records = Vec::new();
    let mut last = header.base_version;
    let mut at = SEGMENT_HEADER_BYTES;
    let torn_or = |at: usize, last: Version, why: String| -> Result<ScanEnd, (u64, String)> {
        if !is_last {
            return Err((at as u64, why));
        }
        // A torn write is the last thing in the log. If an intact record of a newer version
        // starts anywhere after this one, this one was damaged in place (a flipped length, say)
        // and acknowledged records follow it: that is corruption, not a tear.
        if let Some(found) = later_intact_record(bytes, at + 1, last, payload_bytes_max) {
            return Err((
                at as u64,
                format!("{why}, yet an intact later record starts at offset {found}"),
            ));
        }
        Ok(ScanEnd::TornTail { offset: at as u64 })
    };
    let end = loop {
        let rest = &bytes[at..];
        if rest.is_empty() {
            break ScanEnd::Clean;
        }
        if rest.len() < RECORD_HEADER_BYTES {
            let why = format!("partial record header of {} bytes", rest.len());
            break torn_or(at, last, why)?;
        }
        let len = le_u32(&rest[0..4]) as usize;
        if len > payload_bytes_max {
            // No push this large was ever accepted, so this length was not written by us.
            return Err((
                at as u64,
                format!("record payload of {len} bytes is over the limit of {payload_bytes_max}"),
            ));
        }
        let whole = RECORD_HEADER_BYTES + len;
        if whole > rest.len() {
            let why = format!("record of {len} payload bytes runs past the end");
            break torn_or(at, last, why)?;
        }
        let record = &rest[..whole];
        if !record_is_intact(record) {
            if whole == rest.len() {
                break torn_or(at, last, "bad record CRC".into())?;
            }
            return Err((at as u64, "bad record CRC".into()));
        }
        let version = Version(le_u64(&record[8..16]));
        let previous = Version(le_u64(&record[16..24]));
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
    Ok((records, end))
}

/// The offset of the first intact record at or after `from` whose version is newer than
/// `last`, if any. Every offset is tried; the cheap checks (length within bounds, versions
/// advancing) come before the CRC, so this costs little more than one pass over the bytes.
fn later_intact_record(
    bytes: &[u8],
    from: usize,
    last: Version,
    payload_bytes_max: usize,
) -> Option<usize> {
    (from..bytes.len().saturating_sub(RECORD_HEADER_BYTES - 1)).find(|&p| {
        let h = &bytes[p..p + RECORD_HEADER_BYTES];
        let len = le_u32(&h[0..4]) as usize;
        let version = le_u64(&h[8..16]);
        let previous = le_u64(&h[16..24]);
        len <= payload_bytes_max
            && p + RECORD_HEADER_BYTES + len <= bytes.len()
            && previous >= last.0
            && version > previous
            && record_is_intact(&bytes[p..p + RECORD_HEADER_BYTES + len])
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

    fn segment(records: &[(u64, u64, &[u8])]) -> Vec<u8> {
        let mut out = SegmentHeader {
            log_id: 7,
            base_version: Version(records.first().map_or(0, |r| r.1)),
        }
        .encode()
        .to_vec();
        for (v, p, payload) in records {
            out.extend_from_slice(&record_header(Version(*v), Version(*p), payload));
            out.extend_from_slice(payload);
        }
        out
    }

    fn header(bytes: &[u8]) -> SegmentHeader {
        SegmentHeader::decode(bytes).unwrap()
    }

    #[test]
    fn record_header_crc_is_the_crc_the_scan_checks() {
        let payload = b"some payload";
        let mut record = record_header(Version(9), Version(4), payload).to_vec();
        record.extend_from_slice(payload);
        assert!(record_is_intact(&record));
        for i in 0..record.len() {
            let mut bad = record.clone();
            bad[i] ^= 0x10;
            assert!(!record_is_intact(&bad), "flip at {i}");
        }
    }

    #[test]
    fn clean_segment_scans_whole() {
        let s = segment(&[(10, 5, b"a"), (20, 10, b"bb")]);
        let (records, end) = scan_segment(&s, header(&s), true, 100).unwrap();
        assert_eq!(end, ScanEnd::Clean);
        assert_eq!(records.len(), 2);
        assert_eq!(
            records[1].offset,
            (SEGMENT_HEADER_BYTES + RECORD_HEADER_BYTES + 1) as u64
        );
    }

    #[test]
    fn cut_inside_the_last_record_is_a_torn_tail_only_in_the_last_segment() {
        let s = segment(&[(10, 5, b"a"), (20, 10, b"bb")]);
        let second = SEGMENT_HEADER_BYTES + RECORD_HEADER_BYTES + 1;
        for cut in second + 1..s.len() {
            let (records, end) = scan_segment(&s[..cut], header(&s), true, 100).unwrap();
            assert_eq!(records.len(), 1);
            assert_eq!(
                end,
                ScanEnd::TornTail {
                    offset: second as u64
                }
            );
            assert!(scan_segment(&s[..cut], header(&s), false, 100).is_err());
        }
    }

    #[test]
    fn damage_before_more_records_is_corruption() {
        let mut s = segment(&[(10, 5, b"a"), (20, 10, b"bb")]);
        s[SEGMENT_HEADER_BYTES + RECORD_HEADER_BYTES] ^= 1; // payload of the first record
        let err = scan_segment(&s, header(&s), true, 100).unwrap_err();
        assert_eq!(err.0, SEGMENT_HEADER_BYTES as u64);
    }

    #[test]
    fn flipped_length_of_an_earlier_record_is_corruption_not_a_tear() {
        let s = segment(&[(10, 5, b"a"), (20, 10, b"bb"), (30, 20, b"ccc")]);
        for bit in 0..32 {
            let mut bad = s.clone();
            bad[SEGMENT_HEADER_BYTES + bit / 8] ^= 1 << (bit % 8);
            let err = scan_segment(&bad, header(&s), true, 1 << 20).unwrap_err();
            assert_eq!(err.0, SEGMENT_HEADER_BYTES as u64, "bit {bit}: {}", err.1);
        }
    }

    #[test]
    fn broken_chain_is_corruption() {
        let s = segment(&[(10, 5, b"a"), (20, 11, b"bb")]);
        assert!(scan_segment(&s, header(&s), true, 100).is_err());
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
    }
}
