//! `OpenMode::ReadOnly`: a log opened to be read changes nothing in its directory, whatever a
//! crash left there (a torn write at the end, a spare segment being prepared, a segment not yet
//! renamed, a manifest not yet renamed), reads the same valid prefix an ordinary open keeps,
//! and refuses every change. Tools that look at a cluster at rest (`strata get`, `status`)
//! open logs this way.

// Test helpers may unwrap: a panic there is a failed test.
#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use bytes::Bytes;
use strata_core::{Epoch, ErrorKind, LogId, LogServer, Version};
use strata_tlog::fs::RealFs;
use strata_tlog::{FileLog, FileLogConfig, OpenMode};

const PAYLOAD: usize = 40;
/// A segment's header, and a record's (the record's payload follows it directly).
const SEGMENT_HEADER: u64 = 32;
const RECORD_HEADER: u64 = 24;

fn files(dir: &Path) -> BTreeMap<PathBuf, Vec<u8>> {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .map(|p| {
            let bytes = std::fs::read(&p).unwrap();
            (p, bytes)
        })
        .collect()
}

fn open(dir: &Path, mode: OpenMode) -> strata_core::Result<FileLog> {
    FileLog::open_dir(
        Arc::new(RealFs),
        dir,
        LogId(1),
        mode,
        FileLogConfig::default(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_read_only_open_leaves_a_crashed_directory_as_it_was() {
    let root = tempfile::tempdir().unwrap();
    let dir = root.path().join("log");
    let log = FileLog::open(&dir, LogId(1), Version(0), FileLogConfig::default()).unwrap();
    for v in 1..=20u64 {
        log.push(
            Epoch(1),
            Version(v - 1),
            Version(v),
            Bytes::from(vec![7u8; PAYLOAD]),
        )
        .await
        .unwrap();
    }
    log.close();
    // What a crash can leave: a record torn half way after the last one, and the temporary
    // files of a spare segment, a new segment and a manifest being written.
    let segment = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.extension().is_some_and(|x| x == "seg"))
        .unwrap();
    let data_end = SEGMENT_HEADER + 20 * (RECORD_HEADER + PAYLOAD as u64);
    let file = std::fs::OpenOptions::new()
        .write(true)
        .open(&segment)
        .unwrap();
    // A record header naming a payload of the usual size, then garbage where its checksums
    // and payload should be: the write stopped part way.
    let mut torn = (PAYLOAD as u32).to_le_bytes().to_vec();
    torn.extend_from_slice(&[0xab; 26]);
    std::os::unix::fs::FileExt::write_all_at(&file, &torn, data_end).unwrap();
    for leftover in ["spare.zeroed", "segment.new", "manifest.tmp"] {
        std::fs::write(dir.join(leftover), b"left by a crash").unwrap();
    }
    std::fs::remove_file(dir.join("LOCK")).unwrap();
    let before = files(&dir);

    let reader = open(
        &dir,
        OpenMode::ReadOnly {
            committed: Version(20),
        },
    )
    .unwrap();
    assert_eq!(reader.last_version(), Version(20));
    let entries = reader.pull(Version(0), 100).await.unwrap();
    assert_eq!(entries.len(), 20);
    assert_eq!(entries[19].payload, Bytes::from(vec![7u8; PAYLOAD]));
    for refused in [
        reader
            .push(Epoch(1), Version(20), Version(21), Bytes::from_static(b"x"))
            .await
            .unwrap_err(),
        reader.lock(Epoch(2)).await.unwrap_err(),
        reader.pop(Version(10)).await.unwrap_err(),
    ] {
        assert!(
            matches!(&refused.kind, ErrorKind::Unavailable(why) if why.contains("read only")),
            "{refused}"
        );
    }
    reader.close();
    assert!(
        files(&dir) == before,
        "a read-only open changed the directory"
    );

    // A record known committed that looks torn is damage to a reader too, found the same way.
    let damaged = open(
        &dir,
        OpenMode::ReadOnly {
            committed: Version(21),
        },
    )
    .unwrap_err();
    assert!(
        matches!(damaged.kind, ErrorKind::Corruption(_)),
        "{damaged}"
    );
    assert!(files(&dir) == before);

    // An ordinary open repairs what the crash left, and keeps the same records.
    let writer = open(
        &dir,
        OpenMode::Existing {
            committed: Version(20),
        },
    )
    .unwrap();
    assert_eq!(writer.last_version(), Version(20));
    writer.close();
    let after = files(&dir);
    assert!(
        after != before,
        "the ordinary open had nothing to repair: the test is void"
    );
    for leftover in ["spare.zeroed", "segment.new", "manifest.tmp"] {
        assert!(!dir.join(leftover).exists(), "{leftover} kept");
    }
}
