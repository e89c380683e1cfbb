//! Seeded simulation: the whole embedded cluster on one thread under a simulated clock, with
//! faults, layouts and workloads chosen by one seed, so that a failing seed replays exactly.
//!
//! One run ([`run`]) is a sequence of *boots*. A boot builds a current-thread tokio runtime
//! whose clock is paused (it jumps to the next timer whenever every task waits, so simulated
//! seconds cost milliseconds), starts [`crate::serve`] on the run's data directory, and drives
//! the Cycle, Increment and register workloads from seeded clients while a chaos task injects
//! stage faults (a call that fails, or stalls until monitoring ends the epoch) and fault points
//! inside the stages fire ([`strata_core::buggify`]). Every register read is checked against a
//! model of what may have committed as it happens, and every injected failure of a batch's
//! stage call must end its epoch within a few monitoring rounds (`sim/liveness.rs`). A boot
//! ends in a crash: the runtime is dropped with every task in it, mid-commit, mid-flush or
//! mid-recovery, and the next boot recovers what is on disk. The last boot has no faults and
//! must recover within a bounded number of epochs; then the checks run: the ring is one ring,
//! the Increment totals agree, every acknowledged transaction is there, every epoch was newer
//! than the one before, each recovery wrote a monolithic configuration equal to its decomposed
//! keys, naming its own epoch, and no log keeps a segment the storage servers no longer need.
//!
//! Everything that decides what happens comes from the seed: the layout, the tuning (windows
//! and segments small enough to wrap many times in a run), the clients, the faults and their
//! times. The cluster runs with [`strata_core::Blocking::Inline`], so the logs' writers and
//! the storage servers' disk work run on the one thread too, in an order the program alone
//! decides. The run's events form a trace whose digest [`SimReport::digest`] is the same for
//! the same seed on the same build.
//!
//! Half the crashes are a power loss: the logs and the storage servers' redb files go through
//! a simulated disk (`sim/disk.rs`) that remembers what was synced, and the crash leaves only
//! that, with torn sectors of the rest; the same disk fails syncs, fills up, or loses power in
//! the middle of a sync. The coordinated state keeps what was written, as a process crash does.
//!
//! ```no_run
//! let report = strata_director::sim::run(7, &strata_director::sim::SimOptions::default());
//! assert!(report.failure.is_none(), "{:?}", report.failure);
//! println!("{} simulated seconds, digest {:016x}", report.simulated.as_secs(), report.digest);
//! ```

mod chaos;
mod disk;
mod liveness;
mod plan;
mod registers;

use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use serde::Serialize;
use strata_core::{Epoch, Error, ErrorKind, Result, Stage};
use strata_testkit::faults::Faults;
use strata_testkit::network::Network;
use strata_testkit::rng::SplitMix64;
use strata_txn_builder::Database;
use tokio::sync::watch;

use disk::PowerDisk;
use plan::Kind;
pub use plan::{Layout, Plan};

use crate::cluster::{Serving, serve};
use crate::coordinator::{FileStateStore, StateStore};
use crate::faults::FaultyFs;
use crate::recovery::RecoveryEnv;
use crate::recovery::persistence::read_both_views;
use crate::workload::{cycle, increment};

/// What a run covers beyond what its seed chooses.
#[derive(Clone, Copy, Debug)]
pub struct SimOptions {
    /// Simulated time the faulty boots run, in all (the last, clean boot comes on top).
    pub duration: Duration,
    /// Whether the report keeps every event of the run ([`SimReport::trace`]).
    pub trace: bool,
}

impl Default for SimOptions {
    fn default() -> SimOptions {
        SimOptions {
            duration: Duration::from_secs(60),
            trace: false,
        }
    }
}

