//! The differential test: what the app reads through molt is what it reads without molt
//! (docs/behaviour.md, "What the app sees" and "What the client gets").
//!
//! Requests: every request of a table (the hostile corpus of `hostile.rs` and the variants
//! below) is sent on raw sockets to real origin servers, each of which echoes how it read
//! the request (`test/fixtures/origins/`): once directly and once through `molt run` in
//! front of the same server (a pool of one worker). For each request, either molt refuses
//! it with its own 4xx or 5xx, or the origin reads the forwarded request as it reads the
//! original, but for molt's documented rewrites, which [`compare_readings`] undoes:
//!
//! - an absolute-form target becomes the origin form, and its authority (without userinfo)
//!   the `Host`; an HTTP/1.0 request without `Host` gets the address the client reached;
//! - the version becomes HTTP/1.1; hop-by-hop headers and those `Connection` names go;
//!   the body is framed afresh (`Content-Length` or chunked), its bytes unchanged;
//! - `X-Forwarded-For` gets the peer appended, `X-Forwarded-Proto`/`-Port` and
//!   `X-Request-Start` are set when absent;
//! - header names holding `_` are dropped: the direct request is sent without them.
//!
//! Any other difference fails the test, which prints the bytes sent and both readings.
//!
//! Responses: a table of responses, written byte for byte by a raw-socket origin, is read
//! by a strict client directly and through molt; the two readings must be equal but for
//! the documented rewrites, or molt answers 502 where the table says a rule makes it.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::io::{self, Read, Write};
use std::net::Shutdown;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::thread;
use std::time::Duration;

use serde_json::Value;

use crate::hostile::{self, Client};
use crate::support::{
    connect, e2e_required, port_open, temp_path, tools_present, wait_until, Molt, ProcessTree,
};

/// Pause between the pieces of an input that comes in pieces.
const PIECE_GAP: Duration = Duration::from_millis(10);

/// Longest wait for a server to answer and close; only a broken exchange waits this long.
const READ_TIMEOUT: Duration = Duration::from_secs(10);

/// What molt logs for every request it refuses (failure.rs).
const REFUSAL_LOG: &str = "at=bad_request";

/// The statuses of molt's refusals; its 502, 503 and 504 are about the worker or the
/// pool, and a request that gets one is a difference.
const REFUSALS: &[u16] = &[400, 408, 413, 414, 431, 501, 505];

/// Longest wait for molt's log line of a refusal, once the reply looks like one.
const REFUSAL_LOG_WAIT: Duration = Duration::from_secs(2);

/// The address every request reaches molt from, as `X-Forwarded-For` must show it.
const PEER: &str = "127.0.0.1";

fn origins_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("test/fixtures/origins")
}

// ---------------------------------------------------------------------------------------
// Origins
// ---------------------------------------------------------------------------------------

/// An echo origin: how to start it on `$PORT`, and how its app sees headers.
struct Origin {
    name: &'static str,
    /// The shell command, run with `PORT` set.
    command: String,
    /// Headers come as WSGI environ keys (`HTTP_X_FOO`) rather than as header names.
    environ: bool,
}

/// A `python3` that can import `module`: the one on PATH, else Debian's, where the
/// system's packages (python3-uvicorn, python3-waitress) are.
fn python_with(module: &str) -> Option<String> {
    ["python3", "/usr/bin/python3"]
        .into_iter()
        .find(|python| {
            Command::new(python)
                .args(["-c", &format!("import {module}")])
                .output()
                .is_ok_and(|out| out.status.success())
        })
        .map(str::to_owned)
}

/// The origins this machine has; one that is missing fails the test when
/// `MOLT_E2E_REQUIRED=1` (`.ci/run` installs them all), and is skipped with a note otherwise.
fn origins() -> Vec<Origin> {
    let dir = origins_dir();
    let dir = dir.display();
    let mut origins = Vec::new();
    if tools_present(&["python3"]) {
        origins.push(Origin {
            name: "http.server",
            command: format!("exec python3 {dir}/http_server_echo.py"),
            environ: false,
        });
    }
    if tools_present(&["node"]) {
        origins.push(Origin {
            name: "node",
            command: format!("exec node {dir}/node_echo.js"),
            environ: false,
        });
    }
    if tools_present(&["gunicorn"]) {
        origins.push(Origin {
            name: "gunicorn",
            command: format!(
                "exec gunicorn -k gthread --threads 4 -b 127.0.0.1:$PORT --chdir {dir} \
                 --log-level warning wsgi_echo:app"
            ),
            environ: true,
        });
    }
    for (name, module, script, environ) in [
        ("uvicorn", "uvicorn", "asgi_echo.py", false),
        ("waitress", "waitress", "wsgi_echo.py", true),
    ] {
        let Some(python) = python_with(module) else {
            assert!(
                !e2e_required(),
                "MOLT_E2E_REQUIRED=1 but no python3 imports {module}: install python3-{module} \
                 (.ci/run does)"
            );
            eprintln!("skipped origin {name}: no python3 imports {module}");
            continue;
        };
        origins.push(Origin {
            name,
            command: format!("exec {python} {dir}/{script}"),
            environ,
        });
    }
    origins
}

/// One origin started directly and one behind molt.
struct Pair {
    direct: ProcessTree,
    molt: Molt,
}

fn start_pair(command: &str, env: &[(&str, &str)]) -> Pair {
    let mut shell = Command::new("sh");
    shell.args(["-c", command]);
    for (key, value) in env {
        shell.env(key, value);
    }
    let mut direct = ProcessTree::start(shell);
    let mut builder = Molt::builder()
        .env("MOLT_MIN_WORKERS", "1")
        .env("MOLT_MAX_WORKERS", "1")
        // gunicorn is a preforking master, which molt would adopt: a plain pool of one
        // worker here, whatever the server.
        .env("MOLT_MODE", "pool")
        .args(["run", "--", command]);
    for (key, value) in env {
        builder = builder.env(key, value);
    }
    let molt = builder.spawn();
    let port = direct.port();
    assert!(
        wait_until(Duration::from_secs(30), || port_open(port)),
        "{command:?} did not listen on {port}:\n{}",
        direct.log()
    );
    assert!(direct.is_running(), "{command:?} exited:\n{}", direct.log());
    assert!(
        wait_until(Duration::from_secs(30), || molt.count_log("at=ready") >= 1),
        "molt's worker {command:?} did not become ready:\n{}",
        molt.log()
    );
    Pair { direct, molt }
}

// ---------------------------------------------------------------------------------------
// Raw exchanges and a strict response reader
// ---------------------------------------------------------------------------------------

/// Sends `pieces`, shuts down the sending half (so that a server that keeps the
/// connection alive still ends it once it has answered), and returns everything read until
/// the server closes.
fn exchange(port: u16, pieces: &[Vec<u8>]) -> Vec<u8> {
    let Ok(mut stream) = connect(port) else {
        return Vec::new();
    };
    let _ = stream.set_read_timeout(Some(READ_TIMEOUT));
    for (i, piece) in pieces.iter().enumerate() {
        if i > 0 {
            thread::sleep(PIECE_GAP);
        }
        // A server may answer and close before the rest is written.
        if stream.write_all(piece).is_err() {
            break;
        }
    }
    let _ = stream.shutdown(Shutdown::Write);
    let mut reply = Vec::new();
    let mut buf = vec![0; 64 * 1024];
    loop {
        match stream.read(&mut buf) {
            Ok(0) | Err(_) => return reply,
            Ok(n) => reply.extend_from_slice(&buf[..n]),
        }
    }
}

/// One response as a strict HTTP/1.1 client reads it (RFC 9112).
#[derive(Debug, Clone, PartialEq, Eq)]
struct Parsed {
    /// Interim (1xx) statuses before the final one.
    interim: Vec<u16>,
    status: u16,
    /// Names lowercased, values as bytes, in order.
    headers: Vec<(String, Vec<u8>)>,
    body: Vec<u8>,
    trailers: Vec<(String, Vec<u8>)>,
}

impl Parsed {
    fn values(&self, name: &str) -> Vec<&[u8]> {
        self.headers
            .iter()
            .filter(|(key, _)| key == name)
            .map(|(_, value)| value.as_slice())
            .collect()
    }
}

/// Where reading one response got to.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Read1 {
    /// A whole response, and the bytes it took.
    Done(Parsed, usize),
    /// More bytes are needed.
    More,
    /// Not a valid response.
    Invalid(String),
}

