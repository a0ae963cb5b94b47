//! The [`Broker`] interface: where published messages get their sequence
//! number, where recent messages are kept for resuming clients, and how
//! messages and presence reach every node. [`MemoryBroker`](crate::MemoryBroker)
//! is the embedded default (one process); `RedisBroker` (feature `redis`)
//! spans several nodes.

use bytes::Bytes;
use serde_json::value::RawValue;
use serde_json::Value;
use std::sync::Arc;
use std::time::Duration;

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

impl Body {
    /// Payload size in bytes (for memory accounting).
    pub fn len(&self) -> usize {
        match self {
            Body::Text(t) => t.len(),
            Body::Json(j) => j.get().len(),
            Body::Binary(b) => b.len(),
        }
    }

    /// Whether the payload is empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Who published a message: the connection on the publishing node and the
/// request `id` the client gave (if any).
#[derive(Clone, Debug)]
pub struct Origin {
    /// Connection id on the publishing node.
    pub conn: u64,
    /// The `id` the client gave: when present, the client gets an `ack`.
    pub id: Option<Value>,
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
    /// The conflation key (`"key"` of the publish): a newer message with the
    /// same topic and key replaces an unsent older one in a slow
    /// subscriber's queue, and delta subscriptions are patched per key.
    pub key: Option<Arc<str>>,
    /// Whom to acknowledge once the message has its sequence number, or to
    /// tell if it could not be published.
    pub origin: Origin,
}

/// A published message with its place in the topic.
#[derive(Clone, Debug)]
pub struct Published {
    /// Topic.
    pub topic: Arc<str>,
    /// The topic's history epoch: changes whenever the topic's sequence
    /// restarts (its history was lost or reset), so `(epoch, seq)` names one
    /// message for good.
    pub epoch: Arc<str>,
    /// Sequence number in the topic, starting at 1, assigned by the broker.
    pub seq: u64,
    /// Session id of the sender.
    pub sender: Arc<str>,
    /// Milliseconds since the Unix epoch.
    pub timestamp_ms: u64,
    /// What was sent.
    pub body: Body,
    /// The conflation key, as published.
    pub key: Option<Arc<str>>,
}

/// Where a resuming subscriber left off.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Resume {
    /// The last sequence number the client received.
    pub since: u64,
    /// The epoch that sequence number belongs to (`None`: the current one).
    pub epoch: Option<String>,
}

/// One connection subscribing to one topic, possibly resuming.
#[derive(Clone, Debug)]
pub struct SubscribeRequest {
    /// Connection id on this node.
    pub conn: u64,
    /// The topic.
    pub topic: Arc<str>,
    /// Replay what was missed since this point.
    pub resume: Option<Resume>,
    /// The client's request `id`, for the `ack`.
    pub id: Option<Value>,
}

/// The broker's answer to a [`SubscribeRequest`]: where the topic stands.
#[derive(Clone, Debug)]
pub struct History {
    /// The topic's current epoch.
    pub epoch: Arc<str>,
    /// The newest sequence number assigned when the subscription took effect
    /// (0 if none): live delivery continues after it.
    pub last_seq: u64,
    /// For a resume: the kept messages after `since` (or the whole kept
    /// window if the epoch differs), oldest first, none after `last_seq`.
    pub messages: Vec<Published>,
}

/// How much history each topic keeps for resuming clients.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HistoryConfig {
    /// Most messages kept per topic; 0 keeps none. Default 1000.
    pub max_messages: usize,
    /// Messages older than this are not replayed. Default 5 minutes.
    pub max_age: Duration,
    /// (Memory broker) most topics whose sequence and history are kept; the
    /// least recently used topic is forgotten first (its epoch changes when
    /// it comes back). Default 10 000.
    pub max_topics: usize,
    /// (Memory broker) most payload bytes kept over all topics; the oldest
    /// messages of the least recently used topics go first. Default 64 MiB.
    pub max_bytes: usize,
    /// (Redis broker) most bytes kept per topic in Redis (body and sender,
    /// plus 64 per message), oldest first out; a message larger than this
    /// is delivered but not kept. Bounds what any one topic costs Redis
    /// and what one replay reads, whatever the message sizes. Default 4 MiB.
    pub max_topic_bytes: usize,
    /// Topic prefixes (namespaces) with their own `max_messages` and
    /// `max_age`; the longest matching prefix wins, other topics use the
    /// values above. The byte bounds apply to every topic. Default none.
    pub prefixes: Vec<HistoryRetention>,
}

/// The history kept by the topics of one prefix (see [`HistoryConfig::prefixes`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HistoryRetention {
    /// The topic prefix, e.g. `chat:`.
    pub prefix: String,
    /// Most messages kept per topic; 0 keeps none.
    pub max_messages: usize,
    /// Messages older than this are not replayed.
    pub max_age: Duration,
}

