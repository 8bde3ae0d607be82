//! Checks of the Python fixture app run directly, without molt, so that a failure in a molt
//! test can be trusted to be molt's and not the fixture's.

use std::fs;
use std::io::{BufRead, Read, Write};
use std::net::Shutdown;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use crate::support::{
    e2e_required, fixture_app, free_port, get, pids_with_tag, port_open, python3_available,
    read_chunk, request, signal_pid, temp_path, unique_tag, wait_until, Conn, SIGKILL, SIGTERM,
    TAG_VAR,
};

/// Boot of the Python interpreter on a loaded CI runner, with room to spare.
const BOOT: Duration = Duration::from_secs(20);

/// The fixture app started directly on its own port; killed and reaped on drop.
struct App {
    child: Child,
    port: u16,
    tag: String,
}

impl App {
    /// Starts the app with extra environment and waits for its port, or returns `None` when
    /// python3 is missing and end-to-end tests are not required.
    fn start(envs: &[(&str, &str)]) -> Option<App> {
        if !python3_available() {
            assert!(!e2e_required(), "python3 is required (MOLT_E2E_REQUIRED=1)");
            eprintln!("skipped: python3 is not available");
            return None;
        }
        let port = free_port();
        let tag = unique_tag();
        let child = Command::new("python3")
            .arg(fixture_app())
            .env("PORT", port.to_string())
            .env(TAG_VAR, &tag)
            .envs(envs.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .spawn()
            .expect("python3 ran a moment ago for python3_available");
        let mut app = App { child, port, tag };
        let booted = wait_until(BOOT, || {
            port_open(port) || !matches!(app.child.try_wait(), Ok(None))
        });
        assert!(
            booted && port_open(port),
            "fixture app did not listen on port {port} within {BOOT:?}"
        );
        Some(app)
    }
}

impl Drop for App {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        // The app's own children (from /orphan) carry the tag too.
        for pid in pids_with_tag(&self.tag) {
            signal_pid(pid, SIGKILL);
        }
    }
}

#[test]
fn fixture_serves_pid_keep_alive_echo_and_stream() {
    let Some(app) = App::start(&[]) else { return };
    let port = app.port;

    let response = get(port, "/pid").expect("GET /pid");
    assert_eq!(response.status, 200);
    assert_eq!(response.text(), app.child.id().to_string());

    // Three requests on one connection: the app keeps it alive between them.
    let mut conn = Conn::open(port).expect("connect for keep-alive");
    for _ in 0..3 {
        let response = conn
            .send("GET", "/pid", &[], b"")
            .expect("GET /pid on Conn");
        assert_eq!(response.status, 200);
        assert_eq!(response.text(), app.child.id().to_string());
    }
    let response = conn.send("GET", "/", &[], b"").expect("GET / on Conn");
    assert_eq!(response.text(), "ok\n");
    let response = conn
        .send("GET", "/missing", &[], b"")
        .expect("GET /missing");
    assert_eq!(
        (response.status, response.text().as_str()),
        (404, "not found\n")
    );

    // A 1 MB body comes back unchanged, both with Content-Length and chunked.
    let body: Vec<u8> = (0..1_000_000u32).map(|i| (i % 253) as u8).collect();
    let response = request(port, "POST", "/echo", &[], &body).expect("POST /echo");
    assert_eq!(response.status, 200);
    assert_eq!(
        response.header("content-type"),
        Some("application/octet-stream")
    );
    assert!(
        response.body == body,
        "echoed body differs from the body sent"
    );

    let mut chunked = Vec::new();
    for piece in body.chunks(300_000) {
        write!(chunked, "{:x}\r\n", piece.len()).expect("writing to a Vec cannot fail");
        chunked.extend_from_slice(piece);
        chunked.extend_from_slice(b"\r\n");
    }
    chunked.extend_from_slice(b"0\r\n\r\n");
    let response = conn
        .send(
            "PUT",
            "/echo",
            &[("Transfer-Encoding", "chunked")],
            &chunked,
        )
        .expect("chunked PUT /echo");
    assert!(response.body == body, "echo of a chunked body differs");

    // /download sends byte i = i % 251.
    let response = get(port, "/download?bytes=200000").expect("GET /download");
    assert_eq!(response.body.len(), 200_000);
    assert!(response
        .body
        .iter()
        .enumerate()
        .all(|(i, &b)| b as usize == i % 251));

    // A whole stream, decoded by the client.
    let response = get(port, "/stream?chunks=3").expect("GET /stream");
    assert_eq!(response.header("transfer-encoding"), Some("chunked"));
    assert_eq!(response.text(), "chunk 0\nchunk 1\nchunk 2\n");

    // The same stream read piece by piece: chunk 0 arrives before the rest is released.
    let gate = temp_path("gate");
    let path = format!("/stream?chunks=3&wait={}", gate.display());
    conn.write_request("GET", &path, &[], b"")
        .expect("GET /stream");
    let head = conn.read_head().expect("stream head");
    assert_eq!(head.status, 200);
    let first = read_chunk(conn.reader()).expect("chunk 0");
    assert_eq!(first.as_deref(), Some(&b"chunk 0\n"[..]));
    assert!(
        conn.reader().buffer().is_empty(),
        "chunk 1 came before the gate opened"
    );
    fs::write(&gate, b"").expect("create the gate file in the temp dir");
    let mut rest = Vec::new();
    while let Some(chunk) = read_chunk(conn.reader()).expect("next chunk") {
        rest.extend_from_slice(&chunk);
    }
    let _ = fs::remove_file(&gate);
    assert_eq!(rest, b"chunk 1\nchunk 2\n");

    // The connection is still usable after the stream ended.
    let response = conn.send("GET", "/", &[], b"").expect("GET / after stream");
    assert_eq!(response.text(), "ok\n");
}

