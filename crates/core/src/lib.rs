//! The words every Strata crate shares: keys, values, versions and transactions, their byte
//! form on the wire, the system keys, and the trait each stage of the commit pipeline
//! implements. Whoever writes or tests a stage uses it directly; an application needs only
//! `strata-director`, which re-exports the types it meets.
//!
//! This crate holds traits and plain data only. It starts no task, touches no disk and depends
//! on no stage: the resolver, the logs, storage, the sequencer and the commit proxy each
//! implement a trait defined here and talk to each other only through these traits, so any
//! stage can be used, tested and benchmarked alone (the dependency rule: a stage depends on
//! this crate and on no other stage).
//!
//! - [`types`]: [`Key`], [`Value`], [`KeyRange`], [`Version`], [`Epoch`], [`Mutation`],
//!   [`Transaction`].
//! - [`atomic`]: [`AtomicOp`], the atomic add, max and min on little-endian integers that a
//!   [`Mutation::Atomic`] carries, and the one function that applies them. The storage servers
//!   apply them, in version order, to the value a key holds; so a transaction need not read
//!   the key, adds no read conflict for it, and concurrent atomic operations never conflict.
//! - [`wire`]: the versioned, sectioned, CRC-checked byte form of a transaction, read section by
//!   section through [`TransactionView`].
//! - [`system`]: the `\xff/system/` keys and the configuration the persistence phase stores.
//! - [`traits`]: [`Sequencer`], [`Resolver`], [`LogServer`], [`StorageServer`],
//!   [`CommitProxy`], each method with its contract.
//! - [`shard`]: the resolvers' key ranges, and clipping a resolve batch to them. It stays here,
//!   not in the commit proxy that splits batches with it, because three crates speak it: the
//!   director builds the map, the proxy splits and merges with it, and the resolver's tests
//!   check that sharded resolvers decide like one.
//! - [`merge`]: the range merge of a newer layer of writes over older stored pairs, shared by
//!   storage and the transaction builder.
//! - [`chain`]: admission along the `previous_version` chain, the rule the logs and the
//!   resolvers share.
//! - [`Error`]: what crosses a stage boundary; it names the failing [`Stage`].
//!
//! # Limits
//!
//! | what                  | limit                                 |
//! |-----------------------|---------------------------------------|
//! | key                   | [`KEY_BYTES_MAX`] = 10,000 bytes      |
//! | value                 | [`VALUE_BYTES_MAX`] = 100,000 bytes   |
//! | atomic operand        | 1 to [`VALUE_BYTES_MAX`] bytes        |
//! | encoded transaction   | [`TRANSACTION_BYTES_MAX`] = 10,000,000 bytes |
//! | MVCC window           | [`MVCC_WINDOW_VERSIONS`] = 5,000,000 versions |
//! | transaction lifetime  | [`TRANSACTION_LIFETIME_MAX`] = 5 s (the MVCC window at 1,000,000 versions a second) |
//!
//! The sizes are checked when a transaction is encoded and again when it is decoded, each with
//! its own [`WireError`]. The lifetime is checked by the client before each read and the
//! commit ([`ErrorKind::TransactionExpired`]); the window by storage and the resolvers
//! ([`ErrorKind::TooOld`]).
//!
//! # Example
//!
//! ```
//! use strata_core::{KeyRange, Mutation, Transaction, TransactionView, Version};
//!
//! let tx = Transaction {
//!     read_version: Some(Version(1_000)),
//!     read_conflicts: vec![KeyRange::prefix("user/")?],
//!     write_conflicts: vec![KeyRange::single("user/42")],
//!     mutations: vec![Mutation::Set { key: "user/42".into(), value: "ada".into() }],
//! };
//! let bytes = tx.encode()?;
//! // A resolver reads only the conflict sections.
//! let conflicts = TransactionView::parse(bytes.clone())?.conflicts()?;
//! assert_eq!(conflicts.read_version, Some(Version(1_000)));
//! assert_eq!(Transaction::decode(&bytes)?, tx);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

pub mod atomic;
pub mod blocking;
pub mod buggify;
pub mod chain;
pub mod error;
pub mod merge;
pub mod shard;
pub mod system;
pub mod traits;
pub mod types;
pub mod version_cell;
pub mod wire;

pub use atomic::AtomicOp;
pub use blocking::Blocking;
pub use error::{Error, ErrorKind, Result, Stage};
pub use traits::{
    CommitProxy, LogEntry, LogId, LogServer, LogState, RangeRead, ResolveBatch, Resolver,
    Sequencer, StorageServer, Verdict, VersionPair,
};
pub use types::{
    Epoch, KEY_BYTES_MAX, Key, KeyRange, KeyRangeError, MVCC_WINDOW_VERSIONS, Mutation,
    RANGE_END_BYTES_MAX, TRANSACTION_BYTES_MAX, TRANSACTION_LIFETIME_MAX, Transaction,
    TransactionConflicts, VALUE_BYTES_MAX, Value, Version, parse_printable, printable,
};
pub use wire::{TransactionView, WireError};
