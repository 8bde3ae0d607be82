//! A request head as molt checks and rewrites it before a worker sees it: what is
//! refused (RFC 9112 asks a server to refuse it, or a worker could read it differently
//! from molt, which is what request smuggling is made of), and what is changed on the
//! way (hop-by-hop headers, the absolute form, `Host`, userinfo, header names with `_`,
//! `X-Forwarded-*`, `X-Request-Start`); docs/behaviour.md lists them.

use std::cell::RefCell;
use std::fmt::Write as _;
use std::net::{IpAddr, SocketAddr};
use std::time::{SystemTime, UNIX_EPOCH};

use hyper::header::{self, HeaderMap, HeaderName, HeaderValue};
use hyper::http::{Request, Version};

use crate::config::UnderscoreHeaders;
use crate::observe::event;
use crate::run::proxy::failure::Refusal;

/// Where a request came from and where it arrived: the two ends of the client's socket.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Arrival {
    /// The client's address, as `X-Forwarded-For` gets it.
    pub(crate) peer: SocketAddr,
    /// The listener's address as the client reached it: the `Host` of a request that
    /// names none, and `X-Forwarded-Port`.
    pub(crate) local: SocketAddr,
}

impl Arrival {
    /// An IPv4 client of the dual-stack listener shows as `::ffff:a.b.c.d`; apps and logs
    /// know it as `a.b.c.d`.
    fn canonical(addr: SocketAddr) -> SocketAddr {
        SocketAddr::new(addr.ip().to_canonical(), addr.port())
    }
}

/// The request's declared body length, when it declares one.
pub(crate) fn content_length(headers: &HeaderMap) -> Option<u64> {
    headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse().ok())
}

/// Whether the client asks to switch protocols (WebSocket).
pub(crate) fn wants_upgrade(headers: &HeaderMap) -> bool {
    headers.contains_key(header::UPGRADE)
        && headers
            .get_all(header::CONNECTION)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .any(|token| token.trim().eq_ignore_ascii_case("upgrade"))
}

/// Why a request must not reach a worker, when hyper let it through: RFC 9112 asks a
/// server to refuse these, and a worker behind a proxy might read them differently from
/// molt, which is what request smuggling is made of.
pub(crate) fn refusal<B>(req: &Request<B>) -> Option<Refusal> {
    let headers = req.headers();
    // hyper decodes a body whose last coding is chunked; any other coding (gzip,
    // chunked) or chunked twice would reach the worker altered.
    let codings: Vec<String> = headers
        .get_all(header::TRANSFER_ENCODING)
        .iter()
        .flat_map(|v| v.to_str().unwrap_or("?").split(','))
        .map(|c| c.trim().to_ascii_lowercase())
        .filter(|c| !c.is_empty())
        .collect();
    if !codings.is_empty() && codings != ["chunked"] {
        return Some(if codings.iter().filter(|c| *c == "chunked").count() > 1 {
            Refusal::ChunkedTwice
        } else {
            Refusal::UnknownCoding
        });
    }
    let uri = req.uri();
    let method = req.method();
    // molt is no forward proxy: a CONNECT's tunnel would open to the worker, which no
    // app server serves (hyper takes a 2xx to it as the start of a tunnel).
    if method == hyper::Method::CONNECT {
        return Some(Refusal::Connect);
    }
    // Authority form is for CONNECT only, asterisk form for OPTIONS only.
    if uri.scheme().is_none() && uri.authority().is_some() {
        return Some(Refusal::AuthorityForm);
    }
    if uri.path() == "*" && method != hyper::Method::OPTIONS {
        return Some(Refusal::AsteriskForm);
    }
    // HTTP/1.1 requires exactly one valid Host (RFC 9112 section 3.2). HTTP/1.0 may
    // have none, but one it has is forwarded as HTTP/1.1's, so it must be as valid.
    let mut hosts = headers.get_all(header::HOST).iter();
    let (first, second) = (hosts.next(), hosts.next());
    if second.is_some() || (first.is_none() && req.version() == Version::HTTP_11) {
        return Some(Refusal::HostCount);
    }
    if let Some(host) = first {
        let valid = plain_host(host.as_bytes())
            || host
                .to_str()
                .ok()
                .and_then(|h| h.parse::<hyper::http::uri::Authority>().ok())
                .is_some_and(|a| !a.as_str().contains('@') && valid_port(a.as_str()));
        if !valid {
            return Some(Refusal::HostInvalid);
        }
    }
    None
}

