//! The server's answer to an upgrade request, decided once for every entry
//! point: the raw-stream accept, the hyper upgrade and the axum extractor.
//!
//! Why it exists: the accept key, the subprotocol rule, the
//! permessage-deflate agreement and the rejection statuses are protocol
//! decisions (RFC 6455 §4.2.2, RFC 7692 §5). Made here, without I/O, they
//! cannot drift apart between the three ways a server is reached. The
//! results are plain name/value pairs, so a caller can serialize them into
//! bytes ([`Negotiated::to_bytes`], [`Rejection::to_bytes`]) or put them into
//! an `http::Response`.
//!
//! Server: fill an [`UpgradeOffer`] (from a validated
//! [`Request`] with [`UpgradeOffer::from_request`]),
//! then [`negotiate`] to accept, or answer with a [`Rejection`].

use crate::deflate::{DeflateConfig, PerMessageDeflate};
use crate::error::HandshakeError;
use crate::handshake::{accept_key, ExtensionOffer, Request};
use std::fmt::Write as _;

/// What the client asked for in a validated upgrade request, as far as the
/// server's answer depends on it. Method, HTTP version, `Upgrade`,
/// `Connection` and `Sec-WebSocket-Version` have been checked by then
/// ([`validate_request`](crate::handshake::validate_request)).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct UpgradeOffer<'a> {
    /// The `Sec-WebSocket-Key`, as sent (already checked to be 16 bytes of base64).
    pub key: &'a str,
    /// Subprotocols offered in `Sec-WebSocket-Protocol`, in the client's order.
    pub protocols: Vec<&'a str>,
    /// Extensions offered in `Sec-WebSocket-Extensions`, in the client's order.
    pub extensions: Vec<ExtensionOffer>,
}

impl<'a> UpgradeOffer<'a> {
    /// The offer of a request parsed by [`parse_request`](crate::handshake::parse_request)
    /// or built by [`Request::from_parts`].
    pub fn from_request(request: &'a Request) -> Self {
        UpgradeOffer { key: request.key(), protocols: request.protocols(), extensions: request.extensions() }
    }
}

/// The server's side of an accepted handshake: the accept key, the chosen
/// subprotocol, the permessage-deflate agreement and the 101 response
/// headers that announce them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Negotiated {
    /// `Sec-WebSocket-Accept` (RFC 6455 §4.2.2).
    pub accept_key: String,
    /// The subprotocol selected: `None` unless the server chose one the client offered.
    pub protocol: Option<String>,
    /// permessage-deflate as agreed, to build the connection with; `None` if
    /// not configured, not offered, or every offer was declined.
    pub deflate: Option<PerMessageDeflate>,
    headers: Vec<(String, String)>,
}

impl Negotiated {
    /// The headers of the 101 response, in the order to send them:
    /// `Upgrade`, `Connection`, `Sec-WebSocket-Accept`, then
    /// `Sec-WebSocket-Protocol` and `Sec-WebSocket-Extensions` when agreed,
    /// then the server's extra headers.
    pub fn headers(&self) -> impl Iterator<Item = (&str, &str)> {
        self.headers.iter().map(|(k, v)| (k.as_str(), v.as_str()))
    }

    /// The whole `HTTP/1.1 101 Switching Protocols` response, as bytes.
    pub fn to_bytes(&self) -> Vec<u8> {
        switching_protocols_bytes(&self.headers)
    }
}

/// Accept `offer`: compute the accept key, keep `protocol` only if the
/// client offered it, answer a permessage-deflate offer when `deflate` is
/// set, and list the response headers (then `extra_headers`).
pub fn negotiate(
    offer: &UpgradeOffer<'_>,
    protocol: Option<&str>,
    deflate: Option<&DeflateConfig>,
    extra_headers: &[(&str, &str)],
) -> Negotiated {
    // RFC 6455 §4.2.2: the server selects one of the client's subprotocols
    // or none; it must not answer with one that was not offered.
    let protocol = protocol.filter(|p| offer.protocols.contains(p)).map(str::to_string);
    // RFC 7692 §5: accept the first acceptable offer; malformed offers are
    // declined and the handshake goes on without the extension.
    let deflate = deflate.and_then(|d| d.negotiate(&offer.extensions));
    let extensions = deflate.as_ref().map(PerMessageDeflate::response);
    let accepted = accept_key(offer.key.as_bytes());
    let headers = switching_protocols_headers(&accepted, protocol.as_deref(), extensions.as_deref(), extra_headers);
    Negotiated { accept_key: accepted, protocol, deflate, headers }
}

/// The headers of the 200 that accepts an HTTP/2 extended CONNECT
/// (RFC 8441 §5): the subprotocol and extensions agreed in `negotiated`,
/// then `extra_headers`. No `Upgrade`, `Connection` or
/// `Sec-WebSocket-Accept`: HTTP/2 has no connection-specific headers and
/// the stream needs no proof of a key.
pub fn extended_connect_headers(negotiated: &Negotiated, extra_headers: &[(&str, &str)]) -> Vec<(String, String)> {
    let mut headers = Vec::new();
    if let Some(p) = &negotiated.protocol {
        headers.push(("sec-websocket-protocol".to_string(), p.clone()));
    }
    if let Some(d) = &negotiated.deflate {
        headers.push(("sec-websocket-extensions".to_string(), d.response()));
    }
    headers.extend(extra_headers.iter().map(|(k, v)| (k.to_ascii_lowercase(), v.to_string())));
    headers
}

