//! What an embedded cluster runs: how many of each stage, their tuning, and the limits a
//! layout is checked against before recovery writes anything.

use std::path::Path;
use std::time::Duration;

use strata_commit_proxy::ProxyConfig;
use strata_core::{Error, ErrorKind, Result, Stage};
use strata_resolver::ResolverConfig;
use strata_storage::StorageConfig;
use strata_tlog::FileLogConfig;
use strata_txn_builder::TransactionOptions;

use crate::coordinator::{CoordinatedState, Coordination, StateStore};

/// Most transaction logs in one generation: every commit waits for a sync on each.
pub const LOGS_MAX: usize = 16;
/// Most storage servers: the key space is split among them by first byte.
pub const STORAGE_MAX: usize = 256;
/// Most resolvers: the key space is split among them by first byte.
pub const RESOLVERS_MAX: usize = 256;
/// Most commit proxies.
pub const PROXIES_MAX: usize = 64;
/// The smallest log segment `strata serve --log-segment-bytes` takes: a segment file per
/// 64 KiB of commits is already many files.
pub const LOG_SEGMENT_BYTES_MIN: u64 = 64 << 10;
/// The largest log segment `strata serve --log-segment-bytes` takes: recovery reads a segment
/// whole, and a spare is written ahead of each roll.
pub const LOG_SEGMENT_BYTES_MAX: u64 = 1 << 30;

/// How many of each stage an [`crate::EmbeddedCluster`] runs, and their tuning.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct EmbeddedConfig {
    /// Transaction logs; every commit is on all of them (1 to [`LOGS_MAX`]).
    pub logs: usize,
    /// Storage servers; the key space is split evenly among them by first byte (1 to
    /// [`STORAGE_MAX`], fixed for a data directory once created).
    pub storage: usize,
    /// Resolvers; the key space is split among them the same way (1 to [`RESOLVERS_MAX`]).
    pub resolvers: usize,
    /// Commit proxies; clients take them in turn (1 to [`PROXIES_MAX`]).
    pub proxies: usize,
    /// Tuning of each log.
    pub log: FileLogConfig,
    /// Tuning of each storage server. Its `pop_log` is ignored: the director pops every log
    /// itself, at the oldest durable version of all storage servers.
    pub storage_config: StorageConfig,
    /// Tuning of each resolver.
    pub resolver: ResolverConfig,
    /// Tuning of each commit proxy.
    pub proxy: ProxyConfig,
    /// What the cluster's [`crate::Database`] gives its transactions by default: their
    /// lifetime (at most 5 s), the timeout of `run` (none by default) and its retries. A
    /// caller may override them per call (`Database::run_with`).
    pub transactions: TransactionOptions,
    /// How long the persistence phase may take before the director gives up on the epoch.
    pub persistence_deadline: Duration,
    /// How long recovery waits for the storage servers to re-apply the history they hold only
    /// in memory (up to the MVCC window and one storage flush interval) before the persistence
    /// phase.
    pub storage_catch_up: Duration,
    /// How many epochs the coordinator tries before it reports failure.
    pub recovery_attempts_max: u32,
    /// How often a served cluster's stages are probed.
    pub monitor_interval: Duration,
    /// How long monitoring waits for a stage to answer a probe: one that does not answer in
    /// time has failed (a hung stage would otherwise wedge monitoring, and the epoch with it).
    pub probe_timeout: Duration,
    /// How often the director tells storage servers what is committed and pops the logs.
    pub watermark_interval: Duration,
}

