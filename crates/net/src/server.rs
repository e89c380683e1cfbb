//! One server for every stage a process runs: [`serve`] answers the calls of every service on
//! one listener, for the stages [`Stages`] names at the moment of each call.

use std::future::Future;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use strata_core::{
    CommitProxy, Epoch, Error, ErrorKind, LogId, LogServer, Resolver, Result, Sequencer, Stage,
    StorageServer,
};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio_util::task::TaskTracker;
use tokio_util::task::task_tracker::TaskTrackerToken;
use tonic::Status;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Server;
use tonic::transport::server::TcpIncoming;

use crate::cluster::Check;
use crate::failure::{to_status, to_status_as};
use crate::inline::RunToEnd;
use crate::proto;
use crate::tls::Access;
use crate::worker::Recruiter;
use crate::{KEEPALIVE_INTERVAL, KEEPALIVE_TIMEOUT, MESSAGE_BYTES_MAX, STREAMS_PER_CONNECTION_MAX};

/// The stages one process serves, or, on a client, the remote stages one server offers
/// ([`Stages::connect`](crate::Stages::connect)).
///
/// Proxies, resolvers and storage servers are known by their index here; logs by their
/// [`LogId`]. A process that runs the stages of one epoch after another (a director that
/// recovers in place) publishes each epoch's stages on a [`watch`] channel, and [`serve`]
/// answers every call for the stages published at that moment: between two epochs it serves
/// `Stages::default()`, nothing.
#[derive(Clone, Default)]
pub struct Stages {
    /// The sequencer, if this process runs it.
    pub sequencer: Option<Arc<dyn Sequencer>>,
    /// Commit proxies, by index.
    pub proxies: Vec<Arc<dyn CommitProxy>>,
    /// Resolvers, by index.
    pub resolvers: Vec<Arc<dyn Resolver>>,
    /// Storage servers, by index.
    pub storage: Vec<Arc<dyn StorageServer>>,
    /// Transaction logs, found by their id (two with the same id: the first answers).
    pub logs: Vec<Arc<dyn LogServer>>,
    /// A secret every call must carry (in [`STAGE_TOKEN_HEADER`](crate::STAGE_TOKEN_HEADER),
    /// see [`Access::with_token`](crate::Access::with_token)) while these stages are served;
    /// `None`: the cluster id is enough. For stages served to the processes one director
    /// recruited, not to whoever holds the cluster id. ASCII letters and digits.
    pub token: Option<String>,
}

impl std::fmt::Debug for Stages {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Stages")
            .field("epoch", &self.epoch())
            .field("sequencer", &self.sequencer.is_some())
            .field("proxies", &self.proxies.len())
            .field("resolvers", &self.resolvers.len())
            .field("storage", &self.storage.len())
            .field(
                "logs",
                &self.logs.iter().map(|l| l.id()).collect::<Vec<_>>(),
            )
            .finish()
    }
}

impl Stages {
    /// The epoch these stages run for: the sequencer's, or else the first proxy's; `None` for
    /// stages that outlive epochs (logs, storage servers) served alone.
    pub fn epoch(&self) -> Option<Epoch> {
        self.sequencer
            .as_ref()
            .map(|s| s.epoch())
            .or_else(|| self.proxies.first().map(|p| p.epoch()))
    }
}

/// How long [`serve`] waits, once told to stop, for its connections to close: calls in
/// progress end (and a client that reads its answer meanwhile gets it). A connection still open
/// afterwards is left behind: every call it makes from then on is refused, and `serve` waits
/// for the calls it had started (each bounded by its stage's own waits) before it returns.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

/// Which calls a server answers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Exposure {
    /// Only what a client's `Database` needs: read versions, commits, reads of storage, and
    /// the stages' descriptions. The cluster's own calls (log pushes, locks, pulls and pops,
    /// versions handed out or reported, batches resolved, storage rolled back) are refused
    /// (`PERMISSION_DENIED`), and logs and resolvers are not described; a commit that writes
    /// the cluster's own keys (from `\xff` on, where the configuration recovery reads lives)
    /// is refused. For a server that clients reach: none of them can fence, pop or roll back
    /// the cluster under it, or rewrite its configuration.
    Clients,
    /// Every call: for the processes of one cluster, which call each other's stages.
    ///
    /// The cluster id is a guard against a process given the wrong address, not a password:
    /// it travels in the clear. Whoever reaches the port with the id (and, with TLS, a
    /// certificate of the cluster's authority) can lock or pop a log, so serve everything only
    /// where only the cluster's own processes reach it.
    Everything,
}

