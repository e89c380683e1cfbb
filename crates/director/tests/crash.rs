//! Crashes: the `strata` binary runs the Cycle workload and is killed with SIGKILL at a random
//! moment; a recovery must then find the ring intact and every transaction the workload saw
//! acknowledged. Repeated ten times on one data directory, so each run also recovers from the
//! crashes before it.

// Test helpers may unwrap: a panic there is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used, unreachable_pub)]

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use strata_director::{EmbeddedCluster, EmbeddedConfig};

const RUNS: u64 = 10;

fn strata() -> Command {
    Command::new(env!("CARGO_BIN_EXE_strata"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_mid_workload_the_ring_and_every_acknowledged_commit_survive() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().to_str().unwrap().to_owned();
    let mut seed = 0x5eed_u64;
    let mut total_acked = 0;
    for run in 0..RUNS {
        let mut child = strata()
            .args(["workload", "cycle", "--data-dir", &data, "--keys", "30"])
            .args([
                "--transactions",
                "1000000",
                "--clients",
                "8",
                "--print-acks",
            ])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        // Collect acknowledgements on a thread while the workload runs.
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = mpsc::channel();
        let reader = std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                let parts: Vec<&str> = line.split(' ').collect();
                if let ["ack", c, n] = parts[..] {
                    let _ = tx.send((c.parse::<u64>().unwrap(), n.parse::<u64>().unwrap()));
                }
            }
        });
        seed = seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        let after_ms = 100 + (seed >> 33) % 400;
        std::thread::sleep(Duration::from_millis(after_ms));
        child.kill().unwrap(); // SIGKILL
        child.wait().unwrap();
        reader.join().unwrap();
        let acked: Vec<(u64, u64)> = rx.try_iter().collect();
        total_acked += acked.len();

        let check = strata()
            .args(["workload", "check", "--data-dir", &data])
            .output()
            .unwrap();
        assert!(
            check.status.success(),
            "run {run}: {}",
            String::from_utf8_lossy(&check.stderr)
        );

        let cluster = EmbeddedCluster::start(dir.path(), EmbeddedConfig::default())
            .await
            .unwrap();
        let tx = cluster.database().begin();
        for (c, n) in &acked {
            assert!(
                tx.snapshot_get(&strata_director::workload::cycle::ack(*c, *n))
                    .await
                    .unwrap()
                    .is_some(),
                "run {run}: acknowledged transaction {c}/{n} lost ({} acknowledged)",
                acked.len()
            );
        }
        cluster.stop().await;
    }
    assert!(
        total_acked > 0,
        "the workload never got to commit before being killed"
    );
    eprintln!("{total_acked} acknowledged transactions checked over {RUNS} crashes");
}
