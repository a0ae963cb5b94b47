//! The opening handshake (RFC 6455 §4), for both roles, parsed with httparse.
//!
//! Server: [`parse_request`] incrementally, inspect the [`Request`], then
//! answer with [`negotiate`](mod@crate::negotiate) (101, or a [`Rejection`]);
//! [`Request::accept`] and [`reject_response`] are byte-level shortcuts. Client: [`ClientHandshake::new`]
//! builds the request; [`ClientHandshake::parse_response`] validates the answer.

use crate::error::HandshakeError;
use crate::negotiate::{self, Rejection};
use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine;
use sha1::{Digest, Sha1};
use std::fmt::Write as _;

/// The GUID appended to the key (§1.3).
pub const GUID: &str = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11";

/// Default limit on the size of handshake headers: 16 KiB, more than any
/// browser sends (cookies included) and small enough that a slow-loris peer
/// cannot make a connection hold much.
pub const DEFAULT_MAX_HANDSHAKE_SIZE: usize = 16 * 1024;

/// Most headers accepted in a handshake.
pub const MAX_HEADERS: usize = 64;

/// `Sec-WebSocket-Accept` for a `Sec-WebSocket-Key` (§4.2.2).
pub fn accept_key(key: &[u8]) -> String {
    let mut sha = Sha1::new();
    sha.update(key);
    sha.update(GUID.as_bytes());
    BASE64.encode(sha.finalize())
}

/// A fresh random `Sec-WebSocket-Key`: 16 random bytes, base64 (§4.1).
pub fn generate_key() -> String {
    BASE64.encode(rand::random::<[u8; 16]>())
}

/// Whether a comma-separated header value contains `token` (case-insensitive).
pub fn header_has_token(value: &[u8], token: &str) -> bool {
    value
        .split(|&b| b == b',')
        .any(|part| part.trim_ascii().eq_ignore_ascii_case(token.as_bytes()))
}

/// One extension offered or accepted in `Sec-WebSocket-Extensions`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ExtensionOffer {
    /// The extension name, e.g. `permessage-deflate`.
    pub name: String,
    /// Parameters in order; a value-less parameter has `None`.
    pub params: Vec<(String, Option<String>)>,
}

/// Parse a `Sec-WebSocket-Extensions` value (RFC 6455 §9.1) into offers.
/// Empty elements are skipped; quoted parameter values are unquoted.
pub fn parse_extensions(value: &str) -> Vec<ExtensionOffer> {
    value
        .split(',')
        .filter_map(|ext| {
            let mut parts = ext.split(';');
            let name = parts.next()?.trim();
            if name.is_empty() {
                return None;
            }
            let params = parts
                .filter(|p| !p.trim().is_empty())
                .map(|p| match p.split_once('=') {
                    Some((k, v)) => (k.trim().to_ascii_lowercase(), Some(v.trim().trim_matches('"').to_string())),
                    None => (p.trim().to_ascii_lowercase(), None),
                })
                .collect();
            Some(ExtensionOffer { name: name.to_ascii_lowercase(), params })
        })
        .collect()
}

/// A parsed, validated client upgrade request (server side).
#[derive(Clone, Debug)]
pub struct Request {
    target: String,
    headers: Vec<(String, Vec<u8>)>,
    key: String,
}

