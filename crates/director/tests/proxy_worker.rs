//! Commit proxies on workers, as the director's own process sees them: `ProxyWorker`s served
//! in this process (`strata_net::serve_worker`), registered in a real etcd and recruited by
//! `EmbeddedCluster::start_with_env`, which serves its own stages to them on a port for the
//! cluster's processes (`RecoveryEnv::peers`). Every commit acknowledged through a proxy on a
//! worker is read back, epoch after epoch, in every layout; a proxy worker whose batch failed
//! ends the epoch through its heartbeat.

#![allow(clippy::unwrap_used, clippy::expect_used, unreachable_pub)]

mod common;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use strata_core::{CommitProxy, ErrorKind, KeyRange, Mutation, Transaction};
use strata_director::coordinator::etcd::EtcdStateStore;
use strata_director::faults::{FaultPoint, Faults};
use strata_director::workers::{
    PeerPort, ProxyWorker, Registration, ResolverWorker, SequencerWorker,
};
use strata_director::{Database, EmbeddedCluster, EmbeddedConfig, RecoveryEnv, RecoveryReport};
use strata_net::{Access, ClusterId, Exposure, Recruiter, RemoteProxy, Stages};
use strata_testkit::etcd::EtcdServer;

const NAME: &str = "pw";

fn access(id: &str) -> Access {
    Access::new(ClusterId::new(id).unwrap(), None)
}

/// `worker` of `role`, serving what it publishes on `published` at a port of `host`,
/// registered in `etcd` for the cluster `id`. Returns where it serves and its registration.
async fn serve_registered(
    host: &str,
    role: &str,
    id: &str,
    etcd: &str,
    worker: Arc<dyn Recruiter>,
    published: tokio::sync::watch::Receiver<Arc<Stages>>,
) -> (String, Registration) {
    let address =
        common::serve_worker_at(&format!("{host}:0"), access(id), worker, published).await;
    let registration = common::register(etcd, NAME, id, role, &address).await;
    (address, registration)
}

/// A worker of `role` (proxy, resolver or sequencer) for the cluster `id`, served and
/// registered (see [`serve_registered`]).
async fn worker(role: &str, id: &str, etcd: &str) -> (String, Registration) {
    let (publish, published) = tokio::sync::watch::channel(Arc::new(Stages::default()));
    let worker: Arc<dyn Recruiter> = match role {
        "proxy" => Arc::new(ProxyWorker::new(access(id), publish)),
        "resolver" => Arc::new(ResolverWorker::new(
            EmbeddedConfig::default().resolver,
            publish,
        )),
        "sequencer" => Arc::new(SequencerWorker::new(publish)),
        other => panic!("no worker runs {other}"),
    };
    serve_registered("127.0.0.1", role, id, etcd, worker, published).await
}

/// An environment that recruits the workers of cluster `id`, with the director's port for
/// the cluster's processes served at a port of 127.0.0.1 (every call answered).
async fn env_with_peers(id: &str, faults: Option<Arc<Faults>>) -> RecoveryEnv {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap().to_string();
    let (stages, published) = tokio::sync::watch::channel(Arc::new(Stages::default()));
    tokio::spawn(strata_net::serve(
        access(id),
        Exposure::Everything,
        published,
        listener,
        std::future::pending::<()>(),
    ));
    let mut env = match faults {
        Some(f) => RecoveryEnv::with_faults(f),
        None => RecoveryEnv::default(),
    };
    env.access = Some(access(id));
    env.peers = Some(PeerPort {
        address,
        stages: Arc::new(stages),
    });
    env
}