fn headers_of(raw: &[httparse::Header<'_>]) -> Vec<(String, Vec<u8>)> {
    raw.iter()
        .map(|h| (h.name.to_ascii_lowercase(), h.value.to_vec()))
        .collect()
}

/// Reads one response from the start of `buf`; `eof` says the connection has ended, so
/// that a body delimited by the close is complete and a partial one is invalid.
fn read_one(buf: &[u8], eof: bool, head_request: bool) -> Read1 {
    let incomplete = |what: &str| {
        if eof {
            Read1::Invalid(format!("connection closed in the {what}"))
        } else {
            Read1::More
        }
    };
    let mut pos = 0;
    let mut interim = Vec::new();
    let (status, headers) = loop {
        let mut raw = [httparse::EMPTY_HEADER; 256];
        let mut response = httparse::Response::new(&mut raw);
        match response.parse(&buf[pos..]) {
            Ok(httparse::Status::Complete(n)) => {
                let status = response.code.unwrap_or(0);
                let headers = headers_of(response.headers);
                pos += n;
                if (100..200).contains(&status) && status != 101 {
                    interim.push(status);
                    continue;
                }
                break (status, headers);
            }
            Ok(httparse::Status::Partial) => return incomplete("head"),
            Err(err) => return Read1::Invalid(format!("head: {err}")),
        }
    };
    let values = |name: &str| -> Vec<&[u8]> {
        headers
            .iter()
            .filter(|(key, _)| key == name)
            .map(|(_, v)| v.as_slice())
            .collect()
    };
    // Content-Length: identical values (in one line or several) are one length (RFC 9110
    // 8.6); anything else is invalid.
    let mut lengths = Vec::new();
    for value in values("content-length") {
        for part in value.split(|&b| b == b',') {
            let part = part.trim_ascii();
            let parsed = std::str::from_utf8(part)
                .ok()
                .filter(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()))
                .and_then(|p| p.parse::<u64>().ok());
            match parsed {
                Some(n) => lengths.push(n),
                None => return Read1::Invalid(format!("content-length {part:?}")),
            }
        }
    }
    lengths.dedup();
    if lengths.len() > 1 {
        return Read1::Invalid(format!("conflicting content-length {lengths:?}"));
    }
    let codings: Vec<Vec<u8>> = values("transfer-encoding")
        .iter()
        .flat_map(|v| v.split(|&b| b == b','))
        .map(|c| c.trim_ascii().to_ascii_lowercase())
        .filter(|c| !c.is_empty())
        .collect();
    let bodyless = head_request || status == 204 || status == 304 || status == 101;
    let parsed = Parsed {
        interim,
        status,
        headers: headers.clone(),
        body: Vec::new(),
        trailers: Vec::new(),
    };
    if bodyless {
        return Read1::Done(parsed, pos);
    }
    read_body(buf, pos, eof, parsed, &codings, lengths.first().copied())
}

/// Reads the body of `parsed`, whose head ended at `pos`, framed by `codings` or `length`.
fn read_body(
    buf: &[u8],
    mut pos: usize,
    eof: bool,
    mut parsed: Parsed,
    codings: &[Vec<u8>],
    length: Option<u64>,
) -> Read1 {
    let incomplete = |what: &str| {
        if eof {
            Read1::Invalid(format!("connection closed in the {what}"))
        } else {
            Read1::More
        }
    };
    if !codings.is_empty() {
        // RFC 9112 6.3: both is an error a client ought to handle as one.
        if length.is_some() {
            return Read1::Invalid("content-length and transfer-encoding".to_owned());
        }
        if codings != [b"chunked".to_vec()] {
            return Read1::Invalid(format!(
                "transfer coding {:?}",
                codings
                    .iter()
                    .map(|c| String::from_utf8_lossy(c))
                    .collect::<Vec<_>>()
            ));
        }
        loop {
            match httparse::parse_chunk_size(&buf[pos..]) {
                Ok(httparse::Status::Complete((n, size))) => {
                    pos += n;
                    let Ok(size) = usize::try_from(size) else {
                        return Read1::Invalid("chunk size".to_owned());
                    };
                    if size == 0 {
                        let mut raw = [httparse::EMPTY_HEADER; 64];
                        match httparse::parse_headers(&buf[pos..], &mut raw) {
                            Ok(httparse::Status::Complete((n, trailers))) => {
                                parsed.trailers = headers_of(trailers);
                                return Read1::Done(parsed, pos + n);
                            }
                            Ok(httparse::Status::Partial) => return incomplete("trailers"),
                            Err(err) => return Read1::Invalid(format!("trailers: {err}")),
                        }
                    }
                    if buf.len() < pos + size + 2 {
                        return incomplete("chunked body");
                    }
                    parsed.body.extend_from_slice(&buf[pos..pos + size]);
                    if &buf[pos + size..pos + size + 2] != b"\r\n" {
                        return Read1::Invalid("chunk without its CRLF".to_owned());
                    }
                    pos += size + 2;
                }
                Ok(httparse::Status::Partial) => return incomplete("chunk size"),
                Err(err) => return Read1::Invalid(format!("chunk size: {err}")),
            }
        }
    }
    if let Some(length) = length {
        let Ok(length) = usize::try_from(length) else {
            return Read1::Invalid("content-length".to_owned());
        };
        if buf.len() < pos + length {
            return incomplete("body");
        }
        parsed.body = buf[pos..pos + length].to_vec();
        return Read1::Done(parsed, pos + length);
    }
    // Delimited by the close.
    if !eof {
        return Read1::More;
    }
    parsed.body = buf[pos..].to_vec();
    Read1::Done(parsed, buf.len())
}

/// Every response in `reply` (read to the close), in order, and how the rest failed to
/// parse, if it did.
fn read_all(reply: &[u8]) -> (Vec<Parsed>, Option<String>) {
    let mut responses = Vec::new();
    let mut pos = 0;
    while pos < reply.len() {
        match read_one(&reply[pos..], true, false) {
            Read1::Done(parsed, n) => {
                responses.push(parsed);
                pos += n;
            }
            Read1::More => unreachable!("eof is known"),
            Read1::Invalid(why) => return (responses, Some(why)),
        }
    }
    (responses, None)
}

/// Whether a response is one of molt's own: a status and its reason, nothing else
/// (docs/behaviour.md). No origin here answers like that: theirs carry a `Server`
/// header, an HTML page, or no body.
fn is_molt_own(response: &Parsed) -> bool {
    let reason = hyper_reason(response.status);
    response.status >= 400
        && response.values("server").is_empty()
        && response.values("content-type") == [b"text/plain; charset=utf-8".as_slice()]
        && response.body == format!("{reason}\n").as_bytes()
}

fn hyper_reason(status: u16) -> &'static str {
    hyper::StatusCode::from_u16(status)
        .ok()
        .and_then(|s| s.canonical_reason())
        .unwrap_or("Error")
}

/// Bytes shown as a Rust byte string, cut at `limit`.
fn show_bytes(bytes: &[u8], limit: usize) -> String {
    let shown: String = bytes
        .iter()
        .take(limit)
        .flat_map(|&b| std::ascii::escape_default(b))
        .map(char::from)
        .collect();
    if bytes.len() > limit {
        format!("b\"{shown}\"... ({} bytes)", bytes.len())
    } else {
        format!("b\"{shown}\"")
    }
}

// ---------------------------------------------------------------------------------------
// Requests: the table
// ---------------------------------------------------------------------------------------

/// A request of the table: its name and the pieces written.
struct Sent {
    name: String,
    pieces: Vec<Vec<u8>>,
}

fn sent(name: &str, raw: &[u8]) -> Sent {
    Sent {
        name: name.to_owned(),
        pieces: vec![raw.to_vec()],
    }
}

/// `POST /b` with `body` framed by a length.
fn with_length(body: &[u8]) -> Vec<u8> {
    let mut raw = format!(
        "POST /b HTTP/1.1\r\nHost: a\r\nContent-Length: {}\r\n\r\n",
        body.len()
    )
    .into_bytes();
    raw.extend_from_slice(body);
    raw
}

