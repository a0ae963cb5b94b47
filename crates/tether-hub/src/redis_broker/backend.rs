//! One Redis or a Redis Cluster under the same broker: how to connect, how
//! keys and channels are named, and the Pub/Sub side of each.
//!
//! - **One Redis** (`redis://`): a multiplexed connection for commands and
//!   a RESP2 Pub/Sub connection (`SUBSCRIBE`, scripts `PUBLISH`).
//! - **Redis Cluster** (`redis-cluster://HOST:PORT[,HOST:PORT...]`): the
//!   `redis` crate's cluster connection, which routes every command by its
//!   key's slot and follows `MOVED`/`ASK` and failovers (it refreshes the
//!   slot map when a node answers so or stops answering). Keys are
//!   [`slots::topic_key`] (a topic's keys and its shard channel share one
//!   hash tag, so every script touches one slot); messages go out with
//!   `SPUBLISH` from the same scripts and are read with `SSUBSCRIBE` over
//!   RESP3 on the master that serves the topic's slot, so a message
//!   crosses only the shard that owns its topic.
//!
//! Sharded Pub/Sub runs on our own connection to each master ([`Shards`]).
//! Pushes arrive through a callback that must not block; they go into a
//! bounded queue ([`PUSH_QUEUE`]). When it is full the push is
//! dropped and the reader is told: it then catches up every topic it
//! follows from the streams (what was dropped is still kept there), so a
//! flood costs a re-read, never memory without bound or a silent loss.

use crate::broker::BrokerError;
use crate::slots;
use redis::aio::{ConnectionLike, MultiplexedConnection, PubSubSink, PubSubStream};
use redis::cluster::ClusterClientBuilder;
use redis::cluster_async::ClusterConnection;
use redis::{Cmd, IntoConnectionInfo, Pipeline, PushInfo, PushKind, RedisFuture, RedisResult, Value};
use std::collections::HashMap;
use std::borrow::Cow;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;

/// Pushes (shard messages, subscription confirmations) waiting for the
/// reader; past this they are dropped and the reader catches up from the
/// streams instead.
pub(super) const PUSH_QUEUE: usize = 16 * 1024;

/// Where the broker's data lives.
pub(super) enum Backend {
    Single(redis::Client),
    Cluster(ClusterSpec),
}

/// The seed nodes and credentials of a Redis Cluster.
pub(super) struct ClusterSpec {
    nodes: Vec<String>,
    username: Option<String>,
    password: Option<String>,
    /// Replicas each publish waits for (`WAIT`) before it is acknowledged.
    pub(super) replicas: u32,
    /// Pushes waiting for the reader (see [`PUSH_QUEUE`]).
    push_queue: usize,
}

/// How long a publish waits for its replicas (`WAIT`); past it the
/// message is acknowledged anyway (it is on the master).
pub(super) const WAIT_MS: u64 = 100;

