//! Connections from molt to its workers. [`IdleUpstreams`] keeps one worker's
//! kept-alive connections (its dispatch slot holds one); [`IdleUpstreams::connect`]
//! takes the freshest of them or opens a new one (with quick acknowledgements once the
//! worker has been seen to need them), and a response that ends whole puts its
//! connection back (`relay`). The rest of the request
//! path goes through these and nothing else.

use std::io;
use std::net::SocketAddr;
use std::os::fd::{AsRawFd as _, RawFd};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::task::{ready, Context, Poll};
use std::time::{Duration, Instant};

use bytes::BytesMut;
use http_body_util::Either;
use nix::errno::Errno;
use nix::sys::socket::MsgFlags;
use tokio::io::{AsyncRead as _, AsyncWrite as _, ReadBuf};
use tokio::net::TcpStream;

use crate::observe::event;
use crate::run::proxy::conn::RequestBody;
use crate::run::proxy::spool::Spooled;

/// What a request sent to a worker carries: the client's body as it arrives, or the
/// whole body read first (see [`crate::run::proxy::spool`]).
// Boxed: most requests have no `Spooled` (152 bytes), and the request is held in the
// future of each one in flight.
pub(crate) type UpstreamBody = Either<RequestBody, Box<Spooled>>;

/// A keep-alive connection to a worker, with what has been read from it and not yet
/// taken; `client` speaks HTTP/1.1 on it.
pub(crate) struct Upstream {
    pub(super) io: QuickAck,
    pub(super) read: BytesMut,
    /// How much the next read asks for (see `client`).
    pub(super) read_size: usize,
    /// The [`IdleUpstreams`] generation it was opened in; it is not reused once that has
    /// passed.
    generation: u64,
    /// The proxy thread that opened it, whose runtime's reactor its socket is registered
    /// with.
    thread: usize,
    /// Nagle's algorithm is off (see [`Upstream::no_delay`]).
    no_delay: bool,
}

/// A connection whose response switched protocols (WebSocket), for the tunnel: the socket
/// and what the worker sent after its response head.
pub(crate) struct Upgraded {
    pub(crate) stream: TcpStream,
    pub(crate) early: BytesMut,
}

/// The first read of a connection asks for this much.
const FIRST_READ: usize = 8 * 1024;

impl Upstream {
    fn new(stream: TcpStream, acks: Arc<AckMode>) -> Self {
        Upstream {
            io: QuickAck {
                stream,
                unacked: false,
                waiting_since: None,
                mode: acks,
            },
            read: BytesMut::new(),
            read_size: FIRST_READ,
            generation: 0,
            thread: proxy_thread(),
            no_delay: false,
        }
    }

    /// Turns Nagle's algorithm off, once, before a request's second write: it holds a
    /// small segment back while one sent before is unacknowledged, which the worker, still
    /// reading the request, may delay by 40 ms. A request written in one piece (most of
    /// them: the head, with a small body) has nothing unacknowledged before it (the last
    /// response acknowledged the last request), so it needs no `setsockopt`, which in
    /// front of a server that closes every connection was one per request.
    pub(super) fn no_delay(&mut self) {
        if !self.no_delay {
            self.no_delay = true;
            let _ = self.io.stream.set_nodelay(true);
        }
    }

    /// Whether the worker has ended or broken this idle connection: an idle HTTP/1.1
    /// connection carries nothing from the server, so any byte or end of stream waiting
    /// on it means it cannot take a request. The kernel knows it before the reactor has
    /// told the runtime: the gap in which a request sent to a worker that was just killed
    /// would fail though the worker never held it.
    pub(super) fn is_closed(&self) -> bool {
        !self.read.is_empty() || peer_done(self.io.stream.as_raw_fd())
    }

    pub(super) fn poll_write_vectored(
        &mut self,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        self.io.writing();
        Pin::new(&mut self.io.stream).poll_write_vectored(cx, bufs)
    }

