//! The `strata` command: run and inspect an embedded Strata cluster.
//!
//! `strata recover` runs one recovery of the cluster stored in a data directory, through the
//! persistence phase, and reports what it did. Errors print one line on stderr and exit 1;
//! usage errors exit 2.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

/// mimalloc instead of the system allocator: the commit path allocates many small, short-lived
/// buffers on two threads, and the resolver frees and reallocates large runs; with glibc's
/// allocator the 64-writer benchmark spent about 12% in malloc and 7% zeroing fresh pages, and
/// commits 20% faster with mimalloc. Only the binary chooses it; library users keep theirs.
///
/// Its v2 line (the `v2` feature in the workspace's Cargo.toml), not the crate's default v3:
/// v3 gives its memory back to the kernel a second after it is freed and asks for huge pages,
/// so a growing window kept faulting in fresh 2 MiB pages; with v2 the 64-writer benchmark
/// spends half the system time (0.57 s against 0.85 s for 200,000 commits) and 10% less CPU
/// per commit (docs/performance.md, "CPU per commit").
///
/// Built with `no_thp`: mimalloc then does not ask for transparent huge pages for its memory.
/// It gives memory freed 10 ms earlier back to the kernel (over 600 MB in a 200,000-commit run
/// whose peak is under 150 MB), and with huge pages every touch of such memory afterwards
/// faulted in a whole 2 MiB page, zeroed; with 4 KiB pages only what is touched comes back.
/// The same run then takes about 0.45 s of system time instead of 0.8, and peaks at 125 MB
/// instead of 148.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

use clap::{Args, Parser, Subcommand};

/// Prints a line on standard output, like `println!`, except that a reader that went away
/// (`strata dump | head -1`) is not a panic: output stops quietly and the command goes on to
/// its own end and exit status (`check` still exits 1 on a problem, `serve` keeps serving).
macro_rules! out {
    ($($arg:tt)*) => {
        $crate::print_line(format_args!($($arg)*))
    };
}

/// Set once standard output's reader went away: nothing more is written.
static OUTPUT_CLOSED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// The body of [`out!`]. Any other failure to write is an error (exit 1).
fn print_line(line: std::fmt::Arguments<'_>) {
    use std::io::Write;
    use std::sync::atomic::Ordering;
    if OUTPUT_CLOSED.load(Ordering::Relaxed) {
        return;
    }
    let mut stdout = std::io::stdout().lock();
    let written = stdout
        .write_fmt(line)
        .and_then(|()| stdout.write_all(b"\n"))
        .and_then(|()| stdout.flush());
    match written {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => {
            OUTPUT_CLOSED.store(true, Ordering::Relaxed);
        }
        Err(e) => {
            eprintln!("error: cannot write to standard output: {e}");
            std::process::exit(1);
        }
    }
}

/// The exit code of a command a signal stopped (128 + the signal's number), 0 while none did.
static STOPPED_BY: std::sync::atomic::AtomicU8 = std::sync::atomic::AtomicU8::new(0);

/// Where a signal's exit code is published, once [`listen_for_signals`] ran.
static STOP: std::sync::OnceLock<tokio::sync::watch::Receiver<u8>> = std::sync::OnceLock::new();

/// Takes over SIGINT and SIGTERM for a command that stops cleanly on them (`serve`, `workload
/// cycle`, `bench`), from now on: a signal that arrives while the cluster still recovers is
/// kept, and the command stops at its first chance. Must run inside the runtime. Other
/// commands leave the signals' default action (ending the process) alone.
fn listen_for_signals() {
    use tokio::signal::unix::{SignalKind, signal};
    let (publish, published) = tokio::sync::watch::channel(0u8);
    if let (Ok(mut interrupt), Ok(mut terminate)) = (
        signal(SignalKind::interrupt()),
        signal(SignalKind::terminate()),
    ) {
        tokio::spawn(async move {
            let code = tokio::select! {
                _ = interrupt.recv() => 130,
                _ = terminate.recv() => 143,
            };
            STOPPED_BY.store(code, std::sync::atomic::Ordering::SeqCst);
            let _ = publish.send(code);
            // A second signal does not wait for the clean stop (a recovery in progress, say):
            // the process ends at once, which is no worse than a crash (every acknowledged
            // commit is on disk).
            tokio::select! {
                _ = interrupt.recv() => {}
                _ = terminate.recv() => {}
            }
            eprintln!("stopping at once");
            std::process::exit(i32::from(code));
        });
    }
    let _ = STOP.set(published);
}

