//! The resolver as a network service: the resolver calls of [`serve`](crate::serve), and
//! [`RemoteResolver`], a [`Resolver`] whose calls go to one.

use async_trait::async_trait;
use strata_core::{
    Epoch, ResolveBatch, Resolver, Result, Stage, TransactionConflicts, Verdict, Version,
};
use tonic::{Request, Response, Status};

use crate::MESSAGE_BYTES_MAX;
use crate::client::{Link, Tagged};
use crate::convert::{range_from_wire, range_to_wire};
use crate::proto;
use crate::proto::resolver_client::ResolverClient;
use crate::proto::verdict::Verdict as WireVerdict;
use crate::server::Served;
use crate::tls::Access;

fn conflicts_from_wire(t: proto::Conflicts) -> std::result::Result<TransactionConflicts, Status> {
    let ranges = |ranges: Vec<proto::KeyRange>| {
        ranges
            .into_iter()
            .map(|r| range_from_wire(Stage::Resolver, r))
            .collect::<std::result::Result<Vec<_>, Status>>()
    };
    Ok(TransactionConflicts {
        read_version: t.read_version.map(Version),
        read_conflicts: ranges(t.read_conflicts)?,
        write_conflicts: ranges(t.write_conflicts)?,
    })
}

fn verdict_to_wire(verdict: Verdict) -> proto::Verdict {
    let verdict = match verdict {
        Verdict::Committed => WireVerdict::Committed(true),
        Verdict::Conflict => WireVerdict::Conflict(true),
        Verdict::TooOld { oldest } => WireVerdict::TooOld(oldest.0),
    };
    proto::Verdict {
        verdict: Some(verdict),
    }
}

#[tonic::async_trait]
impl proto::resolver_server::Resolver for Served {
    async fn resolve(
        &self,
        request: Request<proto::ResolveRequest>,
    ) -> std::result::Result<Response<proto::ResolveReply>, Status> {
        let _call = self.admit(Stage::Resolver)?;
        self.internal(Stage::Resolver, "Resolver.Resolve")?;
        let r = request.into_inner();
        let resolver = self.resolver(r.resolver)?;
        let transactions = r
            .transactions
            .into_iter()
            .map(conflicts_from_wire)
            .collect::<std::result::Result<Vec<_>, Status>>()?;
        let batch = ResolveBatch {
            epoch: Epoch(r.epoch),
            previous_version: Version(r.previous_version),
            version: Version(r.version),
            transactions,
        };
        let verdicts = self
            .detached(async move { resolver.resolve(batch).await })
            .await?;
        Ok(Response::new(proto::ResolveReply {
            verdicts: verdicts.into_iter().map(verdict_to_wire).collect(),
        }))
    }
}

/// A [`Resolver`] served elsewhere by [`serve`](crate::serve), known by its index there: each
/// batch is one call. A batch whose connection breaks before the answer is `Unavailable`; the
/// server resolves it anyway (the resolver's chain of versions must not skip it), and the
/// commit proxy fails the batch, as for any failure of a stage.
#[derive(Clone, Debug)]
pub struct RemoteResolver {
    index: u32,
    link: Link,
    client: ResolverClient<Tagged>,
}

impl RemoteResolver {
    /// Connects to resolver `index` served at `address` (`host:port`) with `access` (a
    /// [`ClusterId`](crate::ClusterId), or an [`Access`] with TLS credentials).
    ///
    /// Errors: `Unavailable` when nothing answers at `address`; `InvalidRequest` when the
    /// server is of another cluster, a TLS handshake failed, or it serves no resolver `index`.
    pub async fn connect(
        address: &str,
        access: impl Into<Access>,
        index: u32,
    ) -> Result<RemoteResolver> {
        let link = Link::connect(Stage::Resolver, address, access.into()).await?;
        let served = link.describe(Stage::Resolver).await?.resolvers;
        if index >= served {
            return Err(link.refused(
                Stage::Resolver,
                format!("serves {served} resolver(s), not resolver {index} (from 0)"),
            ));
        }
        Ok(RemoteResolver::new(link, index))
    }

    pub(crate) fn new(link: Link, index: u32) -> RemoteResolver {
        let client = ResolverClient::new(link.channel.clone())
            .max_decoding_message_size(MESSAGE_BYTES_MAX)
            .max_encoding_message_size(MESSAGE_BYTES_MAX);
        RemoteResolver {
            index,
            link,
            client,
        }
    }
}

#[async_trait]
impl Resolver for RemoteResolver {
    async fn resolve(&self, batch: ResolveBatch) -> Result<Vec<Verdict>> {
        let count = batch.transactions.len();
        let request = proto::ResolveRequest {
            resolver: Some(self.index),
            epoch: batch.epoch.0,
            previous_version: batch.previous_version.0,
            version: batch.version.0,
            transactions: batch
                .transactions
                .iter()
                .map(|t| proto::Conflicts {
                    read_version: t.read_version.map(|v| v.0),
                    read_conflicts: t.read_conflicts.iter().map(range_to_wire).collect(),
                    write_conflicts: t.write_conflicts.iter().map(range_to_wire).collect(),
                })
                .collect(),
        };
        let reply = self.client.clone().resolve(request).await;
        let verdicts = self.link.answer(Stage::Resolver, reply)?.verdicts;
        if verdicts.len() != count {
            return Err(self.link.garbled(
                Stage::Resolver,
                format!(
                    "answered {} verdicts for {count} transactions",
                    verdicts.len()
                ),
            ));
        }
        verdicts
            .into_iter()
            .map(|v| match v.verdict {
                Some(WireVerdict::Committed(_)) => Ok(Verdict::Committed),
                Some(WireVerdict::Conflict(_)) => Ok(Verdict::Conflict),
                Some(WireVerdict::TooOld(oldest)) => Ok(Verdict::TooOld {
                    oldest: Version(oldest),
                }),
                None => Err(self
                    .link
                    .garbled(Stage::Resolver, "answered an empty verdict".into())),
            })
            .collect()
    }
}
