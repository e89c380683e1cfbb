//! Sequencer workers (`strata serve --role sequencer`): the epoch's sequencer, started after
//! its recovery version at each recruitment.

use std::sync::{Arc, Mutex, PoisonError};

use async_trait::async_trait;
use strata_core::{Epoch, Error, ErrorKind, Result, Stage};
use strata_net::{Recruiter, Recruitment, Role, Stages};
use strata_sequencer::ClockSequencer;
use tokio::sync::watch;

/// A sequencer worker: a new sequencer for each epoch it is recruited for, handing out
/// versions after the recruitment's recovery version, published (for its server to serve) in
/// place of the one before, which it then stops.
///
/// The sequencer of an ended epoch needs no stopping for safety (a newer one fences its
/// epoch's proxies, and the server refuses read versions to clients of an older epoch); it is
/// stopped so that nothing can take a version from it at all.
pub struct SequencerWorker {
    /// The epoch it runs and its sequencer, once recruited.
    running: Mutex<Option<(Epoch, Arc<ClockSequencer>)>>,
    publish: watch::Sender<Arc<Stages>>,
}

impl SequencerWorker {
    /// A worker that publishes the sequencers it is recruited for on `publish`.
    pub fn new(publish: watch::Sender<Arc<Stages>>) -> SequencerWorker {
        SequencerWorker {
            running: Mutex::new(None),
            publish,
        }
    }
}

#[async_trait]
impl Recruiter for SequencerWorker {
    fn role(&self) -> Role {
        Role::Sequencer
    }

    async fn recruit(&self, r: Recruitment) -> Result<u32> {
        let mut running = self.running.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some((current, _)) = &*running
            && r.epoch <= *current
        {
            return Err(Error::new(
                Stage::Sequencer,
                ErrorKind::Fenced {
                    request: r.epoch,
                    current: *current,
                },
            ));
        }
        let sequencer = Arc::new(ClockSequencer::new(r.epoch, r.recovery_version));
        self.publish.send_replace(Arc::new(Stages {
            sequencer: Some(sequencer.clone()),
            ..Stages::default()
        }));
        if let Some((_, before)) = running.replace((r.epoch, sequencer)) {
            before.stop();
        }
        tracing::info!(
            epoch = r.epoch.0,
            from = r.recovery_version.0,
            "recruited: sequencer"
        );
        Ok(0)
    }

    fn epoch(&self) -> Option<Epoch> {
        self.running
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .as_ref()
            .map(|(epoch, _)| *epoch)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use strata_core::Version;

    fn recruitment(epoch: u64, from: u64) -> Recruitment {
        Recruitment {
            epoch: Epoch(epoch),
            role: Role::Sequencer,
            recovery_version: Version(from),
            resolver: None,
        }
    }

    #[tokio::test]
    async fn each_recruitment_starts_a_sequencer_after_its_recovery_version_and_stops_the_last() {
        let (publish, published) = watch::channel(Arc::new(Stages::default()));
        let worker = SequencerWorker::new(publish);
        assert_eq!(Recruiter::epoch(&worker), None);

        worker.recruit(recruitment(2, 100)).await.unwrap();
        let first = published.borrow().sequencer.clone().unwrap();
        assert_eq!(first.epoch(), Epoch(2));
        assert_eq!(first.read_version().await.unwrap(), Version(100));
        let pair = first.next_commit_version(Epoch(2)).await.unwrap();
        assert_eq!(pair.previous, Version(100));
        assert!(pair.version > Version(100));

        // The next epoch starts from its own recovery version, and the ended one's sequencer
        // hands out nothing more.
        worker.recruit(recruitment(3, 5_000_000)).await.unwrap();
        assert_eq!(Recruiter::epoch(&worker), Some(Epoch(3)));
        let second = published.borrow().sequencer.clone().unwrap();
        assert_eq!(second.epoch(), Epoch(3));
        let pair = second.next_commit_version(Epoch(3)).await.unwrap();
        assert_eq!(pair.previous, Version(5_000_000));
        let e = first.next_commit_version(Epoch(2)).await.unwrap_err();
        assert!(matches!(e.kind, ErrorKind::Unavailable(_)), "{e}");
        let e = first.read_version().await.unwrap_err();
        assert!(matches!(e.kind, ErrorKind::Unavailable(_)), "{e}");

        // A late recruitment, by a director whose epoch has passed, changes nothing.
        for stale in [2, 3] {
            let e = worker.recruit(recruitment(stale, 1)).await.unwrap_err();
            assert!(matches!(e.kind, ErrorKind::Fenced { .. }), "{e}");
        }
        let still = published.borrow().sequencer.clone().unwrap();
        assert_eq!(still.epoch(), Epoch(3));
        let pair = still.next_commit_version(Epoch(3)).await.unwrap();
        assert!(pair.previous > Version(5_000_000));
    }
}
