//! The protocol state machine: [`Receiver`] turns bytes into events,
//! [`Sender`] turns commands into bytes, and [`Connection`] ties the two
//! together and answers what the protocol obliges (pong for ping, close echo).
//!
//! The two halves are separate so an I/O layer can read and write from two
//! tasks without sharing a lock on the read path: the reader hands the replies
//! that [`Receiver::next_event`] asks for to whoever owns the [`Sender`].
//!
//! Polling order for an I/O loop around a [`Connection`]:
//! 1. [`Connection::receive_data`] with what the transport read
//!    ([`Connection::receive_eof`] at end of stream);
//! 2. [`Connection::next_event`] until it returns `Ok(None)`;
//! 3. write [`Connection::data_to_send`], then [`Connection::consume_sent`];
//! 4. close the transport once [`Connection::should_close_transport`] says so
//!    (a client instead waits a bounded time for the server's EOF after
//!    [`Connection::is_closed`]).

use crate::close::{CloseCode, CloseFrame};
use crate::config::Config;
use crate::deflate::codec::{Deflater, Inflater};
use crate::deflate::{DeflateParams, PerMessageDeflate};
use crate::error::{Error, ProtocolError};
use crate::frame::{FrameHeader, OpCode, MAX_HEADER_LEN};
use crate::mask::apply_mask;
use crate::message::{Message, Utf8Bytes};
use crate::utf8::{self, Utf8Validator};
use bytes::{Buf, Bytes, BytesMut};
use std::collections::VecDeque;
use std::io::IoSlice;

/// Which end of the connection this is. It decides the masking rules (§5.1)
/// and who closes the TCP connection first (§7.1.1).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    /// The side that sent the opening handshake: masks every frame it sends.
    Client,
    /// The side that accepted: never masks, and requires masked frames.
    Server,
}

/// What the receiver produced.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Event {
    /// A complete message (assembled from its fragments), or a control frame.
    Message(Message),
    /// One data frame of a message, from [`Receiver::next_fragment`] only.
    Fragment {
        /// Whether the message is text (fragments of text are validated UTF-8
        /// as a whole, but one fragment may end inside a character).
        text: bool,
        /// First frame of the message.
        first: bool,
        /// Last frame of the message.
        fin: bool,
        /// The unmasked payload of this frame.
        payload: Bytes,
    },
}

/// A reply the protocol obliges, returned by [`Receiver::next_event`] for the
/// owner of the [`Sender`] to send.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Reply {
    /// Answer a ping (§5.5.2).
    Pong(Bytes),
    /// Echo the peer's close (§5.5.1), or fail the connection with this code.
    Close(Option<CloseFrame>),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Fragmenting {
    None,
    Text,
    Binary,
}

/// The receiving half: bytes in, events out.
#[derive(Debug)]
pub struct Receiver {
    role: Role,
    max_frame_size: usize,
    max_message_size: usize,
    buf: BytesMut,
    fragmenting: Fragmenting,
    /// Whether the fragmented message in progress comes out frame by frame.
    /// Decided by the call that received its first frame, so that switching
    /// between `next_event` and `next_fragment` mid-message neither loses the
    /// assembled start nor delivers a message without it.
    streaming: bool,
    assembly: BytesMut,
    /// Size of the message in progress (assembly may stay empty in streaming mode).
    message_len: u64,
    utf8: Utf8Validator,
    close_received: bool,
    failed: Option<Box<ProtocolError>>,
    eof: bool,
    /// permessage-deflate, when negotiated (RFC 7692); boxed so that a
    /// connection without it pays one pointer.
    inflater: Option<Box<Inflater>>,
}

impl Receiver {
    /// A receiver for `role` with the limits in `config`.
    pub fn new(role: Role, config: &Config) -> Self {
        Receiver {
            role,
            max_frame_size: config.max_frame_size,
            max_message_size: config.max_message_size,
            buf: BytesMut::new(),
            fragmenting: Fragmenting::None,
            streaming: false,
            assembly: BytesMut::new(),
            message_len: 0,
            utf8: Utf8Validator::new(),
            close_received: false,
            failed: None,
            eof: false,
            inflater: None,
        }
    }

