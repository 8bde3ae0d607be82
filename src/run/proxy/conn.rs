//! A client connection as molt reads it.
//!
//! hyper parses requests, but two promises of molt's (docs/guarantees.md) need more than it tells: a head
//! that trickles in past the header timeout gets 408 (hyper closes without a word), and a
//! head that carries both `Content-Length` and `Transfer-Encoding` gets 400 (hyper drops
//! the length, reads the body chunked and closes afterwards, RFC 9112 section 6.3's
//! minimum). So [`ClientIo`] sits under hyper and frames the bytes as they are read with
//! [`Framer`]: it knows where each head starts and ends, and what framed its body. It
//! also closes a kept-alive connection left idle past the keep-alive timeout.

use std::future::Future as _;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::time::{Instant, Sleep};

use crate::run::proxy::dispatch::Lease;
use crate::run::proxy::failure::{self, Failure};
use crate::run::proxy::upstream::Upgraded;

/// No request has been found smuggled.
const NONE: u64 = u64::MAX;

/// What the reading side of a connection tells the requests served on it.
pub(crate) struct Shared {
    /// Requests handed to the service so far.
    dispatched: AtomicU64,
    /// Requests whose response is finished (its body dropped by hyper).
    finished: AtomicU64,
    /// Index of the first request whose head declared both a length and a transfer
    /// coding; [`NONE`] if none did.
    smuggled: AtomicU64,
    /// The connection was upgraded (WebSocket): its bytes are no longer HTTP.
    tunnel: AtomicBool,
    /// The worker's side of an upgrade and the lease it holds, for the tunnel.
    upgrade: Mutex<Option<(Upgraded, Lease)>>,
}

impl Shared {
    pub(crate) fn new() -> Arc<Self> {
        Arc::new(Shared {
            dispatched: AtomicU64::new(0),
            finished: AtomicU64::new(0),
            smuggled: AtomicU64::new(NONE),
            tunnel: AtomicBool::new(false),
            upgrade: Mutex::new(None),
        })
    }

    /// Called as hyper hands over the next request: whether its head declared both
    /// `Content-Length` and `Transfer-Encoding`, and a guard to drop once its response
    /// is finished.
    pub(crate) fn dispatch(self: &Arc<Self>) -> (bool, Finished) {
        let index = self.dispatched.fetch_add(1, Ordering::AcqRel);
        let smuggled = self.smuggled.load(Ordering::Acquire) == index;
        (smuggled, Finished(Arc::clone(self)))
    }

    /// The response switched protocols: from here on the bytes are the tunnel's, to
    /// be copied to the worker's side of the upgrade while the lease is held.
    pub(crate) fn upgraded(&self, upstream: Upgraded, lease: Lease) {
        *self
            .upgrade
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Some((upstream, lease));
        self.tunnel.store(true, Ordering::Release);
    }

    /// The upgrade handed over by [`Shared::upgraded`], if the connection was upgraded.
    pub(crate) fn take_upgrade(&self) -> Option<(Upgraded, Lease)> {
        self.upgrade
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .take()
    }

    fn in_flight(&self) -> bool {
        self.dispatched.load(Ordering::Acquire) != self.finished.load(Ordering::Acquire)
    }
}

/// Marks a request's response finished when dropped.
pub(crate) struct Finished(Arc<Shared>);

impl Drop for Finished {
    fn drop(&mut self) {
        self.0.finished.fetch_add(1, Ordering::AcqRel);
    }
}

/// How long a client may take over a request head, and leave a connection idle.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Timeouts {
    pub(crate) header: Duration,
    pub(crate) keepalive: Duration,
}

