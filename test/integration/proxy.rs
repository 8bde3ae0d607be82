//! The proxy: routing over workers, bodies both ways, streaming, upgrades, headers,
//! and the queue's limits.

use std::collections::BTreeSet;
use std::io::{Read, Write};
use std::thread;
use std::time::Duration;

use crate::support::{
    get, python_cmd, read_chunk, request, temp_path, wait_until, Conn, Molt, MoltBuilder,
};

/// molt running the fixture app with `workers` workers, once all of them are ready.
pub(crate) fn pool(workers: usize, configure: impl FnOnce(MoltBuilder) -> MoltBuilder) -> Molt {
    let builder = Molt::builder()
        .env("MOLT_MIN_WORKERS", workers.to_string())
        .args(["run", "--", &python_cmd()]);
    let molt = configure(builder).spawn();
    assert!(
        wait_until(Duration::from_secs(30), || molt.count_log("at=ready")
            >= workers),
        "{workers} worker(s) did not become ready:\n{}",
        molt.log()
    );
    molt
}

/// Starts a request that holds its worker for `ms` and returns once the app has it.
fn hold_worker(port: u16, ms: u64) -> thread::JoinHandle<u16> {
    let mark = temp_path("held");
    let path = format!("/sleep?ms={ms}&mark={}", mark.display());
    let handle =
        thread::spawn(move || get(port, &path).expect("the held request completes").status);
    assert!(
        wait_until(Duration::from_secs(20), || mark.exists()),
        "the held request never reached the app"
    );
    handle
}

#[test]
fn requests_spread_over_workers() {
    // A fixed pool: the scaler would otherwise add workers for the queued requests. One
    // request per worker, as this is about spreading requests that queue.
    let molt = pool(3, |b| {
        b.env("MOLT_MAX_WORKERS", "3")
            .env("MOLT_WORKER_CONCURRENCY", "1")
    });
    let port = molt.port();
    let pids: Vec<String> = (0..6)
        .map(|_| thread::spawn(move || get(port, "/sleep?ms=400").expect("request completes")))
        .collect::<Vec<_>>()
        .into_iter()
        .map(|h| {
            let response = h.join().expect("request thread");
            assert_eq!(response.status, 200);
            response.text()
        })
        .collect();
    let distinct: BTreeSet<_> = pids.iter().collect();
    // Six concurrent requests on three workers of concurrency 1: each worker takes some.
    assert_eq!(distinct.len(), 3, "pids seen: {pids:?}");
}

#[test]
fn port_accepts_while_the_only_worker_boots() {
    let molt = Molt::builder()
        .env("FIXTURE_BOOT_DELAY_MS", "2500")
        .args(["run", "--", &python_cmd()])
        .spawn();
    let port = molt.port();
    assert!(
        wait_until(Duration::from_secs(10), || crate::support::port_open(port)),
        "molt did not bind $PORT"
    );
    // The bind came first: no worker was ready when the port began accepting.
    assert_eq!(molt.count_log("at=ready"), 0, "{}", molt.log());
    let response = get(port, "/pid").expect("the queued request is served");
    assert_eq!(response.status, 200);
    assert!(molt.wait_for_log("at=ready", Duration::from_secs(5)));
}

#[test]
fn bind_can_wait_for_the_first_ready_worker() {
    let molt = Molt::builder()
        .env("FIXTURE_BOOT_DELAY_MS", "1500")
        .env("MOLT_BIND", "ready")
        .args(["run", "--", &python_cmd()])
        .spawn();
    assert!(molt.wait_for_log("at=spawn", Duration::from_secs(10)));
    assert!(
        !crate::support::port_open(molt.port()),
        "bound before any worker was ready"
    );
    assert!(
        molt.wait_for_log("at=listen", Duration::from_secs(20)),
        "{}",
        molt.log()
    );
    assert!(molt.log().find("at=ready") < molt.log().find("at=listen"));
    assert_eq!(get(molt.port(), "/").expect("served").status, 200);
}

/// Deterministic bytes that no simple bug (a repeated block, a shifted offset) reproduces.
fn noise(len: usize) -> Vec<u8> {
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x.to_le_bytes()[0]
        })
        .collect()
}

