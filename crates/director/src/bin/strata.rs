//! The `strata` command: run and inspect an embedded Strata cluster.
//!
//! `strata recover` runs one recovery of the cluster stored in a data directory, through the
//! persistence phase, and reports what it did. Errors print one line on stderr and exit 1;
//! usage errors exit 2.

use std::path::PathBuf;
use std::process::ExitCode;

/// mimalloc instead of the system allocator: the commit path allocates many small, short-lived
/// buffers on two threads, and the resolver frees and reallocates large runs; with glibc's
/// allocator the 64-writer benchmark spent about 12% in malloc and 7% zeroing fresh pages, and
/// commits 20% faster with mimalloc. Only the binary chooses it; library users keep theirs.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

use clap::{Args, Parser, Subcommand};
use strata_director::{EmbeddedCluster, EmbeddedConfig, RecoveryReport, config};

#[derive(Parser)]
#[command(
    name = "strata",
    version,
    about = "A transactional key-value store in the style of FoundationDB"
)]
struct Cli {
    /// Log more: -v for each phase, -vv for everything.
    #[arg(short, long, action = clap::ArgAction::Count, global = true)]
    verbose: u8,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Recover the cluster in DIR under a new epoch, through the persistence phase.
    Recover(RecoverArgs),
    /// Print what is stored under a prefix, without starting a new epoch.
    Dump(DumpArgs),
    /// Read everything in the data directory and report each inconsistency, changing nothing
    /// (exit 1 when there is one): the coordinated state against the directory, every log and
    /// storage file, and whether the next recovery has all the history it needs.
    Check(VerifyArgs),
    /// Recover, then keep serving with monitoring until Ctrl-C; a failed stage starts the
    /// next epoch.
    Serve(ServeArgs),
    /// Run or check a workload through the full pipeline.
    #[command(subcommand)]
    Workload(Workload),
    /// Drive the cluster through the full pipeline and report commits per second, aborts,
    /// commit latency percentiles and the disk's fsync floor.
    Bench(load::BenchArgs),
}

#[derive(Subcommand)]
enum Workload {
    /// FoundationDB's Cycle: rewire a ring of keys with concurrent transactions, then check
    /// it is still one ring. Creates the ring on first use.
    Cycle(CycleArgs),
    /// Check the Cycle ring as stored (after any crash and recovery).
    Check(CheckArgs),
}

#[derive(Args)]
struct CycleArgs {
    /// The data directory (created when missing).
    #[arg(long, default_value = "./strata-data")]
    data_dir: PathBuf,
    /// Keys in the ring, 4 to 1,000,000 (used when the ring is created).
    #[arg(long, default_value_t = 100, value_parser = bounded(4, 1_000_000))]
    keys: u64,
    /// Transactions to run, in all (1 to 10^12).
    #[arg(long, default_value_t = 5_000, value_parser = bounded(1, 1_000_000_000_000))]
    transactions: u64,
    /// Concurrent clients (1 to 4,096).
    #[arg(long, default_value_t = 16, value_parser = bounded(1, 4_096))]
    clients: u64,
    /// Print `ack <client> <n>` on stdout as each transaction is acknowledged.
    #[arg(long)]
    print_acks: bool,
}

#[derive(Args)]
struct ServeArgs {
    #[command(flatten)]
    layout: LayoutArgs,
}

#[derive(Args)]
struct DumpArgs {
    /// The data directory.
    #[arg(long, default_value = "./strata-data")]
    data_dir: PathBuf,
    /// The key prefix, written as keys are printed (`\\xff` for byte 0xff).
    #[arg(long, default_value = "\\xff/system/")]
    prefix: String,
    /// Print one JSON object instead of text.
    #[arg(long)]
    json: bool,
}

#[derive(Args)]
struct VerifyArgs {
    /// The data directory.
    #[arg(long, default_value = "./strata-data")]
    data_dir: PathBuf,
    /// Print one JSON object instead of text.
    #[arg(long)]
    json: bool,
}

#[derive(Args)]
struct CheckArgs {
    /// The data directory.
    #[arg(long, default_value = "./strata-data")]
    data_dir: PathBuf,
}

