//! The client side: one connection to a server, shared by the remote stages it serves, and
//! [`Stages::connect`], which learns what a server serves and builds a remote stage for each.

use std::sync::Arc;

use strata_core::{CommitProxy, Epoch, Error, ErrorKind, KeyRange, LogId, Result, Stage};
use tonic::metadata::MetadataValue;
use tonic::service::interceptor::InterceptedService;
use tonic::{Response, Status};

use crate::cluster::Tag;
use crate::failure::from_status;
use crate::h2conn::{BadAddress, Connection, NoHttp2};
use crate::proto;
use crate::server::Stages;
use crate::tls::{Access, TlsFailure};
use crate::{RemoteLog, RemoteProxy, RemoteResolver, RemoteSequencer, RemoteStorage};

/// How many calls a new connection makes, at most, to learn whether the server takes its
/// calls (see `Link::check_first_call`).
const FIRST_CALLS: usize = 5;

/// The pause before the next of those calls.
const FIRST_CALL_RETRY: std::time::Duration = std::time::Duration::from_millis(20);

/// Whether a plain connection's call failed on bytes that are not HTTP/2: a TLS server's
/// alert record, read as an HTTP/2 frame header, gives a frame longer than HTTP/2 allows,
/// which the client's own HTTP/2 layer refuses (as it does most other protocols' bytes).
fn is_tls_answer(status: &Status) -> bool {
    cause_of::<h2::Error>(status).is_some_and(|h2| {
        h2.is_go_away() && h2.is_library() && h2.reason() == Some(h2::Reason::FRAME_SIZE_ERROR)
    })
}

/// A connection whose calls carry the cluster id.
pub(crate) type Tagged = InterceptedService<Connection, Tag>;

/// The call a new connection makes first (see `Link::check_first_call`): one that changes
/// nothing.
#[derive(Clone, Copy, Debug)]
pub(crate) enum FirstCall {
    /// What the server serves: asks the stages' token when they have one.
    Describe,
    /// A worker's heartbeat: asks no token (a worker's own calls do not), so a director
    /// reaches a log worker that serves its logs under an older epoch's token.
    Heartbeat,
}

/// One connection to a server and the name its errors give it. Cheap to clone: the clones
/// share the connection, and their calls travel on it side by side (HTTP/2 streams).
#[derive(Clone, Debug)]
pub(crate) struct Link {
    pub(crate) channel: Tagged,
    /// "server at HOST:PORT", for errors.
    pub(crate) peer: String,
}

impl Link {
    /// Connects to the server at `address` (`host:port`) with `access`; `stage` is the stage
    /// a failure to connect is reported for. With TLS the handshake is part of the
    /// connection: a server or a certificate refused by either end is an `InvalidRequest`
    /// that says which (another attempt would be refused the same way).
    pub(crate) async fn connect(stage: Stage, address: &str, access: Access) -> Result<Link> {
        Link::connect_checked(stage, address, access, FirstCall::Describe).await
    }

    /// [`Link::connect`], its first call `first`.
    pub(crate) async fn connect_checked(
        stage: Stage,
        address: &str,
        access: Access,
        first: FirstCall,
    ) -> Result<Link> {
        let peer = format!("server at {address}");
        let token = match access.token() {
            Some(token) => Some(MetadataValue::try_from(token).map_err(|e| {
                Error::new(
                    stage,
                    ErrorKind::InvalidRequest(format!(
                        "{peer}: a stage token that is no header value: {e}"
                    )),
                )
            })?),
            None => None,
        };
        let tag = Tag {
            cluster: access.cluster().clone(),
            token,
        };
        let tls = access.tls().map(crate::tls::Tls::client);
        let channel = Connection::connect(address, tls).await.map_err(|e| {
            let kind = if let Some(bad) = e.downcast_ref::<BadAddress>() {
                ErrorKind::InvalidRequest(format!("{peer}: {bad}"))
            } else if let Some(refused) = e.downcast_ref::<NoHttp2>() {
                ErrorKind::InvalidRequest(format!("{peer}: {refused}"))
            } else if let Some(failed) = TlsFailure::of(&*e) {
                ErrorKind::InvalidRequest(format!("{peer}: the TLS handshake failed: {failed}"))
            } else {
                ErrorKind::Unavailable(format!("{peer}: cannot connect: {}", causes(&*e)))
            };
            Error::new(stage, kind)
        })?;
        let link = Link {
            channel: InterceptedService::new(channel, tag),
            peer,
        };
        link.check_first_call(stage, access.tls().is_some(), first)
            .await?;
        Ok(link)
    }

