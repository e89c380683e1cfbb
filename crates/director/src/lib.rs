//! Strata's composition root: the one crate that names concrete stages.
//!
//! [`EmbeddedCluster`] recovers a whole cluster in one process on a data directory —
//! sequencer, resolvers, commit proxies, file-backed logs and redb storage servers, their
//! counts configurable — under a new epoch, and hands out a [`Database`]. The `strata` binary
//! is built on it.
//!
//! - [`coordinator`]: the coordinated state (epoch, current logs) behind [`StateStore`].
//! - [`recovery`]: one recovery attempt as named phases, ending with the persistence phase.
//! - [`serve`]: recovery plus monitoring; a failed stage ends the epoch and starts the next.
//! - [`dump`]: what is stored under a prefix, without starting an epoch.
//! - [`faults`]: decorators of every stage trait that fail an armed call, for tests.
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
//! | `coordinated.json`      | the coordinated state: epoch, current logs      |
//! | `logs/<epoch>-<n>/`     | log `n` of a generation: segments, lock epoch   |
//! | `storage/<n>.redb`      | storage server `n`                              |
//!
//! # Recovery
//!
//! [`EmbeddedCluster::start`] runs the recovery of `DESIGN.md` as named phases, each a
//! `tracing` span with its duration ([`recovery::recover`]): read and lock the coordinated
//! state under the next epoch; lock the previous logs; choose the recovery version (the newest
//! version every previous log holds); recruit new logs and replay the committed history the
//! storage servers still need; roll the storage servers back to the recovery version; start
//! sequencer, resolvers and proxies; build the Transaction System Layout; write the new
//! coordinated state; and the persistence phase: one system transaction with the whole
//! configuration (monolithic and decomposed), committed through the new pipeline and read back.
//! A failed attempt is never retried within its epoch: the coordinator starts the next one.

use std::path::Path;
use std::sync::Arc;

use bytes::Bytes;
use strata_commit_proxy::ProxyConfig;
use strata_core::{Epoch, Error, ErrorKind, Key, KeyRange, Result, Stage, Version};
use strata_sequencer::ClockSequencer;
use strata_storage::{RedbStorage, StorageConfig};
use strata_tlog::{FileLog, FileLogConfig};
pub use strata_txn_builder::{Database, RetryConfig, Transaction};

pub mod coordinator;
pub mod faults;
pub mod recovery;

