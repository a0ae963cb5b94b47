//! The publishing side of the Redis broker: batches publishes into one
//! call of the batch script per round trip (grouped by topic; order kept:
//! one call in flight), sends presence changes, beats the node's heartbeat key and reaps
//! dead nodes. Reconnects with backoff; while down, publishes are refused.
//!
//! The heartbeat comes first: between two batches the loop looks at the
//! beat deadline before anything else, and a batch is bounded (count and
//! bytes, within the response timeout), so a publish flood delays the beat
//! by one batch at most, far less than the time other nodes wait before
//! they reap this one.

use super::backend::Con;
use super::scripts::{self, encode_body, node_key, node_topics, NODES};
use super::{publish_bytes, report_down, unreachable, Backoff, Shared, NODE_BEAT, NODE_TTL};
use crate::broker::{new_epoch, BrokerError, PresenceChange, Publish};
use redis::aio::ConnectionLike;
use redis::{ErrorKind, RedisError, RedisResult, Script, Value};
use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;
use std::time::Instant;
use tokio::sync::mpsc;

/// Most publishes sent in one script call (Redis runs it in about 11 ms
/// at 200 topics on this machine's cores, 10-11 us each: other clients of
/// Redis wait that long at most)...
const BATCH: usize = 1024;
/// ...and most bytes (past this the batch ends after the message that
/// crossed it).
const BATCH_BYTES: usize = 1 << 20;

pub(super) struct Scripts {
    pub(super) publish: Script,
    presence: Script,
    resync: Script,
    reap: Script,
}

impl Scripts {
    pub(super) fn new(shared: &Shared) -> Scripts {
        let b = &shared.backend;
        Scripts {
            publish: b.script(scripts::PUBLISH_BATCH),
            presence: b.script(scripts::PRESENCE),
            resync: b.script(scripts::RESYNC),
            reap: b.script(if b.is_cluster() { scripts::REAP_TOPIC } else { scripts::REAP }),
        }
    }
}

enum Stop {
    /// The broker was dropped: end the task.
    Closed,
    /// Redis failed: reconnect.
    Failed(RedisError),
}

impl From<RedisError> for Stop {
    fn from(e: RedisError) -> Self {
        Stop::Failed(e)
    }
}

pub(super) async fn run(shared: Arc<Shared>, mut publishes: mpsc::Receiver<Publish>, mut presence: mpsc::Receiver<PresenceChange>) {
    let scripts = Scripts::new(&shared);
    let mut backoff = Backoff::new();
    let mut attempts = 0u32;
    let mut down_since: Option<Instant> = None;
    loop {
        let error = match session(&shared, &scripts, &mut publishes, &mut presence, &mut backoff, &mut attempts, &mut down_since).await {
            Stop::Closed => return,
            Stop::Failed(e) => e,
        };
        attempts += 1;
        down_since.get_or_insert_with(Instant::now);
        report_down(&shared.writer, "publishing", &shared.target, &error, attempts);
        // Never silent: what was waiting is refused now, not later.
        let refused = unreachable();
        while let Ok(p) = publishes.try_recv() {
            shared.release(publish_bytes(&p));
            shared.sink().reject(&p.origin, &p.topic, &refused);
        }
        // Presence is re-registered as a whole after the reconnect.
        while presence.try_recv().is_ok() {}
        shared.presence_overflow.lock().unwrap_or_else(|p| p.into_inner()).clear();
        tokio::time::sleep(backoff.next()).await;
    }
}

