//! `strata bench`: arguments, progress and the report around
//! [`strata_director::workload::load`].

use std::io::IsTerminal;
use std::path::PathBuf;
use std::sync::Arc;

use bytes::Bytes;
use clap::Args;
use serde::Serialize;
use strata_core::{Error, ErrorKind, Stage};
use strata_director::cluster_file::ClusterFile;
use strata_director::workload::load::Load;
use strata_director::workload::{self, Plan, Span};
use strata_director::{EmbeddedCluster, EmbeddedConfig};
use strata_testkit::disk::{fsync_floor, fsync_floor_prealloc};

#[derive(Args)]
pub(crate) struct BenchArgs {
    /// The data directory (created when missing).
    #[arg(long, default_value = "./strata-data")]
    data_dir: PathBuf,
    /// Concurrent clients (1 to 4,096).
    #[arg(long, default_value_t = 64, value_parser = super::bounded(1, 4_096))]
    clients: u64,
    /// Transactions to commit, in all (1 to 10^9).
    #[arg(long, default_value_t = 20_000, value_parser = super::bounded(1, 1_000_000_000))]
    transactions: u64,
    /// Keys each transaction reads or writes (1 to 1,000).
    #[arg(long, default_value_t = 1, value_parser = super::bounded(1, 1_000))]
    keys_per_transaction: u64,
    /// Bytes of each value written (0 to 100,000, the value limit).
    #[arg(long, default_value_t = 100, value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(0..=100_000))]
    value_bytes: usize,
    /// Fraction of key operations that are reads (0 to 1).
    #[arg(long, default_value_t = 0.0)]
    read_fraction: f64,
    /// Drive the cluster this file names, served by another process (`strata serve
    /// --listen`), instead of starting one on --data-dir. The disk's floors are then not
    /// measured (the directory is the other process's), and the CPU per commit is this
    /// client's alone. The run follows the cluster's recoveries (waiting up to 30 s for a new
    /// epoch); commits on their way when an epoch ends are of unknown outcome, reported apart.
    #[arg(long, value_name = "FILE", conflicts_with = "data_dir")]
    pub(crate) cluster_file: Option<PathBuf>,
    #[command(flatten)]
    pub(crate) tls: super::TlsArgs,
    /// Print one JSON object instead of text (and no progress bar).
    #[arg(long)]
    json: bool,
}

#[derive(Serialize)]
struct Latency {
    p50: u64,
    p99: u64,
    /// One commit in a thousand waited longer: where stalls that are too rare for p99 (a
    /// storage flush holding the disk, say) show before they reach `max`.
    p999: u64,
    max: u64,
}

#[derive(Serialize)]
struct Report {
    transactions: u64,
    clients: u64,
    keys_per_transaction: u64,
    value_bytes: usize,
    read_fraction: f64,
    elapsed_s: f64,
    commits_per_second: f64,
    aborts: u64,
    /// Transactions whose commit outcome is unknown (the epoch ended under them, with
    /// `--cluster-file`): neither counted in `transactions` nor run again.
    unknown_outcomes: u64,
    latency_us: Latency,
    /// The process's CPU time (user and system, every thread) while the clients ran, over the
    /// transactions acknowledged: what a commit costs the machine, whatever the disk's speed.
    /// With `--cluster-file`, the client's share only.
    cpu_us_per_commit: f64,
    /// Where the cluster was served, with `--cluster-file`; absent when it ran in process.
    served_at: Option<String>,
    /// The disk's floors; absent with `--cluster-file`.
    fsync_floor_us: Option<u64>,
    fsync_floor_prealloc_us: Option<u64>,
}

/// The disk's two fsync floors in `dir`, in microseconds.
fn floors(dir: &std::path::Path) -> strata_core::Result<(u64, u64)> {
    let micros = |d: std::time::Duration| u64::try_from(d.as_micros()).unwrap_or(u64::MAX);
    let floor = fsync_floor(dir, 100).map_err(|e| Error::io(Stage::Director, e))?;
    let prealloc = fsync_floor_prealloc(dir, 100).map_err(|e| Error::io(Stage::Director, e))?;
    Ok((micros(floor), micros(prealloc)))
}

/// CPU time this process has used so far, user and system, all threads.
fn process_cpu() -> strata_core::Result<std::time::Duration> {
    use nix::sys::resource::{UsageWho, getrusage};
    use nix::sys::time::TimeValLike;
    let usage = getrusage(UsageWho::RUSAGE_SELF)
        .map_err(|e| Error::io(Stage::Director, std::io::Error::from(e)))?;
    let micros = usage.user_time().num_microseconds() + usage.system_time().num_microseconds();
    Ok(std::time::Duration::from_micros(
        u64::try_from(micros).unwrap_or(0),
    ))
}

