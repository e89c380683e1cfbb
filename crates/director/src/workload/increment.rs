//! The Increment (ledger) workload: every acknowledged commit is applied exactly once.
//!
//! Each transaction adds 1 to a counter in the lower half of the key space (`\x10inc/<i>`) and
//! 1 to one in the upper half (`\x90inc/<j>`), which live on different storage servers and
//! resolvers once there are two of each, and writes its ledger entry `ledger/<client>/<n>`. A
//! transaction whose ledger entry is already there does nothing: it committed in an attempt
//! whose answer was lost (a commit whose outcome is unknown is retried). So at every version
//! the lower counters, the upper counters and the ledger entries all sum to the same number,
//! and every acknowledged transaction's entry is present ([`check`], [`check_acks`]).

use bytes::Bytes;
use strata_core::{Key, KeyRange, Result, Value};
use strata_testkit::rng::SplitMix64;
use strata_txn_builder::{Database, Transaction};

use super::{Workload, broken, run_counted, scan};

/// The Increment workload over `keys` counters in each half.
#[derive(Clone, Copy, Debug)]
pub struct Increment {
    /// Counters in each half (at least 1).
    pub keys: u64,
}

/// Counter `i` of the lower half.
pub fn lower(i: u64) -> Key {
    Bytes::from([&[0x10u8][..], format!("inc/{i:06}").as_bytes()].concat())
}

/// Counter `i` of the upper half.
pub fn upper(i: u64) -> Key {
    Bytes::from([&[0x90u8][..], format!("inc/{i:06}").as_bytes()].concat())
}

/// The ledger entry of transaction `n` of `client`.
pub fn ledger(client: u64, n: u64) -> Key {
    Bytes::from(format!("ledger/{client:04}/{n:08}"))
}

/// The counters of the half whose keys start with byte `first`.
fn half(first: u8) -> Result<KeyRange> {
    Ok(KeyRange::prefix(Bytes::from(
        [&[first][..], b"inc/"].concat(),
    ))?)
}

fn ledger_range() -> Result<KeyRange> {
    Ok(KeyRange::prefix(Bytes::from_static(b"ledger/"))?)
}

fn count(value: Option<&Value>) -> Result<u64> {
    match value {
        None => Ok(0),
        Some(v) => <[u8; 8]>::try_from(v.as_ref())
            .map(u64::from_le_bytes)
            .map_err(|_| broken(format!("a counter holds {} bytes, not 8", v.len()))),
    }
}

async fn add_one(tx: &Transaction, key: Key) -> Result<()> {
    let n = count(tx.get(&key).await?.as_ref())?;
    tx.set(key, Bytes::copy_from_slice(&(n + 1).to_le_bytes()));
    Ok(())
}

impl Workload for Increment {
    async fn transaction(
        &self,
        db: &Database,
        rng: &mut SplitMix64,
        client: u64,
        n: u64,
    ) -> Result<u64> {
        let (i, j) = (rng.below(self.keys), rng.below(self.keys));
        let ((), _, aborted) = run_counted(db, |tx| async move {
            let entry = ledger(client, n);
            if tx.get(&entry).await?.is_some() {
                return Ok(());
            }
            add_one(&tx, lower(i)).await?;
            add_one(&tx, upper(j)).await?;
            tx.set(entry, Bytes::from_static(b"1"));
            Ok(())
        })
        .await?;
        Ok(aborted)
    }
}

/// What [`check`] counted, all at one version.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Totals {
    /// The sum of the lower counters.
    pub lower: u64,
    /// The sum of the upper counters.
    pub upper: u64,
    /// The ledger entries.
    pub ledger: u64,
}

/// Reads both halves and the ledger in one snapshot at the newest version: the three must be
/// equal, or it is `Corruption` giving all three.
pub async fn check(db: &Database) -> Result<Totals> {
    let tx = db.begin();
    let mut sums = [0u64; 2];
    for (sum, first) in sums.iter_mut().zip([0x10u8, 0x90]) {
        for (_, v) in scan(&tx, &half(first)?).await? {
            *sum += count(Some(&v))?;
        }
    }
    let entries = scan(&tx, &ledger_range()?).await?.len() as u64;
    let totals = Totals {
        lower: sums[0],
        upper: sums[1],
        ledger: entries,
    };
    if totals.lower != totals.upper || totals.lower != totals.ledger {
        return Err(broken(format!(
            "increments applied unevenly at {}: lower counters {}, upper counters {}, ledger \
             entries {}",
            tx.read_version().await?,
            totals.lower,
            totals.upper,
            totals.ledger
        )));
    }
    Ok(totals)
}

/// Checks that the ledger entry of every acknowledged transaction `(client, n)` is stored;
/// any number, a page of them per transaction.
pub async fn check_acks(db: &Database, acked: &[(u64, u64)]) -> Result<()> {
    let wanted = acked.iter().map(|&(c, n)| (ledger(c, n), (c, n))).collect();
    match super::first_missing(db, wanted).await? {
        None => Ok(()),
        Some((client, n)) => Err(broken(format!(
            "acknowledged increment {client}/{n} lost ({} acknowledged)",
            acked.len()
        ))),
    }
}
