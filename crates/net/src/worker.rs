//! Worker processes: a process that runs a stage of one role for whichever epoch the director
//! recruits it for. The `Worker` calls of [`serve_worker`](crate::serve_worker), the
//! [`Recruiter`] a worker process implements, and [`RemoteWorker`], the director's side.
//!
//! A recruitment names an epoch newer than any the worker ran: the worker builds its stage
//! for it and serves that stage in place of the one before, which its callers (proxies of an
//! ended epoch) then no longer reach. A heartbeat asks what the worker runs now: a worker that
//! restarted (it runs nothing) or that a newer director recruited (it runs a newer epoch)
//! tells the director that its epoch has lost the stage.
//!
//! A worker that holds what outlives an epoch is never recruited: it takes the director's
//! orders instead, fenced by epoch and token, a log worker's for its logs ([`LogHost`]) and
//! a storage worker's for its storage servers ([`StorageHost`]).

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use strata_core::{Epoch, Error, ErrorKind, Key, KeyRange, LogId, Result, Stage, Version};
use tokio_util::task::task_tracker::TaskTrackerToken;
use tonic::{Request, Response, Status};

use crate::client::{FirstCall, Link, Tagged, ranges_from_wire};
use crate::convert::{range_from_wire, range_to_wire};
use crate::failure::to_status;
use crate::proto;
use crate::proto::worker_client::WorkerClient;
use crate::server::{Served, answered, refuse};
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
    /// Transaction logs: a worker holds logs across epochs (the next recovery reads the
    /// previous generation's), created, opened and removed by the director's orders (see
    /// [`LogHost`]); never recruited.
    Log,
    /// A storage server: a worker holds one storage server's file across epochs, opened for
    /// each epoch by the director's orders (see [`StorageHost`]); never recruited.
    Storage,
}

impl Role {
    /// Every role a worker can have.
    pub const ALL: [Role; 5] = [
        Role::Resolver,
        Role::Sequencer,
        Role::Proxy,
        Role::Log,
        Role::Storage,
    ];

    /// The role's name, as the command line and the worker registry spell it.
    pub fn name(self) -> &'static str {
        match self {
            Role::Resolver => "resolver",
            Role::Sequencer => "sequencer",
            Role::Proxy => "proxy",
            Role::Log => "log",
            Role::Storage => "storage",
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
            Role::Log => Stage::Log,
            Role::Storage => Stage::Storage,
        }
    }

    fn to_wire(self) -> proto::Role {
        match self {
            Role::Resolver => proto::Role::Resolver,
            Role::Sequencer => proto::Role::Sequencer,
            Role::Proxy => proto::Role::Proxy,
            Role::Log => proto::Role::Log,
            Role::Storage => proto::Role::Storage,
        }
    }

    fn from_wire(wire: i32) -> Option<Role> {
        match proto::Role::try_from(wire).ok()? {
            proto::Role::Resolver => Some(Role::Resolver),
            proto::Role::Sequencer => Some(Role::Sequencer),
            proto::Role::Proxy => Some(Role::Proxy),
            proto::Role::Log => Some(Role::Log),
            proto::Role::Storage => Some(Role::Storage),
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

    /// The worker's logs, if it is a log worker: what its `Worker` log orders act on.
    fn log_host(self: Arc<Self>) -> Option<Arc<dyn LogHost>> {
        None
    }

    /// The worker's storage servers, if it is a storage worker: what its `Worker` storage
    /// orders act on.
    fn storage_host(self: Arc<Self>) -> Option<Arc<dyn StorageHost>> {
        None
    }
}

/// A director's order to create a log on a log worker (see [`LogHost::create`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NewLog {
    /// The epoch creating it (its recovery's).
    pub epoch: Epoch,
    /// The epoch's secret: the logs held here answer only calls that carry it from now on.
    pub token: String,
    /// The log's id.
    pub id: LogId,
    /// Its directory, relative to the worker's data directory: `logs/<epoch>-<n>`.
    pub dir: String,
    /// The version its history starts from: the predecessor of the first entry it receives.
    pub anchor: Version,
    /// Pushes of versions above it are refused (`Unavailable`) until
    /// [`LogHost::admit`]; replay pushes at most it.
    pub admit_above: Version,
}

