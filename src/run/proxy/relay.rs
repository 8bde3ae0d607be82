//! Response bodies on their way from a worker to a client.
//!
//! A worker's response is read as fast as the worker writes it and forwarded as fast as
//! the client reads it, so a slow reader never keeps a worker busy. What the client has
//! not taken yet is held in memory up to [`RESPONSE_BUFFER`] bytes, then in an unlinked
//! temporary file up to [`MAX_TEMP_FILE`] bytes; past both, or when the file cannot be
//! written, molt stops reading from the worker until the client catches up. Every piece
//! goes to the client over one channel in the order it came, whether its bytes travel in
//! the message or sit in the file, so the order needs no other bookkeeping.

use std::error::Error as StdError;
use std::fs::File;
use std::future::Future as _;
use std::io;
use std::os::unix::fs::FileExt as _;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};

use bytes::Bytes;
use http_body_util::BodyExt as _;
use hyper::body::{Body, Frame, SizeHint};
use tokio::sync::{mpsc, Semaphore, TryAcquireError};
use tokio::task::JoinHandle;

use crate::observe::event;
use crate::run::proxy::client::ResponseBody;
use crate::run::proxy::dispatch::Lease;
use crate::run::proxy::spool::temporary_file;
use crate::run::proxy::upstream::Upstream;

/// Bytes of a response molt holds in memory ahead of the client; more go to a temporary
/// file.
const RESPONSE_BUFFER: usize = 1024 * 1024;

/// Bytes of one response held in a temporary file ahead of the client (nginx's
/// `proxy_max_temp_file_size` default). Past it the worker waits for the client.
const MAX_TEMP_FILE: u64 = 1024 * 1024 * 1024;

/// Responses of at most this known length skip the relay: they are read straight from
/// the worker as hyper writes them, so the head and body leave in one write and no task
/// is spawned. hyper takes a body that small into its write buffer (16 pieces, 400 KiB)
/// whatever the client reads, and the sockets' buffers hold it too, so the worker is
/// still free as soon as it has written it.
const DIRECT_LIMIT: u64 = 64 * 1024;

type BoxError = Box<dyn StdError + Send + Sync>;

/// A response body: molt's own, or a worker's, relayed from [`relay`].
pub(crate) struct ProxyBody {
    kind: Kind,
}

enum Kind {
    Full(Option<Bytes>),
    /// A small body read from the worker as the client takes it; the connection and the
    /// lease go back once all of it is read, or are dropped with the body.
    Direct {
        body: ResponseBody,
        lease: Option<Lease>,
    },
    Relayed(Relayed),
}

/// The client's end of a relay.
struct Relayed {
    chunks: mpsc::UnboundedReceiver<Result<Chunk, BoxError>>,
    /// Bytes [`relay`] may hold in memory; given back as the client takes them.
    budget: Arc<Semaphore>,
    /// The whole budget, which also caps what one frame takes of it.
    memory: usize,
    /// Spilled bytes being read back from the file.
    reading: Option<JoinHandle<io::Result<Bytes>>>,
    /// What is left of a body of known length.
    remaining: Option<u64>,
    done: bool,
}

/// A piece of a response on its way to the client.
enum Chunk {
    /// A frame held in memory; its data holds as many permits of the budget.
    Memory(Frame<Bytes>),
    /// Data written to a temporary file: `len` bytes from `at`.
    Spilled {
        file: Arc<File>,
        at: u64,
        len: usize,
    },
}

/// How a relay ended.
#[derive(Debug, PartialEq)]
struct Outcome {
    /// The worker wrote its whole response, so the connection can be reused.
    whole: bool,
    /// Bytes that went through the temporary file.
    spilled: u64,
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
    pub(crate) fn relayed(mut body: ResponseBody, lease: Lease) -> Self {
        if body.is_end_stream() {
            // Nothing to read (HEAD, 204, 304, an empty body): the worker is done already.
            give_back(body.take_connection(), lease);
            return ProxyBody::empty();
        }
        if body
            .size_hint()
            .exact()
            .is_some_and(|len| len <= DIRECT_LIMIT)
        {
            return ProxyBody {
                kind: Kind::Direct {
                    body,
                    lease: Some(lease),
                },
            };
        }
        Self::read_ahead(
            body,
            RESPONSE_BUFFER,
            MAX_TEMP_FILE,
            move |outcome, mut body| {
                if outcome.spilled > 0 {
                    event!(
                        Debug,
                        "response_spooled",
                        worker = lease.slot().id,
                        bytes = outcome.spilled
                    );
                }
                // One broken off mid-response is not reusable.
                let conn = if outcome.whole {
                    body.take_connection()
                } else {
                    None
                };
                give_back(conn, lease);
            },
        )
    }

