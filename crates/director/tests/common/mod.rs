//! Shared by the scenario tests: a small embedded cluster in a temporary directory.

// Each test binary uses its own subset of these helpers.
#![allow(dead_code)]

use strata_director::{EmbeddedCluster, EmbeddedConfig};

/// A cluster of two of everything (two storage servers and two resolvers split the key space
/// at `0x80`), in a directory that lives as long as the returned guard.
pub async fn cluster() -> (EmbeddedCluster, tempfile::TempDir) {
    let dir = tempfile::tempdir().expect("temporary directory");
    let config = EmbeddedConfig {
        logs: 2,
        storage: 2,
        resolvers: 2,
        proxies: 2,
        ..EmbeddedConfig::default()
    };
    let cluster = EmbeddedCluster::start(dir.path(), config)
        .await
        .expect("cluster starts");
    (cluster, dir)
}

/// A layout with every window shrunk, so that a history of a second is many windows long: the
/// storage servers keep 50 ms of versions in memory and flush every 10 ms, the director pops
/// the logs every 10 ms, and log segments hold 128 KiB.
pub fn small_windows(logs: usize, storage: usize, resolvers: usize) -> EmbeddedConfig {
    let defaults = EmbeddedConfig::default();
    EmbeddedConfig {
        logs,
        storage,
        resolvers,
        proxies: 1,
        log: strata_tlog::FileLogConfig {
            segment_bytes: 128 << 10,
            ..defaults.log
        },
        storage_config: strata_storage::StorageConfig {
            window_versions: 50_000,
            flush_interval: std::time::Duration::from_millis(10),
            ..defaults.storage_config
        },
        watermark_interval: std::time::Duration::from_millis(10),
        ..defaults
    }
}

/// Runs the Cycle workload with `clients` clients on a ring of `nodes` for `duration`;
/// returns every acknowledged transaction as `(client, n)`. `first` numbers this run's
/// transactions after earlier runs', so acknowledgement keys never repeat.
pub async fn cycle_for(
    db: &strata_director::Database,
    nodes: u64,
    clients: u64,
    first: u64,
    duration: std::time::Duration,
) -> Vec<(u64, u64)> {
    use strata_director::workload::{self, Plan, Span, cycle};
    let nodes = cycle::ensure_ring(db, nodes)
        .await
        .expect("the ring exists");
    let plan = Plan {
        clients,
        span: Span::For(duration),
        seed: first,
        first,
    };
    let cycle = std::sync::Arc::new(cycle::Cycle { nodes });
    workload::drive(db, cycle, &plan, workload::no_acks())
        .await
        .expect("every Cycle transaction commits")
        .acked
}

/// A cluster served in the background ([`strata_director::serve`]) on `dir` with faults from
/// `faults`: what it serves, a sender that shuts it down, and its task.
pub fn served(
    dir: &std::path::Path,
    config: EmbeddedConfig,
    faults: std::sync::Arc<strata_director::faults::Faults>,
) -> (
    tokio::sync::watch::Receiver<strata_director::Serving>,
    tokio::sync::oneshot::Sender<()>,
    tokio::task::JoinHandle<strata_core::Result<()>>,
) {
    let env = strata_director::RecoveryEnv::with_faults(faults);
    let (serving, watching) = tokio::sync::watch::channel(None);
    let (shutdown, stopped) = tokio::sync::oneshot::channel::<()>();
    let path = dir.to_owned();
    let server = tokio::spawn(async move {
        strata_director::serve(&path, config, &env, &serving, async {
            let _ = stopped.await;
        })
        .await
    });
    (watching, shutdown, server)
}

/// Every file under `dir` with its bytes, to show that a refused recovery changed nothing;
/// but for the directory's lock file, which names whichever process owns the directory now.
pub fn snapshot(dir: &std::path::Path) -> std::collections::BTreeMap<std::path::PathBuf, Vec<u8>> {
    let mut files = std::collections::BTreeMap::new();
    let mut todo = vec![dir.to_owned()];
    while let Some(at) = todo.pop() {
        for entry in std::fs::read_dir(&at).expect("a readable directory") {
            let path = entry.expect("a directory entry").path();
            if path.is_dir() {
                todo.push(path);
            } else if path.file_name() != Some(strata_director::owner::LOCK_FILE.as_ref()) {
                let bytes = std::fs::read(&path).expect("a readable file");
                files.insert(path.strip_prefix(dir).expect("below dir").to_owned(), bytes);
            }
        }
    }
    files
}

/// Panics naming the first file that differs between two snapshots.
pub fn assert_unchanged(
    before: &std::collections::BTreeMap<std::path::PathBuf, Vec<u8>>,
    after: &std::collections::BTreeMap<std::path::PathBuf, Vec<u8>>,
    what: &str,
) {
    let names = |m: &std::collections::BTreeMap<std::path::PathBuf, Vec<u8>>| {
        m.keys().cloned().collect::<Vec<_>>()
    };
    assert_eq!(
        names(before),
        names(after),
        "{what}: files added or removed"
    );
    for (path, bytes) in before {
        assert!(after[path] == *bytes, "{what}: {} changed", path.display());
    }
}