    /// Append bytes read from the transport.
    #[inline]
    pub fn receive_data(&mut self, data: &[u8]) {
        if self.close_received || self.failed.is_some() {
            // §5.5.1: after a close frame, nothing more is processed.
            return;
        }
        self.buf.extend_from_slice(data);
    }

    /// The buffer that [`receive_data`](Self::receive_data) appends to, for an
    /// I/O layer that reads into it directly.
    pub fn read_buffer(&mut self) -> &mut BytesMut {
        &mut self.buf
    }

    /// How many more bytes the frame at the head of the buffer needs, if its
    /// header has been received (a hint for sizing reads).
    pub fn bytes_needed(&self) -> Option<usize> {
        match FrameHeader::parse(&self.buf) {
            Ok(Some((h, n))) => Some((n as u64 + h.payload_len).saturating_sub(self.buf.len() as u64) as usize),
            _ => None,
        }
    }

    /// The transport reached end of stream.
    pub fn receive_eof(&mut self) {
        self.eof = true;
    }

    /// Whether a close frame was received.
    pub fn close_received(&self) -> bool {
        self.close_received
    }

    /// The protocol error that failed this connection, if any.
    pub fn failure(&self) -> Option<&ProtocolError> {
        self.failed.as_deref()
    }

    /// Whether end of stream was seen.
    pub fn eof_received(&self) -> bool {
        self.eof
    }

    /// Whether this receiver holds decompressor state right now: with the
    /// peer's context takeover always, otherwise only inside a compressed
    /// message that is still arriving.
    pub fn holds_deflate_state(&self) -> bool {
        self.inflater.as_ref().is_some_and(|i| i.holds_state())
    }

    /// Release buffers that hold no data, so an idle connection costs no heap.
    pub fn shrink_if_idle(&mut self) {
        if self.buf.is_empty() && self.buf.capacity() > 0 {
            self.buf = BytesMut::new();
        }
        if self.assembly.is_empty() && self.assembly.capacity() > 0 {
            self.assembly = BytesMut::new();
        }
    }

    /// Bytes buffered but not yet turned into events (for a compressed
    /// message: inflated so far).
    pub fn buffered_len(&self) -> usize {
        self.buf.len() + self.assembly.len() + self.inflater.as_ref().map_or(0, |i| i.assembly.len())
    }

    /// The next complete message or control frame.
    ///
    /// Returns `Ok(None)` when more bytes are needed (or after a close frame or
    /// a failure). The second element is a reply the protocol obliges; hand it
    /// to the [`Sender`] (see [`Sender::send_reply`]). On `Err`, the
    /// connection is failed: send `Reply::Close` with the error's close code
    /// (what [`Connection`] does for you) and close the transport.
    pub fn next_event(&mut self) -> Result<Option<(Event, Option<Reply>)>, ProtocolError> {
        self.poll_event(true)
    }

    /// Like [`next_event`](Self::next_event), but data frames come out one by
    /// one as [`Event::Fragment`] instead of being assembled, so a large
    /// message can be streamed. Limits and UTF-8 rules apply all the same.
    ///
    /// The two calls may be mixed, but a fragmented message keeps the form in
    /// which its first frame came out: once started as fragments, its later
    /// frames are fragments even from `next_event`; once started assembled,
    /// it comes out whole even from `next_fragment`.
    pub fn next_fragment(&mut self) -> Result<Option<(Event, Option<Reply>)>, ProtocolError> {
        self.poll_event(false)
    }

    fn poll_event(&mut self, assemble: bool) -> Result<Option<(Event, Option<Reply>)>, ProtocolError> {
        if self.close_received || self.failed.is_some() {
            return Ok(None);
        }
        match self.poll_event_inner(assemble) {
            Ok(ev) => Ok(ev),
            Err(e) => {
                self.failed = Some(Box::new(e.clone()));
                self.buf = BytesMut::new();
                self.assembly = BytesMut::new();
                if let Some(inflater) = &mut self.inflater {
                    inflater.assembly = Vec::new();
                }
                Err(e)
            }
        }
    }

