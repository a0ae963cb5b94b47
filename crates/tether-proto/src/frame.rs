//! Frame headers (RFC 6455 §5.2): parsing and encoding.
//!
//! ```text
//!  0                   1                   2                   3
//!  0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1
//! +-+-+-+-+-------+-+-------------+-------------------------------+
//! |F|R|R|R| opcode|M| Payload len |    Extended payload length    |
//! |I|S|S|S|  (4)  |A|     (7)     |             (16/64)           |
//! |N|V|V|V|       |S|             |   (if payload len==126/127)   |
//! | |1|2|3|       |K|             |                               |
//! +-+-+-+-+-------+-+-------------+ - - - - - - - - - - - - - - - +
//! ```

use crate::error::ProtocolError;

/// Frame opcodes (§5.2, §11.8).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum OpCode {
    /// 0x0: continues a fragmented message.
    Continuation,
    /// 0x1: starts a text message.
    Text,
    /// 0x2: starts a binary message.
    Binary,
    /// 0x8: close.
    Close,
    /// 0x9: ping.
    Ping,
    /// 0xA: pong.
    Pong,
}

impl OpCode {
    /// Decode the 4-bit opcode; reserved values are errors (§5.2).
    pub fn from_u8(op: u8) -> Result<OpCode, ProtocolError> {
        Ok(match op {
            0x0 => OpCode::Continuation,
            0x1 => OpCode::Text,
            0x2 => OpCode::Binary,
            0x8 => OpCode::Close,
            0x9 => OpCode::Ping,
            0xA => OpCode::Pong,
            other => return Err(ProtocolError::ReservedOpcode(other)),
        })
    }

    /// The 4-bit value.
    pub fn as_u8(self) -> u8 {
        match self {
            OpCode::Continuation => 0x0,
            OpCode::Text => 0x1,
            OpCode::Binary => 0x2,
            OpCode::Close => 0x8,
            OpCode::Ping => 0x9,
            OpCode::Pong => 0xA,
        }
    }

    /// Close, ping and pong are control frames (§5.5).
    pub fn is_control(self) -> bool {
        matches!(self, OpCode::Close | OpCode::Ping | OpCode::Pong)
    }
}

/// A parsed frame header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FrameHeader {
    /// Final fragment of a message.
    pub fin: bool,
    /// RSV1 (used by permessage-deflate, RFC 7692).
    pub rsv1: bool,
    /// RSV2 | RSV3 (no extension here defines them).
    pub rsv23: bool,
    /// The opcode.
    pub opcode: OpCode,
    /// The masking key, present on every client-to-server frame.
    pub mask: Option<[u8; 4]>,
    /// The payload length.
    pub payload_len: u64,
}

/// The largest header: 2 + 8 (64-bit length) + 4 (mask).
pub const MAX_HEADER_LEN: usize = 14;

impl FrameHeader {
    /// Parse a header from the start of `buf`. Returns `Ok(None)` if more bytes
    /// are needed, or the header and its length in bytes.
    ///
    /// Checks the rules that need no connection state: reserved opcodes,
    /// fragmented or oversized control frames and the 64-bit length's top bit.
    #[inline]
    pub fn parse(buf: &[u8]) -> Result<Option<(FrameHeader, usize)>, ProtocolError> {
        if buf.len() < 2 {
            return Ok(None);
        }
        let b0 = buf[0];
        let b1 = buf[1];
        let fin = b0 & 0x80 != 0;
        let opcode = OpCode::from_u8(b0 & 0x0f)?;
        let masked = b1 & 0x80 != 0;
        let len7 = b1 & 0x7f;
        let (payload_len, mut pos) = match len7 {
            126 => {
                if buf.len() < 4 {
                    return Ok(None);
                }
                (u16::from_be_bytes([buf[2], buf[3]]) as u64, 4)
            }
            127 => {
                if buf.len() < 10 {
                    return Ok(None);
                }
                let len = u64::from_be_bytes(buf[2..10].try_into().unwrap());
                // §5.2: the most significant bit MUST be 0.
                if len >> 63 != 0 {
                    return Err(ProtocolError::InvalidPayloadLength);
                }
                (len, 10)
            }
            n => (n as u64, 2),
        };
        if opcode.is_control() {
            // §5.5: control frames MUST NOT be fragmented and carry ≤ 125 bytes.
            if !fin {
                return Err(ProtocolError::FragmentedControlFrame);
            }
            if payload_len > 125 {
                return Err(ProtocolError::ControlFrameTooLarge(payload_len));
            }
        }
        let mask = if masked {
            if buf.len() < pos + 4 {
                return Ok(None);
            }
            let key = [buf[pos], buf[pos + 1], buf[pos + 2], buf[pos + 3]];
            pos += 4;
            Some(key)
        } else {
            None
        };
        Ok(Some((
            FrameHeader { fin, rsv1: b0 & 0x40 != 0, rsv23: b0 & 0x30 != 0, opcode, mask, payload_len },
            pos,
        )))
    }

