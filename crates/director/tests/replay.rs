//! Log replay with a queue far smaller than the history to copy: recovery copies it in waves
//! that fit the new logs' queues. Before, a whole page of pushes took queue room while its
//! members waited for their predecessors, and every recovery failed out of order.

// Test helpers may unwrap: a panic there is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used, unreachable_pub)]

use bytes::Bytes;
use strata_director::{EmbeddedCluster, EmbeddedConfig};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replay_makes_progress_with_a_queue_smaller_than_a_page() {
    let dir = tempfile::tempdir().unwrap();
    let defaults = EmbeddedConfig::default();
    let config = EmbeddedConfig {
        logs: 2,
        storage: 2,
        // A queue of four values: one page of replay (up to 1,000 entries) is 50 times that.
        log: strata_tlog::FileLogConfig {
            queue_bytes_max: 256 << 10,
            payload_bytes_max: 128 << 10,
            ..defaults.log
        },
        ..defaults
    };
    let value = |i: u32| Bytes::from(vec![u8::try_from(i % 251).unwrap(); 60_000]);
    let cluster = EmbeddedCluster::start(dir.path(), config).await.unwrap();
    let db = cluster.database();
    for i in 0..200u32 {
        db.run(|tx| async move {
            tx.set(format!("big/{i:04}").into(), value(i));
            Ok(())
        })
        .await
        .unwrap();
    }
    cluster.stop().await;

    // The storage servers' window (5 s) keeps all of it in memory only: every recovery
    // replays the whole history, twice in a row here.
    for _ in 0..2 {
        let cluster = EmbeddedCluster::start(dir.path(), config).await.unwrap();
        let tx = cluster.database().begin();
        for i in 0..200u32 {
            let got = tx
                .snapshot_get(&format!("big/{i:04}").into())
                .await
                .unwrap();
            assert_eq!(got, Some(value(i)), "big/{i:04}");
        }
        cluster.stop().await;
    }
}
