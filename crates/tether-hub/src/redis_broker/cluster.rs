//! The publishing side of the broker on Redis Cluster: the same script as
//! on one Redis ([`scripts::PUBLISH_BATCH`](super::scripts::PUBLISH_BATCH)
//! with `SPUBLISH`), one call per topic (a topic's keys all share its
//! slot; a call may carry several of its messages), batched into one
//! pipeline per master (the slot map is read with `CLUSTER SLOTS`), with at most
//! one pipeline in flight per master so that every topic keeps its order,
//! and every master independent of the others: a shard that stops
//! answering holds up only its own slots. A redirection (`MOVED`, `ASK`,
//! `TRYAGAIN`, `CLUSTERDOWN`) or a failure refuses the messages concerned
//! and reads the slot map again.
//!
//! - **Replicas.** Each pipeline ends with `WAIT replicas 100`: a message
//!   is acknowledged once its shard's replica has it too (or after 100 ms),
//!   so a failover rarely loses an acknowledged message (Redis replicates
//!   asynchronously: this narrows the window, it cannot close it). When a
//!   master's `WAIT` finds fewer replicas than asked (it lost its replica,
//!   or was just promoted), its acks stop waiting for [`WAIT_OFF`].
//! - **Unreachable shard.** When a slot's pipeline fails (the cluster
//!   client retried through `MOVED`, `ASK` and failover within the response
//!   timeout), its messages and those waiting behind them are refused with
//!   `unavailable` ("redis shard unreachable"), and for [`DOWN_FOR`] every
//!   new publish to that master's slots is refused at once; the next one
//!   after that tries again. Nothing is reordered: a refused message is never sent
//!   later.
//! - **Scripts.** A promoted replica has no script cache: `NOSCRIPT`
//!   replies load the script (on every master) and are sent again, first,
//!   once.
//! - **Presence and heartbeat** run in a task of their own, so that a
//!   shard down stalls neither publishing nor the other shards.
//! - **Bounds.** Messages wait per slot, but they still count against the
//!   broker's byte cap until they are acknowledged or refused.

use super::backend::{Backend, Con, WAIT_MS};
use super::writer::{add_batch, announce, beat, by_topic, resync_overflowed, resync_presence, settle, Scripts};
use super::{publish_bytes, report_down, Backoff, Shared, NODE_BEAT};
use crate::broker::{new_epoch, BrokerError, PresenceChange, Publish};
use crate::slots::topic_slot;
use futures_util::stream::FuturesUnordered;
use futures_util::StreamExt;
use redis::{ErrorKind, RedisResult, Value};
use std::collections::{HashMap, HashSet, VecDeque};
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::mpsc;

/// Most publishes in one node's pipeline...
const BATCH: usize = 512;
/// ...and most bytes.
const BATCH_BYTES: usize = 1 << 20;
/// After a node's pipeline failed, publishes to its slots are refused at
/// once for this long.
const DOWN_FOR: Duration = Duration::from_secs(1);
/// How long acks stop waiting for replicas on a master whose `WAIT` came
/// back short.
const WAIT_OFF: Duration = Duration::from_secs(5);
/// The slot map is read again at most this often (after a failure or a
/// redirection).
const REFRESH_EVERY: Duration = Duration::from_millis(250);
/// When every pipeline has failed for this long (none succeeded), the
/// cluster connection is replaced by a new one: the `redis` crate's
/// cluster connection can stay wedged after a master dies (every request
/// times out, on every shard, even after the failover).
const REBUILD_AFTER: Duration = Duration::from_secs(3);

/// Which master serves each slot (`CLUSTER SLOTS`).
pub(super) struct SlotMap {
    /// Index into `nodes` per slot (`u16::MAX`: no master).
    owner: Vec<u16>,
    nodes: Vec<Arc<str>>,
    at: Instant,
}

impl SlotMap {
    fn empty() -> SlotMap {
        SlotMap { owner: vec![u16::MAX; usize::from(crate::slots::SLOTS)], nodes: Vec::new(), at: Instant::now() - REFRESH_EVERY }
    }