/// The cluster to recover: where it is and how many of each stage the new epoch runs. A count
/// not given is the one the data directory last ran with (1 for a new directory).
#[derive(Args)]
struct LayoutArgs {
    /// The data directory (created when missing).
    #[arg(long, default_value = "./strata-data")]
    data_dir: PathBuf,
    /// Transaction logs of the new generation (1 to 16).
    #[arg(long, value_parser = count(config::LOGS_MAX))]
    logs: Option<usize>,
    /// Storage servers (1 to 256; fixed for a data directory once created).
    #[arg(long, value_parser = count(config::STORAGE_MAX))]
    storage: Option<usize>,
    /// Resolvers (1 to 256).
    #[arg(long, value_parser = count(config::RESOLVERS_MAX))]
    resolvers: Option<usize>,
    /// Commit proxies (1 to 64).
    #[arg(long, value_parser = count(config::PROXIES_MAX))]
    proxies: Option<usize>,
}

/// A count flag: a whole number from 1 to `max`; clap refuses others as a usage error (exit 2).
fn count(max: usize) -> clap::builder::RangedU64ValueParser<usize> {
    clap::builder::RangedU64ValueParser::<usize>::new().range(1..=max as u64)
}

/// A whole number from `min` to `max`, checked before anything is written or allocated; clap
/// refuses others as a usage error naming the flag (exit 2).
fn bounded(min: u64, max: u64) -> clap::builder::RangedU64ValueParser<u64> {
    clap::builder::RangedU64ValueParser::<u64>::new().range(min..=max)
}

impl LayoutArgs {
    /// The stored layout (or the default one), with the counts given on the command line.
    fn config(&self) -> strata_core::Result<EmbeddedConfig> {
        let stored = EmbeddedConfig::default().with_stored_layout(&self.data_dir)?;
        Ok(EmbeddedConfig {
            logs: self.logs.unwrap_or(stored.logs),
            storage: self.storage.unwrap_or(stored.storage),
            resolvers: self.resolvers.unwrap_or(stored.resolvers),
            proxies: self.proxies.unwrap_or(stored.proxies),
            ..stored
        })
    }
}

