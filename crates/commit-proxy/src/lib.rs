//! Strata's commit proxy, where a client's commit goes: it takes client transactions, batches
//! them, and commits each batch through the sequencer, the resolvers and every log, then
//! answers each client. The director starts one or more [`BatchingProxy`] per epoch; clients
//! reach them through the [`strata_core::CommitProxy`] trait.
//!
//! For each batch, in order: a version pair from the sequencer; resolution (the batch clipped
//! to each resolver's key range, a transaction committing only if every resolver accepts it);
//! the accepted mutations, encoded as one transaction with the commit version, pushed to
//! **every** log in parallel; once all logs hold it, the version reported committed to the
//! sequencer; then each client's answer: its commit version, or a conflict, or too old.
//!
//! Batching is opportunistic: a batch takes what is queued (up to [`ProxyConfig`]'s count and
//! byte bounds), optionally waiting [`ProxyConfig::batch_window`] for more. Batches are
//! pipelined (up to [`ProxyConfig::in_flight_batches_max`] at once): versions are taken in
//! order, and resolvers and logs apply batches along the version chain, so while one batch
//! waits for its logs the next is already being resolved. The logs' group commit then makes
//! concurrent batches share a sync. A batch is formed only once the pipeline has room for
//! it, so the bound also sizes batches: a lone commit finds room and goes alone at once,
//! while under load commits gather in the queue as long as the pipeline is full, and the
//! next batch takes all of them.
//!
//! A transaction arrives encoded ([`strata_core::CommitProxy::commit`], as from across a
//! network) or, from a client in the proxy's process, as it is
//! ([`strata_core::CommitProxy::commit_transaction`]): the proxy then measures and checks it
//! as its encoding would be checked, with the same errors, and skips the encoding and the parse
//! (about 7% of the CPU of a one-key commit under load).
//!
//! # A lone commit
//!
//! A commit that finds the proxy idle (nothing queued, no batch forming or in flight, and no
//! [`ProxyConfig::batch_window`]) after a run of batches of one transaction each (two in a row;
//! a new proxy counts as having had them) would become a batch of one at once anyway, so it
//! skips the batcher: the committing task takes the version pair and runs the batch itself,
//! with no hand-off to the batcher's task, no spawned task for the batch and no wake-up for the
//! answer. With one log that is idle too, the log's own leader path writes and syncs the record
//! on the same thread, so a lone commit costs its sync plus the stages' own work. Commits that
//! arrive while a batch is in flight queue as before, to share the next batch; so does the
//! first commit after batches of several, when a loaded pipeline drains for a moment (alone it
//! would take a version, and often a sync, of its own ahead of the crowd).
//!
//! The lone batch holds the same room in the pipeline and the same place in the version order
//! as one of the batcher's (versions are still taken one batch at a time, in order). Only its
//! start belongs to the caller: if the batch has to wait on a stage (a log whose writer thread
//! does the sync, a resolver waiting for a predecessor), the rest of it is spawned on the
//! proxy's runtime at once. So a caller that gives up on the commit, or stops polling it for a
//! while, never strands a version that the logs must see: such a version would be a hole in
//! the chain (below). For the same reason a commit from outside the proxy's runtime (a task of
//! another runtime) always goes through the batcher. A panic in a lone batch (a bug) is caught
//! and stays in the proxy: the caller gets an `Unavailable` error, not the panic.
//! [`BatchingProxy::lone_commits`] counts the commits that went alone.
//!
//! What does not wait is a sync: a log that leads writes and syncs on the committing task's
//! thread, as an embedded store's commit does, so a deadline around `commit` cannot fire while
//! that sync runs, and on a disk that stalls it fires only once the sync returns. A deadline
//! that must fire during a stall belongs on another task: spawn the commit and bound the wait
//! for its task, as the director's persistence phase does. (Deadlines on other tasks, such as
//! monitoring's, are not held up: at most one fewer than the runtime's threads lead at once.)
//!
//! A failure of any stage fails the whole batch with that stage's error (its [`Stage`] names
//! it). The queue is bounded: a full proxy makes callers wait, then refuses them as
//! `Overloaded`.
//!
//! A batch reaches the logs as one encoding of its accepted mutations with the commit version
//! section, so it must fit the wire limit ([`strata_core::TRANSACTION_BYTES_MAX`]) like any
//! transaction. The proxy therefore refuses up front, as `Wire(TransactionTooLarge)`, a client
//! transaction that would not fit once that section (17 bytes) is added, and keeps
//! [`ProxyConfig::batch_bytes_max`] within the same bound: a batch that cannot be encoded
//! would be a hole in the chain (below).
//!
//! # Failed state: no hole in the chain
//!
//! Logs and resolvers accept a batch only after its predecessor, so a batch that took a version
//! pair and then could not be resolved, encoded, pushed to every log or reported leaves a hole
//! no later batch of the epoch can get past: each would wait on the missing link and fail out
//! of order, one bounded wait after another. So the first such error, or an error of the
//! sequencer handing out a version pair, ends the epoch at once (the first log to refuse a
//! push fails the batch; the pushes to the other logs are not waited for): the proxy records it
//! ([`BatchingProxy::failure`]) and answers with it every batch behind the hole, every
//! transaction still queued and every later commit, without touching a stage again. The
//! director then recovers into a new epoch. Batches ahead of the hole are not in its way and
//! finish as usual. A conflict or a too-old read version is an answer to one client, not a
//! failure. A batch that stops unfinished after taking its version (a stage panicked, a bug,
//! or the runtime shut down under it) is such a failure too, recorded as it stops: its
//! clients, the batches behind it and every later commit get that cause. A proxy fenced by a
//! newer epoch has failed too; it refuses later commits as unavailable.
//!
//! # Stall detection
//!
//! A stage that hangs instead of failing breaks nothing the proxy can see, so the proxy tracks
//! each batch in flight, from asking the sequencer for its version pair to its answer, with
//! the time it started and the stage it waits on now. [`BatchingProxy::waiting_on`] names the
//! stage the oldest batch waits on; [`BatchingProxy::health`] reports a timeout naming it once
//! that batch has been in flight longer than [`ProxyConfig::stall_timeout`], so monitoring
//! treats a chain that stopped advancing while requests wait as a failure. Tracking costs two
//! short uncontended lock operations per batch (in and out) and an atomic store per stage.
//!
//! # Limits
//!
//! | what                              | default (in [`ProxyConfig`])  | bound                     |
//! |-----------------------------------|-------------------------------|---------------------------|
//! | a client transaction              | —                             | 9,999,983 bytes (the wire limit less the commit version section) |
//! | transactions per batch            | 1,000                         | any                       |
//! | bytes per batch                   | 8 MiB                         | 9,999,983                 |
//! | transactions queued               | 10,000, then a 5 s wait       | any                       |
//! | batches in flight                 | 8                             | 1 or more (0 counts as 1) |
//! | oldest batch before `health` fails| 10 s                          | above zero                |
//!
//! # Example
//!
//! The proxy over the test kit's fakes of its stages (a real cluster passes the real ones):
//!
//! ```
//! use std::sync::Arc;
//! use bytes::Bytes;
//! use strata_commit_proxy::{BatchingProxy, ProxyConfig};
//! use strata_core::{CommitProxy, Epoch, KeyRange, LogId, LogServer, Mutation, Transaction, Version};
//! use strata_testkit::{MemoryLog, ModelResolver, StepSequencer};
//!
//! # tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap().block_on(async {
//! let epoch = Epoch(1);
//! let log = Arc::new(MemoryLog::new(LogId(0), Version(0)));
//! let proxy = BatchingProxy::new(
//!     epoch,
//!     Arc::new(StepSequencer::new(epoch, Version(0))),
//!     vec![(Bytes::new(), Arc::new(ModelResolver::new(epoch, Version(0))))],
//!     vec![log.clone() as Arc<dyn LogServer>],
//!     ProxyConfig::default(),
//! )?;
//! let tx = Transaction {
//!     write_conflicts: vec![KeyRange::single("hello")],
//!     mutations: vec![Mutation::Set { key: "hello".into(), value: "world".into() }],
//!     ..Transaction::default()
//! };
//! let version = proxy.commit(tx.encode()?).await?;
//! assert_eq!(log.entries().last().map(|e| e.version), Some(version));
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! # }).unwrap();
//! ```
//!
//! [`Stage`]: strata_core::Stage

use strata_core::{Error, ErrorKind, Stage};

mod batch;
mod config;
mod finish;
mod flight;
mod proxy;
mod stages;

pub use config::ProxyConfig;
pub use proxy::BatchingProxy;

pub(crate) fn error(kind: ErrorKind) -> Error {
    Error::new(Stage::CommitProxy, kind)
}
