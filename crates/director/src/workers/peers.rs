//! The director's port for the cluster's own processes (`strata serve --peer-listen`): where
//! it serves its own stages of each epoch to the commit proxies recruited on workers.

use std::sync::Arc;

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
    /// own): then nothing, so no stage of an ended epoch stays reachable there.
    pub(crate) fn publish(&self, stages: Stages) -> Published {
        let mine = Arc::new(stages);
        self.stages.send_replace(mine.clone());
        Published {
            port: self.stages.clone(),
            mine,
        }
    }
}

/// An epoch's stages published on the [`PeerPort`]; withdrawn when dropped, unless another
/// epoch has published its own since.
pub(crate) struct Published {
    port: Arc<watch::Sender<Arc<Stages>>>,
    mine: Arc<Stages>,
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