#[test]
fn fixture_echoes_headers_and_websocket_frames() {
    let Some(app) = App::start(&[]) else { return };
    let port = app.port;

    let response = request(
        port,
        "GET",
        "/headers",
        &[("X-Twice", "a"), ("X-Twice", "b")],
        b"",
    )
    .expect("GET /headers");
    let text = response.text();
    assert!(text.contains(r#""x-twice": "a, b""#), "headers: {text}");
    assert!(text.contains(r#""host": "localhost""#), "headers: {text}");

    assert_eq!(get(port, "/ws").expect("GET /ws").status, 400);

    // The handshake from RFC 6455 section 1.3, then one masked text frame.
    let mut conn = Conn::open(port).expect("connect for websocket");
    let upgrade = [
        ("Upgrade", "websocket"),
        ("Connection", "Upgrade"),
        ("Sec-WebSocket-Version", "13"),
        ("Sec-WebSocket-Key", "dGhlIHNhbXBsZSBub25jZQ=="),
    ];
    let response = conn
        .send("GET", "/ws", &upgrade, b"")
        .expect("websocket handshake");
    assert_eq!(response.status, 101);
    assert_eq!(
        response.header("sec-websocket-accept"),
        Some("s3pPLMBiTxaQ9kYGzzhZRbK+xOo=")
    );
    let mask = [1u8, 2, 3, 4];
    let mut frame = vec![0x81, 0x80 | 5];
    frame.extend_from_slice(&mask);
    frame.extend(b"hello".iter().zip(mask.iter().cycle()).map(|(b, m)| b ^ m));
    conn.stream().write_all(&frame).expect("send text frame");
    let mut echoed = [0u8; 7];
    conn.reader()
        .read_exact(&mut echoed)
        .expect("read echoed frame");
    assert_eq!(&echoed, b"\x81\x05hello");

    // Close: the app answers with a close frame carrying the same code, then hangs up.
    conn.stream()
        .write_all(&[0x88, 0x82, 0, 0, 0, 0, 0x03, 0xe8])
        .expect("send close frame");
    let mut rest = Vec::new();
    conn.reader()
        .read_to_end(&mut rest)
        .expect("read until close");
    assert_eq!(rest, b"\x88\x02\x03\xe8");
    let _ = conn.stream().shutdown(Shutdown::Both);
}

#[test]
fn fixture_boot_and_signal_knobs() {
    let Some(mut app) = App::start(&[]) else {
        return;
    };
    signal_pid(app.child.id(), SIGTERM);
    let mut status = None;
    wait_until(Duration::from_secs(5), || {
        status = app.child.try_wait().expect("try_wait on our own child");
        status.is_some()
    });
    assert_eq!(
        status.and_then(|s| s.code()),
        Some(0),
        "SIGTERM should exit 0"
    );

    // FIXTURE_IGNORE_TERM=1 survives SIGTERM and keeps serving.
    let Some(app) = App::start(&[("FIXTURE_IGNORE_TERM", "1")]) else {
        return;
    };
    signal_pid(app.child.id(), SIGTERM);
    let response = get(app.port, "/").expect("GET / after an ignored SIGTERM");
    assert_eq!(response.text(), "ok\n");
    drop(app);

    // FIXTURE_EXIT_AT_BOOT=N exits with N, saying so on stderr; no PORT exits with 2.
    let output = Command::new("python3")
        .arg(fixture_app())
        .env("PORT", free_port().to_string())
        .env("FIXTURE_EXIT_AT_BOOT", "7")
        .output()
        .expect("python3 ran for the apps above");
    assert_eq!(output.status.code(), Some(7));
    assert!(String::from_utf8_lossy(&output.stderr).contains("exiting at boot"));
    let output = Command::new("python3")
        .arg(fixture_app())
        .env_remove("PORT")
        .output()
        .expect("python3 ran for the apps above");
    assert_eq!(output.status.code(), Some(2));
    assert!(output
        .stderr
        .lines()
        .any(|line| line.is_ok_and(|l| l.contains("PORT"))));
}
