//! Phase 7, `start_transaction_system`: the sequencer and the resolvers (on workers where they
//! are registered) and the commit proxies of the new epoch.

use std::sync::Arc;

use strata_commit_proxy::BatchingProxy;
use strata_core::{
    CommitProxy, Epoch, Key, LogServer, Resolver, Sequencer, StorageServer, Version,
};
use strata_net::{Recruitment, RemoteResolver, Role};
use strata_resolver::WindowResolver;
use strata_sequencer::ClockSequencer;
use strata_storage::RedbStorage;
use strata_testkit::network::{NetLog, NetProxy, NetResolver, NetSequencer, NetStorage};
use strata_txn_builder::Database;

use super::env::log_role;
use super::logs::NewLogs;
use super::{Attempt, RecoveryEnv};
use crate::cluster::{OwnSequencer, Pipeline};
use crate::config::EmbeddedConfig;
use crate::coordinator::StateStore;
use crate::faults::{FaultyLog, FaultyProxy, FaultyResolver, FaultySequencer, FaultyStorage};
use crate::split_begins;
use crate::workers::{self, Answered, Recruited, WorkerSequencer};

/// Phase 7: the sequencer past the recovery version, then resolvers and commit proxies, each
/// wrapped in its fault decorator in tests.
pub(super) async fn start_pipeline(
    env: &RecoveryEnv,
    store: &dyn StateStore,
    config: &EmbeddedConfig,
    epoch: Epoch,
    recovery_version: Version,
    logs: &NewLogs,
    storage: &[Arc<RedbStorage>],
) -> Attempt<Pipeline> {
    let faults = env.faults.as_ref();
    let network = env.network.as_ref();
    // Every registered worker is probed at once, whatever its role.
    let mut answered = match &env.access {
        Some(access) => {
            let candidates = workers::registered(store);
            Some(Answered::probe(candidates, access, config.probe_timeout, &env.passed_over).await)
        }
        None => None,
    };
    let mut recruited = Vec::new();
    let (sequencer, decorated_sequencer, sequencer_at) = start_sequencer(
        env,
        epoch,
        recovery_version,
        answered.as_mut(),
        &mut recruited,
    )
    .await;
    let decorated_logs: Vec<Arc<dyn LogServer>> = logs
        .logs
        .iter()
        .map(|l| {
            let mut log: Arc<dyn LogServer> = l.clone();
            if let Some(f) = faults {
                log = Arc::new(FaultyLog(log, f.clone()));
            }
            if let Some(n) = network {
                log = Arc::new(NetLog::new(log, n, &log_role(l.id())));
            }
            log
        })
        .collect();
    let Resolvers {
        resolvers,
        at: resolvers_at,
    } = start_resolvers(
        env,
        config,
        epoch,
        recovery_version,
        answered.as_mut(),
        &mut recruited,
    )
    .await;
    let decorated_resolvers = resolvers.iter().map(|(_, r)| r.clone()).collect();
    let mut proxies = Vec::new();
    let mut decorated_proxies: Vec<Arc<dyn CommitProxy>> = Vec::new();
    for i in 0..config.proxies {
        let proxy = Arc::new(BatchingProxy::new(
            epoch,
            decorated_sequencer.clone(),
            resolvers.clone(),
            decorated_logs.clone(),
            config.proxy,
        )?);
        proxies.push(proxy.clone());
        let mut proxy: Arc<dyn CommitProxy> = proxy;
        if let Some(f) = faults {
            proxy = FaultyProxy::wrap(proxy, f);
        }
        if let Some(n) = network {
            proxy = Arc::new(NetProxy::new(proxy, n, &format!("proxy-{i}")));
        }
        decorated_proxies.push(proxy);
    }
    let decorated_storage: Vec<Arc<dyn StorageServer>> = storage
        .iter()
        .enumerate()
        .map(|(i, s)| {
            let mut server: Arc<dyn StorageServer> = s.clone();
            if let Some(f) = faults {
                server = Arc::new(FaultyStorage(server, f.clone()));
            }
            if let Some(n) = network {
                server = Arc::new(NetStorage::new(server, n, &format!("storage-{i}")));
            }
            server
        })
        .collect();
    let database = Database::new(
        decorated_sequencer.clone(),
        decorated_proxies.clone(),
        decorated_storage.clone(),
        config.transactions,
    )?;
    Ok(Pipeline {
        sequencer,
        sequencer_at,
        decorated_sequencer,
        decorated_resolvers,
        resolvers_at,
        recruited,
        proxies,
        decorated_proxies,
        decorated_storage,
        database,
    })
}

