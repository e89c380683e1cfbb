//! The `strata` command as a user meets it: a data directory in use is refused at once by
//! every command, naming the process that holds it and changing nothing; output to a closed
//! pipe ends quietly; commands that only read never create a directory.

// Test helpers may unwrap: a panic there is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used, unreachable_pub)]

#[path = "common/bin.rs"]
mod bin;
mod common;

use bin::{ok, strata};

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};

/// `strata serve` on `dir` in a child process, once it serves, with the rest of its output.
fn serving(dir: &Path) -> (Child, std::io::Lines<BufReader<std::process::ChildStdout>>) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_strata"))
        .args(["serve", "--data-dir"])
        .arg(dir)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let first = lines.next().expect("serve printed a line").unwrap();
    assert!(first.starts_with("serving epoch"), "{first}");
    (child, lines)
}

#[test]
fn a_directory_in_use_is_refused_at_once_by_every_command_and_left_unchanged() {
    let dir = tempfile::tempdir().unwrap();
    ok(
        dir.path(),
        &["workload", "cycle", "--keys", "20", "--transactions", "50"],
    );
    let (mut server, _output) = serving(dir.path());
    // Let the server's own epoch settle before taking the picture: only the commands below
    // must leave it unchanged.
    std::thread::sleep(std::time::Duration::from_millis(300));
    let before = common::snapshot(dir.path());
    let holder = format!("in use by process {}", server.id());
    for args in [
        &["recover"][..],
        &["dump"],
        &["check"],
        &["workload", "check"],
        &["workload", "cycle", "--transactions", "1"],
        &["bench", "--transactions", "1"],
        &["get", "ring/meta/nodes"],
        &["getrange", "ring/"],
        &["status"],
        &["set", "k", "v"],
        &["clear", "k"],
        &["clearrange", "a", "b"],
        &["shell"],
    ] {
        let out = strata(dir.path(), args);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "strata {args:?}: {stderr}");
        assert_eq!(
            stderr.trim().lines().count(),
            1,
            "strata {args:?}: {stderr}"
        );
        assert!(stderr.contains(&holder), "strata {args:?}: {stderr}");
    }
    // The coordinated state, the logs and the storage files are as they were: no epoch was
    // claimed, nothing was written.
    let after = common::snapshot(dir.path());
    assert_eq!(
        after.keys().collect::<Vec<_>>(),
        before.keys().collect::<Vec<_>>()
    );
    let state = Path::new("coordinated.json");
    assert_eq!(after[state], before[state], "the coordinated state changed");

    // A holder that dies lets go: the next command owns the directory.
    server.kill().unwrap();
    server.wait().unwrap();
    ok(dir.path(), &["workload", "check"]);
}

#[test]
fn output_to_a_closed_pipe_ends_quietly() {
    let dir = tempfile::tempdir().unwrap();
    // Enough keys that the dump outgrows a pipe's buffer.
    ok(
        dir.path(),
        &["workload", "cycle", "--keys", "5000", "--transactions", "1"],
    );
    let mut dump = Command::new(env!("CARGO_BIN_EXE_strata"))
        .args(["dump", "--prefix", "ring/", "--data-dir"])
        .arg(dir.path())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut first = String::new();
    BufReader::new(dump.stdout.take().unwrap())
        .read_line(&mut first)
        .unwrap();
    // The reader is gone (as with `| head -1`).
    let out = dump.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(first.starts_with("epoch "), "{first}");
    assert!(out.status.success(), "{:?}: {stderr}", out.status);
    assert!(stderr.is_empty(), "{stderr}");
}

#[test]
fn commands_that_read_never_create_a_directory() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("missing");
    for args in [
        &["dump"][..],
        &["check"],
        &["status"],
        &["get", "k"],
        &["getrange", "a", "b"],
        &["workload", "check"],
    ] {
        let out = strata(&missing, args);
        assert_eq!(out.status.code(), Some(1), "{args:?}");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(
            stderr.trim(),
            format!(
                "error: there is no data directory {}: a command that only reads creates none \
                 (`strata recover` makes one)",
                missing.display()
            ),
            "{args:?}"
        );
        assert!(!missing.exists(), "strata {args:?} created the directory");
    }
}

