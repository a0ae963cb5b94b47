//! The inflate step of the receive path (RFC 7692 §6, §7.2.2): between the
//! frame decoder and the message assembler when permessage-deflate was
//! negotiated. A message whose first frame carries RSV1 is compressed as a
//! whole; each of its frames goes through here and comes out inflated.
//!
//! It exists on its own so that the one rule that matters against a hostile
//! peer can be seen in one place: the message size limit bounds the
//! *inflated* size, and inflation stops at the limit, so memory never follows
//! a decompression bomb. The zlib state itself is in [`crate::deflate`]'s
//! codec; this step owns the per-message bookkeeping around it.

use crate::deflate::codec::Inflater;
use crate::error::ProtocolError;

/// Inflates the frames of compressed messages within the message size limit.
#[derive(Debug)]
pub(crate) struct InflateStep {
    inflater: Inflater,
    /// The message in progress is compressed (RSV1 on its first frame).
    compressed: bool,
    /// Inflated bytes of the message in progress, when it is assembled.
    assembly: Vec<u8>,
    /// Inflated size of the message in progress, when it is streamed.
    inflated_len: u64,
}

impl InflateStep {
    /// An inflate step; `peer_keeps_context`: the peer compresses with
    /// context takeover, so the window is kept between messages (§7.1.1).
    pub(crate) fn new(peer_keeps_context: bool) -> Self {
        InflateStep { inflater: Inflater::new(peer_keeps_context), compressed: false, assembly: Vec::new(), inflated_len: 0 }
    }

    /// Whether decompressor state is held right now.
    pub(crate) fn holds_state(&self) -> bool {
        self.inflater.holds_state()
    }

    /// Inflated bytes held for the assembled message in progress.
    pub(crate) fn buffered_len(&self) -> usize {
        self.assembly.len()
    }

    /// Whether the message in progress is compressed.
    pub(crate) fn in_message(&self) -> bool {
        self.compressed
    }

    /// RFC 7692 §6: RSV1 on the first frame of a data message marks the
    /// whole message compressed.
    pub(crate) fn start_message(&mut self) {
        self.compressed = true;
        self.inflated_len = 0;
    }

    /// Inflate one frame of a streamed message on its own: its inflated
    /// bytes, or [`ProtocolError::MessageTooLarge`] once the message's
    /// inflated size passes `max`. `fin` ends the message.
    pub(crate) fn inflate_fragment(&mut self, wire: &[u8], fin: bool, max: usize) -> Result<Vec<u8>, ProtocolError> {
        let mut out = Vec::new();
        let limit = max.saturating_sub(self.inflated_len as usize);
        if self.inflater.inflate(wire, fin, &mut out, limit)?.is_err() {
            return Err(ProtocolError::MessageTooLarge { size: self.inflated_len + out.len() as u64, max });
        }
        self.inflated_len += out.len() as u64;
        if fin {
            self.compressed = false;
        }
        Ok(out)
    }

    /// Inflate one frame of an assembled message onto what its earlier frames
    /// gave, within `max` for the whole message; returns the bytes this frame
    /// added (for incremental UTF-8 validation). `fin` ends the message's
    /// stream (§7.2.2: the tail is appended); take it with
    /// [`take_message`](Self::take_message).
    pub(crate) fn inflate_assembled(&mut self, wire: &[u8], fin: bool, max: usize) -> Result<&[u8], ProtocolError> {
        let start = self.assembly.len();
        if self.inflater.inflate(wire, fin, &mut self.assembly, max)?.is_err() {
            return Err(ProtocolError::MessageTooLarge { size: self.assembly.len() as u64, max });
        }
        Ok(&self.assembly[start..])
    }

    /// The inflated message, once its last frame went through
    /// [`inflate_assembled`](Self::inflate_assembled).
    pub(crate) fn take_message(&mut self) -> Vec<u8> {
        self.compressed = false;
        std::mem::take(&mut self.assembly)
    }

