//! The subscribing side of the Redis broker: one Pub/Sub connection for the
//! channels of the topics this node follows, and the per-topic position
//! `(epoch, seq)` of the last message delivered here. A message that does
//! not follow that position sends the reader to the topic's stream first,
//! so a dropped connection or a reconnect loses nothing that is still kept;
//! what is no longer kept is reported to subscribers (`resync`).
//!
//! The hub's subscription changes reach the reader through [`PendingOps`](super::pending::PendingOps):
//! coalesced per topic under a mutex, with a wakeup. Nothing is ever
//! refused (an unsubscribe lost would leak a followed channel; a subscribe
//! not answered would hold its subscriber's messages for good), and nothing
//! grows past the hub's own limits: per topic, two counts and at most one
//! waiting request per connection.

use super::backend::{Con, Incoming, Sub};
use super::pending::TopicOps;
use super::scripts::{self, decode_entries, decode_event, decode_sync, id_before, Event};
use super::{report_down, Backoff, Shared, CONNECT_TIMEOUT, NODE_BEAT, RESPONSE_TIMEOUT};
use crate::broker::{new_epoch, History, Published, Resume, SubscribeRequest};
use redis::{RedisError, RedisResult, Script};
use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Stream entries read per command when replaying or catching up: one
/// read never returns the whole stream, and a page is bounded in bytes by
/// the topic's byte cap.
const REPLAY_PAGE: usize = 128;
/// Topics handled per wakeup before the reader looks at Pub/Sub again.
const TOPICS_PER_ROUND: usize = 64;
/// Sequence numbers beyond this cannot exist (Redis counts in i64, and Lua
/// compares in doubles, exact up to 2^53): a larger `since` is clamped to
/// it, which changes no answer.
const SEQ_LIMIT: u64 = 1 << 53;
/// On Redis Cluster, topics whose shard failed (subscribe or catch-up)
/// are tried again this often, without holding up the others.
const HEAL_EVERY: Duration = Duration::from_millis(500);


/// A topic this node follows.
struct Followed {
    /// Local subscriptions.
    refs: usize,
    /// Subscribed on the current Pub/Sub connection.
    on_channel: bool,
    /// The position was read from Redis (else `epoch` and `last` mean nothing yet).
    synced: bool,
    /// (Redis Cluster) A catch-up failed: live messages are not delivered
    /// (they would skip the gap) until one succeeds.
    stale: bool,
    /// The last message delivered on this node.
    epoch: Arc<str>,
    last: u64,
}

/// Where a topic stands, and the kept messages a resume asked for.
struct Synced {
    epoch: Arc<str>,
    seq: u64,
    /// Oldest first, none after `seq`.
    messages: Vec<Published>,
}

struct Reader {
    shared: Arc<Shared>,
    sync: Script,
    topics: HashMap<Arc<str>, Followed>,
    /// Some topic waits for [`Reader::heal`].
    unhealed: bool,
}

pub(super) fn failed(what: &str) -> RedisError {
    RedisError::from(std::io::Error::new(std::io::ErrorKind::ConnectionAborted, what.to_string()))
}

pub(super) async fn run(shared: Arc<Shared>) {
    let mut reader = Reader { shared: shared.clone(), sync: Script::new(scripts::SYNC), topics: HashMap::new(), unhealed: false };
    let mut backoff = Backoff::new();
    let mut attempts = 0u32;
    let mut down_since: Option<Instant> = None;
    loop {
        let error = match reader.session(&mut backoff, &mut attempts, &mut down_since).await {
            None => return,
            Some(e) => e,
        };
        attempts += 1;
        down_since.get_or_insert_with(Instant::now);
        report_down(&shared.reader, "subscription", &shared.target, &error, attempts);
        shared.check.notify_one();
        tokio::time::sleep(backoff.next()).await;
        if shared.closed.load(Ordering::Acquire) {
            return;
        }
    }
}

impl Reader {
    fn cluster(&self) -> bool {
        self.shared.backend.is_cluster()
    }

