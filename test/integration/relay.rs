//! Responses read ahead of a slow client: held in memory, then in a temporary file, so
//! that the worker is free before the client has read them.

use std::time::Duration;

use crate::proxy::pool;
use crate::support::{get, Conn, Molt, MoltBuilder};

/// A download larger than molt's memory buffer and both sockets' buffers put together,
/// so that most of it has to wait in molt's temporary file.
const LARGE: usize = 32 * 1024 * 1024;

/// molt with one worker that serves one request at a time, and debug events.
fn one_worker(configure: impl FnOnce(MoltBuilder) -> MoltBuilder) -> Molt {
    pool(1, |b| {
        configure(
            b.env("MOLT_MAX_WORKERS", "1")
                .env("MOLT_WORKER_CONCURRENCY", "1")
                .env("MOLT_LOG", "debug"),
        )
    })
}

/// What the fixture's `/download?bytes=len` sends: byte i is i % 251.
fn download_bytes(len: usize) -> Vec<u8> {
    (0..len)
        .map(|i| u8::try_from(i % 251).expect("below 251"))
        .collect()
}

/// Reads the rest of the response to a `/download` of `len` bytes and checks every byte.
fn read_download(conn: &mut Conn, len: usize) {
    let response = conn.read_response("GET").expect("the download completes");
    assert_eq!(response.status, 200);
    assert_eq!(response.body.len(), len);
    let expected = download_bytes(len);
    let first_difference = response
        .body
        .iter()
        .zip(&expected)
        .position(|(a, b)| a != b);
    assert_eq!(first_difference, None, "the downloaded body differs");
}

#[test]
fn a_client_that_does_not_read_leaves_the_worker_free() {
    let molt = one_worker(|b| b);
    let pid = get(molt.port(), "/pid").expect("served").text();
    let mut slow = Conn::open(molt.port()).expect("connect");
    slow.write_request("GET", &format!("/download?bytes={LARGE}"), &[], b"")
        .expect("request sent");
    // The slow client reads nothing yet. The one worker, of concurrency one, must still
    // serve the next request: its lease went back once it had written the download.
    let next = get(molt.port(), "/pid").expect("served while the download waits");
    assert_eq!(next.status, 200, "{}", molt.log());
    assert_eq!(next.text(), pid);
    assert!(
        molt.wait_for_log("at=response_spooled", Duration::from_secs(10)),
        "{}",
        molt.log()
    );
    read_download(&mut slow, LARGE);
    // The connection to the client is still good for another request.
    let again = slow.send("GET", "/pid", &[], b"").expect("served");
    assert_eq!(again.text(), pid);
}

#[test]
fn a_small_response_to_a_client_that_does_not_read_leaves_the_worker_free() {
    // Small bodies of known length skip the read-ahead relay; they must not hold the
    // worker either.
    let molt = one_worker(|b| b);
    let len = 64 * 1024;
    let mut slow = Conn::open(molt.port()).expect("connect");
    slow.write_request("GET", &format!("/download?bytes={len}"), &[], b"")
        .expect("request sent");
    let next = get(molt.port(), "/pid").expect("served while the download waits");
    assert_eq!(next.status, 200, "{}", molt.log());
    read_download(&mut slow, len);
    // HEAD gets the length and no body, and gives the worker back too.
    let head = slow
        .send("HEAD", &format!("/download?bytes={len}"), &[], b"")
        .expect("served");
    assert_eq!(head.header("content-length"), Some("65536"));
    assert_eq!(get(molt.port(), "/pid").expect("served").status, 200);
}

#[test]
fn an_unusable_spool_directory_still_delivers_the_whole_response() {
    // Regression: a failure to spill must slow the worker down, not fail the response.
    let molt = one_worker(|b| b.env("TMPDIR", "/nonexistent/molt-spool"));
    let mut slow = Conn::open(molt.port()).expect("connect");
    slow.write_request("GET", &format!("/download?bytes={LARGE}"), &[], b"")
        .expect("request sent");
    assert!(
        molt.wait_for_log("at=spool_error", Duration::from_secs(20)),
        "{}",
        molt.log()
    );
    read_download(&mut slow, LARGE);
    assert_eq!(molt.count_log("at=spool_error"), 1, "{}", molt.log());
    assert_eq!(get(molt.port(), "/").expect("served").status, 200);
}
