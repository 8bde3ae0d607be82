//! Warm-up (`MOLT_WARMUP_PATH`, `MOLT_WARMUP_REQUESTS`): GETs from molt to a new worker
//! before it takes traffic (ARCHITECTURE.md, "A worker's life").
//!
//! Real apps are slow on their first requests: code paths load lazily, caches and
//! connection pools fill. A worker that has answered molt's warm-up requests takes its
//! first user request warm. Each GET goes on a connection of its own (`Connection: close`)
//! with a `Host` header and is read to its end; a status of 500 or more, a connection
//! error, or no answer by the boot deadline (`MOLT_BOOT_TIMEOUT` after the worker was
//! started) fails the warm-up, which the supervisor counts as a failed boot.
//!
//! An adopted preforking master's children share its port and cannot be addressed one by
//! one: a child is warmed through that port, so the kernel gives each warm-up connection
//! to whichever child accepts it (see `brood`).

use std::fmt;
use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;
use tokio::task::JoinSet;
use tokio::time::Instant;

use super::{Done, Phase, State, Supervisor};
use crate::observe::event;
use crate::run::error::BootFailure;

/// How long past its boot deadline the supervisor waits for a warming worker's own
/// timeout, which says how far the warm-up got, before it times the boot out itself.
pub(super) const DEADLINE_GRACE: Duration = Duration::from_secs(1);

/// The warm-up requests for one worker (or for the new children of an adopted master).
#[derive(Debug, Clone)]
pub(crate) struct Warmup {
    /// The path to GET, as `MOLT_WARMUP_PATH` gives it.
    pub(crate) path: String,
    /// GETs in all.
    pub(crate) requests: u32,
    /// GETs sent at once: 1 for one worker, so that each finds it warmer than the last;
    /// the count of new children for a master, so that busy children leave them to others.
    pub(crate) at_once: u32,
    /// All must be answered by then: the worker's boot deadline.
    pub(crate) deadline: Instant,
    /// How long the boot timeout was, for the message.
    pub(crate) timeout: Duration,
}

/// Why a warm-up failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum WarmupFailure {
    /// The app answered with a status of 500 or more.
    Status { path: String, status: u16 },
    /// The connection failed or the answer was not HTTP.
    Broken { path: String, error: String },
    /// Not every GET was answered by the boot deadline.
    Timeout {
        path: String,
        /// How many were answered, when known.
        answered: Option<u32>,
        requests: u32,
        timeout: Duration,
    },
}

impl fmt::Display for WarmupFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            WarmupFailure::Status { path, status } => write!(
                f,
                "the warm-up request GET {path} (MOLT_WARMUP_PATH) answered {status}; \
                 the warm-up path must answer below 500"
            ),
            WarmupFailure::Broken { path, error } => write!(
                f,
                "the warm-up request GET {path} (MOLT_WARMUP_PATH) failed: {error}"
            ),
            WarmupFailure::Timeout {
                path,
                answered,
                requests,
                timeout,
            } => {
                write!(
                    f,
                    "the warm-up requests GET {path} (MOLT_WARMUP_PATH) were not answered \
                     within {} of the start (MOLT_BOOT_TIMEOUT): ",
                    humantime::format_duration(*timeout)
                )?;
                if let Some(answered) = answered {
                    write!(f, "{answered} of {requests} answered; ")?;
                }
                f.write_str(
                    "give the warm-up a faster path, fewer MOLT_WARMUP_REQUESTS or a longer \
                     MOLT_BOOT_TIMEOUT",
                )
            }
        }
    }
}

impl Supervisor {
    /// A booting worker accepts connections (or passed its health check): it is ready,
    /// or, with `MOLT_WARMUP_PATH`, its warm-up starts. A probe's answer that comes while
    /// it warms up changes nothing.
    pub(super) fn on_accepting(&mut self, id: u64, now: Instant) {
        if self.workers.iter().any(|w| w.id == id && w.warming) {
            return;
        }
        if !self.start_warmup(id, now) {
            self.on_ready(id, now);
        }
    }

