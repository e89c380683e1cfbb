//! Crashes, torn writes, damaged records, failing syncs and a full disk, simulated through the
//! log's file-system trait.

// Test helpers may unwrap: a panic there is a failed test.
#![allow(clippy::unwrap_used)]

mod common;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use bytes::Bytes;
use strata_core::{Epoch, ErrorKind, LogEntry, LogId, LogServer, Version};
use strata_tlog::fs::{Fs, PAGE_BYTES, SimFs};
use strata_tlog::{FileLog, FileLogConfig};

const DIR: &str = "/log";
const EPOCH: Epoch = Epoch(1);

fn open(fs: &SimFs) -> strata_core::Result<FileLog> {
    open_direct(fs, FileLogConfig::default().direct_io)
}

/// [`open`], writing records as whole pages (`direct_io`) or only their own bytes.
fn open_direct(fs: &SimFs, direct_io: bool) -> strata_core::Result<FileLog> {
    let config = FileLogConfig {
        direct_io,
        ..FileLogConfig::default()
    };
    open_config(fs, config)
}

/// The log in the test directory of `fs`, opened with `config`.
fn open_config(fs: &SimFs, config: FileLogConfig) -> strata_core::Result<FileLog> {
    FileLog::open_with(
        Arc::new(fs.clone()),
        Path::new(DIR),
        LogId(9),
        Version(0),
        config,
    )
}

fn payload(version: u64) -> Bytes {
    // Sizes vary so records straddle different offsets.
    Bytes::from(vec![
        (version % 251) as u8;
        10 + (version as usize * 37) % 300
    ])
}

async fn push_n(log: &FileLog, from: u64, n: u64) -> Vec<(Version, Bytes)> {
    let mut acked = Vec::new();
    for v in from + 1..=from + n {
        log.push(EPOCH, Version(v - 1), Version(v), payload(v))
            .await
            .unwrap();
        acked.push((Version(v), payload(v)));
    }
    acked
}

async fn everything(log: &FileLog) -> Vec<(Version, Bytes)> {
    let entries: Vec<LogEntry> = log.pull(Version(0), usize::MAX).await.unwrap();
    entries
        .into_iter()
        .map(|e| (e.version, e.payload))
        .collect()
}

fn only_segment(fs: &SimFs) -> PathBuf {
    let mut names = fs.list(Path::new(DIR)).unwrap();
    names.retain(|n| n.ends_with(".seg"));
    assert_eq!(names.len(), 1, "{names:?}");
    Path::new(DIR).join(&names[0])
}

/// Written as whole pages, the write in flight rewrites the acknowledged records before the
/// new one in its page: a tear anywhere in it keeps them, as a tear in the new record alone
/// does when only its bytes are written.
#[tokio::test]
async fn crash_at_every_byte_of_the_last_records_keeps_exactly_the_acknowledged_prefix() {
    for (unacked_version, direct_io) in [(6u64, false), (7, false), (6, true), (7, true)] {
        let open = |fs: &SimFs| open_direct(fs, direct_io);
        let fs = SimFs::new();
        let log = open(&fs).unwrap();
        let acked = push_n(&log, 0, unacked_version - 1).await;
        // The next push is written but its sync fails: it is never acknowledged.
        fs.fail_syncs(true);
        let v = unacked_version;
        let failed = log
            .push(EPOCH, Version(v - 1), Version(v), payload(v))
            .await;
        assert!(failed.is_err());
        let segment = only_segment(&fs);
        let unsynced = fs.unsynced_len(&segment);
        // Where the new record ends in the write in flight: that page, from the segment's
        // header on, or the record's own bytes.
        let (in_flight, whole_at) = if direct_io {
            let end = 32 + (1..=v).map(|u| 24 + payload(u).len()).sum::<usize>();
            assert!(end < PAGE_BYTES, "the records fit in the first page");
            (PAGE_BYTES, end)
        } else {
            (24 + payload(v).len(), 24 + payload(v).len())
        };
        assert_eq!(unsynced, in_flight, "one whole record is in flight");
        drop(log);

        for torn in 0..=unsynced {
            let image = fs.crash_image(torn);
            let log = open(&image).unwrap();
            let found = everything(&log).await;
            if torn >= whole_at {
                // The whole record reached the disk: keeping it is allowed (never promised).
                assert_eq!(found[..acked.len()], acked[..], "torn at {torn}");
                assert_eq!(found.len(), acked.len() + 1);
            } else {
                assert_eq!(found, acked, "torn at {torn}");
            }
            // The log goes on from what it kept, and the truncation itself was synced.
            let last = found.last().unwrap().0;
            log.push(EPOCH, last, Version(last.0 + 1), payload(99))
                .await
                .unwrap();
            drop(log);
            let again = open(&image.crash_image(0)).unwrap();
            let after = everything(&again).await;
            assert_eq!(after.len(), found.len() + 1, "torn at {torn}");
            assert_eq!(after[..found.len()], found[..]);
        }
    }
}

