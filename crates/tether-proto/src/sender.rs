//! The sending half of a connection: commands in, bytes to transmit out.
//!
//! Frames are encoded into one reused buffer; large payloads on the server
//! side are queued by reference instead of copied, and come out of
//! [`Sender::data_to_send`] as separate slices for a vectored write.

use crate::close::CloseFrame;
use crate::connection::{Reply, Role};
use crate::deflate::codec::Deflater;
use crate::error::Error;
use crate::frame::{FrameHeader, OpCode, MAX_HEADER_LEN};
use crate::mask::apply_mask;
use crate::message::Message;
use bytes::{Buf, Bytes, BytesMut};
use std::collections::VecDeque;
use std::io::IoSlice;

/// The sending half: commands in, bytes to transmit out.
#[derive(Debug)]
pub struct Sender {
    role: Role,
    /// What waits to be sent; made with the first frame and given back by
    /// [`shrink_if_idle`](Self::shrink_if_idle) (one pointer while idle).
    out: Option<Box<Out>>,
    pending: usize,
    close_sent: bool,
    fragmenting: bool,
    mask_fn: fn() -> [u8; 4],
    /// permessage-deflate, when negotiated (RFC 7692).
    deflater: Option<Box<Deflater>>,
}

/// The queued output of a [`Sender`].
#[derive(Debug, Default)]
struct Out {
    /// Whole buffers queued ahead of `tail` (large payloads sent without copying).
    chunks: VecDeque<Bytes>,
    tail: BytesMut,
}

impl Out {
    /// End the tail here: what it holds goes to the chunks, in order.
    fn seal_tail(&mut self) {
        if !self.tail.is_empty() {
            self.chunks.push_back(self.tail.split().freeze());
        }
    }
}

/// Payloads at least this large are queued by reference instead of copied
/// (server role only: a client must mask, which needs a copy).
pub const ZERO_COPY_THRESHOLD: usize = 4096;

fn random_mask() -> [u8; 4] {
    rand::random()
}

impl Sender {
    /// A sender for `role`.
    pub fn new(role: Role) -> Self {
        Sender {
            role,
            out: None,
            pending: 0,
            close_sent: false,
            fragmenting: false,
            mask_fn: random_mask,
            deflater: None,
        }
    }

    /// Compress with `deflater` (permessage-deflate was negotiated).
    pub(crate) fn set_deflater(&mut self, deflater: Deflater) {
        self.deflater = Some(Box::new(deflater));
    }

    /// The role this sender was created for.
    pub(crate) fn role(&self) -> Role {
        self.role
    }

    /// Use `mask_fn` for masking keys instead of the thread-local CSPRNG
    /// (for deterministic tests; RFC 6455 §10.3 requires unpredictable keys
    /// in production).
    pub fn set_mask_fn(&mut self, mask_fn: fn() -> [u8; 4]) {
        self.mask_fn = mask_fn;
    }

    /// Whether a close frame was sent.
    pub fn close_sent(&self) -> bool {
        self.close_sent
    }

    /// Queue a message. Data messages fail with [`Error::Closed`] after a close
    /// was sent; a second close is ignored.
    pub fn send(&mut self, msg: Message) -> Result<(), Error> {
        match msg {
            Message::Text(t) => self.send_data(OpCode::Text, t.into_bytes()),
            Message::Binary(b) => self.send_data(OpCode::Binary, b),
            Message::Ping(p) => self.send_control(OpCode::Ping, &p),
            Message::Pong(p) => self.send_control(OpCode::Pong, &p),
            Message::Close(frame) => self.send_close(frame),
        }
    }

    /// Queue a text message.
    pub fn send_text(&mut self, text: &str) -> Result<(), Error> {
        self.send_slice(OpCode::Text, text.as_bytes())
    }

    /// Queue a binary message, copying it.
    pub fn send_binary(&mut self, data: &[u8]) -> Result<(), Error> {
        self.send_slice(OpCode::Binary, data)
    }

    fn send_slice(&mut self, opcode: OpCode, data: &[u8]) -> Result<(), Error> {
        self.check_open()?;
        match self.compress_message(data) {
            Some(compressed) => self.write_frame_bytes(opcode, true, compressed.into(), true),
            None => self.write_frame(opcode, true, data, false),
        }
        Ok(())
    }

    fn send_data(&mut self, opcode: OpCode, payload: Bytes) -> Result<(), Error> {
        self.check_open()?;
        match self.compress_message(&payload) {
            Some(compressed) => self.write_frame_bytes(opcode, true, compressed.into(), true),
            None => self.write_frame_bytes(opcode, true, payload, false),
        }
        Ok(())
    }

