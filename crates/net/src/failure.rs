//! A strata-core [`Error`] across the wire: in a failed call's gRPC status, as a `Failure`
//! message in the status details, so a remote caller sees the stage and kind a local caller
//! would (`Fenced` with both epochs, `OutOfOrder` with both versions, an I/O error's kind,
//! ...).

use std::sync::Arc;

use prost::Message;
use strata_core::{Epoch, Error, ErrorKind, Stage, Version};
use tonic::{Code, Status};

use crate::proto::{self, failure::Kind};

/// The tag every [`proto::Failure`] carries: "STRATAF1". Status details without it are not
/// read as a failure (see `failure.proto`).
const FAILURE_TAG: u64 = 0x5354_5241_5441_4631;

fn stage_to_wire(stage: Stage) -> proto::Stage {
    match stage {
        Stage::TxnBuilder => proto::Stage::TxnBuilder,
        Stage::CommitProxy => proto::Stage::CommitProxy,
        Stage::Sequencer => proto::Stage::Sequencer,
        Stage::Resolver => proto::Stage::Resolver,
        Stage::Log => proto::Stage::Log,
        Stage::Storage => proto::Stage::Storage,
        Stage::Director => proto::Stage::Director,
        Stage::Coordinator => proto::Stage::Coordinator,
        // A stage added to strata-core before it is added here: the caller's own stage is
        // the best guess left, and `from_wire` falls back to it.
        _ => proto::Stage::Unspecified,
    }
}

fn stage_from_wire(stage: proto::Stage) -> Option<Stage> {
    Some(match stage {
        proto::Stage::Unspecified => return None,
        proto::Stage::TxnBuilder => Stage::TxnBuilder,
        proto::Stage::CommitProxy => Stage::CommitProxy,
        proto::Stage::Sequencer => Stage::Sequencer,
        proto::Stage::Resolver => Stage::Resolver,
        proto::Stage::Log => Stage::Log,
        proto::Stage::Storage => Stage::Storage,
        proto::Stage::Director => Stage::Director,
        proto::Stage::Coordinator => Stage::Coordinator,
    })
}

/// The gRPC code that best says what `kind` means to a generic gRPC client (the details say
/// it exactly).
fn code(kind: &ErrorKind) -> Code {
    match kind {
        ErrorKind::Fenced { .. }
        | ErrorKind::OutOfOrder { .. }
        | ErrorKind::Duplicate { .. }
        | ErrorKind::Poisoned(_) => Code::FailedPrecondition,
        ErrorKind::TooOld { .. } | ErrorKind::FutureVersion { .. } => Code::OutOfRange,
        ErrorKind::Conflict => Code::Aborted,
        ErrorKind::WrongShard { .. } | ErrorKind::InvalidRequest(_) | ErrorKind::Wire(_) => {
            Code::InvalidArgument
        }
        ErrorKind::Overloaded(_) => Code::ResourceExhausted,
        ErrorKind::Unavailable(_) => Code::Unavailable,
        ErrorKind::Timeout { .. } => Code::DeadlineExceeded,
        ErrorKind::Corruption(_) => Code::DataLoss,
        _ => Code::Internal,
    }
}

/// The most bytes of one text an error carries across: status texts travel in HTTP/2
/// trailers, whose total size the receiver bounds (16 KiB by default), and a longer one would
/// turn a definite refusal into a lost answer.
const TEXT_BYTES_MAX: usize = 2_048;

/// `text`, cut to at most [`TEXT_BYTES_MAX`] bytes on a character boundary, saying so.
fn bounded(text: &str) -> String {
    if text.len() <= TEXT_BYTES_MAX {
        return text.to_owned();
    }
    let mut end = TEXT_BYTES_MAX;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}... ({} bytes cut)", &text[..end], text.len() - end)
}