/// Completes once SIGINT or SIGTERM arrived ([`STOPPED_BY`] then holds 130 or 143, as shells
/// report them); never when [`listen_for_signals`] did not run or could not take them.
async fn stop_requested() {
    if let Some(published) = STOP.get() {
        let mut published = published.clone();
        if published.wait_for(|code| *code != 0).await.is_ok() {
            return;
        }
    }
    std::future::pending().await
}
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
    /// Recover, then keep serving with monitoring until Ctrl-C or SIGTERM (exit 130 or 143); a
    /// failed stage starts the next epoch.
    Serve(ServeArgs),
    /// Run or check a workload through the full pipeline.
    #[command(subcommand)]
    Workload(Workload),
    /// Drive the cluster through the full pipeline and report commits per second, aborts,
    /// commit latency percentiles and the disk's fsync floor.
    Bench(load::BenchArgs),
    #[command(flatten)]
    Data(data::DataCommand),
    /// Type data commands at a prompt, on one cluster kept running (history, Tab completes).
    Shell(shell::ShellArgs),
    /// Run the seeded simulation: the whole cluster on one thread under a simulated clock,
    /// with faults and crashes chosen by each seed (exit 1 when a seed fails).
    Sim(sim::SimArgs),
}

#[derive(Subcommand)]
enum Workload {
    /// FoundationDB's Cycle: rewire a ring of keys with concurrent transactions, then check
    /// it is still one ring. Creates the ring on first use.
    Cycle(CycleArgs),
    /// Check the Cycle ring as stored (after any crash), read without starting an epoch.
    Check(CheckArgs),
}

#[derive(Args)]
struct CycleArgs {
    /// The data directory (created when missing).
    #[arg(long, default_value = "./strata-data")]
    data_dir: PathBuf,
    /// Run against the cluster this file names, served by another process (`strata serve
    /// --listen`), instead of starting one on --data-dir. The run follows the cluster's
    /// recoveries (waiting up to 30 s for a new epoch); transactions whose commit was on its
    /// way when an epoch ended are of unknown outcome: not acknowledged, counted apart.
    #[arg(long, value_name = "FILE", conflicts_with = "data_dir")]
    cluster_file: Option<PathBuf>,
    #[command(flatten)]
    tls: TlsArgs,
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
    /// What this process runs. `all`: the director, and every stage no worker runs (the
    /// embedded cluster, with --data-dir). `resolver`, `sequencer` or `proxy`: a worker, which
    /// registers in the cluster's etcd (--cluster-file) and runs a stage of its role for each
    /// epoch the director recruits it for, served at --listen (a port for the cluster's own
    /// processes only); it keeps no data and takes no layout.
    #[arg(long, value_enum, default_value = "all")]
    role: RoleArg,
    #[command(flatten)]
    layout: LayoutArgs,
    /// Also serve the cluster to client processes, over gRPC at HOST:PORT (port 0 picks
    /// one), and write the cluster file they connect with to DATA_DIR/strata.cluster. Clients
    /// read this address from the coordinated state: in the data directory, clients must run
    /// on this host; in etcd (--cluster-file), on any host that reaches both.
    #[arg(long, value_name = "HOST:PORT", required_if_eq_any(WORKER_ROLES))]
    listen: Option<String>,
    /// The cluster this data directory serves, and where its coordinated state lives:
    /// `NAME:ID@etcd://HOST:PORT[,HOST:PORT...]` keeps it in etcd (one director at a time,
    /// by a lease). Copied to DATA_DIR/strata.cluster; a directory that already belongs to
    /// another cluster is refused.
    #[arg(
        long,
        value_name = "FILE",
        requires = "listen",
        required_if_eq_any(WORKER_ROLES)
    )]
    cluster_file: Option<PathBuf>,
    /// The director's port for the cluster's own processes, HOST:PORT (port 0 picks one):
    /// it serves the logs and the stages no worker runs to the commit proxies recruited on
    /// proxy workers, and answers every call, so only the cluster's hosts may reach it.
    /// Without it no proxy worker is recruited. Needs an etcd --cluster-file.
    #[arg(long, value_name = "HOST:PORT", requires = "cluster_file")]
    peer_listen: Option<String>,
    /// The size at which a transaction log this process holds starts its next segment file
    /// (65,536 to 1,073,741,824; 64 MiB by default), for `--role all` and `--role log`: a
    /// record that would cross it goes to a new segment, so a segment is larger only when one
    /// record (a commit batch, at most 16 MiB) is.
    /// Smaller segments free disk sooner once popped, but each roll syncs a new file and the
    /// directory: a recovery that copied about 100 MB of history into 64 KiB segments took 34 s
    /// on a test machine, 3 s with the default. Segments written before keep their size.
    #[arg(
        long,
        value_name = "BYTES",
        value_parser = bounded(config::LOG_SEGMENT_BYTES_MIN, config::LOG_SEGMENT_BYTES_MAX)
    )]
    log_segment_bytes: Option<u64>,
    /// With --listen: serve over TLS only, to clients with a certificate of --tls-ca.
    #[command(flatten)]
    tls: TlsArgs,
}

