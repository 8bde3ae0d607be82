//! What molt's HTTP/1.1 server (`conn`) and client (`client`) read alike: a head's header
//! lines as spans into its bytes, `Connection` tokens, the last transfer coding, chunk
//! sizes, and taking body bytes off a buffer.

use bytes::{Bytes, BytesMut};
use hyper::header::HeaderMap;

use crate::run::proxy::message::{self, Fields};

/// Most header lines in a head, as hyper counted them on either side.
pub(super) const MAX_HEADERS: usize = 100;

/// A header's name and value as offsets into the head: name start and end, value start
/// and end. (A head is at most a little over `conn::MAX_HEAD` long.)
pub(super) type Span = (u32, u32, u32, u32);

/// Room for the spans of a head's headers.
pub(super) type Spans = [Span; MAX_HEADERS];

/// An offset into a head, which fits a `u32`.
fn offset(at: usize) -> u32 {
    u32::try_from(at).expect("a head is far shorter than 4 GiB")
}

/// Writes into `spans` the spans of `headers`, parsed out of the head that starts at
/// `base`, so that the values can share the head's bytes once it is taken off the
/// buffer; returns how many there are. The caller holds `spans` (and httparse's headers,
/// uninitialised), rather than a function returning them: each is a few KiB, written and
/// copied for every head.
pub(super) fn spans(base: &[u8], headers: &[httparse::Header<'_>], spans: &mut Spans) -> usize {
    let base = base.as_ptr() as usize;
    for (span, header) in spans.iter_mut().zip(headers) {
        let name = header.name.as_ptr() as usize - base;
        let value = header.value.as_ptr() as usize - base;
        *span = (
            offset(name),
            offset(name + header.name.len()),
            offset(value),
            offset(value + header.value.len()),
        );
    }
    headers.len()
}

/// Whether the `Connection` headers say `close`, and `keep-alive`.
pub(super) fn connection_tokens(headers: &Fields) -> (bool, bool) {
    let mut close = false;
    let mut keep_alive = false;
    for value in headers.get_all(message::CONNECTION) {
        for token in value.split(|&b| b == b',') {
            let token = token.trim_ascii();
            close |= token.eq_ignore_ascii_case(b"close");
            keep_alive |= token.eq_ignore_ascii_case(b"keep-alive");
        }
    }
    (close, keep_alive)
}

/// Whether the last coding of the last `Transfer-Encoding` line is `chunked`.
pub(super) fn last_coding_is_chunked(headers: &Fields) -> bool {
    headers
        .get_all(message::TRANSFER_ENCODING)
        .next_back()
        .and_then(|value| value.rsplit(|&b| b == b',').next())
        .is_some_and(|last| last.trim_ascii().eq_ignore_ascii_case(b"chunked"))
}

/// Appends one header line.
pub(super) fn encode_header(into: &mut Vec<u8>, name: &[u8], value: &[u8]) {
    into.extend_from_slice(name);
    into.extend_from_slice(b": ");
    into.extend_from_slice(value);
    into.extend_from_slice(b"\r\n");
}

/// Appends a line for each of a chunked body's trailers.
pub(super) fn encode_trailers(into: &mut Vec<u8>, trailers: &HeaderMap) {
    for (name, value) in trailers {
        encode_header(into, name.as_str().as_bytes(), value.as_bytes());
    }
}

/// Up to `left` bytes off the front of `buf`.
pub(super) fn take_up_to(buf: &mut BytesMut, left: u64) -> Bytes {
    let take = usize::try_from(left).map_or(buf.len(), |left| left.min(buf.len()));
    buf.split_to(take).freeze()
}

/// The size of the chunk whose size line starts `buf`, the line taken off; `Ok(None)`
/// while the line is not whole. A line that is no chunk size, one longer than `max`, and
/// with `crlf` one not ending in CRLF (a request's framing is read strictly, a worker's
/// as leniently as hyper's client read it) is an error saying which.
pub(super) fn take_chunk_size(
    buf: &mut BytesMut,
    crlf: bool,
    max: usize,
) -> Result<Option<u64>, &'static str> {
    let Some(end) = buf.iter().position(|&b| b == b'\n') else {
        return if buf.len() > max {
            Err("a chunk line too long")
        } else {
            Ok(None)
        };
    };
    if crlf && (end == 0 || buf[end - 1] != b'\r') {
        return Err("a chunk line without CRLF");
    }
    let size = chunk_size(&buf[..end]).ok_or("a malformed chunk size")?;
    let _ = buf.split_to(end + 1);
    Ok(Some(size))
}

/// A chunk's size from its line (without the line feed): hex digits, then optional
/// whitespace and `;` extensions, which are ignored.
pub(super) fn chunk_size(line: &[u8]) -> Option<u64> {
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    let digits = line
        .iter()
        .position(|b| !b.is_ascii_hexdigit())
        .map_or(line, |end| &line[..end]);
    let rest = &line[digits.len()..];
    let rest = rest.trim_ascii_start();
    if digits.is_empty() || digits.len() > 16 || !(rest.is_empty() || rest.starts_with(b";")) {
        return None;
    }
    u64::from_str_radix(std::str::from_utf8(digits).ok()?, 16).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunk_sizes_are_hex_with_optional_extensions() {
        assert_eq!(chunk_size(b"5\r"), Some(5));
        assert_eq!(chunk_size(b"1aF;name=value\r"), Some(0x1af));
        assert_eq!(chunk_size(b"5 ;x\r"), Some(5));
        assert_eq!(chunk_size(b"0"), Some(0));
        assert_eq!(chunk_size(b"zz\r"), None);
        assert_eq!(chunk_size(b"\r"), None);
        assert_eq!(chunk_size(b"5 x\r"), None);
        assert_eq!(
            chunk_size(b"11111111111111111\r"),
            None,
            "more than 64 bits"
        );
    }

    #[test]
    fn a_chunk_size_line_is_taken_whole_and_strictly_when_asked() {
        let mut buf = BytesMut::from(&b"a;x=1\r\nrest"[..]);
        assert_eq!(take_chunk_size(&mut buf, true, 16), Ok(Some(10)));
        assert_eq!(&buf[..], b"rest");
        let mut partial = BytesMut::from(&b"a;x"[..]);
        assert_eq!(take_chunk_size(&mut partial, true, 16), Ok(None));
        assert!(
            take_chunk_size(&mut partial, true, 2).is_err(),
            "longer than the limit"
        );
        let mut bare_lf = BytesMut::from(&b"3\nabc"[..]);
        assert!(take_chunk_size(&mut bare_lf.clone(), true, 16).is_err());
        assert_eq!(take_chunk_size(&mut bare_lf, false, 16), Ok(Some(3)));
    }

    #[test]
    fn connection_tokens_are_read_across_lines_in_any_case() {
        let one = [("connection", "Upgrade, KEEP-alive")];
        assert_eq!(connection_tokens(&Fields::of_pairs(&one)), (false, true));
        let two = [one[0], ("Connection", " close ")];
        assert_eq!(connection_tokens(&Fields::of_pairs(&two)), (true, true));
    }

    #[test]
    fn only_the_last_coding_of_the_last_line_says_chunked() {
        let chunked = |lines: &[&str]| {
            let pairs: Vec<_> = lines.iter().map(|&v| ("Transfer-Encoding", v)).collect();
            last_coding_is_chunked(&Fields::of_pairs(&pairs))
        };
        assert!(chunked(&["chunked"]));
        assert!(!chunked(&["chunked", "chunked, gzip"]));
        assert!(chunked(&["chunked", "chunked, gzip", "gzip,  Chunked "]));
    }
}
