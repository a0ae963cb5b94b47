//! [`RedisBroker`]: several `tether serve` nodes behind a load balancer
//! share topics through one Redis.
//!
//! - **Sequence, history, fan-out in one step.** A publish runs one Lua
//!   script (`scripts::PUBLISH`): the topic's `seq` hash gives the next
//!   sequence number (and the epoch, created when missing), the message goes
//!   into the topic's stream (trimmed by count and age), and it is published
//!   on the topic's channel. Redis runs scripts one at a time, so every node
//!   sees one global order per topic.
//! - **Delivery.** Each node subscribes to the channels of the topics its
//!   clients follow and checks every message's `(epoch, seq)` against the
//!   last one it delivered: a duplicate is skipped, a gap (a dropped
//!   subscription connection, a reconnect) is filled from the stream before
//!   going on, so local subscribers get each message once, in order.
//! - **Resume.** A subscription takes effect on the channel first, then the
//!   stream is read (`scripts::SYNC`); the hub holds live messages meanwhile
//!   and skips those the replay covered.
//! - **Presence.** A hash per topic maps sessions to nodes; joins and leaves
//!   are published on the topic channel with the cluster-wide count. Nodes
//!   beat a key with a TTL; any node removes the sessions of a node whose
//!   key expired (`scripts::REAP`).
//! - **Failure.** Two tasks (publishing, subscribing) reconnect with
//!   backoff on their own. While publishing is down, publishes are refused
//!   with `unavailable` (nothing is delivered that does not have its global
//!   sequence number); `/health` says degraded. On reconnect a node
//!   re-registers its presence and catches up every topic from the stream.

mod reader;
mod scripts;
mod writer;

use crate::broker::{Broker, BrokerError, BrokerHealth, DeliverySink, HistoryConfig, PresenceChange, Publish, SubscribeRequest};
use reader::ReaderOp;
use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;
use tokio::sync::mpsc;

/// Publishes waiting for Redis; more are refused with "overloaded".
const PUBLISH_QUEUE: usize = 16 * 1024;
/// Time to establish a connection to Redis.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// Time Redis has to answer a command.
const RESPONSE_TIMEOUT: Duration = Duration::from_secs(5);
/// A node refreshes its heartbeat key this often...
const NODE_BEAT: Duration = Duration::from_secs(5);
/// ...and is considered gone (its sessions removed) this long after the last.
const NODE_TTL: Duration = Duration::from_secs(15);
/// A topic's sequence number and epoch outlive its last message by this
/// much (or by the history age, if longer), so an idle topic does not get a
/// new epoch; after that, Redis forgets it.
const SEQ_TTL: Duration = Duration::from_secs(24 * 3600);

/// One connection's state, for `/health`.
#[derive(Default)]
struct Link {
    up: AtomicBool,
    detail: Mutex<String>,
}

impl Link {
    fn set(&self, up: bool, detail: String) {
        self.up.store(up, Ordering::Release);
        *self.detail.lock().unwrap_or_else(|p| p.into_inner()) = detail;
    }
    fn is_up(&self) -> bool {
        self.up.load(Ordering::Acquire)
    }
    fn detail(&self) -> String {
        self.detail.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }
}

/// What the broker's tasks share.
struct Shared {
    client: redis::Client,
    /// `host:port` (never the password), for logs and `/health`.
    target: String,
    /// This node's id in presence and heartbeat keys.
    node: String,
    history: HistoryConfig,
    writer: Link,
    reader: Link,
    sink: OnceLock<Arc<dyn DeliverySink>>,
    /// Sessions per topic on this node, re-registered after a reconnect.
    local: Mutex<HashMap<Arc<str>, HashSet<Arc<str>>>>,
    /// The subscribing side lost Redis: the publishing side checks its own
    /// connection now rather than at its next heartbeat.
    check: tokio::sync::Notify,
}

impl Shared {
    fn sink(&self) -> &Arc<dyn DeliverySink> {
        self.sink.get().expect("started before use")
    }

    fn seq_ttl_ms(&self) -> u64 {
        SEQ_TTL.max(self.history.max_age).as_millis() as u64
    }

    fn age_ms(&self) -> u64 {
        self.history.max_age.as_millis().max(1) as u64
    }

    async fn connect(&self) -> redis::RedisResult<redis::aio::MultiplexedConnection> {
        let config = redis::AsyncConnectionConfig::new().set_connection_timeout(CONNECT_TIMEOUT).set_response_timeout(RESPONSE_TIMEOUT);
        self.client.get_multiplexed_async_connection_with_config(&config).await
    }
}

type Receivers = (mpsc::Receiver<Publish>, mpsc::UnboundedReceiver<PresenceChange>, mpsc::UnboundedReceiver<ReaderOp>);

/// A broker on Redis (5.0+; 7 recommended): sequence numbers, history
/// (streams) and fan-out (Pub/Sub) shared by every node using the same
/// Redis. See the module documentation for the design.
pub struct RedisBroker {
    shared: Arc<Shared>,
    publish_tx: mpsc::Sender<Publish>,
    presence_tx: mpsc::UnboundedSender<PresenceChange>,
    reader_tx: mpsc::UnboundedSender<ReaderOp>,
    receivers: Mutex<Option<Receivers>>,
}

