//! Storage servers on storage workers (`StorageWorker`s served in this process as `strata
//! serve --role storage` serves them, registered in a real etcd), with every window shrunk: a
//! storage window of 50,000 versions and log segments of 16 KiB, so each epoch's history spans
//! many windows. The first epoch places each storage server on a worker, and the coordinated
//! state keeps it there. Cycle runs while a storage worker is stopped in the middle of an
//! epoch and started again on the same directory and address, then while both are stopped
//! one after the other (the second while the recovery waits for the first), then (with the
//! logs on log workers) a storage worker and a log worker together: each time the next epoch
//! waits for them, the ring holds, every acknowledged commit is there, and the watermark makes
//! history durable on the workers. Run with the logs in the director's process (which the
//! storage workers follow through its peer port) and with the logs on log workers.

#![allow(clippy::unwrap_used, clippy::expect_used, unreachable_pub)]

mod common;
#[path = "common/hosts.rs"]
mod hosts;

use hosts::{Cluster, Host, Kind, access, state_of};

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use strata_core::{Epoch, Version};
use strata_director::RecoveryEnv;
use strata_director::workers::PeerPort;
use strata_director::workload::cycle::{check_acks, check_ring, ensure_ring};
use strata_net::{Exposure, Stages};
use strata_testkit::etcd::EtcdServer;
use tokio::sync::watch;

const NAME: &str = "swip";
const NODES: u64 = 30;
const CLIENTS: u64 = 4;

/// The state of `epoch` places every storage server on a worker, one on each storage host,
/// where they were placed first (`placed`), and the director's directory holds no storage.
async fn assert_storage_on_hosts(data: &Path, epoch: Epoch, placed: &[Option<String>]) {
    let state = state_of(data).await;
    assert_eq!(state.epoch, epoch);
    assert_eq!(state.storage_at, placed, "epoch {epoch}");
    let here = std::fs::read_dir(data.join("storage"))
        .map(|d| d.count())
        .unwrap_or(0);
    assert_eq!(here, 0, "the director's directory holds storage");
}

async fn storage_on_workers(
    logs_on_workers: bool,
    logs: usize,
    storage: usize,
    broken_proxy: bool,
) {
    let Some(etcd) = EtcdServer::start() else {
        return;
    };
    let id = format!(
        "{}{logs}l{storage}s",
        if logs_on_workers { "w" } else { "d" }
    );
    let dir = tempfile::tempdir().unwrap();
    let (cluster, data) = Cluster::new((NAME, &id), &etcd, (logs, storage), dir.path());
    let config = cluster.config;
    let mut hosts = Vec::new();
    for i in 0..storage {
        let host_dir = dir.path().join(format!("storage{i}"));
        hosts.push(cluster.start(Kind::Storage, "127.0.0.1:0", &host_dir).await);
    }
    if logs_on_workers {
        for i in 0..logs {
            let host_dir = dir.path().join(format!("log{i}"));
            hosts.push(cluster.start(Kind::Log, "127.0.0.1:0", &host_dir).await);
        }
    }
    if broken_proxy {
        let host_dir = dir.path().join("proxy");
        hosts.push(
            cluster
                .start(Kind::BrokenProxy, "127.0.0.1:0", &host_dir)
                .await,
        );
    }
    let env = env_for(&id, !logs_on_workers).await;
    let (server, mut watching, shutdown) = hosts::start_director(&data, config, env);
    let epoch = common::next_epoch(&mut watching, Epoch(0)).await;
    let placed = state_of(&data).await.storage_at;
    assert_eq!(placed.len(), storage, "{placed:?}");
    let mut storage_hosts: Vec<Option<String>> = hosts
        .iter()
        .filter(|h| h.kind == Kind::Storage)
        .map(|h| Some(h.address.clone()))
        .collect();
    let mut sorted = placed.clone();
    sorted.sort();
    storage_hosts.sort();
    assert_eq!(sorted, storage_hosts, "one storage server on each host");
    assert_storage_on_hosts(&data, epoch, &placed).await;
    {
        let db = watching.borrow().as_ref().unwrap().1.clone();
        ensure_ring(&db, NODES).await.unwrap();
    }
    let acked = Arc::new(Mutex::new(Vec::new()));
    let (stop_clients, clients_stop) = watch::channel(false);
    let tasks = common::serving_clients(&watching, &clients_stop, &acked, (NODES, CLIENTS));
    let epoch = stop_hosts(&cluster, &mut hosts, &mut watching, (&data, epoch, &placed)).await;
    assert!(epoch.0 >= 3);

    tokio::time::sleep(Duration::from_millis(800)).await;
    stop_clients.send(true).unwrap();
    for t in tasks {
        t.await.unwrap();
    }
    let db = watching.borrow().as_ref().unwrap().1.clone();
    check_ring(&db).await.unwrap();
    let acked = acked.lock().unwrap().clone();
    assert!(acked.len() > 100, "{} acknowledged", acked.len());
    check_acks(&db, &acked).await.unwrap();
    // Reads went to the workers: the ring is read through the serving epoch's database, whose
    // storage servers are the workers' (the director holds none).
    shutdown.send(()).unwrap();
    server.await.unwrap().unwrap();
    assert_at_rest(&data, &placed, hosts).await;
}