/// The client's socket as hyper reads and writes it.
pub(crate) struct ClientIo {
    stream: TcpStream,
    shared: Arc<Shared>,
    timeouts: Timeouts,
    framer: Framer,
    /// When the current head's first byte arrived.
    head_since: Instant,
    /// When the connection last became idle: accepted, a response finished, or (once
    /// the framing is lost) bytes arrived.
    idle_since: Instant,
    /// `finished` as last seen, to notice a response finishing.
    finished_seen: u64,
    /// The timer behind whichever deadline applies, made on first need.
    timer: Option<Pin<Box<Sleep>>>,
    /// A write is waiting for the client to read: a 408 now could land mid-response.
    write_blocked: bool,
    /// A timeout has closed the reading side.
    timed_out: bool,
    /// The connection was idle long enough to be parked: hyper was shown an end of stream
    /// so that it hands the socket back and frees its buffers.
    parked: bool,
    /// Bytes hyper had read but not used when it handed the socket back, read first.
    unread: Bytes,
    /// `finished` when the connection was last parked.
    parked_at_finished: Option<u64>,
}

/// What to do when a deadline passes with no bytes from the client.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Due {
    /// The head is not whole by the header timeout: 408, then close.
    RequestTimeout,
    /// Idle past the keep-alive (or, before a first request, the header) timeout.
    Close,
    /// Idle for [`PARK_AFTER`]: give the socket back from hyper, keep the connection.
    Park,
}

/// An idle kept-alive connection is parked after this long: hyper's 16 KiB of buffers per
/// connection go, and a fresh hyper connection takes the socket when the next request
/// arrives. Busy connections never wait this long between requests; one that waits
/// longer has its hyper connection and buffers made again. With 1 s, 10,000
/// connections opened within 3 s held 126 MB with the glibc build (its allocator keeps
/// what the unparked ones had held at once), 50 MB with 100 ms (docs/benchmarks.md,
/// "The evening's changes").
const PARK_AFTER: Duration = Duration::from_millis(100);

impl ClientIo {
    pub(crate) fn new(stream: TcpStream, shared: Arc<Shared>, timeouts: Timeouts) -> Self {
        let now = Instant::now();
        ClientIo {
            stream,
            shared,
            timeouts,
            framer: Framer::default(),
            head_since: now,
            idle_since: now,
            finished_seen: 0,
            timer: None,
            write_blocked: false,
            timed_out: false,
            parked: false,
            parked_at_finished: None,
            unread: Bytes::new(),
        }
    }

    /// The deadline that applies while no bytes arrive, if any, and what happens then.
    fn deadline(&mut self) -> Option<(Instant, Due)> {
        if self.shared.in_flight() {
            // The request's own limits apply (request timeout, queue timeout).
            return None;
        }
        let finished = self.shared.finished.load(Ordering::Acquire);
        if finished != self.finished_seen {
            self.finished_seen = finished;
            self.idle_since = Instant::now();
        }
        if self.framer.in_head() {
            return Some((self.head_since + self.timeouts.header, Due::RequestTimeout));
        }
        let limit = if self.framer.is_lost() {
            // Framing is unknown: allow the longest a well-framed connection would get.
            self.timeouts.keepalive + self.timeouts.header
        } else if self.shared.dispatched.load(Ordering::Acquire) == 0 {
            // A connection opened to send a request gets the header timeout to start it.
            self.timeouts.header
        } else {
            self.timeouts.keepalive
        };
        if PARK_AFTER < limit && !self.framer.is_lost() {
            let park = self.idle_since + PARK_AFTER;
            if !self.parked_once_since_idle() {
                return Some((park, Due::Park));
            }
        }
        Some((self.idle_since + limit, Due::Close))
    }

    /// Whether the connection was parked since it last became idle (a spurious wake-up
    /// must not park it again and again).
    fn parked_once_since_idle(&self) -> bool {
        self.parked_at_finished == Some(self.finished_seen)
    }

