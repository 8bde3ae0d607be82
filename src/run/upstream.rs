//! Connections from molt to its workers: kept-alive ones reused, new ones opened with
//! quick acknowledgements.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

use crate::run::dispatch::{Slot, Upstream};

/// A ready connection to the worker: an idle kept-alive one, else a new one.
pub(crate) async fn connect(slot: &Slot) -> io::Result<Upstream> {
    while let Some(mut conn) = slot.take_upstream() {
        if conn.ready().await.is_ok() {
            return Ok(conn);
        }
    }
    open(slot).await
}

async fn open(slot: &Slot) -> io::Result<Upstream> {
    let stream = TcpStream::connect(slot.addr).await?;
    let _ = stream.set_nodelay(true);
    let (send, conn) = hyper::client::conn::http1::Builder::new()
        .handshake(TokioIo::new(QuickAck(stream)))
        .await
        .map_err(io::Error::other)?;
    tokio::spawn(async move {
        // Errors surface on the request that was using the connection.
        let _ = conn.with_upgrades().await;
    });
    Ok(send)
}

/// A connection to a worker that acknowledges what it receives at once.
///
/// Servers that leave Nagle's algorithm on (Python's `http.server` does) write a response
/// head and body as two small segments and hold the second until the first is
/// acknowledged; on a kept-alive connection Linux delays that acknowledgement by up to
/// 40 ms. Every response would then wait 40 ms. Quick-ack mode is not sticky, so it is
/// asked for again before every read (one cheap system call).
struct QuickAck(TcpStream);

impl QuickAck {
    fn quick_ack(&self) {
        let one: nix::libc::c_int = 1;
        // SAFETY: setsockopt reads `size_of::<c_int>()` bytes from a pointer to a live
        // c_int, on a descriptor this stream owns for as long as `self` lives.
        unsafe {
            nix::libc::setsockopt(
                std::os::fd::AsRawFd::as_raw_fd(&self.0),
                nix::libc::IPPROTO_TCP,
                nix::libc::TCP_QUICKACK,
                std::ptr::from_ref(&one).cast(),
                nix::libc::socklen_t::try_from(std::mem::size_of::<nix::libc::c_int>())
                    .expect("an int's size fits socklen_t"),
            );
        }
    }
}

impl tokio::io::AsyncRead for QuickAck {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        self.quick_ack();
        Pin::new(&mut self.0).poll_read(cx, buf)
    }
}

impl tokio::io::AsyncWrite for QuickAck {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.0).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.0).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.0.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_shutdown(cx)
    }
}
