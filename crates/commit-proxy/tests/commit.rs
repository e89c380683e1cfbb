//! The proxy over the test kit's fakes of its stages: commits, conflicts, the logs' contents, two
//! resolvers, and a fenced epoch.

// Test helpers may unwrap: a panic there is a failed test.
#![allow(clippy::unwrap_used)]

use std::sync::Arc;

use bytes::Bytes;
use strata_commit_proxy::{BatchingProxy, ProxyConfig};
use strata_core::{
    CommitProxy, Epoch, ErrorKind, Key, KeyRange, LogId, LogServer, Mutation, Resolver, Sequencer,
    Stage, Transaction, TransactionView, Version,
};
use strata_testkit::{MemoryLog, ModelResolver, StepSequencer};

struct Cluster {
    sequencer: Arc<StepSequencer>,
    logs: Vec<Arc<MemoryLog>>,
    proxy: BatchingProxy,
}

fn cluster(resolver_begins: &[&'static str]) -> Cluster {
    let epoch = Epoch(1);
    let sequencer = Arc::new(StepSequencer::new(epoch, Version(0)));
    let logs: Vec<Arc<MemoryLog>> = (0..3)
        .map(|i| Arc::new(MemoryLog::new(LogId(i), Version(0))))
        .collect();
    let resolvers: Vec<(Key, Arc<dyn Resolver>)> = resolver_begins
        .iter()
        .map(|b| {
            let r: Arc<dyn Resolver> = Arc::new(ModelResolver::new(epoch, Version(0)));
            (Bytes::from_static(b.as_bytes()), r)
        })
        .collect();
    let proxy = BatchingProxy::new(
        epoch,
        sequencer.clone(),
        resolvers,
        logs.iter()
            .map(|l| l.clone() as Arc<dyn LogServer>)
            .collect(),
        ProxyConfig::default(),
    )
    .unwrap();
    Cluster {
        sequencer,
        logs,
        proxy,
    }
}

fn rw(read_version: Version, read: &str, write: &str, value: &str) -> Bytes {
    rw_transaction(read_version, read, write, value)
        .encode()
        .unwrap()
}

fn rw_transaction(read_version: Version, read: &str, write: &str, value: &str) -> Transaction {
    Transaction {
        read_version: Some(read_version),
        read_conflicts: vec![KeyRange::single(Bytes::from(read.to_owned()))],
        write_conflicts: vec![KeyRange::single(Bytes::from(write.to_owned()))],
        mutations: vec![Mutation::Set {
            key: Bytes::from(write.to_owned()),
            value: Bytes::from(value.to_owned()),
        }],
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn commits_reach_every_log_and_move_the_read_version() {
    let c = cluster(&[""]);
    let rv = c.sequencer.read_version().await.unwrap();
    let v = c.proxy.commit(rw(rv, "a", "a", "1")).await.unwrap();
    assert!(v > rv);
    assert!(c.sequencer.read_version().await.unwrap() >= v);
    for log in &c.logs {
        let entries = log.pull(Version(0), 10).await.unwrap();
        let last = entries.last().unwrap();
        assert_eq!(last.version, v);
        let view = TransactionView::parse(last.payload.clone()).unwrap();
        assert_eq!(view.commit_version().unwrap(), Some(v));
        assert_eq!(
            view.mutations().unwrap(),
            vec![Mutation::Set {
                key: "a".into(),
                value: "1".into()
            }]
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stale_read_conflicts_and_leaves_no_trace() {
    for begins in [&[""][..], &["", "m"][..]] {
        let c = cluster(begins);
        let rv = c.sequencer.read_version().await.unwrap();
        c.proxy.commit(rw(rv, "a", "z", "1")).await.unwrap();
        // Read z at the old version and write a: z changed since, so this must not commit.
        let err = c.proxy.commit(rw(rv, "z", "a", "2")).await.unwrap_err();
        assert!(matches!(err.kind, ErrorKind::Conflict), "{err}");
        assert_eq!(err.stage, Stage::Resolver);
        let all = c.logs[0].pull(Version(0), 100).await.unwrap();
        let written: Vec<Mutation> = all
            .iter()
            .flat_map(|e| {
                TransactionView::parse(e.payload.clone())
                    .unwrap()
                    .mutations()
                    .unwrap()
            })
            .collect();
        assert_eq!(
            written.len(),
            1,
            "{begins:?}: only the first commit was logged"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_commits_all_get_distinct_increasing_versions() {
    let c = Arc::new(cluster(&["", "k"]));
    let tasks: Vec<_> = (0..32)
        .map(|i| {
            let c = c.clone();
            tokio::spawn(async move {
                let rv = c.sequencer.read_version().await.unwrap();
                let key = format!("key{i}");
                c.proxy.commit(rw(rv, &key, &key, "v")).await.unwrap()
            })
        })
        .collect();
    let mut versions = Vec::new();
    for t in tasks {
        versions.push(t.await.unwrap());
    }
    let count = versions.len();
    versions.sort();
    versions.dedup();
    // Transactions of one batch share a version; every batch has its own.
    assert!(!versions.is_empty() && versions.len() <= count);
    let logged = c.logs[2].pull(Version(0), 1000).await.unwrap();
    let keys: usize = logged
        .iter()
        .map(|e| {
            TransactionView::parse(e.payload.clone())
                .unwrap()
                .mutations()
                .unwrap()
                .len()
        })
        .sum();
    assert_eq!(keys, 32);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fenced_epoch_fails_the_batch_naming_the_log_and_refuses_later_commits() {
    let c = cluster(&[""]);
    c.logs[1].lock(Epoch(2)).await.unwrap();
    let rv = c.sequencer.read_version().await.unwrap();
    let err = c.proxy.commit(rw(rv, "a", "a", "1")).await.unwrap_err();
    assert!(err.is_fenced(), "{err}");
    assert_eq!(err.stage, Stage::Log);
    let err = c.proxy.commit(rw(rv, "b", "b", "1")).await.unwrap_err();
    assert_eq!(err.stage, Stage::CommitProxy);
    // Nothing was reported committed.
    assert_eq!(c.sequencer.read_version().await.unwrap(), rv);
}

/// What the transaction builder does: the proxy gets the transaction unencoded. It is logged,
/// resolved and refused as its encoding would be.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_transaction_handed_over_unencoded_commits_as_its_encoding_would() {
    let c = cluster(&["", "m"]);
    let rv = c.sequencer.read_version().await.unwrap();
    let v = c
        .proxy
        .commit_transaction(rw_transaction(rv, "a", "z", "1"))
        .await
        .unwrap();
    for log in &c.logs {
        let last = log.pull(Version(0), 10).await.unwrap().pop().unwrap();
        assert_eq!(last.version, v);
        let view = TransactionView::parse(last.payload).unwrap();
        let set = Mutation::Set {
            key: "z".into(),
            value: "1".into(),
        };
        assert_eq!(view.mutations().unwrap(), vec![set]);
    }
    // Read z at the old version: z changed since, so this must not commit.
    let err = c
        .proxy
        .commit_transaction(rw_transaction(rv, "z", "b", "2"))
        .await
        .unwrap_err();
    assert!(matches!(err.kind, ErrorKind::Conflict), "{err}");
    // Its batch still takes its place in the chain, with nothing in it.
    let logged: usize = c.logs[0]
        .pull(Version(0), 10)
        .await
        .unwrap()
        .into_iter()
        .map(|e| {
            TransactionView::parse(e.payload)
                .unwrap()
                .mutations()
                .unwrap()
                .len()
        })
        .sum();
    assert_eq!(logged, 1);
    // A key over the limit: the wire's error, as for its encoding.
    let long = Bytes::from(vec![b'k'; strata_core::KEY_BYTES_MAX + 1]);
    let too_long = Transaction {
        mutations: vec![Mutation::Clear { key: long }],
        ..Transaction::default()
    };
    let err = c
        .proxy
        .commit_transaction(too_long.clone())
        .await
        .unwrap_err();
    assert_eq!(err.stage, Stage::CommitProxy);
    assert_eq!(
        err.kind.to_string(),
        ErrorKind::Wire(too_long.encode().unwrap_err()).to_string()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_bytes_are_refused() {
    let c = cluster(&[""]);
    let err = c
        .proxy
        .commit(Bytes::from_static(b"nonsense"))
        .await
        .unwrap_err();
    assert!(matches!(err.kind, ErrorKind::Wire(_)), "{err}");
}
