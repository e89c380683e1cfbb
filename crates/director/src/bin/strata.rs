//! The `strata` command: run and inspect an embedded Strata cluster.
//!
//! `strata recover` runs one recovery of the cluster stored in a data directory, through the
//! persistence phase, and reports what it did. Errors print one line on stderr and exit 1;
//! usage errors exit 2.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};
use strata_director::{EmbeddedCluster, EmbeddedConfig, RecoveryReport};

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
}

#[derive(Args)]
struct RecoverArgs {
    /// The data directory (created when missing).
    #[arg(long, default_value = "./strata-data")]
    data_dir: PathBuf,
    /// Transaction logs of the new generation.
    #[arg(long, default_value_t = 1)]
    logs: usize,
    /// Storage servers (fixed for a data directory once created).
    #[arg(long, default_value_t = 1)]
    storage: usize,
    /// Resolvers.
    #[arg(long, default_value_t = 1)]
    resolvers: usize,
    /// Commit proxies.
    #[arg(long, default_value_t = 1)]
    proxies: usize,
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
    let config = EmbeddedConfig {
        logs: args.logs,
        storage: args.storage,
        resolvers: args.resolvers,
        proxies: args.proxies,
        ..EmbeddedConfig::default()
    };
    let started = std::time::Instant::now();
    let (cluster, report) = EmbeddedCluster::start_with_report(&args.data_dir, config).await?;
    let total_micros = u64::try_from(started.elapsed().as_micros()).unwrap_or(u64::MAX);
    cluster.stop().await;
    if args.json {
        print_json(&report, total_micros);
    } else {
        print_text(&report, total_micros);
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