/// Commits `count` one-key transactions from `first` on, `clients` at a time; what was
/// acknowledged, key by key.
async fn commit_many(db: &Database, first: u64, count: u64) -> BTreeMap<Bytes, Bytes> {
    let mut tasks = Vec::new();
    for n in first..first + count {
        let db = db.clone();
        tasks.push(tokio::spawn(async move {
            let key = Bytes::from(format!("k{n:06}"));
            let value = Bytes::from(format!("v{n}"));
            let t = db.begin();
            t.set(key.clone(), value.clone());
            t.commit().await.unwrap();
            (key, value)
        }));
    }
    let mut acked = BTreeMap::new();
    for t in tasks {
        let (k, v) = t.await.unwrap();
        acked.insert(k, v);
    }
    acked
}

/// Every acknowledged key, read back at one read version of `db`.
async fn assert_all_there(db: &Database, acked: &BTreeMap<Bytes, Bytes>) {
    let t = db.begin();
    for (k, v) in acked {
        assert_eq!(t.get(k).await.unwrap().as_ref(), Some(v), "{k:?}");
    }
}

/// A transaction that sets `key` to `value` without reading, encoded as a proxy takes it.
fn blind_set(key: Bytes, value: &'static [u8]) -> Bytes {
    Transaction {
        read_version: None,
        read_conflicts: Vec::new(),
        write_conflicts: vec![KeyRange::single(key.clone())],
        mutations: vec![Mutation::Set {
            key,
            value: Bytes::from_static(value),
        }],
    }
    .encode()
    .unwrap()
}

/// The names the layout gives each proxy, in order.
fn proxies_named(report: &strata_director::RecoveryReport) -> Vec<String> {
    report.config.layout.commit_proxies.clone()
}

/// A proxy worker for the cluster `id`, and what recovers the cluster that recruits it: the
/// etcd, the state store, the environment (with the director's port for the cluster's
/// processes, and faults when given) and the data directory.
struct OneProxyWorker {
    proxy_at: String,
    store: EtcdStateStore,
    env: RecoveryEnv,
    dir: tempfile::TempDir,
    _registration: Registration,
    _etcd: EtcdServer,
}

impl OneProxyWorker {
    /// `None` where no etcd can run (see `EtcdServer::start`).
    async fn new(id: &str, faults: Option<Arc<Faults>>) -> Option<OneProxyWorker> {
        let etcd = EtcdServer::start()?;
        let (proxy_at, registration) = worker("proxy", id, &etcd.endpoint()).await;
        Some(OneProxyWorker {
            proxy_at,
            store: EtcdStateStore::new(&[etcd.endpoint()], NAME, id).unwrap(),
            env: env_with_peers(id, faults).await,
            dir: tempfile::tempdir().unwrap(),
            _registration: registration,
            _etcd: etcd,
        })
    }

    /// Recovers the next epoch, of `config`.
    async fn start(&self, config: EmbeddedConfig) -> (EmbeddedCluster, RecoveryReport) {
        EmbeddedCluster::start_with_env(self.dir.path(), config, &self.store, &self.env)
            .await
            .unwrap()
    }
}

/// A log whose sync fails under a batch of the proxy worker: the proxy fails with it and
/// says so in its heartbeat, but the failure is the log's. Monitoring names the log, and
/// does not pass the worker over: the next recovery recruits it again, and every commit
/// acknowledged before is there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_log_is_blamed_on_the_log_not_on_the_proxy_worker() {
    let faults = Faults::new();
    let Some(w) = OneProxyWorker::new("pl", Some(faults.clone())).await else {
        return;
    };
    let config = common::small_windows(2, 1, 1);
    let (cluster, report) = w.start(config).await;
    assert_eq!(proxies_named(&report), [format!("proxy-0@{}", w.proxy_at)]);
    let acked = commit_many(&cluster.database(), 0, 50).await;

    faults.arm(FaultPoint::LogSync);
    let t = cluster.database().begin();
    t.set(Bytes::from_static(b"unsure"), Bytes::from_static(b"x"));
    t.commit().await.unwrap_err();
    let health = cluster.check_health().await.unwrap_err();
    assert!(matches!(health.kind, ErrorKind::Poisoned(_)), "{health}");
    cluster.stop().await;

    let (cluster, report) = w.start(config).await;
    assert_eq!(proxies_named(&report), [format!("proxy-0@{}", w.proxy_at)]);
    assert_all_there(&cluster.database(), &acked).await;
    commit_many(&cluster.database(), 1_000, 20).await;
    cluster.stop().await;
}

