//! What a network hop costs a stage: the same calls on an in-memory log, in process and
//! through `RemoteLog` over loopback, in one run.
//!
//! - `net/push_in_process`, `net/push_loopback`: one push of a 100-byte batch, one at a time
//!   along the version chain (a lone commit's push); the difference is the round trip.
//! - `net/pull_in_process_100`, `net/pull_loopback_100`: a pull of 100 entries of 100 bytes
//!   (a storage server catching up); throughput in entries.
//! - `net/push_loopback_tls`, `net/pull_loopback_tls_100`: the same over TLS, with the test
//!   certificates of `strata-testkit` (ECDSA P-256, TLS 1.3).
//! - `net/tcp_round_trip_threads`, `net/tcp_round_trip_tasks`: the floor under a call, in the
//!   same run: 100 bytes there and back over loopback TCP, between two blocking threads, and
//!   between two tasks of the runtime the calls run on. Each round trip wakes a sleeping
//!   thread twice, which is most of what a call costs on a small virtual machine.
//!
//! Run: `cargo bench -p strata-net --bench loopback`.

#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::io::{Read, Write};
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

/// A connected pair of loopback sockets, with no delay on either.
fn socket_pair() -> (std::net::TcpStream, std::net::TcpStream) {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let near = std::net::TcpStream::connect(listener.local_addr().unwrap()).unwrap();
    let (far, _) = listener.accept().unwrap();
    near.set_nodelay(true).unwrap();
    far.set_nodelay(true).unwrap();
    (near, far)
}

/// `iters` round trips of [`BATCH`] to a thread that echoes it back; the time taken.
fn round_trips_threads(near: &mut std::net::TcpStream, iters: u64) -> Duration {
    let mut buf = BATCH;
    let start = Instant::now();
    for _ in 0..iters {
        near.write_all(&buf).unwrap();
        near.read_exact(&mut buf).unwrap();
    }
    start.elapsed()
}

/// A socket whose other end is echoed by a task of `rt`.
fn echoed_by_a_task(rt: &tokio::runtime::Runtime) -> tokio::net::TcpStream {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let (near, far) = socket_pair();
    near.set_nonblocking(true).unwrap();
    far.set_nonblocking(true).unwrap();
    rt.block_on(async {
        let mut far = tokio::net::TcpStream::from_std(far).unwrap();
        tokio::spawn(async move {
            let mut buf = BATCH;
            while far.read_exact(&mut buf).await.is_ok() {
                far.write_all(&buf).await.unwrap();
            }
        });
        tokio::net::TcpStream::from_std(near).unwrap()
    })
}

/// `iters` round trips of [`BATCH`] from a task of `rt`; the time taken.
fn round_trips_tasks(
    rt: &tokio::runtime::Runtime,
    near: &mut Option<tokio::net::TcpStream>,
    iters: u64,
) -> Duration {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut socket = near.take().unwrap();
    let (socket, took) = rt.block_on(async move {
        tokio::spawn(async move {
            let mut buf = BATCH;
            let start = Instant::now();
            for _ in 0..iters {
                socket.write_all(&buf).await.unwrap();
                socket.read_exact(&mut buf).await.unwrap();
            }
            (socket, start.elapsed())
        })
        .await
        .unwrap()
    });
    *near = Some(socket);
    took
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
    let (mut near, mut far) = socket_pair();
    std::thread::spawn(move || {
        let mut buf = BATCH;
        while far.read_exact(&mut buf).is_ok() {
            far.write_all(&buf).unwrap();
        }
    });
    group.bench_function("tcp_round_trip_threads", |b| {
        b.iter_custom(|iters| round_trips_threads(&mut near, iters));
    });
    let mut near = Some(echoed_by_a_task(&rt));
    group.bench_function("tcp_round_trip_tasks", |b| {
        b.iter_custom(|iters| round_trips_tasks(&rt, &mut near, iters));
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