/// Whether `host` is a name or IPv4 address of letters, digits, dots and dashes, with a
/// port or none: valid as it stands (most are), without the parse into an `Authority`,
/// which copies it.
fn plain_host(host: &[u8]) -> bool {
    let (name, port) = match host.iter().position(|&b| b == b':') {
        Some(colon) => (&host[..colon], Some(&host[colon + 1..])),
        None => (host, None),
    };
    name.first().is_some_and(u8::is_ascii_alphanumeric)
        && name
            .iter()
            .all(|&b| b.is_ascii_alphanumeric() || b == b'.' || b == b'-')
        && port.is_none_or(|port| {
            !port.is_empty()
                && port.iter().all(u8::is_ascii_digit)
                && std::str::from_utf8(port).is_ok_and(|port| port.parse::<u16>().is_ok())
        })
}

/// Whether the port of a `host[:port]` (or `[v6]:port`), if any, is a number.
fn valid_port(authority: &str) -> bool {
    let after_host = authority
        .rsplit_once(']')
        .map_or(authority, |(_, rest)| rest);
    after_host
        .rsplit_once(':')
        .is_none_or(|(_, port)| port.is_empty() || port.parse::<u16>().is_ok())
}

/// Makes the client's request fit to send to a worker (docs/behaviour.md, "What the app
/// sees").
pub(crate) fn prepare_request<B>(
    req: &mut Request<B>,
    upgrade: bool,
    arrival: Arrival,
    underscores: UnderscoreHeaders,
) {
    // An absolute-form target names the host itself, which then replaces Host (RFC 9112
    // section 3.2.2); the worker gets the usual origin form. Userinfo (`user:secret@`)
    // is no part of a Host and never reaches the worker.
    if let (Some(_), Some(authority)) = (req.uri().scheme(), req.uri().authority()) {
        let host = authority
            .as_str()
            .rsplit_once('@')
            .map_or(authority.as_str(), |(_, host)| host);
        if let Ok(host) = HeaderValue::from_str(host) {
            req.headers_mut().insert(header::HOST, host);
        }
        let origin = req
            .uri()
            .path_and_query()
            .map_or("/", hyper::http::uri::PathAndQuery::as_str)
            .to_owned();
        if let Ok(origin) = origin.parse() {
            *req.uri_mut() = origin;
        }
    }
    *req.version_mut() = Version::HTTP_11;
    let headers = req.headers_mut();
    if !headers.contains_key(header::HOST) {
        // HTTP/1.0 without Host, forwarded as HTTP/1.1, which requires one: the
        // address the client reached, as an HTTP/1.0 server would take it to be.
        let local = Arrival::canonical(arrival.local);
        if let Ok(host) = HeaderValue::from_str(&local.to_string()) {
            headers.insert(header::HOST, host);
        }
    }
    // A client that takes trailers says so with `TE: trailers` (RFC 9110 10.1.4); the
    // worker is told, so that trailers it sends reach the client (hyper sends a client
    // trailers only when it asked for them).
    let takes_trailers = headers
        .get_all(header::TE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|coding| coding.trim().eq_ignore_ascii_case("trailers"));
    strip_hop_by_hop(headers, upgrade);
    if takes_trailers {
        headers.insert(header::TE, HeaderValue::from_static("trailers"));
    }
    if underscores == UnderscoreHeaders::Drop {
        drop_underscore_headers(headers);
    }
    add_forwarded(headers, arrival);
    if !headers.contains_key("x-request-start") {
        // APM tools and dyno autoscalers measure queue time from this header; the
        // router sets it on Heroku, and molt sets it elsewhere.
        let micros = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| u64::try_from(d.as_micros()).unwrap_or(u64::MAX));
        let mut value = Stack::default();
        value.push(b"t=");
        value.push_number(micros);
        if let Ok(value) = HeaderValue::from_bytes(value.as_bytes()) {
            headers.insert(HeaderName::from_static("x-request-start"), value);
        }
    }
}

