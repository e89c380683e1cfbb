//! The transaction log as a network service: the log calls of [`serve`](crate::serve), and
//! [`RemoteLog`], a [`LogServer`] whose calls go to one.

use async_trait::async_trait;
use bytes::Bytes;
use strata_core::{Epoch, ErrorKind, LogEntry, LogId, LogServer, LogState, Result, Stage};
use strata_core::{TRANSACTION_BYTES_MAX, Version};
use tonic::{Request, Response, Status};

use crate::client::{Link, Tagged};
use crate::proto;
use crate::proto::log_client::LogClient;
use crate::server::{Served, answered, refuse};
use crate::tls::Access;
use crate::{MESSAGE_BYTES_MAX, PULL_ENTRIES_MAX, PULL_REPLY_BYTES_MAX, fitting};

/// Keeps the first entries whose encodings fit in `budget` bytes, and always the first: an
/// entry is never larger than a transaction (10,000,000 bytes), which a message holds.
fn fit(mut entries: Vec<LogEntry>, budget: usize) -> Vec<LogEntry> {
    let keep = fitting(entries.iter().map(|e| e.payload.len() + 32), budget);
    entries.truncate(keep);
    entries
}

#[tonic::async_trait]
impl proto::log_server::Log for Served {
    async fn push(
        &self,
        request: Request<proto::PushRequest>,
    ) -> std::result::Result<Response<proto::PushReply>, Status> {
        let _call = self.admit(Stage::Log)?;
        self.internal(Stage::Log, "Log.Push")?;
        let r = request.into_inner();
        let log = self.log(r.log_id)?;
        if r.payload.len() > TRANSACTION_BYTES_MAX {
            // Held, it could never be pulled back in one message: every follower would stop
            // at it.
            return Err(refuse(
                Stage::Log,
                ErrorKind::InvalidRequest(format!(
                    "a batch of {} bytes, over the limit of {TRANSACTION_BYTES_MAX} (a batch is \
                     never larger than a transaction)",
                    r.payload.len()
                )),
            ));
        }
        self.detached(async move {
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
        let _call = self.admit(Stage::Log)?;
        self.internal(Stage::Log, "Log.Pull")?;
        let r = request.into_inner();
        let log = self.log(r.log_id)?;
        let limit = usize::try_from(r.limit)
            .unwrap_or(usize::MAX)
            .min(PULL_ENTRIES_MAX);
        let entries = answered(log.pull(Version(r.after), limit).await)?;
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
        let _call = self.admit(Stage::Log)?;
        self.internal(Stage::Log, "Log.Lock")?;
        let r = request.into_inner();
        let log = self.log(r.log_id)?;
        let state = self
            .detached(async move { log.lock(Epoch(r.epoch)).await })
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
        let _call = self.admit(Stage::Log)?;
        self.internal(Stage::Log, "Log.Pop")?;
        let r = request.into_inner();
        let log = self.log(r.log_id)?;
        self.detached(async move { log.pop(Version(r.version)).await })
            .await?;
        Ok(Response::new(proto::PopReply {}))
    }
}

/// A [`LogServer`] served elsewhere by [`serve`](crate::serve): each method is one call.
///
/// Failures of the remote log arrive as the log raised them (`Fenced`, `OutOfOrder`,
/// `Poisoned`, ...). A call that cannot reach the log, or whose connection breaks before the
/// answer, is `Unavailable`: for a push the outcome is then unknown, as for a commit whose
/// answer was lost, and recovery settles it. A push, lock or pop the server took in runs to
/// its end even when its caller stops waiting.
///
/// Every call names the log it means by its id: when the server at the address no longer
/// serves that log (another process took the port, say), its calls are refused
/// (`InvalidRequest`) instead of locking, writing or popping the wrong log.
#[derive(Clone, Debug)]
pub struct RemoteLog {
    id: LogId,
    link: Link,
    client: LogClient<Tagged>,
}

impl RemoteLog {
    /// Connects to log `expected`, served at `address` (`host:port`) with `access` (a
    /// [`ClusterId`](crate::ClusterId), or an [`Access`] with TLS credentials).
    ///
    /// Errors: `Unavailable` when nothing answers at `address`; `InvalidRequest` when the
    /// server is of another cluster, a TLS handshake failed, or it does not serve that log.
    pub async fn connect(
        address: &str,
        access: impl Into<Access>,
        expected: LogId,
    ) -> Result<RemoteLog> {
        let link = Link::connect(Stage::Log, address, access.into()).await?;
        let served = link.describe(Stage::Log).await?.logs;
        if !served.contains(&expected.0) {
            let served: Vec<String> = served.iter().map(|id| format!("log {id}")).collect();
            return Err(link.refused(
                Stage::Log,
                format!(
                    "does not serve log {expected} (it serves {})",
                    if served.is_empty() {
                        "no log".into()
                    } else {
                        served.join(", ")
                    }
                ),
            ));
        }
        Ok(RemoteLog::new(link, expected))
    }

    pub(crate) fn new(link: Link, id: LogId) -> RemoteLog {
        let client = LogClient::new(link.channel.clone())
            .max_decoding_message_size(MESSAGE_BYTES_MAX)
            .max_encoding_message_size(MESSAGE_BYTES_MAX);
        RemoteLog { id, link, client }
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
        let reply = self.client.clone().push(request).await;
        self.link.answer(Stage::Log, reply).map(|_| ())
    }

    async fn pull(&self, after: Version, limit: usize) -> Result<Vec<LogEntry>> {
        let request = proto::PullRequest {
            log_id: Some(self.id.0),
            after: after.0,
            limit: u64::try_from(limit).unwrap_or(u64::MAX),
        };
        let reply = self.client.clone().pull(request).await;
        Ok(self
            .link
            .answer(Stage::Log, reply)?
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
        let reply = self.client.clone().lock(request).await;
        let reply = self.link.answer(Stage::Log, reply)?;
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
        let reply = self.client.clone().pop(request).await;
        self.link.answer(Stage::Log, reply).map(|_| ())
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
