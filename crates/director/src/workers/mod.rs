//! Worker processes (`strata serve --role ROLE`): a stage of one role in a process of its own,
//! which the director recruits at each recovery.
//!
//! - A worker registers in the coordinated state's etcd, under
//!   `/strata/NAME/ID/workers/ADDRESS`, a key attached to a lease it keeps alive
//!   ([`WORKER_LEASE_TTL`]): a worker whose process or host stops drops out of the registry
//!   within that time, and one that comes back registers again.
//! - Each recovery lists the registered workers ([`StateStore::workers`]), asks them all at
//!   once for a heartbeat within the probe timeout, and recruits, for each stage of a role
//!   with workers, the next that answered (in the order of their addresses, as text); see
//!   `Answered`. Stages for which no worker is recruited run in the director's
//!   process, as they do without workers. A worker that failed is passed over by this
//!   director's recoveries for [`PASS_OVER_FOR`], unless it registers again.
//! - While the epoch runs, monitoring asks every recruited worker what it runs (a heartbeat,
//!   within the probe timeout): a worker that does not answer, restarted (it runs nothing) or
//!   runs another epoch ends the epoch, and the next recovery recruits from the workers that
//!   are registered then.
//! - A worker serves every call: its port, like etcd, is for the cluster's own processes.
//!
//! Recruited workers run the roles that hold nothing one epoch needs from the one before:
//! resolvers ([`ResolverWorker`]), the sequencer ([`SequencerWorker`]) and commit proxies
//! ([`ProxyWorker`], which reach the stages the director runs itself on its [`PeerPort`]).
//! Their calls are fenced by epoch, so a stage of an ended epoch left running on a worker
//! decides nothing for the new one. Log and storage workers ([`LogWorker`],
//! [`StorageWorker`]) hold what the next epoch recovers from: they are never recruited, and
//! take the director's orders instead, fenced by epoch and token (`orders`).

use std::collections::HashMap;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use strata_core::{Epoch, Error, ErrorKind, Result, Stage};
use strata_net::etcd::Etcd;
use strata_net::{Access, Recruitment, RemoteResolver, RemoteWorker, Role, WorkerState};

use crate::coordinator::StateStore;

mod log;
mod orders;
mod peers;
mod proxy;
mod resolver;
mod sequencer;
mod storage;

pub use log::LogWorker;
pub(crate) use log::{WorkerLog, create_on_worker, open_on_worker};
pub use peers::PeerPort;
pub(crate) use peers::{Published, new_token, token_digest};
pub use proxy::ProxyWorker;
pub(crate) use proxy::{proxy_config, proxy_settings};
pub use resolver::ResolverWorker;
pub(crate) use resolver::{resolver_config, resolver_settings};
pub use sequencer::SequencerWorker;
pub(crate) use sequencer::WorkerSequencer;
pub use storage::StorageWorker;
pub(crate) use storage::{WorkerStorage, open_on_worker as open_storage_on};

/// How long a worker's registration lives without a renewal: a worker that stops is out of
/// the registry this long after, at most. Renewed every third of it.
pub const WORKER_LEASE_TTL: Duration = Duration::from_secs(6);

/// How long a recovery waits for a worker to be recruited (connected to, its stage started
/// and reached) before it passes the worker over.
pub const RECRUIT_TIMEOUT: Duration = Duration::from_secs(5);

/// How long a worker waits for etcd to take its first registration before it gives up.
pub const REGISTER_WAIT: Duration = Duration::from_secs(20);

/// A registered worker: its role and where it serves.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct WorkerPlace {
    /// Its role's name (see [`Role::name`]).
    pub role: String,
    /// Where it serves, `host:port`.
    pub address: String,
    /// The etcd revision of its registration, as listed (0 when not read from etcd): a
    /// worker that registers again (a new process at the same address) has a new one.
    #[serde(skip)]
    pub registered: i64,
}

impl WorkerPlace {
    /// Its role, when this build knows it.
    pub fn role(&self) -> Option<Role> {
        Role::from_name(&self.role)
    }
}

/// Where the workers of the cluster named `name` with id `id` register, in its etcd.
pub fn registry_prefix(name: &str, id: &str) -> String {
    format!(
        "{}workers/",
        crate::coordinator::etcd::state_prefix(name, id)
    )
}