impl Backend {
    /// Parse `redis://...` or `redis-cluster://[user:pass@]HOST:PORT[,HOST:PORT...][?replicas=N&push_queue=N]`;
    /// also returns a `host:port` description (no password) for logs.
    pub(super) fn parse(url: &str) -> Result<(Backend, String), BrokerError> {
        let Some(rest) = url.strip_prefix("redis-cluster://") else {
            let client = redis::Client::open(url).map_err(|e| BrokerError::Config(format!("{url:?} is not a Redis URL: {e}")))?;
            let target = client.get_connection_info().addr.to_string();
            return Ok((Backend::Single(client), target));
        };
        let bad = |why: &str| BrokerError::Config(format!("redis-cluster URL: {why} (expected redis-cluster://HOST:PORT[,HOST:PORT...][?replicas=N&push_queue=N])"));
        let (rest, query) = rest.split_once('?').unwrap_or((rest, ""));
        let (auth, hosts) = match rest.rsplit_once('@') {
            Some((auth, hosts)) => (Some(auth), hosts),
            None => (None, rest),
        };
        let (username, password) = match auth.map(|a| a.split_once(':').unwrap_or(("", a))) {
            None => (None, None),
            Some((user, pass)) => ((!user.is_empty()).then(|| user.to_string()), (!pass.is_empty()).then(|| pass.to_string())),
        };
        let (mut replicas, mut push_queue) = (1, PUSH_QUEUE);
        for pair in query.split('&').filter(|p| !p.is_empty()) {
            match pair.split_once('=') {
                Some(("replicas", n)) => replicas = n.parse().map_err(|_| bad("replicas must be a number"))?,
                Some(("push_queue", n)) => push_queue = n.parse().ok().filter(|n| (1..=1 << 20).contains(n)).ok_or_else(|| bad("push_queue must be 1 to 1048576"))?,
                _ => return Err(bad(&format!("unknown option {pair:?}"))),
            }
        }
        let mut nodes = Vec::new();
        for host in hosts.split(',') {
            let (h, p) = host.rsplit_once(':').ok_or_else(|| bad(&format!("{host:?} has no port")))?;
            if h.is_empty() || p.parse::<u16>().is_err() {
                return Err(bad(&format!("{host:?} is not HOST:PORT")));
            }
            nodes.push(format!("redis://{host}"));
        }
        let target = format!("cluster {hosts}");
        let spec = ClusterSpec { nodes, username, password, replicas, push_queue };
        // Check the URLs now, not at the first connection.
        spec.builder().build().map_err(|e| bad(&e.to_string()))?;
        Ok((Backend::Cluster(spec), target))
    }

    pub(super) fn is_cluster(&self) -> bool {
        matches!(self, Backend::Cluster(_))
    }

    /// A key (or channel) of `topic`.
    pub(super) fn key(&self, topic: &str, suffix: &str) -> String {
        match self {
            Backend::Single(_) => super::scripts::key(topic, suffix),
            Backend::Cluster(_) => slots::topic_key(topic, suffix),
        }
    }

    /// The topic of a channel name made by [`Backend::key`].
    pub(super) fn topic_of_channel<'a>(&self, channel: &'a str) -> Option<Cow<'a, str>> {
        match self {
            Backend::Single(_) => super::scripts::topic_of_channel(channel).map(Cow::Borrowed),
            Backend::Cluster(_) => slots::topic_of_key(channel, "ch").map(Cow::Owned),
        }
    }

    /// A script of `scripts`, for this backend: on a cluster, messages go
    /// to the topic's shard channel (`SPUBLISH`) instead of every node.
    pub(super) fn script(&self, lua: &str) -> redis::Script {
        match self {
            Backend::Single(_) => redis::Script::new(lua),
            Backend::Cluster(_) => redis::Script::new(&lua.replace("redis.call('PUBLISH'", "redis.call('SPUBLISH'")),
        }
    }

    /// A connection for commands.
    pub(super) async fn connect(&self, connect_timeout: Duration, response_timeout: Duration) -> RedisResult<Con> {
        match self {
            Backend::Single(client) => {
                let config = redis::AsyncConnectionConfig::new().set_connection_timeout(connect_timeout).set_response_timeout(response_timeout);
                Ok(Con::Single(client.get_multiplexed_async_connection_with_config(&config).await?))
            }
            Backend::Cluster(spec) => {
                let client = spec.builder().connection_timeout(connect_timeout).response_timeout(response_timeout).build()?;
                Ok(Con::Cluster(client.get_async_connection().await?))
            }
        }
    }

    /// The Pub/Sub side.
    pub(super) async fn subscriber(&self, connect_timeout: Duration, response_timeout: Duration) -> RedisResult<Sub> {
        match self {
            Backend::Single(client) => {
                let pubsub = match tokio::time::timeout(connect_timeout, client.get_async_pubsub()).await {
                    Ok(p) => p?,
                    Err(_) => return Err(super::reader::failed("timed out connecting for pub/sub")),
                };
                let (sink, stream) = pubsub.split();
                Ok(Sub::Single { sink, stream })
            }
            Backend::Cluster(spec) => {
                let (tx, rx) = mpsc::channel(spec.push_queue);
                let mut con = self.connect(connect_timeout, response_timeout).await?;
                let map = super::cluster::SlotMap::fetch(&mut con).await?;
                let shards = Shards {
                    username: spec.username.clone(),
                    password: spec.password.clone(),
                    connect_timeout,
                    response_timeout,
                    conns: HashMap::new(),
                    placed: HashMap::new(),
                    map,
                    tx,
                    rx,
                    overflow: Arc::new(AtomicBool::new(false)),
                    con,
                };
                Ok(Sub::Cluster(Box::new(shards)))
            }
        }
    }
}

