//! Strata's sequencer: it hands out the versions of one epoch — a commit version for each
//! batch a commit proxy commits, and a read version for each transaction a client begins. The
//! director starts one per epoch; proxies and clients reach it through the
//! [`strata_core::Sequencer`] trait.
//!
//! [`ClockSequencer`] hands out commit versions as a chain (`previous_version`, `version`) with
//! no gap and no repeat, following wall time at about 1,000,000 versions per second and always
//! advancing by at least 1, so a version is also a clock. It hands out read versions: the newest
//! version reported committed. It serves one epoch and refuses requests of older ones.
//!
//! # Limits
//!
//! - Versions are `u64`s at [`VERSIONS_PER_SECOND`]: about 584,000 years of them; once none
//!   is left, a request is `Unavailable` rather than a repeated version.
//! - The clock is monotonic (time since the sequencer started, added to the recovery version),
//!   so a wall clock set back moves nothing back; each pair is at least one above the last.
//! - At that rate the MVCC window ([`strata_core::MVCC_WINDOW_VERSIONS`], 5,000,000 versions)
//!   is five seconds: the client transactions' lifetime limit
//!   ([`strata_core::TRANSACTION_LIFETIME_MAX`]). A compile-time check keeps the three in step.
//! - `report_committed` of a version never handed out is refused (`InvalidRequest`), as is
//!   any request of an older epoch (`Fenced`).
//!
//! # Example
//!
//! ```
//! use strata_core::{Epoch, Sequencer, Version};
//! use strata_sequencer::ClockSequencer;
//!
//! # tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(async {
//! let seq = ClockSequencer::new(Epoch(2), Version(1_000));
//! let first = seq.next_commit_version(Epoch(2)).await?;
//! assert_eq!(first.previous, Version(1_000));
//! let second = seq.next_commit_version(Epoch(2)).await?;
//! assert_eq!(second.previous, first.version);
//! seq.report_committed(Epoch(2), first.version).await?;
//! assert_eq!(seq.read_version().await?, first.version);
//! assert!(seq.next_commit_version(Epoch(1)).await.unwrap_err().is_fenced());
//! # Ok::<(), strata_core::Error>(())
//! # }).unwrap();
//! ```

use std::sync::Mutex;
use tokio::time::Instant;

use async_trait::async_trait;
use strata_core::{Epoch, Error, ErrorKind, Result, Sequencer, Stage, Version, VersionPair};

/// Versions per second of wall time.
pub const VERSIONS_PER_SECOND: u64 = 1_000_000;

// The transaction lifetime limit is the MVCC window told in time at this rate: a change to any
// of the three must keep them together.
const _: () = assert!(
    strata_core::MVCC_WINDOW_VERSIONS as u128 * 1_000
        == strata_core::TRANSACTION_LIFETIME_MAX.as_millis() * VERSIONS_PER_SECOND as u128
);

fn error(kind: ErrorKind) -> Error {
    Error::new(Stage::Sequencer, kind)
}

#[derive(Debug)]
struct State {
    /// The last commit version handed out.
    last: Version,
    /// The newest version reported committed.
    committed: Version,
    stopped: bool,
}

/// A sequencer whose versions follow a monotonic clock. See the crate docs.
#[derive(Debug)]
pub struct ClockSequencer {
    epoch: Epoch,
    start: Version,
    started: Instant,
    state: Mutex<State>,
}

impl ClockSequencer {
    /// A sequencer for `epoch` whose first commit version follows `start` (the recovery
    /// version) and whose first read version is `start`.
    pub fn new(epoch: Epoch, start: Version) -> ClockSequencer {
        ClockSequencer {
            epoch,
            start,
            started: Instant::now(),
            state: Mutex::new(State {
                last: start,
                committed: start,
                stopped: false,
            }),
        }
    }

    /// Stops the sequencer: every later request is `Unavailable`.
    pub fn stop(&self) {
        if let Ok(mut st) = self.state.lock() {
            st.stopped = true;
        }
    }

    fn state(&self) -> Result<std::sync::MutexGuard<'_, State>> {
        let st = self.state.lock().map_err(|_| {
            error(ErrorKind::Unavailable(
                "sequencer poisoned by a panic".into(),
            ))
        })?;
        if st.stopped {
            return Err(error(ErrorKind::Unavailable("sequencer stopped".into())));
        }
        Ok(st)
    }

    fn check_epoch(&self, epoch: Epoch) -> Result<()> {
        if epoch < self.epoch {
            return Err(error(ErrorKind::Fenced {
                request: epoch,
                current: self.epoch,
            }));
        }
        if epoch > self.epoch {
            return Err(error(ErrorKind::InvalidRequest(format!(
                "request of {epoch} sent to the sequencer of {}",
                self.epoch
            ))));
        }
        Ok(())
    }

    /// The version the clock reads now.
    fn clock(&self) -> Version {
        let micros = u64::try_from(self.started.elapsed().as_micros()).unwrap_or(u64::MAX);
        self.start
            .saturating_add(micros.saturating_mul(VERSIONS_PER_SECOND) / 1_000_000)
    }
}

