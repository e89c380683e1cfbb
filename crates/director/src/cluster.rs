//! The running cluster of one epoch: its stages, the coordinator loop that recovers it, the
//! health check monitoring uses, and the watermark task that tells storage servers what is
//! committed and pops the logs.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use strata_commit_proxy::BatchingProxy;
use strata_core::buggify;
use strata_core::{
    CommitProxy, Epoch, Error, ErrorKind, LogServer, Resolver, Result, Sequencer, Stage,
    StorageServer, Version,
};
use strata_net::Stages;
use strata_sequencer::ClockSequencer;
use strata_txn_builder::Database;
use tokio::task::JoinHandle;

use crate::config::EmbeddedConfig;
use crate::coordinator::{Coordination, StateStore};
use crate::owner::{DirectoryLock, lock_directory};
use crate::recovery::{self, RecoveryEnv, RecoveryError, RecoveryReport};
use crate::{HeldLog, HeldStorage};

/// The transaction system of one epoch: each stage as built, and as the commit path sees it
/// (`decorated_*`: wrapped by fault decorators in tests, the same objects otherwise).
pub(crate) struct Pipeline {
    /// The sequencer, undecorated: stopped with the epoch.
    pub(crate) sequencer: OwnSequencer,
    /// Where the sequencer runs when it was recruited on a worker.
    pub(crate) sequencer_at: Option<String>,
    pub(crate) decorated_sequencer: Arc<dyn Sequencer>,
    pub(crate) decorated_resolvers: Vec<Arc<dyn Resolver>>,
    /// Where each resolver runs, by index, when it was recruited on a worker.
    pub(crate) resolvers_at: Vec<Option<String>>,
    /// The workers this epoch recruited, which monitoring asks what they run.
    pub(crate) recruited: Vec<crate::workers::Recruited>,
    /// The commit proxies run in this process (monitoring asks them for their health; those
    /// on workers answer in their heartbeats).
    pub(crate) proxies: Vec<Arc<BatchingProxy>>,
    /// Where each proxy runs, by index, when it was recruited on a worker.
    pub(crate) proxies_at: Vec<Option<String>>,
    /// This process's stages, published for the proxies on workers while the epoch runs.
    pub(crate) peers: Option<crate::workers::Published>,
    pub(crate) decorated_proxies: Vec<Arc<dyn CommitProxy>>,
    pub(crate) decorated_storage: Vec<Arc<dyn StorageServer>>,
    pub(crate) database: Database,
    /// The director's own system transactions (the persistence phase's) go through this
    /// handle, whose proxies all run here: a proxy worker refuses system keys.
    pub(crate) system_database: Database,
}

impl Pipeline {
    /// Passes over, in the next recoveries, the workers recruited for `stage` (see
    /// [`crate::workers::PASS_OVER_FOR`]): their stage failed, though they may still answer
    /// heartbeats.
    pub(crate) fn pass_over_workers_of(&self, stage: Stage) {
        for worker in &self.recruited {
            if worker.place.role().map(strata_net::Role::stage) == Some(stage) {
                worker.pass_over();
            }
        }
    }
}

/// The sequencer of an epoch: the director's own, or one recruited on a worker. Either is
/// stopped when the epoch's cluster is stopped, so no handle of the epoch takes a version from
/// it afterwards. (A recovery attempt that fails drops its sequencer unstopped, with the
/// only handles that could use it: none of an attempt's handles is given out before it
/// succeeds, and its commits are fenced by the next epoch's lock on the logs.)
pub(crate) enum OwnSequencer {
    Local(Arc<ClockSequencer>),
    Worker(Arc<crate::workers::WorkerSequencer>),
}

impl OwnSequencer {
    /// Every later call through this epoch's handles is `Unavailable`.
    pub(crate) fn stop(&self) {
        match self {
            OwnSequencer::Local(s) => s.stop(),
            OwnSequencer::Worker(s) => s.stop(),
        }
    }

