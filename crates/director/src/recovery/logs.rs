//! The log phases of a recovery: lock the previous generation (phase 3), choose the recovery
//! version from what it holds (phase 4), recruit the new generation and replay into it what
//! the storage servers still need (phase 5), and remove a failed attempt's new logs.

use std::path::Path;
use std::sync::Arc;

use strata_core::{Error, ErrorKind, LogId, LogServer, LogState, Result, Stage, Version};
use strata_net::{NewLog, RemoteWorker, Role};
use strata_tlog::OpenMode;

use super::replay::{choose_source, replay};
use super::{
    Attempt, Claim, Inspected, RecoveryEnv, RecoveryError, error, unrecoverable_if_damaged,
};
use crate::HeldLog;
use crate::config::EmbeddedConfig;
use crate::coordinator::{LogPlace, StateStore};
use crate::workers::{Answered, WorkerLog, WorkerPlace, create_on_worker};

/// The logs of the new generation, and the registered workers that answered the recovery's
/// probe (`None` when this process reaches no workers), for the next phases to recruit from.
pub(crate) struct NewLogs {
    pub(super) places: Vec<LogPlace>,
    pub(crate) logs: Vec<Arc<dyn HeldLog>>,
    pub(super) answered: Option<Answered>,
}

/// Failed attempts clean up what they created: the new logs, until the coordinated state
/// names them, are referred to by nothing. (Once it names them they hold the epoch's history
/// and stay.) Whether it names them is read from the store itself, not assumed from the
/// attempt's progress: a write of the state can fail after the new state is in place (a
/// failed directory sync after the rename), and then the logs must stay. The logs created on
/// workers are left to the workers' next sweep, which removes them by the same rule (see
/// [`crate::workers::LogWorker`]).
pub(super) fn remove_unrecorded(data_dir: &Path, store: &dyn StateStore, logs: &NewLogs) {
    for log in &logs.logs {
        log.close();
    }
    match store.read() {
        Ok(Some(state)) if state.logs.iter().all(|named| !logs.places.contains(named)) => {}
        Ok(None) => {}
        named_or_unknown => {
            tracing::warn!(
                state = ?named_or_unknown.map(|s| s.map(|s| s.logs)),
                "keeping a failed attempt's logs: the coordinated state may name them"
            );
            return;
        }
    }
    for place in logs.places.iter().filter(|p| p.at.is_none()) {
        let path = data_dir.join(&place.dir);
        if let Err(e) = std::fs::remove_dir_all(&path) {
            tracing::warn!(dir = %path.display(), error = %e, "cannot remove a failed attempt's log");
        }
    }
    if let Err(e) = sync_dir(&data_dir.join("logs")) {
        tracing::warn!(error = %e, "cannot sync the logs directory");
    }
}

/// A log of the previous generation, locked by this epoch.
pub(super) struct OldLog {
    place: LogPlace,
    pub(super) log: Arc<dyn HeldLog>,
    state: LogState,
}

/// Phase 3: locks the previous logs with the new epoch, so older epochs can push no more, and
/// learns what each holds once the pushes accepted before the lock have landed.
pub(super) async fn lock_previous_logs(
    env: &RecoveryEnv,
    inspected: &Inspected,
    claim: &Claim,
) -> Attempt<Vec<OldLog>> {
    let mut out = Vec::new();
    for (place, log) in &inspected.logs {
        // A log found damaged as it is taken (see `HeldLog::take`) stops recovery.
        log.take(claim.epoch).await.map_err(|e| match e.kind {
            ErrorKind::Corruption(_) => RecoveryError::Unrecoverable(e),
            _ => RecoveryError::Attempt(e),
        })?;
        let state = env.reach(log).lock(claim.epoch).await?;
        out.push(OldLog {
            place: place.clone(),
            log: log.clone(),
            state,
        });
    }
    Ok(out)
}

/// Phase 4: the newest version every previous log holds. A commit is acknowledged only once
/// all logs hold it, so nothing newer was acknowledged. (Phase 1 checked it is not below the
/// recovery version recorded by the recovery before; locking only lets it grow.)
pub(super) fn choose_recovery_version(old: &[OldLog]) -> Version {
    old.iter()
        .map(|o| o.state.last_version)
        .min()
        .unwrap_or(Version::ZERO)
}

/// Makes the creations and removals in `dir` durable.
pub(super) fn sync_dir(dir: &Path) -> Result<()> {
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| Error::io(Stage::Director, e))
}

