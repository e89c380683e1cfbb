//! The cross-checks of a data directory against its coordinated state, made before recovery
//! writes anything (and by `strata check`, which writes nothing at all).
//!
//! The coordinated state is small and hand-editable; trusted blindly, a lost or edited
//! `coordinated.json` made recovery read a directory full of data as a new cluster, or create
//! a new epoch's log over an old one. Each finding names the file and what disagrees.
//!
//! The limit: a state edited to look exactly like a first recovery that never finished (no
//! logs, no layout, recovery version 0), with the log directories deleted, over storage files
//! that never made anything durable, is what such a recovery leaves; it is taken for one, and
//! the next recovery starts an empty cluster. Everything the cluster held was in those logs.

use std::path::{Component, Path};

use serde::Serialize;
use strata_core::Epoch;

use crate::coordinator::CoordinatedState;

/// The coordinated state's file, relative to the data directory.
pub const STATE_FILE: &str = "coordinated.json";

/// Bytes of a log segment's header: a segment no longer than this holds no record.
const SEGMENT_HEADER_BYTES: u64 = 32;

/// One inconsistency: the file (relative to the data directory) and what is wrong with it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Finding {
    /// The file or directory, relative to the data directory.
    pub file: String,
    /// What disagrees.
    pub problem: String,
}

impl std::fmt::Display for Finding {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.file, self.problem)
    }
}

fn finding(file: impl Into<String>, problem: impl Into<String>) -> Finding {
    Finding {
        file: file.into(),
        problem: problem.into(),
    }
}

/// The log directories under `logs/`, by name, sorted.
fn log_dirs(data_dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(data_dir.join("logs"))
        .into_iter()
        .flatten()
        .flatten()
        .filter(|e| e.path().is_dir())
        .filter_map(|e| e.file_name().into_string().ok())
        .collect();
    names.sort();
    names
}

/// The log directories that hold at least one record (a segment longer than its header).
fn logs_with_records(data_dir: &Path) -> Vec<String> {
    log_dirs(data_dir)
        .into_iter()
        .filter(|name| {
            std::fs::read_dir(data_dir.join("logs").join(name))
                .into_iter()
                .flatten()
                .flatten()
                .any(|e| {
                    e.path().extension().is_some_and(|x| x == "seg")
                        && e.metadata().is_ok_and(|m| m.len() > SEGMENT_HEADER_BYTES)
                })
        })
        .map(|name| format!("logs/{name}"))
        .collect()
}

/// The storage files under `storage/`.
fn storage_files(data_dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(data_dir.join("storage"))
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| e.file_name().into_string().ok())
        .filter(|n| n.ends_with(".redb"))
        .map(|n| format!("storage/{n}"))
        .collect();
    names.sort();
    names
}

/// The epoch a log directory named `<epoch>-<n>` belongs to.
fn dir_epoch(name: &str) -> Option<Epoch> {
    let (epoch, n) = name.split_once('-')?;
    n.parse::<u64>().ok()?;
    epoch.parse().ok().map(Epoch)
}

/// Whether `dir` is `logs/<name>` with `name` one plain path component: the only place a
/// log of this data directory may be. Anything else (absolute, `..`, deeper) would make
/// recovery write outside the data directory.
pub fn is_log_place(dir: &str) -> bool {
    let parts: Vec<Component<'_>> = Path::new(dir).components().collect();
    matches!(
        parts.as_slice(),
        [Component::Normal(logs), Component::Normal(_)] if *logs == "logs"
    )
}

