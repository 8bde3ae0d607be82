//! A request and a response as molt's HTTP/1.1 server (`conn`) and client (`client`)
//! carry them: the start line's parts, the header lines, and a body.
//!
//! The header lines are [`Fields`]: the lines as they arrived, spans of the head they
//! were read from, looked up by a scan and edited in place, and written out again as
//! they came (names in their own case) with molt's edits. A head has a dozen lines or
//! so, and molt looks up a few names once each; `http`'s `HeaderMap`, which molt used
//! before, hashed every name into a map built for each message and copied every name it
//! did not know: 5,300 instructions more per proxied request (docs/benchmarks.md,
//! "Header lines as they arrived").

use bytes::Bytes;
use hyper::http::{Method, StatusCode, Uri, Version};

use std::cell::RefCell;

use crate::run::proxy::h1::Span;
use crate::run::proxy::stash;

/// A value of at most this many bytes made here (a port, a length, a time stamp) is held
/// in the line itself.
const SHORT: usize = 22;

/// A line's name or value.
#[derive(Debug, Clone)]
enum Text {
    /// The bytes at this span of the head the lines were read from.
    Head(u32, u32),
    Static(&'static [u8]),
    Short {
        len: u8,
        bytes: [u8; SHORT],
    },
    Owned(Box<[u8]>),
}

/// A header value molt sets.
#[derive(Debug, Clone)]
pub(crate) struct Value(Text);

impl Value {
    pub(crate) const fn from_static(text: &'static str) -> Value {
        Value(Text::Static(text.as_bytes()))
    }

    /// A copy of `bytes`, which must hold no byte a header value may not (see
    /// [`valid_value`]).
    pub(crate) fn copy(bytes: &[u8]) -> Value {
        debug_assert!(valid_value(bytes), "a header value molt sets is valid");
        if bytes.len() <= SHORT {
            let mut short = [0; SHORT];
            short[..bytes.len()].copy_from_slice(bytes);
            #[allow(clippy::cast_possible_truncation)] // at most SHORT
            let len = bytes.len() as u8;
            Value(Text::Short { len, bytes: short })
        } else {
            Value(Text::Owned(bytes.into()))
        }
    }

    /// `bytes` as they are, with no copy when there is no room to spare.
    pub(crate) fn from_vec(bytes: Vec<u8>) -> Value {
        debug_assert!(valid_value(&bytes), "a header value molt sets is valid");
        Value(Text::Owned(bytes.into_boxed_slice()))
    }

    /// `n` in decimal.
    pub(crate) fn number(n: u64) -> Value {
        Value::copy(decimal(n, &mut [0; 20]))
    }
}

/// `n` in decimal, written at the end of `digits`, two digits at a time and without the
/// formatting machinery (which takes ten times the instructions).
pub(crate) fn decimal(mut n: u64, digits: &mut [u8; 20]) -> &[u8] {
    /// "00" to "99", each pair at twice its value.
    const PAIRS: [u8; 200] = {
        let mut pairs = [0; 200];
        let mut i: u8 = 0;
        while i < 100 {
            pairs[2 * i as usize] = b'0' + i / 10;
            pairs[2 * i as usize + 1] = b'0' + i % 10;
            i += 1;
        }
        pairs
    };
    let mut at = digits.len();
    while n >= 10 {
        #[allow(clippy::cast_possible_truncation)] // below 100
        let pair = 2 * (n % 100) as usize;
        at -= 2;
        digits[at..at + 2].copy_from_slice(&PAIRS[pair..pair + 2]);
        n /= 100;
    }
    if n > 0 || at == digits.len() {
        at -= 1;
        #[allow(clippy::cast_possible_truncation)] // a digit
        let digit = n as u8;
        digits[at] = b'0' + digit;
    }
    &digits[at..]
}

/// Whether `bytes` may be a header value: no control character but tab, and no DEL
/// (RFC 9110 section 5.5; obs-text, bytes from 0x80, is kept as it came).
pub(crate) fn valid_value(bytes: &[u8]) -> bool {
    bytes
        .iter()
        .all(|&b| (b >= b' ' || b == b'\t') && b != 0x7f)
}

/// A header name molt looks up or sets. The names molt reads have a tag of their own,
/// given to each line as the head is read, so that looking one up compares a byte per
/// line rather than the name; any other name is compared as text.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Name {
    text: &'static str,
    /// Its place in [`KNOWN`] plus one; 0 for a name not there.
    tag: u8,
}

