//! The `Worker` service: recruitments and heartbeats, served by `serve_worker` around a
//! recruiter that runs a real resolver.

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
    Exposure, ProxySettings, ProxyWiring, Recruiter, Recruitment, RemoteResolver, RemoteWorker,
    ResolverSettings, Role, Stages, WorkerState, proto,
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
