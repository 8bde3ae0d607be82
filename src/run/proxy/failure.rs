//! Every way a request can fail before or while a worker serves it, and the one place
//! that turns a failure into its status, its log line and molt's own response (as
//! pingora's `fail_to_proxy` does). The status follows the failure's source: the client
//! 4xx, overload 503, the worker 502, a stuck worker 504.
//!
//! molt's own responses say a status and its reason and nothing about the pool.

use std::fmt::Write as _;
use std::io;
use std::path::PathBuf;
use std::time::Duration;

use hyper::http::StatusCode;

use crate::observe::event;
use crate::run::proxy::dispatch::Overload;
use crate::run::proxy::message::{self, Name, Response, Value};
use crate::run::proxy::relay::ProxyBody;

/// Seconds a client is told to wait before retrying an overloaded molt.
const RETRY_AFTER_SECS: &str = "1";

/// Why a request failed.
#[derive(Debug)]
pub(crate) enum Failure {
    /// The head is one molt does not forward.
    Refused(Refusal),
    /// Both `Content-Length` and `Transfer-Encoding`: RFC 9112 section 6.3 lets a server
    /// reject it, and a worker behind a proxy might frame it by its length. The
    /// connection closes, since what follows cannot be framed with certainty.
    LengthAndChunked,
    /// The head was not whole within `MOLT_HEADER_TIMEOUT` of its first byte.
    HeaderTimeout,
    /// The body is larger than `MOLT_MAX_BODY` (declared, or counted while spooled).
    BodyTooLarge,
    /// The client broke off or sent a malformed body, while molt read it first or sent
    /// it on.
    ClientBody(Box<dyn std::error::Error + Send + Sync>),
    /// The body could not be written to the spool file (a full disk, a size limit).
    Spool { path: PathBuf, source: io::Error },
    /// No worker could take the request.
    Overloaded(Overload),
    /// The worker refused the connection, and so did the one tried after it.
    Unreachable { worker: u64 },
    /// The worker broke the exchange after the request was sent; it may have acted on
    /// it, so it is not retried.
    Upstream {
        worker: u64,
        error: crate::run::proxy::client::Error,
    },
    /// The worker's response head is one molt does not forward (see
    /// `head::prepare_response`); its connection is not reused.
    BadResponse { worker: u64, reason: &'static str },
    /// The worker did not answer within `MOLT_REQUEST_TIMEOUT`; it is killed.
    Timeout { worker: u64, limit: Duration },
}

/// What in a request head makes molt refuse it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Refusal {
    /// A head that is no HTTP/1 request head (httparse refuses it, or its method, target
    /// or a header does not parse).
    MalformedHead,
    /// A head over 64 KiB, or with more than 100 header lines.
    HeadTooLarge,
    /// A version other than HTTP/1.0 and HTTP/1.1 (an HTTP/2 preface among them).
    Version,
    /// `Content-Length` that is no number, a list, or lines that disagree.
    BadLength,
    /// `Transfer-Encoding` whose last coding is not `chunked`: the body's end is unknown.
    ChunkedNotLast,
    /// `Transfer-Encoding` in an HTTP/1.0 request (RFC 9112 section 6.1: faulty framing).
    CodingInHttp10,
    /// A transfer coding other than a single `chunked`, which would reach the worker
    /// altered (hyper decodes only chunked).
    UnknownCoding,
    /// `chunked` given twice.
    ChunkedTwice,
    /// CONNECT, which asks a forward proxy for a tunnel.
    Connect,
    /// An authority-form target on a method other than CONNECT.
    AuthorityForm,
    /// An asterisk-form target on a method other than OPTIONS.
    AsteriskForm,
    /// HTTP/1.1 without exactly one Host (RFC 9112 section 3.2).
    HostCount,
    /// A Host that is not a valid authority, or carries userinfo.
    HostInvalid,
}

impl Refusal {
    fn status(self) -> StatusCode {
        match self {
            Refusal::HeadTooLarge => StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            Refusal::Version => StatusCode::HTTP_VERSION_NOT_SUPPORTED,
            Refusal::UnknownCoding | Refusal::Connect => StatusCode::NOT_IMPLEMENTED,
            Refusal::MalformedHead
            | Refusal::BadLength
            | Refusal::ChunkedNotLast
            | Refusal::CodingInHttp10
            | Refusal::ChunkedTwice
            | Refusal::AuthorityForm
            | Refusal::AsteriskForm
            | Refusal::HostCount
            | Refusal::HostInvalid => StatusCode::BAD_REQUEST,
        }
    }

    /// The connection closes after the answer: the head, or where its body ends, could
    /// not be read, so nothing after it can be framed.
    fn closes(self) -> bool {
        matches!(
            self,
            Refusal::MalformedHead
                | Refusal::HeadTooLarge
                | Refusal::Version
                | Refusal::BadLength
                | Refusal::ChunkedNotLast
                | Refusal::CodingInHttp10
        )
    }

