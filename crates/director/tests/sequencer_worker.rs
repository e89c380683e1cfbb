//! The sequencer on a worker, as the director's own process sees it: a `SequencerWorker`
//! served in this process (`strata_net::serve_worker`), registered in a real etcd and
//! recruited by `EmbeddedCluster::start_with_env`. A lost call to the worker must not stop
//! the director from telling storage what is committed, and a `Database` handle of an ended
//! epoch must be refused, as with the sequencer in process.

#![allow(clippy::unwrap_used, clippy::expect_used, unreachable_pub)]

mod common;

use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener as StdListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use strata_core::{Epoch, ErrorKind, Sequencer, Version, VersionPair};
use strata_director::coordinator::etcd::EtcdStateStore;
use strata_director::workers::{Registration, SequencerWorker};
use strata_director::{EmbeddedCluster, EmbeddedConfig, RecoveryEnv, RecoveryReport};
use strata_net::{Access, ClusterId, Recruiter, Recruitment, Role, Stages};
use strata_testkit::etcd::EtcdServer;

const NAME: &str = "sw";

/// A sequencer worker served at `bind`, registered as living at `register_at` (its own
/// address when `None`). Returns where it serves and its registration.
async fn sequencer_worker(
    bind: &str,
    id: &str,
    etcd: &str,
    register_at: Option<String>,
) -> (String, Registration) {
    let (publish, published) = tokio::sync::watch::channel(Arc::new(Stages::default()));
    let worker = Arc::new(SequencerWorker::new(publish));
    serve_registered(bind, id, etcd, register_at, worker, published).await
}

/// `worker`, serving what it publishes on `published`, at `bind`, registered as a sequencer
/// worker living at `register_at` (its own address when `None`). Returns where it serves and
/// its registration.
async fn serve_registered(
    bind: &str,
    id: &str,
    etcd: &str,
    register_at: Option<String>,
    worker: Arc<dyn Recruiter>,
    published: tokio::sync::watch::Receiver<Arc<Stages>>,
) -> (String, Registration) {
    let access = Access::new(ClusterId::new(id).unwrap(), None);
    let address = common::serve_worker_at(bind, access, worker, published).await;
    let living = register_at.unwrap_or_else(|| address.clone());
    let registration = common::register(etcd, NAME, id, "sequencer", &living).await;
    (address, registration)
}

/// A cluster of the default layout in `dir`, recovered with `store` and `env`.
async fn start(
    dir: &std::path::Path,
    store: &EtcdStateStore,
    env: &RecoveryEnv,
) -> (EmbeddedCluster, RecoveryReport) {
    EmbeddedCluster::start_with_env(dir, EmbeddedConfig::default(), store, env)
        .await
        .unwrap()
}

fn env_for(id: &str) -> RecoveryEnv {
    let mut env = RecoveryEnv::default();
    env.access = Some(Access::new(ClusterId::new(id).unwrap(), None));
    env
}

async fn put(db: &strata_director::Database, key: &str, value: &str) -> strata_core::Version {
    let t = db.begin();
    t.set(
        bytes::Bytes::copy_from_slice(key.as_bytes()),
        bytes::Bytes::copy_from_slice(value.as_bytes()),
    );
    t.commit().await.unwrap()
}

/// A `Database` of an ended epoch whose sequencer ran on a worker is refused once the epoch
/// is stopped, as with the sequencer in process (below): the worker may still run that
/// epoch's sequencer (the next epoch recruited another), and a read version from it would be
/// below a commit the next epoch acknowledged.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_handle_of_an_ended_epoch_is_refused_though_its_worker_still_runs() {
    let Some(etcd) = EtcdServer::start() else {
        return;
    };
    let id = "e2f1";
    // The first worker at 127.0.0.2: a second one registered later at 127.0.0.1 sorts first.
    let (w1, _r1) = sequencer_worker("127.0.0.2:0", id, &etcd.endpoint(), None).await;
    let store = EtcdStateStore::new(&[etcd.endpoint()], NAME, id).unwrap();
    let env = env_for(id);
    let dir = tempfile::tempdir().unwrap();
    let (c1, r1) = start(dir.path(), &store, &env).await;
    let layout1 = format!("{:?}", r1.config);
    assert!(layout1.contains(&format!("sequencer-0@{w1}")), "{layout1}");
    let old = c1.database();
    put(&old, "k", "old").await;
    c1.stop().await;

    let (w0, _r0) = sequencer_worker("127.0.0.1:0", id, &etcd.endpoint(), None).await;
    let (c2, r2) = start(dir.path(), &store, &env).await;
    let layout2 = format!("{:?}", r2.config);
    assert!(layout2.contains(&format!("sequencer-0@{w0}")), "{layout2}");
    let acked = put(&c2.database(), "k", "new").await;

    // The old handle, after the acknowledgement: refused as unavailable, as in process.
    let t = old.begin();
    match t.read_version().await {
        Err(e) => assert!(matches!(e.kind, ErrorKind::Unavailable(_)), "{e}"),
        Ok(rv) => {
            let got = t.get(&bytes::Bytes::from_static(b"k")).await;
            panic!(
                "old handle got read version {rv} (below the acknowledged {acked}) and read k = {got:?}"
            );
        }
    }
    // A blind write through it, which asks for no read version, is refused too.
    refuses_a_blind_write(&old, &c2.database()).await;
    c2.stop().await;
}

