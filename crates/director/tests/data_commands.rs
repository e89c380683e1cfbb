//! The data commands through the `strata` binary: `set`, `get`, `clear`, `getrange`,
//! `clearrange`, `status` and `shell`, with FoundationDB's key escaping, `--json`, bad input
//! refused with one line, and the reading commands leaving the directory as they found it.

// Test helpers may unwrap: a panic there is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used, unreachable_pub)]

#[path = "common/bin.rs"]
mod bin;
mod common;

use bin::{ok, strata};

use std::io::Write;
use std::path::Path;
use std::process::{Command, Output, Stdio};

/// Runs `args`, which must fail with `code` and exactly one line on stderr; returns it.
fn refused(dir: &Path, args: &[&str], code: i32) -> String {
    let out = strata(dir, args);
    let stderr = String::from_utf8_lossy(&out.stderr).trim().to_owned();
    assert_eq!(out.status.code(), Some(code), "strata {args:?}: {stderr}");
    if code == 1 {
        assert_eq!(stderr.lines().count(), 1, "strata {args:?}: {stderr}");
    }
    stderr
}

fn json(text: &str) -> serde_json::Value {
    serde_json::from_str(text.trim()).unwrap()
}

#[test]
fn set_get_clear_and_ranges_round_trip_escaped_bytes() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let set = json(&ok(d, &["set", "hello", "world", "--json"]));
    let first = set["committed_version"].as_u64().unwrap();
    assert_eq!(ok(d, &["get", "hello"]).trim(), "`hello' is `world'");

    // Bytes outside printable ASCII, and a backslash, both ways.
    ok(d, &["set", r"k\x00\x01", r"v\xff\\end"]);
    let got = json(&ok(d, &["get", r"k\x00\x01", "--json"]));
    assert_eq!(got["key"], r"k\x00\x01");
    assert_eq!(got["value"], r"v\xff\\end");
    assert!(got["version"].as_u64().unwrap() > first, "{got}");

    for i in 0..5 {
        ok(d, &["set", &format!("r/{i}"), &i.to_string()]);
    }
    assert_eq!(
        ok(d, &["getrange", "r/", "r0"]).lines().collect::<Vec<_>>(),
        [
            "`r/0' is `0'",
            "`r/1' is `1'",
            "`r/2' is `2'",
            "`r/3' is `3'",
            "`r/4' is `4'"
        ]
    );
    let limited = json(&ok(d, &["getrange", "r/", "r0", "--limit", "2", "--json"]));
    assert_eq!(limited["pairs"].as_array().unwrap().len(), 2);
    assert_eq!(limited["pairs"][1]["key"], "r/1");
    assert_eq!(limited["more"], true);
    let all = json(&ok(d, &["getrange", "r/", "r0", "--limit", "5", "--json"]));
    assert_eq!(all["more"], false);
    // Without an end, the range is every user key.
    let everything = ok(d, &["getrange", "", "--limit", "100"]);
    assert_eq!(everything.lines().count(), 7, "{everything}");
    assert!(everything.contains("`hello' is `world'"));

    ok(d, &["clearrange", "r/1", "r/3"]);
    assert_eq!(
        ok(d, &["getrange", "r/", "r0"]).lines().collect::<Vec<_>>(),
        ["`r/0' is `0'", "`r/3' is `3'", "`r/4' is `4'"]
    );
    ok(d, &["clear", "hello"]);
    assert_eq!(ok(d, &["get", "hello"]).trim(), "`hello': not found");
    assert_eq!(
        json(&ok(d, &["get", "hello", "--json"]))["value"],
        serde_json::Value::Null
    );
    assert_eq!(
        ok(d, &["getrange", "x", "y"]).trim(),
        "no keys in the range"
    );
}

#[test]
fn bad_keys_values_and_ranges_are_refused_with_one_line_and_nothing_written() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    ok(d, &["set", "a", "1"]);
    let before = common::snapshot(d);

    let bad_escape = refused(d, &["set", r"bad\q", "v"], 1);
    assert!(
        bad_escape.contains(r#""bad\\q" is not a key"#),
        "{bad_escape}"
    );
    refused(d, &["get", r"\x4"], 1);
    refused(d, &["set", "k", r"\xzz"], 1);
    let long = "k".repeat(10_001);
    let too_long = refused(d, &["set", &long, "v"], 1);
    assert!(
        too_long.contains("10001 bytes, over the limit of 10000"),
        "{too_long}"
    );
    refused(d, &["get", &long], 1);
    let big = "v".repeat(100_001);
    assert!(refused(d, &["set", "k", &big], 1).contains("over the limit of 100000"));
    let system = refused(d, &["set", r"\xff/system/config", "x"], 1);
    assert!(system.contains("system key"), "{system}");
    refused(d, &["clear", r"\xff/system/config"], 1);
    refused(d, &["clearrange", "a", r"\xff\xff"], 1);
    let empty = refused(d, &["getrange", "b", "a"], 1);
    assert!(empty.contains("the range is empty"), "{empty}");
    refused(d, &["clearrange", "b", "b"], 1);
    // Usage errors: clap's message, exit 2.
    refused(d, &["set", "k"], 2);
    refused(d, &["getrange", "a", "--limit", "0"], 2);
    refused(d, &["get"], 2);

    // Refused before anything was opened: no new epoch, nothing written.
    common::assert_unchanged(&before, &common::snapshot(d), "refused commands");
    assert_eq!(ok(d, &["get", "a"]).trim(), "`a' is `1'");
}