/// The registered workers under `prefix`, in the order of their addresses. An entry that is
/// not a worker's record is skipped with a warning: the registry only suggests processes to
/// recruit, and a worker is checked when it is recruited.
pub(crate) async fn list(etcd: &Etcd, prefix: &str) -> Result<Vec<WorkerPlace>> {
    let mut places = Vec::new();
    for (key, value) in etcd.list(prefix.as_bytes()).await? {
        match serde_json::from_slice::<WorkerPlace>(&value.value) {
            Ok(place) => places.push(WorkerPlace {
                registered: value.mod_revision,
                ..place
            }),
            Err(e) => tracing::warn!(
                key = %String::from_utf8_lossy(&key),
                error = %e,
                "a worker registry entry that is not a worker's record; passed over"
            ),
        }
    }
    places.sort_by(|a, b| a.address.cmp(&b.address));
    Ok(places)
}

/// A worker's registration (see the module docs), kept alive by a task of its own until
/// [`Registration::withdraw`] (or until the process ends, when it lapses within
/// [`WORKER_LEASE_TTL`]).
#[derive(Debug)]
pub struct Registration {
    etcd: Etcd,
    task: tokio::task::JoinHandle<()>,
    /// The lease the registration is attached to now (0 before the first).
    lease: Arc<AtomicI64>,
}

impl Registration {
    /// Registers `place` under `prefix` (see [`registry_prefix`]) and keeps it registered: a
    /// lease of [`WORKER_LEASE_TTL`] renewed every third of it, and a new lease and
    /// registration whenever a renewal fails (etcd down, the lease lapsed). Returns once the
    /// first registration is done, keeping it in a task of its own; must be called within a
    /// tokio runtime.
    ///
    /// Errors: `Unavailable` when etcd did not take the first registration within
    /// [`REGISTER_WAIT`] (a worker nobody can find would serve for nothing).
    pub async fn start(etcd: Etcd, prefix: &str, place: WorkerPlace) -> Result<Registration> {
        let key = format!("{prefix}{}", place.address).into_bytes();
        let value = serde_json::to_vec(&place)
            .map_err(|e| Error::new(Stage::Director, ErrorKind::InvalidRequest(e.to_string())))?;
        let lease = Arc::new(AtomicI64::new(0));
        let register = {
            let (etcd, lease) = (etcd.clone(), lease.clone());
            move || {
                let (etcd, lease, key, value) =
                    (etcd.clone(), lease.clone(), key.clone(), value.clone());
                async move {
                    let id = etcd.grant(WORKER_LEASE_TTL).await?;
                    lease.store(id, Ordering::SeqCst);
                    etcd.put(&key, value, id).await?;
                    etcd.keeper(id).await
                }
            }
        };
        let started = tokio::time::Instant::now();
        let mut keeper = loop {
            match register().await {
                Ok(keeper) => break keeper,
                Err(e) if started.elapsed() >= REGISTER_WAIT => {
                    return Err(Error::new(
                        Stage::Coordinator,
                        ErrorKind::Unavailable(format!(
                            "cannot register the worker (waited {} s): {e}",
                            REGISTER_WAIT.as_secs()
                        )),
                    ));
                }
                Err(e) => {
                    tracing::warn!(error = %e, "cannot register the worker yet; trying again");
                    tokio::time::sleep(Duration::from_millis(500)).await;
                }
            }
        };
        tracing::info!(address = %place.address, role = %place.role, "registered");
        let task = tokio::spawn(async move {
            loop {
                let lapsed = loop {
                    tokio::time::sleep(WORKER_LEASE_TTL / 3).await;
                    if let Err(e) = keeper.renew().await {
                        break e;
                    }
                };
                tracing::warn!(error = %lapsed, "the worker's registration lapsed; registering again");
                keeper = loop {
                    tokio::time::sleep(Duration::from_millis(500)).await;
                    match register().await {
                        Ok(keeper) => break keeper,
                        Err(e) => tracing::warn!(error = %e, "cannot register the worker yet"),
                    }
                };
                tracing::info!("registered again");
            }
        });
        Ok(Registration { etcd, task, lease })
    }

