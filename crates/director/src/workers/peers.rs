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

/// A new secret for the stages one epoch publishes on the [`PeerPort`]: 128 bits from the
/// operating system's random numbers, as 32 hexadecimal digits.
///
/// Errors: `Unavailable` when the operating system gives none.
pub(crate) fn new_token() -> Result<String> {
    let mut bytes = [0u8; 16];
    getrandom::getrandom(&mut bytes).map_err(|e| {
        Error::new(
            Stage::Director,
            ErrorKind::Unavailable(format!("no random numbers for a stage token: {e}")),
        )
    })?;
    Ok(hex(&bytes))
}

/// `bytes` as lowercase hexadecimal digits, two a byte.
fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The SHA-256 of `token`, in hex: what the coordinated state keeps of an epoch's token, so a
/// log worker can check an order's token without the state giving it away (clients read the
/// state to find the cluster).
pub(crate) fn token_digest(token: &str) -> String {
    hex(ring::digest::digest(&ring::digest::SHA256, token.as_bytes()).as_ref())
}

impl PeerPort {
    /// Serves `stages` until the returned guard is dropped (or the next epoch publishes its
    /// own): then nothing, so no stage of an ended epoch stays reachable there. Only calls
    /// that carry `token` are answered (it travels to the proxies the director recruits, in
    /// their recruitment): a process that recruited a proxy worker itself, with the cluster id
    /// alone, cannot make it reach these stages. Their logs take no push until
    /// [`Published::open`]: see [`GatedLog`].
    pub(crate) fn publish(&self, epoch: Epoch, token: String, mut stages: Stages) -> Published {
        stages.token = Some(token);
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

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use strata_testkit::MemoryLog;

    /// The logs published for an epoch refuse every push until the recovery has finished,
    /// and pushes of any other epoch after it; the publication is withdrawn when dropped.
    #[tokio::test]
    async fn published_logs_take_pushes_of_their_epoch_once_opened() {
        let (sender, served) = watch::channel(Arc::new(Stages::default()));
        let port = PeerPort {
            address: "127.0.0.1:1".into(),
            stages: Arc::new(sender),
        };
        let inner = Arc::new(MemoryLog::new(LogId(7), Version(0)));
        let published = port.publish(
            Epoch(4),
            "t".into(),
            Stages {
                logs: vec![inner.clone()],
                ..Stages::default()
            },
        );
        let log = served.borrow().logs[0].clone();
        assert_eq!(served.borrow().token.as_deref(), Some("t"));
        let push = |epoch, previous, version| {
            let log = log.clone();
            async move {
                log.push(
                    Epoch(epoch),
                    Version(previous),
                    Version(version),
                    Bytes::new(),
                )
                .await
            }
        };
        let e = push(4, 0, 10).await.unwrap_err();
        assert!(matches!(e.kind, ErrorKind::Unavailable(_)), "{e}");
        published.open();
        let e = push(5, 0, 10).await.unwrap_err();
        assert!(matches!(e.kind, ErrorKind::InvalidRequest(_)), "{e}");
        push(4, 0, 10).await.unwrap();
        assert_eq!(inner.pull(Version(0), 10).await.unwrap().len(), 1);
        drop(published);
        assert!(served.borrow().logs.is_empty());
    }
}