#[test]
fn ten_megabytes_pass_both_ways_byte_for_byte() {
    let molt = pool(1, |b| b);
    let upload = noise(10 * 1024 * 1024);
    let echoed = request(molt.port(), "POST", "/echo", &[], &upload).expect("upload completes");
    assert_eq!(echoed.status, 200);
    assert_eq!(echoed.body.len(), upload.len());
    assert!(
        echoed.body == upload,
        "the echoed body differs from the upload"
    );

    let len = 10 * 1024 * 1024;
    let download = get(molt.port(), &format!("/download?bytes={len}")).expect("download completes");
    assert_eq!(download.status, 200);
    assert_eq!(download.body.len(), len);
    let expected: Vec<u8> = (0..len)
        .map(|i| u8::try_from(i % 251).expect("below 251"))
        .collect();
    assert!(download.body == expected, "the downloaded body differs");
}

#[test]
fn streamed_response_arrives_before_the_app_finishes() {
    let molt = pool(1, |b| b);
    let release = temp_path("release");
    let mut conn = Conn::open(molt.port()).expect("connect");
    conn.write_request(
        "GET",
        &format!("/stream?chunks=3&wait={}", release.display()),
        &[],
        b"",
    )
    .expect("send");
    let head = conn.read_head().expect("response head");
    assert_eq!(head.status, 200);
    // The app is blocked until `release` exists, so this chunk was streamed, not buffered.
    let first = read_chunk(conn.reader())
        .expect("first chunk")
        .expect("not the end");
    assert_eq!(first, b"chunk 0\n");
    std::fs::write(&release, b"go").expect("write release marker");
    let mut rest = Vec::new();
    while let Some(chunk) = read_chunk(conn.reader()).expect("chunk") {
        rest.extend(chunk);
    }
    assert_eq!(rest, b"chunk 1\nchunk 2\n");
}

#[test]
fn websocket_echo_is_tunnelled() {
    let molt = pool(1, |b| b);
    let mut conn = Conn::open(molt.port()).expect("connect");
    websocket_echoes(&mut conn, false);
}

/// A client that ends its side of a tunnel (shuts down its sending half) is passed on to
/// the worker, which sees the end of stream and closes; molt then closes the client's.
#[test]
fn a_half_close_goes_through_a_tunnel() {
    let molt = pool(1, |b| b);
    let mut conn = Conn::open(molt.port()).expect("connect");
    websocket_echoes(&mut conn, false);
    conn.stream()
        .shutdown(std::net::Shutdown::Write)
        .expect("shut down the sending half");
    conn.stream()
        .set_read_timeout(Some(Duration::from_secs(10)))
        .expect("read timeout");
    let mut rest = Vec::new();
    let read = conn.reader().read_to_end(&mut rest);
    assert!(
        matches!(read, Ok(0)),
        "the worker saw the end of stream and closed: {read:?} after {rest:?}"
    );
}

/// A kept-alive connection left idle (molt holds no buffer for it while it waits) serves
/// again like any other: single requests, pipelined ones, and an upgrade whose first frame
/// comes in the same write as the handshake.
#[test]
fn connection_left_idle_serves_again() {
    /// Long enough for the connection to be waiting, with nothing read, between requests.
    const IDLE: Duration = Duration::from_millis(400);
    let molt = pool(1, |b| b);
    let mut conn = Conn::open(molt.port()).expect("connect");
    assert_eq!(conn.send("GET", "/", &[], b"").expect("first").status, 200);
    thread::sleep(IDLE);
    assert_eq!(
        conn.send("GET", "/", &[], b"").expect("after idle").status,
        200
    );
    thread::sleep(IDLE);
    conn.stream()
        .write_all(b"GET / HTTP/1.1\r\nHost: a\r\n\r\nGET /count HTTP/1.1\r\nHost: a\r\n\r\n")
        .expect("pipelined pair");
    assert_eq!(
        conn.read_response("GET").expect("first of the pair").status,
        200
    );
    assert_eq!(
        conn.read_response("GET")
            .expect("second of the pair")
            .status,
        200
    );
    thread::sleep(IDLE);
    websocket_echoes(&mut conn, true);
}