    pub(super) fn nodes_contain(&self, addr: &str) -> bool {
        self.nodes.iter().any(|n| &**n == addr)
    }

    pub(super) fn node_of(&self, slot: u16) -> Option<&Arc<str>> {
        self.nodes.get(usize::from(*self.owner.get(usize::from(slot))?))
    }

    /// Read the map: `[[start, end, [host, port, ...], replicas...], ...]`.
    pub(super) async fn fetch(con: &mut Con) -> RedisResult<SlotMap> {
        let reply: Vec<Vec<Value>> = redis::cmd("CLUSTER").arg("SLOTS").query_async(con).await?;
        let mut map = SlotMap::empty();
        map.at = Instant::now();
        for range in reply {
            let (Some(start), Some(end), Some(master)) = (range.first(), range.get(1), range.get(2)) else { continue };
            let (Ok(start), Ok(end)) = (redis::from_redis_value::<u16>(start), redis::from_redis_value::<u16>(end)) else { continue };
            let Ok(master) = redis::from_redis_value::<Vec<Value>>(master) else { continue };
            let (Some(host), Some(port)) = (master.first(), master.get(1)) else { continue };
            let (Ok(host), Ok(port)) = (redis::from_redis_value::<String>(host), redis::from_redis_value::<u16>(port)) else { continue };
            let addr: Arc<str> = Arc::from(format!("{host}:{port}"));
            let index = match map.nodes.iter().position(|n| *n == addr) {
                Some(i) => i,
                None => {
                    map.nodes.push(addr);
                    map.nodes.len() - 1
                }
            };
            for slot in start..=end.min(crate::slots::SLOTS - 1) {
                map.owner[usize::from(slot)] = index as u16;
            }
        }
        Ok(map)
    }
}

/// One node's pipeline, answered.
struct Done {
    node: Arc<str>,
    /// Replicas the pipeline's `WAIT` asked for (0: no `WAIT`).
    waited: u32,
    /// The pipeline's messages, one group (one script call) per topic.
    groups: Vec<Vec<Publish>>,
    bytes: usize,
    replies: RedisResult<Vec<Value>>,
}

type InFlight = FuturesUnordered<Pin<Box<dyn Future<Output = Done> + Send>>>;

/// Messages waiting per master, and which masters are busy, down, without
/// their replica or sent again after `NOSCRIPT`.
#[derive(Default)]
struct Nodes {
    waiting: HashMap<Arc<str>, VecDeque<Publish>>,
    busy: HashSet<Arc<str>>,
    down: HashMap<Arc<str>, Instant>,
    wait_off: HashMap<Arc<str>, Instant>,
    /// Masters whose last `WAIT` came back short (warned once).
    short: HashSet<Arc<str>>,
    reloaded: HashSet<Arc<str>>,
}

fn shard_down() -> BrokerError {
    BrokerError::Unavailable("redis shard unreachable".into())
}

