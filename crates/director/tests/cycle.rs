//! FoundationDB's Cycle workload (`strata_director::workload`): 100 keys form one ring; 16
//! concurrent clients run 5,000 transactions that each read three links and rewire them.
//! Afterwards the ring must still be one ring of exactly 100 keys, and every transaction
//! acknowledged must have left its acknowledgement key.

// Test helpers may unwrap: a panic there is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used, unreachable_pub)]

mod common;

use std::sync::Arc;

use strata_director::workload::cycle::{Cycle, check_acks, check_ring, ensure_ring};
use strata_director::workload::{Plan, Span, drive, no_acks};

const NODES: u64 = 100;
const CLIENTS: u64 = 16;
const TRANSACTIONS: u64 = 5_000;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cycle_stays_one_ring_under_concurrent_rewiring() {
    let (cluster, _dir) = common::cluster().await;
    let db = cluster.database();
    assert_eq!(ensure_ring(&db, NODES).await.unwrap(), NODES);
    assert_eq!(check_ring(&db).await.unwrap(), NODES);

    let plan = Plan {
        clients: CLIENTS,
        span: Span::Transactions(TRANSACTIONS),
        seed: 1,
        first: 0,
    };
    let driven = drive(&db, Arc::new(Cycle { nodes: NODES }), &plan, no_acks())
        .await
        .unwrap();
    assert_eq!(driven.acked.len() as u64, TRANSACTIONS);
    assert_eq!(check_ring(&db).await.unwrap(), NODES);
    check_acks(&db, &driven.acked).await.unwrap();
    // And a check that would miss a lost acknowledgement key is no check: one never written
    // is reported.
    let err = check_acks(&db, &[(CLIENTS, 0)]).await.unwrap_err();
    assert!(err.to_string().contains("lost"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn runs_claim_numbers_apart_and_a_bad_or_spent_count_is_refused_unchanged() {
    use bytes::Bytes;
    use strata_core::ErrorKind;
    use strata_director::workload::cycle::{RUN_NUMBERS, claim_run, runs_key};

    let (cluster, _dir) = common::cluster().await;
    let db = cluster.database();
    assert_eq!(claim_run(&db).await.unwrap(), RUN_NUMBERS);
    assert_eq!(claim_run(&db).await.unwrap(), 2 * RUN_NUMBERS);
    let stored = || async {
        let tx = db.begin();
        tx.get(&runs_key()).await.unwrap()
    };
    assert_eq!(stored().await, Some(Bytes::from_static(b"2")));
    for (count, corrupt) in [(&b"two"[..], true), (b"16777215", false)] {
        let tx = db.begin();
        tx.set(runs_key(), Bytes::copy_from_slice(count));
        tx.commit().await.unwrap();
        let e = claim_run(&db).await.unwrap_err();
        if corrupt {
            assert!(matches!(e.kind, ErrorKind::Corruption(_)), "{e}");
            assert!(e.to_string().contains("run count"), "{e}");
        } else {
            assert!(matches!(e.kind, ErrorKind::InvalidRequest(_)), "{e}");
        }
        assert_eq!(stored().await, Some(Bytes::copy_from_slice(count)));
    }
    cluster.stop().await;
}

/// A long run's acknowledgements are checked however many there are: the check reads them
/// in pages, each in a transaction of its own, so none outlives its lifetime (a check of
/// 10,000 acknowledgements through the network took longer than the 5 s lifetime). Here a
/// lifetime of 50 ms stands for it, against 200,000 acknowledgements (which take several
/// times that, read one by one in one transaction).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledgements_beyond_one_transactions_lifetime_are_checked() {
    use std::time::Duration;
    use strata_director::workload::cycle::ack;

    let (cluster, _dir) = common::cluster().await;
    let db = cluster.database();
    let mut acked = Vec::new();
    for client in 0..200 {
        let tx = db.begin();
        for n in 0..1_000 {
            tx.set(ack(client, n), bytes::Bytes::from_static(b"1"));
            acked.push((client, n));
        }
        tx.commit().await.unwrap();
    }
    let quick = db
        .with_options(db.options().with_lifetime(Duration::from_millis(50)))
        .unwrap();
    check_acks(&quick, &acked).await.unwrap();
    // Missing ones are still found: before, among and after the stored ones.
    for lost in [(0, 1_000), (50, 1_000), (200, 0)] {
        acked.push(lost);
        let err = check_acks(&quick, &acked).await.unwrap_err();
        assert!(
            err.to_string()
                .contains(&format!("{}/{} lost", lost.0, lost.1)),
            "{err}"
        );
        acked.pop();
    }
}

/// The stages of an embedded cluster as a following database finds them, each commit proxy
/// behind `faults`; counts the connections.
struct Behind {
    stages: strata_net::Stages,
    faults: Arc<strata_testkit::faults::Faults>,
    connections: std::sync::atomic::AtomicUsize,
}

#[async_trait::async_trait]
impl strata_txn_builder::Connect for Behind {
    async fn stages(&self) -> strata_core::Result<strata_txn_builder::Stages> {
        self.connections
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        Ok(strata_txn_builder::Stages {
            sequencer: self.stages.sequencer.clone().unwrap(),
            proxies: self
                .stages
                .proxies
                .iter()
                .map(|p| strata_testkit::faults::FaultyProxy::wrap(p.clone(), &self.faults))
                .collect(),
            storage: self.stages.storage.clone(),
        })
    }
}

impl Behind {
    /// The client stages of `cluster`, its proxies behind a new switchboard.
    fn of(cluster: &strata_director::EmbeddedCluster) -> Arc<Behind> {
        Arc::new(Behind {
            stages: cluster.stages(),
            faults: strata_testkit::faults::Faults::new(),
            connections: std::sync::atomic::AtomicUsize::new(0),
        })
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_workload_counts_a_commit_of_unknown_outcome_and_goes_on_then_gives_up_on_a_streak() {
    use std::sync::atomic::Ordering;
    use strata_core::ErrorKind;
    use strata_director::workload::UNKNOWN_IN_A_ROW_MAX;
    use strata_testkit::faults::{Fault, FaultPoint};

    let (cluster, _dir) = common::cluster().await;
    let behind = Behind::of(&cluster);
    let faults = behind.faults.clone();
    let db = strata_txn_builder::Database::following(
        behind.clone(),
        strata_txn_builder::RetryConfig::default(),
    )
    .await
    .unwrap();
    assert_eq!(ensure_ring(&db, NODES).await.unwrap(), NODES);

    // One commit's call fails (an unknown outcome): counted, not acknowledged, and the client
    // goes on with its next transaction on stages found again.
    faults.arm_at(FaultPoint::ProxyCommit, 50, Fault::Usual);
    let plan = Plan {
        clients: 1,
        span: Span::Transactions(200),
        seed: 2,
        first: 0,
    };
    let cycle = Arc::new(Cycle { nodes: NODES });
    let driven = drive(&db, cycle.clone(), &plan, no_acks()).await.unwrap();
    assert_eq!((driven.unknown, driven.acked.len()), (1, 199));
    assert_eq!(behind.connections.load(Ordering::SeqCst), 2);
    assert_eq!(check_ring(&db).await.unwrap(), NODES);
    check_acks(&db, &driven.acked).await.unwrap();

    // Every commit failing: the client gives up after a streak, with the commit's error.
    let rearm = faults.clone();
    faults.watch(move |_| rearm.arm_at(FaultPoint::ProxyCommit, 1, Fault::Usual));
    faults.arm_at(FaultPoint::ProxyCommit, 1, Fault::Usual);
    let before = faults.calls(FaultPoint::ProxyCommit);
    let plan = Plan {
        first: 1_000,
        ..plan
    };
    let e = drive(&db, cycle, &plan, no_acks()).await.unwrap_err();
    assert!(matches!(e.kind, ErrorKind::CommitUnknown(_)), "{e}");
    let calls = faults.calls(FaultPoint::ProxyCommit) - before;
    assert_eq!(calls, UNKNOWN_IN_A_ROW_MAX as usize);
    faults.release();
}

/// A Cycle run of four clients on a database bound to `cluster`'s stages, whose tenth commit
/// fails with `failure`: the run's error, once the other clients stopped. Each of them stops
/// after at most the transaction it was in (the run would otherwise go on for a million), and
/// the ring holds.
async fn bound_run_failing_with(failure: strata_core::Error) -> strata_core::Error {
    use strata_testkit::faults::{Fault, FaultPoint};
    use strata_txn_builder::Connect;

    let (cluster, _dir) = common::cluster().await;
    let behind = Behind::of(&cluster);
    let faults = behind.faults.clone();
    // Bound to the stages: a database that does not follow.
    let stages = behind.stages().await.unwrap();
    let db = strata_txn_builder::Database::new(
        stages.sequencer,
        stages.proxies,
        stages.storage,
        strata_txn_builder::RetryConfig::default(),
    )
    .unwrap();
    assert_eq!(ensure_ring(&db, NODES).await.unwrap(), NODES);
    faults.arm_at(FaultPoint::ProxyCommit, 10, Fault::FailWith(failure));
    let plan = Plan {
        clients: 4,
        span: Span::Transactions(1_000_000),
        seed: 3,
        first: 0,
    };
    let e = drive(&db, Arc::new(Cycle { nodes: NODES }), &plan, no_acks())
        .await
        .unwrap_err();
    assert!(faults.calls(FaultPoint::ProxyCommit) < 20, "{e}");
    assert_eq!(check_ring(&db).await.unwrap(), NODES);
    faults.release();
    e
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_fails_for_good_stops_the_others() {
    use strata_core::{Error, ErrorKind, Stage};

    let refusal = Error::new(
        Stage::CommitProxy,
        ErrorKind::InvalidRequest("refused in this test".into()),
    );
    let e = bound_run_failing_with(refusal).await;
    assert!(e.to_string().contains("refused in this test"), "{e}");
}

/// On a database bound to its stages a commit of unknown outcome ends the run at once, as any
/// failure does: no newer epoch will come to go on with.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bound_database_stops_at_its_first_commit_of_unknown_outcome() {
    use strata_core::{Error, ErrorKind, Stage};

    // As a log's failure would: the commit may have committed.
    let lost = Error::new(
        Stage::Log,
        ErrorKind::Unavailable("lost in this test".into()),
    );
    let e = bound_run_failing_with(lost).await;
    assert!(
        matches!(&e.kind, ErrorKind::CommitUnknown(cause)
            if cause.to_string().contains("lost in this test")),
        "{e}"
    );
}
