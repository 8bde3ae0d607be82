//! A request head as molt checks and rewrites it before a worker sees it: what is
//! refused (RFC 9112 asks a server to refuse it, or a worker could read it differently
//! from molt, which is what request smuggling is made of), and what is changed on the
//! way (hop-by-hop headers, the absolute form, `Host`, userinfo, header names with `_`,
//! `X-Forwarded-*`, `X-Request-Start`); docs/behaviour.md lists them.

use std::fmt::Write as _;
use std::net::{IpAddr, SocketAddr};
use std::time::{SystemTime, UNIX_EPOCH};

use hyper::http::Version;

use crate::config::UnderscoreHeaders;
use crate::observe::event;
use crate::run::proxy::failure::Refusal;
use crate::run::proxy::message::{self, decimal, valid_value, Fields, Name, Request, Value};

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
pub(crate) fn content_length(headers: &Fields) -> Option<u64> {
    headers
        .get(message::CONTENT_LENGTH)
        .and_then(|v| std::str::from_utf8(v).ok())
        .and_then(|v| v.trim().parse().ok())
}

/// Whether the client asks to switch protocols (WebSocket).
pub(crate) fn wants_upgrade(headers: &Fields) -> bool {
    headers.contains(message::UPGRADE) && headers.has_token(message::CONNECTION, b"upgrade")
}

/// Why a request must not reach a worker: RFC 9112 asks a server to refuse these, and a
/// worker behind a proxy might read them differently from molt, which is what request
/// smuggling is made of.
pub(crate) fn refusal<B>(req: &Request<B>) -> Option<Refusal> {
    let headers = &req.headers;
    // molt decodes a body whose last coding is chunked; any other coding (gzip,
    // chunked) or chunked twice would reach the worker altered.
    let codings = headers
        .get_all(message::TRANSFER_ENCODING)
        .flat_map(|v| v.split(|&b| b == b','))
        .map(<[u8]>::trim_ascii)
        .filter(|c| !c.is_empty());
    let (mut count, mut chunks) = (0, 0);
    for coding in codings {
        count += 1;
        chunks += usize::from(coding.eq_ignore_ascii_case(b"chunked"));
    }
    if count > 0 && !(count == 1 && chunks == 1) {
        return Some(if chunks > 1 {
            Refusal::ChunkedTwice
        } else {
            Refusal::UnknownCoding
        });
    }
    let uri = &req.uri;
    let method = &req.method;
    // molt is no forward proxy: a CONNECT's tunnel would open to the worker, which no
    // app server serves.
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
    let mut hosts = headers.get_all(message::HOST);
    let (first, second) = (hosts.next(), hosts.next());
    if second.is_some() || (first.is_none() && req.version == Version::HTTP_11) {
        return Some(Refusal::HostCount);
    }
    if let Some(host) = first {
        let valid = plain_host(host)
            || std::str::from_utf8(host)
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
    if let (Some(_), Some(authority)) = (req.uri.scheme(), req.uri.authority()) {
        let host = authority
            .as_str()
            .rsplit_once('@')
            .map_or(authority.as_str(), |(_, host)| host);
        if valid_value(host.as_bytes()) {
            req.headers
                .insert(message::HOST, Value::copy(host.as_bytes()));
        }
        let origin = req
            .uri
            .path_and_query()
            .map_or("/", hyper::http::uri::PathAndQuery::as_str)
            .to_owned();
        if let Ok(origin) = origin.parse() {
            req.uri = origin;
        }
    }
    req.version = Version::HTTP_11;
    let headers = &mut req.headers;
    if !headers.contains(message::HOST) {
        // HTTP/1.0 without Host, forwarded as HTTP/1.1, which requires one: the
        // address the client reached, as an HTTP/1.0 server would take it to be.
        let local = Arrival::canonical(arrival.local).to_string();
        headers.insert(message::HOST, Value::copy(local.as_bytes()));
    }
    // A client that takes trailers says so with `TE: trailers` (RFC 9110 10.1.4); the
    // worker is told, so that trailers it sends reach the client (molt sends a client
    // trailers only when it asked for them).
    let takes_trailers = headers.has_token(message::TE, b"trailers");
    strip_hop_by_hop(headers, upgrade, false);
    if takes_trailers {
        headers.append(message::TE, Value::from_static("trailers"));
    }
    if underscores == UnderscoreHeaders::Drop {
        drop_underscore_headers(headers);
    }
    add_forwarded(headers, arrival);
    if !headers.contains(message::X_REQUEST_START) {
        // APM tools and dyno autoscalers measure queue time from this header; the
        // router sets it on Heroku, and molt sets it elsewhere.
        let micros = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| u64::try_from(d.as_micros()).unwrap_or(u64::MAX));
        let mut value = Stack::default();
        value.push(b"t=");
        value.push(decimal(micros, &mut [0; 20]));
        headers.append(message::X_REQUEST_START, Value::copy(value.as_bytes()));
    }
}

