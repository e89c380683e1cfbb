//! The coordinated state in a real etcd (see `strata_testkit::etcd`): the compare-and-swap,
//! the director's lease, and a cluster recovered again and again with its state there while
//! etcd itself is killed in the middle of an epoch and during a recovery.

#![allow(clippy::unwrap_used, clippy::expect_used, unreachable_pub)]

mod common;

use std::time::{Duration, Instant};

use strata_core::{Epoch, ErrorKind, LogId, Version};
use strata_director::cluster_file::{CLUSTER_FILE_NAME, ClusterFile};
use strata_director::coordinator::etcd::{DIRECTOR_LEASE_TTL, Directing, EtcdStateStore};
use strata_director::coordinator::{CoordinatedState, LogPlace, STATE_FORMAT};
use strata_director::{Coordination, EmbeddedCluster, StateStore};
use strata_testkit::etcd::EtcdServer;

fn state(epoch: u64) -> CoordinatedState {
    CoordinatedState {
        format: STATE_FORMAT,
        generation: 0,
        epoch: Epoch(epoch),
        logs: vec![LogPlace {
            id: LogId(0),
            dir: "logs/1-0".into(),
            at: None,
        }],
        storage: 1,
        recovery_version: Version(0),
        resolvers: Some(1),
        proxies: Some(1),
        served_at: None,
        home: None,
        // Kept as written: log workers check orders against it.
        token_digest: Some(format!("{epoch:064x}")),
        storage_at: Vec::new(),
    }
}

/// The store's calls wait for etcd: from a thread outside any runtime, as tools call it.
#[test]
fn one_writer_wins_each_generation_and_clusters_do_not_share_state() {
    let Some(server) = EtcdServer::start() else {
        return;
    };
    let store = EtcdStateStore::new(&[server.endpoint()], "strata", "one").unwrap();
    assert_eq!(store.read().unwrap(), None);
    let first = store.compare_and_swap(0, state(1)).unwrap();
    assert_eq!(first.generation, 1);
    // A second director that also read generation 0 loses, told the epoch that won.
    let lost = store.compare_and_swap(0, state(1)).unwrap_err();
    assert!(
        matches!(lost.kind, ErrorKind::Fenced { current, .. } if current == Epoch(1)),
        "{lost}"
    );
    let second = store.compare_and_swap(1, state(2)).unwrap();
    assert_eq!(second.generation, 2);
    assert_eq!(store.read().unwrap(), Some(second.clone()));
    // Another cluster (another id) in the same etcd: a state of its own.
    let other = EtcdStateStore::new(&[server.endpoint()], "strata", "two").unwrap();
    assert_eq!(other.read().unwrap(), None);
    other.compare_and_swap(0, state(7)).unwrap();
    assert_eq!(store.read().unwrap(), Some(second));

    // Directors racing from one generation, each with a store of its own: one wins each round.
    for generation in 2..12_u64 {
        let racers: Vec<_> = (0..6)
            .map(|i| {
                let endpoint = server.endpoint();
                std::thread::spawn(move || {
                    let store = EtcdStateStore::new(&[endpoint], "strata", "one").unwrap();
                    store.compare_and_swap(generation, state(generation * 10 + i))
                })
            })
            .collect();
        let won: Vec<_> = racers
            .into_iter()
            .filter_map(|r| r.join().unwrap().ok())
            .collect();
        assert_eq!(won.len(), 1, "generation {generation}");
        assert_eq!(store.read().unwrap(), Some(won[0].clone()));
    }
}

