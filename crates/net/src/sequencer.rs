//! The sequencer as a network service: the sequencer calls of [`serve`](crate::serve), and
//! [`RemoteSequencer`], a [`Sequencer`] whose calls go to one.

use async_trait::async_trait;
use strata_core::{Epoch, Result, Sequencer, Stage, Version, VersionPair};
use tonic::{Request, Response, Status};

use crate::client::{Link, Tagged};
use crate::cluster::ClusterId;
use crate::proto;
use crate::proto::sequencer_client::SequencerClient;
use crate::server::{Served, answered};

#[tonic::async_trait]
impl proto::sequencer_server::Sequencer for Served {
    async fn epoch(
        &self,
        _: Request<proto::EpochRequest>,
    ) -> std::result::Result<Response<proto::EpochReply>, Status> {
        let epoch = self.sequencer()?.epoch();
        Ok(Response::new(proto::EpochReply { epoch: epoch.0 }))
    }

    async fn next_commit_version(
        &self,
        request: Request<proto::NextCommitVersionRequest>,
    ) -> std::result::Result<Response<proto::VersionPair>, Status> {
        let epoch = Epoch(request.into_inner().epoch);
        let sequencer = self.sequencer()?;
        let pair = self
            .detached(Stage::Sequencer, async move {
                sequencer.next_commit_version(epoch).await
            })
            .await?;
        Ok(Response::new(proto::VersionPair {
            previous: pair.previous.0,
            version: pair.version.0,
        }))
    }

    async fn report_committed(
        &self,
        request: Request<proto::ReportCommittedRequest>,
    ) -> std::result::Result<Response<proto::ReportCommittedReply>, Status> {
        let r = request.into_inner();
        let sequencer = self.sequencer()?;
        self.detached(Stage::Sequencer, async move {
            sequencer
                .report_committed(Epoch(r.epoch), Version(r.version))
                .await
        })
        .await?;
        Ok(Response::new(proto::ReportCommittedReply {}))
    }

    async fn read_version(
        &self,
        _: Request<proto::ReadVersionRequest>,
    ) -> std::result::Result<Response<proto::ReadVersionReply>, Status> {
        let version = answered(self.sequencer()?.read_version().await)?;
        Ok(Response::new(proto::ReadVersionReply {
            version: version.0,
        }))
    }
}

/// A [`Sequencer`] served elsewhere by [`serve`](crate::serve): each method is one call.
///
/// Its [`epoch`](Sequencer::epoch) is the one the server's sequencer had when the client
/// connected. Calls go to the sequencer the server runs at the moment of the call: after the
/// server moved to a newer epoch, a `next_commit_version` of the old epoch is `Fenced` by the
/// new sequencer, as it would be in process, and `read_version` answers for the new epoch
/// (still at least every acknowledged commit's version). Between two epochs calls are
/// `Unavailable`.
#[derive(Clone, Debug)]
pub struct RemoteSequencer {
    epoch: Epoch,
    link: Link,
    client: SequencerClient<Tagged>,
}

impl RemoteSequencer {
    /// Connects to the sequencer served at `address` (`host:port`) for `cluster`.
    ///
    /// Errors: `Unavailable` when nothing answers at `address` or it serves no sequencer now;
    /// `InvalidRequest` when the server is of another cluster.
    pub async fn connect(address: &str, cluster: ClusterId) -> Result<RemoteSequencer> {
        let link = Link::connect(Stage::Sequencer, address, cluster).await?;
        let mut client = SequencerClient::new(link.channel.clone());
        let reply = client.epoch(proto::EpochRequest {}).await;
        let epoch = Epoch(link.answer(Stage::Sequencer, reply)?.epoch);
        Ok(RemoteSequencer::new(link, epoch))
    }

    pub(crate) fn new(link: Link, epoch: Epoch) -> RemoteSequencer {
        let client = SequencerClient::new(link.channel.clone());
        RemoteSequencer {
            epoch,
            link,
            client,
        }
    }
}

#[async_trait]
impl Sequencer for RemoteSequencer {
    fn epoch(&self) -> Epoch {
        self.epoch
    }

    async fn next_commit_version(&self, epoch: Epoch) -> Result<VersionPair> {
        let request = proto::NextCommitVersionRequest { epoch: epoch.0 };
        let reply = self.client.clone().next_commit_version(request).await;
        let pair = self.link.answer(Stage::Sequencer, reply)?;
        Ok(VersionPair {
            previous: Version(pair.previous),
            version: Version(pair.version),
        })
    }

    async fn report_committed(&self, epoch: Epoch, version: Version) -> Result<()> {
        let request = proto::ReportCommittedRequest {
            epoch: epoch.0,
            version: version.0,
        };
        let reply = self.client.clone().report_committed(request).await;
        self.link.answer(Stage::Sequencer, reply).map(|_| ())
    }

    async fn read_version(&self) -> Result<Version> {
        let reply = self
            .client
            .clone()
            .read_version(proto::ReadVersionRequest {})
            .await;
        Ok(Version(self.link.answer(Stage::Sequencer, reply)?.version))
    }
}
