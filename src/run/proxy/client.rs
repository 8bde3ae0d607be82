//! molt's HTTP/1.1 client, on a connection to a worker that it owns ([`Upstream`]).
//!
//! [`send`] writes a request's head and body and reads the response head (httparse);
//! the response's [`ResponseBody`] reads the rest from the same socket, and writes
//! what is left of the request body as it goes. No task, channel or buffer stands
//! between the two: the request's own task drives the exchange, and whoever reads the
//! response body (the client's connection, or the relay) drives the rest, where hyper's
//! client ran a task per connection and passed each request, response and body piece
//! through channels to it (docs/benchmarks.md, "An HTTP/1 client of molt's own").
//!
//! The framing rules are RFC 9112's, as hyper's client applied them, so that what a
//! worker's response means does not change: 1xx other than 101 skipped; a response to
//! HEAD, and a 204 or 304, with no body whatever its headers say; `Transfer-Encoding`
//! ending in `chunked` before `Content-Length`; several lengths that differ, or one
//! that is no number, refused; a message with neither read until the worker closes.

use std::error::Error as StdError;
use std::fmt;
use std::future::poll_fn;
use std::io;
use std::mem::MaybeUninit;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use bytes::{Bytes, BytesMut};
use hyper::body::{Body, Frame, SizeHint};
use hyper::header::{HeaderMap, HeaderName, HeaderValue};
use hyper::http::{Method, StatusCode, Version};

use crate::run::proxy::h1::{self, take_up_to, MAX_HEADERS};
use crate::run::proxy::message::{self, Fields, Request, Response, Value};
use crate::run::proxy::stash;
use crate::run::proxy::upstream::{Upgraded, Upstream, UpstreamBody};

/// A response head larger than this is refused (502): nginx's limit is 4 or 8 KiB
/// (`proxy_buffer_size`), hyper's client allowed about 400 KiB; 64 KiB is molt's limit
/// on a request head too.
const MAX_HEAD: usize = 64 * 1024;

/// A chunk's size line (with its extensions) longer than this breaks the response.
const MAX_CHUNK_LINE: usize = 4096;

/// The most a read asks of the socket, for a long body that keeps filling the buffer
/// (the first asks for 8 KiB, `upstream::FIRST_READ`).
const MAX_READ_SIZE: usize = 64 * 1024;

/// Why an exchange with a worker failed.
#[derive(Debug)]
pub(crate) enum SendError {
    /// The connection failed before any byte of the request left: the request is
    /// whole, and may go to a fresh connection.
    Unsent(Box<Request<UpstreamBody>>),
    /// The request's own body failed as it streamed: the client broke off or sent broken
    /// chunks, which is no fault of the worker's.
    ClientBody(BoxError),
    /// The worker broke the exchange, or answered with what is no HTTP/1 response.
    Upstream(Error),
}

type BoxError = Box<dyn StdError + Send + Sync>;

/// What went wrong on a connection to a worker.
#[derive(Debug)]
pub(crate) enum Error {
    /// The socket failed.
    Io(io::Error),
    /// The worker closed the connection before it had sent a whole response head.
    ClosedBeforeHead,
    /// The response head does not parse.
    Head(httparse::Error),
    /// The response head is larger than [`MAX_HEAD`].
    HeadTooLarge,
    /// The response's framing cannot be known: lengths that differ or are no number, or
    /// a transfer coding in an HTTP/1.0 response.
    Framing(&'static str),
    /// The worker closed the connection before the body's end.
    ClosedMidBody,
    /// A chunk's size line does not parse.
    ChunkSize,
    /// The trailers do not parse, or are too large.
    Trailers,
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Io(err) => write!(f, "{err}"),
            Error::ClosedBeforeHead => f.write_str("connection closed before the response head"),
            Error::Head(err) => write!(f, "response head does not parse: {err}"),
            Error::HeadTooLarge => write!(f, "response head over {MAX_HEAD} bytes"),
            Error::Framing(why) => write!(f, "response framing: {why}"),
            Error::ClosedMidBody => f.write_str("connection closed before the response's end"),
            Error::ChunkSize => f.write_str("chunk size line does not parse"),
            Error::Trailers => f.write_str("trailers do not parse"),
        }
    }
}

impl StdError for Error {
    fn source(&self) -> Option<&(dyn StdError + 'static)> {
        match self {
            Error::Io(err) => Some(err),
            Error::Head(err) => Some(err),
            _ => None,
        }
    }
}

impl From<io::Error> for Error {
    fn from(err: io::Error) -> Self {
        Error::Io(err)
    }
}

