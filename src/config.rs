//! Settings for `molt run`, turned once into a validated [`Config`].
//!
//! Precedence, highest first: command-line flags > `MOLT_*` environment > `molt.toml` in
//! the app root (or the file named by `MOLT_CONFIG`) > defaults. The one exception is the
//! port, whose variable is the platform's `PORT` rather than `MOLT_PORT`.
//!
//! Every setting is one row of [`SETTINGS`]: its key (also its `molt.toml` key), its
//! environment name, its flag, its kind, its default and its doc. Loading, `molt plan` and
//! the README table are all driven by that one table, so a new setting is one new row.
//!
//! Every source that is present is validated, not only the one that wins: a bad
//! `MOLT_MIN_WORKERS` is an error even when `--workers` overrides it, because molt never
//! guesses what a user meant.
//!
//! An unknown key in `molt.toml` warns at run time and fails the build (DESIGN 4.10):
//! [`load`] is the run-time behaviour, [`load_with`] with [`Strictness::Build`] the
//! buildpack's.

use std::collections::HashMap;
use std::fmt::{self, Write as _};
use std::io;
use std::path::{Path, PathBuf};
use std::time::Duration;

use nix::sys::signal::Signal;
use toml_edit::{ImDocument, Item};

use crate::units::{format_duration, format_size, parse_duration, parse_size, percent_of};

/// When the public port is bound.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum BindMode {
    /// At once, before any worker is ready (so Heroku's R10 boot timeout never fires).
    Now,
    /// Only once the first worker is ready, for platforms that treat a bound port as healthy.
    Ready,
}

/// Whether a request body is read whole before a worker is leased (slow-client protection).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum BufferMode {
    /// On when workers take one request at a time (Unicorn, gunicorn sync), where a slow
    /// upload would hold a whole worker.
    Auto,
    On,
    Off,
}

/// How much molt says about itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum LogLevel {
    Debug,
    Info,
    Warn,
}

/// A memory amount as a user writes it: a size, or a percentage of the memory budget.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum MemoryAmount {
    /// A size in bytes, above zero.
    Bytes(u64),
    /// A percentage of the whole budget (not of the usable part), 1 to 100.
    Percent(u8),
}

impl MemoryAmount {
    /// The amount in bytes, given the budget in bytes; a percentage rounds down.
    pub(crate) fn resolve(self, budget_bytes: u64) -> u64 {
        match self {
            MemoryAmount::Bytes(bytes) => bytes,
            MemoryAmount::Percent(percent) => percent_of(budget_bytes, percent),
        }
    }
}

impl fmt::Display for MemoryAmount {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            MemoryAmount::Bytes(bytes) => f.write_str(&format_size(*bytes)),
            MemoryAmount::Percent(percent) => write!(f, "{percent}%"),
        }
    }
}

/// The validated settings of one `molt run`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Config {
    /// Public port (`--port`, else `$PORT`, else 5000).
    pub port: u16,
    /// Workers kept running (`MOLT_MIN_WORKERS`, `--workers`).
    pub min_workers: usize,
    /// Most workers; `None` derives it from the memory budget and the CPUs (see `budget`).
    pub max_workers: Option<usize>,
    /// Requests one worker takes at once; 0 means unlimited.
    pub worker_concurrency: usize,
    /// Requests that may wait for a worker; more get 503.
    pub max_queue: usize,
    /// Longest a request may wait for a worker before 503.
    pub queue_timeout: Duration,
    /// Longest a worker may take to accept connections.
    pub boot_timeout: Duration,
    /// Consecutive boot failures, before any worker was ever ready, that make molt give up.
    pub max_boot_failures: u32,
    /// With a path, readiness is a GET returning a status below 500.
    pub health_path: Option<String>,
    /// Idleness after which a worker above `min_workers` is stopped.
    pub idle_timeout: Duration,
    /// Longest a request may run before it gets 504 and its worker is replaced; `None` is off.
    pub request_timeout: Option<Duration>,
    /// The memory budget; `None` detects it: the cgroup limit, else physical RAM.
    pub memory_limit: Option<u64>,
    /// Percentage of the budget the pool may use, molt's own memory included (1 to 100).
    pub memory_target: u8,
    /// Soft cap per worker: over it a worker is recycled gracefully; `None` is derived.
    pub worker_memory: Option<MemoryAmount>,
    /// Hard cap per worker: over it a worker's group is killed at once; `None` is derived.
    pub worker_memory_hard: Option<MemoryAmount>,
    /// Requests after which a worker is recycled; 0 is off.
    pub max_requests: u64,
    /// Age after which a worker is recycled; `None` is off.
    pub max_lifetime: Option<Duration>,
    /// Random spread, in percent, of `max_requests` and `max_lifetime` per worker (0 to 50).
    pub jitter: u8,
    /// Time allowed for in-flight requests to finish on SIGTERM.
    pub shutdown_timeout: Duration,
    /// Time a recycled worker gets to finish its in-flight requests.
    pub drain_timeout: Duration,
    /// Signal that asks a worker's process group to stop.
    pub stop_signal: Signal,
    /// Time between the stop signal and SIGKILL.
    pub stop_timeout: Duration,
    /// `WEB_CONCURRENCY` handed to each worker.
    pub worker_processes: usize,
    /// Time between two memory samples of the pool.
    pub sample_interval: Duration,
    /// Time between two l2met metrics lines; `None` is off.
    pub metrics_interval: Option<Duration>,
    /// Unix socket `molt status` talks to; by default derived from the port.
    pub control_socket: PathBuf,
    /// Exec the command directly on the public port, with no pool.
    pub disable: bool,
    /// When the public port is bound.
    pub bind: BindMode,
    /// Log verbosity.
    pub log_level: LogLevel,
    /// Whether request bodies are read whole before a worker is leased.
    pub buffer_requests: BufferMode,
    /// Largest request body accepted, bytes; larger ones get 413.
    pub max_body: u64,
    /// Longest a client may take to send a request head; then it gets 408.
    pub header_timeout: Duration,
    /// Longest a client connection may stay open with no request on it.
    pub keepalive_timeout: Duration,
}

/// Port when neither `--port` nor `$PORT` names one: Foreman's and `heroku local`'s default.
pub(crate) const DEFAULT_PORT: u16 = 5000;
/// One worker, so an app that never set anything behaves as it did without molt.
pub(crate) const DEFAULT_MIN_WORKERS: usize = 1;
/// Derived from the memory budget, the measured worker footprint and the CPUs, because no
/// fixed number suits both a 512 MB dyno and a 14 GB one (see `budget`).
pub(crate) const DEFAULT_MAX_WORKERS: Option<usize> = None;
/// One request per worker: the process model of Unicorn, gunicorn sync and Puma with one thread.
pub(crate) const DEFAULT_WORKER_CONCURRENCY: usize = 1;
/// Passenger's default queue length; beyond it a request gets 503 at once.
pub(crate) const DEFAULT_MAX_QUEUE: usize = 100;
/// Below Heroku's 30s router timeout (H12), so a queued request gets molt's 503 instead.
pub(crate) const DEFAULT_QUEUE_TIMEOUT: Duration = Duration::from_secs(25);
/// Rails apps with large bundles can take most of a minute to boot on a small dyno.
pub(crate) const DEFAULT_BOOT_TIMEOUT: Duration = Duration::from_secs(60);
/// Enough to ride out a flaky dependency at boot, few enough to fail a broken deploy quickly.
pub(crate) const DEFAULT_MAX_BOOT_FAILURES: u32 = 5;
/// Readiness is a TCP connect unless the app names a health path.
pub(crate) const DEFAULT_HEALTH_PATH: Option<String> = None;
/// Passenger's `pool_idle_time` (300 s): long enough that a pause between bursts does not
/// stop a worker that the next burst would have to boot again.
pub(crate) const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(300);
/// Off: a request the app means to serve slowly (an export, a report) must not be killed by
/// a default. Heroku's router gives up at 30 s (H12) whatever molt does.
pub(crate) const DEFAULT_REQUEST_TIMEOUT: Option<Duration> = None;
/// nginx's `client_header_timeout` is 60 s; half that, as Heroku's router gives a whole
/// request 30 s, still lets a slow mobile link through while a slowloris is cut short.
pub(crate) const DEFAULT_HEADER_TIMEOUT: Duration = Duration::from_secs(30);
/// nginx's `keepalive_timeout` (75 s), longer than the idle timeouts of common load
/// balancers and clients, so that the client, not molt, closes an idle connection.
pub(crate) const DEFAULT_KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(75);
/// Detected: the cgroup limit (the dyno's quota), else physical RAM.
pub(crate) const DEFAULT_MEMORY_LIMIT: Option<u64> = None;
/// The pool's share of the budget. The rest covers what a 2 s sample cannot see (a worker
/// growing between samples, a replacement booting) and the page cache, so Heroku's R14
/// (swap at the quota) is not reached before molt acts.
pub(crate) const DEFAULT_MEMORY_TARGET: u8 = 85;
/// Derived from the budget and the worker count (see `budget`).
pub(crate) const DEFAULT_WORKER_MEMORY: Option<MemoryAmount> = None;
/// Derived from the soft cap (see `budget`).
pub(crate) const DEFAULT_WORKER_MEMORY_HARD: Option<MemoryAmount> = None;
/// Off, as in Passenger and gunicorn: memory caps recycle leaking workers on evidence, and a
/// request count is only a proxy for a leak.
pub(crate) const DEFAULT_MAX_REQUESTS: u64 = 0;
/// Off, like uWSGI's `max-worker-lifetime`: an age is only a proxy for a leak.
pub(crate) const DEFAULT_MAX_LIFETIME: Option<Duration> = None;
/// Workers started together reach a request or age limit within 10% of each other, not in
/// the same instant (gunicorn users set `max_requests_jitter` to about this).
pub(crate) const DEFAULT_JITTER: u8 = 10;
/// Inside the 30s Heroku allows between SIGTERM and SIGKILL, leaving time to stop workers.
pub(crate) const DEFAULT_SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(25);
/// Heroku's router timeout is 30s, so no request that can still succeed is longer.
pub(crate) const DEFAULT_DRAIN_TIMEOUT: Duration = Duration::from_secs(30);
/// SIGTERM is the graceful stop of Puma, gunicorn and most servers (Unicorn: QUIT).
pub(crate) const DEFAULT_STOP_SIGNAL: Signal = Signal::SIGTERM;
/// Time a worker gets between the stop signal and SIGKILL.
pub(crate) const DEFAULT_STOP_TIMEOUT: Duration = Duration::from_secs(10);
/// `WEB_CONCURRENCY=1`, so the app's server runs one process and molt manages the processes.
pub(crate) const DEFAULT_WORKER_PROCESSES: usize = 1;
/// Often enough to catch a worker growing towards its cap before it swaps the dyno, rarely
/// enough that reading `smaps_rollup` for every process costs nothing noticeable.
pub(crate) const DEFAULT_SAMPLE_INTERVAL: Duration = Duration::from_secs(2);
/// One l2met line a minute: the resolution Librato and other log-drain tools chart by default.
pub(crate) const DEFAULT_METRICS_INTERVAL: Option<Duration> = Some(Duration::from_secs(60));
/// How the default control socket is shown where no port is known (the README).
pub(crate) const DEFAULT_CONTROL_SOCKET_SHOWN: &str = "/tmp/molt-$PORT.sock";
/// molt is on unless switched off.
pub(crate) const DEFAULT_DISABLE: bool = false;
/// Binding at once keeps slow-booting apps from failing Heroku's R10 boot timeout.
pub(crate) const DEFAULT_BIND: BindMode = BindMode::Now;
/// Buffer request bodies when workers take one request at a time.
pub(crate) const DEFAULT_BUFFER_REQUESTS: BufferMode = BufferMode::Auto;
/// 100 MB: large uploads pass (they spill to a temporary file), runaway ones do not.
pub(crate) const DEFAULT_MAX_BODY: u64 = 100 * 1024 * 1024;
/// Lifecycle events and problems, not every request.
pub(crate) const DEFAULT_LOG_LEVEL: LogLevel = LogLevel::Info;

/// The default control socket: `/tmp/molt-<port>.sock`. Naming it after the port lets
/// `molt status`, run with the same `PORT`, find it, and lets two molts on one machine
/// (two apps, or a test run next to a dev server) keep apart. `/tmp` is writable in every
/// dyno and container; the socket's mode, not the directory, keeps other users out.
pub(crate) fn default_control_socket(port: u16) -> PathBuf {
    PathBuf::from(format!("/tmp/molt-{port}.sock"))
}

impl Default for Config {
    fn default() -> Self {
        Config {
            port: DEFAULT_PORT,
            min_workers: DEFAULT_MIN_WORKERS,
            max_workers: DEFAULT_MAX_WORKERS,
            worker_concurrency: DEFAULT_WORKER_CONCURRENCY,
            max_queue: DEFAULT_MAX_QUEUE,
            queue_timeout: DEFAULT_QUEUE_TIMEOUT,
            boot_timeout: DEFAULT_BOOT_TIMEOUT,
            max_boot_failures: DEFAULT_MAX_BOOT_FAILURES,
            health_path: DEFAULT_HEALTH_PATH,
            idle_timeout: DEFAULT_IDLE_TIMEOUT,
            request_timeout: DEFAULT_REQUEST_TIMEOUT,
            memory_limit: DEFAULT_MEMORY_LIMIT,
            memory_target: DEFAULT_MEMORY_TARGET,
            worker_memory: DEFAULT_WORKER_MEMORY,
            worker_memory_hard: DEFAULT_WORKER_MEMORY_HARD,
            max_requests: DEFAULT_MAX_REQUESTS,
            max_lifetime: DEFAULT_MAX_LIFETIME,
            jitter: DEFAULT_JITTER,
            shutdown_timeout: DEFAULT_SHUTDOWN_TIMEOUT,
            drain_timeout: DEFAULT_DRAIN_TIMEOUT,
            stop_signal: DEFAULT_STOP_SIGNAL,
            stop_timeout: DEFAULT_STOP_TIMEOUT,
            worker_processes: DEFAULT_WORKER_PROCESSES,
            sample_interval: DEFAULT_SAMPLE_INTERVAL,
            metrics_interval: DEFAULT_METRICS_INTERVAL,
            control_socket: default_control_socket(DEFAULT_PORT),
            disable: DEFAULT_DISABLE,
            bind: DEFAULT_BIND,
            buffer_requests: DEFAULT_BUFFER_REQUESTS,
            max_body: DEFAULT_MAX_BODY,
            header_timeout: DEFAULT_HEADER_TIMEOUT,
            keepalive_timeout: DEFAULT_KEEPALIVE_TIMEOUT,
            log_level: DEFAULT_LOG_LEVEL,
        }
    }
}