    /// Spawns [`relay`] over `body`, holding up to `memory` bytes in memory and `max_file`
    /// in a temporary file ahead of the client; `finished` runs once the relay stops, and
    /// is given the body back.
    fn read_ahead<B>(
        mut body: B,
        memory: usize,
        max_file: u64,
        finished: impl FnOnce(Outcome, B) + Send + 'static,
    ) -> Self
    where
        B: Body<Data = Bytes> + Send + Unpin + 'static,
        B::Error: Into<BoxError> + Send,
    {
        let (tx, chunks) = mpsc::unbounded_channel();
        let budget = Arc::new(Semaphore::new(memory));
        let remaining = body.size_hint().exact();
        let relay_budget = Arc::clone(&budget);
        tokio::spawn(async move {
            let mut spill = Spill {
                file: None,
                len: 0,
                max: max_file,
                failed: false,
            };
            let whole = relay(&mut body, &tx, &relay_budget, memory, &mut spill).await;
            finished(
                Outcome {
                    whole,
                    spilled: spill.len,
                },
                body,
            );
            // The client sees the end of the body only now, after the worker is free.
            drop(tx);
        });
        ProxyBody {
            kind: Kind::Relayed(Relayed {
                chunks,
                budget,
                memory,
                reading: None,
                remaining,
                done: false,
            }),
        }
    }
}

/// Ends a response the worker has written: its connection, if it can carry another
/// request, goes back before the lease, so that the request the worker is handed next
/// finds it.
fn give_back(conn: Option<Upstream>, lease: Lease) {
    if let Some(conn) = conn {
        lease.slot().upstreams.put(conn);
    }
    drop(lease);
}

/// Reads a worker's response body as fast as the worker writes it: into memory while the
/// budget lasts, else into the temporary file, else (both full, or the file failed) it
/// waits for the client. Streams (server-sent events, chunked responses) go out frame by
/// frame as they come. Returns whether the body was read whole; false when the worker
/// broke off or the client is gone.
async fn relay<B>(
    body: &mut B,
    chunks: &mpsc::UnboundedSender<Result<Chunk, BoxError>>,
    budget: &Semaphore,
    memory: usize,
    spill: &mut Spill,
) -> bool
where
    B: Body<Data = Bytes> + Unpin,
    B::Error: Into<BoxError>,
{
    loop {
        let frame = tokio::select! {
            frame = body.frame() => frame,
            // The client is gone: a quiet stream (server-sent events between two events)
            // must not hold its worker until the next event.
            () = chunks.closed() => return false,
        };
        let Some(frame) = frame else {
            break;
        };
        let frame = match frame {
            Ok(frame) => frame,
            Err(err) => {
                let _ = chunks.send(Err(err.into()));
                return false;
            }
        };
        let len = frame.data_ref().map_or(0, Bytes::len).min(memory);
        let permits = u32::try_from(len).expect("the memory budget fits in u32");
        let chunk = match budget.try_acquire_many(permits) {
            Ok(taken) => {
                taken.forget();
                Chunk::Memory(frame)
            }
            // Closed when the client is gone.
            Err(TryAcquireError::Closed) => return false,
            Err(TryAcquireError::NoPermits) => {
                let spilled = match frame.data_ref() {
                    Some(data) => spill.append(data).await,
                    None => None,
                };
                if let Some(spilled) = spilled {
                    spilled
                } else {
                    let Ok(taken) = budget.acquire_many(permits).await else {
                        return false;
                    };
                    taken.forget();
                    Chunk::Memory(frame)
                }
            }
        };
        if chunks.send(Ok(chunk)).is_err() {
            return false;
        }
    }
    true
}

