//! The error that crosses stage boundaries.
//!
//! Every stage trait returns [`Error`]: which stage failed ([`Stage`]) and why ([`ErrorKind`]).
//! A commit proxy that fails a batch because a log refused a push passes the log's error on
//! unchanged, so the client and the director both see `log: ...`, not `commit proxy: ...`.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use crate::types::{Epoch, Version};
use crate::wire::WireError;

/// The result of a stage call.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// A stage of the commit pipeline, named in every [`Error`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Stage {
    /// The client transaction builder.
    TxnBuilder,
    /// A commit proxy.
    CommitProxy,
    /// The sequencer.
    Sequencer,
    /// A resolver.
    Resolver,
    /// A transaction log.
    Log,
    /// A storage server.
    Storage,
    /// The director running a recovery.
    Director,
    /// The coordinator keeping the coordinated state.
    Coordinator,
}

impl Stage {
    /// The stage's name as written in errors and logs.
    pub fn name(self) -> &'static str {
        match self {
            Stage::TxnBuilder => "txn builder",
            Stage::CommitProxy => "commit proxy",
            Stage::Sequencer => "sequencer",
            Stage::Resolver => "resolver",
            Stage::Log => "log",
            Stage::Storage => "storage",
            Stage::Director => "director",
            Stage::Coordinator => "coordinator",
        }
    }
}

impl fmt::Display for Stage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Why a stage refused or failed a request.
#[derive(Clone, Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ErrorKind {
    /// The request came from an epoch older than the one the stage is locked with: its sender
    /// has lost its authority and must stop.
    #[error("fenced: request of {request} but the stage is locked with {current}")]
    Fenced {
        /// The epoch the request carried.
        request: Epoch,
        /// The epoch the stage is locked with.
        current: Epoch,
    },
    /// The read version is older than the MVCC window: the transaction must restart with a
    /// newer read version.
    #[error("too old: {version} is below the oldest readable {oldest}")]
    TooOld {
        /// The version asked for.
        version: Version,
        /// The oldest version the stage still answers for.
        oldest: Version,
    },
    /// The version asked for was not reached within the wait bound.
    #[error("future version: {version} not reached, newest is {newest}")]
    FutureVersion {
        /// The version asked for.
        version: Version,
        /// The newest version the stage holds.
        newest: Version,
    },
    /// The transaction lived longer than its lifetime limit (at most
    /// [`crate::TRANSACTION_LIFETIME_MAX`]), so the client refused a read or the commit
    /// without sending it. Not retryable: the transaction itself takes too long, and starting
    /// it over would only take as long again.
    ///
    /// ```
    /// use std::time::Duration;
    /// use strata_core::{Error, ErrorKind, Stage, Version};
    /// let e = Error::new(Stage::TxnBuilder, ErrorKind::TransactionExpired {
    ///     read_version: Some(Version(42)),
    ///     lived: Duration::from_millis(6_012),
    ///     limit: Duration::from_secs(5),
    /// });
    /// assert_eq!(
    ///     e.to_string(),
    ///     "txn builder: transaction expired: it read at v42 and has lived 6012 ms, past its \
    ///      lifetime limit of 5000 ms; shorten the transaction or split it into smaller ones"
    /// );
    /// assert!(!e.is_retryable());
    /// ```
    #[error(
        "transaction expired: it {} and has lived {} ms, past its lifetime limit of {} ms; \
         shorten the transaction or split it into smaller ones",
        .read_version.map_or_else(|| "read nothing".to_string(), |v| format!("read at {v}")),
        .lived.as_millis(),
        .limit.as_millis()
    )]
    TransactionExpired {
        /// The transaction's read version; `None` if it read nothing (it never asked for one).
        read_version: Option<Version>,
        /// How long it had lived when it was refused.
        lived: Duration,
        /// Its lifetime limit.
        limit: Duration,
    },
    /// A transaction's retry loop did not commit within its timeout; the attempt in flight was
    /// abandoned (if it was committing, the commit may still have taken effect).
    ///
    /// ```
    /// use std::time::Duration;
    /// use strata_core::{Error, ErrorKind, Stage};
    /// let conflict = Error::new(Stage::Resolver, ErrorKind::Conflict);
    /// let e = Error::new(Stage::TxnBuilder, ErrorKind::TransactionTimedOut {
    ///     timeout: Duration::from_millis(200),
    ///     attempts: 3,
    ///     last_error: Some(Box::new(conflict)),
    /// });
    /// assert_eq!(
    ///     e.to_string(),
    ///     "txn builder: transaction timed out: not committed within its timeout of 200 ms; \
    ///      attempts begun: 3; the last to finish failed with: resolver: conflict: a key read \
    ///      was written after the read version"
    /// );
    /// assert!(!e.is_retryable());
    /// ```
    #[error(
        "transaction timed out: not committed within its timeout of {} ms; attempts begun: \
         {attempts}{}",
        .timeout.as_millis(),
        last_failure(.last_error.as_deref())
    )]
    TransactionTimedOut {
        /// The timeout.
        timeout: Duration,
        /// Attempts begun, the one cut off included.
        attempts: u32,
        /// Why the last attempt that finished before the timeout failed, if one did.
        last_error: Option<Box<Error>>,
    },
    /// The transaction read something that a newer commit wrote; it was not committed.
    #[error("conflict: a key read was written after the read version")]
    Conflict,
    /// The call that committed the transaction failed after the transaction may have reached
    /// the logs (the connection broke, or the epoch ended under its batch): it may or may not
    /// have committed, and the next recovery decides (FoundationDB's `commit_unknown_result`).
    /// Not retryable: running the transaction again could apply it twice. Returned for every
    /// commit that failed without a refusal, whether the database follows recoveries (one
    /// connected through a cluster file) or is bound to its stages.
    ///
    /// ```
    /// use strata_core::{Error, ErrorKind, Stage};
    /// let cause = Error::new(Stage::CommitProxy, ErrorKind::Unavailable("connection lost".into()));
    /// let e = Error::new(Stage::TxnBuilder, ErrorKind::CommitUnknown(Box::new(cause)));
    /// assert_eq!(
    ///     e.to_string(),
    ///     "txn builder: commit outcome unknown: it may or may not have committed; the call \
    ///      failed with: commit proxy: unavailable: connection lost"
    /// );
    /// assert!(!e.is_retryable());
    /// ```
    #[error("commit outcome unknown: it may or may not have committed; the call failed with: {0}")]
    CommitUnknown(Box<Error>),
    /// A request named a `previous_version` other than the last version the stage holds, after
    /// waiting (bounded) for the predecessor: a gap in the version chain.
    #[error("out of order: previous version {previous} but the stage holds up to {last}")]
    OutOfOrder {
        /// The `previous_version` the request named.
        previous: Version,
        /// The last version the stage holds.
        last: Version,
    },
    /// A request for a version the stage already holds.
    #[error("duplicate: {version} is already held (last is {last})")]
    Duplicate {
        /// The version of the request.
        version: Version,
        /// The last version the stage holds.
        last: Version,
    },
    /// A key was read from a storage server that does not own it.
    #[error("wrong shard: key {key} is not owned here")]
    WrongShard {
        /// The key, printable.
        key: String,
    },
    /// The request is malformed for this stage (for example a version that does not advance).
    #[error("invalid request: {0}")]
    InvalidRequest(String),
    /// The transaction's bytes could not be read or exceed a limit.
    #[error("malformed transaction: {0}")]
    Wire(#[from] WireError),
    /// A queue is full; the caller should slow down and retry.
    #[error("overloaded: {0}")]
    Overloaded(String),
    /// The stage is stopped or unreachable.
    #[error("unavailable: {0}")]
    Unavailable(String),
    /// A bounded wait ran out.
    #[error("timed out after {after_ms} ms waiting for {what}")]
    Timeout {
        /// What was awaited.
        what: String,
        /// How long the wait lasted.
        after_ms: u64,
    },
    /// Stored data failed a check (CRC, magic, format); it is never skipped.
    #[error("corruption: {0}")]
    Corruption(String),
    /// A failed write or fsync left the stage unable to trust its own state; it refuses all
    /// writes. Carries that first failure, as text, so that every later refusal says why.
    #[error("poisoned by: {0}; refusing writes")]
    Poisoned(String),
    /// An I/O error, returned as it happened (never taken for a torn tail).
    #[error("i/o: {0}")]
    Io(Arc<std::io::Error>),
}

