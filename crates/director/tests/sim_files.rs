//! A simulation run lets go of everything its boots opened, so a process can run seed after
//! seed (`strata sim --seeds 10000`). One once ran out of file descriptors after 310 seeds: the
//! faults' watcher held each boot's epoch watch, whose last value held the cluster's stages,
//! whose decorators held the faults, so no boot's files were ever closed. This test has a
//! binary of its own: the count of open files is the whole process's.

use std::time::Duration;

use strata_director::sim::{self, SimOptions};

#[cfg(target_os = "linux")]
#[test]
fn seed_after_seed_the_open_files_stay_as_many() {
    let open = || std::fs::read_dir("/proc/self/fd").unwrap().count();
    let options = SimOptions {
        duration: Duration::from_secs(3),
        trace: false,
    };
    // A first run, so that whatever a process opens once (and keeps) is in the baseline.
    let first = sim::run(3, &options);
    assert_eq!(first.failure, None, "{:#?}", first.last_events);
    let before = open();
    for seed in 4..6 {
        let report = sim::run(seed, &options);
        assert_eq!(
            report.failure, None,
            "seed {seed}: {:#?}",
            report.last_events
        );
        assert!(report.epochs > 0, "seed {seed} served no epoch: {report:?}");
    }
    assert_eq!(open(), before, "files left open by two runs");
}
