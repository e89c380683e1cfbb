//! Worker processes: a process that runs a stage of one role for whichever epoch the director
//! recruits it for. The `Worker` calls of [`serve_worker`](crate::serve_worker), the
//! [`Recruiter`] a worker process implements, and [`RemoteWorker`], the director's side.
//!
//! A recruitment names an epoch newer than any the worker ran: the worker builds its stage
//! for it and serves that stage in place of the one before, which its callers (proxies of an
//! ended epoch) then no longer reach. A heartbeat asks what the worker runs now: a worker that
//! restarted (it runs nothing) or that a newer director recruited (it runs a newer epoch)
//! tells the director that its epoch has lost the stage.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use strata_core::{Epoch, Error, ErrorKind, Key, LogId, Result, Stage, Version};
use tonic::{Request, Response, Status};

use crate::client::{Link, Tagged};
use crate::failure::to_status;
use crate::proto;
use crate::proto::worker_client::WorkerClient;
use crate::server::{Served, refuse};
use crate::tls::Access;

/// What a worker process runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Role {
    /// A resolver: one per epoch, built fresh at each recruitment (a resolver holds nothing
    /// an epoch needs from the one before).
    Resolver,
    /// The sequencer: one per epoch, started after the epoch's recovery version at each
    /// recruitment (it holds nothing an epoch needs from the one before either).
    Sequencer,
    /// A commit proxy: one per worker and epoch, built at each recruitment to call the
    /// epoch's sequencer, resolvers and logs where the recruitment says they are served.
    Proxy,
}

impl Role {
    /// Every role a worker can have.
    pub const ALL: [Role; 3] = [Role::Resolver, Role::Sequencer, Role::Proxy];

    /// The role's name, as the command line and the worker registry spell it.
    pub fn name(self) -> &'static str {
        match self {
            Role::Resolver => "resolver",
            Role::Sequencer => "sequencer",
            Role::Proxy => "proxy",
        }
    }

    /// The role named `name`, if there is one.
    pub fn from_name(name: &str) -> Option<Role> {
        Role::ALL.into_iter().find(|r| r.name() == name)
    }

    /// The stage a worker of this role runs.
    pub fn stage(self) -> Stage {
        match self {
            Role::Resolver => Stage::Resolver,
            Role::Sequencer => Stage::Sequencer,
            Role::Proxy => Stage::CommitProxy,
        }
    }

    fn to_wire(self) -> proto::Role {
        match self {
            Role::Resolver => proto::Role::Resolver,
            Role::Sequencer => proto::Role::Sequencer,
            Role::Proxy => proto::Role::Proxy,
        }
    }

    fn from_wire(wire: i32) -> Option<Role> {
        match proto::Role::try_from(wire).ok()? {
            proto::Role::Resolver => Some(Role::Resolver),
            proto::Role::Sequencer => Some(Role::Sequencer),
            proto::Role::Proxy => Some(Role::Proxy),
            proto::Role::Unspecified => None,
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A director's request that a worker run its stage for an epoch.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Recruitment {
    /// The epoch the stage runs for; newer than any the worker ran.
    pub epoch: Epoch,
    /// The role recruited: the worker's own.
    pub role: Role,
    /// The version the epoch starts from (a resolver's first batch follows it).
    pub recovery_version: Version,
    /// A resolver's tuning, as the director's own resolvers have it, so a resolver runs
    /// alike wherever it runs; `None`: the worker's own. The worker checks it.
    pub resolver: Option<ResolverSettings>,
    /// Where a commit proxy finds the epoch's other stages, and its tuning: required for a
    /// proxy, which the worker checks.
    pub proxy: Option<ProxyWiring>,
}

/// Where each stage a commit proxy of one epoch calls is served (`host:port`), as a proxy's
/// recruitment carries it, with the proxy's tuning.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProxyWiring {
    /// The epoch's sequencer.
    pub sequencer: String,
    /// The resolvers, in the order of their key ranges: each range's first key, the address
    /// it is served at and its index among the resolvers served there.
    pub resolvers: Vec<(Key, String, u32)>,
    /// The logs of the epoch's generation: each one's id and the address it is served at.
    pub logs: Vec<(LogId, String)>,
    /// The proxy's tuning, as the director's own proxies have it.
    pub settings: ProxySettings,
    /// The secret the stages served on the director's port for the cluster's processes ask
    /// of every call this epoch (see [`Stages::token`](crate::Stages::token)); `None`: none.
    pub token: Option<String>,
}

