//! The sizing pass of the encoder: every limit of the wire format checked, and the encoded
//! length computed, before anything is allocated. The decoder checks the same limits with the
//! same functions.

use crate::atomic::check_operand;
use crate::types::{
    KEY_BYTES_MAX, KeyRange, Mutation, RANGE_END_BYTES_MAX, TRANSACTION_BYTES_MAX, VALUE_BYTES_MAX,
    Version,
};

use super::{HEADER_BYTES, SECTION_HEADER_BYTES, Section, WireError, WireResult};

/// The length [`super::encode_parts`] would encode the given parts to, with every check it makes
/// (the same errors, in the same order), and nothing allocated: a commit proxy that is handed a
/// transaction in its own process measures and checks it so instead of parsing its encoding.
pub fn encoded_len(
    read_version: Option<Version>,
    read_conflicts: &[KeyRange],
    write_conflicts: &[KeyRange],
    mutations: &[Mutation],
    commit_version: Option<Version>,
) -> WireResult<usize> {
    if read_version.is_none() && !read_conflicts.is_empty() {
        return Err(WireError::ReadsWithoutReadVersion);
    }
    let mut len = HEADER_BYTES + 3 * SECTION_HEADER_BYTES;
    len += 4 + mutations_len(mutations)?;
    len += 1 + if read_version.is_some() { 8 } else { 0 };
    len += 4 + ranges_len(Section::Reads, read_conflicts)?;
    len += 4 + ranges_len(Section::Writes, write_conflicts)?;
    if commit_version.is_some() {
        len += SECTION_HEADER_BYTES + 8;
    }
    check_total_len(len)?;
    Ok(len)
}

pub(super) fn check_total_len(len: usize) -> WireResult<()> {
    if len > TRANSACTION_BYTES_MAX {
        return Err(WireError::TransactionTooLarge {
            len,
            max: TRANSACTION_BYTES_MAX,
        });
    }
    Ok(())
}

pub(super) fn check_key(section: Section, index: usize, len: usize, max: usize) -> WireResult<()> {
    if len > max {
        return Err(WireError::KeyTooLarge {
            section,
            index,
            len,
            max,
        });
    }
    Ok(())
}

fn check_range(section: Section, index: usize, begin: &[u8], end: &[u8]) -> WireResult<()> {
    check_key(section, index, begin.len(), KEY_BYTES_MAX)?;
    check_key(section, index, end.len(), RANGE_END_BYTES_MAX)
}

fn mutations_len(mutations: &[Mutation]) -> WireResult<usize> {
    let mut len = 0;
    for (index, m) in mutations.iter().enumerate() {
        len += 1 + match m {
            Mutation::Set { key, value } => {
                check_key(Section::Mutations, index, key.len(), KEY_BYTES_MAX)?;
                if value.len() > VALUE_BYTES_MAX {
                    return Err(WireError::ValueTooLarge {
                        index,
                        len: value.len(),
                        max: VALUE_BYTES_MAX,
                    });
                }
                8 + key.len() + value.len()
            }
            Mutation::Clear { key } => {
                check_key(Section::Mutations, index, key.len(), KEY_BYTES_MAX)?;
                4 + key.len()
            }
            Mutation::ClearRange { range } => {
                check_range(Section::Mutations, index, range.begin(), range.end())?;
                8 + range.begin().len() + range.end().len()
            }
            Mutation::Atomic { key, operand, .. } => {
                check_key(Section::Mutations, index, key.len(), KEY_BYTES_MAX)?;
                check_operand(index, operand.len())?;
                9 + key.len() + operand.len()
            }
        };
        // Stop summing as soon as the limit is passed, so a huge list fails fast.
        check_total_len(len)?;
    }
    Ok(len)
}

fn ranges_len(section: Section, ranges: &[KeyRange]) -> WireResult<usize> {
    let mut len = 0;
    for (index, r) in ranges.iter().enumerate() {
        check_range(section, index, r.begin(), r.end())?;
        len += 8 + r.begin().len() + r.end().len();
        check_total_len(len)?;
    }
    Ok(len)
}
