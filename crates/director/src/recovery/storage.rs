//! Phase 6: the storage servers, each opened on one new log, rolled back to the recovery
//! version and caught up to it: files of this process's data directory, or servers held by
//! storage workers ([`crate::workers::StorageWorker`]).
//!
//! Where a storage server lives is decided once, when its file is created, and recorded in
//! the coordinated state (`storage_at`): a server the state places on a worker is opened
//! there (the attempt fails if it cannot be), and one whose file is in the data directory
//! stays there. A server with no file yet (a new cluster) goes to a storage worker that
//! answered the probe and holds no file yet, when there is one and it can reach the log the
//! server follows; otherwise it is created here.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use strata_core::{Error, ErrorKind, KeyRange, LogServer, Stage, StorageServer, Version};
use strata_net::{OpenStorage, RemoteWorker, Role};
use strata_storage::{RedbStorage, StorageConfig};
use strata_testkit::network::NetLog;

use super::env::log_role;
use super::logs::{NewLogs, sync_dir};
use super::{Attempt, Claim, RecoveryEnv, RecoveryError, error, millis, unrecoverable_if_damaged};
use crate::config::EmbeddedConfig;
use crate::coordinator::CoordinatedState;
use crate::workers::{Published, WorkerPlace};
use crate::{HeldStorage, split_ranges};

/// The storage servers of an epoch, as phase 6 opened them.
pub(crate) struct OpenedStorage {
    pub(crate) servers: Vec<Arc<dyn HeldStorage>>,
    /// The logs of this process published on the peer port for the storage workers that
    /// follow them (with the epoch's token), for as long as the epoch runs.
    pub(crate) published: Option<Published>,
}

impl OpenedStorage {
    /// Where each server lives, as the coordinated state records it: empty when every one is
    /// a file of the data directory.
    pub(crate) fn places(&self) -> Vec<Option<String>> {
        let places: Vec<Option<String>> = self
            .servers
            .iter()
            .map(|s| s.worker().map(str::to_owned))
            .collect();
        if places.iter().all(Option::is_none) {
            Vec::new()
        } else {
            places
        }
    }

    /// Closes every server (a failed attempt's).
    pub(crate) async fn close(&self) {
        for s in &self.servers {
            s.close().await;
        }
    }
}

fn storage_path(data_dir: &Path, i: usize) -> PathBuf {
    data_dir.join("storage").join(format!("{i}.redb"))
}

/// Phase 6: opens the storage servers, each following one new log, rolls them back to the
/// recovery version, and waits (bounded) until they re-applied the history they held only in
/// memory. On failure the servers opened so far are closed.
pub(super) async fn open_storage(
    env: &RecoveryEnv,
    data_dir: &Path,
    config: &EmbeddedConfig,
    claim: &Claim,
    previous: Option<&CoordinatedState>,
    logs: &mut NewLogs,
    recovery_version: Version,
) -> Attempt<OpenedStorage> {
    let storage_dir = data_dir.join("storage");
    if !storage_dir.exists() {
        std::fs::create_dir_all(&storage_dir).map_err(|e| Error::io(Stage::Director, e))?;
        sync_dir(data_dir)?;
    }
    let mut candidates = logs
        .answered
        .as_mut()
        .map(|a| a.take_role(Role::Storage))
        .unwrap_or_default();
    let mut opened = OpenedStorage {
        servers: Vec::new(),
        published: None,
    };
    let result = async {
        let mut local: Vec<Arc<RedbStorage>> = Vec::new();
        for (i, range) in split_ranges(config.storage)?.into_iter().enumerate() {
            let at = previous.and_then(|s| s.storage_worker(i));
            let fresh = at.is_none() && !storage_path(data_dir, i).exists();
            let mut ordering = Ordering {
                env,
                config,
                claim,
                logs,
                published: &mut opened.published,
                index: i,
                range: &range,
                recovery_version,
            };
            let on_worker = match at {
                Some(at) => Some(ordering.open_on(at).await?),
                None if fresh => ordering.place(&mut candidates).await,
                None => None,
            };
            let server: Arc<dyn HeldStorage> = match on_worker {
                Some(server) => Arc::new(server),
                None => {
                    let server = open_here(env, data_dir, config, logs, i, range).await?;
                    opened.servers.push(server.clone());
                    server.roll_back(recovery_version).await?;
                    local.push(server.clone());
                    continue;
                }
            };
            opened.servers.push(server);
        }
        // The servers on workers answered their open once caught up; those here catch up now.
        let caught_up = async {
            for s in &local {
                s.wait_applied(recovery_version).await?;
            }
            Ok::<(), Error>(())
        };
        match tokio::time::timeout(config.storage_catch_up, caught_up).await {
            Ok(result) => result.map_err(RecoveryError::from),
            Err(_) => Err(catch_up_timeout(config, recovery_version)),
        }
    }
    .await;
    match result {
        Ok(()) => Ok(opened),
        Err(e) => {
            opened.close().await;
            Err(e)
        }
    }
}