    fn name(self) -> &'static str {
        match self {
            Refusal::MalformedHead => "malformed_head",
            Refusal::HeadTooLarge => "head_too_large",
            Refusal::Version => "http_version",
            Refusal::BadLength => "content_length",
            Refusal::ChunkedNotLast => "chunked_not_last",
            Refusal::CodingInHttp10 => "coding_in_http_1_0",
            Refusal::UnknownCoding => "unknown_transfer_coding",
            Refusal::ChunkedTwice => "chunked_twice",
            Refusal::Connect => "connect",
            Refusal::AuthorityForm => "authority_form",
            Refusal::AsteriskForm => "asterisk_form",
            Refusal::HostCount => "host_count",
            Refusal::HostInvalid => "host_invalid",
        }
    }
}

/// What molt answers for a failure.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Answer {
    status: StatusCode,
    /// `Retry-After`: the failure is molt's load, and passes.
    retry_after: bool,
    /// `Connection: close`: the connection cannot carry another request.
    close: bool,
}

impl Failure {
    fn answer(&self) -> Answer {
        let (status, retry_after, close) = match self {
            Failure::Refused(refusal) => (refusal.status(), false, refusal.closes()),
            Failure::LengthAndChunked => (StatusCode::BAD_REQUEST, false, true),
            Failure::HeaderTimeout => (StatusCode::REQUEST_TIMEOUT, false, true),
            Failure::BodyTooLarge => (StatusCode::PAYLOAD_TOO_LARGE, false, false),
            Failure::ClientBody(_) => (StatusCode::BAD_REQUEST, false, false),
            Failure::Spool { .. } | Failure::Overloaded(_) => {
                (StatusCode::SERVICE_UNAVAILABLE, true, false)
            }
            Failure::Unreachable { .. }
            | Failure::Upstream { .. }
            | Failure::BadResponse { .. } => (StatusCode::BAD_GATEWAY, false, false),
            Failure::Timeout { .. } => (StatusCode::GATEWAY_TIMEOUT, false, false),
        };
        Answer {
            status,
            retry_after,
            close,
        }
    }

    /// The failure's log line. What the client did wrong is Info, so that an operator
    /// sees why a client got its 4xx; what molt or a worker could not do is Warn.
    fn log(&self, status: StatusCode) {
        let status = status.as_u16();
        match self {
            Failure::Refused(refusal) => {
                event!(
                    Info,
                    "bad_request",
                    status = status,
                    reason = refusal.name()
                );
            }
            Failure::LengthAndChunked => event!(
                Info,
                "bad_request",
                status = status,
                reason = "length_and_chunked"
            ),
            Failure::HeaderTimeout => event!(Info, "header_timeout", status = status),
            Failure::BodyTooLarge => {
                event!(
                    Info,
                    "bad_request",
                    status = status,
                    reason = "body_too_large"
                );
            }
            Failure::ClientBody(error) => event!(
                Info,
                "bad_request",
                status = status,
                reason = if malformed_body(error.as_ref()) {
                    "malformed_body"
                } else {
                    "incomplete_body"
                },
                error = error
            ),
            Failure::Spool { path, source } => event!(
                Warn,
                "spool_error",
                status = status,
                path = path.display(),
                error = source
            ),
            Failure::Overloaded(Overload::QueueFull { queued }) => event!(
                Warn,
                "overload",
                status = status,
                reason = "queue_full",
                queue = queued
            ),
            Failure::Overloaded(Overload::QueueTimeout) => {
                event!(Warn, "overload", status = status, reason = "queue_timeout");
            }
            Failure::Overloaded(Overload::Closed) => {
                event!(Warn, "overload", status = status, reason = "no_worker");
            }
            Failure::Unreachable { worker } => event!(
                Warn,
                "upstream_error",
                worker = worker,
                status = status,
                reason = "refused"
            ),
            Failure::Upstream { worker, error } => event!(
                Warn,
                "upstream_error",
                worker = worker,
                status = status,
                error = error
            ),
            Failure::BadResponse { worker, reason } => event!(
                Warn,
                "upstream_error",
                worker = worker,
                status = status,
                reason = reason
            ),
            Failure::Timeout { worker, limit } => event!(
                Warn,
                "request_timeout",
                worker = worker,
                status = status,
                timeout_ms = limit.as_millis()
            ),
        }
    }
}