/// The tuning of a commit proxy, as it travels in a recruitment (the fields of
/// `strata_commit_proxy::ProxyConfig`, which this crate does not depend on).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ProxySettings {
    /// How long a batch waits for more transactions after its first.
    pub batch_window: Duration,
    /// Most transactions in one batch.
    pub batch_transactions_max: u64,
    /// Most encoded bytes in one batch.
    pub batch_bytes_max: u64,
    /// Most transactions waiting for a batch.
    pub queue_transactions_max: u64,
    /// How long a commit waits for room in a full queue.
    pub queue_wait: Duration,
    /// Most batches in flight at once.
    pub in_flight_batches_max: u64,
    /// How long the oldest batch may stay in flight before the proxy reports a stall.
    pub stall_timeout: Duration,
}

/// A duration as nanoseconds on the wire: exact, where whole milliseconds could turn a short
/// wait into none at all.
fn nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

impl ProxySettings {
    fn to_wire(self) -> proto::ProxySettings {
        proto::ProxySettings {
            batch_window_ns: nanos(self.batch_window),
            batch_transactions_max: self.batch_transactions_max,
            batch_bytes_max: self.batch_bytes_max,
            queue_transactions_max: self.queue_transactions_max,
            queue_wait_ns: nanos(self.queue_wait),
            in_flight_batches_max: self.in_flight_batches_max,
            stall_timeout_ns: nanos(self.stall_timeout),
        }
    }

    fn from_wire(wire: proto::ProxySettings) -> ProxySettings {
        ProxySettings {
            batch_window: Duration::from_nanos(wire.batch_window_ns),
            batch_transactions_max: wire.batch_transactions_max,
            batch_bytes_max: wire.batch_bytes_max,
            queue_transactions_max: wire.queue_transactions_max,
            queue_wait: Duration::from_nanos(wire.queue_wait_ns),
            in_flight_batches_max: wire.in_flight_batches_max,
            stall_timeout: Duration::from_nanos(wire.stall_timeout_ns),
        }
    }
}

impl ProxyWiring {
    fn to_wire(&self) -> proto::ProxyWiring {
        proto::ProxyWiring {
            sequencer: self.sequencer.clone(),
            resolvers: self
                .resolvers
                .iter()
                .map(|(begin, address, index)| proto::ResolverPlace {
                    begin: begin.clone(),
                    address: address.clone(),
                    index: *index,
                })
                .collect(),
            logs: self
                .logs
                .iter()
                .map(|(id, address)| proto::LogPlace {
                    id: id.0,
                    address: address.clone(),
                })
                .collect(),
            settings: Some(self.settings.to_wire()),
            token: self.token.clone().unwrap_or_default(),
        }
    }

    /// Errors: `InvalidRequest` for wiring without the proxy's settings.
    fn from_wire(wire: proto::ProxyWiring) -> Result<ProxyWiring> {
        let settings = wire.settings.ok_or_else(|| {
            Error::new(
                Stage::CommitProxy,
                ErrorKind::InvalidRequest("a proxy's recruitment without its settings".into()),
            )
        })?;
        Ok(ProxyWiring {
            sequencer: wire.sequencer,
            resolvers: wire
                .resolvers
                .into_iter()
                .map(|r| (r.begin, r.address, r.index))
                .collect(),
            logs: wire
                .logs
                .into_iter()
                .map(|l| (LogId(l.id), l.address))
                .collect(),
            settings: ProxySettings::from_wire(settings),
            token: Some(wire.token).filter(|t| !t.is_empty()),
        })
    }
}