/// Sends `req` on `conn` and reads the response head. The response's body holds the
/// connection; once read whole, [`ResponseBody::take_connection`] gives it back for
/// reuse.
pub(crate) async fn send(
    mut conn: Upstream,
    mut req: Request<UpstreamBody>,
) -> Result<Response<ResponseBody>, SendError> {
    let framing = frame_request(&mut req);
    let head_request = req.method == Method::HEAD;
    let (parts, body) = req.split();
    let mut writer = Writer::new(body, framing);
    writer.outbox.push_head(encode_head(&parts));
    // A body that is ready now (a small one often is, read with the client's head) leaves
    // in the same write as the head.
    let first = poll_fn(|cx| Poll::Ready(writer.fill(cx))).await;
    if let Err(err) = first {
        return Err(SendError::ClientBody(err));
    }
    let mut parts = Some(parts);
    let mut write_error: Option<io::Error> = None;
    let head = poll_fn(|cx| {
        if write_error.is_none() && !writer.finished() {
            match writer.poll_write(cx, &mut conn) {
                Poll::Ready(Ok(())) | Poll::Pending => {}
                Poll::Ready(Err(WriteError::Client(err))) => {
                    return Poll::Ready(Err(SendError::ClientBody(err)));
                }
                Poll::Ready(Err(WriteError::Socket(err))) => {
                    if writer.untouched() {
                        if let Some(parts) = parts.take() {
                            let body = writer.take_body();
                            return Poll::Ready(Err(SendError::Unsent(Box::new(parts.with(body)))));
                        }
                    }
                    // The worker may have answered and closed before reading the rest
                    // (a 413, say): its response is still read.
                    write_error = Some(err);
                }
            }
        }
        match ready!(conn.poll_head(cx, head_request)) {
            Ok(head) => Poll::Ready(Ok(head)),
            Err(err) => Poll::Ready(Err(SendError::Upstream(match write_error.take() {
                Some(written) if matches!(err, Error::ClosedBeforeHead | Error::Io(_)) => {
                    Error::Io(written)
                }
                _ => err,
            }))),
        }
    })
    .await?;
    let Head {
        response,
        decoding,
        keep_alive,
    } = head;
    let writing = (write_error.is_none() && !writer.finished()).then(|| Box::new(writer));
    let body = ResponseBody {
        conn: Some(conn),
        decoding,
        // A request body cut short leaves the connection in the middle of a message.
        keep_alive: keep_alive && write_error.is_none(),
        writing,
        chunk: ChunkState::Size,
    };
    Ok(response.map(|()| body))
}

/// How a request's body is framed on the way to the worker.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Framing {
    /// No body is sent.
    Empty,
    Length(u64),
    Chunked,
}

/// Decides the request body's framing and writes it into the head. The client's own
/// `Transfer-Encoding` is gone (hop-by-hop); its `Content-Length` stays and frames the
/// body, which hyper decoded by it. Otherwise a body of known size gets a length and one
/// of unknown size is chunked, but for GET and HEAD, which are sent without one (as
/// hyper's client did: such a body is almost always a mistake).
fn frame_request(req: &mut Request<UpstreamBody>) -> Framing {
    if let Some(len) = content_length(&req.headers) {
        return if len == 0 {
            Framing::Empty
        } else {
            Framing::Length(len)
        };
    }
    req.headers.remove(message::CONTENT_LENGTH);
    if req.body.is_end_stream() {
        return Framing::Empty;
    }
    if let Some(len) = req.body.size_hint().exact() {
        req.headers
            .insert(message::CONTENT_LENGTH, Value::number(len));
        return Framing::Length(len);
    }
    if matches!(req.method, Method::GET | Method::HEAD) {
        return Framing::Empty;
    }
    req.headers
        .insert(message::TRANSFER_ENCODING, Value::from_static("chunked"));
    Framing::Chunked
}

/// The one length all `Content-Length` values give, if they give one.
fn content_length(headers: &Fields) -> Option<u64> {
    let mut length = None;
    for value in headers.get_all(message::CONTENT_LENGTH) {
        for part in value.split(|&b| b == b',') {
            let part = part.trim_ascii();
            if part.is_empty() || !part.iter().all(u8::is_ascii_digit) {
                return None;
            }
            let len: u64 = std::str::from_utf8(part).ok()?.parse().ok()?;
            if length.is_some_and(|seen| seen != len) {
                return None;
            }
            length = Some(len);
        }
    }
    length
}

/// The request line and headers, as the worker reads them.
fn encode_head(parts: &Request<()>) -> Vec<u8> {
    let target = parts
        .uri
        .path_and_query()
        .map_or("/", hyper::http::uri::PathAndQuery::as_str);
    let mut head = stash::head(16 + target.len() + parts.headers.encoded_len());
    head.extend_from_slice(parts.method.as_str().as_bytes());
    head.push(b' ');
    head.extend_from_slice(target.as_bytes());
    head.extend_from_slice(b" HTTP/1.1\r\n");
    parts.headers.encode(&mut head);
    head.extend_from_slice(b"\r\n");
    head
}

/// Why a request's bytes could not be written.
enum WriteError {
    /// The client's body failed.
    Client(BoxError),
    /// The socket to the worker failed.
    Socket(io::Error),
}

/// Pieces waiting to be written, in order.
#[derive(Default)]
pub(super) struct Outbox {
    /// A message's head, written before the pieces: held as the `Vec` it was written
    /// into, since a `Bytes` made of a `Vec` with room to spare is a second allocation.
    head: Vec<u8>,
    /// How much of `head` has been written.
    head_sent: usize,
    /// The first piece, held here so that a message of one piece (most are) allocates no
    /// queue; `None` only while `more` is empty.
    first: Option<Bytes>,
    more: std::collections::VecDeque<Bytes>,
}

impl Drop for Outbox {
    fn drop(&mut self) {
        stash::give_head(std::mem::take(&mut self.head));
    }
}

