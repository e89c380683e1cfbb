//! [`RunToEnd`]: a future its caller runs, and the runtime finishes if the caller gives up.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::runtime::Handle;

type Work = Pin<Box<dyn Future<Output = ()> + Send + 'static>>;

/// Work that must run to its end once started, run by whoever awaits this (no task is spawned
/// and no other task woken while the caller keeps awaiting it). Dropped before the work ended,
/// the work is spawned on `runtime`, to finish there. A lone commit's batch is such work: it
/// takes a version pair, and a version that never reaches the logs is a hole in the chain.
///
/// If the runtime has shut down, the spawned work is dropped with it, as a spawned batch
/// would be.
pub(crate) struct RunToEnd {
    work: Option<Work>,
    runtime: Handle,
}

impl RunToEnd {
    pub(crate) fn new(runtime: Handle, work: impl Future<Output = ()> + Send + 'static) -> Self {
        RunToEnd {
            work: Some(Box::pin(work)),
            runtime,
        }
    }
}

impl Future for RunToEnd {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let this = self.get_mut();
        let Some(work) = this.work.as_mut() else {
            return Poll::Ready(());
        };
        let done = work.as_mut().poll(cx);
        if done.is_ready() {
            this.work = None;
        }
        done
    }
}

impl Drop for RunToEnd {
    fn drop(&mut self) {
        if let Some(work) = self.work.take() {
            // Moving the box moves no pinned data: the work stays where it was pinned.
            drop(self.runtime.spawn(work));
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};

    use tokio::sync::Notify;

    use super::*;

    #[tokio::test(flavor = "current_thread")]
    async fn work_dropped_halfway_is_finished_by_the_runtime() {
        let gate = Arc::new(Notify::new());
        let done = Arc::new(AtomicBool::new(false));
        let (g, d) = (gate.clone(), done.clone());
        let mut run = RunToEnd::new(Handle::current(), async move {
            g.notified().await;
            d.store(true, Ordering::SeqCst);
        });
        // Polled once, so the work is halfway (waiting on the gate), then given up.
        assert!(futures_poll_once(&mut run).is_pending());
        drop(run);
        gate.notify_one();
        for _ in 0..10 {
            tokio::task::yield_now().await;
        }
        assert!(done.load(Ordering::SeqCst));
    }

    #[tokio::test(flavor = "current_thread")]
    async fn work_awaited_to_its_end_runs_once_on_the_caller() {
        let runs = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let r = runs.clone();
        tokio::spawn(async move {
            let caller = tokio::task::id();
            let mut run = RunToEnd::new(Handle::current(), async move {
                assert_eq!(tokio::task::id(), caller);
                r.fetch_add(1, Ordering::SeqCst);
            });
            (&mut run).await;
            // Polled again after its end, it stays done and runs nothing.
            (&mut run).await;
        })
        .await
        .unwrap();
        for _ in 0..10 {
            tokio::task::yield_now().await;
        }
        assert_eq!(runs.load(Ordering::SeqCst), 1);
    }

    fn futures_poll_once(run: &mut RunToEnd) -> Poll<()> {
        let waker = std::task::Waker::noop();
        Pin::new(run).poll(&mut Context::from_waker(waker))
    }
}
