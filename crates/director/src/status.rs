//! `strata status`: the epoch, layout, versions, sizes and health of a cluster, read from a
//! data directory without starting an epoch ([`status()`]) or from a running cluster
//! ([`crate::EmbeddedCluster::status`], the interactive shell's).

use std::path::Path;

use serde::Serialize;
use strata_core::{Result, Version};

use crate::EmbeddedCluster;
use crate::coordinator::{CoordinatedState, Coordination, StateStore};

/// The stage counts of the last recovery (or of the running epoch).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct Layout {
    /// Transaction logs of the current generation.
    pub logs: usize,
    /// Storage servers.
    pub storage: usize,
    /// Resolvers (absent in directories last recovered before the count was kept).
    pub resolvers: Option<usize>,
    /// Commit proxies (absent likewise).
    pub proxies: Option<usize>,
}

/// One log of the current generation.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct LogStatus {
    /// Its directory, relative to the data directory of the process that holds it.
    pub dir: String,
    /// The log worker that holds it (`host:port`); absent for a log in the data directory.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub at: Option<String>,
    /// The newest version it holds; `None` when it could not be read (or, at rest, for a log
    /// on a log worker: a status at rest reads the data directory alone).
    pub holds_up_to: Option<Version>,
    /// Bytes its files take on disk (0 for a log on a log worker: not on this host's disk).
    pub bytes: u64,
}

/// One storage server.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct StorageStatus {
    /// Its file, relative to the data directory; `storage/<i>.redb@HOST:PORT` for a server
    /// a storage worker holds (in the worker's data directory).
    pub file: String,
    /// The newest version it made durable; `None` when it could not be read (or, at rest,
    /// when a storage worker holds it).
    pub durable: Option<Version>,
    /// Bytes its file takes on disk (0 for a server a storage worker holds).
    pub bytes: u64,
}

/// What `strata status` reports.
#[derive(Clone, Debug, Serialize)]
pub struct Status {
    /// The epoch: the running one, or the newest any director started.
    pub epoch: u64,
    /// The coordinated state's generation (bumped by every write of it).
    pub generation: u64,
    /// Whether this was read from a running cluster (else from the files at rest).
    pub running: bool,
    /// How many of each stage.
    pub layout: Layout,
    /// The recovery version the last recovery recorded.
    pub recovery_version: Version,
    /// The newest version a read would see: the newest committed one of a running cluster,
    /// or, at rest, the newest every log holds (what the next recovery keeps).
    pub newest_version: Option<Version>,
    /// The current logs.
    pub logs: Vec<LogStatus>,
    /// The storage servers, in key order.
    pub storage: Vec<StorageStatus>,
    /// Every problem found; none means healthy.
    pub problems: Vec<String>,
}

impl Status {
    /// `healthy`, or how many problems were found.
    pub fn health(&self) -> String {
        match self.problems.len() {
            0 => "healthy".into(),
            n => format!("{n} problem(s)"),
        }
    }
}

/// The status of the cluster in `data_dir`, read at rest: the coordinated state, every log
/// and storage file ([`crate::verify`]'s reading, which changes no data), and their sizes. The
/// directory is taken first; a missing one is an error and is not created. A directory with
/// no coordinated state is `Unavailable`, saying to run `strata recover`.
pub async fn status(data_dir: &Path) -> Result<Status> {
    let _owner = crate::owner::lock_directory(data_dir, false)?;
    let state = read_state(data_dir)?;
    let report = crate::verify(data_dir).await?;
    Ok(Status {
        epoch: state.epoch.0,
        generation: state.generation,
        running: false,
        layout: layout(&state, state.logs.len()),
        recovery_version: state.recovery_version,
        newest_version: report.recoverable_version,
        // In the state's order; a log on a log worker is not read here (see `verify`).
        logs: state
            .logs
            .iter()
            .map(|place| LogStatus {
                dir: place.dir.clone(),
                at: place.at.clone(),
                holds_up_to: report
                    .logs
                    .iter()
                    .find(|(dir, _)| place.at.is_none() && *dir == place.dir)
                    .and_then(|(_, holds)| *holds),
                bytes: match place.at {
                    Some(_) => 0,
                    None => bytes_under(&data_dir.join(&place.dir)),
                },
            })
            .collect(),
        // In key order; a server on a storage worker is not read here (see `verify`).
        storage: (0..state.storage)
            .map(|i| {
                let file = format!("storage/{i}.redb");
                match state.storage_worker(i) {
                    Some(at) => StorageStatus {
                        file: format!("{file}@{at}"),
                        durable: None,
                        bytes: 0,
                    },
                    None => StorageStatus {
                        durable: report
                            .storage
                            .iter()
                            .find(|(f, _)| *f == file)
                            .and_then(|(_, durable)| *durable),
                        bytes: bytes_under(&data_dir.join(&file)),
                        file,
                    },
                }
            })
            .collect(),
        problems: report.findings.iter().map(ToString::to_string).collect(),
    })
}

