//! [`RedisBroker`]: several `tether serve` nodes behind a load balancer
//! share topics through one Redis.
//!
//! - **Sequence, history, fan-out in one step.** Publishes run in one Lua
//!   script per batch (`scripts::PUBLISH_BATCH`, grouped by topic; one call
//!   per topic on Redis Cluster): the topic's `seq` hash gives the next
//!   sequence number (and the epoch, created when missing), the message goes
//!   into the topic's stream (trimmed by count, age and bytes), and it is
//!   published on the topic's channel. Redis runs scripts one at a time, so
//!   every node sees one global order per topic.
//! - **Delivery.** Each node subscribes to the channels of the topics its
//!   clients follow and checks every message's `(epoch, seq)` against the
//!   last one it delivered: a duplicate is skipped, a gap (a dropped
//!   subscription connection, a reconnect) is filled from the stream before
//!   going on, so local subscribers get each message once, in order.
//! - **Resume.** A subscription takes effect on the channel first, then the
//!   stream is read (`scripts::SYNC`, then pages of `XREVRANGE`); the hub
//!   holds live messages meanwhile and skips those the replay covered. A
//!   resume only reads: whatever `since` and epoch a client sends, the
//!   topic stays as it is for everyone else, and the hub tells that client.
//! - **Presence.** A hash per topic maps sessions to nodes; joins and leaves
//!   are published on the topic channel with the cluster-wide count. Nodes
//!   beat a key with a TTL; any node removes the sessions of a node whose
//!   key expired (`scripts::REAP`).
//! - **Failure.** Two tasks (publishing, subscribing) reconnect with
//!   backoff on their own. While publishing is down, publishes are refused
//!   with `unavailable` (nothing is delivered that does not have its global
//!   sequence number); `/health` says degraded. On reconnect a node
//!   re-registers its presence and catches up every topic from the stream.
//! - **Bounds.** Nothing between the hub and the tasks grows without limit:
//!   publishes wait in a queue bounded by count and bytes (more are
//!   `overloaded`); presence changes in a bounded queue, and when it is full
//!   the topic is marked for a whole resync instead; subscription changes
//!   are coalesced per topic (a count of subscribes and unsubscribes, and at
//!   most one waiting request per connection) with a wakeup for the reader.
//!   Redis's address appears in logs only, never in `/health` or errors.
//! - **Redis Cluster** (`redis-cluster://`, [`backend`]): the same scripts
//!   and reader, keys under one hash tag per topic (`slots::topic_key`),
//!   `SPUBLISH`/`SSUBSCRIBE` on the master serving the topic's slot,
//!   publishes pipelined per master ([`cluster`]), failovers and slot moves
//!   followed by reading the slot map again. Sharded Pub/Sub pushes go
//!   through a bounded queue: when it is full they are dropped and every
//!   topic is caught up from its stream (a gap filled, never a silent loss).

mod backend;
mod cluster;
mod pending;
mod reader;
mod scripts;
mod writer;

use crate::broker::{Broker, BrokerError, BrokerHealth, DeliverySink, HistoryConfig, PresenceChange, Publish, SubscribeRequest};
use pending::PendingOps;
use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;
use tokio::sync::mpsc;

/// Publishes waiting for Redis; more are refused with "overloaded".
const PUBLISH_QUEUE: usize = 16 * 1024;
/// Bytes of publishes waiting for Redis or in flight (payload, topic and
/// sender); more are refused with "overloaded". With 1 MiB messages the
/// count alone would let 16 GiB wait.
const PUBLISH_QUEUE_BYTES: usize = 64 << 20;
/// Presence changes waiting for Redis; past this, the topic's presence is
/// resynchronised as a whole (`scripts::RESYNC`) instead.
const PRESENCE_QUEUE: usize = 4096;
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

/// Publishes held per (connection, topic) being subscribed (see `Shared::awaiting`).
type Awaiting = HashMap<(u64, Arc<str>), Vec<Publish>>;

