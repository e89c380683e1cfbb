//! The simulated network: what it does to a call, and that a seed replays it.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use strata_core::{Epoch, ErrorKind, LogId, LogServer, Version};
use strata_testkit::MemoryLog;
use strata_testkit::network::{NetLog, Network, SILENCE_LIMIT};
use tokio::time::Instant;

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .start_paused(true)
        .build()
        .unwrap()
}

fn no_delay() -> std::ops::Range<Duration> {
    Duration::ZERO..Duration::ZERO
}

async fn newest(log: &MemoryLog) -> Version {
    log.pull(Version(0), 10_000)
        .await
        .unwrap()
        .last()
        .map_or(Version(0), |e| e.version)
}

fn is_unavailable(e: &strata_core::Error) -> bool {
    matches!(e.kind, ErrorKind::Unavailable(_))
}

#[test]
fn a_lost_request_never_reaches_the_stage_and_a_lost_answer_does() {
    runtime().block_on(async {
        let network = Network::new(1, no_delay());
        let log = Arc::new(MemoryLog::new(LogId(0), Version(0)));
        let remote = NetLog::new(log.clone(), &network, "log-0");
        let payload = || Bytes::from_static(b"x");

        network.lose_requests(1);
        let e = remote
            .push(Epoch(1), Version(0), Version(1), payload())
            .await;
        assert!(is_unavailable(&e.unwrap_err()));
        assert_eq!(newest(&log).await, Version(0), "a lost request was applied");

        network.lose_answers(1);
        let e = remote
            .push(Epoch(1), Version(0), Version(1), payload())
            .await;
        assert!(is_unavailable(&e.unwrap_err()));
        assert_eq!(
            newest(&log).await,
            Version(1),
            "a lost answer's call was not applied"
        );

        // Spent: the next call goes through.
        remote
            .push(Epoch(1), Version(1), Version(2), payload())
            .await
            .unwrap();
        assert_eq!(network.counts().0, 2);
    });
}

#[test]
fn a_partition_holds_calls_until_it_heals_or_the_silence_limit() {
    runtime().block_on(async {
        let network = Network::new(2, no_delay());
        let log = Arc::new(MemoryLog::new(LogId(0), Version(0)));
        let remote = NetLog::new(log.clone(), &network, "log-0");
        let other = NetLog::new(log.clone(), &network, "log-1");

        // Healed before the limit: the call waits for it, then goes through.
        network.partition("log-0", Duration::from_secs(2));
        let started = Instant::now();
        // (A lock answers at once; a pull of an empty log would wait for an entry.)
        remote.lock(Epoch(1)).await.unwrap();
        assert_eq!(started.elapsed(), Duration::from_secs(2));
        // Other roles are not cut off.
        network.partition("log-0", Duration::from_secs(30));
        let started = Instant::now();
        other.lock(Epoch(1)).await.unwrap();
        assert_eq!(started.elapsed(), Duration::ZERO);

        // Longer than the limit: the call fails after it, unseen by the stage.
        let started = Instant::now();
        let e = remote
            .push(Epoch(1), Version(0), Version(1), Bytes::from_static(b"x"))
            .await
            .unwrap_err();
        assert!(is_unavailable(&e));
        assert_eq!(started.elapsed(), SILENCE_LIMIT);
        assert_eq!(newest(&log).await, Version(0));
    });
}

#[test]
fn a_killed_role_refuses_calls_and_its_next_incarnation_is_alive() {
    runtime().block_on(async {
        let network = Network::new(3, no_delay());
        let log = Arc::new(MemoryLog::new(LogId(0), Version(0)));
        let first = NetLog::new(log.clone(), &network, "log-0");
        assert_eq!(network.roles(), vec!["log-0".to_owned()]);
        assert_eq!(network.kill("log-0"), 1);
        assert!(network.roles().is_empty());
        let started = Instant::now();
        let e = first.lock(Epoch(1)).await.unwrap_err();
        assert!(is_unavailable(&e), "{e}");
        assert_eq!(
            started.elapsed(),
            Duration::ZERO,
            "a refused connection waits"
        );

        // Restarted: a new incarnation of the same role.
        let second = NetLog::new(log.clone(), &network, "log-0");
        second.lock(Epoch(1)).await.unwrap();
        assert!(
            first.lock(Epoch(1)).await.is_err(),
            "the killed one came back"
        );
        assert!(network.killed().contains("log-0"));
    });
}

#[test]
fn delays_come_from_the_latency_range_and_replay_from_the_seed() {
    let run = |seed: u64| {
        runtime().block_on(async move {
            // Whole milliseconds: tokio's timer rounds a sleep up to the next one.
            let range = Duration::from_millis(1)..Duration::from_millis(9);
            let network = Network::new(seed, range.clone());
            let log = Arc::new(MemoryLog::new(LogId(0), Version(0)));
            let remote = NetLog::new(log, &network, "log-0");
            let mut took = Vec::new();
            for _ in 0..50 {
                let started = Instant::now();
                remote.lock(Epoch(1)).await.unwrap();
                let elapsed = started.elapsed();
                // A request and an answer, each within the range.
                assert!(
                    elapsed >= range.start * 2 && elapsed <= range.end * 2,
                    "{elapsed:?}"
                );
                took.push(elapsed);
            }
            took
        })
    };
    let first = run(11);
    assert_eq!(first, run(11), "the same seed gave other delays");
    assert_ne!(first, run(12), "another seed gave the same delays");
    assert!(first.iter().any(|d| *d != first[0]), "every delay the same");
}