/// The epoch's sequencer: recruited on a worker when one answered the probe (its worker then
/// joins `recruited`), run here otherwise. Returns it (stopped with the epoch), as the commit
/// path reaches it, and the worker's address.
async fn start_sequencer(
    env: &RecoveryEnv,
    epoch: Epoch,
    recovery_version: Version,
    answered: Option<&mut Answered>,
    recruited: &mut Vec<Recruited>,
) -> (OwnSequencer, Arc<dyn Sequencer>, Option<String>) {
    let recruitment = Recruitment {
        epoch,
        role: Role::Sequencer,
        recovery_version,
        resolver: None,
    };
    let remote = match answered {
        Some(answered) => answered
            .recruit::<WorkerSequencer>(1, recruitment)
            .await
            .pop(),
        None => None,
    };
    let (own, at) = match remote {
        Some((remote, worker)) => {
            let at = worker.place.address.clone();
            recruited.push(worker);
            (OwnSequencer::Worker(Arc::new(remote)), Some(at))
        }
        None => {
            let local = Arc::new(ClockSequencer::new(epoch, recovery_version));
            (OwnSequencer::Local(local), None)
        }
    };
    let mut sequencer = own.plain();
    if let Some(f) = &env.faults {
        sequencer = Arc::new(FaultySequencer(sequencer, f.clone()));
    }
    if let Some(n) = &env.network {
        sequencer = Arc::new(NetSequencer::new(sequencer, n, "sequencer"));
    }
    (own, sequencer, at)
}

/// The resolvers of an epoch, in the order of their key ranges (each from its begin key), as
/// the commit path reaches them, and where the ones recruited on workers are served.
struct Resolvers {
    resolvers: Vec<(Key, Arc<dyn Resolver>)>,
    at: Vec<Option<String>>,
}

/// Each resolver of the epoch: recruited on the workers that answered the probe (see
/// [`Answered::recruit`]), of the director's settings, for the first ranges (their workers
/// join `recruited`); run here for the others.
async fn start_resolvers(
    env: &RecoveryEnv,
    config: &EmbeddedConfig,
    epoch: Epoch,
    recovery_version: Version,
    answered: Option<&mut Answered>,
    recruited: &mut Vec<Recruited>,
) -> Resolvers {
    let remote = match answered {
        Some(answered) => {
            let recruitment = Recruitment {
                epoch,
                role: Role::Resolver,
                recovery_version,
                resolver: Some(workers::resolver_settings(&config.resolver)),
            };
            answered
                .recruit::<RemoteResolver>(config.resolvers, recruitment)
                .await
        }
        None => Vec::new(),
    };
    let mut remote = remote.into_iter();
    let mut out = Resolvers {
        resolvers: Vec::new(),
        at: Vec::new(),
    };
    for (i, begin) in split_begins(config.resolvers).into_iter().enumerate() {
        let mut r: Arc<dyn Resolver> = match remote.next() {
            Some((resolver, worker)) => {
                out.at.push(Some(worker.place.address.clone()));
                recruited.push(worker);
                Arc::new(resolver)
            }
            None => {
                out.at.push(None);
                Arc::new(WindowResolver::new(
                    epoch,
                    recovery_version,
                    config.resolver,
                ))
            }
        };
        if let Some(f) = &env.faults {
            r = Arc::new(FaultyResolver(r, f.clone()));
        }
        if let Some(n) = &env.network {
            r = Arc::new(NetResolver::new(r, n, &format!("resolver-{i}")));
        }
        out.resolvers.push((begin, r));
    }
    out
}