/// Two names are one when their tags are, or, for names molt does not read, their text
/// is in any case.
impl PartialEq for Name {
    fn eq(&self, other: &Name) -> bool {
        self.tag == other.tag && (self.tag > 0 || self.text.eq_ignore_ascii_case(other.text))
    }
}

impl Eq for Name {}

impl Name {
    /// The name `text` (lowercase, as molt writes the lines it adds), with its tag if
    /// molt reads it; the known ones are also constants (`HOST`, ...).
    pub(crate) fn of(text: &'static str) -> Name {
        Name {
            text,
            tag: tag_of(text.as_bytes()),
        }
    }

    const fn known(at: usize) -> Name {
        #[allow(clippy::cast_possible_truncation)] // KNOWN is short
        Name {
            text: KNOWN[at],
            tag: at as u8 + 1,
        }
    }
}

/// The names molt reads, lowercase.
const KNOWN: [&str; 16] = [
    "host",
    "content-length",
    "transfer-encoding",
    "connection",
    "te",
    "trailer",
    "upgrade",
    "keep-alive",
    "proxy-connection",
    "expect",
    "x-forwarded-for",
    "x-forwarded-proto",
    "x-forwarded-port",
    "x-request-start",
    "date",
    "content-type",
];

pub(crate) const HOST: Name = Name::known(0);
pub(crate) const CONTENT_LENGTH: Name = Name::known(1);
pub(crate) const TRANSFER_ENCODING: Name = Name::known(2);
pub(crate) const CONNECTION: Name = Name::known(3);
pub(crate) const TE: Name = Name::known(4);
pub(crate) const TRAILER: Name = Name::known(5);
pub(crate) const UPGRADE: Name = Name::known(6);
pub(crate) const KEEP_ALIVE: Name = Name::known(7);
pub(crate) const PROXY_CONNECTION: Name = Name::known(8);
pub(crate) const EXPECT: Name = Name::known(9);
pub(crate) const X_FORWARDED_FOR: Name = Name::known(10);
pub(crate) const X_FORWARDED_PROTO: Name = Name::known(11);
pub(crate) const X_FORWARDED_PORT: Name = Name::known(12);
pub(crate) const X_REQUEST_START: Name = Name::known(13);
pub(crate) const DATE: Name = Name::known(14);
pub(crate) const CONTENT_TYPE: Name = Name::known(15);

/// The tag of a name read from a head: its place in [`KNOWN`] plus one, or 0. Only the
/// known names of its length are compared (none for most names a browser sends).
fn tag_of(name: &[u8]) -> u8 {
    let candidates: &[Name] = match name.len() {
        2 => &[TE],
        4 => &[HOST, DATE],
        6 => &[EXPECT],
        7 => &[UPGRADE, TRAILER],
        10 => &[CONNECTION, KEEP_ALIVE],
        12 => &[CONTENT_TYPE],
        14 => &[CONTENT_LENGTH],
        15 => &[X_FORWARDED_FOR, X_REQUEST_START],
        16 => &[X_FORWARDED_PORT, PROXY_CONNECTION],
        17 => &[TRANSFER_ENCODING, X_FORWARDED_PROTO],
        _ => &[],
    };
    candidates
        .iter()
        .find(|known| same_token(name, known.text.as_bytes()))
        .map_or(0, |known| known.tag)
}

