//! Subscription changes from the hub, waiting for the Redis broker's reader
//! ([`super::reader`]): coalesced per topic under a mutex, with a wakeup.
//! Nothing is ever refused (an unsubscribe lost would leak a followed
//! channel; a subscribe not answered would hold its subscriber's messages
//! for good), and nothing grows past the hub's own limits: per topic, two
//! counts and at most one waiting request per connection.

use crate::broker::SubscribeRequest;
use std::collections::{HashMap, VecDeque};
use std::sync::Arc;

/// Subscription changes waiting for the reader, per topic, in the order
/// the topics first changed.
#[derive(Default)]
pub(crate) struct PendingOps {
    topics: HashMap<Arc<str>, TopicOps>,
    order: VecDeque<Arc<str>>,
}

/// What changed on one topic since the reader last looked.
#[derive(Default)]
pub(super) struct TopicOps {
    /// Local subscriptions added and removed.
    pub(super) added: usize,
    pub(super) removed: usize,
    /// Requests to answer, at most one per connection: the hub keeps one
    /// subscription per connection and topic, so a newer request of the same
    /// connection (after an unsubscribe) replaces the older one.
    pub(super) requests: HashMap<u64, SubscribeRequest>,
}

impl PendingOps {
    fn entry(&mut self, topic: &Arc<str>) -> &mut TopicOps {
        if !self.topics.contains_key(topic) {
            self.order.push_back(topic.clone());
        }
        self.topics.entry(topic.clone()).or_default()
    }

    /// A local subscription of `request.topic` starts.
    pub(super) fn subscribe(&mut self, request: SubscribeRequest) {
        let ops = self.entry(&request.topic);
        ops.added += 1;
        ops.requests.insert(request.conn, request);
    }

    /// A local subscription of `topic` ended.
    pub(super) fn unsubscribe(&mut self, topic: &Arc<str>) {
        self.entry(topic).removed += 1;
    }

    /// Requests that could not be answered (Redis failed) wait again, unless
    /// their connection asked again meanwhile.
    pub(super) fn retry(&mut self, topic: &Arc<str>, requests: impl IntoIterator<Item = SubscribeRequest>) {
        let ops = self.entry(topic);
        for request in requests {
            ops.requests.entry(request.conn).or_insert(request);
        }
    }

    pub(super) fn next(&mut self) -> Option<(Arc<str>, TopicOps)> {
        let topic = self.order.pop_front()?;
        let ops = self.topics.remove(&topic).unwrap_or_default();
        Some((topic, ops))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(conn: u64, topic: &Arc<str>, id: &str) -> SubscribeRequest {
        SubscribeRequest { conn, topic: topic.clone(), resume: None, id: Some(serde_json::json!(id)) }
    }

    #[test]
    fn pending_ops_coalesce_per_topic_and_connection() {
        let (a, b): (Arc<str>, Arc<str>) = (Arc::from("a"), Arc::from("b"));
        let mut ops = PendingOps::default();
        ops.subscribe(request(1, &a, "first"));
        ops.subscribe(request(2, &b, "b"));
        ops.unsubscribe(&a);
        ops.subscribe(request(1, &a, "again"));
        ops.unsubscribe(&b);
        // Topics in the order they first changed; counts kept, one request
        // per connection (the newest).
        let (topic, first) = ops.next().unwrap();
        assert_eq!((&*topic, first.added, first.removed, first.requests.len()), ("a", 2, 1, 1));
        assert_eq!(first.requests[&1].id, Some(serde_json::json!("again")));
        let (topic, second) = ops.next().unwrap();
        assert_eq!((&*topic, second.added, second.removed, second.requests.len()), ("b", 1, 1, 1));
        assert!(ops.next().is_none());
        // A retried request does not replace a newer one of its connection.
        ops.subscribe(request(1, &a, "newer"));
        ops.retry(&a, [request(1, &a, "older"), request(3, &a, "other")]);
        let (_, retried) = ops.next().unwrap();
        assert_eq!((retried.added, retried.requests.len()), (1, 2));
        assert_eq!(retried.requests[&1].id, Some(serde_json::json!("newer")));
    }
}
