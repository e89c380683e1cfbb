//! [`TransactionOptions`]: how long a transaction may live, how long [`Database::run`] may
//! take in all, and how it retries; and the two checks that enforce them, the lifetime before
//! each read and the commit, the timeout around the retry loop.
//!
//! The options extend [`RetryConfig`] rather than replace it: the retry fields stay where
//! existing callers set them (`Database::new(.., RetryConfig { .. })` still works, through
//! `From`), and the two new limits sit beside them. FoundationDB's names map as follows:
//! `timeout` is [`TransactionOptions::timeout`], `retry_limit` (retries after the first
//! attempt) is [`RetryConfig::attempts_max`] less one ([`TransactionOptions::with_retry_limit`]
//! converts), `max_retry_delay` is [`RetryConfig::backoff_max`].

use std::future::Future;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use strata_core::{Error, ErrorKind, Result, TRANSACTION_LIFETIME_MAX, Version};

use crate::{Database, RetryConfig, Transaction, error};

/// What a transaction may take: its lifetime, the timeout of [`Database::run`], its retries.
/// A [`Database`] holds defaults ([`Database::new`], [`Database::with_options`]); a call of
/// [`Database::run_with`] overrides them for that call.
///
/// ```
/// use std::time::Duration;
/// use strata_txn_builder::TransactionOptions;
///
/// let options = TransactionOptions::default()
///     .with_timeout(Duration::from_secs(2))
///     .with_retry_limit(5)
///     .with_max_retry_delay(Duration::from_millis(20));
/// assert_eq!(options.timeout, Some(Duration::from_secs(2)));
/// assert_eq!(options.retry.attempts_max, 6); // the first attempt and five retries
/// assert_eq!(options.lifetime, strata_core::TRANSACTION_LIFETIME_MAX);
/// options.validate()?;
///
/// // Never longer than the MVCC window allows.
/// assert!(options.with_lifetime(Duration::from_secs(6)).validate().is_err());
/// # Ok::<(), strata_core::Error>(())
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TransactionOptions {
    /// Longest a transaction may live, from [`Database::begin`] to its last read or
    /// its commit: above zero, at most (and by default) [`TRANSACTION_LIFETIME_MAX`], 5 s.
    /// After it, every read and the commit fail at once with
    /// [`ErrorKind::TransactionExpired`], without reaching storage or a proxy.
    pub lifetime: Duration,
    /// Longest [`Database::run`] may take in all, its attempts and the waits between them
    /// included; `None` (the default) for no bound. When it passes, the attempt in flight is
    /// abandoned and `run` fails with [`ErrorKind::TransactionTimedOut`]. An attempt cut off
    /// while committing may still have committed, as with any commit whose answer was lost.
    /// A commit that finds the cluster idle may write and sync its log record on the calling
    /// task's thread (as an embedded store's commit does; see the commit proxy's "A lone
    /// commit"), and a timeout cannot fire while that thread is inside the sync: on a disk
    /// that stalls, it fires when the sync returns. Run `run` on a task of its own, and bound
    /// the wait for that task, when a deadline must fire during such a stall.
    /// Above zero when set.
    pub timeout: Option<Duration>,
    /// How [`Database::run`] retries: how many attempts, and the waits between them.
    pub retry: RetryConfig,
}

impl Default for TransactionOptions {
    fn default() -> TransactionOptions {
        TransactionOptions::from(RetryConfig::default())
    }
}

/// The default lifetime and no timeout, with these retries.
impl From<RetryConfig> for TransactionOptions {
    fn from(retry: RetryConfig) -> TransactionOptions {
        TransactionOptions {
            lifetime: TRANSACTION_LIFETIME_MAX,
            timeout: None,
            retry,
        }
    }
}

impl TransactionOptions {
    /// These options with a shorter lifetime (see [`TransactionOptions::lifetime`]).
    #[must_use]
    pub fn with_lifetime(self, lifetime: Duration) -> TransactionOptions {
        TransactionOptions { lifetime, ..self }
    }

    /// These options with a timeout for the whole of [`Database::run`] (FoundationDB's
    /// `timeout`; see [`TransactionOptions::timeout`]).
    #[must_use]
    pub fn with_timeout(self, timeout: Duration) -> TransactionOptions {
        TransactionOptions {
            timeout: Some(timeout),
            ..self
        }
    }

    /// These options allowing `retries` retries after the first attempt (FoundationDB's
    /// `retry_limit`): [`RetryConfig::attempts_max`] becomes `retries + 1`. Once they are
    /// spent, `run` returns the last attempt's error.
    #[must_use]
    pub fn with_retry_limit(self, retries: u32) -> TransactionOptions {
        TransactionOptions {
            retry: RetryConfig {
                attempts_max: retries.saturating_add(1),
                ..self.retry
            },
            ..self
        }
    }