/// A log worker's side of the director's orders: it holds logs across epochs, in directories
/// of its data directory, and serves them (published on the stages its
/// [`serve_worker`](crate::serve_worker) serves) under the token of the newest epoch that
/// gave it an order.
///
/// Orders that name an epoch are fenced: one of an epoch older than the newest this worker
/// took is refused (`Fenced`), and one of the newest epoch must carry its token
/// (`InvalidRequest` otherwise). An order of a newer epoch replaces the token, if the host
/// finds that its director claimed that epoch with it (the director's log worker checks the
/// coordinated state).
#[async_trait]
pub trait LogHost: Send + Sync {
    /// Opens (or finds open) the log `id` in `dir`, which must exist and hold `committed`,
    /// the version known committed; serves it and returns the newest version it holds.
    ///
    /// Errors: `Corruption` when it is missing or damaged; `InvalidRequest` for a `dir`
    /// that is not a log's; I/O errors as `Io`.
    async fn open(&self, id: LogId, dir: &str, committed: Version) -> Result<Version>;

    /// Serves the logs held here to `epoch`'s processes from now on.
    async fn take(&self, epoch: Epoch, token: &str) -> Result<()>;

    /// Creates the log `order` names and serves it, its pushes above
    /// [`NewLog::admit_above`] refused until [`LogHost::admit`]; returns its anchor.
    ///
    /// Errors: `Corruption` when its directory exists already (no epoch creates a log twice).
    async fn create(&self, order: NewLog) -> Result<Version>;

    /// Lets the logs created for `epoch` take every push: the coordinated state names them.
    async fn admit(&self, epoch: Epoch, token: &str) -> Result<()>;

    /// Removes the logs held here that the coordinated state does not name and that an older
    /// epoch than the state's created; returns their directories.
    async fn sweep(&self) -> Result<Vec<String>>;
}

/// A director's order to open a storage server on a storage worker (see
/// [`StorageHost::open`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OpenStorage {
    /// The epoch opening it (its recovery's).
    pub epoch: Epoch,
    /// The epoch's secret: the storage server reaches its log with it, and later orders of
    /// the epoch carry it. Never empty.
    pub token: String,
    /// The storage server, by its index.
    pub index: u32,
    /// The key ranges it owns: at least one.
    pub shards: Vec<KeyRange>,
    /// The log it follows.
    pub log: LogId,
    /// Where that log is served (`host:port`); never empty.
    pub log_at: String,
    /// The version the epoch recovered to: every version above it is rolled back, and the
    /// storage server has applied every version up to it before the order is done.
    pub recovery_version: Version,
    /// How long that catching up may take (at most [`OpenStorage::CATCH_UP_MAX`]): the
    /// order fails (`Timeout`) when the server has not applied the recovery version by then,
    /// so the call ends, as a worker's calls must for it to stop.
    pub catch_up: std::time::Duration,
}

/// What a storage server's file on a storage worker holds (see [`StorageHost::inspect`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoredStorage {
    /// The newest version on disk; 0 when there is no file.
    pub durable: Version,
    /// The shards the file was opened for; `None` when there is no file, or it never recorded
    /// them.
    pub shards: Option<Vec<KeyRange>>,
}

