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

use crate::config::SlowConsumerPolicy;
use atomic_waker::AtomicWaker;
use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, Ordering};
use std::sync::Mutex;
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
}

struct Item {
    frame: EncodedFrame,
    /// A reply to the client's own request: never dropped.
    reply: bool,
}

#[derive(Default)]
struct Frames {
    items: VecDeque<Item>,
    bytes: usize,
    replies: usize,
    reply_bytes: usize,
    /// Half the bounds, as given with the last reply: where reading pauses.
    reply_limit: (usize, usize),
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
        if let Some(old) = self.items.remove(pos) {
            self.bytes -= old.frame.len();
        }
        true
    }

    fn push(&mut self, frame: EncodedFrame, reply: bool) {
        self.bytes += frame.len();
        if reply {
            self.replies += 1;
            self.reply_bytes += frame.len();
        }
        self.items.push_back(Item { frame, reply });
    }
}

/// One connection as seen by the rest of the hub.
pub(crate) struct ConnShared {
    pub id: u64,
    pub session: Box<str>,
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
}

impl ConnShared {
    pub fn new(id: u64, session: String, json: bool) -> Self {
        ConnShared {
            id,
            session: session.into_boxed_str(),
            json,
            queue: Mutex::new(Frames::default()),
            waker: AtomicWaker::new(),
            flags: AtomicU8::new(0),
            stalled_rounds: AtomicU8::new(0),
            replies_over: AtomicBool::new(false),
            dropped_unreported: AtomicU64::new(0),
        }
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
        let mut result = Pushed::Queued;
        {
            let mut q = self.lock();
            if self.has(flag::SLOW_CLOSE) {
                return Pushed::Closing;
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
                        result = Pushed::DroppedOldest(dropped);
                    }
                    SlowConsumerPolicy::Close(_) => {
                        drop(q);
                        self.set(flag::SLOW_CLOSE);
                        return Pushed::Closing;
                    }
                }
            }
            q.push(frame, false);
        }
        self.waker.wake();
        result
    }

    /// Queue a reply to the client's own request (welcome, ack, error,
    /// history gap). Never dropped: it makes room by dropping broadcasts
    /// under the drop-oldest policy, and flags the connection under the
    /// close policy. Returns how many broadcasts were dropped for it.
    pub fn push_reply(&self, frame: EncodedFrame, max_messages: usize, max_bytes: usize, policy: SlowConsumerPolicy) -> u64 {
        let mut dropped = 0;
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
            q.push(frame, true);
            q.reply_limit = ((max_messages / 2).max(1), max_bytes / 2);
            self.replies_over.store(q.replies_over(), Ordering::Release);
        }
        self.waker.wake();
        dropped
    }

    /// Whether unsent replies fill half of the bounds: the connection task
    /// stops reading until they drain. Set by [`push_reply`](Self::push_reply),
    /// cleared by [`pop`](Self::pop) once they are below (half of each bound).
    pub fn replies_over(&self) -> bool {
        self.replies_over.load(Ordering::Acquire)
    }

    /// Take the next queued frame.
    pub fn pop(&self) -> Option<EncodedFrame> {
        let mut q = self.lock();
        let item = q.items.pop_front()?;
        q.bytes -= item.frame.len();
        if item.reply {
            q.replies -= 1;
            q.reply_bytes -= item.frame.len();
            if self.replies_over.load(Ordering::Relaxed) && !q.replies_over() {
                self.replies_over.store(false, Ordering::Release);
            }
        }
        if q.items.is_empty() && q.items.capacity() > 16 {
            // Give memory back after a burst.
            q.items = VecDeque::new();
        }
        Some(item.frame)
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
        let c = ConnShared::new(1, "s".into(), false);
        for i in 0..10 {
            c.push(EncodedFrame::text(&format!("{i}")), 4, 1 << 20, SlowConsumerPolicy::DropOldest);
        }
        assert_eq!(c.queued().0, 4);
        assert_eq!(c.dropped_unreported.load(Ordering::Relaxed), 6);
        assert_eq!(c.pop().unwrap(), EncodedFrame::text("6"));
    }

    #[test]
    fn byte_bound_applies() {
        let c = ConnShared::new(1, "s".into(), false);
        let big = "x".repeat(1000);
        for _ in 0..10 {
            c.push(EncodedFrame::text(&big), 1000, 3500, SlowConsumerPolicy::DropOldest);
        }
        let (n, bytes) = c.queued();
        assert!(bytes <= 3500 && n == 3, "{n} {bytes}");
    }

    #[test]
    fn close_policy_flags_the_connection() {
        let c = ConnShared::new(1, "s".into(), false);
        assert_eq!(c.push(EncodedFrame::text("a"), 1, 100, SlowConsumerPolicy::Close(1013)), Pushed::Queued);
        assert_eq!(c.push(EncodedFrame::text("b"), 1, 100, SlowConsumerPolicy::Close(1013)), Pushed::Closing);
        assert!(c.has(flag::SLOW_CLOSE));
        assert_eq!(c.push(EncodedFrame::text("c"), 10, 100, SlowConsumerPolicy::Close(1013)), Pushed::Closing);
    }

    #[test]
    fn replies_count_against_the_bounds_and_are_never_dropped() {
        let c = ConnShared::new(1, "s".into(), false);
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

    #[test]
    fn reply_bytes_pause_reading_at_half_the_byte_bound() {
        let c = ConnShared::new(1, "s".into(), false);
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
