//! Workloads that run through the whole pipeline, one module for everyone who drives load: the
//! `strata workload` and `strata bench` commands, the tests, the benches and (later) the
//! simulation.
//!
//! A [`Workload`] is one kind of transaction; [`drive`] runs it from concurrent clients, each
//! with its own seeded generator, for a number of transactions or a length of time, and
//! reports every acknowledged transaction, the commit latencies and the aborts.
//!
//! - [`cycle`] — FoundationDB's Cycle: a ring of keys rewired three links at a time; it stays
//!   one ring whatever commits, aborts or crashes.
//! - [`increment`] — counters in both halves of the key space plus a ledger entry per
//!   transaction: every acknowledged commit is applied exactly once.
//! - [`load`] — the load generator behind `strata bench`: random reads and writes, and the
//!   disk's fsync floor to compare commit latency against.
//!
//! ```no_run
//! use std::sync::Arc;
//! use strata_director::workload::{self, Plan, Span, cycle::Cycle};
//!
//! # async fn example(db: strata_director::Database) -> strata_core::Result<()> {
//! let nodes = workload::cycle::ensure_ring(&db, 100).await?;
//! let plan = Plan { clients: 8, span: Span::Transactions(1_000), seed: 7, first: 0 };
//! let driven = workload::drive(&db, Arc::new(Cycle { nodes }), &plan, workload::no_acks()).await?;
//! workload::cycle::check_ring(&db).await?;
//! workload::cycle::check_acks(&db, &driven.acked).await?;
//! # Ok(()) }
//! ```

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use tokio::time::Instant;

use strata_core::{Error, ErrorKind, Key, KeyRange, Result, Stage, Value, Version};
use strata_testkit::rng::SplitMix64;
use strata_txn_builder::{Database, Transaction};

pub mod cycle;
pub mod increment;
pub mod load;

/// Where a workload's check reads from: a transaction of a running cluster (its snapshot
/// reads), or a [`crate::Snapshot`] of a data directory, which starts no epoch (`strata
/// workload check`).
pub trait Reads: Sync {
    /// The value of `key` at the reader's one version.
    fn read(&self, key: &Key) -> impl Future<Output = Result<Option<Value>>> + Send;
}

impl Reads for Transaction {
    async fn read(&self, key: &Key) -> Result<Option<Value>> {
        self.snapshot_get(key).await
    }
}

impl Reads for crate::Snapshot {
    async fn read(&self, key: &Key) -> Result<Option<Value>> {
        self.get(key).await
    }
}

/// One kind of transaction, run by [`drive`].
pub trait Workload: Send + Sync + 'static {
    /// Transaction `n` of `client`, retried until it commits; returns how many attempts
    /// aborted on the way (conflicts, too-old reads).
    fn transaction(
        &self,
        db: &Database,
        rng: &mut SplitMix64,
        client: u64,
        n: u64,
    ) -> impl Future<Output = Result<u64>> + Send;
}

/// How long the clients of [`drive`] run.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Span {
    /// This many transactions in all, shared as evenly as they divide (the first clients take
    /// the remainder).
    Transactions(u64),
    /// Each client starts transactions until this much time has passed.
    For(Duration),
}

/// Who runs a workload and for how long.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Plan {
    /// Concurrent clients (at least 1).
    pub clients: u64,
    /// How long they run.
    pub span: Span,
    /// Seeds every client's generator (client `c` gets its own stream), so a run repeats.
    pub seed: u64,
    /// The number of each client's first transaction: a later run on the same data starts
    /// after an earlier one's, so the keys a workload writes per transaction never repeat.
    pub first: u64,
}

