//! The per-connection outbound queue: bounded in messages and bytes, filled
//! by publishers (who never wait) and by the connection's own replies,
//! drained by the connection's task.
//!
//! Everything the server sends a client passes through here and counts
//! against the same bounds: broadcasts, presence and lag notices, and the
//! replies the client asked for (acks, errors, history gaps). Broadcasts may
//! be dropped under the slow-consumer policy; replies never are. Replies are
//! bounded instead by the connection task, which stops reading from a
//! client while its unsent replies pass half the bounds
//! ([`ConnShared::replies_over`]): a client that does not read what it asked
//! for is not read either, and TCP backpressure reaches it.
//!
//! A message with a conflation key (see [`crate::keyed`]) replaces an
//! unsent older one of the same topic and key: the index that finds it
//! covers only what is queued, so it is bounded by the queue. For a delta
//! subscription the choice between the full frame and the patch is made
//! when the frame leaves the queue, against what this client was last sent
//! for the key (a patch is only sent on top of the message it patches).

use crate::config::SlowConsumerPolicy;
use crate::keyed::{KeyedMessage, LazyMap, SentKeys, StreamKey};
use atomic_waker::AtomicWaker;
use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, Ordering};
use std::sync::{Arc, Mutex};
use tether_proto::EncodedFrame;

/// Flags a publisher or the heartbeat sets for the connection task.
pub(crate) mod flag {
    /// A ping was sent and its pong has not arrived.
    pub const AWAITING_PONG: u8 = 1;
    /// Missed a heartbeat: drop the connection.
    pub const TERMINATE: u8 = 2;
    /// Fell behind under the Close policy: close with the policy's code.
    pub const SLOW_CLOSE: u8 = 4;
    /// The server is shutting down: close with 1001.
    pub const SHUTDOWN: u8 = 8;
    /// The heartbeat wants a ping sent (with the current round's payload).
    pub const PING_DUE: u8 = 16;
    /// Outbound bytes were written (or nothing was waiting) since the
    /// heartbeat last looked: the connection is not write-stalled.
    pub const PROGRESS: u8 = 32;
    /// Nothing could be written for the write-stall timeout: drop it.
    pub const STALLED: u8 = 64;
    /// Drained or shed: close with 1012 and a reconnect hint.
    pub const DRAIN: u8 = 128;
}

struct Item {
    frame: EncodedFrame,
    /// A reply to the client's own request: never dropped.
    reply: bool,
    /// Push order: what the conflation index points at (items stay sorted by it).
    n: u64,
    /// A message with a key (conflated, or for a delta subscription), and
    /// whether this subscriber asked for deltas.
    keyed: Option<(Arc<KeyedMessage>, bool)>,
}

#[derive(Default)]
struct Frames {
    items: VecDeque<Item>,
    bytes: usize,
    replies: usize,
    reply_bytes: usize,
    /// Half the bounds, as given with the last reply: where reading pauses.
    reply_limit: (usize, usize),
    next_n: u64,
    /// (topic, key) → the queued conflatable item for it. Only queued items
    /// are in it: an entry goes when its item is sent, dropped or replaced.
    conflation: LazyMap<StreamKey, u64>,
    /// For delta subscriptions: the position of the last message sent per key.
    sent: SentKeys,
}

impl Frames {
    fn replies_over(&self) -> bool {
        self.replies >= self.reply_limit.0 || self.reply_bytes >= self.reply_limit.1
    }

    fn over(&self, max_messages: usize, max_bytes: usize, adding: usize) -> bool {
        !self.items.is_empty() && (self.items.len() >= max_messages || self.bytes + adding > max_bytes)
    }

    /// Drop the oldest droppable frame; false if there is none.
    fn drop_oldest(&mut self) -> bool {
        let Some(pos) = self.items.iter().position(|i| !i.reply) else { return false };
        self.remove_at(pos);
        true
    }

    /// Remove a broadcast from the middle of the queue.
    fn remove_at(&mut self, pos: usize) {
        if let Some(old) = self.items.remove(pos) {
            self.bytes -= old.frame.len();
            self.unindex(&old);
        }
    }

    /// Forget `item` in the conflation index (it leaves the queue).
    fn unindex(&mut self, item: &Item) {
        if let Some((msg, _)) = &item.keyed {
            if msg.conflate && self.conflation.get(&msg.stream) == Some(&item.n) {
                self.conflation.remove(&msg.stream);
            }
        }
    }

