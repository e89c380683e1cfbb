//! The client's connection: gRPC calls straight over an HTTP/2 connection (h2), connected
//! again when it is lost, with TLS when the cluster uses it.
//!
//! tonic's own `Channel` reaches h2 through a tower buffer and hyper's client: a call passes
//! from the caller's task to the buffer's worker, to hyper's dispatcher, to a task that feeds
//! the request's body and one that forwards the answer, besides the connection's own. And
//! hyper hands over the body only once the new stream has flow-control window, which h2
//! grants when the connection's task sends the stream's HEADERS: every call is two writes,
//! each of which wakes the server. Here the caller's own task opens the stream and queues
//! its whole message behind the HEADERS (h2 holds data beyond the window until it may send
//! it), so the connection's task writes them together (a small message shares the write of
//! its headers; a larger one, in frames of up to 16 KiB, follows at once, as far as the
//! server's window allows). On loopback, a push's round trip from a task of the same runtime
//! fell from 107–111 to 41–55 µs (`cargo bench -p strata-net --bench loopback`); see
//! docs/performance.md.
//!
//! What the `Channel` did besides, this does too: it gives up connecting after
//! [`CONNECT_TIMEOUT`], pings the server every [`KEEPALIVE_INTERVAL`] and drops the
//! connection when a ping is not answered within [`KEEPALIVE_TIMEOUT`] (failing the calls on
//! it), and the first call after the connection is lost connects again (calls that find it
//! lost together share one attempt; a call whose attempt fails fails, and the next call
//! tries again). The connection closes once no handle to it is left. Requests are sent
//! whole: every call of Strata's services is unary (a request body that never ended would
//! never be sent).

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU8, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, ready};
use std::time::Duration;

use tokio::time::Instant;

use bytes::Bytes;
use http::uri::{Authority, Scheme};
use http_body::{Body, Frame};
use rustls_pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncWrite};
use tonic::codegen::{Service, StdError};

use crate::{CONNECT_TIMEOUT, KEEPALIVE_INTERVAL, KEEPALIVE_TIMEOUT};

/// HTTP/2 windows as hyper's client sets them: a stream may have 2 MiB in flight
/// towards this client, a connection 5 MiB (a 12 MiB pull arrives in a few windows).
const STREAM_WINDOW: u32 = 2 << 20;
const CONNECTION_WINDOW: u32 = 5 << 20;

/// Where a connection goes, and how.
struct Target {
    /// `host:port`, as dialled.
    address: String,
    /// The same, as the requests' `:authority`.
    authority: Authority,
    scheme: Scheme,
    tls: Option<(tokio_rustls::TlsConnector, ServerName<'static>)>,
}

/// One live HTTP/2 connection: a handle to open streams on it, and whether it has ended.
#[derive(Clone)]
struct Live {
    send: h2::client::SendRequest<Bytes>,
    state: Arc<AtomicU8>,
}

/// [`Live::state`]: the connection serves calls.
const OPEN: u8 = 0;
/// It has ended, or failed: the next call makes a new one.
const ENDED: u8 = 1;
/// It was dropped because a ping went unanswered (its calls say so).
const SILENT: u8 = 2;

impl Live {
    fn end(&self) {
        let _ = self
            .state
            .compare_exchange(OPEN, ENDED, Ordering::AcqRel, Ordering::Acquire);
    }
}

/// A call's failure that says what happened to the connection, with HTTP/2's error (or the
/// attempt to connect's) as its source.
#[derive(Debug)]
struct Lost {
    what: String,
    cause: StdError,
}

impl std::fmt::Display for Lost {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.what)
    }
}

impl std::error::Error for Lost {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&*self.cause)
    }
}

struct Shared {
    target: Target,
    live: Mutex<Option<Live>>,
    /// Held while connecting again, so concurrent calls that find the connection lost make
    /// one attempt between them: the last attempt's failure, which the calls that waited for
    /// it share (each making its own would queue them, up to [`CONNECT_TIMEOUT`] apiece).
    connecting: tokio::sync::Mutex<Option<Arc<StdError>>>,
    /// Attempts to connect again so far (changed only under `connecting`).
    attempts: AtomicU64,
}