pub use coordinator::{CoordinatedState, FileStateStore, StateStore};
pub use recovery::{PhaseTiming, RecoveryEnv, RecoveryReport};

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
    /// How long the persistence phase may take before the director gives up on the epoch.
    pub persistence_deadline: std::time::Duration,
    /// How long recovery waits for the storage servers to re-apply the history they hold only
    /// in memory (up to the MVCC window) before the persistence phase.
    pub storage_catch_up: std::time::Duration,
    /// How many epochs the coordinator tries before it reports failure.
    pub recovery_attempts_max: u32,
    /// How often a served cluster's stages are probed.
    pub monitor_interval: std::time::Duration,
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
            proxy: ProxyConfig::default(),
            retry: RetryConfig::default(),
            persistence_deadline: std::time::Duration::from_secs(5),
            storage_catch_up: std::time::Duration::from_secs(60),
            recovery_attempts_max: 5,
            monitor_interval: std::time::Duration::from_millis(100),
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
    pub(crate) epoch: Epoch,
    pub(crate) start_version: Version,
    pub(crate) sequencer: Arc<ClockSequencer>,
    /// The sequencer as the commit path and monitoring see it (decorated in fault tests).
    pub(crate) versions: Arc<dyn strata_core::Sequencer>,
    pub(crate) logs: Vec<Arc<FileLog>>,
    pub(crate) storage: Vec<Arc<RedbStorage>>,
    pub(crate) batching: Vec<Arc<strata_commit_proxy::BatchingProxy>>,
    pub(crate) proxies: Vec<Arc<dyn strata_core::CommitProxy>>,
    pub(crate) database: Database,
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
    /// Recovers the cluster stored in `data_dir` (created when missing) under a new epoch,
    /// through the persistence phase, and returns it running. When an attempt fails, the
    /// coordinator logs why and starts the next epoch, with growing waits, at most
    /// [`EmbeddedConfig::recovery_attempts_max`] times.
    pub async fn start(data_dir: &Path, config: EmbeddedConfig) -> Result<EmbeddedCluster> {
        Ok(Self::start_with_report(data_dir, config).await?.0)
    }

    /// [`EmbeddedCluster::start`], also returning what the successful recovery did.
    pub async fn start_with_report(
        data_dir: &Path,
        config: EmbeddedConfig,
    ) -> Result<(EmbeddedCluster, RecoveryReport)> {
        Self::start_with_store(data_dir, config, &FileStateStore::new(data_dir)).await
    }

    /// [`EmbeddedCluster::start_with_report`] with the coordinated state in `store`.
    pub async fn start_with_store(
        data_dir: &Path,
        config: EmbeddedConfig,
        store: &dyn StateStore,
    ) -> Result<(EmbeddedCluster, RecoveryReport)> {
        Self::start_with_env(data_dir, config, store, &RecoveryEnv::default()).await
    }

    /// [`EmbeddedCluster::start_with_store`] in `env` (shared open logs, injected faults).
    pub async fn start_with_env(
        data_dir: &Path,
        config: EmbeddedConfig,
        store: &dyn StateStore,
        env: &RecoveryEnv,
    ) -> Result<(EmbeddedCluster, RecoveryReport)> {
        if config.logs == 0 || config.storage == 0 || config.resolvers == 0 || config.proxies == 0 {
            return Err(error(ErrorKind::InvalidRequest(
                "every stage needs at least one instance".into(),
            )));
        }
        std::fs::create_dir_all(data_dir).map_err(|e| Error::io(Stage::Director, e))?;
        let mut attempt = 0;
        loop {
            attempt += 1;
            match recovery::recover(data_dir, config, store, env).await {
                Ok(done) => return Ok(done),
                // A request the directory cannot satisfy fails the same way in every epoch.
                Err(e) if matches!(e.kind, ErrorKind::InvalidRequest(_)) => return Err(e),
                Err(e) if attempt < config.recovery_attempts_max => {
                    tracing::warn!(attempt, error = %e, "recovery failed; starting the next epoch");
                    recovery::backoff(attempt).await;
                }
                Err(e) => {
                    tracing::error!(attempt, error = %e, "recovery failed; giving up");
                    return Err(e);
                }
            }
        }
    }

    /// Monitoring's probe: an error names the first stage found failed — a stopped
    /// sequencer, a poisoned or newer-epoch-locked log, a fenced or stopped proxy, a storage
    /// server that stopped applying. The director then ends the epoch.
    pub async fn check_health(&self) -> Result<()> {
        self.versions.read_version().await?;
        for log in &self.logs {
            if log.is_poisoned() {
                return Err(Error::new(Stage::Log, ErrorKind::Poisoned));
            }
            let locked = log.locked_epoch()?;
            if locked > self.epoch {
                return Err(Error::new(
                    Stage::Log,
                    ErrorKind::Fenced {
                        request: self.epoch,
                        current: locked,
                    },
                ));
            }
        }
        for p in &self.batching {
            if p.is_fenced() || !p.is_running() {
                return Err(Error::new(
                    Stage::CommitProxy,
                    ErrorKind::Unavailable("a commit proxy stopped".into()),
                ));
            }
        }
        for s in &self.storage {
            strata_core::StorageServer::applied_version(s.as_ref()).await?;
        }
        Ok(())
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

    /// Stops the cluster: no new commits, the storage servers close their databases and the
    /// logs their files, so the data directory can be recovered again at once, even while
    /// `Database` handles remain (their requests then fail as unavailable).
    pub async fn stop(self) {
        self.sequencer.stop();
        drop(self.database);
        drop(self.proxies);
        for s in &self.storage {
            s.close().await;
        }
        for log in &self.logs {
            log.close();
        }
    }
}

/// What `strata dump` found: the coordinated state and the pairs under a prefix.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Dump {
    /// The coordinated state as stored.
    pub state: CoordinatedState,
    /// The newest recoverable version: the newest every current log holds.
    pub version: Version,
    /// Key-value pairs under the prefix at that version, keys ascending, both printable.
    pub entries: Vec<(String, String)>,
}

