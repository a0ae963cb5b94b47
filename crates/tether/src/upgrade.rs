//! Upgrade a hyper 1 request to a WebSocket, so WebSockets share a port with
//! an HTTP application (the way the ws package attaches to Node's http server).
//!
//! ```no_run
//! # use http_body_util::Empty; use bytes::Bytes;
//! async fn handle(mut req: hyper::Request<hyper::body::Incoming>) -> Result<hyper::Response<Empty<Bytes>>, tether::Error> {
//!     if !tether::upgrade::is_upgrade_request(&req) {
//!         return Ok(hyper::Response::builder().status(404).body(Empty::new()).unwrap());
//!     }
//!     let upgrade = tether::upgrade(&mut req)?;
//!     let (response, socket) = upgrade.accept(None, tether::Config::default());
//!     tokio::spawn(async move {
//!         let Ok(mut ws) = socket.await else { return };
//!         while let Some(Ok(msg)) = ws.recv().await {
//!             if msg.is_data() { let _ = ws.send(msg).await; }
//!         }
//!     });
//!     Ok(response)
//! }
//! ```

use crate::config::Config;
use crate::error::{Error, Result};
use crate::socket::WebSocket;
use bytes::Bytes;
use http_body_util::Empty;
use hyper_util::rt::TokioIo;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use tether_proto::handshake::Request;
use tether_proto::negotiate::{negotiate, Negotiated, Rejection, UpgradeOffer};
use tether_proto::{DeflateConfig, PerMessageDeflate, Role};

/// The stream under an upgraded hyper connection.
pub type UpgradedIo = TokioIo<hyper::upgrade::Upgraded>;

/// Whether `req` asks for a WebSocket: an HTTP/1.1 upgrade
/// (`Upgrade: websocket`) or, with the `http2` feature, an HTTP/2 extended
/// CONNECT (RFC 8441, `:protocol = websocket`).
pub fn is_upgrade_request<B>(req: &http::Request<B>) -> bool {
    is_extended_connect(req)
        || req
            .headers()
            .get_all(http::header::UPGRADE)
            .iter()
            .any(|v| tether_proto::handshake::header_has_token(v.as_bytes(), "websocket"))
}

/// Whether `req` is an HTTP/2 extended CONNECT for a WebSocket (RFC 8441
/// §4): `:method = CONNECT`, `:protocol = websocket`. Always false without
/// the `http2` feature.
pub fn is_extended_connect<B>(req: &http::Request<B>) -> bool {
    req.method() == http::Method::CONNECT && connect_protocol(req.extensions()).is_some_and(|p| p.eq_ignore_ascii_case("websocket"))
}

/// The `:protocol` pseudo-header of an HTTP/2 request, as hyper hands it over.
#[cfg(feature = "http2")]
fn connect_protocol(extensions: &http::Extensions) -> Option<&str> {
    extensions.get::<hyper::ext::Protocol>().map(hyper::ext::Protocol::as_str)
}

#[cfg(not(feature = "http2"))]
fn connect_protocol(_extensions: &http::Extensions) -> Option<&str> {
    None
}

/// A validated upgrade request, ready to be accepted or rejected.
pub struct Upgrade {
    request: Request,
    on_upgrade: hyper::upgrade::OnUpgrade,
    over_h2: bool,
}

/// Validate `req` as a WebSocket upgrade (RFC 6455 §4.2.1) or, over
/// HTTP/2, an extended CONNECT (RFC 8441 §5). On error, answer with
/// [`error_response`].
pub fn upgrade<B>(req: &mut http::Request<B>) -> Result<Upgrade> {
    let (request, over_h2) = to_request(req.method(), req.version(), req.uri(), req.headers(), req.extensions())?;
    let on_upgrade = hyper::upgrade::on(req);
    Ok(Upgrade { request, on_upgrade, over_h2 })
}

/// The handshake request in `parts`, and whether it came over HTTP/2 (an
/// extended CONNECT, RFC 8441) rather than as an HTTP/1.1 upgrade.
pub(crate) fn to_request(
    method: &http::Method,
    version: http::Version,
    uri: &http::Uri,
    headers: &http::HeaderMap,
    extensions: &http::Extensions,
) -> Result<(Request, bool)> {
    let target = uri.path_and_query().map_or("/", |p| p.as_str());
    let fields = headers.iter().map(|(k, v)| (k.as_str(), v.as_bytes()));
    if version == http::Version::HTTP_2 && method == http::Method::CONNECT {
        let request = Request::from_extended_connect(method.as_str(), connect_protocol(extensions), target, fields)?;
        return Ok((request, true));
    }
    Ok((Request::from_parts(method.as_str(), version >= http::Version::HTTP_11, target, fields)?, false))
}

/// The HTTP response for a failed upgrade: the status the RFC asks for.
pub fn error_response(err: &Error) -> http::Response<Empty<Bytes>> {
    let rejection = rejection(err);
    http_response(rejection.status, rejection.headers.iter().map(|(k, v)| (k.as_str(), v.as_str())), Empty::new())
}

/// How to refuse an upgrade that failed with `err` (the decision is
/// tether-proto's, [`Rejection::for_error`]); the body is the error.
pub(crate) fn rejection(err: &Error) -> Rejection {
    match err {
        Error::Handshake(e) => Rejection::for_error(e, format!("{err}\n")),
        _ => Rejection::new(400, format!("{err}\n")),
    }
}