#[derive(Args)]
struct DumpArgs {
    /// The data directory.
    #[arg(long, default_value = "./strata-data")]
    data_dir: PathBuf,
    /// Read the cluster this file names through the process that serves it (`strata serve
    /// --listen`), at a read version of the running cluster, instead of --data-dir at rest.
    #[arg(long, value_name = "FILE", conflicts_with = "data_dir")]
    cluster_file: Option<PathBuf>,
    #[command(flatten)]
    tls: TlsArgs,
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
    /// Check the ring of the cluster this file names, read through the process that serves
    /// it (`strata serve --listen`), instead of reading --data-dir at rest.
    #[arg(long, value_name = "FILE", conflicts_with = "data_dir")]
    cluster_file: Option<PathBuf>,
    #[command(flatten)]
    tls: TlsArgs,
}

/// This process's TLS credentials, for a cluster whose processes use TLS: all three or none.
/// `crates/testkit/certs/make.sh` in the source shows how to make them with `openssl`.
#[derive(Args, Clone, Debug, Default)]
struct TlsArgs {
    /// The cluster's certificate authority (PEM): the other end's certificate must be signed
    /// by it. With the three --tls-* options every connection is TLS, both ways.
    #[arg(long, value_name = "FILE", requires_all = ["tls_cert", "tls_key"])]
    tls_ca: Option<PathBuf>,
    /// This process's certificate (PEM), signed by --tls-ca, naming this host's addresses.
    #[arg(long, value_name = "FILE", requires_all = ["tls_ca", "tls_key"])]
    tls_cert: Option<PathBuf>,
    /// The private key of --tls-cert (PEM).
    #[arg(long, value_name = "FILE", requires_all = ["tls_ca", "tls_cert"])]
    tls_key: Option<PathBuf>,
}

impl TlsArgs {
    /// The credentials for a client command, which uses them only through `cluster_file`:
    /// options given without it are refused, not ignored.
    fn load_for(
        &self,
        cluster_file: Option<&PathBuf>,
    ) -> strata_core::Result<Option<strata_net::Tls>> {
        if cluster_file.is_none() && self.tls_ca.is_some() {
            return Err(strata_core::Error::new(
                strata_core::Stage::Director,
                strata_core::ErrorKind::InvalidRequest(
                    "--tls-* are for a cluster reached through --cluster-file".into(),
                ),
            ));
        }
        self.load()
    }

    /// The credentials the options name, loaded and checked; none without the options.
    fn load(&self) -> strata_core::Result<Option<strata_net::Tls>> {
        match (&self.tls_ca, &self.tls_cert, &self.tls_key) {
            (Some(ca), Some(cert), Some(key)) => {
                strata_net::Tls::from_files(ca, cert, key).map(Some)
            }
            _ => Ok(None),
        }
    }
}

