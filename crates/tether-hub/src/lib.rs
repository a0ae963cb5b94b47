//! # tether-hub
//!
//! The real-time server as a library, on top of the `tether` async WebSocket:
//! a registry of connections, topics (rooms), broadcast that encodes each
//! frame once and never waits for the slowest client, heartbeats that find
//! dead connections, a slow-consumer policy, the `tether.v1` JSON envelope,
//! and a [`Broker`] interface so a distributed broker can be added without
//! touching connection code.
//!
//! Data flows one way: socket → [`Hub::run_connection`] (parses envelopes) →
//! [`Broker::publish`] (assigns sequence numbers) → [`Hub`] delivery (encodes
//! once per format, pushes into each subscriber's bounded queue) → the
//! subscriber's connection task → socket.

mod broker;
mod config;
mod conn;
pub mod envelope;
mod hub;
mod metrics;
mod queue;

pub use broker::{AckTarget, Body, Broker, BrokerError, BrokerHealth, DeliverySink, MemoryBroker, Publish, Published};
pub use config::{HubConfig, SlowConsumerPolicy};
pub use conn::ConnInfo;
pub use hub::Hub;
pub use metrics::Metrics;

/// The subprotocol of the JSON envelope (see docs/protocol.md).
pub const PROTOCOL_V1: &str = "tether.v1";
