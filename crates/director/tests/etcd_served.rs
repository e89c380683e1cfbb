//! `strata serve --listen ADDR --cluster-file FILE` with the coordinated state in a real etcd
//! (see `strata_testkit::etcd`): clients find the cluster through etcd with the same cluster
//! file, from any directory; the server is killed with SIGKILL mid-workload and restarted
//! (waiting out its old lease), etcd is killed under a running server, and a second server
//! given the same cluster file waits while the first directs, and cannot take the cluster
//! over from a data directory that does not hold it.

#![allow(clippy::unwrap_used, clippy::expect_used, unreachable_pub)]

#[path = "common/served.rs"]
mod served;

use std::io::BufRead;
use std::process::Stdio;
use std::time::{Duration, Instant};

use served::{
    check_through_the_network, collect_acks, cycle_client, serve_with, stop_client, strata,
};
use strata_director::coordinator::etcd::DIRECTOR_LEASE_TTL;
use strata_testkit::etcd::EtcdServer;

#[test]
fn a_cluster_kept_in_etcd_serves_clients_through_its_cluster_file_across_kills() {
    let Some(mut etcd) = EtcdServer::start() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let cluster_file = dir.path().join("prod.cluster");
    std::fs::write(
        &cluster_file,
        format!("# made by hand\nprod:e2e1@etcd://{}\n", etcd.endpoint()),
    )
    .unwrap();
    let flags = |layout: &[&'static str]| {
        let mut all = vec!["--cluster-file", cluster_file.to_str().unwrap()];
        all.extend_from_slice(layout);
        all
    };
    let (mut server, address, _) = serve_with(
        &data,
        "127.0.0.1:0",
        &flags(&["--logs", "2", "--storage", "2", "--resolvers", "2"]),
    );
    let mut acked = Vec::new();

    // One client throughout: it follows every recovery below.
    let (client, acks) = cycle_client(&cluster_file);

    // SIGKILL mid-workload; the restart waits out the dead server's lease, then recovers.
    collect_acks(&acks, &mut acked, Duration::from_secs(3), 100);
    server.kill().unwrap();
    server.wait().unwrap();
    let killed = Instant::now();
    (server, _, _) = serve_with(&data, &address, &flags(&["--logs", "1", "--proxies", "2"]));
    assert!(
        killed.elapsed() >= DIRECTOR_LEASE_TTL / 2,
        "a second director started while the first one's lease lived"
    );
    collect_acks(&acks, &mut acked, Duration::from_secs(1), 50);

    // etcd killed under a running server and back within the lease: nothing stops.
    etcd.kill();
    collect_acks(&acks, &mut acked, Duration::from_secs(1), 50);
    etcd.restart();
    collect_acks(&acks, &mut acked, Duration::from_secs(2), 100);
    server.kill().unwrap();
    server.wait().unwrap();
    let mut said;
    (server, _, said) = serve_with(&data, &address, &flags(&["--logs", "3"]));
    collect_acks(&acks, &mut acked, Duration::from_secs(1), 50);

    // etcd away for longer than the lease: the server stops its epoch (its client waits), and
    // once etcd is back it leads again and serves a new epoch, where the client goes on.
    etcd.kill();
    std::thread::sleep(DIRECTOR_LEASE_TTL + Duration::from_secs(2));
    etcd.restart();
    let next = said.next().expect("serves again").unwrap();
    assert!(next.starts_with("serving epoch 4 "), "{next}");
    collect_acks(&acks, &mut acked, Duration::from_secs(1), 50);
    stop_client(client, &acks, &mut acked);

    check_through_the_network(&cluster_file, &acked);
    server.kill().unwrap();
    server.wait().unwrap();
    // The state is in etcd, not in the directory; the directory's tools find it there.
    assert!(!data.join("coordinated.json").exists());
    let status = strata()
        .args(["status", "--json", "--data-dir"])
        .arg(&data)
        .output()
        .unwrap();
    assert!(status.status.success(), "{status:?}");
    let status: serde_json::Value = serde_json::from_slice(&status.stdout).unwrap();
    assert_eq!(status["epoch"], 4, "{status}");
}

#[test]
fn a_second_server_of_the_cluster_waits_and_cannot_take_it_from_another_directory() {
    let Some(_etcd) = EtcdServer::start() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let cluster_file = dir.path().join("prod.cluster");
    std::fs::write(
        &cluster_file,
        format!("prod:e2e2@etcd://{}\n", _etcd.endpoint()),
    )
    .unwrap();
    let file = cluster_file.to_str().unwrap();
    let first_dir = dir.path().join("first");
    let (mut first, address, _) = serve_with(&first_dir, "127.0.0.1:0", &["--cluster-file", file]);
    let (client, acks) = cycle_client(&cluster_file);
    let mut acked = Vec::new();
    collect_acks(&acks, &mut acked, Duration::from_secs(1), 50);

    // A second server, another directory, the same cluster: it waits for the director's lease.
    let mut second = strata()
        .args([
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--cluster-file",
            file,
            "--data-dir",
        ])
        .arg(dir.path().join("second"))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    collect_acks(
        &acks,
        &mut acked,
        DIRECTOR_LEASE_TTL + Duration::from_secs(1),
        50,
    );
    assert!(
        second.try_wait().unwrap().is_none(),
        "the second server stopped"
    );
    let said: Vec<String> = std::io::BufReader::new(second.stdout.take().unwrap())
        .lines()
        .take(1)
        .map(Result::unwrap)
        .collect();
    assert!(said[0].starts_with("cluster file: "), "{said:?}");

    // The first dies. The second takes the lease, but the state says the cluster lives in the
    // first's directory: it refuses to recover (no epoch claimed, nothing written) and exits.
    first.kill().unwrap();
    first.wait().unwrap();
    let refused = second.wait_with_output().unwrap();
    assert_eq!(refused.status.code(), Some(1), "{refused:?}");
    let text = String::from_utf8_lossy(&refused.stderr);
    assert!(
        text.contains("not in this data directory") && text.contains("first"),
        "{text}"
    );

    // The first comes back (the second gave its lease up on the way out) with every commit.
    let restarted = Instant::now();
    (first, _, _) = serve_with(&first_dir, &address, &["--cluster-file", file]);
    assert!(
        restarted.elapsed() < DIRECTOR_LEASE_TTL,
        "the lease was not given up"
    );
    // The client waited for the first, and goes on with it.
    collect_acks(&acks, &mut acked, Duration::from_secs(1), 50);
    stop_client(client, &acks, &mut acked);
    check_through_the_network(&cluster_file, &acked);
    first.kill().unwrap();
    first.wait().unwrap();
}
