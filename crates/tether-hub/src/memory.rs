//! [`MemoryBroker`]: the in-process broker. Sequence numbers per topic,
//! delivery by direct call, and a bounded history per topic (by count, age,
//! number of topics and total bytes) so clients can resume after a
//! reconnect. Its epochs are new on every process start.

use crate::broker::{new_epoch, Broker, BrokerError, DeliverySink, History, HistoryConfig, Publish, Published, SubscribeRequest};
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

/// Bytes a kept message costs besides its payload (names, bookkeeping).
const ENTRY_OVERHEAD: usize = 96;

struct Topic {
    epoch: Arc<str>,
    seq: u64,
    /// Kept messages, oldest first, with the time they were published.
    kept: VecDeque<(Instant, Published)>,
    bytes: usize,
    /// Position in the least-recently-used order (of publishing).
    tick: u64,
    /// Local subscriptions: a topic with any is never forgotten.
    subscribers: usize,
}

#[derive(Default)]
struct Topics {
    map: HashMap<Arc<str>, Topic>,
    /// tick → topic, least recently used first.
    lru: BTreeMap<u64, Arc<str>>,
    bytes: usize,
    tick: u64,
}

/// The in-process broker: one node, sequence numbers and history in memory.
pub struct MemoryBroker {
    sink: OnceLock<Arc<dyn DeliverySink>>,
    config: HistoryConfig,
    /// The lock is held while delivering, which is what keeps per-topic
    /// order when several connections publish at once, and what makes a
    /// subscription's replay and its live delivery meet without a gap.
    topics: Mutex<Topics>,
}

impl Default for MemoryBroker {
    fn default() -> Self {
        Self::with_history(HistoryConfig::default())
    }
}

impl MemoryBroker {
    /// A new in-memory broker with the default history (1000 messages or
    /// 5 minutes per topic).
    pub fn new() -> Self {
        Self::default()
    }

