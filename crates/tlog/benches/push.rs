//! The log against this machine's disk, with the raw floors measured in the same run.
//!
//! - `tlog/fsync_floor_4k`: append 4 KiB to a file and `fdatasync` it (the latency floor).
//! - `tlog/fsync_floor_4k_prealloc`: overwrite 4 KiB in a file written full of zeros
//!   beforehand and `fdatasync` it: the floor of a log whose segments are preallocated, since
//!   the sync then commits no metadata (reference only; the log appends, see the README).
//! - `tlog/raw_write_64m`: write 64 MiB in 1 MiB pieces, then `fdatasync` (what `dd` with
//!   `conv=fdatasync` measures; the throughput floor).
//! - `tlog/push_1k_1`: one pusher, 1 KiB payloads: latency of one durable push.
//! - `tlog/push_1k_64`: 64 concurrent pushers, 1 KiB payloads: pushes per second.
//! - `tlog/push_64k_64`: 64 concurrent pushers, 64 KiB payloads: bytes per second.
//!
//! Files live under Cargo's target directory, on the same disk as the build. The log pops what
//! it pushed after every measured batch, as storage servers do, so the disk does not fill.
//! Pushers run as tasks on a single-threaded runtime, leaving the machine's second core to the
//! log's writer thread, as a commit proxy's tasks feed the logs in a two-core deployment. (On a
//! two-worker runtime the three threads share two cores: 64 pushers then reach 32× one pusher
//! instead of 36×.)
//!
//! Run: `cargo bench -p strata-tlog --bench push`.

use std::fs::OpenOptions;
use std::io::Write;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use strata_core::{Epoch, LogId, LogServer, Version};
use strata_testkit::disk::{OverwriteProbe, SyncProbe};
use strata_tlog::{FileLog, FileLogConfig};

fn bench_dir() -> tempfile::TempDir {
    match tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")) {
        Ok(d) => d,
        Err(e) => panic!("cannot make a bench directory: {e}"),
    }
}

fn floors(c: &mut Criterion) {
    let dir = bench_dir();
    let mut group = c.benchmark_group("tlog");
    group.throughput(Throughput::Elements(1));
    group.bench_function("fsync_floor_4k", |b| {
        let mut probe = match SyncProbe::create(dir.path()) {
            Ok(p) => p,
            Err(e) => panic!("{e}"),
        };
        b.iter(|| {
            if let Err(e) = probe.append_and_sync() {
                panic!("{e}");
            }
        });
    });
    // The same 4 KiB sync when nothing about the file changes but its data: an overwrite in
    // a file written full of zeros beforehand (what a log with preallocated segments pays).
    group.bench_function("fsync_floor_4k_prealloc", |b| {
        let mut probe = match OverwriteProbe::create(dir.path(), 64 << 20) {
            Ok(p) => p,
            Err(e) => panic!("{e}"),
        };
        b.iter(|| {
            if let Err(e) = probe.overwrite_and_sync() {
                panic!("{e}");
            }
        });
    });
    group.sample_size(10);
    group.throughput(Throughput::Bytes(64 << 20));
    group.bench_function("raw_write_64m", |b| {
        let chunk = vec![7u8; 1 << 20];
        let mut round = 0;
        b.iter(|| {
            round += 1;
            let path = dir.path().join(format!("raw-{round}"));
            let result = OpenOptions::new()
                .create(true)
                .write(true)
                .truncate(true)
                .open(&path)
                .and_then(|mut f| {
                    for _ in 0..64 {
                        f.write_all(&chunk)?;
                    }
                    f.sync_data()
                })
                .and_then(|()| std::fs::remove_file(&path));
            if let Err(e) = result {
                panic!("{e}");
            }
        });
    });
    group.finish();
}

/// `pushers` tasks pushing `per_pusher` entries each, versions taken from a shared counter in
/// order; returns the elapsed time.
async fn push_concurrently(
    log: Arc<FileLog>,
    next: Arc<AtomicU64>,
    pushers: usize,
    per_pusher: u64,
    payload: Bytes,
) -> Duration {
    let start = Instant::now();
    let tasks: Vec<_> = (0..pushers)
        .map(|_| {
            let (log, next, payload) = (log.clone(), next.clone(), payload.clone());
            tokio::spawn(async move {
                for _ in 0..per_pusher {
                    let v = next.fetch_add(1, Ordering::SeqCst) + 1;
                    if let Err(e) = log
                        .push(Epoch(1), Version(v - 1), Version(v), payload.clone())
                        .await
                    {
                        panic!("push {v}: {e}");
                    }
                }
            })
        })
        .collect();
    for t in tasks {
        if let Err(e) = t.await {
            panic!("pusher: {e}");
        }
    }
    let elapsed = start.elapsed();
    let popped = Version(next.load(Ordering::SeqCst));
    if let Err(e) = log.pop(popped).await {
        panic!("pop: {e}");
    }
    elapsed
}

fn pushes(c: &mut Criterion) {
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => panic!("tokio runtime: {e}"),
    };
    let mut group = c.benchmark_group("tlog");
    let cases: [(&str, usize, usize); 3] = [
        ("push_1k_1", 1, 1024),
        ("push_1k_64", 64, 1024),
        ("push_64k_64", 64, 64 * 1024),
    ];
    for (id, pushers, payload_bytes) in cases {
        let dir = bench_dir();
        let log = match FileLog::open(dir.path(), LogId(1), Version(0), FileLogConfig::default()) {
            Ok(l) => Arc::new(l),
            Err(e) => panic!("open: {e}"),
        };
        let next = Arc::new(AtomicU64::new(0));
        let payload = Bytes::from(vec![0xa5u8; payload_bytes]);
        if payload_bytes >= 64 * 1024 {
            group.throughput(Throughput::Bytes((pushers * payload_bytes) as u64));
            group.sample_size(20);
        } else {
            group.throughput(Throughput::Elements(pushers as u64));
            group.sample_size(50);
        }
        group.bench_function(id, |b| {
            b.iter_custom(|iters| {
                runtime.block_on(push_concurrently(
                    log.clone(),
                    next.clone(),
                    pushers,
                    iters,
                    payload.clone(),
                ))
            })
        });
    }
    group.finish();
}

criterion_group!(benches, floors, pushes);
criterion_main!(benches);