#[tokio::test]
async fn flipped_byte_in_an_earlier_record_is_corruption_naming_file_and_offset() {
    let fs = SimFs::new();
    let log = open(&fs).unwrap();
    push_n(&log, 0, 5).await;
    drop(log);
    let segment = only_segment(&fs);
    // Record offsets: the 32-byte segment header, then 24 + payload bytes per record.
    let mut offsets = vec![32usize];
    for v in 1..5u64 {
        offsets.push(offsets.last().unwrap() + 24 + payload(v).len());
    }
    for (i, &record) in offsets.iter().enumerate().take(4) {
        for field in [0usize, 5, 9, 17, 24, 24 + payload(i as u64 + 1).len() - 1] {
            let image = fs.crash_image(0);
            image.corrupt(&segment, record + field, 0x40).unwrap();
            let context = format!("record {i} field {field}");
            common::assert_corruption_at(open(&image), &segment, record, &context);
        }
    }
}

#[tokio::test]
async fn damaged_segment_header_is_corruption() {
    let fs = SimFs::new();
    let log = open(&fs).unwrap();
    push_n(&log, 0, 2).await;
    drop(log);
    let image = fs.crash_image(0);
    image.corrupt(&only_segment(&fs), 2, 0x01).unwrap();
    let err = open(&image).unwrap_err();
    assert!(matches!(err.kind, ErrorKind::Corruption(_)), "{err}");
}

#[tokio::test]
async fn failing_sync_answers_with_the_error_and_poisons_the_log() {
    let fs = SimFs::new();
    let log = open(&fs).unwrap();
    let acked = push_n(&log, 0, 3).await;
    fs.fail_syncs(true);
    let err = log
        .push(EPOCH, Version(3), Version(4), payload(4))
        .await
        .unwrap_err();
    assert!(matches!(err.kind, ErrorKind::Io(_)), "{err}");
    assert!(log.is_poisoned());
    // Even once the disk recovers, the log refuses writes until it is reopened.
    fs.fail_syncs(false);
    let err = log
        .push(EPOCH, Version(4), Version(5), payload(5))
        .await
        .unwrap_err();
    assert!(matches!(err.kind, ErrorKind::Poisoned(_)), "{err}");
    drop(log);
    // Nothing acknowledged was lost; the unacknowledged push may or may not be there (closing
    // a poisoned log writes what reads see again and syncs it: here, all of it).
    let log = open(&fs.crash_image(0)).unwrap();
    let found = everything(&log).await;
    assert_eq!(found[..acked.len()], acked[..]);
    assert!(found.len() <= acked.len() + 1, "{}", found.len());
}

/// A log poisoned by a failed sync and opened again by the same machine (its page cache still
/// holding what the failed sync never wrote back) serves only what a power loss keeps: a
/// version it serves may be chosen as committed, and must not vanish with the power. Whether
/// the process died before closing the log (the `resync` marker the writer left makes the open
/// write the directory again) or closed it without the marker (making it failed: the close
/// writes the directory again).
#[tokio::test]
async fn a_log_reopened_after_a_failed_sync_serves_only_what_survives_a_power_loss() {
    for ending in ["process died", "closed, marker never made"] {
        let fs = SimFs::new();
        let log = open(&fs).unwrap();
        push_n(&log, 0, 3).await;
        fs.fail_syncs(true);
        assert!(
            log.push(EPOCH, Version(3), Version(4), payload(4))
                .await
                .is_err()
        );
        assert!(log.is_poisoned());
        fs.fail_syncs(false);
        let marker = Path::new(DIR).join("resync");
        assert!(
            fs.open(&marker).is_ok(),
            "{ending}: the writer leaves its marker"
        );
        if ending == "process died" {
            // No close: its writer thread is left behind, as a crash would.
            std::mem::forget(log);
        } else {
            fs.remove(&marker).unwrap();
            log.close_resynced().unwrap();
        }
        let served = everything(&open(&fs).unwrap()).await;
        let after_power_loss = everything(&open(&fs.crash_image(0)).unwrap()).await;
        let versions =
            |entries: &[(Version, Bytes)]| entries.iter().map(|e| e.0).collect::<Vec<_>>();
        assert_eq!(versions(&after_power_loss), versions(&served), "{ending}");
        assert_eq!(after_power_loss, served, "{ending}");
        assert!(fs.open(&marker).is_err(), "{ending}: the marker is removed");
    }
}

