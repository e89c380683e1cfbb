//! The commit proxy as a network service: the proxy calls of [`serve`](crate::serve), and
//! [`RemoteProxy`], a [`CommitProxy`] whose calls go to one.

use async_trait::async_trait;
use bytes::Bytes;
use strata_core::{CommitProxy, Epoch, ErrorKind, Result, Stage, TRANSACTION_BYTES_MAX, Version};
use tonic::{Request, Response, Status};

use crate::MESSAGE_BYTES_MAX;
use crate::client::{Link, Tagged};
use crate::cluster::ClusterId;
use crate::proto;
use crate::proto::proxy_client::ProxyClient;
use crate::server::{Served, refuse};

#[tonic::async_trait]
impl proto::proxy_server::Proxy for Served {
    async fn epoch(
        &self,
        request: Request<proto::ProxyEpochRequest>,
    ) -> std::result::Result<Response<proto::ProxyEpochReply>, Status> {
        let epoch = self.proxy(request.into_inner().proxy)?.epoch();
        Ok(Response::new(proto::ProxyEpochReply { epoch: epoch.0 }))
    }

    async fn commit(
        &self,
        request: Request<proto::CommitRequest>,
    ) -> std::result::Result<Response<proto::CommitReply>, Status> {
        let r = request.into_inner();
        let proxy = self.proxy(r.proxy)?;
        if r.transaction.len() > TRANSACTION_BYTES_MAX {
            return Err(refuse(
                Stage::CommitProxy,
                ErrorKind::InvalidRequest(format!(
                    "a transaction of {} bytes, over the limit of {TRANSACTION_BYTES_MAX}",
                    r.transaction.len()
                )),
            ));
        }
        let version = self
            .detached(Stage::CommitProxy, async move {
                proxy.commit(r.transaction).await
            })
            .await?;
        Ok(Response::new(proto::CommitReply { version: version.0 }))
    }
}

/// A [`CommitProxy`] served elsewhere by [`serve`](crate::serve), known by its index there.
///
/// Its [`epoch`](CommitProxy::epoch) is the one it had when the client connected; commits go to
/// the proxy of that index the server runs at the moment of the call, of a newer epoch after
/// a recovery (any proxy of the current epoch commits any transaction). A commit whose
/// connection breaks before the answer is `Unavailable`: its outcome is unknown, as the
/// [`CommitProxy::commit`] contract says of a failure after the push; the server lets the
/// commit run to its end.
#[derive(Clone, Debug)]
pub struct RemoteProxy {
    index: u32,
    epoch: Epoch,
    link: Link,
    client: ProxyClient<Tagged>,
}

impl RemoteProxy {
    /// Connects to proxy `index` served at `address` (`host:port`) for `cluster`.
    ///
    /// Errors: `Unavailable` when nothing answers at `address` or it serves no proxy now;
    /// `InvalidRequest` when the server is of another cluster or has no proxy `index`.
    pub async fn connect(address: &str, cluster: ClusterId, index: u32) -> Result<RemoteProxy> {
        let link = Link::connect(Stage::CommitProxy, address, cluster).await?;
        RemoteProxy::on(link, index).await
    }

    /// Proxy `index` of the server `link` reaches; asks its epoch.
    pub(crate) async fn on(link: Link, index: u32) -> Result<RemoteProxy> {
        let mut client = ProxyClient::new(link.channel.clone())
            .max_decoding_message_size(MESSAGE_BYTES_MAX)
            .max_encoding_message_size(MESSAGE_BYTES_MAX);
        let request = proto::ProxyEpochRequest { proxy: Some(index) };
        let reply = client.epoch(request).await;
        let epoch = Epoch(link.answer(Stage::CommitProxy, reply)?.epoch);
        Ok(RemoteProxy {
            index,
            epoch,
            link,
            client,
        })
    }
}

#[async_trait]
impl CommitProxy for RemoteProxy {
    fn epoch(&self) -> Epoch {
        self.epoch
    }

    async fn commit(&self, transaction: Bytes) -> Result<Version> {
        let request = proto::CommitRequest {
            proxy: Some(self.index),
            transaction,
        };
        let reply = self.client.clone().commit(request).await;
        Ok(Version(
            self.link.answer(Stage::CommitProxy, reply)?.version,
        ))
    }
}