    /// Drop the message in progress and its memory (the connection failed).
    pub(crate) fn discard(&mut self) {
        self.assembly = Vec::new();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::deflate::codec::Deflater;

    const MAX: usize = 1 << 20;

    #[test]
    fn a_compressed_message_round_trips() {
        // RFC 7692 §7.2.3.1: "Hello" compressed, in one frame.
        let mut step = InflateStep::new(false);
        step.start_message();
        let out = step.inflate_assembled(&[0xf2, 0x48, 0xcd, 0xc9, 0xc9, 0x07, 0x00], true, MAX).unwrap();
        assert_eq!(out, b"Hello");
        assert_eq!(step.take_message(), b"Hello");
        assert!(!step.in_message() && !step.holds_state());

        // A larger text, compressed as one stream and received in three frames.
        let text = "the quick brown fox jumps over the lazy dog; ".repeat(200);
        let mut deflater = Deflater::new(6, 15, false, 0);
        let wire = deflater.compress(text.as_bytes(), true);
        let (a, rest) = wire.split_at(wire.len() / 3);
        let (b, c) = rest.split_at(rest.len() / 2);
        step.start_message();
        let mut added = 0;
        for (piece, fin) in [(a, false), (b, false), (c, true)] {
            added += step.inflate_assembled(piece, fin, MAX).unwrap().len();
            // Without context takeover, state is held only inside the message.
            assert_eq!(step.holds_state(), !fin);
        }
        assert_eq!(added, text.len());
        assert_eq!(step.take_message(), text.as_bytes());
    }

    #[test]
    fn a_streamed_message_inflates_frame_by_frame() {
        let text = "streamed and compressed ".repeat(100);
        let mut deflater = Deflater::new(6, 15, false, 0);
        let first = deflater.compress(&text.as_bytes()[..1000], false);
        let last = deflater.compress(&text.as_bytes()[1000..], true);
        let mut step = InflateStep::new(false);
        step.start_message();
        let mut out = step.inflate_fragment(&first, false, MAX).unwrap();
        assert!(step.in_message());
        out.extend(step.inflate_fragment(&last, true, MAX).unwrap());
        assert!(!step.in_message());
        assert_eq!(out, text.as_bytes());
    }

    #[test]
    fn a_bomb_stops_at_the_limit() {
        // 16 MiB of zeros compress to a few KiB; the limit is 64 KiB.
        let mut deflater = Deflater::new(9, 15, false, 0);
        let bomb = deflater.compress(&vec![0u8; 16 << 20], true);
        assert!(bomb.len() < 64 << 10);
        let max = 64 << 10;

        let mut step = InflateStep::new(false);
        step.start_message();
        match step.inflate_assembled(&bomb, true, max) {
            Err(ProtocolError::MessageTooLarge { size, max: m }) => {
                assert_eq!(m, max);
                assert!(size > max as u64 && size <= max as u64 + 1, "stopped at {size}");
            }
            other => panic!("expected MessageTooLarge, got {other:?}"),
        }
        assert!(step.buffered_len() <= max + 1);

        // Streamed, the limit counts what earlier frames inflated to.
        let mut step = InflateStep::new(false);
        step.start_message();
        let mut d = Deflater::new(6, 15, false, 0);
        let first = d.compress(&vec![b'a'; max - 10], false);
        let second = d.compress(&[b'a'; 100], true);
        assert_eq!(step.inflate_fragment(&first, false, max).unwrap().len(), max - 10);
        assert!(matches!(step.inflate_fragment(&second, true, max), Err(ProtocolError::MessageTooLarge { .. })));
    }

    #[test]
    fn garbage_is_bad_compressed_data() {
        let mut step = InflateStep::new(false);
        step.start_message();
        assert!(matches!(step.inflate_assembled(&[0xff, 0xff, 0xff, 0xff], true, MAX), Err(ProtocolError::BadCompressedData(_))));
    }
}
