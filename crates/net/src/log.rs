//! The transaction log as a network service: [`LogService`] serves any [`LogServer`], and
//! [`RemoteLog`] is a [`LogServer`] whose calls go to one.

use std::future::Future;
use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;
use strata_core::{Epoch, Error, ErrorKind, LogEntry, LogId, LogServer, LogState, Result, Stage};
use strata_core::{TRANSACTION_BYTES_MAX, Version};
use tokio::net::TcpListener;
use tokio_util::task::TaskTracker;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::server::TcpIncoming;
use tonic::transport::{Channel, Server};
use tonic::{Request, Response, Status};

use crate::cluster::{Check, ClusterId, Tag};
use crate::failure::{from_status, to_status};
use crate::proto;
use crate::proto::log_client::LogClient;
use crate::proto::log_server::{Log, LogServer as GrpcLogServer};
use crate::{
    KEEPALIVE_INTERVAL, KEEPALIVE_TIMEOUT, MESSAGE_BYTES_MAX, PULL_ENTRIES_MAX,
    PULL_REPLY_BYTES_MAX, connect,
};

/// Serves one [`LogServer`] to [`RemoteLog`]s of its cluster (see the crate docs). Built only
/// by [`LogService::serve`], which puts the cluster check and the size limits in front of it.
pub struct LogService {
    log: Arc<dyn LogServer>,
    /// The stage calls detached from their requests, for `serve` to wait for.
    calls: TaskTracker,
}

impl LogService {
    /// Serves `log` on `listener` to calls of `cluster` until `shutdown` completes, then waits
    /// for the calls in progress to end, those whose callers gave up included: once it
    /// returns, nothing it started still runs on the log. Calls of another cluster are refused
    /// before they reach the log.
    ///
    /// The server pings each connection every [`KEEPALIVE_INTERVAL`](crate::KEEPALIVE_INTERVAL)
    /// and drops one whose peer does not answer within
    /// [`KEEPALIVE_TIMEOUT`](crate::KEEPALIVE_TIMEOUT), so a client host that dies in the
    /// middle of a reply holds neither the reply nor the shutdown.
    ///
    /// Errors: `Unavailable` when the server fails (its listener does).
    pub async fn serve(
        log: Arc<dyn LogServer>,
        cluster: ClusterId,
        listener: TcpListener,
        shutdown: impl Future<Output = ()>,
    ) -> Result<()> {
        let check = Check {
            cluster,
            stage: Stage::Log,
        };
        let calls = TaskTracker::new();
        let service = GrpcLogServer::new(LogService {
            log,
            calls: calls.clone(),
        })
        .max_decoding_message_size(MESSAGE_BYTES_MAX)
        .max_encoding_message_size(MESSAGE_BYTES_MAX);
        let incoming = TcpIncoming::from(listener).with_nodelay(Some(true));
        let served = Server::builder()
            .http2_keepalive_interval(Some(KEEPALIVE_INTERVAL))
            .http2_keepalive_timeout(Some(KEEPALIVE_TIMEOUT))
            .serve_with_incoming_shutdown(
                InterceptedService::new(service, check),
                incoming,
                shutdown,
            )
            .await;
        calls.close();
        calls.wait().await;
        served.map_err(|e| {
            Error::new(
                Stage::Log,
                ErrorKind::Unavailable(format!("log server stopped: {e}")),
            )
        })
    }

    /// Refuses a call meant for another log: its client learned the id of the log that
    /// answered at this address before, and this one is not it.
    fn check_id(&self, meant: Option<u64>) -> std::result::Result<(), Status> {
        let id = self.log.id();
        let why = match meant {
            Some(meant) if meant == id.0 => return Ok(()),
            Some(meant) => format!(
                "a call meant for log {meant} reached log {id}: another log now serves this \
                 address"
            ),
            None => format!("a call to log {id} that names no log"),
        };
        Err(to_status(&Error::new(
            Stage::Log,
            ErrorKind::InvalidRequest(why),
        )))
    }

