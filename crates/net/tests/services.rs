//! Every service at once, on real stages: a call of another cluster is refused by each, and
//! random request bytes to every method get an error or an answer, never a panic, and leave
//! the server serving.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;

use bytes::Bytes;
use strata_commit_proxy::{BatchingProxy, ProxyConfig};
use strata_core::{
    Epoch, ErrorKind, Key, KeyRange, LogId, LogServer, Resolver, Sequencer, Stage, StorageServer,
    Version,
};
use strata_net::{RemoteLog, RemoteProxy, RemoteResolver, RemoteSequencer, RemoteStorage, Stages};
use strata_resolver::{ResolverConfig, WindowResolver};
use strata_sequencer::ClockSequencer;
use strata_storage::{RedbStorage, StorageConfig};
use strata_testkit::MemoryLog;

mod common;
use common::{Served, cluster, raw_call, xorshift};

/// Every method of every service, by path.
const METHODS: &[&str] = &[
    "/strata.v1.Cluster/Describe",
    "/strata.v1.Log/Push",
    "/strata.v1.Log/Pull",
    "/strata.v1.Log/Lock",
    "/strata.v1.Log/Pop",
    "/strata.v1.Sequencer/Epoch",
    "/strata.v1.Sequencer/NextCommitVersion",
    "/strata.v1.Sequencer/ReportCommitted",
    "/strata.v1.Sequencer/ReadVersion",
    "/strata.v1.Resolver/Resolve",
    "/strata.v1.Storage/Shards",
    "/strata.v1.Storage/Get",
    "/strata.v1.Storage/GetRange",
    "/strata.v1.Storage/AppliedVersion",
    "/strata.v1.Storage/DurableVersion",
    "/strata.v1.Storage/RollBack",
    "/strata.v1.Proxy/Epoch",
    "/strata.v1.Proxy/Commit",
    "/strata.v1.Worker/Recruit",
    "/strata.v1.Worker/Heartbeat",
    "/strata.v1.Worker/OpenLog",
    "/strata.v1.Worker/TakeLogs",
    "/strata.v1.Worker/CreateLog",
    "/strata.v1.Worker/AdmitPushes",
    "/strata.v1.Worker/SweepLogs",
    "/strata.v1.Worker/InspectStorage",
    "/strata.v1.Worker/OpenStorage",
    "/strata.v1.Worker/AdvanceCommitted",
];

/// A transaction that sets `key` and reads nothing, encoded.
fn blind(key: Bytes) -> Bytes {
    strata_core::Transaction {
        read_version: None,
        read_conflicts: Vec::new(),
        write_conflicts: vec![KeyRange::single(key.clone())],
        mutations: vec![strata_core::Mutation::Set {
            key,
            value: Bytes::from_static(b"v"),
        }],
    }
    .encode()
    .unwrap()
}

/// One of each stage, all real but the log (in memory), served together, every call.
async fn everything(dir: &std::path::Path, name: &str) -> (Served, Arc<RedbStorage>) {
    let (stages, storage) = stages(dir).await;
    (Served::start(stages, name).await, storage)
}

