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

use std::path::{Component, Path, PathBuf};
use std::sync::Arc;

use serde::Serialize;
use strata_core::{Blocking, Epoch, Error, ErrorKind, Result, Version};
use strata_tlog::fs::RealFs;
use strata_tlog::{FileLog, FileLogConfig, OpenMode};

use crate::HeldLog;
use crate::held_log::OpenLogs;

use crate::coordinator::{CoordinatedState, Coordination, LogPlace, StateStore};

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

impl Finding {
    /// The error a command that stops at this finding returns: `cause`, the error met when it
    /// is not damage (an I/O error the next try may not meet), else `Corruption` naming the
    /// file under `data_dir` (or the state's place outside it, see [`Finding::in_store`]).
    pub(crate) fn into_error(self, data_dir: &Path, cause: Option<Error>) -> Error {
        let file = if self.file.contains("://") {
            self.file
        } else {
            data_dir.join(&self.file).display().to_string()
        };
        match cause {
            Some(e) if !matches!(e.kind, ErrorKind::Corruption(_)) => e,
            _ => crate::error(ErrorKind::Corruption(format!("{file}: {}", self.problem))),
        }
    }

    /// This finding, naming where `store` keeps the coordinated state when it is about the
    /// state ([`STATE_FILE`]): the findings are made against the state, wherever it lives.
    pub(crate) fn in_store(mut self, store: &dyn StateStore) -> Finding {
        if self.file == STATE_FILE {
            self.file = store.name();
        }
        self
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
pub(crate) fn dir_epoch(name: &str) -> Option<Epoch> {
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
    pub logs: Vec<(String, Option<Version>)>,
    /// Each storage file with its durable version (when it could be read).
    pub storage: Vec<(String, Option<Version>)>,
    /// The version the next recovery would choose: the newest every log holds.
    pub recoverable_version: Option<Version>,
    /// Every inconsistency, in the order found; none means the directory is consistent.
    pub findings: Vec<Finding>,
    /// Each log the state names that a log worker holds, and each storage server a storage
    /// worker holds, as `(dir or file, worker address)`: not read here (a check reads the data
    /// directory alone), so the recoverable version is unknown for such logs, and such a
    /// server's durable version is unknown.
    pub on_workers: Vec<(String, String)>,
}

/// What the logs and storage files of a directory hold, read without writing (see
/// [`read_holdings`]).
pub(crate) struct Holdings {
    /// The logs the state names that opened, with their places.
    pub(crate) logs: Vec<(LogPlace, Arc<dyn HeldLog>)>,
    /// Each storage server's durable version, in order; `None` where its file is unreadable.
    pub(crate) durable: Vec<Option<Version>>,
    /// The newest version every named log holds, when every one of them opened.
    pub(crate) holds: Option<Version>,
    /// Every inconsistency, each with the error behind it when one was met (an I/O error is
    /// not damage: recovery tries again for those).
    pub(crate) findings: Vec<(Finding, Option<Error>)>,
    /// The logs the state names that the opener does not reach (on log workers, for a
    /// reading of the data directory alone): not opened, so `holds` is unknown.
    pub(crate) elsewhere: Vec<LogPlace>,
    /// The storage servers on storage workers the opener does not reach, as
    /// `(file, worker address)`: not read, their `durable` is `None` (not a finding).
    pub(crate) storage_elsewhere: Vec<(String, String)>,
}

/// [`read_holdings`] for a directory read at rest (`strata check`, [`crate::Snapshot`]): the
/// logs opened read-only, the storage files read on blocking threads.
pub(crate) async fn read_holdings_at_rest(
    data_dir: &Path,
    state: &CoordinatedState,
) -> Result<Holdings> {
    read_holdings(
        data_dir,
        Some(state),
        state.storage,
        Blocking::Threads,
        &ReadOnly,
    )
    .await
}

/// What the storage file at `path` holds, read on a blocking thread or inline as `blocking`
/// says; the outer error is the blocking task's.
async fn stored_at(path: PathBuf, blocking: Blocking) -> Result<Result<strata_storage::Stored>> {
    match blocking {
        Blocking::Threads => tokio::task::spawn_blocking(move || strata_storage::stored_at(&path))
            .await
            .map_err(|e| crate::error(ErrorKind::Unavailable(e.to_string()))),
        Blocking::Inline => Ok(strata_storage::stored_at(&path)),
    }
}

/// What the storage servers hold, as [`read_storage`] reads it.
struct StorageRead {
    /// Each server's durable version, in order; `None` where it cannot be read, or is on a
    /// worker the opener does not reach.
    durable: Vec<Option<Version>>,
    /// Those on workers the opener does not reach, as `(file, worker address)`.
    elsewhere: Vec<(String, String)>,
}

/// Each storage server's durable version (`None` where it cannot be read), and what is wrong
/// with them: a file that cannot be read, or that holds another server's shard (storage
/// server `i` of `storage` owns the `i`th range of the key space). A server the state places
/// on a storage worker is asked there, through `opener` (left unread when it does not reach
/// workers); the others are the files of `data_dir`.
async fn read_storage(
    data_dir: &Path,
    state: Option<&CoordinatedState>,
    storage: usize,
    blocking: Blocking,
    opener: &dyn OpenLogs,
) -> Result<Findings<StorageRead>> {
    let mut found: Vec<(Finding, Option<Error>)> = Vec::new();
    let mut durable = Vec::new();
    let mut elsewhere = Vec::new();
    for (i, owned) in crate::split_ranges(storage)?.into_iter().enumerate() {
        let file = format!("storage/{i}.redb");
        let worker = state.and_then(|s| s.storage_worker(i));
        let read = match worker {
            Some(at) => {
                let index = u32::try_from(i).unwrap_or(u32::MAX);
                match opener.stored_on_worker(index, at).await {
                    Some(read) => read.map(|s| strata_storage::Stored {
                        durable: s.durable,
                        shards: s.shards,
                    }),
                    None => {
                        elsewhere.push((file, at.to_owned()));
                        durable.push(None);
                        continue;
                    }
                }
            }
            None => stored_at(data_dir.join(&file), blocking).await?,
        };
        let file = match worker {
            Some(at) => format!("strata://{at}/{file}"),
            None => file,
        };
        // A server the state places on a worker was opened there before the state named it,
        // and its open records its shards: a worker that holds no file for it is on a new or
        // another's directory. Never a server with nothing durable yet: its history may be
        // long popped from the logs.
        let read = match (worker, read) {
            (Some(at), Ok(stored)) if stored.shards.is_none() => {
                found.push((
                    finding(
                        file,
                        format!(
                            "the storage worker at {at} holds no file for storage server {i}, \
                             which the coordinated state places there: start it on the data \
                             directory that holds storage/{i}.redb"
                        ),
                    ),
                    None,
                ));
                durable.push(None);
                continue;
            }
            (_, read) => read,
        };
        match read {
            Ok(stored) => {
                // A file holds the shard it was first opened for: one swapped with another
                // server's, or copied from another directory, would serve the wrong keys.
                if let Some(held) = &stored.shards
                    && held[..] != [owned.clone()]
                {
                    let held: Vec<String> = held.iter().map(ToString::to_string).collect();
                    found.push((
                        finding(
                            file,
                            format!(
                                "holds the shard {}, but storage server {i} owns {owned}",
                                held.join(", ")
                            ),
                        ),
                        None,
                    ));
                }
                durable.push(Some(stored.durable));
            }
            Err(e) => {
                found.push((finding(file, e.to_string()), Some(e)));
                durable.push(None);
            }
        }
    }
    Ok((StorageRead { durable, elsewhere }, found))
}

/// What a read found, with what is wrong with it (each with the error behind it, if any).
type Findings<T> = (T, Vec<(Finding, Option<Error>)>);

/// Reads what the directory holds against its coordinated state `state`: each storage file's
/// durable version and shard (storage server `i` of `storage` owns the `i`th range of the key
/// space), then every log the state names, opened through `logs_from` with the version known
/// committed that it must hold (so a log that looks torn below it is reported, not repaired).
/// Finds logs ending below the recovery version the state recorded, and storage durable above
/// what every log holds. Writes nothing but what opening a log writes. When a
/// storage file cannot be read, the logs are not opened (their `holds` is `None`).
/// Recovery stops at the first finding; `strata check` reports them all. The storage files
/// are read as `blocking` says (inline in the simulation, whose clock must not move while a
/// thread reads).
pub(crate) async fn read_holdings(
    data_dir: &Path,
    state: Option<&CoordinatedState>,
    storage: usize,
    blocking: Blocking,
    logs_from: &dyn OpenLogs,
) -> Result<Holdings> {
    // Storage first: each durable version is known committed, which every log must hold.
    let (storage_read, mut found) =
        read_storage(data_dir, state, storage, blocking, logs_from).await?;
    let StorageRead {
        durable,
        elsewhere: storage_elsewhere,
    } = storage_read;
    let recorded = state.map_or(Version::ZERO, |s| s.recovery_version);
    let committed = durable
        .iter()
        .flatten()
        .copied()
        .fold(recorded, Version::max);
    let named = state.map_or(&[][..], |s| &s.logs[..]);
    let mut logs = Vec::new();
    // With a storage file unreadable, a version it made durable is unknown, and opening a log
    // could take the damaged record of that version for a torn write and drop it: the logs
    // are left unopened until the storage file is sorted out. (A server on a worker not
    // reached is not read, and not a reason: the logs are opened with what is known.)
    let storage_read = durable.iter().filter(|d| d.is_none()).count() == storage_elsewhere.len();
    let (reached, elsewhere): (Vec<&LogPlace>, Vec<&LogPlace>) =
        named.iter().partition(|p| logs_from.reaches(p));
    for place in reached
        .into_iter()
        .filter(|p| storage_read && is_log_place(&p.dir))
    {
        match logs_from
            .open(&data_dir.join(&place.dir), place, committed)
            .await
        {
            Ok(log) => logs.push((place.clone(), log)),
            Err(e) => found.push((finding(place.name(), e.to_string()), Some(e))),
        }
    }
    let holds = (logs.len() == named.len()).then(|| {
        logs.iter()
            .map(|(_, l)| l.last_version())
            .min()
            .unwrap_or(Version::ZERO)
    });
    if let Some(holds) = holds {
        if holds < recorded {
            let ends: Vec<String> = logs
                .iter()
                .map(|(p, l)| format!("{} ends at {}", p.dir, l.last_version()))
                .collect();
            found.push((
                finding(
                    STATE_FILE,
                    format!(
                        "records recovery version {recorded} as committed, but the logs end at \
                         {holds}: {}",
                        ends.join(", ")
                    ),
                ),
                None,
            ));
        }
        // A storage server makes durable only committed versions, which every log holds.
        for (i, version) in durable.iter().enumerate() {
            if let Some(version) = version
                && *version > holds
            {
                found.push((
                    finding(
                        format!("storage/{i}.redb"),
                        format!(
                            "durable at {version}, above {holds}, the newest version every \
                             log holds: it holds versions that were never committed"
                        ),
                    ),
                    None,
                ));
            }
        }
    }
    Ok(Holdings {
        logs,
        durable,
        holds,
        findings: found,
        elsewhere: elsewhere.into_iter().cloned().collect(),
        storage_elsewhere,
    })
}

/// How the tools that only read (`strata check`, a [`crate::Snapshot`]) open logs for
/// [`read_holdings`]: each log must exist and hold the version known committed, and nothing
/// in its directory changes, whatever a crash left there (see [`OpenMode::ReadOnly`]). Logs on
/// log workers are not reached: what a reading of the data directory alone cannot see.
struct ReadOnly;

#[async_trait::async_trait]
impl OpenLogs for ReadOnly {
    async fn open(
        &self,
        dir: &Path,
        place: &LogPlace,
        committed: Version,
    ) -> Result<Arc<dyn HeldLog>> {
        let log = FileLog::open_dir(
            Arc::new(RealFs),
            dir,
            place.id,
            OpenMode::ReadOnly { committed },
            FileLogConfig::default(),
        )?;
        Ok(Arc::new(log))
    }

    fn reaches(&self, place: &LogPlace) -> bool {
        place.at.is_none()
    }
}

/// Reads everything in `data_dir` and reports each inconsistency, changing no data: the
/// coordinated state against the directory ([`check_directory`]), every storage file and every
/// log it names (`read_holdings`), and whether some log holds all the history the next
/// recovery would replay. It first takes the directory's lock ([`crate::owner`], creating
/// `strata.lock`); the logs are opened to be read only (`ReadOnly`), so nothing else is
/// written, whatever a crash left. An error is returned when the directory is missing, in use
/// by another process, or cannot be read at all.
pub async fn verify(data_dir: &Path) -> Result<CheckReport> {
    let _owner = crate::owner::lock_directory(data_dir, false)?;
    let mut report = CheckReport::default();
    let store = Coordination::for_data_dir(data_dir)?;
    let state = match store.read() {
        Ok(state) => state,
        Err(e) => {
            report.findings.push(finding(store.name(), e.to_string()));
            return Ok(report);
        }
    };
    report.findings = check_directory(data_dir, state.as_ref())
        .into_iter()
        .map(|f| f.in_store(&store))
        .collect();
    let Some(state) = state else {
        return Ok(report);
    };
    report.epoch = Some(state.epoch);
    let held = read_holdings_at_rest(data_dir, &state).await?;
    report.storage = (0..state.storage)
        .map(|i| format!("storage/{i}.redb"))
        .zip(held.durable.iter().copied())
        .filter(|(file, _)| !held.storage_elsewhere.iter().any(|(f, _)| f == file))
        .collect();
    report.on_workers = held
        .elsewhere
        .iter()
        .filter_map(|p| Some((p.dir.clone(), p.at.clone()?)))
        .chain(held.storage_elsewhere.iter().cloned())
        .collect();
    report.logs = state
        .logs
        .iter()
        .filter(|p| p.at.is_none())
        .map(|p| {
            let end = held.logs.iter().find(|(q, _)| q == p);
            (p.dir.clone(), end.map(|(_, l)| l.last_version()))
        })
        .collect();
    report.recoverable_version = held.holds;
    report
        .findings
        .extend(held.findings.into_iter().map(|(f, _)| f.in_store(&store)));
    let oldest_durable = held.durable.iter().flatten().copied().min();
    let sources: Vec<(String, Arc<dyn HeldLog>)> = held
        .logs
        .iter()
        .map(|(p, l)| (p.dir.clone(), l.clone()))
        .collect();
    if let (Some(holds), Some(base)) = (held.holds, oldest_durable)
        && !sources.is_empty()
        && let Err(e) =
            crate::recovery::replay::choose_source(&sources, base.min(holds), holds).await
    {
        report.findings.push(finding("logs", e.to_string()));
    }
    for (_, log) in &held.logs {
        log.close();
    }
    Ok(report)
}
