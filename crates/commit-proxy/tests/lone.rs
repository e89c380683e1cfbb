//! A lone commit: when nothing is queued and the pipeline has room, the committing task forms
//! and runs its batch of one itself, and the batch reaches every log even if the caller gives
//! up on it halfway.

// Test helpers may unwrap: a panic there is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use strata_commit_proxy::{BatchingProxy, ProxyConfig};
use strata_core::{
    CommitProxy, Epoch, KeyRange, LogEntry, LogId, LogServer, LogState, Mutation, Resolver, Result,
    Transaction, Version,
};
use strata_testkit::faults::{Fault, FaultPoint, Faults, FaultyLog};
use strata_testkit::{MemoryLog, ModelResolver, StepSequencer};
use tokio::task::Id;

const EPOCH: Epoch = Epoch(1);

fn blind(key: &str) -> Bytes {
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

fn proxy_over(logs: Vec<Arc<dyn LogServer>>, config: ProxyConfig) -> Arc<BatchingProxy> {
    proxy_with(
        Arc::new(ModelResolver::new(EPOCH, Version(0))),
        logs,
        config,
    )
}

/// A proxy of one resolver, `resolver`, over `logs`.
fn proxy_with(
    resolver: Arc<dyn Resolver>,
    logs: Vec<Arc<dyn LogServer>>,
    config: ProxyConfig,
) -> Arc<BatchingProxy> {
    Arc::new(
        BatchingProxy::new(
            EPOCH,
            Arc::new(StepSequencer::new(EPOCH, Version(0))),
            vec![(Bytes::new(), resolver)],
            logs,
            config,
        )
        .unwrap(),
    )
}

/// `log`, whose first push waits `held` (of the paused clock, in the tests that pause it)
/// before it reaches the log.
fn first_push_held(log: Arc<dyn LogServer>, held: Duration) -> Arc<dyn LogServer> {
    let faults = Faults::new();
    faults.arm_at(FaultPoint::LogPush, 1, Fault::Delay(held));
    Arc::new(FaultyLog(log, faults))
}

/// A proxy over two logs, the first of which holds its first push for `held`.
fn two_logs_first_push_held(held: Duration) -> (Vec<Arc<MemoryLog>>, Arc<BatchingProxy>) {
    let logs: Vec<Arc<MemoryLog>> = (0..2)
        .map(|i| Arc::new(MemoryLog::new(LogId(i), Version(0))))
        .collect();
    let proxy = proxy_over(
        vec![first_push_held(logs[0].clone(), held), logs[1].clone()],
        ProxyConfig::default(),
    );
    (logs, proxy)
}

/// After a first commit its caller gave up on: the next commit goes through within `wait`,
/// with no failure, and every log holds both batches, the second at its version.
async fn next_commit_lands_after_the_first(
    proxy: &BatchingProxy,
    logs: &[Arc<MemoryLog>],
    wait: Duration,
) {
    let version = tokio::time::timeout(wait, proxy.commit(blind("b")))
        .await
        .expect("the next commit is not stuck behind a hole")
        .unwrap();
    assert!(proxy.failure().is_none(), "{:?}", proxy.failure());
    for log in logs {
        let entries = log.entries();
        assert_eq!(entries.len(), 2, "both batches on log {:?}", log.id());
        assert_eq!(entries[1].version, version);
    }
}

/// A log that notes which task pushed each version and, if `yields`, gives the runtime a few
/// turns before each push (so that a caller can give up on a commit halfway through it).
struct TestLog {
    log: MemoryLog,
    yields: bool,
    pushed_by: Mutex<Vec<(Version, Option<Id>)>>,
}

impl TestLog {
    fn new(yields: bool) -> TestLog {
        TestLog {
            log: MemoryLog::new(LogId(0), Version(0)),
            yields,
            pushed_by: Mutex::new(Vec::new()),
        }
    }
}

#[async_trait]
impl LogServer for TestLog {
    fn id(&self) -> LogId {
        self.log.id()
    }

    async fn push(
        &self,
        epoch: Epoch,
        previous_version: Version,
        version: Version,
        payload: Bytes,
    ) -> Result<()> {
        self.pushed_by
            .lock()
            .unwrap()
            .push((version, tokio::task::try_id()));
        if self.yields {
            for _ in 0..version.0 % 4 {
                tokio::task::yield_now().await;
            }
        }
        self.log
            .push(epoch, previous_version, version, payload)
            .await
    }

    async fn pull(&self, after: Version, limit: usize) -> Result<Vec<LogEntry>> {
        self.log.pull(after, limit).await
    }

    async fn lock(&self, epoch: Epoch) -> Result<LogState> {
        self.log.lock(epoch).await
    }

    async fn pop(&self, version: Version) -> Result<()> {
        self.log.pop(version).await
    }
}

/// The saving a lone commit is for: no hand-off to the batcher's task and no spawned task for
/// its batch, so the push runs on the task that called `commit`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lone_commit_is_pushed_by_the_committing_task() {
    let log = Arc::new(TestLog::new(false));
    let proxy = proxy_over(vec![log.clone()], ProxyConfig::default());
    for i in 0..3 {
        let proxy = proxy.clone();
        let (task, version) = tokio::spawn(async move {
            let version = proxy.commit(blind(&format!("k{i}"))).await.unwrap();
            (tokio::task::id(), version)
        })
        .await
        .unwrap();
        let pushed_by = log.pushed_by.lock().unwrap().last().copied();
        assert_eq!(pushed_by, Some((version, Some(task))), "commit {i}");
    }
    assert_eq!(proxy.lone_commits(), 3);
}

