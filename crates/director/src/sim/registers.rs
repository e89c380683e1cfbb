//! The simulation's random read/write workload, checked against a model of what may have
//! committed.
//!
//! Each client owns a few keys (its *registers*), half in the lower and half in the upper half
//! of the key space, so they live on different storage servers and resolvers where there are
//! two. A transaction reads one to three of them (a point read, or a range read over a half)
//! and then writes a fresh value to, or clears, each key it read; or, one in four, writes one
//! to three without reading anything (a blind write, committed without a read version). One
//! client's transactions follow each other, and only it writes its registers.
//!
//! The model keeps, for every register, the values it may hold now: after an acknowledged
//! commit exactly what that commit wrote; after a commit that failed (its outcome unknown: it
//! may still have committed) that value as well. Every read, in the middle of the run as at
//! its end, must return one of them: a stale value from a storage server that lost its
//! window, an uncommitted version made durable, or an acknowledged write rolled back by a
//! recovery each shows as a read outside the model.

use std::collections::BTreeMap;
use std::sync::{Mutex, PoisonError};

use bytes::Bytes;
use strata_core::{Error, ErrorKind, Key, KeyRange, Result, Stage, Value};
use strata_testkit::rng::SplitMix64;
use strata_txn_builder::{Database, Transaction};

/// Registers per client (half in each half of the key space).
const PER_CLIENT: u64 = 6;

/// The first byte of the registers of each half.
const HALVES: [u8; 2] = [0x40, 0xc0];

/// Register `k` of `client`.
fn key(client: u64, k: u64) -> Key {
    let first = HALVES[(k % 2) as usize];
    Bytes::from([&[first][..], format!("rw/{client:04}/{k:02}").as_bytes()].concat())
}

/// The registers of `client` in the half whose keys start with `first`.
fn half(client: u64, first: u8) -> Result<KeyRange> {
    Ok(KeyRange::prefix(Bytes::from(
        [&[first][..], format!("rw/{client:04}/").as_bytes()].concat(),
    ))?)
}

/// What every register may hold, across the run's boots.
#[derive(Debug, Default)]
pub(crate) struct Model {
    possible: Mutex<BTreeMap<Key, Vec<Option<Value>>>>,
}

impl Model {
    fn possible(&self) -> std::sync::MutexGuard<'_, BTreeMap<Key, Vec<Option<Value>>>> {
        self.possible.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Checks that `read` (what `key` held at `version`) is a value it may hold. It then
    /// narrows what the register may hold from now on: what was read, and what was sent after
    /// it. (The writes of one register are sent one after another, each by a transaction that
    /// read it, so a value once read can only be followed by later ones; and a read version is
    /// committed on every log, so what was read must survive any crash.)
    fn check(&self, key: &Key, read: Option<&Value>, at: &str) -> Result<()> {
        let mut possible = self.possible();
        let allowed = possible.get(key).map_or(&[None][..], Vec::as_slice);
        if let Some(at) = allowed.iter().position(|v| v.as_ref() == read) {
            if let Some(values) = possible.get_mut(key) {
                values.drain(..at);
            }
            return Ok(());
        }
        Err(Error::new(
            Stage::Director,
            ErrorKind::Corruption(format!(
                "register {} read {} {at}; it may only hold {}",
                shown(key),
                shown_value(read),
                allowed
                    .iter()
                    .map(|v| shown_value(v.as_ref()))
                    .collect::<Vec<_>>()
                    .join(" or ")
            )),
        ))
    }

    /// Records the writes of a transaction: what they are when it was acknowledged, or one
    /// more possibility when its outcome is unknown.
    fn record(&self, writes: Vec<(Key, Option<Value>)>, acknowledged: bool) {
        let mut possible = self.possible();
        for (key, value) in writes {
            let values = possible.entry(key).or_insert_with(|| vec![None]);
            if acknowledged {
                *values = vec![value];
            } else if !values.contains(&value) {
                values.push(value);
            }
        }
    }

    /// Reads every register the model knows in one snapshot, each must hold a value it may;
    /// returns how many were read.
    pub(crate) async fn check_all(&self, db: &Database) -> Result<usize> {
        let keys: Vec<Key> = self.possible().keys().cloned().collect();
        let tx = db.begin();
        let at = format!("at {}", tx.read_version().await?);
        for key in &keys {
            let read = tx.snapshot_get(key).await?;
            self.check(key, read.as_ref(), &at)?;
        }
        Ok(keys.len())
    }
}

fn shown(key: &Key) -> String {
    key.escape_ascii().to_string()
}

fn shown_value(value: Option<&Value>) -> String {
    value.map_or_else(
        || "nothing".to_owned(),
        |v| format!("\"{}\"", v.escape_ascii()),
    )
}

/// How a transaction's step failed: a read outside the model, or the pipeline.
enum Step {
    Model(Error),
    Pipeline,
}

impl From<Error> for Step {
    fn from(_: Error) -> Step {
        Step::Pipeline
    }
}

