//! The control socket: `molt status` and `molt restart` talk to a running molt over a
//! Unix socket that only molt's user can open (mode 0600, and the peer's uid is checked).
//! Nothing about the pool is served on the public port.
//!
//! The protocol is one line in, one answer out: `status`, `status json` or `restart`.
//!
//! A client that was given no port (no `PORT`, `--port` or `MOLT_CONTROL_SOCKET`, as in a
//! `heroku ps:exec` shell on a dyno) looks for the running molt of its user by its socket:
//! [`find`] takes the one default socket in the directory that answers.

use std::fmt;
use std::io::{self, Read as _, Write as _};
use std::os::unix::fs::{FileTypeExt as _, MetadataExt as _};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context as _;
use nix::sys::socket::{getsockopt, sockopt::PeerCredentials};
use nix::sys::stat::{umask, Mode};
use tokio::io::{AsyncBufReadExt as _, AsyncReadExt as _, AsyncWriteExt as _, BufReader};
use tokio::sync::oneshot;

use crate::observe::event;
use crate::observe::status::{json, text, StatusReport};

/// Longest a client may take to send its one line.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);

/// What a client of the control socket asks of the running molt.
#[derive(Debug)]
pub(crate) enum Command {
    /// `molt status`: the pool's state, sent back on the channel.
    Status(oneshot::Sender<StatusReport>),
    /// `molt restart` (or SIGHUP): replace every worker, one at a time.
    Restart,
}

/// Why the control socket could not be created.
#[derive(Debug)]
pub(crate) enum BindError {
    /// Another molt answers on it.
    InUse { path: PathBuf },
    /// A socket file left behind by a killed molt could not be removed.
    Stale { path: PathBuf, source: io::Error },
    /// Binding failed.
    Create { path: PathBuf, source: io::Error },
}

impl fmt::Display for BindError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            BindError::InUse { path } => write!(
                f,
                "another molt is using the control socket {}; set MOLT_CONTROL_SOCKET to another path",
                path.display()
            ),
            BindError::Stale { path, source } => write!(
                f,
                "cannot remove the stale control socket {}: {source}",
                path.display()
            ),
            BindError::Create { path, source } => write!(
                f,
                "cannot create the control socket {}: {source}",
                path.display()
            ),
        }
    }
}

impl std::error::Error for BindError {}

/// Binds the control socket. Called before any worker is spawned: the umask that makes
/// the socket 0600 from its creation applies to the whole process for a moment.
pub(crate) fn bind(path: &Path) -> Result<UnixListener, BindError> {
    if path.exists() {
        if UnixStream::connect(path).is_ok() {
            return Err(BindError::InUse {
                path: path.to_owned(),
            });
        }
        // Left behind by a molt that was killed.
        std::fs::remove_file(path).map_err(|source| BindError::Stale {
            path: path.to_owned(),
            source,
        })?;
    }
    let old = umask(Mode::from_bits_truncate(0o177));
    let bound = UnixListener::bind(path);
    umask(old);
    let create = |source| BindError::Create {
        path: path.to_owned(),
        source,
    };
    let listener = bound.map_err(create)?;
    listener.set_nonblocking(true).map_err(create)?;
    Ok(listener)
}

/// Answers control requests until the runtime ends; `send` hands a command to the
/// supervisor and is false once it is gone.
pub(crate) async fn serve<S>(listener: UnixListener, send: S)
where
    S: Fn(Command) -> bool + Clone + Send + 'static,
{
    let Ok(listener) = tokio::net::UnixListener::from_std(listener) else {
        return;
    };
    let me = nix::unistd::geteuid().as_raw();
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        // The file mode already keeps other users out; the peer check holds even if the
        // mode was changed by hand. Root may always ask.
        let peer = getsockopt(&stream, PeerCredentials).map(|c| c.uid());
        if !matches!(peer, Ok(uid) if uid == me || uid == 0) {
            event!(Warn, "control_refused", uid = peer.map_or(-1, i64::from));
            continue;
        }
        let send = send.clone();
        tokio::spawn(async move {
            let _ = answer(stream, send).await;
        });
    }
}

async fn answer(stream: tokio::net::UnixStream, send: impl Fn(Command) -> bool) -> io::Result<()> {
    let (read, mut write) = stream.into_split();
    let mut line = String::new();
    let mut reader = BufReader::new(read.take(256));
    tokio::time::timeout(REQUEST_TIMEOUT, reader.read_line(&mut line))
        .await
        .map_err(|_| io::ErrorKind::TimedOut)??;
    let reply = match line.trim() {
        command @ ("status" | "status json") => {
            let (tx, rx) = oneshot::channel();
            send(Command::Status(tx));
            match rx.await {
                Ok(report) if command == "status json" => json(&report),
                Ok(report) => text(&report),
                Err(_) => "molt is shutting down\n".to_owned(),
            }
        }
        "restart" => {
            send(Command::Restart);
            "rolling restart started\n".to_owned()
        }
        other => format!("unknown command {other:?}: use status, status json or restart\n"),
    };
    write.write_all(reply.as_bytes()).await?;
    write.shutdown().await
}