    /// Makes one call, `first`, to learn whether the server takes this connection's calls at
    /// all.
    ///
    /// With TLS 1.3 a client finishes its handshake before the server checks its
    /// certificate, so a refusal arrives with the first call: as the server's alert, or, when
    /// the call lost the race with the connection's end, as a connection closed or a broken
    /// pipe. Without TLS, a server that requires it reads the client's first bytes as a bad
    /// handshake and closes the connection, or answers with a TLS alert, which reads as an
    /// HTTP/2 frame of impossible size. A call made now either passes, or is refused by the
    /// server (its alert, or its own answer: another cluster's id, say), or fails in transit:
    /// then it is made again, on a new connection, up to [`FIRST_CALLS`] times, and the last
    /// failure is `Unavailable` with a text that names the likely cause.
    async fn check_first_call(&self, stage: Stage, tls: bool, first: FirstCall) -> Result<()> {
        let mut last = None;
        for _ in 0..FIRST_CALLS {
            let called = match first {
                FirstCall::Describe => {
                    let mut client =
                        proto::cluster_client::ClusterClient::new(self.channel.clone());
                    client.describe(proto::DescribeRequest {}).await.map(drop)
                }
                FirstCall::Heartbeat => {
                    let mut client = proto::worker_client::WorkerClient::new(self.channel.clone());
                    client.heartbeat(proto::HeartbeatRequest {}).await.map(drop)
                }
            };
            let status = match called {
                Ok(()) => return Ok(()),
                Err(status) => status,
            };
            if !tls && is_tls_answer(&status) {
                return Err(self.refused(
                    stage,
                    "answered with bytes that are not HTTP/2, as a TLS server answers a \
                     client without TLS: the cluster's processes may use TLS, and this one was \
                     given no TLS credentials; or this is not a Strata server's address"
                        .into(),
                ));
            }
            // Any TLS failure of this call: it describes, and changes nothing, so whatever
            // the handshake's end said (a certificate refused, a signature that did not
            // verify, which an authority of the same name with another key gives), it is
            // final.
            if let Some(failed) = TlsFailure::of(&status) {
                return Err(self.refused(stage, format!("the TLS handshake failed: {failed}")));
            }
            let error = from_status(stage, &self.peer, &status);
            let in_transit = status.details().is_empty()
                && matches!(error.kind, ErrorKind::Unavailable(_))
                && status.code() != tonic::Code::PermissionDenied;
            if !in_transit {
                return Err(Error::new(stage, error.kind));
            }
            last = Some(causes(&status));
            tokio::time::sleep(FIRST_CALL_RETRY).await;
        }
        // The last failure is all there is to go on: a server that stopped between the
        // connection and the call, or (what a lost race with the handshake's end looks like)
        // one that refused this process's certificate or its lack of one.
        let (attempts, likely) = if tls {
            (
                "TLS handshakes",
                "the server may be stopping, or may refuse this process's certificate (not \
                 of the server's authority, or expired)",
            )
        } else {
            (
                "connections",
                "the server may be stopping, or may require TLS, which this process was \
                 given no credentials for",
            )
        };
        Err(Error::new(
            stage,
            ErrorKind::Unavailable(format!(
                "{}: no call got through after {FIRST_CALLS} {attempts} (last: {}); {likely}",
                self.peer,
                last.unwrap_or_default()
            )),
        ))
    }

    /// A call's answer, or its failure as the stage raised it.
    pub(crate) fn answer<T>(
        &self,
        stage: Stage,
        reply: std::result::Result<Response<T>, Status>,
    ) -> Result<T> {
        reply
            .map(Response::into_inner)
            .map_err(|status| from_status(stage, &self.peer, &status))
    }

    /// What the server serves now; a failure is reported as `stage`'s, the stage the caller
    /// asked about.
    pub(crate) async fn describe(&self, stage: Stage) -> Result<proto::DescribeReply> {
        let mut client = proto::cluster_client::ClusterClient::new(self.channel.clone());
        self.answer(stage, client.describe(proto::DescribeRequest {}).await)
            .map_err(|e| Error::new(stage, e.kind))
    }

