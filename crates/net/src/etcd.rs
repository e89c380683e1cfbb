//! A small etcd v3 client: what the coordinated state needs of etcd, and nothing else. One key
//! read, one key compare-and-swapped against its version or its last write's revision, and
//! leases kept alive.
//!
//! Why not the `etcd-client` crate: it generates its code with `protoc` at build time, which a
//! fresh machine does not have. The few messages used here are in `proto/etcd/kv.proto`,
//! compiled with protox like the crate's own services.
//!
//! Every call is bounded by [`ETCD_CALL_TIMEOUT`] and fails as a coordinator `Unavailable` that
//! names the endpoints (an outcome unknown: a compare-and-swap that timed out may have been
//! applied, and the caller reads the key again to learn which).

use std::time::Duration;

use strata_core::{Error, ErrorKind, Result, Stage};
use tokio::sync::mpsc;
use tonic::transport::{Channel, Endpoint};

use crate::client::causes;
use crate::{CONNECT_TIMEOUT, KEEPALIVE_TIMEOUT};

#[allow(missing_docs, unreachable_pub, clippy::all, clippy::pedantic)]
mod pb {
    tonic::include_proto!("etcdserverpb");
}

use pb::compare::{CompareResult, CompareTarget, TargetUnion};
use pb::kv_client::KvClient;
use pb::lease_client::LeaseClient;
use pb::request_op::Request;
use pb::response_op::Response;

/// How long one call to etcd may take before it is `Unavailable`.
pub const ETCD_CALL_TIMEOUT: Duration = Duration::from_secs(5);

/// The most keys [`Etcd::list`] reads.
pub const LIST_KEYS_MAX: i64 = 10_000;

/// How often a connection to etcd with a call open is pinged.
pub const ETCD_KEEPALIVE_INTERVAL: Duration = Duration::from_secs(10);

/// A value read from etcd, with etcd's counts of the key's writes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Versioned {
    /// The value.
    pub value: Vec<u8>,
    /// The key's version: how many times it was written since it was created, 1 or more (a
    /// key that does not exist has version 0).
    pub version: i64,
    /// The revision of the key's last write (etcd's store-wide counter; a key that does not
    /// exist has 0).
    pub mod_revision: i64,
}

/// A connection to an etcd cluster, through any of its endpoints (calls are spread over
/// those that answer). Cheap to clone: clones share the connections.
#[derive(Clone, Debug)]
pub struct Etcd {
    channel: Channel,
    /// "etcd at HOST:PORT,HOST:PORT", for errors.
    name: String,
}

impl Etcd {
    /// A client of the etcd cluster at `endpoints` (`host:port` each). Connects lazily: an
    /// etcd that is down fails the first call, as `Unavailable`, not this one. Must be called
    /// within a tokio runtime (the connections' tasks are spawned on it).
    ///
    /// Errors: `InvalidRequest` for no endpoint or one that is not a `host:port`.
    pub fn connect(endpoints: &[String]) -> Result<Etcd> {
        let name = format!("etcd at {}", endpoints.join(","));
        if endpoints.is_empty() {
            return Err(invalid(format!("{name}: no endpoint")));
        }
        let mut list = Vec::with_capacity(endpoints.len());
        for address in endpoints {
            let endpoint = Endpoint::from_shared(format!("http://{address}")).map_err(|e| {
                invalid(format!(
                    "{name}: {address:?} is not a host:port address: {e}"
                ))
            })?;
            list.push(
                endpoint
                    // No `timeout`: it would cut the lease's keep-alive stream too. Each call
                    // is bounded by `call` instead.
                    .connect_timeout(CONNECT_TIMEOUT)
                    .tcp_nodelay(true)
                    // etcd closes a connection that pings more often than every 5 s
                    // (`--grpc-keepalive-min-time`), or at all while it has no call open.
                    .http2_keep_alive_interval(ETCD_KEEPALIVE_INTERVAL)
                    .keep_alive_timeout(KEEPALIVE_TIMEOUT)
                    .keep_alive_while_idle(false),
            );
        }
        Ok(Etcd {
            channel: Channel::balance_list(list.into_iter()),
            name,
        })
    }

    /// `key`'s value and version, or `None` when it does not exist.
    pub async fn get(&self, key: &[u8]) -> Result<Option<Versioned>> {
        let mut kv = KvClient::new(self.channel.clone());
        let reply = self
            .call(kv.range(pb::RangeRequest {
                key: key.to_vec(),
                ..pb::RangeRequest::default()
            }))
            .await?;
        self.one(reply)
    }

