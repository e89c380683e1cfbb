//! Zero-filled (preallocated) segments: a group commit in flight whose sectors reach the disk in
//! any order, damage found through the group-end marks, the spare segment's life, and logs
//! written by format 1 read and then left for a new segment.

// Test helpers may unwrap: a panic there is a failed test.
#![allow(clippy::unwrap_used)]

mod common;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use strata_core::{Epoch, LogId, LogServer, Version};
use strata_testkit::rng::SplitMix64;
use strata_tlog::fs::{Fs, SimFs};
use strata_tlog::{FileLog, FileLogConfig};

const DIR: &str = "/log";
const EPOCH: Epoch = Epoch(1);
const SEGMENT: u64 = 64 << 10;

fn config() -> FileLogConfig {
    FileLogConfig {
        segment_bytes: SEGMENT,
        ..FileLogConfig::default()
    }
}

fn open(fs: &SimFs) -> strata_core::Result<FileLog> {
    FileLog::open_with(
        Arc::new(fs.clone()),
        Path::new(DIR),
        LogId(9),
        Version(0),
        config(),
    )
}

fn payload(version: u64) -> Bytes {
    Bytes::from(vec![
        (version % 251) as u8;
        10 + (version as usize * 37) % 300
    ])
}

type Acked = Vec<(Version, Bytes)>;

async fn everything(log: &FileLog) -> Acked {
    let entries = log.pull(Version(0), usize::MAX).await.unwrap();
    entries
        .into_iter()
        .map(|e| (e.version, e.payload))
        .collect()
}

fn segments(fs: &SimFs) -> Vec<PathBuf> {
    let mut names = fs.list(Path::new(DIR)).unwrap();
    names.retain(|n| n.ends_with(".seg"));
    names.sort();
    names.iter().map(|n| Path::new(DIR).join(n)).collect()
}

fn newest_segment(fs: &SimFs) -> PathBuf {
    segments(fs).pop().unwrap()
}

fn len(fs: &SimFs, path: &Path) -> u64 {
    fs.open(path).unwrap().len().unwrap()
}

