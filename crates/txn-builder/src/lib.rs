//! Strata's client transactions: how an application reads and writes the store. An
//! application gets a [`Database`] from `strata_director::EmbeddedCluster::database` and runs
//! its reads and writes in [`Database::run`], which commits them as one transaction.
//!
//! A [`Database`] is a handle to the stages of a running cluster (a sequencer, commit proxies,
//! storage servers, each behind its [`strata_core`] trait): bound to them
//! ([`Database::new`]), or following the cluster from epoch to epoch through a [`Connect`]
//! ([`Database::following`], what a cluster file connects with). A [`Transaction`] begun from it
//! reads at one read version, buffers its writes, and on [`Transaction::commit`] sends them,
//! with the conflict ranges it recorded, to a commit proxy, which commits them only if nothing
//! the transaction read has changed since its read version. [`Database::run`] retries a
//! closure on conflicts and too-old or future read versions, within [`TransactionOptions`]: a
//! transaction's lifetime, a timeout, a retry limit.
//!
//! # Contract
//!
//! - Every read is at one read version, from the storage server owning the key (a range read
//!   asks each shard it spans in turn). [`Database::begin`] asks the cluster nothing; the
//!   first read asks the sequencer for the newest committed version (concurrent first reads
//!   share the one request). A transaction that only writes never asks: it is sent without a
//!   read version, since only reads can conflict, and its commit is one call to a proxy.
//! - Read-your-writes: `get` and `get_range` see the transaction's own `set`, `clear`,
//!   `clear_range` and atomic operations merged over the snapshot ([`strata_core::merge`]); a
//!   key its writes answer is not read from storage. `snapshot_get` and `snapshot_get_range`
//!   see storage alone.
//! - Conflict ranges: a read adds what it read as a read conflict (a point read, the key; a
//!   range read, the whole range, or up to its last pair when the limit cut it short); a read
//!   that own writes answer adds none, nor does a snapshot read, nor a range read of limit 0.
//!   Every write adds its key or range as a write conflict.
//! - Atomic operations ([`Transaction::atomic`], [`Transaction::atomic_add`],
//!   [`Transaction::atomic_max`], [`Transaction::atomic_min`],
//!   [`Transaction::atomic_add_i64`]; semantics in [`strata_core::AtomicOp`]) are applied by
//!   the storage servers to the key's value at the commit version. They add a write conflict
//!   on the key and **no read conflict**, so concurrent operations on one key never conflict.
//!   After a `set`, `clear` or `clear_range` of the key, the transaction folds an operation
//!   into its own view of the key at once; otherwise reading the key reads storage (with the
//!   read conflict any read adds) and applies the transaction's operations on it, in order,
//!   and a range read shows them too, keys they create included. A later `set`, `clear` or
//!   `clear_range` of the key replaces them. The mutations are sent as made, either way.
//! - A transaction commits once. After it, reads and a second commit are `InvalidRequest`,
//!   writes are dropped (with a warning). A transaction that wrote nothing commits at once at
//!   its read version (asked for then if it read nothing), without a proxy.
//! - A transaction lives at most its [`TransactionOptions::lifetime`] (by default and at most
//!   [`strata_core::TRANSACTION_LIFETIME_MAX`], 5 s), counted from [`Database::begin`], so
//!   from before its read version was asked for (a wait for a new epoch's stages at its first
//!   call excepted: no read version is held then). A read or commit after that fails at once,
//!   without asking storage or a proxy, with [`ErrorKind::TransactionExpired`] naming the read
//!   version (if it read), how long it lived and the limit. Why 5 s: the sequencer's versions
//!   follow wall time at 1,000,000 a second, so the storage servers' MVCC window
//!   ([`strata_core::MVCC_WINDOW_VERSIONS`], 5,000,000 versions) is 5 s; an older
//!   transaction would read versions storage has let go of (`TooOld`) and commit against
//!   writes the resolvers have forgotten.
//! - [`Database::run`] makes at most [`RetryConfig::attempts_max`] attempts, waiting
//!   [`RetryConfig::backoff_initial`], doubled each time up to [`RetryConfig::backoff_max`];
//!   spent, it returns the last attempt's error. It retries only what a new read version can
//!   cure (conflicts, `TooOld`, `FutureVersion`), never an expired transaction, and stops
//!   with [`ErrorKind::TransactionTimedOut`] once its [`TransactionOptions::timeout`] passes.
//!   [`Database::run_with`] takes options for one call; the database holds the defaults.
//! - A commit whose call failed without a refusal (a log's or the sequencer's failure, a
//!   connection lost once the call left) is [`ErrorKind::CommitUnknown`], with that failure as
//!   its cause: it may have committed, and is never retried.
//! - A database that follows recoveries also retries, on the newest epoch, an attempt that the
//!   end of its epoch failed before its commit was sent, or whose commit was refused as fenced.
//!   A transaction keeps the stages it began with.
//!
//! # Limits
//!
//! | what                 | limit                                                          |
//! |----------------------|----------------------------------------------------------------|
//! | key                  | [`strata_core::KEY_BYTES_MAX`] = 10,000 bytes                  |
//! | value                | [`strata_core::VALUE_BYTES_MAX`] = 100,000 bytes               |
//! | atomic operand       | 1 to [`strata_core::VALUE_BYTES_MAX`] bytes                    |
//! | encoded transaction  | [`strata_core::TRANSACTION_BYTES_MAX`] = 10,000,000 bytes      |
//! | read version         | as old as the storage servers' MVCC window (else `TooOld`)     |
//! | transaction lifetime | [`TransactionOptions::lifetime`], default and at most [`strata_core::TRANSACTION_LIFETIME_MAX`] = 5 s (else `TransactionExpired`) |
//! | `run`, in all        | [`TransactionOptions::timeout`], none by default (else `TransactionTimedOut`) |
//! | `run`, attempts      | [`RetryConfig::attempts_max`], default 50; waits from 200 µs up to 50 ms |
//!
//! The sizes are checked at commit, as the transaction's encoding would check them: the commit
//! fails with the [`strata_core::WireError`] that names the key, value, operand or size, and
//! nothing is sent. The proxy gets the transaction through
//! [`strata_core::CommitProxy::commit_transaction`]: a proxy in this process takes it as it
//! is, one across a network gets its encoding. Writes
//! are buffered in memory until then. What it is not: a cache. Every read that its own writes
//! do not answer goes to storage.
//!
//! # Example
//!
//! With stand-ins for the cluster (the test kit's sequencer, and a map that commits at once; a
//! real cluster comes from `strata-director`):
//!
//! ```
//! # use std::collections::BTreeMap;
//! # use std::sync::{Arc, Mutex};
//! # use async_trait::async_trait;
//! # use bytes::Bytes;
//! # use strata_core::*;
//! # /// One map: storage reads it, the proxy writes it.
//! # #[derive(Default)]
//! # struct Map(Mutex<BTreeMap<Key, Value>>);
//! # #[async_trait]
//! # impl StorageServer for Map {
//! #     fn shards(&self) -> Vec<KeyRange> { vec![KeyRange::new("", "\u{7f}").unwrap()] }
//! #     async fn get(&self, key: Key, _: Version) -> Result<Option<Value>> {
//! #         Ok(self.0.lock().unwrap().get(&key).cloned())
//! #     }
//! #     async fn get_range(&self, r: KeyRange, _: Version, limit: usize, reverse: bool) -> Result<RangeRead> {
//! #         let map = self.0.lock().unwrap();
//! #         let mut entries: Vec<(Key, Value)> = map.iter().filter(|(k, _)| r.contains(k)).map(|(k, v)| (k.clone(), v.clone())).collect();
//! #         if reverse { entries.reverse(); }
//! #         let more = entries.len() > limit;
//! #         entries.truncate(limit);
//! #         Ok(RangeRead { entries, more })
//! #     }
//! #     async fn applied_version(&self) -> Result<Version> { Ok(Version(1)) }
//! #     async fn durable_version(&self) -> Result<Version> { Ok(Version(1)) }
//! #     async fn roll_back(&self, _: Version) -> Result<()> { Ok(()) }
//! # }
//! # #[async_trait]
//! # impl CommitProxy for Map {
//! #     fn epoch(&self) -> Epoch { Epoch(1) }
//! #     async fn commit(&self, tx: Bytes) -> Result<Version> {
//! #         let tx = Transaction::decode(&tx).map_err(|e| Error::new(Stage::CommitProxy, ErrorKind::Wire(e)))?;
//! #         let mut map = self.0.lock().unwrap();
//! #         for m in tx.mutations {
//! #             match m {
//! #                 Mutation::Set { key, value } => { map.insert(key, value); }
//! #                 Mutation::Clear { key } => { map.remove(&key); }
//! #                 Mutation::ClearRange { range } => map.retain(|k, _| !range.contains(k)),
//! #                 Mutation::Atomic { op, key, operand } => {
//! #                     let value = op.apply(map.get(&key).map(|v| v.as_ref()), &operand);
//! #                     map.insert(key, value);
//! #                 }
//! #             }
//! #         }
//! #         Ok(Version(1))
//! #     }
//! # }
//! use strata_txn_builder::{Database, RetryConfig};
//!
//! # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
//! # let map = Arc::new(Map::default());
//! # let sequencer = Arc::new(strata_testkit::StepSequencer::new(Epoch(1), Version(1)));
//! # let (proxy, storage) = (map.clone(), map);
//! let db = Database::new(sequencer, vec![proxy], vec![storage], RetryConfig::default())?;
//!
//! let tx = db.begin();
//! tx.set("user/1".into(), "ada".into());
//! tx.set("user/2".into(), "alan".into());
//! // The transaction reads its own writes, before any commit.
//! assert_eq!(tx.get(&"user/1".into()).await?, Some("ada".into()));
//! tx.commit().await?;
//!
//! // `run` retries the closure on a conflict; here it renames user 2 and lists the users.
//! let (users, _version) = db
//!     .run(|tx| async move {
//!         tx.set("user/2".into(), "grace".into());
//!         tx.get_range(&KeyRange::prefix("user/").unwrap(), 10, false).await
//!     })
//!     .await?;
//! assert_eq!(users, vec![
//!     ("user/1".into(), "ada".into()),
//!     ("user/2".into(), "grace".into()),
//! ]);
//!
//! // Atomic operations read nothing, so concurrent ones never conflict; the storage servers
//! // add to whatever the counter holds when each commits.
//! for _ in 0..3 {
//!     let tx = db.begin();
//!     tx.atomic_add_i64("visits".into(), 2);
//!     tx.commit().await?;
//! }
//! let tx = db.begin();
//! tx.atomic_add_i64("visits".into(), -1);
//! // The transaction sees its own operation over the stored value: 6 - 1.
//! let visits = tx.get(&"visits".into()).await?;
//! assert_eq!(strata_core::atomic::le_u64(visits.as_deref()), 5);
//! # Ok::<(), strata_core::Error>(())
//! # }).unwrap();
//! ```

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::future::Future;
use std::ops::Bound;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use strata_core::merge::{Answer, Direction, merge};
use strata_core::{
    CommitProxy, Error, ErrorKind, Key, KeyRange, Mutation, RangeRead, Result, Sequencer, Stage,
    StorageServer, Value, Version,
};
use tokio::time::Instant;

