//! Hub settings, with defaults suited to a public chat or dashboard server.

pub use crate::limit::RateLimit;
use std::time::Duration;

/// What to do with a connection whose outbound queue is full.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SlowConsumerPolicy {
    /// Drop the oldest queued messages to make room, count them, and tell a
    /// `tether.v1` client how many it missed (an `error` envelope with code
    /// `lagged`). The connection stays open.
    DropOldest,
    /// Close the connection with this code (1013 "try again later" or 1008
    /// "policy violation") and a reason.
    Close(u16),
}

/// Settings of a [`Hub`](crate::Hub).
#[derive(Clone, Debug)]
pub struct HubConfig {
    /// Ping every client this often; a client that has not answered the
    /// previous ping by the next one is terminated. Default 30 s.
    pub heartbeat_interval: Duration,
    /// Most messages queued for one client. Default 1024.
    pub queue_max_messages: usize,
    /// Most bytes queued for one client (frames are shared between clients,
    /// so this bounds what one client can pin). Default 4 MiB.
    pub queue_max_bytes: usize,
    /// What happens when a queue is full. Default: drop oldest.
    pub slow_consumer: SlowConsumerPolicy,
    /// Text sent to a plain (no subprotocol) client when it connects.
    /// `{session}` and `{room}` are replaced. Default: a welcome line.
    pub welcome: String,
    /// A connection whose outbound side has written nothing for this long
    /// (while something waits to be sent) is dropped and counted. Checked at
    /// each heartbeat, so the effective time is rounded up to whole
    /// heartbeat intervals. Default 90 s: well above the heartbeat, so a
    /// client on a slow link is not mistaken for a dead one.
    pub write_stall_timeout: Duration,
    /// Messages (text, binary and pings) a connection may send per second,
    /// with a burst. Over it, a message is refused (`rate_limited`);
    /// refusals past the burst within ~10 s close the connection with 1008.
    /// Default 100/s, burst 200.
    pub message_rate: RateLimit,
    /// Subscribe and unsubscribe requests per second per connection, with a
    /// burst (refused and closed as for `message_rate`). Default 20/s, burst
    /// 256 (a reconnecting client may resubscribe to all its topics at once).
    pub subscribe_rate: RateLimit,
    /// Topics starting with any of these are conflated: a newer message
    /// replaces an unsent older one with the same key (or, without a key,
    /// any unsent older message of the topic) in a slow subscriber's queue.
    /// A publish with a `key` is conflated wherever it goes. Default: none.
    pub conflate_prefixes: Vec<String>,
    /// Most bytes of previous message contents kept, over all topics, to
    /// make delta patches for `"delta":"merge-patch"` subscriptions; past
    /// it, messages go in full. Default 64 MiB.
    pub delta_cache_bytes: usize,
    /// How often each `$room:` topic publishes its batched player states
    /// ([`crate::room`]). Default 50 ms (20 ticks a second).
    pub room_tick: Duration,
    /// How long a connection admitted without a token (a browser that
    /// sends it in a first `auth` message) may take to send it before it
    /// is closed (1008). Default 10 s.
    pub auth_timeout: Duration,
    /// How long before its token expires a connection is sent a
    /// `token_expiring` envelope. Default 60 s.
    pub token_expiry_warning: Duration,
    /// How long after its token expired a connection that sent no
    /// `refresh` is closed (1008). Default 30 s. Expiry is checked when the
    /// connection wakes up, at least once per heartbeat interval, so the
    /// warning and the close may come up to one interval late.
    pub token_expiry_grace: Duration,
}

impl Default for HubConfig {
    fn default() -> Self {
        HubConfig {
            heartbeat_interval: Duration::from_secs(30),
            queue_max_messages: 1024,
            queue_max_bytes: 4 << 20,
            slow_consumer: SlowConsumerPolicy::DropOldest,
            welcome: "Welcome to tether! You are {session} in room {room}.".into(),
            write_stall_timeout: Duration::from_secs(90),
            message_rate: RateLimit { per_second: 100, burst: 200 },
            subscribe_rate: RateLimit { per_second: 20, burst: 256 },
            conflate_prefixes: Vec::new(),
            delta_cache_bytes: 64 << 20,
            room_tick: Duration::from_millis(50),
            auth_timeout: Duration::from_secs(10),
            token_expiry_warning: Duration::from_secs(60),
            token_expiry_grace: Duration::from_secs(30),
        }
    }
}
