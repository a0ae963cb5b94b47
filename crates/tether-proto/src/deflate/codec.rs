//! The compressor and decompressor behind permessage-deflate (RFC 7692 §7.2),
//! on zlib-rs through flate2 (raw DEFLATE, no zlib header).
//!
//! Without context takeover no state outlives a message: the state for one
//! message is borrowed from a spare kept per thread (one compressor and one
//! decompressor) and given back, reset, when the message ends. An idle
//! connection then holds no zlib memory, and a busy thread allocates none
//! per message. With context takeover the connection owns its state.

use crate::error::ProtocolError;
use flate2::{Compress, Compression, Decompress, FlushCompress, FlushDecompress, Status};
use std::cell::Cell;

/// §7.2.1: the 4 octets a sync flush ends with, removed from every message
/// sent and appended to every message received (§7.2.2).
pub(crate) const TAIL: [u8; 4] = [0x00, 0x00, 0xff, 0xff];

thread_local! {
    /// A reset compressor, with the level and window bits it was made for.
    static SPARE_COMPRESSOR: Cell<Option<(u32, u8, Compress)>> = const { Cell::new(None) };
    /// A reset decompressor (always window 15: it inflates any smaller window).
    static SPARE_DECOMPRESSOR: Cell<Option<Decompress>> = const { Cell::new(None) };
}

fn borrow_compressor(level: u32, bits: u8) -> Compress {
    // try_with: during thread teardown there is simply no spare.
    match SPARE_COMPRESSOR.try_with(Cell::take).ok().flatten() {
        Some((l, b, c)) if l == level && b == bits => c,
        _ => Compress::new_with_window_bits(Compression::new(level.min(9)), false, bits),
    }
}

fn return_compressor(level: u32, bits: u8, mut c: Compress) {
    c.reset();
    let _ = SPARE_COMPRESSOR.try_with(|s| s.set(Some((level, bits, c))));
}

fn borrow_decompressor() -> Decompress {
    SPARE_DECOMPRESSOR.try_with(Cell::take).ok().flatten().unwrap_or_else(|| Decompress::new_with_window_bits(false, super::MAX_WINDOW_BITS))
}

fn return_decompressor(mut d: Decompress) {
    d.reset(false);
    let _ = SPARE_DECOMPRESSOR.try_with(|s| s.set(Some(d)));
}

/// The sending side: compresses messages (and fragments of streamed ones).
pub(crate) struct Deflater {
    level: u32,
    window_bits: u8,
    /// Keep the window between messages (context takeover, §7.1.1).
    takeover: bool,
    threshold: usize,
    /// Owned state: always with takeover; otherwise only while a streamed
    /// message is being compressed.
    state: Option<Compress>,
    /// The streamed message in progress is compressed (decided by its first
    /// fragment).
    pub(crate) streaming: bool,
}

impl std::fmt::Debug for Deflater {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Deflater")
            .field("level", &self.level)
            .field("window_bits", &self.window_bits)
            .field("takeover", &self.takeover)
            .field("threshold", &self.threshold)
            .field("holds_state", &self.state.is_some())
            .finish()
    }
}

impl Deflater {
    pub(crate) fn new(level: u32, window_bits: u8, takeover: bool, threshold: usize) -> Self {
        Deflater { level, window_bits, takeover, threshold, state: None, streaming: false }
    }

    /// Whether a message (or a streamed message's first fragment) of `len`
    /// bytes is worth compressing.
    pub(crate) fn wants(&self, len: usize) -> bool {
        len >= self.threshold
    }

    /// Whether zlib state is held right now (for memory tests).
    pub(crate) fn holds_state(&self) -> bool {
        self.state.is_some()
    }

    /// Compress `data`, the next piece of a message; `fin` ends the message.
    /// Returns the payload to send (§7.2.1: the final sync-flush tail removed).
    pub(crate) fn compress(&mut self, data: &[u8], fin: bool) -> Vec<u8> {
        let mut c = match self.state.take() {
            Some(c) => c,
            None if self.takeover => Compress::new_with_window_bits(Compression::new(self.level.min(9)), false, self.window_bits),
            None => borrow_compressor(self.level, self.window_bits),
        };
        // Text compresses to well under half; grow if it does not.
        let mut out = Vec::with_capacity(data.len() / 2 + 64);
        let mut pos = 0;
        loop {
            let before = c.total_in();
            // Sync flush (§7.2.1): the output ends on a byte boundary with an
            // empty stored block, 00 00 ff ff. Raw deflate cannot fail here:
            // the only errors are misuse of the stream API.
            c.compress_vec(&data[pos..], &mut out, FlushCompress::Sync).expect("raw deflate of in-memory data");
            pos += (c.total_in() - before) as usize;
            // zlib: a flush is complete when it returns with output space left.
            if pos == data.len() && out.len() < out.capacity() {
                break;
            }
            out.reserve(out.capacity().max(64));
        }
        if fin {
            debug_assert!(out.ends_with(&TAIL), "a sync flush ends with 00 00 ff ff");
            out.truncate(out.len() - TAIL.len());
            if self.takeover {
                self.state = Some(c);
            } else {
                return_compressor(self.level, self.window_bits, c);
            }
        } else {
            // The rest of the message continues this stream.
            self.state = Some(c);
        }
        out
    }
}