    /// Waits, holding no buffers, until the client sends something; false when a
    /// timeout ended the connection instead (closed quietly: no head was started).
    pub(crate) async fn wait_for_request(&mut self) -> bool {
        if !self.unread.is_empty() {
            return true;
        }
        loop {
            let Some((deadline, due)) = self.deadline() else {
                return true;
            };
            tokio::select! {
                readable = self.stream.readable() => return readable.is_ok(),
                () = tokio::time::sleep_until(deadline) => {
                    if due != Due::Park {
                        self.time_out(false);
                        return false;
                    }
                    // Parked already: now only the timeout remains.
                    self.parked_at_finished = Some(self.finished_seen);
                }
            }
        }
    }

    /// After hyper handed the socket back: whether it was parked (rather than ended), and
    /// the bytes hyper had read beyond the last request, to be read again.
    ///
    /// Those bytes are a view of hyper's whole read buffer (8 KiB or more), which even an
    /// empty view keeps allocated: they are copied out (seldom any: only what a client
    /// sent ahead of the next request), so that a parked connection holds none of it.
    pub(crate) fn resume(&mut self, unread: &[u8]) -> bool {
        self.unread = if unread.is_empty() {
            Bytes::new()
        } else {
            Bytes::copy_from_slice(unread)
        };
        std::mem::take(&mut self.parked)
    }

    /// Ends the reading side after a timeout: for an unfinished head, the client is told
    /// with a 408 first (when no response of an earlier request is still being written).
    fn time_out(&mut self, header: bool) {
        self.timed_out = true;
        if header && !self.write_blocked {
            // Best effort: a fresh socket's send buffer takes these bytes at once, and a
            // client that fills it is not reading anyway.
            let response = failure::respond_raw(&Failure::HeaderTimeout);
            let _ = self.stream.try_write(&response);
        }
        // The FIN goes out now, ahead of hyper dropping the socket.
        let _ = nix::sys::socket::shutdown(
            std::os::fd::AsRawFd::as_raw_fd(&self.stream),
            nix::sys::socket::Shutdown::Write,
        );
    }
}

impl AsyncRead for ClientIo {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        if this.timed_out || this.parked {
            return Poll::Ready(Ok(()));
        }
        let before = buf.filled().len();
        let polled = if this.unread.is_empty() {
            Pin::new(&mut this.stream).poll_read(cx, buf)
        } else {
            let n = this.unread.len().min(buf.remaining());
            buf.put_slice(&this.unread.split_to(n));
            Poll::Ready(Ok(()))
        };
        if this.shared.tunnel.load(Ordering::Acquire) {
            return polled;
        }
        match polled {
            Poll::Ready(Ok(())) => {
                let was_in_head = this.framer.in_head();
                let read = &buf.filled()[before..];
                let index = this.framer.heads;
                if let Some(smuggled) = this.framer.feed(read) {
                    let _ = this.shared.smuggled.compare_exchange(
                        NONE,
                        smuggled,
                        Ordering::AcqRel,
                        Ordering::Acquire,
                    );
                }
                if this.framer.in_head() && (!was_in_head || this.framer.heads != index) {
                    this.head_since = Instant::now();
                } else if this.framer.is_lost() {
                    this.idle_since = Instant::now();
                }
                Poll::Ready(Ok(()))
            }
            Poll::Ready(Err(err)) => Poll::Ready(Err(err)),
            Poll::Pending => {
                let Some((deadline, due)) = this.deadline() else {
                    return Poll::Pending;
                };
                let timer = this
                    .timer
                    .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(deadline)));
                if timer.deadline() != deadline {
                    timer.as_mut().reset(deadline);
                }
                if timer.as_mut().poll(cx).is_pending() {
                    return Poll::Pending;
                }
                if due == Due::Park {
                    this.parked = true;
                    this.parked_at_finished = Some(this.finished_seen);
                    // Nothing of hyper's connection stays while parked, its timer included.
                    this.timer = None;
                } else {
                    this.time_out(due == Due::RequestTimeout);
                }
                // hyper reads the end of the stream: a quiet end when idle (and, parked,
                // hands the socket back), an incomplete message it does not answer
                // mid-head.
                Poll::Ready(Ok(()))
            }
        }
    }
}