/// Stops storage hosts, and log hosts if there are, while the clients run (see the module
/// docs); after each stop, the next epoch keeps every storage server where it was `placed`.
/// Returns the last epoch.
async fn stop_hosts(
    cluster: &Cluster,
    hosts: &mut Vec<Host>,
    watching: &mut watch::Receiver<strata_director::Serving>,
    (data, mut epoch, placed): (&Path, Epoch, &[Option<String>]),
) -> Epoch {
    let storage = placed.len();
    let logs_on_workers = hosts.iter().any(|h| h.kind == Kind::Log);
    let host_of = |hosts: &[Host], at: &Option<String>| {
        hosts
            .iter()
            .position(|h| Some(&h.address) == at.as_ref())
            .unwrap()
    };

    // A storage host stopped in the middle of an epoch, many windows into it; back on its
    // directory and address a moment later.
    tokio::time::sleep(Duration::from_millis(800)).await;
    let i = host_of(hosts, &placed[0]);
    cluster.restart(hosts, i, Duration::from_millis(300)).await;
    epoch = common::next_epoch(watching, epoch).await;
    assert_storage_on_hosts(data, epoch, placed).await;

    // Two in a row: the host of the last storage server, then, while the recovery waits for
    // it, the host of the first; started again in the other order.
    tokio::time::sleep(Duration::from_millis(800)).await;
    let i = host_of(hosts, &placed[storage - 1]);
    let last = hosts.remove(i).stop().await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    let i = host_of(hosts, &placed[0]);
    let first = hosts.remove(i).stop().await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    hosts.push(cluster.start(Kind::Storage, &first.0, &first.1).await);
    tokio::time::sleep(Duration::from_millis(300)).await;
    hosts.push(cluster.start(Kind::Storage, &last.0, &last.1).await);
    let before = epoch;
    epoch = common::next_epoch(watching, epoch).await;
    assert_eq!(
        epoch.0,
        before.0 + 1,
        "no epoch was claimed while a host was away"
    );
    assert_storage_on_hosts(data, epoch, placed).await;

    if logs_on_workers {
        // A storage host and a log host together.
        tokio::time::sleep(Duration::from_millis(800)).await;
        let log = hosts.iter().position(|h| h.kind == Kind::Log).unwrap();
        let log = hosts.remove(log).stop().await;
        let i = host_of(hosts, &placed[0]);
        let store = hosts.remove(i).stop().await;
        tokio::time::sleep(Duration::from_millis(300)).await;
        hosts.push(cluster.start(Kind::Log, &log.0, &log.1).await);
        hosts.push(cluster.start(Kind::Storage, &store.0, &store.1).await);
        epoch = common::next_epoch(watching, epoch).await;
        assert_storage_on_hosts(data, epoch, placed).await;
    }

    epoch
}

/// What a director with access to the workers of the cluster `id` recovers with; with a peer
/// port when `peers` (the storage workers then follow the director's logs through it).
async fn env_for(id: &str, peers: bool) -> RecoveryEnv {
    let mut env = RecoveryEnv::default();
    env.access = Some(access(id));
    if peers {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap().to_string();
        let (stages, published) = watch::channel(Arc::new(Stages::default()));
        tokio::spawn(strata_net::serve(
            access(id),
            Exposure::Everything,
            published,
            listener,
            std::future::pending::<()>(),
        ));
        env.peers = Some(PeerPort {
            address,
            stages: Arc::new(stages),
        });
    }
    env
}