/// Reads what the cluster in `data_dir` stores under `prefix`, at the newest recoverable
/// version, without starting a new epoch: the logs are opened but not locked, and the storage
/// servers follow them without making anything durable or popping anything. (Opening a log
/// still truncates a torn write at its end, as any open does.)
pub async fn dump(data_dir: &Path, prefix: &[u8]) -> Result<Dump> {
    let state = FileStateStore::new(data_dir).read()?.ok_or_else(|| {
        error(ErrorKind::Unavailable(format!(
            "no cluster in {}: run `strata recover` first",
            data_dir.display()
        )))
    })?;
    let range = KeyRange::prefix(Bytes::copy_from_slice(prefix))
        .map_err(|e| error(ErrorKind::InvalidRequest(e.to_string())))?;
    let mut logs = Vec::new();
    for place in &state.logs {
        let log = FileLog::open(
            &data_dir.join(&place.dir),
            place.id,
            Version::ZERO,
            FileLogConfig::default(),
        )?;
        logs.push(Arc::new(log));
    }
    let version = logs
        .iter()
        .map(|l| l.last_version())
        .min()
        .unwrap_or(Version::ZERO);
    let read_only = StorageConfig {
        pop_log: false,
        flush_interval: std::time::Duration::from_secs(u64::from(u32::MAX)),
        ..StorageConfig::default()
    };
    let mut entries = Vec::new();
    let mut servers = Vec::new();
    for (i, shard) in split_ranges(state.storage)?.into_iter().enumerate() {
        let Some(part) = shard.intersection(&range) else {
            continue;
        };
        if logs.is_empty() {
            break;
        }
        let server = Arc::new(
            RedbStorage::open(
                &data_dir.join("storage").join(format!("{i}.redb")),
                vec![shard],
                logs[i % logs.len()].clone(),
                read_only,
            )
            .await?,
        );
        servers.push(server.clone());
        let read = strata_core::StorageServer::get_range(
            server.as_ref(),
            part,
            version,
            usize::MAX,
            false,
        )
        .await?;
        entries.extend(
            read.entries
                .into_iter()
                .map(|(k, v)| (strata_core::printable(&k), strata_core::printable(&v))),
        );
    }
    for s in &servers {
        s.close().await;
    }
    for l in &logs {
        l.close();
    }
    Ok(Dump {
        state,
        version,
        entries,
    })
}

/// The cluster being served: its epoch and a database handle, `None` between epochs.
pub type Serving = Option<(Epoch, Database)>;

/// Recovers the cluster in `data_dir` and serves it until `shutdown` completes, with
/// monitoring: every [`EmbeddedConfig::monitor_interval`] the director probes its stages
/// ([`EmbeddedCluster::check_health`]); when one has failed, it ends the epoch and the
/// coordinator recovers under the next one. Each epoch is published on `serving`. An epoch that
/// fails within a second of starting counts against [`EmbeddedConfig::recovery_attempts_max`];
/// past it, serving stops with the last failure.
pub async fn serve(
    data_dir: &Path,
    config: EmbeddedConfig,
    env: &RecoveryEnv,
    serving: &tokio::sync::watch::Sender<Serving>,
    shutdown: impl std::future::Future<Output = ()>,
) -> Result<()> {
    let store = FileStateStore::new(data_dir);
    tokio::pin!(shutdown);
    let mut quick_failures = 0;
    loop {
        let (cluster, report) =
            EmbeddedCluster::start_with_env(data_dir, config, &store, env).await?;
        let started = std::time::Instant::now();
        serving.send_replace(Some((report.epoch, cluster.database())));
        tracing::info!(epoch = report.epoch.0, "serving");
        let failure = loop {
            tokio::select! {
                () = &mut shutdown => {
                    serving.send_replace(None);
                    cluster.stop().await;
                    return Ok(());
                }
                () = tokio::time::sleep(config.monitor_interval) => {
                    if let Err(e) = cluster.check_health().await {
                        break e;
                    }
                }
            }
        };
        tracing::warn!(epoch = report.epoch.0, error = %failure, "a stage failed; ending the epoch");
        serving.send_replace(None);
        cluster.stop().await;
        if started.elapsed() < std::time::Duration::from_secs(1) {
            quick_failures += 1;
            if quick_failures >= config.recovery_attempts_max {
                return Err(failure);
            }
            recovery::backoff(quick_failures).await;
        } else {
            quick_failures = 0;
        }
    }
}
