//! Run a whole Strata cluster inside your program: [`EmbeddedCluster`] opens a data directory,
//! recovers it and gives you a [`Database`]. This is the one Strata crate an application
//! depends on (it re-exports [`Key`], [`KeyRange`], [`Value`], [`Version`], [`Error`] and the
//! rest a user meets), and the `strata` command is built on it.
//!
//! Every stage of the commit pipeline runs in one process, on one data directory — sequencer,
//! resolvers, commit proxies, file-backed logs and redb storage servers, their counts
//! configurable — recovered by a director under a new epoch each time it starts. This is the
//! crate that composes the concrete stages (the stage crates know only each other's traits).
//!
//! - [`config`]: how many of each stage, their tuning, and the limits a layout is checked
//!   against before anything is written.
//! - [`check`]: the cross-checks of a data directory against its coordinated state, made
//!   before recovery writes anything and by `strata check`.
//! - [`coordinator`]: the coordinated state (epoch, current logs) behind [`StateStore`], in the
//!   data directory or in etcd ([`Coordination`]).
//! - [`recovery`]: one recovery attempt as named phases, ending with the persistence phase;
//!   log replay lives beside it.
//! - [`EmbeddedCluster`] and [`serve`]: the running epoch, its health check, the coordinator
//!   loop and monitoring (a failed stage ends the epoch and starts the next); the watermark
//!   task that tells storage servers what is committed and pops the logs.
//! - [`snapshot`], [`dump`] and [`status`](mod@status): what a data directory holds, read without
//!   starting an epoch.
//! - [`owner`]: one owner per data directory, taken first by every command.
//! - [`workers`]: worker processes (`strata serve --role resolver|sequencer`): their registry
//!   in etcd, the stage a worker runs, and how a recovery recruits and monitoring watches them.
//! - [`workload`]: Cycle, Increment (ledger) and the load generator, run by one driver that the
//!   `strata` command, the tests and the benches share.
//! - [`faults`]: decorators of every stage trait (and of the logs' file system) that fail an
//!   armed call, for tests.
//!
//! ```no_run
//! use strata_director::{EmbeddedCluster, EmbeddedConfig};
//!
//! # async fn example() -> strata_core::Result<()> {
//! let cluster = EmbeddedCluster::start("./strata-data".as_ref(), EmbeddedConfig::default()).await?;
//! let db = cluster.database();
//! db.run(|tx| async move {
//!     tx.set("hello".into(), "world".into());
//!     Ok(())
//! })
//! .await?;
//! # Ok(()) }
//! ```
//!
//! # Limits
//!
//! A layout is checked whole before anything is written ([`EmbeddedConfig::validate`]): 1 to
//! [`config::LOGS_MAX`] (16) logs, 1 to [`config::STORAGE_MAX`] (256) storage servers (fixed
//! once a directory holds data: re-sharding is not supported), 1 to
//! [`config::RESOLVERS_MAX`] (256) resolvers and 1 to [`config::PROXIES_MAX`] (64) commit
//! proxies. One process owns a data directory at a time ([`owner`]): every command takes its
//! lock first, and a second process fails at once, naming the holder, having read and written
//! nothing. The limits of keys, values and transactions are `strata-core`'s.
//!
//! # Layout of a data directory
//!
//! | path                    | what                                            |
//! |-------------------------|-------------------------------------------------|
//! | `strata.lock`           | the owner's lock, holding its process id        |
//! | `coordinated.json`      | the coordinated state: epoch, current logs      |
//! | `logs/<epoch>-<n>/`     | log `n` of a generation: segments, lock epoch   |
//! | `storage/<n>.redb`      | storage server `n`                              |
//!
//! # Recovery
//!
//! [`EmbeddedCluster::start`] runs one recovery as named phases, each a `tracing` span with its
//! duration ([`recovery::recover`]): check the data directory against its coordinated state,
//! writing nothing; read and lock the coordinated state under the next epoch; lock the previous
//! logs; choose the recovery version (the newest version every previous log holds); recruit new
//! logs and replay the committed history the storage servers still need; roll the storage
//! servers back to the recovery version; start sequencer, resolvers and proxies; build the
//! Transaction System Layout; write the new coordinated state; and the persistence phase: one
//! system transaction with the whole configuration (monolithic and decomposed), committed
//! through the new pipeline and read back. A failed attempt is never retried within its epoch:
//! the coordinator starts the next one, unless the failure is one no epoch can fix
//! ([`RecoveryError::Unrecoverable`]: a refused layout, damage in the data directory such as a
//! damaged or missing log).
//!
//! ## The rules recovery relies on, and where the code keeps them
//!
//! - **Committed** means held durably by every log of the generation, with every earlier
//!   version. Storage servers apply newer versions in memory but make durable only versions the
//!   director told them are committed (the watermark task in `cluster.rs`, from the
//!   sequencer's committed version; `RedbStorage::advance_committed`). So a storage server's
//!   durable version is never above the recovery version, and roll-back never undoes anything
//!   durable; recovery checks it (`inspect_directory`).
//! - **A new log's history starts with an anchor**: the predecessor of the first entry it
//!   receives, so replay from any durable storage version links into its chain (`recovery/replay.rs`).
//! - **Popping follows the slowest reader**: every log is popped by the director at the oldest
//!   durable version of all storage servers, in every layout (the watermark task).
//! - **Replay reads from a log that holds the whole range** it copies; recovery checks that it
//!   does and fails naming the range when none does. A log the coordinated state names that is
//!   missing or holds no segment is an error, never an empty log (`FileLog::open_existing`).
//! - **Replay makes progress for any queue size**: it pushes in waves that fit half of a log's
//!   queue (`recovery/replay.rs`).
//! - **No hole in the chain**: a batch that cannot be resolved, encoded or pushed to every log
//!   fails its commit proxy, and a proxy whose oldest batch stops advancing reports a stall;
//!   either ends the epoch through [`EmbeddedCluster::check_health`].
//! - **Validate, then write**: [`EmbeddedConfig::validate`] and
//!   [`EmbeddedConfig::validate_against`] run before the coordinated state is written.