#[test]
fn dump_of_the_empty_prefix_is_everything() {
    let dir = tempfile::tempdir().unwrap();
    ok(
        dir.path(),
        &["workload", "cycle", "--keys", "10", "--transactions", "5"],
    );
    let all = ok(dir.path(), &["dump", "--prefix", ""]);
    assert!(all.contains("ring/node/000000"), "{all}");
    assert!(all.contains("\\xff/system/config"), "{all}");
}

fn signal(child: &Child, name: &str) {
    let sent = Command::new("kill")
        .args([format!("-{name}"), child.id().to_string()])
        .status()
        .unwrap();
    assert!(sent.success());
}

#[test]
fn sigterm_stops_serve_cleanly_with_exit_143() {
    let dir = tempfile::tempdir().unwrap();
    ok(
        dir.path(),
        &["workload", "cycle", "--keys", "20", "--transactions", "50"],
    );
    let (mut server, output) = serving(dir.path());
    signal(&server, "TERM");
    let rest: Vec<String> = output.map(Result::unwrap).collect();
    let status = server.wait().unwrap();
    assert_eq!(status.code(), Some(143), "{status:?}");
    assert_eq!(rest, ["stopped"]);
    // Stopped cleanly: the directory is consistent and the next command owns it at once.
    ok(dir.path(), &["check"]);
    ok(dir.path(), &["workload", "check"]);
}

#[test]
fn sigint_stops_a_workload_with_exit_130_and_loses_no_acknowledged_commit() {
    let dir = tempfile::tempdir().unwrap();
    let mut cycle = Command::new(env!("CARGO_BIN_EXE_strata"))
        .args(["workload", "cycle", "--keys", "20", "--clients", "4"])
        .args(["--transactions", "1000000000", "--print-acks", "--data-dir"])
        .arg(dir.path())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut acks = BufReader::new(cycle.stdout.take().unwrap()).lines();
    let mut acked = Vec::new();
    for line in acks.by_ref() {
        acked.push(line.unwrap());
        if acked.len() == 200 {
            break;
        }
    }
    signal(&cycle, "INT");
    // The acknowledgements printed before it stopped count too.
    acked.extend(acks.map(Result::unwrap));
    let status = cycle.wait().unwrap();
    assert_eq!(status.code(), Some(130), "{status:?}");
    ok(dir.path(), &["check"]);
    let stored = ok(dir.path(), &["dump", "--prefix", "ring/ack/"]);
    let acked: Vec<&String> = acked.iter().filter(|l| l.starts_with("ack ")).collect();
    assert!(acked.len() >= 200);
    for line in acked {
        let mut parts = line.split(' ').skip(1).map(|n| n.parse::<u64>().unwrap());
        let (c, n) = (parts.next().unwrap(), parts.next().unwrap());
        let key = format!("ring/ack/{c:04}/{n:08}");
        assert!(stored.contains(&key), "acknowledged {key} lost");
    }
    ok(dir.path(), &["workload", "check"]);
}

#[test]
fn sigint_ends_a_bench_early_with_its_report_and_exit_130() {
    let dir = tempfile::tempdir().unwrap();
    let bench = Command::new(env!("CARGO_BIN_EXE_strata"))
        .args([
            "bench",
            "--transactions",
            "1000000000",
            "--json",
            "--data-dir",
        ])
        .arg(dir.path())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    // Past recovery and committing, most likely; a signal during recovery would stop it as
    // soon as the load starts, with the same exit code.
    std::thread::sleep(std::time::Duration::from_secs(2));
    signal(&bench, "INT");
    let out = bench.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(130), "{:?}", out.status);
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(report["transactions"].as_u64().unwrap() > 0, "{report}");
    // Two seconds of commits cost CPU: a report that did not measure it would say 0.
    let cpu = report["cpu_us_per_commit"].as_f64().unwrap();
    assert!(cpu > 0.0 && cpu.is_finite(), "{report}");
    // The quantiles, in order: the tail between p99 and the single worst commit included.
    let latency = &report["latency_us"];
    let quantiles: Vec<u64> = ["p50", "p99", "p999", "max"]
        .iter()
        .map(|q| {
            latency[q]
                .as_u64()
                .unwrap_or_else(|| panic!("no {q}: {report}"))
        })
        .collect();
    assert!(quantiles.is_sorted() && quantiles[0] > 0, "{report}");
    assert!(
        report["fsync_floor_prealloc_us"].as_u64().is_some(),
        "{report}"
    );
    ok(dir.path(), &["check"]);
}