/// After the log is poisoned, every later error (a push refused at once, a push queued behind
/// the failed group commit, a lock waiting for pushes to land) says what poisoned it: the
/// original I/O error's text, not only "poisoned".
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_error_after_poisoning_names_the_original_io_error() {
    for (failure, text) in [
        ("sync", "simulated sync failure"),
        ("full disk", "simulated full disk"),
    ] {
        let fs = SimFs::new();
        let log = Arc::new(open(&fs).unwrap());
        push_n(&log, 0, 3).await;
        // A slow disk, so that pushes queue behind the group commit that fails.
        fs.set_sync_latency(std::time::Duration::from_millis(20));
        match failure {
            "sync" => fs.fail_syncs(true),
            _ => fs.set_capacity(0),
        }
        let mut pushes = tokio::task::JoinSet::new();
        for v in 4..=12u64 {
            let log = log.clone();
            pushes.spawn(async move {
                log.push(EPOCH, Version(v - 1), Version(v), payload(v))
                    .await
            });
        }
        let mut errors = Vec::new();
        while let Some(joined) = pushes.join_next().await {
            errors.push(joined.unwrap().unwrap_err());
        }
        assert!(log.is_poisoned());
        // The disk is fine again; the log still refuses, and still says why.
        fs.set_sync_latency(std::time::Duration::ZERO);
        fs.fail_syncs(false);
        fs.set_capacity(u64::MAX);
        for v in 13..=15u64 {
            errors.push(
                log.push(EPOCH, Version(v - 1), Version(v), payload(v))
                    .await
                    .unwrap_err(),
            );
        }
        errors.push(log.lock(Epoch(2)).await.unwrap_err());
        let mut poisoned = 0;
        for err in &errors {
            let shown = err.to_string();
            assert!(shown.contains(text), "{failure}: {shown}");
            match &err.kind {
                ErrorKind::Io(_) => {}
                ErrorKind::Poisoned(cause) => {
                    poisoned += 1;
                    assert!(cause.contains(text), "{failure}: {cause}");
                    assert!(shown.contains("poisoned by: "), "{failure}: {shown}");
                }
                _ => panic!("{failure}: {shown}"),
            }
        }
        // The three pushes after the failure and the lock at least.
        assert!(poisoned >= 4, "{failure}: {errors:?}");
        assert!(log.poisoned_by().unwrap().contains(text));
    }
}

#[tokio::test]
async fn full_disk_refuses_the_push_and_loses_nothing_acknowledged() {
    let fs = SimFs::new();
    let log = open(&fs).unwrap();
    let acked = push_n(&log, 0, 3).await;
    let used: u64 = {
        let seg = only_segment(&fs);
        fs.open(&seg).unwrap().len().unwrap()
    };
    fs.set_capacity(used + 100);
    // Past the end of the file whether records are written alone or as whole pages.
    let big = Bytes::from(vec![1u8; 5_000]);
    let err = log
        .push(EPOCH, Version(3), Version(4), big)
        .await
        .unwrap_err();
    let ErrorKind::Io(io) = &err.kind else {
        panic!("{err}");
    };
    assert_eq!(io.kind(), std::io::ErrorKind::StorageFull);
    assert!(log.is_poisoned());
    drop(log);

    fs.set_capacity(u64::MAX);
    let log = open(&fs.crash_image(0)).unwrap();
    assert_eq!(everything(&log).await, acked);
    log.push(EPOCH, Version(3), Version(4), payload(4))
        .await
        .unwrap();
}

