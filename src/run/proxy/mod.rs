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

/// molt's HTTP/1.1 client on a connection to a worker: the request out, the response in.
mod client;
/// molt's HTTP/1.1 server on a client connection: requests in, responses out, timeouts.
pub(crate) mod conn;
/// Least-busy routing, the bounded request queue, and worker leases.
pub(crate) mod dispatch;
/// Every way a request fails, and the one function that answers it.
pub(crate) mod failure;
/// What the HTTP/1.1 server and client read alike: header spans, tokens, chunk sizes.
mod h1;
/// A request head as molt checks and rewrites it before a worker sees it.
mod head;
/// Per-worker in-flight limit learned from latency.
pub(crate) mod limiter;
/// Binding the public port and handing it to the accept loop.
pub(crate) mod listen;
/// Requests and responses as molt's server and client carry them: header lines as they came.
mod message;
/// Response bodies from a worker to a client, read ahead of a slow client.
mod relay;
/// Request bodies read whole before a worker is leased: memory, then a temporary file.
mod spool;
/// Per-thread stashes of the buffers each request takes and gives back.
mod stash;
/// Connections from molt to its workers, and the idle ones kept for reuse.
mod upstream;

use std::future::Future;
use std::io;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Either;
use hyper::body::Body as _;
use hyper::http::StatusCode;
use tokio::io::AsyncWriteExt as _;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch};

use crate::config::UnderscoreHeaders;
use crate::observe::event;
use crate::observe::metrics::Requests;
use crate::run::event::Event;
use crate::run::proxy::conn::{Answer, RequestBody, Timeouts};
use crate::run::proxy::dispatch::{Dispatcher, Lease};
use crate::run::proxy::failure::Failure;
use crate::run::proxy::head::Arrival;
use crate::run::proxy::listen::{Handed, Spread};
use crate::run::proxy::message::{Request, Response};
use crate::run::proxy::relay::ProxyBody;
use crate::run::proxy::spool::{SpoolError, Spooled};
use crate::run::proxy::upstream::{Upgraded, UpstreamBody};

/// Pause after an accept error such as EMFILE, so that running out of descriptors does
/// not become a busy loop; service resumes once connections close.
const ACCEPT_ERROR_PAUSE: Duration = Duration::from_millis(100);

/// What every request handler shares.
pub(crate) struct Proxy {
    pub(crate) dispatcher: Arc<Dispatcher>,
    /// Tells the supervisor about a worker that outlived `MOLT_REQUEST_TIMEOUT`.
    pub(crate) events: mpsc::UnboundedSender<Event>,
    pub(crate) request_timeout: Option<Duration>,
    /// When request bodies are read whole before a worker is leased (`MOLT_BUFFER_REQUESTS`).
    pub(crate) buffering: Buffering,
    /// `MOLT_MAX_BODY`: larger request bodies get 413.
    pub(crate) max_body: u64,
    /// `MOLT_HEADER_TIMEOUT` and `MOLT_KEEPALIVE_TIMEOUT`.
    pub(crate) timeouts: Timeouts,
    /// `MOLT_UNDERSCORE_HEADERS`.
    pub(crate) underscore_headers: UnderscoreHeaders,
    /// What requests count for the metrics listener; `None` when it is off, so that
    /// requests then pay nothing for it.
    pub(crate) metrics: Option<Arc<Requests>>,
}

/// When a request body is read whole before a worker is leased, so that a slow upload
/// holds no worker that serves one request at a time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Buffering {
    Always,
    Never,
    /// Decided per request as it arrives: while a ready worker takes one request at a time
    /// (its fixed or learned capacity is 1; see [`Dispatcher::one_at_a_time`]). Which
    /// worker will take the request is not known before its body is read, and the least
    /// busy one, which it likely goes to, is often the one with the lowest limit.
    WhileOneAtATime,
}

