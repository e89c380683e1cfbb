//! The chaos of a faulty boot: stage faults armed at seeded times, sometimes back to back; and
//! between boots, sometimes, a file lost.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use strata_core::{Error, Result, Stage};

use strata_testkit::faults::{Fault, FaultPoint, Faults};
use strata_testkit::network::Network;
use strata_testkit::rng::SplitMix64;

use super::Trace;
use super::disk::PowerDisk;
use super::liveness::EpochEnds;
use crate::coordinator::{FileStateStore, StateStore};

/// The points the stage decorators fire (a log's failing sync is the simulated disk's own
/// fault: `FaultPoint::LogSync` is fired by the director's `FaultyFs` over the real disk,
/// which the simulation does not use).
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
pub(crate) async fn run(
    faults: Arc<Faults>,
    network: Arc<Network>,
    disk: Arc<PowerDisk>,
    ends: Arc<EpochEnds>,
    may_lose_power: bool,
    mut rng: SplitMix64,
    trace: Arc<Trace>,
) {
    let started = tokio::time::Instant::now();
    loop {
        let gap = if rng.below(4) == 0 {
            rng.below(20)
        } else {
            100 + rng.below(2_900)
        };
        tokio::time::sleep(Duration::from_millis(gap)).await;
        // One fault in sixteen is the clock jumping forward (a machine that froze: a VM paused,
        // a long stall): every timer that falls due meanwhile fires at once, versions leap.
        if rng.below(16) == 0 {
            let jump = Duration::from_millis(100 + rng.below(4_900));
            trace.fault(format!(
                "at {} ms: the clock jumps {} ms",
                started.elapsed().as_millis(),
                jump.as_millis()
            ));
            ends.clock_jumps();
            tokio::time::advance(jump).await;
            continue;
        }
        // One fault in eight is the disk's: syncs fail, the power goes in the middle of
        // one (the boot runs on without its disk, and ends in a power loss), or it fills
        // for a while.
        if rng.below(8) == 0 {
            let at = started.elapsed().as_millis();
            let kind = rng.below(5);
            if kind == 0 && may_lose_power {
                let n = 1 + rng.below(20);
                trace.fault(format!(
                    "at {at} ms: the power goes in the disk's sync {n} from now"
                ));
                disk.die_at_sync(n);
            } else if kind <= 2 {
                let n = 1 + rng.below(3);
                trace.fault(format!("at {at} ms: the disk's next {n} syncs fail"));
                disk.fail_syncs(n);
            } else {
                let lasting = Duration::from_millis(100 + rng.below(3_000));
                trace.fault(format!(
                    "at {at} ms: the disk is full for {} ms",
                    lasting.as_millis()
                ));
                disk.set_full(true);
                tokio::time::sleep(lasting).await;
                disk.set_full(false);
            }
            continue;
        }
        // One in six of the rest is the network's: requests or answers lost, a stage cut off
        // for a while (sometimes past the point where its callers give up), or a stage's
        // process killed (until the next epoch recruits it again).
        if rng.below(6) == 0 {
            network_fault(
                &network,
                &ends,
                &mut rng,
                &trace,
                started.elapsed().as_millis(),
            );
            continue;
        }
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

/// A fault of the network: requests or answers lost, a stage cut off for a while (sometimes
/// past the point where its callers give up), or a stage's process killed (until something
/// reaches it again).
fn network_fault(
    network: &Network,
    ends: &EpochEnds,
    rng: &mut SplitMix64,
    trace: &Trace,
    at: u128,
) {
    let roles = network.roles();
    let kind = rng.below(4);
    let n = 1 + rng.below(3);
    if kind == 0 {
        trace.fault(format!(
            "at {at} ms: the network loses the next {n} requests"
        ));
        network.lose_requests(n);
    } else if kind == 1 {
        trace.fault(format!(
            "at {at} ms: the network loses the next {n} answers"
        ));
        network.lose_answers(n);
    } else if !roles.is_empty() {
        let role = &roles[rng.below(roles.len() as u64) as usize];
        // Monitoring probes the sequencer and the storage servers across the network:
        // while one of them is cut off, each round waits for its probe's timeout.
        let probed = role == "sequencer" || role.starts_with("storage-");
        if kind == 2 {
            let lasting = Duration::from_millis(100 + rng.below(7_900));
            trace.fault(format!(
                "at {at} ms: {role} is cut off for {} ms",
                lasting.as_millis()
            ));
            if probed {
                ends.network_held(tokio::time::Instant::now() + lasting);
            }
            network.partition(role, lasting);
        } else if role.starts_with("proxy-") {
            // A killed proxy fails only the commits sent to it; nothing in one process
            // watches for that (heartbeats come with processes of their own), so the
            // epoch would go on without it until the boot ends.
            trace.fault(format!("at {at} ms: {role} is not killed (a proxy)"));
        } else {
            trace.fault(format!("at {at} ms: {role}'s process is killed"));
            network.kill(role);
        }
    }
}

/// A file lost between two boots: a log directory the coordinated state names, or a storage
/// server's file, is removed. Most often it held history that exists nowhere else (the logs
/// are popped; a storage file is the only copy of what it made durable), and the next recovery
/// must refuse the directory with `Corruption`; where it did not (a storage file that never
/// flushed while the logs hold everything), recovery may serve, and the run's final checks
/// then find any acknowledged commit lost. Returns what was lost, or `None` when there was
/// nothing to lose yet.
pub(crate) fn lose_a_file(data_dir: &Path, rng: &mut SplitMix64) -> Result<Option<String>> {
    let Some(state) = FileStateStore::new(data_dir).read()? else {
        return Ok(None);
    };
    let storage = data_dir.join(format!("storage/{}.redb", rng.below(state.storage as u64)));
    let lost = if rng.below(2) == 0 && !state.logs.is_empty() {
        let place = &state.logs[rng.below(state.logs.len() as u64) as usize];
        let dir = data_dir.join(&place.dir);
        std::fs::remove_dir_all(&dir).map_err(|e| Error::io(Stage::Director, e))?;
        place.dir.clone()
    } else if storage.exists() {
        std::fs::remove_file(&storage).map_err(|e| Error::io(Stage::Director, e))?;
        format!(
            "storage/{}",
            storage
                .file_name()
                .map_or_else(String::new, |n| n.to_string_lossy().into_owned())
        )
    } else {
        return Ok(None);
    };
    Ok(Some(lost))
}
