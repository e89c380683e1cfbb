//! The data commands — `get`, `set`, `clear`, `getrange`, `clearrange`, `status` — as one-shot
//! commands on a data directory and as lines of the interactive shell.
//!
//! Keys and values are written as FoundationDB writes them: printable ASCII as it is, `\\` for
//! a backslash and `\xNN` for any other byte. At rest, reads and `status` open the directory
//! read-only ([`Snapshot`], [`strata_director::status()`]): no epoch starts and nothing is
//! created. A write recovers the directory under a new epoch (as every command that runs the
//! pipeline does), commits one transaction and stops. In the shell, one running cluster
//! answers every line.

use std::path::{Path, PathBuf};

use bytes::Bytes;
use clap::{Args, Subcommand};
use serde::Serialize;
use strata_core::{Error, ErrorKind, KEY_BYTES_MAX, Key, KeyRange, Stage, VALUE_BYTES_MAX, Value};
use strata_director::{EmbeddedCluster, EmbeddedConfig, Snapshot, Status};

/// Where a data command runs and how it prints.
#[derive(Args, Clone, Debug, Default)]
pub(crate) struct Target {
    /// The data directory [default: ./strata-data].
    #[arg(long)]
    pub(crate) data_dir: Option<PathBuf>,
    /// Print one JSON object instead of text.
    #[arg(long)]
    pub(crate) json: bool,
}

/// The range limit `getrange` prints without `--limit` (FoundationDB's `fdbcli` also shows 25).
const RANGE_LIMIT_DEFAULT: u64 = 25;

/// The data commands. Keys and values use FoundationDB's escaping (`\xNN`, `\\`).
#[derive(Subcommand, Clone, Debug)]
pub(crate) enum DataCommand {
    /// Print the value of KEY.
    ///
    /// On a data directory at rest, the value is read without starting an epoch.
    Get {
        /// The key, e.g. `hello` or `\x01\x02`.
        #[arg(allow_hyphen_values = true)]
        key: String,
        #[command(flatten)]
        target: Target,
    },
    /// Set KEY to VALUE in one transaction.
    ///
    /// On a data directory at rest, the cluster is recovered under a new epoch first.
    Set {
        /// The key (below `\xff`: system keys are not written from here).
        #[arg(allow_hyphen_values = true)]
        key: String,
        /// The value (up to 100,000 bytes).
        #[arg(allow_hyphen_values = true)]
        value: String,
        #[command(flatten)]
        target: Target,
    },
    /// Remove KEY in one transaction.
    Clear {
        /// The key.
        #[arg(allow_hyphen_values = true)]
        key: String,
        #[command(flatten)]
        target: Target,
    },
    /// Print the pairs from BEGIN up to END (not included).
    ///
    /// On a data directory at rest, they are read without starting an epoch.
    Getrange {
        /// The first key of the range.
        #[arg(allow_hyphen_values = true)]
        begin: String,
        /// The end of the range, not included [default: \xff, the end of the user keys].
        #[arg(allow_hyphen_values = true)]
        end: Option<String>,
        /// Pairs to print at most (1 to 1,000,000).
        #[arg(long, default_value_t = RANGE_LIMIT_DEFAULT, value_parser = crate::bounded(1, 1_000_000))]
        limit: u64,
        #[command(flatten)]
        target: Target,
    },
    /// Remove every key from BEGIN up to END (not included) in one transaction.
    Clearrange {
        /// The first key of the range.
        #[arg(allow_hyphen_values = true)]
        begin: String,
        /// The end of the range, not included.
        #[arg(allow_hyphen_values = true)]
        end: String,
        #[command(flatten)]
        target: Target,
    },
    /// Print the epoch, layout, versions, log and storage sizes and health.
    ///
    /// On a data directory at rest, all of it is read without starting an epoch. Exits 0
    /// whatever the health (`strata check` exits 1 on a problem).
    Status {
        #[command(flatten)]
        target: Target,
    },
}

impl DataCommand {
    /// Where and how the command runs.
    pub(crate) fn target(&self) -> &Target {
        match self {
            DataCommand::Get { target, .. }
            | DataCommand::Set { target, .. }
            | DataCommand::Clear { target, .. }
            | DataCommand::Getrange { target, .. }
            | DataCommand::Clearrange { target, .. }
            | DataCommand::Status { target } => target,
        }
    }
}

