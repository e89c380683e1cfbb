//! The version chain as the fakes keep it: a batch enters only after its predecessor, and one
//! that arrives early waits (bounded) for it. The rule is the stages' own
//! ([`strata_core::chain::admit`]), and so is the order of the checks (a malformed request is
//! refused before it is told it is fenced); the fencing check, the admission and `lock` all
//! happen under one lock, as in the real log, so a push either lands before a `lock` (which
//! then reports it) or is fenced. The waiting is simpler than the stages' (every waiter
//! re-checks on every change), which is plenty for tests.

use std::time::Duration;

use strata_core::chain::{self, Admission};
use strata_core::{Epoch, Error, ErrorKind, Result, Stage, Version};
use tokio::sync::watch;

/// What the chain holds: the last version accepted and the epoch it is locked at.
#[derive(Clone, Copy, Debug)]
struct Held {
    last: Version,
    locked: Epoch,
}

/// The chain of one fake, and how long an early request waits for its predecessor.
#[derive(Debug)]
pub(crate) struct Gate {
    stage: Stage,
    /// Every change goes through the channel's lock, and wakes every waiter.
    held: watch::Sender<Held>,
    wait: Duration,
}

impl Gate {
    pub(crate) fn new(stage: Stage, start: Version, wait: Duration) -> Gate {
        Gate {
            stage,
            held: watch::Sender::new(Held {
                last: start,
                locked: Epoch(0),
            }),
            wait,
        }
    }

    pub(crate) fn error(&self, kind: ErrorKind) -> Error {
        Error::new(self.stage, kind)
    }

    pub(crate) fn last(&self) -> Version {
        self.held.borrow().last
    }

    /// Fences every epoch below `epoch`; returns the last version accepted before the lock.
    pub(crate) fn lock(&self, epoch: Epoch) -> Result<Version> {
        let mut outcome = Ok(Version::ZERO);
        self.held.send_if_modified(|held| {
            if epoch < held.locked {
                outcome = Err(self.fenced(epoch, held.locked));
                return false;
            }
            held.locked = epoch;
            outcome = Ok(held.last);
            // Pushes waiting for a predecessor re-check, and learn they are fenced now.
            true
        });
        outcome
    }

    pub(crate) fn locked(&self) -> Epoch {
        self.held.borrow().locked
    }

    fn fenced(&self, request: Epoch, current: Epoch) -> Error {
        self.error(ErrorKind::Fenced { request, current })
    }

    /// Waits until `previous -> version` of `epoch` is next, runs `apply` and moves the chain
    /// to `version`, all under the chain's lock. The refusals are the real stages', in their
    /// order: `InvalidRequest` (malformed), `Fenced`, `Duplicate`, `OutOfOrder` (a fork, or a
    /// predecessor that did not come within the wait).
    pub(crate) async fn admit<T>(
        &self,
        epoch: Epoch,
        previous: Version,
        version: Version,
        apply: impl FnOnce() -> Result<T>,
    ) -> Result<T> {
        chain::follows(previous, version).map_err(|refusal| self.error(refusal.into()))?;
        let mut apply = Some(apply);
        let mut changed = self.held.subscribe();
        let next = async {
            loop {
                // Seen before checking, so a change after the check wakes us.
                changed.borrow_and_update();
                let mut outcome = None;
                self.held.send_if_modified(|held| {
                    if epoch < held.locked {
                        outcome = Some(Err(self.fenced(epoch, held.locked)));
                        return false;
                    }
                    match chain::admit(previous, version, held.last) {
                        Ok(Admission::Early) => false,
                        Ok(Admission::Next) => {
                            let applied = apply.take().map(|f| f());
                            let moved = matches!(applied, Some(Ok(_)));
                            if moved {
                                held.last = version;
                            }
                            outcome = applied;
                            moved
                        }
                        Err(refusal) => {
                            outcome = Some(Err(self.error(refusal.into())));
                            false
                        }
                    }
                });
                if let Some(done) = outcome {
                    return done;
                }
                if changed.changed().await.is_err() {
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
}
