//! The message assembler: the last step of the receive path, after the frame
//! decoder (and the inflate step, for compressed messages). Frames go in;
//! messages, fragments and control frames come out as [`Event`]s, with the
//! reply the protocol obliges for pings and closes.
//!
//! It holds the state that spans frames: the fragmented message in progress
//! (RFC 6455 §5.4), its size against the message limit, and the incremental
//! UTF-8 validation of text (§8.1), which runs as fragments arrive so that an
//! invalid message fails at its first bad byte. Control frames may come
//! between fragments (§5.4) and pass through without touching that state.
//! The shape follows fastwebsockets' `FragmentCollector`.

use crate::close::CloseFrame;
use crate::connection::{Event, Reply};
use crate::error::ProtocolError;
use crate::frame::{FrameHeader, OpCode};
use crate::inflate::InflateStep;
use crate::message::{Message, Utf8Bytes};
use crate::utf8::{self, Utf8Validator};
use crate::lazy_buf::LazyBuf;
use bytes::{Bytes, BytesMut};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Fragmenting {
    None,
    Text,
    Binary,
}

/// Turns validated, unmasked frames into events.
#[derive(Debug)]
pub(crate) struct MessageAssembler {
    max_message_size: usize,
    fragmenting: Fragmenting,
    /// Whether the fragmented message in progress comes out frame by frame.
    /// Decided by the call that received its first frame, so that switching
    /// between `next_event` and `next_fragment` mid-message neither loses the
    /// assembled start nor delivers a message without it.
    streaming: bool,
    assembly: LazyBuf,
    /// Size of the message in progress (assembly may stay empty in streaming mode).
    message_len: u64,
    utf8: Utf8Validator,
}

impl MessageAssembler {
    /// An assembler for messages of at most `max_message_size` bytes.
    pub(crate) fn new(max_message_size: usize) -> Self {
        MessageAssembler {
            max_message_size,
            fragmenting: Fragmenting::None,
            streaming: false,
            assembly: LazyBuf::new(),
            message_len: 0,
            utf8: Utf8Validator::new(),
        }
    }

    /// Size on the wire of the fragmented message in progress (0 between
    /// messages), for the decoder's limit check on the next header.
    #[inline]
    pub(crate) fn message_len(&self) -> u64 {
        self.message_len
    }

    /// Bytes of an assembled message held so far.
    pub(crate) fn buffered_len(&self) -> usize {
        self.assembly.len()
    }

    /// Release the assembly buffer's memory if it holds no data.
    pub(crate) fn shrink_if_idle(&mut self) {
        self.assembly.release_if_empty();
    }

    /// Drop the message in progress and its memory (the connection failed).
    pub(crate) fn discard(&mut self) {
        self.assembly = LazyBuf::new();
    }

    /// Take one frame. Returns the event it completes with the obliged
    /// reply, or `Ok(None)` if the frame only added to a message in progress.
    ///
    /// `assemble`: a message that starts with this frame comes out whole
    /// (else frame by frame). `inflate`: the inflate step, when
    /// permessage-deflate was negotiated.
    #[inline]
    pub(crate) fn push(
        &mut self,
        header: FrameHeader,
        payload: BytesMut,
        assemble: bool,
        inflate: Option<&mut InflateStep>,
    ) -> Result<Option<(Event, Option<Reply>)>, ProtocolError> {
        match header.opcode {
            OpCode::Text | OpCode::Binary => {
                // §5.4: a new message may not start inside a fragmented one.
                if self.fragmenting != Fragmenting::None {
                    return Err(ProtocolError::ExpectedContinuation);
                }
                let text = header.opcode == OpCode::Text;
                if header.rsv1 {
                    // RFC 7692 §6: RSV1 on the first frame marks a
                    // compressed message (the decoder allowed it only
                    // with permessage-deflate negotiated).
                    let inflate = inflate.expect("RSV1 is accepted only with permessage-deflate");
                    self.fragmenting = if text { Fragmenting::Text } else { Fragmenting::Binary };
                    self.streaming = !assemble;
                    self.message_len = payload.len() as u64;
                    if text {
                        self.utf8.reset();
                    }
                    inflate.start_message();
                    return Ok(self.compressed_frame(inflate, text, true, header.fin, &payload)?.map(|event| (event, None)));
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
                        self.assembly.set(payload);
                    } else {
                        self.assembly.get_mut().extend_from_slice(&payload);
                    }
                    Ok(None)
                } else {
                    Ok(Some((Event::Fragment { text, first: true, fin: false, payload: payload.freeze() }, None)))
                }
            }
            OpCode::Continuation => {
                let text = match self.fragmenting {
                    Fragmenting::None => return Err(ProtocolError::UnexpectedContinuation),
                    Fragmenting::Text => true,
                    Fragmenting::Binary => false,
                };
                // The message continues in the form it started in (see
                // `Receiver::next_fragment`).
                let assemble = !self.streaming;
                self.message_len += payload.len() as u64;
                if let Some(inflate) = inflate.filter(|i| i.in_message()) {
                    return Ok(self.compressed_frame(inflate, text, false, header.fin, &payload)?.map(|event| (event, None)));
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
                self.assembly.get_mut().extend_from_slice(&payload);
                if header.fin {
                    let data = self.assembly.take().freeze();
                    let msg = if text {
                        Message::Text(Utf8Bytes::from_bytes_unchecked(data))
                    } else {
                        Message::Binary(data)
                    };
                    return Ok(Some((Event::Message(msg), None)));
                }
                Ok(None)
            }
            // §5.4: control frames may be injected in the middle of a
            // fragmented message; they leave its state alone.
            OpCode::Ping => {
                let payload = payload.freeze();
                Ok(Some((Event::Message(Message::Ping(payload.clone())), Some(Reply::Pong(payload)))))
            }
            OpCode::Pong => Ok(Some((Event::Message(Message::Pong(payload.freeze())), None))),
            OpCode::Close => {
                let frame = CloseFrame::parse(payload.freeze())?;
                // §5.5.1: echo the status code received; the reason is
                // echoed too, as browsers, ws and python-websockets
                // expect (a CloseEvent shows what the client sent).
                let echo = frame.clone();
                Ok(Some((Event::Message(Message::Close(frame)), Some(Reply::Close(echo)))))
            }
        }
    }