    /// Every key that starts with `prefix`, in key order, with its value (at most
    /// [`LIST_KEYS_MAX`]: a longer list is refused as garbled rather than read in part).
    pub async fn list(&self, prefix: &[u8]) -> Result<Vec<(Vec<u8>, Versioned)>> {
        let mut kv = KvClient::new(self.channel.clone());
        let reply = self
            .call(kv.range(pb::RangeRequest {
                key: prefix.to_vec(),
                range_end: prefix_end(prefix),
                limit: LIST_KEYS_MAX + 1,
                ..pb::RangeRequest::default()
            }))
            .await?;
        if reply.kvs.len() > LIST_KEYS_MAX as usize || reply.more {
            return Err(self.garbled(format!(
                "more than {LIST_KEYS_MAX} keys under {}",
                String::from_utf8_lossy(prefix)
            )));
        }
        Ok(reply
            .kvs
            .into_iter()
            .map(|kv| {
                let versioned = Versioned {
                    value: kv.value,
                    version: kv.version,
                    mod_revision: kv.mod_revision,
                };
                (kv.key, versioned)
            })
            .collect())
    }

    /// Writes `value` to `key`, whatever it holds, attached to `lease` (0 for none).
    pub async fn put(&self, key: &[u8], value: Vec<u8>, lease: i64) -> Result<()> {
        let mut kv = KvClient::new(self.channel.clone());
        let txn = pb::TxnRequest {
            compare: Vec::new(),
            success: vec![pb::RequestOp {
                request: Some(Request::RequestPut(pb::PutRequest {
                    key: key.to_vec(),
                    value,
                    lease,
                })),
            }],
            failure: Vec::new(),
        };
        let reply = self.call(kv.txn(txn)).await?;
        if !reply.succeeded {
            return Err(self.garbled("a put without a condition failed".into()));
        }
        Ok(())
    }

    /// Writes `value` to `key` only if the key's version is still `expected` (0: only if it
    /// does not exist), attached to `lease` (0 for none), in one etcd transaction. `Ok(Ok(v))`
    /// with the version written (`expected` + 1), or `Ok(Err(now))` with what the key holds
    /// instead when another writer came first.
    pub async fn put_if_version(
        &self,
        key: &[u8],
        expected: i64,
        value: Vec<u8>,
        lease: i64,
    ) -> Result<std::result::Result<i64, Option<Versioned>>> {
        let compare = pb::Compare {
            result: CompareResult::Equal.into(),
            target: CompareTarget::Version.into(),
            key: key.to_vec(),
            target_union: Some(TargetUnion::Version(expected)),
        };
        let put = self.put_if(compare, key, value, lease).await?;
        Ok(put.map(|()| expected + 1))
    }

    /// Writes `value` to `key` only if the key's last write is still the one at revision
    /// `expected` (0: only if it does not exist), attached to `lease` (0 for none), in one etcd
    /// transaction. `Ok(Err(now))` with what the key holds instead when another writer came
    /// first.
    pub async fn put_if_mod_revision(
        &self,
        key: &[u8],
        expected: i64,
        value: Vec<u8>,
        lease: i64,
    ) -> Result<std::result::Result<(), Option<Versioned>>> {
        let compare = pb::Compare {
            result: CompareResult::Equal.into(),
            target: CompareTarget::Mod.into(),
            key: key.to_vec(),
            target_union: Some(TargetUnion::ModRevision(expected)),
        };
        self.put_if(compare, key, value, lease).await
    }

    /// Puts `value` if `compare` holds, else reads what the key holds, in one transaction.
    async fn put_if(
        &self,
        compare: pb::Compare,
        key: &[u8],
        value: Vec<u8>,
        lease: i64,
    ) -> Result<std::result::Result<(), Option<Versioned>>> {
        let mut kv = KvClient::new(self.channel.clone());
        let txn = pb::TxnRequest {
            compare: vec![compare],
            success: vec![pb::RequestOp {
                request: Some(Request::RequestPut(pb::PutRequest {
                    key: key.to_vec(),
                    value,
                    lease,
                })),
            }],
            failure: vec![pb::RequestOp {
                request: Some(Request::RequestRange(pb::RangeRequest {
                    key: key.to_vec(),
                    ..pb::RangeRequest::default()
                })),
            }],
        };
        let reply = self.call(kv.txn(txn)).await?;
        if reply.succeeded {
            return Ok(Ok(()));
        }
        match reply.responses.into_iter().next().and_then(|r| r.response) {
            Some(Response::ResponseRange(range)) => Ok(Err(self.one(range)?)),
            _ => Err(self.garbled("a failed transaction without the key's range".into())),
        }
    }

    /// A new lease that lives `ttl` (whole seconds, at least one) unless kept alive; its id.
    pub async fn grant(&self, ttl: Duration) -> Result<i64> {
        let mut lease = LeaseClient::new(self.channel.clone());
        let ttl = i64::try_from(ttl.as_secs().max(1)).unwrap_or(i64::MAX);
        let reply = self
            .call(lease.lease_grant(pb::LeaseGrantRequest { ttl, id: 0 }))
            .await?;
        if !reply.error.is_empty() {
            return Err(self.unavailable(format!("refused a lease: {}", reply.error)));
        }
        Ok(reply.id)
    }

    /// Ends lease `id` now: the keys attached to it are deleted.
    pub async fn revoke(&self, id: i64) -> Result<()> {
        let mut lease = LeaseClient::new(self.channel.clone());
        self.call(lease.lease_revoke(pb::LeaseRevokeRequest { id }))
            .await
            .map(drop)
    }

