//! Hostile and malformed HTTP on raw sockets, and what molt exposes to strangers
//! (docs/guarantees.md).
//!
//! The corpus below is a table: one line per case, `name: input, client => expected;`.
//! Each case starts its own molt with one worker of concurrency 1 that cannot scale
//! (`MOLT_MAX_WORKERS=1`), opens a bystander keep-alive connection, sends the input on a
//! fresh connection, and checks, besides the expected outcome:
//!
//! - never forwarded: a request molt must refuse never reaches the app, as the fixture's
//!   `/count` of routed requests shows (a response carrying the app's `Server: pyapp`
//!   header also gives it away);
//! - the bystander, served while the hostile connection is open, is undisturbed;
//! - the worker is free afterwards: with one worker of concurrency 1, a lease left behind
//!   would make the next request wait in the queue and get 503 after `MOLT_QUEUE_TIMEOUT`;
//! - molt is still running and has not panicked.
//!
//! A case where molt is wrong by RFC 9110/9112 or its own guarantees carries the correct
//! RFCs leave open are written next to their case.

use std::fmt::Write as _;
use std::io::{self, BufRead, BufReader, Cursor, Read, Write};
use std::net::{Shutdown, TcpStream};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::thread;
use std::time::Duration;

use crate::proxy::pool;
use crate::support::{
    connect, e2e_required, get, read_response, temp_path, tools_present, wait_until, Conn, Molt,
    Response,
};

/// Pause between the pieces of an input, and before a vanishing client closes, so that
/// molt reads each piece on its own (a case about where a read ends needs time to pass).
const PIECE_GAP: Duration = Duration::from_millis(50);

/// Longest wait for molt to answer and close a hostile connection.
const REPLY_TIMEOUT: Duration = Duration::from_secs(10);

/// `MOLT_QUEUE_TIMEOUT` of every case: a worker lease left behind turns the next request
/// into a 503 after this long, instead of the default 25 s.
const QUEUE_TIMEOUT: &str = "5s";

/// The header block size from which molt must answer 431 (issue 6). The app behind it
/// (Python's `http.server`) takes lines of up to 64 KiB, so a larger block that molt
/// passed on would reach it.
const HEADER_LIMIT: usize = 64 * 1024;

/// `MOLT_HEADER_TIMEOUT` of the tests about it.
const HEADER_TIMEOUT: Duration = Duration::from_secs(2);
const HEADER_TIMEOUT_SETTING: &str = "2s";

/// `MOLT_MAX_BODY` of the cases about it (the smallest value molt accepts).
const MAX_BODY: &str = "1MB";
const MAX_BODY_BYTES: usize = 1024 * 1024;

/// The Server header of the fixture app: a response carrying it came from the app.
const APP_SERVER: &str = "pyapp";

// ---------------------------------------------------------------------------------------
// The corpus
// ---------------------------------------------------------------------------------------

use Expect::{Abandoned, NotForwarded, Rejected, RejectedAny, RejectedOrClosed, Served};