    /// One frame of a compressed message (RFC 7692 §7.2.2): inflate it
    /// within `max_message_size` (which bounds the inflated size, so memory
    /// never follows a decompression bomb), validate text as it inflates
    /// (§8.1 applies to the inflated data), and return the event it
    /// completes, if any.
    fn compressed_frame(&mut self, inflate: &mut InflateStep, text: bool, first: bool, fin: bool, wire: &[u8]) -> Result<Option<Event>, ProtocolError> {
        let max = self.max_message_size;
        if self.streaming {
            let out = inflate.inflate_fragment(wire, fin, max)?;
            if text {
                self.utf8.feed(&out).map_err(|_| ProtocolError::InvalidUtf8)?;
                if fin && !self.utf8.is_complete() {
                    return Err(ProtocolError::InvalidUtf8);
                }
            }
            if fin {
                self.fragmenting = Fragmenting::None;
                self.message_len = 0;
            }
            return Ok(Some(Event::Fragment { text, first, fin, payload: out.into() }));
        }
        let added = inflate.inflate_assembled(wire, fin, max)?;
        if text {
            self.utf8.feed(added).map_err(|_| ProtocolError::InvalidUtf8)?;
        }
        if !fin {
            return Ok(None);
        }
        if text && !self.utf8.is_complete() {
            return Err(ProtocolError::InvalidUtf8);
        }
        self.fragmenting = Fragmenting::None;
        self.message_len = 0;
        let data = Bytes::from(inflate.take_message());
        let msg = if text { Message::Text(Utf8Bytes::from_bytes_unchecked(data)) } else { Message::Binary(data) };
        Ok(Some(Event::Message(msg)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::close::CloseCode;

    const MAX: usize = 1 << 20;

    /// A frame as the decoder yields it: header and unmasked payload.
    fn frame(opcode: OpCode, fin: bool, payload: &[u8]) -> (FrameHeader, BytesMut) {
        let header = FrameHeader { fin, rsv1: false, rsv23: false, opcode, mask: None, payload_len: payload.len() as u64 };
        (header, BytesMut::from(payload))
    }

    fn push(a: &mut MessageAssembler, assemble: bool, (h, p): (FrameHeader, BytesMut)) -> Result<Option<(Event, Option<Reply>)>, ProtocolError> {
        a.push(h, p, assemble, None)
    }

    fn text(s: &str) -> Event {
        Event::Message(Message::Text(Utf8Bytes::from_bytes_unchecked(Bytes::copy_from_slice(s.as_bytes()))))
    }

    #[test]
    fn fragments_with_an_interleaved_ping() {
        // RFC 6455 §5.4: a ping between the fragments of "Hello" comes out
        // first, with its pong; the message comes out whole at its last frame.
        let mut a = MessageAssembler::new(MAX);
        assert_eq!(push(&mut a, true, frame(OpCode::Text, false, b"Hel")), Ok(None));
        assert_eq!(a.message_len(), 3);
        let ping = push(&mut a, true, frame(OpCode::Ping, true, b"hi")).unwrap().unwrap();
        assert_eq!(ping, (Event::Message(Message::Ping(Bytes::from_static(b"hi"))), Some(Reply::Pong(Bytes::from_static(b"hi")))));
        assert_eq!(a.buffered_len(), 3);
        let done = push(&mut a, true, frame(OpCode::Continuation, true, b"lo")).unwrap();
        assert_eq!(done, Some((text("Hello"), None)));
        assert_eq!((a.message_len(), a.buffered_len()), (0, 0));
    }

    #[test]
    fn streamed_fragments_keep_their_order_and_flags() {
        let mut a = MessageAssembler::new(MAX);
        let first = push(&mut a, false, frame(OpCode::Binary, false, b"ab")).unwrap().unwrap().0;
        assert_eq!(first, Event::Fragment { text: false, first: true, fin: false, payload: Bytes::from_static(b"ab") });
        // The message keeps the form it started in, even if asked to assemble.
        let last = push(&mut a, true, frame(OpCode::Continuation, true, b"cd")).unwrap().unwrap().0;
        assert_eq!(last, Event::Fragment { text: false, first: false, fin: true, payload: Bytes::from_static(b"cd") });
    }

    #[test]
    fn a_continuation_without_a_start_and_a_start_inside_a_message() {
        // §5.4: both break the fragmentation rules.
        let mut a = MessageAssembler::new(MAX);
        assert_eq!(push(&mut a, true, frame(OpCode::Continuation, true, b"x")), Err(ProtocolError::UnexpectedContinuation));
        let mut a = MessageAssembler::new(MAX);
        push(&mut a, true, frame(OpCode::Text, false, b"x")).unwrap();
        assert_eq!(push(&mut a, true, frame(OpCode::Binary, true, b"y")), Err(ProtocolError::ExpectedContinuation));
    }

    #[test]
    fn utf8_is_checked_as_fragments_arrive() {
        // §8.1: "é" split across two fragments is fine...
        let mut a = MessageAssembler::new(MAX);
        push(&mut a, true, frame(OpCode::Text, false, &[0xc3])).unwrap();
        assert_eq!(push(&mut a, true, frame(OpCode::Continuation, true, &[0xa9])).unwrap(), Some((text("é"), None)));
        // ...a message may not end inside a character...
        let mut a = MessageAssembler::new(MAX);
        push(&mut a, true, frame(OpCode::Text, false, b"ok")).unwrap();
        assert_eq!(push(&mut a, true, frame(OpCode::Continuation, true, &[0xc3])), Err(ProtocolError::InvalidUtf8));
        // ...and an invalid byte fails on the fragment that carries it.
        let mut a = MessageAssembler::new(MAX);
        assert_eq!(push(&mut a, true, frame(OpCode::Text, false, &[0xff])), Err(ProtocolError::InvalidUtf8));
    }

    #[test]
    fn close_is_answered_with_an_echo() {
        // §5.5.1: code 1000 and reason "bye".
        let mut a = MessageAssembler::new(MAX);
        let (event, reply) = push(&mut a, true, frame(OpCode::Close, true, b"\x03\xe8bye")).unwrap().unwrap();
        let expected = CloseFrame::new(CloseCode::NORMAL, "bye");
        assert_eq!(event, Event::Message(Message::Close(Some(expected.clone()))));
        assert_eq!(reply, Some(Reply::Close(Some(expected))));
        // A one-byte body is not a close frame.
        assert_eq!(push(&mut a, true, frame(OpCode::Close, true, b"\x03")), Err(ProtocolError::CloseFrameTooShort));
    }

    #[test]
    fn a_compressed_message_is_inflated_and_validated() {
        // RFC 7692 §7.2.3.1: "Hello" compressed, RSV1 on its only frame.
        let mut a = MessageAssembler::new(MAX);
        let mut step = InflateStep::new(false);
        let (mut h, p) = frame(OpCode::Text, true, &[0xf2, 0x48, 0xcd, 0xc9, 0xc9, 0x07, 0x00]);
        h.rsv1 = true;
        assert_eq!(a.push(h, p, true, Some(&mut step)).unwrap(), Some((text("Hello"), None)));
        assert!(!step.in_message());
        // An uncompressed message on the same connection passes by the step.
        let (h, p) = frame(OpCode::Text, true, b"plain");
        assert_eq!(a.push(h, p, true, Some(&mut step)).unwrap(), Some((text("plain"), None)));
    }
}
