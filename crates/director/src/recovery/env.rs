//! What recovery attempts of one process share: the logs it has open, and what tests and the
//! simulation put between the recovery and the stages (faults, a disk, a network).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use strata_core::{ErrorKind, LogId, LogServer, Result, Version};
use strata_net::StoredStorage;
use strata_testkit::network::{NetLog, Network};
use strata_tlog::fs::{Fs, RealFs};
use strata_tlog::{FileLog, OpenMode};

use super::error;
use crate::HeldLog;
use crate::coordinator::LogPlace;
use crate::faults::{Faults, FaultyFs};
use crate::held_log::OpenLogs;

/// A log's name on a simulated network.
pub(super) fn log_role(id: LogId) -> String {
    format!("log-{}", id.0)
}

/// What recovery attempts of one process share: the logs it has open (a log directory is
/// opened once per process, so a lock taken by a later epoch reaches every handle of an earlier
/// one) and, in tests, the fault switchboard whose decorators wrap the new stages.
#[derive(Clone, Default)]
pub struct RecoveryEnv {
    /// Armed faults, injected through decorators around every stage the pipeline uses, and
    /// into the logs' file system (a failing sync).
    pub faults: Option<Arc<Faults>>,
    /// The file system the logs are opened through: `None` for the operating system's (under
    /// `faults`' failing sync, when there are faults). The simulation puts a disk here that
    /// remembers what was synced, to lose the rest in a power loss.
    pub log_fs: Option<Arc<dyn Fs>>,
    /// Where this process serves its stages to other processes (`host:port`, as `strata serve
    /// --listen` bound it), if it does: recorded in the coordinated state, where a client that
    /// knows the cluster by its cluster file finds it, and in the layout's names.
    pub served_at: Option<String>,
    /// How this process reaches worker processes (the cluster's id, and TLS credentials when
    /// the cluster uses TLS): with it, each recovery recruits registered workers for the roles
    /// they run (see [`crate::workers`]); `None` recruits none.
    pub access: Option<strata_net::Access>,
    /// Where this process serves its own stages to the cluster's processes (`strata serve
    /// --peer-listen`): with it (and `access`), each recovery also recruits commit proxies on
    /// registered workers, which reach the stages run here through it.
    pub peers: Option<crate::workers::PeerPort>,
    /// A simulated network the new stages are reached across (every call of the commit path,
    /// the clients', monitoring's and the storage servers' pulls), as if each stage ran in a
    /// process of its own; `None` calls them directly. The simulation puts one here.
    pub network: Option<Arc<Network>>,
    logs: Arc<Mutex<HashMap<PathBuf, Weak<FileLog>>>>,
    /// The workers that failed lately, which the next recoveries pass over for a while.
    pub(crate) passed_over: Arc<crate::workers::PassedOver>,
}

impl RecoveryEnv {
    /// An environment with the fault switchboard `faults`.
    pub fn with_faults(faults: Arc<Faults>) -> RecoveryEnv {
        RecoveryEnv {
            faults: Some(faults),
            ..RecoveryEnv::default()
        }
    }

    /// `log` as the director reaches it: across the simulated network, when there is one
    /// (locks, and the pulls and pushes of replay), or directly.
    pub(super) fn reach(&self, log: &Arc<dyn HeldLog>) -> Arc<dyn LogServer> {
        match &self.network {
            Some(n) => Arc::new(NetLog::new(log.clone(), n, &log_role(log.id()))),
            None => log.clone() as Arc<dyn LogServer>,
        }
    }