/// A failure to connect that several calls report: the one error, shared, as the source of
/// each call's (so what it was, a TLS refusal say, is still found among the causes).
#[derive(Debug)]
pub(crate) struct ConnectFailed(Arc<StdError>);

impl std::fmt::Display for ConnectFailed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "cannot connect")
    }
}

impl ConnectFailed {
    /// What made the attempt fail.
    pub(crate) fn cause(&self) -> &(dyn std::error::Error + 'static) {
        &**self.0
    }

    /// Whether every later attempt would fail the same way: the server will not speak
    /// HTTP/2.
    pub(crate) fn is_final(&self) -> bool {
        self.0.downcast_ref::<NoHttp2>().is_some()
    }
}

impl std::error::Error for ConnectFailed {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&**self.0)
    }
}

/// A connection to one server, for tonic's generated clients (a `GrpcService`). Clones share
/// it; their calls travel on it side by side (one HTTP/2 stream each).
#[derive(Clone)]
pub(crate) struct Connection {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for Connection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Connection({})", self.shared.target.address)
    }
}

/// Why `address` cannot be dialled: it is not `host:port`.
#[derive(Debug)]
pub(crate) struct BadAddress(String);

impl std::fmt::Display for BadAddress {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for BadAddress {}

/// A TLS server that did not agree to speak HTTP/2 (by ALPN): not a Strata server.
#[derive(Debug)]
pub(crate) struct NoHttp2;

impl std::fmt::Display for NoHttp2 {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("the server did not agree to speak HTTP/2 (ALPN): not a Strata server")
    }
}

impl std::error::Error for NoHttp2 {}

impl Connection {
    /// Connects to `address` (`host:port`), over TLS with `tls`, whose server must present a
    /// certificate for `host`.
    ///
    /// Errors: [`BadAddress`] for an address that is not `host:port` (with a host a TLS
    /// server can be named by); [`NoHttp2`] for a TLS server that will not speak HTTP/2;
    /// otherwise the failure to connect, the TLS handshake's
    /// (an `io::Error` holding rustls' error) or HTTP/2's own.
    pub(crate) async fn connect(
        address: &str,
        tls: Option<Arc<rustls::ClientConfig>>,
    ) -> Result<Connection, StdError> {
        let authority: Authority = address
            .parse()
            .map_err(|e| BadAddress(format!("not a host:port address: {e}")))?;
        if authority.port_u16().is_none() {
            return Err(BadAddress("not a host:port address: no port".into()).into());
        }
        let tls = match tls {
            Some(config) => {
                let host = authority
                    .host()
                    .trim_start_matches('[')
                    .trim_end_matches(']');
                let name = ServerName::try_from(host.to_owned())
                    .map_err(|e| BadAddress(format!("{host} cannot name a TLS server: {e}")))?;
                Some((tokio_rustls::TlsConnector::from(config), name))
            }
            None => None,
        };
        let shared = Arc::new(Shared {
            target: Target {
                address: address.to_owned(),
                scheme: if tls.is_some() {
                    Scheme::HTTPS
                } else {
                    Scheme::HTTP
                },
                authority,
                tls,
            },
            live: Mutex::new(None),
            connecting: tokio::sync::Mutex::new(None),
            attempts: AtomicU64::new(0),
        });
        let live = dial(&shared.target).await?;
        *shared
            .live
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(live);
        Ok(Connection { shared })
    }
}

impl Shared {
    /// The connection, if it has not ended.
    fn current(&self) -> Option<Live> {
        let live = self
            .live
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        live.as_ref()
            .filter(|l| l.state.load(Ordering::Acquire) == OPEN)
            .cloned()
    }

    /// The connection, connected again if it ended; when another call's attempt ended while
    /// this one waited for it, that attempt's connection or failure.
    async fn connection(&self) -> Result<Live, StdError> {
        if let Some(live) = self.current() {
            return Ok(live);
        }
        let attempts = self.attempts.load(Ordering::Acquire);
        let mut failure = self.connecting.lock().await;
        if let Some(live) = self.current() {
            return Ok(live);
        }
        if let Some(failed) = failure
            .as_ref()
            .filter(|_| self.attempts.load(Ordering::Acquire) != attempts)
        {
            return Err(Box::new(ConnectFailed(failed.clone())));
        }
        let dialled = dial(&self.target).await;
        self.attempts.fetch_add(1, Ordering::AcqRel);
        match dialled {
            Ok(live) => {
                *failure = None;
                *self
                    .live
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(live.clone());
                Ok(live)
            }
            Err(e) => {
                let e = Arc::new(e);
                *failure = Some(e.clone());
                Err(Box::new(ConnectFailed(e)))
            }
        }
    }
}

