//! Strata's composition root: the one crate that names concrete stages.
//!
//! [`EmbeddedCluster`] starts a whole cluster in one process on a data directory — sequencer,
//! resolvers, commit proxies, file-backed logs and redb storage servers, their counts
//! configurable — and hands out a [`Database`]. Recovery under a new epoch with its persistence
//! phase, and the `strata` binary, build on it.
//!
//! ```no_run
//! use strata_director::{EmbeddedCluster, EmbeddedConfig};
//!
//! # async fn example() -> strata_core::Result<()> {
//! let cluster = EmbeddedCluster::start("./strata-data".as_ref(), EmbeddedConfig::default()).await?;
//! let db = cluster.database();
//! db.run(|tx| async move {
//!     tx.set("hello".into(), "world".into());
//!     Ok(())
//! })
//! .await?;
//! # Ok(()) }
//! ```
//!
//! # Layout of a data directory
//!
//! | path                    | what                                            |
//! |-------------------------|-------------------------------------------------|
//! | `logs/<n>/`             | log `n`: segment files and its lock epoch       |
//! | `storage/<n>.redb`      | storage server `n`                              |

use std::path::Path;
use std::sync::Arc;

use bytes::Bytes;
use strata_commit_proxy::{BatchingProxy, ProxyConfig};
use strata_core::{
    CommitProxy, Epoch, Error, ErrorKind, Key, KeyRange, LogId, LogServer, Resolver, Result, Stage,
    StorageServer, Version,
};
use strata_resolver::{ResolverConfig, WindowResolver};
use strata_sequencer::ClockSequencer;
use strata_storage::{RedbStorage, StorageConfig};
use strata_tlog::{FileLog, FileLogConfig};
pub use strata_txn_builder::{Database, RetryConfig, Transaction};

/// The end of the key space: every user key (below `0xff`) and every system key sorts below.
pub const KEY_SPACE_END: &[u8] = b"\xff\xff";

fn error(kind: ErrorKind) -> Error {
    Error::new(Stage::Director, kind)
}

/// How many of each stage an [`EmbeddedCluster`] runs, and their tuning.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct EmbeddedConfig {
    /// Transaction logs; every commit is on all of them.
    pub logs: usize,
    /// Storage servers; the key space is split evenly among them by first byte.
    pub storage: usize,
    /// Resolvers; the key space is split among them the same way.
    pub resolvers: usize,
    /// Commit proxies; clients take them in turn.
    pub proxies: usize,
    /// Tuning of each log.
    pub log: FileLogConfig,
    /// Tuning of each storage server.
    pub storage_config: StorageConfig,
    /// Tuning of each commit proxy.
    pub proxy: ProxyConfig,
    /// How clients retry.
    pub retry: RetryConfig,
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
            log: FileLogConfig::default(),
            storage_config: StorageConfig::default(),
            proxy: ProxyConfig::default(),
            retry: RetryConfig::default(),
        }
    }
}

/// The begin keys splitting the key space into `n` parts by first byte.
pub fn split_begins(n: usize) -> Vec<Key> {
    (0..n.max(1))
        .map(|i| {
            if i == 0 {
                Key::new()
            } else {
                // i * 256 / n < 256 for i < n, so it fits a byte.
                let byte = u8::try_from(i * 256 / n).unwrap_or(u8::MAX);
                Bytes::copy_from_slice(&[byte])
            }
        })
        .collect()
}

/// The ranges of [`split_begins`], the last one ending at [`KEY_SPACE_END`].
pub fn split_ranges(n: usize) -> Result<Vec<KeyRange>> {
    let begins = split_begins(n);
    begins
        .iter()
        .enumerate()
        .map(|(i, b)| {
            let end = begins
                .get(i + 1)
                .cloned()
                .unwrap_or_else(|| Bytes::from_static(KEY_SPACE_END));
            KeyRange::new(b.clone(), end)
                .map_err(|e| error(ErrorKind::InvalidRequest(e.to_string())))
        })
        .collect()
}

/// A whole cluster in one process. See the crate docs.
pub struct EmbeddedCluster {
    epoch: Epoch,
    start_version: Version,
    sequencer: Arc<ClockSequencer>,
    logs: Vec<Arc<FileLog>>,
    storage: Vec<Arc<RedbStorage>>,
    proxies: Vec<Arc<BatchingProxy>>,
    database: Database,
}

impl std::fmt::Debug for EmbeddedCluster {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EmbeddedCluster")
            .field("epoch", &self.epoch)
            .field("start_version", &self.start_version)
            .field("logs", &self.logs.len())
            .field("storage", &self.storage.len())
            .field("proxies", &self.proxies.len())
            .finish_non_exhaustive()
    }
}

