//! The HTTP/1.1 reverse proxy on the public port.
//!
//! Each request takes a lease on a worker from the dispatcher, is sent upstream on a
//! keep-alive connection of that worker, and streams back; the lease and the connection
//! are given back when the response body ends. Upgrades (WebSocket) become a byte tunnel
//! that holds its lease for its whole life.
//!
//! This half of `molt run` owns everything a request touches and nothing else: it reads
//! the pool only through the snapshot the supervisor publishes into [`dispatch`], and
//! tells the supervisor what it saw only by sending events (ARCHITECTURE.md).

/// The client's socket under hyper: request framing, header and keep-alive timeouts.
pub(crate) mod conn;
/// Least-busy routing, the bounded request queue, and worker leases.
pub(crate) mod dispatch;
/// Binding the public port and handing it to the accept loop.
pub(crate) mod listen;
/// Response bodies from a worker to a client, read ahead of a slow client.
mod relay;
/// Request bodies read whole before a worker is leased: memory, then a temporary file.
mod spool;
/// Connections from molt to its workers, and the idle ones kept for reuse.
mod upstream;

use std::convert::Infallible;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http_body_util::Either;
use hyper::body::{Body, Frame, Incoming, SizeHint};
use hyper::header::{self, HeaderMap, HeaderName, HeaderValue};
use hyper::http::{Request, Response, StatusCode, Version};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::upgrade::OnUpgrade;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::AsyncWriteExt as _;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch};

use crate::observe::event;
use crate::run::event::Event;
use crate::run::proxy::conn::{ClientIo, Finished, Shared, Timeouts};
use crate::run::proxy::dispatch::{Dispatcher, Lease, Overload};
use crate::run::proxy::relay::ProxyBody;
use crate::run::proxy::spool::{SpoolError, Spooled};
use crate::run::proxy::upstream::{Upstream, UpstreamBody};

/// A request head larger than this gets 431, as nginx's and most servers' limits do.
const MAX_HEADER_SIZE: usize = 64 * 1024;

/// Pause after an accept error such as EMFILE, so that running out of descriptors does
/// not become a busy loop; service resumes once connections close.
const ACCEPT_ERROR_PAUSE: Duration = Duration::from_millis(100);

/// Seconds a client is told to wait before retrying an overloaded molt.
const RETRY_AFTER_SECS: &str = "1";

/// What every request handler shares.
pub(crate) struct Proxy {
    pub(crate) dispatcher: Arc<Dispatcher>,
    /// Tells the supervisor about a worker that outlived `MOLT_REQUEST_TIMEOUT`.
    pub(crate) events: mpsc::UnboundedSender<Event>,
    pub(crate) request_timeout: Option<Duration>,
    /// Read request bodies whole before leasing a worker (`MOLT_BUFFER_REQUESTS`).
    pub(crate) buffer_requests: bool,
    /// `MOLT_MAX_BODY`: larger request bodies get 413.
    pub(crate) max_body: u64,
    /// `MOLT_HEADER_TIMEOUT` and `MOLT_KEEPALIVE_TIMEOUT`.
    pub(crate) timeouts: Timeouts,
}

/// Accepts connections until shutdown, then waits for the open ones to finish and tells
/// the supervisor.
pub(crate) async fn serve(
    listener: TcpListener,
    proxy: Arc<Proxy>,
    shutdown: watch::Receiver<bool>,
) {
    let mut stop = shutdown.clone();
    // Every connection task holds a clone of `open`; `recv` returns None once all are gone.
    let (open, mut all_closed) = mpsc::channel::<()>(1);
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _peer)) => {
                    let _ = stream.set_nodelay(true);
                    let conn = serve_connection(stream, Arc::clone(&proxy), shutdown.clone());
                    let open = open.clone();
                    tokio::spawn(async move {
                        conn.await;
                        drop(open);
                    });
                }
                Err(err) => {
                    event!(Warn, "accept_error", error = err);
                    if !matches!(err.kind(), io::ErrorKind::ConnectionAborted | io::ErrorKind::Interrupted) {
                        tokio::time::sleep(ACCEPT_ERROR_PAUSE).await;
                    }
                }
            },
            () = until_set(&mut stop) => break,
        }
    }
    // Stop accepting at once: the platform routes new requests elsewhere.
    drop(listener);
    drop(open);
    let _ = all_closed.recv().await;
    let _ = proxy.events.send(Event::ProxyIdle);
}