/// Upgrades `conn` to a WebSocket on the fixture's echo endpoint and checks two frames
/// come back; with `early`, the first frame goes in the same write as the handshake.
fn websocket_echoes(conn: &mut Conn, early: bool) {
    let messages = [&b"hello through molt"[..], &[b'x'; 300][..]];
    let mut handshake =
        b"GET /ws HTTP/1.1\r\nHost: a\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\
        Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n"
            .to_vec();
    if early {
        handshake.extend(masked_text_frame(messages[0]));
    }
    conn.stream().write_all(&handshake).expect("send handshake");
    let head = conn.read_head().expect("handshake response");
    assert_eq!(head.status, 101);
    assert_eq!(
        head.header("sec-websocket-accept"),
        Some("s3pPLMBiTxaQ9kYGzzhZRbK+xOo=")
    );

    for (i, message) in messages.into_iter().enumerate() {
        if !(early && i == 0) {
            conn.stream()
                .write_all(&masked_text_frame(message))
                .expect("send frame");
        }
        assert_eq!(read_text_frame(conn), message);
    }
}

/// Reads one unmasked final text frame from the worker and returns its payload.
fn read_text_frame(conn: &mut Conn) -> Vec<u8> {
    let reader = conn.reader();
    let mut header = [0u8; 2];
    reader.read_exact(&mut header).expect("frame header");
    assert_eq!(header[0], 0x81, "a final text frame");
    let len = match header[1] {
        126 => {
            let mut ext = [0u8; 2];
            reader.read_exact(&mut ext).expect("extended length");
            usize::from(u16::from_be_bytes(ext))
        }
        n => usize::from(n),
    };
    let mut payload = vec![0u8; len];
    reader.read_exact(&mut payload).expect("payload");
    payload
}

/// Regression: a worker may send its first frame in the same write as its 101 (a server
/// that greets on connect); molt reads it with the head and must pass it on first.
#[test]
fn a_frame_sent_with_the_101_reaches_the_client() {
    let molt = pool(1, |b| b);
    let mut conn = Conn::open(molt.port()).expect("connect");
    conn.stream()
        .write_all(
            b"GET /ws?greet=welcome HTTP/1.1\r\nHost: a\r\nConnection: Upgrade\r\n\
            Upgrade: websocket\r\nSec-WebSocket-Version: 13\r\n\
            Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n",
        )
        .expect("send handshake");
    let head = conn.read_head().expect("handshake response");
    assert_eq!(head.status, 101);
    assert_eq!(read_text_frame(&mut conn), b"welcome");
    conn.stream()
        .write_all(&masked_text_frame(b"and then an echo"))
        .expect("send frame");
    assert_eq!(read_text_frame(&mut conn), b"and then an echo");
}

fn masked_text_frame(payload: &[u8]) -> Vec<u8> {
    let mask = [0x12, 0x34, 0x56, 0x78];
    let mut frame = vec![0x81];
    match payload.len() {
        n if n < 126 => frame.push(0x80 | u8::try_from(n).expect("below 126")),
        n => {
            frame.push(0x80 | 0x7E);
            frame.extend(u16::try_from(n).expect("small test frames").to_be_bytes());
        }
    }
    frame.extend(mask);
    frame.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
    frame
}

#[test]
fn hop_by_hop_headers_are_dropped_and_request_start_added() {
    let molt = pool(1, |b| b);
    let mut conn = Conn::open(molt.port()).expect("connect");
    let seen = conn
        .send(
            "GET",
            "/headers",
            &[
                ("Connection", "keep-alive, X-Private"),
                ("X-Private", "only for molt"),
                ("Keep-Alive", "timeout=5"),
                ("X-Request-Id", "req-1"),
                ("X-Forwarded-For", "203.0.113.9"),
            ],
            b"",
        )
        .expect("headers");
    assert_eq!(seen.status, 200);
    let json = seen.text();
    for gone in ["\"connection\"", "\"x-private\"", "\"keep-alive\""] {
        assert!(!json.contains(gone), "{gone} reached the app: {json}");
    }
    assert!(json.contains("\"x-request-id\": \"req-1\""), "{json}");
    // The peer is appended to the client's list (docs/behaviour.md, "What the app sees").
    assert!(
        json.contains("\"x-forwarded-for\": \"203.0.113.9, 127.0.0.1\""),
        "{json}"
    );
    assert!(json.contains("\"x-request-start\": \"t="), "{json}");

    // An existing X-Request-Start (Heroku's router sets one) is kept as it is, and the
    // client connection stayed open for this second request.
    let kept = conn
        .send(
            "GET",
            "/headers",
            &[("X-Request-Start", "1795000000000")],
            b"",
        )
        .expect("second request on the same connection");
    assert!(
        kept.text()
            .contains("\"x-request-start\": \"1795000000000\""),
        "{}",
        kept.text()
    );
}

