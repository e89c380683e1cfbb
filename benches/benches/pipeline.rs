//! Commits through the whole pipeline, with file logs on this machine's disk.
//!
//! - `pipeline/fsync_floor_4k`: append 4 KiB to a file and `fdatasync` it, in the same run.
//! - `pipeline/commit_1_client`: one client, one write per transaction: latency of a commit
//!   (read version, set, commit: sequencer, resolvers, every log synced, report, answer).
//! - `pipeline/commit_256_clients`: 256 concurrent clients, one write per transaction: commits
//!   per second.
//!
//! - `pipeline/commit_256_clients_3_logs`: the same with the replicated shape (3 logs, 3
//!   storage servers, 2 resolvers, 2 proxies), to show what replication costs on one disk.
//!
//! The cluster is the embedded default (one of each stage) unless named otherwise.
//! Run: `cargo bench -p strata-benches --bench pipeline`.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use strata_benches::{concurrent_writes, fsync_floor_4k, ok, one_write, runtime};
use strata_director::{EmbeddedCluster, EmbeddedConfig};

fn pipeline(c: &mut Criterion) {
    let dir = ok(tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")));
    let mut group = c.benchmark_group("pipeline");
    fsync_floor_4k(&mut group, dir.path());

    let runtime = runtime();
    let replicated = EmbeddedConfig {
        logs: 3,
        storage: 3,
        resolvers: 2,
        proxies: 2,
        ..EmbeddedConfig::default()
    };
    let shapes = [("", EmbeddedConfig::default()), ("_3_logs", replicated)];
    for (suffix, config) in shapes {
        let path = dir.path().join(format!("cluster{suffix}"));
        let cluster = runtime.block_on(async { ok(EmbeddedCluster::start(&path, config).await) });
        let db = cluster.database();
        let next = Arc::new(AtomicU64::new(0));

        if suffix.is_empty() {
            group.throughput(Throughput::Elements(1));
            group.sample_size(100);
            group.bench_function("commit_1_client", |b| {
                b.iter(|| {
                    runtime.block_on(one_write(
                        &db,
                        "bench/",
                        next.fetch_add(1, Ordering::Relaxed),
                    ))
                })
            });
        }

        const CLIENTS: u64 = 256;
        group.throughput(Throughput::Elements(CLIENTS));
        group.sample_size(20);
        group.bench_function(format!("commit_256_clients{suffix}"), |b| {
            b.iter_custom(|iters| {
                runtime.block_on(concurrent_writes(&db, "bench/", CLIENTS, iters, &next))
            })
        });
        drop(db);
        runtime.block_on(cluster.stop());
    }
    group.finish();
}

criterion_group!(benches, pipeline);
criterion_main!(benches);
