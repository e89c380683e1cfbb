//! Strata's storage server: holds the data of some key ranges, applies mutations from a log in
//! version order, and answers reads at any version of the MVCC window.
//!
//! - Recent versions live in memory (the window, [`strata_core::MVCC_WINDOW_VERSIONS`] by
//!   default): per key, every write with its version; range clears kept as ranges.
//! - Versions older than the window and **known committed** are written to **redb** together
//!   with the durable version in one write transaction (committed with immediate durability,
//!   i.e. synced), on a blocking thread, every [`StorageConfig::flush_interval`]. Then the log
//!   may pop below them.
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
//! - A restart opens redb, reads the durable version and pulls from the log after it: nothing
//!   applied twice, nothing lost.
//! - Reads wait (bounded) for their version to be applied (`FutureVersion` after the bound);
//!   reads below the durable version are `TooOld`; keys outside the server's shards are
//!   `WrongShard`. All redb work runs on tokio's blocking threads.
//! - `roll_back(v)` drops applied versions above `v` and takes `v` as the known committed
//!   version (recovery chose it, so every log holds it; anything above is gone). It refuses to
//!   go below the durable version. Recovery never asks for that: it chooses a version every log
//!   holds, which is at least every committed version, and the durable version is at most the
//!   known committed version.
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
//! ```
//! use std::sync::Arc;
//! use strata_core::{Epoch, KeyRange, LogId, LogServer, Mutation, StorageServer, Version, wire};
//! use strata_storage::{RedbStorage, StorageConfig};
//! use strata_tlog::MemoryLog;
//!
//! # tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap().block_on(async {
//! let dir = tempfile::tempdir().unwrap();
//! let log = Arc::new(MemoryLog::new(LogId(1), Version(0)));
//! let storage = RedbStorage::open(
//!     &dir.path().join("storage.redb"),
//!     vec![KeyRange::new("", "\u{7f}").unwrap()],
//!     log.clone(),
//!     StorageConfig::default(),
//! ).await?;
//! let batch = wire::encode_parts(None, &[], &[], &[Mutation::Set { key: "k".into(), value: "v".into() }], Some(Version(10))).unwrap();
//! log.push(Epoch(1), Version(0), Version(10), batch).await?;
//! // The only log acknowledged the push: version 10 is committed and may become durable.
//! storage.advance_committed(Version(10));
//! // The read waits until version 10 is applied.
//! assert_eq!(storage.get("k".into(), Version(10)).await?, Some("v".into()));
//! assert_eq!(storage.get("k".into(), Version(9)).await?, None);
//! # Ok::<(), strata_core::Error>(())
//! # }).unwrap();
//! ```

mod background;
mod codec;
mod errors;
mod files;
mod overlay;
mod read;
mod server;
mod window;

pub use files::{Stored, durable_version_at, stored_at};
pub use server::{RedbStorage, StorageConfig};