/// What the broker's tasks share.
struct Shared {
    backend: backend::Backend,
    /// `host:port` (never the password), for logs only.
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
    /// Bytes of publishes queued or in flight (see [`PUBLISH_QUEUE_BYTES`]).
    queued_bytes: AtomicUsize,
    /// Topics whose presence changes did not fit in the queue: the writer
    /// resynchronises them as a whole.
    presence_overflow: Mutex<HashSet<Arc<str>>>,
    presence_overflowed: tokio::sync::Notify,
    /// Subscription changes waiting for the reader, and its wakeup.
    ops: Mutex<PendingOps>,
    ops_ready: tokio::sync::Notify,
    /// The broker was dropped: the reader ends.
    closed: AtomicBool,
    /// Publishes of a connection to a topic it is still subscribing to,
    /// held until that subscription takes effect, so that one connection's
    /// requests take effect in order (#12: subscribe then publish receives
    /// the message). An entry lives from [`Broker::subscribe`] until the
    /// reader answers (or drops) that request; held bytes count in
    /// `queued_bytes`.
    awaiting: Mutex<Awaiting>,
    /// Where held publishes go once released (weak: the writer ends when
    /// the broker is dropped).
    publish_tx: mpsc::WeakSender<Publish>,
}

impl Shared {
    fn sink(&self) -> &Arc<dyn DeliverySink> {
        self.sink.get().expect("started before use")
    }

    fn seq_ttl_ms(&self) -> u64 {
        SEQ_TTL.max(self.history.longest_age()).as_millis() as u64
    }

    /// `(max_messages, max_age in ms)` of `topic` (its namespace's, or the defaults).
    fn retention(&self, topic: &str) -> (usize, u64) {
        let (messages, age) = self.history.retention(topic);
        (messages, age.as_millis().max(1) as u64)
    }

    /// Return the bytes of a publish that left the queue.
    fn release(&self, bytes: usize) {
        self.queued_bytes.fetch_sub(bytes, Ordering::AcqRel);
    }

    /// `conn`'s subscription of `topic` took effect (or ended): queue the
    /// publishes it held, ahead of any later one (both happen under the
    /// `awaiting` lock).
    fn release_awaiting(&self, conn: u64, topic: &Arc<str>) {
        let mut refused = Vec::new();
        {
            let mut awaiting = self.awaiting.lock().unwrap_or_else(|p| p.into_inner());
            let Some(held) = awaiting.remove(&(conn, topic.clone())) else { return };
            let tx = self.publish_tx.upgrade();
            for p in held {
                let result = match &tx {
                    Some(tx) if self.writer.is_up() => tx.try_send(p).map_err(|e| match e {
                        mpsc::error::TrySendError::Full(p) => (p, BrokerError::Overloaded),
                        mpsc::error::TrySendError::Closed(p) => (p, BrokerError::Unavailable("broker stopped".into())),
                    }),
                    _ => Err((p, unreachable())),
                };
                if let Err(rejected) = result {
                    refused.push(rejected);
                }
            }
        }
        for (p, error) in refused {
            self.release(publish_bytes(&p));
            self.sink().reject(&p.origin, &p.topic, &error);
        }
    }

    async fn connect(&self) -> redis::RedisResult<backend::Con> {
        self.backend.connect(CONNECT_TIMEOUT, RESPONSE_TIMEOUT).await
    }

    /// A key (or channel) of `topic` on this backend.
    fn key(&self, topic: &str, suffix: &str) -> String {
        self.backend.key(topic, suffix)
    }
}

type Receivers = (mpsc::Receiver<Publish>, mpsc::Receiver<PresenceChange>);

/// What a publish counts against [`PUBLISH_QUEUE_BYTES`]: its strings and
/// a share for the structure itself (so that many tiny messages count).
fn publish_bytes(p: &Publish) -> usize {
    p.body.len() + p.topic.len() + p.sender.len() + 128
}

/// A broker on Redis (5.0+; 7 recommended): sequence numbers, history
/// (streams) and fan-out (Pub/Sub) shared by every node using the same
/// Redis. See the module documentation for the design.
pub struct RedisBroker {
    shared: Arc<Shared>,
    publish_tx: mpsc::Sender<Publish>,
    presence_tx: mpsc::Sender<PresenceChange>,
    receivers: Mutex<Option<Receivers>>,
}