fn kind_to_wire(kind: &ErrorKind) -> Kind {
    match kind {
        ErrorKind::Fenced { request, current } => Kind::Fenced(proto::Fenced {
            request: request.0,
            current: current.0,
        }),
        ErrorKind::TooOld { version, oldest } => Kind::TooOld(proto::TooOld {
            version: version.0,
            oldest: oldest.0,
        }),
        ErrorKind::FutureVersion { version, newest } => Kind::FutureVersion(proto::FutureVersion {
            version: version.0,
            newest: newest.0,
        }),
        ErrorKind::Conflict => Kind::Conflict(true),
        ErrorKind::OutOfOrder { previous, last } => Kind::OutOfOrder(proto::OutOfOrder {
            previous: previous.0,
            last: last.0,
        }),
        ErrorKind::Duplicate { version, last } => Kind::Duplicate(proto::Duplicate {
            version: version.0,
            last: last.0,
        }),
        ErrorKind::WrongShard { key } => Kind::WrongShard(bounded(key)),
        ErrorKind::InvalidRequest(why) => Kind::InvalidRequest(bounded(why)),
        ErrorKind::Overloaded(why) => Kind::Overloaded(bounded(why)),
        ErrorKind::Unavailable(why) => Kind::Unavailable(bounded(why)),
        ErrorKind::Timeout { what, after_ms } => Kind::Timeout(proto::Timeout {
            what: bounded(what),
            after_ms: *after_ms,
        }),
        ErrorKind::Corruption(why) => Kind::Corruption(bounded(why)),
        ErrorKind::Poisoned(why) => Kind::Poisoned(bounded(why)),
        ErrorKind::Io(e) => Kind::Io(proto::Io {
            os_code: e.raw_os_error(),
            message: bounded(&e.to_string()),
        }),
        other => Kind::Other(bounded(&other.to_string())),
    }
}

fn kind_from_wire(kind: Kind) -> ErrorKind {
    match kind {
        Kind::Fenced(f) => ErrorKind::Fenced {
            request: Epoch(f.request),
            current: Epoch(f.current),
        },
        Kind::TooOld(t) => ErrorKind::TooOld {
            version: Version(t.version),
            oldest: Version(t.oldest),
        },
        Kind::FutureVersion(f) => ErrorKind::FutureVersion {
            version: Version(f.version),
            newest: Version(f.newest),
        },
        Kind::Conflict(_) => ErrorKind::Conflict,
        Kind::OutOfOrder(o) => ErrorKind::OutOfOrder {
            previous: Version(o.previous),
            last: Version(o.last),
        },
        Kind::Duplicate(d) => ErrorKind::Duplicate {
            version: Version(d.version),
            last: Version(d.last),
        },
        Kind::WrongShard(key) => ErrorKind::WrongShard { key },
        Kind::InvalidRequest(why) => ErrorKind::InvalidRequest(why),
        // A kind this side has no message for may mean "maybe done" (a timed-out
        // transaction): never read it as a definite refusal.
        Kind::Other(why) => ErrorKind::Unavailable(why),
        Kind::Overloaded(why) => ErrorKind::Overloaded(why),
        Kind::Unavailable(why) => ErrorKind::Unavailable(why),
        Kind::Timeout(t) => ErrorKind::Timeout {
            what: t.what,
            after_ms: t.after_ms,
        },
        Kind::Corruption(why) => ErrorKind::Corruption(why),
        Kind::Poisoned(why) => ErrorKind::Poisoned(why),
        Kind::Io(io) => {
            // The same OS error when there was one (so `raw_os_error` and `kind` survive),
            // with the remote text kept beside it.
            // The kind of the same OS error when there was one (both ends run on Linux), with
            // the remote text, which already names the code.
            let error = match io.os_code {
                Some(code) => {
                    std::io::Error::new(std::io::Error::from_raw_os_error(code).kind(), io.message)
                }
                None => std::io::Error::other(io.message),
            };
            ErrorKind::Io(Arc::new(error))
        }
    }
}

/// `error` as a failed call's status: a code for generic gRPC clients, the error's text as
/// the message, and the whole error in the details.
pub(crate) fn to_status(error: &Error) -> Status {
    to_status_as(code(&error.kind), error)
}

/// `error` as a message of its own, for an answer that carries one failure per item (a batch
/// of commits).
pub(crate) fn to_failure(error: &Error) -> proto::Failure {
    proto::Failure {
        tag: FAILURE_TAG,
        stage: stage_to_wire(error.stage) as i32,
        kind: Some(kind_to_wire(&error.kind)),
    }
}

