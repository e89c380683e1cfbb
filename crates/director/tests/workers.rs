//! Resolvers and the sequencer in worker processes of their own (`strata serve --role
//! resolver|sequencer`), recruited by a director (`strata serve --role all`) with the
//! coordinated state in a real etcd (see `strata_testkit::etcd`): Cycle runs while a worker is
//! killed with SIGKILL under load, another while the cluster is idle, two at once, and the
//! director; each time the next epoch recruits the workers that remain (or runs the stage
//! itself), the ring holds and every acknowledged commit is there.

#![allow(clippy::unwrap_used, clippy::expect_used, unreachable_pub)]

#[path = "common/served.rs"]
mod served;
#[path = "common/workers.rs"]
mod workers;

use std::path::Path;
use std::time::{Duration, Instant};

use served::{
    Process, check_through_the_network, collect_acks, cycle_client, serve_with, stop_client, strata,
};
use strata_director::cluster_file::ClusterFile;
use strata_director::workers::registry_prefix;
use strata_net::etcd::Etcd;
use strata_testkit::certs::{self, CA, NODE_CERT, NODE_KEY};
use strata_testkit::etcd::EtcdServer;
use workers::{await_registry, etcd_cluster_file, kill, layout_at, listen, next_epoch, worker_of};

/// `strata serve --role resolver` at `address`, once it says where it serves.
fn worker(cluster_file: &Path, address: &str) -> (Process, String) {
    worker_with(cluster_file, address, &[])
}

/// [`worker`] with more flags (TLS).
fn worker_with(cluster_file: &Path, address: &str, flags: &[&str]) -> (Process, String) {
    worker_of("resolver", cluster_file, address, flags)
}

/// Where the layout of the running epoch says each resolver runs.
fn resolvers_at(cluster_file: &Path) -> Vec<String> {
    resolvers_at_with(cluster_file, None)
}

/// [`resolvers_at`], reached with TLS.
fn resolvers_at_with(cluster_file: &Path, tls: Option<&strata_net::Tls>) -> Vec<String> {
    layout_at(cluster_file, tls, b"\xff/system/layout/resolvers/")
}

/// Where the layout of the running epoch says the sequencer runs.
fn sequencer_at(cluster_file: &Path) -> String {
    let at = layout_at(cluster_file, None, b"\xff/system/layout/sequencer");
    assert_eq!(at.len(), 1, "{at:?}");
    at[0].clone()
}

#[test]
fn resolvers_on_workers_are_recruited_each_epoch_and_a_lost_one_ends_it() {
    let Some(etcd) = EtcdServer::start() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let cluster_file = etcd_cluster_file(dir.path(), "w:e2e3", &etcd);
    let file = cluster_file.to_str().unwrap();
    let (mut one, one_at) = worker(&cluster_file, "127.0.0.1:0");
    let (mut two, two_at) = worker(&cluster_file, "127.0.0.1:0");
    await_registry(&etcd.endpoint(), &cluster_file, &[&one_at, &two_at]);
    let mut by_address = [one_at.clone(), two_at.clone()];
    by_address.sort();

    let data = dir.path().join("data");
    let layout = ["--cluster-file", file, "--resolvers", "3", "--logs", "2"];
    let (mut director, address, said) = serve_with(&data, "127.0.0.1:0", &layout);
    let said = listen(said);
    // Two workers for three resolvers: the first two ranges on the workers, in the order of
    // their addresses, the third in the director.
    assert_eq!(
        resolvers_at(&cluster_file).iter().collect::<Vec<_>>(),
        [&by_address[0], &by_address[1], &address]
    );

    // A worker killed under load: the commits it was resolving fail, the epoch ends, and the
    // next one recruits the worker that remains.
    let mut acked = Vec::new();
    let (client, acks) = cycle_client(&cluster_file);
    collect_acks(&acks, &mut acked, Duration::from_secs(2), 100);
    kill(&mut one);
    assert_eq!(next_epoch(&said), 2);
    assert_eq!(
        resolvers_at(&cluster_file).iter().collect::<Vec<_>>(),
        [&two_at, &address, &address]
    );
    collect_acks(&acks, &mut acked, Duration::from_secs(1), 100);
    stop_client(client, &acks, &mut acked);

    // The first worker back, at its address; the second killed while nothing commits: its
    // heartbeat fails, the epoch ends, and the next recruits the first.
    let (mut one, _) = worker(&cluster_file, &one_at);
    await_registry(&etcd.endpoint(), &cluster_file, &[&one_at, &two_at]);
    kill(&mut two);
    assert_eq!(next_epoch(&said), 3);
    assert_eq!(
        resolvers_at(&cluster_file).iter().collect::<Vec<_>>(),
        [&one_at, &address, &address]
    );

    // The second back, then the director killed under load: the director started again
    // recruits both.
    let (mut two, _) = worker(&cluster_file, &two_at);
    await_registry(&etcd.endpoint(), &cluster_file, &[&one_at, &two_at]);
    let (client, acks) = cycle_client(&cluster_file);
    collect_acks(&acks, &mut acked, Duration::from_secs(1), 100);
    kill(&mut director);
    (director, _, _) = serve_with(&data, &address, &layout);
    assert_eq!(
        resolvers_at(&cluster_file).iter().collect::<Vec<_>>(),
        [&by_address[0], &by_address[1], &address]
    );
    collect_acks(&acks, &mut acked, Duration::from_secs(1), 100);
    stop_client(client, &acks, &mut acked);

    check_through_the_network(&cluster_file, &acked);
    kill(&mut director);
    // A worker told to stop leaves the registry at once, instead of when its lease lapses.
    let pid = two.id().to_string();
    assert!(
        std::process::Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .unwrap()
            .success()
    );
    // Stopped by SIGTERM, cleanly: 143, as shells report it.
    assert_eq!(two.wait().unwrap().code(), Some(143));
    await_registry(&etcd.endpoint(), &cluster_file, &[&one_at]);
    kill(&mut one);
}

