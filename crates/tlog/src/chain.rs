//! The ordering and fencing rules every log shares: which push may enter the log next.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

use strata_core::chain::{self, Admission, ChainRefusal};
use strata_core::version_cell::VersionCell;
use strata_core::{Epoch, Error, ErrorKind, Result, Version};
use tokio::sync::oneshot;
use tokio::time::Instant;

use crate::error::error;

fn refused(refusal: ChainRefusal) -> Error {
    error(refusal.into())
}

#[derive(Debug)]
struct ChainState {
    locked: Epoch,
    last_accepted: Version,
    /// Why the log refuses every push: the first failed write or sync, as text. Kept so that
    /// every later refusal names it, not only the pushes of the group commit that failed.
    poisoned: Option<String>,
    /// Pushes waiting for their predecessor, by the version they wait for. Accepting version
    /// `v` wakes only the pushes that name `v` as their previous version, instead of every
    /// waiter: with many concurrent pushers arriving out of order, a broadcast would wake each
    /// of them once per accepted push.
    /// Ordered, so that waking them all wakes them in one order every run (the simulation
    /// replays a seed exactly).
    waiters: BTreeMap<Version, Vec<oneshot::Sender<()>>>,
}

impl ChainState {
    /// Wakes every waiter, so each re-checks the chain (after a lock or a poisoning).
    fn wake_all(&mut self) {
        for (_, waiters) in std::mem::take(&mut self.waiters) {
            for w in waiters {
                let _ = w.send(());
            }
        }
    }
}

/// Admission of pushes along the `previous_version` chain, epoch fencing, poisoning, and the
/// durable version that pulls wait on.
#[derive(Debug)]
pub(crate) struct Chain {
    state: Mutex<ChainState>,
    /// Set (under the lock) when `poisoned` is, so that the writer (and anyone asking
    /// [`Chain::is_poisoned`]) sees the log is healthy without the lock: a pusher queues its
    /// write while holding the lock, and a writer woken by it would otherwise wait for that
    /// same lock before every group commit.
    poisoned_flag: AtomicBool,
    durable: VersionCell,
}

impl Chain {
    /// A chain whose next push must name `last` as its predecessor.
    pub(crate) fn new(locked: Epoch, last: Version) -> Chain {
        Chain {
            state: Mutex::new(ChainState {
                locked,
                last_accepted: last,
                poisoned: None,
                waiters: BTreeMap::new(),
            }),
            poisoned_flag: AtomicBool::new(false),
            durable: VersionCell::new(last),
        }
    }