#[async_trait]
impl Sequencer for ClockSequencer {
    fn epoch(&self) -> Epoch {
        self.epoch
    }

    async fn next_commit_version(&self, epoch: Epoch) -> Result<VersionPair> {
        self.check_epoch(epoch)?;
        let mut st = self.state()?;
        let previous = st.last;
        // Follow the clock, but never stand still: two requests in the same microsecond still
        // get distinct, increasing versions.
        let version = self.clock().max(previous.saturating_add(1));
        if version == previous {
            return Err(error(ErrorKind::Unavailable(
                "version space exhausted".into(),
            )));
        }
        st.last = version;
        Ok(VersionPair { previous, version })
    }

    async fn report_committed(&self, epoch: Epoch, version: Version) -> Result<()> {
        self.check_epoch(epoch)?;
        let mut st = self.state()?;
        if version > st.last {
            return Err(error(ErrorKind::InvalidRequest(format!(
                "{version} was never handed out (last is {})",
                st.last
            ))));
        }
        st.committed = st.committed.max(version);
        Ok(())
    }

    async fn read_version(&self) -> Result<Version> {
        Ok(self.state()?.committed)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_requests_form_one_chain() {
        let seq = Arc::new(ClockSequencer::new(Epoch(1), Version(500)));
        let tasks: Vec<_> = (0..8)
            .map(|_| {
                let seq = seq.clone();
                tokio::spawn(async move {
                    let mut pairs = Vec::new();
                    for _ in 0..500 {
                        pairs.push(seq.next_commit_version(Epoch(1)).await.unwrap());
                    }
                    pairs
                })
            })
            .collect();
        let mut pairs = Vec::new();
        for t in tasks {
            pairs.extend(t.await.unwrap());
        }
        pairs.sort_by_key(|p| p.version);
        assert_eq!(pairs[0].previous, Version(500));
        for w in pairs.windows(2) {
            assert_eq!(w[1].previous, w[0].version, "no gap, no repeat");
            assert!(w[1].version > w[0].version);
        }
    }

    #[tokio::test]
    async fn versions_follow_wall_time() {
        let seq = ClockSequencer::new(Epoch(1), Version(0));
        let a = seq.next_commit_version(Epoch(1)).await.unwrap().version;
        std::thread::sleep(std::time::Duration::from_millis(20));
        let b = seq.next_commit_version(Epoch(1)).await.unwrap().version;
        // 20 ms is about 20,000 versions; allow for a slow machine, not for a stopped clock.
        assert!(b.0 - a.0 >= 19_000, "{a} -> {b}");
    }

    #[tokio::test]
    async fn read_versions_are_the_newest_reported_and_never_go_back() {
        let seq = ClockSequencer::new(Epoch(1), Version(10));
        assert_eq!(seq.read_version().await.unwrap(), Version(10));
        let a = seq.next_commit_version(Epoch(1)).await.unwrap().version;
        let b = seq.next_commit_version(Epoch(1)).await.unwrap().version;
        seq.report_committed(Epoch(1), b).await.unwrap();
        seq.report_committed(Epoch(1), a).await.unwrap();
        assert_eq!(seq.read_version().await.unwrap(), b);
        let never = seq
            .report_committed(Epoch(1), b.saturating_add(1_000_000_000))
            .await;
        assert!(matches!(
            never.unwrap_err().kind,
            ErrorKind::InvalidRequest(_)
        ));
    }

    #[tokio::test]
    async fn old_epochs_are_fenced_and_a_stopped_sequencer_is_unavailable() {
        let seq = ClockSequencer::new(Epoch(3), Version(0));
        assert!(
            seq.next_commit_version(Epoch(2))
                .await
                .unwrap_err()
                .is_fenced()
        );
        assert!(
            seq.report_committed(Epoch(2), Version(0))
                .await
                .unwrap_err()
                .is_fenced()
        );
        seq.stop();
        let e = seq.read_version().await.unwrap_err();
        assert!(matches!(e.kind, ErrorKind::Unavailable(_)));
    }
}