mod follow;
mod options;

use follow::Shared;
pub use follow::{Connect, Stages};
pub use options::TransactionOptions;

fn error(kind: ErrorKind) -> Error {
    Error::new(Stage::TxnBuilder, kind)
}

/// How [`Database::run`] retries: part of [`TransactionOptions`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RetryConfig {
    /// Attempts in all, the first included: FoundationDB's `retry_limit` plus one. At least 1.
    pub attempts_max: u32,
    /// Wait after the first failure; doubled after each further one.
    pub backoff_initial: Duration,
    /// Longest wait between attempts: FoundationDB's `max_retry_delay`.
    pub backoff_max: Duration,
}

impl Default for RetryConfig {
    fn default() -> RetryConfig {
        RetryConfig {
            attempts_max: 50,
            backoff_initial: Duration::from_micros(200),
            backoff_max: Duration::from_millis(50),
        }
    }
}

/// The stages of one epoch, as transactions use them.
struct DbInner {
    sequencer: Arc<dyn Sequencer>,
    proxies: Vec<Arc<dyn CommitProxy>>,
    /// Every shard of every storage server, sorted by begin key.
    shards: Vec<(KeyRange, Arc<dyn StorageServer>)>,
    next_proxy: AtomicUsize,
    /// Set when a call showed that this epoch is over (a database that follows recoveries).
    ended: AtomicBool,
}

