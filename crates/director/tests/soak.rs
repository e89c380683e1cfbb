//! A soak of the processes of one cluster: a director and eight workers (two resolvers, the
//! sequencer, a commit proxy, two log workers holding the cluster's logs, two storage workers
//! holding its storage servers) on loopback, the coordinated state in a real etcd, Cycle
//! running from a client process throughout, and SIGKILLs at moments chosen at random: any of
//! the nine processes, sometimes two in a row, each started again at its address (a log or
//! storage worker on its data directory). A client that ends
//! (its calls failed with the director) is started again. Every so often the client stops,
//! and the ring and every commit acknowledged so far are checked through the network.
//! Beside Cycle, `strata bench` writes large values all the while, and the log workers' logs
//! (and any the director holds) start a new segment every MiB, so that the history spans many
//! segments under the kills: the run ends only once the load has committed a whole run's
//! 32 MB.
//!
//! `cargo test` runs it for 20 s, several MVCC windows' worth of history at this rate.
//! Longer runs: `STRATA_SOAK_SECS=1500 cargo test -p strata-director --features cli --test
//! soak -- --nocapture`; `STRATA_SOAK_SEED=N` repeats the choices of a run (which process,
//! and the pauses; what the processes are doing when a kill lands still varies). Each run
//! prints its seed and every kill.

#![allow(clippy::unwrap_used, clippy::expect_used, unreachable_pub)]

#[path = "common/served.rs"]
mod served;
#[path = "common/workers.rs"]
mod workers;

use std::io::Read;
use std::path::Path;
use std::process::Stdio;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, mpsc};
use std::time::{Duration, Instant};

use served::{Process, cycle_client, serve_with, strata};
use strata_director::cluster_file::ClusterFile;
use strata_director::workload::cycle::{check_acks, check_ring};
use strata_testkit::etcd::EtcdServer;
use strata_testkit::rng::SplitMix64;
use workers::{await_registry, etcd_cluster_file, kill, worker_of};

/// How long a run lasts without `STRATA_SOAK_SECS`.
const SOAK_DEFAULT: Duration = Duration::from_secs(20);

/// How often the ring and the acknowledgements are checked (and once more at the end).
const CHECK_EVERY: Duration = Duration::from_secs(60);

/// How long a check waits for the cluster to serve again after the last kill.
const CHECK_PATIENCE: Duration = Duration::from_secs(90);

/// One run of the background load: `strata bench` with this many transactions of
/// [`LOAD_KEYS`] values of [`LOAD_VALUE_BYTES`] bytes each (32 MB a run).
const LOAD_TRANSACTIONS: u64 = 1_000;
const LOAD_KEYS: u64 = 8;
const LOAD_VALUE_BYTES: u64 = 4_000;
/// The bytes of values one finished run of the load committed.
const LOAD_RUN_BYTES: u64 = LOAD_TRANSACTIONS * LOAD_KEYS * LOAD_VALUE_BYTES;

/// The logs' segments, the log workers' (and any the director holds): a MiB, so that a
/// run's history spans many.
const SEGMENT_BYTES: &str = "1048576";

/// The worker roles, each at an address of its own.
const WORKERS: [&str; 8] = [
    "resolver",
    "resolver",
    "sequencer",
    "proxy",
    "log",
    "log",
    "storage",
    "storage",
];

/// Worker `i` (of [`WORKERS`]) at `at`: a log or storage worker keeps what it holds in a
/// directory of its own under `dir`.
fn start_worker(i: usize, cluster_file: &Path, at: &str, dir: &Path) -> (Process, String) {
    let held = dir.join(format!("worker-{i}"));
    let extra: &[&str] = match WORKERS[i] {
        "log" => &[
            "--data-dir",
            held.to_str().unwrap(),
            "--log-segment-bytes",
            SEGMENT_BYTES,
        ],
        "storage" => &["--data-dir", held.to_str().unwrap()],
        _ => &[],
    };
    worker_of(WORKERS[i], cluster_file, at, extra)
}

fn env_u64(name: &str) -> Option<u64> {
    std::env::var(name).ok().map(|v| {
        v.parse()
            .unwrap_or_else(|e| panic!("{name}={v:?} is not a number: {e}"))
    })
}

/// A waiting time between `low` and `high` milliseconds.
fn pause(rng: &mut SplitMix64, low: u64, high: u64) -> Duration {
    Duration::from_millis(low + rng.below(high - low))
}

/// The Cycle client of the moment and what it acknowledged.
struct Client {
    process: Process,
    acks: mpsc::Receiver<(u64, u64)>,
}

impl Client {
    fn start(cluster_file: &Path) -> Client {
        let (process, acks) = cycle_client(cluster_file);
        Client { process, acks }
    }

    /// Takes the acknowledgements printed so far into `acked`.
    fn drain(&self, acked: &mut Vec<(u64, u64)>) {
        acked.extend(self.acks.try_iter());
    }

