//! What a network hop costs a stage: the same calls on an in-memory log, in process and
//! through `RemoteLog` over loopback, in one run.
//!
//! - `net/push_in_process`, `net/push_loopback`: one push of a 100-byte batch, one at a time
//!   along the version chain (a lone commit's push); the difference is the round trip.
//! - `net/pull_in_process_100`, `net/pull_loopback_100`: a pull of 100 entries of 100 bytes
//!   (a storage server catching up); throughput in entries.
//!
//! Run: `cargo bench -p strata-net --bench loopback`.

#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use strata_core::{Epoch, LogId, LogServer, Version};
use strata_net::{ClusterId, LogService, RemoteLog};
use strata_testkit::MemoryLog;

const BATCH: [u8; 100] = [7; 100];

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

/// Pushes `iters` batches after `last`, one at a time; the time taken.
async fn pushes(log: &dyn LogServer, last: &mut u64, iters: u64) -> std::time::Duration {
    let start = Instant::now();
    for _ in 0..iters {
        let next = *last + 1;
        log.push(
            Epoch(1),
            Version(*last),
            Version(next),
            Bytes::from_static(&BATCH),
        )
        .await
        .unwrap();
        *last = next;
    }
    start.elapsed()
}

fn loopback(c: &mut Criterion) {
    let rt = runtime();
    let cluster = ClusterId::new("bench").unwrap();
    let local: Arc<MemoryLog> = Arc::new(MemoryLog::new(LogId(1), Version(0)));
    let remote = rt.block_on(async {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap().to_string();
        let served: Arc<dyn LogServer> = local.clone();
        tokio::spawn(LogService::serve(
            served,
            cluster.clone(),
            listener,
            std::future::pending(),
        ));
        RemoteLog::connect(&address, cluster, LogId(1))
            .await
            .unwrap()
    });

    let mut group = c.benchmark_group("net");
    let mut last = 0u64;
    group.throughput(Throughput::Elements(1));
    group.bench_function("push_in_process", |b| {
        b.iter_custom(|iters| rt.block_on(pushes(local.as_ref(), &mut last, iters)));
    });
    group.bench_function("push_loopback", |b| {
        b.iter_custom(|iters| rt.block_on(pushes(&remote, &mut last, iters)));
    });

    group.throughput(Throughput::Elements(100));
    let from = Version(last.saturating_sub(1_000));
    group.bench_function("pull_in_process_100", |b| {
        b.iter(|| rt.block_on(local.pull(from, 100)).unwrap());
    });
    group.bench_function("pull_loopback_100", |b| {
        b.iter(|| rt.block_on(remote.pull(from, 100)).unwrap());
    });
    group.finish();
}

criterion_group!(benches, loopback);
criterion_main!(benches);