    /// The log in `dir`: the one this process has open, unless a failed write poisoned it (it
    /// is closed and opened again, and the open writes its directory again and syncs it first:
    /// the page cache may hold records the failed sync never wrote back), or a new handle
    /// opened by `mode`.
    pub(super) fn open_log(
        &self,
        dir: &Path,
        id: LogId,
        mode: OpenMode,
        config: strata_tlog::FileLogConfig,
    ) -> Result<Arc<FileLog>> {
        let mut logs = self
            .logs
            .lock()
            .map_err(|_| error(ErrorKind::Unavailable("log registry poisoned".into())))?;
        if let Some(log) = logs.get(dir).and_then(Weak::upgrade) {
            if !log.is_poisoned() {
                return Ok(log);
            }
            tracing::warn!(dir = %dir.display(), "reopening a poisoned log from disk");
            // Written again and synced first: the page cache may hold records its failed sync
            // never wrote back (see `FileLog::close_resynced`).
            log.close_resynced()?;
        }
        let fs: Arc<dyn Fs> = match (&self.log_fs, &self.faults) {
            (Some(fs), _) => fs.clone(),
            (None, Some(f)) => Arc::new(FaultyFs(f.clone())),
            (None, None) => Arc::new(RealFs),
        };
        let log = Arc::new(FileLog::open_dir(fs, dir, id, mode, config)?);
        logs.insert(dir.to_owned(), Arc::downgrade(&log));
        Ok(log)
    }
}

/// The longest pause between two tries to reach a log worker that phase 1 waits for.
const WORKER_WAIT_PAUSE_MAX: Duration = Duration::from_secs(2);

/// How recovery opens the logs the coordinated state names, in phase 1: through the process's
/// registry of open logs ([`RecoveryEnv::open_log`]), to be locked and replayed from.
pub(super) struct ToRecover<'a> {
    pub(super) env: &'a RecoveryEnv,
    pub(super) config: strata_tlog::FileLogConfig,
    /// How the log workers are reached, with the attempt's token; `None` when this process
    /// reaches no workers.
    pub(super) access: Option<strata_net::Access>,
    /// The bound monitoring holds a log worker to.
    pub(super) probe_timeout: Duration,
}

#[async_trait::async_trait]
impl OpenLogs for ToRecover<'_> {
    async fn open(
        &self,
        dir: &Path,
        place: &LogPlace,
        committed: Version,
    ) -> Result<Arc<dyn HeldLog>> {
        if let Some(at) = &place.at {
            let Some(access) = &self.access else {
                return Err(error(ErrorKind::InvalidRequest(format!(
                    "the log in {} is on the log worker at {at}, and this process reaches no \
                     workers: serve the cluster with --listen and an etcd cluster file",
                    place.dir
                ))));
            };
            // The log holds history no other process may have.
            let what = format!("the log worker that holds {}", place.dir);
            let log = wait_for_worker(at, &what, || {
                crate::workers::open_on_worker(
                    place,
                    access,
                    &self.env.passed_over,
                    self.probe_timeout,
                    committed,
                )
            })
            .await?;
            return Ok(Arc::new(log));
        }
        let log =
            self.env
                .open_log(dir, place.id, OpenMode::Existing { committed }, self.config)?;
        Ok(log)
    }

    async fn stored_on_worker(&self, index: u32, at: &str) -> Option<Result<StoredStorage>> {
        let Some(access) = &self.access else {
            return Some(Err(error(ErrorKind::InvalidRequest(format!(
                "storage server {index} is on the storage worker at {at}, and this process \
                 reaches no workers: serve the cluster with --listen and an etcd cluster file"
            )))));
        };
        // The shard is nowhere else.
        let what = format!("the storage worker that holds storage server {index}");
        let stored = wait_for_worker(at, &what, || async {
            let worker = strata_net::RemoteWorker::connect(at, access.clone()).await?;
            worker.inspect_storage(index).await
        })
        .await;
        Some(stored)
    }
}

/// Phase 1's call to the worker at `at` that holds `what`: repeated, with pauses of up to
/// [`WORKER_WAIT_PAUSE_MAX`], for as long as it answers `Unavailable`. Nothing is claimed
/// yet, and what the worker holds is nowhere else: the attempt waits for it rather than
/// fail, however long it is away.
async fn wait_for_worker<T, F, Fut>(at: &str, what: &str, mut call: F) -> Result<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T>>,
{
    let mut pause = Duration::from_millis(100);
    loop {
        match call().await {
            Err(e) if matches!(e.kind, ErrorKind::Unavailable(_)) => {
                tracing::warn!(worker = at, error = %e, "waiting for {what}");
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(WORKER_WAIT_PAUSE_MAX);
            }
            other => return other,
        }
    }
}
