//! A coordinated state that disagrees with the directory is refused, through the binary as a
//! user meets it: `strata recover` exits 1 with one line naming the file and what disagrees,
//! `strata check` reports it, and every file of the data directory is left byte-for-byte as it
//! was. Before, each of these recovered "successfully" to an empty database, and some
//! overwrote or deleted the real logs.

// Test helpers may unwrap: a panic there is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used, unreachable_pub)]

mod common;

use std::path::Path;
use std::process::{Command, Output};

fn strata(args: &[&str], dir: &Path) -> Output {
    Command::new(env!("CARGO_BIN_EXE_strata"))
        .args(args)
        .args(["--data-dir", dir.to_str().unwrap()])
        .output()
        .unwrap()
}

/// A directory recovered three times (epoch 3: the workload recovers too), holding a Cycle ring and 2,000 acknowledged
/// transactions.
fn with_data(dir: &Path) {
    for args in [
        &["recover"][..],
        &[
            "workload",
            "cycle",
            "--keys",
            "20",
            "--transactions",
            "2000",
        ][..],
        &["recover"][..],
    ] {
        let out = strata(args, dir);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

use common::edit_state;

/// `strata recover` and `strata check` both refuse, naming `needle`, changing nothing; then,
/// with the damage undone by `restore`, the ring and every transaction are still there.
fn refused(dir: &Path, needle: &str) {
    let before = common::snapshot(dir);
    let out = strata(&["recover"], dir);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{needle}: {stderr}");
    assert_eq!(stderr.lines().count(), 1, "{needle}: one line: {stderr}");
    assert!(stderr.contains(needle), "{needle} not in: {stderr}");
    common::assert_unchanged(
        &before,
        &common::snapshot(dir),
        &format!("recover: {needle}"),
    );

    let out = strata(&["check"], dir);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "check, {needle}: {stdout}");
    assert!(
        stdout
            .lines()
            .any(|l| l.starts_with("problem: ") && l.contains(needle)),
        "check, {needle}: {stdout}"
    );
    common::assert_unchanged(&before, &common::snapshot(dir), &format!("check: {needle}"));
}

#[test]
fn an_epoch_lowered_by_one_is_refused_and_the_log_kept() {
    let dir = tempfile::tempdir().unwrap();
    with_data(dir.path());
    let mut log = String::new();
    edit_state(dir.path(), |s| {
        log = s["logs"][0]["dir"].as_str().unwrap().to_owned();
        s["epoch"] = (s["epoch"].as_u64().unwrap() - 1).into();
    });
    refused(dir.path(), &log);
}

#[test]
fn a_missing_state_file_is_refused_over_a_directory_with_data() {
    let dir = tempfile::tempdir().unwrap();
    with_data(dir.path());
    std::fs::remove_file(dir.path().join("coordinated.json")).unwrap();
    refused(dir.path(), "coordinated.json");
}

#[test]
fn a_state_naming_no_logs_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    with_data(dir.path());
    edit_state(dir.path(), |s| s["logs"] = serde_json::json!([]));
    refused(dir.path(), "names no logs");
}

#[test]
fn an_epoch_that_cannot_be_followed_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    with_data(dir.path());
    edit_state(dir.path(), |s| s["epoch"] = u64::MAX.into());
    refused(dir.path(), "cannot be followed");
}

#[test]
fn log_paths_outside_the_data_directory_are_refused() {
    for bad in [
        "/tmp/strata-elsewhere",
        "../elsewhere",
        "logs/../../elsewhere",
        "logs",
    ] {
        let dir = tempfile::tempdir().unwrap();
        with_data(dir.path());
        edit_state(dir.path(), |s| s["logs"][0]["dir"] = bad.into());
        refused(dir.path(), "not a directory under logs/");
        assert!(!Path::new("/tmp/strata-elsewhere").exists());
        assert!(!dir.path().parent().unwrap().join("elsewhere").exists());
    }
}

#[test]
fn a_damaged_state_file_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    with_data(dir.path());
    std::fs::write(
        dir.path().join("coordinated.json"),
        b"{\"format\": 1, \"epo",
    )
    .unwrap();
    refused(dir.path(), "coordinated.json");
}

#[test]
fn a_consistent_directory_checks_clean_and_check_changes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    with_data(dir.path());
    let before = common::snapshot(dir.path());
    let out = strata(&["check"], dir.path());
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("consistent"), "{stdout}");
    common::assert_unchanged(&before, &common::snapshot(dir.path()), "check");
    let out = strata(&["check", "--json"], dir.path());
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["findings"], serde_json::json!([]));
    assert_eq!(report["epoch"], serde_json::json!(3));

    // And the data is all there.
    let out = strata(&["workload", "check"], dir.path());
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Another process holding the coordinated state's lock (stuck, or stopped with SIGSTOP): the
/// wait is bounded, and the error names the holder's pid, instead of waiting forever.
#[test]
fn a_held_state_lock_is_waited_for_a_bounded_time_naming_the_holder() {
    let dir = tempfile::tempdir().unwrap();
    with_data(dir.path());
    let lock_path = dir.path().join("coordinated.lock");
    let held = std::fs::OpenOptions::new()
        .write(true)
        .open(&lock_path)
        .unwrap();
    held.lock().unwrap();
    held.set_len(0).unwrap();
    std::fs::write(&lock_path, format!("{}\n", std::process::id())).unwrap();
    let before = common::snapshot(dir.path());
    let started = std::time::Instant::now();
    let out = strata(&["recover"], dir.path());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains(&format!("process {}", std::process::id())),
        "{stderr}"
    );
    assert!(started.elapsed() < std::time::Duration::from_secs(60));
    common::assert_unchanged(&before, &common::snapshot(dir.path()), "a held lock");
    held.unlock().unwrap();
    let out = strata(&["recover"], dir.path());
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