/// A storage worker's side of the director's orders: it holds storage servers across epochs,
/// each by its index, in files of its data directory, and serves them (published on the
/// stages its [`serve_worker`](crate::serve_worker) serves), each following its log.
///
/// Orders that name an epoch are fenced: one of an epoch older than the newest this worker
/// took is refused (`Fenced`), and one of the newest epoch must carry its token
/// (`InvalidRequest` otherwise). An order of a newer epoch replaces the token, if the host
/// finds that its director claimed that epoch with it (as a log worker does, see
/// [`LogHost`]).
///
/// The server refuses, before the host sees them, orders with an empty token or log address
/// and opens for no shards or for a key range that is empty or reversed (`InvalidRequest`).
#[async_trait]
pub trait StorageHost: Send + Sync {
    /// What storage server `index`'s file holds, read without opening it for writes: its
    /// durable version and the shards it was opened for (`0` and `None` when there is no
    /// file). Changes nothing an epoch relies on, so it names no epoch.
    ///
    /// Errors: `Corruption` when the file is damaged; `InvalidRequest` for an index this
    /// worker cannot hold; I/O errors as `Io`.
    async fn inspect(&self, index: u32) -> Result<StoredStorage>;

    /// Opens (or opens again) storage server [`OpenStorage::index`] for `order.epoch`,
    /// following the log `order` names, rolls it back to [`OpenStorage::recovery_version`]
    /// and returns once it has applied every version up to it (`Timeout` when that takes
    /// longer than [`OpenStorage::catch_up`]); serves it.
    ///
    /// Errors: `Fenced` for an older epoch than the newest taken; `InvalidRequest` for the
    /// newest without its token, or an index this worker cannot hold; `Corruption` when its
    /// file is damaged or holds other shards (a storage file of another server); the log's
    /// errors (`Unavailable` when it cannot be reached); I/O errors as `Io`.
    async fn open(&self, order: OpenStorage) -> Result<()>;

    /// Tells every storage server held here for `epoch` that every version up to
    /// `committed` is committed: what it may make durable.
    ///
    /// Errors: `Fenced` for an older epoch than the newest taken; `InvalidRequest` for the
    /// newest without its token.
    async fn advance(&self, epoch: Epoch, token: &str, committed: Version) -> Result<()>;
}

impl OpenStorage {
    /// The longest [`OpenStorage::catch_up`] an order may ask: an hour.
    pub const CATCH_UP_MAX: std::time::Duration = std::time::Duration::from_secs(3600);

    fn to_wire(&self) -> proto::OpenStorageRequest {
        proto::OpenStorageRequest {
            epoch: self.epoch.0,
            token: self.token.clone(),
            index: self.index,
            shards: self.shards.iter().map(range_to_wire).collect(),
            log_id: self.log.0,
            log_address: self.log_at.clone(),
            recovery_version: self.recovery_version.0,
            catch_up_ms: u64::try_from(self.catch_up.as_millis()).unwrap_or(u64::MAX),
        }
    }

    /// Refused (`InvalidRequest`) without a token or a log address, for no shards, for a
    /// shard that is not a key range, or without a bound on catching up (0, or above
    /// [`OpenStorage::CATCH_UP_MAX`]).
    fn from_wire(wire: proto::OpenStorageRequest) -> std::result::Result<OpenStorage, Status> {
        let token = storage_token(wire.token)?;
        let index = wire.index;
        let invalid = |why: String| {
            refuse(
                Stage::Storage,
                ErrorKind::InvalidRequest(format!("an open of storage server {index} {why}")),
            )
        };
        if wire.log_address.is_empty() {
            return Err(invalid("that names no address for its log".into()));
        }
        if wire.shards.is_empty() {
            return Err(invalid("for no shards".into()));
        }
        let catch_up = std::time::Duration::from_millis(wire.catch_up_ms);
        if catch_up.is_zero() || catch_up > OpenStorage::CATCH_UP_MAX {
            return Err(invalid(format!(
                "may catch up for {} ms: give 1 to {} ms",
                wire.catch_up_ms,
                OpenStorage::CATCH_UP_MAX.as_millis()
            )));
        }
        let shards = wire
            .shards
            .into_iter()
            .map(|r| range_from_wire(Stage::Storage, r))
            .collect::<std::result::Result<Vec<_>, _>>()?;
        Ok(OpenStorage {
            epoch: Epoch(wire.epoch),
            token,
            index: wire.index,
            shards,
            log: LogId(wire.log_id),
            log_at: wire.log_address,
            recovery_version: Version(wire.recovery_version),
            catch_up,
        })
    }
}

