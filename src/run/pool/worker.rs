//! Worker processes: how the app's command is started, checked for readiness and stopped.

use std::net::{Ipv4Addr, SocketAddr, TcpListener};
use std::os::unix::process::CommandExt as _;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::Duration;

use nix::errno::Errno;
use nix::sys::signal::{killpg, Signal};
use nix::unistd::Pid;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU16, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use tokio::sync::mpsc;
use tokio::task::AbortHandle;

use super::warmup::Warmup;
use crate::observe::event;
use crate::run::event::{ChildSamples, Event};
use crate::sys::memory;
use crate::sys::prefork::{self, NotPrefork, Prefork};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

/// Private worker ports are taken from this range, below Linux's ephemeral range
/// (32768-60999) so that molt's own outgoing connections never hold one.
pub(crate) const PORT_RANGE: std::ops::Range<u16> = 20000..32000;

/// Pause between readiness attempts while a worker boots.
const PROBE_INTERVAL: Duration = Duration::from_millis(50);

/// Longest a single readiness attempt may take.
const PROBE_TIMEOUT: Duration = Duration::from_secs(2);

/// The app's web command, as molt was given it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum AppCommand {
    /// One string: a command line run by a shell, as Heroku runs Procfile lines.
    Shell { shell: PathBuf, line: String },
    /// Several arguments: exec'd directly, with `$PORT` and `${PORT}` replaced.
    Argv(Vec<String>),
}

impl AppCommand {
    /// Interprets the words after `--`. Heroku runs Procfile lines with bash, and Procfiles
    /// use bashisms, so a single string runs under bash (sh where bash is absent).
    pub(crate) fn from_words(mut words: Vec<String>) -> Result<Self, CommandError> {
        match words.len() {
            0 => Err(CommandError::Missing),
            1 => {
                let shell = which::which("bash")
                    .or_else(|_| which::which("sh"))
                    .map_err(|_| CommandError::NoShell)?;
                Ok(AppCommand::Shell {
                    shell,
                    line: words.remove(0),
                })
            }
            _ => {
                if which::which(&words[0]).is_err() {
                    return Err(CommandError::NotFound(words.remove(0)));
                }
                Ok(AppCommand::Argv(words))
            }
        }
    }

    /// The process for one instance of the app listening on `port`.
    pub(crate) fn command(&self, port: u16) -> Command {
        match self {
            AppCommand::Shell { shell, line } => {
                let mut cmd = Command::new(shell);
                cmd.arg("-c").arg(line);
                cmd
            }
            AppCommand::Argv(words) => {
                let port = port.to_string();
                let mut words = words.iter().map(|w| substitute_port(w, &port));
                let mut cmd =
                    Command::new(words.next().expect("from_words keeps at least one word"));
                cmd.args(words);
                cmd
            }
        }
    }
}

/// Why the words after `--` are not a command molt can run.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum CommandError {
    Missing,
    NoShell,
    NotFound(String),
}

impl std::fmt::Display for CommandError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CommandError::Missing => f.write_str("no command given: use `molt run -- COMMAND`"),
            CommandError::NoShell => {
                f.write_str("neither bash nor sh is on PATH; molt needs one to run a command line")
            }
            CommandError::NotFound(program) => {
                write!(
                    f,
                    "command not found: {program}; check the command and PATH"
                )
            }
        }
    }
}

/// Replaces every literal `$PORT` and `${PORT}`, as Passenger's start command does: with
/// no shell in between, nothing else would expand them.
fn substitute_port(word: &str, port: &str) -> String {
    word.replace("${PORT}", port).replace("$PORT", port)
}