/// Makes a worker's response head fit to send to the client, or says why the client gets
/// 502 instead: a response with both `Content-Length` and `Transfer-Encoding` could be
/// framed either way (RFC 9112 6.3 asks to handle it as an error; nginx answers 502).
/// `Trailer` is kept: it names the trailer fields hyper then forwards.
pub(crate) fn prepare_response(headers: &mut HeaderMap) -> Result<(), &'static str> {
    if headers.contains_key(header::CONTENT_LENGTH)
        && headers.contains_key(header::TRANSFER_ENCODING)
    {
        return Err("length_and_chunked");
    }
    let trailer: Vec<HeaderValue> = headers.get_all(header::TRAILER).iter().cloned().collect();
    strip_hop_by_hop(headers, false);
    for value in trailer {
        headers.append(header::TRAILER, value);
    }
    Ok(())
}

/// Removes every header whose name holds `_`: Rack, WSGI and CGI map `-` and `_` to one
/// key, so `X_Forwarded_For` could shadow the `X-Forwarded-For` a proxy set (nginx drops
/// them for this reason too).
fn drop_underscore_headers(headers: &mut HeaderMap) {
    let named: Vec<HeaderName> = headers
        .keys()
        .filter(|name| name.as_str().contains('_'))
        .cloned()
        .collect();
    for name in named {
        event!(
            Debug,
            "header_dropped",
            name = name.as_str(),
            reason = "underscore"
        );
        headers.remove(name);
    }
}

/// Tells the app who the client is: the peer appended to `X-Forwarded-For` (nginx's
/// `$proxy_add_x_forwarded_for`; a client's own list is kept, the peer is what molt
/// vouches for), and `X-Forwarded-Proto` and `-Port` unless a proxy in front (Heroku's
/// router) set them.
fn add_forwarded(headers: &mut HeaderMap, arrival: Arrival) {
    let forwarded_for = HeaderName::from_static("x-forwarded-for");
    let mut peer = Stack::default();
    match arrival.peer.ip().to_canonical() {
        // Most clients, and every one behind Heroku's router: written by hand, where the
        // formatting machinery takes ten times the instructions.
        IpAddr::V4(ip) => {
            for (at, octet) in ip.octets().into_iter().enumerate() {
                if at > 0 {
                    peer.push(b".");
                }
                peer.push_number(u64::from(octet));
            }
        }
        // At most 39 characters, and the stack holds 64.
        ip @ IpAddr::V6(_) => {
            let _ = write!(peer, "{ip}");
        }
    }
    let kept = || {
        headers
            .get_all(&forwarded_for)
            .iter()
            .map(|value| value.as_bytes().trim_ascii())
            .filter(|value| !value.is_empty())
    };
    // Sized exactly, so that it becomes the header's value as it is.
    let len = kept().map(|value| value.len() + 2).sum::<usize>() + peer.as_bytes().len();
    let mut list: Vec<u8> = Vec::with_capacity(len);
    for value in kept() {
        list.extend_from_slice(value);
        list.extend_from_slice(b", ");
    }
    list.extend_from_slice(peer.as_bytes());
    if let Ok(value) = HeaderValue::from_maybe_shared(bytes::Bytes::from(list)) {
        headers.insert(forwarded_for, value);
    }
    let proto = HeaderName::from_static("x-forwarded-proto");
    if !headers.contains_key(&proto) {
        headers.insert(proto, HeaderValue::from_static("http"));
    }
    let port = HeaderName::from_static("x-forwarded-port");
    if !headers.contains_key(&port) {
        headers.insert(port, port_value(arrival.local.port()));
    }
}