/// A storage order's token, refused (`InvalidRequest`) when empty: the director's orders always
/// carry their epoch's.
fn storage_token(token: String) -> std::result::Result<String, Status> {
    if token.is_empty() {
        return Err(refuse(
            Stage::Storage,
            ErrorKind::InvalidRequest("a storage order without its epoch's token".into()),
        ));
    }
    Ok(token)
}

impl Served {
    /// The worker's storage servers, for a storage order.
    fn storage_host(&self) -> std::result::Result<Arc<dyn StorageHost>, Status> {
        self.recruiter()?.storage_host().ok_or_else(|| {
            refuse(
                Stage::Storage,
                ErrorKind::InvalidRequest(
                    "this worker holds no storage servers: it runs another role".into(),
                ),
            )
        })
    }

    /// Admits a storage order from the cluster's own processes: the worker's storage servers.
    fn storage_order(
        &self,
        call: &str,
    ) -> std::result::Result<(Arc<dyn StorageHost>, TaskTrackerToken), Status> {
        let admitted = self.admit(Stage::Storage)?;
        self.internal(Stage::Storage, call)?;
        Ok((self.storage_host()?, admitted))
    }

    /// The worker's logs, for a log order.
    fn log_host(&self) -> std::result::Result<Arc<dyn LogHost>, Status> {
        self.recruiter()?.log_host().ok_or_else(|| {
            refuse(
                Stage::Log,
                ErrorKind::InvalidRequest("this worker holds no logs: it runs another role".into()),
            )
        })
    }

    /// Admits a log order from the cluster's own processes: the worker's logs.
    fn log_order(
        &self,
        call: &str,
    ) -> std::result::Result<(Arc<dyn LogHost>, TaskTrackerToken), Status> {
        let admitted = self.admit(Stage::Log)?;
        self.internal(Stage::Log, call)?;
        Ok((self.log_host()?, admitted))
    }

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

    async fn open_log(
        &self,
        request: Request<proto::OpenLogRequest>,
    ) -> std::result::Result<Response<proto::OpenLogReply>, Status> {
        let (host, _call) = self.log_order("Worker.OpenLog")?;
        let r = request.into_inner();
        let last = self
            .detached(async move { host.open(LogId(r.id), &r.dir, Version(r.committed)).await })
            .await?;
        Ok(Response::new(proto::OpenLogReply {
            last_version: last.0,
        }))
    }

    async fn take_logs(
        &self,
        request: Request<proto::EpochOrder>,
    ) -> std::result::Result<Response<proto::OrderDone>, Status> {
        let (host, _call) = self.log_order("Worker.TakeLogs")?;
        let r = request.into_inner();
        self.detached(async move { host.take(Epoch(r.epoch), &r.token).await })
            .await?;
        Ok(Response::new(proto::OrderDone {}))
    }

    async fn create_log(
        &self,
        request: Request<proto::CreateLogRequest>,
    ) -> std::result::Result<Response<proto::OpenLogReply>, Status> {
        let (host, _call) = self.log_order("Worker.CreateLog")?;
        let r = request.into_inner();
        let order = NewLog {
            epoch: Epoch(r.epoch),
            token: r.token,
            id: LogId(r.id),
            dir: r.dir,
            anchor: Version(r.anchor),
            admit_above: Version(r.admit_above),
        };
        let anchor = self
            .detached(async move { host.create(order).await })
            .await?;
        Ok(Response::new(proto::OpenLogReply {
            last_version: anchor.0,
        }))
    }