    /// Ends the registration now: the worker leaves the registry at once, instead of when its
    /// lease lapses. A recovery that listed it already still tries it (and passes it over).
    pub async fn withdraw(self) {
        self.task.abort();
        let _ = self.task.await;
        let lease = self.lease.load(Ordering::SeqCst);
        if lease != 0
            && let Err(e) = self.etcd.revoke(lease).await
        {
            tracing::warn!(error = %e, "cannot withdraw the worker's registration; it lapses");
        }
    }
}

/// A worker's answer to a recruitment for `requested` while it runs `current`: `Fenced`
/// unless `requested` is newer, so a late recruitment by a director that lost its epoch
/// cannot replace the stage of a newer one.
pub(crate) fn fence_stale(stage: Stage, current: Option<Epoch>, requested: Epoch) -> Result<()> {
    match current {
        Some(current) if requested <= current => Err(Error::new(
            stage,
            ErrorKind::Fenced {
                request: requested,
                current,
            },
        )),
        _ => Ok(()),
    }
}

/// Fails (`Unavailable` of `stage`) unless the `what` reached at `address` runs `expected`:
/// a newer recruitment in between would hand this epoch another epoch's stage.
pub(crate) fn reached_epoch(
    stage: Stage,
    what: &str,
    address: &str,
    runs: Epoch,
    expected: Epoch,
) -> Result<()> {
    if runs == expected {
        return Ok(());
    }
    Err(Error::new(
        stage,
        ErrorKind::Unavailable(format!(
            "the {what} at {address} runs epoch {} instead of {}",
            runs.0, expected.0
        )),
    ))
}

/// How long a worker that failed (not answering, refusing, or losing the epoch it was
/// recruited for) is passed over by this director's recoveries: long enough that a worker
/// that fails at once does not end epoch after epoch, short enough that a worker back from a
/// restart is recruited again soon.
pub const PASS_OVER_FOR: Duration = Duration::from_secs(30);

/// At most this many registered workers are probed per recovery, in the order of their
/// addresses (as text); the rest are not considered.
pub const CANDIDATES_MAX: usize = 256;

/// The workers this director's recoveries pass over for now: each registration (address
/// and revision) that failed, with when (see [`PASS_OVER_FOR`]). A worker that registers
/// again (restarted) is considered again at once. Shared by every recovery attempt of one
/// process.
#[derive(Debug, Default)]
pub(crate) struct PassedOver(Mutex<HashMap<(String, i64), Instant>>);

impl PassedOver {
    pub(crate) fn mark(&self, place: &WorkerPlace) {
        let mut failed = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        failed.retain(|_, at| at.elapsed() < PASS_OVER_FOR);
        failed.insert((place.address.clone(), place.registered), Instant::now());
    }

    fn holds(&self, place: &WorkerPlace) -> bool {
        let failed = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        failed
            .get(&(place.address.clone(), place.registered))
            .is_some_and(|at| at.elapsed() < PASS_OVER_FOR)
    }
}

/// A stage recruited on a worker for this epoch: where, and the worker as monitoring asks it.
#[derive(Clone, Debug)]
pub(crate) struct Recruited {
    pub(crate) place: WorkerPlace,
    /// Where its stage is served among the worker's stages of its kind.
    pub(crate) index: u32,
    worker: RemoteWorker,
    passed_over: Arc<PassedOver>,
}

impl Recruited {
    /// Passes the worker over in the next recoveries (for [`PASS_OVER_FOR`]): its stage failed
    /// though the worker may still answer heartbeats.
    pub(crate) fn pass_over(&self) {
        self.passed_over.mark(&self.place);
    }

    /// Monitoring's question: fails unless the worker answers within `timeout` that it runs
    /// `epoch`. A worker that fails is passed over by the next recoveries for a while.
    pub(crate) async fn heartbeat(&self, epoch: Epoch, timeout: Duration) -> Result<()> {
        let answered = heartbeat(&self.worker, &self.place, Some(epoch), timeout).await;
        if answered.is_err() {
            self.passed_over.mark(&self.place);
        }
        answered
    }
}