/// The headers of a 101 response (RFC 6455 §4.2.2, step 5), for an accept
/// value already computed and extension values already agreed.
pub(crate) fn switching_protocols_headers(
    accept: &str,
    protocol: Option<&str>,
    extensions: Option<&str>,
    extra_headers: &[(&str, &str)],
) -> Vec<(String, String)> {
    let mut headers = vec![
        ("Upgrade".to_string(), "websocket".to_string()),
        ("Connection".to_string(), "Upgrade".to_string()),
        ("Sec-WebSocket-Accept".to_string(), accept.to_string()),
    ];
    if let Some(p) = protocol {
        headers.push(("Sec-WebSocket-Protocol".to_string(), p.to_string()));
    }
    if let Some(e) = extensions {
        headers.push(("Sec-WebSocket-Extensions".to_string(), e.to_string()));
    }
    headers.extend(extra_headers.iter().map(|(k, v)| (k.to_string(), v.to_string())));
    headers
}

/// Serialize a 101 response with `headers`.
pub(crate) fn switching_protocols_bytes(headers: &[(String, String)]) -> Vec<u8> {
    let mut out = String::with_capacity(160);
    out.push_str("HTTP/1.1 101 Switching Protocols\r\n");
    for (k, v) in headers {
        let _ = write!(out, "{k}: {v}\r\n");
    }
    out.push_str("\r\n");
    out.into_bytes()
}

/// A refused upgrade: the status, headers and plain-text body sent instead
/// of 101. The connection is closed after it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rejection {
    /// HTTP status, e.g. 400, 403, 426 or 503.
    pub status: u16,
    /// Headers specific to the refusal (e.g. `Sec-WebSocket-Version: 13`);
    /// framing headers are added by [`Rejection::to_bytes`].
    pub headers: Vec<(String, String)>,
    /// Plain-text body.
    pub body: String,
}

impl Rejection {
    /// A refusal chosen by the server (authentication, origin, capacity).
    pub fn new(status: u16, body: impl Into<String>) -> Self {
        Rejection { status, headers: Vec::new(), body: body.into() }
    }

    /// The answer to a request that failed validation: the status from
    /// [`HandshakeError::http_status`] and the error as the body.
    pub fn from_error(err: &HandshakeError) -> Self {
        Self::for_error(err, format!("{err}\n"))
    }

    /// Like [`Rejection::from_error`] with another body (e.g. an error that
    /// wraps `err`, or none).
    pub fn for_error(err: &HandshakeError, body: impl Into<String>) -> Self {
        let mut rejection = Rejection::new(err.http_status(), body);
        if let HandshakeError::UnsupportedVersion(_) = err {
            // RFC 6455 §4.4: answer a version we do not speak with 426 and
            // the versions we do.
            rejection.headers.push(("Sec-WebSocket-Version".to_string(), "13".to_string()));
        }
        rejection
    }

