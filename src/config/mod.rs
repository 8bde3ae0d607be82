//! Settings for `molt run`, turned once into a validated [`Config`].
//!
//! Precedence, highest first: command-line flags > `MOLT_*` environment > `molt.toml` in
//! the app root (or the file named by `MOLT_CONFIG`) > defaults. The one exception is the
//! port, whose variable is the platform's `PORT` rather than `MOLT_PORT`.
//!
//! Every setting is one row of [`SETTINGS`]: its key (also its `molt.toml` key), its
//! environment name, its flag, its kind (which sets and reads its [`Config`] field) and its
//! doc. Loading, `molt plan` and the README table are all driven by that one table, so a new
//! setting is one new row. Defaults are the `DEFAULT_*` constants below, gathered in
//! [`Config::default`]; `molt plan` and the README show each through its row, so a default
//! is written once.
//!
//! Every source that is present is validated, not only the one that wins: a bad
//! `MOLT_MIN_WORKERS` is an error even when `--workers` overrides it, because molt never
//! guesses what a user meant.
//!
//! An unknown key in `molt.toml` warns at run time and fails the build (a typo must fail
//! the build, not a running dyno): [`load`] is the run-time behaviour, [`load_with`] with
//! [`Strictness::Build`] the buildpack's.

use std::collections::HashMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use nix::sys::signal::Signal;

use crate::units::{format_size, percent_of};

/// `ConfigError` and its messages; suggestions for unknown names.
mod error;
/// The `molt.toml` reader: the file, its keys and their lines.
mod file;
/// The `molt plan` table and the README's table of settings.
mod render;
/// The table of settings, and the parsers of each kind of value.
mod settings;
/// Helpers shared by the config tests.
#[cfg(test)]
mod testing;

pub(crate) use error::ConfigError;
use error::{suggest, unknown_env_warnings};
use file::{read_file, unknown_file_keys, CONFIG_ENV};
pub(crate) use render::{mode_text, plan_text};
use settings::{Kind, Raw, Setting, SETTINGS};

/// When the public port is bound.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum BindMode {
    /// At once, before any worker is ready (so Heroku's R10 boot timeout never fires).
    Now,
    /// Only once the first worker is ready, for platforms that treat a bound port as healthy.
    Ready,
}

/// How the app's command is run: as a pool of instances, or as one preforking master whose
/// children molt governs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Mode {
    /// Prefork when the first instance turns out to be a preforking master molt knows
    /// (Unicorn, gunicorn, Puma in cluster mode), else pool.
    Auto,
    /// One instance per worker, each with `WEB_CONCURRENCY=MOLT_WORKER_PROCESSES`.
    Pool,
    /// One instance, its children governed as the workers.
    Prefork,
}

/// How many requests one worker takes at once (`MOLT_WORKER_CONCURRENCY`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Concurrency {
    /// Learned per worker from its latency (ARCHITECTURE.md), from what the worker's environment
    /// implies, within 1 and `max_concurrency`.
    Auto,
    /// This many; 0 is unlimited.
    Fixed(usize),
}

/// Whether a request body is read whole before a worker is leased (slow-client protection).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum BufferMode {
    /// On while workers take one request at a time (Unicorn, gunicorn sync, or a learned
    /// limit of 1), where a slow upload would hold a whole worker.
    Auto,
    On,
    Off,
}

/// What molt does with a request header whose name holds `_` (`MOLT_UNDERSCORE_HEADERS`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum UnderscoreHeaders {
    /// Dropped: CGI-style servers (Rack, WSGI) map `-` and `_` to one key, so such a
    /// header could shadow one a proxy set (docs/behaviour.md).
    Drop,
    /// Forwarded as any other header.
    Pass,
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
    /// Requests one worker takes at once: learned, or fixed (0 unlimited).
    pub worker_concurrency: Concurrency,
    /// Most requests a worker's learned limit reaches.
    pub max_concurrency: usize,
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
    /// A worker predicted to reach its soft cap within this time is recycled early, when
    /// the pool is quiet; `None` is off.
    pub recycle_horizon: Option<Duration>,
    /// With a path, a new worker gets `warmup_requests` GETs to it before it takes traffic.
    pub warmup_path: Option<String>,
    /// GETs to `warmup_path` a new worker gets before it takes traffic (at least 1).
    pub warmup_requests: u32,
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
    /// Where `GET /metrics` is served for Prometheus (`MOLT_METRICS_LISTEN`); `None` is off.
    pub metrics_listen: Option<std::net::SocketAddr>,
    /// Exec the command directly on the public port, with no pool.
    pub disable: bool,
    /// When the public port is bound.
    pub bind: BindMode,
    /// `MOLT_MODE`.
    pub mode: Mode,
    /// `MOLT_CHILD_STOP_SIGNAL`: the signal that stops one child of a preforking master
    /// gracefully; `None` is the server's own (see `sys::prefork`).
    pub child_stop_signal: Option<Signal>,
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
    /// Whether request headers whose names hold `_` reach the app.
    pub underscore_headers: UnderscoreHeaders,
    /// `MALLOC_ARENA_MAX` for workers whose environment sets none; `None` leaves it alone.
    pub malloc_arena_max: Option<u32>,
}