/// One `#[test]` per case; see the module doc for what every case checks. The cases are
/// also listed by [`corpus`], for tests that replay them elsewhere.
macro_rules! corpus {
    ($($(#[$meta:meta])* $name:ident: $input:expr, $client:ident => $expect:expr;)*) => {
        $(
            $(#[$meta])*
            #[test]
            fn $name() {
                run_case(stringify!($name), &$input, &Client::$client, &$expect);
            }
        )*

        /// Every case of the corpus, for tests that replay it against other servers
        /// (the differential test).
        pub(crate) fn corpus() -> Vec<Case> {
            vec![$(Case { name: stringify!($name), input: $input, client: Client::$client }),*]
        }
    };
}

/// One case of the corpus as [`corpus`] lists it.
pub(crate) struct Case {
    pub(crate) name: &'static str,
    pub(crate) input: Input,
    pub(crate) client: Client,
}

corpus! {
    // -- Request lines ------------------------------------------------------------------
    garbage_request_line: bytes(b"GARBAGE\r\n\r\n"), Reads => Rejected(400);
    request_line_without_version: bytes(b"GET /\r\nHost: a\r\n\r\n"), Reads => Rejected(400);
    lowercase_http_name: bytes(b"GET / http/1.1\r\nHost: a\r\n\r\n"), Reads => Rejected(400);
    /// 505 fits best (RFC 9110 15.6.6), but 400 for an unparsable version is not wrong.
    version_http_2_0_in_http_1_syntax: bytes(b"GET / HTTP/2.0\r\nHost: a\r\n\r\n"), Reads => RejectedAny(&[400, 505]);
    version_http_9_9: bytes(b"GET / HTTP/9.9\r\nHost: a\r\n\r\n"), Reads => RejectedAny(&[400, 505]);
    /// RFC 9110 6.2 says a higher minor version SHOULD be served as 1.1; hyper's parser
    /// knows only 1.0 and 1.1, and no HTTP/1.2 client exists, so refusing is accepted.
    version_http_1_2: bytes(b"GET / HTTP/1.2\r\nHost: a\r\n\r\n"), Reads => RejectedAny(&[400, 505]);
    http2_prior_knowledge_preface: bytes(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"), Reads => RejectedOrClosed(&[400, 505]);
    /// Methods are case-sensitive tokens (RFC 9110 9.1): `get` is an extension method,
    /// which a gateway passes on; the app answers 501.
    lowercase_method_goes_to_the_app: bytes(b"get / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n"), Reads => Served(&[501]);
    long_unknown_method_goes_to_the_app: long_method(100), Reads => Served(&[501]);
    empty_method: bytes(b" / HTTP/1.1\r\nHost: a\r\n\r\n"), Reads => Rejected(400);
    nul_in_method: bytes(b"G\0T / HTTP/1.1\r\nHost: a\r\n\r\n"), Reads => Rejected(400);
    tabs_between_request_line_parts: bytes(b"GET\t/\tHTTP/1.1\r\nHost: a\r\n\r\n"), Reads => Rejected(400);
    two_spaces_in_request_line: bytes(b"GET  / HTTP/1.1\r\nHost: a\r\n\r\n"), Reads => Rejected(400);
    space_after_version: bytes(b"GET / HTTP/1.1 \r\nHost: a\r\n\r\n"), Reads => Rejected(400);
    space_inside_target: bytes(b"GET /a b HTTP/1.1\r\nHost: a\r\n\r\n"), Reads => Rejected(400);
    nul_in_target: bytes(b"GET /\0 HTTP/1.1\r\nHost: a\r\n\r\n"), Reads => Rejected(400);
    non_ascii_byte_in_target: bytes(b"GET /caf\xe9 HTTP/1.1\r\nHost: a\r\n\r\n"), Reads => Rejected(400);
    /// Authority-form is for CONNECT only (RFC 9112 3.2.3); an invalid request line
    /// SHOULD get 400 (RFC 9112 3).
    authority_form_target_on_get: bytes(b"GET a.example:80 HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n"), Reads => Rejected(400);
    /// Asterisk-form is for OPTIONS only (RFC 9112 3.2.4).
    asterisk_form_target_on_get: bytes(b"GET * HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n"), Reads => Rejected(400);
    asterisk_form_options_goes_to_the_app: bytes(b"OPTIONS * HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n"), Reads => Served(&[404]);
    /// molt is no forward proxy: CONNECT gets 501 (RFC 9110 9.3.6 makes tunnels a
    /// proxy's business; a worker's 2xx would open one to it).
    connect_is_refused: bytes(b"CONNECT a.example:443 HTTP/1.1\r\nHost: a.example:443\r\nConnection: close\r\n\r\n"), Reads => Rejected(501);
    /// RFC 9112 2.2: a server SHOULD ignore at least one empty line before the request line.
    empty_line_before_request_line_is_ignored: bytes(b"\r\nGET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n"), Reads => Served(&[200]);
    /// RFC 9112 2.2: a recipient MAY take a bare LF as the end of a line.
    bare_lf_line_endings_are_accepted: bytes(b"GET / HTTP/1.1\nHost: a\nConnection: close\n\n"), Reads => Served(&[200]);
    request_in_one_byte_pieces: one_byte_pieces(b"GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n"), Reads => Served(&[200]);

    // -- Host (RFC 9112 3.2: a server MUST answer 400 to an HTTP/1.1 request without
    //    exactly one valid Host) ---------------------------------------------------------
    http_1_1_without_host: bytes(b"GET / HTTP/1.1\r\nConnection: close\r\n\r\n"), Reads => Rejected(400);
    two_host_headers: bytes(b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\nConnection: close\r\n\r\n"), Reads => Rejected(400);
    host_with_a_space: bytes(b"GET / HTTP/1.1\r\nHost: a b\r\nConnection: close\r\n\r\n"), Reads => Rejected(400);
    host_with_a_path: bytes(b"GET / HTTP/1.1\r\nHost: a/b\r\nConnection: close\r\n\r\n"), Reads => Rejected(400);
    host_with_userinfo: bytes(b"GET / HTTP/1.1\r\nHost: user@a\r\nConnection: close\r\n\r\n"), Reads => Rejected(400);
    host_with_a_bad_port: bytes(b"GET / HTTP/1.1\r\nHost: a:xyz\r\nConnection: close\r\n\r\n"), Reads => Rejected(400);
    http_1_0_without_host_is_served: bytes(b"GET / HTTP/1.0\r\n\r\n"), Reads => Served(&[200]);
    host_with_a_port_is_served: bytes(b"GET / HTTP/1.1\r\nHost: a.example:8080\r\nConnection: close\r\n\r\n"), Reads => Served(&[200]);
    ipv6_literal_host_is_served: bytes(b"GET / HTTP/1.1\r\nHost: [::1]:8080\r\nConnection: close\r\n\r\n"), Reads => Served(&[200]);

    // -- Header names and values (RFC 9110 5.1, 5.5; RFC 9112 5) --------------------------
    space_inside_header_name: bytes(b"GET / HTTP/1.1\r\nHost: a\r\nFoo Bar: x\r\n\r\n"), Reads => Rejected(400);
    /// RFC 9112 5.1: a server MUST reject whitespace between a field name and the colon.
    space_before_colon: bytes(b"GET / HTTP/1.1\r\nHost: a\r\nFoo : x\r\n\r\n"), Reads => Rejected(400);
    header_line_without_colon: bytes(b"GET / HTTP/1.1\r\nHost: a\r\nFoo\r\n\r\n"), Reads => Rejected(400);
    empty_header_name: bytes(b"GET / HTTP/1.1\r\nHost: a\r\n: x\r\n\r\n"), Reads => Rejected(400);
    non_token_character_in_header_name: bytes(b"GET / HTTP/1.1\r\nHost: a\r\nFo(o: x\r\n\r\n"), Reads => Rejected(400);
    non_ascii_byte_in_header_name: bytes(b"GET / HTTP/1.1\r\nHost: a\r\nX\xe9: x\r\n\r\n"), Reads => Rejected(400);
    nul_in_header_value: bytes(b"GET / HTTP/1.1\r\nHost: a\r\nX: a\0b\r\n\r\n"), Reads => Rejected(400);
    lone_cr_in_header_value: bytes(b"GET / HTTP/1.1\r\nHost: a\r\nX: a\rb\r\n\r\n"), Reads => Rejected(400);
    /// A bare LF ends the line (see above), so what follows is a line without a colon.
    lf_inside_header_value: bytes(b"GET / HTTP/1.1\r\nHost: a\r\nX: a\nb\r\n\r\n"), Reads => Rejected(400);
    del_in_header_value: bytes(b"GET / HTTP/1.1\r\nHost: a\r\nX: a\x7fb\r\n\r\n"), Reads => Rejected(400);
    /// Bytes 0x80-0xFF are obs-text, allowed in values (RFC 9110 5.5) and passed on opaque.
    non_utf8_header_value_is_passed_on: bytes(b"GET / HTTP/1.1\r\nHost: a\r\nX: caf\xe9 \xff\r\nConnection: close\r\n\r\n"), Reads => Served(&[200]);
    tab_inside_header_value: bytes(b"GET / HTTP/1.1\r\nHost: a\r\nX: a\tb\r\nConnection: close\r\n\r\n"), Reads => Served(&[200]);
    /// RFC 9112 5.2: obs-fold MUST be rejected with 400 or replaced by spaces.
    obsolete_line_folding: bytes(b"GET / HTTP/1.1\r\nHost: a\r\nX: a\r\n b\r\n\r\n"), Reads => Rejected(400);
    whitespace_before_the_first_header: bytes(b"GET / HTTP/1.1\r\n Host: a\r\n\r\n"), Reads => Rejected(400);
    header_split_across_pieces: pieces(&[b"GET / HTTP/1.1\r\nHo", b"st: a\r\nConnection: cl", b"ose\r", b"\n\r\n"]), Reads => Served(&[200]);
    /// A connection option naming a message header must not cost the message its framing.
    connection_option_naming_content_length: bytes(b"POST /echo HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\nConnection: close, content-length\r\n\r\nabc"), Reads => Served(&[200]);

    // -- Content-Length (RFC 9110 8.6, RFC 9112 6.3) -------------------------------------
    conflicting_content_lengths: bytes(b"POST /echo HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\nabcd"), Reads => Rejected(400);
    conflicting_content_length_list: bytes(b"POST /echo HTTP/1.1\r\nHost: a\r\nContent-Length: 3, 4\r\n\r\nabcd"), Reads => Rejected(400);
    /// RFC 9110 8.6 lets a recipient collapse identical values or reject them. molt
    /// collapses identical lines (the body is framed the same either way) ...
    repeated_identical_content_length_is_collapsed: bytes(b"POST /echo HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\nContent-Length: 3\r\nConnection: close\r\n\r\nabc"), Reads => Served(&[200]);
    /// ... and rejects an identical list in one line, which hyper does not parse.
    identical_content_length_list_is_rejected: bytes(b"POST /echo HTTP/1.1\r\nHost: a\r\nContent-Length: 3, 3\r\n\r\nabc"), Reads => Rejected(400);
    negative_content_length: bytes(b"POST /echo HTTP/1.1\r\nHost: a\r\nContent-Length: -1\r\n\r\n"), Reads => Rejected(400);
    plus_signed_content_length: bytes(b"POST /echo HTTP/1.1\r\nHost: a\r\nContent-Length: +3\r\n\r\nabc"), Reads => Rejected(400);
    hex_content_length: bytes(b"POST /echo HTTP/1.1\r\nHost: a\r\nContent-Length: 0x3\r\n\r\nabc"), Reads => Rejected(400);
    content_length_beyond_u64: bytes(b"POST /echo HTTP/1.1\r\nHost: a\r\nContent-Length: 99999999999999999999999\r\n\r\nabc"), Reads => Rejected(400);
    empty_content_length: bytes(b"POST /echo HTTP/1.1\r\nHost: a\r\nContent-Length: \r\n\r\nabc"), Reads => Rejected(400);
    /// `Content-Length = 1*DIGIT` (RFC 9110 8.6): leading zeros are still a length.
    content_length_with_leading_zeros: bytes(b"POST /echo HTTP/1.1\r\nHost: a\r\nContent-Length: 003\r\nConnection: close\r\n\r\nabc"), Reads => Served(&[200]);
    content_length_with_spaces_around: bytes(b"POST /echo HTTP/1.1\r\nHost: a\r\nContent-Length:  3 \r\nConnection: close\r\n\r\nabc"), Reads => Served(&[200]);
    content_length_over_max_body: over_max_body_with_length(), Reads => Rejected(413);

    // -- Transfer-Encoding and request smuggling (RFC 9112 6.1, 6.3;
    //    "conflicting Content-Length and Transfer-Encoding are rejected, never forwarded") --
    content_length_then_chunked: bytes(b"POST /echo HTTP/1.1\r\nHost: a\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n"), Reads => Rejected(400);
    chunked_then_content_length: bytes(b"POST /echo HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nContent-Length: 4\r\n\r\n3\r\nabc\r\n0\r\n\r\n"), Reads => Rejected(400);
    /// The classic CL.TE smuggle: a front end that trusted Content-Length would pass the
    /// second request on as body.
    request_hidden_behind_content_length_and_chunked: bytes(b"POST /echo HTTP/1.1\r\nHost: a\r\nContent-Length: 41\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\nGET /count HTTP/1.1\r\nHost: a\r\n\r\n"), Reads => Rejected(400);
    /// RFC 9112 6.1: a transfer coding the server does not understand SHOULD get 501;
    /// molt strips Transfer-Encoding and re-chunks, so the gzip coding would be lost.
    gzip_then_chunked: bytes(b"POST /echo HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip, chunked\r\nConnection: close\r\n\r\n3\r\nabc\r\n0\r\n\r\n"), Reads => RejectedAny(&[400, 501]);
    gzip_and_chunked_on_two_lines: bytes(b"POST /echo HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n3\r\nabc\r\n0\r\n\r\n"), Reads => RejectedAny(&[400, 501]);
    /// RFC 9112 7: chunked MUST NOT be applied twice; hyper decodes once and forwards the
    /// inner bytes as the body, where a stricter parser would decode twice: a framing
    /// disagreement of the kind smuggling is made of.
    chunked_applied_twice: bytes(b"POST /echo HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked, chunked\r\nConnection: close\r\n\r\n3\r\nabc\r\n0\r\n\r\n"), Reads => RejectedAny(&[400, 501]);
    /// RFC 9112 6.3: chunked not last in a request MUST get 400.
    chunked_then_gzip: bytes(b"POST /echo HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked, gzip\r\n\r\n3\r\nabc\r\n0\r\n\r\n"), Reads => Rejected(400);
    chunked_and_gzip_on_two_lines: bytes(b"POST /echo HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: gzip\r\n\r\n3\r\nabc\r\n0\r\n\r\n"), Reads => Rejected(400);
    identity_transfer_coding: bytes(b"POST /echo HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: identity\r\n\r\n"), Reads => RejectedAny(&[400, 501]);
    unknown_transfer_coding: bytes(b"POST /echo HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: xchunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n"), Reads => RejectedAny(&[400, 501]);
    quoted_chunked: bytes(b"POST /echo HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: \"chunked\"\r\n\r\n3\r\nabc\r\n0\r\n\r\n"), Reads => RejectedAny(&[400, 501]);
    /// RFC 9110 5.6.1 would have the empty list element ignored; for the header that frames
    /// the body, refusing what some parser could read otherwise is the safe choice.
    chunked_with_a_trailing_comma: bytes(b"POST /echo HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked,\r\n\r\n3\r\nabc\r\n0\r\n\r\n"), Reads => Rejected(400);
    /// RFC 9112 6.1: Transfer-Encoding in HTTP/1.0 means faulty framing.
    transfer_encoding_in_http_1_0: bytes(b"POST /echo HTTP/1.0\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n"), Reads => Rejected(400);
    space_before_colon_of_transfer_encoding: bytes(b"POST /echo HTTP/1.1\r\nHost: a\r\nTransfer-Encoding : chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n"), Reads => Rejected(400);
    vertical_tab_before_chunked: bytes(b"POST /echo HTTP/1.1\r\nHost: a\r\nTransfer-Encoding:\x0bchunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n"), Reads => Rejected(400);
    uppercase_chunked_is_chunked: bytes(b"POST /echo HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: CHUNKED\r\nConnection: close\r\n\r\n3\r\nabc\r\n0\r\n\r\n"), Reads => Served(&[200]);

    // -- Chunked bodies (RFC 9112 7.1) ---------------------------------------------------
    negative_chunk_size: bytes(b"POST /echo HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n-3\r\nabc\r\n0\r\n\r\n"), Reads => Rejected(400);
    chunk_size_beyond_u64: bytes(b"POST /echo HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\nFFFFFFFFFFFFFFFFFF\r\nabc\r\n0\r\n\r\n"), Reads => Rejected(400);
    non_hex_chunk_size: bytes(b"POST /echo HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nabc\r\n0\r\n\r\n"), Reads => Rejected(400);
    chunk_data_without_its_crlf: bytes(b"POST /echo HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabcXX0\r\n\r\n"), Reads => Rejected(400);
    chunk_longer_than_its_size: bytes(b"POST /echo HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nabc\r\n0\r\n\r\n"), Reads => Rejected(400);
    bare_lf_in_chunked_framing: bytes(b"POST /echo HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n3\nabc\n0\n\n"), Reads => Rejected(400);
    chunk_extension_over_64_kib: huge_chunk_extension(), Reads => Rejected(400);
    malformed_trailer: bytes(b"POST /echo HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\nBad Trailer\r\n\r\n"), Reads => Rejected(400);
    /// Strictly, BWS before a chunk's CRLF needs a `;` after it (RFC 9112 7.1.1); hyper
    /// tolerates it, and since molt frames the body afresh for the worker, the two cannot
    /// read it differently.
    space_after_chunk_size_is_tolerated: bytes(b"POST /echo HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n3 \r\nabc\r\n0\r\n\r\n"), Reads => Served(&[200]);
    chunk_extension_and_trailer_are_accepted: bytes(b"POST /echo HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n3;name=value\r\nabc\r\n0\r\nX-Trailer: 1\r\n\r\n"), Reads => Served(&[200]);
    chunked_body_in_pieces: pieces(&[b"POST /echo HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n3", b"\r\nab", b"c\r\n0\r", b"\n\r\n"]), Reads => Served(&[200]);
    chunked_body_over_max_body: over_max_body_chunked(), Reads => Rejected(413);

    // -- Sizes ---------------------------------------------------------------------------
    header_block_under_the_limit_is_served: header_block(HEADER_LIMIT - 8 * 1024, 8000), Reads => Served(&[200]);
    header_block_over_64_kib: header_block(HEADER_LIMIT + 1024, 8000), Reads => Rejected(431);
    one_header_line_over_64_kib: header_block(HEADER_LIMIT + 1024, HEADER_LIMIT + 1024), Reads => Rejected(431);
    header_block_over_1_mib: header_block(1024 * 1024 + 1024, 8000), Reads => Rejected(431);
    more_than_100_header_lines: many_headers(101), Reads => Rejected(431);
    /// RFC 9112 3: request lines of at least 8000 octets SHOULD be supported.
    target_of_8000_octets_is_served: long_target(8000), Reads => Served(&[200]);
    /// The 64 KiB head limit covers the request line too, so 431 is as right as 414.
    target_over_64_kib: long_target(70 * 1024), Reads => RejectedAny(&[414, 431]);
    /// hyper stops reading at its buffer limit before the request line ends, hence 431.
    target_over_1_mib: long_target(1024 * 1024 + 1024), Reads => RejectedAny(&[414, 431]);

    // -- Expect: 100-continue (RFC 9110 10.1.1) ------------------------------------------
    /// A final status instead of 100 tells the client not to send the body.
    expect_continue_over_max_body_gets_413_not_100: expect_continue_over_max_body(), Reads => Rejected(413);
    expect_continue_then_vanish: bytes(b"POST /echo HTTP/1.1\r\nHost: a\r\nContent-Length: 10\r\nExpect: 100-continue\r\n\r\n"), VanishesAfterContinue => NotForwarded;
    /// Any other expectation MAY get 417; molt passes it on.
    unknown_expectation_is_passed_on: bytes(b"POST /echo HTTP/1.1\r\nHost: a\r\nExpect: something-else\r\nContent-Length: 3\r\nConnection: close\r\n\r\nabc"), Reads => Served(&[200]);

    // -- HTTP/1.0 (RFC 9112 9.3) ---------------------------------------------------------
    http_1_0_closes_after_the_response: bytes(b"GET / HTTP/1.0\r\nHost: a\r\n\r\n"), Reads => Served(&[200]);
    http_1_0_keep_alive_serves_a_second_request: bytes(b"GET / HTTP/1.0\r\nHost: a\r\nConnection: keep-alive\r\n\r\nGET /nope HTTP/1.0\r\nHost: a\r\n\r\n"), Reads => Served(&[200, 404]);

    // -- Pipelining (RFC 9112 9.3.2: answered in order) ----------------------------------
    three_pipelined_requests_answered_in_order: bytes(b"GET / HTTP/1.1\r\nHost: a\r\n\r\nGET /nope HTTP/1.1\r\nHost: a\r\n\r\nGET /pid HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n"), Reads => Served(&[200, 404, 200]);
    pipelined_post_then_get: bytes(b"POST /echo HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\n\r\nabcGET /nope HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n"), Reads => Served(&[200, 404]);
    pipelined_chunked_post_then_get: bytes(b"POST /echo HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\nGET /nope HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n"), Reads => Served(&[200, 404]);
    get_with_a_body_then_a_pipelined_get: bytes(b"GET / HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\n\r\nabcGET /nope HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n"), Reads => Served(&[200, 404]);
    pipelined_requests_split_mid_line: pieces(&[b"GET / HTTP/1.1\r\nHost: a\r\n\r\nGET /no", b"pe HTTP/1.1\r\nHo", b"st: a\r\nConnection: close\r\n\r\n"]), Reads => Served(&[200, 404]);
    request_after_connection_close_is_not_answered: bytes(b"GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\nGET /nope HTTP/1.1\r\nHost: a\r\n\r\n"), Reads => Served(&[200]);
    fifty_pipelined_requests: pipelined(50), Reads => Served(&[200; 50]);

    // -- Clients that half-close or vanish -----------------------------------------------
    /// A client may shut down its sending half once the request is out and still read the
    /// answer. molt hands the request to the app, then drops the answer.
    half_close_after_a_complete_request: bytes(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n"), HalfCloses => Served(&[200]);
    half_close_mid_headers: bytes(b"GET / HTTP/1.1\r\nHost: a\r\nX-Part"), HalfCloses => RejectedOrClosed(&[400]);
    /// RFC 9112 8: an incomplete request MAY get an error before the close.
    half_close_mid_body: bytes(b"POST /echo HTTP/1.1\r\nHost: a\r\nContent-Length: 10\r\n\r\nabc"), HalfCloses => RejectedOrClosed(&[400]);
    vanish_mid_request_line: bytes(b"GET /some"), Vanishes => NotForwarded;
    vanish_mid_headers: bytes(b"GET / HTTP/1.1\r\nHost: a\r\nX-Part"), Vanishes => NotForwarded;
    /// With worker concurrency 1, a body is read whole before a worker is leased.
    vanish_mid_body: bytes(b"POST /echo HTTP/1.1\r\nHost: a\r\nContent-Length: 1000\r\n\r\nabc"), Vanishes => NotForwarded;
    vanish_mid_chunked_body: bytes(b"POST /echo HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n10\r\nabc"), Vanishes => NotForwarded;
    reset_mid_headers: bytes(b"GET / HTTP/1.1\r\nHost: a\r\nX-Part"), Resets => NotForwarded;
    reset_mid_body: bytes(b"POST /echo HTTP/1.1\r\nHost: a\r\nContent-Length: 1000\r\n\r\nabc"), Resets => NotForwarded;
    vanish_mid_response: bytes(b"GET /download?bytes=50000000 HTTP/1.1\r\nHost: a\r\n\r\n"), ReadsAndVanishes => Abandoned;
    reset_mid_response: bytes(b"GET /download?bytes=50000000 HTTP/1.1\r\nHost: a\r\n\r\n"), ReadsAndResets => Abandoned;
    vanish_mid_streamed_response: bytes(b"GET /stream?chunks=50 HTTP/1.1\r\nHost: a\r\n\r\n"), ReadsAndVanishes => Abandoned;
}

// ---------------------------------------------------------------------------------------
// Inputs
// ---------------------------------------------------------------------------------------

/// What a hostile client sends: pieces written with [`PIECE_GAP`] between them, and the
/// settings molt runs with for the case.
pub(crate) struct Input {
    pub(crate) pieces: Vec<Vec<u8>>,
    pub(crate) env: Vec<(&'static str, &'static str)>,
}

impl Input {
    fn env(mut self, key: &'static str, value: &'static str) -> Self {
        self.env.push((key, value));
        self
    }

    fn len(&self) -> usize {
        self.pieces.iter().map(Vec::len).sum()
    }
}

fn bytes(raw: &[u8]) -> Input {
    pieces(&[raw])
}

fn pieces(raw: &[&[u8]]) -> Input {
    Input {
        pieces: raw.iter().map(|piece| piece.to_vec()).collect(),
        env: Vec::new(),
    }
}

fn one_byte_pieces(raw: &[u8]) -> Input {
    Input {
        pieces: raw.iter().map(|&byte| vec![byte]).collect(),
        env: Vec::new(),
    }
}

/// A GET whose headers add up to at least `total` bytes, in lines of `line` bytes each.
fn header_block(total: usize, line: usize) -> Input {
    let mut raw = b"GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n".to_vec();
    let mut i = 0;
    while raw.len() < total {
        let name = format!("X-Filler-{i}: ");
        raw.extend_from_slice(name.as_bytes());
        raw.extend(std::iter::repeat_n(
            b'x',
            line.saturating_sub(name.len() + 2),
        ));
        raw.extend_from_slice(b"\r\n");
        i += 1;
    }
    raw.extend_from_slice(b"\r\n");
    bytes(&raw)
}

/// A GET with `count` short headers besides Host and Connection.
fn many_headers(count: usize) -> Input {
    let mut raw = b"GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n".to_vec();
    for i in 0..count {
        raw.extend_from_slice(format!("X-{i}: a\r\n").as_bytes());
    }
    raw.extend_from_slice(b"\r\n");
    bytes(&raw)
}

/// A GET of `/?aaa...` whose target is `len` bytes long.
fn long_target(len: usize) -> Input {
    let mut raw = b"GET /?".to_vec();
    raw.extend(std::iter::repeat_n(b'a', len - 2));
    raw.extend_from_slice(b" HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n");
    bytes(&raw)
}

/// A request whose method is `len` letters: a valid token no server knows.
fn long_method(len: usize) -> Input {
    let mut raw = vec![b'A'; len];
    raw.extend_from_slice(b" / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n");
    bytes(&raw)
}

/// `count` GETs in one write, the last asking to close.
fn pipelined(count: usize) -> Input {
    let mut raw = Vec::new();
    for i in 0..count {
        let close = if i + 1 == count {
            "Connection: close\r\n"
        } else {
            ""
        };
        raw.extend_from_slice(format!("GET /?n={i} HTTP/1.1\r\nHost: a\r\n{close}\r\n").as_bytes());
    }
    bytes(&raw)
}

fn huge_chunk_extension() -> Input {
    let mut raw =
        b"POST /echo HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n3;".to_vec();
    raw.extend(std::iter::repeat_n(b'e', 70 * 1024));
    raw.extend_from_slice(b"\r\nabc\r\n0\r\n\r\n");
    bytes(&raw)
}

fn over_max_body_with_length() -> Input {
    let len = MAX_BODY_BYTES + 1;
    let mut raw =
        format!("POST /echo HTTP/1.1\r\nHost: a\r\nContent-Length: {len}\r\n\r\n").into_bytes();
    raw.extend(std::iter::repeat_n(b'b', len));
    bytes(&raw).env("MOLT_MAX_BODY", MAX_BODY)
}

fn over_max_body_chunked() -> Input {
    // Sent whole, the body is all buffered when molt answers, so hyper may read it to its
    // end and keep the connection; `close` makes the end of the exchange visible.
    let mut raw = b"POST /echo HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n"
        .to_vec();
    // Two chunks of 600 KiB: neither alone is over the limit.
    for _ in 0..2 {
        let chunk = 600 * 1024;
        raw.extend_from_slice(format!("{chunk:x}\r\n").as_bytes());
        raw.extend(std::iter::repeat_n(b'b', chunk));
        raw.extend_from_slice(b"\r\n");
    }
    raw.extend_from_slice(b"0\r\n\r\n");
    bytes(&raw).env("MOLT_MAX_BODY", MAX_BODY)
}

fn expect_continue_over_max_body() -> Input {
    let len = 2 * MAX_BODY_BYTES;
    let raw = format!(
        "POST /echo HTTP/1.1\r\nHost: a\r\nContent-Length: {len}\r\nExpect: 100-continue\r\n\r\n"
    );
    bytes(raw.as_bytes()).env("MOLT_MAX_BODY", MAX_BODY)
}

// ---------------------------------------------------------------------------------------
// Clients and expectations
// ---------------------------------------------------------------------------------------

/// What the hostile client does once its input is written.
pub(crate) enum Client {
    /// Reads until molt closes the connection.
    Reads,
    /// Shuts down its sending half, then reads until molt closes the connection.
    HalfCloses,
    /// Closes the connection without reading.
    Vanishes,
    /// Resets the connection (`SO_LINGER` 0) without reading.
    Resets,
    /// Waits for `100 Continue`, then closes without sending the body.
    VanishesAfterContinue,
    /// Reads the start of the response, then closes.
    ReadsAndVanishes,
    /// Reads the start of the response, then resets the connection.
    ReadsAndResets,
}

/// What molt must do with a case's input.
enum Expect {
    /// molt itself answers with this status, as its first and only response, and closes
    /// the connection; the app never sees the request.
    Rejected(u16),
    /// As `Rejected`, with any of these statuses (where the RFCs leave the choice).
    RejectedAny(&'static [u16]),
    /// As `RejectedAny`, or molt closes the connection without writing a byte.
    RejectedOrClosed(&'static [u16]),
    /// The requests reach the app, whose responses come back in order with these statuses;
    /// then the connection is closed.
    Served(&'static [u16]),
    /// The client is gone before an answer could be read; the app never sees the request.
    NotForwarded,
    /// The client is gone in the middle of the response; the app served the request once.
    Abandoned,
}

/// How a hostile connection ended, as the client saw it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Ending {
    /// molt closed it (end of file).
    Closed,
    /// molt reset it, which also ends it (molt closed with unread input).
    Reset,
    /// Still open after [`REPLY_TIMEOUT`].
    Open,
    /// The client went away itself.
    ClientGone,
}

/// What the hostile client saw.
struct Reply {
    bytes: Vec<u8>,
    ending: Ending,
}

impl Reply {
    fn show(&self) -> String {
        let text = String::from_utf8_lossy(&self.bytes);
        let mut shown: String = text.chars().take(600).collect();
        if text.len() > shown.len() {
            let _ = write!(shown, "... ({} bytes)", self.bytes.len());
        }
        format!("{shown:?} then {:?}", self.ending)
    }
}

/// molt running the fixture with one worker of concurrency 1 that cannot scale, so that a
/// lease left behind shows as a 503 after [`QUEUE_TIMEOUT`].
fn single_worker(env: &[(&'static str, &'static str)]) -> Molt {
    pool(1, |builder| {
        let builder = builder
            .env("MOLT_MAX_WORKERS", "1")
            .env("MOLT_WORKER_CONCURRENCY", "1")
            .env("MOLT_QUEUE_TIMEOUT", QUEUE_TIMEOUT);
        env.iter()
            .fold(builder, |builder, (key, value)| builder.env(key, value))
    })
}

fn run_case(name: &str, input: &Input, client: &Client, expect: &Expect) {
    let mut molt = single_worker(&input.env);
    let port = molt.port();

    let mut bystander = Bystander::open(port);
    bystander.is_served(name, "before the case", &molt);
    let reply = play(client, input, port, &mut || {
        bystander.is_served(name, "while the hostile connection was open", &molt);
    });
    eprintln!(
        "case {name}: sent {} bytes in {} piece(s); got {}",
        input.len(),
        input.pieces.len(),
        reply.show()
    );
    let forwarded = check_reply(name, expect, &reply, &molt);

    // Undisturbed: the bystander's connection still serves.
    bystander.is_served(name, "after the case", &molt);
    // The worker is free: one worker of concurrency 1 serves a fresh client.
    let fresh = get(port, "/");
    assert_eq!(
        fresh.as_ref().map(|r| r.status).ok(),
        Some(200),
        "{name}: a normal request afterwards failed (a worker lease left behind gives 503): \
         {fresh:?}\n{}",
        molt.log()
    );
    if let Some(forwarded) = forwarded {
        // Routed so far: the bystander's, the fresh one, what the case forwarded, and this.
        let routed = routed_count(port);
        assert_eq!(
            routed,
            bystander.served + 1 + forwarded + 1,
            "{name}: the app routed {routed} requests; {forwarded} of them should have been \
             the case's\n{}",
            molt.log()
        );
    }
    assert_molt_is_well(name, &mut molt);
}

/// A normal client on its own keep-alive connection, served before, during and after a
/// case.
struct Bystander {
    conn: Conn,
    /// Requests it has had served.
    served: usize,
}

impl Bystander {
    fn open(port: u16) -> Bystander {
        Bystander {
            conn: Conn::open(port).expect("the bystander connects"),
            served: 0,
        }
    }

    fn is_served(&mut self, name: &str, when: &str, molt: &Molt) {
        let response = self.conn.send("GET", "/", &[], b"");
        assert_eq!(
            response.as_ref().map(|r| r.status).ok(),
            Some(200),
            "{name}: the bystander was not served {when}: {response:?}\n{}",
            molt.log()
        );
        self.served += 1;
    }
}

/// The hostile client: connects, sends the input and does what `client` says. `during`
/// runs between the input and the end of the exchange: while a reading client waits for
/// molt's answer, or just after a vanishing client has gone.
fn play(client: &Client, input: &Input, port: u16, during: &mut dyn FnMut()) -> Reply {
    let mut stream = connect(port).expect("the hostile client connects");
    match client {
        Client::Reads | Client::HalfCloses => {
            // Read while writing: molt may answer and close before the input is all sent,
            // and a reply left unread when its reset arrives would be lost.
            let reader = {
                let stream = stream.try_clone().expect("clone the socket");
                thread::spawn(move || read_reply(stream))
            };
            write_pieces(&mut stream, &input.pieces);
            if matches!(client, Client::HalfCloses) {
                let _ = stream.shutdown(Shutdown::Write);
            }
            during();
            reader.join().expect("the reader thread")
        }
        Client::Vanishes | Client::Resets => {
            write_pieces(&mut stream, &input.pieces);
            // Let molt read what was sent before the client goes.
            thread::sleep(PIECE_GAP);
            if matches!(client, Client::Resets) {
                reset_on_close(&stream);
            }
            drop(stream);
            during();
            Reply {
                bytes: Vec::new(),
                ending: Ending::ClientGone,
            }
        }
        Client::VanishesAfterContinue => {
            let mut reader = BufReader::new(stream);
            write_pieces(reader.get_mut(), &input.pieces);
            let head = read_head_bytes(&mut reader);
            assert!(
                head.starts_with(b"HTTP/1.1 100 "),
                "expected 100 Continue, got {:?}",
                String::from_utf8_lossy(&head)
            );
            drop(reader);
            during();
            Reply {
                bytes: head,
                ending: Ending::ClientGone,
            }
        }
        Client::ReadsAndVanishes | Client::ReadsAndResets => {
            write_pieces(&mut stream, &input.pieces);
            let mut start = vec![0; 4096];
            let n = stream.read(&mut start).expect("the response starts");
            start.truncate(n);
            if matches!(client, Client::ReadsAndResets) {
                reset_on_close(&stream);
            }
            drop(stream);
            during();
            Reply {
                bytes: start,
                ending: Ending::ClientGone,
            }
        }
    }
}

/// Checks the reply against the expectation; returns how many of the case's requests the
/// app must have routed, when that is known.
fn check_reply(name: &str, expect: &Expect, reply: &Reply, molt: &Molt) -> Option<usize> {
    let closed = matches!(reply.ending, Ending::Closed | Ending::Reset);
    let context = || format!("{name}: got {}\n{}", reply.show(), molt.log());
    match expect {
        Expect::Rejected(status) => {
            check_rejected(std::slice::from_ref(status), reply, closed, &context);
            check_logged(reply, molt, &context);
            Some(0)
        }
        Expect::RejectedAny(statuses) => {
            check_rejected(statuses, reply, closed, &context);
            check_logged(reply, molt, &context);
            Some(0)
        }
        Expect::RejectedOrClosed(statuses) => {
            if reply.bytes.is_empty() {
                assert!(closed, "connection left open: {}", context());
            } else {
                check_rejected(statuses, reply, closed, &context);
            }
            check_logged(reply, molt, &context);
            Some(0)
        }
        Expect::Served(statuses) => {
            let responses = parse_responses(&reply.bytes).unwrap_or_else(|err| {
                panic!("unreadable responses ({err}): {}", context());
            });
            let got: Vec<u16> = responses.iter().map(|r| r.status).collect();
            assert_eq!(&got, statuses, "statuses: {}", context());
            for response in &responses {
                assert!(
                    from_app(response),
                    "a response did not come from the app: {}",
                    context()
                );
            }
            assert!(closed, "connection left open: {}", context());
            // The app's own 501 for an unknown method comes before its router counts.
            None
        }
        Expect::NotForwarded => Some(0),
        Expect::Abandoned => Some(1),
    }
}

fn check_rejected(statuses: &[u16], reply: &Reply, closed: bool, context: &dyn Fn() -> String) {
    let responses = parse_responses(&reply.bytes)
        .unwrap_or_else(|err| panic!("unreadable response ({err}): {}", context()));
    // No interim 100 Continue before a rejection: the client must not send the body.
    let first_line = reply
        .bytes
        .split(|&b| b == b'\n')
        .next()
        .unwrap_or_default();
    let answered = responses.len() == 1 && statuses.contains(&responses[0].status);
    assert!(
        answered && !first_line.starts_with(b"HTTP/1.1 1"),
        "expected molt's {statuses:?} as the only response: {}",
        context()
    );
    assert!(
        !from_app(&responses[0]),
        "the rejection came from the app, so the request was forwarded: {}",
        context()
    );
    assert!(
        closed,
        "connection left open after the rejection: {}",
        context()
    );
}

/// Every refusal is logged with its reason (and the status the client got, when it got
/// one), so that an operator sees why a client got a 4xx (docs/behaviour.md).
fn check_logged(reply: &Reply, molt: &Molt, context: &dyn Fn() -> String) {
    let status = parse_responses(&reply.bytes)
        .ok()
        .and_then(|responses| responses.first().map(|r| r.status));
    let wanted = status.map(|status| format!(" status={status}"));
    let logged = wait_until(REPLY_TIMEOUT, || {
        molt.log().lines().any(|line| {
            let refusal = (line.contains("at=bad_request") && line.contains(" reason="))
                || line.contains("at=header_timeout");
            refusal && wanted.as_ref().is_none_or(|w| line.contains(w.as_str()))
        })
    });
    assert!(
        logged,
        "the refusal was not logged with its reason{}: {}",
        wanted.unwrap_or_default(),
        context()
    );
}

fn assert_molt_is_well(name: &str, molt: &mut Molt) {
    let log = molt.log();
    assert!(!log.contains("panicked"), "{name}: molt panicked:\n{log}");
    assert!(molt.is_running(), "{name}: molt exited:\n{log}");
}

/// Whether a response came from the fixture app rather than from molt.
fn from_app(response: &Response) -> bool {
    response
        .header("server")
        .is_some_and(|server| server.contains(APP_SERVER))
}

/// The fixture's count of routed requests, this one included.
fn routed_count(port: u16) -> usize {
    let response = get(port, "/count").expect("/count is served");
    assert_eq!(response.status, 200);
    response.text().trim().parse().expect("/count is a number")
}

/// Writes the pieces with a pause between them. A failed write ends the input: molt may
/// have answered and closed already, which the reply shows.
fn write_pieces(stream: &mut TcpStream, pieces: &[Vec<u8>]) {
    for (i, piece) in pieces.iter().enumerate() {
        if i > 0 {
            thread::sleep(PIECE_GAP);
        }
        if stream
            .write_all(piece)
            .and_then(|()| stream.flush())
            .is_err()
        {
            return;
        }
    }
}

/// Reads until molt closes or resets the connection, or [`REPLY_TIMEOUT`] passes.
fn read_reply(stream: TcpStream) -> Reply {
    read_reply_within(stream, REPLY_TIMEOUT)
}

/// Reads until molt closes or resets the connection, or `timeout` passes.
fn read_reply_within(mut stream: TcpStream, timeout: Duration) -> Reply {
    stream
        .set_read_timeout(Some(timeout))
        .expect("set a read timeout");
    let mut bytes = Vec::new();
    let mut buffer = vec![0; 64 * 1024];
    let ending = loop {
        match stream.read(&mut buffer) {
            Ok(0) => break Ending::Closed,
            Ok(n) => bytes.extend_from_slice(&buffer[..n]),
            Err(err)
                if matches!(
                    err.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) =>
            {
                break Ending::Open
            }
            Err(err) if err.kind() == io::ErrorKind::Interrupted => {}
            Err(_) => break Ending::Reset,
        }
    };
    Reply { bytes, ending }
}

/// Reads one response head (through its blank line) as bytes.
fn read_head_bytes(reader: &mut BufReader<TcpStream>) -> Vec<u8> {
    reader
        .get_mut()
        .set_read_timeout(Some(REPLY_TIMEOUT))
        .expect("set a read timeout");
    let mut head = Vec::new();
    while !head.ends_with(b"\r\n\r\n") {
        let before = head.len();
        if reader.read_until(b'\n', &mut head).is_err() || head.len() == before {
            break;
        }
    }
    head
}

/// Makes closing the socket send a reset instead of a FIN.
fn reset_on_close(stream: &TcpStream) {
    let linger = nix::libc::linger {
        l_onoff: 1,
        l_linger: 0,
    };
    nix::sys::socket::setsockopt(stream, nix::sys::socket::sockopt::Linger, &linger)
        .expect("set SO_LINGER");
}

/// Every response in `bytes`, interim ones skipped.
fn parse_responses(bytes: &[u8]) -> io::Result<Vec<Response>> {
    let mut reader = Cursor::new(bytes);
    let mut responses = Vec::new();
    while usize::try_from(reader.position()).is_ok_and(|at| at < bytes.len()) {
        responses.push(read_response(&mut reader, "GET")?);
    }
    Ok(responses)
}

/// One exchange on a fresh connection: writes `raw`, reads until molt closes.
fn exchange(port: u16, raw: &[u8]) -> Reply {
    let stream = connect(port).expect("connect");
    let reader = {
        let stream = stream.try_clone().expect("clone the socket");
        thread::spawn(move || read_reply(stream))
    };
    let mut writer = stream;
    write_pieces(&mut writer, &[raw.to_vec()]);
    reader.join().expect("the reader thread")
}

// ---------------------------------------------------------------------------------------
// Cases that check more than a status
// ---------------------------------------------------------------------------------------

/// Expect: 100-continue (RFC 9110 10.1.1): molt sends 100 (or passes the app's on) and the
/// upload then completes byte for byte.
#[test]
fn expect_continue_gets_100_then_the_upload_completes() {
    let molt = single_worker(&[]);
    let body: Vec<u8> = (0..256 * 1024_u32)
        .map(|i| u8::try_from(i % 251).expect("below 251"))
        .collect();
    let stream = connect(molt.port()).expect("connect");
    let mut reader = BufReader::new(stream);
    let head = format!(
        "POST /echo HTTP/1.1\r\nHost: a\r\nContent-Length: {}\r\nExpect: 100-continue\r\n\
         Connection: close\r\n\r\n",
        body.len()
    );
    reader
        .get_mut()
        .write_all(head.as_bytes())
        .expect("send the head");
    // The client waits for 100 before sending the body; it must come, and come first.
    let interim = read_head_bytes(&mut reader);
    assert!(
        interim.starts_with(b"HTTP/1.1 100 "),
        "expected 100 Continue, got {:?}",
        String::from_utf8_lossy(&interim)
    );
    reader.get_mut().write_all(&body).expect("send the body");
    let response = read_response(&mut reader, "POST").expect("the response");
    assert_eq!(response.status, 200);
    assert!(response.body == body, "the echoed upload differs");
}

/// An absolute-form target names the host (RFC 9112 3.2.2): its authority replaces Host,
/// so the app must never see one host in the Host header and another in the target.
#[test]
fn absolute_form_target_replaces_host() {
    host_seen_by_the_app(
        b"GET http://other.example/headers HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n",
        "other.example",
    );
}

/// A connection option naming Host (RFC 9110 7.6.1) must not make molt remove Host: an
/// HTTP/1.1 request without Host must never reach the app (RFC 9112 3.2).
#[test]
fn connection_option_cannot_remove_host() {
    host_seen_by_the_app(
        b"GET /headers HTTP/1.1\r\nHost: a\r\nConnection: close, host\r\n\r\n",
        "a",
    );
}

/// Sends `request` (a GET of the fixture's `/headers`) and checks that molt either refused
/// it with its own 400 or handed the app exactly `host` as Host.
fn host_seen_by_the_app(request: &[u8], host: &str) {
    let molt = single_worker(&[]);
    let reply = exchange(molt.port(), request);
    let responses = parse_responses(&reply.bytes).expect("a response");
    let response = &responses[0];
    match response.status {
        400 => assert!(!from_app(response), "{}", reply.show()),
        200 => {
            let seen: serde_json::Value =
                serde_json::from_slice(&response.body).expect("the app's JSON");
            assert_eq!(seen["host"], host, "{}", reply.show());
        }
        _ => panic!(
            "expected 400 or the request with Host {host}: {}",
            reply.show()
        ),
    }
}

/// HTTP/1.0 with `Connection: keep-alive` (RFC 9112 9.3, Appendix C.2.2): the answer says
/// keep-alive and the connection serves a second request.
#[test]
fn http_1_0_keep_alive_is_honoured() {
    let molt = single_worker(&[]);
    let mut conn = Conn::open(molt.port()).expect("connect");
    conn.stream()
        .write_all(b"GET / HTTP/1.0\r\nHost: a\r\nConnection: keep-alive\r\n\r\n")
        .expect("send");
    let first = conn.read_response("GET").expect("the first response");
    assert_eq!(first.status, 200);
    assert!(
        first
            .header("connection")
            .is_some_and(|c| c.eq_ignore_ascii_case("keep-alive")),
        "{first:?}"
    );
    assert!(first.header("content-length").is_some(), "{first:?}");
    conn.stream()
        .write_all(b"GET / HTTP/1.0\r\nHost: a\r\n\r\n")
        .expect("send");
    let second = conn.read_response("GET").expect("the second response");
    assert_eq!(second.status, 200);
    assert!(
        conn.is_closed_by_peer(REPLY_TIMEOUT),
        "HTTP/1.0 without keep-alive must be closed after the response"
    );
}

/// An HTTP/1.0 client cannot read chunked framing: a streamed response reaches it as the
/// bare bytes, ended by the close (RFC 9112 6.1, 6.3).
#[test]
fn http_1_0_gets_a_streamed_response_close_delimited() {
    let molt = single_worker(&[]);
    let reply = exchange(
        molt.port(),
        b"GET /stream?chunks=3 HTTP/1.0\r\nHost: a\r\n\r\n",
    );
    assert_eq!(reply.ending, Ending::Closed, "{}", reply.show());
    let text = String::from_utf8_lossy(&reply.bytes);
    let (head, body) = text.split_once("\r\n\r\n").expect("a response head");
    assert!(head.starts_with("HTTP/1."), "{head}");
    assert!(head.contains(" 200 "), "{head}");
    assert!(
        !head.to_ascii_lowercase().contains("transfer-encoding"),
        "chunked sent to an HTTP/1.0 client: {head}"
    );
    assert_eq!(body, "chunk 0\nchunk 1\nchunk 2\n");
}

/// Request headers must arrive within the header timeout, or the client gets 408 and the
/// connection closes, and the request never reaches the app.
#[test]
fn headers_unfinished_at_the_header_timeout_get_408() {
    let molt = single_worker(&[("MOLT_HEADER_TIMEOUT", HEADER_TIMEOUT_SETTING)]);
    let stream = connect(molt.port()).expect("connect");
    let reader = {
        let stream = stream.try_clone().expect("clone the socket");
        thread::spawn(move || read_reply_within(stream, HEADER_TIMEOUT + REPLY_TIMEOUT))
    };
    let mut writer = stream;
    writer
        .write_all(b"GET / HTTP/1.1\r\nHost: a\r\nX-Never-Finished: ")
        .expect("send");
    let reply = reader.join().expect("the reader thread");
    let responses = parse_responses(&reply.bytes).expect("a response");
    assert_eq!(
        responses.iter().map(|r| r.status).collect::<Vec<_>>(),
        [408],
        "{}",
        reply.show()
    );
    assert_eq!(reply.ending, Ending::Closed, "{}", reply.show());
    assert_eq!(routed_count(molt.port()), 1, "forwarded: {}", molt.log());
}

/// Slowloris: hundreds of connections trickle header lines and never end their heads.
/// Each is answered 408 and closed once its head is older than the header timeout, though
/// bytes keep arriving (the timeout runs from a head's first byte, not its last), and
/// normal requests are served all along. None reaches the app.
#[test]
fn slowloris_connections_get_408_while_others_are_served() {
    const SLOW: usize = 300;
    const NORMAL: usize = 20;
    /// Between two rounds of trickled lines; a round also reads what molt sent.
    const ROUND: Duration = Duration::from_millis(200);
    struct Slow {
        stream: TcpStream,
        received: Vec<u8>,
        closed: bool,
    }
    let molt = single_worker(&[("MOLT_HEADER_TIMEOUT", HEADER_TIMEOUT_SETTING)]);
    let port = molt.port();

    let mut slow: Vec<Slow> = (0..SLOW)
        .map(|_| {
            let mut stream = connect(port).expect("a slow client connects");
            stream
                .write_all(b"GET / HTTP/1.1\r\nHost: a\r\n")
                .expect("the head starts");
            stream.set_nonblocking(true).expect("non-blocking");
            Slow {
                stream,
                received: Vec::new(),
                closed: false,
            }
        })
        .collect();
    let normal = thread::spawn(move || {
        (0..NORMAL)
            .map(|_| {
                thread::sleep(ROUND / 2);
                get(port, "/").map(|r| r.status).ok()
            })
            .collect::<Vec<_>>()
    });

    // Trickle one line per round to every open connection, reading first so that a 408
    // is taken before a write could meet the closed socket. The bound only keeps a broken
    // molt from hanging the test: a working one closes all within the header timeout.
    let most_rounds = 20 * (HEADER_TIMEOUT.as_millis() / ROUND.as_millis());
    let mut rounds = 0;
    let mut buffer = [0; 1024];
    while slow.iter().any(|s| !s.closed) && rounds < most_rounds {
        for conn in slow.iter_mut().filter(|s| !s.closed) {
            loop {
                match conn.stream.read(&mut buffer) {
                    Ok(0) => conn.closed = true,
                    Ok(n) => {
                        conn.received.extend_from_slice(&buffer[..n]);
                        continue;
                    }
                    Err(err) if err.kind() == io::ErrorKind::WouldBlock => {
                        if conn.stream.write_all(b"X-Trickle: 1\r\n").is_err() {
                            conn.closed = true;
                        }
                    }
                    Err(_) => conn.closed = true,
                }
                break;
            }
        }
        thread::sleep(ROUND);
        rounds += 1;
    }

    let statuses = normal.join().expect("the normal client");
    assert_eq!(
        statuses,
        vec![Some(200); NORMAL],
        "normal requests while {SLOW} slow clients trickled\n{}",
        molt.log()
    );
    let still_open = slow.iter().filter(|s| !s.closed).count();
    assert_eq!(still_open, 0, "slow connections left open\n{}", molt.log());
    for conn in &slow {
        assert!(
            conn.received.starts_with(b"HTTP/1.1 408 "),
            "a slow client got {:?}",
            String::from_utf8_lossy(&conn.received)
        );
    }
    assert!(
        rounds > HEADER_TIMEOUT.as_millis() / ROUND.as_millis() / 2,
        "closed after {rounds} rounds: the head was cut before it was old"
    );
    assert_eq!(
        routed_count(port),
        NORMAL + 1,
        "a slow request was forwarded\n{}",
        molt.log()
    );
}

/// A request declaring both Content-Length and chunked, pipelined behind a request with a
/// body on the same connection, is still found and refused: molt follows each body's
/// framing to the next head.
#[test]
fn smuggling_behind_a_served_request_is_refused() {
    let molt = single_worker(&[]);
    let reply = exchange(
        molt.port(),
        b"POST /echo HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\n\r\nabc\
          POST /echo HTTP/1.1\r\nHost: a\r\nContent-Length: 41\r\nTransfer-Encoding: chunked\r\n\r\n\
          0\r\n\r\nGET /count HTTP/1.1\r\nHost: a\r\n\r\n",
    );
    let responses = parse_responses(&reply.bytes).expect("responses");
    let statuses: Vec<u16> = responses.iter().map(|r| r.status).collect();
    assert_eq!(statuses, [200, 400], "{}", reply.show());
    assert!(
        from_app(&responses[0]) && !from_app(&responses[1]),
        "{}",
        reply.show()
    );
    assert_eq!(reply.ending, Ending::Closed, "{}", reply.show());
    // The first request, then this one: the hidden GET never ran.
    assert_eq!(routed_count(molt.port()), 2, "{}", molt.log());
}

/// A kept-alive connection with no request on it is closed after the keep-alive timeout,
/// quietly; one that never starts a request, after the header timeout. A request that
/// runs longer than either is not cut.
#[test]
fn idle_connections_are_closed_and_long_requests_are_not() {
    let molt = single_worker(&[
        ("MOLT_KEEPALIVE_TIMEOUT", "1s"),
        ("MOLT_HEADER_TIMEOUT", HEADER_TIMEOUT_SETTING),
    ]);
    let port = molt.port();
    let mut kept = Conn::open(port).expect("connect");
    let first = kept.send("GET", "/", &[], b"").expect("a response");
    assert_eq!(first.status, 200);
    assert!(
        kept.is_closed_by_peer(REPLY_TIMEOUT),
        "an idle kept-alive connection stayed open"
    );
    let silent = connect(port).expect("connect");
    let reply = read_reply_within(silent, HEADER_TIMEOUT + REPLY_TIMEOUT);
    assert_eq!(
        (reply.bytes.len(), reply.ending),
        (0, Ending::Closed),
        "{}",
        reply.show()
    );

    let mut long = Conn::open(port).expect("connect");
    let slow = long
        .send("GET", "/sleep?ms=3000", &[], b"")
        .expect("a response");
    assert_eq!(slow.status, 200, "{slow:?}");
    let again = long
        .send("GET", "/", &[], b"")
        .expect("the connection is kept");
    assert_eq!(again.status, 200);
}

// ---------------------------------------------------------------------------------------
// Security: what molt exposes
// ---------------------------------------------------------------------------------------

/// Paths a curious client might try for a proxy's own pages.
const PROBE_PATHS: &[&str] = &[
    "/molt",
    "/molt/status",
    "/status",
    "/_molt/status",
    "/_molt",
    "/metrics",
    "/server-status",
    "/_status",
    "/debug",
    "/.well-known/molt",
];

/// Nothing about the pool is served on the public port: every path goes to the app.
#[test]
fn pool_internals_are_not_served_on_the_public_port() {
    let molt = single_worker(&[]);
    let port = molt.port();
    let internals = internals_of(&molt);
    for path in PROBE_PATHS {
        for method in ["GET", "HEAD"] {
            let response = crate::support::request(port, method, path, &[], b"").expect("answered");
            assert_eq!(response.status, 404, "{method} {path}: {response:?}");
            assert!(from_app(&response), "{method} {path} was answered by molt");
            if method == "GET" {
                assert_eq!(response.text(), "not found\n", "{method} {path}");
            }
            assert_reveals_nothing(&format!("{method} {path}"), &response, &internals);
        }
    }
    // Every one of them reached the app.
    assert_eq!(routed_count(port), PROBE_PATHS.len() * 2 + 1);
}

/// molt's own error responses (502, 503, 504 and the 4xx it writes) have short fixed
/// bodies and no header that names molt, a worker's port or pid, or memory.
#[test]
fn molt_error_responses_reveal_no_internals() {
    let molt = single_worker(&[("MOLT_MAX_QUEUE", "0"), ("MOLT_REQUEST_TIMEOUT", "1s")]);
    let port = molt.port();
    // `at=ready` is logged just before the worker is routed; with no queue, a request in
    // between gets 503. Routed once a request gets through.
    let routed = || {
        assert!(
            wait_until(Duration::from_secs(10), || get(port, "/")
                .is_ok_and(|r| r.status == 200)),
            "the worker is never routed:\n{}",
            molt.log()
        );
    };
    routed();

    let mut seen = Vec::new();
    // 504: the request outlives MOLT_REQUEST_TIMEOUT; the stuck worker is replaced.
    let timed_out = get(port, "/sleep?ms=5000").expect("answered");
    seen.push(("504", timed_out, "Gateway Timeout\n"));
    assert!(
        wait_until(Duration::from_secs(20), || molt.count_log("at=ready") >= 2),
        "no replacement worker:\n{}",
        molt.log()
    );
    routed();
    // 503: the only worker is busy and the queue holds nothing.
    let mark = temp_path("held");
    let held = {
        let path = format!("/sleep?ms=700&mark={}", mark.display());
        thread::spawn(move || get(port, &path).expect("the held request completes"))
    };
    assert!(wait_until(Duration::from_secs(10), || mark.exists()));
    let overloaded = get(port, "/").expect("answered");
    seen.push(("503", overloaded, "Service Unavailable\n"));
    assert_eq!(held.join().expect("held").status, 200);
    let _ = std::fs::remove_file(&mark);
    // 502: the worker dies mid-request.
    let crashed = get(port, "/crash").expect("answered");
    seen.push(("502", crashed, "Bad Gateway\n"));
    // 400 and 413 written by molt itself.
    let bad_chunk = crate::support::request(
        port,
        "POST",
        "/echo",
        &[("Transfer-Encoding", "chunked")],
        b"zz\r\nabc\r\n0\r\n\r\n",
    )
    .expect("answered");
    seen.push(("400", bad_chunk, "Bad Request\n"));
    let too_large = crate::support::request(
        port,
        "POST",
        "/echo",
        &[("Content-Length", "200000000")],
        b"",
    )
    .expect("answered");
    seen.push(("413", too_large, "Payload Too Large\n"));

    let internals = internals_of(&molt);
    for (status, response, body) in &seen {
        assert_eq!(response.status.to_string(), *status, "{response:?}");
        assert_eq!(response.text(), *body, "{status}");
        assert!(!from_app(response), "{status} came from the app");
        assert_eq!(
            response.header("server"),
            None,
            "{status}: molt's own responses carry no Server header"
        );
        for (name, _) in &response.headers {
            let name = name.to_ascii_lowercase();
            assert!(
                [
                    "content-type",
                    "content-length",
                    "date",
                    "retry-after",
                    "connection"
                ]
                .contains(&name.as_str()),
                "{status}: unexpected header {name} in {response:?}"
            );
        }
        assert_reveals_nothing(status, response, &internals);
    }
}

/// The numbers a response must not show: molt's pid and every worker's pid and port.
fn internals_of(molt: &Molt) -> Vec<String> {
    let mut numbers = vec![molt.pid().to_string()];
    for line in molt.log().lines().filter(|l| l.contains("at=spawn")) {
        for field in line.split_whitespace() {
            if let Some(value) = field
                .strip_prefix("pid=")
                .or_else(|| field.strip_prefix("port="))
            {
                numbers.push(value.to_owned());
            }
        }
    }
    assert!(numbers.len() >= 3, "no worker in the log:\n{}", molt.log());
    numbers
}

/// No header (Date aside, whose digits are the time) or body of `response` contains one
/// of `internals` as a whole number.
fn assert_reveals_nothing(what: &str, response: &Response, internals: &[String]) {
    let mut text = String::from_utf8_lossy(&response.body).into_owned();
    for (name, value) in &response.headers {
        if !name.eq_ignore_ascii_case("date") {
            text.push('\n');
            text.push_str(name);
            text.push_str(value);
        }
    }
    for number in text.split(|c: char| !c.is_ascii_digit()) {
        assert!(
            !internals.iter().any(|internal| internal == number),
            "{what}: the response shows {number}, a pid or port of the pool: {response:?}"
        );
    }
    for word in ["worker", "molt", "lease", "upstream"] {
        assert!(
            !text.to_ascii_lowercase().contains(word),
            "{what}: the response mentions {word:?}: {response:?}"
        );
    }
}

/// The uid of user `nobody`, whom the control socket tests act as.
const NOBODY: u32 = 65534;

/// A temp directory that `nobody` can traverse, holding the control socket, and the
/// molt binary `nobody` runs (a copy, when the build directory is closed to `nobody`).
struct ControlDir {
    dir: PathBuf,
    molt: PathBuf,
}

impl ControlDir {
    /// `None`, after saying why, when the test cannot act as another user here.
    fn new() -> Option<ControlDir> {
        if !nix::unistd::geteuid().is_root() {
            assert!(
                !e2e_required(),
                "acting as another user needs root, and MOLT_E2E_REQUIRED=1 is set"
            );
            eprintln!("skipped: acting as user nobody needs root");
            return None;
        }
        if !tools_present(&["setpriv"]) {
            return None;
        }
        let dir = temp_path("control");
        std::fs::create_dir(&dir).expect("create the socket's directory");
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755))
            .expect("open the directory to traversal");
        let mut molt = PathBuf::from(env!("CARGO_BIN_EXE_molt"));
        let runs = as_nobody(&molt, &["--version"], &dir).status.success();
        if !runs {
            let copy = dir.join("molt");
            std::fs::copy(&molt, &copy).expect("copy the molt binary");
            std::fs::set_permissions(&copy, std::fs::Permissions::from_mode(0o755))
                .expect("make the copy executable");
            molt = copy;
        }
        Some(ControlDir { dir, molt })
    }

    fn socket(&self) -> PathBuf {
        self.dir.join("control.sock")
    }

    /// `molt <command>` as molt's own user (`None`) or as `nobody`.
    fn molt_as(&self, nobody: bool, command: &str) -> Output {
        if nobody {
            as_nobody(&self.molt, &[command], &self.dir)
        } else {
            let mut cmd = Command::new(&self.molt);
            cmd.arg(command);
            run_control_command(cmd, &self.socket(), &self.dir)
        }
    }
}

impl Drop for ControlDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Runs `program args` as uid and gid `nobody` with no supplementary groups.
fn as_nobody(program: &Path, args: &[&str], dir: &Path) -> Output {
    let mut cmd = Command::new("setpriv");
    cmd.arg(format!("--reuid={NOBODY}"))
        .arg(format!("--regid={NOBODY}"))
        .arg("--clear-groups")
        .arg(program)
        .args(args);
    run_control_command(cmd, &dir.join("control.sock"), dir)
}

/// Runs a command with only `PATH` and `MOLT_CONTROL_SOCKET` set, in `dir`.
fn run_control_command(mut cmd: Command, socket: &Path, dir: &Path) -> Output {
    cmd.env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("MOLT_CONTROL_SOCKET", socket)
        .current_dir(dir)
        .stdin(Stdio::null())
        .output()
        .expect("the command runs")
}

/// The control socket is 0600 and owned by molt's user; `molt status` works for that user
/// and fails for another, and even a socket opened up by hand tells another user nothing
/// (molt checks the peer's uid).
#[test]
fn control_socket_refuses_other_users() {
    let Some(control) = ControlDir::new() else {
        return;
    };
    let molt = pool(1, |b| b.env("MOLT_CONTROL_SOCKET", control.socket()));
    let meta = std::fs::metadata(control.socket()).expect("the socket exists");
    assert_eq!(meta.permissions().mode() & 0o777, 0o600);
    assert_eq!(meta.uid(), nix::unistd::geteuid().as_raw());

    let own = control.molt_as(false, "status");
    assert!(own.status.success(), "{own:?}");
    assert!(
        String::from_utf8_lossy(&own.stdout).contains("1 workers"),
        "{own:?}"
    );

    let other = control.molt_as(true, "status");
    assert!(!other.status.success(), "nobody ran molt status: {other:?}");
    assert!(other.stdout.is_empty(), "{other:?}");
    let restart = control.molt_as(true, "restart");
    assert!(
        !restart.status.success(),
        "nobody restarted the pool: {restart:?}"
    );

    // Opened up by hand, the socket still answers nobody nothing: the peer check refuses,
    // and `molt status` says it failed rather than printing nothing.
    std::fs::set_permissions(control.socket(), std::fs::Permissions::from_mode(0o666))
        .expect("chmod the socket");
    let other = control.molt_as(true, "status");
    assert!(!other.status.success(), "nobody ran molt status: {other:?}");
    assert!(
        other.stdout.is_empty(),
        "nobody read the pool's status: {other:?}"
    );
    assert!(!other.stderr.is_empty(), "{other:?}");
    let restart = control.molt_as(true, "restart");
    assert!(
        molt.wait_for_log("at=control_refused", Duration::from_secs(5)),
        "{restart:?}\n{}",
        molt.log()
    );
    assert_eq!(molt.count_log("at=restart"), 0, "{}", molt.log());
    assert_eq!(molt.count_log("reason=restart"), 0, "{}", molt.log());
}
