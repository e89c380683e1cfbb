//! TLS between processes: a server with TLS answers only clients with a certificate of its
//! authority; a client with TLS talks only to a server whose certificate is of its authority
//! and for the host it dialled; plain and TLS never mix; each refusal is a clear error.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::sync::Arc;

use bytes::Bytes;
use strata_core::{Epoch, ErrorKind, LogId, LogServer, Stage, Version};
use strata_net::{Access, Exposure, RemoteLog, Stages, Tls};
use strata_testkit::MemoryLog;
use strata_testkit::certs::{CA, NODE_CERT, NODE_KEY, ROGUE_CA, ROGUE_CERT, ROGUE_KEY};

use common::{Served, cluster, raw_call};
use prost::Message;

fn node() -> Tls {
    Tls::from_pem(CA, NODE_CERT, NODE_KEY).unwrap()
}

fn access(tls: Option<Tls>) -> Access {
    Access::new(cluster("t-tls"), tls)
}

async fn served_log(tls: Option<Tls>) -> (Served, Arc<MemoryLog>) {
    let log = Arc::new(MemoryLog::new(LogId(3), Version(0)));
    let stages = Stages {
        logs: vec![log.clone() as Arc<dyn LogServer>],
        ..Stages::default()
    };
    let served = Served::start_access("127.0.0.1:0", Exposure::Everything, stages, access(tls));
    (served.await, log)
}

