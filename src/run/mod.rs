//! `molt run`: the public listener, the proxy, and the supervised worker pool.

/// The client's socket under hyper: request framing, header and keep-alive timeouts.
mod conn;
/// Least-busy routing, the bounded request queue, and worker leases.
mod dispatch;
/// Per-worker in-flight limit learned from latency.
#[allow(
    dead_code,
    reason = "wired into dispatch by the learned-concurrency change"
)]
mod limiter;
/// One worker's memory over its life: now, peak, growth after warm-up.
mod memstats;
/// The HTTP/1.1 reverse proxy on the public port.
mod proxy;
/// Response bodies from a worker to a client, read ahead of a slow client.
mod relay;
/// Pure autoscaling decision: how many workers to add or retire.
mod scaler;
/// Request bodies read whole before a worker is leased: memory, then a temporary file.
mod spool;
/// The task that owns all worker state.
mod supervisor;
/// Connections from molt to its workers.
mod upstream;
/// Starting, probing and signalling worker processes.
mod worker;

use std::io;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddrV6};
use std::os::unix::process::CommandExt as _;
use std::sync::Arc;

use anyhow::Context as _;
use nix::errno::Errno;
use nix::sys::resource::{getrlimit, setrlimit, Resource};
use nix::sys::signal::{self as nix_signal, SigHandler};
use nix::sys::socket::{self, sockopt, AddressFamily, Backlog, SockFlag, SockType, SockaddrIn6};
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::Pid;
use tokio::signal::unix::{signal, Signal, SignalKind};
use tokio::sync::{mpsc, watch};

use crate::config::{BindMode, BufferMode, Config};
use crate::observe::event;
use dispatch::Dispatcher;
use supervisor::{Exit, Supervisor};

pub(crate) use supervisor::{Event, Outcome, StatusReport};
pub(crate) use worker::AppCommand;

/// Connections the kernel holds for molt before it accepts them.
const LISTEN_BACKLOG: i32 = 1024;

/// Longest molt waits at exit to reap the processes it killed in [`kill_leftovers`].
const LEFTOVER_REAP_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(1);

