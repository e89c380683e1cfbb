//! Resolver throughput in FoundationDB's shape: batches of 2,500 transactions, each with one
//! read and one write range 1 to 11 keys wide, over uniform keys in [0, 20,000,000).
//!
//! Versions move as they would at the target rate: 1,000,000 versions a second and one batch
//! every 1.25 ms (2,000,000 transactions a second), so each batch is 1,250 versions after the
//! last and the 5,000,000-version window holds 4,000 batches (10,000,000 transactions). The
//! history is filled to that steady state before measuring. Read versions lag the batch by 0 to
//! 5 batches, as reads a few milliseconds old do. Keys are 8-byte big-endian integers.
//!
//! Run: `cargo bench -p strata-resolver --bench resolve`.

use std::hint::black_box;
use std::time::Instant;

use bytes::Bytes;
use criterion::{BatchSize, Criterion, Throughput, criterion_group, criterion_main};
use strata_core::{
    Epoch, KeyRange, MVCC_WINDOW_VERSIONS, ResolveBatch, Resolver, TransactionConflicts, Verdict,
    Version,
};
use strata_resolver::{ResolverConfig, WindowResolver};
use strata_testkit::rng::SplitMix64;

const BATCH_TRANSACTIONS: usize = 2_500;
const KEY_SPACE: u64 = 20_000_000;
const VERSIONS_PER_BATCH: u64 = 1_250;
const READ_LAG_BATCHES_MAX: u64 = 5;

/// One conflict range 1–11 keys wide over uniform keys in `[0, KEY_SPACE)`.
fn range(rng: &mut SplitMix64) -> KeyRange {
    let begin = rng.below(KEY_SPACE);
    let width = 1 + rng.below(11);
    let key = |k: u64| Bytes::copy_from_slice(&k.to_be_bytes());
    match KeyRange::new(key(begin), key(begin + width)) {
        Ok(r) => r,
        Err(e) => panic!("bench keys ascend: {e}"),
    }
}

struct Workload {
    rng: SplitMix64,
    version: u64,
}

impl Workload {
    fn batch(&mut self) -> ResolveBatch {
        let previous = self.version;
        self.version += VERSIONS_PER_BATCH;
        let transactions = (0..BATCH_TRANSACTIONS)
            .map(|_| {
                let lag = self.rng.below(READ_LAG_BATCHES_MAX + 1) * VERSIONS_PER_BATCH;
                TransactionConflicts {
                    read_version: Some(Version(previous.saturating_sub(lag))),
                    read_conflicts: vec![range(&mut self.rng)],
                    write_conflicts: vec![range(&mut self.rng)],
                }
            })
            .collect();
        ResolveBatch {
            epoch: Epoch(1),
            previous_version: Version(previous),
            version: Version(self.version),
            transactions,
        }
    }
}

fn resolve(c: &mut Criterion) {
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => panic!("tokio runtime: {e}"),
    };
    let resolver = WindowResolver::new(Epoch(1), Version(0), ResolverConfig::default());
    let mut work = Workload {
        rng: SplitMix64(0x5eed),
        version: 0,
    };
    let run = |resolver: &WindowResolver, batch: ResolveBatch| match runtime
        .block_on(resolver.resolve(batch))
    {
        Ok(v) => v,
        Err(e) => panic!("resolve failed: {e}"),
    };

    // Fill the window to its steady state: 4,000 batches, 10,000,000 transactions.
    let fill_batches = MVCC_WINDOW_VERSIONS / VERSIONS_PER_BATCH;
    let started = Instant::now();
    let mut verdicts = [0usize; 3];
    for _ in 0..fill_batches {
        for v in run(&resolver, work.batch()) {
            verdicts[match v {
                Verdict::Committed => 0,
                Verdict::Conflict => 1,
                Verdict::TooOld { .. } => 2,
            }] += 1;
        }
    }
    let elapsed = started.elapsed();
    let filled = fill_batches as usize * BATCH_TRANSACTIONS;
    println!(
        "fill: {filled} transactions in {:.2} s ({:.0} transactions/s); committed {}, conflict {}, too old {}",
        elapsed.as_secs_f64(),
        filled as f64 / elapsed.as_secs_f64(),
        verdicts[0],
        verdicts[1],
        verdicts[2],
    );

    let mut group = c.benchmark_group("resolver");
    group.throughput(Throughput::Elements(BATCH_TRANSACTIONS as u64));
    group.bench_function("fdb_shape_2500", |b| {
        b.iter_batched(
            || work.batch(),
            |batch| black_box(run(&resolver, batch)),
            BatchSize::LargeInput,
        )
    });
    group.finish();

    match resolver.stats() {
        Ok(s) => println!(
            "history at steady state: {} runs, {} boundaries, {:.1} MiB, {:.1} bytes per boundary \
             (8-byte keys; a write range adds about two boundaries)",
            s.runs,
            s.boundaries,
            s.memory_bytes as f64 / (1024.0 * 1024.0),
            s.memory_bytes as f64 / s.boundaries.max(1) as f64,
        ),
        Err(e) => panic!("stats: {e}"),
    }
}

criterion_group!(benches, resolve);
criterion_main!(benches);
