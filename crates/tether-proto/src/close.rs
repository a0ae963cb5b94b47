//! Close codes and close frames (RFC 6455 §5.5.1, §7.4).

use crate::error::ProtocolError;
use crate::message::Utf8Bytes;
use bytes::{BufMut, Bytes};
use std::fmt;

/// A WebSocket close status code (RFC 6455 §7.4).
///
/// Any `u16` can be represented; [`CloseCode::is_allowed_on_wire`] tells
/// whether a peer may send it in a close frame.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct CloseCode(pub u16);

impl CloseCode {
    /// 1000: the purpose for which the connection was established has been fulfilled.
    pub const NORMAL: CloseCode = CloseCode(1000);
    /// 1001: an endpoint is going away (server shutdown, page navigated away).
    pub const GOING_AWAY: CloseCode = CloseCode(1001);
    /// 1002: the peer broke the protocol.
    pub const PROTOCOL_ERROR: CloseCode = CloseCode(1002);
    /// 1003: a data type that cannot be accepted (e.g. binary on a text-only endpoint).
    pub const UNSUPPORTED_DATA: CloseCode = CloseCode(1003);
    /// 1005: no status code was present. Never sent on the wire.
    pub const NO_STATUS: CloseCode = CloseCode(1005);
    /// 1006: the connection closed without a close frame. Never sent on the wire.
    pub const ABNORMAL: CloseCode = CloseCode(1006);
    /// 1007: a message's data was not consistent with its type (invalid UTF-8 in text).
    pub const INVALID_PAYLOAD: CloseCode = CloseCode(1007);
    /// 1008: a message violated the endpoint's policy.
    pub const POLICY_VIOLATION: CloseCode = CloseCode(1008);
    /// 1009: a message was too big to process.
    pub const MESSAGE_TOO_BIG: CloseCode = CloseCode(1009);
    /// 1010: the client expected the server to negotiate an extension.
    pub const MANDATORY_EXTENSION: CloseCode = CloseCode(1010);
    /// 1011: the server hit an unexpected condition.
    pub const INTERNAL_ERROR: CloseCode = CloseCode(1011);
    /// 1012: the service is restarting.
    pub const SERVICE_RESTART: CloseCode = CloseCode(1012);
    /// 1013: try again later (the server is overloaded, or the client is too slow).
    pub const TRY_AGAIN_LATER: CloseCode = CloseCode(1013);
    /// 1015: the TLS handshake failed. Never sent on the wire.
    pub const TLS_HANDSHAKE: CloseCode = CloseCode(1015);

    /// Whether this code may appear in a close frame on the wire.
    ///
    /// RFC 6455 §7.4.1 defines 1000-1003 and 1007-1011; IANA later registered
    /// 1012-1014. 3000-4999 are for libraries and applications. 1004, 1005,
    /// 1006 and 1015 are reserved and must never be sent; everything else
    /// below 3000 is unassigned and treated as a protocol error.
    pub fn is_allowed_on_wire(self) -> bool {
        matches!(self.0, 1000..=1003 | 1007..=1014 | 3000..=4999)
    }

    /// The numeric value.
    pub fn as_u16(self) -> u16 {
        self.0
    }
}

impl From<u16> for CloseCode {
    fn from(code: u16) -> Self {
        CloseCode(code)
    }
}

impl From<CloseCode> for u16 {
    fn from(code: CloseCode) -> Self {
        code.0
    }
}

impl fmt::Debug for CloseCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "CloseCode({})", self.0)
    }
}

impl fmt::Display for CloseCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let name = match self.0 {
            1000 => "normal closure",
            1001 => "going away",
            1002 => "protocol error",
            1003 => "unsupported data",
            1005 => "no status",
            1006 => "abnormal closure",
            1007 => "invalid payload data",
            1008 => "policy violation",
            1009 => "message too big",
            1010 => "mandatory extension",
            1011 => "internal error",
            1012 => "service restart",
            1013 => "try again later",
            1015 => "TLS handshake failure",
            _ => return write!(f, "{}", self.0),
        };
        write!(f, "{} ({name})", self.0)
    }
}

