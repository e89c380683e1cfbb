//! Strata's transaction log: a durable, group-committed write-ahead log that survives crashes.
//! Commit proxies push each committed batch to it, storage servers pull from it, and recovery
//! replays it; it also works alone as a write-ahead log (`examples/wal.rs`).
//!
//! Every committed batch is pushed to every log, and a commit is acknowledged only when all
//! logs hold it on disk. The crate stands alone as a WAL: entries are opaque payloads chained
//! by version, and the API is the [`strata_core::LogServer`] trait.
//!
//! - [`FileLog`]: segment files on disk; one writer thread appends everything queued, syncs
//!   once (`fdatasync`) and acknowledges all of it (group commit). A push that finds the log
//!   idle writes and syncs itself on its own thread instead (on a runtime of two threads or
//!   more, while another of them is parked), saving the two wake-ups of a trip to the writer
//!   thread and back. Records are written as whole pages with direct I/O (`O_DIRECT`), around
//!   the page cache, so the sync only flushes the disk's cache ([`FileLogConfig::direct_io`]).
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
//!   can no longer be trusted. Reopen it to recover: the open first writes the directory again
//!   and syncs it, since after a failed sync the page cache may hold records the disk never
//!   got (the writer leaves a `resync` marker for it). The pushes of the failed group commit get
//!   the I/O error itself; every later refusal is `Poisoned` carrying that first error's text
//!   ("poisoned by: i/o: ..."), as does [`FileLog::poisoned_by`].
//!
//! # On disk
//!
//! A log directory holds segment files named `<base version, 20 digits>.seg`, the files
//! `manifest` and `epoch`, and at times `spare.zeroed` (the next segment, being written full of
//! zeros), `segment.new` (a new segment before it is renamed into place) or `manifest.tmp` (a
//! manifest before it replaces the old one); recovery removes those three. A log poisoned by a
//! failed write or sync leaves an empty `resync` file, which the next open removes once it has
//! written the directory again and synced it. All integers are
//! little-endian.
//!
//! Segment header (32 bytes; a new segment's header is written and synced under a temporary
//! name, then the file is renamed into place and the directory synced, before any record):
//!
//! | offset | size | field                                                         |
//! |-------:|-----:|---------------------------------------------------------------|
//! |      0 |    4 | magic `STLG`                                                  |
//! |      4 |    2 | format version: 2 (this build writes it; format 1 is still read) |
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
//! |      0 |    4 | length word: payload length `n` in bits 0–30; bit 31 set on the last record of each group commit |
//! |      4 |    4 | CRC-32 of bytes 8..24, the payload, then the length word      |
//! |      8 |    8 | version                                                       |
//! |     16 |    8 | previous version (the version of the record before)           |
//! |     24 |  `n` | payload                                                       |
//!
//! Format 1 differs only in the record: the length word is the plain length, and the CRC
//! covers it first (bytes 0..4, then 8..24 and the payload). A log whose newest segment is
//! format 1 starts a new, format 2 segment at its first push.
//!
//! Segments are *preallocated* ([`FileLogConfig::preallocate`], on by default): a helper
//! thread writes the next segment full of zeros and syncs it ahead of need, and records then
//! overwrite those zeros. A sync of an overwrite commits only data, no change of file size;
//! on this project's test machine (ext4 on a virtio disk) it takes half as long as a sync
//! after an append. The first segment of a log is appended to (opening a log writes no zeros);
//! a spare is asked for once 64 KiB (or a quarter of `segment_bytes`, whichever is less) is
//! written, and the log moves into it as soon as a record would otherwise append. Spares grow
//! with use: the first is 1 MiB (or four times what the log had written into its segment, when
//! that is more: a log reopened with more written), each next one is
//! asked for at half of the one before and so doubles, up to `segment_bytes`. A little-used
//! log writes, and its recovery reads, a few MiB of zeros; a busy one reaches full-size
//! segments after about as much data. Each log keeps at most one spare on disk.
//!
//! Records are written as whole 4 KiB pages with direct I/O ([`FileLogConfig::direct_io`], on
//! by default): each group's bytes together with the partial page before them (the bytes
//! already on disk, kept in memory) and zeros to the end of their last page, from a page-aligned
//! buffer, through a second handle opened with `O_DIRECT`. The `fdatasync` after it then finds
//! no dirty page to write back, only the disk's cache to flush; a lone commit's write and sync
//! on the test machine took 54-57 µs instead of 64-72 µs. The bytes rewritten before a group
//! are the ones on disk, so a write torn at any sector leaves the acknowledged records as they
//! were, and the zeros after it read as the segment's clean end. A file system that refuses
//! direct I/O (at the open, or at a write) gets the same pages through the page cache. Spare
//! segments are whole pages long, so a group never pads past their zeros; a zero-filled
//! segment written before that rule may grow by its last partial page, once. With direct I/O
//! the spares' zeros go around the page cache too, from one page-aligned buffer of zeros: the
//! kernel copies nothing and keeps no cached pages of them to write back.
//!
//! `epoch` (16 bytes, replaced by write-temp, sync, rename, sync-directory): magic `STEP`, the
//! locked epoch (`u64`), CRC-32 of the first 12 bytes.
//!
//! `manifest` (32 bytes, replaced by write-temp, sync, rename, sync-directory) names the newest
//! segment that may hold records. A new segment is installed (header synced, renamed into
//! place, directory synced), *then* the manifest is replaced to name it, and only then does a
//! record go into it: so every acknowledged record is in a segment the manifest names or in an
//! older one. It is written when the writer rolls into a new segment (once per segment, not
//! per push), at the creation of a new log, and, when opening an existing log finds it not
//! naming the newest segment (a directory written before the manifest existed, or a crash
//! between a roll's segment and its manifest), by the first `lock` or push: opening a log to
//! read it writes no manifest.
//!
//! | offset | size | field                                                         |
//! |-------:|-----:|---------------------------------------------------------------|
//! |      0 |    4 | magic `STMF`                                                  |
//! |      4 |    2 | format version: 1                                             |
//! |      6 |    2 | reserved, 0                                                   |
//! |      8 |    8 | log id                                                        |
//! |     16 |    8 | base version of the newest segment that may hold records      |
//! |     24 |    4 | CRC-32 of bytes 0..24                                         |
//! |     28 |    4 | reserved, 0                                                   |
//!
//! # Recovery
//!
//! Opening a log reads every segment in version order and keeps the valid prefix. Records must
//! chain (each names the one before as its previous version, segment to segment). An I/O
//! error is returned as such, never taken for a torn write. An open that may write then syncs
//! the newest segment before it serves anything: records a process wrote and never synced
//! before it died are read like the rest (from the page cache, or the disk's cache), and would
//! otherwise be served as held while a power loss could still take them. The full decision
//! tables are on `segment_fate` (whole segment files) and `scan_segment` (records) in
//! `format.rs`; in short:
//!
//! - Segment files: the one the manifest names must be there with a valid header; missing,
//!   empty or shorter than its header, it is `Corruption` naming the file (it may hold
//!   acknowledged records). Only a last segment *newer* than it (created, never named, so
//!   never written to) that is shorter than a header is removed as torn at creation; one with
//!   a valid header is kept, and named before the log is next written. A directory without a manifest (written
//!   before it existed) is read by the old rule: a last segment shorter than a header is
//!   removed. A damaged manifest is `Corruption`. Every check comes before any repair, so a
//!   segment or manifest found damaged or missing is reported with the directory untouched.
//! - Appended segments (format 1): a torn or partial record at the end of the *last* segment
//!   (a crash during an unacknowledged write) is truncated and the truncation synced; any
//!   other bad record is a `Corruption` error naming the file and offset, never skipped.
//! - Zero-filled segments (format 2): the pages of the group commit in flight at a crash can
//!   reach the disk in any order, so after the acknowledged records a crash leaves part of
//!   one group and zeros, and an intact record may follow a hole. The data ends at the first
//!   invalid record; what follows it is zeroed (and synced) unless a *later complete group*
//!   proves the bad record was acknowledged (a group is written only after the one before it
//!   was synced, and each group's last record carries the group-end mark): then it is
//!   `Corruption`. Segments other than the last were synced whole, so anything but zeros
//!   after their records is `Corruption`.
//!
//! The blind spots: damage to the records of the last group commit looks exactly like a torn
//! write, and those records are dropped (with appended segments: to the last record); and a
//! lost `manifest` makes the directory look like one written before it existed, so the loss of
//! the newest segment *as well* goes unseen (a lost manifest alone loses nothing: the next
//! lock or push writes a new one).
//!
//! An existing log opened with [`OpenMode::Existing`]`{ committed }` must hold `committed`, a
//! version known committed elsewhere (recovery passes the newest durable version of the
//! storage servers): records past the valid prefix are dropped as a torn write only when the
//! prefix still reaches it. Otherwise they were acknowledged, so they are damaged, not torn,
//! and the open is `Corruption` with nothing repaired. This closes the first blind spot
//! whenever a storage server has made the damaged version durable.
//!
//! [`OpenMode::ReadOnly`]`{ committed }` checks the same and reads the same valid prefix, but
//! repairs nothing: a torn tail, a segment torn at its creation and a crash's temporary files
//! stay where they are, no `LOCK` file is created, no writer starts, and `push`, `lock` and
//! `pop` are refused. Tools that look at a log without owning it open it this way.
//!
//! # Limits
//!
//! | what                    | default (in [`FileLogConfig`])     |
//! |-------------------------|------------------------------------|
//! | segment size            | 64 MiB                             |
//! | payload                 | 16 MiB (at most 2 GiB - 1: bit 31 of the length word is the group-end mark) |
//! | queued bytes            | 64 MiB, then pushes wait up to 5 s and are `Overloaded` |
//! | bytes per group commit  | 8 MiB                              |
//! | wait for a predecessor  | 1 s                                |
//! | wait of an empty pull   | 100 ms                             |
//! | preallocated segments   | on: up to one spare segment per log on disk |
//! | direct I/O              | on, where the file system allows it; writes whole 4 KiB pages |
//!
//! Reads (`pull`) of entries outside the pull cache (the newest `pull_cache_bytes` of
//! payloads) are positional reads on the calling task; with direct I/O the records written are
//! not in the page cache, so such a read goes to the disk (a follower far behind, or a log just
//! opened). The `epoch` file is written on the calling task by `lock`, which only recovery
//! calls; the spare segment's zeros are written by a short-lived helper thread; recovery, and
//! the first segment and manifest of a log, are written by the caller of `open`. Everything
//! else on disk (records, rolls and the manifest they write) happens in a group commit: on the
//! writer thread, or, for a push that found the log idle (nothing queued, no group being
//! written) and another runtime thread parked, on the pushing thread, which blocks for that
//! one write and sync.
//!
//! # Example
//!
//! A log on the simulated file system: pushes along the chain, a duplicate and an older epoch
//! refused, and, after a power loss, every acknowledged push still there.
//!
//! ```
//! use std::path::Path;
//! use std::sync::Arc;
//!
//! use strata_core::{Epoch, ErrorKind, LogId, LogServer, Version};
//! use strata_tlog::fs::SimFs;
//! use strata_tlog::{FileLog, FileLogConfig};
//!
//! # tokio::runtime::Builder::new_current_thread().enable_time().build().unwrap().block_on(async {
//! let open = |fs: &SimFs| {
//!     let config = FileLogConfig::default();
//!     FileLog::open_with(Arc::new(fs.clone()), Path::new("/log"), LogId(1), Version(0), config)
//! };
//! let fs = SimFs::new();
//! let log = open(&fs)?;
//! log.lock(Epoch(1)).await?;
//! log.push(Epoch(1), Version(0), Version(10), "a".into()).await?; // synced when Ok
//! log.push(Epoch(1), Version(10), Version(20), "b".into()).await?;
//!
//! let again = log.push(Epoch(1), Version(10), Version(20), "b".into()).await.unwrap_err();
//! assert!(matches!(again.kind, ErrorKind::Duplicate { .. }));
//! log.lock(Epoch(2)).await?;
//! let old = log.push(Epoch(1), Version(20), Version(30), "c".into()).await.unwrap_err();
//! assert!(old.is_fenced());
//!
//! // Power is lost now: only what was synced survives, which is every acknowledged push.
//! let after_crash = fs.crash_image(0);
//! drop(log);
//! let log = open(&after_crash)?;
//! let held: Vec<Version> = log.pull(Version(0), 10).await?.iter().map(|e| e.version).collect();
//! assert_eq!(held, [Version(10), Version(20)]);
//! assert_eq!(log.locked_epoch()?, Epoch(2));
//! # Ok::<(), strata_core::Error>(())
//! # }).unwrap();
//! ```

mod chain;
mod config;
mod error;
mod file_log;
mod format;
pub mod fs;
mod index;
mod meta;
mod pages;
mod recover;
mod resync;
mod segment;
mod spare;
mod writer;

pub use config::{FileLogConfig, Leaders};
pub use file_log::{FileLog, OpenMode};
