#![cfg_attr(docsrs, feature(doc_cfg))]
//! # tether-hub
//!
//! The real-time server as a library, on top of the `tether` async WebSocket:
//! a registry of connections, topics (rooms), broadcast that encodes each
//! frame once and never waits for the slowest client, heartbeats that find
//! dead connections, a slow-consumer policy, the `tether.v1` JSON envelope,
//! per-topic history so reconnecting clients resume exactly where they left
//! off, and a [`Broker`] interface: [`MemoryBroker`] for one process,
//! `RedisBroker` (feature `redis`) for several nodes behind a load balancer.
//!
//! Data flows one way: socket → [`Hub::run_connection`] (parses envelopes) →
//! [`Broker::publish`] (assigns sequence numbers, keeps history) → [`Hub`]
//! delivery (encodes once per format, pushes into each subscriber's bounded queue) → the
//! subscriber's connection task → socket.
//!
//! ## Feature flags
//!
//! - `jwt`: [`jwt::JwtVerifier`], connection tokens (HS256, RS256/ES256
//!   PEM keys, JWKS files) turned into [`Grants`].
//! - `redis`: `RedisBroker`, so that several nodes share topics, sequence
//!   numbers, history and presence through Redis (or Redis Cluster).
//!
//! ## Example
//!
//! A broadcast server on an axum app: every text message a client on `/ws`
//! sends reaches every client in the room.
//!
//! ```no_run
//! use std::sync::Arc;
//! use tether::axum::WebSocketUpgrade;
//! use tether_hub::{ConnInfo, Hub, HubConfig, MemoryBroker};
//!
//! #[tokio::main]
//! async fn main() -> std::io::Result<()> {
//!     let hub = Hub::new(HubConfig::default(), Arc::new(MemoryBroker::new()));
//!     let app = axum::Router::new().route(
//!         "/ws",
//!         axum::routing::get(move |ws: WebSocketUpgrade| async move {
//!             ws.on_upgrade(move |socket| async move { hub.run_connection(socket, ConnInfo::new("/ws")).await })
//!         }),
//!     );
//!     let listener = tokio::net::TcpListener::bind("127.0.0.1:3000").await?;
//!     axum::serve(listener, app).await
//! }
//! ```

pub mod api;
pub mod auth;
mod broker;
mod config;
pub mod events;
mod conn;
mod drain;
pub mod hooks;
mod hub;
#[cfg(feature = "jwt")]
#[cfg_attr(docsrs, doc(cfg(feature = "jwt")))]
pub mod jwt;
pub mod http;
mod keyed;
mod limit;
mod memory;
mod metrics;
pub mod namespace;
pub mod presence;
mod queue;
pub mod room;
pub mod slots;
mod serve;
mod session;
pub mod system;
#[cfg(feature = "redis")]
mod redis_broker;

pub use broker::{
    node_id, Body, Broker, BrokerError, BrokerHealth, DeliverySink, History, HistoryConfig, HistoryRetention, Origin, PresenceChange, Publish, Published,
    Resume, SubscribeRequest,
};
pub use memory::MemoryBroker;
#[cfg(feature = "redis")]
pub use redis_broker::RedisBroker;
pub use config::{HubConfig, RateLimit, SlowConsumerPolicy};
pub use session::{ConnInfo, End, Ending, Identity, Outbox, Session};
pub use auth::{AuthError, Authenticator, Capabilities, Grants, TopicPatterns};
pub use hub::Hub;
pub use drain::{drain_reason, DRAIN_STEP};
pub use serve::{accept, serve};
pub use metrics::{ByTransport, Metrics, Transport, TransportGuard};

/// The `tether.v1` envelope, shared with the client: [`tether::v1::envelope`].
pub use tether::v1::envelope;

/// The subprotocol of the JSON envelope (see docs/protocol.md): [`tether::v1::PROTOCOL`].
pub const PROTOCOL_V1: &str = tether::v1::PROTOCOL;
