//! Helpers shared by the integration tests: a guard around each process tree a test starts
//! (molt, a dyno, a CNB launch), process inspection through `/proc`, and a small blocking
//! HTTP/1.1 client that leaves the tests in control of every byte on the wire.
//!
//! Everything here uses `std` only. Waits poll against a deadline; nothing sleeps blindly.

// Not every test module uses every helper.
#![allow(dead_code)]

use std::ffi::{OsStr, OsString};
use std::fs;
use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// How often every wait in this module checks its condition.
pub(crate) const POLL: Duration = Duration::from_millis(20);

/// Read and write timeout of the HTTP client, long enough for a 10 MB body on a slow runner
/// yet short enough that a proxy which never answers fails the test instead of hanging it.
pub(crate) const HTTP_TIMEOUT: Duration = Duration::from_secs(60);

/// Environment variable that marks every process a test starts, so that processes left
/// behind (orphaned workers, grandchildren) can be found and killed.
pub(crate) const TAG_VAR: &str = "TEST_MOLT_TAG";

// Signal numbers for `ProcessTree::signal` and `signal_pid`. These values hold on x86_64
// and aarch64 Linux, the only platforms molt runs on.
pub(crate) const SIGHUP: i32 = 1;
pub(crate) const SIGINT: i32 = 2;
pub(crate) const SIGQUIT: i32 = 3;
pub(crate) const SIGKILL: i32 = 9;
pub(crate) const SIGUSR1: i32 = 10;
pub(crate) const SIGUSR2: i32 = 12;
pub(crate) const SIGTERM: i32 = 15;
pub(crate) const SIGCONT: i32 = 18;
pub(crate) const SIGSTOP: i32 = 19;
pub(crate) const SIGTTIN: i32 = 21;
pub(crate) const SIGTTOU: i32 = 22;

// ---------------------------------------------------------------------------------------
// Environment and fixtures
// ---------------------------------------------------------------------------------------

/// A port that was free a moment ago: bind 127.0.0.1:0 and let the OS choose.
pub(crate) fn free_port() -> u16 {
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .expect("the OS always has an ephemeral port on 127.0.0.1 to hand out");
    listener
        .local_addr()
        .expect("a bound listener has a local address")
        .port()
}

/// Absolute path of the Python fixture app.
pub(crate) fn fixture_app() -> PathBuf {
    fixture_dir().join("app.py")
}

/// Absolute path of the Python fixture app's directory (it holds a `Procfile`).
pub(crate) fn fixture_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("test/fixtures/apps/pyapp")
}

/// The shell command that runs the fixture app, for `molt run -- sh -c ...` or a Procfile.
pub(crate) fn python_cmd() -> String {
    format!("python3 {}", shell_quote(&fixture_app().to_string_lossy()))
}

/// `word` quoted for a POSIX shell, left alone when it needs no quoting.
pub(crate) fn shell_quote(word: &str) -> String {
    let safe = !word.is_empty()
        && word
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"/._-+=:,@%".contains(&b));
    if safe {
        word.to_owned()
    } else {
        format!("'{}'", word.replace('\'', r"'\''"))
    }
}

/// Whether end-to-end tests must run rather than skip when a prerequisite (python3,
/// unshare) is missing: CI sets `MOLT_E2E_REQUIRED=1`.
pub(crate) fn e2e_required() -> bool {
    std::env::var("MOLT_E2E_REQUIRED").as_deref() == Ok("1")
}

/// Whether `python3` can be run, which every test that uses the fixture app needs.
pub(crate) fn python3_available() -> bool {
    Command::new("python3")
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|status| status.success())
}

/// The path of `program` on `PATH`, if it is there.
fn which(program: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(program))
        .find(|candidate| {
            fs::metadata(candidate)
                .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        })
}