/// One of each stage, all real but the log (in memory).
async fn stages(dir: &std::path::Path) -> (Stages, Arc<RedbStorage>) {
    let epoch = Epoch(1);
    let log: Arc<dyn LogServer> = Arc::new(MemoryLog::new(LogId(0), Version(0)));
    let sequencer: Arc<dyn Sequencer> = Arc::new(ClockSequencer::new(epoch, Version(0)));
    let resolver: Arc<dyn Resolver> = Arc::new(WindowResolver::new(
        epoch,
        Version(0),
        ResolverConfig::default(),
    ));
    let proxy = BatchingProxy::new(
        epoch,
        sequencer.clone(),
        vec![(Key::new(), resolver.clone())],
        vec![log.clone()],
        ProxyConfig::default(),
    )
    .unwrap();
    let all = KeyRange::new(Key::new(), Bytes::from_static(&[0xff; 4])).unwrap();
    let storage = RedbStorage::open(
        &dir.join("storage.redb"),
        vec![all],
        log.clone(),
        StorageConfig::default(),
    )
    .await
    .unwrap();
    let storage = Arc::new(storage);
    let stages = Stages {
        sequencer: Some(sequencer),
        proxies: vec![Arc::new(proxy)],
        resolvers: vec![resolver],
        storage: vec![storage.clone() as Arc<dyn StorageServer>],
        logs: vec![log],
        token: None,
    };
    (stages, storage)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_service_refuses_another_clusters_client() {
    let dir = tempfile::tempdir().unwrap();
    let (served, storage) = everything(dir.path(), "t-ours").await;
    let theirs = || cluster("t-theirs");
    let a = &served.address;
    let refusals = [
        (
            Stage::Sequencer,
            RemoteSequencer::connect(a, theirs()).await.err(),
        ),
        (
            Stage::CommitProxy,
            RemoteProxy::connect(a, theirs(), 0).await.err(),
        ),
        (
            Stage::Resolver,
            RemoteResolver::connect(a, theirs(), 0).await.err(),
        ),
        (
            Stage::Storage,
            RemoteStorage::connect(a, theirs(), 0).await.err(),
        ),
        (
            Stage::Log,
            RemoteLog::connect(a, theirs(), LogId(0)).await.err(),
        ),
        (Stage::Director, Stages::connect(a, theirs()).await.err()),
    ];
    for (stage, refusal) in refusals {
        let e = refusal.unwrap_or_else(|| panic!("{stage} client of another cluster accepted"));
        assert_eq!(e.stage, stage);
        assert!(matches!(e.kind, ErrorKind::InvalidRequest(_)), "{e}");
        let text = e.to_string();
        assert!(
            text.contains("t-theirs") && text.contains("t-ours"),
            "{text}"
        );
    }
    // And every method, called raw without the right id, is refused before its stage.
    let mut grpc = tonic::client::Grpc::new(served.channel().await);
    for path in METHODS {
        let status = raw_call(&mut grpc, "t-theirs", path, Bytes::new())
            .await
            .unwrap_err();
        assert_eq!(status.code(), tonic::Code::PermissionDenied, "{path}");
    }
    served.stop().await;
    storage.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fuzzed_bytes_to_every_method_get_an_error_or_an_answer_never_a_panic() {
    let dir = tempfile::tempdir().unwrap();
    let (served, storage) = everything(dir.path(), "t-fuzz-all").await;
    let mut grpc = tonic::client::Grpc::new(served.channel().await);
    let mut next = xorshift(0x2545_f491_4f6c_dd1d);
    let mut refused = 0;
    let rounds = METHODS.len() * 60;
    for round in 0..rounds {
        let path = METHODS[round % METHODS.len()];
        let len = usize::try_from(next() % 96).unwrap();
        let body: Bytes = (0..len).map(|_| next() as u8).collect();
        if let Err(status) = raw_call(&mut grpc, "t-fuzz-all", path, body).await {
            refused += 1;
            // Never the sign of a handler that died: a panic reaches the client as a reset
            // stream or an unknown error.
            assert!(
                !matches!(status.code(), tonic::Code::Unknown | tonic::Code::Cancelled),
                "{path}: {status:?}"
            );
        }
    }
    assert!(refused > rounds / 4, "only {refused} of {rounds} refused");
    // Still serving: every stage answers a well-formed call.
    let stages = Stages::connect(&served.address, cluster("t-fuzz-all"))
        .await
        .unwrap();
    stages
        .sequencer
        .as_ref()
        .unwrap()
        .read_version()
        .await
        .unwrap();
    stages.storage[0].applied_version().await.unwrap();
    stages.logs[0].pull(Version(0), 1).await.unwrap_or_default();
    assert_eq!(stages.proxies.len(), 1);
    served.stop().await;
    storage.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_range_is_refused_before_the_stage() {
    let dir = tempfile::tempdir().unwrap();
    let (served, storage) = everything(dir.path(), "t-ranges").await;
    let mut client = strata_net::proto::storage_client::StorageClient::with_interceptor(
        served.channel().await,
        |mut r: tonic::Request<()>| {
            r.metadata_mut()
                .insert(strata_net::CLUSTER_ID_HEADER, "t-ranges".parse().unwrap());
            Ok(r)
        },
    );
    let range = |begin: Vec<u8>, end: Vec<u8>| strata_net::proto::GetRangeRequest {
        storage: Some(0),
        range: Some(strata_net::proto::KeyRange {
            begin: begin.into(),
            end: end.into(),
        }),
        version: 0,
        limit: 10,
        reverse: false,
    };
    for (request, why) in [
        (range(b"b".to_vec(), b"a".to_vec()), "empty or inverted"),
        (range(Vec::new(), vec![b'z'; 20_000]), "over the limit"),
    ] {
        let status = client.get_range(request).await.unwrap_err();
        assert_eq!(status.code(), tonic::Code::InvalidArgument);
        assert!(status.message().contains(why), "{status:?}");
    }
    served.stop().await;
    storage.close().await;
}

/// The calls a client's `Database` never makes: the cluster's own.
const INTERNAL: &[&str] = &[
    "/strata.v1.Log/Push",
    "/strata.v1.Log/Pull",
    "/strata.v1.Log/Lock",
    "/strata.v1.Log/Pop",
    "/strata.v1.Sequencer/NextCommitVersion",
    "/strata.v1.Sequencer/ReportCommitted",
    "/strata.v1.Resolver/Resolve",
    "/strata.v1.Storage/RollBack",
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_for_clients_refuses_the_clusters_own_calls() {
    let dir = tempfile::tempdir().unwrap();
    let (stages, storage) = stages(dir.path()).await;
    let log = stages.logs[0].clone();
    let served = Served::start_with(
        "127.0.0.1:0",
        strata_net::Exposure::Clients,
        stages,
        "t-clients",
    )
    .await;
    // Well-formed requests that would change a stage: a lock far in the future, a pop of
    // everything, a version handed out and never pushed, a roll back. Each is refused before
    // it reaches its stage.
    let mut grpc = tonic::client::Grpc::new(served.channel().await);
    for path in INTERNAL {
        // Field 1 set to 0 and field 2 to a large number: the log, resolver or storage server
        // served (or an epoch), and an epoch or version, in the requests above.
        let body = Bytes::from_static(&[0x08, 0x00, 0x10, 0xff, 0xff, 0xff, 0xff, 0x0f]);
        let status = raw_call(&mut grpc, "t-clients", path, body)
            .await
            .unwrap_err();
        assert_eq!(status.code(), tonic::Code::PermissionDenied, "{path}");
        assert!(
            status.message().contains("clients only"),
            "{path}: {status:?}"
        );
    }
    assert_eq!(log.lock(Epoch(0)).await.unwrap().epoch, Epoch(0));
    // What a client needs is there, and only that is described.
    let client = Stages::connect(&served.address, cluster("t-clients"))
        .await
        .unwrap();
    assert!(client.logs.is_empty() && client.resolvers.is_empty());
    let sequencer = client.sequencer.clone().unwrap();
    let db = strata_txn_builder::Database::new(
        sequencer.clone(),
        client.proxies.clone(),
        client.storage.clone(),
        strata_txn_builder::RetryConfig::default(),
    )
    .unwrap();
    let (_, version) = db
        .run(|tx| async move {
            tx.set(Bytes::from_static(b"k"), Bytes::from_static(b"v"));
            Ok(())
        })
        .await
        .unwrap();
    // Nor may a client write the cluster's own keys, from \xff on: the configuration the
    // persistence phase stores is what the next recovery reads. Refused before the proxy,
    // whether as a write, a range clear reaching past \xff or a write conflict.
    let proxy = client.proxies[0].clone();
    let system = Bytes::from_static(b"\xff/system/config");
    let writes = [
        (
            vec![strata_core::Mutation::Set {
                key: system.clone(),
                value: Bytes::from_static(b"junk"),
            }],
            Vec::new(),
        ),
        (
            vec![strata_core::Mutation::ClearRange {
                range: KeyRange::new(Key::new(), Bytes::from_static(b"\xff\xff")).unwrap(),
            }],
            Vec::new(),
        ),
        (Vec::new(), vec![KeyRange::single(system.clone())]),
    ];
    for (mutations, write_conflicts) in writes {
        let tx = strata_core::Transaction {
            read_version: None,
            read_conflicts: Vec::new(),
            write_conflicts,
            mutations,
        };
        let e = proxy.commit(tx.encode().unwrap()).await.unwrap_err();
        assert!(matches!(e.kind, ErrorKind::InvalidRequest(_)), "{e}");
        assert!(e.to_string().contains("system keys"), "{e}");
    }
    let tx = db.begin();
    assert!(tx.read_version().await.unwrap() >= version);
    assert_eq!(tx.get(&system).await.unwrap(), None);
    assert_eq!(
        tx.get(&Bytes::from_static(b"k")).await.unwrap(),
        Some(Bytes::from_static(b"v"))
    );
    served.stop().await;
    storage.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_that_never_speaks_does_not_hold_the_shutdown() {
    let dir = tempfile::tempdir().unwrap();
    let (served, storage) = everything(dir.path(), "t-silent").await;
    // A TCP connection that never sends the HTTP/2 preface: a port scanner, a health probe, a
    // client host that died after connecting. Keepalive pings start only after the preface.
    let silent = tokio::net::TcpStream::connect(&served.address)
        .await
        .unwrap();
    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    // The bound is a liveness bound, far above the grace the server gives such connections.
    tokio::time::timeout(std::time::Duration::from_secs(60), served.stop())
        .await
        .expect("the server never stopped");
    drop(silent);
    storage.close().await;
}

/// One commit call of several transactions: each commits or is refused on its own, and the
/// answers come back in the call's order. On a server for clients a transaction that does not
/// decode, or that writes a system key, is refused there; on the cluster's own server the
/// proxy refuses the first and commits the second.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_transaction_of_one_commit_call_gets_its_own_outcome() {
    use prost::Message;
    use strata_net::proto::{CommitReply, CommitRequest, commit_outcome::Outcome};

    let set = |key: &'static [u8]| blind(Bytes::from_static(key));
    for exposure in [
        strata_net::Exposure::Clients,
        strata_net::Exposure::Everything,
    ] {
        let dir = tempfile::tempdir().unwrap();
        let (stages, storage) = stages(dir.path()).await;
        let served = Served::start_with("127.0.0.1:0", exposure, stages, "t-call").await;
        let request = CommitRequest {
            proxy: Some(0),
            transactions: vec![
                set(b"a"),
                Bytes::from_static(b"not a transaction"),
                set(b"\xff/x"),
                set(b"b"),
            ],
            epoch: Some(1),
        };
        let mut grpc = tonic::client::Grpc::new(served.channel().await);
        let reply = raw_call(
            &mut grpc,
            "t-call",
            "/strata.v1.Proxy/Commit",
            request.encode_to_vec().into(),
        )
        .await
        .unwrap();
        let outcomes: Vec<_> = CommitReply::decode(reply)
            .unwrap()
            .outcomes
            .into_iter()
            .map(|o| o.outcome.unwrap())
            .collect();
        assert_eq!(outcomes.len(), 4, "{exposure:?}: {outcomes:?}");
        let version = |o: &Outcome| match o {
            Outcome::Version(v) => Version(*v),
            Outcome::Failure(f) => panic!("{exposure:?}: refused: {f:?}"),
        };
        let refusal = |o: &Outcome| match o {
            Outcome::Failure(f) => format!("{:?}", f.kind),
            Outcome::Version(v) => panic!("{exposure:?}: committed at {v}"),
        };
        let (a, b) = (version(&outcomes[0]), version(&outcomes[3]));
        assert!(refusal(&outcomes[1]).contains("magic"), "{outcomes:?}");
        let system = if exposure == strata_net::Exposure::Clients {
            assert!(
                refusal(&outcomes[2]).contains("system keys"),
                "{outcomes:?}"
            );
            None
        } else {
            Some(version(&outcomes[2]))
        };
        // What committed is there to read, and only that.
        let newest = a.max(b).max(system.unwrap_or(Version::ZERO));
        for (key, committed) in [
            (&b"a"[..], true),
            (&b"b"[..], true),
            (&b"\xff/x"[..], system.is_some()),
        ] {
            let got = storage
                .get(Bytes::copy_from_slice(key), newest)
                .await
                .unwrap();
            assert_eq!(got.is_some(), committed, "{exposure:?}: {key:?}");
        }
        served.stop().await;
        storage.close().await;
    }
}

/// The transactions of one commit call share batches, as concurrent callers' commits do, on a
/// proxy that is idle when the call comes, over a log on disk. A lone commit's batch can finish
/// on the handler's task (the idle log syncs there) before the next transaction is looked at:
/// were each to go alone, every transaction would be a batch and a sync of its own.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_transactions_of_one_call_share_batches() {
    use prost::Message;
    use strata_net::proto::{CommitReply, CommitRequest, commit_outcome::Outcome};

    let dir = tempfile::tempdir().unwrap();
    let epoch = Epoch(1);
    let log: Arc<dyn LogServer> = Arc::new(
        strata_tlog::FileLog::open(
            &dir.path().join("log"),
            LogId(0),
            Version(0),
            strata_tlog::FileLogConfig::default(),
        )
        .unwrap(),
    );
    let sequencer: Arc<dyn Sequencer> = Arc::new(ClockSequencer::new(epoch, Version(0)));
    let resolver: Arc<dyn Resolver> = Arc::new(WindowResolver::new(
        epoch,
        Version(0),
        ResolverConfig::default(),
    ));
    let proxy = Arc::new(
        BatchingProxy::new(
            epoch,
            sequencer.clone(),
            vec![(Key::new(), resolver.clone())],
            vec![log.clone()],
            ProxyConfig::default(),
        )
        .unwrap(),
    );
    let stages = Stages {
        sequencer: Some(sequencer),
        proxies: vec![proxy.clone()],
        resolvers: vec![resolver],
        storage: Vec::new(),
        logs: vec![log],
        token: None,
    };
    let served = Served::start(stages, "t-share").await;
    let mut grpc = tonic::client::Grpc::new(served.channel().await);
    let count = 50;
    for round in 0..3 {
        let transactions = (0..count)
            .map(|i| blind(Bytes::from(format!("k{round}-{i}"))))
            .collect();
        let request = CommitRequest {
            proxy: Some(0),
            transactions,
            epoch: Some(1),
        };
        let lone = proxy.lone_commits();
        let reply = raw_call(
            &mut grpc,
            "t-share",
            "/strata.v1.Proxy/Commit",
            request.encode_to_vec().into(),
        )
        .await
        .unwrap();
        let mut versions: Vec<u64> = CommitReply::decode(reply)
            .unwrap()
            .outcomes
            .into_iter()
            .map(|o| match o.outcome.unwrap() {
                Outcome::Version(v) => v,
                Outcome::Failure(f) => panic!("refused: {f:?}"),
            })
            .collect();
        assert_eq!(versions.len(), count);
        versions.sort_unstable();
        versions.dedup();
        assert_eq!(
            proxy.lone_commits(),
            lone,
            "round {round}: a commit went alone"
        );
        assert!(
            versions.len() < count,
            "round {round}: {count} transactions in {} batches",
            versions.len()
        );
    }
    served.stop().await;
}
