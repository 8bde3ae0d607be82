//! The settings table: every setting as one row of [`SETTINGS`] (key, environment name,
//! flag, kind, doc), and what each [`Kind`] accepts: the parsers that turn a raw value from
//! a flag, the environment or `molt.toml` into a [`Config`] field, the accepted form each
//! names when a value does not parse, and the display form of a value, with which a
//! default is shown from [`Config::default`].

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use nix::sys::signal::Signal;
use toml_edit::Item;

use super::{
    default_control_socket, BindMode, BufferMode, Concurrency, Config, LogLevel, MemoryAmount,
    Mode, UnderscoreHeaders, DEFAULT_MAX_BODY,
};
use crate::units::{format_duration, format_size, parse_duration, parse_size};

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
    /// What the setting accepts, and which [`Config`] field it sets and reads. Its default
    /// is that field in [`Config::default`], shown by [`Kind::show`].
    pub kind: Kind,
    /// One line for the README.
    #[allow(
        dead_code,
        reason = "read only by settings_markdown, which only the README test calls"
    )]
    pub doc: &'static str,
}

impl Setting {
    /// The key in `molt.toml`: the setting's key, so the file reads like the docs.
    pub(crate) fn toml_key(&self) -> &'static str {
        self.key
    }

    /// The flag as a user would see it in a message, e.g. `--workers`.
    pub(super) fn flag_name(&self) -> String {
        self.flag.map_or_else(
            || format!("--{}", self.key.replace('_', "-")),
            str::to_owned,
        )
    }
}