/// A persistence phase that fails at a commit proxy fails at one of the director's own (the
/// system transaction goes through those): the proxy worker had no part in it and is
/// recruited again by the next attempt.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_persistence_phase_failed_by_a_proxy_does_not_pass_the_proxy_worker_over() {
    let faults = Faults::new();
    let Some(w) = OneProxyWorker::new("pp", Some(faults.clone())).await else {
        return;
    };
    faults.arm(FaultPoint::ProxyCommit);
    let (cluster, report) = w.start(common::small_windows(2, 1, 1)).await;
    assert!(!faults.is_armed(FaultPoint::ProxyCommit), "the fault fired");
    assert_eq!(report.epoch.0, 2, "the first attempt failed");
    assert_eq!(proxies_named(&report), [format!("proxy-0@{}", w.proxy_at)]);
    commit_many(&cluster.database(), 0, 20).await;
    cluster.stop().await;
}

/// A process that holds the cluster id (every client has it, in its cluster file) and
/// reaches a proxy worker's port (the layout names it) cannot write system keys through it:
/// one bad `\xff/system/config` would fail every later persistence phase. Only the director
/// writes them, through a proxy in its own process, so recovery goes on as before.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_proxy_worker_refuses_system_keys_and_recovery_goes_on() {
    let id = "ps";
    let Some(w) = OneProxyWorker::new(id, None).await else {
        return;
    };
    let proxy_at = &w.proxy_at;
    let config = EmbeddedConfig {
        recovery_attempts_max: 2,
        ..common::small_windows(1, 1, 1)
    };
    let mut acked = BTreeMap::new();
    for epoch in 0..3 {
        let (cluster, report) = w.start(config).await;
        // Every proxy of the layout on the worker: the director's own is none of them.
        assert_eq!(proxies_named(&report), [format!("proxy-0@{proxy_at}")]);
        assert_all_there(&cluster.database(), &acked).await;
        let proxy = RemoteProxy::connect(proxy_at, access(id), 0).await.unwrap();
        for key in [&b"\xff/system/config"[..], b"\xff", b"\xff\xff/anything"] {
            let set = blind_set(Bytes::copy_from_slice(key), b"not a configuration");
            let refused = proxy.commit(set).await.unwrap_err();
            assert!(
                matches!(&refused.kind, ErrorKind::InvalidRequest(why) if why.contains("system")),
                "{refused}"
            );
        }
        acked.extend(commit_many(&cluster.database(), epoch * 1_000, 20).await);
        cluster.check_health().await.unwrap();
        cluster.stop().await;
    }
}