impl AsyncWrite for ClientIo {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let polled = Pin::new(&mut self.stream).poll_write(cx, buf);
        self.write_blocked = polled.is_pending();
        polled
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let polled = Pin::new(&mut self.stream).poll_write_vectored(cx, bufs);
        self.write_blocked = polled.is_pending();
        polled
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }
}

/// Follows the framing of the requests on one connection, byte by byte, without keeping
/// any of them: where each head starts and ends, and how long its body is.
///
/// It only needs to agree with hyper on requests hyper accepts; on anything it cannot
/// frame it stops ([`Framer::is_lost`]), and hyper rejects the request or closes the
/// connection after it.
#[derive(Debug, Default)]
pub(crate) struct Framer {
    state: State,
    /// Heads completed so far.
    heads: u64,
}

#[derive(Debug, Default)]
enum State {
    /// Between messages, before any byte of the next head but empty lines.
    #[default]
    Idle,
    Head(Head),
    /// A body of known length: the bytes left.
    Body(u64),
    Chunked(Chunk),
    /// Lines of a chunked body's trailer section; the count of bytes in the current one.
    Trailers(usize),
    /// The framing cannot be followed any further.
    Lost,
}

/// What is known of a head so far.
#[derive(Debug, Default)]
struct Head {
    /// Bytes of the current line, line ending excluded.
    line_len: usize,
    /// Whether the current line is the request line.
    request_line: bool,
    field: Field,
    length: Length,
    /// Whether the last coding of the last `Transfer-Encoding` line is chunked; `None`
    /// without such a line.
    chunked: Option<bool>,
}

/// What the `Content-Length` lines of a head said.
#[derive(Debug, Default, Clone, Copy)]
enum Length {
    #[default]
    Absent,
    Valid(u64),
    /// Lines that disagree, or one that does not parse.
    Bad,
}

/// Where the current header line is.
#[derive(Debug)]
enum Field {
    /// Reading the name: which of [`FRAMING_FIELDS`] it still matches (a bit each), and
    /// how many of its bytes have been read.
    Name {
        candidates: u8,
        read: usize,
    },
    /// A value molt does not need, skipped to the end of the line.
    Skip,
    Length(Digits),
    /// A coding list; the last coding so far, lowercased, up to 8 bytes.
    Codings {
        last: [u8; 8],
        len: usize,
        overlong: bool,
    },
}

impl Default for Field {
    fn default() -> Self {
        Field::Name {
            candidates: 0b11,
            read: 0,
        }
    }
}

const FRAMING_FIELDS: [&[u8]; 2] = [b"content-length", b"transfer-encoding"];

/// A decimal number being read, surrounded by optional whitespace.
#[derive(Debug, Default)]
struct Digits {
    value: u64,
    count: usize,
    /// Whitespace came after the digits.
    ended: bool,
    bad: bool,
}

#[derive(Debug)]
enum Chunk {
    /// The size line: hex digits so far, and whether an extension (or whitespace) began.
    Size {
        value: u64,
        digits: usize,
        rest: bool,
    },
    /// The bytes of data left.
    Data(u64),
    /// The CR, then the LF, after a chunk's data.
    DataCr,
    DataLf,
}

