//! Cross-stage and end-to-end criterion benches of Strata; the benches are in `benches/`, and
//! this library holds what they share.
//!
//! Run: `cargo bench -p strata-benches`. Nothing here is published or depended on: comparison
//! dependencies (other stores) belong in this crate only, so no stage crate ever pulls them in.

/// The allocator the `strata` binary uses too, so the benches measure what it runs. Each
/// bench target links this library, and with it this allocator.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use criterion::measurement::WallTime;
use criterion::{BenchmarkGroup, Throughput};
use strata_director::Database;
use strata_testkit::disk::SyncProbe;

/// Unwraps a setup step of a bench; a failure there is a broken bench, reported loudly.
pub fn ok<T, E: std::fmt::Display>(r: Result<T, E>) -> T {
    match r {
        Ok(v) => v,
        Err(e) => panic!("{e}"),
    }
}

/// `<group>/fsync_floor_4k`: append 4 KiB to a file in `dir` and `fdatasync` it, the floor a
/// durable commit is measured against in the same run.
pub fn fsync_floor_4k(group: &mut BenchmarkGroup<'_, WallTime>, dir: &Path) {
    group.throughput(Throughput::Elements(1));
    group.bench_function("fsync_floor_4k", |b| {
        let mut probe = ok(SyncProbe::create(dir));
        b.iter(|| ok(probe.append_and_sync()));
    });
}

/// A tokio runtime with the machine's two cores as workers.
pub fn runtime() -> tokio::runtime::Runtime {
    ok(tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build())
}

/// One transaction: a read version, one 100-byte write of key `<prefix><n>`, a commit.
pub async fn one_write(db: &Database, prefix: &str, n: u64) {
    let tx = db.begin();
    tx.set(
        Bytes::from(format!("{prefix}{n:012}")),
        Bytes::from_static(&[7u8; 100]),
    );
    ok(tx.commit().await);
}

/// `clients` concurrent tasks committing `iters` one-write transactions each; the elapsed
/// time. `next` numbers the keys across calls.
pub async fn concurrent_writes(
    db: &Database,
    prefix: &'static str,
    clients: u64,
    iters: u64,
    next: &Arc<AtomicU64>,
) -> Duration {
    let start = Instant::now();
    let tasks: Vec<_> = (0..clients)
        .map(|_| {
            let (db, next) = (db.clone(), next.clone());
            tokio::spawn(async move {
                for _ in 0..iters {
                    one_write(&db, prefix, next.fetch_add(1, Ordering::Relaxed)).await;
                }
            })
        })
        .collect();
    for t in tasks {
        ok(t.await);
    }
    start.elapsed()
}
