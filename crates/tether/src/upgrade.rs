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
use tether_proto::handshake::{accept_key, Request};
use tether_proto::{DeflateConfig, PerMessageDeflate, Role};

/// The stream under an upgraded hyper connection.
pub type UpgradedIo = TokioIo<hyper::upgrade::Upgraded>;

/// Whether `req` asks for a WebSocket upgrade (Upgrade: websocket).
pub fn is_upgrade_request<B>(req: &http::Request<B>) -> bool {
    req.headers()
        .get_all(http::header::UPGRADE)
        .iter()
        .any(|v| tether_proto::handshake::header_has_token(v.as_bytes(), "websocket"))
}

/// A validated upgrade request, ready to be accepted or rejected.
pub struct Upgrade {
    request: Request,
    on_upgrade: hyper::upgrade::OnUpgrade,
}

/// Validate `req` as a WebSocket upgrade (RFC 6455 §4.2.1). On error, answer
/// with [`error_response`].
pub fn upgrade<B>(req: &mut http::Request<B>) -> Result<Upgrade> {
    let request = to_request(req.method(), req.version(), req.uri(), req.headers())?;
    let on_upgrade = hyper::upgrade::on(req);
    Ok(Upgrade { request, on_upgrade })
}

pub(crate) fn to_request(method: &http::Method, version: http::Version, uri: &http::Uri, headers: &http::HeaderMap) -> Result<Request> {
    let target = uri.path_and_query().map_or("/", |p| p.as_str());
    let headers = headers.iter().map(|(k, v)| (k.as_str(), v.as_bytes()));
    Ok(Request::from_parts(method.as_str(), version >= http::Version::HTTP_11, target, headers)?)
}

/// The HTTP response for a failed upgrade: the status the RFC asks for.
pub fn error_response(err: &Error) -> http::Response<Empty<Bytes>> {
    let (status, version_header) = match err {
        Error::Handshake(e) => (e.http_status(), e.http_status() == 426),
        _ => (400, false),
    };
    let mut builder = http::Response::builder().status(status);
    if version_header {
        builder = builder.header("Sec-WebSocket-Version", "13");
    }
    builder.body(Empty::new()).expect("valid response")
}

/// The 101 response; with `deflate`, permessage-deflate is negotiated
/// (RFC 7692) and the agreement returned with it.
pub(crate) fn switching_protocols(
    request: &Request,
    protocol: Option<&str>,
    deflate: Option<&DeflateConfig>,
) -> (http::response::Builder, Option<PerMessageDeflate>) {
    let mut builder = http::Response::builder()
        .status(http::StatusCode::SWITCHING_PROTOCOLS)
        .header(http::header::CONNECTION, "Upgrade")
        .header(http::header::UPGRADE, "websocket")
        .header("Sec-WebSocket-Accept", accept_key(request.key().as_bytes()));
    if let Some(p) = protocol {
        builder = builder.header("Sec-WebSocket-Protocol", p);
    }
    let agreed = deflate.and_then(|d| d.negotiate(&request.extensions()));
    if let Some(agreed) = &agreed {
        builder = builder.header("Sec-WebSocket-Extensions", agreed.response());
    }
    (builder, agreed)
}

impl Upgrade {
    /// The request: path, query, headers, Origin, offered subprotocols.
    pub fn request(&self) -> &Request {
        &self.request
    }

    /// Accept, selecting `protocol` (ignored unless the client offered it).
    /// With `config.deflate` set, permessage-deflate is negotiated too.
    /// Return the response to hyper; the future resolves to the WebSocket once
    /// hyper hands over the connection.
    pub fn accept(self, protocol: Option<&str>, config: Config) -> (http::Response<Empty<Bytes>>, UpgradeFuture) {
        let protocol = protocol.filter(|p| self.request.protocols().contains(p)).map(str::to_string);
        let (builder, deflate) = switching_protocols(&self.request, protocol.as_deref(), config.deflate.as_ref());
        let response = builder.body(Empty::new()).expect("valid response");
        (response, UpgradeFuture { on_upgrade: self.on_upgrade, config, protocol, deflate })
    }
}

/// Resolves to the [`WebSocket`] after hyper has sent the 101 response.
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
