//! `molt run`: sets up the process (signals, limits, subreaper), starts the request path
//! and the pool, and turns their end into an [`Outcome`] or a [`Fatal`]. The two halves
//! and how they meet are drawn in ARCHITECTURE.md.

/// The runtime's errors: what stops molt, and why a worker did not boot.
mod error;
/// What the supervisor reacts to, sent on its one channel.
mod event;
/// The pool: the supervisor that owns every worker, their processes, memory and scaling.
mod pool;
/// The request path: the public listener, client connections, dispatch, the upstreams.
mod proxy;

use std::os::unix::process::CommandExt as _;
use std::sync::Arc;

use nix::errno::Errno;
use nix::sys::resource::{getrlimit, setrlimit, Resource};
use nix::sys::signal::{self as nix_signal, SigHandler};
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::Pid;
use tokio::signal::unix::{signal, Signal, SignalKind};
use tokio::sync::mpsc;

use crate::config::{BindMode, BufferMode, Concurrency, Config};
use crate::observe::control::Command;
use crate::observe::event;
use crate::sys::Exit;
use event::Event;
use pool::Supervisor;
use proxy::dispatch::Dispatcher;

pub(crate) use error::Fatal;
pub(crate) use pool::worker::{arena_text, AppCommand};
pub(crate) use pool::Outcome;

/// Longest molt waits, once the pool is done, for the request path to write the answers it
/// holds (the 503s of requests that were queued) before the runtime goes.
const FLUSH_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(1);

/// Longest molt waits at exit to reap the processes it killed in [`kill_leftovers`].
const LEFTOVER_REAP_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(1);

/// Runs the app under molt until a signal stops it or the app cannot boot.
pub(crate) fn run(config: Config, command: &AppCommand) -> Result<Outcome, Fatal> {
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
    // The supervisor's runtime: one thread, which mostly waits; the proxy runs on threads
    // of its own (`proxy::listen::serve_public`).
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|source| Fatal::Setup {
            what: "start the async runtime",
            source,
        })?;
    // Leftovers of a clean stop get the workers' stop signal and timeout; after a second
    // SIGINT or a fatal error molt goes at once.
    let grace = (config.stop_signal, config.stop_timeout);
    let outcome = runtime.block_on(serve(Arc::new(config), command.clone()));
    drop(runtime);
    let grace = matches!(outcome, Ok(Outcome::Stopped)).then_some(grace);
    kill_leftovers(grace);
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

/// Stops whatever of the app is still running once every worker has exited: a process
/// that left its worker's process group (a daemon that called `setsid`) escapes the
/// group signal, and, adopted by molt as the subreaper, would outlive molt under init.
/// With `grace`, they get that signal and that long to exit by themselves, as a worker
/// does; then, or without it at once, SIGKILL.
fn kill_leftovers(grace: Option<(nix_signal::Signal, std::time::Duration)>) {
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
    if let Some((signal, timeout)) = grace {
        event!(
            Info,
            "stop_leftovers",
            processes = left.len(),
            signal = signal.as_str(),
            timeout_ms = timeout.as_millis()
        );
        for &pid in &left {
            let _ = nix_signal::kill(Pid::from_raw(pid), signal);
        }
        if reap_until(std::time::Instant::now() + timeout) {
            return;
        }
    }
    let left: Vec<i32> = left
        .into_iter()
        .filter(|&pid| nix_signal::kill(Pid::from_raw(pid), None).is_ok())
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
    reap_until(std::time::Instant::now() + LEFTOVER_REAP_TIMEOUT);
}

/// Reaps exited children until none is left (true) or `deadline` passes (false).
fn reap_until(deadline: std::time::Instant) -> bool {
    loop {
        match waitpid(None, Some(WaitPidFlag::WNOHANG)) {
            Ok(WaitStatus::StillAlive) => {
                if std::time::Instant::now() >= deadline {
                    return false;
                }
                std::thread::sleep(std::time::Duration::from_millis(10));
            }
            Ok(_) | Err(Errno::EINTR) => {}
            Err(_) => return true,
        }
    }
}