    /// These options with a longest wait between attempts of `delay` (FoundationDB's
    /// `max_retry_delay`): [`RetryConfig::backoff_max`].
    #[must_use]
    pub fn with_max_retry_delay(self, delay: Duration) -> TransactionOptions {
        TransactionOptions {
            retry: RetryConfig {
                backoff_max: delay,
                ..self.retry
            },
            ..self
        }
    }

    /// Checks the options: a lifetime above zero and at most [`TRANSACTION_LIFETIME_MAX`]
    /// (a transaction older than the MVCC window cannot read or commit anyway), a timeout
    /// above zero when set, at least one attempt. `InvalidRequest` names the one that is not.
    pub fn validate(&self) -> Result<()> {
        let refuse = |why: String| Err(error(ErrorKind::InvalidRequest(why)));
        if self.lifetime.is_zero() || self.lifetime > TRANSACTION_LIFETIME_MAX {
            return refuse(format!(
                "a transaction lifetime of {} ms: it must be above zero and at most {} ms, \
                 the storage servers' MVCC window",
                self.lifetime.as_millis(),
                TRANSACTION_LIFETIME_MAX.as_millis()
            ));
        }
        if self.timeout.is_some_and(|t| t.is_zero()) {
            return refuse("a timeout of zero: leave it unset for no timeout".into());
        }
        if self.retry.attempts_max == 0 {
            return refuse("attempts_max of zero: a transaction needs one attempt".into());
        }
        Ok(())
    }
}

impl Transaction {
    /// Refuses, at once, a read or the commit of a transaction that lived past its lifetime.
    pub(crate) fn check_lifetime(&self) -> Result<()> {
        let finding = Duration::from_micros(self.inner.finding_us.load(Ordering::Relaxed));
        let lived = self.inner.began.elapsed().saturating_sub(finding);
        if lived <= self.inner.lifetime {
            return Ok(());
        }
        Err(error(ErrorKind::TransactionExpired {
            read_version: self.inner.read_version.get().copied(),
            lived,
            limit: self.inner.lifetime,
        }))
    }
}

/// What the retry loop has done so far, still readable once the timeout dropped it.
#[derive(Default)]
struct Progress {
    attempts: AtomicU32,
    /// The error of the last attempt that failed and was retried.
    last_error: Mutex<Option<Error>>,
}

/// [`Database::run_with`], once `db` holds the call's options: the retry loop, under the
/// timeout if there is one.
pub(crate) async fn run<T, F, Fut>(db: &Database, body: F) -> Result<(T, Version)>
where
    F: FnMut(Transaction) -> Fut,
    Fut: Future<Output = Result<T>>,
{
    let progress = Progress::default();
    let attempts = retry_loop(db, body, &progress);
    let Some(timeout) = db.options.timeout else {
        return attempts.await;
    };
    if let Ok(done) = tokio::time::timeout(timeout, attempts).await {
        return done;
    }
    let attempts = progress.attempts.load(Ordering::Relaxed);
    let last_error = progress
        .last_error
        .lock()
        .ok()
        .and_then(|mut last| last.take())
        .map(Box::new);
    tracing::debug!(attempts, "transaction timed out");
    Err(error(ErrorKind::TransactionTimedOut {
        timeout,
        attempts,
        last_error,
    }))
}

async fn retry_loop<T, F, Fut>(
    db: &Database,
    mut body: F,
    progress: &Progress,
) -> Result<(T, Version)>
where
    F: FnMut(Transaction) -> Fut,
    Fut: Future<Output = Result<T>>,
{
    let retry = db.options.retry;
    let mut backoff = retry.backoff_initial;
    loop {
        let attempt = progress.attempts.fetch_add(1, Ordering::Relaxed) + 1;
        let result: Result<(T, Version)> = async {
            let tx = db.begin();
            let value = body(tx.clone()).await?;
            let version = tx.commit().await?;
            Ok((value, version))
        }
        .await;
        let e = match result {
            Ok(done) => return Ok(done),
            // Not retryable: a refusal, a failure, or a body that outlived its lifetime (it
            // would only outlive it again). On a database that follows recoveries, an attempt
            // that the end of its epoch failed before its commit was sent (or whose commit was
            // refused as fenced) is started again on the newest epoch.
            Err(e) if !(e.is_retryable() || db.shared.retries_after(&e)) => return Err(e),
            Err(e) => e,
        };
        if attempt >= retry.attempts_max {
            tracing::warn!(
                attempts = attempt,
                error = %e,
                "transaction retries exhausted; returning the last attempt's error"
            );
            return Err(e);
        }
        tracing::debug!(attempt, error = %e, "transaction retried");
        if let Ok(mut last) = progress.last_error.lock() {
            *last = Some(e);
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(retry.backoff_max);
    }
}

#[cfg(test)]
mod tests;