/// The refusal's text, after checking it is a clear, final one (`InvalidRequest`).
fn refused(result: strata_core::Result<RemoteLog>) -> String {
    let e = result.expect_err("connection accepted");
    assert_eq!(e.stage, Stage::Log);
    assert!(matches!(e.kind, ErrorKind::InvalidRequest(_)), "{e:?}");
    e.to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_with_the_clusters_certificate_reads_and_writes() {
    let (served, log) = served_log(Some(node())).await;
    for host in ["127.0.0.1", "localhost"] {
        // Both names are in the certificate: the client checks the one it dialled.
        let port = served.address.rsplit(':').next().unwrap();
        let address = format!("{host}:{port}");
        let remote = RemoteLog::connect(&address, access(Some(node())), LogId(3))
            .await
            .unwrap();
        let newest = log
            .pull(Version(0), 1_000)
            .await
            .unwrap()
            .last()
            .map_or(Version(0), |e| e.version);
        let next = Version(newest.0 + 10);
        remote
            .push(Epoch(1), newest, next, Bytes::from_static(b"over tls"))
            .await
            .unwrap();
        // Written through the TLS connection, read back from the log itself and over it.
        let held = log.pull(newest, 10).await.unwrap();
        assert_eq!(held.last().unwrap().version, next);
        let pulled = remote.pull(newest, 10).await.unwrap();
        assert_eq!(pulled.last().unwrap().version, next);
    }
    let stages = Stages::connect(&served.address, access(Some(node())))
        .await
        .unwrap();
    assert_eq!(stages.logs[0].id(), LogId(3));
    served.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_with_tls_refuses_clients_without_the_authoritys_certificate() {
    let (served, log) = served_log(Some(node())).await;
    let a = &served.address;

    // A certificate of another authority, for the right names: the server refuses it.
    // The refusal reaches the client after its handshake, with its first call; the outcome
    // must be the same refusal however the two race, so it is tried many times.
    // Each connection's first call either carries the server's alert (a refusal, final) or
    // fails in transit and is made again; a client that never got the alert says what the
    // cause most likely is.
    let rogue = Tls::from_pem(CA, ROGUE_CERT, ROGUE_KEY).unwrap();
    let mut final_refusals = 0;
    for _ in 0..30 {
        let e = RemoteLog::connect(a, access(Some(rogue.clone())), LogId(3))
            .await
            .expect_err("a certificate of another authority was accepted");
        assert_eq!(e.stage, Stage::Log);
        let text = e.to_string();
        assert!(text.contains("TLS handshake"), "{text}");
        assert!(text.contains("refuse"), "{text}");
        assert!(text.contains("certificate"), "{text}");
        match e.kind {
            ErrorKind::InvalidRequest(_) => final_refusals += 1,
            ErrorKind::Unavailable(_) => {}
            _ => panic!("{e:?}"),
        }
    }
    assert!(
        final_refusals > 0,
        "the server's alert never reached the client"
    );

    // No TLS at all: the server speaks only TLS, so the plain connection never gets a call
    // through. The client reads the server's alert as TLS (a final refusal) or, when the
    // server closed first, says that TLS is the likely cause.
    let mut told_tls = 0;
    for _ in 0..30 {
        let e = RemoteLog::connect(a, access(None), LogId(3))
            .await
            .expect_err("a plain client was answered by a TLS server");
        let text = e.to_string();
        assert!(text.contains("TLS"), "{text}");
        match e.kind {
            ErrorKind::InvalidRequest(_) => told_tls += 1,
            ErrorKind::Unavailable(_) => {}
            _ => panic!("{e:?}"),
        }
    }
    assert!(
        told_tls > 0,
        "the server's TLS alert never reached the plain client"
    );

    // Nothing any of them sent reached the log.
    assert!(log.pull(Version(0), 10).await.unwrap().is_empty());
    served.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_with_tls_refuses_servers_it_cannot_trust() {
    // A server whose certificate is of another authority.
    let rogue_server = Tls::from_pem(ROGUE_CA, ROGUE_CERT, ROGUE_KEY).unwrap();
    let (served, _log) = served_log(Some(rogue_server)).await;
    let text = refused(RemoteLog::connect(&served.address, access(Some(node())), LogId(3)).await);
    assert!(text.contains("TLS handshake failed"), "{text}");
    assert!(
        text.contains("not of this process's certificate authority"),
        "{text}"
    );
    served.stop().await;

    // A server without TLS.
    let (served, log) = served_log(None).await;
    let text = refused(RemoteLog::connect(&served.address, access(Some(node())), LogId(3)).await);
    assert!(text.contains("does the server use TLS"), "{text}");
    assert!(log.pull(Version(0), 10).await.unwrap().is_empty());
    served.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_with_tls_refuses_a_certificate_for_another_host() {
    // The node certificate names 127.0.0.1 and localhost; a server at 127.0.0.2 (loopback
    // too, on Linux) that presents it is refused.
    if std::net::TcpListener::bind("127.0.0.2:0").is_err() {
        eprintln!("skipped: 127.0.0.2 is not a local address here");
        return;
    }
    let log = Arc::new(MemoryLog::new(LogId(3), Version(0)));
    let stages = Stages {
        logs: vec![log as Arc<dyn LogServer>],
        ..Stages::default()
    };
    let served = Served::start_access(
        "127.0.0.2:0",
        Exposure::Everything,
        stages,
        access(Some(node())),
    )
    .await;
    let text = refused(RemoteLog::connect(&served.address, access(Some(node())), LogId(3)).await);
    assert!(text.contains("TLS handshake failed"), "{text}");
    assert!(text.contains("does not name the host dialled"), "{text}");
    served.stop().await;
}

/// A push sent raw over a TLS connection made with `tls`, skipping the first call a
/// `connect` makes, and what the server answered.
async fn raw_push(
    address: &str,
    tls: tonic::transport::ClientTlsConfig,
) -> Result<Bytes, tonic::Status> {
    let channel = tonic::transport::Channel::from_shared(format!("https://{address}"))
        .unwrap()
        .tls_config(tls)
        .unwrap()
        .connect()
        .await
        .expect("the client's side of the handshake ends before the server checks it");
    let push = strata_net::proto::PushRequest {
        log_id: Some(3),
        epoch: 1,
        previous_version: 0,
        version: 10,
        payload: b"pushed".to_vec().into(),
    };
    let mut grpc = tonic::client::Grpc::new(channel);
    let path = "/strata.v1.Log/Push";
    raw_call(&mut grpc, "t-tls", path, push.encode_to_vec().into()).await
}

/// [`raw_push`], which the server must refuse.
async fn refused_push(address: &str, tls: tonic::transport::ClientTlsConfig) -> tonic::Status {
    raw_push(address, tls)
        .await
        .expect_err("a push got through without a certificate of the authority")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_push_sent_at_once_without_a_valid_certificate_never_reaches_the_log() {
    use tonic::transport::{Certificate, ClientTlsConfig, Identity};
    let (served, log) = served_log(Some(node())).await;
    let trusting = || ClientTlsConfig::new().ca_certificate(Certificate::from_pem(CA));
    for _ in 0..10 {
        // No certificate at all, and one of another authority.
        refused_push(&served.address, trusting()).await;
        let rogue = trusting().identity(Identity::from_pem(ROGUE_CERT, ROGUE_KEY));
        refused_push(&served.address, rogue).await;
    }
    assert!(log.pull(Version(0), 10).await.unwrap().is_empty());
    // The same push with the right certificate goes through: the request itself is good.
    let node = trusting().identity(Identity::from_pem(NODE_CERT, NODE_KEY));
    raw_push(&served.address, node).await.unwrap();
    assert_eq!(log.pull(Version(0), 10).await.unwrap().len(), 1);
    served.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_without_a_certificate_is_told_the_server_wants_one() {
    // TLS and the right authority, but no certificate of its own: the server's alert is
    // `CertificateRequired`. `Tls` always holds one, so this client is built raw; its first
    // call must carry the refusal or fail in transit, never get through.
    use tonic::transport::{Certificate, ClientTlsConfig};
    let (served, _log) = served_log(Some(node())).await;
    // Each push fails (`raw_push` checks); the ones that won the race with the connection's
    // end carry the server's reason.
    let mut told = 0;
    for _ in 0..30 {
        let tls = ClientTlsConfig::new().ca_certificate(Certificate::from_pem(CA));
        let status = refused_push(&served.address, tls).await;
        if format!("{status:?}").contains("CertificateRequired") {
            told += 1;
        }
    }
    assert!(told > 0, "no push was refused for want of a certificate");
    served.stop().await;
}

#[test]
fn credentials_are_checked_when_loaded() {
    let refusal = |r: strata_core::Result<Tls>| {
        let e = r.expect_err("bad credentials accepted");
        assert!(matches!(e.kind, ErrorKind::InvalidRequest(_)), "{e:?}");
        e.to_string()
    };
    let text = refusal(Tls::from_pem(b"not pem", NODE_CERT, NODE_KEY));
    assert!(text.contains("certificate authority"), "{text}");
    let text = refusal(Tls::from_pem(CA, NODE_KEY, NODE_KEY));
    assert!(
        text.starts_with("director: invalid request: the certificate:"),
        "{text}"
    );
    let text = refusal(Tls::from_pem(CA, NODE_CERT, NODE_CERT));
    assert!(text.contains("private key"), "{text}");
    // A key of another certificate.
    let text = refusal(Tls::from_pem(CA, NODE_CERT, ROGUE_KEY));
    assert!(text.contains("do not make a TLS"), "{text}");

    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("missing.pem");
    let text = refusal(Tls::from_files(&missing, &missing, &missing));
    assert!(text.contains("missing.pem"), "{text}");
    let files = strata_testkit::certs::write(dir.path(), "node", CA, NODE_CERT, NODE_KEY).unwrap();
    Tls::from_files(&files.ca, &files.cert, &files.key).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tls_server_that_will_not_speak_http2_is_refused_clearly() {
    use rustls_pki_types::pem::PemObject;
    use rustls_pki_types::{CertificateDer, PrivateKeyDer};
    // A TLS server with the cluster's own certificate, which offers no HTTP/2 (no ALPN):
    // whatever it is, it is not a Strata server.
    let chain = CertificateDer::pem_slice_iter(NODE_CERT)
        .collect::<Result<Vec<_>, _>>()
        .unwrap();
    let key = PrivateKeyDer::from_pem_slice(NODE_KEY).unwrap();
    let config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_no_client_auth()
    .with_single_cert(chain, key)
    .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    // First a Strata server, which a client reaches; then, at its address, the other.
    let (served, _log) = served_log(Some(node())).await;
    let address = served.address.clone();
    let remote = RemoteLog::connect(&address, access(Some(node())), LogId(3))
        .await
        .unwrap();
    remote.pull(Version(0), 1).await.unwrap();
    served.stop().await;
    let listener = tokio::net::TcpListener::bind(&address).await.unwrap();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                if let Ok(held) = acceptor.accept(tcp).await {
                    tokio::time::sleep(std::time::Duration::from_secs(30)).await;
                    drop(held);
                }
            });
        }
    });
    // The connected client's next call finds the connection gone and makes a new one: the
    // refusal is as final as at the first connection, and the call was never sent.
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    let e = remote.pull(Version(0), 1).await.unwrap_err();
    assert!(matches!(e.kind, ErrorKind::InvalidRequest(_)), "{e:?}");
    let text = e.to_string();
    assert!(text.contains("not a Strata server"), "{text}");
    assert!(text.contains("not sent"), "{text}");
    let text = refused(RemoteLog::connect(&address, access(Some(node())), LogId(3)).await);
    assert!(
        text.contains("HTTP/2") && text.contains("not a Strata server"),
        "{text}"
    );
}