    /// One connection's life; `None` when the broker was dropped.
    async fn session(&mut self, backoff: &mut Backoff, attempts: &mut u32, down_since: &mut Option<Instant>) -> Option<RedisError> {
        let mut con = match self.shared.connect().await {
            Ok(c) => c,
            Err(e) => return Some(e),
        };
        let mut sub = match self.shared.backend.subscriber(CONNECT_TIMEOUT, RESPONSE_TIMEOUT).await {
            Ok(s) => s,
            Err(e) => return Some(e),
        };
        // Channels first, then the streams: nothing published after the
        // catch-up read can be missed.
        for followed in self.topics.values_mut() {
            followed.on_channel = false;
        }
        let followed: Vec<Arc<str>> = self.topics.keys().cloned().collect();
        for topic in &followed {
            match self.subscribe_channel(&mut sub, topic).await {
                Ok(()) => {
                    if let Some(f) = self.topics.get_mut(topic) {
                        f.on_channel = true;
                    }
                }
                // On a cluster, one shard down holds up only its topics.
                Err(_) if self.cluster() => self.unhealed = true,
                Err(e) => return Some(e),
            }
        }
        for topic in &followed {
            if self.topics.get(topic).is_some_and(|f| f.on_channel) {
                if let Err(e) = self.catch_up_or_mark(&mut con, topic).await {
                    return Some(e);
                }
            }
        }
        self.shared.reader.set(true, "connected".into());
        backoff.reset();
        match down_since.take() {
            Some(at) => tracing::info!(redis = %self.shared.target, after = ?at.elapsed(), attempts = *attempts, topics = followed.len(), "redis broker: subscriptions reconnected, topics caught up"),
            None => tracing::info!(redis = %self.shared.target, "redis broker: subscriptions connected"),
        }
        *attempts = 0;
        // Requests that waited (or were interrupted) while Redis was away.
        if let Err(e) = self.handle_pending(&mut sub, &mut con).await {
            return Some(e);
        }
        let mut ping = tokio::time::interval_at(tokio::time::Instant::now() + NODE_BEAT, NODE_BEAT);
        let mut heal = tokio::time::interval(HEAL_EVERY);
        let mut map_check = tokio::time::interval(HEAL_EVERY * 2);
        map_check.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        heal.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                incoming = sub.next() => {
                    let Some(incoming) = incoming else { return Some(failed("pub/sub connection closed")) };
                    if let Err(e) = self.on_incoming(incoming, &mut con).await {
                        return Some(e);
                    }
                }
                () = self.shared.ops_ready.notified() => {
                    if self.shared.closed.load(Ordering::Acquire) {
                        return None;
                    }
                    if let Err(e) = self.handle_pending(&mut sub, &mut con).await {
                        return Some(e);
                    }
                }
                _ = heal.tick(), if self.unhealed => self.heal(&mut sub, &mut con).await,
                _ = map_check.tick(), if self.cluster() => self.check_map(&mut sub).await,
                _ = ping.tick() => {
                    match tokio::time::timeout(RESPONSE_TIMEOUT, sub.ping()).await {
                        Ok(Ok(())) => {}
                        Ok(Err(e)) => return Some(e),
                        Err(_) => return Some(failed("pub/sub ping timed out")),
                    }
                }
            }
        }
    }

    /// What the Pub/Sub side received.
    async fn on_incoming(&mut self, incoming: Incoming, con: &mut Con) -> RedisResult<()> {
        match incoming {
            Incoming::Message { channel, payload } => self.on_message(&channel, &payload, con).await,
            Incoming::Unsubscribed(channel) => {
                // Still followed: the server ended it (its slot moved).
                let topic = self.shared.backend.topic_of_channel(&channel).map(|t| Arc::<str>::from(&*t));
                if let Some(f) = topic.and_then(|t| self.topics.get_mut(&t)) {
                    f.on_channel = false;
                    self.unhealed = true;
                }
                Ok(())
            }
            Incoming::Lost(channels) => {
                // A master's connection dropped: its topics are subscribed
                // again (where the slot map says) and caught up.
                self.mark_lost(&channels);
                Ok(())
            }
            Incoming::Overflowed => {
                tracing::warn!(topics = self.topics.len(), "redis broker: pub/sub queue full, messages dropped; catching up every topic from its stream");
                let topics: Vec<Arc<str>> = self.topics.keys().cloned().collect();
                for topic in &topics {
                    self.catch_up_or_mark(con, topic).await?;
                }
                Ok(())
            }
            Incoming::Other => Ok(()),
        }
    }

    /// [`Reader::catch_up`]; on a cluster a failure marks the topic stale
    /// (for [`Reader::heal`]) instead of failing the session.
    async fn catch_up_or_mark(&mut self, con: &mut Con, topic: &Arc<str>) -> RedisResult<()> {
        let timeout = if self.cluster() { HEAL_EVERY * 2 } else { RESPONSE_TIMEOUT * 2 };
        let result = match tokio::time::timeout(timeout, self.catch_up(con, topic)).await {
            Ok(r) => r,
            Err(_) => Err(failed("catch-up timed out")),
        };
        match result {
            Err(_) if self.cluster() => {
                if let Some(f) = self.topics.get_mut(topic) {
                    f.stale = true;
                    self.unhealed = true;
                }
                Ok(())
            }
            other => other,
        }
    }

    /// (Redis Cluster) Read the slot map; topics whose slot changed master
    /// are subscribed again (on the new master) and caught up.
    async fn check_map(&mut self, sub: &mut Sub) {
        let Sub::Cluster(shards) = sub else { return };
        let Ok(Ok(moved)) = tokio::time::timeout(HEAL_EVERY * 2, shards.refresh_map()).await else { return };
        if !moved.is_empty() {
            tracing::info!(topics = moved.len(), "redis broker: slots changed master; subscribing their topics again");
            self.mark_lost(&moved);
        }
    }

    /// These channels are no longer subscribed: their topics wait for [`Reader::heal`].
    fn mark_lost(&mut self, channels: &[String]) {
        for channel in channels {
            let topic = self.shared.backend.topic_of_channel(channel).map(|t| Arc::<str>::from(&*t));
            if let Some(f) = topic.and_then(|t| self.topics.get_mut(&t)) {
                f.on_channel = false;
                self.unhealed = true;
            }
        }
    }

    /// (Redis Cluster) Subscribe again and catch up the topics whose shard
    /// failed, stopping at the first that still fails (the rest wait for
    /// the next round, so a shard down costs one short timeout per round).
    async fn heal(&mut self, sub: &mut Sub, con: &mut Con) {
        let topics: Vec<Arc<str>> = self.topics.iter().filter(|(_, f)| !f.on_channel || f.stale).map(|(t, _)| t.clone()).collect();
        for topic in &topics {
            if self.topics.get(topic).is_some_and(|f| !f.on_channel) {
                match tokio::time::timeout(HEAL_EVERY * 2, self.subscribe_channel(sub, topic)).await {
                    Ok(Ok(())) => {
                        if let Some(f) = self.topics.get_mut(topic) {
                            f.on_channel = true;
                            f.stale = f.synced;
                        }
                    }
                    _ => return,
                }
            }
            if self.topics.get(topic).is_some_and(|f| f.stale) {
                let _ = self.catch_up_or_mark(con, topic).await;
                if self.topics.get(topic).is_some_and(|f| f.stale) {
                    return;
                }
            }
        }
        self.unhealed = false;
        tracing::info!(topics = topics.len(), "redis broker: topics subscribed again and caught up");
        // Requests held back by the failure.
        self.shared.ops_ready.notify_one();
    }

    /// Apply waiting subscription changes, a bounded number of topics at a
    /// time (the rest after a look at Pub/Sub).
    async fn handle_pending(&mut self, sub: &mut Sub, con: &mut Con) -> RedisResult<()> {
        for _ in 0..TOPICS_PER_ROUND {
            let Some((topic, ops)) = self.shared.ops.lock().unwrap_or_else(|p| p.into_inner()).next() else { return Ok(()) };
            if let Err(e) = self.apply(&topic, ops, sub, con).await {
                if !self.cluster() {
                    return Err(e);
                }
                // The topic's requests wait again; the next heal round
                // tries again, other topics meanwhile go on.
                if let Some(f) = self.topics.get_mut(&topic) {
                    f.on_channel = f.on_channel && f.synced;
                }
                self.unhealed = true;
                return Ok(());
            }
        }
        self.shared.ops_ready.notify_one();
        Ok(())
    }

    /// One topic's changes: count, follow or leave the channel, answer.
    async fn apply(&mut self, topic: &Arc<str>, ops: TopicOps, sub: &mut Sub, con: &mut Con) -> RedisResult<()> {
        // Counts first: local state, cannot fail, never applied twice.
        let followed = self.topics.entry(topic.clone()).or_insert_with(|| Followed { refs: 0, on_channel: false, synced: false, stale: false, epoch: Arc::from(""), last: 0 });
        followed.refs = (followed.refs + ops.added).saturating_sub(ops.removed);
        if followed.refs == 0 {
            // Every subscription of the topic here has ended: the requests'
            // subscribers are gone, nobody waits for an answer (their held
            // publishes go now).
            let on_channel = followed.on_channel;
            self.topics.remove(topic);
            for conn in ops.requests.keys() {
                self.shared.release_awaiting(*conn, topic);
            }
            if on_channel {
                let channel = self.shared.key(topic, "ch");
                tokio::time::timeout(RESPONSE_TIMEOUT, sub.unsubscribe(channel)).await.map_err(|_| failed("unsubscribe timed out"))??;
            }
            return Ok(());
        }
        let mut requests: Vec<SubscribeRequest> = ops.requests.into_values().collect();
        let result = self.answer(topic, &mut requests, sub, con).await;
        if result.is_err() {
            self.shared.ops.lock().unwrap_or_else(|p| p.into_inner()).retry(topic, requests);
        }
        result
    }

    /// Answer `requests` (removing each once answered): the channel first,
    /// then where the topic stands.
    async fn answer(&mut self, topic: &Arc<str>, requests: &mut Vec<SubscribeRequest>, sub: &mut Sub, con: &mut Con) -> RedisResult<()> {
        if requests.is_empty() {
            return Ok(());
        }
        if self.topics.get(topic).is_some_and(|f| !f.on_channel) {
            self.subscribe_channel(sub, topic).await?;
            if let Some(f) = self.topics.get_mut(topic) {
                f.on_channel = true;
            }
        }
        while let Some(request) = requests.last() {
            let followed = self.topics.get(topic).filter(|f| f.synced && !f.stale);
            let history = match (followed, &request.resume) {
                // Already followed here and nothing to replay: live delivery
                // continues after what this node delivered last, exactly.
                (Some(f), None) => History { epoch: f.epoch.clone(), last_seq: f.last, messages: Vec::new() },
                _ => {
                    let synced = self.sync(con, topic, request.resume.as_ref(), false).await?;
                    if let Some(f) = self.topics.get_mut(topic).filter(|f| !f.synced) {
                        (f.synced, f.epoch, f.last) = (true, synced.epoch.clone(), synced.seq);
                    }
                    History { epoch: synced.epoch, last_seq: synced.seq, messages: synced.messages }
                }
            };
            let Some(request) = requests.pop() else { break };
            let conn = request.conn;
            self.shared.sink().subscribed(clamped(request), history);
            // In effect: what the connection published since goes to Redis,
            // after the starting point just given.
            self.shared.release_awaiting(conn, topic);
        }
        Ok(())
    }

    /// Where `topic` stands, with the kept messages after `resume` (all of
    /// the window if its epoch differs), read newest first in pages of
    /// [`REPLAY_PAGE`] and at most the history limit. Reading newest first
    /// keeps the replay contiguous up to `seq` even if trimming runs between
    /// pages: what is lost is at the old end, and the hub tells the client.
    ///
    /// `catch_up`: this node's own position (never a client's): see
    /// [`scripts::SYNC`].
    async fn sync(&self, con: &mut Con, topic: &Arc<str>, resume: Option<&Resume>, catch_up: bool) -> RedisResult<Synced> {
        let since = resume.map(|r| r.since.min(SEQ_LIMIT));
        let claimed = resume.and_then(|r| r.epoch.as_deref()).unwrap_or("*");
        let (limit, age_ms) = self.shared.retention(topic);
        let reply: redis::Value = self
            .sync
            .key(self.shared.key(topic, "seq"))
            .key(self.shared.key(topic, "log"))
            .arg(new_epoch())
            .arg(self.shared.seq_ttl_ms())
            .arg(since.map_or(-1, |s| s as i64))
            .arg(claimed)
            .arg(limit.min(REPLAY_PAGE))
            .arg(age_ms)
            .arg(if catch_up { "1" } else { "0" })
            .invoke_async(con)
            .await?;
        let reply = decode_sync(reply).ok_or_else(|| failed("unexpected reply from the sync script"))?;
        let epoch: Arc<str> = Arc::from(reply.epoch.as_str());
        let Some(since) = since else { return Ok(Synced { epoch, seq: reply.seq, messages: Vec::new() }) };
        let same = claimed == "*" || claimed == &*epoch;
        // Messages wanted: after `since` in the same epoch, else the window.
        let want = if same { reply.seq.saturating_sub(since) } else { reply.seq }.min(limit as u64) as usize;
        let mut messages: Vec<Published> = Vec::new();
        let mut page = decode_entries(topic, &epoch, reply.entries);
        let mut asked = limit.min(REPLAY_PAGE);
        loop {
            let full = page.len() == asked;
            let (mut oldest, mut done) = (None, false);
            for (id, msg) in page {
                if (same && msg.seq <= since) || messages.len() >= want {
                    done = true;
                    break;
                }
                if msg.seq <= reply.seq {
                    messages.push(msg);
                }
                oldest = Some(id);
            }
            let (Some(oldest), false, true) = (oldest, done, full && messages.len() < want) else { break };
            let Some(before) = id_before(&oldest) else { break };
            asked = (want - messages.len()).min(REPLAY_PAGE);
            let entries: redis::Value =
                redis::cmd("XREVRANGE").arg(self.shared.key(topic, "log")).arg(before).arg(reply.cutoff_ms).arg("COUNT").arg(asked).query_async(con).await?;
            page = decode_entries(topic, &epoch, entries);
        }
        messages.reverse();
        Ok(Synced { epoch, seq: reply.seq, messages })
    }

    /// Deliver what this node missed on `topic` (still kept in its stream),
    /// then tell subscribers that are still behind.
    async fn catch_up(&mut self, con: &mut Con, topic: &Arc<str>) -> RedisResult<()> {
        let Some(followed) = self.topics.get(topic).filter(|f| f.synced) else { return Ok(()) };
        let resume = Resume { since: followed.last, epoch: Some(followed.epoch.to_string()) };
        let Synced { epoch, seq, messages } = self.sync(con, topic, Some(&resume), true).await?;
        let Some(followed) = self.topics.get_mut(topic) else { return Ok(()) };
        let sink = self.shared.sink();
        if followed.epoch != epoch {
            tracing::warn!(%topic, old = %followed.epoch, new = %epoch, "redis broker: topic history was reset (new epoch)");
            followed.epoch = epoch.clone();
            followed.last = 0;
        }
        let mut delivered = 0;
        for msg in &messages {
            if msg.seq <= followed.last {
                continue;
            }
            followed.last = msg.seq;
            sink.deliver(msg);
            delivered += 1;
        }
        if followed.last < seq {
            tracing::warn!(%topic, from = followed.last + 1, to = seq, "redis broker: messages no longer kept could not be delivered here");
        }
        followed.last = followed.last.max(seq);
        followed.stale = false;
        if delivered > 0 {
            tracing::debug!(%topic, delivered, "redis broker: caught up from the stream");
        }
        sink.resync(topic, &epoch, seq);
        Ok(())
    }

    async fn on_message(&mut self, channel: &str, payload: &[u8], con: &mut Con) -> RedisResult<()> {
        let Some(topic) = self.shared.backend.topic_of_channel(channel) else { return Ok(()) };
        let Some((topic, followed)) = self.topics.get_key_value(&*topic) else { return Ok(()) };
        let topic = topic.clone();
        let Some(event) = decode_event(payload) else {
            tracing::warn!(%topic, "redis broker: ignored a malformed message on the topic channel");
            return Ok(());
        };
        let (epoch, seq, sender, timestamp_ms, body, key) = match event {
            Event::Presence { joined, session, count } => {
                self.shared.sink().presence(&topic, joined, &session, count);
                return Ok(());
            }
            Event::Message { epoch, seq, sender, timestamp_ms, body, key } => (epoch, seq, sender, timestamp_ms, body, key),
        };
        if !followed.synced || followed.stale {
            // Not answered yet: the first sync sets the position past this.
            // Stale: the next catch-up delivers it from the stream.
            return Ok(());
        }
        let same = *followed.epoch == *epoch;
        if same && seq <= followed.last {
            return Ok(()); // already delivered (by a catch-up)
        }
        if !(same && Some(seq) == followed.last.checked_add(1)) {
            if self.shared.retention(&topic).0 > 0 {
                // A gap or a new epoch: the stream has what is missing.
                self.catch_up_or_mark(con, &topic).await?;
                if self.topics.get(&topic).is_some_and(|f| f.stale) {
                    return Ok(());
                }
            } else if let Some(followed) = self.topics.get_mut(&topic) {
                // No history to fill from: deliver, and the hub tells
                // each subscriber what it missed.
                if !same {
                    followed.epoch = Arc::from(epoch.as_str());
                    followed.last = 0;
                }
            }
        }
        let Some(followed) = self.topics.get_mut(&topic) else { return Ok(()) };
        if *followed.epoch == *epoch && seq > followed.last {
            followed.last = seq;
            let msg = Published { topic, epoch: followed.epoch.clone(), seq, sender, timestamp_ms, body, key };
            self.shared.sink().deliver(&msg);
        }
        Ok(())
    }
}