    /// Encode into `dst`, returning the number of bytes written (2 to 14).
    /// Always uses the shortest length encoding (§5.2).
    #[inline]
    pub fn encode(&self, dst: &mut [u8; MAX_HEADER_LEN]) -> usize {
        dst[0] = (self.fin as u8) << 7
            | (self.rsv1 as u8) << 6
            | if self.rsv23 { 0x30 } else { 0 }
            | self.opcode.as_u8();
        let mask_bit = if self.mask.is_some() { 0x80 } else { 0 };
        let mut pos = if self.payload_len < 126 {
            dst[1] = mask_bit | self.payload_len as u8;
            2
        } else if self.payload_len <= u16::MAX as u64 {
            dst[1] = mask_bit | 126;
            dst[2..4].copy_from_slice(&(self.payload_len as u16).to_be_bytes());
            4
        } else {
            dst[1] = mask_bit | 127;
            dst[2..10].copy_from_slice(&self.payload_len.to_be_bytes());
            10
        };
        if let Some(key) = self.mask {
            dst[pos..pos + 4].copy_from_slice(&key);
            pos += 4;
        }
        pos
    }
}

/// A complete server-to-client frame, encoded once so it can be sent to many
/// connections (broadcast) without re-encoding. Server frames are never
/// masked (§5.1), so the same bytes are valid on every connection.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EncodedFrame(bytes::Bytes);

impl EncodedFrame {
    /// Encode a text message as one final frame.
    pub fn text(text: &str) -> Self {
        Self::encode(OpCode::Text, text.as_bytes())
    }

    /// Encode a binary message as one final frame.
    pub fn binary(data: &[u8]) -> Self {
        Self::encode(OpCode::Binary, data)
    }

    /// Encode a ping (payload of at most 125 bytes; longer payloads are truncated).
    pub fn ping(data: &[u8]) -> Self {
        Self::encode(OpCode::Ping, &data[..data.len().min(125)])
    }

    fn encode(opcode: OpCode, payload: &[u8]) -> Self {
        let h = FrameHeader { fin: true, rsv1: false, rsv23: false, opcode, mask: None, payload_len: payload.len() as u64 };
        let mut hdr = [0u8; MAX_HEADER_LEN];
        let n = h.encode(&mut hdr);
        let mut buf = Vec::with_capacity(n + payload.len());
        buf.extend_from_slice(&hdr[..n]);
        buf.extend_from_slice(payload);
        EncodedFrame(buf.into())
    }