/// Whether every tool in `tools` is on PATH. When one is missing the test skips with a
/// note, or fails when `MOLT_E2E_REQUIRED=1`, as CI sets after installing them.
pub(crate) fn tools_present(tools: &[&str]) -> bool {
    let missing: Vec<&str> = tools
        .iter()
        .copied()
        .filter(|tool| which(tool).is_none())
        .collect();
    if missing.is_empty() {
        return true;
    }
    assert!(
        !e2e_required(),
        "MOLT_E2E_REQUIRED=1 but {missing:?} not on PATH: install them (.ci/run does)"
    );
    eprintln!("skipped: {missing:?} not on PATH (MOLT_E2E_REQUIRED=1 makes this a failure)");
    false
}

/// A string that no other test, in this run or a concurrent one, will produce.
pub(crate) fn unique_tag() -> String {
    static COUNTER: AtomicUsize = AtomicUsize::new(0);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |elapsed| elapsed.subsec_nanos());
    format!(
        "{}-{}-{nanos}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    )
}

/// A path in the temp dir that nothing else uses and that does not exist yet, for marker
/// files the fixture app writes (`/sleep?mark=`) or waits for (`/stream?wait=`). The file
/// name holds `label`, so a leftover file says which test made it.
pub(crate) fn temp_path(label: &str) -> PathBuf {
    std::env::temp_dir().join(format!("molt-test-{}-{label}", unique_tag()))
}

// ---------------------------------------------------------------------------------------
// Waiting
// ---------------------------------------------------------------------------------------

/// Polls `condition` every 20 ms until it holds (true) or `timeout` passes (false). The
/// condition is checked once more at the deadline, so a zero timeout still checks once.
pub(crate) fn wait_until(timeout: Duration, mut condition: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if condition() {
            return true;
        }
        let now = Instant::now();
        if now >= deadline {
            return false;
        }
        thread::sleep(POLL.min(deadline - now));
    }
}

/// Whether something accepts TCP connections on 127.0.0.1:`port` right now.
pub(crate) fn port_open(port: u16) -> bool {
    let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok()
}

// ---------------------------------------------------------------------------------------
// Starting molt
// ---------------------------------------------------------------------------------------

/// Settings for one `molt` run; [`MoltBuilder::spawn`] starts it.
#[derive(Debug, Default)]
pub(crate) struct MoltBuilder {
    args: Vec<OsString>,
    envs: Vec<(OsString, OsString)>,
    cwd: Option<PathBuf>,
    wrap: Vec<OsString>,
}

impl MoltBuilder {
    /// Sets an environment variable for molt (and, unless molt filters it, its workers).
    #[must_use]
    pub(crate) fn env(mut self, key: impl AsRef<OsStr>, value: impl AsRef<OsStr>) -> Self {
        self.envs
            .push((key.as_ref().to_owned(), value.as_ref().to_owned()));
        self
    }

    /// Appends one argument to molt's command line.
    #[must_use]
    pub(crate) fn arg(mut self, arg: impl AsRef<OsStr>) -> Self {
        self.args.push(arg.as_ref().to_owned());
        self
    }

    /// Appends arguments to molt's command line.
    #[must_use]
    pub(crate) fn args<I, S>(mut self, args: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        self.args
            .extend(args.into_iter().map(|arg| arg.as_ref().to_owned()));
        self
    }

    /// Runs molt in `dir` instead of the test's working directory.
    #[must_use]
    pub(crate) fn cwd(mut self, dir: impl AsRef<Path>) -> Self {
        self.cwd = Some(dir.as_ref().to_owned());
        self
    }

    /// Runs molt under a wrapper, e.g. `["unshare", "--pid", "--fork", "--mount-proc"]`:
    /// the command becomes `wrapper... <molt> args...`, and [`Molt::pid`] is the wrapper's.
    #[must_use]
    pub(crate) fn wrap<I, S>(mut self, prefix: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        self.wrap = prefix
            .into_iter()
            .map(|arg| arg.as_ref().to_owned())
            .collect();
        self
    }