    /// The sequencer without the decorators of tests (the watermark task reads it).
    pub(crate) fn plain(&self) -> Arc<dyn Sequencer> {
        match self {
            OwnSequencer::Local(s) => s.clone(),
            OwnSequencer::Worker(s) => s.clone(),
        }
    }
}

/// The director's watermark task: every interval it tells each storage server the newest
/// committed version (so they make durable only committed versions) and pops every log at the
/// oldest durable version of all storage servers.
///
/// Popping follows the slowest reader: a storage server resumes after its own durable version,
/// and the next recovery replays from the oldest durable version of all of them, from any old
/// log. So no log may discard anything above that version, and every log is popped there,
/// whatever the layout; disk use stays bounded on every log.
pub(crate) struct Watermark(JoinHandle<()>);

impl Watermark {
    pub(crate) fn start(
        sequencer: Arc<dyn Sequencer>,
        storage: Vec<Arc<dyn HeldStorage>>,
        logs: Vec<Arc<dyn HeldLog>>,
        interval: Duration,
    ) -> Watermark {
        Watermark(tokio::spawn(async move {
            let mut popped = Version::ZERO;
            loop {
                tokio::time::sleep(interval).await;
                if buggify::fires("director.watermark.skip") {
                    continue;
                }
                // The read version is the newest version reported committed: on every log. A
                // failure is let pass until the next interval: the task ends only with its
                // epoch (aborted), since a sequencer on a worker can fail a call and answer the
                // next one, and monitoring ends the epoch on a sequencer that stays silent.
                let committed = match sequencer.read_version().await {
                    Ok(committed) => committed,
                    Err(e) => {
                        tracing::debug!(error = %e, "the watermark cannot read what is committed");
                        continue;
                    }
                };
                // Every server must answer before any log is popped: the oldest durable
                // version is the oldest of all of them. A failure (a panic poisoned a server
                // here, a call to one elsewhere failed) skips this round; monitoring's probe
                // ends the epoch of a server that stays broken.
                let oldest = async {
                    let mut oldest = None::<Version>;
                    for s in &storage {
                        s.advance_committed(committed).await?;
                        let durable = s.durable_version().await?;
                        oldest = Some(oldest.map_or(durable, |o| o.min(durable)));
                    }
                    Ok::<_, strata_core::Error>(oldest)
                };
                let oldest = match oldest.await {
                    Ok(Some(oldest)) => oldest,
                    Ok(None) => continue,
                    Err(e) => {
                        tracing::debug!(error = %e, "the watermark cannot reach a storage server");
                        continue;
                    }
                };
                if oldest > popped {
                    for log in &logs {
                        if let Err(e) = log.pop(oldest).await {
                            tracing::warn!(log = log.id().0, error = %e, "cannot pop a log");
                        }
                    }
                    popped = oldest;
                }
            }
        }))
    }
}

impl Drop for Watermark {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// A whole cluster in one process. See the crate docs.
pub struct EmbeddedCluster {
    pub(crate) epoch: Epoch,
    pub(crate) start_version: Version,
    pub(crate) pipeline: Pipeline,
    pub(crate) logs: Vec<Arc<dyn HeldLog>>,
    pub(crate) storage: Vec<Arc<dyn HeldStorage>>,
    /// This process's logs, published on the peer port for the storage workers that follow
    /// them, for as long as the epoch runs.
    pub(crate) storage_logs: Option<crate::workers::Published>,
    pub(crate) watermark: Watermark,
    /// How long [`EmbeddedCluster::check_health`] waits for each probe.
    pub(crate) probe_timeout: std::time::Duration,
    /// This process's hold on the data directory, released when the cluster is dropped.
    pub(crate) _owner: Arc<DirectoryLock>,
}

impl std::fmt::Debug for EmbeddedCluster {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EmbeddedCluster")
            .field("epoch", &self.epoch)
            .field("start_version", &self.start_version)
            .field("logs", &self.logs.len())
            .field("storage", &self.storage.len())
            .field("proxies", &self.pipeline.proxies.len())
            .finish_non_exhaustive()
    }
}

