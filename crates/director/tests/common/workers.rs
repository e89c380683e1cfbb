//! Worker processes and the director that recruits them, for the tests that run `strata
//! serve --role ROLE` against a real etcd: starting them, waiting for the registry, reading
//! where the running epoch's layout says each stage runs, and following the director's epochs.

// Each test binary uses its own subset of these helpers.
#![allow(dead_code)]

use std::io::{BufRead, BufReader, Lines};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdout, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use strata_director::cluster_file::ClusterFile;
use strata_director::workers::registry_prefix;
use strata_net::etcd::Etcd;
use strata_testkit::etcd::EtcdServer;

use super::served::{Process, collect_acks, cycle_client, start_watchdog, strata};

/// `strata serve --role ROLE` at `address`, with `flags`, once it says where it serves.
pub fn worker_of(
    role: &str,
    cluster_file: &Path,
    address: &str,
    flags: &[&str],
) -> (Process, String) {
    let mut child = Process(
        strata()
            .args(["serve", "--role", role, "--listen", address])
            .arg("--cluster-file")
            .arg(cluster_file)
            .args(flags)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let watchdog = start_watchdog(child.id());
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let first = lines
        .next()
        .expect("the worker said it serves within START_LIMIT")
        .unwrap();
    drop(watchdog);
    // "ROLE worker of NAME:ID at HOST:PORT; Ctrl-C or SIGTERM stops"
    let at = first
        .split(" at ")
        .nth(1)
        .and_then(|rest| rest.split(';').next())
        .unwrap_or_else(|| panic!("{first}"))
        .to_owned();
    (child, at)
}
/// A cluster file in `dir` naming `name_id` (`NAME:ID`) with its coordinated state in `etcd`.
pub fn etcd_cluster_file(dir: &Path, name_id: &str, etcd: &EtcdServer) -> PathBuf {
    let name = name_id.split(':').next().unwrap();
    let path = dir.join(format!("{name}.cluster"));
    std::fs::write(&path, format!("{name_id}@etcd://{}\n", etcd.endpoint())).unwrap();
    path
}
/// Waits until exactly `addresses` are registered as workers.
pub fn await_registry(etcd: &str, cluster_file: &Path, addresses: &[&str]) {
    let file = ClusterFile::read(cluster_file).unwrap();
    let prefix = registry_prefix(&file.name, file.id.as_str());
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let mut want: Vec<String> = addresses.iter().map(|a| format!("{prefix}{a}")).collect();
    want.sort();
    let started = Instant::now();
    runtime.block_on(async {
        let etcd = Etcd::connect(&[etcd.to_owned()]).unwrap();
        loop {
            let listed: Vec<String> = etcd
                .list(prefix.as_bytes())
                .await
                .unwrap()
                .into_iter()
                .map(|(k, _)| String::from_utf8(k).unwrap())
                .collect();
            if listed == want {
                return;
            }
            assert!(
                started.elapsed() < Duration::from_secs(30),
                "registered: {listed:?}, wanted {want:?}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    });
}
/// Where the layout keys from `prefix` on (in the running epoch's layout) say their stages
/// run, in key order.
pub fn layout_at(cluster_file: &Path, tls: Option<&strata_net::Tls>, prefix: &[u8]) -> Vec<String> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let file = ClusterFile::read(cluster_file).unwrap();
    let dump = runtime
        .block_on(strata_director::dump_served(&file, tls, prefix))
        .unwrap();
    dump.entries
        .into_iter()
        .map(|(_, v)| {
            let name = v.trim_start_matches("\\x01").trim_matches('"');
            name.split('@').nth(1).unwrap().to_owned()
        })
        .collect()
}
/// What the director says from now on, line by line.
pub fn listen(said: Lines<BufReader<ChildStdout>>) -> mpsc::Receiver<String> {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in said.map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    rx
}
/// The next epoch the director announces, within a minute.
pub fn next_epoch(said: &mpsc::Receiver<String>) -> u64 {
    let line = said
        .recv_timeout(Duration::from_secs(60))
        .expect("the director serves a new epoch within a minute");
    line.strip_prefix("serving epoch ")
        .and_then(|rest| rest.split(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("{line}"))
}
/// Cycle from another process for `span` and at least `at_least` more acknowledgements,
/// then stopped; its acknowledgements join `acked`.
pub fn cycle_a_while(
    cluster_file: &Path,
    acked: &mut Vec<(u64, u64)>,
    span: Duration,
    at_least: usize,
) {
    let (mut client, acks) = cycle_client(cluster_file);
    collect_acks(&acks, acked, span, at_least);
    kill(&mut client);
    acked.extend(acks.iter());
}
pub fn kill(child: &mut Child) {
    child.kill().unwrap();
    child.wait().unwrap();
}
