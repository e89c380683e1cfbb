//! The `Worker` service: recruitments and heartbeats, served by `serve_worker` around a
//! recruiter that runs a real resolver, and a storage worker's orders, around a host that
//! records them.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use bytes::Bytes;
use prost::Message;
use strata_core::{
    Epoch, Error, ErrorKind, KeyRange, LogId, ResolveBatch, Resolver, Result, Stage,
    TransactionConflicts, Verdict, Version,
};
use strata_net::{
    Exposure, OpenStorage, ProxySettings, ProxyWiring, Recruiter, Recruitment, RemoteResolver,
    RemoteWorker, ResolverSettings, Role, Stages, StorageHost, StoredStorage, WorkerState, proto,
};
use strata_resolver::{ResolverConfig, WindowResolver};
use tokio::sync::{oneshot, watch};

mod common;
use common::{Served, cluster, raw_call, xorshift};

/// A resolver worker: a new resolver for each epoch it is recruited for, published in place
/// of the one before.
struct ResolverWorker {
    epoch: Mutex<Option<Epoch>>,
    publish: watch::Sender<Arc<Stages>>,
    /// Every recruitment taken, as the worker read it.
    taken: Arc<Mutex<Vec<Recruitment>>>,
}

#[async_trait]
impl Recruiter for ResolverWorker {
    fn role(&self) -> Role {
        Role::Resolver
    }

    async fn recruit(&self, r: Recruitment) -> Result<u32> {
        let mut epoch = self.epoch.lock().unwrap();
        if let Some(current) = *epoch
            && r.epoch <= current
        {
            return Err(Error::new(
                Stage::Resolver,
                ErrorKind::Fenced {
                    request: r.epoch,
                    current,
                },
            ));
        }
        let resolver = WindowResolver::new(r.epoch, r.recovery_version, ResolverConfig::default());
        self.publish.send_replace(Arc::new(Stages {
            resolvers: vec![Arc::new(resolver)],
            ..Stages::default()
        }));
        *epoch = Some(r.epoch);
        self.taken.lock().unwrap().push(r);
        Ok(0)
    }

    fn epoch(&self) -> Option<Epoch> {
        *self.epoch.lock().unwrap()
    }
}

struct Worker {
    address: String,
    taken: Arc<Mutex<Vec<Recruitment>>>,
    stop: oneshot::Sender<()>,
    task: tokio::task::JoinHandle<Result<()>>,
}

async fn worker(cluster_id: &str) -> Worker {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap().to_string();
    let (publish, published) = watch::channel(Arc::new(Stages::default()));
    let taken = Arc::new(Mutex::new(Vec::new()));
    let recruiter = Arc::new(ResolverWorker {
        epoch: Mutex::new(None),
        publish,
        taken: taken.clone(),
    });
    let (stop, stopped) = oneshot::channel::<()>();
    let task = tokio::spawn(strata_net::serve_worker(
        cluster(cluster_id),
        recruiter,
        published,
        listener,
        async {
            let _ = stopped.await;
        },
    ));
    Worker {
        address,
        taken,
        stop,
        task,
    }
}

impl Worker {
    async fn stop(self) {
        let _ = self.stop.send(());
        self.task.await.unwrap().unwrap();
    }
}

fn recruitment(epoch: u64, recovery_version: u64) -> Recruitment {
    Recruitment {
        epoch: Epoch(epoch),
        role: Role::Resolver,
        recovery_version: Version(recovery_version),
        resolver: None,
        proxy: None,
    }
}

