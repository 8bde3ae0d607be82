//! The public port: bound dual-stack at start (or, with `MOLT_BIND=ready`, once a
//! worker is ready), then handed to the accept loop in [`super::serve`].

use std::io;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddrV6};
use std::sync::Arc;

use nix::errno::Errno;
use nix::sys::socket::{self, sockopt, AddressFamily, Backlog, SockFlag, SockType, SockaddrIn6};
use tokio::sync::watch;

use crate::observe::event;
use crate::run::error::Fatal;
use crate::run::event::Event;

/// Connections the kernel holds for molt before it accepts them.
const LISTEN_BACKLOG: i32 = 1024;

/// Runs the proxy on the public port, binding it first when that waits for a ready
/// worker (`MOLT_BIND=ready`).
pub(crate) async fn serve_public(
    listener: Option<std::net::TcpListener>,
    port: u16,
    mut first_ready: watch::Receiver<bool>,
    proxy: Arc<super::Proxy>,
    shutdown: watch::Receiver<bool>,
) {
    let listener = if let Some(listener) = listener {
        listener
    } else {
        if first_ready.wait_for(|ready| *ready).await.is_err() {
            return;
        }
        match bind(port) {
            Ok(listener) => listener,
            Err(fatal) => {
                let _ = proxy.events.send(Event::Fatal(fatal));
                return;
            }
        }
    };
    match tokio::net::TcpListener::from_std(listener) {
        Ok(listener) => super::serve(listener, Arc::clone(&proxy), shutdown).await,
        Err(source) => {
            let _ = proxy
                .events
                .send(Event::Fatal(Fatal::Listen { port, source }));
        }
    }
}

/// Binds the public port on all interfaces, IPv6 and IPv4 at once (Heroku's Fir
/// generation routes over IPv6), or IPv4 alone where the host has no IPv6.
pub(crate) fn bind(port: u16) -> Result<std::net::TcpListener, Fatal> {
    let fatal = |source| Fatal::Listen { port, source };
    let listener = match bind_dual_stack(port) {
        Ok(listener) => listener,
        Err(Errno::EAFNOSUPPORT | Errno::EADDRNOTAVAIL) => {
            let listener =
                std::net::TcpListener::bind((Ipv4Addr::UNSPECIFIED, port)).map_err(fatal)?;
            listener.set_nonblocking(true).map_err(fatal)?;
            listener
        }
        Err(err) => return Err(fatal(io::Error::from(err))),
    };
    event!(Info, "listen", port = port);
    Ok(listener)
}

fn bind_dual_stack(port: u16) -> Result<std::net::TcpListener, Errno> {
    let fd = socket::socket(
        AddressFamily::Inet6,
        SockType::Stream,
        SockFlag::SOCK_CLOEXEC | SockFlag::SOCK_NONBLOCK,
        None,
    )?;
    socket::setsockopt(&fd, sockopt::Ipv6V6Only, &false)?;
    // A restarted molt must not wait out the previous one's TIME_WAIT connections.
    socket::setsockopt(&fd, sockopt::ReuseAddr, &true)?;
    let addr = SockaddrIn6::from(SocketAddrV6::new(Ipv6Addr::UNSPECIFIED, port, 0, 0));
    socket::bind(std::os::fd::AsRawFd::as_raw_fd(&fd), &addr)?;
    // nix refuses a backlog above the C library's SOMAXCONN, which is 128 on musl (the
    // static release build) and 4096 on glibc; the kernel caps it at its own somaxconn.
    let backlog = Backlog::new(LISTEN_BACKLOG).unwrap_or(Backlog::MAXCONN);
    socket::listen(&fd, backlog)?;
    Ok(std::net::TcpListener::from(fd))
}
