//! The coordinated state in etcd: one key holding the same JSON record the file store keeps,
//! compare-and-swapped in an etcd transaction, and a lease-held key that lets one director
//! run at a time.
//!
//! Keys, for a cluster named `NAME` with id `ID`:
//!
//! - `/strata/NAME/ID/coordinated`: the [`CoordinatedState`], with its generation inside. A
//!   compare-and-swap from generation `g` reads the key, checks the record is at `g`, and
//!   writes over that very write in one etcd transaction ("if the key's last write is still at
//!   revision `r`, put"), so two directors that read the same record cannot both replace it.
//!   The record is the whole truth: a key restored, mirrored or rewritten by hand (with
//!   `etcdctl put`) is read for what it holds; one that is not a record is corruption.
//! - `/strata/NAME/ID/director`: who directs the cluster now, attached to a lease that the
//!   director keeps alive (see [`DirectorLease`]).
//!
//! A swap whose answer is lost (etcd slow or gone) is settled before the store answers: etcd
//! may still apply a request its client gave up on, and a state written after the attempt
//! that wrote it failed (and removed the logs it names) would wedge recovery. So the store
//! reads the key, and if the swap has not happened it writes the record already there again,
//! one generation on, which no later arrival of the lost request can pass. When etcd cannot be
//! reached for the whole wait, the swap stays unsettled, and the next read settles it before
//! it answers (or fails): a failed attempt never removes logs that such a swap may still
//! name. A cluster's very first swap (over nothing) cannot be cancelled so, and needs not be:
//! it is the first claim, which names no new logs; applied late, it only moves the epoch on.
//!
//! The directory binding (`home`, `HOST:PATH`) refuses a directory elsewhere, a copy on
//! another host or path among them. It cannot tell apart a byte-for-byte clone at the same
//! host and path, and a host whose name changes (a container without a fixed hostname) is
//! refused until the record's `home` is edited.

use std::future::Future;
use std::sync::mpsc;
use std::time::Duration;

use strata_core::{Epoch, Error, ErrorKind, Result, Stage};
use strata_net::etcd::{Etcd, LeaseKeeper, Versioned};

use super::{CoordinatedState, STATE_FORMAT, StateStore};

/// How long a director's lease lives without a renewal: a director that stops (its process
/// killed, its host gone) is replaced this long after, at most.
pub const DIRECTOR_LEASE_TTL: Duration = Duration::from_secs(6);

/// How long before its lease runs out (by its own clock) a director gives it up as lost.
pub const LEASE_MARGIN: Duration = Duration::from_secs(1);

/// How long a read of the state waits for an etcd that does not answer (restarting, or its
/// leader being elected) before it fails as `Unavailable`. Every recovery attempt starts with
/// a read, so a recovery rides out an etcd outage this long instead of using up its attempts.
pub const ETCD_UNREACHABLE_WAIT: Duration = Duration::from_secs(20);

fn error(kind: ErrorKind) -> Error {
    Error::new(Stage::Coordinator, kind)
}