impl Request {
    /// Build from parts already parsed by an HTTP server (hyper, axum),
    /// validating them with the same rules as [`parse_request`].
    pub fn from_parts<'a>(
        method: &str,
        http11_or_later: bool,
        target: &str,
        headers: impl IntoIterator<Item = (&'a str, &'a [u8])>,
    ) -> Result<Request, HandshakeError> {
        let headers: Vec<(String, Vec<u8>)> =
            headers.into_iter().map(|(k, v)| (k.to_string(), v.to_vec())).collect();
        let key = validate_request(method, http11_or_later, &headers)?;
        Ok(Request { target: target.to_string(), headers, key })
    }

    /// Build from an HTTP/2 extended CONNECT (RFC 8441): `method` and
    /// `protocol` are the `:method` and `:protocol` pseudo-headers,
    /// `headers` the regular ones. There is no key: [`Request::key`] is
    /// empty, and the answer is a 200 with no `Sec-WebSocket-Accept`
    /// ([`negotiate::extended_connect_headers`]).
    pub fn from_extended_connect<'a>(
        method: &str,
        protocol: Option<&str>,
        target: &str,
        headers: impl IntoIterator<Item = (&'a str, &'a [u8])>,
    ) -> Result<Request, HandshakeError> {
        let headers: Vec<(String, Vec<u8>)> =
            headers.into_iter().map(|(k, v)| (k.to_string(), v.to_vec())).collect();
        validate_extended_connect(method, protocol, &headers)?;
        Ok(Request { target: target.to_string(), headers, key: String::new() })
    }

    /// The request target: path and query, e.g. `/chat?room=1`.
    pub fn uri(&self) -> &str {
        &self.target
    }

    /// The path without the query.
    pub fn path(&self) -> &str {
        self.target.split_once('?').map_or(&self.target, |(p, _)| p)
    }

    /// The query string, without `?`.
    pub fn query(&self) -> Option<&str> {
        self.target.split_once('?').map(|(_, q)| q)
    }

    /// The first value of a header (name compared case-insensitively).
    pub fn header(&self, name: &str) -> Option<&[u8]> {
        self.headers.iter().find(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_slice())
    }

    /// The first value of a header as a string, if it is valid UTF-8.
    pub fn header_str(&self, name: &str) -> Option<&str> {
        self.header(name).and_then(|v| std::str::from_utf8(v).ok())
    }

    /// Every header, in order.
    pub fn headers(&self) -> impl Iterator<Item = (&str, &[u8])> {
        self.headers.iter().map(|(k, v)| (k.as_str(), v.as_slice()))
    }

    /// The `Origin` header (browsers send it; §10.2).
    pub fn origin(&self) -> Option<&str> {
        self.header_str("origin")
    }

    /// The `Host` header.
    pub fn host(&self) -> Option<&str> {
        self.header_str("host")
    }

    /// The `Sec-WebSocket-Key`.
    pub fn key(&self) -> &str {
        &self.key
    }

    /// Subprotocols offered in `Sec-WebSocket-Protocol`, in the client's order.
    pub fn protocols(&self) -> Vec<&str> {
        self.headers
            .iter()
            .filter(|(k, _)| k.eq_ignore_ascii_case("sec-websocket-protocol"))
            .filter_map(|(_, v)| std::str::from_utf8(v).ok())
            .flat_map(|v| v.split(','))
            .map(str::trim)
            .filter(|p| !p.is_empty())
            .collect()
    }

    /// Extensions offered in `Sec-WebSocket-Extensions`, in order.
    pub fn extensions(&self) -> Vec<ExtensionOffer> {
        self.headers
            .iter()
            .filter(|(k, _)| k.eq_ignore_ascii_case("sec-websocket-extensions"))
            .filter_map(|(_, v)| std::str::from_utf8(v).ok())
            .flat_map(parse_extensions)
            .collect()
    }

    /// The 101 response accepting this request, with an optional subprotocol
    /// (which must be one the client offered), an optional
    /// `Sec-WebSocket-Extensions` value, and extra headers.
    pub fn accept(&self, protocol: Option<&str>, extensions: Option<&str>, extra_headers: &[(&str, &str)]) -> Vec<u8> {
        accept_response(&self.key, protocol, extensions, extra_headers)
    }
}

/// Validate method, version and headers of an upgrade request (§4.2.1) and
/// return the key. Shared by [`parse_request`] and [`Request::from_parts`].
pub fn validate_request(method: &str, http11_or_later: bool, headers: &[(String, Vec<u8>)]) -> Result<String, HandshakeError> {
    if method != "GET" {
        return Err(HandshakeError::MethodNotGet(method.to_string()));
    }
    if !http11_or_later {
        return Err(HandshakeError::UnsupportedHttpVersion);
    }
    let find = |name: &str| headers.iter().find(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_slice());
    let all = |name: &'static str| headers.iter().filter(move |(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_slice());
    if find("host").is_none() {
        return Err(HandshakeError::MissingHost);
    }
    if !all("upgrade").any(|v| header_has_token(v, "websocket")) {
        return Err(HandshakeError::MissingUpgrade);
    }
    if !all("connection").any(|v| header_has_token(v, "upgrade")) {
        return Err(HandshakeError::MissingConnectionUpgrade);
    }
    match find("sec-websocket-version") {
        Some(v) if v.trim_ascii() == b"13" => {}
        Some(v) => return Err(HandshakeError::UnsupportedVersion(String::from_utf8_lossy(v).into_owned())),
        None => return Err(HandshakeError::UnsupportedVersion(String::new())),
    }
    let key = find("sec-websocket-key").ok_or(HandshakeError::InvalidKey)?.trim_ascii();
    // §4.2.1: the key, base64-decoded, is 16 bytes long.
    match BASE64.decode(key) {
        Ok(decoded) if decoded.len() == 16 => {}
        _ => return Err(HandshakeError::InvalidKey),
    }
    Ok(String::from_utf8_lossy(key).into_owned())
}

