//! Transport security: TLS with a certificate at both ends of every connection, and what a
//! process presents to a cluster's servers ([`Access`]).

use std::fmt;
use std::path::Path;
use std::sync::Arc;

use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use strata_core::{Error, ErrorKind, Stage};
use tonic::transport::{Certificate, Identity, ServerTlsConfig};

use crate::{CONNECT_TIMEOUT, ClusterId};

/// A process's TLS credentials: the certificate authority of its cluster, and its own
/// certificate (signed by that authority) with the certificate's private key, all PEM.
///
/// Every process of a cluster is both a server and a client of the others, so one certificate
/// serves both ends: as a server, a process proves itself with it and accepts only clients
/// that present a certificate of the authority (any other connection is refused during the
/// handshake, before a call is read); as a client, it presents it, and accepts only a server
/// whose certificate the authority signed for the host it dialled (the host part of the
/// address: an IP address or a DNS name among the certificate's subject alternative names).
///
/// `crates/testkit/certs/make.sh` shows how to make an authority and certificates with
/// `openssl`.
///
/// ```
/// use strata_net::Tls;
/// let ca = std::fs::read("../testkit/certs/ca.pem").unwrap();
/// let cert = std::fs::read("../testkit/certs/node.pem").unwrap();
/// let key = std::fs::read("../testkit/certs/node.key").unwrap();
/// let tls = Tls::from_pem(&ca, &cert, &key).unwrap();
/// // A key where a certificate belongs is refused when loaded, not at the first connection.
/// assert!(Tls::from_pem(&ca, &key, &key).is_err());
/// # drop(tls);
/// ```
#[derive(Clone)]
pub struct Tls {
    ca: Certificate,
    identity: Identity,
    /// The client's end, built once (see [`Tls::client`]).
    client: Arc<rustls::ClientConfig>,
}

impl fmt::Debug for Tls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Never the key.
        f.write_str("Tls { .. }")
    }
}

fn refuse(why: String) -> Error {
    Error::new(Stage::Director, ErrorKind::InvalidRequest(why))
}

/// Checks that `pem` holds certificates and nothing unreadable; `what` names it in errors.
fn check_certificates(what: &str, pem: &[u8]) -> Result<(), Error> {
    let mut count = 0usize;
    for certificate in CertificateDer::pem_slice_iter(pem) {
        certificate.map_err(|e| refuse(format!("{what}: not a readable PEM certificate: {e}")))?;
        count += 1;
    }
    if count == 0 {
        return Err(refuse(format!(
            "{what}: holds no PEM certificate (\"-----BEGIN CERTIFICATE-----\")"
        )));
    }
    Ok(())
}

impl Tls {
    /// Credentials from PEM bytes: `ca`, the cluster's authority (one certificate or more);
    /// `certificate`, this process's certificate (its chain, leaf first); `key`, its private
    /// key (PKCS#8, SEC1 or PKCS#1).
    ///
    /// Errors: `InvalidRequest` naming what is missing or unreadable, or a key the
    /// certificate does not match.
    pub fn from_pem(
        ca: impl AsRef<[u8]>,
        certificate: impl AsRef<[u8]>,
        key: impl AsRef<[u8]>,
    ) -> Result<Tls, Error> {
        Tls::named(
            ("the certificate authority", ca.as_ref()),
            ("the certificate", certificate.as_ref()),
            ("the private key", key.as_ref()),
        )
    }

    /// Credentials from PEM files: see [`Tls::from_pem`]. Errors name the file.
    pub fn from_files(ca: &Path, certificate: &Path, key: &Path) -> Result<Tls, Error> {
        let read = |what: &str, path: &Path| {
            std::fs::read(path).map_err(|e| refuse(format!("{what} {}: {e}", path.display())))
        };
        let ca_pem = read("the certificate authority", ca)?;
        let certificate_pem = read("the certificate", certificate)?;
        let key_pem = read("the private key", key)?;
        Tls::named(
            (
                &format!("the certificate authority {}", ca.display()),
                &ca_pem,
            ),
            (
                &format!("the certificate {}", certificate.display()),
                &certificate_pem,
            ),
            (&format!("the private key {}", key.display()), &key_pem),
        )
    }

