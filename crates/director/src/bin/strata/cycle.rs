//! `strata workload cycle` and `check`: arguments and output around
//! [`strata_director::workload::cycle`].

use std::io::Write;
use std::sync::Arc;

use strata_director::cluster_file::ClusterFile;
use strata_director::workload::cycle::{Cycle, check_ring, check_ring_in, claim_run, ensure_ring};
use strata_director::workload::{self, Plan, Span};
use strata_director::{EmbeddedCluster, EmbeddedConfig, Snapshot};

use super::{CheckArgs, CycleArgs};

pub(crate) async fn run(args: CycleArgs) -> strata_core::Result<()> {
    super::listen_for_signals();
    // The cluster this process starts, or none when it connects to one served elsewhere.
    let tls = args.tls.load_for(args.cluster_file.as_ref())?;
    let (cluster, db) = match &args.cluster_file {
        Some(file) => (None, ClusterFile::read(file)?.connect(tls.as_ref()).await?),
        None => {
            let config = EmbeddedConfig::default().with_stored_layout(&args.data_dir)?;
            let cluster = EmbeddedCluster::start(&args.data_dir, config).await?;
            let db = cluster.database();
            (Some(cluster), db)
        }
    };
    let nodes = ensure_ring(&db, args.keys).await?;
    let plan = Plan {
        clients: args.clients,
        span: Span::Transactions(args.transactions),
        // Each run its own stream, so repeated runs do not replay the same rewirings.
        seed: u64::from(std::process::id()),
        // And its own acknowledgement keys.
        first: claim_run(&db).await?,
    };
    let on_ack: workload::OnAck = if args.print_acks {
        Arc::new(|c, n| {
            let mut out = std::io::stdout().lock();
            // A closed pipe only means nobody reads the acknowledgements any more.
            let _ = writeln!(out, "ack {c} {n}").and_then(|()| out.flush());
        })
    } else {
        workload::no_acks()
    };
    // A signal ends the run early: the clients finish the transactions they are in, and
    // the ring is checked and the cluster stopped as after a full run.
    let cycle = Arc::new(Cycle { nodes });
    let driven = workload::drive_until(&db, cycle, &plan, on_ack, super::stop_requested()).await?;
    check_ring(&db).await?;
    out!(
        "cycle: {} transactions by {} clients in {:.2} s ({:.0}/s){}; ring of {nodes} keys intact",
        driven.acked.len(),
        plan.clients,
        driven.elapsed.as_secs_f64(),
        driven.per_second(),
        match driven.unknown {
            0 => String::new(),
            n => format!(", {n} of unknown outcome"),
        }
    );
    if let Some(cluster) = cluster {
        cluster.stop().await;
    }
    Ok(())
}

/// Reads the ring at rest ([`Snapshot`]): no epoch starts, no directory is created and nothing
/// but the lock file is written, so checking after a crash leaves the directory as the crash
/// left it.
pub(crate) async fn check(args: CheckArgs) -> strata_core::Result<()> {
    let tls = args.tls.load_for(args.cluster_file.as_ref())?;
    if let Some(file) = &args.cluster_file {
        // Through the serving process: a read version of the running cluster, no epoch.
        let db = ClusterFile::read(file)?.connect(tls.as_ref()).await?;
        let tx = db.begin();
        let nodes = check_ring_in(&tx).await?;
        out!(
            "ring of {nodes} keys intact at version {} (read through {})",
            tx.read_version().await?.0,
            file.display()
        );
        return Ok(());
    }
    let snapshot = Snapshot::open(&args.data_dir).await?;
    let checked = check_ring_in(&snapshot).await;
    let (epoch, version) = (snapshot.state().epoch, snapshot.version());
    snapshot.close().await;
    out!(
        "ring of {} keys intact at version {} (epoch {})",
        checked?,
        version.0,
        epoch.0
    );
    Ok(())
}
