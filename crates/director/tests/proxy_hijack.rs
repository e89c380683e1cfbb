//! A process that holds the cluster id and reaches a proxy worker's port (not the director's
//! second port) recruits the worker for a newer epoch with a wiring of its own: a sequencer
//! and a resolver it serves, and the real logs at the director's second port, which the
//! worker reaches on its behalf. The logs there take pushes of the epoch that published them
//! only: nothing the hijacked proxy sends reaches them, and recovery goes on.

#![allow(clippy::unwrap_used, clippy::expect_used, unreachable_pub)]

mod common;

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use strata_core::{
    CommitProxy, Epoch, Key, KeyRange, Mutation, ResolveBatch, Resolver, Result, Sequencer,
    Transaction, Verdict, Version, VersionPair,
};
use strata_director::coordinator::etcd::EtcdStateStore;
use strata_director::workers::{PeerPort, ProxyWorker};
use strata_director::{EmbeddedCluster, EmbeddedConfig, RecoveryEnv};
use strata_net::{
    Access, ClusterId, Exposure, ProxySettings, ProxyWiring, Recruiter, Recruitment, RemoteProxy,
    RemoteWorker, Role, Stages,
};
use strata_testkit::etcd::EtcdServer;

const NAME: &str = "hj";

fn access(id: &str) -> Access {
    Access::new(ClusterId::new(id).unwrap(), None)
}

struct FakeSequencer {
    epoch: Epoch,
    previous: Version,
    version: Version,
}

#[async_trait]
impl Sequencer for FakeSequencer {
    fn epoch(&self) -> Epoch {
        self.epoch
    }
    async fn next_commit_version(&self, _: Epoch) -> Result<VersionPair> {
        Ok(VersionPair {
            previous: self.previous,
            version: self.version,
        })
    }
    async fn report_committed(&self, _: Epoch, _: Version) -> Result<()> {
        Ok(())
    }
    async fn read_version(&self) -> Result<Version> {
        Ok(self.previous)
    }
}

struct AcceptAll;

#[async_trait]
impl Resolver for AcceptAll {
    async fn resolve(&self, batch: ResolveBatch) -> Result<Vec<Verdict>> {
        Ok(vec![Verdict::Committed; batch.transactions.len()])
    }
}

fn blind_set(key: &'static [u8]) -> Bytes {
    let key = Bytes::from_static(key);
    Transaction {
        read_version: None,
        read_conflicts: Vec::new(),
        write_conflicts: vec![KeyRange::single(key.clone())],
        mutations: vec![Mutation::Set {
            key,
            value: Bytes::from_static(b"x"),
        }],
    }
    .encode()
    .unwrap()
}

