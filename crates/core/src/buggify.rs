//! Fault points inside stage code, for the seeded simulation: FoundationDB's BUGGIFY.
//!
//! A stage marks a place where a rare but legal behaviour hides (a storage server lagging
//! behind its log, a flush that comes late, a short pull) with [`fires`]. Outside a simulation
//! run the answer is always `false`. In one, each point is *active* for the whole run with
//! probability 1/4 (decided the first time the run reaches it), and an active point fires with
//! probability 1/4 each time it is reached. Every choice comes from the run's seed, so a run
//! still replays exactly. Points only ever pick behaviour the stage must already handle: they
//! make rare paths common, they never break a rule.
//!
//! A run is per thread: [`enable`] turns the points on for the calling thread (the simulation
//! runs the whole cluster on one thread), until the returned guard is dropped. Other threads,
//! such as tests running side by side, are not affected.
//!
//! Cost outside a run: one thread-local flag read. The points sit in per-batch or per-tick
//! paths (never per key or per read), and the release binary carries them (it is also the
//! simulation's binary); the stages' benchmarks show no difference.
//!
//! The points, by name:
//!
//! | point | where | what it does |
//! |-------|-------|--------------|
//! | `storage.apply.lag` | storage apply loop | waits 1-50 ms before applying what it pulled: reads wait for versions, the window holds more |
//! | `storage.flush.skip` | storage flush loop | skips a flush: durability and popping come later |
//! | `tlog.pull.short` | log pull | answers with one entry: the storage servers apply in small steps |
//! | `director.watermark.skip` | watermark loop | skips a round: the storage servers learn the committed version, and the logs are popped, a round later |
//! | `recovery.phase.slow` | every recovery phase | waits 1-200 ms before it: faults and crashes land inside recoveries |
//!
//! ```
//! use strata_core::buggify;
//!
//! assert!(!buggify::fires("storage.apply.lag")); // not in a run
//! let run = buggify::enable(7);
//! let fired = (0..1_000).filter(|_| buggify::fires("example.point")).count();
//! // Active (about a quarter of the time) or not, for the whole run.
//! assert!(fired == 0 || (150..350).contains(&fired), "{fired}");
//! drop(run);
//! assert!(!buggify::fires("example.point"));
//! ```

use std::cell::{Cell, RefCell};
use std::collections::BTreeMap;

thread_local! {
    static ON: Cell<bool> = const { Cell::new(false) };
    static RUN: RefCell<Option<Run>> = const { RefCell::new(None) };
}

struct Run {
    rng: u64,
    active: BTreeMap<&'static str, bool>,
    fired: u64,
}

impl Run {
    /// SplitMix64: small, fast, and enough for picking faults.
    fn next(&mut self) -> u64 {
        self.rng = self.rng.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.rng;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: u64) -> u64 {
        if n == 0 { 0 } else { self.next() % n }
    }
}

/// The fault points' run on this thread; dropping it turns them off.
#[derive(Debug)]
#[must_use = "the points are off again once the guard is dropped"]
pub struct Enabled(());

impl Drop for Enabled {
    fn drop(&mut self) {
        ON.with(|on| on.set(false));
        RUN.with(|run| run.borrow_mut().take());
    }
}

/// Turns the fault points on for the calling thread, with every choice drawn from `seed`.
pub fn enable(seed: u64) -> Enabled {
    RUN.with(|run| {
        *run.borrow_mut() = Some(Run {
            rng: seed,
            active: BTreeMap::new(),
            fired: 0,
        });
    });
    ON.with(|on| on.set(true));
    Enabled(())
}

/// Quiets the fault points of this thread's run: none fires from now on, but [`fired`] and
/// [`points`] still tell what the run did. (The simulation's last, clean boot, whose checks
/// wait a fixed time for flushes and pops, runs quiet.)
pub fn quiet() {
    ON.with(|on| on.set(false));
}

/// Whether the fault point `point` fires now (always `false` outside a run, or once quiet).
#[inline]
pub fn fires(point: &'static str) -> bool {
    ON.with(Cell::get) && fires_in_run(point)
}

#[cold]
fn fires_in_run(point: &'static str) -> bool {
    RUN.with(|run| {
        let mut run = run.borrow_mut();
        let Some(run) = run.as_mut() else {
            return false;
        };
        let active = match run.active.get(point) {
            Some(&active) => active,
            None => {
                let active = run.below(4) == 0;
                run.active.insert(point, active);
                active
            }
        };
        let fire = active && run.below(4) == 0;
        run.fired += u64::from(fire);
        fire
    })
}

/// A number below `n` from the run's generator (0 outside a run, or when `n` is 0): how long a
/// fired point waits, say.
pub fn below(n: u64) -> u64 {
    RUN.with(|run| run.borrow_mut().as_mut().map_or(0, |run| run.below(n)))
}

/// How many times points fired in this thread's run so far (0 outside a run).
pub fn fired() -> u64 {
    RUN.with(|run| run.borrow().as_ref().map_or(0, |run| run.fired))
}

/// The points this thread's run has reached, and whether each is active in it.
pub fn points() -> Vec<(&'static str, bool)> {
    RUN.with(|run| {
        run.borrow()
            .as_ref()
            .map(|run| run.active.iter().map(|(&p, &a)| (p, a)).collect())
            .unwrap_or_default()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_run_repeats_from_its_seed_and_other_seeds_differ() {
        let draw = |seed| {
            let _run = enable(seed);
            let fired: Vec<bool> = (0..400)
                .map(|i| fires(["a", "b", "c", "d", "e", "f"][i % 6]))
                .collect();
            (fired, points())
        };
        assert_eq!(draw(3), draw(3));
        let runs: Vec<_> = (0..8).map(draw).collect();
        assert!(runs.windows(2).any(|w| w[0] != w[1]));
    }

    #[test]
    fn points_are_active_in_some_runs_and_silent_in_the_others() {
        let mut active_runs = 0;
        for seed in 0..200 {
            let _run = enable(seed);
            let fired = (0..200).filter(|_| fires("p")).count();
            if fired > 0 {
                active_runs += 1;
                assert!(
                    (20..80).contains(&fired),
                    "seed {seed}: fired {fired} of 200"
                );
                assert_eq!(super::fired() as usize, fired);
            }
            assert_eq!(points(), [("p", fired > 0)]);
        }
        assert!((25..75).contains(&active_runs), "{active_runs} of 200 runs");
    }

    #[test]
    fn a_quiet_run_fires_nothing_and_keeps_its_record() {
        let _run = enable(5);
        let before = (0..400)
            .filter(|i| fires(["a", "b", "c", "d"][i % 4]))
            .count();
        let active = points();
        quiet();
        assert!(!(0..400).any(|i| fires(["a", "b", "c", "d", "e"][i % 5])));
        assert_eq!(super::fired() as usize, before);
        assert_eq!(points(), active);
    }

    #[test]
    fn nothing_fires_outside_a_run_or_on_another_thread() {
        assert!(!fires("p"));
        assert_eq!(below(10), 0);
        let _run = enable(1);
        let elsewhere = std::thread::spawn(|| (0..1_000).any(|_| fires("p")));
        assert!(!elsewhere.join().unwrap());
    }
}
