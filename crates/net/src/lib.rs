//! Strata's stages as network services, so that a stage can run in one process and be used
//! from another: a gRPC service around each strata-core stage trait, and a remote client that
//! implements the same trait, so a director or a commit proxy composes local and remote stages
//! alike.
//!
//! Today: the transaction log ([`LogService`], [`RemoteLog`]). The other stages follow the
//! same pattern.
//!
//! # On the wire
//!
//! - gRPC over HTTP/2 (tonic), with protobuf messages (prost) defined in the crate's
//!   `proto/strata/v1/` files and compiled at build time by protox, a protobuf compiler in
//!   Rust: building needs nothing installed beside the Rust toolchain.
//! - Every call carries the caller's [`ClusterId`] in the `strata-cluster-id` metadata entry
//!   ([`CLUSTER_ID_HEADER`]). A server answers only calls of its own cluster; any other call,
//!   or one without an id, is refused (gRPC `PERMISSION_DENIED`, read by the client as an
//!   `InvalidRequest` that names both ids) before it reaches the stage.
//! - Epochs travel inside the calls that have one (a push, a lock) and are fenced by the stage
//!   itself, exactly as for a local caller.
//! - A stage's error travels whole: the status details hold its stage and kind with their
//!   fields, so `Fenced`, `OutOfOrder`, `TooOld` or `Poisoned` reach the remote caller as the
//!   local caller would see them, and an I/O error keeps its kind (out of space, say) and its
//!   text. Texts are cut at 2 KiB. Anything else is `Unavailable`, an outcome unknown:
//!   failures of the connection itself (nothing listening, a connection lost before the
//!   answer), a status without the server's own failure, a kind with no message of its own.
//! - Every call but the first names the log it means (the id its client connected to), and a
//!   server refuses a call meant for another log: a client whose connection comes back to
//!   another log at the same address can neither lock, write, read nor pop it.
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
//! - A client gives up connecting after [`CONNECT_TIMEOUT`], and pings its connection every
//!   [`KEEPALIVE_INTERVAL`]: when the server's process or host stops answering, the calls in
//!   progress fail (`Unavailable`) within [`KEEPALIVE_TIMEOUT`] of a missed ping. A call the
//!   server is still working on (a push waiting for its sync) waits as long as it would in
//!   process: the stage's own waits bound it, and a caller that wants a shorter bound drops
//!   the call (the server then finishes a push, lock or pop anyway, and waits for it before
//!   [`LogService::serve`] returns; see [`RemoteLog`]). The server pings its connections the
//!   same way, so a client host that dies mid-reply holds nothing up.
//!
//! # Example
//!
//! ```
//! use std::sync::Arc;
//! use bytes::Bytes;
//! use strata_core::{Epoch, LogId, LogServer, Version};
//! use strata_net::{ClusterId, LogService, RemoteLog};
//! use strata_testkit::MemoryLog;
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> strata_core::Result<()> {
//! let cluster = ClusterId::new("example")?;
//! let log: Arc<dyn LogServer> = Arc::new(MemoryLog::new(LogId(7), Version(0)));
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.map_err(|e| {
//!     strata_core::Error::io(strata_core::Stage::Log, e)
//! })?;
//! let address = listener.local_addr().map_err(|e| {
//!     strata_core::Error::io(strata_core::Stage::Log, e)
//! })?;
//! let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
//! let server = tokio::spawn(LogService::serve(log, cluster.clone(), listener, async {
//!     let _ = stopped.await;
//! }));
//!
//! let remote = RemoteLog::connect(&address.to_string(), cluster, LogId(7)).await?;
//! assert_eq!(remote.id(), LogId(7));
//! remote.push(Epoch(1), Version(0), Version(10), Bytes::from_static(b"batch")).await?;
//! let entries = remote.pull(Version(0), 100).await?;
//! assert_eq!(entries[0].version, Version(10));
//!
//! let _ = stop.send(());
//! let _ = server.await;
//! # Ok(())
//! # }
//! ```

use std::time::Duration;

use strata_core::{Error, ErrorKind, Result, Stage};
use tonic::transport::{Channel, Endpoint};

mod cluster;
mod failure;
mod log;

pub use cluster::{CLUSTER_ID_BYTES_MAX, CLUSTER_ID_HEADER, ClusterId};
pub use log::{LogService, RemoteLog};

/// The messages and services generated from `proto/strata/v1/`.
#[allow(missing_docs, unreachable_pub, clippy::all, clippy::pedantic)]
pub mod proto {
    tonic::include_proto!("strata.v1");
}

/// The largest message a server or client reads or writes.
pub const MESSAGE_BYTES_MAX: usize = 16 << 20;

/// The most entries a pull asks the log for, whatever the caller's limit.
pub const PULL_ENTRIES_MAX: usize = 1_000;

/// The most entry bytes one pull answers with (beyond its first entry).
pub const PULL_REPLY_BYTES_MAX: usize = 12 << 20;

/// How long a client tries to connect before the connection is `Unavailable`.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// How often a client pings its connection, idle or not.
pub const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(1);

/// How long a client waits for a ping's answer before it drops the connection.
pub const KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(5);

/// A connection to `address` for a client of `stage`; `peer` names it in errors.
async fn connect(stage: Stage, peer: &str, address: &str) -> Result<Channel> {
    let endpoint = Endpoint::from_shared(format!("http://{address}")).map_err(|e| {
        Error::new(
            stage,
            ErrorKind::InvalidRequest(format!("{peer}: not a host:port address: {e}")),
        )
    })?;
    endpoint
        .connect_timeout(CONNECT_TIMEOUT)
        .tcp_nodelay(true)
        .http2_keep_alive_interval(KEEPALIVE_INTERVAL)
        .keep_alive_timeout(KEEPALIVE_TIMEOUT)
        .keep_alive_while_idle(true)
        .connect()
        .await
        .map_err(|e| {
            Error::new(
                stage,
                ErrorKind::Unavailable(format!("{peer}: cannot connect: {}", causes(&e))),
            )
        })
}

/// An error and its sources, joined: the transport's own text is often only "transport
/// error", and the cause (connection refused, timed out) is in its sources.
fn causes(error: &(dyn std::error::Error + 'static)) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}
