//! Messages with a key: conflation and delta compression.
//!
//! A publish may carry a `key` (a ticker symbol, a sensor id). Two things
//! follow from it, both per (topic, key), a *stream*:
//!
//! - **Conflation.** A keyed message (or any message on a topic under a
//!   `conflate_prefixes` entry, keyed by its key or by the topic alone)
//!   replaces an unsent older message of the same stream in a subscriber's
//!   queue ([`crate::queue`]), so a client that falls behind gets the newest
//!   value of every stream instead of losing arbitrary messages.
//! - **Deltas.** A subscription with `"delta":"merge-patch"` receives, after
//!   a full first message per stream, a JSON Merge Patch (RFC 7396) against
//!   the previous message of the stream. The patch is made once per
//!   published message ([`DeltaCache::patch`]) and shared by every delta
//!   subscriber; each subscriber's queue sends it only if that client was
//!   last sent the message it patches ([`SentKeys::choose`]), else the full
//!   message (after a replay, a gap, a conflated message, or a reconnect).
//!
//! Everything here is bounded: the conflation index covers only what is
//! queued, the per-client positions ([`MAX_SENT_KEYS`]), the per-topic
//! cache of previous contents ([`MAX_CACHED_KEYS`], [`MAX_TOPIC_CACHE_BYTES`])
//! and the hub-wide cache budget (`HubConfig::delta_cache_bytes`). A stream
//! past a bound is sent in full, never wrongly patched.

use crate::broker::{Body, Published};
use crate::envelope;
use serde_json::Value;
use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use tether::v1::delta;
use tether_proto::EncodedFrame;

/// (topic, key): one stream of values. The key is `""` for a topic
/// conflated as a whole (no key given).
pub(crate) type StreamKey = (Arc<str>, Arc<str>);

/// What the queue needs to know of a message with a key: shared by every
/// subscriber it is queued to.
pub(crate) struct KeyedMessage {
    pub stream: StreamKey,
    /// A newer message of the stream replaces this one while it is unsent.
    pub conflate: bool,
    pub epoch: Arc<str>,
    pub seq: u64,
    /// For delta subscribers: the patch frame, and the `seq` of the
    /// message (same stream and epoch) that it patches.
    pub patch: Option<(EncodedFrame, u64)>,
}

/// Streams per connection whose last sent position is remembered (for
/// delta subscriptions); a stream past it is always sent in full.
pub(crate) const MAX_SENT_KEYS: usize = 1024;

/// Streams per topic whose last content is kept to make patches.
pub(crate) const MAX_CACHED_KEYS: usize = 4096;

/// Bytes of kept content per topic (counted as twice the JSON text, for
/// the parsed form).
pub(crate) const MAX_TOPIC_CACHE_BYTES: usize = 4 << 20;

/// A map that costs one pointer until it holds something: every
/// connection's queue has two (the conflation index, [`SentKeys`]) and most
/// connections never use either; an inline `HashMap` is 48 bytes each.
pub(crate) struct LazyMap<K, V>(Option<Box<HashMap<K, V>>>);

impl<K, V> Default for LazyMap<K, V> {
    fn default() -> Self {
        LazyMap(None)
    }
}

impl<K: std::hash::Hash + Eq, V> LazyMap<K, V> {
    pub fn get(&self, k: &K) -> Option<&V> {
        self.0.as_ref()?.get(k)
    }
    pub fn get_mut(&mut self, k: &K) -> Option<&mut V> {
        self.0.as_mut()?.get_mut(k)
    }
    pub fn insert(&mut self, k: K, v: V) {
        self.0.get_or_insert_with(Default::default).insert(k, v);
    }
    pub fn remove(&mut self, k: &K) -> Option<V> {
        self.0.as_mut()?.remove(k)
    }
    pub fn len(&self) -> usize {
        self.0.as_ref().map_or(0, |m| m.len())
    }
    #[cfg(test)]
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
    pub fn retain(&mut self, f: impl FnMut(&K, &mut V) -> bool) {
        if let Some(m) = self.0.as_mut() {
            m.retain(f);
        }
    }
    /// Empty it and give its memory back.
    pub fn release(&mut self) {
        self.0 = None;
    }
}