/// Pushes one at a time, from version `from`, until the log writes into a zero-filled segment
/// (the spare is written by a helper thread once the first segment is a quarter full).
async fn push_until_preallocated(fs: &SimFs, log: &FileLog, from: u64) -> (Acked, u64) {
    let mut acked = Vec::new();
    let mut v = from;
    for _ in 0..2_000 {
        v += 1;
        log.push(EPOCH, Version(v - 1), Version(v), payload(v))
            .await
            .unwrap();
        acked.push((Version(v), payload(v)));
        if segments(fs).len() > 1 && len(fs, &newest_segment(fs)) == SEGMENT {
            // The push that rolled into it wrote there: the log is in overwrite mode.
            return (acked, v);
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    panic!("the log never rolled into a zero-filled segment");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn group_in_flight_torn_at_any_sectors_reopens_to_exactly_the_acknowledged_prefix() {
    let fs = SimFs::new();
    let log = Arc::new(open(&fs).unwrap());
    let (mut acked, mut last) = push_until_preallocated(&fs, &log, 0).await;
    // A few more, each its own group commit, so the torn group follows several group ends.
    for _ in 0..3 {
        last += 1;
        log.push(EPOCH, Version(last - 1), Version(last), payload(last))
            .await
            .unwrap();
        acked.push((Version(last), payload(last)));
    }
    let segment = newest_segment(&fs);
    assert_eq!(
        len(&fs, &segment),
        SEGMENT,
        "overwriting a zero-filled segment"
    );

    // Nine concurrent pushes on a slow disk whose second sync fails: the first push is synced
    // alone while the others queue up behind it, then they are written as one group whose
    // sync fails (and poisons the log). Its sectors may reach the disk in any order.
    fs.set_sync_latency(Duration::from_millis(20));
    fs.fail_syncs_after(1);
    let mut pushes = tokio::task::JoinSet::new();
    for v in last + 1..=last + 9 {
        let log = log.clone();
        pushes.spawn(async move {
            let pushed = log
                .push(EPOCH, Version(v - 1), Version(v), payload(v))
                .await;
            (v, pushed.is_ok())
        });
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    let mut outcomes = Vec::new();
    while let Some(joined) = pushes.join_next().await {
        outcomes.push(joined.unwrap());
    }
    outcomes.sort_unstable();
    assert_eq!(outcomes[0], (last + 1, true), "{outcomes:?}");
    assert!(outcomes[1..].iter().all(|o| !o.1), "{outcomes:?}");
    last += 1;
    acked.push((Version(last), payload(last)));
    fs.set_sync_latency(Duration::ZERO);
    fs.fail_syncs_after(u64::MAX);
    let in_flight = fs.unsynced_len(&segment);
    assert!(
        in_flight >= (24 + 10) * 4,
        "a group of several records is in flight: {in_flight} bytes"
    );
    const SECTOR: usize = 64;
    let sectors = fs.unsynced_sectors(&segment, SECTOR);
    assert!(
        !sectors.is_empty(),
        "a group was written before its sync failed"
    );
    drop(log);

    // Structured subsets (none, all, all but one, only one), then seeded random ones.
    let n = sectors.len();
    let mut subsets: Vec<Vec<bool>> = vec![vec![false; n], vec![true; n]];
    for i in 0..n {
        subsets.push((0..n).map(|j| j != i).collect());
        subsets.push((0..n).map(|j| j == i).collect());
    }
    let mut rng = SplitMix64(0x5ec7);
    for _ in 0..100 {
        subsets.push((0..n).map(|_| rng.below(2) == 1).collect());
    }
    for subset in &subsets {
        let kept: Vec<usize> = sectors
            .iter()
            .zip(subset)
            .filter(|(_, k)| **k)
            .map(|(s, _)| *s)
            .collect();
        let image = fs.crash_image_sectors(SECTOR, |path, sector| {
            path == segment && kept.contains(&sector)
        });
        let log = open(&image).unwrap_or_else(|e| panic!("sectors {kept:?}: {e}"));
        let found = everything(&log).await;
        // Everything acknowledged, then possibly some of the unacknowledged pushes, in order.
        assert_eq!(found[..acked.len()], acked[..], "sectors {kept:?}");
        for (i, (v, p)) in found[acked.len()..].iter().enumerate() {
            let expect = last + 1 + i as u64;
            assert_eq!((v.0, p), (expect, &payload(expect)), "sectors {kept:?}");
        }
        // The log goes on from what it kept; the torn bytes were zeroed durably, so a crash
        // right after finds the new push and nothing of the torn group.
        let top = found.last().unwrap().0;
        log.push(EPOCH, top, Version(top.0 + 1), payload(999))
            .await
            .unwrap();
        drop(log);
        let again = open(&image.crash_image(0)).unwrap();
        let after = everything(&again).await;
        assert_eq!(after[..found.len()], found[..], "sectors {kept:?}");
        assert_eq!(after.len(), found.len() + 1, "sectors {kept:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flipped_byte_in_a_zero_filled_segment_is_corruption_with_its_location() {
    let fs = SimFs::new();
    let log = open(&fs).unwrap();
    let (_, mut last) = push_until_preallocated(&fs, &log, 0).await;
    let segment = newest_segment(&fs);
    // Records of this segment so far: at most the one push that rolled into it.
    let first_new = last;
    let mut offsets = vec![32usize + 24 + payload(first_new).len()];
    for _ in 0..5 {
        last += 1;
        log.push(EPOCH, Version(last - 1), Version(last), payload(last))
            .await
            .unwrap();
        let end = offsets.last().unwrap() + 24 + payload(last).len();
        offsets.push(end);
    }
    offsets.pop(); // the end of the last record
    drop(log);
    // Each push was its own group commit: damage to any but the last group is provably damage.
    for (i, &record) in offsets.iter().enumerate().take(4) {
        let v = first_new + 1 + i as u64;
        for field in [0usize, 3, 5, 9, 17, 24, 24 + payload(v).len() - 1] {
            let image = fs.crash_image(0);
            image.corrupt(&segment, record + field, 0x40).unwrap();
            let context = format!("record {i} field {field}");
            common::assert_corruption_at(open(&image), &segment, record, &context);
        }
    }
}

/// A format 1 record: the CRC covers the length word first.
fn record_v1(version: u64, previous: u64, payload: &[u8]) -> Vec<u8> {
    let mut r = vec![0u8; 24];
    r[0..4].copy_from_slice(&(payload.len() as u32).to_le_bytes());
    r[8..16].copy_from_slice(&version.to_le_bytes());
    r[16..24].copy_from_slice(&previous.to_le_bytes());
    r.extend_from_slice(payload);
    let mut crc = crc32fast::Hasher::new();
    crc.update(&r[0..4]);
    crc.update(&r[8..]);
    r[4..8].copy_from_slice(&crc.finalize().to_le_bytes());
    r
}

fn segment_v1(base: u64, records: &[(u64, u64)]) -> Vec<u8> {
    let mut h = vec![0u8; 32];
    h[0..4].copy_from_slice(b"STLG");
    h[4..6].copy_from_slice(&1u16.to_le_bytes());
    h[8..16].copy_from_slice(&9u64.to_le_bytes());
    h[16..24].copy_from_slice(&base.to_le_bytes());
    let crc = crc32fast::hash(&h[0..24]);
    h[24..28].copy_from_slice(&crc.to_le_bytes());
    for &(v, p) in records {
        h.extend(record_v1(v, p, &payload(v)));
    }
    h
}

fn put(fs: &SimFs, name: &str, bytes: &[u8]) {
    let f = fs.create(&Path::new(DIR).join(name)).unwrap();
    f.write_all_at(bytes, 0).unwrap();
    f.sync_data().unwrap();
    fs.sync_dir(Path::new(DIR)).unwrap();
}

#[tokio::test]
async fn format_1_log_is_read_and_new_records_go_to_a_new_format_2_segment() {
    let fs = SimFs::new();
    put(
        &fs,
        &format!("{:020}.seg", 0),
        &segment_v1(0, &[(1, 0), (2, 1), (3, 2)]),
    );
    let log = open(&fs).unwrap();
    let old: Acked = (1..=3).map(|v| (Version(v), payload(v))).collect();
    assert_eq!(everything(&log).await, old);
    log.push(EPOCH, Version(3), Version(4), payload(4))
        .await
        .unwrap();
    assert_eq!(
        segments(&fs).len(),
        2,
        "the format 1 segment is not appended to"
    );
    drop(log);
    let log = open(&fs.crash_image(0)).unwrap();
    let mut all = old.clone();
    all.push((Version(4), payload(4)));
    assert_eq!(everything(&log).await, all);
}

#[tokio::test]
async fn empty_format_1_segment_is_replaced_in_place() {
    let fs = SimFs::new();
    put(&fs, &format!("{:020}.seg", 7), &segment_v1(7, &[]));
    let log = open(&fs).unwrap();
    log.push(EPOCH, Version(7), Version(8), payload(8))
        .await
        .unwrap();
    assert_eq!(
        segments(&fs),
        [Path::new(DIR).join(format!("{:020}.seg", 7))]
    );
    drop(log);
    let log = open(&fs.crash_image(0)).unwrap();
    let entries = log.pull(Version(7), 10).await.unwrap();
    assert_eq!(entries.len(), 1);
    assert_eq!(
        (entries[0].version, &entries[0].payload),
        (Version(8), &payload(8))
    );
}

#[tokio::test]
async fn leftover_spare_and_new_segment_files_are_removed_at_open() {
    let fs = SimFs::new();
    drop(open(&fs).unwrap());
    put(&fs, "spare.zeroed", &[0u8; 4096]);
    put(&fs, "segment.new", b"STLG");
    let log = open(&fs).unwrap();
    let names = fs.list(Path::new(DIR)).unwrap();
    assert!(
        !names
            .iter()
            .any(|n| n == "spare.zeroed" || n == "segment.new"),
        "{names:?}"
    );
    log.push(EPOCH, Version(0), Version(1), payload(1))
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spare_that_does_not_fit_is_given_back_and_the_log_goes_on_appending() {
    let fs = SimFs::new();
    let log = open(&fs).unwrap();
    // Room for the log's own records, not for a 64 KiB spare beside them.
    fs.set_capacity(48 << 10);
    let mut v = 0;
    while len(&fs, &newest_segment(&fs)) < 32 << 10 {
        v += 1;
        log.push(EPOCH, Version(v - 1), Version(v), payload(v))
            .await
            .unwrap();
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    let names = fs.list(Path::new(DIR)).unwrap();
    assert!(!names.iter().any(|n| n == "spare.zeroed"), "{names:?}");
    assert_eq!(segments(&fs).len(), 1);
    assert!(!log.is_poisoned());
    drop(log);
    let log = open(&fs.crash_image(0)).unwrap();
    assert_eq!(everything(&log).await.len() as u64, v);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn closing_removes_the_spare_and_preallocate_off_never_writes_one() {
    let fs = SimFs::new();
    let log = open(&fs).unwrap();
    push_until_preallocated(&fs, &log, 0).await;
    drop(log);
    let names = fs.list(Path::new(DIR)).unwrap();
    assert!(!names.iter().any(|n| n == "spare.zeroed"), "{names:?}");

    let fs = SimFs::new();
    let off = FileLogConfig {
        preallocate: false,
        ..config()
    };
    let log = FileLog::open_with(
        Arc::new(fs.clone()),
        Path::new(DIR),
        LogId(9),
        Version(0),
        off,
    )
    .unwrap();
    for v in 1..=400u64 {
        log.push(EPOCH, Version(v - 1), Version(v), payload(v))
            .await
            .unwrap();
    }
    assert!(segments(&fs).len() > 1, "the test should span segments");
    // The newest segment holds only what was appended since the roll.
    assert!(len(&fs, &newest_segment(&fs)) < SEGMENT / 2);
    let names = fs.list(Path::new(DIR)).unwrap();
    assert!(!names.iter().any(|n| n == "spare.zeroed"), "{names:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spares_start_small_and_double_up_to_the_segment_size() {
    const MIB: u64 = 1 << 20;
    let fs = SimFs::new();
    let config = FileLogConfig {
        segment_bytes: 8 * MIB,
        ..FileLogConfig::default()
    };
    let open = |fs: &SimFs| {
        FileLog::open_with(
            Arc::new(fs.clone()),
            Path::new(DIR),
            LogId(9),
            Version(0),
            config,
        )
        .unwrap()
    };
    let log = open(&fs);
    let big = |v: u64| Bytes::from(vec![v as u8; 16 << 10]);
    let mut v = 0;
    while len(&fs, &newest_segment(&fs)) < 8 * MIB {
        assert!(v < 4_000, "segments: {:?}", segments(&fs));
        v += 1;
        log.push(EPOCH, Version(v - 1), Version(v), big(v))
            .await
            .unwrap();
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    let lens: Vec<u64> = segments(&fs).iter().map(|s| len(&fs, s)).collect();
    // Appended up to 64 KiB and a little (so that a lone commit soon overwrites zeros instead
    // of growing the file), then the smallest spare, then each twice the one before, capped.
    assert_eq!(lens.len(), 5, "{lens:?}");
    assert!((64 << 10..MIB).contains(&lens[0]), "{lens:?}");
    for (i, spare) in [MIB, 2 * MIB, 4 * MIB, 8 * MIB].into_iter().enumerate() {
        assert!((spare..spare + MIB).contains(&lens[i + 1]), "{lens:?}");
    }
    drop(log);
    let log = open(&fs.crash_image(0));
    let all = everything(&log).await;
    assert_eq!(all.len() as u64, v);
    assert!(all.iter().all(|(version, p)| *p == big(version.0)));
}
