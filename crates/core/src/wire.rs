//! The transaction wire format.
//!
//! A transaction travels as one buffer: a fixed header, then tagged sections, each with its own
//! length and CRC-32. A stage reads the sections it needs and leaves the rest untouched: a
//! resolver checks and decodes the conflict sections and never looks at the mutations; a storage
//! server does the opposite. [`TransactionView`] gives that section-by-section access over a
//! shared [`Bytes`] without copying keys or values; [`Transaction::encode`] and
//! [`Transaction::decode`] do the whole thing at once.
//!
//! # Layout
//!
//! All integers are little-endian and of fixed width.
//!
//! **Header** (16 bytes):
//!
//! | offset | size | field                                                       |
//! |-------:|-----:|-------------------------------------------------------------|
//! |      0 |    4 | magic `STXN` (`53 54 58 4e`)                                |
//! |      4 |    2 | format version, `u16`, currently [`FORMAT_VERSION`]         |
//! |      6 |    2 | number of sections, `u16`                                   |
//! |      8 |    4 | total length in bytes, header included, `u32`               |
//! |     12 |    4 | CRC-32 of bytes 0..12                                       |
//!
//! **Section** (9 bytes, then the body):
//!
//! | offset | size | field                                                       |
//! |-------:|-----:|-------------------------------------------------------------|
//! |      0 |    1 | tag (below)                                                 |
//! |      1 |    4 | body length `n`, `u32`                                      |
//! |      5 |    4 | CRC-32 of the tag, the length and the body                  |
//! |      9 |  `n` | body                                                        |
//!
//! Sections appear in ascending tag order, each at most once; tags 1, 2 and 3 are required and
//! tag 4 is optional. An unknown tag is an error, not skipped: a reader that skipped a section
//! it does not understand could commit a transaction without the meaning that section carried.
//!
//! | tag | section            | body                                                        |
//! |----:|--------------------|-------------------------------------------------------------|
//! |   1 | mutations          | count `u32`, then per mutation a kind `u8` and its fields   |
//! |   2 | reads              | flag `u8` (1 = read version present, then `u64`; 0 = none), count `u32`, ranges |
//! |   3 | writes             | count `u32`, ranges                                         |
//! |   4 | commit version     | `u64`, added by the commit proxy once the batch is versioned |
//!
//! A byte string is its length `u32` then its bytes. A range is two byte strings, begin then
//! end, with begin < end. A mutation is kind 0 (`Set`: key, value), 1 (`Clear`: key),
//! 2 (`ClearRange`: begin, end) or 3 (`Atomic`: the operation's code `u8`, 0 add, 1 max,
//! 2 min, then key, operand). Kind 3 came later within format version 1: every encoding made
//! before it still decodes the same, and one that carries it is refused by an older build as
//! an unknown mutation kind, never misread.
//!
//! # Limits
//!
//! Checked when encoding and again when decoding, each with its own error: a key (and a range
//! begin) at most [`KEY_BYTES_MAX`] bytes, a range end at most [`RANGE_END_BYTES_MAX`], a value
//! at most [`VALUE_BYTES_MAX`], an atomic operand from 1 to [`VALUE_BYTES_MAX`], the whole
//! encoding at most [`TRANSACTION_BYTES_MAX`]. A transaction with read conflicts must have a
//! read version.
//!
//! Decoding never panics on any input, and never reserves more memory than the input could
//! fill: every count is checked against the bytes that remain before anything is allocated.

use std::fmt;
use std::ops::Range;

use bytes::Bytes;

use crate::atomic::{AtomicOp, check_operand};
use crate::types::{
    KEY_BYTES_MAX, Key, KeyRange, Mutation, RANGE_END_BYTES_MAX, Transaction, TransactionConflicts,
    VALUE_BYTES_MAX, Version,
};

mod size;

pub use size::encoded_len;
use size::{check_key, check_total_len};

/// The four bytes every encoded transaction starts with.
pub const MAGIC: [u8; 4] = *b"STXN";

/// The format version this build writes and reads.
pub const FORMAT_VERSION: u16 = 1;

/// Size of the header, in bytes.
pub const HEADER_BYTES: usize = 16;

/// Size of a section's header (tag, length, CRC), in bytes.
pub const SECTION_HEADER_BYTES: usize = 9;

const KIND_SET: u8 = 0;
const KIND_CLEAR: u8 = 1;
const KIND_CLEAR_RANGE: u8 = 2;
const KIND_ATOMIC: u8 = 3;

/// A part of the encoding, named in errors.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Section {
    /// The fixed header.
    Header,
    /// Tag 1: the mutations.
    Mutations,
    /// Tag 2: the read version and read conflict ranges.
    Reads,
    /// Tag 3: the write conflict ranges.
    Writes,
    /// Tag 4: the commit version.
    CommitVersion,
}

