//! `strata dump`: what is stored under a prefix, read without starting a new epoch.

use std::path::Path;
use std::sync::Arc;

use bytes::Bytes;
use strata_core::{ErrorKind, KeyRange, Result, Version};
use strata_storage::{RedbStorage, StorageConfig};
use strata_tlog::{FileLog, FileLogConfig};

use crate::coordinator::{CoordinatedState, FileStateStore, StateStore};
use crate::owner::lock_directory;
use crate::{error, split_ranges};

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

/// Reads what the cluster in `data_dir` stores under `prefix`, at the newest recoverable
/// version, without starting a new epoch: the logs are opened but not locked, and the storage
/// servers follow them without making anything durable (nothing is known committed to them)
/// or popping anything. (Opening a log still truncates a torn write at its end, as any open
/// does.) A log the coordinated state names that is missing is an error.
pub async fn dump(data_dir: &Path, prefix: &[u8]) -> Result<Dump> {
    let _owner = lock_directory(data_dir, false)?;
    let state = FileStateStore::new(data_dir).read()?.ok_or_else(|| {
        error(ErrorKind::Unavailable(format!(
            "no cluster in {}: run `strata recover` first",
            data_dir.display()
        )))
    })?;
    // The empty prefix is everything, system keys included (a prefix of only 0xff bytes has
    // no end of its own either, and ends with the key space).
    let range = KeyRange::prefix(Bytes::copy_from_slice(prefix))
        .or_else(|_| {
            KeyRange::new(
                Bytes::copy_from_slice(prefix),
                Bytes::from_static(crate::KEY_SPACE_END),
            )
        })
        .map_err(|e| error(ErrorKind::InvalidRequest(e.to_string())))?;
    let mut logs = Vec::new();
    for place in &state.logs {
        let log = FileLog::open_existing(
            &data_dir.join(&place.dir),
            place.id,
            FileLogConfig::default(),
        )?;
        logs.push(Arc::new(log));
    }
    let version = logs
        .iter()
        .map(|l| l.last_version())
        .min()
        .unwrap_or(Version::ZERO);
    let read_only = StorageConfig {
        pop_log: false,
        flush_interval: std::time::Duration::from_secs(u64::from(u32::MAX)),
        ..StorageConfig::default()
    };
    let mut entries = Vec::new();
    let mut servers = Vec::new();
    for (i, shard) in split_ranges(state.storage)?.into_iter().enumerate() {
        let Some(part) = shard.intersection(&range) else {
            continue;
        };
        if logs.is_empty() {
            break;
        }
        let server = Arc::new(
            RedbStorage::open(
                &data_dir.join("storage").join(format!("{i}.redb")),
                vec![shard],
                logs[i % logs.len()].clone(),
                read_only,
            )
            .await?,
        );
        servers.push(server.clone());
        let read = strata_core::StorageServer::get_range(
            server.as_ref(),
            part,
            version,
            usize::MAX,
            false,
        )
        .await?;
        entries.extend(
            read.entries
                .into_iter()
                .map(|(k, v)| (strata_core::printable(&k), strata_core::printable(&v))),
        );
    }
    for s in &servers {
        s.close().await;
    }
    for l in &logs {
        l.close();
    }
    Ok(Dump {
        state,
        version,
        entries,
    })
}
