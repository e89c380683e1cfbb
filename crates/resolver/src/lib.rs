//! Strata's resolver: decides which transactions of a batch may commit.
//!
//! A transaction conflicts when one of its read ranges intersects a write committed after its
//! read version, counting the writes of transactions accepted earlier in the same batch. The
//! resolver keeps the write ranges of the last [`strata_core::MVCC_WINDOW_VERSIONS`] versions
//! and refuses reads older than that as too old. It never sees mutations, only conflict ranges
//! ([`strata_core::TransactionConflicts`]).
//!
//! - [`ConflictHistory`]: the synchronous data structure (runs of immutable, arena-packed step
//!   functions; see its docs for the design and its costs). Usable on its own.
//! - [`WindowResolver`]: the [`strata_core::Resolver`] stage: epoch fencing and the
//!   `previous_version` chain, with a bounded wait for a predecessor.
//! - [`ShardMap`] and [`combine_verdicts`] (defined in `strata_core::shard`, re-exported):
//!   several resolvers sharing the key space, and what that costs.
//!
//! What it is not: durable. A resolver's history lives in memory; after a recovery the new
//! resolvers start empty at the recovery version, and every read version older than it is then
//! too old or sees no conflict from before the recovery, exactly as in FoundationDB (a recovery
//! moves versions forward by more than the MVCC window).
//!
//! # Limits
//!
//! | what                                  | bound                                         |
//! |---------------------------------------|-----------------------------------------------|
//! | window                                | [`HistoryConfig::window_versions`], 5,000,000 by default |
//! | batches per run                       | [`HistoryConfig::max_run_batches`], 256       |
//! | transactions per batch                | [`ResolverConfig::batch_transactions_max`], 100,000 |
//! | wait for a predecessor                | [`ResolverConfig::predecessor_wait`], 1 s     |
//!
//! # Example
//!
//! ```
//! use strata_core::{KeyRange, TransactionConflicts, Verdict, Version};
//! use strata_resolver::ConflictHistory;
//!
//! let mut history = ConflictHistory::default();
//! let t = |rv: u64, read: &str, write: &str| TransactionConflicts {
//!     read_version: Some(Version(rv)),
//!     read_conflicts: vec![KeyRange::single(read.to_owned())],
//!     write_conflicts: vec![KeyRange::single(write.to_owned())],
//! };
//! // Two transactions read at version 1; the first writes what the second read.
//! let verdicts = history.resolve(Version(2), &[t(1, "x", "y"), t(1, "y", "z")]);
//! assert_eq!(verdicts, vec![Verdict::Committed, Verdict::Conflict]);
//! ```

mod history;
mod resolver;
mod run;

pub use history::{ConflictHistory, HistoryConfig, HistoryStats};
pub use resolver::{ResolverConfig, WindowResolver};
pub use strata_core::shard::{Shard, ShardMap, combine_verdicts};
