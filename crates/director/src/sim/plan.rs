//! What a seed chooses before a run starts: the layout, the tuning, the clients, and the
//! length of each boot.

use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;
use strata_core::Blocking;
use strata_testkit::rng::SplitMix64;
use tokio::sync::OnceCell;
use tokio::task::JoinHandle;

use super::{Relay, Trace};
use crate::config::EmbeddedConfig;
use crate::workload::cycle;

/// How many of each stage a run has.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct Layout {
    /// Transaction logs (1 to 3).
    pub logs: usize,
    /// Storage servers (1 to 3).
    pub storage: usize,
    /// Resolvers (1 or 2).
    pub resolvers: usize,
    /// Commit proxies (1 or 2).
    pub proxies: usize,
}

/// Everything a seed decides up front.
#[derive(Clone, Debug)]
pub struct Plan {
    /// The seed.
    pub seed: u64,
    /// The stages.
    pub layout: Layout,
    /// Log segment size: small, so segments roll and are popped many times in a run.
    pub segment_bytes: u64,
    /// Versions a storage server keeps in memory (20 ms to 1 s of versions): far below a
    /// run's history, so every window wraps many times.
    pub window_versions: u64,
    /// How often storage servers flush and the director pops the logs.
    pub flush_interval: Duration,
    /// Concurrent Cycle clients per boot.
    pub clients: u64,
    /// Nodes in the Cycle ring.
    pub nodes: u64,
    /// Each client waits 1 ms to this long between two transactions. The simulated disk
    /// costs no time, so without it commits would follow each other in one instant and the
    /// clock would never move.
    pub think_ms_max: u64,
}

impl Plan {
    /// The plan of seed `seed`.
    pub fn new(seed: u64) -> Plan {
        let mut rng = SplitMix64(seed);
        let mut pick = |choices: &[u64]| {
            let i = rng.below(choices.len() as u64) as usize;
            choices[i]
        };
        let layout = Layout {
            logs: pick(&[1, 2, 3]) as usize,
            storage: pick(&[1, 2, 3]) as usize,
            resolvers: pick(&[1, 2]) as usize,
            proxies: pick(&[1, 2]) as usize,
        };
        Plan {
            seed,
            layout,
            segment_bytes: pick(&[16 << 10, 64 << 10, 1 << 20]),
            window_versions: pick(&[20_000, 200_000, 1_000_000]),
            flush_interval: Duration::from_millis(pick(&[10, 50, 100])),
            clients: pick(&[1, 2, 4, 8]),
            nodes: pick(&[4, 16, 64]),
            think_ms_max: pick(&[1, 5, 20]),
        }
    }

    /// The cluster's configuration: the plan's layout and tuning, all disk work inline.
    pub fn config(&self) -> EmbeddedConfig {
        let mut c = EmbeddedConfig {
            logs: self.layout.logs,
            storage: self.layout.storage,
            resolvers: self.layout.resolvers,
            proxies: self.layout.proxies,
            // A run has many faults in a row; the coordinator must not give up on them.
            recovery_attempts_max: 20,
            monitor_interval: Duration::from_millis(20),
            watermark_interval: self.flush_interval,
            ..EmbeddedConfig::default()
        };
        c.log.segment_bytes = self.segment_bytes;
        c.log.queue_bytes_max = 1 << 20;
        c.log.payload_bytes_max = 256 << 10;
        c.log.pull_cache_bytes = 64 << 10;
        c.log.blocking = Blocking::Inline;
        c.storage_config.window_versions = self.window_versions;
        c.storage_config.flush_interval = self.flush_interval;
        c.storage_config.blocking = Blocking::Inline;
        c
    }

    /// How long the next boot runs before its crash: a quarter of them crash early (within
    /// half a second, often during recovery), the rest after 1 to 10 s.
    pub(crate) fn boot_length(&self, rng: &mut SplitMix64) -> Duration {
        if rng.below(4) == 0 {
            Duration::from_millis(10 + rng.below(490))
        } else {
            Duration::from_millis(1_000 + rng.below(9_000))
        }
    }

    /// Starts the boot's Cycle clients; each runs against whichever epoch is serving, and
    /// its acknowledgements go to the trace. Client ids are unique across boots, so no
    /// acknowledgement key is ever written twice.
    pub(crate) fn start_clients(
        &self,
        boot: u64,
        relay: &Arc<Relay>,
        trace: &Arc<Trace>,
        seed: u64,
    ) -> Vec<JoinHandle<()>> {
        let ring = Arc::new(OnceCell::new());
        (0..self.clients)
            .map(|c| {
                let client = Client {
                    id: boot * 16 + c,
                    nodes: self.nodes,
                    think_ms_max: self.think_ms_max,
                    ring: ring.clone(),
                    relay: relay.clone(),
                    trace: trace.clone(),
                    rng: SplitMix64(seed ^ (c + 1).wrapping_mul(0x9e37_79b9_7f4a_7c15)),
                };
                tokio::spawn(client.run())
            })
            .collect()
    }
}

/// One Cycle client of a boot.
struct Client {
    id: u64,
    nodes: u64,
    think_ms_max: u64,
    /// The ring's size, once one client made sure it exists.
    ring: Arc<OnceCell<u64>>,
    relay: Arc<Relay>,
    trace: Arc<Trace>,
    rng: SplitMix64,
}

impl Client {
    async fn run(mut self) {
        let mut n = 0;
        loop {
            let think = 1 + self.rng.below(self.think_ms_max);
            tokio::time::sleep(Duration::from_millis(think)).await;
            let db = self.relay.database().await;
            let nodes = self
                .ring
                .get_or_try_init(|| cycle::ensure_ring(&db, self.nodes))
                .await;
            let done = match nodes {
                Ok(&nodes) => cycle::rewire(&db, nodes, &mut self.rng, self.id, n).await,
                Err(e) => Err(e),
            };
            match done {
                Ok(_) => self.trace.ack(self.id, n),
                // Failed, or unknown: it may have committed (an epoch ended during its commit),
                // so its number is not used again, and it is not counted as acknowledged.
                Err(_) => tokio::time::sleep(Duration::from_millis(10)).await,
            }
            n += 1;
        }
    }
}
