//! Following recoveries: a [`Database`](crate::Database) made by
//! [`Database::following`](crate::Database::following) holds the stages of one epoch at a time,
//! and finds the stages of the newest epoch again (through its [`Connect`]) once a call shows
//! that the epoch it holds has ended.
//!
//! # Rules
//!
//! - A call of a transaction that fails as `Unavailable` or `Fenced` from the sequencer, a
//!   storage server or a commit proxy marks the stages it used as ended; the error is returned
//!   at once, as it came.
//! - A transaction uses the stages current when it began, for all its calls, so its reads and
//!   its commit are of one epoch. One that begins while the current stages are marked ended
//!   connects again at its first call (one connection for all the callers waiting, and a
//!   failed connection answers every caller that waited for it with its error). A connection
//!   that found the epoch it replaced (the epoch still runs, a stage of it lost) makes the
//!   next one wait, 50 ms and doubling up to 1 s, so that a client does not reconnect in a
//!   loop until the director ends that epoch.
//! - A commit whose call failed without being refused is [`ErrorKind::CommitUnknown`]: it may
//!   have reached the logs. Refusals keep their error: a conflict, a too-old or future read
//!   version, a malformed or oversized transaction, an overloaded proxy, a system key, and a
//!   commit `Fenced` by the commit proxy's stage (the server refuses a commit of an older epoch
//!   before any proxy sees it).
//! - [`Database::run`](crate::Database::run) starts again, on the newest epoch, an attempt that
//!   failed as the first rule says (it sent no commit, or its commit was refused as fenced);
//!   never one whose commit is unknown.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, PoisonError, RwLock};
use std::time::Duration;

use async_trait::async_trait;
use strata_core::{CommitProxy, Error, ErrorKind, Result, Sequencer, Stage, StorageServer};
use tokio::time::Instant;

use crate::DbInner;

/// The stages of one epoch that clients call: what a [`Connect`] finds.
pub struct Stages {
    /// The sequencer, for read versions.
    pub sequencer: Arc<dyn Sequencer>,
    /// The commit proxies (at least one).
    pub proxies: Vec<Arc<dyn CommitProxy>>,
    /// The storage servers (at least one), routed to by the shards they report.
    pub storage: Vec<Arc<dyn StorageServer>>,
}

/// Where a database that follows recoveries finds the stages of the cluster's newest epoch
/// (`strata_director`'s cluster file implements it for a served cluster).
#[async_trait]
pub trait Connect: Send + Sync {
    /// The stages of the newest epoch. It may wait for one to be served, bounded; its error
    /// fails the calls that waited for it, and the next call that needs stages asks again.
    async fn stages(&self) -> Result<Stages>;
}

/// What every handle of one database shares: the stages transactions begin on, and how to
/// find newer ones.
pub(crate) struct Shared {
    current: RwLock<Arc<DbInner>>,
    connect: Option<Arc<dyn Connect>>,
    /// Held while connecting again.
    reconnecting: tokio::sync::Mutex<Reconnection>,
    /// Connections made again, failed ones included.
    tries: AtomicU64,
}

impl Shared {
    pub(crate) fn new(inner: Arc<DbInner>, connect: Option<Arc<dyn Connect>>) -> Shared {
        Shared {
            current: RwLock::new(inner),
            connect,
            reconnecting: tokio::sync::Mutex::new(Reconnection::default()),
            tries: AtomicU64::new(0),
        }
    }

    pub(crate) fn follows(&self) -> bool {
        self.connect.is_some()
    }