pub(super) async fn run(shared: Arc<Shared>, mut publishes: mpsc::Receiver<Publish>, presence: mpsc::Receiver<PresenceChange>) {
    let scripts = Arc::new(Scripts::new(&shared));
    let mut backoff = Backoff::new();
    let mut attempts = 0u32;
    let Some(mut con) = connect(&shared, &mut publishes, &mut backoff, &mut attempts).await else { return };
    let (sha, mut map) = loop {
        let ready = async { Ok::<_, redis::RedisError>((scripts.publish.prepare_invoke().load_async(&mut con).await?, SlotMap::fetch(&mut con).await?)) };
        match ready.await {
            Ok(ready) => break ready,
            Err(e) => {
                attempts += 1;
                report_down(&shared.writer, "publishing", &shared.target, &e, attempts);
                tokio::time::sleep(backoff.next()).await;
            }
        }
    };
    tokio::spawn(side(shared.clone(), scripts.clone(), presence));
    shared.writer.set(true, "connected".into());
    tracing::info!(redis = %shared.target, masters = map.nodes.len(), "redis broker: publishing connected to the cluster");
    let replicas = match &shared.backend {
        Backend::Cluster(spec) => spec.replicas,
        Backend::Single(_) => 0,
    };
    let mut nodes = Nodes::default();
    let mut in_flight = InFlight::new();
    let mut failing_since: Option<Instant> = None;
    let mut stale_map = false;
    loop {
        if failing_since.is_some_and(|at| at.elapsed() > REBUILD_AFTER) {
            tracing::warn!(redis = %shared.target, "redis broker: no shard has answered for a while; reconnecting to the cluster");
            failing_since = None;
            let Some(fresh) = connect(&shared, &mut publishes, &mut backoff, &mut attempts).await else { return };
            con = fresh;
        }
        if stale_map && map.at.elapsed() >= REFRESH_EVERY {
            match tokio::time::timeout(REFRESH_EVERY * 4, SlotMap::fetch(&mut con)).await {
                Ok(Ok(fresh)) => {
                    map = fresh;
                    stale_map = false;
                }
                _ => map.at = Instant::now(),
            }
        }
        tokio::select! {
            biased;
            Some(done) = in_flight.next(), if !in_flight.is_empty() => {
                let node = done.node.clone();
                nodes.busy.remove(&node);
                if done.replies.is_ok() {
                    failing_since = None;
                } else {
                    failing_since.get_or_insert_with(Instant::now);
                }
                let waited = done.waited > 0 && done.replies.is_ok();
                let (short, redirected) = answer(&shared, &scripts, &mut con, &mut nodes, done).await;
                stale_map |= redirected;
                if short {
                    // Said once, not at every retry: until a WAIT finds the replicas again.
                    if nodes.short.insert(node.clone()) {
                        tracing::warn!(redis = %shared.target, %node, replicas, "redis broker: a master has fewer replicas than asked for; its acks stop waiting for replicas until it has them again");
                    }
                    nodes.wait_off.insert(node.clone(), Instant::now() + WAIT_OFF);
                } else if waited && nodes.short.remove(&node) {
                    tracing::info!(redis = %shared.target, %node, replicas, "redis broker: a master has its replicas again; its acks wait for them");
                }
                start(&shared, &sha, replicas, &con, &mut nodes, &mut in_flight, node);
            }
            first = publishes.recv() => {
                let Some(first) = first else { return };
                let mut touched = Vec::new();
                let mut next = Some(first);
                let mut taken = 0;
                while let Some(p) = next.take() {
                    let now = Instant::now();
                    match map.node_of(topic_slot(&p.topic)) {
                        Some(node) if nodes.down.get(node).is_none_or(|until| now >= *until) => {
                            nodes.waiting.entry(node.clone()).or_default().push_back(p);
                            if !touched.contains(node) {
                                touched.push(node.clone());
                            }
                        }
                        found => {
                            stale_map |= found.is_none();
                            shared.release(publish_bytes(&p));
                            shared.sink().reject(&p.origin, &p.topic, &shard_down());
                        }
                    }
                    taken += 1;
                    if taken < BATCH {
                        next = publishes.try_recv().ok();
                    }
                }
                for node in touched {
                    start(&shared, &sha, replicas, &con, &mut nodes, &mut in_flight, node);
                }
            }
            () = tokio::time::sleep(REFRESH_EVERY), if stale_map => {}
        }
    }
}

/// A connection to the cluster (its slot map), retried with backoff;
/// publishes are refused meanwhile. `None`: the broker was dropped.
async fn connect(shared: &Shared, publishes: &mut mpsc::Receiver<Publish>, backoff: &mut Backoff, attempts: &mut u32) -> Option<Con> {
    loop {
        match shared.connect().await {
            Ok(con) => {
                backoff.reset();
                return Some(con);
            }
            Err(e) => {
                *attempts += 1;
                report_down(&shared.writer, "publishing", &shared.target, &e, *attempts);
                // Refused while down, as on one Redis.
                while let Ok(p) = publishes.try_recv() {
                    shared.release(publish_bytes(&p));
                    shared.sink().reject(&p.origin, &p.topic, &super::unreachable());
                }
                if shared.closed.load(std::sync::atomic::Ordering::Acquire) {
                    return None;
                }
                tokio::time::sleep(backoff.next()).await;
            }
        }
    }
}