    /// Whether the socket has Nagle's algorithm off, as the kernel says.
    #[cfg(test)]
    pub(super) fn nodelay(&self) -> bool {
        self.io
            .stream
            .nodelay()
            .expect("a connected socket has TCP_NODELAY")
    }

    pub(super) fn into_upgraded(mut self) -> Upgraded {
        // A tunnel's frames are small and come one after another.
        self.no_delay();
        Upgraded {
            stream: self.io.stream,
            early: self.read,
        }
    }
}

/// Most idle keep-alive connections kept per worker, in all of its threads' lists.
const MAX_IDLE_UPSTREAMS: usize = 64;

/// Idle connections older than this are not reused. App servers close idle keep-alive
/// connections after a few seconds (gunicorn after 2 s, Node after 5 s); a request sent
/// just as the worker closes one fails without a way to know whether the worker saw it.
/// Staying under those timeouts keeps that race away, and a new loopback connection is
/// cheap.
const MAX_UPSTREAM_IDLE: Duration = Duration::from_secs(1);

/// Whether anything (bytes, an end of stream, an error) waits on an idle socket.
fn peer_done(socket: RawFd) -> bool {
    let mut byte = [0u8; 1];
    let flags = MsgFlags::MSG_PEEK | MsgFlags::MSG_DONTWAIT;
    !matches!(
        nix::sys::socket::recv(socket, &mut byte, flags),
        Err(Errno::EAGAIN)
    )
}

std::thread_local! {
    /// The proxy thread this is (see `listen::serve_public`); `usize::MAX` elsewhere.
    static PROXY_THREAD: std::cell::Cell<usize> = const { std::cell::Cell::new(usize::MAX) };
}

/// Marks the calling thread as proxy thread `index`.
pub(crate) fn on_proxy_thread(index: usize) {
    PROXY_THREAD.with(|thread| thread.set(index));
}

/// The proxy thread this is, as [`on_proxy_thread`] marked it; `usize::MAX` elsewhere.
pub(crate) fn proxy_thread() -> usize {
    PROXY_THREAD.with(std::cell::Cell::get)
}

/// How many of the idle connections, oldest first, are too old to be reused: the most
/// recent is at the end, and once one is too old, all before it are too.
fn stale(idle: &[Idle]) -> usize {
    // One reading of the clock for the whole search, not one for each look.
    let now = Instant::now();
    idle.partition_point(|idle| now.saturating_duration_since(idle.since) >= MAX_UPSTREAM_IDLE)
}

/// An idle connection, and since when.
struct Idle {
    conn: Upstream,
    since: Instant,
}

/// How many lists of idle connections a worker has: one per proxy thread.
fn shard_count() -> usize {
    static COUNT: std::sync::OnceLock<usize> = std::sync::OnceLock::new();
    *COUNT.get_or_init(super::listen::proxy_threads)
}

/// One proxy thread's idle connections to a worker, most recently used last, on cache
/// lines of their own: another thread's requests never touch them.
#[derive(Default)]
#[repr(align(128))]
struct Shard(Mutex<Vec<Idle>>);

impl Shard {
    fn lock(&self) -> MutexGuard<'_, Vec<Idle>> {
        // Every change under the lock is one push, remove, drain or clear, none of which
        // can panic half-way, so a poisoned lock still guards a whole list.
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// A worker's idle kept-alive connections, one list per proxy thread (by the thread
/// that opened each), so that the threads' requests, each taking a connection and
/// putting it back, do not wait on one lock (docs/benchmarks.md, "Header lines as they
/// arrived", says what that cost).
pub(crate) struct IdleUpstreams {
    shards: Box<[Shard]>,
    /// Raised by [`IdleUpstreams::forget`]: connections opened before it go once used.
    generation: AtomicU64,
    /// Whether the worker's connections ask for quick acknowledgements ([`QuickAck`]).
    acks: Arc<AckMode>,
}

impl Default for IdleUpstreams {
    fn default() -> Self {
        IdleUpstreams {
            shards: (0..shard_count()).map(|_| Shard::default()).collect(),
            generation: AtomicU64::default(),
            acks: Arc::default(),
        }
    }
}

impl IdleUpstreams {
    /// The list of the connections proxy thread `thread` opened.
    fn shard(&self, thread: usize) -> &Shard {
        &self.shards[thread % self.shards.len()]
    }