/// Accepts connections until shutdown, then waits for the open ones to finish. Each proxy
/// thread runs one of these on its own runtime, over the same listening socket
/// (`listen::serve_public`), so a connection's tasks stay on the thread that serves it; a
/// connection accepted while another thread holds fewer goes to that one (`Spread`).
pub(crate) async fn serve(
    listener: TcpListener,
    proxy: Arc<Proxy>,
    shutdown: watch::Receiver<bool>,
    (spread, here): (Arc<Spread>, usize),
    mut handed: mpsc::UnboundedReceiver<Handed>,
) {
    let mut stop = shutdown.clone();
    // Every connection task holds a clone of `open`; `recv` returns None once all are gone.
    let (open, mut all_closed) = mpsc::channel::<()>(1);
    loop {
        let (stream, arrival) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => {
                    // The address the client reached; the listener's own is `[::]`.
                    let local = stream.local_addr().unwrap_or(peer);
                    let arrival = Arrival { peer, local };
                    match spread.place(here, stream, arrival) {
                        Some(kept) => kept,
                        None => continue,
                    }
                }
                Err(err) => {
                    // Every thread sees an error such as EMFILE at once: one line says it.
                    if spread.first_error_within(ACCEPT_ERROR_PAUSE) {
                        event!(Warn, "accept_error", error = err);
                    }
                    if !matches!(err.kind(), io::ErrorKind::ConnectionAborted | io::ErrorKind::Interrupted) {
                        tokio::time::sleep(ACCEPT_ERROR_PAUSE).await;
                    }
                    continue;
                }
            },
            Some(Handed { stream, arrival }) = handed.recv() => match TcpStream::from_std(stream) {
                Ok(stream) => (stream, arrival),
                Err(err) => {
                    event!(Warn, "accept_error", error = err);
                    spread.closed(here);
                    continue;
                }
            },
            () = until_set(&mut stop) => break,
        };
        let _ = stream.set_nodelay(true);
        let counted = Counted {
            spread: Arc::clone(&spread),
            here,
            _open: open.clone(),
        };
        // Spawned as it is: an `async` block around it would hold the connection's
        // future twice, once as the block's capture and once as what it awaits (rustc
        // does not overlap the two), a kilobyte more for every open connection.
        tokio::spawn(serve_connection(
            stream,
            arrival,
            Arc::clone(&proxy),
            shutdown.clone(),
            counted,
        ));
    }
    // Stop accepting at once: the platform routes new requests elsewhere.
    drop((listener, handed));
    drop(open);
    let _ = all_closed.recv().await;
}

/// A connection counted open, for the thread's share of the `Spread` and for `serve`'s
/// wait at shutdown, until it is dropped with the connection's task.
struct Counted {
    spread: Arc<Spread>,
    here: usize,
    _open: mpsc::Sender<()>,
}

impl Drop for Counted {
    fn drop(&mut self) {
        self.spread.closed(self.here);
    }
}

/// Resolves once the flag is set (or its sender is gone, which also means stop).
async fn until_set(flag: &mut watch::Receiver<bool>) {
    let _ = flag.wait_for(|set| *set).await;
}

/// A connection's task: `conn::serve` with the proxy as its service. A plain function,
/// not an `async` one, so that the task holds `conn::serve`'s future alone, not also this
/// function's arguments beside it.
fn serve_connection(
    stream: TcpStream,
    arrival: Arrival,
    proxy: Arc<Proxy>,
    shutdown: watch::Receiver<bool>,
    counted: Counted,
) -> impl Future<Output = ()> + Send {
    let timeouts = proxy.timeouts;
    // Not boxed here: `conn::serve` boxes each request's whole exchange with the client
    // (`Connection::respond`), this answer inside it, so that a connection waiting for its
    // next request carries neither.
    let service = move |req: Request<RequestBody>| answer(req, Arc::clone(&proxy), arrival);
    let tunnel: conn::Tunnel =
        |client, early, upstream, lease| Box::pin(tunnel(client, early, upstream, lease));
    conn::serve(stream, timeouts, shutdown, (service, tunnel), counted)
}

/// Answers one request, counting it for the metrics when they are on.
async fn answer(req: Request<RequestBody>, proxy: Arc<Proxy>, arrival: Arrival) -> Answer {
    // Before the head is rewritten: molt adds its own X-Request-Start.
    let metrics = proxy.metrics.clone();
    let arrived = metrics.as_ref().map(|metrics| {
        metrics.arrived(
            req.headers.get(message::X_REQUEST_START),
            std::time::SystemTime::now(),
        );
        std::time::Instant::now()
    });
    let answer = handle(req, proxy, arrival)
        .await
        .unwrap_or_else(|failure| Answer {
            response: failure::respond(&failure),
            upgrade: None,
        });
    if let (Some(metrics), Some(arrived)) = (metrics, arrived) {
        metrics.answered(answer.response.status, arrived.elapsed());
    }
    answer
}

/// Takes one request from the client's head to the worker's response head; every way
/// this can fail is a [`Failure`], which the caller answers.
async fn handle(
    mut req: Request<RequestBody>,
    proxy: Arc<Proxy>,
    arrival: Arrival,
) -> Result<Answer, Failure> {
    if let Some(refusal) = head::refusal(&req) {
        return Err(Failure::Refused(refusal));
    }
    let upgrade = head::wants_upgrade(&req.headers);
    head::prepare_request(&mut req, upgrade, arrival, proxy.underscore_headers);
    if head::content_length(&req.headers).is_some_and(|len| len > proxy.max_body) {
        return Err(Failure::BodyTooLarge);
    }
    let buffer = match proxy.buffering {
        Buffering::Always => true,
        Buffering::Never => false,
        Buffering::WhileOneAtATime => proxy.dispatcher.one_at_a_time(),
    };
    let req = if buffer && !req.body.is_end_stream() {
        let (head, body) = req.split();
        let body = Spooled::read(body, proxy.max_body)
            .await
            .map_err(|err| match err {
                SpoolError::TooLarge => Failure::BodyTooLarge,
                // The client is gone or sent a broken body: nothing to forward.
                SpoolError::Client(err) => Failure::ClientBody(err),
                SpoolError::CannotSpool { path, source } => Failure::Spool { path, source },
            })?;
        head.with(Either::Right(Box::new(body)))
    } else {
        req.map(Either::Left)
    };

    let (lease, mut response) = exchange(&proxy, req).await?;
    if upgrade && response.status == StatusCode::SWITCHING_PROTOCOLS {
        // The connection becomes a tunnel once this response is written.
        let upgrade = response.body.upgraded().map(|upgraded| (upgraded, lease));
        return Ok(Answer {
            response: response.map(|_| ProxyBody::empty()),
            upgrade,
        });
    }
    if let Err(reason) = head::prepare_response(&mut response.headers) {
        let worker = lease.slot().id;
        return Err(Failure::BadResponse { worker, reason });
    }
    Ok(Answer {
        response: response.map(|body| ProxyBody::relayed(body, lease)),
        upgrade: None,
    })
}