/// The inflated output would pass the message size limit.
#[derive(Debug)]
pub(crate) struct TooLarge;

/// The receiving side: inflates compressed messages, frame by frame.
pub(crate) struct Inflater {
    /// The peer keeps its context: keep our window between messages.
    keep: bool,
    /// Owned state: with `keep` always (once used); otherwise only while a
    /// fragmented compressed message is arriving.
    state: Option<Decompress>,
    /// A final (BFINAL) block ended the stream inside this message (§7.2.3.4).
    ended: bool,
}

impl std::fmt::Debug for Inflater {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Inflater").field("keep", &self.keep).field("holds_state", &self.state.is_some()).finish()
    }
}

impl Inflater {
    pub(crate) fn new(keep: bool) -> Self {
        Inflater { keep, state: None, ended: false }
    }

    /// Whether zlib state is held right now (for memory tests).
    pub(crate) fn holds_state(&self) -> bool {
        self.state.is_some()
    }

    /// Inflate one frame's payload of a compressed message, appending to
    /// `out`; `fin` ends the message (§7.2.2: the tail is appended first).
    ///
    /// `out` never grows past `limit` bytes (+1 to tell "exactly at the
    /// limit" from "over it"): inflation stops there with `TooLarge`, so a
    /// small frame that would inflate to gigabytes costs at most the limit.
    pub(crate) fn inflate(&mut self, input: &[u8], fin: bool, out: &mut Vec<u8>, limit: usize) -> Result<Result<(), TooLarge>, ProtocolError> {
        let mut d = match self.state.take() {
            Some(d) => d,
            None if self.keep => Decompress::new_with_window_bits(false, super::MAX_WINDOW_BITS),
            None => borrow_decompressor(),
        };
        let result = self.inflate_with(&mut d, input, fin, out, limit);
        let ok = matches!(result, Ok(Ok(())));
        if self.ended && (fin || !ok) {
            // §7.2.3.4: a BFINAL block ended the stream; the next message
            // starts a new one.
            d.reset(false);
            self.ended = false;
        }
        if ok && (!fin || self.keep) {
            self.state = Some(d);
        } else if !self.keep {
            // Message done (or failed): without context takeover nothing is
            // kept; the spare is reset before reuse.
            return_decompressor(d);
        }
        // With `keep`, a failed stream is dropped with the failed connection.
        result
    }