impl Framer {
    /// Reads the next bytes of the connection. Returns the index of a head that declared
    /// both `Content-Length` and `Transfer-Encoding`, when one ends within them: such a
    /// request's body cannot be framed safely, so nothing after it is followed.
    pub(crate) fn feed(&mut self, mut bytes: &[u8]) -> Option<u64> {
        while let Some((&byte, rest)) = bytes.split_first() {
            match &mut self.state {
                State::Lost => return None,
                State::Body(left) => {
                    let take = usize::try_from(*left).map_or(bytes.len(), |l| l.min(bytes.len()));
                    *left -= take as u64;
                    bytes = &bytes[take..];
                    if *left == 0 {
                        self.state = State::Idle;
                    }
                    continue;
                }
                State::Chunked(Chunk::Data(left)) => {
                    let take = usize::try_from(*left).map_or(bytes.len(), |l| l.min(bytes.len()));
                    *left -= take as u64;
                    bytes = &bytes[take..];
                    if *left == 0 {
                        self.state = State::Chunked(Chunk::DataCr);
                    }
                    continue;
                }
                State::Idle => {
                    if byte != b'\r' && byte != b'\n' {
                        self.state = State::Head(Head {
                            request_line: true,
                            ..Head::default()
                        });
                        // The byte is read again as the head's first.
                        continue;
                    }
                }
                State::Head(head) => {
                    if byte == b'\n' {
                        if let Some(smuggled) = self.end_line() {
                            return Some(smuggled);
                        }
                    } else if byte != b'\r' {
                        head.line_len += 1;
                        if !head.request_line {
                            head.field.push(byte);
                        }
                    }
                }
                State::Chunked(chunk) => {
                    if let Some(next) = chunk.push(byte) {
                        self.state = next;
                    }
                }
                State::Trailers(line_len) => match byte {
                    b'\n' if *line_len == 0 => self.state = State::Idle,
                    b'\n' => *line_len = 0,
                    b'\r' => {}
                    _ => *line_len += 1,
                },
            }
            bytes = rest;
        }
        None
    }

    /// A head line ended.
    fn end_line(&mut self) -> Option<u64> {
        let State::Head(head) = &mut self.state else {
            return None;
        };
        if head.line_len > 0 {
            head.end_field();
            head.line_len = 0;
            head.request_line = false;
            head.field = Field::default();
            return None;
        }
        // The empty line: the head is whole.
        let index = self.heads;
        self.heads += 1;
        let head = std::mem::take(head);
        let (smuggled, next) = match (head.length, head.chunked) {
            (Length::Valid(_) | Length::Bad, Some(_)) => (Some(index), State::Lost),
            (Length::Absent, Some(true)) => (None, State::Chunked(Chunk::size())),
            (Length::Bad, None) | (Length::Absent, Some(false)) => (None, State::Lost),
            (Length::Absent | Length::Valid(0), None) => (None, State::Idle),
            (Length::Valid(len), None) => (None, State::Body(len)),
        };
        self.state = next;
        smuggled
    }

    /// Bytes of a head have arrived and it is not whole yet.
    pub(crate) fn in_head(&self) -> bool {
        matches!(self.state, State::Head(_))
    }

    /// The framing could not be followed; nothing more is known.
    pub(crate) fn is_lost(&self) -> bool {
        matches!(self.state, State::Lost)
    }
}

impl Head {
    /// A header line ended: take what it said about framing.
    fn end_field(&mut self) {
        match std::mem::take(&mut self.field) {
            Field::Length(digits) => {
                self.length = match self.length {
                    _ if digits.bad || digits.count == 0 => Length::Bad,
                    Length::Absent => Length::Valid(digits.value),
                    Length::Valid(len) if len == digits.value => Length::Valid(len),
                    Length::Valid(_) | Length::Bad => Length::Bad,
                };
            }
            Field::Codings {
                last,
                len,
                overlong,
            } => {
                self.chunked = Some(!overlong && &last[..len] == b"chunked");
            }
            Field::Name { .. } | Field::Skip => {}
        }
    }
}