/// What a setting accepts. Each kind carries the function that stores the parsed value in
/// [`Config`] and the one that reads it back, so the table alone says where a setting goes,
/// and its default is shown from [`Config::default`] rather than written a second time.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Kind {
    /// A whole number from `min` to `max`; `max` of `u32::MAX` means unbounded.
    Count {
        min: u32,
        max: u32,
        set: fn(&mut Config, u32),
        get: fn(&Config) -> u64,
    },
    /// A duration, which may be zero only when `allow_zero`.
    Duration {
        allow_zero: bool,
        set: fn(&mut Config, Duration),
        get: fn(&Config) -> Duration,
    },
    /// One of [`SIGNALS`].
    Signal {
        set: fn(&mut Config, Signal),
        get: fn(&Config) -> Signal,
    },
    /// A boolean; empty text is false.
    Bool {
        set: fn(&mut Config, bool),
        get: fn(&Config) -> bool,
    },
    /// A URL path; empty text is none.
    Path {
        set: fn(&mut Config, Option<String>),
        get: fn(&Config) -> Option<&str>,
    },
    /// One of the listed words, case-insensitive, each with what it sets; the word shown
    /// is the one whose setter `config` already agrees with (see [`choice_of`]).
    Choice(&'static [(&'static str, SetChoice)]),
    /// `auto` (or empty), or a whole number from `min` to `max`; `auto` is `None`.
    AutoCount {
        min: u32,
        max: u32,
        set: fn(&mut Config, Option<u32>),
        get: fn(&Config) -> Option<u64>,
    },
    /// `off`, which is `None`, or a whole number from `min` to `max`.
    CountOrOff {
        min: u32,
        max: u32,
        set: fn(&mut Config, Option<u32>),
        get: fn(&Config) -> Option<u64>,
    },
    /// A duration, or `off` (or zero), which is `None`.
    DurationOrOff {
        set: fn(&mut Config, Option<Duration>),
        get: fn(&Config) -> Option<Duration>,
    },
    /// A whole percentage from `min` to `max`, with or without `%`.
    Percent {
        min: u8,
        max: u8,
        set: fn(&mut Config, u8),
        get: fn(&Config) -> u8,
    },
    /// `auto` (or empty), or a size above zero (see [`parse_size`]); `auto` is `None`.
    Size {
        set: fn(&mut Config, Option<u64>),
        get: fn(&Config) -> Option<u64>,
    },
    /// `auto` (or empty), a size above zero, or a percentage of the budget.
    Memory {
        set: fn(&mut Config, Option<MemoryAmount>),
        get: fn(&Config) -> Option<MemoryAmount>,
    },
    /// The absolute path of a Unix socket; empty is [`default_control_socket`] of the port
    /// already loaded, so the row must come after `port` in [`SETTINGS`].
    Socket {
        set: fn(&mut Config, PathBuf),
        get: fn(&Config) -> &Path,
    },
    /// `off` (or empty), which is `None`, or an IP address and port such as
    /// `127.0.0.1:9394` or `[::]:9394`, on another port than the public one already
    /// loaded, so the row must come after `port` in [`SETTINGS`].
    Listen {
        set: fn(&mut Config, Option<SocketAddr>),
        get: fn(&Config) -> Option<SocketAddr>,
    },
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
            get: |c| u64::from(c.port),
        },
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
            get: |c| c.min_workers as u64,
        },
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
            get: |c| c.max_workers.map(|n| n as u64),
        },
        doc: "Most workers; auto derives it from the memory budget, the worker footprint and the CPUs.",
    },
    Setting {
        key: "worker_concurrency",
        env: "MOLT_WORKER_CONCURRENCY",
        flag: Some("--concurrency"),
        kind: Kind::AutoCount {
            min: 0,
            max: u32::MAX,
            set: |c, n| {
                c.worker_concurrency = n.map_or(Concurrency::Auto, |n| Concurrency::Fixed(n as usize));
            },
            get: |c| match c.worker_concurrency {
                Concurrency::Auto => None,
                Concurrency::Fixed(n) => Some(n as u64),
            },
        },
        doc: "Requests one worker takes at once; auto learns it per worker from its latency, starting at worker_processes; 0 means unlimited.",
    },
    Setting {
        key: "max_concurrency",
        env: "MOLT_MAX_CONCURRENCY",
        flag: None,
        kind: Kind::Count {
            min: 1,
            max: 10_000,
            set: |c, n| c.max_concurrency = n as usize,
            get: |c| c.max_concurrency as u64,
        },
        doc: "Most requests a learned worker_concurrency reaches.",
    },
    Setting {
        key: "max_queue",
        env: "MOLT_MAX_QUEUE",
        flag: None,
        kind: Kind::Count {
            min: 0,
            max: u32::MAX,
            set: |c, n| c.max_queue = n as usize,
            get: |c| c.max_queue as u64,
        },
        doc: "Requests that may wait for a worker; more get 503.",
    },
    Setting {
        key: "queue_timeout",
        env: "MOLT_QUEUE_TIMEOUT",
        flag: None,
        kind: Kind::Duration {
            allow_zero: false,
            set: |c, d| c.queue_timeout = d,
            get: |c| c.queue_timeout,
        },
        doc: "Longest a request may wait for a worker before 503.",
    },
    Setting {
        key: "boot_timeout",
        env: "MOLT_BOOT_TIMEOUT",
        flag: None,
        kind: Kind::Duration {
            allow_zero: false,
            set: |c, d| c.boot_timeout = d,
            get: |c| c.boot_timeout,
        },
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
            get: |c| u64::from(c.max_boot_failures),
        },
        doc: "Consecutive failed boots, before any worker was ready, that make molt give up.",
    },
    Setting {
        key: "health_path",
        env: "MOLT_HEALTH_PATH",
        flag: Some("--health-path"),
        kind: Kind::Path {
            set: |c, p| c.health_path = p,
            get: |c| c.health_path.as_deref(),
        },
        doc: "With a path, a worker is ready when a GET returns a status below 500.",
    },
    Setting {
        key: "idle_timeout",
        env: "MOLT_IDLE_TIMEOUT",
        flag: None,
        kind: Kind::Duration {
            allow_zero: false,
            set: |c, d| c.idle_timeout = d,
            get: |c| c.idle_timeout,
        },
        doc: "Idle time after which a worker above min_workers is stopped.",
    },
    Setting {
        key: "request_timeout",
        env: "MOLT_REQUEST_TIMEOUT",
        flag: None,
        kind: Kind::DurationOrOff {
            set: |c, d| c.request_timeout = d,
            get: |c| c.request_timeout,
        },
        doc: "A request running longer gets 504 and its worker is replaced; off or 0 disables.",
    },
    Setting {
        key: "memory_limit",
        env: "MOLT_MEMORY_LIMIT",
        flag: None,
        kind: Kind::Size {
            set: |c, n| c.memory_limit = n,
            get: |c| c.memory_limit,
        },
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
            get: |c| c.memory_target,
        },
        doc: "Share of the budget the pool may use, molt's own memory included.",
    },
    Setting {
        key: "worker_memory",
        env: "MOLT_WORKER_MEMORY",
        flag: None,
        kind: Kind::Memory {
            set: |c, m| c.worker_memory = m,
            get: |c| c.worker_memory,
        },
        doc: "Soft cap per worker (a size, or a percentage of the budget); over it a worker is recycled gracefully.",
    },
    Setting {
        key: "worker_memory_hard",
        env: "MOLT_WORKER_MEMORY_HARD",
        flag: None,
        kind: Kind::Memory {
            set: |c, m| c.worker_memory_hard = m,
            get: |c| c.worker_memory_hard,
        },
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
            get: |c| c.max_requests,
        },
        doc: "Requests after which a worker is recycled; 0 disables.",
    },
    Setting {
        key: "max_lifetime",
        env: "MOLT_MAX_LIFETIME",
        flag: None,
        kind: Kind::DurationOrOff {
            set: |c, d| c.max_lifetime = d,
            get: |c| c.max_lifetime,
        },
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
            get: |c| c.jitter,
        },
        doc: "Random spread of max_requests and max_lifetime per worker, so workers do not recycle together.",
    },
    Setting {
        key: "recycle_horizon",
        env: "MOLT_RECYCLE_HORIZON",
        flag: None,
        kind: Kind::DurationOrOff {
            set: |c, d| c.recycle_horizon = d,
            get: |c| c.recycle_horizon,
        },
        doc: "A worker whose growth would take it to its soft cap within this time is recycled early, in a lull; off or 0 disables.",
    },
    Setting {
        key: "warmup_path",
        env: "MOLT_WARMUP_PATH",
        flag: None,
        kind: Kind::Path {
            set: |c, p| c.warmup_path = p,
            get: |c| c.warmup_path.as_deref(),
        },
        doc: "With a path, a new worker gets warmup_requests GETs to it from molt before it takes traffic; a status of 500 or more fails its boot.",
    },
    Setting {
        key: "warmup_requests",
        env: "MOLT_WARMUP_REQUESTS",
        flag: None,
        kind: Kind::Count {
            min: 1,
            max: 1000,
            set: |c, n| c.warmup_requests = n,
            get: |c| u64::from(c.warmup_requests),
        },
        doc: "GETs to warmup_path a new worker gets before it takes traffic.",
    },
    Setting {
        key: "shutdown_timeout",
        env: "MOLT_SHUTDOWN_TIMEOUT",
        flag: None,
        kind: Kind::Duration {
            allow_zero: true,
            set: |c, d| c.shutdown_timeout = d,
            get: |c| c.shutdown_timeout,
        },
        doc: "Time in-flight requests get to finish on SIGTERM.",
    },
    Setting {
        key: "drain_timeout",
        env: "MOLT_DRAIN_TIMEOUT",
        flag: None,
        kind: Kind::Duration {
            allow_zero: true,
            set: |c, d| c.drain_timeout = d,
            get: |c| c.drain_timeout,
        },
        doc: "Time a recycled worker gets to finish its in-flight requests.",
    },
    Setting {
        key: "stop_signal",
        env: "MOLT_STOP_SIGNAL",
        flag: None,
        kind: Kind::Signal {
            set: |c, s| c.stop_signal = s,
            get: |c| c.stop_signal,
        },
        doc: "Signal that asks a worker's process group to stop.",
    },
    Setting {
        key: "stop_timeout",
        env: "MOLT_STOP_TIMEOUT",
        flag: None,
        kind: Kind::Duration {
            allow_zero: true,
            set: |c, d| c.stop_timeout = d,
            get: |c| c.stop_timeout,
        },
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
            get: |c| c.worker_processes as u64,
        },
        doc: "WEB_CONCURRENCY handed to each worker.",
    },
    Setting {
        key: "sample_interval",
        env: "MOLT_SAMPLE_INTERVAL",
        flag: None,
        kind: Kind::Duration {
            allow_zero: false,
            set: |c, d| c.sample_interval = d,
            get: |c| c.sample_interval,
        },
        doc: "Time between two memory samples of the pool.",
    },
    Setting {
        key: "metrics_interval",
        env: "MOLT_METRICS_INTERVAL",
        flag: None,
        kind: Kind::DurationOrOff {
            set: |c, d| c.metrics_interval = d,
            get: |c| c.metrics_interval,
        },
        doc: "Time between two l2met metrics lines; off or 0 disables.",
    },
    Setting {
        key: "control_socket",
        env: "MOLT_CONTROL_SOCKET",
        flag: None,
        kind: Kind::Socket {
            set: |c, p| c.control_socket = p,
            get: |c| &c.control_socket,
        },
        doc: "Unix socket that molt status talks to; only molt's user can open it.",
    },
    Setting {
        key: "metrics_listen",
        env: "MOLT_METRICS_LISTEN",
        flag: None,
        kind: Kind::Listen {
            set: |c, a| c.metrics_listen = a,
            get: |c| c.metrics_listen,
        },
        doc: "Address of the Prometheus /metrics listener (127.0.0.1:9394 or [::]:9394), never the public port; off disables (docs/scaling.md).",
    },
    Setting {
        key: "disable",
        env: "MOLT_DISABLE",
        flag: None,
        kind: Kind::Bool {
            set: |c, b| c.disable = b,
            get: |c| c.disable,
        },
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
        doc: "How much molt logs: debug, info or warn.",
    },
    Setting {
        key: "mode",
        env: "MOLT_MODE",
        flag: None,
        kind: Kind::Choice(&[
            ("auto", |c| c.mode = Mode::Auto),
            ("pool", |c| c.mode = Mode::Pool),
            ("prefork", |c| c.mode = Mode::Prefork),
        ]),
        doc: "pool: an instance of the command per worker; prefork: one preforking master (Unicorn, gunicorn, Puma), its children the workers; auto: prefork when the first instance is such a master.",
    },
    Setting {
        key: "child_stop_signal",
        env: "MOLT_CHILD_STOP_SIGNAL",
        flag: None,
        kind: Kind::Choice(&[
            ("auto", |c| c.child_stop_signal = None),
            ("TERM", |c| c.child_stop_signal = Some(Signal::SIGTERM)),
            ("QUIT", |c| c.child_stop_signal = Some(Signal::SIGQUIT)),
            ("INT", |c| c.child_stop_signal = Some(Signal::SIGINT)),
            ("USR1", |c| c.child_stop_signal = Some(Signal::SIGUSR1)),
            ("USR2", |c| c.child_stop_signal = Some(Signal::SIGUSR2)),
            ("HUP", |c| c.child_stop_signal = Some(Signal::SIGHUP)),
            ("WINCH", |c| c.child_stop_signal = Some(Signal::SIGWINCH)),
        ]),
        doc: "Signal that stops one child of a preforking master after its request; auto: the server's own (Unicorn QUIT, gunicorn and Puma TERM).",
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
        doc: "Read request bodies whole before a worker is leased (auto: while a ready worker takes one request at a time).",
    },
    Setting {
        key: "max_body",
        env: "MOLT_MAX_BODY",
        flag: None,
        kind: Kind::Size {
            set: |c, n| c.max_body = n.unwrap_or(DEFAULT_MAX_BODY),
            get: |c| Some(c.max_body),
        },
        doc: "Largest request body accepted; larger ones get 413.",
    },
    Setting {
        key: "header_timeout",
        env: "MOLT_HEADER_TIMEOUT",
        flag: None,
        kind: Kind::Duration {
            allow_zero: false,
            set: |c, d| c.header_timeout = d,
            get: |c| c.header_timeout,
        },
        doc: "Longest a client may take to send a request's headers; then it gets 408.",
    },
    Setting {
        key: "keepalive_timeout",
        env: "MOLT_KEEPALIVE_TIMEOUT",
        flag: None,
        kind: Kind::Duration {
            allow_zero: false,
            set: |c, d| c.keepalive_timeout = d,
            get: |c| c.keepalive_timeout,
        },
        doc: "Longest a client connection may stay open with no request on it; above the 90 s after which Heroku's router closes an idle one, so the router closes first.",
    },
    Setting {
        key: "malloc_arena_max",
        env: "MOLT_MALLOC_ARENA_MAX",
        flag: None,
        kind: Kind::CountOrOff {
            min: 1,
            max: 1024,
            set: |c, n| c.malloc_arena_max = n,
            get: |c| c.malloc_arena_max.map(u64::from),
        },
        doc: "MALLOC_ARENA_MAX given to workers whose environment has none (glibc's malloc arenas); off leaves the environment alone.",
    },
    Setting {
        key: "underscore_headers",
        env: "MOLT_UNDERSCORE_HEADERS",
        flag: None,
        kind: Kind::Choice(&[
            ("drop", |c| c.underscore_headers = UnderscoreHeaders::Drop),
            ("pass", |c| c.underscore_headers = UnderscoreHeaders::Pass),
        ]),
        doc: "Request headers whose names hold `_`: drop (as nginx does; Rack and WSGI read `_` as `-`, so they could shadow a proxy's header) or pass.",
    },
];