/// Validate an HTTP/2 extended CONNECT that opens a WebSocket (RFC 8441 §4, §5).
pub fn validate_extended_connect(method: &str, protocol: Option<&str>, headers: &[(String, Vec<u8>)]) -> Result<(), HandshakeError> {
    // RFC 8441 §4: ":method" is CONNECT and ":protocol" names the protocol.
    if method != "CONNECT" {
        return Err(HandshakeError::NotExtendedConnect(format!(":method is {method}")));
    }
    match protocol {
        Some(p) if p.eq_ignore_ascii_case("websocket") => {}
        Some(p) => return Err(HandshakeError::NotExtendedConnect(format!(":protocol is {p:?}"))),
        None => return Err(HandshakeError::NotExtendedConnect("no :protocol".into())),
    }
    // RFC 8441 §5: Sec-WebSocket-Version as in RFC 6455 (13); the key and
    // the accept are not used, since the stream is already this request's.
    let find = |name: &str| headers.iter().find(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_slice());
    match find("sec-websocket-version") {
        Some(v) if v.trim_ascii() == b"13" => Ok(()),
        Some(v) => Err(HandshakeError::UnsupportedVersion(String::from_utf8_lossy(v).into_owned())),
        None => Err(HandshakeError::UnsupportedVersion(String::new())),
    }
}

/// Parse an upgrade request from the start of `buf`, which may hold only part
/// of it. Returns `Ok(None)` until the headers are complete, then the request
/// and the number of bytes it took (anything after belongs to the WebSocket).
pub fn parse_request(buf: &[u8], max_size: usize) -> Result<Option<(Request, usize)>, HandshakeError> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut headers);
    let status = match req.parse(buf) {
        Ok(s) => s,
        Err(httparse::Error::TooManyHeaders) => return Err(HandshakeError::HeadersTooLarge(max_size)),
        Err(e) => return Err(HandshakeError::MalformedHttp(e.to_string())),
    };
    let len = match status {
        httparse::Status::Partial if buf.len() > max_size => return Err(HandshakeError::HeadersTooLarge(max_size)),
        httparse::Status::Partial => return Ok(None),
        httparse::Status::Complete(len) if len > max_size => return Err(HandshakeError::HeadersTooLarge(max_size)),
        httparse::Status::Complete(len) => len,
    };
    let method = req.method.unwrap_or_default();
    let target = req.path.unwrap_or("/").to_string();
    let headers: Vec<(String, Vec<u8>)> = req.headers.iter().map(|h| (h.name.to_string(), h.value.to_vec())).collect();
    let key = validate_request(method, req.version == Some(1), &headers)?;
    Ok(Some((Request { target, headers, key }, len)))
}

/// A 101 Switching Protocols response (§4.2.2) for values already decided;
/// [`negotiate`](crate::negotiate::negotiate) decides them.
pub fn accept_response(key: &str, protocol: Option<&str>, extensions: Option<&str>, extra_headers: &[(&str, &str)]) -> Vec<u8> {
    let headers = negotiate::switching_protocols_headers(&accept_key(key.as_bytes()), protocol, extensions, extra_headers);
    negotiate::switching_protocols_bytes(&headers)
}

/// A rejection with `status` and a plain-text `body`; the connection should
/// be closed after it is sent. See [`Rejection`].
pub fn reject_response(status: u16, body: &str, extra_headers: &[(&str, &str)]) -> Vec<u8> {
    let mut rejection = Rejection::new(status, body);
    rejection.headers.extend(extra_headers.iter().map(|(k, v)| (k.to_string(), v.to_string())));
    rejection.to_bytes()
}