    fn poll_event_inner(&mut self, assemble: bool) -> Result<Option<(Event, Option<Reply>)>, ProtocolError> {
        loop {
            let Some((header, payload)) = self.next_frame()? else {
                return Ok(None);
            };
            match header.opcode {
                OpCode::Text | OpCode::Binary => {
                    // §5.4: a new message may not start inside a fragmented one.
                    if self.fragmenting != Fragmenting::None {
                        return Err(ProtocolError::ExpectedContinuation);
                    }
                    let text = header.opcode == OpCode::Text;
                    if header.rsv1 {
                        // RFC 7692 §6: RSV1 on the first frame marks a
                        // compressed message (next_frame allowed it only
                        // with permessage-deflate negotiated).
                        self.fragmenting = if text { Fragmenting::Text } else { Fragmenting::Binary };
                        self.streaming = !assemble;
                        self.message_len = payload.len() as u64;
                        if text {
                            self.utf8.reset();
                        }
                        if let Some(inflater) = &mut self.inflater {
                            inflater.compressed = true;
                            inflater.inflated_len = 0;
                        }
                        if let Some(event) = self.compressed_frame(text, true, header.fin, &payload)? {
                            return Ok(Some((event, None)));
                        }
                        continue;
                    }
                    if header.fin {
                        let payload = payload.freeze();
                        if text {
                            if !utf8::is_valid(&payload) {
                                return Err(ProtocolError::InvalidUtf8);
                            }
                            let msg = Message::Text(Utf8Bytes::from_bytes_unchecked(payload.clone()));
                            if assemble {
                                return Ok(Some((Event::Message(msg), None)));
                            }
                            return Ok(Some((Event::Fragment { text, first: true, fin: true, payload }, None)));
                        }
                        if assemble {
                            return Ok(Some((Event::Message(Message::Binary(payload)), None)));
                        }
                        return Ok(Some((Event::Fragment { text, first: true, fin: true, payload }, None)));
                    }
                    self.fragmenting = if text { Fragmenting::Text } else { Fragmenting::Binary };
                    self.streaming = !assemble;
                    self.message_len = payload.len() as u64;
                    if text {
                        self.utf8.reset();
                        self.utf8.feed(&payload).map_err(|_| ProtocolError::InvalidUtf8)?;
                    }
                    if assemble {
                        if self.assembly.is_empty() {
                            self.assembly = payload;
                        } else {
                            self.assembly.extend_from_slice(&payload);
                        }
                    } else {
                        return Ok(Some((Event::Fragment { text, first: true, fin: false, payload: payload.freeze() }, None)));
                    }
                }
                OpCode::Continuation => {
                    let text = match self.fragmenting {
                        Fragmenting::None => return Err(ProtocolError::UnexpectedContinuation),
                        Fragmenting::Text => true,
                        Fragmenting::Binary => false,
                    };
                    // The message continues in the form it started in (see next_fragment).
                    let assemble = !self.streaming;
                    self.message_len += payload.len() as u64;
                    if self.inflater.as_ref().is_some_and(|i| i.compressed) {
                        if let Some(event) = self.compressed_frame(text, false, header.fin, &payload)? {
                            return Ok(Some((event, None)));
                        }
                        continue;
                    }
                    if text {
                        self.utf8.feed(&payload).map_err(|_| ProtocolError::InvalidUtf8)?;
                        // §8.1: the whole message must be valid, so it may not
                        // end in the middle of a character.
                        if header.fin && !self.utf8.is_complete() {
                            return Err(ProtocolError::InvalidUtf8);
                        }
                    }
                    if header.fin {
                        self.fragmenting = Fragmenting::None;
                        self.message_len = 0;
                    }
                    if !assemble {
                        return Ok(Some((Event::Fragment { text, first: false, fin: header.fin, payload: payload.freeze() }, None)));
                    }
                    self.assembly.extend_from_slice(&payload);
                    if header.fin {
                        let data = std::mem::take(&mut self.assembly).freeze();
                        let msg = if text {
                            Message::Text(Utf8Bytes::from_bytes_unchecked(data))
                        } else {
                            Message::Binary(data)
                        };
                        return Ok(Some((Event::Message(msg), None)));
                    }
                }
                OpCode::Ping => {
                    let payload = payload.freeze();
                    return Ok(Some((Event::Message(Message::Ping(payload.clone())), Some(Reply::Pong(payload)))));
                }
                OpCode::Pong => {
                    return Ok(Some((Event::Message(Message::Pong(payload.freeze())), None)));
                }
                OpCode::Close => {
                    let frame = CloseFrame::parse(payload.freeze())?;
                    self.close_received = true;
                    self.buf = BytesMut::new();
                    // §5.5.1: echo the status code received; the reason is
                    // echoed too, as browsers, ws and python-websockets
                    // expect (a CloseEvent shows what the client sent).
                    let echo = frame.clone();
                    return Ok(Some((Event::Message(Message::Close(frame)), Some(Reply::Close(echo)))));
                }
            }
        }
    }