impl Section {
    const TAGGED: [Section; 4] = [
        Section::Mutations,
        Section::Reads,
        Section::Writes,
        Section::CommitVersion,
    ];

    fn tag(self) -> u8 {
        match self {
            Section::Header => 0,
            Section::Mutations => 1,
            Section::Reads => 2,
            Section::Writes => 3,
            Section::CommitVersion => 4,
        }
    }

    fn from_tag(tag: u8) -> Option<Section> {
        Section::TAGGED
            .get(usize::from(tag).checked_sub(1)?)
            .copied()
    }

    fn slot(self) -> usize {
        usize::from(self.tag()) - 1
    }
}

impl fmt::Display for Section {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Section::Header => "header",
            Section::Mutations => "mutations",
            Section::Reads => "reads",
            Section::Writes => "writes",
            Section::CommitVersion => "commit version",
        })
    }
}

/// Why a transaction could not be encoded or decoded.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum WireError {
    /// The encoding is, or would be, larger than [`TRANSACTION_BYTES_MAX`].
    #[error("transaction is {len} bytes, over the limit of {max}")]
    TransactionTooLarge {
        /// Its size in bytes.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// A key or range bound is over its limit.
    #[error("{section}: key {index} is {len} bytes, over the limit of {max}")]
    KeyTooLarge {
        /// Where the key is.
        section: Section,
        /// Which item of the section holds it.
        index: usize,
        /// Its size in bytes.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// A value is over [`VALUE_BYTES_MAX`].
    #[error("mutations: value {index} is {len} bytes, over the limit of {max}")]
    ValueTooLarge {
        /// Which mutation holds it.
        index: usize,
        /// Its size in bytes.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// An atomic operation with an empty operand: it would write an empty value whatever the
    /// key held, which is never what was meant.
    #[error("mutations: atomic operation {index} has an empty operand")]
    EmptyOperand {
        /// Which mutation holds it.
        index: usize,
    },
    /// An atomic operation's operand is over [`VALUE_BYTES_MAX`] (it sets the length of the
    /// value written).
    #[error("mutations: operand {index} is {len} bytes, over the limit of {max}")]
    OperandTooLarge {
        /// Which mutation holds it.
        index: usize,
        /// Its size in bytes.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// An atomic operation code this build does not know.
    #[error("mutations: mutation {index} has unknown atomic operation {code}")]
    UnknownAtomicOp {
        /// Which mutation.
        index: usize,
        /// The code found.
        code: u8,
    },
    /// A range whose begin is not below its end.
    #[error("{section}: range {index} is empty or inverted")]
    InvalidRange {
        /// Where the range is.
        section: Section,
        /// Which item of the section it is.
        index: usize,
    },
    /// The transaction has read conflicts but no read version.
    #[error("reads: read conflict ranges without a read version")]
    ReadsWithoutReadVersion,
    /// The input does not start with [`MAGIC`].
    #[error("bad magic {found:02x?}: not a Strata transaction")]
    BadMagic {
        /// The first bytes found.
        found: Vec<u8>,
    },
    /// The input was written by a format version this build cannot read.
    #[error("unsupported format version {found} (this build reads {supported})")]
    UnsupportedVersion {
        /// The version found.
        found: u16,
        /// The version this build reads.
        supported: u16,
    },
    /// The input is shorter than what it declares.
    #[error("truncated: {declared} bytes declared, {actual} present")]
    Truncated {
        /// The length the header (or the fixed header size) calls for.
        declared: usize,
        /// The length present.
        actual: usize,
    },
    /// The input is longer than its header declares.
    #[error("trailing bytes: {declared} bytes declared, {actual} present")]
    TrailingBytes {
        /// The length the header declares.
        declared: usize,
        /// The length present.
        actual: usize,
    },
    /// A section's CRC-32 does not match its bytes.
    #[error("bad CRC-32 in section {section}")]
    BadChecksum {
        /// The section whose bytes are damaged.
        section: Section,
    },
    /// A section tag this build does not know.
    #[error("unknown section tag {tag} at offset {offset}")]
    UnknownSection {
        /// The tag found.
        tag: u8,
        /// Where its section starts.
        offset: usize,
    },
    /// A section repeated or out of ascending tag order.
    #[error("section {section} at offset {offset} is repeated or out of order")]
    SectionOutOfOrder {
        /// The section found.
        section: Section,
        /// Where it starts.
        offset: usize,
    },
    /// A required section is absent.
    #[error("missing section {section}")]
    MissingSection {
        /// The section absent.
        section: Section,
    },
    /// The header's section count does not match the sections present.
    #[error("header declares {declared} sections, {found} present")]
    SectionCountMismatch {
        /// The count the header declares.
        declared: usize,
        /// The count found.
        found: usize,
    },
    /// A field runs past the end of its section (or a section past the end of the input).
    #[error("{section}: field at offset {offset} runs past the end")]
    Overrun {
        /// The section being read.
        section: Section,
        /// Offset of the field, from the start of the input.
        offset: usize,
    },
    /// A section has bytes left after its last item.
    #[error("{section}: {extra} unread bytes after the last item")]
    SectionTrailingBytes {
        /// The section.
        section: Section,
        /// How many bytes were left.
        extra: usize,
    },
    /// A mutation kind this build does not know.
    #[error("mutations: mutation {index} has unknown kind {kind}")]
    UnknownMutationKind {
        /// Which mutation.
        index: usize,
        /// The kind byte found.
        kind: u8,
    },
    /// The read-version flag is neither 0 nor 1.
    #[error("reads: read-version flag is {found}, expected 0 or 1")]
    BadReadVersionFlag {
        /// The flag found.
        found: u8,
    },
    /// A commit version was added to an encoding that already has one.
    #[error("the transaction already carries a commit version")]
    CommitVersionPresent,
}

type WireResult<T> = Result<T, WireError>;

impl Transaction {
    /// Encodes the transaction, checking every limit.
    ///
    /// ```
    /// use strata_core::{KeyRange, Mutation, Transaction, Version};
    /// let tx = Transaction {
    ///     read_version: Some(Version(7)),
    ///     read_conflicts: vec![KeyRange::single("a")],
    ///     write_conflicts: vec![KeyRange::single("b")],
    ///     mutations: vec![Mutation::Set { key: "b".into(), value: "1".into() }],
    /// };
    /// let bytes = tx.encode()?;
    /// assert_eq!(Transaction::decode(&bytes)?, tx);
    /// # Ok::<(), strata_core::WireError>(())
    /// ```
    pub fn encode(&self) -> WireResult<Bytes> {
        encode_parts(
            self.read_version,
            &self.read_conflicts,
            &self.write_conflicts,
            &self.mutations,
            None,
        )
    }

    /// The length of [`Transaction::encode`]'s bytes, with the same checks and errors, without
    /// encoding anything.
    pub fn encoded_len(&self) -> WireResult<usize> {
        encoded_len(
            self.read_version,
            &self.read_conflicts,
            &self.write_conflicts,
            &self.mutations,
            None,
        )
    }

    /// Decodes a transaction, copying `bytes` once; see [`Transaction::decode_bytes`] to avoid
    /// the copy.
    pub fn decode(bytes: &[u8]) -> WireResult<Transaction> {
        // Check the size before copying anything: a 1 GB input must not cost 1 GB.
        check_total_len(bytes.len())?;
        Transaction::decode_bytes(Bytes::copy_from_slice(bytes))
    }

    /// Decodes a transaction whose keys and values share `bytes` instead of being copied.
    pub fn decode_bytes(bytes: Bytes) -> WireResult<Transaction> {
        TransactionView::parse(bytes)?.to_transaction()
    }
}

/// Encodes the given parts as one transaction; the commit proxy uses it to write a batch's
/// mutations together with their commit version.
pub fn encode_parts(
    read_version: Option<Version>,
    read_conflicts: &[KeyRange],
    write_conflicts: &[KeyRange],
    mutations: &[Mutation],
    commit_version: Option<Version>,
) -> WireResult<Bytes> {
    // Size everything first, checking limits as we go, so the buffer is allocated exactly once
    // and an oversized transaction costs no allocation at all.
    let len = encoded_len(
        read_version,
        read_conflicts,
        write_conflicts,
        mutations,
        commit_version,
    )?;
    let mut out = Vec::with_capacity(len);
    out.extend_from_slice(&[0; HEADER_BYTES]);
    let mut count = 3;

    let start = begin_section(&mut out, Section::Mutations);
    put_u32(&mut out, mutations.len());
    for m in mutations {
        match m {
            Mutation::Set { key, value } => {
                out.push(KIND_SET);
                put_bytes(&mut out, key);
                put_bytes(&mut out, value);
            }
            Mutation::Clear { key } => {
                out.push(KIND_CLEAR);
                put_bytes(&mut out, key);
            }
            Mutation::ClearRange { range } => {
                out.push(KIND_CLEAR_RANGE);
                put_range(&mut out, range);
            }
            Mutation::Atomic { op, key, operand } => {
                out.extend_from_slice(&[KIND_ATOMIC, op.code()]);
                put_bytes(&mut out, key);
                put_bytes(&mut out, operand);
            }
        }
    }
    end_section(&mut out, start);

    let start = begin_section(&mut out, Section::Reads);
    match read_version {
        Some(v) => {
            out.push(1);
            out.extend_from_slice(&v.0.to_le_bytes());
        }
        None => out.push(0),
    }
    put_ranges(&mut out, read_conflicts);
    end_section(&mut out, start);

    let start = begin_section(&mut out, Section::Writes);
    put_ranges(&mut out, write_conflicts);
    end_section(&mut out, start);

    if let Some(v) = commit_version {
        let start = begin_section(&mut out, Section::CommitVersion);
        out.extend_from_slice(&v.0.to_le_bytes());
        end_section(&mut out, start);
        count += 1;
    }

    debug_assert_eq!(out.len(), len);
    write_header(&mut out, count);
    Ok(Bytes::from(out))
}

// Lengths passed here were checked against TRANSACTION_BYTES_MAX (< u32::MAX) by the sizing
// pass, so the conversions below cannot truncate.
#[expect(clippy::cast_possible_truncation)]
fn put_u32(out: &mut Vec<u8>, n: usize) {
    out.extend_from_slice(&(n as u32).to_le_bytes());
}

fn put_bytes(out: &mut Vec<u8>, bytes: &[u8]) {
    put_u32(out, bytes.len());
    out.extend_from_slice(bytes);
}

fn put_range(out: &mut Vec<u8>, range: &KeyRange) {
    put_bytes(out, range.begin());
    put_bytes(out, range.end());
}

fn put_ranges(out: &mut Vec<u8>, ranges: &[KeyRange]) {
    put_u32(out, ranges.len());
    for r in ranges {
        put_range(out, r);
    }
}

fn begin_section(out: &mut Vec<u8>, section: Section) -> usize {
    let start = out.len();
    out.push(section.tag());
    out.extend_from_slice(&[0; 8]);
    start
}

fn end_section(out: &mut [u8], start: usize) {
    let body_len = out.len() - start - SECTION_HEADER_BYTES;
    #[expect(clippy::cast_possible_truncation)] // NOTE: bounded by TRANSACTION_BYTES_MAX
    out[start + 1..start + 5].copy_from_slice(&(body_len as u32).to_le_bytes());
    let crc = section_crc(&out[start..start + 5], &out[start + SECTION_HEADER_BYTES..]);
    out[start + 5..start + 9].copy_from_slice(&crc.to_le_bytes());
}

fn section_crc(tag_and_len: &[u8], body: &[u8]) -> u32 {
    let mut h = crc32fast::Hasher::new();
    h.update(tag_and_len);
    h.update(body);
    h.finalize()
}

fn write_header(out: &mut [u8], section_count: u16) {
    let total = out.len();
    out[0..4].copy_from_slice(&MAGIC);
    out[4..6].copy_from_slice(&FORMAT_VERSION.to_le_bytes());
    out[6..8].copy_from_slice(&section_count.to_le_bytes());
    #[expect(clippy::cast_possible_truncation)] // NOTE: bounded by TRANSACTION_BYTES_MAX
    out[8..12].copy_from_slice(&(total as u32).to_le_bytes());
    let crc = crc32fast::hash(&out[0..12]);
    out[12..16].copy_from_slice(&crc.to_le_bytes());
}

/// An encoded transaction whose header and section table were checked, read one section at a
/// time. Each accessor checks its section's CRC-32 and decodes only that section; keys and
/// values are slices of the shared buffer, not copies.
///
/// ```
/// use strata_core::{KeyRange, Mutation, Transaction, TransactionView, Version};
/// let tx = Transaction {
///     read_version: Some(Version(3)),
///     read_conflicts: vec![KeyRange::single("x")],
///     write_conflicts: vec![KeyRange::single("y")],
///     mutations: vec![Mutation::Clear { key: "y".into() }],
/// };
/// let view = TransactionView::parse(tx.encode()?)?;
/// // A resolver: conflicts only, the mutations section is neither checked nor decoded.
/// assert_eq!(view.conflicts()?, tx.conflicts());
/// // A commit proxy stamps the commit version without re-encoding the rest.
/// let stamped = TransactionView::parse(view.with_commit_version(Version(9))?)?;
/// assert_eq!(stamped.commit_version()?, Some(Version(9)));
/// assert_eq!(stamped.mutations()?, tx.mutations);
/// # Ok::<(), strata_core::WireError>(())
/// ```
#[derive(Clone, Debug)]
pub struct TransactionView {
    bytes: Bytes,
    /// Offsets of each tagged section (its header included), by tag order.
    sections: [Option<Range<usize>>; 4],
}

impl TransactionView {
    /// Checks the header and the section table of `bytes`, not the sections' contents.
    pub fn parse(bytes: Bytes) -> WireResult<TransactionView> {
        let actual = bytes.len();
        check_total_len(actual)?;
        if actual < HEADER_BYTES {
            // Say "bad magic" for input that is not ours at all, even when it is short.
            let n = actual.min(MAGIC.len());
            if bytes[..n] != MAGIC[..n] {
                return Err(WireError::BadMagic {
                    found: bytes[..n].to_vec(),
                });
            }
            return Err(WireError::Truncated {
                declared: HEADER_BYTES,
                actual,
            });
        }
        let h = &bytes[..HEADER_BYTES];
        if h[0..4] != MAGIC {
            return Err(WireError::BadMagic {
                found: h[0..4].to_vec(),
            });
        }
        if crc32fast::hash(&h[0..12]) != le_u32(&h[12..16]) {
            return Err(WireError::BadChecksum {
                section: Section::Header,
            });
        }
        let version = u16::from_le_bytes([h[4], h[5]]);
        if version != FORMAT_VERSION {
            return Err(WireError::UnsupportedVersion {
                found: version,
                supported: FORMAT_VERSION,
            });
        }
        let declared_count = usize::from(u16::from_le_bytes([h[6], h[7]]));
        let declared = to_usize(le_u32(&h[8..12]));
        if declared > actual {
            return Err(WireError::Truncated { declared, actual });
        }
        if declared < actual {
            return Err(WireError::TrailingBytes { declared, actual });
        }

        let mut sections: [Option<Range<usize>>; 4] = Default::default();
        let mut last_tag = 0;
        let mut found = 0;
        let mut at = HEADER_BYTES;
        while at < actual {
            if actual - at < SECTION_HEADER_BYTES {
                return Err(WireError::Overrun {
                    section: Section::Header,
                    offset: at,
                });
            }
            let tag = bytes[at];
            let section =
                Section::from_tag(tag).ok_or(WireError::UnknownSection { tag, offset: at })?;
            if tag <= last_tag {
                return Err(WireError::SectionOutOfOrder {
                    section,
                    offset: at,
                });
            }
            let body_len = to_usize(le_u32(&bytes[at + 1..at + 5]));
            let end = (at + SECTION_HEADER_BYTES)
                .checked_add(body_len)
                .filter(|&end| end <= actual)
                .ok_or(WireError::Overrun {
                    section,
                    offset: at,
                })?;
            sections[section.slot()] = Some(at..end);
            last_tag = tag;
            found += 1;
            at = end;
        }
        if found != declared_count {
            return Err(WireError::SectionCountMismatch {
                declared: declared_count,
                found,
            });
        }
        for section in [Section::Mutations, Section::Reads, Section::Writes] {
            if sections[section.slot()].is_none() {
                return Err(WireError::MissingSection { section });
            }
        }
        Ok(TransactionView { bytes, sections })
    }

    /// The whole encoding.
    pub fn as_bytes(&self) -> &Bytes {
        &self.bytes
    }

    /// The body of `section` after checking its CRC, as a reader positioned at its start.
    fn section(&self, section: Section) -> WireResult<Option<Reader<'_>>> {
        let Some(range) = self.sections[section.slot()].clone() else {
            return Ok(None);
        };
        let raw = &self.bytes[range.clone()];
        let body = &raw[SECTION_HEADER_BYTES..];
        if section_crc(&raw[..5], body) != le_u32(&raw[5..9]) {
            return Err(WireError::BadChecksum { section });
        }
        Ok(Some(Reader {
            bytes: &self.bytes,
            at: range.start + SECTION_HEADER_BYTES,
            end: range.end,
            section,
        }))
    }

    fn required(&self, section: Section) -> WireResult<Reader<'_>> {
        self.section(section)?
            .ok_or(WireError::MissingSection { section })
    }

    /// The mutations, in order.
    pub fn mutations(&self) -> WireResult<Vec<Mutation>> {
        let mut r = self.required(Section::Mutations)?;
        // The smallest mutation (a Clear of the empty key) takes 5 bytes.
        let count = r.count(5)?;
        let mut out = Vec::with_capacity(count);
        for index in 0..count {
            let kind = r.u8()?;
            out.push(match kind {
                KIND_SET => {
                    let key = r.bytes_max(index, KEY_BYTES_MAX)?;
                    let value = r.bytes()?;
                    if value.len() > VALUE_BYTES_MAX {
                        return Err(WireError::ValueTooLarge {
                            index,
                            len: value.len(),
                            max: VALUE_BYTES_MAX,
                        });
                    }
                    Mutation::Set { key, value }
                }
                KIND_CLEAR => Mutation::Clear {
                    key: r.bytes_max(index, KEY_BYTES_MAX)?,
                },
                KIND_CLEAR_RANGE => Mutation::ClearRange {
                    range: r.range(index)?,
                },
                KIND_ATOMIC => {
                    let code = r.u8()?;
                    let op = AtomicOp::from_code(code)
                        .ok_or(WireError::UnknownAtomicOp { index, code })?;
                    let key = r.bytes_max(index, KEY_BYTES_MAX)?;
                    let operand = r.bytes()?;
                    check_operand(index, operand.len())?;
                    Mutation::Atomic { op, key, operand }
                }
                kind => return Err(WireError::UnknownMutationKind { index, kind }),
            });
        }
        r.finish()?;
        Ok(out)
    }

    /// The read version and the read conflict ranges.
    pub fn reads(&self) -> WireResult<(Option<Version>, Vec<KeyRange>)> {
        let mut r = self.required(Section::Reads)?;
        let read_version = match r.u8()? {
            0 => None,
            1 => Some(Version(r.u64()?)),
            found => return Err(WireError::BadReadVersionFlag { found }),
        };
        let ranges = r.ranges()?;
        r.finish()?;
        if read_version.is_none() && !ranges.is_empty() {
            return Err(WireError::ReadsWithoutReadVersion);
        }
        Ok((read_version, ranges))
    }

    /// The write conflict ranges.
    pub fn write_conflicts(&self) -> WireResult<Vec<KeyRange>> {
        let mut r = self.required(Section::Writes)?;
        let ranges = r.ranges()?;
        r.finish()?;
        Ok(ranges)
    }

    /// What a resolver needs: read version, read and write conflicts; the mutations are not
    /// checked or decoded.
    pub fn conflicts(&self) -> WireResult<TransactionConflicts> {
        let (read_version, read_conflicts) = self.reads()?;
        Ok(TransactionConflicts {
            read_version,
            read_conflicts,
            write_conflicts: self.write_conflicts()?,
        })
    }

    /// The commit version, once a commit proxy added it.
    pub fn commit_version(&self) -> WireResult<Option<Version>> {
        let Some(mut r) = self.section(Section::CommitVersion)? else {
            return Ok(None);
        };
        let v = Version(r.u64()?);
        r.finish()?;
        Ok(Some(v))
    }

    /// Every section, checked and decoded.
    pub fn to_transaction(&self) -> WireResult<Transaction> {
        let TransactionConflicts {
            read_version,
            read_conflicts,
            write_conflicts,
        } = self.conflicts()?;
        let mutations = self.mutations()?;
        // A commit version is not part of a Transaction, but a damaged one must not pass.
        self.commit_version()?;
        Ok(Transaction {
            read_version,
            read_conflicts,
            write_conflicts,
            mutations,
        })
    }

    /// The same encoding with a commit version section appended: the other sections are copied
    /// as they are, not re-encoded, and the header is rewritten.
    pub fn with_commit_version(&self, version: Version) -> WireResult<Bytes> {
        if self.sections[Section::CommitVersion.slot()].is_some() {
            return Err(WireError::CommitVersionPresent);
        }
        let len = self.bytes.len() + SECTION_HEADER_BYTES + 8;
        check_total_len(len)?;
        let mut out = Vec::with_capacity(len);
        out.extend_from_slice(&self.bytes);
        let start = begin_section(&mut out, Section::CommitVersion);
        out.extend_from_slice(&version.0.to_le_bytes());
        end_section(&mut out, start);
        let count = self.sections.iter().flatten().count() + 1;
        #[expect(clippy::cast_possible_truncation)] // NOTE: at most 4 sections
        write_header(&mut out, count as u16);
        Ok(Bytes::from(out))
    }
}

/// A cursor over one section's body. Every read checks the bytes that remain first.
struct Reader<'a> {
    bytes: &'a Bytes,
    at: usize,
    end: usize,
    section: Section,
}

