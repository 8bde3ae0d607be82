//! The Heroku classic buildpack, end to end: the `bin/*` scripts of a copy of the buildpack
//! run against a copy of a fixture app, as Heroku's build runs them (detect, compile with a
//! cache and an env dir, release), then the app boots as a dyno boots it (`HOME` at the
//! app, `.profile.d/*.sh` sourced, the Procfile's web line run with `bash -c` and a
//! `PORT`), serves requests through molt, and stops on SIGTERM.
//!
//! Also the ways a build obtains the binary (packaged, cached, downloaded from a loopback
//! server and verified, built with cargo) and every failure message, compared whole.
//!
//! The helpers here are shared with `cnb.rs`.

use std::collections::HashMap;
use std::ffi::OsStr;
use std::fmt::Write as _;
use std::fs;
use std::io::{BufRead, BufReader, Write};
use std::net::{Ipv4Addr, TcpListener, TcpStream};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Output, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::thread::{self, JoinHandle};
use std::time::Duration;

use sha2::{Digest, Sha256};

use crate::support::{get, tools_present, unique_tag, wait_until, ProcessTree};

/// The buildpack's version: the crate's, which `buildpack.toml` must match.
pub(crate) const VERSION: &str = env!("CARGO_PKG_VERSION");

/// Longest a fixture app may take to become ready under molt (Unicorn loads Rack).
pub(crate) const BOOT_TIMEOUT: Duration = Duration::from_secs(30);

// ---------------------------------------------------------------------------------------
// Directories
// ---------------------------------------------------------------------------------------

/// A directory that nothing else uses, removed with everything in it on drop.
pub(crate) struct TempDir(PathBuf);

impl TempDir {
    pub(crate) fn new(label: &str) -> TempDir {
        let path = std::env::temp_dir().join(format!("molt-bp-{}-{label}", unique_tag()));
        fs::create_dir_all(&path).expect("the temp dir is writable");
        TempDir(path)
    }

    pub(crate) fn path(&self) -> &Path {
        &self.0
    }

    pub(crate) fn join(&self, part: impl AsRef<Path>) -> PathBuf {
        self.0.join(part)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

/// The repository's root, where the buildpack's files are.
pub(crate) fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// Copies the directory `from` into `to` (created), files with their modes.
pub(crate) fn copy_dir(from: &Path, to: &Path) {
    fs::create_dir_all(to).expect("the destination is writable");
    for entry in fs::read_dir(from).unwrap_or_else(|e| panic!("reading {}: {e}", from.display())) {
        let entry = entry.expect("a directory entry can be read");
        let target = to.join(entry.file_name());
        if entry.file_type().expect("an entry has a type").is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            fs::copy(entry.path(), &target)
                .unwrap_or_else(|e| panic!("copying {}: {e}", entry.path().display()));
        }
    }
}

/// Whether a copy of the buildpack carries `bin/molt`, as `make package` makes it.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum Packaged {
    /// `bin/molt` is the molt binary under test.
    Yes,
    /// No `bin/molt`: the scripts must obtain one.
    No,
}

/// A copy of the buildpack as a platform sees it: `bin/`, `buildpack.toml`,
/// `package.toml`, `checksums.txt` and `Cargo.toml`.
pub(crate) fn buildpack(packaged: Packaged) -> TempDir {
    let dir = TempDir::new("buildpack");
    copy_dir(&repo().join("bin"), &dir.join("bin"));
    for file in [
        "buildpack.toml",
        "package.toml",
        "checksums.txt",
        "Cargo.toml",
    ] {
        fs::copy(repo().join(file), dir.join(file)).expect("the buildpack's files exist");
    }
    // A `make package` run in the work tree may have left a bin/molt, and a release lists
    // its archives in checksums.txt; the copy must be exactly what the test asks for, so
    // it keeps only the file's header (tests add lines with `list_checksum`).
    let _ = fs::remove_file(dir.join("bin/molt"));
    let checksums = fs::read_to_string(dir.join("checksums.txt")).expect("copied");
    let header: String = checksums
        .split_inclusive('\n')
        .filter(|line| line.starts_with('#'))
        .collect();
    fs::write(dir.join("checksums.txt"), header).expect("writable");
    if packaged == Packaged::Yes {
        fs::copy(molt_binary(), dir.join("bin/molt")).expect("the molt binary can be copied");
    }
    dir
}

/// The molt binary under test.
pub(crate) fn molt_binary() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_molt"))
}

/// A copy of the fixture app `test/fixtures/apps/<name>`.
pub(crate) fn app(name: &str) -> TempDir {
    let dir = TempDir::new(name);
    copy_dir(&repo().join("test/fixtures/apps").join(name), dir.path());
    dir
}

// ---------------------------------------------------------------------------------------
// Tools
// ---------------------------------------------------------------------------------------

/// PATH without the directories that hold `cargo`, so that a build cannot fall back to
/// building from source.
pub(crate) fn path_without_cargo() -> String {
    let path = std::env::var_os("PATH").unwrap_or_default();
    let dirs: Vec<PathBuf> = std::env::split_paths(&path)
        .filter(|dir| !dir.join("cargo").exists())
        .collect();
    std::env::join_paths(dirs)
        .expect("directories from PATH can be joined again")
        .to_string_lossy()
        .into_owned()
}

/// The sha256 of `bytes`, in lowercase hex.
pub(crate) fn sha256_hex(bytes: &[u8]) -> String {
    Sha256::digest(bytes)
        .iter()
        .fold(String::new(), |mut hex, b| {
            write!(hex, "{b:02x}").expect("writing to a String cannot fail");
            hex
        })
}

// ---------------------------------------------------------------------------------------
// Build phases
// ---------------------------------------------------------------------------------------

/// What a phase script printed, and how it ended.
pub(crate) struct Phase {
    pub(crate) status: ExitStatus,
    pub(crate) stdout: String,
    pub(crate) stderr: String,
}

