//! Recovery on every layout of 1–3 logs × 1–3 storage servers × 1–2 resolvers, after histories
//! many times longer than the storage servers' in-memory window (shrunk to 50 ms here, with
//! 128 KiB log segments), after a clean stop and after SIGKILL. Each recovery is followed by a
//! Cycle check (the ring is one ring) and an acknowledged-commits check (every transaction the
//! workload saw acknowledged is there).
//!
//! Each of these failed before the recovery rules were kept: replay after a storage flush
//! (the new log refused the first replayed entry), a storage server making durable versions
//! only one of two logs held, replay from a log its own follower had popped, and logs never
//! popped at all in some layouts.

// Test helpers may unwrap: a panic there is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used, unreachable_pub)]

mod common;

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use strata_core::{ErrorKind, Version};
use strata_director::workload;
use strata_director::workload::cycle::{self, check_acks, check_ring};
use strata_director::{EmbeddedCluster, EmbeddedConfig};

use common::{cycle_for, small_windows};

const NODES: u64 = 40;
const CLIENTS: u64 = 6;
/// Twenty times the storage window.
const HISTORY: Duration = Duration::from_millis(1_000);

/// Recovers `dir` with `config`, checks the ring and every acknowledged commit, and returns the
/// running cluster.
async fn recover_and_check(
    dir: &Path,
    config: EmbeddedConfig,
    acked: &[(u64, u64)],
    what: &str,
) -> EmbeddedCluster {
    let cluster = EmbeddedCluster::start(dir, config)
        .await
        .unwrap_or_else(|e| panic!("{what}: recovery failed: {e}"));
    let db = cluster.database();
    check_ring(&db)
        .await
        .unwrap_or_else(|e| panic!("{what}: {e}"));
    check_acks(&db, acked)
        .await
        .unwrap_or_else(|e| panic!("{what}: {e}"));
    cluster
}

/// Every storage server made something durable and every log was popped: the history really
/// went beyond the windows, and no layout leaves a log to grow without bound.
async fn assert_flushed_and_popped(cluster: &EmbeddedCluster, what: &str) {
    // The watermark task pops a few milliseconds after a flush; give it a moment.
    tokio::time::sleep(Duration::from_millis(100)).await;
    for (i, s) in cluster.storage_servers().iter().enumerate() {
        let durable = s.durable_version().await.unwrap();
        assert!(
            durable > cluster.start_version(),
            "{what}: storage {i} never flushed"
        );
    }
    for (i, log) in cluster.logs().iter().enumerate() {
        let oldest = log.pull(Version::ZERO, 1).await;
        assert!(
            matches!(&oldest, Err(e) if matches!(e.kind, ErrorKind::TooOld { .. })),
            "{what}: log {i} was never popped: {oldest:?}"
        );
    }
}

/// One layout: a long history, a clean stop, recovery and a check; more history, recovery
/// with another number of logs and a check; then a SIGKILL mid-workload and a check.
async fn layout(logs: usize, storage: usize, resolvers: usize) {
    let what = format!("{logs} logs, {storage} storage, {resolvers} resolvers");
    let dir = tempfile::tempdir().unwrap();
    let config = small_windows(logs, storage, resolvers);

    let cluster = EmbeddedCluster::start(dir.path(), config).await.unwrap();
    let mut acked = cycle_for(&cluster.database(), NODES, CLIENTS, 0, HISTORY).await;
    assert_flushed_and_popped(&cluster, &what).await;
    cluster.stop().await;

    let cluster = recover_and_check(dir.path(), config, &acked, &what).await;
    acked.extend(cycle_for(&cluster.database(), NODES, CLIENTS, 1_000_000, HISTORY).await);
    assert_flushed_and_popped(&cluster, &what).await;
    cluster.stop().await;

    let other_logs = small_windows(logs % 3 + 1, storage, resolvers);
    let cluster = recover_and_check(dir.path(), other_logs, &acked, &what).await;
    cluster.stop().await;

    acked.extend(killed_mid_cycle(dir.path(), config, 2_000_000));
    let cluster = recover_and_check(dir.path(), config, &acked, &format!("{what}, killed")).await;
    cluster.stop().await;
}

/// Runs Cycle in a child process (this test binary, running [`child_cycle_until_killed`]) on
/// `dir` with the layout of `config`, kills it with SIGKILL after more than ten storage windows
/// of commits, and returns what it acknowledged.
fn killed_mid_cycle(dir: &Path, config: EmbeddedConfig, first: u64) -> Vec<(u64, u64)> {
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args(["--exact", "child_cycle_until_killed", "--nocapture"])
        .env("STRATA_CHILD_DIR", dir)
        .env(
            "STRATA_CHILD_LAYOUT",
            format!(
                "{} {} {} {first}",
                config.logs, config.storage, config.resolvers
            ),
        )
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let mut acked = Vec::new();
    let mut started = None;
    for line in BufReader::new(stdout).lines() {
        let Ok(line) = line else { break };
        let parts: Vec<&str> = line.split(' ').collect();
        if let ["ack", c, n] = parts[..] {
            acked.push((c.parse().unwrap(), n.parse().unwrap()));
            let since = *started.get_or_insert_with(Instant::now);
            if since.elapsed() > Duration::from_millis(600) {
                break;
            }
        }
    }
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    assert!(!acked.is_empty(), "the child never committed");
    acked
}

/// The child side of [`killed_mid_cycle`]: does nothing unless started by it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn child_cycle_until_killed() {
    let (Ok(dir), Ok(layout)) = (
        std::env::var("STRATA_CHILD_DIR"),
        std::env::var("STRATA_CHILD_LAYOUT"),
    ) else {
        return;
    };
    let n: Vec<u64> = layout.split(' ').map(|p| p.parse().unwrap()).collect();
    let config = small_windows(n[0] as usize, n[1] as usize, n[2] as usize);
    let cluster = EmbeddedCluster::start(Path::new(&dir), config)
        .await
        .unwrap();
    let db = cluster.database();
    let nodes = cycle::ensure_ring(&db, NODES).await.unwrap();
    let plan = workload::Plan {
        clients: CLIENTS,
        // Until killed.
        span: workload::Span::For(std::time::Duration::MAX),
        seed: n[3],
        first: n[3],
    };
    let on_ack: workload::OnAck = Arc::new(|c, n| println!("ack {c} {n}"));
    workload::drive(&db, Arc::new(cycle::Cycle { nodes }), &plan, on_ack)
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_log_every_storage_and_resolver_count() {
    for storage in 1..=3 {
        for resolvers in 1..=2 {
            layout(1, storage, resolvers).await;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_logs_every_storage_and_resolver_count() {
    for storage in 1..=3 {
        for resolvers in 1..=2 {
            layout(2, storage, resolvers).await;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_logs_every_storage_and_resolver_count() {
    for storage in 1..=3 {
        for resolvers in 1..=2 {
            layout(3, storage, resolvers).await;
        }
    }
}
