//! The client's connection itself: many more calls at once than a server takes on one
//! connection, a server whose host stops answering mid-call (the keep-alive must fail the
//! call, then a new connection serves the next one), and a server gone and back.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use strata_core::{Epoch, ErrorKind, LogEntry, LogId, LogServer, LogState, Stage, Version};
use strata_net::{
    Access, CONNECT_TIMEOUT, Exposure, KEEPALIVE_INTERVAL, KEEPALIVE_TIMEOUT, RemoteLog,
    STREAMS_PER_CONNECTION_MAX, Stages, Tls,
};
use strata_testkit::MemoryLog;
use strata_testkit::certs::{CA, NODE_CERT, NODE_KEY};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

mod common;
use common::{Served, cluster};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn far_more_calls_at_once_than_the_server_takes_on_a_connection_all_complete() {
    let log = Arc::new(MemoryLog::new(LogId(3), Version(0)));
    log.push(Epoch(1), Version(0), Version(1), Bytes::from_static(b"one"))
        .await
        .unwrap();
    let served = Served::log(log, "t-many").await;
    let remote = Arc::new(
        RemoteLog::connect(&served.address, cluster("t-many"), LogId(3))
            .await
            .unwrap(),
    );
    // The server takes 1,024 calls at once on a connection; the others wait their turn on
    // the client. A pull after the last entry is held open by the log (100 ms), so those
    // overlap; the others are answered at once.
    let calls: Vec<_> = (0..3_000u64)
        .map(|i| {
            let remote = remote.clone();
            tokio::spawn(async move { (i, remote.pull(Version(i % 2), 10).await) })
        })
        .collect();
    for call in calls {
        let (i, pulled) = call.await.unwrap();
        let pulled = pulled.unwrap_or_else(|e| panic!("call {i}: {e}"));
        if i % 2 == 0 {
            assert_eq!(pulled.len(), 1, "call {i}");
            assert_eq!(pulled[0].version, Version(1));
            assert_eq!(pulled[0].payload, Bytes::from_static(b"one"));
        } else {
            assert!(pulled.is_empty(), "call {i}");
        }
    }
    served.stop().await;
}

/// A TCP relay to `target` that can black-hole the connections it carries: after
/// [`Relay::freeze`], the bytes of every connection accepted so far go nowhere (the sockets
/// stay open, as with a host that stopped answering), while later connections pass, unless
/// the relay is [`Relay::mute`]d too.
struct Relay {
    address: String,
    accepted: Arc<AtomicU64>,
    frozen_below: Arc<AtomicU64>,
    /// Connections whose client closed its end.
    closed: Arc<AtomicU64>,
    /// How long a new connection's first bytes from the server are held back, in ms.
    hold_first_ms: Arc<AtomicU64>,
}

impl Relay {
    async fn start(target: String) -> Relay {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap().to_string();
        let relay = Relay {
            address,
            accepted: Arc::new(AtomicU64::new(0)),
            frozen_below: Arc::new(AtomicU64::new(0)),
            closed: Arc::new(AtomicU64::new(0)),
            hold_first_ms: Arc::new(AtomicU64::new(0)),
        };
        let (count, frozen, closed, hold) = (
            relay.accepted.clone(),
            relay.frozen_below.clone(),
            relay.closed.clone(),
            relay.hold_first_ms.clone(),
        );
        tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let n = count.fetch_add(1, Ordering::SeqCst);
                let server = TcpStream::connect(&target).await.unwrap();
                let (client_in, client_out) = client.into_split();
                let (server_in, server_out) = server.into_split();
                let (frozen, closed) = (frozen.clone(), closed.clone());
                let hold = Duration::from_millis(hold.load(Ordering::SeqCst));
                let answers = frozen.clone();
                tokio::spawn(async move {
                    tokio::time::sleep(hold).await;
                    pass(n, server_in, client_out, answers).await;
                });
                tokio::spawn(async move {
                    pass(n, client_in, server_out, frozen).await;
                    closed.fetch_add(1, Ordering::SeqCst);
                });
            }
        });
        relay
    }

    /// Black-holes the connections accepted so far.
    fn freeze(&self) {
        self.frozen_below
            .store(self.accepted.load(Ordering::SeqCst), Ordering::SeqCst);
    }

    /// Black-holes every connection, later ones included.
    fn mute(&self) {
        self.frozen_below.store(u64::MAX, Ordering::SeqCst);
    }
}

