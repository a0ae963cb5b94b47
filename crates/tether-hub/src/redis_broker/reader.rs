//! The subscribing side of the Redis broker: one Pub/Sub connection for the
//! channels of the topics this node follows, and the per-topic position
//! `(epoch, seq)` of the last message delivered here. A message that does
//! not follow that position sends the reader to the topic's stream first,
//! so a dropped connection or a reconnect loses nothing that is still kept;
//! what is no longer kept is reported to subscribers (`resync`).

use super::scripts::{self, decode_event, decode_sync, key, topic_of_channel, Event};
use super::{report_down, Backoff, Shared, CONNECT_TIMEOUT, NODE_BEAT, RESPONSE_TIMEOUT};
use crate::broker::{new_epoch, History, Published, Resume, SubscribeRequest};
use futures_util::StreamExt;
use redis::aio::{MultiplexedConnection, PubSubSink};
use redis::{RedisError, RedisResult, Script};
use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::Instant;
use tokio::sync::mpsc;

/// A request from the hub, handled in order.
pub(crate) enum ReaderOp {
    Subscribe(SubscribeRequest),
    Unsubscribe(Arc<str>),
}

/// A topic this node follows.
struct Followed {
    /// Local subscriptions.
    refs: usize,
    /// The last message delivered on this node.
    epoch: Arc<str>,
    last: u64,
}

struct Reader {
    shared: Arc<Shared>,
    sync: Script,
    topics: HashMap<Arc<str>, Followed>,
    /// Requests interrupted by a failure, retried first after reconnecting.
    deferred: VecDeque<ReaderOp>,
}

fn failed(what: &str) -> RedisError {
    RedisError::from(std::io::Error::new(std::io::ErrorKind::ConnectionAborted, what.to_string()))
}

pub(super) async fn run(shared: Arc<Shared>, mut ops: mpsc::UnboundedReceiver<ReaderOp>) {
    let mut reader = Reader { shared: shared.clone(), sync: Script::new(scripts::SYNC), topics: HashMap::new(), deferred: VecDeque::new() };
    let mut backoff = Backoff::new();
    let mut attempts = 0u32;
    let mut down_since: Option<Instant> = None;
    loop {
        let error = match reader.session(&mut ops, &mut backoff, &mut attempts, &mut down_since).await {
            None => return,
            Some(e) => e,
        };
        attempts += 1;
        down_since.get_or_insert_with(Instant::now);
        report_down(&shared.reader, "subscription", &shared.target, &error.to_string(), attempts);
        shared.check.notify_one();
        tokio::time::sleep(backoff.next()).await;
    }
}

impl Reader {
    /// One connection's life; `None` when the broker was dropped.
    async fn session(
        &mut self,
        ops: &mut mpsc::UnboundedReceiver<ReaderOp>,
        backoff: &mut Backoff,
        attempts: &mut u32,
        down_since: &mut Option<Instant>,
    ) -> Option<RedisError> {
        let mut con = match self.shared.connect().await {
            Ok(c) => c,
            Err(e) => return Some(e),
        };
        let pubsub = match tokio::time::timeout(CONNECT_TIMEOUT, self.shared.client.get_async_pubsub()).await {
            Ok(Ok(p)) => p,
            Ok(Err(e)) => return Some(e),
            Err(_) => return Some(failed("timed out connecting for pub/sub")),
        };
        let (mut sink, mut stream) = pubsub.split();
        // Channels first, then the streams: nothing published after the
        // catch-up read can be missed.
        let followed: Vec<Arc<str>> = self.topics.keys().cloned().collect();
        for topic in &followed {
            if let Err(e) = subscribe_channel(&mut sink, topic).await {
                return Some(e);
            }
        }
        for topic in &followed {
            if let Err(e) = self.catch_up(&mut con, topic).await {
                return Some(e);
            }
        }
        self.shared.reader.set(true, "connected".into());
        backoff.reset();
        match down_since.take() {
            Some(at) => tracing::info!(redis = %self.shared.target, after = ?at.elapsed(), attempts = *attempts, topics = followed.len(), "redis broker: subscriptions reconnected, topics caught up"),
            None => tracing::info!(redis = %self.shared.target, "redis broker: subscriptions connected"),
        }
        *attempts = 0;
        while let Some(op) = self.deferred.pop_front() {
            if let Err(e) = self.handle(&op, &mut sink, &mut con).await {
                self.deferred.push_front(op);
                return Some(e);
            }
        }
        let mut ping = tokio::time::interval_at(tokio::time::Instant::now() + NODE_BEAT, NODE_BEAT);
        loop {
            tokio::select! {
                msg = stream.next() => {
                    let Some(msg) = msg else { return Some(failed("pub/sub connection closed")) };
                    if let Err(e) = self.on_message(&msg, &mut con).await {
                        return Some(e);
                    }
                }
                op = ops.recv() => {
                    let op = op?;
                    if let Err(e) = self.handle(&op, &mut sink, &mut con).await {
                        self.deferred.push_back(op);
                        return Some(e);
                    }
                }
                _ = ping.tick() => {
                    match tokio::time::timeout(RESPONSE_TIMEOUT, sink.ping::<redis::Value>()).await {
                        Ok(Ok(_)) => {}
                        Ok(Err(e)) => return Some(e),
                        Err(_) => return Some(failed("pub/sub ping timed out")),
                    }
                }
            }
        }
    }

