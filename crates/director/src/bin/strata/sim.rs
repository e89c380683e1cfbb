//! `strata sim`: runs seeds of the simulation (see `strata_director::sim`) and reports each.

use std::io::IsTerminal;
use std::time::{Duration, Instant};

use clap::Args;
use strata_core::{Error, ErrorKind, Stage};
use strata_director::sim::{self, SimOptions, SimReport};

#[derive(Args)]
#[command(group(clap::ArgGroup::new("which").required(true).args(["seed", "seeds"])))]
pub(crate) struct SimArgs {
    /// Run this one seed.
    #[arg(long, conflicts_with_all = ["seeds", "start"])]
    seed: Option<u64>,
    /// Run this many seeds (1 to 10^9), from `--start` on.
    #[arg(long, value_parser = super::bounded(1, 1_000_000_000))]
    seeds: Option<u64>,
    /// The first seed of `--seeds`.
    #[arg(long, default_value_t = 0)]
    start: u64,
    /// Simulated seconds of faulty boots per seed (1 to 86,400), before the clean one.
    #[arg(long, default_value_t = 60, value_parser = super::bounded(1, 86_400))]
    seconds: u64,
    /// Print every event of each run (boots, epochs, faults, acknowledgements), to compare
    /// two runs of a seed or follow one that failed.
    #[arg(long)]
    trace: bool,
    /// One JSON object per seed on stdout, then one for the whole run.
    #[arg(long)]
    json: bool,
}

pub(crate) fn run(args: &SimArgs, verbose: u8) -> strata_core::Result<()> {
    // Clap requires one of the two.
    let seeds = match (args.seed, args.seeds) {
        (Some(seed), _) => seed..seed.saturating_add(1),
        (None, n) => args.start..args.start.saturating_add(n.unwrap_or(1)),
    };
    let options = SimOptions {
        duration: Duration::from_secs(args.seconds),
        trace: args.trace,
    };
    let progress = if args.json || !std::io::stderr().is_terminal() || seeds.end - seeds.start < 2 {
        indicatif::ProgressBar::hidden()
    } else {
        indicatif::ProgressBar::new(seeds.end - seeds.start)
    };
    let started = Instant::now();
    let (mut simulated, mut runs, mut failed) = (Duration::ZERO, 0u64, Vec::new());
    for seed in seeds {
        let report = sim::run(seed, &options);
        runs += 1;
        simulated += report.simulated;
        if args.json {
            out!("{}", serde_json::to_string(&report).unwrap_or_default());
        } else if report.failure.is_some() || verbose > 0 || runs == 1 && progress.is_hidden() {
            progress.suspend(|| describe(&report, args.seconds));
        }
        if !args.json {
            for line in &report.trace {
                out!("{line}");
            }
        }
        if report.failure.is_some() {
            failed.push(seed);
        }
        progress.inc(1);
        progress.set_message(format!("{} failed", failed.len()));
    }
    progress.finish_and_clear();
    let wall = started.elapsed();
    let rate = simulated.as_secs_f64() / wall.as_secs_f64().max(1e-9);
    if args.json {
        out!(
            "{}",
            serde_json::json!({
                "runs": runs,
                "failed": failed,
                "simulated_s": simulated.as_secs_f64(),
                "wall_s": wall.as_secs_f64(),
                "simulated_s_per_wall_s": rate,
            })
        );
    } else {
        out!(
            "{runs} seeds, {} failed: {:.1} simulated hours in {:.1} s ({rate:.0} simulated s per s)",
            failed.len(),
            simulated.as_secs_f64() / 3600.0,
            wall.as_secs_f64()
        );
    }
    if failed.is_empty() {
        Ok(())
    } else {
        Err(Error::new(
            Stage::Director,
            ErrorKind::Corruption(format!("seeds failed: {failed:?}")),
        ))
    }
}

fn describe(r: &SimReport, seconds: u64) {
    let l = r.layout;
    out!(
        "seed {}: {} logs, {} storage, {} resolvers, {} proxies; {:.1} simulated s, {} boots, \
         {} epochs, {} faults, {} fault points fired, {} acknowledged; digest {:016x}",
        r.seed,
        l.logs,
        l.storage,
        l.resolvers,
        l.proxies,
        r.simulated.as_secs_f64(),
        r.boots,
        r.epochs,
        r.faults,
        r.points_fired,
        r.acked,
        r.digest
    );
    if let Some(failure) = &r.failure {
        out!("seed {} FAILED: {failure}", r.seed);
        for line in &r.last_events {
            out!("  {line}");
        }
        out!(
            "replay: cargo run --release --bin strata -- sim --seed {} --seconds {seconds}",
            r.seed
        );
    }
}
