//! What a data directory holds, read without starting an epoch: the view behind `strata get`,
//! `getrange`, `dump` and `workload check`.
//!
//! A [`Snapshot`] takes the directory's lock (never creating the directory), reads the
//! coordinated state, opens the logs it names without locking them, and opens each storage
//! server read-only ([`StorageConfig::read_only`]) so that it follows a log up to the newest
//! recoverable version (the newest version every log holds: what the next recovery would
//! keep), replaying in memory what its file does not hold yet, as recovery would. Reads are
//! then answered at that one version. A directory recovery would refuse ([`crate::check`]) is
//! refused before anything is read, and history the logs no longer hold is an error naming
//! the versions missing, as it is for recovery.
//!
//! Nothing in the directory changes but `strata.lock`, which gets the reader's process id: the
//! logs are opened to be read only (`strata_tlog::OpenMode::ReadOnly`), so what a crash left
//! in them (a torn write at the end, a spare segment being prepared) stays for the next
//! recovery to repair, and the storage files through redb's in-memory overlay.
//!
//! ```no_run
//! # async fn example() -> strata_core::Result<()> {
//! let snapshot = strata_director::Snapshot::open("./strata-data".as_ref()).await?;
//! let value = snapshot.get(b"hello").await?;
//! println!("at {}: {value:?}", snapshot.version());
//! snapshot.close().await;
//! # Ok(()) }
//! ```

use std::path::Path;
use std::sync::Arc;

use bytes::Bytes;
use strata_core::{ErrorKind, Key, KeyRange, Result, StorageServer, Value, Version};
use strata_storage::{RedbStorage, StorageConfig};

use crate::HeldLog;
use crate::check::{check_directory, read_holdings_at_rest};
use crate::coordinator::{CoordinatedState, Coordination, LogPlace, StateStore};
use crate::owner::{DirectoryLock, lock_directory};
use crate::{error, split_ranges};

/// How long a storage server may replay without progress before [`Snapshot::open`] gives up.
const STALL_AFTER: std::time::Duration = std::time::Duration::from_secs(10);

/// A read-only view of a data directory at its newest recoverable version. See the module docs.
pub struct Snapshot {
    state: CoordinatedState,
    version: Version,
    logs: Vec<Arc<dyn HeldLog>>,
    /// Each storage server with the one shard it owns, in key order.
    servers: Vec<(KeyRange, Arc<RedbStorage>)>,
    /// Held until the snapshot is closed or dropped.
    _owner: Arc<DirectoryLock>,
}

impl std::fmt::Debug for Snapshot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Snapshot")
            .field("epoch", &self.state.epoch)
            .field("version", &self.version)
            .field("storage", &self.servers.len())
            .finish_non_exhaustive()
    }
}

impl Snapshot {
    /// Opens the view of `data_dir`. Errors: the directory missing or in use by another
    /// process; no cluster stored in it (`Unavailable`, saying to run `strata recover`); logs
    /// on log workers, which a view of the directory cannot read (`Unavailable`, naming them);
    /// a log the coordinated state names missing or damaged; a storage file damaged; no log
    /// holding the history a storage server needs (`Corruption`).
    pub async fn open(data_dir: &Path) -> Result<Snapshot> {
        let owner = lock_directory(data_dir, false)?;
        let store = Coordination::for_data_dir(data_dir)?;
        let state = store.read()?;
        // What recovery refuses, a read refuses too, before it reads anything: a state that
        // does not match the directory would answer from the wrong logs (or none).
        if let Some(first) = check_directory(data_dir, state.as_ref()).into_iter().next() {
            return Err(first.in_store(&store).into_error(data_dir, None));
        }
        let state = state.ok_or_else(|| {
            error(ErrorKind::Unavailable(format!(
                "no cluster in {}: run `strata recover` first",
                data_dir.display()
            )))
        })?;
        // A view at rest reads the data directory alone: committed history above the storage
        // servers' durable versions may be only in logs that log workers hold, and a shard a
        // storage worker holds is not here at all.
        let on_workers: Vec<String> = state
            .logs
            .iter()
            .filter(|p| p.at.is_some())
            .map(LogPlace::name)
            .chain((0..state.storage).filter_map(|i| {
                let at = state.storage_worker(i)?;
                Some(format!("storage/{i}.redb@{at}"))
            }))
            .collect();
        if !on_workers.is_empty() {
            return Err(error(ErrorKind::Unavailable(format!(
                "the logs or storage of {} are on workers ({}): a read at rest sees only the \
                 data directory; read the running cluster through its cluster file (`strata \
                 dump --cluster-file FILE`)",
                data_dir.display(),
                on_workers.join(", ")
            ))));
        }
        // As recovery reads it: storage first, then each log opened with the version known
        // committed that it must hold, so a damaged record of a committed version is an error,
        // never cut off as a torn write.
        let held = read_holdings_at_rest(data_dir, &state).await?;
        let logs = held.logs;
        let refused = match (held.findings.into_iter().next(), held.holds) {
            (Some((first, cause)), _) => Some(first.in_store(&store).into_error(data_dir, cause)),
            (None, None) => Some(error(ErrorKind::Corruption(format!(
                "{}: the logs it names could not all be read",
                data_dir.display()
            )))),
            (None, Some(_)) => None,
        };
        if let Some(e) = refused {
            for (_, log) in &logs {
                log.close();
            }
            return Err(e);
        }
        // Every log opened and every storage file was read (else a finding above).
        let version = held.holds.unwrap_or(Version::ZERO);
        let oldest = held
            .durable
            .iter()
            .flatten()
            .copied()
            .min()
            .unwrap_or(version);
        let mut snapshot = Snapshot {
            state,
            version,
            logs: logs.iter().map(|(_, log)| log.clone()).collect(),
            servers: Vec::new(),
            _owner: owner,
        };
        let named: Vec<(String, Arc<dyn HeldLog>)> = logs
            .into_iter()
            .map(|(place, log)| (place.dir, log))
            .collect();
        match snapshot
            .open_storage(data_dir, &named, oldest.min(version))
            .await
        {
            Ok(()) => Ok(snapshot),
            Err(e) => {
                snapshot.close().await;
                Err(e)
            }
        }
    }

