//! Closing a log writes what its writer still holds, with threads or inline: a push admitted
//! before the close is on disk after it, and a `lock` on the same handle (what recovery does when
//! the process still holds the closed log) answers at once with it. (Found by review: the first
//! inline writer was cancelled by `close`, dropping the queued push while the chain counted it
//! accepted, so the `lock` waited out `queue_wait` and failed the recovery attempt.)

// Test helpers may unwrap: a panic there is a failed test.
#![allow(clippy::unwrap_used)]

use std::sync::Arc;

use bytes::Bytes;
use strata_core::{Blocking, Epoch, LogId, LogServer, LogState, Version};
use strata_tlog::fs::RealFs;
use strata_tlog::{FileLog, FileLogConfig, OpenMode};

async fn close_with_a_queued_push(blocking: Blocking) -> strata_core::Result<LogState> {
    let dir = tempfile::tempdir().unwrap();
    let log = Arc::new(
        FileLog::open_dir(
            Arc::new(RealFs),
            dir.path(),
            LogId(1),
            OpenMode::Create(Version(0)),
            FileLogConfig {
                blocking,
                ..FileLogConfig::default()
            },
        )
        .unwrap(),
    );
    {
        let push = log.push(Epoch(0), Version(0), Version(1), Bytes::from_static(b"x"));
        tokio::pin!(push);
        // Poll the push once: it is admitted and queued, then waits for its answer.
        tokio::select! {
            biased;
            _ = &mut push => panic!("answered before the writer ran"),
            () = std::future::ready(()) => {}
        }
    }
    // The pusher is gone (its proxy dropped) and the epoch ends in the same turn, before the
    // writer ran (as `EmbeddedCluster::stop` can after a failed probe).
    log.close();
    log.lock(Epoch(1)).await
}

#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn inline_close_then_lock_on_the_same_handle() {
    let state = close_with_a_queued_push(Blocking::Inline).await.unwrap();
    assert_eq!(
        state.last_version,
        Version(1),
        "the queued push was written"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn threads_close_then_lock_on_the_same_handle() {
    let state = close_with_a_queued_push(Blocking::Threads).await.unwrap();
    assert_eq!(
        state.last_version,
        Version(1),
        "the queued push was written"
    );
}