/// A proxy worker of an ended epoch that no later epoch recruited still runs that epoch's
/// proxy, and a `Database` handle of that epoch still reaches it: its commits are refused
/// (the stages it calls on the director's port are the next epoch's, which fence it), and
/// nothing it was given is ever read.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_proxy_of_an_ended_epoch_commits_nothing_though_its_worker_still_runs() {
    let Some(etcd) = EtcdServer::start() else {
        return;
    };
    let id = "pe";
    let store = EtcdStateStore::new(&[etcd.endpoint()], NAME, id).unwrap();
    let env = env_with_peers(id, None).await;
    let config = common::small_windows(2, 2, 2);
    let dir = tempfile::tempdir().unwrap();
    // At 127.0.0.2: the worker registered later at 127.0.0.1 sorts first.
    let (publish, published) = tokio::sync::watch::channel(Arc::new(Stages::default()));
    let first = Arc::new(ProxyWorker::new(access(id), publish));
    let (first_at, _first) =
        serve_registered("127.0.0.2", "proxy", id, &etcd.endpoint(), first, published).await;
    let (c1, r1) = EmbeddedCluster::start_with_env(dir.path(), config, &store, &env)
        .await
        .unwrap();
    assert_eq!(proxies_named(&r1), [format!("proxy-0@{first_at}")]);
    let old = c1.database();
    let acked = commit_many(&old, 0, 50).await;
    c1.stop().await;

    let (second_at, _second) = worker("proxy", id, &etcd.endpoint()).await;
    let (c2, r2) = EmbeddedCluster::start_with_env(dir.path(), config, &store, &env)
        .await
        .unwrap();
    assert_eq!(proxies_named(&r2), [format!("proxy-0@{second_at}")]);
    let new = commit_many(&c2.database(), 1_000, 50).await;
    // The old handle takes no read version (its sequencer is stopped with its epoch)...
    let e = old.begin().read_version().await.unwrap_err();
    assert!(matches!(e.kind, ErrorKind::Unavailable(_)), "{e}");
    // ...and the old epoch's proxy, still served by the first worker, commits nothing.
    let stale = RemoteProxy::connect(&first_at, access(id), 0)
        .await
        .unwrap();
    assert_eq!(stale.epoch(), r1.epoch);
    for n in 0..20 {
        let set = blind_set(Bytes::from(format!("stale{n}")), b"x");
        let refused = stale.commit(set).await.unwrap_err();
        assert!(!matches!(refused.kind, ErrorKind::Conflict), "{refused}");
    }
    // Nor does the old handle's blind write, which asks for no read version first.
    let blind = old.begin();
    blind.set(
        Bytes::from_static(b"stale-handle"),
        Bytes::from_static(b"x"),
    );
    let e = blind
        .commit()
        .await
        .expect_err("the old epoch committed a blind write");
    assert!(!e.is_retryable(), "{e}");
    let db = c2.database();
    assert_all_there(&db, &acked).await;
    assert_all_there(&db, &new).await;
    let t = db.begin();
    for n in 0..20 {
        let key = Bytes::from(format!("stale{n}"));
        assert_eq!(t.get(&key).await.unwrap(), None, "{key:?}");
    }
    let key = Bytes::from_static(b"stale-handle");
    assert_eq!(t.get(&key).await.unwrap(), None);
    c2.stop().await;
}

/// In each layout (1 to 3 logs, storage servers and resolvers; one or two proxies, one of
/// them on a worker), with the sequencer and a resolver on workers in the largest: every
/// commit acknowledged through a proxy on a worker is there in the next epochs, for
/// histories many storage windows long; the layout names the worker.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn commits_through_a_proxy_worker_hold_across_epochs_in_every_layout() {
    let Some(etcd) = EtcdServer::start() else {
        return;
    };
    for (i, (logs, storage, resolvers, proxies)) in [(1, 1, 1, 1), (2, 2, 2, 2), (3, 3, 3, 1)]
        .into_iter()
        .enumerate()
    {
        let id = format!("p{i}");
        let mut held = vec![worker("proxy", &id, &etcd.endpoint()).await];
        if logs == 3 {
            held.push(worker("sequencer", &id, &etcd.endpoint()).await);
            held.push(worker("resolver", &id, &etcd.endpoint()).await);
        }
        let proxy_at = held[0].0.clone();
        let store = EtcdStateStore::new(&[etcd.endpoint()], NAME, &id).unwrap();
        let env = env_with_peers(&id, None).await;
        let config = EmbeddedConfig {
            proxies,
            ..common::small_windows(logs, storage, resolvers)
        };
        let dir = tempfile::tempdir().unwrap();
        let mut acked = BTreeMap::new();
        for epoch in 0..3u64 {
            let (cluster, report) =
                EmbeddedCluster::start_with_env(dir.path(), config, &store, &env)
                    .await
                    .unwrap();
            let named = proxies_named(&report);
            assert_eq!(named.len(), proxies, "{named:?}");
            assert_eq!(named[0], format!("proxy-0@{proxy_at}"), "{named:?}");
            if logs == 3 {
                let layout = format!("{:?}", report.config.layout);
                assert!(
                    layout.contains(&format!("sequencer-0@{}", held[1].0)),
                    "{layout}"
                );
                assert!(
                    layout.contains(&format!("resolver-0@{}", held[2].0)),
                    "{layout}"
                );
            }
            assert_all_there(&cluster.database(), &acked).await;
            // About 300 ms of commits: six of the storage servers' 50 ms windows.
            let started = tokio::time::Instant::now();
            let mut n = epoch * 1_000_000;
            while started.elapsed() < Duration::from_millis(300) {
                acked.extend(commit_many(&cluster.database(), n, 50).await);
                n += 50;
            }
            assert_all_there(&cluster.database(), &acked).await;
            cluster.stop().await;
        }
        assert!(acked.len() >= 300, "{} commits", acked.len());
    }
}

