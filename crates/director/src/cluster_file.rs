//! The cluster file: how a process that is not the cluster finds it. One line, in
//! FoundationDB's spirit:
//!
//! ```text
//! NAME:ID@file:PATH
//! ```
//!
//! - `NAME` describes the cluster to people (`strata` unless chosen otherwise);
//! - `ID` identifies it: every call between processes carries it, and a server refuses calls
//!   of another id, so a client given the wrong file is refused instead of writing to the
//!   wrong cluster;
//! - `file:PATH` says where the coordinated state lives: in the data directory `PATH`, as the
//!   embedded cluster keeps it. The state names the address where the newest epoch's stages
//!   are served ([`CoordinatedState::served_at`](crate::CoordinatedState::served_at)).
//!
//! Both `NAME` and `ID` are 1 to 64 ASCII letters, digits, `-`, `_` or `.`. Blank lines and
//! lines starting with `#` are ignored. `strata serve --listen ADDR` writes the file it serves
//! to `DATA_DIR/strata.cluster` when there is none (with a new random id), and keeps the id of
//! the one there.
//!
//! ```
//! use strata_director::cluster_file::ClusterFile;
//! let file = ClusterFile::parse("strata:4f2a9c1e07b3d5a6@file:/var/lib/strata").unwrap();
//! assert_eq!(file.name, "strata");
//! assert_eq!(file.id.as_str(), "4f2a9c1e07b3d5a6");
//! assert_eq!(file.to_string(), "strata:4f2a9c1e07b3d5a6@file:/var/lib/strata");
//! assert!(ClusterFile::parse("strata@file:/x").is_err()); // no id
//! ```

use std::fmt;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Duration;

use strata_core::{Error, ErrorKind, Result, Stage};
use strata_net::{ClusterId, Stages};
use strata_txn_builder::{Database, TransactionOptions};

use crate::coordinator::{FileStateStore, StateStore};

/// The name of the cluster file `strata serve --listen` writes into its data directory.
pub const CLUSTER_FILE_NAME: &str = "strata.cluster";

/// How long [`ClusterFile::connect`] waits for a cluster between two epochs to serve again.
pub const CONNECT_WAIT: Duration = Duration::from_secs(10);

fn invalid(why: String) -> Error {
    Error::new(Stage::Director, ErrorKind::InvalidRequest(why))
}

/// A parsed cluster file (see the module docs).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClusterFile {
    /// The cluster's name, for people.
    pub name: String,
    /// The cluster's id, carried by every call.
    pub id: ClusterId,
    /// The data directory that holds the coordinated state.
    pub state_dir: PathBuf,
}

impl fmt::Display for ClusterFile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}:{}@file:{}",
            self.name,
            self.id,
            self.state_dir.display()
        )
    }
}