/// What one run did.
#[derive(Clone, Debug, Serialize)]
pub struct SimReport {
    /// The seed that chose everything.
    pub seed: u64,
    /// The layout it chose.
    pub layout: Layout,
    /// Simulated time covered, every boot included.
    #[serde(serialize_with = "as_secs")]
    pub simulated: Duration,
    /// Boots (each after a crash but the first).
    pub boots: u64,
    /// Epochs served.
    pub epochs: u64,
    /// Stage faults armed (the crashes are the boots after the first).
    pub faults: u64,
    /// Times a fault point inside stage code fired ([`strata_core::buggify`]).
    pub points_fired: u64,
    /// Transactions acknowledged to the workload's clients.
    pub acked: u64,
    /// The most bytes the logs' directories held at the end of a boot.
    pub log_bytes_max: u64,
    /// A digest of the run's trace of events: the same seed gives the same digest (in JSON,
    /// as 16 hexadecimal digits).
    #[serde(serialize_with = "as_hex")]
    pub digest: u64,
    /// What broke, if anything did.
    pub failure: Option<String>,
    /// On a failure, the last events before it.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub last_events: Vec<String>,
    /// Every event of the run, when [`SimOptions::trace`] asked for them.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub trace: Vec<String>,
}

fn as_hex<S: serde::Serializer>(d: &u64, s: S) -> std::result::Result<S::Ok, S::Error> {
    s.serialize_str(&format!("{d:016x}"))
}

fn as_secs<S: serde::Serializer>(d: &Duration, s: S) -> std::result::Result<S::Ok, S::Error> {
    s.serialize_f64(d.as_secs_f64())
}

/// The run's events in order, and what the checks need across boots. Everything is pushed
/// from the one simulation thread, so the order is the program's.
#[derive(Debug, Default)]
pub(crate) struct Trace {
    /// The run's scratch directory, named differently each run: written as `<data-dir>` in
    /// the events (errors name files in it), so the digest does not depend on it.
    data_dir: Mutex<Option<String>>,
    events: Mutex<Vec<String>>,
    acked: Mutex<Vec<(Kind, u64, u64)>>,
    faults: Mutex<u64>,
    /// What the registers may hold.
    registers: registers::Model,
    /// The first finding of a client (a read the registers' model does not allow).
    broken: Mutex<Option<Error>>,
}

impl Trace {
    pub(crate) fn event(&self, line: String) {
        let line = self.scrub(line);
        tracing::debug!(target: "strata::sim", "{line}");
        self.events
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(line);
    }

    fn scrub(&self, text: String) -> String {
        match &*self.data_dir.lock().unwrap_or_else(PoisonError::into_inner) {
            Some(dir) => text.replace(dir.as_str(), "<data-dir>"),
            None => text,
        }
    }

    pub(crate) fn fault(&self, line: String) {
        *self.faults.lock().unwrap_or_else(PoisonError::into_inner) += 1;
        self.event(line);
    }

    /// Records a client's finding; the boot fails with the first one.
    pub(crate) fn broken(&self, e: Error) {
        self.event(format!("broken: {e}"));
        self.broken
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get_or_insert(e);
    }

    fn ack(&self, kind: Kind, client: u64, n: u64) {
        self.event(format!("ack {kind:?} {client}/{n}"));
        self.acked
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push((kind, client, n));
    }

    /// The transactions of `kind` acknowledged so far.
    fn acked(&self, kind: Kind) -> Vec<(u64, u64)> {
        self.acked
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
            .filter(|a| a.0 == kind)
            .map(|&(_, client, n)| (client, n))
            .collect()
    }

    /// SipHash with fixed keys over every event: stable within one build.
    fn digest(&self) -> u64 {
        let mut h = std::hash::DefaultHasher::new();
        self.events
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .hash(&mut h);
        h.finish()
    }

    /// The last `n` events, for a failure's report.
    fn tail(&self, n: usize) -> Vec<String> {
        let events = self.events.lock().unwrap_or_else(PoisonError::into_inner);
        events[events.len().saturating_sub(n)..].to_vec()
    }
}