/// A batch that fails on the proxy worker (a log push refused) fails that proxy, whose
/// worker still answers heartbeats: monitoring learns it from the heartbeat and ends the
/// epoch, and the next recovery passes the worker over, running the proxy itself.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_proxy_worker_whose_batch_failed_ends_the_epoch_by_its_heartbeat() {
    let faults = Faults::new();
    let Some(w) = OneProxyWorker::new("pf", Some(faults.clone())).await else {
        return;
    };
    let proxy_at = &w.proxy_at;
    let config = common::small_windows(2, 2, 2);
    let (cluster, report) = w.start(config).await;
    assert_eq!(proxies_named(&report), [format!("proxy-0@{proxy_at}")]);
    let acked = commit_many(&cluster.database(), 0, 100).await;
    cluster.check_health().await.unwrap();

    faults.arm(FaultPoint::LogPush);
    let t = cluster.database().begin();
    t.set(Bytes::from_static(b"lost"), Bytes::from_static(b"x"));
    let failed = t.commit().await.unwrap_err();
    assert!(!matches!(failed.kind, ErrorKind::Conflict), "{failed}");
    // Only the worker knows its proxy failed: the director's own proxy carries no client's
    // commit, and its logs are healthy (the push was refused by the decorator before them).
    let health = cluster.check_health().await.unwrap_err();
    assert!(
        health.to_string().contains(proxy_at.as_str()) && health.to_string().contains("failed"),
        "{health}"
    );
    cluster.stop().await;

    let (cluster, report) = w.start(config).await;
    assert_eq!(proxies_named(&report).len(), 1);
    assert!(
        !proxies_named(&report)[0].contains(proxy_at.as_str()),
        "{:?}",
        proxies_named(&report)
    );
    assert_all_there(&cluster.database(), &acked).await;
    cluster.stop().await;
}

/// A state store that, at its `at`-th swap (a recovery's write of the coordinated state that
/// records its new logs), first commits straight through the proxy worker at `proxy_at`, as
/// any holder of the cluster id can, and then fails the swap: an etcd that did not answer.
struct CommitAtStateWrite {
    inner: EtcdStateStore,
    swaps: std::sync::atomic::AtomicUsize,
    at: usize,
    proxy_at: String,
    id: String,
    answered: std::sync::Mutex<Option<strata_core::Result<strata_core::Version>>>,
}

impl strata_director::StateStore for CommitAtStateWrite {
    fn read(&self) -> strata_core::Result<Option<strata_director::CoordinatedState>> {
        self.inner.read()
    }