/// The temporary file a response spills to once its memory budget is spent. It is
/// created on first use and closed when the relay and the client have both let go of it.
struct Spill {
    file: Option<(Arc<File>, PathBuf)>,
    /// Bytes written so far; the file is never rewound.
    len: u64,
    /// At most this many bytes are written.
    max: u64,
    /// The file could not be created or written: the relay waits for the client instead.
    failed: bool,
}

impl Spill {
    /// Appends `data` to the file, or returns `None` when the file is full or has failed.
    async fn append(&mut self, data: &Bytes) -> Option<Chunk> {
        let end = self.len + data.len() as u64;
        if self.failed || end > self.max {
            return None;
        }
        if self.file.is_none() {
            match temporary_file("response") {
                Ok((file, path)) => self.file = Some((Arc::new(file), path)),
                Err((path, err)) => {
                    self.fail(&path, &err);
                    return None;
                }
            }
        }
        let (file, path) = self.file.as_ref().expect("opened above");
        let (writer, bytes, at) = (Arc::clone(file), data.clone(), self.len);
        // File writes block; tokio's own file type sends them to the blocking pool too.
        let written = tokio::task::spawn_blocking(move || writer.write_all_at(&bytes, at))
            .await
            .unwrap_or_else(|err| Err(io::Error::other(err)));
        match written {
            Ok(()) => {
                self.len = end;
                Some(Chunk::Spilled {
                    file: Arc::clone(file),
                    at,
                    len: data.len(),
                })
            }
            Err(err) => {
                let path = path.clone();
                self.fail(&path, &err);
                None
            }
        }
    }

    /// Gives up on the file for this response. What was spilled already stays readable:
    /// the chunks the client has yet to read hold the file open.
    fn fail(&mut self, path: &std::path::Path, err: &io::Error) {
        event!(Warn, "spool_error", path = path.display(), error = err);
        self.failed = true;
        self.file = None;
    }
}

fn read_spilled(file: &File, at: u64, len: usize) -> io::Result<Bytes> {
    let mut buf = vec![0; len];
    file.read_exact_at(&mut buf, at)?;
    Ok(Bytes::from(buf))
}

impl Relayed {
    fn poll_frame(&mut self, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        if self.reading.is_none() {
            match ready!(self.chunks.poll_recv(cx)) {
                None => {
                    self.done = true;
                    return Poll::Ready(None);
                }
                Some(Err(err)) => {
                    self.done = true;
                    return Poll::Ready(Some(Err(err)));
                }
                Some(Ok(Chunk::Memory(frame))) => {
                    let len = frame.data_ref().map_or(0, Bytes::len);
                    self.budget.add_permits(len.min(self.memory));
                    self.taken(len);
                    return Poll::Ready(Some(Ok(frame)));
                }
                Some(Ok(Chunk::Spilled { file, at, len })) => {
                    self.reading = Some(tokio::task::spawn_blocking(move || {
                        read_spilled(&file, at, len)
                    }));
                }
            }
        }
        let reading = self.reading.as_mut().expect("a read is in progress");
        let read = ready!(Pin::new(reading).poll(cx));
        self.reading = None;
        match read.unwrap_or_else(|err| Err(io::Error::other(err))) {
            Ok(data) => {
                self.taken(data.len());
                Poll::Ready(Some(Ok(Frame::data(data))))
            }
            Err(err) => {
                self.done = true;
                Poll::Ready(Some(Err(err.into())))
            }
        }
    }

    fn taken(&mut self, len: usize) {
        if let Some(left) = &mut self.remaining {
            *left = left.saturating_sub(len as u64);
        }
    }
}

