//! Log replay: copying the committed history the storage servers still need from a log of
//! the previous generation into the new logs.
//!
//! The rules it keeps (see the README's recovery section):
//!
//! - **Replay reads from a log that holds the whole range** `(base, recovery version]` it
//!   copies, where `base` is the oldest durable version of all storage servers. Every log is
//!   popped only below that version (see [`crate::cluster`]), so normally every log qualifies;
//!   [`choose_source`] checks, and when none does fails naming the range and what each log
//!   holds.
//! - **A new log's history starts with an anchor**: the predecessor of the first entry it will
//!   receive ([`Source::anchor`]). A storage server's durable version is usually not a commit
//!   version, so a new log started *at* the base would refuse the first replayed entry, whose
//!   predecessor is older.
//! - **Progress for any queue size**: pushes go out in waves that fit half of a log's queue,
//!   so a wave never waits on room that its own later entries hold.

use std::sync::Arc;

use crate::HeldLog;
use strata_core::{Epoch, Error, ErrorKind, LogEntry, LogServer, Result, Stage, Version};

/// Entries pulled from the source at a time.
const PAGE_ENTRIES: usize = 1_000;

fn corruption(why: String) -> Error {
    Error::new(Stage::Director, ErrorKind::Corruption(why))
}

/// Where replay reads from, and where the new logs start.
#[derive(Clone, Debug)]
pub(crate) struct Source {
    /// The log to copy from; `None` when there is nothing to copy.
    pub(crate) log: Option<(String, Arc<dyn HeldLog>)>,
    /// The version the new logs start from: the predecessor of the first entry they receive,
    /// or the recovery version when nothing is copied.
    pub(crate) anchor: Version,
}

/// Picks a log of the previous generation that holds every entry in `(base, through]`, and the
/// anchor the new logs start from. `logs` pairs each log with its directory, for errors.
pub(crate) async fn choose_source(
    logs: &[(String, Arc<dyn HeldLog>)],
    base: Version,
    through: Version,
) -> Result<Source> {
    if base >= through {
        return Ok(Source {
            log: None,
            anchor: through,
        });
    }
    let mut held = Vec::new();
    for (dir, log) in logs {
        match log.pull(base, 1).await {
            Ok(entries) => match entries.first() {
                Some(first) if first.previous_version <= base && log.last_version() >= through => {
                    return Ok(Source {
                        log: Some((dir.clone(), log.clone())),
                        anchor: first.previous_version,
                    });
                }
                Some(first) => held.push(format!(
                    "{dir} holds ({}, {}]",
                    first.previous_version,
                    log.last_version()
                )),
                None => held.push(format!("{dir} ends at {}", log.last_version())),
            },
            Err(e) if matches!(e.kind, ErrorKind::TooOld { .. }) => {
                held.push(format!("{dir}: {e}"));
            }
            Err(e) => return Err(e),
        }
    }
    Err(corruption(format!(
        "no log of the previous generation holds versions ({base}, {through}] that the storage \
         servers need: {}",
        if held.is_empty() {
            "there are no logs".to_owned()
        } else {
            held.join("; ")
        }
    )))
}

/// Bytes a replayed entry takes in a log's queue, rounded up generously (the log counts in
/// 1 KiB units, with a record header).
fn queued_bytes(entry: &LogEntry) -> usize {
    entry.payload.len() + 2 * 1024
}