    /// The reason phrase for [`Rejection::status`].
    pub fn reason(&self) -> &'static str {
        match self.status {
            400 => "Bad Request",
            401 => "Unauthorized",
            403 => "Forbidden",
            404 => "Not Found",
            405 => "Method Not Allowed",
            426 => "Upgrade Required",
            429 => "Too Many Requests",
            431 => "Request Header Fields Too Large",
            500 => "Internal Server Error",
            503 => "Service Unavailable",
            505 => "HTTP Version Not Supported",
            _ => "Error",
        }
    }

    /// The whole HTTP/1.1 response, as bytes, with `Content-Type`,
    /// `Content-Length` and `Connection: close`.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = format!(
            "HTTP/1.1 {} {}\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Length: {}\r\nConnection: close\r\n",
            self.status,
            self.reason(),
            self.body.len()
        );
        for (k, v) in &self.headers {
            let _ = write!(out, "{k}: {v}\r\n");
        }
        out.push_str("\r\n");
        out.push_str(&self.body);
        out.into_bytes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::handshake::{parse_extensions, parse_request, DEFAULT_MAX_HANDSHAKE_SIZE};

    const KEY: &str = "dGhlIHNhbXBsZSBub25jZQ==";

    fn offer<'a>(protocols: &[&'a str], extensions: &str) -> UpgradeOffer<'a> {
        UpgradeOffer { key: KEY, protocols: protocols.to_vec(), extensions: parse_extensions(extensions) }
    }

    fn header<'n>(n: &'n Negotiated, name: &str) -> Option<&'n str> {
        n.headers().find(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v)
    }

    #[test]
    fn rfc_6455_1_3_accept_key() {
        let n = negotiate(&offer(&[], ""), None, None, &[]);
        assert_eq!(n.accept_key, "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=");
        assert_eq!(header(&n, "sec-websocket-accept"), Some("s3pPLMBiTxaQ9kYGzzhZRbK+xOo="));
        assert_eq!(header(&n, "upgrade"), Some("websocket"));
        assert_eq!(header(&n, "connection"), Some("Upgrade"));
    }

    #[test]
    fn rfc_6455_4_2_2_subprotocol_only_if_offered() {
        let offered = offer(&["chat", "superchat"], "");
        let n = negotiate(&offered, Some("superchat"), None, &[]);
        assert_eq!(n.protocol.as_deref(), Some("superchat"));
        assert_eq!(header(&n, "sec-websocket-protocol"), Some("superchat"));

        let n = negotiate(&offered, Some("other"), None, &[]);
        assert_eq!(n.protocol, None);
        assert_eq!(header(&n, "sec-websocket-protocol"), None);

        let n = negotiate(&offer(&[], ""), Some("chat"), None, &[]);
        assert_eq!(n.protocol, None);
        assert_eq!(header(&n, "sec-websocket-protocol"), None);
    }

    #[test]
    fn rfc_7692_5_deflate_accepted_declined_or_off() {
        let config = DeflateConfig::default();
        // Accepted: the answer is the agreement's response value.
        let n = negotiate(&offer(&[], "permessage-deflate; client_max_window_bits"), None, Some(&config), &[]);
        let agreed = n.deflate.clone().expect("a well-formed offer is accepted");
        assert_eq!(header(&n, "sec-websocket-extensions"), Some(agreed.response().as_str()));
        // The first acceptable offer wins; a malformed one before it is skipped.
        let n = negotiate(
            &offer(&[], "permessage-deflate; bogus, permessage-deflate; server_max_window_bits=10"),
            None,
            Some(&config),
            &[],
        );
        assert_eq!(n.deflate.expect("second offer accepted").params.server_max_window_bits, Some(10));
        // Declined: only malformed offers, or none, or not configured.
        for (extensions, config) in [
            ("permessage-deflate; server_max_window_bits=99", Some(&config)),
            ("x-webkit-deflate-frame", Some(&config)),
            ("", Some(&config)),
            ("permessage-deflate", None),
        ] {
            let n = negotiate(&offer(&[], extensions), None, config, &[]);
            assert_eq!(n.deflate, None, "{extensions:?}");
            assert_eq!(header(&n, "sec-websocket-extensions"), None, "{extensions:?}");
        }
    }

    #[test]
    fn extra_headers_follow_and_bytes_match_the_headers() {
        let n = negotiate(&offer(&["chat"], ""), Some("chat"), None, &[("X-Room", "lobby")]);
        let names: Vec<&str> = n.headers().map(|(k, _)| k).collect();
        assert_eq!(names, ["Upgrade", "Connection", "Sec-WebSocket-Accept", "Sec-WebSocket-Protocol", "X-Room"]);
        let bytes = String::from_utf8(n.to_bytes()).unwrap();
        assert_eq!(
            bytes,
            "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
             Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\nSec-WebSocket-Protocol: chat\r\nX-Room: lobby\r\n\r\n"
        );
    }

    #[test]
    fn offer_from_a_parsed_request() {
        let raw = b"GET /chat HTTP/1.1\r\nHost: h\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Protocol: chat, superchat\r\nSec-WebSocket-Extensions: permessage-deflate\r\nSec-WebSocket-Version: 13\r\n\r\n";
        let (request, _) = parse_request(raw, DEFAULT_MAX_HANDSHAKE_SIZE).unwrap().unwrap();
        let offer = UpgradeOffer::from_request(&request);
        assert_eq!(offer.key, KEY);
        assert_eq!(offer.protocols, ["chat", "superchat"]);
        assert_eq!(offer.extensions, parse_extensions("permessage-deflate"));
    }

    #[test]
    fn rejections() {
        let r = Rejection::from_error(&HandshakeError::UnsupportedVersion("8".into()));
        assert_eq!(r.status, 426);
        assert_eq!(r.headers, [("Sec-WebSocket-Version".to_string(), "13".to_string())]);
        let bytes = String::from_utf8(r.to_bytes()).unwrap();
        assert!(bytes.starts_with("HTTP/1.1 426 Upgrade Required\r\n"), "{bytes}");
        assert!(bytes.contains("Sec-WebSocket-Version: 13\r\n"));
        assert!(bytes.ends_with(&format!("\r\n\r\n{}", r.body)));

        let r = Rejection::from_error(&HandshakeError::MethodNotGet("POST".into()));
        assert_eq!((r.status, r.headers.len()), (405, 0));

        let r = Rejection::new(403, "origin not allowed");
        let bytes = String::from_utf8(r.to_bytes()).unwrap();
        assert!(bytes.starts_with("HTTP/1.1 403 Forbidden\r\n"));
        assert!(bytes.contains("Content-Length: 18\r\nConnection: close\r\n"));
        assert!(bytes.ends_with("\r\n\r\norigin not allowed"));
    }
}