/// Port when neither `--port` nor `$PORT` names one: Foreman's and `heroku local`'s default.
pub(crate) const DEFAULT_PORT: u16 = 5000;
/// One worker, so an app that never set anything behaves as it did without molt.
pub(crate) const DEFAULT_MIN_WORKERS: usize = 1;
/// Derived from the memory budget, the measured worker footprint and the CPUs, because no
/// fixed number suits both a 512 MB dyno and a 14 GB one (see `budget`).
pub(crate) const DEFAULT_MAX_WORKERS: Option<usize> = None;
/// Learned: no one number suits a Unicorn child (1), Puma (its threads) and an I/O-bound
/// Node process (a hundred or more), and a wrong fixed number either starves the worker or
/// queues requests inside it, where no other worker can take them.
pub(crate) const DEFAULT_WORKER_CONCURRENCY: Concurrency = Concurrency::Auto;
/// A Node worker that is truly flat beyond this is better served by a second worker than by
/// a deeper queue inside one, and the bound keeps a wrong estimate from putting the whole
/// queue on one worker.
pub(crate) const DEFAULT_MAX_CONCURRENCY: usize = 128;
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
/// Above the 90 s after which Heroku's Router 2.0 closes an idle connection to the dyno
/// (Heroku sets `PUMA_PERSISTENT_TIMEOUT=95` for the same reason), so that the router, not
/// molt, closes it: a molt closing first would race the router's next request on it.
pub(crate) const DEFAULT_KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(95);
/// glibc gives a threaded process up to 8 malloc arenas per CPU, and a Puma or threaded
/// Python worker can hold several times the memory it uses in them; 2 is what Heroku sets
/// for newer Ruby apps and costs little speed (docs/memory-budget.md, test/bench/arena.py).
pub(crate) const DEFAULT_MALLOC_ARENA_MAX: Option<u32> = Some(2);
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
/// Ten minutes: a worker that would reach its cap within a few sample intervals is caught
/// by the cap itself, and one hours away would be recycled long before it needs to be; a
/// daily traffic curve has lulls (between bursts, overnight) within minutes of most peaks.
pub(crate) const DEFAULT_RECYCLE_HORIZON: Option<Duration> = Some(Duration::from_secs(600));
/// Off: molt cannot guess which path of an app is cheap and safe to call.
pub(crate) const DEFAULT_WARMUP_PATH: Option<String> = None;
/// One GET: the first request is the one that loads lazy code paths in most apps.
pub(crate) const DEFAULT_WARMUP_REQUESTS: u32 = 1;
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
/// No metrics listener: the scrape endpoint is opt-in (docs/scaling.md).
pub(crate) const DEFAULT_METRICS_LISTEN: Option<std::net::SocketAddr> = None;
/// molt is on unless switched off.
pub(crate) const DEFAULT_DISABLE: bool = false;
/// Binding at once keeps slow-booting apps from failing Heroku's R10 boot timeout.
pub(crate) const DEFAULT_BIND: BindMode = BindMode::Now;
/// Decide from the first instance's process tree.
pub(crate) const DEFAULT_MODE: Mode = Mode::Auto;
/// The server's own graceful signal for one child.
pub(crate) const DEFAULT_CHILD_STOP_SIGNAL: Option<Signal> = None;
/// Buffer request bodies when workers take one request at a time.
pub(crate) const DEFAULT_BUFFER_REQUESTS: BufferMode = BufferMode::Auto;
/// 100 MB: large uploads pass (they spill to a temporary file), runaway ones do not.
pub(crate) const DEFAULT_MAX_BODY: u64 = 100 * 1024 * 1024;
/// Dropped, as nginx does (`underscores_in_headers off`): a client must not be able to
/// shadow a header a proxy set in an app that maps `_` and `-` to one key.
pub(crate) const DEFAULT_UNDERSCORE_HEADERS: UnderscoreHeaders = UnderscoreHeaders::Drop;
/// Lifecycle events and problems, not every request.
pub(crate) const DEFAULT_LOG_LEVEL: LogLevel = LogLevel::Info;

