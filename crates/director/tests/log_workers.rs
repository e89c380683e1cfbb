//! Transaction logs in worker processes of their own (`strata serve --role log`), created by a
//! director (`strata serve --role all`) with the coordinated state in a real etcd: Cycle runs
//! while a log worker is killed with SIGKILL under load, another while the cluster is idle,
//! both one after the other (the second while the recovery waits for the first), and then
//! the director, the workers' logs in segments of 64 KiB, so that the history spans many. A
//! killed log worker holds a log the next recovery must read, so the recovery waits for it to
//! come back at its address; each time the ring holds, every acknowledged commit is there,
//! and each worker keeps only the logs the coordinated state names.

#![allow(clippy::unwrap_used, clippy::expect_used, unreachable_pub)]

#[path = "common/served.rs"]
mod served;
#[path = "common/workers.rs"]
mod workers;

use std::path::Path;
use std::time::Duration;

use served::{
    Process, bench_values, check_through_the_network, collect_acks, cycle_client, segment_sizes,
    serve_with, stop_client,
};
use strata_testkit::etcd::EtcdServer;
use workers::{
    await_registry, cycle_a_while, etcd_cluster_file, kill, layout_at, listen, next_epoch,
    worker_of,
};

/// The log workers' segments: small, so that the history of the test spans many of them.
const SEGMENT_BYTES: &str = "65536";

/// `strata serve --role log` at `address`, holding its logs in `dir`, in segments of
/// [`SEGMENT_BYTES`].
fn log_worker(cluster_file: &Path, address: &str, dir: &Path) -> (Process, String) {
    worker_of(
        "log",
        cluster_file,
        address,
        &[
            "--data-dir",
            dir.to_str().unwrap(),
            "--log-segment-bytes",
            SEGMENT_BYTES,
        ],
    )
}

/// Where the layout of the running epoch says each log is, in the order of their ids.
fn logs_at(cluster_file: &Path) -> Vec<String> {
    layout_at(cluster_file, None, b"\xff/system/layout/logs/")
}

/// The log directories in the data directory `dir`.
fn log_dirs(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir.join("logs"))
        .into_iter()
        .flatten()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    names.sort();
    names
}

/// Every log of the epoch `epoch` is on a worker: one on each of `workers`, which hold no
/// other, and none in the director's `data` directory.
fn assert_logs_only_on(cluster_file: &Path, epoch: u64, workers: &[(&str, &Path)], data: &Path) {
    let mut at = logs_at(cluster_file);
    at.sort();
    let mut addresses: Vec<&str> = workers.iter().map(|(a, _)| *a).collect();
    addresses.sort_unstable();
    assert_eq!(at, addresses, "epoch {epoch}");
    for (address, dir) in workers {
        let held = log_dirs(dir);
        assert_eq!(held.len(), 1, "{address} holds {held:?} in epoch {epoch}");
        assert!(held[0].starts_with(&format!("{epoch}-")), "{held:?}");
    }
    assert_eq!(log_dirs(data), Vec::<String>::new());
}

#[test]
fn logs_on_workers_keep_every_acknowledged_commit_across_their_kills() {
    let Some(etcd) = EtcdServer::start() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let cluster_file = etcd_cluster_file(dir.path(), "logs:e4e5", &etcd);
    let file = cluster_file.to_str().unwrap();
    let (a_dir, b_dir) = (dir.path().join("a"), dir.path().join("b"));
    let (mut a, a_at) = log_worker(&cluster_file, "127.0.0.1:0", &a_dir);
    let (mut b, b_at) = log_worker(&cluster_file, "127.0.0.1:0", &b_dir);
    await_registry(&etcd.endpoint(), &cluster_file, &[&a_at, &b_at]);
    let workers = [
        (a_at.as_str(), a_dir.as_path()),
        (b_at.as_str(), b_dir.as_path()),
    ];

    let data = dir.path().join("data");
    let layout = ["--cluster-file", file, "--logs", "2", "--storage", "2"];
    let (mut director, address, said) = serve_with(&data, "127.0.0.1:0", &layout);
    let said = listen(said);
    assert_logs_only_on(&cluster_file, 1, &workers, &data);

    // A log worker killed under load: the pushes to it fail, the epoch ends, and the next
    // recovery, which must read its log, waits until it is back at its address.
    let mut acked = Vec::new();
    let (client, acks) = cycle_client(&cluster_file);
    collect_acks(&acks, &mut acked, Duration::from_secs(3), 200);
    kill(&mut a);
    std::thread::sleep(Duration::from_secs(1));
    (a, _) = log_worker(&cluster_file, &a_at, &a_dir);
    assert_eq!(next_epoch(&said), 2);
    assert_logs_only_on(&cluster_file, 2, &workers, &data);
    // The client waited for the new epoch and goes on in it.
    collect_acks(&acks, &mut acked, Duration::from_secs(3), 200);
    stop_client(client, &acks, &mut acked);

    // The other killed while nothing commits: its heartbeat fails and the epoch ends.
    kill(&mut b);
    std::thread::sleep(Duration::from_secs(1));
    (b, _) = log_worker(&cluster_file, &b_at, &b_dir);
    assert_eq!(next_epoch(&said), 3);
    assert_logs_only_on(&cluster_file, 3, &workers, &data);
    cycle_a_while(&cluster_file, &mut acked, Duration::from_secs(3), 200);

    // Two in a row: one killed under load, the other while the recovery that follows waits
    // for the first; they come back one after the other, and the recovery waits for both
    // (each holds a log it must read) without claiming an epoch in between.
    let (client, acks) = cycle_client(&cluster_file);
    collect_acks(&acks, &mut acked, Duration::from_secs(2), 100);
    kill(&mut a);
    kill(&mut b);
    std::thread::sleep(Duration::from_millis(500));
    (a, _) = log_worker(&cluster_file, &a_at, &a_dir);
    std::thread::sleep(Duration::from_secs(1));
    (b, _) = log_worker(&cluster_file, &b_at, &b_dir);
    assert_eq!(next_epoch(&said), 4);
    assert_logs_only_on(&cluster_file, 4, &workers, &data);
    collect_acks(&acks, &mut acked, Duration::from_secs(2), 100);
    stop_client(client, &acks, &mut acked);

    // The director killed under load: started again, it recovers from the logs on the
    // workers.
    let (client, acks) = cycle_client(&cluster_file);
    collect_acks(&acks, &mut acked, Duration::from_secs(2), 100);
    kill(&mut director);
    (director, _, _) = serve_with(&data, &address, &layout);
    assert_logs_only_on(&cluster_file, 5, &workers, &data);
    collect_acks(&acks, &mut acked, Duration::from_secs(2), 100);
    stop_client(client, &acks, &mut acked);

    // Each worker's log rolls about 50 segments of its size, and the storage servers keep
    // the last 5 s in memory, so the logs are not popped meanwhile.
    bench_values(&cluster_file);
    for (address, dir) in &workers {
        let segments = segment_sizes(dir).len();
        assert!(segments >= 20, "{address} holds {segments} segments");
    }
    check_through_the_network(&cluster_file, &acked);
    kill(&mut director);
    kill(&mut a);
    kill(&mut b);
}