/// Called from inside a runtime (recovery does), where blocking on another runtime would
/// panic. A record rewritten by hand (`etcdctl put`, a mirror or a restore: etcd's own counts
/// of the key start again) is read for what it holds, and swapped from its generation; a value
/// that is not a record is corruption, never trusted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_record_rewritten_by_hand_is_read_and_a_garbled_one_is_corruption() {
    let Some(server) = EtcdServer::start() else {
        return;
    };
    let store = EtcdStateStore::new(&[server.endpoint()], "strata", "tampered").unwrap();
    store.compare_and_swap(0, state(1)).unwrap();
    let second = store.compare_and_swap(1, state(2)).unwrap();
    // Deleted and put back by hand, as a restore would: a new key (version 1) holding the
    // record at generation 2.
    let key = b"/strata/strata/tampered/coordinated";
    let record = serde_json::to_vec(&second).unwrap();
    let fresh = EtcdStateStore::new(&[server.endpoint()], "strata", "tampered2").unwrap();
    fresh
        .etcd()
        .put_if_version(
            b"/strata/strata/tampered2/coordinated",
            0,
            record.clone(),
            0,
        )
        .await
        .unwrap()
        .unwrap();
    assert_eq!(fresh.read().unwrap(), Some(second.clone()));
    // A swap from a generation it does not hold is fenced; from the one it holds, it goes.
    let e = fresh.compare_and_swap(1, state(3)).unwrap_err();
    assert!(
        matches!(e.kind, ErrorKind::Fenced { current, .. } if current == Epoch(2)),
        "{e}"
    );
    assert_eq!(fresh.compare_and_swap(2, state(3)).unwrap().generation, 3);
    // Not a record at all: corruption, naming the key.
    store
        .etcd()
        .put_if_version(key, 2, record[..5].to_vec(), 0)
        .await
        .unwrap()
        .unwrap();
    let e = store.read().unwrap_err();
    assert!(matches!(e.kind, ErrorKind::Corruption(_)), "{e}");
    assert!(e.to_string().contains("tampered/coordinated"), "{e}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_director_at_a_time_and_a_standby_takes_over_when_the_first_stops() {
    let Some(server) = EtcdServer::start() else {
        return;
    };
    let store = EtcdStateStore::new(&[server.endpoint()], "strata", "lead").unwrap();
    let first = store.lead("first", Duration::from_secs(5)).await.unwrap();
    let standby =
        std::sync::Arc::new(EtcdStateStore::new(&[server.endpoint()], "strata", "lead").unwrap());
    let waiting = {
        let standby = standby.clone();
        tokio::spawn(async move { standby.lead("second", Duration::from_secs(5)).await })
    };
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(!waiting.is_finished(), "two directors at once");
    // The first stops without a word (its process killed): its lease runs out, and the
    // standby takes over within the lease's time to live.
    let stopped = Instant::now();
    drop(first);
    let second = waiting.await.unwrap().unwrap();
    let took = stopped.elapsed();
    assert!(
        took <= DIRECTOR_LEASE_TTL + Duration::from_secs(3),
        "{took:?}"
    );
    // Kept alive by its task past its time to live, then given up: the next takes over at once.
    let directing = Directing::start(Some(second));
    let third = {
        let standby = standby.clone();
        tokio::spawn(async move { standby.lead("third", Duration::from_secs(5)).await })
    };
    tokio::time::sleep(DIRECTOR_LEASE_TTL + Duration::from_secs(2)).await;
    assert!(!third.is_finished(), "the kept lease ran out");
    let released = Instant::now();
    directing.release().await;
    third.await.unwrap().unwrap();
    assert!(released.elapsed() < Duration::from_secs(3));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_director_that_cannot_renew_its_lease_learns_it_lost_it() {
    let Some(mut server) = EtcdServer::start() else {
        return;
    };
    let store = EtcdStateStore::new(&[server.endpoint()], "strata", "lost").unwrap();
    let mut directing = Directing::start(Some(
        store.lead("me", Duration::from_secs(5)).await.unwrap(),
    ));
    // etcd away for a second: renewals retry, the lease holds.
    server.kill();
    tokio::time::sleep(Duration::from_secs(1)).await;
    server.restart();
    let held = tokio::time::timeout(DIRECTOR_LEASE_TTL * 2, directing.lost()).await;
    assert!(
        held.is_err(),
        "lost the lease over a short outage: {held:?}"
    );
    // etcd away for good: lost within the lease's time to live and one call's wait.
    server.kill();
    let killed = Instant::now();
    let lost = tokio::time::timeout(DIRECTOR_LEASE_TTL * 3, directing.lost())
        .await
        .expect("the loss is noticed");
    assert!(
        lost.to_string().contains("lost the director's lease"),
        "{lost}"
    );
    // Declared before etcd could expire it (a standby could lead): within its time to live of
    // the last renewal, which was before the kill.
    assert!(
        killed.elapsed() <= DIRECTOR_LEASE_TTL,
        "{:?}",
        killed.elapsed()
    );
}

/// A data directory whose cluster file names etcd keeps its state there: recovered again and
/// again, with another layout each time and histories many storage windows long, while etcd is
/// killed in the middle of an epoch and again during the next recovery.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cluster_with_its_state_in_etcd_recovers_across_etcd_outages() {
    let Some(mut server) = EtcdServer::start() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let file =
        ClusterFile::parse(&format!("strata:recovered@etcd://{}", server.endpoint())).unwrap();
    ClusterFile::for_data_dir(dir.path(), Some(&file)).unwrap();
    assert!(matches!(
        Coordination::for_data_dir(dir.path()).unwrap(),
        Coordination::Etcd(_)
    ));
    let layouts = [(2, 2, 1), (1, 2, 3), (3, 2, 2), (2, 2, 1)];
    let mut acked = Vec::new();
    let mut epochs = Vec::new();
    // What each recovery left in etcd of the token it claimed its epoch with.
    let read_digest = || {
        let dir = dir.path().to_owned();
        async move {
            tokio::task::spawn_blocking(move || {
                Coordination::for_data_dir(&dir).unwrap().read().unwrap()
            })
            .await
            .unwrap()
            .and_then(|s| s.token_digest)
        }
    };
    let mut digests = Vec::new();
    for (round, &(logs, storage, resolvers)) in layouts.iter().enumerate() {
        if round == 2 {
            // etcd is down when the recovery starts: its attempts fail, then succeed once
            // etcd is back.
            server.kill();
            let restarting = std::thread::spawn(move || {
                std::thread::sleep(Duration::from_secs(2));
                server.restart();
                server
            });
            let waited = Instant::now();
            let cluster =
                EmbeddedCluster::start(dir.path(), common::small_windows(logs, storage, resolvers))
                    .await
                    .unwrap();
            // It recovered only once etcd was back.
            assert!(waited.elapsed() >= Duration::from_millis(1500));
            server = restarting.join().unwrap();
            epochs.push(cluster.epoch());
            digests.push(read_digest().await);
            let db = cluster.database();
            let first = u64::try_from(acked.len()).unwrap() * 10;
            acked.extend(common::cycle_for(&db, 20, 4, first, Duration::from_millis(1500)).await);
            cluster.stop().await;
            continue;
        }
        let cluster =
            EmbeddedCluster::start(dir.path(), common::small_windows(logs, storage, resolvers))
                .await
                .unwrap();
        epochs.push(cluster.epoch());
        digests.push(read_digest().await);
        let db = cluster.database();
        let first = u64::try_from(acked.len()).unwrap() * 10;
        if round == 1 {
            // etcd dies in the middle of the epoch: commits do not need it.
            server.kill();
        }
        acked.extend(common::cycle_for(&db, 20, 4, first, Duration::from_millis(1500)).await);
        if round == 1 {
            server.restart();
        }
        cluster.stop().await;
    }
    assert!(epochs.windows(2).all(|w| w[0] < w[1]), "{epochs:?}");
    // Each epoch's state, as its recovery finished writing it, keeps a digest of its own
    // token (a SHA-256, in hex).
    assert!(
        digests
            .iter()
            .all(|d| d.as_ref().is_some_and(|d| d.len() == 64)),
        "{digests:?}"
    );
    let mut distinct = digests.clone();
    distinct.sort();
    distinct.dedup();
    assert_eq!(distinct.len(), digests.len(), "{digests:?}");
    // No state in the directory: it lives in etcd.
    assert!(!dir.path().join("coordinated.json").exists());
    assert!(dir.path().join(CLUSTER_FILE_NAME).exists());
    let cluster = EmbeddedCluster::start(dir.path(), common::small_windows(1, 2, 1))
        .await
        .unwrap();
    let db = cluster.database();
    assert_eq!(
        strata_director::workload::cycle::check_ring(&db)
            .await
            .unwrap(),
        20
    );
    strata_director::workload::cycle::check_acks(&db, &acked)
        .await
        .unwrap();
    cluster.stop().await;
}

