//! The public port: bound dual-stack at start (or, with `MOLT_BIND=ready`, once a
//! worker is ready), then handed to the proxy threads, each running the accept loop in
//! [`super::serve`] on a runtime of its own.

use std::io;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddrV6};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::sys::socket::{self, sockopt, AddressFamily, Backlog, SockFlag, SockType, SockaddrIn6};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, watch};

use crate::observe::event;
use crate::run::error::Fatal;
use crate::run::event::Event;
use crate::run::proxy::head::Arrival;

/// Connections the kernel holds for molt before it accepts them.
const LISTEN_BACKLOG: i32 = 1024;

/// Runs the proxy on the public port, binding it first when that waits for a ready
/// worker (`MOLT_BIND=ready`), and tells the supervisor once every connection is done
/// after shutdown.
///
/// The proxy runs on threads of its own, one per CPU, each with its own single-threaded
/// runtime accepting from the same socket: a connection, its requests and the upstream
/// connections it opens stay on one thread, so serving a request wakes no other thread
/// (ARCHITECTURE.md, "Threads"). The supervisor's runtime, where this runs, only waits.
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
    // Each thread holds a sender; `recv` returns None once every thread is done.
    let (running, mut all_done) = mpsc::channel::<()>(1);
    let (spread, inboxes) = Spread::new(proxy_threads());
    for (index, inbox) in inboxes.into_iter().enumerate() {
        let started = listener.try_clone().and_then(|listener| {
            let thread = ProxyThread {
                index,
                listener,
                proxy: Arc::clone(&proxy),
                shutdown: shutdown.clone(),
                spread: Arc::clone(&spread),
                inbox,
                running: running.clone(),
            };
            std::thread::Builder::new()
                .name(format!("molt-proxy-{index}"))
                .spawn(move || thread.run())
        });
        if let Err(source) = started {
            let what = "start a proxy thread";
            let _ = proxy
                .events
                .send(Event::Fatal(Fatal::Setup { what, source }));
            return;
        }
    }
    drop((listener, running));
    let _ = all_done.recv().await;
    let _ = proxy.events.send(Event::ProxyIdle);
}

/// Threads the proxy runs on: one per CPU molt may use (its cgroup's quota counted).
pub(super) fn proxy_threads() -> usize {
    std::thread::available_parallelism().map_or(1, std::num::NonZero::get)
}

/// One proxy thread: its runtime, and the accept loop over its copy of the listener.
struct ProxyThread {
    index: usize,
    listener: std::net::TcpListener,
    proxy: Arc<super::Proxy>,
    shutdown: watch::Receiver<bool>,
    spread: Arc<Spread>,
    inbox: mpsc::UnboundedReceiver<Handed>,
    /// Dropped when the thread is done.
    running: mpsc::Sender<()>,
}

impl ProxyThread {
    fn run(self) {
        super::upstream::on_proxy_thread(self.index);
        let events = self.proxy.events.clone();
        let fatal = |what, source| {
            let _ = events.send(Event::Fatal(Fatal::Setup { what, source }));
        };
        let runtime = match tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
        {
            Ok(runtime) => runtime,
            Err(source) => return fatal("start a proxy thread's runtime", source),
        };
        runtime.block_on(async {
            match tokio::net::TcpListener::from_std(self.listener) {
                Ok(listener) => {
                    let spread = (self.spread, self.index);
                    super::serve(listener, self.proxy, self.shutdown, spread, self.inbox).await;
                }
                Err(source) => fatal("accept on the public port", source),
            }
        });
        drop(self.running);
    }
}

/// A connection one proxy thread accepted for another to serve.
pub(crate) struct Handed {
    pub(crate) stream: std::net::TcpStream,
    pub(crate) arrival: Arrival,
}

/// How many connections each proxy thread serves. Every thread accepts from the same
/// socket, and whichever wakes first takes a new connection, which with keep-alive
/// clients left one thread serving twice as many as the other; a thread that accepts a
/// connection while another serves fewer hands it to that one.
pub(crate) struct Spread {
    threads: Vec<Share>,
    /// When a thread last logged an accept error, in milliseconds after `born`.
    accept_error_ms: AtomicU64,
    born: Instant,
}

/// `Spread::accept_error_ms` before any error.
const NO_ERROR: u64 = u64::MAX;

struct Share {
    open: AtomicUsize,
    inbox: mpsc::UnboundedSender<Handed>,
}

impl Spread {
    /// A spread over `threads` threads, and each thread's inbox.
    fn new(threads: usize) -> (Arc<Spread>, Vec<mpsc::UnboundedReceiver<Handed>>) {
        let (shares, inboxes) = (0..threads.max(1))
            .map(|_| {
                let (inbox, receiver) = mpsc::unbounded_channel();
                let open = AtomicUsize::new(0);
                (Share { open, inbox }, receiver)
            })
            .unzip();
        let spread = Spread {
            threads: shares,
            accept_error_ms: AtomicU64::new(NO_ERROR),
            born: Instant::now(),
        };
        (Arc::new(spread), inboxes)
    }