/// Makes a worker's response head fit to send to the client, or says why the client gets
/// 502 instead: a response with both `Content-Length` and `Transfer-Encoding` could be
/// framed either way (RFC 9112 6.3 asks to handle it as an error; nginx answers 502).
/// `Trailer` is kept: it names the trailer fields then forwarded.
pub(crate) fn prepare_response(headers: &mut Fields) -> Result<(), &'static str> {
    if headers.contains(message::CONTENT_LENGTH) && headers.contains(message::TRANSFER_ENCODING) {
        return Err("length_and_chunked");
    }
    strip_hop_by_hop(headers, false, true);
    Ok(())
}

/// Removes every header whose name holds `_`: Rack, WSGI and CGI map `-` and `_` to one
/// key, so `X_Forwarded_For` could shadow the `X-Forwarded-For` a proxy set (nginx drops
/// them for this reason too).
fn drop_underscore_headers(headers: &mut Fields) {
    headers.remove_where(|_, name, _| {
        let doomed = name.contains(&b'_');
        if doomed {
            event!(
                Debug,
                "header_dropped",
                name = String::from_utf8_lossy(name),
                reason = "underscore"
            );
        }
        doomed
    });
}

/// Tells the app who the client is: the peer appended to `X-Forwarded-For` (nginx's
/// `$proxy_add_x_forwarded_for`; a client's own list is kept, the peer is what molt
/// vouches for), and `X-Forwarded-Proto` and `-Port` unless a proxy in front (Heroku's
/// router) set them.
fn add_forwarded(headers: &mut Fields, arrival: Arrival) {
    let mut peer = Stack::default();
    match arrival.peer.ip().to_canonical() {
        // Most clients, and every one behind Heroku's router: written by hand, where the
        // formatting machinery takes ten times the instructions.
        IpAddr::V4(ip) => {
            for (at, octet) in ip.octets().into_iter().enumerate() {
                if at > 0 {
                    peer.push(b".");
                }
                peer.push(decimal(u64::from(octet), &mut [0; 20]));
            }
        }
        // At most 39 characters, and the stack holds 64.
        ip @ IpAddr::V6(_) => {
            let _ = write!(peer, "{ip}");
        }
    }
    let kept = || {
        headers
            .get_all(message::X_FORWARDED_FOR)
            .map(<[u8]>::trim_ascii)
            .filter(|value| !value.is_empty())
    };
    let value = if kept().next().is_none() {
        Value::copy(peer.as_bytes())
    } else {
        // Sized exactly, so that it becomes the line's value as it is.
        let len = kept().map(|value| value.len() + 2).sum::<usize>() + peer.as_bytes().len();
        let mut list: Vec<u8> = Vec::with_capacity(len);
        for value in kept() {
            list.extend_from_slice(value);
            list.extend_from_slice(b", ");
        }
        list.extend_from_slice(peer.as_bytes());
        Value::from_vec(list)
    };
    headers.insert(message::X_FORWARDED_FOR, value);
    if !headers.contains(message::X_FORWARDED_PROTO) {
        headers.append(message::X_FORWARDED_PROTO, Value::from_static("http"));
    }
    if !headers.contains(message::X_FORWARDED_PORT) {
        headers.append(
            message::X_FORWARDED_PORT,
            Value::number(u64::from(arrival.local.port())),
        );
    }
}

/// A short text written on the stack: an address, formatted without an allocation.
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
const HOP_BY_HOP: [Name; 6] = [
    message::KEEP_ALIVE,
    message::PROXY_CONNECTION,
    message::TE,
    message::TRAILER,
    message::TRANSFER_ENCODING,
    message::UPGRADE,
];

