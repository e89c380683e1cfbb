//! How cost grows.
//!
//! - `curve/clients_<n>`: commits per second with n concurrent clients (1 to 1,024), one
//!   100-byte write per transaction, on the embedded default cluster.
//! - `curve/recovery_history_<n>`: a recovery whose new logs must replay n committed batches
//!   (none of them durable in storage yet), through the persistence phase.
//! - `curve/persistence_layout_<n>`: the persistence phase of a cluster with n logs and n
//!   storage servers (the layout it writes grows with them), from the director's phase timing.
//!
//! Run: `cargo bench -p strata-benches --bench curves`.

use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::time::{Duration, Instant};

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use strata_benches::{concurrent_writes, ok, one_write, runtime};
use strata_director::{EmbeddedCluster, EmbeddedConfig};

fn clients(c: &mut Criterion) {
    let dir = ok(tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")));
    let rt = runtime();
    let cluster = rt.block_on(async {
        ok(EmbeddedCluster::start(dir.path(), EmbeddedConfig::default()).await)
    });
    let db = cluster.database();
    let next = Arc::new(AtomicU64::new(0));
    let mut group = c.benchmark_group("curve");
    group.sample_size(10);
    for n in [1u64, 4, 16, 64, 256, 1024] {
        group.throughput(Throughput::Elements(n));
        group.bench_function(format!("clients_{n}"), |b| {
            b.iter_custom(|iters| rt.block_on(concurrent_writes(&db, "curve/", n, iters, &next)))
        });
    }
    group.finish();
    drop(db);
    rt.block_on(cluster.stop());
}

fn recovery_history(c: &mut Criterion) {
    let root = ok(tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")));
    let rt = runtime();
    let mut group = c.benchmark_group("curve");
    group.sample_size(10);
    for history in [0u64, 1_000, 10_000] {
        group.bench_function(format!("recovery_history_{history}"), |b| {
            b.iter_custom(|iters| {
                let mut total = Duration::ZERO;
                for _ in 0..iters {
                    total += rt.block_on(async {
                        let dir = ok(tempfile::tempdir_in(root.path()));
                        let cluster =
                            ok(EmbeddedCluster::start(dir.path(), EmbeddedConfig::default()).await);
                        let db = cluster.database();
                        // One client: each commit is a batch of its own, so `history` batches.
                        for n in 0..history {
                            one_write(&db, "curve/", n).await;
                        }
                        drop(db);
                        cluster.stop().await;
                        let start = Instant::now();
                        let again =
                            ok(EmbeddedCluster::start(dir.path(), EmbeddedConfig::default()).await);
                        let took = start.elapsed();
                        again.stop().await;
                        took
                    });
                }
                total
            })
        });
    }
    group.finish();
}

fn persistence_layout(c: &mut Criterion) {
    let root = ok(tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")));
    let rt = runtime();
    let mut group = c.benchmark_group("curve");
    group.sample_size(10);
    for size in [1usize, 4, 8] {
        let config = EmbeddedConfig {
            logs: size,
            storage: size,
            ..EmbeddedConfig::default()
        };
        group.bench_function(format!("persistence_layout_{size}"), |b| {
            b.iter_custom(|iters| {
                let mut total = Duration::ZERO;
                for _ in 0..iters {
                    total += rt.block_on(async {
                        let dir = ok(tempfile::tempdir_in(root.path()));
                        let (cluster, report) =
                            ok(EmbeddedCluster::start_with_report(dir.path(), config).await);
                        cluster.stop().await;
                        report
                            .phases
                            .iter()
                            .find(|p| p.phase == "persistence_phase")
                            .map_or(Duration::ZERO, |p| Duration::from_micros(p.micros))
                    });
                }
                total
            })
        });
    }
    group.finish();
}

criterion_group!(benches, clients, recovery_history, persistence_layout);
criterion_main!(benches);