#[test]
fn reading_commands_start_no_epoch_and_change_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    ok(
        d,
        &["workload", "cycle", "--keys", "20", "--transactions", "100"],
    );
    ok(d, &["set", "k", "v"]);
    let before = common::snapshot(d);
    for args in [
        &["get", "k"][..],
        &["getrange", ""],
        &["status"],
        &["status", "--json"],
        &["workload", "check"],
        &["dump", "--prefix", ""],
    ] {
        ok(d, args);
        common::assert_unchanged(&before, &common::snapshot(d), &format!("strata {args:?}"));
    }
    // What was written last is what a read at rest sees.
    assert_eq!(ok(d, &["get", "k"]).trim(), "`k' is `v'");
    let check = ok(d, &["workload", "check"]);
    assert!(
        check.starts_with("ring of 20 keys intact at version"),
        "{check}"
    );
}

#[test]
fn status_reports_epoch_layout_versions_sizes_and_problems() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    ok(
        d,
        &[
            "recover",
            "--logs",
            "2",
            "--storage",
            "2",
            "--resolvers",
            "2",
        ],
    );
    let set = json(&ok(d, &["set", "k", "v", "--json"]));
    let status = json(&ok(d, &["status", "--json"]));
    let state = json(&std::fs::read_to_string(d.join("coordinated.json")).unwrap());
    assert_eq!(status["epoch"], state["epoch"]);
    assert_eq!(status["running"], false);
    assert_eq!(status["layout"]["logs"], 2);
    assert_eq!(status["layout"]["storage"], 2);
    assert_eq!(status["layout"]["resolvers"], 2);
    assert_eq!(status["layout"]["proxies"], 1);
    assert_eq!(status["recovery_version"], state["recovery_version"]);
    // The newest version a read sees holds the last commit.
    assert!(
        status["newest_version"].as_u64().unwrap() >= set["committed_version"].as_u64().unwrap()
    );
    assert_eq!(status["logs"].as_array().unwrap().len(), 2);
    for log in status["logs"].as_array().unwrap() {
        assert!(log["bytes"].as_u64().unwrap() > 0, "{log}");
        assert_eq!(log["holds_up_to"], status["newest_version"]);
    }
    assert_eq!(status["storage"].as_array().unwrap().len(), 2);
    assert!(
        status["problems"].as_array().unwrap().is_empty(),
        "{status}"
    );
    let text = ok(d, &["status"]);
    assert!(text.contains("at rest"), "{text}");
    assert!(text.contains("health: healthy"), "{text}");

    // A storage file gone while the logs still hold all history is what recovery would
    // rebuild: a read at rest replays it in memory, and creates no file.
    ok(d, &["set", r"\x90", "high"]);
    std::fs::remove_file(d.join("storage/1.redb")).unwrap();
    assert_eq!(ok(d, &["get", r"\x90"]).trim(), r"`\x90' is `high'");
    assert!(!d.join("storage/1.redb").exists());

    // A log the state names gone is a problem status reports (and still exits 0); a read
    // says so too, rather than answer from what is left.
    let now = json(&ok(d, &["status", "--json"]));
    std::fs::remove_dir_all(d.join(now["logs"][1]["dir"].as_str().unwrap())).unwrap();
    let damaged = json(&ok(d, &["status", "--json"]));
    let problems = damaged["problems"].as_array().unwrap();
    assert!(!problems.is_empty(), "{damaged}");
    assert!(ok(d, &["status"]).contains(&format!("health: {} problem(s)", problems.len())));
    refused(d, &["get", "k"], 1);
}

/// Runs `strata shell` on `dir` with `script` as its input.
fn shell(dir: &Path, script: &str) -> Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_strata"))
        .args(["shell", "--data-dir"])
        .arg(dir)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(script.as_bytes())
        .unwrap();
    child.wait_with_output().unwrap()
}