/// Whether a request body failed because its framing was broken (a bad chunk size, a
/// malformed trailer), rather than because the client went away.
fn malformed_body(error: &(dyn std::error::Error + 'static)) -> bool {
    let mut source = Some(error);
    while let Some(err) = source {
        if let Some(io) = err.downcast_ref::<io::Error>() {
            return matches!(
                io.kind(),
                io::ErrorKind::InvalidData | io::ErrorKind::InvalidInput
            );
        }
        source = err.source();
    }
    false
}

/// Logs the failure and returns molt's response to it.
pub(crate) fn respond(failure: &Failure) -> Response<ProxyBody> {
    let answer = failure.answer();
    failure.log(answer.status);
    let mut response = Response::new(answer.status, ProxyBody::full(body(answer.status)));
    let headers = &mut response.headers;
    headers.append(
        message::CONTENT_TYPE,
        Value::from_static("text/plain; charset=utf-8"),
    );
    if answer.retry_after {
        headers.append(
            Name::of("retry-after"),
            Value::from_static(RETRY_AFTER_SECS),
        );
    }
    if answer.close {
        headers.append(message::CONNECTION, Value::from_static("close"));
    }
    response
}

/// Logs the failure and returns molt's response as bytes, for the one failure answered on
/// the raw socket (the header timeout: there is no request to answer).
pub(crate) fn respond_raw(failure: &Failure) -> Vec<u8> {
    let answer = failure.answer();
    failure.log(answer.status);
    let body = body(answer.status);
    let mut head = format!(
        "HTTP/1.1 {} {}\r\ncontent-type: text/plain; charset=utf-8\r\ncontent-length: {}\r\n",
        answer.status.as_u16(),
        reason(answer.status),
        body.len()
    );
    if answer.retry_after {
        let _ = write!(head, "retry-after: {RETRY_AFTER_SECS}\r\n");
    }
    if answer.close {
        head.push_str("connection: close\r\n");
    }
    head.push_str("\r\n");
    let mut bytes = head.into_bytes();
    bytes.extend_from_slice(body.as_bytes());
    bytes
}

fn reason(status: StatusCode) -> &'static str {
    status.canonical_reason().unwrap_or("Error")
}

/// The body of every molt response: the status's reason and nothing else.
fn body(status: StatusCode) -> String {
    format!("{}\n", reason(status))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn answer(status: u16, retry_after: bool, close: bool) -> Answer {
        Answer {
            status: StatusCode::from_u16(status).expect("a valid status"),
            retry_after,
            close,
        }
    }

    fn client_error() -> Box<dyn std::error::Error + Send + Sync> {
        Box::new(io::Error::new(
            io::ErrorKind::InvalidData,
            "invalid chunk size",
        ))
    }

    /// The whole status table: each failure's status and headers, in one place.
    #[test]
    fn every_failure_has_its_status() {
        let io = || io::Error::other("disk full");
        let cases = [
            (
                Failure::Refused(Refusal::UnknownCoding),
                answer(501, false, false),
            ),
            (
                Failure::Refused(Refusal::ChunkedTwice),
                answer(400, false, false),
            ),
            (
                Failure::Refused(Refusal::Connect),
                answer(501, false, false),
            ),
            (
                Failure::Refused(Refusal::AuthorityForm),
                answer(400, false, false),
            ),
            (
                Failure::Refused(Refusal::AsteriskForm),
                answer(400, false, false),
            ),
            (
                Failure::Refused(Refusal::HostCount),
                answer(400, false, false),
            ),
            (
                Failure::Refused(Refusal::HostInvalid),
                answer(400, false, false),
            ),
            (Failure::LengthAndChunked, answer(400, false, true)),
            (Failure::HeaderTimeout, answer(408, false, true)),
            (Failure::BodyTooLarge, answer(413, false, false)),
            (
                Failure::ClientBody(client_error()),
                answer(400, false, false),
            ),
            (
                Failure::Spool {
                    path: PathBuf::from("/tmp"),
                    source: io(),
                },
                answer(503, true, false),
            ),
            (
                Failure::Overloaded(Overload::QueueFull { queued: 3 }),
                answer(503, true, false),
            ),
            (
                Failure::Overloaded(Overload::QueueTimeout),
                answer(503, true, false),
            ),
            (
                Failure::Overloaded(Overload::Closed),
                answer(503, true, false),
            ),
            (
                Failure::Unreachable { worker: 1 },
                answer(502, false, false),
            ),
            (
                Failure::Upstream {
                    worker: 1,
                    error: crate::run::proxy::client::Error::ClosedBeforeHead,
                },
                answer(502, false, false),
            ),
            (
                Failure::BadResponse {
                    worker: 1,
                    reason: "length_and_chunked",
                },
                answer(502, false, false),
            ),
            (
                Failure::Timeout {
                    worker: 1,
                    limit: Duration::from_secs(1),
                },
                answer(504, false, false),
            ),
        ];
        for (failure, expected) in cases {
            assert_eq!(failure.answer(), expected, "{failure:?}");
            let response = respond(&failure);
            assert_eq!(response.status, expected.status, "{failure:?}");
            let header = |name| response.headers.get(name);
            assert_eq!(
                header(Name::of("retry-after")),
                expected.retry_after.then_some(&b"1"[..]),
                "{failure:?}"
            );
            assert_eq!(
                header(message::CONNECTION),
                expected.close.then_some(&b"close"[..]),
                "{failure:?}"
            );
        }
    }

    #[test]
    fn the_raw_answer_is_the_same_response_as_bytes() {
        assert_eq!(
            respond_raw(&Failure::HeaderTimeout),
            b"HTTP/1.1 408 Request Timeout\r\ncontent-type: text/plain; charset=utf-8\r\n\
              content-length: 16\r\nconnection: close\r\n\r\nRequest Timeout\n"
        );
    }
}
