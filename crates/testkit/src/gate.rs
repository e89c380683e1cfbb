//! The version chain as the fakes keep it: a batch enters only after its predecessor, and one
//! that arrives early waits (bounded) for it. The rule is the stages' own
//! ([`strata_core::chain::admit`]); the waiting is simpler than theirs (every waiter re-checks
//! on every accepted version), which is plenty for tests.

use std::time::Duration;

use strata_core::chain::{self, Admission};
use strata_core::{Epoch, Error, ErrorKind, Result, Stage, Version};
use tokio::sync::watch;

/// The last version a fake accepted, the epoch it is locked at, and the wait for a predecessor.
#[derive(Debug)]
pub(crate) struct Gate {
    stage: Stage,
    last: watch::Sender<Version>,
    locked: std::sync::Mutex<Epoch>,
    wait: Duration,
}

impl Gate {
    pub(crate) fn new(stage: Stage, start: Version, wait: Duration) -> Gate {
        Gate {
            stage,
            last: watch::Sender::new(start),
            locked: std::sync::Mutex::new(Epoch(0)),
            wait,
        }
    }

    pub(crate) fn error(&self, kind: ErrorKind) -> Error {
        Error::new(self.stage, kind)
    }

    pub(crate) fn last(&self) -> Version {
        *self.last.borrow()
    }

    pub(crate) fn locked(&self) -> Epoch {
        self.locked.lock().map_or(Epoch(u64::MAX), |e| *e)
    }

    /// Fences every epoch below `epoch`.
    pub(crate) fn lock(&self, epoch: Epoch) -> Result<()> {
        let mut locked = self
            .locked
            .lock()
            .map_err(|_| self.error(ErrorKind::Unavailable("fake poisoned".into())))?;
        if epoch < *locked {
            return Err(self.error(ErrorKind::Fenced {
                request: epoch,
                current: *locked,
            }));
        }
        *locked = epoch;
        // Pushes waiting for a predecessor re-check, and learn they are fenced now.
        self.last.send_modify(|_| {});
        Ok(())
    }

    /// Waits until `previous -> version` of `epoch` is next, runs `apply` and moves the chain
    /// to `version`, both under the chain's lock. The refusals are the real stages': `Fenced`,
    /// `Duplicate`, `OutOfOrder` (a fork, or a predecessor that did not come within the wait),
    /// `InvalidRequest`.
    pub(crate) async fn admit<T>(
        &self,
        epoch: Epoch,
        previous: Version,
        version: Version,
        apply: impl FnOnce() -> Result<T>,
    ) -> Result<T> {
        let mut apply = Some(apply);
        let mut last = self.last.subscribe();
        let next = async {
            loop {
                // Seen before checking, so a version accepted after the check wakes us.
                last.borrow_and_update();
                let fenced = self.locked();
                if epoch < fenced {
                    return Err(self.error(ErrorKind::Fenced {
                        request: epoch,
                        current: fenced,
                    }));
                }
                let mut outcome = None;
                self.last
                    .send_if_modified(|last| match self.is_next(previous, version, *last) {
                        Ok(false) => false,
                        Ok(true) => {
                            let applied = apply.take().map(|f| f());
                            let moved = matches!(applied, Some(Ok(_)));
                            if moved {
                                *last = version;
                            }
                            outcome = applied;
                            moved
                        }
                        Err(e) => {
                            outcome = Some(Err(e));
                            false
                        }
                    });
                if let Some(done) = outcome {
                    return done;
                }
                if last.changed().await.is_err() {
                    return Err(self.error(ErrorKind::Unavailable("fake stopped".into())));
                }
            }
        };
        match tokio::time::timeout(self.wait, next).await {
            Ok(done) => done,
            Err(_) => Err(self.error(ErrorKind::OutOfOrder {
                previous,
                last: self.last(),
            })),
        }
    }

    fn is_next(&self, previous: Version, version: Version, last: Version) -> Result<bool> {
        let admission =
            chain::admit(previous, version, last).map_err(|refusal| self.error(refusal.into()))?;
        Ok(admission == Admission::Next)
    }
}