/// `POST /b` with `body` sent in chunks of `chunk` bytes.
fn chunked(body: &[u8], chunk: usize) -> Vec<u8> {
    let mut raw = b"POST /b HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec();
    for part in body.chunks(chunk) {
        raw.extend_from_slice(format!("{:x}\r\n", part.len()).as_bytes());
        raw.extend_from_slice(part);
        raw.extend_from_slice(b"\r\n");
    }
    raw.extend_from_slice(b"0\r\n\r\n");
    raw
}

/// Every byte value, for bodies that must pass unchanged.
fn all_bytes(times: usize) -> Vec<u8> {
    (0..=255u8).cycle().take(256 * times).collect()
}

/// The variants of this test's own: request lines, headers, HTTP/1.0, absolute forms,
/// bodies, pipelining. Every request ends its connection (`Connection: close`, HTTP/1.0,
/// or the client's half-close).
#[allow(clippy::too_many_lines)]
fn variants() -> Vec<Sent> {
    let simple: &[(&str, &[u8])] = &[
        // -- Request lines
        ("get_root", b"GET / HTTP/1.1\r\nHost: a\r\n\r\n"),
        ("get_with_query", b"GET /p?a=1&b=2&a=3 HTTP/1.1\r\nHost: a\r\n\r\n"),
        ("percent_encoded_path", b"GET /a%20b/%2F/x?q=%41%zz HTTP/1.1\r\nHost: a\r\n\r\n"),
        ("utf8_percent_path", b"GET /caf%C3%A9 HTTP/1.1\r\nHost: a\r\n\r\n"),
        ("dot_segments", b"GET /a/../b/./c HTTP/1.1\r\nHost: a\r\n\r\n"),
        ("double_slashes", b"GET //x//y HTTP/1.1\r\nHost: a\r\n\r\n"),
        ("path_parameters", b"GET /a;b=c/d HTTP/1.1\r\nHost: a\r\n\r\n"),
        ("empty_query", b"GET /x? HTTP/1.1\r\nHost: a\r\n\r\n"),
        ("query_only_question_marks", b"GET /x??y=1 HTTP/1.1\r\nHost: a\r\n\r\n"),
        ("query_with_specials", b"GET /?q=a:b@c!$&'()*+,;= HTTP/1.1\r\nHost: a\r\n\r\n"),
        ("query_with_slashes", b"GET /?next=/a/b HTTP/1.1\r\nHost: a\r\n\r\n"),
        ("fragment_in_target", b"GET /a#frag HTTP/1.1\r\nHost: a\r\n\r\n"),
        ("delete_method", b"DELETE /r/1 HTTP/1.1\r\nHost: a\r\n\r\n"),
        ("options_path", b"OPTIONS /x HTTP/1.1\r\nHost: a\r\n\r\n"),
        ("options_asterisk", b"OPTIONS * HTTP/1.1\r\nHost: a\r\n\r\n"),
        ("extension_method", b"PURGE /cache HTTP/1.1\r\nHost: a\r\n\r\n"),
        ("method_with_dash", b"M-SEARCH / HTTP/1.1\r\nHost: a\r\n\r\n"),
        ("webdav_method", b"PROPFIND /d HTTP/1.1\r\nHost: a\r\nDepth: 1\r\n\r\n"),
        // -- HTTP/1.0
        ("http_1_0_without_host", b"GET /x HTTP/1.0\r\n\r\n"),
        ("http_1_0_with_host", b"GET /x HTTP/1.0\r\nHost: a.example\r\n\r\n"),
        ("http_1_0_keep_alive_without_host", b"GET /x HTTP/1.0\r\nConnection: keep-alive\r\n\r\n"),
        ("http_1_0_query_without_host", b"GET /x?y=1 HTTP/1.0\r\nUser-Agent: probe\r\n\r\n"),
        ("http_1_0_post", b"POST /b HTTP/1.0\r\nContent-Length: 3\r\n\r\nabc"),
        ("http_1_0_post_with_host", b"POST /b HTTP/1.0\r\nHost: a\r\nContent-Length: 3\r\n\r\nabc"),
        ("http_1_0_absolute_form", b"GET http://a.example/x HTTP/1.0\r\n\r\n"),
        ("http_1_0_absolute_with_userinfo", b"GET http://u:p@a.example:81/x HTTP/1.0\r\n\r\n"),
        ("http_1_0_forwarded_for", b"GET / HTTP/1.0\r\nX-Forwarded-For: 9.9.9.9\r\n\r\n"),
        ("http_1_0_connection_close", b"GET / HTTP/1.0\r\nConnection: close\r\n\r\n"),
        ("http_1_0_ipv6_host", b"GET / HTTP/1.0\r\nHost: [::1]:8080\r\n\r\n"),
        // -- Absolute forms (RFC 9112 3.2.2)
        ("absolute_form", b"GET http://example.com/p HTTP/1.1\r\nHost: other\r\n\r\n"),
        ("absolute_form_same_host", b"GET http://example.com/p HTTP/1.1\r\nHost: example.com\r\n\r\n"),
        ("absolute_form_with_port_and_query", b"GET http://example.com:8080/p?q=1 HTTP/1.1\r\nHost: example.com:8080\r\n\r\n"),
        ("absolute_form_with_userinfo", b"GET http://user:secret@example.com:1234/p HTTP/1.1\r\nHost: example.com:1234\r\n\r\n"),
        ("absolute_form_with_user_only", b"GET http://user@example.com/p HTTP/1.1\r\nHost: example.com\r\n\r\n"),
        ("absolute_form_https", b"GET https://example.com/p HTTP/1.1\r\nHost: example.com\r\n\r\n"),
        ("absolute_form_without_path", b"GET http://example.com HTTP/1.1\r\nHost: example.com\r\n\r\n"),
        ("absolute_form_uppercase_scheme", b"GET HTTP://EXAMPLE.com/P HTTP/1.1\r\nHost: example.com\r\n\r\n"),
        ("absolute_form_ipv6", b"GET http://[::1]:8080/p HTTP/1.1\r\nHost: [::1]:8080\r\n\r\n"),
        ("absolute_form_post", b"POST http://example.com/b HTTP/1.1\r\nHost: example.com\r\nContent-Length: 3\r\n\r\nabc"),
        // -- Host
        ("host_with_port", b"GET / HTTP/1.1\r\nHost: a.example:8080\r\n\r\n"),
        ("host_uppercase", b"GET / HTTP/1.1\r\nHost: EXAMPLE.Com\r\n\r\n"),
        ("host_trailing_dot", b"GET / HTTP/1.1\r\nHost: a.example.\r\n\r\n"),
        ("host_empty_port", b"GET / HTTP/1.1\r\nHost: a:\r\n\r\n"),
        ("host_ip", b"GET / HTTP/1.1\r\nHost: 127.0.0.1:5000\r\n\r\n"),
        ("host_surrounded_by_spaces", b"GET / HTTP/1.1\r\nHost:   a   \r\n\r\n"),
        ("host_after_other_headers", b"GET / HTTP/1.1\r\nX-A: 1\r\nHost: a\r\n\r\n"),
        // -- Header names and values
        ("duplicate_header", b"GET / HTTP/1.1\r\nHost: a\r\nX-A: 1\r\nX-A: 2\r\n\r\n"),
        ("interleaved_duplicates", b"GET / HTTP/1.1\r\nHost: a\r\nX-A: 1\r\nX-B: 2\r\nX-A: 3\r\n\r\n"),
        ("mixed_case_name", b"GET / HTTP/1.1\r\nHost: a\r\nx-MiXeD-cAsE: v\r\n\r\n"),
        ("value_with_trailing_spaces", b"GET / HTTP/1.1\r\nHost: a\r\nX-A: v   \r\n\r\n"),
        ("value_with_inner_spaces_and_tabs", b"GET / HTTP/1.1\r\nHost: a\r\nX-A: a  b\t c\r\n\r\n"),
        ("empty_value", b"GET / HTTP/1.1\r\nHost: a\r\nX-Empty:\r\n\r\n"),
        ("value_without_space_after_colon", b"GET / HTTP/1.1\r\nHost: a\r\nX-A:v\r\n\r\n"),
        ("high_bytes_in_value", b"GET / HTTP/1.1\r\nHost: a\r\nX-A: caf\xe9 \xff\r\n\r\n"),
        ("quotes_and_commas_in_value", b"GET / HTTP/1.1\r\nHost: a\r\nX-A: \"a, b\", c\r\n\r\n"),
        ("cookies_on_two_lines", b"GET / HTTP/1.1\r\nHost: a\r\nCookie: a=1\r\nCookie: b=2\r\n\r\n"),
        ("common_headers", b"GET / HTTP/1.1\r\nHost: a\r\nUser-Agent: t/1\r\nAccept: */*\r\nAccept-Encoding: gzip\r\nAuthorization: Bearer x\r\nReferer: http://r/\r\n\r\n"),
        ("content_type_on_get", b"GET / HTTP/1.1\r\nHost: a\r\nContent-Type: text/plain\r\n\r\n"),
        ("token_chars_in_name", b"GET / HTTP/1.1\r\nHost: a\r\nX!#$%&'*+.^`|~: v\r\n\r\n"),
        ("digit_name", b"GET / HTTP/1.1\r\nHost: a\r\n123: v\r\n\r\n"),
        // -- Hop-by-hop (RFC 9110 7.6.1)
        ("connection_names_a_header", b"GET / HTTP/1.1\r\nHost: a\r\nConnection: keep-alive, X-Secret\r\nX-Secret: 1\r\n\r\n"),
        ("connection_after_the_header_it_names", b"GET / HTTP/1.1\r\nHost: a\r\nX-Secret: 1\r\nConnection: keep-alive, X-Secret\r\n\r\n"),
        ("connection_close_names_host", b"GET / HTTP/1.1\r\nHost: a\r\nConnection: close, host\r\n\r\n"),
        ("keep_alive_and_te", b"GET / HTTP/1.1\r\nHost: a\r\nKeep-Alive: timeout=5\r\nTE: trailers\r\n\r\n"),
        ("proxy_connection", b"GET / HTTP/1.1\r\nHost: a\r\nProxy-Connection: keep-alive\r\n\r\n"),
        ("upgrade_without_connection_upgrade", b"GET / HTTP/1.1\r\nHost: a\r\nUpgrade: h2c\r\n\r\n"),
        ("trailer_header", b"GET / HTTP/1.1\r\nHost: a\r\nTrailer: X-T\r\n\r\n"),
        // -- Underscores (dropped)
        ("underscore_header", b"GET / HTTP/1.1\r\nHost: a\r\nX_Custom: 1\r\n\r\n"),
        ("underscore_forwarded_for", b"GET / HTTP/1.1\r\nHost: a\r\nX_Forwarded_For: 6.6.6.6\r\n\r\n"),
        ("underscore_beside_dash", b"GET / HTTP/1.1\r\nHost: a\r\nMy_Header: evil\r\nMy-Header: good\r\n\r\n"),
        ("underscore_content_length", b"POST /b HTTP/1.1\r\nHost: a\r\nContent_Length: 5\r\nContent-Length: 3\r\n\r\nabc"),
        ("underscore_host", b"GET / HTTP/1.1\r\nHost: a\r\nX_Host: b\r\n\r\n"),
        // -- X-Forwarded-* and the headers molt adds
        ("forwarded_for", b"GET / HTTP/1.1\r\nHost: a\r\nX-Forwarded-For: 1.2.3.4\r\n\r\n"),
        ("forwarded_for_list", b"GET / HTTP/1.1\r\nHost: a\r\nX-Forwarded-For: 1.2.3.4, 5.6.7.8\r\n\r\n"),
        ("forwarded_for_two_lines", b"GET / HTTP/1.1\r\nHost: a\r\nX-Forwarded-For: 1.2.3.4\r\nX-Forwarded-For: 5.6.7.8\r\n\r\n"),
        ("forwarded_for_empty", b"GET / HTTP/1.1\r\nHost: a\r\nX-Forwarded-For:\r\n\r\n"),
        ("forwarded_for_named_by_connection", b"GET / HTTP/1.1\r\nHost: a\r\nConnection: x-forwarded-for\r\nX-Forwarded-For: 1.2.3.4\r\n\r\n"),
        ("forwarded_proto_and_port", b"GET / HTTP/1.1\r\nHost: a\r\nX-Forwarded-Proto: https\r\nX-Forwarded-Port: 443\r\n\r\n"),
        ("heroku_router_headers", b"GET / HTTP/1.1\r\nHost: app.herokuapp.com\r\nX-Forwarded-For: 203.0.113.9\r\nX-Forwarded-Proto: https\r\nX-Forwarded-Port: 443\r\nX-Request-Id: 3f2a\r\nX-Request-Start: 1700000000000\r\nVia: 1.1 vegur\r\n\r\n"),
        ("request_start_given", b"GET / HTTP/1.1\r\nHost: a\r\nX-Request-Start: t=123\r\n\r\n"),
        ("forwarded_header_passes", b"GET / HTTP/1.1\r\nHost: a\r\nForwarded: for=192.0.2.1;proto=https\r\n\r\n"),
        // -- Bodies
        ("empty_length_body", b"POST /b HTTP/1.1\r\nHost: a\r\nContent-Length: 0\r\n\r\n"),
        ("get_with_a_length_body", b"GET / HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\n\r\nabc"),
        ("delete_with_a_body", b"DELETE / HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\n\r\nabc"),
        ("form_body", b"POST /f HTTP/1.1\r\nHost: a\r\nContent-Type: application/x-www-form-urlencoded\r\nContent-Length: 7\r\n\r\na=1&b=2"),
        ("chunked_one_chunk", b"POST /b HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n"),
        ("chunked_empty", b"POST /b HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n"),
        ("chunked_uppercase_hex", b"POST /b HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\nA\r\n0123456789\r\n0\r\n\r\n"),
        ("chunked_leading_zeros", b"POST /b HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n0003\r\nabc\r\n0\r\n\r\n"),
        ("chunked_with_extensions", b"POST /b HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n3;a=b;c\r\nabc\r\n0;z\r\n\r\n"),
        ("chunked_with_trailers", b"POST /b HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nTrailer: X-T\r\n\r\n3\r\nabc\r\n0\r\nX-T: 1\r\n\r\n"),
        ("chunked_with_content_type", b"POST /b HTTP/1.1\r\nHost: a\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n2\r\n{}\r\n0\r\n\r\n"),
        ("expect_continue_with_body", b"POST /b HTTP/1.1\r\nHost: a\r\nExpect: 100-continue\r\nContent-Length: 3\r\n\r\nabc"),
        // -- Pipelining (RFC 9112 9.3.2)
        ("two_pipelined_gets", b"GET /1 HTTP/1.1\r\nHost: a\r\n\r\nGET /2 HTTP/1.1\r\nHost: a\r\n\r\n"),
        ("pipelined_get_post_get", b"GET /1 HTTP/1.1\r\nHost: a\r\n\r\nPOST /2 HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\n\r\nabcGET /3 HTTP/1.1\r\nHost: a\r\n\r\n"),
        ("pipelined_chunked_then_length", b"POST /1 HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\nPOST /2 HTTP/1.1\r\nHost: a\r\nContent-Length: 2\r\n\r\nde"),
        ("pipelined_different_hosts", b"GET /1 HTTP/1.1\r\nHost: a\r\n\r\nGET /2 HTTP/1.1\r\nHost: b\r\n\r\n"),
        ("pipelined_absolute_forms", b"GET http://x.example/1 HTTP/1.1\r\nHost: x.example\r\n\r\nGET http://y.example/2 HTTP/1.1\r\nHost: y.example\r\n\r\n"),
        ("pipelined_forwarded_for", b"GET /1 HTTP/1.1\r\nHost: a\r\nX-Forwarded-For: 1.1.1.1\r\n\r\nGET /2 HTTP/1.1\r\nHost: a\r\n\r\n"),
        ("http_1_0_keep_alive_then_http_1_1", b"GET /1 HTTP/1.0\r\nConnection: keep-alive\r\n\r\nGET /2 HTTP/1.1\r\nHost: a\r\n\r\n"),
        ("pipelined_underscores", b"GET /1 HTTP/1.1\r\nHost: a\r\nX_A: 1\r\n\r\nGET /2 HTTP/1.1\r\nHost: a\r\nX-A: 2\r\n\r\n"),
    ];
    let mut table: Vec<Sent> = simple.iter().map(|(name, raw)| sent(name, raw)).collect();
    table.push(sent("binary_length_body", &with_length(&all_bytes(4))));
    table.push(sent("large_length_body", &with_length(&all_bytes(400))));
    table.push(sent("binary_chunked_body", &chunked(&all_bytes(4), 100)));
    table.push(sent(
        "large_chunked_body",
        &chunked(&all_bytes(800), 50_000),
    ));
    table.push(sent("many_small_chunks", &chunked(&all_bytes(1), 1)));
    let mut long_value = b"GET / HTTP/1.1\r\nHost: a\r\nX-Long: ".to_vec();
    long_value.extend(std::iter::repeat_n(b'v', 8000));
    long_value.extend_from_slice(b"\r\n\r\n");
    table.push(sent("header_value_of_8000_bytes", &long_value));
    let mut many = b"GET / HTTP/1.1\r\nHost: a\r\n".to_vec();
    for i in 0..60 {
        many.extend_from_slice(format!("X-H{i}: {i}\r\n").as_bytes());
    }
    many.extend_from_slice(b"\r\n");
    table.push(sent("sixty_headers", &many));
    let mut ten = Vec::new();
    for i in 0..10 {
        ten.extend_from_slice(format!("GET /{i} HTTP/1.1\r\nHost: a\r\n\r\n").as_bytes());
    }
    table.push(sent("ten_pipelined_gets", &ten));
    table.push(Sent {
        name: "length_body_in_pieces".to_owned(),
        pieces: vec![
            b"POST /b HTTP/1.1\r\nHost: a\r\nContent-Le".to_vec(),
            b"ngth: 6\r\n\r\nab".to_vec(),
            b"cdef".to_vec(),
        ],
    });
    table
}