/// Sends the request to a worker and returns the response head with what it holds.
///
/// A request goes to a second worker only when the first refused the connection, so the
/// worker cannot have seen it (the first then takes no more requests); it goes to a
/// fresh connection when a kept-alive one was found closed before the request was
/// written. Any failure after the request was sent
/// is final (502): the worker may have acted on it, and a request that crashes workers
/// must not be handed to the next one.
async fn exchange(
    proxy: &Proxy,
    req: Request<UpstreamBody>,
) -> Result<(Lease, Response<client::ResponseBody>), Failure> {
    let mut req = req;
    let mut retried = false;
    loop {
        let asked = proxy.metrics.as_ref().map(|_| std::time::Instant::now());
        let lease = proxy.dispatcher.acquire().await;
        if let (Some(metrics), Some(asked)) = (&proxy.metrics, asked) {
            metrics.queue_wait.observe(asked.elapsed());
        }
        let lease = lease.map_err(Failure::Overloaded)?;
        let worker = lease.slot().id;
        let slot = lease.slot();
        let conn = match slot.upstreams.connect(slot.addr).await {
            Ok(conn) => conn,
            Err(err) => {
                event!(Warn, "connect_error", worker = worker, error = err);
                // Dead (not yet reaped) or no longer listening: route nothing more there,
                // and have the supervisor replace it.
                if lease.slot().mark_refused() {
                    let _ = proxy.events.send(Event::Refused { id: worker });
                }
                if retried {
                    return Err(Failure::Unreachable { worker });
                }
                retried = true;
                continue;
            }
        };
        let sent_at = std::time::Instant::now();
        // Boxed: the exchange is about 1.3 KB, which every request waiting in the queue
        // for a lease would otherwise hold too (the exchange's future from 2,112 bytes to
        // 800; docs/benchmarks.md, "An HTTP/1 client of molt's own").
        let sent = Box::pin(client::send(conn, req));
        // With no request timeout (the default) the wait is unbounded, and no timer is
        // armed for it: one per request, even set past any date, is a clock reading and
        // an entry put into the runtime's timer wheel and taken out again.
        let sent = match proxy.request_timeout {
            None => sent.await,
            Some(limit) => {
                let Ok(sent) = tokio::time::timeout(limit, sent).await else {
                    // A stuck worker (as uWSGI's harakiri and Unicorn's timeout treat it):
                    // the client gets 504 and the supervisor kills and replaces the worker.
                    let _ = proxy.events.send(Event::Stuck { id: worker });
                    return Err(Failure::Timeout { worker, limit });
                };
                sent
            }
        };
        let err = match sent {
            Ok(response) => {
                // Before the lease goes back, so that the next dispatch already has the
                // worker's new limit (see `dispatch`, "A worker's capacity").
                lease.answered(sent_at);
                return Ok((lease, response));
            }
            Err(err) => err,
        };
        // Either way the worker's other idle connections are suspect: it closed this one
        // as it was taken, or it may be dying (a fresh connection to a dead worker is
        // refused, and the request retried elsewhere).
        lease.slot().upstreams.clear();
        match err {
            client::SendError::Unsent(unsent) => req = *unsent,
            client::SendError::ClientBody(error) => return Err(Failure::ClientBody(error)),
            client::SendError::Upstream(error) => {
                lease.slot().check_exiting();
                return Err(Failure::Upstream { worker, error });
            }
        }
    }
}

/// Copies bytes both ways between an upgraded client connection and the worker's; `early`
/// is what the client sent after its request head.
async fn tunnel(mut client: TcpStream, early: Bytes, upstream: Upgraded, lease: Lease) {
    let Upgraded {
        stream: mut upstream,
        early: answered,
    } = upstream;
    // What the worker sent after its 101 (a first WebSocket frame) goes first.
    if !answered.is_empty() && client.write_all(&answered).await.is_err() {
        return;
    }
    if !early.is_empty() && upstream.write_all(&early).await.is_err() {
        return;
    }
    let _ = tokio::io::copy_bidirectional(&mut client, &mut upstream).await;
    drop(lease);
}
