//! The seeded simulation: a seed replays exactly, another seed runs differently, and seeds of
//! every layout pass (the checks inside a run are the simulation's own; see
//! `strata_director::sim`).

use std::collections::BTreeSet;
use std::time::Duration;

use strata_director::sim::{self, SimOptions};

fn options(seconds: u64) -> SimOptions {
    SimOptions {
        duration: Duration::from_secs(seconds),
        trace: true,
    }
}

#[test]
fn a_seed_replays_exactly_and_another_seed_does_not() {
    let first = sim::run(13, &options(10));
    assert_eq!(first.failure, None, "{:#?}", first.last_events);
    assert!(
        first.faults > 0 && first.acked > 0 && first.boots > 1 && first.epochs > first.boots,
        "{first:?}"
    );
    // The seed's chaos reaches the network too (a stage cut off), and the replay below
    // replays it.
    assert!(
        first.trace.iter().any(|e| e.contains("is cut off for")),
        "{:#?}",
        first.trace
    );
    let again = sim::run(13, &options(10));
    assert_eq!(first.trace, again.trace, "the same seed ran differently");
    assert_eq!(first.digest, again.digest);
    assert_eq!(
        (
            first.simulated,
            first.boots,
            first.epochs,
            first.faults,
            first.acked
        ),
        (
            again.simulated,
            again.boots,
            again.epochs,
            again.faults,
            again.acked
        )
    );
    let other = sim::run(12, &options(10));
    assert_ne!(first.digest, other.digest, "another seed, the same run");
}

/// Seed 0 at its default length: several storage reads wait for the same version and are
/// woken together. They used to wait on a `tokio::sync::watch`, whose waiters sit in one of
/// eight lists picked at random (seeded anew by every runtime), so they were woken in an
/// order that changed from run to run, and so did everything after it.
#[test]
fn readers_woken_together_replay_in_the_same_order() {
    let options = SimOptions {
        duration: SimOptions::default().duration,
        trace: true,
    };
    let first = sim::run(0, &options);
    assert_eq!(first.failure, None, "{:#?}", first.last_events);
    let again = sim::run(0, &options);
    assert_eq!(first.trace, again.trace, "the same seed ran differently");
    assert_eq!(first.digest, again.digest);
}

#[test]
fn seeds_of_every_layout_pass() {
    let mut logs = BTreeSet::new();
    let mut storage = BTreeSet::new();
    for seed in 100..109 {
        let report = sim::run(
            seed,
            &SimOptions {
                trace: false,
                ..options(10)
            },
        );
        assert_eq!(
            report.failure, None,
            "seed {seed}: {:#?}\nreplay: strata sim --seed {seed} --seconds 10",
            report.last_events
        );
        logs.insert(report.layout.logs);
        storage.insert(report.layout.storage);
    }
    // The seeds above cover every count of logs and storage servers.
    assert_eq!(logs.len(), 3, "{logs:?}");
    assert_eq!(storage.len(), 3, "{storage:?}");
}

/// Found by seed 85 of the 10,000-seed run: with the fault points that skip flushes and
/// watermark rounds both active, the clean boot's quiet spell was not always long enough for
/// the logs to be popped up to the storage servers, and the popping check failed. The fault
/// points are quiet in the clean boot now.
#[test]
fn seed_85_settles_in_the_clean_boot_with_flushes_and_watermarks_skipped() {
    let report = sim::run(
        85,
        &SimOptions {
            trace: false,
            ..options(36)
        },
    );
    assert_eq!(report.failure, None, "{:#?}", report.last_events);
}

/// Found by seeds 9212 and 9619 of the 10,000-seed run: a log poisoned by a failed sync was
/// opened again by the next epoch in the same process, which read from the page cache records
/// the failed sync never wrote back and took them for committed; the storage servers made them
/// durable, and after the power loss that followed they held versions no log held, so every
/// later recovery refused the directory. A poisoned log now leaves a marker, and the next open
/// writes the directory again and syncs it before reading it.
#[test]
fn seeds_9212_and_9619_recover_after_a_failed_sync_and_a_power_loss() {
    for seed in [9212, 9619] {
        let report = sim::run(
            seed,
            &SimOptions {
                trace: false,
                ..options(36)
            },
        );
        assert_eq!(
            report.failure, None,
            "seed {seed}: {:#?}",
            report.last_events
        );
    }
}