async fn session(
    shared: &Shared,
    scripts: &Scripts,
    publishes: &mut mpsc::Receiver<Publish>,
    presence: &mut mpsc::Receiver<PresenceChange>,
    backoff: &mut Backoff,
    attempts: &mut u32,
    down_since: &mut Option<Instant>,
) -> Stop {
    let mut con = match shared.connect().await {
        Ok(c) => c,
        Err(e) => return Stop::Failed(e),
    };
    let publish_sha = match scripts.publish.prepare_invoke().load_async(&mut con).await {
        Ok(sha) => sha,
        Err(e) => return Stop::Failed(e),
    };
    if let Err(e) = beat(shared, scripts, &mut con).await {
        return Stop::Failed(e);
    }
    if let Err(e) = resync_presence(shared, scripts, &mut con).await {
        return Stop::Failed(e);
    }
    shared.writer.set(true, "connected".into());
    backoff.reset();
    match down_since.take() {
        Some(at) => tracing::info!(redis = %shared.target, after = ?at.elapsed(), attempts = *attempts, "redis broker: publishing reconnected"),
        None => tracing::info!(redis = %shared.target, "redis broker: publishing connected"),
    }
    *attempts = 0;
    let mut batch = Vec::with_capacity(BATCH);
    let mut ticker = tokio::time::interval_at(tokio::time::Instant::now() + NODE_BEAT, NODE_BEAT);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        // Biased, heartbeat first: however many publishes wait, the beat
        // goes out after the batch in flight.
        let result = tokio::select! {
            biased;
            _ = ticker.tick() => beat(shared, scripts, &mut con).await,
            () = shared.check.notified() => beat(shared, scripts, &mut con).await,
            change = presence.recv() => match change {
                None => return Stop::Closed,
                Some(change) => announce(shared, scripts, &mut con, change).await,
            },
            () = shared.presence_overflowed.notified() => resync_overflowed(shared, scripts, &mut con, presence).await,
            first = publishes.recv() => {
                let Some(first) = first else { return Stop::Closed };
                let mut bytes = publish_bytes(&first);
                batch.push(first);
                while batch.len() < BATCH && bytes < BATCH_BYTES {
                    let Ok(p) = publishes.try_recv() else { break };
                    bytes += publish_bytes(&p);
                    batch.push(p);
                }
                let result = publish_batch(shared, &publish_sha, scripts, &mut con, &mut batch).await;
                shared.release(bytes);
                result
            }
        };
        if let Err(e) = result {
            return Stop::Failed(e);
        }
    }
}

/// A batch's messages grouped by topic, in order of each topic's first
/// message, each group in publish order: the unit of
/// [`scripts::PUBLISH_BATCH`]. (Order across topics is not kept, and need
/// not be: sequence numbers are per topic.)
pub(super) fn by_topic(msgs: Vec<Publish>) -> Vec<Vec<Publish>> {
    let mut index: HashMap<Arc<str>, usize> = HashMap::new();
    let mut groups: Vec<Vec<Publish>> = Vec::new();
    for p in msgs {
        match index.get(&p.topic) {
            Some(&g) => groups[g].push(p),
            None => {
                index.insert(p.topic.clone(), groups.len());
                groups.push(vec![p]);
            }
        }
    }
    groups
}

/// Add one call of the batch script (`sha`) publishing `groups` (see
/// [`by_topic`]) to `pipe`, with `candidate` as the epoch of a topic that
/// has none. Shared by one Redis (one call per batch) and Redis Cluster
/// (one call per topic, each in its own slot).
pub(super) fn add_batch(pipe: &mut redis::Pipeline, shared: &Shared, sha: &str, candidate: &str, groups: &[Vec<Publish>]) {
    let cmd = pipe.cmd("EVALSHA").arg(sha).arg(2 * groups.len());
    for group in groups {
        cmd.arg(shared.key(&group[0].topic, "seq")).arg(shared.key(&group[0].topic, "log"));
    }
    cmd.arg(candidate).arg(shared.seq_ttl_ms());
    for group in groups {
        let topic = &group[0].topic;
        let (max_messages, age_ms) = shared.retention(topic);
        cmd.arg(shared.key(topic, "ch")).arg(max_messages).arg(age_ms).arg(shared.history.max_topic_bytes).arg(group.len());
        for p in group {
            let (kind, body) = encode_body(&p.body, p.key.as_deref());
            cmd.arg(&*p.sender).arg(p.timestamp_ms).arg(&*kind).arg(body);
        }
    }
}

/// Ack or refuse every message of `groups` from the batch script's reply
/// (`{first seq, epoch}` per group, `{-1, error}` for a refused topic).
pub(super) fn settle(shared: &Shared, groups: Vec<Vec<Publish>>, reply: Value) {
    let sink = shared.sink();
    let results = match redis::from_owned_redis_value::<Vec<(i64, String)>>(reply) {
        Ok(r) if r.len() == groups.len() => r,
        other => {
            let error = match other {
                Ok(r) => format!("{} results for {} topics", r.len(), groups.len()),
                Err(e) => e.to_string(),
            };
            tracing::warn!(redis = %shared.target, %error, "redis broker: unexpected reply to the publish script");
            for p in groups.iter().flatten() {
                sink.reject(&p.origin, &p.topic, &BrokerError::Unavailable("redis refused the message".into()));
            }
            return;
        }
    };
    for (group, (first, epoch)) in groups.into_iter().zip(results) {
        if first < 1 {
            tracing::warn!(redis = %shared.target, topic = %group[0].topic, error = %epoch, "redis broker: redis refused a topic's messages");
            for p in &group {
                sink.reject(&p.origin, &p.topic, &BrokerError::Unavailable("redis refused the message".into()));
            }
            continue;
        }
        for (i, p) in group.iter().enumerate() {
            sink.ack(&p.origin, &p.topic, &epoch, first as u64 + i as u64);
        }
    }
}

