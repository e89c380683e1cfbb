//! A log of a generation as this process holds it, wherever the log lives.
//!
//! Recovery opens the previous generation's logs, locks them, reads what they hold and copies
//! from them; a running epoch pushes to its own generation's logs, pops them and asks after
//! their health. [`HeldLog`] is what all of that needs of a log beyond the stage trait, so
//! that the phases do not care whether a log is a directory of this process
//! ([`strata_tlog::FileLog`]) or served by a process of its own.

use std::path::Path;
use std::sync::Arc;

use async_trait::async_trait;
use strata_core::{Epoch, Error, ErrorKind, LogServer, Result, Stage, Version};
use strata_net::StoredStorage;
use strata_tlog::FileLog;

use crate::coordinator::LogPlace;

/// A log as recovery and a running epoch hold it: the stage, and what the director asks of
/// it beyond the stage's calls.
#[async_trait]
pub trait HeldLog: LogServer + std::fmt::Debug {
    /// The newest version the log holds: what its next push must name as the previous
    /// version. For a log in this process, as of now; for one elsewhere, as of its last open
    /// or lock, which is what recovery reads it after.
    fn last_version(&self) -> Version;

    /// Monitoring's probe: `Ok` while the log can take the pushes of `epoch`; `Poisoned` when
    /// a failed write stopped it, `Fenced` when a newer epoch locked it, or (for a log
    /// elsewhere) whatever failed the call.
    async fn probe(&self, epoch: Epoch) -> Result<()>;

    /// Makes the log answer `epoch`'s calls, before recovery locks it: a log on a worker has
    /// the worker serve it under the epoch's token (refusing older epochs' orders from then
    /// on), and open it again if the worker restarted since phase 1 opened it (`Corruption`
    /// when it holds less than the synced records phase 1 read); a log in this process needs
    /// nothing.
    async fn take(&self, _epoch: Epoch) -> Result<()> {
        Ok(())
    }

    /// Lets the log take commits of `epoch`, its recovery's, once the coordinated state names
    /// it: a log on a worker held back every push above the recovery version until now (see
    /// [`crate::workers::LogWorker`]). A log in this process takes them from the start (the
    /// proxies on workers reach it through a gate of its own, opened by the recovery).
    async fn admit(&self, _epoch: Epoch) -> Result<()> {
        Ok(())
    }

    /// Has the process that holds the log remove the logs the coordinated state no longer
    /// names: a log worker does, by the state it reads itself (a failure is only logged: a
    /// later recovery sweeps again). Recovery removes this process's own directories itself.
    async fn sweep(&self) {}

    /// Lets the log go, so the next epoch can open it again: a log in this process closes its
    /// files (its handles then refuse every call).
    fn close(&self);
}

#[async_trait]
impl HeldLog for FileLog {
    fn last_version(&self) -> Version {
        FileLog::last_version(self)
    }

    async fn probe(&self, epoch: Epoch) -> Result<()> {
        if let Some(cause) = self.poisoned_by() {
            return Err(Error::new(Stage::Log, ErrorKind::Poisoned(cause)));
        }
        let locked = self.locked_epoch()?;
        if locked > epoch {
            return Err(Error::new(
                Stage::Log,
                ErrorKind::Fenced {
                    request: epoch,
                    current: locked,
                },
            ));
        }
        Ok(())
    }

    fn close(&self) {
        FileLog::close(self);
    }
}

/// How the logs a coordinated state names are opened: for recovery, to be locked and written;
/// for the tools that only read a directory, to be read. Recovery's first phase and those tools
/// read what every log holds through one of these ([`crate::check`]).
#[async_trait]
pub(crate) trait OpenLogs: Send + Sync {
    /// Opens the log the state names as `place`, whose directory here would be `dir`: it must
    /// exist and hold `committed`, the version known committed (a record below it that looks
    /// torn is damage, never a torn write to cut off).
    async fn open(
        &self,
        dir: &Path,
        place: &LogPlace,
        committed: Version,
    ) -> Result<Arc<dyn HeldLog>>;

    /// Whether this opener reaches the log `place`: one that reads the data directory alone
    /// does not reach a log on a log worker, which is then left unread (not a finding).
    fn reaches(&self, _place: &LogPlace) -> bool {
        true
    }

    /// What storage server `index`, held by the storage worker at `at`, holds: its durable
    /// version and shards. `None` when this opener does not reach workers (one that reads the
    /// data directory alone): the server is then left unread (not a finding).
    async fn stored_on_worker(&self, _index: u32, _at: &str) -> Option<Result<StoredStorage>> {
        None
    }
}