impl RedisBroker {
    /// A broker for `url` (`redis://[:password@]host:port[/db]`) keeping
    /// `history` per topic. Connects when the hub starts it, and keeps
    /// reconnecting: a node starts even while Redis is down.
    pub fn new(url: &str, history: HistoryConfig) -> Result<RedisBroker, BrokerError> {
        let client = redis::Client::open(url).map_err(|e| BrokerError::Config(format!("{url:?} is not a Redis URL: {e}")))?;
        let target = client.get_connection_info().addr.to_string();
        let (publish_tx, publish_rx) = mpsc::channel(PUBLISH_QUEUE);
        let (presence_tx, presence_rx) = mpsc::unbounded_channel();
        let (reader_tx, reader_rx) = mpsc::unbounded_channel();
        let shared = Arc::new(Shared {
            client,
            target,
            node: crate::broker::new_epoch(),
            history,
            writer: Link::default(),
            reader: Link::default(),
            sink: OnceLock::new(),
            local: Mutex::new(HashMap::new()),
            check: tokio::sync::Notify::new(),
        });
        shared.writer.set(false, "connecting".into());
        shared.reader.set(false, "connecting".into());
        Ok(RedisBroker { shared, publish_tx, presence_tx, reader_tx, receivers: Mutex::new(Some((publish_rx, presence_rx, reader_rx))) })
    }

    /// This node's id in Redis (presence and heartbeat keys).
    pub fn node_id(&self) -> &str {
        &self.shared.node
    }
}

impl Broker for RedisBroker {
    fn start(&self, sink: Arc<dyn DeliverySink>) {
        let _ = self.shared.sink.set(sink);
        let Some((publish_rx, presence_rx, reader_rx)) = self.receivers.lock().unwrap_or_else(|p| p.into_inner()).take() else { return };
        tracing::info!(redis = %self.shared.target, node = %self.shared.node, "redis broker starting");
        tokio::spawn(writer::run(self.shared.clone(), publish_rx, presence_rx));
        tokio::spawn(reader::run(self.shared.clone(), reader_rx));
    }

    fn publish(&self, msg: Publish) -> Result<(), BrokerError> {
        if !self.shared.writer.is_up() {
            return Err(BrokerError::Unavailable(format!("redis at {} is unreachable ({})", self.shared.target, self.shared.writer.detail())));
        }
        self.publish_tx.try_send(msg).map_err(|e| match e {
            mpsc::error::TrySendError::Full(_) => BrokerError::Overloaded,
            mpsc::error::TrySendError::Closed(_) => BrokerError::Unavailable("broker stopped".into()),
        })
    }

    fn subscribe(&self, request: SubscribeRequest) {
        let _ = self.reader_tx.send(ReaderOp::Subscribe(request));
    }

    fn unsubscribe(&self, topic: &Arc<str>) {
        let _ = self.reader_tx.send(ReaderOp::Unsubscribe(topic.clone()));
    }

    fn shares_presence(&self) -> bool {
        true
    }

    fn presence(&self, change: PresenceChange) {
        {
            let mut local = self.shared.local.lock().unwrap_or_else(|p| p.into_inner());
            if change.joined {
                local.entry(change.topic.clone()).or_default().insert(change.session.clone());
            } else if let Some(sessions) = local.get_mut(&change.topic) {
                sessions.remove(&change.session);
                if sessions.is_empty() {
                    local.remove(&change.topic);
                }
            }
        }
        let _ = self.presence_tx.send(change);
    }

    fn name(&self) -> &'static str {
        "redis"
    }

    fn health(&self) -> BrokerHealth {
        let (w, r) = (self.shared.writer.is_up(), self.shared.reader.is_up());
        let detail = match (w, r) {
            (true, true) => format!("connected to redis at {}", self.shared.target),
            (false, _) => format!("redis at {}: publishing {}", self.shared.target, self.shared.writer.detail()),
            (true, false) => format!("redis at {}: subscriptions {}", self.shared.target, self.shared.reader.detail()),
        };
        BrokerHealth { ok: w && r, detail }
    }
}

/// Exponential backoff between reconnection attempts, with jitter.
struct Backoff {
    next: Duration,
}

impl Backoff {
    const MIN: Duration = Duration::from_millis(100);
    const MAX: Duration = Duration::from_secs(2);

    fn new() -> Self {
        Backoff { next: Self::MIN }
    }

    fn reset(&mut self) {
        self.next = Self::MIN;
    }

    /// The next wait: doubles up to 2 s, plus up to 25 % jitter so nodes do
    /// not reconnect in lockstep.
    fn next(&mut self) -> Duration {
        let base = self.next;
        self.next = (self.next * 2).min(Self::MAX);
        let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.subsec_nanos());
        base + base.mul_f64(f64::from(nanos % 1000) / 4000.0)
    }
}

/// Log a lost or failed connection: a warning when it goes down, then quietly.
fn report_down(link: &Link, what: &str, target: &str, error: &str, attempts: u32) {
    let was_up = link.is_up();
    link.set(false, format!("reconnecting: {error}"));
    if was_up || attempts == 1 {
        tracing::warn!(redis = %target, %error, "redis broker: {what} connection lost; reconnecting with backoff");
    } else if attempts % 20 == 0 {
        tracing::warn!(redis = %target, %error, attempts, "redis broker: {what} still cannot reach redis");
    } else {
        tracing::debug!(redis = %target, %error, attempts, "redis broker: {what} reconnect failed");
    }
}
