//! [`Handoff`]: work its caller starts, and the runtime finishes if the work must wait.

use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::runtime::Handle;

type Work = Pin<Box<dyn Future<Output = ()> + Send + 'static>>;

/// Work that must run to its end once started, started by whoever awaits this: the first poll
/// runs the work on the caller's task, and work that finishes there costs no task and no
/// wake-up. Work that has to wait instead is spawned on `runtime` at once and finishes there,
/// so it never depends on the caller polling it again (a caller may drop the future or keep it
/// unpolled for a while); a `Handoff` dropped before its first poll spawns its work too. A
/// lone commit's batch is such work: it takes a version pair, and a version that never reaches
/// the logs is a hole in the chain.
///
/// A panic in the work is caught, ends the work (it is dropped, never resumed) and is
/// reported as [`Ran::Panicked`]. If the runtime has shut down, spawned work is dropped with
/// it, as a spawned batch would be.
pub(crate) struct Handoff {
    work: Option<Work>,
    runtime: Handle,
}

/// How the caller's poll of a [`Handoff`] ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Ran {
    /// The work ran to its end on the caller's task.
    Finished,
    /// The work had to wait and was spawned, to finish on the runtime.
    HandedOff,
    /// The work panicked.
    Panicked,
}

impl Handoff {
    pub(crate) fn new(runtime: Handle, work: impl Future<Output = ()> + Send + 'static) -> Self {
        Handoff {
            work: Some(Box::pin(work)),
            runtime,
        }
    }
}

impl Future for Handoff {
    type Output = Ran;

    /// Always ready at once: polled again after that, it has nothing left to run.
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Ran> {
        let this = self.get_mut();
        // Taken out first, so that a panic below drops the work instead of leaving it to
        // `Drop`, which would spawn it to be resumed after its panic.
        let Some(mut work) = this.work.take() else {
            return Poll::Ready(Ran::Finished);
        };
        match std::panic::catch_unwind(AssertUnwindSafe(|| work.as_mut().poll(cx))) {
            Ok(Poll::Ready(())) => Poll::Ready(Ran::Finished),
            Ok(Poll::Pending) => {
                // Moving the box moves no pinned data: the work stays where it was pinned.
                drop(this.runtime.spawn(work));
                Poll::Ready(Ran::HandedOff)
            }
            Err(_) => Poll::Ready(Ran::Panicked),
        }
    }
}

impl Drop for Handoff {
    fn drop(&mut self) {
        if let Some(work) = self.work.take() {
            drop(self.runtime.spawn(work));
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};

    use tokio::sync::Notify;

    use super::*;

    /// Runs the runtime's other tasks for a while.
    async fn let_others_run() {
        for _ in 0..10 {
            tokio::task::yield_now().await;
        }
    }

    #[tokio::test(flavor = "current_thread")]
    async fn work_that_finishes_at_once_runs_once_on_the_caller() {
        let runs = Arc::new(AtomicUsize::new(0));
        let r = runs.clone();
        tokio::spawn(async move {
            let caller = tokio::task::id();
            let mut run = Handoff::new(Handle::current(), async move {
                assert_eq!(tokio::task::id(), caller);
                r.fetch_add(1, Ordering::SeqCst);
            });
            assert_eq!((&mut run).await, Ran::Finished);
            // Polled again, it runs nothing.
            assert_eq!((&mut run).await, Ran::Finished);
        })
        .await
        .unwrap();
        let_others_run().await;
        assert_eq!(runs.load(Ordering::SeqCst), 1);
    }

    #[tokio::test(flavor = "current_thread")]
    async fn work_that_waits_is_finished_by_the_runtime_without_the_caller() {
        let gate = Arc::new(Notify::new());
        let done = Arc::new(AtomicUsize::new(0));
        let (g, d) = (gate.clone(), done.clone());
        let mut run = Handoff::new(Handle::current(), async move {
            g.notified().await;
            d.fetch_add(1, Ordering::SeqCst);
        });
        assert_eq!((&mut run).await, Ran::HandedOff);
        // The caller keeps the future and never polls it again.
        gate.notify_one();
        let_others_run().await;
        assert_eq!(done.load(Ordering::SeqCst), 1);
        drop(run);
        let_others_run().await;
        assert_eq!(done.load(Ordering::SeqCst), 1, "ran once");
    }

    #[tokio::test(flavor = "current_thread")]
    async fn work_dropped_before_it_started_is_run_by_the_runtime() {
        let done = Arc::new(AtomicUsize::new(0));
        let d = done.clone();
        drop(Handoff::new(Handle::current(), async move {
            d.fetch_add(1, Ordering::SeqCst);
        }));
        let_others_run().await;
        assert_eq!(done.load(Ordering::SeqCst), 1);
    }

    #[tokio::test(flavor = "current_thread")]
    async fn a_panic_ends_the_work_and_is_reported() {
        let dropped = Arc::new(AtomicUsize::new(0));
        struct Counted(Arc<AtomicUsize>);
        impl Drop for Counted {
            fn drop(&mut self) {
                self.0.fetch_add(1, Ordering::SeqCst);
            }
        }
        let held = Counted(dropped.clone());
        let mut run = Handoff::new(Handle::current(), async move {
            let _held = held;
            panic!("a bug");
        });
        assert_eq!((&mut run).await, Ran::Panicked);
        drop(run);
        let_others_run().await;
        // What the work held was released, once.
        assert_eq!(dropped.load(Ordering::SeqCst), 1);
    }
}