impl ClusterFile {
    /// Parses a cluster file's text: one `NAME:ID@file:PATH` line, with blank lines and
    /// `#` comments around it. `InvalidRequest` says what is wrong.
    pub fn parse(text: &str) -> Result<ClusterFile> {
        let mut lines = text
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty() && !l.starts_with('#'));
        let Some(line) = lines.next() else {
            return Err(invalid("the cluster file is empty".into()));
        };
        if lines.next().is_some() {
            return Err(invalid(
                "the cluster file holds more than one line (NAME:ID@file:PATH)".into(),
            ));
        }
        let shape = || invalid(format!("{line:?} is not NAME:ID@file:PATH"));
        let (who, place) = line.split_once('@').ok_or_else(shape)?;
        let (name, id) = who.split_once(':').ok_or_else(shape)?;
        // The same rules as an id: a name ends up in the same messages.
        ClusterId::new(name).map_err(|e| invalid(format!("cluster name: {}", e.kind)))?;
        let id = ClusterId::new(id).map_err(|e| invalid(format!("cluster id: {}", e.kind)))?;
        let Some(path) = place.strip_prefix("file:") else {
            return Err(invalid(format!(
                "{place:?}: this build keeps the coordinated state in a data directory \
                 (file:PATH) and knows no other place"
            )));
        };
        if path.is_empty() {
            return Err(shape());
        }
        Ok(ClusterFile {
            name: name.to_owned(),
            id,
            state_dir: PathBuf::from(path),
        })
    }

    /// Reads and parses the cluster file at `path`; its errors name the file.
    pub fn read(path: &Path) -> Result<ClusterFile> {
        let text = std::fs::read_to_string(path).map_err(|e| {
            Error::io(
                Stage::Director,
                std::io::Error::new(e.kind(), format!("{}: {e}", path.display())),
            )
        })?;
        ClusterFile::parse(&text).map_err(|e| match e.kind {
            ErrorKind::InvalidRequest(why) => invalid(format!("{}: {why}", path.display())),
            _ => e,
        })
    }

    /// The cluster file of the cluster in `data_dir`, as `strata serve --listen` keeps it: the
    /// one in `DATA_DIR/strata.cluster` when there is one (it must name this directory), or
    /// else a new one, with a new random id, written there (synced, then renamed into place).
    pub fn for_data_dir(data_dir: &Path) -> Result<ClusterFile> {
        let path = data_dir.join(CLUSTER_FILE_NAME);
        let dir = std::fs::canonicalize(data_dir).map_err(|e| Error::io(Stage::Director, e))?;
        if path.exists() {
            let file = ClusterFile::read(&path)?;
            let named = std::fs::canonicalize(&file.state_dir).ok();
            if named.as_deref() != Some(dir.as_path()) {
                return Err(invalid(format!(
                    "{} names {}, not this data directory ({}): remove it, or serve the \
                     directory it names",
                    path.display(),
                    file.state_dir.display(),
                    dir.display()
                )));
            }
            return Ok(file);
        }
        // The file names the directory as text on one line, read back trimmed: a path that
        // would not read back the same would refuse every later start.
        let text = dir.to_str().unwrap_or_default();
        if text.is_empty() || text.contains(['\n', '\r']) || text.trim() != text {
            return Err(invalid(format!(
                "{}: a cluster file names its data directory on one line of text; this path \
                 is not valid UTF-8, holds a line break, or starts or ends with a space: serve \
                 a directory with a plainer name",
                dir.display()
            )));
        }
        let file = ClusterFile {
            name: "strata".into(),
            id: ClusterId::new(random_id())?,
            state_dir: dir,
        };
        let tmp = data_dir.join(format!("{CLUSTER_FILE_NAME}.tmp"));
        let io = |e| Error::io(Stage::Director, e);
        let mut out = std::fs::File::create(&tmp).map_err(io)?;
        out.write_all(format!("{file}\n").as_bytes())
            .and_then(|()| out.sync_all())
            .map_err(io)?;
        std::fs::rename(&tmp, &path).map_err(io)?;
        std::fs::File::open(data_dir)
            .and_then(|d| d.sync_all())
            .map_err(io)?;
        Ok(file)
    }

    /// Where the cluster's newest epoch is served, as its coordinated state says.
    ///
    /// Errors: `Unavailable` when the state names no address (the cluster was never served to
    /// other processes) or cannot be read.
    pub fn served_at(&self) -> Result<String> {
        let state = FileStateStore::new(&self.state_dir).read()?;
        let Some(state) = state else {
            return Err(Error::new(
                Stage::Director,
                ErrorKind::Unavailable(format!(
                    "{}: no cluster was ever recovered there",
                    self.state_dir.display()
                )),
            ));
        };
        state.served_at.ok_or_else(|| {
            Error::new(
                Stage::Director,
                ErrorKind::Unavailable(format!(
                    "the cluster in {} is not served to other processes: start it with \
                     `strata serve --listen HOST:PORT`",
                    self.state_dir.display()
                )),
            )
        })
    }

    /// A [`Database`] of the cluster this file names, through the network: its sequencer,
    /// proxies and storage servers as served at the address its coordinated state names, with
    /// the default transaction options. Between two epochs (nothing served yet) it asks again,
    /// for at most [`CONNECT_WAIT`].
    ///
    /// The database is bound to the epoch served when it connected: once the server recovers
    /// (a stage failed, or it restarted), its read versions fail as `Unavailable` and its
    /// commits as `Fenced` (refused, not done), and a new `connect` reaches the new epoch.
    /// Calls made while the server is down fail as `Unavailable`.
    ///
    /// Errors: `Unavailable` when the cluster is not served or not reachable; `InvalidRequest`
    /// when the server there is of another cluster.
    pub async fn connect(&self) -> Result<Database> {
        let started = tokio::time::Instant::now();
        loop {
            let address = self.served_at()?;
            let stages = Stages::connect(&address, self.id.clone()).await;
            let waited = started.elapsed() >= CONNECT_WAIT;
            match stages {
                Ok(Stages {
                    sequencer: Some(sequencer),
                    proxies,
                    storage,
                    ..
                }) if !proxies.is_empty() && !storage.is_empty() => {
                    return Database::new(
                        sequencer,
                        proxies,
                        storage,
                        TransactionOptions::default(),
                    );
                }
                Ok(_) if waited => {
                    return Err(Error::new(
                        Stage::Director,
                        ErrorKind::Unavailable(format!(
                            "the server at {address} serves no epoch (waited {} s)",
                            CONNECT_WAIT.as_secs()
                        )),
                    ));
                }
                Err(e) if waited || !matches!(e.kind, ErrorKind::Unavailable(_)) => {
                    return Err(e);
                }
                _ => tokio::time::sleep(Duration::from_millis(200)).await,
            }
        }
    }
}