    /// Starts molt with stdout and stderr captured into [`ProcessTree::log`].
    pub(crate) fn spawn(self) -> Molt {
        let molt = OsStr::new(env!("CARGO_BIN_EXE_molt"));
        let mut command = match self.wrap.split_first() {
            Some((program, prefix)) => {
                let mut command = Command::new(program);
                command.args(prefix).arg(molt);
                command
            }
            None => Command::new(molt),
        };
        command.args(&self.args);

        // Settings leaked from the developer's shell or CI would change what molt does, so
        // a test only ever sees the variables it sets itself.
        for (key, _) in std::env::vars_os() {
            let name = key.to_string_lossy();
            if name.starts_with("MOLT_") || name == "PORT" || name == "WEB_CONCURRENCY" {
                command.env_remove(&key);
            }
        }

        command.envs(self.envs.iter().map(|(key, value)| (key, value)));
        if let Some(dir) = &self.cwd {
            command.current_dir(dir);
        }
        ProcessTree::start(command)
    }
}

/// A running `molt` (under its wrapper, if [`MoltBuilder::wrap`] gave one): the process
/// tree that [`MoltBuilder::spawn`] starts.
pub(crate) type Molt = ProcessTree;

impl Molt {
    pub(crate) fn builder() -> MoltBuilder {
        MoltBuilder::default()
    }
}

// ---------------------------------------------------------------------------------------
// The process guard
// ---------------------------------------------------------------------------------------

/// Longest [`ProcessTree::stop`] waits for the process started to exit after SIGTERM:
/// molt's shutdown timeout is 25 s, but the fixture apps stop at once, so this only bounds
/// a failing test.
const STOP_TIMEOUT: Duration = Duration::from_secs(30);

/// A process tree a test started: molt (see [`Molt`]), a dyno's web process, a CNB
/// launch. Every process in it carries a tag of its own in `TEST_MOLT_TAG`, and its
/// stdout and stderr are captured into [`ProcessTree::log`]. Dropping it kills the
/// process started and every process carrying the tag, so a failing test leaves nothing
/// behind.
pub(crate) struct ProcessTree {
    child: Child,
    port: u16,
    tag: String,
    log: Arc<Mutex<String>>,
    readers: Vec<JoinHandle<()>>,
}

impl ProcessTree {
    /// Starts `command` with the tag set and stdout and stderr captured. `PORT` is a free
    /// port unless `command` sets it; the caller sets (or clears) the rest of the
    /// environment.
    pub(crate) fn start(mut command: Command) -> ProcessTree {
        let given_port = command
            .get_envs()
            .find_map(|(key, value)| if key == "PORT" { value } else { None });
        let port = if let Some(value) = given_port {
            // A test that passes a PORT molt cannot parse gets 0 back from `port()`.
            value.to_str().and_then(|v| v.parse().ok()).unwrap_or(0)
        } else {
            let port = free_port();
            command.env("PORT", port.to_string());
            port
        };
        let tag = unique_tag();
        command
            .env(TAG_VAR, &tag)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());

