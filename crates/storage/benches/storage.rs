//! Storage server reads and applies.
//!
//! - `storage/get_window`: point reads at the newest version of keys held in the window.
//! - `storage/get_durable`: point reads of keys only in redb.
//! - `storage/range_1000`: a 1,000-key range read at the newest version; the keys are in redb
//!   and one in ten was overwritten since, in the window, so the read merges both.
//! - `storage/apply`: batches of 1,000 sets (16-byte keys, 100-byte values) pushed to an
//!   in-memory log, decoded and applied; mutations per second.
//! - `storage/apply_random`: the same with keys drawn at random from a million, into a window
//!   already holding 300 such batches (the window of a server under steady random writes).
//!
//! The server runs on a two-thread tokio runtime; reads are issued one after another from one
//! task. Run: `cargo bench -p strata-storage --bench storage`.

use std::hint::black_box;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use strata_core::{Epoch, KeyRange, LogId, LogServer, Mutation, StorageServer, Version, wire};
use strata_storage::{RedbStorage, StorageConfig};
use strata_testkit::MemoryLog;
use strata_testkit::rng::SplitMix64;

const KEYS: u64 = 10_000;

fn key(i: u64) -> Bytes {
    Bytes::from(format!("key/{i:012}"))
}

fn ok<T, E: std::fmt::Display>(r: Result<T, E>) -> T {
    match r {
        Ok(v) => v,
        Err(e) => panic!("{e}"),
    }
}

fn everything() -> Vec<KeyRange> {
    vec![ok(KeyRange::new("", "\u{7f}"))]
}

async fn push(log: &MemoryLog, previous: u64, version: u64, mutations: &[Mutation]) {
    let payload = ok(wire::encode_parts(
        None,
        &[],
        &[],
        mutations,
        Some(Version(version)),
    ));
    ok(log
        .push(Epoch(1), Version(previous), Version(version), payload)
        .await);
}

fn sets(keys: impl Iterator<Item = u64>, tag: u8) -> Vec<Mutation> {
    keys.map(|i| Mutation::Set {
        key: key(i),
        value: Bytes::from(vec![tag; 100]),
    })
    .collect()
}

/// A server whose keys were written at version 10 and flushed to redb, then one key in ten
/// overwritten at version 1,000 (in the window).
async fn loaded(dir: &std::path::Path) -> (Arc<MemoryLog>, RedbStorage) {
    let log = Arc::new(MemoryLog::new(LogId(1), Version(0)));
    let config = StorageConfig {
        window_versions: 100,
        flush_interval: Duration::from_secs(3600),
        ..StorageConfig::default()
    };
    let storage =
        ok(RedbStorage::open(&dir.join("s.redb"), everything(), log.clone(), config).await);
    push(&log, 0, 10, &sets(0..KEYS, 1)).await;
    push(&log, 10, 1_000, &sets((0..KEYS).step_by(10), 2)).await;
    ok(storage.get(key(0), Version(1_000)).await);
    // The only log holds both batches: they are committed, so the flush may write them.
    storage.advance_committed(Version(1_000));
    ok(storage.flush().await);
    (log, storage)
}

fn reads(c: &mut Criterion) {
    let runtime = ok(tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build());
    let dir = ok(tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")));
    let (_log, storage) = runtime.block_on(loaded(dir.path()));
    let newest = Version(1_000);
    let mut group = c.benchmark_group("storage");

    const READS: u64 = 1_000;
    group.throughput(Throughput::Elements(READS));
    group.bench_function("get_window", |b| {
        b.iter(|| {
            runtime.block_on(async {
                for i in 0..READS {
                    // Every tenth key is in the window.
                    let k = key((i * 10) % KEYS);
                    black_box(ok(storage.get(k, newest).await));
                }
            })
        })
    });
    group.bench_function("get_durable", |b| {
        b.iter(|| {
            runtime.block_on(async {
                for i in 0..READS {
                    let k = key((i * 10 + 1) % KEYS);
                    black_box(ok(storage.get(k, newest).await));
                }
            })
        })
    });
    group.throughput(Throughput::Elements(1_000));
    group.bench_function("range_1000", |b| {
        let range = ok(KeyRange::new(key(1_000), key(2_000)));
        b.iter(|| {
            let got = runtime.block_on(storage.get_range(range.clone(), newest, 1_000, false));
            assert_eq!(ok(got).entries.len(), 1_000);
        })
    });
    group.finish();
}

/// Pushes each batch `n` as version `n + 1` after `n`, then waits until `storage` has applied
/// `through`.
async fn feed(
    log: &MemoryLog,
    storage: &RedbStorage,
    batches: impl Iterator<Item = (usize, Bytes)>,
    through: u64,
) {
    for (n, payload) in batches {
        let n = n as u64;
        ok(log
            .push(Epoch(1), Version(n), Version(n + 1), payload)
            .await);
    }
    while ok(storage.applied_version().await) < Version(through) {
        tokio::time::sleep(Duration::from_micros(100)).await;
    }
}

/// Batches of 1,000 sets pushed to an in-memory log and applied, after `prefill` batches
/// applied untimed. `keys(n)` are the keys of batch `n` (counting the prefill's).
fn apply_after(
    group: &mut criterion::BenchmarkGroup<'_, criterion::measurement::WallTime>,
    runtime: &tokio::runtime::Runtime,
    name: &str,
    prefill: u64,
    keys: impl Fn(u64) -> Vec<u64>,
) {
    group.bench_function(name, |b| {
        b.iter_custom(|iters| {
            runtime.block_on(async {
                let dir = ok(tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")));
                let log = Arc::new(MemoryLog::new(LogId(1), Version(0)));
                let config = StorageConfig {
                    flush_interval: Duration::from_secs(3600),
                    ..StorageConfig::default()
                };
                let storage = ok(RedbStorage::open(
                    &dir.path().join("s.redb"),
                    everything(),
                    log.clone(),
                    config,
                )
                .await);
                // Encode before timing: the bench measures the server, not the client.
                let batches: Vec<Bytes> = (0..prefill + iters)
                    .map(|n| {
                        let m = sets(keys(n).into_iter(), 3);
                        ok(wire::encode_parts(None, &[], &[], &m, Some(Version(n + 1))))
                    })
                    .collect();
                let mut batches = batches.into_iter().enumerate();
                let prefilled = batches.by_ref().take(prefill as usize);
                feed(&log, &storage, prefilled, prefill).await;
                let start = Instant::now();
                feed(&log, &storage, batches, prefill + iters).await;
                let elapsed = start.elapsed();
                storage.close().await;
                elapsed
            })
        })
    });
}

fn apply(c: &mut Criterion) {
    let runtime = ok(tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build());
    let mut group = c.benchmark_group("storage");
    const BATCH: u64 = 1_000;
    group.throughput(Throughput::Elements(BATCH));
    apply_after(&mut group, &runtime, "apply", 0, |n| {
        (n * BATCH..(n + 1) * BATCH).collect()
    });
    // The window as a busy server holds it: 300 batches (300,000 keys) applied before the
    // measured ones, and every key random among a million, so inserts land all over it.
    group.sample_size(20);
    apply_after(&mut group, &runtime, "apply_random", 300, |n| {
        let mut rng = SplitMix64(n);
        (0..BATCH).map(|_| rng.below(1_000_000)).collect()
    });
    group.finish();
}

criterion_group!(benches, reads, apply);
criterion_main!(benches);