/// The tuning of a resolver, as it travels in a recruitment (the fields of
/// `strata_resolver::ResolverConfig`, which this crate does not depend on).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ResolverSettings {
    /// Reads older than the newest batch's version minus this are refused as too old.
    pub window_versions: u64,
    /// The most batches merged into one run of the history.
    pub max_run_batches: u32,
    /// The newest runs kept apart from merging.
    pub recent_runs: u32,
    /// How long a batch that arrived before its predecessor waits for it.
    pub predecessor_wait: Duration,
    /// The largest batch accepted, in transactions.
    pub batch_transactions_max: u64,
}

impl ResolverSettings {
    fn to_wire(self) -> proto::ResolverSettings {
        proto::ResolverSettings {
            window_versions: self.window_versions,
            max_run_batches: self.max_run_batches,
            recent_runs: self.recent_runs,
            // Exact: a wait cut to whole milliseconds could become none at all.
            predecessor_wait_ns: nanos(self.predecessor_wait),
            batch_transactions_max: self.batch_transactions_max,
        }
    }

    fn from_wire(wire: proto::ResolverSettings) -> ResolverSettings {
        ResolverSettings {
            window_versions: wire.window_versions,
            max_run_batches: wire.max_run_batches,
            recent_runs: wire.recent_runs,
            predecessor_wait: Duration::from_nanos(wire.predecessor_wait_ns),
            batch_transactions_max: wire.batch_transactions_max,
        }
    }
}

/// What a worker says it runs, in answer to a heartbeat.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WorkerState {
    /// The worker's role.
    pub role: Role,
    /// The epoch of the stage it runs now; `None` before its first recruitment.
    pub epoch: Option<Epoch>,
    /// Why the stage it runs cannot go on, if it cannot (see [`Recruiter::failure`]).
    pub failure: Option<String>,
}

/// A worker process's side of recruitment: it builds the stage a recruitment asks for and
/// serves it (publishing it on the stages its [`serve_worker`](crate::serve_worker) serves).
#[async_trait]
pub trait Recruiter: Send + Sync {
    /// The role this worker runs.
    fn role(&self) -> Role;

    /// Starts a stage of [`Recruiter::role`] for `recruitment.epoch` and serves it in place
    /// of the one before; returns its index among the stages of its kind served here. The
    /// server checks the role before this is called.
    ///
    /// Errors: `Fenced` for an epoch not newer than the one the worker runs (a late
    /// recruitment by a director that has since lost its epoch).
    async fn recruit(&self, recruitment: Recruitment) -> Result<u32>;

    /// The epoch of the stage this worker runs now; `None` before its first recruitment.
    fn epoch(&self) -> Option<Epoch>;

    /// Why the stage this worker runs cannot go on, if it cannot: what the director's
    /// monitoring would see of the same stage in its own process (a commit proxy whose batch
    /// failed, or whose oldest batch stalled). `None` by default: a stage that fails its
    /// callers is found by them.
    fn failure(&self) -> Option<String> {
        None
    }
}

impl Served {
    fn recruiter(&self) -> std::result::Result<Arc<dyn Recruiter>, Status> {
        self.worker().ok_or_else(|| {
            refuse(
                Stage::Director,
                ErrorKind::InvalidRequest(
                    "this process is not a worker: it cannot be recruited".into(),
                ),
            )
        })
    }
}

