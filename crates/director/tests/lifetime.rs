//! The transaction lifetime and too-old errors on a real cluster: a transaction that outlives
//! its (shortened) lifetime is refused at once, in one attempt, naming its read version; and a
//! commit the resolver finds too old names the transaction's own read version and the
//! resolver's oldest, not placeholders.

// Test helpers may unwrap: a panic there is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used, unreachable_pub)]

use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use strata_core::{ErrorKind, Key, Stage, Version};
use strata_director::{EmbeddedCluster, EmbeddedConfig, TransactionOptions};

fn key(s: &str) -> Key {
    Bytes::from(s.to_owned())
}

const LIFETIME: Duration = Duration::from_millis(200);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_transaction_outliving_its_lifetime_fails_once_with_the_documented_error() {
    let dir = tempfile::tempdir().unwrap();
    let config = EmbeddedConfig {
        transactions: TransactionOptions::default().with_lifetime(LIFETIME),
        ..EmbeddedConfig::default()
    };
    let cluster = EmbeddedCluster::start(dir.path(), config).await.unwrap();
    let db = cluster.database();
    assert_eq!(db.options().lifetime, LIFETIME);

    let runs = AtomicUsize::new(0);
    let read_at = Mutex::new(None::<Version>);
    let slow = LIFETIME + Duration::from_millis(100);
    let e = db
        .run(|tx| {
            runs.fetch_add(1, Ordering::SeqCst);
            let read_at = &read_at;
            async move {
                tx.get(&key("lifetime/a")).await?;
                *read_at.lock().unwrap() = Some(tx.read_version().await?);
                tokio::time::sleep(slow).await;
                tx.set(key("lifetime/a"), "late".into());
                Ok(())
            }
        })
        .await
        .unwrap_err();
    assert_eq!(
        runs.load(Ordering::SeqCst),
        1,
        "an expired body is not run again"
    );
    assert_eq!(e.stage, Stage::TxnBuilder);
    let read_version = read_at.lock().unwrap().unwrap();
    match &e.kind {
        ErrorKind::TransactionExpired {
            read_version: named,
            lived,
            limit,
        } => {
            assert_eq!(*named, Some(read_version));
            assert_eq!(*limit, LIFETIME);
            assert!(*lived >= slow, "{lived:?}");
        }
        other => panic!("not expired: {other}"),
    }
    assert!(
        e.to_string().contains(&read_version.to_string()),
        "the message names the read version: {e}"
    );

    // Its write never reached the cluster; a quick transaction still commits.
    let tx = db.begin();
    assert_eq!(tx.get(&key("lifetime/a")).await.unwrap(), None);
    tx.set(key("lifetime/b"), "quick".into());
    tx.commit().await.unwrap();
    cluster.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_commit_too_old_for_the_resolver_names_its_own_read_version() {
    let dir = tempfile::tempdir().unwrap();
    let defaults = EmbeddedConfig::default();
    // The resolvers remember 50 ms of writes (the storage servers keep their 5 s): a
    // transaction that waits 200 ms between its read and its commit is too old for them,
    // well within its lifetime.
    let config = EmbeddedConfig {
        resolver: strata_resolver::ResolverConfig {
            history: strata_resolver::HistoryConfig {
                window_versions: 50_000,
                ..defaults.resolver.history
            },
            ..defaults.resolver
        },
        ..defaults
    };
    let cluster = EmbeddedCluster::start(dir.path(), config).await.unwrap();
    let db = cluster.database();

    let tx = db.begin();
    assert_eq!(tx.get(&key("old/a")).await.unwrap(), None);
    tokio::time::sleep(Duration::from_millis(200)).await;
    tx.set(key("old/a"), "late".into());
    let e = tx.commit().await.unwrap_err();
    assert_eq!(e.stage, Stage::Resolver);
    match e.kind {
        ErrorKind::TooOld { version, oldest } => {
            assert_eq!(version, tx.read_version().await.unwrap());
            assert!(
                oldest > version && oldest.0 - version.0 < 5_000_000,
                "oldest {oldest} for a read at {version}"
            );
        }
        other => panic!("not too old: {other}"),
    }
    assert!(e.is_retryable());
    cluster.stop().await;
}
