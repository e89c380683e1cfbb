//! FoundationDB's Cycle workload: `ring/node/<i>` holds the index of the next node; a transaction
//! reads three links a -> b -> c -> d and rewires them a -> c -> b -> d, so the ring stays one
//! ring of all nodes whatever commits or aborts. Each transaction also writes an
//! acknowledgement key `ring/ack/<client>/<n>`, so a crash test can check that every
//! transaction it saw acknowledged survived.

use bytes::Bytes;
use strata_core::{Error, ErrorKind, Key, Result, Stage};
use strata_testkit::rng::SplitMix64;
use strata_txn_builder::Database;

use super::{Reads, Workload, run_counted};

/// The Cycle workload on a ring of `nodes` (see [`ensure_ring`]).
#[derive(Clone, Copy, Debug)]
pub struct Cycle {
    /// The ring's size.
    pub nodes: u64,
}

impl Workload for Cycle {
    async fn transaction(
        &self,
        db: &Database,
        rng: &mut SplitMix64,
        client: u64,
        n: u64,
    ) -> Result<u64> {
        rewire(db, self.nodes, rng, client, n).await
    }
}

/// The key of ring node `i`.
pub fn node(i: u64) -> Key {
    Bytes::from(format!("ring/node/{i:06}"))
}

/// The key holding the ring's size.
pub fn count_key() -> Key {
    Bytes::from_static(b"ring/meta/nodes")
}

/// The key counting the runs of Cycle on the ring (see [`claim_run`]).
pub fn runs_key() -> Key {
    Bytes::from_static(b"ring/meta/runs")
}

/// How far apart the transaction numbers of two runs start (see [`claim_run`]): no run
/// numbers 2^40 transactions of one client.
pub const RUN_NUMBERS: u64 = 1 << 40;

/// Claims the next run of Cycle on the ring, in a transaction of its own: the number its
/// clients' first transaction takes ([`Plan::first`](super::Plan::first)), `RUN_NUMBERS`
/// after the run before's (the first run claimed starts at `RUN_NUMBERS`, clear of the runs
/// that number from 0 themselves), so the acknowledgement keys of two runs never coincide
/// and a crash test's check of one run's acknowledgements is not satisfied by an earlier
/// run's.
///
/// Errors: `Corruption` when the stored count is not a number, `InvalidRequest` when the
/// numbers are used up (2^24 runs); either way nothing is written.
pub async fn claim_run(db: &Database) -> Result<u64> {
    let (run, _, _) = run_counted(db, |tx| async move {
        let claimed = match tx.get(&runs_key()).await? {
            Some(v) => std::str::from_utf8(&v)
                .ok()
                .and_then(|s| s.parse::<u64>().ok())
                .ok_or_else(|| {
                    Error::new(
                        Stage::Director,
                        ErrorKind::Corruption(format!(
                            "the ring's run count ({}) is not a number",
                            strata_core::printable(&v)
                        )),
                    )
                })?,
            None => 0,
        };
        let run = claimed + 1;
        if run >= u64::MAX / RUN_NUMBERS {
            return Err(Error::new(
                Stage::Director,
                ErrorKind::InvalidRequest(format!(
                    "the ring has had {claimed} runs: no transaction numbers are left"
                )),
            ));
        }
        tx.set(runs_key(), Bytes::from(run.to_string()));
        Ok(run)
    })
    .await?;
    Ok(run * RUN_NUMBERS)
}

/// The acknowledgement key of transaction `n` of `client`.
pub fn ack(client: u64, n: u64) -> Key {
    Bytes::from(format!("ring/ack/{client:04}/{n:08}"))
}

fn number(v: &[u8]) -> Result<u64> {
    std::str::from_utf8(v)
        .ok()
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| broken("a link is not a number"))
}

fn broken(why: &str) -> Error {
    Error::new(
        Stage::Director,
        ErrorKind::Corruption(format!("ring broken: {why}")),
    )
}

/// Nodes written per transaction when a ring is created: a node takes about 40 bytes of a
/// transaction, so a chunk stays far below the transaction size limit, and a ring of the
/// command's largest size (1,000,000 keys) takes 100 transactions.
pub const NODES_PER_TRANSACTION: u64 = 10_000;