impl DbInner {
    /// `InvalidRequest` without a proxy or a storage server.
    fn new(stages: Stages) -> Result<DbInner> {
        let Stages {
            sequencer,
            proxies,
            storage,
        } = stages;
        if proxies.is_empty() || storage.is_empty() {
            return Err(error(ErrorKind::InvalidRequest(
                "a database needs a commit proxy and a storage server".into(),
            )));
        }
        let mut shards: Vec<(KeyRange, Arc<dyn StorageServer>)> = storage
            .iter()
            .flat_map(|s| s.shards().into_iter().map(move |r| (r, s.clone())))
            .collect();
        shards.sort_by(|a, b| a.0.begin().cmp(b.0.begin()));
        shards.dedup_by(|a, b| a.0 == b.0);
        Ok(DbInner {
            sequencer,
            proxies,
            shards,
            next_proxy: AtomicUsize::new(0),
            ended: AtomicBool::new(false),
        })
    }
}

/// A handle to a running cluster, with the [`TransactionOptions`] its transactions get by
/// default: where transactions begin. Cheap to clone.
#[derive(Clone)]
pub struct Database {
    shared: Arc<Shared>,
    /// The stages current when this handle was made: its transactions begin on them, without
    /// a lock, until they end (a database bound to its stages never ends them).
    held: Arc<DbInner>,
    options: TransactionOptions,
}

