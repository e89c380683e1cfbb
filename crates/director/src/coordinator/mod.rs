//! The coordinated state: the current epoch and where the logs of the last generation are,
//! kept in a small store written atomically with a compare-and-swap on a generation number, so
//! two coordinators can never both believe they own the same epoch.
//!
//! Two stores: a file in the data directory ([`FileStateStore`], the embedded default) and a
//! key in etcd ([`etcd::EtcdStateStore`]). A data directory whose cluster file
//! (`DATA_DIR/strata.cluster`) names etcd keeps its state there; [`Coordination::for_data_dir`]
//! opens whichever the directory uses.

pub mod etcd;

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use strata_core::{Epoch, Error, ErrorKind, LogId, Result, Stage, Version};

/// The format of the coordinated state file this build writes and reads.
pub const STATE_FORMAT: u32 = 1;

fn error(kind: ErrorKind) -> Error {
    Error::new(Stage::Coordinator, kind)
}

fn io(e: std::io::Error) -> Error {
    Error::io(Stage::Coordinator, e)
}

/// An I/O error on `path`, naming it: a user reads which file failed, not only why.
fn io_at(path: &Path, e: std::io::Error) -> Error {
    io(std::io::Error::new(
        e.kind(),
        format!("{}: {e}", path.display()),
    ))
}

/// Where one log of a generation lives.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogPlace {
    /// The log's id.
    pub id: LogId,
    /// Its directory, relative to the data directory of the process that holds it.
    pub dir: String,
    /// The log worker that holds it (`host:port`, as it registered); `None`: the director's
    /// own data directory.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub at: Option<String>,
}

impl LogPlace {
    /// How findings and errors name it: its directory, and for a log on a worker
    /// `strata://ADDRESS/DIR`.
    pub fn name(&self) -> String {
        match &self.at {
            Some(at) => format!("strata://{at}/{}", self.dir),
            None => self.dir.clone(),
        }
    }
}

/// What the coordinator keeps between recoveries.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CoordinatedState {
    /// Format of this record.
    pub format: u32,
    /// Bumped by every write; a write names the generation it read (compare-and-swap).
    pub generation: u64,
    /// The newest epoch any director started.
    pub epoch: Epoch,
    /// The logs of the last generation that completed its recruitment.
    pub logs: Vec<LogPlace>,
    /// How many storage servers the data directory has (their shards follow from it).
    pub storage: usize,
    /// The recovery version of the last recovery that wrote its logs here.
    pub recovery_version: Version,
    /// How many resolvers the last recovery ran (absent in states written before it was kept).
    #[serde(default)]
    pub resolvers: Option<usize>,
    /// How many commit proxies the last recovery ran (absent in older states).
    #[serde(default)]
    pub proxies: Option<usize>,
    /// Where the newest epoch's stages are served to other processes (`host:port`): how a
    /// client that knows the cluster by its cluster file finds it. Absent when the process
    /// that recovered it serves no one (`strata serve` without `--listen`, a library's
    /// embedded cluster).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub served_at: Option<String>,
    /// Where the cluster's logs and storage live, `HOST:PATH`, when the state is kept outside
    /// the data directory (in etcd): the store stamps it on every write and refuses to read
    /// the state for another directory, so a copy of the directory elsewhere, or another
    /// cluster's, can never recover this cluster from what it holds. Absent for a state kept
    /// in the data directory itself.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub home: Option<String>,
    /// The SHA-256 (hex) of the secret token of the director that claimed `epoch`: a log
    /// worker takes an order for a new epoch only when it carries the token this digest is
    /// of, so no other process that reaches the worker can take, lock or pop its logs.
    /// Absent in states written before it was kept.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token_digest: Option<String>,
    /// Where each storage server lives, by index: the address of the storage worker that
    /// holds its file, or `None` for a file of the data directory (`storage/<i>.redb`). A
    /// storage server is placed when its file is created and stays there. Empty (as in states
    /// written before storage workers): every one is in the data directory.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub storage_at: Vec<Option<String>>,
}