        let mut child = command
            .spawn()
            .unwrap_or_else(|error| panic!("cannot start {command:?}: {error}"));
        // The program's file name labels the lines the test's stderr echoes.
        let program = command.get_program();
        let name = Path::new(program).file_name().unwrap_or(program);
        let name = name.to_string_lossy();
        let pid = child.id();
        let log = Arc::new(Mutex::new(String::new()));
        let stdout = child.stdout.take().expect("stdout was set to piped");
        let stderr = child.stderr.take().expect("stderr was set to piped");
        let readers = vec![
            copy_lines(stdout, format!("[{name} {pid} out]"), Arc::clone(&log)),
            copy_lines(stderr, format!("[{name} {pid} err]"), Arc::clone(&log)),
        ];
        ProcessTree {
            child,
            port,
            tag,
            log,
            readers,
        }
    }

    /// The port in the process's `PORT`.
    pub(crate) fn port(&self) -> u16 {
        self.port
    }

    /// Pid of the process started: molt, or the wrapper given to [`MoltBuilder::wrap`], or
    /// the dyno's shell.
    pub(crate) fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The value of `TEST_MOLT_TAG` that every process in the tree carries.
    pub(crate) fn tag(&self) -> &str {
        &self.tag
    }

    /// Everything the tree wrote so far, stdout and stderr interleaved line by line.
    pub(crate) fn log(&self) -> String {
        self.log
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// A handle on the log that other threads can hold, e.g. to stop a load loop once
    /// the log shows enough events.
    pub(crate) fn log_handle(&self) -> LogHandle {
        LogHandle {
            log: Arc::clone(&self.log),
            since: Instant::now(),
        }
    }

    /// Waits until the log contains `needle`; false at once when the log can grow no more
    /// (every process holding the output pipes has exited).
    pub(crate) fn wait_for_log(&self, needle: &str, timeout: Duration) -> bool {
        wait_until(timeout, || {
            self.log().contains(needle) || self.readers.iter().all(JoinHandle::is_finished)
        });
        self.log().contains(needle)
    }

    /// How many times `needle` occurs in the log so far.
    pub(crate) fn count_log(&self, needle: &str) -> usize {
        self.log().matches(needle).count()
    }

    /// Waits until the port accepts connections; false at once if the process exits.
    pub(crate) fn wait_for_port(&mut self, timeout: Duration) -> bool {
        let port = self.port;
        wait_until(timeout, || port_open(port) || !self.is_running()) && port_open(port)
    }

    /// Whether the process started has not exited yet.
    pub(crate) fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// Sends signal `sig` to the process started.
    pub(crate) fn signal(&self, sig: i32) {
        signal_pid(self.pid(), sig);
    }

    /// Waits for the process started to exit and returns its status, or `None` on timeout.
    /// Once it has exited, also waits (briefly) until its output is all in the log.
    pub(crate) fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let mut status = None;
        wait_until(timeout, || {
            status = self.child.try_wait().ok().flatten();
            status.is_some()
        });
        if status.is_some() {
            // The pipes reach end of file once every holder is gone; a leftover worker could
            // keep them open, so this wait is bounded.
            wait_until(Duration::from_secs(2), || {
                self.readers.iter().all(JoinHandle::is_finished)
            });
        }
        status
    }

    /// Stops the tree as Heroku stops a dyno (`every_process`: SIGTERM to every process
    /// carrying the tag) or as `docker stop` stops a container (SIGTERM to the process
    /// started, PID 1 there), and returns how the process started exited. Asserts that it
    /// exits and that no process is left.
    pub(crate) fn stop(&mut self, every_process: bool) -> ExitStatus {
        let pids = if every_process {
            self.tagged_pids()
        } else {
            vec![self.pid()]
        };
        for pid in pids {
            signal_pid(pid, SIGTERM);
        }
        let status = self
            .wait_exit(STOP_TIMEOUT)
            .unwrap_or_else(|| panic!("still running after SIGTERM:\n{}", self.log()));
        assert!(
            wait_until(Duration::from_secs(5), || self.tagged_pids().is_empty()),
            "processes left after SIGTERM: {:?}\n{}",
            self.tagged_pids(),
            self.log()
        );
        status
    }

    /// Pids of live processes carrying the tag: the process started (molt or its wrapper),
    /// and its children and theirs, such as molt's workers.
    pub(crate) fn tagged_pids(&self) -> Vec<u32> {
        pids_with_tag(&self.tag)
    }
}

impl Drop for ProcessTree {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = self.child.kill();
        }
        let _ = self.child.wait();
        // Workers whose parent died are reparented and keep running; find them by tag. Kill
        // repeatedly, since a dying worker's own children may still be forking.
        let tag = self.tag.clone();
        wait_until(Duration::from_secs(5), || {
            let pids = pids_with_tag(&tag);
            for &pid in &pids {
                signal_pid(pid, SIGKILL);
            }
            pids.is_empty()
        });
    }
}

/// Copies each line of `stream` into `log`, and echoes it to the test's stderr, which the
/// test harness shows only when the test fails.
fn copy_lines(
    stream: impl Read + Send + 'static,
    prefix: String,
    log: Arc<Mutex<String>>,
) -> JoinHandle<()> {
    thread::spawn(move || {
        let mut reader = BufReader::new(stream);
        let mut line = Vec::new();
        loop {
            line.clear();
            match reader.read_until(b'\n', &mut line) {
                Ok(0) | Err(_) => return,
                Ok(_) => {
                    let text = String::from_utf8_lossy(&line);
                    let text = text.trim_end_matches(['\n', '\r']);
                    eprintln!("{prefix} {text}");
                    let mut log = log.lock().unwrap_or_else(PoisonError::into_inner);
                    log.push_str(text);
                    log.push('\n');
                }
            }
        }
    })
}