/// A batch of one transaction that writes `key`, right after `previous`.
fn batch(epoch: u64, previous: u64, version: u64, key: &'static [u8]) -> ResolveBatch {
    ResolveBatch {
        epoch: Epoch(epoch),
        previous_version: Version(previous),
        version: Version(version),
        transactions: vec![TransactionConflicts {
            read_version: None,
            read_conflicts: vec![],
            write_conflicts: vec![KeyRange::single(Bytes::from_static(key))],
        }],
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_runs_the_epoch_it_was_recruited_for_and_only_a_newer_one_replaces_it() {
    let w = worker("t-worker").await;
    let director = RemoteWorker::connect(&w.address, cluster("t-worker"))
        .await
        .unwrap();
    let before = director.heartbeat().await.unwrap();
    assert_eq!(
        before,
        WorkerState {
            role: Role::Resolver,
            epoch: None,
            failure: None,
        }
    );
    // Before any recruitment the worker serves no resolver.
    let e = RemoteResolver::connect(&w.address, cluster("t-worker"), 0)
        .await
        .unwrap_err();
    assert!(e.to_string().contains("resolver 0"), "{e}");

    assert_eq!(director.recruit(recruitment(2, 100)).await.unwrap(), 0);
    assert_eq!(director.heartbeat().await.unwrap().epoch, Some(Epoch(2)));
    let two = RemoteResolver::connect(&w.address, cluster("t-worker"), 0)
        .await
        .unwrap();
    // The resolver starts at the recovery version: its first batch follows it.
    assert_eq!(
        two.resolve(batch(2, 100, 110, b"a")).await.unwrap(),
        vec![Verdict::Committed]
    );

    // The same epoch again, or an older one, is fenced, and changes nothing.
    for epoch in [2, 1] {
        let e = director.recruit(recruitment(epoch, 0)).await.unwrap_err();
        assert_eq!(e.stage, Stage::Resolver);
        assert!(
            matches!(
                e.kind,
                ErrorKind::Fenced { request, current }
                    if request == Epoch(epoch) && current == Epoch(2)
            ),
            "{e}"
        );
    }
    assert_eq!(
        two.resolve(batch(2, 110, 120, b"b")).await.unwrap(),
        vec![Verdict::Committed]
    );

    // A newer epoch replaces the resolver: the old epoch's proxies no longer reach one of
    // theirs, and the new one starts from its own recovery version.
    director.recruit(recruitment(5, 300)).await.unwrap();
    assert_eq!(director.heartbeat().await.unwrap().epoch, Some(Epoch(5)));
    let e = two.resolve(batch(2, 120, 130, b"c")).await.unwrap_err();
    assert!(matches!(e.kind, ErrorKind::Fenced { .. }), "{e}");
    let five = RemoteResolver::connect(&w.address, cluster("t-worker"), 0)
        .await
        .unwrap();
    assert_eq!(
        five.resolve(batch(5, 300, 310, b"a")).await.unwrap(),
        vec![Verdict::Committed]
    );
    w.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recruitments_the_worker_cannot_take_are_refused_with_a_reason() {
    let w = worker("t-refuse").await;
    // Another cluster's director is refused before the worker.
    let e = RemoteWorker::connect(&w.address, cluster("t-other"))
        .await
        .unwrap_err();
    assert!(matches!(e.kind, ErrorKind::InvalidRequest(_)), "{e}");
    assert!(e.to_string().contains("t-other"), "{e}");

    // A role the worker does not know, or none.
    let channel = tonic::transport::Channel::from_shared(format!("http://{}", w.address))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut grpc = tonic::client::Grpc::new(channel);
    for role in [0, 9] {
        let body = proto::RecruitRequest {
            epoch: 3,
            role,
            recovery_version: 0,
            resolver: None,
            proxy: None,
        }
        .encode_to_vec();
        let status = raw_call(
            &mut grpc,
            "t-refuse",
            "/strata.v1.Worker/Recruit",
            body.into(),
        )
        .await
        .unwrap_err();
        assert_eq!(status.code(), tonic::Code::InvalidArgument, "{status:?}");
        assert!(status.message().contains("no known role"), "{status:?}");
    }
    // A proxy's wiring without its settings: refused before the worker sees it.
    let body = proto::RecruitRequest {
        epoch: 3,
        role: proto::Role::Resolver.into(),
        recovery_version: 0,
        resolver: None,
        proxy: Some(proto::ProxyWiring {
            sequencer: "h:1".into(),
            resolvers: Vec::new(),
            logs: Vec::new(),
            settings: None,
            token: String::new(),
        }),
    }
    .encode_to_vec();
    let status = raw_call(
        &mut grpc,
        "t-refuse",
        "/strata.v1.Worker/Recruit",
        body.into(),
    )
    .await
    .unwrap_err();
    assert_eq!(status.code(), tonic::Code::InvalidArgument, "{status:?}");
    assert!(
        status.message().contains("without its settings"),
        "{status:?}"
    );
    let director = RemoteWorker::connect(&w.address, cluster("t-refuse"))
        .await
        .unwrap();
    assert_eq!(director.heartbeat().await.unwrap().epoch, None);
    // A role this build knows, but not the worker's.
    let e = director
        .recruit(Recruitment {
            epoch: Epoch(3),
            role: Role::Sequencer,
            recovery_version: Version(0),
            resolver: None,
            proxy: None,
        })
        .await
        .unwrap_err();
    assert!(matches!(e.kind, ErrorKind::InvalidRequest(_)), "{e}");
    assert!(e.to_string().contains("not a sequencer"), "{e}");
    assert_eq!(director.heartbeat().await.unwrap().epoch, None);

    // Random bytes to both calls: an error or an answer, never a panic, and the worker still
    // recruits afterwards.
    let mut next = xorshift(0x9e37_79b9_7f4a_7c15);
    for round in 0..200 {
        let path = if round % 2 == 0 {
            "/strata.v1.Worker/Recruit"
        } else {
            "/strata.v1.Worker/Heartbeat"
        };
        let len = usize::try_from(next() % 48).unwrap();
        let body: Bytes = (0..len).map(|_| next() as u8).collect();
        if let Err(status) = raw_call(&mut grpc, "t-refuse", path, body).await {
            assert!(
                !matches!(status.code(), tonic::Code::Unknown | tonic::Code::Cancelled),
                "{path}: {status:?}"
            );
        }
    }
    let epoch = director
        .heartbeat()
        .await
        .unwrap()
        .epoch
        .unwrap_or(Epoch(0));
    director.recruit(recruitment(epoch.0 + 1, 0)).await.unwrap();
    w.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_process_that_is_no_worker_or_serves_clients_cannot_be_recruited() {
    // A connection to a worker makes a heartbeat first: a process that is no worker, or that
    // serves clients only, is refused as the connection is made.
    let stages = Stages::default();
    let plain = Served::start(stages.clone(), "t-plain").await;
    let e = RemoteWorker::connect(&plain.address, cluster("t-plain"))
        .await
        .unwrap_err();
    assert!(e.to_string().contains("not a worker"), "{e}");
    assert!(matches!(e.kind, ErrorKind::InvalidRequest(_)), "{e}");
    plain.stop().await;

    let clients = Served::start_with("127.0.0.1:0", Exposure::Clients, stages, "t-cl").await;
    let e = RemoteWorker::connect(&clients.address, cluster("t-cl"))
        .await
        .unwrap_err();
    assert!(e.to_string().contains("Worker.Heartbeat"), "{e}");
    assert!(matches!(e.kind, ErrorKind::InvalidRequest(_)), "{e}");
    clients.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_recruitment_reaches_the_worker_whole_with_its_resolver_settings() {
    let w = worker("t-settings").await;
    let director = RemoteWorker::connect(&w.address, cluster("t-settings"))
        .await
        .unwrap();
    let with = Recruitment {
        resolver: Some(ResolverSettings {
            window_versions: 123_456,
            max_run_batches: 7,
            recent_runs: 3,
            // Not whole milliseconds: it must arrive as it left.
            predecessor_wait: std::time::Duration::from_nanos(1_500_007),
            batch_transactions_max: 99,
        }),
        proxy: Some(ProxyWiring {
            sequencer: "10.0.0.1:4500".into(),
            resolvers: vec![
                (Bytes::new(), "10.0.0.2:4600".into(), 0),
                (Bytes::from_static(b"\x80"), "10.0.0.1:4501".into(), 3),
            ],
            logs: vec![(LogId(7), "10.0.0.1:4501".into()), (LogId(9), "h:1".into())],
            settings: ProxySettings {
                batch_window: std::time::Duration::from_nanos(150_003),
                batch_transactions_max: 301,
                batch_bytes_max: 1 << 20,
                queue_transactions_max: 4_001,
                queue_wait: std::time::Duration::from_nanos(20_000_009),
                in_flight_batches_max: 0,
                stall_timeout: std::time::Duration::from_millis(2_500),
            },
            token: Some("9f86d081884c7d659a2feaa0c55ad015".into()),
        }),
        ..recruitment(4, 77)
    };
    director.recruit(recruitment(3, 5)).await.unwrap();
    director.recruit(with.clone()).await.unwrap();
    assert_eq!(*w.taken.lock().unwrap(), vec![recruitment(3, 5), with]);
    w.stop().await;
}

/// What a fake storage host was ordered, as it read each order.
#[derive(Default)]
struct Orders {
    inspected: Vec<u32>,
    opened: Vec<OpenStorage>,
    advanced: Vec<(Epoch, String, Version)>,
    /// The newest epoch taken, and its token.
    taken: Option<(Epoch, String)>,
}

/// A storage host that holds nothing: it records the orders it gets and fences them as a
/// storage worker does (without the coordinated state: any newer epoch is taken).
#[derive(Default)]
struct FakeStorage {
    orders: Mutex<Orders>,
}

impl FakeStorage {
    fn take(&self, orders: &mut Orders, epoch: Epoch, token: &str) -> Result<()> {
        match &orders.taken {
            Some((current, _)) if epoch < *current => Err(Error::new(
                Stage::Storage,
                ErrorKind::Fenced {
                    request: epoch,
                    current: *current,
                },
            )),
            Some((current, held)) if epoch == *current && held != token => Err(Error::new(
                Stage::Storage,
                ErrorKind::InvalidRequest(format!("an order of {epoch} without its token")),
            )),
            _ => {
                orders.taken = Some((epoch, token.to_owned()));
                Ok(())
            }
        }
    }
}

/// The shards a fake storage file records: every key.
fn all_keys() -> Vec<KeyRange> {
    vec![KeyRange::new(Bytes::new(), Bytes::from_static(&[0xff; 4])).unwrap()]
}

#[async_trait]
impl StorageHost for FakeStorage {
    /// Storage server 0 has no file, 1 a file of every key at version 42, 2 a file that never
    /// recorded its shards; 7 a damaged file; the others files at their index as version.
    async fn inspect(&self, index: u32) -> Result<StoredStorage> {
        self.orders.lock().unwrap().inspected.push(index);
        match index {
            0 => Ok(StoredStorage {
                durable: Version(0),
                shards: None,
            }),
            1 => Ok(StoredStorage {
                durable: Version(42),
                shards: Some(all_keys()),
            }),
            2 => Ok(StoredStorage {
                durable: Version(9),
                shards: None,
            }),
            7 => Err(Error::new(
                Stage::Storage,
                ErrorKind::Corruption("storage/7.redb: a damaged file".into()),
            )),
            other => Ok(StoredStorage {
                durable: Version(u64::from(other)),
                shards: Some(Vec::new()),
            }),
        }
    }

    async fn open(&self, order: OpenStorage) -> Result<()> {
        let mut orders = self.orders.lock().unwrap();
        self.take(&mut orders, order.epoch, &order.token)?;
        orders.opened.push(order);
        Ok(())
    }

    async fn advance(&self, epoch: Epoch, token: &str, committed: Version) -> Result<()> {
        let mut orders = self.orders.lock().unwrap();
        self.take(&mut orders, epoch, token)?;
        orders.advanced.push((epoch, token.to_owned(), committed));
        Ok(())
    }
}

/// A worker never recruited that holds storage servers: no storage role exists yet, so it says
/// it is a log worker, which the storage orders do not look at.
struct StorageWorker {
    host: Arc<FakeStorage>,
}

#[async_trait]
impl Recruiter for StorageWorker {
    fn role(&self) -> Role {
        Role::Log
    }

    async fn recruit(&self, _: Recruitment) -> Result<u32> {
        Err(Error::new(
            Stage::Storage,
            ErrorKind::InvalidRequest("a storage worker is never recruited".into()),
        ))
    }

    fn epoch(&self) -> Option<Epoch> {
        None
    }

    fn storage_host(self: Arc<Self>) -> Option<Arc<dyn StorageHost>> {
        Some(self.host.clone())
    }
}

struct StorageServed {
    address: String,
    host: Arc<FakeStorage>,
    stop: oneshot::Sender<()>,
    task: tokio::task::JoinHandle<Result<()>>,
}

async fn storage_worker(cluster_id: &str) -> StorageServed {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap().to_string();
    let (_publish, published) = watch::channel(Arc::new(Stages::default()));
    let host = Arc::new(FakeStorage::default());
    let recruiter = Arc::new(StorageWorker { host: host.clone() });
    let (stop, stopped) = oneshot::channel::<()>();
    let task = tokio::spawn(strata_net::serve_worker(
        cluster(cluster_id),
        recruiter,
        published,
        listener,
        async {
            let _ = stopped.await;
        },
    ));
    StorageServed {
        address,
        host,
        stop,
        task,
    }
}

impl StorageServed {
    async fn stop(self) {
        let _ = self.stop.send(());
        self.task.await.unwrap().unwrap();
    }
}

/// An order to open storage server `index` for `epoch` with `token`.
fn open_order(epoch: u64, token: &str, index: u32) -> OpenStorage {
    OpenStorage {
        epoch: Epoch(epoch),
        token: token.into(),
        index,
        shards: vec![
            KeyRange::new(Bytes::new(), Bytes::from_static(b"m")).unwrap(),
            // Any bytes, as they are.
            KeyRange::new(
                Bytes::from_static(b"\x00\xff"),
                Bytes::from_static(&[0xff; 3]),
            )
            .unwrap(),
        ],
        log: LogId(u64::MAX - 3),
        log_at: "10.0.0.8:4700".into(),
        recovery_version: Version(1_234_567_890_123),
        catch_up: OpenStorage::CATCH_UP_MAX,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn storage_orders_reach_the_host_whole_and_its_answers_come_back_whole() {
    let w = storage_worker("t-storage").await;
    let director = RemoteWorker::connect(&w.address, cluster("t-storage"))
        .await
        .unwrap();
    let none = StoredStorage {
        durable: Version(0),
        shards: None,
    };
    assert_eq!(director.inspect_storage(0).await.unwrap(), none);
    assert_eq!(
        director.inspect_storage(1).await.unwrap(),
        StoredStorage {
            durable: Version(42),
            shards: Some(all_keys()),
        }
    );
    // A file that never recorded its shards, and one that recorded none: told apart.
    assert_eq!(director.inspect_storage(2).await.unwrap().shards, None);
    assert_eq!(
        director.inspect_storage(u32::MAX).await.unwrap(),
        StoredStorage {
            durable: Version(u64::from(u32::MAX)),
            shards: Some(Vec::new()),
        }
    );
    // The host's error travels whole.
    let e = director.inspect_storage(7).await.unwrap_err();
    assert_eq!(e.stage, Stage::Storage);
    assert!(matches!(e.kind, ErrorKind::Corruption(_)), "{e}");

    let three = open_order(3, "tok3", 5);
    director.open_storage(three.clone()).await.unwrap();
    director
        .advance_committed(Epoch(3), "tok3", Version(u64::MAX))
        .await
        .unwrap();
    // A newer epoch takes over; the older one is fenced, the newer without its token refused.
    let four = OpenStorage {
        shards: all_keys(),
        ..open_order(4, "tok4", 0)
    };
    director.open_storage(four.clone()).await.unwrap();
    let e = director
        .open_storage(open_order(3, "tok3", 5))
        .await
        .unwrap_err();
    assert_eq!(e.stage, Stage::Storage);
    assert!(
        matches!(
            e.kind,
            ErrorKind::Fenced { request, current } if request == Epoch(3) && current == Epoch(4)
        ),
        "{e}"
    );
    let e = director
        .advance_committed(Epoch(4), "tok3", Version(10))
        .await
        .unwrap_err();
    assert!(matches!(e.kind, ErrorKind::InvalidRequest(_)), "{e}");
    director
        .advance_committed(Epoch(4), "tok4", Version(10))
        .await
        .unwrap();

    {
        let orders = w.host.orders.lock().unwrap();
        assert_eq!(orders.inspected, vec![0, 1, 2, u32::MAX, 7]);
        assert_eq!(orders.opened, vec![three, four]);
        assert_eq!(
            orders.advanced,
            vec![
                (Epoch(3), "tok3".to_owned(), Version(u64::MAX)),
                (Epoch(4), "tok4".to_owned(), Version(10)),
            ]
        );
    }
    w.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_that_holds_no_storage_servers_refuses_storage_orders() {
    let w = worker("t-no-storage").await;
    let director = RemoteWorker::connect(&w.address, cluster("t-no-storage"))
        .await
        .unwrap();
    let refusals = [
        director.inspect_storage(0).await.err(),
        director.open_storage(open_order(2, "t", 0)).await.err(),
        director
            .advance_committed(Epoch(2), "t", Version(1))
            .await
            .err(),
    ];
    for refusal in refusals {
        let e = refusal.expect("a storage order taken by a resolver worker");
        assert_eq!(e.stage, Stage::Storage);
        assert!(matches!(e.kind, ErrorKind::InvalidRequest(_)), "{e}");
        assert!(e.to_string().contains("holds no storage servers"), "{e}");
    }
    // The worker still runs its own role.
    director.recruit(recruitment(2, 0)).await.unwrap();
    w.stop().await;

    // A port that serves clients only refuses them before it looks for a worker.
    let clients =
        Served::start_with("127.0.0.1:0", Exposure::Clients, Stages::default(), "t-sc").await;
    let mut grpc = tonic::client::Grpc::new(clients.channel().await);
    for (path, call) in STORAGE_ORDERS {
        let status = raw_call(&mut grpc, "t-sc", path, Bytes::new())
            .await
            .unwrap_err();
        assert_eq!(status.code(), tonic::Code::PermissionDenied, "{path}");
        assert!(status.message().contains(call), "{status:?}");
    }
    clients.stop().await;
}

/// The storage orders, by path and by the name their refusals give.
const STORAGE_ORDERS: [(&str, &str); 3] = [
    ("/strata.v1.Worker/InspectStorage", "Worker.InspectStorage"),
    ("/strata.v1.Worker/OpenStorage", "Worker.OpenStorage"),
    (
        "/strata.v1.Worker/AdvanceCommitted",
        "Worker.AdvanceCommitted",
    ),
];

/// A plain gRPC connection to `address`, for raw calls.
async fn raw_grpc(address: &str) -> tonic::client::Grpc<tonic::transport::Channel> {
    let channel = tonic::transport::Channel::from_shared(format!("http://{address}"))
        .unwrap()
        .connect()
        .await
        .unwrap();
    tonic::client::Grpc::new(channel)
}

fn wire_range(begin: &[u8], end: &[u8]) -> proto::KeyRange {
    proto::KeyRange {
        begin: Bytes::copy_from_slice(begin),
        end: Bytes::copy_from_slice(end),
    }
}

/// Orders to open a storage server, each malformed one way, with what its refusal says.
fn bad_storage_orders() -> Vec<(proto::OpenStorageRequest, &'static str)> {
    let good = proto::OpenStorageRequest {
        epoch: 3,
        token: "tok".into(),
        index: 0,
        shards: vec![wire_range(b"a", b"b")],
        log_id: 1,
        log_address: "h:1".into(),
        recovery_version: 10,
        catch_up_ms: 60_000,
    };
    // Longer than a range end may be.
    let too_long = vec![b'k'; 10_002];
    vec![
        (
            proto::OpenStorageRequest {
                shards: vec![wire_range(b"a", b"b"), wire_range(b"z", b"c")],
                ..good.clone()
            },
            "not a key range",
        ),
        (
            proto::OpenStorageRequest {
                shards: vec![wire_range(b"q", b"q")],
                ..good.clone()
            },
            "not a key range",
        ),
        (
            proto::OpenStorageRequest {
                shards: vec![wire_range(b"", b"")],
                ..good.clone()
            },
            "not a key range",
        ),
        (
            proto::OpenStorageRequest {
                shards: vec![wire_range(b"", &too_long)],
                ..good.clone()
            },
            "over the limit",
        ),
        (
            proto::OpenStorageRequest {
                shards: Vec::new(),
                ..good.clone()
            },
            "for no shards",
        ),
        (
            proto::OpenStorageRequest {
                log_address: String::new(),
                ..good.clone()
            },
            "no address for its log",
        ),
        (
            proto::OpenStorageRequest {
                token: String::new(),
                ..good.clone()
            },
            "without its epoch's token",
        ),
        // No bound on catching up, or one past an hour.
        (
            proto::OpenStorageRequest {
                catch_up_ms: 0,
                ..good.clone()
            },
            "may catch up for 0 ms",
        ),
        (
            proto::OpenStorageRequest {
                catch_up_ms: 3_600_001,
                ..good.clone()
            },
            "may catch up for 3600001 ms",
        ),
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_storage_orders_are_refused_before_the_host() {
    let w = storage_worker("t-bad-storage").await;
    let mut grpc = raw_grpc(&w.address).await;
    let bad = bad_storage_orders();
    for (request, why) in bad {
        let status = raw_call(
            &mut grpc,
            "t-bad-storage",
            "/strata.v1.Worker/OpenStorage",
            request.encode_to_vec().into(),
        )
        .await
        .unwrap_err();
        assert_eq!(status.code(), tonic::Code::InvalidArgument, "{status:?}");
        assert!(status.message().contains(why), "{why}: {status:?}");
    }
    let advance = proto::AdvanceCommittedRequest {
        epoch: 3,
        token: String::new(),
        version: 5,
    };
    let status = raw_call(
        &mut grpc,
        "t-bad-storage",
        "/strata.v1.Worker/AdvanceCommitted",
        advance.encode_to_vec().into(),
    )
    .await
    .unwrap_err();
    assert_eq!(status.code(), tonic::Code::InvalidArgument, "{status:?}");
    assert!(status.message().contains("token"), "{status:?}");
    {
        let orders = w.host.orders.lock().unwrap();
        assert!(orders.opened.is_empty() && orders.advanced.is_empty());
        assert!(orders.taken.is_none());
    }
    w.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fuzzed_bytes_to_storage_orders_get_an_error_or_an_answer_never_a_panic() {
    let w = storage_worker("t-fuzz-storage").await;
    let mut grpc = raw_grpc(&w.address).await;
    // Random bytes to every storage order, through to the host when they decode and pass.
    let mut next = xorshift(0x5851_f42d_4c95_7f2d);
    for round in 0..300 {
        let (path, _) = STORAGE_ORDERS[round % STORAGE_ORDERS.len()];
        let len = usize::try_from(next() % 64).unwrap();
        let body: Bytes = (0..len).map(|_| next() as u8).collect();
        if let Err(status) = raw_call(&mut grpc, "t-fuzz-storage", path, body).await {
            assert!(
                !matches!(status.code(), tonic::Code::Unknown | tonic::Code::Cancelled),
                "{path}: {status:?}"
            );
        }
    }
    // Some got through to the host (the same ones every run: the bytes are seeded).
    assert!(!w.host.orders.lock().unwrap().inspected.is_empty());
    // Still taking well-formed orders, whatever epoch the random ones left it at.
    let director = RemoteWorker::connect(&w.address, cluster("t-fuzz-storage"))
        .await
        .unwrap();
    director
        .open_storage(open_order(u64::MAX, "last", 1))
        .await
        .unwrap();
    assert_eq!(
        w.host.orders.lock().unwrap().opened.last(),
        Some(&open_order(u64::MAX, "last", 1))
    );
    w.stop().await;
}
