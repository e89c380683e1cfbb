//! A process that holds the cluster id and reaches a proxy worker's port (not the director's
//! second port) recruits the worker with a wiring of its own: a sequencer and a resolver it
//! serves, or the director's, and the real logs at the director's second port, which the
//! worker would reach on its behalf. The stages there answer only calls that carry the
//! running epoch's token, which travels only in the director's own recruitments: every such
//! recruitment fails, nothing reaches the logs, and recovery goes on.

#![allow(clippy::unwrap_used, clippy::expect_used, unreachable_pub)]

mod common;

use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;
use strata_core::{
    CommitProxy, Epoch, Key, ResolveBatch, Resolver, Result, Sequencer, Verdict, Version,
    VersionPair,
};
use strata_director::coordinator::etcd::EtcdStateStore;
use strata_director::workers::{PeerPort, ProxyWorker};
use strata_director::{EmbeddedCluster, RecoveryEnv};
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

/// A proxy worker of cluster `id`, served and registered; where it serves, and what keeps it
/// registered.
async fn proxy_worker(id: &str, etcd: &str) -> (String, strata_director::workers::Registration) {
    let (publish, published) = tokio::sync::watch::channel(Arc::new(Stages::default()));
    let worker: Arc<dyn Recruiter> = Arc::new(ProxyWorker::new(access(id), publish));
    let at = common::serve_worker_at("127.0.0.1:0", access(id), worker, published).await;
    let registration = common::register(etcd, NAME, id, "proxy", &at).await;
    (at, registration)
}

/// What the director of cluster `id` recovers with: its port for the cluster's processes
/// served at a port of 127.0.0.1 (returned), and workers recruited.
async fn director_env(id: &str) -> (RecoveryEnv, String) {
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
    (env, peer_at)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_proxy_worker_recruited_by_another_process_reaches_none_of_the_directors_stages() {
    let Some(etcd) = EtcdServer::start() else {
        return;
    };
    let id = "hj";
    let (proxy_at, _registration) = proxy_worker(id, &etcd.endpoint()).await;
    let (env, peer_at) = director_env(id).await;
    let store = EtcdStateStore::new(&[etcd.endpoint()], NAME, id).unwrap();
    let config = common::small_windows(2, 1, 1);
    let dir = tempfile::tempdir().unwrap();
    let (cluster, report) = EmbeddedCluster::start_with_env(dir.path(), config, &store, &env)
        .await
        .unwrap();
    assert_eq!(
        report.config.layout.commit_proxies,
        [format!("proxy-0@{proxy_at}")]
    );
    let t = cluster.database().begin();
    t.set(Bytes::from_static(b"honest"), Bytes::from_static(b"y"));
    t.commit().await.unwrap();
    let last = cluster.database().begin().read_version().await.unwrap();

    // The attacker knows the cluster id, the workers' addresses and the second port's (the
    // layout names them), and the log ids; it serves a sequencer of epoch 2 handing out
    // (last, u64::MAX), which on the logs would leave no version for any later recovery.
    let (fake_at, _fake) = serve_fake_stages(id, last).await;
    let (idle_at, _idle) = proxy_worker(id, &etcd.endpoint()).await;
    let logs: Vec<_> = report.config.layout.logs.keys().copied().collect();
    let d = strata_commit_proxy::ProxyConfig::default();
    let wiring = |sequencer: &str, token: Option<&str>| ProxyWiring {
        sequencer: sequencer.to_owned(),
        resolvers: vec![(Key::new(), fake_at.clone(), 0)],
        logs: logs.iter().map(|id| (*id, peer_at.clone())).collect(),
        settings: ProxySettings {
            batch_window: d.batch_window,
            batch_transactions_max: 10,
            batch_bytes_max: 1 << 20,
            queue_transactions_max: 10,
            queue_wait: d.queue_wait,
            in_flight_batches_max: 1,
            stall_timeout: d.stall_timeout,
        },
        token: token.map(str::to_owned),
    };
    // The recruited worker for a newer epoch, without a token and with a guess; a worker no
    // epoch recruited, for the running one, wired to the director's own sequencer.
    let tries = [
        (&proxy_at, 2, fake_at.as_str(), None),
        (
            &proxy_at,
            2,
            fake_at.as_str(),
            Some("0123456789abcdef0123456789abcdef"),
        ),
        (&idle_at, 1, peer_at.as_str(), None),
    ];
    for (worker, epoch, sequencer, token) in tries {
        let refused = RemoteWorker::connect(worker, access(id))
            .await
            .unwrap()
            .recruit(Recruitment {
                epoch: Epoch(epoch),
                role: Role::Proxy,
                recovery_version: last,
                resolver: None,
                proxy: Some(wiring(sequencer, token)),
            })
            .await
            .unwrap_err();
        assert!(
            refused.to_string().contains("token"),
            "{worker} {epoch}: {refused}"
        );
    }
    // The worker goes on with the proxy the director recruited it for.
    let proxy = RemoteProxy::connect(&proxy_at, access(id), 0)
        .await
        .unwrap();
    assert_eq!(proxy.epoch(), Epoch(1));
    let t = cluster.database().begin();
    t.set(Bytes::from_static(b"after"), Bytes::from_static(b"z"));
    t.commit().await.unwrap();
    cluster.check_health().await.unwrap();
    cluster.stop().await;

    let (cluster, report) = EmbeddedCluster::start_with_env(dir.path(), config, &store, &env)
        .await
        .unwrap();
    assert!(report.recovery_version < Version(u64::MAX));
    let t = cluster.database().begin();
    for (key, value) in [(&b"honest"[..], &b"y"[..]), (b"after", b"z")] {
        let got = t.get(&Bytes::copy_from_slice(key)).await.unwrap();
        assert_eq!(got.as_deref(), Some(value));
    }
    cluster.stop().await;
}
