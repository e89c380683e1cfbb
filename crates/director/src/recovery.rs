//! One recovery attempt: the director's phases, ending with the persistence phase.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use serde::Serialize;
use strata_commit_proxy::BatchingProxy;
use strata_core::system::{
    BeginKey, ClusterConfig, RecoveryRecord, SystemConfig, TransactionSystemLayout, keys,
};
use strata_core::{
    CommitProxy, Epoch, Error, ErrorKind, Key, LogId, LogServer, Mutation, Resolver, Result,
    Sequencer, Stage, StorageServer, Version, printable,
};
use strata_resolver::{ResolverConfig, WindowResolver};
use strata_sequencer::ClockSequencer;
use strata_storage::{RedbStorage, StorageConfig, durable_version_at};
use strata_tlog::FileLog;
use strata_txn_builder::Database;
use tracing::Instrument;

use crate::coordinator::{CoordinatedState, LogPlace, STATE_FORMAT, StateStore};
use crate::faults::{
    Faults, FaultyLog, FaultyProxy, FaultyResolver, FaultySequencer, FaultyStorage,
};
use crate::{EmbeddedCluster, EmbeddedConfig, split_begins, split_ranges};

fn error(kind: ErrorKind) -> Error {
    Error::new(Stage::Director, kind)
}

/// How long one phase took.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct PhaseTiming {
    /// The phase's name, as in the `tracing` span.
    pub phase: &'static str,
    /// Its duration in microseconds.
    pub micros: u64,
}

/// What a recovery did, for the `strata recover` report.
#[derive(Clone, Debug, Serialize)]
pub struct RecoveryReport {
    /// The epoch the cluster now runs under.
    pub epoch: Epoch,
    /// The version the cluster was rolled back to.
    pub recovery_version: Version,
    /// The commit version of the persistence phase's system transaction.
    pub system_commit_version: Version,
    /// Each phase with its duration, in order.
    pub phases: Vec<PhaseTiming>,
    /// The monolithic key written.
    pub monolithic_key: String,
    /// The decomposed keys written, printable, in key order.
    pub decomposed_keys: Vec<String>,
    /// The configuration written.
    #[serde(skip)]
    pub config: SystemConfig,
}

struct Phases(Vec<PhaseTiming>);

impl Phases {
    /// Runs `body` as the phase `name`: a tracing span with its duration recorded.
    async fn run<T>(
        &mut self,
        name: &'static str,
        body: impl std::future::Future<Output = Result<T>>,
    ) -> Result<T> {
        let started = Instant::now();
        let result = body
            .instrument(tracing::info_span!("recovery phase", phase = name))
            .await;
        let micros = u64::try_from(started.elapsed().as_micros()).unwrap_or(u64::MAX);
        tracing::info!(phase = name, micros, ok = result.is_ok(), "phase done");
        self.0.push(PhaseTiming {
            phase: name,
            micros,
        });
        result
    }
}

/// What recovery attempts of one process share: the logs it has open (a log directory is
/// opened once per process, so a lock taken by a later epoch reaches every handle of an earlier
/// one) and, in tests, the fault switchboard whose decorators wrap the new stages.
#[derive(Clone, Default)]
pub struct RecoveryEnv {
    /// Armed faults, injected through decorators around every stage the pipeline uses.
    pub faults: Option<Arc<Faults>>,
    logs: Arc<Mutex<HashMap<PathBuf, Weak<FileLog>>>>,
}

impl RecoveryEnv {
    /// An environment with the fault switchboard `faults`.
    pub fn with_faults(faults: Arc<Faults>) -> RecoveryEnv {
        RecoveryEnv {
            faults: Some(faults),
            ..RecoveryEnv::default()
        }
    }

    fn open_log(
        &self,
        dir: &Path,
        id: LogId,
        start: Version,
        config: strata_tlog::FileLogConfig,
    ) -> Result<Arc<FileLog>> {
        let mut logs = self
            .logs
            .lock()
            .map_err(|_| error(ErrorKind::Unavailable("log registry poisoned".into())))?;
        if let Some(log) = logs.get(dir).and_then(Weak::upgrade) {
            return Ok(log);
        }
        let log = Arc::new(FileLog::open(dir, id, start, config)?);
        logs.insert(dir.to_owned(), Arc::downgrade(&log));
        Ok(log)
    }
}

