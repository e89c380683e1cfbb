//! Commit proxies in worker processes of their own (`strata serve --role proxy`), beside a
//! sequencer and a resolver worker, recruited by a director that serves its own stages to them
//! on a second port (`strata serve --peer-listen`), with the coordinated state in a real etcd:
//! Cycle runs from another process while the proxy worker is killed with SIGKILL under load,
//! the sequencer worker while idle, and the director under load; each time the next epoch
//! recruits the workers that remain (or runs the stage itself), the ring holds and every
//! acknowledged commit is there.

#![allow(clippy::unwrap_used, clippy::expect_used, unreachable_pub)]

#[path = "common/served.rs"]
mod served;
#[path = "common/workers.rs"]
mod workers;

use std::path::Path;
use std::time::Duration;

use served::{check_through_the_network, collect_acks, cycle_client, serve_with, stop_client};
use strata_testkit::etcd::EtcdServer;
use workers::{
    await_registry, cycle_a_while, etcd_cluster_file, kill, layout_at, listen, next_epoch,
    worker_of,
};

/// Where the running epoch's layout says each commit proxy runs.
fn proxies_at(cluster_file: &Path) -> Vec<String> {
    layout_at(cluster_file, None, b"\xff/system/layout/commit_proxies/")
}

#[test]
fn proxy_sequencer_and_resolver_workers_survive_the_loss_of_each_and_of_the_director() {
    let Some(etcd) = EtcdServer::start() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let cluster_file = etcd_cluster_file(dir.path(), "pp:e7a1", &etcd);
    let file = cluster_file.to_str().unwrap();
    let (mut proxy, proxy_at) = worker_of("proxy", &cluster_file, "127.0.0.1:0", &[]);
    let (mut sequencer, sequencer_at) = worker_of("sequencer", &cluster_file, "127.0.0.1:0", &[]);
    let (mut resolver, resolver_at) = worker_of("resolver", &cluster_file, "127.0.0.1:0", &[]);
    let all = [
        proxy_at.as_str(),
        sequencer_at.as_str(),
        resolver_at.as_str(),
    ];
    await_registry(&etcd.endpoint(), &cluster_file, &all);

    let data = dir.path().join("data");
    let layout = [
        "--cluster-file",
        file,
        "--peer-listen",
        "127.0.0.1:0",
        "--proxies",
        "2",
        "--resolvers",
        "2",
        "--logs",
        "2",
        "--storage",
        "2",
    ];
    let (mut director, address, said) = serve_with(&data, "127.0.0.1:0", &layout);
    let said = listen(said);
    // The first proxy on its worker (it calls the sequencer and the first resolver on
    // theirs, the second resolver and the logs on the director's port), the second here.
    assert_eq!(
        proxies_at(&cluster_file),
        [proxy_at.as_str(), address.as_str()]
    );
    let mut acked = Vec::new();
    cycle_a_while(&cluster_file, &mut acked, Duration::from_secs(1), 200);

    // The proxy worker killed under load: the epoch ends (its heartbeat fails, and the
    // commits it carried with it), and the next runs both proxies here.
    let (client, acks) = cycle_client(&cluster_file);
    collect_acks(&acks, &mut acked, Duration::from_secs(2), 100);
    kill(&mut proxy);
    assert_eq!(next_epoch(&said), 2);
    assert_eq!(
        proxies_at(&cluster_file),
        [address.as_str(), address.as_str()]
    );
    collect_acks(&acks, &mut acked, Duration::from_secs(1), 100);
    stop_client(client, &acks, &mut acked);

    // The proxy worker back at its address, then the sequencer worker killed while nothing
    // commits: the next epoch runs the sequencer here, and the proxy worker's proxy calls it
    // on the director's port.
    let (mut proxy, _) = worker_of("proxy", &cluster_file, &proxy_at, &[]);
    await_registry(&etcd.endpoint(), &cluster_file, &all);
    kill(&mut sequencer);
    assert_eq!(next_epoch(&said), 3);
    assert_eq!(
        proxies_at(&cluster_file),
        [proxy_at.as_str(), address.as_str()]
    );
    cycle_a_while(&cluster_file, &mut acked, Duration::from_secs(1), 100);

    // The sequencer worker back, then the director killed under load: started again, it
    // recruits all three workers.
    let (mut sequencer, _) = worker_of("sequencer", &cluster_file, &sequencer_at, &[]);
    await_registry(&etcd.endpoint(), &cluster_file, &all);
    let (client, acks) = cycle_client(&cluster_file);
    collect_acks(&acks, &mut acked, Duration::from_secs(1), 100);
    kill(&mut director);
    (director, _, _) = serve_with(&data, &address, &layout);
    assert_eq!(
        proxies_at(&cluster_file),
        [proxy_at.as_str(), address.as_str()]
    );
    let named = layout_at(&cluster_file, None, b"\xff/system/layout/sequencer");
    assert_eq!(named, [sequencer_at.as_str()]);
    let named = layout_at(&cluster_file, None, b"\xff/system/layout/resolvers/");
    assert_eq!(named, [resolver_at.as_str(), address.as_str()]);
    collect_acks(&acks, &mut acked, Duration::from_secs(2), 200);
    stop_client(client, &acks, &mut acked);

    check_through_the_network(&cluster_file, &acked);
    for child in [&mut director, &mut proxy, &mut sequencer, &mut resolver] {
        kill(child);
    }
}

/// The director's second port is told to workers: one on every interface is refused, as
/// `--listen`'s is, and it needs a cluster file (workers register in its etcd).
#[test]
fn the_directors_second_port_needs_a_cluster_file_and_an_address_workers_reach() {
    let dir = tempfile::tempdir().unwrap();
    let cluster_file = dir.path().join("e.cluster");
    std::fs::write(&cluster_file, "e:e7a2@etcd://127.0.0.1:9\n").unwrap();
    let data = dir.path().join("data");
    let runs = [
        (
            vec!["--listen", "127.0.0.1:0", "--peer-listen", "127.0.0.1:0"],
            "--cluster-file <FILE>",
            2,
        ),
        (
            vec![
                "--listen",
                "127.0.0.1:0",
                "--peer-listen",
                "0.0.0.0:0",
                "--cluster-file",
                cluster_file.to_str().unwrap(),
            ],
            "0.0.0.0:0 is every interface, and workers are told the address",
            1,
        ),
    ];
    for (flags, says, code) in runs {
        let out = served::strata()
            .args(["serve", "--data-dir"])
            .arg(&data)
            .args(&flags)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(code), "{flags:?}: {stderr}");
        assert!(stderr.contains(says), "{flags:?}: {stderr}");
    }
}