#[derive(Args)]
struct RecoverArgs {
    #[command(flatten)]
    layout: LayoutArgs,
    /// Print one JSON object instead of text.
    #[arg(long)]
    json: bool,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let level = match cli.verbose {
        0 => tracing::Level::WARN,
        1 => tracing::Level::INFO,
        _ => tracing::Level::DEBUG,
    };
    tracing_subscriber::fmt()
        .with_max_level(level)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = match cli.command {
        Command::Recover(args) => runtime.block_on(recover(args)),
        Command::Dump(args) => runtime.block_on(dump(args)),
        Command::Check(args) => runtime.block_on(check(args)),
        Command::Serve(args) => runtime.block_on(serve(args)),
        Command::Bench(args) => runtime.block_on(load::run(args)),
        Command::Workload(Workload::Cycle(args)) => runtime.block_on(cycle::run(args)),
        Command::Workload(Workload::Check(args)) => runtime.block_on(cycle::check(args)),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn recover(args: RecoverArgs) -> strata_core::Result<()> {
    let started = std::time::Instant::now();
    let (cluster, report) =
        EmbeddedCluster::start_with_report(&args.layout.data_dir, args.layout.config()?).await?;
    let total_micros = u64::try_from(started.elapsed().as_micros()).unwrap_or(u64::MAX);
    cluster.stop().await;
    if args.json {
        print_json(&report, total_micros);
    } else {
        print_text(&report, total_micros);
    }
    Ok(())
}

async fn serve(args: ServeArgs) -> strata_core::Result<()> {
    let config = args.layout.config()?;
    let (serving, mut watching) = tokio::sync::watch::channel::<strata_director::Serving>(None);
    let announce = tokio::spawn(async move {
        while watching.changed().await.is_ok() {
            if let Some((epoch, _)) = &*watching.borrow_and_update() {
                println!("serving epoch {}; Ctrl-C stops", epoch.0);
            }
        }
    });
    let shutdown = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    let env = strata_director::RecoveryEnv::default();
    let result =
        strata_director::serve(&args.layout.data_dir, config, &env, &serving, shutdown).await;
    drop(serving);
    let _ = announce.await;
    if result.is_ok() {
        println!("stopped");
    }
    result
}

async fn check(args: VerifyArgs) -> strata_core::Result<()> {
    let report = strata_director::verify(&args.data_dir).await?;
    if args.json {
        let json = serde_json::to_string(&report).map_err(|e| {
            strata_core::Error::new(
                strata_core::Stage::Director,
                strata_core::ErrorKind::InvalidRequest(format!("cannot encode the report: {e}")),
            )
        })?;
        println!("{json}");
    } else {
        match report.epoch {
            Some(epoch) => println!("{}: {epoch}", args.data_dir.display()),
            None => println!("{}: no coordinated state", args.data_dir.display()),
        }
        let shown =
            |v: &Option<strata_core::Version>| v.map_or("unreadable".into(), |v| v.to_string());
        for (dir, last) in &report.logs {
            println!("  {dir}: holds up to {}", shown(last));
        }
        for (file, durable) in &report.storage {
            println!("  {file}: durable at {}", shown(durable));
        }
        if let Some(v) = report.recoverable_version {
            println!("  recoverable up to {v}");
        }
        for f in &report.findings {
            println!("problem: {f}");
        }
    }
    if report.findings.is_empty() {
        if !args.json {
            println!("consistent");
        }
        Ok(())
    } else {
        Err(strata_core::Error::new(
            strata_core::Stage::Director,
            strata_core::ErrorKind::Corruption(format!(
                "{} problem(s) found in {}",
                report.findings.len(),
                args.data_dir.display()
            )),
        ))
    }
}

async fn dump(args: DumpArgs) -> strata_core::Result<()> {
    let prefix = strata_core::parse_printable(&args.prefix).ok_or_else(|| {
        strata_core::Error::new(
            strata_core::Stage::Director,
            strata_core::ErrorKind::InvalidRequest(format!(
                "prefix {:?} is not a printable key (use \\xNN for other bytes)",
                args.prefix
            )),
        )
    })?;
    let dump = strata_director::dump(&args.data_dir, &prefix).await?;
    if args.json {
        match serde_json::to_string(&dump) {
            Ok(json) => println!("{json}"),
            Err(e) => eprintln!("error: cannot encode the dump: {e}"),
        }
        return Ok(());
    }
    println!(
        "epoch {} (generation {}), {} log(s), {} storage server(s)",
        dump.state.epoch.0,
        dump.state.generation,
        dump.state.logs.len(),
        dump.state.storage
    );
    println!(
        "at {}: {} key(s) under {}",
        dump.version,
        dump.entries.len(),
        args.prefix
    );
    for (k, v) in &dump.entries {
        println!("  {k} = {v}");
    }
    Ok(())
}

fn print_json(report: &RecoveryReport, total_micros: u64) {
    let mut value = match serde_json::to_value(report) {
        Ok(v) => v,
        Err(e) => {
            eprintln!("error: cannot encode the report: {e}");
            return;
        }
    };
    if let Some(object) = value.as_object_mut() {
        object.insert("total_micros".into(), total_micros.into());
    }
    println!("{value}");
}

fn print_text(report: &RecoveryReport, total_micros: u64) {
    println!(
        "recovered {} at recovery version {} in {:.1} ms",
        report.epoch,
        report.recovery_version,
        total_micros as f64 / 1_000.0
    );
    println!(
        "system transaction committed at {}",
        report.system_commit_version
    );
    println!("phases:");
    for p in &report.phases {
        println!("  {:<34} {:>9.3} ms", p.phase, p.micros as f64 / 1_000.0);
    }
    println!("monolithic key: {}", report.monolithic_key);
    println!("decomposed keys ({}):", report.decomposed_keys.len());
    for k in &report.decomposed_keys {
        println!("  {k}");
    }
}

mod cycle {
    //! `strata workload cycle` and `check`, on [`strata_director::workload`].

    use std::io::Write;

    use strata_core::rng::SplitMix64;
    use strata_core::{Error, ErrorKind, Stage};
    use strata_director::workload::{check_ring, ensure_ring, rewire};
    use strata_director::{EmbeddedCluster, EmbeddedConfig};

    use super::{CheckArgs, CycleArgs};

    pub(crate) async fn run(args: CycleArgs) -> strata_core::Result<()> {
        let config = EmbeddedConfig::default().with_stored_layout(&args.data_dir)?;
        let cluster = EmbeddedCluster::start(&args.data_dir, config).await?;
        let db = cluster.database();
        let nodes = ensure_ring(&db, args.keys).await?;
        let clients = args.clients.max(1);
        let started = std::time::Instant::now();
        let tasks: Vec<_> = (0..clients)
            .map(|c| {
                let db = db.clone();
                let print = args.print_acks;
                // The remainder goes to the first clients, so the total is exact.
                let per_client =
                    args.transactions / clients + u64::from(c < args.transactions % clients);
                tokio::spawn(async move {
                    let mut rng = SplitMix64(c ^ u64::from(std::process::id()));
                    for n in 0..per_client {
                        rewire(&db, nodes, &mut rng, c, n).await?;
                        if print {
                            let mut out = std::io::stdout().lock();
                            let _ = writeln!(out, "ack {c} {n}");
                            let _ = out.flush();
                        }
                    }
                    Ok::<(), Error>(())
                })
            })
            .collect();
        for t in tasks {
            t.await.map_err(|e| {
                Error::new(Stage::Director, ErrorKind::Unavailable(e.to_string()))
            })??;
        }
        let elapsed = started.elapsed();
        check_ring(&db).await?;
        let done = args.transactions;
        println!(
            "cycle: {done} transactions by {clients} clients in {:.2} s ({:.0}/s); ring of {nodes} keys intact",
            elapsed.as_secs_f64(),
            done as f64 / elapsed.as_secs_f64()
        );
        cluster.stop().await;
        Ok(())
    }

    pub(crate) async fn check(args: CheckArgs) -> strata_core::Result<()> {
        let config = EmbeddedConfig::default().with_stored_layout(&args.data_dir)?;
        let cluster = EmbeddedCluster::start(&args.data_dir, config).await?;
        let checked = check_ring(&cluster.database()).await;
        let epoch = cluster.epoch();
        cluster.stop().await;
        println!("ring of {} keys intact at epoch {}", checked?, epoch.0);
        Ok(())
    }
}

mod load {
    //! `strata bench`: a load generator over the embedded cluster.

    use std::fs::OpenOptions;
    use std::io::{IsTerminal, Write};
    use std::path::PathBuf;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::time::{Duration, Instant};

    use bytes::Bytes;
    use clap::Args;
    use serde::Serialize;
    use strata_core::{Error, ErrorKind, Stage};
    use strata_director::{EmbeddedCluster, EmbeddedConfig};

    use strata_core::rng::SplitMix64;

    /// Keys the load spreads over.
    const KEY_SPACE: u64 = 1_000_000;

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
        /// Print one JSON object instead of text (and no progress bar).
        #[arg(long)]
        json: bool,
    }

    #[derive(Serialize)]
    struct Latency {
        p50: u64,
        p99: u64,
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
        latency_us: Latency,
        fsync_floor_us: u64,
    }

    fn invalid(why: &str) -> Error {
        Error::new(Stage::Director, ErrorKind::InvalidRequest(why.into()))
    }

    /// The median of 100 appends of 4 KiB, each followed by `fdatasync`, in `dir`.
    fn fsync_floor(dir: &std::path::Path) -> strata_core::Result<u64> {
        let path = dir.join("fsync-floor.tmp");
        let io = |e| Error::io(Stage::Director, e);
        let mut f = OpenOptions::new()
            .create(true)
            .truncate(true)
            .write(true)
            .open(&path)
            .map_err(io)?;
        let block = [7u8; 4096];
        let mut samples = Vec::with_capacity(100);
        for _ in 0..100 {
            let t = Instant::now();
            f.write_all(&block)
                .and_then(|()| f.sync_data())
                .map_err(io)?;
            samples.push(u64::try_from(t.elapsed().as_micros()).unwrap_or(u64::MAX));
        }
        drop(f);
        std::fs::remove_file(&path).map_err(io)?;
        samples.sort_unstable();
        Ok(samples[samples.len() / 2])
    }

    pub(crate) async fn run(args: BenchArgs) -> strata_core::Result<()> {
        if !(0.0..=1.0).contains(&args.read_fraction) {
            return Err(invalid("--read-fraction must be between 0 and 1"));
        }
        std::fs::create_dir_all(&args.data_dir).map_err(|e| Error::io(Stage::Director, e))?;
        let floor = fsync_floor(&args.data_dir)?;
        let config = EmbeddedConfig::default().with_stored_layout(&args.data_dir)?;
        let cluster = EmbeddedCluster::start(&args.data_dir, config).await?;
        let db = cluster.database();

        let progress = if args.json || !std::io::stdout().is_terminal() {
            indicatif::ProgressBar::hidden()
        } else {
            indicatif::ProgressBar::new(args.transactions)
        };
        let aborts = Arc::new(AtomicU64::new(0));
        let value = Bytes::from(vec![b'v'; args.value_bytes]);
        let started = Instant::now();
        let tasks: Vec<_> = (0..args.clients)
            .map(|c| {
                let (db, aborts, value, progress) =
                    (db.clone(), aborts.clone(), value.clone(), progress.clone());
                let share = args.transactions / args.clients
                    + u64::from(c < args.transactions % args.clients);
                let (keys, reads) = (args.keys_per_transaction, args.read_fraction);
                tokio::spawn(async move {
                    let mut rng = SplitMix64(0xbe7c_0000 + c);
                    let mut latencies = Vec::with_capacity(usize::try_from(share).unwrap_or(0));
                    for _ in 0..share {
                        // Choose the operations once, so retries repeat the same transaction.
                        let ops: Vec<(Bytes, bool)> = (0..keys)
                            .map(|_| {
                                let key = Bytes::from(format!("bench/{:08}", rng.below(KEY_SPACE)));
                                (key, rng.unit() < reads)
                            })
                            .collect();
                        let t = Instant::now();
                        let tries = AtomicU64::new(0);
                        db.run(|tx| {
                            tries.fetch_add(1, Ordering::Relaxed);
                            let (ops, value) = (ops.clone(), value.clone());
                            async move {
                                for (key, read) in ops {
                                    if read {
                                        tx.get(&key).await?;
                                    } else {
                                        tx.set(key, value.clone());
                                    }
                                }
                                Ok(())
                            }
                        })
                        .await?;
                        latencies.push(u64::try_from(t.elapsed().as_micros()).unwrap_or(u64::MAX));
                        aborts.fetch_add(tries.load(Ordering::Relaxed) - 1, Ordering::Relaxed);
                        progress.inc(1);
                    }
                    Ok::<Vec<u64>, Error>(latencies)
                })
            })
            .collect();
        let mut latencies = Vec::new();
        for t in tasks {
            let joined = t
                .await
                .map_err(|e| Error::new(Stage::Director, ErrorKind::Unavailable(e.to_string())))?;
            latencies.extend(joined?);
        }
        let elapsed = started.elapsed();
        progress.finish_and_clear();
        drop(db);
        cluster.stop().await;

        latencies.sort_unstable();
        let at = |q: f64| {
            let i = ((latencies.len() as f64 - 1.0) * q).round() as usize;
            latencies.get(i).copied().unwrap_or(0)
        };
        let report = Report {
            transactions: args.transactions,
            clients: args.clients,
            keys_per_transaction: args.keys_per_transaction,
            value_bytes: args.value_bytes,
            read_fraction: args.read_fraction,
            elapsed_s: elapsed.as_secs_f64(),
            commits_per_second: args.transactions as f64
                / elapsed.max(Duration::from_micros(1)).as_secs_f64(),
            aborts: aborts.load(Ordering::Relaxed),
            latency_us: Latency {
                p50: at(0.50),
                p99: at(0.99),
                max: latencies.last().copied().unwrap_or(0),
            },
            fsync_floor_us: floor,
        };
        if args.json {
            match serde_json::to_string(&report) {
                Ok(json) => println!("{json}"),
                Err(e) => return Err(invalid(&e.to_string())),
            }
        } else {
            println!(
                "strata bench: {} transactions, {} clients, {} key(s) each, {}-byte values, {:.0}% reads",
                report.transactions,
                report.clients,
                report.keys_per_transaction,
                report.value_bytes,
                report.read_fraction * 100.0
            );
            println!(
                "commits/s: {:.0}   aborts: {}   elapsed: {:.2} s",
                report.commits_per_second, report.aborts, report.elapsed_s
            );
            println!(
                "commit latency µs: p50 {}   p99 {}   max {}",
                report.latency_us.p50, report.latency_us.p99, report.latency_us.max
            );
            println!(
                "fsync floor (4 KiB append + fdatasync, median of 100): {} µs; p50 is {:.2}× it",
                report.fsync_floor_us,
                report.latency_us.p50 as f64 / report.fsync_floor_us.max(1) as f64
            );
        }
        Ok(())
    }
}