/// A directory that holds a cluster's data while etcd holds no state for it (another etcd, or
/// one wiped): not a new cluster. Recovery refuses it, naming etcd, and writes nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_directory_with_data_and_no_state_in_etcd_is_refused_naming_etcd() {
    let Some(server) = EtcdServer::start() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let file = ClusterFile::parse(&format!("strata:wiped@etcd://{}", server.endpoint())).unwrap();
    ClusterFile::for_data_dir(dir.path(), Some(&file)).unwrap();
    let cluster = EmbeddedCluster::start(dir.path(), common::small_windows(1, 1, 1))
        .await
        .unwrap();
    common::cycle_for(&cluster.database(), 10, 2, 0, Duration::from_millis(300)).await;
    cluster.stop().await;
    drop(server);
    let Some(empty) = EtcdServer::start() else {
        return;
    };
    std::fs::write(
        dir.path().join(CLUSTER_FILE_NAME),
        format!("strata:wiped@etcd://{}\n", empty.endpoint()),
    )
    .unwrap();
    let before = common::snapshot(dir.path());
    let e = EmbeddedCluster::start(dir.path(), common::small_windows(1, 1, 1))
        .await
        .unwrap_err();
    assert!(matches!(e.kind, ErrorKind::Corruption(_)), "{e}");
    let text = e.to_string();
    assert!(
        text.contains("missing, but the directory holds data"),
        "{text}"
    );
    assert!(
        text.contains(&format!(
            "etcd://{}/strata/strata/wiped/coordinated",
            empty.endpoint()
        )),
        "{text}"
    );
    assert!(!text.contains("coordinated.json"), "{text}");
    common::assert_unchanged(&before, &common::snapshot(dir.path()), "a refused recovery");
    let store = EtcdStateStore::new(&[empty.endpoint()], "strata", "wiped").unwrap();
    assert_eq!(store.read().unwrap(), None, "an epoch was claimed");
}