    /// The stages transactions begin on now.
    pub(crate) fn current(&self) -> Arc<DbInner> {
        self.current
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// The current stages, found again first if they ended (see the module docs).
    pub(crate) async fn live(&self) -> Result<Arc<DbInner>> {
        let seen = self.current();
        let Some(connect) = self.connect.as_ref().filter(|_| seen.ended()) else {
            return Ok(seen);
        };
        let tries = self.tries.load(Ordering::SeqCst);
        let mut last = self.reconnecting.lock().await;
        let now = self.current();
        if !now.ended() {
            return Ok(now);
        }
        // A connection tried while this caller waited failed: its answer is this caller's.
        if let Some(e) = last
            .failed
            .as_ref()
            .filter(|_| self.tries.load(Ordering::SeqCst) != tries)
        {
            return Err(e.clone());
        }
        last.pause().await;
        let found = connect.stages().await.and_then(DbInner::new);
        self.tries.fetch_add(1, Ordering::SeqCst);
        match found {
            Ok(inner) => {
                let inner = Arc::new(inner);
                let epoch = inner.sequencer.epoch();
                last.found(epoch == now.sequencer.epoch());
                *self.current.write().unwrap_or_else(PoisonError::into_inner) = inner.clone();
                tracing::info!(%epoch, "the database's stages ended; it follows the newest");
                Ok(inner)
            }
            Err(e) => {
                tracing::warn!(error = %e, "the database's epoch ended and none newer was found");
                last.failed = Some(e.clone());
                Err(e)
            }
        }
    }

    /// Marks `db` ended when `e` says its epoch is over (called for a database that follows).
    pub(crate) fn note(&self, db: &DbInner, e: &Error) {
        if ends_epoch(e) {
            db.ended.store(true, Ordering::SeqCst);
        }
    }

    /// `result` of a commit through `db`: a failure that is not a refusal becomes
    /// [`ErrorKind::CommitUnknown`], and marks `db` ended (called for a database that follows).
    pub(crate) fn commit_outcome<T>(&self, db: &DbInner, result: Result<T>) -> Result<T> {
        let Err(e) = result else {
            return result;
        };
        if refused(&e) {
            self.note(db, &e);
            return Err(e);
        }
        db.ended.store(true, Ordering::SeqCst);
        Err(unknown(e))
    }

    /// Whether [`Database::run`](crate::Database::run) may start an attempt that failed with
    /// `e` again: on a database that follows, when `e` ended its epoch (what the attempt did
    /// was refused, or was a read).
    pub(crate) fn retries_after(&self, e: &Error) -> bool {
        self.follows() && ends_epoch(e)
    }
}

/// The first pause before connecting again to an epoch found again just before, and the
/// longest: an epoch that still runs but fails calls (a proxy lost, not yet noticed by the
/// director) is asked again at a slowing pace, not in a loop.
const SAME_EPOCH_PAUSE: (Duration, Duration) = (Duration::from_millis(50), Duration::from_secs(1));

/// What the last reconnections did.
#[derive(Default)]
struct Reconnection {
    /// The last one's error, if it failed.
    failed: Option<Error>,
    /// When the last one that found stages ended, and how many in a row found the epoch they
    /// replaced.
    found_at: Option<Instant>,
    same_in_a_row: u32,
}

impl Reconnection {
    /// Waits, before connecting again, when the last connections found the same epoch again:
    /// [`SAME_EPOCH_PAUSE`], doubled for each in a row, from the last one.
    async fn pause(&self) {
        let (Some(at), 1..) = (self.found_at, self.same_in_a_row) else {
            return;
        };
        let (first, longest) = SAME_EPOCH_PAUSE;
        let pause = first
            .saturating_mul(1 << (self.same_in_a_row - 1).min(16))
            .min(longest);
        tokio::time::sleep_until(at + pause).await;
    }

    fn found(&mut self, same_epoch: bool) {
        self.failed = None;
        self.found_at = Some(Instant::now());
        self.same_in_a_row = if same_epoch {
            self.same_in_a_row + 1
        } else {
            0
        };
    }
}

impl DbInner {
    fn ended(&self) -> bool {
        self.ended.load(Ordering::SeqCst)
    }
}

/// Whether `e`, from a call to a stage, says the epoch that stage belongs to is over (or the
/// stage cannot be reached): worth finding the newest epoch's stages.
fn ends_epoch(e: &Error) -> bool {
    matches!(
        e.stage,
        Stage::Sequencer | Stage::Storage | Stage::CommitProxy
    ) && matches!(e.kind, ErrorKind::Unavailable(_) | ErrorKind::Fenced { .. })
}

/// What a commit that failed with `e` tells its caller: `e` itself when the commit was refused
/// (nothing of it is ever visible), [`ErrorKind::CommitUnknown`] with `e` as its cause
/// otherwise (it may have committed).
pub(crate) fn unknown_unless_refused(e: Error) -> Error {
    if refused(&e) { e } else { unknown(e) }
}

/// A commit whose call failed with `e`, which may have committed.
fn unknown(e: Error) -> Error {
    Error::new(Stage::TxnBuilder, ErrorKind::CommitUnknown(Box::new(e)))
}

/// Whether a commit that failed with `e` was refused: nothing of it is ever visible (the
/// [`CommitProxy::commit`] contract). A conflict or a too-old read version answers the
/// transaction itself; the other refusals count only from this client or the proxy's own
/// stage, since a log's or the sequencer's error is the failure of a batch that may already
/// be on every log.
fn refused(e: &Error) -> bool {
    let before_the_batch = matches!(e.stage, Stage::TxnBuilder | Stage::CommitProxy);
    match e.kind {
        ErrorKind::Conflict | ErrorKind::TooOld { .. } | ErrorKind::FutureVersion { .. } => true,
        ErrorKind::Wire(_)
        | ErrorKind::Overloaded(_)
        | ErrorKind::InvalidRequest(_)
        | ErrorKind::WrongShard { .. }
        | ErrorKind::TransactionExpired { .. } => before_the_batch,
        // The server refuses an older epoch's commit before any proxy sees it; the proxy
        // itself never raises `Fenced` (a fenced proxy answers `Unavailable`).
        ErrorKind::Fenced { .. } => e.stage == Stage::CommitProxy,
        _ => false,
    }
}

#[cfg(test)]
mod tests;