    async fn admit_pushes(
        &self,
        request: Request<proto::EpochOrder>,
    ) -> std::result::Result<Response<proto::OrderDone>, Status> {
        let (host, _call) = self.log_order("Worker.AdmitPushes")?;
        let r = request.into_inner();
        self.detached(async move { host.admit(Epoch(r.epoch), &r.token).await })
            .await?;
        Ok(Response::new(proto::OrderDone {}))
    }

    async fn sweep_logs(
        &self,
        _request: Request<proto::SweepLogsRequest>,
    ) -> std::result::Result<Response<proto::SweepLogsReply>, Status> {
        let (host, _call) = self.log_order("Worker.SweepLogs")?;
        let removed = self.detached(async move { host.sweep().await }).await?;
        Ok(Response::new(proto::SweepLogsReply { removed }))
    }

    async fn inspect_storage(
        &self,
        request: Request<proto::InspectStorageRequest>,
    ) -> std::result::Result<Response<proto::InspectStorageReply>, Status> {
        let (host, _call) = self.storage_order("Worker.InspectStorage")?;
        let index = request.into_inner().index;
        // Reads only: nothing to finish when the director gives up on the answer.
        let stored = answered(host.inspect(index).await)?;
        Ok(Response::new(proto::InspectStorageReply {
            durable: stored.durable.0,
            has_shards: stored.shards.is_some(),
            shards: stored.shards.iter().flatten().map(range_to_wire).collect(),
        }))
    }

    async fn open_storage(
        &self,
        request: Request<proto::OpenStorageRequest>,
    ) -> std::result::Result<Response<proto::OrderDone>, Status> {
        let (host, _call) = self.storage_order("Worker.OpenStorage")?;
        let order = OpenStorage::from_wire(request.into_inner())?;
        self.detached(async move { host.open(order).await }).await?;
        Ok(Response::new(proto::OrderDone {}))
    }