impl EmbeddedCluster {
    /// Recovers the cluster stored in `data_dir` (created when missing) under a new epoch,
    /// through the persistence phase, and returns it running. When an attempt fails, the
    /// coordinator logs why and starts the next epoch, with growing waits, at most
    /// [`EmbeddedConfig::recovery_attempts_max`] times; a configuration or a data directory
    /// that can never work stops it at once.
    pub async fn start(data_dir: &Path, config: EmbeddedConfig) -> Result<EmbeddedCluster> {
        Ok(Self::start_with_report(data_dir, config).await?.0)
    }

    /// [`EmbeddedCluster::start`], also returning what the successful recovery did.
    pub async fn start_with_report(
        data_dir: &Path,
        config: EmbeddedConfig,
    ) -> Result<(EmbeddedCluster, RecoveryReport)> {
        Self::start_with_store(data_dir, config, &Coordination::for_data_dir(data_dir)?).await
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
        // Validate, then write: not even the data directory is created for a layout that
        // can never work.
        config.validate()?;
        // A directory in use by another process is refused here, before any attempt: an
        // attempt would claim an epoch first.
        let _owner = lock_directory(data_dir, true)?;
        let mut attempt = 0;
        loop {
            attempt += 1;
            match recovery::recover(data_dir, config, store, env).await {
                Ok(done) => return Ok(done),
                // The error is returned, and the caller reports it: logged only at info level,
                // so a user sees it once.
                Err(RecoveryError::Unrecoverable(e)) => {
                    tracing::info!(attempt, error = %e, "recovery cannot succeed; stopping");
                    return Err(e);
                }
                Err(RecoveryError::Attempt(e)) if attempt < config.recovery_attempts_max => {
                    tracing::warn!(attempt, error = %e, "recovery failed; starting the next epoch");
                    recovery::backoff(attempt).await;
                }
                Err(RecoveryError::Attempt(e)) => {
                    tracing::info!(attempt, error = %e, "recovery failed; giving up");
                    return Err(e);
                }
            }
        }
    }

