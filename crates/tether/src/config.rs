//! Settings for one WebSocket, with defaults that are safe against a hostile peer.

use std::time::Duration;
use tether_proto::DeflateConfig;

/// Settings for a [`WebSocket`](crate::WebSocket). Every limit is bounded by default.
#[derive(Clone, Debug)]
pub struct Config {
    /// Largest message accepted (sum of fragments). Default 16 MiB; a larger
    /// one closes the connection with 1009 before it is buffered.
    pub max_message_size: usize,
    /// Largest single frame accepted. Default 16 MiB.
    pub max_frame_size: usize,
    /// Answer pings automatically. Default true.
    pub auto_pong: bool,
    /// Echo the peer's close frame automatically. Default true.
    pub auto_close: bool,
    /// When this many bytes are queued for sending, `send`/`feed` wait for the
    /// socket to drain (backpressure) instead of growing the buffer.
    /// Default 128 KiB.
    pub write_buffer_high_water: usize,
    /// How long to wait for the peer's close frame (or the server's EOF)
    /// after sending ours, before dropping the TCP connection. Default 10 s.
    pub close_timeout: Duration,
    /// How long the opening handshake may take. Default 10 s.
    pub handshake_timeout: Duration,
    /// Largest handshake request or response head. Default 16 KiB.
    pub max_handshake_size: usize,
    /// permessage-deflate compression (RFC 7692): offered by clients,
    /// accepted by servers when the client offers it. Default `None` (off):
    /// the lean path stays lean, and compression costs CPU per message.
    ///
    /// `Some(DeflateConfig::default())` compresses messages of 256 bytes or
    /// more without context takeover, so an idle connection holds no
    /// compression memory; see [`DeflateConfig`] for the settings and the
    /// memory each costs per connection.
    pub deflate: Option<DeflateConfig>,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            max_message_size: tether_proto::config::DEFAULT_MAX_MESSAGE_SIZE,
            max_frame_size: tether_proto::config::DEFAULT_MAX_MESSAGE_SIZE,
            auto_pong: true,
            auto_close: true,
            write_buffer_high_water: 128 * 1024,
            close_timeout: Duration::from_secs(10),
            handshake_timeout: Duration::from_secs(10),
            max_handshake_size: tether_proto::handshake::DEFAULT_MAX_HANDSHAKE_SIZE,
            deflate: None,
        }
    }
}

impl Config {
    pub(crate) fn proto(&self) -> tether_proto::Config {
        tether_proto::Config {
            max_frame_size: self.max_frame_size,
            max_message_size: self.max_message_size,
            auto_pong: self.auto_pong,
            auto_close: self.auto_close,
            close_timeout: self.close_timeout,
        }
    }
}