#[test]
fn the_sequencer_on_a_worker_hands_out_every_version_and_a_lost_one_ends_the_epoch() {
    let Some(etcd) = EtcdServer::start() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let cluster_file = etcd_cluster_file(dir.path(), "q:e2e8", &etcd);
    let file = cluster_file.to_str().unwrap();
    let (mut sequencer, sequencer_addr) = worker_of("sequencer", &cluster_file, "127.0.0.1:0", &[]);
    let (mut resolver, resolver_addr) = worker(&cluster_file, "127.0.0.1:0");
    await_registry(
        &etcd.endpoint(),
        &cluster_file,
        &[&sequencer_addr, &resolver_addr],
    );

    let data = dir.path().join("data");
    let layout = [
        "--cluster-file",
        file,
        "--resolvers",
        "2",
        "--logs",
        "2",
        "--storage",
        "2",
    ];
    let (mut director, address, said) = serve_with(&data, "127.0.0.1:0", &layout);
    let said = listen(said);
    assert_eq!(sequencer_at(&cluster_file), sequencer_addr);
    assert_eq!(
        resolvers_at(&cluster_file),
        [resolver_addr.clone(), address.clone()]
    );

    // Commits for longer than a storage server's window of versions in memory (5 s), every
    // version from the worker; then the sequencer killed under load: the epoch ends and the
    // next one runs the sequencer in the director, after every acknowledged commit.
    let mut acked = Vec::new();
    let (client, acks) = cycle_client(&cluster_file);
    collect_acks(&acks, &mut acked, Duration::from_secs(7), 200);
    kill(&mut sequencer);
    assert_eq!(next_epoch(&said), 2);
    assert_eq!(sequencer_at(&cluster_file), address);
    assert_eq!(
        resolvers_at(&cluster_file),
        [resolver_addr.clone(), address.clone()]
    );
    collect_acks(&acks, &mut acked, Duration::from_secs(1), 100);
    stop_client(client, &acks, &mut acked);

    // The sequencer back at its address, recruited when the director is killed under load
    // and started again.
    let (mut sequencer, _) = worker_of("sequencer", &cluster_file, &sequencer_addr, &[]);
    await_registry(
        &etcd.endpoint(),
        &cluster_file,
        &[&sequencer_addr, &resolver_addr],
    );
    let (client, acks) = cycle_client(&cluster_file);
    collect_acks(&acks, &mut acked, Duration::from_secs(1), 100);
    kill(&mut director);
    let (restarted, _, said) = serve_with(&data, &address, &layout);
    director = restarted;
    let said = listen(said);
    assert_eq!(sequencer_at(&cluster_file), sequencer_addr);
    assert_eq!(
        resolvers_at(&cluster_file),
        [resolver_addr.clone(), address.clone()]
    );
    collect_acks(&acks, &mut acked, Duration::from_secs(1), 100);
    stop_client(client, &acks, &mut acked);

    // Two faults in a row: both workers killed at once under load; one epoch ends, and the
    // next runs every stage in the director.
    let (client, acks) = cycle_client(&cluster_file);
    collect_acks(&acks, &mut acked, Duration::from_secs(2), 100);
    kill(&mut sequencer);
    kill(&mut resolver);
    let epoch = next_epoch(&said);
    assert_eq!(sequencer_at(&cluster_file), address);
    assert_eq!(
        resolvers_at(&cluster_file),
        [address.clone(), address.clone()]
    );
    collect_acks(&acks, &mut acked, Duration::from_secs(1), 100);
    stop_client(client, &acks, &mut acked);
    // Nothing more ended: the epoch that recovered from both is the one serving.
    assert!(said.try_recv().is_err(), "epoch {epoch} did not last");

    check_through_the_network(&cluster_file, &acked);
    kill(&mut director);
}