/// The response a server sends for a handshake that failed validation:
/// the status from [`HandshakeError::http_status`], and for a version
/// mismatch the `Sec-WebSocket-Version: 13` header that §4.4 requires
/// ([`Rejection::from_error`]).
pub fn error_response(err: &HandshakeError) -> Vec<u8> {
    Rejection::from_error(err).to_bytes()
}

/// What a client asks for in its upgrade request.
#[derive(Clone, Debug, Default)]
pub struct ClientRequest {
    /// Value of the Host header (`host[:port]`).
    pub host: String,
    /// Request target: path and query, e.g. `/chat?x=1`.
    pub target: String,
    /// Subprotocols to offer, in order of preference.
    pub protocols: Vec<String>,
    /// `Sec-WebSocket-Extensions` value to offer, if any.
    pub extensions: Option<String>,
    /// Extra headers (Origin, Authorization, cookies...).
    pub headers: Vec<(String, String)>,
}

/// The server's accepted answer, as seen by a client.
#[derive(Clone, Debug)]
pub struct Response {
    /// The subprotocol the server selected.
    pub protocol: Option<String>,
    /// The extensions the server accepted (already checked against the offer).
    pub extensions: Vec<ExtensionOffer>,
    /// Every header of the response.
    pub headers: Vec<(String, Vec<u8>)>,
}

/// Client side of the handshake: holds the key to check the answer against.
#[derive(Clone, Debug)]
pub struct ClientHandshake {
    key: String,
    protocols: Vec<String>,
    extension_names: Vec<String>,
    max_size: usize,
}

impl ClientHandshake {
    /// Build the upgrade request bytes for `req`, with a fresh random key.
    pub fn new(req: &ClientRequest) -> (ClientHandshake, Vec<u8>) {
        Self::with_key(req, generate_key())
    }

    /// Build the request with a given key (for tests and reproducible traces).
    pub fn with_key(req: &ClientRequest, key: String) -> (ClientHandshake, Vec<u8>) {
        let mut out = String::with_capacity(256);
        let target = if req.target.is_empty() { "/" } else { &req.target };
        let _ = write!(
            out,
            "GET {target} HTTP/1.1\r\nHost: {}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n",
            req.host
        );
        if !req.protocols.is_empty() {
            let _ = write!(out, "Sec-WebSocket-Protocol: {}\r\n", req.protocols.join(", "));
        }
        if let Some(ext) = &req.extensions {
            let _ = write!(out, "Sec-WebSocket-Extensions: {ext}\r\n");
        }
        for (k, v) in &req.headers {
            let _ = write!(out, "{k}: {v}\r\n");
        }
        out.push_str("\r\n");
        let extension_names = req.extensions.as_deref().map(parse_extensions).unwrap_or_default().into_iter().map(|e| e.name).collect();
        (
            ClientHandshake { key, protocols: req.protocols.clone(), extension_names, max_size: DEFAULT_MAX_HANDSHAKE_SIZE },
            out.into_bytes(),
        )
    }

    /// The key sent.
    pub fn key(&self) -> &str {
        &self.key
    }

