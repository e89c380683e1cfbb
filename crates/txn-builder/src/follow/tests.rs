//! A database following a cluster of fake epochs: each epoch's stages share the cluster's one
//! map, and an epoch can be ended (its reads unavailable, its commits fenced by the proxy's
//! stage, as a server refuses an older epoch's) or given a commit failure of its own.

#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicUsize};

use bytes::Bytes;
use strata_core::{Epoch, Key, KeyRange, RangeRead, Value, Version, VersionPair};

use super::*;
use crate::Database;

type Map = Arc<Mutex<BTreeMap<Key, Value>>>;

/// One epoch's sequencer, proxy and storage server.
struct FakeEpoch {
    number: u64,
    map: Map,
    ended: AtomicBool,
    /// What every commit fails with, when set.
    commit_failure: Mutex<Option<Error>>,
    commits: AtomicUsize,
}

impl FakeEpoch {
    fn end(&self) {
        self.ended.store(true, Ordering::SeqCst);
    }

    fn fail_commits(&self, stage: Stage, kind: ErrorKind) {
        *self.commit_failure.lock().unwrap() = Some(Error::new(stage, kind));
    }

    fn unavailable(&self, stage: Stage) -> Result<()> {
        if self.ended.load(Ordering::SeqCst) {
            return Err(Error::new(
                stage,
                ErrorKind::Unavailable(format!("epoch {} is over", self.number)),
            ));
        }
        Ok(())
    }
}

#[async_trait]
impl Sequencer for FakeEpoch {
    fn epoch(&self) -> Epoch {
        Epoch(self.number)
    }

    async fn next_commit_version(&self, _epoch: Epoch) -> Result<VersionPair> {
        Err(Error::new(
            Stage::Sequencer,
            ErrorKind::Unavailable("not in this test".into()),
        ))
    }

    async fn report_committed(&self, _epoch: Epoch, _version: Version) -> Result<()> {
        Err(Error::new(
            Stage::Sequencer,
            ErrorKind::Unavailable("not in this test".into()),
        ))
    }

    async fn read_version(&self) -> Result<Version> {
        self.unavailable(Stage::Sequencer)?;
        Ok(Version(self.number * 1_000))
    }
}

#[async_trait]
impl CommitProxy for FakeEpoch {
    fn epoch(&self) -> Epoch {
        Epoch(self.number)
    }

    async fn commit(&self, transaction: Bytes) -> Result<Version> {
        if let Some(e) = self.commit_failure.lock().unwrap().clone() {
            return Err(e);
        }
        if self.ended.load(Ordering::SeqCst) {
            return Err(Error::new(
                Stage::CommitProxy,
                ErrorKind::Fenced {
                    request: Epoch(self.number),
                    current: Epoch(self.number + 1),
                },
            ));
        }
        let tx = strata_core::Transaction::decode(&transaction).unwrap();
        let mut map = self.map.lock().unwrap();
        for m in tx.mutations {
            if let strata_core::Mutation::Set { key, value } = m {
                map.insert(key, value);
            }
        }
        self.commits.fetch_add(1, Ordering::SeqCst);
        Ok(Version(self.number * 1_000 + 1))
    }
}

#[async_trait]
impl StorageServer for FakeEpoch {
    fn shards(&self) -> Vec<KeyRange> {
        vec![KeyRange::new("", "\u{7f}").unwrap()]
    }

    async fn get(&self, key: Key, _version: Version) -> Result<Option<Value>> {
        self.unavailable(Stage::Storage)?;
        Ok(self.map.lock().unwrap().get(&key).cloned())
    }

    async fn get_range(
        &self,
        range: KeyRange,
        _version: Version,
        limit: usize,
        _reverse: bool,
    ) -> Result<RangeRead> {
        self.unavailable(Stage::Storage)?;
        let map = self.map.lock().unwrap();
        let mut entries: Vec<(Key, Value)> = map
            .iter()
            .filter(|(k, _)| range.contains(k))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        let more = entries.len() > limit;
        entries.truncate(limit);
        Ok(RangeRead { entries, more })
    }

    async fn applied_version(&self) -> Result<Version> {
        Ok(Version(self.number * 1_000))
    }

    async fn durable_version(&self) -> Result<Version> {
        Ok(Version(self.number * 1_000))
    }

    async fn roll_back(&self, _version: Version) -> Result<()> {
        Ok(())
    }
}

/// Starts a new epoch at each connection, unless told to fail the next ones.
#[derive(Default)]
struct FakeCluster {
    map: Map,
    epochs: Mutex<Vec<Arc<FakeEpoch>>>,
    connections: AtomicUsize,
    failing: AtomicUsize,
    /// When set, a connection finds the newest epoch again instead of starting one.
    reuse: AtomicBool,
    /// When set, a connection waits to be let through before it answers.
    gated: AtomicBool,
    gate: tokio::sync::Notify,
}

