//! The stage traits: what each stage of the commit pipeline promises the others.
//!
//! Stages talk to each other only through these traits, so a stage can be replaced by another
//! implementation, wrapped by a fault-injecting decorator, or benchmarked alone. Every method
//! returns [`crate::Error`], which names the failing [`crate::Stage`].
//!
//! Epochs: every request that changes state carries the epoch of its sender. A stage refuses a
//! request of an epoch older than its own with [`crate::ErrorKind::Fenced`]; that is how a
//! director or a commit proxy of an earlier generation is kept from committing anything.

use std::fmt;

use async_trait::async_trait;
use bytes::Bytes;
use serde::{Deserialize, Serialize};

use crate::error::{Error, ErrorKind, Result, Stage};
use crate::types::{Epoch, Key, KeyRange, Transaction, TransactionConflicts, Value, Version};

/// A commit version and the version of the batch before it, as handed out by the sequencer.
/// Batches form a chain: each names its predecessor, so logs and resolvers can apply them in
/// order and notice a gap.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct VersionPair {
    /// The commit version of the batch before this one.
    pub previous: Version,
    /// This batch's commit version; always greater than `previous`.
    pub version: Version,
}

/// The version authority of one epoch.
#[async_trait]
pub trait Sequencer: Send + Sync {
    /// The epoch this sequencer was started for.
    fn epoch(&self) -> Epoch;

    /// The next commit version and the one before it.
    ///
    /// Contract: within an epoch the pairs form one chain with no gaps and no repeats (each
    /// `previous` is the `version` of the pair handed out just before). Versions follow wall
    /// time at about 1,000,000 per second and always advance by at least 1. The first pair's
    /// `previous` is the recovery version the sequencer was started from.
    ///
    /// Errors: `Fenced` when `epoch` is older than the sequencer's.
    async fn next_commit_version(&self, epoch: Epoch) -> Result<VersionPair>;

    /// Tells the sequencer that `version` is durable on every log and may be read.
    ///
    /// Contract: reports may arrive out of order from several commit proxies; the sequencer
    /// keeps the newest. This is sound because a log accepts a batch only after its predecessor,
    /// so when `version` is on every log, all earlier versions are too.
    ///
    /// Errors: `Fenced` for an older epoch; `InvalidRequest` for a version never handed out.
    async fn report_committed(&self, epoch: Epoch, version: Version) -> Result<()>;

    /// A read version: the newest version reported committed.
    ///
    /// Contract: a read version taken after a commit was acknowledged is at least that
    /// commit's version (acknowledgement happens only after the report).
    ///
    /// Errors: `Unavailable` once the sequencer is stopped.
    async fn read_version(&self) -> Result<Version>;
}

/// A batch of transactions to resolve, in the order the commit proxy received them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ResolveBatch {
    /// The epoch of the commit proxy that sent it.
    pub epoch: Epoch,
    /// The commit version of the batch before this one.
    pub previous_version: Version,
    /// The commit version of this batch.
    pub version: Version,
    /// The conflict ranges of each transaction; mutations never reach a resolver.
    pub transactions: Vec<TransactionConflicts>,
}

/// What a resolver decided for one transaction.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Verdict {
    /// No conflict: the transaction may commit (if every other resolver agrees).
    Committed,
    /// A read range intersects a write committed after the read version.
    Conflict,
    /// The read version is older than the MVCC window (or than the version the resolver
    /// started at): the resolver no longer knows every write since it.
    TooOld {
        /// The oldest read version the resolver still judged this batch for.
        oldest: Version,
    },
}

