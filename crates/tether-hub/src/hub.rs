//! The hub: registry of connections and topics, delivery, heartbeat, shutdown.

use crate::broker::{AckTarget, Body, Broker, DeliverySink, Published};
use crate::config::{HubConfig, SlowConsumerPolicy};
use crate::envelope;
use crate::metrics::Metrics;
use crate::queue::{flag, ConnShared, Pushed};
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;
use tether_proto::EncodedFrame;

#[derive(Default)]
struct State {
    conns: HashMap<u64, Arc<ConnShared>>,
    topics: HashMap<Arc<str>, HashMap<u64, Arc<ConnShared>>>,
}

/// The real-time hub. Create with [`Hub::new`], run each accepted socket with
/// [`Hub::run_connection`].
pub struct Hub {
    pub(crate) config: HubConfig,
    pub(crate) metrics: Arc<Metrics>,
    pub(crate) broker: Arc<dyn Broker>,
    state: Mutex<State>,
    next_id: AtomicU64,
    pub(crate) node: String,
    ping: EncodedFrame,
}

struct Sink(Weak<Hub>);

impl DeliverySink for Sink {
    fn deliver(&self, msg: &Published) {
        if let Some(hub) = self.0.upgrade() {
            hub.deliver(msg);
        }
    }
    fn ack(&self, target: &AckTarget, topic: &str, seq: u64) {
        if let Some(hub) = self.0.upgrade() {
            hub.send_to(target.conn, EncodedFrame::text(&envelope::ack(&target.id, Some(topic), Some(seq))));
        }
    }
}

impl Hub {
    /// A hub using `broker` for publishing. Starts the heartbeat task (needs a
    /// tokio runtime).
    pub fn new(config: HubConfig, broker: Arc<dyn Broker>) -> Arc<Hub> {
        let node = node_id();
        let hub = Arc::new(Hub {
            config,
            metrics: Arc::new(Metrics::default()),
            broker,
            state: Mutex::new(State::default()),
            next_id: AtomicU64::new(1),
            node,
            ping: EncodedFrame::ping(b""),
        });
        hub.broker.start(Arc::new(Sink(Arc::downgrade(&hub))));
        let weak = Arc::downgrade(&hub);
        let interval = hub.config.heartbeat_interval;
        tokio::spawn(async move { heartbeat(weak, interval).await });
        hub
    }