#[test]
fn full_queue_gives_503_with_retry_after() {
    // One worker only, taking one request at a time: the scaler would otherwise start
    // another for the queue, and a learned limit could let the waiting requests in.
    let molt = pool(1, |b| {
        b.env("MOLT_MAX_QUEUE", "1")
            .env("MOLT_MAX_WORKERS", "1")
            .env("MOLT_WORKER_CONCURRENCY", "1")
    });
    let port = molt.port();
    let held = hold_worker(port, 2000);
    let waiting: Vec<_> = (0..2)
        .map(|_| thread::spawn(move || get(port, "/").expect("answered")))
        .collect();
    let statuses: Vec<_> = waiting
        .into_iter()
        .map(|h| h.join().expect("thread"))
        .collect();
    let rejected: Vec<_> = statuses.iter().filter(|r| r.status == 503).collect();
    assert_eq!(
        rejected.len(),
        1,
        "one of two waiting requests fits the queue of 1"
    );
    assert_eq!(rejected[0].header("retry-after"), Some("1"));
    assert_eq!(rejected[0].text(), "Service Unavailable\n");
    assert!(statuses.iter().any(|r| r.status == 200));
    assert_eq!(held.join().expect("held request"), 200);
    assert!(molt.wait_for_log(
        "at=overload status=503 reason=queue_full queue=1",
        Duration::from_secs(5)
    ));
}

#[test]
fn queue_wait_past_the_timeout_gives_503() {
    // One request at a time, so that the second one must wait.
    let molt = pool(1, |b| {
        b.env("MOLT_QUEUE_TIMEOUT", "300ms")
            .env("MOLT_MAX_WORKERS", "1")
            .env("MOLT_WORKER_CONCURRENCY", "1")
    });
    let held = hold_worker(molt.port(), 3000);
    let response = get(molt.port(), "/").expect("answered");
    assert_eq!(response.status, 503);
    assert_eq!(response.header("retry-after"), Some("1"));
    assert!(molt.wait_for_log(
        "at=overload status=503 reason=queue_timeout",
        Duration::from_secs(5)
    ));
    assert_eq!(held.join().expect("held request"), 200);
    assert_eq!(get(molt.port(), "/").expect("served").status, 200);
}

#[test]
fn crash_fails_only_the_request_that_caused_it() {
    let molt = pool(2, |b| b);
    let port = molt.port();
    let held = hold_worker(port, 1500);
    let crashed = get(port, "/crash").expect("answered");
    assert_eq!(crashed.status, 502);
    assert_eq!(crashed.text(), "Bad Gateway\n");
    assert_eq!(
        held.join().expect("held request"),
        200,
        "the other worker's request failed"
    );
    assert!(
        wait_until(Duration::from_secs(20), || molt.count_log("at=ready") >= 3),
        "no replacement worker:\n{}",
        molt.log()
    );
    // A request that crashes its worker is not handed to another: one worker died.
    assert_eq!(molt.count_log("at=exit"), 1, "{}", molt.log());
    assert!(
        molt.log().contains("status=3 signal=- state=ready"),
        "{}",
        molt.log()
    );
    for _ in 0..4 {
        assert_eq!(get(port, "/").expect("served").status, 200);
    }
}

