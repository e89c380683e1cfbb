//! "No hole in the chain": a batch that took a version pair and then could not be resolved,
//! pushed or reported ends the proxy's epoch at once; a chain that stops advancing is seen by
//! `health` and `waiting_on`; a transaction that would not fit the wire limit once stamped with
//! its commit version is refused before it can make a hole.
//!
//! The stages are the test kit's fakes (a step sequencer, a model resolver and in-memory logs,
//! which all apply batches only along the version chain, as the real stages do) behind its
//! fault decorators, which fail or hang one chosen call, so each test breaks the chain exactly
//! where it means to.

// Test helpers may unwrap: a panic there is a failed test.
#![allow(clippy::unwrap_used)]

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use strata_commit_proxy::{BatchingProxy, ProxyConfig};
use strata_core::wire::{TransactionView, WireError, encode_parts};
use strata_core::{
    CommitProxy, Epoch, Error, ErrorKind, KeyRange, LogId, LogServer, Mutation, Resolver,
    Sequencer, Stage, TRANSACTION_BYTES_MAX, Transaction, VALUE_BYTES_MAX, Version,
};
use strata_testkit::faults::{
    Fault, FaultPoint, Faults, FaultyLog, FaultyResolver, FaultySequencer,
};
use strata_testkit::{MemoryLog, ModelResolver, StepSequencer};
use tokio::sync::Notify;

const EPOCH: Epoch = Epoch(1);
/// Far enough from zero that a read version of 1 is outside the MVCC window.
const START: Version = Version(10_000_000);

/// How many logs, which one the log faults apply to, and how long logs wait for a missing
/// predecessor (the in-memory log's 1 s by default).
struct Layout {
    logs: usize,
    faulty_log: usize,
    log_predecessor_wait: Option<Duration>,
    /// A log whose first push never returns (its own switchboard, armed at once).
    hung_log: Option<usize>,
}

impl Default for Layout {
    fn default() -> Layout {
        Layout {
            logs: 1,
            faulty_log: 0,
            log_predecessor_wait: None,
            hung_log: None,
        }
    }
}

struct Cluster {
    sequencer: Arc<dyn Sequencer>,
    /// The undecorated logs, to look at what reached them.
    logs: Vec<Arc<MemoryLog>>,
    /// The switchboard of the sequencer and the resolver.
    faults: Arc<Faults>,
    /// The switchboard of the log at `Layout::faulty_log`; the other logs have none.
    log_faults: Arc<Faults>,
    proxy: BatchingProxy,
}

fn cluster(layout: Layout, config: ProxyConfig) -> Cluster {
    let faults = Faults::new();
    let log_faults = Faults::new();
    let sequencer: Arc<dyn Sequencer> = Arc::new(FaultySequencer(
        Arc::new(StepSequencer::new(EPOCH, START)),
        faults.clone(),
    ));
    let resolver: Arc<dyn Resolver> = Arc::new(FaultyResolver(
        Arc::new(ModelResolver::new(EPOCH, START)),
        faults.clone(),
    ));
    let logs: Vec<Arc<MemoryLog>> = (0..layout.logs.max(1))
        .map(|i| {
            let mut log = MemoryLog::new(LogId(i as u64), START);
            if let Some(wait) = layout.log_predecessor_wait {
                log = log.with_waits(wait, Duration::from_millis(100));
            }
            Arc::new(log)
        })
        .collect();
    let hung = Faults::new();
    hung.arm_at(FaultPoint::LogStall, 1, Fault::Hang);
    let pushed: Vec<Arc<dyn LogServer>> = logs
        .iter()
        .enumerate()
        .map(|(i, log)| {
            let log: Arc<dyn LogServer> = log.clone();
            if i == layout.faulty_log {
                Arc::new(FaultyLog(log, log_faults.clone()))
            } else if Some(i) == layout.hung_log {
                Arc::new(FaultyLog(log, hung.clone()))
            } else {
                log
            }
        })
        .collect();
    let proxy = BatchingProxy::new(
        EPOCH,
        sequencer.clone(),
        vec![(Bytes::new(), resolver)],
        pushed,
        config,
    )
    .unwrap();
    Cluster {
        sequencer,
        logs,
        faults,
        log_faults,
        proxy,
    }
}

/// A blind write of `key`: no read version, so it never conflicts and is never too old.
fn write(key: &str) -> Bytes {
    Transaction {
        write_conflicts: vec![KeyRange::single(Bytes::from(key.to_owned()))],
        mutations: vec![Mutation::Set {
            key: Bytes::from(key.to_owned()),
            value: Bytes::from_static(b"v"),
        }],
        ..Transaction::default()
    }
    .encode()
    .unwrap()
}