    /// One frame of a compressed message (RFC 7692 §7.2.2): inflate it
    /// within `max_message_size` (which bounds the inflated size, so memory
    /// never follows a decompression bomb), validate text as it inflates
    /// (§8.1 applies to the inflated data), and return the event it
    /// completes, if any.
    fn compressed_frame(&mut self, text: bool, first: bool, fin: bool, wire: &[u8]) -> Result<Option<Event>, ProtocolError> {
        let max = self.max_message_size;
        let inflater = self.inflater.as_deref_mut().expect("RSV1 is accepted only with permessage-deflate");
        let done = |inflater: &mut Inflater, fragmenting: &mut Fragmenting, message_len: &mut u64| {
            inflater.compressed = false;
            *fragmenting = Fragmenting::None;
            *message_len = 0;
        };
        if self.streaming {
            let mut out = Vec::new();
            let limit = max.saturating_sub(inflater.inflated_len as usize);
            if inflater.inflate(wire, fin, &mut out, limit)?.is_err() {
                return Err(ProtocolError::MessageTooLarge { size: inflater.inflated_len + out.len() as u64, max });
            }
            inflater.inflated_len += out.len() as u64;
            if text {
                self.utf8.feed(&out).map_err(|_| ProtocolError::InvalidUtf8)?;
                if fin && !self.utf8.is_complete() {
                    return Err(ProtocolError::InvalidUtf8);
                }
            }
            if fin {
                done(inflater, &mut self.fragmenting, &mut self.message_len);
            }
            return Ok(Some(Event::Fragment { text, first, fin, payload: out.into() }));
        }
        let mut out = std::mem::take(&mut inflater.assembly);
        let start = out.len();
        if inflater.inflate(wire, fin, &mut out, max)?.is_err() {
            return Err(ProtocolError::MessageTooLarge { size: out.len() as u64, max });
        }
        if text {
            self.utf8.feed(&out[start..]).map_err(|_| ProtocolError::InvalidUtf8)?;
        }
        if !fin {
            inflater.assembly = out;
            return Ok(None);
        }
        if text && !self.utf8.is_complete() {
            return Err(ProtocolError::InvalidUtf8);
        }
        done(inflater, &mut self.fragmenting, &mut self.message_len);
        let data = Bytes::from(out);
        let msg = if text { Message::Text(Utf8Bytes::from_bytes_unchecked(data)) } else { Message::Binary(data) };
        Ok(Some(Event::Message(msg)))
    }

    /// Parse and validate one frame from the buffer; its payload unmasked.
    #[inline]
    fn next_frame(&mut self) -> Result<Option<(FrameHeader, BytesMut)>, ProtocolError> {
        let Some((header, header_len)) = FrameHeader::parse(&self.buf)? else {
            return Ok(None);
        };
        // §5.2: RSV bits must be 0 unless an extension defines them.
        if header.rsv23 || (header.rsv1 && self.inflater.is_none()) {
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
            let size = if header.opcode == OpCode::Continuation { self.message_len } else { 0 } + header.payload_len;
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
            std::mem::take(&mut self.buf)
        } else {
            self.buf.split_to(total)
        };
        frame.advance(header_len);
        if let Some(key) = header.mask {
            apply_mask(&mut frame, key);
        }
        Ok(Some((header, frame)))
    }
}

