//! [`StepSequencer`]: versions one apart, for tests of the stages that take versions.

use std::sync::Mutex;

use async_trait::async_trait;
use strata_core::{Epoch, Error, ErrorKind, Result, Sequencer, Stage, Version, VersionPair};

/// A [`Sequencer`] handing out `start + 1, start + 2, ...` (no clock), with the real one's
/// fencing and its read version: the newest version reported committed.
///
/// ```
/// use strata_core::{Epoch, Sequencer, Version};
/// use strata_testkit::StepSequencer;
///
/// # tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(async {
/// let s = StepSequencer::new(Epoch(1), Version(10));
/// let pair = s.next_commit_version(Epoch(1)).await?;
/// assert_eq!((pair.previous, pair.version), (Version(10), Version(11)));
/// s.report_committed(Epoch(1), pair.version).await?;
/// assert_eq!(s.read_version().await?, Version(11));
/// # Ok::<(), strata_core::Error>(())
/// # }).unwrap();
/// ```
#[derive(Debug)]
pub struct StepSequencer {
    epoch: Epoch,
    state: Mutex<Versions>,
}

#[derive(Debug)]
struct Versions {
    last_handed_out: Version,
    committed: Version,
}

fn error(kind: ErrorKind) -> Error {
    Error::new(Stage::Sequencer, kind)
}

impl StepSequencer {
    /// A sequencer of `epoch` whose first pair's previous version is `start`.
    pub fn new(epoch: Epoch, start: Version) -> StepSequencer {
        StepSequencer {
            epoch,
            state: Mutex::new(Versions {
                last_handed_out: start,
                committed: start,
            }),
        }
    }

    fn state(&self) -> Result<std::sync::MutexGuard<'_, Versions>> {
        self.state
            .lock()
            .map_err(|_| error(ErrorKind::Unavailable("sequencer poisoned".into())))
    }

    /// The real sequencer's rule: an older epoch is fenced, a newer one was sent to the wrong
    /// sequencer.
    fn check(&self, epoch: Epoch) -> Result<()> {
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
}

#[async_trait]
impl Sequencer for StepSequencer {
    fn epoch(&self) -> Epoch {
        self.epoch
    }

    async fn next_commit_version(&self, epoch: Epoch) -> Result<VersionPair> {
        self.check(epoch)?;
        let mut st = self.state()?;
        let previous = st.last_handed_out;
        st.last_handed_out = previous.saturating_add(1);
        Ok(VersionPair {
            previous,
            version: st.last_handed_out,
        })
    }

    async fn report_committed(&self, epoch: Epoch, version: Version) -> Result<()> {
        self.check(epoch)?;
        let mut st = self.state()?;
        if version > st.last_handed_out {
            return Err(error(ErrorKind::InvalidRequest(format!(
                "version {version} was never handed out (last {})",
                st.last_handed_out
            ))));
        }
        st.committed = st.committed.max(version);
        Ok(())
    }

    async fn read_version(&self) -> Result<Version> {
        Ok(self.state()?.committed)
    }
}
