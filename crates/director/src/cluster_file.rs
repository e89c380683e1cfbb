//! The cluster file: how a process that is not the cluster finds it. One line, in
//! FoundationDB's spirit:
//!
//! ```text
//! NAME:ID@file:PATH
//! NAME:ID@etcd://HOST:PORT[,HOST:PORT...]
//! ```
//!
//! - `NAME` describes the cluster to people (`strata` unless chosen otherwise);
//! - `ID` identifies it: every call between processes carries it, and a server refuses calls
//!   of another id, so a client given the wrong file is refused instead of writing to the
//!   wrong cluster;
//! - the place after `@` says where the coordinated state lives: `file:PATH` in the data
//!   directory `PATH`, as the embedded cluster keeps it (a client must be on the same host);
//!   `etcd://...` in the etcd cluster at those endpoints, under `/strata/NAME/ID/` (see
//!   [`EtcdStateStore`](crate::coordinator::etcd::EtcdStateStore)), from any host. The state
//!   names the address where the newest epoch's stages are served
//!   ([`CoordinatedState::served_at`](crate::CoordinatedState::served_at)).
//!
//! Both `NAME` and `ID` are 1 to 64 ASCII letters, digits, `-`, `_` or `.`. Blank lines and
//! lines starting with `#` are ignored. `strata serve --listen ADDR` writes the file it serves
//! to `DATA_DIR/strata.cluster` when there is none (with a new random id, or the one given by
//! `--cluster-file`), and keeps the one there: the data directory belongs to that cluster, and
//! every command on it finds the coordinated state through it.
//!
//! ```
//! use strata_director::cluster_file::ClusterFile;
//! let file = ClusterFile::parse("strata:4f2a9c1e07b3d5a6@file:/var/lib/strata").unwrap();
//! assert_eq!(file.name, "strata");
//! assert_eq!(file.id.as_str(), "4f2a9c1e07b3d5a6");
//! assert_eq!(file.to_string(), "strata:4f2a9c1e07b3d5a6@file:/var/lib/strata");
//! assert!(ClusterFile::parse("strata@file:/x").is_err()); // no id
//! let etcd = ClusterFile::parse("prod:7c1d@etcd://10.0.0.1:2379,10.0.0.2:2379").unwrap();
//! assert_eq!(etcd.to_string(), "prod:7c1d@etcd://10.0.0.1:2379,10.0.0.2:2379");
//! ```

use std::fmt;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use async_trait::async_trait;

use strata_core::{Error, ErrorKind, Result, Stage};
use strata_net::{Access, ClusterId, Stages, Tls};
use strata_txn_builder::{Connect, Database, TransactionOptions};

use crate::coordinator::etcd::EtcdStateStore;
use crate::coordinator::{CoordinatedState, Coordination, FileStateStore, StateStore};

/// The name of the cluster file `strata serve --listen` writes into its data directory.
pub const CLUSTER_FILE_NAME: &str = "strata.cluster";

/// How long [`ClusterFile::connect`] waits for a cluster between two epochs to serve again.
pub const CONNECT_WAIT: Duration = Duration::from_secs(10);

/// How long a database connected through a cluster file waits for the cluster to serve a new
/// epoch once the one it held ended: longer than a director's etcd lease
/// ([`DIRECTOR_LEASE_TTL`](crate::coordinator::etcd::DIRECTOR_LEASE_TTL), which a restarted
/// director may wait out) and its recovery. The calls that need the new epoch wait with it.
pub const RECONNECT_WAIT: Duration = Duration::from_secs(30);

fn invalid(why: String) -> Error {
    Error::new(Stage::Director, ErrorKind::InvalidRequest(why))
}

/// The most etcd endpoints a cluster file may name.
pub const ETCD_ENDPOINTS_MAX: usize = 16;

/// Where a cluster's coordinated state lives.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum StatePlace {
    /// In this data directory (`file:PATH`).
    Directory(PathBuf),
    /// In the etcd cluster at these endpoints (`etcd://HOST:PORT,...`), in their order.
    Etcd(Vec<String>),
}