/// One transaction of `client` (its `n`th): reads some of its registers and writes or clears
/// each one read, or (one in four) writes or clears some without reading; commits. A read
/// outside the model is `Corruption` at once; any other error leaves the commit's outcome
/// unknown (the model then allows both). Returns whether it was acknowledged.
pub(crate) async fn transaction(
    model: &Model,
    db: &Database,
    rng: &mut SplitMix64,
    client: u64,
    n: u64,
) -> Result<bool> {
    let mut writes = Vec::new();
    let body = async {
        let tx = db.begin();
        // The registers it writes: those it read, or, in a blind write, ones it did not.
        let mut read = Vec::new();
        if rng.below(4) == 0 {
            // Reads nothing, so asks for no read version: the commit is its only call.
            for _ in 0..1 + rng.below(3) {
                let key = key(client, rng.below(PER_CLIENT));
                if !read.contains(&key) {
                    read.push(key);
                }
            }
        } else {
            let at = format!(
                "at {} (client {client}, transaction {n})",
                tx.read_version().await?
            );
            read_some(model, &tx, rng, client, &at, &mut read).await?;
        }
        for (i, key) in read.into_iter().enumerate() {
            let value = (rng.below(4) != 0).then(|| Bytes::from(format!("{client}/{n}/{i}")));
            match &value {
                Some(v) => tx.set(key.clone(), v.clone()),
                None => tx.clear(key.clone()),
            }
            writes.push((key, value));
        }
        // Possible from the moment the commit is sent: a crash may end this task before the
        // answer, and the commit may still have gone through.
        model.record(writes.clone(), false);
        Ok::<_, Step>(tx.commit().await?)
    };
    match body.await {
        Ok(_) => {
            model.record(writes, true);
            Ok(true)
        }
        Err(Step::Model(e)) => Err(e),
        // The outcome is unknown, and its writes were already possible.
        Err(Step::Pipeline) => Ok(false),
    }
}

/// Reads some of `client`'s registers in `tx`, each checked against the model, and adds them
/// to `read`: one half's by a range read, or one to three by point reads.
async fn read_some(
    model: &Model,
    tx: &Transaction,
    rng: &mut SplitMix64,
    client: u64,
    at: &str,
    read: &mut Vec<Key>,
) -> std::result::Result<(), Step> {
    if rng.below(3) == 0 {
        // A range read over one half's registers: every one of them is checked, present
        // or not.
        let first = HALVES[rng.below(2) as usize];
        let range = half(client, first).map_err(Step::Model)?;
        let found: BTreeMap<Key, Value> = tx
            .get_range(&range, PER_CLIENT as usize + 1, false)
            .await?
            .into_iter()
            .collect();
        for k in (0..PER_CLIENT).filter(|k| HALVES[(k % 2) as usize] == first) {
            let key = key(client, k);
            model
                .check(&key, found.get(&key), at)
                .map_err(Step::Model)?;
            read.push(key);
        }
    } else {
        for _ in 0..1 + rng.below(3) {
            let key = key(client, rng.below(PER_CLIENT));
            if read.contains(&key) {
                continue;
            }
            let value = tx.get(&key).await?;
            model.check(&key, value.as_ref(), at).map_err(Step::Model)?;
            read.push(key);
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_model_allows_what_may_have_committed_and_nothing_else() {
        let model = Model::default();
        let k = key(3, 1);
        let v = |s: &'static str| Some(Bytes::from_static(s.as_bytes()));
        // Never written: absent.
        model.check(&k, None, "").unwrap();
        assert!(model.check(&k, v("a").as_ref(), "").is_err());
        model.record(vec![(k.clone(), v("a"))], true);
        model.check(&k, v("a").as_ref(), "").unwrap();
        assert!(model.check(&k, None, "").is_err());
        // Unknown: either, until one is read.
        model.record(vec![(k.clone(), v("b"))], false);
        model.record(vec![(k.clone(), v("c"))], false);
        model.check(&k, v("a").as_ref(), "").unwrap();
        model.check(&k, v("c").as_ref(), "").unwrap();
        model.check(&k, v("b").as_ref(), "").unwrap_err();
        model.check(&k, v("a").as_ref(), "").unwrap_err();
        model.check(&k, v("c").as_ref(), "").unwrap();
        // Acknowledged: only that again.
        model.record(vec![(k.clone(), None)], true);
        model.check(&k, None, "").unwrap();
        let e = model.check(&k, v("b").as_ref(), "at v9").unwrap_err();
        assert!(e.to_string().contains("read \"b\" at v9"), "{e}");
    }

    #[test]
    fn registers_fall_in_both_halves_and_their_ranges() {
        for k in 0..PER_CLIENT {
            let first = HALVES[(k % 2) as usize];
            assert!(half(7, first).unwrap().contains(&key(7, k)));
            assert!(!half(8, first).unwrap().contains(&key(7, k)));
            assert!(
                !half(7, HALVES[1 - (k % 2) as usize])
                    .unwrap()
                    .contains(&key(7, k))
            );
        }
    }
}