impl Phase {
    fn from(output: &Output) -> Phase {
        let phase = Phase {
            status: output.status,
            stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
        };
        // Shown only when the test fails.
        eprintln!(
            "[phase {}]\n[stdout]\n{}[stderr]\n{}",
            phase.status, phase.stdout, phase.stderr
        );
        phase
    }

    /// Asserts that the phase succeeded, showing its output if not.
    pub(crate) fn assert_success(&self) -> &Phase {
        assert!(
            self.status.success(),
            "phase failed with {}:\n{}{}",
            self.status,
            self.stdout,
            self.stderr
        );
        self
    }
}

/// A phase script of a buildpack copy, run as Heroku's build runs it: a clean environment
/// with `PATH` (or `path`), `STACK` and `SOURCE_VERSION`; config vars only in the env dir.
pub(crate) struct Script {
    command: Command,
}

impl Script {
    /// The script with Heroku's build variables.
    pub(crate) fn new(buildpack: &Path, name: &str) -> Script {
        Script::clean(buildpack, name)
            .env("STACK", "heroku-24")
            .env("SOURCE_VERSION", "0123456789abcdef")
    }

    /// The script with only `PATH` (and `TMPDIR`, if set) in its environment.
    pub(crate) fn clean(buildpack: &Path, name: &str) -> Script {
        let mut command = Command::new(buildpack.join("bin").join(name));
        command
            .env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .stdin(Stdio::null());
        if let Some(tmp) = std::env::var_os("TMPDIR") {
            command.env("TMPDIR", tmp);
        }
        Script { command }
    }

    #[must_use]
    pub(crate) fn arg(mut self, arg: impl AsRef<OsStr>) -> Script {
        self.command.arg(arg);
        self
    }

    #[must_use]
    pub(crate) fn env(mut self, key: &str, value: impl AsRef<OsStr>) -> Script {
        self.command.env(key, value);
        self
    }

    #[must_use]
    pub(crate) fn cwd(mut self, dir: &Path) -> Script {
        self.command.current_dir(dir);
        self
    }

    pub(crate) fn run(mut self) -> Phase {
        Phase::from(
            &self
                .command
                .output()
                .unwrap_or_else(|e| panic!("cannot run {:?}: {e}", self.command)),
        )
    }
}

/// A Heroku build: an app, a cache dir and an env dir, built by one buildpack copy.
struct Build {
    buildpack: TempDir,
    app: TempDir,
    cache: TempDir,
    env: TempDir,
}

impl Build {
    fn new(packaged: Packaged, fixture: &str) -> Build {
        Build {
            buildpack: buildpack(packaged),
            app: app(fixture),
            cache: TempDir::new("cache"),
            env: TempDir::new("env"),
        }
    }

    /// Sets a config var, as Heroku writes one into the env dir.
    fn config_var(&self, name: &str, value: &str) {
        fs::write(self.env.join(name), value).expect("the env dir is writable");
    }

    fn detect(&self) -> Phase {
        Script::new(self.buildpack.path(), "detect")
            .arg(self.app.path())
            .run()
    }

    fn compile(&self) -> Script {
        Script::new(self.buildpack.path(), "compile")
            .arg(self.app.path())
            .arg(self.cache.path())
            .arg(self.env.path())
    }

    fn release(&self) -> Phase {
        Script::new(self.buildpack.path(), "release")
            .arg(self.app.path())
            .run()
    }

    fn read(&self, file: &str) -> String {
        fs::read_to_string(self.app.join(file)).unwrap_or_else(|e| panic!("reading {file}: {e}"))
    }
}

/// The first lines of every successful compile that used the packaged binary.
fn packaged_headline() -> String {
    format!("-----> molt {VERSION}\n       Binary: packaged with the buildpack\n")
}

// ---------------------------------------------------------------------------------------
// A dyno
// ---------------------------------------------------------------------------------------