impl std::fmt::Debug for Database {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let current = self.shared.current();
        f.debug_struct("Database")
            .field("proxies", &current.proxies.len())
            .field("shards", &current.shards.len())
            .field("follows_recoveries", &self.shared.follows())
            .field("options", &self.options)
            .finish_non_exhaustive()
    }
}

impl Database {
    /// A database over these stages whose transactions get `options` (a [`RetryConfig`]
    /// alone gives the default lifetime and no timeout). Storage servers are routed to by the
    /// shards they report; where several hold the same range, the first is read.
    ///
    /// Errors: `InvalidRequest` without a proxy or a storage server, or for options that
    /// [`TransactionOptions::validate`] refuses.
    pub fn new(
        sequencer: Arc<dyn Sequencer>,
        proxies: Vec<Arc<dyn CommitProxy>>,
        storage: Vec<Arc<dyn StorageServer>>,
        options: impl Into<TransactionOptions>,
    ) -> Result<Database> {
        let options = options.into();
        options.validate()?;
        let stages = Stages {
            sequencer,
            proxies,
            storage,
        };
        let held = Arc::new(DbInner::new(stages)?);
        Ok(Database {
            shared: Arc::new(Shared::new(held.clone(), None)),
            held,
            options,
        })
    }

    /// A database that follows recoveries: it starts on the stages `connect` finds, and finds
    /// the newest epoch's through it again whenever a call shows that the epoch it holds has
    /// ended (a server that recovered, or restarted). [`Database::run`] starts again on the
    /// newest epoch an attempt that the end of its epoch failed before its commit was sent, or
    /// whose commit was refused as fenced; a commit whose call failed otherwise is
    /// [`ErrorKind::CommitUnknown`], never retried. A transaction keeps the stages it began
    /// with; one begun once they ended finds the newest at its first call (one connection for
    /// all the callers waiting, and a failed one fails them all; the next call tries again).
    /// `strata_director`'s `ClusterFile::connect` makes one for a served cluster.
    ///
    /// Errors: `connect`'s, for the first stages; as [`Database::new`] for its stages and
    /// `options`.
    pub async fn following(
        connect: Arc<dyn Connect>,
        options: impl Into<TransactionOptions>,
    ) -> Result<Database> {
        let options = options.into();
        options.validate()?;
        let held = Arc::new(DbInner::new(connect.stages().await?)?);
        Ok(Database {
            shared: Arc::new(Shared::new(held.clone(), Some(connect))),
            held,
            options,
        })
    }

    /// Whether this database follows recoveries ([`Database::following`]).
    pub fn follows_recoveries(&self) -> bool {
        self.shared.follows()
    }

    /// The options this handle's transactions get by default.
    pub fn options(&self) -> TransactionOptions {
        self.options
    }

    /// A handle to the same cluster whose transactions get `options` by default (say, a
    /// shorter lifetime for one part of an application). `InvalidRequest` for options that
    /// [`TransactionOptions::validate`] refuses.
    ///
    /// ```no_run
    /// # async fn example(db: strata_txn_builder::Database) -> strata_core::Result<()> {
    /// use std::time::Duration;
    /// let quick = db.with_options(db.options().with_lifetime(Duration::from_millis(500)))?;
    /// let tx = quick.begin(); // its reads and commit fail after 500 ms
    /// # Ok(()) }
    /// ```
    pub fn with_options(&self, options: TransactionOptions) -> Result<Database> {
        options.validate()?;
        Ok(Database {
            shared: self.shared.clone(),
            held: self.held.clone(),
            options,
        })
    }

    /// A new transaction. It asks the cluster nothing yet: its first read asks the sequencer
    /// for the newest committed version and reads there (see [`Transaction::read_version`]);
    /// one that only writes never asks, and its commit is one call. Its lifetime (the
    /// database's [`TransactionOptions::lifetime`]) starts now.
    pub fn begin(&self) -> Transaction {
        // Stages known to have ended are found again by the transaction's first call.
        let db = if self.held.ended.load(Ordering::SeqCst) {
            let current = self.shared.current();
            (!current.ended.load(Ordering::SeqCst)).then_some(current)
        } else {
            Some(self.held.clone())
        };
        Transaction {
            inner: Arc::new(TxInner {
                follow: self.shared.follows().then(|| self.shared.clone()),
                db: tokio::sync::OnceCell::new_with(db),
                read_version: tokio::sync::OnceCell::new(),
                began: Instant::now(),
                finding_us: AtomicU64::new(0),
                lifetime: self.options.lifetime,
                state: Mutex::new(TxState::default()),
            }),
        }
    }