/// Serves the stages published on `stages` on `listener`, to calls of `access`'s cluster, until
/// `shutdown` completes; then waits for the stage calls in progress to end, those whose
/// callers gave up included: once it returns, nothing it started still runs on a stage.
/// Calls of another cluster are refused before they reach a stage. With TLS credentials in
/// `access`, every connection is TLS and must present a certificate of the cluster's authority:
/// any other is refused during its handshake, before a call is read.
///
/// Every service (log, sequencer, resolver, storage, commit proxy, and the `Cluster` service
/// that describes what is served) answers on the one listener. A call for a stage this process
/// does not serve now is refused: `Unavailable` while nothing of its kind is served (between
/// two epochs), `InvalidRequest` when others of its kind are (the caller names a log, proxy,
/// resolver or storage server that is not here).
///
/// Each call that changes a stage (a push, lock or pop; a version handed out or reported; a
/// batch resolved; a roll back; a commit) runs to its end whatever becomes of its caller: on
/// the request's task while the caller waits, on a task of its own once it goes away. A call
/// cut off between its admission and its end (a push admitted but never synced) would leave
/// the stage holding what it never finished.
///
/// The server pings each connection every [`KEEPALIVE_INTERVAL`](crate::KEEPALIVE_INTERVAL)
/// and drops one whose peer does not answer within
/// [`KEEPALIVE_TIMEOUT`](crate::KEEPALIVE_TIMEOUT), so a client host that dies in the
/// middle of a reply holds neither the reply nor the shutdown.
///
/// Only the calls `exposure` allows are answered.
///
/// Errors: `Unavailable` when the server fails (its listener does).
pub async fn serve(
    access: impl Into<Access>,
    exposure: Exposure,
    stages: watch::Receiver<Arc<Stages>>,
    listener: TcpListener,
    shutdown: impl Future<Output = ()>,
) -> Result<()> {
    serve_stages(access.into(), exposure, stages, None, listener, shutdown).await
}

/// Serves a worker process, as [`serve`] serves stages, every call: `worker` answers the
/// director's recruitments and heartbeats (see [`Recruiter`]) and publishes on `stages` the
/// stage it runs for the epoch it was recruited for, which is served as [`serve`] serves.
/// The process of a cluster's own, reached only by the cluster's processes. One rule of a
/// server for clients holds here too: its commit proxies refuse a transaction that writes
/// system keys (from `\xff` on). Clients hold the cluster id and learn a proxy worker's
/// address from the layout, and one bad configuration key would fail every later recovery;
/// the director writes those keys through a proxy in its own process.
///
/// Errors: `Unavailable` when the server fails (its listener does).
pub async fn serve_worker(
    access: impl Into<Access>,
    worker: Arc<dyn Recruiter>,
    stages: watch::Receiver<Arc<Stages>>,
    listener: TcpListener,
    shutdown: impl Future<Output = ()>,
) -> Result<()> {
    serve_stages(
        access.into(),
        Exposure::Everything,
        stages,
        Some(worker),
        listener,
        shutdown,
    )
    .await
}