    /// Takes an idle keep-alive connection, most recently used first, of this proxy
    /// thread's if it has one: another thread's is driven by that thread, which each
    /// request then has to wake.
    pub(crate) fn take(&self) -> Option<Upstream> {
        let here = proxy_thread();
        let own = here % self.shards.len();
        (0..self.shards.len()).find_map(|next| {
            let mut idle = self.shards[(own + next) % self.shards.len()].lock();
            let stale = stale(&idle);
            idle.drain(..stale);
            // One list may hold connections of several threads when there are more
            // threads than lists (a test's, or the supervisor's warm-up).
            while let Some(at) = idle
                .iter()
                .rposition(|idle| idle.conn.thread == here)
                .or_else(|| idle.len().checked_sub(1))
            {
                let Idle { conn, .. } = idle.remove(at);
                if !conn.is_closed() {
                    return Some(conn);
                }
            }
            None
        })
    }

    /// Drops the idle connections too old to be reused: each holds its socket and its
    /// read buffer (8 KiB once used) until a request takes or passes over it, which after
    /// a burst may be never. The supervisor calls it with every memory sample.
    pub(crate) fn drop_stale(&self) {
        for shard in &self.shards {
            let dropped: Vec<Idle> = {
                let mut idle = shard.lock();
                let stale = stale(&idle);
                idle.drain(..stale).collect()
            };
            // After the lock: closing the sockets is system calls.
            drop(dropped);
        }
    }

    /// Returns a connection whose last exchange completed, for reuse.
    pub(crate) fn put(&self, conn: Upstream) {
        if conn.generation != self.generation.load(Ordering::Acquire) {
            return;
        }
        let mut idle = self.shard(conn.thread).lock();
        if idle.len() < MAX_IDLE_UPSTREAMS.div_ceil(self.shards.len()) {
            idle.push(Idle {
                conn,
                since: Instant::now(),
            });
        }
    }

    /// Drops every idle connection (the worker is going away, or one of its connections
    /// broke, which the others may soon do too).
    pub(crate) fn clear(&self) {
        for shard in &self.shards {
            shard.lock().clear();
        }
    }

    /// Drops every idle connection and keeps none in use now once it is done: an adopted
    /// master's child was told to stop, and a server may keep serving the kept-alive
    /// connections it holds (Puma's child does, after TERM, as long as they stay busy), so
    /// only new connections, which go to children still accepting, may follow.
    pub(crate) fn forget(&self) {
        self.generation.fetch_add(1, Ordering::AcqRel);
        self.clear();
    }

    /// How many idle connections there are, in all lists.
    #[cfg(test)]
    fn len(&self) -> usize {
        self.shards.iter().map(|shard| shard.lock().len()).sum()
    }

