//! A storage server of the running epoch as the director holds it, wherever it lives.
//!
//! Recovery rolls each storage server back and waits for it to re-apply its history; the
//! running epoch tells it what is committed (so it can make versions durable), reads its
//! durable version (to pop the logs), probes it, and closes it when the epoch stops.
//! [`HeldStorage`] is what all of that needs beyond the stage trait, as
//! [`HeldLog`](crate::HeldLog) is for the logs, so those phases hold a storage server alike
//! whether it is a file of this process ([`strata_storage::RedbStorage`]) or held by a process
//! of its own.

use async_trait::async_trait;
use strata_core::{Result, StorageServer, Version};
use strata_storage::RedbStorage;

/// A storage server as recovery and a running epoch hold it: the stage, and what the director
/// asks of it beyond the stage's calls.
#[async_trait]
pub trait HeldStorage: StorageServer + std::fmt::Debug {
    /// Tells the server that every version up to `committed` is held by every log of the
    /// generation, so it may make versions up to it durable. Never lowers what it knows.
    ///
    /// Errors: for a server elsewhere, whatever failed the call (the next report repeats it).
    async fn advance_committed(&self, committed: Version) -> Result<()>;

    /// The newest version the server was told is committed: the durable version at its open,
    /// then raised by [`HeldStorage::advance_committed`].
    fn committed_version(&self) -> Version;

    /// Waits until the server has applied `version`, however long that takes (the caller
    /// bounds it). Fails when the server stopped applying.
    async fn wait_applied(&self, version: Version) -> Result<()>;

    /// Lets the server go when its epoch stops: a server in this process closes its database
    /// (waiting for a flush in progress), so the next epoch can open the file again; a
    /// storage worker closes it at the next epoch's open.
    async fn close(&self);

    /// The address of the storage worker that holds the server; `None` for a file of this
    /// process's data directory.
    fn worker(&self) -> Option<&str> {
        None
    }
}

#[async_trait]
impl HeldStorage for RedbStorage {
    async fn advance_committed(&self, committed: Version) -> Result<()> {
        RedbStorage::advance_committed(self, committed);
        Ok(())
    }

    fn committed_version(&self) -> Version {
        RedbStorage::committed_version(self)
    }

    async fn wait_applied(&self, version: Version) -> Result<()> {
        RedbStorage::wait_applied(self, version).await
    }

    async fn close(&self) {
        RedbStorage::close(self).await;
    }
}
