//! Strata's storage server: holds the data of some key ranges, applies committed mutations
//! from a log in version order, and answers reads at any version of the MVCC window.
//!
//! - Recent versions live in memory (the window, [`strata_core::MVCC_WINDOW_VERSIONS`] by
//!   default): per key, every write with its version; range clears kept as ranges.
//! - Versions older than the window are written to **redb** together with the durable version
//!   in one write transaction (committed with immediate durability, i.e. synced), on a blocking
//!   thread, every [`StorageConfig::flush_interval`]. Then the log may pop below them.
//! - A restart opens redb, reads the durable version and pulls from the log after it: nothing
//!   applied twice, nothing lost.
//! - Reads wait (bounded) for their version to be applied (`FutureVersion` after the bound);
//!   reads below the durable version are `TooOld`; keys outside the server's shards are
//!   `WrongShard`. All redb work runs on tokio's blocking threads.
//! - `roll_back(v)` drops applied versions above `v`; it refuses to go below the durable
//!   version, which recovery never asks for (durable versions are older than the window, and
//!   the window is older than any commit recovery could discard).
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
//! // The read waits until version 10 is applied.
//! assert_eq!(storage.get("k".into(), Version(10)).await?, Some("v".into()));
//! assert_eq!(storage.get("k".into(), Version(9)).await?, None);
//! # Ok::<(), strata_core::Error>(())
//! # }).unwrap();
//! ```

mod server;
mod window;

pub use server::{RedbStorage, StorageConfig, durable_version_at};
