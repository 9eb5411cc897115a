//! The server name a client's first bytes carry: the SNI of a TLS
//! ClientHello or the `Host` header of an HTTP/1 request.
//!
//! The ClientHello walk is hand-written: it is a dozen length-prefixed
//! fields read with bounds checks (a TLS parser crate would bring a parser
//! combinator library and more for this one field), and it is covered by the
//! tests below and by real clients in the crate's integration test.

/// What the bytes read so far say.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Sniff {
    /// The name the client asked for (lower-case, no port, no trailing dot).
    Name(String),
    /// Not enough bytes yet to tell.
    NeedMore,
    /// Neither TLS with a server name nor HTTP with a `Host` header.
    NoName(&'static str),
}

/// TLS record type of handshake messages.
const HANDSHAKE: u8 = 22;
/// Handshake message type of a ClientHello.
const CLIENT_HELLO: u8 = 1;
/// Extension type of server_name (RFC 6066).
const SERVER_NAME: u16 = 0;
/// Server name type of a DNS host name.
const HOST_NAME: u8 = 0;
/// Request headers an HTTP request may have before `Host` is given up on.
const MAX_HEADERS: usize = 64;

/// Looks at the first bytes a client sent.
pub fn server_name(first: &[u8]) -> Sniff {
    match first.first() {
        None => Sniff::NeedMore,
        Some(&HANDSHAKE) => tls_server_name(first),
        Some(b) if b.is_ascii_uppercase() => http_host(first),
        Some(_) => Sniff::NoName("neither TLS nor HTTP"),
    }
}

fn http_host(first: &[u8]) -> Sniff {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut request = httparse::Request::new(&mut headers);
    match request.parse(first) {
        Ok(httparse::Status::Partial) => Sniff::NeedMore,
        Err(_) => Sniff::NoName("not an HTTP/1 request"),
        Ok(httparse::Status::Complete(_)) => {
            let Some(host) = request
                .headers
                .iter()
                .find(|h| h.name.eq_ignore_ascii_case("host"))
            else {
                return Sniff::NoName("HTTP request without a Host header");
            };
            let Ok(host) = std::str::from_utf8(host.value) else {
                return Sniff::NoName("Host header is not text");
            };
            normalise(strip_port(host.trim()))
        }
    }
}

/// `name:port` → `name` (a bracketed IPv6 literal is left as it is, and
/// never matches a rule).
fn strip_port(host: &str) -> &str {
    if host.starts_with('[') {
        return host;
    }
    host.rsplit_once(':').map_or(host, |(name, _)| name)
}

fn normalise(name: &str) -> Sniff {
    let name = name.strip_suffix('.').unwrap_or(name);
    if name.is_empty() {
        return Sniff::NoName("empty server name");
    }
    Sniff::Name(name.to_ascii_lowercase())
}

/// Bytes read front to back, each read bounds-checked.
struct Reader<'a> {
    bytes: &'a [u8],
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        if self.bytes.len() < n {
            return None;
        }
        let (head, tail) = self.bytes.split_at(n);
        self.bytes = tail;
        Some(head)
    }

    fn u8(&mut self) -> Option<u8> {
        self.take(1).map(|b| b[0])
    }

    fn u16(&mut self) -> Option<u16> {
        self.take(2).map(|b| u16::from_be_bytes([b[0], b[1]]))
    }

    fn u24(&mut self) -> Option<usize> {
        self.take(3)
            .map(|b| usize::from(b[0]) << 16 | usize::from(b[1]) << 8 | usize::from(b[2]))
    }

    /// A field prefixed by its one- or two-byte length.
    fn vec8(&mut self) -> Option<&'a [u8]> {
        let n = self.u8()?;
        self.take(usize::from(n))
    }

    fn vec16(&mut self) -> Option<&'a [u8]> {
        let n = self.u16()?;
        self.take(usize::from(n))
    }
}

fn tls_server_name(first: &[u8]) -> Sniff {
    // A ClientHello may span records: join their fragments.
    let mut handshake = Vec::new();
    let mut records = Reader { bytes: first };
    loop {
        let Some(header) = records.take(5) else {
            return Sniff::NeedMore;
        };
        if header[0] != HANDSHAKE {
            return Sniff::NoName("TLS record other than a handshake before the ClientHello");
        }
        let len = usize::from(u16::from_be_bytes([header[3], header[4]]));
        let Some(fragment) = records.take(len) else {
            return Sniff::NeedMore;
        };
        handshake.extend_from_slice(fragment);
        let mut message = Reader { bytes: &handshake };
        let (Some(kind), Some(body_len)) = (message.u8(), message.u24()) else {
            continue;
        };
        if kind != CLIENT_HELLO {
            return Sniff::NoName("TLS handshake that is not a ClientHello");
        }
        if let Some(body) = message.take(body_len) {
            return client_hello_name(body).unwrap_or(Sniff::NoName("malformed TLS ClientHello"));
        }
    }
}