    /// A ready connection to the worker at `addr`: an idle kept-alive one, else a new one.
    pub(crate) async fn connect(&self, addr: SocketAddr) -> io::Result<Upstream> {
        if let Some(conn) = self.take() {
            return Ok(conn);
        }
        let stream = TcpStream::connect(addr).await?;
        let mut conn = Upstream::new(stream, Arc::clone(&self.acks));
        conn.generation = self.generation.load(Ordering::Acquire);
        Ok(conn)
    }
}

/// Whether a worker's connections ask for quick acknowledgements (see [`QuickAck`]),
/// learned from its first responses and shared by all of its connections.
#[derive(Default)]
struct AckMode {
    /// The worker sent more of a response after molt had read some and waited: it writes
    /// responses in pieces, and the ones after the first may wait for an acknowledgement.
    needed: AtomicBool,
    /// Responses that came whole before molt wrote again, counted up to [`ACK_LEARNING`].
    whole: AtomicU32,
}

/// Responses a worker answers in one piece before its connections stop asking for quick
/// acknowledgements.
const ACK_LEARNING: u32 = 16;

/// A wait for more data this long is taken for a delayed acknowledgement holding it back
/// (Linux delays one by 40 ms at least), once a worker's connections no longer ask.
const ACK_STALL: Duration = Duration::from_millis(30);

impl AckMode {
    fn asking(&self) -> bool {
        self.needed.load(Ordering::Relaxed) || self.whole.load(Ordering::Relaxed) < ACK_LEARNING
    }

    fn need(&self, reason: &str) {
        if !self.needed.swap(true, Ordering::Relaxed) {
            event!(Debug, "quick_acks", reason = reason);
        }
    }

