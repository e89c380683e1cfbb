//! The crate's errors about its file, and the guard every redb call runs under: redb's errors
//! mapped to `Corruption`, `Io` or `Unavailable` by one rule, and a panic inside redb caught
//! and reported as `Corruption`, naming the file either way.

use std::path::Path;

use strata_core::{Error, ErrorKind, Result, Stage};

/// An error of the storage stage.
pub(crate) fn error(kind: ErrorKind) -> Error {
    Error::new(Stage::Storage, kind)
}

/// `Corruption` of the file at `path`, found while `doing` something.
pub(crate) fn corruption(path: &Path, doing: &str, why: impl std::fmt::Display) -> Error {
    error(ErrorKind::Corruption(format!(
        "{}: {doing}: {why}",
        path.display()
    )))
}

/// An I/O error on the file at `path`, of the same kind, naming the file.
pub(crate) fn io_error(path: &Path, doing: &str, e: &std::io::Error) -> Error {
    Error::io(
        Stage::Storage,
        std::io::Error::new(e.kind(), format!("{}: {doing}: {e}", path.display())),
    )
}

/// Turns a redb error met on the file at `path` while `doing` something into the crate's
/// error, naming the file. The rule: damage is `Corruption`, a failed read or write of the
/// device is `Io`, never the one for the other.
///
/// Besides `Corrupted`, redb reports some damage in other guises, which are damage here because
/// this crate wrote the file itself, with this redb and always the same tables:
/// - an I/O error of kind `InvalidData`: redb's "not a redb database" (bad magic number, or an
///   empty file, which `create_if_missing` never leaves). The OS never reports that kind.
/// - an I/O error of kind `UnexpectedEof`: a read past the end of the file, which the file's
///   own header or pages asked for. Reading with `pread` never fails so otherwise.
/// - an old file format (the version byte is damaged), or a table whose type or kind differs
///   from the one it was created with.
pub(crate) fn db_error<E: Into<redb::Error>>(path: &Path, doing: &str) -> impl FnOnce(E) -> Error {
    move |e| match e.into() {
        redb::Error::Io(io)
            if matches!(
                io.kind(),
                std::io::ErrorKind::InvalidData | std::io::ErrorKind::UnexpectedEof
            ) =>
        {
            corruption(path, doing, io)
        }
        redb::Error::Io(io) => io_error(path, doing, &io),
        // Any failed read, write or sync of the file latches this in redb: an I/O error.
        redb::Error::PreviousIo => io_error(
            path,
            doing,
            &std::io::Error::other("redb refuses the file after an earlier I/O error"),
        ),
        redb::Error::Corrupted(why) => corruption(path, doing, why),
        e @ (redb::Error::UpgradeRequired(_)
        | redb::Error::TableTypeMismatch { .. }
        | redb::Error::TypeDefinitionChanged { .. }
        | redb::Error::TableIsMultimap(_)
        | redb::Error::TableIsNotMultimap(_)) => corruption(path, doing, e),
        other => error(ErrorKind::Unavailable(format!(
            "{}: {doing}: redb: {other}",
            path.display()
        ))),
    }
}

/// Runs `work`, redb work on the file at `path`, so that a panic inside it cannot escape the
/// crate: redb trusts what it reads from the file, and some damage (a zeroed page, a wrong
/// page type byte) makes it panic ("entered unreachable code") instead of returning an error.
/// A panic caught here is `Corruption` naming the file.
///
/// `AssertUnwindSafe` is sound here because everything `work` owns is dropped by the unwind,
/// and whatever it shares (the database handle) is not used again for reads or writes once the
/// caller records the damage (see `State::damaged`): a server that met corruption only drops it.
pub(crate) fn guarded<T>(path: &Path, doing: &str, work: impl FnOnce() -> Result<T>) -> Result<T> {
    match std::panic::catch_unwind(std::panic::AssertUnwindSafe(work)) {
        Ok(result) => result,
        Err(panic) => {
            let message = panic
                .downcast_ref::<&str>()
                .map(|s| (*s).to_owned())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "no message".to_owned());
            tracing::error!(
                path = %path.display(),
                doing,
                panic = %message,
                "redb panicked on a damaged file"
            );
            Err(corruption(
                path,
                doing,
                format!("redb panicked ({message}); the file is damaged"),
            ))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// redb answers every call after a failed read, write or sync with `PreviousIo`: an I/O
    /// error, so that a flush meeting it stops the server (a server whose read failed would
    /// otherwise retry its flushes for ever while monitoring saw nothing wrong).
    #[test]
    fn redb_errors_map_to_damage_or_io_never_the_other() {
        let path = Path::new("/data/storage/0.redb");
        let map = |e: redb::Error| db_error(path, "flushing")(e);
        let previous = map(redb::Error::PreviousIo);
        assert!(matches!(previous.kind, ErrorKind::Io(_)), "{previous}");
        assert!(previous.to_string().contains("0.redb"), "{previous}");
        let io = map(redb::Error::Io(std::io::Error::other("EIO")));
        assert!(matches!(io.kind, ErrorKind::Io(_)), "{io}");
        let bad = map(redb::Error::Io(std::io::ErrorKind::InvalidData.into()));
        assert!(matches!(bad.kind, ErrorKind::Corruption(_)), "{bad}");
    }
}