    /// Remove the queued message that `msg` supersedes, if any: true if one was.
    fn conflate(&mut self, msg: &KeyedMessage) -> bool {
        let Some(&n) = self.conflation.get(&msg.stream) else { return false };
        match self.items.binary_search_by_key(&n, |i| i.n) {
            Ok(pos) => {
                self.remove_at(pos);
                true
            }
            Err(_) => {
                self.conflation.remove(&msg.stream);
                false
            }
        }
    }

    fn push(&mut self, frame: EncodedFrame, reply: bool, keyed: Option<(Arc<KeyedMessage>, bool)>) {
        if self.items.capacity() == 0 {
            // Room for one: most of the time one frame waits at a time,
            // and an idle connection keeps this (VecDeque would take four).
            self.items.reserve_exact(1);
        }
        self.bytes += frame.len();
        if reply {
            self.replies += 1;
            self.reply_bytes += frame.len();
        }
        let n = self.next_n;
        self.next_n += 1;
        if let Some((msg, _)) = &keyed {
            if msg.conflate {
                self.conflation.insert(msg.stream.clone(), n);
            }
        }
        self.items.push_back(Item { frame, reply, n, keyed });
    }
}

/// One connection as seen by the rest of the hub.
pub(crate) struct ConnShared {
    pub id: u64,
    pub json: bool,
    queue: Mutex<Frames>,
    pub waker: AtomicWaker,
    pub flags: AtomicU8,
    /// Heartbeat rounds in a row without outbound progress.
    pub stalled_rounds: AtomicU8,
    /// Unsent replies fill half the bounds (kept under the queue lock, read
    /// without it: the connection task asks on every wake-up).
    replies_over: AtomicBool,
    /// Messages dropped and not yet reported to the client.
    pub dropped_unreported: AtomicU64,
    /// The event loop that runs this connection (its part of each topic's
    /// subscribers), or [`crate::hub::NO_LOOP`] for any other driver.
    pub part: u16,
}

/// What happened to a pushed frame.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Pushed {
    Queued,
    /// Queued after dropping this many older messages.
    DroppedOldest(u64),
    /// Not queued: only replies fill the queue; counted as dropped.
    Dropped,
    /// Not queued: the connection is being closed for falling behind.
    Closing,
    /// Queued in place of an unsent older message with the same topic and
    /// key (conflated), after dropping this many older messages.
    Replaced(u64),
}

impl ConnShared {
    #[cfg(test)]
    pub fn new(id: u64, json: bool) -> Self {
        Self::on_loop(id, json, crate::hub::NO_LOOP)
    }

    /// A connection run by event loop `part` (see [`crate::Hub::attach_loops`]).
    pub fn on_loop(id: u64, json: bool, part: u16) -> Self {
        ConnShared {
            part,
            id,
            json,
            queue: Mutex::new(Frames::default()),
            waker: AtomicWaker::new(),
            flags: AtomicU8::new(0),
            stalled_rounds: AtomicU8::new(0),
            replies_over: AtomicBool::new(false),
            dropped_unreported: AtomicU64::new(0),
        }
    }