    fn came_whole(&self) {
        if self.whole.load(Ordering::Relaxed) < ACK_LEARNING {
            self.whole.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// A connection to a worker that acknowledges what it receives at once, where the worker
/// needs it.
///
/// Servers that leave Nagle's algorithm on (Python's `http.server` does) write a response
/// head and body as two small segments and hold the second until the first is
/// acknowledged; on a kept-alive connection Linux delays that acknowledgement by up to
/// 40 ms. Every response would then wait 40 ms. Quick-ack mode is not sticky, so it is
/// asked for again each time molt has read data and is about to wait for more: asking
/// also sends the acknowledgement the kernel was holding back.
///
/// Asking costs a `setsockopt` and an acknowledgement segment of its own on every
/// response, which a server that writes each response whole does not need
/// (docs/benchmarks.md, "Where the time goes"). So a worker's connections ask while its
/// first [`ACK_LEARNING`] responses come, and go on asking only if one of them came in
/// pieces (more data after molt had read some and waited, with nothing written by molt in
/// between: a reply to a request comes after a write). Should a worker that answered whole
/// at first later stall (data arriving [`ACK_STALL`] or more after molt began waiting for
/// it, nothing written between), its connections ask from then on; that costs it one
/// delayed response. A slow or streamed body is taken for pieces too, which costs only the
/// asking.
pub(super) struct QuickAck {
    stream: TcpStream,
    /// Data was read since the last read that found nothing.
    unacked: bool,
    /// When a read found nothing more after data, with nothing written since.
    waiting_since: Option<Instant>,
    mode: Arc<AckMode>,
}

impl QuickAck {
    fn quick_ack(&self) {
        let one: nix::libc::c_int = 1;
        // SAFETY: setsockopt reads `size_of::<c_int>()` bytes from a pointer to a live
        // c_int, on a descriptor this stream owns for as long as `self` lives.
        unsafe {
            nix::libc::setsockopt(
                std::os::fd::AsRawFd::as_raw_fd(&self.stream),
                nix::libc::IPPROTO_TCP,
                nix::libc::TCP_QUICKACK,
                std::ptr::from_ref(&one).cast(),
                nix::libc::socklen_t::try_from(std::mem::size_of::<nix::libc::c_int>())
                    .expect("an int's size fits socklen_t"),
            );
        }
    }

    /// Called before each write: the wait after data, if any, ended with a whole
    /// response, and so did data read with no wait after it (a response read in one
    /// piece is not read again once its body is whole).
    fn writing(&mut self) {
        let waited = self.waiting_since.take().is_some();
        if waited || std::mem::take(&mut self.unacked) {
            self.mode.came_whole();
        }
    }
}

impl QuickAck {
    /// Reads what the socket has into `buf`'s free room (which the caller made); 0 at the
    /// end of the stream.
    pub(super) fn poll_read_buf(
        &mut self,
        cx: &mut Context<'_>,
        buf: &mut BytesMut,
    ) -> Poll<io::Result<usize>> {
        let filled = {
            let mut room = ReadBuf::uninit(buf.spare_capacity_mut());
            let read = Pin::new(&mut self.stream).poll_read(cx, &mut room);
            if read.is_pending() && self.unacked {
                self.unacked = false;
                if self.mode.asking() {
                    self.quick_ack();
                }
                self.waiting_since = Some(Instant::now());
            }
            ready!(read)?;
            room.filled().len()
        };
        // SAFETY: `ReadBuf` counts as filled only bytes that were written (initialised),
        // and they lie in `buf`'s spare capacity, right after its initialised length.
        unsafe { buf.set_len(buf.len() + filled) };
        if filled > 0 {
            self.unacked = true;
            if let Some(since) = self.waiting_since.take() {
                if self.mode.asking() {
                    self.mode.need("pieces");
                } else if since.elapsed() >= ACK_STALL {
                    self.mode.need("delayed_ack_stall");
                }
            }
        }
        Poll::Ready(Ok(filled))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_idle_connection_is_done_once_its_peer_sends_or_closes() {
        use std::io::Write as _;
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let ours =
            std::net::TcpStream::connect(listener.local_addr().expect("addr")).expect("connect");
        let (mut theirs, _) = listener.accept().expect("accept");
        let probe = ours.as_raw_fd();
        assert!(!peer_done(probe), "an idle connection");
        theirs.write_all(b"x").expect("write");
        theirs.flush().expect("flush");
        let deadline = Instant::now() + Duration::from_secs(5);
        while !peer_done(probe) {
            assert!(Instant::now() < deadline, "a byte from the peer");
        }
        let ours =
            std::net::TcpStream::connect(listener.local_addr().expect("addr")).expect("connect");
        let (theirs, _) = listener.accept().expect("accept");
        let probe = ours.as_raw_fd();
        drop(theirs);
        let deadline = Instant::now() + Duration::from_secs(5);
        while !peer_done(probe) {
            assert!(Instant::now() < deadline, "the peer's end of stream");
        }
    }

    /// A worker's address that accepts `connections` and holds them open until the task
    /// is dropped.
    async fn worker_holding(
        connections: usize,
    ) -> (
        SocketAddr,
        tokio::task::JoinHandle<Vec<(TcpStream, SocketAddr)>>,
    ) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        let accepted = tokio::spawn(async move {
            let mut held = Vec::new();
            for _ in 0..connections {
                held.push(listener.accept().await.expect("accept"));
            }
            held
        });
        (addr, accepted)
    }

    /// A request takes an idle connection its own proxy thread drives before a more
    /// recent one of another thread's, and another thread's before none.
    #[tokio::test]
    async fn a_request_takes_its_own_threads_connection_first() {
        let (addr, accepted) = worker_holding(2).await;
        let idle = IdleUpstreams::default();
        on_proxy_thread(0);
        let first = idle.connect(addr).await.expect("connect");
        on_proxy_thread(1);
        let second = idle.connect(addr).await.expect("connect");
        idle.put(first);
        idle.put(second);
        on_proxy_thread(0);
        assert_eq!(idle.take().map(|conn| conn.thread), Some(0), "its own");
        assert_eq!(
            idle.take().map(|conn| conn.thread),
            Some(1),
            "then another's"
        );
        assert!(idle.take().is_none());
        on_proxy_thread(usize::MAX);
        drop(accepted);
    }

    /// Idle connections too old to be reused go with the supervisor's next sample, and
    /// with them their buffers, whether or not a request comes to pass over them.
    #[tokio::test]
    async fn stale_idle_connections_are_dropped() {
        let (addr, accepted) = worker_holding(2).await;
        let idle = IdleUpstreams::default();
        let old = idle.connect(addr).await.expect("connect");
        let recent = idle.connect(addr).await.expect("connect");
        idle.put(old);
        idle.put(recent);
        idle.shard(proxy_thread()).lock()[0].since -= MAX_UPSTREAM_IDLE;
        idle.drop_stale();
        assert_eq!(idle.len(), 1, "the old one went, the recent one stays");
        // The worker sees the dropped connection closed.
        let mut held = accepted.await.expect("accepted");
        let (mut worker_side, _) = held.remove(0);
        let mut byte = [0u8; 1];
        let read = tokio::time::timeout(
            Duration::from_secs(5),
            tokio::io::AsyncReadExt::read(&mut worker_side, &mut byte),
        )
        .await;
        assert!(matches!(read, Ok(Ok(0))), "end of stream: {read:?}");
    }

    /// A child of an adopted master that was told to stop may go on serving the
    /// connections it holds (Puma's does): none opened before is reused after.
    #[tokio::test]
    async fn connections_opened_before_forget_are_not_reused() {
        let (addr, accepted) = worker_holding(3).await;
        let idle = IdleUpstreams::default();
        let kept = idle.connect(addr).await.expect("connect");
        idle.put(kept);
        assert!(idle.take().is_some(), "an idle connection is reused");
        let before = idle.connect(addr).await.expect("connect");
        idle.forget();
        idle.put(before);
        assert!(idle.take().is_none(), "one made before forget is not");
        let after = idle.connect(addr).await.expect("connect");
        idle.put(after);
        assert!(idle.take().is_some(), "one made after it is");
        drop(accepted);
    }
    /// A server that answers `requests` requests on one connection, each response written
    /// whole or as a head and then, after a pause, its body.
    async fn serve(listener: tokio::net::TcpListener, requests: usize, in_pieces: bool) {
        use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
        let (mut socket, _) = listener.accept().await.expect("accept");
        let mut buf = vec![0u8; 4096];
        for _ in 0..requests {
            let mut head = Vec::new();
            while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                let n = socket.read(&mut buf).await.expect("read");
                assert!(n > 0, "the request");
                head.extend_from_slice(&buf[..n]);
            }
            let (first, second): (&[u8], &[u8]) =
                (b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n", b"ok");
            if in_pieces {
                socket.write_all(first).await.expect("write");
                tokio::time::sleep(Duration::from_millis(5)).await;
                socket.write_all(second).await.expect("write");
            } else {
                socket
                    .write_all(&[first, second].concat())
                    .await
                    .expect("write");
            }
        }
    }

    async fn exchange(idle: &IdleUpstreams, addr: SocketAddr) {
        use http_body_util::BodyExt as _;
        let conn = idle.connect(addr).await.expect("connect");
        let body: UpstreamBody = Either::Right(Box::new(Spooled::empty()));
        let request = crate::run::proxy::message::Request::test(
            "GET",
            "/",
            hyper::Version::HTTP_11,
            &[("host", "x")],
            body,
        );
        let mut body = crate::run::proxy::client::send(conn, request)
            .await
            .expect("response")
            .body;
        while let Some(frame) = body.frame().await {
            frame.expect("body");
        }
        idle.put(body.take_connection().expect("a kept-alive connection"));
    }

    #[tokio::test]
    async fn a_worker_that_answers_in_pieces_gets_quick_acks_and_one_that_does_not_stops_getting_them(
    ) {
        for in_pieces in [true, false] {
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
                .await
                .expect("bind");
            let addr = listener.local_addr().expect("addr");
            let requests = usize::try_from(ACK_LEARNING).expect("small") + 4;
            let server = tokio::spawn(serve(listener, requests, in_pieces));
            let idle = IdleUpstreams::default();
            assert!(idle.acks.asking(), "a new worker's connections ask");
            for _ in 0..requests {
                exchange(&idle, addr).await;
            }
            assert_eq!(idle.acks.asking(), in_pieces, "in pieces: {in_pieces}");
            server.await.expect("server");
        }
    }
}
