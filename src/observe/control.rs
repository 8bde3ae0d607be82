//! The control socket: `molt status` and `molt restart` talk to a running molt over a
//! Unix socket that only molt's user can open (mode 0600, and the peer's uid is checked).
//! Nothing about the pool is served on the public port.
//!
//! The protocol is one line in, one answer out: `status`, `status json` or `restart`.

use std::fmt::Write as _;
use std::io::{self, Read as _, Write as _};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::Path;
use std::time::Duration;

use anyhow::{bail, Context as _};
use nix::sys::socket::{getsockopt, sockopt::PeerCredentials};
use nix::sys::stat::{umask, Mode};
use tokio::io::{AsyncBufReadExt as _, AsyncReadExt as _, AsyncWriteExt as _, BufReader};
use tokio::sync::{mpsc, oneshot};

use crate::observe::event;
use crate::run::{Event, StatusReport};
use crate::units::{format_signed_size, format_size};

/// Longest a client may take to send its one line.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);

/// Binds the control socket. Called before any worker is spawned: the umask that makes
/// the socket 0600 from its creation applies to the whole process for a moment.
pub(crate) fn bind(path: &Path) -> anyhow::Result<UnixListener> {
    if path.exists() {
        if UnixStream::connect(path).is_ok() {
            bail!(
                "another molt is using the control socket {}; set MOLT_CONTROL_SOCKET to another path",
                path.display()
            );
        }
        // Left behind by a molt that was killed.
        std::fs::remove_file(path).with_context(|| {
            format!("cannot remove the stale control socket {}", path.display())
        })?;
    }
    let old = umask(Mode::from_bits_truncate(0o177));
    let bound = UnixListener::bind(path);
    umask(old);
    let listener =
        bound.with_context(|| format!("cannot create the control socket {}", path.display()))?;
    listener.set_nonblocking(true)?;
    Ok(listener)
}

/// Answers control requests until the runtime ends.
pub(crate) async fn serve(listener: UnixListener, events: mpsc::UnboundedSender<Event>) {
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
        let events = events.clone();
        tokio::spawn(async move {
            let _ = answer(stream, events).await;
        });
    }
}

async fn answer(
    stream: tokio::net::UnixStream,
    events: mpsc::UnboundedSender<Event>,
) -> io::Result<()> {
    let (read, mut write) = stream.into_split();
    let mut line = String::new();
    let mut reader = BufReader::new(read.take(256));
    tokio::time::timeout(REQUEST_TIMEOUT, reader.read_line(&mut line))
        .await
        .map_err(|_| io::ErrorKind::TimedOut)??;
    let reply = match line.trim() {
        command @ ("status" | "status json") => {
            let (tx, rx) = oneshot::channel();
            let _ = events.send(Event::Status(tx));
            match rx.await {
                Ok(report) if command == "status json" => json(&report),
                Ok(report) => text(&report),
                Err(_) => "molt is shutting down\n".to_owned(),
            }
        }
        "restart" => {
            let _ = events.send(Event::RollingRestart);
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

fn size(bytes: Option<u64>) -> String {
    bytes.map_or_else(|| "-".to_owned(), format_size)
}

fn rate(bytes: Option<f64>) -> String {
    bytes.map_or_else(|| "-".to_owned(), format_signed_size)
}

/// The report as a table for people, in the manner of `passenger-status`.
pub(crate) fn text(r: &StatusReport) -> String {
    let mut out = format!(
        "molt {}: {} workers (min {}, max {}, wanted {}), queue {}\n",
        r.pid,
        r.workers.len(),
        r.min_workers,
        r.max_workers,
        r.desired,
        r.queue
    );
    let _ = writeln!(
        out,
        "memory: pool {} of {} usable; budget {} ({}); caps {} soft, {} hard; molt itself {}",
        format_size(r.pool_memory),
        format_size(r.usable),
        format_size(r.budget),
        r.budget_source,
        format_size(r.soft_cap),
        format_size(r.hard_cap),
        format_size(r.molt_rss),
    );
    if let Some(paused) = r.memory_guard_paused_s {
        let _ = writeln!(
            out,
            "memory recycling paused for {paused}s more: the caps are below the app's footprint"
        );
    }
    let _ = writeln!(
        out,
        "\n{:>4} {:>8} {:<9} {:>8} {:>9} {:>9} {:>8} {:>8} {:>10} {:>9} {:>8}",
        "id",
        "pid",
        "state",
        "age",
        "requests",
        "in-flight",
        "memory",
        "peak",
        "growth/req",
        "growth/h",
        "cpu"
    );
    for w in &r.workers {
        let _ = writeln!(
            out,
            "{:>4} {:>8} {:<9} {:>8} {:>9} {:>9} {:>8} {:>8} {:>10} {:>9} {:>7.1}s",
            w.id,
            w.pid,
            w.state,
            humantime::format_duration(Duration::from_secs(w.age_s)).to_string(),
            w.requests,
            w.in_flight,
            size(w.memory),
            format_size(w.peak),
            rate(w.growth_per_request),
            rate(w.growth_per_hour),
            w.cpu_s,
        );
    }
    out
}

/// The report as JSON for machines; sizes in bytes.
pub(crate) fn json(r: &StatusReport) -> String {
    fn opt<T: std::fmt::Display>(v: Option<T>) -> String {
        v.map_or_else(|| "null".to_owned(), |v| v.to_string())
    }
    fn float(v: Option<f64>) -> String {
        v.filter(|v| v.is_finite())
            .map_or_else(|| "null".to_owned(), |v| format!("{v:.1}"))
    }
    let workers: Vec<String> = r
        .workers
        .iter()
        .map(|w| {
            format!(
                "{{\"id\":{},\"pid\":{},\"state\":\"{}\",\"age_s\":{},\"requests\":{},\"in_flight\":{},\
                 \"memory\":{},\"peak\":{},\"growth_per_request\":{},\"growth_per_hour\":{},\"cpu_s\":{:.2}}}",
                w.id,
                w.pid,
                w.state,
                w.age_s,
                w.requests,
                w.in_flight,
                opt(w.memory),
                w.peak,
                float(w.growth_per_request),
                float(w.growth_per_hour),
                w.cpu_s,
            )
        })
        .collect();
    format!(
        "{{\"pid\":{},\"budget\":{},\"budget_source\":\"{}\",\"usable\":{},\"soft_cap\":{},\"hard_cap\":{},\
         \"min_workers\":{},\"max_workers\":{},\"desired\":{},\"queue\":{},\"pool_memory\":{},\"molt_rss\":{},\
         \"memory_guard_paused_s\":{},\"workers\":[{}]}}\n",
        r.pid,
        r.budget,
        r.budget_source.replace('\\', "\\\\").replace('"', "\\\""),
        r.usable,
        r.soft_cap,
        r.hard_cap,
        r.min_workers,
        r.max_workers,
        r.desired,
        r.queue,
        r.pool_memory,
        r.molt_rss,
        opt(r.memory_guard_paused_s),
        workers.join(","),
    )
}
