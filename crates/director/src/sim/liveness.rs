//! The rule "no hole in the chain", timed: a batch that fails at one of its stages (its commit
//! version, a resolution, a push to a log, the report) ends its epoch at once. The proxy
//! records the failure, monitoring's next probe finds it, and the director ends the epoch; a
//! proxy that let the batch fail quietly would leave later batches waiting on the hole until
//! the stall detector noticed, seconds on, or for ever where nothing stalls.
//!
//! The simulation hears of every fault as it fires ([`Faults::watch`]), and of every call of a
//! batch the simulated network fails at once (`Network::watch`). For each injected
//! failure on a commit-path call of the epoch serving at that moment, it checks, a few
//! monitoring rounds later, that the epoch is no longer served. The check is skipped when the
//! boot ends first, and when monitoring itself may have been slowed: a probe of the sequencer's
//! read version or a storage server's applied version delayed or hung, or the clock jumped,
//! shortly before or during the wait.

use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use strata_core::Epoch;
use strata_testkit::faults::{Fault, FaultPoint, Faults, Fired};
use strata_testkit::network::Network;
use tokio::time::Instant;

use super::{Trace, corruption};

/// Monitoring rounds within which a failed batch must have ended its epoch: the round that
/// finds it, plus room for the one in progress when it failed.
pub(crate) const ROUNDS: u32 = 5;

/// How far back a slowed probe still counts: the longest a monitoring round can take while its
/// probes answer, each within its timeout (a probe slower than that fails the round, and the
/// epoch ends anyway): the sequencer's and up to three storage servers' probes, 1 s each in the
/// simulation's configuration (a test holds this to every plan).
const SLOWED_REACH: Duration = Duration::from_secs(4);

/// The epoch serving now, if one is.
pub(crate) type Current = Box<dyn Fn() -> Option<Epoch> + Send + Sync>;

/// Follows the faults of one boot and checks that each failed batch ends its epoch in time.
pub(crate) struct EpochEnds {
    serving: Current,
    bound: Duration,
    trace: Arc<Trace>,
    /// When monitoring was last possibly slowed (see the module docs).
    slowed: Mutex<Option<Instant>>,
}

impl EpochEnds {
    /// Checks the epochs `serving` names, allowing [`ROUNDS`] rounds of `round` (the
    /// monitoring interval, and the time its probes spend crossing the network).
    pub(crate) fn new(serving: Current, round: Duration, trace: Arc<Trace>) -> Arc<EpochEnds> {
        Arc::new(EpochEnds {
            serving,
            bound: round * ROUNDS,
            trace,
            slowed: Mutex::new(None),
        })
    }

    /// The clock is about to jump: every timer due meanwhile fires at once, in no order the
    /// check can rely on.
    pub(crate) fn clock_jumps(&self) {
        self.slow_now();
    }

    /// Hears of every batch `faults` fail, and of every one the network fails at once (a
    /// request or an answer lost, a stage killed): each must end its epoch in time.
    pub(crate) fn hear(self: &Arc<Self>, faults: &Faults, network: &Network) {
        let heard = self.clone();
        faults.watch(move |fired| heard.fired(fired));
        let heard = self.clone();
        network.watch(move |fired| heard.fired(fired));
    }

    /// A stage is cut off from the network until `until`: calls to it wait (up to the
    /// silence limit), monitoring's probes too.
    pub(crate) fn network_held(&self, until: Instant) {
        self.slow_until(until);
    }

    fn slow_now(&self) {
        self.slow_until(Instant::now());
    }

    /// Monitoring may be slowed until `until` (a later excuse is never shortened).
    fn slow_until(&self, until: Instant) {
        let mut slowed = self.slowed.lock().unwrap_or_else(PoisonError::into_inner);
        *slowed = Some(slowed.map_or(until, |s| s.max(until)));
    }

    /// A fault fired (called from the faults' watcher, on the task of the call).
    pub(crate) fn fired(self: &Arc<Self>, fired: &Fired) {
        let fails = matches!(fired.fault, Fault::Usual | Fault::FailWith(_));
        match fired.point {
            FaultPoint::ReadVersion | FaultPoint::StorageStop if !fails => self.slow_now(),
            FaultPoint::CommitVersion
            | FaultPoint::Resolve
            | FaultPoint::LogPush
            | FaultPoint::ReportCommitted
                if fails =>
            {
                let Some(epoch) = fired.epoch else { return };
                // Only the epoch serving now: a stale epoch's proxy (the fencing check commits
                // through one) or a recovery's own calls end nothing that serves.
                if (self.serving)() != Some(epoch) {
                    return;
                }
                if let Ok(handle) = tokio::runtime::Handle::try_current() {
                    handle.spawn(self.clone().check(fired.point, epoch, Instant::now()));
                }
            }
            _ => {}
        }
    }

