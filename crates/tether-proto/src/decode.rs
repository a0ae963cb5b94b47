//! The frame decoder: the first step of the receive path. Bytes from the
//! transport go into its buffer; complete frames come out, each checked
//! against the rules that a frame header alone can break (reserved bits,
//! masking by role, size limits) and with its payload unmasked.
//!
//! It exists apart from message assembly so that the rules on a single frame
//! can be read, and tested, without fragmentation or compression in the way.
//! A limit is checked on the header, before the payload is buffered: a peer
//! that announces too much is failed without being waited for.

use crate::connection::Role;
use crate::error::ProtocolError;
use crate::frame::{FrameHeader, OpCode};
use crate::mask::apply_mask;
use crate::lazy_buf::LazyBuf;
use bytes::{Buf, BytesMut};

/// Splits the receive buffer into frames (RFC 6455 §5.2).
#[derive(Debug)]
pub(crate) struct FrameDecoder {
    role: Role,
    max_frame_size: usize,
    max_message_size: usize,
    /// RSV1 is allowed on data frames: permessage-deflate was negotiated.
    compression: bool,
    /// What arrived and is not a whole frame yet (one pointer while empty).
    buf: LazyBuf,
}

impl FrameDecoder {
    /// A decoder for the frames a `role` receives, within the given limits.
    pub(crate) fn new(role: Role, max_frame_size: usize, max_message_size: usize) -> Self {
        FrameDecoder { role, max_frame_size, max_message_size, compression: false, buf: LazyBuf::new() }
    }

    /// Allow RSV1 on the first frame of a data message (RFC 7692 §6).
    pub(crate) fn allow_compression(&mut self) {
        self.compression = true;
    }

    /// Append bytes read from the transport.
    #[inline]
    pub(crate) fn extend(&mut self, data: &[u8]) {
        self.buf.get_mut().extend_from_slice(data);
    }

    /// The buffer received bytes are appended to.
    pub(crate) fn buffer_mut(&mut self) -> &mut BytesMut {
        self.buf.get_mut()
    }

    /// Bytes received and not yet taken as frames.
    pub(crate) fn buffered_len(&self) -> usize {
        self.buf.len()
    }

    /// How many more bytes the frame at the head of the buffer needs, once
    /// its header is in.
    pub(crate) fn bytes_needed(&self) -> Option<usize> {
        match FrameHeader::parse(self.buf.as_slice()) {
            Ok(Some((h, n))) => Some((n as u64 + h.payload_len).saturating_sub(self.buf.len() as u64) as usize),
            _ => None,
        }
    }

    /// Drop whatever is buffered and its memory (after a close or a failure).
    pub(crate) fn discard(&mut self) {
        self.buf = LazyBuf::new();
    }

    /// Release the buffer's memory if it holds no data.
    pub(crate) fn shrink_if_idle(&mut self) {
        self.buf.release_if_empty();
    }