impl FakeCluster {
    fn epoch(&self, number: u64) -> Arc<FakeEpoch> {
        self.epochs.lock().unwrap()[usize::try_from(number - 1).unwrap()].clone()
    }

    fn connections(&self) -> usize {
        self.connections.load(Ordering::SeqCst)
    }
}

#[async_trait]
impl Connect for FakeCluster {
    async fn stages(&self) -> Result<Stages> {
        self.connections.fetch_add(1, Ordering::SeqCst);
        // Others asking meanwhile wait for this one.
        tokio::task::yield_now().await;
        if self.gated.load(Ordering::SeqCst) {
            self.gate.notified().await;
        }
        if self
            .failing
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
            .is_ok()
        {
            return Err(Error::new(
                Stage::Director,
                ErrorKind::Unavailable("nothing served (waited 10 s)".into()),
            ));
        }
        let mut epochs = self.epochs.lock().unwrap();
        if let Some(last) = epochs.last().filter(|_| self.reuse.load(Ordering::SeqCst)) {
            return Ok(Stages {
                sequencer: last.clone(),
                proxies: vec![last.clone()],
                storage: vec![last.clone()],
            });
        }
        let epoch = Arc::new(FakeEpoch {
            number: epochs.len() as u64 + 1,
            map: self.map.clone(),
            ended: AtomicBool::new(false),
            commit_failure: Mutex::new(None),
            commits: AtomicUsize::new(0),
        });
        epochs.push(epoch.clone());
        Ok(Stages {
            sequencer: epoch.clone(),
            proxies: vec![epoch.clone()],
            storage: vec![epoch],
        })
    }
}

async fn following() -> (Arc<FakeCluster>, Database) {
    let cluster = Arc::new(FakeCluster::default());
    let db = Database::following(cluster.clone(), crate::RetryConfig::default())
        .await
        .unwrap();
    (cluster, db)
}

/// Reads `key` and writes it back one byte longer; counts its runs.
async fn grow(db: &Database, key: &'static str, runs: &AtomicUsize) -> Result<Version> {
    let (_, version) = db
        .run(|tx| async move {
            runs.fetch_add(1, Ordering::SeqCst);
            let old = tx.get(&key.into()).await?.unwrap_or_default();
            tx.set(key.into(), [old.as_ref(), b"x"].concat().into());
            Ok(())
        })
        .await?;
    Ok(version)
}

#[tokio::test]
async fn a_run_whose_read_finds_its_epoch_ended_runs_again_on_the_newest() {
    let (cluster, db) = following().await;
    let runs = AtomicUsize::new(0);
    grow(&db, "k", &runs).await.unwrap();
    cluster.epoch(1).end();

    let version = grow(&db, "k", &runs).await.unwrap();
    assert_eq!(version, Version(2_001), "committed through epoch 2");
    assert_eq!(
        runs.load(Ordering::SeqCst),
        3,
        "one run in epoch 1, two for the second call"
    );
    assert_eq!(cluster.connections(), 2);
    assert_eq!(cluster.epoch(1).commits.load(Ordering::SeqCst), 1);
    assert_eq!(cluster.epoch(2).commits.load(Ordering::SeqCst), 1);
    assert_eq!(
        cluster.map.lock().unwrap()[&Key::from("k")],
        Value::from("xx")
    );
}

