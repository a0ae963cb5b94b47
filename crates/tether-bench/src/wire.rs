//! The client end of RFC 6455 framing, built for load generation: frame
//! headers are parsed and encoded by `tether-proto` ([`FrameHeader`]) and
//! payloads masked with its [`apply_mask`], but buffers are owned here and
//! reused, so steady-state traffic allocates nothing.
//!
//! Why not `tether_proto::Connection` for the data path: it hands each
//! message out as an owned `Bytes`, which is right for an application and
//! costs an allocation per message, which a generator that must outrun the
//! server cannot afford. Here a message is a borrowed slice of the read
//! buffer, valid for the duration of a callback. UTF-8 of received text is
//! not validated (the workloads check content themselves).

use std::io::{self, Read, Write};
use tether_proto::frame::{FrameHeader, OpCode, MAX_HEADER_LEN};
use tether_proto::mask::apply_mask;

/// Smallest free space offered to one `read` call.
const MIN_READ: usize = 4096;

/// A message or control frame received from the server.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Incoming<'a> {
    /// A complete text or binary message (fragments already joined).
    Data { text: bool, payload: &'a [u8] },
    /// A ping; the caller owes a pong with the same payload (§5.5.2).
    Ping(&'a [u8]),
    /// A pong (ignored by every workload).
    Pong,
    /// A close frame with its status code, if it had one. Nothing after it
    /// is processed (§5.5.1).
    Close(Option<u16>),
}

/// What went wrong while parsing server frames; the connection is failed.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct WireError(pub String);

/// Result of one `read` from the socket.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum ReadStatus {
    /// Bytes arrived; `drained` when the read was short, so the socket buffer
    /// was empty at that moment (an edge-triggered poll will report new data).
    Data { drained: bool },
    /// The peer closed its side.
    Eof,
    /// Nothing to read now.
    WouldBlock,
}

/// Accumulates bytes from the server and cuts them into frames.
#[derive(Debug)]
pub(crate) struct FrameReader {
    buf: Vec<u8>,
    start: usize,
    end: usize,
    /// Bytes the frame at `start` needs in total (header + payload), once known.
    frame_len: usize,
    /// Size to allocate the buffer at (lazily, on first read).
    initial: usize,
    /// Fragmented message in progress: its type and the payload so far.
    fragment: Option<bool>,
    assembly: Vec<u8>,
    closed: bool,
}

impl FrameReader {
    /// A reader whose buffer will start at `initial` bytes (grown if a frame
    /// needs more). Nothing is allocated until the first read.
    pub(crate) fn new(initial: usize) -> Self {
        FrameReader {
            buf: Vec::new(),
            start: 0,
            end: 0,
            frame_len: 0,
            initial: initial.max(MIN_READ),
            fragment: None,
            assembly: Vec::new(),
            closed: false,
        }
    }

    /// Bytes received and not yet consumed.
    pub(crate) fn unread(&self) -> &[u8] {
        &self.buf[self.start..self.end]
    }

    /// Drop `n` bytes from the front of the unread bytes (after a handshake).
    pub(crate) fn consume(&mut self, n: usize) {
        debug_assert!(n <= self.end - self.start);
        self.start += n;
    }

    /// Free the buffers when they hold nothing, for idle connections.
    pub(crate) fn shrink_if_idle(&mut self) {
        if self.start == self.end && self.fragment.is_none() {
            self.buf = Vec::new();
            self.assembly = Vec::new();
            self.start = 0;
            self.end = 0;
            self.frame_len = 0;
        }
    }

    /// Make room for at least `MIN_READ` bytes (or the rest of the current
    /// frame), compacting before growing.
    fn reserve(&mut self) {
        if self.buf.is_empty() {
            self.buf = vec![0; self.initial.max(self.frame_len)];
        }
        if self.start == self.end {
            self.start = 0;
            self.end = 0;
        }
        let want = MIN_READ.max(self.frame_len.saturating_sub(self.end - self.start));
        if self.buf.len() - self.end >= want {
            return;
        }
        if self.start > 0 {
            self.buf.copy_within(self.start..self.end, 0);
            self.end -= self.start;
            self.start = 0;
        }
        let needed = self.end + want;
        if needed > self.buf.len() {
            self.buf.resize(needed.next_power_of_two(), 0);
        }
    }

