//! `strata shell`: the data commands at a prompt, on one cluster kept running across lines,
//! with line editing, history and completion of command names.
//!
//! A line is split into words at spaces; a part in double quotes may hold spaces and joins
//! what touches it (`"my key"s` is `my keys`; `\"` inside is a quote). Backslashes are left
//! for the key escaping (`\xff`, `\\`), so a key is written the same at the prompt as on the
//! command line. A line that is not UTF-8 fails alone. Reading from a pipe works too: each line
//! is run in turn, and the shell exits 1 at the end when a line failed.

use std::path::PathBuf;

use clap::{Args, Parser};
use rustyline::completion::{Completer, Pair};
use rustyline::error::ReadlineError;
use rustyline::highlight::Highlighter;
use rustyline::hint::Hinter;
use rustyline::validate::Validator;
use strata_core::{Error, ErrorKind, Stage};
use strata_director::{EmbeddedCluster, EmbeddedConfig};

use crate::data::{DataCommand, Store};

#[derive(Args)]
pub(crate) struct ShellArgs {
    /// The data directory (created when missing).
    #[arg(long, default_value = "./strata-data")]
    data_dir: PathBuf,
}

/// One line typed at the prompt.
#[derive(Parser)]
#[command(
    no_binary_name = true,
    disable_version_flag = true,
    help_template = "{subcommands}",
    override_usage = "COMMAND [ARGS]"
)]
struct Line {
    #[command(subcommand)]
    command: LineCommand,
}

#[derive(clap::Subcommand)]
enum LineCommand {
    #[command(flatten)]
    Data(DataCommand),
    /// Leave the shell (Ctrl-D does too).
    #[command(alias = "quit")]
    Exit,
}

/// The words a line starts with, for completion.
const COMMANDS: [&str; 9] = [
    "clear",
    "clearrange",
    "exit",
    "get",
    "getrange",
    "help",
    "quit",
    "set",
    "status",
];

/// Completes the command name at the start of a line.
struct Completion;

impl Completer for Completion {
    type Candidate = Pair;

    fn complete(
        &self,
        line: &str,
        pos: usize,
        _: &rustyline::Context<'_>,
    ) -> rustyline::Result<(usize, Vec<Pair>)> {
        let typed = &line[..pos];
        if typed.contains(char::is_whitespace) {
            return Ok((pos, Vec::new()));
        }
        let found = COMMANDS
            .iter()
            .filter(|c| c.starts_with(typed))
            .map(|c| Pair {
                display: (*c).to_owned(),
                replacement: format!("{c} "),
            })
            .collect();
        Ok((0, found))
    }
}

impl Hinter for Completion {
    type Hint = String;
}
impl Highlighter for Completion {}
impl Validator for Completion {}
impl rustyline::Helper for Completion {}

fn invalid(message: String) -> Error {
    Error::new(Stage::Director, ErrorKind::InvalidRequest(message))
}

/// Splits a line into words (see the module docs); an unclosed quote is an error.
pub(crate) fn words(line: &str) -> strata_core::Result<Vec<String>> {
    let mut words = Vec::new();
    let mut chars = line.chars().peekable();
    loop {
        while chars.next_if(|c| c.is_whitespace()).is_some() {}
        if chars.peek().is_none() {
            return Ok(words);
        }
        // A word runs to the next space outside quotes; quoted parts join what is around
        // them (`"my key"s` is `my keys`), as in a POSIX shell.
        let mut word = String::new();
        while let Some(c) = chars.next_if(|c| !c.is_whitespace()) {
            if c != '"' {
                word.push(c);
                continue;
            }
            loop {
                match chars.next() {
                    None => return Err(invalid("a quote is not closed".into())),
                    Some('"') => break,
                    // `\"` is a quote; `\\` stays as it is, for the key escaping, so that a
                    // word may end with an escaped backslash (`"a\\"`).
                    Some('\\') => match chars.next_if(|c| *c == '"' || *c == '\\') {
                        Some('"') => word.push('"'),
                        Some(_) => word.push_str("\\\\"),
                        None => word.push('\\'),
                    },
                    Some(c) => word.push(c),
                }
            }
        }
        words.push(word);
    }
}