/// A new connection to `target`, its task (and keep-alive) running: within
/// [`CONNECT_TIMEOUT`], TCP and TLS handshakes included.
async fn dial(target: &Target) -> Result<Live, StdError> {
    let began = Instant::now();
    let connected = async {
        let addresses: Vec<SocketAddr> = tokio::net::lookup_host(&target.address).await?.collect();
        let within = CONNECT_TIMEOUT.saturating_sub(began.elapsed());
        let tcp = first_connected(&addresses, within, tokio::net::TcpStream::connect).await?;
        tcp.set_nodelay(true)?;
        match &target.tls {
            Some((connector, name)) => {
                let tls = connector.connect(name.clone(), tcp).await?;
                if tls.get_ref().1.alpn_protocol() != Some(b"h2") {
                    return Err(Box::new(NoHttp2) as StdError);
                }
                start(tls).await
            }
            None => start(tcp).await,
        }
    };
    match tokio::time::timeout(CONNECT_TIMEOUT, connected).await {
        Ok(live) => live,
        Err(_) => Err(Box::new(std::io::Error::new(
            std::io::ErrorKind::TimedOut,
            format!("no connection within {} s", CONNECT_TIMEOUT.as_secs()),
        ))),
    }
}

/// The first of `addresses` that `connect` reaches, each tried in turn for an equal share of
/// what is left of `within` (one that fails at once leaves its share to the others), so a
/// name whose first address never answers still reaches the next. (hyper's connector also
/// races the other address family after 300 ms; here the order is the resolver's, and with
/// many addresses each gets only its share.)
async fn first_connected<C, F, T>(
    addresses: &[SocketAddr],
    within: Duration,
    mut connect: C,
) -> std::io::Result<T>
where
    C: FnMut(SocketAddr) -> F,
    F: Future<Output = std::io::Result<T>>,
{
    let began = Instant::now();
    let mut last = None;
    for (i, &address) in addresses.iter().enumerate() {
        let left = u32::try_from(addresses.len() - i).unwrap_or(u32::MAX);
        let share = within.saturating_sub(began.elapsed()) / left;
        match tokio::time::timeout(share, connect(address)).await {
            Ok(Ok(connected)) => return Ok(connected),
            Ok(Err(e)) => last = Some(e),
            Err(_) => {
                last = Some(std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    format!("{address}: no answer within {} ms", share.as_millis()),
                ));
            }
        }
    }
    Err(last.unwrap_or_else(|| {
        std::io::Error::new(std::io::ErrorKind::NotFound, "the name has no address")
    }))
}

/// HTTP/2 over `io`: the handshake, then a task that runs the connection until it ends or a
/// ping goes unanswered for [`KEEPALIVE_TIMEOUT`] (dropping it fails every call on it).
async fn start<T>(io: T) -> Result<Live, StdError>
where
    T: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (send, mut connection) = h2::client::Builder::new()
        .initial_window_size(STREAM_WINDOW)
        .initial_connection_window_size(CONNECTION_WINDOW)
        // As hyper's client: until the server's SETTINGS say how many streams it takes, open
        // at most 100 (a burst of calls on a new connection would otherwise be refused past
        // the server's limit); no server push; headers (and trailers, where a stage's error
        // travels) of at most 16 KiB.
        .initial_max_send_streams(100)
        .enable_push(false)
        .max_header_list_size(16 << 10)
        .handshake::<_, Bytes>(io)
        .await?;
    let state = Arc::new(AtomicU8::new(OPEN));
    let pings = connection.ping_pong();
    let flag = state.clone();
    tokio::spawn(async move {
        tokio::select! {
            result = &mut connection => {
                if let Err(e) = result {
                    tracing::debug!(error = %e, "connection ended");
                }
                flag.store(ENDED, Ordering::Release);
            }
            () = keep_alive(pings) => {
                tracing::debug!("connection dropped: a ping went unanswered");
                // Before the connection is dropped, which fails its calls: they read this.
                flag.store(SILENT, Ordering::Release);
            }
        }
    });
    Ok(Live { send, state })
}