impl Outbox {
    /// Queues a message's head, before anything else.
    pub(super) fn push_head(&mut self, head: Vec<u8>) {
        debug_assert!(self.is_empty(), "a head goes first");
        self.head = head;
        self.head_sent = 0;
    }

    pub(super) fn push(&mut self, piece: Bytes) {
        if piece.is_empty() {
            return;
        }
        if self.first.is_none() {
            self.first = Some(piece);
        } else {
            self.more.push_back(piece);
        }
    }

    pub(super) fn is_empty(&self) -> bool {
        self.head_sent == self.head.len() && self.first.is_none()
    }

    pub(super) fn len(&self) -> usize {
        self.head.len() - self.head_sent + self.pieces().map(Bytes::len).sum::<usize>()
    }

    fn pieces(&self) -> impl Iterator<Item = &Bytes> {
        self.first.iter().chain(&self.more)
    }

    /// Writes until all is written (`Ready`) or the socket is full (`Pending`, its wake
    /// registered), adding what it wrote to `sent` (the request's bytes so far: any write
    /// after its first turns Nagle's algorithm off, see `Upstream::no_delay`).
    fn poll_flush(
        &mut self,
        cx: &mut Context<'_>,
        conn: &mut Upstream,
        sent: &mut u64,
    ) -> Poll<io::Result<()>> {
        while !self.is_empty() {
            if *sent > 0 {
                conn.no_delay();
            }
            let n = ready!(self.poll_write(cx, |cx, bufs| conn.poll_write_vectored(cx, bufs)))?;
            *sent += n as u64;
        }
        Poll::Ready(Ok(()))
    }

    /// One vectored write of what is queued, with `write`; what it wrote is taken off the
    /// front.
    pub(super) fn poll_write(
        &mut self,
        cx: &mut Context<'_>,
        write: impl FnOnce(&mut Context<'_>, &[io::IoSlice<'_>]) -> Poll<io::Result<usize>>,
    ) -> Poll<io::Result<usize>> {
        let mut slices = [io::IoSlice::new(&[]); 16];
        let head = &self.head[self.head_sent..];
        let mut count = usize::from(!head.is_empty());
        slices[0] = io::IoSlice::new(head);
        for (slice, piece) in slices[count..].iter_mut().zip(self.pieces()) {
            *slice = io::IoSlice::new(piece);
            count += 1;
        }
        let n = ready!(write(cx, &slices[..count]))?;
        if n == 0 {
            return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
        }
        let of_head = n.min(head.len());
        self.head_sent += of_head;
        if self.head_sent == self.head.len() && !self.head.is_empty() {
            // Written: the head's memory goes now, not with the message.
            stash::give_head(std::mem::take(&mut self.head));
            self.head_sent = 0;
        }
        let mut left = n - of_head;
        while left > 0 {
            let front = self.first.as_mut().expect("written bytes were queued");
            if front.len() <= left {
                left -= front.len();
                self.first = self.more.pop_front();
            } else {
                let _ = front.split_to(left);
                left = 0;
            }
        }
        Poll::Ready(Ok(n))
    }
}

/// A request body on its way to the worker: framed, and written as the client sends it.
struct Writer {
    /// The body while pieces of it are still to be read.
    body: Option<UpstreamBody>,
    /// A body that is not sent (see [`frame_request`]), held for a retry.
    unsent: Option<UpstreamBody>,
    framing: Framing,
    /// Body bytes still to come, for a body of known length.
    left: u64,
    outbox: Outbox,
    /// Bytes written to the socket so far.
    sent: u64,
    /// The body has been polled for a piece (it can then not be sent again whole).
    polled: bool,
}

/// A body piece larger than this is written before the next is read.
const OUTBOX_FULL: usize = 64 * 1024;

impl Writer {
    fn new(body: UpstreamBody, framing: Framing) -> Self {
        let left = match framing {
            Framing::Length(len) => len,
            Framing::Empty | Framing::Chunked => 0,
        };
        let (body, unsent) = if framing == Framing::Empty {
            (None, Some(body))
        } else {
            (Some(body), None)
        };
        Writer {
            body,
            unsent,
            framing,
            left,
            outbox: Outbox::default(),
            sent: 0,
            polled: false,
        }
    }

    fn finished(&self) -> bool {
        self.body.is_none() && self.outbox.is_empty()
    }

    /// Nothing was written and the body was never polled: the request is as it came.
    fn untouched(&self) -> bool {
        self.sent == 0 && !self.polled
    }

    fn take_body(&mut self) -> UpstreamBody {
        self.body
            .take()
            .or_else(|| self.unsent.take())
            .expect("a writer that was never polled holds its body")
    }

    /// Takes what the body has ready now into the outbox, up to [`OUTBOX_FULL`], never
    /// waiting.
    fn fill(&mut self, cx: &mut Context<'_>) -> Result<(), BoxError> {
        while self.outbox.len() < OUTBOX_FULL {
            let Some(body) = self.body.as_mut() else {
                return Ok(());
            };
            self.polled = true;
            match Pin::new(body).poll_frame(cx) {
                Poll::Pending => return Ok(()),
                // Trailers of a request are not forwarded (its `Trailer` header is not).
                Poll::Ready(Some(Ok(frame))) => {
                    if let Ok(data) = frame.into_data() {
                        self.queue(data)?;
                    }
                }
                Poll::Ready(Some(Err(err))) => {
                    self.body = None;
                    return Err(err);
                }
                Poll::Ready(None) => {
                    self.body = None;
                    match self.framing {
                        Framing::Chunked => self.outbox.push(Bytes::from_static(b"0\r\n\r\n")),
                        Framing::Length(_) if self.left > 0 => {
                            return Err("the request body ended before its length".into());
                        }
                        Framing::Length(_) | Framing::Empty => {}
                    }
                }
            }
        }
        Ok(())
    }

