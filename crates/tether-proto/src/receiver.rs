//! The receiving half of a connection: bytes in, events out.
//!
//! [`Receiver`] is a pipeline of three steps, each in its own module:
//! the frame decoder ([`crate::decode`]: header rules, masking, limits),
//! the inflate step ([`crate::inflate`]: permessage-deflate, RFC 7692) and
//! the message assembler ([`crate::assemble`]: fragmentation, UTF-8,
//! control frames). What is left here is the state of the half as a whole:
//! whether a close was received, whether it failed, and end of stream.

use crate::assemble::MessageAssembler;
use crate::config::Config;
use crate::connection::{Event, Reply, Role};
use crate::decode::FrameDecoder;
use crate::error::ProtocolError;
use crate::inflate::InflateStep;
use bytes::BytesMut;

/// The receiving half: bytes in, events out.
#[derive(Debug)]
pub struct Receiver {
    decoder: FrameDecoder,
    assembler: MessageAssembler,
    close_received: bool,
    failed: Option<Box<ProtocolError>>,
    eof: bool,
    /// permessage-deflate, when negotiated (RFC 7692); boxed so that a
    /// connection without it pays one pointer.
    inflate: Option<Box<InflateStep>>,
}

impl Receiver {
    /// A receiver for `role` with the limits in `config`.
    pub fn new(role: Role, config: &Config) -> Self {
        Receiver {
            decoder: FrameDecoder::new(role, config.max_frame_size, config.max_message_size),
            assembler: MessageAssembler::new(config.max_message_size),
            close_received: false,
            failed: None,
            eof: false,
            inflate: None,
        }
    }

    /// Inflate compressed messages (permessage-deflate was negotiated);
    /// `peer_keeps_context`: the peer uses context takeover.
    pub(crate) fn enable_inflate(&mut self, peer_keeps_context: bool) {
        self.decoder.allow_compression();
        self.inflate = Some(Box::new(InflateStep::new(peer_keeps_context)));
    }

    /// Append bytes read from the transport.
    #[inline]
    pub fn receive_data(&mut self, data: &[u8]) {
        if self.close_received || self.failed.is_some() {
            // §5.5.1: after a close frame, nothing more is processed.
            return;
        }
        self.decoder.extend(data);
    }

    /// The buffer that [`receive_data`](Self::receive_data) appends to, for an
    /// I/O layer that reads into it directly.
    pub fn read_buffer(&mut self) -> &mut BytesMut {
        self.decoder.buffer_mut()
    }

    /// How many more bytes the frame at the head of the buffer needs, if its
    /// header has been received (a hint for sizing reads).
    pub fn bytes_needed(&self) -> Option<usize> {
        self.decoder.bytes_needed()
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
        self.inflate.as_ref().is_some_and(|i| i.holds_state())
    }

    /// Release buffers that hold no data, so an idle connection costs no heap.
    pub fn shrink_if_idle(&mut self) {
        self.decoder.shrink_if_idle();
        self.assembler.shrink_if_idle();
    }

    /// Bytes buffered but not yet turned into events (for a compressed
    /// message: inflated so far).
    pub fn buffered_len(&self) -> usize {
        self.decoder.buffered_len() + self.assembler.buffered_len() + self.inflate.as_ref().map_or(0, |i| i.buffered_len())
    }

    /// The next complete message or control frame.
    ///
    /// Returns `Ok(None)` when more bytes are needed (or after a close frame or
    /// a failure). The second element is a reply the protocol obliges; hand it
    /// to the [`Sender`](crate::Sender) (see
    /// [`Sender::send_reply`](crate::Sender::send_reply)). On `Err`, the
    /// connection is failed: send `Reply::Close` with the error's close code
    /// (what [`Connection`](crate::Connection) does for you) and close the
    /// transport.
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
                self.decoder.discard();
                self.assembler.discard();
                if let Some(inflate) = &mut self.inflate {
                    inflate.discard();
                }
                Err(e)
            }
        }
    }

    #[inline]
    fn poll_event_inner(&mut self, assemble: bool) -> Result<Option<(Event, Option<Reply>)>, ProtocolError> {
        loop {
            let Some((header, payload)) = self.decoder.next_frame(self.assembler.message_len())? else {
                return Ok(None);
            };
            let Some((event, reply)) = self.assembler.push(header, payload, assemble, self.inflate.as_deref_mut())? else {
                continue;
            };
            if let Some(Reply::Close(_)) = reply {
                // §5.5.1: a close frame ends the stream of frames; what
                // follows it is not processed.
                self.close_received = true;
                self.decoder.discard();
            }
            return Ok(Some((event, reply)));
        }
    }
}