thread_local! {
    /// The last port's `X-Forwarded-Port` value: every connection reached the one public
    /// port, so the value is made once per thread and shared, not allocated per request.
    static PORT: RefCell<Option<(u16, HeaderValue)>> = const { RefCell::new(None) };
}

fn port_value(port: u16) -> HeaderValue {
    PORT.with(|last| {
        let mut last = last.borrow_mut();
        match &*last {
            Some((seen, value)) if *seen == port => value.clone(),
            _ => {
                let value = HeaderValue::from(port);
                *last = Some((port, value.clone()));
                value
            }
        }
    })
}

/// A short text written on the stack: an address or a number, formatted without an
/// allocation.
struct Stack {
    bytes: [u8; 64],
    len: usize,
}

impl Default for Stack {
    fn default() -> Self {
        Stack {
            bytes: [0; 64],
            len: 0,
        }
    }
}

impl Stack {
    fn as_bytes(&self) -> &[u8] {
        &self.bytes[..self.len]
    }

    /// Appends `text`; what does not fit is left out (nothing written here is longer
    /// than the stack).
    fn push(&mut self, text: &[u8]) {
        let end = (self.len + text.len()).min(self.bytes.len());
        self.bytes[self.len..end].copy_from_slice(&text[..end - self.len]);
        self.len = end;
    }

    /// Appends `n` in decimal.
    fn push_number(&mut self, mut n: u64) {
        let mut digits = [0u8; 20];
        let mut at = digits.len();
        loop {
            at -= 1;
            digits[at] = b'0' + (n % 10) as u8;
            n /= 10;
            if n == 0 {
                break;
            }
        }
        self.push(&digits[at..]);
    }
}

impl std::fmt::Write for Stack {
    fn write_str(&mut self, text: &str) -> std::fmt::Result {
        let room = self
            .bytes
            .get_mut(self.len..self.len + text.len())
            .ok_or(std::fmt::Error)?;
        room.copy_from_slice(text.as_bytes());
        self.len += text.len();
        Ok(())
    }
}

/// The headers that describe one connection besides `Connection` and what it names.
const HOP_BY_HOP: [&str; 6] = [
    "keep-alive",
    "proxy-connection",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
];