/// Sends one command to the molt listening on `path` and returns its answer.
pub(crate) fn request(path: &Path, command: &str) -> anyhow::Result<String> {
    let mut stream = UnixStream::connect(path).with_context(|| {
        format!(
            "cannot reach a running molt at {}: is `molt run` running here with the same PORT \
             (or MOLT_CONTROL_SOCKET)?",
            path.display()
        )
    })?;
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    stream.write_all(format!("{command}\n").as_bytes())?;
    let mut reply = String::new();
    stream.read_to_string(&mut reply)?;
    Ok(reply)
}

/// Why no one running molt was found by its socket.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum FindError {
    /// No socket of this user in `dir` answers.
    None { dir: PathBuf },
    /// Several do: the port of each, as its socket is named.
    Several { ports: Vec<u16>, command: String },
}

impl fmt::Display for FindError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FindError::None { dir } => write!(
                f,
                "no running molt found: no control socket {}/molt-<PORT>.sock of this user \
                 answers. Run this where `molt run` runs: on Heroku inside the dyno \
                 (`heroku ps:exec -d web.1`, then `molt status`), not in a `heroku run` \
                 one-off dyno, which is another container; a molt started with \
                 MOLT_CONTROL_SOCKET needs the same MOLT_CONTROL_SOCKET here",
                dir.display()
            ),
            FindError::Several { ports, command } => {
                write!(
                    f,
                    "{} molts are running here; say which one with its PORT:",
                    ports.len()
                )?;
                for port in ports {
                    write!(f, "\n  PORT={port} molt {command}")?;
                }
                Ok(())
            }
        }
    }
}

impl std::error::Error for FindError {}

/// The control socket of the one molt of user `uid` that answers in `dir`, among the
/// sockets named as molt names them by default (`molt-<port>.sock`); `command` is what
/// the user ran, for the message when there are several.
pub(crate) fn find(dir: &Path, uid: u32, command: &str) -> Result<PathBuf, FindError> {
    let mut ports: Vec<u16> = std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .filter_map(Result::ok)
        .filter_map(|entry| {
            let port = port_of(&entry.file_name().to_string_lossy())?;
            // Another user's socket is not ours to open; a socket left by a killed molt
            // refuses the connection.
            let meta = entry.metadata().ok()?;
            let ours = meta.file_type().is_socket() && meta.uid() == uid;
            (ours && UnixStream::connect(entry.path()).is_ok()).then_some(port)
        })
        .collect();
    ports.sort_unstable();
    match ports.as_slice() {
        [] => Err(FindError::None {
            dir: dir.to_owned(),
        }),
        [port] => Ok(dir.join(socket_name(*port))),
        _ => Err(FindError::Several {
            ports,
            command: command.to_owned(),
        }),
    }
}

/// The file name of the default control socket of `port` (see
/// `config::default_control_socket`).
fn socket_name(port: u16) -> String {
    format!("molt-{port}.sock")
}

/// The port in a default control socket's file name.
fn port_of(name: &str) -> Option<u16> {
    let digits = name.strip_prefix("molt-")?.strip_suffix(".sock")?;
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits
        .parse()
        .ok()
        .filter(|port| socket_name(*port) == name)
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Dir(PathBuf);

    impl Drop for Dir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    fn dir(label: &str) -> Dir {
        let path = std::env::temp_dir().join(format!("molt-find-{label}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&path);
        std::fs::create_dir(&path).expect("a fresh directory");
        Dir(path)
    }

    fn me() -> u32 {
        nix::unistd::geteuid().as_raw()
    }

    #[test]
    fn only_default_socket_names_carry_a_port() {
        assert_eq!(port_of("molt-5000.sock"), Some(5000));
        assert_eq!(port_of("molt-.sock"), None);
        assert_eq!(port_of("molt-+5.sock"), None);
        assert_eq!(port_of("molt-05000.sock"), None);
        assert_eq!(port_of("molt-70000.sock"), None);
        assert_eq!(port_of("other-5000.sock"), None);
    }

    #[test]
    fn the_one_molt_that_answers_is_found() {
        let d = dir("one");
        let _live = UnixListener::bind(d.0.join("molt-5000.sock")).expect("bind");
        // Left by a killed molt: the file is there, nothing answers.
        drop(UnixListener::bind(d.0.join("molt-6000.sock")).expect("bind"));
        std::fs::write(d.0.join("molt-7000.sock"), "not a socket").expect("write");
        let _other_name = UnixListener::bind(d.0.join("app.sock")).expect("bind");
        assert_eq!(find(&d.0, me(), "status"), Ok(d.0.join("molt-5000.sock")));
        // Another user's socket is not taken.
        assert_eq!(
            find(&d.0, me() + 1, "status"),
            Err(FindError::None { dir: d.0.clone() })
        );
    }

    #[test]
    fn several_or_none_say_what_to_do() {
        let d = dir("several");
        let none = find(&d.0, me(), "status").expect_err("nothing runs");
        assert!(
            none.to_string().contains("heroku ps:exec -d web.1"),
            "{none}"
        );
        let _a = UnixListener::bind(d.0.join("molt-6000.sock")).expect("bind");
        let _b = UnixListener::bind(d.0.join("molt-5000.sock")).expect("bind");
        let several = find(&d.0, me(), "restart").expect_err("two run");
        assert_eq!(
            several.to_string(),
            "2 molts are running here; say which one with its PORT:\n  \
             PORT=5000 molt restart\n  PORT=6000 molt restart"
        );
    }
}
