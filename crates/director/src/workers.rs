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
//!   `recruit_resolvers`. Stages for which no worker is recruited run in the director's
//!   process, as they do without workers. A worker that failed is passed over by this
//!   director's recoveries for [`PASS_OVER_FOR`], unless it registers again.
//! - While the epoch runs, monitoring asks every recruited worker what it runs (a heartbeat,
//!   within the probe timeout): a worker that does not answer, restarted (it runs nothing) or
//!   runs another epoch ends the epoch, and the next recovery recruits from the workers that
//!   are registered then.
//! - A worker serves every call: its port, like etcd, is for the cluster's own processes.
//!
//! Resolvers are the roles workers run so far: a resolver holds nothing one epoch needs from
//! the one before, and its calls are fenced by epoch, so a resolver of an ended epoch left
//! running on a worker decides nothing for the new one.

use std::collections::HashMap;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use strata_core::{Epoch, Error, ErrorKind, Resolver, Result, Stage, Version};
use strata_net::etcd::Etcd;
use strata_net::{
    Access, Recruiter, Recruitment, RemoteResolver, RemoteWorker, ResolverSettings, Role, Stages,
    WorkerState,
};
use strata_resolver::{HistoryConfig, ResolverConfig, WindowResolver};
use tokio::sync::watch;

use crate::coordinator::StateStore;

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

/// `config` as a recruitment carries it.
pub(crate) fn resolver_settings(config: &ResolverConfig) -> ResolverSettings {
    ResolverSettings {
        window_versions: config.history.window_versions,
        max_run_batches: config.history.max_run_batches,
        recent_runs: u32::try_from(config.history.recent_runs).unwrap_or(u32::MAX),
        predecessor_wait: config.predecessor_wait,
        batch_transactions_max: config.batch_transactions_max as u64,
    }
}

/// The resolver configuration `settings` ask for, checked: every count at least 1, runs of at
/// most 65,536 batches, at most 1,024 recent runs, batches of at most 10,000,000
/// transactions, and a predecessor wait of at most 60 s.
/// [`EmbeddedConfig::validate`](crate::EmbeddedConfig::validate) holds the director's own
/// resolvers to the same limits.
///
/// Errors: `InvalidRequest` naming the first setting out of range.
pub(crate) fn resolver_config(settings: ResolverSettings) -> Result<ResolverConfig> {
    let out_of_range = |what: &str, value: u64, max: u64| {
        Error::new(
            Stage::Resolver,
            ErrorKind::InvalidRequest(format!(
                "resolver setting {what} = {value} is out of range (1 to {max})"
            )),
        )
    };
    let check = |what: &str, value: u64, max: u64| {
        if (1..=max).contains(&value) {
            Ok(value)
        } else {
            Err(out_of_range(what, value, max))
        }
    };
    let window_versions = check("window_versions", settings.window_versions, u64::MAX)?;
    let max_run_batches = check("max_run_batches", settings.max_run_batches.into(), 65_536)?;
    let recent_runs = check("recent_runs", settings.recent_runs.into(), 1_024)?;
    let batch = check(
        "batch_transactions_max",
        settings.batch_transactions_max,
        10_000_000,
    )?;
    let wait_ms = u64::try_from(settings.predecessor_wait.as_millis()).unwrap_or(u64::MAX);
    if wait_ms > 60_000 {
        return Err(Error::new(
            Stage::Resolver,
            ErrorKind::InvalidRequest(format!(
                "resolver setting predecessor_wait = {wait_ms} ms is out of range (at most \
                 60,000)"
            )),
        ));
    }
    Ok(ResolverConfig {
        history: HistoryConfig {
            window_versions,
            max_run_batches: u32::try_from(max_run_batches).unwrap_or(u32::MAX),
            recent_runs: usize::try_from(recent_runs).unwrap_or(usize::MAX),
        },
        predecessor_wait: settings.predecessor_wait,
        batch_transactions_max: usize::try_from(batch).unwrap_or(usize::MAX),
    })
}