/// `strata serve --role`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
enum RoleArg {
    /// The director and every stage no worker runs.
    All,
    /// A resolver worker.
    Resolver,
    /// A sequencer worker.
    Sequencer,
    /// A commit proxy worker (the director needs --peer-listen to recruit it).
    Proxy,
    /// A log worker: holds transaction logs in its own --data-dir, across epochs.
    Log,
    /// A storage worker: holds one storage server in its own --data-dir, across epochs.
    Storage,
}

/// The roles of worker processes, which need --listen and --cluster-file.
const WORKER_ROLES: [(&str, &str); 5] = [
    ("role", "resolver"),
    ("role", "sequencer"),
    ("role", "proxy"),
    ("role", "log"),
    ("role", "storage"),
];

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

impl Command {
    /// Whether the command is a client of a cluster that runs in other processes (it was
    /// given `--cluster-file`).
    fn is_remote_client(&self) -> bool {
        match self {
            Command::Bench(args) => args.cluster_file.is_some(),
            Command::Workload(Workload::Cycle(args)) => args.cluster_file.is_some(),
            Command::Workload(Workload::Check(args)) => args.cluster_file.is_some(),
            Command::Dump(args) => args.cluster_file.is_some(),
            Command::Recover(_)
            | Command::Check(_)
            | Command::Serve(_)
            | Command::Data(_)
            | Command::Shell(_)
            | Command::Sim(_) => false,
        }
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let level = match (cli.verbose, &cli.command) {
        // The simulation's faults make the cluster warn all the time; its own report says
        // what matters. -v shows the cluster's warnings too.
        (0, Command::Sim(_)) => tracing::level_filters::LevelFilter::OFF,
        (1, Command::Sim(_)) | (0, _) => tracing::level_filters::LevelFilter::WARN,
        (2, Command::Sim(_)) | (1, _) => tracing::level_filters::LevelFilter::INFO,
        _ => tracing::level_filters::LevelFilter::DEBUG,
    };
    tracing_subscriber::fmt()
        .with_max_level(level)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    if cli.command.is_remote_client() {
        // A client of a cluster in other processes does little between calls, and each call
        // hands off between tasks several times: on one worker thread the spawned clients'
        // hand-offs wake no other (docs/performance.md, "A cluster used from another
        // process"). It also caps the client at one core, far above what it needs.
        builder.worker_threads(1);
    }
    let runtime = match builder.enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let verbose = cli.verbose;
    let result = match cli.command {
        Command::Recover(args) => runtime.block_on(recover(args)),
        Command::Dump(args) => runtime.block_on(dump(args)),
        Command::Check(args) => runtime.block_on(check(args)),
        Command::Serve(args) => match args.role {
            RoleArg::All => runtime.block_on(serve(args)),
            RoleArg::Resolver => runtime.block_on(worker::serve(args, strata_net::Role::Resolver)),
            RoleArg::Sequencer => {
                runtime.block_on(worker::serve(args, strata_net::Role::Sequencer))
            }
            RoleArg::Proxy => runtime.block_on(worker::serve(args, strata_net::Role::Proxy)),
            RoleArg::Log => runtime.block_on(worker::serve(args, strata_net::Role::Log)),
            RoleArg::Storage => runtime.block_on(worker::serve(args, strata_net::Role::Storage)),
        },
        Command::Bench(args) => runtime.block_on(load::run(args)),
        Command::Workload(Workload::Cycle(args)) => runtime.block_on(cycle::run(args)),
        Command::Workload(Workload::Check(args)) => runtime.block_on(cycle::check(args)),
        Command::Data(command) => {
            let dir = command
                .target()
                .data_dir
                .clone()
                .unwrap_or_else(|| PathBuf::from(DATA_DIR_DEFAULT));
            runtime.block_on(data::run(&command, data::Store::AtRest(&dir)))
        }
        Command::Shell(args) => runtime.block_on(shell::run(args)),
        // Each seed builds its own single-threaded runtimes.
        Command::Sim(args) => sim::run(&args, verbose),
    };
    match result {
        Ok(()) => match STOPPED_BY.load(std::sync::atomic::Ordering::SeqCst) {
            0 => ExitCode::SUCCESS,
            signal => ExitCode::from(signal),
        },
        Err(e) => {
            if verbose > 0 {
                eprintln!("error: {} (reported by the {})", user_message(&e), e.stage);
            } else {
                eprintln!("error: {}", user_message(&e));
            }
            ExitCode::FAILURE
        }
    }
}

/// The data directory of a command not given `--data-dir`.
const DATA_DIR_DEFAULT: &str = "./strata-data";

/// An error as a user reads it: what went wrong, without the stage that found it (`-v` adds
/// it) or the category of a refused request.
fn user_message(e: &strata_core::Error) -> String {
    use strata_core::ErrorKind;
    match &e.kind {
        ErrorKind::InvalidRequest(message) | ErrorKind::Unavailable(message) => message.clone(),
        kind => kind.to_string(),
    }
}

async fn recover(args: RecoverArgs) -> strata_core::Result<()> {
    let started = std::time::Instant::now();
    let (cluster, report) =
        EmbeddedCluster::start_with_report(&args.layout.data_dir, args.layout.config()?).await?;
    let total_micros = u64::try_from(started.elapsed().as_micros()).unwrap_or(u64::MAX);
    cluster.stop().await;
    if args.json {
        print_json(&Recovered {
            report: &report,
            total_micros,
        })?;
    } else {
        print_text(&report, total_micros);
    }
    Ok(())
}

async fn serve(args: ServeArgs) -> strata_core::Result<()> {
    listen_for_signals();
    let mut config = args.layout.config()?;
    if let Some(bytes) = args.log_segment_bytes {
        config.log.segment_bytes = bytes;
    }
    let tls = args.tls.load()?;
    if tls.is_some() && args.listen.is_none() {
        return Err(strata_core::Error::new(
            strata_core::Stage::Director,
            strata_core::ErrorKind::InvalidRequest(
                "--tls-* serve the network over TLS: give --listen too".into(),
            ),
        ));
    }
    let mut env = strata_director::RecoveryEnv::default();
    // Bound before the first recovery: an address in use fails at once, and the address with
    // its port picked is the one the coordinated state records.
    let network = match &args.listen {
        Some(address) => {
            let given = match &args.cluster_file {
                Some(path) => Some(strata_director::cluster_file::ClusterFile::read(path)?),
                None => None,
            };
            Some(Network::bind(address, &args.layout.data_dir, given.as_ref()).await?)
        }
        None => None,
    };
    env.served_at = network.as_ref().map(|n| n.address.clone());
    let peers = match (&args.peer_listen, &network) {
        (Some(address), Some(n)) => Some(Peers::bind(address, &n.cluster).await?),
        _ => None,
    };
    env.peers = peers.as_ref().map(|p| p.port.clone());
    // Workers registered in the cluster's etcd are reached with the cluster's id and TLS.
    env.access = network
        .as_ref()
        .map(|n| strata_net::Access::new(n.cluster.id.clone(), tls.clone()));
    let at = env
        .served_at
        .as_ref()
        .map(|a| format!(" at {a}"))
        .unwrap_or_default();
    let (serving, mut watching) = tokio::sync::watch::channel::<strata_director::Serving>(None);
    let announce = tokio::spawn(async move {
        while watching.changed().await.is_ok() {
            if let Some((epoch, _)) = &*watching.borrow_and_update() {
                out!("serving epoch {}{at}; Ctrl-C or SIGTERM stops", epoch.0);
            }
        }
    });
    let (stages, published) = tokio::sync::watch::channel(Arc::new(strata_net::Stages::default()));
    let (stop_network, network_stopped) = tokio::sync::watch::channel(false);
    let _owner = network.as_ref().map(|n| n.owner.clone());
    let mut servers = Vec::new();
    if let Some(n) = network {
        out!("cluster file: {}", n.cluster_file_path.display());
        servers.push(tokio::spawn(strata_net::serve(
            strata_net::Access::new(n.cluster.id.clone(), tls.clone()),
            // Every process that reaches the port is a client: none may lock, pop or roll
            // back the stages of this one.
            strata_net::Exposure::Clients,
            published,
            n.listener,
            stopped(network_stopped.clone()),
        )));
    }
    if let Some(p) = peers {
        tracing::info!(address = %p.port.address, "serving the cluster's processes");
        servers.push(tokio::spawn(strata_net::serve(
            strata_net::Access::new(p.cluster_id, tls),
            // Only the cluster's processes reach this port: they call every stage.
            strata_net::Exposure::Everything,
            p.published,
            p.listener,
            stopped(network_stopped),
        )));
    }
    let result = strata_director::serve_stages(
        &args.layout.data_dir,
        config,
        &env,
        &serving,
        &stages,
        stop_requested(),
    )
    .await;
    drop(serving);
    let _ = stop_network.send(true);
    for server in servers {
        match server.await {
            Ok(Err(e)) => tracing::warn!(error = %e, "the network server failed"),
            Err(e) => tracing::warn!(error = %e, "the network server did not stop cleanly"),
            Ok(Ok(())) => {}
        }
    }
    let _ = announce.await;
    if result.is_ok() {
        out!("stopped");
    }
    result
}

/// Binds `address` for a port whose address is told to others (`who`: clients, workers, the
/// director); returns the listener and the address as bound (its port picked, for port 0).
///
/// Errors: `InvalidRequest` when it cannot be bound, or names every interface (0.0.0.0 or
/// [::]), which no one can be told to reach.
pub(crate) async fn bind_told(
    address: &str,
    who: &str,
) -> strata_core::Result<(tokio::net::TcpListener, String)> {
    let refuse = |why: String| {
        strata_core::Error::new(
            strata_core::Stage::Director,
            strata_core::ErrorKind::InvalidRequest(why),
        )
    };
    let listener = tokio::net::TcpListener::bind(address)
        .await
        .map_err(|e| refuse(format!("cannot listen on {address}: {e}")))?;
    let bound = listener
        .local_addr()
        .map_err(|e| refuse(format!("cannot listen on {address}: {e}")))?;
    if bound.ip().is_unspecified() {
        return Err(refuse(format!(
            "{address} is every interface, and {who} are told the address: give the one they \
             reach this host at"
        )));
    }
    Ok((listener, bound.to_string()))
}

/// Completes once `stop` turns true (or its sender is gone).
async fn stopped(mut stop: tokio::sync::watch::Receiver<bool>) {
    let _ = stop.wait_for(|stop| *stop).await;
}

/// The director's port for the cluster's processes (`strata serve --peer-listen`): its
/// listener, and the stages each epoch publishes there.
struct Peers {
    port: strata_director::workers::PeerPort,
    published: tokio::sync::watch::Receiver<Arc<strata_net::Stages>>,
    listener: tokio::net::TcpListener,
    cluster_id: strata_net::ClusterId,
}

impl Peers {
    async fn bind(
        address: &str,
        cluster: &strata_director::cluster_file::ClusterFile,
    ) -> strata_core::Result<Peers> {
        let (listener, bound) = bind_told(address, "workers").await?;
        let (stages, published) =
            tokio::sync::watch::channel(Arc::new(strata_net::Stages::default()));
        Ok(Peers {
            port: strata_director::workers::PeerPort {
                address: bound,
                stages: Arc::new(stages),
            },
            published,
            listener,
            cluster_id: cluster.id.clone(),
        })
    }
}

/// What `strata serve --listen` serves on: its listener, the address clients are told, and
/// the cluster file they connect with.
struct Network {
    /// Held from before the cluster file is read until the process ends.
    owner: Arc<strata_director::owner::DirectoryLock>,
    listener: tokio::net::TcpListener,
    address: String,
    cluster: strata_director::cluster_file::ClusterFile,
    cluster_file_path: PathBuf,
}

impl Network {
    async fn bind(
        address: &str,
        data_dir: &std::path::Path,
        given: Option<&strata_director::cluster_file::ClusterFile>,
    ) -> strata_core::Result<Network> {
        let (listener, bound) = bind_told(address, "clients").await?;
        // Owned before the cluster file is read or made: a second `serve` of the directory
        // stops here, before it could replace the file (and its id) the first one serves.
        let owner = strata_director::owner::lock_directory(data_dir, true)?;
        let cluster = strata_director::cluster_file::ClusterFile::for_data_dir(data_dir, given)?;
        Ok(Network {
            owner,
            listener,
            address: bound,
            cluster,
            cluster_file_path: data_dir.join(strata_director::cluster_file::CLUSTER_FILE_NAME),
        })
    }
}

async fn check(args: VerifyArgs) -> strata_core::Result<()> {
    let report = strata_director::verify(&args.data_dir).await?;
    if args.json {
        print_json(&report)?;
    } else {
        match report.epoch {
            Some(epoch) => out!("{}: {epoch}", args.data_dir.display()),
            None => out!("{}: no coordinated state", args.data_dir.display()),
        }
        let shown =
            |v: &Option<strata_core::Version>| v.map_or("unreadable".into(), |v| v.to_string());
        for (dir, last) in &report.logs {
            out!("  {dir}: holds up to {}", shown(last));
        }
        for (dir, at) in &report.on_workers {
            out!("  strata://{at}/{dir}: on a worker, not read here");
        }
        for (file, durable) in &report.storage {
            out!("  {file}: durable at {}", shown(durable));
        }
        if let Some(v) = report.recoverable_version {
            out!("  recoverable up to {v}");
        }
        for f in &report.findings {
            out!("problem: {f}");
        }
    }
    if report.findings.is_empty() {
        if !args.json {
            match report.on_workers.len() {
                0 => out!("consistent"),
                n => out!(
                    "consistent, as far as this directory shows: {n} log(s) or storage \
                     server(s) on workers were not read"
                ),
            }
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
    let tls = args.tls.load_for(args.cluster_file.as_ref())?;
    let dump = match &args.cluster_file {
        Some(file) => {
            let file = strata_director::cluster_file::ClusterFile::read(file)?;
            strata_director::dump_served(&file, tls.as_ref(), &prefix).await?
        }
        None => strata_director::dump(&args.data_dir, &prefix).await?,
    };
    if args.json {
        return print_json(&dump);
    }
    out!(
        "epoch {} (generation {}), {} log(s), {} storage server(s)",
        dump.state.epoch.0,
        dump.state.generation,
        dump.state.logs.len(),
        dump.state.storage
    );
    out!(
        "at {}: {} key(s) under {}",
        dump.version,
        dump.entries.len(),
        args.prefix
    );
    for (k, v) in &dump.entries {
        out!("  {k} = {v}");
    }
    Ok(())
}

/// Prints `value` as one line of JSON; a value that cannot be encoded is an error (exit 1),
/// never a silent success.
fn print_json(value: &impl serde::Serialize) -> strata_core::Result<()> {
    let json = serde_json::to_string(value).map_err(|e| {
        strata_core::Error::new(
            strata_core::Stage::Director,
            strata_core::ErrorKind::InvalidRequest(format!(
                "cannot encode the output as JSON: {e}"
            )),
        )
    })?;
    out!("{json}");
    Ok(())
}

/// The recovery report with the command's own total time.
#[derive(serde::Serialize)]
struct Recovered<'a> {
    #[serde(flatten)]
    report: &'a RecoveryReport,
    total_micros: u64,
}

fn print_text(report: &RecoveryReport, total_micros: u64) {
    out!(
        "recovered {} at recovery version {} in {:.1} ms",
        report.epoch,
        report.recovery_version,
        total_micros as f64 / 1_000.0
    );
    out!(
        "system transaction committed at {}",
        report.system_commit_version
    );
    out!("phases:");
    for p in &report.phases {
        out!("  {:<34} {:>9.3} ms", p.phase, p.micros as f64 / 1_000.0);
    }
    out!("monolithic key: {}", report.monolithic_key);
    out!("decomposed keys ({}):", report.decomposed_keys.len());
    for k in &report.decomposed_keys {
        out!("  {k}");
    }
}

mod cycle;
mod data;
mod load;
mod shell;
mod sim;
mod worker;
