//! The runtime's errors, split by what they do to molt.
//!
//! A [`Fatal`] stops molt: it reaches `main` as the `Err` of [`crate::run::run`], the
//! one way out, and only there becomes text for the user. Everything else is recovered
//! from where it happens: a [`BootFailure`] counts towards `MOLT_MAX_BOOT_FAILURES` and
//! backs off, a failed request gets its status from `proxy::failure`, and a worker that
//! dies is replaced. Only a boot failure that repeats before any worker was ever ready
//! becomes fatal ([`Fatal::CannotBoot`]).

use std::fmt;
use std::io;
use std::time::Duration;

use crate::observe::control::BindError;
use crate::run::pool::WarmupFailure;
use crate::sys::Exit;

/// What stops molt, with what the user needs to act on it.
#[derive(Debug)]
pub(crate) enum Fatal {
    /// molt could not set itself up (the async runtime, a signal handler).
    Setup {
        what: &'static str,
        source: io::Error,
    },
    /// The control socket could not be created.
    ControlSocket(BindError),
    /// The public port could not be bound or used.
    Listen { port: u16, source: io::Error },
    /// `MOLT_METRICS_LISTEN` could not be bound.
    MetricsListen {
        addr: std::net::SocketAddr,
        source: io::Error,
    },
    /// The app failed to boot `failures` times in a row and no worker was ever ready.
    CannotBoot {
        failures: u32,
        max: u32,
        last: BootFailure,
    },
}

impl fmt::Display for Fatal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Fatal::Setup { what, source } => write!(f, "cannot {what}: {source}"),
            Fatal::ControlSocket(err) => write!(f, "{err}"),
            Fatal::Listen { port, source } => write!(
                f,
                "cannot listen on port {port}: is another process using it? Set PORT or \
                 --port to a free port: {source}"
            ),
            Fatal::MetricsListen { addr, source } => write!(
                f,
                "cannot listen on MOLT_METRICS_LISTEN={addr}: is another process using it, \
                 or is the address not one of this machine's? Set MOLT_METRICS_LISTEN to a \
                 free port, or to off: {source}"
            ),
            Fatal::CannotBoot {
                failures,
                max,
                last,
            } => write!(
                f,
                "the app failed to boot {failures} time(s) in a row \
                 (MOLT_MAX_BOOT_FAILURES={max}): {last}"
            ),
        }
    }
}

impl std::error::Error for Fatal {}

/// Tests compare outcomes whole; two fatal errors are alike when they read alike.
#[cfg(test)]
impl PartialEq for Fatal {
    fn eq(&self, other: &Self) -> bool {
        self.to_string() == other.to_string()
    }
}

/// Why one worker did not boot. molt retries with a back-off.
#[derive(Debug)]
pub(crate) enum BootFailure {
    /// Every private port in the range is taken.
    NoFreePort { range: std::ops::Range<u16> },
    /// The command could not be started at all (not found, not executable).
    CannotStart(io::Error),
    /// The command exited before it accepted connections.
    Exited(Exit),
    /// The command did not accept connections within `MOLT_BOOT_TIMEOUT`.
    NotReady(Duration),
    /// The worker accepted connections but failed its warm-up (`MOLT_WARMUP_PATH`).
    WarmUp(WarmupFailure),
}

impl fmt::Display for BootFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            BootFailure::NoFreePort { range } => write!(
                f,
                "no free private port on 127.0.0.1 in {}-{}",
                range.start,
                range.end - 1
            ),
            BootFailure::CannotStart(err) => write!(f, "cannot start the command: {err}"),
            BootFailure::Exited(how) => write!(
                f,
                "the command exited with {how} before accepting connections on its PORT"
            ),
            BootFailure::NotReady(timeout) => write!(
                f,
                "the command did not accept connections on its PORT within {} \
                 (MOLT_BOOT_TIMEOUT); check that it listens on $PORT",
                humantime::format_duration(*timeout)
            ),
            BootFailure::WarmUp(failure) => write!(f, "{failure}"),
        }
    }
}