/// Publish a batch in one call of the batch script; ack or refuse every
/// message. Err only when Redis is unreachable (the batch is refused, and
/// the caller reconnects); a reply that is an error refuses the batch.
async fn publish_batch(shared: &Shared, sha: &str, scripts: &Scripts, con: &mut Con, batch: &mut Vec<Publish>) -> RedisResult<()> {
    let groups = by_topic(std::mem::take(batch));
    let candidate = new_epoch();
    let refuse = |groups: &[Vec<Publish>], error: &BrokerError| {
        let sink = shared.sink();
        for p in groups.iter().flatten() {
            sink.reject(&p.origin, &p.topic, error);
        }
    };
    for round in 0..2 {
        let mut pipe = redis::pipe();
        add_batch(&mut pipe, shared, sha, &candidate, &groups);
        let reply = match con.req_packed_commands(&pipe, 0, 1).await {
            Ok(mut replies) => replies.pop().ok_or_else(|| RedisError::from((ErrorKind::ResponseError, "no reply"))).and_then(|r| r.extract_error()),
            Err(e) => Err(e),
        };
        match reply {
            Ok(reply) => {
                settle(shared, groups, reply);
                return Ok(());
            }
            // Scripts were flushed (SCRIPT FLUSH): load again and retry.
            Err(e) if e.kind() == ErrorKind::NoScriptError && round == 0 => {
                if let Err(e) = scripts.publish.prepare_invoke().load_async(con).await {
                    refuse(&groups, &unreachable());
                    return Err(e);
                }
            }
            // Redis answered with an error (out of memory, busy): refused.
            Err(e) if e.code().is_some() => {
                tracing::warn!(redis = %shared.target, error = %e, "redis broker: redis refused a batch of messages");
                refuse(&groups, &BrokerError::Unavailable("redis refused the message".into()));
                return Ok(());
            }
            Err(e) => {
                refuse(&groups, &unreachable());
                return Err(e);
            }
        }
    }
    Ok(())
}

/// Send one presence change. On Redis Cluster the node's topic set is in
/// another slot than the topic's keys: it is updated by a command of its
/// own (before a join, after a leave, so a reaper never misses a session).
pub(super) async fn announce(shared: &Shared, scripts: &Scripts, con: &mut Con, change: PresenceChange) -> RedisResult<()> {
    let cluster = shared.backend.is_cluster();
    let last = change.local_count == 0;
    if cluster && change.joined {
        redis::cmd("SADD").arg(node_topics(&shared.node)).arg(&*change.topic).exec_async(con).await?;
    }
    let mut call = scripts.presence.key(shared.key(&change.topic, "who"));
    if !cluster {
        call.key(node_topics(&shared.node));
    }
    let _count: u64 = call
        .arg(if change.joined { "join" } else { "leave" })
        .arg(&*change.session)
        .arg(&shared.node)
        .arg(shared.key(&change.topic, "ch"))
        .arg(&*change.topic)
        .arg(if last { "1" } else { "0" })
        .invoke_async(con)
        .await?;
    if cluster && !change.joined && last {
        redis::cmd("SREM").arg(node_topics(&shared.node)).arg(&*change.topic).exec_async(con).await?;
    }
    Ok(())
}

/// Refresh this node's heartbeat key and remove the sessions of dead nodes.
pub(super) async fn beat(shared: &Shared, scripts: &Scripts, con: &mut Con) -> RedisResult<()> {
    // Two commands, not a pipeline: on Redis Cluster the keys are in two slots.
    redis::cmd("SET").arg(node_key(&shared.node)).arg(1).arg("PX").arg(NODE_TTL.as_millis() as u64).exec_async(con).await?;
    redis::cmd("SADD").arg(NODES).arg(&shared.node).exec_async(con).await?;
    let reaped: u64 = if shared.backend.is_cluster() { reap_cluster(shared, scripts, con).await? } else { scripts.reap.key(NODES).invoke_async(con).await? };
    if reaped > 0 {
        tracing::info!(reaped, "redis broker: removed the presence of nodes that stopped beating");
    }
    Ok(())
}