/// Names the environment uses that are not settings, so they are never called unknown.
const OTHER_ENV_NAMES: &[&str] = &[
    // The path of the TOML file, read before the settings.
    CONFIG_ENV,
    // Set by molt itself in each worker's environment; a molt started inside a worker
    // must not take it for a setting.
    "MOLT_WORKER",
    // Read by the buildpack at build time; Heroku config vars are also set at run time.
    "MOLT_BINARY_URL",
];

/// The variable naming the TOML file to read instead of `molt.toml` in the app root.
const CONFIG_ENV: &str = "MOLT_CONFIG";

/// The file read from the app root when `MOLT_CONFIG` is not set.
const DEFAULT_FILE: &str = "molt.toml";

/// How close (normalised Damerau-Levenshtein, 0 to 1) an unknown name must be to a known
/// one to be suggested. 0.6 catches a missing, extra or swapped letter and
/// `MOLT_WORKERS` for `MOLT_MIN_WORKERS`; a name further from every setting (`MOLT_FOO`)
/// gets a pointer to `molt plan` rather than a misleading guess.
const SUGGESTION_THRESHOLD: f64 = 0.6;

const DURATION_EXPECTED: &str = "a duration such as 250ms, 30s or 5m";
const POSITIVE_DURATION_EXPECTED: &str = "a duration above zero, such as 250ms, 30s or 5m";
const BOOL_EXPECTED: &str = "true or false (or 1/0, yes/no, on/off)";
const PATH_EXPECTED: &str = "a URL path starting with / and without spaces, such as /up";
const DURATION_OR_OFF_EXPECTED: &str = "a duration such as 250ms, 30s or 5m, or off";
const SIZE_EXPECTED: &str = "a size of at least 1MB such as 512MB or 1.5GB, or auto";
const MEMORY_AMOUNT_EXPECTED: &str = "a size of at least 1MB such as 230MB, \
     a percentage of the budget from 1% to 100% such as 45%, or auto";

/// Smallest memory size a setting takes. Sizes may be plain bytes, so without a floor
/// `MOLT_WORKER_MEMORY=45`, meant as 45%, would be a 45-byte cap.
const MIN_MEMORY_SIZE: u64 = 1 << 20;
const SOCKET_EXPECTED: &str = "an absolute path of at most 107 bytes, such as /tmp/molt.sock";

/// Longest Unix socket path Linux accepts: `sun_path` is 108 bytes with the closing NUL.
const SOCKET_PATH_MAX: usize = 107;

/// The signals a worker may be asked to stop with, by their names without `SIG`.
const SIGNALS: &[(&str, Signal)] = &[
    ("TERM", Signal::SIGTERM),
    ("QUIT", Signal::SIGQUIT),
    ("INT", Signal::SIGINT),
    ("USR1", Signal::SIGUSR1),
    ("USR2", Signal::SIGUSR2),
    ("HUP", Signal::SIGHUP),
    ("KILL", Signal::SIGKILL),
    ("WINCH", Signal::SIGWINCH),
];

/// One setting: where it is read from, what it accepts, and where it goes in [`Config`].
#[derive(Debug, Clone, Copy)]
pub(crate) struct Setting {
    /// Lowercase key, used in messages, `molt plan` and as the `molt.toml` key.
    pub key: &'static str,
    /// Environment variable.
    pub env: &'static str,
    /// Command-line flag, if `molt run` has one.
    pub flag: Option<&'static str>,
    /// What the setting accepts and which [`Config`] field it sets.
    pub kind: Kind,
    /// Default, written as a user would write it. Must agree with the `DEFAULT_*` constant.
    pub default: &'static str,
    /// One line for the README.
    #[allow(
        dead_code,
        reason = "read by settings_markdown, which the README generator calls"
    )]
    pub doc: &'static str,
}

impl Setting {
    /// The key in `molt.toml`: the setting's key, so the file reads like the docs.
    pub(crate) fn toml_key(&self) -> &'static str {
        self.key
    }

    /// The flag as a user would see it in a message, e.g. `--workers`.
    fn flag_name(&self) -> String {
        self.flag.map_or_else(
            || format!("--{}", self.key.replace('_', "-")),
            str::to_owned,
        )
    }
}

/// What a setting accepts. Each kind carries the function that stores the parsed value in
/// [`Config`], so the table alone says where a setting goes.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Kind {
    /// A whole number from `min` to `max`; `max` of `u32::MAX` means unbounded.
    Count {
        min: u32,
        max: u32,
        set: fn(&mut Config, u32),
    },
    /// A duration, which may be zero only when `allow_zero`.
    Duration {
        allow_zero: bool,
        set: fn(&mut Config, Duration),
    },
    /// One of [`SIGNALS`].
    Signal { set: fn(&mut Config, Signal) },
    /// A boolean; empty text is false.
    Bool { set: fn(&mut Config, bool) },
    /// A URL path; empty text is none.
    Path {
        set: fn(&mut Config, Option<String>),
    },
    /// One of the listed words, case-insensitive, each with what it sets.
    Choice(&'static [(&'static str, SetChoice)]),
    /// `auto` (or empty), or a whole number from `min` to `max`; `auto` is `None`.
    AutoCount {
        min: u32,
        max: u32,
        set: fn(&mut Config, Option<u32>),
    },
    /// A duration, or `off` (or zero), which is `None`.
    DurationOrOff {
        set: fn(&mut Config, Option<Duration>),
    },
    /// A whole percentage from `min` to `max`, with or without `%`.
    Percent {
        min: u8,
        max: u8,
        set: fn(&mut Config, u8),
    },
    /// `auto` (or empty), or a size above zero (see [`parse_size`]); `auto` is `None`.
    Size { set: fn(&mut Config, Option<u64>) },
    /// `auto` (or empty), a size above zero, or a percentage of the budget.
    Memory {
        set: fn(&mut Config, Option<MemoryAmount>),
    },
    /// The absolute path of a Unix socket; empty is [`default_control_socket`] of the port
    /// already loaded, so the row must come after `port` in [`SETTINGS`].
    Socket { set: fn(&mut Config, PathBuf) },
}

/// Stores one choice of a [`Kind::Choice`] setting.
pub(crate) type SetChoice = fn(&mut Config);

/// Every setting, in the order `molt plan` and the README show them.
pub(crate) static SETTINGS: &[Setting] = &[
    Setting {
        key: "port",
        env: "PORT",
        flag: Some("--port"),
        kind: Kind::Count {
            min: 1,
            max: 65535,
            set: |c, n| c.port = u16::try_from(n).expect("port is bounded by 65535 in SETTINGS"),
        },
        default: "5000",
        doc: "Public port the proxy listens on (the platform's PORT).",
    },
    Setting {
        key: "min_workers",
        env: "MOLT_MIN_WORKERS",
        flag: Some("--workers"),
        kind: Kind::Count {
            min: 1,
            max: 1024,
            set: |c, n| c.min_workers = n as usize,
        },
        default: "1",
        doc: "Workers kept running.",
    },
    Setting {
        key: "max_workers",
        env: "MOLT_MAX_WORKERS",
        flag: None,
        kind: Kind::AutoCount {
            min: 1,
            max: 1024,
            set: |c, n| c.max_workers = n.map(|n| n as usize),
        },
        default: "auto",
        doc: "Most workers; auto derives it from the memory budget, the worker footprint and the CPUs.",
    },
    Setting {
        key: "worker_concurrency",
        env: "MOLT_WORKER_CONCURRENCY",
        flag: Some("--concurrency"),
        kind: Kind::Count {
            min: 0,
            max: u32::MAX,
            set: |c, n| c.worker_concurrency = n as usize,
        },
        default: "1",
        doc: "Requests one worker takes at once; 0 means unlimited.",
    },
    Setting {
        key: "max_queue",
        env: "MOLT_MAX_QUEUE",
        flag: None,
        kind: Kind::Count {
            min: 0,
            max: u32::MAX,
            set: |c, n| c.max_queue = n as usize,
        },
        default: "100",
        doc: "Requests that may wait for a worker; more get 503.",
    },
    Setting {
        key: "queue_timeout",
        env: "MOLT_QUEUE_TIMEOUT",
        flag: None,
        kind: Kind::Duration {
            allow_zero: false,
            set: |c, d| c.queue_timeout = d,
        },
        default: "25s",
        doc: "Longest a request may wait for a worker before 503.",
    },
    Setting {
        key: "boot_timeout",
        env: "MOLT_BOOT_TIMEOUT",
        flag: None,
        kind: Kind::Duration {
            allow_zero: false,
            set: |c, d| c.boot_timeout = d,
        },
        default: "60s",
        doc: "Longest a worker may take to accept connections.",
    },
    Setting {
        key: "max_boot_failures",
        env: "MOLT_MAX_BOOT_FAILURES",
        flag: None,
        kind: Kind::Count {
            min: 1,
            max: u32::MAX,
            set: |c, n| c.max_boot_failures = n,
        },
        default: "5",
        doc: "Consecutive failed boots, before any worker was ready, that make molt give up.",
    },
    Setting {
        key: "health_path",
        env: "MOLT_HEALTH_PATH",
        flag: Some("--health-path"),
        kind: Kind::Path {
            set: |c, p| c.health_path = p,
        },
        default: "",
        doc: "With a path, a worker is ready when a GET returns a status below 500.",
    },
    Setting {
        key: "idle_timeout",
        env: "MOLT_IDLE_TIMEOUT",
        flag: None,
        kind: Kind::Duration {
            allow_zero: false,
            set: |c, d| c.idle_timeout = d,
        },
        default: "5m",
        doc: "Idle time after which a worker above min_workers is stopped.",
    },
    Setting {
        key: "request_timeout",
        env: "MOLT_REQUEST_TIMEOUT",
        flag: None,
        kind: Kind::DurationOrOff {
            set: |c, d| c.request_timeout = d,
        },
        default: "off",
        doc: "A request running longer gets 504 and its worker is replaced; off or 0 disables.",
    },
    Setting {
        key: "memory_limit",
        env: "MOLT_MEMORY_LIMIT",
        flag: None,
        kind: Kind::Size {
            set: |c, n| c.memory_limit = n,
        },
        default: "auto",
        doc: "Memory budget; auto is the cgroup limit, else physical RAM.",
    },
    Setting {
        key: "memory_target",
        env: "MOLT_MEMORY_TARGET",
        flag: None,
        kind: Kind::Percent {
            min: 1,
            max: 100,
            set: |c, p| c.memory_target = p,
        },
        default: "85%",
        doc: "Share of the budget the pool may use, molt's own memory included.",
    },
    Setting {
        key: "worker_memory",
        env: "MOLT_WORKER_MEMORY",
        flag: None,
        kind: Kind::Memory {
            set: |c, m| c.worker_memory = m,
        },
        default: "auto",
        doc: "Soft cap per worker (a size, or a percentage of the budget); over it a worker is recycled gracefully.",
    },
    Setting {
        key: "worker_memory_hard",
        env: "MOLT_WORKER_MEMORY_HARD",
        flag: None,
        kind: Kind::Memory {
            set: |c, m| c.worker_memory_hard = m,
        },
        default: "auto",
        doc: "Hard cap per worker, above the soft cap; over it a worker is killed at once.",
    },
    Setting {
        key: "max_requests",
        env: "MOLT_MAX_REQUESTS",
        flag: None,
        kind: Kind::Count {
            min: 0,
            max: u32::MAX,
            set: |c, n| c.max_requests = u64::from(n),
        },
        default: "0",
        doc: "Requests after which a worker is recycled; 0 disables.",
    },
    Setting {
        key: "max_lifetime",
        env: "MOLT_MAX_LIFETIME",
        flag: None,
        kind: Kind::DurationOrOff {
            set: |c, d| c.max_lifetime = d,
        },
        default: "off",
        doc: "Age after which a worker is recycled; off or 0 disables.",
    },
    Setting {
        key: "jitter",
        env: "MOLT_JITTER",
        flag: None,
        kind: Kind::Percent {
            min: 0,
            max: 50,
            set: |c, p| c.jitter = p,
        },
        default: "10%",
        doc: "Random spread of max_requests and max_lifetime per worker, so workers do not recycle together.",
    },
    Setting {
        key: "shutdown_timeout",
        env: "MOLT_SHUTDOWN_TIMEOUT",
        flag: None,
        kind: Kind::Duration {
            allow_zero: true,
            set: |c, d| c.shutdown_timeout = d,
        },
        default: "25s",
        doc: "Time in-flight requests get to finish on SIGTERM.",
    },
    Setting {
        key: "drain_timeout",
        env: "MOLT_DRAIN_TIMEOUT",
        flag: None,
        kind: Kind::Duration {
            allow_zero: true,
            set: |c, d| c.drain_timeout = d,
        },
        default: "30s",
        doc: "Time a recycled worker gets to finish its in-flight requests.",
    },
    Setting {
        key: "stop_signal",
        env: "MOLT_STOP_SIGNAL",
        flag: None,
        kind: Kind::Signal {
            set: |c, s| c.stop_signal = s,
        },
        default: "TERM",
        doc: "Signal that asks a worker's process group to stop.",
    },
    Setting {
        key: "stop_timeout",
        env: "MOLT_STOP_TIMEOUT",
        flag: None,
        kind: Kind::Duration {
            allow_zero: true,
            set: |c, d| c.stop_timeout = d,
        },
        default: "10s",
        doc: "Time between the stop signal and SIGKILL.",
    },
    Setting {
        key: "worker_processes",
        env: "MOLT_WORKER_PROCESSES",
        flag: None,
        kind: Kind::Count {
            min: 1,
            max: u32::MAX,
            set: |c, n| c.worker_processes = n as usize,
        },
        default: "1",
        doc: "WEB_CONCURRENCY handed to each worker.",
    },
    Setting {
        key: "sample_interval",
        env: "MOLT_SAMPLE_INTERVAL",
        flag: None,
        kind: Kind::Duration {
            allow_zero: false,
            set: |c, d| c.sample_interval = d,
        },
        default: "2s",
        doc: "Time between two memory samples of the pool.",
    },
    Setting {
        key: "metrics_interval",
        env: "MOLT_METRICS_INTERVAL",
        flag: None,
        kind: Kind::DurationOrOff {
            set: |c, d| c.metrics_interval = d,
        },
        default: "60s",
        doc: "Time between two l2met metrics lines; off or 0 disables.",
    },
    Setting {
        key: "control_socket",
        env: "MOLT_CONTROL_SOCKET",
        flag: None,
        kind: Kind::Socket {
            set: |c, p| c.control_socket = p,
        },
        default: "",
        doc: "Unix socket that molt status talks to; only molt's user can open it.",
    },
    Setting {
        key: "disable",
        env: "MOLT_DISABLE",
        flag: None,
        kind: Kind::Bool {
            set: |c, b| c.disable = b,
        },
        default: "false",
        doc: "Run the command directly on the public port, with no pool.",
    },
    Setting {
        key: "bind",
        env: "MOLT_BIND",
        flag: None,
        kind: Kind::Choice(&[
            ("now", |c| c.bind = BindMode::Now),
            ("ready", |c| c.bind = BindMode::Ready),
        ]),
        default: "now",
        doc: "Bind the public port now, or once the first worker is ready.",
    },
    Setting {
        key: "log",
        env: "MOLT_LOG",
        flag: None,
        kind: Kind::Choice(&[
            ("debug", |c| c.log_level = LogLevel::Debug),
            ("info", |c| c.log_level = LogLevel::Info),
            ("warn", |c| c.log_level = LogLevel::Warn),
        ]),
        default: "info",
        doc: "How much molt logs: debug, info or warn.",
    },
    Setting {
        key: "buffer_requests",
        env: "MOLT_BUFFER_REQUESTS",
        flag: None,
        kind: Kind::Choice(&[
            ("auto", |c| c.buffer_requests = BufferMode::Auto),
            ("on", |c| c.buffer_requests = BufferMode::On),
            ("off", |c| c.buffer_requests = BufferMode::Off),
        ]),
        default: "auto",
        doc: "Read request bodies whole before a worker is leased (auto: when worker concurrency is 1).",
    },
    Setting {
        key: "max_body",
        env: "MOLT_MAX_BODY",
        flag: None,
        kind: Kind::Size {
            set: |c, n| c.max_body = n.unwrap_or(DEFAULT_MAX_BODY),
        },
        default: "100MB",
        doc: "Largest request body accepted; larger ones get 413.",
    },
    Setting {
        key: "header_timeout",
        env: "MOLT_HEADER_TIMEOUT",
        flag: None,
        kind: Kind::Duration {
            allow_zero: false,
            set: |c, d| c.header_timeout = d,
        },
        default: "30s",
        doc: "Longest a client may take to send a request's headers; then it gets 408.",
    },
    Setting {
        key: "keepalive_timeout",
        env: "MOLT_KEEPALIVE_TIMEOUT",
        flag: None,
        kind: Kind::Duration {
            allow_zero: false,
            set: |c, d| c.keepalive_timeout = d,
        },
        default: "75s",
        doc: "Longest a client connection may stay open with no request on it.",
    },
];