/// The whole request table: the hostile corpus (cases whose client sends and reads;
/// `MOLT_*` settings of a case are for its own molt and not used here) and the variants.
fn request_table() -> Vec<Sent> {
    let mut table: Vec<Sent> = hostile::corpus()
        .into_iter()
        .filter(|case| matches!(case.client, Client::Reads | Client::HalfCloses))
        .map(|case| Sent {
            name: format!("hostile::{}", case.name),
            pieces: case.input.pieces,
        })
        .collect();
    table.extend(variants());
    table
}

/// The request as sent directly: molt drops header names holding `_` (the documented
/// rewrite), so the origin's reading of the original without them is what it must read
/// through molt.
fn without_underscore_headers(pieces: &[Vec<u8>]) -> Vec<Vec<u8>> {
    let is_token = |b: u8| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b);
    pieces
        .iter()
        .map(|piece| {
            let mut out = Vec::with_capacity(piece.len());
            for line in piece.split_inclusive(|&b| b == b'\n') {
                let name = line.split(|&b| b == b':').next().unwrap_or(&[]);
                let header_with_underscore = name.len() < line.len()
                    && !name.is_empty()
                    && name.iter().all(|&b| is_token(b))
                    && name.contains(&b'_');
                if !header_with_underscore {
                    out.extend_from_slice(line);
                }
            }
            out
        })
        .collect()
}

