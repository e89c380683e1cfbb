//! What the network tests share: a server on a loopback port, and raw gRPC calls that bypass
//! the remote stages (to send what they never would).

#![allow(dead_code, unreachable_pub, clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;

use bytes::{Buf, BufMut, Bytes};
use strata_core::{LogServer, Result};
use strata_net::{Access, CLUSTER_ID_HEADER, ClusterId, Exposure, Stages};
use tokio::sync::{oneshot, watch};
use tokio::task::JoinHandle;
use tonic::codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder};
use tonic::transport::Channel;

/// Stages served on a loopback port until [`Served::stop`]; `publish` changes what is served.
pub struct Served {
    pub address: String,
    pub publish: watch::Sender<Arc<Stages>>,
    stop: Option<oneshot::Sender<()>>,
    pub task: JoinHandle<Result<()>>,
}

impl Served {
    pub async fn start(stages: Stages, cluster: &str) -> Served {
        Served::start_at("127.0.0.1:0", stages, cluster).await
    }

    /// One log, served alone.
    pub async fn log(log: Arc<dyn LogServer>, cluster: &str) -> Served {
        let stages = Stages {
            logs: vec![log],
            ..Stages::default()
        };
        Served::start(stages, cluster).await
    }

    /// Serves `stages` at `address` (a port of 0 picks one), every call.
    pub async fn start_at(address: &str, stages: Stages, cluster: &str) -> Served {
        Served::start_with(address, Exposure::Everything, stages, cluster).await
    }

    /// Serves `stages` on a port of its own, `exposure`'s calls only.
    pub async fn start_with(
        address: &str,
        exposure: Exposure,
        stages: Stages,
        cluster: &str,
    ) -> Served {
        let access = ClusterId::new(cluster).unwrap().into();
        Served::start_access(address, exposure, stages, access).await
    }

    /// Serves `stages` on a loopback port of its own, every call, to `access` (TLS, say).
    pub async fn start_access(
        address: &str,
        exposure: Exposure,
        stages: Stages,
        access: Access,
    ) -> Served {
        let listener = tokio::net::TcpListener::bind(address).await.unwrap();
        let address = listener.local_addr().unwrap().to_string();
        let (stop, stopped) = oneshot::channel::<()>();
        let (publish, published) = watch::channel(Arc::new(stages));
        let task = tokio::spawn(strata_net::serve(
            access,
            exposure,
            published,
            listener,
            async {
                let _ = stopped.await;
            },
        ));
        Served {
            address,
            publish,
            stop: Some(stop),
            task,
        }
    }

    pub async fn stop(mut self) {
        let _ = self.stop.take().unwrap().send(());
        (&mut self.task).await.unwrap().unwrap();
    }

    /// A plain gRPC connection to the server, whose calls carry no cluster id.
    pub async fn channel(&self) -> Channel {
        Channel::from_shared(format!("http://{}", self.address))
            .unwrap()
            .connect()
            .await
            .unwrap()
    }
}

pub fn cluster(id: &str) -> ClusterId {
    ClusterId::new(id).unwrap()
}

/// Sends `body` as the request of `path` (`/strata.v1.Service/Method`) for `cluster`, as is.
pub async fn raw_call(
    grpc: &mut tonic::client::Grpc<Channel>,
    cluster: &str,
    path: &str,
    body: Bytes,
) -> std::result::Result<Bytes, tonic::Status> {
    let mut request = tonic::Request::new(body);
    request
        .metadata_mut()
        .insert(CLUSTER_ID_HEADER, cluster.parse().unwrap());
    grpc.ready().await.unwrap();
    grpc.unary(request, path.parse().unwrap(), RawCodec)
        .await
        .map(tonic::Response::into_inner)
}

/// A seeded xorshift: the same bytes every run.
pub fn xorshift(seed: u64) -> impl FnMut() -> u64 {
    let mut state = seed;
    move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    }
}

/// Sends raw request bytes, as they are, and takes the reply's bytes as they are.
#[derive(Clone, Copy, Default)]
pub struct RawCodec;

impl Codec for RawCodec {
    type Encode = Bytes;
    type Decode = Bytes;
    type Encoder = RawCodec;
    type Decoder = RawCodec;

    fn encoder(&mut self) -> RawCodec {
        RawCodec
    }

    fn decoder(&mut self) -> RawCodec {
        RawCodec
    }
}

impl Encoder for RawCodec {
    type Item = Bytes;
    type Error = tonic::Status;

    fn encode(
        &mut self,
        item: Bytes,
        dst: &mut EncodeBuf<'_>,
    ) -> std::result::Result<(), Self::Error> {
        dst.put(item);
        Ok(())
    }
}

impl Decoder for RawCodec {
    type Item = Bytes;
    type Error = tonic::Status;

    fn decode(
        &mut self,
        src: &mut DecodeBuf<'_>,
    ) -> std::result::Result<Option<Bytes>, Self::Error> {
        Ok(Some(src.copy_to_bytes(src.remaining())))
    }
}