/// Pings every [`KEEPALIVE_INTERVAL`], idle or not; returns once a ping is not answered
/// within [`KEEPALIVE_TIMEOUT`] (or cannot be sent: the connection is ending anyway).
async fn keep_alive(pings: Option<h2::PingPong>) {
    let Some(mut pings) = pings else {
        return std::future::pending().await;
    };
    loop {
        tokio::time::sleep(KEEPALIVE_INTERVAL).await;
        match tokio::time::timeout(KEEPALIVE_TIMEOUT, pings.ping(h2::Ping::opaque())).await {
            Ok(Ok(_pong)) => {}
            Ok(Err(_)) | Err(_) => return,
        }
    }
}

/// An answer's body: its DATA frames (their window given back as they are read), then its
/// trailers, where gRPC puts the call's status.
pub(crate) struct Answer {
    recv: h2::RecvStream,
    data_done: bool,
    state: Arc<AtomicU8>,
}

impl Body for Answer {
    type Data = Bytes;
    type Error = StdError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, StdError>>> {
        if !self.data_done {
            match ready!(self.recv.poll_data(cx)) {
                Some(Ok(data)) => {
                    // Read, so the server may send as much again. (An error here is a
                    // stream already ended, which the next poll reports.)
                    let _ = self.recv.flow_control().release_capacity(data.len());
                    return Poll::Ready(Some(Ok(Frame::data(data))));
                }
                Some(Err(e)) => return Poll::Ready(Some(Err(explained(&self.state, e)))),
                None => self.data_done = true,
            }
        }
        match ready!(self.recv.poll_trailers(cx)) {
            Ok(Some(trailers)) => Poll::Ready(Some(Ok(Frame::trailers(trailers)))),
            Ok(None) => Poll::Ready(None),
            Err(e) => Poll::Ready(Some(Err(explained(&self.state, e)))),
        }
    }

    fn is_end_stream(&self) -> bool {
        self.recv.is_end_stream()
    }
}

type Call = Pin<Box<dyn Future<Output = Result<http::Response<Answer>, StdError>> + Send>>;

impl Service<http::Request<tonic::body::Body>> for Connection {
    type Response = http::Response<Answer>;
    type Error = StdError;
    type Future = Call;

    /// Always ready: h2 queues a stream beyond the server's concurrency limit until one
    /// ends, and a lost connection is found (and replaced) by the call. (tonic reads an error
    /// here as "not ready" and keeps none of its causes.)
    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), StdError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: http::Request<tonic::body::Body>) -> Call {
        let shared = self.shared.clone();
        Box::pin(async move {
            let (mut head, mut body) = request.into_parts();
            let mut message = Vec::new();
            while let Some(frame) =
                std::future::poll_fn(|cx| Pin::new(&mut body).poll_frame(cx)).await
            {
                if let Ok(data) = frame?.into_data() {
                    message.push(data);
                }
            }
            let mut uri = http::uri::Parts::from(head.uri);
            uri.scheme = Some(shared.target.scheme.clone());
            uri.authority = Some(shared.target.authority.clone());
            head.uri = http::Uri::from_parts(uri)?;
            let mut live = shared.connection().await?;
            let (answer, mut stream) = match live.send.clone().send_request(head_only(&head), false)
            {
                Ok(opened) => opened,
                Err(_) => {
                    // Nothing was sent: h2 opens no stream on a connection that has failed
                    // or been told to go away (before its task has ended, which is when the
                    // connection is found ended), or that has used up its stream ids. The
                    // call goes on a new connection.
                    live.end();
                    live = shared.connection().await?;
                    live.send.clone().send_request(head_only(&head), false)?
                }
            };
            let answered = match send_message(&mut stream, message) {
                Ok(()) => answer.await,
                Err(e) => Err(e),
            };
            match answered {
                Ok(answer) => Ok(answer.map(|recv| Answer {
                    recv,
                    data_done: false,
                    state: live.state.clone(),
                })),
                Err(e) => {
                    // The connection failed: the next call makes a new one at once.
                    if e.is_io() || e.is_go_away() {
                        live.end();
                    }
                    Err(explained(&live.state, e))
                }
            }
        })
    }
}