/// Rewrites the coordinated state of `dir` through `edit`, as a user with an editor would.
pub fn edit_state(dir: &std::path::Path, edit: impl FnOnce(&mut serde_json::Value)) {
    let path = dir.join("coordinated.json");
    let mut state: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&path).expect("the state")).expect("JSON");
    edit(&mut state);
    std::fs::write(&path, serde_json::to_vec_pretty(&state).expect("JSON")).expect("written");
}

/// The directory of the first log the coordinated state of `dir` names.
pub fn first_log_dir(dir: &std::path::Path) -> std::path::PathBuf {
    use strata_director::StateStore;
    let state = strata_director::FileStateStore::new(dir)
        .read()
        .expect("readable state")
        .expect("a state");
    dir.join(&state.logs[0].dir)
}

/// A fault switchboard, the environment that injects it, and the coordinated state of `dir`.
pub fn with_faults(
    dir: &std::path::Path,
) -> (
    strata_director::FileStateStore,
    std::sync::Arc<strata_director::faults::Faults>,
    strata_director::RecoveryEnv,
) {
    let faults = strata_director::faults::Faults::new();
    let env = strata_director::RecoveryEnv::with_faults(faults.clone());
    (strata_director::FileStateStore::new(dir), faults, env)
}

/// `worker` served in this process at `bind`, every call answered as `strata serve --role`
/// serves it, with what it publishes on `published`; where it serves.
pub async fn serve_worker_at(
    bind: &str,
    access: strata_net::Access,
    worker: std::sync::Arc<dyn strata_net::Recruiter>,
    published: tokio::sync::watch::Receiver<std::sync::Arc<strata_net::Stages>>,
) -> String {
    let listener = tokio::net::TcpListener::bind(bind).await.expect("bound");
    let address = listener.local_addr().expect("an address").to_string();
    tokio::spawn(strata_net::serve_worker(
        access,
        worker,
        published,
        listener,
        std::future::pending::<()>(),
    ));
    address
}

/// Registers a worker of `role` living at `address` for the cluster `name` with id `id`, in
/// the registry of `etcd`; it stays registered while the returned registration lives.
pub async fn register(
    etcd: &str,
    name: &str,
    id: &str,
    role: &str,
    address: &str,
) -> strata_director::workers::Registration {
    strata_director::workers::Registration::start(
        strata_net::etcd::Etcd::connect(&[etcd.to_owned()]).expect("etcd"),
        &strata_director::workers::registry_prefix(name, id),
        strata_director::workers::WorkerPlace {
            role: role.into(),
            address: address.into(),
            registered: 0,
        },
    )
    .await
    .expect("registered")
}

/// Waits (for at most a minute) until `serving` shows an epoch after `epoch`; returns it.
pub async fn next_epoch(
    serving: &mut tokio::sync::watch::Receiver<strata_director::Serving>,
    epoch: strata_core::Epoch,
) -> strata_core::Epoch {
    let seen = tokio::time::timeout(
        std::time::Duration::from_secs(60),
        serving.wait_for(|s| s.as_ref().is_some_and(|(e, _)| *e > epoch)),
    )
    .await
    .unwrap_or_else(|_| panic!("no epoch after {epoch} came in time"))
    .expect("the server publishes epochs");
    seen.as_ref().expect("an epoch").0
}

/// `clients` clients that run Cycle on a ring of `nodes` against whatever epoch `serving`
/// shows, across epoch changes, until `stop` says so, recording in `acked` what was
/// acknowledged; a transaction that fails because its epoch ended is simply not
/// acknowledged.
pub fn serving_clients(
    serving: &tokio::sync::watch::Receiver<strata_director::Serving>,
    stop: &tokio::sync::watch::Receiver<bool>,
    acked: &std::sync::Arc<std::sync::Mutex<Vec<(u64, u64)>>>,
    (nodes, clients): (u64, u64),
) -> Vec<tokio::task::JoinHandle<()>> {
    (0..clients)
        .map(|c| {
            let (mut serving, stop, acked) = (serving.clone(), stop.clone(), acked.clone());
            tokio::spawn(async move {
                let mut rng = strata_testkit::rng::SplitMix64(c);
                let mut n = 0;
                while !*stop.borrow() {
                    let db = match serving.wait_for(Option::is_some).await {
                        Ok(s) => s.as_ref().expect("an epoch").1.clone(),
                        Err(_) => return,
                    };
                    let rewired =
                        strata_director::workload::cycle::rewire(&db, nodes, &mut rng, c, n).await;
                    if rewired.is_ok() {
                        acked.lock().expect("not poisoned").push((c, n));
                    } else {
                        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
                    }
                    n += 1;
                }
            })
        })
        .collect()
}