/// What [`drive`] did.
#[derive(Clone, Debug, Default)]
pub struct Driven {
    /// Every acknowledged transaction as `(client, n)`.
    pub acked: Vec<(u64, u64)>,
    /// Each transaction's latency from its start to its acknowledgement, retries included, in
    /// microseconds, sorted.
    pub latencies_us: Vec<u64>,
    /// Attempts that aborted and were retried.
    pub aborts: u64,
    /// Transactions whose commit outcome is unknown ([`ErrorKind::CommitUnknown`]: the epoch
    /// ended under them, on a database that follows recoveries): not acknowledged, not run
    /// again; the client went on with its next.
    pub unknown: u64,
    /// From the first client's start to the last one's end.
    pub elapsed: Duration,
}

impl Driven {
    /// The latency at quantile `q` (0 to 1) in microseconds; 0 when nothing ran.
    pub fn latency_us(&self, q: f64) -> u64 {
        let last = self.latencies_us.len().saturating_sub(1);
        // The nearest rank; `q` is clamped so the index stays in range.
        let i = (last as f64 * q.clamp(0.0, 1.0)).round() as usize;
        self.latencies_us.get(i).copied().unwrap_or(0)
    }

    /// Acknowledged transactions per second.
    pub fn per_second(&self) -> f64 {
        self.acked.len() as f64 / self.elapsed.max(Duration::from_micros(1)).as_secs_f64()
    }
}

/// Called with `(client, n)` as each transaction is acknowledged.
pub type OnAck = Arc<dyn Fn(u64, u64) + Send + Sync>;

/// An [`OnAck`] that does nothing.
pub fn no_acks() -> OnAck {
    Arc::new(|_, _| {})
}

/// Runs `workload` as `plan` says and returns what was acknowledged. A client whose
/// transaction fails for good (not a retryable abort) stops, and so do the others once their
/// transaction in flight ends; the first such error is returned. A transaction whose commit
/// outcome is unknown ([`ErrorKind::CommitUnknown`]) on a database that follows recoveries
/// is counted in [`Driven::unknown`], not acknowledged, and its client goes on with its next
/// one (up to [`UNKNOWN_IN_A_ROW_MAX`] in a row); it counts as one of the plan's transactions.
/// On a database bound to its stages it fails the run, as any failure does: no newer epoch
/// comes.
pub async fn drive<W: Workload>(
    db: &Database,
    workload: Arc<W>,
    plan: &Plan,
    on_ack: OnAck,
) -> Result<Driven> {
    drive_until(db, workload, plan, on_ack, std::future::pending()).await
}

/// Commits of unknown outcome one client may meet in a row, with no acknowledgement between
/// them, before [`drive`] gives up. An epoch that ends under a client costs it one (the commit
/// in flight). Each makes the database look for a newer epoch, and one that finds the same
/// epoch again waits longer before it looks the next time (50 ms, doubled up to 1 s), so
/// twenty in a row take at least 15 s: longer than a director takes to notice a lost stage
/// (within a second) and recover, which ends the streak.
pub const UNKNOWN_IN_A_ROW_MAX: u32 = 20;

