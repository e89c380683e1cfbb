//! The storage server as a network service: the storage calls of [`serve`](crate::serve), and
//! [`RemoteStorage`], a [`StorageServer`] whose calls go to one.

use async_trait::async_trait;
use strata_core::{Key, KeyRange, RangeRead, Result, Stage, StorageServer, Value, Version};
use tonic::{Request, Response, Status};

use crate::client::{Link, Tagged, ranges_from_wire};
use crate::convert::{range_from_wire, range_to_wire};
use crate::proto;
use crate::proto::storage_client::StorageClient;
use crate::server::{Served, answered};
use crate::tls::Access;
use crate::{MESSAGE_BYTES_MAX, RANGE_ENTRIES_MAX, RANGE_REPLY_BYTES_MAX, fitting};

/// Keeps the first pairs whose encodings fit in `budget` bytes, and always the first (a pair
/// is at most a key and a value, far below a message); says whether any was dropped.
fn fit(mut read: RangeRead, budget: usize) -> RangeRead {
    let sizes = read.entries.iter().map(|(k, v)| k.len() + v.len() + 16);
    let keep = fitting(sizes, budget);
    if keep < read.entries.len() {
        read.entries.truncate(keep);
        read.more = true;
    }
    read
}

fn version(version: Version) -> proto::VersionReply {
    proto::VersionReply { version: version.0 }
}

#[tonic::async_trait]
impl proto::storage_server::Storage for Served {
    async fn shards(
        &self,
        request: Request<proto::ShardsRequest>,
    ) -> std::result::Result<Response<proto::ShardsReply>, Status> {
        let _call = self.admit(Stage::Storage)?;
        let storage = self.storage(request.into_inner().storage)?;
        let shards = storage.shards().iter().map(range_to_wire).collect();
        Ok(Response::new(proto::ShardsReply { shards }))
    }

    async fn get(
        &self,
        request: Request<proto::GetRequest>,
    ) -> std::result::Result<Response<proto::GetReply>, Status> {
        let _call = self.admit(Stage::Storage)?;
        let r = request.into_inner();
        let storage = self.storage(r.storage)?;
        let value = answered(storage.get(r.key, Version(r.version)).await)?;
        Ok(Response::new(proto::GetReply { value }))
    }

    async fn get_range(
        &self,
        request: Request<proto::GetRangeRequest>,
    ) -> std::result::Result<Response<proto::GetRangeReply>, Status> {
        let _call = self.admit(Stage::Storage)?;
        let r = request.into_inner();
        let storage = self.storage(r.storage)?;
        let range = range_from_wire(Stage::Storage, r.range.unwrap_or_default())?;
        let limit = usize::try_from(r.limit)
            .unwrap_or(usize::MAX)
            .min(RANGE_ENTRIES_MAX);
        let read = storage
            .get_range(range, Version(r.version), limit, r.reverse)
            .await;
        let read = fit(answered(read)?, RANGE_REPLY_BYTES_MAX);
        Ok(Response::new(proto::GetRangeReply {
            entries: read
                .entries
                .into_iter()
                .map(|(key, value)| proto::Pair { key, value })
                .collect(),
            more: read.more,
        }))
    }

    async fn applied_version(
        &self,
        request: Request<proto::AppliedVersionRequest>,
    ) -> std::result::Result<Response<proto::VersionReply>, Status> {
        let _call = self.admit(Stage::Storage)?;
        let storage = self.storage(request.into_inner().storage)?;
        let applied = answered(storage.applied_version().await)?;
        Ok(Response::new(version(applied)))
    }

    async fn durable_version(
        &self,
        request: Request<proto::DurableVersionRequest>,
    ) -> std::result::Result<Response<proto::VersionReply>, Status> {
        let _call = self.admit(Stage::Storage)?;
        let storage = self.storage(request.into_inner().storage)?;
        let durable = answered(storage.durable_version().await)?;
        Ok(Response::new(version(durable)))
    }

    async fn roll_back(
        &self,
        request: Request<proto::RollBackRequest>,
    ) -> std::result::Result<Response<proto::RollBackReply>, Status> {
        let _call = self.admit(Stage::Storage)?;
        self.internal(Stage::Storage, "Storage.RollBack")?;
        let r = request.into_inner();
        let storage = self.storage(r.storage)?;
        self.detached(async move { storage.roll_back(Version(r.version)).await })
            .await?;
        Ok(Response::new(proto::RollBackReply {}))
    }
}