impl RedisBroker {
    /// A broker for `url` keeping `history` per topic: one Redis
    /// (`redis://[:password@]host:port[/db]`) or a Redis Cluster
    /// (`redis-cluster://[user:password@]HOST:PORT[,HOST:PORT...][?replicas=N]`,
    /// any of its nodes as seeds; `replicas`: how many replicas a publish
    /// waits for before its ack, default 1). Connects when the hub starts
    /// it, and keeps reconnecting: a node starts even while Redis is down.
    pub fn new(url: &str, history: HistoryConfig) -> Result<RedisBroker, BrokerError> {
        let (backend, target) = backend::Backend::parse(url)?;
        let (publish_tx, publish_rx) = mpsc::channel(PUBLISH_QUEUE);
        let (presence_tx, presence_rx) = mpsc::channel(PRESENCE_QUEUE);
        let shared = Arc::new(Shared {
            backend,
            target,
            node: crate::broker::node_id().to_string(),
            history,
            writer: Link::default(),
            reader: Link::default(),
            sink: OnceLock::new(),
            local: Mutex::new(HashMap::new()),
            check: tokio::sync::Notify::new(),
            queued_bytes: AtomicUsize::new(0),
            presence_overflow: Mutex::new(HashSet::new()),
            presence_overflowed: tokio::sync::Notify::new(),
            ops: Mutex::new(PendingOps::default()),
            ops_ready: tokio::sync::Notify::new(),
            closed: AtomicBool::new(false),
            awaiting: Mutex::new(HashMap::new()),
            publish_tx: publish_tx.downgrade(),
        });
        shared.writer.set(false, "connecting".into());
        shared.reader.set(false, "connecting".into());
        Ok(RedisBroker { shared, publish_tx, presence_tx, receivers: Mutex::new(Some((publish_rx, presence_rx))) })
    }

    /// This node's id in Redis (presence and heartbeat keys).
    pub fn node_id(&self) -> &str {
        &self.shared.node
    }
}

impl Broker for RedisBroker {
    fn start(&self, sink: Arc<dyn DeliverySink>) {
        let _ = self.shared.sink.set(sink);
        let Some((publish_rx, presence_rx)) = self.receivers.lock().unwrap_or_else(|p| p.into_inner()).take() else { return };
        tracing::info!(redis = %self.shared.target, node = %self.shared.node, "redis broker starting");
        if self.shared.backend.is_cluster() {
            tokio::spawn(cluster::run(self.shared.clone(), publish_rx, presence_rx));
        } else {
            tokio::spawn(writer::run(self.shared.clone(), publish_rx, presence_rx));
        }
        tokio::spawn(reader::run(self.shared.clone()));
    }

    fn publish(&self, msg: Publish) -> Result<(), BrokerError> {
        if !self.shared.writer.is_up() {
            return Err(unreachable());
        }
        // Admit a message while the queue's bytes stay under the cap (or the
        // queue is empty, so one message larger than the cap still goes).
        let bytes = publish_bytes(&msg);
        let before = self.shared.queued_bytes.fetch_add(bytes, Ordering::AcqRel);
        if before > 0 && before + bytes > PUBLISH_QUEUE_BYTES {
            self.shared.release(bytes);
            return Err(BrokerError::Overloaded);
        }
        // Under the `awaiting` lock: a publish to a topic this connection is
        // still subscribing to waits for that subscription (see `awaiting`).
        let mut awaiting = self.shared.awaiting.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(held) = awaiting.get_mut(&(msg.origin.conn, msg.topic.clone())) {
            held.push(msg);
            return Ok(());
        }
        let sent = self.publish_tx.try_send(msg);
        drop(awaiting);
        sent.map_err(|e| {
            self.shared.release(bytes);
            match e {
                mpsc::error::TrySendError::Full(_) => BrokerError::Overloaded,
                mpsc::error::TrySendError::Closed(_) => BrokerError::Unavailable("broker stopped".into()),
            }
        })
    }

    fn subscribe(&self, request: SubscribeRequest) {
        // Before the reader can see the request: publishes that follow it
        // on this connection wait for its answer.
        self.shared.awaiting.lock().unwrap_or_else(|p| p.into_inner()).entry((request.conn, request.topic.clone())).or_default();
        self.shared.ops.lock().unwrap_or_else(|p| p.into_inner()).subscribe(request);
        self.shared.ops_ready.notify_one();
    }