async fn serve_stages(
    access: Access,
    exposure: Exposure,
    stages: watch::Receiver<Arc<Stages>>,
    worker: Option<Arc<dyn Recruiter>>,
    listener: TcpListener,
    shutdown: impl Future<Output = ()>,
) -> Result<()> {
    let cluster = access.cluster().clone();
    let calls = TaskTracker::new();
    let shared = Arc::new(Shared {
        stages,
        worker,
        exposure,
        calls: calls.clone(),
        stopped: Mutex::new(false),
    });
    let check = |stage, to_stages| Check {
        cluster: cluster.clone(),
        stage,
        stages: shared.stages.clone(),
        to_stages,
    };
    macro_rules! service {
        ($server:ty, $stage:expr) => {
            service!($server, $stage, true)
        };
        ($server:ty, $stage:expr, $to_stages:expr) => {
            InterceptedService::new(
                <$server>::new(Served(shared.clone()))
                    .max_decoding_message_size(MESSAGE_BYTES_MAX)
                    .max_encoding_message_size(MESSAGE_BYTES_MAX),
                check($stage, $to_stages),
            )
        };
    }
    let incoming = TcpIncoming::from(listener).with_nodelay(Some(true));
    let (begun, shutting) = tokio::sync::oneshot::channel::<()>();
    let mut builder = Server::builder();
    if let Some(tls) = access.tls() {
        // Checked when the credentials were loaded (`Tls::from_pem`).
        builder = builder.tls_config(tls.server()).map_err(|e| {
            Error::new(
                Stage::Director,
                ErrorKind::InvalidRequest(format!(
                    "cannot serve with the TLS credentials: {}",
                    crate::client::causes(&e)
                )),
            )
        })?;
    }
    let served = builder
        .http2_keepalive_interval(Some(KEEPALIVE_INTERVAL))
        .http2_keepalive_timeout(Some(KEEPALIVE_TIMEOUT))
        .max_concurrent_streams(STREAMS_PER_CONNECTION_MAX)
        .add_service(service!(
            proto::cluster_server::ClusterServer<Served>,
            Stage::Director
        ))
        .add_service(service!(proto::log_server::LogServer<Served>, Stage::Log))
        .add_service(service!(
            proto::sequencer_server::SequencerServer<Served>,
            Stage::Sequencer
        ))
        .add_service(service!(
            proto::resolver_server::ResolverServer<Served>,
            Stage::Resolver
        ))
        .add_service(service!(
            proto::storage_server::StorageServer<Served>,
            Stage::Storage
        ))
        .add_service(service!(
            proto::proxy_server::ProxyServer<Served>,
            Stage::CommitProxy
        ))
        .add_service(service!(
            proto::worker_server::WorkerServer<Served>,
            Stage::Director,
            false
        ))
        .serve_with_incoming_shutdown(incoming, async {
            shutdown.await;
            let _ = begun.send(());
        });
    let served = tokio::select! {
        served = served => served,
        // Connections that do not close within the grace (one that never finished its
        // handshake holds the transport's graceful shutdown forever) are left behind,
        // refused every call from now on.
        () = async {
            match shutting.await {
                Ok(()) => tokio::time::sleep(SHUTDOWN_GRACE).await,
                Err(_) => std::future::pending().await,
            }
        } => {
            tracing::warn!("connections still open after the shutdown grace are dropped");
            Ok(())
        }
    };
    shared.stop();
    calls.close();
    calls.wait().await;
    served.map_err(|e| {
        Error::new(
            Stage::Director,
            ErrorKind::Unavailable(format!("server stopped: {e}")),
        )
    })
}

/// What every service of one server shares.
pub(crate) struct Shared {
    stages: watch::Receiver<Arc<Stages>>,
    /// The worker that answers recruitments, in a worker process.
    worker: Option<Arc<dyn Recruiter>>,
    exposure: Exposure,
    /// The stage calls detached from their requests, for `serve` to wait for.
    calls: TaskTracker,
    /// Set once `serve` stops: no stage is served, and no call detached, from then on. A lock,
    /// not a flag: a call is detached while it is held, so none slips in after `serve`
    /// finished waiting for them.
    stopped: Mutex<bool>,
}

impl Shared {
    /// Stops serving every stage, to every connection, those left open included.
    fn stop(&self) {
        *self.stopped.lock().unwrap_or_else(PoisonError::into_inner) = true;
    }
}

/// The handler of every service of one server (each service's impl is in its stage's module).
#[derive(Clone)]
pub(crate) struct Served(pub(crate) Arc<Shared>);

/// A refusal of `stage`, as a status.
pub(crate) fn refuse(stage: Stage, kind: ErrorKind) -> Status {
    to_status(&Error::new(stage, kind))
}

/// `result`'s error as a status.
pub(crate) fn answered<T>(result: Result<T>) -> std::result::Result<T, Status> {
    result.map_err(|e| to_status(&e))
}

/// Refuses a call for a stage of epoch `meant` that reached the stage of epoch `served`.
///
/// With `fence`, a call of an older epoch than the one served is `Fenced`: refused before it
/// reached any stage, so definitely not done (a commit's contract). Otherwise, and for a call
/// of a newer epoch than the one served, `Unavailable` (a read version's contract: a stopped
/// sequencer's reads are unavailable).
fn same_epoch(
    stage: Stage,
    what: &str,
    served: Epoch,
    meant: Option<u64>,
    fence: bool,
) -> std::result::Result<(), Status> {
    match meant {
        Some(meant) if meant == served.0 => Ok(()),
        Some(meant) if fence && meant < served.0 => Err(refuse(
            stage,
            ErrorKind::Fenced {
                request: Epoch(meant),
                current: served,
            },
        )),
        Some(meant) => Err(refuse(
            stage,
            ErrorKind::Unavailable(format!(
                "the {what} of epoch {meant} is no longer served here; {served} is: connect \
                 again"
            )),
        )),
        None => Err(refuse(
            stage,
            ErrorKind::InvalidRequest(format!("a call to the {what} that names no epoch")),
        )),
    }
}

