//! The transaction lifetime, `run`'s timeout and retry limit, and per-call options, against
//! fakes that count what reaches them: a sequencer, a storage server and a commit proxy that
//! answers from a script. Time is tokio's paused clock, so a body that "takes 6 s" takes none,
//! and every assertion is on counts and error kinds, never on speed.

#![allow(clippy::unwrap_used)]

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::AtomicUsize;

use async_trait::async_trait;
use bytes::Bytes;
use strata_core::{
    CommitProxy, Epoch, Key, KeyRange, RangeRead, Sequencer, Stage, StorageServer, Value,
    VersionPair,
};

use super::*;

const READ_VERSION: Version = Version(100);
const COMMIT_VERSION: Version = Version(101);

/// Hands out one read version, counting how often (once per transaction begun).
#[derive(Default)]
struct CountingSequencer {
    reads: AtomicUsize,
}

#[async_trait]
impl Sequencer for CountingSequencer {
    fn epoch(&self) -> Epoch {
        Epoch(1)
    }

    async fn next_commit_version(&self, _epoch: Epoch) -> Result<VersionPair> {
        Err(error(ErrorKind::Unavailable("not in this test".into())))
    }

    async fn report_committed(&self, _epoch: Epoch, _version: Version) -> Result<()> {
        Err(error(ErrorKind::Unavailable("not in this test".into())))
    }

    async fn read_version(&self) -> Result<Version> {
        self.reads.fetch_add(1, Ordering::SeqCst);
        Ok(READ_VERSION)
    }
}

/// One shard holding everything, every key holding `stored`; counts the reads it answers.
#[derive(Default)]
struct CountingStorage {
    reads: AtomicUsize,
}

#[async_trait]
impl StorageServer for CountingStorage {
    fn shards(&self) -> Vec<KeyRange> {
        vec![KeyRange::new("", Bytes::from_static(b"\xff")).unwrap()]
    }

    async fn get(&self, _key: Key, version: Version) -> Result<Option<Value>> {
        assert_eq!(version, READ_VERSION);
        self.reads.fetch_add(1, Ordering::SeqCst);
        Ok(Some(Value::from("stored")))
    }

    async fn get_range(
        &self,
        range: KeyRange,
        version: Version,
        _limit: usize,
        _reverse: bool,
    ) -> Result<RangeRead> {
        assert_eq!(version, READ_VERSION);
        self.reads.fetch_add(1, Ordering::SeqCst);
        Ok(RangeRead {
            entries: vec![(range.begin().clone(), Value::from("stored"))],
            more: false,
        })
    }

    async fn applied_version(&self) -> Result<Version> {
        Ok(READ_VERSION)
    }

    async fn durable_version(&self) -> Result<Version> {
        Ok(READ_VERSION)
    }

    async fn roll_back(&self, _version: Version) -> Result<()> {
        Ok(())
    }
}

/// What the scripted proxy answers a commit.
#[derive(Clone)]
enum Answer {
    Commit,
    Refuse(ErrorKind),
    /// Never answers.
    Hang,
}

/// Answers commits from `script`, then always `then`; counts the commits it gets.
struct ScriptedProxy {
    script: Mutex<VecDeque<Answer>>,
    then: Answer,
    commits: AtomicUsize,
}

#[async_trait]
impl CommitProxy for ScriptedProxy {
    fn epoch(&self) -> Epoch {
        Epoch(1)
    }

    async fn commit(&self, _transaction: Bytes) -> Result<Version> {
        self.commits.fetch_add(1, Ordering::SeqCst);
        let next = self.script.lock().unwrap().pop_front();
        match next.unwrap_or_else(|| self.then.clone()) {
            Answer::Commit => Ok(COMMIT_VERSION),
            Answer::Refuse(kind) => Err(Error::new(Stage::Resolver, kind)),
            Answer::Hang => std::future::pending().await,
        }
    }
}

struct Cluster {
    db: Database,
    sequencer: Arc<CountingSequencer>,
    storage: Arc<CountingStorage>,
    proxy: Arc<ScriptedProxy>,
}

impl Cluster {
    /// A database with `options` whose proxy answers `script`, then `then`.
    fn new(options: TransactionOptions, script: &[Answer], then: Answer) -> Cluster {
        let sequencer = Arc::new(CountingSequencer::default());
        let storage = Arc::new(CountingStorage::default());
        let proxy = Arc::new(ScriptedProxy {
            script: Mutex::new(script.iter().cloned().collect()),
            then,
            commits: AtomicUsize::new(0),
        });
        let db = Database::new(
            sequencer.clone(),
            vec![proxy.clone()],
            vec![storage.clone()],
            options,
        )
        .unwrap();
        Cluster {
            db,
            sequencer,
            storage,
            proxy,
        }
    }