impl fmt::Display for StatePlace {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StatePlace::Directory(dir) => write!(f, "file:{}", dir.display()),
            StatePlace::Etcd(endpoints) => write!(f, "etcd://{}", endpoints.join(",")),
        }
    }
}

/// A parsed cluster file (see the module docs).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClusterFile {
    /// The cluster's name, for people.
    pub name: String,
    /// The cluster's id, carried by every call.
    pub id: ClusterId,
    /// Where the coordinated state lives.
    pub place: StatePlace,
}

impl fmt::Display for ClusterFile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}@{}", self.name, self.id, self.place)
    }
}

/// Parses `etcd://` endpoints: 1 to [`ETCD_ENDPOINTS_MAX`] `host:port`, comma-separated.
fn etcd_endpoints(list: &str) -> Result<Vec<String>> {
    let endpoints: Vec<String> = list.split(',').map(str::to_owned).collect();
    if endpoints.len() > ETCD_ENDPOINTS_MAX {
        return Err(invalid(format!(
            "etcd://{list}: more than {ETCD_ENDPOINTS_MAX} endpoints"
        )));
    }
    for endpoint in &endpoints {
        let well_formed = endpoint.rsplit_once(':').is_some_and(|(host, port)| {
            // An IPv6 address goes in brackets, `[::1]:2379`, as in a URL.
            let bracketed = host.starts_with('[') && host.ends_with(']');
            !host.is_empty()
                && !host.contains(['/', '@', '?', '#', ',', ' '])
                && (bracketed || !host.contains([':', '[', ']']))
                && port.parse::<u16>().is_ok_and(|p| p > 0)
        });
        if !well_formed {
            return Err(invalid(format!(
                "etcd://{list}: {endpoint:?} is not a HOST:PORT endpoint"
            )));
        }
    }
    Ok(endpoints)
}