/// The end of a timed-out transaction's message: why its last finished attempt failed.
fn last_failure(last: Option<&Error>) -> String {
    last.map_or_else(String::new, |e| {
        format!("; the last to finish failed with: {e}")
    })
}

/// An error from a stage: which stage, and why.
///
/// ```
/// use strata_core::{Error, ErrorKind, Stage};
/// let e = Error::new(Stage::Resolver, ErrorKind::Conflict);
/// assert_eq!(e.to_string(), "resolver: conflict: a key read was written after the read version");
/// assert!(e.is_retryable());
/// ```
#[derive(Clone, Debug, thiserror::Error)]
#[error("{stage}: {kind}")]
pub struct Error {
    /// The stage that failed.
    pub stage: Stage,
    /// Why it failed.
    #[source]
    pub kind: ErrorKind,
}

impl Error {
    /// An error of `stage` for `kind`.
    pub fn new(stage: Stage, kind: ErrorKind) -> Error {
        Error { stage, kind }
    }

    /// An I/O error of `stage`.
    pub fn io(stage: Stage, error: std::io::Error) -> Error {
        Error::new(stage, ErrorKind::Io(Arc::new(error)))
    }

    /// Whether the same transaction may succeed if started again with a new read version
    /// (a conflict, or a read version that became too old or is not reached yet). An expired
    /// or timed-out transaction is not: what took too long would take as long again.
    pub fn is_retryable(&self) -> bool {
        matches!(
            self.kind,
            ErrorKind::Conflict | ErrorKind::TooOld { .. } | ErrorKind::FutureVersion { .. }
        )
    }

    /// Whether the error means the sender belongs to an older epoch and must stop.
    pub fn is_fenced(&self) -> bool {
        matches!(self.kind, ErrorKind::Fenced { .. })
    }
}

/// A bad range built by client code (`KeyRange::new(..)?` inside a transaction body) is that
/// transaction's invalid request: an error of [`Stage::TxnBuilder`], so `?` works.
///
/// ```
/// use strata_core::{Error, ErrorKind, KeyRange, Stage};
/// fn range() -> Result<KeyRange, Error> {
///     Ok(KeyRange::new("b", "a")?)
/// }
/// let e = range().unwrap_err();
/// assert_eq!(e.stage, Stage::TxnBuilder);
/// assert!(matches!(e.kind, ErrorKind::InvalidRequest(_)));
/// ```
impl From<crate::types::KeyRangeError> for Error {
    fn from(e: crate::types::KeyRangeError) -> Error {
        Error::new(Stage::TxnBuilder, ErrorKind::InvalidRequest(e.to_string()))
    }
}