    fn named(
        ca: (&str, &[u8]),
        certificate: (&str, &[u8]),
        key: (&str, &[u8]),
    ) -> Result<Tls, Error> {
        check_certificates(ca.0, ca.1)?;
        check_certificates(certificate.0, certificate.1)?;
        PrivateKeyDer::from_pem_slice(key.1).map_err(|e| {
            refuse(format!(
                "{}: not a readable PEM private key (PKCS#8, SEC1 or PKCS#1): {e}",
                key.0
            ))
        })?;
        let client = client_config(ca.1, certificate.1, key.1).map_err(|e| {
            refuse(format!(
                "{}, {} and {} do not make a TLS client: {e}",
                ca.0, certificate.0, key.0
            ))
        })?;
        let tls = Tls {
            ca: Certificate::from_pem(ca.1),
            identity: Identity::from_pem(certificate.1, key.1),
            client: Arc::new(client),
        };
        // Both ends built once now, so a key that does not match its certificate (or one
        // rustls cannot use) is refused here, not at the first connection.
        tonic::transport::Server::builder()
            .tls_config(tls.server())
            .map_err(|e| {
                refuse(format!(
                    "{} and {} do not make a TLS server: {}",
                    certificate.0,
                    key.0,
                    crate::client::causes(&e)
                ))
            })?;
        Ok(tls)
    }

    /// The server's end: its certificate, and a client certificate of the authority required.
    pub(crate) fn server(&self) -> ServerTlsConfig {
        ServerTlsConfig::new()
            .identity(self.identity.clone())
            .client_ca_root(self.ca.clone())
            .client_auth_optional(false)
            // A connection that never finishes its handshake holds nothing for long.
            .timeout(CONNECT_TIMEOUT)
    }

    /// The client's end: the authority the server's certificate must come from, and the
    /// certificate to present.
    pub(crate) fn client(&self) -> Arc<rustls::ClientConfig> {
        self.client.clone()
    }
}

/// A TLS client (rustls on ring, TLS 1.2 and 1.3, HTTP/2 by ALPN) that trusts only servers
/// with a certificate of `ca` and presents `certificate` with `key`: what tonic's own client
/// configuration builds from the same files. (The connection is not tonic's: see
/// `h2conn`.)
fn client_config(
    ca: &[u8],
    certificate: &[u8],
    key: &[u8],
) -> Result<rustls::ClientConfig, Box<dyn std::error::Error>> {
    let mut roots = rustls::RootCertStore::empty();
    for authority in CertificateDer::pem_slice_iter(ca) {
        roots.add(authority?)?;
    }
    let chain = CertificateDer::pem_slice_iter(certificate).collect::<Result<Vec<_>, _>>()?;
    let key = PrivateKeyDer::from_pem_slice(key)?;
    let mut config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()?
    .with_root_certificates(roots)
    .with_client_auth_cert(chain, key)?;
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok(config)
}

/// What a process presents to a cluster's servers: the cluster's id, and the process's TLS
/// credentials when the cluster uses TLS. Every `connect` and [`serve`](crate::serve) takes
/// one, or a bare [`ClusterId`] for a cluster without TLS.
///
/// A server with TLS refuses a client without it (and a client with the wrong authority's
/// certificate), and a client with TLS refuses a server without it: the two never mix.
///
/// ```
/// use strata_net::{Access, ClusterId};
/// let plain: Access = ClusterId::new("prod").unwrap().into();
/// assert!(plain.tls().is_none());
/// ```
#[derive(Clone, Debug)]
pub struct Access {
    cluster: ClusterId,
    tls: Option<Tls>,
    token: Option<String>,
}

impl Access {
    /// Access to `cluster`, over TLS when `tls` is given.
    pub fn new(cluster: ClusterId, tls: Option<Tls>) -> Access {
        Access {
            cluster,
            tls,
            token: None,
        }
    }

    /// The same access, carrying `token` in every call: what stages served with a token ask
    /// (see [`Stages::token`](crate::Stages::token)).
    pub fn with_token(self, token: impl Into<String>) -> Access {
        Access {
            token: Some(token.into()),
            ..self
        }
    }

    /// The stage token every call carries, if any.
    pub fn token(&self) -> Option<&str> {
        self.token.as_deref()
    }

