//! Strata's stages as network services, so that a stage can run in one process and be used
//! from another: a gRPC service around each strata-core stage trait, and a remote client that
//! implements the same trait, so a director, a commit proxy or a client's `Database` composes
//! local and remote stages alike.
//!
//! - [`serve`] answers, on one listener, for every stage a process runs: the [`Stages`] it
//!   publishes (on a watch channel, so a process that recovers in place serves each epoch's
//!   stages in turn).
//! - [`Stages::connect`] learns what a server serves and returns a remote stage for each, on
//!   one shared connection: [`RemoteSequencer`], [`RemoteProxy`], [`RemoteResolver`],
//!   [`RemoteStorage`], [`RemoteLog`]. Each also connects alone, to one stage.
//! - [`serve_worker`] serves a worker process: the stages it runs, and the `Worker` calls by
//!   which a director recruits it for an epoch ([`Recruiter`]) and asks what it runs, or
//!   gives the orders of a worker that holds logs ([`LogHost`]) or storage servers
//!   ([`StorageHost`]) across epochs; [`RemoteWorker`] is the director's side.
//!
//! # On the wire
//!
//! - gRPC over HTTP/2 (tonic), with protobuf messages (prost) defined in the crate's
//!   `proto/strata/v1/` files and compiled at build time by protox, a protobuf compiler in
//!   Rust: building needs nothing installed beside the Rust toolchain. Servers are tonic's;
//!   clients send their calls straight on an h2 connection from the caller's task, the
//!   message in the same write as its headers (tonic's own client passes a call through
//!   more tasks and writes it in two parts: a round trip took about twice as long).
//!   A connection lost is made again by the next call.
//! - Every call carries the caller's [`ClusterId`] in the `strata-cluster-id` metadata entry
//!   ([`CLUSTER_ID_HEADER`]). A server answers only calls of its own cluster; any other call,
//!   or one without an id, is refused (gRPC `PERMISSION_DENIED`, read by the client as an
//!   `InvalidRequest` that names both ids) before it reaches the stage.
//! - Optionally TLS, with a certificate at both ends ([`Tls`], carried by an [`Access`] that
//!   every `connect` and [`serve`] takes in place of a bare [`ClusterId`]): a server with TLS
//!   refuses, during the handshake, a client without a certificate of the cluster's
//!   authority, and a client refuses a server whose certificate is not of that authority or
//!   not for the host it dialled. With TLS 1.3 a server checks the client's certificate after
//!   the client's handshake is done, so a client learns of a refusal only with its first
//!   call, which races the connection's end: every `connect` makes one call (a description,
//!   which changes nothing) before it returns, up to five times, and a refusal it sees is an
//!   `InvalidRequest` that says so; when every try lost the race, `Unavailable` with a text
//!   that names the likely cause. A later call refused by a certificate alert (the next call
//!   after a connection is lost makes a new one) is an `InvalidRequest` too: the server read
//!   nothing. A plain client and a TLS server never understand each other. The
//!   one certificate a process holds serves for every call: roles are not told apart.
//! - Epochs travel inside the calls that have one (a push, a lock) and are fenced by the stage
//!   itself, exactly as for a local caller.
//! - A stage's error travels whole: the status details hold its stage and kind with their
//!   fields, so `Fenced`, `OutOfOrder`, `TooOld` or `Poisoned` reach the remote caller as the
//!   local caller would see them, and an I/O error keeps its kind (out of space, say) and its
//!   text. Texts are cut at 2 KiB. Anything else is `Unavailable`, an outcome unknown:
//!   failures of the connection itself (nothing listening, a connection lost before the
//!   answer), a status without the server's own failure, a kind with no message of its own.
//! - A process may serve several stages of a kind: every call names the one it means (a log
//!   by its id, the others by their index), and a server refuses a call for one it does not
//!   serve (`InvalidRequest`; `Unavailable` while it serves none of that kind, between two
//!   epochs, say): a client whose connection comes back to another log at the same address
//!   can neither lock, write, read nor pop it.
//!
//! # Limits
//!
//! - A message is at most [`MESSAGE_BYTES_MAX`] (16 MiB) either way; a larger one is refused
//!   by its reader. A push of more than a transaction's 10,000,000 bytes (a batch is never
//!   larger) is refused before the log, so every entry a log holds can be pulled back.
//! - A pull asks the log for at most [`PULL_ENTRIES_MAX`] (1,000) entries, whatever its limit,
//!   and answers with the first that fit in [`PULL_REPLY_BYTES_MAX`] (12 MiB), always at least
//!   one when there is one: the trait lets a pull return fewer than its limit, and a log
//!   follower pulls again from the last version it got.
//! - A range read asks the storage server for at most [`RANGE_ENTRIES_MAX`] (10,000) pairs,
//!   and answers with the first that fit in [`RANGE_REPLY_BYTES_MAX`] (12 MiB), with `more`
//!   set when it kept fewer than it read: the caller reads on, as after its own limit.
//! - A commit of more than a transaction's 10,000,000 bytes is refused before the proxy; key
//!   ranges with a bound longer than a range end may be (10,001 bytes) are refused before
//!   the stage.
//! - A server reads at most [`STREAMS_PER_CONNECTION_MAX`] (1,024) calls at once on one
//!   connection; a client holds the others until one ends, and opens at most 100 on a new
//!   connection until the server has said its limit.
//! - A client gives up connecting after [`CONNECT_TIMEOUT`], and pings its connection every
//!   [`KEEPALIVE_INTERVAL`]: when the server's process or host stops answering, the calls in
//!   progress fail (`Unavailable`) within [`KEEPALIVE_TIMEOUT`] of a missed ping. A call the
//!   server is still working on (a push waiting for its sync) waits as long as it would in
//!   process: the stage's own waits bound it, and a caller that wants a shorter bound drops
//!   the call (the server then finishes any call that changes a stage anyway, and waits for
//!   it before [`serve`] returns). The server pings its connections the same way, so a client
//!   host that dies mid-reply holds nothing up.
//!
//! # Example
//!
//! ```
//! use std::sync::Arc;
//! use bytes::Bytes;
//! use strata_core::{Epoch, LogId, LogServer, Version};
//! use strata_net::{ClusterId, RemoteLog, Stages};
//! use strata_testkit::MemoryLog;
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> strata_core::Result<()> {
//! let cluster = ClusterId::new("example")?;
//! let log: Arc<dyn LogServer> = Arc::new(MemoryLog::new(LogId(7), Version(0)));
//! let stages = Stages { logs: vec![log], ..Stages::default() };
//! let (_publish, published) = tokio::sync::watch::channel(Arc::new(stages));
//! let io = |e| strata_core::Error::io(strata_core::Stage::Log, e);
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.map_err(io)?;
//! let address = listener.local_addr().map_err(io)?.to_string();
//! let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
//! let everything = strata_net::Exposure::Everything; // a log is for the cluster's own calls
//! let server = tokio::spawn(strata_net::serve(
//!     cluster.clone(),
//!     everything,
//!     published,
//!     listener,
//!     async { let _ = stopped.await; },
//! ));
//!
//! let remote = RemoteLog::connect(&address, cluster.clone(), LogId(7)).await?;
//! remote.push(Epoch(1), Version(0), Version(10), Bytes::from_static(b"batch")).await?;
//! let entries = remote.pull(Version(0), 100).await?;
//! assert_eq!(entries[0].version, Version(10));
//!
//! // Or everything the server serves, at once.
//! let served = Stages::connect(&address, cluster).await?;
//! assert_eq!(served.logs[0].id(), LogId(7));
//! assert!(served.sequencer.is_none());
//!
//! let _ = stop.send(());
//! let _ = server.await;
//! # Ok(())
//! # }
//! ```

use std::time::Duration;

mod batch;
mod client;
mod cluster;
mod convert;
pub mod etcd;
mod failure;
mod h2conn;
mod inline;
mod log;
mod proxy;
mod resolver;
mod sequencer;
mod server;
mod storage;
mod tls;
mod worker;

pub use cluster::{
    CLUSTER_ID_BYTES_MAX, CLUSTER_ID_HEADER, ClusterId, STAGE_TOKEN_HEADER, same_secret,
};
pub use log::RemoteLog;
pub use proxy::RemoteProxy;
pub use resolver::RemoteResolver;
pub use sequencer::RemoteSequencer;
pub use server::{Exposure, SHUTDOWN_GRACE, Stages, serve, serve_worker};
pub use storage::RemoteStorage;
pub use tls::{Access, Tls};
pub use worker::{
    LogHost, NewLog, OpenStorage, ProxySettings, ProxyWiring, Recruiter, Recruitment, RemoteWorker,
    ResolverSettings, Role, StorageHost, StoredStorage, WorkerState,
};

/// The messages and services generated from `proto/strata/v1/`.
#[allow(missing_docs, unreachable_pub, clippy::all, clippy::pedantic)]
pub mod proto {
    tonic::include_proto!("strata.v1");
}

/// The largest message a server or client reads or writes.
pub const MESSAGE_BYTES_MAX: usize = 16 << 20;

/// The most entries a pull asks the log for, whatever the caller's limit.
pub const PULL_ENTRIES_MAX: usize = 1_000;

/// The most entry bytes one pull answers with; its first entry always goes, even a larger one
/// (an entry is at most a transaction, 10,000,000 bytes).
pub const PULL_REPLY_BYTES_MAX: usize = 12 << 20;

/// The most pairs a range read asks the storage server for, whatever the caller's limit.
pub const RANGE_ENTRIES_MAX: usize = 10_000;

/// The most pair bytes one range read answers with; its first pair always goes.
pub const RANGE_REPLY_BYTES_MAX: usize = 12 << 20;

/// The most transactions one commit call carries.
pub const COMMIT_BATCH_TRANSACTIONS_MAX: usize = 1_000;

/// The most transaction bytes one commit call carries; its first transaction always goes,
/// even a larger one (a transaction is at most 10,000,000 bytes, so a call stays under
/// [`MESSAGE_BYTES_MAX`]).
pub const COMMIT_BATCH_BYTES_MAX: usize = 12 << 20;

/// How many of the leading items whose sizes `sizes` gives fit in `budget` bytes together,
/// and never fewer than one when there is one: a message always carries its first entry, pair
/// or transaction, which alone always fits in one. The answers of pulls and range reads are
/// cut this way, and a client's batches of commits.
pub(crate) fn fitting(sizes: impl IntoIterator<Item = usize>, budget: usize) -> usize {
    let mut used = 0usize;
    let mut count = 0usize;
    for size in sizes {
        used = used.saturating_add(size);
        if used > budget && count > 0 {
            break;
        }
        count += 1;
    }
    count
}

/// How many calls a server reads at once on one connection (HTTP/2 streams); a client holds
/// its calls beyond that until one ends. This bounds the streams a client holds open, not
/// the work it can start: a call that changes a stage runs to its end even when its caller
/// cancels it.
pub const STREAMS_PER_CONNECTION_MAX: u32 = 1_024;

/// How long a client tries to connect before the connection is `Unavailable`.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// How often a client pings its connection, idle or not.
pub const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(1);

/// How long a client waits for a ping's answer before it drops the connection.
pub const KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(5);
