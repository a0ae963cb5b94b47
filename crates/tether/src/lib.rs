#![cfg_attr(docsrs, feature(doc_cfg))]
//! # tether
//!
//! Async WebSocket client and server for tokio, on the sans-I/O protocol
//! engine in [`tether_proto`].
//!
//! - Server, lean path: [`accept`] / [`accept_with`] on any stream.
//! - Server sharing a port with an HTTP app: [`upgrade()`] (hyper 1, feature
//!   `hyper`) and [`axum::WebSocketUpgrade`] (feature `axum`).
//! - Client: [`connect`] / [`ClientBuilder`] for `ws://` and `wss://`.
//! - Client that reconnects, queues while down and keeps a heartbeat:
//!   [`ReconnectingClient`] (see [`reconnect`]).
//! - [`WebSocket`] implements `Stream` and `Sink`; [`WebSocket::split`] gives
//!   halves for two tasks.
//!
//! ## Feature flags
//!
//! - `tls` (default): `wss://` for clients and servers, on rustls (ring),
//!   with the system's roots and webpki-roots ([`tls`]).
//! - `hyper`: [`upgrade()`] a hyper 1 request to a WebSocket, sharing a port
//!   with an HTTP server.
//! - `axum` (implies `hyper`): the [`axum::WebSocketUpgrade`] extractor.
//! - `http2` (implies `hyper`, `tls`): WebSocket over HTTP/2 (RFC 8441).
//!   [`upgrade()`] and the axum extractor accept an extended CONNECT on a
//!   hyper HTTP/2 server built with `enable_connect_protocol()`;
//!   [`ClientBuilder::http2`] connects as an HTTP/2 stream ([`http2`]).
//!
//! An echo server:
//!
//! ```no_run
//! use tether::Message;
//!
//! #[tokio::main]
//! async fn main() -> Result<(), Box<dyn std::error::Error>> {
//!     let listener = tokio::net::TcpListener::bind("127.0.0.1:9001").await?;
//!     loop {
//!         let (tcp, _) = listener.accept().await?;
//!         tokio::spawn(async move {
//!             let Ok(mut ws) = tether::accept(tcp).await else { return };
//!             while let Some(Ok(msg)) = ws.recv().await {
//!                 if msg.is_data() && ws.feed(msg).await.is_err() {
//!                     break;
//!                 }
//!             }
//!         });
//!     }
//! }
//! ```

mod client;
mod config;
mod error;
mod io;
pub mod reconnect;
mod server;
mod socket;
pub mod split;
mod stream;
#[cfg(feature = "tls")]
pub mod tls;
#[cfg(feature = "hyper")]
pub mod upgrade;
#[cfg(feature = "http2")]
pub mod http2;
pub mod v1;
#[cfg(feature = "axum")]
pub mod axum;

pub use client::{client_handshake, connect, ClientBuilder};
pub use reconnect::ReconnectingClient;
pub use config::Config;
pub use error::{Error, Result};
pub use server::{accept, accept_deferred, accept_deferred_async, accept_with, accept_with_async, Accept, Accepted, Reject};
pub use socket::WebSocket;
pub use stream::MaybeTlsStream;
pub use tether_proto::handshake::{ClientRequest, ExtensionOffer, Request, Response};
pub use tether_proto::{CloseCode, CloseFrame, DeflateConfig, DeflateParams, EncodedFrame, Message, Role, Utf8Bytes};
#[cfg(feature = "hyper")]
pub use upgrade::upgrade;
pub use bytes::Bytes;