// ---------------------------------------------------------------------------------------
// Requests: readings and their comparison
// ---------------------------------------------------------------------------------------

/// How an origin read one request, from its echo.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Reading {
    method: String,
    target: String,
    version: String,
    /// Header names normalised (lowercase; an environ key `HTTP_X_FOO` as `x-foo`), in
    /// the order the app got them.
    headers: Vec<(String, String)>,
    vars: Vec<(String, String)>,
    body: String,
}

impl Reading {
    fn from_echo(response: &Parsed, environ: bool) -> Option<Reading> {
        if response.status != 200 {
            return None;
        }
        let json: Value = serde_json::from_slice(&response.body).ok()?;
        let text = |key: &str| json.get(key)?.as_str().map(str::to_owned);
        let pairs = |key: &str| -> Option<Vec<(String, String)>> {
            json.get(key)?
                .as_array()?
                .iter()
                .map(|pair| {
                    Some((
                        pair.get(0)?.as_str()?.to_owned(),
                        pair.get(1)?.as_str()?.to_owned(),
                    ))
                })
                .collect()
        };
        // A field value is what lies between the whitespace around it (RFC 9112 5.1),
        // which some servers keep and molt does not forward.
        let headers = pairs("headers")?
            .into_iter()
            .map(|(name, value)| {
                let value = value.trim_matches([' ', '\t']).to_owned();
                (header_key(&name, environ), value)
            })
            .collect();
        Some(Reading {
            method: text("method")?,
            target: text("target")?,
            version: text("version")?,
            headers,
            vars: pairs("vars")?,
            body: text("body")?,
        })
    }

    fn values(&self, name: &str) -> Vec<&str> {
        self.headers
            .iter()
            .filter(|(key, _)| key == name)
            .map(|(_, value)| value.as_str())
            .collect()
    }

    /// The comma-separated elements of every `name` header.
    fn elements(&self, name: &str) -> Vec<String> {
        self.values(name)
            .iter()
            .flat_map(|v| v.split(','))
            .map(|e| e.trim().to_owned())
            .filter(|e| !e.is_empty())
            .collect()
    }
}

/// A header's name as the comparison knows it: lowercase, and an environ key mapped back
/// to the header it came from (`HTTP_X_FOO` is `x-foo`).
fn header_key(name: &str, environ: bool) -> String {
    if !environ {
        return name.to_ascii_lowercase();
    }
    let bare = name.strip_prefix("HTTP_").unwrap_or(name);
    bare.to_ascii_lowercase().replace('_', "-")
}

/// The origin form of an absolute-form target (RFC 9112 3.2.2), and its authority.
fn split_absolute(target: &str) -> Option<(String, String)> {
    let lower = target.to_ascii_lowercase();
    let rest = ["http://", "https://"]
        .iter()
        .find_map(|scheme| lower.starts_with(scheme).then(|| &target[scheme.len()..]))?;
    let end = rest.find(['/', '?']).unwrap_or(rest.len());
    let (authority, origin) = rest.split_at(end);
    let origin = if origin.starts_with('/') {
        origin.to_owned()
    } else {
        format!("/{origin}")
    };
    Some((origin, authority.to_owned()))
}

/// Headers about one connection, which molt does not forward (RFC 9110 7.6.1), and the
/// ones it frames afresh or adds.
const REWRITTEN: &[&str] = &[
    "connection",
    "keep-alive",
    "proxy-connection",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
    "content-length",
    "x-forwarded-for",
    "x-forwarded-proto",
    "x-forwarded-port",
    "x-request-start",
];

/// Compares the origin's reading of the request sent directly (`direct`) with its
/// reading of the same request through molt (`via`), undoing the documented rewrites;
/// `molt_port` is the port the client reached molt on.
fn compare_readings(direct: &Reading, via: &Reading, molt_port: u16) -> Result<(), String> {
    let mut differences = Vec::new();
    let mut differ = |what: &str, d: &dyn std::fmt::Debug, v: &dyn std::fmt::Debug| {
        differences.push(format!(
            "{what}: from the direct reading {d:?}, through molt {v:?}"
        ));
    };
    let absolute = split_absolute(&direct.target);
    let expected_target = absolute
        .as_ref()
        .map_or(direct.target.clone(), |(origin, _)| origin.clone());
    if via.target != expected_target {
        differ("target", &expected_target, &via.target);
    }
    if via.method != direct.method {
        differ("method", &direct.method, &via.method);
    }
    if via.body != direct.body {
        differ("body", &direct.body, &via.body);
    }
    // What a server derives from an absolute target (uvicorn's `path`, WSGI's
    // `PATH_INFO`) is derived through molt from its origin form.
    let expected_vars: Vec<(String, String)> = direct
        .vars
        .iter()
        .map(|(key, value)| match (&absolute, split_absolute(value)) {
            (Some(_), Some((origin, _))) => {
                let path = origin.split('?').next().unwrap_or("/");
                (key.clone(), path.to_owned())
            }
            (Some(_), None) if key == "PATH_INFO" && value.is_empty() => {
                (key.clone(), "/".to_owned())
            }
            _ => (key.clone(), value.clone()),
        })
        .collect();
    if via.vars != expected_vars {
        differ("vars", &expected_vars, &via.vars);
    }
    let connection_named: Vec<String> = direct
        .elements("connection")
        .into_iter()
        .map(|e| e.to_ascii_lowercase())
        .filter(|e| e != "host")
        .collect();
    let host_rewritten = absolute.is_some() || direct.values("host").is_empty();
    let compared = |reading: &Reading| -> Vec<(String, String)> {
        let mut kept: Vec<(String, String)> = reading
            .headers
            .iter()
            .filter(|(key, _)| {
                !(REWRITTEN.contains(&key.as_str())
                    || connection_named.contains(key)
                    || (host_rewritten && key == "host"))
            })
            .cloned()
            .collect();
        // The order within one name is kept; across names it need not be.
        kept.sort_by(|a, b| a.0.cmp(&b.0));
        kept
    };
    let (direct_headers, via_headers) = (compared(direct), compared(via));
    if direct_headers != via_headers {
        differ("headers", &direct_headers, &via_headers);
    }
    // What Connection names is gone, wherever the Connection line stood, but for what
    // molt frames or sets itself.
    for name in connection_named
        .iter()
        .filter(|name| !REWRITTEN.contains(&name.as_str()))
    {
        let reached = via.values(name);
        if !reached.is_empty() {
            differ(
                &format!("{name}, which Connection names"),
                &direct.values(name),
                &reached,
            );
        }
    }
    check_added(
        direct,
        via,
        absolute.as_ref(),
        &connection_named,
        molt_port,
        &mut differ,
    );
    if differences.is_empty() {
        Ok(())
    } else {
        Err(differences.join("\n    "))
    }
}