    fn storage_reads(&self) -> usize {
        self.storage.reads.load(Ordering::SeqCst)
    }

    fn commits(&self) -> usize {
        self.proxy.commits.load(Ordering::SeqCst)
    }

    /// How often a read version was asked for.
    fn read_versions_asked(&self) -> usize {
        self.sequencer.reads.load(Ordering::SeqCst)
    }
}

const SHORT: Duration = Duration::from_millis(200);

fn short_lived() -> TransactionOptions {
    TransactionOptions::default().with_lifetime(SHORT)
}

fn key(k: &str) -> Key {
    Key::copy_from_slice(k.as_bytes())
}

fn everything() -> KeyRange {
    KeyRange::new("", Bytes::from_static(b"\xff")).unwrap()
}

/// Asserts that `r` is the expiry of a transaction that read at `read` (`None`: it read
/// nothing) with lifetime `limit` and lived at least `at_least`.
#[track_caller]
fn assert_expired<T: std::fmt::Debug>(
    r: Result<T>,
    read: Option<Version>,
    limit: Duration,
    at_least: Duration,
) {
    let e = r.unwrap_err();
    assert_eq!(e.stage, Stage::TxnBuilder);
    match e.kind {
        ErrorKind::TransactionExpired {
            read_version,
            lived,
            limit: l,
        } => {
            assert_eq!(read_version, read);
            assert_eq!(l, limit);
            assert!(lived >= at_least && lived > limit, "lived {lived:?}");
        }
        ref other => panic!("not expired: {other}"),
    }
    assert!(!e.is_retryable());
}

#[tokio::test(start_paused = true)]
async fn a_read_after_the_lifetime_is_expired_without_asking_storage() {
    const READ: Option<Version> = Some(READ_VERSION);
    let c = Cluster::new(short_lived(), &[], Answer::Commit);
    let tx = c.db.begin();
    // Within its lifetime, every read reaches storage.
    tokio::time::sleep(SHORT - Duration::from_millis(50)).await;
    tx.get(&key("a")).await.unwrap();
    tx.snapshot_get(&key("a")).await.unwrap();
    tx.get_range(&everything(), 10, false).await.unwrap();
    tx.snapshot_get_range(&everything(), 10, true)
        .await
        .unwrap();
    assert_eq!(c.storage_reads(), 4);

    tokio::time::sleep(Duration::from_millis(100)).await;
    let lived = SHORT + Duration::from_millis(50);
    assert_expired(tx.get(&key("b")).await, READ, SHORT, lived);
    assert_expired(tx.snapshot_get(&key("b")).await, READ, SHORT, lived);
    assert_expired(
        tx.get_range(&everything(), 10, false).await,
        READ,
        SHORT,
        lived,
    );
    assert_expired(
        tx.get_range(&everything(), 0, false).await,
        READ,
        SHORT,
        lived,
    );
    assert_expired(
        tx.snapshot_get_range(&everything(), 10, false).await,
        READ,
        SHORT,
        lived,
    );
    assert_eq!(c.storage_reads(), 4, "no expired read reached storage");
    // The message says what happened and what to do.
    let message = tx.get(&key("b")).await.unwrap_err().to_string();
    assert!(
        message.contains("v100") && message.contains("200 ms") && message.contains("split"),
        "{message}"
    );
}

#[tokio::test(start_paused = true)]
async fn a_commit_after_the_lifetime_is_expired_without_asking_the_proxy() {
    let c = Cluster::new(short_lived(), &[], Answer::Commit);
    let late = SHORT + Duration::from_millis(1);

    let tx = c.db.begin();
    tx.set(key("a"), Value::from("v"));
    tokio::time::sleep(late).await;
    let e = tx.commit().await;
    let message = e.as_ref().unwrap_err().to_string();
    assert!(
        message.contains("it read nothing and has lived"),
        "{message}"
    );
    assert_expired(e, None, SHORT, late);

    // A transaction that wrote nothing, too: it never needed the proxy, but it is as old.
    let tx = c.db.begin();
    tokio::time::sleep(late).await;
    assert_expired(tx.commit().await, None, SHORT, late);
    // One that read, then waited: its message names its read version.
    let tx = c.db.begin();
    tx.get(&key("a")).await.unwrap();
    tx.set(key("a"), Value::from("v"));
    tokio::time::sleep(late).await;
    let e = tx.commit().await;
    let message = e.as_ref().unwrap_err().to_string();
    assert!(message.contains("read at v100"), "{message}");
    assert_expired(e, Some(READ_VERSION), SHORT, late);
    assert_eq!(c.commits(), 0);
    assert_eq!(
        c.read_versions_asked(),
        1,
        "only the transaction that read asked"
    );

    // Within its lifetime the same commit goes through.
    let tx = c.db.begin();
    tx.set(key("a"), Value::from("v"));
    tokio::time::sleep(SHORT / 2).await;
    assert_eq!(tx.commit().await.unwrap(), COMMIT_VERSION);
    assert_eq!(c.commits(), 1);
}

