//! Strata's resolver: decides which transactions of a batch may commit, by checking what each
//! one read against what was written since. Commit proxies call it for every batch, through the
//! [`strata_core::Resolver`] trait; a cluster may split the key space among several.
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
//! # Contract
//!
//! [`WindowResolver::resolve`](strata_core::Resolver::resolve) takes a batch of one epoch:
//!
//! - Epochs: a batch of an older epoch than the resolver's is `Fenced`; of a newer one,
//!   `InvalidRequest` (a resolver serves one epoch, and a new epoch gets new resolvers).
//! - The chain, by the rule the logs share ([`strata_core::chain::admit`]): a batch is
//!   resolved only when its `previous_version` is the last version resolved (at first, the
//!   version the resolver was created with). One that arrives early waits for its predecessor,
//!   at most [`ResolverConfig::predecessor_wait`], then is `OutOfOrder`; a version already
//!   resolved is `Duplicate`; a `previous_version` older than the last one resolved (a fork) is
//!   `OutOfOrder`; a `version` not above `previous_version` is `InvalidRequest`. A refused
//!   batch changes nothing.
//! - Verdicts: one per transaction, in order. A transaction is `Conflict` when one of its read
//!   ranges intersects a write recorded after its read version, counting the writes of the
//!   transactions before it in the same batch that were `Committed` (only those record their
//!   writes, at the batch's version); `TooOld` when its read version is older than the window
//!   or than the version the resolver started at (naming that oldest version, for the client's
//!   error); otherwise `Committed`. A transaction without read ranges is always `Committed`.
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
//!
//! The stage, along the version chain: a batch that arrives before its predecessor waits for
//! it, and a batch resolved once is refused the second time.
//!
//! ```
//! use strata_core::{
//!     Epoch, ErrorKind, KeyRange, ResolveBatch, Resolver, TransactionConflicts, Verdict, Version,
//! };
//! use strata_resolver::{ResolverConfig, WindowResolver};
//!
//! # tokio::runtime::Builder::new_current_thread().enable_time().build().unwrap().block_on(async {
//! let resolver = WindowResolver::new(Epoch(1), Version(100), ResolverConfig::default());
//! let batch = |previous: u64, version: u64| ResolveBatch {
//!     epoch: Epoch(1),
//!     previous_version: Version(previous),
//!     version: Version(version),
//!     transactions: vec![TransactionConflicts {
//!         read_version: Some(Version(100)),
//!         read_conflicts: vec![KeyRange::single("k")],
//!         write_conflicts: vec![KeyRange::single("k")],
//!     }],
//! };
//! // 110 -> 120 arrives first and waits for 100 -> 110.
//! let (second, first) = tokio::join!(resolver.resolve(batch(110, 120)), resolver.resolve(batch(100, 110)));
//! assert_eq!(first?, vec![Verdict::Committed]);
//! // It read "k" at 100, and the batch at 110 wrote it.
//! assert_eq!(second?, vec![Verdict::Conflict]);
//! assert_eq!(resolver.last_version(), Version(120));
//!
//! let again = resolver.resolve(batch(110, 120)).await.unwrap_err();
//! assert!(matches!(again.kind, ErrorKind::Duplicate { .. }));
//! # Ok::<(), strata_core::Error>(())
//! # }).unwrap();
//! ```

mod history;
mod resolver;
mod run;

pub use history::{ConflictHistory, HistoryConfig, HistoryStats};
pub use resolver::{ResolverConfig, WindowResolver};
pub use strata_core::shard::{Shard, ShardMap, combine_verdicts};