    /// Monitoring's probe: an error names the first stage found failed — a sequencer or a
    /// storage server that does not answer within [`EmbeddedConfig::probe_timeout`], a stopped
    /// sequencer, a worker this epoch recruited that does not answer within the probe timeout
    /// that it runs this epoch, a poisoned or newer-epoch-locked log, a commit proxy whose
    /// batch failed (a hole in the version chain) or whose chain stopped advancing, a storage
    /// server that stopped applying. The director then ends the epoch.
    pub async fn check_health(&self) -> Result<()> {
        let probe_timeout = self.probe_timeout;
        let answer = |stage: Stage, what: &'static str| {
            move |_| {
                Error::new(
                    stage,
                    ErrorKind::Timeout {
                        what: what.into(),
                        after_ms: u64::try_from(probe_timeout.as_millis()).unwrap_or(u64::MAX),
                    },
                )
            }
        };
        let probed = tokio::time::timeout(
            probe_timeout,
            self.pipeline.decorated_sequencer.read_version(),
        )
        .await
        .map_err(answer(
            Stage::Sequencer,
            "the sequencer to answer monitoring's probe",
        ))
        .and_then(|answered| answered);
        if let Err(e) = probed {
            // A worker may answer its heartbeats while its sequencer fails: the next
            // recoveries must not recruit it again and fail with it.
            self.pipeline.pass_over_workers_of(Stage::Sequencer);
            return Err(e);
        }
        // The logs before the workers: a proxy on a worker fails with a failed log, and says
        // so in its heartbeat, but the failure is the log's (a worker that fails a heartbeat
        // is passed over by the next recoveries for a while).
        for log in &self.logs {
            log.probe(self.epoch).await?;
        }
        // Before the proxies here: a worker that died fails their batches too, and the
        // failure is its own.
        for worker in &self.pipeline.recruited {
            worker.heartbeat(self.epoch, probe_timeout).await?;
        }
        for p in &self.pipeline.proxies {
            p.health()?;
        }
        for s in &self.pipeline.decorated_storage {
            tokio::time::timeout(probe_timeout, s.applied_version())
                .await
                .map_err(answer(
                    Stage::Storage,
                    "a storage server to answer monitoring's probe",
                ))??;
        }
        Ok(())
    }

    /// A handle for transactions.
    pub fn database(&self) -> Database {
        self.pipeline.database.clone()
    }

    /// The epoch this cluster runs under.
    pub fn epoch(&self) -> Epoch {
        self.epoch
    }

    /// The version the cluster started from.
    pub fn start_version(&self) -> Version {
        self.start_version
    }

    /// The storage servers, in key order (for tests and tools that inspect them).
    pub fn storage_servers(&self) -> &[Arc<dyn HeldStorage>] {
        &self.storage
    }

    /// The logs of this epoch's generation.
    pub fn logs(&self) -> &[Arc<dyn HeldLog>] {
        &self.logs
    }

    /// Every stage of this epoch, as the commit path sees it, for [`strata_net::serve`] to
    /// serve to other processes: the sequencer, the proxies, the resolvers (in the order of
    /// the key ranges they resolve), the storage servers (in the order of their ranges) and
    /// the logs of this generation.
    pub fn stages(&self) -> Stages {
        Stages {
            sequencer: Some(self.pipeline.decorated_sequencer.clone()),
            proxies: self.pipeline.decorated_proxies.clone(),
            resolvers: self.pipeline.decorated_resolvers.clone(),
            storage: self.pipeline.decorated_storage.clone(),
            logs: self
                .logs
                .iter()
                .map(|l| l.clone() as Arc<dyn LogServer>)
                .collect(),
            // Served to clients, whom the port's exposure limits instead.
            token: None,
        }
    }

    /// Stops the cluster: no new commits, the storage servers close their databases (waiting
    /// for a flush in progress) and the logs their files, so the data directory can be
    /// recovered again at once, even while `Database` handles remain (their requests then fail
    /// as unavailable).
    pub async fn stop(self) {
        drop(self.watermark);
        // Nothing of this epoch stays reachable for the cluster's processes.
        drop(self.pipeline.peers);
        drop(self.storage_logs);
        self.pipeline.sequencer.stop();
        drop(self.pipeline.database);
        drop(self.pipeline.system_database);
        drop(self.pipeline.decorated_proxies);
        drop(self.pipeline.proxies);
        for s in &self.storage {
            s.close().await;
        }
        for log in &self.logs {
            log.close();
        }
    }
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
    let (stages, _) = tokio::sync::watch::channel(Arc::new(Stages::default()));
    serve_stages(data_dir, config, env, serving, &stages, shutdown).await
}

/// How long a director waits for etcd to answer before it gives up starting (it waits as long
/// as it takes for another director's lease to end).
pub const LEAD_WAIT: Duration = Duration::from_secs(30);