impl EmbeddedCluster {
    /// The status of this running cluster: its epoch and layout, the newest committed version,
    /// each log's newest version and each storage server's durable one, the sizes on disk, and
    /// the health check's verdict ([`EmbeddedCluster::check_health`]).
    pub async fn status(&self) -> Result<Status> {
        let data_dir = self._owner.dir();
        let state = read_state(data_dir)?;
        let mut problems = Vec::new();
        if let Err(e) = self.check_health().await {
            problems.push(e.to_string());
        }
        let newest_version = match self.pipeline.decorated_sequencer.read_version().await {
            Ok(v) => Some(v),
            Err(e) => {
                problems.push(e.to_string());
                None
            }
        };
        let mut storage = Vec::new();
        for (i, server) in self.storage.iter().enumerate() {
            let file = format!("storage/{i}.redb");
            let durable = match server.durable_version().await {
                Ok(v) => Some(v),
                Err(e) => {
                    problems.push(format!("{file}: {e}"));
                    None
                }
            };
            // A server on a storage worker: its file is in the worker's directory.
            let (file, bytes) = match server.worker() {
                Some(at) => (format!("{file}@{at}"), 0),
                None => (file.clone(), bytes_under(&data_dir.join(&file))),
            };
            storage.push(StorageStatus {
                bytes,
                file,
                durable,
            });
        }
        let logs = state
            .logs
            .iter()
            .zip(&self.logs)
            .map(|(place, log)| LogStatus {
                dir: place.dir.clone(),
                at: place.at.clone(),
                holds_up_to: Some(log.last_version()),
                bytes: match place.at {
                    Some(_) => 0,
                    None => bytes_under(&data_dir.join(&place.dir)),
                },
            })
            .collect();
        Ok(Status {
            epoch: self.epoch.0,
            generation: state.generation,
            running: true,
            // This epoch's recovery wrote the state it runs with.
            layout: layout(&state, self.logs.len()),
            recovery_version: state.recovery_version,
            newest_version,
            logs,
            storage,
            problems,
        })
    }
}

fn read_state(data_dir: &Path) -> Result<CoordinatedState> {
    Coordination::for_data_dir(data_dir)?
        .read()?
        .ok_or_else(|| {
            crate::error(strata_core::ErrorKind::Unavailable(format!(
                "no cluster in {}: run `strata recover` first",
                data_dir.display()
            )))
        })
}

fn layout(state: &CoordinatedState, logs: usize) -> Layout {
    Layout {
        logs,
        storage: state.storage,
        resolvers: state.resolvers,
        proxies: state.proxies,
    }
}

/// Bytes the files at `path` take (a file, or a directory and everything under it); what
/// cannot be read counts as nothing (the problems are the health check's to report).
fn bytes_under(path: &Path) -> u64 {
    let Ok(meta) = std::fs::metadata(path) else {
        return 0;
    };
    if !meta.is_dir() {
        return meta.len();
    }
    std::fs::read_dir(path).map_or(0, |entries| {
        entries
            .flatten()
            .map(|entry| bytes_under(&entry.path()))
            .sum()
    })
}
