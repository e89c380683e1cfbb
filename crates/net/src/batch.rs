//! Many callers, few calls: a [`Batcher`] gathers the requests of concurrent callers into one
//! call, as FoundationDB's clients do for read versions and commits. One call across the
//! network costs tens of microseconds of CPU at each end, far more than the work a read version
//! or a small commit needs; shared by a hundred callers, it costs each almost nothing.
//!
//! A caller's request always goes out in a call that starts after the caller arrived: a
//! request that arrives while a call is in flight waits for the next one. That keeps read
//! versions causal: a read version asked for after a commit was acknowledged is taken by a
//! call sent after the acknowledgement, so it is at least the commit's version.

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};

use strata_core::{Error, ErrorKind, Result, Stage};
use tokio::sync::oneshot;

use crate::fitting;
use crate::inline::RunToEnd;

/// One call for a batch of requests: an answer per request, in order.
pub(crate) type Send<T, R> = Box<
    dyn Fn(Vec<T>) -> Pin<Box<dyn Future<Output = Vec<Result<R>>> + std::marker::Send>>
        + std::marker::Send
        + Sync,
>;

/// How a [`Batcher`] sizes its calls.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Limits {
    /// Calls in flight at once; a request that finds them all flying waits for the next.
    pub(crate) flights_max: usize,
    /// Requests in one call.
    pub(crate) count_max: usize,
    /// Bytes of requests in one call (by `weigh`), the first request's included; the first
    /// always goes, even when it alone weighs more.
    pub(crate) bytes_max: usize,
}

struct Queue<T, R> {
    flying: usize,
    waiting: std::collections::VecDeque<(T, oneshot::Sender<Result<R>>)>,
}

/// Gathers concurrent requests into calls; see the module docs.
pub(crate) struct Batcher<T, R> {
    stage: Stage,
    queue: Mutex<Queue<T, R>>,
    send: Send<T, R>,
    weigh: fn(&T) -> usize,
    limits: Limits,
}

impl<T: std::marker::Send + 'static, R: std::marker::Send + 'static> Batcher<T, R> {
    /// A batcher whose calls are made by `send`; `stage` names its failures.
    pub(crate) fn new(
        stage: Stage,
        send: Send<T, R>,
        weigh: fn(&T) -> usize,
        limits: Limits,
    ) -> Arc<Batcher<T, R>> {
        Arc::new(Batcher {
            stage,
            queue: Mutex::new(Queue {
                flying: 0,
                waiting: std::collections::VecDeque::new(),
            }),
            send,
            weigh,
            limits,
        })
    }

    /// The answer to `request`, sent in the next call that starts. The calls run in tasks of
    /// their own: a caller that stops waiting leaves its request in its call.
    ///
    /// Errors: those of the call; `Unavailable` when the call's task ended without an answer.
    pub(crate) async fn call(self: &Arc<Self>, request: T) -> Result<R> {
        let (answer, answered) = oneshot::channel();
        let fly = {
            let mut queue = self.queue.lock().unwrap_or_else(PoisonError::into_inner);
            queue.waiting.push_back((request, answer));
            let fly = queue.flying < self.limits.flights_max;
            if fly {
                queue.flying += 1;
            }
            fly
        };
        let mut answered = answered;
        let mut early = None;
        if fly {
            // The flight runs on this caller's task until this caller's answer arrives (a
            // lone caller pays no hand-off to another task); what remains of it then, calls
            // for requests queued meanwhile, goes on in a task of its own, as it does when
            // this caller stops waiting.
            let mut flight = RunToEnd::new(
                Flight {
                    batcher: self.clone(),
                    landed: false,
                }
                .fly(),
                None,
            );
            tokio::select! {
                biased;
                answer = &mut answered => early = Some(answer),
                () = &mut flight => {}
            }
        }
        let answer = match early {
            Some(answer) => answer,
            None => answered.await,
        };
        answer.unwrap_or_else(|_| {
            Err(Error::new(
                self.stage,
                ErrorKind::Unavailable(
                    "the call carrying the request ended without an answer".into(),
                ),
            ))
        })
    }
}

/// One flight of a [`Batcher`]: calls, each with the requests waiting when it starts, until
/// none waits. A flight that dies before it lands (its task dropped when the runtime shuts
/// down, a panic) gives its place back and, when it was the last in the air, fails the
/// requests left waiting: none waits for an answer that will never come, and the next request
/// starts a flight again.
struct Flight<T, R> {
    batcher: Arc<Batcher<T, R>>,
    /// Set when the flight ended with nothing waiting, its place given back.
    landed: bool,
}

