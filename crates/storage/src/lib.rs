//! Strata's storage server: it keeps the data of some key ranges (its shards) on disk and
//! answers reads at any recent version. It learns of writes by following a transaction log:
//! it pulls committed batches in version order and applies the mutations of its shards. The
//! director runs one or more per cluster; client transactions read from them through the
//! [`strata_core::StorageServer`] trait.
//!
//! [`RedbStorage`] implements [`strata_core::StorageServer`]. Recent versions (the MVCC
//! window) live in memory: per key, every write with its version; range clears kept as
//! ranges. Older versions, once known committed, are written to a **redb** file, with the
//! durable version, in one synced write transaction on a blocking thread every
//! [`StorageConfig::flush_interval`]; then the log may pop below them. A range read merges the
//! window over a redb snapshot ([`strata_core::merge`]). [`stored_at`] and
//! [`durable_version_at`] read a file without opening a server and without writing it, for
//! recovery and `strata check`.
//!
//! # Contract
//!
//! - Only committed versions become durable. A version is committed once every log of the
//!   generation holds it durably, with every earlier version. With two or more logs the log a
//!   server follows can be ahead of the others: it holds a batch the others never got, which
//!   was therefore never committed and which recovery will roll back. The server applies such
//!   batches in memory like any other, but keeps them out of redb until it learns they are
//!   committed through [`RedbStorage::advance_committed`]. So the durable version is always at
//!   or below the version recovery will choose, and rolling back never has to undo anything
//!   durable. A cluster's director reports the sequencer's committed version now and then; a
//!   standalone user with a single log can report each version once its push is acknowledged
//!   (as below). Until something is reported nothing new becomes durable and the window grows.
//! - With [`StorageConfig::pop_log`] the server pops its log below its durable version after
//!   each flush. That suits one server on one log only: with several servers per log, or several
//!   logs, turn it off and pop each log centrally below the smallest durable version of all the
//!   servers that read it.
//! - Mutations apply in version order, and in order within a version. An atomic operation
//!   ([`strata_core::AtomicOp`]) applies to its key's value just before it, from the window or
//!   else from redb (read on a blocking thread before the apply takes the state lock), and is
//!   kept as the set of its result: reads, flushes, roll backs and restarts see only sets.
//!   Replaying entries over the same durable state gives the same values.
//! - A restart opens redb, reads the durable version and pulls from the log after it: nothing
//!   applied twice, nothing lost. A file holds the shards it was first opened for: opening it
//!   for others is `Corruption` (a file of another server). A new file is made under a
//!   temporary name and renamed into place, so a crash never leaves half a database.
//! - Reads wait (bounded) for their version to be applied (`FutureVersion` after the bound);
//!   reads below the durable version are `TooOld`; keys outside the server's shards are
//!   `WrongShard`. All redb work runs on tokio's blocking threads.
//! - `roll_back(v)` drops applied versions above `v` and takes `v` as the known committed
//!   version (recovery chose it, so every log holds it; anything above is gone). It refuses to
//!   go below the durable version. Recovery never asks for that: it chooses a version every log
//!   holds, which is at least every committed version, and the durable version is at most the
//!   known committed version. [`RedbStorage::follow`] moves a running server to another log.
//! - **A damaged file** (a page zeroed, overwritten or with flipped bits, outside redb) is
//!   `Corruption` naming the file and what failed, never a panic, never `Unavailable` or `Io`;
//!   a genuine I/O error stays `Io` (naming the file too). [`RedbStorage::open`] runs redb's
//!   integrity check ([`StorageConfig::check_integrity`], on by default; it reads the whole
//!   file, about 1 s per GB) and [`durable_version_at`], which recovery calls first, always
//!   does, so damage is found before anything is served: redb does not verify checksums on
//!   reads, and without the check a damaged page can make it panic or return wrong values.
//!   Every commit is two-phase, so damage to the newest commit is reported rather than
//!   silently replaced by the previous one. Every redb call also runs under `catch_unwind`: a
//!   panic inside redb is `Corruption` too. A server whose read or flush met damage records it
//!   and fails every later read with it (as when its apply loop fails), without touching the
//!   file again, and stops applying and flushing; recovery has to replace it.
//!
//! # Limits
//!
//! | what                          | limit                                                  |
//! |-------------------------------|--------------------------------------------------------|
//! | versions in memory            | [`StorageConfig::window_versions`], default [`strata_core::MVCC_WINDOW_VERSIONS`] (5,000,000), *plus* up to one [`StorageConfig::flush_interval`] of versions (default 500 ms) and everything applied but not yet known committed |
//! | a read's wait for its version | [`StorageConfig::read_wait`], default 1 s              |
//! | a range read                  | within one shard of the server; at most `limit` pairs  |
//! | keys and values               | as the wire format ([`strata_core::KEY_BYTES_MAX`], [`strata_core::VALUE_BYTES_MAX`]) |
//! | opening a file                | about 1 s per GB with the integrity check              |
//!
//! A file is opened by one server at a time (redb locks it); [`stored_at`] and
//! [`durable_version_at`] need it closed. Memory grows with the window: until
//! [`RedbStorage::advance_committed`] is called nothing leaves it. It needs a tokio runtime.
//!
//! # Inside
//!
//! `server.rs` holds the [`RedbStorage`] handle and its state; `read.rs` the reads;
//! `background.rs` the apply and flush loops; `window.rs` the in-memory versions; `atomic.rs`
//! the values atomic operations apply to; `files.rs`
//! creating, opening and closing the file and reading it without a server; `overlay.rs` the
//! read-only backend that makes that possible; `codec.rs` the tables and records; `errors.rs`
//! the mapping of redb's errors and panics.
//!
//! # Example
//!
//! A server over a redb file in a temporary directory, following an in-memory log:
//!
//! ```
//! use std::sync::Arc;
//! use strata_core::{Epoch, KeyRange, LogId, LogServer, Mutation, StorageServer, Version, wire};
//! use strata_storage::{RedbStorage, StorageConfig, stored_at};
//! use strata_testkit::MemoryLog;
//!
//! # tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap().block_on(async {
//! let dir = tempfile::tempdir().unwrap();
//! let path = dir.path().join("storage.redb");
//! let log = Arc::new(MemoryLog::new(LogId(1), Version(0)));
//! let shards = vec![KeyRange::new("", "\u{7f}").unwrap()];
//! // A window of no versions: whatever is known committed may become durable at once.
//! let config = StorageConfig { window_versions: 0, ..StorageConfig::default() };
//! let storage = RedbStorage::open(&path, shards.clone(), log.clone(), config).await?;
//!
//! let set = |k: &str, v: &str| Mutation::Set { key: k.to_owned().into(), value: v.to_owned().into() };
//! let batch = wire::encode_parts(None, &[], &[], &[set("k", "v"), set("m", "w")], Some(Version(10))).unwrap();
//! log.push(Epoch(1), Version(0), Version(10), batch).await?;
//! // The only log acknowledged the push: version 10 is committed and may become durable.
//! storage.advance_committed(Version(10));
//! // The read waits until version 10 is applied.
//! assert_eq!(storage.get("k".into(), Version(10)).await?, Some("v".into()));
//! assert_eq!(storage.get("k".into(), Version(9)).await?, None);
//! // A range read from the end of the range, one pair at most: more remain.
//! let read = storage.get_range(KeyRange::new("a", "z").unwrap(), Version(10), 1, true).await?;
//! assert_eq!(read.entries, vec![("m".into(), "w".into())]);
//! assert!(read.more);
//!
//! // Made durable now rather than at the next tick; then the file says so, read without a server.
//! storage.flush().await?;
//! assert_eq!(storage.durable_version().await?, Version(10));
//! storage.close().await;
//! let stored = stored_at(&path)?;
//! assert_eq!((stored.durable, stored.shards), (Version(10), Some(shards)));
//! # Ok::<(), strata_core::Error>(())
//! # }).unwrap();
//! //! ```

mod atomic;
pub mod backend;
mod background;
mod blocking;
mod codec;
mod errors;
mod files;
mod keymap;
mod overlay;
mod read;
mod server;
mod window;

pub use files::{Stored, durable_version_at, stored_at};
pub use server::{RedbStorage, StorageConfig};
