//! The coordinated state in etcd: one key holding the same JSON record the file store keeps,
//! compare-and-swapped in an etcd transaction, and a lease-held key that lets one director
//! run at a time.
//!
//! Keys, for a cluster named `NAME` with id `ID`:
//!
//! - `/strata/NAME/ID/coordinated`: the [`CoordinatedState`]. Its generation is etcd's version
//!   of the key (how many times it was written): a compare-and-swap from generation `g` is a
//!   transaction "if the key's version is `g`, put", so two directors that read the same
//!   generation cannot both write the next one. A key whose version and recorded generation
//!   disagree was written by something other than Strata, and is read as corruption.
//! - `/strata/NAME/ID/director`: who directs the cluster now, attached to a lease that the
//!   director keeps alive (see [`DirectorLease`]).

use std::future::Future;
use std::sync::mpsc;
use std::time::Duration;

use strata_core::{Epoch, Error, ErrorKind, Result, Stage};
use strata_net::etcd::{Etcd, LeaseKeeper};

use super::{CoordinatedState, STATE_FORMAT, StateStore};

/// How long a director's lease lives without a renewal: a director that stops (its process
/// killed, its host gone) is replaced this long after, at most.
pub const DIRECTOR_LEASE_TTL: Duration = Duration::from_secs(6);

/// How long a read of the state waits for an etcd that does not answer (restarting, or its
/// leader being elected) before it fails as `Unavailable`. Every recovery attempt starts with
/// a read, so a recovery rides out an etcd outage this long instead of using up its attempts.
pub const ETCD_UNREACHABLE_WAIT: Duration = Duration::from_secs(20);

fn error(kind: ErrorKind) -> Error {
    Error::new(Stage::Coordinator, kind)
}

/// The coordinated state of one cluster in etcd (see the module docs).
///
/// The [`StateStore`] trait is synchronous (recovery reads and swaps the state a few times,
/// and tools read it outside any runtime), so the store runs its etcd client on a runtime of
/// its own, one thread, and its calls wait for the answer: at most
/// [`ETCD_CALL_TIMEOUT`](strata_net::etcd::ETCD_CALL_TIMEOUT) each.
#[derive(Debug)]
pub struct EtcdStateStore {
    runtime: Option<tokio::runtime::Runtime>,
    etcd: Etcd,
    endpoints: Vec<String>,
    prefix: String,
}