impl HistoryConfig {
    /// `(max_messages, max_age)` of `topic`: its prefix's, or the defaults.
    pub fn retention(&self, topic: &str) -> (usize, Duration) {
        self.prefixes
            .iter()
            .filter(|p| topic.starts_with(&p.prefix))
            .max_by_key(|p| p.prefix.len())
            .map_or((self.max_messages, self.max_age), |p| (p.max_messages, p.max_age))
    }

    /// The longest `max_age` of any topic.
    pub fn longest_age(&self) -> Duration {
        self.prefixes.iter().map(|p| p.max_age).fold(self.max_age, Duration::max)
    }

    /// Whether some topic keeps history.
    pub fn keeps_any(&self) -> bool {
        self.max_messages > 0 || self.prefixes.iter().any(|p| p.max_messages > 0)
    }
}

impl Default for HistoryConfig {
    fn default() -> Self {
        HistoryConfig { max_messages: 1000, max_age: Duration::from_secs(300), max_topics: 10_000, max_bytes: 64 << 20, max_topic_bytes: 4 << 20, prefixes: Vec::new() }
    }
}

/// Someone joined or left a topic on this node.
#[derive(Clone, Debug)]
pub struct PresenceChange {
    /// The topic.
    pub topic: Arc<str>,
    /// The session that joined or left, as a member name: `<session>` or,
    /// authenticated, `<session>@<user>` ([`crate::presence::split_member`]).
    pub session: Arc<str>,
    /// `true` for a join, `false` for a leave.
    pub joined: bool,
    /// Subscribers of the topic on this node after the change.
    pub local_count: usize,
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
    /// The broker's settings are wrong (e.g. a malformed Redis URL).
    #[error("invalid broker configuration: {0}")]
    Config(String),
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
    /// Deliver a message to this node's subscribers of its topic. Called in
    /// sequence order per topic.
    fn deliver(&self, msg: &Published);
    /// Tell a local publisher its message got `(epoch, seq)`.
    fn ack(&self, origin: &Origin, topic: &str, epoch: &str, seq: u64);
    /// Tell a local publisher its message was not published.
    fn reject(&self, origin: &Origin, topic: &str, error: &BrokerError);
    /// Answer a [`Broker::subscribe`]: the subscriber replays `history` and
    /// then receives live messages after `history.last_seq`.
    fn subscribed(&self, request: SubscribeRequest, history: History);
    /// Presence on a topic changed somewhere in the cluster; `count` is the
    /// topic's subscriber count over every node.
    fn presence(&self, topic: &str, joined: bool, session: &str, count: u64);
    /// The topic now stands at `(epoch, last_seq)` although some messages
    /// before it could not be delivered here (history lost or reset):
    /// subscribers that are behind are told.
    fn resync(&self, topic: &str, epoch: &str, last_seq: u64);
}

/// Assigns sequence numbers, keeps history and carries messages to every node.
///
/// No method blocks: they are called from connection tasks. A broker
/// delivers every message, in per-topic sequence order, to the sink of
/// every node (this one included) that has subscribers, exactly once.
pub trait Broker: Send + Sync + 'static {
    /// Attach this node's sink; called once before anything else.
    fn start(&self, sink: Arc<dyn DeliverySink>);
    /// Publish a message; its ack (or rejection) comes through the sink.
    fn publish(&self, msg: Publish) -> Result<(), BrokerError>;
    /// A local connection subscribes: answer with [`DeliverySink::subscribed`]
    /// once live delivery of the topic to this node is in place.
    fn subscribe(&self, request: SubscribeRequest);
    /// A local subscription of `topic` ended (one per `subscribe`).
    fn unsubscribe(&self, topic: &Arc<str>) {
        let _ = topic;
    }
    /// Whether the broker announces presence to every node
    /// ([`Broker::presence`] then [`DeliverySink::presence`]); if not, the
    /// hub announces joins and leaves to local subscribers itself.
    fn shares_presence(&self) -> bool {
        false
    }
    /// A local join or leave (only called when [`Broker::shares_presence`]).
    fn presence(&self, change: PresenceChange) {
        let _ = change;
    }
    /// Short name for logs (`memory`, `redis`).
    fn name(&self) -> &'static str;
    /// Current health.
    fn health(&self) -> BrokerHealth {
        BrokerHealth { ok: true, detail: "ok".into() }
    }
}

/// This process's node id (12 hex digits), the same for every hub and
/// broker in the process: the prefix of session ids and, with Redis, the
/// node's name in presence and heartbeat keys.
pub fn node_id() -> &'static str {
    static ID: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    ID.get_or_init(new_epoch)
}

/// A fresh epoch name: 12 hex digits, unique per process start and call.
pub(crate) fn new_epoch() -> String {
    use std::hash::{BuildHasher, Hasher};
    use std::sync::atomic::{AtomicU64, Ordering};
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos()));
    h.write_u32(std::process::id());
    h.write_u64(COUNTER.fetch_add(1, Ordering::Relaxed));
    format!("{:012x}", h.finish() & 0xffff_ffff_ffff)
}