#[test]
fn the_shell_runs_every_command_on_one_running_cluster() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let out = shell(
        d,
        "set k1 v1\n\
         set \"key two\" \"value \\\"two\\\"\"\n\
         get k1\n\
         get \"key two\"\n\
         getrange k\n\
         set \\x01 \\xfe\n\
         getrange \"\" --limit 1 --json\n\
         clear k1\n\
         get k1\n\
         clearrange a z\n\
         getrange \"\"\n\
         status --json\n\
         exit\n\
         set after exit\n",
    );
    let stdout = String::from_utf8(out.stdout).unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let lines: Vec<&str> = stdout.lines().collect();
    assert!(lines[0].starts_with("committed at version "), "{stdout}");
    assert_eq!(lines[2], "`k1' is `v1'");
    assert_eq!(lines[3], "`key two' is `value \"two\"'");
    assert_eq!(
        lines[4..6],
        ["`k1' is `v1'", "`key two' is `value \"two\"'"]
    );
    let limited = json(lines[7]);
    assert_eq!(limited["pairs"][0]["key"], r"\x01");
    assert_eq!(limited["more"], true);
    assert_eq!(lines[9], "`k1': not found");
    assert_eq!(lines[11], r"`\x01' is `\xfe'");
    let status = json(lines[12]);
    assert_eq!(status["running"], true);
    // One cluster for the whole session: one epoch, the one the state names now.
    let state = json(&std::fs::read_to_string(d.join("coordinated.json")).unwrap());
    assert_eq!(status["epoch"], state["epoch"]);
    assert_eq!(lines.len(), 13, "{stdout}");

    // What the shell wrote is there after it left; the line after `exit` never ran.
    assert_eq!(ok(d, &["get", r"\x01"]).trim(), r"`\x01' is `\xfe'");
    assert_eq!(ok(d, &["get", "after"]).trim(), "`after': not found");
}

#[test]
fn a_failed_shell_line_is_reported_and_the_script_exits_1() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let out = shell(
        d,
        "bogus\nget\nset \\xff/x 1\nget \"open\nget --data-dir /elsewhere k\nset k v\nhelp\n",
    );
    let stderr = String::from_utf8(out.stderr).unwrap();
    let stdout = String::from_utf8(out.stdout).unwrap();
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    let errors: Vec<&str> = stderr.lines().collect();
    assert_eq!(errors.len(), 6, "{stderr}");
    assert!(
        errors[0].contains("unrecognized subcommand 'bogus'"),
        "{stderr}"
    );
    assert!(
        errors[1].contains("required arguments were not provided: <KEY>"),
        "{stderr}"
    );
    assert!(errors[2].contains("system key"), "{stderr}");
    assert!(errors[3].contains("a quote is not closed"), "{stderr}");
    assert!(
        errors[4].contains("--data-dir is for the one-shot"),
        "{stderr}"
    );
    assert_eq!(errors[5], "error: 5 line(s) failed");
    // The good line ran, and help listed the commands.
    assert!(stdout.starts_with("committed at version "), "{stdout}");
    for command in [
        "get",
        "set",
        "clear",
        "getrange",
        "clearrange",
        "status",
        "exit",
    ] {
        assert!(stdout.contains(&format!("  {command} ")), "{stdout}");
    }
    assert_eq!(ok(d, &["get", "k"]).trim(), "`k' is `v'");
}

#[test]
fn a_read_at_rest_refuses_what_recovery_refuses() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    ok(d, &["set", "hello", "world"]);
    let state_file = d.join("coordinated.json");
    let good = std::fs::read(&state_file).unwrap();

    // A state that names no logs while the logs hold records: recovery refuses it, and a read
    // must not answer "not found" from it.
    let mut state = json(&String::from_utf8(good.clone()).unwrap());
    state["logs"] = serde_json::json!([]);
    state["recovery_version"] = serde_json::json!(0);
    std::fs::write(&state_file, serde_json::to_vec(&state).unwrap()).unwrap();
    let recover = refused(d, &["recover"], 1);
    assert!(recover.contains("names no logs"), "{recover}");
    for args in [
        &["get", "hello"][..],
        &["getrange", ""],
        &["workload", "check"],
        &["dump"],
    ] {
        let read = refused(d, args, 1);
        assert!(read.contains("names no logs"), "strata {args:?}: {read}");
    }

    // No state at all, beside data: not a new cluster, and not "run recover" either.
    std::fs::remove_file(&state_file).unwrap();
    let read = refused(d, &["get", "hello"], 1);
    assert!(!read.contains("run `strata recover` first"), "{read}");
    std::fs::write(&state_file, &good).unwrap();
    assert_eq!(ok(d, &["get", "hello"]).trim(), "`hello' is `world'");
}