    /// An `InvalidRequest` of `stage` that names the server: it is not the server, or does not
    /// serve the stage, the caller asked for.
    pub(crate) fn refused(&self, stage: Stage, why: String) -> Error {
        Error::new(
            stage,
            ErrorKind::InvalidRequest(format!("{}: {why}", self.peer)),
        )
    }

    /// An answer that cannot be right (a verdict missing, a reversed range): `Unavailable` of
    /// `stage`, an outcome unknown, as for an answer lost on the way. Never trusted.
    pub(crate) fn garbled(&self, stage: Stage, why: String) -> Error {
        Error::new(
            stage,
            ErrorKind::Unavailable(format!("{}: {why}", self.peer)),
        )
    }
}

/// The first of `error` and its sources that is a `T`.
pub(crate) fn cause_of<'a, T: std::error::Error + 'static>(
    error: &'a (dyn std::error::Error + 'static),
) -> Option<&'a T> {
    let mut source = Some(error);
    while let Some(cause) = source {
        if let Some(found) = cause.downcast_ref::<T>() {
            return Some(found);
        }
        source = cause.source();
    }
    None
}

/// An error and its sources, joined: the transport's own text is often only "transport
/// error", and the cause (connection refused, timed out) is in its sources.
pub(crate) fn causes(error: &(dyn std::error::Error + 'static)) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

/// Ranges from a server's answer. A server never sends an empty or reversed range; an answer
/// that holds one is not trusted (see [`Link::garbled`]).
pub(crate) fn ranges_from_wire(
    link: &Link,
    stage: Stage,
    ranges: Vec<proto::KeyRange>,
) -> Result<Vec<KeyRange>> {
    ranges
        .into_iter()
        .map(|r| {
            KeyRange::new(r.begin, r.end)
                .map_err(|e| link.garbled(stage, format!("answered a bad key range: {e}")))
        })
        .collect()
}

impl Stages {
    /// The stages the server at `address` (`host:port`) serves now, each as a
    /// remote stage on one shared connection: its sequencer, its proxies, resolvers and
    /// storage servers by index, its logs by id. Between two epochs that may be nothing but
    /// the logs and storage servers; ask again later.
    ///
    /// The sequencer and proxies are those of the epoch served now: once the server runs
    /// another epoch, they are `Unavailable`, and the caller connects again for the new ones.
    /// Storage servers and logs outlive epochs; one that is no longer served answers
    /// `Unavailable` (none of its kind is) or `InvalidRequest` (not this one).
    ///
    /// Errors: `Unavailable` when nothing answers at `address`; `InvalidRequest` when the
    /// server is of another cluster, or a TLS handshake failed.
    pub async fn connect(address: &str, access: impl Into<Access>) -> Result<Stages> {
        let link = Link::connect(Stage::Director, address, access.into()).await?;
        let described = link.describe(Stage::Director).await?;
        let mut stages = Stages::default();
        if described.sequencer {
            let epoch = described.epoch.ok_or_else(|| {
                link.garbled(Stage::Director, "serves a sequencer of no epoch".into())
            })?;
            stages.sequencer = Some(Arc::new(RemoteSequencer::new(link.clone(), Epoch(epoch))));
        }
        for index in 0..described.proxies {
            let proxy = RemoteProxy::on(link.clone(), index).await?;
            // Each proxy's epoch is asked apart from the description: a recovery in between
            // would give a sequencer of one epoch and proxies of the next, which could never
            // commit what it reads.
            if described.epoch.is_some_and(|e| e != proxy.epoch().0) {
                return Err(Error::new(
                    Stage::Director,
                    ErrorKind::Unavailable(format!(
                        "{}: moved to {} while connecting; connect again",
                        link.peer,
                        proxy.epoch()
                    )),
                ));
            }
            stages.proxies.push(Arc::new(proxy));
        }
        for index in 0..described.resolvers {
            stages
                .resolvers
                .push(Arc::new(RemoteResolver::new(link.clone(), index)));
        }
        for (index, shards) in (0u32..).zip(described.storage) {
            let shards = ranges_from_wire(&link, Stage::Storage, shards.shards)?;
            stages
                .storage
                .push(Arc::new(RemoteStorage::new(link.clone(), index, shards)));
        }
        for id in described.logs {
            stages
                .logs
                .push(Arc::new(RemoteLog::new(link.clone(), LogId(id))));
        }
        Ok(stages)
    }
}