    /// The session id, `<node id>-<n>`: made when asked (logs, presence,
    /// the sender of a publish), not kept by every idle connection.
    pub fn session(&self) -> String {
        format!("{}-{}", crate::broker::node_id(), self.id)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Frames> {
        self.queue.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn set(&self, f: u8) {
        self.flags.fetch_or(f, Ordering::AcqRel);
        self.waker.wake();
    }

    pub fn has(&self, f: u8) -> bool {
        self.flags.load(Ordering::Acquire) & f != 0
    }

    pub fn clear(&self, f: u8) {
        self.flags.fetch_and(!f, Ordering::AcqRel);
    }

    /// Queue a broadcast (a message, presence or a notice), applying the
    /// slow-consumer policy when full. Never waits.
    pub fn push(&self, frame: EncodedFrame, max_messages: usize, max_bytes: usize, policy: SlowConsumerPolicy) -> Pushed {
        self.push_keyed(frame, None, max_messages, max_bytes, policy)
    }

    /// [`push`](Self::push) for a message with a key: if `keyed` is
    /// conflatable, an unsent older message with the same topic and key is
    /// removed first (the newer one goes last, so sequence numbers stay in
    /// order); `true` with it marks a delta subscription.
    ///
    /// Only a push into an empty queue wakes the connection's driver: a
    /// driver that stops taking frames while some are queued does so because
    /// its output is full, and takes more when the output drains (every
    /// driver does: the event loop after a write, the tokio task when its
    /// socket is writable, the HTTP session when the stream takes events).
    /// A connection that fell behind then costs its queue one append per
    /// message, not a wake-up and a pump of its driver each.
    pub fn push_keyed(&self, frame: EncodedFrame, keyed: Option<(Arc<KeyedMessage>, bool)>, max_messages: usize, max_bytes: usize, policy: SlowConsumerPolicy) -> Pushed {
        let mut result = Pushed::Queued;
        let was_empty;
        {
            let mut q = self.lock();
            if self.has(flag::SLOW_CLOSE) {
                return Pushed::Closing;
            }
            let replaced = matches!(&keyed, Some((msg, _)) if msg.conflate && q.conflate(msg));
            if replaced {
                result = Pushed::Replaced(0);
            }
            if q.over(max_messages, max_bytes, frame.len()) {
                match policy {
                    SlowConsumerPolicy::DropOldest => {
                        let mut dropped = 0;
                        while q.over(max_messages, max_bytes, frame.len()) {
                            if !q.drop_oldest() {
                                // Only replies are queued: the new frame is the one dropped.
                                self.dropped_unreported.fetch_add(dropped + 1, Ordering::Relaxed);
                                return Pushed::Dropped;
                            }
                            dropped += 1;
                        }
                        self.dropped_unreported.fetch_add(dropped, Ordering::Relaxed);
                        result = if replaced { Pushed::Replaced(dropped) } else { Pushed::DroppedOldest(dropped) };
                    }
                    SlowConsumerPolicy::Close(_) => {
                        drop(q);
                        self.set(flag::SLOW_CLOSE);
                        return Pushed::Closing;
                    }
                }
            }
            was_empty = q.items.is_empty();
            q.push(frame, false, keyed);
        }
        if was_empty {
            self.waker.wake();
        }
        result
    }

    /// Queue a reply to the client's own request (welcome, ack, error,
    /// history gap). Never dropped: it makes room by dropping broadcasts
    /// under the drop-oldest policy, and flags the connection under the
    /// close policy. Returns how many broadcasts were dropped for it.
    pub fn push_reply(&self, frame: EncodedFrame, max_messages: usize, max_bytes: usize, policy: SlowConsumerPolicy) -> u64 {
        let mut dropped = 0;
        let wake;
        {
            let mut q = self.lock();
            if q.over(max_messages, max_bytes, frame.len()) {
                match policy {
                    SlowConsumerPolicy::DropOldest => {
                        while q.over(max_messages, max_bytes, frame.len()) && q.drop_oldest() {
                            dropped += 1;
                        }
                        self.dropped_unreported.fetch_add(dropped, Ordering::Relaxed);
                    }
                    SlowConsumerPolicy::Close(_) => {
                        self.flags.fetch_or(flag::SLOW_CLOSE, Ordering::AcqRel);
                    }
                }
            }
            wake = q.items.is_empty() || self.has(flag::SLOW_CLOSE);
            q.push(frame, true, None);
            q.reply_limit = ((max_messages / 2).max(1), max_bytes / 2);
            self.replies_over.store(q.replies_over(), Ordering::Release);
        }
        // As for a broadcast (see push_keyed), and for the close policy's flag.
        if wake {
            self.waker.wake();
        }
        dropped
    }

    /// Whether unsent replies fill half of the bounds: the connection task
    /// stops reading until they drain. Set by [`push_reply`](Self::push_reply),
    /// cleared by [`pop`](Self::pop) once they are below (half of each bound).
    pub fn replies_over(&self) -> bool {
        self.replies_over.load(Ordering::Acquire)
    }

    /// Take the next queued frame: for a delta subscription, the patch if
    /// this client was last sent the message it patches, else the full one.
    pub fn pop(&self) -> Option<EncodedFrame> {
        let mut q = self.lock();
        let item = q.items.pop_front()?;
        q.bytes -= item.frame.len();
        q.unindex(&item);
        if item.reply {
            q.replies -= 1;
            q.reply_bytes -= item.frame.len();
            if self.replies_over.load(Ordering::Relaxed) && !q.replies_over() {
                self.replies_over.store(false, Ordering::Release);
            }
        }
        let mut frame = item.frame;
        if let Some((msg, true)) = &item.keyed {
            if let Some(patch) = q.sent.choose(msg) {
                frame = patch;
            }
        }
        if q.items.is_empty() && (q.items.capacity() > 16 || item.reply) {
            // Give memory back after a burst, and after a reply (the
            // welcome, acks): a connection that goes idle holds no queue.
            // Broadcasts in a steady flow keep their one slot.
            q.items = VecDeque::new();
            q.conflation.release();
        }
        Some(frame)
    }

    /// The client no longer follows `topic`: forget what it was sent there
    /// (a later subscription starts with full messages).
    pub fn forget_topic(&self, topic: &str) {
        self.lock().sent.forget_topic(topic);
    }

    /// Give the queue's buffer back if nothing waits in it (the heartbeat
    /// does this for every connection: idle ones hold no queue memory).
    pub fn shrink_if_empty(&self) {
        let mut q = self.lock();
        if q.items.is_empty() && q.items.capacity() > 0 {
            q.items = VecDeque::new();
        }
    }

    /// Whether any frame is queued.
    pub fn has_queued(&self) -> bool {
        !self.lock().items.is_empty()
    }

    /// Room left in the queue, in (messages, bytes).
    pub fn room(&self, max_messages: usize, max_bytes: usize) -> (usize, usize) {
        let q = self.lock();
        (max_messages.saturating_sub(q.items.len()), max_bytes.saturating_sub(q.bytes))
    }

    #[cfg(test)]
    pub fn queued(&self) -> (usize, usize) {
        let q = self.lock();
        (q.items.len(), q.bytes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn drop_oldest_keeps_the_newest_within_bounds() {
        let c = ConnShared::new(1, false);
        for i in 0..10 {
            c.push(EncodedFrame::text(&format!("{i}")), 4, 1 << 20, SlowConsumerPolicy::DropOldest);
        }
        assert_eq!(c.queued().0, 4);
        assert_eq!(c.dropped_unreported.load(Ordering::Relaxed), 6);
        assert_eq!(c.pop().unwrap(), EncodedFrame::text("6"));
    }

    /// Counts its wake-ups (as a driver's waker would schedule the connection).
    struct Counter(std::sync::atomic::AtomicUsize);
    impl std::task::Wake for Counter {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Ordering::Relaxed);
        }
    }

    #[test]
    fn only_a_push_into_an_empty_queue_wakes_the_driver() {
        let c = ConnShared::new(1, false);
        let count = Arc::new(Counter(Default::default()));
        let waker = std::task::Waker::from(count.clone());
        let woken = || count.0.load(Ordering::Relaxed);
        let policy = SlowConsumerPolicy::DropOldest;
        // A driver registers its waker, then takes frames (as Session::pump does).
        c.waker.register(&waker);
        for i in 0..100 {
            c.push(EncodedFrame::text(&format!("{i}")), 1000, 1 << 20, policy);
        }
        assert_eq!(woken(), 1, "one wake-up for 100 frames: the driver takes them all");
        // It took some and stopped (its output was full): no wake-up per
        // frame pushed meanwhile; its output draining brings it back.
        c.waker.register(&waker);
        for _ in 0..50 {
            c.pop();
        }
        c.push(EncodedFrame::text("more"), 1000, 1 << 20, policy);
        c.push_reply(EncodedFrame::text("ack"), 1000, 1 << 20, policy);
        assert_eq!(woken(), 1);
        // It took everything: the next frame wakes it, a reply as a broadcast.
        while c.pop().is_some() {}
        c.push_reply(EncodedFrame::text("ack"), 1000, 1 << 20, policy);
        assert_eq!(woken(), 2);
        c.waker.register(&waker);
        while c.pop().is_some() {}
        c.push(EncodedFrame::text("next"), 1000, 1 << 20, policy);
        assert_eq!(woken(), 3);
        // A flag always wakes it.
        c.waker.register(&waker);
        c.set(flag::PING_DUE);
        assert_eq!(woken(), 4);
    }

    #[test]
    fn byte_bound_applies() {
        let c = ConnShared::new(1, false);
        let big = "x".repeat(1000);
        for _ in 0..10 {
            c.push(EncodedFrame::text(&big), 1000, 3500, SlowConsumerPolicy::DropOldest);
        }
        let (n, bytes) = c.queued();
        assert!(bytes <= 3500 && n == 3, "{n} {bytes}");
    }

    #[test]
    fn close_policy_flags_the_connection() {
        let c = ConnShared::new(1, false);
        assert_eq!(c.push(EncodedFrame::text("a"), 1, 100, SlowConsumerPolicy::Close(1013)), Pushed::Queued);
        assert_eq!(c.push(EncodedFrame::text("b"), 1, 100, SlowConsumerPolicy::Close(1013)), Pushed::Closing);
        assert!(c.has(flag::SLOW_CLOSE));
        assert_eq!(c.push(EncodedFrame::text("c"), 10, 100, SlowConsumerPolicy::Close(1013)), Pushed::Closing);
    }

    #[test]
    fn replies_count_against_the_bounds_and_are_never_dropped() {
        let c = ConnShared::new(1, false);
        let policy = SlowConsumerPolicy::DropOldest;
        for i in 0..4 {
            c.push(EncodedFrame::text(&format!("m{i}")), 4, 1 << 20, policy);
        }
        // A reply makes room by dropping the oldest broadcast.
        assert_eq!(c.push_reply(EncodedFrame::text("ack"), 4, 1 << 20, policy), 1);
        assert_eq!(c.queued().0, 4);
        assert!(!c.replies_over());
        c.push_reply(EncodedFrame::text("ack2"), 4, 1 << 20, policy);
        assert!(c.replies_over(), "two replies are half of four");
        // A queue of replies only: a broadcast is the one dropped.
        c.push_reply(EncodedFrame::text("ack3"), 4, 1 << 20, policy);
        c.push_reply(EncodedFrame::text("ack4"), 4, 1 << 20, policy);
        assert_eq!(c.push(EncodedFrame::text("late"), 4, 1 << 20, policy), Pushed::Dropped);
        let order: Vec<_> = std::iter::from_fn(|| c.pop()).collect();
        assert_eq!(order, ["ack", "ack2", "ack3", "ack4"].map(EncodedFrame::text));
        assert!(!c.replies_over());
    }

    fn keyed(key: &str, seq: u64) -> Option<(Arc<KeyedMessage>, bool)> {
        let msg = KeyedMessage { stream: (Arc::from("prices"), Arc::from(key)), conflate: true, epoch: Arc::from("e"), seq, patch: None };
        Some((Arc::new(msg), false))
    }

    #[test]
    fn a_newer_message_of_a_key_replaces_the_unsent_older_one_and_the_index_stays_bounded() {
        let c = ConnShared::new(1, true);
        let policy = SlowConsumerPolicy::DropOldest;
        let mut seq = 0;
        let mut push = |key: &str| {
            seq += 1;
            c.push_keyed(EncodedFrame::text(&format!("{key}{seq}")), keyed(key, seq), 8, 1 << 20, policy)
        };
        assert_eq!(push("A"), Pushed::Queued);
        assert_eq!(push("B"), Pushed::Queued);
        for _ in 0..100 {
            assert_eq!(push("A"), Pushed::Replaced(0));
        }
        assert_eq!(push("C"), Pushed::Queued);
        assert_eq!(push("B"), Pushed::Replaced(0));
        // One per key, newest value, in the order of the newest messages.
        assert_eq!(c.lock().conflation.len(), 3);
        c.push(EncodedFrame::text("plain"), 8, 1 << 20, policy);
        let order: Vec<_> = std::iter::from_fn(|| c.pop()).collect();
        assert_eq!(order, ["A102", "C103", "B104", "plain"].map(EncodedFrame::text));
        assert!(c.lock().conflation.is_empty(), "the index covers only what is queued");
        assert_eq!(c.dropped_unreported.load(Ordering::Relaxed), 0, "replaced is not dropped");
        // Over the bound with more keys than room: drop-oldest still applies, and drops leave the index.
        for i in 0..20 {
            c.push_keyed(EncodedFrame::text("x"), keyed(&format!("k{i}"), 200 + i), 8, 1 << 20, policy);
        }
        let q = c.lock();
        assert_eq!((q.items.len(), q.conflation.len()), (8, 8));
    }

    #[test]
    fn reply_bytes_pause_reading_at_half_the_byte_bound() {
        let c = ConnShared::new(1, false);
        let policy = SlowConsumerPolicy::DropOldest;
        let big = "x".repeat(600);
        c.push_reply(EncodedFrame::text(&big), 100, 2000, policy);
        assert!(!c.replies_over());
        c.push_reply(EncodedFrame::text(&big), 100, 2000, policy);
        assert!(c.replies_over());
        c.pop();
        assert!(!c.replies_over(), "below half again once one is sent");
    }
}