    fn queue(&mut self, data: Bytes) -> Result<(), BoxError> {
        if data.is_empty() {
            return Ok(());
        }
        match self.framing {
            Framing::Chunked => {
                self.outbox
                    .push(Bytes::from(format!("{:X}\r\n", data.len())));
                self.outbox.push(data);
                self.outbox.push(Bytes::from_static(b"\r\n"));
            }
            Framing::Length(_) => {
                let len = data.len() as u64;
                if len > self.left {
                    return Err("the request body is longer than its length".into());
                }
                self.left -= len;
                self.outbox.push(data);
                if self.left == 0 {
                    // Nothing may follow the declared length.
                    self.body = None;
                }
            }
            Framing::Empty => {}
        }
        Ok(())
    }

    /// Writes the body as it comes until it is all written (`Ready(Ok)`), the socket or
    /// the client's body has to be waited for (`Pending`), or either fails.
    fn poll_write(
        &mut self,
        cx: &mut Context<'_>,
        conn: &mut Upstream,
    ) -> Poll<Result<(), WriteError>> {
        loop {
            self.fill(cx).map_err(WriteError::Client)?;
            if self.outbox.is_empty() {
                return if self.body.is_none() {
                    Poll::Ready(Ok(()))
                } else {
                    Poll::Pending
                };
            }
            // Pending: the socket is full, and wakes the task once it has room.
            ready!(self.outbox.poll_flush(cx, conn, &mut self.sent)).map_err(WriteError::Socket)?;
        }
    }
}

/// A parsed response head, and how its body is read.
struct Head {
    response: Response<()>,
    decoding: Decoding,
    keep_alive: bool,
}

/// How much of a response body is left to read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Decoding {
    Length(u64),
    Chunked,
    /// Until the worker closes the connection.
    UntilClose,
    Done,
}

impl Upstream {
    /// Reads until a whole final response head is in, skipping interim (1xx) ones.
    fn poll_head(&mut self, cx: &mut Context<'_>, head_request: bool) -> Poll<Result<Head, Error>> {
        loop {
            if !self.read.is_empty() {
                if let Some(head) = parse_head(&mut self.read, head_request)? {
                    return Poll::Ready(Ok(head));
                }
                if self.read.len() > MAX_HEAD {
                    return Poll::Ready(Err(Error::HeadTooLarge));
                }
            }
            let n = ready!(self.poll_read(cx))?;
            if n == 0 {
                return Poll::Ready(Err(Error::ClosedBeforeHead));
            }
        }
    }

