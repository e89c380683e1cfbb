//! The whole cluster in processes of its own, with the coordinated state in a real etcd: two
//! log workers, two storage workers, a resolver, a commit proxy and a sequencer worker
//! (`strata serve --role log|storage|resolver|proxy|sequencer`), and the director (`strata
//! serve --role all`) that recruits them and serves its stages to them on a second port.
//! Cycle runs from another process while a log worker, then a storage worker, then the
//! director are killed with SIGKILL under load and started again at their addresses: each
//! time the next epoch recovers from what the workers hold, puts every stage back on its
//! worker, the ring holds and every acknowledged commit is there.

#![allow(clippy::unwrap_used, clippy::expect_used, unreachable_pub)]

#[path = "common/served.rs"]
mod served;
#[path = "common/workers.rs"]
mod workers;

use std::path::{Path, PathBuf};
use std::time::Duration;

use served::{
    Process, check_through_the_network, collect_acks, cycle_client, serve_with, stop_client,
};
use strata_testkit::etcd::EtcdServer;
use workers::{
    await_registry, cycle_a_while, etcd_cluster_file, kill, layout_at, listen, next_epoch,
    worker_of,
};

/// A worker process of `role` with its data directory, if its role holds data.
struct Worker {
    role: &'static str,
    at: String,
    dir: Option<PathBuf>,
    process: Process,
}

impl Worker {
    fn start(role: &'static str, cluster_file: &Path, at: &str, dir: Option<PathBuf>) -> Worker {
        let flags: Vec<&str> = match &dir {
            Some(d) => vec!["--data-dir", d.to_str().unwrap()],
            None => Vec::new(),
        };
        let (process, at) = worker_of(role, cluster_file, at, &flags);
        Worker {
            role,
            at,
            dir,
            process,
        }
    }

    /// Killed with SIGKILL, and started again at its address on its directory.
    fn kill_and_restart(&mut self, cluster_file: &Path, away: Duration) {
        kill(&mut self.process);
        std::thread::sleep(away);
        *self = Worker::start(self.role, cluster_file, &self.at, self.dir.clone());
    }
}

/// Where the running epoch's layout says the stages under `prefix` run, sorted.
fn placed(cluster_file: &Path, prefix: &[u8]) -> Vec<String> {
    // A storage team is a list of names (`["storage-0@HOST:PORT"]`): one member here.
    let mut at: Vec<String> = layout_at(cluster_file, None, prefix)
        .into_iter()
        .map(|a| a.trim_end_matches(['"', ']']).to_owned())
        .collect();
    at.sort();
    at
}

/// Every stage of the running epoch is on its worker.
fn assert_every_stage_on_its_worker(cluster_file: &Path, workers: &[Worker]) {
    let of = |role: &str| {
        let mut at: Vec<String> = workers
            .iter()
            .filter(|w| w.role == role)
            .map(|w| w.at.clone())
            .collect();
        at.sort();
        at
    };
    let layout = |key: &str| {
        placed(
            cluster_file,
            &[b"\xff/system/layout/", key.as_bytes()].concat(),
        )
    };
    assert_eq!(layout("logs/"), of("log"));
    assert_eq!(layout("storage_teams/"), of("storage"));
    assert_eq!(layout("resolvers/"), of("resolver"));
    assert_eq!(layout("commit_proxies/"), of("proxy"));
    assert_eq!(layout("sequencer"), of("sequencer"));
}

#[test]
fn a_cluster_of_worker_processes_survives_the_kill_of_a_log_a_storage_server_and_the_director() {
    let Some(etcd) = EtcdServer::start() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let cluster_file = etcd_cluster_file(dir.path(), "six:a6b6", &etcd);
    let file = cluster_file.to_str().unwrap();
    let mut workers = Vec::new();
    for (role, n) in [("log", 2), ("storage", 2)] {
        for i in 0..n {
            let data = dir.path().join(format!("{role}{i}"));
            workers.push(Worker::start(
                role,
                &cluster_file,
                "127.0.0.1:0",
                Some(data),
            ));
        }
    }
    for role in ["resolver", "proxy", "sequencer"] {
        workers.push(Worker::start(role, &cluster_file, "127.0.0.1:0", None));
    }
    let all: Vec<&str> = workers.iter().map(|w| w.at.as_str()).collect();
    await_registry(&etcd.endpoint(), &cluster_file, &all);

    let data = dir.path().join("data");
    let layout = [
        "--cluster-file",
        file,
        "--peer-listen",
        "127.0.0.1:0",
        "--logs",
        "2",
        "--storage",
        "2",
    ];
    let (mut director, address, said) = serve_with(&data, "127.0.0.1:0", &layout);
    let said = listen(said);
    assert_every_stage_on_its_worker(&cluster_file, &workers);
    let mut acked = Vec::new();
    cycle_a_while(&cluster_file, &mut acked, Duration::from_secs(2), 200);

    // Each of a log worker and a storage worker killed under load: the epoch ends, and the
    // next recovery, which must read what it holds, waits for it to come back.
    let mut epoch = 1;
    for role in ["log", "storage"] {
        let (client, acks) = cycle_client(&cluster_file);
        collect_acks(&acks, &mut acked, Duration::from_secs(2), 100);
        let victim = workers.iter().position(|w| w.role == role).unwrap();
        workers[victim].kill_and_restart(&cluster_file, Duration::from_millis(500));
        epoch += 1;
        assert_eq!(next_epoch(&said), epoch, "{role}");
        let all: Vec<&str> = workers.iter().map(|w| w.at.as_str()).collect();
        await_registry(&etcd.endpoint(), &cluster_file, &all);
        assert_every_stage_on_its_worker(&cluster_file, &workers);
        collect_acks(&acks, &mut acked, Duration::from_secs(2), 100);
        stop_client(client, &acks, &mut acked);
    }

    // The director killed under load: started again, it recovers from the workers' logs and
    // storage and recruits every worker again.
    let (client, acks) = cycle_client(&cluster_file);
    collect_acks(&acks, &mut acked, Duration::from_secs(2), 100);
    kill(&mut director);
    (director, _, _) = serve_with(&data, &address, &layout);
    assert_every_stage_on_its_worker(&cluster_file, &workers);
    collect_acks(&acks, &mut acked, Duration::from_secs(2), 200);
    stop_client(client, &acks, &mut acked);

    check_through_the_network(&cluster_file, &acked);
    // The director's own directory holds neither logs nor storage: the workers hold them.
    for held in ["logs", "storage"] {
        let here = std::fs::read_dir(data.join(held)).map_or(0, |d| d.count());
        assert_eq!(here, 0, "{held} in the director's directory");
    }
    kill(&mut director);
    for mut w in workers {
        kill(&mut w.process);
    }
}
