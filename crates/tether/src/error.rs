//! The error type of the async library.

use tether_proto::{HandshakeError, ProtocolError};

/// Anything that can go wrong with a WebSocket.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The transport failed (connection reset, refused, ...).
    #[error("I/O error: {0}")]
    Io(#[from] std::io::Error),
    /// The peer broke the protocol; a close frame with the matching code
    /// (1002, 1007, 1009...) was sent and the connection is closed.
    #[error("protocol error: {0}")]
    Protocol(#[from] ProtocolError),
    /// The opening handshake failed (bad request, non-101 answer, ...).
    #[error("handshake failed: {0}")]
    Handshake(#[from] HandshakeError),
    /// The server refused the upgrade with this HTTP status (server side:
    /// the application's callback rejected it).
    #[error("upgrade rejected with HTTP {status}")]
    Rejected {
        /// The HTTP status sent.
        status: u16,
    },
    /// The HTTP/2 connection or stream failed (RFC 8441 client: no HTTP/2
    /// by ALPN, no extended CONNECT, stream reset).
    #[error("HTTP/2 error: {0}")]
    Http2(String),
    /// TLS failed (certificate, handshake).
    #[error("TLS error: {0}")]
    Tls(String),
    /// The URL is not a usable `ws://` or `wss://` URL.
    #[error("invalid URL: {0}")]
    InvalidUrl(String),
    /// An operation did not finish in time.
    #[error("{0} timed out")]
    Timeout(&'static str),
    /// A message was sent after the close handshake started, or the socket is closed.
    #[error("the WebSocket is closed")]
    Closed,
    /// The peer closed the TCP connection without a close frame (code 1006).
    #[error("connection closed without a close frame (1006)")]
    AbnormalClosure,
    /// The message cannot be sent (e.g. a control payload over 125 bytes).
    #[error("cannot send: {0}")]
    Send(tether_proto::Error),
    /// The reconnecting client's token function failed.
    #[error("the connection token could not be fetched: {0}")]
    Token(String),
}

impl From<tether_proto::Error> for Error {
    fn from(e: tether_proto::Error) -> Self {
        match e {
            tether_proto::Error::Closed => Error::Closed,
            tether_proto::Error::Protocol(p) => Error::Protocol(p),
            other => Error::Send(other),
        }
    }
}

impl Error {
    /// The peer closed without a close frame, or the socket was already closed.
    pub fn is_closed(&self) -> bool {
        matches!(self, Error::Closed | Error::AbnormalClosure)
    }

    /// A timeout (handshake, close, connect).
    pub fn is_timeout(&self) -> bool {
        matches!(self, Error::Timeout(_))
    }

    /// The HTTP status of a refused handshake, when the server answered one.
    pub fn http_status(&self) -> Option<u16> {
        match self {
            Error::Handshake(HandshakeError::UnexpectedStatus(s)) => Some(*s),
            Error::Rejected { status } => Some(*status),
            _ => None,
        }
    }
}

/// Result with [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;
