//! The fencing of a worker's orders, shared by the workers that hold data across epochs (log
//! workers, storage workers): what the director's orders may change, and which director may
//! give them.
//!
//! An order that names an epoch older than the newest this worker took is refused
//! (`Fenced`); one of the newest epoch must carry that epoch's token (`InvalidRequest`
//! otherwise); one of a newer epoch is taken only if the coordinated state (read by the worker
//! itself) has claimed that very epoch with that token (the state keeps the token's SHA-256,
//! written by the claim), and then replaces the token. So only the director that claimed the
//! state's epoch can give orders: a process that merely reaches the worker with the cluster
//! id can neither lock its data at an epoch of its choosing nor take it.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use strata_core::{Epoch, Error, ErrorKind, Result, Stage};
use strata_net::same_secret;
use tokio::sync::{Mutex, MutexGuard};

use crate::coordinator::{CoordinatedState, StateStore};

/// What a worker holds, behind the newest epoch's order: orders run one at a time, each
/// changing what is held.
pub(crate) struct Orders<T> {
    stage: Stage,
    /// Where the coordinated state is read, to check a newer epoch's claim.
    store: Arc<dyn StateStore>,
    held: Mutex<Taken<T>>,
    /// The newest epoch taken, for heartbeats (which must not wait behind an order).
    epoch: AtomicU64,
}

/// What is held, with the newest epoch that gave an order and its token.
pub(crate) struct Taken<T> {
    pub(crate) taken: Option<(Epoch, String)>,
    pub(crate) held: T,
}

impl<T: Send> Orders<T> {
    /// Orders for `held`, refused as errors of `stage`, with claims checked in `store`.
    pub(crate) fn new(stage: Stage, store: Arc<dyn StateStore>, held: T) -> Orders<T> {
        Orders {
            stage,
            store,
            held: Mutex::new(Taken { taken: None, held }),
            epoch: AtomicU64::new(0),
        }
    }

    /// The newest epoch that gave an order; `None` before the first.
    pub(crate) fn epoch(&self) -> Option<Epoch> {
        Some(Epoch(self.epoch.load(Ordering::Acquire))).filter(|e| e.0 > 0)
    }

    /// What is held, for an order that names no epoch (phase 1's opens and inspections,
    /// which read; sweeps, which the coordinated state decides).
    pub(crate) async fn lock(&self) -> MutexGuard<'_, Taken<T>> {
        self.held.lock().await
    }

    /// What is held, if no order runs now (for heartbeats).
    pub(crate) fn try_lock(&self) -> Option<MutexGuard<'_, Taken<T>>> {
        self.held.try_lock().ok()
    }

    /// Takes the order of `epoch` with `token` (see the module docs): what is held, locked
    /// for the order to run, and whether this order moved the worker to its epoch (the
    /// caller then serves what it holds under the new token).
    ///
    /// An order of a newer epoch than the one taken is checked against the coordinated state
    /// before the lock is taken: orders wait for each other, never for a read of the store
    /// (which, with the store's service down, takes as long as the store's retries), so
    /// orders anyone can send cannot hold up the director's behind them.
    pub(crate) async fn take(
        &self,
        epoch: Epoch,
        token: &str,
    ) -> Result<(MutexGuard<'_, Taken<T>>, bool)> {
        if token.is_empty() || !token.bytes().all(|b| b.is_ascii_alphanumeric()) {
            return Err(self.refuse(ErrorKind::InvalidRequest(
                "an order's token must be ASCII letters and digits".into(),
            )));
        }
        let mut checked = false;
        if epoch.0 > self.epoch.load(Ordering::Acquire) {
            self.check_claim(epoch, token).await?;
            checked = true;
        }
        let mut held = self.held.lock().await;
        match &held.taken {
            Some((newest, _)) if epoch < *newest => Err(self.refuse(ErrorKind::Fenced {
                request: epoch,
                current: *newest,
            })),
            Some((newest, known)) if epoch == *newest => {
                if same_secret(known.as_bytes(), token.as_bytes()) {
                    Ok((held, false))
                } else {
                    Err(self.refuse(ErrorKind::InvalidRequest(format!(
                        "an order for epoch {} without that epoch's token",
                        epoch.0
                    ))))
                }
            }
            _ => {
                // `self.epoch` is what `held.taken` holds, and only grows: an epoch newer
                // than the one taken now was newer before the lock, and was checked then.
                if !checked {
                    self.check_claim(epoch, token).await?;
                }
                held.taken = Some((epoch, token.to_owned()));
                self.epoch.store(epoch.0, Ordering::Release);
                Ok((held, true))
            }
        }
    }

    /// Whether the coordinated state says `epoch` was claimed with `token`: every order of a
    /// director follows its claim, and only the director that claimed an epoch knows the token
    /// whose digest the claim wrote.
    async fn check_claim(&self, epoch: Epoch, token: &str) -> Result<()> {
        let state = self.read_state().await?;
        let Some(state) = state else {
            return Err(self.refuse(ErrorKind::InvalidRequest(format!(
                "an order for epoch {}, but the coordinated state names no epoch yet",
                epoch.0
            ))));
        };
        if epoch < state.epoch {
            return Err(self.refuse(ErrorKind::Fenced {
                request: epoch,
                current: state.epoch,
            }));
        }
        if epoch > state.epoch {
            return Err(self.refuse(ErrorKind::InvalidRequest(format!(
                "an order for epoch {}, which no director claimed (the coordinated state's \
                 epoch is {})",
                epoch.0, state.epoch.0
            ))));
        }
        if state.token_digest.as_deref() != Some(super::token_digest(token).as_str()) {
            return Err(self.refuse(ErrorKind::InvalidRequest(format!(
                "an order for epoch {} without the token its director claimed it with",
                epoch.0
            ))));
        }
        Ok(())
    }

    /// The coordinated state, read off the runtime's threads (a store's reads block).
    pub(crate) async fn read_state(&self) -> Result<Option<CoordinatedState>> {
        let store = self.store.clone();
        tokio::task::spawn_blocking(move || store.read())
            .await
            .map_err(|e| self.refuse(ErrorKind::Unavailable(e.to_string())))?
    }

    fn refuse(&self, kind: ErrorKind) -> Error {
        Error::new(self.stage, kind)
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use crate::coordinator::tests::state;
    use crate::coordinator::{FileStateStore, StateStore};
    use crate::workers::token_digest;

    /// Writes a state of `epoch` claimed with `token` over whatever `store` holds.
    pub(crate) fn claim(store: &FileStateStore, epoch: u64, token: &str) {
        let generation = store.read().unwrap().map_or(0, |s| s.generation);
        let mut claimed = state(epoch);
        claimed.logs.clear();
        claimed.token_digest = Some(token_digest(token));
        store.compare_and_swap(generation, claimed).unwrap();
    }
}