impl CoordinatedState {
    /// The storage worker that holds storage server `index`, if one does.
    pub fn storage_worker(&self, index: usize) -> Option<&str> {
        self.storage_at.get(index).and_then(Option::as_deref)
    }
}

/// A store for the coordinated state. The embedded one is [`FileStateStore`]; clusters spread
/// over machines would put one behind a consensus service.
pub trait StateStore: Send + Sync {
    /// The stored state, `None` for a cluster never recovered.
    fn read(&self) -> Result<Option<CoordinatedState>>;

    /// Stores `new` (with `generation` = `expected` + 1) only if the stored generation is still
    /// `expected` (0 when nothing is stored). Otherwise `Fenced`: another coordinator won.
    fn compare_and_swap(&self, expected: u64, new: CoordinatedState) -> Result<CoordinatedState>;

    /// The worker processes registered with this store, that a recovery may recruit (see
    /// [`crate::workers`]), in the order of their addresses: none for a store in a data
    /// directory, which no process on another host can reach.
    fn workers(&self) -> Result<Vec<crate::workers::WorkerPlace>> {
        Ok(Vec::new())
    }

    /// Where the state is, as findings about it name it: relative to the data directory
    /// (`coordinated.json`, the default), or a URL outside it (`etcd://HOST:PORT/KEY`).
    fn name(&self) -> String {
        crate::check::STATE_FILE.to_owned()
    }
}

/// The store a cluster's coordinated state lives in (see the module docs).
#[derive(Debug)]
pub enum Coordination {
    /// In a data directory.
    File(FileStateStore),
    /// In etcd (boxed: the store holds its runtime and client).
    Etcd(Box<etcd::EtcdStateStore>),
}

impl Coordination {
    /// The store of the cluster in `data_dir`: etcd when the directory's cluster file names
    /// it, else the directory itself.
    ///
    /// Errors: the cluster file's, when it cannot be read or parsed.
    pub fn for_data_dir(data_dir: &Path) -> Result<Coordination> {
        let path = data_dir.join(crate::cluster_file::CLUSTER_FILE_NAME);
        match std::fs::metadata(&path) {
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Ok(Coordination::File(FileStateStore::new(data_dir)));
            }
            Err(e) => return Err(io_at(&path, e)),
        }
        let file = crate::cluster_file::ClusterFile::read(&path)?;
        match file.place {
            // The directory's own state, wherever the file says the directory is (`serve`
            // checks that it names this one).
            crate::cluster_file::StatePlace::Directory(_) => {
                Ok(Coordination::File(FileStateStore::new(data_dir)))
            }
            crate::cluster_file::StatePlace::Etcd(endpoints) => Ok(Coordination::Etcd(Box::new(
                etcd::EtcdStateStore::new(&endpoints, &file.name, file.id.as_str())?
                    .with_home(etcd::home_of(data_dir)?),
            ))),
        }
    }

    /// Makes this process the cluster's only director, for a store that needs it: etcd, where
    /// directors on other hosts may share the state (waits while another one's lease lives,
    /// and gives up when etcd cannot be reached for `wait`). `None` for a data directory,
    /// which the process already holds locked.
    pub async fn lead(&self, holder: &str, wait: Duration) -> Result<Option<etcd::DirectorLease>> {
        match self {
            Coordination::File(_) => Ok(None),
            Coordination::Etcd(store) => store.lead(holder, wait).await.map(Some),
        }
    }
}

impl StateStore for Coordination {
    fn read(&self) -> Result<Option<CoordinatedState>> {
        match self {
            Coordination::File(store) => store.read(),
            Coordination::Etcd(store) => store.read(),
        }
    }

    fn compare_and_swap(&self, expected: u64, new: CoordinatedState) -> Result<CoordinatedState> {
        match self {
            Coordination::File(store) => store.compare_and_swap(expected, new),
            Coordination::Etcd(store) => store.compare_and_swap(expected, new),
        }
    }

    fn name(&self) -> String {
        match self {
            Coordination::File(store) => store.name(),
            Coordination::Etcd(store) => store.name(),
        }
    }