    /// Starts the warm-up of a booting worker that now accepts connections, when
    /// `MOLT_WARMUP_PATH` is set; it stays unroutable until [`Supervisor::on_warmed`].
    /// Returns whether it did.
    fn start_warmup(&mut self, id: u64, now: Instant) -> bool {
        let Some(path) = self.config.warmup_path.clone() else {
            return false;
        };
        let boot_timeout = self.config.boot_timeout;
        let requests = self.config.warmup_requests;
        let Some(w) = self.workers.iter_mut().find(|w| w.id == id) else {
            return false;
        };
        if !matches!(w.state, State::Booting { .. }) || w.warming {
            return false;
        }
        let warmup = Warmup {
            path,
            requests,
            at_once: 1,
            deadline: w.started + boot_timeout,
            timeout: boot_timeout,
        };
        event!(
            Info,
            "warmup",
            worker = id,
            pid = w.pid,
            path = &warmup.path,
            requests = requests,
            accept_ms = now.duration_since(w.started).as_millis(),
        );
        let task = self
            .procs
            .warm_up(id, w.slot.addr, warmup, self.events_tx.clone());
        w.abort_task();
        w.warming = true;
        w.state = State::Booting { probe: task };
        true
    }

    /// Acts on a warm-up's result: the worker becomes ready, or its boot failed. For an
    /// adopted master, the result is that of its new children's warm-up, only logged: it
    /// cannot be told which child answered (see [`Supervisor::warm_children`]).
    pub(super) fn on_warmed(
        &mut self,
        id: u64,
        result: Result<(), WarmupFailure>,
        now: Instant,
    ) -> Option<Done> {
        let w = self.workers.iter().find(|w| w.id == id)?;
        if !(matches!(w.state, State::Booting { .. }) && w.warming) {
            if w.brood.is_some() {
                match result {
                    Ok(()) => event!(Debug, "warmed", worker = id, children = true),
                    Err(failure) => event!(
                        Warn,
                        "warmup_failed",
                        worker = id,
                        children = true,
                        reason = &failure
                    ),
                }
            }
            return None;
        }
        let (pid, warmup_ms) = (w.pid, now.duration_since(w.started).as_millis());
        if let Some(w) = self.worker_mut(id) {
            w.warming = false;
        }
        match result {
            Ok(()) => {
                if let Some(w) = self.workers.iter().find(|w| w.id == id) {
                    w.slot.mark_warmed();
                }
                event!(Info, "warmed", worker = id, pid = pid, boot_ms = warmup_ms);
                self.on_ready(id, now);
                None
            }
            Err(failure) => {
                event!(
                    Warn,
                    "warmup_failed",
                    worker = id,
                    pid = pid,
                    reason = &failure
                );
                self.kill(id, "warmup_failed");
                if self.phase != Phase::Running {
                    return None;
                }
                self.boot_failed(BootFailure::WarmUp(failure), now)
            }
        }
    }

    /// Why a worker still warming up at its boot deadline (and the grace after it) failed
    /// to boot: its warm-up task did not say, so how far it got is not known.
    pub(super) fn warmup_timed_out(&self, timeout: Duration) -> BootFailure {
        BootFailure::WarmUp(WarmupFailure::Timeout {
            path: self.config.warmup_path.clone().unwrap_or_default(),
            answered: None,
            requests: self.config.warmup_requests,
            timeout,
        })
    }

