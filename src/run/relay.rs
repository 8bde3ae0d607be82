//! Response bodies on their way from a worker to a client.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body_util::BodyExt as _;
use hyper::body::{Body, Frame, Incoming, SizeHint};
use tokio::sync::{mpsc, Semaphore};

use crate::run::dispatch::{Lease, Upstream};

/// Bytes of a response molt reads from a worker ahead of the client. A response that
/// fits is read whole as fast as the worker writes it, and the worker is free for the
/// next request while a slow client is still reading; larger ones hold the worker only
/// for their last part.
const RESPONSE_BUFFER: usize = 1024 * 1024;

/// A response body: molt's own, or a worker's, relayed from [`relay`].
pub(crate) struct ProxyBody {
    kind: Kind,
}

enum Kind {
    Full(Option<Bytes>),
    Relayed {
        frames: mpsc::UnboundedReceiver<Result<Frame<Bytes>, hyper::Error>>,
        /// Bytes [`relay`] may read ahead; given back as the client takes them.
        budget: Arc<Semaphore>,
        /// What is left of a body of known length.
        remaining: Option<u64>,
        done: bool,
    },
}

impl ProxyBody {
    pub(crate) fn empty() -> Self {
        ProxyBody {
            kind: Kind::Full(None),
        }
    }

    pub(crate) fn full(text: String) -> Self {
        ProxyBody {
            kind: Kind::Full(Some(Bytes::from(text))),
        }
    }

    /// Starts relaying a worker's response body; the lease and the connection go back as
    /// soon as the worker has written all of it.
    pub(crate) fn relayed(body: Incoming, conn: Upstream, lease: Lease) -> Self {
        let (tx, frames) = mpsc::unbounded_channel();
        let budget = Arc::new(Semaphore::new(RESPONSE_BUFFER));
        let remaining = body.size_hint().exact();
        tokio::spawn(relay(body, conn, lease, tx, Arc::clone(&budget)));
        ProxyBody {
            kind: Kind::Relayed {
                frames,
                budget,
                remaining,
                done: false,
            },
        }
    }
}

/// Reads a worker's response body as fast as the worker writes it, up to
/// [`RESPONSE_BUFFER`] bytes ahead of the client. Streams (server-sent events, chunked
/// responses) still go out frame by frame as they come.
async fn relay(
    mut body: Incoming,
    conn: Upstream,
    lease: Lease,
    frames: mpsc::UnboundedSender<Result<Frame<Bytes>, hyper::Error>>,
    budget: Arc<Semaphore>,
) {
    loop {
        match body.frame().await {
            None => {
                // The connection goes back before the lease, so that the request the
                // worker is handed next finds it.
                lease.slot().put_upstream(conn);
                drop(lease);
                return;
            }
            Some(Err(err)) => {
                // The worker broke off mid-response: the connection is not reusable.
                drop(conn);
                drop(lease);
                let _ = frames.send(Err(err));
                return;
            }
            Some(Ok(frame)) => {
                let len = frame.data_ref().map_or(0, Bytes::len).min(RESPONSE_BUFFER);
                let permits = u32::try_from(len).expect("RESPONSE_BUFFER fits in u32");
                if permits > 0 {
                    // Closed when the client is gone.
                    let Ok(taken) = budget.acquire_many(permits).await else {
                        return;
                    };
                    taken.forget();
                }
                if frames.send(Ok(frame)).is_err() {
                    return;
                }
            }
        }
    }
}

impl Body for ProxyBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        match &mut self.kind {
            Kind::Full(bytes) => Poll::Ready(bytes.take().map(|b| Ok(Frame::data(b)))),
            Kind::Relayed {
                frames,
                budget,
                remaining,
                done,
            } => match frames.poll_recv(cx) {
                Poll::Pending => Poll::Pending,
                Poll::Ready(None) => {
                    *done = true;
                    Poll::Ready(None)
                }
                Poll::Ready(Some(Ok(frame))) => {
                    let len = frame.data_ref().map_or(0, Bytes::len);
                    budget.add_permits(len.min(RESPONSE_BUFFER));
                    if let Some(left) = remaining {
                        *left = left.saturating_sub(len as u64);
                    }
                    Poll::Ready(Some(Ok(frame)))
                }
                Poll::Ready(Some(Err(err))) => {
                    *done = true;
                    Poll::Ready(Some(Err(err)))
                }
            },
        }
    }

    fn is_end_stream(&self) -> bool {
        match &self.kind {
            Kind::Full(bytes) => bytes.is_none(),
            Kind::Relayed { done, .. } => *done,
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.kind {
            Kind::Full(Some(bytes)) => SizeHint::with_exact(bytes.len() as u64),
            Kind::Full(None) => SizeHint::with_exact(0),
            Kind::Relayed { remaining, .. } => {
                remaining.map_or_else(SizeHint::default, SizeHint::with_exact)
            }
        }
    }
}

impl Drop for ProxyBody {
    fn drop(&mut self) {
        // The client is gone (or never wanted the body, as for HEAD): a relay waiting for
        // buffer room stops, dropping the worker's connection if it was mid-message.
        if let Kind::Relayed { budget, .. } = &self.kind {
            budget.close();
        }
    }
}
