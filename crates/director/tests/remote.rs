//! A cluster used from another process: `strata serve --listen` serves it on loopback and
//! writes its cluster file; `strata workload cycle --cluster-file` runs Cycle against it from a
//! second process. The server is killed with SIGKILL in the middle of the workload, twice in a
//! row, and restarted on the same address each time with another layout (1 to 3 logs, 1 to 3
//! resolvers and proxies, 2 storage servers); the one client follows each recovery and goes on.
//! Then the ring must be one ring and every commit the client saw acknowledged must be there,
//! read through the network.

// Test helpers may unwrap: a panic there is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used, unreachable_pub)]

use std::time::Duration;

use strata_director::cluster_file::{CLUSTER_FILE_NAME, ClusterFile};

#[path = "common/served.rs"]
mod served;

use served::{
    bench_values, check_through_the_network, collect_acks, cycle_client, segment_sizes, serve,
    serve_with, stop_client, strata,
};

#[test]
fn a_client_process_keeps_every_acknowledged_commit_across_two_server_kills() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    // Several of each stage, so the client reaches proxies and storage servers by index and
    // routes reads by shard; each restart recovers a new layout (the storage count is fixed
    // once the directory exists).
    let layouts: [&[&str]; 3] = [
        &[
            "--logs",
            "2",
            "--storage",
            "2",
            "--resolvers",
            "2",
            "--proxies",
            "2",
        ],
        &["--logs", "3", "--resolvers", "1", "--proxies", "3"],
        &["--logs", "1", "--resolvers", "3", "--proxies", "1"],
    ];
    let (mut server, address, _) = serve_with(&data, "127.0.0.1:0", layouts[0]);
    let cluster_file = data.join(CLUSTER_FILE_NAME);
    let mut acked = Vec::new();
    // One client throughout: it follows each recovery.
    let (client, acks) = cycle_client(&cluster_file);
    for layout in &layouts[1..] {
        // Long enough that the two rounds' history outlasts the MVCC window (5 s).
        collect_acks(&acks, &mut acked, Duration::from_secs(3), 100);
        server.kill().unwrap(); // SIGKILL, in the middle of the client's commits
        server.wait().unwrap();
        let restarted;
        (server, restarted, _) = serve_with(&data, &address, layout);
        assert_eq!(restarted, address);
        // The client waited for the new epoch, and goes on in it: its commits in flight at
        // the kill are of unknown outcome, and every acknowledgement it printed counts.
        collect_acks(&acks, &mut acked, Duration::from_millis(500), 100);
    }
    stop_client(client, &acks, &mut acked);

    check_through_the_network(&cluster_file, &acked);
    let checked = strata()
        .args(["workload", "check", "--cluster-file"])
        .arg(&cluster_file)
        .output()
        .unwrap();
    assert!(checked.status.success(), "{checked:?}");
    let text = String::from_utf8_lossy(&checked.stdout);
    assert!(text.starts_with("ring of 30 keys intact"), "{text}");
    server.kill().unwrap();
    server.wait().unwrap();
}

#[test]
fn a_cluster_file_of_another_cluster_or_of_no_server_is_refused_in_one_line() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let (mut server, _, _) = serve(&data, "127.0.0.1:0");
    let ours = ClusterFile::read(&data.join(CLUSTER_FILE_NAME)).unwrap();

    // The same place, another id: every call is refused by the server, naming both ids.
    let theirs = dir.path().join("theirs.cluster");
    let forged = format!("{}:0123456789abcdef@file:{}", ours.name, data.display());
    std::fs::write(&theirs, forged).unwrap();
    let refused = strata()
        .args(["workload", "check", "--cluster-file"])
        .arg(&theirs)
        .output()
        .unwrap();
    assert_eq!(refused.status.code(), Some(1), "{refused:?}");
    let text = String::from_utf8_lossy(&refused.stderr);
    assert!(
        text.contains("0123456789abcdef") && text.contains(ours.id.as_str()),
        "{text}"
    );
    assert_eq!(text.lines().count(), 1, "{text}");
    server.kill().unwrap();
    server.wait().unwrap();

    // A directory whose cluster is not served to other processes: said so, with the fix.
    let quiet = dir.path().join("quiet");
    let recovered = strata()
        .args(["recover", "--data-dir"])
        .arg(&quiet)
        .output()
        .unwrap();
    assert!(recovered.status.success(), "{recovered:?}");
    let file = dir.path().join("quiet.cluster");
    std::fs::write(&file, format!("quiet:q1@file:{}", quiet.display())).unwrap();
    let refused = strata()
        .args(["workload", "cycle", "--cluster-file"])
        .arg(&file)
        .output()
        .unwrap();
    assert_eq!(refused.status.code(), Some(1), "{refused:?}");
    let text = String::from_utf8_lossy(&refused.stderr);
    assert!(text.contains("strata serve --listen"), "{text}");
}