    /// Reads what the socket has into `self.read`; 0 at the end of the stream.
    fn poll_read(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<usize>> {
        let want = self.read_size;
        if self.read.capacity() - self.read.len() < want / 2 {
            self.read.reserve(want);
        }
        let n = ready!(self.io.poll_read_buf(cx, &mut self.read))?;
        // A read that filled what was free asks for more next time, up to a bound.
        if n >= want {
            self.read_size = (want * 2).min(MAX_READ_SIZE);
        }
        Poll::Ready(Ok(n))
    }
}

/// Parses a response head at the start of `buf` and takes it off; `None` while it is not
/// whole. An interim (1xx but 101) head is taken off and skipped.
fn parse_head(buf: &mut BytesMut, head_request: bool) -> Result<Option<Head>, Error> {
    loop {
        let mut spans: h1::Spans = [(0, 0, 0, 0); MAX_HEADERS];
        let (len, code, version, reason, count) = {
            let mut headers = [const { MaybeUninit::uninit() }; MAX_HEADERS];
            let mut parsed = httparse::Response::new(&mut []);
            let parser = httparse::ParserConfig::default();
            let len = match parser.parse_response_with_uninit_headers(
                &mut parsed,
                &buf[..],
                &mut headers,
            ) {
                Ok(httparse::Status::Complete(len)) => len,
                Ok(httparse::Status::Partial) => return Ok(None),
                Err(err) => return Err(Error::Head(err)),
            };
            let count = h1::spans(buf, parsed.headers, &mut spans);
            // Where the reason phrase is in the head, when there is one.
            let base = buf.as_ptr() as usize;
            let reason = parsed
                .reason
                .filter(|reason| !reason.is_empty() && message::valid_value(reason.as_bytes()))
                .map(|reason| {
                    let at = reason.as_ptr() as usize - base;
                    (at, at + reason.len())
                });
            let code = parsed.code.expect("a whole head has a status");
            let version = parsed.version.expect("a whole head has a version");
            (len, code, version, reason, count)
        };
        let bytes = buf.split_to(len).freeze();
        let status = StatusCode::from_u16(code).map_err(|_| Error::Framing("status"))?;
        if status.is_informational() && status != StatusCode::SWITCHING_PROTOCOLS {
            continue;
        }
        let reason = reason
            .filter(|&(at, end)| {
                Some(&bytes[at..end]) != status.canonical_reason().map(str::as_bytes)
            })
            .map(|(at, end)| bytes.slice(at..end));
        let headers = Fields::parsed(bytes, &spans[..count], 0);
        let version = if version == 0 {
            Version::HTTP_10
        } else {
            Version::HTTP_11
        };
        let (decoding, upgrade) = decoding(status, version, &headers, head_request)?;
        let keep_alive = !upgrade && keeps_alive(version, &headers);
        let response = Response {
            status,
            version,
            reason,
            headers,
            body: (),
        };
        return Ok(Some(Head {
            response,
            decoding,
            keep_alive,
        }));
    }
}

/// How the body of a response is framed (RFC 9112 section 6.3), and whether it switches
/// protocols.
fn decoding(
    status: StatusCode,
    version: Version,
    headers: &Fields,
    head_request: bool,
) -> Result<(Decoding, bool), Error> {
    if status == StatusCode::SWITCHING_PROTOCOLS {
        return Ok((Decoding::Done, true));
    }
    if head_request || status == StatusCode::NO_CONTENT || status == StatusCode::NOT_MODIFIED {
        return Ok((Decoding::Done, false));
    }
    if headers.contains(message::TRANSFER_ENCODING) {
        if version == Version::HTTP_10 {
            return Err(Error::Framing("transfer-encoding in an HTTP/1.0 response"));
        }
        let chunked = h1::last_coding_is_chunked(headers);
        return Ok((
            if chunked {
                Decoding::Chunked
            } else {
                Decoding::UntilClose
            },
            false,
        ));
    }
    if headers.contains(message::CONTENT_LENGTH) {
        return match content_length(headers) {
            Some(0) => Ok((Decoding::Done, false)),
            Some(len) => Ok((Decoding::Length(len), false)),
            None => Err(Error::Framing("content-length")),
        };
    }
    Ok((Decoding::UntilClose, false))
}

/// Whether the connection may carry another request after this response.
fn keeps_alive(version: Version, headers: &Fields) -> bool {
    let (close, keep_alive) = h1::connection_tokens(headers);
    !close && (version == Version::HTTP_11 || keep_alive)
}

/// Where a chunked body's reading is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ChunkState {
    /// At a chunk's size line.
    Size,
    /// In a chunk's data, this much of it left.
    Data(u64),
    /// After a chunk's data, at its line end.
    DataEnd,
    /// After the last chunk, at the trailers.
    Trailers,
}

/// A worker's response body, read from its connection as it is asked for.
pub(crate) struct ResponseBody {
    /// `None` once taken for reuse, or for a tunnel.
    conn: Option<Upstream>,
    decoding: Decoding,
    keep_alive: bool,
    /// What is left of the request body, written as the response is read (a worker may
    /// answer before it has read all of it).
    /// Boxed: most requests have no body left to write by then.
    writing: Option<Box<Writer>>,
    chunk: ChunkState,
}

impl ResponseBody {
    /// The connection, once the response is read whole and it can carry another request.
    pub(crate) fn take_connection(&mut self) -> Option<Upstream> {
        let reusable = self.decoding == Decoding::Done
            && self.keep_alive
            && self.writing.is_none()
            && self.conn.as_ref().is_some_and(|conn| conn.read.is_empty());
        if reusable {
            self.conn.take()
        } else {
            None
        }
    }

    /// The socket of a response that switched protocols, with what the worker sent after
    /// its head.
    pub(crate) fn upgraded(&mut self) -> Option<Upgraded> {
        self.conn.take().map(Upstream::into_upgraded)
    }

    /// Ends the body with `err`; the connection goes with it.
    fn fail(&mut self, err: impl Into<BoxError>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        self.decoding = Decoding::Done;
        self.keep_alive = false;
        self.conn = None;
        Poll::Ready(Some(Err(err.into())))
    }

    /// Writes more of the request body if there is room; stops writing when the socket
    /// fails (the response may still come whole) and fails the response when the
    /// client's body does.
    fn poll_writing(&mut self, cx: &mut Context<'_>) -> Result<(), BoxError> {
        let (Some(writer), Some(conn)) = (self.writing.as_mut(), self.conn.as_mut()) else {
            return Ok(());
        };
        match writer.poll_write(cx, conn) {
            Poll::Pending => Ok(()),
            Poll::Ready(Ok(())) => {
                self.writing = None;
                Ok(())
            }
            Poll::Ready(Err(WriteError::Socket(_))) => {
                self.writing = None;
                self.keep_alive = false;
                Ok(())
            }
            Poll::Ready(Err(WriteError::Client(err))) => {
                // The request body stopped mid-message: the connection cannot carry
                // another request, even when the caller ignores the error (as the last
                // frame of a body of known length does).
                self.writing = None;
                self.keep_alive = false;
                Err(err)
            }
        }
    }