/// The sending half: commands in, bytes to transmit out.
#[derive(Debug)]
pub struct Sender {
    role: Role,
    /// Whole buffers queued ahead of `tail` (large payloads sent without copying).
    chunks: VecDeque<Bytes>,
    tail: BytesMut,
    pending: usize,
    close_sent: bool,
    fragmenting: bool,
    mask_fn: fn() -> [u8; 4],
    /// permessage-deflate, when negotiated (RFC 7692).
    deflater: Option<Box<Deflater>>,
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
            chunks: VecDeque::new(),
            tail: BytesMut::new(),
            pending: 0,
            close_sent: false,
            fragmenting: false,
            mask_fn: random_mask,
            deflater: None,
        }
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

    /// Send a reply produced by [`Receiver::next_event`]. A pong after our
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
        self.tail.reserve(n + payload.len());
        self.tail.extend_from_slice(&hdr[..n]);
        let start = self.tail.len();
        self.tail.extend_from_slice(payload);
        if let Some(key) = h.mask {
            apply_mask(&mut self.tail[start..], key);
        }
        self.pending += n + payload.len();
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
        if bytes.len() >= ZERO_COPY_THRESHOLD {
            if !self.tail.is_empty() {
                self.chunks.push_back(self.tail.split().freeze());
            }
            self.chunks.push_back(bytes);
        } else {
            self.tail.extend_from_slice(&bytes);
        }
        Ok(())
    }

    fn write_frame_bytes(&mut self, opcode: OpCode, fin: bool, payload: Bytes, rsv1: bool) {
        if self.role == Role::Server && payload.len() >= ZERO_COPY_THRESHOLD {
            let (_, hdr, n) = self.header(opcode, fin, payload.len(), rsv1);
            self.tail.extend_from_slice(&hdr[..n]);
            self.chunks.push_back(self.tail.split().freeze());
            self.pending += n + payload.len();
            self.chunks.push_back(payload);
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
        let mut n = 0;
        for chunk in &self.chunks {
            if n == dst.len() {
                return n;
            }
            if !chunk.is_empty() {
                dst[n] = IoSlice::new(chunk);
                n += 1;
            }
        }
        if n < dst.len() && !self.tail.is_empty() {
            dst[n] = IoSlice::new(&self.tail);
            n += 1;
        }
        n
    }

    /// Mark `n` bytes from the front of the queue as transmitted.
    pub fn consume_sent(&mut self, mut n: usize) {
        assert!(n <= self.pending, "consumed more than was queued");
        self.pending -= n;
        while n > 0 {
            match self.chunks.front_mut() {
                Some(front) if front.len() <= n => {
                    n -= front.len();
                    self.chunks.pop_front();
                }
                Some(front) => {
                    front.advance(n);
                    return;
                }
                None => {
                    self.tail.advance(n);
                    return;
                }
            }
        }
        while self.chunks.front().is_some_and(|c| c.is_empty()) {
            self.chunks.pop_front();
        }
    }

    /// Take every queued byte as one buffer (a convenience for tests and
    /// simple loops; the vectored path avoids the copy).
    pub fn take_data_to_send(&mut self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.pending);
        for chunk in self.chunks.drain(..) {
            out.extend_from_slice(&chunk);
        }
        out.extend_from_slice(&self.tail);
        self.tail.clear();
        self.pending = 0;
        out
    }

    /// Release buffers that hold no data, so an idle connection costs no heap.
    pub fn shrink_if_idle(&mut self) {
        if self.pending == 0 {
            if self.tail.capacity() > 0 {
                self.tail = BytesMut::new();
            }
            if self.chunks.capacity() > 0 {
                self.chunks = VecDeque::new();
            }
        }
    }
}

/// Who sent the first close frame.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ClosedBy {
    /// We did.
    Local,
    /// The peer did.
    Remote,
}

/// A full WebSocket connection: [`Receiver`] and [`Sender`] with the protocol's
/// obliged replies (auto pong, close echo, close on failure) wired between them.
#[derive(Debug)]
pub struct Connection {
    rx: Receiver,
    tx: Sender,
    auto_pong: bool,
    auto_close: bool,
    closed_by: Option<ClosedBy>,
    received_close: Option<Box<Option<CloseFrame>>>,
    deflate: Option<DeflateParams>,
}

impl Connection {
    /// A connection for `role` after the opening handshake.
    pub fn new(role: Role, config: Config) -> Self {
        Connection {
            rx: Receiver::new(role, &config),
            tx: Sender::new(role),
            auto_pong: config.auto_pong,
            auto_close: config.auto_close,
            closed_by: None,
            received_close: None,
            deflate: None,
        }
    }

