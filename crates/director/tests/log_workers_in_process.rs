//! Logs on log workers (`LogWorker`s served in this process as `strata serve --role log`
//! serves them, registered in a real etcd), with every window shrunk: segments of 16 KiB and a
//! storage window of 50,000 versions, so each epoch's history spans many segments (rolled and
//! popped on the workers) and many windows. Cycle runs while a log worker is stopped in the
//! middle of an epoch and started again on the same directory and address, then while both
//! are stopped one after the other (the second while the recovery waits for the first): each
//! time the next epoch waits for them, the ring holds, every acknowledged commit is there, and
//! each worker keeps only the log the coordinated state names. Run in 2-log and 3-log layouts.
//! (`log_workers.rs` does the same with processes killed by SIGKILL, at default windows.)

#![allow(clippy::unwrap_used, clippy::expect_used, unreachable_pub)]

mod common;
#[path = "common/hosts.rs"]
mod hosts;

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use strata_core::Epoch;
use strata_director::RecoveryEnv;
use strata_director::workload::cycle::{check_acks, check_ring, ensure_ring};
use strata_testkit::etcd::EtcdServer;
use tokio::sync::watch;

use hosts::{Cluster, Host, Kind, access, state_of};

const NAME: &str = "lwip";
const NODES: u64 = 30;
const CLIENTS: u64 = 4;

/// Every log of the state of `epoch` is on a worker, one on each host, and each host holds
/// that one log only.
async fn assert_logs_only_on_hosts(data: &Path, epoch: Epoch, hosts: &[(String, PathBuf)]) {
    let state = state_of(data).await;
    assert_eq!(state.epoch, epoch);
    let mut at: Vec<String> = state.logs.iter().map(|p| p.at.clone().unwrap()).collect();
    at.sort();
    let mut addresses: Vec<String> = hosts.iter().map(|(a, _)| a.clone()).collect();
    addresses.sort();
    assert_eq!(at, addresses, "epoch {epoch}");
    for (address, dir) in hosts {
        let held: Vec<String> = std::fs::read_dir(dir.join("logs"))
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        assert_eq!(held.len(), 1, "{address} holds {held:?} in epoch {epoch}");
        assert!(held[0].starts_with(&format!("{}-", epoch.0)), "{held:?}");
    }
}

/// At rest, the tools that read the data directory alone say where the logs are instead of
/// taking them for lost: `strata check` and `status` list them as not read here, and a read at
/// rest (`dump`, `get`) is refused, naming them.
async fn assert_read_at_rest_names_the_workers(data: &Path, places: &[(String, PathBuf)]) {
    let report = strata_director::verify(data).await.unwrap();
    assert!(report.findings.is_empty(), "{:?}", report.findings);
    let mut on_workers: Vec<String> = report.on_workers.iter().map(|(_, at)| at.clone()).collect();
    on_workers.sort();
    let mut addresses: Vec<String> = places.iter().map(|(a, _)| a.clone()).collect();
    addresses.sort();
    assert_eq!(on_workers, addresses);
    assert_eq!(report.recoverable_version, None);
    let e = strata_director::Snapshot::open(data).await.err().unwrap();
    assert!(
        matches!(e.kind, strata_core::ErrorKind::Unavailable(_)),
        "{e}"
    );
    assert!(e.to_string().contains("on workers"), "{e}");
    assert!(e.to_string().contains(&addresses[0]), "{e}");
}

async fn stopped_and_started_again(logs: usize, storage: usize) {
    let Some(etcd) = EtcdServer::start() else {
        return;
    };
    let id = format!("{logs}l{storage}s");
    let dir = tempfile::tempdir().unwrap();
    let (cluster, data) = Cluster::new((NAME, &id), &etcd, (logs, storage), dir.path());
    let config = cluster.config;
    let mut hosts = Vec::new();
    for i in 0..logs {
        let host_dir = dir.path().join(format!("host{i}"));
        hosts.push(cluster.start(Kind::Log, "127.0.0.1:0", &host_dir).await);
    }
    let places: Vec<(String, PathBuf)> = hosts
        .iter()
        .map(|h| (h.address.clone(), h.dir.clone()))
        .collect();

    let mut env = RecoveryEnv::default();
    env.access = Some(access(&id));
    let (server, mut watching, shutdown) = hosts::start_director(&data, config, env);
    let mut epoch = common::next_epoch(&mut watching, Epoch(0)).await;
    assert_logs_only_on_hosts(&data, epoch, &places).await;
    {
        let db = watching.borrow().as_ref().unwrap().1.clone();
        ensure_ring(&db, NODES).await.unwrap();
    }
    let acked = Arc::new(Mutex::new(Vec::new()));
    let (stop_clients, clients_stop) = watch::channel(false);
    let tasks = common::serving_clients(&watching, &clients_stop, &acked, (NODES, CLIENTS));

    // One host stopped in the middle of an epoch, many windows and segments into it; back on
    // its directory and address a moment later.
    tokio::time::sleep(Duration::from_millis(800)).await;
    cluster
        .restart(&mut hosts, 0, Duration::from_millis(300))
        .await;
    epoch = common::next_epoch(&mut watching, epoch).await;
    assert_logs_only_on_hosts(&data, epoch, &places).await;

    // Two in a row: the host of the state's last log stopped mid-epoch, then, while the
    // recovery waits for it, the host of the first log, which that recovery's phase 1 (opening
    // the logs in the state's order) has opened already; started again in the other order.
    // The recovery must open the first log again on its restarted host.
    tokio::time::sleep(Duration::from_millis(800)).await;
    let state = state_of(&data).await;
    let host_of = |hosts: &[Host], i: usize| {
        let at = state.logs[i].at.as_ref().unwrap();
        hosts.iter().position(|h| &h.address == at).unwrap()
    };
    let i = host_of(&hosts, state.logs.len() - 1);
    let last = hosts.remove(i).stop().await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    let i = host_of(&hosts, 0);
    let first = hosts.remove(i).stop().await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    hosts.push(cluster.start(Kind::Log, &first.0, &first.1).await);
    tokio::time::sleep(Duration::from_millis(300)).await;
    hosts.push(cluster.start(Kind::Log, &last.0, &last.1).await);
    let before = epoch;
    epoch = common::next_epoch(&mut watching, epoch).await;
    assert_eq!(
        epoch.0,
        before.0 + 1,
        "no epoch was claimed while a host was away"
    );
    assert_logs_only_on_hosts(&data, epoch, &places).await;

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
    shutdown.send(()).unwrap();
    server.await.unwrap().unwrap();

    assert_read_at_rest_names_the_workers(&data, &places).await;

    for host in hosts {
        host.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_log_hosts_stopped_mid_epoch_and_twice_in_a_row() {
    stopped_and_started_again(2, 2).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_log_hosts_stopped_mid_epoch_and_twice_in_a_row() {
    stopped_and_started_again(3, 1).await;
}