/// [`serve`], also publishing each epoch's stages ([`EmbeddedCluster::stages`]) on `stages`,
/// and nothing between two epochs, for [`strata_net::serve`] to serve to other processes.
///
/// The coordinated state is where the data directory's cluster file says
/// ([`Coordination::for_data_dir`]). In etcd, the process first becomes the cluster's only
/// director (a lease, see [`etcd::EtcdStateStore::lead`](crate::coordinator::etcd)), waiting
/// while another director's lease lives (a stop ends the wait); if it loses the lease it stops
/// its epoch at once and leads again, when it can, under a new epoch.
pub async fn serve_stages(
    data_dir: &Path,
    config: EmbeddedConfig,
    env: &RecoveryEnv,
    serving: &tokio::sync::watch::Sender<Serving>,
    stages: &tokio::sync::watch::Sender<Arc<Stages>>,
    shutdown: impl std::future::Future<Output = ()>,
) -> Result<()> {
    // Held across epochs, so no other process can take the directory between two of them.
    let _owner = lock_directory(data_dir, true)?;
    let store = Coordination::for_data_dir(data_dir)?;
    let holder = format!(
        "process {} serving {}{}",
        std::process::id(),
        data_dir.display(),
        env.served_at
            .as_deref()
            .map(|a| format!(" at {a}"))
            .unwrap_or_default()
    );
    tokio::pin!(shutdown);
    // At start, an etcd that cannot be reached is an error after LEAD_WAIT; after a lost lease
    // the director waits for it as long as it takes.
    let mut wait = LEAD_WAIT;
    loop {
        // A standby waits here while another director's lease lives; a stop ends the wait.
        let lease = tokio::select! {
            biased;
            () = &mut shutdown => return Ok(()),
            lease = store.lead(&holder, wait) => lease?,
        };
        let mut directing = crate::coordinator::etcd::Directing::start(lease);
        let served = direct(
            data_dir,
            config,
            env,
            &store,
            &mut directing,
            serving,
            stages,
            shutdown.as_mut(),
        )
        .await;
        directing.release().await;
        match served {
            // Another director may run now: this one leads again, waiting its turn, and
            // recovers under a new epoch if it gets it.
            Ok(Ended::LeaseLost(e)) => {
                tracing::warn!(error = %e, "no longer the director; waiting to lead again");
                wait = Duration::MAX;
            }
            Ok(Ended::Stopped) => return Ok(()),
            Err(e) => return Err(e),
        }
    }
}

/// How [`direct`] ended without an error.
enum Ended {
    /// `shutdown` completed.
    Stopped,
    /// The director's lease was lost: the epoch was stopped at once.
    LeaseLost(Error),
}

/// The epochs of [`serve_stages`], one after another, while `directing` holds.
#[allow(clippy::too_many_arguments)]
async fn direct(
    data_dir: &Path,
    config: EmbeddedConfig,
    env: &RecoveryEnv,
    store: &Coordination,
    directing: &mut crate::coordinator::etcd::Directing,
    serving: &tokio::sync::watch::Sender<Serving>,
    stages: &tokio::sync::watch::Sender<Arc<Stages>>,
    mut shutdown: std::pin::Pin<&mut impl std::future::Future<Output = ()>>,
) -> Result<Ended> {
    let mut quick_failures = 0;
    loop {
        // A recovery is not cut short by a lost lease: dropped halfway it would leave what it
        // opened (storage files) open, and its failed logs unremoved. It ends, then stops.
        let (cluster, report) = tokio::select! {
            biased;
            () = &mut shutdown => return Ok(Ended::Stopped),
            started = EmbeddedCluster::start_with_env(data_dir, config, store, env) => started?,
        };
        let lost = tokio::select! {
            biased;
            e = directing.lost() => Some(e),
            () = std::future::ready(()) => None,
        };
        if let Some(e) = lost {
            tracing::error!(epoch = report.epoch.0, error = %e, "lost the director's lease while recovering; stopping the epoch");
            cluster.stop().await;
            return Ok(Ended::LeaseLost(e));
        }
        let started = tokio::time::Instant::now();
        stages.send_replace(Arc::new(cluster.stages()));
        serving.send_replace(Some((report.epoch, cluster.database())));
        tracing::info!(epoch = report.epoch.0, "serving");
        // Why the epoch ends: `Ok` to return with, or a stage's failure to recover from.
        let ended = loop {
            tokio::select! {
                biased;
                () = &mut shutdown => break Ok(Ended::Stopped),
                e = directing.lost() => {
                    tracing::error!(epoch = report.epoch.0, error = %e, "lost the director's lease; stopping the epoch");
                    break Ok(Ended::LeaseLost(e));
                }
                () = tokio::time::sleep(config.monitor_interval) => {
                    if let Err(e) = cluster.check_health().await {
                        tracing::warn!(epoch = report.epoch.0, error = %e, "a stage failed; ending the epoch");
                        break Err(e);
                    }
                }
            }
        };
        stages.send_replace(Arc::new(Stages::default()));
        serving.send_replace(None);
        cluster.stop().await;
        let failure = match ended {
            Ok(end) => return Ok(end),
            Err(failure) => failure,
        };
        if started.elapsed() < Duration::from_secs(1) {
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