/// Runs seed `seed`: boots with faults for `options.duration` of simulated time, then a clean
/// boot and the checks. Never panics on a cluster's failure: it is reported.
pub fn run(seed: u64, options: &SimOptions) -> SimReport {
    let plan = Plan::new(seed);
    let trace = Arc::new(Trace::default());
    let mut report = SimReport {
        seed,
        layout: plan.layout,
        simulated: Duration::ZERO,
        boots: 0,
        epochs: 0,
        faults: 0,
        points_fired: 0,
        acked: 0,
        log_bytes_max: 0,
        digest: 0,
        failure: None,
        last_events: Vec::new(),
        trace: Vec::new(),
    };
    // The fault points in stage code, on this thread (the cluster's) for the run.
    let points = strata_core::buggify::enable(seed ^ 0xb066_1f7e_5eed_0001);
    let outcome = data_dir().and_then(|dir| {
        *trace
            .data_dir
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = Some(dir.path().display().to_string());
        run_boots(&plan, options, dir.path(), &trace, &mut report)
    });
    if let Err(e) = outcome {
        let failure = trace.scrub(e.to_string());
        trace.event(format!("failed: {failure}"));
        report.failure = Some(failure);
        report.last_events = trace.tail(20);
    }
    let active: Vec<&str> = strata_core::buggify::points()
        .into_iter()
        .filter_map(|(point, active)| active.then_some(point))
        .collect();
    report.points_fired = strata_core::buggify::fired();
    trace.event(format!(
        "fault points active: {}; fired {} times",
        if active.is_empty() {
            "none".to_owned()
        } else {
            active.join(", ")
        },
        report.points_fired
    ));
    drop(points);
    report.faults = *trace.faults.lock().unwrap_or_else(PoisonError::into_inner);
    report.acked = trace
        .acked
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .len() as u64;
    report.digest = trace.digest();
    if options.trace {
        report.trace = trace.tail(usize::MAX);
    }
    report
}

/// A fresh directory, on a memory file system where there is one: the simulation's syncs
/// then cost nothing.
fn data_dir() -> Result<tempfile::TempDir> {
    let shm = Path::new("/dev/shm");
    let made = if shm.is_dir() {
        tempfile::Builder::new()
            .prefix("strata-sim-")
            .tempdir_in(shm)
    } else {
        tempfile::Builder::new().prefix("strata-sim-").tempdir()
    };
    made.map_err(|e| Error::io(Stage::Director, e))
}

fn run_boots(
    plan: &Plan,
    options: &SimOptions,
    data_dir: &Path,
    trace: &Arc<Trace>,
    report: &mut SimReport,
) -> Result<()> {
    let mut rng = SplitMix64(plan.seed ^ 0x5eed_b007);
    let mut left = options.duration;
    let mut last_epoch = Epoch(0);
    let mut lost = None::<String>;
    // Boots with faults until `left` is spent; then one without, which must recover and pass
    // the checks.
    loop {
        let chaos = !left.is_zero();
        let length = if chaos {
            plan.boot_length(&mut rng).min(left)
        } else {
            Duration::from_secs(2)
        };
        left = left.saturating_sub(length);
        if !chaos {
            // The clean boot's checks wait a fixed quiet spell for flushes and pops; a point
            // that skips them would make that spell too short (seed 85).
            strata_core::buggify::quiet();
        }
        let mut boot = Boot::new(plan, data_dir, trace, report.boots, &mut rng);
        if lost.is_some() {
            // While a lost file waits for its verdict, no power is lost: a corruption error
            // must come from the lost file, not from a torn write.
            boot.may_lose_power = false;
            boot.power_loss = false;
        }
        let done = boot.run(length, chaos, &mut last_epoch)?;
        if let Some(e) = done.gave_up {
            return refused(lost, e, trace);
        }
        if let Some(file) = lost.take() {
            lost = after_loss(file, done.epochs, chaos, trace)?;
        }
        report.boots += 1;
        report.epochs += done.epochs;
        report.simulated += done.simulated;
        if !chaos {
            break;
        }
        report.log_bytes_max = report
            .log_bytes_max
            .max(plan::bytes_under(&data_dir.join("logs"))?);
        if lost.is_none() && rng.below(LOSE_A_FILE_ONE_IN) == 0 {
            lost = chaos::lose_a_file(data_dir, &mut rng)?;
            if let Some(file) = &lost {
                trace.fault(format!("{file} lost after boot {}", report.boots - 1));
            }
        }
    }
    plan::check_popped(data_dir, plan.layout.storage)?;
    trace.event("every log popped to the storage servers' oldest durable version".into());
    Ok(())
}

/// Copies the directory `from` to `to` (made anew), files and directories at any depth.
fn copy_dir(from: &Path, to: &Path) -> std::io::Result<()> {
    if to.exists() {
        std::fs::remove_dir_all(to)?;
    }
    std::fs::create_dir_all(to)?;
    for entry in std::fs::read_dir(from)? {
        let entry = entry?;
        let target = to.join(entry.file_name());
        if entry.file_type()?.is_dir() {
            copy_dir(&entry.path(), &target)?;
        } else {
            std::fs::copy(entry.path(), &target)?;
        }
    }
    Ok(())
}