impl EmbeddedCluster {
    /// Starts a cluster on `data_dir`, created when missing, under the epoch after the one its
    /// logs were locked with.
    ///
    /// This starts a fresh directory or one whose logs all end at the same version (a clean
    /// stop). Logs that disagree — a crash in the middle of a push — need the recovery that
    /// chooses a recovery version and replays history into new logs; until that lands, such a
    /// directory is refused with an error saying so.
    pub async fn start(data_dir: &Path, config: EmbeddedConfig) -> Result<EmbeddedCluster> {
        if config.logs == 0 || config.storage == 0 || config.resolvers == 0 || config.proxies == 0 {
            return Err(error(ErrorKind::InvalidRequest(
                "every stage needs at least one instance".into(),
            )));
        }
        let mut logs = Vec::new();
        for i in 0..config.logs {
            let dir = data_dir.join("logs").join(i.to_string());
            let id = LogId(u64::try_from(i).unwrap_or(u64::MAX));
            logs.push(Arc::new(FileLog::open(
                &dir,
                id,
                Version::ZERO,
                config.log,
            )?));
        }
        let mut epoch = Epoch(0);
        for log in &logs {
            epoch = epoch.max(log.locked_epoch()?);
        }
        let epoch = epoch.next();
        let mut ends = Vec::new();
        for log in &logs {
            ends.push(log.lock(epoch).await?.last_version);
        }
        let start_version = ends.iter().copied().min().unwrap_or(Version::ZERO);
        if ends.iter().any(|&v| v != start_version) {
            return Err(error(ErrorKind::Unavailable(format!(
                "the logs end at different versions ({ends:?}): this directory needs a recovery"
            ))));
        }

        let log_servers: Vec<Arc<dyn LogServer>> = logs
            .iter()
            .map(|l| l.clone() as Arc<dyn LogServer>)
            .collect();
        let storage_ranges = split_ranges(config.storage)?;
        let mut storage = Vec::new();
        for (i, range) in storage_ranges.into_iter().enumerate() {
            let followers = (0..config.storage)
                .filter(|j| j % config.logs == i % config.logs)
                .count();
            let storage_config = StorageConfig {
                // A log may be popped only by the one server that follows it.
                pop_log: config.storage_config.pop_log && followers == 1,
                ..config.storage_config
            };
            let path = data_dir.join("storage").join(format!("{i}.redb"));
            std::fs::create_dir_all(data_dir.join("storage"))
                .map_err(|e| Error::io(Stage::Director, e))?;
            let server = RedbStorage::open(
                &path,
                vec![range],
                log_servers[i % config.logs].clone(),
                storage_config,
            )
            .await?;
            storage.push(Arc::new(server));
        }

        let sequencer = Arc::new(ClockSequencer::new(epoch, start_version));
        let resolvers: Vec<(Key, Arc<dyn Resolver>)> = split_begins(config.resolvers)
            .into_iter()
            .map(|begin| {
                let r: Arc<dyn Resolver> = Arc::new(WindowResolver::new(
                    epoch,
                    start_version,
                    ResolverConfig::default(),
                ));
                (begin, r)
            })
            .collect();
        let mut proxies = Vec::new();
        for _ in 0..config.proxies {
            proxies.push(Arc::new(BatchingProxy::new(
                epoch,
                sequencer.clone(),
                resolvers.clone(),
                log_servers.clone(),
                config.proxy,
            )?));
        }
        let database = Database::new(
            sequencer.clone(),
            proxies
                .iter()
                .map(|p| p.clone() as Arc<dyn CommitProxy>)
                .collect(),
            storage
                .iter()
                .map(|s| s.clone() as Arc<dyn StorageServer>)
                .collect(),
            config.retry,
        )?;
        tracing::info!(
            epoch = epoch.0,
            start = start_version.0,
            "embedded cluster started"
        );
        Ok(EmbeddedCluster {
            epoch,
            start_version,
            sequencer,
            logs,
            storage,
            proxies,
            database,
        })
    }

    /// A handle for transactions.
    pub fn database(&self) -> Database {
        self.database.clone()
    }

    /// The epoch this cluster runs under.
    pub fn epoch(&self) -> Epoch {
        self.epoch
    }

    /// The version the cluster started from.
    pub fn start_version(&self) -> Version {
        self.start_version
    }

    /// Stops the cluster: no new commits; the storage servers close their databases.
    pub async fn stop(self) {
        self.sequencer.stop();
        drop(self.database);
        drop(self.proxies);
        for s in self.storage {
            if let Ok(s) = Arc::try_unwrap(s) {
                s.close().await;
            }
        }
        drop(self.logs);
    }
}
