//! Encode and decode of a typical transaction: 100 mutations (16-byte keys, 100-byte values),
//! 100 read and 100 write conflict ranges. Reported in bytes per second of encoding.
//!
//! Run: `cargo bench -p strata-core --bench wire`.

use std::hint::black_box;

use bytes::Bytes;
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use strata_core::{KeyRange, Mutation, Transaction, Version};

fn key(i: u32) -> Bytes {
    Bytes::from(format!("key/{i:012}"))
}

fn transaction() -> Transaction {
    Transaction {
        read_version: Some(Version(1_234_567)),
        read_conflicts: (0..100).map(|i| KeyRange::single(key(i))).collect(),
        write_conflicts: (100..200).map(|i| KeyRange::single(key(i))).collect(),
        mutations: (100..200)
            .map(|i| Mutation::Set {
                key: key(i),
                value: Bytes::from(vec![b'v'; 100]),
            })
            .collect(),
    }
}

fn wire(c: &mut Criterion) {
    let tx = transaction();
    let Ok(encoded) = tx.encode() else {
        panic!("the bench transaction is within limits");
    };
    let mut group = c.benchmark_group("wire");
    group.throughput(Throughput::Bytes(encoded.len() as u64));
    group.bench_function("encode_100", |b| b.iter(|| black_box(&tx).encode()));
    group.bench_function("decode_100", |b| {
        b.iter(|| Transaction::decode(black_box(&encoded)))
    });
    // The zero-copy path the pipeline's stages use: keys and values share the buffer.
    group.bench_function("decode_bytes_100", |b| {
        b.iter(|| Transaction::decode_bytes(black_box(encoded.clone())))
    });
    group.finish();
}

criterion_group!(benches, wire);
criterion_main!(benches);