/// [`drive`], ending early once `stop` completes (a signal, say): each client finishes the
/// transaction it is in and starts no other, so nothing is cut off mid-commit, and what was
/// acknowledged until then is returned.
pub async fn drive_until<W: Workload>(
    db: &Database,
    workload: Arc<W>,
    plan: &Plan,
    on_ack: OnAck,
    stop: impl Future<Output = ()>,
) -> Result<Driven> {
    let clients = plan.clients.max(1);
    let started = Instant::now();
    let stopping = Arc::new(AtomicBool::new(false));
    let aborts = Arc::new(AtomicU64::new(0));
    let unknown = Arc::new(AtomicU64::new(0));
    let follows = db.follows_recoveries();
    let tasks: Vec<_> = (0..clients)
        .map(|c| {
            let (db, workload, on_ack, aborts, unknown, stopping) = (
                db.clone(),
                workload.clone(),
                on_ack.clone(),
                aborts.clone(),
                unknown.clone(),
                stopping.clone(),
            );
            let (span, first) = (plan.span, plan.first);
            let mut rng = SplitMix64(plan.seed ^ (c + 1).wrapping_mul(0x9e37_79b9_7f4a_7c15));
            tokio::spawn(async move {
                let mut out = (Vec::new(), Vec::new());
                let mut n = first;
                let mut unknown_in_a_row = 0;
                loop {
                    let more = match span {
                        Span::Transactions(total) => {
                            n - first < total / clients + u64::from(c < total % clients)
                        }
                        Span::For(d) => started.elapsed() < d,
                    };
                    if !more || stopping.load(Ordering::SeqCst) {
                        break;
                    }
                    let t = Instant::now();
                    let done = workload.transaction(&db, &mut rng, c, n).await;
                    let settled = settled(done, follows, &unknown, &mut unknown_in_a_row, c, n);
                    let aborted = match settled {
                        Ok(Some(aborted)) => aborted,
                        Ok(None) => {
                            n += 1;
                            continue;
                        }
                        // The run has failed: the other clients stop too, at once, rather
                        // than going on until their span ends with this one's error unsaid.
                        Err(e) => {
                            stopping.store(true, Ordering::SeqCst);
                            return Err(e);
                        }
                    };
                    out.1
                        .push(u64::try_from(t.elapsed().as_micros()).unwrap_or(u64::MAX));
                    aborts.fetch_add(aborted, Ordering::Relaxed);
                    out.0.push((c, n));
                    on_ack(c, n);
                    n += 1;
                }
                Ok::<_, Error>(out)
            })
        })
        .collect();
    let mut driven = Driven::default();
    let mut failed = None;
    let mut stop = std::pin::pin!(stop);
    let mut stopped = false;
    for mut task in tasks {
        let joined = loop {
            if stopped {
                break (&mut task).await;
            }
            tokio::select! {
                biased;
                joined = &mut task => break joined,
                () = &mut stop => {
                    stopping.store(true, Ordering::SeqCst);
                    stopped = true;
                }
            }
        };
        match joined {
            Ok(Ok((acked, latencies))) => {
                driven.acked.extend(acked);
                driven.latencies_us.extend(latencies);
            }
            Ok(Err(e)) => {
                failed.get_or_insert(e);
            }
            Err(e) => {
                failed.get_or_insert(error(ErrorKind::Unavailable(format!(
                    "a workload client stopped: {e}"
                ))));
            }
        }
    }
    if let Some(e) = failed {
        return Err(e);
    }
    driven.elapsed = started.elapsed();
    driven.latencies_us.sort_unstable();
    driven.aborts = aborts.load(Ordering::Relaxed);
    driven.unknown = unknown.load(Ordering::Relaxed);
    Ok(driven)
}

/// What a client does with the outcome of its transaction `n`: `Some` of its aborted attempts
/// when it committed; `None`, counted in `unknown`, when its commit outcome is unknown on a
/// database that `follows` recoveries (the epoch ended under its commit: whether it committed
/// is the next recovery's to say, and the client goes on, its next transaction on the newest
/// epoch); its error when it failed for good, or when it made [`UNKNOWN_IN_A_ROW_MAX`]
/// unknown outcomes in a row (each made the database look for a newer epoch: commits keep
/// failing and no new epoch comes).
fn settled(
    done: Result<u64>,
    follows: bool,
    unknown: &AtomicU64,
    in_a_row: &mut u32,
    client: u64,
    n: u64,
) -> Result<Option<u64>> {
    let e = match done {
        Ok(aborted) => {
            *in_a_row = 0;
            return Ok(Some(aborted));
        }
        // A database bound to its stages meets no newer epoch: its unknown outcome ends the run.
        Err(e) if follows && matches!(e.kind, ErrorKind::CommitUnknown(_)) => {
            tracing::warn!(client, n, error = %e, "commit outcome unknown");
            unknown.fetch_add(1, Ordering::Relaxed);
            *in_a_row += 1;
            if *in_a_row < UNKNOWN_IN_A_ROW_MAX {
                return Ok(None);
            }
            e
        }
        Err(e) => e,
    };
    tracing::error!(client, n, error = %e, "a workload client failed; the run stops");
    Err(e)
}