    /// Opens every storage server read-only, following a log of `named` that holds
    /// everything after `oldest`, the oldest durable version of them all (as recovery's replay
    /// would read), and waits until each has applied the snapshot's version.
    async fn open_storage(
        &mut self,
        data_dir: &Path,
        named: &[(String, Arc<dyn HeldLog>)],
        oldest: Version,
    ) -> Result<()> {
        if self.logs.is_empty() {
            return Ok(());
        }
        let shards = split_ranges(self.state.storage)?;
        // A log that holds (oldest, version]; with nothing to read, any log.
        let follow = match crate::recovery::replay::choose_source(named, oldest, self.version)
            .await?
            .log
        {
            Some((_, log)) => log,
            None => self.logs[0].clone(),
        };
        // Nothing is known committed to these servers and they only read: nothing is made
        // durable, nothing popped, the files are never written. `read_holdings` ran redb's
        // integrity check on every file already.
        let read_only = StorageConfig {
            pop_log: false,
            read_only: true,
            check_integrity: false,
            flush_interval: std::time::Duration::from_secs(u64::from(u32::MAX)),
            ..StorageConfig::default()
        };
        for (i, shard) in shards.into_iter().enumerate() {
            let path = data_dir.join("storage").join(format!("{i}.redb"));
            let server =
                RedbStorage::open(&path, vec![shard.clone()], follow.clone(), read_only).await?;
            self.servers.push((shard, Arc::new(server)));
        }
        for (i, (_, server)) in self.servers.iter().enumerate() {
            self.caught_up(i, server).await?;
        }
        Ok(())
    }

    /// Waits until `server` (storage server `i`) applied the snapshot's version, for as long
    /// as it makes progress: a server whose applied version stands still for
    /// [`STALL_AFTER`] is an error naming where it stopped, never a wait without end.
    async fn caught_up(&self, i: usize, server: &RedbStorage) -> Result<()> {
        let mut reached = server.applied_version().await?;
        loop {
            match tokio::time::timeout(STALL_AFTER, server.wait_applied(self.version)).await {
                Ok(done) => return done,
                Err(_) => {
                    let now = server.applied_version().await?;
                    if now == reached {
                        return Err(error(ErrorKind::Timeout {
                            what: format!(
                                "storage server {i} to replay up to {} from the logs (it stands \
                                 at {now})",
                                self.version
                            ),
                            after_ms: u64::try_from(STALL_AFTER.as_millis()).unwrap_or(u64::MAX),
                        }));
                    }
                    reached = now;
                }
            }
        }
    }

    /// The coordinated state as stored.
    pub fn state(&self) -> &CoordinatedState {
        &self.state
    }

    /// The version every read answers at: the newest every current log holds.
    pub fn version(&self) -> Version {
        self.version
    }

    /// The value of `key`, or `None` when it is not stored.
    pub async fn get(&self, key: &[u8]) -> Result<Option<Value>> {
        let Some((_, server)) = self.servers.iter().find(|(s, _)| s.contains(key)) else {
            return Ok(None);
        };
        server.get(Bytes::copy_from_slice(key), self.version).await
    }

    /// Up to `limit` pairs of `range`, keys ascending, and whether more exist in it.
    pub async fn get_range(
        &self,
        range: &KeyRange,
        limit: usize,
    ) -> Result<(Vec<(Key, Value)>, bool)> {
        let mut entries = Vec::new();
        for (shard, server) in &self.servers {
            let Some(part) = shard.intersection(range) else {
                continue;
            };
            let left = limit.saturating_sub(entries.len());
            if left == 0 {
                // The limit is reached: more exist only if this shard holds a key of the range.
                let probe = server.get_range(part, self.version, 1, false).await?;
                if probe.entries.is_empty() {
                    continue;
                }
                return Ok((entries, true));
            }
            let read = server.get_range(part, self.version, left, false).await?;
            entries.extend(read.entries);
            if read.more {
                return Ok((entries, true));
            }
        }
        Ok((entries, false))
    }

    /// Closes the storage servers and logs and releases the directory.
    pub async fn close(self) {
        for (_, server) in &self.servers {
            server.close().await;
        }
        for log in &self.logs {
            log.close();
        }
    }
}

/// The range of keys starting with `prefix`; the empty prefix (and one of only `0xff` bytes,
/// which has no successor of its own) ends with the key space, system keys included.
pub fn prefix_range(prefix: &[u8]) -> Result<KeyRange> {
    KeyRange::prefix(Bytes::copy_from_slice(prefix))
        .or_else(|_| {
            KeyRange::new(
                Bytes::copy_from_slice(prefix),
                Bytes::from_static(crate::KEY_SPACE_END),
            )
        })
        .map_err(|e| error(ErrorKind::InvalidRequest(e.to_string())))
}