/// Checks the coordinated state (`None`: there is none) against the directory, reading only.
/// Returns every inconsistency found; none means recovery may go on.
pub fn check_directory(data_dir: &Path, state: Option<&CoordinatedState>) -> Vec<Finding> {
    let mut found = Vec::new();
    let Some(state) = state else {
        // No state: a new cluster, unless the directory already holds data.
        let mut data = logs_with_records(data_dir);
        data.extend(storage_files(data_dir));
        if !data.is_empty() {
            found.push(finding(
                STATE_FILE,
                format!(
                    "missing, but the directory holds data ({}): it is not a new cluster",
                    data.join(", ")
                ),
            ));
        }
        return found;
    };
    if state.epoch.0 == u64::MAX {
        found.push(finding(
            STATE_FILE,
            format!("epoch {} cannot be followed by another", state.epoch),
        ));
    }
    let mut seen: Vec<&str> = Vec::new();
    for place in &state.logs {
        if !is_log_place(&place.dir) {
            found.push(finding(
                STATE_FILE,
                format!(
                    "names log directory {:?}, which is not a directory under logs/",
                    place.dir
                ),
            ));
        } else if seen.contains(&place.dir.as_str()) {
            found.push(finding(
                STATE_FILE,
                format!("names log directory {} twice", place.dir),
            ));
        }
        seen.push(&place.dir);
    }
    for name in log_dirs(data_dir) {
        if let Some(epoch) = dir_epoch(&name)
            && epoch > state.epoch
        {
            found.push(finding(
                format!("logs/{name}"),
                format!(
                    "belongs to {epoch}, newer than the coordinated state's {}",
                    state.epoch
                ),
            ));
        }
    }
    for file in storage_files(data_dir) {
        let index = file
            .strip_prefix("storage/")
            .and_then(|n| n.strip_suffix(".redb"))
            .and_then(|n| n.parse::<usize>().ok());
        if index.is_none_or(|i| i >= state.storage) {
            found.push(finding(
                file,
                format!(
                    "is not one of the {} storage servers the coordinated state names",
                    state.storage
                ),
            ));
        }
    }
    if state.logs.is_empty() {
        // Only a cluster whose first recovery never completed names no logs; such a recovery
        // leaves at most empty logs behind, and records nothing about its layout.
        let with_records = logs_with_records(data_dir);
        if !with_records.is_empty() {
            found.push(finding(
                STATE_FILE,
                format!(
                    "names no logs, but {} hold records",
                    with_records.join(", ")
                ),
            ));
        } else if state.resolvers.is_some() || state.recovery_version.0 > 0 {
            found.push(finding(
                STATE_FILE,
                "names no logs, but records a completed recovery",
            ));
        }
    }
    found
}

/// What `strata check` found: the directory's summary and every inconsistency.
#[derive(Clone, Debug, Default, Serialize)]
pub struct CheckReport {
    /// The epoch the coordinated state names, if there is one.
    pub epoch: Option<Epoch>,
    /// Each log the state names, with the newest version it holds (when it could be read).
    pub logs: Vec<(String, Option<strata_core::Version>)>,
    /// Each storage file with its durable version (when it could be read).
    pub storage: Vec<(String, Option<strata_core::Version>)>,
    /// The version the next recovery would choose: the newest every log holds.
    pub recoverable_version: Option<strata_core::Version>,
    /// Every inconsistency, in the order found; none means the directory is consistent.
    pub findings: Vec<Finding>,
}