/// Asks the worker at `place` what it runs, within `timeout`: fails unless it answers as a
/// worker of the role it registered with, running `epoch` (`None`: any).
async fn heartbeat(
    worker: &RemoteWorker,
    place: &WorkerPlace,
    epoch: Option<Epoch>,
    timeout: Duration,
) -> Result<()> {
    let registered = place.role();
    let stage = registered.map_or(Stage::Director, Role::stage);
    let lost = |why: String| {
        Error::new(
            stage,
            ErrorKind::Unavailable(format!(
                "the {} worker at {} {why}",
                place.role, place.address
            )),
        )
    };
    let state = tokio::time::timeout(timeout, worker.heartbeat())
        .await
        .map_err(|_| {
            lost(format!(
                "sent no heartbeat within {} ms",
                timeout.as_millis()
            ))
        })?
        .map_err(|e| lost(format!("sent no heartbeat: {e}")))?;
    match (state, epoch) {
        (WorkerState { role, .. }, _) if Some(role) != registered => {
            Err(lost(format!("is a {role} worker")))
        }
        (_, None) => Ok(()),
        (
            WorkerState {
                epoch: runs,
                failure: Some(failure),
                ..
            },
            Some(epoch),
        ) if runs == Some(epoch) => Err(lost(format!(
            "says its stage of epoch {} failed: {failure}",
            epoch.0
        ))),
        (WorkerState { epoch: runs, .. }, Some(epoch)) if runs == Some(epoch) => Ok(()),
        (WorkerState { epoch: None, .. }, Some(epoch)) => Err(lost(format!(
            "runs no stage (it restarted) instead of epoch {}",
            epoch.0
        ))),
        (
            WorkerState {
                epoch: Some(runs), ..
            },
            Some(epoch),
        ) => Err(lost(format!(
            "runs epoch {} instead of {}",
            runs.0, epoch.0
        ))),
    }
}

/// Makes the creations and removals in `dir` durable (a log or storage worker's data
/// directory); an error is `stage`'s.
fn sync_dir(dir: &std::path::Path, stage: Stage) -> Result<()> {
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| Error::io(stage, e))
}

/// The workers a recovery may recruit from, from `store`'s registry, of the roles this build
/// knows; none when the registry cannot be read (the stages then run in the director's
/// process).
pub(crate) fn registered(store: &dyn StateStore) -> Vec<WorkerPlace> {
    match store.workers() {
        Ok(all) => all.into_iter().filter(|w| w.role().is_some()).collect(),
        Err(e) => {
            tracing::warn!(error = %e, "cannot list the registered workers; none recruited");
            Vec::new()
        }
    }
}

/// A stage as the director reaches it on the worker recruited for it.
#[async_trait]
pub(crate) trait Reach: Sized + Send {
    /// The role of the workers that run it.
    const ROLE: Role;

    /// Connects to the stage of `epoch` the worker at `address` serves at `index` (as its
    /// recruitment answered).
    ///
    /// Errors: those of connecting; `Unavailable` when the worker serves another epoch's
    /// stage by then (recruited again meanwhile).
    async fn reach(address: &str, access: Access, index: u32, epoch: Epoch) -> Result<Self>;
}

#[async_trait]
impl Reach for RemoteResolver {
    const ROLE: Role = Role::Resolver;

    async fn reach(address: &str, access: Access, index: u32, _epoch: Epoch) -> Result<Self> {
        // Every batch names its epoch: a resolver of another epoch refuses them all.
        RemoteResolver::connect(address, access, index).await
    }
}

/// The registered workers that answered a recovery's probe, in the order of their
/// addresses, and what this recovery needs to recruit them. See [`Answered::probe`].
pub(crate) struct Answered {
    workers: Vec<(WorkerPlace, RemoteWorker)>,
    access: Access,
    passed_over: Arc<PassedOver>,
}

