//! Linux facts molt decides with: how much memory a worker's process tree holds, how much
//! the container may use, and how much the machine has.
//!
//! Each file under `/proc` or a cgroup mount is read by a pure parser over its text, so that
//! the parsers are tested against captured samples in `test/fixtures/`. The thin readers
//! around them take the root to read from (`/proc`, `/`), so tests point them at fake trees
//! laid out the same way.

/// cgroup v1 and v2 memory limit and usage of the cgroup molt runs in.
pub(crate) mod cgroup;
/// Memory and CPU time of process trees from `/proc`; physical memory; page size.
pub(crate) mod memory;
/// Whether the command is a preforking server (Unicorn, gunicorn, Puma), its master and the
/// children sharing its socket, from the process tree; each server's control signals.
pub(crate) mod prefork;

use std::fmt;
use std::path::Path;

use nix::sys::signal::Signal;

use crate::budget::Facts;

/// What this machine and container allow, read once at start. A cgroup that cannot be
/// read is reported in the returned warning and treated as no limit: the budget then
/// falls back to physical memory, which `molt plan` shows.
pub(crate) fn facts() -> (Facts, Option<String>) {
    let proc = Path::new("/proc");
    let (cgroup, warning) = match cgroup::read_cgroup_memory(proc, Path::new("/")) {
        Ok(found) => (found, None),
        Err(err) => (None, Some(err.to_string())),
    };
    let facts = Facts {
        cgroup_limit: cgroup.as_ref().and_then(|c| c.limit.bytes()),
        cgroup_version: cgroup.as_ref().map(|c| match c.version {
            cgroup::CgroupVersion::V1 => "v1",
            cgroup::CgroupVersion::V2 => "v2",
        }),
        physical: memory::physical_memory(proc),
        molt_rss: memory::self_rss(proc, memory::page_size()).unwrap_or(0),
        cpus: std::thread::available_parallelism().map_or(1, std::num::NonZero::get),
        worker_footprint: None,
    };
    (facts, warning)
}

/// How a process ended, as `waitpid` tells it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Exit {
    Code(i32),
    Signal(Signal),
}

impl fmt::Display for Exit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Exit::Code(code) => write!(f, "status {code}"),
            Exit::Signal(signal) => write!(f, "signal {}", signal.as_str()),
        }
    }
}
