//! What the supervisor reacts to: every source (signals, the reaper, readiness probes,
//! the request path, memory samples, the control socket) sends an [`Event`] on one
//! channel, and the supervisor alone acts on it (ARCHITECTURE.md, "Invariants").

use nix::sys::signal::Signal;
use nix::unistd::Pid;

use crate::observe::control::Command;
use crate::run::error::Fatal;
use crate::run::pool::WarmupFailure;
use crate::sys::memory::TreeMemory;
use crate::sys::prefork::{NotPrefork, Prefork};
use crate::sys::Exit;

/// Something the supervisor must react to.
#[derive(Debug)]
pub(crate) enum Event {
    /// A child of molt was reaped: a worker, or an orphan molt adopted as subreaper.
    Exited { pid: Pid, how: Exit },
    /// A booting worker accepted a connection (or passed its health check).
    Ready { id: u64 },
    /// A new worker's warm-up requests (`MOLT_WARMUP_PATH`) were all answered, or one
    /// failed; for an adopted master, the warm-up of its new children.
    Warmed {
        id: u64,
        result: Result<(), WarmupFailure>,
    },
    /// A draining worker has no request in flight any more.
    Drained { id: u64 },
    /// SIGTERM or SIGINT: finish in-flight requests, then stop.
    Shutdown { signal: Signal },
    /// From the control socket (`molt status`, `molt restart`) or SIGHUP (a restart).
    Command(Command),
    /// After shutdown began, the last client connection closed.
    ProxyIdle,
    /// Something molt cannot run without failed (the public port cannot be bound).
    Fatal(Fatal),
    /// A request on this worker outlived `MOLT_REQUEST_TIMEOUT`: the worker is stuck.
    Stuck { id: u64 },
    /// This worker refused a connection: it died and is not reaped yet, or it stopped
    /// listening. The proxy routes nothing more to it.
    Refused { id: u64 },
    /// What the process tree of a worker that just became ready shows: a preforking
    /// master molt can adopt, or why it is not one.
    Inspected {
        id: u64,
        found: Result<Prefork, NotPrefork>,
    },
    /// Memory of each worker's process tree (None: it was gone), the children of each
    /// adopted preforking master, and molt's own RSS.
    Sampled {
        samples: Vec<(u64, Option<TreeMemory>)>,
        children: Vec<ChildSamples>,
        molt_rss: Option<u64>,
    },
}

/// The children of one adopted master, as a sample found them.
#[derive(Debug)]
pub(crate) struct ChildSamples {
    /// The worker (the instance) whose master they are.
    pub(crate) id: u64,
    /// The master's own memory and its wrappers' (`bash -c`, `bin/start`), without any
    /// child: a child being forked or exiting is no part of it.
    pub(crate) own: u64,
    /// Each child that holds the master's listening socket, with its tree's memory.
    pub(crate) children: Vec<(i32, TreeMemory)>,
}