impl Body for ProxyBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match &mut self.kind {
            Kind::Full(bytes) => Poll::Ready(bytes.take().map(|b| Ok(Frame::data(b)))),
            Kind::Direct { body, lease } => {
                let frame = ready!(Pin::new(&mut *body).poll_frame(cx));
                // The worker is free once it has written the last byte, not only when
                // hyper asks for a frame after it.
                let ended = match &frame {
                    Some(Ok(_)) => body.is_end_stream(),
                    // At the end, or broken off mid-response (then the connection is not
                    // reusable, and `take_connection` says so).
                    None | Some(Err(_)) => true,
                };
                if let Some(lease) = lease.take_if(|_| ended) {
                    give_back(body.take_connection(), lease);
                }
                Poll::Ready(frame)
            }
            Kind::Relayed(relayed) => relayed.poll_frame(cx),
        }
    }

    fn is_end_stream(&self) -> bool {
        match &self.kind {
            Kind::Full(bytes) => bytes.is_none(),
            Kind::Direct { body, .. } => body.is_end_stream(),
            Kind::Relayed(relayed) => relayed.done,
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.kind {
            Kind::Full(Some(bytes)) => SizeHint::with_exact(bytes.len() as u64),
            Kind::Full(None) => SizeHint::with_exact(0),
            Kind::Direct { body, .. } => body.size_hint(),
            Kind::Relayed(relayed) => relayed
                .remaining
                .map_or_else(SizeHint::default, SizeHint::with_exact),
        }
    }
}

impl Drop for ProxyBody {
    fn drop(&mut self) {
        // The client is gone (or never wanted the body, as for HEAD): a relay waiting for
        // buffer room stops, dropping the worker's connection if it was mid-message, and
        // the temporary file goes with the last chunk that refers to it.
        if let Kind::Relayed(relayed) = &self.kind {
            relayed.budget.close();
        }
    }
}

#[cfg(test)]
mod tests {
    use std::convert::Infallible;

    use hyper::HeaderMap;
    use tokio::sync::{oneshot, watch};

    use super::*;

    /// A worker's response body that the test writes frame by frame. `asked` is how many
    /// frames the relay had taken when it last found nothing to read, which tells the test
    /// that the relay has dealt with all of them.
    struct Fed {
        frames: mpsc::UnboundedReceiver<Frame<Bytes>>,
        taken: usize,
        asked: watch::Sender<usize>,
    }

    impl Body for Fed {
        type Data = Bytes;
        type Error = Infallible;

        fn poll_frame(
            mut self: Pin<&mut Self>,
            cx: &mut Context<'_>,
        ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
            match self.frames.poll_recv(cx) {
                Poll::Ready(Some(frame)) => {
                    self.taken += 1;
                    Poll::Ready(Some(Ok(frame)))
                }
                Poll::Ready(None) => Poll::Ready(None),
                Poll::Pending => {
                    self.asked.send_replace(self.taken);
                    Poll::Pending
                }
            }
        }
    }

    struct Worker {
        frames: mpsc::UnboundedSender<Frame<Bytes>>,
        asked: watch::Receiver<usize>,
        finished: oneshot::Receiver<Outcome>,
    }

    impl Worker {
        fn write(&self, data: &'static str) {
            self.frames
                .send(Frame::data(Bytes::from_static(data.as_bytes())))
                .expect("the relay reads until the body ends");
        }

        /// Waits until the relay has dealt with the first `frames` frames.
        async fn handled(&mut self, frames: usize) {
            self.asked
                .wait_for(|&asked| asked == frames)
                .await
                .expect("the relay is running");
        }
    }

    /// A relay holding `memory` bytes in memory and `max_file` in a file.
    fn relay(memory: usize, max_file: u64) -> (Worker, ProxyBody) {
        let (frames, rx) = mpsc::unbounded_channel();
        let (asked, asked_rx) = watch::channel(0);
        let (done, finished) = oneshot::channel();
        let body = Fed {
            frames: rx,
            taken: 0,
            asked,
        };
        let client = ProxyBody::read_ahead(body, memory, max_file, move |outcome, _| {
            let _ = done.send(outcome);
        });
        let worker = Worker {
            frames,
            asked: asked_rx,
            finished,
        };
        (worker, client)
    }

    async fn read(client: &mut ProxyBody) -> String {
        let frame = client
            .frame()
            .await
            .expect("a frame")
            .expect("no error")
            .into_data()
            .expect("a data frame");
        String::from_utf8(frame.to_vec()).expect("test data is text")
    }

