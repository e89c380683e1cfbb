//! Random damage to the files of a data directory, through the binary: a zeroed, random or
//! bit-flipped 4 KiB page of a storage file or of a log segment, many times over. Whatever the
//! damage, `strata recover` never panics, and it either refuses with one line naming a file
//! (exit 1), or succeeds with the ring intact and every acknowledged transaction present.
//!
//! The directory's last group commit is the system transaction of its last recovery, so the
//! one kind of damage a log cannot tell from a torn write (to the records of its last group
//! commit) never touches an acknowledged user transaction here.

// Test helpers may unwrap: a panic there is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used, unreachable_pub)]

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use strata_director::EmbeddedCluster;
use strata_testkit::rng::SplitMix64;

const ITERATIONS: u64 = 100;
const PAGE: u64 = 4096;

fn strata(args: &[&str], dir: &Path) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_strata"))
        .args(args)
        .args(["--data-dir", dir.to_str().unwrap()])
        .output()
        .unwrap()
}

fn files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir.join("storage")).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "redb") {
            out.push(path);
        }
    }
    for log in std::fs::read_dir(dir.join("logs")).unwrap() {
        for entry in std::fs::read_dir(log.unwrap().path()).unwrap() {
            let path = entry.unwrap().path();
            if path.extension().is_some_and(|e| e == "seg") {
                out.push(path);
            }
        }
    }
    out.sort();
    out
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.path().is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), target).unwrap();
        }
    }
}

/// Damages one page of `file`, chosen by `rng`; returns what was done.
fn damage(file: &Path, rng: &mut SplitMix64) -> String {
    let mut bytes = std::fs::read(file).unwrap();
    let pages = (bytes.len() as u64).div_ceil(PAGE).max(1);
    let page = rng.below(pages);
    let start = (page * PAGE) as usize;
    let end = (start + PAGE as usize).min(bytes.len());
    let how = rng.below(3);
    for b in &mut bytes[start..end] {
        match how {
            0 => *b = 0,
            1 => *b = rng.below(256) as u8,
            _ => {}
        }
    }
    if how == 2 {
        for _ in 0..4 {
            let at = start + rng.below((end - start).max(1) as u64) as usize;
            if at < bytes.len() {
                bytes[at] ^= 1 << rng.below(8);
            }
        }
    }
    std::fs::write(file, bytes).unwrap();
    let kind = ["zeroed", "random bytes in", "bits flipped in"][how as usize];
    format!("{kind} page {page} of {}", file.display())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_damaged_page_never_panics_and_never_loses_an_acknowledged_commit() {
    let root = tempfile::tempdir().unwrap();
    let pristine = root.path().join("pristine");
    // Two logs and two storage servers, with windows small enough that storage files hold
    // flushed data and logs span several segments.
    let config = common::small_windows(2, 2, 1);
    let cluster = EmbeddedCluster::start(&pristine, config).await.unwrap();
    let acked = common::cycle_for(&cluster.database(), 30, 4, 0, Duration::from_millis(700)).await;
    cluster.stop().await;
    EmbeddedCluster::start(&pristine, config)
        .await
        .unwrap()
        .stop()
        .await;

    let seed = 0xda3a_9e00_u64;
    let mut rng = SplitMix64(seed);
    let (mut refused, mut recovered, mut read_at_rest) = (0, 0, 0);
    for i in 0..ITERATIONS {
        let dir = root.path().join(format!("copy-{i}"));
        copy_dir(&pristine, &dir);
        let candidates = files(&dir);
        let file = &candidates[rng.below(candidates.len() as u64) as usize];
        let what = damage(file, &mut rng);
        // Read at rest first, as `strata get` and `workload check` do: an answer must hold
        // every acknowledged commit; otherwise an error, never a panic.
        match strata_director::Snapshot::open(&dir).await {
            Ok(snapshot) => {
                read_at_rest += 1;
                for &(client, n) in &acked {
                    let key = strata_director::workload::cycle::ack(client, n);
                    let read = snapshot.get(&key).await;
                    assert!(
                        matches!(read, Ok(Some(_)) | Err(_)),
                        "seed {seed:#x}, {what}: read at rest lost acknowledged {client}/{n}"
                    );
                }
                snapshot.close().await;
            }
            Err(e) => assert!(!e.to_string().contains("panicked"), "{e}"),
        }
        let out = strata(&["recover"], &dir);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            !stderr.contains("panicked"),
            "seed {seed:#x}, {what}: {stderr}"
        );
        match out.status.code() {
            Some(0) => {
                recovered += 1;
                let check = strata(&["workload", "check"], &dir);
                assert!(
                    check.status.success(),
                    "seed {seed:#x}, {what}: recovered, then {}",
                    String::from_utf8_lossy(&check.stderr)
                );
                let cluster = EmbeddedCluster::start(
                    &dir,
                    strata_director::EmbeddedConfig::default()
                        .with_stored_layout(&dir)
                        .unwrap(),
                )
                .await
                .unwrap();
                let lost =
                    strata_director::workload::cycle::check_acks(&cluster.database(), &acked).await;
                cluster.stop().await;
                assert!(
                    lost.is_ok(),
                    "seed {seed:#x}, {what}: {}",
                    lost.unwrap_err()
                );
            }
            Some(1) => {
                refused += 1;
                // One error line naming a file; before it at most the warnings of a log that
                // took the damage for a torn write at its end (which the cross-check with the
                // recorded recovery version then refuses).
                let lines: Vec<&str> = stderr.lines().collect();
                let last = lines.last().copied().unwrap_or_default();
                assert!(
                    last.starts_with("error: "),
                    "seed {seed:#x}, {what}: {stderr}"
                );
                assert!(
                    last.contains(dir.to_str().unwrap()),
                    "seed {seed:#x}, {what}: the error names no file of the directory: {stderr}"
                );
                assert!(
                    lines[..lines.len() - 1]
                        .iter()
                        .all(|l| l.contains(" WARN ")),
                    "seed {seed:#x}, {what}: {stderr}"
                );
            }
            other => panic!("seed {seed:#x}, {what}: exit {other:?}: {stderr}"),
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }
    // Most damage lands where the files are still readable; a reader refusing them all would
    // check nothing.
    assert!(
        read_at_rest > 0,
        "no damaged directory could be read at rest"
    );
    eprintln!(
        "{ITERATIONS} damaged pages: {read_at_rest} read at rest, {refused} refused naming a file, {recovered} recovered with \
         every acknowledged commit ({} acknowledged)",
        acked.len()
    );
}