/// A call's failure `e`, saying so when its connection was dropped for a ping unanswered
/// (HTTP/2's own error then reads as a broken pipe).
fn explained(state: &AtomicU8, e: h2::Error) -> StdError {
    if state.load(Ordering::Acquire) != SILENT {
        return e.into();
    }
    Box::new(Lost {
        what: format!(
            "the server answered no ping within {} s (its host may be down or cut off, or \
             this process stalled); the connection was dropped",
            KEEPALIVE_TIMEOUT.as_secs()
        ),
        cause: e.into(),
    })
}

/// Queues `message` on `stream` and ends it: h2 holds what its flow-control window does not
/// yet allow, and sends it behind the stream's HEADERS as the window opens.
fn send_message(stream: &mut h2::SendStream<Bytes>, message: Vec<Bytes>) -> Result<(), h2::Error> {
    let last = message.len().saturating_sub(1);
    if message.is_empty() {
        return stream.send_data(Bytes::new(), true);
    }
    for (i, data) in message.into_iter().enumerate() {
        stream.send_data(data, i == last)?;
    }
    Ok(())
}

/// A request with `head`'s method, URI, version and headers (h2 sends no extensions).
fn head_only(head: &http::request::Parts) -> http::Request<()> {
    let mut request = http::Request::new(());
    *request.method_mut() = head.method.clone();
    *request.uri_mut() = head.uri.clone();
    *request.version_mut() = head.version;
    *request.headers_mut() = head.headers.clone();
    request
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn at(port: u16) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], port))
    }

    /// A connector whose address on port 1 never answers, on port 2 refuses at once, and on
    /// any other port connects (to that port) after 20 ms.
    async fn fake(address: SocketAddr) -> std::io::Result<u16> {
        match address.port() {
            1 => std::future::pending().await,
            2 => Err(std::io::ErrorKind::ConnectionRefused.into()),
            port => {
                tokio::time::sleep(Duration::from_millis(20)).await;
                Ok(port)
            }
        }
    }

    #[tokio::test]
    async fn an_address_that_never_answers_leaves_time_for_the_next() {
        let within = Duration::from_millis(300);
        let got = first_connected(&[at(1), at(7)], within, fake)
            .await
            .unwrap();
        assert_eq!(got, 7);
        let got = first_connected(&[at(2), at(1), at(8)], within, fake)
            .await
            .unwrap();
        assert_eq!(got, 8);
    }

    #[tokio::test(start_paused = true)]
    async fn the_addresses_share_the_time_and_never_take_more() {
        // 300 ms among three: 100 for the first, which never answers, then 100 for the
        // second, then what is left (100) for the last, which connects in 20.
        let began = tokio::time::Instant::now();
        let within = Duration::from_millis(300);
        let got = first_connected(&[at(1), at(1), at(9)], within, fake)
            .await
            .unwrap();
        assert_eq!(got, 9);
        assert_eq!(began.elapsed(), Duration::from_millis(220));
        // None answers: all of `within`, and no more.
        let began = tokio::time::Instant::now();
        let e = first_connected(&[at(1), at(1), at(1)], within, fake)
            .await
            .unwrap_err();
        assert_eq!(e.kind(), std::io::ErrorKind::TimedOut);
        assert_eq!(began.elapsed(), within);
    }

    #[tokio::test]
    async fn when_no_address_connects_the_last_failure_is_the_error() {
        let within = Duration::from_millis(100);
        let e = first_connected(&[at(2), at(1)], within, fake)
            .await
            .unwrap_err();
        assert_eq!(e.kind(), std::io::ErrorKind::TimedOut);
        assert!(e.to_string().contains("127.0.0.1:1"), "{e}");
        let e = first_connected(&[at(1), at(2)], within, fake)
            .await
            .unwrap_err();
        assert_eq!(e.kind(), std::io::ErrorKind::ConnectionRefused);
        let e = first_connected(&[], within, fake).await.unwrap_err();
        assert_eq!(e.kind(), std::io::ErrorKind::NotFound);
    }
}