#[test]
fn a_range_at_rest_says_more_only_when_more_exists() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    // Two storage servers: `a` and `b` on the first, nothing on the second.
    ok(d, &["recover", "--storage", "2"]);
    ok(d, &["set", "a", "1"]);
    ok(d, &["set", "b", "2"]);
    let exact = json(&ok(d, &["getrange", "", "--limit", "2", "--json"]));
    assert_eq!(exact["pairs"].as_array().unwrap().len(), 2);
    assert_eq!(exact["more"], false, "{exact}");
    // A key on the second server is more.
    ok(d, &["set", r"\x90", "3"]);
    let more = json(&ok(d, &["getrange", "", "--limit", "2", "--json"]));
    assert_eq!(more["more"], true, "{more}");
    let all = json(&ok(d, &["getrange", "", "--limit", "3", "--json"]));
    assert_eq!(all["more"], false, "{all}");
    assert_eq!(all["pairs"][2]["key"], r"\x90");
}

#[test]
fn shell_words_take_quotes_dashes_and_skip_a_line_that_is_not_text() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let mut script = b"set k -5\nset \"my key\"s v\nset \"a\\\\\" x\n".to_vec();
    script.extend_from_slice(b"\xff\xfe\n");
    script.extend_from_slice(b"get k\nget \"my keys\"\nget a\\\\\n");
    let mut child = Command::new(env!("CARGO_BIN_EXE_strata"))
        .args(["shell", "--data-dir"])
        .arg(d)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(&script).unwrap();
    let out = child.wait_with_output().unwrap();
    let stdout = String::from_utf8(out.stdout).unwrap();
    let stderr = String::from_utf8(out.stderr).unwrap();
    // The line that is not text fails alone; the lines after it run.
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert_eq!(
        stderr.lines().collect::<Vec<_>>(),
        ["error: a line is not UTF-8 text", "error: 1 line(s) failed"]
    );
    assert_eq!(
        stdout.lines().skip(3).collect::<Vec<_>>(),
        ["`k' is `-5'", "`my keys' is `v'", r"`a\\' is `x'"]
    );
}

#[test]
fn a_ring_larger_than_one_transaction_is_created_and_checked() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    // 250,000 nodes do not fit one transaction (10,000,000 bytes); they are created in
    // chunks, the ring's size last.
    let out = ok(
        d,
        &[
            "workload",
            "cycle",
            "--keys",
            "250000",
            "--transactions",
            "20",
        ],
    );
    assert!(out.contains("ring of 250000 keys intact"), "{out}");
    let check = ok(d, &["workload", "check"]);
    assert!(check.starts_with("ring of 250000 keys intact"), "{check}");
}

#[test]
fn reading_after_a_crash_leaves_the_directory_as_the_crash_left_it() {
    use std::io::BufRead;
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    ok(d, &["recover", "--logs", "2", "--storage", "2"]);
    let mut cycle = Command::new(env!("CARGO_BIN_EXE_strata"))
        .args(["workload", "cycle", "--keys", "30", "--clients", "4"])
        .args(["--transactions", "1000000000", "--print-acks", "--data-dir"])
        .arg(d)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let acks = std::io::BufReader::new(cycle.stdout.take().unwrap());
    let acked: Vec<String> = acks.lines().take(300).map(Result::unwrap).collect();
    cycle.kill().unwrap();
    cycle.wait().unwrap();
    // A crash during a log's roll also leaves its spare segment half prepared (when it lands
    // then is a matter of timing; the file is what it leaves).
    let state = json(&std::fs::read_to_string(d.join("coordinated.json")).unwrap());
    for log in state["logs"].as_array().unwrap() {
        let log_dir = d.join(log["dir"].as_str().unwrap());
        std::fs::write(log_dir.join("spare.zeroed"), vec![0u8; 4096]).unwrap();
    }

    let crashed = common::snapshot(d);
    for args in [
        &["get", "ring/meta/nodes"][..],
        &["getrange", "ring/ack/", "ring/ack0", "--limit", "1000000"],
        &["status"],
        &["workload", "check"],
        &["dump", "--prefix", ""],
        &["check"],
    ] {
        ok(d, args);
        common::assert_unchanged(&crashed, &common::snapshot(d), &format!("strata {args:?}"));
    }
    let stored = ok(
        d,
        &["getrange", "ring/ack/", "ring/ack0", "--limit", "1000000"],
    );
    for line in &acked {
        let mut parts = line.split(' ').skip(1).map(|n| n.parse::<u64>().unwrap());
        let (c, n) = (parts.next().unwrap(), parts.next().unwrap());
        let key = format!("`ring/ack/{c:04}/{n:08}'");
        assert!(stored.contains(&key), "acknowledged {key} not read at rest");
    }
    // The next recovery repairs what the crash left, and sees what the reads saw.
    ok(d, &["recover"]);
    assert_eq!(
        ok(
            d,
            &["getrange", "ring/ack/", "ring/ack0", "--limit", "1000000"]
        ),
        stored
    );
}
