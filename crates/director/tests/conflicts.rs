//! Conflicts through the whole pipeline: of two transactions that read and write the same key
//! at the same read version exactly one commits, and the other leaves no trace at any version.
//! Versions handed to clients increase, and a read version taken after a commit sees it.

// Test helpers may unwrap: a panic there is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used, unreachable_pub)]

mod common;

use bytes::Bytes;
use strata_core::{ErrorKind, Key, KeyRange};

fn key(s: &str) -> Key {
    Bytes::from(s.to_owned())
}

/// Two transactions that read at the same version. Each asks for its own, so a version
/// committed between the two asks parts them: the last round's rejected batch, say, whose
/// transactions were answered (a conflict needs no log) before its version was reported
/// committed. Such a pair is begun again, a few times at most.
async fn at_one_read_version(
    db: &strata_director::Database,
) -> (strata_director::Transaction, strata_director::Transaction) {
    for _ in 0..10 {
        let (a, b) = (db.begin(), db.begin());
        if a.read_version().await.unwrap() == b.read_version().await.unwrap() {
            return (a, b);
        }
    }
    panic!("ten pairs of transactions asked one after the other read at different versions");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn of_two_writers_at_one_read_version_exactly_one_commits() {
    let (cluster, _dir) = common::cluster().await;
    let db = cluster.database();
    for round in 0..20 {
        let k = key(&format!("race/{round}"));
        let (a, b) = at_one_read_version(&db).await;
        assert_eq!(a.get(&k).await.unwrap(), None);
        assert_eq!(b.get(&k).await.unwrap(), None);
        a.set(k.clone(), "a".into());
        a.set(key(&format!("only-a/{round}")), "a".into());
        b.set(k.clone(), "b".into());
        b.set(key(&format!("only-b/{round}")), "b".into());
        let (ra, rb) = tokio::join!(a.commit(), b.commit());
        let (winner, loser_key, won) = match (ra, rb) {
            (Ok(v), Err(e)) => {
                assert!(matches!(e.kind, ErrorKind::Conflict), "{e}");
                (v, format!("only-b/{round}"), "a")
            }
            (Err(e), Ok(v)) => {
                assert!(matches!(e.kind, ErrorKind::Conflict), "{e}");
                (v, format!("only-a/{round}"), "b")
            }
            (ra, rb) => panic!("exactly one must commit: {ra:?} {rb:?}"),
        };
        // No trace of the loser: not at the winner's version, not later.
        let after = db.begin();
        assert!(after.read_version().await.unwrap() >= winner);
        assert_eq!(
            after.snapshot_get(&k).await.unwrap(),
            Some(Bytes::from(won))
        );
        assert_eq!(after.snapshot_get(&key(&loser_key)).await.unwrap(), None);
    }
    // And nowhere in a scan of everything written.
    let tx = db.begin();
    let prefix = |p: &'static str| KeyRange::prefix(Bytes::from_static(p.as_bytes())).unwrap();
    let a_only = tx
        .snapshot_get_range(&prefix("only-a/"), 100, false)
        .await
        .unwrap();
    let b_only = tx
        .snapshot_get_range(&prefix("only-b/"), 100, false)
        .await
        .unwrap();
    assert_eq!(a_only.len() + b_only.len(), 20);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn versions_increase_and_a_later_read_sees_the_commit() {
    let (cluster, _dir) = common::cluster().await;
    let db = cluster.database();
    let mut last = cluster.start_version();
    for i in 0..50u64 {
        let k = key(&format!("seq/{}", i % 7));
        let ((), v) = db
            .run(|tx| {
                let k = k.clone();
                async move {
                    tx.set(k, Bytes::from(i.to_string()));
                    Ok(())
                }
            })
            .await
            .unwrap();
        assert!(v > last, "{v} after {last}");
        last = v;
        let reader = db.begin();
        assert!(reader.read_version().await.unwrap() >= v);
        assert_eq!(
            reader.snapshot_get(&k).await.unwrap(),
            Some(Bytes::from(i.to_string()))
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_read_only_transaction_does_not_commit_anything() {
    let (cluster, _dir) = common::cluster().await;
    let db = cluster.database();
    let tx = db.begin();
    assert_eq!(tx.get(&key("nothing")).await.unwrap(), None);
    assert_eq!(tx.commit().await.unwrap(), tx.read_version().await.unwrap());
    assert!(tx.commit().await.is_err(), "a transaction commits once");
}
