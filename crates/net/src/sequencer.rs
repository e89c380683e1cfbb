//! The sequencer as a network service: the sequencer calls of [`serve`](crate::serve), and
//! [`RemoteSequencer`], a [`Sequencer`] whose calls go to one.

use std::sync::Arc;

use async_trait::async_trait;
use strata_core::{Epoch, Result, Sequencer, Stage, Version, VersionPair};
use tonic::{Request, Response, Status};

use crate::batch::{Batcher, Limits};
use crate::client::{Link, Tagged};
use crate::proto;
use crate::proto::sequencer_client::SequencerClient;
use crate::server::{Served, answered};
use crate::tls::Access;

#[tonic::async_trait]
impl proto::sequencer_server::Sequencer for Served {
    async fn epoch(
        &self,
        _: Request<proto::EpochRequest>,
    ) -> std::result::Result<Response<proto::EpochReply>, Status> {
        let _call = self.admit(Stage::Sequencer)?;
        let epoch = self.sequencer()?.epoch();
        Ok(Response::new(proto::EpochReply { epoch: epoch.0 }))
    }

    async fn next_commit_version(
        &self,
        request: Request<proto::NextCommitVersionRequest>,
    ) -> std::result::Result<Response<proto::VersionPair>, Status> {
        let _call = self.admit(Stage::Sequencer)?;
        self.internal(Stage::Sequencer, "Sequencer.NextCommitVersion")?;
        let epoch = Epoch(request.into_inner().epoch);
        let sequencer = self.sequencer()?;
        let pair = self
            .detached(async move { sequencer.next_commit_version(epoch).await })
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
        let _call = self.admit(Stage::Sequencer)?;
        self.internal(Stage::Sequencer, "Sequencer.ReportCommitted")?;
        let r = request.into_inner();
        let sequencer = self.sequencer()?;
        self.detached(async move {
            sequencer
                .report_committed(Epoch(r.epoch), Version(r.version))
                .await
        })
        .await?;
        Ok(Response::new(proto::ReportCommittedReply {}))
    }

    async fn read_version(
        &self,
        request: Request<proto::ReadVersionRequest>,
    ) -> std::result::Result<Response<proto::ReadVersionReply>, Status> {
        let _call = self.admit(Stage::Sequencer)?;
        let sequencer = self.sequencer_of(request.into_inner().epoch)?;
        let version = answered(sequencer.read_version().await)?;
        Ok(Response::new(proto::ReadVersionReply {
            version: version.0,
        }))
    }
}

/// A [`Sequencer`] served elsewhere by [`serve`](crate::serve): each method is one call, but
/// concurrent read versions share one (below).
///
/// It is the sequencer of one epoch, the one the server ran when the client connected
/// ([`epoch`](Sequencer::epoch)). Once the server runs another epoch, that sequencer is
/// stopped as far as the client knows: `read_version` is `Unavailable` (the old epoch's
/// versions above the recovery version were discarded, and a reader must not take the new
/// epoch's versions for the old one's), and a `next_commit_version` or `report_committed`
/// of the old epoch is `Fenced` by the new sequencer, as in process. Between two epochs every
/// call is `Unavailable`. To follow the cluster into its next epoch, connect again.
///
/// Concurrent [`read_version`](Sequencer::read_version) calls share one call across the
/// network, as FoundationDB's clients share their read version requests: a caller waits for
/// the next call to leave and takes its answer, so the version is still at least that of
/// every commit acknowledged before the caller asked.
#[derive(Clone)]
pub struct RemoteSequencer {
    epoch: Epoch,
    link: Link,
    client: SequencerClient<Tagged>,
    read_versions: Arc<Batcher<(), Version>>,
}

impl std::fmt::Debug for RemoteSequencer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RemoteSequencer")
            .field("epoch", &self.epoch)
            .field("peer", &self.link.peer)
            .finish_non_exhaustive()
    }
}

impl RemoteSequencer {
    /// Connects to the sequencer served at `address` (`host:port`) with `access` (a
    /// [`ClusterId`](crate::ClusterId), or an [`Access`] with TLS credentials).
    ///
    /// Errors: `Unavailable` when nothing answers at `address` or it serves no sequencer now;
    /// `InvalidRequest` when the server is of another cluster, or a TLS handshake failed.
    pub async fn connect(address: &str, access: impl Into<Access>) -> Result<RemoteSequencer> {
        let link = Link::connect(Stage::Sequencer, address, access.into()).await?;
        let mut client = SequencerClient::new(link.channel.clone());
        let reply = client.epoch(proto::EpochRequest {}).await;
        let epoch = Epoch(link.answer(Stage::Sequencer, reply)?.epoch);
        Ok(RemoteSequencer::new(link, epoch))
    }

    pub(crate) fn new(link: Link, epoch: Epoch) -> RemoteSequencer {
        let client = SequencerClient::new(link.channel.clone());
        let (sender, asker) = (link.clone(), client.clone());
        let read_versions = Batcher::new(
            Stage::Sequencer,
            Box::new(move |callers: Vec<()>| {
                let (link, mut client) = (sender.clone(), asker.clone());
                Box::pin(async move {
                    let request = proto::ReadVersionRequest {
                        epoch: Some(epoch.0),
                    };
                    let reply = client.read_version(request).await;
                    let version = link
                        .answer(Stage::Sequencer, reply)
                        .map(|r| Version(r.version));
                    vec![version; callers.len()]
                })
            }),
            |()| 0,
            Limits {
                flights_max: 1,
                count_max: usize::MAX,
                bytes_max: usize::MAX,
            },
        );
        RemoteSequencer {
            epoch,
            link,
            client,
            read_versions,
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
        self.read_versions.call(()).await
    }
}