    /// RFC 7692 §7.2.1: a whole message compressed into one frame, if
    /// permessage-deflate is on and the message reaches the threshold.
    fn compress_message(&mut self, data: &[u8]) -> Option<Vec<u8>> {
        if self.fragmenting {
            // Misuse (a message inside a streamed one): leave the stream alone.
            return None;
        }
        let deflater = self.deflater.as_deref_mut().filter(|d| d.wants(data.len()))?;
        Some(deflater.compress(data, true))
    }

    /// Whether this sender holds compressor state right now: always with
    /// context takeover, otherwise only inside a compressed streamed message.
    pub fn holds_deflate_state(&self) -> bool {
        self.deflater.as_ref().is_some_and(|d| d.holds_state())
    }

    /// Queue one data frame of a message being streamed: `first` picks the
    /// opcode (text/binary) and later frames are continuations; `fin` ends it.
    pub fn send_fragment(&mut self, text: bool, payload: Bytes, fin: bool) -> Result<(), Error> {
        self.check_open()?;
        let opcode = if self.fragmenting {
            OpCode::Continuation
        } else if text {
            OpCode::Text
        } else {
            OpCode::Binary
        };
        let first = !self.fragmenting;
        self.fragmenting = !fin;
        if let Some(deflater) = self.deflater.as_deref_mut() {
            // RFC 7692 §6.1: the first frame decides (RSV1) whether the whole
            // message is compressed; its fragments continue one stream.
            if first {
                deflater.streaming = deflater.wants(payload.len());
            }
            if deflater.streaming {
                let compressed = deflater.compress(&payload, fin);
                deflater.streaming = !fin;
                self.write_frame_bytes(opcode, fin, compressed.into(), first);
                return Ok(());
            }
        }
        self.write_frame_bytes(opcode, fin, payload, false);
        Ok(())
    }

    /// Queue a ping (payload ≤ 125 bytes).
    pub fn send_ping(&mut self, payload: &[u8]) -> Result<(), Error> {
        self.send_control(OpCode::Ping, payload)
    }

    /// Queue a pong (payload ≤ 125 bytes).
    pub fn send_pong(&mut self, payload: &[u8]) -> Result<(), Error> {
        self.send_control(OpCode::Pong, payload)
    }

    fn send_control(&mut self, opcode: OpCode, payload: &[u8]) -> Result<(), Error> {
        if payload.len() > 125 {
            return Err(Error::ControlPayloadTooLarge(payload.len()));
        }
        if self.close_sent {
            return Err(Error::Closed);
        }
        self.write_frame(opcode, true, payload, false);
        Ok(())
    }

    /// Queue a close frame. `None` sends a close with no status code. Sending
    /// a second close is a no-op.
    pub fn send_close(&mut self, frame: Option<CloseFrame>) -> Result<(), Error> {
        if self.close_sent {
            return Ok(());
        }
        let mut body = Vec::with_capacity(2 + frame.as_ref().map_or(0, |f| f.reason.len()));
        if let Some(frame) = &frame {
            if !frame.code.is_allowed_on_wire() {
                return Err(Error::InvalidCloseCode(frame.code.0));
            }
            if frame.reason.len() > crate::close::MAX_REASON_LEN {
                return Err(Error::ControlPayloadTooLarge(frame.reason.len() + 2));
            }
            frame.encode_into(&mut body);
        }
        self.write_frame(OpCode::Close, true, &body, false);
        self.close_sent = true;
        Ok(())
    }

    /// Send a reply produced by [`Receiver::next_event`](crate::Receiver::next_event). A pong after our
    /// close was sent is dropped (§5.5.1: nothing follows a close frame).
    pub fn send_reply(&mut self, reply: Reply) -> Result<(), Error> {
        match reply {
            Reply::Pong(p) if !self.close_sent => self.send_control(OpCode::Pong, &p),
            Reply::Pong(_) => Ok(()),
            Reply::Close(frame) => self.send_close(frame),
        }
    }

    fn check_open(&self) -> Result<(), Error> {
        if self.close_sent {
            Err(Error::Closed)
        } else {
            Ok(())
        }
    }

    #[inline]
    fn header(&self, opcode: OpCode, fin: bool, len: usize, rsv1: bool) -> (FrameHeader, [u8; MAX_HEADER_LEN], usize) {
        let mask = match self.role {
            Role::Client => Some((self.mask_fn)()),
            Role::Server => None,
        };
        let h = FrameHeader { fin, rsv1, rsv23: false, opcode, mask, payload_len: len as u64 };
        let mut buf = [0u8; MAX_HEADER_LEN];
        let n = h.encode(&mut buf);
        (h, buf, n)
    }