    fn inflate_with(&mut self, d: &mut Decompress, input: &[u8], fin: bool, out: &mut Vec<u8>, limit: usize) -> Result<Result<(), TooLarge>, ProtocolError> {
        let bad = |e: String| ProtocolError::BadCompressedData(e);
        for chunk in [input, if fin { &TAIL[..] } else { &[][..] }] {
            let mut pos = 0;
            while pos < chunk.len() {
                if self.ended {
                    // §7.2.3.4: a block with BFINAL set ends the stream; what
                    // follows (padding, the start of an empty stored block,
                    // the tail) carries no data.
                    break;
                }
                if out.len() == out.capacity() {
                    if out.len() > limit {
                        return Ok(Err(TooLarge));
                    }
                    // Grow geometrically from a guess (text inflates ~3-4×),
                    // never past limit + 1.
                    let want = out.len().max((chunk.len() - pos) * 4).max(1024);
                    out.reserve_exact(want.min(limit + 1 - out.len()));
                }
                let (before_in, before_out) = (d.total_in(), d.total_out());
                let status = d.decompress_vec(&chunk[pos..], out, FlushDecompress::Sync).map_err(|e| bad(e.to_string()))?;
                let consumed = (d.total_in() - before_in) as usize;
                let produced = (d.total_out() - before_out) as usize;
                pos += consumed;
                if out.len() > limit {
                    return Ok(Err(TooLarge));
                }
                match status {
                    Status::StreamEnd => self.ended = true,
                    // No progress with room to write: the input is stuck.
                    _ if consumed == 0 && produced == 0 && out.len() < out.capacity() => {
                        return Err(bad("inflate made no progress".into()));
                    }
                    _ => {}
                }
            }
            // All input consumed; drain what inflate still holds back.
            while !self.ended {
                if out.len() == out.capacity() {
                    if out.len() > limit {
                        return Ok(Err(TooLarge));
                    }
                    let want = out.len().max(1024);
                    out.reserve_exact(want.min(limit + 1 - out.len()));
                }
                let before_out = d.total_out();
                let status = d.decompress_vec(&[], out, FlushDecompress::Sync).map_err(|e| bad(e.to_string()))?;
                if out.len() > limit {
                    return Ok(Err(TooLarge));
                }
                if status == Status::StreamEnd {
                    self.ended = true;
                }
                // Done once a call leaves output space unused.
                if d.total_out() == before_out || out.len() < out.capacity() {
                    break;
                }
            }
        }
        Ok(Ok(()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc_7692_7_2_3_1_hello() {
        // "Hello" compressed: f2 48 cd c9 c9 07 00 (after the tail is removed).
        let mut d = Deflater::new(6, 15, false, 0);
        assert_eq!(d.compress(b"Hello", true), [0xf2, 0x48, 0xcd, 0xc9, 0xc9, 0x07, 0x00]);
        let mut i = Inflater::new(false);
        let mut out = Vec::new();
        i.inflate(&[0xf2, 0x48, 0xcd, 0xc9, 0xc9, 0x07, 0x00], true, &mut out, 100).unwrap().unwrap();
        assert_eq!(out, b"Hello");
        assert!(!d.holds_state() && !i.holds_state());
    }

    #[test]
    fn rfc_7692_7_2_3_2_takeover_shrinks_the_second_message() {
        // With context takeover the second "Hello" is a back-reference:
        // f2 00 11 00 00 (§7.2.3.2 shows the same bytes).
        let mut d = Deflater::new(6, 15, true, 0);
        assert_eq!(d.compress(b"Hello", true), [0xf2, 0x48, 0xcd, 0xc9, 0xc9, 0x07, 0x00]);
        assert_eq!(d.compress(b"Hello", true), [0xf2, 0x00, 0x11, 0x00, 0x00]);
        let mut i = Inflater::new(true);
        let mut out = Vec::new();
        i.inflate(&[0xf2, 0x48, 0xcd, 0xc9, 0xc9, 0x07, 0x00], true, &mut out, 100).unwrap().unwrap();
        out.clear();
        i.inflate(&[0xf2, 0x00, 0x11, 0x00, 0x00], true, &mut out, 100).unwrap().unwrap();
        assert_eq!(out, b"Hello");
        assert!(d.holds_state() && i.holds_state());
    }

    #[test]
    fn rfc_7692_7_2_3_3_stored_block_and_7_2_3_4_bfinal() {
        let mut i = Inflater::new(false);
        // §7.2.3.3: "Hello" in a DEFLATE block with no compression.
        let mut out = Vec::new();
        i.inflate(&[0x00, 0x05, 0x00, 0xfa, 0xff, 0x48, 0x65, 0x6c, 0x6c, 0x6f, 0x00], true, &mut out, 100).unwrap().unwrap();
        assert_eq!(out, b"Hello");
        // §7.2.3.4: "Hello" in a block with BFINAL set: f3 48 cd c9 c9 07 00 00.
        let mut out = Vec::new();
        i.inflate(&[0xf3, 0x48, 0xcd, 0xc9, 0xc9, 0x07, 0x00, 0x00], true, &mut out, 100).unwrap().unwrap();
        assert_eq!(out, b"Hello");
        // Then a new message works as usual.
        let mut out = Vec::new();
        i.inflate(&[0xf2, 0x48, 0xcd, 0xc9, 0xc9, 0x07, 0x00], true, &mut out, 100).unwrap().unwrap();
        assert_eq!(out, b"Hello");
    }

    #[test]
    fn rfc_7692_7_2_3_5_two_blocks_in_one_message() {
        // "He" and "llo" in two compressed blocks, split over two frames.
        let mut i = Inflater::new(false);
        let mut out = Vec::new();
        i.inflate(&[0xf2, 0x48, 0x05, 0x00, 0x00, 0x00, 0xff, 0xff], false, &mut out, 100).unwrap().unwrap();
        assert!(i.holds_state(), "kept until the message ends");
        i.inflate(&[0xca, 0xc9, 0xc9, 0x07, 0x00], true, &mut out, 100).unwrap().unwrap();
        assert_eq!(out, b"Hello");
        assert!(!i.holds_state());
    }

    #[test]
    fn limit_stops_inflation() {
        let mut d = Deflater::new(9, 15, false, 0);
        let zeros = vec![0u8; 1 << 20];
        let bomb = d.compress(&zeros, true);
        assert!(bomb.len() < 2048, "1 MiB of zeros compresses to {} bytes", bomb.len());
        let mut i = Inflater::new(false);
        let mut out = Vec::new();
        assert!(i.inflate(&bomb, true, &mut out, 4096).unwrap().is_err());
        assert!(out.capacity() <= 4097, "output grew to {}", out.capacity());
        // Exactly at the limit is fine.
        let mut out = Vec::new();
        i.inflate(&bomb, true, &mut out, 1 << 20).unwrap().unwrap();
        assert_eq!(out.len(), 1 << 20);
    }

    #[test]
    fn garbage_is_bad_compressed_data() {
        let mut i = Inflater::new(false);
        let mut out = Vec::new();
        let err = i.inflate(&[0xff, 0xff, 0xff, 0xff, 0xff], true, &mut out, 100).unwrap_err();
        assert!(matches!(err, ProtocolError::BadCompressedData(_)), "{err:?}");
    }
}
