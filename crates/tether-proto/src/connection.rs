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
//! 4. sleep until [`Connection::poll_timeout`] (if it gives a deadline) and
//!    then call [`Connection::handle_timeout`];
//! 5. close the transport once [`Connection::should_close_transport`] says so.
//!
//! The connection owns its closing: the [`State`], the close deadline (time
//! is passed in, never read: `now` is an argument, in the manner of
//! quinn-proto), and what an end of stream means (before a close frame it is
//! an abnormal closure, code 1006, as python-websockets' protocol object
//! reports it). The I/O layer only moves bytes and sleeps.

use crate::close::{CloseCode, CloseFrame};
use crate::config::Config;
use crate::deflate::codec::Deflater;
use crate::deflate::{DeflateParams, PerMessageDeflate};
use crate::error::{Error, ProtocolError};
use crate::message::Message;
use bytes::Bytes;
use std::io::IoSlice;

pub use crate::receiver::Receiver;
pub use crate::sender::{Sender, ZERO_COPY_THRESHOLD};

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

/// Who sent the first close frame.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ClosedBy {
    /// We did.
    Local,
    /// The peer did.
    Remote,
}

/// Where a connection is in its life (RFC 6455 §7).
///
/// `Open` → `CloseSent` (we closed first) or `CloseReceived` (the peer did)
/// → `Closed` (both close frames exchanged, §7.1.4); any state → `Failed` (a
/// protocol error: our close frame naming it is queued, §7.1.7); any state →
/// `Ended` (end of stream, or the close timeout passed). `Ended` is final.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum State {
    /// Messages flow both ways.
    Open,
    /// Our close frame is queued or sent; the peer's is awaited.
    CloseSent,
    /// The peer's close frame arrived; ours (the echo) is not sent yet.
    CloseReceived,
    /// Both close frames were exchanged. A server closes the transport now;
    /// a client waits (bounded) for the server to do it (§7.1.1).
    Closed,
    /// The connection failed; the transport is to be closed after our close
    /// frame is written.
    Failed,
    /// The transport ended or was given up on.
    Ended {
        /// Both close frames had been exchanged (and nothing failed).
        clean: bool,
        /// How it ended.
        reason: EndReason,
    },
}

/// Why a connection reached [`State::Ended`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EndReason {
    /// The transport reached end of stream.
    Eof,
    /// The close timeout passed first.
    TimedOut,
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
    state: State,
    close_timeout: std::time::Duration,
    /// When the closing handshake (or the linger after a failure) must be
    /// over; set at the first [`Connection::poll_timeout`] after it began.
    deadline: Option<std::time::Instant>,
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
            state: State::Open,
            close_timeout: config.close_timeout,
            deadline: None,
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
            conn.tx.set_deflater(Deflater::new(agreed.config.level, window_bits, takeover, agreed.config.threshold));
            conn.rx.enable_inflate(agreed.peer_keeps_context(role));
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
        self.tx.role()
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

    /// The transport reached end of stream. Before both close frames were
    /// exchanged this is an abnormal closure: [`close_code`](Self::close_code)
    /// is 1006 if no close frame arrived, and [`was_clean`](Self::was_clean)
    /// is false.
    pub fn receive_eof(&mut self) {
        self.rx.receive_eof();
        self.end(EndReason::Eof);
    }

    /// The time is `now`: if the close deadline has passed, the connection
    /// is [`State::Ended`] (timed out) and the transport is to be closed
    /// without waiting for anything more.
    pub fn handle_timeout(&mut self, now: std::time::Instant) {
        if self.deadline.is_some_and(|d| now >= d) {
            self.end(EndReason::TimedOut);
        }
    }

    fn end(&mut self, reason: EndReason) {
        if !matches!(self.state, State::Ended { .. }) {
            let clean = self.state == State::Closed && self.rx.failure().is_none();
            self.state = State::Ended { clean, reason };
        }
    }

    // ---- outputs ----

    /// When [`handle_timeout`](Self::handle_timeout) must be called next, if
    /// ever: once the closing handshake has begun (or the connection
    /// failed), `close_timeout` after the first call that saw it. `None`
    /// while open and once ended.
    pub fn poll_timeout(&mut self, now: std::time::Instant) -> Option<std::time::Instant> {
        match self.state {
            State::Open | State::Ended { .. } => None,
            _ => Some(*self.deadline.get_or_insert(now + self.close_timeout)),
        }
    }

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
                        self.advance_close();
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
                if !matches!(self.state, State::Ended { .. }) {
                    self.state = State::Failed;
                }
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
        self.advance_close();
        Ok(())
    }

    /// Follow the close frames sent and received: Open → CloseSent /
    /// CloseReceived → Closed.
    fn advance_close(&mut self) {
        if matches!(self.state, State::Open | State::CloseSent | State::CloseReceived) {
            self.state = match (self.tx.close_sent(), self.rx.close_received()) {
                (true, true) => State::Closed,
                (true, false) => State::CloseSent,
                (false, true) => State::CloseReceived,
                (false, false) => State::Open,
            };
        }
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

    /// Where the connection is in its life.
    pub fn state(&self) -> State {
        self.state
    }

    /// Whether the close timeout ended the connection.
    pub fn timed_out(&self) -> bool {
        matches!(self.state, State::Ended { reason: EndReason::TimedOut, .. })
    }

    /// Both close frames were exchanged, or the connection failed.
    pub fn is_closed(&self) -> bool {
        match self.state {
            State::Closed | State::Failed => true,
            State::Ended { clean, .. } => clean || self.rx.failure().is_some(),
            State::Open | State::CloseSent | State::CloseReceived => false,
        }
    }

    /// Whether the closing handshake has started (either side), or the
    /// connection is over.
    pub fn is_closing(&self) -> bool {
        self.tx.close_sent() || self.rx.close_received()
    }

    /// Whether the I/O layer should close the transport once the queued bytes
    /// are written: after a failure, or (server) after the closing handshake
    /// (§7.1.1: the server closes the TCP connection first). A client waits
    /// for the server's EOF instead, for a bounded time.
    pub fn should_close_transport(&self) -> bool {
        match self.state {
            State::Failed | State::Ended { .. } => true,
            State::Closed => self.tx.role() == Role::Server,
            State::Open | State::CloseSent | State::CloseReceived => false,
        }
    }

    /// Whether the close was clean: both close frames were exchanged (§7.1.4
    /// "The WebSocket Connection is Closed" with a completed handshake).
    pub fn was_clean(&self) -> bool {
        match self.state {
            State::Closed => self.rx.failure().is_none(),
            State::Ended { clean, .. } => clean,
            _ => false,
        }
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