/// A TCP proxy that can stall and then cut every connection it carries.
struct Blip {
    paused: Arc<AtomicBool>,
    sockets: Arc<Mutex<Vec<TcpStream>>>,
    address: String,
}

impl Blip {
    fn start(target: String) -> Blip {
        let listener = StdListener::bind("127.0.0.1:0").unwrap();
        let address = listener.local_addr().unwrap().to_string();
        let paused = Arc::new(AtomicBool::new(false));
        let sockets = Arc::new(Mutex::new(Vec::new()));
        let (p, s) = (paused.clone(), sockets.clone());
        std::thread::spawn(move || {
            for inbound in listener.incoming() {
                let Ok(inbound) = inbound else { continue };
                let Ok(outbound) = TcpStream::connect(&target) else {
                    continue;
                };
                inbound.set_nodelay(true).unwrap();
                outbound.set_nodelay(true).unwrap();
                s.lock().unwrap().push(inbound.try_clone().unwrap());
                s.lock().unwrap().push(outbound.try_clone().unwrap());
                let (mut ri, mut wi) = (inbound.try_clone().unwrap(), inbound);
                let (mut ro, mut wo) = (outbound.try_clone().unwrap(), outbound);
                let p = p.clone();
                std::thread::spawn(move || {
                    let mut buf = [0u8; 16384];
                    loop {
                        while p.load(Ordering::SeqCst) {
                            std::thread::sleep(Duration::from_millis(2));
                        }
                        match ri.read(&mut buf) {
                            Ok(0) | Err(_) => break,
                            Ok(n) => {
                                if wo.write_all(&buf[..n]).is_err() {
                                    break;
                                }
                            }
                        }
                    }
                    let _ = wo.shutdown(Shutdown::Both);
                });
                std::thread::spawn(move || {
                    let _ = std::io::copy(&mut ro, &mut wi);
                    let _ = wi.shutdown(Shutdown::Both);
                });
            }
        });
        Blip {
            paused,
            sockets,
            address,
        }
    }

    /// Stalls the calls towards the worker for `stall`, then cuts every connection.
    fn blip(&self, stall: Duration) {
        self.paused.store(true, Ordering::SeqCst);
        std::thread::sleep(stall);
        for s in self.sockets.lock().unwrap().drain(..) {
            let _ = s.shutdown(Shutdown::Both);
        }
        self.paused.store(false, Ordering::SeqCst);
    }
}

