//! The fakes keep the contracts their users rely on: chain order and fencing, the sequencer's
//! read version, and faults that fire on exactly the call armed. (The log contract itself is
//! run against `MemoryLog` by the log crate's contract tests.)

// Test helpers may unwrap: a panic there is a failed test.
#![allow(clippy::unwrap_used)]

use std::sync::{Arc, Barrier, mpsc};
use std::time::Duration;

use strata_core::{
    Epoch, ErrorKind, KeyRange, LogId, LogServer, ResolveBatch, Resolver, Sequencer, Stage,
    TransactionConflicts, Verdict, Version,
};
use strata_testkit::faults::{Fault, FaultPoint, Faults, FaultyResolver};
use strata_testkit::{MemoryLog, ModelResolver, StepSequencer};

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
    let newer = r.resolve(batch(3, 30, 40, 25)).await.unwrap_err();
    assert!(
        matches!(newer.kind, ErrorKind::InvalidRequest(_)),
        "{newer}"
    );
    assert_eq!(old.stage, Stage::Resolver);
    // Below the start version nothing is known: too old, naming the start.
    assert_eq!(
        r.resolve(batch(2, 30, 40, 5)).await.unwrap(),
        [Verdict::TooOld {
            oldest: Version(10)
        }]
    );
}

#[tokio::test]
async fn the_step_sequencer_fences_and_reads_what_was_reported() {
    let s = StepSequencer::new(Epoch(3), Version(100));
    let a = s.next_commit_version(Epoch(3)).await.unwrap();
    let b = s.next_commit_version(Epoch(3)).await.unwrap();
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
    // The watcher hears of the fault once, when it fires, with the epoch its call named.
    let heard = Arc::new(std::sync::Mutex::new(Vec::new()));
    let ear = heard.clone();
    faults.watch(move |f| ear.lock().unwrap().push((f.point, f.epoch)));
    faults.arm_at(FaultPoint::Resolve, 2, Fault::Usual);
    r.resolve(batch(1, 0, 1, 0)).await.unwrap();
    assert!(faults.is_armed(FaultPoint::Resolve));
    assert!(
        heard.lock().unwrap().is_empty(),
        "a call that passes is not a fault"
    );
    let e = r.resolve(batch(1, 1, 2, 1)).await.unwrap_err();
    assert_eq!(
        *heard.lock().unwrap(),
        [(FaultPoint::Resolve, Some(Epoch(1)))]
    );
    assert_eq!(e.stage, Stage::Resolver);
    assert!(e.to_string().contains("injected fault at Resolve"), "{e}");
    assert!(!faults.is_armed(FaultPoint::Resolve));
    // The failed call never reached the resolver, so the chain still waits for 1 -> 2.
    r.resolve(batch(1, 1, 2, 1)).await.unwrap();
    assert_eq!(faults.calls(FaultPoint::Resolve), 3);
    assert_eq!(faults.calls(FaultPoint::LogPush), 0);
    assert_eq!(heard.lock().unwrap().len(), 1, "a fault fires once");
}

/// The log's order of refusals: a malformed push is refused before it is told it is fenced.
#[tokio::test]
async fn the_memory_log_refuses_a_malformed_push_before_fencing_it() {
    let log = MemoryLog::new(LogId(1), Version(100));
    log.lock(Epoch(5)).await.unwrap();
    let err = log
        .push(Epoch(4), Version(110), Version(110), "x".into())
        .await
        .unwrap_err();
    assert!(matches!(err.kind, ErrorKind::InvalidRequest(_)), "{err}");
}

/// A current-thread runtime for one of the racing threads below.
fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .unwrap()
}

/// A push of an old epoch racing a `lock` of the next: either the push landed first and the
/// lock reports it, or the push is fenced. Never acknowledged yet missing from what the lock
/// reported (the fencing check and the admission are under one lock, as in the real log).
#[test]
fn the_memory_log_never_acknowledges_a_push_its_lock_did_not_report() {
    const RACES: usize = 200_000;
    let barrier = Arc::new(Barrier::new(2));
    let (to_push, push_jobs) = mpsc::channel::<(Arc<MemoryLog>, usize)>();
    let (to_lock, lock_jobs) = mpsc::channel::<(Arc<MemoryLog>, usize)>();
    let (push_done, pushed) = mpsc::channel();
    let (lock_done, locked) = mpsc::channel();
    let b = barrier.clone();
    let pusher = std::thread::spawn(move || {
        let rt = runtime();
        for (log, i) in push_jobs {
            b.wait();
            // Varying head starts, so the two calls interleave at every point.
            for _ in 0..(i % 97) {
                std::hint::spin_loop();
            }
            let r = rt.block_on(log.push(Epoch(1), Version(100), Version(110), "x".into()));
            push_done.send(r.is_ok()).unwrap();
        }
    });
    let b = barrier;
    let locker = std::thread::spawn(move || {
        let rt = runtime();
        for (log, i) in lock_jobs {
            b.wait();
            for _ in 0..((i / 97) % 97) {
                std::hint::spin_loop();
            }
            let state = rt.block_on(log.lock(Epoch(2))).unwrap();
            lock_done.send(state.last_version).unwrap();
        }
    });
    let mut lost = 0;
    for i in 0..RACES {
        let log = Arc::new(
            MemoryLog::new(LogId(1), Version(100))
                .with_waits(Duration::from_millis(50), Duration::from_millis(1)),
        );
        to_push.send((log.clone(), i)).unwrap();
        to_lock.send((log, i)).unwrap();
        let (acknowledged, reported) = (pushed.recv().unwrap(), locked.recv().unwrap());
        if acknowledged && reported == Version(100) {
            lost += 1;
        }
    }
    drop((to_push, to_lock));
    pusher.join().unwrap();
    locker.join().unwrap();
    assert_eq!(
        lost, 0,
        "{lost} of {RACES} pushes acknowledged after a lock that missed them"
    );
}

/// `lock` and `push` take the log's locks in one order, so running both at once never
/// deadlocks (this fails after 30 s without progress rather than hanging).
#[test]
fn the_memory_log_locks_while_pushing_without_deadlock() {
    const CALLS: u64 = 300_000;
    let log = Arc::new(MemoryLog::new(LogId(1), Version(0)));
    let (done, finished) = mpsc::channel();
    let pusher = {
        let (log, done) = (log.clone(), done.clone());
        std::thread::spawn(move || {
            let rt = runtime();
            for n in 1..=CALLS {
                rt.block_on(log.push(Epoch(1), Version(n - 1), Version(n), "x".into()))
                    .unwrap();
            }
            done.send(()).unwrap();
        })
    };
    let locker = std::thread::spawn(move || {
        let rt = runtime();
        for _ in 0..CALLS {
            // The same epoch: never fences the pusher.
            rt.block_on(log.lock(Epoch(1))).unwrap();
        }
        done.send(()).unwrap();
    });
    for _ in 0..2 {
        assert!(
            finished.recv_timeout(Duration::from_secs(30)).is_ok(),
            "push and lock made no progress for 30 s: deadlocked"
        );
    }
    pusher.join().unwrap();
    locker.join().unwrap();
}
