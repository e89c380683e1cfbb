//! The commit proxy as a network service: the proxy calls of [`serve`](crate::serve), and
//! [`RemoteProxy`], a [`CommitProxy`] whose calls go to one.

use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;
use strata_core::{
    CommitProxy, Epoch, Error, ErrorKind, Mutation, Result, Stage, TRANSACTION_BYTES_MAX,
    Transaction, TransactionView, Version,
};
use tonic::{Request, Response, Status};

use crate::batch::{Batcher, Limits};
use crate::client::Link;
use crate::failure::{from_failure, to_failure};
use crate::proto;
use crate::proto::commit_outcome::Outcome;
use crate::proto::proxy_client::ProxyClient;
use crate::server::{Exposure, Served, refuse};
use crate::tls::Access;
use crate::{COMMIT_BATCH_BYTES_MAX, COMMIT_BATCH_TRANSACTIONS_MAX, MESSAGE_BYTES_MAX};

/// How many commit calls one [`RemoteProxy`] keeps in flight at once: enough that the proxy
/// has a batch to work on while the answer to the last one travels back.
const COMMIT_FLIGHTS_MAX: usize = 4;

fn outcome(result: Result<Version>) -> proto::CommitOutcome {
    proto::CommitOutcome {
        outcome: Some(match result {
            Ok(version) => Outcome::Version(version.0),
            Err(e) => Outcome::Failure(to_failure(&e)),
        }),
    }
}

/// Refuses a transaction that writes a key from `\xff` on, or declares a write conflict
/// there: those are the cluster's own keys (the configuration the persistence phase stores,
/// which the next recovery reads), and a client writing them could wedge recovery.
fn writes_only_user_keys(transaction: &Transaction) -> Result<()> {
    let system = transaction
        .mutations
        .iter()
        .map(Mutation::range)
        .chain(transaction.write_conflicts.iter().cloned())
        .any(|range| range.end().as_ref() > [0xffu8].as_slice());
    if system {
        return Err(Error::new(
            Stage::CommitProxy,
            ErrorKind::InvalidRequest(
                "a client may not write system keys (from \\xff on): the cluster writes those \
                 itself"
                    .into(),
            ),
        ));
    }
    Ok(())
}

impl Served {
    /// A client's transaction, decoded: refused before the proxy when it is over the size
    /// limit or does not decode, and, on a server for clients or a worker (see
    /// [`crate::serve_worker`]), when it writes system keys.
    fn admissible(&self, transaction: Bytes) -> Result<Transaction> {
        if transaction.len() > TRANSACTION_BYTES_MAX {
            return Err(Error::new(
                Stage::CommitProxy,
                ErrorKind::InvalidRequest(format!(
                    "a transaction of {} bytes, over the limit of {TRANSACTION_BYTES_MAX}",
                    transaction.len()
                )),
            ));
        }
        let decoded = TransactionView::parse(transaction)
            .and_then(|view| view.to_transaction())
            .map_err(|e| Error::new(Stage::CommitProxy, ErrorKind::Wire(e)))?;
        if self.exposure() == Exposure::Clients || self.worker().is_some() {
            writes_only_user_keys(&decoded)?;
        }
        Ok(decoded)
    }
}

#[tonic::async_trait]
impl proto::proxy_server::Proxy for Served {
    async fn epoch(
        &self,
        request: Request<proto::ProxyEpochRequest>,
    ) -> std::result::Result<Response<proto::ProxyEpochReply>, Status> {
        let _call = self.admit(Stage::CommitProxy)?;
        let epoch = self.proxy(request.into_inner().proxy)?.epoch();
        Ok(Response::new(proto::ProxyEpochReply { epoch: epoch.0 }))
    }

    async fn commit(
        &self,
        request: Request<proto::CommitRequest>,
    ) -> std::result::Result<Response<proto::CommitReply>, Status> {
        let _call = self.admit(Stage::CommitProxy)?;
        let r = request.into_inner();
        let proxy = self.proxy_of(r.proxy, r.epoch)?;
        if r.transactions.len() > COMMIT_BATCH_TRANSACTIONS_MAX {
            return Err(refuse(
                Stage::CommitProxy,
                ErrorKind::InvalidRequest(format!(
                    "{} transactions in one call, over the limit of \
                     {COMMIT_BATCH_TRANSACTIONS_MAX}",
                    r.transactions.len()
                )),
            ));
        }
        // Each transaction is decoded here once: the proxy takes it as it is. The admitted
        // ones commit together, each on its own, on the handler's task (a task each would cost
        // a spawn and a wake-up each), to their end whatever becomes of the call.
        let mut transactions = Vec::with_capacity(r.transactions.len());
        let mut refusals = Vec::with_capacity(r.transactions.len());
        for transaction in r.transactions {
            match self.admissible(transaction) {
                Ok(transaction) => {
                    transactions.push(transaction);
                    refusals.push(None);
                }
                Err(e) => refusals.push(Some(e)),
            }
        }
        let mut committed = self
            .run_to_end(async move { proxy.commit_all(transactions).await })
            .await
            .into_iter();
        let results = refusals.into_iter().map(|refusal| match refusal {
            Some(e) => Err(e),
            None => committed.next().unwrap_or_else(|| {
                Err(Error::new(
                    Stage::CommitProxy,
                    ErrorKind::Unavailable("the proxy gave no outcome for a transaction".into()),
                ))
            }),
        });
        Ok(Response::new(proto::CommitReply {
            outcomes: results.map(outcome).collect(),
        }))
    }
}

