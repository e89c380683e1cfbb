//! A whole commit pipeline spread over three servers on loopback, every stage reached through
//! its remote client: logs on one server; the sequencer and resolvers on a second; on a third,
//! a commit proxy built over the remote sequencer, resolvers and logs, and storage servers
//! that follow the remote logs. A client's `Database` composes the remote proxy, storage and
//! sequencer, and must see what a local one would: every acknowledged increment, no lost
//! update, over a history many times longer than the storage window and a pull's cap, with
//! the logs popped through the network as storage makes versions durable.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use strata_commit_proxy::{BatchingProxy, ProxyConfig};
use strata_core::{
    CommitProxy, Epoch, ErrorKind, Key, KeyRange, LogId, LogServer, Resolver, Sequencer,
    StorageServer, Version,
};
use strata_net::{PULL_ENTRIES_MAX, RemoteLog, RemoteSequencer, Stages};
use strata_resolver::{ResolverConfig, WindowResolver};
use strata_sequencer::ClockSequencer;
use strata_storage::{RedbStorage, StorageConfig};
use strata_tlog::{FileLog, FileLogConfig};
use strata_txn_builder::{Database, RetryConfig};

mod common;
use common::{Served, cluster};

const CLUSTER: &str = "t-pipeline";
const KEYS: u64 = 40;

fn key(i: u64) -> Key {
    // Half the keys below 0x80, half above: both storage servers and both resolvers work.
    let first = if i.is_multiple_of(2) { b'a' } else { 0x90 };
    Bytes::from(vec![
        first,
        b'/',
        b'0' + (i / 10) as u8,
        b'0' + (i % 10) as u8,
    ])
}

fn counter(value: Option<Bytes>) -> u64 {
    value.map_or(0, |v| u64::from_le_bytes(v.as_ref().try_into().unwrap()))
}

/// The logs' server: two file logs with small segments.
async fn log_server(dir: &std::path::Path) -> (Served, Vec<Arc<FileLog>>) {
    let config = FileLogConfig {
        segment_bytes: 32 << 10,
        ..FileLogConfig::default()
    };
    let logs: Vec<Arc<FileLog>> = (0..2)
        .map(|i| {
            let dir = dir.join(format!("log-{i}"));
            Arc::new(FileLog::open(&dir, LogId(i), Version(0), config).unwrap())
        })
        .collect();
    let stages = Stages {
        logs: logs
            .iter()
            .map(|l| l.clone() as Arc<dyn LogServer>)
            .collect(),
        ..Stages::default()
    };
    (Served::start(stages, CLUSTER).await, logs)
}

/// The sequencer and two resolvers, on their own server.
async fn versions_server(epoch: Epoch) -> (Served, Arc<ClockSequencer>) {
    let sequencer = Arc::new(ClockSequencer::new(epoch, Version(0)));
    let resolvers: Vec<Arc<dyn Resolver>> = (0..2)
        .map(|_| {
            Arc::new(WindowResolver::new(
                epoch,
                Version(0),
                ResolverConfig::default(),
            )) as Arc<dyn Resolver>
        })
        .collect();
    let stages = Stages {
        sequencer: Some(sequencer.clone()),
        resolvers,
        ..Stages::default()
    };
    (Served::start(stages, CLUSTER).await, sequencer)
}

/// The two halves of the key space, one per storage server.
fn halves() -> [KeyRange; 2] {
    [
        KeyRange::new(Key::new(), Bytes::from_static(&[0x80])).unwrap(),
        KeyRange::new(Bytes::from_static(&[0x80]), Bytes::from_static(&[0xff; 4])).unwrap(),
    ]
}

/// A storage window of 20 ms of versions: the history of the test is hundreds of windows long.
const STORAGE_WINDOW_VERSIONS: u64 = 20_000;

