//! Errors. Variants are named after the rule that was broken.
//!
//! [`ProtocolError::close_code`] is the one place where a failure is mapped to
//! the close code sent to the peer.

use crate::close::CloseCode;

/// The peer broke a rule of RFC 6455. The connection must be failed (§7.1.7):
/// the [`Connection`](crate::Connection) has already queued a close frame with
/// [`ProtocolError::close_code`]; flush it and close the transport.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ProtocolError {
    /// RSV1-3 set without an extension that defines them (§5.2).
    #[error("reserved bits set without a negotiated extension")]
    ReservedBitsSet,
    /// RSV1 ("compressed", RFC 7692 §6) on a control frame or a
    /// continuation frame: only the first frame of a data message carries it.
    #[error("RSV1 (compressed) set on a control or continuation frame")]
    CompressedBitOnWrongFrame,
    /// Opcodes 0x3-0x7 and 0xB-0xF are reserved (§5.2).
    #[error("reserved opcode {0:#x}")]
    ReservedOpcode(u8),
    /// Control frames must not be fragmented (§5.5).
    #[error("fragmented control frame")]
    FragmentedControlFrame,
    /// Control frames carry at most 125 bytes (§5.5).
    #[error("control frame payload of {0} bytes (max 125)")]
    ControlFrameTooLarge(u64),
    /// A server must fail on an unmasked client frame (§5.1).
    #[error("unmasked frame from client")]
    UnmaskedFrameFromClient,
    /// A client must fail on a masked server frame (§5.1).
    #[error("masked frame from server")]
    MaskedFrameFromServer,
    /// The most significant bit of a 64-bit length must be 0 (§5.2).
    #[error("64-bit payload length has its most significant bit set")]
    InvalidPayloadLength,
    /// A continuation frame arrived with no fragmented message in progress (§5.4).
    #[error("continuation frame without a message to continue")]
    UnexpectedContinuation,
    /// A new text/binary frame arrived in the middle of a fragmented message (§5.4).
    #[error("new data frame while a fragmented message is in progress")]
    ExpectedContinuation,
    /// A text message or close reason is not valid UTF-8 (§8.1).
    #[error("invalid UTF-8 in text message or close reason")]
    InvalidUtf8,
    /// A close frame body of exactly one byte (§5.5.1).
    #[error("close frame body of 1 byte (a status code needs 2)")]
    CloseFrameTooShort,
    /// A close code that must not appear on the wire (§7.4).
    #[error("close code {0} is not allowed on the wire")]
    InvalidCloseCode(u16),
    /// A frame larger than `Config::max_frame_size`.
    #[error("frame of {size} bytes exceeds the limit of {max}")]
    FrameTooLarge {
        /// The announced payload length.
        size: u64,
        /// The configured limit.
        max: usize,
    },
    /// A message larger than `Config::max_message_size`.
    #[error("message of at least {size} bytes exceeds the limit of {max}")]
    MessageTooLarge {
        /// The size reached so far.
        size: u64,
        /// The configured limit.
        max: usize,
    },
    /// A compressed message (RFC 7692) that does not inflate. The message
    /// size limit applies to the inflated size: passing it while inflating
    /// is [`MessageTooLarge`](Self::MessageTooLarge).
    #[error("compressed message does not inflate: {0}")]
    BadCompressedData(String),
}

impl ProtocolError {
    /// The close code sent to the peer for this failure. The single mapping
    /// from rule to code.
    pub fn close_code(&self) -> CloseCode {
        match self {
            ProtocolError::ReservedBitsSet
            | ProtocolError::CompressedBitOnWrongFrame
            | ProtocolError::ReservedOpcode(_)
            | ProtocolError::FragmentedControlFrame
            | ProtocolError::ControlFrameTooLarge(_)
            | ProtocolError::UnmaskedFrameFromClient
            | ProtocolError::MaskedFrameFromServer
            | ProtocolError::InvalidPayloadLength
            | ProtocolError::UnexpectedContinuation
            | ProtocolError::ExpectedContinuation
            | ProtocolError::CloseFrameTooShort
            | ProtocolError::InvalidCloseCode(_) => CloseCode::PROTOCOL_ERROR,
            // §8.1: invalid UTF-8 in a text message fails with 1007.
            ProtocolError::InvalidUtf8 | ProtocolError::BadCompressedData(_) => {
                CloseCode::INVALID_PAYLOAD
            }
            ProtocolError::FrameTooLarge { .. } | ProtocolError::MessageTooLarge { .. } => {
                CloseCode::MESSAGE_TOO_BIG
            }
        }
    }
}