/// A [`StorageServer`] served elsewhere by [`serve`](crate::serve), known by its index there:
/// each method is one call. Its [`shards`](StorageServer::shards) are those it reported when
/// the client connected (a storage server's shards are fixed for its data directory).
///
/// A range read answers at most [`RANGE_ENTRIES_MAX`] pairs, and fewer when they would not
/// fit in [`RANGE_REPLY_BYTES_MAX`]; `more` then says the range goes on, as it does for a
/// read cut short by its limit, and the caller reads on from the last key.
#[derive(Clone, Debug)]
pub struct RemoteStorage {
    index: u32,
    shards: Vec<KeyRange>,
    link: Link,
    client: StorageClient<Tagged>,
}

impl RemoteStorage {
    /// Connects to storage server `index` served at `address` (`host:port`) with `access` (a
    /// [`ClusterId`](crate::ClusterId), or an [`Access`] with TLS credentials).
    ///
    /// Errors: `Unavailable` when nothing answers at `address` or it serves no storage server
    /// now; `InvalidRequest` when the server is of another cluster, a TLS handshake failed,
    /// or it has no storage server `index`.
    pub async fn connect(
        address: &str,
        access: impl Into<Access>,
        index: u32,
    ) -> Result<RemoteStorage> {
        let link = Link::connect(Stage::Storage, address, access.into()).await?;
        let mut client = StorageClient::new(link.channel.clone());
        let reply = client
            .shards(proto::ShardsRequest {
                storage: Some(index),
            })
            .await;
        let shards = link.answer(Stage::Storage, reply)?.shards;
        let shards = ranges_from_wire(&link, Stage::Storage, shards)?;
        Ok(RemoteStorage::new(link, index, shards))
    }

    pub(crate) fn new(link: Link, index: u32, shards: Vec<KeyRange>) -> RemoteStorage {
        let client = StorageClient::new(link.channel.clone())
            .max_decoding_message_size(MESSAGE_BYTES_MAX)
            .max_encoding_message_size(MESSAGE_BYTES_MAX);
        RemoteStorage {
            index,
            shards,
            link,
            client,
        }
    }
}

#[async_trait]
impl StorageServer for RemoteStorage {
    fn shards(&self) -> Vec<KeyRange> {
        self.shards.clone()
    }

    async fn get(&self, key: Key, version: Version) -> Result<Option<Value>> {
        let request = proto::GetRequest {
            storage: Some(self.index),
            key,
            version: version.0,
        };
        let reply = self.client.clone().get(request).await;
        Ok(self.link.answer(Stage::Storage, reply)?.value)
    }

    async fn get_range(
        &self,
        range: KeyRange,
        version: Version,
        limit: usize,
        reverse: bool,
    ) -> Result<RangeRead> {
        let request = proto::GetRangeRequest {
            storage: Some(self.index),
            range: Some(range_to_wire(&range)),
            version: version.0,
            limit: u64::try_from(limit).unwrap_or(u64::MAX),
            reverse,
        };
        let reply = self.client.clone().get_range(request).await;
        let reply = self.link.answer(Stage::Storage, reply)?;
        Ok(RangeRead {
            entries: reply
                .entries
                .into_iter()
                .map(|p| (p.key, p.value))
                .collect(),
            more: reply.more,
        })
    }

    async fn applied_version(&self) -> Result<Version> {
        let request = proto::AppliedVersionRequest {
            storage: Some(self.index),
        };
        let reply = self.client.clone().applied_version(request).await;
        Ok(Version(self.link.answer(Stage::Storage, reply)?.version))
    }

    async fn durable_version(&self) -> Result<Version> {
        let request = proto::DurableVersionRequest {
            storage: Some(self.index),
        };
        let reply = self.client.clone().durable_version(request).await;
        Ok(Version(self.link.answer(Stage::Storage, reply)?.version))
    }

    async fn roll_back(&self, version: Version) -> Result<()> {
        let request = proto::RollBackRequest {
            storage: Some(self.index),
            version: version.0,
        };
        let reply = self.client.clone().roll_back(request).await;
        self.link.answer(Stage::Storage, reply).map(|_| ())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    #[test]
    fn a_range_reply_keeps_what_fits_says_more_and_never_less_than_one_pair() {
        let pair = |k: &str| (Bytes::from(k.to_owned()), Bytes::from(vec![0u8; 100]));
        let read = RangeRead {
            entries: vec![pair("a"), pair("b"), pair("c")],
            more: false,
        };
        let all = fit(read.clone(), 10_000);
        assert_eq!((all.entries.len(), all.more), (3, false));
        let two = fit(read.clone(), 300);
        assert_eq!((two.entries.len(), two.more), (2, true));
        let one = fit(read.clone(), 10);
        assert_eq!((one.entries.len(), one.more), (1, true));
        let empty = fit(RangeRead::default(), 10);
        assert_eq!((empty.entries.len(), empty.more), (0, false));
    }
}