impl Reader<'_> {
    fn take(&mut self, n: usize) -> WireResult<Range<usize>> {
        if self.end - self.at < n {
            return Err(WireError::Overrun {
                section: self.section,
                offset: self.at,
            });
        }
        let r = self.at..self.at + n;
        self.at += n;
        Ok(r)
    }

    fn u8(&mut self) -> WireResult<u8> {
        let r = self.take(1)?;
        Ok(self.bytes[r.start])
    }

    fn u32(&mut self) -> WireResult<u32> {
        let r = self.take(4)?;
        Ok(le_u32(&self.bytes[r]))
    }

    fn u64(&mut self) -> WireResult<u64> {
        let r = self.take(8)?;
        let mut b = [0; 8];
        b.copy_from_slice(&self.bytes[r]);
        Ok(u64::from_le_bytes(b))
    }

    /// A count of items of at least `item_bytes_min` bytes each, bounded by what remains so
    /// that a forged count cannot reserve more memory than the input could fill.
    fn count(&mut self, item_bytes_min: usize) -> WireResult<usize> {
        let offset = self.at;
        let count = to_usize(self.u32()?);
        if count > (self.end - self.at) / item_bytes_min {
            return Err(WireError::Overrun {
                section: self.section,
                offset,
            });
        }
        Ok(count)
    }

    fn bytes(&mut self) -> WireResult<Bytes> {
        let len = to_usize(self.u32()?);
        let r = self.take(len)?;
        Ok(self.bytes.slice(r))
    }

    fn bytes_max(&mut self, index: usize, max: usize) -> WireResult<Key> {
        let b = self.bytes()?;
        check_key(self.section, index, b.len(), max)?;
        Ok(b)
    }

    fn range(&mut self, index: usize) -> WireResult<KeyRange> {
        let begin = self.bytes_max(index, KEY_BYTES_MAX)?;
        let end = self.bytes_max(index, RANGE_END_BYTES_MAX)?;
        if begin >= end {
            return Err(WireError::InvalidRange {
                section: self.section,
                index,
            });
        }
        Ok(KeyRange::from_ordered(begin, end))
    }

    fn ranges(&mut self) -> WireResult<Vec<KeyRange>> {
        // The smallest range (empty begin, one-byte end) takes 9 bytes.
        let count = self.count(9)?;
        let mut out = Vec::with_capacity(count);
        for index in 0..count {
            out.push(self.range(index)?);
        }
        Ok(out)
    }

    fn finish(&self) -> WireResult<()> {
        if self.at != self.end {
            return Err(WireError::SectionTrailingBytes {
                section: self.section,
                extra: self.end - self.at,
            });
        }
        Ok(())
    }
}