/// What the supervisor does to processes. A trait, so that the supervisor's state
/// machine can be tested without forking; [`Os`] is the real one.
pub(crate) trait Processes: Send {
    /// Starts a worker in its own process group and returns its pid.
    fn spawn(&self, spec: &Spawn<'_>) -> std::io::Result<Pid>;
    /// Sends `signal` to a worker's whole process group.
    fn signal_group(&self, pid: Pid, signal: Signal);
    /// Sends `signal` to one process: a preforking master, or one of its children.
    fn signal(&self, pid: Pid, signal: Signal);
    /// Whether any process (a zombie not yet reaped included) is left in the group of
    /// `pid`, a worker's leader.
    fn group_alive(&self, pid: Pid) -> bool;
    /// A private port for a new worker, not among `taken`.
    fn free_port(&self, taken: &[u16]) -> Option<u16>;
    /// Measures each worker's process tree off the supervisor task, and each child of the
    /// adopted masters; reports [`Event::Sampled`].
    fn measure(&self, targets: Vec<Target>, events: mpsc::UnboundedSender<Event>);
    /// Looks at the process tree of a worker that just became ready, off the supervisor
    /// task, for a preforking master listening on `port`; reports [`Event::Inspected`].
    fn inspect(&self, id: u64, pid: Pid, port: u16, events: mpsc::UnboundedSender<Event>);
    /// Sends a new worker's warm-up requests (or those of an adopted master's new
    /// children) to `addr` off the supervisor task; reports [`Event::Warmed`].
    fn warm_up(
        &self,
        id: u64,
        addr: SocketAddr,
        warmup: Warmup,
        events: mpsc::UnboundedSender<Event>,
    ) -> AbortHandle;
    /// Starts watching a booting worker; reports [`Event::Ready`] when it is ready.
    fn watch_ready(
        &self,
        id: u64,
        addr: SocketAddr,
        health_path: Option<String>,
        events: mpsc::UnboundedSender<Event>,
    ) -> AbortHandle;
}

/// Real processes and sockets.
pub(crate) struct Os {
    /// Where the next port search starts, so that consecutive workers and several molts
    /// on one machine rarely try the same ports.
    port_hint: AtomicU16,
    /// The listening sockets each adopted master was last found on, by its pid: a sample
    /// tries them before reading the machine's `/proc/net/tcp` (see
    /// [`prefork::detect_again`]). Only the masters of the last sample are kept.
    listeners: Arc<Mutex<HashMap<i32, Vec<prefork::Listener>>>>,
}

impl Os {
    pub(crate) fn new() -> Self {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos());
        let mixed = nanos ^ std::process::id().wrapping_mul(2_654_435_761);
        let len = u32::from(PORT_RANGE.end - PORT_RANGE.start);
        Os {
            port_hint: AtomicU16::new(u16::try_from(mixed % len).expect("below the range length")),
            listeners: Arc::default(),
        }
    }
}

impl Processes for Os {
    fn spawn(&self, spec: &Spawn<'_>) -> std::io::Result<Pid> {
        spawn(spec)
    }

    fn warm_up(
        &self,
        id: u64,
        addr: SocketAddr,
        warmup: Warmup,
        events: mpsc::UnboundedSender<Event>,
    ) -> AbortHandle {
        tokio::spawn(async move {
            let result = super::warmup::run(addr, warmup).await;
            let _ = events.send(Event::Warmed { id, result });
        })
        .abort_handle()
    }

    fn signal_group(&self, pid: Pid, signal: Signal) {
        signal_group(pid, signal);
    }

    fn group_alive(&self, pid: Pid) -> bool {
        // Signal 0 checks only; EPERM would mean a process molt may not signal, still there.
        !matches!(killpg(pid, None), Err(Errno::ESRCH))
    }

    fn free_port(&self, taken: &[u16]) -> Option<u16> {
        let hint = self.port_hint.fetch_add(1, Ordering::Relaxed);
        free_port(hint, taken)
    }

    fn signal(&self, pid: Pid, signal: Signal) {
        if let Err(err) = nix::sys::signal::kill(pid, signal) {
            // Gone already: its exit is seen at the next sample.
            if err != Errno::ESRCH {
                event!(
                    Warn,
                    "signal_failed",
                    pid = pid,
                    signal = signal.as_str(),
                    error = err
                );
            }
        }
    }

