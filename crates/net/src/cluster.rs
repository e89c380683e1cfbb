//! The cluster id every call carries, and the check that refuses another cluster's calls.

use std::fmt;

use strata_core::{Error, ErrorKind, Stage};
use tonic::metadata::{Ascii, MetadataValue};
use tonic::service::Interceptor;
use tonic::{Request, Status};

use crate::failure::to_status_as;

/// The metadata entry every call carries its cluster id in.
pub const CLUSTER_ID_HEADER: &str = "strata-cluster-id";

/// The longest cluster id, in bytes.
pub const CLUSTER_ID_BYTES_MAX: usize = 64;

/// The identity of one cluster. Every call names it, and a server answers only calls for its
/// own, so a process given the address of another cluster's server is refused instead of
/// writing to it.
///
/// An id is 1 to [`CLUSTER_ID_BYTES_MAX`] bytes of ASCII letters, digits, `-`, `_` and `.`.
///
/// ```
/// use strata_net::ClusterId;
/// let id = ClusterId::new("prod-eu.1").unwrap();
/// assert_eq!(id.as_str(), "prod-eu.1");
/// assert!(ClusterId::new("").is_err());
/// assert!(ClusterId::new("two words").is_err());
/// ```
#[derive(Clone, Debug)]
pub struct ClusterId {
    id: String,
    header: MetadataValue<Ascii>,
}

impl PartialEq for ClusterId {
    fn eq(&self, other: &ClusterId) -> bool {
        self.id == other.id
    }
}

impl Eq for ClusterId {}

impl ClusterId {
    /// `id` as a cluster id; an `InvalidRequest` error says what is wrong with it.
    pub fn new(id: impl Into<String>) -> Result<ClusterId, Error> {
        let id = id.into();
        let refuse = |why: String| Error::new(Stage::Director, ErrorKind::InvalidRequest(why));
        if id.is_empty() || id.len() > CLUSTER_ID_BYTES_MAX {
            return Err(refuse(format!(
                "a cluster id is 1 to {CLUSTER_ID_BYTES_MAX} bytes, not {}",
                id.len()
            )));
        }
        if let Some(c) = id
            .chars()
            .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.')))
        {
            return Err(refuse(format!(
                "cluster id {id:?} holds {c:?}: only ASCII letters, digits, '-', '_' and '.'"
            )));
        }
        let header = MetadataValue::try_from(id.as_str())
            .map_err(|e| refuse(format!("cluster id {id:?} is not a header value: {e}")))?;
        Ok(ClusterId { id, header })
    }

    /// The id as text.
    pub fn as_str(&self) -> &str {
        &self.id
    }
}

impl fmt::Display for ClusterId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.id)
    }
}

/// The metadata entry a call carries a stage token in: what stages published with a token
/// ([`Stages::token`](crate::Stages::token)) ask of every call.
pub const STAGE_TOKEN_HEADER: &str = "strata-stage-token";

/// Whether two secrets are equal, in a time that does not depend on where they differ.
pub fn same_secret(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Tags every outgoing call with the client's cluster id, and its stage token if it has one.
#[derive(Clone, Debug)]
pub(crate) struct Tag {
    pub(crate) cluster: ClusterId,
    pub(crate) token: Option<MetadataValue<Ascii>>,
}

impl Interceptor for Tag {
    fn call(&mut self, mut request: Request<()>) -> Result<Request<()>, Status> {
        request
            .metadata_mut()
            .insert(CLUSTER_ID_HEADER, self.cluster.header.clone());
        if let Some(token) = &self.token {
            request
                .metadata_mut()
                .insert(STAGE_TOKEN_HEADER, token.clone());
        }
        Ok(request)
    }
}

/// Refuses, before it reaches the stage, a call that names no cluster or another cluster than
/// the server's. The refusal is an `InvalidRequest` of the server's stage that names both ids.
#[derive(Clone, Debug)]
pub(crate) struct Check {
    pub(crate) cluster: ClusterId,
    pub(crate) stage: Stage,
    /// What is served: stages published with a token answer only calls that carry it.
    pub(crate) stages: tokio::sync::watch::Receiver<std::sync::Arc<crate::Stages>>,
    /// Whether the calls checked are the stages' (which ask the token) or a worker's own
    /// (which do not: a new epoch's director gives a log worker its token in such a call, and
    /// the orders that need the token carry it themselves).
    pub(crate) to_stages: bool,
}

impl Interceptor for Check {
    fn call(&mut self, request: Request<()>) -> Result<Request<()>, Status> {
        let named = request.metadata().get(CLUSTER_ID_HEADER);
        if named.is_some_and(|id| id.as_bytes() == self.cluster.id.as_bytes()) {
            let stages = self.stages.borrow();
            let Some(token) = stages.token.as_ref().filter(|_| self.to_stages) else {
                return Ok(request);
            };
            let carried = request.metadata().get(STAGE_TOKEN_HEADER);
            if carried.is_some_and(|t| same_secret(t.as_bytes(), token.as_bytes())) {
                return Ok(request);
            }
            return Err(to_status_as(
                tonic::Code::PermissionDenied,
                &Error::new(
                    self.stage,
                    ErrorKind::InvalidRequest(format!(
                        "refused a call without the token of the stages served here \
                         ({STAGE_TOKEN_HEADER}): they answer only the processes the director \
                         recruited for epoch {}",
                        stages.epoch().map_or(0, |e| e.0)
                    )),
                ),
            ));
        }
        let why = match named {
            None => format!(
                "refused a call without a cluster id ({CLUSTER_ID_HEADER}); this server is of \
                 cluster {}",
                self.cluster
            ),
            Some(id) => format!(
                "refused a call for cluster {}; this server is of cluster {}",
                String::from_utf8_lossy(id.as_bytes()),
                self.cluster
            ),
        };
        // The code for a generic client: the caller is not allowed here, whatever it sent.
        Err(to_status_as(
            tonic::Code::PermissionDenied,
            &Error::new(self.stage, ErrorKind::InvalidRequest(why)),
        ))
    }
}