#[test]
fn a_call_delivered_runs_to_its_end_when_its_caller_gives_up() {
    runtime().block_on(async {
        let network = Network::new(4, Duration::from_millis(5)..Duration::from_millis(6));
        let log = Arc::new(MemoryLog::new(LogId(0), Version(0)));
        let remote = NetLog::new(log.clone(), &network, "log-0");
        // A push that arrives before its predecessor waits in the log for it; its caller
        // gives up meanwhile (delivered at 5 ms, given up at 8 ms).
        let push = remote.push(Epoch(1), Version(1), Version(2), Bytes::from_static(b"x"));
        let gave_up = tokio::time::timeout(Duration::from_millis(8), push).await;
        assert!(
            gave_up.is_err(),
            "the push did not wait for its predecessor"
        );
        // The predecessor lands: the push the caller gave up on lands after it.
        log.push(Epoch(1), Version(0), Version(1), Bytes::from_static(b"w"))
            .await
            .unwrap();
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert_eq!(
            newest(&log).await,
            Version(2),
            "the delivered push was cancelled"
        );

        // Given up before delivery: nothing lands.
        let push = remote.push(Epoch(1), Version(2), Version(3), Bytes::from_static(b"y"));
        let gave_up = tokio::time::timeout(Duration::from_millis(2), push).await;
        assert!(gave_up.is_err());
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert_eq!(newest(&log).await, Version(2), "an undelivered push landed");
    });
}

#[test]
fn an_answer_ready_during_a_partition_waits_for_it_to_heal() {
    runtime().block_on(async {
        let network = Network::new(5, no_delay());
        let log = Arc::new(MemoryLog::new(LogId(0), Version(0)));
        let remote = Arc::new(NetLog::new(log.clone(), &network, "log-0"));
        // A pull waits on the log for an entry; the partition starts while it waits.
        let started = Instant::now();
        let waiting = {
            let remote = remote.clone();
            tokio::spawn(async move { remote.pull(Version(0), 10).await })
        };
        tokio::time::sleep(Duration::from_millis(1)).await;
        network.partition("log-0", Duration::from_secs(2));
        log.push(Epoch(1), Version(0), Version(1), Bytes::from_static(b"x"))
            .await
            .unwrap();
        let pulled = waiting.await.unwrap().unwrap();
        assert_eq!(pulled.len(), 1);
        assert!(
            started.elapsed() >= Duration::from_secs(2),
            "{:?}",
            started.elapsed()
        );
    });
}

#[test]
fn roles_whose_decorators_are_gone_are_not_offered() {
    let network = Network::new(6, no_delay());
    let log = Arc::new(MemoryLog::new(LogId(0), Version(0)));
    let kept = NetLog::new(log.clone(), &network, "log-0");
    let dropped = NetLog::new(log, &network, "log-1");
    assert_eq!(
        network.roles(),
        vec!["log-0".to_owned(), "log-1".to_owned()]
    );
    drop(dropped);
    assert_eq!(network.roles(), vec!["log-0".to_owned()]);
    assert_eq!(network.kill("log-1"), 0, "killed a role no one can reach");
    drop(kept);
}

#[test]
fn the_calls_of_a_batch_it_fails_at_once_are_reported() {
    use std::sync::Mutex;
    use strata_testkit::faults::FaultPoint;
    runtime().block_on(async {
        let network = Network::new(7, no_delay());
        let heard = Arc::new(Mutex::new(Vec::new()));
        let into = heard.clone();
        network.watch(move |fired| into.lock().unwrap().push((fired.point, fired.epoch)));
        let log = Arc::new(MemoryLog::new(LogId(0), Version(0)));
        let remote = NetLog::new(log.clone(), &network, "log-0");
        let x = || Bytes::from_static(b"x");

        // A pull is no call of a batch; a push is.
        network.lose_answers(2);
        assert!(remote.pull(Version(0), 10).await.is_err());
        assert!(
            remote
                .push(Epoch(4), Version(0), Version(1), x())
                .await
                .is_err()
        );
        // A partition outlasting the silence limit is not reported (the batch's stall is).
        network.partition("log-0", SILENCE_LIMIT * 2);
        assert!(
            remote
                .push(Epoch(4), Version(1), Version(2), x())
                .await
                .is_err()
        );
        network.kill("log-0");
        assert!(
            remote
                .push(Epoch(5), Version(1), Version(2), x())
                .await
                .is_err()
        );
        assert_eq!(
            *heard.lock().unwrap(),
            vec![
                (FaultPoint::LogPush, Some(Epoch(4))),
                (FaultPoint::LogPush, Some(Epoch(5)))
            ]
        );
    });
}