/// A raw value from one source, before its kind interprets it.
#[derive(Debug, Clone, Copy)]
enum Raw<'a> {
    /// Text from a flag, the environment or a TOML string.
    Text(&'a str),
    Int(i64),
    Float(f64),
    Bool(bool),
    /// A TOML table, array or date, which no setting accepts.
    Other,
}

impl<'a> Raw<'a> {
    fn from_toml(item: &'a Item) -> Self {
        match item.as_value() {
            Some(toml_edit::Value::String(s)) => Raw::Text(s.value()),
            Some(toml_edit::Value::Integer(i)) => Raw::Int(*i.value()),
            Some(toml_edit::Value::Float(f)) => Raw::Float(*f.value()),
            Some(toml_edit::Value::Boolean(b)) => Raw::Bool(*b.value()),
            _ => Raw::Other,
        }
    }

    fn text(self) -> Option<&'a str> {
        match self {
            Raw::Text(text) => Some(text),
            _ => None,
        }
    }
}

impl Kind {
    /// Interprets `raw`, stores it in `config` and returns its display form, or returns
    /// the accepted form for the error message.
    fn apply(&self, raw: Raw<'_>, config: &mut Config) -> Result<String, String> {
        match *self {
            Kind::Count { min, max, set } => {
                let n = count_from(raw, min, max)?;
                set(config, n);
                Ok(n.to_string())
            }
            Kind::Duration { allow_zero, set } => {
                let duration = duration_from(raw)?;
                if duration.is_zero() && !allow_zero {
                    return Err(POSITIVE_DURATION_EXPECTED.to_owned());
                }
                set(config, duration);
                Ok(format_duration(duration))
            }
            Kind::Signal { set } => {
                let expected = || {
                    let names: Vec<&str> = SIGNALS.iter().map(|(name, _)| *name).collect();
                    format!("a signal name: {}", join_or(&names))
                };
                let (name, signal) = raw.text().and_then(signal_from).ok_or_else(expected)?;
                set(config, signal);
                Ok(name.to_owned())
            }
            Kind::Bool { set } => {
                let b = match raw {
                    Raw::Bool(b) => Some(b),
                    Raw::Text(text) => parse_bool(text),
                    _ => None,
                };
                let b = b.ok_or_else(|| BOOL_EXPECTED.to_owned())?;
                set(config, b);
                Ok(b.to_string())
            }
            Kind::Path { set } => {
                let text = raw.text().ok_or_else(|| PATH_EXPECTED.to_owned())?;
                // Empty means no health path: the way to override a path set in molt.toml.
                if text.is_empty() {
                    set(config, None);
                    return Ok("none".to_owned());
                }
                let valid = text.starts_with('/')
                    && !text.chars().any(|c| c.is_whitespace() || c.is_control());
                if !valid {
                    return Err(PATH_EXPECTED.to_owned());
                }
                set(config, Some(text.to_owned()));
                Ok(text.to_owned())
            }
            Kind::Choice(choices) => {
                let expected = || {
                    let names: Vec<&str> = choices.iter().map(|(name, _)| *name).collect();
                    join_or(&names)
                };
                let text = raw.text().ok_or_else(expected)?;
                let (name, set) = choices
                    .iter()
                    .find(|(name, _)| name.eq_ignore_ascii_case(text))
                    .ok_or_else(expected)?;
                set(config);
                Ok((*name).to_owned())
            }
            Kind::AutoCount { min, max, set } => {
                let n = auto_count_from(raw, min, max)?;
                set(config, n);
                Ok(n.map_or_else(|| "auto".to_owned(), |n| n.to_string()))
            }
            Kind::DurationOrOff { set } => {
                let duration = duration_or_off_from(raw)?;
                set(config, duration);
                Ok(duration.map_or_else(|| "off".to_owned(), format_duration))
            }
            Kind::Percent { min, max, set } => {
                let percent = percent_from(raw)
                    .filter(|p| (min..=max).contains(p))
                    .ok_or_else(|| format!("a percentage from {min}% to {max}%"))?;
                set(config, percent);
                Ok(format!("{percent}%"))
            }
            Kind::Size { set } => {
                let bytes = if is_auto(raw) {
                    None
                } else {
                    Some(size_from(raw).ok_or_else(|| SIZE_EXPECTED.to_owned())?)
                };
                set(config, bytes);
                Ok(bytes.map_or_else(|| "auto".to_owned(), format_size))
            }
            Kind::Memory { set } => {
                let amount = memory_amount_from(raw)?;
                set(config, amount);
                Ok(amount.map_or_else(|| "auto".to_owned(), |a| a.to_string()))
            }
            Kind::Socket { set } => {
                let path = socket_from(raw, config.port)?;
                let shown = path.display().to_string();
                set(config, path);
                Ok(shown)
            }
        }
    }
}

/// `auto` (or empty) as `None`, or a whole number within `min..=max`.
fn auto_count_from(raw: Raw<'_>, min: u32, max: u32) -> Result<Option<u32>, String> {
    if is_auto(raw) {
        return Ok(None);
    }
    count_from(raw, min, max)
        .map(Some)
        .map_err(|_| format!("auto or a whole number from {min} to {max}"))
}

/// `off` or a zero duration as `None`, or a duration (see [`duration_from`]).
fn duration_or_off_from(raw: Raw<'_>) -> Result<Option<Duration>, String> {
    let duration = match raw {
        Raw::Text(text) if text.eq_ignore_ascii_case("off") => Duration::ZERO,
        _ => duration_from(raw).map_err(|_| DURATION_OR_OFF_EXPECTED.to_owned())?,
    };
    Ok(Some(duration).filter(|d| !d.is_zero()))
}

/// `auto` (or empty) as `None`, a size, or a percentage of the budget written with `%`.
fn memory_amount_from(raw: Raw<'_>) -> Result<Option<MemoryAmount>, String> {
    if is_auto(raw) {
        return Ok(None);
    }
    let amount = match raw {
        Raw::Text(text) if text.ends_with('%') => percent_from(raw)
            .filter(|p| (1..=100).contains(p))
            .map(MemoryAmount::Percent),
        _ => size_from(raw).map(MemoryAmount::Bytes),
    };
    amount
        .map(Some)
        .ok_or_else(|| MEMORY_AMOUNT_EXPECTED.to_owned())
}

/// The control socket's path; empty is the default for `port`, the port already loaded.
fn socket_from(raw: Raw<'_>, port: u16) -> Result<PathBuf, String> {
    let text = raw.text().ok_or_else(|| SOCKET_EXPECTED.to_owned())?;
    if text.is_empty() {
        return Ok(default_control_socket(port));
    }
    // Absolute, so `molt status` finds it from any directory; short enough for `sun_path`.
    let valid = text.starts_with('/')
        && text.len() <= SOCKET_PATH_MAX
        && !text.chars().any(char::is_control);
    if !valid {
        return Err(SOCKET_EXPECTED.to_owned());
    }
    Ok(PathBuf::from(text))
}

/// `auto`, case-insensitive, or empty: the way to override a value set in `molt.toml`
/// with the derived one.
fn is_auto(raw: Raw<'_>) -> bool {
    raw.text()
        .is_some_and(|text| text.is_empty() || text.eq_ignore_ascii_case("auto"))
}

/// A whole percentage from `85%`, `85` or a TOML integer; the range is the caller's.
fn percent_from(raw: Raw<'_>) -> Option<u8> {
    match raw {
        Raw::Text(text) => {
            let digits = text.strip_suffix('%').unwrap_or(text);
            if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
                return None;
            }
            digits.parse().ok()
        }
        Raw::Int(i) => u8::try_from(i).ok(),
        _ => None,
    }
}

/// A size of at least [`MIN_MEMORY_SIZE`] from text (see [`parse_size`]) or a TOML integer
/// of bytes.
fn size_from(raw: Raw<'_>) -> Option<u64> {
    let bytes = match raw {
        Raw::Text(text) => parse_size(text).ok(),
        Raw::Int(i) => u64::try_from(i).ok(),
        _ => None,
    };
    bytes.filter(|&b| b >= MIN_MEMORY_SIZE)
}

/// A whole number within `min..=max`, from digits or a TOML integer.
fn count_from(raw: Raw<'_>, min: u32, max: u32) -> Result<u32, String> {
    let n: Option<u64> = match raw {
        // Only digits: `str::parse` would also take `+2`, which no one writes on purpose.
        Raw::Text(text) if !text.is_empty() && text.bytes().all(|b| b.is_ascii_digit()) => {
            text.parse().ok()
        }
        Raw::Int(i) => u64::try_from(i).ok(),
        _ => None,
    };
    let at_least = || {
        if min == 0 {
            "a whole number, 0 or more".to_owned()
        } else {
            format!("a whole number of at least {min}")
        }
    };
    match n {
        Some(n) if n < u64::from(min) => Err(at_least()),
        Some(n) if n > u64::from(max) => Err(format!("a whole number of at most {max}")),
        Some(n) => Ok(u32::try_from(n).expect("n is at most max, a u32")),
        None if max < u32::MAX => Err(format!("a whole number from {min} to {max}")),
        None => Err(at_least()),
    }
}

/// A duration from text (see [`parse_duration`]) or a TOML number of seconds.
fn duration_from(raw: Raw<'_>) -> Result<Duration, String> {
    let duration = match raw {
        Raw::Text(text) => parse_duration(text).ok(),
        Raw::Int(seconds) => u64::try_from(seconds).ok().map(Duration::from_secs),
        Raw::Float(seconds) => Duration::try_from_secs_f64(seconds).ok(),
        Raw::Bool(_) | Raw::Other => None,
    };
    duration.ok_or_else(|| DURATION_EXPECTED.to_owned())
}

/// A signal by name, case-insensitive, with or without `SIG`; returns its short name.
fn signal_from(text: &str) -> Option<(&'static str, Signal)> {
    let upper = text.to_ascii_uppercase();
    let short = upper.strip_prefix("SIG").unwrap_or(&upper);
    SIGNALS
        .iter()
        .find(|(name, _)| *name == short)
        .map(|&(name, signal)| (name, signal))
}

/// A boolean as config vars write them; empty is false, since an empty variable is unset
/// in spirit.
fn parse_bool(text: &str) -> Option<bool> {
    match text.to_ascii_lowercase().as_str() {
        "1" | "true" | "yes" | "on" => Some(true),
        "0" | "false" | "no" | "off" | "" => Some(false),
        _ => None,
    }
}

/// `a`, `a or b`, `a, b or c`.
fn join_or(words: &[&str]) -> String {
    match words {
        [] => String::new(),
        [one] => (*one).to_owned(),
        [init @ .., last] => format!("{} or {last}", init.join(", ")),
    }
}

/// Where an effective value came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Source {
    /// A command-line flag, e.g. `--workers`.
    Flag(String),
    /// An environment variable, e.g. `MOLT_MIN_WORKERS`.
    Env(String),
    /// A line of the TOML file; `path` is as the user names it (`molt.toml`, or
    /// `MOLT_CONFIG`'s value).
    File { path: PathBuf, line: usize },
    /// The setting's default.
    Default,
}

impl fmt::Display for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Source::Flag(flag) => write!(f, "flag {flag}"),
            Source::Env(name) => write!(f, "env {name}"),
            Source::File { path, line } => write!(f, "{}:{line}", path.display()),
            Source::Default => f.write_str("default"),
        }
    }
}

/// One setting's effective value, for `molt plan`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Effective {
    /// The setting's key, e.g. `min_workers`.
    pub key: &'static str,
    /// The value in its display form, e.g. `25s`, `none`, `TERM`.
    pub value: String,
    pub source: Source,
}

/// The outcome of [`load`]: the configuration, where each value came from, and warnings
/// (unknown names) for the caller to log.
#[derive(Debug, Clone)]
pub(crate) struct Loaded {
    pub config: Config,
    /// Every setting, in [`SETTINGS`] order.
    pub sources: Vec<Effective>,
    pub warnings: Vec<String>,
}