    fn measure(&self, targets: Vec<Target>, events: mpsc::UnboundedSender<Event>) {
        // Reading /proc is blocking file I/O, a few files per process.
        let listeners = Arc::clone(&self.listeners);
        tokio::task::spawn_blocking(move || {
            let proc = std::path::Path::new("/proc");
            let page = memory::page_size();
            let mut samples = Vec::with_capacity(targets.len());
            let mut children = Vec::new();
            let mut known = listeners.lock().unwrap_or_else(PoisonError::into_inner);
            let mut seen = HashMap::new();
            for target in targets {
                let pid = target.pid.as_raw();
                samples.push((target.id, memory::measure_tree(proc, pid, page)));
                let Some(port) = target.prefork_port else {
                    continue;
                };
                let last = known.remove(&pid).unwrap_or_default();
                let (found, on) =
                    prefork::detect_again(proc, pid, port, &last, prefork::read_listeners);
                seen.insert(pid, on);
                // A master between two children (one exited, its replacement not yet
                // titled) still reads as one; a failed look keeps the last list.
                if let Ok(found) = found {
                    children.push(ChildSamples {
                        id: target.id,
                        own: memory::measure_above(proc, pid, found.master),
                        children: found
                            .children
                            .into_iter()
                            .filter_map(|child| {
                                memory::measure_tree(proc, child, page).map(|m| (child, m))
                            })
                            .collect(),
                    });
                }
            }
            *known = seen;
            drop(known);
            let molt_rss = memory::self_rss(proc, page);
            let _ = events.send(Event::Sampled {
                samples,
                children,
                molt_rss,
            });
        });
    }

    fn inspect(&self, id: u64, pid: Pid, port: u16, events: mpsc::UnboundedSender<Event>) {
        tokio::spawn(async move {
            let found = inspect(pid.as_raw(), port).await;
            let _ = events.send(Event::Inspected { id, found });
        });
    }

    fn watch_ready(
        &self,
        id: u64,
        addr: SocketAddr,
        health_path: Option<String>,
        events: mpsc::UnboundedSender<Event>,
    ) -> AbortHandle {
        tokio::spawn(async move {
            wait_ready(addr, health_path).await;
            let _ = events.send(Event::Ready { id });
        })
        .abort_handle()
    }
}

/// A worker to measure; `prefork_port` is the port of an adopted master, whose children
/// are measured one by one.
pub(crate) struct Target {
    pub(crate) id: u64,
    pub(crate) pid: Pid,
    pub(crate) prefork_port: Option<u16>,
}

/// Longest molt looks for the children of a master that already accepts: a preloading
/// server binds, then forks, and its children take a few milliseconds to retitle
/// themselves (9 to 102 ms for Unicorn, gunicorn and Puma here).
const INSPECT_WINDOW: Duration = Duration::from_secs(2);

/// Pause between two looks at a tree whose children are not there yet.
const INSPECT_INTERVAL: Duration = Duration::from_millis(20);

/// Looks for a preforking master in the tree of `pid` until its children are found or
/// [`INSPECT_WINDOW`] has passed; a tree with no such master answers at once.
async fn inspect(pid: i32, port: u16) -> Result<Prefork, NotPrefork> {
    let deadline = tokio::time::Instant::now() + INSPECT_WINDOW;
    // The listening socket once found, so that each look does not read /proc/net/tcp.
    let mut known = Vec::new();
    loop {
        let last = std::mem::take(&mut known);
        let found = tokio::task::spawn_blocking(move || {
            let proc = std::path::Path::new("/proc");
            prefork::detect_again(proc, pid, port, &last, prefork::read_listeners)
        })
        .await
        .map_or(Err(NotPrefork::Gone { pid }), |(found, on)| {
            known = on;
            found
        });
        // Only these can change in a moment: the children are being forked or retitled,
        // or the socket is still being opened.
        let settling = matches!(
            found,
            Err(NotPrefork::NoWorkers { .. }
                | NotPrefork::SingleProcess { .. }
                | NotPrefork::NoListener { .. })
        );
        if !settling || tokio::time::Instant::now() >= deadline {
            return found;
        }
        tokio::time::sleep(INSPECT_INTERVAL).await;
    }
}

/// What a worker is started with.
pub(crate) struct Spawn<'a> {
    pub(crate) id: u64,
    pub(crate) port: u16,
    pub(crate) web_concurrency: usize,
    pub(crate) command: &'a AppCommand,
    /// `MALLOC_ARENA_MAX` to set when molt's environment has none (`MOLT_MALLOC_ARENA_MAX`).
    pub(crate) malloc_arena_max: Option<u32>,
}