async fn serve(config: Arc<Config>, command: AppCommand) -> Result<Outcome, Fatal> {
    // Handlers go in before any child exists, so no exit and no signal is missed; as PID 1
    // in a container, a signal without a handler would be ignored.
    let sigchld = handle(SignalKind::child(), "handle SIGCHLD")?;
    let signals = Signals {
        term: handle(SignalKind::terminate(), "handle SIGTERM")?,
        int: handle(SignalKind::interrupt(), "handle SIGINT")?,
        hup: handle(SignalKind::hangup(), "handle SIGHUP")?,
    };
    // With a learned concurrency every worker has a capacity of its own; the dispatcher's
    // is then where they start, which is what a pool with no worker ready yet is taken to
    // have.
    let capacity = match config.worker_concurrency {
        Concurrency::Fixed(n) => n,
        Concurrency::Auto => proxy::limiter::LimiterSettings::from_config(&config)
            .map_or(1, |settings| settings.initial),
    };
    let dispatcher = Dispatcher::new(capacity, config.max_queue, config.queue_timeout);
    let requests = Arc::clone(&dispatcher);
    let (facts, cgroup_warning) = crate::sys::facts();
    if let Some(warning) = cgroup_warning {
        event!(Warn, "cgroup", error = warning);
    }
    // The control socket is bound before any worker is forked: its 0600 mode comes
    // from a umask that briefly applies to the whole process.
    let control =
        crate::observe::control::bind(&config.control_socket).map_err(Fatal::ControlSocket)?;
    let (supervisor, links) = Supervisor::new(
        &config,
        command,
        Arc::clone(&dispatcher),
        Box::new(pool::worker::Os::new()),
        facts,
    );
    let events = links.events.clone();
    tokio::spawn(crate::observe::control::serve(control, move |command| {
        events.send(Event::Command(command)).is_ok()
    }));
    // Bound before any worker starts, like the control socket, so that an address in
    // use stops molt at once; never the public port (refused when configured).
    let metrics = match config.metrics_listen {
        Some(addr) => {
            let listener = crate::observe::metrics::bind(addr)
                .map_err(|source| Fatal::MetricsListen { addr, source })?;
            let requests = Arc::new(crate::observe::metrics::Requests::new());
            let events = links.events.clone();
            tokio::spawn(crate::observe::metrics::serve(
                listener,
                Arc::clone(&requests),
                move |command| events.send(Event::Command(command)).is_ok(),
            ));
            event!(Info, "metrics_listen", addr = addr);
            Some(requests)
        }
        None => None,
    };

    // Bind before any worker exists: Heroku's boot timeout (R10) needs only the bind,
    // and requests that arrive meanwhile wait in the queue.
    let listener = match config.bind {
        BindMode::Now => Some(proxy::listen::bind(config.port)?),
        BindMode::Ready => None,
    };
    tokio::spawn(forward_signals(signals, links.events.clone()));
    tokio::spawn(reap(sigchld, links.events.clone()));
    let proxy = Arc::new(proxy::Proxy {
        dispatcher,
        events: links.events.clone(),
        request_timeout: config.request_timeout,
        buffering: match config.buffer_requests {
            BufferMode::On => proxy::Buffering::Always,
            BufferMode::Off => proxy::Buffering::Never,
            BufferMode::Auto => proxy::Buffering::WhileOneAtATime,
        },
        max_body: config.max_body,
        timeouts: proxy::conn::Timeouts {
            header: config.header_timeout,
            keepalive: config.keepalive_timeout,
        },
        underscore_headers: config.underscore_headers,
        metrics,
    });
    let public = tokio::spawn(proxy::listen::serve_public(
        listener,
        config.port,
        links.first_ready,
        proxy,
        links.shutdown,
    ));
    let outcome = supervisor.run().await;
    // However molt ends (gave up booting, a second SIGINT, stopped), no request still
    // waiting for a worker is left without an answer: each gets 503 with Retry-After.
    // The supervisor is gone, so the proxy is stopping; give it a moment to write them.
    requests.close();
    let _ = tokio::time::timeout(FLUSH_TIMEOUT, public).await;
    let _ = std::fs::remove_file(&config.control_socket);
    outcome
}

/// Installs a handler for one signal.
fn handle(kind: SignalKind, what: &'static str) -> Result<Signal, Fatal> {
    signal(kind).map_err(|source| Fatal::Setup { what, source })
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
            _ = signals.hup.recv() => Event::Command(Command::Restart),
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
fn exec_directly(config: &Config, command: &AppCommand) -> Fatal {
    event!(Info, "disabled", port = config.port);
    let mut cmd = command.command(config.port);
    cmd.env("PORT", config.port.to_string());
    Fatal::Setup {
        what: "run the command",
        source: cmd.exec(),
    }
}
