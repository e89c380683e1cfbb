//! Strata beside the embedded stores users would pick instead, in one run on one disk: the
//! same durable one-key commit (a 16-byte key, a 100-byte value, on disk before the call
//! returns) by 1 and by 64 concurrent writers.
//!
//! - `compare/strata_1`, `compare/strata_64`: a Strata transaction (read version, set, commit
//!   through the whole pipeline) on the embedded default cluster.
//! - `compare/redb_1`, `compare/redb_64`: a redb write transaction committed with its default,
//!   immediate durability.
//! - `compare/fjall_1`, `compare/fjall_64`: a fjall insert followed by `persist(SyncAll)`.
//! - `compare/rocksdb_1`, `compare/rocksdb_64`: a RocksDB `put` with `sync` set (its write-ahead
//!   log synced before the call returns; concurrent writers share a sync through RocksDB's write
//!   groups). Built only with the `rocksdb` feature, which compiles RocksDB's C++ and needs
//!   libclang (Debian: `apt-get install libclang-dev`); CI never builds it.
//! - `compare/fsync_floor_4k`: append 4 KiB and `fdatasync`, the floor, in the same run.
//!
//! Writers are tasks for Strata and threads for redb and fjall (their APIs block). Each
//! measured iteration is one commit per writer; throughput is commits per second.
//!
//! Run: `cargo bench -p strata-benches --bench compare`, or with RocksDB:
//! `cargo bench -p strata-benches --features rocksdb --bench compare`.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use strata_benches::{fsync_floor_4k, ok, runtime};
use strata_director::{EmbeddedCluster, EmbeddedConfig};

const VALUE: [u8; 100] = [7; 100];
const TABLE: redb::TableDefinition<&[u8], &[u8]> = redb::TableDefinition::new("bench");

fn key(n: u64) -> [u8; 16] {
    let mut k = [0u8; 16];
    k[..8].copy_from_slice(b"compare/");
    k[8..].copy_from_slice(&n.to_be_bytes());
    k
}

/// Runs `commit` from `writers` threads, `iters` times each; the elapsed time.
fn threads(writers: u64, iters: u64, commit: impl Fn(u64) + Sync) -> Duration {
    let next = AtomicU64::new(0);
    let start = Instant::now();
    std::thread::scope(|s| {
        for _ in 0..writers {
            s.spawn(|| {
                for _ in 0..iters {
                    commit(next.fetch_add(1, Ordering::Relaxed));
                }
            });
        }
    });
    start.elapsed()
}

fn compare(c: &mut Criterion) {
    let dir = ok(tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")));
    let mut group = c.benchmark_group("compare");
    group.sample_size(20);

    fsync_floor_4k(&mut group, dir.path());

    // Strata.
    let runtime = runtime();
    let cluster = runtime.block_on(async {
        ok(EmbeddedCluster::start(&dir.path().join("strata"), EmbeddedConfig::default()).await)
    });
    let db = cluster.database();
    let next = Arc::new(AtomicU64::new(0));
    for writers in [1u64, 64] {
        group.throughput(Throughput::Elements(writers));
        group.bench_function(format!("strata_{writers}"), |b| {
            b.iter_custom(|iters| {
                runtime.block_on(async {
                    let start = Instant::now();
                    let tasks: Vec<_> = (0..writers)
                        .map(|_| {
                            let (db, next) = (db.clone(), next.clone());
                            tokio::spawn(async move {
                                for _ in 0..iters {
                                    let n = next.fetch_add(1, Ordering::Relaxed);
                                    let tx = db.begin();
                                    tx.set(
                                        Bytes::copy_from_slice(&key(n)),
                                        Bytes::from_static(&VALUE),
                                    );
                                    ok(tx.commit().await);
                                }
                            })
                        })
                        .collect();
                    for t in tasks {
                        ok(t.await);
                    }
                    start.elapsed()
                })
            })
        });
    }
    drop(db);
    runtime.block_on(cluster.stop());

    // redb: every write transaction commits with immediate durability (its default).
    let redb = ok(redb::Database::create(dir.path().join("redb.redb")));
    for writers in [1u64, 64] {
        group.throughput(Throughput::Elements(writers));
        group.bench_function(format!("redb_{writers}"), |b| {
            b.iter_custom(|iters| {
                threads(writers, iters, |n| {
                    let tx = ok(redb.begin_write());
                    {
                        let mut table = ok(tx.open_table(TABLE));
                        ok(table.insert(&key(n)[..], &VALUE[..]));
                    }
                    ok(tx.commit());
                })
            })
        });
    }
    drop(redb);

    // fjall: each write persisted with SyncAll before the call returns.
    let fjall_db = ok(fjall::Database::builder(dir.path().join("fjall")).open());
    let keyspace = ok(fjall_db.keyspace("bench", fjall::KeyspaceCreateOptions::default));
    for writers in [1u64, 64] {
        group.throughput(Throughput::Elements(writers));
        group.bench_function(format!("fjall_{writers}"), |b| {
            b.iter_custom(|iters| {
                threads(writers, iters, |n| {
                    ok(keyspace.insert(key(n), VALUE));
                    ok(fjall_db.persist(fjall::PersistMode::SyncAll));
                })
            })
        });
    }
    drop(keyspace);
    drop(fjall_db);

    #[cfg(feature = "rocksdb")]
    rocksdb_commits(&mut group, dir.path());

    group.finish();
}

/// RocksDB with its write-ahead log synced on every write: `sync` in the write options, no
/// compression (none is compiled in, and 100-byte values gain nothing from it).
#[cfg(feature = "rocksdb")]
fn rocksdb_commits(
    group: &mut criterion::BenchmarkGroup<'_, criterion::measurement::WallTime>,
    dir: &std::path::Path,
) {
    let mut options = rocksdb::Options::default();
    options.create_if_missing(true);
    options.set_compression_type(rocksdb::DBCompressionType::None);
    let db = ok(rocksdb::DB::open(&options, dir.join("rocksdb")));
    let mut sync = rocksdb::WriteOptions::default();
    sync.set_sync(true);
    for writers in [1u64, 64] {
        group.throughput(Throughput::Elements(writers));
        group.bench_function(format!("rocksdb_{writers}"), |b| {
            b.iter_custom(|iters| threads(writers, iters, |n| ok(db.put_opt(key(n), VALUE, &sync))))
        });
    }
}

criterion_group!(benches, compare);
criterion_main!(benches);