fn spawn(spec: &Spawn<'_>) -> std::io::Result<Pid> {
    let mut cmd = spec.command.command(spec.port);
    cmd.env("PORT", spec.port.to_string())
        .env("MOLT_WORKER", spec.id.to_string())
        .env("WEB_CONCURRENCY", spec.web_concurrency.to_string())
        .stdin(Stdio::null())
        // A group of its own lets molt signal the worker and every process it forks.
        .process_group(0);
    if let Some((key, value)) = arena_max(spec.malloc_arena_max, std::env::var_os(ARENA_MAX)) {
        cmd.env(key, value);
    }
    let parent = nix::unistd::getpid();
    // SAFETY: the closure runs between fork and exec and only makes async-signal-safe
    // system calls (prctl, sigaction, getppid, _exit); it allocates nothing and takes no locks.
    unsafe {
        cmd.pre_exec(move || {
            // The worker dies with molt even if molt is SIGKILLed. The death signal is tied
            // to the thread that forked: molt forks only from runtime threads, which live
            // as long as molt.
            nix::sys::prctl::set_pdeathsig(Signal::SIGKILL)?;
            // If molt died before the line above took effect, no signal will ever come.
            if nix::unistd::getppid() != parent {
                nix::libc::_exit(1);
            }
            // molt ignores SIGXFSZ (see `run::ignore_file_size_signal`), and an ignored
            // signal stays ignored across exec: give the app the default action back.
            nix::sys::signal::signal(Signal::SIGXFSZ, nix::sys::signal::SigHandler::SigDfl)?;
            Ok(())
        });
    }
    let child = cmd.spawn()?;
    let pid = Pid::from_raw(i32::try_from(child.id()).expect("pids fit in i32"));
    // The kernel's OOM killer should pick a worker, which molt replaces, rather than molt.
    // Best effort: a read-only /proc only costs this protection.
    let _ = std::fs::write(format!("/proc/{pid}/oom_score_adj"), "500");
    // The child is reaped by the supervisor's waitpid(-1) loop; dropping the handle does
    // not wait for it.
    drop(child);
    Ok(pid)
}

/// glibc's variable for the most malloc arenas a process makes.
const ARENA_MAX: &str = "MALLOC_ARENA_MAX";

/// The `MALLOC_ARENA_MAX` to add to a worker's environment: `setting` when the environment
/// has none (`current`); a value the app set is its own, and `off` adds nothing.
fn arena_max(
    setting: Option<u32>,
    current: Option<std::ffi::OsString>,
) -> Option<(&'static str, String)> {
    match (setting, current) {
        (Some(n), None) => Some((ARENA_MAX, n.to_string())),
        _ => None,
    }
}

/// `molt plan`'s line on what workers get for `MALLOC_ARENA_MAX`, in this environment.
pub(crate) fn arena_text(setting: Option<u32>) -> String {
    let current = std::env::var_os(ARENA_MAX);
    let why = match (setting, current) {
        (_, Some(own)) => format!("{} (the environment's own)", own.to_string_lossy()),
        (Some(n), None) => format!("{n} (MOLT_MALLOC_ARENA_MAX; the environment sets none)"),
        (None, None) => "unset (MOLT_MALLOC_ARENA_MAX=off)".to_owned(),
    };
    format!("workers  {ARENA_MAX}={why}\n")
}

/// Sends `signal` to a worker's whole process group. A group that is already gone is fine.
fn signal_group(pid: Pid, signal: Signal) {
    match killpg(pid, signal) {
        Ok(()) | Err(Errno::ESRCH) => {}
        Err(err) => crate::observe::event!(
            Warn,
            "signal_failed",
            pid = pid,
            signal = signal,
            error = err
        ),
    }
}

/// A free private port, starting the search at `hint` and skipping `taken`.
fn free_port(hint: u16, taken: &[u16]) -> Option<u16> {
    let len = PORT_RANGE.end - PORT_RANGE.start;
    (0..len)
        .map(|i| PORT_RANGE.start + (hint.wrapping_add(i) % len))
        .filter(|p| !taken.contains(p))
        .find(|&p| TcpListener::bind((Ipv4Addr::LOCALHOST, p)).is_ok())
}