    fn unsubscribe(&self, topic: &Arc<str>) {
        self.shared.ops.lock().unwrap_or_else(|p| p.into_inner()).unsubscribe(topic);
        self.shared.ops_ready.notify_one();
    }

    fn shares_presence(&self) -> bool {
        true
    }

    fn presence(&self, change: PresenceChange) {
        // Queued under the lock of `local`: the queue's order is the order
        // of the changes, even when two connections race.
        let mut local = self.shared.local.lock().unwrap_or_else(|p| p.into_inner());
        if change.joined {
            local.entry(change.topic.clone()).or_default().insert(change.session.clone());
        } else if let Some(sessions) = local.get_mut(&change.topic) {
            sessions.remove(&change.session);
            if sessions.is_empty() {
                local.remove(&change.topic);
            }
        }
        if let Err(mpsc::error::TrySendError::Full(change)) = self.presence_tx.try_send(change) {
            // Too many changes waiting: the writer makes the topic's presence
            // match `local` once the queue before it has been sent.
            self.shared.presence_overflow.lock().unwrap_or_else(|p| p.into_inner()).insert(change.topic);
            self.shared.presence_overflowed.notify_one();
        }
    }

    fn name(&self) -> &'static str {
        if self.shared.backend.is_cluster() {
            "redis-cluster"
        } else {
            "redis"
        }
    }

    fn health(&self) -> BrokerHealth {
        let (w, r) = (self.shared.writer.is_up(), self.shared.reader.is_up());
        // Never the address: /health is public. Logs have it.
        let detail = match (w, r) {
            (true, true) => "connected".to_string(),
            (false, _) => format!("publishing: {}", self.shared.writer.detail()),
            (true, false) => format!("subscriptions: {}", self.shared.reader.detail()),
        };
        BrokerHealth { ok: w && r, detail }
    }
}

impl Drop for RedisBroker {
    fn drop(&mut self) {
        // The writer ends when the publish queue closes; the reader is told.
        self.shared.closed.store(true, Ordering::Release);
        self.shared.ops_ready.notify_one();
    }
}

/// What a client is told when Redis cannot be reached (no address: it goes
/// to clients; the logs say which Redis and why).
fn unreachable() -> BrokerError {
    BrokerError::Unavailable("redis unreachable".into())
}

/// A connection failure in words that are safe to show anyone: the kind of
/// failure, never an address or a server's message.
fn describe(error: &redis::RedisError) -> &'static str {
    if error.is_timeout() {
        "timed out"
    } else if error.is_connection_refusal() {
        "connection refused"
    } else if error.is_connection_dropped() || error.is_io_error() {
        "connection lost"
    } else {
        "redis error"
    }
}

/// Delays between reconnection attempts: the shared rule
/// ([`tether::v1::Backoff`]) from 100 ms doubling up to 2 s, ±25 % jitter so
/// nodes do not reconnect in lockstep.
struct Backoff {
    rule: tether::v1::Backoff,
    attempt: u32,
}

impl Backoff {
    fn new() -> Self {
        let rule = tether::v1::Backoff { min_delay: Duration::from_millis(100), max_delay: Duration::from_secs(2), factor: 2.0, jitter: 0.25 };
        Backoff { rule, attempt: 0 }
    }

    fn reset(&mut self) {
        self.attempt = 0;
    }

    /// The next wait.
    fn next(&mut self) -> Duration {
        self.attempt = self.attempt.saturating_add(1);
        self.rule.delay(self.attempt)
    }
}

/// Log a lost or failed connection: a warning when it goes down, then quietly.
fn report_down(link: &Link, what: &str, target: &str, error: &redis::RedisError, attempts: u32) {
    let was_up = link.is_up();
    link.set(false, format!("reconnecting ({})", describe(error)));
    if was_up || attempts == 1 {
        tracing::warn!(redis = %target, %error, "redis broker: {what} connection lost; reconnecting with backoff");
    } else if attempts.is_multiple_of(20) {
        tracing::warn!(redis = %target, %error, attempts, "redis broker: {what} still cannot reach redis");
    } else {
        tracing::debug!(redis = %target, %error, attempts, "redis broker: {what} reconnect failed");
    }
}