/// Reads everything in `data_dir` and reports each inconsistency, changing nothing: the
/// coordinated state against the directory ([`check_directory`]), every log it names (opened
/// and scanned whole), every storage file (opened, its durable version read), the storage
/// versions against what the logs hold, and whether some log holds all the history the next
/// recovery would replay. (Opening a log repairs a torn write at its very end, as any open
/// does; nothing else is written.) An error is returned only when the directory cannot be read
/// at all.
pub async fn verify(data_dir: &Path) -> strata_core::Result<CheckReport> {
    use std::sync::Arc;

    use strata_core::{ErrorKind, Version};
    use strata_tlog::fs::RealFs;
    use strata_tlog::{FileLog, FileLogConfig, OpenMode};

    use crate::coordinator::{FileStateStore, StateStore};

    if !data_dir.is_dir() {
        return Err(crate::error(ErrorKind::InvalidRequest(format!(
            "{} is not a data directory",
            data_dir.display()
        ))));
    }
    let mut report = CheckReport::default();
    let state = match FileStateStore::new(data_dir).read() {
        Ok(state) => state,
        Err(e) => {
            report.findings.push(finding(STATE_FILE, e.to_string()));
            return Ok(report);
        }
    };
    report.findings = check_directory(data_dir, state.as_ref());
    let Some(state) = state else {
        return Ok(report);
    };
    report.epoch = Some(state.epoch);

    // Storage first: each durable version is known committed, so a log that looks torn below
    // one is damaged and must not be repaired by opening it (`OpenMode::Existing`).
    let mut durable = Vec::new();
    for i in 0..state.storage {
        let file = format!("storage/{i}.redb");
        let path = data_dir.join(&file);
        let read = tokio::task::spawn_blocking(move || strata_storage::stored_at(&path))
            .await
            .map_err(|e| crate::error(ErrorKind::Unavailable(e.to_string())));
        match read {
            Ok(Ok(stored)) => {
                let owned = crate::split_ranges(state.storage)
                    .ok()
                    .and_then(|r| r.get(i).cloned());
                if let (Some(held), Some(owned)) = (&stored.shards, owned)
                    && held[..] != [owned.clone()]
                {
                    report.findings.push(finding(
                        file.clone(),
                        format!(
                            "holds the shard {}, but storage server {i} owns {owned}",
                            held.iter()
                                .map(ToString::to_string)
                                .collect::<Vec<_>>()
                                .join(", ")
                        ),
                    ));
                }
                report.storage.push((file, Some(stored.durable)));
                durable.push(stored.durable);
            }
            Ok(Err(e)) | Err(e) => {
                report.storage.push((file.clone(), None));
                report.findings.push(finding(file, e.to_string()));
            }
        }
    }
    let oldest_durable = durable.iter().copied().min();
    let committed = durable
        .iter()
        .copied()
        .fold(state.recovery_version, Version::max);
    let mut logs = Vec::new();
    for place in state.logs.iter().filter(|p| is_log_place(&p.dir)) {
        match FileLog::open_dir(
            Arc::new(RealFs),
            &data_dir.join(&place.dir),
            place.id,
            OpenMode::Existing { committed },
            FileLogConfig::default(),
        ) {
            Ok(log) => {
                report
                    .logs
                    .push((place.dir.clone(), Some(log.last_version())));
                logs.push((place.dir.clone(), Arc::new(log)));
            }
            Err(e) => {
                report.logs.push((place.dir.clone(), None));
                report
                    .findings
                    .push(finding(place.dir.clone(), e.to_string()));
            }
        }
    }
    let holds = (logs.len() == state.logs.len()).then(|| {
        logs.iter()
            .map(|(_, l)| l.last_version())
            .min()
            .unwrap_or(Version::ZERO)
    });
    report.recoverable_version = holds;
    if let Some(holds) = holds {
        if holds < state.recovery_version {
            report.findings.push(finding(
                STATE_FILE,
                format!(
                    "records recovery version {} as committed, but the logs end at {holds}",
                    state.recovery_version
                ),
            ));
        }
        for (file, version) in &report.storage {
            if let Some(version) = version
                && *version > holds
            {
                report.findings.push(finding(
                    file.clone(),
                    format!(
                        "durable at {version}, above {holds}, the newest version every log \
                         holds: it holds versions that were never committed"
                    ),
                ));
            }
        }
    }
    if let (Some(holds), Some(base)) = (holds, oldest_durable)
        && !logs.is_empty()
        && let Err(e) = crate::replay::choose_source(&logs, base.min(holds), holds).await
    {
        report.findings.push(finding("logs", e.to_string()));
    }
    for (_, log) in &logs {
        log.close();
    }
    Ok(report)
}