/// The body of a close frame: a status code and a UTF-8 reason.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CloseFrame {
    /// The status code.
    pub code: CloseCode,
    /// Human-readable reason; at most 123 bytes so the frame fits in 125 (§5.5).
    pub reason: Utf8Bytes,
}

/// Longest reason that fits in a control frame after the 2-byte code.
pub const MAX_REASON_LEN: usize = 123;

impl CloseFrame {
    /// A close frame with `code` and `reason`. A reason longer than 123 bytes is
    /// truncated at a character boundary (RFC 6455 §5.5: control frames carry
    /// at most 125 bytes).
    pub fn new(code: impl Into<CloseCode>, reason: &str) -> Self {
        let mut end = reason.len().min(MAX_REASON_LEN);
        while !reason.is_char_boundary(end) {
            end -= 1;
        }
        CloseFrame { code: code.into(), reason: Utf8Bytes::from(&reason[..end]) }
    }

    /// Parse a received close frame payload (RFC 6455 §5.5.1).
    ///
    /// Returns `None` for an empty body (no status code), and an error for a
    /// 1-byte body, a code not allowed on the wire, or a reason that is not UTF-8.
    pub fn parse(payload: Bytes) -> Result<Option<CloseFrame>, ProtocolError> {
        match payload.len() {
            0 => Ok(None),
            // §5.5.1: if there is a body, the first two bytes are the status code.
            1 => Err(ProtocolError::CloseFrameTooShort),
            _ => {
                let code = CloseCode(u16::from_be_bytes([payload[0], payload[1]]));
                if !code.is_allowed_on_wire() {
                    return Err(ProtocolError::InvalidCloseCode(code.0));
                }
                let reason = Utf8Bytes::try_from(payload.slice(2..))
                    .map_err(|_| ProtocolError::InvalidUtf8)?;
                Ok(Some(CloseFrame { code, reason }))
            }
        }
    }

    /// Encode the body: two bytes of code, then the reason.
    pub fn encode_into(&self, dst: &mut Vec<u8>) {
        dst.put_u16(self.code.0);
        dst.extend_from_slice(self.reason.as_bytes());
    }
}

impl fmt::Display for CloseFrame {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.reason.is_empty() {
            write!(f, "{}", self.code)
        } else {
            write!(f, "{}: {}", self.code, self.reason.as_str())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wire_codes_follow_rfc_7_4() {
        for code in [1000, 1001, 1002, 1003, 1007, 1008, 1009, 1010, 1011, 3000, 4999] {
            assert!(CloseCode(code).is_allowed_on_wire(), "{code}");
        }
        for code in [0, 999, 1004, 1005, 1006, 1015, 1016, 1100, 2000, 2999, 5000, 65535] {
            assert!(!CloseCode(code).is_allowed_on_wire(), "{code}");
        }
    }

    #[test]
    fn parse_close_bodies() {
        assert_eq!(CloseFrame::parse(Bytes::new()).unwrap(), None);
        assert_eq!(CloseFrame::parse(Bytes::from_static(&[3])), Err(ProtocolError::CloseFrameTooShort));
        assert_eq!(
            CloseFrame::parse(Bytes::from_static(&[0x03, 0xed])),
            Err(ProtocolError::InvalidCloseCode(1005))
        );
        assert_eq!(
            CloseFrame::parse(Bytes::from_static(&[0x03, 0xe8, 0xff])),
            Err(ProtocolError::InvalidUtf8)
        );
        let frame = CloseFrame::parse(Bytes::from_static(b"\x03\xe8bye")).unwrap().unwrap();
        assert_eq!(frame.code, CloseCode::NORMAL);
        assert_eq!(frame.reason.as_str(), "bye");
    }

    #[test]
    fn long_reasons_are_truncated_on_char_boundary() {
        let reason = "é".repeat(100); // 200 bytes
        let frame = CloseFrame::new(1000, &reason);
        assert!(frame.reason.len() <= MAX_REASON_LEN);
        assert_eq!(frame.reason.len() % 2, 0);
    }
}