    /// A stream that keeps lease `id` alive, one [`LeaseKeeper::renew`] at a time. Opening
    /// it renews the lease once.
    pub async fn keeper(&self, id: i64) -> Result<LeaseKeeper> {
        let mut lease = LeaseClient::new(self.channel.clone());
        let (requests, outgoing) = mpsc::channel(1);
        // etcd answers the call (its headers too) only once a request arrived, and the call
        // returns only with the answer's headers: the first request goes before the call.
        requests
            .try_send(pb::LeaseKeepAliveRequest { id })
            .map_err(|_| self.unavailable("the lease stream closed".into()))?;
        let outgoing = tokio_stream::wrappers::ReceiverStream::new(outgoing);
        let answers = self.call(lease.lease_keep_alive(outgoing)).await?;
        let mut keeper = LeaseKeeper {
            etcd: self.clone(),
            id,
            requests,
            answers,
        };
        keeper.answer().await?;
        Ok(keeper)
    }

    /// The key a range read answered with, if any; more than one is a garbled answer.
    fn one(&self, reply: pb::RangeResponse) -> Result<Option<Versioned>> {
        let mut kvs = reply.kvs.into_iter();
        let found = kvs.next();
        if kvs.next().is_some() {
            return Err(self.garbled("more than one key for a read of one".into()));
        }
        Ok(found.map(|kv| Versioned {
            value: kv.value,
            version: kv.version,
            mod_revision: kv.mod_revision,
        }))
    }

    /// Runs one call within [`ETCD_CALL_TIMEOUT`].
    async fn call<T>(
        &self,
        call: impl Future<Output = std::result::Result<tonic::Response<T>, tonic::Status>>,
    ) -> Result<T> {
        match tokio::time::timeout(ETCD_CALL_TIMEOUT, call).await {
            Ok(Ok(reply)) => Ok(reply.into_inner()),
            Ok(Err(status)) => Err(self.refused(&status)),
            Err(_) => Err(self.unavailable(format!(
                "no answer within {} s",
                ETCD_CALL_TIMEOUT.as_secs()
            ))),
        }
    }

    /// A call's failure: `Unavailable`, with the status and what caused it.
    fn refused(&self, status: &tonic::Status) -> Error {
        self.unavailable(format!(
            "{} ({:?}){}",
            status.message(),
            status.code(),
            std::error::Error::source(status)
                .map(|s| format!(": {}", causes(s)))
                .unwrap_or_default()
        ))
    }

    fn unavailable(&self, why: String) -> Error {
        Error::new(
            Stage::Coordinator,
            ErrorKind::Unavailable(format!("{}: {why}", self.name)),
        )
    }

    fn garbled(&self, why: String) -> Error {
        self.unavailable(format!("answered {why}"))
    }
}

/// Keeps one lease alive (see [`Etcd::keeper`]).
#[derive(Debug)]
pub struct LeaseKeeper {
    etcd: Etcd,
    id: i64,
    requests: mpsc::Sender<pb::LeaseKeepAliveRequest>,
    answers: tonic::Streaming<pb::LeaseKeepAliveResponse>,
}

impl LeaseKeeper {
    /// Renews the lease; its time to live from now. Renew well within it.
    ///
    /// Errors: `Unavailable` when etcd does not answer in time or the lease has expired (it
    /// cannot be renewed again: the keys attached to it are gone).
    pub async fn renew(&mut self) -> Result<Duration> {
        self.requests
            .send(pb::LeaseKeepAliveRequest { id: self.id })
            .await
            .map_err(|_| self.etcd.unavailable("the lease stream closed".into()))?;
        self.answer().await
    }

    /// The answer to the renewal sent last.
    async fn answer(&mut self) -> Result<Duration> {
        let answer = tokio::time::timeout(ETCD_CALL_TIMEOUT, self.answers.message()).await;
        let reply = match answer {
            Ok(Ok(Some(reply))) => reply,
            Ok(Ok(None)) => return Err(self.etcd.unavailable("closed the lease stream".into())),
            Ok(Err(status)) => return Err(self.etcd.refused(&status)),
            Err(_) => {
                return Err(self.etcd.unavailable(format!(
                    "no answer to a lease renewal within {} s",
                    ETCD_CALL_TIMEOUT.as_secs()
                )));
            }
        };
        if reply.ttl <= 0 {
            return Err(self
                .etcd
                .unavailable(format!("lease {:x} expired", self.id)));
        }
        Ok(Duration::from_secs(u64::try_from(reply.ttl).unwrap_or(0)))
    }
}

/// The first key after every key that starts with `prefix` (etcd's `range_end` for a
/// prefix): the prefix with its last byte below 0xff incremented and what follows dropped;
/// `\0` (every key from `prefix` on) when there is no such byte.
fn prefix_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    vec![0]
}

fn invalid(why: String) -> Error {
    Error::new(Stage::Coordinator, ErrorKind::InvalidRequest(why))
}
