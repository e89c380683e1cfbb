//! Phase 7, `start_transaction_system`: the sequencer, the resolvers (on workers where they
//! are registered) and the commit proxies of the new epoch.

use std::sync::Arc;

use strata_commit_proxy::BatchingProxy;
use strata_core::{
    CommitProxy, Epoch, Key, LogServer, Resolver, Sequencer, StorageServer, Version,
};
use strata_net::Role;
use strata_resolver::WindowResolver;
use strata_sequencer::ClockSequencer;
use strata_storage::RedbStorage;
use strata_testkit::network::{NetLog, NetProxy, NetResolver, NetSequencer, NetStorage};
use strata_txn_builder::Database;

use super::env::log_role;
use super::logs::NewLogs;
use super::{Attempt, RecoveryEnv};
use crate::cluster::Pipeline;
use crate::config::EmbeddedConfig;
use crate::coordinator::StateStore;
use crate::faults::{FaultyLog, FaultyProxy, FaultyResolver, FaultySequencer, FaultyStorage};
use crate::split_begins;
use crate::workers::{self, Recruited};

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
    let sequencer = Arc::new(ClockSequencer::new(epoch, recovery_version));
    let mut decorated_sequencer: Arc<dyn Sequencer> = match faults {
        Some(f) => Arc::new(FaultySequencer(sequencer.clone(), f.clone())),
        None => sequencer.clone(),
    };
    if let Some(n) = network {
        decorated_sequencer = Arc::new(NetSequencer::new(decorated_sequencer, n, "sequencer"));
    }
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
        recruited,
    } = start_resolvers(env, store, config, epoch, recovery_version).await;
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

/// The resolvers of an epoch, in the order of their key ranges (each from its begin key), as
/// the commit path reaches them; where the ones recruited on workers are served; and those
/// workers, for monitoring.
struct Resolvers {
    resolvers: Vec<(Key, Arc<dyn Resolver>)>,
    at: Vec<Option<String>>,
    recruited: Vec<Recruited>,
}

/// Each resolver of the epoch: recruited on a registered resolver worker when this process
/// reaches workers (`env.access`) and one answers (see [`workers::recruit_resolvers`]), for
/// the first ranges; run here for the others.
async fn start_resolvers(
    env: &RecoveryEnv,
    store: &dyn StateStore,
    config: &EmbeddedConfig,
    epoch: Epoch,
    recovery_version: Version,
) -> Resolvers {
    let mut remote = match &env.access {
        Some(access) => {
            let candidates = workers::registered(store, Role::Resolver);
            workers::recruit_resolvers(
                candidates,
                config.resolvers,
                access,
                epoch,
                recovery_version,
                &config.resolver,
                config.probe_timeout,
                &env.passed_over,
            )
            .await
        }
        None => Vec::new(),
    }
    .into_iter();
    let mut out = Resolvers {
        resolvers: Vec::new(),
        at: Vec::new(),
        recruited: Vec::new(),
    };
    for (i, begin) in split_begins(config.resolvers).into_iter().enumerate() {
        let mut r: Arc<dyn Resolver> = match remote.next() {
            Some((resolver, recruited)) => {
                out.at.push(Some(recruited.place.address.clone()));
                out.recruited.push(recruited);
                resolver
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