/// Whether the token `name` (as httparse checked it) is `lower`, a lowercase name of
/// letters and `-`, in any case: a letter with the 0x20 bit set is the letter in
/// lowercase, and `-` has that bit set already; the only other byte that becomes `-`
/// (0x2d) so is CR (0x0d), which no token holds. One OR a byte, where comparing in any
/// case lowers both sides.
fn same_token(name: &[u8], lower: &[u8]) -> bool {
    name.len() == lower.len() && name.iter().zip(lower).all(|(&n, &l)| n | 0x20 == l)
}

/// One header line.
#[derive(Debug, Clone)]
struct Line {
    name: Text,
    value: Text,
    /// The name's tag ([`Name`]).
    tag: u8,
    /// Marked to go by [`Fields::remove_where`], which removes the marked lines once it
    /// has judged them all.
    doomed: bool,
}

/// A message's header lines, in order: those read from a head, as spans of it, with
/// what molt removed and set.
#[derive(Debug, Clone, Default)]
pub(crate) struct Fields {
    /// The head the read lines are spans of.
    head: Bytes,
    lines: Vec<Line>,
}

thread_local! {
    /// Line vectors given back by the messages that held them ([`stash`]).
    static LINES: RefCell<Vec<Vec<Line>>> = const { RefCell::new(Vec::new()) };
}

impl Drop for Fields {
    fn drop(&mut self) {
        stash::give_lines(&LINES, std::mem::take(&mut self.lines));
    }
}

impl Fields {
    pub(crate) fn new() -> Fields {
        Fields::default()
    }

    /// The lines at `spans` of `head`, with room for `more` (what molt adds on the way).
    /// httparse has checked the names (tokens) and the values ([`valid_value`]).
    pub(crate) fn parsed(head: Bytes, spans: &[Span], more: usize) -> Fields {
        let mut lines = stash::lines(&LINES, spans.len() + more);
        // Written in place, where a push per line copied each.
        lines.extend(
            spans
                .iter()
                .map(|&(name_at, name_end, value_at, value_end)| Line {
                    name: Text::Head(name_at, name_end),
                    value: Text::Head(value_at, value_end),
                    tag: tag_of(&head[name_at as usize..name_end as usize]),
                    doomed: false,
                }),
        );
        Fields { head, lines }
    }

    fn text<'a>(&'a self, text: &'a Text) -> &'a [u8] {
        text_in(&self.head, text)
    }

