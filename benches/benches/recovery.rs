//! Recovery timings.
//!
//! - `recovery/full_3_logs`: a whole recovery (3 logs, 3 storage servers, 2 resolvers, 2
//!   proxies) through the persistence phase, of a directory whose only history is the system
//!   transaction of the epoch before: every phase has real work (previous logs to lock, a
//!   history to replay, storage to roll back). Each iteration prepares a fresh directory with
//!   one recovery first; only the second is timed.
//! - `recovery/persistence_phase`: the persistence phase alone, as timed by the director's own
//!   phase span inside each of those recoveries.
//!
//! Run: `cargo bench -p strata-benches --bench recovery`.

use std::time::{Duration, Instant};

use criterion::{Criterion, criterion_group, criterion_main};
use strata_benches::{ok, runtime};
use strata_director::{EmbeddedCluster, EmbeddedConfig};

fn recovery(c: &mut Criterion) {
    let dir = ok(tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")));
    let runtime = runtime();
    let config = EmbeddedConfig {
        logs: 3,
        storage: 3,
        resolvers: 2,
        proxies: 2,
        ..EmbeddedConfig::default()
    };
    // One timed recovery per iteration, of a directory prepared (untimed) by one recovery;
    // returns (whole recovery, persistence phase).
    let recover_once = || {
        runtime.block_on(async {
            let fresh = ok(tempfile::tempdir_in(dir.path()));
            let (first, _) = ok(EmbeddedCluster::start_with_report(fresh.path(), config).await);
            first.stop().await;
            let started = Instant::now();
            let (cluster, report) =
                ok(EmbeddedCluster::start_with_report(fresh.path(), config).await);
            let whole = started.elapsed();
            cluster.stop().await;
            let persistence = report
                .phases
                .iter()
                .find(|p| p.phase == "persistence_phase")
                .map_or(Duration::ZERO, |p| Duration::from_micros(p.micros));
            (whole, persistence)
        })
    };
    let mut group = c.benchmark_group("recovery");
    group.sample_size(30);
    group.bench_function("full_3_logs", |b| {
        b.iter_custom(|iters| (0..iters).map(|_| recover_once().0).sum())
    });
    group.bench_function("persistence_phase", |b| {
        b.iter_custom(|iters| (0..iters).map(|_| recover_once().1).sum())
    });
    group.finish();
}

criterion_group!(benches, recovery);
criterion_main!(benches);