/// A read version call to the worker's sequencer that fails once (a connection stalled, then
/// cut) while the epoch goes on: the watermark task carries on, so the storage servers keep
/// learning what is committed (and make it durable, and the logs are popped), for longer
/// than their window in memory.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_read_version_does_not_stop_the_watermark() {
    let Some(etcd) = EtcdServer::start() else {
        return;
    };
    let id = "e2f2";
    // The worker is reached through the proxy: registered at the proxy's address.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let worker_at = listener.local_addr().unwrap().to_string();
    drop(listener);
    let blip = Blip::start(worker_at.clone());
    let (_w, _r) =
        sequencer_worker(&worker_at, id, &etcd.endpoint(), Some(blip.address.clone())).await;
    let store = EtcdStateStore::new(&[etcd.endpoint()], NAME, id).unwrap();
    let env = env_for(id);
    let dir = tempfile::tempdir().unwrap();
    let (c, r) = start(dir.path(), &store, &env).await;
    let layout = format!("{:?}", r.config);
    assert!(
        layout.contains(&format!("sequencer-0@{}", blip.address)),
        "{layout}"
    );
    let db = c.database();
    let storage = c.storage_servers()[0].clone();

    // The watermark works: a commit is known committed within a few intervals.
    let v1 = put(&db, "a", "1").await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(
        storage.committed_version() >= v1,
        "watermark not running at all"
    );

    // One stalled-then-cut connection, while nothing but the watermark calls the sequencer.
    tokio::task::block_in_place(|| blip.blip(Duration::from_millis(400)));
    tokio::time::sleep(Duration::from_millis(300)).await;

    // The worker is reachable again: read versions and commits work, monitoring is happy.
    let mut last = v1;
    for i in 0..20 {
        let t = loop {
            let t = db.begin();
            match t.read_version().await {
                Ok(_) => break t,
                Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
            }
        };
        t.set(
            bytes::Bytes::from(format!("b{i}").into_bytes()),
            bytes::Bytes::from_static(b"x"),
        );
        last = t.commit().await.unwrap();
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    c.check_health().await.unwrap();
    // Seven more seconds of commits: past the storage window (5,000,000 versions).
    let until = std::time::Instant::now() + Duration::from_secs(7);
    let mut n = 0;
    while std::time::Instant::now() < until {
        let t = db.begin();
        t.set(
            bytes::Bytes::from(format!("c{n}").into_bytes()),
            bytes::Bytes::from_static(b"y"),
        );
        last = t.commit().await.unwrap();
        n += 1;
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(n > 0);
    c.check_health().await.unwrap();
    // Within a few watermark intervals, storage knows the last commit is committed, and has
    // made durable what the window could not hold.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let committed = storage.committed_version();
    assert!(
        committed >= last,
        "the watermark stopped: storage knows {committed} committed, {last} was acknowledged"
    );
    let durable = strata_core::StorageServer::durable_version(storage.as_ref())
        .await
        .unwrap();
    assert!(
        durable > v1,
        "nothing made durable since {v1} (durable {durable}, {last} acknowledged)"
    );
    c.stop().await;
}

/// With the sequencer in the director's process (no workers), the same old handle is refused
/// once its epoch was stopped: what a worker's must match.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_the_sequencer_in_process_a_handle_of_an_ended_epoch_is_refused() {
    let Some(etcd) = EtcdServer::start() else {
        return;
    };
    let id = "e2f3";
    let store = EtcdStateStore::new(&[etcd.endpoint()], NAME, id).unwrap();
    let env = env_for(id); // no worker registered: the sequencer runs here
    let dir = tempfile::tempdir().unwrap();
    let (c1, _) = start(dir.path(), &store, &env).await;
    let old = c1.database();
    put(&old, "k", "old").await;
    c1.stop().await;
    let (c2, _) = start(dir.path(), &store, &env).await;
    put(&c2.database(), "k", "new").await;
    let e = old.begin().read_version().await.unwrap_err();
    assert!(matches!(e.kind, ErrorKind::Unavailable(_)), "{e}");
    // A blind write through it, which asks for no read version, is refused too.
    refuses_a_blind_write(&old, &c2.database()).await;
    c2.stop().await;
}

/// A sequencer whose read versions fail while `sick` is set: a worker that still answers its
/// heartbeats while its stage does not work.
struct Sick(Arc<dyn Sequencer>, Arc<AtomicBool>);

#[async_trait]
impl Sequencer for Sick {
    fn epoch(&self) -> Epoch {
        self.0.epoch()
    }
    async fn next_commit_version(&self, epoch: Epoch) -> strata_core::Result<VersionPair> {
        self.0.next_commit_version(epoch).await
    }
    async fn report_committed(&self, epoch: Epoch, version: Version) -> strata_core::Result<()> {
        self.0.report_committed(epoch, version).await
    }
    async fn read_version(&self) -> strata_core::Result<Version> {
        if self.1.load(Ordering::SeqCst) {
            return Err(strata_core::Error::new(
                strata_core::Stage::Sequencer,
                ErrorKind::Unavailable("sick".into()),
            ));
        }
        self.0.read_version().await
    }
}

/// A sequencer worker that serves its sequencers as [`Sick`] ones.
struct SickWorker {
    inner: SequencerWorker,
    built: tokio::sync::watch::Receiver<Arc<Stages>>,
    publish: tokio::sync::watch::Sender<Arc<Stages>>,
    sick: Arc<AtomicBool>,
}

#[async_trait]
impl Recruiter for SickWorker {
    fn role(&self) -> Role {
        Role::Sequencer
    }
    async fn recruit(&self, r: Recruitment) -> strata_core::Result<u32> {
        let index = self.inner.recruit(r).await?;
        let sequencer = self.built.borrow().sequencer.clone().unwrap();
        self.publish.send_replace(Arc::new(Stages {
            sequencer: Some(Arc::new(Sick(sequencer, self.sick.clone()))),
            ..Stages::default()
        }));
        Ok(index)
    }
    fn epoch(&self) -> Option<Epoch> {
        self.inner.epoch()
    }
}