    /// One `read` from `src` into the buffer.
    pub(crate) fn read_from(&mut self, src: &mut impl Read) -> io::Result<ReadStatus> {
        self.reserve();
        let space = self.buf.len() - self.end;
        loop {
            return match src.read(&mut self.buf[self.end..]) {
                Ok(0) => Ok(ReadStatus::Eof),
                Ok(n) => {
                    self.end += n;
                    Ok(ReadStatus::Data { drained: n < space })
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(ReadStatus::WouldBlock),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => Err(e),
            };
        }
    }

    /// Append bytes as if read (tests, and bytes left over by a handshake).
    #[cfg(test)]
    pub(crate) fn push(&mut self, data: &[u8]) {
        self.frame_len = self.frame_len.max(data.len() + (self.end - self.start));
        self.reserve();
        self.buf[self.end..self.end + data.len()].copy_from_slice(data);
        self.end += data.len();
        self.frame_len = 0;
    }

    /// Hand every complete message in the buffer to `f`, in order.
    pub(crate) fn frames(&mut self, mut f: impl FnMut(Incoming<'_>)) -> Result<(), WireError> {
        while !self.closed {
            let avail = &self.buf[self.start..self.end];
            let (header, header_len) = match FrameHeader::parse(avail) {
                Ok(Some(h)) => h,
                Ok(None) => return Ok(()),
                Err(e) => return Err(WireError(format!("invalid frame from server: {e}"))),
            };
            // §5.1: a server MUST NOT mask; §5.2: no extension was negotiated.
            if header.mask.is_some() {
                return Err(WireError("server sent a masked frame (RFC 6455 §5.1)".into()));
            }
            if header.rsv1 || header.rsv23 {
                return Err(WireError("server set reserved bits without an extension (RFC 6455 §5.2)".into()));
            }
            let total = usize::try_from(header.payload_len)
                .ok()
                .and_then(|p| p.checked_add(header_len))
                .ok_or_else(|| WireError(format!("frame of {} bytes is too large", header.payload_len)))?;
            if avail.len() < total {
                self.frame_len = total;
                return Ok(());
            }
            self.frame_len = 0;
            let payload = &self.buf[self.start + header_len..self.start + total];
            self.start += total;
            match header.opcode {
                OpCode::Text | OpCode::Binary => {
                    let text = header.opcode == OpCode::Text;
                    if self.fragment.is_some() {
                        return Err(WireError("new message inside a fragmented one (RFC 6455 §5.4)".into()));
                    }
                    if header.fin {
                        f(Incoming::Data { text, payload });
                    } else {
                        self.fragment = Some(text);
                        self.assembly.clear();
                        self.assembly.extend_from_slice(payload);
                    }
                }
                OpCode::Continuation => {
                    let Some(text) = self.fragment else {
                        return Err(WireError("continuation frame without a message (RFC 6455 §5.4)".into()));
                    };
                    self.assembly.extend_from_slice(payload);
                    if header.fin {
                        self.fragment = None;
                        f(Incoming::Data { text, payload: &self.assembly });
                    }
                }
                OpCode::Ping => f(Incoming::Ping(payload)),
                OpCode::Pong => f(Incoming::Pong),
                OpCode::Close => {
                    self.closed = true;
                    let code = (payload.len() >= 2).then(|| u16::from_be_bytes([payload[0], payload[1]]));
                    f(Incoming::Close(code));
                }
            }
        }
        Ok(())
    }
}

/// Queues masked client frames in one reused buffer and writes them out.
#[derive(Debug)]
pub(crate) struct FrameWriter {
    buf: Vec<u8>,
    pos: usize,
    rng: u64,
    close_sent: bool,
}

impl FrameWriter {
    /// An empty writer; `seed` starts its masking-key generator.
    pub(crate) fn new(seed: u64) -> Self {
        FrameWriter { buf: Vec::new(), pos: 0, rng: seed, close_sent: false }
    }

    /// A fresh masking key for each frame, as RFC 6455 §5.3 requires, from
    /// splitmix64: unpredictable enough to defeat the proxy-cache attack of
    /// §10.3 in a benchmark, and costing a few nanoseconds instead of a CSPRNG call.
    #[inline]
    fn next_mask(&mut self) -> [u8; 4] {
        self.rng = self.rng.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.rng;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        ((z ^ (z >> 31)) as u32).to_ne_bytes()
    }

    /// Queue one final frame of `len` payload bytes: `fill` writes the
    /// plain payload into the buffer, which is then masked in place.
    #[inline]
    pub(crate) fn queue_with(&mut self, opcode: OpCode, len: usize, fill: impl FnOnce(&mut [u8])) {
        if self.pos > 0 && self.pos >= self.buf.len() / 2 {
            // Keep the queue from creeping forward through memory.
            self.buf.drain(..self.pos);
            self.pos = 0;
        }
        let key = self.next_mask();
        let header = FrameHeader { fin: true, rsv1: false, rsv23: false, opcode, mask: Some(key), payload_len: len as u64 };
        let mut hdr = [0u8; MAX_HEADER_LEN];
        let n = header.encode(&mut hdr);
        self.buf.extend_from_slice(&hdr[..n]);
        let start = self.buf.len();
        self.buf.resize(start + len, 0);
        let payload = &mut self.buf[start..];
        fill(payload);
        apply_mask(payload, key);
    }

    /// Queue a data or control frame carrying `payload`.
    pub(crate) fn queue(&mut self, opcode: OpCode, payload: &[u8]) {
        self.queue_with(opcode, payload.len(), |dst| dst.copy_from_slice(payload));
    }

    /// Queue raw bytes, unframed (the handshake request).
    pub(crate) fn queue_raw(&mut self, bytes: &[u8]) {
        self.buf.extend_from_slice(bytes);
    }

    /// Queue a close frame with `code` unless one was already sent.
    pub(crate) fn queue_close(&mut self, code: Option<u16>) {
        if !self.close_sent {
            self.close_sent = true;
            match code {
                Some(code) => self.queue(OpCode::Close, &code.to_be_bytes()),
                None => self.queue(OpCode::Close, &[]),
            }
        }
    }

    /// Whether a close frame was queued.
    pub(crate) fn close_sent(&self) -> bool {
        self.close_sent
    }

    /// Bytes queued and not yet written.
    pub(crate) fn pending(&self) -> usize {
        self.buf.len() - self.pos
    }

    /// Write queued bytes until done or the socket would block. Returns
    /// whether everything was written.
    pub(crate) fn flush(&mut self, dst: &mut impl Write) -> io::Result<bool> {
        while self.pos < self.buf.len() {
            match dst.write(&self.buf[self.pos..]) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(n) => self.pos += n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(false),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        self.buf.clear();
        self.pos = 0;
        Ok(true)
    }

    /// Free the buffer when nothing is queued, for idle connections.
    pub(crate) fn shrink_if_idle(&mut self) {
        if self.pending() == 0 {
            self.buf = Vec::new();
            self.pos = 0;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tether_proto::{Config, Connection, Event, Message, Role};

    fn server_frames(msgs: &[Message]) -> Vec<u8> {
        let mut server = Connection::new(Role::Server, Config::default());
        for m in msgs {
            server.send(m.clone()).unwrap();
        }
        server.take_data_to_send()
    }

    fn collect(reader: &mut FrameReader) -> Vec<String> {
        let mut out = Vec::new();
        reader
            .frames(|m| {
                out.push(match m {
                    Incoming::Data { text, payload } => format!("{}:{}", if text { "t" } else { "b" }, payload.len()),
                    Incoming::Ping(p) => format!("ping:{}", p.len()),
                    Incoming::Pong => "pong".into(),
                    Incoming::Close(c) => format!("close:{c:?}"),
                })
            })
            .unwrap();
        out
    }

    #[test]
    fn frames_split_at_every_byte() {
        let bytes = server_frames(&[
            Message::text("hello"),
            Message::binary(vec![7u8; 300]),
            Message::Ping(vec![1, 2, 3].into()),
            Message::binary(vec![9u8; 70_000]),
        ]);
        for step in [1, 2, 3, 7, 100, 4096, bytes.len()] {
            let mut r = FrameReader::new(16);
            let mut seen = Vec::new();
            for chunk in bytes.chunks(step) {
                r.push(chunk);
                seen.extend(collect(&mut r));
            }
            assert_eq!(seen, ["t:5", "b:300", "ping:3", "b:70000"], "step {step}");
        }
    }

    #[test]
    fn fragments_are_joined_and_close_stops_parsing() {
        let mut server = Connection::new(Role::Server, Config::default());
        let tx = server.sender();
        tx.send_fragment(true, "ab".into(), false).unwrap();
        tx.send_ping(b"x").unwrap();
        tx.send_fragment(true, "cd".into(), true).unwrap();
        tx.send_close(Some(tether_proto::CloseFrame::new(1001u16, "bye"))).unwrap();
        let mut bytes = server.take_data_to_send();
        bytes.extend(server_frames(&[Message::text("after close")]));
        let mut r = FrameReader::new(16);
        r.push(&bytes);
        let mut texts = Vec::new();
        r.frames(|m| {
            if let Incoming::Data { payload, .. } = m {
                texts.push(String::from_utf8(payload.to_vec()).unwrap());
            } else {
                texts.push(format!("{m:?}"));
            }
        })
        .unwrap();
        assert_eq!(texts, ["Ping([120])", "abcd", "Close(Some(1001))"]);
    }

    #[test]
    fn masked_server_frame_is_rejected() {
        let mut w = FrameWriter::new(1);
        w.queue(OpCode::Text, b"masked");
        let mut r = FrameReader::new(16);
        r.push(&w.buf);
        assert!(r.frames(|_| {}).is_err());
    }

    #[test]
    fn writer_frames_decode_on_a_server_with_fresh_masks() {
        let mut w = FrameWriter::new(42);
        w.queue_with(OpCode::Binary, 5, |d| d.copy_from_slice(b"12345"));
        w.queue(OpCode::Text, "é".repeat(100).as_bytes());
        w.queue_close(Some(1000));
        w.queue_close(Some(1000));
        let mut out = Vec::new();
        assert!(w.flush(&mut out).unwrap());
        assert_eq!(w.pending(), 0);
        // Masks differ between frames (the first at bytes 2..6; the second, with a 16-bit length, at 15..19).
        assert_ne!(out[2..6], out[15..19]);
        let mut server = Connection::new(Role::Server, Config::default());
        server.receive_data(&out);
        assert_eq!(server.next_event().unwrap(), Some(Event::Message(Message::binary(&b"12345"[..]))));
        assert_eq!(server.next_event().unwrap(), Some(Event::Message(Message::text("é".repeat(100)))));
        assert!(matches!(server.next_event().unwrap(), Some(Event::Message(Message::Close(Some(f)))) if f.code.0 == 1000));
        assert_eq!(server.next_event().unwrap(), None);
    }

    #[test]
    fn reused_buffers_stop_growing() {
        let frame = server_frames(&[Message::binary(vec![1u8; 1000])]);
        let mut r = FrameReader::new(4096);
        let mut w = FrameWriter::new(3);
        let mut sink = Vec::with_capacity(1 << 20);
        for _ in 0..3 {
            r.push(&frame);
            r.frames(|_| {}).unwrap();
            w.queue(OpCode::Binary, &[0u8; 1000]);
            w.flush(&mut sink).unwrap();
        }
        let (rcap, wcap) = (r.buf.capacity(), w.buf.capacity());
        for _ in 0..1000 {
            r.push(&frame);
            r.frames(|_| {}).unwrap();
            w.queue(OpCode::Binary, &[0u8; 1000]);
            sink.clear();
            w.flush(&mut sink).unwrap();
        }
        assert_eq!((r.buf.capacity(), w.buf.capacity()), (rcap, wcap));
    }
}