/// Phase 5: recruits the new logs, anchored where the copied history starts, and replays into
/// them the committed history the storage servers still need: everything after the oldest
/// durable version of all of them. If it fails, the logs it created are removed.
#[expect(clippy::too_many_arguments)] // NOTE: the outputs of the earlier phases, passed on.
pub(super) async fn recruit_logs(
    env: &RecoveryEnv,
    data_dir: &Path,
    store: &dyn StateStore,
    claim: &Claim,
    config: &EmbeddedConfig,
    inspected: &Inspected,
    old: &[OldLog],
    recovery_version: Version,
) -> Attempt<NewLogs> {
    let base = inspected
        .durable
        .iter()
        .copied()
        .fold(recovery_version, Version::min);
    let sources: Vec<(String, Arc<dyn HeldLog>)> = old
        .iter()
        .map(|o| (o.place.dir.clone(), o.log.clone()))
        .collect();
    let source = choose_source(&sources, base, recovery_version)
        .await
        .map_err(unrecoverable_if_damaged)?;

    let logs_dir = data_dir.join("logs");
    std::fs::create_dir_all(&logs_dir).map_err(|e| Error::io(Stage::Director, e))?;
    sync_dir(data_dir)?;
    let epoch = claim.epoch;
    let mut created = NewLogs {
        places: Vec::new(),
        logs: Vec::new(),
        // Every registered worker is probed at once, whatever its role.
        answered: match &env.access {
            Some(access) => {
                let candidates = crate::workers::registered(store);
                let probe_timeout = config.probe_timeout;
                Some(Answered::probe(candidates, access, probe_timeout, &env.passed_over).await)
            }
            None => None,
        },
    };
    let mut log_workers = created
        .answered
        .as_mut()
        .map(|a| a.take_role(Role::Log))
        .unwrap_or_default()
        .into_iter();
    let recruited = async {
        for i in 0..config.logs {
            let dir = format!("logs/{}-{i}", epoch.0);
            let id = LogId(epoch.0 * 1_000 + u64::try_from(i).unwrap_or(0));
            let order = NewLog {
                epoch,
                token: claim.token.clone(),
                id,
                dir: dir.clone(),
                anchor: source.anchor,
                admit_above: recovery_version,
            };
            if let Some(log) = create_on_a_worker(env, config, &mut log_workers, order).await {
                created.places.push(log.place().clone());
                let log: Arc<dyn HeldLog> = Arc::new(log);
                created.logs.push(log.clone());
                env.reach(&log).lock(epoch).await?;
                continue;
            }
            let path = data_dir.join(&dir);
            if path.exists() {
                // Phase 1 refused log directories of epochs after the state's, and this epoch
                // was claimed after it: a directory here was not made by Strata. Never remove it.
                return Err(RecoveryError::Unrecoverable(error(ErrorKind::Corruption(
                    format!(
                        "{} exists, but {epoch} was only claimed now",
                        path.display()
                    ),
                ))));
            }
            let log: Arc<dyn HeldLog> =
                env.open_log(&path, id, OpenMode::Create(source.anchor), config.log)?;
            created.places.push(LogPlace { id, dir, at: None });
            created.logs.push(log.clone());
            env.reach(&log).lock(epoch).await?;
        }
        sync_dir(&logs_dir)?;
        if let Some((dir, log)) = &source.log {
            let targets: Vec<Arc<dyn LogServer>> =
                created.logs.iter().map(|l| env.reach(l)).collect();
            replay(
                env.reach(log).as_ref(),
                &targets,
                epoch,
                base,
                recovery_version,
                config.log.queue_bytes_max / 2,
            )
            .await
            .map_err(|e| {
                tracing::error!(log = %dir, error = %e, "replay failed");
                unrecoverable_if_damaged(e)
            })?;
        }
        Ok(())
    }
    .await;
    match recruited {
        Ok(()) => Ok(created),
        Err(e) => {
            remove_unrecorded(data_dir, store, &created);
            Err(e)
        }
    }
}

/// Creates the log `order` names on the next of `workers` that can (each tried once; one that
/// fails is passed over for a while); `None` when none could, and the log is made here.
async fn create_on_a_worker(
    env: &RecoveryEnv,
    config: &EmbeddedConfig,
    workers: &mut impl Iterator<Item = (WorkerPlace, RemoteWorker)>,
    order: NewLog,
) -> Option<WorkerLog> {
    let access = env.access.as_ref()?.clone().with_token(order.token.clone());
    for worker in workers.by_ref() {
        let address = worker.0.address.clone();
        let created = create_on_worker(
            worker,
            order.clone(),
            &access,
            &env.passed_over,
            config.probe_timeout,
        )
        .await;
        match created {
            Ok(log) => {
                tracing::info!(%address, dir = order.dir, "log created on a worker");
                return Some(log);
            }
            Err(e) => {
                tracing::warn!(%address, error = %e, "a log worker could not create a log; passed over");
            }
        }
    }
    None
}