#[test]
fn bench_drives_a_served_cluster_and_says_where_it_was_served() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let (mut server, address, _) = serve(&data, "127.0.0.1:0");
    let benched = strata()
        .args(["bench", "--clients", "8", "--transactions", "300", "--json"])
        .arg("--cluster-file")
        .arg(data.join(CLUSTER_FILE_NAME))
        .output()
        .unwrap();
    assert!(benched.status.success(), "{benched:?}");
    let report: serde_json::Value = serde_json::from_slice(&benched.stdout).unwrap();
    assert_eq!(report["transactions"], 300);
    assert_eq!(report["served_at"], address.as_str());
    // The disk is the server's: no floor is measured through the network.
    assert!(report["fsync_floor_us"].is_null(), "{report}");
    assert!(report["latency_us"]["p50"].as_u64().unwrap() > 0);
    server.kill().unwrap();
    server.wait().unwrap();
}

#[test]
fn a_served_cluster_rolls_its_log_segments_at_the_size_given() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let (mut server, _, _) = serve_with(&data, "127.0.0.1:0", &["--log-segment-bytes", "65536"]);
    // The storage server keeps the last 5 s in memory, so the log is not popped meanwhile.
    bench_values(&data.join(CLUSTER_FILE_NAME));
    let segments = segment_sizes(&data);
    assert!(segments.len() >= 20, "{} segments", segments.len());
    // A record that would cross the size starts the next segment, so a segment is larger
    // only when its first record alone is: here a batch of at most four transactions of 16 KB.
    let largest = segments.iter().max().unwrap();
    assert!(
        *largest < 65_536 + 64 * 1024,
        "a segment of {largest} bytes"
    );
    server.kill().unwrap();
    server.wait().unwrap();
}

#[test]
fn a_log_segment_size_out_of_bounds_or_without_logs_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    for (flags, says) in [
        (
            vec!["--log-segment-bytes", "4096"],
            "4096 is not in 65536..=1073741824",
        ),
        (
            vec!["--log-segment-bytes", "2147483648"],
            "2147483648 is not in 65536..=1073741824",
        ),
        (
            vec![
                "--role",
                "resolver",
                "--listen",
                "127.0.0.1:0",
                "--cluster-file",
                "x.cluster",
                "--log-segment-bytes",
                "65536",
            ],
            "--log-segment-bytes is for processes that hold logs",
        ),
    ] {
        let out = strata()
            .arg("serve")
            .args(&flags)
            .arg("--data-dir")
            .arg(dir.path().join("d"))
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{flags:?}: {stderr}");
        assert!(stderr.contains(says), "{flags:?}: {stderr}");
        assert!(
            !dir.path().join("d").exists(),
            "{flags:?} made the directory"
        );
    }
}

#[test]
fn dump_reads_a_served_cluster_through_the_network() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let (mut server, address, _) = serve(&data, "127.0.0.1:0");
    let dumped = strata()
        .args(["dump", "--json", "--cluster-file"])
        .arg(data.join(CLUSTER_FILE_NAME))
        .output()
        .unwrap();
    assert!(dumped.status.success(), "{dumped:?}");
    let dump: serde_json::Value = serde_json::from_slice(&dumped.stdout).unwrap();
    assert_eq!(dump["state"]["served_at"], address.as_str());
    // The persistence phase wrote the layout with the address it is served at.
    let entries = dump["entries"].as_array().unwrap();
    let layout = entries
        .iter()
        .find(|e| e[0] == "\\xff/system/layout/sequencer")
        .unwrap_or_else(|| panic!("{dump}"));
    // A system value starts with its format byte, 1.
    assert_eq!(
        layout[1],
        format!("\\x01\"sequencer-0@{address}\""),
        "{dump}"
    );
    server.kill().unwrap();
    server.wait().unwrap();
}