/// The third server: a commit proxy over the remote sequencer, resolvers and logs, and two
/// storage servers that follow the remote logs.
async fn front_server(
    dir: &std::path::Path,
    epoch: Epoch,
    versions: &Stages,
    logs: &[Arc<dyn LogServer>],
) -> (Served, Vec<Arc<RedbStorage>>) {
    let begins = [Key::new(), Bytes::from_static(&[0x80])];
    let proxy = BatchingProxy::new(
        epoch,
        versions.sequencer.clone().unwrap(),
        begins
            .iter()
            .cloned()
            .zip(versions.resolvers.clone())
            .collect(),
        logs.to_vec(),
        ProxyConfig::default(),
    )
    .unwrap();
    let storage_config = StorageConfig {
        window_versions: STORAGE_WINDOW_VERSIONS,
        flush_interval: Duration::from_millis(10),
        pull_limit: 10_000,
        pop_log: false,
        ..StorageConfig::default()
    };
    let halves = halves();
    let mut storage = Vec::new();
    for (i, half) in halves.iter().enumerate() {
        let path = dir.join(format!("storage-{i}.redb"));
        let server = RedbStorage::open(&path, vec![half.clone()], logs[i].clone(), storage_config)
            .await
            .unwrap();
        storage.push(Arc::new(server));
    }
    let served = Served::start(
        Stages {
            proxies: vec![Arc::new(proxy)],
            storage: storage
                .iter()
                .map(|s| s.clone() as Arc<dyn StorageServer>)
                .collect(),
            ..Stages::default()
        },
        CLUSTER,
    )
    .await;

    (served, storage)
}

/// The director's watermark, through the network: committed versions to storage, and the logs
/// popped below what every storage server made durable.
fn watermark(
    sequencer: RemoteSequencer,
    storage: Vec<Arc<RedbStorage>>,
    logs: Vec<Arc<dyn LogServer>>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        loop {
            tokio::time::sleep(Duration::from_millis(10)).await;
            let committed = sequencer.read_version().await.unwrap();
            let mut oldest = committed;
            for s in &storage {
                s.advance_committed(committed);
                oldest = oldest.min(s.durable_version().await.unwrap());
            }
            for log in &logs {
                log.pop(oldest).await.unwrap();
            }
        }
    })
}

