//! An axum extractor: `async fn handler(ws: WebSocketUpgrade) -> Response`.
//!
//! ```no_run
//! use tether::axum::WebSocketUpgrade;
//! async fn handler(ws: WebSocketUpgrade) -> axum_core::response::Response {
//!     ws.on_upgrade(|mut socket| async move {
//!         while let Some(Ok(msg)) = socket.recv().await {
//!             if msg.is_data() && socket.send(msg).await.is_err() { break; }
//!         }
//!     })
//! }
//! ```

use crate::config::Config;
use crate::socket::WebSocket;
use crate::upgrade::{http_response, rejection, switching_protocols, to_request, UpgradedIo};
use axum_core::body::Body;
use axum_core::extract::FromRequestParts;
use axum_core::response::{IntoResponse, Response};
use hyper_util::rt::TokioIo;
use std::future::Future;
use tether_proto::handshake::Request;
use tether_proto::negotiate::{Negotiated, Rejection};
use tether_proto::Role;

/// Extracts a validated WebSocket upgrade request.
pub struct WebSocketUpgrade {
    request: Request,
    over_h2: bool,
    on_upgrade: hyper::upgrade::OnUpgrade,
    protocol: Option<String>,
    config: Config,
}

/// Why a request could not be upgraded; answers with the matching status.
#[derive(Debug)]
pub struct UpgradeRejection(crate::Error);

impl IntoResponse for UpgradeRejection {
    fn into_response(self) -> Response {
        let Rejection { status, headers, body } = rejection(&self.0);
        http_response(status, headers.iter().map(|(k, v)| (k.as_str(), v.as_str())), Body::from(body))
    }
}

impl<S: Send + Sync> FromRequestParts<S> for WebSocketUpgrade {
    type Rejection = UpgradeRejection;

    async fn from_request_parts(parts: &mut http::request::Parts, _state: &S) -> Result<Self, Self::Rejection> {
        let (request, over_h2) = to_request(&parts.method, parts.version, &parts.uri, &parts.headers, &parts.extensions).map_err(UpgradeRejection)?;
        let on_upgrade = parts
            .extensions
            .remove::<hyper::upgrade::OnUpgrade>()
            .ok_or_else(|| UpgradeRejection(crate::Error::Io(std::io::Error::other("connection cannot be upgraded"))))?;
        Ok(WebSocketUpgrade { request, over_h2, protocol: None, config: Config::default(), on_upgrade })
    }
}

impl WebSocketUpgrade {
    /// The request: path, query, headers, Origin, offered subprotocols.
    pub fn request(&self) -> &Request {
        &self.request
    }

    /// Whether the request came over HTTP/2 (an RFC 8441 extended CONNECT,
    /// answered with 200 instead of 101).
    pub fn is_http2(&self) -> bool {
        self.over_h2
    }

    /// Select the first of `protocols` that the client offered.
    pub fn protocols<I: IntoIterator<Item = T>, T: AsRef<str>>(mut self, protocols: I) -> Self {
        let offered = self.request.protocols();
        self.protocol = protocols.into_iter().find(|p| offered.contains(&p.as_ref())).map(|p| p.as_ref().to_string());
        self
    }

    /// Use these settings for the socket (with `config.deflate` set,
    /// permessage-deflate is negotiated when the client offers it).
    pub fn config(mut self, config: Config) -> Self {
        self.config = config;
        self
    }

    /// Answer 101 (200 over HTTP/2) and run `callback` with the socket once hyper hands it over.
    pub fn on_upgrade<F, Fut>(self, callback: F) -> Response
    where
        F: FnOnce(WebSocket<UpgradedIo>) -> Fut + Send + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        let (response, Negotiated { protocol, deflate, .. }) =
            switching_protocols(&self.request, self.over_h2, self.protocol.as_deref(), self.config.deflate.as_ref(), Body::empty());
        let WebSocketUpgrade { on_upgrade, config, .. } = self;
        tokio::spawn(async move {
            match on_upgrade.await {
                Ok(upgraded) => {
                    let mut ws = WebSocket::from_raw_with_deflate(TokioIo::new(upgraded), Role::Server, &config, &[], deflate);
                    ws.set_protocol(protocol);
                    callback(ws).await;
                }
                Err(e) => tracing::debug!(error = %e, "WebSocket upgrade failed"),
            }
        });
        response
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tether_proto::HandshakeError;

    #[test]
    fn rejection_has_the_status_and_version_header() {
        let response = UpgradeRejection(crate::Error::Handshake(HandshakeError::UnsupportedVersion("8".into()))).into_response();
        assert_eq!(response.status(), 426);
        assert_eq!(response.headers()["sec-websocket-version"], "13");
        let response = UpgradeRejection(crate::Error::Io(std::io::Error::other("no upgrade"))).into_response();
        assert_eq!(response.status(), 400);
        assert!(response.headers().get("sec-websocket-version").is_none());
    }
}