/// Conflict detection over a window of recent versions.
#[async_trait]
pub trait Resolver: Send + Sync {
    /// Resolves `batch`, returning one verdict per transaction, in order.
    ///
    /// Contract: batches are applied along the `previous_version` chain. A batch whose
    /// predecessor has not arrived yet waits (bounded) for it. A transaction conflicts when one
    /// of its read ranges intersects a write range recorded at a version newer than its read
    /// version, counting writes of transactions of the same batch that come before it and were
    /// accepted. Only accepted transactions record their writes, at `batch.version`. A read
    /// version older than [`crate::MVCC_WINDOW_VERSIONS`] behind the newest batch is `TooOld`,
    /// naming the oldest read version still judged.
    /// A transaction without reads is always `Committed`.
    ///
    /// Errors: `Fenced` for an older epoch; `Duplicate` for a version already resolved;
    /// `OutOfOrder` when the predecessor did not arrive within the bound; `InvalidRequest` when
    /// `version` does not exceed `previous_version`.
    async fn resolve(&self, batch: ResolveBatch) -> Result<Vec<Verdict>>;
}

/// Identifies a transaction log within a cluster.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
#[serde(transparent)]
pub struct LogId(pub u64);

impl fmt::Display for LogId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// One batch held by a log.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LogEntry {
    /// The batch's commit version.
    pub version: Version,
    /// The commit version of the batch before it.
    pub previous_version: Version,
    /// The batch's bytes, opaque to the log. The commit path stores the batch's accepted
    /// mutations encoded as a [`crate::Transaction`] with a commit version section.
    pub payload: Bytes,
}

/// What a log holds, as reported by [`LogServer::lock`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LogState {
    /// The epoch the log is now locked with.
    pub epoch: Epoch,
    /// The oldest version still held; `None` when the log holds no entry.
    pub first_version: Option<Version>,
    /// The newest version held, which the next push must name as its `previous_version`. For a
    /// log without entries, the version it was started from.
    pub last_version: Version,
}

/// A durable, ordered log of committed batches. Every batch is pushed to every log.
#[async_trait]
pub trait LogServer: Send + Sync {
    /// This log's identity.
    fn id(&self) -> LogId;

    /// Appends a batch.
    ///
    /// Contract: accepted only when `previous_version` is the last version the log holds (a
    /// push that arrives early waits, bounded, for its predecessor) and `epoch` is not older
    /// than the epoch the log is locked with. `Ok` is returned only after the entry is on disk
    /// (fsync): an acknowledged push survives a crash.
    ///
    /// Errors: `Fenced`; `Duplicate` for a version already held; `OutOfOrder` after the wait;
    /// `Io` when the disk fails (the log is then `Poisoned` for every later push);
    /// `Overloaded` when the queue is full.
    async fn push(
        &self,
        epoch: Epoch,
        previous_version: Version,
        version: Version,
        payload: Bytes,
    ) -> Result<()>;

    /// Up to `limit` entries with versions greater than `after`, in version order.
    ///
    /// Contract: only durable entries are returned. When there are none, the call waits
    /// (bounded) for one and then returns what it has, possibly nothing; that lets a storage
    /// server follow the log with a loop of pulls. Pulls are not fenced: recovery reads the
    /// locked logs of the previous epoch to replay them.
    ///
    /// Errors: `TooOld` when entries after `after` were already popped; `Corruption`, `Io`.
    async fn pull(&self, after: Version, limit: usize) -> Result<Vec<LogEntry>>;

    /// Locks the log with `epoch`, so pushes of older epochs are refused from now on, and
    /// reports what the log holds. Locking with the current epoch again is allowed.
    ///
    /// Errors: `Fenced` when `epoch` is older than the current lock.
    async fn lock(&self, epoch: Epoch) -> Result<LogState>;

    /// Allows the log to discard entries with versions below `version`: their mutations are
    /// durable on every storage server that needs them. Discarding happens in whole segments,
    /// so some older entries may remain readable.
    async fn pop(&self, version: Version) -> Result<()>;
}

/// The result of a range read.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RangeRead {
    /// Key-value pairs, ascending (descending for a reverse read).
    pub entries: Vec<(Key, Value)>,
    /// Whether the limit cut the read short: more keys of the range exist.
    pub more: bool,
}