/// A resolver worker: a new resolver for each epoch it is recruited for, of the settings the
/// recruitment carries (or of its own configuration when it carries none), published (for its
/// server to serve) in place of the one before.
pub struct ResolverWorker {
    config: ResolverConfig,
    epoch: Mutex<Option<Epoch>>,
    publish: watch::Sender<Arc<Stages>>,
}

impl ResolverWorker {
    /// A worker that runs resolvers of `config` and publishes them on `publish`.
    pub fn new(config: ResolverConfig, publish: watch::Sender<Arc<Stages>>) -> ResolverWorker {
        ResolverWorker {
            config,
            epoch: Mutex::new(None),
            publish,
        }
    }
}

#[async_trait]
impl Recruiter for ResolverWorker {
    fn role(&self) -> Role {
        Role::Resolver
    }

    async fn recruit(&self, r: Recruitment) -> Result<u32> {
        let mut epoch = self.epoch.lock().unwrap_or_else(PoisonError::into_inner);
        // A stale director learns first that it is stale.
        if let Some(current) = *epoch
            && r.epoch <= current
        {
            return Err(Error::new(
                Stage::Resolver,
                ErrorKind::Fenced {
                    request: r.epoch,
                    current,
                },
            ));
        }
        let config = match r.resolver {
            Some(settings) => resolver_config(settings)?,
            None => self.config,
        };
        let resolver = WindowResolver::new(r.epoch, r.recovery_version, config);
        self.publish.send_replace(Arc::new(Stages {
            resolvers: vec![Arc::new(resolver)],
            ..Stages::default()
        }));
        *epoch = Some(r.epoch);
        tracing::info!(
            epoch = r.epoch.0,
            from = r.recovery_version.0,
            "recruited: resolver"
        );
        Ok(0)
    }