/// With the director stopped: the tools that read its directory at rest name the storage
/// workers instead of taking the shards for lost, and (once the hosts are stopped too) each
/// storage worker's file shows that the watermark reached it.
async fn assert_at_rest(data: &Path, placed: &[Option<String>], hosts: Vec<Host>) {
    // At rest the tools name the workers instead of taking the shards for lost.
    let report = strata_director::verify(data).await.unwrap();
    assert!(report.findings.is_empty(), "{:?}", report.findings);
    assert!(report.storage.is_empty(), "{:?}", report.storage);
    for at in placed.iter().flatten() {
        assert!(
            report.on_workers.iter().any(|(_, a)| a == at),
            "{at} not in {:?}",
            report.on_workers
        );
    }
    let e = strata_director::Snapshot::open(data).await.err().unwrap();
    assert!(e.to_string().contains("on workers"), "{e}");

    // The watermark reached the workers: each made durable much of the last epoch's history
    // (it ran 800 ms, some 800,000 versions, over a window of 50,000).
    let last_recovery = state_of(data).await.recovery_version;
    let mut storage_dirs = Vec::new();
    for host in hosts {
        let kind = host.kind;
        let (_, host_dir) = host.stop().await;
        if kind == Kind::Storage {
            storage_dirs.push(host_dir);
        }
    }
    for host_dir in storage_dirs {
        let files: Vec<PathBuf> = std::fs::read_dir(host_dir.join("storage"))
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect();
        assert_eq!(files.len(), 1, "{files:?}");
        let durable = strata_storage::durable_version_at(&files[0]).unwrap();
        assert!(
            durable > Version(last_recovery.0 + 100_000),
            "{}: {durable}, recovered at {last_recovery}",
            files[0].display()
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn storage_workers_following_the_directors_logs_stopped_mid_epoch_and_twice_in_a_row() {
    storage_on_workers(false, 1, 2, false).await;
}

/// A proxy worker recruited for nothing (its recruitment fails) must not take the director's
/// logs away from the storage workers that follow them on its peer port.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn storage_workers_keep_the_directors_logs_when_no_proxy_worker_is_recruited() {
    storage_on_workers(false, 2, 2, true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn storage_and_log_workers_stopped_mid_epoch_twice_in_a_row_and_together() {
    storage_on_workers(true, 2, 2, false).await;
}

/// A storage worker back at its address on a directory that does not hold the server the
/// coordinated state places there (a new disk, another worker's directory) is found by the
/// checks before recovery, which stop and say so: never taken for a server with nothing
/// durable, whose history the logs popped long ago.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_storage_worker_back_without_its_file_stops_recovery_naming_it() {
    let Some(etcd) = EtcdServer::start() else {
        return;
    };
    let id = "lost1s";
    let dir = tempfile::tempdir().unwrap();
    let (mut cluster, data) = Cluster::new((NAME, id), &etcd, (1, 1), dir.path());
    cluster.config.recovery_attempts_max = 2;
    let config = cluster.config;
    let host = cluster
        .start(Kind::Storage, "127.0.0.1:0", &dir.path().join("storage0"))
        .await;
    let (server, mut watching, shutdown) =
        hosts::start_director(&data, config, env_for(id, true).await);
    common::next_epoch(&mut watching, Epoch(0)).await;
    let db = watching.borrow().as_ref().unwrap().1.clone();
    ensure_ring(&db, NODES).await.unwrap();
    // Far more history than the logs keep once the server made it durable.
    let mut rng = strata_testkit::rng::SplitMix64(7);
    for n in 0..300 {
        strata_director::workload::cycle::rewire(&db, NODES, &mut rng, 0, n)
            .await
            .unwrap();
    }
    shutdown.send(()).unwrap();
    server.await.unwrap().unwrap();
    let (at, _) = host.stop().await;

    let _host = cluster
        .start(Kind::Storage, &at, &dir.path().join("empty"))
        .await;
    let (server, _watching, _shutdown) =
        hosts::start_director(&data, config, env_for(id, true).await);
    let e = server.await.unwrap().unwrap_err();
    let said = e.to_string();
    assert!(said.contains(&at), "{said}");
    assert!(said.contains("holds no file"), "{said}");
}

/// A storage worker that holds a new cluster's server file with nothing durable (left by a
/// first recovery that failed before the coordinated state named it) gets that server again,
/// and the other worker the other server: none is left holding a file no server uses while
/// a server is created in the director's directory.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_holding_a_new_servers_file_gets_that_server_and_the_others_the_rest() {
    let Some(etcd) = EtcdServer::start() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let (cluster, data) = Cluster::new((NAME, "pref2s"), &etcd, (1, 2), dir.path());
    let config = cluster.config;
    // Server 0's file, as its open by a failed attempt left it: shards recorded, nothing
    // durable.
    let (a, b) = (dir.path().join("a"), dir.path().join("b"));
    std::fs::create_dir_all(b.join("storage")).unwrap();
    let shard = strata_director::split_ranges(2).unwrap()[0].clone();
    let log = Arc::new(strata_testkit::MemoryLog::new(
        strata_core::LogId(1),
        Version(0),
    ));
    let left = strata_storage::RedbStorage::open(
        &b.join("storage/0.redb"),
        vec![shard],
        log,
        config.storage_config,
    )
    .await
    .unwrap();
    left.close().await;
    drop(left);

    let hosts = [
        cluster.start(Kind::Storage, "127.0.0.1:0", &a).await,
        cluster.start(Kind::Storage, "127.0.0.1:0", &b).await,
    ];
    let env = env_for("pref2s", true).await;
    let (server, mut watching, shutdown) = hosts::start_director(&data, config, env);
    let epoch = common::next_epoch(&mut watching, Epoch(0)).await;
    let placed = vec![
        Some(hosts[1].address.clone()),
        Some(hosts[0].address.clone()),
    ];
    assert_storage_on_hosts(&data, epoch, &placed).await;
    shutdown.send(()).unwrap();
    server.await.unwrap().unwrap();
    for host in hosts {
        host.stop().await;
    }
}