/// Copies the entries of `source` in `(base, through]` into every log of `targets`. The pushes
/// of a wave are issued together, so each log's group commit syncs them in a few groups; a
/// wave holds at most `wave_bytes` (at least one entry), which must fit the logs' queues.
pub(crate) async fn replay(
    source: &dyn LogServer,
    targets: &[Arc<dyn LogServer>],
    epoch: Epoch,
    base: Version,
    through: Version,
    wave_bytes: usize,
) -> Result<()> {
    let mut after = base;
    let mut first = true;
    while after < through {
        let page = source.pull(after, PAGE_ENTRIES).await?;
        if page.is_empty() {
            return Err(corruption(format!(
                "the previous log ends before {through}, after {after}"
            )));
        }
        let mut wave = tokio::task::JoinSet::new();
        let mut in_wave = 0;
        for entry in page.into_iter().take_while(|e| e.version <= through) {
            // The source's chain, checked again as it is copied: the first entry links to the
            // anchor at or below the base, every later one to the entry before it.
            let linked = if first {
                entry.previous_version <= base
            } else {
                entry.previous_version == after
            };
            if !linked {
                return Err(corruption(format!(
                    "the previous log's entry {} names {} as its predecessor, after {after}",
                    entry.version, entry.previous_version
                )));
            }
            first = false;
            let bytes = queued_bytes(&entry);
            if in_wave > 0 && in_wave + bytes > wave_bytes {
                drain(&mut wave).await?;
                in_wave = 0;
            }
            in_wave += bytes;
            after = entry.version;
            for log in targets {
                let (log, entry) = (log.clone(), entry.clone());
                wave.spawn(async move {
                    log.push(epoch, entry.previous_version, entry.version, entry.payload)
                        .await
                });
            }
        }
        drain(&mut wave).await?;
    }
    Ok(())
}

async fn drain(wave: &mut tokio::task::JoinSet<Result<()>>) -> Result<()> {
    while let Some(pushed) = wave.join_next().await {
        pushed.map_err(|e| {
            Error::new(
                Stage::Director,
                ErrorKind::Unavailable(format!("replay task: {e}")),
            )
        })??;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use std::path::Path;

    use bytes::Bytes;
    use strata_core::{LogId, LogServer};
    use strata_tlog::{FileLog, FileLogConfig};

    use super::*;

    /// A log holding versions 1 to 100, each the successor of the one before, in segments of
    /// a few entries; popped below `popped` (whole segments only, so it keeps a little more).
    async fn log(dir: &Path, popped: Version) -> Arc<dyn HeldLog> {
        let config = FileLogConfig {
            segment_bytes: 4 << 10,
            ..FileLogConfig::default()
        };
        let log = FileLog::open(dir, LogId(0), Version(0), config).unwrap();
        for v in 1..=100 {
            let payload = Bytes::from(vec![7; 500]);
            log.push(Epoch(1), Version(v - 1), Version(v), payload)
                .await
                .unwrap();
        }
        log.pop(popped).await.unwrap();
        Arc::new(log)
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_source_is_a_log_that_holds_the_whole_range_or_there_is_none() {
        let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let popped = log(a.path(), Version(60)).await;
        let first = popped.pull(Version::ZERO, 1).await;
        let first = first.map(|e| e[0].previous_version).unwrap_or(Version(60));
        assert!(
            first > Version(10),
            "the popped log no longer holds v11: {first}"
        );
        let logs = vec![
            ("logs/popped".to_owned(), popped),
            ("logs/whole".to_owned(), log(b.path(), Version::ZERO).await),
        ];

        // The first log listed lacks the start of the range: the second is the source, and the
        // new logs start from the predecessor of the first entry copied.
        let source = choose_source(&logs, Version(10), Version(100))
            .await
            .unwrap();
        assert_eq!(source.log.unwrap().0, "logs/whole");
        assert_eq!(source.anchor, Version(10));

        // A range the popped log holds whole: the first log listed serves.
        let source = choose_source(&logs, Version(95), Version(100))
            .await
            .unwrap();
        assert_eq!(source.log.unwrap().0, "logs/popped");

        // A range past the end of every log, or a start no log holds: refused, naming the
        // range and what each log holds.
        let e = choose_source(&logs, Version(10), Version(101))
            .await
            .unwrap_err();
        assert!(matches!(e.kind, ErrorKind::Corruption(_)), "{e}");
        let e = choose_source(&logs[..1], Version(10), Version(100))
            .await
            .unwrap_err();
        assert!(matches!(e.kind, ErrorKind::Corruption(_)), "{e}");
        let why = e.to_string();
        assert!(why.contains("(v10, v100]"), "{why}");
        assert!(why.contains("logs/popped"), "{why}");
    }
}