/// Creates a ring of `keys` nodes (at least 4) unless one exists; returns its size.
///
/// The nodes are written [`NODES_PER_TRANSACTION`] at a time and the ring's size last: a ring
/// exists only once its size is stored, so a creation cut short leaves no ring, and the next
/// call writes every node again.
pub async fn ensure_ring(db: &Database, keys: u64) -> Result<u64> {
    if let Some(stored) = db.begin().snapshot_get(&count_key()).await? {
        return number(&stored);
    }
    let keys = keys.max(4);
    let mut first = 0;
    while first < keys {
        let last = (first + NODES_PER_TRANSACTION).min(keys);
        db.run(|tx| async move {
            for i in first..last {
                tx.set(node(i), Bytes::from(((i + 1) % keys).to_string()));
            }
            Ok(())
        })
        .await?;
        first = last;
    }
    let ((), _) = db
        .run(|tx| async move {
            if tx.get(&count_key()).await?.is_none() {
                tx.set(count_key(), Bytes::from(keys.to_string()));
            }
            Ok(())
        })
        .await?;
    let stored = db
        .begin()
        .snapshot_get(&count_key())
        .await?
        .ok_or_else(|| broken("no ring"))?;
    number(&stored)
}

/// One Cycle transaction of `client` (its `n`th), from a node `rng` picks, retried until it
/// commits or fails for good; writes the acknowledgement key `ack(client, n)`. Returns how
/// many attempts aborted.
pub async fn rewire(
    db: &Database,
    nodes: u64,
    rng: &mut SplitMix64,
    client: u64,
    n: u64,
) -> Result<u64> {
    let a = rng.below(nodes);
    let link = |v: Option<Bytes>| {
        v.ok_or_else(|| broken("missing node"))
            .and_then(|v| number(&v))
    };
    let ((), _, aborted) = run_counted(db, |tx| async move {
        let b = link(tx.get(&node(a)).await?)?;
        let c = link(tx.get(&node(b)).await?)?;
        let d = link(tx.get(&node(c)).await?)?;
        tx.set(node(a), Bytes::from(c.to_string()));
        tx.set(node(c), Bytes::from(b.to_string()));
        tx.set(node(b), Bytes::from(d.to_string()));
        tx.set(ack(client, n), Bytes::from_static(b"1"));
        Ok(())
    })
    .await?;
    Ok(aborted)
}

/// Walks the ring from node 0 at the newest version: it must visit every node once and come
/// back. Returns the ring's size; a broken ring is `Corruption` saying how.
pub async fn check_ring(db: &Database) -> Result<u64> {
    check_ring_in(&db.begin()).await
}

/// [`check_ring`] on what `reads` answers (a transaction, or a [`crate::Snapshot`] of a data
/// directory).
pub async fn check_ring_in(reads: &impl Reads) -> Result<u64> {
    let stored = reads
        .read(&count_key())
        .await?
        .ok_or_else(|| broken("no ring stored"))?;
    let nodes = number(&stored)?;
    let mut seen = vec![false; usize::try_from(nodes).unwrap_or(0)];
    let mut at = 0u64;
    for _ in 0..nodes {
        let slot = seen
            .get_mut(usize::try_from(at).unwrap_or(usize::MAX))
            .ok_or_else(|| broken(&format!("link to {at}, beyond {nodes} nodes")))?;
        if *slot {
            return Err(broken(&format!("node {at} reached twice")));
        }
        *slot = true;
        let next = reads
            .read(&node(at))
            .await?
            .ok_or_else(|| broken(&format!("node {at} missing")))?;
        at = number(&next)?;
    }
    if at != 0 {
        return Err(broken("the walk does not return to node 0"));
    }
    Ok(nodes)
}

/// Checks that every acknowledged transaction `(client, n)` in `acked` is stored; a missing
/// one (the first by key) is `Corruption` naming it. Any number is checked, a page of them
/// per transaction.
pub async fn check_acks(db: &Database, acked: &[(u64, u64)]) -> Result<()> {
    let wanted = acked.iter().map(|&(c, n)| (ack(c, n), (c, n))).collect();
    match super::first_missing(db, wanted).await? {
        None => Ok(()),
        Some((client, n)) => Err(Error::new(
            Stage::Director,
            ErrorKind::Corruption(format!(
                "acknowledged transaction {client}/{n} lost ({} acknowledged)",
                acked.len()
            )),
        )),
    }
}