/// Per connection: the position of the last message sent for each stream
/// of its delta subscriptions.
#[derive(Default)]
pub(crate) struct SentKeys {
    map: LazyMap<StreamKey, (Arc<str>, u64)>,
}

impl SentKeys {
    /// `msg` is being sent: its patch if the client was last sent exactly
    /// the message the patch applies to, else `None` (send it in full).
    /// Either way it becomes the client's last message of the stream.
    pub fn choose(&mut self, msg: &KeyedMessage) -> Option<EncodedFrame> {
        if let Some(last) = self.map.get_mut(&msg.stream) {
            let fits = matches!(&msg.patch, Some((_, base)) if last.1 == *base && *last.0 == *msg.epoch);
            *last = (msg.epoch.clone(), msg.seq);
            return if fits { msg.patch.as_ref().map(|(frame, _)| frame.clone()) } else { None };
        }
        if self.map.len() < MAX_SENT_KEYS {
            self.map.insert(msg.stream.clone(), (msg.epoch.clone(), msg.seq));
        }
        None
    }

    /// Forget the streams of `topic` (the client unsubscribed).
    pub fn forget_topic(&mut self, topic: &str) {
        self.map.retain(|(t, _), _| **t != *topic);
    }
}

/// Per topic, while it has delta subscribers: the last content of each
/// stream, to patch the next one against.
#[derive(Default)]
pub(crate) struct DeltaCache {
    epoch: Option<Arc<str>>,
    last: HashMap<Arc<str>, (u64, Value, usize)>,
    bytes: usize,
}

impl DeltaCache {
    /// The patch of `msg` against the previous message of its stream, if
    /// there is one here and the patch is smaller than the content; keeps
    /// `msg`'s content for the next one (within the bounds; `budget` is the
    /// hub-wide count, at most `max_total`).
    pub fn patch(&mut self, msg: &Published, budget: &AtomicUsize, max_total: usize) -> Option<(EncodedFrame, u64)> {
        let Body::Json(raw) = &msg.body else { return None };
        if self.epoch.as_deref() != Some(&*msg.epoch) {
            self.clear(budget);
            self.epoch = Some(msg.epoch.clone());
        }
        let key: Arc<str> = msg.key.clone().unwrap_or_else(|| Arc::from(""));
        let target: Value = serde_json::from_str(raw.get()).ok()?;
        let made = match self.last.get(&key) {
            Some((base_seq, base, _)) if *base_seq < msg.seq => delta::diff(base, &target).map(|p| (p, *base_seq)),
            _ => None,
        };
        // Keep this content for the next message of the stream.
        if let Some((_, _, size)) = self.last.remove(&key) {
            self.bytes -= size;
            budget.fetch_sub(size, Ordering::Relaxed);
        }
        let size = 2 * raw.get().len() + key.len() + 64;
        let room = self.last.len() < MAX_CACHED_KEYS && self.bytes + size <= MAX_TOPIC_CACHE_BYTES;
        if room && budget.fetch_add(size, Ordering::Relaxed) + size <= max_total {
            self.bytes += size;
            self.last.insert(key, (msg.seq, target, size));
        } else if room {
            budget.fetch_sub(size, Ordering::Relaxed);
        }
        let (patch, base) = made?;
        let patch = serde_json::to_string(&patch).ok()?;
        // Sent only when smaller: `"patch":P,"base":B` against `"content":C`.
        if patch.len() + 9 + decimal_len(base) >= raw.get().len() + 2 {
            return None;
        }
        let text = envelope::patch_message(&msg.topic, &msg.epoch, msg.seq, &msg.sender, msg.timestamp_ms, msg.key.as_deref(), base, &patch);
        Some((EncodedFrame::text(&text), base))
    }

    /// Drop every kept content, giving its bytes back to the hub's budget.
    pub fn clear(&mut self, budget: &AtomicUsize) {
        budget.fetch_sub(self.bytes, Ordering::Relaxed);
        self.bytes = 0;
        self.last = HashMap::new();
    }
}

fn decimal_len(n: u64) -> usize {
    n.checked_ilog10().map_or(1, |d| d as usize + 1)
}