/// Copies `from` to `to` until connection `n` is frozen; then swallows what arrives, and
/// never closes `to` (not even once `from` is closed: the server's end of a frozen
/// connection gives up on its own pings, which the client must not learn of). Returns when
/// `from` closes while the connection passes.
async fn pass(
    n: u64,
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    frozen_below: Arc<AtomicU64>,
) {
    let mut buffer = vec![0u8; 64 << 10];
    loop {
        let read = from.read(&mut buffer).await;
        if n < frozen_below.load(Ordering::SeqCst) {
            if matches!(read, Ok(0) | Err(_)) {
                std::future::pending::<()>().await;
            }
            continue;
        }
        let read = match read {
            Ok(0) | Err(_) => return,
            Ok(read) => read,
        };
        if to.write_all(&buffer[..read]).await.is_err() {
            return;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_to_a_server_that_stops_answering_fails_and_the_next_connects_again() {
    let log = Arc::new(MemoryLog::new(LogId(3), Version(0)));
    let served = Served::log(log.clone(), "t-silent").await;
    let relay = Relay::start(served.address.clone()).await;
    let remote = RemoteLog::connect(&relay.address, cluster("t-silent"), LogId(3))
        .await
        .unwrap();
    remote
        .push(Epoch(1), Version(0), Version(1), Bytes::from_static(b"one"))
        .await
        .unwrap();

    relay.freeze();
    // The push never reaches the log and its answer never comes back: the connection's
    // pings go unanswered, and it is dropped, failing the call, within the keep-alive's
    // bound. (The limit here only stops a test that would otherwise wait forever.)
    let bound = KEEPALIVE_INTERVAL + KEEPALIVE_TIMEOUT;
    let silent = remote.push(Epoch(1), Version(1), Version(2), Bytes::from_static(b"two"));
    let e = tokio::time::timeout(bound * 4, silent)
        .await
        .expect("a call to a silent server was never failed")
        .unwrap_err();
    assert_eq!(e.stage, Stage::Log);
    assert!(matches!(e.kind, ErrorKind::Unavailable(_)), "{e}");
    assert!(e.to_string().contains("answered no ping"), "{e}");
    assert_eq!(log.entries().len(), 1);

    // The next call connects again (through the relay, which passes new connections).
    remote
        .push(Epoch(1), Version(1), Version(2), Bytes::from_static(b"two"))
        .await
        .unwrap();
    assert_eq!(log.entries().last().unwrap().version, Version(2));
    assert_eq!(relay.accepted.load(Ordering::SeqCst), 2);
    served.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn once_a_server_closed_the_connection_the_next_call_makes_a_new_one() {
    let log = Arc::new(MemoryLog::new(LogId(3), Version(0)));
    let mut served = Served::log(log.clone(), "t-back").await;
    let address = served.address.clone();
    let remote = RemoteLog::connect(&address, cluster("t-back"), LogId(3))
        .await
        .unwrap();
    for round in 0..3u64 {
        // Each round's call is the first after its server stopped, closing the connection,
        // and another started at its address: it is made on a new connection, not failed.
        remote
            .push(
                Epoch(1),
                Version(round),
                Version(round + 1),
                Bytes::from_static(b"x"),
            )
            .await
            .unwrap_or_else(|e| panic!("round {round}: {e}"));
        served.stop().await;
        // A moment for the client to read the connection's end (a call that races it may
        // fail, its outcome unknown, as with any connection lost under a call).
        tokio::time::sleep(Duration::from_millis(200)).await;
        let stages = Stages {
            logs: vec![log.clone()],
            ..Stages::default()
        };
        served = Served::start_at(&address, stages, "t-back").await;
    }
    assert_eq!(log.entries().len(), 3);
    served.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_that_find_the_connection_lost_share_one_attempt_to_connect() {
    // With TLS, a connection is made only once the server answers its handshake: a host that
    // answers nothing holds an attempt for the whole connect timeout.
    let tls = Tls::from_pem(CA, NODE_CERT, NODE_KEY).unwrap();
    let access = || Access::new(cluster("t-share"), Some(tls.clone()));
    let log = Arc::new(MemoryLog::new(LogId(3), Version(0)));
    let stages = Stages {
        logs: vec![log.clone() as Arc<dyn LogServer>],
        ..Stages::default()
    };
    let served = Served::start_access("127.0.0.1:0", Exposure::Everything, stages, access()).await;
    let relay = Relay::start(served.address.clone()).await;
    let remote = Arc::new(
        RemoteLog::connect(&relay.address, access(), LogId(3))
            .await
            .unwrap(),
    );
    remote.pull(Version(0), 1).await.unwrap();

    relay.mute();
    let e = remote.pull(Version(0), 1).await.unwrap_err();
    assert!(matches!(e.kind, ErrorKind::Unavailable(_)), "{e}");
    // Now every call must connect again, and no handshake is ever answered. The calls share
    // one attempt (or a few, as they arrive): 40 attempts one after another would take 40
    // connect timeouts. (The limit only tells the two apart.)
    let calls: Vec<_> = (0..40)
        .map(|_| {
            let remote = remote.clone();
            tokio::spawn(async move { remote.pull(Version(0), 1).await })
        })
        .collect();
    let all = async {
        for call in calls {
            let e = call.await.unwrap().unwrap_err();
            assert!(matches!(e.kind, ErrorKind::Unavailable(_)), "{e}");
            assert!(e.to_string().contains("no connection within"), "{e}");
            assert!(e.to_string().contains("was not sent"), "{e}");
        }
    };
    tokio::time::timeout(CONNECT_TIMEOUT * 8, all)
        .await
        .expect("calls waited for each other's attempts to connect");
    assert!(relay.accepted.load(Ordering::SeqCst) < 10);
    served.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_no_one_holds_is_closed() {
    let log = Arc::new(MemoryLog::new(LogId(3), Version(0)));
    let served = Served::log(log, "t-drop").await;
    let relay = Relay::start(served.address.clone()).await;
    let remote = RemoteLog::connect(&relay.address, cluster("t-drop"), LogId(3))
        .await
        .unwrap();
    remote.pull(Version(0), 1).await.unwrap();
    assert_eq!(relay.closed.load(Ordering::SeqCst), 0);
    drop(remote);
    // The connection's task ends and closes the socket: nothing is left running for it.
    let mut waited = Duration::ZERO;
    while relay.closed.load(Ordering::SeqCst) == 0 {
        assert!(
            waited < Duration::from_secs(30),
            "the connection stayed open"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
        waited += Duration::from_millis(10);
    }
    served.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_of_calls_on_a_new_connection_waits_for_the_servers_limit() {
    let log = Arc::new(MemoryLog::new(LogId(3), Version(0)));
    let mut served = Served::log(log.clone(), "t-burst").await;
    let address = served.address.clone();
    let relay = Relay::start(address.clone()).await;
    let remote = Arc::new(
        RemoteLog::connect(&relay.address, cluster("t-burst"), LogId(3))
            .await
            .unwrap(),
    );
    // The connection is lost, and the next one's first bytes from the server (its SETTINGS,
    // with its limit of calls at once) arrive late: until they do, the client must not open
    // more calls than any server takes, or those beyond the limit are refused.
    served.stop().await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    let stages = Stages {
        logs: vec![log.clone() as Arc<dyn LogServer>],
        ..Stages::default()
    };
    served = Served::start_at(&address, stages, "t-burst").await;
    relay.hold_first_ms.store(300, Ordering::SeqCst);
    let calls: Vec<_> = (0..2_000u64)
        .map(|i| {
            let remote = remote.clone();
            tokio::spawn(async move { (i, remote.pull(Version(0), 1).await) })
        })
        .collect();
    for call in calls {
        let (i, pulled) = call.await.unwrap();
        let pulled = pulled.unwrap_or_else(|e| panic!("call {i}: {e}"));
        assert!(pulled.is_empty(), "call {i}");
    }
    served.stop().await;
}

/// A log whose pulls each take 200 ms, counting how many run at once.
struct Counting {
    log: MemoryLog,
    now: AtomicU64,
    most: AtomicU64,
}

#[async_trait::async_trait]
impl LogServer for Counting {
    fn id(&self) -> LogId {
        self.log.id()
    }
    async fn push(
        &self,
        epoch: Epoch,
        previous: Version,
        version: Version,
        payload: Bytes,
    ) -> strata_core::Result<()> {
        self.log.push(epoch, previous, version, payload).await
    }
    async fn pull(&self, after: Version, limit: usize) -> strata_core::Result<Vec<LogEntry>> {
        let now = self.now.fetch_add(1, Ordering::SeqCst) + 1;
        self.most.fetch_max(now, Ordering::SeqCst);
        tokio::time::sleep(Duration::from_millis(200)).await;
        self.now.fetch_sub(1, Ordering::SeqCst);
        self.log.pull(after, limit).await
    }
    async fn lock(&self, epoch: Epoch) -> strata_core::Result<LogState> {
        self.log.lock(epoch).await
    }
    async fn pop(&self, version: Version) -> strata_core::Result<()> {
        self.log.pop(version).await
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_runs_at_most_its_limit_of_calls_from_one_connection() {
    let log = Arc::new(Counting {
        log: MemoryLog::new(LogId(3), Version(0)),
        now: AtomicU64::new(0),
        most: AtomicU64::new(0),
    });
    log.push(Epoch(1), Version(0), Version(1), Bytes::from_static(b"one"))
        .await
        .unwrap();
    let served = Served::log(log.clone(), "t-limit").await;
    let remote = Arc::new(
        RemoteLog::connect(&served.address, cluster("t-limit"), LogId(3))
            .await
            .unwrap(),
    );
    let calls: Vec<_> = (0..3_000)
        .map(|_| {
            let remote = remote.clone();
            tokio::spawn(async move { remote.pull(Version(0), 1).await })
        })
        .collect();
    for call in calls {
        assert_eq!(call.await.unwrap().unwrap().len(), 1);
    }
    // The calls beyond the limit waited on the client; the server never ran more, and ran
    // far more than a new connection's first 100 once it had said its limit.
    let most = log.most.load(Ordering::SeqCst);
    assert!(
        most <= u64::from(STREAMS_PER_CONNECTION_MAX),
        "{most} at once"
    );
    assert!(most > 100, "{most} at once");
    served.stop().await;
}