/// Resolves once the flag is set (or its sender is gone, which also means stop).
async fn until_set(flag: &mut watch::Receiver<bool>) {
    let _ = flag.wait_for(|set| *set).await;
}

async fn serve_connection(
    stream: TcpStream,
    proxy: Arc<Proxy>,
    mut shutdown: watch::Receiver<bool>,
) {
    let shared = Shared::new();
    let mut io = ClientIo::new(stream, Arc::clone(&shared), proxy.timeouts);
    let service = {
        let shared = Arc::clone(&shared);
        service_fn(move |req| {
            let (smuggled, finished) = shared.dispatch();
            let shared = Arc::clone(&shared);
            let proxy = Arc::clone(&proxy);
            Box::pin(async move {
                let response = if smuggled {
                    // RFC 9112 section 6.3: a server MAY reject such a request, and a
                    // worker behind a proxy might frame it by its length.
                    event!(
                        Info,
                        "bad_request",
                        status = 400,
                        reason = "length_and_chunked"
                    );
                    let mut response = error_response(StatusCode::BAD_REQUEST);
                    response
                        .headers_mut()
                        .insert(header::CONNECTION, HeaderValue::from_static("close"));
                    response
                } else {
                    handle(req, proxy, &shared).await
                };
                Ok::<_, Infallible>(response.map(|body| Tracked {
                    body,
                    _finished: finished,
                }))
            })
        })
    };
    // One hyper connection per run of requests: an idle connection is parked (see
    // `ClientIo`), hyper hands the socket back with its buffers freed, and the next request
    // gets a fresh one.
    loop {
        tokio::select! {
            ready = io.wait_for_request() => if !ready { return },
            () = until_set(&mut shutdown) => return,
        }
        let mut conn = Box::pin(
            http1::Builder::new()
                .timer(TokioTimer::new())
                .max_header_size(MAX_HEADER_SIZE)
                // A client that shuts down its sending side after a whole request still
                // reads the response.
                .half_close(true)
                .serve_connection(TokioIo::new(io), service.clone()),
        );
        let mut stopping = false;
        let ended = loop {
            tokio::select! {
                ended = std::future::poll_fn(|cx| conn.as_mut().poll_without_shutdown(cx)) => break ended,
                () = until_set(&mut shutdown), if !stopping => {
                    // Finish the request in flight, then close instead of keeping the
                    // connection alive.
                    conn.as_mut().graceful_shutdown();
                    stopping = true;
                }
            }
        };
        if let Err(err) = ended {
            event!(Debug, "client_error", error = err);
            return;
        }
        let parts = Pin::into_inner(conn).into_parts();
        io = parts.io.into_inner();
        if let Some((upstream, lease)) = shared.take_upgrade() {
            // Boxed: the tunnel's state is not carried by every parked connection.
            Box::pin(tunnel(io, parts.read_buf, upstream, lease)).await;
            return;
        }
        if !io.resume(parts.read_buf) || stopping {
            // hyper ended the connection (the client closed it, or asked to): close it.
            return;
        }
    }
}

/// A response body that marks its request finished when hyper is done with it.
struct Tracked {
    body: ProxyBody,
    /// Dropped with the body.
    _finished: Finished,
}