fn catch_up_timeout(config: &EmbeddedConfig, recovery_version: Version) -> RecoveryError {
    RecoveryError::Attempt(catch_up_timed_out(config, recovery_version))
}

fn catch_up_timed_out(config: &EmbeddedConfig, recovery_version: Version) -> Error {
    Error::new(
        Stage::Storage,
        ErrorKind::Timeout {
            what: format!("storage to re-apply history up to {recovery_version}"),
            after_ms: millis(config.storage_catch_up),
        },
    )
}

/// Opens storage server `i` (owning `range`) in this process's data directory, following its
/// log (across the simulated network, when there is one).
async fn open_here(
    env: &RecoveryEnv,
    data_dir: &Path,
    config: &EmbeddedConfig,
    logs: &NewLogs,
    i: usize,
    range: KeyRange,
) -> Attempt<Arc<RedbStorage>> {
    // Popping follows the slowest reader: the director pops every log at the oldest durable
    // version of all storage servers (see `Watermark`), never a server its own log. Phase 1
    // ran redb's integrity check on these very files (`stored_at`), and nothing has written
    // them since: checking every page again at the open would only double the cost.
    let storage_config = StorageConfig {
        pop_log: false,
        check_integrity: false,
        ..config.storage_config
    };
    let log: Arc<dyn LogServer> = logs.logs[i % logs.logs.len()].clone();
    let log = match &env.network {
        Some(n) => Arc::new(NetLog::new(log.clone(), n, &log_role(log.id()))),
        None => log,
    };
    let server = RedbStorage::open(&storage_path(data_dir, i), vec![range], log, storage_config)
        .await
        .map_err(unrecoverable_if_damaged)?;
    Ok(Arc::new(server))
}

/// One storage server's open on a storage worker.
struct Ordering<'a> {
    env: &'a RecoveryEnv,
    config: &'a EmbeddedConfig,
    claim: &'a Claim,
    logs: &'a NewLogs,
    published: &'a mut Option<Published>,
    index: usize,
    range: &'a KeyRange,
    recovery_version: Version,
}