/// A batch window asks for batches to wait for company, so even a lone commit goes through the
/// batcher then.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_a_batch_window_a_lone_commit_still_goes_through_the_batcher() {
    let log = Arc::new(TestLog::new(false));
    let config = ProxyConfig {
        batch_window: Duration::from_millis(1),
        ..ProxyConfig::default()
    };
    let proxy = proxy_over(vec![log.clone()], config);
    let p = proxy.clone();
    let (task, version) = tokio::spawn(async move {
        let version = p.commit(blind("k")).await.unwrap();
        (tokio::task::id(), version)
    })
    .await
    .unwrap();
    let pushed_by = log.pushed_by.lock().unwrap().last().copied();
    assert!(
        matches!(pushed_by, Some((v, Some(t))) if v == version && t != task),
        "{pushed_by:?}"
    );
}

/// A caller that gives up on a lone commit (a timeout, a cancelled task) must not take its
/// batch with it: the batch holds a version pair, and a version that never reaches the logs is
/// a hole no later batch of the epoch can get past. The batch finishes without the caller, and
/// the next commit goes through.
#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn a_lone_commit_given_up_by_its_caller_still_reaches_every_log() {
    let (logs, proxy) = two_logs_first_push_held(Duration::from_millis(100));
    let given_up = tokio::time::timeout(Duration::from_millis(10), proxy.commit(blind("a"))).await;
    assert!(given_up.is_err(), "the commit was still waiting on its log");
    assert_eq!(proxy.lone_commits(), 1);

    next_commit_lands_after_the_first(&proxy, &logs, Duration::from_millis(500)).await;
}

/// Callers giving up at every point of a lone commit: before it ran, while it takes its
/// version, while it waits on its log. Whatever took a version reaches the log, and the chain
/// has no hole.
#[tokio::test(flavor = "current_thread")]
async fn lone_commits_given_up_at_any_point_leave_no_hole() {
    let log = Arc::new(TestLog::new(true));
    let proxy = proxy_over(vec![log.clone()], ProxyConfig::default());
    let (mut given_up, mut committed, mut started) = (0, 0, 0);
    for i in 0..300u64 {
        // Each commit finds the pipeline idle, so each one that starts is lone.
        while proxy.waiting_on().is_some() {
            tokio::task::yield_now().await;
        }
        let commit = proxy.commit(blind(&format!("k{i}")));
        // With no tick the commit is dropped before it starts.
        let ticks = i % 5;
        if ticks > 0 {
            started += 1;
        }
        let give_up = async {
            for _ in 0..ticks {
                tokio::task::yield_now().await;
            }
        };
        tokio::select! {
            biased;
            () = give_up => given_up += 1,
            done = commit => {
                done.unwrap();
                committed += 1;
            }
        }
    }
    assert!(
        given_up > 0 && committed > 0,
        "{given_up} given up, {committed} committed"
    );
    assert_eq!(proxy.lone_commits(), started);
    let last = tokio::time::timeout(Duration::from_secs(5), proxy.commit(blind("last")))
        .await
        .expect("the chain has no hole")
        .unwrap();
    assert!(proxy.failure().is_none(), "{:?}", proxy.failure());
    // Every version handed to the log is on it, in one chain ending at the last commit.
    let entries = log.log.entries();
    assert_eq!(entries.last().map(|e| e.version), Some(last));
    let mut pushed: Vec<Version> = log.pushed_by.lock().unwrap().iter().map(|p| p.0).collect();
    pushed.sort();
    pushed.dedup();
    let logged: Vec<Version> = entries.iter().map(|e| e.version).collect();
    assert_eq!(logged, pushed);
}