/// Where a data command reads and writes.
#[derive(Clone, Copy)]
pub(crate) enum Store<'a> {
    /// A data directory at rest: reads through a [`Snapshot`], writes through a cluster
    /// started for the one command.
    AtRest(&'a Path),
    /// A running cluster (the shell's).
    Running(&'a EmbeddedCluster),
}

fn invalid(message: String) -> Error {
    Error::new(Stage::Director, ErrorKind::InvalidRequest(message))
}

/// Reads a key or value (`what`) as written on the command line, at most `limit` bytes.
fn parse_bytes(text: &str, what: &str, limit: usize) -> strata_core::Result<Bytes> {
    let bytes = strata_core::parse_printable(text).ok_or_else(|| {
        invalid(format!(
            "{text:?} is not a {what} as written here: use \\xNN for a byte outside printable \
             ASCII and \\\\ for a backslash"
        ))
    })?;
    if bytes.len() > limit {
        return Err(invalid(format!(
            "the {what} is {} bytes, over the limit of {limit}",
            bytes.len()
        )));
    }
    Ok(Bytes::from(bytes))
}

/// Reads a key as written on the command line.
pub(crate) fn parse_key(text: &str) -> strata_core::Result<Key> {
    parse_bytes(text, "key", KEY_BYTES_MAX)
}

/// Reads a key that is written: below `\xff`, where the system's keys start.
fn parse_user_key(text: &str) -> strata_core::Result<Key> {
    let key = parse_key(text)?;
    if key.first() == Some(&0xff) {
        return Err(invalid(format!(
            "{text} is a system key (from \\xff on): the cluster writes those itself"
        )));
    }
    Ok(key)
}

fn parse_value(text: &str) -> strata_core::Result<Value> {
    parse_bytes(text, "value", VALUE_BYTES_MAX)
}

fn range(begin: &str, end: Option<&str>) -> strata_core::Result<KeyRange> {
    let begin = parse_key(begin)?;
    let end = match end {
        Some(end) => parse_key(end)?,
        None => Bytes::from_static(b"\xff"),
    };
    KeyRange::new(begin.clone(), end.clone()).map_err(|_| {
        invalid(format!(
            "the range is empty: its end {} is not after its begin {}",
            strata_core::printable(&end),
            strata_core::printable(&begin)
        ))
    })
}

/// One pair, printable.
#[derive(Serialize)]
struct Pair {
    key: String,
    value: String,
}

#[derive(Serialize)]
struct Got {
    key: String,
    value: Option<String>,
    version: u64,
}

#[derive(Serialize)]
struct GotRange {
    version: u64,
    pairs: Vec<Pair>,
    more: bool,
}

#[derive(Serialize)]
struct Committed {
    committed_version: u64,
}

/// Runs `command` on `store` and prints what it found. Arguments are checked before anything
/// is opened.
pub(crate) async fn run(command: &DataCommand, store: Store<'_>) -> strata_core::Result<()> {
    let json = command.target().json;
    match command {
        DataCommand::Get { key, .. } => {
            let key = parse_key(key)?;
            let (value, version) = match store {
                Store::AtRest(dir) => {
                    let snapshot = Snapshot::open(dir).await?;
                    let value = snapshot.get(&key).await;
                    let version = snapshot.version();
                    snapshot.close().await;
                    (value?, version)
                }
                Store::Running(cluster) => {
                    let tx = cluster.database().begin();
                    (tx.snapshot_get(&key).await?, tx.read_version().await?)
                }
            };
            let key = strata_core::printable(&key);
            let value = value.map(|v| strata_core::printable(&v));
            if json {
                return crate::print_json(&Got {
                    key,
                    value,
                    version: version.0,
                });
            }
            match value {
                Some(value) => out!("`{key}' is `{value}'"),
                None => out!("`{key}': not found"),
            }
        }
        DataCommand::Getrange {
            begin, end, limit, ..
        } => {
            let range = range(begin, end.as_deref())?;
            let limit = usize::try_from(*limit).unwrap_or(usize::MAX);
            let (pairs, more, version) = read_range(store, &range, limit).await?;
            let pairs: Vec<Pair> = pairs
                .iter()
                .map(|(k, v)| Pair {
                    key: strata_core::printable(k),
                    value: strata_core::printable(v),
                })
                .collect();
            if json {
                return crate::print_json(&GotRange {
                    version: version.0,
                    pairs,
                    more,
                });
            }
            for p in &pairs {
                out!("`{}' is `{}'", p.key, p.value);
            }
            if more {
                out!("(limited to {limit} pairs: --limit N shows more)");
            } else if pairs.is_empty() {
                out!("no keys in the range");
            }
        }
        DataCommand::Set { key, value, .. } => {
            let (key, value) = (parse_user_key(key)?, parse_value(value)?);
            write(store, json, move |tx| tx.set(key.clone(), value.clone())).await?;
        }
        DataCommand::Clear { key, .. } => {
            let key = parse_user_key(key)?;
            write(store, json, move |tx| tx.clear(key.clone())).await?;
        }
        DataCommand::Clearrange { begin, end, .. } => {
            let range = range(begin, Some(end))?;
            // User keys end at \xff; a range ending past it holds system keys.
            if range.end().as_ref() > b"\xff".as_slice() {
                return Err(invalid(
                    "the range reaches system keys (past \\xff): the cluster writes those itself"
                        .into(),
                ));
            }
            write(store, json, move |tx| tx.clear_range(range.clone())).await?;
        }
        DataCommand::Status { .. } => {
            let status = match store {
                Store::AtRest(dir) => strata_director::status(dir).await?,
                Store::Running(cluster) => cluster.status().await?,
            };
            if json {
                return crate::print_json(&status);
            }
            print_status(&status);
        }
    }
    Ok(())
}

/// Up to `limit` pairs of `range`, whether more exist, and the version read at.
async fn read_range(
    store: Store<'_>,
    range: &KeyRange,
    limit: usize,
) -> strata_core::Result<(Vec<(Key, Value)>, bool, strata_core::Version)> {
    match store {
        Store::AtRest(dir) => {
            let snapshot = Snapshot::open(dir).await?;
            let read = snapshot.get_range(range, limit).await;
            let version = snapshot.version();
            snapshot.close().await;
            let (pairs, more) = read?;
            Ok((pairs, more, version))
        }
        Store::Running(cluster) => {
            let tx = cluster.database().begin();
            // One pair past the limit tells whether more exist.
            let mut pairs = tx
                .snapshot_get_range(range, limit.saturating_add(1), false)
                .await?;
            let more = pairs.len() > limit;
            pairs.truncate(limit);
            Ok((pairs, more, tx.read_version().await?))
        }
    }
}

/// Commits one transaction made by `write` and prints its commit version.
async fn write(
    store: Store<'_>,
    json: bool,
    write: impl Fn(&strata_director::Transaction) + Clone,
) -> strata_core::Result<()> {
    let commit = |db: strata_director::Database| async move {
        db.run(|tx| {
            let write = write.clone();
            async move {
                write(&tx);
                Ok(())
            }
        })
        .await
    };
    let ((), version) = match store {
        Store::AtRest(dir) => {
            let config = EmbeddedConfig::default().with_stored_layout(dir)?;
            let cluster = EmbeddedCluster::start(dir, config).await?;
            let committed = commit(cluster.database()).await;
            cluster.stop().await;
            committed?
        }
        Store::Running(cluster) => commit(cluster.database()).await?,
    };
    if json {
        crate::print_json(&Committed {
            committed_version: version.0,
        })
    } else {
        out!("committed at version {}", version.0);
        Ok(())
    }
}

fn print_status(status: &Status) {
    let count = |n: Option<usize>| n.map_or("?".into(), |n| n.to_string());
    let version =
        |v: Option<strata_core::Version>| v.map_or("unreadable".into(), |v| v.0.to_string());
    out!(
        "epoch {} (generation {}), {}",
        status.epoch,
        status.generation,
        if status.running { "running" } else { "at rest" }
    );
    out!(
        "layout: {} log(s), {} storage server(s), {} resolver(s), {} commit proxy(ies)",
        status.layout.logs,
        status.layout.storage,
        count(status.layout.resolvers),
        count(status.layout.proxies)
    );
    let on_workers = !status.running && status.logs.iter().any(|l| l.at.is_some());
    out!(
        "versions: recovered at {}, newest {}",
        status.recovery_version.0,
        match status.newest_version {
            None if on_workers => "unknown (the logs are on log workers)".to_owned(),
            newest => version(newest),
        }
    );
    for log in &status.logs {
        match (&log.at, status.running) {
            (Some(at), false) => out!(
                "  log strata://{at}/{}: on a log worker, not read at rest",
                log.dir
            ),
            (Some(at), true) => out!(
                "  log strata://{at}/{}: holds up to {} (on a log worker)",
                log.dir,
                version(log.holds_up_to)
            ),
            (None, _) => out!(
                "  log {}: holds up to {}, {}",
                log.dir,
                version(log.holds_up_to),
                size(log.bytes)
            ),
        }
    }
    for s in &status.storage {
        out!(
            "  storage {}: durable at {}, {}",
            s.file,
            version(s.durable),
            size(s.bytes)
        );
    }
    out!("health: {}", status.health());
    for p in &status.problems {
        out!("  problem: {p}");
    }
}

/// A size in bytes as a person reads it.
fn size(bytes: u64) -> String {
    const UNITS: [&str; 4] = ["KiB", "MiB", "GiB", "TiB"];
    if bytes < 1024 {
        return format!("{bytes} B");
    }
    let mut value = bytes as f64 / 1024.0;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    format!("{value:.1} {}", UNITS[unit])
}