/// The one of `served` that `index` names, if the request names one.
fn by_index<T: ?Sized>(
    stage: Stage,
    what: &str,
    served: &[Arc<T>],
    index: Option<u32>,
) -> std::result::Result<Arc<T>, Status> {
    let Some(index) = index else {
        return Err(refuse(
            stage,
            ErrorKind::InvalidRequest(format!("a call that names no {what}")),
        ));
    };
    match served.get(index as usize) {
        Some(stage) => Ok(stage.clone()),
        None if served.is_empty() => Err(refuse(
            stage,
            ErrorKind::Unavailable(format!("no {what} is served here now")),
        )),
        None => Err(refuse(
            stage,
            ErrorKind::InvalidRequest(format!(
                "{what} {index} is not served here: this server has {} (from 0)",
                served.len()
            )),
        )),
    }
}

impl Served {
    /// Refuses `call`, one of the cluster's own calls to `stage`, unless everything is served.
    pub(crate) fn internal(&self, stage: Stage, call: &str) -> std::result::Result<(), Status> {
        match self.0.exposure {
            Exposure::Everything => Ok(()),
            Exposure::Clients => Err(to_status_as(
                tonic::Code::PermissionDenied,
                &Error::new(
                    stage,
                    ErrorKind::InvalidRequest(format!(
                        "this server serves clients only: {call} is for the cluster's own \
                         processes"
                    )),
                ),
            )),
        }
    }

    /// Admits a call: it is counted until the returned token drops, and [`serve`] waits for
    /// every call admitted before it returns, those on connections left open past the grace
    /// included. Refused (`Unavailable` of `stage`) once `serve` stopped: taken under the same
    /// lock as the stop, so none is admitted after `serve` finished waiting.
    pub(crate) fn admit(&self, stage: Stage) -> std::result::Result<TaskTrackerToken, Status> {
        let stopped = self
            .0
            .stopped
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if *stopped {
            return Err(refuse(
                stage,
                ErrorKind::Unavailable("the server is stopping".into()),
            ));
        }
        Ok(self.0.calls.token())
    }

    /// The worker this process is, if it is one.
    pub(crate) fn worker(&self) -> Option<Arc<dyn Recruiter>> {
        self.0.worker.clone()
    }

    /// Which calls this server answers.
    pub(crate) fn exposure(&self) -> Exposure {
        self.0.exposure
    }

    /// The stages served now. Called by admitted calls only ([`Served::admit`]), which
    /// `serve` waits for.
    pub(crate) fn now(&self) -> Arc<Stages> {
        self.0.stages.borrow().clone()
    }

    pub(crate) fn sequencer(&self) -> std::result::Result<Arc<dyn Sequencer>, Status> {
        self.now().sequencer.clone().ok_or_else(|| {
            refuse(
                Stage::Sequencer,
                ErrorKind::Unavailable("no sequencer is served here now".into()),
            )
        })
    }

    /// The sequencer of `epoch`: refused when the caller names no epoch, and unavailable when
    /// the sequencer served now is of another epoch (the caller's is stopped).
    pub(crate) fn sequencer_of(
        &self,
        epoch: Option<u64>,
    ) -> std::result::Result<Arc<dyn Sequencer>, Status> {
        let sequencer = self.sequencer()?;
        same_epoch(
            Stage::Sequencer,
            "sequencer",
            sequencer.epoch(),
            epoch,
            false,
        )?;
        Ok(sequencer)
    }

    /// Proxy `index` of `epoch`, as [`Served::sequencer_of`] for the sequencer.
    pub(crate) fn proxy_of(
        &self,
        index: Option<u32>,
        epoch: Option<u64>,
    ) -> std::result::Result<Arc<dyn CommitProxy>, Status> {
        // The epoch first (the proxies served are of one): a commit of an older epoch is fenced
        // (refused, not done) even when the epoch served runs no proxy of its index, so that
        // its client retries it there.
        let stages = self.now();
        if let Some(served) = stages.proxies.first() {
            same_epoch(
                Stage::CommitProxy,
                "commit proxy",
                served.epoch(),
                epoch,
                true,
            )?;
        }
        by_index(Stage::CommitProxy, "commit proxy", &stages.proxies, index)
    }