    fn epoch(&self) -> Option<Epoch> {
        *self.epoch.lock().unwrap_or_else(PoisonError::into_inner)
    }
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
    fn mark(&self, place: &WorkerPlace) {
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
    worker: RemoteWorker,
    passed_over: Arc<PassedOver>,
}

impl Recruited {
    /// Monitoring's question: fails unless the worker answers within `timeout` that it runs
    /// `epoch`. A worker that fails is passed over by the next recoveries for a while.
    pub(crate) async fn heartbeat(&self, epoch: Epoch, timeout: Duration) -> Result<()> {
        let answered = heartbeat(&self.worker, &self.place.address, Some(epoch), timeout).await;
        if answered.is_err() {
            self.passed_over.mark(&self.place);
        }
        answered
    }
}

/// Asks the worker at `address` what it runs, within `timeout`: fails unless it answers as a
/// resolver worker running `epoch` (`None`: any).
async fn heartbeat(
    worker: &RemoteWorker,
    address: &str,
    epoch: Option<Epoch>,
    timeout: Duration,
) -> Result<()> {
    let lost = |why: String| {
        Error::new(
            Stage::Resolver,
            ErrorKind::Unavailable(format!("the resolver worker at {address} {why}")),
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
        (WorkerState { role, .. }, _) if role != Role::Resolver => {
            Err(lost(format!("is a {role} worker")))
        }
        (_, None) => Ok(()),
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

/// The workers of `role` a recovery may recruit from, from `store`'s registry; none when the
/// registry cannot be read (the stages then run in the director's process).
pub(crate) fn registered(store: &dyn StateStore, role: Role) -> Vec<WorkerPlace> {
    match store.workers() {
        Ok(all) => all.into_iter().filter(|w| w.role() == Some(role)).collect(),
        Err(e) => {
            tracing::warn!(error = %e, "cannot list the registered workers; none recruited");
            Vec::new()
        }
    }
}

/// Up to `needed` resolvers for `epoch`, recruited on `candidates` (registered resolver
/// workers in address order), one per worker.
///
/// First every candidate not passed over (at most [`CANDIDATES_MAX`]) is asked, all at once,
/// for a heartbeat within `probe_timeout`, the bound monitoring will hold it to: one that
/// does not answer in time, or not as a resolver worker, is not recruited. Then the workers
/// that answered are recruited in order, each within [`RECRUIT_TIMEOUT`], until `needed` are.
/// A worker that fails either step is passed over by this process's recoveries for
/// [`PASS_OVER_FOR`]. So a recovery waits for workers at most `probe_timeout`, and then
/// [`RECRUIT_TIMEOUT`] for each worker that answered and then stopped.
#[expect(clippy::too_many_arguments)] // NOTE: the recovery's inputs, passed on.
pub(crate) async fn recruit_resolvers(
    candidates: Vec<WorkerPlace>,
    needed: usize,
    access: &Access,
    epoch: Epoch,
    recovery_version: Version,
    config: &ResolverConfig,
    probe_timeout: Duration,
    passed_over: &Arc<PassedOver>,
) -> Vec<(Arc<dyn Resolver>, Recruited)> {
    let settings = resolver_settings(config);
    let mut probes = tokio::task::JoinSet::new();
    let considered: Vec<WorkerPlace> = candidates
        .into_iter()
        .filter(|c| !passed_over.holds(c))
        .take(CANDIDATES_MAX)
        .collect();
    for (order, place) in considered.iter().enumerate() {
        let (address, access) = (place.address.clone(), access.clone());
        probes.spawn(async move {
            let probed = tokio::time::timeout(probe_timeout, async {
                let worker = RemoteWorker::connect(&address, access).await?;
                heartbeat(&worker, &address, None, probe_timeout).await?;
                Ok::<_, Error>(worker)
            })
            .await
            .unwrap_or_else(|_| {
                Err(Error::new(
                    Stage::Resolver,
                    ErrorKind::Unavailable(format!(
                        "the resolver worker at {address} did not answer within {} ms",
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
                tracing::warn!(error = %e, "a registered worker passed over");
                passed_over.mark(&considered[order]);
            }
        }
    }
    answered.sort_by_key(|(order, _)| *order);
    let mut recruited = Vec::new();
    for (order, worker) in answered {
        if recruited.len() == needed {
            break;
        }
        let place = considered[order].clone();
        let address = place.address.clone();
        let recruitment = Recruitment {
            epoch,
            role: Role::Resolver,
            recovery_version,
            resolver: Some(settings),
        };
        let started = tokio::time::timeout(RECRUIT_TIMEOUT, async {
            let index = worker.recruit(recruitment).await?;
            RemoteResolver::connect(&address, access.clone(), index).await
        })
        .await;
        match started {
            Ok(Ok(resolver)) => {
                tracing::info!(%address, epoch = epoch.0, "recruited a resolver");
                let resolver: Arc<dyn Resolver> = Arc::new(resolver);
                let recruited_here = Recruited {
                    place,
                    worker,
                    passed_over: passed_over.clone(),
                };
                recruited.push((resolver, recruited_here));
            }
            failed => {
                let why = match failed {
                    Ok(Err(e)) => e.to_string(),
                    _ => format!("no answer within {} s", RECRUIT_TIMEOUT.as_secs()),
                };
                tracing::warn!(%address, error = %why, "a resolver worker could not be recruited; passed over");
                passed_over.mark(&place);
            }
        }
    }
    recruited
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use strata_core::{KeyRange, ResolveBatch, TransactionConflicts, Verdict};

    #[test]
    fn resolver_settings_carry_a_configuration_whole_and_bad_ones_are_refused() {
        let config = ResolverConfig {
            history: HistoryConfig {
                window_versions: 1_000,
                max_run_batches: 4,
                recent_runs: 2,
            },
            predecessor_wait: Duration::from_millis(250),
            batch_transactions_max: 500,
        };
        assert_eq!(resolver_config(resolver_settings(&config)).unwrap(), config);
        let default = ResolverConfig::default();
        assert_eq!(
            resolver_config(resolver_settings(&default)).unwrap(),
            default
        );
        let good = resolver_settings(&config);
        let bad = [
            (
                "window_versions",
                ResolverSettings {
                    window_versions: 0,
                    ..good
                },
            ),
            (
                "max_run_batches",
                ResolverSettings {
                    max_run_batches: 0,
                    ..good
                },
            ),
            (
                "max_run_batches",
                ResolverSettings {
                    max_run_batches: 65_537,
                    ..good
                },
            ),
            (
                "recent_runs",
                ResolverSettings {
                    recent_runs: 0,
                    ..good
                },
            ),
            (
                "recent_runs",
                ResolverSettings {
                    recent_runs: 1_025,
                    ..good
                },
            ),
            (
                "batch_transactions_max",
                ResolverSettings {
                    batch_transactions_max: 0,
                    ..good
                },
            ),
            (
                "batch_transactions_max",
                ResolverSettings {
                    batch_transactions_max: 10_000_001,
                    ..good
                },
            ),
            (
                "predecessor_wait",
                ResolverSettings {
                    predecessor_wait: Duration::from_secs(61),
                    ..good
                },
            ),
        ];
        for (field, settings) in bad {
            let e = resolver_config(settings).unwrap_err();
            assert!(matches!(e.kind, ErrorKind::InvalidRequest(_)), "{e}");
            assert!(e.to_string().contains(field), "{field}: {e}");
        }
    }

    #[tokio::test]
    async fn a_resolver_worker_runs_the_settings_it_is_recruited_with() {
        let (publish, published) = watch::channel(Arc::new(Stages::default()));
        let worker = ResolverWorker::new(ResolverConfig::default(), publish);
        let narrow = ResolverConfig {
            history: HistoryConfig {
                window_versions: 10,
                ..HistoryConfig::default()
            },
            ..ResolverConfig::default()
        };
        let recruitment = |epoch, resolver| Recruitment {
            epoch: Epoch(epoch),
            role: Role::Resolver,
            recovery_version: Version(100),
            resolver,
        };
        // Refused settings recruit nothing.
        let zero = ResolverSettings {
            recent_runs: 0,
            ..resolver_settings(&narrow)
        };
        assert!(worker.recruit(recruitment(1, Some(zero))).await.is_err());
        assert_eq!(Recruiter::epoch(&worker), None);
        worker
            .recruit(recruitment(2, Some(resolver_settings(&narrow))))
            .await
            .unwrap();
        // A read 50 versions old is outside a window of 10, not the worker's own 5,000,000.
        let old_read = |epoch| ResolveBatch {
            epoch: Epoch(epoch),
            previous_version: Version(100),
            version: Version(150),
            transactions: vec![TransactionConflicts {
                read_version: Some(Version(100)),
                read_conflicts: vec![KeyRange::single("k")],
                write_conflicts: vec![],
            }],
        };
        let resolver = published.borrow().resolvers[0].clone();
        let verdicts = resolver.resolve(old_read(2)).await.unwrap();
        assert!(
            matches!(verdicts[0], Verdict::TooOld { .. }),
            "{verdicts:?}"
        );
        // A recruitment without settings runs the worker's own configuration.
        worker.recruit(recruitment(3, None)).await.unwrap();
        let resolver = published.borrow().resolvers[0].clone();
        let verdicts = resolver.resolve(old_read(3)).await.unwrap();
        assert_eq!(verdicts, vec![Verdict::Committed]);
        // A stale recruitment is fenced before its settings are read.
        let e = worker
            .recruit(recruitment(3, Some(zero)))
            .await
            .unwrap_err();
        assert!(matches!(e.kind, ErrorKind::Fenced { .. }), "{e}");
    }
}

#[cfg(test)]
mod config_tests {
    #![allow(clippy::unwrap_used)]

    use crate::EmbeddedConfig;

    #[test]
    fn a_director_refuses_resolver_settings_its_workers_would_refuse() {
        EmbeddedConfig::default().validate().unwrap();
        let mut config = EmbeddedConfig::default();
        config.resolver.batch_transactions_max = 0;
        let e = config.validate().unwrap_err();
        assert!(e.to_string().contains("batch_transactions_max"), "{e}");
        let mut config = EmbeddedConfig::default();
        config.resolver.predecessor_wait = std::time::Duration::from_secs(120);
        let e = config.validate().unwrap_err();
        assert!(e.to_string().contains("predecessor_wait"), "{e}");
    }
}