/// Runs one recovery of the cluster in `data_dir` under a new epoch, through the persistence
/// phase. Any error ends the attempt at once (nothing is retried within an epoch); the caller
/// (the coordinator loop in [`EmbeddedCluster::start`]) starts the next epoch.
pub async fn recover(
    data_dir: &Path,
    config: EmbeddedConfig,
    store: &dyn StateStore,
    env: &RecoveryEnv,
) -> Result<(EmbeddedCluster, RecoveryReport)> {
    let mut phases = Phases(Vec::new());

    // 1. Read the coordinated state, take the next epoch and write it: fencing starts here.
    let (previous, epoch, generation) = phases
        .run("read_and_lock_coordinated_state", async {
            let previous = store.read()?;
            let epoch = previous.as_ref().map_or(Epoch(0), |s| s.epoch).next();
            let generation = previous.as_ref().map_or(0, |s| s.generation);
            if let Some(p) = &previous
                && p.storage != config.storage
            {
                return Err(error(ErrorKind::InvalidRequest(format!(
                    "this data directory has {} storage servers; re-sharding to {} is not supported",
                    p.storage, config.storage
                ))));
            }
            let claimed = CoordinatedState {
                format: STATE_FORMAT,
                generation,
                epoch,
                logs: previous.as_ref().map_or_else(Vec::new, |s| s.logs.clone()),
                storage: config.storage,
                recovery_version: previous.as_ref().map_or(Version::ZERO, |s| s.recovery_version),
            };
            let written = store.compare_and_swap(generation, claimed)?;
            Ok((previous, epoch, written.generation))
        })
        .await?;

    // 2. Lock the previous generation's logs with the new epoch; learn what each holds.
    let old_logs: Vec<(LogPlace, Arc<FileLog>, Version)> = phases
        .run("lock_previous_logs", async {
            let mut out = Vec::new();
            for place in previous.as_ref().map_or(&[][..], |s| &s.logs[..]) {
                let log = env.open_log(
                    &data_dir.join(&place.dir),
                    place.id,
                    Version::ZERO,
                    config.log,
                )?;
                let state = log.lock(epoch).await?;
                out.push((place.clone(), log, state.last_version));
            }
            Ok(out)
        })
        .await?;

    // 3. The recovery version: the newest version every previous log holds. A commit is
    // acknowledged only once all logs hold it, so nothing newer was acknowledged.
    let recovery_version = phases
        .run("choose_recovery_version", async {
            Ok(old_logs
                .iter()
                .map(|(_, _, last)| *last)
                .min()
                .unwrap_or(Version::ZERO))
        })
        .await?;

    // 4. Recruit new logs and copy the committed history the storage servers still need.
    let storage_paths: Vec<_> = (0..config.storage)
        .map(|i| data_dir.join("storage").join(format!("{i}.redb")))
        .collect();
    let (new_places, new_logs) = phases
        .run("recruit_logs_and_replay", async {
            let mut base = recovery_version;
            for path in &storage_paths {
                let path = path.clone();
                let durable = tokio::task::spawn_blocking(move || durable_version_at(&path))
                    .await
                    .map_err(|e| error(ErrorKind::Unavailable(e.to_string())))??;
                base = base.min(durable);
            }
            let mut places = Vec::new();
            let mut logs = Vec::new();
            for i in 0..config.logs {
                let dir = format!("logs/{}-{i}", epoch.0);
                let path = data_dir.join(&dir);
                if path.exists() {
                    // Left by an earlier attempt of this same epoch number that never wrote its
                    // coordinated state: nothing refers to it.
                    std::fs::remove_dir_all(&path).map_err(|e| Error::io(Stage::Director, e))?;
                }
                let id = LogId(epoch.0 * 1_000 + u64::try_from(i).unwrap_or(0));
                let log = env.open_log(&path, id, base, config.log)?;
                log.lock(epoch).await?;
                places.push(LogPlace { id, dir });
                logs.push(log);
            }
            if let Some((place, source, _)) = old_logs.first() {
                replay(source.as_ref(), &logs, epoch, base, recovery_version)
                    .await
                    .map_err(|e| {
                        tracing::error!(log = %place.dir, error = %e, "replay failed");
                        e
                    })?;
            }
            Ok((places, logs))
        })
        .await?;
    let log_servers: Vec<Arc<dyn LogServer>> = new_logs
        .iter()
        .map(|l| l.clone() as Arc<dyn LogServer>)
        .collect();
    // What the commit path sees of the logs: the logs themselves, or decorators in tests.
    let pushed_logs: Vec<Arc<dyn LogServer>> = match &env.faults {
        Some(f) => log_servers
            .iter()
            .map(|l| Arc::new(FaultyLog(l.clone(), f.clone())) as Arc<dyn LogServer>)
            .collect(),
        None => log_servers.clone(),
    };

    // 5. Storage servers follow the new logs, rolled back to the recovery version.
    let storage = phases
        .run("roll_back_storage", async {
            std::fs::create_dir_all(data_dir.join("storage"))
                .map_err(|e| Error::io(Stage::Director, e))?;
            let mut servers = Vec::new();
            for (i, (range, path)) in split_ranges(config.storage)?
                .into_iter()
                .zip(&storage_paths)
                .enumerate()
            {
                let followers = (0..config.storage)
                    .filter(|j| j % config.logs == i % config.logs)
                    .count();
                let storage_config = StorageConfig {
                    pop_log: config.storage_config.pop_log && followers == 1,
                    ..config.storage_config
                };
                let server = RedbStorage::open(
                    path,
                    vec![range],
                    log_servers[i % config.logs].clone(),
                    storage_config,
                )
                .await?;
                server.roll_back(recovery_version).await?;
                servers.push(Arc::new(server));
            }
            // Storage keeps the last MVCC window in memory only, so after a restart it
            // re-applies up to a window of history from the new logs. Wait for that here, with
            // its own bound, so the persistence phase's deadline measures the phase itself.
            let caught_up = async {
                for s in &servers {
                    s.wait_applied(recovery_version).await?;
                }
                Ok::<(), Error>(())
            };
            match tokio::time::timeout(config.storage_catch_up, caught_up).await {
                Ok(result) => result?,
                Err(_) => {
                    for s in &servers {
                        s.close().await;
                    }
                    return Err(Error::new(
                        Stage::Storage,
                        ErrorKind::Timeout {
                            what: format!("storage to re-apply history up to {recovery_version}"),
                            after_ms: u64::try_from(config.storage_catch_up.as_millis())
                                .unwrap_or(u64::MAX),
                        },
                    ));
                }
            }
            Ok(servers)
        })
        .await?;

    // From here on the storage servers are open: a failure must close them before the
    // director exits, so that the next epoch can open them again.
    let outcome = async {
        // 6. Sequencer past the recovery version, then resolvers and commit proxies.
        let (sequencer, versions, batching, proxies) = phases
            .run("start_transaction_system", async {
                let sequencer = Arc::new(ClockSequencer::new(epoch, recovery_version));
                let versions: Arc<dyn Sequencer> = match &env.faults {
                    Some(f) => Arc::new(FaultySequencer(sequencer.clone(), f.clone())),
                    None => sequencer.clone(),
                };
                let resolvers: Vec<(Key, Arc<dyn Resolver>)> = split_begins(config.resolvers)
                    .into_iter()
                    .map(|begin| {
                        let mut r: Arc<dyn Resolver> = Arc::new(WindowResolver::new(
                            epoch,
                            recovery_version,
                            ResolverConfig::default(),
                        ));
                        if let Some(f) = &env.faults {
                            r = Arc::new(FaultyResolver(r, f.clone()));
                        }
                        (begin, r)
                    })
                    .collect();
                let mut proxies: Vec<Arc<dyn CommitProxy>> = Vec::new();
                let mut batching = Vec::new();
                for _ in 0..config.proxies {
                    let raw = Arc::new(BatchingProxy::new(
                        epoch,
                        versions.clone(),
                        resolvers.clone(),
                        pushed_logs.clone(),
                        config.proxy,
                    )?);
                    batching.push(raw.clone());
                    let proxy: Arc<dyn CommitProxy> = raw;
                    proxies.push(match &env.faults {
                        Some(f) => FaultyProxy::wrap(proxy, f),
                        None => proxy,
                    });
                }
                Ok((sequencer, versions, batching, proxies))
            })
            .await?;
        let readable: Vec<Arc<dyn StorageServer>> = storage
            .iter()
            .map(|s| match &env.faults {
                Some(f) => Arc::new(FaultyStorage(s.clone(), f.clone())) as Arc<dyn StorageServer>,
                None => s.clone() as Arc<dyn StorageServer>,
            })
            .collect();
        let database = Database::new(sequencer.clone(), proxies.clone(), readable, config.retry)?;

        // 7. The Transaction System Layout of this epoch.
        let layout = phases
            .run("build_layout", async {
                Ok(TransactionSystemLayout {
                    id: epoch.0,
                    epoch,
                    sequencer: "sequencer-0".into(),
                    commit_proxies: (0..config.proxies).map(|i| format!("proxy-{i}")).collect(),
                    resolvers: split_begins(config.resolvers)
                        .into_iter()
                        .enumerate()
                        .map(|(i, b)| (BeginKey(b), format!("resolver-{i}")))
                        .collect(),
                    logs: new_places.iter().map(|p| (p.id, p.dir.clone())).collect(),
                    storage_teams: split_begins(config.storage)
                        .into_iter()
                        .enumerate()
                        .map(|(i, b)| (BeginKey(b), vec![format!("storage-{i}")]))
                        .collect(),
                    services: BTreeMap::new(),
                })
            })
            .await?;

        // 8. The new coordinated state: a later recovery finds these logs.
        phases
            .run("write_coordinated_state", async {
                store.compare_and_swap(
                    generation,
                    CoordinatedState {
                        format: STATE_FORMAT,
                        generation,
                        epoch,
                        logs: new_places.clone(),
                        storage: config.storage,
                        recovery_version,
                    },
                )?;
                // The old generation is unreachable now; its logs go, and so do logs that
                // attempts interrupted before this point left behind (nothing refers to them).
                drop(old_logs);
                let keep: Vec<PathBuf> = new_places.iter().map(|p| data_dir.join(&p.dir)).collect();
                if let Ok(entries) = std::fs::read_dir(data_dir.join("logs")) {
                    for entry in entries.flatten() {
                        let path = entry.path();
                        if path.is_dir() && !keep.contains(&path) {
                            tracing::debug!(dir = %path.display(), "removing an unreferenced log");
                            let _ = std::fs::remove_dir_all(&path);
                        }
                    }
                }
                Ok(())
            })
            .await?;

        // 9. The persistence phase.
        let deadline = config.persistence_deadline;
        let (system_commit_version, system) = phases
            .run("persistence_phase", async {
                let persisted = persist(&database, &storage, layout, recovery_version);
                match tokio::time::timeout(deadline, persisted).await {
                    Ok(result) => result,
                    Err(_) => Err(error(ErrorKind::Timeout {
                        what: "the persistence phase".into(),
                        after_ms: u64::try_from(deadline.as_millis()).unwrap_or(u64::MAX),
                    })),
                }
            })
            .await?;

        let report = RecoveryReport {
            epoch,
            recovery_version,
            system_commit_version,
            phases: phases.0,
            monolithic_key: printable(&keys::config()),
            decomposed_keys: system
                .decomposed()
                .map_err(|e| error(ErrorKind::InvalidRequest(e.to_string())))?
                .iter()
                .map(|(k, _)| printable(k))
                .collect(),
            config: system,
        };
        let cluster = EmbeddedCluster {
            epoch,
            start_version: recovery_version,
            sequencer,
            versions,
            logs: new_logs,
            storage: storage.clone(),
            batching,
            proxies,
            database,
        };
        Ok((cluster, report))
    }
    .await;
    if outcome.is_err() {
        for s in &storage {
            s.close().await;
        }
    }
    outcome
}

