//! What a network hop costs a stage: the same calls on an in-memory log, in process and
//! through `RemoteLog` over loopback, in one run.
//!
//! - `net/push_in_process`, `net/push_loopback`: one push of a 100-byte batch, one at a time
//!   along the version chain (a lone commit's push); the difference is the round trip.
//! - `net/pull_in_process_100`, `net/pull_loopback_100`: a pull of 100 entries of 100 bytes
//!   (a storage server catching up); throughput in entries.
//! - `net/push_loopback_tls`, `net/pull_loopback_tls_100`: the same over TLS, with the test
//!   certificates of `strata-testkit` (ECDSA P-256, TLS 1.3).
//!
//! Run: `cargo bench -p strata-net --bench loopback`.

#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use strata_core::{Epoch, LogId, LogServer, Version};
use strata_net::{Access, ClusterId, Exposure, RemoteLog, Stages, Tls};
use strata_testkit::{MemoryLog, certs};

const BATCH: [u8; 100] = [7; 100];

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

/// Pushes `iters` batches after `last`, one at a time, from a task of the runtime (as a
/// commit proxy's batch would, never from a thread blocking on it, whose every wake-up would
/// cross threads); the time taken.
fn pushes(
    rt: &tokio::runtime::Runtime,
    log: Arc<dyn LogServer>,
    last: &mut u64,
    iters: u64,
) -> Duration {
    let first = *last;
    *last += iters;
    rt.block_on(async move {
        tokio::spawn(async move {
            let start = Instant::now();
            for n in first..first + iters {
                log.push(
                    Epoch(1),
                    Version(n),
                    Version(n + 1),
                    Bytes::from_static(&BATCH),
                )
                .await
                .unwrap();
            }
            start.elapsed()
        })
        .await
        .unwrap()
    })
}

/// Pulls 100 entries after `from`, `iters` times, from a task of the runtime; the time taken.
fn pulls(
    rt: &tokio::runtime::Runtime,
    log: Arc<dyn LogServer>,
    from: Version,
    iters: u64,
) -> Duration {
    rt.block_on(async move {
        tokio::spawn(async move {
            let start = Instant::now();
            for _ in 0..iters {
                assert_eq!(log.pull(from, 100).await.unwrap().len(), 100);
            }
            start.elapsed()
        })
        .await
        .unwrap()
    })
}

/// `log`, served on a loopback port of its own with `access`, and a client of it.
fn served(rt: &tokio::runtime::Runtime, log: Arc<MemoryLog>, access: Access) -> RemoteLog {
    rt.block_on(async {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap().to_string();
        let stages = Stages {
            logs: vec![log],
            ..Stages::default()
        };
        let (_, published) = tokio::sync::watch::channel(Arc::new(stages));
        tokio::spawn(strata_net::serve(
            access.clone(),
            Exposure::Everything,
            published,
            listener,
            std::future::pending(),
        ));
        RemoteLog::connect(&address, access, LogId(1))
            .await
            .unwrap()
    })
}

fn loopback(c: &mut Criterion) {
    let rt = runtime();
    let cluster = ClusterId::new("bench").unwrap();
    let local: Arc<MemoryLog> = Arc::new(MemoryLog::new(LogId(1), Version(0)));
    let remote = served(&rt, local.clone(), cluster.clone().into());
    let tls = Tls::from_pem(certs::CA, certs::NODE_CERT, certs::NODE_KEY).unwrap();
    let remote_tls = served(&rt, local.clone(), Access::new(cluster, Some(tls)));

    let mut group = c.benchmark_group("net");
    let mut last = 0u64;
    let (local, remote): (Arc<dyn LogServer>, Arc<dyn LogServer>) = (local, Arc::new(remote));
    let remote_tls: Arc<dyn LogServer> = Arc::new(remote_tls);
    group.throughput(Throughput::Elements(1));
    group.bench_function("push_in_process", |b| {
        b.iter_custom(|iters| pushes(&rt, local.clone(), &mut last, iters));
    });
    group.bench_function("push_loopback", |b| {
        b.iter_custom(|iters| pushes(&rt, remote.clone(), &mut last, iters));
    });
    group.bench_function("push_loopback_tls", |b| {
        b.iter_custom(|iters| pushes(&rt, remote_tls.clone(), &mut last, iters));
    });

    group.throughput(Throughput::Elements(100));
    let from = Version(last.saturating_sub(1_000));
    group.bench_function("pull_in_process_100", |b| {
        b.iter_custom(|iters| pulls(&rt, local.clone(), from, iters));
    });
    group.bench_function("pull_loopback_100", |b| {
        b.iter_custom(|iters| pulls(&rt, remote.clone(), from, iters));
    });
    group.bench_function("pull_loopback_tls_100", |b| {
        b.iter_custom(|iters| pulls(&rt, remote_tls.clone(), from, iters));
    });
    group.finish();
}

criterion_group!(benches, loopback);
criterion_main!(benches);
