//! The load generator behind `strata bench`: transactions of random reads and blind writes
//! over a key space of a million keys. The disk's fsync floor that commit latency is measured
//! against is [`strata_testkit::disk::fsync_floor`].

use bytes::Bytes;
use strata_core::Result;
use strata_testkit::rng::SplitMix64;
use strata_txn_builder::Database;

use super::{Workload, run_counted};

/// Keys the load spreads over.
pub const KEY_SPACE: u64 = 1_000_000;

/// Transactions of `keys_per_transaction` operations on random keys `bench/<n>`, each a read
/// with probability `read_fraction` and otherwise a write of `value`.
#[derive(Clone, Debug)]
pub struct Load {
    /// Operations per transaction.
    pub keys_per_transaction: u64,
    /// The value every write stores.
    pub value: Bytes,
    /// The share of operations that are reads, from 0 to 1.
    pub read_fraction: f64,
}

impl Workload for Load {
    async fn transaction(
        &self,
        db: &Database,
        rng: &mut SplitMix64,
        _client: u64,
        _n: u64,
    ) -> Result<u64> {
        // Chosen once, so retries repeat the same transaction.
        let ops: Vec<(Bytes, bool)> = (0..self.keys_per_transaction)
            .map(|_| {
                let key = Bytes::from(format!("bench/{:08}", rng.below(KEY_SPACE)));
                (key, rng.unit() < self.read_fraction)
            })
            .collect();
        let ops = &ops;
        let ((), _, aborted) = run_counted(db, |tx| async move {
            for (key, read) in ops {
                if *read {
                    tx.get(key).await?;
                } else {
                    tx.set(key.clone(), self.value.clone());
                }
            }
            Ok(())
        })
        .await?;
        Ok(aborted)
    }
}