/// What an unknown key in the TOML file does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Strictness {
    /// At run time it is a warning: a stale key must not take the app down.
    Run,
    /// At build time it is an error, so a typo is caught before it is deployed.
    #[allow(
        dead_code,
        reason = "the buildpack's validation step arrives with the buildpack"
    )]
    Build,
}

/// Why the configuration could not be loaded. Each message is one line naming the
/// setting, the bad value and the accepted form.
#[derive(Debug)]
pub(crate) enum ConfigError {
    /// A value does not have the setting's form.
    InvalidValue {
        /// Where the value was written; never [`Source::Default`].
        origin: Source,
        /// The setting's key, e.g. `min_workers`.
        key: &'static str,
        /// The value as written: the raw text of a flag or variable, or the TOML text.
        value: String,
        /// The accepted form, e.g. `a whole number of at least 1`.
        expected: String,
    },
    /// `MOLT_CONFIG` names a file that does not exist.
    MissingConfigFile { path: PathBuf },
    /// The TOML file exists but could not be read; the message includes the cause.
    CannotReadFile { path: PathBuf, source: io::Error },
    /// The TOML file is not valid TOML.
    BadToml {
        path: PathBuf,
        line: usize,
        message: String,
    },
    /// Two values, each valid alone, contradict each other: `setting` must be `expected`
    /// relative to `other`, e.g. `max_workers` at least `min_workers`.
    Conflict {
        setting: Box<Effective>,
        /// The relation, e.g. `at least`; followed by the other setting in the message.
        expected: &'static str,
        other: Box<Effective>,
    },
    /// The TOML file has a key that is not a setting (only with [`Strictness::Build`]).
    UnknownFileKey {
        path: PathBuf,
        line: usize,
        key: String,
        suggestion: Option<&'static str>,
    },
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ConfigError::InvalidValue {
                origin,
                key,
                value,
                expected,
            } => {
                f.write_str("invalid ")?;
                match origin {
                    Source::Flag(name) | Source::Env(name) => write!(f, "{name}={value:?}")?,
                    Source::File { path, line } => {
                        write!(f, "{}:{line} {key} = {value}", path.display())?;
                    }
                    Source::Default => write!(f, "default {key}={value:?}")?,
                }
                write!(f, ": expected {expected}")
            }
            ConfigError::Conflict {
                setting,
                expected,
                other,
            } => write!(
                f,
                "invalid {} {} ({}): expected {expected} {} {} ({})",
                setting.key, setting.value, setting.source, other.key, other.value, other.source
            ),
            ConfigError::MissingConfigFile { path } => write!(
                f,
                "{CONFIG_ENV} names {}, which does not exist",
                path.display()
            ),
            ConfigError::CannotReadFile { path, source } => {
                write!(f, "cannot read {}: {source}", path.display())
            }
            ConfigError::BadToml {
                path,
                line,
                message,
            } => write!(f, "{}:{line}: {message}", path.display()),
            ConfigError::UnknownFileKey {
                path,
                line,
                key,
                suggestion,
            } => write!(
                f,
                "{}:{line}: {}",
                path.display(),
                unknown_message(key, *suggestion)
            ),
        }
    }
}

// `source()` stays `None`: the one cause, an I/O error, is already in the one-line
// message, which callers print with `{}`; returning it too would print it twice with `{:#}`.
impl std::error::Error for ConfigError {}

/// `unknown setting NAME; did you mean X?`, or a pointer to `molt plan` when nothing is close.
fn unknown_message(name: &str, suggestion: Option<&str>) -> String {
    match suggestion {
        Some(known) => format!("unknown setting {name}; did you mean {known}?"),
        None => format!("unknown setting {name}; see molt plan for the known settings"),
    }
}

/// The known name closest to `unknown`, if close enough. Names are compared without
/// `prefix`, which every candidate shares and which would make everything look close.
fn suggest<'a>(
    unknown: &str,
    known: impl Iterator<Item = &'a str>,
    prefix: &str,
) -> Option<&'a str> {
    let unknown = unknown
        .strip_prefix(prefix)
        .unwrap_or(unknown)
        .to_ascii_lowercase();
    known
        .map(|name| {
            let bare = name
                .strip_prefix(prefix)
                .unwrap_or(name)
                .to_ascii_lowercase();
            (
                strsim::normalized_damerau_levenshtein(&unknown, &bare),
                name,
            )
        })
        .filter(|&(score, _)| score >= SUGGESTION_THRESHOLD)
        // The first of equally close names wins, so a tie goes to the earlier row of
        // SETTINGS: `MOLT_WORKERS` suggests `MOLT_MIN_WORKERS` (what `--workers` sets),
        // not `MOLT_MAX_WORKERS`. `min_by` keeps the first of equals; `max_by` the last.
        .min_by(|a, b| b.0.total_cmp(&a.0))
        .map(|(_, name)| name)
}

/// The parsed TOML file, with the path as the user names it.
struct TomlFile {
    path: PathBuf,
    doc: ImDocument<String>,
}

impl TomlFile {
    /// The line of `key`, from its span (present because the document was parsed).
    fn key_line(&self, key: &str) -> usize {
        let span = self.doc.as_table().key(key).and_then(toml_edit::Key::span);
        span.map_or(1, |span| line_of(self.doc.raw(), span.start))
    }

    /// The text of a value as written in the file (its first line), for error messages.
    fn written(&self, item: &Item) -> String {
        // A `[table]` header where a value belongs would read as an array after `key =`.
        if !item.is_value() {
            return format!("(a {})", item.type_name());
        }
        item.span()
            .and_then(|span| self.doc.raw().get(span))
            .and_then(|text| text.lines().next())
            .map_or_else(
                || item.type_name().to_owned(),
                |text| text.trim().to_owned(),
            )
    }
}

/// The 1-based line of a byte offset into `text`.
fn line_of(text: &str, offset: usize) -> usize {
    let before = text.get(..offset).unwrap_or(text);
    before.matches('\n').count() + 1
}

/// Reads the TOML file: `MOLT_CONFIG` (relative to `app_dir`) or `molt.toml` in `app_dir`.
/// A missing default file is no file; a missing named file is an error.
fn read_file(config_env: Option<&str>, app_dir: &Path) -> Result<Option<TomlFile>, ConfigError> {
    let (path, named) = match config_env {
        Some("") => {
            return Err(ConfigError::InvalidValue {
                origin: Source::Env(CONFIG_ENV.to_owned()),
                key: "config",
                value: String::new(),
                expected: "the path of a TOML file".to_owned(),
            })
        }
        Some(named) => (PathBuf::from(named), true),
        None => (PathBuf::from(DEFAULT_FILE), false),
    };
    // `join` keeps an absolute path as it is.
    let text = match std::fs::read_to_string(app_dir.join(&path)) {
        Ok(text) => text,
        Err(err) if err.kind() == io::ErrorKind::NotFound && named => {
            return Err(ConfigError::MissingConfigFile { path })
        }
        Err(err) if err.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(source) => return Err(ConfigError::CannotReadFile { path, source }),
    };
    // The parser takes ownership; the copy keeps the text to find the line of an error.
    match ImDocument::parse(text.clone()) {
        Ok(doc) => Ok(Some(TomlFile { path, doc })),
        Err(err) => {
            // The line comes from the error's offset rather than from toml_edit's
            // multi-line Display, whose layout is not part of its API.
            let line = line_of(&text, err.span().map_or(0, |span| span.start));
            let message = err.message().trim().lines().collect::<Vec<_>>().join("; ");
            Err(ConfigError::BadToml {
                path,
                line,
                message,
            })
        }
    }
}

/// Loads the configuration with run-time strictness: unknown `molt.toml` keys warn.
pub(crate) fn load(
    flags: &[(&str, String)],
    env: &[(String, String)],
    app_dir: &Path,
) -> Result<Loaded, ConfigError> {
    load_with(flags, env, app_dir, Strictness::Run)
}

/// Loads the configuration from `flags` (setting key and raw text, as `molt run` parsed
/// them), the environment snapshot `env`, and the TOML file found from `app_dir`.
///
/// # Panics
///
/// If a flag's key is not in [`SETTINGS`]: that is a bug in the command-line parser.
pub(crate) fn load_with(
    flags: &[(&str, String)],
    env: &[(String, String)],
    app_dir: &Path,
    strictness: Strictness,
) -> Result<Loaded, ConfigError> {
    for (key, _) in flags {
        assert!(
            SETTINGS.iter().any(|s| s.key == *key),
            "flag for unknown setting {key:?}: the command line must use keys from SETTINGS"
        );
    }
    // The environment snapshot has one entry per name; should it have more, the last wins,
    // as it would for a process.
    let env: HashMap<&str, &str> = env
        .iter()
        .map(|(name, value)| (name.as_str(), value.as_str()))
        .collect();

    let mut warnings = unknown_env_warnings(&env);
    let file = read_file(env.get(CONFIG_ENV).copied(), app_dir)?;
    if let Some(file) = &file {
        for (key, line) in unknown_file_keys(file) {
            let suggestion = suggest(&key, SETTINGS.iter().map(Setting::toml_key), "");
            let error = ConfigError::UnknownFileKey {
                path: file.path.clone(),
                line,
                key,
                suggestion,
            };
            match strictness {
                Strictness::Build => return Err(error),
                Strictness::Run => warnings.push(error.to_string()),
            }
        }
    }

    let mut config = Config::default();
    let mut sources = Vec::with_capacity(SETTINGS.len());
    for setting in SETTINGS {
        // Sources are applied lowest precedence first, so the value left in `config` is
        // the highest one present; every present source is still validated on the way.
        let value = setting
            .kind
            .apply(Raw::Text(setting.default), &mut config)
            .expect("every default in SETTINGS is valid (tested by defaults_match_config_default)");
        let mut effective = Effective {
            key: setting.key,
            value,
            source: Source::Default,
        };
        if let Some(file) = &file {
            if let Some(item) = file.doc.as_table().get(setting.toml_key()) {
                let origin = Source::File {
                    path: file.path.clone(),
                    line: file.key_line(setting.toml_key()),
                };
                let value = setting
                    .kind
                    .apply(Raw::from_toml(item), &mut config)
                    .map_err(|expected| ConfigError::InvalidValue {
                        origin: origin.clone(),
                        key: setting.key,
                        value: file.written(item),
                        expected,
                    })?;
                effective.value = value;
                effective.source = origin;
            }
        }
        if let Some(text) = env.get(setting.env) {
            let origin = Source::Env(setting.env.to_owned());
            effective.value = apply_text(setting, text, origin.clone(), &mut config)?;
            effective.source = origin;
        }
        for (_, text) in flags.iter().filter(|(key, _)| *key == setting.key) {
            let origin = Source::Flag(setting.flag_name());
            effective.value = apply_text(setting, text, origin.clone(), &mut config)?;
            effective.source = origin;
        }
        sources.push(effective);
    }
    check_relations(&config, &sources)?;
    Ok(Loaded {
        config,
        sources,
        warnings,
    })
}

/// Checks the settings that constrain each other, once every value is known. Only values
/// comparable without the budget are checked here; a hard cap and a soft cap given one as a
/// size and one as a percentage are reconciled by `budget::derive`, which says so.
fn check_relations(config: &Config, sources: &[Effective]) -> Result<(), ConfigError> {
    let effective = |key: &str| {
        let effective = sources
            .iter()
            .find(|e| e.key == key)
            .cloned()
            .expect("sources has one entry per row of SETTINGS");
        Box::new(effective)
    };
    if let Some(max) = config.max_workers {
        if max < config.min_workers {
            return Err(ConfigError::Conflict {
                setting: effective("max_workers"),
                expected: "at least",
                other: effective("min_workers"),
            });
        }
    }
    let hard_not_above_soft = match (config.worker_memory, config.worker_memory_hard) {
        (Some(MemoryAmount::Bytes(soft)), Some(MemoryAmount::Bytes(hard))) => hard <= soft,
        (Some(MemoryAmount::Percent(soft)), Some(MemoryAmount::Percent(hard))) => hard <= soft,
        _ => false,
    };
    if hard_not_above_soft {
        return Err(ConfigError::Conflict {
            setting: effective("worker_memory_hard"),
            expected: "more than",
            other: effective("worker_memory"),
        });
    }
    Ok(())
}

/// Applies text from a flag or variable, naming `origin` if it is invalid.
fn apply_text(
    setting: &Setting,
    text: &str,
    origin: Source,
    config: &mut Config,
) -> Result<String, ConfigError> {
    setting
        .kind
        .apply(Raw::Text(text), config)
        .map_err(|expected| ConfigError::InvalidValue {
            origin,
            key: setting.key,
            value: text.to_owned(),
            expected,
        })
}

/// Warnings for `MOLT_*` names that are neither settings nor [`OTHER_ENV_NAMES`], sorted
/// so the log is the same on every boot.
fn unknown_env_warnings(env: &HashMap<&str, &str>) -> Vec<String> {
    let known = || {
        SETTINGS
            .iter()
            .map(|s| s.env)
            .chain(std::iter::once(CONFIG_ENV))
            .filter(|name| name.starts_with("MOLT_"))
    };
    let mut unknown: Vec<&str> = env
        .keys()
        .copied()
        .filter(|name| name.starts_with("MOLT_"))
        .filter(|name| !known().any(|k| k == *name) && !OTHER_ENV_NAMES.contains(name))
        .collect();
    unknown.sort_unstable();
    unknown
        .into_iter()
        .map(|name| unknown_message(name, suggest(name, known(), "MOLT_")))
        .collect()
}

/// Keys of the TOML file that are not settings, with their lines, in file order.
fn unknown_file_keys(file: &TomlFile) -> Vec<(String, usize)> {
    file.doc
        .iter()
        .filter(|(key, _)| !SETTINGS.iter().any(|s| s.toml_key() == *key))
        .map(|(key, _)| (key.to_owned(), file.key_line(key)))
        .collect()
}

/// The `molt plan` table: every setting, its effective value and its source, aligned.
pub(crate) fn plan_text(loaded: &Loaded) -> String {
    let rows: Vec<(&str, &str, String)> =
        std::iter::once(("setting", "value", "source".to_owned()))
            .chain(
                loaded
                    .sources
                    .iter()
                    .map(|e| (e.key, e.value.as_str(), e.source.to_string())),
            )
            .collect();
    let key_width = rows.iter().map(|r| r.0.len()).max().unwrap_or(0);
    let value_width = rows.iter().map(|r| r.1.len()).max().unwrap_or(0);
    let mut out = String::new();
    for (key, value, source) in &rows {
        writeln!(out, "{key:<key_width$}  {value:<value_width$}  {source}")
            .expect("writing to a String cannot fail");
    }
    out
}