/// Only a commit that finds the pipeline idle goes alone: commits that arrive while a batch is
/// in flight queue, even with room for more batches, and share the batcher's next batch. And
/// after such a batch, going alone waits for two batches of one in a row.
#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn commits_arriving_while_a_batch_is_in_flight_share_a_batch() {
    let log = Arc::new(MemoryLog::new(LogId(0), Version(0)));
    let proxy = proxy_over(
        vec![first_push_held(log.clone(), Duration::from_millis(100))],
        ProxyConfig::default(),
    );
    assert!(ProxyConfig::default().in_flight_batches_max > 2);
    let commit = |i: usize| {
        let proxy = proxy.clone();
        tokio::spawn(async move { proxy.commit(blind(&format!("k{i}"))).await })
    };
    let mut tasks = vec![commit(0)];
    tokio::time::sleep(Duration::from_millis(1)).await;
    for i in 1..6 {
        tasks.push(commit(i));
    }
    for t in tasks {
        t.await.unwrap().unwrap();
    }
    let sizes: Vec<usize> = log
        .entries()
        .iter()
        .map(|e| {
            strata_core::TransactionView::parse(e.payload.clone())
                .unwrap()
                .mutations()
                .unwrap()
                .len()
        })
        .collect();
    assert_eq!(sizes, [1, 5]);
    assert_eq!(proxy.lone_commits(), 1);

    // Just after a batch of several, an idle proxy is not taken for a lone client's: the next
    // commits go through the batcher until two batches in a row held one transaction each.
    let mut lone = Vec::new();
    for i in 6..9 {
        proxy.commit(blind(&format!("k{i}"))).await.unwrap();
        lone.push(proxy.lone_commits());
    }
    assert_eq!(lone, [1, 1, 2]);
}

/// A caller that gives up while it waits for room in a full queue never queued anything, so
/// it must not be counted as queued: a count left behind would keep every later commit off
/// the lone path for the rest of the epoch.
#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn a_caller_giving_up_on_a_full_queue_leaves_lone_commits_possible() {
    let log = Arc::new(TestLog::new(false));
    let proxy = proxy_over(
        vec![first_push_held(log.clone(), Duration::from_millis(100))],
        ProxyConfig {
            queue_transactions_max: 1,
            in_flight_batches_max: 1,
            ..ProxyConfig::default()
        },
    );
    let commit = |key: &'static str| {
        let proxy = proxy.clone();
        tokio::spawn(async move { proxy.commit(blind(key)).await })
    };
    // A lone batch held at the log; then one commit the batcher holds while it waits for room
    // in the pipeline, and one in the queue's only place.
    let mut tasks = vec![commit("a")];
    tokio::time::sleep(Duration::from_millis(1)).await;
    tasks.push(commit("b"));
    tokio::time::sleep(Duration::from_millis(1)).await;
    tasks.push(commit("c"));
    tokio::time::sleep(Duration::from_millis(1)).await;
    // The queue is full: this caller waits for room, and gives up.
    let given_up = tokio::time::timeout(Duration::from_millis(10), proxy.commit(blind("d"))).await;
    assert!(given_up.is_err(), "the queue was full");
    for t in tasks {
        t.await.unwrap().unwrap();
    }
    // After the batch of "b" and "c", two batches of one, then the proxy counts as a lone
    // client's again.
    for key in ["e1", "e2"] {
        proxy.commit(blind(key)).await.unwrap();
    }

    let (task, version) = tokio::spawn({
        let proxy = proxy.clone();
        async move {
            let version = proxy.commit(blind("e")).await.unwrap();
            (tokio::task::id(), version)
        }
    })
    .await
    .unwrap();
    let pushed_by = log.pushed_by.lock().unwrap().last().copied();
    assert_eq!(
        pushed_by,
        Some((version, Some(task))),
        "a lone commit again"
    );
    assert_eq!(proxy.lone_commits(), 2, "the first and the last");
}