/// Whether messages of `topic` are conflated without a key (a
/// `conflate_prefixes` entry matches).
pub(crate) fn conflated_topic(prefixes: &[String], topic: &str) -> bool {
    prefixes.iter().any(|p| topic.starts_with(p.as_str()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn published(seq: u64, key: Option<&str>, content: Value) -> Published {
        Published {
            topic: Arc::from("prices"),
            epoch: Arc::from("e1"),
            seq,
            sender: Arc::from("s"),
            timestamp_ms: 0,
            body: Body::Json(Arc::from(serde_json::value::to_raw_value(&content).unwrap())),
            key: key.map(Arc::from),
        }
    }

    fn keyed(msg: &Published, patch: Option<(EncodedFrame, u64)>) -> KeyedMessage {
        KeyedMessage {
            stream: (msg.topic.clone(), msg.key.clone().unwrap_or_else(|| Arc::from(""))),
            conflate: true,
            epoch: msg.epoch.clone(),
            seq: msg.seq,
            patch,
        }
    }

    #[test]
    fn a_patch_is_sent_only_on_top_of_the_message_it_patches() {
        let budget = AtomicUsize::new(0);
        let mut cache = DeltaCache::default();
        let mut sent = SentKeys::default();
        let quote = |p: f64| json!({"symbol": "TTR", "name": "Tether Industries", "price": p, "volume": 1000});
        let m1 = published(1, Some("TTR"), quote(1.0));
        assert!(cache.patch(&m1, &budget, 1 << 20).is_none(), "nothing to patch against yet");
        assert!(sent.choose(&keyed(&m1, None)).is_none());
        let m2 = published(2, Some("TTR"), quote(2.0));
        let p2 = cache.patch(&m2, &budget, 1 << 20).expect("a patch");
        assert_eq!(p2.1, 1);
        let bytes = p2.0.as_bytes();
        let text = std::str::from_utf8(&bytes[bytes.iter().position(|&b| b == b'{').unwrap()..]).unwrap();
        let v: Value = serde_json::from_str(text).unwrap();
        assert_eq!((v["base"].as_u64(), &v["patch"]), (Some(1), &json!({"price": 2.0})));
        assert!(sent.choose(&keyed(&m2, Some(p2))).is_some(), "the client has seq 1");
        // seq 3 was conflated away for this client: 4's patch (base 3) does not fit.
        let m3 = published(3, Some("TTR"), quote(3.0));
        let _p3 = cache.patch(&m3, &budget, 1 << 20).expect("a patch");
        let m4 = published(4, Some("TTR"), quote(4.0));
        let p4 = cache.patch(&m4, &budget, 1 << 20).expect("a patch");
        assert!(sent.choose(&keyed(&m4, Some(p4))).is_none(), "full: the client has seq 2, not 3");
        assert!(budget.load(Ordering::Relaxed) > 0);
        cache.clear(&budget);
        assert_eq!(budget.load(Ordering::Relaxed), 0);
    }

    #[test]
    fn a_patch_not_smaller_is_not_made_and_bounds_hold() {
        let budget = AtomicUsize::new(0);
        let mut cache = DeltaCache::default();
        cache.patch(&published(1, None, json!({"a": 1})), &budget, 1 << 20);
        assert!(cache.patch(&published(2, None, json!({"b": 2})), &budget, 1 << 20).is_none(), "{{\"a\":null,\"b\":2}} is larger");
        // The hub-wide budget: nothing is kept past it.
        let tight = AtomicUsize::new(0);
        let mut small = DeltaCache::default();
        small.patch(&published(1, None, json!({"x": "y".repeat(100)})), &tight, 64);
        assert_eq!(tight.load(Ordering::Relaxed), 0);
        assert!(small.patch(&published(2, None, json!({"x": "y".repeat(100), "z": 1})), &tight, 64).is_none());
        // Keys per topic.
        for i in 0..(MAX_CACHED_KEYS as u64 + 10) {
            cache.patch(&published(3 + i, Some(&format!("k{i}")), json!(i)), &budget, usize::MAX);
        }
        assert_eq!(cache.last.len(), MAX_CACHED_KEYS);
        // Streams per connection.
        let mut sent = SentKeys::default();
        for i in 0..(MAX_SENT_KEYS as u64 + 10) {
            let m = published(i + 1, Some(&format!("k{i}")), json!(i));
            sent.choose(&keyed(&m, None));
        }
        assert_eq!(sent.map.len(), MAX_SENT_KEYS);
        sent.forget_topic("prices");
        assert!(sent.map.is_empty());
    }
}