/// [`Database::run`], also counting the attempts that aborted.
pub async fn run_counted<T, F, Fut>(db: &Database, mut body: F) -> Result<(T, Version, u64)>
where
    F: FnMut(Transaction) -> Fut,
    Fut: Future<Output = Result<T>>,
{
    let mut attempts = 0u64;
    let (value, version) = db
        .run(|tx| {
            attempts += 1;
            body(tx)
        })
        .await?;
    Ok((value, version, attempts.saturating_sub(1)))
}

/// Every pair in `range` at the transaction's read version, read in pages.
pub async fn scan(tx: &Transaction, range: &KeyRange) -> Result<Vec<(Key, Value)>> {
    const PAGE: usize = 10_000;
    let mut out: Vec<(Key, Value)> = Vec::new();
    let mut rest = range.clone();
    loop {
        let page = tx.snapshot_get_range(&rest, PAGE, false).await?;
        let full = page.len() == PAGE;
        out.extend(page);
        let Some((last, _)) = out.last() else {
            return Ok(out);
        };
        if !full {
            return Ok(out);
        }
        let after = KeyRange::single(last.clone()).end().clone();
        match KeyRange::new(after, rest.end().clone()) {
            Ok(r) => rest = r,
            Err(_) => return Ok(out),
        }
    }
}

/// Keys one transaction of [`first_missing`] reads, at most.
const CHECK_PAGE: usize = 1_000;

/// How many times [`first_missing`] reads a page whose transaction expired (a stall longer
/// than its lifetime) before it gives up.
const PAGE_ATTEMPTS: u32 = 3;

/// The first [`CHECK_PAGE`] stored keys of `range`, read by a transaction of their own.
async fn read_page(db: &Database, range: &KeyRange) -> Result<Vec<(Key, Value)>> {
    let mut attempt = 1;
    loop {
        let read = async {
            db.begin()
                .snapshot_get_range(range, CHECK_PAGE, false)
                .await
        }
        .await;
        match read {
            Err(e)
                if matches!(e.kind, ErrorKind::TransactionExpired { .. })
                    && attempt < PAGE_ATTEMPTS =>
            {
                attempt += 1;
            }
            read => return read,
        }
    }
}

/// Of the `wanted` keys, each with what names it, the first in key order that is not stored
/// (its name), or `None`. They are read by ranges, a page of at most [`CHECK_PAGE`] stored keys
/// per transaction, so a check of any number of keys (a long run's acknowledgements, read
/// through the network) never outlives a transaction's lifetime; a page whose transaction
/// expired all the same is read again, up to [`PAGE_ATTEMPTS`] times. Each page reads at its
/// own read version: for keys that, once written, stay.
async fn first_missing<T: Copy>(db: &Database, mut wanted: Vec<(Key, T)>) -> Result<Option<T>> {
    wanted.sort_unstable_by(|a, b| a.0.cmp(&b.0));
    let Some((last, _)) = wanted.last() else {
        return Ok(None);
    };
    let end = KeyRange::single(last.clone()).end().clone();
    let mut wanted = wanted.iter().peekable();
    while let Some(&(first, name)) = wanted.peek() {
        let range = KeyRange::new(first.clone(), end.clone())?;
        let page = read_page(db, &range).await?;
        // The page starts at the first key still wanted: it decides that one and every
        // other up to the last key it read.
        let Some((read_to, _)) = page.last() else {
            return Ok(Some(*name));
        };
        let mut stored = page.iter().map(|(key, _)| key).peekable();
        while let Some((key, name)) = wanted.next_if(|(key, _)| key <= read_to) {
            while stored.next_if(|s| *s < key).is_some() {}
            if stored.peek() != Some(&key) {
                return Ok(Some(*name));
            }
        }
    }
    Ok(None)
}

fn error(kind: ErrorKind) -> Error {
    Error::new(Stage::Director, kind)
}

/// A workload's check failed: `what` says how.
fn broken(what: String) -> Error {
    error(ErrorKind::Corruption(what))
}