/// Errors returned to the caller of a [`Connection`](crate::Connection).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The peer broke the protocol; the connection is failed.
    #[error("protocol error: {0}")]
    Protocol(#[from] ProtocolError),
    /// A close frame was already sent: no more messages can be sent (§5.5.1).
    #[error("the connection is closing or closed")]
    Closed,
    /// Ping, pong and close payloads are limited to 125 bytes (§5.5).
    #[error("control frame payload of {0} bytes (max 125)")]
    ControlPayloadTooLarge(usize),
    /// Codes like 1005, 1006 and 1015 must never be sent (§7.4.1).
    #[error("close code {0} must not be sent")]
    InvalidCloseCode(u16),
    /// A data frame was sent out of order (e.g. a continuation without a start).
    #[error("invalid fragment sequence: {0}")]
    InvalidFragment(&'static str),
}

/// The opening handshake failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum HandshakeError {
    /// The bytes are not a valid HTTP/1.1 message.
    #[error("malformed HTTP: {0}")]
    MalformedHttp(String),
    /// The handshake headers exceed the configured size or count.
    #[error("handshake headers exceed {0} bytes or 64 headers")]
    HeadersTooLarge(usize),
    /// §4.2.1: the method must be GET.
    #[error("method {0} is not GET")]
    MethodNotGet(String),
    /// §4.2.1: HTTP/1.1 or higher.
    #[error("HTTP version is not 1.1")]
    UnsupportedHttpVersion,
    /// §4.2.1: a Host header is required.
    #[error("missing Host header")]
    MissingHost,
    /// §4.2.1: `Upgrade: websocket` is required.
    #[error("missing or invalid Upgrade header (expected \"websocket\")")]
    MissingUpgrade,
    /// §4.2.1: `Connection: Upgrade` is required.
    #[error("missing or invalid Connection header (expected \"Upgrade\")")]
    MissingConnectionUpgrade,
    /// §4.2.1: Sec-WebSocket-Key must be base64 of 16 bytes.
    #[error("missing or invalid Sec-WebSocket-Key")]
    InvalidKey,
    /// §4.2.2: only version 13 is supported; answered with 426.
    #[error("unsupported Sec-WebSocket-Version {0:?} (expected 13)")]
    UnsupportedVersion(String),
    /// Client side: the server did not answer 101.
    #[error("server answered HTTP {0} instead of 101 Switching Protocols")]
    UnexpectedStatus(u16),
    /// Client side: Sec-WebSocket-Accept does not match the key (§4.1).
    #[error("Sec-WebSocket-Accept does not match the key sent")]
    InvalidAccept,
    /// Client side: the server chose a subprotocol that was not offered (§4.1).
    #[error("server selected subprotocol {0:?} which was not offered")]
    UnexpectedSubprotocol(String),
    /// Client side: the server answered with an extension that was not offered (§4.1).
    #[error("server accepted extension {0:?} which was not offered")]
    UnexpectedExtension(String),
    /// Client side: the server accepted an extension with parameters that
    /// were not offered or are invalid (RFC 7692 §7.1: fail the connection).
    #[error("invalid extension in the server's answer: {0}")]
    InvalidExtensionResponse(String),
    /// RFC 8441 §4: a WebSocket over HTTP/2 is an extended CONNECT
    /// (`:method = CONNECT`, `:protocol = websocket`); this request is not.
    #[error("not a WebSocket extended CONNECT ({0}); RFC 8441 wants :method CONNECT and :protocol websocket")]
    NotExtendedConnect(String),
}

impl HandshakeError {
    /// The HTTP status a server answers with, for server-side failures.
    pub fn http_status(&self) -> u16 {
        match self {
            HandshakeError::HeadersTooLarge(_) => 431,
            HandshakeError::MethodNotGet(_) => 405,
            HandshakeError::UnsupportedHttpVersion => 505,
            // §4.4: answer with 426 and the versions we support.
            HandshakeError::UnsupportedVersion(_) => 426,
            _ => 400,
        }
    }
}