/// Removes the headers that describe one connection (RFC 9110 section 7.6.1) rather
/// than the message, including any the `Connection` header names. An upgrade keeps
/// `Upgrade` and `Connection: upgrade`, which the worker needs to accept it; a response
/// keeps `Trailer` (`keep_trailer`).
pub(crate) fn strip_hop_by_hop(headers: &mut Fields, upgrade: bool, keep_trailer: bool) {
    // Whether `Connection` names more than `close` and `keep-alive` (whose header goes
    // anyway), as it seldom does; only then is each line looked for among its tokens.
    let names_more = headers
        .get_all(message::CONNECTION)
        .flat_map(|v| v.split(|&b| b == b','))
        .map(<[u8]>::trim_ascii)
        .any(|t| {
            !t.is_empty()
                && !t.eq_ignore_ascii_case(b"close")
                && !t.eq_ignore_ascii_case(b"keep-alive")
        });
    headers.remove_where(|fields, name, known| {
        if known == Some(message::CONNECTION) {
            return true;
        }
        // A client cannot make molt drop Host: the worker needs it, and an HTTP/1.1
        // request without it is invalid.
        let kept = (upgrade && known == Some(message::UPGRADE))
            || (keep_trailer && known == Some(message::TRAILER))
            || known == Some(message::HOST);
        !kept
            && (known.is_some_and(|known| HOP_BY_HOP.contains(&known))
                || (names_more && fields.has_token(message::CONNECTION, name)))
    });
    if upgrade {
        headers.append(message::CONNECTION, Value::from_static("upgrade"));
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

    #[test]
    fn hop_by_hop_headers_are_removed() {
        let mut map = Fields::of_pairs(&[
            ("connection", "keep-alive, x-secret"),
            ("keep-alive", "timeout=5"),
            ("x-secret", "1"),
            ("te", "trailers"),
            ("transfer-encoding", "chunked"),
            ("host", "example.com"),
            ("x-request-id", "abc"),
            ("Trailer", "x-sum"),
        ]);
        let mut response = map.clone();
        strip_hop_by_hop(&mut response, false, true);
        let names = |fields: &Fields| -> Vec<String> {
            fields
                .iter()
                .map(|(name, _)| String::from_utf8_lossy(name).into_owned())
                .collect()
        };
        assert_eq!(names(&response), ["host", "x-request-id", "Trailer"]);
        strip_hop_by_hop(&mut map, false, false);
        assert_eq!(names(&map), ["host", "x-request-id"]);
        // What Connection names goes wherever Connection stands.
        let mut later = Fields::of_pairs(&[
            ("X-Secret", "1"),
            ("host", "example.com"),
            ("Connection", "X-secret"),
        ]);
        strip_hop_by_hop(&mut later, false, false);
        assert_eq!(names(&later), ["host"]);
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
        assert_eq!(req.version, Version::HTTP_11);
        let mut seen: Vec<String> = req
            .headers
            .iter()
            .filter(|(name, _)| *name != b"x-request-start")
            .map(|(name, value)| {
                format!(
                    "{}: {}",
                    String::from_utf8_lossy(name),
                    String::from_utf8_lossy(value)
                )
            })
            .collect();
        seen.sort_unstable();
        (req.uri.to_string(), seen)
    }

    fn request(version: Version, target: &str, pairs: &[(&'static str, &str)]) -> Request<()> {
        Request::test("GET", target, version, pairs, ())
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

    /// The peer written by hand is what `Display` gives, and the port is the one reached.
    #[test]
    fn the_peer_and_port_are_written_as_display_writes_them() {
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
            let mut headers = Fields::new();
            add_forwarded(&mut headers, arrival);
            assert_eq!(
                headers.get(message::X_FORWARDED_FOR),
                Some(ip.to_canonical().to_string().as_bytes())
            );
            assert_eq!(headers.get(message::X_FORWARDED_PORT), Some(&b"8080"[..]));
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
        let refused =
            |pairs: &[(&'static str, &str)]| refusal(&request(Version::HTTP_10, "/", pairs));
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
        let mut map = Fields::of_pairs(&[
            ("connection", "keep-alive, Upgrade"),
            ("upgrade", "websocket"),
            ("sec-websocket-key", "k"),
        ]);
        assert!(wants_upgrade(&map));
        strip_hop_by_hop(&mut map, true, false);
        assert_eq!(map.get(message::UPGRADE), Some(&b"websocket"[..]));
        assert_eq!(map.get(message::CONNECTION), Some(&b"upgrade"[..]));
        assert!(map.contains(Name::of("sec-websocket-key")));
        assert!(!wants_upgrade(&Fields::of_pairs(&[(
            "upgrade",
            "websocket"
        )])));
    }
}
