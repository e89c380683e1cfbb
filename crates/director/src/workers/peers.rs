//! The director's port for the cluster's own processes (`strata serve --peer-listen`): where
//! it serves its own stages of each epoch to the commit proxies recruited on workers.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use async_trait::async_trait;
use bytes::Bytes;
use strata_core::{
    Epoch, Error, ErrorKind, LogEntry, LogId, LogServer, LogState, Result, Stage, Version,
};
use strata_net::Stages;
use tokio::sync::watch;

/// Where the director serves its own stages to the cluster's processes, every call answered
/// (`strata_net::Exposure::Everything`, unlike the port clients reach), and where each epoch
/// publishes what is served there. Without one, the director recruits no commit proxies on
/// workers: they would have no way to reach the logs.
#[derive(Clone, Debug)]
pub struct PeerPort {
    /// Where it is served, `host:port`, as the workers reach it.
    pub address: String,
    /// The stages served there, published by each epoch before it recruits proxies.
    pub stages: Arc<watch::Sender<Arc<Stages>>>,
}

impl PeerPort {
    /// Serves `stages` until the returned guard is dropped (or the next epoch publishes its
    /// own): then nothing, so no stage of an ended epoch stays reachable there. Their logs
    /// take no push until [`Published::open`]: see [`GatedLog`].
    pub(crate) fn publish(&self, epoch: Epoch, mut stages: Stages) -> Published {
        let gate = Arc::new(AtomicBool::new(false));
        stages.logs = stages
            .logs
            .into_iter()
            .map(|log| {
                Arc::new(GatedLog {
                    log,
                    epoch,
                    open: gate.clone(),
                }) as Arc<dyn LogServer>
            })
            .collect();
        let mine = Arc::new(stages);
        self.stages.send_replace(mine.clone());
        Published {
            port: self.stages.clone(),
            mine,
            gate,
        }
    }
}

/// An epoch's stages published on the [`PeerPort`]; withdrawn when dropped, unless another
/// epoch has published its own since.
pub(crate) struct Published {
    port: Arc<watch::Sender<Arc<Stages>>>,
    mine: Arc<Stages>,
    gate: Arc<AtomicBool>,
}

impl Published {
    /// Lets the proxies on workers push to the published logs: the recovery has finished.
    pub(crate) fn open(&self) {
        self.gate.store(true, Ordering::Release);
    }
}

impl Drop for Published {
    fn drop(&mut self) {
        self.port.send_if_modified(|now| {
            if Arc::ptr_eq(now, &self.mine) {
                *now = Arc::new(Stages::default());
                true
            } else {
                false
            }
        });
    }
}

/// A log of the new generation as the director's port for the cluster's processes serves it:
/// it refuses pushes (`Unavailable`) until the recovery that published it has finished, and
/// pushes of any other epoch than the one that published it.
///
/// The proxies on workers are recruited (and can be reached, by anyone holding the cluster
/// id) before the coordinated state records the new logs. A push they made before then could
/// be acknowledged on logs that a failed write of the state leaves unrecorded, and the next
/// epoch, recovering from the logs before them, would lose it. The gate is the director's
/// own, where no call from outside can open it; the director's own proxies (the persistence
/// phase's) push to the logs directly.
///
/// The log itself refuses only older epochs. A proxy worker re-recruited for a newer epoch
/// than the one running (by a process that reached the worker's port: recruitments carry no
/// credential beyond the cluster id) and wired to these logs with a sequencer of its
/// recruiter's would have its pushes accepted here on its behalf; a push of another epoch is
/// refused instead. (A worker that no epoch recruited can still be recruited for the running
/// one: worker ports must be reachable by the cluster's hosts only.)
struct GatedLog {
    log: Arc<dyn LogServer>,
    epoch: Epoch,
    open: Arc<AtomicBool>,
}

#[async_trait]
impl LogServer for GatedLog {
    fn id(&self) -> LogId {
        self.log.id()
    }

    async fn push(
        &self,
        epoch: Epoch,
        previous_version: Version,
        version: Version,
        payload: Bytes,
    ) -> Result<()> {
        if epoch != self.epoch {
            return Err(Error::new(
                Stage::Log,
                ErrorKind::InvalidRequest(format!(
                    "a push of epoch {} to log {}, published here for epoch {}",
                    epoch.0,
                    self.log.id(),
                    self.epoch.0
                )),
            ));
        }
        if !self.open.load(Ordering::Acquire) {
            return Err(Error::new(
                Stage::Log,
                ErrorKind::Unavailable(format!(
                    "log {} of epoch {} takes pushes from other processes only once its \
                     recovery has finished",
                    self.log.id(),
                    epoch.0
                )),
            ));
        }
        self.log
            .push(epoch, previous_version, version, payload)
            .await
    }

    async fn pull(&self, after: Version, limit: usize) -> Result<Vec<LogEntry>> {
        self.log.pull(after, limit).await
    }

    async fn lock(&self, epoch: Epoch) -> Result<LogState> {
        self.log.lock(epoch).await
    }

    async fn pop(&self, version: Version) -> Result<()> {
        self.log.pop(version).await
    }
}