impl Default for EmbeddedConfig {
    fn default() -> EmbeddedConfig {
        // One of each: on one machine with one disk, more logs add no durability (they share
        // the disk) and cost a sync each; more proxies, resolvers and storage servers only
        // share the same two cores. Tests and benches that need the replicated shape ask for it.
        EmbeddedConfig {
            logs: 1,
            storage: 1,
            resolvers: 1,
            proxies: 1,
            // The pipeline's pushers (proxy batches) come back about 100 µs after their answer,
            // longer than a sync's fixed cost: waiting for them only idles the disk (see
            // `FileLogConfig::gather_stragglers` and the README's measurements).
            log: FileLogConfig {
                gather_stragglers: false,
                ..FileLogConfig::default()
            },
            storage_config: StorageConfig::default(),
            resolver: ResolverConfig::default(),
            proxy: ProxyConfig::default(),
            transactions: TransactionOptions::default(),
            persistence_deadline: Duration::from_secs(5),
            storage_catch_up: Duration::from_secs(60),
            recovery_attempts_max: 5,
            monitor_interval: Duration::from_millis(100),
            probe_timeout: Duration::from_secs(1),
            watermark_interval: Duration::from_millis(100),
        }
    }
}

fn invalid(why: String) -> Error {
    Error::new(Stage::Director, ErrorKind::InvalidRequest(why))
}

impl EmbeddedConfig {
    /// Checks the layout alone: every count within its limit, the log's tuning and the
    /// transaction options valid. A configuration that fails here can never work, so it is
    /// checked before anything is written.
    pub fn validate(&self) -> Result<()> {
        for (name, count, max) in [
            ("logs", self.logs, LOGS_MAX),
            ("storage servers", self.storage, STORAGE_MAX),
            ("resolvers", self.resolvers, RESOLVERS_MAX),
            ("commit proxies", self.proxies, PROXIES_MAX),
        ] {
            if !(1..=max).contains(&count) {
                return Err(invalid(format!(
                    "{count} {name}: a cluster runs 1 to {max}"
                )));
            }
        }
        self.log.validate()?;
        self.transactions.validate()?;
        // The limits a worker holds a recruitment's resolver settings to: a configuration its
        // workers would refuse is refused here, not passed over worker by worker.
        crate::workers::resolver_config(crate::workers::resolver_settings(&self.resolver))
            .map_err(|e| invalid(format!("the resolver's configuration: {}", e.kind)))?;
        crate::workers::proxy_config(crate::workers::proxy_settings(&self.proxy))
            .map_err(|e| invalid(format!("the proxy's configuration: {}", e.kind)))?;
        if self.recovery_attempts_max == 0 {
            return Err(invalid("recovery_attempts_max must be at least 1".into()));
        }
        Ok(())
    }

    /// Checks the layout against what the data directory already holds: its storage servers
    /// own fixed key ranges, so their count cannot change (re-sharding is not supported).
    pub fn validate_against(&self, stored: Option<&CoordinatedState>) -> Result<()> {
        if let Some(state) = stored
            && state.storage != self.storage
        {
            return Err(invalid(format!(
                "this data directory has {} storage servers; re-sharding to {} is not supported",
                state.storage, self.storage
            )));
        }
        Ok(())
    }

    /// This configuration with the layout (logs, storage servers, resolvers, proxies) stored
    /// in `data_dir` by its last recovery, where there is one; the tuning stays as it is.
    /// Commands that only use a cluster call this, so they work on any directory whatever
    /// layout created it.
    pub fn with_stored_layout(self, data_dir: &Path) -> Result<EmbeddedConfig> {
        if data_dir.exists() && !data_dir.is_dir() {
            return Err(Error::new(
                Stage::Director,
                ErrorKind::InvalidRequest(format!("{} is not a directory", data_dir.display())),
            ));
        }
        let Some(state) = Coordination::for_data_dir(data_dir)?.read()? else {
            return Ok(self);
        };
        Ok(EmbeddedConfig {
            logs: if state.logs.is_empty() {
                self.logs
            } else {
                state.logs.len()
            },
            storage: state.storage,
            resolvers: state.resolvers.unwrap_or(self.resolvers),
            proxies: state.proxies.unwrap_or(self.proxies),
            ..self
        })
    }
}