    fn compare_and_swap(
        &self,
        expected: u64,
        new: strata_director::CoordinatedState,
    ) -> strata_core::Result<strata_director::CoordinatedState> {
        if self.swaps.fetch_add(1, std::sync::atomic::Ordering::SeqCst) != self.at {
            return self.inner.compare_and_swap(expected, new);
        }
        let (proxy_at, id) = (self.proxy_at.clone(), self.id.clone());
        // On a runtime of its own: this is called on the director's.
        let answered = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            runtime.block_on(async move {
                let proxy = RemoteProxy::connect(&proxy_at, access(&id), 0).await?;
                proxy
                    .commit(blind_set(Bytes::from_static(b"early"), b"x"))
                    .await
            })
        })
        .join()
        .unwrap();
        *self.answered.lock().unwrap() = Some(answered);
        Err(strata_core::Error::new(
            strata_core::Stage::Director,
            ErrorKind::Unavailable("etcd did not answer (injected)".into()),
        ))
    }

    fn workers(&self) -> strata_core::Result<Vec<strata_director::workers::WorkerPlace>> {
        self.inner.workers()
    }
}

/// A proxy worker can be reached (by anyone holding the cluster id) as soon as it is
/// recruited, before the recovery has recorded the new logs in the coordinated state; but the
/// director's logs take its pushes only once the recovery has finished (a gate no call from
/// outside can open). A commit acknowledged earlier would sit on logs that a failed write of
/// the state leaves unrecorded, and the next epoch, recovering from the logs before them,
/// would lose it (or, if a storage server had made it durable, refuse to recover at all).
/// The recovery whose write failed is followed by one that succeeds, and every commit
/// acknowledged is there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_proxy_worker_takes_no_commit_before_its_recovery_has_finished() {
    let Some(etcd) = EtcdServer::start() else {
        return;
    };
    let id = "po";
    let (proxy_at, _registration) = worker("proxy", id, &etcd.endpoint()).await;
    let store = CommitAtStateWrite {
        inner: EtcdStateStore::new(&[etcd.endpoint()], NAME, id).unwrap(),
        swaps: std::sync::atomic::AtomicUsize::new(0),
        // A first epoch's claim and state, then the second's claim, then its state.
        at: 3,
        proxy_at: proxy_at.clone(),
        id: id.into(),
        answered: std::sync::Mutex::new(None),
    };
    let env = env_with_peers(id, None).await;
    let config = common::small_windows(1, 1, 1);
    let dir = tempfile::tempdir().unwrap();
    let (cluster, _) = EmbeddedCluster::start_with_env(dir.path(), config, &store, &env)
        .await
        .unwrap();
    let mut acked = commit_many(&cluster.database(), 0, 50).await;
    cluster.stop().await;

    // The second epoch's state write fails, with the proxy worker recruited for it; the
    // attempt after it recovers the third.
    let (cluster, report) = EmbeddedCluster::start_with_env(dir.path(), config, &store, &env)
        .await
        .unwrap();
    let early = store
        .answered
        .lock()
        .unwrap()
        .take()
        .expect("a commit was tried");
    let refused = early.expect_err("the proxy worker took a commit before its epoch was recorded");
    assert!(
        refused.stage == strata_core::Stage::Log
            && matches!(refused.kind, ErrorKind::Unavailable(_)),
        "{refused}"
    );
    assert_eq!(report.epoch.0, 3);
    assert_eq!(proxies_named(&report), [format!("proxy-0@{proxy_at}")]);
    // Open now (a new proxy for the new epoch): straight to the worker, as through the
    // director.
    let direct = RemoteProxy::connect(&proxy_at, access(id), 0)
        .await
        .unwrap();
    let version = direct
        .commit(blind_set(Bytes::from_static(b"late"), b"y"))
        .await
        .unwrap();
    assert!(version > report.system_commit_version);
    acked.extend(commit_many(&cluster.database(), 1_000, 50).await);
    assert_all_there(&cluster.database(), &acked).await;
    let t = cluster.database().begin();
    assert_eq!(t.get(&Bytes::from_static(b"early")).await.unwrap(), None);
    assert_eq!(
        t.get(&Bytes::from_static(b"late"))
            .await
            .unwrap()
            .as_deref(),
        Some(&b"y"[..])
    );
    cluster.stop().await;
}