    pub(crate) fn proxy(
        &self,
        index: Option<u32>,
    ) -> std::result::Result<Arc<dyn CommitProxy>, Status> {
        by_index(
            Stage::CommitProxy,
            "commit proxy",
            &self.now().proxies,
            index,
        )
    }

    pub(crate) fn resolver(
        &self,
        index: Option<u32>,
    ) -> std::result::Result<Arc<dyn Resolver>, Status> {
        by_index(Stage::Resolver, "resolver", &self.now().resolvers, index)
    }

    pub(crate) fn storage(
        &self,
        index: Option<u32>,
    ) -> std::result::Result<Arc<dyn StorageServer>, Status> {
        by_index(Stage::Storage, "storage server", &self.now().storage, index)
    }

    /// The log the request names: refused when it names none, or one not served here (a
    /// client whose connection came back to another log at the same address, say).
    pub(crate) fn log(&self, id: Option<u64>) -> std::result::Result<Arc<dyn LogServer>, Status> {
        let stages = self.now();
        let Some(id) = id else {
            return Err(refuse(
                Stage::Log,
                ErrorKind::InvalidRequest("a call that names no log".into()),
            ));
        };
        if let Some(log) = stages.logs.iter().find(|l| l.id() == LogId(id)) {
            return Ok(log.clone());
        }
        let kind = if stages.logs.is_empty() {
            ErrorKind::Unavailable(format!("log {id} is not served here now; no log is"))
        } else {
            let here: Vec<String> = stages
                .logs
                .iter()
                .map(|l| format!("log {}", l.id()))
                .collect();
            ErrorKind::InvalidRequest(format!(
                "log {id} is not served here: this server serves {}",
                here.join(", ")
            ))
        };
        Err(refuse(Stage::Log, kind))
    }

    /// Runs `call` to its end, whatever becomes of the request: a caller that gives up, or a
    /// connection that breaks, drops the request's handler, and a call cut off between its
    /// admission and its end would leave the stage holding what it never finished (a push
    /// admitted but never synced, a version handed out but never pushed). It runs on the
    /// handler's task while the handler waits, and finishes on a task of its own, which
    /// [`serve`] waits for, when the handler goes away (see [`RunToEnd`]).
    pub(crate) async fn detached<T, F>(&self, call: F) -> std::result::Result<T, Status>
    where
        T: Send + 'static,
        F: Future<Output = Result<T>> + Send + 'static,
    {
        answered(self.run_to_end(call).await)
    }

    /// [`Served::detached`], with the stage's own error.
    pub(crate) async fn run_to_end<T, F>(&self, call: F) -> T
    where
        T: Send + 'static,
        F: Future<Output = T> + Send + 'static,
    {
        // The handler was admitted: its token keeps `serve` waiting until this is dropped, and
        // so until an abandoned call is handed to the tracker.
        RunToEnd::new(call, Some(self.0.calls.clone())).await
    }
}

#[tonic::async_trait]
impl proto::cluster_server::Cluster for Served {
    async fn describe(
        &self,
        _: tonic::Request<proto::DescribeRequest>,
    ) -> std::result::Result<tonic::Response<proto::DescribeReply>, Status> {
        let _call = self.admit(Stage::Director)?;
        let stages = self.now();
        let count = |n: usize| u32::try_from(n).unwrap_or(u32::MAX);
        let internal = self.0.exposure == Exposure::Everything;
        Ok(tonic::Response::new(proto::DescribeReply {
            epoch: stages.epoch().map(|e| e.0),
            sequencer: stages.sequencer.is_some(),
            proxies: count(stages.proxies.len()),
            resolvers: if internal {
                count(stages.resolvers.len())
            } else {
                0
            },
            storage: stages
                .storage
                .iter()
                .map(|s| proto::StorageShards {
                    shards: s
                        .shards()
                        .iter()
                        .map(crate::convert::range_to_wire)
                        .collect(),
                })
                .collect(),
            logs: if internal {
                stages.logs.iter().map(|l| l.id().0).collect()
            } else {
                Vec::new()
            },
        }))
    }
}
