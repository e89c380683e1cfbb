//! A call run on its caller's task that, when the caller goes away before its end, finishes on
//! a task of its own: a call that changes a stage must run to its end (a push cut between its
//! admission and its sync would leave the log holding what it never made durable), but handing
//! every call to another task costs a thread wake-up each way, tens of microseconds on a
//! virtual machine, for the rare call whose caller leaves.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio_util::task::TaskTracker;

/// `future`, polled by whoever awaits this; see the module docs.
pub(crate) struct RunToEnd<F: Future + Send + 'static>
where
    F::Output: Send,
{
    /// `None` once it completed.
    future: Option<Pin<Box<F>>>,
    /// Where an abandoned future finishes, so that whoever waits for the tracker waits for it
    /// too; `None` for a task of its own.
    tracker: Option<TaskTracker>,
}

impl<F: Future + Send + 'static> RunToEnd<F>
where
    F::Output: Send,
{
    pub(crate) fn new(future: F, tracker: Option<TaskTracker>) -> RunToEnd<F> {
        RunToEnd {
            future: Some(Box::pin(future)),
            tracker,
        }
    }
}

impl<F: Future + Send + 'static> Future for RunToEnd<F>
where
    F::Output: Send,
{
    type Output = F::Output;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        let Some(future) = self.future.as_mut() else {
            // Polled again after it completed: a caller's bug; it never completes again.
            return Poll::Pending;
        };
        match future.as_mut().poll(cx) {
            Poll::Ready(output) => {
                self.future = None;
                Poll::Ready(output)
            }
            Poll::Pending => Poll::Pending,
        }
    }
}

impl<F: Future + Send + 'static> Drop for RunToEnd<F>
where
    F::Output: Send,
{
    fn drop(&mut self) {
        let Some(future) = self.future.take() else {
            return;
        };
        // A future that panicked cannot be polled again: it is dropped here, and what it
        // holds cleans up as it drops.
        if std::thread::panicking() {
            return;
        }
        // Outside a runtime (the process is ending) nothing can finish it.
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let finish = async move {
            let _ = future.await;
        };
        match &self.tracker {
            Some(tracker) => drop(tracker.spawn_on(finish, &runtime)),
            None => drop(runtime.spawn(finish)),
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::time::Duration;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_call_whose_caller_leaves_still_runs_to_its_end() {
        let ended = Arc::new(AtomicBool::new(false));
        let tracker = TaskTracker::new();
        let call = {
            let ended = ended.clone();
            async move {
                tokio::time::sleep(Duration::from_millis(50)).await;
                ended.store(true, Ordering::SeqCst);
                7
            }
        };
        let run = RunToEnd::new(call, Some(tracker.clone()));
        // The caller gives up after the call started.
        assert!(
            tokio::time::timeout(Duration::from_millis(10), run)
                .await
                .is_err()
        );
        assert!(!ended.load(Ordering::SeqCst));
        tracker.close();
        tracker.wait().await;
        assert!(ended.load(Ordering::SeqCst));
        // And a caller that waits gets the answer on its own task.
        assert_eq!(RunToEnd::new(async { 8 }, None).await, 8);
    }
}