impl<T: std::marker::Send + 'static, R: std::marker::Send + 'static> Flight<T, R> {
    async fn fly(mut self) {
        let batcher = self.batcher.clone();
        loop {
            let (requests, answers): (Vec<T>, Vec<_>) = {
                let mut queue = batcher.queue.lock().unwrap_or_else(PoisonError::into_inner);
                // A request whose caller stopped waiting is not sent: a commit its caller was
                // told had timed out must not leave afterwards.
                queue.waiting.retain(|(_, answer)| !answer.is_closed());
                if queue.waiting.is_empty() {
                    // Under the lock that saw the queue empty: a request queued after this
                    // sees a free place and starts a flight.
                    queue.flying -= 1;
                    self.landed = true;
                    return;
                }
                let sizes = queue
                    .waiting
                    .iter()
                    .map(|(request, _)| (batcher.weigh)(request));
                let take = fitting(
                    sizes.take(batcher.limits.count_max),
                    batcher.limits.bytes_max,
                );
                queue.waiting.drain(..take).unzip()
            };
            let sent = requests.len();
            let results = (batcher.send)(requests).await;
            if results.len() == sent {
                for (answer, result) in answers.into_iter().zip(results) {
                    let _ = answer.send(result);
                }
            } else {
                let why = format!("{} answers for {sent} requests", results.len());
                for answer in answers {
                    let _ = answer.send(Err(Error::new(
                        batcher.stage,
                        ErrorKind::Unavailable(why.clone()),
                    )));
                }
            }
        }
    }
}