/// The settings as a Markdown table for the README.
#[allow(
    dead_code,
    reason = "the README generator arrives with the buildpack issue"
)]
pub(crate) fn settings_markdown() -> String {
    let mut out = String::from(
        "| Variable | molt.toml | Flag | Default | Meaning |\n|---|---|---|---|---|\n",
    );
    for setting in SETTINGS {
        let flag = setting.flag.map_or_else(String::new, |f| format!("`{f}`"));
        let default = match (setting.default, setting.kind) {
            // Derived from the port at run time; the README has no port.
            ("", Kind::Socket { .. }) => format!("`{DEFAULT_CONTROL_SOCKET_SHOWN}`"),
            ("", _) => "none".to_owned(),
            (text, _) => format!("`{text}`"),
        };
        writeln!(
            out,
            "| `{}` | `{}` | {flag} | {default} | {} |",
            setting.env,
            setting.toml_key(),
            setting.doc.replace('|', "\\|"),
        )
        .expect("writing to a String cannot fail");
    }
    out
}

#[cfg(test)]
// A failed unwrap is a failed test; the lint is for code that runs in production.
#[allow(clippy::unwrap_used)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;

    /// A directory under the system temp dir, removed on drop.
    struct TempDir(PathBuf);

    impl TempDir {
        fn new() -> Self {
            static NEXT: AtomicUsize = AtomicUsize::new(0);
            let name = format!(
                "molt-config-test-{}-{}",
                std::process::id(),
                NEXT.fetch_add(1, Ordering::Relaxed)
            );
            let path = std::env::temp_dir().join(name);
            std::fs::create_dir_all(&path).unwrap();
            TempDir(path)
        }

        /// A directory whose `molt.toml` holds `text`.
        fn with_toml(text: &str) -> Self {
            let dir = TempDir::new();
            dir.write("molt.toml", text);
            dir
        }

        fn write(&self, name: &str, text: &str) {
            std::fs::write(self.0.join(name), text).unwrap();
        }
    }

    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    fn flags<'a>(pairs: &[(&'a str, &str)]) -> Vec<(&'a str, String)> {
        pairs.iter().map(|(k, v)| (*k, (*v).to_owned())).collect()
    }

    /// Loads with no TOML file.
    fn load_env(pairs: &[(&str, &str)]) -> Result<Loaded, ConfigError> {
        let dir = TempDir::new();
        load(&[], &env(pairs), &dir.0)
    }

    /// The whole message of the error that loading with `pairs` gives.
    fn env_error(pairs: &[(&str, &str)]) -> String {
        load_env(pairs).unwrap_err().to_string()
    }

    fn toml_error(text: &str) -> String {
        let dir = TempDir::with_toml(text);
        load(&[], &[], &dir.0).unwrap_err().to_string()
    }

    fn setting(key: &str) -> &'static Setting {
        SETTINGS.iter().find(|s| s.key == key).unwrap()
    }

    /// Applies text to one setting: the config and display form, or the accepted form.
    fn apply(key: &str, text: &str) -> Result<(Config, String), String> {
        let mut config = Config::default();
        let shown = setting(key).kind.apply(Raw::Text(text), &mut config)?;
        Ok((config, shown))
    }

    fn source_of<'a>(loaded: &'a Loaded, key: &str) -> &'a Effective {
        loaded.sources.iter().find(|e| e.key == key).unwrap()
    }

    #[test]
    fn defaults_match_config_default() {
        // Guards against a DEFAULT_* constant and the table's default text drifting apart.
        let loaded = load_env(&[]).unwrap();
        assert_eq!(loaded.config, Config::default());
        assert!(loaded.warnings.is_empty());
        let keys: Vec<&str> = loaded.sources.iter().map(|e| e.key).collect();
        let table: Vec<&str> = SETTINGS.iter().map(|s| s.key).collect();
        assert_eq!(keys, table);
        assert!(loaded.sources.iter().all(|e| e.source == Source::Default));
        assert_eq!(source_of(&loaded, "queue_timeout").value, "25s");
        assert_eq!(source_of(&loaded, "health_path").value, "none");
        assert_eq!(source_of(&loaded, "stop_signal").value, "TERM");
        assert_eq!(source_of(&loaded, "max_workers").value, "auto");
        assert_eq!(source_of(&loaded, "memory_limit").value, "auto");
        assert_eq!(source_of(&loaded, "memory_target").value, "85%");
        assert_eq!(source_of(&loaded, "worker_memory").value, "auto");
        assert_eq!(source_of(&loaded, "idle_timeout").value, "5m");
        assert_eq!(source_of(&loaded, "max_lifetime").value, "off");
        assert_eq!(source_of(&loaded, "jitter").value, "10%");
        assert_eq!(source_of(&loaded, "metrics_interval").value, "1m");
        assert_eq!(
            source_of(&loaded, "control_socket").value,
            "/tmp/molt-5000.sock"
        );
        assert_eq!(Config::default().port, 5000);
    }

    #[test]
    fn settings_table_is_consistent() {
        for (i, s) in SETTINGS.iter().enumerate() {
            assert!(SETTINGS[..i].iter().all(|t| t.key != s.key), "{}", s.key);
            assert!(SETTINGS[..i].iter().all(|t| t.env != s.env), "{}", s.env);
            assert_eq!(s.key, s.key.to_ascii_lowercase());
            assert_eq!(s.toml_key(), s.key);
            if s.key != "port" {
                assert_eq!(s.env, format!("MOLT_{}", s.key.to_ascii_uppercase()));
            }
            assert!(!s.doc.is_empty() && s.doc.ends_with('.'), "{}", s.key);
        }
    }

    #[test]
    fn precedence_flag_over_env_over_file_over_default() {
        let dir = TempDir::with_toml(
            "# comment\nmin_workers = 2\nboot_timeout = \"90s\"\nqueue_timeout = 5\nmax_queue = 7\n",
        );
        let env = env(&[
            ("MOLT_MIN_WORKERS", "3"),
            ("MOLT_QUEUE_TIMEOUT", "1m30s"),
            ("MOLT_LOG", "warn"),
        ]);
        let loaded = load(&flags(&[("min_workers", "4")]), &env, &dir.0).unwrap();
        let c = &loaded.config;
        assert_eq!(c.min_workers, 4);
        assert_eq!(c.queue_timeout, Duration::from_secs(90));
        assert_eq!(c.boot_timeout, Duration::from_secs(90));
        assert_eq!(c.max_queue, 7);
        assert_eq!(c.log_level, LogLevel::Warn);
        assert_eq!(c.drain_timeout, DEFAULT_DRAIN_TIMEOUT);

        let file = |line| Source::File {
            path: PathBuf::from("molt.toml"),
            line,
        };
        let expect = [
            ("min_workers", "4", Source::Flag("--workers".to_owned())),
            (
                "queue_timeout",
                "1m30s",
                Source::Env("MOLT_QUEUE_TIMEOUT".to_owned()),
            ),
            ("boot_timeout", "1m30s", file(3)),
            ("max_queue", "7", file(5)),
            ("drain_timeout", "30s", Source::Default),
        ];
        for (key, value, source) in expect {
            let effective = source_of(&loaded, key);
            assert_eq!(
                (effective.value.as_str(), &effective.source),
                (value, &source)
            );
        }
    }

    #[test]
    fn port_comes_from_flag_then_port_variable_then_file_then_5000() {
        let dir = TempDir::with_toml("port = 7000\n");
        let both = load(
            &flags(&[("port", "9000")]),
            &env(&[("PORT", "8000")]),
            &dir.0,
        );
        assert_eq!(both.unwrap().config.port, 9000);
        let from_env = load(&[], &env(&[("PORT", "8000")]), &dir.0).unwrap();
        assert_eq!(from_env.config.port, 8000);
        assert_eq!(
            source_of(&from_env, "port").source,
            Source::Env("PORT".to_owned())
        );
        assert_eq!(load(&[], &[], &dir.0).unwrap().config.port, 7000);
        assert_eq!(load_env(&[]).unwrap().config.port, 5000);
        // The platform sets PORT, so MOLT_PORT is not the port's name.
        let molt_port = load_env(&[("MOLT_PORT", "8000")]).unwrap();
        assert_eq!(molt_port.config.port, 5000);
        assert_eq!(
            molt_port.warnings,
            ["unknown setting MOLT_PORT; see molt plan for the known settings"]
        );
        assert_eq!(
            env_error(&[("PORT", "0")]),
            "invalid PORT=\"0\": expected a whole number of at least 1"
        );
        assert_eq!(
            env_error(&[("PORT", "65536")]),
            "invalid PORT=\"65536\": expected a whole number of at most 65535"
        );
    }

    #[test]
    fn invalid_value_is_an_error_even_when_a_higher_source_overrides_it() {
        // Never guess: a bad variable must not be hidden by a good flag.
        let dir = TempDir::with_toml("min_workers = \"lots\"\n");
        let err = load(
            &flags(&[("min_workers", "2")]),
            &env(&[("MOLT_MIN_WORKERS", "3")]),
            &dir.0,
        )
        .unwrap_err();
        assert_eq!(
            err.to_string(),
            "invalid molt.toml:1 min_workers = \"lots\": expected a whole number from 1 to 1024"
        );
        let err = load_env(&[("MOLT_MIN_WORKERS", "x")]).unwrap_err();
        assert!(matches!(
            err,
            ConfigError::InvalidValue {
                key: "min_workers",
                ..
            }
        ));
        let dir = TempDir::new();
        let err = load(
            &flags(&[("min_workers", "2")]),
            &env(&[("MOLT_MIN_WORKERS", "x")]),
            &dir.0,
        );
        assert!(err.is_err());
    }

    #[test]
    fn exact_messages_for_flag_env_and_file() {
        assert_eq!(
            env_error(&[("MOLT_QUEUE_TIMEOUT", "soon")]),
            "invalid MOLT_QUEUE_TIMEOUT=\"soon\": expected a duration such as 250ms, 30s or 5m"
        );
        let dir = TempDir::new();
        let flag = load(&flags(&[("min_workers", "many")]), &[], &dir.0).unwrap_err();
        assert_eq!(
            flag.to_string(),
            "invalid --workers=\"many\": expected a whole number from 1 to 1024"
        );
        assert_eq!(
            toml_error("# molt settings\nlog = \"info\"\n\nmin_workers = 0\n"),
            "invalid molt.toml:4 min_workers = 0: expected a whole number of at least 1"
        );
        assert_eq!(
            env_error(&[("MOLT_BIND", "later")]),
            "invalid MOLT_BIND=\"later\": expected now or ready"
        );
        assert_eq!(
            env_error(&[("MOLT_STOP_SIGNAL", "STOP")]),
            "invalid MOLT_STOP_SIGNAL=\"STOP\": expected a signal name: \
             TERM, QUIT, INT, USR1, USR2, HUP, KILL or WINCH"
        );
    }

    #[test]
    fn counts_accept_whole_numbers_in_range() {
        let cases: &[(&str, &str, Result<&str, &str>)] = &[
            ("min_workers", "1", Ok("1")),
            ("min_workers", "1024", Ok("1024")),
            ("min_workers", "007", Ok("7")),
            ("min_workers", "0", Err("a whole number of at least 1")),
            ("min_workers", "1025", Err("a whole number of at most 1024")),
            ("min_workers", "", Err("a whole number from 1 to 1024")),
            ("min_workers", "+2", Err("a whole number from 1 to 1024")),
            ("min_workers", "-1", Err("a whole number from 1 to 1024")),
            ("min_workers", "2.5", Err("a whole number from 1 to 1024")),
            ("min_workers", " 2", Err("a whole number from 1 to 1024")),
            ("worker_concurrency", "0", Ok("0")),
            ("worker_concurrency", "-1", Err("a whole number, 0 or more")),
            ("max_queue", "0", Ok("0")),
            (
                "max_queue",
                "99999999999999999999",
                Err("a whole number, 0 or more"),
            ),
            (
                "max_boot_failures",
                "0",
                Err("a whole number of at least 1"),
            ),
            ("worker_processes", "4", Ok("4")),
            ("worker_processes", "0", Err("a whole number of at least 1")),
        ];
        for &(key, text, expected) in cases {
            let got = apply(key, text).map(|(_, shown)| shown);
            assert_eq!(
                got.as_deref(),
                expected.map_err(str::to_owned).as_deref(),
                "{key} {text:?}"
            );
        }
        assert_eq!(
            apply("worker_processes", "4").unwrap().0.worker_processes,
            4
        );
        assert_eq!(
            apply("max_boot_failures", "9").unwrap().0.max_boot_failures,
            9
        );
    }

    #[test]
    fn duration_settings_from_text_and_toml() {
        assert_eq!(
            apply("queue_timeout", "0"),
            Err(POSITIVE_DURATION_EXPECTED.to_owned())
        );
        assert_eq!(
            apply("boot_timeout", "0s"),
            Err(POSITIVE_DURATION_EXPECTED.to_owned())
        );
        // Zero is allowed where it means "do not wait".
        let (config, shown) = apply("stop_timeout", "0").unwrap();
        assert_eq!(
            (config.stop_timeout, shown.as_str()),
            (Duration::ZERO, "0s")
        );
        assert_eq!(apply("drain_timeout", "1.5").unwrap().1, "1s500ms");

        let dir = TempDir::with_toml(
            "queue_timeout = \"250ms\"\nboot_timeout = 90\ndrain_timeout = 0.5\n",
        );
        let c = load(&[], &[], &dir.0).unwrap().config;
        assert_eq!(c.queue_timeout, Duration::from_millis(250));
        assert_eq!(c.boot_timeout, Duration::from_secs(90));
        assert_eq!(c.drain_timeout, Duration::from_millis(500));
        for bad in ["-1", "-0.5", "true", "[1]", "nan"] {
            let message = toml_error(&format!("stop_timeout = {bad}\n"));
            assert_eq!(
                message,
                format!("invalid molt.toml:1 stop_timeout = {bad}: expected {DURATION_EXPECTED}")
            );
        }
    }

    #[test]
    fn bools() {
        for text in ["1", "true", "TRUE", "yes", "Yes", "on", "ON"] {
            assert!(apply("disable", text).unwrap().0.disable, "{text:?}");
        }
        for text in ["0", "false", "False", "no", "off", "OFF", ""] {
            assert!(!apply("disable", text).unwrap().0.disable, "{text:?}");
        }
        for text in ["2", "y", "enabled", " true"] {
            assert_eq!(
                apply("disable", text),
                Err(BOOL_EXPECTED.to_owned()),
                "{text:?}"
            );
        }
        let dir = TempDir::with_toml("disable = true\n");
        assert!(load(&[], &[], &dir.0).unwrap().config.disable);
        let dir = TempDir::with_toml("disable = \"off\"\n");
        assert!(!load(&[], &[], &dir.0).unwrap().config.disable);
        assert_eq!(
            toml_error("disable = 1\n"),
            format!("invalid molt.toml:1 disable = 1: expected {BOOL_EXPECTED}")
        );
    }

    #[test]
    fn signals() {
        let cases = [
            ("TERM", Signal::SIGTERM),
            ("SIGTERM", Signal::SIGTERM),
            ("term", Signal::SIGTERM),
            ("sigquit", Signal::SIGQUIT),
            ("QUIT", Signal::SIGQUIT),
            ("INT", Signal::SIGINT),
            ("USR1", Signal::SIGUSR1),
            ("USR2", Signal::SIGUSR2),
            ("HUP", Signal::SIGHUP),
            ("KILL", Signal::SIGKILL),
            ("WINCH", Signal::SIGWINCH),
        ];
        for (text, signal) in cases {
            let (config, shown) = apply("stop_signal", text).unwrap();
            assert_eq!(config.stop_signal, signal, "{text}");
            assert!(!shown.starts_with("SIG"), "{shown}");
        }
        for text in ["", "STOP", "15", "SIG", "SIGSIGTERM", "TERM "] {
            assert!(apply("stop_signal", text).is_err(), "{text:?}");
        }
    }

    #[test]
    fn health_path() {
        let (config, shown) = apply("health_path", "/up").unwrap();
        assert_eq!(
            (config.health_path.as_deref(), shown.as_str()),
            (Some("/up"), "/up")
        );
        assert_eq!(
            apply("health_path", "/health?full=1")
                .unwrap()
                .0
                .health_path
                .as_deref(),
            Some("/health?full=1")
        );
        // Empty clears a path set in molt.toml.
        let (config, shown) = apply("health_path", "").unwrap();
        assert_eq!((config.health_path, shown.as_str()), (None, "none"));
        for text in ["up", "/up now", "/up\n", "/\tx", " /up", "http://x/up"] {
            assert_eq!(
                apply("health_path", text),
                Err(PATH_EXPECTED.to_owned()),
                "{text:?}"
            );
        }
        let dir = TempDir::new();
        let loaded = load(&flags(&[("health_path", "/ready")]), &[], &dir.0).unwrap();
        assert_eq!(loaded.config.health_path.as_deref(), Some("/ready"));
        assert_eq!(
            source_of(&loaded, "health_path").source,
            Source::Flag("--health-path".to_owned())
        );
    }

    #[test]
    fn choices_are_case_insensitive() {
        assert_eq!(apply("bind", "READY").unwrap().0.bind, BindMode::Ready);
        assert_eq!(apply("bind", "now").unwrap().0.bind, BindMode::Now);
        assert_eq!(apply("log", "Debug").unwrap().1, "debug");
        assert_eq!(apply("log", "debug").unwrap().0.log_level, LogLevel::Debug);
        assert_eq!(apply("log", "warn").unwrap().0.log_level, LogLevel::Warn);
        assert_eq!(apply("log", "error"), Err("debug, info or warn".to_owned()));
        assert_eq!(apply("bind", ""), Err("now or ready".to_owned()));
    }

    #[test]
    fn toml_syntax_error_names_file_and_line() {
        let dir = TempDir::with_toml("min_workers = 2\n\nqueue_timeout = \"25s\n");
        let err = load(&[], &[], &dir.0).unwrap_err();
        let ConfigError::BadToml {
            path,
            line,
            message,
        } = &err
        else {
            panic!("expected BadToml, got {err:?}");
        };
        assert_eq!((path.as_path(), *line), (Path::new("molt.toml"), 3));
        assert!(!message.contains('\n'), "{message:?}");
        assert_eq!(err.to_string(), format!("molt.toml:3: {message}"));

        let duplicate = toml_error("min_workers = 2\nlog = \"info\"\nmin_workers = 3\n");
        assert_eq!(
            duplicate,
            "molt.toml:3: duplicate key `min_workers` in document root"
        );
    }

    #[test]
    fn toml_bad_value_names_its_line() {
        assert_eq!(
            toml_error("min_workers = 2\nqueue_timeout = \"soon\"   # comment\n"),
            "invalid molt.toml:2 queue_timeout = \"soon\": \
             expected a duration such as 250ms, 30s or 5m"
        );
        assert_eq!(
            toml_error("\n\nmax_queue = -1\n"),
            "invalid molt.toml:3 max_queue = -1: expected a whole number, 0 or more"
        );
        assert_eq!(
            toml_error("log = \"info\"\n[min_workers]\nx = 1\n"),
            "invalid molt.toml:2 min_workers = (a table): \
             expected a whole number from 1 to 1024"
        );
        // Integers may be strings in the file, as they are in the environment.
        let dir = TempDir::with_toml("min_workers = \"3\"\n");
        assert_eq!(load(&[], &[], &dir.0).unwrap().config.min_workers, 3);
    }

    #[test]
    fn unknown_env_name_with_suggestion() {
        let loaded = load_env(&[
            ("MOLT_MIN_WORKER", "2"),
            ("MOLT_WORKERS", "2"),
            ("MOLT_queue_timeout", "5s"),
        ])
        .unwrap();
        assert_eq!(
            loaded.warnings,
            [
                "unknown setting MOLT_MIN_WORKER; did you mean MOLT_MIN_WORKERS?",
                "unknown setting MOLT_WORKERS; did you mean MOLT_MIN_WORKERS?",
                "unknown setting MOLT_queue_timeout; did you mean MOLT_QUEUE_TIMEOUT?",
            ]
        );
        // An unknown name is not a setting: the default stays.
        assert_eq!(loaded.config.min_workers, 1);
    }

    #[test]
    fn unknown_env_name_without_suggestion() {
        let loaded = load_env(&[("MOLT_FOO", "1"), ("MOLT_PRELOAD_APP", "1")]).unwrap();
        assert_eq!(
            loaded.warnings,
            [
                "unknown setting MOLT_FOO; see molt plan for the known settings",
                "unknown setting MOLT_PRELOAD_APP; see molt plan for the known settings",
            ]
        );
    }

    #[test]
    fn names_molt_uses_itself_are_not_unknown() {
        // Regression guard: molt sets MOLT_WORKER in every worker, and a molt started
        // inside one must neither warn about it nor read it as a setting.
        let dir = TempDir::with_toml("min_workers = 2\n");
        let env = env(&[
            ("MOLT_WORKER", "3"),
            ("MOLT_CONFIG", "molt.toml"),
            ("MOLT_BINARY_URL", "https://example.com/molt"),
            ("PORT", "8000"),
            ("WEB_CONCURRENCY", "4"),
            ("MOLTEN", "1"),
        ]);
        let loaded = load(&[], &env, &dir.0).unwrap();
        assert!(loaded.warnings.is_empty(), "{:?}", loaded.warnings);
        assert_eq!(loaded.config.min_workers, 2);
    }

    #[test]
    fn unknown_file_key_warns_at_run_and_fails_at_build() {
        let text = "min_workers = 2\nmin_worker = 3\n\n[memory]\nlimit = \"1GB\"\n";
        let dir = TempDir::with_toml(text);
        let loaded = load(&[], &[], &dir.0).unwrap();
        assert_eq!(
            loaded.warnings,
            [
                "molt.toml:2: unknown setting min_worker; did you mean min_workers?",
                "molt.toml:4: unknown setting memory; see molt plan for the known settings",
            ]
        );
        assert_eq!(loaded.config.min_workers, 2);
        let err = load_with(&[], &[], &dir.0, Strictness::Build).unwrap_err();
        assert_eq!(
            err.to_string(),
            "molt.toml:2: unknown setting min_worker; did you mean min_workers?"
        );
    }

    #[test]
    fn molt_config_names_the_file() {
        let dir = TempDir::new();
        dir.write("molt.toml", "min_workers = 2\n");
        dir.write("other.toml", "min_workers = 5\n");
        let relative = load(&[], &env(&[("MOLT_CONFIG", "other.toml")]), &dir.0).unwrap();
        assert_eq!(relative.config.min_workers, 5);
        assert_eq!(
            source_of(&relative, "min_workers").source,
            Source::File {
                path: PathBuf::from("other.toml"),
                line: 1
            }
        );
        let absolute = dir.0.join("other.toml");
        let absolute = absolute.to_str().unwrap();
        let elsewhere = TempDir::new();
        let loaded = load(&[], &env(&[("MOLT_CONFIG", absolute)]), &elsewhere.0).unwrap();
        assert_eq!(loaded.config.min_workers, 5);
    }

    #[test]
    fn molt_config_pointing_at_a_missing_file_is_an_error() {
        let err = env_error(&[("MOLT_CONFIG", "config/missing.toml")]);
        assert_eq!(
            err,
            "MOLT_CONFIG names config/missing.toml, which does not exist"
        );
        assert_eq!(
            env_error(&[("MOLT_CONFIG", "")]),
            "invalid MOLT_CONFIG=\"\": expected the path of a TOML file"
        );
        // Without MOLT_CONFIG a missing molt.toml is simply no file.
        assert!(load_env(&[]).is_ok());
    }

    #[test]
    fn unreadable_file_is_an_error_with_its_cause() {
        let dir = TempDir::new();
        std::fs::create_dir(dir.0.join("molt.toml")).unwrap();
        let err = load(&[], &[], &dir.0).unwrap_err();
        assert!(matches!(err, ConfigError::CannotReadFile { .. }), "{err:?}");
        let message = err.to_string();
        assert!(message.starts_with("cannot read molt.toml: "), "{message}");
        assert!(!message.contains('\n'));
    }

    /// The settings added after `test/fixtures/config/full.toml` was written, each away from
    /// its default, appended to it so that the file again holds every setting.

    #[test]
    fn fixture_with_every_setting_loads() {
        let fixture = Path::new(env!("CARGO_MANIFEST_DIR")).join("test/fixtures/config/full.toml");
        let dir = TempDir::new();
        let text = std::fs::read_to_string(fixture).unwrap();
        dir.write("full.toml", &text);
        let loaded = load(&[], &env(&[("MOLT_CONFIG", "full.toml")]), &dir.0).unwrap();
        assert!(loaded.warnings.is_empty(), "{:?}", loaded.warnings);
        assert!(loaded
            .sources
            .iter()
            .all(|e| matches!(e.source, Source::File { .. })));
        let expected = Config {
            port: 8080,
            min_workers: 3,
            max_workers: Some(6),
            worker_concurrency: 0,
            max_queue: 50,
            queue_timeout: Duration::from_secs(10),
            boot_timeout: Duration::from_secs(90),
            max_boot_failures: 2,
            health_path: Some("/up".to_owned()),
            idle_timeout: Duration::from_secs(600),
            request_timeout: Some(Duration::from_secs(28)),
            memory_limit: Some(1 << 30),
            memory_target: 90,
            worker_memory: Some(MemoryAmount::Percent(40)),
            worker_memory_hard: Some(MemoryAmount::Bytes(450 << 20)),
            max_requests: 5000,
            max_lifetime: Some(Duration::from_secs(12 * 3600)),
            jitter: 20,
            shutdown_timeout: Duration::from_secs(20),
            drain_timeout: Duration::from_millis(12_500),
            stop_signal: Signal::SIGQUIT,
            stop_timeout: Duration::from_secs(90),
            worker_processes: 2,
            sample_interval: Duration::from_millis(500),
            metrics_interval: None,
            control_socket: PathBuf::from("/run/molt.sock"),
            disable: true,
            bind: BindMode::Ready,
            log_level: LogLevel::Debug,
            buffer_requests: BufferMode::Off,
            max_body: 10 << 20,
            header_timeout: Duration::from_secs(10),
            keepalive_timeout: Duration::from_secs(5),
        };
        assert_eq!(loaded.config, expected);
    }

    #[test]
    fn repeated_flag_last_wins() {
        let dir = TempDir::new();
        let pairs = flags(&[("min_workers", "2"), ("min_workers", "3")]);
        assert_eq!(load(&pairs, &[], &dir.0).unwrap().config.min_workers, 3);
    }

    #[test]
    #[should_panic(expected = "flag for unknown setting")]
    fn flag_for_unknown_setting_is_a_bug() {
        let dir = TempDir::new();
        let _ = load(&flags(&[("workers", "2")]), &[], &dir.0);
    }

    #[test]
    fn plan_text_aligns_every_setting() {
        let dir = TempDir::with_toml("\n\nboot_timeout = \"90s\"\n");
        let loaded = load(
            &flags(&[("worker_concurrency", "4")]),
            &env(&[("MOLT_MIN_WORKERS", "2")]),
            &dir.0,
        )
        .unwrap();
        let text = plan_text(&loaded);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), SETTINGS.len() + 1);
        let value_column = lines[0].find("value").unwrap();
        let source_column = lines[0].find("source").unwrap();
        for line in &lines {
            assert_eq!(line.as_bytes()[value_column - 1], b' ', "{line}");
            assert_ne!(line.as_bytes()[value_column], b' ', "{line}");
            assert_ne!(line.as_bytes()[source_column], b' ', "{line}");
        }
        let row = |key: &str| {
            let line = lines
                .iter()
                .find(|l| l.starts_with(&format!("{key} ")))
                .unwrap();
            line.split_whitespace().collect::<Vec<_>>().join(" ")
        };
        assert_eq!(row("min_workers"), "min_workers 2 env MOLT_MIN_WORKERS");
        assert_eq!(
            row("worker_concurrency"),
            "worker_concurrency 4 flag --concurrency"
        );
        assert_eq!(row("boot_timeout"), "boot_timeout 1m30s molt.toml:3");
        assert_eq!(row("queue_timeout"), "queue_timeout 25s default");
        assert_eq!(row("health_path"), "health_path none default");
        // The widest value is the default control socket, /tmp/molt-5000.sock.
        assert_eq!(
            lines[2],
            format!("{:<18}  {:<19}  env MOLT_MIN_WORKERS", "min_workers", "2")
        );
    }

    #[test]
    fn settings_markdown_lists_every_setting() {
        let markdown = settings_markdown();
        let lines: Vec<&str> = markdown.lines().collect();
        assert_eq!(lines.len(), SETTINGS.len() + 2);
        assert_eq!(
            lines[0],
            "| Variable | molt.toml | Flag | Default | Meaning |"
        );
        assert_eq!(
            lines[3],
            "| `MOLT_MIN_WORKERS` | `min_workers` | `--workers` | `1` | Workers kept running. |"
        );
        assert!(
            markdown.contains("| `MOLT_HEALTH_PATH` | `health_path` | `--health-path` | none |")
        );
        assert!(markdown.contains("| `MOLT_QUEUE_TIMEOUT` | `queue_timeout` |  | `25s` |"));
    }

    /// Text for a setting, and the value and display form it gives, or the accepted form.
    type Case<T> = (&'static str, Result<(T, &'static str), &'static str>);

    #[test]
    fn max_workers_is_auto_or_a_count() {
        let cases: &[Case<Option<usize>>] = &[
            ("auto", Ok((None, "auto"))),
            ("AUTO", Ok((None, "auto"))),
            // Empty overrides a number in molt.toml with the derived value.
            ("", Ok((None, "auto"))),
            ("1", Ok((Some(1), "1"))),
            ("1024", Ok((Some(1024), "1024"))),
            ("0", Err("auto or a whole number from 1 to 1024")),
            ("1025", Err("auto or a whole number from 1 to 1024")),
            ("many", Err("auto or a whole number from 1 to 1024")),
            ("-2", Err("auto or a whole number from 1 to 1024")),
        ];
        for &(text, expected) in cases {
            let got = apply("max_workers", text).map(|(c, shown)| (c.max_workers, shown));
            let expected = expected
                .map(|(n, shown)| (n, shown.to_owned()))
                .map_err(str::to_owned);
            assert_eq!(got, expected, "{text:?}");
        }
        let dir = TempDir::with_toml("max_workers = 4\n");
        let loaded = load(&[], &env(&[("MOLT_MAX_WORKERS", "6")]), &dir.0).unwrap();
        assert_eq!(loaded.config.max_workers, Some(6));
        assert_eq!(
            source_of(&loaded, "max_workers").source,
            Source::Env("MOLT_MAX_WORKERS".to_owned())
        );
        let loaded = load(&[], &env(&[("MOLT_MAX_WORKERS", "auto")]), &dir.0).unwrap();
        assert_eq!(loaded.config.max_workers, None);
        assert_eq!(load(&[], &[], &dir.0).unwrap().config.max_workers, Some(4));
        assert_eq!(
            toml_error("max_workers = 0\n"),
            "invalid molt.toml:1 max_workers = 0: expected auto or a whole number from 1 to 1024"
        );
    }

    #[test]
    fn max_workers_below_min_workers_is_an_error_naming_both() {
        let dir = TempDir::new();
        let err = load(
            &flags(&[("min_workers", "3")]),
            &env(&[("MOLT_MAX_WORKERS", "2")]),
            &dir.0,
        )
        .unwrap_err();
        assert_eq!(
            err.to_string(),
            "invalid max_workers 2 (env MOLT_MAX_WORKERS): \
             expected at least min_workers 3 (flag --workers)"
        );
        assert_eq!(
            toml_error("min_workers = 4\nmax_workers = 2\n"),
            "invalid max_workers 2 (molt.toml:2): expected at least min_workers 4 (molt.toml:1)"
        );
        // Equal is fine, and auto is never below the minimum.
        let equal = load_env(&[("MOLT_MIN_WORKERS", "3"), ("MOLT_MAX_WORKERS", "3")]);
        assert_eq!(equal.unwrap().config.max_workers, Some(3));
        let auto = load_env(&[("MOLT_MIN_WORKERS", "1024")]);
        assert_eq!(auto.unwrap().config.max_workers, None);
    }

    #[test]
    fn memory_limit_is_a_size_or_auto() {
        let cases: &[Case<Option<u64>>] = &[
            ("512MB", Ok((Some(512 << 20), "512MB"))),
            ("1.5GB", Ok((Some(1536 << 20), "1.5GB"))),
            ("2560m", Ok((Some(2560 << 20), "2.5GB"))),
            ("1048576", Ok((Some(1 << 20), "1MB"))),
            ("auto", Ok((None, "auto"))),
            ("Auto", Ok((None, "auto"))),
            ("", Ok((None, "auto"))),
            ("0", Err(SIZE_EXPECTED)),
            ("0MB", Err(SIZE_EXPECTED)),
            // Plain bytes below 1MB are a missing unit, not a budget.
            ("512", Err(SIZE_EXPECTED)),
            ("1023KB", Err(SIZE_EXPECTED)),
            ("85%", Err(SIZE_EXPECTED)),
            ("lots", Err(SIZE_EXPECTED)),
            ("none", Err(SIZE_EXPECTED)),
        ];
        for &(text, expected) in cases {
            let got = apply("memory_limit", text).map(|(c, shown)| (c.memory_limit, shown));
            let expected = expected
                .map(|(n, shown)| (n, shown.to_owned()))
                .map_err(str::to_owned);
            assert_eq!(got, expected, "{text:?}");
        }
        assert_eq!(
            env_error(&[("MOLT_MEMORY_LIMIT", "lots")]),
            "invalid MOLT_MEMORY_LIMIT=\"lots\": \
             expected a size of at least 1MB such as 512MB or 1.5GB, or auto"
        );
        let dir = TempDir::with_toml("memory_limit = 1073741824\n");
        let loaded = load(&[], &[], &dir.0).unwrap();
        assert_eq!(loaded.config.memory_limit, Some(1 << 30));
        assert_eq!(source_of(&loaded, "memory_limit").value, "1GB");
        let loaded = load(&[], &env(&[("MOLT_MEMORY_LIMIT", "512MB")]), &dir.0).unwrap();
        assert_eq!(loaded.config.memory_limit, Some(512 << 20));
        assert_eq!(
            toml_error("memory_limit = 1.5\n"),
            format!("invalid molt.toml:1 memory_limit = 1.5: expected {SIZE_EXPECTED}")
        );
    }

    #[test]
    fn percentages_take_a_sign_or_not_within_their_range() {
        let cases: &[(&str, &str, Result<&str, &str>)] = &[
            ("memory_target", "85%", Ok("85%")),
            ("memory_target", "85", Ok("85%")),
            ("memory_target", "1%", Ok("1%")),
            ("memory_target", "100%", Ok("100%")),
            ("memory_target", "0%", Err("a percentage from 1% to 100%")),
            ("memory_target", "101", Err("a percentage from 1% to 100%")),
            ("memory_target", "300%", Err("a percentage from 1% to 100%")),
            (
                "memory_target",
                "85.5%",
                Err("a percentage from 1% to 100%"),
            ),
            ("memory_target", "%", Err("a percentage from 1% to 100%")),
            ("memory_target", "", Err("a percentage from 1% to 100%")),
            ("memory_target", " 85", Err("a percentage from 1% to 100%")),
            ("memory_target", "85 %", Err("a percentage from 1% to 100%")),
            ("jitter", "0", Ok("0%")),
            ("jitter", "50%", Ok("50%")),
            ("jitter", "51%", Err("a percentage from 0% to 50%")),
            ("jitter", "-5%", Err("a percentage from 0% to 50%")),
        ];
        for &(key, text, expected) in cases {
            let got = apply(key, text).map(|(_, shown)| shown);
            assert_eq!(
                got.as_deref(),
                expected.map_err(str::to_owned).as_deref(),
                "{key} {text:?}"
            );
        }
        assert_eq!(apply("memory_target", "70%").unwrap().0.memory_target, 70);
        assert_eq!(apply("jitter", "25").unwrap().0.jitter, 25);
        let dir = TempDir::with_toml("memory_target = 70\njitter = \"5%\"\n");
        let loaded = load(&[], &env(&[("MOLT_MEMORY_TARGET", "80%")]), &dir.0).unwrap();
        assert_eq!((loaded.config.memory_target, loaded.config.jitter), (80, 5));
        assert_eq!(
            env_error(&[("MOLT_MEMORY_TARGET", "0")]),
            "invalid MOLT_MEMORY_TARGET=\"0\": expected a percentage from 1% to 100%"
        );
        assert_eq!(
            toml_error("\njitter = 0.1\n"),
            "invalid molt.toml:2 jitter = 0.1: expected a percentage from 0% to 50%"
        );
    }

    #[test]
    fn worker_memory_is_a_size_a_percentage_or_auto() {
        let cases: &[Case<Option<MemoryAmount>>] = &[
            ("230MB", Ok((Some(MemoryAmount::Bytes(230 << 20)), "230MB"))),
            ("0.5GB", Ok((Some(MemoryAmount::Bytes(512 << 20)), "512MB"))),
            ("45%", Ok((Some(MemoryAmount::Percent(45)), "45%"))),
            ("1%", Ok((Some(MemoryAmount::Percent(1)), "1%"))),
            ("100%", Ok((Some(MemoryAmount::Percent(100)), "100%"))),
            ("auto", Ok((None, "auto"))),
            ("", Ok((None, "auto"))),
            ("0%", Err(MEMORY_AMOUNT_EXPECTED)),
            ("101%", Err(MEMORY_AMOUNT_EXPECTED)),
            ("45.5%", Err(MEMORY_AMOUNT_EXPECTED)),
            // Meant as 45%, read as 45 bytes: below the 1MB floor, so an error.
            ("45", Err(MEMORY_AMOUNT_EXPECTED)),
            ("0MB", Err(MEMORY_AMOUNT_EXPECTED)),
            ("big", Err(MEMORY_AMOUNT_EXPECTED)),
        ];
        for key in ["worker_memory", "worker_memory_hard"] {
            for &(text, expected) in cases {
                let got = apply(key, text).map(|(c, shown)| {
                    let amount = if key == "worker_memory" {
                        c.worker_memory
                    } else {
                        c.worker_memory_hard
                    };
                    (amount, shown)
                });
                let expected = expected
                    .map(|(n, shown)| (n, shown.to_owned()))
                    .map_err(str::to_owned);
                assert_eq!(got, expected, "{key} {text:?}");
            }
        }
        assert_eq!(
            env_error(&[("MOLT_WORKER_MEMORY", "45")]),
            "invalid MOLT_WORKER_MEMORY=\"45\": expected a size of at least 1MB such as 230MB, \
             a percentage of the budget from 1% to 100% such as 45%, or auto"
        );
        let dir = TempDir::with_toml("worker_memory = \"200MB\"\n");
        let loaded = load(&[], &env(&[("MOLT_WORKER_MEMORY", "40%")]), &dir.0).unwrap();
        assert_eq!(loaded.config.worker_memory, Some(MemoryAmount::Percent(40)));
        assert_eq!(
            load(&[], &[], &dir.0).unwrap().config.worker_memory,
            Some(MemoryAmount::Bytes(200 << 20))
        );
        assert_eq!(
            toml_error("worker_memory = 45\n"),
            format!("invalid molt.toml:1 worker_memory = 45: expected {MEMORY_AMOUNT_EXPECTED}")
        );
    }

    #[test]
    fn memory_amount_resolves_against_the_budget() {
        let dyno = 536_870_912;
        assert_eq!(MemoryAmount::Bytes(230 << 20).resolve(dyno), 230 << 20);
        // A size is a size whatever the budget, even above it.
        assert_eq!(MemoryAmount::Bytes(1 << 30).resolve(dyno), 1 << 30);
        // 45% of 512MB is 241591910.4 bytes, rounded down.
        assert_eq!(MemoryAmount::Percent(45).resolve(dyno), 241_591_910);
        assert_eq!(MemoryAmount::Percent(100).resolve(dyno), dyno);
        assert_eq!(MemoryAmount::Percent(45).to_string(), "45%");
        assert_eq!(MemoryAmount::Bytes(230 << 20).to_string(), "230MB");
    }

    #[test]
    fn hard_cap_not_above_soft_cap_is_an_error_naming_both() {
        assert_eq!(
            env_error(&[
                ("MOLT_WORKER_MEMORY", "230MB"),
                ("MOLT_WORKER_MEMORY_HARD", "200MB")
            ]),
            "invalid worker_memory_hard 200MB (env MOLT_WORKER_MEMORY_HARD): \
             expected more than worker_memory 230MB (env MOLT_WORKER_MEMORY)"
        );
        assert_eq!(
            toml_error("worker_memory = \"40%\"\nworker_memory_hard = \"40%\"\n"),
            "invalid worker_memory_hard 40% (molt.toml:2): \
             expected more than worker_memory 40% (molt.toml:1)"
        );
        let dir = TempDir::with_toml("worker_memory_hard = \"300MB\"\n");
        let err = load(&[], &env(&[("MOLT_WORKER_MEMORY", "0.3GB")]), &dir.0).unwrap_err();
        assert_eq!(
            err.to_string(),
            "invalid worker_memory_hard 300MB (molt.toml:1): \
             expected more than worker_memory 307.2MB (env MOLT_WORKER_MEMORY)"
        );
        // Above is fine; a size against a percentage needs the budget, so derive checks it.
        for (soft, hard) in [
            ("230MB", "231MB"),
            ("40%", "41%"),
            ("230MB", "10%"),
            ("90%", "1MB"),
        ] {
            let loaded = load_env(&[
                ("MOLT_WORKER_MEMORY", soft),
                ("MOLT_WORKER_MEMORY_HARD", hard),
            ]);
            assert!(loaded.is_ok(), "{soft} {hard}");
        }
    }

    #[test]
    fn durations_that_can_be_off() {
        for key in ["request_timeout", "max_lifetime", "metrics_interval"] {
            for text in ["off", "OFF", "Off", "0", "0s", "0ms"] {
                assert_eq!(apply(key, text).unwrap().1, "off", "{key} {text:?}");
            }
            for text in ["", "never", "-1", "on"] {
                assert_eq!(
                    apply(key, text),
                    Err(DURATION_OR_OFF_EXPECTED.to_owned()),
                    "{key} {text:?}"
                );
            }
        }
        let (c, shown) = apply("request_timeout", "28s").unwrap();
        assert_eq!(
            (c.request_timeout, shown.as_str()),
            (Some(Duration::from_secs(28)), "28s")
        );
        let (c, shown) = apply("max_lifetime", "12h").unwrap();
        assert_eq!(
            (c.max_lifetime, shown.as_str()),
            (Some(Duration::from_secs(43_200)), "12h")
        );
        assert_eq!(
            apply("metrics_interval", "0").unwrap().0.metrics_interval,
            None
        );
        assert_eq!(
            apply("metrics_interval", "10").unwrap().0.metrics_interval,
            Some(Duration::from_secs(10))
        );
        let dir = TempDir::with_toml(
            "request_timeout = 0\nmax_lifetime = \"off\"\nmetrics_interval = 30\n",
        );
        let c = load(&[], &[], &dir.0).unwrap().config;
        assert_eq!(
            (c.request_timeout, c.max_lifetime, c.metrics_interval),
            (None, None, Some(Duration::from_secs(30)))
        );
        let c = load(&[], &env(&[("MOLT_METRICS_INTERVAL", "off")]), &dir.0)
            .unwrap()
            .config;
        assert_eq!(c.metrics_interval, None);
        assert_eq!(
            env_error(&[("MOLT_REQUEST_TIMEOUT", "never")]),
            "invalid MOLT_REQUEST_TIMEOUT=\"never\": \
             expected a duration such as 250ms, 30s or 5m, or off"
        );
        assert_eq!(
            toml_error("max_lifetime = true\n"),
            format!("invalid molt.toml:1 max_lifetime = true: expected {DURATION_OR_OFF_EXPECTED}")
        );
    }

    #[test]
    fn idle_timeout_and_sample_interval_are_positive() {
        for key in ["idle_timeout", "sample_interval"] {
            assert_eq!(
                apply(key, "0"),
                Err(POSITIVE_DURATION_EXPECTED.to_owned()),
                "{key}"
            );
            assert_eq!(
                apply(key, "off"),
                Err(DURATION_EXPECTED.to_owned()),
                "{key}"
            );
        }
        assert_eq!(
            apply("idle_timeout", "10m").unwrap().0.idle_timeout,
            Duration::from_secs(600)
        );
        assert_eq!(
            apply("sample_interval", "500ms").unwrap().0.sample_interval,
            Duration::from_millis(500)
        );
        let dir = TempDir::with_toml("idle_timeout = 60\n");
        let loaded = load(&[], &env(&[("MOLT_IDLE_TIMEOUT", "2m")]), &dir.0).unwrap();
        assert_eq!(loaded.config.idle_timeout, Duration::from_secs(120));
        assert_eq!(source_of(&loaded, "idle_timeout").value, "2m");
        assert_eq!(
            env_error(&[("MOLT_SAMPLE_INTERVAL", "0s")]),
            "invalid MOLT_SAMPLE_INTERVAL=\"0s\": \
             expected a duration above zero, such as 250ms, 30s or 5m"
        );
    }

    #[test]
    fn max_requests_is_a_count_with_zero_off() {
        assert_eq!(apply("max_requests", "0").unwrap().0.max_requests, 0);
        assert_eq!(apply("max_requests", "5000").unwrap().0.max_requests, 5000);
        assert_eq!(
            apply("max_requests", "4294967295").unwrap().0.max_requests,
            4_294_967_295
        );
        assert_eq!(
            env_error(&[("MOLT_MAX_REQUESTS", "-1")]),
            "invalid MOLT_MAX_REQUESTS=\"-1\": expected a whole number, 0 or more"
        );
        let dir = TempDir::with_toml("max_requests = 1000\n");
        assert_eq!(load(&[], &[], &dir.0).unwrap().config.max_requests, 1000);
    }

    #[test]
    fn control_socket_defaults_to_one_per_port() {
        // `molt status` run with the same PORT finds the socket of the molt serving it.
        let loaded = load_env(&[("PORT", "6000")]).unwrap();
        assert_eq!(
            loaded.config.control_socket,
            PathBuf::from("/tmp/molt-6000.sock")
        );
        let effective = source_of(&loaded, "control_socket");
        assert_eq!(
            (effective.value.as_str(), &effective.source),
            ("/tmp/molt-6000.sock", &Source::Default)
        );
        let dir = TempDir::with_toml("port = 7000\n");
        let from_flag = load(&flags(&[("port", "9000")]), &[], &dir.0).unwrap();
        assert_eq!(
            from_flag.config.control_socket,
            PathBuf::from("/tmp/molt-9000.sock")
        );
        assert_eq!(
            load(&[], &[], &dir.0).unwrap().config.control_socket,
            PathBuf::from("/tmp/molt-7000.sock")
        );
        assert_eq!(
            Config::default().control_socket,
            PathBuf::from("/tmp/molt-5000.sock")
        );
        // The default is computed from the port, so the port's row must be loaded first.
        let position = |key| SETTINGS.iter().position(|s| s.key == key).unwrap();
        assert!(position("port") < position("control_socket"));
    }

    #[test]
    fn control_socket_is_an_absolute_path_that_fits_a_socket_address() {
        let dir = TempDir::with_toml("control_socket = \"/run/molt.sock\"\n");
        let loaded = load(&[], &env(&[("PORT", "6000")]), &dir.0).unwrap();
        assert_eq!(
            loaded.config.control_socket,
            PathBuf::from("/run/molt.sock")
        );
        // Empty in the environment brings back the default over the file's path.
        let loaded = load(&[], &env(&[("MOLT_CONTROL_SOCKET", "")]), &dir.0).unwrap();
        assert_eq!(
            loaded.config.control_socket,
            PathBuf::from("/tmp/molt-5000.sock")
        );
        let longest = format!("/{}", "s".repeat(106));
        assert_eq!(apply("control_socket", &longest).unwrap().1, longest);
        let too_long = format!("/{}", "s".repeat(107));
        for text in ["molt.sock", "./molt.sock", "/tmp/a\nb", too_long.as_str()] {
            assert_eq!(
                apply("control_socket", text),
                Err(SOCKET_EXPECTED.to_owned()),
                "{text:?}"
            );
        }
        assert_eq!(
            env_error(&[("MOLT_CONTROL_SOCKET", "molt.sock")]),
            "invalid MOLT_CONTROL_SOCKET=\"molt.sock\": \
             expected an absolute path of at most 107 bytes, such as /tmp/molt.sock"
        );
        assert_eq!(
            toml_error("control_socket = 5\n"),
            format!("invalid molt.toml:1 control_socket = 5: expected {SOCKET_EXPECTED}")
        );
    }

    #[test]
    fn settings_markdown_shows_derived_defaults() {
        let markdown = settings_markdown();
        assert!(markdown
            .contains("| `MOLT_CONTROL_SOCKET` | `control_socket` |  | `/tmp/molt-$PORT.sock` |"));
        assert!(markdown.contains("| `MOLT_MAX_WORKERS` | `max_workers` |  | `auto` |"));
        assert!(markdown.contains("| `MOLT_MEMORY_TARGET` | `memory_target` |  | `85%` |"));
        assert!(markdown.contains("| `MOLT_REQUEST_TIMEOUT` | `request_timeout` |  | `off` |"));
    }

    #[test]
    fn suggestion_ties_go_to_the_earlier_setting() {
        // MOLT_WORKERS is as close to MOLT_MAX_WORKERS as to MOLT_MIN_WORKERS; --workers
        // sets the minimum, so that is the better guess.
        let loaded = load_env(&[("MOLT_WORKERS", "2"), ("MOLT_MAX_WORKER", "2")]).unwrap();
        assert_eq!(
            loaded.warnings,
            [
                "unknown setting MOLT_MAX_WORKER; did you mean MOLT_MAX_WORKERS?",
                "unknown setting MOLT_WORKERS; did you mean MOLT_MIN_WORKERS?",
            ]
        );
    }
}

