//! Phase 7, `start_transaction_system`: the sequencer and the resolvers (on workers where they
//! are registered) and the commit proxies of the new epoch.

use std::sync::Arc;

use crate::HeldStorage;
use strata_commit_proxy::BatchingProxy;
use strata_core::{
    CommitProxy, Epoch, Key, LogServer, Resolver, Result, Sequencer, StorageServer, Version,
};
use strata_net::{ProxyWiring, Recruitment, RemoteProxy, RemoteResolver, Role, Stages};
use strata_resolver::WindowResolver;
use strata_sequencer::ClockSequencer;
use strata_testkit::network::{NetLog, NetProxy, NetResolver, NetSequencer, NetStorage};
use strata_txn_builder::Database;

use super::env::log_role;
use super::logs::NewLogs;
use super::{Attempt, Claim, RecoveryEnv};
use crate::cluster::{OwnSequencer, Pipeline};
use crate::config::EmbeddedConfig;
use crate::coordinator::LogPlace;
use crate::faults::{FaultyLog, FaultyProxy, FaultyResolver, FaultySequencer, FaultyStorage};
use crate::split_begins;
use crate::workers::{self, Answered, Recruited, WorkerSequencer};

/// Phase 7: the sequencer past the recovery version, then resolvers and commit proxies, each
/// wrapped in its fault decorator in tests.
pub(super) async fn start_pipeline(
    env: &RecoveryEnv,
    config: &EmbeddedConfig,
    claim: &Claim,
    recovery_version: Version,
    logs: &NewLogs,
    mut answered: Option<Answered>,
    storage: &[Arc<dyn HeldStorage>],
) -> Attempt<Pipeline> {
    let (epoch, token) = (claim.epoch, claim.token.as_str());
    let mut recruited = Vec::new();
    let (sequencer, decorated_sequencer, sequencer_at) = start_sequencer(
        env,
        epoch,
        recovery_version,
        answered.as_mut(),
        &mut recruited,
    )
    .await;
    let decorated_logs = decorate_logs(env, logs);
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
    let remote = start_remote_proxies(
        env,
        config,
        epoch,
        recovery_version,
        answered.as_mut(),
        &mut recruited,
        Wiring {
            sequencer: (&decorated_sequencer, sequencer_at.as_deref()),
            resolvers: &resolvers,
            resolvers_at: &resolvers_at,
            logs: &decorated_logs,
            places: &logs.places,
            token,
            storage_follows: storage.iter().any(|s| s.worker().is_some())
                && logs.places.iter().any(|p| p.at.is_none()),
        },
    )
    .await;
    let Proxies {
        proxies,
        decorated: decorated_proxies,
        at: proxies_at,
        peers,
        system: system_proxies,
    } = start_proxies(
        env,
        config,
        epoch,
        remote,
        &decorated_sequencer,
        &resolvers,
        &decorated_logs,
    )?;
    let decorated_storage = decorate_storage(env, storage);
    let database = Database::new(
        decorated_sequencer.clone(),
        decorated_proxies.clone(),
        decorated_storage.clone(),
        config.transactions,
    )?;
    let system_database = Database::new(
        decorated_sequencer.clone(),
        system_proxies,
        decorated_storage.clone(),
        config.transactions,
    )?;
    Ok(Pipeline {
        sequencer,
        sequencer_at,
        decorated_sequencer,
        decorated_resolvers,
        resolvers_at: resolvers_at
            .into_iter()
            .map(|at| at.map(|(address, _)| address))
            .collect(),
        recruited,
        proxies,
        proxies_at,
        peers,
        decorated_proxies,
        decorated_storage,
        database,
        system_database,
    })
}

/// The logs of the new generation as the commit path reaches them: through the fault
/// decorator and the simulated network, when there are.
fn decorate_logs(env: &RecoveryEnv, logs: &NewLogs) -> Vec<Arc<dyn LogServer>> {
    logs.logs
        .iter()
        .map(|l| {
            let mut log: Arc<dyn LogServer> = l.clone();
            if let Some(f) = &env.faults {
                log = Arc::new(FaultyLog(log, f.clone()));
            }
            if let Some(n) = &env.network {
                log = Arc::new(NetLog::new(log, n, &log_role(l.id())));
            }
            log
        })
        .collect()
}