/// Resolves once the worker on `addr` is ready: it accepts a TCP connection or, with a
/// health path, answers a GET with a status below 500. Never resolves for a worker that
/// never gets there; the supervisor applies the boot timeout and aborts this task.
async fn wait_ready(addr: SocketAddr, health_path: Option<String>) {
    loop {
        let attempt = probe(addr, health_path.as_deref());
        if tokio::time::timeout(PROBE_TIMEOUT, attempt).await == Ok(true) {
            return;
        }
        tokio::time::sleep(PROBE_INTERVAL).await;
    }
}

async fn probe(addr: SocketAddr, health_path: Option<&str>) -> bool {
    let Ok(mut stream) = tokio::net::TcpStream::connect(addr).await else {
        return false;
    };
    let Some(path) = health_path else {
        return true;
    };
    let request = format!(
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nUser-Agent: molt-health\r\nConnection: close\r\n\r\n"
    );
    if stream.write_all(request.as_bytes()).await.is_err() {
        return false;
    }
    let mut head = [0u8; 32];
    let mut len = 0;
    while len < 12 {
        match stream.read(&mut head[len..]).await {
            Ok(0) | Err(_) => return false,
            Ok(n) => len += n,
        }
    }
    status_below_500(&head[..len])
}

/// Whether an HTTP status line (`HTTP/1.1 200 OK`) carries a status below 500.
fn status_below_500(head: &[u8]) -> bool {
    let Some(rest) = head.strip_prefix(b"HTTP/1.") else {
        return false;
    };
    rest.get(2..5)
        .and_then(|code| std::str::from_utf8(code).ok())
        .and_then(|code| code.parse::<u16>().ok())
        .is_some_and(|code| (100..500).contains(&code))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn port_is_substituted_in_argv_words_only_as_written() {
        assert_eq!(substitute_port("--port=$PORT", "20001"), "--port=20001");
        assert_eq!(substitute_port("${PORT}", "20001"), "20001");
        assert_eq!(substitute_port("$PORTS", "1"), "1S");
        assert_eq!(substitute_port("plain", "1"), "plain");
    }

    #[test]
    fn one_word_runs_in_a_shell_several_are_exec_d() {
        let one = AppCommand::from_words(vec!["echo $PORT && exit".into()]).expect("a shell");
        assert!(matches!(one, AppCommand::Shell { ref line, .. } if line == "echo $PORT && exit"));
        let several =
            AppCommand::from_words(vec!["sh".into(), "-c".into(), "x".into()]).expect("sh exists");
        assert_eq!(
            several,
            AppCommand::Argv(vec!["sh".into(), "-c".into(), "x".into()])
        );
        assert_eq!(
            AppCommand::from_words(vec![]).err(),
            Some(CommandError::Missing)
        );
        let missing = AppCommand::from_words(vec!["no-such-program-molt".into(), "x".into()]);
        assert_eq!(
            missing.err().map(|e| e.to_string()).as_deref(),
            Some("command not found: no-such-program-molt; check the command and PATH")
        );
    }

    #[test]
    fn arena_max_is_added_only_when_the_environment_has_none() {
        assert_eq!(
            arena_max(Some(2), None),
            Some(("MALLOC_ARENA_MAX", "2".to_owned()))
        );
        assert_eq!(arena_max(Some(2), Some("4".into())), None, "the app's own");
        assert_eq!(arena_max(None, None), None, "off");
    }

    #[test]
    fn health_status_lines() {
        assert!(status_below_500(b"HTTP/1.1 200 OK\r\n"));
        assert!(status_below_500(b"HTTP/1.0 404 Not Found"));
        assert!(!status_below_500(b"HTTP/1.1 503 Service Unavailable"));
        assert!(!status_below_500(b"garbage"));
    }

    #[test]
    fn free_ports_skip_taken_ones() {
        let first = free_port(0, &[]).expect("a free port in the range");
        let second = free_port(0, &[first]).expect("another free port");
        assert_ne!(first, second);
        assert!(PORT_RANGE.contains(&second));
    }
}