/// Checks what molt adds or rewrites for what it must be: `Host`, `X-Forwarded-*`,
/// `X-Request-Start`.
fn check_added(
    direct: &Reading,
    via: &Reading,
    absolute: Option<&(String, String)>,
    connection_named: &[String],
    molt_port: u16,
    differ: &mut dyn FnMut(&str, &dyn std::fmt::Debug, &dyn std::fmt::Debug),
) {
    let kept_by_molt = |name: &str| !connection_named.iter().any(|n| n == name);
    let host = via.values("host");
    if let Some((_, authority)) = absolute {
        let expected = authority
            .rsplit_once('@')
            .map_or(authority.as_str(), |(_, h)| h);
        if host != [expected] {
            differ("host from the absolute target", &expected, &host);
        }
    } else if direct.values("host").is_empty() {
        let expected = format!("127.0.0.1:{molt_port}");
        if host != [expected.as_str()] {
            differ("host added to HTTP/1.0", &expected, &host);
        }
    }
    let mut forwarded_for = if kept_by_molt("x-forwarded-for") {
        direct.elements("x-forwarded-for")
    } else {
        Vec::new()
    };
    forwarded_for.push(PEER.to_owned());
    if via.elements("x-forwarded-for") != forwarded_for {
        differ(
            "x-forwarded-for",
            &forwarded_for,
            &via.values("x-forwarded-for"),
        );
    }
    let molt_port = molt_port.to_string();
    for (name, default) in [
        ("x-forwarded-proto", "http"),
        ("x-forwarded-port", molt_port.as_str()),
    ] {
        let given = if kept_by_molt(name) {
            direct.values(name)
        } else {
            Vec::new()
        };
        let expected = if given.is_empty() {
            vec![default]
        } else {
            given
        };
        if via.values(name) != expected {
            differ(name, &expected, &via.values(name));
        }
    }
    let start = via.values("x-request-start");
    let given = direct.values("x-request-start");
    if start.len() != 1 || (!given.is_empty() && start != given) {
        differ("x-request-start", &given, &start);
    }
}

/// What one request got from one origin, directly and through molt, as the test judged it.
#[derive(Debug, Default)]
struct Tally {
    /// Requests compared reading for reading.
    compared: usize,
    /// Requests molt refused with its own response.
    refused: usize,
    /// Requests both sides' origin refused alike.
    refused_alike: usize,
    /// Requests the origin refused directly and read through molt, compared with their
    /// standard form (see [`standard_form`]).
    standard_form: usize,
}

/// What molt forwards in place of a request that some origins refuse, as a rule of
/// docs/behaviour.md names it, and that form as the connections to send it directly on.
fn standard_form(name: &str, raw: &[u8]) -> Option<(&'static str, Vec<Vec<u8>>)> {
    let replace = |from: &[u8], to: &[u8]| -> Vec<u8> {
        let mut out = Vec::new();
        let mut rest = raw;
        while let Some(at) = rest.windows(from.len()).position(|w| w == from) {
            out.extend_from_slice(&rest[..at]);
            out.extend_from_slice(to);
            rest = &rest[at + from.len()..];
        }
        out.extend_from_slice(rest);
        out
    };
    // Each request of a pipelined run on a connection of its own.
    let split = |at: &[u8]| -> Vec<Vec<u8>> {
        let cut = raw
            .windows(at.len())
            .position(|w| w == at)
            .map_or(raw.len(), |i| i + 4);
        vec![raw[..cut].to_vec(), raw[cut..].to_vec()]
    };
    let form = match name.trim_start_matches("hostile::") {
        "bare_lf_line_endings_are_accepted" => (
            "a bare LF ends a line (RFC 9112 2.2); molt forwards CRLF",
            vec![replace(b"\n", b"\r\n")],
        ),
        "empty_line_before_request_line_is_ignored" => (
            "an empty line before a request is ignored (RFC 9112 2.2)",
            vec![raw[2..].to_vec()],
        ),
        "repeated_identical_content_length_is_collapsed" => (
            "identical Content-Length lines are one (RFC 9110 8.6)",
            vec![replace(
                b"Content-Length: 3\r\nContent-Length: 3\r\n",
                b"Content-Length: 3\r\n",
            )],
        ),
        "space_after_chunk_size_is_tolerated" => (
            "a request body is framed afresh",
            vec![replace(b"3 \r\n", b"3\r\n")],
        ),
        "fragment_in_target" => (
            "a fragment is no part of a request target (RFC 9112 3.2)",
            vec![replace(b"#frag", b"")],
        ),
        "request_after_connection_close_is_not_answered" => (
            "nothing after a request with Connection: close is read (RFC 9112 9.6)",
            split(b"\r\n\r\n").into_iter().take(1).collect(),
        ),
        "http_1_0_keep_alive_serves_a_second_request" | "http_1_0_keep_alive_then_http_1_1" => (
            "connections are hop by hop: each request reaches the worker on its own",
            split(b"\r\n\r\n"),
        ),
        _ => return None,
    };
    Some(form)
}

/// How one request fared: its direct and forwarded responses judged side by side.
enum Verdict {
    /// molt refused it with its own response (at the request of this index).
    Refused,
    /// The origin refused it alike both ways, or neither side answered.
    RefusedAlike,
    /// Every request was read alike, or these are the differences.
    Compared(Vec<String>),
}

/// Judges the responses to one request: `refused_at` is where molt's log shows it
/// refused, if it did.
fn verdict(
    origin: &Origin,
    direct: &[Parsed],
    via: &[Parsed],
    refused_at: Option<usize>,
    molt_port: u16,
) -> Verdict {
    let mut differences = Vec::new();
    for i in 0..direct.len().max(via.len()) {
        let (d, v) = (direct.get(i), via.get(i));
        let refusal = v.is_some_and(|v| is_molt_own(v) && REFUSALS.contains(&v.status));
        if refusal || refused_at == Some(i) {
            return Verdict::Refused;
        }
        let d_reading = d.and_then(|r| Reading::from_echo(r, origin.environ));
        let v_reading = v.and_then(|r| Reading::from_echo(r, origin.environ));
        match (d, v, d_reading, v_reading) {
            (_, _, Some(d), Some(v)) => {
                if let Err(diff) = compare_readings(&d, &v, molt_port) {
                    differences.push(format!(
                        "request {i} read differently:\n    {diff}\n  direct reading: {d:?}\n  \
                         through molt: {v:?}"
                    ));
                }
            }
            (Some(d), Some(v), None, None) if d.status == v.status => {
                return Verdict::RefusedAlike;
            }
            (Some(d), Some(v), _, _) => differences.push(format!(
                "request {i}: the origin answered {} directly and {} through molt",
                d.status, v.status
            )),
            (Some(d), None, _, _) => differences.push(format!(
                "request {i}: answered {} directly, nothing through molt",
                d.status
            )),
            (None, Some(v), _, _) => differences.push(format!(
                "request {i}: nothing directly, {} through molt",
                v.status
            )),
            (None, None, _, _) => unreachable!("one side has a response"),
        }
    }
    if direct.is_empty() && via.is_empty() {
        // Neither side answered: both closed (the HTTP/2 preface, a client gone).
        return Verdict::RefusedAlike;
    }
    Verdict::Compared(differences)
}

