//! A log served over loopback: the remote log behaves as the log it serves, over histories
//! longer than a segment, and refuses what it must: other clusters, malformed bytes, a server
//! gone away.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use strata_core::{Epoch, ErrorKind, LogId, LogServer, Result, Stage, Version};
use strata_net::proto::log_client::LogClient;
use strata_net::{CLUSTER_ID_HEADER, RemoteLog};
use strata_tlog::{FileLog, FileLogConfig};

mod common;
use common::{RawCodec, Served, cluster};

fn file_log(dir: &std::path::Path) -> FileLog {
    let config = FileLogConfig {
        // Segments of a few dozen entries: the history below crosses many.
        segment_bytes: 16 << 10,
        predecessor_wait: Duration::from_millis(50),
        ..FileLogConfig::default()
    };
    FileLog::open(dir, LogId(3), Version(0), config).unwrap()
}

fn payload(v: u64) -> Bytes {
    Bytes::from(format!("batch {v} ").repeat(60))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_remote_log_is_the_log_it_serves_over_many_segments() {
    let dir = tempfile::tempdir().unwrap();
    let local = Arc::new(file_log(dir.path()));
    let served = Served::log(local.clone(), "t-segments").await;
    let remote = RemoteLog::connect(&served.address, cluster("t-segments"), LogId(3))
        .await
        .unwrap();
    assert_eq!(remote.id(), LogId(3));

    let state = remote.lock(Epoch(1)).await.unwrap();
    assert_eq!((state.epoch, state.first_version), (Epoch(1), None));
    // 600 entries of about 600 bytes: over 20 segments of 16 KiB.
    let versions: Vec<u64> = (1..=600).map(|n| n * 10).collect();
    let mut previous = 0;
    for &v in &versions {
        remote
            .push(Epoch(1), Version(previous), Version(v), payload(v))
            .await
            .unwrap();
        previous = v;
    }
    // Followed from the start in small pulls, as a storage server would.
    let mut after = Version(0);
    let mut seen = Vec::new();
    while after < Version(6_000) {
        let entries = remote.pull(after, 37).await.unwrap();
        assert!(!entries.is_empty() && entries.len() <= 37);
        for e in entries {
            assert_eq!(e.previous_version, after);
            assert_eq!(e.payload, payload(e.version.0));
            after = e.version;
            seen.push(e.version.0);
        }
    }
    assert_eq!(seen, versions);

    // Popped: the oldest segments go, and a pull from the start is refused as too old, with
    // the versions the log names.
    remote.pop(Version(4_000)).await.unwrap();
    let e = remote.pull(Version(0), 10).await.unwrap_err();
    assert_eq!(e.stage, Stage::Log);
    assert!(
        matches!(e.kind, ErrorKind::TooOld { version, oldest }
        if version == Version(0) && oldest > Version(0)),
        "{e}"
    );
    let local_state = local.lock(Epoch(1)).await.unwrap();
    let remote_state = remote.lock(Epoch(1)).await.unwrap();
    assert_eq!(remote_state, local_state);
    assert_eq!(remote_state.last_version, Version(6_000));
    assert!(remote_state.first_version.unwrap() > Version(10));
    served.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_logs_refusals_arrive_with_their_kind_and_fields() {
    let dir = tempfile::tempdir().unwrap();
    let served = Served::log(Arc::new(file_log(dir.path())), "t-refusals").await;
    let remote = RemoteLog::connect(&served.address, cluster("t-refusals"), LogId(3))
        .await
        .unwrap();
    remote.lock(Epoch(2)).await.unwrap();
    remote
        .push(Epoch(2), Version(0), Version(5), payload(5))
        .await
        .unwrap();

    let fenced = remote
        .push(Epoch(1), Version(5), Version(6), payload(6))
        .await
        .unwrap_err();
    assert!(
        matches!(fenced.kind, ErrorKind::Fenced { request, current }
        if request == Epoch(1) && current == Epoch(2)),
        "{fenced}"
    );
    assert!(fenced.is_fenced());
    let fenced_lock = remote.lock(Epoch(1)).await.unwrap_err();
    assert!(fenced_lock.is_fenced(), "{fenced_lock}");

    let duplicate = remote
        .push(Epoch(2), Version(0), Version(5), payload(5))
        .await
        .unwrap_err();
    assert!(
        matches!(duplicate.kind, ErrorKind::Duplicate { version, .. }
        if version == Version(5)),
        "{duplicate}"
    );

    // A hole in the chain: refused after the log's bounded wait for the predecessor.
    let hole = remote
        .push(Epoch(2), Version(7), Version(9), payload(9))
        .await
        .unwrap_err();
    assert!(
        matches!(hole.kind, ErrorKind::OutOfOrder { previous, last }
        if previous == Version(7) && last == Version(5)),
        "{hole}"
    );
    assert_eq!(hole.stage, Stage::Log);
    // Nothing of the refused pushes was kept.
    let held: Vec<Version> = remote
        .pull(Version(0), 100)
        .await
        .unwrap()
        .iter()
        .map(|e| e.version)
        .collect();
    assert_eq!(held, vec![Version(5)]);
    served.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_of_another_cluster_or_of_none_is_refused_before_the_log() {
    let dir = tempfile::tempdir().unwrap();
    let local = Arc::new(file_log(dir.path()));
    let served = Served::log(local.clone(), "t-clusters-a").await;

    let e = RemoteLog::connect(&served.address, cluster("t-clusters-b"), LogId(3))
        .await
        .unwrap_err();
    assert_eq!(e.stage, Stage::Log);
    assert!(matches!(e.kind, ErrorKind::InvalidRequest(_)), "{e}");
    let text = e.to_string();
    assert!(
        text.contains("t-clusters-b") && text.contains("t-clusters-a"),
        "{text}"
    );

    // A plain gRPC client that names no cluster: refused, and its push never reaches the log.
    let channel = served.channel().await;
    let mut client = LogClient::new(channel);
    let status = client
        .push(strata_net::proto::PushRequest {
            log_id: Some(3),
            epoch: 1,
            previous_version: 0,
            version: 5,
            payload: payload(5),
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), tonic::Code::PermissionDenied);
    assert!(
        status.message().contains("without a cluster id"),
        "{status:?}"
    );
    // The right cluster but no log named: refused too, with the stage's own failure.
    let mut request = tonic::Request::new(strata_net::proto::PushRequest {
        log_id: None,
        epoch: 1,
        previous_version: 0,
        version: 5,
        payload: payload(5),
    });
    request
        .metadata_mut()
        .insert(CLUSTER_ID_HEADER, "t-clusters-a".parse().unwrap());
    let status = client.push(request).await.unwrap_err();
    assert_eq!(status.code(), tonic::Code::InvalidArgument);
    assert!(status.message().contains("names no log"), "{status:?}");
    assert_eq!(local.last_version(), Version(0));
    assert!(local.pull(Version(0), 10).await.unwrap().is_empty());
    served.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_not_there_or_gone_is_unavailable() {
    // Nothing listens on a port just released.
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let e = RemoteLog::connect(&format!("127.0.0.1:{port}"), cluster("t-gone"), LogId(3))
        .await
        .unwrap_err();
    assert!(matches!(e.kind, ErrorKind::Unavailable(_)), "{e}");
    assert!(e.to_string().contains(&format!("127.0.0.1:{port}")), "{e}");
    let e = RemoteLog::connect("not an address", cluster("t-gone"), LogId(3))
        .await
        .unwrap_err();
    assert!(matches!(e.kind, ErrorKind::InvalidRequest(_)), "{e}");

    let dir = tempfile::tempdir().unwrap();
    let served = Served::log(Arc::new(file_log(dir.path())), "t-gone").await;
    let remote = RemoteLog::connect(&served.address, cluster("t-gone"), LogId(3))
        .await
        .unwrap();
    remote
        .push(Epoch(1), Version(0), Version(5), payload(5))
        .await
        .unwrap();
    served.stop().await;
    let e = remote
        .push(Epoch(1), Version(5), Version(6), payload(6))
        .await
        .unwrap_err();
    assert_eq!(e.stage, Stage::Log);
    assert!(matches!(e.kind, ErrorKind::Unavailable(_)), "{e}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fuzzed_request_bytes_get_an_error_or_an_answer_never_a_panic() {
    let dir = tempfile::tempdir().unwrap();
    let local = Arc::new(file_log(dir.path()));
    let served = Served::log(local.clone(), "t-fuzz").await;
    let channel = served.channel().await;
    let mut grpc = tonic::client::Grpc::new(channel);
    let methods = ["Push", "Pull", "Lock", "Pop"];
    // A seeded xorshift: the same bytes every run.
    let mut state = 0x9e37_79b9_7f4a_7c15u64;
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    let mut refused = 0;
    for round in 0..400 {
        let method = methods[round % methods.len()];
        let len = usize::try_from(next() % 64).unwrap();
        let body: Bytes = (0..len).map(|_| next() as u8).collect();
        let mut request = tonic::Request::new(body);
        request
            .metadata_mut()
            .insert(CLUSTER_ID_HEADER, "t-fuzz".parse().unwrap());
        grpc.ready().await.unwrap();
        let path = format!("/strata.v1.Log/{method}").parse().unwrap();
        match grpc.unary(request, path, RawCodec).await {
            Ok(_) => {}
            Err(status) => {
                refused += 1;
                // Never the sign of a handler that died: a panic reaches the client as a
                // reset stream or an unknown error.
                assert!(
                    !matches!(status.code(), tonic::Code::Unknown | tonic::Code::Cancelled),
                    "{method}: {status:?}"
                );
            }
        }
    }
    assert!(
        refused > 100,
        "only {refused} of 400 random requests refused"
    );
    // The server still serves, and the log still follows its chain.
    let remote = RemoteLog::connect(&served.address, cluster("t-fuzz"), LogId(3))
        .await
        .unwrap();
    // Random locks may have raised the epoch: push under whatever it is now.
    let epoch = match local.lock(Epoch(0)).await {
        Ok(state) => state.epoch,
        Err(e) => match e.kind {
            ErrorKind::Fenced { current, .. } => current,
            _ => panic!("{e}"),
        },
    };
    let last = local.last_version();
    let next = last.saturating_add(1);
    remote.push(epoch, last, next, payload(1)).await.unwrap();
    assert_eq!(remote.pull(last, 10).await.unwrap()[0].version, next);
    assert!(!served.task.is_finished());
    served.stop().await;
}

/// A log whose pushes take a while before they reach the log behind it, as a push waiting for
/// its sync does.
struct SlowPushes {
    log: Arc<dyn LogServer>,
    delay: Duration,
    entered: tokio::sync::Notify,
}

#[async_trait::async_trait]
impl LogServer for SlowPushes {
    fn id(&self) -> LogId {
        self.log.id()
    }
    async fn push(
        &self,
        epoch: Epoch,
        previous: Version,
        version: Version,
        b: Bytes,
    ) -> Result<()> {
        self.entered.notify_one();
        tokio::time::sleep(self.delay).await;
        self.log.push(epoch, previous, version, b).await
    }
    async fn pull(&self, after: Version, limit: usize) -> Result<Vec<strata_core::LogEntry>> {
        self.log.pull(after, limit).await
    }
    async fn lock(&self, epoch: Epoch) -> Result<strata_core::LogState> {
        self.log.lock(epoch).await
    }
    async fn pop(&self, version: Version) -> Result<()> {
        self.log.pop(version).await
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_push_whose_caller_gives_up_still_reaches_the_log_whole() {
    let dir = tempfile::tempdir().unwrap();
    let local = Arc::new(file_log(dir.path()));
    let slow = Arc::new(SlowPushes {
        log: local.clone(),
        delay: Duration::from_millis(300),
        entered: tokio::sync::Notify::new(),
    });
    let served = Served::log(slow.clone(), "t-gives-up").await;
    let remote = RemoteLog::connect(&served.address, cluster("t-gives-up"), LogId(3))
        .await
        .unwrap();
    // The caller stops waiting (and drops the call) once the push is on its way to the log.
    let push = remote.push(Epoch(1), Version(0), Version(5), payload(5));
    tokio::select! {
        answer = push => panic!("the push answered before its caller gave up: {answer:?}"),
        () = slow.entered.notified() => {}
    }
    // The push the server took in still ends: the log holds it, and the chain goes on after
    // it, as it would had the caller waited. A cancelled push would leave the log at 0.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while local.last_version() != Version(5) {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the push never reached the log"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    remote
        .push(Epoch(1), Version(5), Version(6), payload(6))
        .await
        .unwrap();
    served.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_of_one_log_is_refused_by_another_at_the_same_address() {
    let dir = tempfile::tempdir().unwrap();
    let first = Arc::new(file_log(dir.path().join("a").as_path()));
    let served = Served::log(first, "t-swap").await;
    let remote = RemoteLog::connect(&served.address, cluster("t-swap"), LogId(3))
        .await
        .unwrap();
    assert_eq!(remote.id(), LogId(3));
    let address = served.address.clone();
    served.stop().await;

    // Another log (id 4) now answers at the same address; the client's channel reconnects to
    // it on its own. Every call names the log it means, so none reaches the wrong log.
    let other = FileLog::open(
        dir.path().join("b").as_path(),
        LogId(4),
        Version(0),
        FileLogConfig::default(),
    )
    .unwrap();
    let other = Arc::new(other);
    let stages = strata_net::Stages {
        logs: vec![other.clone()],
        ..strata_net::Stages::default()
    };
    let served = Served::start_at(&address, stages, "t-swap").await;
    let mut refusals = Vec::new();
    for _ in 0..50 {
        match remote.lock(Epoch(9)).await {
            Err(e) if matches!(e.kind, ErrorKind::Unavailable(_)) => {
                // The channel has not reconnected yet.
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            other => {
                refusals.push(other);
                break;
            }
        }
    }
    let refusal = refusals.pop().expect("the channel never reconnected");
    let e = refusal.unwrap_err();
    assert!(matches!(e.kind, ErrorKind::InvalidRequest(_)), "{e}");
    assert!(
        e.to_string().contains("log 3") && e.to_string().contains("log 4"),
        "{e}"
    );
    let e = remote
        .push(Epoch(9), Version(0), Version(5), payload(5))
        .await
        .unwrap_err();
    assert!(matches!(e.kind, ErrorKind::InvalidRequest(_)), "{e}");
    // A new client that expects log 3 there is refused at once.
    let e = RemoteLog::connect(&address, cluster("t-swap"), LogId(3))
        .await
        .unwrap_err();
    assert!(matches!(e.kind, ErrorKind::InvalidRequest(_)), "{e}");
    assert!(e.to_string().contains("log 4"), "{e}");
    // Log 4 was neither locked nor written.
    assert_eq!(other.lock(Epoch(0)).await.unwrap().epoch, Epoch(0));
    assert_eq!(other.last_version(), Version(0));
    served.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_entry_as_large_as_a_transaction_crosses_both_ways() {
    let dir = tempfile::tempdir().unwrap();
    let config = FileLogConfig {
        predecessor_wait: Duration::from_millis(50),
        ..FileLogConfig::default()
    };
    let local = Arc::new(FileLog::open(dir.path(), LogId(3), Version(0), config).unwrap());
    let served = Served::log(local.clone(), "t-large").await;
    let remote = RemoteLog::connect(&served.address, cluster("t-large"), LogId(3))
        .await
        .unwrap();
    let big = |seed: u8| -> Bytes {
        (0..strata_core::TRANSACTION_BYTES_MAX)
            .map(|i| (i as u8).wrapping_mul(31) ^ seed)
            .collect()
    };
    // Two entries of the largest size: one pull can carry only one of them.
    remote
        .push(Epoch(1), Version(0), Version(5), big(1))
        .await
        .unwrap();
    remote
        .push(Epoch(1), Version(5), Version(6), big(2))
        .await
        .unwrap();
    let first = remote.pull(Version(0), 10).await.unwrap();
    assert_eq!(first.len(), 1);
    assert_eq!(first[0].payload, big(1));
    let second = remote.pull(Version(5), 10).await.unwrap();
    assert_eq!(second.len(), 1);
    assert_eq!(second[0].payload, big(2));

    // One byte more is refused before the log, as a definite refusal: no follower could pull
    // it back in one message once it were held.
    let over = Bytes::from(vec![1u8; strata_core::TRANSACTION_BYTES_MAX + 1]);
    let e = remote
        .push(Epoch(1), Version(6), Version(7), over)
        .await
        .unwrap_err();
    assert!(matches!(e.kind, ErrorKind::InvalidRequest(_)), "{e}");
    assert_eq!(local.last_version(), Version(6));
    served.stop().await;
}