/// An `http::Response` with `status`, `headers` and `body`.
pub(crate) fn http_response<'a, B>(status: u16, headers: impl Iterator<Item = (&'a str, &'a str)>, body: B) -> http::Response<B> {
    let mut builder = http::Response::builder().status(http::StatusCode::from_u16(status).unwrap_or(http::StatusCode::BAD_REQUEST));
    for (name, value) in headers {
        builder = builder.header(name, value);
    }
    builder.body(body).expect("valid response")
}

/// The 101 response for `request` (200 over HTTP/2, RFC 8441 §5) and what
/// was agreed (subprotocol, permessage-deflate), as decided by [`negotiate`].
pub(crate) fn switching_protocols<B>(
    request: &Request,
    over_h2: bool,
    protocol: Option<&str>,
    deflate: Option<&DeflateConfig>,
    body: B,
) -> (http::Response<B>, Negotiated) {
    let negotiated = negotiate(&UpgradeOffer::from_request(request), protocol, deflate, &[]);
    if over_h2 {
        let headers = tether_proto::negotiate::extended_connect_headers(&negotiated, &[]);
        return (http_response(200, headers.iter().map(|(k, v)| (k.as_str(), v.as_str())), body), negotiated);
    }
    (http_response(101, negotiated.headers(), body), negotiated)
}

impl Upgrade {
    /// The request: path, query, headers, Origin, offered subprotocols.
    pub fn request(&self) -> &Request {
        &self.request
    }

    /// Whether the request came over HTTP/2 (RFC 8441 extended CONNECT).
    pub fn is_http2(&self) -> bool {
        self.over_h2
    }

    /// Accept, selecting `protocol` (ignored unless the client offered it).
    /// With `config.deflate` set, permessage-deflate is negotiated too.
    /// Return the response to hyper; the future resolves to the WebSocket once
    /// hyper hands over the connection.
    pub fn accept(self, protocol: Option<&str>, config: Config) -> (http::Response<Empty<Bytes>>, UpgradeFuture) {
        let (response, Negotiated { protocol, deflate, .. }) =
            switching_protocols(&self.request, self.over_h2, protocol, config.deflate.as_ref(), Empty::new());
        (response, UpgradeFuture { on_upgrade: self.on_upgrade, config, protocol, deflate })
    }
}

/// Resolves to the [`WebSocket`] after hyper has sent the 101 response
/// (over HTTP/2: the 200, and the WebSocket runs on the request's stream).
pub struct UpgradeFuture {
    on_upgrade: hyper::upgrade::OnUpgrade,
    config: Config,
    protocol: Option<String>,
    deflate: Option<PerMessageDeflate>,
}

impl Future for UpgradeFuture {
    type Output = Result<WebSocket<UpgradedIo>>;
    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let upgraded = match Pin::new(&mut self.on_upgrade).poll(cx) {
            Poll::Pending => return Poll::Pending,
            Poll::Ready(Err(e)) => return Poll::Ready(Err(Error::Io(std::io::Error::other(e)))),
            Poll::Ready(Ok(u)) => u,
        };
        let deflate = self.deflate.take();
        let mut ws = WebSocket::from_raw_with_deflate(TokioIo::new(upgraded), Role::Server, &self.config, &[], deflate);
        ws.set_protocol(self.protocol.take());
        Poll::Ready(Ok(ws))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tether_proto::HandshakeError;

    fn request(protocols: &str, extensions: &str) -> Request {
        let headers = [
            ("Host", "h".as_bytes()),
            ("Upgrade", b"websocket"),
            ("Connection", b"Upgrade"),
            ("Sec-WebSocket-Version", b"13"),
            ("Sec-WebSocket-Key", b"dGhlIHNhbXBsZSBub25jZQ=="),
            ("Sec-WebSocket-Protocol", protocols.as_bytes()),
            ("Sec-WebSocket-Extensions", extensions.as_bytes()),
        ];
        Request::from_parts("GET", true, "/", headers).unwrap()
    }

    #[test]
    fn switching_protocols_carries_the_negotiated_headers() {
        let deflate = DeflateConfig::default();
        let (response, negotiated) = switching_protocols(&request("chat", "permessage-deflate"), false, Some("chat"), Some(&deflate), ());
        assert_eq!(response.status(), http::StatusCode::SWITCHING_PROTOCOLS);
        let h = response.headers();
        assert_eq!(h["sec-websocket-accept"], "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=");
        assert_eq!(h["upgrade"], "websocket");
        assert_eq!(h["connection"], "Upgrade");
        assert_eq!(h["sec-websocket-protocol"], "chat");
        assert_eq!(h["sec-websocket-extensions"], negotiated.deflate.expect("agreed").response().as_str());

        // Not offered: no subprotocol; no deflate configured: no extension.
        let (response, negotiated) = switching_protocols(&request("chat", "permessage-deflate"), false, Some("other"), None, ());
        assert_eq!((negotiated.protocol, negotiated.deflate), (None, None));
        assert!(response.headers().get("sec-websocket-protocol").is_none());
        assert!(response.headers().get("sec-websocket-extensions").is_none());
    }

    #[test]
    fn error_response_asks_for_version_13() {
        let response = error_response(&Error::Handshake(HandshakeError::UnsupportedVersion("8".into())));
        assert_eq!(response.status(), 426);
        assert_eq!(response.headers()["sec-websocket-version"], "13");
        let response = error_response(&Error::Handshake(HandshakeError::MissingHost));
        assert_eq!(response.status(), 400);
        assert!(response.headers().get("sec-websocket-version").is_none());
    }
}