/// Removes the headers that describe one connection (RFC 9110 section 7.6.1) rather
/// than the message, including any the `Connection` header names. An upgrade keeps
/// `Upgrade` and `Connection: upgrade`, which the worker needs to accept it.
pub(crate) fn strip_hop_by_hop(headers: &mut HeaderMap, upgrade: bool) {
    // The Connection lines are taken out, and what they name removed after; a second
    // line, seldom there, is the only thing allocated.
    let (first, more): (Option<HeaderValue>, Vec<HeaderValue>) =
        match headers.entry(header::CONNECTION) {
            header::Entry::Occupied(lines) => {
                let mut lines = lines.remove_entry_mult().1;
                (lines.next(), lines.collect())
            }
            header::Entry::Vacant(_) => (None, Vec::new()),
        };
    for token in first
        .iter()
        .chain(&more)
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
    {
        // A client cannot make molt drop Host: the worker needs it, and an HTTP/1.1
        // request without it is invalid. `keep-alive`, the usual token, names a header
        // that goes anyway.
        let kept = (upgrade && token.eq_ignore_ascii_case("upgrade"))
            || token.eq_ignore_ascii_case("host")
            || token.eq_ignore_ascii_case("keep-alive");
        if !kept {
            headers.remove(token);
        }
    }
    // One look at each name present, rather than a lookup of each of these, most of
    // which are not there.
    let mut present = 0u8;
    for name in headers.keys() {
        if let Some(at) = HOP_BY_HOP.iter().position(|&hop| name.as_str() == hop) {
            present |= 1 << at;
        }
    }
    for (at, &name) in HOP_BY_HOP.iter().enumerate() {
        if present & (1 << at) != 0 && !(upgrade && name == "upgrade") {
            headers.remove(name);
        }
    }
    if upgrade {
        headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The shortcut takes only hosts the full parse takes too, and most hosts.
    #[test]
    fn a_plain_host_is_one_the_authority_parse_takes() {
        let parsed = |host: &str| {
            host.parse::<hyper::http::uri::Authority>()
                .is_ok_and(|a| !a.as_str().contains('@') && valid_port(a.as_str()))
        };
        for host in [
            "example.com",
            "example.com:80",
            "a-b.c:65535",
            "127.0.0.1:8080",
            "localhost",
        ] {
            assert!(plain_host(host.as_bytes()), "{host}");
            assert!(parsed(host), "{host}");
        }
        for host in [
            "x:65536",
            "x:",
            "[::1]:80",
            "user@x",
            "-x",
            "",
            "x y",
            "x:8o",
            ":80",
            "ex%41mple",
        ] {
            assert!(
                !plain_host(host.as_bytes()),
                "{host} goes to the full parse"
            );
        }
    }

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (k, v) in pairs {
            map.append(
                HeaderName::from_bytes(k.as_bytes()).expect("valid name"),
                HeaderValue::from_str(v).expect("valid value"),
            );
        }
        map
    }

    #[test]
    fn hop_by_hop_headers_are_removed() {
        let mut map = headers(&[
            ("connection", "keep-alive, x-secret"),
            ("keep-alive", "timeout=5"),
            ("x-secret", "1"),
            ("te", "trailers"),
            ("transfer-encoding", "chunked"),
            ("host", "example.com"),
            ("x-request-id", "abc"),
        ]);
        strip_hop_by_hop(&mut map, false);
        let mut left: Vec<&str> = map.keys().map(HeaderName::as_str).collect();
        left.sort_unstable();
        assert_eq!(left, ["host", "x-request-id"]);
    }

    const ARRIVAL: &str = "[::ffff:10.0.0.7]:40000 [::ffff:127.0.0.1]:5000";

    fn arrival() -> Arrival {
        let (peer, local) = ARRIVAL.split_once(' ').expect("two addresses");
        Arrival {
            peer: peer.parse().expect("an address"),
            local: local.parse().expect("an address"),
        }
    }

    /// The request as a worker gets it: its target and headers, `X-Request-Start` left out.
    fn prepared(raw: Request<()>, underscores: UnderscoreHeaders) -> (String, Vec<String>) {
        let mut req = raw;
        assert_eq!(refusal(&req), None);
        prepare_request(&mut req, false, arrival(), underscores);
        assert_eq!(req.version(), Version::HTTP_11);
        let mut seen: Vec<String> = req
            .headers()
            .iter()
            .filter(|(name, _)| name.as_str() != "x-request-start")
            .map(|(name, value)| format!("{name}: {}", value.to_str().expect("ascii")))
            .collect();
        seen.sort_unstable();
        (req.uri().to_string(), seen)
    }

    fn request(version: Version, target: &str, pairs: &[(&str, &str)]) -> Request<()> {
        let mut req = Request::builder().version(version).uri(target);
        for (name, value) in pairs {
            req = req.header(*name, *value);
        }
        req.body(()).expect("a valid request")
    }

    #[test]
    fn http_1_0_without_host_gets_the_address_the_client_reached() {
        let (target, seen) = prepared(
            request(Version::HTTP_10, "/x", &[]),
            UnderscoreHeaders::Drop,
        );
        assert_eq!(target, "/x");
        assert_eq!(
            seen,
            [
                "host: 127.0.0.1:5000",
                "x-forwarded-for: 10.0.0.7",
                "x-forwarded-port: 5000",
                "x-forwarded-proto: http"
            ]
        );
    }

    #[test]
    fn userinfo_of_an_absolute_target_never_reaches_host() {
        let (target, seen) = prepared(
            request(
                Version::HTTP_11,
                "http://user:secret@example.com:1234/p?q",
                &[("host", "other")],
            ),
            UnderscoreHeaders::Drop,
        );
        assert_eq!(target, "/p?q");
        assert!(
            seen.contains(&"host: example.com:1234".to_owned()),
            "{seen:?}"
        );
        assert!(!seen.iter().any(|h| h.contains("secret")), "{seen:?}");
    }

    #[test]
    fn forwarded_for_is_appended_and_proto_and_port_kept() {
        let (_, seen) = prepared(
            request(
                Version::HTTP_11,
                "/",
                &[
                    ("host", "a"),
                    ("x-forwarded-for", "1.1.1.1"),
                    ("x-forwarded-for", "2.2.2.2, 3.3.3.3"),
                    ("x-forwarded-proto", "https"),
                    ("x-forwarded-port", "443"),
                ],
            ),
            UnderscoreHeaders::Drop,
        );
        assert_eq!(
            seen,
            [
                "host: a",
                "x-forwarded-for: 1.1.1.1, 2.2.2.2, 3.3.3.3, 10.0.0.7",
                "x-forwarded-port: 443",
                "x-forwarded-proto: https"
            ]
        );
    }

    /// The hand-written forms are the ones `Display` gives.
    #[test]
    fn the_peer_port_and_stamp_are_written_as_display_writes_them() {
        for ip in [
            "0.0.0.0",
            "255.255.255.255",
            "10.0.0.7",
            "192.168.100.9",
            "::ffff:1.2.3.4",
            "::1",
            "2001:db8::8a2e:370:7334",
        ] {
            let ip: IpAddr = ip.parse().unwrap();
            let arrival = Arrival {
                peer: SocketAddr::new(ip, 1),
                local: SocketAddr::new(ip, 8080),
            };
            let mut headers = HeaderMap::new();
            add_forwarded(&mut headers, arrival);
            assert_eq!(
                headers["x-forwarded-for"].to_str().unwrap(),
                ip.to_canonical().to_string()
            );
        }
        for port in [80, 5000, 80] {
            assert_eq!(port_value(port), port.to_string().as_str());
        }
        for n in [0, 7, 10, 1_764_633_600_123_456, u64::MAX] {
            let mut stack = Stack::default();
            stack.push_number(n);
            assert_eq!(stack.as_bytes(), n.to_string().as_bytes());
        }
    }

    #[test]
    fn underscore_headers_are_dropped_unless_passed() {
        let raw = || {
            request(
                Version::HTTP_11,
                "/",
                &[("host", "a"), ("x_forwarded_for", "6.6.6.6"), ("x-ok", "1")],
            )
        };
        let (_, dropped) = prepared(raw(), UnderscoreHeaders::Drop);
        assert!(!dropped.iter().any(|h| h.contains('_')), "{dropped:?}");
        assert!(dropped.contains(&"x-ok: 1".to_owned()));
        let (_, passed) = prepared(raw(), UnderscoreHeaders::Pass);
        assert!(passed.contains(&"x_forwarded_for: 6.6.6.6".to_owned()));
        assert!(passed.contains(&"x-forwarded-for: 10.0.0.7".to_owned()));
    }

    #[test]
    fn http_1_0_host_must_be_valid_and_single() {
        let refused = |pairs: &[(&str, &str)]| refusal(&request(Version::HTTP_10, "/", pairs));
        assert_eq!(refused(&[]), None);
        assert_eq!(refused(&[("host", "a")]), None);
        assert_eq!(
            refused(&[("host", "a"), ("host", "b")]),
            Some(Refusal::HostCount)
        );
        assert_eq!(refused(&[("host", "a b")]), Some(Refusal::HostInvalid));
    }

    #[test]
    fn upgrades_keep_what_the_worker_needs() {
        let mut map = headers(&[
            ("connection", "keep-alive, Upgrade"),
            ("upgrade", "websocket"),
            ("sec-websocket-key", "k"),
        ]);
        assert!(wants_upgrade(&map));
        strip_hop_by_hop(&mut map, true);
        assert_eq!(
            map.get("upgrade").map(HeaderValue::as_bytes),
            Some(&b"websocket"[..])
        );
        assert_eq!(
            map.get("connection").map(HeaderValue::as_bytes),
            Some(&b"upgrade"[..])
        );
        assert!(map.contains_key("sec-websocket-key"));
        assert!(!wants_upgrade(&headers(&[("upgrade", "websocket")])));
    }
}