/// A [`CommitProxy`] served elsewhere by [`serve`](crate::serve), known by its index there.
///
/// Concurrent commits travel together: a commit waits for the next call to leave (at most
/// four are in flight at once), and each call carries every commit waiting then, up to
/// [`COMMIT_BATCH_TRANSACTIONS_MAX`] transactions and [`COMMIT_BATCH_BYTES_MAX`] bytes. Each
/// transaction still commits on its own and gets its own outcome.
///
/// It is the proxy of one epoch, the one the server ran when the client connected
/// ([`epoch`](CommitProxy::epoch)): once the server runs a newer epoch, its commits are
/// `Fenced`, refused before any proxy saw them, as the [`CommitProxy::commit`] contract says
/// of a proxy once a newer epoch took over; the client connects again to commit through the
/// new epoch's proxies. A commit whose connection breaks before the answer is `Unavailable`: its outcome is unknown, as the [`CommitProxy::commit`]
/// contract says of a failure after the push; the server lets the commit run to its end.
#[derive(Clone)]
pub struct RemoteProxy {
    index: u32,
    epoch: Epoch,
    link: Link,
    commits: Arc<Batcher<Bytes, Version>>,
}

impl std::fmt::Debug for RemoteProxy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RemoteProxy")
            .field("index", &self.index)
            .field("epoch", &self.epoch)
            .field("peer", &self.link.peer)
            .finish_non_exhaustive()
    }
}

impl RemoteProxy {
    /// Connects to proxy `index` served at `address` (`host:port`) with `access` (a
    /// [`ClusterId`](crate::ClusterId), or an [`Access`] with TLS credentials).
    ///
    /// Errors: `Unavailable` when nothing answers at `address` or it serves no proxy now;
    /// `InvalidRequest` when the server is of another cluster, a TLS handshake failed, or it
    /// has no proxy `index`.
    pub async fn connect(
        address: &str,
        access: impl Into<Access>,
        index: u32,
    ) -> Result<RemoteProxy> {
        let link = Link::connect(Stage::CommitProxy, address, access.into()).await?;
        RemoteProxy::on(link, index).await
    }

    /// Proxy `index` of the server `link` reaches; asks its epoch.
    pub(crate) async fn on(link: Link, index: u32) -> Result<RemoteProxy> {
        let client = ProxyClient::new(link.channel.clone())
            .max_decoding_message_size(MESSAGE_BYTES_MAX)
            .max_encoding_message_size(MESSAGE_BYTES_MAX);
        let request = proto::ProxyEpochRequest { proxy: Some(index) };
        let reply = client.clone().epoch(request).await;
        let epoch = Epoch(link.answer(Stage::CommitProxy, reply)?.epoch);
        let sender = link.clone();
        let commits = Batcher::new(
            Stage::CommitProxy,
            Box::new(move |transactions: Vec<Bytes>| {
                let (link, mut client) = (sender.clone(), client.clone());
                Box::pin(async move {
                    let count = transactions.len();
                    let request = proto::CommitRequest {
                        proxy: Some(index),
                        transactions,
                        epoch: Some(epoch.0),
                    };
                    let reply = client.commit(request).await;
                    match link.answer(Stage::CommitProxy, reply) {
                        Ok(reply) => reply
                            .outcomes
                            .into_iter()
                            .map(|o| read_outcome(&link, o))
                            .collect(),
                        Err(e) => vec![Err(e); count],
                    }
                })
            }),
            Bytes::len,
            Limits {
                flights_max: COMMIT_FLIGHTS_MAX,
                count_max: COMMIT_BATCH_TRANSACTIONS_MAX,
                bytes_max: COMMIT_BATCH_BYTES_MAX,
            },
        );
        Ok(RemoteProxy {
            index,
            epoch,
            link,
            commits,
        })
    }
}

/// One transaction's outcome from a commit answer; an outcome that says nothing is not
/// trusted (`Unavailable`: the commit may or may not have happened).
fn read_outcome(link: &Link, outcome: proto::CommitOutcome) -> Result<Version> {
    match outcome.outcome {
        Some(Outcome::Version(v)) => Ok(Version(v)),
        Some(Outcome::Failure(failure)) => Err(from_failure(Stage::CommitProxy, failure)
            .unwrap_or_else(|| {
                link.garbled(Stage::CommitProxy, "answered an unreadable failure".into())
            })),
        None => Err(link.garbled(Stage::CommitProxy, "answered an empty outcome".into())),
    }
}

#[async_trait]
impl CommitProxy for RemoteProxy {
    fn epoch(&self) -> Epoch {
        self.epoch
    }

    async fn commit(&self, transaction: Bytes) -> Result<Version> {
        // Refused here, definitely: sent, it would fail as a message over the limit, which
        // reads as a lost answer.
        if transaction.len() > TRANSACTION_BYTES_MAX {
            return Err(Error::new(
                Stage::CommitProxy,
                ErrorKind::InvalidRequest(format!(
                    "a transaction of {} bytes, over the limit of {TRANSACTION_BYTES_MAX}",
                    transaction.len()
                )),
            ));
        }
        self.commits.call(transaction).await
    }
}