/// One request of the table against one origin pair: the differences found, if any.
fn judge(origin: &Origin, pair: &Pair, request: &Sent, tally: &mut Tally) -> Result<(), String> {
    let direct_pieces = without_underscore_headers(&request.pieces);
    let mut direct_bytes = exchange(pair.direct.port(), &direct_pieces);
    let logged_before = pair.molt.count_log(REFUSAL_LOG);
    let via_bytes = exchange(pair.molt.port(), &request.pieces);
    if direct_bytes.is_empty() && !via_bytes.is_empty() {
        // Node's server, with the client's sending half shut down right after a whole
        // request, now and then closes before it answers (its end of stream raced the
        // answer; seen once in a loaded run): asked again, an origin that never answers
        // such a request still answers nothing.
        direct_bytes = exchange(pair.direct.port(), &direct_pieces);
    }
    let (direct, direct_rest) = read_all(&direct_bytes);
    let (via, via_rest) = read_all(&via_bytes);
    let echo = |r: &Parsed| Reading::from_echo(r, origin.environ);
    // A refusal of hyper's (a head it cannot parse: 400, 431) has no body of molt's to
    // know it by; molt's log line for it tells. It is looked for only when the reply
    // could be one, so that requests served alike cost no wait.
    let could_be_refused = via.len() < direct.len() || via.iter().any(|r| echo(r).is_none());
    let refused_at = if could_be_refused
        && wait_until(REFUSAL_LOG_WAIT, || {
            pair.molt.count_log(REFUSAL_LOG) > logged_before
        }) {
        via.iter()
            .position(|r| echo(r).is_none())
            .or(Some(via.len()))
    } else {
        None
    };
    let mut outcome = verdict(origin, &direct, &via, refused_at, pair.molt.port());
    // A difference is fine only where molt forwards a documented standard form of the
    // original, which the origin must then read as it reads the forwarded request.
    let mut standard = None;
    if matches!(&outcome, Verdict::Compared(d) if !d.is_empty()) {
        if let Some((rule, connections)) = standard_form(&request.name, &direct_pieces.concat()) {
            let direct: Vec<Parsed> = connections
                .iter()
                .flat_map(|raw| {
                    read_all(&exchange(pair.direct.port(), std::slice::from_ref(raw))).0
                })
                .collect();
            outcome = verdict(origin, &direct, &via, refused_at, pair.molt.port());
            standard = Some(rule);
        }
    }
    match outcome {
        Verdict::Refused => tally.refused += 1,
        Verdict::RefusedAlike => tally.refused_alike += 1,
        Verdict::Compared(differences) if differences.is_empty() => {
            tally.compared += 1;
            tally.standard_form += usize::from(standard.is_some());
        }
        Verdict::Compared(differences) => {
            let standard = standard.map_or(String::new(), |rule| {
                format!(" (also against its standard form: {rule})")
            });
            return Err(format!(
                "{} on {}: {}{standard}\n  sent: {}\n  direct got: {}{}\n  through molt got: {}{}",
                request.name,
                origin.name,
                differences.join("\n  "),
                show_bytes(&request.pieces.concat(), 800),
                show_bytes(&direct_bytes, 1500),
                direct_rest
                    .as_ref()
                    .map_or(String::new(), |r| format!(" ({r})")),
                show_bytes(&via_bytes, 1500),
                via_rest
                    .as_ref()
                    .map_or(String::new(), |r| format!(" ({r})")),
            ));
        }
    }
    Ok(())
}

#[test]
fn origins_read_each_request_through_molt_as_they_read_it_directly() {
    let table = request_table();
    assert!(table.len() >= 150, "only {} requests", table.len());
    let mut failures = Vec::new();
    let mut summary = String::new();
    for origin in origins() {
        let pair = start_pair(&origin.command, &[]);
        let mut tally = Tally::default();
        for request in &table {
            if let Err(failure) = judge(&origin, &pair, request, &mut tally) {
                failures.push(failure);
            }
        }
        // Every refusal molt answered was logged with its status and reason.
        // The log is read by another thread: the last lines may still be on their way.
        let _ = wait_until(REFUSAL_LOG_WAIT, || {
            pair.molt.count_log(REFUSAL_LOG) >= tally.refused
        });
        let logged = pair.molt.count_log(REFUSAL_LOG);
        assert!(
            logged >= tally.refused,
            "{}: molt refused {} requests but logged {logged} refusals:\n{}",
            origin.name,
            tally.refused,
            pair.molt.log()
        );
        let _ = writeln!(
            summary,
            "{}: {} requests: {} read alike ({} in their standard form), {} refused by molt, \
             {} refused alike by the origin",
            origin.name,
            table.len(),
            tally.compared,
            tally.standard_form,
            tally.refused,
            tally.refused_alike
        );
    }
    eprintln!("{summary}");
    assert!(
        failures.is_empty(),
        "{} differences:\n\n{}",
        failures.len(),
        failures.join("\n\n")
    );
}

// ---------------------------------------------------------------------------------------
// Responses
// ---------------------------------------------------------------------------------------

/// A response the raw origin writes, and what molt must make of it.
struct Canned {
    name: &'static str,
    method: &'static str,
    bytes: &'static [u8],
    /// The origin closes the connection after the bytes.
    close: bool,
    /// `Some(rule)`: molt answers 502 by this rule (docs/behaviour.md); `None`: the client
    /// reads through molt what it reads directly.
    bad_gateway: Option<&'static str>,
}

const fn same(name: &'static str, bytes: &'static [u8], close: bool) -> Canned {
    Canned {
        name,
        method: "GET",
        bytes,
        close,
        bad_gateway: None,
    }
}

const fn bad(name: &'static str, bytes: &'static [u8], rule: &'static str) -> Canned {
    Canned {
        name,
        method: "GET",
        bytes,
        close: true,
        bad_gateway: Some(rule),
    }
}

const fn head(name: &'static str, bytes: &'static [u8]) -> Canned {
    Canned {
        name,
        method: "HEAD",
        bytes,
        close: false,
        bad_gateway: None,
    }
}