/// The default control socket: `/tmp/molt-<port>.sock`. Naming it after the port lets
/// `molt status`, run with the same `PORT`, find it, and lets two molts on one machine
/// (two apps, or a test run next to a dev server) keep apart. `/tmp` is writable in every
/// dyno and container; the socket's mode, not the directory, keeps other users out.
/// `port` is a port number, or `$PORT` where the README shows the rule.
pub(crate) fn default_control_socket(port: impl fmt::Display) -> PathBuf {
    PathBuf::from(format!("/tmp/molt-{port}.sock"))
}

impl Default for Config {
    fn default() -> Self {
        Config {
            port: DEFAULT_PORT,
            min_workers: DEFAULT_MIN_WORKERS,
            max_workers: DEFAULT_MAX_WORKERS,
            worker_concurrency: DEFAULT_WORKER_CONCURRENCY,
            max_concurrency: DEFAULT_MAX_CONCURRENCY,
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
            recycle_horizon: DEFAULT_RECYCLE_HORIZON,
            warmup_path: DEFAULT_WARMUP_PATH,
            warmup_requests: DEFAULT_WARMUP_REQUESTS,
            shutdown_timeout: DEFAULT_SHUTDOWN_TIMEOUT,
            drain_timeout: DEFAULT_DRAIN_TIMEOUT,
            stop_signal: DEFAULT_STOP_SIGNAL,
            stop_timeout: DEFAULT_STOP_TIMEOUT,
            worker_processes: DEFAULT_WORKER_PROCESSES,
            sample_interval: DEFAULT_SAMPLE_INTERVAL,
            metrics_interval: DEFAULT_METRICS_INTERVAL,
            control_socket: default_control_socket(DEFAULT_PORT),
            metrics_listen: DEFAULT_METRICS_LISTEN,
            disable: DEFAULT_DISABLE,
            bind: DEFAULT_BIND,
            mode: DEFAULT_MODE,
            child_stop_signal: DEFAULT_CHILD_STOP_SIGNAL,
            buffer_requests: DEFAULT_BUFFER_REQUESTS,
            max_body: DEFAULT_MAX_BODY,
            header_timeout: DEFAULT_HEADER_TIMEOUT,
            keepalive_timeout: DEFAULT_KEEPALIVE_TIMEOUT,
            underscore_headers: DEFAULT_UNDERSCORE_HEADERS,
            malloc_arena_max: DEFAULT_MALLOC_ARENA_MAX,
            log_level: DEFAULT_LOG_LEVEL,
        }
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
    /// At build time it is an error, so a typo is caught before it is deployed: the
    /// buildpack checks the settings with it.
    Build,
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
        // The control socket's default is not a fixed value: it follows the port, which an
        // earlier row has loaded. Every other field still holds `Config::default()`'s value,
        // as each row sets only its own.
        if let Kind::Socket { set, .. } = setting.kind {
            let socket = default_control_socket(config.port);
            set(&mut config, socket);
        }
        // Sources are applied lowest precedence first, so the value left in `config` is
        // the highest one present; every present source is still validated on the way.
        let mut effective = Effective {
            key: setting.key,
            value: setting.kind.show(&config),
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::testing::{env, env_error, flags, load_env, source_of, toml_error, TempDir};

    #[test]
    fn defaults_match_config_default() {
        // With no source, loading gives `Config::default()`, each value shown as `molt plan`
        // shows it.
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

    /// `test/fixtures/config/full.toml` sets every setting, each away from its default.
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
            worker_concurrency: Concurrency::Fixed(0),
            max_concurrency: 64,
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
            recycle_horizon: None,
            warmup_path: Some("/warm".to_owned()),
            warmup_requests: 3,
            shutdown_timeout: Duration::from_secs(20),
            drain_timeout: Duration::from_millis(12_500),
            stop_signal: Signal::SIGQUIT,
            stop_timeout: Duration::from_secs(90),
            worker_processes: 2,
            sample_interval: Duration::from_millis(500),
            metrics_interval: None,
            control_socket: PathBuf::from("/run/molt.sock"),
            metrics_listen: Some("[::]:9394".parse().unwrap()),
            disable: true,
            bind: BindMode::Ready,
            mode: Mode::Prefork,
            child_stop_signal: Some(Signal::SIGQUIT),
            log_level: LogLevel::Debug,
            buffer_requests: BufferMode::Off,
            max_body: 10 << 20,
            header_timeout: Duration::from_secs(10),
            keepalive_timeout: Duration::from_secs(5),
            underscore_headers: UnderscoreHeaders::Pass,
            malloc_arena_max: None,
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
}