impl Answered {
    /// Asks every candidate (registered workers in address order) not passed over, at most
    /// [`CANDIDATES_MAX`], all at once, for a heartbeat within `probe_timeout`, the bound
    /// monitoring will hold it to: one that does not answer in time, or not as a worker of
    /// the role it registered with, is passed over by this process's recoveries for
    /// [`PASS_OVER_FOR`]. So a recovery waits at most `probe_timeout` for all of them,
    /// whatever their roles.
    pub(crate) async fn probe(
        candidates: Vec<WorkerPlace>,
        access: &Access,
        probe_timeout: Duration,
        passed_over: &Arc<PassedOver>,
    ) -> Answered {
        let mut probes = tokio::task::JoinSet::new();
        let considered: Vec<WorkerPlace> = candidates
            .into_iter()
            .filter(|c| !passed_over.holds(c))
            .take(CANDIDATES_MAX)
            .collect();
        for (order, place) in considered.iter().enumerate() {
            let (place, access) = (place.clone(), access.clone());
            probes.spawn(async move {
                let probed = tokio::time::timeout(probe_timeout, async {
                    let worker = RemoteWorker::connect(&place.address, access).await?;
                    heartbeat(&worker, &place, None, probe_timeout).await?;
                    Ok::<_, Error>(worker)
                })
                .await
                .unwrap_or_else(|_| {
                    Err(Error::new(
                        place.role().map_or(Stage::Director, Role::stage),
                        ErrorKind::Unavailable(format!(
                            "the {} worker at {} did not answer within {} ms",
                            place.role,
                            place.address,
                            probe_timeout.as_millis()
                        )),
                    ))
                });
                (order, probed)
            });
        }
        let mut answered = Vec::new();
        while let Some(probe) = probes.join_next().await {
            let Ok((order, probed)) = probe else { continue };
            match probed {
                Ok(worker) => answered.push((order, worker)),
                Err(e) => {
                    let place = &considered[order];
                    tracing::warn!(
                        role = %place.role,
                        address = %place.address,
                        error = %e,
                        "a registered worker passed over"
                    );
                    passed_over.mark(place);
                }
            }
        }
        answered.sort_by_key(|(order, _)| *order);
        Answered {
            workers: answered
                .into_iter()
                .map(|(order, worker)| (considered[order].clone(), worker))
                .collect(),
            access: access.clone(),
            passed_over: passed_over.clone(),
        }
    }

    /// The workers of `role` that answered the probe, in order, taken out of those left to
    /// recruit.
    pub(crate) fn take_role(&mut self, role: Role) -> Vec<(WorkerPlace, RemoteWorker)> {
        let (mine, others) = std::mem::take(&mut self.workers)
            .into_iter()
            .partition::<Vec<_>, _>(|(place, _)| place.role() == Some(role));
        self.workers = others;
        mine
    }

    /// How many workers of `role` answered the probe and are not recruited yet.
    pub(crate) fn count(&self, role: Role) -> usize {
        self.workers
            .iter()
            .filter(|(place, _)| place.role() == Some(role))
            .count()
    }

    /// Up to `needed` stages of `S`'s role for `recruitment.epoch`, one per worker: the
    /// workers of that role that answered the probe are recruited in order, each within
    /// [`RECRUIT_TIMEOUT`] (its stage started and reached), until `needed` are. A worker that
    /// fails is passed over by this process's recoveries for [`PASS_OVER_FOR`]; each worker
    /// is tried once per recovery. So a recovery waits [`RECRUIT_TIMEOUT`] more for each
    /// worker that answered the probe and then stopped.
    pub(crate) async fn recruit<S: Reach>(
        &mut self,
        needed: usize,
        recruitment: Recruitment,
    ) -> Vec<(S, Recruited)> {
        let recruitment = Recruitment {
            role: S::ROLE,
            ..recruitment
        };
        let mut recruited = Vec::new();
        for (place, worker) in self.take_role(S::ROLE) {
            if recruited.len() == needed {
                break;
            }
            let address = place.address.clone();
            let started = tokio::time::timeout(RECRUIT_TIMEOUT, async {
                let index = worker.recruit(recruitment.clone()).await?;
                S::reach(&address, self.access.clone(), index, recruitment.epoch)
                    .await
                    .map(|stage| (stage, index))
            })
            .await;
            match started {
                Ok(Ok((stage, index))) => {
                    tracing::info!(%address, role = %S::ROLE, epoch = recruitment.epoch.0, "recruited");
                    let recruited_here = Recruited {
                        place,
                        index,
                        worker,
                        passed_over: self.passed_over.clone(),
                    };
                    recruited.push((stage, recruited_here));
                }
                failed => {
                    let why = match failed {
                        Ok(Err(e)) => e.to_string(),
                        _ => format!("no answer within {} s", RECRUIT_TIMEOUT.as_secs()),
                    };
                    tracing::warn!(%address, role = %S::ROLE, error = %why, "a worker could not be recruited; passed over");
                    self.passed_over.mark(&place);
                }
            }
        }
        recruited
    }
}