    /// Where a connection thread `here` accepted is served: returned to serve here, or
    /// handed to the thread serving the fewest when that is fewer than here. Either way
    /// it is counted; [`Spread::closed`] uncounts it.
    pub(crate) fn place(
        &self,
        here: usize,
        stream: TcpStream,
        arrival: Arrival,
    ) -> Option<(TcpStream, Arrival)> {
        let load = |share: &Share| share.open.load(Ordering::Relaxed);
        let share = self.threads.iter().min_by_key(|share| load(share))?;
        if load(share) >= load(&self.threads[here]) {
            self.threads[here].open.fetch_add(1, Ordering::Relaxed);
            return Some((stream, arrival));
        }
        // Out of this thread's runtime, into the other's.
        let stream = match stream.into_std() {
            Ok(stream) => stream,
            Err(err) => {
                event!(Warn, "accept_error", error = err);
                return None;
            }
        };
        share.open.fetch_add(1, Ordering::Relaxed);
        let Err(mpsc::error::SendError(back)) = share.inbox.send(Handed { stream, arrival }) else {
            return None;
        };
        // That thread has stopped (molt is shutting down): serve it here.
        share.open.fetch_sub(1, Ordering::Relaxed);
        match TcpStream::from_std(back.stream) {
            Ok(stream) => {
                self.threads[here].open.fetch_add(1, Ordering::Relaxed);
                Some((stream, back.arrival))
            }
            Err(err) => {
                event!(Warn, "accept_error", error = err);
                None
            }
        }
    }

    /// Whether an accept error is the first any thread has seen for `window`, so that one
    /// line is logged for what all of them meet at once.
    pub(crate) fn first_error_within(&self, window: Duration) -> bool {
        let now = u64::try_from(self.born.elapsed().as_millis()).unwrap_or(NO_ERROR - 1);
        let last = self.accept_error_ms.load(Ordering::Relaxed);
        let window = u64::try_from(window.as_millis()).unwrap_or(u64::MAX);
        if last != NO_ERROR && now.saturating_sub(last) < window {
            return false;
        }
        self.accept_error_ms
            .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
            .is_ok()
    }

    /// A connection thread `thread` served has closed.
    pub(crate) fn closed(&self, thread: usize) {
        self.threads[thread].open.fetch_sub(1, Ordering::Relaxed);
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

#[cfg(test)]
mod tests {
    use super::*;

    /// A connected socket, as the accept loop gets one, and its client's end.
    async fn accepted(listener: &tokio::net::TcpListener) -> (TcpStream, Arrival, TcpStream) {
        let addr = listener.local_addr().expect("addr");
        let client = TcpStream::connect(addr).await.expect("connect");
        let (stream, peer) = listener.accept().await.expect("accept");
        (stream, Arrival { peer, local: addr }, client)
    }

    #[tokio::test]
    async fn a_thread_that_accepts_while_another_serves_fewer_hands_the_connection_over() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let (spread, mut inboxes) = Spread::new(2);
        let clients = std::sync::Mutex::new(Vec::new());
        let place = async |here| {
            let (stream, arrival, client) = accepted(&listener).await;
            clients.lock().expect("not poisoned").push(client);
            spread.place(here, stream, arrival).is_some()
        };
        assert!(place(0).await, "even: kept");
        assert!(!place(0).await, "thread 1 serves fewer: handed over");
        let handed = inboxes[1].try_recv().expect("in thread 1's inbox");
        assert_eq!(handed.arrival.local, listener.local_addr().expect("addr"));
        assert!(place(0).await, "even again: kept");
        assert!(place(1).await, "thread 1 serves fewer: kept");
        spread.closed(0);
        spread.closed(0);
        assert!(!place(1).await, "thread 0 serves none of 2: handed over");
        assert!(inboxes[0].try_recv().is_ok());
        // A thread that has stopped takes nothing: the connection stays, counted here.
        drop(inboxes.remove(0));
        spread.closed(0);
        assert!(place(1).await, "thread 0 serves fewer but is gone: kept");
        let counts: Vec<usize> = spread
            .threads
            .iter()
            .map(|share| share.open.load(Ordering::Relaxed))
            .collect();
        assert_eq!(counts, [0, 3]);
    }

    #[test]
    fn one_accept_error_is_logged_for_every_thread_that_meets_it() {
        let (spread, _inboxes) = Spread::new(2);
        let window = Duration::from_millis(50);
        assert!(spread.first_error_within(window), "the first");
        assert!(
            !spread.first_error_within(window),
            "another thread, at once"
        );
        std::thread::sleep(window);
        assert!(spread.first_error_within(window), "one window later");
    }
}
