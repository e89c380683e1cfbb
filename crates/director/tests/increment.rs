//! The Increment (ledger) workload (`strata_director::workload::increment`): each transaction
//! adds 1 to a counter in the lower half and 1 to one in the upper half of the key space
//! (different storage servers and resolvers) and writes its ledger entry. Read at any version,
//! the two halves and the ledger count agree; after the run, and after a recovery, they equal
//! the number of acknowledged transactions, each of whose entries is present: every
//! acknowledged commit applied exactly once.

// Test helpers may unwrap: a panic there is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used, unreachable_pub)]

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use strata_director::EmbeddedCluster;
use strata_director::workload::increment::{self, Increment};
use strata_director::workload::{Plan, Span, drive, no_acks};

const KEYS: u64 = 10;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn both_halves_and_the_ledger_always_agree() {
    let (cluster, _dir) = common::cluster().await;
    let db = cluster.database();
    let done = Arc::new(AtomicBool::new(false));
    let checker = tokio::spawn({
        let (db, done) = (db.clone(), done.clone());
        async move {
            let mut checks = 0;
            while !done.load(Ordering::SeqCst) {
                increment::check(&db).await.unwrap();
                checks += 1;
            }
            checks
        }
    });
    let plan = Plan {
        clients: 8,
        span: Span::Transactions(400),
        seed: 100,
        first: 0,
    };
    let driven = drive(&db, Arc::new(Increment { keys: KEYS }), &plan, no_acks())
        .await
        .unwrap();
    done.store(true, Ordering::SeqCst);
    assert!(checker.await.unwrap() > 0);
    let totals = increment::check(&db).await.unwrap();
    assert_eq!(totals.ledger, 400, "every increment landed once");
    increment::check_acks(&db, &driven.acked).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_acknowledged_increment_survives_recoveries_beyond_the_windows() {
    // Two of every stage, windows shrunk so each run is many storage windows and log
    // segments long; three runs, each ended by a stop and a recovery.
    let dir = tempfile::tempdir().unwrap();
    let config = common::small_windows(2, 2, 2);
    let mut acked = Vec::new();
    for run in 0..3u64 {
        let cluster = EmbeddedCluster::start(dir.path(), config).await.unwrap();
        let db = cluster.database();
        let totals = increment::check(&db).await.unwrap();
        assert_eq!(
            totals.ledger,
            acked.len() as u64,
            "run {run}: after recovery"
        );
        increment::check_acks(&db, &acked).await.unwrap();
        let plan = Plan {
            clients: 4,
            span: Span::For(Duration::from_millis(700)),
            seed: run,
            first: run * 1_000_000,
        };
        let driven = drive(&db, Arc::new(Increment { keys: KEYS }), &plan, no_acks())
            .await
            .unwrap();
        acked.extend(driven.acked);
        cluster.stop().await;
    }
    let cluster = EmbeddedCluster::start(dir.path(), config).await.unwrap();
    let db = cluster.database();
    assert_eq!(
        increment::check(&db).await.unwrap().ledger,
        acked.len() as u64
    );
    increment::check_acks(&db, &acked).await.unwrap();
    // A check that would miss a lost entry is no check: one never written is reported.
    let err = increment::check_acks(&db, &[(99, 0)]).await.unwrap_err();
    assert!(err.to_string().contains("lost"), "{err}");
    cluster.stop().await;
}