#[test]
fn a_sequencer_worker_serves_the_smallest_and_largest_layouts_across_its_loss() {
    let Some(etcd) = EtcdServer::start() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    for (n, count) in ["1", "3"].into_iter().enumerate() {
        let cluster_file = etcd_cluster_file(dir.path(), &format!("l{n}:e2e9{n}"), &etcd);
        let (mut sequencer, sequencer_addr) =
            worker_of("sequencer", &cluster_file, "127.0.0.1:0", &[]);
        await_registry(&etcd.endpoint(), &cluster_file, &[&sequencer_addr]);
        let layout = [
            "--cluster-file",
            cluster_file.to_str().unwrap(),
            "--logs",
            count,
            "--storage",
            count,
            "--resolvers",
            count,
            "--proxies",
            count,
        ];
        let data = dir.path().join(format!("data-{n}"));
        let (mut director, address, said) = serve_with(&data, "127.0.0.1:0", &layout);
        let said = listen(said);
        assert_eq!(sequencer_at(&cluster_file), sequencer_addr, "{count}");

        // Longer than a storage server's window in memory, then the worker killed mid-epoch
        // under load, then the director: every acknowledged commit stays.
        let mut acked = Vec::new();
        let (client, acks) = cycle_client(&cluster_file);
        collect_acks(&acks, &mut acked, Duration::from_secs(6), 100);
        kill(&mut sequencer);
        assert_eq!(next_epoch(&said), 2, "{count}");
        assert_eq!(sequencer_at(&cluster_file), address, "{count}");
        // The one client goes on in each new epoch.
        collect_acks(&acks, &mut acked, Duration::from_secs(1), 100);
        kill(&mut director);
        (director, _, _) = serve_with(&data, &address, &layout);
        collect_acks(&acks, &mut acked, Duration::from_secs(1), 100);
        stop_client(client, &acks, &mut acked);
        check_through_the_network(&cluster_file, &acked);
        kill(&mut director);
    }
}

/// The etcd revision of the registration of the worker at `address`, if it is registered.
fn registered_revision(etcd: &str, cluster_file: &Path, address: &str) -> Option<i64> {
    let file = ClusterFile::read(cluster_file).unwrap();
    let key = format!("{}{address}", registry_prefix(&file.name, file.id.as_str()));
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let etcd = Etcd::connect(&[etcd.to_owned()]).unwrap();
        etcd.list(key.as_bytes())
            .await
            .unwrap()
            .into_iter()
            .find(|(k, _)| k == key.as_bytes())
            .map(|(_, v)| v.mod_revision)
    })
}

#[test]
fn a_worker_registers_again_after_etcd_was_away_longer_than_its_lease() {
    let Some(mut etcd) = EtcdServer::start() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let cluster_file = etcd_cluster_file(dir.path(), "g:e2ea", &etcd);
    let (mut sequencer, at) = worker_of("sequencer", &cluster_file, "127.0.0.1:0", &[]);
    await_registry(&etcd.endpoint(), &cluster_file, &[&at]);
    let before = registered_revision(&etcd.endpoint(), &cluster_file, &at).unwrap();

    // etcd away for longer than the worker's lease (6 s): its renewals fail meanwhile.
    etcd.kill();
    std::thread::sleep(Duration::from_secs(8));
    etcd.restart();
    let started = Instant::now();
    let again = loop {
        match registered_revision(&etcd.endpoint(), &cluster_file, &at) {
            Some(revision) if revision > before => break revision,
            _ => {
                assert!(
                    started.elapsed() < Duration::from_secs(20),
                    "the worker did not register again"
                );
                std::thread::sleep(Duration::from_millis(200));
            }
        }
    };
    // Longer than a lease again: the new registration is kept alive, not left to lapse with
    // the lease it had before the outage.
    std::thread::sleep(Duration::from_secs(8));
    assert!(registered_revision(&etcd.endpoint(), &cluster_file, &at) >= Some(again));

    // And a director recruits it.
    let layout = ["--cluster-file", cluster_file.to_str().unwrap()];
    let (mut director, _, _) = serve_with(&dir.path().join("data"), "127.0.0.1:0", &layout);
    assert_eq!(sequencer_at(&cluster_file), at);
    kill(&mut director);
    kill(&mut sequencer);
}

