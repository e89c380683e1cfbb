//! The house rule on file size: no source file under `crates/*/src` holds more than 700 lines
//! of code (blank lines, comments and `#[cfg(test)]` modules aside), so each file keeps one job
//! a reader can hold in mind. Function length is clippy's `too_many_lines` (workspace lints).

use std::path::{Path, PathBuf};

const LINES_MAX: usize = 700;

/// Lines of code in `text`: not blank, not a comment, not inside a `#[cfg(test)]` module.
fn lines_of_code(text: &str) -> usize {
    let mut count = 0;
    let mut depth: i64 = 0;
    // The brace depth at which a test module opened, while inside one.
    let mut test_module: Option<i64> = None;
    let mut cfg_test = false;
    let mut block_comment = false;
    for line in text.lines() {
        let code = line.trim();
        if block_comment {
            block_comment = !code.contains("*/");
            continue;
        }
        if code.starts_with("/*") {
            block_comment = !code.contains("*/");
            continue;
        }
        let opens = code.matches('{').count() as i64;
        let closes = code.matches('}').count() as i64;
        if let Some(at) = test_module {
            depth += opens - closes;
            if depth <= at {
                test_module = None;
            }
            continue;
        }
        if code == "#[cfg(test)]" {
            cfg_test = true;
            continue;
        }
        if cfg_test && code.starts_with("mod ") && code.ends_with('{') {
            test_module = Some(depth);
            depth += opens - closes;
            cfg_test = false;
            continue;
        }
        cfg_test = false;
        depth += opens - closes;
        if !code.is_empty() && !code.starts_with("//") {
            count += 1;
        }
    }
    count
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs")
            // A test module kept in its own file.
            && path.file_name().is_some_and(|n| n != "tests.rs")
        {
            out.push(path);
        }
    }
}

#[test]
fn counting_skips_comments_blank_lines_and_test_modules() {
    let text = "//! doc\nfn a() {\n    // note\n\n    b();\n}\n/* block\n still */\n#[cfg(test)]\nmod tests {\n    fn t() {\n        x();\n    }\n}\nfn c() {}\n";
    assert_eq!(lines_of_code(text), 4);
}

#[test]
fn no_source_file_is_over_the_limit() {
    let crates = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let mut files = Vec::new();
    for krate in std::fs::read_dir(&crates).into_iter().flatten().flatten() {
        rust_files(&krate.path().join("src"), &mut files);
    }
    assert!(files.len() > 20, "found only {} source files", files.len());
    let over: Vec<String> = files
        .iter()
        .filter_map(|f| {
            let text = std::fs::read_to_string(f).ok()?;
            let n = lines_of_code(&text);
            (n > LINES_MAX).then(|| format!("{} ({n} lines)", f.display()))
        })
        .collect();
    assert!(over.is_empty(), "over {LINES_MAX} lines of code: {over:?}");
}
