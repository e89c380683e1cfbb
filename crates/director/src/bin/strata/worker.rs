//! `strata serve --role ROLE`: a worker process, which registers in the cluster's etcd and
//! runs a stage of its role for whichever epoch the director recruits it for (see
//! [`strata_director::workers`]).

use std::sync::Arc;

use strata_core::{Error, ErrorKind, Result, Stage};
use strata_director::cluster_file::{ClusterFile, StatePlace};
use strata_director::coordinator::etcd::EtcdStateStore;
use strata_director::workers::{
    LogWorker, ProxyWorker, Registration, ResolverWorker, SequencerWorker, StorageWorker,
    WorkerPlace, registry_prefix,
};
use strata_net::etcd::Etcd;
use strata_net::{Access, Recruiter, Role, Stages};
use strata_storage::StorageConfig;
use strata_tlog::FileLogConfig;

use super::ServeArgs;

fn refuse(why: String) -> Error {
    Error::new(Stage::Director, ErrorKind::InvalidRequest(why))
}

/// A log (storage) worker's data directory holds its logs (its storage server) only: a
/// director's (one holding a coordinated state, or a cluster file) or another worker's would
/// have its log directories (its storage files) taken for the cluster's.
fn worker_dir(dir: &std::path::Path, role: Role) -> Result<()> {
    let other = match role {
        Role::Storage => "logs",
        _ => "storage",
    };
    for theirs in ["coordinated.json", "strata.cluster", other] {
        if dir.join(theirs).exists() {
            return Err(refuse(format!(
                "{} holds {theirs}: it is a director's or another worker's data directory; \
                 give a {role} worker a --data-dir of its own",
                dir.display()
            )));
        }
    }
    Ok(())
}

/// Exits with a usage error (exit 2, as clap reports the others) for a flag that is not for a
/// `role` worker: the director's layout and port, and a log's segment size but on a log
/// worker.
fn refuse_flags_of_others(args: &ServeArgs, role: Role) {
    let layout = &args.layout;
    let why = if layout.logs.is_some()
        || layout.storage.is_some()
        || layout.resolvers.is_some()
        || layout.proxies.is_some()
        || args.peer_listen.is_some()
    {
        format!(
            "--logs, --storage, --resolvers, --proxies and --peer-listen are the director's \
             (--role all): a {role} worker runs what it is recruited for"
        )
    } else if args.log_segment_bytes.is_some() && role != Role::Log {
        format!(
            "--log-segment-bytes is for processes that hold logs (--role all or log), not a \
             {role} worker"
        )
    } else {
        return;
    };
    <super::Cli as clap::CommandFactory>::command()
        .error(clap::error::ErrorKind::ArgumentConflict, why)
        .exit();
}

pub(crate) async fn serve(args: ServeArgs, role: Role) -> Result<()> {
    super::listen_for_signals();
    refuse_flags_of_others(&args, role);
    // Both required with a worker's role (checked by clap).
    let (Some(listen), Some(path)) = (&args.listen, &args.cluster_file) else {
        return Err(refuse(format!(
            "a {role} worker needs --listen and --cluster-file"
        )));
    };
    let file = ClusterFile::read(path)?;
    let StatePlace::Etcd(endpoints) = &file.place else {
        return Err(refuse(format!(
            "{}: a worker registers in etcd, and this cluster file names a data directory \
             ({}): give one of the form NAME:ID@etcd://HOST:PORT",
            path.display(),
            file.place
        )));
    };
    let tls = args.tls.load()?;
    let (listener, address) = super::bind_told(listen, "the director and the workers").await?;
    let (publish, published) = tokio::sync::watch::channel(Arc::new(Stages::default()));
    let worker: Arc<dyn Recruiter> = match role {
        Role::Resolver => Arc::new(ResolverWorker::new(
            strata_director::EmbeddedConfig::default().resolver,
            publish,
        )),
        Role::Sequencer => Arc::new(SequencerWorker::new(publish)),
        // It reaches the stages its proxies call as the director reaches it.
        Role::Proxy => Arc::new(ProxyWorker::new(
            Access::new(file.id.clone(), tls.clone()),
            publish,
        )),
        Role::Log => {
            let dir = &args.layout.data_dir;
            worker_dir(dir, role)?;
            let store = EtcdStateStore::new(endpoints, &file.name, file.id.as_str())?;
            let default = FileLogConfig::default();
            let config = FileLogConfig {
                segment_bytes: args.log_segment_bytes.unwrap_or(default.segment_bytes),
                ..default
            };
            let logs = LogWorker::new(dir, config, Arc::new(store), publish)?;
            Arc::new(logs)
        }
        Role::Storage => {
            let dir = &args.layout.data_dir;
            worker_dir(dir, role)?;
            let store = EtcdStateStore::new(endpoints, &file.name, file.id.as_str())?;
            // The director pops the logs, after the oldest durable version of every server.
            let config = StorageConfig {
                pop_log: false,
                ..strata_director::EmbeddedConfig::default().storage_config
            };
            let access = Access::new(file.id.clone(), tls.clone());
            let storage = StorageWorker::new(dir, config, access, Arc::new(store), publish)?;
            Arc::new(storage)
        }
        other => return Err(refuse(format!("no worker runs the role {other}"))),
    };
    let etcd = Etcd::connect(endpoints)?;
    let registration = Registration::start(
        etcd,
        &registry_prefix(&file.name, file.id.as_str()),
        WorkerPlace {
            role: role.name().to_owned(),
            address: address.clone(),
            registered: 0,
        },
    )
    .await?;
    out!(
        "{role} worker of {}:{} at {address}; Ctrl-C or SIGTERM stops",
        file.name,
        file.id
    );
    sweep_at_start(&worker).await;
    let served = strata_net::serve_worker(
        Access::new(file.id.clone(), tls),
        worker,
        published,
        listener,
        // Out of the registry first, so no recovery picks a worker that is shutting down.
        async {
            super::stop_requested().await;
            registration.withdraw().await;
        },
    )
    .await;
    if served.is_ok() {
        out!("stopped");
    }
    served
}

/// A log worker removes, as it starts, the logs the coordinated state stopped naming while it
/// was away (see [`LogWorker`]).
async fn sweep_at_start(worker: &Arc<dyn Recruiter>) {
    let Some(logs) = worker.clone().log_host() else {
        return;
    };
    match logs.sweep().await {
        Ok(removed) if !removed.is_empty() => {
            tracing::info!(
                ?removed,
                "removed logs the coordinated state no longer names"
            );
        }
        Ok(_) => {}
        Err(e) => tracing::warn!(error = %e, "cannot sweep old logs now; the next recovery will"),
    }
}