    /// A new in-memory broker keeping this much history.
    pub fn with_history(config: HistoryConfig) -> Self {
        MemoryBroker { sink: OnceLock::new(), config, topics: Mutex::new(Topics::default()) }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Topics> {
        self.topics.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Topics whose sequence is currently kept.
    pub fn topic_count(&self) -> usize {
        self.lock().map.len()
    }

    /// Payload bytes currently kept as history.
    pub fn history_bytes(&self) -> usize {
        self.lock().bytes
    }
}

impl Topics {
    /// The topic's state for a publish, created (with a new epoch) if
    /// needed; marks it most recently used. Making room forgets the least
    /// recently published topic that nobody here is subscribed to: history
    /// bounds are driven by publishing, and a followed topic is kept.
    fn touch(&mut self, topic: &Arc<str>, config: &HistoryConfig) -> &mut Topic {
        self.tick += 1;
        let tick = self.tick;
        if let Some(t) = self.map.get_mut(topic) {
            self.lru.remove(&t.tick);
            t.tick = tick;
            self.lru.insert(tick, topic.clone());
            return self.map.get_mut(topic).expect("present");
        }
        while self.map.len() >= config.max_topics.max(1) {
            let map = &self.map;
            let Some((&oldest, _)) = self.lru.iter().find(|(_, name)| map.get(*name).is_some_and(|t| t.subscribers == 0)) else { break };
            let name = self.lru.remove(&oldest).expect("present");
            if let Some(gone) = self.map.remove(&name) {
                self.bytes -= gone.bytes;
            }
        }
        self.lru.insert(tick, topic.clone());
        self.map.entry(topic.clone()).or_insert_with(|| Topic::new(tick))
    }

    /// The topic's state for a subscription: created if missing (so the
    /// subscriber learns the epoch its messages will carry), without
    /// touching the publishing order and without forgetting anything.
    fn follow(&mut self, topic: &Arc<str>) -> &mut Topic {
        if !self.map.contains_key(topic) {
            self.tick += 1;
            self.lru.insert(self.tick, topic.clone());
            self.map.insert(topic.clone(), Topic::new(self.tick));
        }
        let t = self.map.get_mut(topic).expect("present");
        t.subscribers += 1;
        t
    }

    /// A subscription ended; a topic nobody follows that never had a
    /// message is forgotten at once (it holds nothing worth keeping).
    fn unfollow(&mut self, topic: &str) {
        let Some(t) = self.map.get_mut(topic) else { return };
        t.subscribers = t.subscribers.saturating_sub(1);
        if t.subscribers == 0 && t.seq == 0 {
            let tick = t.tick;
            self.map.remove(topic);
            self.lru.remove(&tick);
        }
    }

    /// Drop the oldest kept messages of the least recently used topics
    /// until the total is within `max_bytes`.
    fn enforce_budget(&mut self, max_bytes: usize) {
        let mut cursor = 0;
        while self.bytes > max_bytes {
            let Some((&tick, name)) = self.lru.range(cursor..).next() else { break };
            cursor = tick + 1;
            let Some(t) = self.map.get_mut(name) else { continue };
            while self.bytes > max_bytes {
                let Some((_, old)) = t.kept.pop_front() else { break };
                let size = old.body.len() + ENTRY_OVERHEAD;
                t.bytes -= size;
                self.bytes -= size;
            }
        }
    }
}

impl Topic {
    fn new(tick: u64) -> Topic {
        Topic { epoch: Arc::from(new_epoch()), seq: 0, kept: VecDeque::new(), bytes: 0, tick, subscribers: 0 }
    }

    fn expire(&mut self, now: Instant, (max_messages, max_age): (usize, Duration)) -> usize {
        let mut freed = 0;
        while let Some((at, old)) = self.kept.front() {
            if self.kept.len() <= max_messages && now.duration_since(*at) <= max_age {
                break;
            }
            freed += old.body.len() + ENTRY_OVERHEAD;
            self.kept.pop_front();
        }
        self.bytes -= freed;
        freed
    }
}

impl Broker for MemoryBroker {
    fn start(&self, sink: Arc<dyn DeliverySink>) {
        let _ = self.sink.set(sink);
    }

    fn publish(&self, msg: Publish) -> Result<(), BrokerError> {
        let sink = self.sink.get().ok_or_else(|| BrokerError::Unavailable("broker not started".into()))?;
        let now = Instant::now();
        let mut topics = self.lock();
        let topic = topics.touch(&msg.topic, &self.config);
        topic.seq += 1;
        let published = Published {
            topic: msg.topic,
            epoch: topic.epoch.clone(),
            seq: topic.seq,
            sender: msg.sender,
            timestamp_ms: msg.timestamp_ms,
            body: msg.body,
            key: msg.key,
        };
        let mut added = 0;
        let retention = self.config.retention(&published.topic);
        if retention.0 > 0 {
            added = published.body.len() + ENTRY_OVERHEAD;
            topic.bytes += added;
            topic.kept.push_back((now, published.clone()));
        }
        let freed = topic.expire(now, retention);
        topics.bytes = topics.bytes + added - freed;
        topics.enforce_budget(self.config.max_bytes);
        sink.deliver(&published);
        drop(topics);
        sink.ack(&msg.origin, &published.topic, &published.epoch, published.seq);
        Ok(())
    }

    fn subscribe(&self, request: SubscribeRequest) {
        let Some(sink) = self.sink.get() else { return };
        let now = Instant::now();
        let mut topics = self.lock();
        let retention = self.config.retention(&request.topic);
        let topic = topics.follow(&request.topic);
        let freed = topic.expire(now, retention);
        let mut history = History { epoch: topic.epoch.clone(), last_seq: topic.seq, messages: Vec::new() };
        if let Some(resume) = &request.resume {
            let same_epoch = resume.epoch.as_deref().is_none_or(|e| e == &*topic.epoch);
            let after = if same_epoch { resume.since } else { 0 };
            history.messages = topic.kept.iter().filter(|(_, m)| m.seq > after).map(|(_, m)| m.clone()).collect();
        }
        topics.bytes -= freed;
        // Answer under the lock: no publish on this topic can slip between
        // the history read and the switch to live delivery.
        sink.subscribed(request, history);
    }

    fn unsubscribe(&self, topic: &Arc<str>) {
        self.lock().unfollow(topic);
    }

    fn name(&self) -> &'static str {
        "memory"
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::broker::{Body, BrokerError, Origin, Resume};
    use std::sync::Mutex as StdMutex;

    #[derive(Default)]
    struct Recorder {
        delivered: StdMutex<Vec<(String, u64)>>,
        answers: StdMutex<Vec<History>>,
    }
    impl DeliverySink for Recorder {
        fn deliver(&self, msg: &Published) {
            self.delivered.lock().unwrap().push((msg.topic.to_string(), msg.seq));
        }
        fn ack(&self, _: &Origin, _: &str, _: &str, _: u64) {}
        fn reject(&self, _: &Origin, _: &str, _: &BrokerError) {}
        fn subscribed(&self, _: SubscribeRequest, history: History) {
            self.answers.lock().unwrap().push(history);
        }
        fn presence(&self, _: &str, _: bool, _: &str, _: u64) {}
        fn resync(&self, _: &str, _: &str, _: u64) {}
    }

    fn publish(b: &MemoryBroker, topic: &str, text: &str) {
        let msg = Publish {
            topic: Arc::from(topic),
            sender: Arc::from("s"),
            timestamp_ms: 0,
            body: Body::Text(Arc::from(text)),
            key: None,
            origin: Origin { conn: 1, id: None },
        };
        b.publish(msg).unwrap();
    }

    fn resume(b: &MemoryBroker, rec: &Recorder, topic: &str, since: u64, epoch: Option<&str>) -> History {
        let resume = Some(Resume { since, epoch: epoch.map(str::to_string) });
        b.subscribe(SubscribeRequest { conn: 1, topic: Arc::from(topic), resume, id: None });
        rec.answers.lock().unwrap().pop().unwrap()
    }

    fn broker(config: HistoryConfig) -> (MemoryBroker, Arc<Recorder>) {
        let b = MemoryBroker::with_history(config);
        let rec = Arc::new(Recorder::default());
        b.start(rec.clone());
        (b, rec)
    }

    #[test]
    fn replays_what_was_missed_within_the_window() {
        let (b, rec) = broker(HistoryConfig { max_messages: 5, ..HistoryConfig::default() });
        for i in 1..=8 {
            publish(&b, "t", &i.to_string());
        }
        let h = resume(&b, &rec, "t", 0, None);
        assert_eq!(h.last_seq, 8);
        let epoch = h.epoch.to_string();
        // Only the newest 5 are kept.
        assert_eq!(h.messages.iter().map(|m| m.seq).collect::<Vec<_>>(), vec![4, 5, 6, 7, 8]);
        let h = resume(&b, &rec, "t", 6, Some(&epoch));
        assert_eq!(h.messages.iter().map(|m| m.seq).collect::<Vec<_>>(), vec![7, 8]);
        let h = resume(&b, &rec, "t", 8, Some(&epoch));
        assert!(h.messages.is_empty());
        // Another epoch: the whole window, so the hub can report the gap.
        let h = resume(&b, &rec, "t", 6, Some("other"));
        assert_eq!(h.messages.len(), 5);
        assert_eq!(rec.delivered.lock().unwrap().len(), 8);
    }

    #[test]
    fn old_messages_age_out() {
        let (b, rec) = broker(HistoryConfig { max_age: Duration::from_millis(30), ..HistoryConfig::default() });
        publish(&b, "t", "old");
        std::thread::sleep(Duration::from_millis(60));
        publish(&b, "t", "new");
        let h = resume(&b, &rec, "t", 0, None);
        assert_eq!(h.messages.iter().map(|m| m.seq).collect::<Vec<_>>(), vec![2]);
    }

    #[test]
    fn topics_and_bytes_are_capped() {
        let (b, rec) = broker(HistoryConfig { max_topics: 3, max_bytes: 10 * (100 + ENTRY_OVERHEAD), ..HistoryConfig::default() });
        let first_epoch = resume(&b, &rec, "t0", 0, None).epoch;
        b.unsubscribe(&Arc::from("t0")); // nobody follows t0: it may be forgotten
        for t in 0..5 {
            for _ in 0..4 {
                publish(&b, &format!("t{t}"), &"x".repeat(100));
            }
        }
        assert_eq!(b.topic_count(), 3);
        assert!(b.history_bytes() <= 10 * (100 + ENTRY_OVERHEAD), "{}", b.history_bytes());
        // t0 was forgotten: it comes back with a new epoch and no history.
        let h = resume(&b, &rec, "t0", 4, Some(&first_epoch));
        assert_ne!(h.epoch, first_epoch);
        assert_eq!(h.last_seq, 0);
        // The most recent topic kept its newest messages.
        let h = resume(&b, &rec, "t4", 0, None);
        assert_eq!(h.messages.last().map(|m| m.seq), Some(4));
    }

    #[test]
    fn subscribing_never_forgets_a_topic_and_followed_topics_are_kept() {
        let (b, rec) = broker(HistoryConfig { max_topics: 10, ..HistoryConfig::default() });
        for i in 1..=5 {
            publish(&b, "quiet", &i.to_string());
        }
        let epoch = resume(&b, &rec, "quiet", 0, None).epoch;
        b.unsubscribe(&Arc::from("quiet"));
        // Throwaway subscriptions, far more than the topic cap.
        for i in 0..10_050 {
            let t: Arc<str> = Arc::from(format!("junk-{i}"));
            b.subscribe(SubscribeRequest { conn: 2, topic: t.clone(), resume: None, id: None });
            b.unsubscribe(&t);
        }
        assert_eq!(b.topic_count(), 1, "throwaway topics are not kept");
        let h = resume(&b, &rec, "quiet", 2, Some(&epoch));
        assert_eq!(h.epoch, epoch);
        assert_eq!(h.messages.iter().map(|m| m.seq).collect::<Vec<_>>(), vec![3, 4, 5]);
        // "quiet" is followed now: publishing to many other topics keeps it.
        for i in 0..50 {
            publish(&b, &format!("busy-{i}"), "x");
        }
        assert!(b.topic_count() <= 11);
        let h = resume(&b, &rec, "quiet", 5, Some(&epoch));
        assert_eq!((h.epoch.clone(), h.last_seq), (epoch, 5));
    }

    #[test]
    fn zero_history_keeps_sequence_but_no_messages() {
        let (b, rec) = broker(HistoryConfig { max_messages: 0, ..HistoryConfig::default() });
        publish(&b, "t", "a");
        publish(&b, "t", "b");
        let h = resume(&b, &rec, "t", 0, None);
        assert_eq!((h.last_seq, h.messages.len()), (2, 0));
        assert_eq!(b.history_bytes(), 0);
    }

    #[test]
    fn a_prefix_keeps_its_own_history() {
        let config = HistoryConfig {
            max_messages: 5,
            prefixes: vec![crate::broker::HistoryRetention { prefix: "chat:".into(), max_messages: 2, max_age: Duration::from_secs(60) }, crate::broker::HistoryRetention { prefix: "chat:log:".into(), max_messages: 0, max_age: Duration::from_secs(60) }],
            ..HistoryConfig::default()
        };
        assert_eq!(config.retention("chat:log:x").0, 0, "the longest prefix wins");
        let (b, rec) = broker(config);
        for topic in ["chat:a", "news", "chat:log:x"] {
            for i in 0..8 {
                publish(&b, topic, &format!("m{i}"));
            }
        }
        let kept = |topic: &str| resume(&b, &rec, topic, 0, None).messages.iter().map(|m| m.seq).collect::<Vec<_>>();
        assert_eq!(kept("chat:a"), [7, 8]);
        assert_eq!(kept("news"), [4, 5, 6, 7, 8]);
        assert_eq!(kept("chat:log:x"), Vec::<u64>::new());
    }
}