/// The prefix of the keys of the cluster named `name` with id `id` in etcd.
pub fn state_prefix(name: &str, id: &str) -> String {
    format!("/strata/{name}/{id}/")
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
    name: String,
    id: String,
    /// The data directory this store serves, `HOST:PATH` (see [`CoordinatedState::home`]).
    home: Option<String>,
    /// A swap whose outcome [`EtcdStateStore::settle`] could not learn (etcd unreachable for
    /// its whole wait): the revision it was written over and its bytes. Settled before any
    /// later read answers, so no caller acts on a state that this swap may still replace.
    unsettled: std::sync::Mutex<Option<(i64, Vec<u8>)>>,
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
            prefix: state_prefix(name, id),
            name: name.to_owned(),
            id: id.to_owned(),
            home: None,
            unsettled: std::sync::Mutex::new(None),
        })
    }

    /// This store, for the data directory `home` (`HOST:PATH`, see [`home_of`]): it stamps
    /// `home` on every state it writes, and refuses a state stamped with another directory
    /// (`InvalidRequest` naming both), so only the directory that holds the cluster's logs
    /// and storage recovers it. A store without a home (a client's) reads any state.
    pub fn with_home(mut self, home: String) -> EtcdStateStore {
        self.home = Some(home);
        self
    }

    /// The etcd client, for calls from an async caller on any runtime.
    pub fn etcd(&self) -> &Etcd {
        &self.etcd
    }

    /// Where worker processes register (see [`crate::workers`]).
    pub fn worker_prefix(&self) -> String {
        crate::workers::registry_prefix(&self.name, &self.id)
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
        // On a worker of a multi-threaded runtime, its other tasks (the lease's renewals, the
        // served calls) move to another thread while this one waits.
        let wait = || rx.recv().map_err(|_| stopped());
        let on_worker = tokio::runtime::Handle::try_current()
            .is_ok_and(|h| h.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread);
        if on_worker {
            tokio::task::block_in_place(wait)?
        } else {
            wait()?
        }
    }

    /// Reads the record a value holds: a value that is not a record of this format is corruption.
    fn decode(&self, value: &[u8]) -> Result<CoordinatedState> {
        let key = String::from_utf8_lossy(&self.state_key()).into_owned();
        let state: CoordinatedState = serde_json::from_slice(value)
            .map_err(|e| error(ErrorKind::Corruption(format!("etcd key {key}: {e}"))))?;
        if state.format != STATE_FORMAT {
            return Err(error(ErrorKind::Corruption(format!(
                "etcd key {key}: unsupported format {} (this build reads {STATE_FORMAT})",
                state.format
            ))));
        }
        Ok(state)
    }

    /// The key as stored now, waiting up to [`ETCD_UNREACHABLE_WAIT`] for an etcd that does
    /// not answer.
    fn get_patiently(&self) -> Result<Option<Versioned>> {
        let etcd = self.etcd.clone();
        let key = self.state_key();
        self.block(async move {
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
        })
    }

    /// Writes `value` over the key's write at revision `over` (0: only if it is absent).
    fn put_over(
        &self,
        over: i64,
        value: Vec<u8>,
    ) -> Result<std::result::Result<(), Option<Versioned>>> {
        let etcd = self.etcd.clone();
        let key = self.state_key();
        self.block(async move { etcd.put_if_mod_revision(&key, over, value, 0).await })
    }

    /// Settles a swap of the record last written at revision `over` (0: none) for `ours`,
    /// whose answer was lost (`lost`): etcd may have applied it, or may still apply it later,
    /// as it does requests whose client gave up. Reads the key: `ours` there is
    /// [`Settled::Ours`]; another write since `over` is [`Settled::Theirs`]; the key still as
    /// it was is cancelled for good by writing its record again, one generation on, so the lost
    /// request (conditioned on `over`) can never apply, and the error then says so: the swap
    /// did not happen. Waits up to [`ETCD_UNREACHABLE_WAIT`] for etcd to answer, then fails as
    /// an outcome unknown.
    ///
    /// A first swap (nothing stored) cannot be cancelled that way; its outcome stays unknown
    /// while the key is still absent (see the module docs).
    pub(crate) fn settle(&self, over: i64, ours: &[u8], lost: &Error) -> Result<Settled> {
        let started = std::time::Instant::now();
        let unknown = |why: String| {
            error(ErrorKind::Unavailable(format!(
                "{lost}; whether the coordinated state was written is unknown: {why}"
            )))
        };
        loop {
            let retry = |e: Error| {
                if started.elapsed() >= ETCD_UNREACHABLE_WAIT {
                    return Err(unknown(e.to_string()));
                }
                self.block(async {
                    tokio::time::sleep(Duration::from_millis(500)).await;
                    Ok(())
                })
            };
            let now = match self.get_patiently() {
                Ok(now) => now,
                Err(e) => {
                    retry(e)?;
                    continue;
                }
            };
            let held = match now {
                Some(v) if v.mod_revision != over && v.value == ours => {
                    return Ok(Settled::Ours);
                }
                Some(v) if v.mod_revision != over => return Ok(Settled::Theirs(Some(v))),
                Some(v) => v,
                None if over == 0 => {
                    return Err(unknown(
                        "a first write cannot be cancelled, and it may still be applied".into(),
                    ));
                }
                None => return Ok(Settled::Theirs(None)),
            };
            let mut again = self.decode(&held.value)?;
            again.generation += 1;
            let again = serde_json::to_vec_pretty(&again)
                .map_err(|e| error(ErrorKind::InvalidRequest(e.to_string())))?;
            match self.put_over(over, again) {
                Ok(Ok(())) => {
                    return Err(error(ErrorKind::Unavailable(format!(
                        "{lost}; the coordinated state was not written (the lost write was \
                         cancelled by moving the generation on)"
                    ))));
                }
                // Something was written meanwhile, maybe the lost request: look again.
                Ok(Err(_)) => {}
                Err(e) => retry(e)?,
            }
        }
    }

    /// Takes the director key for `holder` (who this process is, for people), waiting while
    /// another director's lease lives; `Unavailable` when etcd cannot be reached for `wait`.
    ///
    /// Safety does not rest on this: two directors that both ran would still not both own an
    /// epoch (the compare-and-swap) nor both write a log (epochs fence them). The lease keeps a
    /// second director from recovering over a live one again and again, and lets the next one
    /// (the same directory's next process: the state refuses any other directory) start
    /// within [`DIRECTOR_LEASE_TTL`] of the first one's end.
    pub async fn lead(&self, holder: &str, wait: Duration) -> Result<DirectorLease> {
        let key = self.director_key();
        let started = tokio::time::Instant::now();
        let mut announced = None;
        loop {
            // The lease runs out no sooner than this, by this process's clock.
            let asked = tokio::time::Instant::now();
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
                        deadline: asked + DIRECTOR_LEASE_TTL,
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
    fn workers(&self) -> Result<Vec<crate::workers::WorkerPlace>> {
        let etcd = self.etcd.clone();
        let prefix = self.worker_prefix();
        self.block(async move { crate::workers::list(&etcd, &prefix).await })
    }

    /// `etcd://ENDPOINTS/strata/NAME/ID/coordinated`.
    fn name(&self) -> String {
        format!(
            "etcd://{}{}coordinated",
            self.endpoints.join(","),
            self.prefix
        )
    }

    /// Waits up to [`ETCD_UNREACHABLE_WAIT`] for an etcd that does not answer.
    /// Settles first a swap whose outcome is still unknown; until that can be done the read
    /// fails (`Unavailable`): a recovery attempt that failed must not remove the logs such a
    /// swap names, as it would if it read the state as it was before.
    fn read(&self) -> Result<Option<CoordinatedState>> {
        let mut unsettled = self
            .unsettled
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some((over, ours)) = unsettled.as_ref() {
            let lost = error(ErrorKind::Unavailable(
                "an earlier write of the coordinated state got no answer".into(),
            ));
            match self.settle(*over, ours, &lost) {
                Ok(_) => {}
                Err(e) if e.to_string().contains("was not written") => {}
                Err(e) => return Err(e),
            }
            *unsettled = None;
        }
        drop(unsettled);
        let state = self
            .get_patiently()?
            .map(|v| self.decode(&v.value))
            .transpose()?;
        if let (Some(state), Some(mine)) = (&state, &self.home)
            && let Some(theirs) = &state.home
            && theirs != mine
        {
            return Err(error(ErrorKind::InvalidRequest(format!(
                "{}: the cluster's logs and storage are in {theirs}, not in this data \
                 directory ({mine}); serve that one (a data directory cannot move to another \
                 host or path, nor be copied to one, and keep its cluster)",
                self.name()
            ))));
        }
        Ok(state)
    }

    /// Reads the key, checks its generation is still `expected`, and writes over that very
    /// write (etcd's revision of it): two directors that read the same record cannot both
    /// replace it.
    fn compare_and_swap(
        &self,
        expected: u64,
        mut new: CoordinatedState,
    ) -> Result<CoordinatedState> {
        new.format = STATE_FORMAT;
        new.generation = expected + 1;
        if self.home.is_some() {
            new.home.clone_from(&self.home);
        }
        let request = new.epoch;
        let fenced = |now: Option<Versioned>| -> Result<CoordinatedState> {
            let current = match now {
                Some(v) => self.decode(&v.value)?.epoch,
                None => Epoch(0),
            };
            Err(error(ErrorKind::Fenced { request, current }))
        };
        let now = self.get_patiently()?;
        let generation = match &now {
            Some(v) => self.decode(&v.value)?.generation,
            None => 0,
        };
        if generation != expected {
            // Another coordinator wrote since this one read: it owns the epoch it wrote.
            return fenced(now);
        }
        // A store that serves no directory (a tool's, a library's) keeps the binding there is.
        if self.home.is_none()
            && let Some(v) = &now
        {
            new.home = self.decode(&v.value)?.home;
        }
        let bytes = serde_json::to_vec_pretty(&new)
            .map_err(|e| error(ErrorKind::InvalidRequest(e.to_string())))?;
        let over = now.map_or(0, |v| v.mod_revision);
        let swapped = match self.put_over(over, bytes.clone()) {
            Err(lost) if matches!(lost.kind, ErrorKind::Unavailable(_)) => {
                match self.settle(over, &bytes, &lost) {
                    Ok(Settled::Ours) => Ok(()),
                    Ok(Settled::Theirs(now)) => Err(now),
                    Err(e) => {
                        // Still unknown. A first write (over nothing) is a claim, which names
                        // no new logs: applied late, it only moves the epoch on. Any other is
                        // settled before the next read.
                        if over != 0 && !e.to_string().contains("was not written") {
                            *self
                                .unsettled
                                .lock()
                                .unwrap_or_else(std::sync::PoisonError::into_inner) =
                                Some((over, bytes));
                        }
                        return Err(e);
                    }
                }
            }
            answered => answered?,
        };
        match swapped {
            Ok(()) => Ok(new),
            Err(now) => fenced(now),
        }
    }
}

/// The home of the data directory `data_dir` as an etcd-kept state records it: this host's
/// name and the directory's canonical path, `HOST:PATH`.
///
/// Errors: `Io` when the directory cannot be resolved.
pub fn home_of(data_dir: &std::path::Path) -> Result<String> {
    let path = std::fs::canonicalize(data_dir).map_err(|e| Error::io(Stage::Coordinator, e))?;
    // Linux's; elsewhere the environment's, else a placeholder that still tells paths apart.
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .or_else(|| std::env::var("HOSTNAME").ok())
        .map(|h| h.trim().to_owned())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "localhost".into());
    Ok(format!("{host}:{}", path.display()))
}