#[test]
fn refused_connection_is_retried_on_another_worker() {
    let molt = pool(2, |b| b);
    let port = molt.port();
    let pid =
        |response: crate::support::Response| -> u32 { response.text().parse().expect("a pid") };
    // Ties go to the first worker, so it takes both of these.
    let first = pid(get(port, "/pid").expect("served"));
    assert_eq!(get(port, "/unlisten").expect("served").status, 200);
    // The first worker stays alive and routable but refuses connections: every request
    // offered to it must move to the second one, and none may fail.
    let mut answered_by = Vec::new();
    assert!(wait_until(Duration::from_secs(10), || {
        let response = get(port, "/pid").expect("answered");
        if response.status != 200 {
            molt.wait_for_log("status=502", Duration::from_secs(2));
            panic!("{}: {}", response.status, molt.log());
        }
        answered_by.push(pid(response));
        answered_by.last() != Some(&first)
    }));
    for _ in 0..5 {
        let response = get(port, "/pid").expect("answered");
        assert_eq!(response.status, 200, "{}", molt.log());
        assert_ne!(pid(response), first);
    }
    assert!(molt.wait_for_log("at=connect_error worker=1", Duration::from_secs(5)));
}

#[test]
fn slow_upload_does_not_hold_the_only_worker() {
    // One worker of concurrency 1: request buffering is on by default. (With a learned
    // limit of 1: `concurrency::a_slow_upload_holds_no_worker_while_it_takes_one_request_at_a_time`.)
    let molt = pool(1, |b| {
        b.env("MOLT_MAX_WORKERS", "1")
            .env("MOLT_WORKER_CONCURRENCY", "1")
    });
    let mut upload = Conn::open(molt.port()).expect("connect");
    let body = noise(100_000);
    upload
        .stream()
        .write_all(b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 100000\r\n\r\n")
        .expect("send head");
    upload
        .stream()
        .write_all(&body[..1000])
        .expect("send a little");
    // The upload trickles; the worker stays free for others.
    for _ in 0..3 {
        assert_eq!(get(molt.port(), "/pid").expect("served").status, 200);
    }
    upload
        .stream()
        .write_all(&body[1000..])
        .expect("send the rest");
    let echoed = upload.read_response("POST").expect("echo");
    assert_eq!(echoed.status, 200);
    assert!(echoed.body == body, "the buffered body changed");
}

/// Sends `head` then `body` from another thread, ignoring write errors (molt may answer
/// and close before the body is all sent), and reads the response.
fn send_while_reading(port: u16, head: String, body: Vec<u8>) -> crate::support::Response {
    let mut conn = Conn::open(port).expect("connect");
    let mut writer = conn.stream().try_clone().expect("clone the socket");
    let sender = thread::spawn(move || {
        let _ = writer.write_all(head.as_bytes());
        let _ = writer.write_all(&body);
    });
    let response = conn.read_response("POST").expect("a response");
    let _ = sender.join();
    response
}

#[test]
fn bodies_over_max_body_get_413() {
    let molt = pool(1, |b| b.env("MOLT_MAX_BODY", "1MB"));
    let big = noise(2 * 1024 * 1024);
    let head = format!(
        "POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: {}\r\n\r\n",
        big.len()
    );
    let declared = send_while_reading(molt.port(), head, big.clone());
    assert_eq!(declared.status, 413);
    assert_eq!(declared.text(), "Payload Too Large\n");
    // Without a Content-Length the limit holds as the body arrives.
    let mut chunked = Vec::new();
    for piece in big.chunks(64 * 1024) {
        chunked.extend(format!("{:x}\r\n", piece.len()).as_bytes());
        chunked.extend(piece);
        chunked.extend(b"\r\n");
    }
    chunked.extend(b"0\r\n\r\n");
    let head = "POST /echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n".to_owned();
    let streamed = send_while_reading(molt.port(), head, chunked);
    assert_eq!(streamed.status, 413);
    let fits = request(molt.port(), "POST", "/echo", &[], &big[..1024 * 1024]).expect("answered");
    assert_eq!(fits.status, 200);
    assert!(fits.body == big[..1024 * 1024]);
}

#[test]
fn spool_directory_unusable_gives_503_not_a_crash() {
    let molt = pool(1, |b| b.env("TMPDIR", "/nonexistent/molt-spool"));
    // Past the in-memory part, the body would go to a temporary file.
    let response =
        request(molt.port(), "POST", "/echo", &[], &noise(1024 * 1024)).expect("answered");
    assert_eq!(response.status, 503);
    assert!(molt.wait_for_log("at=spool_error", Duration::from_secs(5)));
    assert_eq!(get(molt.port(), "/").expect("served").status, 200);
    let small = request(molt.port(), "POST", "/echo", &[], b"fits in memory").expect("answered");
    assert_eq!(small.text(), "fits in memory");
}