fn le_u32(b: &[u8]) -> u32 {
    let mut a = [0; 4];
    a.copy_from_slice(&b[..4]);
    u32::from_le_bytes(a)
}

fn to_usize(n: u32) -> usize {
    // Strata targets 32- and 64-bit platforms, where u32 always fits in usize.
    usize::try_from(n).unwrap_or(usize::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Transaction {
        Transaction {
            read_version: Some(Version(42)),
            read_conflicts: vec![KeyRange::new("a", "c").unwrap(), KeyRange::single("")],
            write_conflicts: vec![KeyRange::single("b")],
            mutations: vec![
                Mutation::Set {
                    key: "b".into(),
                    value: "v".into(),
                },
                Mutation::Clear { key: "".into() },
                Mutation::ClearRange {
                    range: KeyRange::new("x", "y").unwrap(),
                },
            ],
        }
    }

    /// Recomputes the CRCs of a hand-edited encoding so that a test reaches the check behind
    /// them.
    fn reseal(bytes: &mut [u8]) {
        let mut at = HEADER_BYTES;
        while at + SECTION_HEADER_BYTES <= bytes.len() {
            let len = le_u32(&bytes[at + 1..at + 5]) as usize;
            let end = (at + SECTION_HEADER_BYTES + len).min(bytes.len());
            let crc = section_crc(&bytes[at..at + 5], &bytes[at + SECTION_HEADER_BYTES..end]);
            bytes[at + 5..at + 9].copy_from_slice(&crc.to_le_bytes());
            at = end;
        }
        let crc = crc32fast::hash(&bytes[0..12]);
        bytes[12..16].copy_from_slice(&crc.to_le_bytes());
    }

    #[test]
    fn header_fields_are_where_the_table_says() {
        let bytes = sample().encode().unwrap();
        assert_eq!(&bytes[0..4], b"STXN");
        assert_eq!(u16::from_le_bytes([bytes[4], bytes[5]]), FORMAT_VERSION);
        assert_eq!(u16::from_le_bytes([bytes[6], bytes[7]]), 3);
        assert_eq!(le_u32(&bytes[8..12]) as usize, bytes.len());
        assert_eq!(bytes[HEADER_BYTES], 1, "first section is the mutations");
    }

    #[test]
    fn blind_write_has_no_read_version() {
        let tx = Transaction {
            mutations: vec![Mutation::Set {
                key: "k".into(),
                value: "v".into(),
            }],
            ..Transaction::default()
        };
        assert_eq!(Transaction::decode(&tx.encode().unwrap()).unwrap(), tx);
    }

    #[test]
    fn reads_need_a_read_version() {
        let tx = Transaction {
            read_conflicts: vec![KeyRange::single("a")],
            ..Transaction::default()
        };
        assert_eq!(tx.encode(), Err(WireError::ReadsWithoutReadVersion));
    }

    #[test]
    fn conflicts_do_not_need_valid_mutations() {
        let mut bytes = sample().encode().unwrap().to_vec();
        // Damage the mutations body; the reads and writes stay readable.
        bytes[HEADER_BYTES + SECTION_HEADER_BYTES + 5] ^= 0x55;
        let view = TransactionView::parse(Bytes::from(bytes)).unwrap();
        assert_eq!(view.conflicts().unwrap(), sample().conflicts());
        assert_eq!(
            view.mutations(),
            Err(WireError::BadChecksum {
                section: Section::Mutations
            })
        );
    }

    #[test]
    fn commit_version_is_appended_once() {
        let view = TransactionView::parse(sample().encode().unwrap()).unwrap();
        assert_eq!(view.commit_version().unwrap(), None);
        let stamped = TransactionView::parse(view.with_commit_version(Version(99)).unwrap());
        let stamped = stamped.unwrap();
        assert_eq!(stamped.commit_version().unwrap(), Some(Version(99)));
        assert_eq!(stamped.to_transaction().unwrap(), sample());
        assert_eq!(
            stamped.with_commit_version(Version(100)),
            Err(WireError::CommitVersionPresent)
        );
        // The same bytes come from encoding with the commit version directly.
        let t = sample();
        let direct = encode_parts(
            t.read_version,
            &t.read_conflicts,
            &t.write_conflicts,
            &t.mutations,
            Some(Version(99)),
        )
        .unwrap();
        assert_eq!(stamped.as_bytes(), &direct);
    }

    #[test]
    fn unknown_version_and_magic_are_named() {
        let mut bytes = sample().encode().unwrap().to_vec();
        bytes[4] = 9;
        reseal(&mut bytes);
        assert_eq!(
            Transaction::decode(&bytes),
            Err(WireError::UnsupportedVersion {
                found: 9,
                supported: FORMAT_VERSION
            })
        );
        assert!(matches!(
            Transaction::decode(b"GET / HTTP/1.1\r\n"),
            Err(WireError::BadMagic { .. })
        ));
        assert!(matches!(
            Transaction::decode(b"ST"),
            Err(WireError::Truncated { .. })
        ));
        assert!(matches!(
            Transaction::decode(b""),
            Err(WireError::Truncated { .. })
        ));
    }

    #[test]
    fn section_order_and_presence_are_checked() {
        let bytes = sample().encode().unwrap().to_vec();
        // Swap the tags of the first two sections.
        let mut swapped = bytes.clone();
        swapped[HEADER_BYTES] = 2;
        reseal(&mut swapped);
        assert!(matches!(
            Transaction::decode(&swapped),
            Err(WireError::SectionOutOfOrder {
                section: Section::Reads,
                ..
            })
        ));
        let mut unknown = bytes.clone();
        unknown[HEADER_BYTES] = 7;
        reseal(&mut unknown);
        assert_eq!(
            Transaction::decode(&unknown),
            Err(WireError::UnknownSection {
                tag: 7,
                offset: HEADER_BYTES
            })
        );
        // Drop the last (writes) section and fix the header: the section is reported missing.
        let writes_len = SECTION_HEADER_BYTES + 4 + 8 + 1 + 2;
        let mut short = bytes[..bytes.len() - writes_len].to_vec();
        let total = short.len() as u32;
        short[6..8].copy_from_slice(&2u16.to_le_bytes());
        short[8..12].copy_from_slice(&total.to_le_bytes());
        reseal(&mut short);
        assert_eq!(
            Transaction::decode(&short),
            Err(WireError::MissingSection {
                section: Section::Writes
            })
        );
    }

    #[test]
    fn forged_count_reserves_nothing() {
        let tx = Transaction::default();
        let mut bytes = tx.encode().unwrap().to_vec();
        // Mutation count of u32::MAX in a 4-byte body.
        let at = HEADER_BYTES + SECTION_HEADER_BYTES;
        bytes[at..at + 4].copy_from_slice(&u32::MAX.to_le_bytes());
        reseal(&mut bytes);
        assert_eq!(
            Transaction::decode(&bytes),
            Err(WireError::Overrun {
                section: Section::Mutations,
                offset: at
            })
        );
    }

    #[test]
    fn inverted_range_in_input_is_refused() {
        let tx = Transaction {
            write_conflicts: vec![KeyRange::new("a", "b").unwrap()],
            ..Transaction::default()
        };
        let mut bytes = tx.encode().unwrap().to_vec();
        // The writes section is last: its body ends with len(1) "a" len(1) "b"; make end "a".
        let n = bytes.len();
        bytes[n - 1] = b'a';
        reseal(&mut bytes);
        assert_eq!(
            Transaction::decode(&bytes),
            Err(WireError::InvalidRange {
                section: Section::Writes,
                index: 0
            })
        );
    }
}