    /// Runs `call` on the log in a task of its own, to its end, whatever becomes of the
    /// request: a caller that gives up, or a connection that breaks, drops the request's
    /// handler, and a push cut off between its admission and its sync would leave the log
    /// holding a version it never made durable.
    async fn detached<T, F>(
        &self,
        call: impl FnOnce(Arc<dyn LogServer>) -> F,
    ) -> std::result::Result<T, Status>
    where
        T: Send + 'static,
        F: Future<Output = Result<T>> + Send + 'static,
    {
        let task = self.calls.spawn(call(self.log.clone()));
        match task.await {
            Ok(result) => answered(result),
            Err(e) => Err(to_status(&Error::new(
                Stage::Log,
                ErrorKind::Unavailable(format!("the log's call did not finish: {e}")),
            ))),
        }
    }
}

fn answered<T>(result: Result<T>) -> std::result::Result<T, Status> {
    result.map_err(|e| to_status(&e))
}

/// Keeps the first entries whose encodings fit in `budget` bytes, and always the first: an
/// entry is never larger than a transaction (10,000,000 bytes), which a message holds.
fn fit(mut entries: Vec<LogEntry>, budget: usize) -> Vec<LogEntry> {
    let mut used = 0usize;
    let keep = entries
        .iter()
        .position(|e| {
            used = used.saturating_add(e.payload.len() + 32);
            used > budget
        })
        .unwrap_or(entries.len())
        .max(1);
    entries.truncate(keep);
    entries
}

#[tonic::async_trait]
impl Log for LogService {
    async fn id(
        &self,
        _: Request<proto::IdRequest>,
    ) -> std::result::Result<Response<proto::IdReply>, Status> {
        Ok(Response::new(proto::IdReply {
            log_id: self.log.id().0,
        }))
    }

    async fn push(
        &self,
        request: Request<proto::PushRequest>,
    ) -> std::result::Result<Response<proto::PushReply>, Status> {
        let r = request.into_inner();
        self.check_id(r.log_id)?;
        if r.payload.len() > TRANSACTION_BYTES_MAX {
            // Held, it could never be pulled back in one message: every follower would stop
            // at it.
            return Err(to_status(&Error::new(
                Stage::Log,
                ErrorKind::InvalidRequest(format!(
                    "a batch of {} bytes, over the limit of {TRANSACTION_BYTES_MAX} (a batch is \
                     never larger than a transaction)",
                    r.payload.len()
                )),
            )));
        }
        self.detached(move |log| async move {
            log.push(
                Epoch(r.epoch),
                Version(r.previous_version),
                Version(r.version),
                r.payload,
            )
            .await
        })
        .await?;
        Ok(Response::new(proto::PushReply {}))
    }

    async fn pull(
        &self,
        request: Request<proto::PullRequest>,
    ) -> std::result::Result<Response<proto::PullReply>, Status> {
        let r = request.into_inner();
        self.check_id(r.log_id)?;
        let limit = usize::try_from(r.limit)
            .unwrap_or(usize::MAX)
            .min(PULL_ENTRIES_MAX);
        let entries = answered(self.log.pull(Version(r.after), limit).await)?;
        let entries = fit(entries, PULL_REPLY_BYTES_MAX)
            .into_iter()
            .map(|e| proto::Entry {
                version: e.version.0,
                previous_version: e.previous_version.0,
                payload: e.payload,
            })
            .collect();
        Ok(Response::new(proto::PullReply { entries }))
    }

    async fn lock(
        &self,
        request: Request<proto::LockRequest>,
    ) -> std::result::Result<Response<proto::LockReply>, Status> {
        let r = request.into_inner();
        self.check_id(r.log_id)?;
        let state = self
            .detached(move |log| async move { log.lock(Epoch(r.epoch)).await })
            .await?;
        Ok(Response::new(proto::LockReply {
            epoch: state.epoch.0,
            first_version: state.first_version.map(|v| v.0),
            last_version: state.last_version.0,
        }))
    }

    async fn pop(
        &self,
        request: Request<proto::PopRequest>,
    ) -> std::result::Result<Response<proto::PopReply>, Status> {
        let r = request.into_inner();
        self.check_id(r.log_id)?;
        self.detached(move |log| async move { log.pop(Version(r.version)).await })
            .await?;
        Ok(Response::new(proto::PopReply {}))
    }
}