    /// The counters behind `/metrics`.
    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }

    /// The broker.
    pub fn broker(&self) -> &Arc<dyn Broker> {
        &self.broker
    }

    /// The settings.
    pub fn config(&self) -> &HubConfig {
        &self.config
    }

    /// Open connections.
    pub fn connection_count(&self) -> usize {
        self.lock().conns.len()
    }

    /// Topics with at least one local subscriber.
    pub fn topic_count(&self) -> usize {
        self.lock().topics.len()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Ask every connection to close with 1001 (server going away).
    pub fn shutdown(&self) {
        for conn in self.lock().conns.values() {
            conn.set(flag::SHUTDOWN);
        }
    }

    pub(crate) fn register(&self, json: bool) -> Arc<ConnShared> {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let conn = Arc::new(ConnShared::new(id, format!("{}-{id}", self.node), json));
        self.lock().conns.insert(id, conn.clone());
        self.metrics.connections.fetch_add(1, Ordering::Relaxed);
        Metrics::add(&self.metrics.connections_total, 1);
        conn
    }

    pub(crate) fn unregister(&self, conn: &Arc<ConnShared>, topics: &[Arc<str>]) {
        {
            let mut state = self.lock();
            state.conns.remove(&conn.id);
        }
        for topic in topics {
            self.unsubscribe(conn, topic);
        }
        self.metrics.connections.fetch_sub(1, Ordering::Relaxed);
    }

    /// Add `conn` to `topic` and tell the topic's JSON subscribers.
    pub(crate) fn subscribe(&self, conn: &Arc<ConnShared>, topic: &Arc<str>) -> usize {
        let mut state = self.lock();
        let subs = state.topics.entry(topic.clone()).or_default();
        subs.insert(conn.id, conn.clone());
        let count = subs.len();
        let frame = EncodedFrame::text(&envelope::presence(topic, "join", &conn.session, count));
        for sub in subs.values().filter(|s| s.json) {
            sub.push_unbounded(frame.clone());
        }
        count
    }

    pub(crate) fn unsubscribe(&self, conn: &Arc<ConnShared>, topic: &str) -> bool {
        let mut state = self.lock();
        let Some(subs) = state.topics.get_mut(topic) else { return false };
        if subs.remove(&conn.id).is_none() {
            return false;
        }
        let count = subs.len();
        if count == 0 {
            state.topics.remove(topic);
        } else {
            let frame = EncodedFrame::text(&envelope::presence(topic, "leave", &conn.session, count));
            for sub in subs.values().filter(|s| s.json) {
                sub.push_unbounded(frame.clone());
            }
        }
        true
    }

    pub(crate) fn send_to(&self, conn: u64, frame: EncodedFrame) {
        let target = self.lock().conns.get(&conn).cloned();
        if let Some(c) = target {
            c.push_unbounded(frame);
        }
    }

    /// Deliver a published message to this node's subscribers: each format
    /// (plain text, JSON envelope) is encoded at most once and shared.
    pub(crate) fn deliver(&self, msg: &Published) {
        let mut plain: Option<Option<EncodedFrame>> = None;
        let mut json: Option<Option<EncodedFrame>> = None;
        let (max_messages, max_bytes, policy) = (self.config.queue_max_messages, self.config.queue_max_bytes, self.config.slow_consumer);
        let (mut delivered, mut bytes, mut dropped) = (0u64, 0u64, 0u64);
        let state = self.lock();
        let Some(subs) = state.topics.get(&msg.topic) else { return };
        for sub in subs.values() {
            let frame = if sub.json {
                json.get_or_insert_with(|| json_frame(msg))
            } else {
                plain.get_or_insert_with(|| plain_frame(msg))
            };
            let Some(frame) = frame else { continue };
            bytes += frame.len() as u64;
            match sub.push(frame.clone(), max_messages, max_bytes, policy) {
                Pushed::Queued => delivered += 1,
                Pushed::DroppedOldest(n) => {
                    delivered += 1;
                    dropped += n;
                }
                Pushed::Closing => {
                    if let SlowConsumerPolicy::Close(_) = policy {
                        // Counted once per connection by the connection task.
                    }
                }
            }
        }
        drop(state);
        Metrics::add(&self.metrics.messages_out, delivered);
        Metrics::add(&self.metrics.bytes_out, bytes);
        Metrics::add(&self.metrics.dropped_messages, dropped);
    }

    fn heartbeat_round(&self) {
        let conns: Vec<Arc<ConnShared>> = self.lock().conns.values().cloned().collect();
        for conn in conns {
            if conn.has(flag::AWAITING_PONG) {
                // RFC 6455 §5.5.2: a live peer answers a ping; this one did
                // not answer the previous one.
                conn.set(flag::TERMINATE);
            } else {
                conn.set(flag::AWAITING_PONG);
                conn.push_unbounded(self.ping.clone());
            }
        }
    }
}

fn plain_frame(msg: &Published) -> Option<EncodedFrame> {
    Some(match &msg.body {
        Body::Text(t) => EncodedFrame::text(&format!("[{}] {}", msg.sender, t)),
        Body::Json(raw) => match serde_json::from_str::<String>(raw.get()) {
            Ok(s) => EncodedFrame::text(&format!("[{}] {}", msg.sender, s)),
            Err(_) => EncodedFrame::text(&format!("[{}] {}", msg.sender, raw.get())),
        },
        Body::Binary(b) => EncodedFrame::binary(b),
    })
}

fn json_frame(msg: &Published) -> Option<EncodedFrame> {
    let content = match &msg.body {
        Body::Text(t) => serde_json::to_string(&**t).ok()?,
        Body::Json(raw) => raw.get().to_string(),
        Body::Binary(_) => return None,
    };
    Some(EncodedFrame::text(&envelope::message(&msg.topic, msg.seq, &msg.sender, msg.timestamp_ms, &content)))
}

async fn heartbeat(hub: Weak<Hub>, interval: Duration) {
    let mut ticker = tokio::time::interval_at(tokio::time::Instant::now() + interval, interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticker.tick().await;
        let Some(hub) = hub.upgrade() else { return };
        hub.heartbeat_round();
    }
}

/// A short id for this process, so session ids are unique across nodes.
fn node_id() -> String {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos()));
    h.write_u32(std::process::id());
    format!("{:06x}", h.finish() & 0xff_ffff)
}
