//! What a seed chooses before a run starts: the layout, the tuning, the clients, and the
//! length of each boot.

use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;
use std::path::Path;

use strata_core::{Blocking, Error, ErrorKind, Result, Stage, Version};
use strata_testkit::rng::SplitMix64;
use tokio::sync::OnceCell;
use tokio::task::JoinHandle;

use super::{Relay, Trace, registers};
use crate::config::EmbeddedConfig;
use crate::workload::Workload;
use crate::workload::cycle;
use crate::workload::increment::Increment;
use strata_txn_builder::Database;

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
    /// How long a batch may wait on one stage before its proxy reports a stall.
    pub stall_timeout: Duration,
    /// Concurrent Cycle clients per boot.
    pub clients: u64,
    /// Nodes in the Cycle ring.
    pub nodes: u64,
    /// Counters in each half of the key space for the Increment workload: its transactions
    /// span two storage servers and two resolvers where there are two.
    pub increment_keys: u64,
    /// Each client waits 1 ms to this long between two transactions. The simulated disk
    /// costs no time, so without it commits would follow each other in one instant and the
    /// clock would never move.
    pub think_ms_max: u64,
    /// Each call between two stages (and from a client) takes up to this long each way
    /// across the simulated network; 0 for none. (Chosen last, so the choices above are what
    /// they were before the network was simulated.)
    pub latency_ms_max: u64,
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
            stall_timeout: Duration::from_millis(pick(&[500, 2_000])),
            clients: pick(&[1, 2, 4, 8]),
            nodes: pick(&[4, 16, 64]),
            increment_keys: pick(&[1, 4, 16]),
            think_ms_max: pick(&[1, 5, 20]),
            latency_ms_max: pick(&[0, 0, 1, 4]),
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
        // Stalls must be found within a boot (at most 10 s): a stage that hangs on the commit
        // path ends the epoch after this, and a hung persistence phase after 2 s.
        c.proxy.stall_timeout = self.stall_timeout;
        c.persistence_deadline = Duration::from_secs(2);
        c
    }

    /// The longest a monitoring round takes while nothing fails: its interval, and its probes
    /// (the sequencer's and each storage server's) across the network and back.
    pub(crate) fn monitoring_round(&self) -> Duration {
        let probes = u32::try_from(1 + self.layout.storage).unwrap_or(u32::MAX);
        self.config().monitor_interval + Duration::from_millis(self.latency_ms_max) * 2 * probes
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

    /// Starts the boot's clients; each runs against whichever epoch is serving, and
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
                    increment_keys: self.increment_keys,
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

/// Which workload a transaction was.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Kind {
    /// A Cycle rewiring, acknowledged as `ring/ack/<client>/<n>`.
    Cycle,
    /// An Increment, acknowledged as `ledger/<client>/<n>`.
    Increment,
    /// A read/write of the client's registers, checked against the model as it reads.
    Register,
}

/// One client of a boot.
struct Client {
    id: u64,
    nodes: u64,
    increment_keys: u64,
    think_ms_max: u64,
    /// The ring's size, once one client made sure it exists.
    ring: Arc<OnceCell<u64>>,
    relay: Arc<Relay>,
    trace: Arc<Trace>,
    rng: SplitMix64,
}

impl Client {
    /// Transactions one after another, each a Cycle rewiring, an Increment or a read/write of
    /// registers (the generator decides), against the epoch serving. A read the registers'
    /// model does not allow breaks the run.
    async fn run(mut self) {
        let mut n = 0;
        loop {
            let think = 1 + self.rng.below(self.think_ms_max);
            tokio::time::sleep(Duration::from_millis(think)).await;
            let db = self.relay.database().await;
            let kind = [Kind::Cycle, Kind::Increment, Kind::Register][self.rng.below(3) as usize];
            let done = match kind {
                Kind::Cycle => self.rewire(&db, n).await.map(|_| true),
                Kind::Increment => {
                    let increment = Increment {
                        keys: self.increment_keys,
                    };
                    increment
                        .transaction(&db, &mut self.rng, self.id, n)
                        .await
                        .map(|_| true)
                }
                Kind::Register => {
                    match registers::transaction(
                        &self.trace.registers,
                        &db,
                        &mut self.rng,
                        self.id,
                        n,
                    )
                    .await
                    {
                        Err(e) => return self.trace.broken(e),
                        acked => acked,
                    }
                }
            };
            match done {
                Ok(true) => self.trace.ack(kind, self.id, n),
                Ok(false) => tokio::time::sleep(Duration::from_millis(10)).await,
                // Failed, or unknown: it may have committed (an epoch ended during its commit),
                // so its number is not used again, and it is not counted as acknowledged.
                Err(_) => tokio::time::sleep(Duration::from_millis(10)).await,
            }
            n += 1;
        }
    }

    async fn rewire(&mut self, db: &Database, n: u64) -> Result<u64> {
        let nodes = *self
            .ring
            .get_or_try_init(|| cycle::ensure_ring(db, self.nodes))
            .await?;
        cycle::rewire(db, nodes, &mut self.rng, self.id, n).await
    }
}

/// Bytes under `dir`, at any depth (0 when it does not exist).
pub(crate) fn bytes_under(dir: &Path) -> Result<u64> {
    if !dir.exists() {
        return Ok(0);
    }
    let mut total = 0;
    for entry in std::fs::read_dir(dir).map_err(io)? {
        let entry = entry.map_err(io)?;
        let meta = entry.metadata().map_err(io)?;
        total += if meta.is_dir() {
            bytes_under(&entry.path())?
        } else {
            meta.len()
        };
    }
    Ok(total)
}

/// Checks at rest that popping followed the slowest reader: no log of the data directory keeps
/// a segment wholly below the oldest durable version of the storage servers (one whose
/// successor starts below it), which the director pops every watermark interval. Run after a
/// quiet spell of several intervals, so the last pop has caught up.
pub(crate) fn check_popped(data_dir: &Path, storage: usize) -> Result<()> {
    let mut oldest = None::<Version>;
    for i in 0..storage {
        let durable =
            strata_storage::durable_version_at(&data_dir.join(format!("storage/{i}.redb")))?;
        oldest = Some(oldest.map_or(durable, |o| o.min(durable)));
    }
    let Some(oldest) = oldest else { return Ok(()) };
    for log in std::fs::read_dir(data_dir.join("logs")).map_err(io)? {
        let log = log.map_err(io)?.path();
        let mut bases: Vec<u64> = std::fs::read_dir(&log)
            .map_err(io)?
            .filter_map(|e| {
                let name = e.ok()?.file_name().into_string().ok()?;
                name.strip_suffix(".seg")?.parse().ok()
            })
            .collect();
        bases.sort_unstable();
        let stale = bases.windows(2).filter(|w| w[1] < oldest.0).count();
        if stale > 0 {
            return Err(Error::new(
                Stage::Log,
                ErrorKind::Corruption(format!(
                    "{} keeps {stale} segments wholly below {oldest}, the oldest durable \
                     version of the storage servers: it is not popped",
                    log.display()
                )),
            ));
        }
    }
    Ok(())
}

fn io(e: std::io::Error) -> Error {
    Error::io(Stage::Director, e)
}