    /// Every line's name and value, in order.
    pub(crate) fn iter(&self) -> impl DoubleEndedIterator<Item = (&[u8], &[u8])> + '_ {
        self.lines
            .iter()
            .map(|line| (self.text(&line.name), self.text(&line.value)))
    }

    /// The values of the lines named `name`, in order.
    pub(crate) fn get_all(&self, name: Name) -> impl DoubleEndedIterator<Item = &[u8]> + '_ {
        self.lines
            .iter()
            .filter(move |line| is(&self.head, line, name))
            .map(|line| self.text(&line.value))
    }

    /// The first value named `name`.
    pub(crate) fn get(&self, name: Name) -> Option<&[u8]> {
        self.get_all(name).next()
    }

    pub(crate) fn contains(&self, name: Name) -> bool {
        self.lines.iter().any(|line| is(&self.head, line, name))
    }

    /// Whether a line named `name` holds `token` in its comma-separated list, in any case
    /// (`Connection: upgrade`, `TE: trailers`).
    pub(crate) fn has_token(&self, name: Name, token: &[u8]) -> bool {
        self.get_all(name)
            .flat_map(|value| value.split(|&b| b == b','))
            .any(|t| t.trim_ascii().eq_ignore_ascii_case(token))
    }

    /// Fields of `pairs`, as a test writes them.
    #[cfg(test)]
    pub(crate) fn of_pairs(pairs: &[(&'static str, &str)]) -> Fields {
        let mut fields = Fields::new();
        for &(name, value) in pairs {
            fields.append(Name::of(name), Value::copy(value.as_bytes()));
        }
        fields
    }

    /// Removes every line whose name (and tag, for a name molt knows) `doomed` says so
    /// of, each judged on all the fields as they were before any was removed.
    pub(crate) fn remove_where(&mut self, doomed: impl Fn(&Fields, &[u8], Option<Name>) -> bool) {
        for at in 0..self.lines.len() {
            let line = &self.lines[at];
            let known = (line.tag > 0).then(|| Name::known(usize::from(line.tag - 1)));
            let goes = doomed(self, self.text(&line.name), known);
            self.lines[at].doomed = goes;
        }
        self.lines.retain(|line| !line.doomed);
    }

    /// Removes every line named `name`.
    pub(crate) fn remove(&mut self, name: Name) {
        let head = &self.head;
        self.lines.retain(|line| !is(head, line, name));
    }

    /// Adds a line after the others.
    pub(crate) fn append(&mut self, name: Name, value: Value) {
        self.lines.push(Line {
            name: Text::Static(name.text.as_bytes()),
            value: value.0,
            tag: name.tag,
            doomed: false,
        });
    }

    /// Sets `name` to `value`: in place of its first line, the others removed, or after
    /// the others when there is none.
    pub(crate) fn insert(&mut self, name: Name, value: Value) {
        let head = &self.head;
        match self.lines.iter().position(|line| is(head, line, name)) {
            Some(at) => {
                self.lines[at].value = value.0;
                let mut later = at + 1;
                while later < self.lines.len() {
                    if is(&self.head, &self.lines[later], name) {
                        self.lines.remove(later);
                    } else {
                        later += 1;
                    }
                }
            }
            None => self.append(name, value),
        }
    }

    /// Writes the lines, each `name: value` and CRLF.
    pub(crate) fn encode(&self, into: &mut Vec<u8>) {
        for (name, value) in self.iter() {
            into.extend_from_slice(name);
            into.extend_from_slice(b": ");
            into.extend_from_slice(value);
            into.extend_from_slice(b"\r\n");
        }
    }

    /// What [`Fields::encode`] writes, in bytes.
    pub(crate) fn encoded_len(&self) -> usize {
        self.iter()
            .map(|(name, value)| name.len() + value.len() + 4)
            .sum()
    }
}

fn text_in<'a>(head: &'a [u8], text: &'a Text) -> &'a [u8] {
    match text {
        Text::Head(at, end) => &head[*at as usize..*end as usize],
        Text::Static(bytes) => bytes,
        Text::Short { len, bytes } => &bytes[..usize::from(*len)],
        Text::Owned(bytes) => bytes,
    }
}

/// Whether `line` is named `name`: by its tag when molt knows the name, else by text.
#[inline]
fn is(head: &[u8], line: &Line, name: Name) -> bool {
    if name.tag > 0 {
        line.tag == name.tag
    } else {
        line.tag == 0 && text_in(head, &line.name).eq_ignore_ascii_case(name.text.as_bytes())
    }
}

/// A request: its start line's parts, its header lines and its body.
#[derive(Debug)]
pub(crate) struct Request<B> {
    pub(crate) method: Method,
    pub(crate) uri: Uri,
    pub(crate) version: Version,
    pub(crate) headers: Fields,
    pub(crate) body: B,
}

impl<B> Request<B> {
    /// The same request with its body made into another.
    pub(crate) fn map<C>(self, f: impl FnOnce(B) -> C) -> Request<C> {
        let (head, body) = self.split();
        head.with(f(body))
    }

    /// The head apart from the body.
    pub(crate) fn split(self) -> (Request<()>, B) {
        let Request {
            method,
            uri,
            version,
            headers,
            body,
        } = self;
        let head = Request {
            method,
            uri,
            version,
            headers,
            body: (),
        };
        (head, body)
    }
}

impl Request<()> {
    /// This head with `body`.
    pub(crate) fn with<B>(self, body: B) -> Request<B> {
        Request {
            method: self.method,
            uri: self.uri,
            version: self.version,
            headers: self.headers,
            body,
        }
    }
}

#[cfg(test)]
impl<B> Request<B> {
    /// A request as a test writes it.
    pub(crate) fn test(
        method: &str,
        target: &str,
        version: Version,
        headers: &[(&'static str, &str)],
        body: B,
    ) -> Request<B> {
        Request {
            method: method.parse().expect("a method"),
            uri: target.parse().expect("a target"),
            version,
            headers: Fields::of_pairs(headers),
            body,
        }
    }
}

/// A response: its status line's parts, its header lines and its body.
#[derive(Debug)]
pub(crate) struct Response<B> {
    pub(crate) status: StatusCode,
    pub(crate) version: Version,
    /// The worker's own reason phrase, when it is not the status's usual one.
    pub(crate) reason: Option<Bytes>,
    pub(crate) headers: Fields,
    pub(crate) body: B,
}

impl<B> Response<B> {
    /// A response of `status` with no header lines, as molt answers for itself.
    pub(crate) fn new(status: StatusCode, body: B) -> Response<B> {
        Response {
            status,
            version: Version::HTTP_11,
            reason: None,
            headers: Fields::new(),
            body,
        }
    }

    /// The same response with its body made into another.
    pub(crate) fn map<C>(self, f: impl FnOnce(B) -> C) -> Response<C> {
        Response {
            status: self.status,
            version: self.version,
            reason: self.reason,
            headers: self.headers,
            body: f(self.body),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::run::proxy::h1;

    /// The fields of `lines` (each ending in CRLF), read as a head's are.
    fn fields(lines: &str) -> Fields {
        let bytes = Bytes::from(format!("{lines}\r\n"));
        let mut headers = [httparse::EMPTY_HEADER; 16];
        let Ok(httparse::Status::Complete((_, parsed))) =
            httparse::parse_headers(&bytes, &mut headers)
        else {
            panic!("whole header lines: {lines:?}");
        };
        let mut spans: h1::Spans = [(0, 0, 0, 0); h1::MAX_HEADERS];
        let count = h1::spans(&bytes, parsed, &mut spans);
        Fields::parsed(bytes.clone(), &spans[..count], 2)
    }

    fn lines(fields: &Fields) -> Vec<String> {
        fields
            .iter()
            .map(|(name, value)| {
                format!(
                    "{}: {}",
                    String::from_utf8_lossy(name),
                    String::from_utf8_lossy(value)
                )
            })
            .collect()
    }

    #[test]
    fn names_are_found_in_any_case_and_written_in_their_own() {
        let f = fields("Host: a\r\nX-Thing: 1\r\nx-thing: 2\r\nACCEPT: */*\r\n");
        assert_eq!(f.get(HOST), Some(&b"a"[..]));
        assert_eq!(
            f.get_all(Name::of("x-thing")).collect::<Vec<_>>(),
            [b"1", b"2"]
        );
        assert!(f.contains(Name::of("accept")) && !f.contains(Name::of("accept-encoding")));
        let mut out = Vec::new();
        f.encode(&mut out);
        assert_eq!(
            out,
            b"Host: a\r\nX-Thing: 1\r\nx-thing: 2\r\nACCEPT: */*\r\n"
        );
        assert_eq!(f.encoded_len(), out.len());
    }

    /// Every name molt reads is tagged, in any case, and no other name is.
    #[test]
    fn every_known_name_and_only_those_get_their_tag() {
        for (at, name) in KNOWN.iter().enumerate() {
            let tag = Name::known(at).tag;
            assert_eq!(tag_of(name.as_bytes()), tag, "{name}");
            assert_eq!(tag_of(name.to_ascii_uppercase().as_bytes()), tag, "{name}");
        }
        for other in ["user-agent", "accept", "hosts", "x-forwarded-host", "t", ""] {
            assert_eq!(tag_of(other.as_bytes()), 0, "{other}");
        }
        // Every token byte but the name's own, in any case, at every place of a known
        // name makes another name: the bytes are compared with the case bit set, so one
        // that differs from the name's in that bit alone (CR for `-`) is no token.
        let token = |b: u8| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b);
        for name in KNOWN {
            for at in 0..name.len() {
                for b in (0..=255u8).filter(|&b| token(b)) {
                    let mut other = name.as_bytes().to_vec();
                    if b.eq_ignore_ascii_case(&other[at]) {
                        continue;
                    }
                    other[at] = b;
                    assert_eq!(tag_of(&other), 0, "{}", String::from_utf8_lossy(&other));
                }
            }
        }
    }

    #[test]
    fn insert_replaces_in_place_and_removes_the_rest() {
        let mut f = fields("A: 1\r\nB: 2\r\na: 3\r\nC: 4\r\n");
        f.insert(Name::of("a"), Value::from_static("new"));
        assert_eq!(lines(&f), ["A: new", "B: 2", "C: 4"]);
        f.insert(Name::of("d"), Value::number(1_764_633_600_123_456));
        f.append(
            Name::of("d"),
            Value::copy(b"a value longer than twenty-two bytes"),
        );
        assert_eq!(
            lines(&f),
            [
                "A: new",
                "B: 2",
                "C: 4",
                "d: 1764633600123456",
                "d: a value longer than twenty-two bytes"
            ]
        );
        f.remove(Name::of("d"));
        f.remove(Name::of("b"));
        assert_eq!(lines(&f), ["A: new", "C: 4"]);
    }

    #[test]
    fn remove_where_judges_each_line_on_the_lines_as_they_came() {
        let named = |fields: &Fields, name: &[u8], known: Option<Name>| {
            known == Some(CONNECTION)
                || fields
                    .get_all(CONNECTION)
                    .flat_map(|v| v.split(|&b| b == b','))
                    .any(|token| token.trim_ascii().eq_ignore_ascii_case(name))
        };
        // The Connection line goes too, wherever it stands: the lines it names go whether
        // they come before it or after.
        for head in [
            "Connection: x-a, close\r\nX-A: 1\r\nX-B: 2\r\nx-a: 3\r\n",
            "X-A: 1\r\nX-B: 2\r\nx-a: 3\r\nConnection: x-a, close\r\n",
            "X-A: 1\r\nConnection: x-a, close\r\nX-B: 2\r\nx-a: 3\r\n",
        ] {
            let mut f = fields(head);
            f.remove_where(named);
            assert_eq!(lines(&f), ["X-B: 2"], "{head:?}");
        }
    }

    #[test]
    fn a_value_with_a_control_character_or_del_is_refused() {
        for value in ["a\u{1}b", "a\u{7f}", "a\nb"] {
            assert!(!valid_value(value.as_bytes()), "{value:?}");
        }
        for value in ["", "a\tb", "caf\u{e9}", "x y"] {
            assert!(valid_value(value.as_bytes()), "{value:?}");
        }
        // httparse, which reads every head, refuses what this refuses.
        let mut headers = [httparse::EMPTY_HEADER; 1];
        assert!(httparse::parse_headers(b"A: a\x7fb\r\n\r\n", &mut headers).is_err());
    }

    #[test]
    fn numbers_are_written_in_decimal() {
        let f = |n| {
            let mut fields = Fields::new();
            fields.append(Name::of("n"), Value::number(n));
            fields.get(Name::of("n")).unwrap().to_vec()
        };
        for n in [
            0,
            7,
            9,
            10,
            99,
            100,
            101,
            999,
            1_000,
            65_535,
            1_733_000_000_123_456,
            u64::MAX,
        ] {
            assert_eq!(f(n), n.to_string().into_bytes());
        }
    }
}