/// The storage servers as the commit path reaches them, as [`decorate_logs`] the logs.
fn decorate_storage(
    env: &RecoveryEnv,
    storage: &[Arc<dyn HeldStorage>],
) -> Vec<Arc<dyn StorageServer>> {
    storage
        .iter()
        .enumerate()
        .map(|(i, s)| {
            let mut server: Arc<dyn StorageServer> = s.clone();
            if let Some(f) = &env.faults {
                server = Arc::new(FaultyStorage(server, f.clone()));
            }
            if let Some(n) = &env.network {
                server = Arc::new(NetStorage::new(server, n, &format!("storage-{i}")));
            }
            server
        })
        .collect()
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
        proxy: None,
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
/// the commit path reaches them, and where the ones recruited on workers are served (the
/// worker's address and the resolver's index there).
struct Resolvers {
    resolvers: Vec<(Key, Arc<dyn Resolver>)>,
    at: Vec<Option<(String, u32)>>,
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
                proxy: None,
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
                out.at
                    .push(Some((worker.place.address.clone(), worker.index)));
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

/// Where the stages a commit proxy calls run this epoch: the sequencer as the commit path
/// reaches it and the worker it runs on (if one), the resolvers in the order of their ranges
/// with the workers of those recruited on one, and the logs.
struct Wiring<'a> {
    sequencer: (&'a Arc<dyn Sequencer>, Option<&'a str>),
    resolvers: &'a [(Key, Arc<dyn Resolver>)],
    resolvers_at: &'a [Option<(String, u32)>],
    logs: &'a [Arc<dyn LogServer>],
    /// Where each log lives: a log on a worker is reached there, the others here.
    places: &'a [LogPlace],
    /// The epoch's secret, which the logs on workers and the stages published here ask of
    /// every call.
    token: &'a str,
    /// Storage workers follow logs of this process on the peer port: what is published there
    /// stays for the epoch, even when no proxy is recruited.
    storage_follows: bool,
}

/// Commit proxies recruited on workers (each with its worker's address), and the director's
/// own stages published on its port for the cluster's processes while they run.
#[derive(Default)]
struct RemoteProxies {
    proxies: Vec<(RemoteProxy, String)>,
    published: Option<workers::Published>,
}

/// Recruits commit proxies on the workers that answered the probe, for the first of the
/// epoch's proxies, when this process serves a port for the cluster's processes
/// ([`RecoveryEnv::peers`]): the stages run here (the sequencer unless a worker runs it, the
/// resolvers no worker runs, the logs) are published there first, and each recruitment says
/// where every stage is. Their workers join `recruited`.
async fn start_remote_proxies(
    env: &RecoveryEnv,
    config: &EmbeddedConfig,
    epoch: Epoch,
    recovery_version: Version,
    answered: Option<&mut Answered>,
    recruited: &mut Vec<Recruited>,
    wiring: Wiring<'_>,
) -> RemoteProxies {
    let Some(answered) = answered.filter(|a| a.count(Role::Proxy) > 0) else {
        return RemoteProxies::default();
    };
    let Some(peers) = &env.peers else {
        tracing::warn!(
            "proxy workers are registered, but this director serves no port for the cluster's \
             processes (--peer-listen), through which they would reach the logs: the commit \
             proxies run here"
        );
        return RemoteProxies::default();
    };
    let mut here = Stages::default();
    let (sequencer, sequencer_at) = wiring.sequencer;
    let sequencer = match sequencer_at {
        Some(worker) => worker.to_owned(),
        None => {
            here.sequencer = Some(sequencer.clone());
            peers.address.clone()
        }
    };
    let mut resolvers = Vec::new();
    for ((begin, resolver), at) in wiring.resolvers.iter().zip(wiring.resolvers_at) {
        let (address, index) = match at {
            Some(worker) => worker.clone(),
            None => {
                here.resolvers.push(resolver.clone());
                let index = u32::try_from(here.resolvers.len() - 1).unwrap_or(u32::MAX);
                (peers.address.clone(), index)
            }
        };
        resolvers.push((begin.clone(), address, index));
    }
    let mut logs = Vec::new();
    for (log, place) in wiring.logs.iter().zip(wiring.places) {
        let address = match &place.at {
            Some(worker) => worker.clone(),
            None => {
                here.logs.push(log.clone());
                peers.address.clone()
            }
        };
        logs.push((log.id(), address));
    }
    let token = wiring.token.to_owned();
    let published = peers.publish(epoch, token.clone(), here);
    let recruitment = Recruitment {
        epoch,
        role: Role::Proxy,
        recovery_version,
        resolver: None,
        proxy: Some(ProxyWiring {
            sequencer,
            resolvers,
            logs,
            settings: workers::proxy_settings(&config.proxy),
            token: Some(token),
        }),
    };
    let proxies: Vec<(RemoteProxy, String)> = answered
        .recruit::<RemoteProxy>(config.proxies, recruitment)
        .await
        .into_iter()
        .map(|(proxy, worker)| {
            let at = worker.place.address.clone();
            recruited.push(worker);
            (proxy, at)
        })
        .collect();
    // Nothing recruited: nothing to serve there (dropping the publication withdraws it),
    // unless storage workers follow the logs published there: this publication replaced the
    // one phase 6 made for them, and withdrawing it would leave them no log to follow.
    let published = (!proxies.is_empty() || wiring.storage_follows).then_some(published);
    RemoteProxies { proxies, published }
}

/// The commit proxies of an epoch: those run here (which monitoring asks for their health),
/// every one of the layout as the commit path reaches it, where each recruited on a worker
/// runs, the stages published for those, and the proxies the director's own system
/// transactions go through.
struct Proxies {
    proxies: Vec<Arc<BatchingProxy>>,
    decorated: Vec<Arc<dyn CommitProxy>>,
    at: Vec<Option<String>>,
    peers: Option<workers::Published>,
    system: Vec<Arc<dyn CommitProxy>>,
}

/// The epoch's commit proxies: the ones recruited on workers first, then as many run here as
/// make up the configured count, each wrapped in its fault decorator in tests.
///
/// System keys are written only through proxies run here: a proxy worker refuses them (its
/// port is reached with the cluster id that every client holds), so when every proxy of the
/// layout is on a worker, one more runs here for the director's system transactions (the
/// persistence phase's), named in no layout and served to no client.
fn start_proxies(
    env: &RecoveryEnv,
    config: &EmbeddedConfig,
    epoch: Epoch,
    remote: RemoteProxies,
    sequencer: &Arc<dyn Sequencer>,
    resolvers: &[(Key, Arc<dyn Resolver>)],
    logs: &[Arc<dyn LogServer>],
) -> Result<Proxies> {
    let mut out = Proxies {
        proxies: Vec::new(),
        decorated: Vec::new(),
        at: Vec::new(),
        peers: remote.published,
        system: Vec::new(),
    };
    let local = || {
        BatchingProxy::new(
            epoch,
            sequencer.clone(),
            resolvers.to_vec(),
            logs.to_vec(),
            config.proxy,
        )
        .map(Arc::new)
    };
    let decorate = |mut proxy: Arc<dyn CommitProxy>, name: &str| {
        if let Some(f) = &env.faults {
            proxy = FaultyProxy::wrap(proxy, f);
        }
        if let Some(n) = &env.network {
            proxy = Arc::new(NetProxy::new(proxy, n, name));
        }
        proxy
    };
    let mut remote = remote.proxies.into_iter();
    for i in 0..config.proxies {
        let name = format!("proxy-{i}");
        match remote.next() {
            Some((proxy, worker)) => {
                out.at.push(Some(worker));
                out.decorated.push(decorate(Arc::new(proxy), &name));
            }
            None => {
                let proxy = local()?;
                out.proxies.push(proxy.clone());
                out.at.push(None);
                let proxy = decorate(proxy, &name);
                out.system.push(proxy.clone());
                out.decorated.push(proxy);
            }
        }
    }
    if out.system.is_empty() {
        let proxy = local()?;
        out.proxies.push(proxy.clone());
        out.system.push(decorate(proxy, "proxy-system"));
    }
    Ok(out)
}