/// A raw value from one source, before its kind interprets it.
#[derive(Debug, Clone, Copy)]
pub(super) enum Raw<'a> {
    /// Text from a flag, the environment or a TOML string.
    Text(&'a str),
    Int(i64),
    Float(f64),
    Bool(bool),
    /// A TOML table, array or date, which no setting accepts.
    Other,
}

impl<'a> Raw<'a> {
    pub(super) fn from_toml(item: &'a Item) -> Self {
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
    #[allow(clippy::too_many_lines, reason = "one arm per kind, each short")]
    pub(super) fn apply(&self, raw: Raw<'_>, config: &mut Config) -> Result<String, String> {
        match *self {
            Kind::Count { min, max, set, .. } => {
                let n = count_from(raw, min, max)?;
                set(config, n);
                Ok(n.to_string())
            }
            Kind::Duration {
                allow_zero, set, ..
            } => {
                let duration = duration_from(raw)?;
                if duration.is_zero() && !allow_zero {
                    return Err(POSITIVE_DURATION_EXPECTED.to_owned());
                }
                set(config, duration);
                Ok(format_duration(duration))
            }
            Kind::Signal { set, .. } => {
                let expected = || {
                    let names: Vec<&str> = SIGNALS.iter().map(|(name, _)| *name).collect();
                    format!("a signal name: {}", join_or(&names))
                };
                let signal = raw.text().and_then(signal_from).ok_or_else(expected)?;
                set(config, signal);
                Ok(signal_name(signal).to_owned())
            }
            Kind::Bool { set, .. } => {
                let b = match raw {
                    Raw::Bool(b) => Some(b),
                    Raw::Text(text) => parse_bool(text),
                    _ => None,
                };
                let b = b.ok_or_else(|| BOOL_EXPECTED.to_owned())?;
                set(config, b);
                Ok(b.to_string())
            }
            Kind::Path { set, .. } => {
                let text = raw.text().ok_or_else(|| PATH_EXPECTED.to_owned())?;
                // Empty means no health path: the way to override a path set in molt.toml.
                if text.is_empty() {
                    set(config, None);
                    return Ok(shown_path(None));
                }
                let valid = text.starts_with('/')
                    && !text.chars().any(|c| c.is_whitespace() || c.is_control());
                if !valid {
                    return Err(PATH_EXPECTED.to_owned());
                }
                set(config, Some(text.to_owned()));
                Ok(shown_path(Some(text)))
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
            Kind::AutoCount { min, max, set, .. } => {
                let n = auto_count_from(raw, min, max)?;
                set(config, n);
                Ok(shown_auto(n, |n| n.to_string()))
            }
            Kind::CountOrOff { min, max, set, .. } => {
                let n = count_or_off_from(raw, min, max)?;
                set(config, n);
                Ok(n.map_or_else(|| "off".to_owned(), |n| n.to_string()))
            }
            Kind::DurationOrOff { set, .. } => {
                let duration = duration_or_off_from(raw)?;
                set(config, duration);
                Ok(shown_off(duration))
            }
            Kind::Percent { min, max, set, .. } => {
                let percent = percent_from(raw)
                    .filter(|p| (min..=max).contains(p))
                    .ok_or_else(|| format!("a percentage from {min}% to {max}%"))?;
                set(config, percent);
                Ok(shown_percent(percent))
            }
            Kind::Size { set, .. } => {
                let bytes = if is_auto(raw) {
                    None
                } else {
                    Some(size_from(raw).ok_or_else(|| SIZE_EXPECTED.to_owned())?)
                };
                set(config, bytes);
                Ok(shown_auto(bytes, format_size))
            }
            Kind::Memory { set, .. } => {
                let amount = memory_amount_from(raw)?;
                set(config, amount);
                Ok(shown_auto(amount, |a| a.to_string()))
            }
            Kind::Socket { set, .. } => {
                let path = socket_from(raw, config.port)?;
                let shown = path.display().to_string();
                set(config, path);
                Ok(shown)
            }
            Kind::Listen { set, .. } => {
                let addr = listen_from(raw, config.port)?;
                set(config, addr);
                Ok(shown_listen(addr))
            }
        }
    }

    /// The display form of the value `config` holds for this setting: what [`Kind::apply`]
    /// returns for the same value given by a user. `molt plan` and the README show defaults
    /// with it, from [`Config::default`].
    pub(super) fn show(&self, config: &Config) -> String {
        match *self {
            Kind::Count { get, .. } => get(config).to_string(),
            Kind::Duration { get, .. } => format_duration(get(config)),
            Kind::Signal { get, .. } => signal_name(get(config)).to_owned(),
            Kind::Bool { get, .. } => get(config).to_string(),
            Kind::Path { get, .. } => shown_path(get(config)),
            Kind::Choice(choices) => choice_of(choices, config).to_owned(),
            Kind::AutoCount { get, .. } => shown_auto(get(config), |n| n.to_string()),
            Kind::CountOrOff { get, .. } => {
                get(config).map_or_else(|| "off".to_owned(), |n| n.to_string())
            }
            Kind::DurationOrOff { get, .. } => shown_off(get(config)),
            Kind::Percent { get, .. } => shown_percent(get(config)),
            Kind::Size { get, .. } => shown_auto(get(config), format_size),
            Kind::Memory { get, .. } => shown_auto(get(config), |a| a.to_string()),
            Kind::Socket { get, .. } => get(config).display().to_string(),
            Kind::Listen { get, .. } => shown_listen(get(config)),
        }
    }
}

/// `auto` for a value molt derives, else the value's own form.
fn shown_auto<T>(value: Option<T>, shown: impl FnOnce(T) -> String) -> String {
    value.map_or_else(|| "auto".to_owned(), shown)
}

/// `off` for a duration that is switched off, else its compact form.
fn shown_off(duration: Option<Duration>) -> String {
    duration.map_or_else(|| "off".to_owned(), format_duration)
}

/// `none` when there is no path.
fn shown_path(path: Option<&str>) -> String {
    path.unwrap_or("none").to_owned()
}

fn shown_percent(percent: u8) -> String {
    format!("{percent}%")
}

/// A signal's name without `SIG`, as [`SIGNALS`] lists it.
fn signal_name(signal: Signal) -> &'static str {
    let name = signal.as_str();
    name.strip_prefix("SIG").unwrap_or(name)
}

/// The word of the choice `config` holds: the one whose setter leaves `config` as it is.
/// Each setter of a row sets the row's one field to a value of its own, so exactly one
/// agrees.
fn choice_of(choices: &[(&'static str, SetChoice)], config: &Config) -> &'static str {
    choices
        .iter()
        .find(|(_, set)| {
            let mut probe = config.clone();
            set(&mut probe);
            probe == *config
        })
        .map(|&(name, _)| name)
        .expect("a Choice row lists every value of its field")
}

/// `auto` (or empty) as `None`, or a whole number within `min..=max`.
fn auto_count_from(raw: Raw<'_>, min: u32, max: u32) -> Result<Option<u32>, String> {
    if is_auto(raw) {
        return Ok(None);
    }
    count_from(raw, min, max)
        .map(Some)
        .map_err(|_| match (min, max) {
            (0, u32::MAX) => "auto or a whole number, 0 or more".to_owned(),
            _ => format!("auto or a whole number from {min} to {max}"),
        })
}

/// `off` as `None`, or a whole number within `min..=max`.
fn count_or_off_from(raw: Raw<'_>, min: u32, max: u32) -> Result<Option<u32>, String> {
    if matches!(raw, Raw::Text(text) if text.eq_ignore_ascii_case("off")) {
        return Ok(None);
    }
    count_from(raw, min, max)
        .map(Some)
        .map_err(|_| format!("off or a whole number from {min} to {max}"))
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

/// `off` (or empty) as `None`, or an address whose port is neither 0 nor `public_port`:
/// the public listener binds `[::]:$PORT`, so any address on that port would collide
/// with it, and a scraper needs a port it can be told.
fn listen_from(raw: Raw<'_>, public_port: u16) -> Result<Option<SocketAddr>, String> {
    let expected = || {
        format!(
            "an IP address and a port other than the public port {public_port}, \
             such as 127.0.0.1:9394 or [::]:9394, or off"
        )
    };
    let text = raw.text().ok_or_else(expected)?;
    if text.is_empty() || text.eq_ignore_ascii_case("off") {
        return Ok(None);
    }
    let addr: SocketAddr = text.parse().map_err(|_| expected())?;
    if addr.port() == 0 || addr.port() == public_port {
        return Err(expected());
    }
    Ok(Some(addr))
}

/// `off` when there is no listener, else the address.
fn shown_listen(addr: Option<SocketAddr>) -> String {
    addr.map_or_else(|| "off".to_owned(), |a| a.to_string())
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

/// A signal of [`SIGNALS`] by name, case-insensitive, with or without `SIG`.
fn signal_from(text: &str) -> Option<Signal> {
    let upper = text.to_ascii_uppercase();
    let short = upper.strip_prefix("SIG").unwrap_or(&upper);
    SIGNALS
        .iter()
        .find(|(name, _)| *name == short)
        .map(|&(_, signal)| signal)
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::testing::{apply, env, env_error, flags, source_of, toml_error, TempDir};
    use crate::config::{load, Source};

    /// Text for a setting, and the value and display form it gives, or the accepted form.
    type Case<T> = (&'static str, Result<(T, &'static str), &'static str>);

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
    fn every_shown_default_reads_back_as_the_default() {
        // Guards against a row's getter, setter and parser drifting apart: the default that
        // `molt plan` and the README show must be the value molt starts from. Starting from
        // a config with every field away from its default, applying each row's shown
        // default as text must give `Config::default()` back, field for field.
        let fixture = Path::new(env!("CARGO_MANIFEST_DIR")).join("test/fixtures/config/full.toml");
        let dir = TempDir::new();
        let env = env(&[("MOLT_CONFIG", fixture.to_str().unwrap())]);
        let mut config = load(&[], &env, &dir.0).unwrap().config;
        let defaults = Config::default();
        for setting in SETTINGS {
            let shown = setting.kind.show(&defaults);
            assert_ne!(
                setting.kind.show(&config),
                shown,
                "{} in full.toml",
                setting.key
            );
            // `none` is how no health path is shown; a user writes it as empty text.
            let text = match setting.kind {
                Kind::Path { .. } if shown == "none" => "",
                _ => &shown,
            };
            let applied = setting.kind.apply(Raw::Text(text), &mut config);
            assert_eq!(applied.as_deref(), Ok(shown.as_str()), "{}", setting.key);
        }
        assert_eq!(config, defaults);
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
            ("worker_concurrency", "auto", Ok("auto")),
            ("worker_concurrency", "AUTO", Ok("auto")),
            ("worker_concurrency", "", Ok("auto")),
            ("worker_concurrency", "8", Ok("8")),
            (
                "worker_concurrency",
                "-1",
                Err("auto or a whole number, 0 or more"),
            ),
            ("max_concurrency", "0", Err("a whole number of at least 1")),
            ("max_concurrency", "32", Ok("32")),
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
        let concurrency = |text| {
            apply("worker_concurrency", text)
                .unwrap()
                .0
                .worker_concurrency
        };
        assert_eq!(concurrency("auto"), Concurrency::Auto);
        assert_eq!(concurrency("3"), Concurrency::Fixed(3));
        assert_eq!(concurrency("0"), Concurrency::Fixed(0), "0 is unlimited");
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
    fn metrics_listen_is_an_address_off_the_public_port() {
        for (text, shown) in [
            ("127.0.0.1:9394", "127.0.0.1:9394"),
            ("[::]:9394", "[::]:9394"),
            ("0.0.0.0:9100", "0.0.0.0:9100"),
            ("off", "off"),
            ("", "off"),
        ] {
            assert_eq!(apply("metrics_listen", text).unwrap().1, shown, "{text:?}");
        }
        assert_eq!(
            apply("metrics_listen", "[::1]:9394")
                .unwrap()
                .0
                .metrics_listen,
            Some("[::1]:9394".parse().unwrap())
        );
        // The public port, on any address, would collide with the public listener.
        assert_eq!(
            env_error(&[("PORT", "8080"), ("MOLT_METRICS_LISTEN", "127.0.0.1:8080")]),
            "invalid MOLT_METRICS_LISTEN=\"127.0.0.1:8080\": expected an IP address and a \
             port other than the public port 8080, such as 127.0.0.1:9394 or [::]:9394, or off"
        );
        for text in [
            "9394",
            "localhost:9394",
            "127.0.0.1",
            "127.0.0.1:0",
            "[::]:5000",
            ":9394",
        ] {
            assert!(apply("metrics_listen", text).is_err(), "{text:?}");
        }
        let loaded = crate::config::testing::load_env(&[
            ("PORT", "6000"),
            ("MOLT_METRICS_LISTEN", "[::]:5000"),
        ])
        .unwrap();
        assert_eq!(
            loaded.config.metrics_listen,
            Some("[::]:5000".parse().unwrap())
        );
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
}

/// Property tests of every setting's text form.
#[cfg(test)]
mod properties {
    use proptest::prelude::*;
    use proptest::test_runner::TestRunner;

    use super::*;
    use crate::config::load;
    use crate::config::testing::{TempDir, PURE_CASES};
    use crate::units::properties::{assert_one_line, number_like};

    /// Every setting's text form, as a flag or variable gives it: no panic, an error is the
    /// accepted form in one line, a value is shown as the row shows what it stored, and the
    /// same text from the environment loads or fails in one line that names the variable.
    #[test]
    fn every_setting_takes_any_text_without_panicking() {
        // One app directory, with no molt.toml, serves every case: loading only reads it.
        let dir = TempDir::new();
        let cases = (
            prop::sample::select(SETTINGS),
            prop_oneof![any::<String>(), number_like()],
        );
        let mut runner = TestRunner::new(ProptestConfig::with_cases(PURE_CASES));
        runner
            .run(&cases, |(setting, text)| {
                let mut config = Config::default();
                match setting.kind.apply(Raw::Text(&text), &mut config) {
                    Ok(shown) => {
                        prop_assert!(!shown.contains('\n'), "{shown:?}");
                        // What apply shows is what the row shows of the value it stored, so a
                        // default reads as the same value given by a user would. The one
                        // exception is max_body, which stores `auto` as its default size.
                        let stored = setting.kind.show(&config);
                        prop_assert!(shown == stored || shown == "auto", "{shown} {stored}");
                    }
                    Err(expected) => assert_one_line(&expected),
                }
                let env = vec![(setting.env.to_owned(), text)];
                if let Err(err) = load(&[], &env, &dir.0) {
                    let message = err.to_string();
                    assert_one_line(&message);
                    prop_assert!(message.contains(setting.env), "{message}");
                }
                Ok(())
            })
            .unwrap();
    }
}