/// A caller may also keep a commit's future and stop polling it for a while (a `select!` that
/// went on to other work). A lone batch that had to wait is then no longer the caller's to
/// drive: it runs on without it, and the commits behind it are not held up.
#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn a_lone_commit_whose_caller_stops_polling_does_not_hold_up_the_next() {
    let log = Arc::new(MemoryLog::new(LogId(0), Version(0)));
    let proxy = proxy_over(
        vec![first_push_held(log.clone(), Duration::from_millis(100))],
        ProxyConfig::default(),
    );
    let mut first = std::pin::pin!(proxy.commit(blind("a")));
    // Polled until it waits on its log, then left alone.
    let waiting = tokio::time::timeout(Duration::from_millis(1), first.as_mut()).await;
    assert!(waiting.is_err(), "the first commit waits on its log");
    assert_eq!(proxy.lone_commits(), 1);

    let second = tokio::time::timeout(Duration::from_secs(1), proxy.commit(blind("b")))
        .await
        .expect("the next commit is not held up by a commit nobody polls")
        .unwrap();
    assert!(proxy.failure().is_none(), "{:?}", proxy.failure());
    assert_eq!(log.entries().len(), 2);
    // The first caller, back at last, finds its answer.
    let first = first.await.unwrap();
    assert!(first < second);
}

/// A commit from a task of another runtime (a blocking client with a runtime of its own) is
/// not lone: its batch's pushes would be tasks of that runtime, which may stop being driven or
/// be dropped while they still carry a version. It goes through the batcher, on the proxy's
/// runtime, and a caller that gives up and drops its runtime loses nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_commit_from_another_runtime_is_batched_on_the_proxys() {
    let (logs, proxy) = two_logs_first_push_held(Duration::from_millis(200));
    let p = proxy.clone();
    std::thread::spawn(move || {
        let own = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let given_up = own.block_on(async {
            tokio::time::timeout(Duration::from_millis(20), p.commit(blind("a"))).await
        });
        assert!(given_up.is_err(), "the commit was still waiting on its log");
        drop(own);
    })
    .join()
    .unwrap();
    assert_eq!(proxy.lone_commits(), 0);

    next_commit_lands_after_the_first(&proxy, &logs, Duration::from_secs(5)).await;
}

/// A resolver with a bug that panics.
struct PanickingResolver;

#[async_trait]
impl Resolver for PanickingResolver {
    async fn resolve(
        &self,
        _batch: strata_core::ResolveBatch,
    ) -> Result<Vec<strata_core::Verdict>> {
        panic!("a resolver bug");
    }
}

/// A stage that panics (a bug) while a lone commit runs its batch: the panic stays in the
/// proxy, as it did in a batch's own task, and the caller gets an error that says so instead
/// of a panic of its own.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panic_in_a_lone_batch_is_an_error_for_its_caller() {
    let proxy = proxy_with(
        Arc::new(PanickingResolver),
        vec![Arc::new(MemoryLog::new(LogId(0), Version(0)))],
        ProxyConfig::default(),
    );
    let p = proxy.clone();
    let answered = tokio::spawn(async move { p.commit(blind("a")).await })
        .await
        .expect("the caller's task did not panic");
    let e = answered.unwrap_err();
    assert!(
        matches!(&e.kind, strata_core::ErrorKind::Unavailable(m) if m.contains("panicked")),
        "{e}"
    );
    assert_eq!(proxy.lone_commits(), 1);
    // The batch held a version that never reached the log: the epoch ends at once, with the
    // cause, and nothing stays listed in flight.
    assert_eq!(proxy.failure().map(|f| f.to_string()), Some(e.to_string()));
    assert_eq!(proxy.waiting_on(), None);
    let next = proxy.commit(blind("b")).await.unwrap_err();
    assert_eq!(next.to_string(), e.to_string());
}

/// The same panic in one of the batcher's batches (a batch window keeps commits off the lone
/// path): the batch stops unfinished, the epoch ends with that cause, and the caller hears it
/// rather than that the proxy stopped.
///
/// The caller wakes when the batch's replies are dropped, on another worker thread: the cause
/// must be recorded before that, every time, so the test tries many times over.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panic_in_a_batchers_batch_ends_the_epoch_with_its_cause() {
    for attempt in 0..100 {
        let proxy = proxy_with(
            Arc::new(PanickingResolver),
            vec![Arc::new(MemoryLog::new(LogId(0), Version(0)))],
            ProxyConfig {
                batch_window: Duration::from_millis(1),
                ..ProxyConfig::default()
            },
        );
        let e = proxy.commit(blind("a")).await.unwrap_err();
        assert!(
            matches!(&e.kind, strata_core::ErrorKind::Unavailable(m) if m.contains("panicked")),
            "attempt {attempt}: {e}"
        );
        assert_eq!(proxy.lone_commits(), 0);
        assert_eq!(
            proxy.failure().map(|f| f.to_string()),
            Some(e.to_string()),
            "attempt {attempt}"
        );
    }
}