/// Send `node`'s waiting messages (a batch) unless a pipeline to it is in flight.
fn start(shared: &Arc<Shared>, sha: &str, replicas: u32, con: &Con, nodes: &mut Nodes, in_flight: &mut InFlight, node: Arc<str>) {
    if nodes.busy.contains(&node) {
        return;
    }
    let Some(queue) = nodes.waiting.get_mut(&node) else { return };
    let mut msgs = Vec::new();
    let mut bytes = 0;
    while msgs.len() < BATCH && bytes < BATCH_BYTES {
        let Some(p) = queue.pop_front() else { break };
        bytes += publish_bytes(&p);
        msgs.push(p);
    }
    if queue.is_empty() {
        nodes.waiting.remove(&node);
    }
    if msgs.is_empty() {
        return;
    }
    let replicas = match nodes.wait_off.get(&node) {
        Some(until) if Instant::now() < *until => 0,
        _ => {
            nodes.wait_off.remove(&node);
            replicas
        }
    };
    let candidate = new_epoch();
    let groups = by_topic(msgs);
    let mut pipe = redis::pipe();
    for group in &groups {
        add_batch(&mut pipe, shared, sha, &candidate, std::slice::from_ref(group));
    }
    let count = groups.len() + usize::from(replicas > 0);
    if replicas > 0 {
        pipe.cmd("WAIT").arg(replicas).arg(WAIT_MS);
    }
    nodes.busy.insert(node.clone());
    let mut con = con.clone();
    in_flight.push(Box::pin(async move {
        let replies = con.pipeline_to(&node, &pipe, count).await;
        Done { node, waited: replicas, groups, bytes, replies }
    }));
}

/// Ack or refuse each message of a pipeline; returns whether its `WAIT`
/// found fewer replicas than asked for, and whether the slot map looks
/// out of date (a failure or a redirection).
async fn answer(shared: &Shared, scripts: &Scripts, con: &mut Con, nodes: &mut Nodes, done: Done) -> (bool, bool) {
    let Done { node, waited, groups, bytes, replies } = done;
    shared.release(bytes);
    let sink = shared.sink();
    let replies = match replies {
        Ok(replies) => replies,
        // The cluster client reports the pipeline's first error for all of
        // it: `NOSCRIPT` means that none ran (a promoted replica).
        Err(e) if e.kind() == ErrorKind::NoScriptError && !nodes.reloaded.contains(&node) => {
            let result = reload(shared, scripts, con, nodes, &node, groups.into_iter().flatten().collect()).await;
            return (false, result);
        }
        Err(e) => {
            tracing::warn!(redis = %shared.target, %node, error = %e, "redis broker: a shard is unreachable; its publishes are refused");
            nodes.down.insert(node.clone(), Instant::now() + DOWN_FOR);
            let refused = shard_down();
            let waiting = nodes.waiting.remove(&node).unwrap_or_default();
            for p in groups.iter().flatten().chain(waiting.iter()) {
                sink.reject(&p.origin, &p.topic, &refused);
            }
            shared.release(waiting.iter().map(publish_bytes).sum());
            return (false, true);
        }
    };
    nodes.down.remove(&node);
    let short = waited > 0 && replies.get(groups.len()).and_then(|v| redis::from_redis_value::<u32>(v).ok()).is_some_and(|n| n < waited);
    let mut redirected = false;
    let mut again = Vec::new();
    for (group, reply) in groups.into_iter().zip(replies) {
        match reply.extract_error() {
            Ok(reply) => settle(shared, vec![group], reply),
            // A promoted replica without the script: load it, send again (first).
            Err(e) if e.kind() == ErrorKind::NoScriptError && !nodes.reloaded.contains(&node) => again.extend(group),
            Err(e) => {
                // The slot moved (or the cluster is failing over): refused,
                // and the map is read again for the next ones.
                let moved = matches!(e.kind(), ErrorKind::Moved | ErrorKind::Ask | ErrorKind::TryAgain | ErrorKind::ClusterDown);
                redirected |= moved;
                tracing::debug!(redis = %shared.target, topic = %group[0].topic, error = %e, "redis broker: redis refused a topic's messages");
                let error = if moved { shard_down() } else { BrokerError::Unavailable("redis refused the message".into()) };
                for p in &group {
                    sink.reject(&p.origin, &p.topic, &error);
                }
            }
        }
    }
    if again.is_empty() {
        nodes.reloaded.remove(&node);
        return (short, redirected);
    }
    let failed = reload(shared, scripts, con, nodes, &node, again).await;
    (short, redirected || failed)
}