/// The error `failure` carries, `None` when it is not a Strata failure (no tag, no kind).
/// `stage` stands in for a stage this build does not know.
pub(crate) fn from_failure(stage: Stage, failure: proto::Failure) -> Option<Error> {
    if failure.tag != FAILURE_TAG {
        return None;
    }
    let kind = failure.kind?;
    let failed = proto::Stage::try_from(failure.stage)
        .ok()
        .and_then(stage_from_wire)
        .unwrap_or(stage);
    Some(Error::new(failed, kind_from_wire(kind)))
}

/// [`to_status`] with the gRPC `code` given instead of the one the kind maps to.
pub(crate) fn to_status_as(code: Code, error: &Error) -> Status {
    Status::with_details(
        code,
        bounded(&error.to_string()),
        to_failure(error).encode_to_vec().into(),
    )
}

/// The error a failed call's `status` carries. A status without a readable `Failure` (from
/// the transport: the server unreachable, the connection lost, a message over the size
/// limit) is an `Unavailable` error of `stage`, whose call may or may not have taken effect.
pub(crate) fn from_status(stage: Stage, peer: &str, status: &Status) -> Error {
    if let Some(error) = proto::Failure::decode(status.details())
        .ok()
        .and_then(|failure| from_failure(stage, failure))
    {
        return error;
    }
    // A server that refused this process's certificate: it read no call on the connection
    // (the handshake ends before the first call is read), so the refusal is final and known.
    if let Some(refused) = crate::tls::TlsFailure::of(status).filter(|f| f.refusal) {
        return Error::new(
            stage,
            ErrorKind::InvalidRequest(format!("{peer}: the TLS handshake failed: {refused}")),
        );
    }
    // A call whose connection could not be made again was never sent: a server that will
    // not speak HTTP/2 is final (as at the first connection), anything else is not.
    if let Some(failed) = crate::client::cause_of::<crate::h2conn::ConnectFailed>(status) {
        let text = format!(
            "{peer}: {failed}: {}; the call was not sent",
            crate::client::causes(failed.cause())
        );
        return Error::new(
            stage,
            if failed.is_final() {
                ErrorKind::InvalidRequest(text)
            } else {
                ErrorKind::Unavailable(text)
            },
        );
    }
    // Without the server's own failure nothing says the call was refused before it took
    // effect: a connection lost after a push was made durable reads the same as one lost
    // before. So every such status is `Unavailable`: the outcome is unknown.
    let kind = ErrorKind::Unavailable(format!(
        "{peer}: no answer ({:?}: {}); the call may or may not have taken effect",
        status.code(),
        // The transport's own causes (a connection reset, a protocol error) when it has them:
        // its message alone is often only "transport error".
        std::error::Error::source(status)
            .map_or_else(|| status.message().to_owned(), crate::client::causes)
    ));
    Error::new(stage, kind)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn round_trip(error: Error) -> Error {
        from_status(Stage::Sequencer, "peer", &to_status(&error))
    }

    #[test]
    fn every_kind_keeps_its_stage_fields_and_text() {
        let kinds = vec![
            ErrorKind::Fenced {
                request: Epoch(3),
                current: Epoch(4),
            },
            ErrorKind::TooOld {
                version: Version(5),
                oldest: Version(9),
            },
            ErrorKind::FutureVersion {
                version: Version(12),
                newest: Version(10),
            },
            ErrorKind::Conflict,
            ErrorKind::OutOfOrder {
                previous: Version(7),
                last: Version(6),
            },
            ErrorKind::Duplicate {
                version: Version(6),
                last: Version(8),
            },
            ErrorKind::WrongShard {
                key: "k\\x01".into(),
            },
            ErrorKind::InvalidRequest("bad".into()),
            ErrorKind::Overloaded("queue full".into()),
            ErrorKind::Unavailable("stopped".into()),
            ErrorKind::Timeout {
                what: "a sync".into(),
                after_ms: 250,
            },
            ErrorKind::Corruption("crc".into()),
            ErrorKind::Poisoned("disk full".into()),
        ];
        for kind in kinds {
            let error = Error::new(Stage::Log, kind);
            let back = round_trip(error.clone());
            assert_eq!(back.stage, Stage::Log, "{error}");
            assert_eq!(back.to_string(), error.to_string());
            assert_eq!(
                std::mem::discriminant(&back.kind),
                std::mem::discriminant(&error.kind),
                "{error}"
            );
        }
        let fenced = round_trip(Error::new(
            Stage::Log,
            ErrorKind::Fenced {
                request: Epoch(3),
                current: Epoch(4),
            },
        ));
        assert!(matches!(
            fenced.kind,
            ErrorKind::Fenced { request, current } if request == Epoch(3) && current == Epoch(4)
        ));
        assert!(fenced.is_fenced());
    }

    #[test]
    fn a_kind_without_a_message_of_its_own_is_never_a_definite_refusal() {
        let timed_out = Error::new(
            Stage::TxnBuilder,
            ErrorKind::TransactionTimedOut {
                timeout: std::time::Duration::from_millis(200),
                attempts: 2,
                last_error: None,
            },
        );
        let back = round_trip(timed_out.clone());
        assert_eq!(back.stage, Stage::TxnBuilder);
        assert!(matches!(back.kind, ErrorKind::Unavailable(_)), "{back}");
        assert!(back.to_string().contains("timed out"), "{back}");
    }

    #[test]
    fn a_long_text_is_cut_to_fit_the_trailers_and_keeps_its_kind() {
        let key = "é".repeat(6_000);
        let status = to_status(&Error::new(Stage::Storage, ErrorKind::WrongShard { key }));
        assert!(
            status.message().len() < TEXT_BYTES_MAX + 40,
            "{}",
            status.message().len()
        );
        assert!(status.details().len() < TEXT_BYTES_MAX + 64);
        let back = from_status(Stage::Log, "peer", &status);
        let ErrorKind::WrongShard { key } = &back.kind else {
            panic!("{back}")
        };
        assert!(
            key.starts_with("éé") && key.ends_with("bytes cut)"),
            "{key}"
        );
        assert_eq!(back.stage, Stage::Storage);
    }

    #[test]
    fn an_io_error_keeps_its_os_error() {
        let local = Error::io(Stage::Log, std::io::Error::from_raw_os_error(28));
        let back = round_trip(local);
        let ErrorKind::Io(io) = &back.kind else {
            panic!("{back}")
        };
        assert_eq!(io.kind(), std::io::ErrorKind::StorageFull);
        assert_eq!(back.to_string().matches("os error 28").count(), 1, "{back}");
    }

    #[test]
    fn a_transport_status_is_the_callers_stage_unavailable() {
        let status = Status::unavailable("connection refused");
        let e = from_status(Stage::Log, "log at 127.0.0.1:1", &status);
        assert_eq!(e.stage, Stage::Log);
        assert!(matches!(e.kind, ErrorKind::Unavailable(_)), "{e}");
        assert!(e.to_string().contains("127.0.0.1:1"), "{e}");
        assert!(e.to_string().contains("may or may not"), "{e}");
        // Details that are not a Failure are not trusted either, and no code alone makes a
        // definite refusal: a proxy between the two ends may have sent it after the call
        // took effect.
        let junk = Status::with_details(Code::Internal, "x", vec![0xff, 0xff, 0xff].into());
        let e = from_status(Stage::Resolver, "peer", &junk);
        assert!(matches!(e.kind, ErrorKind::Unavailable(_)), "{e}");
        // A proxy's own google.rpc.Status { code: 9, message: "x" } decodes as a Failure with
        // a stage and a kind: without the tag it is still not trusted.
        let foreign = proto::Failure {
            tag: 0,
            stage: 9,
            kind: Some(Kind::Fenced(proto::Fenced::default())),
        };
        let status = Status::with_details(Code::Unavailable, "x", foreign.encode_to_vec().into());
        let e = from_status(Stage::Log, "peer", &status);
        assert!(matches!(e.kind, ErrorKind::Unavailable(_)), "{e}");
        for code in [
            Code::ResourceExhausted,
            Code::PermissionDenied,
            Code::InvalidArgument,
        ] {
            let e = from_status(Stage::Log, "peer", &Status::new(code, "policed"));
            assert!(matches!(e.kind, ErrorKind::Unavailable(_)), "{code:?}: {e}");
        }
    }
}