    fn poll_chunked(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        loop {
            let Some(conn) = self.conn.as_mut() else {
                return Poll::Ready(None);
            };
            let buf = &mut conn.read;
            match self.chunk {
                ChunkState::Size => match h1::take_chunk_size(buf, false, MAX_CHUNK_LINE) {
                    Ok(Some(size)) => {
                        self.chunk = if size == 0 {
                            ChunkState::Trailers
                        } else {
                            ChunkState::Data(size)
                        };
                        continue;
                    }
                    Ok(None) => {}
                    Err(_) => return self.fail(Error::ChunkSize),
                },
                ChunkState::Data(left) => {
                    if !buf.is_empty() {
                        let data = take_up_to(buf, left);
                        let left = left - data.len() as u64;
                        self.chunk = if left == 0 {
                            ChunkState::DataEnd
                        } else {
                            ChunkState::Data(left)
                        };
                        return Poll::Ready(Some(Ok(Frame::data(data))));
                    }
                }
                ChunkState::DataEnd => {
                    if buf.starts_with(b"\r\n") {
                        let _ = buf.split_to(2);
                        self.chunk = ChunkState::Size;
                        continue;
                    }
                    if buf.starts_with(b"\n") {
                        let _ = buf.split_to(1);
                        self.chunk = ChunkState::Size;
                        continue;
                    }
                    if buf.len() >= 2 || buf.first().is_some_and(|&b| b != b'\r') {
                        return self.fail(Error::ChunkSize);
                    }
                }
                ChunkState::Trailers => {
                    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
                    match httparse::parse_headers(buf, &mut headers) {
                        Ok(httparse::Status::Complete((len, parsed))) => {
                            let mut trailers = HeaderMap::new();
                            for header in parsed {
                                let (Ok(name), Ok(value)) = (
                                    HeaderName::from_bytes(header.name.as_bytes()),
                                    HeaderValue::from_bytes(header.value),
                                ) else {
                                    return self.fail(Error::Trailers);
                                };
                                trailers.append(name, value);
                            }
                            let _ = buf.split_to(len);
                            self.decoding = Decoding::Done;
                            return Poll::Ready(
                                (!trailers.is_empty()).then(|| Ok(Frame::trailers(trailers))),
                            );
                        }
                        Ok(httparse::Status::Partial) if buf.len() <= MAX_HEAD => {}
                        Ok(httparse::Status::Partial) | Err(_) => {
                            return self.fail(Error::Trailers);
                        }
                    }
                }
            }
            if let Err(err) = ready!(self.poll_more(cx)) {
                return self.fail(err);
            }
        }
    }