impl<T, R> Drop for Flight<T, R> {
    fn drop(&mut self) {
        if self.landed {
            return;
        }
        let batcher = &self.batcher;
        let mut queue = batcher.queue.lock().unwrap_or_else(PoisonError::into_inner);
        queue.flying -= 1;
        if queue.flying == 0 {
            for (_, answer) in queue.waiting.drain(..) {
                let _ = answer.send(Err(Error::new(
                    batcher.stage,
                    ErrorKind::Unavailable(
                        "the call that was to carry the request ended without an answer".into(),
                    ),
                )));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::time::Duration;

    /// The sizes of the calls a test batcher made, in order.
    type Calls = Arc<Mutex<Vec<usize>>>;

    /// A batcher whose calls record their sizes and answer each request with the number of
    /// the call that carried it, after `delay`.
    fn counting(limits: Limits, delay: Duration) -> (Arc<Batcher<u64, u64>>, Calls) {
        let calls = Arc::new(Mutex::new(Vec::new()));
        let seen = calls.clone();
        let number = Arc::new(AtomicU64::new(0));
        let send: Send<u64, u64> = Box::new(move |requests: Vec<u64>| {
            let calls = calls.clone();
            let number = number.clone();
            Box::pin(async move {
                let n = number.fetch_add(1, Ordering::SeqCst);
                calls.lock().unwrap().push(requests.len());
                tokio::time::sleep(delay).await;
                requests.iter().map(|_| Ok(n)).collect()
            })
        });
        (
            Batcher::new(Stage::Sequencer, send, |r| *r as usize, limits),
            seen,
        )
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_requests_share_calls_within_the_limits() {
        let limits = Limits {
            flights_max: 1,
            count_max: 10,
            bytes_max: 1_000,
        };
        let (batcher, calls) = counting(limits, Duration::from_millis(20));
        let tasks: Vec<_> = (0..50)
            .map(|_| {
                let b = batcher.clone();
                tokio::spawn(async move { b.call(1).await.unwrap() })
            })
            .collect();
        for t in tasks {
            t.await.unwrap();
        }
        let calls = calls.lock().unwrap().clone();
        assert_eq!(calls.iter().sum::<usize>(), 50);
        assert!(calls.len() < 50, "{calls:?}");
        assert!(calls.iter().all(|&n| n <= 10), "{calls:?}");
        // By weight: requests of 400 "bytes" go two to a call (the first always goes).
        let (batcher, calls) = counting(limits, Duration::from_millis(20));
        let tasks: Vec<_> = (0..6)
            .map(|_| {
                let b = batcher.clone();
                tokio::spawn(async move { b.call(400).await.unwrap() })
            })
            .collect();
        for t in tasks {
            t.await.unwrap();
        }
        assert!(calls.lock().unwrap().iter().all(|&n| n <= 2), "{calls:?}");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_request_never_rides_a_call_that_started_before_it() {
        let limits = Limits {
            flights_max: 1,
            count_max: 100,
            bytes_max: 1_000,
        };
        let (batcher, _) = counting(limits, Duration::from_millis(50));
        let first = {
            let b = batcher.clone();
            tokio::spawn(async move { b.call(1).await.unwrap() })
        };
        tokio::time::sleep(Duration::from_millis(10)).await;
        // The first call is in flight: this one waits for the next.
        let second = batcher.call(1).await.unwrap();
        assert_eq!(first.await.unwrap(), 0);
        assert_eq!(second, 1);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_caller_that_stops_waiting_leaves_the_others_their_answers() {
        let limits = Limits {
            flights_max: 2,
            count_max: 100,
            bytes_max: 1_000,
        };
        let (batcher, calls) = counting(limits, Duration::from_millis(30));
        let gave_up = tokio::time::timeout(Duration::from_millis(5), batcher.call(1)).await;
        assert!(gave_up.is_err());
        let answered = batcher.call(1).await.unwrap();
        assert!(answered <= 1);
        tokio::time::sleep(Duration::from_millis(50)).await;
        // Both requests went out; the flights ended once nothing waited.
        assert_eq!(calls.lock().unwrap().iter().sum::<usize>(), 2);
        assert_eq!(batcher.queue.lock().unwrap().flying, 0);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_request_whose_caller_left_before_its_call_is_never_sent() {
        let limits = Limits {
            flights_max: 1,
            count_max: 100,
            bytes_max: 1_000,
        };
        let (batcher, calls) = counting(limits, Duration::from_millis(50));
        let first = {
            let b = batcher.clone();
            tokio::spawn(async move { b.call(1).await.unwrap() })
        };
        tokio::time::sleep(Duration::from_millis(10)).await;
        // Queued behind the first call, then given up: a commit the caller was told timed out
        // must not leave afterwards.
        let gave_up = tokio::time::timeout(Duration::from_millis(5), batcher.call(1)).await;
        assert!(gave_up.is_err());
        first.await.unwrap();
        let third = batcher.call(1).await.unwrap();
        assert_eq!(third, 1);
        assert_eq!(calls.lock().unwrap().clone(), [1, 1]);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_flight_that_dies_fails_its_requests_and_the_next_flies() {
        let limits = Limits {
            flights_max: 1,
            count_max: 100,
            bytes_max: 1_000,
        };
        let panicked = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let once = panicked.clone();
        let send: Send<u64, u64> = Box::new(move |requests: Vec<u64>| {
            let once = once.clone();
            Box::pin(async move {
                tokio::time::sleep(Duration::from_millis(20)).await;
                assert!(once.swap(true, Ordering::SeqCst), "the first call dies");
                requests.iter().map(|r| Ok(*r)).collect()
            })
        });
        let batcher = Batcher::new(Stage::Sequencer, send, |_| 1, limits);
        let first = {
            let b = batcher.clone();
            tokio::spawn(async move { b.call(1).await })
        };
        tokio::time::sleep(Duration::from_millis(5)).await;
        // Queued while the first call flies, and left waiting when its flight dies.
        let queued = {
            let b = batcher.clone();
            tokio::spawn(async move { b.call(2).await })
        };
        // The flight ran on the first caller's task: the panic is that caller's (or, had the
        // flight moved to a task of its own, an unanswered request).
        match first.await {
            Err(e) => assert!(e.is_panic(), "{e}"),
            Ok(answer) => {
                let e = answer.unwrap_err();
                assert!(matches!(e.kind, ErrorKind::Unavailable(_)), "{e}");
            }
        }
        let queued = tokio::time::timeout(Duration::from_secs(10), queued)
            .await
            .expect("a request queued behind a dead flight was never answered")
            .unwrap();
        assert!(queued.is_err() || queued.unwrap() == 2);
        // Flights start again.
        let next = tokio::time::timeout(Duration::from_secs(10), batcher.call(3)).await;
        assert_eq!(next.expect("no flight after a dead one").unwrap(), 3);
    }
}
