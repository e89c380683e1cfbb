//! The chaos of a faulty boot: stage faults armed at seeded times, sometimes back to back.

use std::sync::Arc;
use std::time::Duration;

use strata_testkit::faults::{Fault, FaultPoint, Faults};
use strata_testkit::rng::SplitMix64;

use super::Trace;

/// The points the stage decorators fire (a log's sync belongs to its file system, which the
/// simulation does not wrap yet).
const POINTS: [FaultPoint; 9] = [
    FaultPoint::Resolve,
    FaultPoint::CommitVersion,
    FaultPoint::ReportCommitted,
    FaultPoint::ReadVersion,
    FaultPoint::ProxyCommit,
    FaultPoint::LogPush,
    FaultPoint::LogStall,
    FaultPoint::StorageApply,
    FaultPoint::StorageStop,
];

/// Arms faults until the boot ends: after a gap (a quarter of them within 20 ms of the one
/// before, so faults land on a recovery in progress), one point fails, stalls for a while, or
/// hangs, on its next call or one of the two after it (`call 1` to `call 3` in the trace).
pub(crate) async fn run(faults: Arc<Faults>, mut rng: SplitMix64, trace: Arc<Trace>) {
    let started = tokio::time::Instant::now();
    loop {
        let gap = if rng.below(4) == 0 {
            rng.below(20)
        } else {
            100 + rng.below(2_900)
        };
        tokio::time::sleep(Duration::from_millis(gap)).await;
        let point = POINTS[rng.below(POINTS.len() as u64) as usize];
        let fault = match rng.below(4) {
            0 => Fault::Delay(Duration::from_millis(100 + rng.below(3_000))),
            1 => Fault::Hang,
            _ => Fault::Usual,
        };
        // 1 is the next call; `arm_at` counts from 1.
        let nth = 1 + rng.below(3) as usize;
        trace.fault(format!(
            "at {} ms: {point:?} call {nth}: {}",
            started.elapsed().as_millis(),
            match &fault {
                Fault::Delay(d) => format!("delay {} ms", d.as_millis()),
                Fault::Hang => "hang".to_owned(),
                _ => "fail".to_owned(),
            }
        ));
        faults.arm_at(point, nth, fault);
    }
}
