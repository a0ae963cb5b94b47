//! What the server itself publishes: [`Hub::publish_json`] (a message from
//! the server, e.g. a demo ticker or an application's own feed), and the
//! system topics under `$sys:` — reserved, so no client can publish to
//! them — of which `$sys:stats` carries the server's own figures once per
//! interval ([`Hub::start_stats`]), for the dashboard page and for
//! operators' own dashboards.

use crate::broker::{node_id, Body, Origin, Publish};
use crate::hub::Hub;
use crate::metrics::Metrics;
use serde_json::value::RawValue;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Weak};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Topics under this prefix are the server's: clients may subscribe to them
/// (when admitted, see [`may_subscribe_system`]) but never publish.
pub const SYSTEM_PREFIX: &str = "$sys:";

/// The topic of the server's figures (one message per node per interval,
/// keyed by the node id).
pub const STATS_TOPIC: &str = "$sys:stats";

/// Rooms (URL paths) whose connections may subscribe to `$sys:` topics.
/// `tether serve` admits a connection to such a room only with the metrics
/// token (when one is set), which is what makes the dashboard an admin page.
pub const SYSTEM_ROOM_PREFIX: &str = "/$sys";

/// Whether `topic` is reserved for the server.
pub fn is_system_topic(topic: &str) -> bool {
    topic.starts_with(SYSTEM_PREFIX)
}

/// Whether a connection in `room` may subscribe to the system topics.
pub fn may_subscribe_system(room: &str) -> bool {
    room.starts_with(SYSTEM_ROOM_PREFIX)
}

pub(crate) fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

impl Hub {
    /// Publish `content` (JSON text) to `topic` as the server (sender
    /// `<node>-server`), with an optional conflation `key`. Goes through the
    /// broker like any publish (sequence number, history, every node), and
    /// may target `$sys:` topics. Fails only if `content` is not JSON or the
    /// broker refuses.
    pub fn publish_json(&self, topic: &str, key: Option<&str>, content: &str) -> Result<(), crate::BrokerError> {
        let raw = RawValue::from_string(content.to_string()).map_err(|e| crate::BrokerError::Config(format!("content is not JSON: {e}")))?;
        Metrics::add(&self.metrics.broadcasts, 1);
        self.broker.publish(Publish {
            topic: Arc::from(topic),
            sender: Arc::from(format!("{}-server", node_id())),
            timestamp_ms: now_ms(),
            body: Body::Json(Arc::from(raw)),
            key: key.map(Arc::from),
            origin: Origin { conn: 0, id: None },
        })
    }

    /// A client's publish to a topic the server handles itself: refused for
    /// `$sys:` topics, batched for `$room:` topics. `true` if handled (and
    /// answered) here.
    pub(crate) fn intercept_publish(&self, conn: &crate::queue::ConnShared, topic: &Arc<str>, body: &Body, id: Option<&serde_json::Value>) -> bool {
        let reply_error = |code: &str, message: &str| {
            Metrics::add(&self.metrics.client_errors, 1);
            if conn.json {
                self.reply(conn, tether_proto::EncodedFrame::text(&crate::envelope::error(code, message, id)));
            }
        };
        if is_system_topic(topic) {
            reply_error("reserved_topic", &format!("topics under {SYSTEM_PREFIX:?} are published by the server only"));
            return true;
        }
        if !crate::room::is_room(topic) {
            return false;
        }
        Metrics::add(&self.metrics.broadcasts, 1);
        match self.rooms.update(topic, &conn.session(), self.is_subscribed(conn.id, topic), body) {
            Ok(()) => {
                if let Some(id) = id {
                    self.reply(conn, tether_proto::EncodedFrame::text(&crate::envelope::ack(id, Some(topic), None)));
                }
            }
            Err(why) => reply_error("room_refused", &why.message()),
        }
        true
    }

    /// Whether a connection in `room` may subscribe to `topic`: `$sys:`
    /// topics only from a `/$sys...` room (which `tether serve` admits with
    /// the metrics token). The refusal says why.
    pub(crate) fn may_subscribe(&self, room: &str, topic: &str) -> Result<(), String> {
        if is_system_topic(topic) && !may_subscribe_system(room) {
            return Err(format!("topics under {SYSTEM_PREFIX:?} are for connections to {SYSTEM_ROOM_PREFIX}... (e.g. ws://HOST{SYSTEM_ROOM_PREFIX}/dashboard, admitted with the metrics token)"));
        }
        Ok(())
    }

    /// Publish this node's figures on [`STATS_TOPIC`] every `interval`
    /// (keyed by node id, so a slow dashboard conflates and, clustered,
    /// keeps one line per node), while the hub lives. Rates are per second
    /// over the last interval.
    pub fn start_stats(self: &Arc<Self>, interval: Duration) {
        let hub = Arc::downgrade(self);
        tokio::spawn(stats_loop(hub, interval));
    }
}

async fn stats_loop(hub: Weak<Hub>, interval: Duration) {
    let mut ticker = tokio::time::interval(interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last: Option<(tokio::time::Instant, [u64; 4])> = None;
    loop {
        ticker.tick().await;
        let Some(hub) = hub.upgrade() else { return };
        let m = hub.metrics();
        let get = |c: &std::sync::atomic::AtomicU64| c.load(Ordering::Relaxed);
        let now = tokio::time::Instant::now();
        let counters = [get(&m.messages_in), get(&m.messages_out), get(&m.bytes_in), get(&m.bytes_out)];
        let rates = match last {
            Some((at, before)) => {
                let secs = now.duration_since(at).as_secs_f64().max(1e-3);
                counters.iter().zip(before).map(|(n, b)| (n.saturating_sub(b) as f64 / secs).round()).collect::<Vec<_>>()
            }
            None => vec![0.0; 4],
        };
        last = Some((now, counters));
        let stats = serde_json::json!({
            "node": node_id(),
            "ts": now_ms(),
            "connections": m.connections.load(Ordering::Relaxed),
            "topics": hub.topic_count(),
            "messages_in_per_s": rates[0],
            "messages_out_per_s": rates[1],
            "bytes_in_per_s": rates[2],
            "bytes_out_per_s": rates[3],
            "messages_in_total": counters[0],
            "messages_out_total": counters[1],
            "dropped_total": get(&m.dropped_messages),
            "conflated_total": get(&m.conflated_messages),
            "delta_patches_total": get(&m.delta_patches),
            "slow_consumer_closes_total": get(&m.slow_consumer_closes),
            "broker": hub.broker().name(),
        });
        if let Err(e) = hub.publish_json(STATS_TOPIC, Some(node_id()), &stats.to_string()) {
            tracing::debug!(error = %e, "could not publish $sys:stats");
        }
    }
}
