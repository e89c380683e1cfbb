//! Helpers shared by the log's integration tests.

use std::path::Path;

use strata_core::ErrorKind;
use strata_tlog::FileLog;

/// Asserts that opening a damaged log failed with `Corruption` naming `segment` and the
/// offset `record` of the damaged record; `context` says which damage, for the failure message.
pub(crate) fn assert_corruption_at(
    opened: strata_core::Result<FileLog>,
    segment: &Path,
    record: usize,
    context: &str,
) {
    let err = match opened {
        Ok(_) => panic!("{context}: the damaged log opened"),
        Err(err) => err,
    };
    let ErrorKind::Corruption(why) = &err.kind else {
        panic!("{context}: {err}");
    };
    assert!(
        why.contains(&segment.display().to_string()),
        "{context}: {why}"
    );
    assert!(
        why.contains(&format!("offset {record}")),
        "{context}: {why}"
    );
}
