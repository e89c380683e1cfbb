//! Closing a log writes what its writer still holds, with threads or inline: a push admitted
//! before the close is on disk after it, and a `lock` on the same handle (what recovery does when
//! the process still holds the closed log) answers at once with it. (Found by review: the first
//! inline writer was cancelled by `close`, dropping the queued push while the chain counted it
//! accepted, so the `lock` waited out `queue_wait` and failed the recovery attempt.)
//!
//! With threads, a lone push on an idle log writes itself (it leads), so the queued push here
//! is one that arrived while another held the writer: the close must wait for the leader, then
//! have the thread write the queued one.

// Test helpers may unwrap: a panic there is a failed test.
#![allow(clippy::unwrap_used)]

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use strata_core::{Blocking, Epoch, ErrorKind, LogId, LogServer, LogState, Version};
use strata_tlog::fs::{RealFs, SimFs};
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
    // A slow disk: the first push leads, holding the writer through a 50 ms sync on a runtime
    // thread, so the second is queued for the writer thread behind it.
    let fs = Arc::new(SimFs::new());
    fs.set_sync_latency(Duration::from_millis(50));
    let log = Arc::new(
        FileLog::open_with(
            fs,
            Path::new("/log"),
            LogId(1),
            Version(0),
            FileLogConfig::default(),
        )
        .unwrap(),
    );
    let leader = {
        let log = log.clone();
        tokio::spawn(async move {
            log.push(Epoch(0), Version(0), Version(1), Bytes::from_static(b"1"))
                .await
        })
    };
    tokio::time::sleep(Duration::from_millis(10)).await;
    {
        let push = log.push(Epoch(0), Version(1), Version(2), Bytes::from_static(b"2"));
        tokio::pin!(push);
        tokio::select! {
            biased;
            _ = &mut push => panic!("answered while the leader held the writer"),
            () = std::future::ready(()) => {}
        }
    }
    log.close();
    let state = log.lock(Epoch(1)).await.unwrap();
    assert_eq!(
        state.last_version,
        Version(2),
        "the leader's push and the one queued behind it were written"
    );
    leader.await.unwrap().unwrap();
    // Later pushes are refused: the writer stopped with the close.
    let after = log
        .push(Epoch(1), Version(2), Version(3), Bytes::from_static(b"3"))
        .await
        .unwrap_err();
    assert!(matches!(after.kind, ErrorKind::Unavailable(_)), "{after}");
}