    /// A connection that speaks permessage-deflate (RFC 7692) as agreed in
    /// the handshake (see [`crate::deflate`]); `None` is [`new`](Self::new).
    ///
    /// Messages of at least the configured threshold are sent compressed;
    /// compressed messages received are inflated within
    /// `Config::max_message_size`.
    pub fn with_deflate(role: Role, config: Config, deflate: Option<PerMessageDeflate>) -> Self {
        let mut conn = Connection::new(role, config);
        if let Some(agreed) = deflate {
            let (window_bits, takeover) = agreed.sending(role);
            conn.tx.deflater = Some(Box::new(Deflater::new(agreed.config.level, window_bits, takeover, agreed.config.threshold)));
            conn.rx.inflater = Some(Box::new(Inflater::new(agreed.peer_keeps_context(role))));
            conn.deflate = Some(agreed.params);
        }
        conn
    }

    /// The permessage-deflate parameters in use, if it was negotiated.
    pub fn deflate_params(&self) -> Option<&DeflateParams> {
        self.deflate.as_ref()
    }

    /// Whether zlib state is held right now, as (compressor, decompressor).
    /// Without context takeover both are `false` between messages: an idle
    /// connection holds no compression memory.
    pub fn holds_deflate_state(&self) -> (bool, bool) {
        (self.tx.holds_deflate_state(), self.rx.holds_deflate_state())
    }

    /// The role this connection was created for.
    pub fn role(&self) -> Role {
        self.tx.role
    }

    /// Whether pongs and close echoes are sent automatically: `(auto_pong, auto_close)`.
    pub fn auto_replies(&self) -> (bool, bool) {
        (self.auto_pong, self.auto_close)
    }

    /// Split into the two halves.
    pub fn into_parts(self) -> (Receiver, Sender) {
        (self.rx, self.tx)
    }

    /// The receiving half.
    pub fn receiver(&mut self) -> &mut Receiver {
        &mut self.rx
    }

    /// The sending half.
    pub fn sender(&mut self) -> &mut Sender {
        &mut self.tx
    }

    /// Use `mask_fn` for masking keys (deterministic tests).
    pub fn set_mask_fn(&mut self, mask_fn: fn() -> [u8; 4]) {
        self.tx.set_mask_fn(mask_fn);
    }

    // ---- inputs ----

    /// Feed bytes read from the transport.
    #[inline]
    pub fn receive_data(&mut self, data: &[u8]) {
        self.rx.receive_data(data)
    }

    /// The transport reached end of stream.
    pub fn receive_eof(&mut self) {
        self.rx.receive_eof()
    }

    // ---- outputs ----

    /// The next message or control frame. Pongs and close echoes are queued
    /// for sending as a side effect (unless turned off in [`Config`]). On a
    /// protocol error, a close frame with the right code is queued, and the
    /// error is returned once; after that `Ok(None)`.
    pub fn next_event(&mut self) -> Result<Option<Event>, ProtocolError> {
        let result = self.rx.next_event();
        self.route(result)
    }

    /// Like [`next_event`](Self::next_event) with data frames delivered one
    /// by one as [`Event::Fragment`].
    pub fn next_fragment(&mut self) -> Result<Option<Event>, ProtocolError> {
        let result = self.rx.next_fragment();
        self.route(result)
    }

    fn route(&mut self, result: Result<Option<(Event, Option<Reply>)>, ProtocolError>) -> Result<Option<Event>, ProtocolError> {
        match result {
            Ok(Some((event, reply))) => {
                match reply {
                    Some(Reply::Pong(p)) if self.auto_pong => {
                        let _ = self.tx.send_reply(Reply::Pong(p));
                    }
                    Some(Reply::Close(echo)) => {
                        if let Event::Message(Message::Close(frame)) = &event {
                            self.received_close = Some(Box::new(frame.clone()));
                        }
                        if self.closed_by.is_none() {
                            self.closed_by = Some(ClosedBy::Remote);
                        }
                        if self.auto_close {
                            let _ = self.tx.send_reply(Reply::Close(echo));
                        }
                    }
                    _ => {}
                }
                Ok(Some(event))
            }
            Ok(None) => Ok(None),
            Err(e) => {
                // §7.1.7: fail the connection: send a close with the code that
                // names the failure, then close the transport.
                if self.closed_by.is_none() {
                    self.closed_by = Some(ClosedBy::Local);
                }
                let _ = self.tx.send_close(Some(CloseFrame::new(e.close_code(), "")));
                Err(e)
            }
        }
    }