/// Reads `read` at `read_version` and writes `write`.
fn read_write(read_version: Version, read: &str, write: &str) -> Bytes {
    Transaction {
        read_version: Some(read_version),
        read_conflicts: vec![KeyRange::single(Bytes::from(read.to_owned()))],
        write_conflicts: vec![KeyRange::single(Bytes::from(write.to_owned()))],
        mutations: vec![Mutation::Set {
            key: Bytes::from(write.to_owned()),
            value: Bytes::from_static(b"v"),
        }],
    }
    .encode()
    .unwrap()
}

fn disk_on_fire() -> Error {
    Error::io(Stage::Log, std::io::Error::other("disk on fire"))
}

/// Asserts that `e` is the injected log failure, not some later symptom of it (such as a log
/// refusing the next batch as out of order).
fn assert_disk_on_fire(e: &Error) {
    assert_eq!(e.stage, Stage::Log, "{e}");
    assert!(matches!(e.kind, ErrorKind::Io(_)), "{e}");
    assert!(e.to_string().contains("disk on fire"), "{e}");
}

/// Waits (bounded) until `done` holds; the bound only keeps a broken build from hanging.
async fn until(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while !done() {
        assert!(tokio::time::Instant::now() < deadline, "never: {what}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// The bytes the commit version section adds to an encoding, measured with the wire format
/// itself rather than assumed.
fn commit_version_section_bytes() -> usize {
    let stamped = encode_parts(None, &[], &[], &[], Some(Version(1))).unwrap();
    let plain = encode_parts(None, &[], &[], &[], None).unwrap();
    stamped.len() - plain.len()
}

/// A blind transaction (no read version, no conflicts) whose encoding is exactly `len` bytes.
fn blind_transaction_of(len: usize) -> Bytes {
    let bytes = blind_of(len).encode().unwrap();
    assert_eq!(bytes.len(), len);
    bytes
}

/// The transaction [`blind_transaction_of`] encodes.
fn blind_of(len: usize) -> Transaction {
    let base = Transaction::default().encode().unwrap().len();
    // A Set is its kind byte, then the key and the value, each behind a u32 length.
    let per_set = 1 + 4 + 6 + 4;
    let mut need = len - base;
    let mut mutations = Vec::new();
    // Half-size values until one value of at most VALUE_BYTES_MAX finishes the job; the loop
    // stops with more than half a value left, so the last value is never negative.
    while need > per_set + VALUE_BYTES_MAX {
        let value = VALUE_BYTES_MAX / 2;
        mutations.push(Mutation::Set {
            key: Bytes::from(format!("k{:05}", mutations.len())),
            value: Bytes::from(vec![b'x'; value]),
        });
        need -= per_set + value;
    }
    mutations.push(Mutation::Set {
        key: Bytes::from(format!("k{:05}", mutations.len())),
        value: Bytes::from(vec![b'x'; need - per_set]),
    });
    Transaction {
        mutations,
        ..Transaction::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_push_ends_the_epoch_and_every_later_commit_names_it() {
    // The second of two logs fails the first push: the first log holds the batch, the second
    // never will, so no later batch can ever be on every log.
    let c = cluster(
        Layout {
            logs: 2,
            faulty_log: 1,
            ..Layout::default()
        },
        ProxyConfig::default(),
    );
    c.log_faults
        .arm_at(FaultPoint::LogPush, 1, Fault::FailWith(disk_on_fire()));
    assert!(c.proxy.failure().is_none());

    let err = c.proxy.commit(write("a")).await.unwrap_err();
    assert_disk_on_fire(&err);
    let failure = c.proxy.failure().unwrap();
    assert_disk_on_fire(&failure);
    assert_disk_on_fire(&c.proxy.health().unwrap_err());

    // Every later commit gets the original cause, not the next batch's out-of-order refusal.
    for key in ["b", "c", "d"] {
        let err = c.proxy.commit(write(key)).await.unwrap_err();
        assert_disk_on_fire(&err);
    }
    // The batcher still runs (it answers with the failure); the proxy was not fenced.
    assert!(c.proxy.is_running());
    assert!(!c.proxy.is_fenced());
    // Nothing was reported committed, and the other log holds at most the first batch.
    assert_eq!(c.sequencer.read_version().await.unwrap(), START);
    let held = c.logs[0].pull(START, 100).await.unwrap();
    assert!(held.len() <= 1, "{} batches on the healthy log", held.len());
}

#[tokio::test(start_paused = true)]
async fn a_failed_push_ends_the_epoch_without_waiting_for_the_other_logs() {
    // One log fails the push, another never answers it (say, it waits on a predecessor that a
    // stalled push holds back): the batch can never be on every log, so the epoch ends now,
    // not when the stall detector notices seconds later. (Found by the simulation's check that
    // a failed batch ends its epoch at once, seed 16: three logs, a push delayed 2.7 s, then
    // another batch's push failing behind it; the proxy waited out the delay.)
    let c = cluster(
        Layout {
            logs: 3,
            faulty_log: 0,
            hung_log: Some(2),
            ..Layout::default()
        },
        ProxyConfig::default(),
    );
    c.log_faults
        .arm_at(FaultPoint::LogPush, 1, Fault::FailWith(disk_on_fire()));
    let answered = tokio::time::timeout(Duration::from_secs(5), c.proxy.commit(write("a"))).await;
    let err = answered
        .expect("the commit waited for the hung log")
        .unwrap_err();
    assert_disk_on_fire(&err);
    assert_disk_on_fire(&c.proxy.failure().unwrap());
    assert_disk_on_fire(&c.proxy.health().unwrap_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batches_behind_a_failed_one_and_queued_transactions_get_its_error() {
    let gate = Arc::new(Notify::new());
    let c = Arc::new(cluster(
        Layout {
            // Long enough that a batch behind the failed one is never refused by the log as
            // out of order before the failure reaches it.
            log_predecessor_wait: Some(Duration::from_secs(5)),
            ..Layout::default()
        },
        ProxyConfig {
            batch_transactions_max: 1,
            in_flight_batches_max: 2,
            ..ProxyConfig::default()
        },
    ));
    c.log_faults.arm_at(
        FaultPoint::LogPush,
        1,
        Fault::FailWhenOpened(gate.clone(), disk_on_fire()),
    );
    let commit = |key: &'static str| {
        let c = c.clone();
        tokio::spawn(async move { c.proxy.commit(write(key)).await })
    };
    // The first batch reaches the log and waits there for the gate.
    let first = commit("first");
    until("the first batch reaches the log", || {
        c.log_faults.calls(FaultPoint::LogPush) >= 1
    })
    .await;
    // The second batch reaches the log too (waiting for its predecessor); the rest wait for
    // room in the pipeline, queued.
    let later: Vec<_> = ["b", "c", "d", "e", "f"].into_iter().map(commit).collect();
    until("the second batch reaches the log", || {
        c.log_faults.calls(FaultPoint::LogPush) >= 2
    })
    .await;
    assert!(c.proxy.failure().is_none());

    gate.notify_one();
    assert_disk_on_fire(&first.await.unwrap().unwrap_err());
    for task in later {
        assert_disk_on_fire(&task.await.unwrap().unwrap_err());
    }
    assert_disk_on_fire(&c.proxy.failure().unwrap());
    assert_eq!(c.logs[0].pull(START, 100).await.unwrap(), vec![]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_resolution_ends_the_epoch() {
    let lost = Error::new(
        Stage::Resolver,
        ErrorKind::Unavailable("resolver lost".into()),
    );
    let c = cluster(Layout::default(), ProxyConfig::default());
    c.faults
        .arm_at(FaultPoint::Resolve, 1, Fault::FailWith(lost));
    let is_lost = |e: &Error| {
        e.stage == Stage::Resolver
            && matches!(&e.kind, ErrorKind::Unavailable(m) if m == "resolver lost")
    };
    let err = c.proxy.commit(write("a")).await.unwrap_err();
    assert!(is_lost(&err), "{err}");
    // The resolver would wait for the missing batch and refuse the next as out of order; the
    // proxy answers with the cause instead.
    let err = c.proxy.commit(write("b")).await.unwrap_err();
    assert!(is_lost(&err), "{err}");
    assert!(is_lost(&c.proxy.failure().unwrap()));
    assert!(is_lost(&c.proxy.health().unwrap_err()));
    assert_eq!(c.logs[0].pull(START, 100).await.unwrap(), vec![]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_version_request_ends_the_epoch() {
    let lost = Error::new(
        Stage::Sequencer,
        ErrorKind::Unavailable("lease lost".into()),
    );
    let c = cluster(Layout::default(), ProxyConfig::default());
    c.faults
        .arm_at(FaultPoint::CommitVersion, 1, Fault::FailWith(lost));
    let is_lost = |e: &Error| {
        e.stage == Stage::Sequencer
            && matches!(&e.kind, ErrorKind::Unavailable(m) if m == "lease lost")
    };
    let err = c.proxy.commit(write("a")).await.unwrap_err();
    assert!(is_lost(&err), "{err}");
    assert!(is_lost(&c.proxy.failure().unwrap()));
    // The sequencer would answer the next request, but a sequencer that failed one cannot be
    // trusted to have kept its chain: the epoch is over.
    let err = c.proxy.commit(write("b")).await.unwrap_err();
    assert!(is_lost(&err), "{err}");
    assert_eq!(
        c.faults.calls(FaultPoint::CommitVersion),
        1,
        "no version was asked for after"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_report_ends_the_epoch() {
    let lost = Error::new(
        Stage::Sequencer,
        ErrorKind::Unavailable("report lost".into()),
    );
    let c = cluster(Layout::default(), ProxyConfig::default());
    c.faults
        .arm_at(FaultPoint::ReportCommitted, 1, Fault::FailWith(lost));
    let is_lost = |e: &Error| {
        e.stage == Stage::Sequencer
            && matches!(&e.kind, ErrorKind::Unavailable(m) if m == "report lost")
    };
    let err = c.proxy.commit(write("a")).await.unwrap_err();
    assert!(is_lost(&err), "{err}");
    let err = c.proxy.commit(write("b")).await.unwrap_err();
    assert!(is_lost(&err), "{err}");
    assert!(is_lost(&c.proxy.failure().unwrap()));
    // Only the first batch reached the logs (its outcome is unknown to its client).
    assert_eq!(c.logs[0].pull(START, 100).await.unwrap().len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conflicts_and_too_old_are_answers_not_failures() {
    let c = cluster(Layout::default(), ProxyConfig::default());
    let rv = c.sequencer.read_version().await.unwrap();
    c.proxy.commit(write("a")).await.unwrap();
    let err = c.proxy.commit(read_write(rv, "a", "b")).await.unwrap_err();
    assert!(matches!(err.kind, ErrorKind::Conflict), "{err}");
    let err = c
        .proxy
        .commit(read_write(Version(1), "x", "y"))
        .await
        .unwrap_err();
    // Named by its own read version, below the resolver's oldest (where it started).
    assert!(
        matches!(err.kind, ErrorKind::TooOld { version, oldest }
            if version == Version(1) && oldest == START),
        "{err}"
    );

    assert!(c.proxy.failure().is_none());
    c.proxy.health().unwrap();
    c.proxy.commit(write("c")).await.unwrap();
    // Refused transactions are answered once resolved, before their batch is pushed, so the
    // batches leave the in-flight list a little after the answers.
    until("no batch in flight", || c.proxy.waiting_on().is_none()).await;
    c.proxy.health().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hung_stage_is_named_by_waiting_on_and_health() {
    let cases = [
        (Stage::Sequencer, FaultPoint::CommitVersion),
        (Stage::Resolver, FaultPoint::Resolve),
        (Stage::Log, FaultPoint::LogPush),
        (Stage::Sequencer, FaultPoint::ReportCommitted),
    ];
    for (stage, point) in cases {
        let c = Arc::new(cluster(
            Layout::default(),
            ProxyConfig {
                stall_timeout: Duration::from_millis(200),
                ..ProxyConfig::default()
            },
        ));
        let board = if stage == Stage::Log {
            &c.log_faults
        } else {
            &c.faults
        };
        board.arm_at(point, 1, Fault::Hang);
        assert_eq!(c.proxy.waiting_on(), None);
        c.proxy.health().unwrap();

        let task = {
            let c = c.clone();
            tokio::spawn(async move { c.proxy.commit(write("a")).await })
        };
        until("the batch waits on the hung stage", || {
            c.proxy.waiting_on() == Some(stage)
        })
        .await;
        until("health sees the stall", || c.proxy.health().is_err()).await;
        let err = c.proxy.health().unwrap_err();
        assert_eq!(err.stage, stage, "{err}");
        assert!(
            matches!(err.kind, ErrorKind::Timeout { after_ms, .. } if after_ms >= 200),
            "{err}"
        );
        assert_eq!(c.proxy.waiting_on(), Some(stage));
        // A stall is reported, not recorded: the batch may still finish.
        assert!(c.proxy.failure().is_none());
        task.abort();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_transaction_at_the_wire_limit_is_refused_before_it_makes_a_hole() {
    let overhead = commit_version_section_bytes();
    assert_eq!(overhead, strata_core::wire::SECTION_HEADER_BYTES + 8);
    // Handed over encoded, and as it is (the transaction builder's way): the same checks.
    for encoded in [true, false] {
        let c = cluster(Layout::default(), ProxyConfig::default());
        let commit = |tx: Transaction| {
            let proxy = &c.proxy;
            async move {
                if encoded {
                    proxy.commit(tx.encode().unwrap()).await
                } else {
                    proxy.commit_transaction(tx).await
                }
            }
        };

        // Exactly the wire limit: valid on its own, over the limit once stamped.
        let err = commit(blind_of(TRANSACTION_BYTES_MAX)).await.unwrap_err();
        assert_eq!(err.stage, Stage::CommitProxy, "{err}");
        assert!(
            matches!(
                err.kind,
                ErrorKind::Wire(WireError::TransactionTooLarge { len, max })
                    if len == TRANSACTION_BYTES_MAX && max == TRANSACTION_BYTES_MAX - overhead
            ),
            "encoded: {encoded}: {err}"
        );
        assert!(c.proxy.failure().is_none());

        // The largest transaction that fits commits, and its batch is exactly the wire limit.
        let v = commit(blind_of(TRANSACTION_BYTES_MAX - overhead))
            .await
            .unwrap();
        let logged = c.logs[0].pull(START, 10).await.unwrap();
        assert_eq!(logged.last().unwrap().version, v);
        assert_eq!(logged.last().unwrap().payload.len(), TRANSACTION_BYTES_MAX);

        // Nothing was left behind: the chain goes on.
        c.proxy.commit(write("after")).await.unwrap();
        c.proxy.health().unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_bound_that_leaves_no_room_for_the_commit_version_is_refused() {
    let overhead = commit_version_section_bytes();
    let build = |config: ProxyConfig| {
        let log: Arc<dyn LogServer> = Arc::new(MemoryLog::new(LogId(0), START));
        let resolver: Arc<dyn Resolver> = Arc::new(ModelResolver::new(EPOCH, START));
        BatchingProxy::new(
            EPOCH,
            Arc::new(StepSequencer::new(EPOCH, START)),
            vec![(Bytes::new(), resolver)],
            vec![log],
            config,
        )
    };
    let bytes = |batch_bytes_max| ProxyConfig {
        batch_bytes_max,
        ..ProxyConfig::default()
    };
    build(ProxyConfig::default()).unwrap();
    build(bytes(TRANSACTION_BYTES_MAX - overhead)).unwrap();
    for bad in [
        bytes(TRANSACTION_BYTES_MAX - overhead + 1),
        bytes(TRANSACTION_BYTES_MAX),
        ProxyConfig {
            stall_timeout: Duration::ZERO,
            ..ProxyConfig::default()
        },
    ] {
        let err = build(bad).unwrap_err();
        assert_eq!(err.stage, Stage::CommitProxy, "{err}");
        assert!(matches!(err.kind, ErrorKind::InvalidRequest(_)), "{err}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transactions_too_large_together_are_never_batched_together() {
    // Guard (this held before too): with the largest batch bound allowed and a window long
    // enough to gather everything, three transactions of 40% of the limit each still make
    // batches that fit the wire limit, and all commit.
    let overhead = commit_version_section_bytes();
    let c = Arc::new(cluster(
        Layout::default(),
        ProxyConfig {
            batch_bytes_max: TRANSACTION_BYTES_MAX - overhead,
            batch_window: Duration::from_millis(100),
            ..ProxyConfig::default()
        },
    ));
    let tasks: Vec<_> = (0..3)
        .map(|_| {
            let c = c.clone();
            tokio::spawn(async move {
                c.proxy
                    .commit(blind_transaction_of(TRANSACTION_BYTES_MAX / 5 * 2))
                    .await
            })
        })
        .collect();
    for t in tasks {
        t.await.unwrap().unwrap();
    }
    let logged = c.logs[0].pull(START, 10).await.unwrap();
    let mut sets = 0;
    for entry in &logged {
        assert!(entry.payload.len() <= TRANSACTION_BYTES_MAX);
        sets += TransactionView::parse(entry.payload.clone())
            .unwrap()
            .mutations()
            .unwrap()
            .len();
    }
    let per_transaction = Transaction::decode(&blind_transaction_of(TRANSACTION_BYTES_MAX / 5 * 2))
        .unwrap()
        .mutations
        .len();
    assert_eq!(sets, 3 * per_transaction);
}