impl Field {
    fn push(&mut self, byte: u8) {
        match self {
            Field::Name { candidates, read } if byte == b':' => {
                let whole = FRAMING_FIELDS
                    .iter()
                    .enumerate()
                    .find(|(bit, name)| *candidates & (1 << bit) != 0 && name.len() == *read);
                *self = match whole {
                    Some((0, _)) => Field::Length(Digits::default()),
                    Some(_) => Field::Codings {
                        last: [0; 8],
                        len: 0,
                        overlong: false,
                    },
                    None => Field::Skip,
                };
            }
            Field::Name { candidates, read } => {
                let lower = byte.to_ascii_lowercase();
                for (bit, name) in FRAMING_FIELDS.iter().enumerate() {
                    if name.get(*read) != Some(&lower) {
                        *candidates &= !(1 << bit);
                    }
                }
                *read += 1;
                if *candidates == 0 {
                    *self = Field::Skip;
                }
            }
            Field::Skip => {}
            Field::Length(digits) => digits.push(byte),
            Field::Codings {
                last,
                len,
                overlong,
            } => match byte {
                b',' => {
                    *len = 0;
                    *overlong = false;
                }
                b' ' | b'\t' => {}
                _ if *len < last.len() => {
                    last[*len] = byte.to_ascii_lowercase();
                    *len += 1;
                }
                _ => *overlong = true,
            },
        }
    }
}

impl Digits {
    fn push(&mut self, byte: u8) {
        match byte {
            b' ' | b'\t' => self.ended = self.count > 0,
            b'0'..=b'9' if !self.ended => {
                self.count += 1;
                match self
                    .value
                    .checked_mul(10)
                    .and_then(|v| v.checked_add(u64::from(byte - b'0')))
                {
                    Some(value) => self.value = value,
                    None => self.bad = true,
                }
            }
            _ => self.bad = true,
        }
    }
}

impl Chunk {
    fn size() -> Chunk {
        Chunk::Size {
            value: 0,
            digits: 0,
            rest: false,
        }
    }