impl Body for Tracked {
    type Data = <ProxyBody as Body>::Data;
    type Error = <ProxyBody as Body>::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        Pin::new(&mut self.body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

async fn handle(
    mut req: Request<Incoming>,
    proxy: Arc<Proxy>,
    shared: &Shared,
) -> Response<ProxyBody> {
    if let Some(status) = refusal(&req) {
        return error_response(status);
    }
    let upgrade = wants_upgrade(req.headers());
    prepare_request(&mut req, upgrade);
    if content_length(req.headers()).is_some_and(|len| len > proxy.max_body) {
        return error_response(StatusCode::PAYLOAD_TOO_LARGE);
    }
    let req = if proxy.buffer_requests && !req.body().is_end_stream() {
        let (head, body) = req.into_parts();
        match Spooled::read(body, proxy.max_body).await {
            Ok(body) => Request::from_parts(head, Either::Right(body)),
            Err(SpoolError::TooLarge) => return error_response(StatusCode::PAYLOAD_TOO_LARGE),
            // The client is gone or sent a broken body: nothing to forward.
            Err(SpoolError::Client(err)) => {
                event!(Debug, "client_error", error = err);
                return error_response(StatusCode::BAD_REQUEST);
            }
            Err(SpoolError::CannotSpool { path, source }) => {
                event!(Warn, "spool_error", path = path.display(), error = source);
                let mut response = error_response(StatusCode::SERVICE_UNAVAILABLE);
                response.headers_mut().insert(
                    header::RETRY_AFTER,
                    HeaderValue::from_static(RETRY_AFTER_SECS),
                );
                return response;
            }
        }
    } else {
        req.map(Either::Left)
    };

    let (lease, conn, mut response) = match exchange(&proxy, req).await {
        Ok(exchanged) => exchanged,
        Err(failure) => return failure,
    };
    if upgrade && response.status() == StatusCode::SWITCHING_PROTOCOLS {
        // The connection becomes a tunnel once hyper has written this response and
        // handed the socket back (see `serve_connection`).
        shared.upgraded(hyper::upgrade::on(&mut response), lease);
        return response.map(|_| ProxyBody::empty());
    }
    strip_hop_by_hop(response.headers_mut(), false);
    response.map(|body| ProxyBody::relayed(body, conn, lease))
}

/// Sends the request to a worker and returns the response head with what it holds.
///
/// A request goes to a second worker only when the first refused the connection, so the
/// worker cannot have seen it (the first then takes no more requests); it goes to a fresh connection when a kept-alive one was
/// found closed before the request was written. Any failure after the request was sent
/// is final (502): the worker may have acted on it, and a request that crashes workers
/// must not be handed to the next one.
async fn exchange(
    proxy: &Proxy,
    req: Request<UpstreamBody>,
) -> Result<(Lease, Upstream, Response<Incoming>), Response<ProxyBody>> {
    let mut req = req;
    let mut retried = false;
    loop {
        let lease = proxy.dispatcher.acquire().await.map_err(overloaded)?;
        let worker = lease.slot().id;
        let slot = lease.slot();
        let mut conn = match slot.upstreams.connect(slot.addr).await {
            Ok(conn) => conn,
            Err(err) => {
                event!(Warn, "connect_error", worker = worker, error = err);
                // Dead (not yet reaped) or no longer listening: route nothing more there,
                // and have the supervisor replace it.
                if lease.slot().mark_refused() {
                    let _ = proxy.events.send(Event::Refused { id: worker });
                }
                if retried {
                    return Err(error_response(StatusCode::BAD_GATEWAY));
                }
                retried = true;
                continue;
            }
        };
        let sent = conn.send.try_send_request(req);
        // With no request timeout, the wait is unbounded.
        let limit = proxy.request_timeout.unwrap_or(Duration::MAX);
        let Ok(sent) = tokio::time::timeout(limit, sent).await else {
            // A stuck worker (as uWSGI's harakiri and Unicorn's timeout treat it): the
            // client gets 504 and the supervisor kills and replaces the worker.
            event!(
                Warn,
                "request_timeout",
                worker = worker,
                status = 504,
                timeout_ms = limit.as_millis()
            );
            let _ = proxy.events.send(Event::Stuck { id: worker });
            return Err(error_response(StatusCode::GATEWAY_TIMEOUT));
        };
        match sent {
            Ok(response) => return Ok((lease, conn, response)),
            Err(mut err) => {
                // Either way the worker's other idle connections are suspect: it closed
                // this one as it was taken, or it may be dying (a fresh connection to a
                // dead worker is refused, and the request retried elsewhere).
                lease.slot().upstreams.clear();
                let Some(unsent) = err.take_message() else {
                    lease.slot().check_exiting();
                    return Err(upstream_failed(worker, &err.into_error()));
                };
                req = unsent;
            }
        }
    }
}

/// Copies bytes both ways between an upgraded client connection and the worker's; `early`
/// is what the client sent after its request before the socket was handed back.
async fn tunnel(mut client: ClientIo, early: Bytes, upstream: OnUpgrade, lease: Lease) {
    let Ok(upstream) = upstream.await else {
        return;
    };
    let mut upstream = TokioIo::new(upstream);
    if !early.is_empty() && upstream.write_all(&early).await.is_err() {
        return;
    }
    let _ = tokio::io::copy_bidirectional(&mut client, &mut upstream).await;
    drop(lease);
}

fn upstream_failed(worker: u64, err: &hyper::Error) -> Response<ProxyBody> {
    event!(
        Warn,
        "upstream_error",
        worker = worker,
        status = 502,
        error = err
    );
    error_response(StatusCode::BAD_GATEWAY)
}

fn overloaded(overload: Overload) -> Response<ProxyBody> {
    match overload {
        Overload::QueueFull { queued } => {
            event!(
                Warn,
                "overload",
                status = 503,
                reason = "queue_full",
                queue = queued
            );
        }
        Overload::QueueTimeout => {
            event!(Warn, "overload", status = 503, reason = "queue_timeout");
        }
    }
    let mut response = error_response(StatusCode::SERVICE_UNAVAILABLE);
    response.headers_mut().insert(
        header::RETRY_AFTER,
        HeaderValue::from_static(RETRY_AFTER_SECS),
    );
    response
}

/// molt's own responses: a status and its reason, nothing about the pool.
fn error_response(status: StatusCode) -> Response<ProxyBody> {
    let reason = status.canonical_reason().unwrap_or("Error");
    let mut response = Response::new(ProxyBody::full(format!("{reason}\n")));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    response
}

/// The request's declared body length, when it declares one.
fn content_length(headers: &HeaderMap) -> Option<u64> {
    headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse().ok())
}

/// Whether the client asks to switch protocols (WebSocket).
fn wants_upgrade(headers: &HeaderMap) -> bool {
    headers.contains_key(header::UPGRADE)
        && headers
            .get_all(header::CONNECTION)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .any(|token| token.trim().eq_ignore_ascii_case("upgrade"))
}

/// Why a request must not reach a worker, when hyper let it through: RFC 9112 asks a
/// server to refuse these, and a worker behind a proxy might read them differently from
/// molt, which is what request smuggling is made of.
fn refusal<B>(req: &Request<B>) -> Option<StatusCode> {
    let headers = req.headers();
    // hyper decodes a body whose last coding is chunked; any other coding (gzip,
    // chunked) or chunked twice would reach the worker altered.
    let codings: Vec<String> = headers
        .get_all(header::TRANSFER_ENCODING)
        .iter()
        .flat_map(|v| v.to_str().unwrap_or("?").split(','))
        .map(|c| c.trim().to_ascii_lowercase())
        .filter(|c| !c.is_empty())
        .collect();
    if !codings.is_empty() && codings != ["chunked"] {
        return Some(if codings.iter().filter(|c| *c == "chunked").count() > 1 {
            StatusCode::BAD_REQUEST
        } else {
            StatusCode::NOT_IMPLEMENTED
        });
    }
    let uri = req.uri();
    let method = req.method();
    // Authority form is for CONNECT only, asterisk form for OPTIONS only.
    if uri.scheme().is_none() && uri.authority().is_some() && method != hyper::Method::CONNECT {
        return Some(StatusCode::BAD_REQUEST);
    }
    if uri.path() == "*" && method != hyper::Method::OPTIONS {
        return Some(StatusCode::BAD_REQUEST);
    }
    // HTTP/1.1 requires exactly one valid Host (RFC 9112 section 3.2).
    if req.version() == Version::HTTP_11 {
        let mut hosts = headers.get_all(header::HOST).iter();
        let (Some(host), None) = (hosts.next(), hosts.next()) else {
            return Some(StatusCode::BAD_REQUEST);
        };
        let valid = host
            .to_str()
            .ok()
            .and_then(|h| h.parse::<hyper::http::uri::Authority>().ok())
            .is_some_and(|a| !a.as_str().contains('@') && valid_port(a.as_str()));
        if !valid {
            return Some(StatusCode::BAD_REQUEST);
        }
    }
    None
}

/// Whether the port of a `host[:port]` (or `[v6]:port`), if any, is a number.
fn valid_port(authority: &str) -> bool {
    let after_host = authority
        .rsplit_once(']')
        .map_or(authority, |(_, rest)| rest);
    after_host
        .rsplit_once(':')
        .is_none_or(|(_, port)| port.is_empty() || port.parse::<u16>().is_ok())
}

/// Makes the client's request fit to send to a worker.
fn prepare_request(req: &mut Request<Incoming>, upgrade: bool) {
    // An absolute-form target names the host itself, which then replaces Host (RFC 9112
    // section 3.2.2); the worker gets the usual origin form.
    if let (Some(_), Some(authority)) = (req.uri().scheme(), req.uri().authority()) {
        if let Ok(host) = HeaderValue::from_str(authority.as_str()) {
            req.headers_mut().insert(header::HOST, host);
        }
        let origin = req
            .uri()
            .path_and_query()
            .map_or("/", hyper::http::uri::PathAndQuery::as_str)
            .to_owned();
        if let Ok(origin) = origin.parse() {
            *req.uri_mut() = origin;
        }
    }
    *req.version_mut() = Version::HTTP_11;
    let headers = req.headers_mut();
    strip_hop_by_hop(headers, upgrade);
    if !headers.contains_key("x-request-start") {
        // APM tools and dyno autoscalers measure queue time from this header; the
        // router sets it on Heroku, and molt sets it elsewhere.
        let micros = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_micros());
        if let Ok(value) = HeaderValue::from_str(&format!("t={micros}")) {
            headers.insert(HeaderName::from_static("x-request-start"), value);
        }
    }
}