    // ---- commands ----

    /// Queue a message (text, binary, ping, pong or close).
    pub fn send(&mut self, msg: Message) -> Result<(), Error> {
        if let Message::Close(frame) = msg {
            return self.close(frame);
        }
        self.tx.send(msg)
    }

    /// Queue a text message.
    pub fn send_text(&mut self, text: &str) -> Result<(), Error> {
        self.tx.send_text(text)
    }

    /// Queue a binary message.
    pub fn send_binary(&mut self, data: &[u8]) -> Result<(), Error> {
        self.tx.send_binary(data)
    }

    /// Queue a ping.
    pub fn send_ping(&mut self, payload: &[u8]) -> Result<(), Error> {
        self.tx.send_ping(payload)
    }

    /// Start the closing handshake (§7.1.2).
    pub fn close(&mut self, frame: Option<CloseFrame>) -> Result<(), Error> {
        let was_sent = self.tx.close_sent();
        self.tx.send_close(frame)?;
        if !was_sent && self.closed_by.is_none() {
            self.closed_by = Some(ClosedBy::Local);
        }
        Ok(())
    }

    /// Fill `dst` with bytes to transmit (see [`Sender::data_to_send`]).
    pub fn data_to_send<'a>(&'a self, dst: &mut [IoSlice<'a>]) -> usize {
        self.tx.data_to_send(dst)
    }

    /// Mark `n` bytes as transmitted.
    pub fn consume_sent(&mut self, n: usize) {
        self.tx.consume_sent(n)
    }

    /// Take all bytes to transmit as one buffer.
    pub fn take_data_to_send(&mut self) -> Vec<u8> {
        self.tx.take_data_to_send()
    }

    /// Bytes waiting to be transmitted.
    pub fn pending_len(&self) -> usize {
        self.tx.pending_len()
    }

    // ---- state ----

    /// Both close frames were exchanged, or the connection failed.
    pub fn is_closed(&self) -> bool {
        (self.tx.close_sent() && self.rx.close_received()) || self.rx.failure().is_some()
    }

    /// Whether the closing handshake has started (either side).
    pub fn is_closing(&self) -> bool {
        self.tx.close_sent() || self.rx.close_received()
    }

    /// Whether the I/O layer should close the transport once the queued bytes
    /// are written: after a failure, or (server) after the closing handshake
    /// (§7.1.1: the server closes the TCP connection first). A client waits
    /// for the server's EOF instead, for a bounded time.
    pub fn should_close_transport(&self) -> bool {
        self.rx.failure().is_some()
            || (self.tx.close_sent() && self.rx.close_received() && self.tx.role == Role::Server)
            || self.rx.eof_received()
    }

    /// Whether the close was clean: both close frames were exchanged (§7.1.4
    /// "The WebSocket Connection is Closed" with a completed handshake).
    pub fn was_clean(&self) -> bool {
        self.tx.close_sent() && self.rx.close_received() && self.rx.failure().is_none()
    }

    /// Who started the closing handshake.
    pub fn closed_by(&self) -> Option<ClosedBy> {
        self.closed_by
    }

    /// The close frame received from the peer: `Some(None)` for a close
    /// without status code, `None` if none was received.
    pub fn received_close(&self) -> Option<&Option<CloseFrame>> {
        self.received_close.as_deref()
    }

    /// The close code to report to the application (§7.1.5): the peer's code,
    /// 1005 if its close had none, 1006 if the connection ended without one.
    pub fn close_code(&self) -> CloseCode {
        match self.received_close.as_deref() {
            Some(Some(frame)) => frame.code,
            Some(None) => CloseCode::NO_STATUS,
            None => CloseCode::ABNORMAL,
        }
    }

    /// The protocol error that failed this connection, if any.
    pub fn failure(&self) -> Option<&ProtocolError> {
        self.rx.failure()
    }

    /// Release idle buffers (call when the transport has nothing to read).
    pub fn shrink_if_idle(&mut self) {
        self.rx.shrink_if_idle();
        self.tx.shrink_if_idle();
    }
}