    /// Reads one byte of chunked framing (data bytes are skipped in bulk elsewhere);
    /// returns the next state when this one ends.
    fn push(&mut self, byte: u8) -> Option<State> {
        match self {
            Chunk::Size {
                value,
                digits,
                rest,
            } => match byte {
                b'\n' if *digits == 0 => Some(State::Lost),
                b'\n' if *value == 0 => Some(State::Trailers(0)),
                b'\n' => Some(State::Chunked(Chunk::Data(*value))),
                b'\r' => None,
                _ if *rest => None,
                b';' | b' ' | b'\t' => {
                    *rest = true;
                    None
                }
                _ => {
                    let Some(digit) = char::from(byte).to_digit(16) else {
                        return Some(State::Lost);
                    };
                    *digits += 1;
                    match value.checked_mul(16) {
                        Some(shifted) => {
                            *value = shifted + u64::from(digit);
                            None
                        }
                        None => Some(State::Lost),
                    }
                }
            },
            Chunk::DataCr => match byte {
                b'\r' => {
                    *self = Chunk::DataLf;
                    None
                }
                b'\n' => Some(State::Chunked(Chunk::size())),
                _ => Some(State::Lost),
            },
            Chunk::DataLf => match byte {
                b'\n' => Some(State::Chunked(Chunk::size())),
                _ => Some(State::Lost),
            },
            // Data is consumed by `Framer::feed` before it gets here.
            Chunk::Data(_) => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// Feeds `bytes` whole; the heads seen, any smuggled index, and the end state.
    fn frame(bytes: &[u8]) -> (u64, Option<u64>, bool, bool) {
        let mut framer = Framer::default();
        let smuggled = framer.feed(bytes);
        (framer.heads, smuggled, framer.in_head(), framer.is_lost())
    }

    #[test]
    fn pipelined_requests_without_bodies_are_counted() {
        let three = b"GET / HTTP/1.1\r\nHost: a\r\n\r\nGET /b HTTP/1.1\r\nHost: a\r\n\r\nHEAD / HTTP/1.1\nHost: a\n\n";
        assert_eq!(frame(three), (3, None, false, false));
    }

    #[test]
    fn an_unfinished_head_is_in_head() {
        assert_eq!(
            frame(b"GET / HTTP/1.1\r\nHost: a\r\nX-Slow: "),
            (0, None, true, false)
        );
        // Empty lines before a request line are not a head yet (RFC 9112 section 2.2).
        assert_eq!(frame(b"\r\n\r\n"), (0, None, false, false));
    }

    #[test]
    fn bodies_of_known_length_are_skipped() {
        let two = b"POST / HTTP/1.1\r\ncontent-LENGTH:  5 \r\n\r\nGET /GET / HTTP/1.1\r\n\r\n";
        assert_eq!(frame(two), (2, None, false, false));
        // The body is not read as a head, however it looks.
        let body = b"POST / HTTP/1.1\r\nContent-Length: 4\r\n\r\n\r\n\r\n";
        assert_eq!(frame(body), (1, None, false, false));
    }

    #[test]
    fn chunked_bodies_with_extensions_and_trailers_are_skipped() {
        let two = b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n3;x=y\r\nabc\r\nA\r\n0123456789\r\n0\r\nX-T: 1\r\n\r\nGET / HTTP/1.1\r\n\r\n";
        assert_eq!(frame(two), (2, None, false, false));
    }

    #[test]
    fn length_and_coding_together_are_smuggling_in_either_order() {
        let cl_te =
            b"POST / HTTP/1.1\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n";
        assert_eq!(frame(cl_te), (1, Some(0), false, true));
        let te_cl =
            b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\nContent-Length: 4\r\n\r\n0\r\n\r\n";
        assert_eq!(frame(te_cl), (1, Some(0), false, true));
        // Behind a request with a body, on the same connection.
        let second = b"POST / HTTP/1.1\r\nContent-Length: 3\r\n\r\nabcPOST / HTTP/1.1\r\nContent-Length: 41\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\nGET /count HTTP/1.1\r\n\r\n";
        assert_eq!(frame(second), (2, Some(1), false, true));
        // A length that does not parse counts as a length.
        let bad = b"POST / HTTP/1.1\r\nContent-Length: x\r\nTransfer-Encoding: chunked\r\n\r\n";
        assert_eq!(frame(bad).1, Some(0));
    }

    #[test]
    fn names_only_resembling_framing_fields_are_not_framing() {
        let lookalikes = b"GET / HTTP/1.1\r\nContent-Length-X: 4\r\nX-Transfer-Encoding: chunked\r\nContent-Lengt: 3\r\n\r\nGET / HTTP/1.1\r\n\r\n";
        assert_eq!(frame(lookalikes), (2, None, false, false));
    }

    #[test]
    fn what_hyper_rejects_loses_the_framing() {
        for bytes in [
            &b"POST / HTTP/1.1\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\n"[..],
            b"POST / HTTP/1.1\r\nContent-Length: 3, 3\r\n\r\n",
            b"POST / HTTP/1.1\r\nContent-Length: 99999999999999999999999\r\n\r\n",
            b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked, gzip\r\n\r\n",
            b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
            b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabcXX",
        ] {
            assert!(frame(bytes).3, "{}", String::from_utf8_lossy(bytes));
        }
    }

    proptest! {
        /// However the bytes are cut into reads, the framing comes out the same.
        #[test]
        fn framing_does_not_depend_on_how_bytes_arrive(cuts in proptest::collection::vec(0usize..200, 0..12)) {
            let bytes: &[u8] = b"\r\nPOST / HTTP/1.1\r\nContent-Length: 3\r\n\r\nabcPOST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n3;e\r\nabc\r\n0\r\nT: 1\r\n\r\nPOST / HTTP/1.1\r\nContent-Length: 41\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n";
            let whole = frame(bytes);
            let mut cuts: Vec<usize> = cuts.into_iter().map(|c| c % bytes.len()).collect();
            cuts.sort_unstable();
            let mut framer = Framer::default();
            let mut smuggled = None;
            let mut from = 0;
            for cut in cuts.into_iter().chain([bytes.len()]) {
                smuggled = smuggled.or(framer.feed(&bytes[from..cut]));
                from = cut;
            }
            prop_assert_eq!(whole, (framer.heads, smuggled, framer.in_head(), framer.is_lost()));
            prop_assert_eq!(whole, (3, Some(2), false, true));
        }
    }
}