    /// Warms the `new` children a sample found under adopted master `id`, through the
    /// master's port: the children share it and cannot be addressed one by one, so
    /// `new` times `MOLT_WARMUP_REQUESTS` GETs go to it, `new` at a time, and the kernel
    /// gives each to a child that accepts. That is all it guarantees: that many warm-up
    /// requests were answered by the master's children, most likely by the idle new ones
    /// (a busy child does not accept), not one per new child. The new children already
    /// take traffic when this starts (molt sees a child only at the sample after its
    /// fork), and a failure is logged, not counted as a failed boot: the master, not molt,
    /// replaces its children.
    pub(super) fn warm_children(&mut self, id: u64, new: usize, now: Instant) {
        let Some(path) = self.config.warmup_path.clone() else {
            return;
        };
        if new == 0 {
            return;
        }
        let Some(w) = self.workers.iter().find(|w| w.id == id && w.is_ready()) else {
            return;
        };
        let new = u32::try_from(new).unwrap_or(u32::MAX);
        let warmup = Warmup {
            path,
            requests: new.saturating_mul(self.config.warmup_requests),
            at_once: new,
            deadline: now + self.config.boot_timeout,
            timeout: self.config.boot_timeout,
        };
        event!(
            Debug,
            "warmup",
            worker = id,
            children = new,
            requests = warmup.requests
        );
        // Its handle is not kept: the GETs end by their deadline, and a master that is
        // replaced meanwhile only answers them or refuses them.
        let _ = self
            .procs
            .warm_up(id, w.slot.addr, warmup, self.events_tx.clone());
    }
}

/// Sends the warm-up GETs to `addr`, `at_once` at a time, and returns once all were
/// answered below 500, or at the first failure.
pub(crate) async fn run(addr: SocketAddr, warmup: Warmup) -> Result<(), WarmupFailure> {
    let mut answered = 0;
    let mut sent = 0;
    let mut running = JoinSet::new();
    loop {
        while sent < warmup.requests && running.len() < warmup.at_once.max(1) as usize {
            let path = warmup.path.clone();
            running.spawn(async move { get(addr, &path).await });
            sent += 1;
        }
        let timed = tokio::time::timeout_at(warmup.deadline, running.join_next()).await;
        match timed {
            Err(_) => {
                return Err(WarmupFailure::Timeout {
                    path: warmup.path,
                    answered: Some(answered),
                    requests: warmup.requests,
                    timeout: warmup.timeout,
                })
            }
            Ok(None) => return Ok(()),
            Ok(Some(Ok(Ok(status)))) if status < 500 => answered += 1,
            Ok(Some(Ok(Ok(status)))) => {
                return Err(WarmupFailure::Status {
                    path: warmup.path,
                    status,
                })
            }
            Ok(Some(Ok(Err(error)))) => {
                return Err(WarmupFailure::Broken {
                    path: warmup.path,
                    error,
                })
            }
            // A GET task cannot panic; the JoinSet is dropped with the rest on return.
            Ok(Some(Err(join))) => {
                return Err(WarmupFailure::Broken {
                    path: warmup.path,
                    error: join.to_string(),
                })
            }
        }
    }
}