/// Copies the entries of `source` in `(base, through]` into every new log. The pushes of a
/// page are issued together, so each log's group commit syncs them in a few groups instead of
/// once per entry.
async fn replay(
    source: &FileLog,
    targets: &[Arc<FileLog>],
    epoch: Epoch,
    base: Version,
    through: Version,
) -> Result<()> {
    let mut after = base;
    while after < through {
        let page = source.pull(after, 1_000).await?;
        if page.is_empty() {
            return Err(error(ErrorKind::Corruption(format!(
                "the previous logs end before {through}, after {after}"
            ))));
        }
        let mut pushes = tokio::task::JoinSet::new();
        for entry in page.into_iter().take_while(|e| e.version <= through) {
            for log in targets {
                let (log, entry) = (log.clone(), entry.clone());
                pushes.spawn(async move {
                    log.push(epoch, entry.previous_version, entry.version, entry.payload)
                        .await
                });
            }
            after = entry.version;
        }
        while let Some(pushed) = pushes.join_next().await {
            pushed.map_err(|e| error(ErrorKind::Unavailable(format!("replay task: {e}"))))??;
        }
    }
    Ok(())
}

/// The persistence phase: one system transaction holding the whole configuration, committed
/// through the new pipeline, then read back through a fresh transaction and compared.
async fn persist(
    db: &Database,
    storage: &[Arc<RedbStorage>],
    layout: TransactionSystemLayout,
    recovery_version: Version,
) -> Result<(Version, SystemConfig)> {
    let config_error =
        |e: strata_core::system::ConfigError| error(ErrorKind::Corruption(e.to_string()));
    let tx = db.begin().await?;
    // The configuration the previous coordinator wrote, read from the monolithic key: the
    // handoff from one generation to the next.
    let cluster = match tx.snapshot_get(&keys::config()).await? {
        Some(value) => {
            SystemConfig::from_monolithic(&value)
                .map_err(config_error)?
                .cluster
        }
        None => ClusterConfig {
            coordinators: vec!["embedded".into()],
            ..ClusterConfig::default()
        },
    };
    let epoch = layout.epoch;
    let system = SystemConfig {
        cluster,
        layout,
        last_completed: RecoveryRecord {
            epoch,
            recovery_version,
        },
    };
    for m in system.mutations().map_err(config_error)? {
        match m {
            Mutation::Set { key, value } => tx.set(key, value),
            Mutation::Clear { key } => tx.clear(key),
            Mutation::ClearRange { range } => tx.clear_range(range),
        }
    }
    let version = tx.commit().await?;

    // Wait until the storage servers have applied it (the phase's deadline bounds this), so
    // the read back below does not depend on how long a single read may wait.
    for s in storage {
        s.wait_applied(version).await?;
    }
    // Read it back through a fresh transaction.
    let check = db.begin().await?;
    if check.read_version() < version {
        return Err(error(ErrorKind::InvalidRequest(format!(
            "read version {} is older than the system transaction at {version}",
            check.read_version()
        ))));
    }
    let monolithic = check.snapshot_get(&keys::config()).await?.ok_or_else(|| {
        error(ErrorKind::Corruption(
            "the monolithic key is missing".into(),
        ))
    })?;
    let mut pairs = Vec::new();
    for range in [keys::cluster_range(), keys::layout_range()] {
        pairs.extend(check.snapshot_get_range(&range, 100_000, false).await?);
    }
    let last = keys::recovery_last_completed();
    if let Some(v) = check.snapshot_get(&last).await? {
        pairs.push((last, v));
    }
    let from_monolithic = SystemConfig::from_monolithic(&monolithic).map_err(config_error)?;
    let from_decomposed = SystemConfig::from_decomposed(pairs).map_err(config_error)?;
    if from_monolithic != system || from_decomposed != system {
        return Err(error(ErrorKind::Corruption(
            "the configuration read back differs from the one written".into(),
        )));
    }
    tracing::info!(
        version = version.0,
        epoch = epoch.0,
        "persistence phase complete"
    );
    Ok((version, system))
}

/// Waits `duration`, for the coordinator's backoff between attempts.
pub(crate) async fn backoff(attempt: u32) {
    let millis = 10u64.saturating_mul(1 << attempt.min(8));
    tokio::time::sleep(Duration::from_millis(millis.min(1_000))).await;
}