use bytes::Bytes;
use strata_core::Stage;
/// The types a user of the store meets, so that this crate is the one dependency to add.
pub use strata_core::{Error, ErrorKind, Key, KeyRange, Result, Value, Version};
pub use strata_txn_builder::{Database, RetryConfig, Transaction, TransactionOptions};

pub mod check;
mod cluster;
pub mod cluster_file;
pub mod config;
pub mod coordinator;
mod dump;
pub mod faults;
mod held_log;
mod held_storage;
pub mod owner;
pub mod recovery;
pub mod sim;
pub mod snapshot;
pub mod status;
pub mod workers;
pub mod workload;

/// The README's library example, compiled by `cargo test` (it is `no_run`: it would open
/// `./strata-data`) so that it cannot rot; `examples/visits.rs` is the one that runs.
#[cfg(doctest)]
#[doc = include_str!("../../../README.md")]
pub struct ReadmeExample;

pub use check::{CheckReport, Finding, verify};
pub use cluster::{EmbeddedCluster, LEAD_WAIT, Serving, serve, serve_stages};
pub use config::EmbeddedConfig;
pub use coordinator::{CoordinatedState, Coordination, FileStateStore, StateStore};
pub use dump::{Dump, dump, dump_served};
pub use held_log::HeldLog;
pub use held_storage::HeldStorage;
pub use recovery::{PhaseTiming, RecoveryEnv, RecoveryError, RecoveryReport};
pub use snapshot::Snapshot;
pub use status::{Status, status};

/// The end of the key space: every user key (below `0xff`) and every system key sorts below.
pub const KEY_SPACE_END: &[u8] = b"\xff\xff";

fn error(kind: ErrorKind) -> Error {
    Error::new(Stage::Director, kind)
}

/// The begin keys splitting the key space into `n` parts by first byte.
pub fn split_begins(n: usize) -> Vec<Key> {
    (0..n.max(1))
        .map(|i| {
            if i == 0 {
                Key::new()
            } else {
                // i * 256 / n < 256 for i < n, so it fits a byte.
                let byte = u8::try_from(i * 256 / n).unwrap_or(u8::MAX);
                Bytes::copy_from_slice(&[byte])
            }
        })
        .collect()
}

/// The ranges of [`split_begins`], the last one ending at [`KEY_SPACE_END`].
pub fn split_ranges(n: usize) -> Result<Vec<KeyRange>> {
    let begins = split_begins(n);
    begins
        .iter()
        .enumerate()
        .map(|(i, b)| {
            let end = begins
                .get(i + 1)
                .cloned()
                .unwrap_or_else(|| Bytes::from_static(KEY_SPACE_END));
            KeyRange::new(b.clone(), end)
                .map_err(|e| error(ErrorKind::InvalidRequest(e.to_string())))
        })
        .collect()
}
