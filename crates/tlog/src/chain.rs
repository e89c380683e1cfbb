//! The ordering and fencing rules every log shares: which push may enter the log next.

use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

use strata_core::{Epoch, Error, ErrorKind, Result, Stage, Version};
use tokio::sync::watch;
use tokio::time::Instant;

pub(crate) fn error(kind: ErrorKind) -> Error {
    Error::new(Stage::Log, kind)
}

#[derive(Debug)]
struct ChainState {
    locked: Epoch,
    last_accepted: Version,
    poisoned: bool,
}

/// Admission of pushes along the `previous_version` chain, epoch fencing, poisoning, and the
/// durable version that pulls wait on.
#[derive(Debug)]
pub(crate) struct Chain {
    state: Mutex<ChainState>,
    accepted: watch::Sender<Version>,
    durable: watch::Sender<Version>,
}

impl Chain {
    /// A chain whose next push must name `last` as its predecessor.
    pub(crate) fn new(locked: Epoch, last: Version) -> Chain {
        Chain {
            state: Mutex::new(ChainState {
                locked,
                last_accepted: last,
                poisoned: false,
            }),
            accepted: watch::Sender::new(last),
            durable: watch::Sender::new(last),
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
        if version <= previous {
            return Err(error(ErrorKind::InvalidRequest(format!(
                "version {version} does not follow previous version {previous}"
            ))));
        }
        let deadline = Instant::now() + wait;
        let mut accepted = self.accepted.subscribe();
        loop {
            {
                let mut st = self.state()?;
                if st.poisoned {
                    return Err(error(ErrorKind::Poisoned));
                }
                if epoch < st.locked {
                    return Err(error(ErrorKind::Fenced {
                        request: epoch,
                        current: st.locked,
                    }));
                }
                let last = st.last_accepted;
                if version <= last {
                    return Err(error(ErrorKind::Duplicate { version, last }));
                }
                if previous < last {
                    // The predecessor named is older than what the log holds: a forked chain.
                    return Err(error(ErrorKind::OutOfOrder { previous, last }));
                }
                if previous == last {
                    let queued = enqueue()?;
                    st.last_accepted = version;
                    self.accepted.send_replace(version);
                    return Ok(queued);
                }
            }
            // The predecessor has not arrived yet: wait for the chain to move.
            match tokio::time::timeout_at(deadline, accepted.changed()).await {
                Ok(Ok(())) => {}
                Ok(Err(_)) => return Err(error(ErrorKind::Unavailable("log closed".into()))),
                Err(_) => {
                    let last = self.state()?.last_accepted;
                    return Err(error(ErrorKind::OutOfOrder { previous, last }));
                }
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
        Ok(())
    }

    pub(crate) fn locked(&self) -> Result<Epoch> {
        Ok(self.state()?.locked)
    }

    pub(crate) fn last_accepted(&self) -> Result<Version> {
        Ok(self.state()?.last_accepted)
    }

    /// Refuses every later push: a write or sync failed, and the file's state can no longer be
    /// trusted.
    pub(crate) fn poison(&self) {
        if let Ok(mut st) = self.state.lock() {
            st.poisoned = true;
        }
        // Wake whoever waits for durability: it will never come.
        self.durable.send_modify(|_| {});
    }

    pub(crate) fn is_poisoned(&self) -> bool {
        self.state.lock().map_or(true, |st| st.poisoned)
    }

    /// Publishes that everything up to `version` is durable and readable.
    pub(crate) fn set_durable(&self, version: Version) {
        self.durable.send_replace(version);
    }

    pub(crate) fn durable(&self) -> Version {
        *self.durable.borrow()
    }

    /// Waits until something newer than `after` is durable, at most `wait`.
    pub(crate) async fn wait_durable_after(&self, after: Version, wait: Duration) {
        let mut rx = self.durable.subscribe();
        let _ = tokio::time::timeout(wait, rx.wait_for(|&v| v > after)).await;
    }

    /// Waits until every accepted push is durable (or the log is poisoned), at most `wait`.
    pub(crate) async fn wait_drained(&self, wait: Duration) -> Result<()> {
        let target = self.last_accepted()?;
        let mut rx = self.durable.subscribe();
        let drained =
            tokio::time::timeout(wait, rx.wait_for(|&v| v >= target || self.is_poisoned())).await;
        if self.is_poisoned() {
            return Err(error(ErrorKind::Poisoned));
        }
        match drained {
            Ok(Ok(_)) => Ok(()),
            _ => Err(error(ErrorKind::Timeout {
                what: format!("pushes up to {target} to become durable"),
                after_ms: u64::try_from(wait.as_millis()).unwrap_or(u64::MAX),
            })),
        }
    }
}
