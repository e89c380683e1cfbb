//! Running the `strata` binary, for the tests that need it built (they have the `cli`
//! feature; `common/mod.rs` is shared by tests that do not).

// Each test binary uses its own subset of these helpers.
#![allow(dead_code)]

use std::path::Path;
use std::process::{Command, Output};

/// `strata ARGS --data-dir DIR`, run to its end.
pub fn strata(dir: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_strata"))
        .args(args)
        .arg("--data-dir")
        .arg(dir)
        .output()
        .expect("strata runs")
}

/// [`strata`], which must succeed; its standard output.
pub fn ok(dir: &Path, args: &[&str]) -> String {
    let out = strata(dir, args);
    assert!(
        out.status.success(),
        "strata {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("UTF-8 output")
}