/// Runs the app under molt until a signal stops it or the app cannot boot.
pub(crate) fn run(config: Config, command: &AppCommand) -> anyhow::Result<Outcome> {
    if config.disable {
        return Err(exec_directly(&config, command));
    }
    raise_fd_limit();
    ignore_file_size_signal();
    // Orphans of the app (daemonized helpers, grandchildren of a dead worker) are
    // reparented to molt rather than to init, so molt reaps them and they cannot pile up
    // as zombies; as PID 1 molt is their parent anyway.
    if let Err(err) = nix::sys::prctl::set_child_subreaper(true) {
        event!(Warn, "subreaper_failed", error = err);
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    let outcome = runtime.block_on(serve(Arc::new(config), command.clone()));
    kill_leftovers();
    outcome
}

/// A write past `RLIMIT_FSIZE` (a spooled body on a file-size-limited dyno or CI runner)
/// raises SIGXFSZ, whose default action ends the process: molt would die with every
/// connection it holds. Ignored, the write fails with EFBIG instead and only that request
/// gets an error. Workers get the default action back before exec (see `worker::spawn`).
fn ignore_file_size_signal() {
    // SAFETY: installing SIG_IGN runs no code of ours in signal context, and no other
    // thread exists yet to race with the change of disposition.
    if let Err(err) = unsafe { nix_signal::signal(nix_signal::Signal::SIGXFSZ, SigHandler::SigIgn) }
    {
        event!(
            Warn,
            "signal_failed",
            signal = nix_signal::Signal::SIGXFSZ,
            error = err
        );
    }
}

/// Kills whatever of the app is still running once every worker has exited: a process
/// that left its worker's process group (a daemon that called `setsid`) escapes the
/// group signal, and, adopted by molt as the subreaper, would outlive molt under init.
fn kill_leftovers() {
    let Ok(me) = i32::try_from(std::process::id()) else {
        return;
    };
    let proc = std::path::Path::new("/proc");
    // Zombies have exited already and only wait for the reaping below.
    let left: Vec<i32> = crate::sys::memory::tree_pids(proc, me)
        .into_iter()
        .filter(|&pid| {
            pid != me
                && crate::sys::memory::read_stat(proc, pid).is_some_and(|stat| !stat.is_zombie())
        })
        .collect();
    if left.is_empty() {
        return;
    }
    event!(Warn, "kill_leftovers", processes = left.len());
    for &pid in &left {
        let _ = nix_signal::kill(Pid::from_raw(pid), nix_signal::Signal::SIGKILL);
    }
    // Reap them, so none is left a zombie; SIGKILL takes effect at once, but a process in
    // uninterruptible sleep may take a moment, which is not worth holding the exit for.
    let deadline = std::time::Instant::now() + LEFTOVER_REAP_TIMEOUT;
    loop {
        match waitpid(None, Some(WaitPidFlag::WNOHANG)) {
            Ok(WaitStatus::StillAlive) => {
                if std::time::Instant::now() >= deadline {
                    return;
                }
                std::thread::sleep(std::time::Duration::from_millis(10));
            }
            Ok(_) | Err(Errno::EINTR) => {}
            Err(_) => return,
        }
    }
}

async fn serve(config: Arc<Config>, command: AppCommand) -> anyhow::Result<Outcome> {
    // Handlers go in before any child exists, so no exit and no signal is missed; as PID 1
    // in a container, a signal without a handler would be ignored.
    let sigchld = signal(SignalKind::child()).context("cannot handle SIGCHLD")?;
    let signals = Signals {
        term: signal(SignalKind::terminate()).context("cannot handle SIGTERM")?,
        int: signal(SignalKind::interrupt()).context("cannot handle SIGINT")?,
        hup: signal(SignalKind::hangup()).context("cannot handle SIGHUP")?,
    };
    let dispatcher = Dispatcher::new(
        config.worker_concurrency,
        config.max_queue,
        config.queue_timeout,
    );
    let (facts, cgroup_warning) = crate::sys::facts();
    if let Some(warning) = cgroup_warning {
        event!(Warn, "cgroup", error = warning);
    }
    // The control socket is bound before any worker is forked: its 0600 mode comes
    // from a umask that briefly applies to the whole process.
    let control = crate::observe::control::bind(&config.control_socket)?;
    let (supervisor, links) = Supervisor::new(
        &config,
        command,
        Arc::clone(&dispatcher),
        Box::new(worker::Os::new()),
        facts,
    );
    tokio::spawn(crate::observe::control::serve(
        control,
        links.events.clone(),
    ));

    // Bind before any worker exists: Heroku's boot timeout (R10) needs only the bind,
    // and requests that arrive meanwhile wait in the queue.
    let listener = match config.bind {
        BindMode::Now => Some(listen(config.port)?),
        BindMode::Ready => None,
    };
    tokio::spawn(forward_signals(signals, links.events.clone()));
    tokio::spawn(reap(sigchld, links.events.clone()));
    let proxy = Arc::new(proxy::Proxy {
        dispatcher,
        events: links.events.clone(),
        request_timeout: config.request_timeout,
        buffer_requests: match config.buffer_requests {
            BufferMode::On => true,
            BufferMode::Off => false,
            BufferMode::Auto => config.worker_concurrency == 1,
        },
        max_body: config.max_body,
        timeouts: conn::Timeouts {
            header: config.header_timeout,
            keepalive: config.keepalive_timeout,
        },
    });
    tokio::spawn(serve_public(
        listener,
        config.port,
        links.first_ready,
        proxy,
        links.shutdown,
    ));
    let outcome = supervisor.run().await;
    let _ = std::fs::remove_file(&config.control_socket);
    Ok(outcome)
}

/// Runs the proxy on the public port, binding it first when that waits for a ready
/// worker (`MOLT_BIND=ready`).
async fn serve_public(
    listener: Option<std::net::TcpListener>,
    port: u16,
    mut first_ready: watch::Receiver<bool>,
    proxy: Arc<proxy::Proxy>,
    shutdown: watch::Receiver<bool>,
) {
    let listener = if let Some(listener) = listener {
        listener
    } else {
        if first_ready.wait_for(|ready| *ready).await.is_err() {
            return;
        }
        match listen(port) {
            Ok(listener) => listener,
            Err(err) => {
                let _ = proxy.events.send(Event::Fatal(format!("{err:#}")));
                return;
            }
        }
    };
    match tokio::net::TcpListener::from_std(listener) {
        Ok(listener) => proxy::serve(listener, Arc::clone(&proxy), shutdown).await,
        Err(err) => {
            let _ = proxy
                .events
                .send(Event::Fatal(format!("cannot use the listener: {err}")));
        }
    }
}

struct Signals {
    term: Signal,
    int: Signal,
    hup: Signal,
}

async fn forward_signals(mut signals: Signals, events: mpsc::UnboundedSender<Event>) {
    loop {
        let event = tokio::select! {
            _ = signals.term.recv() => Event::Shutdown { signal: nix::sys::signal::Signal::SIGTERM },
            _ = signals.int.recv() => Event::Shutdown { signal: nix::sys::signal::Signal::SIGINT },
            _ = signals.hup.recv() => Event::RollingRestart,
        };
        if events.send(event).is_err() {
            return;
        }
    }
}

/// Reaps every child that exits (workers, and orphans adopted as subreaper or PID 1) and
/// reports it. Nothing else in molt waits for children.
async fn reap(mut sigchld: Signal, events: mpsc::UnboundedSender<Event>) {
    loop {
        // SIGCHLD coalesces: one signal may stand for several exits.
        loop {
            let (pid, how) = match waitpid(None, Some(WaitPidFlag::WNOHANG)) {
                Ok(WaitStatus::Exited(pid, code)) => (pid, Exit::Code(code)),
                Ok(WaitStatus::Signaled(pid, signal, _)) => (pid, Exit::Signal(signal)),
                Ok(WaitStatus::StillAlive) | Err(Errno::ECHILD) => break,
                Ok(_) | Err(Errno::EINTR) => continue,
                Err(err) => {
                    event!(Warn, "wait_failed", error = err);
                    break;
                }
            };
            if events.send(Event::Exited { pid, how }).is_err() {
                return;
            }
        }
        if sigchld.recv().await.is_none() {
            return;
        }
    }
}

/// Binds the public port on all interfaces, IPv6 and IPv4 at once (Heroku's Fir
/// generation routes over IPv6), or IPv4 alone where the host has no IPv6.
fn listen(port: u16) -> anyhow::Result<std::net::TcpListener> {
    let listener = match listen_dual_stack(port) {
        Ok(listener) => listener,
        Err(Errno::EAFNOSUPPORT | Errno::EADDRNOTAVAIL) => {
            let listener = std::net::TcpListener::bind((Ipv4Addr::UNSPECIFIED, port))
                .with_context(|| cannot_bind(port))?;
            listener.set_nonblocking(true)?;
            listener
        }
        Err(err) => return Err(io::Error::from(err)).with_context(|| cannot_bind(port)),
    };
    event!(Info, "listen", port = port);
    Ok(listener)
}

fn cannot_bind(port: u16) -> String {
    format!("cannot listen on port {port}: is another process using it? Set PORT or --port to a free port")
}

fn listen_dual_stack(port: u16) -> Result<std::net::TcpListener, Errno> {
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

/// Every connection costs a descriptor on each side of the proxy; the default soft
/// limit (often 1024) is far below what the hard limit allows.
fn raise_fd_limit() {
    if let Ok((soft, hard)) = getrlimit(Resource::RLIMIT_NOFILE) {
        if soft < hard {
            if let Err(err) = setrlimit(Resource::RLIMIT_NOFILE, hard, hard) {
                event!(Warn, "rlimit_failed", error = err);
            }
        }
    }
}

/// `MOLT_DISABLE=1`: the escape hatch. Runs the command itself on the public port, as if
/// molt were not there. Returns only if the exec failed.
fn exec_directly(config: &Config, command: &AppCommand) -> anyhow::Error {
    event!(Info, "disabled", port = config.port);
    let mut cmd = command.command(config.port);
    cmd.env("PORT", config.port.to_string());
    anyhow::Error::from(cmd.exec()).context("cannot run the command")
}
