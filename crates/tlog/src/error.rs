//! The log's errors, all of [`Stage::Log`], and the rule that tells them apart: an I/O error is
//! returned as such ([`io_error`]), never taken for damage; only bytes read that fail a check
//! (magic, CRC, length, chain) are [`corruption`].

use std::path::Path;

use strata_core::{Error, ErrorKind, Stage};

/// An error of the log.
pub(crate) fn error(kind: ErrorKind) -> Error {
    Error::new(Stage::Log, kind)
}

/// An I/O error of the log, as the file system returned it.
pub(crate) fn io_error(e: std::io::Error) -> Error {
    Error::io(Stage::Log, e)
}

/// Stored bytes at `offset` of `path` that fail a check, and `why`.
pub(crate) fn corruption(path: &Path, offset: u64, why: &str) -> Error {
    error(ErrorKind::Corruption(format!(
        "{} at offset {offset}: {why}",
        path.display()
    )))
}

/// A log directory that should hold a log and does not (`what` says how).
pub(crate) fn missing_log(dir: &Path, what: &str) -> Error {
    error(ErrorKind::Corruption(format!(
        "log directory {} {what}: the log it held is lost",
        dir.display()
    )))
}