#[tokio::test]
async fn segment_torn_at_creation_is_removed() {
    let fs = SimFs::new();
    let config = FileLogConfig {
        segment_bytes: 200,
        ..FileLogConfig::default()
    };
    let dir = Path::new(DIR);
    let log = FileLog::open_with(Arc::new(fs.clone()), dir, LogId(9), Version(0), config).unwrap();
    let acked = push_n(&log, 0, 3).await;
    drop(log);
    // A crash while creating the next segment left a file with a partial header.
    let next = dir.join(format!("{:020}.seg", 3));
    let f = fs.create(&next).unwrap();
    f.write_all_at(b"STLG\x01", 0).unwrap();
    f.sync_data().unwrap();
    fs.sync_dir(dir).unwrap();

    let log = FileLog::open_with(Arc::new(fs.clone()), dir, LogId(9), Version(0), config).unwrap();
    assert_eq!(everything(&log).await, acked);
    assert!(!fs.list(dir).unwrap().contains(&format!("{:020}.seg", 3)));
    log.push(EPOCH, Version(3), Version(4), payload(4))
        .await
        .unwrap();
}

#[tokio::test]
async fn segment_of_another_log_is_refused() {
    let fs = SimFs::new();
    drop(open(&fs).unwrap());
    let err = FileLog::open_with(
        Arc::new(fs.clone()),
        Path::new(DIR),
        LogId(10),
        Version(0),
        FileLogConfig::default(),
    )
    .unwrap_err();
    assert!(matches!(err.kind, ErrorKind::Corruption(_)), "{err}");
}

/// A log whose writer thread hangs in the sync of version 6 (of 6 pushes): the process dies
/// there, the record written, never synced. `direct_io` as given.
async fn died_in_a_sync(direct_io: bool) -> (SimFs, FileLogConfig, Vec<(Version, Bytes)>) {
    let fs = SimFs::new();
    let config = FileLogConfig {
        direct_io,
        // The writer thread syncs, so that its hanging sync holds no runtime thread.
        leaders: strata_tlog::Leaders::Never,
        ..FileLogConfig::default()
    };
    let log = Arc::new(open_config(&fs, config).unwrap());
    let acked = push_n(&log, 0, 5).await;
    // Long enough that the hanging sync never completes during the test.
    fs.set_sync_latency(std::time::Duration::from_secs(600));
    // The dead process: never dropped (closing would wait for the hanging writer thread), and
    // its push never awaited.
    std::mem::forget(log.clone());
    tokio::spawn(async move { log.push(EPOCH, Version(5), Version(6), payload(6)).await });
    let segment = only_segment(&fs);
    while fs.unsynced_len(&segment) == 0 {
        tokio::time::sleep(std::time::Duration::from_millis(1)).await;
    }
    fs.set_sync_latency(std::time::Duration::ZERO);
    (fs, config, acked)
}

/// A process that dies between a group's write and its sync leaves the record where the next
/// process reads it (the page cache, or, written directly, the disk's cache), and the next
/// open serves it as held. So the open makes it durable first: otherwise a power loss after
/// the open takes a record that recovery has already counted (storage servers may have made
/// it durable, and the log could then never be opened with their version as committed).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_open_makes_durable_the_unsynced_records_it_reads() {
    for direct_io in [true, false] {
        let (fs, config, acked) = died_in_a_sync(direct_io).await;
        // The next process opens the log, which reads the record...
        let reopened = open_config(&fs, config).unwrap();
        let held = everything(&reopened).await;
        assert_eq!(held[..5], acked[..], "direct {direct_io}");
        assert_eq!(held.len(), 6, "direct {direct_io}");
        // ...and a power loss after that open keeps everything the open said it held.
        let after_power_loss = open_config(&fs.crash_image(0), config).unwrap();
        assert_eq!(
            everything(&after_power_loss).await,
            held,
            "direct {direct_io}"
        );
    }
}

/// The same, when the open's own sync fails: the open fails, and leaves the log marked, so
/// that the open after it (on a disk that works again) writes the records again before it
/// syncs them. A failed sync leaves its pages clean: syncing them again writes nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_open_whose_sync_fails_leaves_the_log_to_be_written_again() {
    for direct_io in [true, false] {
        let (fs, config, acked) = died_in_a_sync(direct_io).await;
        fs.fail_syncs(true);
        let err = open_config(&fs, config).err().unwrap();
        assert!(
            matches!(err.kind, ErrorKind::Io(_)),
            "direct {direct_io}: {err}"
        );
        fs.fail_syncs(false);

        let reopened = open_config(&fs, config).unwrap();
        let held = everything(&reopened).await;
        assert_eq!(held[..5], acked[..], "direct {direct_io}");
        let after_power_loss = open_config(&fs.crash_image(0), config).unwrap();
        assert_eq!(
            everything(&after_power_loss).await,
            held,
            "direct {direct_io}"
        );
    }
}
