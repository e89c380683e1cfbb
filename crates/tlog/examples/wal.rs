//! The log crate alone, as a write-ahead log: open a log directory, append entries along the
//! version chain (each acknowledged once on disk), close it, open it again and read back what
//! survived. No other Strata crate is involved but the shared vocabulary.
//!
//! Run: `cargo run -p strata-tlog --example wal -- ./wal-data`; each run appends three more
//! entries after the ones already there. `cargo test --workspace` runs it too.

use std::path::Path;

use strata_core::{Epoch, LogId, LogServer, Result, Version};
use strata_tlog::{FileLog, FileLogConfig};

/// Appends three entries to the log in `dir` (created at version 0 when missing), then reopens
/// it and returns every entry it holds, as `(version, payload)`.
async fn append_three(dir: &Path) -> Result<Vec<(Version, String)>> {
    let id = LogId(1);
    let log = if dir.exists() {
        FileLog::open_existing(dir, id, FileLogConfig::default())?
    } else {
        FileLog::open(dir, id, Version(0), FileLogConfig::default())?
    };
    // Each push names its predecessor; `Ok` means the entry is synced.
    let mut previous = log.last_version();
    for n in 1..=3 {
        let version = previous.saturating_add(10);
        let payload = format!("entry at {version}, #{n} of this run");
        log.push(Epoch(1), previous, version, payload.into())
            .await?;
        previous = version;
    }
    log.close();

    let reopened = FileLog::open_existing(dir, id, FileLogConfig::default())?;
    let entries = reopened.pull(Version(0), 1_000).await?;
    reopened.close();
    Ok(entries
        .into_iter()
        .map(|e| (e.version, String::from_utf8_lossy(&e.payload).into_owned()))
        .collect())
}

#[tokio::main]
async fn main() -> Result<()> {
    let dir = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "./wal-data".into());
    for (version, payload) in append_three(dir.as_ref()).await? {
        println!("{version}: {payload}");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[tokio::test]
    async fn entries_survive_a_reopen_and_chain_on() {
        let dir = tempfile::tempdir().unwrap();
        let wal = dir.path().join("wal");
        let first = append_three(&wal).await.unwrap();
        assert_eq!(
            first.iter().map(|(v, _)| *v).collect::<Vec<_>>(),
            [Version(10), Version(20), Version(30)]
        );
        let second = append_three(&wal).await.unwrap();
        assert_eq!(second.len(), 6);
        assert_eq!(second[..3], first[..]);
        assert_eq!(second[5].0, Version(60));
    }
}