    #[tokio::test]
    async fn order_holds_through_memory_file_and_memory_again() {
        let (mut worker, mut client) = relay(8, 1024);
        for data in ["aaaa", "bbbb", "cccc", "dddd"] {
            worker.write(data);
        }
        // Memory takes the first eight bytes, the file the next eight.
        worker.handled(4).await;
        assert_eq!(read(&mut client).await, "aaaa");
        // The client took four bytes from memory: the next frame fits there again, while
        // the one after it goes to the file.
        worker.write("eeee");
        worker.handled(5).await;
        worker.write("ffff");
        let mut trailers = HeaderMap::new();
        trailers.insert("x-checksum", "1".parse().expect("a valid header value"));
        worker
            .frames
            .send(Frame::trailers(trailers.clone()))
            .expect("the relay reads until the body ends");
        drop(worker.frames);
        // The worker is free before the client has read the rest.
        let outcome = worker.finished.await.expect("the relay finished");
        assert_eq!(
            outcome,
            Outcome {
                whole: true,
                spilled: 12
            }
        );
        let mut rest = String::new();
        for _ in 0..5 {
            rest.push_str(&read(&mut client).await);
        }
        assert_eq!(rest, "bbbbccccddddeeeeffff");
        let last = client.frame().await.expect("trailers").expect("no error");
        assert_eq!(last.into_trailers().ok(), Some(trailers));
        assert!(client.frame().await.is_none());
        assert!(client.is_end_stream());
    }

    #[tokio::test]
    async fn without_a_file_the_worker_waits_for_the_client() {
        let (mut worker, mut client) = relay(8, 0);
        worker.write("aaaa");
        worker.write("bbbb");
        worker.handled(2).await;
        worker.write("cccc");
        drop(worker.frames);
        // The third frame waits for room in memory, so the relay cannot have finished.
        assert!(worker.finished.try_recv().is_err());
        assert_eq!(read(&mut client).await, "aaaa");
        assert_eq!(read(&mut client).await, "bbbb");
        assert_eq!(read(&mut client).await, "cccc");
        assert!(client.frame().await.is_none());
        let outcome = worker.finished.await.expect("the relay finished");
        assert_eq!(
            outcome,
            Outcome {
                whole: true,
                spilled: 0
            }
        );
    }

    #[tokio::test]
    async fn a_full_file_makes_the_worker_wait_and_order_holds() {
        let (mut worker, mut client) = relay(4, 8);
        // Memory takes the first frame, the file the next two, and then it is full.
        for data in ["aaaa", "bbbb", "cccc"] {
            worker.write(data);
        }
        worker.handled(3).await;
        worker.write("dddd");
        worker.write("eeee");
        drop(worker.frames);
        let mut all = String::new();
        while let Some(frame) = client.frame().await {
            let data = frame.expect("no error").into_data().expect("data");
            all.push_str(std::str::from_utf8(&data).expect("text"));
        }
        assert_eq!(all, "aaaabbbbccccddddeeee");
        let outcome = worker.finished.await.expect("the relay finished");
        assert_eq!(outcome.spilled, 8);
    }

    #[tokio::test]
    async fn the_relay_stops_when_the_client_goes() {
        // Regression: a relay waiting for room must not hold the worker for a client that
        // left.
        let (mut worker, client) = relay(4, 0);
        worker.write("aaaa");
        worker.handled(1).await;
        worker.write("bbbb");
        drop(client);
        let outcome = worker.finished.await.expect("the relay finished");
        assert!(!outcome.whole);
    }

    #[tokio::test]
    async fn a_quiet_stream_stops_when_the_client_goes() {
        // The worker has sent one event and is quiet: the relay waits on the worker, not
        // on room, and must still let go as soon as the client is gone.
        let (worker, mut client) = relay(1024, 0);
        worker.write("event 1");
        assert_eq!(read(&mut client).await, "event 1");
        drop(client);
        let outcome = tokio::time::timeout(std::time::Duration::from_secs(10), worker.finished)
            .await
            .expect("the relay let go of the worker")
            .expect("the relay finished");
        assert!(!outcome.whole);
    }
}