/// The server name of a complete ClientHello body; `None` if malformed.
fn client_hello_name(body: &[u8]) -> Option<Sniff> {
    let mut hello = Reader { bytes: body };
    hello.take(2 + 32)?; // legacy_version, random
    hello.vec8()?; // legacy_session_id
    hello.vec16()?; // cipher_suites
    hello.vec8()?; // legacy_compression_methods
    if hello.bytes.is_empty() {
        return Some(Sniff::NoName("TLS ClientHello without extensions"));
    }
    let mut extensions = Reader {
        bytes: hello.vec16()?,
    };
    while !extensions.bytes.is_empty() {
        let kind = extensions.u16()?;
        let data = extensions.vec16()?;
        if kind != SERVER_NAME {
            continue;
        }
        let mut list = Reader {
            bytes: Reader { bytes: data }.vec16()?,
        };
        while !list.bytes.is_empty() {
            let name_type = list.u8()?;
            let name = list.vec16()?;
            if name_type == HOST_NAME {
                let name = std::str::from_utf8(name).ok()?;
                return Some(normalise(name));
            }
        }
    }
    Some(Sniff::NoName("TLS ClientHello without a server name"))
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    fn vec16(body: &[u8]) -> Vec<u8> {
        let mut out = u16::try_from(body.len()).unwrap().to_be_bytes().to_vec();
        out.extend_from_slice(body);
        out
    }

    /// A TLS 1.2-style ClientHello record naming `name` (or none), as a
    /// client would send it, split into records of at most `record` bytes.
    pub(crate) fn client_hello(name: Option<&str>, record: usize) -> Vec<u8> {
        let mut body = vec![3, 3];
        body.extend_from_slice(&[7; 32]);
        body.push(0); // no session id
        body.extend(vec16(&[0x13, 0x01, 0x00, 0xff]));
        body.extend_from_slice(&[1, 0]); // null compression
        let mut extensions = Vec::new();
        extensions.extend_from_slice(&[0x00, 0x0b]); // ec_point_formats
        extensions.extend(vec16(&[1, 0]));
        if let Some(name) = name {
            let mut entry = vec![HOST_NAME];
            entry.extend(vec16(name.as_bytes()));
            extensions.extend_from_slice(&SERVER_NAME.to_be_bytes());
            extensions.extend(vec16(&vec16(&entry)));
        }
        body.extend(vec16(&extensions));
        let mut handshake = vec![CLIENT_HELLO];
        handshake.extend_from_slice(&u32::try_from(body.len()).unwrap().to_be_bytes()[1..]);
        handshake.extend(body);
        let mut out = Vec::new();
        for fragment in handshake.chunks(record) {
            out.extend_from_slice(&[HANDSHAKE, 3, 1]);
            out.extend(vec16(fragment));
        }
        out
    }

    #[test]
    fn client_hello_gives_its_server_name() {
        let hello = client_hello(Some("Api.Example.TEST"), 16384);

        assert_eq!(server_name(&hello), Sniff::Name("api.example.test".into()));
    }

    #[test]
    fn client_hello_split_over_records_is_joined() {
        let hello = client_hello(Some("split.example.test"), 10);

        assert_eq!(
            server_name(&hello),
            Sniff::Name("split.example.test".into())
        );
    }

    #[test]
    fn truncated_client_hello_asks_for_more() {
        let hello = client_hello(Some("example.test"), 16384);

        for cut in [1, 4, 5, 20, hello.len() - 1] {
            assert_eq!(server_name(&hello[..cut]), Sniff::NeedMore, "cut at {cut}");
        }
    }

    #[test]
    fn client_hello_without_server_name_has_no_name() {
        let hello = client_hello(None, 16384);

        assert!(matches!(server_name(&hello), Sniff::NoName(_)));
    }

    #[test]
    fn lying_lengths_are_malformed_not_a_panic() {
        let mut hello = client_hello(Some("example.test"), 16384);
        // The session id claims more bytes than the body has.
        hello[5 + 4 + 34] = 0xff;

        assert!(matches!(server_name(&hello), Sniff::NoName(_)));
    }

    #[test]
    fn http_request_gives_its_host_without_port() {
        let request = b"GET / HTTP/1.1\r\nUser-Agent: x\r\nHOST: Example.Test:8080\r\n\r\n";

        assert_eq!(server_name(request), Sniff::Name("example.test".into()));
    }

    #[test]
    fn partial_http_request_asks_for_more() {
        assert_eq!(server_name(b"GET / HTTP/1.1\r\nHost: exa"), Sniff::NeedMore);
    }

    #[test]
    fn http_request_without_host_and_other_protocols_have_no_name() {
        assert!(matches!(
            server_name(b"GET / HTTP/1.0\r\n\r\n"),
            Sniff::NoName(_)
        ));
        assert!(matches!(server_name(b"SSH-2.0-x\r\n"), Sniff::NoName(_)));
        assert!(matches!(server_name(&[0, 1, 2]), Sniff::NoName(_)));
    }
}