    /// Stops the client (SIGKILL: an acknowledgement it printed stays one) and takes every
    /// acknowledgement it printed.
    fn stop(mut self, acked: &mut Vec<(u64, u64)>) {
        kill(&mut self.process);
        // The reading thread ends with the pipe; then every line is in the channel.
        acked.extend(self.acks.iter());
    }

    /// Waits `span`, starting a new client whenever the one before ended.
    fn run_for(&mut self, span: Duration, cluster_file: &Path, acked: &mut Vec<(u64, u64)>) {
        let started = Instant::now();
        while started.elapsed() < span {
            self.step(cluster_file, acked);
        }
    }

    /// Waits until `more` commits more were acknowledged, as [`Client::run_for`] does; a
    /// cluster that commits nothing for [`CHECK_PATIENCE`] fails the test.
    fn run_until(&mut self, more: usize, cluster_file: &Path, acked: &mut Vec<(u64, u64)>) {
        let started = Instant::now();
        let wanted = acked.len() + more;
        while acked.len() < wanted {
            assert!(
                started.elapsed() < CHECK_PATIENCE,
                "only {} of {more} more commits in {CHECK_PATIENCE:?}",
                more + acked.len() - wanted
            );
            self.step(cluster_file, acked);
            self.drain(acked);
        }
    }

    fn step(&mut self, cluster_file: &Path, acked: &mut Vec<(u64, u64)>) {
        std::thread::sleep(Duration::from_millis(50));
        if self.process.try_wait().unwrap().is_some() {
            let ended = std::mem::replace(self, Client::start(cluster_file));
            ended.stop(acked);
        }
    }
}

/// Large values written beside Cycle: `strata bench` runs one after another, on a thread of
/// their own, each started again once the one before ended (finished, or cut short by a kill).
struct Load {
    stop: Arc<AtomicBool>,
    /// The runs that finished.
    finished: Arc<AtomicU64>,
    thread: std::thread::JoinHandle<()>,
}

impl Load {
    fn start(cluster_file: &Path) -> Load {
        let (stop, finished) = (
            Arc::new(AtomicBool::new(false)),
            Arc::new(AtomicU64::new(0)),
        );
        let (stopping, counted, file) = (stop.clone(), finished.clone(), cluster_file.to_owned());
        let thread = std::thread::spawn(move || {
            while !stopping.load(Ordering::SeqCst) {
                if Load::run(&file, &stopping) {
                    counted.fetch_add(1, Ordering::SeqCst);
                } else {
                    std::thread::sleep(Duration::from_millis(100));
                }
            }
        });
        Load {
            stop,
            finished,
            thread,
        }
    }

