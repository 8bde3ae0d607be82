//! A request that no worker will ever take gets 503 with `Retry-After`, never a closed
//! connection: when molt gives up booting the app, at the shutdown deadline, and when
//! shutting down leaves no worker.

use std::thread;
use std::time::Duration;

use crate::proxy::pool;
use crate::support::{
    get, port_open, signal_pid, status_json, temp_path, tools_present, wait_until, Molt, Response,
    SIGTERM,
};

/// Asserts molt's own 503: `Retry-After`, no word about the pool.
fn assert_unavailable(response: &Response, log: &str) {
    assert_eq!(response.status, 503, "{log}");
    assert_eq!(response.header("retry-after"), Some("1"), "{log}");
    assert_eq!(response.text(), "Service Unavailable\n");
}

/// Sends a GET of `path` on a thread; its answer, or the error that ended it.
fn send(port: u16, path: &str) -> thread::JoinHandle<std::io::Result<Response>> {
    let path = path.to_owned();
    thread::spawn(move || get(port, &path))
}

/// One worker that takes one request at a time, held by a long request, and a second
/// request queued behind it.
struct HeldPool {
    molt: Molt,
    worker: u32,
    request: thread::JoinHandle<std::io::Result<Response>>,
}

fn held_and_queued(shutdown_timeout: &str) -> HeldPool {
    let socket = temp_path("control.sock");
    let molt = pool(1, |b| {
        // The queue timeout is longer than any shutdown here, so that only the answer
        // under test can end the queued request's wait.
        b.env("MOLT_WORKER_CONCURRENCY", "1")
            .env("MOLT_QUEUE_TIMEOUT", "60s")
            .env("MOLT_SHUTDOWN_TIMEOUT", shutdown_timeout)
            .env("MOLT_CONTROL_SOCKET", &socket)
    });
    let port = molt.port();
    let worker: u32 = get(port, "/pid")
        .expect("served")
        .text()
        .parse()
        .expect("a pid");
    let mark = temp_path("held");
    let _held = send(port, &format!("/sleep?ms=20000&mark={}", mark.display()));
    assert!(wait_until(Duration::from_secs(20), || mark.exists()));
    let queued = send(port, "/");
    assert!(
        wait_until(Duration::from_secs(20), || status_json(&socket)["queue"]
            == 1),
        "{}",
        molt.log()
    );
    HeldPool {
        molt,
        worker,
        request: queued,
    }
}

#[test]
fn a_request_queued_while_molt_gives_up_booting_gets_503() {
    if !tools_present(&["bash"]) {
        return;
    }
    let mut molt = Molt::builder()
        .env("MOLT_MAX_BOOT_FAILURES", "3")
        .args(["run", "--", "echo 'the database is down' >&2; exit 1"])
        .spawn();
    let port = molt.port();
    assert!(wait_until(Duration::from_secs(10), || port_open(port)));
    // Sent during the boot retries (1 s, then 2 s of back-off): it waits in the queue.
    let queued = send(port, "/");
    let status = molt
        .wait_exit(Duration::from_secs(30))
        .expect("molt gave up");
    assert_eq!(status.code(), Some(1), "{}", molt.log());
    let log = molt.log();
    let response = queued
        .join()
        .expect("request thread")
        .unwrap_or_else(|err| panic!("no HTTP response ({err}):\n{log}"));
    assert_unavailable(&response, &log);
    assert!(
        log.contains("at=overload status=503 reason=no_worker"),
        "{log}"
    );
}

#[test]
fn a_request_still_queued_at_the_shutdown_deadline_gets_503() {
    if !tools_present(&["python3"]) {
        return;
    }
    let HeldPool {
        mut molt,
        request: queued,
        ..
    } = held_and_queued("1s");
    molt.signal(SIGTERM);
    let response = queued.join().expect("request thread");
    let log = molt.log();
    let response = response.unwrap_or_else(|err| panic!("no HTTP response ({err}):\n{log}"));
    assert_unavailable(&response, &log);
    // molt's log reaches the test through a pipe, perhaps after the response.
    assert!(
        molt.wait_for_log("at=shutdown_timeout", Duration::from_secs(10)),
        "{}",
        molt.log()
    );
    let status = molt.wait_exit(Duration::from_secs(30)).expect("molt exits");
    assert_eq!(status.code(), Some(0), "{}", molt.log());
}

#[test]
fn a_request_queued_when_shutdown_leaves_no_worker_gets_503_at_once() {
    if !tools_present(&["python3"]) {
        return;
    }
    // The default shutdown timeout: the answer must not wait for it.
    let HeldPool {
        mut molt,
        worker,
        request: queued,
    } = held_and_queued("25s");
    // A platform stopping the container signals every process in it at once.
    molt.signal(SIGTERM);
    signal_pid(worker, SIGTERM);
    let response = queued.join().expect("request thread");
    let log = molt.log();
    let response = response.unwrap_or_else(|err| panic!("no HTTP response ({err}):\n{log}"));
    assert_unavailable(&response, &log);
    assert!(
        molt.wait_for_log(
            "at=overload status=503 reason=no_worker",
            Duration::from_secs(10)
        ),
        "{}",
        molt.log()
    );
    assert!(
        !molt.log().contains("at=shutdown_timeout"),
        "answered only at the deadline:\n{}",
        molt.log()
    );
    let status = molt.wait_exit(Duration::from_secs(30)).expect("molt exits");
    assert_eq!(status.code(), Some(0), "{}", molt.log());
}