impl ClusterSpec {
    fn builder(&self) -> ClusterClientBuilder {
        let mut b = ClusterClientBuilder::new(self.nodes.clone())
            // Retries (MOVED, ASK, a failover) within the response timeout:
            // a publish to a shard that stays unreachable fails in time.
            .retries(6)
            .min_retry_wait(50)
            .max_retry_wait(1000);
        if let Some(u) = &self.username {
            b = b.username(u.clone());
        }
        if let Some(p) = &self.password {
            b = b.password(p.clone());
        }
        b
    }
}

/// A connection for commands, to one Redis or a cluster (routed by key).
#[derive(Clone)]
pub(super) enum Con {
    Single(MultiplexedConnection),
    Cluster(ClusterConnection),
}

impl Con {
    /// Send `pipe` (`count` replies) to the master at `addr` (`host:port`)
    /// on a cluster; its commands may be of several slots of that master.
    pub(super) async fn pipeline_to(&mut self, addr: &str, pipe: &Pipeline, count: usize) -> RedisResult<Vec<Value>> {
        match self {
            Con::Single(c) => c.req_packed_commands(pipe, 0, count).await,
            Con::Cluster(c) => {
                let (host, port) = addr.rsplit_once(':').and_then(|(h, p)| Some((h.to_string(), p.parse().ok()?))).ok_or_else(|| super::reader::failed("bad node address"))?;
                c.route_pipeline(pipe, 0, count, redis::cluster_routing::SingleNodeRoutingInfo::ByAddress { host, port }).await
            }
        }
    }
}

impl ConnectionLike for Con {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            Con::Single(c) => c.req_packed_command(cmd),
            Con::Cluster(c) => c.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(&'a mut self, cmd: &'a Pipeline, offset: usize, count: usize) -> RedisFuture<'a, Vec<Value>> {
        match self {
            Con::Single(c) => c.req_packed_commands(cmd, offset, count),
            Con::Cluster(c) => c.req_packed_commands(cmd, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Con::Single(c) => c.get_db(),
            Con::Cluster(c) => c.get_db(),
        }
    }
}

/// What the Pub/Sub side received.
pub(super) enum Incoming {
    /// A message on a channel.
    Message { channel: String, payload: Vec<u8> },
    /// The server ended the subscription of a channel (its slot moved).
    Unsubscribed(String),
    /// (Redis Cluster) The connection to a master dropped: these channels
    /// are no longer subscribed.
    Lost(Vec<String>),
    /// Pushes were dropped (the queue was full).
    Overflowed,
    /// Something else (pong, other push kinds).
    Other,
}

/// The Pub/Sub side of a backend.
pub(super) enum Sub {
    Single { sink: PubSubSink, stream: PubSubStream },
    Cluster(Box<Shards>),
}

/// Sharded Pub/Sub on Redis Cluster, with our own connection to each
/// master (RESP3, pushes into one bounded queue tagged with the master):
/// a channel is subscribed on the master that serves its slot in the slot
/// map last read, so the reader knows at every moment where each
/// subscription lives, and moves it when the map changes or the master's
/// connection drops. (The `redis` crate's cluster connection resubscribes
/// by itself, but after a failover it could lose a subscription without a
/// word, seen in tests/redis_cluster.rs.)
pub(super) struct Shards {
    username: Option<String>,
    password: Option<String>,
    connect_timeout: Duration,
    response_timeout: Duration,
    conns: HashMap<Arc<str>, MultiplexedConnection>,
    /// Where each subscribed channel lives.
    placed: HashMap<String, Arc<str>>,
    map: super::cluster::SlotMap,
    tx: mpsc::Sender<(Arc<str>, PushInfo)>,
    rx: mpsc::Receiver<(Arc<str>, PushInfo)>,
    overflow: Arc<AtomicBool>,
    /// For `CLUSTER SLOTS`.
    con: Con,
}

