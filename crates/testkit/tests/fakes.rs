//! The fakes keep the contracts their users rely on: chain order and fencing, the sequencer's
//! read version, and faults that fire on exactly the call armed. (The log contract itself is
//! run against `MemoryLog` by the log crate's contract tests.)

// Test helpers may unwrap: a panic there is a failed test.
#![allow(clippy::unwrap_used)]

use std::sync::Arc;
use std::time::Duration;

use strata_core::{
    Epoch, ErrorKind, KeyRange, ResolveBatch, Resolver, Sequencer, Stage, TransactionConflicts,
    Verdict, Version,
};
use strata_testkit::faults::{Fault, FaultPoint, Faults, FaultyResolver};
use strata_testkit::{ModelResolver, StepSequencer};

fn batch(epoch: u64, previous: u64, version: u64, read_version: u64) -> ResolveBatch {
    ResolveBatch {
        epoch: Epoch(epoch),
        previous_version: Version(previous),
        version: Version(version),
        transactions: vec![TransactionConflicts {
            read_version: Some(Version(read_version)),
            read_conflicts: vec![KeyRange::single("k")],
            write_conflicts: vec![KeyRange::single("k")],
        }],
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_model_resolver_resolves_along_the_chain() {
    let r = Arc::new(ModelResolver::new(Epoch(2), Version(10)));
    // The batch at 30 arrives first and waits for 20: both read at 10 and write k, so the
    // one resolved second conflicts, and that must be 30 whatever the arrival order.
    let early = {
        let r = r.clone();
        tokio::spawn(async move { r.resolve(batch(2, 20, 30, 10)).await })
    };
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert_eq!(
        r.resolve(batch(2, 10, 20, 10)).await.unwrap(),
        [Verdict::Committed]
    );
    assert_eq!(early.await.unwrap().unwrap(), [Verdict::Conflict]);

    let duplicate = r.resolve(batch(2, 20, 30, 25)).await.unwrap_err();
    assert!(
        matches!(duplicate.kind, ErrorKind::Duplicate { .. }),
        "{duplicate}"
    );
    let fork = r.resolve(batch(2, 25, 40, 25)).await.unwrap_err();
    assert!(matches!(fork.kind, ErrorKind::OutOfOrder { .. }), "{fork}");
    let old = r.resolve(batch(1, 30, 40, 25)).await.unwrap_err();
    assert!(matches!(old.kind, ErrorKind::Fenced { .. }), "{old}");
    assert_eq!(old.stage, Stage::Resolver);
    // Below the start version nothing is known: too old.
    assert_eq!(
        r.resolve(batch(2, 30, 40, 5)).await.unwrap(),
        [Verdict::TooOld]
    );
}

#[tokio::test]
async fn the_step_sequencer_fences_and_reads_what_was_reported() {
    let s = StepSequencer::new(Epoch(3), Version(100));
    let a = s.next_commit_version(Epoch(3)).await.unwrap();
    let b = s.next_commit_version(Epoch(4)).await.unwrap();
    assert_eq!(b.previous, a.version, "pairs chain");
    assert_eq!(s.read_version().await.unwrap(), Version(100));
    s.report_committed(Epoch(3), b.version).await.unwrap();
    s.report_committed(Epoch(3), a.version).await.unwrap();
    assert_eq!(
        s.read_version().await.unwrap(),
        b.version,
        "the newest report wins"
    );
    let fenced = s.next_commit_version(Epoch(2)).await.unwrap_err();
    assert!(matches!(fenced.kind, ErrorKind::Fenced { .. }), "{fenced}");
    let never = s
        .report_committed(Epoch(3), Version(1_000))
        .await
        .unwrap_err();
    assert!(
        matches!(never.kind, ErrorKind::InvalidRequest(_)),
        "{never}"
    );
}

#[tokio::test]
async fn a_fault_fires_on_the_call_armed_and_once() {
    let faults = Faults::new();
    let r = FaultyResolver(
        Arc::new(ModelResolver::new(Epoch(1), Version(0))),
        faults.clone(),
    );
    faults.arm_at(FaultPoint::Resolve, 2, Fault::Usual);
    r.resolve(batch(1, 0, 1, 0)).await.unwrap();
    assert!(faults.is_armed(FaultPoint::Resolve));
    let e = r.resolve(batch(1, 1, 2, 1)).await.unwrap_err();
    assert_eq!(e.stage, Stage::Resolver);
    assert!(e.to_string().contains("injected fault at Resolve"), "{e}");
    assert!(!faults.is_armed(FaultPoint::Resolve));
    // The failed call never reached the resolver, so the chain still waits for 1 -> 2.
    r.resolve(batch(1, 1, 2, 1)).await.unwrap();
    assert_eq!(faults.calls(FaultPoint::Resolve), 3);
    assert_eq!(faults.calls(FaultPoint::LogPush), 0);
}