    #[inline]
    fn write_frame(&mut self, opcode: OpCode, fin: bool, payload: &[u8], rsv1: bool) {
        let (h, hdr, n) = self.header(opcode, fin, payload.len(), rsv1);
        let tail = &mut self.out().tail;
        tail.reserve(n + payload.len());
        tail.extend_from_slice(&hdr[..n]);
        let start = tail.len();
        tail.extend_from_slice(payload);
        if let Some(key) = h.mask {
            apply_mask(&mut tail[start..], key);
        }
        self.pending += n + payload.len();
    }

    /// Queue bytes that are not a frame, to be written in order with the
    /// frames queued around them: the `101 Switching Protocols` response of
    /// an opening handshake, when the I/O layer that writes the frames also
    /// writes it (so it goes out with the first frames, in one write). Only
    /// bytes that belong on the wire before the WebSocket's frames make
    /// sense here; nothing checks them.
    pub fn send_raw(&mut self, bytes: &[u8]) {
        self.out().tail.extend_from_slice(bytes);
        self.pending += bytes.len();
    }

    /// The output queue, made if there is none.
    #[inline]
    fn out(&mut self) -> &mut Out {
        self.out.get_or_insert_with(Box::default)
    }

    /// Queue a frame encoded once for many connections (broadcast). Only a
    /// server may do this: a client must mask each frame with a fresh key.
    pub fn send_encoded(&mut self, frame: crate::frame::EncodedFrame) -> Result<(), Error> {
        self.check_open()?;
        if self.role == Role::Client {
            return Err(Error::InvalidFragment("a client cannot send pre-encoded (unmasked) frames"));
        }
        if self.fragmenting {
            return Err(Error::InvalidFragment("a fragmented message is in progress"));
        }
        let bytes = frame.into_bytes();
        self.pending += bytes.len();
        let out = self.out();
        if bytes.len() >= ZERO_COPY_THRESHOLD {
            out.seal_tail();
            out.chunks.push_back(bytes);
        } else {
            out.tail.extend_from_slice(&bytes);
        }
        Ok(())
    }

    fn write_frame_bytes(&mut self, opcode: OpCode, fin: bool, payload: Bytes, rsv1: bool) {
        if self.role == Role::Server && payload.len() >= ZERO_COPY_THRESHOLD {
            let (_, hdr, n) = self.header(opcode, fin, payload.len(), rsv1);
            self.pending += n + payload.len();
            let out = self.out();
            out.tail.extend_from_slice(&hdr[..n]);
            out.seal_tail();
            out.chunks.push_back(payload);
        } else {
            self.write_frame(opcode, fin, &payload, rsv1);
        }
    }

    /// Bytes queued and not yet consumed.
    pub fn pending_len(&self) -> usize {
        self.pending
    }

    /// Fill `dst` with the queued bytes, in order, for a vectored write.
    /// Returns the number of slices filled.
    pub fn data_to_send<'a>(&'a self, dst: &mut [IoSlice<'a>]) -> usize {
        let Some(out) = self.out.as_deref() else { return 0 };
        let mut n = 0;
        for chunk in &out.chunks {
            if n == dst.len() {
                return n;
            }
            if !chunk.is_empty() {
                dst[n] = IoSlice::new(chunk);
                n += 1;
            }
        }
        if n < dst.len() && !out.tail.is_empty() {
            dst[n] = IoSlice::new(&out.tail);
            n += 1;
        }
        n
    }

    /// Mark `n` bytes from the front of the queue as transmitted.
    pub fn consume_sent(&mut self, mut n: usize) {
        assert!(n <= self.pending, "consumed more than was queued");
        let Some(out) = self.out.as_deref_mut() else { return };
        self.pending -= n;
        while n > 0 {
            match out.chunks.front_mut() {
                Some(front) if front.len() <= n => {
                    n -= front.len();
                    out.chunks.pop_front();
                }
                Some(front) => {
                    front.advance(n);
                    return;
                }
                None => {
                    out.tail.advance(n);
                    return;
                }
            }
        }
        while out.chunks.front().is_some_and(|c| c.is_empty()) {
            out.chunks.pop_front();
        }
    }

    /// Take every queued byte as one buffer (a convenience for tests and
    /// simple loops; the vectored path avoids the copy).
    pub fn take_data_to_send(&mut self) -> Vec<u8> {
        let mut bytes = Vec::with_capacity(self.pending);
        if let Some(out) = self.out.as_deref_mut() {
            for chunk in out.chunks.drain(..) {
                bytes.extend_from_slice(&chunk);
            }
            bytes.extend_from_slice(&out.tail);
            out.tail.clear();
        }
        self.pending = 0;
        bytes
    }

    /// Release buffers that hold no data, so an idle connection costs no heap.
    pub fn shrink_if_idle(&mut self) {
        if self.pending == 0 {
            self.out = None;
        }
    }
}