/// The transactions of one `commit_all` never go alone, even on a proxy idle after lone
/// commits: they are queued together and share batches (alone, each would be a batch of its
/// own, finished before the next is looked at). Each still gets its own outcome, in order, and
/// one the proxy refuses its own error.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_transactions_of_one_commit_all_share_batches_and_keep_their_outcomes() {
    let log = Arc::new(MemoryLog::new(LogId(0), Version(0)));
    let proxy = proxy_over(vec![log.clone()], ProxyConfig::default());
    for key in ["a", "b", "c"] {
        proxy.commit(blind(key)).await.unwrap();
    }
    let lone = proxy.lone_commits();
    assert_eq!(lone, 3, "idle: single commits go alone");
    let mut transactions: Vec<Transaction> = (0..20)
        .map(|i| Transaction::decode(&blind(&format!("k{i}"))).unwrap())
        .collect();
    let too_long = Bytes::from(vec![b'x'; strata_core::KEY_BYTES_MAX + 1]);
    transactions.insert(
        7,
        Transaction {
            mutations: vec![Mutation::Set {
                key: too_long,
                value: Bytes::new(),
            }],
            ..Transaction::default()
        },
    );
    let outcomes = proxy.commit_all(transactions).await;
    assert_eq!(outcomes.len(), 21);
    assert!(
        matches!(&outcomes[7], Err(e) if matches!(e.kind, strata_core::ErrorKind::Wire(_))),
        "{:?}",
        outcomes[7]
    );
    let mut versions: Vec<Version> = outcomes
        .iter()
        .enumerate()
        .filter(|(i, _)| *i != 7)
        .map(|(_, o)| *o.as_ref().unwrap())
        .collect();
    assert_eq!(proxy.lone_commits(), lone, "none of them went alone");
    // Each version holds the keys the outcomes say: the first committed key `k0` at the
    // first version, the last `k19` at the last.
    let entries = log.entries();
    let holds = |version: Version, key: &str| {
        entries.iter().any(|e| {
            e.version == version
                && Transaction::decode(&e.payload)
                    .ok()
                    .is_some_and(|t| t.mutations.iter().any(|m| m.range().begin() == key))
        })
    };
    for (i, version) in versions.iter().enumerate() {
        assert!(
            holds(*version, &format!("k{i}")),
            "k{i} is not at {version}"
        );
    }
    assert!(versions.is_sorted(), "queued in order, committed in order");
    versions.dedup();
    assert!(
        versions.len() < 20,
        "20 transactions in {} batches",
        versions.len()
    );
}

/// A full queue holds one `commit_all` up for one `queue_wait` in all, not one per
/// transaction: the transactions that found no room by then are refused as overloaded
/// together, and those queued before commit.
#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn the_transactions_of_one_commit_all_wait_for_room_together() {
    let wait = Duration::from_secs(1);
    let proxy = proxy_over(
        vec![first_push_held(
            Arc::new(MemoryLog::new(LogId(0), Version(0))),
            wait * 5 / 2,
        )],
        ProxyConfig {
            queue_transactions_max: 1,
            in_flight_batches_max: 1,
            queue_wait: wait,
            ..ProxyConfig::default()
        },
    );
    // A lone batch held at the log for two and a half waits: the pipeline is full.
    let held = tokio::spawn({
        let proxy = proxy.clone();
        async move { proxy.commit(blind("a")).await }
    });
    tokio::time::sleep(Duration::from_millis(1)).await;
    // "b" is taken by the batcher, which holds it until the pipeline has room, and "c" takes
    // the queue's only place; the four after it find no room within one wait. Were each to
    // wait on its own, "f" would still be waiting when the held batch ends, and get room.
    let keys = ["b", "c", "d", "e", "f", "g"];
    let transactions = keys
        .iter()
        .map(|key| Transaction::decode(&blind(key)).unwrap())
        .collect();
    let outcomes = proxy.commit_all(transactions).await;
    held.await.unwrap().unwrap();
    assert!(outcomes[0].is_ok() && outcomes[1].is_ok(), "{outcomes:?}");
    for (key, outcome) in keys.iter().zip(&outcomes).skip(2) {
        assert!(
            matches!(outcome, Err(e) if matches!(e.kind, strata_core::ErrorKind::Overloaded(_))),
            "{key}: {outcome:?}"
        );
    }
}
