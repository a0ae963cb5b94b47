//! The per-connection outbound queue: bounded in messages and bytes, filled
//! by publishers (who never wait), drained by the connection's task.

use crate::config::SlowConsumerPolicy;
use atomic_waker::AtomicWaker;
use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, AtomicU8, Ordering};
use std::sync::Mutex;
use tether_proto::EncodedFrame;

/// Flags a publisher or the heartbeat sets for the connection task.
pub(crate) mod flag {
    /// A ping was sent and no pong has arrived since.
    pub const AWAITING_PONG: u8 = 1;
    /// Missed a heartbeat: drop the connection.
    pub const TERMINATE: u8 = 2;
    /// Fell behind under the Close policy: close with the policy's code.
    pub const SLOW_CLOSE: u8 = 4;
    /// The server is shutting down: close with 1001.
    pub const SHUTDOWN: u8 = 8;
}

#[derive(Default)]
struct Frames {
    frames: VecDeque<EncodedFrame>,
    bytes: usize,
}

/// One connection as seen by the rest of the hub.
pub(crate) struct ConnShared {
    pub id: u64,
    pub session: Box<str>,
    pub json: bool,
    queue: Mutex<Frames>,
    pub waker: AtomicWaker,
    pub flags: AtomicU8,
    /// Messages dropped and not yet reported to the client.
    pub dropped_unreported: AtomicU64,
}

/// What happened to a pushed frame.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Pushed {
    Queued,
    /// Queued after dropping this many older messages.
    DroppedOldest(u64),
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
            dropped_unreported: AtomicU64::new(0),
        }
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

    /// Queue `frame`, applying the slow-consumer policy when full. Never waits.
    pub fn push(&self, frame: EncodedFrame, max_messages: usize, max_bytes: usize, policy: SlowConsumerPolicy) -> Pushed {
        let mut result = Pushed::Queued;
        {
            let mut q = self.queue.lock().unwrap_or_else(|p| p.into_inner());
            if self.has(flag::SLOW_CLOSE) {
                return Pushed::Closing;
            }
            let over = |q: &Frames| !q.frames.is_empty() && (q.frames.len() >= max_messages || q.bytes + frame.len() > max_bytes);
            if over(&q) {
                match policy {
                    SlowConsumerPolicy::DropOldest => {
                        let mut dropped = 0;
                        while over(&q) {
                            if let Some(old) = q.frames.pop_front() {
                                q.bytes -= old.len();
                                dropped += 1;
                            }
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
            q.bytes += frame.len();
            q.frames.push_back(frame);
        }
        self.waker.wake();
        result
    }

    /// Queue a control or service frame regardless of the bounds (pings,
    /// acks to the client's own requests: small and bounded by the client).
    pub fn push_unbounded(&self, frame: EncodedFrame) {
        let mut q = self.queue.lock().unwrap_or_else(|p| p.into_inner());
        q.bytes += frame.len();
        q.frames.push_back(frame);
        drop(q);
        self.waker.wake();
    }

    /// Take the next queued frame.
    pub fn pop(&self) -> Option<EncodedFrame> {
        let mut q = self.queue.lock().unwrap_or_else(|p| p.into_inner());
        let f = q.frames.pop_front()?;
        q.bytes -= f.len();
        if q.frames.is_empty() && q.frames.capacity() > 16 {
            // Give memory back after a burst.
            q.frames = VecDeque::new();
        }
        Some(f)
    }

    #[cfg(test)]
    pub fn queued(&self) -> (usize, usize) {
        let q = self.queue.lock().unwrap();
        (q.frames.len(), q.bytes)
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
}
