//! Strata's transaction log: a durable, group-committed write-ahead log that survives crashes.
//!
//! Every committed batch is pushed to every log, and a commit is acknowledged only when all
//! logs hold it on disk. The crate stands alone as a WAL: entries are opaque payloads chained
//! by version, and the API is the [`strata_core::LogServer`] trait.
//!
//! - [`FileLog`]: segment files on disk; one writer thread appends everything queued, syncs
//!   once (`fdatasync`) and acknowledges all of it (group commit).
//! - [`MemoryLog`]: the same contract in memory, without durability, for tests and benches of
//!   other stages.
//! - [`fs`]: the file-system trait all disk I/O goes through, with [`fs::SimFs`] to simulate
//!   crashes, torn writes, failing syncs and a full disk.
//!
//! # Contract
//!
//! - `push(epoch, previous, version, payload)` is accepted only when `previous` is the last
//!   version the log holds; one that arrives early waits (bounded) for its predecessor. A
//!   duplicate is `Duplicate`, a gap after the wait or a fork is `OutOfOrder`, an epoch older
//!   than the lock is `Fenced`. `Ok` comes only after the entry is synced.
//! - `pull(after, limit)` returns durable entries after `after`, in order, waiting (bounded)
//!   when there are none; `TooOld` when they were popped.
//! - `lock(epoch)` fences older epochs (the epoch is stored durably), waits for pushes accepted
//!   before it, and reports the first and last versions held.
//! - `pop(version)` deletes whole segments whose entries are all below `version`.
//! - After a failed write or sync the log is *poisoned* and refuses every push: the page cache
//!   can no longer be trusted. Reopen it to recover.
//!
//! # On disk
//!
//! A log directory holds segment files named `<base version, 20 digits>.seg` and a file
//! `epoch`. All integers are little-endian.
//!
//! Segment header (32 bytes, written and synced, then the directory synced, before any record):
//!
//! | offset | size | field                                                         |
//! |-------:|-----:|---------------------------------------------------------------|
//! |      0 |    4 | magic `STLG`                                                  |
//! |      4 |    2 | format version, 1                                             |
//! |      6 |    2 | reserved, 0                                                   |
//! |      8 |    8 | log id                                                        |
//! |     16 |    8 | base version: the `previous_version` of the segment's first record |
//! |     24 |    4 | CRC-32 of bytes 0..24                                         |
//! |     28 |    4 | reserved, 0                                                   |
//!
//! Record (24 bytes, then the payload):
//!
//! | offset | size | field                                                         |
//! |-------:|-----:|---------------------------------------------------------------|
//! |      0 |    4 | payload length `n`                                            |
//! |      4 |    4 | CRC-32 of the length, version, previous version and payload   |
//! |      8 |    8 | version                                                       |
//! |     16 |    8 | previous version (the version of the record before)           |
//! |     24 |  `n` | payload                                                       |
//!
//! `epoch` (16 bytes, replaced by write-temp, sync, rename, sync-directory): magic `STEP`, the
//! locked epoch (`u64`), CRC-32 of the first 12 bytes.
//!
//! # Recovery
//!
//! Opening a log reads every segment in version order and keeps the valid prefix. Records must
//! chain (each names the one before as its previous version, segment to segment). A torn or
//! partial record at the end of the *last* segment (a crash during an unacknowledged write) is
//! truncated and the truncation synced; any other bad record is a `Corruption` error naming the
//! file and offset, never skipped (the full decision table is in `format.rs`). An I/O error is
//! returned as such, never taken for a torn tail. The one blind spot: damage to the very last
//! record looks exactly like a torn write, and that record is dropped.
//!
//! # Limits
//!
//! | what                    | default (in [`FileLogConfig`])     |
//! |-------------------------|------------------------------------|
//! | segment size            | 64 MiB                             |
//! | payload                 | 16 MiB                             |
//! | queued bytes            | 64 MiB, then pushes wait up to 5 s and are `Overloaded` |
//! | bytes per group commit  | 8 MiB                              |
//! | wait for a predecessor  | 1 s                                |
//! | wait of an empty pull   | 100 ms                             |
//!
//! Reads (`pull`) use positional reads of recently written, page-cached data directly on the
//! calling task; the `epoch` file is written on the calling task by `lock`, which only recovery
//! calls. Everything else on disk happens on the writer thread.

mod chain;
mod file_log;
mod format;
pub mod fs;
mod memory_log;

pub use file_log::{FileLog, FileLogConfig};
pub use memory_log::MemoryLog;
