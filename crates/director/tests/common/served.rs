//! Processes of a served cluster, for the tests that run `strata serve --listen` and clients
//! of it (they have the `cli` feature).

// Each test binary uses its own subset of these helpers.
#![allow(dead_code)]

use std::io::{BufRead, BufReader, Lines};
use std::path::Path;
use std::process::{Child, ChildStdout, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use strata_director::cluster_file::ClusterFile;
use strata_director::workload::cycle::{check_acks, check_ring};

pub fn strata() -> Command {
    Command::new(env!("CARGO_BIN_EXE_strata"))
}

/// A child process that is killed (SIGKILL) and reaped when dropped, so a test that fails
/// leaves none behind: a server or a worker would otherwise go on trying to reach its etcd,
/// gone with the test, for ever.
#[derive(Debug)]
pub struct Process(pub Child);

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl std::ops::Deref for Process {
    type Target = Child;
    fn deref(&self) -> &Child {
        &self.0
    }
}

impl std::ops::DerefMut for Process {
    fn deref_mut(&mut self) -> &mut Child {
        &mut self.0
    }
}

/// How long a started process may take to say that it serves (a director's recovery, which
/// may wait out an old director's lease, included) before the test kills it and fails.
pub const START_LIMIT: Duration = Duration::from_secs(120);

/// Kills process `pid` (SIGKILL) unless the returned sender is dropped within
/// [`START_LIMIT`]: a test reading a hung process's first lines then meets the end of its
/// output and fails, instead of waiting for ever (and holding CI until its own limit).
pub fn start_watchdog(pid: u32) -> mpsc::Sender<()> {
    let (started, waiting) = mpsc::channel::<()>();
    std::thread::spawn(move || {
        if let Err(mpsc::RecvTimeoutError::Timeout) = waiting.recv_timeout(START_LIMIT) {
            let _ = Command::new("kill").args(["-9", &pid.to_string()]).status();
        }
    });
    started
}

/// `strata serve --listen address` on `dir`, once it serves; returns the address it serves at.
pub fn serve(dir: &Path, address: &str) -> (Process, String, Lines<BufReader<ChildStdout>>) {
    serve_with(dir, address, &[])
}

/// [`serve`] with more flags (a layout).
pub fn serve_with(
    dir: &Path,
    address: &str,
    flags: &[&str],
) -> (Process, String, Lines<BufReader<ChildStdout>>) {
    let mut child = Process(
        strata()
            .args(["serve", "--listen", address, "--data-dir"])
            .arg(dir)
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
        .expect("serve printed a line within START_LIMIT")
        .unwrap();
    assert!(first.starts_with("cluster file: "), "{first}");
    let second = lines
        .next()
        .expect("serve said it serves within START_LIMIT")
        .unwrap();
    drop(watchdog);
    // "serving epoch N at HOST:PORT; Ctrl-C or SIGTERM stops"
    let at = second
        .strip_prefix("serving epoch ")
        .and_then(|rest| rest.split(" at ").nth(1))
        .and_then(|rest| rest.split(';').next())
        .unwrap_or_else(|| panic!("{second}"))
        .to_owned();
    (child, at, lines)
}

/// Cycle from another process through the cluster file, printing acknowledgements, which a
/// thread collects until the client ends.
pub fn cycle_client(cluster_file: &Path) -> (Process, mpsc::Receiver<(u64, u64)>) {
    cycle_client_with(cluster_file, &[])
}

/// [`cycle_client`] with more flags (TLS credentials).
pub fn cycle_client_with(
    cluster_file: &Path,
    flags: &[&str],
) -> (Process, mpsc::Receiver<(u64, u64)>) {
    let mut child = strata()
        .args(["workload", "cycle", "--keys", "30", "--clients", "8"])
        .args([
            "--transactions",
            "1000000",
            "--print-acks",
            "--cluster-file",
        ])
        .arg(cluster_file)
        .args(flags)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if let ["ack", c, n] = line.split(' ').collect::<Vec<_>>()[..] {
                let _ = tx.send((c.parse().unwrap(), n.parse().unwrap()));
            }
        }
    });
    (Process(child), rx)
}

/// Collects acknowledgements for `span`, and then until there are `at_least` more than
/// before (for at most 60 s).
/// Stops a `workload cycle` client with SIGTERM: it finishes the transactions it is in,
/// checks the ring through the cluster and exits with 143, as shells report it. Every
/// acknowledgement it printed is added to `acked`.
pub fn stop_client(
    mut client: Process,
    acks: &mpsc::Receiver<(u64, u64)>,
    acked: &mut Vec<(u64, u64)>,
) {
    let pid = client.id().to_string();
    let sent = Command::new("kill").args(["-TERM", &pid]).status().unwrap();
    assert!(sent.success());
    let status = client.wait().unwrap();
    assert_eq!(status.code(), Some(143), "{status:?}");
    // The reader ends with the client's output.
    acked.extend(acks.iter());
}

pub fn collect_acks(
    acks: &mpsc::Receiver<(u64, u64)>,
    seen: &mut Vec<(u64, u64)>,
    span: Duration,
    at_least: usize,
) {
    let started = Instant::now();
    let wanted = seen.len() + at_least;
    while (seen.len() < wanted || started.elapsed() < span)
        && started.elapsed() < Duration::from_secs(60)
    {
        if let Ok(ack) = acks.recv_timeout(Duration::from_millis(20)) {
            seen.push(ack);
        }
    }
    assert!(seen.len() >= wanted, "only {} acknowledgements", seen.len());
}

pub fn check_through_the_network(cluster_file: &Path, acked: &[(u64, u64)]) {
    check_through_the_network_with(cluster_file, acked, None);
}

/// [`check_through_the_network`] with this process's TLS credentials.
pub fn check_through_the_network_with(
    cluster_file: &Path,
    acked: &[(u64, u64)],
    tls: Option<&strata_net::Tls>,
) {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let db = ClusterFile::read(cluster_file)
            .unwrap()
            .connect(tls)
            .await
            .unwrap();
        assert_eq!(check_ring(&db).await.unwrap(), 30);
        check_acks(&db, acked).await.unwrap();
    });
}

/// Commits 3.2 MB of values through the cluster `cluster_file` names (`strata bench`: 200
/// transactions of 4 values of 4,000 bytes), which must succeed: enough to roll a log of
/// 64 KiB segments about 50 times.
pub fn bench_values(cluster_file: &Path) {
    let benched = strata()
        .args(["bench", "--clients", "4", "--transactions", "200"])
        .args(["--keys-per-transaction", "4", "--value-bytes", "4000"])
        .arg("--cluster-file")
        .arg(cluster_file)
        .output()
        .unwrap();
    assert!(benched.status.success(), "{benched:?}");
}

/// The sizes of the segment files of every log in the data directory `dir` (none when it
/// holds no logs).
pub fn segment_sizes(dir: &Path) -> Vec<u64> {
    std::fs::read_dir(dir.join("logs"))
        .into_iter()
        .flatten()
        .flat_map(|log| std::fs::read_dir(log.unwrap().path()).unwrap())
        .map(|f| f.unwrap())
        .filter(|f| f.file_name().to_string_lossy().ends_with(".seg"))
        .map(|f| f.metadata().unwrap().len())
        .collect()
}