#[tonic::async_trait]
impl proto::worker_server::Worker for Served {
    async fn recruit(
        &self,
        request: Request<proto::RecruitRequest>,
    ) -> std::result::Result<Response<proto::RecruitReply>, Status> {
        let _call = self.admit(Stage::Director)?;
        self.internal(Stage::Director, "Worker.Recruit")?;
        let r = request.into_inner();
        let recruiter = self.recruiter()?;
        let Some(role) = Role::from_wire(r.role) else {
            return Err(refuse(
                Stage::Director,
                ErrorKind::InvalidRequest(format!("a recruitment for no known role ({})", r.role)),
            ));
        };
        if role != recruiter.role() {
            return Err(refuse(
                role.stage(),
                ErrorKind::InvalidRequest(format!(
                    "this worker runs a {}, not a {role}",
                    recruiter.role()
                )),
            ));
        }
        let recruitment = Recruitment {
            epoch: Epoch(r.epoch),
            role,
            recovery_version: Version(r.recovery_version),
            resolver: r.resolver.map(ResolverSettings::from_wire),
            proxy: r
                .proxy
                .map(ProxyWiring::from_wire)
                .transpose()
                .map_err(|e| to_status(&e))?,
        };
        // Runs to its end whatever becomes of the director: a stage half published would
        // leave the worker serving neither epoch's.
        let index = self
            .detached(async move { recruiter.recruit(recruitment).await })
            .await?;
        Ok(Response::new(proto::RecruitReply { index }))
    }

    async fn heartbeat(
        &self,
        _request: Request<proto::HeartbeatRequest>,
    ) -> std::result::Result<Response<proto::HeartbeatReply>, Status> {
        let _call = self.admit(Stage::Director)?;
        self.internal(Stage::Director, "Worker.Heartbeat")?;
        let recruiter = self.recruiter()?;
        Ok(Response::new(proto::HeartbeatReply {
            role: recruiter.role().to_wire().into(),
            epoch: recruiter.epoch().map(|e| e.0),
            failure: recruiter.failure(),
        }))
    }
}

/// A worker served elsewhere by [`serve_worker`](crate::serve_worker), as the director reaches
/// it.
#[derive(Clone, Debug)]
pub struct RemoteWorker {
    link: Link,
    client: WorkerClient<Tagged>,
}

impl RemoteWorker {
    /// Connects to the worker at `address` (`host:port`) with `access`.
    ///
    /// Errors: `Unavailable` when nothing answers at `address`; `InvalidRequest` when the
    /// server is of another cluster or a TLS handshake failed.
    pub async fn connect(address: &str, access: impl Into<Access>) -> Result<RemoteWorker> {
        let link = Link::connect(Stage::Director, address, access.into()).await?;
        let client = WorkerClient::new(link.channel.clone());
        Ok(RemoteWorker { link, client })
    }

    /// Recruits the worker (see [`Recruiter::recruit`]); the index its new stage is served at.
    ///
    /// Errors: the worker's refusal (`Fenced` for an epoch it has passed, `InvalidRequest` for
    /// another role or a process that is no worker); `Unavailable` when the answer is lost (the
    /// worker may run the stage: a later recruitment replaces it).
    pub async fn recruit(&self, recruitment: Recruitment) -> Result<u32> {
        let request = proto::RecruitRequest {
            epoch: recruitment.epoch.0,
            role: recruitment.role.to_wire().into(),
            recovery_version: recruitment.recovery_version.0,
            resolver: recruitment.resolver.map(ResolverSettings::to_wire),
            proxy: recruitment.proxy.as_ref().map(ProxyWiring::to_wire),
        };
        let reply = self.client.clone().recruit(request).await;
        Ok(self.link.answer(recruitment.role.stage(), reply)?.index)
    }

    /// What the worker runs now.
    ///
    /// Errors: `Unavailable` when it does not answer; `InvalidRequest` when the process is
    /// no worker.
    pub async fn heartbeat(&self) -> Result<WorkerState> {
        let reply = self
            .client
            .clone()
            .heartbeat(proto::HeartbeatRequest {})
            .await;
        let reply = self.link.answer(Stage::Director, reply)?;
        let role = Role::from_wire(reply.role).ok_or_else(|| {
            self.link.garbled(
                Stage::Director,
                format!("answered a heartbeat with no known role ({})", reply.role),
            )
        })?;
        Ok(WorkerState {
            role,
            epoch: reply.epoch.map(Epoch),
            failure: reply.failure,
        })
    }
}