#[cfg(test)]
mod readme {
    /// The README's settings table is generated from the settings table; this keeps it
    /// from drifting. To refresh it, paste the output of
    /// `cargo test readme -- --nocapture` into README.md.
    #[test]
    fn readme_settings_table_is_current() {
        let table = super::settings_markdown();
        println!("{table}");
        assert!(
            include_str!("../README.md").contains(&table),
            "README.md's settings table is stale"
        );
    }
}

/// Property tests of the parsers of user input: every setting's text form, and
/// `molt.toml` read through [`load`] (the size and duration parsers have theirs in
/// `units`). Arbitrary input never panics, every error
/// is one line, and valid generated input reads back as the value it was made from.
#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod properties {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use proptest::prelude::*;

    use super::*;
    use crate::units::properties::{assert_one_line, number_like};

    /// Case counts: the pure parsers take ~1000 cases in well under a second; the ones
    /// that write a `molt.toml` per case take fewer.
    const PURE_CASES: u32 = 1000;
    const FILE_CASES: u32 = 256;

    /// A fresh directory per case, removed on drop.
    struct AppDir(PathBuf);

    impl AppDir {
        fn with_toml(text: &str) -> Self {
            static NEXT: AtomicUsize = AtomicUsize::new(0);
            let path = std::env::temp_dir().join(format!(
                "molt-config-prop-{}-{}",
                std::process::id(),
                NEXT.fetch_add(1, Ordering::Relaxed)
            ));
            std::fs::create_dir_all(&path).unwrap();
            std::fs::write(path.join(DEFAULT_FILE), text).unwrap();
            AppDir(path)
        }
    }

    impl Drop for AppDir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    /// A TOML value as text, of every type TOML has and of the forms settings take.
    fn toml_value() -> impl Strategy<Value = String> {
        prop_oneof![
            any::<i64>().prop_map(|i| i.to_string()),
            any::<f64>().prop_map(|f| toml_edit::Value::from(f).to_string()),
            any::<bool>().prop_map(|b| b.to_string()),
            any::<String>().prop_map(|s| toml_edit::Value::from(s).to_string()),
            number_like().prop_map(|s| toml_edit::Value::from(s).to_string()),
            Just("[1, 2]".to_owned()),
            Just("{ a = 1 }".to_owned()),
            Just("1979-05-27T07:32:00Z".to_owned()),
            Just("\"auto\"".to_owned()),
            Just("\"off\"".to_owned()),
        ]
    }

    /// A `molt.toml` of `key = value` lines: keys of real settings, near misses and
    /// nonsense; values of any TOML type.
    fn molt_toml() -> impl Strategy<Value = String> {
        let key = prop_oneof![
            prop::sample::select(SETTINGS).prop_map(|s| s.toml_key().to_owned()),
            "[a-z_]{1,20}",
            Just("[table]".to_owned()),
        ];
        prop::collection::vec((key, toml_value()), 0..8).prop_map(|lines| {
            lines
                .iter()
                .map(|(key, value)| {
                    if key.starts_with('[') {
                        format!("{key}\n")
                    } else {
                        format!("{key} = {value}\n")
                    }
                })
                .collect()
        })
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(PURE_CASES))]

        /// Every setting's text form, as a flag or variable gives it: no panic, and an
        /// error is the accepted form in one line.
        #[test]
        fn every_setting_takes_any_text_without_panicking(
            setting in prop::sample::select(SETTINGS),
            text in prop_oneof![any::<String>(), number_like()],
        ) {
            let mut config = Config::default();
            match setting.kind.apply(Raw::Text(&text), &mut config) {
                Ok(shown) => prop_assert!(!shown.contains('\n'), "{shown:?}"),
                Err(expected) => assert_one_line(&expected),
            }
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(FILE_CASES))]

        /// Any text as `molt.toml`: loading never panics, and an error is one line that
        /// names the file.
        #[test]
        fn any_text_as_molt_toml_loads_or_fails_in_one_line(text in any::<String>()) {
            let dir = AppDir::with_toml(&text);
            if let Err(err) = load(&[], &[], &dir.0) {
                let message = err.to_string();
                assert_one_line(&message);
                prop_assert!(message.contains(DEFAULT_FILE), "{message}");
            }
        }

        /// TOML of settings with values of every type: never a panic; an error names the
        /// file (or, for two settings that contradict each other, both settings).
        #[test]
        fn generated_molt_toml_loads_or_fails_in_one_line(text in molt_toml()) {
            let dir = AppDir::with_toml(&text);
            match load(&[], &[], &dir.0) {
                Ok(loaded) => {
                    for effective in &loaded.sources {
                        prop_assert!(!effective.value.contains('\n'), "{effective:?}");
                    }
                }
                Err(err) => {
                    let message = err.to_string();
                    assert_one_line(&message);
                    prop_assert!(message.contains(DEFAULT_FILE), "{message}");
                }
            }
        }

        /// Valid values written to `molt.toml` come back as the values they were made from,
        /// each with the line it was on as its source.
        #[test]
        fn valid_molt_toml_reads_back(
            min_workers in 1u32..=64,
            extra_workers in 0u32..=64,
            queue_timeout_ms in 1u64..(1 << 30),
            idle_timeout_s in 1u64..(1 << 20),
            memory_limit_mb in 1u64..(1 << 20),
            max_requests in 0u32..u32::MAX,
            as_strings in any::<bool>(),
        ) {
            let max_workers = min_workers + extra_workers;
            let quote = |text: String| if as_strings { format!("\"{text}\"") } else { text };
            let text = format!(
                "min_workers = {}\nmax_workers = {}\nqueue_timeout = \"{queue_timeout_ms}ms\"\n\
                 idle_timeout = {}\nmemory_limit = \"{memory_limit_mb}MB\"\nmax_requests = {}\n",
                quote(min_workers.to_string()),
                quote(max_workers.to_string()),
                quote(idle_timeout_s.to_string()),
                quote(max_requests.to_string()),
            );
            let dir = AppDir::with_toml(&text);
            let loaded = load(&[], &[], &dir.0).unwrap();
            let config = &loaded.config;
            prop_assert_eq!(config.min_workers, min_workers as usize);
            prop_assert_eq!(config.max_workers, Some(max_workers as usize));
            prop_assert_eq!(config.queue_timeout, Duration::from_millis(queue_timeout_ms));
            prop_assert_eq!(config.idle_timeout, Duration::from_secs(idle_timeout_s));
            prop_assert_eq!(config.memory_limit, Some(memory_limit_mb << 20));
            prop_assert_eq!(config.max_requests, u64::from(max_requests));
            for (line, key) in ["min_workers", "max_workers", "queue_timeout", "idle_timeout", "memory_limit", "max_requests"]
                .into_iter()
                .enumerate()
            {
                let source = &loaded.sources.iter().find(|e| e.key == key).unwrap().source;
                prop_assert_eq!(
                    source,
                    &Source::File { path: PathBuf::from(DEFAULT_FILE), line: line + 1 }
                );
            }
        }

        /// Any `MOLT_*` value: loading never panics, and an error names the variable.
        #[test]
        fn any_environment_value_loads_or_fails_naming_the_variable(
            setting in prop::sample::select(SETTINGS),
            value in prop_oneof![any::<String>(), number_like()],
        ) {
            let dir = AppDir::with_toml("");
            let env = vec![(setting.env.to_owned(), value)];
            if let Err(err) = load(&[], &env, &dir.0) {
                let message = err.to_string();
                assert_one_line(&message);
                prop_assert!(message.contains(setting.env), "{message}");
            }
        }
    }
}