    /// Reads more of the body from the socket; the end of the stream breaks it here.
    fn poll_more(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Error>> {
        let Some(conn) = self.conn.as_mut() else {
            return Poll::Ready(Err(Error::ClosedMidBody));
        };
        Poll::Ready(match ready!(conn.poll_read(cx)) {
            Ok(0) => Err(Error::ClosedMidBody),
            Ok(_) => Ok(()),
            Err(err) => Err(Error::Io(err)),
        })
    }
}

impl Body for ResponseBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        if let Err(err) = this.poll_writing(cx) {
            return this.fail(err);
        }
        match this.decoding {
            Decoding::Done => Poll::Ready(None),
            Decoding::Chunked => this.poll_chunked(cx),
            Decoding::Length(left) => {
                if this.conn.as_ref().is_some_and(|conn| conn.read.is_empty()) {
                    if let Err(err) = ready!(this.poll_more(cx)) {
                        return this.fail(err);
                    }
                }
                let Some(conn) = this.conn.as_mut() else {
                    return Poll::Ready(None);
                };
                let data = take_up_to(&mut conn.read, left);
                let left = left - data.len() as u64;
                this.decoding = if left == 0 {
                    Decoding::Done
                } else {
                    Decoding::Length(left)
                };
                if left == 0 {
                    // The request body's rest, if any, is not waited for: the connection
                    // then goes (see `take_connection`).
                    let _ = this.poll_writing(cx);
                }
                Poll::Ready(Some(Ok(Frame::data(data))))
            }
            Decoding::UntilClose => {
                let Some(conn) = this.conn.as_mut() else {
                    return Poll::Ready(None);
                };
                if conn.read.is_empty() {
                    match ready!(conn.poll_read(cx)) {
                        Ok(0) => {
                            this.decoding = Decoding::Done;
                            this.keep_alive = false;
                            return Poll::Ready(None);
                        }
                        Ok(_) => {}
                        Err(err) => return this.fail(Error::Io(err)),
                    }
                }
                let data = conn.read.split().freeze();
                Poll::Ready(Some(Ok(Frame::data(data))))
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.decoding == Decoding::Done
    }

    fn size_hint(&self) -> SizeHint {
        match self.decoding {
            Decoding::Done => SizeHint::with_exact(0),
            Decoding::Length(left) => SizeHint::with_exact(left),
            Decoding::Chunked | Decoding::UntilClose => SizeHint::default(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::run::proxy::spool::Spooled;
    use crate::run::proxy::upstream::IdleUpstreams;

    fn head_of(bytes: &[u8], head_request: bool) -> Result<Option<Head>, Error> {
        let mut buf = BytesMut::from(bytes);
        parse_head(&mut buf, head_request)
    }

    #[test]
    fn a_response_is_framed_as_rfc_9112_says() {
        let cases: &[(&[u8], bool, Decoding)] = &[
            (
                b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n",
                false,
                Decoding::Length(5),
            ),
            (
                b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Length: 5\r\n\r\n",
                false,
                Decoding::Length(5),
            ),
            (
                b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n",
                false,
                Decoding::Done,
            ),
            (
                b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, Chunked\r\n\r\n",
                false,
                Decoding::Chunked,
            ),
            (
                b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\n",
                false,
                Decoding::UntilClose,
            ),
            (b"HTTP/1.1 200 OK\r\n\r\n", false, Decoding::UntilClose),
            (
                b"HTTP/1.1 204 No Content\r\nContent-Length: 5\r\n\r\n",
                false,
                Decoding::Done,
            ),
            (
                b"HTTP/1.1 304 Not Modified\r\nTransfer-Encoding: chunked\r\n\r\n",
                false,
                Decoding::Done,
            ),
            (
                b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n",
                true,
                Decoding::Done,
            ),
            (
                b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n",
                false,
                Decoding::Length(2),
            ),
        ];
        for (bytes, head_request, expected) in cases {
            let head = head_of(bytes, *head_request)
                .expect("parses")
                .expect("whole");
            assert_eq!(
                head.decoding,
                *expected,
                "{}",
                String::from_utf8_lossy(bytes)
            );
        }
        for bad in [
            &b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\n"[..],
            b"HTTP/1.1 200 OK\r\nContent-Length: 5, 6\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nContent-Length: +5\r\n\r\n",
            b"HTTP/1.0 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nX-A : a\r\n\r\n",
            b"SSH-2.0-OpenSSH\r\n\r\n",
        ] {
            assert!(
                head_of(bad, false).is_err(),
                "{}",
                String::from_utf8_lossy(bad)
            );
        }
        assert!(head_of(b"HTTP/1.1 200 OK\r\nContent-Le", false)
            .expect("partial")
            .is_none());
        assert!(head_of(b"HTTP/1.1 100 Continue\r\n\r\n", false)
            .expect("interim")
            .is_none());
    }

    #[test]
    fn keep_alive_follows_the_version_and_connection() {
        let keeps = |bytes: &[u8]| {
            head_of(bytes, false)
                .expect("parses")
                .expect("whole")
                .keep_alive
        };
        assert!(keeps(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n"));
        assert!(!keeps(
            b"HTTP/1.1 200 OK\r\nConnection: keep-alive, close\r\nContent-Length: 0\r\n\r\n"
        ));
        assert!(!keeps(b"HTTP/1.0 200 OK\r\nContent-Length: 0\r\n\r\n"));
        assert!(keeps(
            b"HTTP/1.0 200 OK\r\nConnection: Keep-Alive\r\nContent-Length: 0\r\n\r\n"
        ));
        assert!(!keeps(
            b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n\r\n"
        ));
    }

    #[test]
    fn a_reason_phrase_is_kept_only_when_it_is_not_the_usual_one() {
        let head = head_of(b"HTTP/1.1 200 Fine\r\n\r\n", false)
            .expect("parses")
            .expect("whole");
        assert_eq!(head.response.reason.as_deref(), Some(&b"Fine"[..]));
        let head = head_of(b"HTTP/1.1 200 OK\r\n\r\n", false)
            .expect("parses")
            .expect("whole");
        assert!(head.response.reason.is_none());
    }

    /// A worker at a local address, and a connection to it as a request takes one.
    async fn worker() -> (tokio::net::TcpListener, IdleUpstreams) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        (listener, IdleUpstreams::default())
    }

    fn request(method: &str, body: Option<Bytes>) -> Request<UpstreamBody> {
        let body = body.map_or_else(Spooled::empty, Spooled::in_memory);
        let body: UpstreamBody = http_body_util::Either::Right(Box::new(body));
        Request::test(method, "/", Version::HTTP_11, &[("host", "x")], body)
    }

    /// Reads a request head off `socket`.
    async fn read_head(socket: &mut tokio::net::TcpStream) -> Vec<u8> {
        use tokio::io::AsyncReadExt as _;
        let mut head = Vec::new();
        let mut byte = [0u8; 1];
        while !head.ends_with(b"\r\n\r\n") {
            let n = socket.read(&mut byte).await.expect("read");
            assert_eq!(n, 1, "the request head");
            head.push(byte[0]);
        }
        head
    }

    #[tokio::test]
    async fn a_chunked_response_in_pieces_is_read_whole_with_its_trailers() {
        use http_body_util::BodyExt as _;
        use tokio::io::AsyncWriteExt as _;
        let (listener, idle) = worker().await;
        let addr = listener.local_addr().expect("addr");
        let server = tokio::spawn(async move {
            let (mut socket, _) = listener.accept().await.expect("accept");
            let head = read_head(&mut socket).await;
            let response: &[u8] = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n\
                5;ext=1\r\nhello\r\n6\r\n world\r\n0\r\nX-Sum: 42\r\n\r\n";
            // A piece of three bytes at a time, each on its own: every state of the
            // decoder meets the end of what has come.
            for piece in response.chunks(3) {
                socket.write_all(piece).await.expect("write");
                socket.flush().await.expect("flush");
                tokio::time::sleep(std::time::Duration::from_millis(1)).await;
            }
            (head, socket)
        });
        let conn = idle.connect(addr).await.expect("connect");
        let response = send(conn, request("GET", None)).await.expect("a response");
        assert_eq!(response.status, StatusCode::OK);
        let mut body = response.body;
        let mut data = Vec::new();
        let mut trailers = None;
        while let Some(frame) = body.frame().await {
            let frame = frame.expect("a frame");
            match frame.into_data() {
                Ok(piece) => data.extend_from_slice(&piece),
                Err(frame) => trailers = frame.into_trailers().ok(),
            }
        }
        assert_eq!(data, b"hello world");
        assert_eq!(
            trailers.and_then(|t| t.get("x-sum").cloned()),
            Some(HeaderValue::from_static("42"))
        );
        assert!(
            body.take_connection().is_some(),
            "the connection is reusable"
        );
        let (head, _socket) = server.await.expect("the worker");
        assert_eq!(head, b"GET / HTTP/1.1\r\nhost: x\r\n\r\n");
    }

    /// Regression: a worker may answer (a 413, say) before it has read the body, and stop
    /// reading; molt must hear the answer though its body cannot all be written.
    #[tokio::test]
    async fn an_answer_before_the_body_is_read_is_heard() {
        use tokio::io::AsyncWriteExt as _;
        let (listener, idle) = worker().await;
        let addr = listener.local_addr().expect("addr");
        let (done, until_done) = tokio::sync::oneshot::channel::<()>();
        let server = tokio::spawn(async move {
            let (mut socket, _) = listener.accept().await.expect("accept");
            let head = read_head(&mut socket).await;
            socket
                .write_all(b"HTTP/1.1 413 Payload Too Large\r\nContent-Length: 0\r\n\r\n")
                .await
                .expect("write");
            // Holds the connection, reading nothing more, until the test is done.
            let _ = until_done.await;
            head
        });
        // Far more than the sockets' buffers hold.
        let body = Bytes::from(vec![b'x'; 64 * 1024 * 1024]);
        let conn = idle.connect(addr).await.expect("connect");
        let sent = tokio::time::timeout(
            std::time::Duration::from_secs(20),
            send(conn, request("POST", Some(body))),
        )
        .await
        .expect("the answer is heard while the body waits");
        let mut response = sent.expect("a response");
        assert_eq!(response.status, StatusCode::PAYLOAD_TOO_LARGE);
        assert!(
            response.body.take_connection().is_none(),
            "a connection in the middle of a request body is not reused"
        );
        let _ = done.send(());
        let head = server.await.expect("the worker");
        let head = String::from_utf8(head).expect("text");
        assert!(head.contains("content-length: 67108864\r\n"), "{head}");
    }

    /// A connection the worker has reset fails the request's first write before any byte
    /// left: the request comes back whole, to go to a fresh connection.
    #[tokio::test]
    async fn a_request_that_could_not_leave_comes_back_whole() {
        let (listener, idle) = worker().await;
        let addr = listener.local_addr().expect("addr");
        let conn = idle.connect(addr).await.expect("connect");
        let (socket, _) = listener.accept().await.expect("accept");
        // SO_LINGER 0: the close sends a reset.
        let linger = nix::libc::linger {
            l_onoff: 1,
            l_linger: 0,
        };
        nix::sys::socket::setsockopt(&socket, nix::sys::socket::sockopt::Linger, &linger)
            .expect("linger");
        drop(socket);
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        while !conn.is_closed() {
            assert!(std::time::Instant::now() < deadline, "the reset arrives");
            tokio::task::yield_now().await;
        }
        let mut req = request("GET", None);
        req.headers
            .insert(message::Name::of("x-mark"), Value::from_static("kept"));
        match send(conn, req).await {
            Err(SendError::Unsent(unsent)) => {
                assert_eq!(unsent.method, Method::GET);
                assert_eq!(
                    unsent.headers.get(message::Name::of("x-mark")),
                    Some(&b"kept"[..])
                );
            }
            Err(other) => panic!("expected the request back, got {other:?}"),
            Ok(response) => panic!("expected the request back, got {}", response.status),
        }
    }

    /// Nagle's algorithm stays on for a request written in one piece and goes off before
    /// a request's second write.
    #[tokio::test]
    async fn only_a_request_in_pieces_turns_nagle_off() {
        use http_body_util::BodyExt as _;
        use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
        let (listener, idle) = worker().await;
        let addr = listener.local_addr().expect("addr");
        let body_len = 16 * 1024 * 1024;
        let server = tokio::spawn(async move {
            let (mut socket, _) = listener.accept().await.expect("accept");
            for expect in [0, body_len] {
                let head = read_head(&mut socket).await;
                assert!(head.starts_with(b"POST") == (expect > 0));
                let mut body = vec![0u8; expect];
                socket.read_exact(&mut body).await.expect("the body");
                socket
                    .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")
                    .await
                    .expect("write");
            }
        });
        let exchange = |conn, req| async move {
            let mut body = send(conn, req).await.expect("a response").body;
            while let Some(frame) = body.frame().await {
                frame.expect("body");
            }
            body.take_connection().expect("reusable")
        };
        let conn = idle.connect(addr).await.expect("connect");
        let conn = exchange(conn, request("GET", None)).await;
        assert!(!conn.nodelay(), "one piece");
        // Far more than one write takes on a loopback socket whose reader is slower.
        let body = Bytes::from(vec![b'x'; body_len]);
        let conn = exchange(conn, request("POST", Some(body))).await;
        assert!(conn.nodelay(), "in pieces");
        server.await.expect("the worker");
    }
}