    /// One `strata bench` run; whether it finished (it prints its report only then). Killed
    /// when `stop` is set.
    fn run(cluster_file: &Path, stop: &AtomicBool) -> bool {
        let numbers = [LOAD_TRANSACTIONS, LOAD_KEYS, LOAD_VALUE_BYTES].map(|n| n.to_string());
        let mut bench = Process(
            strata()
                .args(["bench", "--json", "--clients", "4", "--transactions"])
                .args([&numbers[0], "--keys-per-transaction", &numbers[1]])
                .args(["--value-bytes", &numbers[2], "--cluster-file"])
                .arg(cluster_file)
                .stdout(Stdio::piped())
                .stderr(Stdio::null())
                .spawn()
                .unwrap(),
        );
        while bench.try_wait().unwrap().is_none() {
            if stop.load(Ordering::SeqCst) {
                return false;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let mut report = String::new();
        bench
            .stdout
            .take()
            .unwrap()
            .read_to_string(&mut report)
            .unwrap();
        bench.wait().unwrap().success() && report.starts_with("{\"transactions\":")
    }

    /// Waits until `runs` runs finished (for at most [`CHECK_PATIENCE`]), and stops the load;
    /// returns the bytes of values the finished runs committed.
    fn stop_after(self, runs: u64) -> u64 {
        let started = Instant::now();
        while self.finished.load(Ordering::SeqCst) < runs {
            assert!(
                started.elapsed() < CHECK_PATIENCE,
                "only {} of {runs} runs of the load finished in {CHECK_PATIENCE:?} more",
                self.finished.load(Ordering::SeqCst)
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        self.stop.store(true, Ordering::SeqCst);
        self.thread.join().unwrap();
        self.finished.load(Ordering::SeqCst) * LOAD_RUN_BYTES
    }
}

/// Checks, through the network, that the ring is one ring and that every commit in `acked` is
/// stored; retries while the cluster recovers from the last kill, for [`CHECK_PATIENCE`].
fn check(cluster_file: &Path, acked: &[(u64, u64)]) {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let started = Instant::now();
    let last = loop {
        let checked: strata_core::Result<u64> = runtime.block_on(async {
            let db = ClusterFile::read(cluster_file)?.connect(None).await?;
            let keys = check_ring(&db).await?;
            check_acks(&db, acked).await?;
            Ok(keys)
        });
        match checked {
            Ok(keys) => {
                assert_eq!(keys, 30);
                println!("checked: the ring and {} acknowledgements", acked.len());
                return;
            }
            // Lost data is never a matter of waiting.
            Err(e) if matches!(e.kind, strata_core::ErrorKind::Corruption(_)) => {
                panic!("after {} acknowledgements: {e}", acked.len())
            }
            Err(e) if started.elapsed() > CHECK_PATIENCE => break e,
            Err(_) => std::thread::sleep(Duration::from_millis(500)),
        }
    };
    panic!("the cluster did not serve again within {CHECK_PATIENCE:?}: {last}");
}

/// The first epoch placed the storage servers on the storage workers (of `addresses`, one
/// per [`WORKERS`] role), for good.
fn assert_storage_on_its_workers(cluster_file: &Path, addresses: &[String]) {
    let mut storage_at: Vec<String> =
        workers::layout_at(cluster_file, None, b"\xff/system/layout/storage_teams/")
            .into_iter()
            .map(|a| a.trim_end_matches(['"', ']']).to_owned())
            .collect();
    storage_at.sort();
    let mut storage_workers: Vec<String> = (0..WORKERS.len())
        .filter(|i| WORKERS[*i] == "storage")
        .map(|i| addresses[i].clone())
        .collect();
    storage_workers.sort();
    assert_eq!(storage_at, storage_workers);
}

#[test]
fn random_kills_of_the_director_and_every_worker_lose_no_acknowledged_commit() {
    let Some(etcd) = EtcdServer::start() else {
        return;
    };
    let span = env_u64("STRATA_SOAK_SECS").map_or(SOAK_DEFAULT, Duration::from_secs);
    let seed = env_u64("STRATA_SOAK_SEED").unwrap_or_else(|| {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos() as u64
    });
    println!("soak: {span:?}, STRATA_SOAK_SEED={seed}");
    let mut rng = SplitMix64(seed);

    let dir = tempfile::tempdir().unwrap();
    let cluster_file = etcd_cluster_file(dir.path(), "soak:5eed", &etcd);
    let file = cluster_file.to_str().unwrap();
    let mut workers: Vec<(Process, String)> = (0..WORKERS.len())
        .map(|i| start_worker(i, &cluster_file, "127.0.0.1:0", dir.path()))
        .collect();
    let addresses: Vec<String> = workers.iter().map(|(_, at)| at.clone()).collect();
    let registered: Vec<&str> = addresses.iter().map(String::as_str).collect();
    await_registry(&etcd.endpoint(), &cluster_file, &registered);
    let data = dir.path().join("data");
    let layout = [
        "--cluster-file",
        file,
        "--peer-listen",
        "127.0.0.1:0",
        "--resolvers",
        "2",
        "--proxies",
        "2",
        "--logs",
        "2",
        "--storage",
        "2",
        "--log-segment-bytes",
        SEGMENT_BYTES,
    ];
    let (mut director, address, _) = serve_with(&data, "127.0.0.1:0", &layout);
    assert_storage_on_its_workers(&cluster_file, &addresses);

    let mut acked = Vec::new();
    let mut client = Client::start(&cluster_file);
    let load = Load::start(&cluster_file);
    let started = Instant::now();
    let mut checked = Instant::now();
    let mut kills = 0;
    while started.elapsed() < span {
        client.run_for(pause(&mut rng, 1_000, 4_000), &cluster_file, &mut acked);
        // It stops by itself only after recoveries kept failing: that is a failure too.
        if let Some(status) = director.try_wait().unwrap() {
            panic!("the director stopped by itself ({status}) after {kills} kills");
        }
        // Two in a row, one time in four: the second lands while the first one's recovery
        // may still be going on.
        let victims = if rng.below(4) == 0 { 2 } else { 1 };
        for _ in 0..victims {
            let victim = rng.below(1 + WORKERS.len() as u64) as usize;
            client.drain(&mut acked);
            println!(
                "{:>5.1} s: kill {} ({} acknowledged)",
                started.elapsed().as_secs_f64(),
                if victim == 0 {
                    "director"
                } else {
                    WORKERS[victim - 1]
                },
                acked.len()
            );
            kills += 1;
            if victim == 0 {
                kill(&mut director);
                std::thread::sleep(pause(&mut rng, 0, 1_500));
                (director, _, _) = serve_with(&data, &address, &layout);
            } else {
                let (worker, at) = &mut workers[victim - 1];
                kill(worker);
                std::thread::sleep(pause(&mut rng, 0, 1_500));
                (*worker, _) = start_worker(victim - 1, &cluster_file, at, dir.path());
            }
        }
        if checked.elapsed() >= CHECK_EVERY {
            client.stop(&mut acked);
            check(&cluster_file, &acked);
            client = Client::start(&cluster_file);
            checked = Instant::now();
        }
    }
    // The cluster commits again after the last kill, whatever the kills were.
    client.run_until(100, &cluster_file, &mut acked);
    let loaded = load.stop_after(1);
    client.stop(&mut acked);
    println!(
        "soak: {kills} kills, {} acknowledged, {} MB of values loaded",
        acked.len(),
        loaded / 1_000_000
    );
    check(&cluster_file, &acked);
    kill(&mut director);
    for (worker, _) in &mut workers {
        kill(worker);
    }
}