/// A sequencer worker whose heartbeats answer while its sequencer fails monitoring's probe
/// ends the epoch and is passed over by the next recovery, which runs the sequencer itself,
/// instead of recruiting it again and failing with it until the director gives up.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_whose_sequencer_fails_its_probe_is_passed_over() {
    let Some(etcd) = EtcdServer::start() else {
        return;
    };
    let id = "e2f4";
    let (publish, published) = tokio::sync::watch::channel(Arc::new(Stages::default()));
    let (inner_publish, built) = tokio::sync::watch::channel(Arc::new(Stages::default()));
    let sick = Arc::new(AtomicBool::new(false));
    let worker = Arc::new(SickWorker {
        inner: SequencerWorker::new(inner_publish),
        built,
        publish,
        sick: sick.clone(),
    });
    let (address, _registration) =
        serve_registered("127.0.0.1:0", id, &etcd.endpoint(), None, worker, published).await;
    let store = EtcdStateStore::new(&[etcd.endpoint()], NAME, id).unwrap();
    let env = env_for(id);
    let dir = tempfile::tempdir().unwrap();
    let (c1, r1) = start(dir.path(), &store, &env).await;
    let on_worker = format!("sequencer-0@{address}");
    assert!(format!("{:?}", r1.config).contains(&on_worker));
    put(&c1.database(), "k", "1").await;

    sick.store(true, Ordering::SeqCst);
    let e = c1.check_health().await.unwrap_err();
    assert_eq!(e.stage, strata_core::Stage::Sequencer, "{e}");
    c1.stop().await;

    // The next recovery passes the worker over (it would fail its persistence phase on it).
    let (c2, r2) = start(dir.path(), &store, &env).await;
    assert!(
        !format!("{:?}", r2.config).contains(&on_worker),
        "{:?}",
        r2.config
    );
    let db = c2.database();
    let t = db.begin();
    assert_eq!(
        t.get(&bytes::Bytes::from_static(b"k")).await.unwrap(),
        Some(bytes::Bytes::from_static(b"1"))
    );
    c2.stop().await;
}

/// A sequencer worker whose sequencer fails from its first recruitment fails that recovery's
/// persistence phase (its read-back needs a read version); the next attempt passes it over
/// and runs the sequencer itself, instead of recruiting it again and failing each attempt
/// until the director gives up.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_whose_sequencer_fails_the_persistence_phase_is_passed_over() {
    let Some(etcd) = EtcdServer::start() else {
        return;
    };
    let id = "e2f5";
    let (publish, published) = tokio::sync::watch::channel(Arc::new(Stages::default()));
    let (inner_publish, built) = tokio::sync::watch::channel(Arc::new(Stages::default()));
    let worker = Arc::new(SickWorker {
        inner: SequencerWorker::new(inner_publish),
        built,
        publish,
        sick: Arc::new(AtomicBool::new(true)),
    });
    let (address, _registration) =
        serve_registered("127.0.0.1:0", id, &etcd.endpoint(), None, worker, published).await;
    let store = EtcdStateStore::new(&[etcd.endpoint()], NAME, id).unwrap();
    let env = env_for(id);
    let dir = tempfile::tempdir().unwrap();
    // One start, which makes up to `recovery_attempts_max` attempts: the first recruits the
    // worker and fails, the next runs the sequencer in the director.
    let (c, r) = start(dir.path(), &store, &env).await;
    let on_worker = format!("sequencer-0@{address}");
    assert!(
        !format!("{:?}", r.config).contains(&on_worker),
        "{:?}",
        r.config
    );
    put(&c.database(), "k", "1").await;
    c.stop().await;
}

/// A blind write of `k` through `old`, a handle of an ended epoch (it asks for no read version
/// first), is refused, and `new` still reads `k` as "new".
async fn refuses_a_blind_write(old: &strata_director::Database, new: &strata_director::Database) {
    let k = bytes::Bytes::from_static(b"k");
    let blind = old.begin();
    blind.set(k.clone(), bytes::Bytes::from_static(b"stale"));
    let e = blind
        .commit()
        .await
        .expect_err("the old epoch committed a blind write");
    assert!(!e.is_retryable(), "{e}");
    assert_eq!(
        new.begin().get(&k).await.unwrap(),
        Some(bytes::Bytes::from_static(b"new"))
    );
}