/// A body that takes `took`, reads a key and writes one; counts its runs in `runs`.
fn slow_body(
    runs: &AtomicUsize,
    took: Duration,
) -> impl FnMut(Transaction) -> std::pin::Pin<Box<dyn Future<Output = Result<()>> + Send>> + '_ {
    move |tx| {
        runs.fetch_add(1, Ordering::SeqCst);
        Box::pin(async move {
            tokio::time::sleep(took).await;
            tx.get(&key("a")).await?;
            tx.set(key("b"), Value::from("v"));
            Ok(())
        })
    }
}

#[tokio::test(start_paused = true)]
async fn run_does_not_retry_a_body_that_outlives_its_lifetime() {
    // The default lifetime, 5 s, and a 6 s body: what users hit.
    let c = Cluster::new(TransactionOptions::default(), &[], Answer::Commit);
    let runs = AtomicUsize::new(0);
    let took = Duration::from_secs(6);
    let result = c.db.run(slow_body(&runs, took)).await;
    assert_expired(result, None, TRANSACTION_LIFETIME_MAX, took);
    assert_eq!(runs.load(Ordering::SeqCst), 1, "one attempt");
    // Its first read came too late to ask for a read version.
    assert_eq!(c.read_versions_asked(), 0);
    assert_eq!(c.storage_reads(), 0);
    assert_eq!(c.commits(), 0);
}

#[tokio::test(start_paused = true)]
async fn run_still_retries_conflicts_and_too_old_and_future_versions() {
    let refusals = [
        Answer::Refuse(ErrorKind::Conflict),
        Answer::Refuse(ErrorKind::TooOld {
            version: READ_VERSION,
            oldest: COMMIT_VERSION,
        }),
        Answer::Refuse(ErrorKind::FutureVersion {
            version: READ_VERSION,
            newest: Version(1),
        }),
    ];
    let c = Cluster::new(TransactionOptions::default(), &refusals, Answer::Commit);
    let runs = AtomicUsize::new(0);
    let ((), version) =
        c.db.run(slow_body(&runs, Duration::from_millis(1)))
            .await
            .unwrap();
    assert_eq!(version, COMMIT_VERSION);
    assert_eq!(runs.load(Ordering::SeqCst), 4);
    assert_eq!(c.commits(), 4);
}

/// The fields of a timed-out error.
#[track_caller]
fn timed_out<T: std::fmt::Debug>(r: Result<T>) -> (Duration, u32, Option<Box<Error>>) {
    let e = r.unwrap_err();
    assert_eq!(e.stage, Stage::TxnBuilder);
    assert!(!e.is_retryable());
    match e.kind {
        ErrorKind::TransactionTimedOut {
            timeout,
            attempts,
            last_error,
        } => (timeout, attempts, last_error),
        other => panic!("not timed out: {other}"),
    }
}

#[tokio::test(start_paused = true)]
async fn a_timeout_stops_the_retries_of_a_body_that_always_conflicts() {
    let options = TransactionOptions::default()
        .with_timeout(Duration::from_millis(300))
        .with_retry_limit(10_000);
    let c = Cluster::new(options, &[], Answer::Refuse(ErrorKind::Conflict));
    let runs = AtomicUsize::new(0);
    let result = c.db.run(slow_body(&runs, Duration::from_millis(10))).await;
    let (timeout, attempts, last_error) = timed_out(result);
    assert_eq!(timeout, Duration::from_millis(300));
    let runs = runs.load(Ordering::SeqCst);
    assert_eq!(usize::try_from(attempts).unwrap(), runs);
    // Retried, then stopped well before the retry limit.
    assert!((2..10_000).contains(&runs), "{runs} attempts");
    assert!(matches!(last_error.unwrap().kind, ErrorKind::Conflict));
}

#[tokio::test(start_paused = true)]
async fn a_timeout_abandons_the_attempt_in_flight() {
    let options = TransactionOptions::default().with_timeout(Duration::from_millis(300));
    let c = Cluster::new(options, &[], Answer::Hang);
    let runs = AtomicUsize::new(0);
    let result = c.db.run(slow_body(&runs, Duration::from_millis(10))).await;
    let (timeout, attempts, last_error) = timed_out(result);
    assert_eq!((timeout, attempts), (Duration::from_millis(300), 1));
    assert!(last_error.is_none(), "no attempt finished");
    assert_eq!((runs.load(Ordering::SeqCst), c.commits()), (1, 1));
}