/// Holds the data of some key ranges and answers reads at any version of the MVCC window.
#[async_trait]
pub trait StorageServer: Send + Sync {
    /// The key ranges (shards) this server owns.
    fn shards(&self) -> Vec<KeyRange>;

    /// The value of `key` at `version`.
    ///
    /// Contract: waits (bounded) until `version` is applied, then answers as of that version.
    ///
    /// Errors: `WrongShard` for a key outside [`StorageServer::shards`]; `FutureVersion` after
    /// the wait; `TooOld` for a version older than the window.
    async fn get(&self, key: Key, version: Version) -> Result<Option<Value>>;

    /// Up to `limit` pairs of `range` at `version`, from the end of the range when `reverse`.
    ///
    /// Contract and errors as for [`StorageServer::get`]; the whole range must lie within one
    /// shard of this server.
    async fn get_range(
        &self,
        range: KeyRange,
        version: Version,
        limit: usize,
        reverse: bool,
    ) -> Result<RangeRead>;

    /// The newest version whose mutations are applied and readable.
    async fn applied_version(&self) -> Result<Version>;

    /// The newest version whose mutations are on disk in the storage engine. Always at most
    /// the applied version and at most the newest committed version.
    async fn durable_version(&self) -> Result<Version>;

    /// Drops every applied version above `version`: recovery discards commits that were never
    /// acknowledged. The server then follows the logs again from `version`.
    ///
    /// Errors: `InvalidRequest` when `version` is below the durable version (that data can no
    /// longer be undone; it cannot happen when `version` is a recovery version).
    async fn roll_back(&self, version: Version) -> Result<()>;
}

/// Takes client transactions and commits them through resolvers, sequencer and logs.
#[async_trait]
pub trait CommitProxy: Send + Sync {
    /// The epoch this proxy was started for.
    fn epoch(&self) -> Epoch;

    /// Commits an encoded transaction (see [`crate::wire`]) and returns its commit version.
    ///
    /// Contract: `Ok(v)` is returned only when the transaction's mutations are durable on every
    /// log and `v` was reported committed to the sequencer, so any read version taken later
    /// sees it. After `Conflict`, `TooOld`, `Wire` or `Overloaded` nothing of the transaction is
    /// ever visible. After a failure once the batch was pushed to the logs the outcome is
    /// unknown, as with FoundationDB's `commit_unknown_result`: the next recovery keeps the batch
    /// if every log holds it and discards it otherwise.
    ///
    /// Errors: `Conflict` and `TooOld` (retry with a new read version); `Wire` for malformed
    /// bytes; `Overloaded` when the proxy's queue is full; the error of the stage that failed
    /// the batch (its [`crate::Stage`] names it); `Fenced` once a newer epoch took over.
    async fn commit(&self, transaction: Bytes) -> Result<Version>;

    /// Commits a transaction not yet encoded: the same contract and errors as
    /// [`CommitProxy::commit`] of its encoding, which is what this default does (a
    /// transaction that cannot be encoded fails with `Wire`). A proxy in the caller's process
    /// may take the transaction as it is, with the same checks, and skip the encoding and the
    /// parse: the transaction builder commits through this method.
    async fn commit_transaction(&self, transaction: Transaction) -> Result<Version> {
        let bytes = transaction
            .encode()
            .map_err(|e| Error::new(Stage::CommitProxy, ErrorKind::Wire(e)))?;
        self.commit(bytes).await
    }

    /// Commits several transactions not yet encoded, each on its own, as if each had a caller
    /// of its own and they all came at once: for each, the contract and errors of
    /// [`CommitProxy::commit_transaction`], and an outcome per transaction, in order. This
    /// default commits them side by side on the caller's task; a proxy that batches gathers
    /// them into shared batches, as it does concurrent callers' commits. A server commits the
    /// transactions of one call this way.
    async fn commit_all(&self, transactions: Vec<Transaction>) -> Vec<Result<Version>> {
        let commits = transactions
            .into_iter()
            .map(|transaction| self.commit_transaction(transaction));
        futures_util::future::join_all(commits).await
    }
}
