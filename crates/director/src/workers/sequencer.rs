//! Sequencer workers (`strata serve --role sequencer`): the epoch's sequencer, started after
//! its recovery version at each recruitment.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use async_trait::async_trait;
use strata_core::{Epoch, Error, ErrorKind, Result, Sequencer, Stage, Version, VersionPair};
use strata_net::{Access, Recruiter, Recruitment, RemoteSequencer, Role, Stages};
use strata_sequencer::ClockSequencer;
use tokio::sync::watch;

use super::Reach;

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
        super::fence_stale(Stage::Sequencer, running.as_ref().map(|(e, _)| *e), r.epoch)?;
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

/// The sequencer of an epoch recruited on a worker, as the director's pipeline reaches it.
///
/// Stopped with its epoch, it refuses every later call (`Unavailable`), as the director's own
/// sequencer does: the worker may go on running the ended epoch's sequencer (the next epoch
/// recruited another, or runs its own), and a `Database` handle of the ended epoch that took
/// a read version from it would read below commits the next epoch acknowledged. (Clients of
/// the director's port are refused by the port, which serves one epoch.)
pub(crate) struct WorkerSequencer {
    remote: RemoteSequencer,
    stopped: AtomicBool,
}

impl WorkerSequencer {
    /// Refuses every later call.
    pub(crate) fn stop(&self) {
        self.stopped.store(true, Ordering::SeqCst);
    }

    fn check(&self) -> Result<()> {
        if self.stopped.load(Ordering::SeqCst) {
            return Err(Error::new(
                Stage::Sequencer,
                ErrorKind::Unavailable("sequencer stopped".into()),
            ));
        }
        Ok(())
    }
}

#[async_trait]
impl Sequencer for WorkerSequencer {
    fn epoch(&self) -> Epoch {
        self.remote.epoch()
    }

    async fn next_commit_version(&self, epoch: Epoch) -> Result<VersionPair> {
        self.check()?;
        self.remote.next_commit_version(epoch).await
    }

    async fn report_committed(&self, epoch: Epoch, version: Version) -> Result<()> {
        self.check()?;
        self.remote.report_committed(epoch, version).await
    }

    async fn read_version(&self) -> Result<Version> {
        self.check()?;
        let version = self.remote.read_version().await?;
        // Stopped while the call was out: its answer may be of a sequencer that has since
        // gone on without this epoch.
        self.check()?;
        Ok(version)
    }
}

#[async_trait]
impl Reach for WorkerSequencer {
    const ROLE: Role = Role::Sequencer;

    async fn reach(address: &str, access: Access, _index: u32, epoch: Epoch) -> Result<Self> {
        // A server runs at most one sequencer: whichever it runs now, checked to be the one
        // recruited (a newer recruitment in between would hand this epoch another's versions).
        let remote = RemoteSequencer::connect(address, access).await?;
        super::reached_epoch(
            Stage::Sequencer,
            "sequencer",
            address,
            remote.epoch(),
            epoch,
        )?;
        Ok(WorkerSequencer {
            remote,
            stopped: AtomicBool::new(false),
        })
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn recruitment(epoch: u64, from: u64) -> Recruitment {
        Recruitment {
            epoch: Epoch(epoch),
            role: Role::Sequencer,
            recovery_version: Version(from),
            resolver: None,
            proxy: None,
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

    #[tokio::test]
    async fn the_director_reaches_only_the_sequencer_it_recruited_and_stops_it_with_its_epoch() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap().to_string();
        let (publish, published) = watch::channel(Arc::new(Stages::default()));
        let access = Access::new(strata_net::ClusterId::new("w5eq").unwrap(), None);
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let served = tokio::spawn(strata_net::serve_worker(
            access.clone(),
            Arc::new(SequencerWorker::new(publish)),
            published,
            listener,
            async {
                let _ = stopped.await;
            },
        ));
        let worker = strata_net::RemoteWorker::connect(&address, access.clone())
            .await
            .unwrap();
        worker.recruit(recruitment(5, 1_000)).await.unwrap();

        // Recruited for 4, the worker serves 5 by the time the director reaches it.
        let e = WorkerSequencer::reach(&address, access.clone(), 0, Epoch(4))
            .await
            .err()
            .unwrap();
        assert!(matches!(e.kind, ErrorKind::Unavailable(_)), "{e}");
        assert!(e.to_string().contains("instead of"), "{e}");

        let sequencer = WorkerSequencer::reach(&address, access, 0, Epoch(5))
            .await
            .unwrap();
        assert_eq!(sequencer.read_version().await.unwrap(), Version(1_000));
        let pair = sequencer.next_commit_version(Epoch(5)).await.unwrap();
        sequencer
            .report_committed(Epoch(5), pair.version)
            .await
            .unwrap();
        assert_eq!(sequencer.read_version().await.unwrap(), pair.version);
        // Stopped with its epoch: refused here, though the worker still runs it.
        sequencer.stop();
        for e in [
            sequencer.read_version().await.err(),
            sequencer.next_commit_version(Epoch(5)).await.err(),
            sequencer
                .report_committed(Epoch(5), pair.version)
                .await
                .err(),
        ] {
            let e = e.unwrap();
            assert!(matches!(e.kind, ErrorKind::Unavailable(_)), "{e}");
        }
        assert_eq!(worker.heartbeat().await.unwrap().epoch, Some(Epoch(5)));
        stop.send(()).unwrap();
        served.await.unwrap().unwrap();
    }
}