/// The response table.
const RESPONSES: &[Canned] = &[
    same("length", b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello", false),
    same("length_zero", b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n", false),
    same("no_length_then_close", b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n\r\nhello until the close", true),
    same("http_1_0_no_length_then_close", b"HTTP/1.0 200 OK\r\n\r\nold style", true),
    same("empty_body_then_close", b"HTTP/1.1 200 OK\r\n\r\n", true),
    same("chunked", b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n", false),
    same("chunked_with_extensions", b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5;x=1\r\nhello\r\n0\r\n\r\n", false),
    same("chunked_with_trailers", b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nTrailer: X-Sum\r\n\r\n5\r\nhello\r\n0\r\nX-Sum: 42\r\n\r\n", false),
    same("chunked_uppercase", b"HTTP/1.1 200 OK\r\nTransfer-Encoding: Chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n", false),
    same("continue_then_ok", b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok", false),
    same("early_hints_then_ok", b"HTTP/1.1 103 Early Hints\r\nLink: </s.css>; rel=preload\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok", false),
    same("processing_then_ok", b"HTTP/1.1 102 Processing\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok", false),
    same("no_content", b"HTTP/1.1 204 No Content\r\nX-A: 1\r\n\r\n", false),
    same("no_content_claiming_a_length", b"HTTP/1.1 204 No Content\r\nContent-Length: 5\r\n\r\n", false),
    same("no_content_with_body_bytes", b"HTTP/1.1 204 No Content\r\nContent-Length: 5\r\n\r\nhello", true),
    same("not_modified_claiming_a_length", b"HTTP/1.1 304 Not Modified\r\nETag: \"x\"\r\nContent-Length: 5\r\n\r\n", false),
    same("not_modified_with_body_bytes", b"HTTP/1.1 304 Not Modified\r\nETag: \"x\"\r\n\r\nhello", true),
    same("not_modified_chunked_claimed", b"HTTP/1.1 304 Not Modified\r\nTransfer-Encoding: chunked\r\n\r\n", false),
    head("head_with_length", b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n"),
    head("head_chunked", b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"),
    head("head_without_length", b"HTTP/1.1 200 OK\r\nContent-Type: text/html\r\n\r\n"),
    same("identical_lengths_on_two_lines", b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Length: 5\r\n\r\nhello", false),
    bad("conflicting_lengths", b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello!", "a response whose framing cannot be known"),
    bad("conflicting_length_list", b"HTTP/1.1 200 OK\r\nContent-Length: 5, 6\r\n\r\nhello!", "a response whose framing cannot be known"),
    bad("length_not_a_number", b"HTTP/1.1 200 OK\r\nContent-Length: abc\r\n\r\nhello", "a response whose framing cannot be known"),
    bad("negative_length", b"HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\nhello", "a response whose framing cannot be known"),
    bad("length_and_chunked", b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n", "a response whose framing cannot be known"),
    bad("not_http", b"SSH-2.0-OpenSSH\r\n\r\n", "a response that does not parse"),
    bad("bad_status_line", b"HTTP/1.1 2000 OK\r\nContent-Length: 0\r\n\r\n", "a response that does not parse"),
    bad("obsolete_line_folding", b"HTTP/1.1 200 OK\r\nX-A: a\r\n b\r\nContent-Length: 0\r\n\r\n", "a response that does not parse"),
    bad("space_before_colon", b"HTTP/1.1 200 OK\r\nX-A : a\r\nContent-Length: 0\r\n\r\n", "a response that does not parse"),
    bad("closed_before_any_byte", b"", "no response"),
    bad("closed_mid_head", b"HTTP/1.1 200 OK\r\nContent-Le", "no response"),
    same("status_without_reason", b"HTTP/1.1 200 \r\nContent-Length: 2\r\n\r\nok", false),
    same("unknown_status", b"HTTP/1.1 299 Whatever\r\nContent-Length: 2\r\n\r\nok", false),
    same("reason_with_high_bytes", b"HTTP/1.1 200 \xe9t\xe9\r\nContent-Length: 2\r\n\r\nok", false),
    same("server_error", b"HTTP/1.1 500 Internal Server Error\r\nContent-Length: 4\r\n\r\noops", false),
    same("redirect", b"HTTP/1.1 302 Found\r\nLocation: /elsewhere\r\nContent-Length: 0\r\n\r\n", false),
    same("two_set_cookies", b"HTTP/1.1 200 OK\r\nSet-Cookie: a=1\r\nSet-Cookie: b=2\r\nContent-Length: 0\r\n\r\n", false),
    same("hop_by_hop_named_by_connection", b"HTTP/1.1 200 OK\r\nConnection: X-Secret\r\nX-Secret: 1\r\nKeep-Alive: timeout=5\r\nContent-Length: 2\r\n\r\nok", false),
    same("hop_by_hop_named_by_a_later_connection", b"HTTP/1.1 200 OK\r\nX-Secret: 1\r\nConnection: X-Secret\r\nContent-Length: 2\r\n\r\nok", false),
    same("connection_close", b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 2\r\n\r\nok", true),
    same("high_bytes_in_a_header", b"HTTP/1.1 200 OK\r\nX-A: caf\xe9\r\nContent-Length: 2\r\n\r\nok", false),
    same("bare_lf_line_endings", b"HTTP/1.1 200 OK\nContent-Length: 2\n\nok", false),
    same("binary_body", b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\n\x00\xff\r\n", false),
    same("truncated_length_body", b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nhello", true),
    same("truncated_chunked_body", b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhel", true),
    same("bad_chunk_size", b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nhello\r\n0\r\n\r\n", true),
];

/// What a strict client made of one response: the response, or why it is not one.
fn strict_read(port: u16, case: usize, method: &str) -> Result<Parsed, String> {
    let mut stream = connect(port).map_err(|e| format!("connect: {e}"))?;
    let _ = stream.set_read_timeout(Some(READ_TIMEOUT));
    // `TE: trailers`: this client takes trailers, which are then forwarded.
    let request = format!("{method} /{case} HTTP/1.1\r\nHost: a\r\nTE: trailers\r\n\r\n");
    stream
        .write_all(request.as_bytes())
        .map_err(|e| format!("write: {e}"))?;
    let mut buf = Vec::new();
    let mut chunk = [0; 16 * 1024];
    loop {
        let (n, eof) = match stream.read(&mut chunk) {
            Ok(0) => (0, true),
            Ok(n) => (n, false),
            Err(e) if e.kind() == io::ErrorKind::ConnectionReset => (0, true),
            Err(e) => return Err(format!("read: {e} after {}", show_bytes(&buf, 300))),
        };
        buf.extend_from_slice(&chunk[..n]);
        match read_one(&buf, eof, method == "HEAD") {
            Read1::Done(parsed, _) => return Ok(parsed),
            Read1::Invalid(why) => return Err(why),
            Read1::More => {}
        }
    }
}

/// A response as compared: what the client gets, less what is about one connection
/// (hop-by-hop headers, framing), the `Date` molt adds when there is none, the interim
/// responses it does not forward, and the `Content-Length` of a 204 or 304, which it
/// drops (docs/behaviour.md).
fn comparable(parsed: &Parsed, method: &str) -> Parsed {
    let named: Vec<String> = parsed
        .values("connection")
        .iter()
        .flat_map(|v| v.split(|&b| b == b','))
        .map(|t| String::from_utf8_lossy(t.trim_ascii()).to_ascii_lowercase())
        .collect();
    // Content-Length of a HEAD response describes the body not sent, and is kept.
    let length_kept = method == "HEAD";
    let mut out = parsed.clone();
    out.interim.clear();
    out.headers.retain(|(name, _)| {
        !(["connection", "keep-alive", "transfer-encoding", "date"].contains(&name.as_str())
            || named.contains(name)
            || (name == "content-length" && !length_kept))
    });
    out
}

#[test]
fn clients_read_each_response_through_molt_as_they_read_it_directly() {
    if !tools_present(&["python3"]) {
        return;
    }
    let mut table = serde_json::Map::new();
    for (i, case) in RESPONSES.iter().enumerate() {
        table.insert(
            i.to_string(),
            serde_json::json!({
                "bytes": case.bytes.iter().map(|&b| char::from(b)).collect::<String>(),
                "close": case.close,
            }),
        );
    }
    let file = temp_path("responses.json");
    std::fs::write(&file, Value::Object(table).to_string()).expect("the table is written");
    let file_text = file.display().to_string();
    let command = format!("exec python3 {}/raw_responses.py", origins_dir().display());
    let pair = start_pair(&command, &[("RAW_RESPONSES", &file_text)]);
    let mut failures = Vec::new();
    let mut outcomes = BTreeMap::new();
    for (i, case) in RESPONSES.iter().enumerate() {
        let direct = strict_read(pair.direct.port(), i, case.method);
        let via = strict_read(pair.molt.port(), i, case.method);
        let shown = || {
            format!(
                "{}: the origin wrote {}\n  direct: {direct:?}\n  through molt: {via:?}",
                case.name,
                show_bytes(case.bytes, 400)
            )
        };
        let outcome = match (&case.bad_gateway, &via) {
            (Some(_), Ok(v)) if v.status == 502 && is_molt_own(v) => "502 by rule",
            (Some(rule), _) => {
                failures.push(format!("{} (molt must answer 502: {rule})", shown()));
                "wrong"
            }
            (None, Ok(v)) => match &direct {
                Ok(d) if comparable(d, case.method) == comparable(v, case.method) => "same",
                _ => {
                    failures.push(shown());
                    "wrong"
                }
            },
            // A response broken after its head reaches a client broken, both ways.
            (None, Err(_)) if direct.is_err() => "broken alike",
            (None, Err(_)) => {
                failures.push(shown());
                "wrong"
            }
        };
        outcomes.insert(case.name, outcome);
    }
    let _ = std::fs::remove_file(&file);
    eprintln!("{} responses: {outcomes:?}", RESPONSES.len());
    let expected = RESPONSES.iter().filter(|c| c.bad_gateway.is_some()).count();
    let _ = wait_until(REFUSAL_LOG_WAIT, || {
        pair.molt.count_log("at=upstream_error") >= expected
    });
    let logged = pair.molt.count_log("at=upstream_error");
    assert!(
        failures.is_empty(),
        "{} responses differ:\n\n{}\n\nmolt's log:\n{}",
        failures.len(),
        failures.join("\n\n"),
        pair.molt.log()
    );
    assert!(
        logged >= expected,
        "{expected} responses got 502 but molt logged {logged} upstream errors:\n{}",
        pair.molt.log()
    );
}