/// The attacker's own server: a sequencer of epoch 2 that hands out the pair (`last`,
/// `u64::MAX`) and a resolver that accepts everything. Returns where it serves, and what keeps
/// it serving those stages.
async fn serve_fake_stages(
    id: &str,
    last: Version,
) -> (String, tokio::sync::watch::Sender<Arc<Stages>>) {
    let fake = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let fake_at = fake.local_addr().unwrap().to_string();
    let (keep, fake_served) = tokio::sync::watch::channel(Arc::new(Stages {
        sequencer: Some(Arc::new(FakeSequencer {
            epoch: Epoch(2),
            previous: last,
            version: Version(u64::MAX),
        })),
        resolvers: vec![Arc::new(AcceptAll)],
        ..Stages::default()
    }));
    tokio::spawn(strata_net::serve(
        access(id),
        Exposure::Everything,
        fake_served,
        fake,
        std::future::pending::<()>(),
    ));
    (fake_at, keep)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_proxy_worker_recruited_by_another_process_pushes_nothing_to_the_logs() {
    let Some(etcd) = EtcdServer::start() else {
        return;
    };
    let id = "hj";
    // The proxy worker, registered.
    let (publish, published) = tokio::sync::watch::channel(Arc::new(Stages::default()));
    let worker: Arc<dyn Recruiter> = Arc::new(ProxyWorker::new(access(id), publish));
    let proxy_at = common::serve_worker_at("127.0.0.1:0", access(id), worker, published).await;
    let _reg = common::register(&etcd.endpoint(), NAME, id, "proxy", &proxy_at).await;
    // The director, with its port for the cluster's processes.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let peer_at = listener.local_addr().unwrap().to_string();
    let (stages, served) = tokio::sync::watch::channel(Arc::new(Stages::default()));
    tokio::spawn(strata_net::serve(
        access(id),
        Exposure::Everything,
        served,
        listener,
        std::future::pending::<()>(),
    ));
    let mut env = RecoveryEnv::default();
    env.access = Some(access(id));
    env.peers = Some(PeerPort {
        address: peer_at.clone(),
        stages: Arc::new(stages),
    });
    let store = EtcdStateStore::new(&[etcd.endpoint()], NAME, id).unwrap();
    let config = EmbeddedConfig {
        recovery_attempts_max: 3,
        ..common::small_windows(2, 1, 1)
    };
    let dir = tempfile::tempdir().unwrap();
    let (cluster, report) = EmbeddedCluster::start_with_env(dir.path(), config, &store, &env)
        .await
        .unwrap();
    assert_eq!(report.epoch, Epoch(1));
    let t = cluster.database().begin().await.unwrap();
    t.set(Bytes::from_static(b"honest"), Bytes::from_static(b"y"));
    t.commit().await.unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    let last = cluster.database().begin().await.unwrap().read_version();

    // The attacker: the cluster id, the worker's address (the layout names it), the peer
    // port's address and the log ids (the layout names them). Its own server, with a
    // sequencer and a resolver of epoch 2.
    let (fake_at, _fake) = serve_fake_stages(id, last).await;
    let d = strata_commit_proxy::ProxyConfig::default();
    let recruited = RemoteWorker::connect(&proxy_at, access(id))
        .await
        .unwrap()
        .recruit(Recruitment {
            epoch: Epoch(2),
            role: Role::Proxy,
            recovery_version: last,
            resolver: None,
            proxy: Some(ProxyWiring {
                sequencer: fake_at.clone(),
                resolvers: vec![(Key::new(), fake_at.clone(), 0)],
                logs: report
                    .config
                    .layout
                    .logs
                    .keys()
                    .map(|id| (*id, peer_at.clone()))
                    .collect(),
                settings: ProxySettings {
                    batch_window: d.batch_window,
                    batch_transactions_max: 10,
                    batch_bytes_max: 1 << 20,
                    queue_transactions_max: 10,
                    queue_wait: d.queue_wait,
                    in_flight_batches_max: 1,
                    stall_timeout: d.stall_timeout,
                },
            }),
        })
        .await;
    // The worker takes the recruitment (it has no way to tell), and builds the proxy.
    recruited.unwrap();
    let proxy = RemoteProxy::connect(&proxy_at, access(id), 0)
        .await
        .unwrap();
    let refused = proxy.commit(blind_set(b"evil")).await.unwrap_err();
    assert!(
        refused.stage == strata_core::Stage::Log
            && matches!(refused.kind, strata_core::ErrorKind::InvalidRequest(_)),
        "{refused}"
    );
    // The epoch's own commits are untouched by it until monitoring sees its worker lost.
    cluster.stop().await;

    // A version u64::MAX on the logs would leave the sequencer no version to hand out: every
    // later recovery would fail. None is there.
    let (cluster, report) = EmbeddedCluster::start_with_env(dir.path(), config, &store, &env)
        .await
        .unwrap();
    assert!(report.recovery_version < Version(u64::MAX));
    let t = cluster.database().begin().await.unwrap();
    assert_eq!(t.get(&Bytes::from_static(b"evil")).await.unwrap(), None);
    assert_eq!(
        t.get(&Bytes::from_static(b"honest"))
            .await
            .unwrap()
            .as_deref(),
        Some(&b"y"[..])
    );
    cluster.stop().await;
}