#[tokio::test]
async fn a_commit_refused_as_fenced_by_the_proxy_stage_is_run_again_on_the_newest() {
    let (cluster, db) = following().await;
    cluster.epoch(1).end();
    let runs = AtomicUsize::new(0);
    // A blind write asks nothing before its commit: the fence is the first to say.
    let (_, version) = db
        .run(|tx| {
            runs.fetch_add(1, Ordering::SeqCst);
            async move {
                tx.set("k".into(), "v".into());
                Ok(())
            }
        })
        .await
        .unwrap();
    assert_eq!(version, Version(2_001));
    assert_eq!(runs.load(Ordering::SeqCst), 2);
    assert_eq!(cluster.epoch(2).commits.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn a_commit_whose_call_failed_is_unknown_never_run_again_and_the_next_follows() {
    let failures = [
        (
            Stage::CommitProxy,
            ErrorKind::Unavailable("connection lost".into()),
        ),
        // Fenced by a log after its batch took a version: it may be on every log.
        (
            Stage::Log,
            ErrorKind::Fenced {
                request: Epoch(1),
                current: Epoch(2),
            },
        ),
        (Stage::Log, ErrorKind::Poisoned("disk full".into())),
        // A log's refusal of the batch's push: the other logs may hold it.
        (
            Stage::Log,
            ErrorKind::InvalidRequest("log 2 is not served here".into()),
        ),
        // The report to the sequencer refused after the push (a proxy worker's old token):
        // the batch is on every log.
        (
            Stage::Sequencer,
            ErrorKind::InvalidRequest("refused a call without the token".into()),
        ),
    ];
    for (stage, kind) in failures {
        let (cluster, db) = following().await;
        cluster.epoch(1).fail_commits(stage, kind.clone());
        let runs = AtomicUsize::new(0);
        let e = grow(&db, "k", &runs).await.unwrap_err();
        assert_eq!(runs.load(Ordering::SeqCst), 1, "{kind}");
        assert_eq!(e.stage, Stage::TxnBuilder);
        let ErrorKind::CommitUnknown(cause) = &e.kind else {
            panic!("{e}");
        };
        assert_eq!(
            (cause.stage, cause.kind.to_string()),
            (stage, kind.to_string())
        );
        assert!(!e.is_retryable());
        // The failed call marked the epoch: the next transaction finds the newest.
        grow(&db, "k", &runs).await.unwrap();
        assert_eq!(cluster.connections(), 2, "{kind}");
        assert_eq!(cluster.epoch(2).commits.load(Ordering::SeqCst), 1);
    }
}

#[tokio::test]
async fn a_refused_commit_keeps_its_error_and_its_epoch() {
    let (cluster, db) = following().await;
    cluster.epoch(1).fail_commits(
        Stage::CommitProxy,
        ErrorKind::Overloaded("queue full".into()),
    );
    let runs = AtomicUsize::new(0);
    let e = grow(&db, "k", &runs).await.unwrap_err();
    assert!(matches!(e.kind, ErrorKind::Overloaded(_)), "{e}");
    assert_eq!(runs.load(Ordering::SeqCst), 1);
    *cluster.epoch(1).commit_failure.lock().unwrap() = None;
    grow(&db, "k", &runs).await.unwrap();
    assert_eq!(
        cluster.connections(),
        1,
        "an overloaded proxy ends no epoch"
    );
}

#[tokio::test]
async fn callers_that_find_the_epoch_ended_together_connect_once() {
    let (cluster, db) = following().await;
    cluster.epoch(1).end();
    let runs = Arc::new(AtomicUsize::new(0));
    let callers: Vec<_> = (0..32)
        .map(|_| {
            let (db, runs) = (db.clone(), runs.clone());
            tokio::spawn(async move { grow(&db, "k", &runs).await })
        })
        .collect();
    for caller in callers {
        caller.await.unwrap().unwrap();
    }
    assert_eq!(cluster.connections(), 2);
    assert_eq!(cluster.epoch(2).commits.load(Ordering::SeqCst), 32);
    assert_eq!(cluster.map.lock().unwrap()[&Key::from("k")].len(), 32);
}

#[tokio::test]
async fn a_failed_connection_fails_its_waiters_and_the_next_call_connects_again() {
    let (cluster, db) = following().await;
    cluster.epoch(1).end();
    cluster.failing.store(1, Ordering::SeqCst);
    cluster.gated.store(true, Ordering::SeqCst);
    let runs = Arc::new(AtomicUsize::new(0));
    let callers: Vec<_> = (0..8)
        .map(|_| {
            let (db, runs) = (db.clone(), runs.clone());
            tokio::spawn(async move { grow(&db, "k", &runs).await })
        })
        .collect();
    // Every caller's first attempt fails within microseconds, and its second waits for the
    // connection, which waits at the gate until then.
    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    cluster.gated.store(false, Ordering::SeqCst);
    cluster.gate.notify_one();
    for caller in callers {
        let e = caller.await.unwrap().unwrap_err();
        assert_eq!(e.stage, Stage::Director, "{e}");
        assert!(e.to_string().contains("nothing served"), "{e}");
    }
    assert_eq!(
        cluster.connections(),
        2,
        "the waiters took the failed one's answer"
    );
    grow(&db, "k", &runs).await.unwrap();
    assert_eq!(cluster.connections(), 3);
    assert_eq!(cluster.epoch(2).commits.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn a_transaction_keeps_the_epoch_it_began_in() {
    let (cluster, db) = following().await;
    let old = db.begin();
    assert_eq!(old.read_version().await.unwrap(), Version(1_000));
    cluster.epoch(1).end();
    let runs = AtomicUsize::new(0);
    grow(&db, "k", &runs).await.unwrap();
    assert_eq!(cluster.connections(), 2);
    // Begun in epoch 1, it reads there still: never half in one epoch, half in another.
    let e = old.get(&"k".into()).await.unwrap_err();
    assert_eq!(e.stage, Stage::Storage, "{e}");
    // A transaction begun now reads the newest.
    let tx = db.begin();
    assert_eq!(tx.read_version().await.unwrap(), Version(2_000));
    assert_eq!(tx.get(&"k".into()).await.unwrap(), Some("x".into()));
}

#[tokio::test]
async fn a_database_bound_to_its_stages_returns_the_end_of_its_epoch() {
    let cluster = Arc::new(FakeCluster::default());
    let Stages {
        sequencer,
        proxies,
        storage,
    } = cluster.stages().await.unwrap();
    let db = Database::new(sequencer, proxies, storage, crate::RetryConfig::default()).unwrap();
    assert!(!db.follows_recoveries());
    cluster.epoch(1).end();
    let runs = AtomicUsize::new(0);
    let e = grow(&db, "k", &runs).await.unwrap_err();
    assert!(matches!(e.kind, ErrorKind::Unavailable(_)), "{e}");
    assert_eq!(runs.load(Ordering::SeqCst), 1);
    cluster
        .epoch(1)
        .fail_commits(Stage::CommitProxy, ErrorKind::Unavailable("lost".into()));
    let tx = db.begin();
    tx.set("k".into(), "v".into());
    // Its commit may have committed, as on a database that follows; it looks for no newer
    // epoch.
    let e = tx.commit().await.unwrap_err();
    assert!(
        matches!(&e.kind, ErrorKind::CommitUnknown(cause)
            if matches!(cause.kind, ErrorKind::Unavailable(_))),
        "{e}"
    );
    assert_eq!(cluster.connections(), 1);
}

#[tokio::test]
async fn waiting_for_the_newest_epoch_is_not_counted_in_a_transactions_lifetime() {
    let cluster = Arc::new(FakeCluster::default());
    let options =
        crate::TransactionOptions::default().with_lifetime(std::time::Duration::from_millis(100));
    let db = Database::following(cluster.clone(), options).await.unwrap();
    cluster.epoch(1).end();
    // A read finds the epoch over.
    db.begin().read_version().await.unwrap_err();
    cluster.gated.store(true, Ordering::SeqCst);
    let tx = db.begin();
    let read = tokio::spawn({
        let tx = tx.clone();
        async move { tx.get(&"k".into()).await }
    });
    // The new epoch is found after three lifetimes; no read version was held meanwhile.
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    cluster.gated.store(false, Ordering::SeqCst);
    cluster.gate.notify_one();
    assert_eq!(read.await.unwrap().unwrap(), None);
    tx.set("k".into(), "v".into());
    assert_eq!(tx.commit().await.unwrap(), Version(2_001));
}

#[tokio::test(start_paused = true)]
async fn an_epoch_found_again_is_asked_for_at_a_slowing_pace() {
    let (cluster, db) = following().await;
    // Its proxy lost, the epoch fails every commit but still runs: each failure makes the
    // database look again, and it finds the same epoch.
    cluster.reuse.store(true, Ordering::SeqCst);
    cluster.epoch(1).fail_commits(
        Stage::CommitProxy,
        ErrorKind::Unavailable("proxy 0 lost".into()),
    );
    let blind_write = || async {
        let tx = db.begin();
        tx.set("k".into(), "v".into());
        tx.commit().await
    };
    let started = tokio::time::Instant::now();
    for _ in 0..6 {
        let e = blind_write().await.unwrap_err();
        assert!(matches!(e.kind, ErrorKind::CommitUnknown(_)), "{e}");
    }
    // Five reconnections: the first at once, then 50, 100, 200 and 400 ms after the one
    // before.
    assert_eq!(cluster.connections(), 6);
    let took = started.elapsed();
    assert!(
        took >= std::time::Duration::from_millis(750) && took < std::time::Duration::from_secs(1),
        "{took:?}"
    );

    // A newer epoch ends the pauses.
    cluster.reuse.store(false, Ordering::SeqCst);
    let started = tokio::time::Instant::now();
    blind_write().await.unwrap();
    assert_eq!(cluster.connections(), 7);
    assert!(
        started.elapsed() >= std::time::Duration::from_millis(800),
        "paused as the sixth"
    );
    cluster
        .epoch(2)
        .fail_commits(Stage::CommitProxy, ErrorKind::Unavailable("lost".into()));
    blind_write().await.unwrap_err();
    let started = tokio::time::Instant::now();
    blind_write().await.unwrap();
    assert_eq!(cluster.connections(), 8);
    assert!(
        started.elapsed() < std::time::Duration::from_millis(50),
        "no pause"
    );
}