/// One boot in this many is followed by a lost file (then the run ends at the next boot).
const LOSE_A_FILE_ONE_IN: u64 = 24;

/// The end of a run whose coordinator gave up: right only when a file was lost before the
/// boot and the refusal is `Corruption`; otherwise the giving up is the run's failure.
fn refused(lost: Option<String>, e: Error, trace: &Trace) -> Result<()> {
    match lost {
        Some(file) if matches!(e.kind, ErrorKind::Corruption(_)) => {
            trace.event(format!("refused after {file} was lost: {}", e.kind));
            Ok(())
        }
        _ => Err(e),
    }
}

/// A boot after a lost file that was not refused. If it served, the file held nothing that
/// exists nowhere else (a storage file never flushed while the logs still hold all history),
/// and the run goes on: its final checks find any acknowledged commit lost. If it crashed
/// before recovery decided either way, the loss is still to be judged by the next boot
/// (returned); the clean boot, though, must decide.
fn after_loss(file: String, epochs: u64, chaos: bool, trace: &Trace) -> Result<Option<String>> {
    if epochs > 0 {
        trace.event(format!("recovered after {file} was lost"));
        return Ok(None);
    }
    if !chaos {
        return Err(corruption(format!(
            "{file} was lost, and recovery neither refused the directory nor served"
        )));
    }
    trace.event(format!(
        "the boot ended before recovery decided after {file} was lost"
    ));
    Ok(Some(file))
}

/// What a boot did.
struct Booted {
    epochs: u64,
    simulated: Duration,
    /// Why the coordinator gave up, when it did: a refusal, right only after a lost file.
    /// (A failed check is an error of the boot itself, never taken for a refusal.)
    gave_up: Option<Error>,
}

/// One boot: a runtime, the cluster served in it, clients and chaos, until its crash.
struct Boot<'a> {
    plan: &'a Plan,
    data_dir: PathBuf,
    trace: Arc<Trace>,
    number: u64,
    chaos_seed: u64,
    /// Whether the crash that ends it is a power loss (the disk keeps only what was synced)
    /// rather than a process crash.
    power_loss: bool,
    /// Whether the chaos may cut the power in the middle of a sync.
    may_lose_power: bool,
}