/// Load the publish script (on every master) and put `msgs` back at the
/// head of `node`'s queue, to be sent again once; true if loading failed
/// (they are refused).
async fn reload(shared: &Shared, scripts: &Scripts, con: &mut Con, nodes: &mut Nodes, node: &Arc<str>, msgs: Vec<Publish>) -> bool {
    if let Err(e) = scripts.publish.prepare_invoke().load_async(con).await {
        tracing::warn!(redis = %shared.target, error = %e, "redis broker: cannot load the publish script");
        for p in &msgs {
            shared.sink().reject(&p.origin, &p.topic, &shard_down());
        }
        return true;
    }
    tracing::info!(redis = %shared.target, %node, "redis broker: loaded the publish script on a master that lacked it");
    nodes.reloaded.insert(node.clone());
    let queue = nodes.waiting.entry(node.clone()).or_default();
    for p in msgs.into_iter().rev() {
        shared.queued_bytes.fetch_add(publish_bytes(&p), std::sync::atomic::Ordering::AcqRel);
        queue.push_front(p);
    }
    false
}

/// Presence changes and the heartbeat, apart from publishing, on a
/// connection of their own. A failure is logged and repaired at the next
/// beat (a whole resync of this node's presence); after two failed beats
/// in a row the connection is replaced (see [`REBUILD_AFTER`]).
async fn side(shared: Arc<Shared>, scripts: Arc<Scripts>, mut presence: mpsc::Receiver<PresenceChange>) {
    let mut con = loop {
        match shared.connect().await {
            Ok(con) => break con,
            Err(_) => tokio::time::sleep(NODE_BEAT / 5).await,
        }
    };
    let mut failed_beats = 0;
    let mut dirty = resync_presence(&shared, &scripts, &mut con).await.is_err();
    let _ = beat(&shared, &scripts, &mut con).await;
    let mut ticker = tokio::time::interval_at(tokio::time::Instant::now() + NODE_BEAT, NODE_BEAT);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let result = tokio::select! {
            biased;
            _ = ticker.tick() => {
                if failed_beats >= 2 {
                    if let Ok(fresh) = shared.connect().await {
                        con = fresh;
                        failed_beats = 0;
                    }
                }
                let mut r = beat(&shared, &scripts, &mut con).await;
                failed_beats = if r.is_err() { failed_beats + 1 } else { 0 };
                if dirty && r.is_ok() {
                    r = resync_presence(&shared, &scripts, &mut con).await;
                    dirty = r.is_err();
                }
                r
            }
            change = presence.recv() => match change {
                None => return,
                Some(change) => announce(&shared, &scripts, &mut con, change).await,
            },
            () = shared.presence_overflowed.notified() => resync_overflowed(&shared, &scripts, &mut con, &mut presence).await,
        };
        if let Err(e) = result {
            dirty = true;
            tracing::warn!(redis = %shared.target, error = %e, "redis broker: presence or heartbeat failed; resynchronised at the next beat");
        }
    }
}
