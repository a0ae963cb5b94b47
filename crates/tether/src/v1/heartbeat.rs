//! The heartbeat rule, shared by the hub, the Rust client and `web/tether.js`:
//!
//! * every `interval`, send a ping, unless the previous one is still
//!   unanswered (then that ping's deadline stands and no new one is sent);
//! * an answer clears the deadline;
//! * a ping unanswered `timeout` after it was sent means the peer is dead.
//!
//! The hub uses `timeout = interval` ("not answered by the next ping"); the
//! client uses its own interval and timeout. What counts as an answer is the
//! caller's business: the hub accepts only the pong that echoes the round's
//! payload, the client anything received.
//!
//! [`Heartbeat`] is a sans-I/O state machine over any clock type (tokio's
//! `Instant`, `std::time::Instant`, or a [`Duration`] since some origin in
//! tests): the caller passes `now`, sleeps until [`Heartbeat::next_wake`],
//! calls [`Heartbeat::poll`] and performs the [`Action`]. [`decide`] is the
//! rule itself, for callers (the hub) that keep the state elsewhere.

use std::ops::Add;
use std::time::Duration;

/// What a [`Heartbeat`] asks of its caller.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Action {
    /// Send a ping now (and treat the next answer as its answer).
    SendPing,
    /// The last ping went unanswered past its deadline: drop the connection.
    PeerDead,
}

/// The rule as a pure function: at `now`, with the last ping unanswered
/// until `deadline` (`None`: answered, or none sent) and the next ping due
/// at `next_ping`.
///
/// The hub, which sends every connection its ping in one round, calls it with
/// the round's time for all three: `decide(now, awaiting.then_some(now), now)`
/// is `PeerDead` when the previous round's ping is unanswered, `SendPing`
/// otherwise (a timeout equal to the interval).
pub fn decide<I: Ord>(now: I, deadline: Option<I>, next_ping: I) -> Option<Action> {
    match deadline {
        Some(d) if now >= d => Some(Action::PeerDead),
        Some(_) => None,
        None if now >= next_ping => Some(Action::SendPing),
        None => None,
    }
}

/// The heartbeat of one connection. See the [module documentation](self).
#[derive(Clone, Debug)]
pub struct Heartbeat<I> {
    interval: Duration,
    timeout: Duration,
    next_ping: I,
    deadline: Option<I>,
}

impl<I: Copy + Ord + Add<Duration, Output = I>> Heartbeat<I> {
    /// A heartbeat for a connection that opened at `now`: the first ping is
    /// due at `now + interval`.
    pub fn new(interval: Duration, timeout: Duration, now: I) -> Self {
        Heartbeat { interval, timeout, next_ping: now + interval, deadline: None }
    }

    /// The ping interval.
    pub fn interval(&self) -> Duration {
        self.interval
    }

    /// How long a ping may go unanswered.
    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    /// When [`poll`](Self::poll) has something to do next.
    pub fn next_wake(&self) -> I {
        match self.deadline {
            Some(d) => d.min(self.next_ping),
            None => self.next_ping,
        }
    }

    /// Whether a ping is waiting for its answer.
    pub fn awaiting_answer(&self) -> bool {
        self.deadline.is_some()
    }

    /// Advance to `now`. [`Action::SendPing`] starts the wait for an answer;
    /// a due ping that is skipped (the previous one is unanswered) or
    /// late moves the next one to `now + interval`.
    pub fn poll(&mut self, now: I) -> Option<Action> {
        let action = decide(now, self.deadline, self.next_ping);
        if now >= self.next_ping {
            self.next_ping = now + self.interval;
        }
        if action == Some(Action::SendPing) {
            self.deadline = Some(now + self.timeout);
        }
        action
    }

    /// An answer arrived (or, for the client, anything at all).
    pub fn on_answer(&mut self, _now: I) {
        self.deadline = None;
    }

    /// The ping [`poll`](Self::poll) asked for could not be sent: do not
    /// wait for an answer to it.
    pub fn ping_not_sent(&mut self) {
        self.deadline = None;
    }

    /// The caller was not reading (so silence proves nothing): a pending
    /// deadline restarts from `now`.
    pub fn defer(&mut self, now: I) {
        if let Some(d) = self.deadline.as_mut() {
            *d = now + self.timeout;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn pings_each_interval_and_finds_the_dead() {
        let mut hb = Heartbeat::new(ms(100), ms(30), ms(0));
        assert_eq!(hb.next_wake(), ms(100));
        assert_eq!(hb.poll(ms(99)), None);
        assert_eq!(hb.poll(ms(100)), Some(Action::SendPing));
        assert_eq!(hb.next_wake(), ms(130));
        hb.on_answer(ms(110));
        assert_eq!(hb.poll(ms(130)), None);
        assert_eq!(hb.poll(ms(200)), Some(Action::SendPing));
        assert_eq!(hb.poll(ms(230)), Some(Action::PeerDead));
    }

    #[test]
    fn the_hubs_round_rule() {
        assert_eq!(decide(5, None, 5), Some(Action::SendPing));
        assert_eq!(decide(5, Some(5), 5), Some(Action::PeerDead));
        assert_eq!(decide((), Some(()), ()), Some(Action::PeerDead));
    }
}