impl Shards {
    async fn conn(&mut self, addr: &Arc<str>) -> RedisResult<MultiplexedConnection> {
        if let Some(c) = self.conns.get(addr) {
            return Ok(c.clone());
        }
        let mut info = format!("redis://{addr}").into_connection_info()?;
        info.redis.username = self.username.clone();
        info.redis.password = self.password.clone();
        info.redis.protocol = redis::ProtocolVersion::RESP3;
        let (tx, flag, tag) = (self.tx.clone(), self.overflow.clone(), addr.clone());
        let push = move |push: PushInfo| -> Result<(), ()> {
            if tx.try_send((tag.clone(), push)).is_err() {
                flag.store(true, Ordering::Release);
            }
            Ok(())
        };
        let config = redis::AsyncConnectionConfig::new()
            .set_connection_timeout(self.connect_timeout)
            .set_response_timeout(self.response_timeout)
            .set_push_sender(push);
        let c = redis::Client::open(info)?.get_multiplexed_async_connection_with_config(&config).await?;
        self.conns.insert(addr.clone(), c.clone());
        Ok(c)
    }

    async fn subscribe(&mut self, channel: String) -> RedisResult<()> {
        let slot = slots::key_slot(channel.as_bytes());
        let addr = self.map.node_of(slot).cloned().ok_or_else(|| super::reader::failed("no master serves the slot"))?;
        let mut c = self.conn(&addr).await?;
        if let Err(e) = redis::cmd("SSUBSCRIBE").arg(&channel).exec_async(&mut c).await {
            self.conns.remove(&addr);
            return Err(e);
        }
        self.placed.insert(channel, addr);
        Ok(())
    }

    async fn unsubscribe(&mut self, channel: String) -> RedisResult<()> {
        let Some(addr) = self.placed.remove(&channel) else { return Ok(()) };
        let Some(mut c) = self.conns.get(&addr).cloned() else { return Ok(()) };
        redis::cmd("SUNSUBSCRIBE").arg(&channel).exec_async(&mut c).await
    }

    /// Read the slot map again; the channels whose slot is now served by
    /// another master (no longer subscribed where they should be).
    pub(super) async fn refresh_map(&mut self) -> RedisResult<Vec<String>> {
        self.map = super::cluster::SlotMap::fetch(&mut self.con).await?;
        let moved: Vec<String> =
            self.placed.iter().filter(|(ch, addr)| self.map.node_of(slots::key_slot(ch.as_bytes())) != Some(*addr)).map(|(ch, _)| ch.clone()).collect();
        for ch in &moved {
            // Best effort on the old master (if alive): duplicates are
            // skipped by sequence number anyway.
            if let Some(addr) = self.placed.remove(ch) {
                if let Some(mut c) = self.conns.get(&addr).cloned() {
                    let _ = tokio::time::timeout(Duration::from_millis(200), redis::cmd("SUNSUBSCRIBE").arg(ch).exec_async(&mut c)).await;
                }
            }
        }
        // Masters no longer in the map: their connections go.
        let map = &self.map;
        self.conns.retain(|addr, _| map.nodes_contain(addr));
        Ok(moved)
    }

    fn incoming(&mut self, addr: Arc<str>, info: PushInfo) -> Incoming {
        match info.kind {
            PushKind::SMessage | PushKind::Message => {
                let mut data = info.data.into_iter();
                match (data.next(), data.next()) {
                    (Some(Value::BulkString(c)), Some(Value::BulkString(payload))) => match String::from_utf8(c) {
                        Ok(channel) => Incoming::Message { channel, payload },
                        Err(_) => Incoming::Other,
                    },
                    _ => Incoming::Other,
                }
            }
            PushKind::SUnsubscribe => match channel_of(&info.data) {
                // Ours (we unsubscribed it there): nothing to do.
                Some(ch) if self.placed.get(&ch) == Some(&addr) => {
                    self.placed.remove(&ch);
                    Incoming::Unsubscribed(ch)
                }
                _ => Incoming::Other,
            },
            PushKind::Disconnection => {
                self.conns.remove(&addr);
                let lost: Vec<String> = self.placed.iter().filter(|(_, a)| **a == addr).map(|(ch, _)| ch.clone()).collect();
                for ch in &lost {
                    self.placed.remove(ch);
                }
                Incoming::Lost(lost)
            }
            _ => Incoming::Other,
        }
    }
}