    fn workers(&self) -> Result<Vec<crate::workers::WorkerPlace>> {
        match self {
            Coordination::File(store) => store.workers(),
            Coordination::Etcd(store) => store.workers(),
        }
    }
}

/// The coordinated state in a file of the data directory: written to a temporary file, synced,
/// renamed over the old one, and the directory synced; the compare-and-swap holds an exclusive
/// lock on a companion lock file, so it is atomic across processes too.
#[derive(Debug)]
pub struct FileStateStore {
    dir: PathBuf,
    lock_wait: Duration,
}

/// How long a compare-and-swap waits for another process's to finish by default: one takes a
/// few milliseconds, so a lock held this long belongs to a process that is stuck or stopped.
pub const STATE_LOCK_WAIT: Duration = Duration::from_secs(10);

impl FileStateStore {
    /// The store in `dir` (the data directory).
    pub fn new(dir: &Path) -> FileStateStore {
        FileStateStore {
            dir: dir.to_owned(),
            lock_wait: STATE_LOCK_WAIT,
        }
    }

    /// This store, waiting at most `wait` for the lock another process holds.
    pub fn with_lock_wait(mut self, wait: Duration) -> FileStateStore {
        self.lock_wait = wait;
        self
    }

    /// Takes the exclusive lock on `coordinated.lock`, waiting at most the store's bound; then
    /// writes this process's id into it, so that a process kept waiting can name the holder.
    fn lock(&self) -> Result<File> {
        let path = self.dir.join("coordinated.lock");
        let mut lock = OpenOptions::new()
            .create(true)
            .truncate(false)
            .read(true)
            .write(true)
            .open(&path)
            .map_err(|e| io_at(&path, e))?;
        let started = Instant::now();
        loop {
            match lock.try_lock() {
                Ok(()) => break,
                Err(std::fs::TryLockError::WouldBlock) if started.elapsed() < self.lock_wait => {
                    std::thread::sleep(Duration::from_millis(10));
                }
                Err(std::fs::TryLockError::WouldBlock) => {
                    let holder = std::fs::read_to_string(&path).unwrap_or_default();
                    let holder = holder.trim();
                    // `Timeout`, not `Unavailable`: recovery gives up at once on it (another
                    // attempt would only wait again), and on `Unavailable` tries again.
                    return Err(error(ErrorKind::Timeout {
                        what: format!(
                            "{}, held by {}: is another strata command running on this \
                             directory, or stopped?",
                            path.display(),
                            if holder.is_empty() {
                                "another process".to_owned()
                            } else {
                                format!("process {holder}")
                            },
                        ),
                        after_ms: u64::try_from(self.lock_wait.as_millis()).unwrap_or(u64::MAX),
                    }));
                }
                Err(std::fs::TryLockError::Error(e)) => return Err(io_at(&path, e)),
            }
        }
        lock.set_len(0)
            .and_then(|()| lock.write_all(format!("{}\n", std::process::id()).as_bytes()))
            .map_err(|e| io_at(&path, e))?;
        Ok(lock)
    }

    fn path(&self) -> PathBuf {
        self.dir.join("coordinated.json")
    }

    fn read_unlocked(&self) -> Result<Option<CoordinatedState>> {
        let bytes = match std::fs::read(self.path()) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(io_at(&self.path(), e)),
        };
        let state: CoordinatedState = serde_json::from_slice(&bytes).map_err(|e| {
            error(ErrorKind::Corruption(format!(
                "{}: {e}",
                self.path().display()
            )))
        })?;
        if state.format != STATE_FORMAT {
            return Err(error(ErrorKind::Corruption(format!(
                "{}: unsupported format {} (this build reads {STATE_FORMAT})",
                self.path().display(),
                state.format
            ))));
        }
        Ok(Some(state))
    }
}

impl StateStore for FileStateStore {
    fn read(&self) -> Result<Option<CoordinatedState>> {
        self.read_unlocked()
    }