pub(crate) async fn run(args: BenchArgs) -> strata_core::Result<()> {
    super::listen_for_signals();
    if !(0.0..=1.0).contains(&args.read_fraction) {
        return Err(Error::new(
            Stage::Director,
            ErrorKind::InvalidRequest("--read-fraction must be between 0 and 1".into()),
        ));
    }
    let tls = args.tls.load_for(args.cluster_file.as_ref())?;
    let (_owner, cluster, db, floors, served_at) = match &args.cluster_file {
        Some(file) => {
            let file = ClusterFile::read(file)?;
            let served_at = file.served_at()?;
            let db = file.connect(tls.as_ref()).await?;
            (None, None, db, None, Some(served_at))
        }
        None => {
            // Owned before the floor's probe file is written into it, until the end.
            let owner = strata_director::owner::lock_directory(&args.data_dir, true)?;
            let floors = floors(&args.data_dir)?;
            let config = EmbeddedConfig::default().with_stored_layout(&args.data_dir)?;
            let cluster = EmbeddedCluster::start(&args.data_dir, config).await?;
            let db = cluster.database();
            (Some(owner), Some(cluster), db, Some(floors), None)
        }
    };

    let progress = if args.json || !std::io::stdout().is_terminal() {
        indicatif::ProgressBar::hidden()
    } else {
        indicatif::ProgressBar::new(args.transactions)
    };
    let load = Load {
        keys_per_transaction: args.keys_per_transaction,
        value: Bytes::from(vec![b'v'; args.value_bytes]),
        read_fraction: args.read_fraction,
    };
    let plan = Plan {
        clients: args.clients,
        span: Span::Transactions(args.transactions),
        seed: 0xbe7c,
        first: 0,
    };
    let ticker = progress.clone();
    let on_ack: workload::OnAck = Arc::new(move |_, _| ticker.inc(1));
    // A signal ends the run early, and what ran until then is reported.
    let cpu_before = process_cpu()?;
    let driven =
        workload::drive_until(&db, Arc::new(load), &plan, on_ack, super::stop_requested()).await;
    let cpu = process_cpu()?.saturating_sub(cpu_before);
    progress.finish_and_clear();
    drop(db);
    if let Some(cluster) = cluster {
        cluster.stop().await;
    }
    let driven = driven?;

    let report = Report {
        transactions: driven.acked.len() as u64,
        clients: args.clients,
        keys_per_transaction: args.keys_per_transaction,
        value_bytes: args.value_bytes,
        read_fraction: args.read_fraction,
        elapsed_s: driven.elapsed.as_secs_f64(),
        commits_per_second: driven.per_second(),
        aborts: driven.aborts,
        unknown_outcomes: driven.unknown,
        latency_us: Latency {
            p50: driven.latency_us(0.50),
            p99: driven.latency_us(0.99),
            p999: driven.latency_us(0.999),
            max: driven.latency_us(1.0),
        },
        cpu_us_per_commit: cpu.as_secs_f64() * 1e6 / (driven.acked.len().max(1) as f64),
        served_at,
        fsync_floor_us: floors.map(|f| f.0),
        fsync_floor_prealloc_us: floors.map(|f| f.1),
    };
    if args.json {
        super::print_json(&report)?;
    } else {
        print_text(&report);
    }
    Ok(())
}

/// The report as text, one figure per line.
fn print_text(report: &Report) {
    out!(
        "strata bench: {} transactions, {} clients, {} key(s) each, {}-byte values, {:.0}% reads",
        report.transactions,
        report.clients,
        report.keys_per_transaction,
        report.value_bytes,
        report.read_fraction * 100.0
    );
    out!(
        "commits/s: {:.0}   aborts: {}   elapsed: {:.2} s",
        report.commits_per_second,
        report.aborts,
        report.elapsed_s
    );
    if report.unknown_outcomes > 0 {
        out!(
            "commit outcomes unknown: {} (the epoch ended under them; not counted above)",
            report.unknown_outcomes
        );
    }
    out!(
        "commit latency µs: p50 {}   p99 {}   p99.9 {}   max {}",
        report.latency_us.p50,
        report.latency_us.p99,
        report.latency_us.p999,
        report.latency_us.max
    );
    match (
        &report.served_at,
        report.fsync_floor_us,
        report.fsync_floor_prealloc_us,
    ) {
        (Some(at), _, _) => {
            out!(
                "client CPU per commit: {:.1} µs (user + system); cluster served at {at}",
                report.cpu_us_per_commit
            );
        }
        (None, Some(floor), Some(prealloc)) => {
            out!(
                "CPU per commit: {:.1} µs (user + system)",
                report.cpu_us_per_commit
            );
            out!(
                "fsync floor (4 KiB append + fdatasync, median of 100): {floor} µs; p50 is \
                 {:.2}× it",
                report.latency_us.p50 as f64 / floor.max(1) as f64
            );
            out!(
                "fsync floor (4 KiB overwrite in a preallocated file + fdatasync): {prealloc} \
                 µs"
            );
        }
        _ => {}
    }
}
