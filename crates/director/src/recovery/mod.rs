//! One recovery attempt: the director's phases, ending with the persistence phase.
//!
//! [`recover`] reads as the list of phases; each phase is a function with typed inputs and
//! outputs, run as a `tracing` span with its duration recorded:
//!
//! | phase                    | function                    | gives                                   |
//! |--------------------------|-----------------------------|-----------------------------------------|
//! | check_data_directory     | `inspect_directory`       | the state, the previous logs opened, storage durable versions, all checked |
//! | claim_epoch              | `claim_epoch`             | the new epoch, written (fencing starts) |
//! | lock_previous_logs       | `lock_previous_logs`      | the old logs, locked                    |
//! | choose_recovery_version  | `choose_recovery_version` | the recovery version                    |
//! | recruit_logs_and_replay  | `recruit_logs`            | the new logs, history copied            |
//! | roll_back_storage        | `open_storage`            | storage servers at the recovery version |
//! | start_transaction_system | `start_pipeline`          | sequencer, resolvers, proxies           |
//! | build_layout             | `build_layout`            | the Transaction System Layout           |
//! | write_coordinated_state  | `write_state`             | the new generation recorded             |
//! | persistence_phase        | `persist`                 | the system transaction, read back       |
//!
//! Nothing is written before `claim_epoch`: a directory whose state disagrees with what is on
//! disk is refused with every file as it was. A failed attempt removes the logs it created
//! until the coordinated state names them.
//!
//! Errors are [`RecoveryError`]s: `Unrecoverable` when the configuration or the data directory
//! can never work (the coordinator stops), `Attempt` otherwise (the coordinator starts the next
//! epoch). Nothing is retried within an epoch.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use serde::Serialize;
use strata_core::buggify;
use strata_core::system::{BeginKey, SystemConfig, TransactionSystemLayout, keys};
use strata_core::{Epoch, Error, ErrorKind, Stage, Version, printable};
use tracing::Instrument;

use crate::HeldLog;
use crate::check::{check_directory, read_holdings};
use crate::cluster::{EmbeddedCluster, Watermark};
use crate::config::EmbeddedConfig;
use crate::coordinator::{CoordinatedState, LogPlace, STATE_FORMAT, StateStore};
use crate::owner::{DirectoryLock, lock_directory};
use crate::split_begins;

mod env;
mod logs;
pub(crate) mod persistence;
mod pipeline;
pub(crate) mod replay;
mod storage;

pub use env::RecoveryEnv;
use env::ToRecover;

use logs::{
    NewLogs, OldLog, choose_recovery_version, lock_previous_logs, recruit_logs, remove_unrecorded,
    sync_dir,
};
use persistence::persist_within_deadline;
use pipeline::start_pipeline;

pub(super) fn error(kind: ErrorKind) -> Error {
    Error::new(Stage::Director, kind)
}

/// Why a recovery attempt failed, and whether another epoch could do better.
#[derive(Clone, Debug)]
pub enum RecoveryError {
    /// The configuration or the data directory can never work (a refused layout, a log the
    /// coordinated state names that is gone, history no log holds): the coordinator stops.
    Unrecoverable(Error),
    /// This attempt failed; the coordinator starts the next epoch.
    Attempt(Error),
}

impl RecoveryError {
    /// The error, whichever kind of failure it is.
    pub fn error(&self) -> &Error {
        match self {
            RecoveryError::Unrecoverable(e) | RecoveryError::Attempt(e) => e,
        }
    }

    /// Whether a new epoch cannot fix it.
    pub fn is_unrecoverable(&self) -> bool {
        matches!(self, RecoveryError::Unrecoverable(_))
    }
}

impl std::fmt::Display for RecoveryError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.error().fmt(f)
    }
}

impl std::error::Error for RecoveryError {}

impl std::ops::Deref for RecoveryError {
    type Target = Error;
    fn deref(&self) -> &Error {
        self.error()
    }
}

/// A failure of this attempt: the default, so that only what is named unrecoverable stops the
/// coordinator.
impl From<Error> for RecoveryError {
    fn from(e: Error) -> RecoveryError {
        RecoveryError::Attempt(e)
    }
}

impl From<RecoveryError> for Error {
    fn from(e: RecoveryError) -> Error {
        match e {
            RecoveryError::Unrecoverable(e) | RecoveryError::Attempt(e) => e,
        }
    }
}