/// A shareable view of a [`ProcessTree`]'s log.
pub(crate) struct LogHandle {
    log: Arc<Mutex<String>>,
    since: Instant,
}

impl LogHandle {
    /// How many times `needle` occurs in the log so far.
    pub(crate) fn count(&self, needle: &str) -> usize {
        self.log
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .matches(needle)
            .count()
    }

    /// Time since the handle was taken.
    pub(crate) fn elapsed(&self) -> Duration {
        self.since.elapsed()
    }
}

/// Sends signal `sig` to `pid` with the `kill` command, which keeps these tests free of
/// `unsafe`. Errors (such as a process that already exited) are ignored.
pub(crate) fn signal_pid(pid: u32, sig: i32) {
    let _ = Command::new("kill")
        .arg(format!("-{sig}"))
        .arg(pid.to_string())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
}

// ---------------------------------------------------------------------------------------
// Processes, through /proc
// ---------------------------------------------------------------------------------------

/// Pids of every numbered entry in `/proc`.
pub(crate) fn all_pids() -> Vec<u32> {
    let Ok(entries) = fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .filter_map(Result::ok)
        .filter_map(|entry| entry.file_name().to_str()?.parse().ok())
        .collect()
}

/// Live (not zombie) processes whose environment holds `TEST_MOLT_TAG=<tag>`. Processes
/// that vanish or cannot be read during the scan are skipped.
pub(crate) fn pids_with_tag(tag: &str) -> Vec<u32> {
    let needle = format!("{TAG_VAR}={tag}").into_bytes();
    all_pids()
        .into_iter()
        .filter(|&pid| {
            // A zombie has already exited (its environ reads empty anyway); only its parent
            // can reap it, and killing it is impossible.
            if matches!(process_state(pid), None | Some('Z')) {
                return false;
            }
            fs::read(format!("/proc/{pid}/environ"))
                .is_ok_and(|environ| environ.split(|&b| b == 0).any(|var| var == needle))
        })
        .collect()
}

/// The fields of `/proc/<pid>/stat` after the command name: state, ppid, pgrp, ...
/// The name is in parentheses and may itself hold spaces and `)`, so the split is at the
/// last `)`.
pub(crate) fn stat_fields(pid: u32) -> Option<Vec<String>> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &stat[stat.rfind(')')? + 1..];
    Some(rest.split_whitespace().map(str::to_owned).collect())
}

/// The state letter of a process (`R`, `S`, `D`, `Z`, `T`, ...), `None` if it is gone.
pub(crate) fn process_state(pid: u32) -> Option<char> {
    stat_fields(pid)?.first()?.chars().next()
}

/// The parent of a process, `None` if it is gone.
pub(crate) fn parent_of(pid: u32) -> Option<u32> {
    stat_fields(pid)?.get(1)?.parse().ok()
}

/// The process group of a process, `None` if it is gone.
pub(crate) fn process_group_of(pid: u32) -> Option<u32> {
    stat_fields(pid)?.get(2)?.parse().ok()
}

/// Whether a process exists and has not exited (a zombie counts as exited).
pub(crate) fn is_alive(pid: u32) -> bool {
    !matches!(process_state(pid), None | Some('Z'))
}

/// Direct children of `pid`, zombies included.
pub(crate) fn children_of(pid: u32) -> Vec<u32> {
    all_pids()
        .into_iter()
        .filter(|&child| parent_of(child) == Some(pid))
        .collect()
}

/// Every descendant of `pid`, breadth first.
pub(crate) fn descendants_of(pid: u32) -> Vec<u32> {
    let mut found = Vec::new();
    let mut next = vec![pid];
    while let Some(parent) = next.pop() {
        for child in children_of(parent) {
            found.push(child);
            next.push(child);
        }
    }
    found
}

// ---------------------------------------------------------------------------------------
// HTTP/1.1 client
// ---------------------------------------------------------------------------------------