    async fn handle(&mut self, op: &ReaderOp, sink: &mut PubSubSink, con: &mut MultiplexedConnection) -> RedisResult<()> {
        match op {
            ReaderOp::Subscribe(request) => {
                let fresh = !self.topics.contains_key(&request.topic);
                if fresh {
                    subscribe_channel(sink, &request.topic).await?;
                }
                let (epoch, seq, messages) = self.sync(con, &request.topic, request.resume.as_ref()).await?;
                let epoch: Arc<str> = Arc::from(epoch);
                let followed = self.topics.entry(request.topic.clone()).or_insert_with(|| Followed { refs: 0, epoch: epoch.clone(), last: seq });
                followed.refs += 1;
                self.shared.sink().subscribed(request.clone(), History { epoch, last_seq: seq, messages });
            }
            ReaderOp::Unsubscribe(topic) => {
                let Some(followed) = self.topics.get_mut(topic) else { return Ok(()) };
                followed.refs = followed.refs.saturating_sub(1);
                if followed.refs == 0 {
                    self.topics.remove(topic);
                    tokio::time::timeout(RESPONSE_TIMEOUT, sink.unsubscribe(key(topic, "ch"))).await.map_err(|_| failed("unsubscribe timed out"))??;
                }
            }
        }
        Ok(())
    }

    /// Where `topic` stands, with the kept messages after `resume`.
    async fn sync(&self, con: &mut MultiplexedConnection, topic: &Arc<str>, resume: Option<&Resume>) -> RedisResult<(String, u64, Vec<Published>)> {
        let since = resume.map_or(-1, |r| i64::try_from(r.since).unwrap_or(i64::MAX));
        let epoch = resume.and_then(|r| r.epoch.as_deref()).unwrap_or("*");
        let h = &self.shared.history;
        let reply: redis::Value = self
            .sync
            .key(key(topic, "seq"))
            .key(key(topic, "log"))
            .arg(new_epoch())
            .arg(self.shared.seq_ttl_ms())
            .arg(since)
            .arg(epoch)
            .arg(h.max_messages)
            .arg(self.shared.age_ms())
            .invoke_async(con)
            .await?;
        decode_sync(topic, reply).ok_or_else(|| failed("unexpected reply from the sync script"))
    }

    /// Deliver what this node missed on `topic` (still kept in its stream),
    /// then tell subscribers that are still behind.
    async fn catch_up(&mut self, con: &mut MultiplexedConnection, topic: &Arc<str>) -> RedisResult<()> {
        let Some(followed) = self.topics.get(topic) else { return Ok(()) };
        let resume = Resume { since: followed.last, epoch: Some(followed.epoch.to_string()) };
        let (epoch, seq, messages) = self.sync(con, topic, Some(&resume)).await?;
        let Some(followed) = self.topics.get_mut(topic) else { return Ok(()) };
        let sink = self.shared.sink();
        let same = *followed.epoch == *epoch;
        if !same {
            tracing::warn!(%topic, old = %followed.epoch, new = %epoch, "redis broker: topic history was reset (new epoch)");
            followed.epoch = Arc::from(epoch.as_str());
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
        if delivered > 0 {
            tracing::debug!(%topic, delivered, "redis broker: caught up from the stream");
        }
        sink.resync(topic, &epoch, seq);
        Ok(())
    }

    async fn on_message(&mut self, msg: &redis::Msg, con: &mut MultiplexedConnection) -> RedisResult<()> {
        let Some(topic) = topic_of_channel(msg.get_channel_name()) else { return Ok(()) };
        let Some((topic, followed)) = self.topics.get_key_value(topic) else { return Ok(()) };
        let topic = topic.clone();
        let Some(event) = decode_event(msg.get_payload_bytes()) else {
            tracing::warn!(%topic, "redis broker: ignored a malformed message on the topic channel");
            return Ok(());
        };
        let (epoch, seq, sender, timestamp_ms, body) = match event {
            Event::Presence { joined, session, count } => {
                self.shared.sink().presence(&topic, joined, &session, count);
                return Ok(());
            }
            Event::Message { epoch, seq, sender, timestamp_ms, body } => (epoch, seq, sender, timestamp_ms, body),
        };
        let same = *followed.epoch == *epoch;
        if same && seq <= followed.last {
            return Ok(()); // already delivered (by a catch-up)
        }
        if !(same && seq == followed.last + 1) {
            if self.shared.history.max_messages > 0 {
                // A gap or a new epoch: the stream has what is missing.
                self.catch_up(con, &topic).await?;
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
            let msg = Published { topic, epoch: followed.epoch.clone(), seq, sender, timestamp_ms, body };
            self.shared.sink().deliver(&msg);
        }
        Ok(())
    }
}

async fn subscribe_channel(sink: &mut PubSubSink, topic: &str) -> RedisResult<()> {
    // One channel per SUBSCRIBE: the client matches one reply per request.
    match tokio::time::timeout(RESPONSE_TIMEOUT, sink.subscribe(key(topic, "ch"))).await {
        Ok(result) => result,
        Err(_) => Err(failed("subscribe timed out")),
    }
}