fn channel_of(data: &[Value]) -> Option<String> {
    match data.first()? {
        Value::BulkString(b) => String::from_utf8(b.clone()).ok(),
        Value::SimpleString(s) => Some(s.clone()),
        _ => None,
    }
}

impl Sub {
    /// Subscribe to one channel (one per request: replies match requests).
    pub(super) async fn subscribe(&mut self, channel: String) -> RedisResult<()> {
        match self {
            Sub::Single { sink, .. } => sink.subscribe(channel).await,
            Sub::Cluster(shards) => shards.subscribe(channel).await,
        }
    }

    pub(super) async fn unsubscribe(&mut self, channel: String) -> RedisResult<()> {
        match self {
            Sub::Single { sink, .. } => sink.unsubscribe(channel).await,
            Sub::Cluster(shards) => shards.unsubscribe(channel).await,
        }
    }

    /// Check the connection (a cluster's masters drop with a push).
    pub(super) async fn ping(&mut self) -> RedisResult<()> {
        match self {
            Sub::Single { sink, .. } => sink.ping::<Value>().await.map(drop),
            Sub::Cluster(_) => Ok(()),
        }
    }

    /// The next thing received; `None` when the connection is gone.
    pub(super) async fn next(&mut self) -> Option<Incoming> {
        use futures_util::StreamExt;
        match self {
            Sub::Single { stream, .. } => {
                let msg = stream.next().await?;
                Some(Incoming::Message { channel: msg.get_channel_name().to_string(), payload: msg.get_payload_bytes().to_vec() })
            }
            Sub::Cluster(shards) => {
                if shards.overflow.swap(false, Ordering::AcqRel) {
                    return Some(Incoming::Overflowed);
                }
                let (addr, info) = shards.rx.recv().await?;
                if shards.overflow.swap(false, Ordering::AcqRel) {
                    // Dropped after this one: the catch-up covers it too.
                    return Some(Incoming::Overflowed);
                }
                Some(shards.incoming(addr, info))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cluster_urls_parse() {
        let (b, target) = Backend::parse("redis-cluster://127.0.0.1:7000,127.0.0.1:7001").unwrap();
        let Backend::Cluster(spec) = &b else { panic!("not a cluster") };
        assert_eq!(spec.nodes, ["redis://127.0.0.1:7000", "redis://127.0.0.1:7001"]);
        assert_eq!((spec.replicas, spec.push_queue, target.as_str()), (1, PUSH_QUEUE, "cluster 127.0.0.1:7000,127.0.0.1:7001"));
        let (b, target) = Backend::parse("redis-cluster://:s3cret@h:1?replicas=0").unwrap();
        let Backend::Cluster(spec) = &b else { panic!("not a cluster") };
        assert_eq!((spec.password.as_deref(), spec.username.as_deref(), spec.replicas), (Some("s3cret"), None, 0));
        assert!(!target.contains("s3cret"));
        let (b2, _) = Backend::parse("redis-cluster://h:1?push_queue=16&replicas=2").unwrap();
        let Backend::Cluster(spec) = &b2 else { panic!("not a cluster") };
        assert_eq!((spec.replicas, spec.push_queue), (2, 16));
        for bad in ["redis-cluster://", "redis-cluster://h", "redis-cluster://h:x", "redis-cluster://h:1?replicas=x", "redis-cluster://h:1?x=1", "redis-cluster://h:1?push_queue=0"] {
            assert!(matches!(Backend::parse(bad), Err(BrokerError::Config(_))), "{bad}");
        }
        // The same topic, one slot for every key and the shard channel.
        assert_eq!(b.key("x}y", "ch"), slots::topic_key("x}y", "ch"));
        assert_eq!(b.topic_of_channel(&b.key("x}y", "ch")).as_deref(), Some("x}y"));
    }
}