/// One HTTP response, with the body already decoded from chunked framing.
#[derive(Debug, Clone)]
pub(crate) struct Response {
    pub(crate) status: u16,
    pub(crate) headers: Vec<(String, String)>,
    pub(crate) body: Vec<u8>,
}

impl Response {
    /// The first header called `name`, compared without regard to case.
    pub(crate) fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(key, _)| key.eq_ignore_ascii_case(name))
            .map(|(_, value)| value.as_str())
    }

    /// Every value of header `name`, in order.
    pub(crate) fn header_all(&self, name: &str) -> Vec<&str> {
        self.headers
            .iter()
            .filter(|(key, _)| key.eq_ignore_ascii_case(name))
            .map(|(_, value)| value.as_str())
            .collect()
    }

    /// The body as text, invalid UTF-8 replaced.
    pub(crate) fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// Connects to 127.0.0.1:`port` with the client's timeouts set.
pub(crate) fn connect(port: u16) -> io::Result<TcpStream> {
    let stream = TcpStream::connect((Ipv4Addr::LOCALHOST, port))?;
    stream.set_read_timeout(Some(HTTP_TIMEOUT))?;
    stream.set_write_timeout(Some(HTTP_TIMEOUT))?;
    // Requests are written whole, so there is nothing to gain from Nagle's algorithm.
    stream.set_nodelay(true)?;
    Ok(stream)
}

/// `GET path` on a fresh connection.
pub(crate) fn get(port: u16, path: &str) -> io::Result<Response> {
    request(port, "GET", path, &[], b"")
}