/// A copy of the directory (another path or host: a standby made with rsync, an old host put
/// back) is refused before anything is claimed: its logs are not the cluster's logs, and a
/// recovery from them would lose every commit made after the copy.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_copy_of_the_directory_elsewhere_cannot_recover_the_cluster() {
    let Some(server) = EtcdServer::start() else {
        return;
    };
    let root = tempfile::tempdir().unwrap();
    let home = root.path().join("home");
    std::fs::create_dir(&home).unwrap();
    let file = ClusterFile::parse(&format!("strata:homed@etcd://{}", server.endpoint())).unwrap();
    ClusterFile::for_data_dir(&home, Some(&file)).unwrap();
    let cluster = EmbeddedCluster::start(&home, common::small_windows(2, 1, 1))
        .await
        .unwrap();
    let mut acked =
        common::cycle_for(&cluster.database(), 10, 2, 0, Duration::from_millis(300)).await;
    // Copied while it runs, in the middle of its epoch: the copy holds the epoch's logs, with
    // what they held then.
    let copy = root.path().join("copy");
    let copied = std::process::Command::new("cp")
        .arg("-a")
        .arg(&home)
        .arg(&copy)
        .status()
        .unwrap();
    assert!(copied.success());
    // The original goes on and commits more after the copy was taken.
    acked.extend(
        common::cycle_for(
            &cluster.database(),
            10,
            2,
            1_000,
            Duration::from_millis(300),
        )
        .await,
    );
    let epoch = cluster.epoch();
    cluster.stop().await;

    let store = EtcdStateStore::new(&[server.endpoint()], "strata", "homed").unwrap();
    let before = store.read().unwrap().unwrap();
    let e = EmbeddedCluster::start(&copy, common::small_windows(2, 1, 1))
        .await
        .unwrap_err();
    assert!(matches!(e.kind, ErrorKind::InvalidRequest(_)), "{e}");
    let text = e.to_string();
    let canonical = std::fs::canonicalize(&home).unwrap();
    assert!(
        text.contains(&format!(":{}", canonical.display())),
        "{text}"
    );
    assert!(text.contains("not in this data directory"), "{text}");
    assert_eq!(
        store.read().unwrap().unwrap(),
        before,
        "the copy claimed an epoch"
    );
    assert_eq!(before.epoch, epoch);

    // The original still recovers, with everything.
    let cluster = EmbeddedCluster::start(&home, common::small_windows(1, 1, 1))
        .await
        .unwrap();
    let db = cluster.database();
    assert_eq!(
        strata_director::workload::cycle::check_ring(&db)
            .await
            .unwrap(),
        10
    );
    strata_director::workload::cycle::check_acks(&db, &acked)
        .await
        .unwrap();
    cluster.stop().await;
}