#[test]
fn a_worker_without_an_etcd_cluster_file_or_with_a_layout_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let file_cluster = dir.path().join("f.cluster");
    std::fs::write(&file_cluster, "f:e2e4@file:/nowhere\n").unwrap();
    let etcd_cluster = dir.path().join("e.cluster");
    std::fs::write(&etcd_cluster, "e:e2e5@etcd://127.0.0.1:9\n").unwrap();
    // Usage errors (exit 2), then refusals of what the flags name (exit 1).
    let runs = [
        (vec!["--listen", "127.0.0.1:0"], "--cluster-file <FILE>", 2),
        (
            vec!["--cluster-file", etcd_cluster.to_str().unwrap()],
            "--listen <HOST:PORT>",
            2,
        ),
        (
            vec![
                "--listen",
                "127.0.0.1:0",
                "--cluster-file",
                etcd_cluster.to_str().unwrap(),
                "--resolvers",
                "2",
            ],
            "are the director's",
            2,
        ),
        (
            vec![
                "--listen",
                "127.0.0.1:0",
                "--cluster-file",
                etcd_cluster.to_str().unwrap(),
                "--peer-listen",
                "127.0.0.1:0",
            ],
            "are the director's",
            2,
        ),
        (
            vec![
                "--listen",
                "127.0.0.1:0",
                "--cluster-file",
                file_cluster.to_str().unwrap(),
            ],
            "a worker registers in etcd",
            1,
        ),
        (
            vec![
                "--listen",
                "0.0.0.0:0",
                "--cluster-file",
                etcd_cluster.to_str().unwrap(),
            ],
            "is every interface",
            1,
        ),
    ];
    for role in ["resolver", "sequencer", "proxy"] {
        for (flags, says, code) in &runs {
            let out = strata()
                .args(["serve", "--role", role])
                .args(flags)
                .output()
                .unwrap();
            let stderr = String::from_utf8_lossy(&out.stderr);
            assert_eq!(out.status.code(), Some(*code), "{role} {flags:?}: {stderr}");
            assert!(stderr.contains(says), "{role} {flags:?}: {stderr}");
        }
    }
}

#[test]
fn with_tls_the_director_recruits_only_workers_of_its_authority() {
    let Some(etcd) = EtcdServer::start() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let node = certs::write(dir.path(), "node", CA, NODE_CERT, NODE_KEY).unwrap();
    let tls = [
        "--tls-ca",
        node.ca.to_str().unwrap(),
        "--tls-cert",
        node.cert.to_str().unwrap(),
        "--tls-key",
        node.key.to_str().unwrap(),
    ];
    let cluster_file = etcd_cluster_file(dir.path(), "t:e2e6", &etcd);
    let file = cluster_file.to_str().unwrap();
    let (mut with_tls, with_tls_at) = worker_with(&cluster_file, "127.0.0.1:0", &tls);
    let (mut plain, plain_at) = worker(&cluster_file, "127.0.0.1:0");
    // Sequencer workers too, one of each.
    let (mut sequencer_tls, sequencer_tls_at) =
        worker_of("sequencer", &cluster_file, "127.0.0.1:0", &tls);
    let (mut sequencer_plain, sequencer_plain_at) =
        worker_of("sequencer", &cluster_file, "127.0.0.1:0", &[]);
    await_registry(
        &etcd.endpoint(),
        &cluster_file,
        &[
            &with_tls_at,
            &plain_at,
            &sequencer_tls_at,
            &sequencer_plain_at,
        ],
    );

    let mut flags = vec!["--cluster-file", file, "--resolvers", "2"];
    flags.extend_from_slice(&tls);
    let (mut director, address, _) = serve_with(&dir.path().join("data"), "127.0.0.1:0", &flags);
    // The worker without TLS cannot be reached over TLS: passed over, its range resolved by
    // the director, whichever of the two comes first by address.
    let client_tls = strata_net::Tls::from_files(&node.ca, &node.cert, &node.key).unwrap();
    assert_eq!(
        resolvers_at_with(&cluster_file, Some(&client_tls)),
        [with_tls_at, address]
    );
    assert_eq!(
        layout_at(
            &cluster_file,
            Some(&client_tls),
            b"\xff/system/layout/sequencer"
        ),
        [sequencer_tls_at]
    );
    let (mut client, acks) = served::cycle_client_with(&cluster_file, &tls);
    let mut acked = Vec::new();
    collect_acks(&acks, &mut acked, Duration::from_secs(1), 100);
    kill(&mut client);
    acked.extend(acks.iter());
    served::check_through_the_network_with(&cluster_file, &acked, Some(&client_tls));
    kill(&mut director);
    kill(&mut with_tls);
    kill(&mut plain);
    kill(&mut sequencer_tls);
    kill(&mut sequencer_plain);
}