impl EtcdStateStore {
    /// The store of the cluster named `name` with id `id`, in the etcd cluster at
    /// `endpoints` (`host:port` each). Connects lazily: an etcd that is down fails the first
    /// call (`Unavailable`), not this one.
    ///
    /// Errors: `InvalidRequest` for a bad endpoint; `Io` when no thread can be started.
    pub fn new(endpoints: &[String], name: &str, id: &str) -> Result<EtcdStateStore> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("strata-etcd")
            .enable_all()
            .build()
            .map_err(|e| Error::io(Stage::Coordinator, e))?;
        let etcd = {
            let _entered = runtime.enter();
            Etcd::connect(endpoints)?
        };
        Ok(EtcdStateStore {
            runtime: Some(runtime),
            etcd,
            endpoints: endpoints.to_vec(),
            prefix: format!("/strata/{name}/{id}/"),
        })
    }

    /// The etcd client, for calls from an async caller on any runtime.
    pub fn etcd(&self) -> &Etcd {
        &self.etcd
    }

    /// Where the state lives, for people: `etcd://ENDPOINTS` and the key prefix.
    pub fn place(&self) -> String {
        format!("{} under {}", self.etcd.name(), self.prefix)
    }

    fn state_key(&self) -> Vec<u8> {
        format!("{}coordinated", self.prefix).into_bytes()
    }

    fn director_key(&self) -> Vec<u8> {
        format!("{}director", self.prefix).into_bytes()
    }

    /// Runs `work` on the store's runtime and waits for it, from any thread: inside another
    /// runtime too, as a file store's `fsync` would.
    fn block<T: Send + 'static>(
        &self,
        work: impl Future<Output = Result<T>> + Send + 'static,
    ) -> Result<T> {
        let stopped = || error(ErrorKind::Unavailable("the etcd client stopped".into()));
        let runtime = self.runtime.as_ref().ok_or_else(stopped)?;
        let (tx, rx) = mpsc::sync_channel(1);
        runtime.spawn(async move {
            let _ = tx.send(work.await);
        });
        rx.recv().map_err(|_| stopped())?
    }

    /// Reads the record a value holds and checks it against the key's version.
    fn decode(&self, value: &[u8], version: i64) -> Result<CoordinatedState> {
        let key = String::from_utf8_lossy(&self.state_key()).into_owned();
        let state: CoordinatedState = serde_json::from_slice(value)
            .map_err(|e| error(ErrorKind::Corruption(format!("etcd key {key}: {e}"))))?;
        if state.format != STATE_FORMAT {
            return Err(error(ErrorKind::Corruption(format!(
                "etcd key {key}: unsupported format {} (this build reads {STATE_FORMAT})",
                state.format
            ))));
        }
        if i64::try_from(state.generation).ok() != Some(version) {
            return Err(error(ErrorKind::Corruption(format!(
                "etcd key {key}: records generation {} but was written {version} time(s): \
                 something other than Strata wrote it",
                state.generation
            ))));
        }
        Ok(state)
    }

    /// Takes the director key for `holder` (who this process is, for people), waiting while
    /// another director's lease lives; `Unavailable` when etcd cannot be reached for `wait`.
    ///
    /// Safety does not rest on this: two directors that both ran would still not both own an
    /// epoch (the compare-and-swap) nor both write a log (epochs fence them). The lease keeps a
    /// second director from recovering over a live one again and again, and lets a standby take
    /// over within [`DIRECTOR_LEASE_TTL`] of the first one's end.
    pub async fn lead(&self, holder: &str, wait: Duration) -> Result<DirectorLease> {
        let key = self.director_key();
        let started = tokio::time::Instant::now();
        let mut announced = None;
        loop {
            let attempt = async {
                let lease = self.etcd.grant(DIRECTOR_LEASE_TTL).await?;
                let put = self
                    .etcd
                    .put_if_version(&key, 0, holder.as_bytes().to_vec(), lease)
                    .await;
                match put {
                    Ok(Ok(_)) => Ok(Ok(lease)),
                    Ok(Err(other)) => {
                        let _ = self.etcd.revoke(lease).await;
                        Ok(Err(
                            other.map(|o| String::from_utf8_lossy(&o.value).into_owned())
                        ))
                    }
                    Err(e) => {
                        let _ = self.etcd.revoke(lease).await;
                        Err(e)
                    }
                }
            };
            match attempt.await {
                Ok(Ok(lease)) => {
                    tracing::info!(
                        holder,
                        lease = format!("{lease:x}"),
                        "directing the cluster"
                    );
                    return Ok(DirectorLease {
                        etcd: self.etcd.clone(),
                        id: lease,
                        keeper: None,
                        deadline: tokio::time::Instant::now() + DIRECTOR_LEASE_TTL,
                    });
                }
                Ok(Err(other)) => {
                    let other = other.unwrap_or_default();
                    if announced.as_ref() != Some(&other) {
                        tracing::info!(
                            director = other,
                            "another director runs this cluster; waiting for its lease to end"
                        );
                        announced = Some(other);
                    }
                }
                Err(e) if started.elapsed() >= wait => return Err(e),
                Err(e) => tracing::warn!(error = %e, "cannot reach etcd; trying again"),
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    }
}

impl Drop for EtcdStateStore {
    fn drop(&mut self) {
        // Not `drop(runtime)`: that waits for its thread, which a caller on a runtime must not.
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }
}

impl StateStore for EtcdStateStore {
    /// `etcd://ENDPOINTS/strata/NAME/ID/coordinated`.
    fn name(&self) -> String {
        format!(
            "etcd://{}{}coordinated",
            self.endpoints.join(","),
            self.prefix
        )
    }

    /// Waits up to [`ETCD_UNREACHABLE_WAIT`] for an etcd that does not answer.
    fn read(&self) -> Result<Option<CoordinatedState>> {
        let etcd = self.etcd.clone();
        let key = self.state_key();
        let read = self.block(async move {
            let started = tokio::time::Instant::now();
            loop {
                match etcd.get(&key).await {
                    Err(e)
                        if matches!(e.kind, ErrorKind::Unavailable(_))
                            && started.elapsed() < ETCD_UNREACHABLE_WAIT =>
                    {
                        tracing::warn!(error = %e, "cannot read the coordinated state; trying again");
                        tokio::time::sleep(Duration::from_millis(500)).await;
                    }
                    done => return done,
                }
            }
        })?;
        read.map(|v| self.decode(&v.value, v.version)).transpose()
    }

    fn compare_and_swap(
        &self,
        expected: u64,
        mut new: CoordinatedState,
    ) -> Result<CoordinatedState> {
        new.format = STATE_FORMAT;
        new.generation = expected + 1;
        let bytes = serde_json::to_vec_pretty(&new)
            .map_err(|e| error(ErrorKind::InvalidRequest(e.to_string())))?;
        let expected_version = i64::try_from(expected)
            .map_err(|_| error(ErrorKind::InvalidRequest(format!("generation {expected}"))))?;
        let etcd = self.etcd.clone();
        let key = self.state_key();
        let swapped =
            self.block(async move { etcd.put_if_version(&key, expected_version, bytes, 0).await })?;
        match swapped {
            Ok(_) => Ok(new),
            // Another coordinator wrote since this one read: it owns the epoch it wrote.
            Err(now) => {
                let current = match now {
                    Some(v) => self.decode(&v.value, v.version)?.epoch,
                    None => Epoch(0),
                };
                Err(error(ErrorKind::Fenced {
                    request: new.epoch,
                    current,
                }))
            }
        }
    }
}

/// A director's hold on its cluster (see [`EtcdStateStore::lead`]): the lease is renewed by
/// [`DirectorLease::lost`], which the director awaits beside its work.
#[derive(Debug)]
pub struct DirectorLease {
    etcd: Etcd,
    id: i64,
    /// The renewal stream, opened again after it fails.
    keeper: Option<LeaseKeeper>,
    /// When the lease ends unless renewed, by this process's clock, counted from before the
    /// last renewal was sent (so never later than etcd's own).
    deadline: tokio::time::Instant,
}

impl DirectorLease {
    /// Keeps the lease alive; returns only when it is lost: it could not be renewed before it
    /// ran out, and another director may now run. The director must stop at once.
    pub async fn lost(&mut self) -> Error {
        let every = DIRECTOR_LEASE_TTL / 3;
        loop {
            tokio::time::sleep(every).await;
            let sent = tokio::time::Instant::now();
            match self.renew().await {
                Ok(ttl) => self.deadline = sent + ttl,
                Err(e) if tokio::time::Instant::now() + every >= self.deadline => {
                    return error(ErrorKind::Unavailable(format!(
                        "lost the director's lease: {e}"
                    )));
                }
                Err(e) => tracing::warn!(error = %e, "could not renew the director's lease"),
            }
        }
    }

    async fn renew(&mut self) -> Result<Duration> {
        let keeper = match &mut self.keeper {
            Some(keeper) => keeper,
            None => self.keeper.insert(self.etcd.keeper(self.id).await?),
        };
        let renewed = keeper.renew().await;
        if renewed.is_err() {
            self.keeper = None;
        }
        renewed
    }

    /// Gives the cluster up now, so another director need not wait for the lease to run out.
    pub async fn release(self) {
        if let Err(e) = self.etcd.revoke(self.id).await {
            tracing::warn!(error = %e, "could not end the director's lease; it runs out alone");
        }
    }
}

/// A director's lease kept alive by a task of its own, so that it is renewed while the
/// director recovers as well as while it serves (see [`Directing::start`]).
#[derive(Debug)]
pub struct Directing {
    lost: tokio::sync::oneshot::Receiver<Error>,
    release: Option<tokio::sync::oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl Directing {
    /// Keeps `lease` alive on a task of its own; `None` (no lease to keep) is never lost.
    pub fn start(lease: Option<DirectorLease>) -> Directing {
        let (lost_tx, lost) = tokio::sync::oneshot::channel();
        let (release, released) = tokio::sync::oneshot::channel();
        let task = tokio::spawn(async move {
            let Some(mut lease) = lease else {
                // Held until released, so `lost` never completes.
                let _keep = lost_tx;
                let _ = released.await;
                return;
            };
            tokio::select! {
                e = lease.lost() => {
                    let _ = lost_tx.send(e);
                }
                _ = released => lease.release().await,
            }
        });
        Directing {
            lost,
            release: Some(release),
            task: Some(task),
        }
    }

    /// Completes when the lease is lost: the director must stop at once. Never completes for
    /// a director without a lease. Cancel-safe: await it again after any other branch won.
    pub async fn lost(&mut self) -> Error {
        match (&mut self.lost).await {
            Ok(e) => e,
            // The keeping task ended without a word: it panicked, so the lease is not kept.
            Err(_) => error(ErrorKind::Unavailable(
                "the task keeping the director's lease stopped".into(),
            )),
        }
    }

    /// Gives the lease up (another director may start at once) and waits until it is.
    pub async fn release(mut self) {
        if let Some(release) = self.release.take() {
            let _ = release.send(());
        }
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
    }
}