#[tokio::test(start_paused = true)]
async fn the_retry_limit_ends_run_with_the_last_attempts_error() {
    // A conflict twice, then too old: the last attempt's error is the one returned.
    let script = [
        Answer::Refuse(ErrorKind::Conflict),
        Answer::Refuse(ErrorKind::Conflict),
    ];
    let too_old = ErrorKind::TooOld {
        version: READ_VERSION,
        oldest: COMMIT_VERSION,
    };
    let options = TransactionOptions::default().with_retry_limit(2);
    let c = Cluster::new(options, &script, Answer::Refuse(too_old));
    let runs = AtomicUsize::new(0);
    let e =
        c.db.run(slow_body(&runs, Duration::from_millis(1)))
            .await
            .unwrap_err();
    assert!(
        matches!(e.kind, ErrorKind::TooOld { version, oldest }
            if version == READ_VERSION && oldest == COMMIT_VERSION),
        "{e}"
    );
    assert_eq!(
        runs.load(Ordering::SeqCst),
        3,
        "the first attempt and two retries"
    );
    assert_eq!(c.commits(), 3);
}

#[tokio::test(start_paused = true)]
async fn per_call_options_override_the_database_defaults() {
    // Defaults: no retry, a short lifetime.
    let defaults = short_lived().with_retry_limit(0);
    let c = Cluster::new(defaults, &[], Answer::Refuse(ErrorKind::Conflict));
    assert_eq!(c.db.options(), defaults);
    let runs = AtomicUsize::new(0);
    let quick = Duration::from_millis(1);

    let e = c.db.run(slow_body(&runs, quick)).await.unwrap_err();
    assert!(matches!(e.kind, ErrorKind::Conflict), "{e}");
    assert_eq!(
        runs.swap(0, Ordering::SeqCst),
        1,
        "the default: one attempt"
    );

    let more = defaults.with_retry_limit(4);
    let e =
        c.db.run_with(more, slow_body(&runs, quick))
            .await
            .unwrap_err();
    assert!(matches!(e.kind, ErrorKind::Conflict), "{e}");
    assert_eq!(
        runs.swap(0, Ordering::SeqCst),
        5,
        "this call's: five attempts"
    );

    // A body of 300 ms outlives the default lifetime, not this call's.
    let c = Cluster::new(defaults, &[], Answer::Commit);
    let slow = Duration::from_millis(300);
    assert_expired(c.db.run(slow_body(&runs, slow)).await, None, SHORT, slow);
    let longer = defaults.with_lifetime(Duration::from_secs(1));
    let ((), version) = c.db.run_with(longer, slow_body(&runs, slow)).await.unwrap();
    assert_eq!(version, COMMIT_VERSION);
    // A handle with other defaults shares the cluster and leaves the first one's alone.
    let handle = c.db.with_options(longer).unwrap();
    handle.run(slow_body(&runs, slow)).await.unwrap();
    assert_eq!(handle.options(), longer);
    assert_eq!(c.db.options(), defaults);
    assert_eq!(c.commits(), 2);
}

#[tokio::test(start_paused = true)]
async fn options_past_their_bounds_are_refused_before_anything_runs() {
    let c = Cluster::new(TransactionOptions::default(), &[], Answer::Commit);
    let default = TransactionOptions::default();
    let invalid = [
        default.with_lifetime(TRANSACTION_LIFETIME_MAX + Duration::from_millis(1)),
        default.with_lifetime(Duration::ZERO),
        default.with_timeout(Duration::ZERO),
        TransactionOptions {
            retry: RetryConfig {
                attempts_max: 0,
                ..RetryConfig::default()
            },
            ..default
        },
    ];
    let runs = AtomicUsize::new(0);
    for options in invalid {
        let refused = |r: Result<Database>| matches!(r, Err(e) if matches!(e.kind, ErrorKind::InvalidRequest(_)));
        assert!(refused(c.db.with_options(options)), "{options:?}");
        assert!(refused(Database::new(
            c.sequencer.clone(),
            vec![c.proxy.clone()],
            vec![c.storage.clone()],
            options,
        )));
        let e =
            c.db.run_with(options, slow_body(&runs, Duration::ZERO))
                .await
                .unwrap_err();
        assert!(matches!(e.kind, ErrorKind::InvalidRequest(_)), "{e}");
    }
    assert_eq!(
        (runs.load(Ordering::SeqCst), c.read_versions_asked()),
        (0, 0)
    );
    // The limit itself is allowed.
    default
        .with_lifetime(TRANSACTION_LIFETIME_MAX)
        .validate()
        .unwrap();
}