/// One GET on a connection of its own, read to its end; returns the status.
async fn get(addr: SocketAddr, path: &str) -> Result<u16, String> {
    let mut stream = TcpStream::connect(addr)
        .await
        .map_err(|e| format!("cannot connect to {addr}: {e}"))?;
    let request = format!(
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nUser-Agent: molt-warmup\r\nAccept: */*\r\n\
         Connection: close\r\n\r\n"
    );
    stream
        .write_all(request.as_bytes())
        .await
        .map_err(|e| format!("cannot send the request: {e}"))?;
    // The status line is in the first bytes; the rest is read and dropped, so that the
    // app has finished the request (and its work) before the worker is ready.
    let mut head = Vec::with_capacity(64);
    let mut buf = [0u8; 8192];
    loop {
        let n = stream
            .read(&mut buf)
            .await
            .map_err(|e| format!("the connection broke: {e}"))?;
        if n == 0 {
            break;
        }
        if head.len() < 12 {
            head.extend_from_slice(&buf[..n.min(64)]);
        }
    }
    parse_status(&head).ok_or_else(|| {
        if head.is_empty() {
            "the app closed the connection without answering".to_owned()
        } else {
            "the answer is not an HTTP response".to_owned()
        }
    })
}

/// The status of an HTTP/1.x status line (`HTTP/1.1 200 OK`).
fn parse_status(head: &[u8]) -> Option<u16> {
    let rest = head.strip_prefix(b"HTTP/1.")?;
    let code = rest.get(2..5)?;
    std::str::from_utf8(code).ok()?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::net::TcpListener;

    #[test]
    fn status_lines() {
        assert_eq!(parse_status(b"HTTP/1.1 200 OK\r\n"), Some(200));
        assert_eq!(parse_status(b"HTTP/1.0 503 Busy"), Some(503));
        assert_eq!(parse_status(b"SSH-2.0"), None);
        assert_eq!(parse_status(b""), None);
    }

    /// A server on a real socket that answers each connection with `status` after
    /// reading its head, `answers` times, and counts the requests it read.
    async fn server(status: u16, answers: usize) -> (SocketAddr, tokio::task::JoinHandle<usize>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let task = tokio::spawn(async move {
            let mut seen = 0;
            for _ in 0..answers {
                let Ok((mut conn, _)) = listener.accept().await else {
                    break;
                };
                let mut buf = [0u8; 1024];
                let n = conn.read(&mut buf).await.unwrap_or(0);
                let head = String::from_utf8_lossy(&buf[..n]);
                assert!(head.starts_with("GET /warm HTTP/1.1\r\n"), "{head}");
                assert!(head.contains("\r\nHost: 127.0.0.1:"), "{head}");
                seen += 1;
                let reply = format!("HTTP/1.1 {status} X\r\nContent-Length: 2\r\n\r\nok");
                let _ = conn.write_all(reply.as_bytes()).await;
            }
            seen
        });
        (addr, task)
    }

    fn warmup(requests: u32, timeout: Duration) -> Warmup {
        Warmup {
            path: "/warm".into(),
            requests,
            at_once: 1,
            deadline: Instant::now() + timeout,
            timeout,
        }
    }

    #[tokio::test]
    async fn every_request_is_sent_and_answered() {
        let (addr, task) = server(200, 3).await;
        assert_eq!(run(addr, warmup(3, Duration::from_secs(10))).await, Ok(()));
        assert_eq!(task.await.expect("server"), 3);
    }

    #[tokio::test]
    async fn a_status_of_500_or_more_fails_the_warm_up() {
        let (addr, _task) = server(503, 3).await;
        let failure = run(addr, warmup(3, Duration::from_secs(10)))
            .await
            .expect_err("503 fails");
        assert_eq!(
            failure,
            WarmupFailure::Status {
                path: "/warm".into(),
                status: 503
            }
        );
        assert_eq!(
            failure.to_string(),
            "the warm-up request GET /warm (MOLT_WARMUP_PATH) answered 503; the warm-up path \
             must answer below 500"
        );
    }

    #[tokio::test]
    async fn no_answer_by_the_deadline_fails_with_the_count() {
        // Accepts and never answers.
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let _held = tokio::spawn(async move {
            let mut held = Vec::new();
            while let Ok((conn, _)) = listener.accept().await {
                held.push(conn);
            }
        });
        let failure = run(addr, warmup(2, Duration::from_millis(200)))
            .await
            .expect_err("times out");
        assert!(
            matches!(
                failure,
                WarmupFailure::Timeout {
                    answered: Some(0),
                    requests: 2,
                    ..
                }
            ),
            "{failure:?}"
        );
        assert_eq!(
            failure.to_string(),
            "the warm-up requests GET /warm (MOLT_WARMUP_PATH) were not answered within 200ms \
             of the start (MOLT_BOOT_TIMEOUT): 0 of 2 answered; give the warm-up a faster \
             path, fewer MOLT_WARMUP_REQUESTS or a longer MOLT_BOOT_TIMEOUT"
        );
    }

    #[tokio::test]
    async fn a_refused_connection_fails_the_warm_up() {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        drop(listener);
        let failure = run(addr, warmup(1, Duration::from_secs(5)))
            .await
            .expect_err("refused");
        assert!(
            failure.to_string().starts_with(
                "the warm-up request GET /warm (MOLT_WARMUP_PATH) failed: cannot connect to"
            ),
            "{failure}"
        );
    }
}
