//! Limits and behaviour switches for a protocol connection.

/// Limits for one connection. Every limit has a default that is safe against a
/// hostile peer: nothing a peer sends can make the connection buffer more than
/// `max_message_size` (+ one frame header) of payload.
#[derive(Clone, Debug)]
pub struct Config {
    /// Largest payload of a single frame accepted from the peer.
    ///
    /// Default: 16 MiB. A frame header announcing more is rejected with close
    /// code 1009 before any of its payload is buffered.
    pub max_frame_size: usize,
    /// Largest message (sum of all fragments) accepted from the peer.
    ///
    /// Default: 16 MiB, the largest message Autobahn|Testsuite sends (case
    /// 9.1.6) and far above what chat, dashboards or games need. Lower it for
    /// servers with many untrusted clients: the worst case memory is about
    /// this figure times the number of connections.
    pub max_message_size: usize,
    /// Reply to pings with pongs automatically (RFC 6455 §5.5.2 requires a pong).
    ///
    /// Default: true. Turn off only if the application sends pongs itself.
    pub auto_pong: bool,
    /// Echo a received close frame automatically (RFC 6455 §5.5.1).
    ///
    /// Default: true.
    pub auto_close: bool,
    /// How long the closing handshake may take once it has started: waiting
    /// for the peer's close frame, (client) for the server to close the
    /// transport, or, after a failure, lingering for the peer to hang up.
    /// When it passes, [`Connection::handle_timeout`](crate::Connection::handle_timeout)
    /// ends the connection. Default: 10 s (python-websockets' default too).
    pub close_timeout: std::time::Duration,
}

/// 16 MiB.
pub const DEFAULT_MAX_MESSAGE_SIZE: usize = 16 << 20;

impl Default for Config {
    fn default() -> Self {
        Config {
            max_frame_size: DEFAULT_MAX_MESSAGE_SIZE,
            max_message_size: DEFAULT_MAX_MESSAGE_SIZE,
            auto_pong: true,
            auto_close: true,
            close_timeout: std::time::Duration::from_secs(10),
        }
    }
}
