//! Conversions between strata-core's types and their messages.

use strata_core::{ErrorKind, KeyRange, RANGE_END_BYTES_MAX, Stage};
use tonic::Status;

use crate::proto;
use crate::server::refuse;

pub(crate) fn range_to_wire(range: &KeyRange) -> proto::KeyRange {
    proto::KeyRange {
        begin: range.begin().clone(),
        end: range.end().clone(),
    }
}

/// A range from the wire, refused (`InvalidRequest` of `stage`) when it is not one: empty or
/// reversed, or with a bound over the key size limit.
pub(crate) fn range_from_wire(
    stage: Stage,
    range: proto::KeyRange,
) -> std::result::Result<KeyRange, Status> {
    let longest = range.begin.len().max(range.end.len());
    if longest > RANGE_END_BYTES_MAX {
        return Err(refuse(
            stage,
            ErrorKind::InvalidRequest(format!(
                "a key range bound of {longest} bytes, over the limit of {RANGE_END_BYTES_MAX}"
            )),
        ));
    }
    KeyRange::new(range.begin, range.end).map_err(|e| {
        refuse(
            stage,
            ErrorKind::InvalidRequest(format!("not a key range: {e}")),
        )
    })
}