impl ClusterFile {
    /// Parses a cluster file's text: one `NAME:ID@file:PATH` or `NAME:ID@etcd://HOST:PORT,...`
    /// line, with blank lines and `#` comments around it. `InvalidRequest` says what is wrong.
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
                "the cluster file holds more than one line (NAME:ID@PLACE)".into(),
            ));
        }
        let shape = || {
            invalid(format!(
                "{line:?} is not NAME:ID@file:PATH or NAME:ID@etcd://..."
            ))
        };
        let (who, place) = line.split_once('@').ok_or_else(shape)?;
        let (name, id) = who.split_once(':').ok_or_else(shape)?;
        // The same rules as an id: a name ends up in the same messages.
        ClusterId::new(name).map_err(|e| invalid(format!("cluster name: {}", e.kind)))?;
        let id = ClusterId::new(id).map_err(|e| invalid(format!("cluster id: {}", e.kind)))?;
        let place = if let Some(path) = place.strip_prefix("file:") {
            if path.is_empty() {
                return Err(shape());
            }
            StatePlace::Directory(PathBuf::from(path))
        } else if let Some(list) = place.strip_prefix("etcd://") {
            StatePlace::Etcd(etcd_endpoints(list)?)
        } else {
            return Err(invalid(format!(
                "{place:?}: the coordinated state lives in a data directory (file:PATH) or in \
                 etcd (etcd://HOST:PORT,...), nowhere else"
            )));
        };
        Ok(ClusterFile {
            name: name.to_owned(),
            id,
            place,
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

    /// The cluster file of the cluster in `data_dir`, as `strata serve --listen` keeps it:
    ///
    /// - the one in `DATA_DIR/strata.cluster` when there is one: the directory belongs to that
    ///   cluster. A `file:` one must name this directory, and `given`, if any, must be it;
    /// - else `given`, written there (a `file:` one must name this directory);
    /// - else a new one, `strata:RANDOM_ID@file:DATA_DIR`, written there.
    ///
    /// A file is written synced, then renamed into place. Errors: `InvalidRequest` when the
    /// files disagree, saying which to change.
    pub fn for_data_dir(data_dir: &Path, given: Option<&ClusterFile>) -> Result<ClusterFile> {
        let path = data_dir.join(CLUSTER_FILE_NAME);
        let dir = std::fs::canonicalize(data_dir).map_err(|e| Error::io(Stage::Director, e))?;
        let names_this = |file: &ClusterFile| match &file.place {
            StatePlace::Directory(named) => {
                std::fs::canonicalize(named).ok().as_deref() == Some(dir.as_path())
            }
            StatePlace::Etcd(_) => true,
        };
        let names_other = |file: &ClusterFile, whose: &str| {
            invalid(format!(
                "{whose} names {}, not this data directory ({}): remove it, or serve the \
                 directory it names",
                file.place,
                dir.display()
            ))
        };
        if path.exists() {
            let file = ClusterFile::read(&path)?;
            if !names_this(&file) {
                return Err(names_other(&file, &path.display().to_string()));
            }
            let Some(given) = given else {
                return Ok(file);
            };
            let same_cluster = given.name == file.name && given.id == file.id;
            match (&file.place, &given.place) {
                // The same etcd cluster reached at other endpoints (members added or moved):
                // the directory's copy follows the file given.
                (StatePlace::Etcd(kept), StatePlace::Etcd(new)) if same_cluster && kept != new => {
                    write_cluster_file(data_dir, given)?;
                    return Ok(given.clone());
                }
                // The same file, or a `file:` one naming this directory by another path.
                (kept, new)
                    if same_cluster
                        && (kept == new
                            || matches!(
                                (kept, new),
                                (StatePlace::Directory(_), StatePlace::Directory(_))
                            ))
                        && names_this(given) =>
                {
                    return Ok(file);
                }
                _ => {
                    return Err(invalid(format!(
                        "this data directory belongs to cluster {file} (its \
                         {CLUSTER_FILE_NAME}), not to {given}: serve it with its own cluster \
                         file, or another directory"
                    )));
                }
            }
        }
        let file = match given {
            Some(given) if !names_this(given) => {
                return Err(names_other(given, "the cluster file given"));
            }
            // A state kept in the directory stays there: moving it would need the etcd record
            // and this directory to agree from the first write on.
            Some(
                given @ ClusterFile {
                    place: StatePlace::Etcd(_),
                    ..
                },
            ) if data_dir.join(crate::check::STATE_FILE).exists() => {
                return Err(invalid(format!(
                    "{} holds a cluster whose coordinated state is kept in it ({}); it cannot \
                     move to {}: serve it without --cluster-file, or start the etcd-kept \
                     cluster in a new directory",
                    dir.display(),
                    crate::check::STATE_FILE,
                    given.place
                )));
            }
            Some(given) => given.clone(),
            None => {
                // The file names the directory as text on one line, read back trimmed: a path
                // that would not read back the same would refuse every later start.
                let text = dir.to_str().unwrap_or_default();
                if text.is_empty() || text.contains(['\n', '\r']) || text.trim() != text {
                    return Err(invalid(format!(
                        "{}: a cluster file names its data directory on one line of text; this \
                         path is not valid UTF-8, holds a line break, or starts or ends with a \
                         space: serve a directory with a plainer name",
                        dir.display()
                    )));
                }
                ClusterFile {
                    name: "strata".into(),
                    id: ClusterId::new(random_id())?,
                    place: StatePlace::Directory(dir),
                }
            }
        };
        write_cluster_file(data_dir, &file)?;
        Ok(file)
    }

    /// The store of the coordinated state this file names.
    ///
    /// Errors: `InvalidRequest` for an etcd endpoint that cannot be used.
    pub fn store(&self) -> Result<Coordination> {
        Ok(match &self.place {
            StatePlace::Directory(dir) => Coordination::File(FileStateStore::new(dir)),
            StatePlace::Etcd(endpoints) => Coordination::Etcd(Box::new(EtcdStateStore::new(
                endpoints,
                &self.name,
                self.id.as_str(),
            )?)),
        })
    }

    /// The coordinated state, which must exist: `Unavailable` naming the place when the
    /// cluster was never recovered there (or the state cannot be read).
    pub fn state(&self) -> Result<CoordinatedState> {
        self.state_in(&self.store()?)
    }

    /// [`ClusterFile::state`], read from `store` (this file's, opened once by a caller that
    /// reads it again and again).
    fn state_in(&self, store: &Coordination) -> Result<CoordinatedState> {
        store.read()?.ok_or_else(|| {
            Error::new(
                Stage::Director,
                ErrorKind::Unavailable(format!(
                    "{}: no cluster {} was ever recovered there",
                    self.place, self.id
                )),
            )
        })
    }

    /// Where the cluster's newest epoch is served, as its coordinated state says.
    ///
    /// Errors: `Unavailable` when the state names no address (the cluster was never served to
    /// other processes) or cannot be read.
    pub fn served_at(&self) -> Result<String> {
        self.served_at_in(&self.store()?)
    }

    /// [`ClusterFile::served_at`], read from `store`.
    fn served_at_in(&self, store: &Coordination) -> Result<String> {
        self.state_in(store)?.served_at.ok_or_else(|| {
            Error::new(
                Stage::Director,
                ErrorKind::Unavailable(format!(
                    "the cluster {} is not served to other processes: start it with \
                     `strata serve --listen HOST:PORT`",
                    self.id
                )),
            )
        })
    }

    /// A [`Database`] of the cluster this file names, through the network: its sequencer,
    /// proxies and storage servers as served at the address its coordinated state names, with
    /// the default transaction options. Between two epochs (nothing served yet) it asks again,
    /// for at most [`CONNECT_WAIT`].
    ///
    /// The database follows recoveries ([`Database::following`]): once the server recovers
    /// (a stage failed, or it restarted), the first call that fails for it makes the database
    /// read the coordinated state again and connect to the newest epoch, waiting for it as
    /// above. [`Database::run`] starts again there what the end of the epoch failed before its
    /// commit was sent, or whose commit was refused as fenced; a commit whose call failed
    /// otherwise (the server was killed under it, say) is
    /// [`ErrorKind::CommitUnknown`](strata_core::ErrorKind::CommitUnknown): it may have
    /// committed, and is never run again. Every commit acknowledged is kept, as in process.
    ///
    /// `tls` is this process's TLS credentials, for a cluster whose processes use TLS (the
    /// server's `--tls-*` options): a client without them, or with a certificate of another
    /// authority, is refused.
    ///
    /// Errors: `Unavailable` when the cluster is not served or not reachable; `InvalidRequest`
    /// when the server there is of another cluster, or a TLS handshake failed.
    pub async fn connect(&self, tls: Option<&Tls>) -> Result<Database> {
        let served = Served {
            file: self.clone(),
            connected: AtomicBool::new(false),
            // Opened once: an etcd store holds a runtime and a connection of its own.
            store: self.store()?,
            access: Access::new(self.id.clone(), tls.cloned()),
        };
        Database::following(Arc::new(served), TransactionOptions::default()).await
    }
}

/// Where a database connected through a cluster file finds the newest epoch's stages.
struct Served {
    file: ClusterFile,
    /// Set once the first stages were found: later searches wait [`RECONNECT_WAIT`].
    connected: AtomicBool,
    store: Coordination,
    access: Access,
}

#[async_trait]
impl Connect for Served {
    /// The stages served at the address the coordinated state names; asked again, between two
    /// epochs or while nothing answers there, for at most [`CONNECT_WAIT`] the first time and
    /// [`RECONNECT_WAIT`] after.
    async fn stages(&self) -> Result<strata_txn_builder::Stages> {
        let started = tokio::time::Instant::now();
        let connected = self.connected.load(Ordering::SeqCst);
        let wait = if connected {
            RECONNECT_WAIT
        } else {
            CONNECT_WAIT
        };
        loop {
            let found = match self.file.served_at_in(&self.store) {
                Ok(address) => Stages::connect(&address, self.access.clone())
                    .await
                    .map(|stages| (address, stages)),
                // Once connected, a state that cannot be read (etcd away) is waited for as a
                // server that does not answer is.
                Err(e) if connected => Err(e),
                Err(e) => return Err(e),
            };
            let waited = started.elapsed() >= wait;
            match found {
                Ok((
                    _,
                    Stages {
                        sequencer: Some(sequencer),
                        proxies,
                        storage,
                        ..
                    },
                )) if !proxies.is_empty() && !storage.is_empty() => {
                    self.connected.store(true, Ordering::SeqCst);
                    return Ok(strata_txn_builder::Stages {
                        sequencer,
                        proxies,
                        storage,
                    });
                }
                Ok((address, _)) if waited => {
                    return Err(Error::new(
                        Stage::Director,
                        ErrorKind::Unavailable(format!(
                            "the server at {address} serves no epoch (waited {} s)",
                            wait.as_secs()
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

/// Writes `file` to `DATA_DIR/strata.cluster`: to a temporary file, synced, renamed into place,
/// and the directory synced.
fn write_cluster_file(data_dir: &Path, file: &ClusterFile) -> Result<()> {
    let tmp = data_dir.join(format!("{CLUSTER_FILE_NAME}.tmp"));
    let io = |e| Error::io(Stage::Director, e);
    let mut out = std::fs::File::create(&tmp).map_err(io)?;
    out.write_all(format!("{file}\n").as_bytes())
        .and_then(|()| out.sync_all())
        .map_err(io)?;
    std::fs::rename(&tmp, data_dir.join(CLUSTER_FILE_NAME)).map_err(io)?;
    std::fs::File::open(data_dir)
        .and_then(|d| d.sync_all())
        .map_err(io)
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
        assert_eq!(
            file.place,
            StatePlace::Directory(PathBuf::from("/srv/strata"))
        );
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
            ("a:b@zk://127.0.0.1:2181", "nowhere else"),
            ("a:b@etcd://", "not a HOST:PORT"),
            ("a:b@etcd://127.0.0.1", "not a HOST:PORT"),
            ("a:b@etcd://127.0.0.1:2379,", "not a HOST:PORT"),
            ("a:b@etcd://:2379", "not a HOST:PORT"),
            ("a:b@etcd://h:0", "not a HOST:PORT"),
            ("a:b@etcd://h:70000", "not a HOST:PORT"),
            ("a:b@etcd://h/x:1", "not a HOST:PORT"),
            ("a:b@etcd://::1:2379", "not a HOST:PORT"),
            ("a:b@etcd://[::1:2379", "not a HOST:PORT"),
            (
                &format!("a:b@etcd://{}", vec!["h:1"; 17].join(",")),
                "more than 16",
            ),
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
        let first = ClusterFile::for_data_dir(dir.path(), None).unwrap();
        assert_eq!(first.id.as_str().len(), 16);
        assert_eq!(
            first.place,
            StatePlace::Directory(std::fs::canonicalize(dir.path()).unwrap())
        );
        // Read back, not made again: the id stays.
        assert_eq!(ClusterFile::for_data_dir(dir.path(), None).unwrap(), first);
        assert_eq!(
            ClusterFile::read(&dir.path().join(CLUSTER_FILE_NAME)).unwrap(),
            first
        );
        // Two directories, two ids.
        let other = tempfile::tempdir().unwrap();
        let second = ClusterFile::for_data_dir(other.path(), None).unwrap();
        assert_ne!(second.id, first.id);
        // A file copied from elsewhere names another directory: refused, not served.
        std::fs::copy(
            other.path().join(CLUSTER_FILE_NAME),
            dir.path().join(CLUSTER_FILE_NAME),
        )
        .unwrap();
        let e = ClusterFile::for_data_dir(dir.path(), None).unwrap_err();
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
            let e = ClusterFile::for_data_dir(&path, None).unwrap_err();
            assert!(matches!(e.kind, ErrorKind::InvalidRequest(_)), "{e}");
            assert!(!path.join(CLUSTER_FILE_NAME).exists());
        }
    }

    #[test]
    fn etcd_endpoints_read_back_as_written() {
        let file = ClusterFile::parse("prod:7c1d@etcd://10.0.0.1:2379,db-2.internal:2379").unwrap();
        assert_eq!(
            file.place,
            StatePlace::Etcd(vec!["10.0.0.1:2379".into(), "db-2.internal:2379".into()])
        );
        assert_eq!(ClusterFile::parse(&file.to_string()).unwrap(), file);
        // IPv6 in brackets: the port is after the last colon.
        assert!(ClusterFile::parse("a:b@etcd://[::1]:2379").is_ok());
    }

    #[test]
    fn a_data_directory_takes_the_cluster_file_it_is_given_and_keeps_it() {
        let dir = tempfile::tempdir().unwrap();
        let given = ClusterFile::parse("prod:given1@etcd://127.0.0.1:2379").unwrap();
        assert_eq!(
            ClusterFile::for_data_dir(dir.path(), Some(&given)).unwrap(),
            given
        );
        assert_eq!(
            ClusterFile::read(&dir.path().join(CLUSTER_FILE_NAME)).unwrap(),
            given
        );
        // Given again, or not given: the same cluster.
        assert_eq!(
            ClusterFile::for_data_dir(dir.path(), Some(&given)).unwrap(),
            given
        );
        assert_eq!(ClusterFile::for_data_dir(dir.path(), None).unwrap(), given);
        // The same cluster at other etcd endpoints: the directory's copy follows.
        let moved = ClusterFile::parse("prod:given1@etcd://10.0.0.7:2379,10.0.0.8:2379").unwrap();
        assert_eq!(
            ClusterFile::for_data_dir(dir.path(), Some(&moved)).unwrap(),
            moved
        );
        assert_eq!(
            ClusterFile::read(&dir.path().join(CLUSTER_FILE_NAME)).unwrap(),
            moved
        );
        ClusterFile::for_data_dir(dir.path(), Some(&given)).unwrap();
        // Another cluster's file (another id or name, or a file: one) is refused: the
        // directory's logs and storage belong to the first.
        for other in [
            "prod:given2@etcd://127.0.0.1:2379".to_owned(),
            "test:given1@etcd://127.0.0.1:2379".to_owned(),
            format!("prod:given1@file:{}", dir.path().display()),
        ] {
            let other = ClusterFile::parse(&other).unwrap();
            let e = ClusterFile::for_data_dir(dir.path(), Some(&other)).unwrap_err();
            assert!(matches!(e.kind, ErrorKind::InvalidRequest(_)), "{e}");
            assert!(e.to_string().contains("belongs to cluster"), "{e}");
        }
        assert_eq!(
            ClusterFile::read(&dir.path().join(CLUSTER_FILE_NAME)).unwrap(),
            given
        );
        // A directory whose state is kept in it cannot move it to etcd.
        let kept = tempfile::tempdir().unwrap();
        std::fs::write(kept.path().join(crate::check::STATE_FILE), b"{}").unwrap();
        let e = ClusterFile::for_data_dir(kept.path(), Some(&given)).unwrap_err();
        assert!(e.to_string().contains("cannot move to etcd://"), "{e}");
        assert!(!kept.path().join(CLUSTER_FILE_NAME).exists());
        // A file: cluster file given for another directory is refused before it is written.
        let fresh = tempfile::tempdir().unwrap();
        let elsewhere = ClusterFile::parse("a:b@file:/nonexistent/elsewhere").unwrap();
        let e = ClusterFile::for_data_dir(fresh.path(), Some(&elsewhere)).unwrap_err();
        assert!(e.to_string().contains("not this data directory"), "{e}");
        assert!(!fresh.path().join(CLUSTER_FILE_NAME).exists());
    }
}