    async fn advance_committed(
        &self,
        request: Request<proto::AdvanceCommittedRequest>,
    ) -> std::result::Result<Response<proto::OrderDone>, Status> {
        let (host, _call) = self.storage_order("Worker.AdvanceCommitted")?;
        let r = request.into_inner();
        let token = storage_token(r.token)?;
        self.detached(async move {
            host.advance(Epoch(r.epoch), &token, Version(r.version))
                .await
        })
        .await?;
        Ok(Response::new(proto::OrderDone {}))
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
        let access = access.into();
        let link =
            Link::connect_checked(Stage::Director, address, access, FirstCall::Heartbeat).await?;
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

    /// Orders a log worker to open a log the coordinated state names (see [`LogHost::open`]);
    /// the newest version it holds.
    ///
    /// Errors: the worker's (`Corruption` for a log missing or damaged); `Unavailable` when
    /// the answer is lost.
    pub async fn open_log(&self, id: LogId, dir: &str, committed: Version) -> Result<Version> {
        let request = proto::OpenLogRequest {
            id: id.0,
            dir: dir.to_owned(),
            committed: committed.0,
        };
        let reply = self.client.clone().open_log(request).await;
        Ok(Version(self.link.answer(Stage::Log, reply)?.last_version))
    }

    /// Orders a log worker to serve its logs to `epoch`'s processes (see [`LogHost::take`]).
    ///
    /// Errors: `Fenced` when it took a newer epoch; `Unavailable` when the answer is lost.
    pub async fn take_logs(&self, epoch: Epoch, token: &str) -> Result<()> {
        let request = proto::EpochOrder {
            epoch: epoch.0,
            token: token.to_owned(),
        };
        let reply = self.client.clone().take_logs(request).await;
        self.link.answer(Stage::Log, reply)?;
        Ok(())
    }

    /// Orders a log worker to create a log (see [`LogHost::create`]); its anchor.
    ///
    /// Errors: the worker's (`Fenced`, `Corruption` for a directory that exists);
    /// `Unavailable` when the answer is lost (the log may exist: the next sweep removes it).
    pub async fn create_log(&self, order: NewLog) -> Result<Version> {
        let request = proto::CreateLogRequest {
            epoch: order.epoch.0,
            token: order.token,
            id: order.id.0,
            dir: order.dir,
            anchor: order.anchor.0,
            admit_above: order.admit_above.0,
        };
        let reply = self.client.clone().create_log(request).await;
        Ok(Version(self.link.answer(Stage::Log, reply)?.last_version))
    }

    /// Orders a log worker to let the logs created for `epoch` take every push (see
    /// [`LogHost::admit`]).
    ///
    /// Errors: `Fenced` when it took a newer epoch; `Unavailable` when the answer is lost.
    pub async fn admit_pushes(&self, epoch: Epoch, token: &str) -> Result<()> {
        let request = proto::EpochOrder {
            epoch: epoch.0,
            token: token.to_owned(),
        };
        let reply = self.client.clone().admit_pushes(request).await;
        self.link.answer(Stage::Log, reply)?;
        Ok(())
    }

    /// Orders a log worker to remove the logs the coordinated state no longer names (see
    /// [`LogHost::sweep`]); the directories removed.
    pub async fn sweep_logs(&self) -> Result<Vec<String>> {
        let reply = self
            .client
            .clone()
            .sweep_logs(proto::SweepLogsRequest {})
            .await;
        Ok(self.link.answer(Stage::Log, reply)?.removed)
    }

    /// Asks a storage worker what storage server `index`'s file holds (see
    /// [`StorageHost::inspect`]).
    ///
    /// Errors: the worker's (`Corruption` for a damaged file, `InvalidRequest` from a worker
    /// that holds no storage servers); `Unavailable` when the answer is lost.
    pub async fn inspect_storage(&self, index: u32) -> Result<StoredStorage> {
        let request = proto::InspectStorageRequest { index };
        let reply = self.client.clone().inspect_storage(request).await;
        let reply = self.link.answer(Stage::Storage, reply)?;
        let shards = if reply.has_shards {
            Some(ranges_from_wire(&self.link, Stage::Storage, reply.shards)?)
        } else if reply.shards.is_empty() {
            None
        } else {
            return Err(self.link.garbled(
                Stage::Storage,
                "answered shards of a file it says records none".into(),
            ));
        };
        Ok(StoredStorage {
            durable: Version(reply.durable),
            shards,
        })
    }

    /// Orders a storage worker to open a storage server for an epoch (see
    /// [`StorageHost::open`]); returns once it has caught up to the recovery version.
    ///
    /// Errors: the worker's (`Fenced` when it took a newer epoch, `Corruption` for a file
    /// damaged or of other shards, `InvalidRequest` for an order without its token or log
    /// address, or for no shards); `Unavailable` when the answer is lost (the storage server
    /// may be open: the order can be given again).
    pub async fn open_storage(&self, order: OpenStorage) -> Result<()> {
        let reply = self.client.clone().open_storage(order.to_wire()).await;
        self.link.answer(Stage::Storage, reply)?;
        Ok(())
    }

    /// Tells a storage worker that every version up to `committed` is committed, for every
    /// storage server it holds for `epoch` (see [`StorageHost::advance`]).
    ///
    /// Errors: `Fenced` when it took a newer epoch; `Unavailable` when the answer is lost.
    pub async fn advance_committed(
        &self,
        epoch: Epoch,
        token: &str,
        committed: Version,
    ) -> Result<()> {
        let request = proto::AdvanceCommittedRequest {
            epoch: epoch.0,
            token: token.to_owned(),
            version: committed.0,
        };
        let reply = self.client.clone().advance_committed(request).await;
        self.link.answer(Stage::Storage, reply)?;
        Ok(())
    }
}
