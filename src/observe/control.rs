//! The control socket: `molt status` and `molt restart` talk to a running molt over a
//! Unix socket that only molt's user can open (mode 0600, and the peer's uid is checked).
//! Nothing about the pool is served on the public port.
//!
//! The protocol is one line in, one answer out: `status`, `status json` or `restart`.

use std::fmt;
use std::io::{self, Read as _, Write as _};
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