/// Damage found in the data directory cannot be fixed by a new epoch; anything else can.
pub(super) fn unrecoverable_if_damaged(e: Error) -> RecoveryError {
    // A state that is damaged, or that refuses this directory (another one holds the cluster):
    // no other attempt reads anything else.
    if matches!(
        e.kind,
        ErrorKind::Corruption(_) | ErrorKind::InvalidRequest(_)
    ) {
        RecoveryError::Unrecoverable(e)
    } else {
        RecoveryError::Attempt(e)
    }
}

pub(super) type Attempt<T> = std::result::Result<T, RecoveryError>;

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

#[derive(Default)]
struct Phases(Vec<PhaseTiming>);

impl Phases {
    /// Runs `body` as the phase `name`: a tracing span with its duration recorded.
    async fn run<T>(
        &mut self,
        name: &'static str,
        body: impl std::future::Future<Output = Attempt<T>>,
    ) -> Attempt<T> {
        if buggify::fires("recovery.phase.slow") {
            tokio::time::sleep(std::time::Duration::from_millis(1 + buggify::below(200))).await;
        }
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

/// Runs one recovery of the cluster in `data_dir` under a new epoch, through the persistence
/// phase. Any error ends the attempt at once (nothing is retried within an epoch); the caller
/// (the coordinator loop in [`EmbeddedCluster::start`]) starts the next epoch unless the error
/// is [`RecoveryError::Unrecoverable`].
pub async fn recover(
    data_dir: &Path,
    config: EmbeddedConfig,
    store: &dyn StateStore,
    env: &RecoveryEnv,
) -> Attempt<(EmbeddedCluster, RecoveryReport)> {
    // This process must own the directory before it reads anything (shared with whoever in
    // this process already does, such as the coordinator loop).
    let owner = lock_directory(data_dir, true)?;
    // This attempt's secret: the stages of its epoch that other processes reach answer only
    // calls that carry it (see `crate::workers`).
    let token = crate::workers::new_token()?;
    let mut phases = Phases::default();
    let inspected = phases
        .run(
            "check_data_directory",
            inspect_directory(env, data_dir, store, &config, &token),
        )
        .await?;
    let claim = phases
        .run(
            "claim_epoch",
            claim_epoch(store, &config, &inspected, env.served_at.as_deref(), token),
        )
        .await?;
    let old = phases
        .run(
            "lock_previous_logs",
            lock_previous_logs(env, &inspected, &claim),
        )
        .await?;
    let recovery_version = phases
        .run("choose_recovery_version", async {
            Ok(choose_recovery_version(&old))
        })
        .await?;
    let mut logs = phases
        .run(
            "recruit_logs_and_replay",
            recruit_logs(
                env,
                data_dir,
                store,
                &claim,
                &config,
                &inspected,
                &old,
                recovery_version,
            ),
        )
        .await?;
    let mut storage = match phases
        .run(
            "roll_back_storage",
            storage::open_storage(
                env,
                data_dir,
                &config,
                &claim,
                inspected.previous.as_ref(),
                &mut logs,
                recovery_version,
            ),
        )
        .await
    {
        Ok(storage) => storage,
        Err(e) => {
            remove_unrecorded(data_dir, store, &logs);
            return Err(e);
        }
    };
    // From here on the storage servers are open: a failure must close them before the
    // director exits, so that the next epoch can open them again.
    let mut recorded = false;
    let answered = logs.answered.take();
    let outcome = start_and_persist(
        &mut phases,
        data_dir,
        &config,
        store,
        env,
        &claim,
        old,
        (&logs, answered),
        &mut storage,
        recovery_version,
        &mut recorded,
        &owner,
    )
    .await;
    match outcome {
        Ok((cluster, mut report)) => {
            report.phases = phases.0;
            Ok((cluster, report))
        }
        Err(e) => {
            storage.close().await;
            if !recorded {
                remove_unrecorded(data_dir, store, &logs);
            }
            Err(e)
        }
    }
}

/// The phases after the storage servers are open, so [`recover`] can close them on failure.
#[expect(clippy::too_many_arguments)] // NOTE: the outputs of the earlier phases, passed on.
async fn start_and_persist(
    phases: &mut Phases,
    data_dir: &Path,
    config: &EmbeddedConfig,
    store: &dyn StateStore,
    env: &RecoveryEnv,
    claim: &Claim,
    old: Vec<OldLog>,
    (logs, answered): (&NewLogs, Option<crate::workers::Answered>),
    opened: &mut storage::OpenedStorage,
    recovery_version: Version,
    recorded: &mut bool,
    owner: &Arc<DirectoryLock>,
) -> Attempt<(EmbeddedCluster, RecoveryReport)> {
    let storage = &opened.servers[..];
    let storage_at = opened.places();
    let pipeline = phases
        .run(
            "start_transaction_system",
            start_pipeline(
                env,
                config,
                claim,
                recovery_version,
                logs,
                answered,
                storage,
            ),
        )
        .await?;
    // From now on the storage servers learn what is committed and the logs are popped.
    let watermark = Watermark::start(
        pipeline.sequencer.plain(),
        storage.to_vec(),
        logs.logs.clone(),
        config.watermark_interval,
    );
    let layout = phases
        .run("build_layout", async {
            Ok(build_layout(
                config,
                claim.epoch,
                &logs.places,
                env.served_at.as_deref(),
                &pipeline,
                &storage_at,
            ))
        })
        .await?;
    phases
        .run(
            "write_coordinated_state",
            write_state(
                data_dir,
                store,
                config,
                env,
                claim,
                old,
                (logs, storage_at),
                recovery_version,
            ),
        )
        .await?;
    *recorded = true;
    let persisted = phases
        .run(
            "persistence_phase",
            persist_within_deadline(&pipeline, storage, layout, recovery_version, config),
        )
        .await;
    if let Err(failed) = &persisted {
        // The first commit through the new pipeline is what tries the workers' stages: the
        // next attempts pass over the workers of the stage that failed it, which a
        // recruitment would otherwise hand the same broken stage again. Not the proxy
        // workers: the system transaction goes through the director's own proxies.
        let stage = failed.error().stage;
        if stage != Stage::CommitProxy {
            pipeline.pass_over_workers_of(stage);
        }
    }
    let (system_commit_version, system) = persisted?;
    // Only now, the recovery finished, may the proxies on workers push to the new logs.
    if let Some(published) = &pipeline.peers {
        published.open();
    }
    let report = RecoveryReport {
        epoch: claim.epoch,
        recovery_version,
        system_commit_version,
        phases: Vec::new(),
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
        epoch: claim.epoch,
        start_version: recovery_version,
        pipeline,
        logs: logs.logs.clone(),
        storage: storage.to_vec(),
        storage_logs: opened.published.take(),
        watermark,
        probe_timeout: config.probe_timeout,
        _owner: owner.clone(),
    };
    Ok((cluster, report))
}

/// What the directory holds, checked before anything is written: the coordinated state, the
/// previous generation's logs (open, not yet locked) and the storage servers' durable versions.
pub(super) struct Inspected {
    pub(super) previous: Option<CoordinatedState>,
    pub(super) logs: Vec<(LogPlace, Arc<dyn HeldLog>)>,
    pub(super) durable: Vec<Version>,
}

/// Phase 1: validate, then write. Checks the configuration, the coordinated state against the
/// directory ([`check_directory`]), opens the logs the state names (each must exist: a missing
/// or empty one is damage, never an empty log), and reads the storage servers' durable
/// versions: none may be above the version recovery can choose, nor that version below the one
/// the last recovery recorded. Any disagreement is unrecoverable, found before this attempt
/// writes anything. (Opening a log repairs a torn write at its end, as any open does.)
async fn inspect_directory(
    env: &RecoveryEnv,
    data_dir: &Path,
    store: &dyn StateStore,
    config: &EmbeddedConfig,
    token: &str,
) -> Attempt<Inspected> {
    config.validate().map_err(RecoveryError::Unrecoverable)?;
    let previous = store.read().map_err(unrecoverable_if_damaged)?;
    config
        .validate_against(previous.as_ref())
        .map_err(RecoveryError::Unrecoverable)?;
    if let Some(first) = check_directory(data_dir, previous.as_ref())
        .into_iter()
        .next()
    {
        return Err(RecoveryError::Unrecoverable(
            first.in_store(store).into_error(data_dir, None),
        ));
    }
    // Storage first, then the logs, each opened with the version known committed that it
    // must hold (see `read_holdings`); reading writes nothing.
    let held = read_holdings(
        data_dir,
        previous.as_ref(),
        config.storage,
        config.storage_config.blocking,
        &ToRecover {
            env,
            config: config.log,
            access: env.access.clone().map(|a| a.with_token(token)),
            probe_timeout: config.probe_timeout,
        },
    )
    .await?;
    if let Some((first, cause)) = held.findings.into_iter().next() {
        // Damage, unless it is an I/O error (the next epoch may read it) or another
        // coordinator took over and removed the logs this attempt read about.
        let e = first.in_store(store).into_error(data_dir, cause);
        return Err(superseded_or(store, previous.as_ref(), e));
    }
    let logs = held.logs;
    let durable = held.durable.into_iter().flatten().collect();
    Ok(Inspected {
        previous,
        logs,
        durable,
    })
}

/// A previous log that cannot be opened is damage, unless another coordinator took over since
/// the state was read (it removes the logs it replaced): then this attempt is merely fenced,
/// and the next one reads the newer state.
fn superseded_or(
    store: &dyn StateStore,
    read: Option<&CoordinatedState>,
    e: Error,
) -> RecoveryError {
    let generation = read.map_or(0, |s| s.generation);
    match store.read() {
        Ok(Some(now)) if now.generation != generation => RecoveryError::Attempt(Error::new(
            Stage::Coordinator,
            ErrorKind::Fenced {
                request: now.epoch,
                current: now.epoch,
            },
        )),
        _ => unrecoverable_if_damaged(e),
    }
}

/// The epoch this attempt claimed.
#[derive(Debug)]
pub(super) struct Claim {
    pub(super) epoch: Epoch,
    generation: u64,
    /// The attempt's secret, which the stages of its epoch that other processes reach ask of
    /// every call (the logs on workers, the stages published on the director's port for the
    /// cluster's processes).
    pub(super) token: String,
}

/// Phase 2: writes the next epoch into the coordinated state, with a compare-and-swap on the
/// generation read in phase 1: fencing starts here.
async fn claim_epoch(
    store: &dyn StateStore,
    config: &EmbeddedConfig,
    inspected: &Inspected,
    served_at: Option<&str>,
    token: String,
) -> Attempt<Claim> {
    let previous = inspected.previous.as_ref();
    // Phase 1 refused an epoch that cannot be followed.
    let epoch = previous.map_or(Epoch(0), |s| s.epoch).next();
    let generation = previous.map_or(0, |s| s.generation);
    let claimed = CoordinatedState {
        format: STATE_FORMAT,
        generation,
        epoch,
        logs: previous.map_or_else(Vec::new, |s| s.logs.clone()),
        storage: config.storage,
        recovery_version: previous.map_or(Version::ZERO, |s| s.recovery_version),
        resolvers: previous.and_then(|s| s.resolvers),
        proxies: previous.and_then(|s| s.proxies),
        // This epoch is served from here (from the end of the recovery): a client that finds
        // the previous epoch's address would wait on a process that is gone.
        served_at: served_at.map(str::to_owned),
        // Stamped by a store that keeps it (etcd's), not by recovery.
        home: None,
        token_digest: Some(crate::workers::token_digest(&token)),
        // Where the storage servers are stays as recorded until this epoch writes its state.
        storage_at: previous.map_or_else(Vec::new, |s| s.storage_at.clone()),
    };
    let written = store
        .compare_and_swap(generation, claimed)
        .map_err(|e| match e.kind {
            // The state's lock stayed held past its bound: another process has the directory
            // (or is stopped holding it). A new epoch would only wait again. (`Unavailable`,
            // a store's service busy or its answer lost, fails only this attempt.)
            ErrorKind::Timeout { .. } => RecoveryError::Unrecoverable(e),
            _ => RecoveryError::Attempt(e),
        })?;
    Ok(Claim {
        epoch,
        generation: written.generation,
        token,
    })
}

pub(super) fn millis(d: std::time::Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// Phase 8: the Transaction System Layout of this epoch.
///
/// Each stage is named by its kind and index (`proxy-1`), with the address other processes
/// reach it at when this process serves them (`proxy-1@127.0.0.1:4500`), or, for a stage
/// recruited on a worker, the worker's (the pipeline's `sequencer_at`, `resolvers_at` and
/// `proxies_at`; `storage_at` for the storage servers, by index); each log by its directory,
/// and by its address too when served.
fn build_layout(
    config: &EmbeddedConfig,
    epoch: Epoch,
    places: &[LogPlace],
    served_at: Option<&str>,
    pipeline: &crate::cluster::Pipeline,
    storage_at: &[Option<String>],
) -> TransactionSystemLayout {
    let sequencer_at = pipeline.sequencer_at.as_deref();
    let (resolvers_at, proxies_at) = (&pipeline.resolvers_at, &pipeline.proxies_at);
    let at = |name: String| match served_at {
        Some(address) => format!("{name}@{address}"),
        None => name,
    };
    TransactionSystemLayout {
        id: epoch.0,
        epoch,
        sequencer: match sequencer_at {
            Some(worker) => format!("sequencer-0@{worker}"),
            None => at("sequencer-0".into()),
        },
        commit_proxies: (0..config.proxies)
            .map(|i| {
                let name = format!("proxy-{i}");
                match proxies_at.get(i).and_then(Option::as_deref) {
                    Some(worker) => format!("{name}@{worker}"),
                    None => at(name),
                }
            })
            .collect(),
        resolvers: split_begins(config.resolvers)
            .into_iter()
            .enumerate()
            .map(|(i, b)| {
                let name = format!("resolver-{i}");
                match resolvers_at.get(i).and_then(Option::as_deref) {
                    Some(worker) => (BeginKey(b), format!("{name}@{worker}")),
                    None => (BeginKey(b), at(name)),
                }
            })
            .collect(),
        logs: places
            .iter()
            .map(|p| match &p.at {
                Some(worker) => (p.id, format!("{}@{worker}", p.dir)),
                None => (p.id, at(p.dir.clone())),
            })
            .collect(),
        storage_teams: split_begins(config.storage)
            .into_iter()
            .enumerate()
            .map(|(i, b)| {
                let name = format!("storage-{i}");
                match storage_at.get(i).and_then(Option::as_deref) {
                    Some(worker) => (BeginKey(b), vec![format!("{name}@{worker}")]),
                    None => (BeginKey(b), vec![at(name)]),
                }
            })
            .collect(),
        services: BTreeMap::new(),
    }
}

/// Phase 9: the new coordinated state, so a later recovery finds the new logs; then the old
/// generation, unreachable now, is closed and removed, with logs that interrupted attempts
/// left behind (nothing refers to them).
#[allow(clippy::too_many_arguments)] // one per input of the phase, each used once
async fn write_state(
    data_dir: &Path,
    store: &dyn StateStore,
    config: &EmbeddedConfig,
    env: &RecoveryEnv,
    claim: &Claim,
    old: Vec<OldLog>,
    (logs, storage_at): (&NewLogs, Vec<Option<String>>),
    recovery_version: Version,
) -> Attempt<()> {
    store.compare_and_swap(
        claim.generation,
        CoordinatedState {
            format: STATE_FORMAT,
            generation: claim.generation,
            epoch: claim.epoch,
            logs: logs.places.clone(),
            storage: config.storage,
            recovery_version,
            resolvers: Some(config.resolvers),
            proxies: Some(config.proxies),
            served_at: env.served_at.clone(),
            home: None,
            token_digest: Some(crate::workers::token_digest(&claim.token)),
            storage_at,
        },
    )?;
    // The state names the new logs: those on workers may take commits now.
    for log in &logs.logs {
        log.admit(claim.epoch).await?;
    }
    // The log workers remove what the state no longer names (the previous generation, a
    // failed attempt's logs).
    for log in old.iter().map(|o| &o.log).chain(&logs.logs) {
        log.sweep().await;
    }
    for o in &old {
        o.log.close();
    }
    drop(old);
    let keep: Vec<PathBuf> = logs
        .places
        .iter()
        .filter(|p| p.at.is_none())
        .map(|p| data_dir.join(&p.dir))
        .collect();
    let logs_dir = data_dir.join("logs");
    if let Ok(entries) = std::fs::read_dir(&logs_dir) {
        for entry in entries.flatten() {
            let path = entry.path();
            if path.is_dir() && !keep.contains(&path) {
                tracing::debug!(dir = %path.display(), "removing an unreferenced log");
                if let Err(e) = std::fs::remove_dir_all(&path) {
                    tracing::warn!(dir = %path.display(), error = %e, "cannot remove an old log");
                }
            }
        }
    }
    sync_dir(&logs_dir)?;
    Ok(())
}

/// Waits before the coordinator's next attempt: 20 ms, doubling with each attempt, at most 1 s.
pub(crate) async fn backoff(attempt: u32) {
    let millis = 10u64.saturating_mul(1 << attempt.min(8));
    tokio::time::sleep(std::time::Duration::from_millis(millis.min(1_000))).await;
}