/// How a swap whose answer was lost turned out (see [`EtcdStateStore::settle`]).
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Settled {
    /// It was applied.
    Ours,
    /// Another write came first; what the key holds now.
    Theirs(Option<Versioned>),
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
    /// Keeps the lease alive; returns only when it is lost: it was not renewed in time, and
    /// another director may soon run. The director must stop at once.
    ///
    /// "In time" is [`LEASE_MARGIN`] before the lease runs out by this process's clock, which
    /// counts from before each renewal was sent (never later than etcd's own count): every
    /// renewal, and every retry after a failed one, is cut off there, so the loss is declared
    /// before etcd can expire the lease and a standby can take it.
    pub async fn lost(&mut self) -> Error {
        let every = DIRECTOR_LEASE_TTL / 3;
        let mut wait = every;
        loop {
            let cutoff = self
                .deadline
                .checked_sub(LEASE_MARGIN)
                .unwrap_or(self.deadline);
            tokio::time::sleep_until((tokio::time::Instant::now() + wait).min(cutoff)).await;
            let sent = tokio::time::Instant::now();
            let why = match tokio::time::timeout_at(cutoff, self.renew()).await {
                Ok(Ok(ttl)) => {
                    self.deadline = sent + ttl;
                    wait = every;
                    continue;
                }
                Ok(Err(e)) => e.to_string(),
                Err(_) => "no renewal before it would run out".to_owned(),
            };
            if tokio::time::Instant::now() >= cutoff {
                return error(ErrorKind::Unavailable(format!(
                    "lost the director's lease: {why}"
                )));
            }
            tracing::warn!(
                error = why,
                "could not renew the director's lease; trying again"
            );
            wait = Duration::from_millis(250);
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

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use strata_testkit::etcd::EtcdServer;

    use crate::coordinator::tests::state;

    fn encoded(mut state: CoordinatedState, generation: u64) -> Vec<u8> {
        state.generation = generation;
        serde_json::to_vec_pretty(&state).unwrap()
    }

    fn lost() -> Error {
        error(ErrorKind::Unavailable("no answer within 5 s".into()))
    }

    /// etcd may apply a swap after its client gave up waiting. Settling finds it applied, or
    /// cancels it for good, or finds another writer's; it never leaves it pending.
    #[test]
    fn a_swap_whose_answer_was_lost_is_found_or_cancelled_for_good() {
        let Some(server) = EtcdServer::start() else {
            return;
        };
        let store = EtcdStateStore::new(&[server.endpoint()], "strata", "settle").unwrap();
        store.compare_and_swap(0, state(1)).unwrap();
        let revision = || store.get_patiently().unwrap().unwrap().mod_revision;

        // Applied before the answer was lost: found.
        let over = revision();
        let ours = encoded(state(2), 2);
        store.put_over(over, ours.clone()).unwrap().unwrap();
        assert_eq!(store.settle(over, &ours, &lost()).unwrap(), Settled::Ours);

        // Not applied yet: cancelled, and the request arriving late can no longer apply.
        let over = revision();
        let late = encoded(state(3), 3);
        let e = store.settle(over, &late, &lost()).unwrap_err();
        assert!(matches!(e.kind, ErrorKind::Unavailable(_)), "{e}");
        assert!(e.to_string().contains("was not written"), "{e}");
        assert!(
            store.put_over(over, late).unwrap().is_err(),
            "the lost request applied after its cancellation"
        );
        // The record is the one that was there, one generation on: nothing else changed.
        let held = store.read().unwrap().unwrap();
        assert_eq!(held.generation, 3);
        assert_eq!(held.epoch, Epoch(2));
        assert_eq!(held.logs, state(2).logs);

        // Another writer came first: theirs, not ours.
        let over = revision();
        let theirs = encoded(state(4), 4);
        store.put_over(over, theirs.clone()).unwrap().unwrap();
        let settled = store.settle(over, &encoded(state(9), 4), &lost()).unwrap();
        let Settled::Theirs(Some(now)) = settled else {
            panic!("{settled:?}");
        };
        assert_eq!(now.value, theirs);

        // A first write (nothing stored) cannot be cancelled: said so, never "not written".
        let fresh = EtcdStateStore::new(&[server.endpoint()], "strata", "fresh").unwrap();
        let e = fresh.settle(0, &encoded(state(1), 1), &lost()).unwrap_err();
        assert!(e.to_string().contains("is unknown"), "{e}");
    }

    /// A swap whose outcome stayed unknown is settled by the next read, before it answers:
    /// a failed attempt must not act on the state as it was while that swap may still land.
    #[test]
    fn an_unsettled_swap_is_settled_before_the_next_read_answers() {
        let Some(mut server) = EtcdServer::start() else {
            return;
        };
        let store = EtcdStateStore::new(&[server.endpoint()], "strata", "pending").unwrap();
        store.compare_and_swap(0, state(1)).unwrap();
        let over = store.get_patiently().unwrap().unwrap().mod_revision;
        let late = encoded(state(2), 2);
        *store.unsettled.lock().unwrap() = Some((over, late.clone()));
        // etcd away for two seconds: the read waits to settle it, never answering before.
        server.kill();
        let waiting = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_secs(2));
            server.restart();
            server
        });
        let read = store.read().unwrap().unwrap();
        let _server = waiting.join().unwrap();
        // Back within the wait: settled by cancelling, then read.
        assert_eq!((read.epoch, read.generation), (Epoch(1), 2));
        assert!(store.unsettled.lock().unwrap().is_none());
        assert!(store.put_over(over, late).unwrap().is_err());
    }

    /// A store that serves no directory keeps the directory a state is bound to.
    #[test]
    fn a_store_without_a_home_keeps_the_binding() {
        let Some(server) = EtcdServer::start() else {
            return;
        };
        let homed = EtcdStateStore::new(&[server.endpoint()], "strata", "bound")
            .unwrap()
            .with_home("db-1:/srv/strata".into());
        homed.compare_and_swap(0, state(1)).unwrap();
        let tool = EtcdStateStore::new(&[server.endpoint()], "strata", "bound").unwrap();
        let written = tool.compare_and_swap(1, state(2)).unwrap();
        assert_eq!(written.home.as_deref(), Some("db-1:/srv/strata"));
        assert_eq!(homed.read().unwrap().unwrap(), written);
        let elsewhere = EtcdStateStore::new(&[server.endpoint()], "strata", "bound")
            .unwrap()
            .with_home("db-2:/srv/strata".into());
        let e = elsewhere.read().unwrap_err();
        assert!(e.to_string().contains("not in this data directory"), "{e}");
    }
}