/// Runs 8 clients of 300 increments each, every one retried until it commits; returns how
/// many were acknowledged.
async fn increments(db: &Database) -> u64 {
    let acknowledged = Arc::new(AtomicU64::new(0));
    let mut clients = Vec::new();
    for c in 0..8u64 {
        let db = db.clone();
        let acknowledged = acknowledged.clone();
        clients.push(tokio::spawn(async move {
            for n in 0..300u64 {
                let k = key((c * 7 + n * 13) % KEYS);
                db.run(|tx| {
                    let k = k.clone();
                    async move {
                        let now = counter(tx.get(&k).await?);
                        tx.set(k, Bytes::copy_from_slice(&(now + 1).to_le_bytes()));
                        Ok(())
                    }
                })
                .await
                .unwrap();
                acknowledged.fetch_add(1, Ordering::SeqCst);
            }
        }));
    }
    for client in clients {
        client.await.unwrap();
    }
    acknowledged.load(Ordering::SeqCst)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pipeline_of_remote_stages_keeps_every_acknowledged_increment() {
    let dir = tempfile::tempdir().unwrap();
    let (logs_server, local_logs) = log_server(dir.path()).await;

    let epoch = Epoch(1);
    let (versions_server, sequencer) = versions_server(epoch).await;

    // The third server's stages, built over remote ones.
    let logs = Stages::connect(&logs_server.address, cluster(CLUSTER))
        .await
        .unwrap()
        .logs;
    assert_eq!(
        logs.iter().map(|l| l.id()).collect::<Vec<_>>(),
        [LogId(0), LogId(1)]
    );
    let versions = Stages::connect(&versions_server.address, cluster(CLUSTER))
        .await
        .unwrap();
    let remote_sequencer = versions.sequencer.clone().unwrap();
    assert_eq!(remote_sequencer.epoch(), epoch);
    let (front_server, storage) = front_server(dir.path(), epoch, &versions, &logs).await;

    let watermark = watermark(
        RemoteSequencer::connect(&versions_server.address, cluster(CLUSTER))
            .await
            .unwrap(),
        storage.clone(),
        logs.clone(),
    );

    // The client: everything remote.
    let front = Stages::connect(&front_server.address, cluster(CLUSTER))
        .await
        .unwrap();
    assert!(front.sequencer.is_none());
    assert_eq!(front.storage.len(), 2);
    assert_eq!(front.storage[1].shards(), vec![halves()[1].clone()]);
    let db = Database::new(
        remote_sequencer.clone(),
        front.proxies.clone(),
        front.storage.clone(),
        RetryConfig::default(),
    )
    .unwrap();

    let acknowledged = increments(&db).await;
    assert_eq!(acknowledged, 2_400);

    // Every increment is there, read back both ways: key by key, and by range reads of each
    // half, through the remote storage servers.
    let tx = db.begin();
    let mut by_key = 0;
    for i in 0..KEYS {
        by_key += counter(tx.get(&key(i)).await.unwrap());
    }
    assert_eq!(by_key, acknowledged);
    let mut by_range = 0;
    for half in &halves() {
        let pairs = tx.get_range(half, 1_000, false).await.unwrap();
        by_range += pairs
            .into_iter()
            .map(|(_, v)| counter(Some(v)))
            .sum::<u64>();
    }
    assert_eq!(by_range, acknowledged);

    // The history crossed many pulls' worth of entries and was popped through the network.
    let newest = sequencer.read_version().await.unwrap();
    assert!(newest.0 > 20 * STORAGE_WINDOW_VERSIONS, "{newest}");
    let held = local_logs[0].pull(Version(0), usize::MAX).await;
    match held {
        Err(e) => assert!(matches!(e.kind, ErrorKind::TooOld { .. }), "{e}"),
        Ok(entries) => assert!(entries.len() < PULL_ENTRIES_MAX, "{}", entries.len()),
    }
    assert!(local_logs[0].last_version() >= newest);

    watermark.abort();
    front_server.stop().await;
    for s in &storage {
        s.close().await;
    }
    versions_server.stop().await;
    logs_server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_remote_stage_of_an_epoch_the_server_no_longer_runs_is_unavailable() {
    let epoch_one = Arc::new(ClockSequencer::new(Epoch(1), Version(0)));
    let served = Served::start(
        Stages {
            sequencer: Some(epoch_one.clone()),
            ..Stages::default()
        },
        CLUSTER,
    )
    .await;
    let remote = RemoteSequencer::connect(&served.address, cluster(CLUSTER))
        .await
        .unwrap();
    assert_eq!(remote.epoch(), Epoch(1));
    let pair = remote.next_commit_version(Epoch(1)).await.unwrap();
    remote
        .report_committed(Epoch(1), pair.version)
        .await
        .unwrap();
    assert_eq!(remote.read_version().await.unwrap(), pair.version);
    assert_eq!(epoch_one.read_version().await.unwrap(), pair.version);

    // Between two epochs: nothing served, every call unavailable.
    served.publish.send_replace(Arc::new(Stages::default()));
    let e = remote.read_version().await.unwrap_err();
    assert!(matches!(e.kind, ErrorKind::Unavailable(_)), "{e}");
    let e = RemoteSequencer::connect(&served.address, cluster(CLUSTER))
        .await
        .unwrap_err();
    assert!(matches!(e.kind, ErrorKind::Unavailable(_)), "{e}");

    // Epoch 2 from the recovery version: the old epoch's requests are fenced by the new
    // sequencer. Its read versions are not given to epoch 1's client: the versions epoch 1
    // handed out above the recovery version were discarded, and a reader that took epoch 2's
    // newer versions as epoch 1's (a storage server told what is committed, say) would keep
    // them. As in process, a stopped sequencer's reads are unavailable.
    let epoch_two = Arc::new(ClockSequencer::new(Epoch(2), pair.version));
    served.publish.send_replace(Arc::new(Stages {
        sequencer: Some(epoch_two.clone()),
        ..Stages::default()
    }));
    let e = remote.next_commit_version(Epoch(1)).await.unwrap_err();
    assert!(
        matches!(
            e.kind,
            ErrorKind::Fenced {
                request: Epoch(1),
                current: Epoch(2)
            }
        ),
        "{e}"
    );
    let e = remote.read_version().await.unwrap_err();
    assert!(matches!(e.kind, ErrorKind::Unavailable(_)), "{e}");
    assert!(e.to_string().contains("epoch 2"), "{e}");
    // A client of epoch 2 reads it.
    let now = RemoteSequencer::connect(&served.address, cluster(CLUSTER))
        .await
        .unwrap();
    assert_eq!(now.epoch(), Epoch(2));
    assert!(now.read_version().await.unwrap() >= pair.version);
    served.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stage_not_served_is_refused_by_index_or_id() {
    let dir = tempfile::tempdir().unwrap();
    let (served, _logs) = log_server(dir.path()).await;
    let stages = Stages::connect(&served.address, cluster(CLUSTER))
        .await
        .unwrap();
    assert!(stages.proxies.is_empty() && stages.storage.is_empty());
    // No proxy at all here: unavailable (it may come with the next epoch).
    let e = strata_net::RemoteProxy::connect(&served.address, cluster(CLUSTER), 0)
        .await
        .unwrap_err();
    assert!(matches!(e.kind, ErrorKind::Unavailable(_)), "{e}");
    // Logs are, but not log 5: refused.
    let e = RemoteLog::connect(&served.address, cluster(CLUSTER), LogId(5))
        .await
        .unwrap_err();
    assert!(matches!(e.kind, ErrorKind::InvalidRequest(_)), "{e}");
    assert!(e.to_string().contains("log 0, log 1"), "{e}");
    let e = strata_net::RemoteResolver::connect(&served.address, cluster(CLUSTER), 0)
        .await
        .unwrap_err();
    assert!(matches!(e.kind, ErrorKind::InvalidRequest(_)), "{e}");
    served.stop().await;
}

/// A commit proxy that answers with the version it was given, to check what a commit carries
/// across.
struct Echo(AtomicU64, Epoch);

#[async_trait::async_trait]
impl CommitProxy for Echo {
    fn epoch(&self) -> Epoch {
        self.1
    }

    async fn commit(&self, transaction: Bytes) -> strata_core::Result<Version> {
        self.0.fetch_add(1, Ordering::SeqCst);
        Ok(Version(transaction.len() as u64))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn proxies_are_reached_by_index_with_their_own_epoch() {
    let echo = || Arc::new(Echo(AtomicU64::new(0), Epoch(4)));
    let (a, b) = (echo(), echo());
    let served = Served::start(
        Stages {
            proxies: vec![a.clone(), b.clone()],
            ..Stages::default()
        },
        CLUSTER,
    )
    .await;
    let remote = strata_net::RemoteProxy::connect(&served.address, cluster(CLUSTER), 1)
        .await
        .unwrap();
    assert_eq!(remote.epoch(), Epoch(4));
    // The server decodes each transaction before the proxy sees it: the echo gets it
    // encoded again, byte for byte the same length.
    let sized = |n: usize| {
        strata_core::Transaction {
            mutations: vec![strata_core::Mutation::Set {
                key: Bytes::from_static(b"k"),
                value: Bytes::from(vec![7u8; n]),
            }],
            ..strata_core::Transaction::default()
        }
        .encode()
        .unwrap()
    };
    let transaction = sized(1234);
    let v = remote.commit(transaction.clone()).await.unwrap();
    assert_eq!(v, Version(transaction.len() as u64));
    assert_eq!(
        (a.0.load(Ordering::SeqCst), b.0.load(Ordering::SeqCst)),
        (0, 1)
    );
    let e = strata_net::RemoteProxy::connect(&served.address, cluster(CLUSTER), 2)
        .await
        .unwrap_err();
    assert!(matches!(e.kind, ErrorKind::InvalidRequest(_)), "{e}");
    // Larger than any transaction: refused before the proxy.
    let e = remote
        .commit(Bytes::from(vec![
            0u8;
            strata_core::TRANSACTION_BYTES_MAX + 1
        ]))
        .await
        .unwrap_err();
    assert!(matches!(e.kind, ErrorKind::InvalidRequest(_)), "{e}");
    assert_eq!(b.0.load(Ordering::SeqCst), 1);

    // Concurrent commits share calls, each with its own outcome.
    let commits: Vec<_> = (1..=200usize)
        .map(|n| {
            let (remote, transaction) = (remote.clone(), sized(n));
            tokio::spawn(async move { remote.commit(transaction).await })
        })
        .collect();
    for (n, commit) in (1..=200usize).zip(commits) {
        let length = sized(n).len() as u64;
        assert_eq!(commit.await.unwrap().unwrap(), Version(length));
    }
    assert_eq!(b.0.load(Ordering::SeqCst), 201);

    // After a recovery the server runs epoch 5's proxy: epoch 4's client is not let commit
    // through it, and is fenced even though epoch 5 runs no proxy of its index (a client
    // that follows recoveries retries only what was fenced).
    let next = Arc::new(Echo(AtomicU64::new(0), Epoch(5)));
    served.publish.send_replace(Arc::new(Stages {
        proxies: vec![next.clone()],
        ..Stages::default()
    }));
    let e = remote
        .commit(Bytes::from_static(b"late"))
        .await
        .unwrap_err();
    // Fenced, as a proxy is once a newer epoch took over, and definitely not done: nothing
    // reached a proxy.
    assert!(
        matches!(
            e.kind,
            ErrorKind::Fenced {
                request: Epoch(4),
                current: Epoch(5)
            }
        ),
        "{e}"
    );
    assert_eq!(next.0.load(Ordering::SeqCst), 0);
    served.stop().await;
}
