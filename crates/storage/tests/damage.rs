//! Damaged storage files: a file with a page zeroed, overwritten or with bits flipped must never
//! make the crate panic. Opening or reading it either works and returns exactly what was
//! written (the damage hit unused space) or fails with `Corruption` naming the file. A real I/O
//! error stays an I/O error.

// Test helpers may unwrap: a panic there is a failed test.
#![allow(clippy::unwrap_used)]

use std::path::Path;
use std::sync::Arc;

use strata_core::{ErrorKind, KeyRange, LogId, Version};
use strata_storage::{RedbStorage, StorageConfig, durable_version_at};
use strata_tlog::MemoryLog;

fn everything() -> KeyRange {
    KeyRange::new("", "\u{7f}").unwrap()
}

async fn open(path: &Path) -> strata_core::Result<RedbStorage> {
    let log = Arc::new(MemoryLog::new(LogId(1), Version(0)));
    RedbStorage::open(path, vec![everything()], log, StorageConfig::default()).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_real_io_error_is_reported_as_io_not_corruption() {
    let dir = tempfile::tempdir().unwrap();
    // A directory where the file should be: opening it fails with an I/O error (EISDIR) even
    // as root, and nothing is damaged.
    let directory = dir.path().join("storage.redb");
    std::fs::create_dir(&directory).unwrap();
    // A path below a regular file: every look at it fails with ENOTDIR, also as root.
    let blocker = dir.path().join("blocker");
    std::fs::write(&blocker, b"not a directory").unwrap();
    let below_a_file = blocker.join("storage.redb");

    for path in [&directory, &below_a_file] {
        let shown = path.display().to_string();
        let err = durable_version_at(path).unwrap_err();
        assert!(matches!(err.kind, ErrorKind::Io(_)), "{shown}: {err}");
        assert!(err.to_string().contains(&shown), "{shown}: {err}");
        let err = open(path).await.unwrap_err();
        assert!(matches!(err.kind, ErrorKind::Io(_)), "{shown}: {err}");
        assert!(err.to_string().contains(&shown), "{shown}: {err}");
    }
}