    /// Parse and validate the server's response from the start of `buf`
    /// (§4.1, "the client MUST validate the server's response"). Returns
    /// `Ok(None)` until the headers are complete, then the response and the
    /// bytes it took (anything after is WebSocket data).
    pub fn parse_response(&self, buf: &[u8]) -> Result<Option<(Response, usize)>, HandshakeError> {
        let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
        let mut resp = httparse::Response::new(&mut headers);
        let status = match resp.parse(buf) {
            Ok(s) => s,
            Err(httparse::Error::TooManyHeaders) => return Err(HandshakeError::HeadersTooLarge(self.max_size)),
            Err(e) => return Err(HandshakeError::MalformedHttp(e.to_string())),
        };
        let len = match status {
            httparse::Status::Partial if buf.len() > self.max_size => return Err(HandshakeError::HeadersTooLarge(self.max_size)),
            httparse::Status::Partial => return Ok(None),
            // The same limit whether the headers arrived in one read or many.
            httparse::Status::Complete(len) if len > self.max_size => return Err(HandshakeError::HeadersTooLarge(self.max_size)),
            httparse::Status::Complete(len) => len,
        };
        let code = resp.code.unwrap_or(0);
        if code != 101 {
            return Err(HandshakeError::UnexpectedStatus(code));
        }
        let headers: Vec<(String, Vec<u8>)> = resp.headers.iter().map(|h| (h.name.to_string(), h.value.to_vec())).collect();
        let find = |name: &str| headers.iter().find(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_slice());
        if !find("upgrade").is_some_and(|v| header_has_token(v, "websocket")) {
            return Err(HandshakeError::MissingUpgrade);
        }
        if !find("connection").is_some_and(|v| header_has_token(v, "upgrade")) {
            return Err(HandshakeError::MissingConnectionUpgrade);
        }
        let expected = accept_key(self.key.as_bytes());
        if find("sec-websocket-accept").map(|v| v.trim_ascii()) != Some(expected.as_bytes()) {
            return Err(HandshakeError::InvalidAccept);
        }
        let protocol = match find("sec-websocket-protocol") {
            None => None,
            Some(v) => {
                let p = String::from_utf8_lossy(v).trim().to_string();
                // §4.1: a subprotocol not offered fails the connection.
                if !self.protocols.iter().any(|o| o == &p) {
                    return Err(HandshakeError::UnexpectedSubprotocol(p));
                }
                Some(p)
            }
        };
        let mut extensions = Vec::new();
        for (_, v) in headers.iter().filter(|(k, _)| k.eq_ignore_ascii_case("sec-websocket-extensions")) {
            for ext in parse_extensions(&String::from_utf8_lossy(v)) {
                if !self.extension_names.contains(&ext.name) {
                    return Err(HandshakeError::UnexpectedExtension(ext.name));
                }
                extensions.push(ext);
            }
        }
        Ok(Some((Response { protocol, extensions, headers }, len)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const RFC_REQUEST: &[u8] = b"GET /chat HTTP/1.1\r\nHost: server.example.com\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nOrigin: http://example.com\r\nSec-WebSocket-Protocol: chat, superchat\r\nSec-WebSocket-Version: 13\r\n\r\n";

    #[test]
    fn rfc_1_3_accept_key() {
        assert_eq!(accept_key(b"dGhlIHNhbXBsZSBub25jZQ=="), "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=");
    }

    #[test]
    fn rfc_1_2_request_parses_and_is_inspectable() {
        let (req, n) = parse_request(RFC_REQUEST, DEFAULT_MAX_HANDSHAKE_SIZE).unwrap().unwrap();
        assert_eq!(n, RFC_REQUEST.len());
        assert_eq!(req.path(), "/chat");
        assert_eq!(req.origin(), Some("http://example.com"));
        assert_eq!(req.protocols(), vec!["chat", "superchat"]);
        let resp = String::from_utf8(req.accept(Some("chat"), None, &[])).unwrap();
        assert!(resp.starts_with("HTTP/1.1 101 Switching Protocols\r\n"));
        assert!(resp.contains("Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n"));
        assert!(resp.contains("Sec-WebSocket-Protocol: chat\r\n"));
    }

    #[test]
    fn request_in_any_chunks() {
        for cut in 0..RFC_REQUEST.len() {
            assert!(parse_request(&RFC_REQUEST[..cut], DEFAULT_MAX_HANDSHAKE_SIZE).unwrap().is_none(), "cut {cut}");
        }
        let mut with_data = RFC_REQUEST.to_vec();
        with_data.extend_from_slice(&[0x81, 0x80, 1, 2, 3, 4]);
        let (_, n) = parse_request(&with_data, DEFAULT_MAX_HANDSHAKE_SIZE).unwrap().unwrap();
        assert_eq!(n, RFC_REQUEST.len());
    }

    fn replace(from: &str, to: &str) -> Vec<u8> {
        String::from_utf8(RFC_REQUEST.to_vec()).unwrap().replace(from, to).into_bytes()
    }

    #[test]
    fn server_rejections_carry_the_right_status() {
        let cases: Vec<(Vec<u8>, HandshakeError)> = vec![
            (replace("GET", "POST"), HandshakeError::MethodNotGet("POST".into())),
            (replace("HTTP/1.1", "HTTP/1.0"), HandshakeError::UnsupportedHttpVersion),
            (replace("Host: server.example.com\r\n", ""), HandshakeError::MissingHost),
            (replace("Upgrade: websocket", "Upgrade: h2c"), HandshakeError::MissingUpgrade),
            (replace("Connection: Upgrade", "Connection: keep-alive"), HandshakeError::MissingConnectionUpgrade),
            (replace("dGhlIHNhbXBsZSBub25jZQ==", "c2hvcnQ="), HandshakeError::InvalidKey),
            (replace("Version: 13", "Version: 8"), HandshakeError::UnsupportedVersion("8".into())),
        ];
        for (req, expected) in cases {
            let err = parse_request(&req, DEFAULT_MAX_HANDSHAKE_SIZE).unwrap_err();
            assert_eq!(err, expected);
        }
        let err = HandshakeError::UnsupportedVersion("8".into());
        assert_eq!(err.http_status(), 426);
        let resp = String::from_utf8(error_response(&err)).unwrap();
        assert!(resp.starts_with("HTTP/1.1 426 "));
        assert!(resp.contains("Sec-WebSocket-Version: 13\r\n"));
        // Token lists and case: "keep-alive, Upgrade" and "WebSocket" are fine.
        let ok = replace("Connection: Upgrade", "Connection: keep-alive, upgrade");
        let ok = String::from_utf8(ok).unwrap().replace("Upgrade: websocket", "Upgrade: WebSocket");
        assert!(parse_request(ok.as_bytes(), DEFAULT_MAX_HANDSHAKE_SIZE).unwrap().is_some());
    }

    #[test]
    fn oversized_headers_are_refused() {
        let big = format!("GET / HTTP/1.1\r\nX-Big: {}\r\n", "a".repeat(20_000));
        assert_eq!(parse_request(big.as_bytes(), DEFAULT_MAX_HANDSHAKE_SIZE).unwrap_err().http_status(), 431);
        let many: String = (0..100).map(|i| format!("X-{i}: v\r\n")).collect();
        let req = format!("GET / HTTP/1.1\r\n{many}\r\n");
        assert_eq!(parse_request(req.as_bytes(), DEFAULT_MAX_HANDSHAKE_SIZE).unwrap_err().http_status(), 431);
    }

    #[test]
    fn client_round_trip_and_response_validation() {
        let req = ClientRequest {
            host: "localhost:9001".into(),
            target: "/x?y=1".into(),
            protocols: vec!["tether.v1".into()],
            extensions: None,
            headers: vec![("Origin".into(), "http://localhost".into())],
        };
        let (client, bytes) = ClientHandshake::new(&req);
        let (server_req, _) = parse_request(&bytes, DEFAULT_MAX_HANDSHAKE_SIZE).unwrap().unwrap();
        assert_eq!(server_req.uri(), "/x?y=1");
        assert_eq!(server_req.query(), Some("y=1"));
        let resp = server_req.accept(Some("tether.v1"), None, &[]);
        for cut in 0..resp.len() {
            assert!(client.parse_response(&resp[..cut]).unwrap().is_none());
        }
        let (r, n) = client.parse_response(&resp).unwrap().unwrap();
        assert_eq!(n, resp.len());
        assert_eq!(r.protocol.as_deref(), Some("tether.v1"));

        // A wrong accept, an unoffered protocol or extension, a non-101 status.
        let bad = accept_response("dGhlIHNhbXBsZSBub25jZQ==", None, None, &[]);
        assert_eq!(client.parse_response(&bad).unwrap_err(), HandshakeError::InvalidAccept);
        let bad = server_req.accept(Some("other"), None, &[]);
        assert_eq!(client.parse_response(&bad).unwrap_err(), HandshakeError::UnexpectedSubprotocol("other".into()));
        let bad = server_req.accept(None, Some("permessage-deflate"), &[]);
        assert_eq!(client.parse_response(&bad).unwrap_err(), HandshakeError::UnexpectedExtension("permessage-deflate".into()));
        let bad = reject_response(403, "no", &[]);
        assert_eq!(client.parse_response(&bad).unwrap_err(), HandshakeError::UnexpectedStatus(403));
    }

    #[test]
    fn extension_offers_parse() {
        let offers = parse_extensions("permessage-deflate; client_max_window_bits, permessage-deflate; server_max_window_bits=\"10\" ,x-foo");
        assert_eq!(offers.len(), 3);
        assert_eq!(offers[0].params, vec![("client_max_window_bits".to_string(), None)]);
        assert_eq!(offers[1].params, vec![("server_max_window_bits".to_string(), Some("10".to_string()))]);
        assert_eq!(offers[2].name, "x-foo");
    }
}