    async fn check(self: Arc<Self>, point: FaultPoint, epoch: Epoch, at: Instant) {
        tokio::time::sleep(self.bound).await;
        let slowed = *self.slowed.lock().unwrap_or_else(PoisonError::into_inner);
        if slowed.is_some_and(|s| s + SLOWED_REACH >= at) {
            return;
        }
        if (self.serving)() == Some(epoch) {
            self.trace.broken(corruption(format!(
                "{epoch} still serves {} ms after a batch of it failed at {point:?}: a failed \
                 batch must end its epoch at once (no hole in the chain)",
                self.bound.as_millis()
            )));
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn fired(point: FaultPoint, epoch: u64, fault: Fault) -> Fired {
        Fired {
            point,
            epoch: Some(Epoch(epoch)),
            fault,
        }
    }

    type Serving = Arc<Mutex<Option<Epoch>>>;

    /// A served epoch, a checker of it, and the trace its findings go to.
    fn serving(epoch: u64) -> (Serving, Arc<EpochEnds>, Arc<Trace>) {
        let current = Arc::new(Mutex::new(Some(Epoch(epoch))));
        let read = current.clone();
        let trace = Arc::new(Trace::default());
        let ends = EpochEnds::new(
            Box::new(move || *read.lock().unwrap()),
            Duration::from_millis(20),
            trace.clone(),
        );
        (current, ends, trace)
    }

    fn broken(trace: &Trace) -> Option<String> {
        trace
            .broken
            .lock()
            .unwrap()
            .as_ref()
            .map(ToString::to_string)
    }

    #[test]
    fn a_slowed_round_reaches_no_further_than_the_excuse() {
        for seed in 0..500 {
            let plan = super::super::Plan::new(seed);
            let config = plan.config();
            let probes = 1 + u32::try_from(config.storage).unwrap();
            assert!(
                config.probe_timeout * probes <= SLOWED_REACH,
                "seed {seed}: {probes} probes of {:?}",
                config.probe_timeout
            );
            assert!(plan.monitoring_round() * ROUNDS < config.proxy.stall_timeout);
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_failed_batch_whose_epoch_still_serves_is_a_finding() {
        let (_tx, ends, trace) = serving(3);
        ends.fired(&fired(FaultPoint::LogPush, 3, Fault::Usual));
        tokio::time::sleep(Duration::from_millis(99)).await;
        assert_eq!(broken(&trace), None, "not before the bound");
        tokio::time::sleep(Duration::from_millis(2)).await;
        let found = broken(&trace).unwrap();
        assert!(found.contains("epoch 3 still serves 100 ms"), "{found}");
        assert!(found.contains("LogPush"), "{found}");
    }

    #[tokio::test(start_paused = true)]
    async fn an_epoch_that_ends_in_time_or_another_epochs_failure_is_no_finding() {
        let (tx, ends, trace) = serving(3);
        // A stale epoch's batch, and a fault that only delays: nothing to end.
        ends.fired(&fired(FaultPoint::Resolve, 2, Fault::Usual));
        ends.fired(&fired(
            FaultPoint::LogPush,
            3,
            Fault::Delay(Duration::from_secs(1)),
        ));
        ends.fired(&fired(FaultPoint::ProxyCommit, 3, Fault::Usual));
        tokio::time::sleep(Duration::from_secs(1)).await;
        assert_eq!(broken(&trace), None);
        // A failure that ends its epoch within the bound.
        ends.fired(&fired(FaultPoint::CommitVersion, 3, Fault::Usual));
        tokio::time::sleep(Duration::from_millis(60)).await;
        *tx.lock().unwrap() = None;
        tokio::time::sleep(Duration::from_secs(1)).await;
        assert_eq!(broken(&trace), None);
    }

    #[tokio::test(start_paused = true)]
    async fn a_slowed_probe_or_a_clock_jump_excuses_a_late_end() {
        let (_tx, ends, trace) = serving(3);
        ends.fired(&fired(FaultPoint::ReadVersion, 3, Fault::Hang));
        tokio::time::sleep(Duration::from_secs(3)).await;
        ends.fired(&fired(FaultPoint::ReportCommitted, 3, Fault::Usual));
        tokio::time::sleep(Duration::from_secs(1)).await;
        assert_eq!(broken(&trace), None, "a probe hung 3 s before");
        tokio::time::sleep(Duration::from_secs(5)).await;
        ends.fired(&fired(FaultPoint::ReportCommitted, 3, Fault::Usual));
        ends.clock_jumps();
        tokio::time::sleep(Duration::from_secs(1)).await;
        assert_eq!(broken(&trace), None, "the clock jumped");
        // Long after both, the same failure is a finding again.
        tokio::time::sleep(SLOWED_REACH).await;
        ends.fired(&fired(FaultPoint::ReportCommitted, 3, Fault::Usual));
        tokio::time::sleep(Duration::from_secs(1)).await;
        assert!(broken(&trace).is_some());
    }
}