    /// Runs `body` in a transaction and commits it, starting over on a conflict or a read
    /// version that became too old (or is not reached yet), with growing waits in between, at
    /// most [`RetryConfig::attempts_max`] times, within the database's
    /// [`TransactionOptions`]. Returns the body's result and the commit version.
    ///
    /// The body gets a handle to the transaction (cheap to clone, usable from any task) and
    /// returns a future; it may run several times, so it should have no other side effects.
    ///
    /// What ends the retries:
    /// - the attempts run out: the last attempt's error is returned as it is (a trace at warn
    ///   level says the retries were exhausted);
    /// - the timeout, if set, passes: the attempt in flight is abandoned and the error is
    ///   [`ErrorKind::TransactionTimedOut`], naming the timeout and the attempts begun;
    /// - an error that is not retryable, returned at once. That includes
    ///   [`ErrorKind::TransactionExpired`]: a body that outlived the transaction lifetime is
    ///   not run again, because the body itself took too long, and a new read version would
    ///   not make it quicker; it would only repeat the wait (before this limit, a 6 s body
    ///   was retried as too old until its attempts ran out). Shorten or split it. It includes
    ///   [`ErrorKind::CommitUnknown`] too: the attempt may have committed, and running it again
    ///   could apply it twice.
    ///
    /// On a database that follows recoveries ([`Database::following`]), an attempt that the
    /// end of its epoch failed before its commit was sent, or whose commit was refused as
    /// fenced, is retried too: on the newest epoch, once found.
    ///
    /// ```no_run
    /// # async fn example(db: strata_txn_builder::Database) -> strata_core::Result<()> {
    /// let (old, _version) = db
    ///     .run(|tx| async move {
    ///         let old = tx.get(&"counter".into()).await?;
    ///         let n = old.map_or(0, |b| b.len());
    ///         tx.set("counter".into(), vec![0u8; n + 1].into());
    ///         Ok(n)
    ///     })
    ///     .await?;
    /// # Ok(()) }
    /// ```
    pub async fn run<T, F, Fut>(&self, body: F) -> Result<(T, Version)>
    where
        F: FnMut(Transaction) -> Fut,
        Fut: Future<Output = Result<T>>,
    {
        options::run(self, body).await
    }

    /// [`Database::run`] with `options` instead of the database's: its transactions' lifetime,
    /// the timeout of the call, the retries. `InvalidRequest`, before any attempt, for options
    /// that [`TransactionOptions::validate`] refuses.
    ///
    /// ```no_run
    /// # async fn example(db: strata_txn_builder::Database) -> strata_core::Result<()> {
    /// use std::time::Duration;
    /// // At most 3 attempts, and 1 s in all, whichever ends first.
    /// let options = db
    ///     .options()
    ///     .with_timeout(Duration::from_secs(1))
    ///     .with_retry_limit(2);
    /// let (_, version) = db
    ///     .run_with(options, |tx| async move {
    ///         tx.set("greeting".into(), "hello".into());
    ///         Ok(())
    ///     })
    ///     .await?;
    /// # Ok(()) }
    /// ```
    pub async fn run_with<T, F, Fut>(
        &self,
        options: TransactionOptions,
        body: F,
    ) -> Result<(T, Version)>
    where
        F: FnMut(Transaction) -> Fut,
        Fut: Future<Output = Result<T>>,
    {
        options::run(&self.with_options(options)?, body).await
    }
}

/// A client transaction: a cheap handle, clone it freely. See the crate docs.
#[derive(Clone)]
pub struct Transaction {
    inner: Arc<TxInner>,
}

struct TxInner {
    /// What finds newer stages, for a database that follows recoveries.
    follow: Option<Arc<Shared>>,
    /// The stages of the epoch it began in (found at its first call if they had ended).
    db: tokio::sync::OnceCell<Arc<DbInner>>,
    /// Asked for once, by the first read (or [`Transaction::read_version`]); concurrent
    /// first reads share the one request, and a failed request is made again by the next.
    read_version: tokio::sync::OnceCell<Version>,
    /// When it began.
    began: Instant,
    /// Microseconds its first call spent finding the newest epoch's stages (see
    /// [`Database::following`]): not counted in its lifetime, since no read version was held.
    finding_us: AtomicU64,
    /// How long it may live from `began`.
    lifetime: Duration,
    state: Mutex<TxState>,
}

#[derive(Default)]
struct TxState {
    /// The transaction's own point writes; `None` is a clear.
    writes: BTreeMap<Key, Option<Value>>,
    /// Ranges the transaction cleared (point writes after the clear are in `writes`).
    cleared: Vec<KeyRange>,
    /// Atomic operations on keys whose value is not known yet (see `atomic.rs`).
    pending: atomic::Pending,
    mutations: Vec<Mutation>,
    read_conflicts: Vec<KeyRange>,
    write_conflicts: Vec<KeyRange>,
    committed: bool,
}