/// The request as the hub gets it back: a `since` no topic can reach is
/// clamped (the answer is the same, "never sent"), so that no arithmetic on
/// it can overflow.
fn clamped(mut request: SubscribeRequest) -> SubscribeRequest {
    if let Some(resume) = &mut request.resume {
        resume.since = resume.since.min(SEQ_LIMIT);
    }
    request
}

impl Reader {
    async fn subscribe_channel(&mut self, sub: &mut Sub, topic: &str) -> RedisResult<()> {
        let channel = self.shared.key(topic, "ch");
        // One channel per SUBSCRIBE: the client matches one reply per request.
        match tokio::time::timeout(RESPONSE_TIMEOUT, sub.subscribe(channel)).await {
            Ok(result) => result,
            Err(_) => Err(failed("subscribe timed out")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(conn: u64, topic: &Arc<str>, id: &str) -> SubscribeRequest {
        SubscribeRequest { conn, topic: topic.clone(), resume: None, id: Some(serde_json::json!(id)) }
    }

    #[test]
    fn since_is_clamped_where_no_arithmetic_overflows() {
        let topic: Arc<str> = Arc::from("t");
        let mut r = request(1, &topic, "x");
        r.resume = Some(Resume { since: u64::MAX, epoch: None });
        let since = clamped(r).resume.unwrap().since;
        assert_eq!(since, SEQ_LIMIT);
        assert!(since.checked_add(1).is_some());
    }
}
