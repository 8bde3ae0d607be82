//! A request head as molt checks and rewrites it before a worker sees it: what is
//! refused (RFC 9112 asks a server to refuse it, or a worker could read it differently
//! from molt, which is what request smuggling is made of), and what is changed on the
//! way (hop-by-hop headers, the absolute form, `X-Request-Start`).

use std::time::{SystemTime, UNIX_EPOCH};

use hyper::body::Incoming;
use hyper::header::{self, HeaderMap, HeaderName, HeaderValue};
use hyper::http::{Request, Version};

use crate::run::proxy::failure::Refusal;

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
    // Authority form is for CONNECT only, asterisk form for OPTIONS only.
    if uri.scheme().is_none() && uri.authority().is_some() && method != hyper::Method::CONNECT {
        return Some(Refusal::AuthorityForm);
    }
    if uri.path() == "*" && method != hyper::Method::OPTIONS {
        return Some(Refusal::AsteriskForm);
    }
    // HTTP/1.1 requires exactly one valid Host (RFC 9112 section 3.2).
    if req.version() == Version::HTTP_11 {
        let mut hosts = headers.get_all(header::HOST).iter();
        let (Some(host), None) = (hosts.next(), hosts.next()) else {
            return Some(Refusal::HostCount);
        };
        let valid = host
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

/// Whether the port of a `host[:port]` (or `[v6]:port`), if any, is a number.
fn valid_port(authority: &str) -> bool {
    let after_host = authority
        .rsplit_once(']')
        .map_or(authority, |(_, rest)| rest);
    after_host
        .rsplit_once(':')
        .is_none_or(|(_, port)| port.is_empty() || port.parse::<u16>().is_ok())
}

/// Makes the client's request fit to send to a worker.
pub(crate) fn prepare_request(req: &mut Request<Incoming>, upgrade: bool) {
    // An absolute-form target names the host itself, which then replaces Host (RFC 9112
    // section 3.2.2); the worker gets the usual origin form.
    if let (Some(_), Some(authority)) = (req.uri().scheme(), req.uri().authority()) {
        if let Ok(host) = HeaderValue::from_str(authority.as_str()) {
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
    strip_hop_by_hop(headers, upgrade);
    if !headers.contains_key("x-request-start") {
        // APM tools and dyno autoscalers measure queue time from this header; the
        // router sets it on Heroku, and molt sets it elsewhere.
        let micros = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_micros());
        if let Ok(value) = HeaderValue::from_str(&format!("t={micros}")) {
            headers.insert(HeaderName::from_static("x-request-start"), value);
        }
    }
}

/// Removes the headers that describe one connection (RFC 9110 section 7.6.1) rather
/// than the message, including any the `Connection` header names. An upgrade keeps
/// `Upgrade` and `Connection: upgrade`, which the worker needs to accept it.
pub(crate) fn strip_hop_by_hop(headers: &mut HeaderMap, upgrade: bool) {
    let named: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|token| HeaderName::from_bytes(token.trim().as_bytes()).ok())
        .collect();
    for name in named {
        // A client cannot make molt drop Host: the worker needs it, and an HTTP/1.1
        // request without it is invalid.
        if !(upgrade && name == header::UPGRADE) && name != header::HOST {
            headers.remove(name);
        }
    }
    for name in [
        header::CONNECTION,
        HeaderName::from_static("keep-alive"),
        HeaderName::from_static("proxy-connection"),
        header::TE,
        header::TRAILER,
        header::TRANSFER_ENCODING,
        header::UPGRADE,
    ] {
        if !(upgrade && name == header::UPGRADE) {
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
