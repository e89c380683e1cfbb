//! `strata dump`: what is stored under a prefix, read without starting a new epoch.

use std::path::Path;

use strata_core::{Result, Version};

use crate::coordinator::CoordinatedState;
use crate::snapshot::{Snapshot, prefix_range};

/// What `strata dump` found: the coordinated state and the pairs under a prefix.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Dump {
    /// The coordinated state as stored.
    pub state: CoordinatedState,
    /// The newest recoverable version: the newest every current log holds.
    pub version: Version,
    /// Key-value pairs under the prefix at that version, keys ascending, both printable.
    pub entries: Vec<(String, String)>,
}

/// Reads what the cluster in `data_dir` stores under `prefix` (the empty prefix is
/// everything, system keys included), at the newest recoverable version, without starting a
/// new epoch ([`Snapshot`]).
pub async fn dump(data_dir: &Path, prefix: &[u8]) -> Result<Dump> {
    let range = prefix_range(prefix)?;
    let snapshot = Snapshot::open(data_dir).await?;
    let read = snapshot.get_range(&range, usize::MAX).await;
    let (state, version) = (snapshot.state().clone(), snapshot.version());
    snapshot.close().await;
    let (entries, _) = read?;
    Ok(Dump {
        state,
        version,
        entries: entries
            .into_iter()
            .map(|(k, v)| (strata_core::printable(&k), strata_core::printable(&v)))
            .collect(),
    })
}

/// [`dump`] of the cluster `file` names, read through the process that serves it (`strata
/// serve --listen`): the coordinated state as stored, and the pairs under `prefix` at a read
/// version of the running cluster, which the `version` field then holds. `tls` is this
/// process's TLS credentials, for a cluster that uses TLS.
///
/// Errors: those of [`ClusterFile::connect`](crate::cluster_file::ClusterFile::connect);
/// `Unavailable` when the state names no cluster.
pub async fn dump_served(
    file: &crate::cluster_file::ClusterFile,
    tls: Option<&strata_net::Tls>,
    prefix: &[u8],
) -> Result<Dump> {
    let range = prefix_range(prefix)?;
    let state = file.state()?;
    let db = file.connect(tls).await?;
    let tx = db.begin();
    let entries = crate::workload::scan(&tx, &range).await?;
    Ok(Dump {
        state,
        version: tx.read_version().await?,
        entries: entries
            .into_iter()
            .map(|(k, v)| (strata_core::printable(&k), strata_core::printable(&v)))
            .collect(),
    })
}