    fn state(&self) -> Result<MutexGuard<'_, ChainState>> {
        self.state.lock().map_err(|_| {
            error(ErrorKind::Unavailable(
                "log state poisoned by a panic".into(),
            ))
        })
    }

    /// Admits the push `previous -> version` of `epoch`: waits (until `deadline`) for its
    /// predecessor, then runs `enqueue` while holding the chain, so that pushes enter the log
    /// in chain order. `enqueue` must not block.
    pub(crate) async fn admit<T>(
        &self,
        epoch: Epoch,
        previous: Version,
        version: Version,
        wait: Duration,
        enqueue: impl FnOnce() -> Result<T>,
    ) -> Result<T> {
        // A malformed push is refused before it can be told it is poisoned or fenced.
        chain::follows(previous, version).map_err(refused)?;
        // The deadline is only needed once a push has to wait; most never do.
        let mut deadline = None;
        loop {
            let woken = {
                let mut st = self.state()?;
                if let Some(cause) = &st.poisoned {
                    return Err(error(ErrorKind::Poisoned(cause.clone())));
                }
                if epoch < st.locked {
                    return Err(error(ErrorKind::Fenced {
                        request: epoch,
                        current: st.locked,
                    }));
                }
                // A duplicate or a fork is refused; see strata_core::chain for the rule.
                match chain::admit(previous, version, st.last_accepted).map_err(refused)? {
                    Admission::Next => {
                        let queued = enqueue()?;
                        st.last_accepted = version;
                        if let Some(next) = st.waiters.remove(&version) {
                            for w in next {
                                let _ = w.send(());
                            }
                        }
                        return Ok(queued);
                    }
                    // The predecessor has not arrived yet: wait to be woken when it is accepted.
                    Admission::Early => {}
                }
                let (tx, rx) = oneshot::channel();
                st.waiters.entry(previous).or_default().push(tx);
                rx
            };
            let deadline = *deadline.get_or_insert_with(|| Instant::now() + wait);
            if tokio::time::timeout_at(deadline, woken).await.is_err() {
                let mut st = self.state()?;
                if let Some(waiting) = st.waiters.get_mut(&previous) {
                    waiting.retain(|w| !w.is_closed());
                    if waiting.is_empty() {
                        st.waiters.remove(&previous);
                    }
                }
                let last = st.last_accepted;
                return Err(error(ErrorKind::OutOfOrder { previous, last }));
            }
        }
    }

    /// Locks the chain with `epoch`: pushes of older epochs are refused from now on.
    pub(crate) fn lock(&self, epoch: Epoch) -> Result<()> {
        let mut st = self.state()?;
        if epoch < st.locked {
            return Err(error(ErrorKind::Fenced {
                request: epoch,
                current: st.locked,
            }));
        }
        st.locked = epoch;
        // Waiters of an older epoch must learn they are fenced now, not when their wait ends.
        st.wake_all();
        Ok(())
    }

    pub(crate) fn locked(&self) -> Result<Epoch> {
        Ok(self.state()?.locked)
    }

    pub(crate) fn last_accepted(&self) -> Result<Version> {
        Ok(self.state()?.last_accepted)
    }

    /// Refuses every later push: a write or sync failed (`cause` says how), and the file's
    /// state can no longer be trusted. The first cause is kept: a later failure is only a
    /// consequence of it.
    pub(crate) fn poison(&self, cause: String) {
        if let Ok(mut st) = self.state.lock() {
            st.poisoned.get_or_insert(cause);
            self.poisoned_flag.store(true, Ordering::Release);
            st.wake_all();
        }
        // Wake whoever waits for durability: it will never come.
        self.durable.wake_all();
    }

    /// Whether the log is poisoned (or its state by a panic), without taking the lock.
    pub(crate) fn is_poisoned(&self) -> bool {
        self.poisoned_flag.load(Ordering::Acquire) || self.state.is_poisoned()
    }

    /// What poisoned the log, if it is.
    pub(crate) fn poisoned_by(&self) -> Option<String> {
        match self.state.lock() {
            Ok(st) => st.poisoned.clone(),
            Err(_) => Some("a panic while holding the log state".into()),
        }
    }

    /// The error every refused push gets once the log is poisoned, if it is. A healthy log
    /// answers without taking the lock.
    pub(crate) fn poisoned_error(&self) -> Option<Error> {
        if !self.is_poisoned() {
            return None;
        }
        self.poisoned_by()
            .map(|cause| error(ErrorKind::Poisoned(cause)))
    }

    /// Publishes that everything up to `version` is durable and readable.
    pub(crate) fn set_durable(&self, version: Version) {
        self.durable.set(version);
    }

    pub(crate) fn durable(&self) -> Version {
        self.durable.get()
    }

    /// Waits until something newer than `after` is durable, at most `wait`.
    pub(crate) async fn wait_durable_after(&self, after: Version, wait: Duration) {
        let _ = tokio::time::timeout(wait, self.durable.wait_for(|v| v > after)).await;
    }

    /// Waits until every accepted push is durable (or the log is poisoned), at most `wait`.
    pub(crate) async fn wait_drained(&self, wait: Duration) -> Result<()> {
        let target = self.last_accepted()?;
        let drained = tokio::time::timeout(
            wait,
            self.durable.wait_for(|v| v >= target || self.is_poisoned()),
        )
        .await;
        if let Some(poisoned) = self.poisoned_error() {
            return Err(poisoned);
        }
        match drained {
            Ok(_) => Ok(()),
            _ => Err(error(ErrorKind::Timeout {
                what: format!("pushes up to {target} to become durable"),
                after_ms: u64::try_from(wait.as_millis()).unwrap_or(u64::MAX),
            })),
        }
    }
}
