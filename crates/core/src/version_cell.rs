//! A version that one owner moves forward and many tasks wait on: a storage server's applied
//! version, a log's durable one.
//!
//! Why not `tokio::sync::watch`: its receivers wait in one of eight lists, picked at random by
//! a generator that every runtime seeds anew, so waiters woken by one change run in an order
//! that differs from run to run. The seeded simulation must replay exactly, and many reads
//! waiting for the same version are woken together. Here every waiter is in one `Notify`,
//! woken in the same order each time.

use std::sync::atomic::{AtomicU64, Ordering};

use tokio::sync::Notify;

use crate::Version;

/// A version to read, set and wait on; see the module docs.
///
/// ```
/// use std::sync::Arc;
/// use strata_core::{Version, version_cell::VersionCell};
/// # tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(async {
/// let applied = Arc::new(VersionCell::new(Version(5)));
/// let waiter = applied.clone();
/// let reached = tokio::spawn(async move { waiter.wait_for(|v| v >= Version(7)).await });
/// applied.set(Version(6)); // not yet
/// applied.set(Version(8));
/// assert_eq!(reached.await.unwrap(), Version(8));
/// assert_eq!(applied.get(), Version(8));
/// # });
/// ```
#[derive(Debug)]
pub struct VersionCell {
    value: AtomicU64,
    changed: Notify,
}

impl VersionCell {
    /// A cell holding `version`.
    pub fn new(version: Version) -> VersionCell {
        VersionCell {
            value: AtomicU64::new(version.0),
            changed: Notify::new(),
        }
    }

    /// The version now.
    pub fn get(&self) -> Version {
        Version(self.value.load(Ordering::Acquire))
    }

    /// Sets the version (forward or back: a roll back moves it back) and wakes every waiter,
    /// each of which checks its condition again.
    pub fn set(&self, version: Version) {
        self.value.store(version.0, Ordering::Release);
        self.changed.notify_waiters();
    }

    /// Wakes every waiter without changing the version: for a condition that also depends on
    /// something else (a log poisoned, say).
    pub fn wake_all(&self) {
        self.changed.notify_waiters();
    }

    /// Waits until `reached` holds for the version, and returns that version. Checked at once,
    /// then at every [`set`](Self::set) or [`wake_all`](Self::wake_all); bound the wait with
    /// a timeout.
    pub async fn wait_for(&self, reached: impl Fn(Version) -> bool) -> Version {
        // Most waits are already over (a read at a version applied): no lock for those.
        let now = self.get();
        if reached(now) {
            return now;
        }
        loop {
            // Registered before the check, so a change between the check and the wait is
            // not missed.
            let changed = self.changed.notified();
            let mut changed = std::pin::pin!(changed);
            changed.as_mut().enable();
            let now = self.get();
            if reached(now) {
                return now;
            }
            changed.await;
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use std::sync::{Arc, Mutex};

    use super::*;

    #[tokio::test]
    async fn waiters_woken_together_run_in_the_order_they_began_waiting() {
        let cell = Arc::new(VersionCell::new(Version(0)));
        let order = Arc::new(Mutex::new(Vec::new()));
        let mut waiters = Vec::new();
        for i in 0..32 {
            let (cell, order) = (cell.clone(), order.clone());
            waiters.push(tokio::spawn(async move {
                cell.wait_for(|v| v >= Version(10)).await;
                order.lock().unwrap().push(i);
            }));
            // Each one waiting before the next starts.
            tokio::task::yield_now().await;
        }
        cell.set(Version(5));
        tokio::task::yield_now().await;
        assert!(
            order.lock().unwrap().is_empty(),
            "woken below their version"
        );
        cell.set(Version(10));
        for w in waiters {
            w.await.unwrap();
        }
        assert_eq!(*order.lock().unwrap(), (0..32).collect::<Vec<_>>());
    }

    #[tokio::test]
    async fn a_wait_already_satisfied_returns_at_once_and_wake_all_rechecks() {
        let cell = Arc::new(VersionCell::new(Version(3)));
        assert_eq!(cell.wait_for(|v| v >= Version(3)).await, Version(3));
        let flag = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let (c, f) = (cell.clone(), flag.clone());
        let waiter = tokio::spawn(async move { c.wait_for(|_| f.load(Ordering::Acquire)).await });
        tokio::task::yield_now().await;
        flag.store(true, Ordering::Release);
        cell.wake_all();
        assert_eq!(waiter.await.unwrap(), Version(3));
    }
}