    /// Parse and validate one frame from the buffer; its payload unmasked.
    ///
    /// `message_len` is the size of the fragmented message in progress, so
    /// that a continuation which would take it past the message limit fails
    /// on its header. `Ok(None)`: the frame is not complete yet.
    #[inline]
    pub(crate) fn next_frame(&mut self, message_len: u64) -> Result<Option<(FrameHeader, BytesMut)>, ProtocolError> {
        let Some((header, header_len)) = FrameHeader::parse(self.buf.as_slice())? else {
            return Ok(None);
        };
        // §5.2: RSV bits must be 0 unless an extension defines them.
        if header.rsv23 || (header.rsv1 && !self.compression) {
            return Err(ProtocolError::ReservedBitsSet);
        }
        // RFC 7692 §6.1: only the first frame of a data message may carry
        // RSV1; control frames are never compressed.
        if header.rsv1 && !matches!(header.opcode, OpCode::Text | OpCode::Binary) {
            return Err(ProtocolError::CompressedBitOnWrongFrame);
        }
        // §5.1: clients mask every frame; servers never do.
        match (self.role, header.mask.is_some()) {
            (Role::Server, false) => return Err(ProtocolError::UnmaskedFrameFromClient),
            (Role::Client, true) => return Err(ProtocolError::MaskedFrameFromServer),
            _ => {}
        }
        if header.payload_len > self.max_frame_size as u64 {
            return Err(ProtocolError::FrameTooLarge { size: header.payload_len, max: self.max_frame_size });
        }
        if !header.opcode.is_control() {
            let size = if header.opcode == OpCode::Continuation { message_len } else { 0 } + header.payload_len;
            if size > self.max_message_size as u64 {
                return Err(ProtocolError::MessageTooLarge { size, max: self.max_message_size });
            }
        }
        let total = header_len + header.payload_len as usize;
        if self.buf.len() < total {
            return Ok(None);
        }
        let mut frame = if self.buf.len() == total {
            // The common case: the buffer holds exactly this frame.
            self.buf.take()
        } else {
            self.buf.get_mut().split_to(total)
        };
        frame.advance(header_len);
        if let Some(key) = header.mask {
            apply_mask(&mut frame, key);
        }
        Ok(Some((header, frame)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MAX: usize = 1 << 20;

    fn server() -> FrameDecoder {
        FrameDecoder::new(Role::Server, MAX, MAX)
    }

    #[test]
    fn masked_frame_from_a_client_is_unmasked() {
        // RFC 6455 §5.7: a single-frame masked text message "Hello".
        let mut d = server();
        d.extend(&[0x81, 0x85, 0x37, 0xfa, 0x21, 0x3d, 0x7f, 0x9f, 0x4d, 0x51, 0x58]);
        let (header, payload) = d.next_frame(0).unwrap().unwrap();
        assert_eq!(header.opcode, OpCode::Text);
        assert!(header.fin);
        assert_eq!(&payload[..], b"Hello");
        assert_eq!(d.buffered_len(), 0);
        assert_eq!(d.next_frame(0).unwrap(), None);
    }

    #[test]
    fn frames_come_out_one_at_a_time_and_partial_ones_wait() {
        // §5.7: unmasked "Hel" + "lo" as a client receives them, then half a frame.
        let mut d = FrameDecoder::new(Role::Client, MAX, MAX);
        d.extend(&[0x01, 0x03, 0x48, 0x65, 0x6c, 0x80, 0x02, 0x6c, 0x6f, 0x81, 0x05, 0x48]);
        let (h1, p1) = d.next_frame(0).unwrap().unwrap();
        assert_eq!((h1.opcode, h1.fin, &p1[..]), (OpCode::Text, false, &b"Hel"[..]));
        let (h2, p2) = d.next_frame(3).unwrap().unwrap();
        assert_eq!((h2.opcode, h2.fin, &p2[..]), (OpCode::Continuation, true, &b"lo"[..]));
        assert_eq!(d.next_frame(0).unwrap(), None);
        assert_eq!(d.bytes_needed(), Some(4));
    }

    #[test]
    fn masking_rules_follow_the_role() {
        // §5.1: a server fails on an unmasked frame, a client on a masked one.
        let mut d = server();
        d.extend(&[0x81, 0x05, 0x48, 0x65, 0x6c, 0x6c, 0x6f]);
        assert_eq!(d.next_frame(0), Err(ProtocolError::UnmaskedFrameFromClient));
        let mut d = FrameDecoder::new(Role::Client, MAX, MAX);
        d.extend(&[0x81, 0x85, 0x37, 0xfa, 0x21, 0x3d, 0x7f, 0x9f, 0x4d, 0x51, 0x58]);
        assert_eq!(d.next_frame(0), Err(ProtocolError::MaskedFrameFromServer));
    }

    #[test]
    fn a_header_over_the_limit_fails_before_its_payload() {
        // A masked binary frame announcing 64 KiB, with no payload yet.
        let mut d = FrameDecoder::new(Role::Server, 1024, MAX);
        d.extend(&[0x82, 0xfe, 0xff, 0xff, 1, 2, 3, 4]);
        assert_eq!(d.next_frame(0), Err(ProtocolError::FrameTooLarge { size: 0xffff, max: 1024 }));
        // A continuation counts what the message already holds.
        let mut d = FrameDecoder::new(Role::Server, MAX, 100);
        d.extend(&[0x80, 0x80 | 60, 1, 2, 3, 4]);
        assert_eq!(d.next_frame(50), Err(ProtocolError::MessageTooLarge { size: 110, max: 100 }));
    }

    #[test]
    fn reserved_bits_need_an_extension() {
        // RSV1 on a text frame: reserved without permessage-deflate (§5.2).
        let frame = [0xc1, 0x80, 1, 2, 3, 4];
        let mut d = server();
        d.extend(&frame);
        assert_eq!(d.next_frame(0), Err(ProtocolError::ReservedBitsSet));
        let mut d = server();
        d.allow_compression();
        d.extend(&frame);
        assert!(d.next_frame(0).unwrap().unwrap().0.rsv1);
        // RFC 7692 §6.1: never on a control frame, even with the extension.
        let mut d = server();
        d.allow_compression();
        d.extend(&[0xc9, 0x80, 1, 2, 3, 4]);
        assert_eq!(d.next_frame(0), Err(ProtocolError::CompressedBitOnWrongFrame));
        // RSV2 and RSV3 are never allowed here.
        let mut d = server();
        d.allow_compression();
        d.extend(&[0xa1, 0x80, 1, 2, 3, 4]);
        assert_eq!(d.next_frame(0), Err(ProtocolError::ReservedBitsSet));
    }
}