    fn compare_and_swap(
        &self,
        expected: u64,
        mut new: CoordinatedState,
    ) -> Result<CoordinatedState> {
        std::fs::create_dir_all(&self.dir).map_err(|e| io_at(&self.dir, e))?;
        let lock = self.lock()?;
        let stored = self.read_unlocked()?;
        if stored.as_ref().map_or(0, |s| s.generation) != expected {
            // Another coordinator wrote since this one read: it owns the epoch it wrote.
            return Err(error(ErrorKind::Fenced {
                request: new.epoch,
                current: stored.map_or(Epoch(0), |s| s.epoch),
            }));
        }
        new.format = STATE_FORMAT;
        new.generation = expected + 1;
        let bytes = serde_json::to_vec_pretty(&new)
            .map_err(|e| error(ErrorKind::InvalidRequest(e.to_string())))?;
        let tmp = self.dir.join("coordinated.json.tmp");
        File::create(&tmp)
            .and_then(|mut f| f.write_all(&bytes).and_then(|()| f.sync_all()))
            .map_err(|e| io_at(&tmp, e))?;
        std::fs::rename(&tmp, self.path()).map_err(|e| io_at(&self.path(), e))?;
        File::open(&self.dir)
            .and_then(|d| d.sync_all())
            .map_err(|e| io_at(&self.dir, e))?;
        lock.unlock()
            .map_err(|e| io_at(&self.dir.join("coordinated.lock"), e))?;
        Ok(new)
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A state of `epoch` with one log, named after the epoch (shared with the etcd store's
    /// tests).
    pub(crate) fn state(epoch: u64) -> CoordinatedState {
        CoordinatedState {
            format: STATE_FORMAT,
            generation: 0,
            epoch: Epoch(epoch),
            logs: vec![LogPlace {
                id: LogId(0),
                dir: format!("logs/{epoch}-0"),
                at: None,
            }],
            storage: 1,
            recovery_version: Version(0),
            resolvers: Some(1),
            proxies: Some(1),
            served_at: None,
            home: None,
            token_digest: None,
            storage_at: Vec::new(),
        }
    }

    #[test]
    fn compare_and_swap_lets_one_writer_win_per_generation() {
        let dir = tempfile::tempdir().unwrap();
        let store = FileStateStore::new(dir.path());
        assert_eq!(store.read().unwrap(), None);
        let first = store.compare_and_swap(0, state(1)).unwrap();
        assert_eq!(first.generation, 1);
        // A second coordinator that also read generation 0 loses, told the epoch that won.
        let lost = store.compare_and_swap(0, state(1)).unwrap_err();
        assert!(
            matches!(lost.kind, ErrorKind::Fenced { current, .. } if current == Epoch(1)),
            "{lost}"
        );
        let second = store.compare_and_swap(1, state(2)).unwrap();
        assert_eq!(store.read().unwrap(), Some(second));
    }

    #[test]
    fn a_held_lock_is_waited_for_a_bounded_time_and_names_its_holder() {
        let dir = tempfile::tempdir().unwrap();
        let store = FileStateStore::new(dir.path()).with_lock_wait(Duration::from_millis(200));
        store.compare_and_swap(0, state(1)).unwrap();
        // Another holder: this process's id is what the lock file names after the swap.
        let held = File::options()
            .write(true)
            .open(dir.path().join("coordinated.lock"))
            .unwrap();
        held.lock().unwrap();
        let err = store.compare_and_swap(1, state(2)).unwrap_err();
        assert!(matches!(err.kind, ErrorKind::Timeout { .. }), "{err}");
        let pid = std::process::id().to_string();
        assert!(err.to_string().contains(&format!("process {pid}")), "{err}");
        assert_eq!(
            store.read().unwrap().unwrap().epoch,
            Epoch(1),
            "nothing written"
        );
        held.unlock().unwrap();
        store.compare_and_swap(1, state(2)).unwrap();
    }

    #[test]
    fn damaged_state_is_corruption() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("coordinated.json"), b"{ not json").unwrap();
        let err = FileStateStore::new(dir.path()).read().unwrap_err();
        assert!(matches!(err.kind, ErrorKind::Corruption(_)), "{err}");
    }
}