/// [`scripts::REAP`] on Redis Cluster, where one script cannot reach every
/// topic's slot: per dead node, each of its topics in turn
/// ([`scripts::REAP_TOPIC`]), then its topic set and its name.
async fn reap_cluster(shared: &Shared, scripts: &Scripts, con: &mut Con) -> RedisResult<u64> {
    let nodes: Vec<String> = redis::cmd("SMEMBERS").arg(NODES).query_async(con).await?;
    let mut reaped = 0;
    for node in nodes {
        let alive: bool = redis::cmd("EXISTS").arg(node_key(&node)).query_async(con).await?;
        if alive {
            continue;
        }
        let topics: Vec<String> = redis::cmd("SMEMBERS").arg(node_topics(&node)).query_async(con).await?;
        for topic in &topics {
            let _removed: u64 = scripts.reap.key(shared.key(topic, "who")).arg(&node).arg(shared.key(topic, "ch")).invoke_async(con).await?;
        }
        redis::cmd("DEL").arg(node_topics(&node)).exec_async(con).await?;
        redis::cmd("SREM").arg(NODES).arg(&node).exec_async(con).await?;
        reaped += 1;
    }
    Ok(reaped)
}

/// Presence changes overflowed the queue: send what is queued (in order),
/// then make each overflowed topic's presence match this node's sessions.
/// (The scripts are idempotent: a change applied by both is announced once.)
pub(super) async fn resync_overflowed(shared: &Shared, scripts: &Scripts, con: &mut Con, presence: &mut mpsc::Receiver<PresenceChange>) -> RedisResult<()> {
    while let Ok(change) = presence.try_recv() {
        announce(shared, scripts, con, change).await?;
    }
    let topics: Vec<Arc<str>> = shared.presence_overflow.lock().unwrap_or_else(|p| p.into_inner()).drain().collect();
    for topic in &topics {
        let sessions: Vec<Arc<str>> = {
            let local = shared.local.lock().unwrap_or_else(|p| p.into_inner());
            local.get(topic).map(|s| s.iter().cloned().collect()).unwrap_or_default()
        };
        resync_topic(shared, scripts, con, topic, &sessions).await?;
    }
    tracing::debug!(topics = topics.len(), "redis broker: presence queue overflowed; topics resynchronised");
    Ok(())
}

/// Make `topic`'s presence in Redis match this node's `sessions`.
async fn resync_topic(shared: &Shared, scripts: &Scripts, con: &mut Con, topic: &str, sessions: &[Arc<str>]) -> RedisResult<()> {
    let cluster = shared.backend.is_cluster();
    if cluster && !sessions.is_empty() {
        redis::cmd("SADD").arg(node_topics(&shared.node)).arg(topic).exec_async(con).await?;
    }
    let mut call = scripts.resync.key(shared.key(topic, "who"));
    if !cluster {
        call.key(node_topics(&shared.node));
    }
    call.arg(&shared.node).arg(shared.key(topic, "ch")).arg(topic);
    for s in sessions {
        call.arg(&**s);
    }
    let _count: u64 = call.invoke_async(con).await?;
    if cluster && sessions.is_empty() {
        redis::cmd("SREM").arg(node_topics(&shared.node)).arg(topic).exec_async(con).await?;
    }
    Ok(())
}

/// After a (re)connect: make Redis's presence match this node's sessions,
/// for every topic this node has or had subscribers in.
pub(super) async fn resync_presence(shared: &Shared, scripts: &Scripts, con: &mut Con) -> RedisResult<()> {
    let local: Vec<(Arc<str>, Vec<Arc<str>>)> = {
        let local = shared.local.lock().unwrap_or_else(|p| p.into_inner());
        local.iter().map(|(t, s)| (t.clone(), s.iter().cloned().collect())).collect()
    };
    let known: Vec<String> = redis::cmd("SMEMBERS").arg(node_topics(&shared.node)).query_async(con).await?;
    let mut topics: BTreeSet<&str> = known.iter().map(String::as_str).collect();
    topics.extend(local.iter().map(|(t, _)| &**t));
    for topic in topics {
        let sessions = local.iter().find(|(t, _)| &**t == topic).map(|(_, s)| s.as_slice()).unwrap_or(&[]);
        resync_topic(shared, scripts, con, topic, sessions).await?;
    }
    Ok(())
}