/// One request on a fresh connection with `Connection: close`, the response read to the
/// end. `Host`, `Connection` and `Content-Length` are added unless `headers` has them; a
/// caller that sends `Transfer-Encoding` must frame `body` itself.
pub(crate) fn request(
    port: u16,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> io::Result<Response> {
    let mut stream = connect(port)?;
    let head = request_head(method, path, headers, body, true);
    stream.write_all(&head)?;
    stream.write_all(body)?;
    stream.flush()?;
    read_response(&mut BufReader::new(stream), method)
}

/// Sends `bytes` as they are and returns everything the server writes until it closes the
/// connection, for tests of malformed or unusual requests.
pub(crate) fn raw_exchange(port: u16, bytes: &[u8]) -> io::Result<Vec<u8>> {
    let mut stream = connect(port)?;
    stream.write_all(bytes)?;
    let mut reply = Vec::new();
    stream.read_to_end(&mut reply)?;
    Ok(reply)
}

/// The request line and headers of a request, ending with the blank line.
fn request_head(
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
    close: bool,
) -> Vec<u8> {
    let has = |name: &str| {
        headers
            .iter()
            .any(|(key, _)| key.eq_ignore_ascii_case(name))
    };
    let mut head = Vec::new();
    let mut line = |text: &str| {
        head.extend_from_slice(text.as_bytes());
        head.extend_from_slice(b"\r\n");
    };
    line(&format!("{method} {path} HTTP/1.1"));
    if !has("host") {
        line("Host: localhost");
    }
    if close && !has("connection") {
        line("Connection: close");
    }
    let wants_length = !body.is_empty() || matches!(method, "POST" | "PUT");
    if wants_length && !has("content-length") && !has("transfer-encoding") {
        line(&format!("Content-Length: {}", body.len()));
    }
    for (name, value) in headers {
        line(&format!("{name}: {value}"));
    }
    line("");
    head
}

/// Reads one response to a request made with `method`. Interim `1xx` responses (such as
/// `100 Continue`) are skipped, except `101 Switching Protocols`, which ends the HTTP part
/// of the connection. The body is framed by `Transfer-Encoding: chunked` (decoded), else
/// `Content-Length`, else the end of the connection.
pub(crate) fn read_response(reader: &mut impl BufRead, method: &str) -> io::Result<Response> {
    loop {
        let status_line = read_line(reader)?;
        let status = parse_status_line(&status_line)?;
        let headers = read_headers(reader)?;
        if (100..200).contains(&status) && status != 101 {
            continue;
        }
        let mut response = Response {
            status,
            headers,
            body: Vec::new(),
        };
        let bodyless =
            method.eq_ignore_ascii_case("HEAD") || status == 101 || status == 204 || status == 304;
        if bodyless {
            return Ok(response);
        }
        let chunked = response
            .header("transfer-encoding")
            .is_some_and(|te| te.to_ascii_lowercase().contains("chunked"));
        if chunked {
            response.body = read_chunked_body(reader)?;
        } else if let Some(length) = response.header("content-length") {
            let length: usize = length
                .trim()
                .parse()
                .map_err(|_| invalid(format!("bad Content-Length {length:?}")))?;
            response.body = vec![0; length];
            reader.read_exact(&mut response.body)?;
        } else {
            reader.read_to_end(&mut response.body)?;
        }
        return Ok(response);
    }
}

/// Decodes a chunked body, trailers included (and dropped).
pub(crate) fn read_chunked_body(reader: &mut impl BufRead) -> io::Result<Vec<u8>> {
    let mut body = Vec::new();
    while let Some(chunk) = read_chunk(reader)? {
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}

/// Reads the next chunk of a chunked body: `None` at the last (empty) chunk, whose
/// trailers it consumes. Lets a test read a stream piece by piece, e.g. from
/// [`Conn::reader`] after [`Conn::read_head`].
pub(crate) fn read_chunk(reader: &mut impl BufRead) -> io::Result<Option<Vec<u8>>> {
    let size_line = read_line(reader)?;
    let size = size_line.split(';').next().unwrap_or_default().trim();
    let size = usize::from_str_radix(size, 16)
        .map_err(|_| invalid(format!("bad chunk size line {size_line:?}")))?;
    if size == 0 {
        // Trailers, if any, end with an empty line.
        while !read_line(reader)?.is_empty() {}
        return Ok(None);
    }
    let mut chunk = vec![0; size];
    reader.read_exact(&mut chunk)?;
    if !read_line(reader)?.is_empty() {
        return Err(invalid("chunk data not followed by CRLF".to_owned()));
    }
    Ok(Some(chunk))
}

/// The status code of a status line such as `HTTP/1.1 200 OK`.
fn parse_status_line(line: &str) -> io::Result<u16> {
    let mut parts = line.splitn(3, ' ');
    let version = parts.next().unwrap_or_default();
    let code = parts.next().unwrap_or_default();
    if !version.starts_with("HTTP/") {
        return Err(invalid(format!("bad status line {line:?}")));
    }
    code.parse()
        .map_err(|_| invalid(format!("bad status line {line:?}")))
}

/// Header lines up to the blank line, names and values trimmed.
fn read_headers(reader: &mut impl BufRead) -> io::Result<Vec<(String, String)>> {
    let mut headers = Vec::new();
    loop {
        let line = read_line(reader)?;
        if line.is_empty() {
            return Ok(headers);
        }
        let (name, value) = line
            .split_once(':')
            .ok_or_else(|| invalid(format!("bad header line {line:?}")))?;
        headers.push((name.trim().to_owned(), value.trim().to_owned()));
    }
}

/// One line without its CRLF (or LF); end of file before a newline is an error.
fn read_line(reader: &mut impl BufRead) -> io::Result<String> {
    let mut line = Vec::new();
    reader.read_until(b'\n', &mut line)?;
    if line.last() != Some(&b'\n') {
        return Err(io::Error::new(
            io::ErrorKind::UnexpectedEof,
            format!(
                "connection closed mid-line after {:?}",
                String::from_utf8_lossy(&line)
            ),
        ));
    }
    line.pop();
    if line.last() == Some(&b'\r') {
        line.pop();
    }
    String::from_utf8(line).map_err(|error| invalid(format!("line is not UTF-8: {error}")))
}

fn invalid(message: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, message)
}

/// A keep-alive connection on which a test sends several requests, one after the other.
pub(crate) struct Conn {
    reader: BufReader<TcpStream>,
}

impl Conn {
    /// Connects to 127.0.0.1:`port`.
    pub(crate) fn open(port: u16) -> io::Result<Conn> {
        Ok(Conn {
            reader: BufReader::new(connect(port)?),
        })
    }

    /// Sends one request (no `Connection: close`) and reads exactly its response, leaving
    /// the connection open for the next. `Host` and `Content-Length` are added as in
    /// [`request`].
    pub(crate) fn send(
        &mut self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: &[u8],
    ) -> io::Result<Response> {
        self.write_request(method, path, headers, body)?;
        read_response(&mut self.reader, method)
    }

    /// Sends one request without reading the response, e.g. to read it piece by piece with
    /// [`Conn::read_head`] and [`read_chunk`], or to pipeline several.
    pub(crate) fn write_request(
        &mut self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: &[u8],
    ) -> io::Result<()> {
        let head = request_head(method, path, headers, body, false);
        let stream = self.reader.get_mut();
        stream.write_all(&head)?;
        stream.write_all(body)?;
        stream.flush()
    }

    /// Reads one whole response to a request made with `method`.
    pub(crate) fn read_response(&mut self, method: &str) -> io::Result<Response> {
        read_response(&mut self.reader, method)
    }

    /// Reads a status line and headers only, skipping interim `1xx` responses other than
    /// 101, and returns them with an empty body; the body stays unread in [`Conn::reader`].
    pub(crate) fn read_head(&mut self) -> io::Result<Response> {
        loop {
            let status = parse_status_line(&read_line(&mut self.reader)?)?;
            let headers = read_headers(&mut self.reader)?;
            if !(100..200).contains(&status) || status == 101 {
                return Ok(Response {
                    status,
                    headers,
                    body: Vec::new(),
                });
            }
        }
    }

    /// The raw socket, for byte-level writes, timeouts and shutdown. Reading from it skips
    /// whatever [`Conn::reader`] has buffered already; read through `reader()` instead.
    pub(crate) fn stream(&mut self) -> &mut TcpStream {
        self.reader.get_mut()
    }

    /// The buffered reader over the socket, holding any bytes read past the last response.
    pub(crate) fn reader(&mut self) -> &mut BufReader<TcpStream> {
        &mut self.reader
    }

    /// Whether the server has closed the connection: a read returns end of file (rather
    /// than data or a timeout) within `timeout`.
    pub(crate) fn is_closed_by_peer(&mut self, timeout: Duration) -> bool {
        if !self.reader.buffer().is_empty() {
            return false;
        }
        let stream = self.reader.get_mut();
        if stream.set_read_timeout(Some(timeout)).is_err() {
            return true;
        }
        let mut byte = [0u8; 1];
        let closed = match stream.peek(&mut byte) {
            Ok(0) => true,
            Ok(_) => false,
            Err(error) => !matches!(
                error.kind(),
                io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
            ),
        };
        let _ = stream.set_read_timeout(Some(HTTP_TIMEOUT));
        closed
    }
}

/// What `molt status` with `extra` arguments prints, over the control socket at `socket`.
pub(crate) fn molt_status(socket: &Path, extra: &[&str]) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_molt"))
        .arg("status")
        .args(extra)
        .env("MOLT_CONTROL_SOCKET", socket)
        .output()
        .expect("molt status runs");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("molt status prints UTF-8")
}

/// `molt status --json` over the control socket at `socket`.
pub(crate) fn status_json(socket: &Path) -> serde_json::Value {
    serde_json::from_str(&molt_status(socket, &["--json"])).expect("molt status --json prints JSON")
}

/// A minimal Rails app in `dir` (`rails new --minimal`, nothing bundled, no database, no
/// assets), made offline from Debian's gems; the caller writes its Gemfile and routes.
pub(crate) fn rails_new(dir: &Path) {
    let new = Command::new("rails")
        .args([
            "new",
            ".",
            "--minimal",
            "--skip-bundle",
            "--skip-git",
            "--skip-test",
            "--skip-system-test",
            "--skip-active-record",
            "--skip-javascript",
            "--skip-sprockets",
        ])
        .current_dir(dir)
        .output()
        .expect("rails new runs");
    assert!(
        new.status.success(),
        "{}",
        String::from_utf8_lossy(&new.stderr)
    );
}