    /// The cluster's id.
    pub fn cluster(&self) -> &ClusterId {
        &self.cluster
    }

    /// The TLS credentials, when the cluster uses TLS.
    pub fn tls(&self) -> Option<&Tls> {
        self.tls.as_ref()
    }
}

impl From<ClusterId> for Access {
    fn from(cluster: ClusterId) -> Access {
        Access::new(cluster, None)
    }
}

/// A failed TLS handshake, found among an error's causes.
pub(crate) struct TlsFailure {
    /// What rustls said.
    text: String,
    /// What it most likely means, or nothing.
    hint: &'static str,
    /// Whether one end refused the other's certificate: the server's alert, which it sends
    /// only during the handshake, before it reads any call; or this process's own verifier,
    /// which runs only during the handshake, before it sends any call. A call that fails so
    /// was never done.
    pub(crate) refusal: bool,
}

/// The alerts by which a server refuses a client's certificate.
const REFUSALS: [rustls::AlertDescription; 8] = {
    use rustls::AlertDescription as A;
    [
        A::CertificateRequired,
        A::BadCertificate,
        A::UnknownCA,
        A::CertificateUnknown,
        A::UnsupportedCertificate,
        A::CertificateExpired,
        A::CertificateRevoked,
        A::AccessDenied,
    ]
};

const REFUSED_HINT: &str = " (the server refused this process's certificate: it is not of the \
                            server's authority, or has expired)";

/// How rustls writes a received alert (`Error::AlertReceived`'s text). The HTTP/2 layer keeps
/// only the text of an I/O error it saw, so once a connection is up, that is all there is.
const ALERT_PREFIX: &str = "received fatal alert: ";

impl TlsFailure {
    /// The TLS failure among `error`'s causes, if there is one.
    pub(crate) fn of(error: &(dyn std::error::Error + 'static)) -> Option<TlsFailure> {
        let mut source: Option<&(dyn std::error::Error + 'static)> = Some(error);
        while let Some(cause) = source {
            if let Some(found) = cause.downcast_ref::<rustls::Error>() {
                return Some(TlsFailure::from_rustls(found));
            }
            // HTTP/2's error of a failed read keeps the I/O error, but not as its source.
            let io = cause.downcast_ref::<std::io::Error>().or_else(|| {
                cause
                    .downcast_ref::<h2::Error>()
                    .and_then(h2::Error::get_io)
            });
            if let Some(found) = io.and_then(TlsFailure::of_io) {
                return Some(found);
            }
            source = cause.source();
        }
        None
    }

    /// The TLS failure an I/O error stands for: rustls' own error inside it, or (all that
    /// is left once HTTP/2 has copied the error) the text of a received alert.
    fn of_io(io: &std::io::Error) -> Option<TlsFailure> {
        if let Some(found) = io
            .get_ref()
            .and_then(|inner| inner.downcast_ref::<rustls::Error>())
        {
            return Some(TlsFailure::from_rustls(found));
        }
        let text = io.get_ref().map(ToString::to_string).unwrap_or_default();
        let alert = text.strip_prefix(ALERT_PREFIX)?;
        let refusal = REFUSALS.iter().any(|a| format!("{a:?}") == alert);
        Some(TlsFailure {
            hint: if refusal {
                REFUSED_HINT
            } else {
                " (the server ended the handshake: it may refuse this process's certificate)"
            },
            text,
            refusal,
        })
    }

    fn from_rustls(error: &rustls::Error) -> TlsFailure {
        use rustls::Error as E;
        let refusal = matches!(error, E::AlertReceived(a) if REFUSALS.contains(a))
            || matches!(error, E::InvalidCertificate(_));
        let hint = match error {
            E::InvalidCertificate(_) => {
                " (the server's certificate is not of this process's certificate authority, \
                 has expired, or does not name the host dialled)"
            }
            _ if refusal => REFUSED_HINT,
            E::AlertReceived(_) => {
                " (the server ended the handshake: it may refuse this process's certificate)"
            }
            E::InvalidMessage(_) | E::InappropriateMessage { .. } => " (does the server use TLS?)",
            _ => "",
        };
        TlsFailure {
            text: error.to_string(),
            hint,
            refusal,
        }
    }
}

impl fmt::Display for TlsFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}{}", self.text, self.hint)
    }
}
