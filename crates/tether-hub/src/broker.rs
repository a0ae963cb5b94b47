//! The [`Broker`] interface: where published messages get their sequence
//! number and how they reach every node. [`MemoryBroker`] is the embedded
//! default (one process); a distributed broker implements the same trait.

use bytes::Bytes;
use serde_json::value::RawValue;
use serde_json::Value;
use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};

/// The body of a published message.
#[derive(Clone, Debug)]
pub enum Body {
    /// Plain text (from a plain client, or a JSON string content).
    Text(Arc<str>),
    /// Any JSON value, kept as its text.
    Json(Arc<RawValue>),
    /// Binary (plain clients only).
    Binary(Bytes),
}

/// A message to publish on a topic.
#[derive(Clone, Debug)]
pub struct Publish {
    /// Topic (rooms are topics named after the URL path).
    pub topic: Arc<str>,
    /// Session id of the sender.
    pub sender: Arc<str>,
    /// Milliseconds since the Unix epoch, set by the publishing node.
    pub timestamp_ms: u64,
    /// What was sent.
    pub body: Body,
    /// Whom to acknowledge once the message has its sequence number.
    pub ack: Option<AckTarget>,
}

/// A published message with its place in the topic.
#[derive(Clone, Debug)]
pub struct Published {
    /// Topic.
    pub topic: Arc<str>,
    /// Sequence number in the topic, starting at 1, assigned by the broker.
    pub seq: u64,
    /// Session id of the sender.
    pub sender: Arc<str>,
    /// Milliseconds since the Unix epoch.
    pub timestamp_ms: u64,
    /// What was sent.
    pub body: Body,
}

/// A request to acknowledge: the local connection and the client's `id`.
#[derive(Clone, Debug)]
pub struct AckTarget {
    /// Connection id on the publishing node.
    pub conn: u64,
    /// The `id` the client gave.
    pub id: Value,
}

/// Broker failures reported to the publisher.
#[derive(Debug, thiserror::Error)]
pub enum BrokerError {
    /// The broker cannot take more messages right now.
    #[error("broker is overloaded, try again")]
    Overloaded,
    /// The broker is unreachable.
    #[error("broker unavailable: {0}")]
    Unavailable(String),
}

/// Broker state for `/health` and `/metrics`.
#[derive(Clone, Debug)]
pub struct BrokerHealth {
    /// Whether publishing works right now.
    pub ok: bool,
    /// A short description (e.g. "connected", "reconnecting: ...").
    pub detail: String,
}

/// Where a broker delivers messages on this node (implemented by the hub).
pub trait DeliverySink: Send + Sync + 'static {
    /// Deliver a message to this node's subscribers of its topic.
    fn deliver(&self, msg: &Published);
    /// Tell a local publisher its message got sequence number `seq`.
    fn ack(&self, target: &AckTarget, topic: &str, seq: u64);
}

/// Assigns sequence numbers and carries messages to every node.
///
/// `publish` must not block: it is called from connection tasks. A broker
/// delivers every message, in per-topic sequence order, to the sink of
/// every node (this one included), exactly once.
pub trait Broker: Send + Sync + 'static {
    /// Attach this node's sink; called once before any `publish`.
    fn start(&self, sink: Arc<dyn DeliverySink>);
    /// Publish a message.
    fn publish(&self, msg: Publish) -> Result<(), BrokerError>;
    /// Short name for logs (`memory`, `redis`).
    fn name(&self) -> &'static str;
    /// Current health.
    fn health(&self) -> BrokerHealth {
        BrokerHealth { ok: true, detail: "ok".into() }
    }
}

/// The in-process broker: sequence numbers per topic, delivery by direct call.
#[derive(Default)]
pub struct MemoryBroker {
    sink: OnceLock<Arc<dyn DeliverySink>>,
    /// Per-topic sequence counters. The lock is held while delivering, which
    /// is what keeps per-topic order when several connections publish at once.
    topics: Mutex<HashMap<Arc<str>, u64>>,
}

impl MemoryBroker {
    /// A new in-memory broker.
    pub fn new() -> Self {
        Self::default()
    }
}

impl Broker for MemoryBroker {
    fn start(&self, sink: Arc<dyn DeliverySink>) {
        let _ = self.sink.set(sink);
    }

    fn publish(&self, msg: Publish) -> Result<(), BrokerError> {
        let sink = self.sink.get().ok_or_else(|| BrokerError::Unavailable("broker not started".into()))?;
        let mut topics = self.topics.lock().unwrap_or_else(|p| p.into_inner());
        let seq = topics.entry(msg.topic.clone()).or_insert(0);
        *seq += 1;
        let published = Published { topic: msg.topic, seq: *seq, sender: msg.sender, timestamp_ms: msg.timestamp_ms, body: msg.body };
        sink.deliver(&published);
        drop(topics);
        if let Some(target) = &msg.ack {
            sink.ack(target, &published.topic, published.seq);
        }
        Ok(())
    }

    fn name(&self) -> &'static str {
        "memory"
    }
}