/// A [`LogServer`] served by a [`LogService`] elsewhere: each method is one call.
///
/// Failures of the remote log arrive as the log raised them (`Fenced`, `OutOfOrder`,
/// `Poisoned`, ...). A call that cannot reach the log, or whose connection breaks before the
/// answer, is `Unavailable`: for a push the outcome is then unknown, as for a commit whose
/// answer was lost, and recovery settles it. A push, lock or pop the server took in runs to
/// its end even when its caller stops waiting.
///
/// Every call names the log it means (the id it answered when the client connected): when
/// another log answers at the address later, its calls are refused (`InvalidRequest`) instead
/// of locking, writing or popping the wrong log.
#[derive(Clone, Debug)]
pub struct RemoteLog {
    id: LogId,
    peer: String,
    client: LogClient<InterceptedService<Channel, Tag>>,
}

impl RemoteLog {
    /// Connects to log `expected`, served at `address` (`host:port`) for `cluster`.
    ///
    /// Errors: `Unavailable` when nothing answers at `address`; `InvalidRequest` when the
    /// server is of another cluster, or serves another log.
    pub async fn connect(address: &str, cluster: ClusterId, expected: LogId) -> Result<RemoteLog> {
        let peer = format!("log at {address}");
        let channel = connect(Stage::Log, &peer, address).await?;
        let client = LogClient::with_interceptor(channel, Tag(cluster))
            .max_decoding_message_size(MESSAGE_BYTES_MAX)
            .max_encoding_message_size(MESSAGE_BYTES_MAX);
        let log = RemoteLog {
            id: expected,
            peer,
            client,
        };
        let reply = log.client.clone().id(proto::IdRequest {}).await;
        let id = LogId(log.answer(reply)?.log_id);
        if id != expected {
            return Err(Error::new(
                Stage::Log,
                ErrorKind::InvalidRequest(format!(
                    "{}: log {id} answers there, not log {expected}",
                    log.peer
                )),
            ));
        }
        Ok(log)
    }

    fn answer<T>(&self, reply: std::result::Result<Response<T>, Status>) -> Result<T> {
        reply
            .map(Response::into_inner)
            .map_err(|status| from_status(Stage::Log, &self.peer, &status))
    }
}

#[async_trait]
impl LogServer for RemoteLog {
    fn id(&self) -> LogId {
        self.id
    }

    async fn push(
        &self,
        epoch: Epoch,
        previous_version: Version,
        version: Version,
        payload: Bytes,
    ) -> Result<()> {
        let request = proto::PushRequest {
            log_id: Some(self.id.0),
            epoch: epoch.0,
            previous_version: previous_version.0,
            version: version.0,
            payload,
        };
        self.answer(self.client.clone().push(request).await)
            .map(|_| ())
    }

    async fn pull(&self, after: Version, limit: usize) -> Result<Vec<LogEntry>> {
        let request = proto::PullRequest {
            log_id: Some(self.id.0),
            after: after.0,
            limit: u64::try_from(limit).unwrap_or(u64::MAX),
        };
        let reply = self.answer(self.client.clone().pull(request).await)?;
        Ok(reply
            .entries
            .into_iter()
            .map(|e| LogEntry {
                version: Version(e.version),
                previous_version: Version(e.previous_version),
                payload: e.payload,
            })
            .collect())
    }

    async fn lock(&self, epoch: Epoch) -> Result<LogState> {
        let request = proto::LockRequest {
            log_id: Some(self.id.0),
            epoch: epoch.0,
        };
        let reply = self.answer(self.client.clone().lock(request).await)?;
        Ok(LogState {
            epoch: Epoch(reply.epoch),
            first_version: reply.first_version.map(Version),
            last_version: Version(reply.last_version),
        })
    }

    async fn pop(&self, version: Version) -> Result<()> {
        let request = proto::PopRequest {
            log_id: Some(self.id.0),
            version: version.0,
        };
        self.answer(self.client.clone().pop(request).await)
            .map(|_| ())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(v: u64, bytes: usize) -> LogEntry {
        LogEntry {
            version: Version(v),
            previous_version: Version(v - 1),
            payload: Bytes::from(vec![0u8; bytes]),
        }
    }

    #[test]
    fn a_pull_reply_keeps_what_fits_and_never_less_than_one_entry() {
        let entries = vec![entry(1, 100), entry(2, 100), entry(3, 100)];
        assert_eq!(fit(entries.clone(), 10_000).len(), 3);
        assert_eq!(fit(entries.clone(), 300).len(), 2);
        assert_eq!(fit(entries.clone(), 10).len(), 1);
        assert!(fit(Vec::new(), 10).is_empty());
    }
}
