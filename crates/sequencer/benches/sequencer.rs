//! The cost of handing out one commit version.
//!
//! Run: `cargo bench -p strata-sequencer --bench sequencer`.

use std::hint::black_box;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use strata_core::{Epoch, Sequencer, Version};
use strata_sequencer::ClockSequencer;

fn sequencer(c: &mut Criterion) {
    let runtime = match tokio::runtime::Builder::new_current_thread().build() {
        Ok(rt) => rt,
        Err(e) => panic!("{e}"),
    };
    let seq = ClockSequencer::new(Epoch(1), Version(0));
    let mut group = c.benchmark_group("sequencer");
    group.throughput(Throughput::Elements(1));
    group.bench_function("next_commit_version", |b| {
        b.iter(|| black_box(runtime.block_on(seq.next_commit_version(Epoch(1)))))
    });
    group.finish();
}

criterion_group!(benches, sequencer);
criterion_main!(benches);