/// 16 hex digits, random: the hasher keys of std's `RandomState` come from the operating
/// system's random source, and the time and process id are mixed in.
fn random_id() -> String {
    use std::hash::{BuildHasher, Hasher};
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    hasher.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos()),
    );
    hasher.write_u32(std::process::id());
    format!("{:016x}", hasher.finish())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cluster_file_is_one_line_of_name_id_and_place() {
        let text = "# made by hand\n\n  prod-eu:0a1b2c3d@file:/srv/strata  \n";
        let file = ClusterFile::parse(text).unwrap();
        assert_eq!(file.name, "prod-eu");
        assert_eq!(file.id.as_str(), "0a1b2c3d");
        assert_eq!(file.state_dir, PathBuf::from("/srv/strata"));
        assert_eq!(ClusterFile::parse(&file.to_string()).unwrap(), file);
        for (bad, why) in [
            ("", "empty"),
            ("# only a comment", "empty"),
            ("a:b@file:/x\nc:d@file:/y", "more than one line"),
            ("a:b", "not NAME:ID@file:PATH"),
            ("ab@file:/x", "not NAME:ID@file:PATH"),
            ("a:b@file:", "not NAME:ID@file:PATH"),
            ("a b:c@file:/x", "cluster name"),
            (":c@file:/x", "cluster name"),
            ("a:c d@file:/x", "cluster id"),
            ("a:b@etcd://127.0.0.1:2379", "knows no other place"),
        ] {
            let e = ClusterFile::parse(bad).unwrap_err();
            assert!(
                matches!(e.kind, ErrorKind::InvalidRequest(_)),
                "{bad:?}: {e}"
            );
            assert!(e.to_string().contains(why), "{bad:?}: {e}");
        }
    }

    #[test]
    fn a_data_directory_keeps_its_cluster_file_and_refuses_another_directorys() {
        let dir = tempfile::tempdir().unwrap();
        let first = ClusterFile::for_data_dir(dir.path()).unwrap();
        assert_eq!(first.id.as_str().len(), 16);
        assert_eq!(first.state_dir, std::fs::canonicalize(dir.path()).unwrap());
        // Read back, not made again: the id stays.
        assert_eq!(ClusterFile::for_data_dir(dir.path()).unwrap(), first);
        assert_eq!(
            ClusterFile::read(&dir.path().join(CLUSTER_FILE_NAME)).unwrap(),
            first
        );
        // Two directories, two ids.
        let other = tempfile::tempdir().unwrap();
        let second = ClusterFile::for_data_dir(other.path()).unwrap();
        assert_ne!(second.id, first.id);
        // A file copied from elsewhere names another directory: refused, not served.
        std::fs::copy(
            other.path().join(CLUSTER_FILE_NAME),
            dir.path().join(CLUSTER_FILE_NAME),
        )
        .unwrap();
        let e = ClusterFile::for_data_dir(dir.path()).unwrap_err();
        assert!(e.to_string().contains("not this data directory"), "{e}");
        // A cluster never served names no address.
        let e = first.served_at().unwrap_err();
        assert!(matches!(e.kind, ErrorKind::Unavailable(_)), "{e}");
    }

    #[test]
    fn a_directory_whose_name_would_not_read_back_is_refused_before_any_file() {
        let dir = tempfile::tempdir().unwrap();
        let odd = [
            dir.path().join("ends with a space "),
            dir.path().join("two\nlines"),
            dir.path()
                .join(<std::ffi::OsStr as std::os::unix::ffi::OsStrExt>::from_bytes(b"\xffbad")),
        ];
        for path in odd {
            std::fs::create_dir(&path).unwrap();
            let e = ClusterFile::for_data_dir(&path).unwrap_err();
            assert!(matches!(e.kind, ErrorKind::InvalidRequest(_)), "{e}");
            assert!(!path.join(CLUSTER_FILE_NAME).exists());
        }
    }
}
