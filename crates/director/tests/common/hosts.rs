//! Workers served in the test's own process, as `strata serve --role log|storage|proxy` serves
//! them, registered in a real etcd: for the tests that stop and start them under a director
//! run in process (`log_workers_in_process.rs`, `storage_workers_in_process.rs`).

// Each test binary uses its own subset of these helpers.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use strata_director::coordinator::etcd::EtcdStateStore;
use strata_director::workers::{LogWorker, ProxyWorker, Registration, StorageWorker};
use strata_director::{Coordination, EmbeddedConfig, StateStore};
use strata_net::{Access, ClusterId, Recruiter, Stages};
use strata_storage::StorageConfig;
use tokio::sync::{oneshot, watch};

pub fn access(id: &str) -> Access {
    Access::new(ClusterId::new(id).unwrap(), None)
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Log,
    Storage,
    /// A commit proxy worker that answers the probe but fails every recruitment: it reaches
    /// the director's stages with another cluster's id.
    BrokenProxy,
}

/// A worker served in this process until it is stopped.
pub struct Host {
    pub kind: Kind,
    pub address: String,
    pub dir: PathBuf,
    stop: oneshot::Sender<()>,
    served: tokio::task::JoinHandle<strata_core::Result<()>>,
    _registration: Registration,
}

/// The cluster the hosts serve.
pub struct Cluster {
    /// The cluster's name and id, as its cluster file gives them.
    pub name: &'static str,
    pub id: String,
    /// The etcd endpoint its state and registry are in.
    pub etcd: String,
    /// The director's configuration, whose log and storage settings the workers take.
    pub config: EmbeddedConfig,
}

impl Cluster {
    /// A worker of `kind` holding what it holds in `dir`, served at `bind` and registered.
    pub async fn start(&self, kind: Kind, bind: &str, dir: &Path) -> Host {
        let store = {
            let (etcd, id, name) = (self.etcd.clone(), self.id.clone(), self.name);
            tokio::task::spawn_blocking(move || EtcdStateStore::new(&[etcd], name, &id))
                .await
                .unwrap()
                .unwrap()
        };
        let (publish, published) = watch::channel(Arc::new(Stages::default()));
        let worker: Arc<dyn Recruiter> = match kind {
            Kind::Log => {
                Arc::new(LogWorker::new(dir, self.config.log, Arc::new(store), publish).unwrap())
            }
            Kind::BrokenProxy => Arc::new(ProxyWorker::new(access("another"), publish)),
            Kind::Storage => {
                let config = StorageConfig {
                    pop_log: false,
                    ..self.config.storage_config
                };
                let access = access(&self.id);
                Arc::new(StorageWorker::new(dir, config, access, Arc::new(store), publish).unwrap())
            }
        };
        let listener = tokio::net::TcpListener::bind(bind).await.unwrap();
        let address = listener.local_addr().unwrap().to_string();
        let role = match kind {
            Kind::Log => "log",
            Kind::Storage => "storage",
            Kind::BrokenProxy => "proxy",
        };
        // Registered before it serves, so a recovery that reaches it finds it in the registry.
        let registration =
            crate::common::register(&self.etcd, self.name, &self.id, role, &address).await;
        let (stop, stopped) = oneshot::channel::<()>();
        let served = tokio::spawn(strata_net::serve_worker(
            access(&self.id),
            worker,
            published,
            listener,
            async {
                let _ = stopped.await;
            },
        ));
        Host {
            kind,
            address,
            dir: dir.to_owned(),
            stop,
            served,
            _registration: registration,
        }
    }

    /// `host` stopped, and started again on its directory and address after `away`.
    pub async fn restart(&self, hosts: &mut Vec<Host>, i: usize, away: Duration) {
        let host = hosts.remove(i);
        let kind = host.kind;
        let (address, dir) = host.stop().await;
        tokio::time::sleep(away).await;
        hosts.insert(i, self.start(kind, &address, &dir).await);
    }
}

impl Host {
    /// Stops serving; the worker and what it holds are closed once its last call is done.
    pub async fn stop(self) -> (String, PathBuf) {
        self.stop.send(()).unwrap();
        self.served.await.unwrap().unwrap();
        (self.address, self.dir)
    }
}

/// The state of `data`, read from etcd off the runtime's threads.
pub async fn state_of(data: &Path) -> strata_director::CoordinatedState {
    let data = data.to_owned();
    tokio::task::spawn_blocking(move || {
        Coordination::for_data_dir(&data)
            .unwrap()
            .read()
            .unwrap()
            .unwrap()
    })
    .await
    .unwrap()
}

impl Cluster {
    /// A new cluster `name:id` with its state in `etcd`, its director's data directory
    /// (returned) under `dir`, and every window shrunk (`common::small_windows`), log segments
    /// to 16 KiB: an epoch here lasts about a second, some 200 KB of history a log, which
    /// segments of 16 KiB split into a dozen or more, rolled and popped on the workers.
    pub fn new(
        (name, id): (&'static str, &str),
        etcd: &strata_testkit::etcd::EtcdServer,
        (logs, storage): (usize, usize),
        dir: &Path,
    ) -> (Cluster, PathBuf) {
        let data = dir.join("data");
        std::fs::create_dir(&data).unwrap();
        let file = format!("{name}:{id}@etcd://{}", etcd.endpoint());
        let file = strata_director::cluster_file::ClusterFile::parse(&file).unwrap();
        strata_director::cluster_file::ClusterFile::for_data_dir(&data, Some(&file)).unwrap();
        let small = crate::common::small_windows(logs, storage, 1);
        let config = EmbeddedConfig {
            monitor_interval: Duration::from_millis(20),
            log: strata_tlog::FileLogConfig {
                segment_bytes: 16 << 10,
                ..small.log
            },
            ..small
        };
        let cluster = Cluster {
            name,
            id: id.to_owned(),
            etcd: etcd.endpoint(),
            config,
        };
        (cluster, data)
    }
}

/// The director of the cluster in `data`, serving in this process with `config` and `env`
/// until the returned sender fires: its task, and the epochs it serves.
pub fn start_director(
    data: &Path,
    config: EmbeddedConfig,
    env: strata_director::RecoveryEnv,
) -> (
    tokio::task::JoinHandle<strata_core::Result<()>>,
    watch::Receiver<strata_director::Serving>,
    oneshot::Sender<()>,
) {
    let (serving, watching) = watch::channel(None);
    let (shutdown, stopped) = oneshot::channel::<()>();
    let data = data.to_owned();
    let server = tokio::spawn(async move {
        strata_director::serve(&data, config, &env, &serving, async {
            let _ = stopped.await;
        })
        .await
    });
    (server, watching, shutdown)
}