impl TxState {
    /// What the transaction's own writes say of `key`.
    fn local(&self, key: &[u8]) -> Answer {
        match self.writes.get(key) {
            Some(Some(v)) => Answer::Value(v.clone()),
            Some(None) => Answer::Deleted,
            None if self.cleared.iter().any(|r| r.contains(key)) => Answer::Deleted,
            None => Answer::Unknown,
        }
    }
}

impl std::fmt::Debug for Transaction {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Transaction")
            .field("read_version", &self.inner.read_version.get())
            .finish_non_exhaustive()
    }
}

impl Transaction {
    /// The version every read of this transaction is made at: the newest committed version
    /// when it was first needed, asked of the sequencer then (by this call or the first
    /// read), and the same for the rest of the transaction. Fails as the sequencer's call
    /// does (say, `Unavailable` once the client's epoch has ended); the next call asks again.
    pub async fn read_version(&self) -> Result<Version> {
        self.inner
            .read_version
            .get_or_try_init(|| async {
                let db = self.db().await?;
                let asked = db.sequencer.read_version().await;
                self.noted(db, asked)
            })
            .await
            .copied()
    }

    fn state(&self) -> Result<MutexGuard<'_, TxState>> {
        let st = self.inner.state.lock().map_err(|_| {
            error(ErrorKind::Unavailable(
                "transaction poisoned by a panic".into(),
            ))
        })?;
        if st.committed {
            return Err(error(ErrorKind::InvalidRequest(
                "the transaction was already committed".into(),
            )));
        }
        Ok(st)
    }

    /// The stages this transaction calls: those of the epoch it began in, or found again at
    /// its first call if they had ended (see [`Database::following`]).
    async fn db(&self) -> Result<&Arc<DbInner>> {
        match self.inner.db.get() {
            Some(db) => Ok(db),
            None => {
                let started = Instant::now();
                let found = self
                    .inner
                    .db
                    .get_or_try_init(|| async {
                        // Unset only when the stages ended, which only a following database
                        // marks.
                        match &self.inner.follow {
                            Some(follow) => follow.live().await,
                            None => Err(error(ErrorKind::Unavailable(
                                "the database's stages ended".into(),
                            ))),
                        }
                    })
                    .await;
                let took = u64::try_from(started.elapsed().as_micros()).unwrap_or(u64::MAX);
                self.inner.finding_us.fetch_max(took, Ordering::Relaxed);
                found
            }
        }
    }

    /// `result` of a call to one of `db`'s stages, noting an epoch it says is over.
    fn noted<T>(&self, db: &DbInner, result: Result<T>) -> Result<T> {
        if let (Err(e), Some(follow)) = (&result, &self.inner.follow) {
            follow.note(db, e);
        }
        result
    }

    fn storage_for<'a>(db: &'a DbInner, key: &[u8]) -> Result<&'a Arc<dyn StorageServer>> {
        let shards = &db.shards;
        let i = shards.partition_point(|(r, _)| r.begin().as_ref() <= key);
        i.checked_sub(1)
            .map(|i| &shards[i])
            .filter(|(r, _)| r.contains(key))
            .map(|(_, s)| s)
            .ok_or_else(|| {
                error(ErrorKind::WrongShard {
                    key: strata_core::printable(key),
                })
            })
    }

    /// The value of `key`, seeing this transaction's own writes; adds a read conflict unless
    /// the transaction's own writes answer it.
    pub async fn get(&self, key: &Key) -> Result<Option<Value>> {
        self.check_lifetime()?;
        // The pending operations are taken with the local answer, under one lock: a write
        // of the key while the read is at storage must not change what this read applies.
        let (local, pending) = {
            let st = self.state()?;
            (st.local(key), st.pending.of(key))
        };
        match local {
            Answer::Value(v) => Ok(Some(v)),
            Answer::Deleted => Ok(None),
            Answer::Unknown => {
                let value = self.snapshot_get(key).await?;
                self.state()?
                    .read_conflicts
                    .push(KeyRange::single(key.clone()));
                Ok(atomic::fold(&pending, value))
            }
        }
    }

    /// The value of `key` in the snapshot at the read version; no conflict, own writes ignored.
    pub async fn snapshot_get(&self, key: &Key) -> Result<Option<Value>> {
        self.check_lifetime()?;
        let db = self.db().await?;
        let server = Self::storage_for(db, key)?;
        let read = server.get(key.clone(), self.read_version().await?).await;
        self.noted(db, read)
    }

    /// Up to `limit` pairs of `range` (from its end when `reverse`), seeing this transaction's
    /// own writes; adds the part of the range that the answer depended on as a read conflict.
    ///
    /// A `limit` of 0 answers with no pairs, at once: the answer depends on no key, so it
    /// reads nothing from storage and adds no read conflict.
    pub async fn get_range(
        &self,
        range: &KeyRange,
        limit: usize,
        reverse: bool,
    ) -> Result<Vec<(Key, Value)>> {
        self.check_lifetime()?;
        if limit == 0 {
            // Still refused on a committed transaction, like every other read.
            drop(self.state()?);
            return Ok(Vec::new());
        }
        let entries = self.merged_range(range, limit, reverse).await?;
        let conflict = match entries.last() {
            Some((last, _)) if entries.len() >= limit => {
                // Only the keys up to the last one returned mattered.
                if reverse {
                    KeyRange::new(last.clone(), range.end().clone()).ok()
                } else {
                    KeyRange::new(
                        range.begin().clone(),
                        KeyRange::single(last.clone()).end().clone(),
                    )
                    .ok()
                }
            }
            // Fewer than asked for: the whole range mattered.
            _ => Some(range.clone()),
        };
        self.state()?.read_conflicts.extend(conflict);
        Ok(entries)
    }

    /// Up to `limit` pairs of `range` in the snapshot; no conflict, own writes ignored. A
    /// `limit` of 0 answers with no pairs, at once, without asking storage.
    pub async fn snapshot_get_range(
        &self,
        range: &KeyRange,
        limit: usize,
        reverse: bool,
    ) -> Result<Vec<(Key, Value)>> {
        self.check_lifetime()?;
        let mut out = Vec::new();
        if limit == 0 {
            return Ok(out);
        }
        let mut cursor = Some(range.clone());
        while let Some(r) = cursor.take() {
            let page = self.snapshot_page(&r, limit - out.len(), reverse).await?;
            let frontier = page.entries.last().map(|(k, _)| k.clone());
            out.extend(page.entries);
            if page.more && out.len() < limit {
                cursor = frontier.and_then(|k| rest_after(&r, &k, reverse));
            }
        }
        Ok(out)
    }

    /// One page of a snapshot range read, across the shards the range spans, in order.
    async fn snapshot_page(
        &self,
        range: &KeyRange,
        limit: usize,
        reverse: bool,
    ) -> Result<RangeRead> {
        let db = self.db().await?;
        let mut pieces: Vec<(KeyRange, Arc<dyn StorageServer>)> = db
            .shards
            .iter()
            .filter_map(|(r, s)| Some((r.intersection(range)?, s.clone())))
            .collect();
        if pieces.is_empty() {
            return Err(error(ErrorKind::WrongShard {
                key: format!("{range}"),
            }));
        }
        if reverse {
            pieces.reverse();
        }
        let read_version = self.read_version().await?;
        let mut out = RangeRead::default();
        let count = pieces.len();
        for (i, (piece, server)) in pieces.into_iter().enumerate() {
            let got = server
                .get_range(piece, read_version, limit - out.entries.len(), reverse)
                .await;
            let got = self.noted(db, got)?;
            out.entries.extend(got.entries);
            if got.more || (out.entries.len() == limit && i + 1 < count) {
                out.more = true;
                break;
            }
        }
        Ok(out)
    }

    /// The snapshot merged with this transaction's writes, page by page.
    async fn merged_range(
        &self,
        range: &KeyRange,
        limit: usize,
        reverse: bool,
    ) -> Result<Vec<(Key, Value)>> {
        let mut out: Vec<(Key, Value)> = Vec::new();
        let mut cursor = Some(range.clone());
        while let Some(r) = cursor.take() {
            if out.len() >= limit {
                break;
            }
            // Fetch enough that local clears cannot starve the page.
            let local_writes = self.state()?.writes.len();
            let mut page = self
                // `limit` may be `usize::MAX`: everything.
                .snapshot_page(
                    &r,
                    (limit - out.len()).saturating_add(local_writes),
                    reverse,
                )
                .await?;
            let st = self.state()?;
            // The part of `r` this page covers completely.
            let covered = match (page.more, page.entries.last()) {
                (true, Some((last, _))) => {
                    let (b, e) = if reverse {
                        (last.clone(), r.end().clone())
                    } else {
                        (
                            r.begin().clone(),
                            KeyRange::single(last.clone()).end().clone(),
                        )
                    };
                    KeyRange::new(b, e).unwrap_or_else(|_| r.clone())
                }
                _ => r.clone(),
            };
            // Local writes are newer than the snapshot; both layers go in ascending.
            let writes = st.newer_layer(&covered, &page.entries, reverse);
            if reverse {
                page.entries.reverse();
            }
            let snapshot = page.entries.into_iter().map(Ok::<_, Infallible>);
            let Ok(merged) = merge(
                writes,
                snapshot,
                |key: &[u8]| st.cleared.iter().any(|c| c.contains(key)),
                Direction::from_reverse(reverse),
                limit - out.len(),
            );
            out.extend(merged.entries);
            if page.more && covered != r {
                cursor = if reverse {
                    KeyRange::new(r.begin().clone(), covered.begin().clone()).ok()
                } else {
                    KeyRange::new(covered.end().clone(), r.end().clone()).ok()
                };
            }
        }
        Ok(out)
    }

    /// Sets `key` to `value`.
    pub fn set(&self, key: Key, value: Value) {
        self.write(|st| {
            st.write_conflicts.push(KeyRange::single(key.clone()));
            st.writes.insert(key.clone(), Some(value.clone()));
            st.pending.discard(&key);
            st.mutations.push(Mutation::Set { key, value });
        });
    }

    /// Removes `key`.
    pub fn clear(&self, key: Key) {
        self.write(|st| {
            st.write_conflicts.push(KeyRange::single(key.clone()));
            st.writes.insert(key.clone(), None);
            st.pending.discard(&key);
            st.mutations.push(Mutation::Clear { key });
        });
    }

    /// Removes every key in `range`.
    pub fn clear_range(&self, range: KeyRange) {
        self.write(|st| {
            let inside: Vec<Key> = st
                .writes
                .range::<[u8], _>((
                    Bound::Included(range.begin().as_ref()),
                    Bound::Excluded(range.end().as_ref()),
                ))
                .map(|(k, _)| k.clone())
                .collect();
            for k in inside {
                st.writes.remove(&k);
            }
            st.write_conflicts.push(range.clone());
            st.pending.discard_range(&range);
            st.cleared.push(range.clone());
            st.mutations.push(Mutation::ClearRange { range });
        });
    }

    /// Records a write. A write to a committed transaction is dropped (and its commit already
    /// happened without it); writes take no error so that building a transaction reads plainly.
    fn write(&self, f: impl FnOnce(&mut TxState)) {
        match self.inner.state.lock() {
            Ok(mut st) if !st.committed => f(&mut st),
            _ => tracing::warn!("write to a committed or poisoned transaction dropped"),
        }
    }

    /// Commits the transaction through a commit proxy and returns its commit version. A
    /// transaction that wrote nothing commits at once, at its read version (asked for now if
    /// it read nothing). One that read nothing is sent without a read version: only reads
    /// can conflict, so its writes commit at whatever version the proxy gives them. A
    /// transaction commits once; later calls fail. After the transaction's lifetime the
    /// commit fails with [`ErrorKind::TransactionExpired`], without a proxy, even for one that
    /// wrote nothing.
    ///
    /// Errors: the proxy's refusals as they are (a conflict, a too-old read version, a
    /// malformed or oversized transaction, an overloaded queue): nothing of the transaction is
    /// ever visible. Any other failure of a transaction that wrote something is
    /// [`ErrorKind::CommitUnknown`], with that failure as its cause: the batch may be on every
    /// log, so the transaction may have committed. (One that wrote nothing asks only for a
    /// read version, and returns that call's error as it is.)
    pub async fn commit(&self) -> Result<Version> {
        self.check_lifetime()?;
        let tx = {
            let mut st = self.state()?;
            st.committed = true;
            (!st.mutations.is_empty()).then(|| strata_core::Transaction {
                // Set by every read, so present whenever there are read conflicts.
                read_version: self.inner.read_version.get().copied(),
                read_conflicts: std::mem::take(&mut st.read_conflicts),
                write_conflicts: std::mem::take(&mut st.write_conflicts),
                mutations: std::mem::take(&mut st.mutations),
            })
        };
        let Some(tx) = tx else {
            return self.read_version().await;
        };
        // Checked here, so that a transaction that could never be sent fails as this stage's
        // error; the proxy gets it unencoded (one in this process then skips the encoding and
        // its parse; a remote one's client encodes it).
        tx.encoded_len().map_err(|e| error(ErrorKind::Wire(e)))?;
        let db = self.db().await?;
        let n = db.next_proxy.fetch_add(1, Ordering::Relaxed) % db.proxies.len();
        let committed = db.proxies[n].commit_transaction(tx).await;
        match &self.inner.follow {
            Some(follow) => follow.commit_outcome(db, committed),
            None => committed.map_err(follow::unknown_unless_refused),
        }
    }
}

/// The part of `range` after `key` (before it, when `reverse`).
fn rest_after(range: &KeyRange, key: &Key, reverse: bool) -> Option<KeyRange> {
    if reverse {
        KeyRange::new(range.begin().clone(), key.clone()).ok()
    } else {
        KeyRange::new(
            KeyRange::single(key.clone()).end().clone(),
            range.end().clone(),
        )
        .ok()
    }
}

mod atomic;

#[cfg(test)]
mod tests;