impl Ordering<'_> {
    /// Where the server's log is served to a storage worker: its log worker, or this
    /// process's peer port (its logs published there for the epoch, once); `None` when
    /// neither can be.
    fn log_at(&mut self) -> Option<String> {
        let n = self.logs.logs.len();
        let place = &self.logs.places[self.index % n];
        if let Some(at) = &place.at {
            return Some(at.clone());
        }
        let peers = self.env.peers.as_ref()?;
        if self.published.is_none() {
            let here = strata_net::Stages {
                logs: self
                    .logs
                    .logs
                    .iter()
                    .zip(&self.logs.places)
                    .filter(|(_, p)| p.at.is_none())
                    .map(|(l, _)| l.clone() as Arc<dyn LogServer>)
                    .collect(),
                ..strata_net::Stages::default()
            };
            *self.published = Some(peers.publish(self.claim.epoch, self.claim.token.clone(), here));
        }
        Some(peers.address.clone())
    }

    fn order(&self, log_at: String) -> OpenStorage {
        let n = self.logs.logs.len();
        OpenStorage {
            epoch: self.claim.epoch,
            token: self.claim.token.clone(),
            index: u32::try_from(self.index).unwrap_or(u32::MAX),
            shards: vec![self.range.clone()],
            log: self.logs.logs[self.index % n].id(),
            log_at,
            recovery_version: self.recovery_version,
            // The worker gives up when the director does.
            catch_up: self.config.storage_catch_up.clamp(
                std::time::Duration::from_millis(1),
                OpenStorage::CATCH_UP_MAX,
            ),
        }
    }

    /// Orders the server opened on the storage worker at `at`, following the log served at
    /// `log_at`, within the bound on catching up (`Timeout` past it).
    async fn open_at(
        &self,
        at: &str,
        access: &strata_net::Access,
        log_at: String,
    ) -> Result<crate::workers::WorkerStorage, Error> {
        let opened = crate::workers::open_storage_on(at, access, self.order(log_at));
        tokio::time::timeout(self.config.storage_catch_up, opened)
            .await
            .unwrap_or_else(|_| Err(catch_up_timed_out(self.config, self.recovery_version)))
    }

    /// Opens the server on the storage worker at `at`, where the coordinated state places it:
    /// it is nowhere else, so an open that fails fails the attempt (unrecoverable when the
    /// worker says its file is damaged or another server's, or when it cannot be reached from
    /// here at all).
    async fn open_on(&mut self, at: &str) -> Attempt<crate::workers::WorkerStorage> {
        let i = self.index;
        let Some(access) = self.env.access.clone() else {
            return Err(RecoveryError::Unrecoverable(error(
                ErrorKind::InvalidRequest(format!(
                    "storage server {i} is on the storage worker at {at}, and this process reaches \
                 no workers: serve the cluster with --listen and an etcd cluster file"
                )),
            )));
        };
        let Some(log_at) = self.log_at() else {
            return Err(RecoveryError::Unrecoverable(error(
                ErrorKind::InvalidRequest(format!(
                    "storage server {i} is on the storage worker at {at}, which follows a log of \
                 this process: serve a port for the cluster's processes (--peer-listen)"
                )),
            )));
        };
        let server = self
            .open_at(at, &access, log_at)
            .await
            .map_err(unrecoverable_if_damaged)?;
        tracing::info!(
            index = i,
            worker = at,
            "storage server opened on its worker"
        );
        Ok(server)
    }

    /// Places a server with no file yet on one of `candidates` (storage workers that answered
    /// the probe and hold nothing durable) and opens it there: first one that already holds
    /// this server's file (left by an attempt that failed before the coordinated state named
    /// it), then the others in order. A worker that holds another server is left for that
    /// one; a worker used or failed here is taken out. `None` when none could (or none can
    /// reach the server's log): the server is then created in this process.
    async fn place(
        &mut self,
        candidates: &mut Vec<(WorkerPlace, RemoteWorker)>,
    ) -> Option<crate::workers::WorkerStorage> {
        let i = self.index;
        let access = self.env.access.clone()?;
        let index = u32::try_from(i).unwrap_or(u32::MAX);
        let mut usable = Vec::new();
        for (place, worker) in candidates.iter() {
            let at = &place.address;
            match worker.inspect_storage(index).await {
                // Nothing durable: new, or left by a failed attempt of a new cluster (nothing is
                // durable in a new cluster's server before the state names it: the first
                // commit after a recovery is its persistence phase's).
                Ok(stored) if stored.durable == Version::ZERO => match stored.shards {
                    None => usable.push((at.clone(), false)),
                    Some(s) if s[..] == [self.range.clone()] => usable.push((at.clone(), true)),
                    Some(_) => {}
                },
                Ok(stored) => {
                    tracing::warn!(
                        worker = at,
                        durable = stored.durable.0,
                        "a storage worker holds a file for this server that no coordinated state names; passed over"
                    );
                }
                // Holds another server's file (left for it), or cannot answer now.
                Err(e) => {
                    tracing::debug!(worker = at, error = %e, "a storage worker cannot take this server")
                }
            }
        }
        // Stable: the worker that holds this server's file first, then the order of addresses.
        usable.sort_by_key(|(_, holds)| !holds);
        let mut log_at = None;
        for (at, _) in usable {
            let Some(k) = candidates.iter().position(|(p, _)| p.address == at) else {
                continue;
            };
            let (place, _) = candidates.remove(k);
            if log_at.is_none() {
                log_at = self.log_at();
            }
            let Some(log_at) = log_at.clone() else {
                tracing::warn!(
                    "storage workers are registered, but this director serves no port for the \
                     cluster's processes (--peer-listen), through which they would follow its \
                     logs: the storage servers are created here"
                );
                return None;
            };
            match self.open_at(&at, &access, log_at).await {
                Ok(server) => {
                    tracing::info!(index = i, worker = at, "storage server placed on a worker");
                    return Some(server);
                }
                Err(e) => {
                    tracing::warn!(worker = at, error = %e, "a storage worker could not open a new storage server; passed over");
                }
            }
            self.env.passed_over.mark(&place);
        }
        None
    }
}