#[test]
fn silent_or_bogus_registry_entries_are_passed_over_without_holding_recovery_up() {
    let Some(etcd) = EtcdServer::start() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let cluster_file = etcd_cluster_file(dir.path(), "s:e2e7", &etcd);
    let file = ClusterFile::read(&cluster_file).unwrap();
    let prefix = registry_prefix(&file.name, file.id.as_str());
    // Eight "workers" that take connections and never answer (the kernel completes the
    // handshakes into the backlog), an entry of a role this build does not know, and one
    // that is not a record at all; all without a lease, so they stay.
    let silent: Vec<std::net::TcpListener> = (0..8)
        .map(|_| std::net::TcpListener::bind("127.0.0.1:0").unwrap())
        .collect();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let client = Etcd::connect(&[etcd.endpoint()]).unwrap();
        for listener in &silent {
            let address = listener.local_addr().unwrap().to_string();
            let record = format!(r#"{{"role":"resolver","address":"{address}"}}"#);
            let key = format!("{prefix}{address}");
            client
                .put(key.as_bytes(), record.into_bytes(), 0)
                .await
                .unwrap();
        }
        let odd = r#"{"role":"oracle","address":"127.0.0.1:1"}"#.to_owned();
        let key = format!("{prefix}127.0.0.1:1");
        client
            .put(key.as_bytes(), odd.into_bytes(), 0)
            .await
            .unwrap();
        let key = format!("{prefix}junk");
        client
            .put(key.as_bytes(), b"not json".to_vec(), 0)
            .await
            .unwrap();
    });
    let (mut real, real_at) = worker(&cluster_file, "127.0.0.1:0");
    // And an entry that says the resolver worker is a sequencer: it is passed over as a
    // sequencer, and still recruited as the resolver it is.
    runtime.block_on(async {
        let client = Etcd::connect(&[etcd.endpoint()]).unwrap();
        let liar = format!(r#"{{"role":"sequencer","address":"{real_at}"}}"#);
        let key = format!("{prefix}liar");
        client
            .put(key.as_bytes(), liar.into_bytes(), 0)
            .await
            .unwrap();
    });

    // Each silent entry is given one probe timeout (1 s), all at once: the recovery does not
    // wait 5 s for each in turn (40 s), and recruits the worker that answers.
    let started = Instant::now();
    let flags = [
        "--cluster-file",
        cluster_file.to_str().unwrap(),
        "--resolvers",
        "2",
    ];
    let (mut director, address, _) = serve_with(&dir.path().join("data"), "127.0.0.1:0", &flags);
    let took = started.elapsed();
    assert!(
        took < Duration::from_secs(20),
        "the first epoch took {took:?}"
    );
    assert_eq!(
        resolvers_at(&cluster_file).iter().collect::<Vec<_>>(),
        [&real_at, &address]
    );
    assert_eq!(sequencer_at(&cluster_file), address);
    let (mut client, acks) = cycle_client(&cluster_file);
    let mut acked = Vec::new();
    collect_acks(&acks, &mut acked, Duration::from_secs(1), 50);
    kill(&mut client);
    acked.extend(acks.iter());
    check_through_the_network(&cluster_file, &acked);
    kill(&mut director);
    kill(&mut real);
    drop(silent);
}