    /// The frame's bytes.
    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }

    /// Total length on the wire.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Never true: a frame has at least a 2-byte header.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub(crate) fn into_bytes(self) -> bytes::Bytes {
        self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn rfc_5_7_examples() {
        // A single-frame unmasked text message "Hello".
        let (h, n) = FrameHeader::parse(&[0x81, 0x05, 0x48, 0x65]).unwrap().unwrap();
        assert_eq!((h.fin, h.opcode, h.mask, h.payload_len, n), (true, OpCode::Text, None, 5, 2));
        // A single-frame masked text message.
        let (h, n) = FrameHeader::parse(&[0x81, 0x85, 0x37, 0xfa, 0x21, 0x3d]).unwrap().unwrap();
        assert_eq!((h.mask, n), (Some([0x37, 0xfa, 0x21, 0x3d]), 6));
        // Fragmented: first frame "Hel" without FIN, then continuation "lo".
        let (h, _) = FrameHeader::parse(&[0x01, 0x03]).unwrap().unwrap();
        assert_eq!((h.fin, h.opcode), (false, OpCode::Text));
        let (h, _) = FrameHeader::parse(&[0x80, 0x02]).unwrap().unwrap();
        assert_eq!((h.fin, h.opcode), (true, OpCode::Continuation));
        // 256 bytes binary in a single unmasked frame: 0x82 0x7E 0x0100.
        let (h, n) = FrameHeader::parse(&[0x82, 0x7e, 0x01, 0x00]).unwrap().unwrap();
        assert_eq!((h.opcode, h.payload_len, n), (OpCode::Binary, 256, 4));
        // 64 KiB binary: 0x82 0x7F 0x0000000000010000.
        let (h, n) = FrameHeader::parse(&[0x82, 0x7f, 0, 0, 0, 0, 0, 1, 0, 0]).unwrap().unwrap();
        assert_eq!((h.payload_len, n), (65536, 10));
    }

    #[test]
    fn incomplete_headers_ask_for_more() {
        assert_eq!(FrameHeader::parse(&[]).unwrap(), None);
        assert_eq!(FrameHeader::parse(&[0x82]).unwrap(), None);
        assert_eq!(FrameHeader::parse(&[0x82, 0x7e, 0x01]).unwrap(), None);
        assert_eq!(FrameHeader::parse(&[0x82, 0x7f, 0, 0, 0]).unwrap(), None);
        assert_eq!(FrameHeader::parse(&[0x82, 0x85, 1, 2, 3]).unwrap(), None);
    }

    #[test]
    fn rule_violations() {
        assert_eq!(FrameHeader::parse(&[0x83, 0x00]), Err(ProtocolError::ReservedOpcode(3)));
        assert_eq!(FrameHeader::parse(&[0x8b, 0x00]), Err(ProtocolError::ReservedOpcode(0xb)));
        assert_eq!(FrameHeader::parse(&[0x09, 0x00]), Err(ProtocolError::FragmentedControlFrame));
        assert_eq!(FrameHeader::parse(&[0x89, 0x7e, 0x00, 0x7e]), Err(ProtocolError::ControlFrameTooLarge(126)));
        assert_eq!(
            FrameHeader::parse(&[0x82, 0x7f, 0x80, 0, 0, 0, 0, 0, 0, 0]),
            Err(ProtocolError::InvalidPayloadLength)
        );
    }

    proptest! {
        #[test]
        fn encode_then_parse(fin: bool, rsv1: bool, op in prop::sample::select(vec![OpCode::Continuation, OpCode::Text, OpCode::Binary]), mask: Option<[u8; 4]>, len in prop_oneof![0u64..200, 60000u64..70000, (1u64 << 32)..(1u64 << 40)]) {
            let h = FrameHeader { fin, rsv1, rsv23: false, opcode: op, mask, payload_len: len };
            let mut buf = [0u8; MAX_HEADER_LEN];
            let n = h.encode(&mut buf);
            prop_assert_eq!(FrameHeader::parse(&buf[..n]).unwrap(), Some((h, n)));
            // Minimal length encoding.
            let expected = 2 + if len < 126 { 0 } else if len < 65536 { 2 } else { 8 } + if mask.is_some() { 4 } else { 0 };
            prop_assert_eq!(n, expected);
        }
    }
}