#[test]
fn a_closed_pipe_changes_no_exit_status_and_stops_no_server() {
    let dir = tempfile::tempdir().unwrap();
    ok(dir.path(), &["recover", "--logs", "2"]);

    // A server whose reader went away goes on serving until told to stop.
    let (mut server, output) = serving(dir.path());
    drop(output);
    std::thread::sleep(std::time::Duration::from_millis(500));
    assert!(
        server.try_wait().unwrap().is_none(),
        "serve ended with its reader"
    );
    signal(&server, "TERM");
    assert_eq!(server.wait().unwrap().code(), Some(143));

    // A log the coordinated state names is gone: `check` must say so with exit 1, whether
    // anyone reads its output or not.
    let state: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.path().join("coordinated.json")).unwrap())
            .unwrap();
    let named = state["logs"][0]["dir"].as_str().unwrap();
    std::fs::remove_dir_all(dir.path().join(named)).unwrap();
    let mut check = Command::new(env!("CARGO_BIN_EXE_strata"))
        .args(["check", "--data-dir"])
        .arg(dir.path())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    drop(check.stdout.take());
    assert_eq!(check.wait().unwrap().code(), Some(1));
}

#[test]
fn a_file_given_as_the_data_directory_is_named_in_one_line() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("not-a-dir");
    std::fs::write(&file, b"mine").unwrap();
    for args in [
        &["recover"][..],
        &["serve"],
        &["set", "k", "v"],
        &["get", "k"],
        &["status"],
        &["workload", "cycle"],
        &["workload", "check"],
        &["bench"],
        &["shell"],
    ] {
        let out = strata(&file, args);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "strata {args:?}: {stderr}");
        assert_eq!(
            stderr.trim().lines().count(),
            1,
            "strata {args:?}: {stderr}"
        );
        assert!(
            stderr.contains(&file.display().to_string()),
            "strata {args:?}: the error does not name the path: {stderr}"
        );
    }
    assert_eq!(std::fs::read(&file).unwrap(), b"mine");
}

#[test]
fn runs_of_cycle_on_one_cluster_acknowledge_under_numbers_of_their_own() {
    // A crash test checks the acknowledgement keys of every run it saw: a run that wrote the
    // same keys as an earlier one would hide the loss of its own commits behind them.
    let dir = tempfile::tempdir().unwrap();
    let acks = |out: String| -> std::collections::BTreeSet<String> {
        out.lines()
            .filter(|l| l.starts_with("ack "))
            .map(str::to_owned)
            .collect()
    };
    let run = || {
        ok(
            dir.path(),
            &[
                "workload",
                "cycle",
                "--keys",
                "10",
                "--clients",
                "2",
                "--transactions",
                "20",
                "--print-acks",
            ],
        )
    };
    let first = acks(run());
    let second = acks(run());
    assert_eq!((first.len(), second.len()), (20, 20));
    assert!(
        first.is_disjoint(&second),
        "{first:?} and {second:?} share numbers"
    );
    // The acknowledged keys of both runs, and only they, are stored.
    let stored = ok(
        dir.path(),
        &[
            "getrange",
            "ring/ack/",
            "ring/ack0",
            "--limit",
            "100",
            "--json",
        ],
    );
    let stored: serde_json::Value = serde_json::from_str(&stored).unwrap();
    let stored: std::collections::BTreeSet<String> = stored["pairs"]
        .as_array()
        .unwrap_or_else(|| panic!("{stored}"))
        .iter()
        .map(|p| p["key"].as_str().unwrap().to_owned())
        .collect();
    let acked: std::collections::BTreeSet<String> = first
        .union(&second)
        .map(|line| {
            let [_, c, n] = line.split(' ').collect::<Vec<_>>()[..] else {
                panic!("{line}")
            };
            let key = strata_director::workload::cycle::ack(c.parse().unwrap(), n.parse().unwrap());
            String::from_utf8(key.to_vec()).unwrap()
        })
        .collect();
    assert_eq!(stored, acked);
}