impl<'a> Boot<'a> {
    fn new(
        plan: &'a Plan,
        data_dir: &Path,
        trace: &Arc<Trace>,
        number: u64,
        rng: &mut SplitMix64,
    ) -> Boot<'a> {
        Boot {
            plan,
            data_dir: data_dir.to_owned(),
            trace: trace.clone(),
            number,
            chaos_seed: rng.next_u64(),
            power_loss: rng.below(2) == 0,
            may_lose_power: true,
        }
    }

    /// Runs the boot for `length` of simulated time (with faults when `chaos`), then drops the
    /// runtime: every task stops where it is, as in a crash. A clean boot ends with the checks.
    fn run(self, length: Duration, chaos: bool, last_epoch: &mut Epoch) -> Result<Booted> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .start_paused(true)
            .build()
            .map_err(|e| Error::io(Stage::Director, e))?;
        let trace = self.trace.clone();
        trace.event(format!(
            "boot {} for {} ms",
            self.number,
            length.as_millis()
        ));
        let faults = Faults::new();
        let disk = Arc::new(PowerDisk::new(Arc::new(FaultyFs(faults.clone()))));
        // The storage servers' files too (their work runs on this thread).
        let _storage_files = strata_storage::backend::install(disk.clone());
        let outcome = runtime.block_on(self.serve_for(length, chaos, *last_epoch, &faults, &disk));
        // The crash: the files as they are now are what survives (what was written, synced
        // or not: a process crash), or, in a power loss, the logs lose what they did not sync.
        // Dropping the runtime stops every task where it stands, but runs destructors, which a
        // crash does not (redb would close its files cleanly), so what they write is undone by
        // putting the copy back.
        let image = self.data_dir.with_extension("crash");
        copy_dir(&self.data_dir, &image).map_err(|e| Error::io(Stage::Director, e))?;
        if self.power_loss || disk.is_dead() {
            let mut rng = SplitMix64(self.chaos_seed.rotate_left(29));
            let lost = disk
                .lose_power(&self.data_dir, &image, &mut rng)
                .map_err(|e| Error::io(Stage::Director, e))?;
            self.trace.fault(format!(
                "power lost after boot {}: {lost} unsynced changes torn or lost",
                self.number
            ));
        }
        faults.release();
        drop(runtime);
        std::fs::remove_dir_all(&self.data_dir)
            .and_then(|()| std::fs::rename(&image, &self.data_dir))
            .map_err(|e| Error::io(Stage::Director, e))?;
        let (booted, newest) = outcome?;
        // An epoch claimed just before the crash, never seen serving, still counts: the next
        // boot must serve a newer one.
        let claimed = FileStateStore::new(&self.data_dir)
            .read()?
            .map_or(Epoch(0), |s| s.epoch);
        *last_epoch = newest.max(claimed);
        Ok(booted)
    }

    /// What this boot's recoveries run with: the chaos's faults, the simulated disk under the
    /// logs, and the network every stage of every epoch is reached across (a crash restarts
    /// every process, so each boot has its own). The clean boot's network has no delay: its
    /// checks read every acknowledged key, one by one, within one transaction's lifetime.
    fn recovery_env(
        &self,
        chaos: bool,
        faults: &Arc<Faults>,
        disk: &Arc<PowerDisk>,
    ) -> (RecoveryEnv, Arc<Network>) {
        let latency = if chaos { self.plan.latency_ms_max } else { 0 };
        let network = Network::new(
            self.chaos_seed.rotate_left(41),
            Duration::ZERO..Duration::from_millis(latency),
        );
        let mut env = RecoveryEnv::with_faults(faults.clone());
        env.log_fs = Some(disk.clone());
        env.network = Some(network.clone());
        (env, network)
    }

    async fn serve_for(
        &self,
        length: Duration,
        chaos: bool,
        last_epoch: Epoch,
        faults: &Arc<Faults>,
        disk: &Arc<PowerDisk>,
    ) -> Result<(Booted, Epoch)> {
        let started = tokio::time::Instant::now();
        let (env, network) = self.recovery_env(chaos, faults, disk);
        let (serving_tx, serving) = watch::channel::<Serving>(None);
        let config = self.plan.config();
        let data_dir = self.data_dir.clone();
        let server = tokio::spawn(async move {
            serve(&data_dir, config, &env, &serving_tx, std::future::pending()).await
        });
        let seen = Arc::new(Mutex::new(Seen {
            epochs: 0,
            newest: last_epoch,
            broken: None,
        }));
        let current = serving.clone();
        let ends = liveness::EpochEnds::new(
            Box::new(move || current.borrow().as_ref().map(|(epoch, _)| *epoch)),
            self.plan.monitoring_round(),
            self.trace.clone(),
        );
        ends.hear(faults, &network);
        let relay = Arc::new(Relay::default());
        let watcher = tokio::spawn(watch_epochs(
            serving,
            relay.clone(),
            self.trace.clone(),
            seen.clone(),
        ));
        let mut tasks = self
            .plan
            .start_clients(self.number, &relay, &self.trace, self.chaos_seed);
        if chaos {
            tasks.push(tokio::spawn(chaos::run(
                faults.clone(),
                network.clone(),
                disk.clone(),
                ends,
                self.may_lose_power,
                SplitMix64(self.chaos_seed.rotate_left(17)),
                self.trace.clone(),
            )));
        }
        let ended = tokio::select! {
            biased;
            served = server => Some(served),
            () = tokio::time::sleep(length) => None,
        };
        let simulated = started.elapsed();
        // Its watcher holds the epoch checks, which hold the stages, which hold the network.
        network.release();
        tasks.push(watcher);
        for t in &tasks {
            t.abort();
        }
        // A task that panicked (a client, the chaos, the watcher) fails the run: cancelled is
        // how the others end.
        for t in tasks {
            if let Err(e) = t.await
                && e.is_panic()
            {
                return Err(director(format!("a simulation task panicked: {e}")));
            }
        }
        let mut gave_up = None;
        if let Some(served) = ended {
            let served = served.map_err(|e| director(format!("the server task stopped: {e}")))?;
            gave_up = Some(
                served
                    .err()
                    .unwrap_or_else(|| director("serving ended without a shutdown".into())),
            );
        }
        let (epochs, newest, broken) = {
            let seen = seen.lock().unwrap_or_else(PoisonError::into_inner);
            (seen.epochs, seen.newest, seen.broken.clone())
        };
        if let Some(e) = broken.or_else(|| {
            self.trace
                .broken
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .take()
        }) {
            return Err(e);
        }
        if gave_up.is_none() && !chaos {
            // A quiet spell, so the storage servers flush and the director pops the logs up to
            // them before the checks (and the popping check after the boot).
            tokio::time::sleep(self.plan.flush_interval * 5).await;
            self.check(&relay).await?;
        }
        self.trace.event(format!(
            "boot {} ends after {} ms",
            self.number,
            simulated.as_millis()
        ));
        Ok((
            Booted {
                epochs,
                simulated,
                gave_up,
            },
            newest,
        ))
    }

    /// The checks of a clean boot, on the epoch it serves.
    async fn check(&self, relay: &Relay) -> Result<()> {
        let Some((epoch, db)) = relay.get() else {
            return Err(director(
                "no epoch serving at the end of the clean boot: the cluster did not recover".into(),
            ));
        };
        let cycles = self.trace.acked(Kind::Cycle);
        let increments = self.trace.acked(Kind::Increment);
        // A boot whose clients never got to create the ring has none to check.
        let nodes = if db
            .begin()
            .snapshot_get(&cycle::count_key())
            .await?
            .is_some()
        {
            cycle::check_ring(&db).await?
        } else {
            0
        };
        cycle::check_acks(&db, &cycles).await?;
        let totals = increment::check(&db).await?;
        increment::check_acks(&db, &increments).await?;
        check_system_keys(&db, epoch).await?;
        let registers = self.trace.registers.check_all(&db).await?;
        self.trace.event(format!(
            "checked: {epoch}, ring of {nodes}, {} Cycle and {} Increment transactions \
             acknowledged, {} increments applied, {registers} registers as the model allows",
            cycles.len(),
            increments.len(),
            totals.ledger
        ));
        Ok(())
    }
}

