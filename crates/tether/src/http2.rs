//! The client side of WebSocket over HTTP/2 (RFC 8441): an HTTP/2
//! connection (TLS with ALPN `h2` for `wss://`, prior knowledge for
//! `ws://`), one extended CONNECT with `:protocol = websocket`, and the
//! WebSocket on that request's stream. Asked for with
//! [`ClientBuilder::http2`](crate::ClientBuilder::http2).
//!
//! The server side needs nothing of its own: [`upgrade()`](crate::upgrade())
//! and [`axum::WebSocketUpgrade`](crate::axum::WebSocketUpgrade) accept an
//! extended CONNECT as they accept an HTTP/1.1 upgrade, when the hyper
//! HTTP/2 server was built with `enable_connect_protocol()`.

use crate::config::Config;
use crate::error::{Error, Result};
use crate::socket::WebSocket;
use crate::stream::MaybeTlsStream;
use http_body_util::Empty;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tether_proto::handshake::{parse_extensions, ClientRequest, Response};
use tether_proto::{HandshakeError, Role};
use tokio::io::{AsyncRead, AsyncWrite};

/// Largest header list accepted from the server (HTTP/2 SETTINGS).
const MAX_HEADER_LIST: u32 = 16 * 1024;

/// Open a WebSocket as an HTTP/2 stream over `io` (TLS or TCP, already
/// connected, HTTP/2 agreed by ALPN or known in advance). `authority` is
/// `host[:port]`, `scheme` `https` or `http`.
pub(crate) async fn handshake_h2<S>(io: S, scheme: &str, request: &ClientRequest, config: &Config) -> Result<(WebSocket<MaybeTlsStream>, Response)>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let exchange = async {
        let mut builder = hyper::client::conn::http2::Builder::new(TokioExecutor::new());
        builder.timer(TokioTimer::new()).max_header_list_size(MAX_HEADER_LIST);
        let (mut sender, conn) = builder.handshake::<_, Empty<bytes::Bytes>>(TokioIo::new(io)).await.map_err(h2_error)?;
        // The connection task lives as long as the stream: it ends when the
        // WebSocket (the last user of the connection) is dropped.
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!(error = %e, "HTTP/2 connection ended with an error");
            }
        });
        let offer = config.deflate.as_ref().map(|d| d.offer());
        let target = if request.target.is_empty() { "/" } else { &request.target };
        let uri = format!("{scheme}://{}{target}", request.host);
        let mut req = http::Request::builder()
            .method(http::Method::CONNECT)
            .version(http::Version::HTTP_2)
            .uri(uri)
            // RFC 8441 §5: Sec-WebSocket-Version as in RFC 6455; no key.
            .header("sec-websocket-version", "13");
        if !request.protocols.is_empty() {
            req = req.header("sec-websocket-protocol", request.protocols.join(", "));
        }
        let extensions = match (&request.extensions, &offer) {
            (Some(other), Some(offer)) if !other.trim().is_empty() => Some(format!("{other}, {offer}")),
            (Some(other), _) if !other.trim().is_empty() => Some(other.clone()),
            (_, offer) => offer.clone(),
        };
        if let Some(extensions) = &extensions {
            req = req.header("sec-websocket-extensions", extensions);
        }
        for (name, value) in &request.headers {
            // Connection-specific headers are forbidden in HTTP/2 (RFC 9113 §8.2.2).
            if !matches!(name.to_ascii_lowercase().as_str(), "host" | "connection" | "upgrade" | "keep-alive" | "transfer-encoding") {
                req = req.header(name.as_str(), value.as_str());
            }
        }
        let mut req = req.body(Empty::new()).map_err(|e| Error::InvalidUrl(format!("cannot build the CONNECT request: {e}")))?;
        req.extensions_mut().insert(hyper::ext::Protocol::from_static("websocket"));
        sender.ready().await.map_err(h2_error)?;
        // A server without SETTINGS_ENABLE_CONNECT_PROTOCOL (RFC 8441 §3)
        // resets the stream: say what that usually means.
        let mut response = sender
            .send_request(req)
            .await
            .map_err(|e| Error::Http2(format!("{e} (does the server accept WebSockets over HTTP/2, RFC 8441?)")))?;
        // RFC 8441 §5: a 2xx accepts; anything else refuses.
        let status = response.status().as_u16();
        if !(200..300).contains(&status) {
            return Err(Error::Handshake(HandshakeError::UnexpectedStatus(status)));
        }
        let upgraded = hyper::upgrade::on(&mut response).await.map_err(h2_error)?;
        Ok((response, upgraded))
    };
    let (response, upgraded) = match tokio::time::timeout(config.handshake_timeout, exchange).await {
        Err(_) => return Err(Error::Timeout("handshake")),
        Ok(r) => r?,
    };
    let headers: Vec<(String, Vec<u8>)> = response.headers().iter().map(|(k, v)| (k.as_str().to_string(), v.as_bytes().to_vec())).collect();
    let find = |name: &str| headers.iter().find(|(k, _)| k == name).map(|(_, v)| String::from_utf8_lossy(v).trim().to_string());
    let protocol = match find("sec-websocket-protocol") {
        None => None,
        // RFC 6455 §4.1: a subprotocol that was not offered fails the connection.
        Some(p) if request.protocols.iter().any(|o| o == &p) => Some(p),
        Some(p) => return Err(HandshakeError::UnexpectedSubprotocol(p).into()),
    };
    let extensions = find("sec-websocket-extensions").map(|v| parse_extensions(&v)).unwrap_or_default();
    let deflate = match &config.deflate {
        Some(deflate) => deflate.accept_response(&extensions)?,
        None => match extensions.first() {
            Some(ext) => return Err(HandshakeError::UnexpectedExtension(ext.name.clone()).into()),
            None => None,
        },
    };
    let stream = MaybeTlsStream::H2(Box::new(TokioIo::new(upgraded)));
    let mut ws = WebSocket::from_raw_with_deflate(stream, Role::Client, config, &[], deflate);
    ws.set_protocol(protocol.clone());
    Ok((ws, Response { protocol, extensions, headers }))
}

fn h2_error(e: hyper::Error) -> Error {
    Error::Http2(e.to_string())
}