/// What a dyno does before it runs a process: sources every `.profile.d/*.sh` (after the
/// config vars are set, in the app directory, which is `HOME`), then runs the command with
/// bash, as Heroku runs Procfile lines.
const DYNO_BOOT: &str = r#"cd "$HOME" || exit 1
for f in "$HOME"/.profile.d/*.sh; do [ -r "$f" ] && . "$f"; done
exec bash -c "$DYNO_COMMAND""#;

/// Boots the Procfile's web process of a built app as a dyno does.
fn boot_dyno(app: &Path) -> ProcessTree {
    boot_dyno_with(app, &[])
}

/// Boots it with config vars set.
fn boot_dyno_with(app: &Path, config_vars: &[(&str, &str)]) -> ProcessTree {
    let mut command = Command::new("bash");
    command
        .arg("-c")
        .arg(DYNO_BOOT)
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("HOME", app)
        .env("DYNO", "web.1")
        .env("DYNO_COMMAND", procfile_web(app))
        .envs(config_vars.iter().copied())
        .current_dir(app);
    ProcessTree::start(command)
}

/// The command of the Procfile's (last) web line, read independently of molt's parser.
fn procfile_web(app: &Path) -> String {
    let text = fs::read_to_string(app.join("Procfile")).expect("the app has a Procfile");
    text.lines()
        .rev()
        .filter_map(|line| line.trim_end_matches('\r').split_once(':'))
        .find(|(name, _)| name.trim() == "web")
        .map(|(_, command)| command.trim_start().to_owned())
        .expect("the Procfile has a web line")
}

// ---------------------------------------------------------------------------------------
// A release server
// ---------------------------------------------------------------------------------------

/// An HTTP/1.1 file server on a loopback port, standing in for the release page. It serves
/// `files` by path and 404 for anything else, and counts requests. Dropping it stops it.
pub(crate) struct ReleaseServer {
    port: u16,
    requests: Arc<AtomicUsize>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl ReleaseServer {
    pub(crate) fn start(files: HashMap<String, Vec<u8>>) -> ReleaseServer {
        let listener =
            TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).expect("a loopback port can be bound");
        let port = listener.local_addr().expect("bound").port();
        let requests = Arc::new(AtomicUsize::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let (requests, stop) = (Arc::clone(&requests), Arc::clone(&stop));
            thread::spawn(move || {
                for stream in listener.incoming() {
                    if stop.load(Ordering::SeqCst) {
                        return;
                    }
                    if let Ok(stream) = stream {
                        requests.fetch_add(1, Ordering::SeqCst);
                        let _ = serve_one(stream, &files);
                    }
                }
            })
        };
        ReleaseServer {
            port,
            requests,
            stop,
            thread: Some(thread),
        }
    }

    /// The base URL, for `MOLT_BINARY_URL`.
    pub(crate) fn url(&self, dir: &str) -> String {
        format!("http://127.0.0.1:{}/{dir}", self.port)
    }

    pub(crate) fn requests(&self) -> usize {
        self.requests.load(Ordering::SeqCst)
    }
}

impl Drop for ReleaseServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // Wakes the accept loop so that it sees the flag.
        let _ = TcpStream::connect((Ipv4Addr::LOCALHOST, self.port));
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

fn serve_one(stream: TcpStream, files: &HashMap<String, Vec<u8>>) -> std::io::Result<()> {
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    let mut reader = BufReader::new(stream);
    let mut request_line = String::new();
    reader.read_line(&mut request_line)?;
    loop {
        let mut header = String::new();
        if reader.read_line(&mut header)? == 0 || header.trim().is_empty() {
            break;
        }
    }
    let path = request_line.split_whitespace().nth(1).unwrap_or("/");
    let mut stream = reader.into_inner();
    match files.get(path) {
        Some(body) => {
            write!(
                stream,
                "HTTP/1.1 200 OK\r\nContent-Type: application/gzip\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                body.len()
            )?;
            stream.write_all(body)?;
        }
        None => stream.write_all(
            b"HTTP/1.1 404 Not Found\r\nContent-Length: 10\r\nConnection: close\r\n\r\nnot found\n",
        )?,
    }
    stream.flush()
}

/// The Rust target of this machine, as release archives are named.
pub(crate) fn target() -> String {
    format!("{}-unknown-linux-musl", std::env::consts::ARCH)
}

/// The release archive's file name for this machine.
pub(crate) fn archive_name() -> String {
    format!("molt-{VERSION}-{}.tar.gz", target())
}

/// A release archive, `molt` at its top level, made once from the binary under test.
pub(crate) fn release_archive() -> &'static [u8] {
    static ARCHIVE: OnceLock<Vec<u8>> = OnceLock::new();
    ARCHIVE.get_or_init(|| {
        let dir = TempDir::new("archive");
        fs::copy(molt_binary(), dir.join("molt")).expect("the binary can be copied");
        // Fast compression: the debug binary is large and the test only needs the format.
        let status = Command::new("sh")
            .arg("-c")
            .arg("tar -cf - molt | gzip -1 > release.tar.gz")
            .current_dir(dir.path())
            .status()
            .expect("tar and gzip run");
        assert!(status.success(), "tar failed");
        fs::read(dir.join("release.tar.gz")).expect("the archive was written")
    })
}

/// Lists `sha256` for the release archive in a buildpack copy's `checksums.txt`.
pub(crate) fn list_checksum(buildpack: &Path, sha256: &str) {
    let path = buildpack.join("checksums.txt");
    let mut text = fs::read_to_string(&path).expect("checksums.txt exists");
    writeln!(text, "{sha256}  {}", archive_name()).expect("writing to a String cannot fail");
    fs::write(path, text).expect("checksums.txt is writable");
}

// ---------------------------------------------------------------------------------------
// End to end, one fixture app at a time
// ---------------------------------------------------------------------------------------

/// One fixture app and what its build and boot must show.
struct Fixture {
    /// Its directory under `test/fixtures/apps`.
    name: &'static str,
    /// Programs it needs besides molt.
    tools: &'static [&'static str],
    /// The Procfile after compile.
    procfile: &'static str,
    /// What a GET / answers, before the pid.
    greeting: &'static str,
}

/// Builds the fixture as Heroku does, twice, and boots it as a dyno does: the request
/// reaches the app through molt (one process per worker: `WEB_CONCURRENCY=1`), and
/// SIGTERM to every process of the dyno stops them all, molt exiting 0.
fn build_and_boot(fixture: &Fixture) {
    if !tools_present(fixture.tools) {
        return;
    }
    let build = Build::new(Packaged::Yes, fixture.name);
    let original = build.read("Procfile");

    let detect = build.detect();
    detect.assert_success();
    assert_eq!(detect.stdout, "molt\n");

    build.compile().run().assert_success();
    assert_eq!(build.read("Procfile"), fixture.procfile);
    assert_eq!(build.read(".molt/Procfile.orig"), original);
    let profile = build.read(".profile.d/molt.sh");
    assert!(
        profile.contains(r#"export PATH="$HOME/.molt/bin:$PATH""#),
        "{profile}"
    );
    // The build directory is gone by the time the slug runs at /app.
    assert!(
        !profile.contains(&*build.app.path().to_string_lossy()),
        "{profile}"
    );
    let installed = fs::read(build.app.join(".molt/bin/molt")).expect("molt is installed");
    assert!(installed == fs::read(molt_binary()).expect("the binary is readable"));

    // Idempotent: a second compile changes nothing and says so.
    let again = build.compile().run();
    again.assert_success();
    assert!(
        again
            .stdout
            .contains("Procfile: the web process already runs under molt; left as it is"),
        "{}",
        again.stdout
    );
    assert_eq!(build.read("Procfile"), fixture.procfile);
    assert_eq!(build.read(".molt/Procfile.orig"), original);

    let release = build.release();
    release.assert_success();
    assert_eq!(release.stdout, "--- {}\n");

    let mut dyno = boot_dyno(build.app.path());
    assert!(
        dyno.wait_for_log("molt at=ready", BOOT_TIMEOUT),
        "no worker became ready:\n{}",
        dyno.log()
    );
    // The web process is the molt the build installed, found through .profile.d.
    let exe = fs::read_link(format!("/proc/{}/exe", dyno.pid())).expect("the dyno is running");
    assert_eq!(exe, build.app.join(".molt/bin/molt"));
    for _ in 0..3 {
        let response = get(dyno.port(), "/").expect("the app answers through molt");
        assert_eq!(response.status, 200, "{}", dyno.log());
        let text = response.text();
        assert!(text.starts_with(fixture.greeting), "{text}");
        assert!(text.ends_with(" WEB_CONCURRENCY=1\n"), "{text}");
    }
    let status = dyno.stop(true);
    assert!(
        status.success(),
        "molt exited with {status}:\n{}",
        dyno.log()
    );
}

#[test]
fn python_stdlib_app_builds_and_serves_like_a_dyno() {
    if !tools_present(&["python3"]) {
        return;
    }
    // pyapp answers `ok`, without the environment; its own test covers WEB_CONCURRENCY.
    let build = Build::new(Packaged::Yes, "pyapp");
    assert_eq!(build.detect().stdout, "molt\n");
    build.compile().run().assert_success();
    assert_eq!(
        build.read("Procfile"),
        "web: molt run -- 'python3 app.py'\n"
    );
    let mut dyno = boot_dyno(build.app.path());
    assert!(
        dyno.wait_for_log("molt at=ready", BOOT_TIMEOUT),
        "{}",
        dyno.log()
    );
    let response = get(dyno.port(), "/env?name=WEB_CONCURRENCY").expect("the app answers");
    assert_eq!((response.status, response.text().as_str()), (200, "1"));
    assert!(dyno.stop(true).success(), "{}", dyno.log());
}

#[test]
fn ruby_unicorn_app_builds_and_serves_like_a_dyno() {
    build_and_boot(&Fixture {
        name: "ruby-unicorn",
        tools: &["ruby", "unicorn"],
        procfile: "# Unicorn, as Heroku's guide has it; ${RACK_ENV:-production} must reach each worker unexpanded.\n\
                   web: molt run -- 'unicorn -c config/unicorn.rb -E ${RACK_ENV:-production}'\n\
                   console: irb\n",
        greeting: "hello from unicorn pid=",
    });
}

#[test]
fn python_gunicorn_app_builds_and_serves_like_a_dyno() {
    build_and_boot(&Fixture {
        name: "python-gunicorn",
        tools: &["gunicorn"],
        procfile: "web: molt run -- 'gunicorn --bind 0.0.0.0:$PORT --access-logfile - \
                   --access-logformat '\\''gunicorn %(s)s \"%(r)s\"'\\'' app:app'\n\
                   \n\
                   worker: python3 -c \"print('no worker')\"\n",
        greeting: "hello from gunicorn pid=",
    });
}

#[test]
fn node_app_builds_and_serves_like_a_dyno() {
    build_and_boot(&Fixture {
        name: "node",
        tools: &["node"],
        // CRLF line endings stay as they were, on every line.
        procfile: "web: molt run -- 'node server.js'\r\nrelease: node -e \"console.log(1)\"\r\n",
        greeting: "hello from node pid=",
    });
}

// ---------------------------------------------------------------------------------------
// Apps with no Procfile: the language buildpack's default web process, under molt
// ---------------------------------------------------------------------------------------

/// A default web process and what its build and boot must show.
struct DefaultWeb {
    /// The buildpack whose default it is, and why, as compile says it.
    because: String,
    /// The command taken.
    command: &'static str,
    /// Config vars of the dyno (Heroku's Ruby buildpack sets `RACK_ENV` and `RAILS_ENV`).
    config_vars: &'static [(&'static str, &'static str)],
    /// What a GET / answers, at its start.
    greeting: &'static str,
    /// Workers that must become ready.
    workers: usize,
}

/// Builds `build`'s app, which has no Procfile: detect passes, compile says which default
/// it took and why, writes it into the Procfile under molt, and the dyno serves through it.
fn default_builds_and_serves(build: &Build, default: &DefaultWeb) {
    assert!(!build.app.join("Procfile").exists());
    assert_eq!(build.detect().assert_success().stdout, "molt\n");
    let compile = build.compile().run();
    compile.assert_success();
    let web = format!(
        "web: molt run -- '{}'",
        default.command.replace('\'', "'\\''")
    );
    let expected = format!(
        "       Procfile: none in the app, so the web process is {}\n\
         \x20      Procfile: written with that web process under molt; add a Procfile to the app to run another\n\
         \x20      {web}\n",
        default.because
    );
    assert!(compile.stdout.contains(&expected), "{}", compile.stdout);
    assert_eq!(build.read("Procfile"), format!("{web}\n"));
    assert!(!build.app.join(".molt/Procfile.orig").exists());

    let mut dyno = boot_dyno_with(build.app.path(), default.config_vars);
    assert!(
        wait_until(BOOT_TIMEOUT, || dyno.count_log("molt at=ready")
            >= default.workers),
        "{} worker(s) did not become ready:\n{}",
        default.workers,
        dyno.log()
    );
    let response = get(dyno.port(), "/").expect("the app answers through molt");
    assert_eq!(response.status, 200, "{}", dyno.log());
    assert!(
        response.text().starts_with(default.greeting),
        "{}",
        response.text()
    );
    assert!(dyno.stop(true).success(), "{}", dyno.log());
}

/// The node fixture with no Procfile and `package_json`.
fn node_app_without_procfile(package_json: &str) -> Build {
    let build = Build::new(Packaged::Yes, "node");
    fs::remove_file(build.app.join("Procfile")).expect("the fixture has a Procfile");
    fs::write(build.app.join("package.json"), package_json).expect("writable");
    build
}

#[test]
fn node_app_without_a_procfile_runs_its_server_js() {
    if !tools_present(&["node"]) {
        return;
    }
    let build = node_app_without_procfile(r#"{"name": "fixture", "scripts": {"test": "true"}}"#);
    default_builds_and_serves(
        &build,
        &DefaultWeb {
            because: "heroku/nodejs's default, because package.json has no start script and \
                      the app has a server.js, which npm start runs"
                .to_owned(),
            command: "node server.js",
            config_vars: &[],
            greeting: "hello from node pid=",
            workers: 1,
        },
    );
}

#[test]
fn node_app_without_a_procfile_runs_its_start_script() {
    if !tools_present(&["node", "npm"]) {
        return;
    }
    let build =
        node_app_without_procfile(r#"{"name": "fixture", "scripts": {"start": "node server.js"}}"#);
    default_builds_and_serves(
        &build,
        &DefaultWeb {
            because: "heroku/nodejs's default, because package.json has a start script".to_owned(),
            command: "npm start",
            config_vars: &[],
            greeting: "hello from node pid=",
            workers: 1,
        },
    );
}

#[test]
fn molt_disable_with_no_procfile_leaves_the_language_buildpacks_default_alone() {
    let build = node_app_without_procfile(r#"{"name": "fixture"}"#);
    build.config_var("MOLT_DISABLE", "1");
    let phase = build.compile().run();
    phase.assert_success();
    assert_eq!(
        phase.stdout,
        packaged_headline()
            + "       Installed .molt/bin/molt; .profile.d/molt.sh puts it on PATH when a dyno starts\n\
               \x20      Procfile: none in the app, so the web process is heroku/nodejs's default, because package.json has no start script and the app has a server.js, which npm start runs\n\
               \x20      Procfile: none written, because MOLT_DISABLE is set: the web process runs without molt\n\
               \x20      To run it under molt: heroku config:unset MOLT_DISABLE, then deploy again\n"
    );
    assert!(!build.app.join("Procfile").exists());
}

/// Writes `gemfile` into the app and resolves it with `bundle lock --local` (the gems
/// Debian installed, no network), as the Ruby buildpack leaves a Gemfile.lock.
pub(crate) fn bundle(app: &Path, gemfile: &str) {
    fs::write(app.join("Gemfile"), gemfile).expect("writable");
    let lock = Command::new("bundle")
        .args(["lock", "--local"])
        .current_dir(app)
        .output()
        .expect("bundle runs");
    assert!(
        lock.status.success(),
        "{}{}",
        String::from_utf8_lossy(&lock.stdout),
        String::from_utf8_lossy(&lock.stderr)
    );
}

#[test]
fn rack_app_without_a_procfile_runs_rackup() {
    if !tools_present(&["ruby", "bundle", "puma"]) {
        return;
    }
    let build = Build::new(Packaged::Yes, "ruby-unicorn");
    fs::remove_file(build.app.join("Procfile")).expect("the fixture has a Procfile");
    bundle(
        build.app.path(),
        "source 'https://rubygems.org'\ngem 'rack'\ngem 'puma'\n",
    );
    default_builds_and_serves(
        &build,
        &DefaultWeb {
            because: "heroku/ruby's default, because Gemfile.lock has rack and the app has a \
                      config.ru (a Rack app)"
                .to_owned(),
            command: "bundle exec rackup config.ru -p ${PORT:-5000}",
            config_vars: &[("RACK_ENV", "production")],
            greeting: "hello from unicorn pid=",
            workers: 1,
        },
    );
}

/// A minimal Rails app (`rails new --minimal`, offline with Debian's gems) on Puma, whose
/// `/` answers its pid, with its Gemfile.lock.
pub(crate) fn rails_app(dir: &Path) {
    crate::support::rails_new(dir);
    fs::write(
        dir.join("config/routes.rb"),
        "Rails.application.routes.draw do\n  get '/', to: proc { [200, { 'content-type' => \
         'text/plain' }, [\"hello from rails pid=#{Process.pid}\\n\"]] }\nend\n",
    )
    .expect("writable");
    bundle(
        dir,
        "source 'https://rubygems.org'\ngem 'rails', '~> 6.1'\ngem 'puma'\n",
    );
}

#[test]
fn rails_app_without_a_procfile_runs_rails_server_one_per_worker() {
    if !tools_present(&["rails", "bundle", "puma"]) {
        return;
    }
    let build = Build::new(Packaged::Yes, "pyapp");
    for file in ["Procfile", "app.py"] {
        fs::remove_file(build.app.join(file)).expect("the fixture has it");
    }
    rails_app(build.app.path());
    let railties = fs::read_to_string(build.app.join("Gemfile.lock"))
        .expect("bundle wrote Gemfile.lock")
        .lines()
        .find_map(|line| line.strip_prefix("    railties ("))
        .map(|version| version.trim_end_matches(')').to_owned())
        .expect("Gemfile.lock resolves railties");
    let because = format!(
        "heroku/ruby's default, because Gemfile.lock has railties {railties} (a Rails app); \
         with a pid file per worker, as several run side by side"
    );
    // Two instances of `rails server` in one directory, as a pool runs them: each needs its
    // own pid file, or the second exits saying a server is already running.
    default_builds_and_serves(
        &build,
        &DefaultWeb {
            because,
            command: "bin/rails server -p ${PORT:-5000} -e $RAILS_ENV -P tmp/pids/server.${PORT:-5000}.pid",
            config_vars: &[
                ("RAILS_ENV", "production"),
                ("SECRET_KEY_BASE", "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef"),
                ("MOLT_MODE", "pool"),
                ("MOLT_MIN_WORKERS", "2"),
            ],
            greeting: "hello from rails pid=",
            workers: 2,
        },
    );
}

// ---------------------------------------------------------------------------------------
// What compile says and does
// ---------------------------------------------------------------------------------------

#[test]
fn compile_says_what_will_run_and_never_shows_the_apps_config_vars() {
    let build = Build::new(Packaged::Yes, "pyapp");
    build.config_var("MOLT_WORKER_MEMORY", "230MB");
    build.config_var("MOLT_WORKERS", "2");
    build.config_var("DATABASE_URL", "postgres://app:hunter2@db.internal/app");
    fs::write(
        build.app.join("molt.toml"),
        "# tuned\nmax_requests = 1000\n",
    )
    .expect("writable");
    let phase = build.compile().run();
    phase.assert_success();
    let expected = packaged_headline()
        + "       Warning: unknown setting MOLT_WORKERS; did you mean MOLT_MIN_WORKERS?\n\
           \x20      Installed .molt/bin/molt; .profile.d/molt.sh puts it on PATH when a dyno starts\n\
           \x20      Procfile: the web process now runs under molt; the original is kept as .molt/Procfile.orig\n\
           \x20      web: molt run -- 'python3 app.py'\n\
           \x20      Settings in force (molt plan, run where the app runs, adds the memory budget and caps derived from them):\n\
           \x20        min_workers         1      default\n\
           \x20        max_workers         auto   default\n\
           \x20        worker_concurrency  auto   default\n\
           \x20        memory_limit        auto   default\n\
           \x20        memory_target       85%    default\n\
           \x20        worker_memory       230MB  config var MOLT_WORKER_MEMORY\n\
           \x20        worker_memory_hard  auto   default\n\
           \x20        max_requests        1000   molt.toml:2\n\
           \x20        worker_processes    1      default\n\
           \x20      To run the web process without molt, with no deploy: heroku config:set MOLT_DISABLE=1\n";
    assert_eq!(phase.stdout, expected);
    assert_eq!(phase.stderr, "");
    assert!(!phase.stdout.contains("hunter2"));
}

#[test]
fn molt_disable_installs_molt_but_leaves_the_procfile_alone() {
    let build = Build::new(Packaged::Yes, "pyapp");
    build.config_var("MOLT_DISABLE", "1");
    let phase = build.compile().run();
    phase.assert_success();
    assert_eq!(
        phase.stdout,
        packaged_headline()
            + "       Installed .molt/bin/molt; .profile.d/molt.sh puts it on PATH when a dyno starts\n\
               \x20      Procfile: left as it is, because MOLT_DISABLE is set: the web process runs without molt\n\
               \x20      web: python3 app.py\n\
               \x20      To run it under molt: heroku config:unset MOLT_DISABLE, then deploy again\n"
    );
    assert_eq!(build.read("Procfile"), "web: python3 app.py\n");
    assert!(build.app.join(".molt/bin/molt").is_file());
    assert!(!build.app.join(".molt/Procfile.orig").exists());
}

#[test]
fn a_web_line_the_app_already_runs_under_molt_is_left_alone() {
    let build = Build::new(Packaged::Yes, "pyapp");
    let procfile = "web: $HOME/.molt/bin/molt run --workers 2 -- 'python3 app.py'\n";
    fs::write(build.app.join("Procfile"), procfile).expect("writable");
    build.compile().run().assert_success();
    assert_eq!(build.read("Procfile"), procfile);
    assert!(!build.app.join(".molt/Procfile.orig").exists());
}

// ---------------------------------------------------------------------------------------
// Failures, each message compared whole
// ---------------------------------------------------------------------------------------

const NO_PROCFILE: &str = " !     molt found no Procfile in the app.
 !
 !     molt runs the app's web process as a pool of workers, and it takes that process from the web line of the Procfile at the root of the app.
 !
 !     Add a file named Procfile at the root of the app with the command that starts its web server on $PORT, for example
 !         web: bundle exec unicorn -p $PORT -c config/unicorn.rb
 !     then deploy again. To build without molt, remove the molt buildpack.
 !
 !     Cause: reading Procfile: No such file or directory (os error 2)
";

#[test]
fn detect_without_a_procfile_fails_saying_what_to_add() {
    let build = Build::new(Packaged::Yes, "pyapp");
    fs::remove_file(build.app.join("Procfile")).expect("the fixture has a Procfile");
    let detect = build.detect();
    assert_eq!(detect.status.code(), Some(1));
    assert_eq!(detect.stdout, "");
    assert_eq!(detect.stderr, NO_PROCFILE);
    // compile, run without detect (as when buildpacks are set explicitly), says the same.
    let compile = build.compile().run();
    assert_eq!(compile.status.code(), Some(1));
    assert_eq!(compile.stderr, NO_PROCFILE);
}

#[test]
fn detect_without_a_web_process_fails_saying_what_to_add() {
    let build = Build::new(Packaged::Yes, "pyapp");
    fs::write(
        build.app.join("Procfile"),
        "# jobs only\nworker: python3 worker.py\nrelease: ./migrate\nworker: python3 other.py\n",
    )
    .expect("writable");
    let detect = build.detect();
    assert_eq!(detect.status.code(), Some(1));
    assert_eq!(detect.stdout, "");
    assert_eq!(
        detect.stderr,
        " !     The app's Procfile has no web process.
 !
 !     molt runs the app's web process as a pool of workers, and it takes that process from the web line of the Procfile at the root of the app. Only the web process receives HTTP requests, so there is nothing for molt to run.
 !
 !     Add a line that starts the app's web server on $PORT, for example
 !         web: bundle exec unicorn -p $PORT -c config/unicorn.rb
 !     then deploy again. To build without molt, remove the molt buildpack.
 !
 !     Cause: The Procfile defines worker, release and no web.
"
    );
}

#[test]
fn empty_web_command_fails_the_build() {
    let build = Build::new(Packaged::Yes, "pyapp");
    fs::write(build.app.join("Procfile"), "web:   \n").expect("writable");
    let compile = build.compile().run();
    assert_eq!(compile.status.code(), Some(1));
    assert_eq!(
        compile.stderr,
        " !     The Procfile's web process has no command.
 !
 !     molt runs the web command as a pool of workers, so it needs a command to run; without molt the app would crash at boot too.
 !
 !     Write the command that starts the web server after `web:`, for example
 !         web: bundle exec unicorn -p $PORT -c config/unicorn.rb
 !     then deploy again.
 !
 !     Cause: line 1 of the Procfile is `web:   `.
"
    );
}

/// The invalid-settings message around `cause`, the runtime's own one-line message.
fn invalid_settings(cause: &str) -> String {
    format!(
        " !     molt's settings are invalid.
 !
 !     The build checks molt.toml and the MOLT_* config vars as molt checks them when the app starts, so that a mistake fails this build rather than the app's boot.
 !
 !     Correct the setting named below in molt.toml, or with heroku config:set MOLT_NAME=value (unset it to get the default), then deploy again. The README's Settings table gives every setting's accepted form.
 !
 !     Cause: {cause}
"
    )
}

#[test]
fn invalid_config_var_fails_the_build_with_the_runtimes_message() {
    let build = Build::new(Packaged::Yes, "pyapp");
    build.config_var("MOLT_MIN_WORKERS", "0");
    let compile = build.compile().run();
    assert_eq!(compile.status.code(), Some(1));
    assert_eq!(compile.stdout, packaged_headline());
    let cause = "invalid MOLT_MIN_WORKERS=\"0\": expected a whole number of at least 1";
    assert_eq!(compile.stderr, invalid_settings(cause));
    // The same words as `molt plan` (and `molt run`) on the dyno.
    let plan = Command::new(molt_binary())
        .arg("plan")
        .env("MOLT_MIN_WORKERS", "0")
        .current_dir(build.app.path())
        .output()
        .expect("molt plan runs");
    assert_eq!(
        String::from_utf8_lossy(&plan.stderr),
        format!("molt: {cause}\n")
    );
    // Nothing was written.
    assert_eq!(build.read("Procfile"), "web: python3 app.py\n");
    assert!(!build.app.join(".molt").exists());
}

#[test]
fn unknown_molt_toml_key_fails_the_build_though_it_only_warns_at_run_time() {
    let build = Build::new(Packaged::Yes, "pyapp");
    fs::write(build.app.join("molt.toml"), "min_worker = 2\n").expect("writable");
    let compile = build.compile().run();
    assert_eq!(compile.status.code(), Some(1));
    assert_eq!(
        compile.stderr,
        invalid_settings("molt.toml:1: unknown setting min_worker; did you mean min_workers?")
    );
}

#[test]
fn unknown_architecture_fails_the_build() {
    let build = Build::new(Packaged::No, "pyapp");
    let compile = build
        .compile()
        .env("MOLT_BUILDPACK_ARCH", "riscv64")
        .env("PATH", path_without_cargo())
        .run();
    assert_eq!(compile.status.code(), Some(1));
    assert_eq!(compile.stdout, format!("-----> molt {VERSION}\n"));
    assert_eq!(
        compile.stderr,
        " !     There is no molt binary for this machine's architecture, riscv64.
 !
 !     molt is released for x86_64 (amd64) and aarch64 (arm64) Linux, and this buildpack has no packaged bin/molt and no cargo to build one from source.
 !
 !     Build on an amd64 or arm64 stack, or add a buildpack that puts cargo on PATH before this one so that molt is built from source.
 !
 !     Cause: MOLT_BUILDPACK_ARCH says riscv64.
"
    );
}

#[test]
fn no_binary_and_no_checksum_fails_the_build() {
    let build = Build::new(Packaged::No, "pyapp");
    let compile = build.compile().env("PATH", path_without_cargo()).run();
    assert_eq!(compile.status.code(), Some(1));
    let archive = archive_name();
    assert_eq!(
        compile.stderr,
        format!(
            " !     This buildpack has no molt binary and no checksum to download one with.
 !
 !     It carries no packaged bin/molt, and its checksums.txt lists no sha256 for {archive}, so a download could not be verified and is not made; there is no cargo to build molt from source either.
 !
 !     Use a released or packaged version of the buildpack (make package builds one), or add a buildpack that puts cargo on PATH before this one.
 !
 !     Cause: checksums.txt has no line for {archive}.
"
        )
    );
}

#[test]
fn packaged_binary_that_cannot_run_here_fails_the_build() {
    let build = Build::new(Packaged::No, "pyapp");
    // What running an executable of another architecture looks like to the shell.
    let fake = build.buildpack.join("bin/molt");
    fs::write(
        &fake,
        "#!/bin/sh\necho 'cannot execute binary file: Exec format error' >&2\nexit 126\n",
    )
    .expect("writable");
    fs::set_permissions(&fake, fs::Permissions::from_mode(0o755)).expect("chmod");
    let compile = build.compile().run();
    assert_eq!(compile.status.code(), Some(1));
    assert_eq!(
        compile.stderr,
        format!(
            " !     The molt binary packaged with this buildpack does not run on this machine.
 !
 !     The buildpack's bin/molt was built for another architecture or is damaged, so the build cannot install molt.
 !
 !     Use the buildpack package made for this machine's architecture (uname -m: {}), or run make package again to rebuild it.
 !
 !     Cause: cannot execute binary file: Exec format error
",
            std::env::consts::ARCH
        )
    );
}

// ---------------------------------------------------------------------------------------
// Obtaining the binary without a packaged one
// ---------------------------------------------------------------------------------------

/// A release server serving the archive (or `body` in its place) under `/releases/`.
fn release_server(body: Vec<u8>) -> ReleaseServer {
    ReleaseServer::start(HashMap::from([(
        format!("/releases/{}", archive_name()),
        body,
    )]))
}

#[test]
fn download_installs_a_verified_binary_and_the_cached_copy_needs_no_server() {
    let archive = release_archive();
    let server = release_server(archive.to_vec());
    let build = Build::new(Packaged::No, "pyapp");
    list_checksum(build.buildpack.path(), &sha256_hex(archive));
    // MOLT_BINARY_URL as a config var: Heroku puts it in the env dir.
    let url = server.url("releases");
    build.config_var("MOLT_BINARY_URL", &url);

    let first = build.compile().env("PATH", path_without_cargo()).run();
    first.assert_success();
    let name = archive_name();
    assert!(
        first.stdout.starts_with(&format!(
            "-----> molt {VERSION}\n       Downloading {url}/{name}\n       Binary: {name} downloaded (sha256 verified)\n       Installed .molt/bin/molt"
        )),
        "{}",
        first.stdout
    );
    assert_eq!(server.requests(), 1);
    assert_eq!(
        fs::read(build.cache.join("molt").join(&name)).expect("cached"),
        archive
    );
    assert!(
        fs::read(build.app.join(".molt/bin/molt")).expect("installed")
            == fs::read(molt_binary()).expect("readable")
    );
    let release = build.release();
    assert_eq!(release.stdout, "--- {}\n");

    // The next build, from a fresh app with the same cache: no server at all.
    drop(server);
    let next = Build {
        buildpack: build.buildpack,
        app: app("pyapp"),
        cache: build.cache,
        env: build.env,
    };
    let second = next.compile().env("PATH", path_without_cargo()).run();
    second.assert_success();
    assert!(
        second.stdout.starts_with(&format!(
            "-----> molt {VERSION}\n       Binary: {name} from the build cache (sha256 verified)\n       Installed .molt/bin/molt"
        )),
        "{}",
        second.stdout
    );
    assert_eq!(next.read("Procfile"), "web: molt run -- 'python3 app.py'\n");
}

#[test]
fn cached_archive_that_does_not_match_is_downloaded_again() {
    let archive = release_archive();
    let server = release_server(archive.to_vec());
    let build = Build::new(Packaged::No, "pyapp");
    list_checksum(build.buildpack.path(), &sha256_hex(archive));
    let cached = build.cache.join("molt").join(archive_name());
    fs::create_dir_all(cached.parent().expect("has a parent")).expect("writable");
    fs::write(&cached, b"truncated by an earlier build").expect("writable");

    let compile = build
        .compile()
        .env("MOLT_BINARY_URL", server.url("releases"))
        .env("PATH", path_without_cargo())
        .run();
    compile.assert_success();
    assert!(
        compile.stdout.contains("downloaded (sha256 verified)"),
        "{}",
        compile.stdout
    );
    assert_eq!(server.requests(), 1);
    assert_eq!(fs::read(&cached).expect("cached"), archive);
}

#[test]
fn corrupted_download_fails_the_build() {
    let archive = release_archive();
    let mut corrupted = archive.to_vec();
    let middle = corrupted.len() / 2;
    corrupted[middle] ^= 0xff;
    let server = release_server(corrupted.clone());
    let build = Build::new(Packaged::No, "pyapp");
    let expected = sha256_hex(archive);
    list_checksum(build.buildpack.path(), &expected);
    let url = format!("{}/{}", server.url("releases"), archive_name());

    let compile = build
        .compile()
        .env("MOLT_BINARY_URL", server.url("releases"))
        .env("PATH", path_without_cargo())
        .run();
    assert_eq!(compile.status.code(), Some(1));
    assert_eq!(
        compile.stdout,
        format!("-----> molt {VERSION}\n       Downloading {url}\n")
    );
    assert_eq!(
        compile.stderr,
        format!(
            " !     The downloaded molt archive is not the one this buildpack expects.
 !
 !     Its sha256 differs from the one in the buildpack's checksums.txt, so it may be damaged or tampered with, and the build will not run it.
 !
 !     Deploy again to retry the download. If it fails again, check MOLT_BINARY_URL (it must serve the archives of molt {VERSION}), or use a packaged buildpack.
 !
 !     Cause: {url} has sha256 {}; checksums.txt expects {expected}.
",
            sha256_hex(&corrupted)
        )
    );
    // Nothing unverified is kept or installed.
    assert!(!build.cache.join("molt").exists());
    assert!(!build.app.join(".molt").exists());
}

#[test]
fn missing_release_archive_fails_the_build_with_curls_error() {
    let server = ReleaseServer::start(HashMap::new());
    let build = Build::new(Packaged::No, "pyapp");
    list_checksum(build.buildpack.path(), &sha256_hex(b"anything"));
    let compile = build
        .compile()
        .env("MOLT_BINARY_URL", server.url("releases"))
        .env("PATH", path_without_cargo())
        .run();
    assert_eq!(compile.status.code(), Some(1));
    assert_eq!(
        compile.stderr,
        format!(
            " !     The molt binary could not be downloaded.
 !
 !     This buildpack carries no packaged bin/molt, so it downloads the molt {VERSION} release archive, and the download failed after retries; there is no cargo to build molt from source either.
 !
 !     Deploy again to retry. If it fails again, check that MOLT_BINARY_URL (if set) serves molt's release archives, or use a packaged buildpack.
 !
 !     Cause: curl: (22) The requested URL returned error: 404
"
        )
    );
    // A 404 is not retried: one request.
    assert_eq!(server.requests(), 1);
}

#[test]
fn cargo_builds_molt_from_source_when_nothing_else_can_be_had() {
    // A stand-in for cargo: records its arguments and "builds" by copying the binary under
    // test to where `cargo build --release --target-dir DIR` puts it. A real release
    // build takes minutes; what is tested is that the script calls cargo as it should and
    // installs what it produced.
    let build = Build::new(Packaged::No, "pyapp");
    let tools = TempDir::new("tools");
    let cargo = tools.join("cargo");
    let args_file = tools.join("args");
    fs::write(
        &cargo,
        format!(
            "#!/bin/sh\nprintf '%s\\n' \"$@\" > '{}'\nwhile [ \"$1\" != --target-dir ]; do shift; done\nmkdir -p \"$2/release\" && cp '{}' \"$2/release/molt\"\n",
            args_file.display(),
            molt_binary().display()
        ),
    )
    .expect("writable");
    fs::set_permissions(&cargo, fs::Permissions::from_mode(0o755)).expect("chmod");
    let path = format!("{}:{}", tools.path().display(), path_without_cargo());

    let compile = build.compile().env("PATH", path).run();
    compile.assert_success();
    assert!(
        compile.stdout.starts_with(&format!(
            "-----> molt {VERSION}\n       Building molt {VERSION} from the buildpack's source with cargo; this takes a few minutes\n       Binary: built from source with cargo\n"
        )),
        "{}",
        compile.stdout
    );
    let bp = build.buildpack.path().display().to_string();
    assert_eq!(
        fs::read_to_string(&args_file).expect("cargo ran"),
        format!(
            "build\n--release\n--locked\n--quiet\n--manifest-path\n{bp}/Cargo.toml\n--target-dir\n{bp}/target\n"
        )
    );
    assert!(build.app.join(".molt/bin/molt").is_file());
}