/// The epoch serving, as the simulation's tasks see it. The server publishes on a tokio
/// `watch`, whose receivers wait on one of eight queues picked at random: with several of them
/// waiting, the order they wake in would change from run to run. So the epoch watcher is its one
/// receiver, and passes each change on here, where waiters wake in the order they came.
#[derive(Default)]
pub(crate) struct Relay {
    current: Mutex<Serving>,
    moved: tokio::sync::Notify,
}

impl Relay {
    fn set(&self, serving: Serving) {
        *self.current.lock().unwrap_or_else(PoisonError::into_inner) = serving;
        self.moved.notify_waiters();
    }

    fn get(&self) -> Serving {
        self.current
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// The database of the epoch serving, once there is one.
    pub(crate) async fn database(&self) -> Database {
        loop {
            let moved = self.moved.notified();
            tokio::pin!(moved);
            moved.as_mut().enable();
            if let Some((_, db)) = self.get() {
                return db;
            }
            moved.await;
        }
    }
}

/// How long the watcher's read of a new epoch's system keys may take.
const SYSTEM_CHECK_WAIT: Duration = Duration::from_secs(2);

/// What the epoch watcher saw in a boot.
#[derive(Debug)]
struct Seen {
    epochs: u64,
    newest: Epoch,
    broken: Option<Error>,
}

/// Follows the epochs served: each must be newer than every one before (across boots too),
/// and its system keys must hold its configuration both ways. A check cut short by the
/// epoch's end is no finding; one that reads damage is.
async fn watch_epochs(
    mut serving: watch::Receiver<Serving>,
    relay: Arc<Relay>,
    trace: Arc<Trace>,
    seen: Arc<Mutex<Seen>>,
) {
    let mut previous = None::<(Epoch, Database)>;
    loop {
        let current = serving.borrow_and_update().clone();
        relay.set(current.clone());
        if let Some((epoch, db)) = current {
            if let Some((old, old_db)) = previous.replace((epoch, db.clone())) {
                tokio::spawn(check_fenced(old, old_db, epoch, db.clone(), trace.clone()));
            }
            let last = seen.lock().unwrap_or_else(PoisonError::into_inner).newest;
            let mut broken = (epoch <= last)
                .then(|| corruption(format!("{epoch} served after {last}: epochs must increase")));
            // Bounded: a stage that hangs must not stop the watcher seeing later epochs.
            let checked = tokio::time::timeout(SYSTEM_CHECK_WAIT, check_system_keys(&db, epoch))
                .await
                .unwrap_or_else(|_| Err(director("the read timed out".into())));
            trace.event(format!(
                "epoch {} served, system keys {}",
                epoch.0,
                match &checked {
                    Ok(()) => "agree".to_owned(),
                    Err(e) => format!("not read: {e}"),
                }
            ));
            if let Err(e) = checked
                && matches!(e.kind, ErrorKind::Corruption(_))
            {
                broken.get_or_insert(e);
            }
            let mut seen = seen.lock().unwrap_or_else(PoisonError::into_inner);
            seen.epochs += 1;
            seen.newest = seen.newest.max(epoch);
            if let Some(e) = broken {
                seen.broken.get_or_insert(e);
            }
        }
        if serving.changed().await.is_err() {
            return;
        }
    }
}

/// How long a commit through a replaced epoch, or the read of its key, may take.
const FENCE_WAIT: Duration = Duration::from_secs(1);

/// Once `new` serves, the epoch `old` it replaced must be fenced: a write committed through
/// `old`'s database (its sequencer, proxies and logs, as a client that missed the change would
/// use them) is refused or never answered, and never shows at `new`. A finding breaks the run.
async fn check_fenced(old: Epoch, old_db: Database, new: Epoch, db: Database, trace: Arc<Trace>) {
    let key = bytes::Bytes::from(format!("fence/{:010}/{:010}", old.0, new.0));
    let attempt = async {
        let tx = old_db.begin();
        tx.set(key.clone(), bytes::Bytes::from_static(b"stale"));
        tx.commit().await
    };
    if let Ok(Ok(version)) = tokio::time::timeout(FENCE_WAIT, attempt).await {
        return trace.broken(corruption(format!(
            "{old} acknowledged a commit at {version} after {new} served: it is not fenced"
        )));
    }
    let read = async { db.begin().snapshot_get(&key).await };
    match tokio::time::timeout(FENCE_WAIT, read).await {
        Ok(Ok(Some(_))) => trace.broken(corruption(format!(
            "a write refused by {old} after {new} served is visible in {new}"
        ))),
        Ok(Ok(None)) => trace.event(format!("{old} fenced after {new} served")),
        // The new epoch ended (or hangs) too: nothing to read it with.
        _ => trace.event(format!("{old} fenced after {new} served (not read back)")),
    }
}

/// Reads the monolithic configuration and the decomposed keys in one transaction: both must
/// say the same, and name `epoch` as the layout's and the last completed recovery's epoch.
/// (Reassembling fails on a stale decomposed key of an older layout.)
pub(crate) async fn check_system_keys(db: &Database, epoch: Epoch) -> Result<()> {
    let (whole, parts) = read_both_views(&db.begin()).await?;
    if whole != parts {
        return Err(corruption(
            "the monolithic configuration differs from the decomposed keys".into(),
        ));
    }
    if whole.layout.epoch != epoch || whole.last_completed.epoch != epoch {
        return Err(corruption(format!(
            "{epoch} serves a configuration of {} completed by {}",
            whole.layout.epoch, whole.last_completed.epoch
        )));
    }
    Ok(())
}

fn director(why: String) -> Error {
    Error::new(Stage::Director, ErrorKind::Unavailable(why))
}

fn corruption(why: String) -> Error {
    Error::new(Stage::Director, ErrorKind::Corruption(why))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_lost_file_is_judged_by_the_first_boot_that_serves_or_ends_clean() {
        let trace = Trace::default();
        let lost = || "storage/0.redb".to_owned();
        // Served: survived.
        assert_eq!(after_loss(lost(), 2, true, &trace).unwrap(), None);
        // A faulty boot that crashed before recovery finished: not judged yet (seed 33 once
        // failed here: a 152 ms boot under slow recovery phases).
        assert_eq!(after_loss(lost(), 0, true, &trace).unwrap(), Some(lost()));
        // The clean boot must serve (or refuse, which the caller handles before).
        let e = after_loss(lost(), 0, false, &trace).unwrap_err();
        assert!(e.to_string().contains("neither refused"), "{e}");
    }
}
