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
        if conn.send.ready().await.is_ok() {
            return Ok(conn);
        }
    }
    open(slot).await
}

async fn open(slot: &Slot) -> io::Result<Upstream> {
    let stream = TcpStream::connect(slot.addr).await?;
    let _ = stream.set_nodelay(true);
    let probe = std::os::fd::AsFd::as_fd(&stream).try_clone_to_owned().ok();
    let (send, conn) = hyper::client::conn::http1::Builder::new()
        .handshake(TokioIo::new(QuickAck {
            stream,
            unacked: false,
        }))
        .await
        .map_err(io::Error::other)?;
    tokio::spawn(async move {
        // Errors surface on the request that was using the connection.
        let _ = conn.with_upgrades().await;
    });
    Ok(Upstream::new(send, probe))
}

/// A connection to a worker that acknowledges what it receives at once.
///
/// Servers that leave Nagle's algorithm on (Python's `http.server` does) write a response
/// head and body as two small segments and hold the second until the first is
/// acknowledged; on a kept-alive connection Linux delays that acknowledgement by up to
/// 40 ms. Every response would then wait 40 ms. Quick-ack mode is not sticky, so it is
/// asked for again each time molt has read data and is about to wait for more: asking
/// also sends the acknowledgement the kernel was holding back. Asking before every read
/// instead cost a tenth of molt's CPU under load.
struct QuickAck {
    stream: TcpStream,
    /// Data was read since quick-ack mode was last asked for.
    unacked: bool,
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
}

impl tokio::io::AsyncRead for QuickAck {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let read = Pin::new(&mut self.stream).poll_read(cx, buf);
        match read {
            Poll::Ready(Ok(())) if buf.filled().len() > before => self.unacked = true,
            Poll::Pending if self.unacked => {
                self.unacked = false;
                self.quick_ack();
            }
            _ => {}
        }
        read
    }
}

impl tokio::io::AsyncWrite for QuickAck {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write_vectored(cx, bufs)
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