/// Removes the headers that describe one connection (RFC 9110 section 7.6.1) rather
/// than the message, including any the `Connection` header names. An upgrade keeps
/// `Upgrade` and `Connection: upgrade`, which the worker needs to accept it.
fn strip_hop_by_hop(headers: &mut HeaderMap, upgrade: bool) {
    let named: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|token| HeaderName::from_bytes(token.trim().as_bytes()).ok())
        .collect();
    for name in named {
        // A client cannot make molt drop Host: the worker needs it, and an HTTP/1.1
        // request without it is invalid.
        if !(upgrade && name == header::UPGRADE) && name != header::HOST {
            headers.remove(name);
        }
    }
    for name in [
        header::CONNECTION,
        HeaderName::from_static("keep-alive"),
        HeaderName::from_static("proxy-connection"),
        header::TE,
        header::TRAILER,
        header::TRANSFER_ENCODING,
        header::UPGRADE,
    ] {
        if !(upgrade && name == header::UPGRADE) {
            headers.remove(name);
        }
    }
    if upgrade {
        headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (k, v) in pairs {
            map.append(
                HeaderName::from_bytes(k.as_bytes()).expect("valid name"),
                HeaderValue::from_str(v).expect("valid value"),
            );
        }
        map
    }

    #[test]
    fn hop_by_hop_headers_are_removed() {
        let mut map = headers(&[
            ("connection", "keep-alive, x-secret"),
            ("keep-alive", "timeout=5"),
            ("x-secret", "1"),
            ("te", "trailers"),
            ("transfer-encoding", "chunked"),
            ("host", "example.com"),
            ("x-request-id", "abc"),
        ]);
        strip_hop_by_hop(&mut map, false);
        let mut left: Vec<&str> = map.keys().map(HeaderName::as_str).collect();
        left.sort_unstable();
        assert_eq!(left, ["host", "x-request-id"]);
    }

    #[test]
    fn upgrades_keep_what_the_worker_needs() {
        let mut map = headers(&[
            ("connection", "keep-alive, Upgrade"),
            ("upgrade", "websocket"),
            ("sec-websocket-key", "k"),
        ]);
        assert!(wants_upgrade(&map));
        strip_hop_by_hop(&mut map, true);
        assert_eq!(
            map.get("upgrade").map(HeaderValue::as_bytes),
            Some(&b"websocket"[..])
        );
        assert_eq!(
            map.get("connection").map(HeaderValue::as_bytes),
            Some(&b"upgrade"[..])
        );
        assert!(map.contains_key("sec-websocket-key"));
        assert!(!wants_upgrade(&headers(&[("upgrade", "websocket")])));
    }
}