/// Runs the shell until `exit` or the end of input.
pub(crate) async fn run(args: ShellArgs) -> strata_core::Result<()> {
    let config = EmbeddedConfig::default().with_stored_layout(&args.data_dir)?;
    let cluster = EmbeddedCluster::start(&args.data_dir, config).await?;
    let result = prompt(&cluster, &args.data_dir).await;
    cluster.stop().await;
    result
}

async fn prompt(cluster: &EmbeddedCluster, dir: &std::path::Path) -> strata_core::Result<()> {
    let mut editor = rustyline::Editor::<Completion, rustyline::history::DefaultHistory>::new()
        .map_err(|e| invalid(format!("cannot read the terminal: {e}")))?;
    editor.set_helper(Some(Completion));
    let interactive = std::io::IsTerminal::is_terminal(&std::io::stdin());
    if interactive {
        out!(
            "{} at epoch {}; `help` lists the commands, `exit` or Ctrl-D leaves",
            dir.display(),
            cluster.epoch().0
        );
    }
    let mut failed = 0u64;
    loop {
        let line = match editor.readline("strata> ") {
            Ok(line) => line,
            // Ctrl-C drops the line being typed, as a shell does.
            Err(ReadlineError::Interrupted) => continue,
            Err(ReadlineError::Eof) => break,
            // A line that is not UTF-8 is that line's error; the next lines still run.
            Err(ReadlineError::Io(e)) if e.kind() == std::io::ErrorKind::InvalidData => {
                failed += 1;
                eprintln!("error: a line is not UTF-8 text");
                continue;
            }
            Err(e) => return Err(invalid(format!("cannot read a line: {e}"))),
        };
        if line.trim().is_empty() {
            continue;
        }
        let _ = editor.add_history_entry(line.as_str());
        match one_line(cluster, &line).await {
            Ok(true) => {}
            Ok(false) => break,
            Err(e) => {
                failed += 1;
                eprintln!("error: {}", crate::user_message(&e));
            }
        }
    }
    if failed > 0 && !interactive {
        return Err(invalid(format!("{failed} line(s) failed")));
    }
    Ok(())
}

/// Runs one line; `false` when it asks to leave.
async fn one_line(cluster: &EmbeddedCluster, line: &str) -> strata_core::Result<bool> {
    let words = words(line)?;
    let parsed = match Line::try_parse_from(&words) {
        Ok(parsed) => parsed,
        Err(e) => {
            use clap::error::ErrorKind as Clap;
            return match e.kind() {
                // `help` and `--help` print, and are not failures.
                Clap::DisplayHelp | Clap::DisplayHelpOnMissingArgumentOrSubcommand => {
                    out!("{}", e.render().to_string().trim_end());
                    Ok(true)
                }
                // clap's message without its usage and `--help` advice, on one line.
                _ => Err(invalid(
                    e.render()
                        .to_string()
                        .lines()
                        .map(str::trim)
                        .take_while(|l| !l.starts_with("Usage:"))
                        .filter(|l| !l.is_empty())
                        .collect::<Vec<_>>()
                        .join(" ")
                        .trim_start_matches("error: ")
                        .to_owned(),
                )),
            };
        }
    };
    match parsed.command {
        LineCommand::Exit => Ok(false),
        LineCommand::Data(command) => {
            if command.target().data_dir.is_some() {
                return Err(invalid(
                    "the shell has its data directory open: --data-dir is for the one-shot \
                     commands"
                        .into(),
                ));
            }
            crate::data::run(&command, Store::Running(cluster)).await?;
            Ok(true)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::words;

    #[test]
    fn words_split_at_spaces_and_quotes_keep_them() {
        assert_eq!(
            words(r#"  set "a key" \xff\x00 "say \"hi\"" "#).ok(),
            Some(vec![
                "set".to_owned(),
                "a key".to_owned(),
                r"\xff\x00".to_owned(),
                r#"say "hi""#.to_owned()
            ])
        );
        assert_eq!(words("").ok(), Some(Vec::new()));
        // Quotes join what touches them; an escaped backslash may end a quoted word.
        assert_eq!(
            words(r#"set "my key"s "a\\" x"#).ok(),
            Some(vec![
                "set".to_owned(),
                "my keys".to_owned(),
                r"a\\".to_owned(),
                "x".to_owned()
            ])
        );
        assert!(words(r#"get "open"#).is_err());
    }
}
